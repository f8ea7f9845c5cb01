"""A dependency-free progress bar for long jobs (training, evaluation, video).

On a terminal it redraws one line (``\\r``); otherwise (CI, log files) it prints a line at most
every ``min_interval_s`` seconds, so logs stay readable. Always writes to stderr.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``Progress(total, desc)``; call :meth:`update` with the number of items done and extra fields."""

    def __init__(self, total: int, desc: str = "", *, stream: TextIO | None = None, min_interval_s: float = 10.0,
                 enabled: bool = True) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval_s = 0.1 if self.tty else min_interval_s
        self.enabled = enabled
        self.start = time.perf_counter()
        self._last_print = 0.0
        self._start_done: int | None = None

    def update(self, done: int, force: bool = False, **fields: float | str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._start_done is None:
            self._start_done, self.start = done, now
        if not force and now - self._last_print < self.min_interval_s and done < self.total:
            return
        self._last_print = now
        elapsed = now - self.start
        rate = (done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * done / self.total)
        bar = "#" * filled + "." * (width - filled)
        extra = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        line = f"{self.desc} [{bar}] {done}/{self.total} {rate:.2f}/s ETA {_fmt(eta)}  {extra}"
        if self.tty:
            self.stream.write("\r" + line[:200].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"
