"""Whole checkpoints: read them (safetensors, PyTorch state dicts, Hugging Face folders),
choose which tensors to compress, write .xsp files, and verify them against the original.

This is the I/O edge, so it uses torch for reading (bfloat16, .pt files); the numerical
core underneath works on numpy arrays.
"""

from __future__ import annotations

import fnmatch
import json
import os
import pickle
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence


from .torchconv import raw_from_torch, torch_dtype_name
from .container import RawTensor, XspFile, write_xsp
from .output import check_output
from ..tensor.maskcode import binary_entropy
from ..tensor.prune import global_magnitude_masks
from ..tensor.pipeline import FLOAT_DTYPES, CompressConfig, CompressedTensor, compress_tensor, \
    reference_prune_quantize, to_float32


class CheckpointError(ValueError):
    """An input checkpoint that cannot be read; the message names the file."""


@dataclass
class Checkpoint:
    """Tensor names in file order and a loader for each (tensors are read when asked for)."""

    path: str
    names: list[str]
    _load: Callable[[str], Any]
    files: list[str] = field(default_factory=list)  # every file read (an output must not replace one)

    def get(self, name: str):
        return self._load(name)


def _safetensors_files(files: Sequence[str]) -> Checkpoint:
    from safetensors import safe_open

    where: dict[str, str] = {}
    for f in files:
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    where.setdefault(k, f)
        except Exception as e:  # the package raises its own error types for bad files
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None

    def load(name: str):
        with safe_open(where[name], framework="pt") as h:
            return h.get_tensor(name)

    return Checkpoint(files[0] if len(files) == 1 else os.path.dirname(files[0]), list(where), load, list(files))


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


def _torch_file(path: str) -> Checkpoint:
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
    return Checkpoint(path, list(sd), sd.__getitem__, [path])


