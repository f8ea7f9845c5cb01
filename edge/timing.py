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
from typing import Callable, Iterator

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
    """

    def __init__(self, warmup_frames: int = 0) -> None:
        self.warmup_frames = int(warmup_frames)
        self.frames: list[dict[str, float]] = []
        self.extra: dict[str, list[float]] = {}

    def add(self, stage_ms: dict[str, float], **extra: float) -> None:
        """Record one frame's stage times (and extra per-frame series such as ``latency_ms``)."""
        self.frames.append(dict(stage_ms))
        for k, v in extra.items():
            self.extra.setdefault(k, []).append(float(v))

    def summary(self) -> dict[str, object]:
        used = self.frames[self.warmup_frames:]
        stages = {s: _summary([f[s] for f in used if s in f]) for s in STAGES}
        for s in sorted({k for f in used for k in f} - set(STAGES)):
            stages[s] = _summary([f[s] for f in used if s in f])
        totals = [sum(f.values()) for f in used]
        out: dict[str, object] = {
            "frames": len(self.frames),
            "warmup_frames_excluded": min(self.warmup_frames, len(self.frames)),
            "stages": stages,
            "total": _summary(totals),
            "fps_from_p50_total": round(1000.0 / np.percentile(totals, 50), 2) if totals else None,
        }
        for k, v in self.extra.items():
            out[k] = _summary(v[self.warmup_frames:])
        return out


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc/self/statm``; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE / 2**20
    except OSError:
        return float("nan")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
