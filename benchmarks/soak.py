"""Memory and endurance: loop a clip through the pipeline for N minutes and record RSS over time.

The whole per-frame path runs (MediaPipe tracking, crops, inference, reconstruction, temporal
filter, GL render of the overlay); the clip restarts when it ends, with frame indices and
timestamps continuing so the tracker and filters see one long stream. Every ``--sample-s``
seconds the resident set size (and on CUDA the allocated GPU memory) is sampled.

Targets (recorded, not asserted): peak RSS of the CPU pipeline <= 2 GB, and after warm-up
(``--warmup-min``) RSS grows by < 5 % until the end (growth = median of the last 10 % of the
samples against the median of the first minute after warm-up, or the first 10 % if shorter).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mlanet.errors import MLANetError
from mlanet.edge.timing import peak_rss_mib, rss_mib
from mlanet.benchmarks.network import add_network_arguments, open_network
from mlanet.benchmarks.pipeline import gpu_peak_mib
from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip

log = logging.getLogger(__name__)

#: Targets of the issue: CPU pipeline peak RSS (MiB) and RSS growth after warm-up (%).
TARGET_PEAK_RSS_MIB = 2048.0
TARGET_GROWTH_PCT = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", type=Path, default=None, help="video file (default: the shared obama_720p.mp4)")
    p.add_argument("--face-model", default=None, help="face-model file (default: the asset home's)")
    add_network_arguments(p)
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument("--minutes", type=float, default=10.0, help="duration (default 10)")
    p.add_argument("--warmup-min", type=float, default=1.0, help="minutes excluded from the growth figure")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between memory samples")
    p.add_argument("--quick", action="store_true", help="1 minute, 10 s warm-up, 1 s samples")


def looped_frames(clip: Path) -> Iterator[Any]:
    """Frames of ``clip`` forever, indices and timestamps continuing across restarts."""
    from mlanet.edge.frames import VideoFileSource
    from mlanet.edge.types import Frame

    offset_i, offset_ns = 0, 0
    while True:
        n, last_ns, period_ns = 0, 0, 40_000_000
        with VideoFileSource(clip) as src:
            if src.fps:
                period_ns = int(1e9 / src.fps)
            for f in src:
                n, last_ns = n + 1, f.t_capture_ns
                yield Frame(f.image, f.index + offset_i, f.t_capture_ns + offset_ns, f.source)
        if n == 0:
            raise MLANetError(f"{clip}: no frames")
        offset_i += n
        offset_ns += last_ns + period_ns


def growth_pct(samples: list[tuple[float, float]], warmup_s: float) -> float | None:
    """RSS growth after warm-up in % (see module docstring); None with too few samples."""
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 4:
        return None
    k = max(1, len(after) // 10)
    base_window = [r for t, r in after if t < after[0][0] + 60.0][:max(k, 1)] or [after[0][1]]
    base = float(np.median(base_window))
    end = float(np.median([r for _, r in after[-k:]]))
    return round(100.0 * (end - base) / base, 3)


def run(args: argparse.Namespace) -> Path:
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.face_detection import MediaPipeFaceDetector

    minutes, warmup_min, sample_s = args.minutes, args.warmup_min, args.sample_s
    if args.quick:
        minutes, warmup_min, sample_s = 1.0, 10.0 / 60.0, 1.0
    clip = Path(args.clip) if args.clip else shared_clip()
    if not clip.is_file():
        raise MLANetError(f"{clip}: clip not found (pass --clip FILE)")
    face_model = MorphableModel.load(args.face_model)
    samples: list[tuple[float, float]] = []
    gpu_samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        backend, weights = open_network(args, face_model, Path(tmp), args.backend)
        pipeline = FacePipeline(backend, face_model, PipelineCfg(render_mode="shaded"), detector=MediaPipeFaceDetector())
        t0 = time.perf_counter()
        next_sample = 0.0
        frames = 0
        for frame in looped_frames(clip):
            pipeline.process(frame)
            frames += 1
            t = time.perf_counter() - t0
            if t >= next_sample:
                samples.append((round(t, 2), round(rss_mib(), 1)))
                g = gpu_peak_mib()
                if g is not None:
                    gpu_samples.append(round(g, 1))
                next_sample += sample_s
                if len(samples) % 12 == 0:
                    log.info("soak %.0f s: %d frames, RSS %.0f MiB", t, frames, samples[-1][1])
            if t >= minutes * 60.0:
                break
        pipeline.close()
        backend.close()
    duration = time.perf_counter() - t0
    peak = peak_rss_mib(rss for _, rss in samples)
    growth = growth_pct(samples, warmup_min * 60.0)
    results = {
        "clip": clip.name,
        "model": backend.metadata.model_name,
        "weights": weights,
        "backend": f"{args.backend}-cpu",
        "minutes": round(duration / 60.0, 2),
        "frames": frames,
        "fps": round(frames / duration, 2),
        "warmup_min": warmup_min,
        "sample_s": sample_s,
        "rss_mib": samples,
        "gpu_mib": gpu_samples or None,
        "peak_rss_mib": round(peak, 1),
        "rss_growth_after_warmup_pct": growth,
        "targets": {
            "peak_rss_mib_max": TARGET_PEAK_RSS_MIB,
            "peak_rss_ok": peak <= TARGET_PEAK_RSS_MIB,
            "growth_pct_max": TARGET_GROWTH_PCT,
            "growth_ok": None if growth is None else growth < TARGET_GROWTH_PCT,
            "growth_over_minutes": round(duration / 60.0 - warmup_min, 2),
        },
    }
    log.info("soak: %.1f min, %d frames, peak RSS %.0f MiB, growth %s %%", duration / 60, frames, peak, growth)
    return write_record("soak", results, out_dir=record_dir(args.out))
