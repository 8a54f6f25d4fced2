"""Whole checkpoints: read them (safetensors, PyTorch state dicts, Hugging Face folders),
choose which tensors to compress, write .xsp files or .xsp model folders, and verify them
against the original.

This is the I/O edge, so it uses torch for reading (bfloat16, .pt files); the numerical
core underneath works on numpy arrays. One output shard is written from one input shard
by `compress_shard`, so shards can be produced independently (and in parallel).
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .torchconv import ST_TO_TORCH, TORCH_TO_ST, raw_from_torch, torch_dtype_name
from .container import RawTensor, XspError, XspFile, XspWriter, write_xsp
from .output import atomic_file, check_output
from ..tensor.maskcode import binary_entropy
from ..tensor.parallel import compress_many
from ..tensor.prune import PruneRule, global_magnitude_masks, streaming_global_rules
from ..tensor.pipeline import FLOAT_DTYPES, CompressConfig, CompressedTensor, Prepared, compress_quantized, \
    compress_tensor, reference_prune_quantize, to_float32

Progress = Callable[[int, int, str], None]


class CheckpointError(ValueError):
    """An input checkpoint that cannot be read; the message names the file."""


@dataclass
class Checkpoint:
    """Tensor names in file order and a loader for each (tensors are read when asked for).

    `shards` lists the files in order with the names each holds (one entry for a single
    file); `info(name)` gives (torch dtype name, shape) without reading the data where the
    format allows it.
    """

    path: str
    names: list[str]
    _load: Callable[[str], Any]
    shards: list[tuple[str, list[str]]] = field(default_factory=list)
    _info: Callable[[str], tuple[str, tuple[int, ...]]] | None = None
    extra_files: list[str] = field(default_factory=list)  # index files read with the shards

    def get(self, name: str):
        return self._load(name)

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        if self._info is not None:
            return self._info(name)
        t = self.get(name)
        return torch_dtype_name(t), tuple(int(s) for s in t.shape)

    @property
    def files(self) -> list[str]:
        return [f for f, _ in self.shards] + list(self.extra_files)


def _safetensors_files(files: Sequence[str], extra: Sequence[str] = ()) -> Checkpoint:
    from safetensors import safe_open

    where: dict[str, str] = {}
    infos: dict[str, tuple[str, tuple[int, ...]]] = {}
    shards: list[tuple[str, list[str]]] = []
    for f in files:
        names = []
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    if k in where:
                        continue
                    where[k] = f
                    sl = h.get_slice(k)
                    infos[k] = (ST_TO_TORCH.get(sl.get_dtype(), sl.get_dtype().lower()),
                                tuple(int(s) for s in sl.get_shape()))
                    names.append(k)
        except Exception as e:  # the package raises its own error types for bad files
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
        shards.append((f, names))

    def load(name: str):
        with safe_open(where[name], framework="pt") as h:
            return h.get_tensor(name)

    path = files[0] if len(files) == 1 and not extra else os.path.dirname(files[0])
    return Checkpoint(path, list(where), load, shards, infos.__getitem__, list(extra))


def _refusal(path: str, e: Exception) -> CheckpointError:
    """One line for torch.load(weights_only=True) refusing a pickle: what it held, never how to
    bypass the check."""
    text = str(e)
    g = re.search(r"GLOBAL ([\w.]+)", text)
    if g:
        detail = f"it refers to the Python object {g.group(1)}"
    else:
        op = re.search(r"Unsupported operand (\S+)", text)
        detail = f"unsupported pickle opcode {op.group(1)}" if op else "unsupported content"
    return CheckpointError(f"{path}: refused to load: the pickle holds more than tensors ({detail}); the file may "
                           "be unsafe, since loading a pickle can run code. Use a .safetensors copy from a "
                           "trusted source")


def _torch_state(path: str) -> dict:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: holds no tensors")
    return sd


def _torch_files(files: Sequence[str], extra: Sequence[str] = ()) -> Checkpoint:
    """PyTorch state dicts, one file or the shards of an index (read one shard at a time)."""
    where: dict[str, str] = {}
    shards = []
    for f in files:
        names = [n for n in _torch_state(f) if n not in where]
        where.update({n: f for n in names})
        shards.append((f, names))
    cache: dict[str, dict] = {}

    def load(name: str):
        f = where[name]
        if f not in cache:
            cache.clear()  # one shard in memory at a time
            cache[f] = _torch_state(f)
        return cache[f][name]

    path = files[0] if len(files) == 1 and not extra else os.path.dirname(files[0])
    return Checkpoint(path, list(where), load, shards, None, list(extra))


def _index_shards(folder: str, index_name: str) -> list[str] | None:
    """Shard files named by a Hugging Face weight-map index, or None if there is no index."""
    idx = os.path.join(folder, index_name)
    if not os.path.exists(idx):
        return None
    try:
        with open(idx) as f:
            weight_map = json.load(f)["weight_map"]
            shards = list(dict.fromkeys(weight_map[k] for k in weight_map))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
        raise CheckpointError(f"{idx}: not a valid checkpoint index (no weight_map)") from None
    bad = [s for s in shards if not isinstance(s, str) or os.path.isabs(s) or ".." in s.split("/")]
    if bad:
        raise CheckpointError(f"{idx}: shard name {bad[0]!r} is not a file in this folder")
    return [os.path.join(folder, s) for s in sorted(shards)]


SAFE_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SINGLE = ("pytorch_model.bin", "model.pt", "model.pth")


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A .safetensors file, a .pt/.pth/.bin state dict, or a Hugging Face model folder."""
    p = os.fspath(path)
    if os.path.isdir(p):
        shards = _index_shards(p, SAFE_INDEX)
        if shards is not None:
            return _safetensors_files(shards, [os.path.join(p, SAFE_INDEX)])
        st_files = sorted(f for f in os.listdir(p) if f.endswith(".safetensors"))
        if st_files:
            return _safetensors_files([os.path.join(p, f) for f in st_files])
        shards = _index_shards(p, TORCH_INDEX)
        if shards is not None:
            return _torch_files(shards, [os.path.join(p, TORCH_INDEX)])
        for name in TORCH_SINGLE:
            if os.path.exists(os.path.join(p, name)):
                return _torch_files([os.path.join(p, name)])
        raise CheckpointError(f"{p}: no .safetensors, pytorch_model.bin or checkpoint index in this folder")
    if not os.path.exists(p):
        raise CheckpointError(f"{p}: no such file or folder")
    if p.endswith(".safetensors"):
        return _safetensors_files([p])
    if p.endswith((".pt", ".pth", ".bin")):
        return _torch_files([p])
    raise CheckpointError(f"{p}: unknown checkpoint type (expected .safetensors, .pt, .pth, .bin or a folder)")


