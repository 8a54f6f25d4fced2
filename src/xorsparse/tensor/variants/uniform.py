"""`uniform`: 2^q evenly spaced levels, symmetric or with a low end (docs/FORMAT.md section 4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import (
    UNIFORM_MAX_BITS,
    Quantized,
    quantize_in_row_groups,
    quantize_uniform,
)
from .base import Q_UNIFORM_ASYM, Q_UNIFORM_SYM, Quantizer, register_quantizer


@register_quantizer
class Uniform(Quantizer):
    name = "uniform"
    rank = 1
    max_bits = UNIFORM_MAX_BITS
    repairs_range = True
    refits_scales = True
    help = "uniform: 2^q evenly spaced levels"

    def scale_count(self, symmetric: bool, bits: int) -> int:
        return 1 if symmetric else 2

    def levels(self, qz: Any, s: np.ndarray) -> np.ndarray:
        codes = np.arange(1 << qz.bits).astype(np.float32)
        if qz.symmetric:
            out = s[:, :, 0:1] * (codes - np.float32(((1 << qz.bits) - 1) / 2))
        else:
            out = s[:, :, 1:2] + s[:, :, 0:1] * codes
        return np.ascontiguousarray(out, dtype=np.float32)

    def kernel_kind(self, qz: Any) -> int:
        return Q_UNIFORM_SYM if qz.symmetric else Q_UNIFORM_ASYM

    def quantize(self, w: np.ndarray, keep: np.ndarray, bits: int, symmetric: bool, group_size: int | None,
                 iters: int, scale_rows: int, codebook_rows: int | None,
                 importance: np.ndarray | None) -> Quantized:
        return quantize_in_row_groups(lambda w_, k_, g: quantize_uniform(w_, k_, bits, symmetric, g), w, keep,
                                      group_size, scale_rows)

    def scale_basis(self, codes: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
        if symmetric:
            return (codes - ((1 << bits) - 1) / 2.0)[:, None, :].astype(np.float64)
        return np.stack([codes.astype(np.float64), np.ones_like(codes, dtype=np.float64)], axis=1)

    def shrink_group(self, s64: np.ndarray, bits: int, symmetric: bool, limit: float) -> tuple[np.ndarray, slice]:
        n = (1 << bits) - 1
        if symmetric:
            s64[0] = min(abs(s64[0]), limit / (n / 2))
        else:  # low + scale * code: the product may not overflow either
            f32max = float(np.finfo(np.float32).max)
            s64[0] = min(max(s64[0], 0.0), max(limit - s64[1], 0.0) / n, f32max / n)
        return s64, slice(0, 1)

    def reassign_codes(self, qz: Quantized, w2: np.ndarray, k2: np.ndarray, scales: np.ndarray,
                       bad: np.ndarray, codes: np.ndarray) -> None:
        n = (1 << qz.bits) - 1
        gsize, cols = qz.group_size, qz.cols
        for r, g in zip(*np.nonzero(bad)):
            c0, c1 = g * gsize, min(cols, (g + 1) * gsize)
            x = w2[r, c0:c1].astype(np.float64)
            s = scales[r, g].astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                x = x / s[0] + n / 2.0 if qz.symmetric else (x - s[1]) / s[0]
            x = np.where(np.isfinite(x), x, 0.0)
            codes[r, c0:c1] = np.where(k2[r, c0:c1], np.clip(np.rint(x), 0, n), 0).astype(np.int64)
