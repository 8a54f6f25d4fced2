"""The transformers quantizer for xorsparse folders (registered by xorsparse.integrations.hf.register).

transformers reads the .xsp shards as the safetensors files they are; a compressed tensor
NAME arrives as its parts `NAME.__xs__.<part>`. One WeightConverter gathers the parts of
each tensor and an XspDecode operation turns them back into the dense weight (decode mode)
or into an Xor* module that decodes in forward (ondemand mode). The parts' JSON description
comes from the shard headers, read before the weights are loaded; a tensor's parts are
matched to their description by their checksums, so the model's own key renamings
(prefixes added or removed) do not matter.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import torch
from transformers.core_model_loading import ConversionOps, WeightConverter
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ...format.container import READ_VERSIONS, XspError, XspFile, compressed_from_parts
from ...format.torchconv import TORCH_TO_ST
from ...format.validate import check_decode_cost
from ...tensor.pipeline import CompressedTensor, decompress_tensor
from . import QUANT_METHOD, current_load_mode, register

# part name -> source pattern (regular expressions: transformers compiles them)
_PART_PATTERNS = {
    "scales": r"\.__xs__\.scales",
    "zero_points": r"\.__xs__\.zero_points",
    "codebook": r"\.__xs__\.codebook",
    "scale_ref": r"\.__xs__\.scale_ref",
    "mask": r"\.__xs__\.mask",
    "mask_offsets": r"\.__xs__\.mask_offsets",
    "mask_params": r"\.__xs__\.mask_params",
    "mask_model": r"\.__xs__\.mask_model",
    "stream": r"\.__xs__\.plane\d+\.stream",
    "patches": r"\.__xs__\.plane\d+\.patches",
}


class XorsparseConfig(QuantizationConfigMixin):
    """config.json's `quantization_config` of an xorsparse folder."""

    def __init__(self, format_version: int = 2, load_mode: str = "decode", config: dict | None = None,
                 xorsparse_version: str | None = None, compressed_tensors: dict | None = None, **kwargs: Any):
        self.quant_method = QUANT_METHOD
        self.format_version = format_version
        self.load_mode = load_mode
        self.config = config
        self.xorsparse_version = xorsparse_version
        self.compressed_tensors = compressed_tensors
        for k, v in kwargs.items():
            if k != "quant_method":
                setattr(self, k, v)


def _part_bytes(t: torch.Tensor) -> tuple[np.ndarray, str, bytes]:
    """(numpy array, safetensors dtype, bytes) of a part as transformers read it."""
    code = TORCH_TO_ST.get(str(t.dtype).replace("torch.", ""))
    if code is None:
        raise XspError(f"part of dtype {t.dtype} is not an xorsparse part")
    flat = t.detach().cpu().contiguous()
    if code == "BF16":
        a = flat.view(torch.int16).numpy().view(np.uint16)
    else:
        a = flat.numpy()
    return a, code, a.tobytes()


class XspDecode(ConversionOps):
    """The parts of one compressed tensor in, its dense weight (or a placeholder) out."""

    def __init__(self, hf_quantizer: "XorsparseHfQuantizer"):
        self.hf_quantizer = hf_quantizer  # its presence tells transformers not to cast the parts

    def __deepcopy__(self, memo):
        # transformers deep-copies a converter per weight; every copy must report to the one
        # quantizer (its index of descriptions, its pending ondemand modules)
        return self

    def convert(self, input_dict: dict[str, Any], source_patterns: list[str], target_patterns: list[str],
                full_layer_name: str | None = None, model=None, **kwargs) -> dict[str, torch.Tensor]:
        q = self.hf_quantizer
        parts: dict[str, tuple[np.ndarray, str, bytes]] = {}
        for pattern, tensors in input_dict.items():
            kind = q.pattern_kind[pattern]
            tensors = tensors if isinstance(tensors, list) else [tensors]
            if kind in ("stream", "patches"):
                for i, t in enumerate(tensors):
                    parts[f"plane{i}.{kind}"] = _part_bytes(t)
            else:
                parts[kind] = _part_bytes(tensors[0])
        ct, where = q.tensor_for(full_layer_name, parts)
        try:
            ref = model.get_parameter(full_layer_name) if model is not None else None
        except AttributeError:
            ref = None
        if ref is not None and tuple(ref.shape) != tuple(ct.shape):
            raise XspError(f"{where}: shape {tuple(ct.shape)} does not fit {full_layer_name} "
                           f"{tuple(ref.shape)} of this model")
        dtype = ref.dtype if ref is not None else getattr(torch, ct.dtype)
        if q.mode == "ondemand" and q.ondemand_ok(model, full_layer_name):
            q.pending[full_layer_name] = ct
            # a placeholder until the Xor* module replaces the module after loading: one element
            # broadcast to the weight's shape, so that no dense copy of any weight is ever allocated
            return {full_layer_name: torch.zeros((), dtype=dtype).expand(tuple(ct.shape))}
        try:
            return {full_layer_name: decompress_tensor(ct, "torch").to(dtype)}
        except ValueError as e:
            raise XspError(f"{where}: {e}") from None


