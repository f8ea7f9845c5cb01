"""Expression tracking on video: do the fitted blendshape weights follow the face?

Run (:func:`evaluate_clip`): the edge pipeline (:class:`mlanet.edge.pipeline.FacePipeline`, the
model opened as ``mlanet-video`` opens it, no rendering, temporal filter on as in
``mlanet-video``) goes over the clip once (every ``every``-th frame, at most ``max_frames`` of
them). On every frame where the pipeline fits exactly one face, MediaPipe face mesh is run on a
window around that face's crop (:class:`mlanet.edge.evaluation.jitter.WindowReference`: 468 points, static
images, a result centred outside the track's crop, i.e. another face, is discarded). Frames with
no face or with more than one fitted face are skipped (counted by reason, :data:`SKIP_REASONS`):
the pooled series must come from one face at a time.

Reference measures (pure functions on (..., 468, 2) MediaPipe points, any pixel unit; the
results are ratios of two distances, so they do not depend on the face's size in the image):

* lip gap (:func:`lip_gap`): ``|p13 - p14| / |p10 - p152|``, the distance between the inner-lip
  midpoints (upper 13, lower 14) over the face height (forehead top 10 to chin 152);
* eye aperture (:func:`eye_apertures`): per eye, the vertical lid distance over the eye's width:
  subject's left eye ``|p386 - p374| / |p263 - p362|``, subject's right eye
  ``|p159 - p145| / |p33 - p133|`` (the sides of :mod:`mlanet.data.labels.correspondence`:
  ``MP468_LEFT_EYE`` / ``MP468_RIGHT_EYE`` are the subject's left / right); the headline uses the
  mean of both eyes. The fitted ``eyeBlink_L`` (ARKit ``eyeBlinkLeft``) is the subject's left eye.

Summary per clip (:func:`expression_summary`), on the frames used (one fitted face with a
MediaPipe reference), pooled over tracks:

* ``jaw_open_vs_lip_gap``: Pearson r of the fitted ``jawOpen`` with the lip gap (target
  :data:`TARGETS`, >= 0.8);
* ``eye_blink_vs_eye_closure``: Pearson r of ``mean(eyeBlink_L, eyeBlink_R)`` with the *negative*
  mean eye aperture (target >= 0.6); per eye as a diagnostic (``eye_blink_per_eye``);
* the same correlations of the per-frame fit before the temporal filter (``unfiltered``);
* min, max, mean and percentiles of ``jawOpen``, ``eyeBlink`` (mean of both), each blink, the lip
  gap and the mean eye aperture;
* ``out_of_range``: the fraction of expression weights outside [0, 1] over all shapes and every
  face the pipeline fitted (filtered, as written by ``mlanet-video``, and unfiltered; target 0);
* a warning where the reference hardly varies (:data:`MIN_REFERENCE_RANGE`: a clip whose mouth
  never opens does not test ``jawOpen``, its r is mostly noise);
* ``shapes_following``: a diagnostic, the :data:`TOP_SHAPES` expression shapes (filtered) whose weights
  correlate best with the lip gap and with the eye closure. When jawOpen misses its target but
  ``mouthLowerDown_*`` follows the lip gap, the face's mouth is opened by the wrong shapes, not left shut.

A correlation is ``None`` with a ``reason`` when it is undefined: fewer than :data:`MIN_FRAMES`
frames, or a series that is constant over them. JSON records never hold NaN.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence, TextIO

import numpy as np

from mlanet.errors import MLANetError
from mlanet.eval.face_measures import (  # noqa: F401  (re-exported: the measures this evaluation reports)
    MP468_EYES,
    MP468_FACE_HEIGHT,
    MP468_INNER_LIP,
    eye_apertures,
    face_height,
    lip_gap,
    mean_eye_aperture,
)

if TYPE_CHECKING:  # torch and the runtime are imported only when a clip is run
    from mlanet.preprocess import CropBox
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.backends.base import InferenceBackend
    from mlanet.edge.frames import FrameSource
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.types import Detection, Frame, FrameResult
    from mlanet.edge.evaluation.jitter import WindowReference

#: Expression shapes the benchmark reads: the face model's name, or its ARKit name.
TARGET_SHAPES: dict[str, str] = {"jawOpen": "jawOpen", "eyeBlink_L": "eyeBlinkLeft", "eyeBlink_R": "eyeBlinkRight"}

#: Headline correlations and their targets (Pearson r at least this).
TARGETS: dict[str, float] = {"jaw_open_vs_lip_gap": 0.8, "eye_blink_vs_eye_closure": 0.6}

#: Fewest frames a correlation is computed on.
MIN_FRAMES = 10

#: A series whose standard deviation is at most this times max(1, max |value|) is constant (float32 rounding).
CONSTANT_TOLERANCE = 1e-6

#: Reference spread (p95 - p5 over the frames used) below which a clip barely exercises a shape: a warning,
#: the correlation is then mostly the reference's own noise (heuristic; MediaPipe's lip gap of a closed,
#: talking-free mouth varies by ~0.005, a blink moves the eye aperture by ~0.2).
MIN_REFERENCE_RANGE: dict[str, float] = {"lip_gap": 0.02, "eye_aperture": 0.05}

#: Shapes listed per reference in the ``shapes_following`` diagnostic.
TOP_SHAPES = 5

#: Pixels of the reference's square window image (the face spans ~180 px of it, about MediaPipe's
#: 192 px landmark input, so the eyelids are not blurred by downsampling).
REFERENCE_INPUT_SIZE = 512

#: Percentiles reported for each series.
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)

#: Why a processed frame is not used (keys of ``skipped``).
SKIP_REASONS: dict[str, str] = {
    "no_face": "the pipeline fitted no face",
    "multiple_faces": "the pipeline fitted more than one face (the series must come from one face; frame skipped)",
    "no_reference": "MediaPipe face mesh found no face, or another face, around the fitted face's crop",
}

PROTOCOL = (
    "Expression tracking: the edge pipeline (as mlanet-video, temporal filter on) over every {every}-th frame; on frames "
    "with exactly one fitted face, MediaPipe face mesh (468 points, static images) on a window around that face's crop. "
    "Pearson r over the frames used of the fitted jawOpen with the inner-lip gap |p13-p14|/|p10-p152| (target >= {jaw:g}) "
    "and of mean(eyeBlink_L, eyeBlink_R) with minus the mean eye aperture (|p386-p374|/|p263-p362| and "
    "|p159-p145|/|p33-p133|; target >= {blink:g}); fraction of expression weights outside [0, 1] over all shapes and "
    "fitted faces (target 0). r is null (with a reason) on fewer than {n} frames or a constant series."
)

DEFINITIONS: dict[str, Any] = {
    "lip_gap": "|p13 - p14| / |p10 - p152| of MediaPipe's 468 points (inner-lip midpoints over forehead-to-chin height)",
    "eye_aperture": "per eye |upper lid - lower lid| / |outer corner - inner corner|: subject's left (386, 374, 263, "
    "362), subject's right (159, 145, 33, 133); eye_aperture = mean of both",
    "eye_closure": "minus eye_aperture",
    "eyeBlink": "mean(eyeBlink_L, eyeBlink_R) of the fit",
    "filtered": "parameters after the temporal filter (FaceFit.params), as mlanet-video writes them; the headline",
    "unfiltered": "the per-frame fit before the temporal filter (FaceFit.raw_params)",
    "pearson_r": "Pearson correlation over the frames used, pooled over tracks; null (with a reason) on fewer than "
    f"{MIN_FRAMES} frames or a constant series",
    "frames_used": "frames where the pipeline fitted exactly one face and MediaPipe found that face",
    "out_of_range": "fraction of expression weights < 0 or > 1 over all shapes and every face the pipeline fitted",
    "skipped": SKIP_REASONS,
}


# ------------------------------------------------------------------------------- statistics
def pearson(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, min_n: int = MIN_FRAMES,
            names: tuple[str, str] = ("x", "y")) -> tuple[float | None, str | None]:
    """Pearson correlation of two (N,) series: ``(r, None)``, or ``(None, reason)`` when undefined.

    Pairs with a non-finite value are dropped first. Undefined: fewer than ``min_n`` pairs, or a
    constant series over them, i.e. a standard deviation at most :data:`CONSTANT_TOLERANCE` x
    ``max(1, max |value|)`` (float32 rounding of a constant network output through the temporal
    filter is not a signal); the reason names the series by ``names``.
    ``r`` is clipped to [-1, 1].
    """
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    b = np.asarray(y, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"series of different lengths: {a.shape[0]} and {b.shape[0]}")
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < min_n:
        return None, f"too few frames: {n} < {min_n}"
    da, db = a - a.mean(), b - b.mean()
    for d, v, name in ((da, a, names[0]), (db, b, names[1])):
        if not np.sqrt(np.mean(d * d)) > CONSTANT_TOLERANCE * max(1.0, float(np.abs(v).max())):
            return None, f"{name} is constant over the {n} frames"
    r = float(np.dot(da, db) / math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db))))
    return max(-1.0, min(1.0, r)), None


def correlation_summary(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *,
                        x_name: str = "x", y_name: str = "y", target: float | None = None,
                        min_n: int = MIN_FRAMES) -> dict[str, Any]:
    """JSON-ready Pearson correlation of ``x`` with ``y`` (both (N,)).

    Returns ``{"r", "n", "reason", "target", "pass"}``: ``n`` the finite pairs; ``reason`` why
    ``r`` is None (the constant series named by ``x_name`` / ``y_name``), else None; ``pass``
    ``r >= target`` (None without a target or when ``r`` is undefined).
    """
    r, reason = pearson(x, y, min_n, names=(x_name, y_name))
    a, b = np.asarray(x, np.float64).reshape(-1), np.asarray(y, np.float64).reshape(-1)
    n = int((np.isfinite(a) & np.isfinite(b)).sum())
    passed = None if (r is None or target is None) else bool(r >= target)
    return {"r": r, "n": n, "reason": reason, "target": target, "pass": passed}


def distribution(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """``n``, ``min``, ``max``, ``mean`` and percentiles ``p5`` .. ``p95`` of the finite values (None when none)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    out: dict[str, float | int | None] = {"n": int(v.size)}
    if v.size == 0:
        return {**out, "min": None, "max": None, "mean": None, **{f"p{q}": None for q in PERCENTILES}}
    out.update(min=float(v.min()), max=float(v.max()), mean=float(v.mean()))
    out.update({f"p{q}": float(np.percentile(v, q)) for q in PERCENTILES})
    return out


