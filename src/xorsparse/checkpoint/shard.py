"""One input shard to one .xsp file: the unit of work of a folder. Shards are compressed
independently (global pruning rules and prepared codes come in through the plan), so they
can be produced in parallel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..format.container import RawTensor, XspWriter
from ..format.torchconv import raw_from_torch, torch_dtype_name
from ..tensor.parallel import compress_many
from ..tensor.pipeline import FLOAT_DTYPES, compress_quantized, to_float32
from .planning import CompressPlan
from .readers import Checkpoint, Progress, input_bytes
from .selection import is_embedding
from .stats import entry_bytes, tensor_stats


@dataclass
class ShardResult:
    path: str
    rows: list[dict]  # tensor_stats of the compressed tensors
    tensor_sizes: dict[str, tuple[str, int, int]]  # name -> (category, input bytes, output bytes)
    bytes: int


def _stored(t, keep_dtype: str | None) -> RawTensor:
    import torch

    if keep_dtype and torch_dtype_name(t) in FLOAT_DTYPES and torch_dtype_name(t) != keep_dtype:
        t = t.to(getattr(torch, keep_dtype))
    code, shape, data = raw_from_torch(t)
    return RawTensor(code, shape, data)


def compress_shard(ck: Checkpoint, names: Sequence[str], out: str, plan: CompressPlan,
                   progress: Progress | None = None, on_tensor: Callable[[str, int], None] | None = None, *, force: bool = True) -> ShardResult:
    """Compress the tensors `names` of `ck` into one .xsp file `out` (written atomically).

    The unit of work of a folder: one input shard gives one output shard, independently of
    the others (global pruning rules and prepared codes come in through `plan`). Memory
    holds one input tensor at a time: each tensor's coded parts go to the writer's spool
    as soon as they are made (container.XspWriter), so the peak does not grow with the
    number of tensors in the shard. An output that is one of the checkpoint's files is
    refused; force=False also refuses an existing output or a symlink (format/output.py).
    """
    rows, sizes_in, raw_names = [], {}, set()
    # tensors to prune and quantize here run on plan.threads threads (same bytes for any
    # count; a worker of a sharded job uses one), coming back in file order; each tensor's
    # coded parts go to the writer's spool as soon as it is done
    fresh = [n for n in names if n in plan.selected and n not in plan.prepared]
    results = compress_many(((n, (lambda n=n: ck.get(n)), _plan_keep(plan, n)) for n in fresh),
                            plan.config, threads=plan.threads)
    with XspWriter(out, inputs=ck.files, force=force) as writer:
        for i, name in enumerate(names):
            if progress:
                progress(i, len(names), name)
            if name in plan.prepared and name in plan.selected:  # (excluded ones are stored as read)
                p = plan.prepared[name]
                t0 = time.perf_counter()
                ct = compress_quantized(p.keep, p.quant, p.dtype, plan.config)
                seconds = time.perf_counter() - t0
                sizes_in[name] = p.input_bytes if p.input_bytes is not None else input_bytes(ck, name)
            elif name in plan.selected:
                _, ct, seconds = next(results)
                sizes_in[name] = input_bytes(ck, name)
            else:
                writer.add_raw(name, _stored(ck.get(name), plan.keep_dtype))
                raw_names.add(name)
                sizes_in[name] = input_bytes(ck, name)
                if on_tensor:
                    on_tensor(name, 0)
                continue
            writer.add_compressed(name, ct)
            row = tensor_stats(name, ct)
            row["seconds"] = seconds
            rows.append(row)
            del ct
            if on_tensor:
                on_tensor(name, row["weights"])
        info = dict(plan.info)
        info["order"] = list(names)
        size = writer.finish(plan.config, info, extra=dict(plan.extra) or None)
    written = entry_bytes(out)
    sizes = {n: ("stored as they are" if n in raw_names else
                 "compressed embeddings" if is_embedding(n) else "compressed weights",
                 sizes_in[n], written.get(n, 0)) for n in names}
    return ShardResult(out, rows, sizes, size)


def _plan_keep(plan: CompressPlan, name: str):
    """The keep mask the plan fixes for a tensor (global pruning), or None: prune it alone.
    For a global threshold's rule, a function of the loaded tensor (compress_many calls it)."""
    if plan.masks is not None:
        return plan.masks[name]
    if plan.rules is not None:
        rule = plan.rules[name]
        return lambda t: rule.keep(to_float32(t)[0], name)
    return None
