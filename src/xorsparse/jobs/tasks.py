"""Sharded jobs: the work items of compress, verify and decompress, and the plain
functions that do one item each (an executor in xorsparse.jobs.executors runs them).

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


Verify items are in xorsparse.checkpoint.verify, the passes of global pruning in
xorsparse.checkpoint.planning.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..checkpoint.dense import write_dense_safetensors
from ..checkpoint.planning import CompressPlan
from ..checkpoint.readers import Report, input_bytes, open_checkpoint
from ..checkpoint.selection import is_embedding
from ..checkpoint.shard import compress_shard
from ..checkpoint.stats import entry_bytes, tensor_stats
from ..checkpoint.xspset import XspSet
from ..errors import XorsparseError
from ..format.container import FORMAT_VERSION, XspError, XspFile
from ..tensor.pipeline import CompressConfig
from ..tensor.prune import PruneRule
from ..version import __version__

JOB_INFO = "job"  # info.job of every output shard: {"key": ..., "input_sha256": ...}


class JobError(XorsparseError):
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
    sel = [n for n in names if n in set(selected)]
    return {"config": config.to_dict(), "names": list(names), "compressed": sel,
            "rules": None if rules is None else {n: rules[n].to_list() for n in sel},
            "keep_dtype": keep_dtype, "info": dict(info), "output": os.path.basename(output),
            "format_version": FORMAT_VERSION, "xorsparse": __version__,
            **({"extra": dict(extra)} if extra else {})}


def _plan_of(settings: Mapping[str, Any], key: str, digest: str, threads: int | None = 1):
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
    with XspFile(task.out) as f:
        rows = [tensor_stats(n, f.compressed(n)) for n in f.tensors]
        compressed = set(f.tensors)
    written = entry_bytes(task.out)
    sizes = {n: ("compressed embeddings" if n in compressed and is_embedding(n) else
                 "compressed weights" if n in compressed else "stored as they are",
                 input_bytes(ck, n), written.get(n, 0)) for n in task.names}
    return ShardOutcome(task.index, task.out, True, rows, sizes, os.path.getsize(task.out),
                        time.perf_counter() - t0, sum(r["weights"] for r in rows), os.getpid(), _peak_rss())


def run_shard_task(task: ShardTask, report: Report | None = None, *, ck=None, prepared=None) -> ShardOutcome:
    """Do one compress item: keep a verified output of the same job, else (re)write it.

    `ck` / `prepared`: an open checkpoint and prepared codes, for the in-process path only
    (compressed-tensors inputs); a worker opens the input shard itself.
    """
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


@dataclass(frozen=True)
class DecompressTask:
    xsp: str
    out: str


def decompress_task(task: DecompressTask, report: Report | None = None) -> int:
    """One .xsp file to one dense safetensors file (one tensor in memory at a time)."""
    with XspSet(task.xsp) as xs:
        weights = xs.weights()

    def progress(i: int, n: int, name: str) -> None:
        if report and name:
            report({"kind": "tensor", "name": name, "weights": weights.get(name, 0)})
    return write_dense_safetensors(task.xsp, task.out, progress)
