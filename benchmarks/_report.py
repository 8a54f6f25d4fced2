"""Plain-text tables and JSON output shared by the benchmarks."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Sequence


def subprocess_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `python -m benchmarks.X` in a child process: the benchmarks live outside
    the installed package, so the child needs the repository root on its path whatever its cwd."""
    env = dict(os.environ if env is None else env)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def best_time(fn: Callable[[], Any], repeat: int = 5, min_total: float = 0.2) -> float:
    """Fastest of several runs (after one warm-up): the least disturbed by other load."""
    fn()
    best = float("inf")
    spent = 0.0
    runs = 0
    while runs < repeat or spent < min_total:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best = min(best, dt)
        spent += dt
        runs += 1
        if runs >= 50:
            break
    return best


def best_cpu_time(fn: Callable[[], Any], repeat: int = 5, min_total: float = 0.05) -> float:
    """Fastest run in CPU seconds of this process (after one warm-up). On a shared machine
    under load, wall time mostly measures waiting; with one thread (NUMBA_NUM_THREADS=1, and
    single-threaded compressors) CPU time measures the work."""
    fn()
    best = float("inf")
    spent = 0.0
    runs = 0
    while runs < repeat or spent < min_total:
        t = time.process_time()
        fn()
        dt = time.process_time() - t
        if dt > 0:
            best = min(best, dt)
        spent += dt
        runs += 1
        if runs >= 50:
            break
    return best if best < float("inf") else 1e-9


def clock(name: str) -> Callable[..., float]:
    """best_time (wall) or best_cpu_time (cpu), for the benchmarks' --clock option."""
    return best_cpu_time if name == "cpu" else best_time


def print_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    for n, line in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """The same table as print_table, as GitHub Markdown."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join("" if r.get(k) is None else format(r[k], f) for k, _, f in columns) + " |")
    return "\n".join(lines) + "\n"


def write_text(path: str, text: str) -> None:
    """Atomic write of a text file (format/output.py: a reader never sees half a file)."""
    from xorsparse.format.output import write_bytes

    write_bytes(path, text.encode())


def write_json(path: str, rows: Any) -> None:
    """Atomic write: a reader never sees half a file."""
    write_text(path, json.dumps(rows, indent=1) + "\n")
