"""The order in which a tensor's positions enter the codec.

Magnitude pruning of real weights leaves some rows and columns far denser than others
(in MiniLM, row densities range from 1% to 43% at 90% sparsity). Fed row by row, a dense
row is a burst of care bits no decoder memory can absorb, and every excess care bit
becomes a patch. The diagonal order visits every row once per R positions, stepping
through the rows by about R/phi (neighbouring rows, such as runs of unused vocabulary
entries in an embedding, land far apart), and walks the columns with a skew near C/phi,
so every row and every column is spread evenly over the plane and the codec sees a
nearly constant density.

Coded index t of an R x C tensor (dim 0 = rows, the rest flattened) is the position
    r = ((t mod R) * row_step) mod R,  c = (floor(t / R) + r * skew) mod C,  p = r * C + c
with row_step = golden_step(R) and skew = golden_step(C).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

GOLDEN = (1 + 5**0.5) / 2


def golden_step(n: int) -> int:
    """The integer nearest n/phi that is coprime with n, the smaller on a tie (0 for n <= 1)."""
    if n <= 1:
        return 0
    target = int(round(n / GOLDEN))
    for d in range(n):
        for s in (target - d, target + d):
            if 1 <= s < n and math.gcd(s, n) == 1:
                return s
    return 1


@njit(parallel=True, cache=True)
def _order(rows, cols, row_step, skew, out):
    n = rows * cols
    for t in prange(n):
        r = ((t % rows) * row_step) % rows
        c = (t // rows + r * skew) % cols
        out[t] = r * cols + c


def coded_order(rows: int, cols: int, row_step: int, skew: int) -> np.ndarray:
    """order[t] = natural (row-major) position of coded index t."""
    n = rows * cols
    out = np.empty(n, dtype=np.int64 if n >= 2**31 else np.int32)
    if n:
        _order(np.int64(rows), np.int64(cols), np.int64(row_step), np.int64(skew), out)
    return out


@njit(parallel=True, cache=True)
def _gather(src, order, dst):
    for t in prange(order.shape[0]):
        dst[t] = src[order[t]]


@njit(parallel=True, cache=True)
def _scatter(src, order, dst):
    for t in prange(order.shape[0]):
        dst[order[t]] = src[t]


def to_coded(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Natural-order flat array -> coded order."""
    out = np.empty_like(a)
    if a.size:
        _gather(a, order, out)
    return out


def to_natural(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Coded-order flat array -> natural order."""
    out = np.empty_like(a)
    if a.size:
        _scatter(a, order, out)
    return out
