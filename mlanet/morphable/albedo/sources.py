"""Training faces for the data-driven albedo model (:mod:`.fit`), with their terms (issue 15).

The albedo is built from the **training** sources only (``mlanet assets albedo --source
NAME=PATH``, the same readers and convention as ``mlanet data prepare``), never from
AFLW2000-3D, which is validation only:

=================  =====================================================================
source             68 landmarks for the geometry fit
=================  =====================================================================
``300w``           the manual iBUG 68 points of each ``.pts`` file
``video-folder``   the teacher's 68 points (3DDFA_V2) of a label cache (``--labels DIR``,
                   from ``mlanet data label``), for frames ``0, K, 2K, ...`` (``--every K``)
=================  =====================================================================

Not used (:data:`UNFIT_SOURCES`): ``aflw-crops`` and ``mtfl``, whose faces are too small for
a colour unwrap at the 224 px crop the fit uses (see the reasons there).

AFLW2000-3D is refused, not just skipped: a source folder that is (inside) the dev folder or in
the AFLW2000-3D layout is refused by its reader; a folder holding any file named like an
AFLW2000-3D image (which the readers would silently drop) is refused here; and the final list
of faces goes through :func:`mlanet.data.sources.check_training_list`. Each refusal is an
:class:`~mlanet.errors.AssetError` with a one-line message (exit status 2 from the CLI).

Faces are selected per source with :func:`select_faces` (a cap shared in proportion to what
each source has, evenly spaced within a source) and decoded by :func:`load_faces`, which keeps
only the part of each image that the builder's crop can reach (exactly the same crop, less
memory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mlanet.errors import AssetError
from mlanet.morphable.albedo.fit import FaceSample

#: Sources the albedo may be built from -> where their 68 landmarks come from.
ALBEDO_SOURCES: dict[str, str] = {
    "300w": "manual iBUG 68 points (.pts)",
    "video-folder": "teacher 68 points (3DDFA_V2, AFLW2000-3D's 68-point definition) from a label cache",
}

#: Training sources left out of the albedo, and why (in the refusal message).
UNFIT_SOURCES: dict[str, str] = {
    "aflw-crops": "its faces are 120x120 crops (the face about 70-90 px wide), so the 224 px unwrap would "
                  "only upsample blur and JPEG blocks, and it has no 68 manual points (21 visible-only)",
    "mtfl": "its images are 80x80 (eye distance about 15 px, the face about 45 px wide), too small for a "
            "colour unwrap, and it has 5 points only",
}

#: Default cap on the number of faces (see ``mlanet assets albedo --max-faces``): all of 300-W (1,537)
#: plus the clips' frames at the default ``--every`` (183). Measured on one core: about 8 faces/s
#: (1,720 faces in 3.5 min); peak memory grows by about 4-5 MB per face (delighting arrays at the
#: face model's 9,409 vertices), so the default needs up to about 9 GB.
DEFAULT_MAX_FACES = 2000
#: Default frame step for video folders (``--every``): one frame a second at 25 fps.
DEFAULT_EVERY = 25


@dataclass
class AlbedoSource:
    """One training source, opened for the albedo: its reader and the faces with 68 landmarks.

    Attributes:
        name: the source name (``300w``, ``video-folder``).
        root: the folder given.
        reader: the :class:`mlanet.data.sources.SourceReader`.
        samples: the reader's samples that have 68 landmarks, in the reader's order.
        landmarks: (len(samples), 68, 2) image pixels (project convention).
        landmark_info: how the landmarks were obtained (recorded in the albedo file).
        skipped: reason -> number of the reader's samples left out (no label, ...).
    """

    name: str
    root: Path
    reader: Any
    samples: list[Any]
    landmarks: np.ndarray
    landmark_info: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def terms(self) -> str:
        return str(self.reader.terms)


def refuse_unfit(name: str) -> None:
    """Raise :class:`AssetError` for a source the albedo is not built from (with the reason)."""
    if name in ALBEDO_SOURCES:
        return
    if name in UNFIT_SOURCES:
        raise AssetError(f"--source {name}: not used for the albedo: {UNFIT_SOURCES[name]}; "
                         f"albedo sources: {', '.join(ALBEDO_SOURCES)}")
    import difflib

    from mlanet.data.sources import UnknownSourceError

    close = difflib.get_close_matches(name, list(ALBEDO_SOURCES), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownSourceError(f"--source {name}: not an albedo source ({hint}albedo sources: {', '.join(ALBEDO_SOURCES)})")


def refuse_aflw2000(name: str, root: Path, guard: Any) -> None:
    """Refuse ``root`` before its reader opens it: the dev folder, the AFLW2000-3D layout, or any file in it
    named like an AFLW2000-3D image (the readers would drop those with a warning; here they are an error)."""
    guard.refuse_folder(root, f"mlanet assets albedo ({name})")
    if not root.is_dir():
        return
    with os.scandir(root) as it:
        names = sorted(e.name for e in it if e.is_file() and not e.name.startswith("."))
    _refuse_names(name, root, [n for n in names if guard.is_excluded(n)])


def _refuse_names(name: str, root: Path, excluded: Sequence[str]) -> None:
    if excluded:
        raise AssetError(
            f"{root}: holds {len(excluded)} AFLW2000-3D file(s) (e.g. {list(excluded[:3])}); AFLW2000-3D is validation "
            f"only and the albedo is never built from it: remove them from the {name} folder"
        )


def _refuse_excluded(name: str, root: Path, reader: Any) -> None:
    """Belt and braces after :func:`refuse_aflw2000`: anything the reader itself dropped as AFLW2000-3D."""
    _refuse_names(name, root, list(getattr(reader, "excluded", [])))


def _teacher_landmarks(reader: Any, labels_dir: Path, progress: Callable[[str], None]) -> tuple[
        list[Any], np.ndarray, dict[str, Any], dict[str, int]]:
    """Samples of ``reader`` with a labelled teacher entry in the label cache, their 68 points, info, skips."""
    from mlanet.data.labels import LabelCache, annotation_digest, box_rule_for, load_labels
    from mlanet.data.labels.labeller import ContentHasher

    cache = LabelCache(labels_dir)
    source = str(reader.source)
    if not cache.root.is_dir():
        raise AssetError(f"--labels {labels_dir}: no such label cache folder")
    if source not in cache.sources():
        raise AssetError(
            f"--labels {labels_dir}: has no '{source}' labels (has: {', '.join(cache.sources()) or 'none'}); "
            f"run `mlanet data label --source {source}={reader.root} --every {getattr(reader, 'every', 1)} "
            f"--cache {labels_dir}`"
        )
    manifest = cache.read_manifest(source)
    table = load_labels(cache, source)
    progress(f"{source}: matching {len(reader)} frames with the {len(table)} entries of {cache.root / source}")
    hasher = ContentHasher()
    keep, pts = [], []
    missing = unlabelled = 0
    for s in reader:
        row = table.row(hasher(s), box_rule_for(s).tag, annotation_digest(s))
        if row is None:
            missing += 1
            continue
        t68 = np.asarray(table["t68"][row], dtype=np.float64)
        if int(table["status"][row]) != 0 or not np.all(np.isfinite(t68)):
            unlabelled += 1
            continue
        keep.append(s)
        pts.append(t68)
    skipped = {k: v for k, v in (("not in the label cache", missing), ("no face found by the teacher", unlabelled)) if v}
    if not keep:
        raise AssetError(
            f"--labels {labels_dir}: none of the {len(reader)} frames of {reader.root} (every {getattr(reader, 'every', 1)}) "
            f"has a teacher label; run `mlanet data label --source {source}={reader.root} --every "
            f"{getattr(reader, 'every', 1)} --cache {labels_dir}`"
        )
    labeller = manifest.get("labeller") or {}
    info = {
        "definition": "aflw2000_68 (teacher)",
        "from": f"label cache {Path(labels_dir).resolve() / source}",
        "labeller": labeller.get("name"),
        "labeller_id": manifest.get("labeller_id"),
        "terms": (labeller.get("terms") or {}).get("teacher"),
    }
    return keep, np.stack(pts), info, skipped


def open_albedo_sources(
    specs: Sequence[tuple[str, str | os.PathLike[str]]],
    *,
    labels: str | os.PathLike[str] | None = None,
    every: int = DEFAULT_EVERY,
    guard: Any = None,
    progress: Callable[[str], None] | None = None,
) -> list[AlbedoSource]:
    """Open the albedo's training sources (see the module docstring).

    Args:
        specs: ``(name, folder)`` pairs, e.g. from ``--source 300w=DIR``.
        labels: label cache folder (needed by ``video-folder``).
        every: frame step of ``video-folder``.
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`, the shared dev folder).

    Raises :class:`AssetError` (one-line message) for an unfit or unknown source, a repeated
    name, AFLW2000-3D data, a missing label cache, or a source without faces.
    """
    from mlanet.data.sources import ExclusionGuard, open_source

    say = progress or (lambda m: None)
    guard = ExclusionGuard.default() if guard is None else guard
    names = [n for n, _ in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise AssetError(f"--source {dup[0]} given twice (one folder per source name)")
    if int(every) != every or every < 1:
        raise AssetError(f"--every {every}: must be an integer >= 1")
    out = []
    for name, path in specs:
        refuse_unfit(name)
        root = Path(path).expanduser()
        options: dict[str, Any] = {"guard": guard}
        if name == "video-folder":
            if labels is None:
                raise AssetError(
                    f"--source video-folder={root}: video frames have no landmarks; give --labels DIR, a label cache "
                    f"from `mlanet data label --source video-folder={root} --every {every} --cache DIR`"
                )
            options["every"] = int(every)
        refuse_aflw2000(name, root, guard)
        reader = open_source(name, root, **options)
        _refuse_excluded(name, root, reader)
        if name == "300w":
            samples = list(reader)
            lms = np.stack([np.asarray(s.landmark_sets["ibug68"].points, dtype=np.float64) for s in samples]) \
                if samples else np.zeros((0, 68, 2))
            info: dict[str, Any] = {"definition": "ibug68 (manual, .pts)"}
            skipped: dict[str, int] = {}
        else:
            samples, lms, info, skipped = _teacher_landmarks(reader, Path(labels).expanduser(), say)
            info["every"] = int(every)
        if not samples:
            raise AssetError(f"{root}: no faces with 68 landmarks in this {name} folder")
        say(f"{name} {root}: {len(samples)} faces with 68 landmarks"
            + (f" ({', '.join(f'{v} {k}' for k, v in skipped.items())})" if skipped else ""))
        out.append(AlbedoSource(name, root, reader, samples, lms, info, skipped))
    return out


def select_faces(counts: Sequence[int], max_faces: int | None) -> list[np.ndarray]:
    """Indices to use in each source: all of them, or a cap shared in proportion to ``counts``.

    Within a source the picks are evenly spaced over its (sorted) samples, so every part of a
    source (AFW and HELEN in 300-W, every clip of a video folder) keeps its share.
    Deterministic: the same input gives the same faces.
    """
    counts = [int(c) for c in counts]
    total = sum(counts)
    if max_faces is None or total <= max_faces:
        return [np.arange(c) for c in counts]
    if max_faces < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces}")
    exact = [max_faces * c / total for c in counts]
    quota = [math.floor(e) for e in exact]
    for i in sorted(range(len(counts)), key=lambda i: quota[i] - exact[i])[: max_faces - sum(quota)]:
        quota[i] += 1  # largest remainders first
    return [np.unique(np.round(np.linspace(0, c - 1, q)).astype(np.int64)) if q else np.zeros(0, np.int64)
            for c, q in zip(counts, quota)]


def crop_window(shape: tuple[int, ...], landmarks: np.ndarray, roi_scale: float, margin: int = 2) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)``: the part of an image of ``shape`` that the builder's crop around ``landmarks`` reads.

    The crop (:func:`mlanet.preprocess.crop_image`, bilinear, zero outside the image) of the
    box :func:`mlanet.preprocess.box_from_points` reads pixels at most one pixel outside that
    box; ``margin`` pixels more are kept, and the window is clipped to the image. Cropping the
    image to it (and shifting the landmarks by ``(x0, y0)``) leaves the builder's crop unchanged.
    """
    from mlanet.preprocess import box_from_points

    box = box_from_points(landmarks, roi_scale)
    H, W = shape[:2]
    x0 = max(0, math.floor(box.x0) - margin)
    y0 = max(0, math.floor(box.y0) - margin)
    x1 = min(W, math.ceil(box.x0 + box.size) + margin)
    y1 = min(H, math.ceil(box.y0 + box.size) + margin)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def load_faces(
    source: AlbedoSource,
    indices: np.ndarray,
    roi_scale: float,
    progress: Callable[[str], None] | None = None,
) -> list[FaceSample]:
    """Decode the faces ``indices`` of ``source`` as :class:`~.fit.FaceSample` (named by sample key).

    Only the window :func:`crop_window` of each image is kept. A face that cannot be decoded
    raises the reader's :class:`AssetError` naming the file.
    """
    say = progress or (lambda m: None)
    out = []
    for n, i in enumerate(indices):
        s = source.samples[int(i)]
        lm = source.landmarks[int(i)]
        image = s.image
        x0, y0, x1, y1 = crop_window(image.shape, lm, roi_scale)
        out.append(FaceSample(name=s.key, image=np.ascontiguousarray(image[y0:y1, x0:x1]),
                              landmarks=lm - np.array([x0, y0], dtype=np.float64)))
        if (n + 1) % 250 == 0:
            say(f"{source.name}: decoded {n + 1}/{len(indices)} faces")
    close = getattr(source.reader, "close", None)
    if close is not None:
        close()
    return out


def source_entry(source: AlbedoSource, keys: Sequence[str], rejected: Sequence[str]) -> dict[str, Any]:
    """The albedo file's header entry for ``source``: name, folder, terms, counts, landmarks and the faces used."""
    rej = set(rejected)
    return {
        "name": source.name,
        "path": str(source.root.resolve()),
        "terms": source.terms,
        "counts": {
            "in_folder": len(source.reader),
            "with_landmarks": len(source.samples),
            "selected": len(keys),
            "used": sum(1 for k in keys if k not in rej),
            "rejected_by_fit": sum(1 for k in keys if k in rej),
        },
        "skipped": dict(source.skipped),
        "landmarks": dict(source.landmark_info),
        "faces": [k for k in keys if k not in rej],
    }
