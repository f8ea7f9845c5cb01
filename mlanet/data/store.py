"""The training store: face crops decoded once into a memory-mappable uint8 array, with their labels.

Training on real images should keep the CPU busy with the network, not with JPEG decoding and
resampling of large photos. :func:`prepare_store` reads the sources
(:mod:`mlanet.data.sources`) once and writes every face as a fixed-size crop with its labels;
:class:`Store` reads it back (images memory-mapped), and
:class:`mlanet.data.store_dataset.StoreDataset` turns rows into training samples with one
similarity warp per sample.

Folder layout (format :data:`STORE_FORMAT`)::

    <store>/manifest.json   header: sizes, crop rule, PreprocessCfg, definitions, sources with
                            their terms and counts, AFLW2000-3D guard result, shard hashes,
                            content hash. Written last: a store without it is unfinished.
    <store>/images.npy      (N, S, S, 3) uint8 RGB crops (np.load(..., mmap_mode="r"))
    <store>/labels.npz      per-sample arrays (no pickles), row i <-> images[i]:
        key (N,) str              sample key (FaceSample.key)
        source (N,) int16         index into manifest["sources"]
        ok (N,) bool              False where the image could not be decoded (crop left black)
        yaw_deg (N,) float32      NaN where the source has no yaw
        crop_box (N, 3) float64   (x0, y0, side) of the store crop in the original image's pixels
        image_hw (N, 2) int32     height, width of the original image (0 where not decoded)
        box_rule (N,) str         which rule placed the crop (a key of manifest["crop_rule"]["rules"])
        points_<def> (N, L, 2) float32   landmark set <def> in store-crop pixels, NaN where absent
        visible_<def> (N, L) bool        its visibility (False everywhere for samples without the set)
        x_<name>, has_x_<name>           extras (see below)
    <store>/plan.json       the settings and the planned sample list's fingerprint (resume check)
    <store>/shards/         per-shard labels while preparing (removed when the store is finished)

Pixels and points follow the project's convention (pixel centres at integer + 0.5). Crop
pixel ``u`` of a row with ``crop_box = (x0, y0, side)`` is image point ``(x0, y0) + u * side / S``
(:meth:`mlanet.preprocess.CropBox.crop_to_image`); the crop is cut with
:func:`mlanet.data.landmarks.crop_uint8` (bilinear, zero outside the image), the same crop the
runtime uses, then rounded to uint8.

Crop rule (:func:`face_box`, :func:`store_box`)
    Every sample gets a square centred on its *68-point-equivalent face box* (centre ``c``,
    side ``w68``), of side ``roi_scale * w68 * S / input_size`` where ``roi_scale`` comes from
    the :class:`~mlanet.preprocess.PreprocessCfg` and ``S = round(input_size * margin)``. So the
    centre ``input_size`` pixels of a store crop are exactly the network's crop of the
    AFLW2000-3D protocol (``box_from_points`` on 68 points), at the network's resolution, and
    the ``(S - input_size) / 2`` pixels around it leave room to rotate, zoom out and shift
    without black borders (margin 1.25: about 10 degrees with a 0.9 zoom-out and a 5 % shift).

    ``w68`` comes from the sample's best landmark set (:data:`DEFINITION_PRIORITY`) through a
    :class:`BoxRule`: the box of the set's points, scaled and shifted to what the 68-point box
    would be. The factors were calibrated on the 1,537 300-W training faces, where the 68
    points exist and the 21/5-point subsets can be computed from them
    (:func:`calibrate_box_rules`, median over faces):

    ========  ================================================  =======  ===============  =============
    set       points used                                        scale    centre offset    spread (IQR)
    ========  ================================================  =======  ===============  =============
    ibug68    all 68                                             1        0                -
    aflw21    the 19 non-ear points, all visible                 1.039    0                1.005-1.097
    mtfl5     all 5                                              2.039    dy = +0.141      1.93-2.16
    ========  ================================================  =======  ===============  =============

    (scale: 68-box side / subset-box side, each ``max(w, h)``; offset: 68-box centre minus
    subset-box centre, in subset-box sides; x offsets measured at most 0.01, set to 0 by
    symmetry.)

    Sources that are already face crops use the whole image instead (:data:`FACE_CROP_RULES`):
    ``aflw-crops`` (120 x 120 crops of the 3DDFA files, cut around 68-point fits). Their own
    points do not give a reliable box (AFLW annotates only visible points, so a profile has
    half of them), so the crop's centre is the face centre and ``w68 = 120 / 1.515``: on the
    4,379 crops with all 19 non-ear points visible (median |yaw| 8 degrees), the crop side is
    1.071 x sqrt(2) x the 68-equivalent box of the aflw21 rule above (IQR 1.028-1.130), centred
    within 0.5 px. The store crop then extends beyond the 120 x 120 crop (black there): at
    input size 128 the AFLW crop covers the centre 137 of the 160 store pixels, so the
    un-augmented network input (the centre 128) is all image.

    Per source: ``300w`` -> ibug68 rule; ``mtfl`` -> mtfl5 rule; ``aflw-crops`` -> the whole
    crop; any other source -> its best set by :data:`DEFINITION_PRIORITY`. A sample without a
    usable set (e.g. unlabelled video frames) is left out and counted (``no_box``).

Extras (extension point for derived labels: teacher points, pose, MediaPipe points, fits)
    ``prepare_store(..., extras=fn)`` calls ``fn(sample) -> dict[str, np.ndarray] | None`` for
    every sample and stores each array as ``x_<name>`` (N, ...) with ``has_x_<name>`` (N,);
    samples without it get NaN (floats) or 0 and ``has_x_<name>`` False. All arrays of one name
    must have one shape. Arrays named in ``fn.point_sets`` (an optional attribute, ``{name:
    definition or None}``) are (L, 2) points in the original image's pixels and are stored in
    store-crop pixels like the landmark sets (the dataset warps and flip-permutes them); other
    arrays are stored as given. ``fn.name`` / ``fn.version`` (optional) enter the plan's
    fingerprint, so a store prepared with another labeller is not resumed by mistake.

Preparing (resumable)
    Rows are written in shards of ``shard_size`` into the preallocated ``images.npy``; a shard
    is finished when its labels file (with the SHA-256 of its image rows) has been renamed into
    ``shards/`` after the image rows were flushed. Ctrl-C loses at most the current shard; the
    same call again skips finished shards whose image rows still match their recorded hash
    (checked against ``plan.json``: other settings or another sample list are refused, never
    mixed). The AFLW2000-3D guard
    (:func:`mlanet.data.sources.check_training_list`) runs on the planned keys before anything
    is written and again on the final keys; its result is in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mlanet.errors import AssetError, ChecksumError, MLANetError
from mlanet.fileutil import atomic_file, write_json_atomic
from mlanet.preprocess import CropBox, PreprocessCfg
from mlanet.data.sources.exclusion import ExclusionGuard, check_training_list
from mlanet.data.sources.schema import DEFINITIONS, FaceSample

logger = logging.getLogger(__name__)

#: Format tag in ``manifest.json`` and ``plan.json``.
STORE_FORMAT = "mlanet-store/1"
#: Store crop side over the network input side (the context around the network's crop).
DEFAULT_MARGIN = 1.25
#: Rows per shard (the unit of resumption).
DEFAULT_SHARD_SIZE = 512

MANIFEST_FILE = "manifest.json"
PLAN_FILE = "plan.json"
IMAGES_FILE = "images.npy"
LABELS_FILE = "labels.npz"
SHARD_DIR = "shards"

#: Landmark sets in order of preference for the face box.
DEFINITION_PRIORITY: tuple[str, ...] = ("ibug68", "aflw21", "mtfl5")

#: iBUG-68 point (or mean of points) matching each point of the smaller definitions, for
#: :func:`calibrate_box_rules` (None: no iBUG counterpart; AFLW's ear lobes).
IBUG68_EQUIVALENTS: Mapping[str, tuple[tuple[int, ...] | None, ...]] = {
    "aflw21": (
        (17,), (19,), (21,), (22,), (24,), (26,),  # brows: image-left brow = subject's right (17..21)
        (36,), (36, 37, 38, 39, 40, 41), (39,), (42,), (42, 43, 44, 45, 46, 47), (45,),  # eyes
        None, (31,), (30,), (35,), None,  # ear lobes, nose left / tip / right
        (48,), (62, 66), (54,), (8,),  # mouth left / centre / right, chin
    ),
    "mtfl5": ((36, 37, 38, 39, 40, 41), (42, 43, 44, 45, 46, 47), (30,), (48,), (54,)),
}


@dataclass(frozen=True)
class BoxRule:
    """How one landmark set gives the 68-point-equivalent face box.

    Attributes:
        definition: the landmark definition.
        points: indices used (all must be visible); None = every point.
        scale: 68-box side = ``scale * max(w, h)`` of the used points' box.
        offset: 68-box centre = used box centre + ``offset * max(w, h)`` (x, y).
        calibration: how the factors were found (one line).
    """

    definition: str
    points: tuple[int, ...] | None
    scale: float
    offset: tuple[float, float]
    calibration: str

    def box(self, points: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, float] | None:
        """``(centre (2,), side)`` of the 68-equivalent box, or None when the set cannot give one."""
        idx = np.arange(len(points)) if self.points is None else np.asarray(self.points)
        if not bool(np.all(visible[idx])):
            return None
        p = np.asarray(points, dtype=np.float64)[idx]
        lo, hi = p.min(axis=0), p.max(axis=0)
        side = float(np.max(hi - lo))
        if not side > 0 or not np.all(np.isfinite(p)):
            return None
        centre = (lo + hi) / 2 + np.asarray(self.offset) * side
        return centre, self.scale * side


_W300_CALIBRATION = "median over the 1,537 300-W training faces (subset points computed from the 68)"

#: The box rule of each landmark definition (see the module docstring).
BOX_RULES: Mapping[str, BoxRule] = {
    "ibug68": BoxRule("ibug68", None, 1.0, (0.0, 0.0), "the definition of the crop (68-point box)"),
    "aflw21": BoxRule("aflw21", tuple(i for i in range(21) if i not in (12, 16)), 1.039, (0.0, 0.0), _W300_CALIBRATION),
    "mtfl5": BoxRule("mtfl5", None, 2.039, (0.0, 0.141), _W300_CALIBRATION),
}


@dataclass(frozen=True)
class FaceCropRule:
    """A source whose images are face crops: the image centre is the face centre.

    Attributes:
        image_size: (width, height) every image must have (checked when decoded).
        side_ratio: image width / 68-equivalent box side.
        calibration: how ``side_ratio`` was found.
    """

    image_size: tuple[int, int]
    side_ratio: float
    calibration: str


#: Sources whose images are face crops (see the module docstring).
FACE_CROP_RULES: Mapping[str, FaceCropRule] = {
    "aflw-crops": FaceCropRule(
        (120, 120), 1.071 * math.sqrt(2.0),
        "median over the 4,379 AFLW crops with all 19 non-ear points visible: crop side = 1.071 * sqrt(2) * "
        "the aflw21 rule's 68-equivalent box side (IQR 1.028-1.130), centre within 0.5 px of the crop centre",
    ),
}


def face_box(sample: FaceSample) -> tuple[np.ndarray, float, str] | None:
    """``(centre (2,), side, rule name)`` of the sample's 68-equivalent face box in image pixels, or None.

    Rule name: ``"face-crop"`` for :data:`FACE_CROP_RULES` sources, else the definition whose
    :class:`BoxRule` gave the box (first usable in :data:`DEFINITION_PRIORITY`).
    """
    crop = FACE_CROP_RULES.get(sample.source)
    if crop is not None:
        w, h = crop.image_size
        return np.array([w / 2.0, h / 2.0]), w / crop.side_ratio, "face-crop"
    for name in DEFINITION_PRIORITY:
        ls = sample.landmark_sets.get(name)
        if ls is None:
            continue
        got = BOX_RULES[name].box(ls.points, ls.visible)
        if got is not None:
            return got[0], got[1], name
    return None


def store_size(input_size: int, margin: float) -> int:
    """S, the store crop side in pixels: ``round(input_size * margin)`` (at least ``input_size``)."""
    if not margin >= 1.0:
        raise ValueError(f"margin must be >= 1, got {margin}")
    return max(int(round(input_size * margin)), int(input_size))


def store_box(centre: np.ndarray, side68: float, preprocess: PreprocessCfg, size: int) -> CropBox:
    """The store crop: centred on the face box, side ``roi_scale * side68 * size / input_size``."""
    side = preprocess.roi_scale * side68 * size / preprocess.input_size
    return CropBox(float(centre[0]) - side / 2, float(centre[1]) - side / 2, side)


def calibrate_box_rules(samples: Iterable[FaceSample]) -> dict[str, dict[str, float]]:
    """Measure :data:`BOX_RULES`' factors on faces with iBUG-68 points (e.g. 300-W).

    For each definition in :data:`IBUG68_EQUIVALENTS`, its points are computed from the 68
    (means where a point is a mean), and per face the ratio of the 68-box side to the subset
    box side and the centre offset (in subset sides) are taken. Returns per definition the
    median ``scale``, ``dx``, ``dy``, the quartiles ``scale_q25``/``scale_q75`` and ``n``.
    """
    ratios: dict[str, list[float]] = {k: [] for k in IBUG68_EQUIVALENTS}
    offsets: dict[str, list[np.ndarray]] = {k: [] for k in IBUG68_EQUIVALENTS}
    for s in samples:
        ls = s.landmark_sets.get("ibug68")
        if ls is None or not ls.visible.all():
            continue
        p68 = ls.points.astype(np.float64)
        lo, hi = p68.min(0), p68.max(0)
        c68, s68 = (lo + hi) / 2, float(np.max(hi - lo))
        for name, eq in IBUG68_EQUIVALENTS.items():
            rule = BOX_RULES[name]
            pts = np.full((len(eq), 2), np.nan)
            for i, src in enumerate(eq):
                if src is not None:
                    pts[i] = p68[list(src)].mean(0)
            idx = np.arange(len(eq)) if rule.points is None else np.asarray(rule.points)
            q = pts[idx]
            qlo, qhi = q.min(0), q.max(0)
            side = float(np.max(qhi - qlo))
            ratios[name].append(s68 / side)
            offsets[name].append((c68 - (qlo + qhi) / 2) / side)
    out = {}
    for name in IBUG68_EQUIVALENTS:
        if not ratios[name]:
            continue
        r, d = np.asarray(ratios[name]), np.asarray(offsets[name])
        out[name] = {
            "scale": float(np.median(r)), "scale_q25": float(np.percentile(r, 25)),
            "scale_q75": float(np.percentile(r, 75)), "dx": float(np.median(d[:, 0])),
            "dy": float(np.median(d[:, 1])), "n": int(len(r)),
        }
    return out


# ----------------------------------------------------------------------------- plan
@dataclass
class _SourceInfo:
    reader: Any
    name: str
    root: str
    terms: str
    listed: int
    excluded: int
    skipped: int
    planned: int = 0
    no_box: int = 0


@dataclass(frozen=True)
class _Item:
    sample: FaceSample
    source: int
    box: CropBox
    rule: str


def _select(n: int, limit: int | None) -> list[int]:
    """The first ``limit`` indices of ``range(n)`` (all of them without a limit), as ``mlanet data label --limit``."""
    return list(range(n if limit is None else min(n, max(limit, 0))))


def _extras_identity(extras: Callable[..., Any] | None) -> dict[str, Any] | None:
    if extras is None:
        return None
    return {
        "name": str(getattr(extras, "name", getattr(extras, "__qualname__", type(extras).__qualname__))),
        "version": getattr(extras, "version", None),
        "point_sets": {str(k): v for k, v in dict(getattr(extras, "point_sets", {}) or {}).items()},
        **dict(getattr(extras, "details", {}) or {}),
    }


def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ----------------------------------------------------------------------------- shard writing
def _crop_to_uint8(image: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """(S, S, 3) uint8 crop (:func:`crop_uint8`, rounded)."""
    import torch

    from mlanet.data.landmarks import crop_uint8

    crop = crop_uint8(image, box, size)  # (3, S, S) float in [0, 1]
    return crop.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _labels_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(str(a.dtype).encode())
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    with atomic_file(path) as fh:
        np.savez(fh, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _shard_intact(path: Path, rows: np.ndarray) -> bool:
    """True if a finished shard's labels file is readable and its image rows still hash to what it recorded."""
    try:
        with np.load(path, allow_pickle=False) as z:
            recorded = str(z["_images_sha256"])
    except (OSError, ValueError, KeyError):
        return False
    return hashlib.sha256(np.ascontiguousarray(rows)).hexdigest() == recorded


