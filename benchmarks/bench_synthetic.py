"""Synthetic data generator throughput: samples per second, one at a time and batched.

Builds the ICT face model (optionally with the MediaPipe correspondence, so ``mp468`` labels
are produced as in training) and renders ``SyntheticFaces`` samples at ``--size`` (default
224, the network input):

- ``per_sample``: ``dataset[i]`` (what a DataLoader worker does per item);
- ``batch_<B>``: ``dataset.render_batch(B indices)``, one rasteriser call per batch.

    python -m mlanet.benchmarks.bench_synthetic --ict ../shared/assets/ict-facekit/FaceXModel.tar.xz \\
        --mediapipe ../shared/assets/mediapipe-canonical/canonical_face_model.obj
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time

from mlanet.benchmarks.record import time_call, write_record
from mlanet.data.synthetic import SyntheticCfg, SyntheticFaces
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.sources.ict import build_ict_face_model
from mlanet.preprocess import PreprocessCfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ict", required=True, help="ICT-FaceKit FaceXModel folder or archive")
    ap.add_argument("--mediapipe", help="MediaPipe canonical_face_model.obj (adds the mp468 labels)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="8,32")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="device of the face model and renderer (outputs are on the CPU)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = MorphableModel(build_ict_face_model(args.ict, mediapipe_obj=args.mediapipe)).to(args.device)
    build_s = time.perf_counter() - t0
    pre = PreprocessCfg(input_size=args.size)
    cfg = SyntheticCfg()
    ds = SyntheticFaces(model, pre, cfg=cfg, length=10**9, seed=0)
    counter = itertools.count()

    def one():
        ds[next(counter)]

    rows = {}
    t = time_call(one, warmup=3, repeats=max(args.repeats * 3, 10))
    rows["per_sample"] = {**t, "batch": 1, "samples_per_s": 1e3 / t["median_ms"]}
    print(f"per sample    {t['median_ms']:7.1f} ms  -> {rows['per_sample']['samples_per_s']:6.1f} samples/s")
    for b in [int(x) for x in args.batches.split(",")]:
        def batch(b: int = b) -> None:
            start = next(counter) * 1000
            ds.render_batch(range(start, start + b))

        t = time_call(batch, warmup=2, repeats=args.repeats)
        rows[f"batch_{b}"] = {**t, "batch": b, "samples_per_s": b * 1e3 / t["median_ms"]}
        print(f"batch {b:4d}    {t['median_ms']:7.1f} ms  -> {rows[f'batch_{b}']['samples_per_s']:6.1f} samples/s")
    out = write_record(
        "synthetic_data",
        {
            "model": model.describe(),
            "has_mediapipe": bool(model.has_mediapipe),
            "torch_device": args.device,
            "image_size": args.size,
            "synthetic_cfg": dataclasses.asdict(cfg),
            "model_build_seconds": build_s,
            "throughput": rows,
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