# ---------------------------------------------------------------------------------------
# Which tensors are compressed

NORM_WORDS = ("norm", "ln_", ".ln")
EMBEDDING_WORDS = ("embed", "wte", "wpe")


def is_embedding(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in EMBEDDING_WORDS)


def _matches(name: str, globs: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


@dataclass
class Selection:
    """The tensors to compress, and for every other tensor why it stays as it is."""

    compressed: list[str]
    kept: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        emb = sum(is_embedding(n) for n in self.compressed)
        w = len(self.compressed) - emb
        parts = [f"{w} weight tensor{'s' * (w != 1)}"] + ([f"{emb} embedding table{'s' * (emb != 1)}"] if emb else [])
        reasons: dict[str, int] = {}
        for r in self.kept.values():
            reasons[r] = reasons.get(r, 0) + 1
        text = f"selected {' and '.join(parts)} of {len(self.compressed) + len(self.kept)} tensors"
        if reasons:
            text += "; stored as they are: " + ", ".join(f"{k} {v}" for v, k in
                                                         sorted(((v, k) for k, v in reasons.items()), reverse=True))
        return text


def select_tensors(ck: Checkpoint, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   force_include: Sequence[str] = (), embeddings: bool = True,
                   default: Iterable[str] | None = None) -> Selection:
    """Weight matrices only: floating-point tensors of two or more dimensions that are not
    norms. `include` narrows that set and never widens it; only `force_include` can name
    1-D tensors, norms and biases. `default` replaces the default choice (without include)."""
    default_set = None if default is None else set(default)
    chosen, kept = [], {}
    for name in ck.names:
        dtype, shape = ck.info(name)
        if dtype not in FLOAT_DTYPES:
            kept[name] = "not floating point"
            continue
        if _matches(name, force_include):
            chosen.append(name)
            continue
        if _matches(name, exclude):
            kept[name] = "matched --exclude"
            continue
        low = name.lower()
        if len(shape) < 2:
            kept[name] = "1-D (biases, norms, vectors)"
        elif any(w in low for w in NORM_WORDS):
            kept[name] = "norm weights"
        elif include:
            if _matches(name, include):
                chosen.append(name)
            else:
                kept[name] = "not matched by --include"
        elif default_set is not None:
            if name in default_set:
                chosen.append(name)
            else:
                kept[name] = "not compressed-tensors quantized"
        elif not embeddings and is_embedding(name):
            kept[name] = "embeddings (--no-embeddings)"
        else:
            chosen.append(name)
    return Selection(chosen, kept)


def default_selected(name: str, t) -> bool:
    """The default rule for one tensor: floating-point, two or more dimensions, not a norm."""
    low = name.lower()
    return t.dim() >= 2 and torch_dtype_name(t) in FLOAT_DTYPES and not any(w in low for w in NORM_WORDS)


def is_selected(name: str, t, include: Sequence[str] = (), exclude: Sequence[str] = (),
                force_include: Sequence[str] = ()) -> bool:
    if torch_dtype_name(t) not in FLOAT_DTYPES:
        return False
    if _matches(name, force_include):
        return True
    if _matches(name, exclude) or not default_selected(name, t):
        return False
    return not include or _matches(name, include)


# ---------------------------------------------------------------------------------------
# Statistics


def tensor_stats(name: str, ct: CompressedTensor) -> dict[str, Any]:
    n = ct.numel
    p0 = ct.planes[0] if ct.planes else None
    kept = ct.kept
    return {
        "name": name, "shape": list(ct.shape), "dtype": ct.dtype, "weights": n,
        "sparsity": 1 - kept / n if n and kept >= 0 else 0.0,
        "bits": ct.quant.bits, "quantizer": ct.quant.quantizer,
        "n_in": p0.n_in if p0 else 0, "n_out": p0.n_out if p0 else 0, "n_s": p0.n_s if p0 else 0,
        "mask_codec": ct.mask.codec, "scale_rows": ct.quant.scale_rows, "scale_format": ct.quant.scale_format,
        "planes": getattr(p0, "kind", "xor") if p0 else "none",
        "value_bits": ct.value_bits, "mask_bits": ct.mask.nbits, "total_bits": ct.total_bits,
        "value_bits_per_weight": ct.value_bits / n if n else 0.0,
        "total_bits_per_weight": ct.total_bits / n if n else 0.0,
        "efficiency": ct.efficiency, "patches": ct.patches,
    }


def totals(rows: Iterable[dict]) -> dict[str, Any]:
    rows = list(rows)
    w = sum(r["weights"] for r in rows)
    v = sum(r["value_bits"] for r in rows)
    t = sum(r["total_bits"] for r in rows)
    kept = sum(r["weights"] * (1 - r["sparsity"]) for r in rows)
    s = 1 - kept / w if w else 0.0
    q = rows[0]["bits"] if rows and len({r["bits"] for r in rows}) == 1 else None
    return {
        "tensors": len(rows), "weights": w, "value_bits": v, "total_bits": t,
        "value_bits_per_weight": v / w if w else 0.0, "total_bits_per_weight": t / w if w else 0.0,
        "sparsity": s, "ratio_to_fp16": 16 * w / t if t else 0.0,
        "bound_bits_per_weight": binary_entropy(s) + (1 - s) * q if q else None,
    }


@dataclass
class SizeRow:
    """One line of the size summary: bytes in the input and in the output."""

    label: str
    tensors: int
    input_bytes: int
    output_bytes: int

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes if self.output_bytes else float("inf")


CATEGORIES = ("compressed weights", "compressed embeddings", "stored as they are")


def size_rows(tensor_sizes: Mapping[str, tuple[str, int, int]], input_files: int, output_files: int,
              other_in: int = 0, other_out: int = 0, other_count: int = 0) -> list[SizeRow]:
    """Per-category rows whose sums are the file totals: tensor data by category, then
    headers and metadata (the file bytes not in any tensor), then other files carried over."""
    rows = []
    for cat in CATEGORIES:
        sel = [v for v in tensor_sizes.values() if v[0] == cat]
        if sel:
            rows.append(SizeRow(cat, len(sel), sum(v[1] for v in sel), sum(v[2] for v in sel)))
    data_in = sum(v[1] for v in tensor_sizes.values())
    data_out = sum(v[2] for v in tensor_sizes.values())
    rows.append(SizeRow("headers, metadata, indexes", 0, input_files - data_in, output_files - data_out))
    if other_count:
        rows.append(SizeRow("other files (config, tokenizer, ...)", other_count, other_in, other_out))
    rows.append(SizeRow("TOTAL (files on disk)", len(tensor_sizes), input_files + other_in,
                        output_files + other_out))
    return rows


def entry_bytes(path: str) -> dict[str, int]:
    """Data bytes of each tensor in an .xsp file (a compressed tensor's parts summed)."""
    from . import safetensors_io as st
    from .container import SEP

    out: dict[str, int] = {}
    with st.Reader(path) as r:
        for name, e in r.entries.items():
            base = name.split(SEP)[0]
            b, end = e["offsets"]
            out[base] = out.get(base, 0) + end - b
    return out


# ---------------------------------------------------------------------------------------
# Compressing


@dataclass
class CompressPlan:
    """Everything a shard needs besides its own tensors: shared by every shard of a run."""

    config: CompressConfig
    selected: set[str]
    masks: Mapping[str, np.ndarray] | None = None  # keep masks by name, given
    rules: Mapping[str, PruneRule] | None = None  # global pruning: each tensor's share of the threshold
    prepared: Mapping[str, Prepared] = field(default_factory=dict)
    keep_dtype: str | None = None  # float dtype for tensors stored as they are; None = as input
    info: Mapping[str, Any] = field(default_factory=dict)  # copied into every shard's metadata
    threads: int | None = None  # tensors compressed at once within a shard (None: one per core)
    extra: Mapping[str, Any] = field(default_factory=dict)  # records (calibration, quality) of every shard


@dataclass
class ShardResult:
    path: str
    rows: list[dict]  # tensor_stats of the compressed tensors
    tensor_sizes: dict[str, tuple[str, int, int]]  # name -> (category, input bytes, output bytes)
    bytes: int


def _stored(t, keep_dtype: str | None) -> RawTensor:
    import torch

    if keep_dtype and torch_dtype_name(t) in FLOAT_DTYPES and torch_dtype_name(t) != keep_dtype:
        t = t.to(getattr(torch, keep_dtype))
    code, shape, data = raw_from_torch(t)
    return RawTensor(code, shape, data)


def _input_bytes(ck: Checkpoint, name: str) -> int:
    import torch

    dtype, shape = ck.info(name)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return size * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def compress_shard(ck: Checkpoint, names: Sequence[str], out: str, plan: CompressPlan,
                   progress: Progress | None = None, done: int = 0, total: int | None = None,
                   on_tensor: Callable[[str, int], None] | None = None, *, force: bool = True) -> ShardResult:
    """Compress the tensors `names` of `ck` into one .xsp file `out` (written atomically).

    The unit of work of a folder: one input shard gives one output shard, independently of
    the others (global pruning rules and prepared codes come in through `plan`). Memory
    holds one input tensor at a time: each tensor's coded parts go to the writer's spool
    as soon as they are made (container.XspWriter), so the peak does not grow with the
    number of tensors in the shard. An output that is one of the checkpoint's files is
    refused; force=False also refuses an existing output or a symlink (io/output.py).
    """
    rows, sizes_in, raw_names = [], {}, set()
    total = len(names) if total is None else total
    # tensors to prune and quantize here run on plan.threads threads (same bytes for any
    # count; a worker of a sharded job uses one), coming back in file order; each tensor's
    # coded parts go to the writer's spool as soon as it is done
    fresh = [n for n in names if n in plan.selected and n not in plan.prepared]
    results = compress_many(((n, (lambda n=n: ck.get(n)), _plan_keep(plan, n)) for n in fresh),
                            plan.config, threads=plan.threads)
    with XspWriter(out, inputs=ck.files, force=force) as writer:
        for i, name in enumerate(names):
            if progress:
                progress(done + i, total, name)
            if name in plan.prepared and name in plan.selected:  # (excluded ones are stored as read)
                p = plan.prepared[name]
                t0 = time.perf_counter()
                ct = compress_quantized(p.keep, p.quant, p.dtype, plan.config)
                seconds = time.perf_counter() - t0
                sizes_in[name] = p.input_bytes if p.input_bytes is not None else _input_bytes(ck, name)
            elif name in plan.selected:
                _, ct, seconds = next(results)
                sizes_in[name] = _input_bytes(ck, name)
            else:
                writer.add_raw(name, _stored(ck.get(name), plan.keep_dtype))
                raw_names.add(name)
                sizes_in[name] = _input_bytes(ck, name)
                if on_tensor:
                    on_tensor(name, 0)
                continue
            writer.add_compressed(name, ct)
            row = tensor_stats(name, ct)
            row["seconds"] = seconds
            rows.append(row)
            del ct
            if on_tensor:
                on_tensor(name, row["weights"])
        info = dict(plan.info)
        info["order"] = list(names)
        size = writer.finish(plan.config, info, extra=dict(plan.extra) or None)
    written = entry_bytes(out)
    sizes = {n: ("stored as they are" if n in raw_names else
                 "compressed embeddings" if is_embedding(n) else "compressed weights",
                 sizes_in[n], written.get(n, 0)) for n in names}
    return ShardResult(out, rows, sizes, size)


def _plan_keep(plan: CompressPlan, name: str):
    """The keep mask the plan fixes for a tensor (global pruning), or None: prune it alone.
    For a global threshold's rule, a function of the loaded tensor (compress_many calls it)."""
    if plan.masks is not None:
        return plan.masks[name]
    if plan.rules is not None:
        rule = plan.rules[name]
        return lambda t: rule.keep(to_float32(t)[0], name)
    return None


@dataclass
class CompressReport:
    """What `compress_checkpoint` did: per-tensor statistics, the selection, honest sizes."""

    rows: list[dict]
    selection: Selection
    sizes: list[SizeRow]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)
    outcomes: list[Any] = field(default_factory=list)  # per output shard (io/job.ShardOutcome), folders

    @property
    def total(self) -> SizeRow:
        return self.sizes[-1]


