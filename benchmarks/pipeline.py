"""The edge pipeline on a real clip: per-stage ms, fps, capture-to-render latency, memory, fps vs faces.

Three measurements, one record (``pipeline.json``):

* ``runs``: the clip decoded from its file, frame after frame as fast as possible, through the
  whole ``mlanet-video`` pipeline (MediaPipe detection/tracking, crops, inference, reconstruction
  with temporal filtering) with and without the GL render + H.264 encode of the overlay. Per-stage
  p50/p95 (warm-up frames excluded), fps from wall time and from the p50 frame time.
* ``live``: the same clip replayed in real time as a live source (``LiveReplaySource`` at the
  clip's fps): capture-to-render latency (capture timestamp to the end of rendering) and the
  number of stale frames dropped.
* ``faces``: fps against the number of faces — frames built by tiling the clip's frames into a
  ``k``-face grid at the clip's resolution (``k`` = 1, 2, 4, 8), tracked with ``max_faces = k``.

Memory: resident set size sampled every frame (``/proc/self/statm``) and the process peak
(``ru_maxrss``); on CUDA also ``torch.cuda.max_memory_allocated``. The network is the one a user runs
(:mod:`mlanet.benchmarks.network`: the shipped ``mlanet_mobile`` weights on ONNX Runtime CPU by default,
``--weights`` / ``--untrained``; ``--backend torch`` for PyTorch): the faces it fits set the tracker's
boxes and the overlay's area, so its weights matter to the runtime's speed.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.errors import MLANetError
from mlanet.edge.loading import positive_int
from mlanet.edge.timing import peak_rss_mib, rss_mib  # noqa: F401 - re-exported for the soak
from mlanet.benchmarks.network import add_network_arguments, check_network_arguments, open_network
from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip

log = logging.getLogger(__name__)


def gpu_peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


#: Clips of ``mlanet bench pipeline`` by default: 1280x720 single face, 640x360 several faces with cuts.
DEFAULT_CLIPS = ("obama_720p.mp4", "hamilton_360p_multiface.mp4")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", type=Path, action="append", default=None,
                   help="video file; repeat for several (default: the shared obama_720p.mp4 and "
                   "hamilton_360p_multiface.mp4). fps vs faces and the live run use the first")
    p.add_argument("--face-model", default=None, help="face-model file (default: the asset home's)")
    add_network_arguments(p)
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime")
    p.add_argument("--max-frames", type=positive_int, default=None, help="frames per run (default: the whole clip)")
    p.add_argument("--faces", default="1,2,4,8", help="face counts for fps vs faces (comma-separated; '' to skip)")
    p.add_argument("--no-live", action="store_true", help="skip the real-time replay (latency) run")
    p.add_argument("--quick", action="store_true", help="30 frames per run, faces 1,4")


def _pipeline(backend: Any, face_model: Any, render: bool, max_faces: int = 4) -> Any:
    from dataclasses import replace

    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.face_detection import MediaPipeFaceDetector
    from mlanet.edge.tracking import TrackerCfg

    cfg = PipelineCfg(render_mode="shaded" if render else None, tracker=replace(TrackerCfg(), max_faces=max_faces),
                      meshes=False)
    return FacePipeline(backend, face_model, cfg, detector=MediaPipeFaceDetector())


def run_file(backend: Any, face_model: Any, source: Any, *, render: bool, max_frames: int | None, tmp: Path,
             max_faces: int = 4) -> dict[str, Any]:
    """One pass over ``source`` as fast as possible; with ``render`` also H.264-encodes the overlay."""
    from mlanet.edge.writers.video import H264VideoWriter

    pipeline = _pipeline(backend, face_model, render, max_faces)
    writer = None
    rss: list[float] = []

    def sink(result: Any) -> None:
        nonlocal writer
        if result.rendered is not None:
            if writer is None:
                fps = float(getattr(source, "fps", None) or 25.0)
                writer = H264VideoWriter(tmp / "overlay.mp4", fps, result.frame.width, result.frame.height)
            writer.write(result.rendered)
        rss.append(rss_mib())

    t0 = time.perf_counter()
    with source:
        n = pipeline.run(source, sink, max_frames=max_frames)
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t0
    stats = pipeline.stats.summary()
    faces = pipeline.face_counts
    pipeline.close()
    return {
        "render_and_encode": render,
        "frames": n,
        "wall_s": round(wall, 3),
        "fps_wall": round(n / wall, 2) if wall > 0 else None,
        "fps_p50": stats["fps_from_p50_total"],
        "faces_per_frame_mean": round(float(np.mean(faces)), 3) if faces else 0.0,
        "frames_with_face": int(sum(1 for f in faces if f)),
        "stages": stats["stages"],
        "total": stats["total"],
        "rss_mib_max_during_run": round(max(rss), 1) if rss else None,
    }


def run_live(backend: Any, face_model: Any, clip: Path, max_frames: int | None) -> dict[str, Any]:
    """Real-time replay of ``clip``: capture-to-render latency and dropped frames."""
    from mlanet.edge.frames import LiveReplaySource, VideoFileSource

    pipeline = _pipeline(backend, face_model, render=True)
    source = LiveReplaySource(VideoFileSource(clip))
    pipeline.warmup(*(source.size or (None, None)))
    with source:
        n = pipeline.run(source, None, max_frames=max_frames)
    stats = pipeline.stats.summary()
    pipeline.close()
    return {
        "replay_fps": source.fps,
        "frames_processed": n,
        "frames_dropped": int(source.dropped),
        "capture_to_render_ms": stats.get("latency_ms"),
        "note": "latency = frame capture (emitted by the replay thread) to the end of the GL render",
    }


def tiled_frames(clip: Path, k: int, max_frames: int | None) -> list[np.ndarray]:
    """The clip's frames tiled ``k`` times into a grid, at the clip's resolution: (H, W, 3) uint8 each."""
    import cv2

    from mlanet.edge.frames import VideoFileSource

    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    out = []
    with VideoFileSource(clip) as src:
        for frame in src:
            if max_frames is not None and len(out) >= max_frames:
                break
            H, W = frame.image.shape[:2]
            th, tw = H // rows, W // cols
            tile = cv2.resize(frame.image, (tw, th), interpolation=cv2.INTER_AREA)
            canvas = np.zeros_like(frame.image)
            for i in range(k):
                r, c = divmod(i, cols)
                canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = tile
            out.append(canvas)
    return out


def run(args: argparse.Namespace) -> Path:
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.frames import ArraySource, VideoFileSource

    clips = [Path(c) for c in args.clip] if args.clip else [shared_clip(n) for n in DEFAULT_CLIPS]
    for clip in clips:
        if not clip.is_file():
            raise MLANetError(f"{clip}: clip not found (pass --clip FILE)")
    max_frames = 30 if args.quick and args.max_frames is None else args.max_frames
    face_counts = [1, 4] if args.quick else [int(x) for x in str(args.faces).split(",") if x.strip()]
    check_network_arguments(args)
    face_model = MorphableModel.load(args.face_model)
    rss_start = rss_mib()
    results: dict[str, Any] = {
        "backend": f"{args.backend}-cpu",
        "warmup_frames_excluded": 2,
        "clips": [],
        "faces": [],
    }
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        backend, results["weights"] = open_network(args, face_model, tmp, args.backend)
        results["model"] = backend.metadata.model_name
        backend.warmup()
        results["thread_plan"] = backend.metadata.runtime["thread_plan"]
        for ci, clip in enumerate(clips):
            entry: dict[str, Any] = {"clip": clip.name, "runs": []}
            for render in (True, False):
                src = VideoFileSource(clip)
                entry["resolution"] = f"{src.size[0]}x{src.size[1]}"
                r = run_file(backend, face_model, src, render=render, max_frames=max_frames, tmp=tmp)
                entry["runs"].append(r)
                log.info("%s render=%s: %.1f fps wall, p50 frame %s ms", clip.name, render, r["fps_wall"],
                         r["total"]["p50_ms"])
            if ci == 0 and not args.no_live:
                entry["live"] = run_live(backend, face_model, clip, max_frames)
            results["clips"].append(entry)
        for k in face_counts:
            frames = tiled_frames(clips[0], k, max_frames)
            src = ArraySource(frames, fps=25.0, name=f"{clips[0].stem}_x{k}")
            r = run_file(backend, face_model, src, render=False, max_frames=None, tmp=tmp, max_faces=k)
            results["faces"].append({"faces": k, "clip": clips[0].name,
                                     **{key: r[key] for key in ("frames", "fps_wall", "fps_p50",
                                                                "faces_per_frame_mean", "stages", "total")}})
            log.info("%d faces: %.1f fps (%.2f found per frame)", k, r["fps_wall"], r["faces_per_frame_mean"])
        backend.close()
    results["memory"] = {
        "rss_mib_at_start": round(rss_start, 1),
        "rss_mib_at_end": round(rss_mib(), 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "gpu_peak_mib": gpu_peak_mib(),
        "note": "peak_rss_mib is the whole process (includes importing torch, MediaPipe, ONNX Runtime and GL)",
    }
    return write_record("pipeline", results, out_dir=record_dir(args.out))
