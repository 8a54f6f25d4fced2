"""A bit budget: choose (sparsity, bits) per layer to keep the model's outputs closest to the
original's while the total bits per weight (mask, values, patches, scales) stay within a
target. Pure numpy: the caller supplies each layer's weight and its inputs' X^T X.

Cheap proxies, not a search over whole models:

- each layer's relative output error tr(E H E^T) / tr(W H W^T) for every candidate
  (sparsity, bits), measured by running the calibrated pass (error feedback) itself on a
  seeded subset of the layer's rows, on the statistics of the uncompressed model;
- each layer's weight in the sum: OWL's outlier ratio (Yin et al., 2023, "Outlier Weighed
  Layerwise sparsity"): the fraction of |w| * ||x_col|| above OUTLIER_M times the layer's
  mean. Layers with more outliers lose more by pruning, so their errors count more, and
  the allocation gives them less sparsity or more bits;
- each candidate's size from the codec's cost: H(S) mask bits (the context-coded mask sits
  at the entropy), (1 - S) q value bits with the XOR code's ~2% overhead, and the scales.

The allocation minimises sum(weight_l * error_l) subject to sum(n_l * bits_l) <= B * sum(n_l)
by a Lagrange multiplier (bisection), the standard relaxation of this multiple-choice
knapsack; a greedy pass then spends what the multiplier left unspent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SPARSITIES = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BITS = (1, 2, 3, 4)
VALUE_OVERHEAD = 1.02  # XOR code rate over the care bits, measured 1.015-1.018 on MiniLM shapes
MASK_OVERHEAD = 0.01  # bits per weight the context-coded mask adds to H(S)
PROXY_ROWS = 64  # rows per layer the proxy runs the calibrated pass on
OUTLIER_M = 5.0  # OWL's threshold: M times the layer's mean |w| * ||x||
OUTLIER_WEIGHT = (0.5, 2.0)  # clip of a layer's weight (its outlier ratio over the mean)


def entropy(p: float) -> float:
    return 0.0 if p <= 0.0 or p >= 1.0 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def candidate_bits(rows: int, cols: int, sparsity: float, bits: int, quantizer: str = "bcq",
                   scale_bits: int = 16) -> float:
    """Estimated total bits per weight of one tensor at (sparsity, bits)."""
    scales = (bits if quantizer == "bcq" else 1) * scale_bits / max(cols, 1)
    mask = entropy(sparsity) + (MASK_OVERHEAD if sparsity > 0 else 0.0)
    return mask + (1.0 - sparsity) * bits * VALUE_OVERHEAD + scales


def outlier_ratio(w: np.ndarray, xtx: np.ndarray | None, m: float = OUTLIER_M) -> float:
    """OWL's layerwise outlier distribution: share of |w| * ||x_col|| above m times its mean."""
    w2 = np.abs(np.asarray(w, dtype=np.float64).reshape(np.shape(w)[0], -1))
    if xtx is not None:
        w2 = w2 * np.sqrt(np.maximum(np.diag(np.asarray(xtx, dtype=np.float64)), 0.0))[None, :]
    mean = float(w2.mean()) if w2.size else 0.0
    return float(np.count_nonzero(w2 > m * mean)) / max(w2.size, 1) if mean > 0 else 0.0


@dataclass
class LayerCosts:
    """One layer's candidates: their estimated bits per weight and proxy errors."""

    name: str
    weights: int
    candidates: list[tuple[float, int]]
    bits: np.ndarray
    errors: np.ndarray
    outliers: float = 0.0
    weight: float = 1.0


def layer_costs(name: str, w: np.ndarray, xtx: np.ndarray | None, config, candidates=None, rows: int = PROXY_ROWS,
                seed: int = 0) -> LayerCosts:
    """Proxy output error and estimated size of every candidate for one layer (xtx None:
    a layer no data reaches; identity statistics, i.e. the relative weight error)."""
    from dataclasses import replace

    from .calibrated import (
        calibrated_prune_quantize,
        damped_hessian,
        inverse_cholesky,
        output_error,
    )
    from .dequant import dequantize
    from .pipeline import prune_quantize

    shape = np.shape(w)
    w2 = np.asarray(w, dtype=np.float32).reshape(shape[0], -1)
    r, c = w2.shape
    cands = list(candidates or [(s, q) for s in SPARSITIES for q in BITS])
    pick = np.sort(np.random.default_rng(seed).choice(r, size=min(rows, r), replace=False))
    sub = np.ascontiguousarray(w2[pick])
    h = np.eye(c) if xtx is None else np.asarray(xtx, dtype=np.float64)
    errs, bits = [], []
    u = None if xtx is None else inverse_cholesky(damped_hessian(h, config.calib_damp))
    for s, q in cands:
        cfg = replace(config, sparsity=float(s), bits=int(q), calib_passes=1, scale_rows=1, scale_format="float16",
                      method="magnitude" if xtx is None else config.method)
        if xtx is None:
            k, qz, _ = prune_quantize(sub, cfg, name=name)
        else:
            k, qz = calibrated_prune_quantize(sub, h, cfg, name=name, inverse_factor=u)
        errs.append(output_error(sub, dequantize(qz, k).reshape(sub.shape), h))
        bits.append(candidate_bits(r, c, s, q, config.quantizer))
    return LayerCosts(name, int(w2.size), cands, np.array(bits), np.array(errs), outlier_ratio(w2, xtx))


