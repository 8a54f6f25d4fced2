"""Compress a PyTorch model in one call: which modules, which masks, one config object.

    cm = compress_model(model, ModelConfig(sparsity=0.9, bits=2))
    cm.save("model.xsp")
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from ..io.container import RawTensor, write_xsp
from ..io.torchconv import raw_from_torch
from ..tensor.pipeline import CompressConfig, CompressedTensor, compress_tensor, reference_prune_quantize, to_float32
from ..tensor.parallel import compress_many
from ..tensor.prune import global_magnitude_masks

MODULE_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "Embedding": nn.Embedding}


@dataclass(frozen=True)
class ModelConfig(CompressConfig):
    """CompressConfig plus which modules: their types, and name globs to include/exclude."""

    module_types: tuple[str, ...] = ("Linear", "Conv2d")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [t for t in self.module_types if t not in MODULE_TYPES]
        if bad:
            raise ValueError(f"module_types: unknown {bad[0]!r}; choose from {', '.join(MODULE_TYPES)}")


def selected_modules(model: nn.Module, config: ModelConfig) -> list[tuple[str, nn.Module]]:
    types = tuple(MODULE_TYPES[t] for t in config.module_types)
    out = []
    for name, mod in model.named_modules():
        if not isinstance(mod, types) or getattr(mod, "weight", None) is None:
            continue
        if config.include and not any(fnmatch.fnmatchcase(name, g) for g in config.include):
            continue
        if any(fnmatch.fnmatchcase(name, g) for g in config.exclude):
            continue
        out.append((name, mod))
    return out


def _weight_masks(mods: list[tuple[str, nn.Module]], config: ModelConfig,
                  masks: dict | None = None) -> dict | None:
    """Given masks (module name -> keep mask) win; else one global threshold if asked for."""
    if masks is not None:
        missing = [n for n, _ in mods if n not in masks]
        if missing:
            raise ValueError(f"no mask given for module {missing[0]!r}")
        return masks
    if not config.global_sparsity:
        return None
    return global_magnitude_masks({n: to_float32(m.weight)[0] for n, m in mods}, config.sparsity)


@dataclass
class CompressedModel:
    """Compressed weights by parameter name, plus every other state entry as it is."""

    tensors: dict[str, CompressedTensor]
    raw: dict[str, RawTensor]
    config: ModelConfig
    order: list[str]

    def save(self, path: str) -> int:
        info = {"order": self.order, "pruning": "global" if self.config.global_sparsity else "per-tensor"}
        return write_xsp(path, self.tensors, self.raw, self.config, info)

    @property
    def weights(self) -> int:
        return sum(ct.numel for ct in self.tensors.values())

    def bits_per_weight(self, kinds: Iterable[str] | None = None) -> tuple[float, float]:
        """(value, total) bits per weight over the compressed tensors (optionally a subset)."""
        names = list(kinds) if kinds is not None else list(self.tensors)
        n = sum(self.tensors[k].numel for k in names)
        v = sum(self.tensors[k].value_bits for k in names)
        t = sum(self.tensors[k].total_bits for k in names)
        return (v / n, t / n) if n else (0.0, 0.0)


def compress_model(model: nn.Module, config: ModelConfig | None = None,
                   masks: dict | None = None, threads: int | None = None) -> CompressedModel:
    """Prune, quantize and encode the selected modules' weights (the model is not modified).

    masks: optional module name -> keep mask (True = kept), used as is instead of
    magnitude pruning (e.g. from gradual pruning during training). threads: tensors
    compressed at once (default: one per core); the result is the same for any count.
    """
    cfg = config or ModelConfig()
    mods = selected_modules(model, cfg)
    masks = _weight_masks(mods, cfg, masks)
    jobs = [(f"{name}.weight" if name else "weight", mod.weight, None if masks is None else masks[name])
            for name, mod in mods]
    tensors = {key: ct for key, ct, _ in compress_many(jobs, cfg, threads=threads)}
    state = model.state_dict()
    raw = {}
    for k, v in state.items():
        if k not in tensors:
            code, shape, data = raw_from_torch(v)
            raw[k] = RawTensor(code, shape, data)
    return CompressedModel(tensors, raw, cfg, list(state))


@torch.no_grad()
def reference_model_(model: nn.Module, config: ModelConfig | None = None, masks: dict | None = None) -> nn.Module:
    """Overwrite the selected weights with their pruned-and-quantized reference (no codec)."""
    cfg = config or ModelConfig()
    mods = selected_modules(model, cfg)
    masks = _weight_masks(mods, cfg, masks)
    for name, mod in mods:
        ref = reference_prune_quantize(mod.weight, cfg, keep=None if masks is None else masks[name],
                                       name=name, framework="torch")
        mod.weight.copy_(ref)
    return model
