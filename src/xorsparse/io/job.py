"""Sharded jobs: the work items of compress, verify and decompress, and the plain
functions that do one item each (an executor in xorsparse.distributed runs them).

A compress job over a model folder is one `ShardTask` per input shard; each writes one
output shard (atomically) and nothing else, so items run in any order, on any worker, and
can be retried one by one; the driver writes the index last. An item is a pure function
of its task (settings) and of its input shard's bytes, so the output bytes do not depend
on the executor or the number of workers.

Resume: every output shard records, in its description's `info.job`, the SHA-256 of its
input shard and a key: the SHA-256 of the task's settings (config, selection, global
pruning share, keep dtype, shard position, format and library version) together with that
input hash. Rerunning the same command finds an existing output shard with the same key
whose checksums all verify and keeps it; one with the same key that does not verify is
redone; one from another job (another key, or not an xorsparse shard) is refused unless
`force` (--force), which redoes it.

Global pruning across shards: two streaming passes over the selected tensors (one
tensor in memory at a time, shards in parallel) give every tensor its exact share of the
global magnitude threshold (tensor.prune.PruneRule): the masks are those of
global_magnitude_masks over all tensors at once, tie rule included.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..tensor.pipeline import CompressConfig, reference_prune_quantize, to_float32
from ..tensor.prune import PruneRule, global_rules, high_histogram, low_values, magnitude_bits, \
    select_high_bin, global_prune_count, HIGH_BINS

Report = Callable[[dict], None]
JOB_INFO = "job"  # info.job of every output shard: {"key": ..., "input_sha256": ...}


class JobError(ValueError):
    """A job that cannot go on as asked (an output from another job in the way)."""


def _peak_rss() -> int:
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def file_sha256(path: str, chunk: int = 8 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks (the identity of an input shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _what_the_output_depends_on(settings: Mapping[str, Any]) -> Mapping[str, Any]:
    """The settings without the records' measurements: the quality record and the stage
    timings describe a run, not the codes, so a rerun of the same calibrated job (whose
    timings differ) still recognises its finished shards."""
    extra = settings.get("extra")
    if not isinstance(extra, Mapping):
        return settings
    extra = {k: v for k, v in extra.items() if k != "quality"}
    if isinstance(extra.get("calibration"), Mapping):
        extra["calibration"] = {k: v for k, v in extra["calibration"].items() if k != "seconds"}
    return {**settings, "extra": extra}


def job_key(settings: Mapping[str, Any], input_sha256: str) -> str:
    body = json.dumps({"settings": _what_the_output_depends_on(settings), "input_sha256": input_sha256},
                      sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# Compress: one output shard per task


@dataclass(frozen=True)
class ShardTask:
    """One output shard: read `src`, write `out`. `settings` (JSON) fixes everything else."""

    index: int
    src: str
    out: str
    settings: dict
    force: bool = False
    threads: int | None = 1  # tensors at once in this item: 1 in a worker; None (one per core) in-process

    @property
    def names(self) -> list[str]:
        return list(self.settings["names"])


@dataclass
class ShardOutcome:
    index: int
    path: str
    reused: bool  # an existing output of the same job, verified and kept
    rows: list[dict]  # tensor_stats of the compressed tensors
    tensor_sizes: dict[str, tuple[str, int, int]]
    bytes: int
    seconds: float
    weights: int  # weights of the compressed tensors
    pid: int = 0
    peak_rss: int = 0  # bytes: the worker process's peak so far
    redone: str = ""  # why an existing output was redone ("" if none was there)


def shard_settings(config: CompressConfig, names: Sequence[str], selected: Sequence[str],
                   rules: Mapping[str, PruneRule] | None, keep_dtype: str | None,
                   info: Mapping[str, Any], output: str, extra: Mapping[str, Any] | None = None) -> dict:
    """The JSON settings of one task (what, besides the input's bytes, its output depends on).
    extra: the calibration / quality records the shard carries (docs/FORMAT.md section 8)."""
    from .. import __version__
    from .container import FORMAT_VERSION

    sel = [n for n in names if n in set(selected)]
    return {"config": config.to_dict(), "names": list(names), "compressed": sel,
            "rules": None if rules is None else {n: rules[n].to_list() for n in sel},
            "keep_dtype": keep_dtype, "info": dict(info), "output": os.path.basename(output),
            "format_version": FORMAT_VERSION, "xorsparse": __version__,
            **({"extra": dict(extra)} if extra else {})}


def _plan_of(settings: Mapping[str, Any], key: str, digest: str, threads: int | None = 1):
    from .checkpoint import CompressPlan

    rules = settings["rules"]
    info = dict(settings["info"])
    info[JOB_INFO] = {"key": key, "input_sha256": digest}
    return CompressPlan(CompressConfig.from_dict(settings["config"]), set(settings["compressed"]),
                        None, rules=None if rules is None else {n: PruneRule(*r) for n, r in rules.items()},
                        keep_dtype=settings["keep_dtype"], info=info, threads=threads,
                        extra=dict(settings.get("extra") or {}))


def existing_shard(path: str, key: str) -> tuple[str, str]:
    """("same", "") for an output of this job whose checksums all verify; ("corrupt", why)
    for one of this job that does not; ("other", why) for anything else at that path."""
    from .container import XspError, XspFile

    try:
        f = XspFile(path)
    except (XspError, OSError, ValueError) as e:
        return "other", f"not an xorsparse shard ({e})"
    try:
        job = f.meta.get("info", {}).get(JOB_INFO)
        if not isinstance(job, dict) or job.get("key") != key:
            return "other", "written by another job (other settings or input)"
        try:
            for name in f.tensors:
                f.compressed(name)  # description and part checksums, parts validated
            for name in f.raw_tensors:
                f.raw(name)
        except (XspError, OSError, ValueError) as e:
            return "corrupt", str(e)
        return "same", ""
    finally:
        f.close()


def _reused_outcome(task: ShardTask, ck, t0: float) -> ShardOutcome:
    from .checkpoint import _input_bytes, entry_bytes, is_embedding, tensor_stats
    from .container import XspFile

    with XspFile(task.out) as f:
        rows = [tensor_stats(n, f.compressed(n)) for n in f.tensors]
        compressed = set(f.tensors)
    written = entry_bytes(task.out)
    sizes = {n: ("compressed embeddings" if n in compressed and is_embedding(n) else
                 "compressed weights" if n in compressed else "stored as they are",
                 _input_bytes(ck, n), written.get(n, 0)) for n in task.names}
    return ShardOutcome(task.index, task.out, True, rows, sizes, os.path.getsize(task.out),
                        time.perf_counter() - t0, sum(r["weights"] for r in rows), os.getpid(), _peak_rss())


def run_shard_task(task: ShardTask, report: Report | None = None, *, ck=None, prepared=None) -> ShardOutcome:
    """Do one compress item: keep a verified output of the same job, else (re)write it.

    `ck` / `prepared`: an open checkpoint and prepared codes, for the in-process path only
    (compressed-tensors inputs); a worker opens the input shard itself.
    """
    from .checkpoint import compress_shard, open_checkpoint

    t0 = time.perf_counter()
    digest = file_sha256(task.src)
    key = job_key(task.settings, digest)
    if ck is None:
        ck = open_checkpoint(task.src)
    redone = ""
    if os.path.lexists(task.out):
        status, why = existing_shard(task.out, key)
        if status == "same":
            return _reused_outcome(task, ck, t0)
        if status == "other" and not task.force:
            raise JobError(f"{task.out}: {why}; refusing to replace it (--force redoes it)")
        redone = why
    plan = _plan_of(task.settings, key, digest, task.threads)
    if prepared:
        plan.prepared = prepared  # may be lazy (compressed-tensors): read one tensor at a time

    def on_tensor(name: str, weights: int) -> None:
        if report:
            report({"kind": "tensor", "task": task.index, "name": name, "weights": weights})
    res = compress_shard(ck, task.names, task.out, plan, on_tensor=on_tensor)
    return ShardOutcome(task.index, res.path, False, res.rows, res.tensor_sizes, res.bytes,
                        time.perf_counter() - t0, sum(r["weights"] for r in res.rows), os.getpid(),
                        _peak_rss(), redone)


# ---------------------------------------------------------------------------------------
# Global pruning: two streaming passes, shard by shard


@dataclass(frozen=True)
class PassTask:
    """Read the tensors `names` of the shard `src` (pass 1: high histogram; pass 2 with
    `high`: the low bits inside that bin, per tensor)."""

    src: str
    names: tuple[str, ...]
    high: int | None = None


def _tensor_loader(src: str):
    from .checkpoint import open_checkpoint

    ck = open_checkpoint(src)
    return lambda name: to_float32(ck.get(name))[0]


def histogram_pass(task: PassTask, report: Report | None = None) -> tuple[np.ndarray, int]:
    """Pass 1 over one shard: the summed high-16-bit histogram and the number of weights."""
    get = _tensor_loader(task.src)
    hist = np.zeros(HIGH_BINS, dtype=np.int64)
    n = 0
    for name in task.names:
        bits = magnitude_bits(get(name), name)
        hist += high_histogram(bits)
        n += bits.size
        if report:
            report({"kind": "tensor", "name": name, "weights": int(bits.size)})
    return hist, n


def low_pass(task: PassTask, report: Report | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Pass 2 over one shard: per tensor, the low 16 bits found in the threshold's high bin."""
    get = _tensor_loader(task.src)
    out = {}
    for name in task.names:
        bits = magnitude_bits(get(name), name)
        out[name] = low_values(bits, int(task.high))
        if report:
            report({"kind": "tensor", "name": name, "weights": int(bits.size)})
    return out


def global_pruning_rules(groups: Sequence[tuple[str, Sequence[str]]], order: Sequence[str], sparsity: float,
                         executor=None, on_event: Callable[[dict], None] | None = None) -> dict[str, PruneRule]:
    """Every tensor's share of one global magnitude threshold over the tensors `order`,
    read shard by shard (`groups`: (shard file, its tensors)). Exact: the same masks as
    global_magnitude_masks over all of them at once (ties: earlier in `order` first)."""
    tasks = [PassTask(src, tuple(names)) for src, names in groups if names]
    run = _runner(executor)
    hist = np.zeros(HIGH_BINS, dtype=np.int64)
    total = 0
    for _, (h, n) in run(histogram_pass, tasks, on_event):
        hist += h
        total += n
    n_prune = global_prune_count(total, sparsity)
    high, below, low = None, 0, {}
    if 0 < n_prune < total:
        high, below = select_high_bin(hist, n_prune)
        tasks2 = [PassTask(t.src, t.names, high) for t in tasks]
        for _, part in run(low_pass, tasks2, on_event):
            low.update(part)
    return global_rules(order, total, sparsity, high, below, low)


def _runner(executor):
    if executor is not None:
        return executor.map

    def serial(fn, items, on_event=None):
        for i, item in enumerate(items):
            yield i, fn(item, on_event)
    return serial


# ---------------------------------------------------------------------------------------
# Verify and decompress, shard by shard


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
    from .checkpoint import _open_original
    from .container import XspFile
    from .torchconv import raw_from_torch, torch_dtype_name
    from ..tensor.pipeline import FLOAT_DTYPES

    rows = []
    orig = _open_original(task.against) if task.against else None
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
                elif name in f.tensors and f.tensors[name].get("quantizer") == "affine":
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


@dataclass(frozen=True)
class DecompressTask:
    xsp: str
    out: str


def decompress_task(task: DecompressTask, report: Report | None = None) -> int:
    """One .xsp file to one dense safetensors file (one tensor in memory at a time)."""
    from .checkpoint import XspSet, write_dense_safetensors

    with XspSet(task.xsp) as xs:
        weights = xs.weights()

    def progress(i: int, n: int, name: str) -> None:
        if report and name:
            report({"kind": "tensor", "name": name, "weights": weights.get(name, 0)})
    return write_dense_safetensors(task.xsp, task.out, progress)


__all__ = ["DecompressTask", "JobError", "PassTask", "ShardOutcome", "ShardTask", "VerifyTask",
           "decompress_task", "existing_shard", "file_sha256", "global_pruning_rules", "histogram_pass",
           "job_key", "low_pass", "run_shard_task", "shard_settings", "verify_task"]
