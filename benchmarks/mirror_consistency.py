"""Does the network treat a face and its mirror image alike? Expression and pose disagreement on store crops.

A face's jaw opens as far in a mirror, its blinks trade eyes, its yaw and roll change sign and its pitch stays.
For a checkpoint this takes ``--n`` crops of each training store (``mlanet data store``; seeded draw, no
augmentation), runs the network on each crop x and on ``x.flip(-1)`` (left-right about the crop centre) and
reports, per store, the mean over crops of

* ``|e(x) - P e(flip x)|`` per expression shape (P: the mirror permutation of
  :func:`mlanet.morphable.mirror.expression_mirror_permutation`), its mean over shapes, ``jawOpen``'s mean and 90th
  percentile, and the shapes that disagree most;
* ``|pitch(x) - pitch(flip x)|``, ``|yaw(x) + yaw(flip x)|``, ``|roll(x) + roll(flip x)|`` in degrees.

What the ``loss.mirror_expression`` term trains towards 0::

    python -m mlanet.benchmarks.mirror_consistency --weights CKPT --store DIR [--store DIR ...] \\
        [--face-model FILE] [--n 400] [--json OUT]

On video, ``mlanet eval expressions CLIP ... --json PLAIN`` and the same with ``--mirror --json MIRRORED``, then::

    python -m mlanet.benchmarks.mirror_consistency --records PLAIN MIRRORED [--json OUT]

compares the two runs frame by frame (:func:`compare_records`): the network's jawOpen and mean eyeBlink on each
frame and on its mirror image (mean |difference|, r), and the same for MediaPipe's lip gap and eye aperture, which
are not exactly mirror-symmetric either, so a changed r in ``--mirror`` runs is split into the network's part and
the reference's.

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


def _series(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    r = records
    return {
        "jawOpen": np.array([x["jawOpen"] for x in r], float),
        "eyeBlink": np.array([(x["eyeBlink_L"] + x["eyeBlink_R"]) / 2 for x in r], float),
        "lip_gap": np.array([np.nan if x["lip_gap"] is None else x["lip_gap"] for x in r], float),
        "eye_aperture": np.array([np.nan if x["eye_aperture_L"] is None or x["eye_aperture_R"] is None
                                  else (x["eye_aperture_L"] + x["eye_aperture_R"]) / 2 for x in r], float),
    }


def compare_records(plain: dict[str, Any], mirrored: dict[str, Any]) -> dict[str, Any]:
    """Per clip of two ``mlanet eval expressions`` results (the second with ``--mirror``): for the network's
    ``jawOpen`` and mean ``eyeBlink`` and the reference's ``lip_gap`` and ``eye_aperture``, over the frames both
    runs fitted with one face (matched by frame index), ``mean_abs`` |plain - mirrored| and ``r`` between them;
    ``cross``: r of the mirrored run's jawOpen with the plain run's lip gap (and eyeBlink with minus the
    aperture), the target correlations with the network mirrored and the reference not.

    Raises ValueError when the first result is mirrored or the second is not, or they share no clip.
    """
    from mlanet.edge.evaluation.expressions import pearson

    a = {c["video"]: c for c in plain["clips"]}
    b = {c["video"]: c for c in mirrored["clips"]}
    if any(c.get("mirrored") for c in a.values()) or not all(c.get("mirrored") for c in b.values()):
        raise ValueError("--records: give a plain run first and a --mirror run second")
    out: dict[str, Any] = {}
    for video in [v for v in a if v in b]:
        ra = {x["frame"]: x for x in a[video]["records"]}
        rb = {x["frame"]: x for x in b[video]["records"]}
        frames = sorted(set(ra) & set(rb))
        sa, sb = _series([ra[f] for f in frames]), _series([rb[f] for f in frames])
        clip: dict[str, Any] = {"frames": len(frames)}
        for k in sa:
            ok = np.isfinite(sa[k]) & np.isfinite(sb[k])
            clip[k] = {"mean_abs": float(np.abs(sa[k][ok] - sb[k][ok]).mean()) if ok.any() else None,
                       "r": pearson(sa[k][ok], sb[k][ok])[0]}
        ok = np.isfinite(sa["lip_gap"]) & np.isfinite(sa["eye_aperture"])
        clip["cross"] = {"jaw_open_mirrored_vs_lip_gap": pearson(sb["jawOpen"][ok], sa["lip_gap"][ok])[0],
                         "eye_blink_mirrored_vs_eye_closure": pearson(sb["eyeBlink"][ok], -sa["eye_aperture"][ok])[0]}
        out[Path(video).name] = clip
    if not out:
        raise ValueError("--records: the two results share no clip")
    return out


def measure(network: Any, face_model: Any, store: Path, n: int, seed: int = 0, batch: int = 64) -> dict[str, Any]:
    """:func:`disagreement` of ``network`` on ``n`` crops of ``store`` (drawn with ``seed``, no augmentation)."""
    import torch

    from mlanet.data.store_dataset import StoreDataset
    from mlanet.morphable.mirror import expression_mirror_permutation
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
    perm = expression_mirror_permutation(face_model.expression_names)
    return disagreement(*(np.concatenate(outs[k]) for k in ("e", "em", "r", "rm")), perm=perm,
                        names=list(face_model.expression_names))


def main(argv: Sequence[str] | None = None) -> int:
    from mlanet.errors import MLANetError

    ap = argparse.ArgumentParser(prog="python -m mlanet.benchmarks.mirror_consistency",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--weights", type=Path, help="checkpoint (.safetensors) to measure on store crops")
    ap.add_argument("--store", type=Path, action="append", default=[], help="training store folder (repeatable)")
    ap.add_argument("--records", type=Path, nargs=2, metavar=("PLAIN", "MIRRORED"),
                    help="instead: compare two `mlanet eval expressions` results, the second made with --mirror")
    ap.add_argument("--face-model", type=Path, default=None, help="face-model file (default: the asset home's)")
    ap.add_argument("--n", type=int, default=400, help="crops per store (default 400)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    if args.records:
        return _main_records(args)
    if args.weights is None or not args.store:
        print("error: give --weights and --store (crops), or --records PLAIN MIRRORED (video)", file=sys.stderr)
        return 2
    for name, path in [("weights", args.weights), ("face-model", args.face_model)] + [("store", s) for s in args.store]:
        if path is not None and not path.exists():
            print(f"error: --{name} {path}: not found", file=sys.stderr)
            return 2
    if args.n < 1:
        print(f"error: --n {args.n}: must be at least 1", file=sys.stderr)
        return 2
    from mlanet.eval.predict import load_network
    from mlanet.morphable.mirror import require_mirrorable
    from mlanet.morphable.model import MorphableModel
    from mlanet.run_environment import environment

    try:
        face_model = MorphableModel.load(args.face_model)
        require_mirrorable(face_model, "mirror consistency")
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


def _main_records(args: argparse.Namespace) -> int:
    import json

    results = []
    for path in args.records:
        try:
            results.append(json.loads(path.read_text()))
            if not isinstance(results[-1], dict) or "clips" not in results[-1]:
                raise ValueError("not an `mlanet eval expressions` result")
        except (OSError, ValueError) as exc:
            print(f"error: --records {path}: {exc}", file=sys.stderr)
            return 2
    try:
        result = compare_records(*results)
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def fmt(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    for clip, c in result.items():
        print(f"{clip:20s} {c['frames']:4d} frames  plain vs mirrored: "
              + "  ".join(f"{k} |d| {fmt(c[k]['mean_abs'], '.3f')} r {fmt(c[k]['r'], '+.2f')}"
                          for k in ("jawOpen", "eyeBlink", "lip_gap", "eye_aperture"))
              + f"  | mirrored net vs plain reference: jaw {fmt(c['cross']['jaw_open_mirrored_vs_lip_gap'], '+.2f')}"
              f" blink {fmt(c['cross']['eye_blink_mirrored_vs_eye_closure'], '+.2f')}")
    if args.json:
        from mlanet.fileutil import write_json_atomic

        write_json_atomic(args.json, {"benchmark": "mirror consistency (video)", "plain": str(args.records[0]),
                                      "mirrored": str(args.records[1]), "clips": result}, allow_nan=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