def plan_compression(ck: Checkpoint, config: CompressConfig, include: Sequence[str] = (),
                     exclude: Sequence[str] = (), *, prepared: Mapping[str, Prepared] | None = None,
                     force_include: Sequence[str] = (), embeddings: bool = True,
                     keep_dtype: str | None = None, default: Iterable[str] | None = None,
                     info: Mapping[str, Any] | None = None, executor=None,
                     on_event: Callable[[dict], None] | None = None,
                     extra: Mapping[str, Any] | None = None) -> tuple[CompressPlan, Selection]:
    """Select the tensors and, for global pruning, each tensor's share of the threshold (two
    streaming passes over the shards, on `executor` if given): what every shard shares.
    `prepared` may compute its values lazily: only its names are read here. `extra`: the
    calibration / quality records (docs/FORMAT.md section 8) every shard carries."""
    prepared = prepared if prepared is not None else {}
    sel = select_tensors(ck, include, exclude, force_include, embeddings,
                         default=default if default is not None else (list(prepared) if prepared else None))
    selected = set(sel.compressed)
    if not selected:
        raise CheckpointError(f"{ck.path}: no tensor selected for compression (check --include/--exclude)")
    if keep_dtype is not None and keep_dtype not in FLOAT_DTYPES:
        raise ValueError(f"keep dtype must be one of {', '.join(FLOAT_DTYPES)}, got {keep_dtype!r}")
    rules = None
    if config.global_sparsity:
        free = [n for n in sel.compressed if n not in prepared]
        rules = checkpoint_global_rules(ck, free, config.sparsity, executor, on_event)
    return CompressPlan(config, selected, None, rules, prepared, keep_dtype, dict(info or {}),
                        extra=dict(extra or {})), sel


