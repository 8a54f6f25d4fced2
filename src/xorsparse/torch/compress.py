"""Compress a PyTorch model in one call: which modules, which masks, one config object.

    cm = compress_model(model, ModelConfig(sparsity=0.9, bits=2))
    cm.save("model.xsp")

With calibration data the masks and codes are chosen on the layers' inputs (one-shot,
layer by layer: see calibrate.py), which keeps far more of the model's behaviour:

    cm = compress_model(model, ModelConfig(sparsity=0.5, bits=4, method="sparsegpt"), calibration=batches)
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from typing import Iterable

import torch
from torch import nn

from ..format.container import RawTensor, write_xsp
from ..format.records import CALIBRATION
from ..format.torchconv import raw_from_torch
from ..tensor.budget import check_target_bits
from ..tensor.config import METHODS, CalibrationConfig
from ..tensor.parallel import default_threads
from ..tensor.pipeline import CompressConfig, CompressedTensor, compress_quantized, reference_prune_quantize, to_float32
from ..tensor.prune import global_magnitude_masks
from .attach import attach_prepared
from .calibrate import CalibrationResult, Prepared, as_calibration, calibrate_model, prepare_weight

MODULE_TYPES = {"Linear": nn.Linear, "Conv2d": nn.Conv2d, "Embedding": nn.Embedding}


class ModelCalibrationConfig(CalibrationConfig):
    """A model's calibration: "auto" as well (calibrated where the model can be run)."""

    methods = ("auto",) + METHODS


@dataclass(frozen=True)
class ModelConfig(CompressConfig):
    """CompressConfig plus which modules: their types, and name globs to include/exclude.

    method: 'auto' (the default) is 'sparsegpt' when calibration data is given and
    'magnitude' otherwise; 'wanda' and 'sparsegpt' need calibration data.
    """

    module_types: tuple[str, ...] = ("Linear", "Conv2d")
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    method: str = "auto"
    layer_sparsity: tuple[tuple[str, float], ...] = ()  # (module name glob, sparsity): first match wins
    target_bits: float | None = None  # total bits per weight: (sparsity, bits) chosen per layer (torch/budget.py)

    _methods = ("auto",) + METHODS
    calibration_type = ModelCalibrationConfig

    def for_module(self, name: str) -> "ModelConfig":
        """This config with the sparsity of the first `layer_sparsity` glob matching `name`."""
        for glob, s in self.layer_sparsity:
            if fnmatch.fnmatchcase(name, glob):
                return replace(self, sparsity=float(s), layer_sparsity=())
        return self

    def __post_init__(self) -> None:
        super().__post_init__()
        for item in self.layer_sparsity:
            if len(item) != 2 or not isinstance(item[0], str) or not 0.0 <= float(item[1]) < 1.0:
                raise ValueError(f"layer_sparsity entries are (glob, sparsity in [0, 1)), got {item!r}")
        if self.layer_sparsity and self.global_sparsity:
            raise ValueError("layer_sparsity and global_sparsity exclude each other")
        if self.target_bits is not None:
            check_target_bits(self.target_bits)
            if self.layer_sparsity or self.global_sparsity:
                raise ValueError("target_bits chooses every layer's sparsity: no layer_sparsity or global_sparsity")
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


def resolve_method(config: CompressConfig, calibration: object) -> str:
    """The method a config means given whether calibration data is there ('auto' resolved)."""
    method = config.method
    if method == "auto":
        return "sparsegpt" if calibration is not None else "magnitude"
    if method != "magnitude" and calibration is None:
        raise ValueError(f"method {method!r} needs calibration data: pass calibration=... "
                         "(token batches, a tensor of inputs, or texts for a sentence-transformers model)")
    if method == "magnitude" and calibration is not None:
        raise ValueError("method 'magnitude' uses no calibration data; choose 'wanda' or 'sparsegpt' (or 'auto')")
    return method


@dataclass
class CompressedModel:
    """Compressed weights by parameter name, plus every other state entry as it is.

    prepared: module name -> the pruned and quantized weight (mask, codes, scales) that
    `tensors` encode (in memory only); calibration / quality: records written to the file.
    """

    tensors: dict[str, CompressedTensor]
    raw: dict[str, RawTensor]
    config: ModelConfig
    order: list[str]
    prepared: dict[str, Prepared] = field(default_factory=dict)
    calibration: dict | None = None
    quality: dict | None = None
    allocation: dict | None = None  # target_bits: the (sparsity, bits) chosen per tensor

    def save(self, path: str) -> int:
        info = {"order": self.order, "pruning": "global" if self.config.global_sparsity else "per-tensor"}
        extra = {k: v for k, v in (("calibration", self.calibration), ("quality", self.quality),
                                   ("allocation", self.allocation)) if v is not None}
        return write_xsp(path, self.tensors, self.raw, self.config, info, extra=extra)

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

    def apply_(self, model: nn.Module) -> nn.Module:
        """Write the compressed weights (as they decode) into `model`, in place, and remember
        them there so that `recover(model, teacher, data)` can fine-tune them."""
        return attach_prepared(model, self.prepared, self.config, self.calibration)


