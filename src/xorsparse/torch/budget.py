"""`--target-bits B` / `ModelConfig(target_bits=B)`: sparsity and bits chosen per layer within
a budget of total bits per compressed weight (numerics: xorsparse.tensor.budget).

One forward pass of the uncompressed model over the calibration data gives every layer's
X^T X; each layer's candidates are then scored by the calibrated pass itself on a subset of
its rows (relative output error) and by the codec's size. A layer's errors count by its
measured sensitivity: how much the model's output loss (the distillation loss recovery
minimises) grows per unit of that layer's relative output error, from a few forward passes
with noise added to that layer's output alone. (Equal weights, or OWL's outlier weights,
let cheap-looking errors in layers the output depends on most ruin the model: on MiniLM
they picked allocations worse than a uniform (sparsity, bits) of the same size.) The
allocation is solved once. The sequential calibration that follows uses the
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
from .calibrate import _whole_model_stats, as_calibration, run_model, supports_calibration
from .losses import distillation_loss, output_parts

SENSITIVITY_NOISE = 0.1  # relative rms of the noise on one layer's output: relative output MSE 0.01
SENSITIVITY_BATCHES = 4  # calibration batches each layer's sensitivity is measured on


def _outputs_of(model: nn.Module, data: Any, batches: list, what: str) -> list[dict[str, torch.Tensor]]:
    """The model's matchable outputs on each batch (the reference the losses compare with)."""
    return [{k: v.detach() for k, v in output_parts(run_model(model, lambda b=b: data.call(model, b), what)).items()}
            for b in batches]


@torch.no_grad()
def layer_sensitivities(model: nn.Module, modules: Sequence[tuple[str, nn.Module]], data: Any,
                        noise: float = SENSITIVITY_NOISE, batches: int = SENSITIVITY_BATCHES,
                        seed: int = 0) -> dict[str, float]:
    """Per module: the growth of the model's output loss per unit of relative output MSE of
    that module alone, i.e. the distillation loss (against the unperturbed model) with
    seeded Gaussian noise added to the module's output (of relative rms `noise` in every
    output feature), over noise^2.
    A first-order model of how a layer's compression error reaches the output."""
    data = as_calibration(data, model)
    chosen = data.batches[:max(1, batches)]
    what = "the calibration data (layer sensitivities)"
    ref = _outputs_of(model, data, chosen, what)
    out: dict[str, float] = {}
    for i, (name, mod) in enumerate(modules):
        gen = torch.Generator().manual_seed(seed * 100003 + i)

        def add_noise(_m, _a, o, gen=gen):
            if not isinstance(o, torch.Tensor) or not o.is_floating_point():
                return o
            # per output feature: a weight's error follows its row's scale (per-row scales), and
            # one rms over all features would let a few outlier features set the noise of all
            rms = o.float().pow(2).reshape(-1, o.shape[-1]).mean(0).sqrt() if o.dim() else o.float().abs()
            return o + (noise * rms * torch.randn(o.shape, generator=gen)).to(o.dtype)

        handle = mod.register_forward_hook(add_noise)
        try:
            loss = 0.0
            for b, r in zip(chosen, ref):
                got = output_parts(run_model(model, lambda b=b: data.call(model, b), what))
                loss += float(distillation_loss(got, r, b))
        finally:
            handle.remove()
        out[name] = max(loss / len(chosen), 0.0) / noise ** 2
    return out