def checkpoint_global_rules(ck: Checkpoint, order: Sequence[str], sparsity: float, executor=None,
                            on_event: Callable[[dict], None] | None = None) -> dict[str, PruneRule]:
    """The global threshold's share of every tensor in `order`, computed shard by shard
    (in parallel on `executor`) without holding more than one tensor per worker."""
    if not order:
        return {}
    wanted = set(order)
    groups = [(f, [n for n in names if n in wanted]) for f, names in ck.shards]
    if not _plain_safetensors_shards(groups) or sum(len(g) for _, g in groups) != len(wanted):
        # not tensors read as they are from safetensors shards (a state dict, a
        # compressed-tensors view): in this process
        return streaming_global_rules(list(order), lambda n: to_float32(ck.get(n))[0], sparsity)
    from .job import global_pruning_rules

    return global_pruning_rules(groups, order, sparsity, executor, on_event)


def _plain_safetensors_shards(groups: Sequence[tuple[str, Sequence[str]]]) -> bool:
    """Whether every name is an entry of its safetensors file (so a worker can read it there)."""
    from . import safetensors_io as st

    try:
        for f, names in groups:
            if not f.endswith(".safetensors"):
                return False
            with st.Reader(f) as r:
                if not set(names) <= set(r.entries):
                    return False
    except (OSError, ValueError):
        return False
    return bool(groups)


