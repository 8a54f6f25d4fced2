"""Progress on stderr, shared by the CLI and the long-running library calls (compression,
calibration, recovery)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total, text). On a terminal: a one-line bar
    `label [####....] done/total seconds text`; elsewhere (logs, CI, pipes) a line at every
    tenth of the work, so long runs are never silent. `unit` names what is counted."""

    def __init__(self, label: str, enabled: bool | None = None, tty: bool | None = None, unit: str = "tensors"):
        self.label = label
        self.enabled = True if enabled is None else enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.unit = unit
        self.t0 = time.perf_counter()
        self._tenth = -1

    def __call__(self, i: int, n: int, name: str) -> None:
        if not self.enabled:
            return
        if not self.tty:
            tenth = 10 * i // n if n else 10
            if tenth > self._tenth:
                self._tenth = tenth
                el = time.perf_counter() - self.t0
                what = f" {name}" if name and i < n else " done"
                sys.stderr.write(f"{self.label}: {i}/{n} {self.unit} ({100 * i // max(n, 1)}%) {el:.1f}s{what}\n")
                sys.stderr.flush()
            return
        width = 30
        done = int(width * i / n) if n else width
        el = time.perf_counter() - self.t0
        line = f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {i}/{n} {el:5.1f}s {name[:50]:<50}"
        sys.stderr.write(line)
        if i >= n:
            sys.stderr.write("\n")
        sys.stderr.flush()
