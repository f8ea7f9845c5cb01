"""Fit the face model's landmark definitions from training data (``mlanet assets landmarks``).

Definitions made here (:mod:`mlanet.morphable.landmarks.definitions` stores them; :mod:`mlanet.morphable.landmarks.file` ships them):

``ibug68``
    iBUG / Multi-PIE 68 points as 300-W annotates them. Jaw points 0-7 and 9-16 follow the
    silhouette along contour lines through ICT-FaceKit's jaw vertices; the 51 inner points are
    refitted to 300-W's manual points (start: ICT's vertices).
``aflw2000_68``
    The 68 points of AFLW2000-3D's ground truth (fixed Basel Face Model keypoints; their jaw
    does not follow the silhouette). Fitted to the 3DDFA_V2 teacher's 68 points (which follow
    that definition) on 300-W and AFLW training crops, never on AFLW2000-3D.
``aflw21``
    AFLW's 21 manual points (ear lobes, eye centres, ...), fitted to the AFLW training crops'
    manual points.
``mtfl5``
    MTFL's 5 points (eye centres, nose tip, mouth corners), fitted to MTFL's manual points.

Method, for every definition: fit the face model (pose, identity, expression;
:func:`~mlanet.morphable.landmarks.fit.fit_landmarks`) to each training face's points of known definitions, then
choose for each point of the definition being fitted the surface point whose projections
through all fitted faces best match that point's 2D annotations (robust reprojection error,
:func:`~mlanet.morphable.landmarks.fit.reprojection_surface_points`). Two rounds (the second refits the faces
with the first round's definitions); finally left/right twins are made mirror images of each
other on the mean face (:func:`symmetrise`). Only 2D annotations enter, so points hidden by the
face itself (a far-side jaw point of AFLW2000-3D's definition) are placed as 2D benchmarks
score them.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mlanet.eval.face_measures import IBUG68_EYELID_ROWS
from mlanet.preprocess import CropBox, box_from_points
from mlanet.morphable.landmarks import definitions as sl
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.landmarks.fit import (
    LandmarkFit,
    LandmarkFitSettings,
    Observation,
    fit_landmarks,
    reprojection_surface_points,
)
from mlanet.morphable.model import MorphableModel

log = logging.getLogger(__name__)
ProgressFn = Callable[[str], None]

#: Crop pixels of every fit here (the standard crop camera at this input size).
FIT_SIZE = 224
#: iBUG-68 rows that follow the silhouette in ``ibug68`` (jaw without the chin).
IBUG68_CONTOUR_ROWS = tuple(range(0, 8)) + tuple(range(9, 17))

#: Terms of the data each definition is fitted on.
TEACHER_TERMS = (
    "derived from 3DDFA_V2 MobileNet x0.5 predictions (weights research use only, trained on 300W-LP; Basel Face "
    "Model keypoint bases academic, non-commercial)"
)


# ----------------------------------------------------------------------------- start points
def _mean_point(mean: np.ndarray, vertex_ids: Sequence[int]) -> np.ndarray:
    return mean[np.asarray(vertex_ids)].mean(0)


def _ibug(lm: np.ndarray, mean: np.ndarray, i: int) -> np.ndarray:
    return mean[lm[i]]


def start_points(data: FaceModelData) -> dict[str, np.ndarray]:
    """Mean-frame starting points of ``aflw2000_68``, ``aflw21`` and ``mtfl5`` (from the ICT 68 vertices)."""
    m = data.mean_shape.astype(np.float64)
    lm = data.landmarks68.astype(np.int64)
    eye_r = _mean_point(m, lm[36:42])  # subject's right eye = image left on a frontal face
    eye_l = _mean_point(m, lm[42:48])
    mouth = _mean_point(m, lm[[62, 66]])
    # ear lobes: the lowest point of the ear on the mean face (the side region behind the jaw)
    ear = np.abs(m[:, 0]) > 0.8 * np.abs(m[lm[0], 0])
    ear &= m[:, 2] > m[lm[0], 2] + 0.01
    lobes = []
    for side in (-1.0, 1.0):
        s = ear & (side * m[:, 0] > 0)
        if s.any():
            cand = np.nonzero(s)[0]
            # bottom of the ear: the largest y (chin-wards) among points well out to the side
            far = cand[np.abs(m[cand, 0]) >= np.percentile(np.abs(m[cand, 0]), 60)]
            lobes.append(m[far[np.argmax(m[far, 1])]])
        else:
            lobes.append(m[lm[0 if side < 0 else 16]])
    aflw21 = np.stack([
        m[lm[17]], m[lm[19]], m[lm[21]], m[lm[22]], m[lm[24]], m[lm[26]],
        m[lm[36]], eye_r, m[lm[39]], m[lm[42]], eye_l, m[lm[45]],
        lobes[0], m[lm[31]], m[lm[30]], m[lm[35]], lobes[1],
        m[lm[48]], mouth, m[lm[54]], m[lm[8]],
    ])
    mtfl5 = np.stack([eye_r, eye_l, m[lm[30]], m[lm[48]], m[lm[54]]])
    return {"aflw2000_68": m[lm].copy(), "aflw21": aflw21, "mtfl5": mtfl5}


def definition_from_points(name: str, data: FaceModelData, points: np.ndarray, info: dict[str, Any] | None = None) -> sl.SurfaceDefinition:
    """A definition of fixed points: the closest surface points of the mean face to ``points`` (L, 3)."""
    tri, bary, _ = sl.closest_surface_points(points, data.mean_shape, data.triangles)
    return sl.SurfaceDefinition(name, tri, bary, np.zeros(len(points), np.uint8), None, dict(info or {})).normalised()


def contour_exclusion(data: FaceModelData) -> np.ndarray:
    """(V,) bool vertices never on a contour line (eyes, lips, brows)."""
    names = data.region_names
    ids = [names.index(n) for n in ("eyes", "lips", "brows") if n in names]
    return np.isin(data.region_labels, ids)


def ibug68_start(data: FaceModelData) -> sl.SurfaceDefinition:
    """``ibug68`` before fitting: ICT's 68 vertices, jaw points (not the chin) on contour lines."""
    tri, bary = sl.vertex_as_surface_point(data.landmarks68, data.triangles)
    rows = np.asarray(IBUG68_CONTOUR_ROWS)
    contour = np.zeros(68, np.uint8)
    contour[rows] = 1
    lines = sl.contour_lines(data.mean_shape, data.landmarks68[rows], exclude=contour_exclusion(data))
    cand = np.full((68, lines.shape[1]), -1, np.int32)
    cand[rows] = lines
    return sl.SurfaceDefinition("ibug68", tri, bary, contour, cand).normalised()


