"""Model folders in, model folders out (docs/FORMAT.md, "Model folders").

`xorsparse compress MODEL_DIR OUT_DIR` keeps the folder a Hugging Face / sentence-transformers
folder: every file that is not a weight file is carried over, the weights become .xsp files
named as transformers looks for them (`model.safetensors`, or `model-00001-of-0000N.safetensors`
shards with `model.safetensors.index.json`: an .xsp file is a valid safetensors file), and
config.json gets a `quantization_config` naming xorsparse. Work is ordered so that a folder
is complete exactly when its last file exists: carried files and config.json first, then one
output shard per input shard (each written atomically, independently, as work items on an
executor), the index last.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..checkpoint.compressed_tensors import (
    is_compressed_tensors,
    read_compressed_tensors,
    write_compressed_tensors_folder,
)
from ..checkpoint.folder import (
    CONFIG,
    QUANT_METHOD,
    SINGLE,
    FolderPlan,
    carried_of_xsp_folder,
    check_folder_output,
    copy_carried,
    model_subfolder,
    plan_folder,
    quantization_config,
    read_config,
    shard_name,
    weights_dir,
    write_index,
    xsp_files,
)
from ..checkpoint.options import RunOptions, SelectOptions
from ..checkpoint.planning import plan_compression
from ..checkpoint.readers import SAFE_INDEX, Checkpoint, Progress
from ..checkpoint.stats import CompressReport, size_rows
from ..checkpoint.xspset import XspSet
from ..format.container import XspError, XspFile
from ..format.output import clean_stale
from ..tensor.pipeline import CompressConfig, Prepared
from .tasks import (
    JOB_INFO,
    DecompressTask,
    ShardTask,
    decompress_task,
    existing_shard,
    file_sha256,
    job_key,
    run_shard_task,
    shard_settings,
)


class _Written:
    """Undo on failure: the folder if this run created it, else the files it wrote; files
    `keep(path)` accepts stay (a compress job's finished shards, which a rerun resumes from)."""

    def __init__(self, out: str, keep: Callable[[str], bool] | None = None):
        self.out = out
        self.keep = keep or (lambda path: False)
        self.created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)

    def __enter__(self) -> "_Written":
        self.before = set(_all_files(self.out))
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            return
        new = set(_all_files(self.out)) - self.before
        kept = {f for f in new if self.keep(f)}
        if self.created and not kept:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            for f in new - kept:
                os.unlink(f)


def _all_files(d: str) -> list[str]:
    return [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs]


def compress_folder(src: str, out: str, config: CompressConfig, select: SelectOptions = SelectOptions(),
                    run: RunOptions = RunOptions(), *, prepared: Mapping[str, Prepared] | None = None,
                    load_mode: str = "decode", extra: Mapping[str, Any] | None = None) -> CompressReport:
    """A model folder in, an xorsparse model folder out (one output shard per input shard).

    The shards are independent work items (jobs/tasks.py) run on `run.executor` (default: in
    this process); rerunning into the same folder keeps the output shards the same job already
    wrote (resume) and refuses, unless `run.force`, shards of another job. `run.on_event`
    receives progress events (xorsparse.jobs.executors.JobProgress); `run.progress` the older
    per-tensor callback. On failure the folder is left as it was, except for the output shards that
    were finished (each complete and checksummed): the rerun keeps them. A folder without
    its index is incomplete (the index is written last). The output is never the input
    folder, inside it or around it, nor a file, device or symlink (format/output.py); an
    existing folder is where a job resumes, so it is not refused as such.
    """
    check_folder_output(src, out, True)
    with _Written(out, keep=_is_output_shard):
        return _compress_folder(src, out, config, select, run, prepared, load_mode, extra)


def _is_output_shard(path: str) -> bool:
    base = os.path.basename(path)
    return base == SINGLE or (base.startswith("model-") and base.endswith(".safetensors"))


