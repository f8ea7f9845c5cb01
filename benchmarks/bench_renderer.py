"""Differentiable renderer benchmark: forward and forward+backward latency on the real face model.

Renders ``batch`` ICT faces (neutral parameters at ``PreprocessCfg().prior_depth_m`` plus small
random perturbations) into ``size x size`` images with the crop camera of ``PreprocessCfg``:

- ``render_face_forward``: params -> vertices -> shaded colours -> rasterise -> interpolate,
  with autograd recording (as in training);
- ``render_face_forward_backward``: the same plus ``(image.mean() + depth.mean()).backward()``
  down to the flat parameter vector;
- ``rasterize_interpolate_*``: the renderer alone, from fixed vertices/colours that require grad;
- ``rasterize_no_grad``: visibility + barycentrics only, under ``torch.no_grad``.

Also records the number of candidate (triangle, pixel centre) pairs and covered pixels per image.
The measurement itself is :func:`mlanet.benchmarks.compare.differentiable_renderer_timings`
(``mlanet bench compare`` times the first two with it); this script adds the ICT build and the record.

    python -m mlanet.benchmarks.bench_renderer --ict ../shared/assets/ict-facekit/FaceXModel.tar.xz
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mlanet.benchmarks.compare import differentiable_renderer_timings
from mlanet.benchmarks.record import write_record
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.sources.ict import build_ict_face_model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", required=True, help="ICT-FaceKit FaceXModel folder or archive")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224, help="image size S (PreprocessCfg.input_size)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = MorphableModel(build_ict_face_model(args.ict)).to(args.device)
    build_s = time.perf_counter() - t0
    r = differentiable_renderer_timings(model, batch=args.batch, size=args.size, warmup=args.warmup,
                                        repeats=args.repeats, device=args.device)
    timings, stats = r["timings"], r["stats"]
    for name, t in timings.items():
        print(f"{name:42s} median {t['median_ms']:8.1f} ms  p95 {t['p95_ms']:8.1f} ms")
    print(f"candidates/image {stats['candidates_per_image']:.0f}, covered pixels/image {stats['covered_pixels_per_image']:.0f}")
    out = write_record(
        "renderer",
        {
            "model": model.describe(),
            "torch_device": args.device,
            "batch": args.batch,
            "image_size": args.size,
            "loss": "image.mean() + depth.mean()",
            "model_build_seconds": build_s,
            "timings": timings,
            "stats": stats,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
