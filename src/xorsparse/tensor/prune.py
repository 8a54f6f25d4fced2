"""Magnitude pruning with a tie rule exact enough to be reproduced by `verify --against`.

Masks are boolean arrays, True where a weight is kept. Weights that are already exactly
zero (SparseGPT or Wanda output, models pruned elsewhere) are always pruned: keeping a
zero would spend a care bit on nothing.
"""

from __future__ import annotations

from typing import Mapping

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
