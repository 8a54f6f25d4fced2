"""Dense weights back from .xsp files: a safetensors file decoded one tensor at a time while it
is written, or a PyTorch state dict."""

from __future__ import annotations

import os
from typing import Sequence

from ..format import safetensors_io as st
from ..format.output import atomic_file
from ..format.torchconv import raw_from_torch
from .folder import xsp_files
from .readers import Progress
from .xspset import XspSet


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


def write_torch_state(src: str, out: str, progress: Progress | None, force: bool = True) -> int:
    """A real PyTorch state dict (torch.save), written to a temporary name and renamed."""
    import torch

    state = dict(_dense_items(src, progress))
    with atomic_file(out, inputs=xsp_files(src), force=force) as f:
        torch.save(state, f.raw)
    return os.path.getsize(out)
