"""Executors: where the independent work items of a job run.

A job (compress, verify or decompress a sharded checkpoint, or a pass of the global
pruning threshold) is a list of independent items and one plain function of the io layer
that does one item (`fn(item, report) -> result`). An executor runs them and yields
`(index, result)` as items finish; `report(event)` lets an item send progress (a small
dict) back to the driver, which hands it to `on_event`.

- `LocalExecutor(workers)`: a process pool on this machine (`workers=1`: in this process).
- `RayExecutor(address)`: Ray tasks, on a cluster (`ray.init(address)`) or on a local Ray
  started for the job. Ray is an optional dependency (`pip install 'xorsparse[ray]'`).

Every worker runs single-threaded (numba, torch and OpenMP set to one thread): the
parallelism is the items. Results do not depend on the executor: an item's output is a
function of the item alone, so the bytes written are the same with any executor and any
number of workers.
"""

from __future__ import annotations

import os
import queue
import resource
import sys
import threading
import time
from typing import Any, Callable, Iterator, Sequence

from ..errors import XorsparseError

Event = dict
Report = Callable[[Event], None]
ItemFn = Callable[[Any, "Report | None"], Any]

SINGLE_THREAD_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "OPENBLAS_NUM_THREADS": "1"}


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def single_thread() -> None:
    """Run numerical libraries on one thread in this worker process."""
    for k, v in SINGLE_THREAD_ENV.items():
        os.environ[k] = v
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):
        pass
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class ExecutorError(XorsparseError, RuntimeError):
    """An executor that cannot start (Ray missing, cluster unreachable)."""


