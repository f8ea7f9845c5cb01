"""How the expression filter's One-Euro settings trade lag against smoothness, on video clips.

Each clip runs once through the edge pipeline with the temporal filter *off* (the tracker follows
the unfiltered fit anyway, so the crops do not depend on the filter) and MediaPipe's plain face mesh
as the reference, exactly as ``mlanet eval expressions`` does. The per-frame expression weights are
then filtered offline with every ``(expression_min_cutoff, expression_beta)`` of the grid (frame
times from the clip's frame rate), and each setting is scored:

* ``r_jaw``, ``r_blink``: Pearson r of jawOpen with the lip gap and of mean eyeBlink with the negative
  eye aperture (``mlanet eval expressions``' measures), per clip, only where the reference varies
  (:data:`~mlanet.edge.evaluation.expressions.MIN_REFERENCE_RANGE`; below it r measures noise);
* ``roughness``: the median over frames of ``|w_t - 2 w_{t-1} + w_{t-2}|`` of jawOpen and mean
  eyeBlink (second difference: frame-to-frame noise, insensitive to real slow motion).

A correlation with a per-frame reference always rises as the filter lags less (no filter scores best),
so r alone would choose no smoothing. The rule (:func:`choose`): among the filtered settings whose mean r
on the tuning clips is within ``--tolerance`` (0.02) of the best filtered setting's, for jawOpen and for
eyeBlink both, the one with the least roughness (jawOpen + eyeBlink). It is *applied to the tuning
clips only* (the trained-on ``driving_*`` clips); the held-out clips are scored with the same grid for
the record, never for the choice. The landmark-jitter
requirement (filtered jitter on near-static frames at or below MediaPipe's) is checked afterwards with
``mlanet eval jitter``. Run::

    python -m mlanet.benchmarks.expression_filter_sweep --tune ../shared/data/video/expressions/driving_d*.mp4 \\
        --held-out ../shared/data/video/expressions/source_s*.mp4 ../shared/data/video/obama_720p.mp4 \\
        --max-frames 150 --json benchmarks/results/accuracy/expression_filter_sweep.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MIN_CUTOFFS_HZ = (1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
BETAS = (0.0, 1.0, 3.0, 10.0)


def _series(path: Path, backend: Any, face_model: Any, reference: Any, max_frames: int) -> dict[str, np.ndarray]:
    """Unfiltered expression weights and references of one clip's frames with one fitted face."""
    from mlanet.edge.evaluation.expressions import collect_samples, eye_apertures, lip_gap, open_clip, target_indices
    from mlanet.edge.filters import FilterCfg
    from mlanet.edge.loading import open_detector
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.reconstruct import DEFAULT_FOV_DEG
    from mlanet.edge.tracking import TrackerCfg

    idx = target_indices(face_model.expression_names, face_model.arkit_names, source=face_model.model_id)
    cfg = PipelineCfg(fov_deg=DEFAULT_FOV_DEG, tracker=TrackerCfg(), filter=FilterCfg(enabled=False),
                      render_mode=None, overlays=(), meshes=False)
    source = open_clip(path)
    pipeline = FacePipeline(backend, face_model, cfg, detector=open_detector("full_range", False))
    try:
        samples, _ = collect_samples(source, pipeline, reference, max_frames=max_frames)
    finally:
        pipeline.close()
    used = [s for s in samples if s.faces_in_frame == 1 and s.reference is not None]
    if not used:
        raise SystemExit(f"{path}: no frame with one fitted face and a MediaPipe reference")
    e = np.stack([s.raw_expression for s in used])
    ref = np.stack([s.reference for s in used])
    return {"t": np.array([s.frame for s in used], np.float64) / float(source.fps or 25.0),
            "jaw": e[:, idx["jawOpen"]], "blink": (e[:, idx["eyeBlink_L"]] + e[:, idx["eyeBlink_R"]]) / 2.0,
            "gap": lip_gap(ref), "closure": -eye_apertures(ref).mean(axis=1)}


def _filter(values: np.ndarray, t: np.ndarray, min_cutoff: float | None, beta: float) -> np.ndarray:
    from mlanet.edge.filters import OneEuroFilter

    if min_cutoff is None:
        return values.copy()
    f = OneEuroFilter(min_cutoff=min_cutoff, beta=beta)
    return np.array([f(np.array([v]), float(ti))[0] for v, ti in zip(values, t)])


