"""Verifying .xsp files: checksums and a full decode of every tensor, and with the original
checkpoint a bit-exact comparison with the reference pruning and quantization. One .xsp file
is one work item (`VerifyTask`), run on any executor given."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..format.container import XspFile
from ..format.torchconv import raw_from_torch, torch_dtype_name
from ..tensor.pipeline import FLOAT_DTYPES, CompressConfig, reference_prune_quantize, to_float32
from ..tensor.prune import PruneRule, global_magnitude_masks
from ..tensor.variants import QUANTIZERS
from .compressed_tensors import is_compressed_tensors_folder, read_compressed_tensors
from .folder import CONFIG, model_subfolder
from .planning import checkpoint_global_rules
from .readers import Checkpoint, CheckpointError, Progress, Report, open_checkpoint
from .selection import select_tensors
from .xspset import XspSet


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
    with XspSet(src) as f:
        names = f.names()
        cfg = f.config or CompressConfig()
        per_file = [(x.path, [n for n in names if f.where[n] is x]) for x in f.files]
        free = [n for n in names if n in f.tensors and QUANTIZERS[f.where[n].tensors[n]["quantizer"]].quantizes]
        global_pruning = f.meta.get("info", {}).get("pruning") == "global"
        weights = sum(f.weights().values())
    rules = None
    if against:
        orig = open_original(against)
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
        on_event({"kind": "plan", "items": len(tasks), "tensors": len(names), "weights": weights})
    by_task: list[list[dict]] = [[] for _ in tasks]
    for i, rows in run(verify_task, tasks, events):
        by_task[i] = rows
        if on_event:
            on_event({"kind": "item", "name": os.path.basename(tasks[i].xsp), "tensors": len(rows)})
    if progress:
        progress(len(names), len(names), "")
    return [r for rows in by_task for r in rows]


def open_original(path: str) -> Checkpoint:
    """The checkpoint to verify against; a compressed-tensors folder as its dense tensors."""
    if os.path.isdir(path):
        sub = model_subfolder(path)
        d = os.path.join(path, sub) if sub else path
        if is_compressed_tensors_folder(d):
            with open(os.path.join(d, CONFIG), encoding="utf-8") as fh:
                return read_compressed_tensors(d, json.load(fh)).checkpoint
        return open_checkpoint(d)
    return open_checkpoint(path)


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


@dataclass(frozen=True)
class VerifyTask:
    """Decode every tensor of one .xsp file; with `against`, compare each with the
    reference pruning and quantization of the original (global pruning: `rules`)."""

    xsp: str
    names: tuple[str, ...]
    against: str | None = None
    config: dict | None = None
    rules: dict | None = None  # name -> [threshold, ties]


def verify_task(task: VerifyTask, report: Report | None = None,
                references: Mapping[str, Any] | None = None) -> list[dict]:
    """references: name -> expected dense tensor where the reference is not the data-free
    pipeline's (calibrated codes, recomputed by the caller in this process)."""
    rows = []
    orig = open_original(task.against) if task.against else None
    cfg = CompressConfig.from_dict(task.config) if task.config else CompressConfig()
    with XspFile(task.xsp) as f:
        for name in task.names:
            dense = f.dense(name, framework="torch")
            row = {"name": name, "compressed": name in f.tensors, "decoded": True, "exact": None}
            weights = int(dense.numel())
            if orig is not None:
                t = orig.get(name)
                if references and name in references:
                    ref = references[name]
                elif name in f.tensors and not QUANTIZERS[f.tensors[name]["quantizer"]].quantizes:
                    ref = t  # given codes: the original's own dequantization (compressed-tensors)
                elif name in f.tensors:
                    keep = None
                    if task.rules is not None:
                        keep = PruneRule(*task.rules[name]).keep(to_float32(t)[0], name)
                    ref = reference_prune_quantize(t, cfg, keep=keep, name=name, framework="torch")
                elif torch_dtype_name(t) in FLOAT_DTYPES:
                    ref = t.to(dense.dtype)  # stored as it is, in the dtype asked for (--keep-dtype)
                else:
                    ref = t
                row["exact"] = raw_from_torch(dense) == raw_from_torch(ref)
                del t, ref
            del dense
            rows.append(row)
            if report:
                report({"kind": "tensor", "name": name, "weights": weights})
    return rows