def compress_checkpoint(src: str, out: str, config: CompressConfig, include: Sequence[str] = (),
                        exclude: Sequence[str] = (), progress: Progress | None = None, *,
                        prepared: Mapping[str, Prepared] | None = None, force_include: Sequence[str] = (),
                        embeddings: bool = True, keep_dtype: str | None = None,
                        load_mode: str = "decode", executor=None, force: bool = False,
                        on_event: Callable[[dict], None] | None = None,
                        extra: Mapping[str, Any] | None = None) -> CompressReport:
    """Compress a checkpoint: into one .xsp file, or, when `src` is a model folder and `out`
    does not end in .xsp, into a model folder (see xorsparse.io.folder).

    force=False refuses an existing output or a symlink (the command line's default); an
    output that is one of the checkpoint's files, or a folder holding one, is refused either way.
    prepared: tensor name -> Prepared (mask and codes chosen elsewhere, e.g. by calibration:
    xorsparse.torch.folder), encoded as they are. extra: the calibration / quality records.
    """
    if os.path.isdir(src) and not out.endswith(".xsp"):
        from .folder import compress_folder

        return compress_folder(src, out, config, include, exclude, progress, prepared=prepared,
                               force_include=force_include, embeddings=embeddings, keep_dtype=keep_dtype,
                               load_mode=load_mode, executor=executor, force=force, on_event=on_event,
                               extra=extra)
    ck = open_checkpoint(src)
    check_output(out, ck.files, force)
    plan, sel = plan_compression(ck, config, include, exclude, prepared=prepared, force_include=force_include,
                                 embeddings=embeddings, keep_dtype=keep_dtype,
                                 info={"pruning": "global" if config.global_sparsity else "per-tensor",
                                       "source": os.path.basename(os.path.normpath(src))}, extra=extra)
    res = compress_shard(ck, ck.names, out, plan, progress, force=force)
    if progress:
        progress(len(ck.names), len(ck.names), "")
    in_files = sum(os.path.getsize(f) for f in ck.files)
    return CompressReport(res.rows, sel, size_rows(res.tensor_sizes, in_files, res.bytes), [out])


