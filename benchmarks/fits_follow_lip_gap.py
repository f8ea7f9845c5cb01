"""Does the landmark fitter's jawOpen follow the lip gap on a clip? A diagnostic of the training signal.

The network learns ``jawOpen`` from pseudo-3DMM fits (``mlanet data fit``: the face model fitted to the
teacher's and MediaPipe's points). Where the *fits* do not follow the mouth, the network cannot be
expected to; where they do and the network does not, the network generalises short of its training
signal. This reads a label cache and a fit cache of video-folder clips (made with ``mlanet data label
--source video-folder=DIR --every 1`` and ``mlanet data fit``) and reports per clip the Pearson r of the
fits' ``jawOpen`` with MediaPipe's inner-lip gap (:func:`mlanet.eval.face_measures.lip_gap`, the
measure of ``mlanet eval expressions``, here from the label cache's MediaPipe points), and the
expression shapes that follow the gap best::

    python -m mlanet.benchmarks.fits_follow_lip_gap --labels CACHE --fits FITCACHE \\
        --face-model runs/ict_face_v2.mlface.npz [--max-frames 150] [--json OUT]

Run it on held-out clips only into caches of their own (never a training cache): it measures, it
does not train.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

TOP_SHAPES = 4


def clip_and_frame(key: str) -> tuple[str, int]:
    """``'video-folder:clips/a.mp4#000012'`` -> ``('a.mp4', 12)``; ValueError for a key without a frame."""
    head, sep, frame = str(key).rpartition("#")
    if not sep or not frame.isdigit():
        raise ValueError(f"not a video-frame sample key: {key!r}")
    return head.rsplit("/", 1)[-1].split(":", 1)[-1], int(frame)


def clip_summary(expression: np.ndarray, gap: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """r of jawOpen and the shapes following the gap best. expression (N, K) weights, gap (N,).

    r is None where undefined (too few frames, a constant series: :func:`~mlanet.edge.evaluation.expressions.pearson`);
    the ranking is ``mlanet eval expressions``' own (:func:`~mlanet.edge.evaluation.expressions.shapes_following`).
    """
    from mlanet.edge.evaluation.expressions import pearson, shapes_following

    jaw = pearson(expression[:, list(names).index("jawOpen")], gap)[0] if "jawOpen" in names else None
    q = np.percentile(gap, [5, 95]) if len(gap) else [float("nan")] * 2
    return {
        "frames": int(len(gap)),
        "jaw_open_vs_lip_gap": jaw,
        "lip_gap_p5_p95": [float(q[0]), float(q[1])],
        "shapes_following": shapes_following(expression, gap, names, top=TOP_SHAPES),
    }


def measure(labels: Path, fits: Path, face_model: Any, max_frames: int, source: str = "video-folder") -> dict[str, Any]:
    """Per clip of ``source``: the fits' expressions against the label cache's lip gap (first ``max_frames``)."""
    from mlanet.data.fits import STATUS_FITTED, FitCache, fit_model_keys
    from mlanet.data.labels import LabelCache
    from mlanet.data.labels.cache import lookup_key
    from mlanet.eval.face_measures import lip_gap
    from mlanet.params import ParamLayout

    lab = LabelCache(labels).load(source)
    fit = FitCache(fits).load(source, model_keys=fit_model_keys(face_model))
    exp = ParamLayout.for_face_model(face_model).slices()["expression"]
    per_clip: dict[str, list[tuple[int, int, int]]] = {}  # clip -> (frame, label row, fit row)
    for i in range(len(lab)):
        if int(lab["mp_status"][i]) != 1:
            continue
        row = fit.row(lookup_key(lab["content"][i], lab["box_rule"][i], lab["annotation"][i]))
        if row is None or int(fit["status"][row]) != STATUS_FITTED:
            continue
        clip, frame = clip_and_frame(lab["key"][i])
        if frame < max_frames:
            per_clip.setdefault(clip, []).append((frame, i, row))
    out = {}
    for clip, rows in sorted(per_clip.items()):
        _, lab_rows, fit_rows = map(list, zip(*sorted(rows)))
        gap = lip_gap(np.asarray(lab["mp468"][lab_rows], np.float64)[..., :2])
        out[clip] = clip_summary(np.asarray(fit["params"][fit_rows][:, exp], np.float64), gap,
                                 face_model.expression_names)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from mlanet.errors import MLANetError

    ap = argparse.ArgumentParser(prog="python -m mlanet.benchmarks.fits_follow_lip_gap", description=__doc__.split("\n")[0])
    ap.add_argument("--labels", required=True, type=Path, help="label cache folder (mlanet data label)")
    ap.add_argument("--fits", required=True, type=Path, help="fit cache folder (mlanet data fit)")
    ap.add_argument("--face-model", required=True, type=Path, help="the face model the fits were made with")
    ap.add_argument("--max-frames", type=int, default=150, help="only frames before this index (default 150)")
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args(argv)
    for name in ("labels", "fits", "face_model"):
        if not getattr(args, name).exists():
            print(f"error: --{name.replace('_', '-')} {getattr(args, name)}: not found", file=sys.stderr)
            return 2
    from mlanet.morphable.model import MorphableModel

    try:
        result = measure(args.labels, args.fits, MorphableModel.load(args.face_model), args.max_frames)
    except (MLANetError, OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not result:
        print(f"error: --labels {args.labels} / --fits {args.fits}: no fitted video frame with MediaPipe points",
              file=sys.stderr)
        return 2
    for clip, s in result.items():
        r = s["jaw_open_vs_lip_gap"]
        top = ", ".join(f"{t['shape']} {t['r']:+.2f}" for t in s["shapes_following"])
        print(f"{clip:24s} {s['frames']:4d} frames  fits' jawOpen r {'-' if r is None else f'{r:+.2f}'}  "
              f"lip gap p5-p95 {s['lip_gap_p5_p95'][0]:.3f}-{s['lip_gap_p5_p95'][1]:.3f}  top: {top}")
    if args.json:
        from mlanet.fileutil import write_json_atomic

        write_json_atomic(args.json, {"clips": result, "max_frames": args.max_frames, "labels": str(args.labels),
                                      "fits": str(args.fits)}, allow_nan=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