def _fill_value(dtype: np.dtype) -> Any:
    return np.nan if np.issubdtype(dtype, np.floating) else 0


class _ShardWriter:
    """Builds the label arrays of one shard."""

    def __init__(self, n: int, definitions: Sequence[str], size: int, point_sets: Mapping[str, Any]) -> None:
        self.n, self.size, self.point_sets = n, size, point_sets
        self.a: dict[str, np.ndarray] = {
            "key": np.empty(n, dtype=object), "source": np.zeros(n, np.int16), "ok": np.zeros(n, bool),
            "yaw_deg": np.full(n, np.nan, np.float32), "crop_box": np.zeros((n, 3), np.float64),
            "image_hw": np.zeros((n, 2), np.int32), "box_rule": np.empty(n, dtype=object),
        }
        for d in definitions:
            L = DEFINITIONS[d].n_points
            self.a[f"points_{d}"] = np.full((n, L, 2), np.nan, np.float32)
            self.a[f"visible_{d}"] = np.zeros((n, L), bool)
        self.extras: dict[str, np.ndarray] = {}
        self.errors: list[str] = []

    def put(self, j: int, item: _Item, image: np.ndarray | None, extra: Mapping[str, np.ndarray] | None,
            error: str | None) -> None:
        a, s, box = self.a, item.sample, item.box
        a["key"][j], a["source"][j], a["box_rule"][j] = s.key, item.source, item.rule
        a["crop_box"][j] = box.as_array()
        a["ok"][j] = error is None
        if error is not None:
            self.errors.append(error)
        if image is not None:
            a["image_hw"][j] = image.shape[:2]
        if s.yaw_deg is not None:
            a["yaw_deg"][j] = s.yaw_deg
        for name, ls in s.landmark_sets.items():
            if f"points_{name}" in a:
                a[f"points_{name}"][j] = box.image_to_crop(ls.points.astype(np.float64), self.size)
                a[f"visible_{name}"][j] = ls.visible
        for name, value in (extra or {}).items():
            v = np.asarray(value)
            if name in self.point_sets:
                if v.ndim != 2 or v.shape[1] != 2:
                    raise ValueError(f"extras[{name!r}] of {s.key}: point sets must be (L, 2), got {v.shape}")
                v = box.image_to_crop(v.astype(np.float64), self.size).astype(np.float32)
            elif v.dtype == np.float64:
                v = v.astype(np.float32)
            store = self.extras.get(f"x_{name}")
            if store is None:
                store = np.full((self.n, *v.shape), _fill_value(v.dtype), dtype=v.dtype)
                self.extras[f"x_{name}"] = store
                self.extras[f"has_x_{name}"] = np.zeros(self.n, bool)
            if store.shape[1:] != v.shape:
                raise ValueError(f"extras[{name!r}] of {s.key}: shape {v.shape}, other samples have {store.shape[1:]}")
            store[j] = v
            self.extras[f"has_x_{name}"][j] = True

    def arrays(self) -> dict[str, np.ndarray]:
        out = dict(self.a)
        out["key"] = np.asarray(out["key"].tolist(), dtype=str)
        out["box_rule"] = np.asarray(out["box_rule"].tolist(), dtype=str)
        out.update(self.extras)
        return out