def _compress_folder(src: str, out: str, config: CompressConfig, select: SelectOptions, run: RunOptions,
                     prepared: Mapping[str, Prepared] | None, load_mode: str,
                     extra: Mapping[str, Any] | None) -> CompressReport:
    executor, force, keep_dtype = run.executor, run.force, select.keep_dtype
    sub = model_subfolder(src)
    weights_dir = os.path.join(src, sub) if sub else src
    cfg_path = os.path.join(weights_dir, CONFIG)
    model_config = read_config(cfg_path)
    qextra: dict[str, Any] = {}
    notes: list[str] = []
    default = None
    ck = None
    plan_ck_from_files = None
    if model_config is not None and is_compressed_tensors(model_config):
        ct = read_compressed_tensors(weights_dir, model_config)
        ck, default = ct.checkpoint, list(ct.prepared) or None
        prepared = ChainMap(dict(prepared or {}), ct.prepared)  # stays lazy: one tensor at a time
        qextra["compressed_tensors"] = model_config["quantization_config"]
        notes += ct.notes
    plan = plan_folder(src, ck)
    if ck is None:  # opened from the files: a worker can open each shard itself
        plan_ck_from_files = plan.checkpoint
    ck = plan.checkpoint
    events = _event_sink(run.on_event, run.progress, len(ck.names))
    cplan, sel = plan_compression(ck, config, select, prepared=prepared, default=default,
                                  info={"pruning": "global" if config.global_sparsity else "per-tensor"},
                                  run=RunOptions(executor=executor), extra=extra)
    out_weights = os.path.join(out, sub) if sub else out
    os.makedirs(out_weights, exist_ok=True)

    # 1. everything that is not a weight, config.json with its quantization_config
    config_text = {}
    if model_config is not None:
        new = {k: v for k, v in model_config.items() if k != "quantization_config"}
        new["quantization_config"] = quantization_config(config, load_mode, qextra)
        config_text[os.path.normpath(os.path.join(sub, CONFIG))] = json.dumps(new, indent=2, sort_keys=True) + "\n"
    other_in, other_out = copy_carried(plan, out, config_text)

    # 2. one output shard per input shard, each an independent task; the index goes first
    #    (a folder without its index is incomplete) and comes back last
    n = len(ck.shards)
    index_path = os.path.join(out_weights, SAFE_INDEX)
    if os.path.exists(index_path):
        os.unlink(index_path)
    clean_stale(out_weights)  # temporary shards of killed writers (format/output.py names them)
    # in this process (tensors of a shard on a thread per core), or one item per worker (one
    # thread each); a compressed-tensors input is a view (its tensors and codes are made
    # from the files here, not read as they are by a worker)
    in_process = (ck is not plan_ck_from_files or bool(cplan.prepared) or cplan.masks is not None
                  or executor is None or getattr(executor, "in_process", False))
    tasks = _shard_tasks(src, ck, cplan, keep_dtype, out_weights, force, in_process)
    if events:
        weights = sum(int(np.prod(ck.info(nm)[1], dtype=np.int64)) for nm in cplan.selected)
        events({"kind": "plan", "items": n, "tensors": len(ck.names), "weights": weights})
    if in_process:
        results = ((t.index, run_shard_task(t, events, ck=ck, prepared=cplan.prepared)) for t in tasks)
    else:
        results = executor.map(run_shard_task, tasks, events)
    outcomes: list[Any] = [None] * n
    for i, res in results:
        outcomes[i] = res
        if events:
            events({"kind": "item", "name": os.path.basename(res.path), "reused": res.reused,
                    "tensors": len(tasks[i].names), "weights": res.weights})
    rows, sizes, outputs = [], {}, []
    for res in outcomes:
        rows += res.rows
        sizes.update(res.tensor_sizes)
        outputs.append(res.path)
    reused = sum(r.reused for r in outcomes)
    if reused:
        notes.append(f"resumed: kept {reused} of {n} output shard{'s' * (n != 1)} this job had written "
                     f"(checksums verified), wrote {n - reused}")
    redone = [r for r in outcomes if r.redone]
    if redone:
        notes.append(f"redone: {len(redone)} output shard(s) in the way, first {os.path.basename(redone[0].path)}: "
                     f"{redone[0].redone}")

    # 3. the index, last
    if n > 1:
        outputs.append(write_index(out_weights, outputs[:n], {"format": QUANT_METHOD}))
    in_files = sum(os.path.getsize(f) for f in ck.files)
    out_files = sum(os.path.getsize(f) for f in outputs)
    if plan.skipped:
        notes.append("not carried over (other copies of the weights): " + ", ".join(plan.skipped))
    report = CompressReport(rows, sel, size_rows(sizes, in_files, out_files, other_in, other_out,
                                                  len(plan.carried)), outputs, notes)
    report.outcomes = outcomes
    return report


def _shard_tasks(src: str, ck: Checkpoint, cplan, keep_dtype: str | None, out_weights: str, force: bool = False,
                 in_process: bool = True) -> list:
    """One ShardTask per input shard: what each output shard's bytes (and job key) depend on."""

    n = len(ck.shards)
    tasks = []
    for i, (shard_path, names) in enumerate(ck.shards):
        info = dict(cplan.info)
        info["source"] = os.path.relpath(shard_path, src)
        info["shard"] = [i + 1, n]
        out_path = os.path.join(out_weights, shard_name(i, n))
        settings = shard_settings(cplan.config, names, sorted(cplan.selected & set(names)), cplan.rules,
                                  keep_dtype, info, out_path, cplan.extra)
        tasks.append(ShardTask(i, shard_path, out_path, settings, force, None if in_process else 1))
    return tasks


@dataclass
class ResumeCheck:
    """What an output folder holds of a prepared (calibrated) job, found before any model work:
    `state` "done" (every output shard is this job's and verifies), "other" (a shard of another
    job is in the way: `why`) or "todo"; `records`: those the shards carry (None: no shard)."""

    state: str
    records: dict | None = None
    why: str = ""


