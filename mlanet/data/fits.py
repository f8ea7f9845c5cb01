"""Pseudo-3DMM targets: a robust offline fit of the face model to every training face's landmarks (issue 14.4/14.5).

Per face, pose, identity and expression (in [0, 1]) are fitted with
:func:`mlanet.morphable.landmarks.fit.fit_landmarks` to every landmark set the label cache
(:mod:`mlanet.data.labels`) holds for it, each set with its own trust:

==============  ===================  =======================  ==========================
kind            definition           noise sigma (crop px)    robust (Cauchy) scale
==============  ===================  =======================  ==========================
manual          ibug68/aflw21/mtfl5  ``sigma_manual_px`` 1.5   ``robust_scale`` x sigma
teacher         aflw2000_68          ``sigma_teacher_px`` 4    (default 2.5 x sigma)
MediaPipe       mediapipe468         ``sigma_mediapipe_px`` 5
==============  ===================  =======================  ==========================

A point's weight is ``(sigma_manual / sigma_kind)^2`` (manual points weighted above pseudo
ones); robustness is iteratively reweighted least squares: after the first fit every point's
weight is multiplied by the Cauchy weight ``1 / (1 + (d / c)^2)`` of its distance ``d`` from the
fitted point (``c = robust_scale * sigma_kind``) and the fit is repeated from the previous one
(``irls_passes`` passes in all). MediaPipe's dense points are what move lips, eyes and brows.

Camera: the fit box of a face is the network's crop of the training store
(:func:`mlanet.data.store.face_box`: centre of the 68-equivalent face box, side
``PreprocessCfg.roi_scale * w68``), from the manual sets the label cache copied (or the whole
image for face-crop sources); a face without manual points (video frames) uses the teacher's
68 points with the iBUG-68 rule. Points are mapped into the ``input_size`` crop of that box and
the fit is in :meth:`PreprocessCfg.camera` of it, so the pose is the pose a network sees in
the un-augmented store crop (pose does not depend on the input size for a given box).

Output per face: the flat parameter vector of :class:`mlanet.params.ParamLayout` (albedo zero
and light unit ambient: neutral priors, *not fitted* -- see :data:`FITTED_GROUPS`), the
residual (px of the 224 crop and NME = px / w68, w68 = 68-equivalent box side) of the primary
set (manual if the face has any, else the teacher's), per-set residuals, the fraction of
inlier points (Cauchy weight > 0.5) and a quality flag ``ok``.

Cache (:class:`FitCache`): ``<root>/<source>/shard-<time>-<id>.npz`` column arrays + a JSON
``meta``; an entry is a hit when the label entry's lookup key
(:func:`mlanet.data.labels.lookup_key`) matches and the shard's ``fitter_id`` (fitter name,
version, settings) and the face model's *fit geometry* (``geometry_sha256``,
:func:`fit_model_keys`: the decoder signature without the albedo arrays, plus the parameter
layout) equal the current ones: a new albedo model keeps the fits, a changed shape basis or
landmark definition refits. Shards written before ``geometry_sha256`` existed match through
their whole-decoder ``decoder_sha256``. When a face has several matching fits, the newest wins.
Shards are written atomically; a killed run resumes at the next unfinished chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from mlanet.eval.face_measures import IBUG68_EYELID_ROWS
from mlanet.fileutil import atomic_file
from mlanet.preprocess import CropBox, PreprocessCfg

logger = logging.getLogger(__name__)

FORMAT = "mlanet-fit-cache"
FORMAT_VERSION = 1
FITTER_NAME = "robust-landmark-fit"
FITTER_VERSION = 1
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".npz"

#: Parameter groups the fit estimates; the others hold neutral priors.
FITTED_GROUPS: tuple[str, ...] = ("identity", "expression", "rotation", "translation")
KINDS: tuple[str, ...] = ("manual", "teacher", "mediapipe")
#: Rows of the teacher's 68 points on the upper and lower eyelids (iBUG layout, 0-based; the eye
#: corners 36, 39, 42, 45 are not among them).
TEACHER_EYELID_ROWS: tuple[int, ...] = IBUG68_EYELID_ROWS
#: Label-cache columns -> face-model definitions of the pseudo sets.
TEACHER_DEFINITION = "aflw2000_68"
MEDIAPIPE_DEFINITION = "mediapipe468"
#: the store's crop rule for samples placed by the teacher's points (:meth:`LabelFitExtras.face_box`)
TEACHER_BOX_RULE = "teacher68"
STATUS_FITTED, STATUS_NO_BOX, STATUS_NO_POINTS = 0, 1, 2
STATUS_NAMES = {STATUS_FITTED: "fitted", STATUS_NO_BOX: "no face box", STATUS_NO_POINTS: "too few points"}


@dataclass(frozen=True)
class RobustFitSettings:
    """Settings of :func:`robust_fit` (pixels of the ``input_size`` crop)."""

    input_size: int = 224
    sigma_manual_px: float = 1.5
    sigma_teacher_px: float = 4.0
    sigma_mediapipe_px: float = 5.0
    robust_scale: float = 2.5
    irls_passes: int = 3
    iterations: int = 30
    refine_iterations: int = 12
    w_expression: float = 1.0
    #: weight factor of the teacher's eight eyelid points (:data:`TEACHER_EYELID_ROWS`). 3DDFA_V2 does not
    #: see eyes close: on the 1,201 frontal 300-W faces its eye aperture correlates r = 0.14 with the
    #: manual one, MediaPipe's r = 0.70 (benchmarks/results/data/eye_aperture.md), so by default the lids
    #: are left to MediaPipe's and the manual points (1.0: the teacher's lids count like its other points)
    teacher_eyelid_weight: float = 0.0
    #: quality flag: primary-set NME at most this, and at least ``min_inliers`` of the points inliers
    max_nme: float = 0.06
    min_inliers: float = 0.6
    chunk: int = 48

    def sigma(self, kind: str) -> float:
        return {"manual": self.sigma_manual_px, "teacher": self.sigma_teacher_px,
                "mediapipe": self.sigma_mediapipe_px}[kind]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ObservationSpec:
    """One landmark set of N faces: kind (:data:`KINDS`), definition, (N, L, 2) crop px (NaN = absent)."""

    kind: str
    definition: Any
    points: np.ndarray

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown observation kind {self.kind!r} (one of {KINDS})")
        self.points = np.asarray(self.points, dtype=np.float64)
        if self.points.ndim != 3 or self.points.shape[2] != 2:
            raise ValueError(f"points must be (N, L, 2), got {self.points.shape}")

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.points).all(-1)


@dataclass
class FitOutcome:
    """What a fitter returns for N faces (arrays over faces; NaN where a set is absent)."""

    params: np.ndarray  # (N, P) flat ParamLayout vectors
    residual_px: np.ndarray  # (N,) primary set
    set_residual_px: dict[str, np.ndarray]  # kind -> (N,)
    inlier_fraction: np.ndarray  # (N,)


FitFn = Callable[[Any, Sequence[ObservationSpec], RobustFitSettings], FitOutcome]


def w68_px(settings: RobustFitSettings, preprocess: PreprocessCfg | None = None) -> float:
    """The 68-equivalent face box side in crop pixels (the NME normaliser)."""
    return settings.input_size / (preprocess or PreprocessCfg()).roi_scale


def cauchy_weight(d: np.ndarray, scale: float) -> np.ndarray:
    return 1.0 / (1.0 + (np.nan_to_num(d, nan=0.0) / scale) ** 2)


def flat_params(model: Any, rotation: torch.Tensor, translation: torch.Tensor, identity: torch.Tensor,
                expression: torch.Tensor) -> np.ndarray:
    """(N, P) ParamLayout vectors: fitted groups set, albedo/light at the neutral prior."""
    from mlanet.geometry.rotations import matrix_to_euler
    from mlanet.params import FaceParams, ParamLayout

    layout = ParamLayout.for_face_model(model)
    n = int(rotation.shape[0])
    fp = FaceParams.neutral(layout, n, dtype=torch.float64)
    flat = fp.to_flat().clone()
    s = layout.slices()
    flat[:, s["identity"]] = identity.double()
    flat[:, s["expression"]] = expression.double()
    flat[:, s["rotation"]] = matrix_to_euler(rotation.double())
    flat[:, s["translation"]] = translation.double()
    return flat.numpy()


def fitted_mask(model: Any) -> np.ndarray:
    """(P,) bool: which entries of the flat vector the fit estimates."""
    from mlanet.params import ParamLayout

    layout = ParamLayout.for_face_model(model)
    m = np.zeros(layout.total, bool)
    for g, sl_ in layout.slices().items():
        m[sl_] = g in FITTED_GROUPS
    return m


def robust_fit(model: Any, specs: Sequence[ObservationSpec], settings: RobustFitSettings | None = None) -> FitOutcome:
    """Robust (IRLS, Cauchy) fit of pose, identity and expression of N faces to the sets ``specs``."""
    from mlanet.morphable.landmarks.fit import LandmarkFitSettings, Observation, fit_landmarks

    s = settings or RobustFitSettings()
    if not specs:
        raise ValueError("robust_fit needs at least one landmark set")
    n = specs[0].points.shape[0]
    base = [np.where(sp.valid, (s.sigma_manual_px / s.sigma(sp.kind)) ** 2, 0.0) for sp in specs]
    for b, sp in zip(base, specs):
        if sp.kind == "teacher" and b.shape[1] == 68:
            b[:, list(TEACHER_EYELID_ROWS)] *= s.teacher_eyelid_weight
    lfs = LandmarkFitSettings(input_size=s.input_size, sigma_px=s.sigma_manual_px, w_expression=s.w_expression,
                              iterations=s.iterations, chunk=s.chunk)
    weights = [b.copy() for b in base]
    fit = None
    robust = [np.ones_like(b) for b in base]
    for p in range(max(1, s.irls_passes)):
        obs = [Observation(sp.definition, sp.points, w) for sp, w in zip(specs, weights)]
        if fit is None:
            fit = fit_landmarks(model, obs, lfs)
        else:
            from dataclasses import replace

            fit = fit_landmarks(model, obs, replace(lfs, iterations=s.refine_iterations), init=fit)
        d_all = fit.point_distance_px
        parts, a = [], 0
        for sp in specs:
            L = sp.points.shape[1]
            parts.append(d_all[:, a:a + L])
            a += L
        robust = [cauchy_weight(d, s.robust_scale * s.sigma(sp.kind)) for d, sp in zip(parts, specs)]
        weights = [b * r for b, r in zip(base, robust)]
    set_res: dict[str, np.ndarray] = {}
    for kind in KINDS:
        idx = [i for i, sp in enumerate(specs) if sp.kind == kind]
        if not idx:
            continue
        d = np.concatenate([parts[i] for i in idx], 1)
        v = np.concatenate([specs[i].valid for i in idx], 1)
        with np.errstate(invalid="ignore"):
            set_res[kind] = np.where(v.any(1), (np.where(v, d, 0).sum(1)) / np.maximum(v.sum(1), 1), np.nan)
    primary = np.full(n, np.nan)
    for kind in ("mediapipe", "teacher", "manual"):  # later kinds override
        if kind in set_res:
            primary = np.where(np.isfinite(set_res[kind]), set_res[kind], primary)
    v_all = np.concatenate([sp.valid for sp in specs], 1)
    r_all = np.concatenate(robust, 1)
    inl = ((r_all > 0.5) & v_all).sum(1) / np.maximum(v_all.sum(1), 1)
    params = flat_params(model, fit.rotation, fit.translation, fit.identity, fit.expression)
    return FitOutcome(params, primary, set_res, inl)


# ----------------------------------------------------------------------------- from the label cache
def fit_box_for(source: str, arrays: Mapping[str, np.ndarray], row: int,
                preprocess: PreprocessCfg | None = None) -> tuple[CropBox, str] | None:
    """The fit box (the store's network crop) of label-table row ``row`` and the rule that gave it."""
    from mlanet.data.store import BOX_RULES, DEFINITION_PRIORITY, FACE_CROP_RULES

    pre = preprocess or PreprocessCfg()
    got = None
    crop = FACE_CROP_RULES.get(source)
    if crop is not None:
        w, h = crop.image_size
        got = (np.array([w / 2.0, h / 2.0]), w / crop.side_ratio, "face-crop")
    else:
        for name in DEFINITION_PRIORITY:
            col = arrays.get("manual__" + name)
            if col is None:
                continue
            pts = col[row].astype(np.float64)
            b = BOX_RULES[name].box(pts, np.isfinite(pts).all(-1))
            if b is not None:
                got = (b[0], b[1], name)
                break
        if got is None and "t68" in arrays and np.isfinite(arrays["t68"][row]).all():
            pts = arrays["t68"][row].astype(np.float64)
            b = BOX_RULES["ibug68"].box(pts, np.ones(68, bool))
            if b is not None:
                got = (b[0], b[1], "teacher68")
    if got is None:
        return None
    c, w68, rule = got
    side = pre.roi_scale * w68
    return CropBox(float(c[0]) - side / 2, float(c[1]) - side / 2, side), rule


def specs_for_rows(source: str, arrays: Mapping[str, np.ndarray], rows: np.ndarray, boxes: Sequence[CropBox],
                   settings: RobustFitSettings) -> list[ObservationSpec]:
    """The landmark sets of label rows ``rows`` in crop pixels of their fit boxes."""
    def to_crop(pts: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows),) + pts.shape[1:], np.float64)
        for j, (r, b) in enumerate(zip(rows, boxes)):
            out[j] = b.image_to_crop(pts[r].astype(np.float64), settings.input_size)
        return out

    specs = []
    for k in sorted(arrays):
        if k.startswith("manual__"):
            specs.append(ObservationSpec("manual", k[len("manual__"):], to_crop(arrays[k])))
    if "t68" in arrays:
        specs.append(ObservationSpec("teacher", TEACHER_DEFINITION, to_crop(arrays["t68"])))
    if "mp468" in arrays:
        mp = to_crop(arrays["mp468"])
        if "mp_status" in arrays:
            mp[arrays["mp_status"][rows] != 1] = np.nan
        specs.append(ObservationSpec("mediapipe", MEDIAPIPE_DEFINITION, mp))
    return specs