# ---------------------------------------------------------------------------------------
# Reading .xsp files and folders back


class XspSet:
    """One .xsp file, or the shards of an .xsp model folder, read as one set of tensors."""

    def __init__(self, path: str):
        from .folder import xsp_files

        self.path = path
        self.files: list[XspFile] = []
        try:
            for p in xsp_files(path):
                self.files.append(XspFile(p))
            self.where: dict[str, XspFile] = {}
            for f in self.files:
                for n in f.names():
                    if n in self.where:  # two shards with one name: which is meant? refuse
                        raise XspError(f"{f.path}: tensor {n!r} is also in {self.where[n].path}")
                    self.where[n] = f
            if os.path.isdir(path):
                self._check_shards()
        except BaseException:
            self.close()
            raise
        self.tensors = {n: f for n, f in self.where.items() if n in f.tensors}
        self.raw_tensors = {n: f for n, f in self.where.items() if n not in f.tensors}
        first = self.files[0]
        self.config = first.config
        self.meta = first.meta
        self.records = first.records  # calibration, quality (the same in every shard)

    def _check_shards(self) -> None:
        """A folder's shards are all there: each says `"shard": [i, N]`, and i runs over 1..N
        (FORMAT.md 7.1; required of every shard of an indexed folder of several files)."""
        n = len(self.files)
        seen = {}
        for f in self.files:
            sh = f.meta["info"].get("shard")
            if sh is None:
                if n > 1:
                    raise XspError(f"{f.path}: info.shard: missing (every shard of a model folder says which "
                                   "it is, FORMAT.md 7.1)")
                continue
            if (not isinstance(sh, list) or len(sh) != 2 or any(type(v) is not int for v in sh)
                    or not 1 <= sh[0] <= sh[1]):
                raise XspError(f"{f.path}: info.shard: must be [i, N] with 1 <= i <= N, got {sh!r}")
            if sh[1] != n or sh[0] in seen:
                raise XspError(f"{f.path}: info.shard: shard {sh[0]} of {sh[1]}, but the folder's index "
                               f"lists {n} file(s){' and shard ' + str(sh[0]) + ' twice' if sh[0] in seen else ''}")
            seen[sh[0]] = f

    def check_cost(self) -> None:
        """Refuse (XspError) if any compressed tensor would need more memory than allowed."""
        for n, f in self.where.items():
            if n in f.tensors:
                f.check_cost(n)

    def names(self) -> list[str]:
        order = [n for f in self.files for n in f.meta.get("info", {}).get("order", []) if n in self.where]
        rest = [n for n in self.where if n not in set(order)]
        return list(dict.fromkeys(order + rest))

    def dense(self, name: str, framework: str | None = None):
        return self.where[name].dense(name, framework)

    def compressed(self, name: str) -> CompressedTensor:
        return self.where[name].compressed(name)

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> "XspSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decompress_checkpoint(src: str, out: str, progress: Progress | None = None,
                          output_format: str | None = None, executor=None,
                          on_event: Callable[[dict], None] | None = None, force: bool = True) -> int:
    """Dense pruned-and-quantized weights (and the untouched tensors): a safetensors file,
    a PyTorch state dict (.pt/.pth/.bin, torch.save), or, from an .xsp model folder, a
    plain model folder (`output_format="compressed-tensors"`: a compressed-tensors folder).
    Returns the bytes written. force=False refuses an existing output or a symlink; an
    output that is an input file (or a folder holding one) is refused either way."""
    from .folder import decompress_folder, is_xsp_folder, xsp_files

    if is_xsp_folder(src):
        return decompress_folder(src, out, progress, output_format, force=force, executor=executor,
                                 on_event=on_event)
    if os.path.isdir(src):  # not recognised as an .xsp folder: a shard that cannot be read says so, by name
        XspSet(src).close()
    if output_format not in (None, "safetensors"):
        raise ValueError(f"{src}: --format {output_format} needs an .xsp model folder as input")
    check_output(out, xsp_files(src), force)
    if out.endswith((".pt", ".pth", ".bin")):
        return _write_torch(src, out, progress, force)
    if not out.endswith(".safetensors"):
        raise ValueError(f"{out}: write .safetensors, or a PyTorch state dict (.pt, .pth, .bin)")
    return write_dense_safetensors(src, out, progress, force=force)


