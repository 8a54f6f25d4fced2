"""compressed-tensors checkpoints in and out, losslessly.

In: a model folder whose config.json carries a compressed-tensors `quantization_config`.
Integer-quantized weights (`pack-quantized`, `int-quantized`, `naive-quantized`; group,
channel or tensor scales; symmetric or with zero points) become `affine` tensors: their
codes, scales and zero points stored as they are, pruned positions being the codes equal to
their zero point (docs/FORMAT.md 2.1). Each is checked against compressed-tensors' own
dequantization while it is read. Legacy `sparse-bitmask` tensors (values, packed bitmask,
row offsets: compressed-tensors 0.20 no longer reads them) are read here and become dense
weights with zeros, as are dense checkpoints saved with zeros by SparseGPT or Wanda.

Out: `write_compressed_tensors_folder` gives back a folder in the formats compressed-tensors
0.20 reads, packed with its own helpers, every weight checked against its dequantization.

The compressed-tensors library parses the configuration, matches modules to schemes, packs
and unpacks; this module only moves codes between its layout and ours.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..format import safetensors_io as st
from ..format.torchconv import raw_from_torch
from ..tensor.dequant import dequantize
from ..tensor.pipeline import Prepared, decompress_codes, from_float32
from ..tensor.quant import given_keep, quantize_given
from ..tensor.variants.affine import Affine
from .folder import (
    CONFIG,
    FolderPlan,
    carried_of_xsp_folder,
    copy_carried,
    model_subfolder,
    read_config,
    shard_name,
    weights_dir,
    write_index,
    xsp_files,
)
from .readers import Checkpoint, CheckpointError, Progress, open_checkpoint
from .xspset import XspSet

QUANT_METHOD = "compressed-tensors"
SUPPORTED_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")
SCALE_DTYPES = {"float16", "bfloat16", "float32"}
BITMASK_PARTS = ("shape", "compressed", "bitmask", "row_offsets")


def is_compressed_tensors(config: Mapping[str, Any] | None) -> bool:
    q = (config or {}).get("quantization_config")
    return isinstance(q, dict) and q.get("quant_method") == QUANT_METHOD


def is_compressed_tensors_folder(path: str) -> bool:
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return is_compressed_tensors(json.load(f))
    except (OSError, ValueError, AttributeError):
        return False


def _require():
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise ImportError("compressed-tensors checkpoints need the compressed-tensors package: "
                          "pip install 'xorsparse[hf]'") from None


def _torch_dtype_name(t) -> str:
    return str(t.dtype).replace("torch.", "")


class _LazyPrepared(Mapping):
    """Prepared tensors by name, each read and checked only when its shard asks for it, so a
    large checkpoint is never held in memory whole."""

    def __init__(self, names: list[str], prepare):
        self._names = list(names)
        self._set = set(names)
        self._prepare = prepare

    def __getitem__(self, name: str) -> Prepared:
        if name not in self._set:
            raise KeyError(name)
        return self._prepare(name)

    def __contains__(self, name: object) -> bool:
        return name in self._set

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@dataclass
class CTInput:
    """A compressed-tensors checkpoint seen as dense tensor names, with the quantized ones
    prepared (codes, scales, zero points as given)."""

    checkpoint: Checkpoint
    prepared: Mapping[str, Prepared]
    notes: list[str] = field(default_factory=list)


def _quant_config(qc: Mapping[str, Any], where: str):
    from compressed_tensors.quantization import QuantizationConfig

    if not qc.get("config_groups"):
        return None
    try:
        return QuantizationConfig.model_validate(dict(qc))
    except Exception as e:  # pydantic's ValidationError, with a long message
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{where}: quantization_config is not a valid compressed-tensors config ({first})") \
            from None


def _scheme_format(scheme, qconf) -> str:
    import torch
    from compressed_tensors.compressors.format import infer_module_format

    fmt = scheme.format or qconf.format
    if fmt in (None, "mixed-precision"):
        fmt = infer_module_format(torch.nn.Linear, scheme)
    return getattr(fmt, "value", fmt)


def _check_scheme(scheme, fmt: str, where: str) -> None:
    w = scheme.weights
    strategy = getattr(w.strategy, "value", w.strategy)
    qtype = getattr(w.type, "value", w.type)
    if fmt not in SUPPORTED_FORMATS:
        raise CheckpointError(f"{where}: compressed-tensors format {fmt!r} is not supported "
                              f"(integer formats: {', '.join(SUPPORTED_FORMATS)})")
    if qtype != "int":
        raise CheckpointError(f"{where}: {qtype} weight quantization has no integer codes; not supported")
    if not 1 <= w.num_bits <= 8:
        raise CheckpointError(f"{where}: {w.num_bits}-bit weights; supported: 1 to 8 bits")
    if strategy not in ("group", "channel", "tensor"):
        raise CheckpointError(f"{where}: weight strategy {strategy!r} is not supported (group, channel, tensor)")
    if w.dynamic:
        raise CheckpointError(f"{where}: dynamic weight quantization stores no scales; not supported")


def _scheme_matches(names, qconf, param):
    """(module name, scheme, format) for every module a scheme claims, first scheme first.

    Reading (`param` None), a module is claimed only where its checkpoint has the scheme's
    first parameter and a `weight_scale`: a target like "Linear" matches every name here."""
    from compressed_tensors.utils.match import match_quantizable_tensors

    claimed: dict[str, tuple[Any, str]] = {}
    for scheme in qconf.config_groups.values():
        if scheme.weights is None:
            continue
        fmt = _scheme_format(scheme, qconf)
        from compressed_tensors.compressors import BaseCompressor

        compressor = BaseCompressor.get_value_from_registry(fmt)
        root = compressor.compression_param_names(scheme)[0] if param is None else param
        for module, _ in match_quantizable_tensors({n: None for n in names}, ignore=qconf.ignore,
                                                   targets=scheme.targets, param_targets=[root]):
            if param is None and f"{module}.weight_scale" not in names:
                continue
            claimed.setdefault(module, (scheme, fmt))
    return claimed


def _bitmask_dense(get, module: str, where: str):
    """The legacy sparse-bitmask layout: `M.shape`, `M.compressed` (kept values in row-major
    order), `M.bitmask` (rows of little-endian bits, numpy.packbits along the last axis),
    `M.row_offsets` (index of each row's first value). Every field is checked."""
    import torch

    shape_t, values, bitmask, offsets = (get(f"{module}.{p}") for p in BITMASK_PARTS)
    tag = f"{where}: tensor {module + '.weight'!r}"
    shape = [int(s) for s in shape_t.reshape(-1).tolist()]
    if len(shape) != 2 or min(shape) < 0 or shape_t.dtype.is_floating_point:
        raise CheckpointError(f"{tag}: field 'shape': expected two non-negative integers, got {shape}")
    rows, cols = shape
    if bitmask.dtype not in (torch.uint8, torch.int8) or tuple(bitmask.shape) != (rows, -(-cols // 8)):
        raise CheckpointError(f"{tag}: field 'bitmask': {bitmask.dtype} {tuple(bitmask.shape)}, "
                              f"expected uint8 {(rows, -(-cols // 8))}")
    bits = np.unpackbits(bitmask.view(torch.uint8).numpy(), axis=-1, count=cols, bitorder="little").astype(bool)
    counts = bits.sum(axis=1)
    if values.dim() != 1 or values.numel() != int(counts.sum()):
        raise CheckpointError(f"{tag}: field 'compressed': {values.numel()} values for {int(counts.sum())} "
                              "set mask bits")
    want = np.cumsum(counts) - counts
    if offsets.dim() != 1 or offsets.numel() != rows or offsets.dtype.is_floating_point or \
            not np.array_equal(offsets.numpy().astype(np.int64), want):
        raise CheckpointError(f"{tag}: field 'row_offsets': does not match the bitmask's row counts")
    dense = torch.zeros((rows, cols), dtype=values.dtype)
    dense[torch.from_numpy(bits)] = values
    return dense


def _given_from_state(sd: dict, scheme, fmt: str, tag: str):
    """(signed codes int8 (rows, cols), scales float32 (rows, groups), zero points int8 or
    None, scale dtype name, group size) from a module's compressed-tensors state dict."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    w = scheme.weights
    bits = w.num_bits
    strategy = getattr(w.strategy, "value", w.strategy)
    scale = sd["weight_scale"]
    sdt = _torch_dtype_name(scale)
    if sdt not in SCALE_DTYPES:
        raise CheckpointError(f"{tag}: field 'weight_scale': dtype {sdt} (float16, bfloat16 or float32 expected)")
    if fmt == "pack-quantized":
        shape = tuple(int(s) for s in sd["weight_shape"].reshape(-1).tolist())
        if len(shape) != 2:
            raise CheckpointError(f"{tag}: field 'weight_shape': {list(shape)}; only 2-D weights are supported")
        packed = sd["weight_packed"]
        if packed.dtype != torch.int32 or packed.dim() != 2 or packed.shape[0] != shape[0] or \
                packed.shape[1] != -(-shape[1] * bits // 32):
            raise CheckpointError(f"{tag}: field 'weight_packed': {packed.dtype} {tuple(packed.shape)} does not "
                                  f"hold {bits}-bit codes of shape {shape}")
        codes = unpack_from_int32(packed, bits, torch.Size(shape))
    else:
        codes = sd["weight"]
        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise CheckpointError(f"{tag}: field 'weight': {codes.dtype} {tuple(codes.shape)}, expected 2-D int8 codes")
        shape = tuple(codes.shape)
    rows, cols = shape
    if strategy == "group":
        gsize = int(w.group_size)
        if gsize < 1 or cols % gsize:
            raise CheckpointError(f"{tag}: {cols} columns are not a multiple of the group size {gsize}")
        groups = cols // gsize
    else:
        gsize, groups = cols, 1
    want = (rows, groups) if strategy != "tensor" else (1,)
    if tuple(scale.shape) not in (want, (rows, groups)):
        raise CheckpointError(f"{tag}: field 'weight_scale': shape {tuple(scale.shape)}, expected {want}")
    scales = scale.float().reshape(-1, groups).expand(rows, groups).contiguous().numpy()
    zp = None
    if not w.symmetric:
        z = sd.get("weight_zero_point")
        if z is None:
            raise CheckpointError(f"{tag}: field 'weight_zero_point': missing for an asymmetric scheme")
        if fmt == "pack-quantized" and strategy in ("group", "channel"):
            if z.dtype != torch.int32 or tuple(z.shape) != (-(-rows * bits // 32), groups):
                raise CheckpointError(f"{tag}: field 'weight_zero_point': {z.dtype} {tuple(z.shape)} does not hold "
                                      f"packed {bits}-bit zero points for {(rows, groups)}")
            z = unpack_from_int32(z, bits, torch.Size((rows, groups)), packed_dim=0)
        zf = z.double().reshape(-1, groups).expand(rows, groups)
        if z.is_floating_point() and not torch.equal(zf, zf.round()):
            raise CheckpointError(f"{tag}: field 'weight_zero_point': not integers")
        if zf.numel() and (zf.min() < -128 or zf.max() > 127):
            raise CheckpointError(f"{tag}: field 'weight_zero_point': outside -128..127")
        zp = zf.to(torch.int8).contiguous().numpy()
    return codes.numpy(), scales, zp, sdt, gsize


def read_compressed_tensors(folder: str, config: Mapping[str, Any]) -> CTInput:
    """The tensors of a compressed-tensors folder: quantized modules prepared as `affine`
    tensors (lossless), legacy bitmask tensors made dense, everything else as stored."""
    _require()
    import torch
    from compressed_tensors.compressors import BaseCompressor


    raw = open_checkpoint(folder)
    qc = config["quantization_config"]
    where = os.path.join(folder, "config.json")
    qconf = _quant_config(qc, where)
    notes = []
    names = set(raw.names)

    # legacy sparse-bitmask: M.shape/compressed/bitmask/row_offsets -> M.weight
    bitmask_modules = [n[: -len(".bitmask")] for n in raw.names if n.endswith(".bitmask")
                       and all(f"{n[: -len('.bitmask')]}.{p}" in names for p in BITMASK_PARTS)]
    virtual: dict[str, tuple[str, Any]] = {}  # dense name -> (kind, detail)
    consumed: dict[str, str] = {}  # checkpoint name -> dense name it is part of
    for m in bitmask_modules:
        virtual[m + ".weight"] = ("bitmask", m)
        for p in BITMASK_PARTS:
            consumed[f"{m}.{p}"] = m + ".weight"
    if bitmask_modules:
        notes.append(f"read {len(bitmask_modules)} legacy sparse-bitmask tensors")

    dense_cache: dict[str, Any] = {}

    def dense_get(name: str):
        if name in virtual:
            if name not in dense_cache:
                dense_cache.clear()
                dense_cache[name] = _bitmask_dense(raw.get, virtual[name][1], raw.path)
            return dense_cache[name]
        return raw.get(name)

    def view_names() -> list[str]:
        return [virtual_of(n) for n in raw.names]

    def virtual_of(n: str) -> str:
        return consumed.get(n, n)

    # which module each scheme claims, checked up front (names and configuration only)
    claims: dict[str, tuple[str, Any, str, list[str]]] = {}  # dense name -> module, scheme, format, params
    if qconf is not None:
        current = list(dict.fromkeys(view_names()))
        for module, (scheme, fmt) in _scheme_matches(current, qconf, None).items():
            tag = f"{raw.path}: tensor {module + '.weight'!r}"
            if f"{module}.weight_g_idx" in names or \
                    getattr(scheme.weights.actorder, "value", scheme.weights.actorder) == "group":
                raise CheckpointError(f"{tag}: activation-ordered groups (actorder, weight_g_idx) are not supported")
            _check_scheme(scheme, fmt, tag)
            params = list(BaseCompressor.get_value_from_registry(fmt).compression_param_names(scheme))
            missing = [p for p in params if p != "weight_zero_point" and f"{module}.{p}" not in names
                       and f"{module}.{p}" not in virtual]
            if missing:
                raise CheckpointError(f"{tag}: missing {module}.{missing[0]}")
            dense_name = module + ".weight"
            claims[dense_name] = (module, scheme, fmt, params)
            for p in params:
                if f"{module}.{p}" in names:
                    consumed[f"{module}.{p}"] = dense_name
            if dense_name in virtual:  # int8 codes stored in the legacy bitmask layout
                virtual[dense_name] = ("bitmask codes", virtual[dense_name][1])
        if claims:
            notes.append(f"{len(claims)} compressed-tensors quantized weights stored as given "
                         "(codes, scales, zero points): nothing re-quantized")

    def state(dense_name: str) -> dict:
        module, scheme, fmt, params = claims[dense_name]
        sd = {}
        for p in params:
            full = f"{module}.{p}"
            if full in virtual:
                sd[p] = _bitmask_dense(raw.get, virtual[full][1], raw.path)
            elif full in names:
                sd[p] = raw.get(full)
        return sd

    def prepare(dense_name: str) -> Prepared:
        """Read one quantized module, check it against compressed-tensors' dequantization."""
        module, scheme, fmt, params = claims[dense_name]
        tag = f"{raw.path}: tensor {dense_name!r}"
        sd = state(dense_name)
        codes, scales, zp, sdt, gsize = _given_from_state(sd, scheme, fmt, tag)
        try:
            qz = quantize_given(codes, scales, zp, scheme.weights.num_bits, gsize, sdt)
        except ValueError as e:
            raise CheckpointError(f"{tag}: {e}") from None
        keep = given_keep(codes, qz.scales, qz.zero_points, gsize)
        ours = from_float32(dequantize(qz, keep), sdt, "torch").reshape(codes.shape)
        theirs = BaseCompressor.get_value_from_registry(fmt).decompress(dict(sd), scheme)["weight"]
        if theirs.dtype != ours.dtype or not torch.equal(theirs.view(torch.uint8), ours.view(torch.uint8)):
            raise CheckpointError(f"{tag}: compressed-tensors dequantizes these codes differently from the "
                                  "affine quantizer; not stored (please report)")
        return Prepared(keep, qz, sdt, input_bytes=sum(t.numel() * t.element_size() for t in sd.values()))

    prepared = _LazyPrepared(list(claims), prepare)

    order = list(dict.fromkeys(virtual_of(n) for n in raw.names))
    shards = []
    seen: set[str] = set()
    for f, ns in raw.shards:
        vs = [v for v in dict.fromkeys(virtual_of(n) for n in ns) if v not in seen]
        seen.update(vs)
        shards.append((f, vs))

    def load(name: str):
        if name in claims:  # compressed-tensors' own dequantization
            module, scheme, fmt, _ = claims[name]
            return BaseCompressor.get_value_from_registry(fmt).decompress(state(name), scheme)["weight"]
        return dense_get(name)

    def info(name: str):
        if name in claims:
            module, scheme, fmt, _ = claims[name]
            dtype = raw.info(f"{module}.weight_scale")[0]
            if fmt == "pack-quantized":
                return dtype, tuple(int(s) for s in raw.get(f"{module}.weight_shape").reshape(-1).tolist())
            return dtype, (virtual_info(f"{module}.weight") if f"{module}.weight" in virtual
                           else raw.info(f"{module}.weight"))[1]
        if name in virtual:
            return virtual_info(name)
        return raw.info(name)

    def virtual_info(name: str):
        m = virtual[name][1]
        return (raw.info(f"{m}.compressed")[0],
                tuple(int(s) for s in raw.get(f"{m}.shape").reshape(-1).tolist()))

    ck = Checkpoint(raw.path, order, load, shards, info, raw.extra_files)
    return CTInput(ck, prepared, notes)


# ---------------------------------------------------------------------------------------
# Writing compressed-tensors folders


def _signed_codes(ct) -> np.ndarray:
    """The affine tensor's signed codes, pruned positions set to their zero point."""

    q = ct.quant
    keep, codes = decompress_codes(ct)
    rows, cols = q.rows, q.cols
    signed = codes.reshape(rows, cols).astype(np.int64) - (1 << (q.bits - 1))
    gidx = np.arange(cols) // q.group_size
    z = np.zeros((rows, cols), np.int64) if q.zero_points is None else q.zero_points.astype(np.int64)[:, gidx]
    return np.where(keep.reshape(rows, cols), signed, z).astype(np.int8)


def _ct_state(ct, scheme, fmt: str, tag: str) -> dict:
    """A module's compressed-tensors state dict from an affine tensor, packed with the
    library's own helpers."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    q = ct.quant
    w = scheme.weights
    strategy = getattr(w.strategy, "value", w.strategy)
    if q.quantizer != Affine.name or q.bits != w.num_bits or q.symmetric != bool(w.symmetric):
        raise CheckpointError(f"{tag}: stored as {q.quantizer} q={q.bits}, which the compressed-tensors scheme "
                              f"({w.num_bits}-bit {'symmetric' if w.symmetric else 'asymmetric'}) cannot express")
    sd_dtype = getattr(torch, q.scale_dtype)
    codes = torch.from_numpy(_signed_codes(ct))
    scales = torch.from_numpy(np.ascontiguousarray(q.scales[:, :, 0])).to(sd_dtype)
    zp = None if q.zero_points is None else torch.from_numpy(q.zero_points.copy())
    if strategy == "tensor":
        if not (torch.equal(scales, scales[:1].expand_as(scales)) and (zp is None or torch.equal(zp, zp[:1].expand_as(zp)))):
            raise CheckpointError(f"{tag}: per-tensor scheme but the rows have different scales")
        scales = scales.reshape(-1)[:1].clone()
        zp = None if zp is None else zp.reshape(-1)[:1].clone()
    sd: dict[str, Any] = {"weight_scale": scales}
    if fmt == "pack-quantized":
        sd["weight_packed"] = pack_to_int32(codes, q.bits)
        sd["weight_shape"] = torch.tensor(list(ct.shape))
        if zp is not None:
            sd["weight_zero_point"] = pack_to_int32(zp, q.bits, packed_dim=0).contiguous() \
                if strategy in ("group", "channel") else zp
    else:
        sd["weight"] = codes
        if zp is not None:
            sd["weight_zero_point"] = zp
    return sd


def write_compressed_tensors_folder(src: str, out: str, progress: Progress | None = None) -> int:
    """An xorsparse folder made from a compressed-tensors checkpoint back to one: quantized
    weights in their scheme's format, everything else dense, config as it came in."""
    _require()
    import torch
    from compressed_tensors.compressors import BaseCompressor


    sub = model_subfolder(src)
    cfg = read_config(os.path.join(weights_dir(src), CONFIG)) or {}
    qcfg = cfg.get("quantization_config") or {}
    ct_config = qcfg.get("compressed_tensors")
    if not isinstance(ct_config, dict):
        raise CheckpointError(f"{src}: was not made from a compressed-tensors checkpoint (its quantization_config "
                              "has no 'compressed_tensors' entry): write plain safetensors instead")
    ct_config = dict(ct_config)
    sparsity = ct_config.get("sparsity_config")
    if isinstance(sparsity, dict) and sparsity.get("format") == "sparse-bitmask":
        ct_config["sparsity_config"] = {**sparsity, "format": "dense"}  # 0.20 reads no bitmask layout
    qconf = _quant_config(ct_config, os.path.join(src, CONFIG))
    files = xsp_files(src)
    out_weights = os.path.join(out, sub) if sub else out
    os.makedirs(out_weights, exist_ok=True)
    new_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    new_cfg["quantization_config"] = ct_config
    text = {os.path.normpath(os.path.join(sub, CONFIG)): json.dumps(new_cfg, indent=2, sort_keys=True) + "\n"}
    copy_carried(FolderPlan(src, sub, None, carried_of_xsp_folder(src, files)), out, text)  # type: ignore

    written, outputs = 0, []
    with XspSet(src) as xs:
        names = xs.names()
        claimed = _scheme_matches(names, qconf, "weight") if qconf is not None else {}
        total, done = len(names), 0
        for i, f in enumerate(xs.files):
            entries = []
            for name in [n for n in names if xs.where[n] is f]:
                if progress:
                    progress(done, total, name)
                done += 1
                module = name[: -len(".weight")] if name.endswith(".weight") else None
                ours = f.dense(name, framework="torch")
                tag = f"{src}: tensor {name!r}"
                affine = name in f.tensors and f.compressed(name).quant.quantizer == Affine.name
                if affine and module not in claimed:
                    raise CheckpointError(f"{tag}: no compressed-tensors scheme of the config covers it")
                if affine:
                    scheme, fmt = claimed[module]
                    sd = _ct_state(f.compressed(name), scheme, fmt, tag)
                    back = BaseCompressor.get_value_from_registry(fmt).decompress(dict(sd), scheme)["weight"]
                    if back.dtype != ours.dtype or not torch.equal(back.view(torch.uint8), ours.view(torch.uint8)):
                        raise CheckpointError(f"{tag}: compressed-tensors would dequantize the written codes "
                                              "differently; not written")
                    for p, t in sd.items():
                        code, shape, data = raw_from_torch(t)
                        entries.append(st.Entry(f"{module}.{p}", code, shape, data))
                else:
                    code, shape, data = raw_from_torch(ours)
                    entries.append(st.Entry(name, code, shape, data))
            path = os.path.join(out_weights, shard_name(i, len(files)))
            written += st.write(path, entries, {"format": "pt"})
            outputs.append(path)
        if progress:
            progress(total, total, "")
    if len(files) > 1:
        write_index(out_weights, outputs)
    return written
