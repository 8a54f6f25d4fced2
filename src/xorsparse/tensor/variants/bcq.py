"""`bcq`: binary-coding quantization, w = sum of q signed scales (docs/FORMAT.md section 4)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import (
    BCQ_MAX_BITS,
    Quantized,
    bcq_reassign,
    quantize_bcq,
    quantize_in_row_groups,
)
from .base import Q_BCQ, Quantizer, register_quantizer


@register_quantizer
class Bcq(Quantizer):
    name = "bcq"
    rank = 0
    max_bits = BCQ_MAX_BITS
    repairs_range = True
    refits_scales = True
    help = "bcq: binary coding, w = sum of q signed scales (default)"

    def scale_count(self, symmetric: bool, bits: int) -> int:
        return bits

    def levels(self, qz: Any, s: np.ndarray) -> np.ndarray:
        codes = np.arange(1 << qz.bits)
        out = np.zeros(s.shape[:2] + (1 << qz.bits,), dtype=np.float32)
        for i in range(qz.bits):  # w = w + S[i] * (+-1), in plane order
            sign = (((codes >> i) & 1) * 2 - 1).astype(np.float32)
            out = out + s[:, :, i : i + 1] * sign
        return np.ascontiguousarray(out, dtype=np.float32)

    def kernel_kind(self, qz: Any) -> int:
        return Q_BCQ

    def quantize(self, w: np.ndarray, keep: np.ndarray, bits: int, symmetric: bool, group_size: int | None,
                 iters: int, scale_rows: int, codebook_rows: int | None,
                 importance: np.ndarray | None) -> Quantized:
        return quantize_in_row_groups(lambda w_, k_, g: quantize_bcq(w_, k_, bits, g, iters), w, keep, group_size,
                                      scale_rows)

    def scale_basis(self, codes: np.ndarray, bits: int, symmetric: bool) -> np.ndarray:
        return np.stack([(((codes >> i) & 1) * 2 - 1) for i in range(bits)], axis=1).astype(np.float64)

    def shrink_group(self, s64: np.ndarray, bits: int, symmetric: bool, limit: float) -> tuple[np.ndarray, slice]:
        total = float(np.sum(np.abs(s64)))  # the largest level is the sum of the scales' magnitudes
        if total > limit:
            s64 = s64 * (limit / total)
        return s64, slice(None)

    def reassign_codes(self, qz: Quantized, w2: np.ndarray, k2: np.ndarray, scales: np.ndarray,
                       bad: np.ndarray, codes: np.ndarray) -> None:
        bcq_reassign(w2, k2, qz.bits, qz.group_size, scales.astype(np.float32), codes)

    def check(self, w: Any, t: dict) -> None:
        if t["symmetric"] is not True:
            raise w.error("symmetric", "must be true for bcq")