# ----------------------------------------------------------------------------- the cache
COLUMNS: Mapping[str, Any] = {
    "status": np.int8, "ok": bool, "fit_box": np.float64, "params": np.float32, "residual_px": np.float32,
    "nme": np.float32, "res_manual_px": np.float32, "res_teacher_px": np.float32, "res_mediapipe_px": np.float32,
    "inlier_fraction": np.float32,
}
STRING_COLUMNS = ("label_lookup", "key", "box_rule")


def decoder_sha256(model: Any) -> str:
    return hashlib.sha256(json.dumps(model.decoder_signature, sort_keys=True).encode()).hexdigest()


def fit_model_keys(model: Any) -> dict[str, str]:
    """The keys a fit shard is matched by: ``geometry_sha256`` (what a landmark fit depends on:
    the decoder signature without the albedo arrays, and the parameter layout the params are
    stored in) and ``decoder_sha256`` (the whole decoder; how shards of format 1 were keyed)."""
    from mlanet.params import ParamLayout

    sig = model.decoder_signature
    geometry = {**sig, "arrays": {k: v for k, v in sig["arrays"].items() if not k.startswith("albedo")},
                "layout": ParamLayout.for_face_model(model).to_dict()}
    return {"geometry_sha256": hashlib.sha256(json.dumps(geometry, sort_keys=True).encode()).hexdigest(),
            "decoder_sha256": decoder_sha256(model)}


