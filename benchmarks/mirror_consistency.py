"""Does the network treat a face and its mirror image alike? Expression and pose disagreement on store crops.

A face's jaw opens as far in a mirror, its blinks trade eyes, its yaw and roll change sign and its pitch stays.
For a checkpoint this takes ``--n`` crops of each training store (``mlanet data store``; seeded draw, no
augmentation), runs the network on each crop x and on ``x.flip(-1)`` (left-right about the crop centre) and
reports, per store, the mean over crops of

* ``|e(x) - P e(flip x)|`` per expression shape (P: the mirror permutation of
  :func:`mlanet.losses.terms.expression_flip_permutation`), its mean over shapes, ``jawOpen``'s mean and 90th
  percentile, and the shapes that disagree most;
* ``|pitch(x) - pitch(flip x)|``, ``|yaw(x) + yaw(flip x)|``, ``|roll(x) + roll(flip x)|`` in degrees.

What the ``loss.mirror_expression`` term trains towards 0; ``mlanet eval expressions --mirror`` measures the same on
video::

    python -m mlanet.benchmarks.mirror_consistency --weights CKPT --store DIR [--store DIR ...] \\
        [--face-model FILE] [--n 400] [--json OUT]

Blendshape face models only (a mirror does not permute PCA expression coefficients).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TOP_SHAPES = 6


def disagreement(expression: np.ndarray, expression_mirror: np.ndarray, rotation: np.ndarray,
                 rotation_mirror: np.ndarray, perm: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """The summary for one set of crops.

    expression, expression_mirror (N, K): weights for x and for flip(x); rotation, rotation_mirror (N, 3) radians
    (pitch, yaw, roll, the parameter layout's order); perm (K,): the mirror permutation of the shapes.
    """
    d = np.abs(expression - expression_mirror[:, perm])
    per_shape = d.mean(0)
    order = np.argsort(-per_shape, kind="stable")[:TOP_SHAPES]
    deg = np.degrees
    out: dict[str, Any] = {
        "crops": int(len(d)),
        "expression_mean_abs": float(d.mean()),
        "worst_shapes": [{"shape": names[k], "mean_abs": float(per_shape[k])} for k in order],
        "pose_deg": {
            "pitch": float(np.mean(np.abs(deg(rotation[:, 0] - rotation_mirror[:, 0])))),
            "yaw": float(np.mean(np.abs(deg(rotation[:, 1] + rotation_mirror[:, 1])))),
            "roll": float(np.mean(np.abs(deg(rotation[:, 2] + rotation_mirror[:, 2])))),
        },
    }
    if "jawOpen" in names:
        j = list(names).index("jawOpen")
        out["jaw_open"] = {"mean_abs": float(d[:, j].mean()), "p90_abs": float(np.percentile(d[:, j], 90)),
                           "mean_weight": float(expression[:, j].mean())}
    return out


def measure(network: Any, face_model: Any, store: Path, n: int, seed: int = 0, batch: int = 64) -> dict[str, Any]:
    """:func:`disagreement` of ``network`` on ``n`` crops of ``store`` (drawn with ``seed``, no augmentation)."""
    import torch

    from mlanet.data.store_dataset import StoreDataset
    from mlanet.losses.terms import expression_flip_permutation
    from mlanet.params import FaceParams

    ds = StoreDataset(store, augment=None, input_size=int(network.preprocess.input_size))  # images in [0, 1]
    rows = np.sort(np.random.default_rng(seed).choice(len(ds), size=min(n, len(ds)), replace=False))
    outs: dict[str, list[np.ndarray]] = {"e": [], "em": [], "r": [], "rm": []}
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            images = torch.stack([ds.sample(int(i), generator=g)["image"] for i in rows[start:start + batch]])
            a = FaceParams.from_flat(network(images).float(), face_model.layout)
            b = FaceParams.from_flat(network(images.flip(-1)).float(), face_model.layout)
            for key, value in (("e", a.expression), ("em", b.expression), ("r", a.rotation), ("rm", b.rotation)):
                outs[key].append(value.numpy())
    perm = expression_flip_permutation(face_model.expression_names).numpy()
    return disagreement(*(np.concatenate(outs[k]) for k in ("e", "em", "r", "rm")), perm=perm,
                        names=list(face_model.expression_names))


def main(argv: Sequence[str] | None = None) -> int:
    from mlanet.errors import MLANetError

    ap = argparse.ArgumentParser(prog="python -m mlanet.benchmarks.mirror_consistency",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, type=Path, help="checkpoint (.safetensors) to measure")
    ap.add_argument("--store", required=True, type=Path, action="append", help="training store folder (repeatable)")
    ap.add_argument("--face-model", type=Path, default=None, help="face-model file (default: the asset home's)")
    ap.add_argument("--n", type=int, default=400, help="crops per store (default 400)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    for name, path in [("weights", args.weights), ("face-model", args.face_model)] + [("store", s) for s in args.store]:
        if path is not None and not path.exists():
            print(f"error: --{name} {path}: not found", file=sys.stderr)
            return 2
    if args.n < 1:
        print(f"error: --n {args.n}: must be at least 1", file=sys.stderr)
        return 2
    from mlanet.eval.predict import load_network
    from mlanet.morphable.model import MorphableModel
    from mlanet.run_environment import environment

    try:
        face_model = MorphableModel.load(args.face_model)
        if str(face_model.header.get("expression_kind", "blendshapes")) != "blendshapes":
            raise MLANetError(f"face model {face_model.model_id}: PCA expressions; a mirror does not permute them")
        network = load_network(face_model, args.weights)
        result = {str(s): measure(network, face_model, s, args.n) for s in args.store}
    except (MLANetError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for store, s in result.items():
        jaw = s.get("jaw_open", {})
        worst = ", ".join(f"{w['shape']} {w['mean_abs']:.3f}" for w in s["worst_shapes"][:4])
        print(f"{Path(store).name:28s} {s['crops']:4d} crops  |e - P e_flip| {s['expression_mean_abs']:.4f}  "
              f"jawOpen {jaw.get('mean_abs', float('nan')):.4f} (p90 {jaw.get('p90_abs', float('nan')):.3f})  "
              f"pose pitch/yaw/roll {s['pose_deg']['pitch']:.2f}/{s['pose_deg']['yaw']:.2f}/{s['pose_deg']['roll']:.2f} deg"
              f"  worst: {worst}")
    if args.json:
        from mlanet.fileutil import write_json_atomic

        write_json_atomic(args.json, {"benchmark": "mirror consistency", "weights": str(args.weights),
                                      "n_per_store": args.n, "environment": environment(), "stores": result},
                          allow_nan=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
