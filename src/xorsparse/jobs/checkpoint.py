"""Compress and decompress whole checkpoints: one .xsp file from any checkpoint, or a model
folder from a model folder (xorsparse.jobs.folder), and dense weights back."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

from ..checkpoint.dense import write_dense_safetensors, write_torch_state
from ..checkpoint.folder import is_xsp_folder, xsp_files
from ..checkpoint.planning import plan_compression
from ..checkpoint.readers import Progress, open_checkpoint
from ..checkpoint.shard import compress_shard
from ..checkpoint.stats import CompressReport, size_rows
from ..checkpoint.xspset import XspSet
from ..format.output import check_output
from ..tensor.pipeline import CompressConfig, Prepared
from .folder import compress_folder, decompress_folder


def compress_checkpoint(src: str, out: str, config: CompressConfig, include: Sequence[str] = (),
                        exclude: Sequence[str] = (), progress: Progress | None = None, *,
                        prepared: Mapping[str, Prepared] | None = None, force_include: Sequence[str] = (),
                        embeddings: bool = True, keep_dtype: str | None = None,
                        load_mode: str = "decode", executor=None, force: bool = False,
                        on_event: Callable[[dict], None] | None = None,
                        extra: Mapping[str, Any] | None = None) -> CompressReport:
    """Compress a checkpoint: into one .xsp file, or, when `src` is a model folder and `out`
    does not end in .xsp, into a model folder (see xorsparse.jobs.folder).

    force=False refuses an existing output or a symlink (the command line's default); an
    output that is one of the checkpoint's files, or a folder holding one, is refused either way.
    prepared: tensor name -> Prepared (mask and codes chosen elsewhere, e.g. by calibration:
    xorsparse.torch.folder), encoded as they are. extra: the calibration / quality records.
    """
    if os.path.isdir(src) and not out.endswith(".xsp"):
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



def decompress_checkpoint(src: str, out: str, progress: Progress | None = None,
                          output_format: str | None = None, executor=None,
                          on_event: Callable[[dict], None] | None = None, force: bool = True) -> int:
    """Dense pruned-and-quantized weights (and the untouched tensors): a safetensors file,
    a PyTorch state dict (.pt/.pth/.bin, torch.save), or, from an .xsp model folder, a
    plain model folder (`output_format="compressed-tensors"`: a compressed-tensors folder).
    Returns the bytes written. force=False refuses an existing output or a symlink; an
    output that is an input file (or a folder holding one) is refused either way."""
    if is_xsp_folder(src):
        return decompress_folder(src, out, progress, output_format, force=force, executor=executor,
                                 on_event=on_event)
    if os.path.isdir(src):  # not recognised as an .xsp folder: a shard that cannot be read says so, by name
        XspSet(src).close()
    if output_format not in (None, "safetensors"):
        raise ValueError(f"{src}: --format {output_format} needs an .xsp model folder as input")
    check_output(out, xsp_files(src), force)
    if out.endswith((".pt", ".pth", ".bin")):
        return write_torch_state(src, out, progress, force)
    if not out.endswith(".safetensors"):
        raise ValueError(f"{out}: write .safetensors, or a PyTorch state dict (.pt, .pth, .bin)")
    return write_dense_safetensors(src, out, progress, force=force)