# ----------------------------------------------------------------------------- prepare
@dataclass
class PrepareReport:
    """What :func:`prepare_store` did: the store folder, its manifest and this call's work."""

    path: Path
    manifest: dict[str, Any]
    shards_written: int
    shards_skipped: int
    seconds: float = 0.0
    resumed: bool = False
    already_complete: bool = False


def prepare_store(
    sources: Sequence[Any],
    out: str | os.PathLike[str],
    *,
    preprocess: PreprocessCfg | None = None,
    input_size: int = 128,
    margin: float = DEFAULT_MARGIN,
    limit: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    extras: Callable[[FaceSample], Mapping[str, np.ndarray] | None] | None = None,
    guard: ExclusionGuard | None = None,
    progress: bool = True,
    box_fallback: Callable[[FaceSample], tuple[np.ndarray, float, str] | None] | None = None,
) -> PrepareReport:
    """Build (or finish) a store from training-source readers (see the module docstring).

    Args:
        sources: readers (:func:`mlanet.data.sources.open_source`), each a sequence of
            :class:`FaceSample` with ``source``, ``terms``, ``root`` (and optionally
            ``excluded`` / ``skipped`` lists, counted in the manifest).
        out: the store folder (created; an unfinished store there is resumed).
        preprocess: the network's preprocessing (``input_size``, ``roi_scale``); default
            ``PreprocessCfg(input_size=input_size)``.
        input_size: used only without ``preprocess``.
        margin: store crop side / network input side (S = round(input_size * margin)).
        limit: only the first ``limit`` samples of each source.
        shard_size: rows per shard.
        extras: per-sample extra arrays (see the module docstring).
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`).
        progress: show a progress bar (stderr).
        box_fallback: ``fn(sample) -> (centre (2,), side68, rule name) | None`` in image pixels for
            samples without a manual set (e.g. video frames placed by the teacher's 68 points,
            :meth:`mlanet.data.fits.LabelFitExtras.face_box`); its rule is described by
            ``box_fallback.rule_description`` in the manifest.

    Raises:
        AssetError: the planned or final keys name an AFLW2000-3D image; no sample has a face box.
        MLANetError: ``out`` holds a store (finished or not) prepared with other settings or samples.
        KeyboardInterrupt: passed on after the finished shards are safe (call again to resume).
    """
    from mlanet.progress import Progress

    t0 = time.perf_counter()
    pre = preprocess if preprocess is not None else PreprocessCfg(input_size=input_size)
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    S = store_size(pre.input_size, margin)
    guard = ExclusionGuard.default() if guard is None else guard
    out = Path(out)

    # ---- plan: every sample's crop box, from labels only (no pixels)
    infos: list[_SourceInfo] = []
    items: list[_Item] = []
    for si, reader in enumerate(sources):
        info = _SourceInfo(reader, str(reader.source), str(getattr(reader, "root", "")), str(reader.terms),
                           len(reader), len(getattr(reader, "excluded", []) or []),
                           len(getattr(reader, "skipped", []) or []))
        for i in _select(len(reader), limit):
            sample = reader[i]
            got = face_box(sample)
            if got is None and box_fallback is not None:
                got = box_fallback(sample)
            if got is None:
                info.no_box += 1
                continue
            centre, side68, rule = got
            items.append(_Item(sample, si, store_box(centre, side68, pre, S), rule))
            info.planned += 1
        if info.no_box:
            logger.warning("%s: %d sample(s) without a usable landmark set left out", info.name, info.no_box)
        infos.append(info)
    if not items:
        raise AssetError("no sample of the given sources has landmarks to place a face crop")
    keys = [it.sample.key for it in items]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise AssetError(f"sample keys are not unique across the sources (e.g. {dup}); is a source given twice?")
    check_training_list(keys, guard, what=f"store {out}")
    definitions = [d for d in DEFINITIONS if any(d in it.sample.landmark_sets for it in items)]
    extras_id = _extras_identity(extras)
    point_sets = (extras_id or {}).get("point_sets", {})
    N = len(items)
    shards = [(a, min(a + shard_size, N)) for a in range(0, N, shard_size)]
    settings = {
        "format": STORE_FORMAT,
        "input_size": pre.input_size,
        "size": S,
        "margin": S / pre.input_size,
        "preprocess": pre.to_dict(),
        "shard_size": shard_size,
        "limit": limit,
        "sources": [{"name": i.name, "root": i.root} for i in infos],
        "extras": extras_id,
    }
    if box_fallback is not None:
        owner = getattr(box_fallback, "__self__", None)  # a bound method: its object describes the rule
        settings["box_fallback"] = (getattr(box_fallback, "rule_description", None)
                                    or getattr(owner, "rule_description", None) or repr(box_fallback))
    plan_rows = [[it.sample.key, it.rule, *np.round(it.box.as_array(), 6).tolist()] for it in items]
    fingerprint = _sha256_json({"settings": settings, "rows": plan_rows})
    plan = {**settings, "n": N, "definitions": definitions, "fingerprint": fingerprint}

    out.mkdir(parents=True, exist_ok=True)
    manifest_path, plan_path = out / MANIFEST_FILE, out / PLAN_FILE
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("fingerprint") != fingerprint:
            raise MLANetError(f"{out}: holds a finished store prepared with other settings or samples; "
                              "choose another folder or remove it")
        logger.info("%s: store already complete (%d samples)", out, manifest["n"])
        return PrepareReport(out, manifest, 0, len(shards), time.perf_counter() - t0, already_complete=True)
    resumed = plan_path.is_file()
    if resumed:
        old = json.loads(plan_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise MLANetError(f"{out}: holds an unfinished store prepared with other settings or samples "
                              "(plan.json differs); choose another folder or remove it")
    else:
        write_json_atomic(plan_path, plan)
    shard_dir = out / SHARD_DIR
    shard_dir.mkdir(exist_ok=True)
    images_path = out / IMAGES_FILE
    shape = (N, S, S, 3)
    images = None
    if resumed and images_path.is_file():
        try:
            images = np.lib.format.open_memmap(images_path, mode="r+")
        except (ValueError, OSError) as exc:
            logger.warning("%s: unreadable (%s); starting the images again", images_path, exc)
            images = None
        if images is not None and (images.shape != shape or images.dtype != np.uint8):
            images = None
    if images is None:
        for f in shard_dir.iterdir():  # labels of shards whose images are gone are void
            f.unlink()
        images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)

    def shard_file(k: int) -> Path:
        return shard_dir / f"labels_{k:05d}.npz"

    bar = Progress(N, f"prepare {out.name}", enabled=progress, min_interval_s=10.0)
    written = skipped = 0
    done = 0
    try:
        for k, (a, b) in enumerate(shards):
            if shard_file(k).is_file():
                if _shard_intact(shard_file(k), images[a:b]):
                    skipped += 1
                    done += b - a
                    bar.update(done)
                    continue
                logger.warning("%s: image rows %d..%d do not match their finished shard; writing them again",
                               out, a, b - 1)
                shard_file(k).unlink()
            w = _ShardWriter(b - a, definitions, S, point_sets)
            for j in range(a, b):
                item = items[j]
                crop_rule = FACE_CROP_RULES.get(item.sample.source)
                image, error = None, None
                try:
                    image = item.sample.image
                    if crop_rule is not None and (image.shape[1], image.shape[0]) != crop_rule.image_size:
                        raise AssetError(f"{item.sample.image_path}: a {item.sample.source} crop must be "
                                         f"{crop_rule.image_size[0]}x{crop_rule.image_size[1]}, got "
                                         f"{image.shape[1]}x{image.shape[0]}")
                    images[j] = _crop_to_uint8(image, item.box, S)
                except AssetError as exc:
                    error = f"{item.sample.key}: {exc}"
                    logger.warning("left black: %s", error)
                    images[j] = 0
                extra = extras(item.sample) if extras is not None else None
                w.put(j - a, item, image, extra, error)
                done += 1
                bar.update(done)
            images.flush()
            arrays = w.arrays()
            arrays["_images_sha256"] = np.array(hashlib.sha256(np.ascontiguousarray(images[a:b])).hexdigest())
            arrays["_errors"] = np.asarray(w.errors, dtype=str) if w.errors else np.zeros(0, dtype="<U1")
            _save_npz_atomic(shard_file(k), arrays)
            written += 1
    finally:
        bar.close()
    del images

    # ---- finalize
    parts = [_load_npz(shard_file(k)) for k in range(len(shards))]
    shard_hashes = [str(p.pop("_images_sha256")) for p in parts]
    errors = [e for p in parts for e in p.pop("_errors").tolist()]
    labels = _concat_labels(parts)
    final_keys = labels["key"].tolist()
    if final_keys != keys:
        raise MLANetError(f"{out}: shard labels do not match the plan; remove the folder and prepare again")
    check_training_list(final_keys, guard, what=f"store {out}")
    labels_sha = _labels_sha256(labels)
    _save_npz_atomic(out / LABELS_FILE, labels)
    extras_spec = {}
    for label, v in labels.items():  # (k is a shard number above)
        if label.startswith("x_"):
            name = label[2:]
            extras_spec[name] = {"shape": list(v.shape[1:]), "dtype": str(v.dtype),
                                 "point_set": name in point_sets, "definition": point_sets.get(name)}
    ok = labels["ok"]
    src = labels["source"]
    rules_used = sorted(set(labels["box_rule"].tolist()))
    rule_table: dict[str, Any] = {}
    for r in rules_used:
        if r == "face-crop":
            rule_table[r] = {name: {"image_size": list(fr.image_size), "side_ratio": fr.side_ratio,
                                    "calibration": fr.calibration} for name, fr in FACE_CROP_RULES.items()}
        elif r not in BOX_RULES:  # placed by box_fallback
            rule_table[r] = settings.get("box_fallback")
        else:
            rule_table[r] = asdict(BOX_RULES[r])
    manifest = {
        "format": STORE_FORMAT,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mlanet_version": _version(),
        "n": N,
        "n_ok": int(ok.sum()),
        "input_size": pre.input_size,
        "size": S,
        "margin": S / pre.input_size,
        "preprocess": pre.to_dict(),
        "crop_rule": {
            "description": ("square centred on the sample's 68-point-equivalent face box, side roi_scale * box side "
                            "* size / input_size; the centre input_size pixels are the network crop"),
            "rules": rule_table,
            "priority": list(DEFINITION_PRIORITY),
        },
        "definitions": {d: {"n_points": DEFINITIONS[d].n_points,
                            "flip_permutation": list(DEFINITIONS[d].flip_permutation)} for d in definitions},
        "extras": extras_spec,
        "extras_labeller": extras_id,
        "sources": [
            {"name": i.name, "root": i.root, "terms": i.terms, "listed": i.listed,
             "excluded_aflw2000": i.excluded, "skipped_by_reader": i.skipped, "no_box": i.no_box,
             "planned": i.planned, "written": int(np.sum(ok & (src == si))),
             "failed": int(np.sum(~ok & (src == si)))}
            for si, i in enumerate(infos)
        ],
        "failed": errors[:50],
        "guard": {"checked_keys": len(final_keys), "passed": True,
                  "dev_folder": str(guard.dev_folder) if guard.dev_folder else None,
                  "max_aflw_number": guard.max_number},
        "shards": [{"start": a, "stop": b, "images_sha256": h} for (a, b), h in zip(shards, shard_hashes)],
        "labels_sha256": labels_sha,
        "files": {"images": IMAGES_FILE, "labels": LABELS_FILE},
        "fingerprint": fingerprint,
        "prepare_seconds_last_call": None,
    }
    manifest["content_sha256"] = _sha256_json({
        "shards": shard_hashes, "labels": labels_sha,
        "header": {k: manifest[k] for k in ("format", "n", "input_size", "size", "preprocess", "definitions")},
    })
    seconds = time.perf_counter() - t0
    manifest["prepare_seconds_last_call"] = round(seconds, 2)
    write_json_atomic(manifest_path, manifest)
    shutil.rmtree(shard_dir, ignore_errors=True)
    logger.info("%s: store complete: %d samples (%d failed), %dx%d, %.1f s", out, N, N - int(ok.sum()), S, S, seconds)
    return PrepareReport(out, manifest, written, skipped, seconds, resumed=resumed)