def _shard_matches(meta: Mapping[str, Any], keys: Mapping[str, str]) -> bool:
    if "geometry_sha256" in meta:
        return meta["geometry_sha256"] == keys["geometry_sha256"]
    return meta.get("decoder_sha256") == keys["decoder_sha256"]


def fitter_id(settings: RobustFitSettings, preprocess: PreprocessCfg | None = None) -> str:
    body = {"name": FITTER_NAME, "version": FITTER_VERSION, "settings": settings.to_dict(),
            "roi_scale": (preprocess or PreprocessCfg()).roi_scale}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class FitTable:
    """Fits of one source (one fitter id and decoder) as column arrays."""

    source: str
    arrays: dict[str, np.ndarray]
    metas: list[dict[str, Any]] = field(default_factory=list)
    _index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(len(self.arrays.get("label_lookup", ())))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def row(self, label_lookup: str) -> int | None:
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self.arrays.get("label_lookup", np.zeros(0, str)).tolist())}
        return self._index.get(label_lookup)


class FitCache:
    """Fit cache rooted at ``root`` (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    def source_dir(self, source: str) -> Path:
        from mlanet.data.labels.cache import source_folder

        return source_folder(self.root, source)

    def sources(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(self.shard_paths(p.name)))

    def shard_paths(self, source: str) -> list[Path]:
        d = self.source_dir(source)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX))

    def write_shard(self, source: str, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
        body = {"format": FORMAT, "version": FORMAT_VERSION, "source": source, **meta}
        d = self.source_dir(source)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{SHARD_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        with atomic_file(path, suffix=".tmp") as fh:
            np.savez(fh, meta=np.array(json.dumps(body)), **arrays)
        return path

    def _iter(self, source: str, fitter: str | None, model_keys: Mapping[str, str] | None):
        for path in self.shard_paths(source):
            try:
                z = np.load(path, allow_pickle=False)
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
                    logger.warning("%s: not a fit-cache shard of version %s; ignored", path, FORMAT_VERSION)
                    continue
                if (fitter is not None and meta.get("fitter_id") != fitter) or (
                        model_keys is not None and not _shard_matches(meta, model_keys)):
                    continue
                yield {k: z[k] for k in z.files if k != "meta"}, meta
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
                logger.warning("%s: unreadable fit shard (%s); ignored", path, exc)

    def existing(self, source: str, fitter: str, model_keys: Mapping[str, str]) -> set[str]:
        """Label lookups already fitted by ``fitter`` for a face model of these :func:`fit_model_keys`."""
        out: set[str] = set()
        for arrays, _ in self._iter(source, fitter, model_keys):
            out.update(arrays["label_lookup"].tolist())
        return out

    def load(self, source: str, fitter: str | None = None, model_keys: Mapping[str, str] | None = None) -> FitTable:
        """All fits of ``source`` (only those of ``fitter`` / a face model with these keys, when given)."""
        parts, metas = [], []
        for arrays, meta in self._iter(source, fitter, model_keys):
            parts.append(arrays)
            metas.append(meta)
        if not parts:
            return FitTable(source, {}, [])
        keys = [k for k in parts[0] if all(k in p for p in parts)]
        return FitTable(source, {k: np.concatenate([p[k] for p in parts]) for k in keys}, metas)


@dataclass
class FitRunStats:
    source: str
    candidates: int = 0
    hits: int = 0
    fitted: int = 0
    skipped: int = 0
    seconds: float = 0.0

    @property
    def faces_per_second(self) -> float:
        return self.fitted / self.seconds if self.seconds > 0 else float("nan")


def select_rows(n: int, limit: int | None, stratify: bool) -> np.ndarray:
    """``limit`` rows of ``n``: the first ones, or evenly spread (``stratify``)."""
    if limit is None or limit >= n:
        return np.arange(n)
    if stratify:
        return np.unique(np.linspace(0, n - 1, limit).round().astype(np.int64))
    return np.arange(limit)


def fit_source(
    table: Any,
    model: Any,
    cache: FitCache,
    settings: RobustFitSettings | None = None,
    *,
    limit: int | None = None,
    stratify: bool = False,
    shard_size: int = 192,
    progress: bool = True,
    fitter: FitFn | None = None,
) -> FitRunStats:
    """Fit every labelled face of one label table (:class:`~mlanet.data.labels.LabelTable`) not cached yet."""
    from mlanet.progress import Progress
    from mlanet.data.labels.cache import STATUS_LABELLED, lookup_key

    s = settings or RobustFitSettings()
    fit_fn = fitter or robust_fit
    source = table.source
    arrays = table.arrays
    fid, keys = fitter_id(s), fit_model_keys(model)
    stats = FitRunStats(source)
    lookups = [lookup_key(c, b, a) for c, b, a in zip(arrays["content"].tolist(), arrays["box_rule"].tolist(),
                                                      arrays["annotation"].tolist())]
    rows = select_rows(len(lookups), limit, stratify)
    stats.candidates = len(rows)
    done = cache.existing(source, fid, keys)
    todo = [int(r) for r in rows if lookups[r] not in done]
    todo = list(dict.fromkeys(todo))
    stats.hits = len(rows) - len(todo)
    meta = {"fitter_id": fid, **keys, "fitter": {"name": FITTER_NAME, "version": FITTER_VERSION,
            "settings": s.to_dict()}, "label_source": source,
            "layout": __import__("mlanet.params", fromlist=["ParamLayout"]).ParamLayout.for_face_model(model).to_dict(),
            "expression_names": list(getattr(model, "expression_names", [])),
            "fitted_groups": list(FITTED_GROUPS), "preprocess": PreprocessCfg(input_size=s.input_size).to_dict()}
    bar = Progress(len(todo), f"fit {source}", enabled=progress)
    w68 = w68_px(s)
    P = int(fitted_mask(model).shape[0])
    t0 = time.perf_counter()
    for a in range(0, len(todo), shard_size):
        chunk = todo[a:a + shard_size]
        m = len(chunk)
        out = {c: np.full((m,) + ((3,) if c == "fit_box" else (P,) if c == "params" else ()),
                          0 if dt in (bool, np.int8) else np.nan, dtype=dt) for c, dt in COLUMNS.items()}
        out["label_lookup"] = np.array([lookups[r] for r in chunk], dtype=str)
        out["key"] = np.array([str(arrays["key"][r]) for r in chunk], dtype=str)
        box_rule = [""] * m
        boxes, sel = [], []
        for j, r in enumerate(chunk):
            got = fit_box_for(source, arrays, r)
            if got is None or ("status" in arrays and arrays["status"][r] != STATUS_LABELLED
                               and not any(np.isfinite(arrays[k][r]).all(-1).sum() >= 3
                                           for k in arrays if k.startswith("manual__"))):
                out["status"][j] = STATUS_NO_BOX if got is None else STATUS_NO_POINTS
                continue
            boxes.append(got[0])
            box_rule[j] = got[1]
            sel.append(j)
        if sel:
            specs = specs_for_rows(source, arrays, np.asarray(chunk)[sel], boxes, s)
            npts = sum(sp.valid.sum(1) for sp in specs)
            res = fit_fn(model, specs, s)
            idx = np.asarray(sel)
            out["params"][idx] = res.params
            out["fit_box"][idx] = np.stack([b.as_array() for b in boxes])
            out["residual_px"][idx] = res.residual_px
            out["nme"][idx] = res.residual_px / w68
            for kind in KINDS:
                if kind in res.set_residual_px:
                    out[f"res_{kind}_px"][idx] = res.set_residual_px[kind]
            out["inlier_fraction"][idx] = res.inlier_fraction
            out["status"][idx] = np.where(npts >= 5, STATUS_FITTED, STATUS_NO_POINTS)
            ok = (np.isfinite(res.params).all(1) & (res.residual_px / w68 <= s.max_nme)
                  & (res.inlier_fraction >= s.min_inliers) & (npts >= 5))
            out["ok"][idx] = ok
        out["box_rule"] = np.array(box_rule, dtype=str)
        cache.write_shard(source, out, {**meta, "n": m})
        stats.fitted += len(sel)
        stats.skipped += m - len(sel)
        stats.seconds = time.perf_counter() - t0
        bar.update(min(a + m, len(todo)), faces_per_s=round(stats.faces_per_second, 2))
    stats.seconds = time.perf_counter() - t0
    return stats


# ----------------------------------------------------------------------------- report
def _pct(v: np.ndarray, qs: Sequence[float]) -> dict[str, float | None]:
    v = v[np.isfinite(v)]
    return {f"p{int(q)}": (round(float(np.percentile(v, q)), 4) if len(v) else None) for q in qs}


def fit_report(cache: FitCache, expressions: Sequence[str] = ("jawOpen", "eyeBlink_L", "eyeBlink_R"),
               sources: Sequence[str] | None = None, model_keys: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Fit residual per source (median / p90 px and NME) and the spread of the fitted ``expressions``
    (only the fits made for a face model of ``model_keys`` (:func:`fit_model_keys`), when given)."""
    from mlanet.params import ParamLayout

    out: dict[str, Any] = {"fitter": {"name": FITTER_NAME, "version": FITTER_VERSION}, "sources": {}}
    for src in sources or cache.sources():
        t = cache.load(src, model_keys=model_keys)
        if not len(t):
            continue
        meta = t.metas[-1]
        layout = ParamLayout.from_dict(meta["layout"])
        names = meta.get("expression_names", [])
        fitted = t["status"] == STATUS_FITTED
        ok = t["ok"] & fitted
        entry: dict[str, Any] = {"faces": len(t), "fitted": int(fitted.sum()), "ok": int(ok.sum()),
                                 "fitter_id": meta.get("fitter_id")}
        for col, name in (("residual_px", "residual_px"), ("nme", "nme"), ("res_manual_px", "manual_px"),
                          ("res_teacher_px", "teacher_px"), ("res_mediapipe_px", "mediapipe_px"),
                          ("inlier_fraction", "inlier_fraction")):
            v = t[col][fitted].astype(np.float64)
            if np.isfinite(v).any():
                entry[name] = {"median": round(float(np.nanmedian(v)), 4), **_pct(v, (90,)), "n": int(np.isfinite(v).sum())}
        expr = t["params"][:, layout.slices()["expression"]][fitted].astype(np.float64)
        spread = {}
        for e in expressions:
            if e not in names:
                continue
            v = expr[:, names.index(e)]
            spread[e] = {**_pct(v, (10, 50, 90, 99)), "max": round(float(v.max()), 4) if len(v) else None,
                         "frac_gt_0.3": round(float((v > 0.3).mean()), 4) if len(v) else None,
                         "frac_gt_0.6": round(float((v > 0.6).mean()), 4) if len(v) else None}
        entry["expressions"] = spread
        out["sources"][src] = entry
    return out


