"""Patch lists: sorted positions stored as Rice-coded gaps.

Patches are rare and spread out, so the gaps between them are near-geometric; a Rice
code with the best parameter costs within a bit or so of their entropy and decodes with
shifts only. docs/FORMAT.md, section "Patch list", is the exact layout.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def _gaps(positions: np.ndarray) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size and (np.any(pos[1:] <= pos[:-1]) or pos[0] < 0):
        raise ValueError("patch positions must be non-negative and strictly increasing")
    prev = np.concatenate(([-1], pos[:-1]))
    return pos - prev - 1


def rice_bits(positions: np.ndarray, k: int) -> int:
    """Exact coded size in bits of `positions` with parameter k."""
    g = _gaps(positions)
    return int(np.sum(g >> k)) + g.size * (k + 1)


def best_rice_parameter(positions: np.ndarray) -> int:
    """The k in 0..40 that codes these gaps in the fewest bits (smallest k on ties)."""
    g = _gaps(positions)
    if g.size == 0:
        return 0
    sizes = [int(np.sum(g >> k)) + g.size * (k + 1) for k in range(41)]
    return int(np.argmin(sizes))


@njit(cache=True)
def _rice_encode(gaps, k, out):
    pos = 0
    for g in gaps:
        q = g >> k
        for _ in range(q):
            out[pos >> 3] |= np.uint8(1 << (pos & 7))
            pos += 1
        pos += 1  # the terminating zero
        for i in range(k):
            if (g >> i) & 1:
                out[pos >> 3] |= np.uint8(1 << (pos & 7))
            pos += 1
    return pos


@njit(cache=True)
def _rice_decode(data, nbits, count, k, out):
    pos = 0
    prev = -1
    for n in range(count):
        q = 0
        while True:
            if pos >= nbits:
                return -1
            bit = (data[pos >> 3] >> (pos & 7)) & 1
            pos += 1
            if bit == 0:
                break
            q += 1
        if pos + k > nbits:
            return -1
        r = 0
        for i in range(k):
            r |= np.int64((data[pos >> 3] >> (pos & 7)) & 1) << i
            pos += 1
        prev = prev + 1 + ((q << k) | r)
        out[n] = prev
    return pos


def encode_patches(positions: np.ndarray) -> tuple[bytes, int, int]:
    """Returns (data, k, nbits) for strictly increasing positions."""
    g = _gaps(positions)
    k = best_rice_parameter(positions)
    nbits = int(np.sum(g >> k)) + g.size * (k + 1)
    out = np.zeros((nbits + 7) // 8, dtype=np.uint8)
    used = _rice_encode(g.astype(np.int64), k, out)
    assert used == nbits
    return out.tobytes(), k, nbits


def decode_patches(data: bytes, count: int, k: int, nbits: int | None = None) -> np.ndarray:
    """Inverse of encode_patches; raises ValueError if the data ends early."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if nbits is None:
        nbits = buf.size * 8
    if nbits > buf.size * 8:
        raise ValueError(f"patch list claims {nbits} bits but holds {buf.size * 8}")
    out = np.empty(count, dtype=np.int64)
    used = _rice_decode(buf, nbits, count, k, out)
    if used < 0:
        raise ValueError(f"patch list ends before its {count} entries")
    return out


__all__ = ["encode_patches", "decode_patches", "rice_bits", "best_rice_parameter"]