def set_outlier_weights(layers: list[LayerCosts]) -> None:
    """Each layer's weight: its outlier ratio over the mean ratio, clipped (OWL)."""
    ratios = np.array([lc.outliers for lc in layers])
    mean = float(ratios.mean()) if len(ratios) else 0.0
    for lc in layers:
        lc.weight = float(np.clip(lc.outliers / mean, *OUTLIER_WEIGHT)) if mean > 0 else 1.0


@dataclass
class Allocation:
    target_bits: float
    choices: dict[str, tuple[float, int]]  # layer name -> (sparsity, bits)
    estimated_bits: float  # weighted mean of the chosen candidates' estimates
    proxy_error: float  # sum of weight * error
    notes: list[str] = field(default_factory=list)


def _pick(layers: list[LayerCosts], lam: float) -> list[int]:
    return [int(np.argmin(lc.weight * lc.errors + lam * lc.bits * lc.weights)) for lc in layers]


def _mean_bits(layers: list[LayerCosts], idx: list[int]) -> float:
    n = sum(lc.weights for lc in layers)
    return sum(lc.bits[i] * lc.weights for lc, i in zip(layers, idx)) / n


def allocate(layers: list[LayerCosts], target_bits: float) -> Allocation:
    """(sparsity, bits) per layer minimising the weighted proxy error within target_bits."""
    if not layers:
        raise ValueError("no layer to allocate bits to")
    cheapest = [int(np.argmin(lc.bits)) for lc in layers]
    floor = _mean_bits(layers, cheapest)
    if target_bits < floor:
        raise ValueError(f"--target-bits {target_bits:g} is below the smallest size the candidates reach "
                         f"({floor:.3f} bits per weight)")
    lo, hi = 0.0, 1.0
    while _mean_bits(layers, _pick(layers, hi)) > target_bits and hi < 1e30:
        hi *= 4.0
    if _mean_bits(layers, _pick(layers, lo)) <= target_bits:
        hi = lo
    for _ in range(100):
        mid = (lo + hi) / 2
        if _mean_bits(layers, _pick(layers, mid)) > target_bits:
            lo = mid
        else:
            hi = mid
    idx = _pick(layers, hi)
    # greedy: spend the slack on the moves with the best error saved per bit
    n = sum(lc.weights for lc in layers)
    while True:
        spare = target_bits * n - sum(lc.bits[i] * lc.weights for lc, i in zip(layers, idx))
        best, move = 0.0, None
        for li, lc in enumerate(layers):
            cur = idx[li]
            for j in range(len(lc.candidates)):
                extra = (lc.bits[j] - lc.bits[cur]) * lc.weights
                gain = lc.weight * (lc.errors[cur] - lc.errors[j])
                if gain > 0 and extra <= spare and (extra <= 0 or gain / extra > best):
                    best, move = (math.inf if extra <= 0 else gain / extra), (li, j)
        if move is None:
            break
        idx[move[0]] = move[1]
    choices = {lc.name: lc.candidates[i] for lc, i in zip(layers, idx)}
    err = float(sum(lc.weight * lc.errors[i] for lc, i in zip(layers, idx)))
    return Allocation(float(target_bits), choices, _mean_bits(layers, idx), err)


def check_target_bits(value: object) -> float:
    """A --target-bits value: a finite number of bits per weight in (0, 16]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 < float(value) <= 16.0:
        raise ValueError(f"target bits must be a number in (0, 16] (total bits per weight), got {value!r}")
    return float(value)


__all__ = ["Allocation", "BITS", "LayerCosts", "SPARSITIES", "allocate", "candidate_bits", "check_target_bits",
           "entropy", "layer_costs", "outlier_ratio", "set_outlier_weights"]