def check_prepared_job(src: str, out: str, config: CompressConfig, names: Sequence[str],
                       select: SelectOptions = SelectOptions()) -> ResumeCheck:
    """Would `compress_folder(src, out, ..., prepared={names}, extra=R)` keep every output shard,
    with R the records those shards carry? Answered from the headers and checksums alone, so a
    resume of a finished calibrated job needs no calibration (the caller must also check that
    R's calibration record asks for the same data: xorsparse.torch.resume). Compressed-tensors
    inputs and folders without output shards are "todo"."""
    if not os.path.isdir(out):
        return ResumeCheck("todo")
    sub = model_subfolder(src)
    model_config = read_config(os.path.join(os.path.join(src, sub) if sub else src, CONFIG))
    if model_config is not None and is_compressed_tensors(model_config):
        return ResumeCheck("todo")
    plan = plan_folder(src)
    ck = plan.checkpoint
    out_weights = os.path.join(out, sub) if sub else out
    paths = [os.path.join(out_weights, shard_name(i, len(ck.shards))) for i in range(len(ck.shards))]
    present = [p for p in paths if os.path.lexists(p)]
    if not present:
        return ResumeCheck("todo")
    try:
        with XspFile(present[0]) as f:
            records = dict(f.records)
            job = f.meta.get("info", {}).get(JOB_INFO)
    except (XspError, OSError, ValueError) as e:
        return ResumeCheck("other", why=f"{present[0]}: not an xorsparse shard ({e})")
    if not isinstance(job, dict):
        return ResumeCheck("other", why=f"{present[0]}: written by another job (no job key)")
    cplan, _ = plan_compression(ck, config, select, prepared=dict.fromkeys(names),
                                info={"pruning": "global" if config.global_sparsity else "per-tensor"},
                                extra=records)
    state = "done"
    for task in _shard_tasks(src, ck, cplan, select.keep_dtype, out_weights):
        if not os.path.lexists(task.out):
            state = "todo"
            continue
        status, why = existing_shard(task.out, job_key(task.settings, file_sha256(task.src)))
        if status == "other":
            return ResumeCheck("other", records, f"{task.out}: {why}")
        if status != "same":
            state = "todo"
    return ResumeCheck(state, records)


def _event_sink(on_event, progress, total: int):
    """One event callback from the new (events) and the older (i, n, name) progress."""
    if progress is None:
        return on_event
    count = [0]

    def sink(ev: dict) -> None:
        if on_event:
            on_event(ev)
        if ev.get("kind") == "tensor":
            count[0] += 1
            progress(count[0], total, ev.get("name", ""))
        elif ev.get("kind") == "item" and ev.get("reused"):
            count[0] += int(ev.get("tensors", 0))
            progress(count[0], total, "")
    return sink


def decompress_folder(src: str, out: str, progress: Progress | None = None,
                      output_format: str | None = None, force: bool = True, executor=None,
                      on_event: Callable[[dict], None] | None = None) -> int:
    """An xorsparse folder back to a plain one (safetensors, same names, dtypes and shapes;
    quantization_config removed), or with `output_format="compressed-tensors"` to a folder
    compressed-tensors loads. Returns the bytes of the weight files written. Shards are
    independent items, decoded in parallel on `executor` (default: in this process).
    force=False refuses an existing, non-empty output folder."""
    if output_format not in (None, "safetensors", "compressed-tensors"):
        raise ValueError(f"unknown output format {output_format!r} (safetensors or compressed-tensors)")
    XspSet(src).close()  # every shard's description checked, a clear error before anything is created
    check_folder_output(src, out, force)
    with _Written(out):
        if output_format == "compressed-tensors":
            return write_compressed_tensors_folder(src, out, progress)
        return _decompress_plain(src, out, progress, executor, on_event)


def _decompress_plain(src: str, out: str, progress: Progress | None, executor=None,
                      on_event: Callable[[dict], None] | None = None) -> int:
    sub = model_subfolder(src)
    files = xsp_files(src)
    out_weights = os.path.join(out, sub) if sub else out
    os.makedirs(out_weights, exist_ok=True)
    config_text = {}
    cfg = read_config(os.path.join(weights_dir(src), CONFIG))
    if cfg is not None:
        plain = {k: v for k, v in cfg.items() if k != "quantization_config"}
        config_text[os.path.normpath(os.path.join(sub, CONFIG))] = json.dumps(plain, indent=2, sort_keys=True) + "\n"
    carried = [r for r in carried_of_xsp_folder(src, files)]
    copy_carried(FolderPlan(src, sub, None, carried), out, config_text)  # type: ignore[arg-type]
    with XspSet(src) as xs:
        total = len(xs.names())
        weights = sum(xs.weights().values())
    n = len(files)
    tasks = [DecompressTask(f, os.path.join(out_weights, shard_name(i, n))) for i, f in enumerate(files)]
    events = _event_sink(on_event, progress, total)
    if on_event:
        on_event({"kind": "plan", "items": n, "tensors": total, "weights": weights})
    run = executor.map if executor is not None else \
        (lambda fn, items, ev: ((i, fn(t, ev)) for i, t in enumerate(items)))
    written = 0
    for i, size in run(decompress_task, tasks, events):
        written += size
        if on_event:
            on_event({"kind": "item", "name": os.path.basename(tasks[i].out)})
    if progress:
        progress(total, total, "")
    if n > 1:
        write_index(out_weights, [t.out for t in tasks])
    return written