def _dense_items(src: str, progress: Progress | None):
    with XspSet(src) as f:
        f.check_cost()
        names = f.names()
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names), name)
            yield name, f.dense(name, framework="torch")
        if progress:
            progress(len(names), len(names), "")


_ST_CODE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def write_dense_safetensors(src: str, out: str, progress: Progress | None = None,
                            names: Sequence[str] | None = None, force: bool = True) -> int:
    """The dense tensors of an .xsp file (or folder) as one safetensors file, each decoded
    while it is written: memory holds one dense tensor at a time."""
    from . import safetensors_io as st

    with XspSet(src) as xs:
        xs.check_cost()  # refuse before writing anything
        chosen = [n for n in xs.names() if names is None or n in names]

        def producer(i: int, name: str):
            def data():
                if progress:
                    progress(i, len(chosen), name)
                return raw_from_torch(xs.dense(name, framework="torch"))[2]
            return data

        entries = []
        for i, name in enumerate(chosen):
            f = xs.where[name]
            if name in f.tensors:
                spec = f.desc.tensors[name]
                code, shape = _ST_CODE[spec.dtype], spec.shape
            else:
                info = f._r.infos[name]
                code, shape = info.dtype, info.shape
            entries.append(st.Entry(name, code, tuple(shape), producer(i, name)))
        size = st.write(out, entries, {"format": "pt"}, inputs=[x.path for x in xs.files], force=force)
        if progress:
            progress(len(chosen), len(chosen), "")
    return size


def _write_torch(src: str, out: str, progress: Progress | None, force: bool = True) -> int:
    """A real PyTorch state dict (torch.save), written to a temporary name and renamed."""
    import torch

    from .folder import xsp_files

    state = dict(_dense_items(src, progress))
    with atomic_file(out, inputs=xsp_files(src), force=force) as f:
        torch.save(state, f.raw)
    return os.path.getsize(out)