class Executor:
    """Runs `fn(item, report)` for each item; yields (index, result) in completion order."""

    name = "executor"
    workers = 1
    in_process = False  # True: items run in the calling process (LocalExecutor(1))

    def map(self, fn: ItemFn, items: Sequence[Any], on_event: Callable[[Event], None] | None = None
            ) -> Iterator[tuple[int, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        return self.name


# ---------------------------------------------------------------------------------------
# Local process pool


_events: Any = None  # the progress queue of a pool worker
_driver_pid: int | None = None


def _init_worker(events, driver_pid: int) -> None:
    global _events, _driver_pid
    _events, _driver_pid = events, driver_pid
    single_thread()


def _worker_report(event: Event) -> None:
    if _driver_pid is not None and os.getppid() != _driver_pid:
        os._exit(1)  # the driver is gone (killed): stop instead of working for nobody
    if _events is not None:
        _events.put(event)


def _run_in_worker(fn: ItemFn, item: Any) -> Any:
    return fn(item, _worker_report)


class LocalExecutor(Executor):
    """A pool of `workers` processes on this machine (started with 'spawn': clean
    interpreters, nothing inherited but the arguments), kept for every map of the job (the
    global threshold's passes, then the shards) and stopped by close(). `workers=1` runs
    items in this process, one after the other."""

    def __init__(self, workers: int | None = None):
        self.workers = default_workers() if workers is None else int(workers)
        if self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {workers}")
        self.name = "in-process" if self.workers == 1 else f"{self.workers} local worker processes"
        self.in_process = self.workers == 1
        self._pool = None
        self._events = None

    def map(self, fn, items, on_event=None):
        items = list(items)
        if self.workers == 1 or len(items) <= 1 and self._pool is None:
            for i, item in enumerate(items):
                yield i, fn(item, on_event)
            return
        yield from self._pooled(fn, items, on_event)

    def _start(self):
        import concurrent.futures as cf
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._events = ctx.Queue()
        # workers (spawned as needed) inherit "one thread" before they import anything
        self._saved_env = {k: os.environ.get(k) for k in SINGLE_THREAD_ENV}
        os.environ.update(SINGLE_THREAD_ENV)
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                            initargs=(self._events, os.getpid()))

    def _pooled(self, fn, items, on_event):
        import concurrent.futures as cf

        if self._pool is None:
            self._start()
        futures = {self._pool.submit(_run_in_worker, fn, item): i for i, item in enumerate(items)}
        pending = set(futures)
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                _drain(self._events, on_event)
                for f in done:
                    yield futures[f], f.result()
            _drain(self._events, on_event)
        except BaseException:
            for f in futures:
                f.cancel()
            self._stop(kill=True)
            raise

    def _stop(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            pool.shutdown(wait=False, cancel_futures=True)
            _kill_pool(pool)
        pool.shutdown(wait=True)
        if self._events is not None:
            self._events.close()
            self._events = None
        for k, v in getattr(self, "_saved_env", {}).items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved_env = {}

    def close(self) -> None:
        self._stop()


def _drain(events, on_event) -> None:
    while True:
        try:
            ev = events.get_nowait()
        except queue.Empty:
            return
        except (OSError, ValueError, EOFError):
            return
        if on_event:
            on_event(ev)


def _kill_pool(pool) -> None:
    """Stop workers still busy with items nobody waits for (after an error or Ctrl-C)."""
    procs = getattr(pool, "_processes", None) or {}
    for p in list(procs.values()):
        try:
            p.terminate()
        except (OSError, AttributeError):
            pass


# ---------------------------------------------------------------------------------------
# Ray


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--ray needs Ray: pip install 'xorsparse[ray]' (or pip install ray)") from None
    return ray


def _ray_item(fn: ItemFn, item: Any, events) -> Any:
    single_thread()

    def report(event: Event) -> None:
        if events is not None:
            try:
                events.put_nowait(event)
            except Exception:  # progress is best effort: never fail an item for it
                pass
    return fn(item, report)


class RayExecutor(Executor):
    """Ray tasks, one CPU each. `address`: a running cluster ("auto", "ray://host:10001",
    "host:6379"); None or "": a local Ray started for this job with `workers` CPUs (default:
    this machine's cores). On a cluster every node must see the input and output paths
    (a shared filesystem) and have xorsparse installed."""

    def __init__(self, address: str | None = None, workers: int | None = None):
        ray = _import_ray()
        self._ray = ray
        self.address = address or None
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
            if self.address is None:
                kw["num_cpus"] = default_workers() if workers is None else int(workers)
            try:
                ray.init(address=self.address, **kw)
            except Exception as e:  # ray raises ConnectionError, RuntimeError, ...
                raise ExecutorError(f"--ray {self.address or '(local)'}: cannot start or reach Ray "
                                    f"({type(e).__name__}: {e})") from None
            self._started = True
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        where = self.address or "local"
        self.name = f"Ray ({where}, {self.workers} CPUs)"
        self._remote = ray.remote(num_cpus=1, max_retries=2)(_ray_item)

    def map(self, fn, items, on_event=None):
        ray = self._ray
        items = list(items)
        if not items:
            return
        events = None
        if on_event is not None:
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
        refs = {self._remote.remote(fn, item, events): i for i, item in enumerate(items)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.2)
                if events is not None:
                    for ev in events.get_nowait_batch(events.qsize()) if events.qsize() else []:
                        on_event(ev)
                for r in done:
                    yield refs[r], ray.get(r)
            if events is not None and events.qsize():
                for ev in events.get_nowait_batch(events.qsize()):
                    on_event(ev)
        except BaseException:
            for r in pending:
                ray.cancel(r, force=True)
            raise
        finally:
            if events is not None:
                events.shutdown()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(workers: int | None = None, ray: str | None = None) -> Executor:
    """--workers N / --ray [ADDRESS]: `ray` None means no Ray; "" a local Ray."""
    if ray is not None:
        return RayExecutor(ray or None, workers)
    return LocalExecutor(workers)


# ---------------------------------------------------------------------------------------
# Progress across items and tensors


class JobProgress:
    """Progress of a sharded job on stderr: items (shards) and tensors done, weights per
    second, time left. On a terminal one line redrawn in place; elsewhere (logs, CI, pipes)
    a line when a shard finishes and at least every `every` seconds while tensors finish.
    The seconds shown count from the display's creation (make it when the command starts:
    they then include the work before the shards, e.g. a recomputed calibration); the rate
    counts only weights worked on since the plan (shards kept by a resume are not work)."""

    WHAT = {"compress": "to code", "verify": "to decode and check", "decompress": "to decode"}

    def __init__(self, label: str, enabled: bool = True, tty: bool | None = None, every: float = 30.0,
                 stream=None, where: str = ""):
        self.label = label
        self.where = where
        self.items = self.tensors = self.weights = 0  # the job's "plan" event says
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = every
        self.t0 = self.started = time.perf_counter()
        self.items_done = self.tensors_done = self.weights_done = self.reused = 0
        self._weights_worked = 0
        self._last_line = self.t0
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        kind = event.get("kind")
        with self._lock:
            if kind == "plan":
                self.items, self.tensors = int(event.get("items", 0)), int(event.get("tensors", 0))
                self.weights = int(event.get("weights", 0))
                self.t0 = self._last_line = time.perf_counter()
                if self.enabled:
                    on = f" on {self.where}" if self.where else ""
                    what = self.WHAT.get(self.label, "")
                    w = (f", {self.weights / 1e9:.2f} G weights {what}" if self.weights >= 1e9 else
                         f", {self.weights / 1e6:.2f} M weights {what}" if self.weights else "").rstrip()
                    self.stream.write(f"{self.label}: {self.items} shard(s), {self.tensors} tensors{w}{on}\n")
                    self.stream.flush()
            elif kind == "tensor":
                self.tensors_done += 1
                self.weights_done += int(event.get("weights", 0))
                self._weights_worked += int(event.get("weights", 0))
                self._show(event.get("name", ""), force=False)
            elif kind == "item":
                self.items_done += 1
                if event.get("reused"):
                    self.reused += 1
                    self.tensors_done += int(event.get("tensors", 0))
                    self.weights_done += int(event.get("weights", 0))
                self._show(event.get("name", ""), force=True, finished=True)

    def _rate(self) -> float:
        el = time.perf_counter() - self.t0
        return self._weights_worked / el if el > 0 else 0.0

    def _eta(self) -> str:
        rate = self._rate()
        left = self.weights - self.weights_done
        if rate <= 0 or left <= 0:
            return "-"
        s = int(left / rate)
        return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

    def line(self, name: str = "") -> str:
        el = time.perf_counter() - self.started
        reused = f" ({self.reused} reused)" if self.reused else ""
        rate = f"{self._rate() / 1e6:.2f} M weights/s, " if self._weights_worked else ""
        return (f"{self.label}: shards {self.items_done}/{self.items}{reused}, tensors "
                f"{self.tensors_done}/{self.tensors}, {rate}{el:.0f}s, left {self._eta()}"
                + (f"  {name}" if name else ""))

    def _show(self, name: str, force: bool, finished: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            width = 24
            frac = self.weights_done / self.weights if self.weights else 1.0
            bar = "#" * int(width * frac) + "." * (width - int(width * frac))
            self.stream.write(f"\r[{bar}] " + self.line(name[:40]).ljust(110)[:150])
            self.stream.flush()
            return
        if force or now - self._last_line >= self.every:
            self._last_line = now
            what = f"finished {name}" if finished else name
            if finished and self.items and self.items_done >= self.items:
                what += "; done"
            self.stream.write(self.line(what) + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


__all__ = ["Executor", "ExecutorError", "JobProgress", "LocalExecutor", "RayExecutor", "default_workers",
           "make_executor", "peak_rss_bytes", "single_thread"]
