"""Magnitude pruning with a tie rule exact enough to be reproduced by `verify --against`.

Masks are boolean arrays, True where a weight is kept. Weights that are already exactly
zero (SparseGPT or Wanda output, models pruned elsewhere) are always pruned: keeping a
zero would spend a care bit on nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np


def _check(name: str, w: np.ndarray) -> np.ndarray:
    a = np.asarray(w)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"tensor {name!r}: pruning needs floating-point weights, got {a.dtype}")
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"tensor {name!r}: contains NaN or infinite values")
    return a


def _check_sparsity(sparsity: float) -> float:
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    return s


def smallest_mask(absw: np.ndarray, n_prune: int) -> np.ndarray:
    """Boolean mask of the n_prune smallest entries of a flat array; ties go to lower indices."""
    pruned = np.zeros(absw.size, dtype=bool)
    if n_prune <= 0:
        return pruned
    if n_prune >= absw.size:
        pruned[:] = True
        return pruned
    thr = np.partition(absw, n_prune - 1)[n_prune - 1]
    below = absw < thr
    pruned |= below
    ties = np.flatnonzero(absw == thr)
    pruned[ties[: n_prune - int(below.sum())]] = True
    return pruned


def magnitude_mask(w: np.ndarray, sparsity: float, name: str = "tensor") -> np.ndarray:
    """Keep mask pruning round(sparsity * size) weights of smallest magnitude (zeros always)."""
    a = _check(name, w)
    s = _check_sparsity(sparsity)
    flat = np.abs(a.astype(np.float32, copy=False)).ravel()
    pruned = smallest_mask(flat, int(round(s * flat.size)))
    return (~pruned & (flat != 0)).reshape(a.shape)


def global_magnitude_masks(tensors: Mapping[str, np.ndarray], sparsity: float) -> dict[str, np.ndarray]:
    """One magnitude threshold across all tensors (in the mapping's order for ties)."""
    s = _check_sparsity(sparsity)
    arrays = {k: _check(k, v) for k, v in tensors.items()}
    if not arrays:
        return {}
    flat = np.concatenate([np.abs(v.astype(np.float32, copy=False)).ravel() for v in arrays.values()])
    keep = ~smallest_mask(flat, int(round(s * flat.size))) & (flat != 0)
    out, off = {}, 0
    for k, v in arrays.items():
        out[k] = keep[off : off + v.size].reshape(v.shape)
        off += v.size
    return out


def given_mask(w: np.ndarray, mask: np.ndarray, name: str = "tensor") -> np.ndarray:
    """A user's mask, accepted as is (True = keep); only its shape and type are checked."""
    m = np.asarray(mask)
    if m.shape != np.shape(w):
        raise ValueError(f"tensor {name!r}: mask shape {m.shape} differs from weight shape {np.shape(w)}")
    if m.dtype != np.bool_:
        if not np.issubdtype(m.dtype, np.integer) or (m.size and (m.min() < 0 or m.max() > 1)):
            raise ValueError(f"tensor {name!r}: mask must be boolean (or 0/1), got {m.dtype}")
        m = m.astype(bool)
    return m


# ---------------------------------------------------------------------------------------
# Global pruning without holding every tensor: an exact streaming quantile.
#
# |w| as a float32 bit pattern is an unsigned integer that orders like |w| itself, so the
# global threshold is the k-th smallest of those integers: a radix select in two passes of
# 65536 bins (high 16 bits, then the low 16 bits inside the chosen high bin). Each pass reads
# one tensor at a time; what it keeps is a histogram. The masks are those of
# global_magnitude_masks exactly, tie rule included.

HIGH_BINS = 1 << 16
INF_BITS = 0x7F800000  # bit pattern of +inf: above every finite |w|


def magnitude_bits(w: np.ndarray, name: str = "tensor") -> np.ndarray:
    """|w| in float32 as flat uint32 bit patterns (monotone in |w|; -0.0 becomes 0)."""
    a = _check(name, w)
    return np.abs(a.astype(np.float32, copy=False)).ravel().view(np.uint32)


def high_histogram(bits: np.ndarray) -> np.ndarray:
    """Pass 1: counts of the high 16 bits of the magnitude patterns (int64, 65536 bins)."""
    return np.bincount(bits >> np.uint32(16), minlength=HIGH_BINS).astype(np.int64)


def low_values(bits: np.ndarray, high: int) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: the distinct low 16 bits (and their counts) of the patterns in high bin `high`."""
    sel = bits[(bits >> np.uint32(16)) == np.uint32(high)] & np.uint32(0xFFFF)
    vals, counts = np.unique(sel, return_counts=True)
    return vals.astype(np.int64), counts.astype(np.int64)


@dataclass(frozen=True)
class PruneRule:
    """One tensor's share of a global threshold: prune |w| below `threshold` (a float32 bit
    pattern of |w|), and the first `ties` weights (row-major) whose |w| equals it. Zeros are
    always pruned. JSON-able, so it can travel to a worker and into a file's metadata."""

    threshold: int
    ties: int = 0

    def keep(self, w: np.ndarray, name: str = "tensor") -> np.ndarray:
        bits = magnitude_bits(w, name)
        pruned = bits < np.uint32(self.threshold)
        if self.ties:
            pruned[np.flatnonzero(bits == np.uint32(self.threshold))[: self.ties]] = True
        return (~pruned & (bits != 0)).reshape(np.shape(w))

    def to_list(self) -> list[int]:
        return [int(self.threshold), int(self.ties)]


