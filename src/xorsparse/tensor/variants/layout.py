"""What every quantizer with float scales shares: the overflow repair of its scales and the
log8 requantization (docs/FORMAT.md end of 4.3, and 4.3). Each quantizer supplies only its
part (how a group's scales shrink, how codes are chosen again); the levels come from the
registry, so no quantizer is named here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..codebook import assign_codes
from ..logscale import encode_log8
from ..quant import LEVEL_LIMIT, Quantized, codes_to_planes, planes_to_codes
from .base import QUANTIZERS


def _group_levels(qz: Quantized, s: np.ndarray) -> np.ndarray:
    one = Quantized(qz.quantizer, qz.bits, np.zeros((0, 0), np.uint8), s.reshape(1, 1, -1), 1, 1, 1, qz.symmetric)
    return QUANTIZERS[qz.quantizer].levels_table(one).ravel()


def _fit_group(qz: Quantized, s: np.ndarray, limit: float) -> np.ndarray:
    """The scales of one group shrunk until every level (and every float32 step computing it)
    is finite and within limit."""
    big = float(np.finfo(s.dtype).max)
    s64 = np.clip(s.astype(np.float64), -big, big)
    s64, shrink = QUANTIZERS[qz.quantizer].shrink_group(s64, qz.bits, qz.symmetric, limit)
    lim = np.float32(limit)
    for i in range(26):  # one ulp, then ever larger steps: a few iterations in practice
        cand = s64.astype(s.dtype)
        cand[shrink] = np.where(np.abs(cand[shrink]) > np.abs(s64[shrink]),
                                np.nextafter(cand[shrink], np.zeros_like(cand[shrink])), cand[shrink])
        with np.errstate(over="ignore", invalid="ignore"):
            lv = _group_levels(qz, cand)
        if np.all(np.abs(lv) <= lim):
            return cand
        s64[shrink] = s64[shrink] * (1.0 - 2.0 ** (i - 24))
    return np.zeros_like(s)


def fit_output_range(qz: Quantized, w: np.ndarray, keep: np.ndarray, dtype: str) -> Quantized:
    """Shrink the scales of any (row, group) whose levels would overflow the tensor's dtype.

    A finite weight near float16's 65504, rounded scales and float32 arithmetic can give a
    level that decodes to inf; so can float32 weights near 3.4e38 (hi - lo overflows). The
    groups concerned get the largest scales whose every level is finite in `dtype`, and
    their codes are chosen again for those scales. Reference and codec both quantize
    through here, so they agree. Quantizers without `shrink_group` are returned unchanged.
    """
    variant = QUANTIZERS[qz.quantizer]
    if not variant.repairs_range or qz.scales.size == 0:
        return qz
    limit = LEVEL_LIMIT.get(dtype, LEVEL_LIMIT["float32"])
    with np.errstate(over="ignore", invalid="ignore"):
        bad = ~np.all(np.abs(variant.levels_table(qz)) <= np.float32(limit), axis=2)
    if not bad.any():
        return qz
    scales = qz.scales.copy()
    for r, g in zip(*np.nonzero(bad)):
        scales[r, g] = _fit_group(qz, scales[r, g], limit)
    rows, cols = qz.rows, qz.cols
    w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(rows, cols))
    k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
    codes = planes_to_codes(qz.planes).reshape(rows, cols)
    variant.reassign_codes(qz, w2, k2, scales, bad, codes)
    return Quantized(qz.quantizer, qz.bits, codes_to_planes(codes, qz.bits), scales, rows, cols, qz.group_size,
                     qz.symmetric)


def fit_range(qz: Quantized, w: np.ndarray, keep: np.ndarray, dtype: str, scale_rows: int) -> Quantized:
    """The quantizer's own repair where it has one (codebook), else the per-row scales'
    (shared row groups are left as they are: a layout that overflows is not chosen)."""
    fitted = QUANTIZERS[qz.quantizer].fit_range(qz, w, keep, dtype)
    if fitted is not None:
        return fitted
    return fit_output_range(qz, w, keep, dtype) if scale_rows == 1 else qz


def requantize_log8(qz: Quantized, w: np.ndarray, keep: np.ndarray) -> Quantized:
    """The same quantization with its scales stored as log8 bytes and every kept weight
    re-assigned to its nearest level under the stored scales (ties to the lower code)."""
    codes8, ref = encode_log8(qz.scales)
    new = replace(qz, scales=codes8, scale_ref=ref)
    rows, cols = qz.rows, qz.cols
    codes = np.zeros((rows, cols), dtype=np.int64)
    if rows and cols:
        levels = np.ascontiguousarray(QUANTIZERS[qz.quantizer].levels_table(new)[:, :, None, :])
        w2 = np.ascontiguousarray(np.asarray(w, dtype=np.float32).reshape(rows, cols))
        k2 = np.ascontiguousarray(np.asarray(keep, dtype=bool).reshape(rows, cols))
        assign_codes(w2, k2, levels, qz.group_size, 1, 1 << 62, codes)
    return replace(new, planes=codes_to_planes(codes, qz.bits))
