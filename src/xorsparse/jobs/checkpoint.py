"""Compress and decompress whole checkpoints: one .xsp file from any checkpoint, or a model
folder from a model folder (xorsparse.jobs.folder), and dense weights back."""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from ..checkpoint.dense import write_dense_safetensors, write_torch_state
from ..checkpoint.folder import check_folder_output, is_xsp_folder, may_hold_xsp, xsp_files
from ..checkpoint.options import RunOptions, SelectOptions
from ..checkpoint.planning import plan_compression
from ..checkpoint.readers import Checkpoint, CheckpointError, Progress, open_checkpoint
from ..checkpoint.shard import compress_shard
from ..checkpoint.stats import CompressReport, size_rows
from ..checkpoint.xspset import XspSet
from ..format.output import OutputError, check_output, is_inside
from ..tensor.pipeline import CompressConfig, Prepared
from .folder import compress_folder, decompress_folder


def check_compress_output(src: str, out: str, force: bool = False) -> Checkpoint | None:
    """Refuse at once an output `compress_checkpoint(src, out)` would refuse, so that a
    mistake is reported before minutes of calibration, not after: an output that is an input
    file, inside the input folder (or the folder itself, or around it), a device, a symlink or
    an existing file without `force`. Returns the opened checkpoint for a one-file output
    (None for a folder output, whose existing folder is where a job resumes)."""
    if os.path.isdir(src) and not out.endswith(".xsp"):
        check_folder_output(src, out, True)
        return None
    if os.path.isdir(src) and is_inside(out, src):
        raise OutputError(f"{out}: is inside the input folder {src}; refusing to write there (it would be carried "
                          "into the next compressed folder as one of its files)")
    ck = open_checkpoint(src)
    check_output(out, ck.files, force)
    return ck


def compress_checkpoint(src: str, out: str, config: CompressConfig, select: SelectOptions = SelectOptions(),
                        run: RunOptions = RunOptions(), *, prepared: Mapping[str, Prepared] | None = None,
                        load_mode: str = "decode", extra: Mapping[str, Any] | None = None) -> CompressReport:
    """Compress a checkpoint: into one .xsp file, or, when `src` is a model folder and `out`
    does not end in .xsp, into a model folder (see xorsparse.jobs.folder).

    select: which tensors (include / exclude / force_include / embeddings, keep_dtype). run:
    executor, events, progress and force: force=False refuses an existing output or a symlink
    (the command line's default); an output that is one of the checkpoint's files, or a folder
    holding one, is refused either way. prepared: tensor name -> Prepared (mask and codes
    chosen elsewhere, e.g. by calibration: xorsparse.torch.folder), encoded as they are.
    load_mode: how transformers loads the folder (decode / ondemand). extra: the calibration /
    quality records.
    """
    if os.path.isdir(src) and not out.endswith(".xsp"):
        return compress_folder(src, out, config, select, run, prepared=prepared, load_mode=load_mode, extra=extra)
    ck = check_compress_output(src, out, run.force)
    plan, sel = plan_compression(ck, config, select, prepared=prepared,
                                 info={"pruning": "global" if config.global_sparsity else "per-tensor",
                                       "source": os.path.basename(os.path.normpath(src))}, extra=extra)
    res = compress_shard(ck, ck.names, out, plan, run.progress, force=run.force)
    if run.progress:
        run.progress(len(ck.names), len(ck.names), "")
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
    if os.path.isdir(src):  # the input is the problem, whatever the output's name
        try:
            shards = xsp_files(src)
        except CheckpointError:
            shards = []
        if may_hold_xsp(shards):  # .xsp files not recognised as a model folder: a shard that cannot be read says so
            XspSet(src).close()
        raise CheckpointError(f"{src}: not an xorsparse model folder (no xorsparse quantization_config in its "
                              "config.json, no .xsp weights); decompress reads what `xorsparse compress` wrote")
    if output_format not in (None, "safetensors"):
        raise ValueError(f"{src}: --format {output_format} needs an .xsp model folder as input")
    check_output(out, xsp_files(src), force)
    if out.endswith((".pt", ".pth", ".bin")):
        return write_torch_state(src, out, progress, force)
    if not out.endswith(".safetensors"):
        raise ValueError(f"{out}: write .safetensors, or a PyTorch state dict (.pt, .pth, .bin)")
    return write_dense_safetensors(src, out, progress, force=force)