def symmetrise(d: sl.SurfaceDefinition, data: FaceModelData, flip: Sequence[int]) -> tuple[sl.SurfaceDefinition, list[float]]:
    """Make twins (``flip``) mirror images (x -> -x) of each other and midline points lie on x = 0.

    Each point becomes the mean of itself and its twin's mirror image on the mean face, moved to
    the closest surface point. Contour points keep their vertex and line. Returns the new
    definition and how far each point moved (mm).
    """
    m = data.mean_shape.astype(np.float64)
    p = d.points(m, data.triangles)
    mirror = np.array([-1.0, 1.0, 1.0])
    q = 0.5 * (p + p[np.asarray(flip)] * mirror)
    fixed = ~d.contour.astype(bool)
    tri, bary, _ = sl.closest_surface_points(q[fixed], m, data.triangles)
    new_tri, new_bary = d.triangle.copy(), d.barycentric.copy()
    new_tri[fixed], new_bary[fixed] = tri, bary
    out = sl.SurfaceDefinition(d.name, new_tri, new_bary, d.contour, d.contour_candidates, dict(d.info)).normalised()
    moved = np.linalg.norm(out.points(m, data.triangles) - p, axis=1) * 1000.0
    return out, [round(float(x), 2) for x in moved]


# ----------------------------------------------------------------------------- training faces
@dataclass
class FaceSet:
    """Faces of one training source, ready to fit (all points in crop pixels of a ``FIT_SIZE`` crop).

    manual: (N, L, 2) manual points of ``definition`` (NaN where not annotated); teacher: (N, 68, 2)
    the teacher's points (``aflw2000_68``'s definition); yaw_deg: (N,) the teacher's yaw.
    """

    source: str
    terms: str
    definition: str
    keys: list[str]
    manual: np.ndarray
    teacher: np.ndarray
    yaw_deg: np.ndarray
    notes: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "faces": len(self), "manual_definition": self.definition, "terms": self.terms,
                **self.notes}