def score(series: dict[str, np.ndarray], min_cutoff: float | None, beta: float) -> dict[str, Any]:
    from mlanet.edge.evaluation.expressions import MIN_REFERENCE_RANGE, pearson

    out: dict[str, Any] = {}
    rough = []
    for shape, ref_name, range_key in (("jaw", "gap", "lip_gap"), ("blink", "closure", "eye_aperture")):
        w = _filter(series[shape], series["t"], min_cutoff, beta)
        ref = series[ref_name]
        varies = float(np.percentile(ref, 95) - np.percentile(ref, 5)) >= MIN_REFERENCE_RANGE[range_key]
        out[f"r_{shape}"] = pearson(w, ref)[0] if varies else None
        rough.append(float(np.median(np.abs(np.diff(w, n=2)))) if len(w) > 2 else None)
    out["roughness"] = {"jaw": rough[0], "blink": rough[1]}
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def sweep(clips: dict[str, dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    rows = []
    grid: list[tuple[float | None, float]] = [(None, 0.0)] + list(itertools.product(MIN_CUTOFFS_HZ, BETAS))
    for mc, beta in grid:
        per_clip = {name: score(s, mc, beta) for name, s in clips.items()}
        rows.append({
            "expression_min_cutoff": mc, "expression_beta": beta if mc is not None else None,
            "mean_r_jaw": _mean([c["r_jaw"] for c in per_clip.values()]),
            "mean_r_blink": _mean([c["r_blink"] for c in per_clip.values()]),
            "median_roughness_jaw": _mean([c["roughness"]["jaw"] for c in per_clip.values()]),
            "median_roughness_blink": _mean([c["roughness"]["blink"] for c in per_clip.values()]),
            "clips": per_clip,
        })
    return rows


def choose(rows: Sequence[dict[str, Any]], tolerance: float = 0.02) -> dict[str, Any]:
    """The least rough filtered setting whose mean r is within ``tolerance`` of the best filtered one, on both shapes.

    Args:
        rows: :func:`sweep`'s rows (the unfiltered row, ``expression_min_cutoff`` None, is ignored).

    Raises:
        ValueError: no filtered row has both correlations (no tuning clip exercises both shapes).
    """
    filtered = [r for r in rows if r["expression_min_cutoff"] is not None
                and r["mean_r_jaw"] is not None and r["mean_r_blink"] is not None]
    if not filtered:
        raise ValueError("no filtered setting has both a jawOpen and an eyeBlink correlation")
    best_jaw = max(r["mean_r_jaw"] for r in filtered)
    best_blink = max(r["mean_r_blink"] for r in filtered)
    near = [r for r in filtered if r["mean_r_jaw"] >= best_jaw - tolerance and r["mean_r_blink"] >= best_blink - tolerance]
    return min(near, key=lambda r: (r["median_roughness_jaw"] or 0.0) + (r["median_roughness_blink"] or 0.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlanet.benchmarks.expression_filter_sweep", description=__doc__.split("\n")[0])
    p.add_argument("--tune", nargs="+", required=True, help="clips the setting is chosen on")
    p.add_argument("--held-out", nargs="*", default=[], help="clips scored for the record only")
    p.add_argument("--max-frames", type=int, default=150)
    p.add_argument("--tolerance", type=float, default=0.02, help="r below the best filtered setting's still accepted")
    p.add_argument("--json", required=True)
    args = p.parse_args(argv)

    from mlanet.edge.evaluation.expressions import REFERENCE_INPUT_SIZE
    from mlanet.edge.evaluation.jitter import WindowReference
    from mlanet.edge.loading import native_stderr_quiet, open_model
    from mlanet.run_environment import environment

    backend, face_model = open_model(argparse.Namespace(weights=None, untrained=None, device="cpu", face_model=None,
                                                        backend="auto"))
    with native_stderr_quiet(True):
        reference = WindowReference(roi_scale=backend.metadata.preprocess.roi_scale, input_size=REFERENCE_INPUT_SIZE)
    try:
        data = {name: {Path(c).name: _series(Path(c), backend, face_model, reference, args.max_frames) for c in clips}
                for name, clips in (("tune", args.tune), ("held_out", args.held_out))}
    finally:
        reference.close()
        backend.close()
    result: dict[str, Any] = {"benchmark": "expression filter sweep", "protocol": __doc__, "environment": environment(),
                              "weights": str(backend.metadata.source), "max_frames": args.max_frames}
    for name, clips in data.items():
        if clips:
            result[name] = sweep(clips)
    tune = result["tune"]
    best = choose(tune, args.tolerance)
    result["rule"] = {"tolerance": args.tolerance, "doc": choose.__doc__}
    result["chosen_on_tune"] = {k: best[k] for k in ("expression_min_cutoff", "expression_beta", "mean_r_jaw",
                                                     "mean_r_blink", "median_roughness_jaw", "median_roughness_blink")}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"{'cutoff':>6} {'beta':>5} | tune: r_jaw r_blink rough_jaw rough_blink | held out: r_jaw r_blink", file=sys.stdout)
    held = {(r["expression_min_cutoff"], r["expression_beta"]): r for r in result.get("held_out", [])}

    def f(x: float | None) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    for r in tune:
        h = held.get((r["expression_min_cutoff"], r["expression_beta"]), {})
        print(f"{str(r['expression_min_cutoff']):>6} {str(r['expression_beta']):>5} | {f(r['mean_r_jaw'])} {f(r['mean_r_blink'])} "
              f"{f(r['median_roughness_jaw'])} {f(r['median_roughness_blink'])} | {f(h.get('mean_r_jaw'))} {f(h.get('mean_r_blink'))}")
    print(f"chosen on the tuning clips: {result['chosen_on_tune']}")
    print(f"json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
