"""The two small option objects every compress job passes down instead of a dozen loose
parameters: which tensors are compressed (`SelectOptions`), and how the job runs and reports
(`RunOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .readers import Progress


@dataclass(frozen=True)
class SelectOptions:
    """Which tensors are compressed, and the dtype of those stored as they are.

    include narrows the default choice (weight matrices and embedding tables) and never widens
    it; force_include also takes 1-D tensors, norms and biases; embeddings=False leaves the
    embedding tables as they are; keep_dtype: the float dtype of the tensors stored as they
    are (None: as in the input)."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    force_include: Sequence[str] = ()
    embeddings: bool = True
    keep_dtype: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a job runs and reports: `executor` runs the shards of a folder (None: in this
    process; xorsparse.jobs.executors), `on_event` receives progress events (JobProgress),
    `progress` the per-tensor callback (done, total, name), `force` replaces outputs in the way
    (otherwise refused)."""

    executor: Any = None
    on_event: Callable[[dict], None] | None = None
    progress: Progress | None = None
    force: bool = False


__all__ = ["RunOptions", "SelectOptions"]