def _teacher_points(teacher: Any, images: list[np.ndarray], boxes: list[CropBox]) -> tuple[np.ndarray, np.ndarray]:
    pred = teacher.predict(images, boxes, batch_size=128)
    return pred.points2d, np.degrees(pred.pose.yaw)


def _to_crop(points: np.ndarray, boxes: Sequence[CropBox]) -> np.ndarray:
    return np.stack([b.image_to_crop(np.asarray(p, dtype=np.float64), FIT_SIZE) for b, p in zip(boxes, points)])


def prepare_w300(root: str | Path, teacher: Any, progress: ProgressFn | None = None) -> FaceSet:
    """300-W faces: manual ``ibug68`` points; crop (and teacher crop) = the standard box of those points."""
    from mlanet.data.sources import open_source

    say = progress or (lambda m: None)
    reader = open_source("300w", root)
    keys, pts, boxes, t2, yaws = [], [], [], [], []
    for a in range(0, len(reader), 128):
        batch = [reader[i] for i in range(a, min(a + 128, len(reader)))]
        lm = [s.landmark_sets["ibug68"].points.astype(np.float64) for s in batch]
        bx = [box_from_points(p, math.sqrt(2.0)) for p in lm]
        tp, yw = _teacher_points(teacher, [s.image for s in batch], bx)
        keys += [s.key for s in batch]
        pts += lm
        boxes += bx
        t2.append(tp)
        yaws.append(yw)
    say(f"300-W: {len(keys)} faces, teacher run")
    return FaceSet("300w", reader.terms, "ibug68", keys, _to_crop(pts, boxes), _to_crop(np.concatenate(t2), boxes),
                   np.concatenate(yaws), {"crop": "sqrt(2) x max(w, h) of the manual 68-point box"})


def prepare_aflw(root: str | Path, teacher: Any, per_bin: int = 1500, seed: int = 0,
                 progress: ProgressFn | None = None) -> FaceSet:
    """AFLW training crops (never AFLW2000-3D: the reader drops crops numbered <= 4375): up to ``per_bin`` per
    |yaw| bin [0, 30], (30, 60], > 60 (AFLW's yaw), manual ``aflw21`` points (visible ones), teacher on the crop."""
    from mlanet.data.sources import open_source
    from mlanet.data.sources.aflw_crops import CROP_SIZE

    say = progress or (lambda m: None)
    reader = open_source("aflw-crops", root)
    yaw = np.array([abs(s.yaw_deg) for s in reader])
    rng = np.random.default_rng(seed)
    pick = []
    for lo, hi in ((-1, 30), (30, 60), (60, 1e9)):
        idx = np.nonzero((yaw > lo) & (yaw <= hi))[0]
        pick.append(np.sort(rng.choice(idx, size=min(per_bin, len(idx)), replace=False)))
    pick = np.concatenate(pick)
    box = CropBox(0.0, 0.0, float(CROP_SIZE))
    keys, pts, t2, yaws = [], [], [], []
    for a in range(0, len(pick), 256):
        batch = [reader[int(i)] for i in pick[a : a + 256]]
        tp, yw = _teacher_points(teacher, [s.image for s in batch], [box] * len(batch))
        keys += [s.key for s in batch]
        pts += [s.landmark_sets["aflw21"].points.astype(np.float64) for s in batch]
        t2.append(tp)
        yaws.append(yw)
    say(f"AFLW crops: {len(keys)} of {len(reader)} faces (per |yaw| bin <= {per_bin}, seed {seed}), teacher run")
    boxes = [box] * len(keys)
    return FaceSet("aflw-crops", reader.terms, "aflw21", keys, _to_crop(pts, boxes), _to_crop(np.concatenate(t2), boxes),
                   np.concatenate(yaws), {"sampled_per_yaw_bin": per_bin, "seed": seed, "of": len(reader),
                                          "crop": "the 120 x 120 crop as distributed (3DDFA's landmark crop)"})


