"""What every shard of a compression shares: the selection, the configuration, prepared codes
and, for global pruning, each tensor's exact share of one magnitude threshold.

Global pruning across shards: two streaming passes over the selected tensors (one tensor in
memory at a time, shards in parallel on any executor given) give every tensor its exact
share of the global magnitude threshold (tensor.prune.PruneRule): the masks are those of
global_magnitude_masks over all tensors at once, tie rule included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..format import safetensors_io as st
from ..tensor.pipeline import FLOAT_DTYPES, CompressConfig, Prepared, to_float32
from ..tensor.prune import (
    HIGH_BINS,
    PruneRule,
    global_prune_count,
    global_rules,
    high_histogram,
    low_values,
    magnitude_bits,
    select_high_bin,
    streaming_global_rules,
)
from .options import RunOptions, SelectOptions
from .readers import Checkpoint, CheckpointError, Report, open_checkpoint
from .selection import Selection, select_tensors


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


def plan_compression(ck: Checkpoint, config: CompressConfig, select: SelectOptions = SelectOptions(), *,
                     prepared: Mapping[str, Prepared] | None = None, default: Iterable[str] | None = None,
                     info: Mapping[str, Any] | None = None, run: RunOptions = RunOptions(),
                     extra: Mapping[str, Any] | None = None) -> tuple[CompressPlan, Selection]:
    """Select the tensors and, for global pruning, each tensor's share of the threshold (two
    streaming passes over the shards, on `run.executor` if given): what every shard shares.
    `prepared` may compute its values lazily: only its names are read here. `default`
    replaces the default choice of tensors (compressed-tensors: its quantized ones). `extra`:
    the calibration / quality records (docs/FORMAT.md section 8) every shard carries."""
    prepared = prepared if prepared is not None else {}
    keep_dtype = select.keep_dtype
    sel = select_tensors(ck, select.include, select.exclude, select.force_include, select.embeddings,
                         default=default if default is not None else (list(prepared) if prepared else None))
    selected = set(sel.compressed)
    if not selected:
        raise CheckpointError(f"{ck.path}: no tensor selected for compression (check --include/--exclude)")
    if keep_dtype is not None and keep_dtype not in FLOAT_DTYPES:
        raise ValueError(f"keep dtype must be one of {', '.join(FLOAT_DTYPES)}, got {keep_dtype!r}")
    rules = None
    if config.global_sparsity:
        free = [n for n in sel.compressed if n not in prepared]
        rules = checkpoint_global_rules(ck, free, config.sparsity, run.executor, run.on_event)
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
    return global_pruning_rules(groups, order, sparsity, executor, on_event)


def _plain_safetensors_shards(groups: Sequence[tuple[str, Sequence[str]]]) -> bool:
    """Whether every name is an entry of its safetensors file (so a worker can read it there)."""
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


@dataclass(frozen=True)
class PassTask:
    """Read the tensors `names` of the shard `src` (pass 1: high histogram; pass 2 with
    `high`: the low bits inside that bin, per tensor)."""

    src: str
    names: tuple[str, ...]
    high: int | None = None


def _tensor_loader(src: str):
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
    run = item_runner(executor)
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


def item_runner(executor):
    """`executor.map` (xorsparse.jobs.executors), or the items in order in this process: the
    lower floors run work items on any executor given without importing one."""
    if executor is not None:
        return executor.map

    def serial(fn, items, on_event=None):
        for i, item in enumerate(items):
            yield i, fn(item, on_event)
    return serial