def _weight_key(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def _encode_one(p: Prepared, config: ModelConfig, single: bool) -> CompressedTensor:
    if single:
        import numba

        numba.set_num_threads(1)  # per thread: the pool is the parallelism, no nested teams
    return compress_quantized(p.keep, p.quant, p.dtype, config)


def encode_prepared(model: nn.Module, prepared: dict[str, Prepared], config: ModelConfig,
                    calibration: dict | None = None, threads: int | None = None) -> CompressedModel:
    """A CompressedModel holding `prepared` (module name -> Prepared) and `model`'s other state.

    threads: tensors encoded at once (default: one per core); the result is the same for any count.
    """
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if n == 1 or len(prepared) < 2:
        tensors = {_weight_key(k): _encode_one(p, config, False) for k, p in prepared.items()}
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n, thread_name_prefix="xorsparse-compress") as pool:
            futs = {_weight_key(k): pool.submit(_encode_one, p, config, True) for k, p in prepared.items()}
            tensors = {k: f.result() for k, f in futs.items()}
    state = model.state_dict()
    raw = {}
    for k, v in state.items():
        if k not in tensors:
            code, shape, data = raw_from_torch(v)
            raw[k] = RawTensor(code, shape, data)
    return CompressedModel(tensors, raw, config, list(state), dict(prepared), calibration)


def compress_model(model: nn.Module, config: ModelConfig | None = None, masks: dict | None = None,
                   calibration: object = None, progress=None, threads: int | None = None) -> CompressedModel:
    """Prune, quantize and encode the selected modules' weights (the model is not modified).

    masks: optional module name -> keep mask (True = kept), used as is instead of choosing
    one (e.g. from gradual pruning during training); with calibration data the codes are
    still chosen with error feedback.
    threads: tensors encoded at once (default: one per core); the result is the same for any count.
    calibration: inputs to calibrate on (see calibrate.as_calibration: CalibrationData, a
    tensor split along dim 0, a list of batches, or texts for a sentence-transformers
    model); needed by methods 'wanda' and 'sparsegpt'.
    """
    cfg = config or ModelConfig()
    method = resolve_method(cfg, calibration)
    cfg = replace(cfg, method=method)
    mods = selected_modules(model, cfg)
    if cfg.target_bits is not None and method == "magnitude":
        raise ValueError("target_bits chooses sparsity and bits from calibration statistics: pass calibration=... "
                         "with method 'auto', 'sparsegpt' or 'wanda'")
    if method == "magnitude":
        masks = _weight_masks(mods, cfg, masks)
        prepared = {name: prepare_weight(mod.weight, cfg.for_module(name), None,
                                         None if masks is None else masks[name], name=_weight_key(name))
                    for name, mod in mods}
        return encode_prepared(model, prepared, cfg, threads=threads)
    if cfg.global_sparsity:
        raise ValueError("global_sparsity applies to magnitude pruning only; calibrated methods prune per layer")
    if masks is not None:
        missing = [n for n, _ in mods if n not in masks]
        if missing:
            raise ValueError(f"no mask given for module {missing[0]!r}")
    data = as_calibration(calibration, model)
    configs = {n: cfg.for_module(n) for n, _ in mods} if cfg.layer_sparsity else None
    allocation = None
    if cfg.target_bits is not None:
        from .budget import allocation_record, configs_of, plan_allocation

        plan = plan_allocation(model, mods, data, cfg, cfg.target_bits)
        configs, allocation = configs_of(plan, cfg), allocation_record(plan, {n: _weight_key(n) for n, _ in mods})
    saved = {n: m.weight.detach().clone() for n, m in mods}
    try:
        res = calibrate_model(model, cfg, data, mods, masks, progress=progress, configs=configs)
    finally:
        with torch.no_grad():
            for n, m in mods:
                m.weight.copy_(saved[n])
    cm = encode_prepared(model, res.prepared, cfg, calibration_record(res, cfg, data.info), threads=threads)
    cm.allocation = allocation
    return cm


def calibration_record(res: CalibrationResult, config: CompressConfig, info: dict | None = None) -> dict:
    """What the file says about how its codes were chosen (docs/FORMAT.md, section 8)."""

    rec = {"method": config.method, "source": "python", "sequential": res.sequential, "blocks": res.blocks,
           "calibrated_tensors": sum(p.calibrated for p in res.prepared.values()),
           "notes": list(res.notes), "torch": torch.__version__}
    rec.update({k: v for k, v in (info or {}).items() if k in CALIBRATION and k not in
                ("method", "sequential", "blocks", "calibrated_tensors", "notes")})
    return rec


@torch.no_grad()
def reference_model_(model: nn.Module, config: ModelConfig | None = None, masks: dict | None = None) -> nn.Module:
    """Overwrite the selected weights with their pruned-and-quantized reference (no codec).

    Data-free (magnitude) only: a calibrated model's reference is `cm.apply_(model)`.
    """
    cfg = config or ModelConfig()
    if cfg.method not in ("auto", "magnitude"):
        raise ValueError(f"the reference of method {cfg.method!r} depends on calibration data: use cm.apply_(model)")
    mods = selected_modules(model, cfg)
    masks = _weight_masks(mods, cfg, masks)
    for name, mod in mods:
        ref = reference_prune_quantize(mod.weight, cfg, keep=None if masks is None else masks[name],
                                       name=name, framework="torch")
        mod.weight.copy_(ref)
    return model