def _mtfl_box(p5: np.ndarray) -> CropBox:
    """A first face box from MTFL's 5 points (eyes, nose, mouth corners): refined by the teacher afterwards."""
    eyes = 0.5 * (p5[0] + p5[1])
    mouth = 0.5 * (p5[3] + p5[4])
    scale = max(float(np.linalg.norm(p5[1] - p5[0])), float(np.linalg.norm(mouth - eyes)))
    centre = 0.5 * (eyes + mouth)
    side = 3.6 * scale
    return CropBox(float(centre[0] - side / 2), float(centre[1] - side / 2), side)


def prepare_mtfl(root: str | Path, teacher: Any, n: int = 2000, seed: int = 0,
                 progress: ProgressFn | None = None) -> FaceSet:
    """MTFL faces (the misaligned ``net_7876/_*`` labels skipped by the reader): ``n`` sampled, manual ``mtfl5``;
    the crop is the standard box of the teacher's 68 points, found in two passes from a box around the 5 points."""
    from mlanet.data.sources import open_source

    say = progress or (lambda m: None)
    reader = open_source("mtfl", root)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(reader), size=min(n, len(reader)), replace=False))
    keys, pts, boxes, t2, yaws = [], [], [], [], []
    for a in range(0, len(pick), 256):
        batch = [reader[int(i)] for i in pick[a : a + 256]]
        images = [s.image for s in batch]
        p5 = [s.landmark_sets["mtfl5"].points.astype(np.float64) for s in batch]
        first, _ = _teacher_points(teacher, images, [_mtfl_box(p) for p in p5])
        bx = [box_from_points(p, math.sqrt(2.0)) for p in first]
        tp, yw = _teacher_points(teacher, images, bx)
        keys += [s.key for s in batch]
        pts += p5
        boxes += bx
        t2.append(tp)
        yaws.append(yw)
    say(f"MTFL: {len(keys)} of {len(reader)} faces (seed {seed}), teacher run (two passes)")
    return FaceSet("mtfl", reader.terms, "mtfl5", keys, _to_crop(pts, boxes), _to_crop(np.concatenate(t2), boxes),
                   np.concatenate(yaws), {"sampled": n, "seed": seed, "of": len(reader),
                                          "crop": "sqrt(2) x max(w, h) of the teacher's 68 points (second pass)"})


# ----------------------------------------------------------------------------- the build
#: Values of :attr:`BuildSettings.aflw2000_eyelids`.
EYELID_SOURCES = ("teacher-fits", "manual")


