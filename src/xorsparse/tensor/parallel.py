"""Compress many tensors at once on a pool of threads.

The kernels release the GIL, so threads compress different tensors on different cores.
The result does not depend on the thread count: every tensor is compressed on its own
(the rate choice is a pure function of the tensor, see codec/rates.py), and results come
back in input order.
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

from .pipeline import CompressConfig, CompressedTensor, compress_tensor


def default_threads() -> int:
    """One thread per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _one(name: str, weight: Any, keep: Any, config: CompressConfig, single: bool) -> tuple[CompressedTensor, float]:
    if single:
        import numba

        numba.set_num_threads(1)  # per thread: the pool is the parallelism, no nested teams
    t0 = time.perf_counter()
    w = weight() if callable(weight) else weight
    if callable(keep):  # a mask made from the tensor itself (a global threshold's rule)
        keep = keep(w)
    return compress_tensor(w, config, keep=keep, name=name), time.perf_counter() - t0


def compress_many(jobs: Iterable[tuple[str, Any, Any]], config: CompressConfig, *, threads: int | None = None,
                  ) -> Iterator[tuple[str, CompressedTensor, float]]:
    """Yield (name, compressed tensor, seconds) for each (name, weight, keep mask or None), in order.
    `keep` may also be a function of the loaded weight returning the mask.

    `weight` may be a callable that loads the tensor, so that at most about 2 x threads
    tensors are in memory at once. threads=1 compresses on the calling thread with the
    kernels' own parallelism; more threads compress that many tensors at once, one core each.
    """
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if n == 1:
        for name, weight, keep in jobs:
            ct, secs = _one(name, weight, keep, config, False)
            yield name, ct, secs
        return
    with ThreadPoolExecutor(n, thread_name_prefix="xorsparse-compress") as pool:
        pending: deque = deque()
        it = iter(jobs)
        done = False
        while True:
            while not done and len(pending) < 2 * n:
                try:
                    name, weight, keep = next(it)
                except StopIteration:
                    done = True
                    break
                pending.append((name, pool.submit(_one, name, weight, keep, config, True)))
            if not pending:
                return
            name, fut = pending.popleft()
            ct, secs = fut.result()
            yield name, ct, secs