def _version() -> str:
    from mlanet import __version__

    return str(__version__)


def _concat_labels(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate shard label dicts; an extra missing from a shard is filled (NaN / 0, has False)."""
    names = sorted({k for p in parts for k in p})
    out: dict[str, np.ndarray] = {}
    for k in names:
        if k.startswith("has_x_"):
            continue
        ref = next(p[k] for p in parts if k in p)
        chunks = []
        for p in parts:
            n = len(p["key"])
            if k in p:
                if p[k].shape[1:] != ref.shape[1:]:
                    raise ValueError(f"{k}: shards disagree on the shape ({p[k].shape[1:]} vs {ref.shape[1:]})")
                chunks.append(p[k])
            else:  # an extra this shard never saw
                chunks.append(np.full((n, *ref.shape[1:]), _fill_value(ref.dtype), dtype=ref.dtype))
        out[k] = np.concatenate(chunks)
        if k.startswith("x_"):
            h = "has_" + k
            out[h] = np.concatenate([p[h] if h in p else np.zeros(len(p["key"]), bool) for p in parts])
    return out


# ----------------------------------------------------------------------------- reading
class Store:
    """A finished store (see the module docstring), images memory-mapped on first use.

    Args:
        path: the store folder.

    Attributes:
        path, manifest; ``size`` S; ``input_size``; ``margin`` (S / input_size);
        ``preprocess`` (:class:`PreprocessCfg`); ``definitions`` (names of the landmark sets
        stored); ``labels`` (name -> array, see the module docstring).

    Picklable without the mapping (a DataLoader worker maps the file again).

    Raises:
        AssetError: the folder is not a finished store of this format, or its files disagree
        with the manifest.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        mpath = self.path / MANIFEST_FILE
        if not mpath.is_file():
            hint = (" (unfinished: run the same 'mlanet data prepare' again to finish it)"
                    if (self.path / PLAN_FILE).is_file() else "")
            raise AssetError(f"{self.path}: not a finished training store (no {MANIFEST_FILE}){hint}")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AssetError(f"{mpath}: unreadable store manifest ({exc})") from None
        if self.manifest.get("format") != STORE_FORMAT:
            raise AssetError(f"{mpath}: store format {self.manifest.get('format')!r}, this MLANet reads {STORE_FORMAT}")
        m = self.manifest
        self.size: int = int(m["size"])
        self.input_size: int = int(m["input_size"])
        self.margin: float = float(m["margin"])
        self.preprocess = PreprocessCfg.from_dict(m["preprocess"])
        self.definitions: list[str] = list(m["definitions"])
        try:
            self.labels: dict[str, np.ndarray] = _load_npz(self.path / m["files"]["labels"])
        except (OSError, ValueError) as exc:
            raise AssetError(f"{self.path / m['files']['labels']}: unreadable store labels ({exc})") from None
        n = int(m["n"])
        for k, v in self.labels.items():
            if len(v) != n:
                raise AssetError(f"{self.path}: labels[{k!r}] has {len(v)} rows, the manifest says {n}")
        self._images: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    @property
    def images(self) -> np.ndarray:
        """(N, S, S, 3) uint8, memory-mapped read-only."""
        if self._images is None:
            path = self.path / self.manifest["files"]["images"]
            try:
                a = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise AssetError(f"{path}: unreadable store images ({exc})") from None
            if a.shape != (len(self), self.size, self.size, 3) or a.dtype != np.uint8:
                raise AssetError(f"{path}: shape {a.shape} {a.dtype}, expected ({len(self)}, {self.size}, {self.size}, 3) uint8")
            self._images = a
        return self._images

    def __len__(self) -> int:
        return int(self.manifest["n"])

    @property
    def keys(self) -> list[str]:
        return self.labels["key"].tolist()

    @property
    def sources(self) -> list[dict[str, Any]]:
        return list(self.manifest["sources"])

    @property
    def extras(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("extras", {}))

    def crop_box(self, row: int) -> CropBox:
        """The store crop of ``row`` in its original image's pixels."""
        x0, y0, side = self.labels["crop_box"][row].tolist()
        return CropBox(x0, y0, side)

    def points(self, row: int, definition: str) -> tuple[np.ndarray, np.ndarray]:
        """``(points (L, 2) store pixels, visible (L,))`` of a landmark set (all NaN / False if absent)."""
        return self.labels[f"points_{definition}"][row], self.labels[f"visible_{definition}"][row]

    def to_image(self, row: int, points: np.ndarray) -> np.ndarray:
        """Store-crop pixels (..., 2) of ``row`` -> its original image's pixels."""
        return np.asarray(self.crop_box(row).crop_to_image(np.asarray(points, dtype=np.float64), self.size))

    def verify(self) -> None:
        """Recompute the image and label hashes; :class:`ChecksumError` on a mismatch."""
        images = self.images
        for sh in self.manifest["shards"]:
            h = hashlib.sha256(np.ascontiguousarray(images[sh["start"]:sh["stop"]])).hexdigest()
            if h != sh["images_sha256"]:
                raise ChecksumError(f"{self.path}: image rows {sh['start']}..{sh['stop'] - 1} do not match their hash")
        if _labels_sha256(self.labels) != self.manifest["labels_sha256"]:
            raise ChecksumError(f"{self.path}: {LABELS_FILE} does not match its hash")

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}: {len(self)} crops {self.size}x{self.size}, sets {self.definitions})"


__all__ = [
    "BOX_RULES", "BoxRule", "DEFAULT_MARGIN", "DEFAULT_SHARD_SIZE", "DEFINITION_PRIORITY", "FACE_CROP_RULES",
    "FaceCropRule", "IBUG68_EQUIVALENTS", "PrepareReport", "STORE_FORMAT", "Store", "calibrate_box_rules",
    "face_box", "prepare_store", "store_box", "store_size",
]
