"""`--target-bits B` / `ModelConfig(target_bits=B)`: sparsity and bits chosen per layer within
a budget of total bits per compressed weight (numerics: xorsparse.tensor.budget).

One forward pass of the uncompressed model over the calibration data gives every layer's
X^T X; each layer's candidates are then scored by the calibrated pass itself on a subset of
its rows (relative output error) and by the codec's size, weighted by the layer's outliers
(OWL), and the allocation is solved once. The sequential calibration that follows uses the
chosen (sparsity, bits) of each layer. Tensors no data reaches (embedding tables) take part
with identity statistics (their relative weight error).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..tensor.budget import (
    Allocation,
    LayerCosts,
    allocate,
    check_target_bits,
    layer_costs,
    set_outlier_weights,
)
from ..tensor.pipeline import CompressConfig, to_float32
from .calibrate import _whole_model_stats, supports_calibration


def plan_allocation(model: nn.Module, modules: Sequence[tuple[str, nn.Module]], data: Any, config: CompressConfig,
                    target_bits: float, free: dict[str, Any] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> Allocation:
    """The (sparsity, bits) of every module in `modules` (and of every data-free tensor in
    `free`, name -> weight) that keeps the weighted proxy error lowest within target_bits."""
    target = check_target_bits(target_bits)
    calibratable = {n: m for n, m in modules if supports_calibration(m)}
    with torch.no_grad():
        stats = _whole_model_stats(model, data, calibratable) if calibratable else {}
    items: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for n, m in modules:
        st = stats.get(n)
        xtx = st.xtx.numpy() if st is not None and st.count > 0 else None
        items.append((n, to_float32(m.weight.detach())[0], xtx))
    for n, w in (free or {}).items():
        items.append((n, to_float32(w)[0], None))
    layers: list[LayerCosts] = []
    for i, (n, w, xtx) in enumerate(items):
        if progress:
            progress(i, len(items), n)
        layers.append(layer_costs(n, w.reshape(w.shape[0], -1), xtx, config, seed=i))
    if progress:
        progress(len(items), len(items), "")
    set_outlier_weights(layers)
    return allocate(layers, target)


def configs_of(allocation: Allocation, config: CompressConfig) -> dict[str, CompressConfig]:
    """Each layer's config: `config` with the allocation's sparsity and bits."""
    return {n: replace(config, sparsity=float(s), bits=int(q)) for n, (s, q) in allocation.choices.items()}


def allocation_record(allocation: Allocation, names: dict[str, str] | None = None) -> dict:
    """The `allocation` record of the file (docs/FORMAT.md section 8); names maps module
    names to tensor names."""
    names = names or {}
    return {"target_bits": allocation.target_bits, "estimated_bits": allocation.estimated_bits,
            "proxy_error": allocation.proxy_error,
            "layers": {names.get(n, n): [float(s), int(q)] for n, (s, q) in allocation.choices.items()}}


def allocation_lines(allocation: Allocation, names: dict[str, str] | None = None) -> list[str]:
    """The allocation for people: one line per (sparsity, bits) with the layers that got it."""
    names = names or {}
    groups: dict[tuple[float, int], list[str]] = {}
    for n, c in allocation.choices.items():
        groups.setdefault(c, []).append(names.get(n, n))
    out = [f"bit budget {allocation.target_bits:g} bits per weight: estimated {allocation.estimated_bits:.3f}"]
    for (s, q), ns in sorted(groups.items()):
        more = ", ..." if len(ns) > 3 else ""
        out.append(f"  sparsity {s:.0%} / {q}-bit: {len(ns)} tensors ({', '.join(ns[:3])}{more})")
    return out


__all__ = ["allocation_lines", "allocation_record", "configs_of", "plan_allocation"]
