"""Edge pipeline throughput on real clips: fps and per-stage p50/p95 per resolution.

Runs the full ``mlanet-video`` pipeline (MediaPipe detection/tracking, CPU crops, inference,
reconstruction, temporal filter, ModernGL render on EGL, H.264 encode of the overlay) on the
shared clips: ``hamilton_360p_multiface.mp4`` (640x360, several faces) and ``obama_720p.mp4``
(1280x720, one face). The network is ``mlanet_mobile`` (untrained weights: speed does not depend
on them) exported to ONNX and run on ONNX Runtime CPU. Each configuration is also run without
rendering/encoding, to show what the overlay costs. The first 2 frames of each run are warm-up
and excluded from the stage statistics.

    python benchmarks/bench_pipeline.py --face-model ~/.local/share/mlanet/face_models/ict_face.mlface.npz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import write_record  # noqa: E402

from mlanet.edge.backends import OnnxRuntimeBackend  # noqa: E402
from mlanet.edge.frames import open_source  # noqa: E402
from mlanet.edge.pipeline import FacePipeline, PipelineCfg  # noqa: E402
from mlanet.edge.tracking import MediaPipeFaceDetector  # noqa: E402
from mlanet.edge.writers.video import H264VideoWriter  # noqa: E402
from mlanet.export.onnx_export import export_onnx  # noqa: E402
from mlanet.models.registry import create_model  # noqa: E402
from mlanet.morphable.model import MorphableModel  # noqa: E402

CLIPS = {"640x360": "data/video/hamilton_360p_multiface.mp4", "1280x720": "data/video/obama_720p.mp4"}


def run_clip(backend, face_model, clip: Path, render: bool, max_frames: int, tmp: Path) -> dict:
    cfg = PipelineCfg(render_mode="shaded" if render else None)
    pipeline = FacePipeline(backend, face_model, cfg, detector=MediaPipeFaceDetector())
    writer = None

    def sink(result):
        nonlocal writer
        if result.rendered is not None:
            if writer is None:
                writer = H264VideoWriter(tmp / f"overlay_{clip.stem}.mp4", 25.0, result.frame.width, result.frame.height)
            writer.write(result.rendered)

    source = open_source(clip)
    t0 = time.perf_counter()
    with source:
        n = pipeline.run(source, sink, max_frames=max_frames)
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t0
    stats = pipeline.stats.summary()
    pipeline.close()
    faces = pipeline.face_counts
    return {
        "clip": clip.name,
        "frames": n,
        "render_and_encode": render,
        "wall_s": round(wall, 3),
        "fps_wall": round(n / wall, 2),
        "fps_steady_p50": stats["fps_from_p50_total"],
        "faces_per_frame_mean": round(sum(faces) / max(len(faces), 1), 3),
        "stages": stats["stages"],
        "total": stats["total"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--face-model", default=None, help="face-model file (default: the asset home's)")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[1] / ".." / "shared"))
    ap.add_argument("--max-frames", type=int, default=150)
    ap.add_argument("--model", default="mlanet_mobile")
    args = ap.parse_args(argv)
    face_model = MorphableModel.load(args.face_model)
    results = {"model": args.model, "backend": "onnxruntime-cpu", "weights": "untrained (speed only)", "runs": []}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        onnx_path = export_onnx(create_model(args.model, face_model=face_model).eval(), face_model, tmp / "m.onnx")
        backend = OnnxRuntimeBackend(onnx_path, face_model=face_model)
        backend.warmup()
        for res, rel in CLIPS.items():
            clip = Path(args.shared) / rel
            for render in (True, False):
                r = run_clip(backend, face_model, clip, render, args.max_frames, tmp)
                r["resolution"] = res
                results["runs"].append(r)
                print(f"{res} render={render}: {r['frames']} frames, {r['fps_wall']} fps wall, "
                      f"p50 total {r['total']['p50_ms']} ms, faces/frame {r['faces_per_frame_mean']}")
    results["command"] = "python benchmarks/bench_pipeline.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(write_record("pipeline", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
