"""The overlay's display mesh: render time against triangle count and image difference (issue 17).

Fits the shipped ``mlanet_mobile`` to the Obama clip (720p) with :class:`FacePipeline` (first
``--frames`` frames; the last frame's face is drawn), then draws that face with the GL renderer
(offscreen EGL; llvmpipe here) in the pipeline's default overlay (``shaded`` + ``landmarks``) with
the full ICT mesh and with display meshes of several triangle counts
(:func:`mlanet.edge.display_mesh.display_mesh`). The renderers take turns, ``--repeats`` rounds
after 5 warm-up rounds, so load changes hit every variant alike; per variant: median and minimum
ms, the ratio of the median to the full mesh's (the reference, same process), and how far the
image is from the full mesh's (mean absolute difference per channel and pixels off by more than
8 and 32 levels, ``shaded`` without overlays). Also saves the face region of each render side by
side (``display_mesh_compare.png``).

    mlanet bench display-mesh --targets 9000,4000,2500 --repeats 60

(or ``python -m mlanet.benchmarks.display_mesh ...``, the same options).

Writes ``benchmarks/results/<device>/display_mesh.json`` (``--out`` for another results root).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip
from mlanet.edge.loading import positive_int
from mlanet.errors import MLANetError
from mlanet.run_environment import load_average_1min


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``mlanet bench display-mesh`` (``--out`` is added by the caller)."""
    ap.add_argument("--clip", help="a video (default: the shared data/video/obama_720p.mp4)")
    ap.add_argument("--frames", type=positive_int, default=30, help="frames fitted before the drawn one")
    ap.add_argument("--targets", default="9000,4000,2500", help="display-mesh triangle counts")
    ap.add_argument("--repeats", type=positive_int, default=60, help="timed rounds (every variant once per round)")


def run(args: argparse.Namespace) -> Path:
    """Fit a face, time the overlay with every display mesh, write ``display_mesh.json``; returns its path."""
    from mlanet.edge.display_mesh import DISPLAY_TRIANGLES, display_mesh
    from mlanet.edge.face_detection import MediaPipeFaceDetector
    from mlanet.edge.frames import VideoFileSource
    from mlanet.edge.gl_renderer import FaceRenderer, RenderFace
    from mlanet.edge.mesh_topology import MeshTopology
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.runtime_backend import open_runtime_backend
    from mlanet.edge.thread_plan import plan_threads
    from mlanet.edge.tracking import TrackerCfg
    from mlanet.morphable.model import MorphableModel
    from mlanet.weights import default_weights_path

    clip = Path(args.clip) if args.clip else shared_clip()
    if not clip.is_file():
        raise MLANetError(f"{clip}: no such video file (pass --clip or set MLANET_SHARED)")
    try:
        targets = [int(t) for t in args.targets.split(",") if t.strip()]
    except ValueError:
        raise MLANetError(f"--targets {args.targets}: expected comma-separated triangle counts") from None
    plan = plan_threads("onnxruntime")
    plan.apply()
    load_start = load_average_1min()
    face_model = MorphableModel.load(None)
    backend = open_runtime_backend(default_weights_path("mlanet_mobile"), face_model)
    pipeline = FacePipeline(backend, face_model, PipelineCfg(render_mode=None, tracker=TrackerCfg(max_faces=1)),
                            detector=MediaPipeFaceDetector())
    with VideoFileSource(clip) as src:
        frames = [f for _, f in zip(range(args.frames), src)]
    for frame in frames:
        result = pipeline.process(frame)
    if not result.faces:
        pipeline.close()
        raise MLANetError(f"{clip}: no face in frame {frame.index}")
    fit = result.faces[0]
    pipeline._add_meshes([fit], pipeline.camera)
    lighting = np.asarray(fit.params[face_model.layout.slices()["lighting"]], np.float32).reshape(3, 9)
    camera, image = pipeline.camera, frame.image
    H, W = image.shape[:2]

    full = MeshTopology.from_face_model(face_model)
    variants = {"full": (full, np.arange(full.n_vertices))}
    for t in targets:
        d = display_mesh(face_model, t)
        variants[f"display_{t}"] = (d.topology, d.kept)
    renderers = {name: FaceRenderer(W, H, topo) for name, (topo, _) in variants.items()}
    faces = {name: [RenderFace(fit.vertices[kept], fit.extras["albedo"][kept], lighting, fit.landmarks2d, 0)]
             for name, (_, kept) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(5 + args.repeats):
        for name, r in renderers.items():
            t0 = time.perf_counter()
            r.render(image, faces[name], camera, "shaded", ("landmarks",))
            if round_ >= 5:
                times[name].append((time.perf_counter() - t0) * 1e3)
    plain = {name: r.render(image, faces[name], camera, "shaded", ()) for name, r in renderers.items()}
    ref_ms = float(np.median(times["full"]))
    rows = {}
    for name, (topo, kept) in variants.items():
        diff = np.abs(plain[name].astype(int) - plain["full"].astype(int))
        rows[name] = {
            "triangles": int(topo.n_triangles), "vertices": int(len(kept)),
            "render_ms_median": round(float(np.median(times[name])), 3),
            "render_ms_min": round(float(np.min(times[name])), 3),
            "ratio_to_full": round(float(np.median(times[name])) / ref_ms, 3),
            "image_mean_abs_diff": round(float(diff.mean()), 4),
            "pixels_off_by_more_than_8": int((diff.max(2) > 8).sum()),
            "pixels_off_by_more_than_32": int((diff.max(2) > 32).sum()),
        }
    for r in renderers.values():
        r.release()
    pipeline.close()

    ys, xs = np.nonzero((plain["full"] != image).any(2))
    out_dir = record_dir(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    strip = np.concatenate([plain[n][ys.min():ys.max() + 1, xs.min():xs.max() + 1] for n in variants], axis=1)
    Image.fromarray(strip).save(out_dir / "display_mesh_compare.png")
    results = {
        "clip": clip.name, "size": [W, H], "frame_index": frame.index, "overlay": "shaded + landmarks",
        "default_display_triangles": DISPLAY_TRIANGLES, "reference": "full", "variants": rows,
        "compare_image": "display_mesh_compare.png (left to right: " + ", ".join(variants) + ")",
        "thread_plan": plan.to_dict(), "repeats": args.repeats,
        "target": "overlay render <= 5 ms per 720p frame on llvmpipe (issue 17)",
        "load_average_1min_start": load_start, "load_average_1min_end": load_average_1min(),
    }
    out = write_record("display_mesh", results, out_dir=out_dir)
    for name, row in rows.items():
        print(f"{name:14s} {row['triangles']:6d} tris  {row['render_ms_median']:6.2f} ms (min {row['render_ms_min']:.2f}) "
              f"x{row['ratio_to_full']}  mean |diff| {row['image_mean_abs_diff']:.3f}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlanet.benchmarks.display_mesh ARGS``: the same as ``mlanet bench display-mesh ARGS``."""
    from mlanet.benchmarks.cli import main_for

    return main_for("display-mesh", argv)


if __name__ == "__main__":
    sys.exit(main())