def report_markdown(rep: Mapping[str, Any]) -> str:
    lines = ["# Pseudo-3DMM fit quality", "", "Residual of the primary set (manual points if the face has any, else "
             "the teacher's 68), crop px of the 224 crop; NME = px / 68-equivalent box side (158.4 px).", "",
             "| source | faces | ok | median px | p90 px | median NME | p90 NME | MediaPipe median px | inliers |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s, e in rep["sources"].items():
        r, n, mp, inl = e.get("residual_px", {}), e.get("nme", {}), e.get("mediapipe_px", {}), e.get("inlier_fraction", {})
        lines.append(f"| {s} | {e['fitted']} | {e['ok']} | {r.get('median')} | {r.get('p90')} | {n.get('median')} | "
                     f"{n.get('p90')} | {mp.get('median')} | {inl.get('median')} |")
    lines += ["", "## Fitted expression spread", "", "| source | shape | p10 | p50 | p90 | p99 | max | > 0.3 | > 0.6 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s, e in rep["sources"].items():
        for name, v in e.get("expressions", {}).items():
            lines.append(f"| {s} | {name} | {v['p10']} | {v['p50']} | {v['p90']} | {v['p99']} | {v['max']} | "
                         f"{v['frac_gt_0.3']} | {v['frac_gt_0.6']} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- store extras
class LabelFitExtras:
    """``extras`` provider for :func:`mlanet.data.store.prepare_store`: derived labels and fits per sample.

    Adds ``teacher68`` and ``mp468`` (point sets, image pixels -> stored in store-crop pixels),
    ``pose`` (teacher pitch, yaw, roll), ``fit_params`` (flat ParamLayout vector, pose in the
    camera of the store's network crop) and ``fit_ok`` (1.0 / 0.0). A sample is matched to its
    label entry by content hash + crop rule + manual-label digest (the label cache's key), and
    the fit by that key; a fit whose box differs from the sample's store box is not ``ok``.
    With ``face_model``, only fits made for that face model's geometry (:func:`fit_model_keys`)
    are used, and the store manifest records its ``geometry_sha256``; without it, the newest fit
    of each face whatever the face model (tests and old stores).
    """

    name = "label-fit-extras"
    version = 1
    point_sets = {"teacher68": "aflw2000_68", "mp468": "mediapipe468"}

    def __init__(self, labels: str | os.PathLike[str] | None, fits: str | os.PathLike[str] | None,
                 hasher: Callable[[Any], str] | None = None, preprocess: PreprocessCfg | None = None,
                 face_model: Any | None = None) -> None:
        from mlanet.data.labels import LabelCache

        self._model_keys = fit_model_keys(face_model) if face_model is not None else None
        #: recorded in the store manifest's extras identity
        self.details = {"fits_geometry_sha256": self._model_keys["geometry_sha256"]} if self._model_keys else {}

        self._pre = preprocess or PreprocessCfg()
        from mlanet.data.labels.labeller import ContentHasher

        self._labels = LabelCache(labels) if labels is not None else None
        self._fits = FitCache(fits) if fits is not None else None
        self._hasher = hasher or ContentHasher()
        self._tables: dict[str, Any] = {}
        self._fit_tables: dict[str, FitTable] = {}
        self._rows: dict[str, tuple[Any, int | None, tuple[str, str, str]]] = {}

    def _label_table(self, source: str) -> Any:
        if source not in self._tables:
            self._tables[source] = self._labels.load(source) if self._labels is not None else None
        return self._tables[source]

    def _fit_table(self, source: str) -> FitTable | None:
        if source not in self._fit_tables:
            self._fit_tables[source] = (self._fits.load(source, model_keys=self._model_keys) if self._fits is not None
                                        else FitTable(source, {}))
        return self._fit_tables[source]

    #: how :meth:`face_box` places a crop (recorded in the store manifest)
    rule_description = {
        "rule": TEACHER_BOX_RULE,
        "description": "samples without manual landmarks (video frames): the 68-equivalent face box is the box "
                       "(side max(w, h), centre the box centre) of the 3DDFA_V2 teacher's 68 points from the "
                       "label cache, as the ibug68 rule does with manual points",
    }

    def _row(self, sample: Any) -> tuple[Any, int | None, tuple[str, str, str]]:
        """The sample's label table, row and lookup key; memoised by sample key, since the store asks twice
        (face_box while planning, the extras while writing) and hashing decodes the pixels."""
        from mlanet.data.labels.labeller import annotation_digest, box_rule_for

        memo = self._rows.get(sample.key)
        if memo is not None:
            return memo
        table = self._label_table(sample.source)
        key = (self._hasher(sample), box_rule_for(sample).tag, annotation_digest(sample))
        row = table.row(*key) if table is not None and len(table) else None
        self._rows[sample.key] = (table, row, key)
        return table, row, key

    def face_box(self, sample: Any) -> tuple[np.ndarray, float, str] | None:
        """``(centre (2,), side68, "teacher68")`` in image pixels from the teacher's 68 points, or None."""
        table, row, _key = self._row(sample)
        if row is None or int(table["status"][row]) != 0:
            return None
        pts = np.asarray(table["t68"][row], dtype=np.float64)[:, :2]
        if not np.isfinite(pts).all():
            return None
        lo, hi = pts.min(0), pts.max(0)
        side = float((hi - lo).max())
        return ((lo + hi) / 2.0, side, TEACHER_BOX_RULE) if side > 1.0 else None

    def __call__(self, sample: Any) -> dict[str, np.ndarray] | None:
        from mlanet.data.labels.cache import lookup_key

        table, row, (content, rule, ann) = self._row(sample)
        if row is None:
            return None
        out: dict[str, np.ndarray] = {}
        if int(table["status"][row]) == 0:
            out["teacher68"] = table["t68"][row].astype(np.float32)
            out["pose"] = table["pose"][row].astype(np.float32)
        if int(table["mp_status"][row]) == 1:
            out["mp468"] = table["mp468"][row].astype(np.float32)
        ft = self._fit_table(sample.source)
        frow = ft.row(lookup_key(content, rule, ann)) if ft is not None and len(ft) else None
        if frow is not None and int(ft["status"][frow]) == STATUS_FITTED:
            ok = bool(ft["ok"][frow])
            from mlanet.data.store import face_box

            fb = face_box(sample)
            if fb is not None:
                side = self._pre.roi_scale * fb[1]
                want = np.array([fb[0][0] - side / 2, fb[0][1] - side / 2, side])
                ok = ok and bool(np.allclose(ft["fit_box"][frow], want, rtol=1e-4, atol=1e-3 * side))
            out["fit_params"] = ft["params"][frow].astype(np.float32)
            out["fit_ok"] = np.array(1.0 if ok else 0.0, dtype=np.float32)
        return out or None
