"""`ctx` (format version 2): range coding with a row x column model (docs/FORMAT.md 3.2).

The coder and its kernels stay in maskctx.py; this is the codec as the rest of the library sees it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..maskcode import MaskCode
from ..maskctx import (
    MAX_BLOCK,
    MAX_STEP,
    ZMAX,
    ctx_model_from_parts,
    decode_ctx_words,
    encode_ctx,
    fit_model_estimate,
)
from .base import MaskCodec, Part, register_mask_codec

MODEL_FIELDS = ("rows", "cols", "base", "row_step", "col_step")
MAX_BASE = 4 * ZMAX  # 1020
MAX_POSITIONS = 1 << 48
CTX_MIN_SAVING = 0.05  # `auto` takes ctx only if at least 5% smaller than the Golomb/bitmask mask
CTX_ESTIMATE_SLACK = 0.02  # the margin-based estimate's error allowed before coding ctx for real


@register_mask_codec
class Ctx(MaskCodec):
    name = "ctx"
    rank = 2
    min_version = 2
    help = "ctx (range coding with a row x column density model)"
    fields = ("block",) + MODEL_FIELDS

    # Why a threshold for `auto`: ctx decodes one range-coder step per position, about 6x the
    # Golomb decode time per position at 90% sparsity (speed bench, "mask decode" rows), which
    # costs more than the rest of a tensor's decode; on i.i.d. masks it saves under 1%, on
    # magnitude-pruned transformer and conv masks 5-20% (BENCHMARKS section 11).
    costly_decode = True
    min_saving = CTX_MIN_SAVING

    def encode(self, keep: np.ndarray, cols: int | None, block: int) -> MaskCode:
        return encode_ctx(keep, cols, block)

    def encode_if_saving(self, keep: np.ndarray, cols: int | None, block: int, limit: float) -> MaskCode | None:
        """The positions are coded only where the model's estimated size (from the row and column
        counts, no coding) can pass `limit`: estimating costs a fraction of coding."""
        k = np.asarray(keep, dtype=bool)
        n = k.size
        ncols = int(cols) if cols is not None else (k.shape[-1] if k.ndim >= 2 else n)
        if n == 0 or ncols <= 0 or n % ncols:
            return None
        model, estimate = fit_model_estimate(k.reshape(n // ncols, ncols), limit)
        if model is None or estimate > limit * (1.0 + CTX_ESTIMATE_SLACK):
            return None
        code = encode_ctx(k, ncols, block, model=model)
        return code if code.nbits <= limit else None

    def decode_words(self, code: MaskCode) -> np.ndarray:
        return decode_ctx_words(code)

    def describe(self, code: MaskCode) -> dict[str, Any]:
        m = code.model
        return {"block": code.block, "rows": m.rows, "cols": m.cols, "base": m.base, "row_step": m.row_step,
                "col_step": m.col_step}

    def stored_parts(self, code: MaskCode) -> list[tuple[str, np.ndarray]]:
        return [("mask_offsets", code.offsets.astype("<u4")), ("mask_model", code.model.data)]

    def from_parts(self, meta: dict, length: int, arrays: dict[str, np.ndarray]) -> MaskCode:
        # the row and column indices: bounded work on any bytes (FORMAT.md 3.2)
        model = ctx_model_from_parts(meta["rows"], meta["cols"], meta["base"], meta["row_step"], meta["col_step"],
                                     arrays["mask_model"])
        return MaskCode(self.name, length, arrays["mask"], meta["block"], arrays["mask_offsets"], None, model)

    def check(self, w: Any, m: dict, length: int) -> None:
        b = w.int_field(m, "block", "mask.", 64, MAX_BLOCK)
        if b % 64:
            raise w.error("mask.block", f"must be a multiple of 64, got {b}")
        r = w.int_field(m, "rows", "mask.", 0, MAX_POSITIONS)
        c = w.int_field(m, "cols", "mask.", 0, MAX_POSITIONS)
        if r * c != length:
            raise w.error("mask.rows", f"rows x cols = {r} x {c} does not cover the {length} positions")
        w.int_field(m, "base", "mask.", -MAX_BASE, MAX_BASE)
        w.int_field(m, "row_step", "mask.", 0, MAX_STEP)
        w.int_field(m, "col_step", "mask.", 0, MAX_STEP)

    def part_specs(self, m: dict, length: int) -> dict[str, Part]:
        nb = -(-length // m["block"])
        return {"mask": Part(("U8",), None), "mask_offsets": Part(("U32",), (nb,)),
                "mask_model": Part(("U8",), None)}

    def check_data(self, w: Any, m: dict, length: int, arrays: dict[str, np.ndarray]) -> None:
        offs = arrays["mask_offsets"].astype(np.int64)
        if offs.size:
            bad = np.flatnonzero(np.diff(np.concatenate(([0], offs))) < 0)
            if bad.size:
                raise w.error("mask_offsets", f"block {int(bad[0])}: offsets must not decrease")
            if offs[-1] != arrays["mask"].size:
                raise w.error("mask_offsets", f"last offset {int(offs[-1])} does not match the "
                                              f"{arrays['mask'].size} bytes of the mask")
        elif arrays["mask"].size:
            raise w.error("mask", f"{arrays['mask'].size} bytes for an empty tensor")

    def model_bytes(self, m: dict) -> int:
        return 8 * (m.get("rows", 0) + m.get("cols", 0))