class XorsparseHfQuantizer(HfQuantizer):
    """Loads xorsparse folders: decodes on load, or keeps weights compressed (ondemand)."""

    requires_calibration = True  # only pre-compressed folders: compress with `xorsparse compress`

    def __init__(self, quantization_config: XorsparseConfig, **kwargs: Any):
        super().__init__(quantization_config, **kwargs)
        self.mode = current_load_mode(getattr(quantization_config, "load_mode", "decode") or "decode")
        if self.mode not in ("decode", "ondemand"):
            raise ValueError(f"xorsparse load_mode must be 'decode' or 'ondemand', got {self.mode!r}")
        # decode mode gives a plain dense model: transformers then drops the quantization config
        quantization_config.dequantize = self.mode == "decode"
        self.index: dict[tuple[int, int], list[tuple[str, str, dict, int]]] = {}
        self.pending: dict[str, CompressedTensor] = {}
        self.device_map: Any = None
        self.pattern_kind = {p: k for k, p in _PART_PATTERNS.items()}

    def validate_environment(self, *args: Any, **kwargs: Any) -> None:
        v = getattr(self.quantization_config, "format_version", None)
        if v not in READ_VERSIONS:
            raise ValueError(f"this folder holds xorsparse format version {v!r}; this xorsparse reads "
                             f"{', '.join(map(str, READ_VERSIONS))}: upgrade xorsparse")

    # --- before loading: the descriptions of every compressed tensor, by checksums -----------

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs: Any):
        self.index.clear()
        self.device_map = kwargs.get("device_map")
        for path in checkpoint_files or []:
            with XspFile(path) as f:  # header only: the whole description validated, nothing decoded
                for name, spec in f.desc.tensors.items():
                    key = (spec.crc.get("mask"), spec.crc.get("plane0.stream"))
                    self.index.setdefault(key, []).append((path, name, spec))
        return model

    def tensor_for(self, target: str | None, parts: dict[str, tuple[np.ndarray, str, bytes]]):
        crc = {k: zlib.crc32(v[2]) & 0xFFFFFFFF for k, v in parts.items()}
        candidates = self.index.get((crc.get("mask"), crc.get("plane0.stream")), [])
        exact = [c for c in candidates if c[2].crc == crc]
        if not exact:
            where = f"{target}" if not candidates else f"{candidates[0][0]}: tensor {candidates[0][1]!r}"
            raise XspError(f"{where}: parts do not match any description in the .xsp headers "
                           "(checksum mismatch or incomplete tensor)")
        named = [c for c in exact if target is not None and (c[1] == target or target.endswith("." + c[1])
                                                               or c[1].endswith("." + target))]
        path, name, spec = (named or exact)[0]
        where = f"{path}: tensor {name!r}"
        check_decode_cost(path, spec)  # the limit XspFile.dense applies (XORSPARSE_MAX_TENSOR_BYTES)
        ct = compressed_from_parts(spec, lambda part: parts[part][:2], path)
        return ct, where

    # --- ondemand: Xor* modules in place of Linear / Conv2d / Embedding ------------------------

    def ondemand_ok(self, model, name: str | None) -> bool:
        """Only the weight of a Linear, Conv2d or Embedding that no other module shares."""
        from ...torch.compress import MODULE_TYPES

        if model is None or not name or not name.endswith(".weight"):
            return False
        try:
            mod = model.get_submodule(name[: -len(".weight")])
        except AttributeError:
            return False
        if not isinstance(mod, tuple(MODULE_TYPES.values())):
            return False
        tied = getattr(model, "all_tied_weights_keys", None) or {}
        return name not in set(tied) | set(tied.values())

    def _process_model_after_weight_loading(self, model, **kwargs: Any):
        from ...torch.modules import XorConv2d, XorEmbedding, XorLinear, parent_of

        for name, ct in self.pending.items():
            mod_name = name[: -len(".weight")]
            mod = model.get_submodule(mod_name)
            if isinstance(mod, torch.nn.Linear):
                new = XorLinear(ct, mod.bias)
            elif isinstance(mod, torch.nn.Conv2d):
                new = XorConv2d(ct, mod)
            else:
                new = XorEmbedding(ct, mod)
            device = self.module_device(mod_name)
            if device is not None:  # on CUDA this builds the Triton kernels' resident copy
                new.to(device)
            parent, attr = parent_of(model, mod_name)
            setattr(parent, attr, new)
        self.pending.clear()
        return model

    def module_device(self, mod_name: str) -> torch.device | None:
        """Where device_map puts this module's weight (None: no device_map; "disk" stays on
        the CPU). The weight itself arrived as a CPU placeholder: its device says nothing."""
        device_map = self.device_map
        if device_map is None:
            return None
        if not isinstance(device_map, dict):
            device_map = {"": device_map}
        from transformers.integrations.accelerate import get_device

        device = get_device(device_map, mod_name + ".weight", valid_torch_device=True)
        return torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)

    # --- what transformers asks of a quantizer ----------------------------------------------------

    def get_weight_conversions(self) -> list:
        if not self.pre_quantized:
            return []
        return [WeightConverter(source_patterns=list(_PART_PATTERNS.values()), target_patterns="",
                                operations=[XspDecode(self)])]

    def update_weight_conversions(self, weight_conversions, model) -> list:
        # ours first: a compressed tensor's parts must never reach the model's own converters
        return self.get_weight_conversions() + list(weight_conversions)

    def is_serializable(self, *args: Any, **kwargs: Any) -> bool:
        return self.mode == "decode"

    @property
    def is_trainable(self) -> bool:
        return self.mode == "decode"


__all__ = ["XorsparseConfig", "XorsparseHfQuantizer", "XspDecode"]


register()  # when importing this module is what loaded transformers' registry (see register)
