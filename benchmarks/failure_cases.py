"""Failure cases of a network on the AFLW2000-3D dev images, for the model card.

    python -m mlanet.benchmarks.failure_cases --eval EVAL.json --data ../shared/data/aflw2000-3d-dev \
        --weights mlanet/weights/mlanet_mobile.safetensors --out mlanet/weights/failure_cases.png [--n 8]

``EVAL.json`` is what ``mlanet eval aflw2000 --json`` wrote for the same weights (its per-image NMEs
pick the worst images: the ``--n`` worst of each yaw bin, half of them by default, the rest overall).

The committed picture holds **points only**: for each face, the ground-truth 68 points (red) and the
network's (green) in the ground-truth crop, joined by a line per point, with the image's name, yaw and
NME. The images themselves are research-only data of ``../shared`` and are never committed;
``--with-photos`` draws the points on the crops for a local look (do not commit that file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _worst(images: list[dict], n: int) -> list[dict]:
    """The ``n`` worst images: the worst of each yaw bin first (round robin), then by NME."""
    by_bin = {b: sorted([i for i in images if i["bin"] == b], key=lambda i: -i["nme"]) for b in (0, 1, 2)}
    picked: list[dict] = []
    k = 0
    while len(picked) < n // 2 and any(len(v) > k for v in by_bin.values()):
        for b in (0, 1, 2):
            if len(by_bin[b]) > k and len(picked) < n // 2:
                picked.append(by_bin[b][k])
        k += 1
    rest = [i for i in sorted(images, key=lambda i: -i["nme"]) if i not in picked]
    return picked + rest[: n - len(picked)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--eval", required=True, help="mlanet eval aflw2000 --json output for these weights")
    p.add_argument("--data", required=True, help="the AFLW2000-3D dev folder")
    p.add_argument("--weights", required=True)
    p.add_argument("--face-model", default=None)
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--with-photos", action="store_true", help="draw on the crops (local use only: never commit)")
    args = p.parse_args(argv)

    import torch
    from PIL import Image, ImageDraw

    from mlanet.data.landmarks import crop_uint8, read_image_rgb
    from mlanet.eval.aflw2000 import AFLW2000Eval
    from mlanet.eval.predict import make_landmark_predictor
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    record = json.loads(Path(args.eval).read_text())
    chosen = _worst(record["images"], args.n)
    bench = AFLW2000Eval(args.data, include=[c["name"] for c in chosen])
    samples = {s.name: s for s in bench.samples}
    face_model = MorphableModel.load(args.face_model)
    model = create_model(checkpoint=args.weights, face_model=face_model).eval()
    pre = model.preprocess
    predict = make_landmark_predictor(model, face_model, pre, definition=(record.get("model") or {}).get("landmark_definition", "aflw2000_68"))
    side, tile = pre.input_size, 256
    k = tile / side
    tiles = []
    for c in chosen:
        s = samples[c["name"]]
        box = s.crop_box(pre.roi_scale)
        crop = crop_uint8(read_image_rgb(s.image_path), box, side)  # (3, S, S) float in [0, 1]
        with torch.no_grad():
            pred = predict(crop[None].float())[0].numpy()
        gt = box.image_to_crop(np.asarray(s.landmarks, dtype=np.float64), side)
        if args.with_photos:
            im = Image.fromarray((crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize((tile, tile))
        else:
            im = Image.new("RGB", (tile, tile), (245, 245, 245))
        d = ImageDraw.Draw(im)
        for (gx, gy), (px, py) in zip(gt * k, pred[:, :2] * k):
            d.line([gx, gy, px, py], fill=(150, 150, 150), width=1)
            d.ellipse([gx - 2, gy - 2, gx + 2, gy + 2], fill=(220, 30, 30))
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=(20, 160, 40))
        d.text((4, 4), f"{c['name']}  yaw {c['yaw_deg']:+.0f}  NME {c['nme']:.1f}%", fill=(0, 0, 0))
        tiles.append(np.asarray(im))
    cols = 4
    rows = [np.concatenate(tiles[i:i + cols] + [np.full_like(tiles[0], 255)] * (cols - len(tiles[i:i + cols])), 1)
            for i in range(0, len(tiles), cols)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(out)
    print(f"wrote {out}: {len(tiles)} faces (red: ground truth, green: {model.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
