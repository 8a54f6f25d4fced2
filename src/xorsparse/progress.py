"""A one-line progress bar on a terminal (stderr), silent otherwise; shared by the CLI and
the long-running library calls (calibration, recovery)."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total, text); draws `label [####....] done/total seconds text`."""

    def __init__(self, label: str, enabled: bool | None = None):
        self.label = label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def __call__(self, i: int, n: int, name: str) -> None:
        if not self.enabled:
            return
        width = 30
        done = int(width * i / n) if n else width
        el = time.perf_counter() - self.t0
        line = f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {i}/{n} {el:5.1f}s {name[:50]:<50}"
        sys.stderr.write(line)
        if i >= n:
            sys.stderr.write("\n")
        sys.stderr.flush()
