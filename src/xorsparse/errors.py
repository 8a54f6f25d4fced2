"""The one base class of every error xorsparse raises on purpose.

`except xorsparse.XorsparseError` catches them all: bad input files, outputs refused, jobs
that cannot go on. It is a `ValueError`, as each of them was before it existed. Lowest floor:
it imports nothing, so every module can derive from it.
"""

from __future__ import annotations


class XorsparseError(ValueError):
    """An error xorsparse raises on purpose; the message is one line naming what was wrong."""


def caused_by_memory_error(e: BaseException | None) -> bool:
    """Whether a failed allocation is behind `e`, through its causes and contexts: a compiled
    kernel that could not allocate surfaces as another exception (numba's SystemError) with
    the MemoryError inside, and must still become the clean "out of memory" error."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, MemoryError):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


__all__ = ["XorsparseError", "caused_by_memory_error"]
