"""Reading checkpoints as people have them: safetensors files, PyTorch state dicts (.pt,
.pth, .bin) and Hugging Face folders (single file or shards with an index), each as one
`Checkpoint` whose tensors are read when asked for.

This is the I/O edge, so it uses torch for reading (bfloat16, .pt files); the numerical
core underneath works on numpy arrays.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import XorsparseError
from ..format.torchconv import ST_TO_TORCH, torch_dtype_name

Progress = Callable[[int, int, str], None]  # (done, total, text)
Report = Callable[[dict], None]  # events of a work item (xorsparse.jobs.executors)


class CheckpointError(XorsparseError):
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


def index_shards(folder: str, index_name: str) -> list[str] | None:
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
        shards = index_shards(p, SAFE_INDEX)
        if shards is not None:
            return _safetensors_files(shards, [os.path.join(p, SAFE_INDEX)])
        st_files = sorted(f for f in os.listdir(p) if f.endswith(".safetensors"))
        if st_files:
            return _safetensors_files([os.path.join(p, f) for f in st_files])
        shards = index_shards(p, TORCH_INDEX)
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


def input_bytes(ck: Checkpoint, name: str) -> int:
    import torch

    dtype, shape = ck.info(name)
    size = int(np.prod(shape, dtype=np.int64)) if shape else 1
    return size * torch.empty((), dtype=getattr(torch, dtype)).element_size()