@dataclass(frozen=True)
class BuildSettings:
    """Settings of :func:`build_definitions`."""

    #: landmark noise (crop pixels of the 224 crop) of manual points in the training fits
    sigma_manual_px: float = 1.5
    #: landmark noise of the teacher's points in the training fits
    sigma_teacher_px: float = 4.0
    #: faces whose mean manual-point residual exceeds this (crop pixels) are not used
    max_residual_px: float = 6.0
    #: robust scale (crop pixels) of the reprojection error when choosing surface points
    reprojection_scale_px: float = 3.0
    iterations: int = 40
    #: where ``aflw2000_68``'s eight eyelid points (:data:`~mlanet.eval.face_measures.IBUG68_EYELID_ROWS`) come
    #: from. ``"teacher-fits"`` (how ``ict_face_landmarks_v1`` was made): like every other point, reprojected
    #: through fits that include the teacher's eyelids, so the fits' eyeBlink and the points adapt to each other
    #: (the teacher's near-constant aperture ends up at eyeBlink ~0.56 of the points). ``"manual"``: the
    #: teacher's eyelids stay out of every fit, and the points are placed through the 300-W faces fitted to
    #: their manual 68 points only, whose eyeBlink follows the lids a person drew.
    aflw2000_eyelids: str = "teacher-fits"

    def __post_init__(self) -> None:
        if self.aflw2000_eyelids not in EYELID_SOURCES:
            raise ValueError(f"aflw2000_eyelids must be one of {', '.join(EYELID_SOURCES)}, not {self.aflw2000_eyelids!r}")

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _names_and_flip(name: str) -> tuple[list[str], list[int], list[str]]:
    from mlanet.data.sources.schema import DEFINITIONS

    key = "ibug68" if name == "aflw2000_68" else name
    d = DEFINITIONS[key]
    return list(d.point_names), list(d.flip_permutation), list(d.frontal_side)


DESCRIPTIONS = {
    "ibug68": (
        "iBUG / Multi-PIE 68 points as annotated in 300-W (subject's right = image left on a frontal face); jaw "
        "points 0-7 and 9-16 follow the silhouette (contour lines through ICT-FaceKit's jaw vertices), the chin and "
        "the 51 inner points are fixed surface points"
    ),
    "aflw2000_68": (
        "the 68 points of AFLW2000-3D's ground truth (3DDFA / 300W-LP: fixed Basel Face Model keypoints, iBUG order; "
        "the jaw does NOT follow the silhouette: a far-side jaw point is where the hidden jaw is, seen through the "
        "face); the definition AFLW2000-3D scores"
    ),
    "aflw21": "AFLW's 21 manual points (image-left naming: 'left' = subject's right), ear lobes included",
    "mtfl5": "MTFL's 5 points: eye centres, nose tip, mouth corners (image-left naming)",
}


def _fit(model: MorphableModel, obs: list[Observation], s: BuildSettings, say: ProgressFn, what: str) -> LandmarkFit:
    say(f"fitting the face model to {len(obs[0].points)} {what} faces")
    fs = LandmarkFitSettings(input_size=FIT_SIZE, sigma_px=s.sigma_manual_px, iterations=s.iterations)
    fit = fit_landmarks(model, obs, fs)
    say(f"  {what}: median residual {np.median(fit.residual_px):.2f} px (224 px crop)")
    return fit


def _manual_residual(model: MorphableModel, fit: LandmarkFit, d: sl.SurfaceDefinition | str, pts: np.ndarray) -> np.ndarray:
    """Mean distance (crop px) of the fitted faces' points of ``d`` from ``pts`` (N, L, 2), NaN-aware, fixed points."""
    from mlanet.morphable.landmarks.fit import _definition_arrays

    corners, bary, _, _ = _definition_arrays(model, d)
    ids = np.unique(corners)
    pos = {v: k for k, v in enumerate(ids)}
    X = fit.vertex_positions(model, ids).numpy()
    cam = fit.camera()
    f, cx, cy = float(cam.fx[0]), float(cam.cx[0]), float(cam.cy[0])
    idx = np.vectorize(pos.get)(corners)
    P = (X[:, idx] * bary[None, :, :, None]).sum(2)
    uv = np.stack([f * P[..., 0] / P[..., 2] + cx, f * P[..., 1] / P[..., 2] + cy], -1)
    return np.nanmean(np.linalg.norm(uv - pts, axis=-1), axis=1)


