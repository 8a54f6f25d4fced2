"""From codes back to weights: the levels of every code, and dense tensors from packed bits.

One dequantization serves the reference path and every decoder, so "bit-exact" means the
codec returned exactly the planes the quantizer produced (docs/FORMAT.md section 4).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..codec._bits import ctz64
from .quant import Quantized, planes_to_codes
from .variants import levels_table  # each quantizer's levels (tensor/variants/), re-exported here


def dequantize(qz: Quantized, keep: np.ndarray) -> np.ndarray:
    """Float32 values of shape (rows, cols), exactly zero at pruned positions."""
    rows, cols = qz.rows, qz.cols
    codes = planes_to_codes(qz.planes).reshape(rows, cols)
    gidx = np.arange(cols) // qz.group_size
    out = levels_table(qz)[np.arange(rows)[:, None], gidx[None, :], codes]
    return np.where(np.asarray(keep).reshape(rows, cols), out, np.float32(0)).astype(np.float32)


@njit(parallel=True, cache=True, nogil=True)
def _dense_from_words(mask, planes, levels, rows, cols, gsize, out):
    """Zero the output a span at a time, then fill in the kept weights only.

    Row and column advance incrementally from the word's first position: two integer
    divisions per kept weight would cost more than everything else together.
    """
    q = planes.shape[0]
    n = out.shape[0]
    nwords = (n + 63) // 64
    one_group = gsize >= cols
    span = 64  # words per parallel task
    for t in prange((nwords + span - 1) // span):
        w0 = t * span
        w1 = min(nwords, w0 + span)
        out[w0 * 64 : min(n, w1 * 64)] = np.float32(0.0)
        for w in range(w0, w1):
            _fill_word(mask, planes, levels, cols, gsize, one_group, q, w, out)


@njit(inline="always", cache=True)
def _fill_word(mask, planes, levels, cols, gsize, one_group, q, w, out):
    base = w * 64
    m = mask[w]
    if m:
        r = base // cols
        c0 = base - r * cols
        last = 0
        while m:
            b = ctz64(m)
            m &= m - np.uint64(1)
            c0 += b - last
            last = b
            while c0 >= cols:
                c0 -= cols
                r += 1
            code = 0
            for i in range(q):
                code |= np.int64((planes[i, w] >> np.uint64(b)) & np.uint64(1)) << i
            g = 0 if one_group else c0 // gsize
            out[base + b] = levels[r, g, code]


def dequantize_words(qz: Quantized, mask_words: np.ndarray, plane_words: np.ndarray) -> np.ndarray:
    """dequantize() from packed natural-order bits: one pass, no per-position temporaries."""
    out = np.empty(qz.rows * qz.cols, dtype=np.float32)
    if out.size:
        _dense_from_words(mask_words, plane_words, levels_table(qz), qz.rows, qz.cols, qz.group_size, out)
    return out.reshape(qz.rows, qz.cols)


def squared_error(w: np.ndarray, keep: np.ndarray, qz: Quantized) -> float:
    """Sum of squared errors over the kept weights."""
    d = dequantize(qz, keep).ravel() - np.asarray(w, dtype=np.float32).ravel()
    return float(np.sum(d[np.asarray(keep).ravel()].astype(np.float64) ** 2))