def plan_allocation(model: nn.Module, modules: Sequence[tuple[str, nn.Module]], data: Any, config: CompressConfig,
                    target_bits: float, free: dict[str, Any] | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> Allocation:
    """The (sparsity, bits) of every module in `modules` (and of every data-free tensor in
    `free`, name -> weight) that keeps the sensitivity-weighted proxy error lowest within
    target_bits."""
    target = check_target_bits(target_bits)
    calibratable = {n: m for n, m in modules if supports_calibration(m)}
    data = as_calibration(data, model)
    with torch.no_grad():
        stats = _whole_model_stats(model, data, calibratable) if calibratable else {}
    sens = layer_sensitivities(model, list(modules), data) if modules else {}
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
    owl = {lc.name: lc.weight for lc in layers}
    plans = {"OWL-weighted": allocate(layers, target)}
    measured = [v for v in sens.values() if v > 0]
    if measured:
        typical = float(np.median(measured))
        for lc in layers:  # errors in units of the output loss; unmeasured tensors: a typical layer, by OWL
            lc.weight = sens[lc.name] / typical if lc.name in sens else lc.weight
        plans["sensitivity-weighted"] = allocate(layers, target)
        for lc in layers:
            lc.weight = owl[lc.name]
    uniform = _uniform_fit(layers, target)
    if uniform is not None:
        plans[f"uniform {uniform.choices[layers[0].name][0]:.0%} / {uniform.choices[layers[0].name][1]}-bit"] = uniform
    if len({tuple(sorted(p.choices.items())) for p in plans.values()}) == 1 or not calibratable:
        return next(iter(plans.values()))
    # the proxies score layers one at a time; the plans they give are checked on the model
    losses = {k: _model_loss(model, modules, data, stats, config, p) for k, p in plans.items()}
    best = min(losses, key=losses.get)
    chosen = plans[best]
    chosen.notes.append("checked on the model (output loss on calibration batches, one-pass calibration): " +
                        ", ".join(f"{k} {v:.4g}" for k, v in losses.items()) + f"; chose {best}")
    return chosen


def _uniform_fit(layers: list[LayerCosts], target: float) -> Allocation | None:
    """The one (sparsity, bits) for every layer with the most bits within the budget (the
    fixed points users would pick), among the candidates all layers share."""
    common = set(layers[0].candidates)
    for lc in layers[1:]:
        common &= set(lc.candidates)
    n = sum(lc.weights for lc in layers)
    best = None
    for c in sorted(common):
        bits = sum(lc.bits[lc.candidates.index(c)] * lc.weights for lc in layers) / n
        if bits <= target and (best is None or bits > best[0]):
            best = (bits, c)
    if best is None:
        return None
    err = float(sum(lc.weight * lc.errors[lc.candidates.index(best[1])] for lc in layers))
    return Allocation(float(target), {lc.name: best[1] for lc in layers}, best[0], err)


@torch.no_grad()
def _model_loss(model: nn.Module, modules: Sequence[tuple[str, nn.Module]], data: Any, stats: dict,
                config: CompressConfig, plan: Allocation, batches: int = SENSITIVITY_BATCHES) -> float:
    """The model's output loss (distillation loss against itself uncompressed, on a few
    calibration batches) with every module compressed at the plan's (sparsity, bits) by one
    calibrated pass on the uncompressed model's statistics; the weights are put back after."""
    from ..tensor.calibrated import calibrated_prune_quantize
    from ..tensor.dequant import dequantize

    chosen = data.batches[:max(1, batches)]
    what = "the calibration data (checking the bit budget's plans)"
    ref = _outputs_of(model, data, chosen, what)
    saved = {n: m.weight.detach().clone() for n, m in modules}
    try:
        for n, m in modules:
            st = stats.get(n)
            if st is None or st.count == 0 or n not in plan.choices:
                continue
            s, q = plan.choices[n]
            w = to_float32(m.weight.detach())[0]
            w2 = w.reshape(w.shape[0], -1)
            cfg = replace(config, sparsity=float(s), bits=int(q), calib_passes=1, scale_rows=1, scale_format="float16")
            keep, qz = calibrated_prune_quantize(w2, st.xtx.numpy(), cfg, name=n)
            m.weight.copy_(torch.from_numpy(dequantize(qz, keep).reshape(w.shape)).to(m.weight.dtype))
        loss = 0.0
        for b, r in zip(chosen, ref):
            loss += float(distillation_loss(output_parts(run_model(model, lambda b=b: data.call(model, b), what)), r, b))
        return loss / len(chosen)
    finally:
        for n, m in modules:
            m.weight.copy_(saved[n])


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
    out += [f"  {note}" for note in allocation.notes]
    for (s, q), ns in sorted(groups.items()):
        more = ", ..." if len(ns) > 3 else ""
        out.append(f"  sparsity {s:.0%} / {q}-bit: {len(ns)} tensors ({', '.join(ns[:3])}{more})")
    return out


__all__ = ["allocation_lines", "allocation_record", "configs_of", "layer_sensitivities", "plan_allocation"]