def out_of_range(weights: np.ndarray) -> dict[str, Any]:
    """Expression weights outside [0, 1]: ``(N, K)`` -> ``fraction`` (None when empty), counts, extremes."""
    w = np.asarray(weights, dtype=np.float64)
    w = w.reshape(-1, w.shape[-1]) if w.ndim else w.reshape(-1, 1)
    n = int(w.size)
    if n == 0:
        return {"fraction": None, "n_values": 0, "n_below_0": 0, "n_above_1": 0, "min": None, "max": None,
                "shapes_out_of_range": 0}
    below, above = w < 0.0, w > 1.0
    bad = below | above | ~np.isfinite(w)
    return {"fraction": float(bad.sum() / n), "n_values": n, "n_below_0": int(below.sum()),
            "n_above_1": int(above.sum()), "min": float(np.nanmin(w)), "max": float(np.nanmax(w)),
            "shapes_out_of_range": int(bad.any(axis=0).sum())}


def target_indices(names: Sequence[str], arkit: Mapping[str, str | None] | None = None,
                   source: str = "the face model") -> dict[str, int]:
    """Positions of :data:`TARGET_SHAPES` among the expression ``names`` (by name, else by ARKit name).

    Raises:
        MLANetError: a shape is missing (the message names ``source``).
    """
    names = list(names)
    arkit = dict(arkit or {})
    out, missing = {}, []
    for ours, ark in TARGET_SHAPES.items():
        if ours in names:
            out[ours] = names.index(ours)
        elif ark in names:
            out[ours] = names.index(ark)
        elif (hit := [i for i, n in enumerate(names) if arkit.get(n) == ark]):
            out[ours] = hit[0]
        else:
            missing.append(ours)
    if missing:
        raise MLANetError(f"{source} has no expression shape(s) {', '.join(missing)} (nor their ARKit names); the "
                          "expression benchmark needs the ICT-FaceKit face model (mlanet assets build)")
    return out