def verify_checkpoint(src: str, against: str | None = None, progress: Progress | None = None,
                      executor=None, on_event: Callable[[dict], None] | None = None,
                      references: Mapping[str, Any] | None = None) -> list[dict]:
    """Checksums and a full decode of every tensor; with `against`, a bit-exact comparison
    of each decoded tensor with the reference pruning and quantization of the original.

    references: tensor name -> the expected dense tensor, for tensors whose reference is not
    the data-free pipeline's (calibrated files: recomputed by xorsparse.torch.folder); the
    comparison then runs in this process.

    Shard by shard: each .xsp file is one item (on `executor` if given); global pruning's
    threshold is recomputed from the original by the same streaming passes as compress."""
    from .job import VerifyTask, verify_task

    with XspSet(src) as f:
        names = f.names()
        cfg = f.config or CompressConfig()
        per_file = [(x.path, [n for n in names if f.where[n] is x]) for x in f.files]
        free = [n for n in names if n in f.tensors and f.where[n].tensors[n].get("quantizer") != "affine"]
        global_pruning = f.meta.get("info", {}).get("pruning") == "global"
    rules = None
    if against:
        orig = _open_original(against)
        known = set(orig.names)
        missing = [n for n in names if n not in known]
        if missing:
            raise CheckpointError(f"{against}: has no tensor {missing[0]!r} that {src} holds")
        if global_pruning:
            rules = {n: r.to_list() for n, r in
                     checkpoint_global_rules(orig, free, cfg.sparsity, executor).items()}
    tasks = [VerifyTask(path, tuple(ns), against, cfg.to_dict(),
                        None if rules is None else {n: rules[n] for n in ns if n in rules})
             for path, ns in per_file]
    events = on_event
    if progress is not None:
        count = [0]

        def events(ev: dict) -> None:
            if on_event:
                on_event(ev)
            if ev.get("kind") == "tensor":
                count[0] += 1
                progress(count[0], len(names), ev.get("name", ""))
    run = executor.map if executor is not None and not references else \
        (lambda fn, items, ev: ((i, fn(t, ev, references)) for i, t in enumerate(items)))
    if on_event:
        on_event({"kind": "plan", "items": len(tasks), "tensors": len(names)})
    by_task: list[list[dict]] = [[] for _ in tasks]
    for i, rows in run(verify_task, tasks, events):
        by_task[i] = rows
        if on_event:
            on_event({"kind": "item", "name": os.path.basename(tasks[i].xsp), "tensors": len(rows)})
    if progress:
        progress(len(names), len(names), "")
    return [r for rows in by_task for r in rows]


def _open_original(path: str) -> Checkpoint:
    """The checkpoint to verify against; a compressed-tensors folder as its dense tensors."""
    if os.path.isdir(path):
        from .compressed_tensors import is_compressed_tensors_folder, read_compressed_tensors
        from .folder import CONFIG, model_subfolder

        sub = model_subfolder(path)
        d = os.path.join(path, sub) if sub else path
        if is_compressed_tensors_folder(d):
            with open(os.path.join(d, CONFIG), encoding="utf-8") as fh:
                return read_compressed_tensors(d, json.load(fh)).checkpoint
        return open_checkpoint(d)
    return open_checkpoint(path)


def inspect_file(src: str) -> dict[str, Any]:
    """Per-tensor statistics of an .xsp file or folder, and the tensors stored as they are."""
    from .folder import xsp_files

    with XspSet(src) as f:
        rows = [tensor_stats(n, f.compressed(n)) for n in f.tensors]
        sizes = {}
        for x in f.files:
            sizes.update(entry_bytes(x.path))
        stored = []
        for n, x in f.raw_tensors.items():
            e = x._r.entries[n]
            stored.append({"name": n, "dtype": e["dtype"], "shape": list(e["shape"]), "bytes": sizes.get(n, 0)})
        files = xsp_files(src)
        out = {"file": src, "files": files, "bytes": sum(os.path.getsize(p) for p in files),
               "tensors": rows, "total": totals(rows),
               "compressed_bytes": sum(sizes.get(n, 0) for n in f.tensors),
               "stored": stored, "stored_tensors": len(stored), "stored_bytes": sum(s["bytes"] for s in stored),
               "config": f.meta.get("config"), "version": f.meta.get("version")}
        out.update(f.records)  # calibration, quality (validated when the file was opened)
    return out


def reference_state(src: str, config: CompressConfig, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The pruned-and-quantized reference of a checkpoint (torch tensors), codec not involved."""
    ck = open_checkpoint(src)
    selected = select_tensors(ck, include, exclude).compressed
    masks = None
    if config.global_sparsity:
        masks = global_magnitude_masks({n: to_float32(ck.get(n))[0] for n in selected}, config.sparsity)
    out = {}
    for n in ck.names:
        t = ck.get(n)
        out[n] = (reference_prune_quantize(t, config, keep=None if masks is None else masks[n], name=n,
                                           framework="torch") if n in selected else t)
    return out


__all__ = ["Checkpoint", "CheckpointError", "CompressPlan", "CompressReport", "Prepared", "Selection",
           "ShardResult", "SizeRow", "XspSet", "compress_checkpoint", "compress_shard", "decompress_checkpoint",
           "inspect_file", "is_selected", "open_checkpoint", "plan_compression", "reference_state",
           "select_tensors", "tensor_stats", "totals", "verify_checkpoint"]
