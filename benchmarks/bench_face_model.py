"""Face-model benchmarks: ICT asset build time and MorphableModel decode latency vs batch size.

Decode = params -> camera-frame vertices (one GEMM + rotation), and the full per-vertex colour
path (vertices + normals + albedo + SH shading). The reference in the same process is the
same work done one face at a time (a Python loop of batch-1 calls), so ``speedup_vs_loop``
shows what batching buys.

    python -m mlanet.benchmarks.bench_face_model --ict ../shared/assets/ict-facekit/FaceXModel.tar.xz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlanet.benchmarks.record import time_call, write_record
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.sources.ict import build_ict_face_model
from mlanet.params import FaceParams


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", required=True, help="ICT-FaceKit FaceXModel folder or archive")
    ap.add_argument("--mediapipe", help="MediaPipe canonical_face_model.obj (include registration in the build time)")
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    data = build_ict_face_model(args.ict, mediapipe_obj=args.mediapipe)
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = data.save(Path(tmp) / "m.mlface.npz")
        t0 = time.perf_counter()
        model = MorphableModel.load(path).to(args.device)
        load_s = time.perf_counter() - t0

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    rows = []
    for b in [int(x) for x in args.batches.split(",")]:
        g = torch.Generator().manual_seed(b)
        p = FaceParams.from_flat(0.3 * torch.randn(b, model.layout.total, generator=g), model.layout)
        p = FaceParams(**{k: v.to(args.device) for k, v in vars(p).items()})
        one = [FaceParams(**{k: v[i : i + 1] for k, v in vars(p).items()}) for i in range(b)]

        def batched_vertices():
            with torch.no_grad():
                model(p)
            sync()

        def looped_vertices():
            with torch.no_grad():
                for q in one:
                    model(q)
            sync()

        def batched_colours():
            with torch.no_grad():
                model.vertex_colors(p)
            sync()

        vb = time_call(batched_vertices, repeats=args.repeats)
        vl = time_call(looped_vertices, repeats=max(5, args.repeats // 3))
        cb = time_call(batched_colours, repeats=args.repeats)
        rows.append(
            {
                "batch": b,
                "vertices": vb,
                "vertices_loop_reference": vl,
                "speedup_vs_loop": vl["median_ms"] / vb["median_ms"],
                "faces_per_s": b / (vb["median_ms"] / 1e3),
                "vertices_normals_colours": cb,
            }
        )
        print(f"B={b:4d}  vertices {vb['median_ms']:8.3f} ms (loop {vl['median_ms']:8.3f} ms, x{rows[-1]['speedup_vs_loop']:.1f})"
              f"  +normals+colours {cb['median_ms']:8.3f} ms")
    out = write_record(
        "face_model",
        {
            "model": model.describe(),
            "torch_device": args.device,
            "build_seconds": build_s,
            "build_includes_mediapipe_registration": bool(args.mediapipe),
            "load_seconds": load_s,
            "decode": rows,
        },
    )
    print(f"build {build_s:.1f} s, load {load_s:.2f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