def _correlations(expr: np.ndarray, idx: Mapping[str, int], gap: np.ndarray, apertures: np.ndarray) -> dict[str, Any]:
    jaw = expr[:, idx["jawOpen"]]
    blink_l, blink_r = expr[:, idx["eyeBlink_L"]], expr[:, idx["eyeBlink_R"]]
    return {
        "jaw_open_vs_lip_gap": correlation_summary(jaw, gap, x_name="jawOpen", y_name="the lip gap",
                                                   target=TARGETS["jaw_open_vs_lip_gap"]),
        "eye_blink_vs_eye_closure": correlation_summary((blink_l + blink_r) / 2.0, -apertures.mean(axis=1),
                                                        x_name="eyeBlink", y_name="the eye aperture",
                                                        target=TARGETS["eye_blink_vs_eye_closure"]),
        "eye_blink_per_eye": {
            "L": correlation_summary(blink_l, -apertures[:, 0], x_name="eyeBlink_L", y_name="the left eye aperture"),
            "R": correlation_summary(blink_r, -apertures[:, 1], x_name="eyeBlink_R", y_name="the right eye aperture"),
        },
    }


def shapes_following(expr: np.ndarray, reference: np.ndarray, names: Sequence[str],
                     top: int = TOP_SHAPES) -> list[dict[str, Any]]:
    """The ``top`` shapes whose weights (N, K) correlate best (Pearson r, highest first) with ``reference`` (N,).

    Shapes whose weights are constant over the frames are left out; fewer than :data:`MIN_FRAMES` frames
    or a constant reference give an empty list.
    """
    ref = np.asarray(reference, np.float64)
    rows: list[tuple[float, str]] = []
    for k, name in enumerate(names):
        r, _ = pearson(expr[:, k], ref)
        if r is not None:
            rows.append((float(r), str(name)))
    return [{"shape": name, "r": r} for r, name in sorted(rows, key=lambda t: -t[0])[:top]]


