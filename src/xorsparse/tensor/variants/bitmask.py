"""`bitmask`: one bit per weight (docs/FORMAT.md section 3)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..maskcode import MaskCode, decode_bitmask_words, encode_bitmask
from .base import MaskCodec, Part, register_mask_codec


@register_mask_codec
class Bitmask(MaskCodec):
    name = "bitmask"
    rank = 1
    help = "bitmask (1 bit per weight)"

    def encode(self, keep: np.ndarray, cols: int | None, block: int) -> MaskCode:
        return encode_bitmask(keep)

    def decode_words(self, code: MaskCode) -> np.ndarray:
        return decode_bitmask_words(code)

    def check(self, w: Any, m: dict, length: int) -> None:
        w.int_field(m, "block", "mask.", 0, 0)

    def part_specs(self, m: dict, length: int) -> dict[str, Part]:
        return {"mask": Part(("U8",), (-(-length // 8),))}

    def check_data(self, w: Any, m: dict, length: int, arrays: dict[str, np.ndarray]) -> None:
        data = arrays["mask"]
        if length % 8 and data.size and int(data[-1]) >> (length % 8):
            raise w.error("mask", "unused bits after the end of the stream are not zero")
