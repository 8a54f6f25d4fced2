"""The one base class of every error xorsparse raises on purpose.

`except xorsparse.XorsparseError` catches them all: bad input files, outputs refused, jobs
that cannot go on. It is a `ValueError`, as each of them was before it existed. Lowest floor:
it imports nothing, so every module can derive from it.
"""

from __future__ import annotations


class XorsparseError(ValueError):
    """An error xorsparse raises on purpose; the message is one line naming what was wrong."""


__all__ = ["XorsparseError"]