def global_prune_count(total: int, sparsity: float) -> int:
    """How many weights global pruning removes (zeros included): round(sparsity * total)."""
    return int(round(_check_sparsity(sparsity) * total))


def select_high_bin(hist: np.ndarray, n_prune: int) -> tuple[int, int]:
    """(high bin of the threshold, how many weights lie in lower bins), for 0 < n_prune < total."""
    cum = np.cumsum(hist)
    b = int(np.searchsorted(cum, n_prune - 1, side="right"))
    return b, int(cum[b - 1]) if b else 0


def global_rules(order: Sequence[str], total: int, sparsity: float, high: int | None, below: int,
                 low: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, PruneRule]:
    """Per-tensor rules from the two passes: `high`/`below` from select_high_bin over the sum
    of the high histograms, `low` the low_values of every tensor in that bin. `order` is the
    tensors' global order, which decides ties (lower position first, as in
    global_magnitude_masks)."""
    n_prune = global_prune_count(total, sparsity)
    if n_prune <= 0:
        return {n: PruneRule(0, 0) for n in order}
    if n_prune >= total:
        return {n: PruneRule(INF_BITS, 0) for n in order}
    assert high is not None
    hist = np.zeros(HIGH_BINS, dtype=np.int64)
    for vals, counts in low.values():
        np.add.at(hist, vals, counts)
    cum = np.cumsum(hist)
    k = n_prune - 1 - below
    lo = int(np.searchsorted(cum, k, side="right"))
    threshold = (high << 16) | lo
    remaining = n_prune - below - (int(cum[lo - 1]) if lo else 0)
    rules = {}
    for name in order:
        vals, counts = low.get(name, (np.zeros(0, np.int64), np.zeros(0, np.int64)))
        eq = int(counts[vals == lo].sum())
        take = min(eq, remaining)
        remaining -= take
        rules[name] = PruneRule(threshold, take)
    return rules


def streaming_global_rules(order: Sequence[str], get: Callable[[str], np.ndarray],
                           sparsity: float) -> dict[str, PruneRule]:
    """Both passes in one process, reading each tensor (`get(name)`) twice and holding one
    at a time: the rules whose masks equal global_magnitude_masks over `order`."""
    hist = np.zeros(HIGH_BINS, dtype=np.int64)
    total = 0
    for name in order:
        bits = magnitude_bits(get(name), name)
        hist += high_histogram(bits)
        total += bits.size
    n_prune = global_prune_count(total, sparsity)
    high, below, low = None, 0, {}
    if 0 < n_prune < total:
        high, below = select_high_bin(hist, n_prune)
        low = {name: low_values(magnitude_bits(get(name), name), high) for name in order}
    return global_rules(order, total, sparsity, high, below, low)
