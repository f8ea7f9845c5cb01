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

    python benchmarks/bench_renderer.py --ict ../shared/assets/ict-facekit/FaceXModel.tar.xz
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import time_call, write_record  # noqa: E402

from mlanet.morphable.ict import build_ict_face_model  # noqa: E402
from mlanet.morphable.model import MorphableModel  # noqa: E402
from mlanet.params import FaceParams  # noqa: E402
from mlanet.preprocess import PreprocessCfg  # noqa: E402
from mlanet.render.rasterizer import interpolate, rasterize  # noqa: E402
from mlanet.render.renderer import render_face  # noqa: E402


def perturbed_params(model: MorphableModel, batch: int, depth_m: float, seed: int, device: str) -> torch.Tensor:
    """Flat (B, P) parameters: neutral face at ``depth_m`` plus small random perturbations."""
    g = torch.Generator().manual_seed(seed)
    layout = model.layout
    flat = FaceParams.neutral(layout, batch_size=batch, depth_m=depth_m).to_flat()
    s = layout.slices()
    scale = torch.zeros(layout.total)
    scale[s["identity"]] = 0.3
    scale[s["albedo"]] = 0.3
    scale[s["rotation"]] = 0.1  # rad
    scale[s["translation"]] = 0.01  # m
    scale[s["lighting"]] = 0.05
    flat = flat + torch.randn(batch, layout.total, generator=g) * scale
    flat[:, s["expression"]] = 0.1 * torch.rand(batch, layout.expression, generator=g)
    return flat.to(device)


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
    cfg = PreprocessCfg(input_size=args.size)
    size, batch = cfg.input_size, args.batch
    camera = cfg.camera(batch, device=args.device)
    flat = perturbed_params(model, batch, cfg.prior_depth_m, seed=0, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def forward():
        render_face(model, FaceParams.from_flat(flat, model.layout), camera, size, size)
        sync()

    def forward_backward():
        f = flat.detach().requires_grad_(True)
        out = render_face(model, FaceParams.from_flat(f, model.layout), camera, size, size)
        (out.image.mean() + out.depth.mean()).backward()
        sync()

    with torch.no_grad():
        params = FaceParams.from_flat(flat, model.layout)
        vertices = model(params)
        colors = model.vertex_colors(params, vertices)
    v_req = vertices.clone().requires_grad_(True)
    c_req = colors.clone().requires_grad_(True)

    def raster_forward_backward():
        frags = rasterize(v_req, model.triangles, camera, size, size)
        image = interpolate(c_req, frags, model.triangles)
        (image.mean() + frags.depth.mean()).backward()
        sync()

    def raster_forward():
        frags = rasterize(v_req, model.triangles, camera, size, size)
        interpolate(c_req, frags, model.triangles)
        sync()

    def raster_no_grad():
        with torch.no_grad():
            rasterize(vertices, model.triangles, camera, size, size)
        sync()

    kw = {"warmup": args.warmup, "repeats": args.repeats}
    timings = {
        "render_face_forward": time_call(forward, **kw),
        "render_face_forward_backward": time_call(forward_backward, **kw),
        "rasterize_interpolate_forward": time_call(raster_forward, **kw),
        "rasterize_interpolate_forward_backward": time_call(raster_forward_backward, **kw),
        "rasterize_no_grad": time_call(raster_no_grad, **kw),
    }
    with torch.no_grad():
        frags = rasterize(vertices, model.triangles, camera, size, size)
    stats = {
        "candidates_per_image": frags.num_candidates / batch,
        "covered_pixels_per_image": float(frags.mask.sum()) / batch,
        "triangles": int(model.triangles.shape[0]),
        "vertices": int(model.n_vertices),
    }
    for name, t in timings.items():
        print(f"{name:42s} median {t['median_ms']:8.1f} ms  p95 {t['p95_ms']:8.1f} ms")
    print(f"candidates/image {stats['candidates_per_image']:.0f}, covered pixels/image {stats['covered_pixels_per_image']:.0f}")
    out = write_record(
        "renderer",
        {
            "model": model.describe(),
            "torch_device": args.device,
            "batch": batch,
            "image_size": size,
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