def expression_summary(
    expressions: np.ndarray,
    references: np.ndarray,
    names: Sequence[str],
    *,
    unfiltered: np.ndarray | None = None,
    all_expressions: np.ndarray | None = None,
    all_unfiltered: np.ndarray | None = None,
    arkit: Mapping[str, str | None] | None = None,
) -> dict[str, Any]:
    """Correlations, distributions and range check of one clip (definitions in the module docstring).

    Args:
        expressions: (N, K) fitted expression weights (filtered) on the N frames used.
        references: (N, 468, 2) MediaPipe points of the same frames (any pixel unit).
        names: the K expression names (must hold :data:`TARGET_SHAPES`, or their ARKit names via ``arkit``).
        unfiltered: (N, K) the same before the temporal filter (default: ``expressions``).
        all_expressions, all_unfiltered: (M, K) weights of every fitted face (for ``out_of_range``;
            default: those of the frames used).

    Returns:
        JSON-ready dict: ``frames_used``, ``correlations`` and ``unfiltered`` (each
        ``jaw_open_vs_lip_gap``, ``eye_blink_vs_eye_closure`` (``r``, ``n``, ``reason``, ``target``,
        ``pass``), ``eye_blink_per_eye``), ``distributions`` (``jawOpen``, ``eyeBlink``,
        ``eyeBlink_L``, ``eyeBlink_R``, ``lip_gap``, ``eye_aperture``), ``out_of_range``
        (``filtered``, ``unfiltered``), ``targets`` (name -> pass, None when undefined), ``shapes_following``
        (``lip_gap`` and ``eye_closure``: :func:`shapes_following`) and ``warnings``.
    """
    K = len(names)
    expr = np.asarray(expressions, np.float64).reshape(-1, K)
    raw = expr if unfiltered is None else np.asarray(unfiltered, np.float64).reshape(-1, K)
    refs = np.asarray(references, np.float64)
    n = expr.shape[0]
    if raw.shape[0] != n or refs.shape[0] != n:
        raise ValueError(f"{n} expression rows, {raw.shape[0]} unfiltered rows and {refs.shape[0]} references")
    idx = target_indices(names, arkit)
    gap = lip_gap(refs) if n else np.zeros(0)
    apertures = eye_apertures(refs) if n else np.zeros((0, 2))
    corr = _correlations(expr, idx, gap, apertures)
    all_f = expr if all_expressions is None else np.asarray(all_expressions, np.float64).reshape(-1, K)
    if all_unfiltered is not None:
        all_r = np.asarray(all_unfiltered, np.float64).reshape(-1, K)
    else:
        all_r = raw if all_expressions is None else all_f
    rng = {"filtered": out_of_range(all_f), "unfiltered": out_of_range(all_r)}
    blink = (expr[:, idx["eyeBlink_L"]] + expr[:, idx["eyeBlink_R"]]) / 2.0
    targets: dict[str, bool | None] = {k: corr[k]["pass"] for k in TARGETS}
    frac = rng["filtered"]["fraction"]
    targets["out_of_range_zero"] = None if frac is None else bool(frac == 0.0)
    warnings = [f"{k}: r undefined ({corr[k]['reason']})" for k in TARGETS if corr[k]["r"] is None]
    dists = {
        "jawOpen": distribution(expr[:, idx["jawOpen"]]),
        "eyeBlink": distribution(blink),
        "eyeBlink_L": distribution(expr[:, idx["eyeBlink_L"]]),
        "eyeBlink_R": distribution(expr[:, idx["eyeBlink_R"]]),
        "lip_gap": distribution(gap),
        "eye_aperture": distribution(apertures.mean(axis=1)),
    }
    for target, key in (("jaw_open_vs_lip_gap", "lip_gap"), ("eye_blink_vs_eye_closure", "eye_aperture")):
        p5, p95, lo = dists[key]["p5"], dists[key]["p95"], MIN_REFERENCE_RANGE[key]
        if corr[target]["r"] is not None and p5 is not None and p95 is not None and p95 - p5 < lo:
            warnings.append(f"{target}: the {key.replace('_', ' ')} hardly varies in this clip (p5-p95 range "
                            f"{p95 - p5:.3f} < {lo:g}): r mostly measures noise")
    return {
        "frames_used": int(n),
        "correlations": corr,
        "unfiltered": _correlations(raw, idx, gap, apertures),
        "distributions": dists,
        "out_of_range": rng,
        "targets": targets,
        "shapes_following": {"lip_gap": shapes_following(expr, gap, names),
                             "eye_closure": shapes_following(expr, -apertures.mean(axis=1), names)},
        "warnings": warnings,
    }


