"""Per-stage wall-clock timing of the runtime, with p50/p95 summaries.

Stages (in pipeline order): ``decode, detect_track, preprocess, infer, reconstruct, mesh, render,
encode`` (``reconstruct``: pose into the frame camera, temporal filter, 2D landmarks; ``mesh``: the
full vertices and albedo, only when something draws or writes them). On the CPU a stage's time is
``time.perf_counter`` around it. A GPU backend that
launches work asynchronously passes a ``sync`` callable (e.g. ``torch.cuda.synchronize``) so
the time is attributed to the stage that queued it; device-side CUDA-event timing belongs to
the GPU backends and reports through the same :meth:`StageStats.add`.
"""

from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import numpy as np

#: Pipeline stages in order; every run's statistics carry all of them (absent ones with n = 0).
STAGES: tuple[str, ...] = ("decode", "detect_track", "preprocess", "infer", "reconstruct", "mesh", "render",
                          "encode")


@contextmanager
def timed(into: dict[str, float], name: str, sync: Callable[[], None] | None = None) -> Iterator[None]:
    """Add the milliseconds spent in the ``with`` block to ``into[name]``."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if sync is not None:
            sync()
        into[name] = into.get(name, 0.0) + 1000.0 * (time.perf_counter() - t0)


def _summary(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}  # type: ignore[dict-item]
    a = np.asarray(values, dtype=np.float64)
    return {
        "n": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p95_ms": round(float(np.percentile(a, 95)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "max_ms": round(float(a.max()), 3),
    }


class StageStats:
    """Collects per-frame stage milliseconds; :meth:`summary` gives p50/p95/mean/max per stage.

    ``warmup_frames`` first frames are recorded but excluded from the summary (model and GL
    start-up would otherwise dominate p95 of short clips).

    Memory: one float32 row per frame in a NumPy table (about 4 bytes per stage and series, not a
    dict per frame: an hour of live video used to add ~45 MiB). ``window`` (frames) keeps only the
    newest rows, so a live session of any length holds a fixed amount and :meth:`summary` costs the
    same after an hour as after a minute; None keeps every frame (a file's run: whole-run statistics).
    """

    _CHUNK = 4096

    def __init__(self, warmup_frames: int = 0, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 frames or None, got {window}")
        self.warmup_frames = int(warmup_frames)
        self.window = window
        self._cols: dict[str, int] = {}  # stage name -> column; extra series as ("extra", name)
        self._extra_cols: dict[str, int] = {}
        self._width = 16
        self._table = np.full((window if window is not None else self._CHUNK, self._width), np.nan, np.float32)
        self._n = 0  # frames added so far

    def _col(self, names: dict[str, int], name: str) -> int:
        col = names.get(name)
        if col is None:
            col = names[name] = len(self._cols) + len(self._extra_cols)
            if col >= self._width:  # widen (rare: a new stage or series name)
                extra = np.full((self._table.shape[0], self._width), np.nan, np.float32)
                self._table = np.concatenate([self._table, extra], axis=1)
                self._width *= 2
        return col

    def add(self, stage_ms: dict[str, float], **extra: float) -> None:
        """Record one frame's stage times (and extra per-frame series such as ``latency_ms``)."""
        if self.window is not None:
            row = self._n % self.window
        else:
            row = self._n
            if row >= self._table.shape[0]:  # grow by chunks
                more = np.full((self._CHUNK, self._table.shape[1]), np.nan, np.float32)
                self._table = np.concatenate([self._table, more])
        values = self._table[row]
        values[:] = np.nan
        for k, v in stage_ms.items():
            values[self._col(self._cols, k)] = v
        for k, v in extra.items():
            values[self._col(self._extra_cols, k)] = v
        self._n += 1

    @property
    def n_frames(self) -> int:
        """Frames recorded so far (all of them, also those the window no longer holds)."""
        return self._n

    def _used(self) -> np.ndarray:
        """Rows of the frames after warm-up that the table still holds, oldest first."""
        first = max(self.warmup_frames, 0 if self.window is None else self._n - self.window)
        if first >= self._n:
            return self._table[:0]
        if self.window is None:
            return self._table[first:self._n]
        idx = np.arange(first, self._n) % self.window
        return self._table[idx]

    def stages(self) -> dict[str, dict[str, float | int]]:
        """Per stage (the :data:`STAGES` first, then any other in name order): ``n`` frames and
        ``p50_ms`` / ``p95_ms`` / ``mean_ms`` / ``max_ms`` (None when ``n`` is 0), after warm-up."""
        used = self._used()
        stages = {}
        for s in (*STAGES, *sorted(set(self._cols) - set(STAGES))):
            col = self._cols.get(s)
            stages[s] = _summary([] if col is None else used[:, col][~np.isnan(used[:, col])].tolist())
        return stages

    def summary(self) -> dict[str, object]:
        used = self._used()
        stages = self.stages()
        stage_cols = sorted(self._cols.values())
        block = used[:, stage_cols].astype(np.float64) if stage_cols else np.zeros((len(used), 0))
        present = ~np.isnan(block).all(axis=1) if stage_cols else np.zeros(len(used), bool)
        totals = np.nansum(block, axis=1)[present].tolist() if stage_cols else []
        out: dict[str, object] = {
            "frames": self._n,
            "warmup_frames_excluded": min(self.warmup_frames, self._n),
            "stages": stages,
            "total": _summary(totals),
            "fps_from_p50_total": round(1000.0 / np.percentile(totals, 50), 2) if totals else None,
        }
        if self.window is not None:
            out["window_frames"] = self.window
            out["summarised_frames"] = int(len(used))
        for k, col in self._extra_cols.items():
            v = used[:, col]
            out[k] = _summary(v[~np.isnan(v)].tolist())
        return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc/self/statm``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")


def peak_rss_mib(observed: Iterable[float] = ()) -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux), and never
    below the current :func:`rss_mib` nor any earlier ``observed`` reading of it (the kernel syncs its
    per-CPU RSS counters lazily, so a sampled ``/proc`` reading can exceed ``ru_maxrss`` by a fraction
    of a MiB; a peak below a reported sample would be a contradiction in the same record)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    readings = [x for x in (rss_mib(), *observed) if x == x]  # NaN (off Linux) is no reading
    return max([peak, *readings])