def _index_shards(folder: str, index_name: str) -> list[str] | None:
    """Shard files named by a Hugging Face weight-map index, or None if there is no index."""
    idx = os.path.join(folder, index_name)
    if not os.path.exists(idx):
        return None
    try:
        with open(idx) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
        raise CheckpointError(f"{idx}: not a valid checkpoint index (no weight_map)") from None
    return [os.path.join(folder, s) for s in shards]


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A .safetensors file, a .pt/.pth/.bin state dict, or a Hugging Face model folder."""
    p = os.fspath(path)
    if os.path.isdir(p):
        shards = _index_shards(p, "model.safetensors.index.json")
        if shards is not None:
            ck = _safetensors_files(shards)
            ck.files.append(os.path.join(p, "model.safetensors.index.json"))
            return ck
        st_files = sorted(f for f in os.listdir(p) if f.endswith(".safetensors"))
        if st_files:
            return _safetensors_files([os.path.join(p, f) for f in st_files])
        shards = _index_shards(p, "pytorch_model.bin.index.json")
        if shards is not None:
            parts = [_torch_file(s) for s in shards]
            where = {n: ck for ck in parts for n in ck.names}
            return Checkpoint(p, list(where), lambda n: where[n].get(n),
                              shards + [os.path.join(p, "pytorch_model.bin.index.json")])
        for name in ("pytorch_model.bin", "model.pt", "model.pth"):
            if os.path.exists(os.path.join(p, name)):
                return _torch_file(os.path.join(p, name))
        raise CheckpointError(f"{p}: no .safetensors, pytorch_model.bin or checkpoint index in this folder")
    if not os.path.exists(p):
        raise CheckpointError(f"{p}: no such file or folder")
    if p.endswith(".safetensors"):
        return _safetensors_files([p])
    if p.endswith((".pt", ".pth", ".bin")):
        return _torch_file(p)
    raise CheckpointError(f"{p}: unknown checkpoint type (expected .safetensors, .pt, .pth, .bin or a folder)")


SKIP_WORDS = ("embed", "norm", "ln_", ".ln", "wte", "wpe")


def default_selected(name: str, t) -> bool:
    """2-D and conv weights; biases, norms and embeddings stay as they are."""
    low = name.lower()
    return t.dim() >= 2 and torch_dtype_name(t) in FLOAT_DTYPES and not any(w in low for w in SKIP_WORDS)


def is_selected(name: str, t, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> bool:
    if torch_dtype_name(t) not in FLOAT_DTYPES:
        return False
    if include:
        chosen = any(fnmatch.fnmatchcase(name, g) for g in include)
    else:
        chosen = default_selected(name, t)
    return chosen and not any(fnmatch.fnmatchcase(name, g) for g in exclude)


def tensor_stats(name: str, ct: CompressedTensor) -> dict[str, Any]:
    n = ct.numel
    p0 = ct.planes[0] if ct.planes else None
    kept = ct.kept
    return {
        "name": name, "shape": list(ct.shape), "dtype": ct.dtype, "weights": n,
        "sparsity": 1 - kept / n if n and kept >= 0 else 0.0,
        "bits": ct.quant.bits, "quantizer": ct.quant.quantizer,
        "n_in": p0.n_in if p0 else 0, "n_out": p0.n_out if p0 else 0, "n_s": p0.n_s if p0 else 0,
        "mask_codec": ct.mask.codec,
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


def compress_checkpoint(src: str, out: str, config: CompressConfig, include: Sequence[str] = (),
                        exclude: Sequence[str] = (),
                        progress: Callable[[int, int, str], None] | None = None, force: bool = True) -> list[dict]:
    """Compress the selected tensors of a checkpoint into one .xsp file; returns per-tensor stats.

    force=False refuses an existing output or a symlink (the command line's default); an
    output that is one of the checkpoint's files is refused either way.
    """
    ck = open_checkpoint(src)
    check_output(out, ck.files, force)
    selected = [n for n in ck.names if is_selected(n, ck.get(n), include, exclude)]
    if not selected:
        raise CheckpointError(f"{src}: no tensor selected for compression (check --include/--exclude)")
    masks = None
    if config.global_sparsity:
        masks = global_magnitude_masks({n: to_float32(ck.get(n))[0] for n in selected}, config.sparsity)
    compressed: dict[str, CompressedTensor] = {}
    raw: dict[str, RawTensor] = {}
    rows = []
    total = len(ck.names)
    for i, name in enumerate(ck.names):
        if progress:
            progress(i, total, name)
        t = ck.get(name)
        if name in selected:
            t0 = time.perf_counter()
            ct = compress_tensor(t, config, keep=None if masks is None else masks[name], name=name)
            compressed[name] = ct
            row = tensor_stats(name, ct)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        else:
            code, shape, data = raw_from_torch(t)
            raw[name] = RawTensor(code, shape, data)
    if progress:
        progress(total, total, "")
    info = {"order": ck.names, "pruning": "global" if config.global_sparsity else "per-tensor",
            "source": os.path.basename(os.path.normpath(src))}
    write_xsp(out, compressed, raw, config, info, inputs=ck.files, force=force)
    return rows


_ST_CODE = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def decompress_checkpoint(src: str, out: str, progress: Callable[[int, int, str], None] | None = None,
                          force: bool = True) -> int:
    """Dense pruned-and-quantized weights (and the untouched tensors) as one safetensors file.

    Every tensor the file holds is written, in info.order; each is decoded while it is
    written, so memory holds one dense tensor at a time.
    """
    from . import safetensors_io as st

    check_output(out, [src], force)
    with XspFile(src) as f:
        names = f.names()
        for n in f.tensors:
            f.check_cost(n)  # refuse before writing anything

        def producer(i: int, name: str):
            def data():
                if progress:
                    progress(i, len(names), name)
                return raw_from_torch(f.dense(name, framework="torch"))[2]
            return data

        entries = []
        for i, name in enumerate(names):
            if name in f.tensors:
                spec = f.desc.tensors[name]
                code, shape = _ST_CODE[spec.dtype], spec.shape
            else:
                info = f._r.infos[name]
                code, shape = info.dtype, info.shape
            entries.append(st.Entry(name, code, tuple(shape), producer(i, name)))
        size = st.write(out, entries, {"format": "pt", "xorsparse_source": os.path.basename(src)},
                        inputs=[src], force=force)
        if progress:
            progress(len(names), len(names), "")
    return size


def verify_checkpoint(src: str, against: str | None = None,
                      progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Checksums and a full decode of every tensor; with `against`, a bit-exact comparison
    of each decoded tensor with the reference pruning and quantization of the original."""
    results = []
    with XspFile(src) as f:
        orig = open_checkpoint(against) if against else None
        cfg = f.config or CompressConfig()
        masks = None
        if orig is not None:
            missing = [n for n in f.names() if n not in orig.names]
            if missing:
                raise CheckpointError(f"{against}: has no tensor {missing[0]!r} that {src} holds")
            if f.meta.get("info", {}).get("pruning") == "global":
                masks = global_magnitude_masks({n: to_float32(orig.get(n))[0] for n in f.tensors}, cfg.sparsity)
        names = f.names()
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names), name)
            dense = f.dense(name, framework="torch")
            row = {"name": name, "compressed": name in f.tensors, "decoded": True, "exact": None}
            if orig is not None:
                t = orig.get(name)
                if name in f.tensors:
                    ref = reference_prune_quantize(t, cfg, keep=None if masks is None else masks[name],
                                                   name=name, framework="torch")
                else:
                    ref = t
                row["exact"] = raw_from_torch(dense) == raw_from_torch(ref)
            results.append(row)
        if progress:
            progress(len(names), len(names), "")
    return results


def inspect_file(src: str) -> dict[str, Any]:
    with XspFile(src) as f:
        rows = [tensor_stats(n, f.compressed(n)) for n in f.tensors]
        out = {"file": src, "bytes": os.path.getsize(src), "tensors": rows, "total": totals(rows),
               "stored_tensors": len(f.raw_tensors), "config": f.meta.get("config"),
               "version": f.meta.get("version")}
    return out


def reference_state(src: str, config: CompressConfig, include: Sequence[str] = (),
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """The pruned-and-quantized reference of a checkpoint (torch tensors), codec not involved."""
    ck = open_checkpoint(src)
    selected = [n for n in ck.names if is_selected(n, ck.get(n), include, exclude)]
    masks = None
    if config.global_sparsity:
        masks = global_magnitude_masks({n: to_float32(ck.get(n))[0] for n in selected}, config.sparsity)
    out = {}
    for n in ck.names:
        t = ck.get(n)
        out[n] = (reference_prune_quantize(t, config, keep=None if masks is None else masks[n], name=n,
                                           framework="torch") if n in selected else t)
    return out


__all__ = ["Checkpoint", "CheckpointError", "open_checkpoint", "compress_checkpoint",
           "decompress_checkpoint", "verify_checkpoint", "inspect_file", "tensor_stats", "totals",
           "is_selected", "reference_state"]
