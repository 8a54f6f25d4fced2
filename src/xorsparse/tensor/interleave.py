"""The order in which a tensor's positions enter the codec: 64-position blocks, permuted.

Magnitude pruning of real weights leaves some rows far denser than others (in MiniLM,
row densities range from 1% to 43% at 90% sparsity). Fed in row-major order, a run of
dense rows is a burst of care bits that no decoder memory absorbs, and every excess care
bit becomes a patch. So the planes are coded in a permuted order of 64-position blocks:
natural block j (row-major positions 64j .. 64j+63) is coded block (j * step) mod NB over
the NB full blocks, step being the integer nearest NB/phi coprime with NB (a short last
block stays last). Neighbouring blocks land far apart and the codec sees an even density,
while decoding stays a gather of whole 64-bit words: cheap, unlike a permutation of
single positions.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

GOLDEN = (1 + 5**0.5) / 2
BLOCK = 64


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


def block_step(length: int) -> int:
    return golden_step(length // BLOCK)


@njit(parallel=True, cache=True, nogil=True)
def _to_coded(src, nfull, step, dst):
    for j in prange(nfull):
        k = (j * step) % nfull
        for i in range(BLOCK):
            dst[k * BLOCK + i] = src[j * BLOCK + i]
    for p in range(nfull * BLOCK, src.shape[0]):
        dst[p] = src[p]


def to_coded(a: np.ndarray, step: int) -> np.ndarray:
    """Natural-order flat array (one element per position) -> coded order."""
    out = np.empty_like(a)
    if a.size:
        _to_coded(a, np.int64(a.size // BLOCK), np.int64(step), out)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _words_to_natural(coded, nfull, step, out):
    for j in prange(nfull):
        out[j] = coded[(j * step) % nfull]
    for w in range(nfull, out.shape[0]):
        out[w] = coded[w]


def words_to_natural(coded_words: np.ndarray, length: int, step: int, out: np.ndarray | None = None) -> np.ndarray:
    """Packed plane (uint64 words, 64 positions each) in coded order -> natural order.

    `out` may be longer than the plane (padding words are left as they are).
    """
    if out is None:
        out = np.zeros_like(coded_words)
    if coded_words.size:
        _words_to_natural(coded_words, np.int64(length // BLOCK), np.int64(step), out[: coded_words.size])
    return out