def build_definitions(
    data: FaceModelData,
    w300: FaceSet,
    aflw: FaceSet | None = None,
    mtfl: FaceSet | None = None,
    settings: BuildSettings | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, sl.SurfaceDefinition], dict[str, Any]]:
    """Fit ``ibug68``, ``aflw2000_68`` (and ``aflw21`` with ``aflw``, ``mtfl5`` with ``mtfl``) on training faces.

    See the module docstring for the method. Returns the definitions (with their header
    metadata in ``info``) and a build report (per step: faces, residuals, statistics).
    """
    from mlanet.data.sources import check_training_list

    s = settings or BuildSettings()
    say = progress or (lambda m: None)
    for fs in (w300, aflw, mtfl):
        if fs is not None:
            check_training_list(fs.keys, what=f"{fs.source} faces")
    model = MorphableModel(data)
    mean = data.mean_shape.astype(np.float64)
    tris = data.triangles
    start = start_points(data)
    w_t = (s.sigma_manual_px / s.sigma_teacher_px) ** 2
    report: dict[str, Any] = {"settings": s.to_dict(), "steps": []}
    scale = s.reprojection_scale_px

    def reproject(fit: LandmarkFit, tg: np.ndarray, valid: np.ndarray, init: np.ndarray, radius: np.ndarray,
                  name: str, step: str) -> sl.SurfaceDefinition:
        t, b, st = reprojection_surface_points(model, fit, tg, valid, init, radius, scale_px=scale)
        report["steps"].append({"step": step, "definition": name, **st})
        return sl.SurfaceDefinition(name, t, b, np.zeros(len(t), np.uint8)).normalised()

    lids_manual = s.aflw2000_eyelids == "manual"
    lid_rows = list(IBUG68_EYELID_ROWS)

    def teacher_weights(fs: FaceSet) -> np.ndarray:
        """(N, 68) weights of the teacher's points in a fit: w_t, and 0 on its eyelids where they stay out."""
        w = np.full(fs.teacher.shape[:2], w_t)
        if lids_manual:
            w[:, lid_rows] = 0.0
        return w

    def with_anchored_lids(d: sl.SurfaceDefinition, anchor: sl.SurfaceDefinition) -> sl.SurfaceDefinition:
        """``d`` with the eyelid points of ``anchor`` (the 300-W manual-fit placement) in "manual" mode."""
        if not lids_manual:
            return d
        tri, bary = d.triangle.copy(), d.barycentric.copy()
        tri[lid_rows], bary[lid_rows] = anchor.triangle[lid_rows], anchor.barycentric[lid_rows]
        return sl.SurfaceDefinition(d.name, tri, bary, d.contour, d.contour_candidates).normalised()

    ibug = ibug68_start(data)
    contour = ibug.contour.astype(bool)
    # -- round 1: 300-W fitted to its manual points; the teacher's points located on those fits
    fit_w = _fit(model, [Observation(ibug, w300.manual)], s, say, "300-W")
    ok_w = fit_w.residual_px <= s.max_residual_px
    rad68 = np.full(68, 0.015)
    rad68[:17] = 0.03
    valid_w = np.isfinite(w300.teacher).all(-1) & ok_w[:, None]
    a68 = reproject(fit_w, w300.teacher, valid_w, start["aflw2000_68"], rad68, "aflw2000_68", "300-W round 1")
    a68_manual_fits = a68  # eyelids placed through fits to the manual points only (the anchor in "manual" mode)
    a21 = definition_from_points("aflw21", data, start["aflw21"])
    steps = {"aflw2000_68": [f"300-W: {int(ok_w.sum())} faces"]}
    if aflw is not None:
        vis = np.isfinite(aflw.manual).all(-1)
        rad21 = np.full(21, 0.012)
        rad21[[12, 16]] = 0.03
        for rnd in (1, 2):
            fit_a = _fit(model, [Observation(a21, aflw.manual, vis.astype(float)),
                                 Observation(a68, aflw.teacher, teacher_weights(aflw))], s, say,
                         f"AFLW round {rnd}")
            res = _manual_residual(model, fit_a, a21, aflw.manual)
            ok_a = np.nan_to_num(res, nan=np.inf) <= s.max_residual_px
            valid_t = np.isfinite(aflw.teacher).all(-1) & ok_a[:, None]
            a68 = reproject(fit_a, aflw.teacher, valid_t, a68.points(mean, tris), np.where(rad68 > 0.02, 0.02, 0.012),
                            "aflw2000_68", f"AFLW round {rnd}")
            a68 = with_anchored_lids(a68, a68_manual_fits)
            a21 = reproject(fit_a, aflw.manual, vis & ok_a[:, None], a21.points(mean, tris), rad21 if rnd == 1 else
                            np.full(21, 0.008), "aflw21", f"AFLW round {rnd}")
        steps["aflw2000_68"].append(f"AFLW crops: {int(ok_a.sum())} faces, 2 rounds")
        report["aflw_faces_used"] = int(ok_a.sum())
    # -- 300-W refit with its manual points and the teacher's (current aflw2000_68): final ibug68 inner points
    fit_w2 = _fit(model, [Observation(ibug, w300.manual), Observation(a68, w300.teacher, teacher_weights(w300))],
                  s, say, "300-W round 2")
    ok_w2 = _manual_residual(model, fit_w2, ibug, w300.manual) <= s.max_residual_px
    fixed = ~contour
    inner = reproject(fit_w2, w300.manual[:, fixed], np.isfinite(w300.manual[:, fixed]).all(-1) & ok_w2[:, None],
                      ibug.points(mean, tris)[fixed], np.full(int(fixed.sum()), 0.01), "ibug68",
                      "300-W round 2 (fixed points: inner 51 and the chin)")
    tri_i, bary_i = ibug.triangle.copy(), ibug.barycentric.copy()
    tri_i[fixed], bary_i[fixed] = inner.triangle, inner.barycentric
    ibug = sl.SurfaceDefinition("ibug68", tri_i, bary_i, ibug.contour, ibug.contour_candidates).normalised()
    res_before = float(np.median(fit_w.residual_px))
    if aflw is None:  # without pose-diverse faces, the 300-W round-2 fits give the final aflw2000_68
        a68 = reproject(fit_w2, w300.teacher, np.isfinite(w300.teacher).all(-1) & ok_w2[:, None], a68.points(mean, tris),
                        np.full(68, 0.012), "aflw2000_68", "300-W round 2")
        a68 = with_anchored_lids(a68, a68_manual_fits)
    out = {"ibug68": ibug, "aflw2000_68": a68}
    if aflw is not None:
        out["aflw21"] = a21
    if mtfl is not None:
        fit_m = _fit(model, [Observation(definition_from_points("mtfl5", data, start["mtfl5"]), mtfl.manual),
                             Observation(a68, mtfl.teacher, teacher_weights(mtfl))], s, say, "MTFL")
        ok_m = fit_m.residual_px <= s.max_residual_px
        out["mtfl5"] = reproject(fit_m, mtfl.manual, np.isfinite(mtfl.manual).all(-1) & ok_m[:, None], start["mtfl5"],
                                 np.full(5, 0.012), "mtfl5", "MTFL")
        report["mtfl_faces_used"] = int(ok_m.sum())
    # -- symmetry and metadata
    sources = {"300w": w300, "aflw-crops": aflw, "mtfl": mtfl}
    fitted_on = {
        "ibug68": ["300w"],
        "aflw2000_68": ["300w", "aflw-crops"] if aflw is not None else ["300w"],
        "aflw21": ["aflw-crops"],
        "mtfl5": ["mtfl"],
    }
    labels = {
        "ibug68": "300-W manual iBUG-68 points (inner 51 + chin refitted; jaw: ICT vertices on contour lines)",
        "aflw2000_68": "3DDFA_V2 teacher's 68 points (AFLW2000-3D's definition) on the training faces",
        "aflw21": "AFLW's manual 21 points (visible ones) on the training crops",
        "mtfl5": "MTFL's manual 5 points",
    }
    for name, d in list(out.items()):
        names, flip, sides = _names_and_flip(name)
        d, moved = symmetrise(d, data, flip)
        used = [sources[k] for k in fitted_on[name] if sources[k] is not None]
        terms = sorted({fs.terms for fs in used} | ({TEACHER_TERMS} if name == "aflw2000_68" else set()))
        d.info = {
            "description": DESCRIPTIONS[name],
            "point_names": names,
            "flip_permutation": flip,
            "frontal_side": sides,
            "contour": "jaw 0-7, 9-16 follow the silhouette" if d.has_contour else "none (all points fixed)",
            "fitted": {
                "method": (
                    "face model fitted (pose, identity, expression; Levenberg-Marquardt, MAP) to each training face; "
                    "each point = the surface point whose projections through the fitted faces best match the "
                    f"annotations (robust reprojection error, Cauchy scale {scale} px of a 224 px crop); twins made "
                    "mirror images on the mean face"
                ),
                "targets": labels[name],
                "data": [{"source": fs.source, "faces": len(fs), **fs.notes} for fs in used],
                "rounds": (
                    "start: ICT's 68 vertices; round 1 on 300-W (fitted to its manual points), then two rounds on AFLW "
                    "crops of all poses (fitted to their manual 21 points and the teacher's 68)"
                    if name == "aflw2000_68" and aflw is not None else None
                ),
                "eyelids": (
                    "the teacher's eight eyelid points out of every fit; aflw2000_68's eyelid points placed through "
                    "the 300-W faces fitted to their manual 68 points only"
                    if lids_manual and name == "aflw2000_68" else None
                ),
                "symmetrisation_moved_mm": moved,
                "never_on": "AFLW2000-3D (validation only; the readers drop it and the keys are checked)",
            },
            "terms": "; ".join(terms),
        }
        d.info["point_names"] = names
        out[name] = d
    report["residual_300w_round1_median_px"] = round(res_before, 3)
    report["residual_300w_round2_median_px"] = round(float(np.median(fit_w2.residual_px)), 3)
    return out, report