# ------------------------------------------------------------------------------- video loop
@dataclass
class FaceSample:
    """One face the pipeline fitted in one frame.

    Attributes:
        frame: frame index in the clip. track: the tracker's id. faces_in_frame: faces fitted in
        that frame. expression, raw_expression: (K,) weights after / before the temporal filter.
        reference: (468, 2) MediaPipe points in frame pixels, or None (not run on multi-face
        frames, or no same face found).
    """

    frame: int
    track: int
    faces_in_frame: int
    expression: np.ndarray
    raw_expression: np.ndarray
    reference: np.ndarray | None


def collect_samples(
    source: Iterable[Frame],
    pipeline: FacePipeline,
    reference: Callable[[np.ndarray, CropBox], np.ndarray | None] | None,
    *,
    every: int = 1,
    max_frames: int | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> tuple[list[FaceSample], dict[str, Any]]:
    """Run ``pipeline`` over every ``every``-th frame of ``source`` (at most ``max_frames`` of them).

    ``reference(image, crop_box) -> (468, 2) | None`` runs only on frames with exactly one fitted
    face. Returns ``(samples, info)``: one :class:`FaceSample` per fitted face; ``info``:
    ``frames`` processed, ``frames_with_face``, ``skipped`` (count per :data:`SKIP_REASONS` key),
    ``tracks`` (ids seen), ``scene_cuts`` (frame indices).
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    expr_slice = pipeline.layout.slices()["expression"]
    samples: list[FaceSample] = []
    skipped = {k: 0 for k in SKIP_REASONS}
    cuts: list[int] = []
    with_face = [0]

    def sink(result: FrameResult) -> None:
        faces = result.faces
        if result.scene_cut:
            cuts.append(int(result.frame.index))
        if not faces:
            skipped["no_face"] += 1
            return
        with_face[0] += 1
        ref = None
        if len(faces) > 1:
            skipped["multiple_faces"] += 1
        else:
            ref = reference(result.frame.image, faces[0].box) if reference is not None else None
            if ref is None:
                skipped["no_reference"] += 1
        for f in faces:
            samples.append(FaceSample(
                int(result.frame.index), int(f.track_id), len(faces),
                np.asarray(f.params[expr_slice], np.float64), np.asarray(f.raw_params[expr_slice], np.float64),
                None if ref is None else np.asarray(ref, np.float64),
            ))

    frames = itertools.islice(source, 0, None, every) if every > 1 else source
    n = pipeline.run(frames, sink, max_frames=max_frames, on_frame=on_frame)
    return samples, {"frames": int(n), "frames_with_face": with_face[0], "skipped": skipped,
                     "tracks": sorted({s.track for s in samples}), "scene_cuts": cuts}


def clip_record(samples: Sequence[FaceSample], info: Mapping[str, Any], names: Sequence[str],
                arkit: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """:func:`expression_summary` of collected samples plus counts and per-frame ``records``."""
    used = [s for s in samples if s.faces_in_frame == 1 and s.reference is not None]
    K = len(names)

    def stack(rows: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.stack(rows) if rows else np.zeros((0, *shape))

    refs = stack([s.reference for s in used], (468, 2))  # type: ignore[misc]
    summary = expression_summary(
        stack([s.expression for s in used], (K,)), refs, names,
        unfiltered=stack([s.raw_expression for s in used], (K,)),
        all_expressions=stack([s.expression for s in samples], (K,)),
        all_unfiltered=stack([s.raw_expression for s in samples], (K,)), arkit=arkit,
    )
    idx = target_indices(names, arkit)
    gap = lip_gap(refs) if used else np.zeros(0)
    ap = eye_apertures(refs) if used else np.zeros((0, 2))

    def num(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    records = [
        {"frame": s.frame, "track": s.track, **{k: float(s.expression[i]) for k, i in idx.items()},
         "lip_gap": num(gap[j]), "eye_aperture_L": num(ap[j, 0]), "eye_aperture_R": num(ap[j, 1])}
        for j, s in enumerate(used)
    ]
    warnings = list(summary.pop("warnings"))
    if info["skipped"].get("multiple_faces"):
        warnings.insert(0, f"{info['skipped']['multiple_faces']} frame(s) with more than one fitted face skipped")
    return {
        "frames": int(info["frames"]),
        "frames_with_face": int(info["frames_with_face"]),
        "frames_used": summary.pop("frames_used"),
        "skipped": dict(info["skipped"]),
        "n_tracks": len(info["tracks"]),
        "tracks_used": sorted({s.track for s in used}),
        "scene_cuts": list(info["scene_cuts"]),
        **summary,
        "warnings": warnings,
        "records": records,
    }


def open_clip(path: str | Path) -> FrameSource:
    """The clip's frame source (a video file, or a folder of frames read as one sequence).

    Raises:
        MLANetError: missing path, not a video (unreadable or damaged), or a single still image.
    """
    from mlanet.edge.frames import ImageSource, open_source

    p = Path(path).expanduser()
    if not p.exists():
        raise MLANetError(f"{path}: no such video file or folder")
    source = open_source(p, image_sequence=True)
    if isinstance(source, ImageSource):
        source.close()
        raise MLANetError(f"{path}: a still image, not a video (expression tracking needs a clip)")
    return source


def mirrored_frames(frames: Iterable[Frame]) -> Iterable[Frame]:
    """The frames flipped left-right (``image[:, ::-1]``, contiguous); their YUV planes are dropped."""
    from dataclasses import replace

    for frame in frames:
        yield replace(frame, image=np.ascontiguousarray(frame.image[:, ::-1]), yuv420=None)


def evaluate_clip(
    path: str | Path,
    backend: InferenceBackend,
    face_model: MorphableModel,
    cfg: PipelineCfg,
    *,
    detector: Callable[[np.ndarray], Sequence[Detection]] | None = None,
    reference: WindowReference | None = None,
    every: int = 1,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    mirror: bool = False,
) -> dict[str, Any]:
    """Expression tracking of one clip: a fresh pipeline, one pass, :func:`clip_record`.

    ``mirror``: flip every frame left-right before the pipeline and the reference see it (``mirrored``
    in the record). A face opens its jaw as far in a mirror, so jawOpen's correlation with the lip gap
    should not change; a network whose weights depend on which way the face turns shows it here. The
    reference is not exactly mirror-symmetric either (MediaPipe's lip gap on the mirrored Obama clip
    follows the original's at r 0.88, its eye aperture at r 0.27): to separate the two, compare the
    records' per-frame weights of a plain and a mirrored run.

    Args:
        path: a video file or a folder of frames.
        backend, face_model: as from :func:`mlanet.edge.loading.open_model`.
        cfg: a :class:`~mlanet.edge.pipeline.PipelineCfg` (rendering is switched off).
        detector: the tracker's face detector (default MediaPipe full-range); closed at the end.
        reference: the MediaPipe reference (default a :class:`~mlanet.edge.evaluation.jitter.WindowReference`
            with :data:`REFERENCE_INPUT_SIZE`, made and closed here; one passed in is not closed).
        every, max_frames, progress: see :func:`collect_samples`; ``progress(done, total)``.

    Raises:
        MLANetError: the clip cannot be read, or the pipeline fitted no face in any frame.
    """
    from dataclasses import replace

    from mlanet.edge.pipeline import FacePipeline
    from mlanet.fileutil import file_sha256
    from mlanet.edge.evaluation.jitter import WindowReference

    path = Path(path).expanduser()
    names = list(face_model.expression_names)
    arkit = face_model.arkit_names
    target_indices(names, arkit, source=f"face model {face_model.model_id}")
    cfg = replace(cfg, render_mode=None, overlays=(), meshes=False)
    source = open_clip(path)
    pipeline = None
    own_reference = reference is None
    t0 = time.perf_counter()
    try:
        pipeline = FacePipeline(backend, face_model, cfg, detector=detector)
        if reference is None:
            reference = WindowReference(roi_scale=pipeline.preprocess.roi_scale, input_size=REFERENCE_INPUT_SIZE)
        total = -(-int(source.n_frames or 0) // every)
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        done = [0]

        def on_frame(_: FrameResult) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total or done[0])

        frames: Iterable[Frame] = mirrored_frames(source) if mirror else source
        samples, info = collect_samples(frames, pipeline, reference, every=every, max_frames=max_frames,
                                        on_frame=on_frame)
        size, fps = source.size, source.fps
    finally:
        if pipeline is not None:
            pipeline.close()
        if own_reference and reference is not None:
            reference.close()
        source.close()
    if info["frames_with_face"] == 0:
        raise MLANetError(f"{path}: no face found in any of the {info['frames']} frame(s) processed")
    return {
        "video": str(path),
        "sha256": file_sha256(path) if path.is_file() else None,
        "width": int(size[0]) if size else None,
        "height": int(size[1]) if size else None,
        "fps": float(fps) if fps else None,
        "every": int(every),
        "mirrored": bool(mirror),
        "elapsed_s": time.perf_counter() - t0,
        **clip_record(samples, info, names, arkit),
    }


# ---------------------------------------------------------------------------------------- CLI
def _fmt_r(c: Mapping[str, Any]) -> str:
    if c["r"] is None:
        return "n/a"
    return f"{c['r']:+.2f} {'ok' if c['pass'] else 'FAIL'}"


def _fmt_dist(d: Mapping[str, Any]) -> str:
    keys = ("min", "p50", "p95", "max")
    return "n/a" if d["n"] == 0 else "/".join(f"{d[k]:.2f}" for k in keys)


def print_table(clips: Sequence[Mapping[str, Any]], out: TextIO | None = None) -> None:
    """The readable per-clip table (stdout by default)."""
    out = out or sys.stdout
    print(f"Expression tracking (Pearson r on frames with one fitted face and a MediaPipe reference; targets: jawOpen "
          f"~ lip gap >= {TARGETS['jaw_open_vs_lip_gap']:g}, eyeBlink ~ -eye aperture >= "
          f"{TARGETS['eye_blink_vs_eye_closure']:g}, weights outside [0,1] = 0)", file=out)
    print(f"  {'clip':<28} {'frames':>6} {'used':>5} | {'jawOpen r':>10} | {'eyeBlink r':>10} | "
          f"{'jawOpen min/p50/p95/max':>23} | {'eyeBlink min/p50/p95/max':>24} | {'outside [0,1]':>13}", file=out)
    for c in clips:
        corr, dist = c["correlations"], c["distributions"]
        frac = c["out_of_range"]["filtered"]["fraction"]
        name = Path(c["video"]).name + (" (mirrored)" if c.get("mirrored") else "")
        print(f"  {name[:28]:<28} {c['frames']:>6} {c['frames_used']:>5} | "
              f"{_fmt_r(corr['jaw_open_vs_lip_gap']):>10} | {_fmt_r(corr['eye_blink_vs_eye_closure']):>10} | "
              f"{_fmt_dist(dist['jawOpen']):>23} | {_fmt_dist(dist['eyeBlink']):>24} | "
              f"{'n/a' if frac is None else f'{100 * frac:.2f}%':>13}", file=out)
        un = c["unfiltered"]
        print(f"    unfiltered: jawOpen r {_fmt_r(un['jaw_open_vs_lip_gap'])}, eyeBlink r "
              f"{_fmt_r(un['eye_blink_vs_eye_closure'])}; skipped: "
              + (", ".join(f"{k} {v}" for k, v in c["skipped"].items() if v) or "none"), file=out)
        following = c.get("shapes_following", {}).get("lip_gap", [])[:3]
        if following:
            print("    shapes that follow the lip gap best: " + ", ".join(f"{d['shape']} {d['r']:+.2f}" for d in following),
                  file=out)
        for w in c["warnings"]:
            print(f"    warning: {w}", file=out)


def cmd_expressions(args: argparse.Namespace) -> int:
    """``mlanet eval expressions``: check inputs, run every clip, write the JSON, print the table."""
    from mlanet.fileutil import check_writable_file, write_json_atomic

    check_writable_file(args.json, "--json")
    for video in args.video:  # every clip is checked before the model loads
        open_clip(video).close()
    verbose = bool(getattr(args, "verbose", False))
    with warnings.catch_warnings():
        if not verbose:  # MediaPipe's protobuf deprecation notice, as mlanet-video hides it
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning)
        clips, result = _run(args, verbose)
    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    print_table(clips)
    print(f"json: {json_path}")
    return 0


def _run(args: argparse.Namespace, verbose: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from dataclasses import replace

    from mlanet.run_environment import environment
    from mlanet.edge.filters import FilterCfg
    from mlanet.edge.loading import native_stderr_quiet, open_detector, open_model
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.edge.reconstruct import DEFAULT_FOV_DEG
    from mlanet.edge.tracking import TrackerCfg
    from mlanet.fileutil import file_sha256
    from mlanet.eval.cli import _progress
    from mlanet.edge.evaluation.jitter import WindowReference, pipeline_description

    backend, face_model = open_model(args)
    try:  # a face model without the shapes fails before any clip runs
        target_indices(face_model.expression_names, face_model.arkit_names, source=f"face model {face_model.model_id}")
    except MLANetError:
        backend.close()
        raise
    cfg = PipelineCfg(fov_deg=DEFAULT_FOV_DEG if args.fov is None else args.fov,
                      tracker=replace(TrackerCfg(), max_faces=args.max_faces, detect_every=args.detect_every),
                      filter=FilterCfg(enabled=True), render_mode=None, overlays=(), meshes=False)
    clips = []
    reference = None
    try:
        roi_scale = backend.metadata.preprocess.roi_scale
        with native_stderr_quiet(not verbose):
            reference = WindowReference(roi_scale=roi_scale, input_size=REFERENCE_INPUT_SIZE,
                                        refine=args.reference_mesh == "refined")
        for video in args.video:
            clips.append(evaluate_clip(video, backend, face_model, cfg, detector=open_detector(args.detector, verbose),
                                       reference=reference, every=args.every, max_frames=args.max_frames,
                                       progress=_progress, mirror=args.mirror))
    finally:
        if reference is not None:
            reference.close()
        backend.close()
    meta = backend.metadata
    source = Path(meta.source)
    result = {
        "benchmark": "video expression tracking",
        "protocol": PROTOCOL.format(every=args.every, jaw=TARGETS["jaw_open_vs_lip_gap"],
                                    blink=TARGETS["eye_blink_vs_eye_closure"], n=MIN_FRAMES),
        "targets": {**TARGETS, "out_of_range_fraction": 0.0},
        "definitions": DEFINITIONS,
        "environment": environment(),
        "reference": {**reference.describe(), "landmarks": {"inner_lip": MP468_INNER_LIP, "face_height": MP468_FACE_HEIGHT,
                                                            "eyes": MP468_EYES}},
        "pipeline": {**pipeline_description(cfg), "detector": args.detector, "device": args.device, "every": args.every,
                     "max_frames": args.max_frames, "mirrored": bool(args.mirror),
                     "mirror_average": bool(getattr(args, "mirror_average", False))},
        "model": {k: v for k, v in meta.to_dict().items() if k in ("model_name", "backend", "untrained", "preprocess")},
        "weights": {"source": str(source), "sha256": file_sha256(source) if source.is_file() else None,
                    "untrained": bool(meta.runtime.get("untrained", False))},
        "face_model": face_model.describe(),
        "clips": clips,
    }
    return clips, result


def add_expressions_parser(sub: Any) -> None:
    """Register ``mlanet eval expressions``."""
    from mlanet.edge.loading import add_model_arguments, float_in, positive_int
    from mlanet.edge.reconstruct import FOV_RANGE_DEG

    e = sub.add_parser(
        "expressions",
        help="expression tracking on video: correlation of jawOpen / eyeBlink with MediaPipe's lip gap / eye aperture",
        description=(
            "Runs the edge pipeline (as mlanet-video, no rendering) over each clip and, on frames with one fitted face, "
            "MediaPipe face mesh around that face; reports the Pearson r of the fitted jawOpen with the inner-lip gap "
            f"(target >= {TARGETS['jaw_open_vs_lip_gap']:g}) and of mean(eyeBlink_L, eyeBlink_R) with minus the eye "
            f"aperture (target >= {TARGETS['eye_blink_vs_eye_closure']:g}), the spread of those weights and the "
            "fraction of expression weights outside [0, 1]. Frames with several faces are skipped."
        ),
    )
    e.add_argument("video", nargs="+", help="video file(s) (or folders of frames)")
    e.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    add_model_arguments(e)
    g = e.add_argument_group("pipeline")
    g.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                   help="process at most N frames of each clip (after --every)")
    g.add_argument("--every", type=positive_int, default=1, metavar="K",
                   help="use every K-th frame of the clip (the pipeline sees only those; default 1)")
    g.add_argument("--max-faces", type=positive_int, default=4, help="most faces tracked at once (default 4)")
    g.add_argument("--detect-every", type=positive_int, default=10, metavar="N",
                   help="re-run the face detector every N processed frames (default 10)")
    g.add_argument("--detector", choices=("full_range", "short_range"), default="full_range",
                   help="MediaPipe detector model of the tracker (default full_range)")
    g.add_argument("--fov", type=float_in(*FOV_RANGE_DEG, unit=" degrees"), default=None, metavar="DEG",
                   help="horizontal field of view of the frame camera (default: mlanet-video's default)")
    g.add_argument("--mirror", action="store_true",
                   help="flip every frame left-right before the pipeline and MediaPipe see it: a consistency check (a "
                   "face opens its jaw as far in a mirror; MediaPipe's own measures move a little too, so compare "
                   "the per-frame weights of a plain and a mirrored run)")
    e.add_argument("--reference-mesh", choices=("unrefined", "refined"), default="unrefined",
                   help="MediaPipe mesh that measures the lip gap and eye aperture: the plain face mesh (default, the "
                   "measure of the recorded results) or the attention mesh (refine_landmarks=True), whose lids meet on "
                   "a closed eye where the plain mesh's stay apart (aperture 0.12-0.15 on the most closed clip frames)")
    e.set_defaults(func=cmd_expressions)
