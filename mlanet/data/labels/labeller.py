"""Label every training face once: teacher 68 points + head pose, and MediaPipe's 468 points.

:func:`label_source` runs a :class:`Labeller` over a source reader (:mod:`mlanet.data.sources`)
and writes the results into a :class:`~.cache.LabelCache`, skipping faces already cached
(resumable: an interrupted run keeps its finished shards). :class:`TeacherMediaPipeLabeller`
is the real labeller: the 3DDFA_V2 MobileNet x0.5 teacher (:mod:`mlanet.teacher.tddfa_mb05`)
and MediaPipe FaceMesh (:class:`mlanet.data.mediapipe_labels.FaceMeshDetector`, the existing
MediaPipe code, with its measured pixel-convention correction).

Crop rules for the teacher (:class:`BoxRule`, per source in :data:`SOURCE_BOX_RULES`)
    ``whole-image`` (``aflw-crops``)
        The AFLW crops *are* the teacher's 120 x 120 inputs (cut by 3DDFA's benchmark code),
        so the crop is the whole image (``CropBox(0, 0, 120)``: the network sees the pixels
        unresampled).
    ``landmarks:ibug68`` (``300w``; any source with manual 68 points)
        3DDFA_V2's landmark rule from the manual 68 points: a square of side
        ``sqrt(2) * max(w, h)`` centred on their box (:func:`~mlanet.teacher.roi_from_landmarks`),
        the AFLW2000-3D protocol crop the teacher was measured with.
    ``detector:refine1`` (``mtfl`` -- 5 points do not define a face box -- and video frames)
        A face detector box (MediaPipe BlazeFace, :mod:`.detect`) with 3DDFA_V2's detector rule
        (side ``1.58 * (w + h) / 2``, centre moved down by ``0.14 * (w + h) / 2``,
        :func:`~mlanet.teacher.roi_from_detector_box`), then one refinement pass: the teacher
        runs again on the landmark-rule crop of its own 68 predictions (what 3DDFA_V2 does
        between video frames). The second prediction is the label. Where the detector sees
        several faces, the one holding most of the sample's manual points is used (at least
        half of them; without manual points the highest score). Where it finds none but
        MediaPipe's mesh does (on the same face), the crop starts from the mesh box
        (:func:`mlanet.data.mediapipe_labels.box_from_mp468`) instead. Checked on 200 random
        300-W faces against the landmark rule: inner-51 NME 2.88 % from the detector box
        alone, 2.80 % after one refinement, 2.81 % from the manual points.

Faces where no crop can be made are kept in the cache with ``status`` "no face found" (or
"manual landmarks too few for a box", "image unreadable") and counted, so they are not
retried on every run. MediaPipe's points are kept as *found* only when their centroid lies
inside the box of the teacher's 68 points (the same face); otherwise ``mp_status`` is
"found another face" (points stored, not to be used).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from mlanet.fileutil import file_sha256
from mlanet.preprocess import CropBox
from mlanet.progress import Progress
from mlanet.data.sources.schema import FaceSample
from mlanet.data.labels.cache import (
    BOX_DETECTOR,
    BOX_MANUAL,
    BOX_MESH,
    BOX_NONE,
    BOX_WHOLE_IMAGE,
    MP_FOUND,
    MP_NONE,
    MP_OTHER_FACE,
    STATUS_LABELLED,
    STATUS_NO_BOX,
    STATUS_NO_FACE,
    STATUS_UNREADABLE,
    LabelCache,
    LabelEntry,
    LabelTable,
    iter_chunks,
    lookup_key,
)

logger = logging.getLogger(__name__)

LABELLER_NAME = "tddfa_mb05+mediapipe468"
#: Version of the labelling logic below (crop rules, refinement, face choice, checks).
LABELLER_VERSION = 1

#: Entries per shard (an interrupted run loses at most one shard's work).
DEFAULT_SHARD_SIZE = 512

#: A detection / mesh box must hold at least this fraction of the sample's manual points.
MANUAL_INSIDE_FRACTION = 0.5
#: Margin added around a detection box (fraction of its side) when counting manual points inside.
MANUAL_BOX_MARGIN = 0.1

#: Terms of MediaPipe's models (bundled in the mediapipe 0.10.14 wheel).
MEDIAPIPE_TERMS = "MediaPipe 0.10.14 (Apache License 2.0) face mesh and face detection models, bundled in the wheel"


# ----------------------------------------------------------------------------- crop rules
@dataclass(frozen=True)
class BoxRule:
    """How the teacher's crop of a face is found (see the module docstring).

    Attributes:
        kind: ``"whole-image"``, ``"landmarks"`` or ``"detector"``.
        definition: the manual landmark definition (``"landmarks"`` only).
        refine: refinement passes from the teacher's own points (``"detector"`` only).
    """

    kind: str
    definition: str | None = None
    refine: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("whole-image", "landmarks", "detector"):
            raise ValueError(f"unknown box rule kind {self.kind!r}")
        if (self.kind == "landmarks") != (self.definition is not None):
            raise ValueError("a 'landmarks' rule needs a definition, other rules none")
        if self.refine < 0:
            raise ValueError("refine must be >= 0")

    @property
    def tag(self) -> str:
        """The string stored in the cache and matched on lookup."""
        if self.kind == "landmarks":
            return f"landmarks:{self.definition}"
        if self.kind == "detector":
            return f"detector:refine{self.refine}"
        return self.kind


WHOLE_IMAGE = BoxRule("whole-image")
IBUG68_LANDMARKS = BoxRule("landmarks", "ibug68")
DETECTOR_REFINE = BoxRule("detector", refine=1)

#: Crop rule per source name; other sources: :data:`IBUG68_LANDMARKS` when the sample has
#: manual 68 points, else :data:`DETECTOR_REFINE` (:func:`box_rule_for`).
SOURCE_BOX_RULES: Mapping[str, BoxRule] = {
    "aflw-crops": WHOLE_IMAGE,
    "300w": IBUG68_LANDMARKS,
    "mtfl": DETECTOR_REFINE,
    "video-folder": DETECTOR_REFINE,
}


def box_rule_for(sample: FaceSample) -> BoxRule:
    """The crop rule of ``sample`` (:data:`SOURCE_BOX_RULES`, then the fallback described there)."""
    rule = SOURCE_BOX_RULES.get(sample.source)
    if rule is not None:
        return rule
    return IBUG68_LANDMARKS if "ibug68" in sample.landmark_sets else DETECTOR_REFINE


# ----------------------------------------------------------------------------- keys
class ContentHasher:
    """``hasher(sample)`` -> the sample's content id: SHA-256 of its file, ``#<frame>`` for video frames.

    Each file is hashed once per hasher (a video's frames share one hash).
    """

    def __init__(self) -> None:
        self._memo: dict[str, str] = {}

    def __call__(self, sample: FaceSample) -> str:
        path = str(sample.image_path)
        sha = self._memo.get(path)
        if sha is None:
            sha = self._memo[path] = file_sha256(path)
        frame = sample.meta.get("frame_index")
        return sha if frame is None else f"{sha}#{int(frame):06d}"


def annotation_digest(sample: FaceSample) -> str:
    """16 hex of the SHA-256 of the sample's manual labels (every landmark set, and yaw)."""
    h = hashlib.sha256()
    for name in sorted(sample.landmark_sets):
        ls = sample.landmark_sets[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.nan_to_num(ls.points, nan=-1e9), dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(ls.visible, dtype=np.uint8).tobytes())
    h.update(repr(sample.yaw_deg).encode())
    return h.hexdigest()[:16]


def manual_points(sample: FaceSample) -> np.ndarray:
    """(M, 2) every visible manual point of the sample (all definitions), float64."""
    sets = [ls.points[ls.visible] for ls in sample.landmark_sets.values()]
    return np.concatenate(sets).astype(np.float64) if sets else np.zeros((0, 2))


# ----------------------------------------------------------------------------- labeller protocol
@dataclass
class FaceLabels:
    """What a labeller returns for one face (fields as in :class:`~.cache.LabelEntry`)."""

    status: int
    box_from: int = BOX_NONE
    image_hw: tuple[int, int] = (0, 0)
    crop_box: np.ndarray | None = None
    det_box: np.ndarray | None = None
    det_score: float = float("nan")
    t68: np.ndarray | None = None
    t68_3d: np.ndarray | None = None
    pose: np.ndarray | None = None
    mp_status: int = MP_NONE
    mp468: np.ndarray | None = None


class Labeller(Protocol):
    """Anything that labels one face; see :class:`TeacherMediaPipeLabeller`."""

    def identity(self) -> dict[str, Any]:
        """JSON-ready: ``name``, ``version``, component versions (keyed on), and ``terms`` (not keyed on)."""

    def label(self, image: np.ndarray, sample: FaceSample, rule: BoxRule) -> FaceLabels:
        """Labels of ``sample`` whose pixels are ``image`` ((H, W, 3) uint8 RGB), cropped by ``rule``."""


def labeller_id(identity: Mapping[str, Any]) -> str:
    """16 hex of the SHA-256 of the identity without its ``terms`` (the cache key part of a labeller)."""
    body = {k: v for k, v in identity.items() if k != "terms"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the real labeller
def _inside_fraction(points: np.ndarray, x0: float, y0: float, x1: float, y1: float, margin: float) -> float:
    if len(points) == 0:
        return 1.0
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    inside = ((points[:, 0] >= x0 - mx) & (points[:, 0] <= x1 + mx) & (points[:, 1] >= y0 - my)
              & (points[:, 1] <= y1 + my))
    return float(inside.mean())


def choose_face(faces: Sequence[Any], manual: np.ndarray) -> Any | None:
    """The detection (``.box`` x0 y0 x1 y1, ``.score``) holding most manual points (>= half), or the
    highest-scoring one when there are no manual points; None if none qualifies."""
    if not faces:
        return None
    if len(manual) == 0:
        return max(faces, key=lambda f: f.score)
    scored = [(_inside_fraction(manual, *np.asarray(f.box, dtype=np.float64), MANUAL_BOX_MARGIN), f.score, i)  # type: ignore[call-arg]  # *array
              for i, f in enumerate(faces)]
    frac, _, i = max(scored)
    return faces[i] if frac >= MANUAL_INSIDE_FRACTION else None


def _same_face(mesh: np.ndarray, t68: np.ndarray) -> bool:
    c = mesh.mean(axis=0)
    lo, hi = t68.min(axis=0), t68.max(axis=0)
    return bool(np.all(c >= lo) and np.all(c <= hi))


class TeacherMediaPipeLabeller:
    """The 3DDFA_V2 teacher + MediaPipe FaceMesh (+ BlazeFace boxes) labeller (module docstring).

    Args:
        teacher: a loaded :class:`mlanet.teacher.Teacher` (:func:`mlanet.teacher.load_tddfa_mb05`).
        mesh: callable image -> (468, 2) or None; default a new ``FaceMeshDetector(refine=refine_mesh)``.
        detector: callable image -> list of :class:`.detect.FaceBox`; default a new
            :class:`.detect.FaceBoxDetector` (built only if given None and needed).
        refine_mesh: MediaPipe's attention mesh (lids that close on a closed eye; see
            :class:`~mlanet.data.mediapipe_labels.FaceMeshDetector`). Part of the labeller's identity, so refined
            and unrefined labels never mix in a cache.
    """

    def __init__(self, teacher: Any, mesh: Callable[[np.ndarray], np.ndarray | None] | None = None,
                 detector: Callable[[np.ndarray], list[Any]] | None = None, refine_mesh: bool = False) -> None:
        from mlanet.data.mediapipe_labels import FaceMeshDetector
        from mlanet.data.labels.detect import FaceBoxDetector

        self.teacher = teacher
        self._own: list[Any] = []
        self.refine_mesh = bool(refine_mesh)
        if mesh is None:
            mesh = FaceMeshDetector(refine=self.refine_mesh)
            self._own.append(mesh)
        if detector is None:
            detector = FaceBoxDetector()
            self._own.append(detector)
        self.mesh = mesh
        self.detector = detector

    def identity(self) -> dict[str, Any]:
        from mlanet.data import mediapipe_labels as mpl

        t = self.teacher
        return {
            "name": LABELLER_NAME,
            "version": LABELLER_VERSION,
            "teacher": {"name": t.name, "version": t.version,
                        "files_sha256": {k: v.get("sha256") for k, v in sorted(t.files.items())}},
            "mediapipe": {
                "version": getattr(self.mesh, "version", "unknown"),
                "mesh": mpl.MESH_DESCRIPTION[self.refine_mesh],
                "mesh_convention": f"mediapipe_to_pixels roi={mpl.MEDIAPIPE_ROI_PER_BOX}xbox/"
                                   f"{mpl.MEDIAPIPE_LANDMARK_INPUT_SIZE}",
                "detector": self.detector.describe() if hasattr(self.detector, "describe") else str(self.detector),
            },
            "terms": {"teacher": dict(t.terms), "mediapipe": MEDIAPIPE_TERMS},
        }

    def _predict(self, image: np.ndarray, box: CropBox) -> Any:
        return self.teacher.predict([image], [box])

    def label(self, image: np.ndarray, sample: FaceSample, rule: BoxRule) -> FaceLabels:
        from mlanet.teacher.tddfa_mb05 import LANDMARK_ROI_SCALE, roi_from_detector_box, roi_from_landmarks
        from mlanet.data.mediapipe_labels import box_from_mp468

        H, W = image.shape[:2]
        mesh = self.mesh(image)
        mesh = None if mesh is None else np.asarray(mesh, dtype=np.float64)
        out = FaceLabels(status=STATUS_NO_FACE, image_hw=(H, W))
        if mesh is not None:
            out.mp468, out.mp_status = mesh, MP_FOUND
        box: CropBox | None = None
        if rule.kind == "whole-image":
            s = float(max(H, W))
            box, out.box_from = CropBox((W - s) / 2, (H - s) / 2, s), BOX_WHOLE_IMAGE
        elif rule.kind == "landmarks":
            ls = sample.landmark_sets.get(rule.definition or "")
            pts = ls.points[ls.visible] if ls is not None else np.zeros((0, 2))
            try:
                box = roi_from_landmarks(pts)
                out.box_from = BOX_MANUAL
            except ValueError:
                out.status = STATUS_NO_BOX
                return out
        else:
            manual = manual_points(sample)
            face = choose_face(self.detector(image), manual)
            if face is not None:
                b = np.asarray(face.box, dtype=np.float64)
                box, out.box_from = roi_from_detector_box(*b.tolist()), BOX_DETECTOR
                out.det_box, out.det_score = b, float(face.score)
            elif mesh is not None and _inside_fraction(  # type: ignore[call-arg]  # *array: mypy cannot count it
                manual, *mesh.min(axis=0), *mesh.max(axis=0), MANUAL_BOX_MARGIN
            ) >= MANUAL_INSIDE_FRACTION:
                box, out.box_from = box_from_mp468(mesh, LANDMARK_ROI_SCALE), BOX_MESH
        if box is None:
            return out
        pred = self._predict(image, box)
        for _ in range(rule.refine if rule.kind == "detector" else 0):
            box = roi_from_landmarks(pred.points2d[0])
            pred = self._predict(image, box)
        out.status = STATUS_LABELLED
        out.crop_box = box.as_array()
        out.t68, out.t68_3d = pred.points2d[0], pred.points3d[0]
        out.pose = pred.pose.angles[0]
        if mesh is not None and not _same_face(mesh, out.t68):
            out.mp_status = MP_OTHER_FACE
        return out

    def close(self) -> None:
        for obj in self._own:
            obj.close()
        self._own = []


# ----------------------------------------------------------------------------- the run
@dataclass
class RunStats:
    """What :func:`label_source` did for one source.

    ``counts``: :meth:`~.cache.LabelTable.counts` of the entries of this run's samples;
    ``seconds_per_face``: mean labelling time (decode included) of the faces computed now.
    """

    source: str
    labeller_id: str
    samples: int = 0
    hits: int = 0
    computed: int = 0
    unhashable: int = 0
    shards_written: int = 0
    hash_s: float = 0.0
    label_s: float = 0.0
    wall_s: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds_per_face(self) -> float:
        return self.label_s / self.computed if self.computed else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = dict(vars(self))
        d["seconds_per_face"] = self.seconds_per_face
        return d


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rows_for(table: LabelTable, lookups: Iterable[str]) -> np.ndarray:
    """Rows of ``table`` for the given lookup keys (missing ones left out), in order."""
    index: dict[str, int] = {}
    for i, (c, b, a) in enumerate(zip(table["content"].tolist(), table["box_rule"].tolist(),
                                      table["annotation"].tolist())):
        index[lookup_key(c, b, a)] = i
    return np.array([index[k] for k in lookups if k in index], dtype=np.int64)


def _subset(table: LabelTable, rows: np.ndarray) -> LabelTable:
    return LabelTable(table.source, table.labeller_id, {k: v[rows] for k, v in table.arrays.items()},
                      table.shards, table.metas)


def label_source(
    reader: Sequence[FaceSample],
    cache: LabelCache,
    labeller: Labeller,
    *,
    limit: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    progress: bool = True,
    rule_for: Callable[[FaceSample], BoxRule] = box_rule_for,
) -> RunStats:
    """Label the samples of ``reader`` not yet in ``cache`` (see the module docstring).

    Args:
        reader: a source reader (``source``, ``terms``, ``root`` attributes; a sequence of samples).
        cache: where labels go (``<cache>/<reader.source>/``).
        labeller: e.g. :class:`TeacherMediaPipeLabeller`.
        limit: only the first ``limit`` samples.
        shard_size: entries per shard.
        progress: show a progress bar (stderr).
        rule_for: sample -> :class:`BoxRule`.

    The source's manifest (terms, root, labeller identity and terms) is written before any
    work and updated with the counts at the end (``state`` "complete", or "interrupted" on
    ``KeyboardInterrupt``, which is re-raised: the shards finished so far stay, the one in
    flight is discarded).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    t_start = time.perf_counter()
    source = str(getattr(reader, "source"))
    identity = labeller.identity()
    lid = labeller_id(identity)
    stats = RunStats(source=source, labeller_id=lid)
    samples = list(reader)[: (len(reader) if limit is None else limit)]
    stats.samples = len(samples)
    manifest: dict[str, Any] = {
        "root": str(getattr(reader, "root", "")),
        "terms": str(getattr(reader, "terms", "")),
        "reader": repr(reader),
        "options": {k: getattr(reader, k) for k in ("every",) if hasattr(reader, k)},
        "limit": limit,
        "labeller": identity,
        "labeller_id": lid,
        "state": "running",
        "updated_utc": _now(),
    }
    cache.write_manifest(source, manifest)
    stale = cache.remove_stale_temporaries(source)
    if stale:
        logger.info("%s: removed %d temporary shard file(s) of an interrupted run", source, stale)

    hasher = ContentHasher()
    t0 = time.perf_counter()
    keyed: list[tuple[FaceSample, str, BoxRule, str]] = []
    bar = Progress(len(samples), f"hash {source}", enabled=progress)
    for i, s in enumerate(samples):
        try:
            content = hasher(s)
        except OSError as exc:
            logger.warning("%s: cannot read %s (%s); skipped", s.key, s.image_path, exc.strerror or exc)
            stats.unhashable += 1
            continue
        keyed.append((s, content, rule_for(s), annotation_digest(s)))
        bar.update(i + 1)
    bar.close()
    stats.hash_s = time.perf_counter() - t0
    lookups = [lookup_key(c, r.tag, a) for _, c, r, a in keyed]
    done = cache.existing(source, lid)
    todo = [k for k, lk in zip(keyed, lookups) if lk not in done]
    stats.hits = len(keyed) - len(todo)
    logger.info("%s: %d samples, %d cached, %d to label", source, len(keyed), stats.hits, len(todo))

    shard_meta = {
        "labeller_id": lid,
        "labeller": identity,
        "root": manifest["root"],
        "terms": manifest["terms"],
    }
    bar = Progress(len(todo), f"label {source}", enabled=progress)
    n_done = n_found = n_mp = 0
    try:
        for chunk in iter_chunks(todo, shard_size):
            entries = []
            for s, content, rule, ann in chunk:
                t1 = time.perf_counter()
                try:
                    image = s.image
                except Exception as exc:  # noqa: BLE001 - any decode failure is recorded, not fatal
                    logger.warning("%s: %s", s.key, exc)
                    result = FaceLabels(status=STATUS_UNREADABLE)
                else:
                    result = labeller.label(image, s, rule)
                entry = LabelEntry(
                    key=s.key, content=content, box_rule=rule.tag, annotation=ann,
                    yaw_deg=s.yaw_deg, manual={d: ls.points for d, ls in s.landmark_sets.items()},
                    **vars(result),
                )
                entry.seconds = time.perf_counter() - t1
                entries.append(entry)
                n_done += 1
                n_found += entry.status == STATUS_LABELLED
                n_mp += entry.mp_status == MP_FOUND
                bar.update(n_done, labelled=n_found, mediapipe=n_mp)
            cache.write_shard(source, entries, {**shard_meta, "created_utc": _now()})
            stats.shards_written += 1
            stats.computed += len(entries)
            stats.label_s += float(sum(e.seconds for e in entries))
    except KeyboardInterrupt:
        bar.close()
        stats.wall_s = time.perf_counter() - t_start
        logger.warning("%s: interrupted; %d shard(s) (%d faces) of this run kept, the one in flight discarded",
                       source, stats.shards_written, stats.computed)
        cache.write_manifest(source, {**manifest, "state": "interrupted", "updated_utc": _now(),
                                      "run": stats.to_dict()})
        raise
    bar.close()
    table = cache.load(source, lid)
    stats.counts = _subset(table, rows_for(table, lookups)).counts()
    stats.wall_s = time.perf_counter() - t_start
    cache.write_manifest(source, {**manifest, "state": "complete", "updated_utc": _now(),
                                  "counts": stats.counts, "run": stats.to_dict()})
    return stats


def load_labels(cache: LabelCache, source: str) -> LabelTable:
    """The entries of ``source`` made by the labeller of its last run (its manifest's ``labeller_id``)."""
    manifest = cache.read_manifest(source)
    return cache.load(source, manifest.get("labeller_id"))