def build_landmark_file(
    data: FaceModelData,
    w300: FaceSet,
    aflw: FaceSet | None = None,
    mtfl: FaceSet | None = None,
    settings: BuildSettings | None = None,
    file_id: str = "mlanet-landmarks-ict-v1",
    teacher_info: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> "Any":
    """:func:`build_definitions` wrapped as a :class:`~mlanet.morphable.landmarks.file.LandmarkDefinitionsFile` (not saved)."""
    from mlanet import __version__
    from mlanet.morphable.albedo.file import topology_sha256
    from mlanet.morphable.landmarks.file import LandmarkDefinitionsFile

    defs, report = build_definitions(data, w300, aflw, mtfl, settings, progress)
    sets = [fs for fs in (w300, aflw, mtfl) if fs is not None]
    sources = [fs.describe() for fs in sets]
    sources.append({"source": "3DDFA_V2 MobileNet x0.5 teacher (pseudo-labels)", "terms": TEACHER_TERMS,
                    **({"teacher": teacher_info} if teacher_info else {})})
    header = {
        "id": file_id,
        "name": "MLANet landmark definitions on the face model's surface",
        "face_model": {
            "model_id": data.model_id,
            "vertices": data.n_vertices,
            "triangles": int(len(data.triangles)),
            "triangles_sha256": topology_sha256(data.triangles),
            "content_sha256": data.header.get("content_sha256"),
        },
        "definitions": {n: d.info for n, d in sorted(defs.items())},
        "sources": sources,
        "terms": "research use only: fitted on research-only training data (" + ", ".join(fs.source for fs in sets)
                 + ") and 3DDFA_V2 teacher predictions (Basel Face Model keypoints: academic, non-commercial)",
        "report": report,
        "built_by": f"mlanet {__version__}",
        "built_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    return LandmarkDefinitionsFile(header=header, definitions=defs)
