"""`entropy`: Golomb-coded gaps between kept weights, per block (docs/FORMAT.md section 3).

The kernels stay in maskcode.py; this is the codec as the rest of the library sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..maskcode import (
    MaskCode,
    check_entropy_tables,
    decode_entropy_words,
    encode_entropy,
    padded_bytes_as_words,
)
from .base import MASK_GOLOMB, KernelMask, MaskCodec, Part, register_mask_codec

MAX_BLOCK = 1 << 26  # positions per block a reader accepts
MAX_PARAM = 1 << 26  # Golomb parameter a reader accepts


@register_mask_codec
class Entropy(MaskCodec):
    name = "entropy"
    rank = 0
    help = "entropy (Golomb-coded gaps between kept weights)"

    def encode(self, keep: np.ndarray, cols: int | None, block: int) -> MaskCode:
        return encode_entropy(keep, block)

    def decode_words(self, code: MaskCode) -> np.ndarray:
        return decode_entropy_words(code)

    def kernel_mask(self, code: MaskCode, tile: int) -> KernelMask:
        offs, params = check_entropy_tables(code)
        return KernelMask(MASK_GOLOMB, padded_bytes_as_words(code.data, 2), offs, params, int(code.block))

    def stored_parts(self, code: MaskCode) -> list[tuple[str, np.ndarray]]:
        return [("mask_offsets", code.offsets.astype("<u4")), ("mask_params", code.params.astype("<u4"))]

    def from_parts(self, meta: dict, length: int, arrays: dict[str, np.ndarray]) -> MaskCode:
        return MaskCode(self.name, length, arrays["mask"], meta["block"], arrays["mask_offsets"],
                        arrays["mask_params"])

    def check(self, w: Any, m: dict, length: int) -> None:
        b = w.int_field(m, "block", "mask.", 64, MAX_BLOCK)
        if b % 64:
            raise w.error("mask.block", f"must be a multiple of 64, got {b}")

    def part_specs(self, m: dict, length: int) -> dict[str, Part]:
        nb = -(-length // m["block"])
        return {"mask": Part(("U8",), None), "mask_offsets": Part(("U32",), (nb,)),
                "mask_params": Part(("U32",), (nb,))}

    def check_data(self, w: Any, m: dict, length: int, arrays: dict[str, np.ndarray]) -> None:
        params = arrays["mask_params"].astype(np.int64)
        offs = arrays["mask_offsets"].astype(np.int64)
        if params.size:
            bad = np.flatnonzero((params < 1) | (params > MAX_PARAM))
            if bad.size:
                raise w.error("mask_params", f"block {int(bad[0])}: Golomb parameter {int(params[bad[0]])} "
                                             f"is outside 1..{MAX_PARAM}")
            steps = np.diff(np.concatenate(([0], offs)))
            bad = np.flatnonzero(steps <= 0)
            if bad.size:
                raise w.error("mask_offsets", f"block {int(bad[0])}: offsets must increase (every block "
                                              "holds at least one byte)")
            if offs[-1] != arrays["mask"].size:
                raise w.error("mask_offsets", f"last offset {int(offs[-1])} does not match the "
                                              f"{arrays['mask'].size} bytes of the mask")
        elif arrays["mask"].size:
            raise w.error("mask", f"{arrays['mask'].size} bytes for an empty tensor")
