"""On-disk cache of derived labels (teacher 68 points + pose, MediaPipe 468 points) per training face.

Layout (one folder per source name under the cache root)::

    <cache>/<source>/source.json          the source's manifest (terms, root, labeller, counts)
    <cache>/<source>/shard-<time>-<id>.npz up to ``shard_size`` entries each, written atomically

A shard is a plain ``.npz`` (no pickle, not compressed, so it loads at disk speed) of
column arrays, one row per face, plus a JSON ``meta`` string:

==================  ================  ====================================================
array               shape, dtype      content
==================  ================  ====================================================
``key``             (N,) str          the sample key (``"<source>:<path>"``, informational)
``content``         (N,) str          SHA-256 hex of the image file's bytes; video frames
                                      ``"<sha256 of the video>#<frame index, 6 digits>"``
``box_rule``        (N,) str          the crop rule's tag (:class:`.labeller.BoxRule`)
``annotation``      (N,) str          16 hex of SHA-256 of the sample's manual labels
``status``          (N,) int8         :data:`STATUS_NAMES` (0 labelled, 1 no face, ...)
``box_from``        (N,) int8         :data:`BOX_FROM_NAMES`: where the crop came from
``image_hw``        (N, 2) int32      image height, width
``crop_box``        (N, 3) float32    teacher crop ``x0, y0, size`` (image pixels)
``det_box``         (N, 4) float32    detector box ``x0, y0, x1, y1`` (NaN: none used)
``det_score``       (N,) float32      detector confidence (NaN: none)
``t68``             (N, 68, 2) f32    teacher 2D points, image pixels
``t68_3d``          (N, 68, 3) f32    teacher 3D points (x, y pixels; z depth along +z)
``pose``            (N, 3) float32    teacher head pose ``pitch, yaw, roll`` radians
``mp_status``       (N,) int8         :data:`MP_STATUS_NAMES` (1 = found, same face)
``mp468``           (N, 468, 2) f32   MediaPipe points, image pixels (NaN unless found)
``yaw_deg``         (N,) float32      the source's manual yaw (NaN: none)
``seconds``         (N,) float32      time spent labelling the face (decode included)
``manual__<def>``   (N, L, 2) f32     copy of the manual landmark set ``<def>`` (NaN: not
                                      visible / absent), so reports need only the cache
==================  ================  ====================================================

All points follow the project's pixel convention (pixel centres at integer + 0.5) in the
sample's own image; teacher values are NaN where ``status != 0``.

Keying: an entry is a *hit* for a sample when ``content``, ``box_rule`` and ``annotation``
match and the shard's ``meta["labeller_id"]`` equals the labeller's id (a hash of its name,
version and component versions, including the teacher's weight-file SHA-256 and MediaPipe's
version). So changed image bytes, another frame, another crop rule, changed manual points
(which decide the crop for 300-W and pick the face for MTFL), or a new labeller version are
misses; the sample's key or path is not part of it (a renamed file is still a hit).

Writing: a shard is written once, through a temporary file in the same folder and a rename
(:func:`mlanet.fileutil.atomic_file`), so an interrupted run leaves finished shards and no
partial one. One writer per source folder at a time. Shards of other labeller ids are kept
(they are simply not hits); delete the folder to reclaim space.

Loading (:meth:`LabelCache.load`): every shard's arrays are read and concatenated into one
:class:`LabelTable`: about 4.9 kB per face (the 468 points dominate), so 30,000 faces are
~150 MB read in a few tenths of a second from the page cache.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from mlanet.errors import AssetError, IncompatibleFormatError
from mlanet.fileutil import atomic_file, write_json_atomic

logger = logging.getLogger(__name__)

FORMAT = "mlanet-label-cache"
FORMAT_VERSION = 1
MANIFEST = "source.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".npz"
MANUAL_PREFIX = "manual__"

N_TEACHER = 68
N_MEDIAPIPE = 468

#: ``status`` values.
STATUS_LABELLED, STATUS_NO_FACE, STATUS_UNREADABLE, STATUS_NO_BOX = 0, 1, 2, 3
STATUS_NAMES: Mapping[int, str] = {
    STATUS_LABELLED: "labelled",
    STATUS_NO_FACE: "no face found",
    STATUS_UNREADABLE: "image unreadable",
    STATUS_NO_BOX: "manual landmarks too few for a box",
}
#: ``box_from`` values: where the teacher's crop came from.
BOX_NONE, BOX_WHOLE_IMAGE, BOX_MANUAL, BOX_DETECTOR, BOX_MESH = 0, 1, 2, 3, 4
BOX_FROM_NAMES: Mapping[int, str] = {
    BOX_NONE: "none",
    BOX_WHOLE_IMAGE: "whole image",
    BOX_MANUAL: "manual landmarks",
    BOX_DETECTOR: "face detector (+ refinement)",
    BOX_MESH: "MediaPipe mesh box (detector found none) (+ refinement)",
}
#: ``mp_status`` values.
MP_NONE, MP_FOUND, MP_OTHER_FACE = 0, 1, 2
MP_STATUS_NAMES: Mapping[int, str] = {
    MP_NONE: "not found",
    MP_FOUND: "found",
    MP_OTHER_FACE: "found another face (rejected)",
}

#: Fixed columns and their per-row shape and dtype.
COLUMNS: Mapping[str, tuple[tuple[int, ...], Any]] = {
    "status": ((), np.int8),
    "box_from": ((), np.int8),
    "image_hw": ((2,), np.int32),
    "crop_box": ((3,), np.float32),
    "det_box": ((4,), np.float32),
    "det_score": ((), np.float32),
    "t68": ((N_TEACHER, 2), np.float32),
    "t68_3d": ((N_TEACHER, 3), np.float32),
    "pose": ((3,), np.float32),
    "mp_status": ((), np.int8),
    "mp468": ((N_MEDIAPIPE, 2), np.float32),
    "yaw_deg": ((), np.float32),
    "seconds": ((), np.float32),
}
STRING_COLUMNS: tuple[str, ...] = ("key", "content", "box_rule", "annotation")


def lookup_key(content: str, box_rule: str, annotation: str) -> str:
    """The string a hit is matched on (together with the labeller id)."""
    return f"{content}|{box_rule}|{annotation}"


@dataclass
class LabelEntry:
    """One face's labels as written to a shard (see the module docstring for each field).

    Optional arrays left as None are stored as NaN (ints: 0).
    """

    key: str
    content: str
    box_rule: str
    annotation: str
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
    yaw_deg: float | None = None
    seconds: float = float("nan")
    manual: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def lookup(self) -> str:
        return lookup_key(self.content, self.box_rule, self.annotation)


def _column(entries: Sequence[LabelEntry], name: str) -> np.ndarray:
    shape, dtype = COLUMNS[name]
    fill = np.nan if np.issubdtype(dtype, np.floating) else 0
    out = np.full((len(entries), *shape), fill, dtype=dtype)
    for i, e in enumerate(entries):
        v = getattr(e, name)
        if v is None:
            continue
        a = np.asarray(v, dtype=np.float64 if np.issubdtype(dtype, np.floating) else np.int64)
        if a.shape != shape:
            raise ValueError(f"{e.key}: {name} has shape {a.shape}, expected {shape}")
        out[i] = a
    return out


def entries_to_arrays(entries: Sequence[LabelEntry]) -> dict[str, np.ndarray]:
    """Column arrays of a shard (without ``meta``)."""
    arrays: dict[str, np.ndarray] = {c: np.array([getattr(e, c) for e in entries], dtype=str).reshape(-1)
                                     for c in STRING_COLUMNS}
    for name in COLUMNS:
        arrays[name] = _column(entries, name)
    defs: dict[str, int] = {}
    for e in entries:
        for d, pts in e.manual.items():
            defs.setdefault(d, int(np.asarray(pts).shape[0]))
    for d, n in sorted(defs.items()):
        a = np.full((len(entries), n, 2), np.nan, dtype=np.float32)
        for i, e in enumerate(entries):
            if d in e.manual:
                a[i] = np.asarray(e.manual[d], dtype=np.float32)
        arrays[MANUAL_PREFIX + d] = a
    return arrays


@dataclass
class LabelTable:
    """Entries of one source (one labeller id) as column arrays; see the module docstring.

    Attributes:
        source: source name. labeller_id: the labeller the entries come from (None: all).
        arrays: column name -> (N, ...) array (``manual__<def>`` for manual sets).
        shards: the shard files read.
    """

    source: str
    labeller_id: str | None
    arrays: dict[str, np.ndarray]
    shards: list[Path]
    metas: list[dict[str, Any]]
    _index: dict[str, int] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(len(self.arrays["content"]))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    @property
    def manual_definitions(self) -> list[str]:
        """Names of the manual landmark sets stored."""
        return sorted(k[len(MANUAL_PREFIX):] for k in self.arrays if k.startswith(MANUAL_PREFIX))

    def manual(self, definition: str) -> np.ndarray:
        """(N, L, 2) the manual set ``definition`` (NaN where not visible / absent)."""
        return self.arrays[MANUAL_PREFIX + definition]

    def row(self, content: str, box_rule: str, annotation: str) -> int | None:
        """Row of the entry with this lookup key (the last written, if several), or None."""
        if self._index is None:
            self._index = {
                lookup_key(c, b, a): i
                for i, (c, b, a) in enumerate(zip(self.arrays["content"].tolist(), self.arrays["box_rule"].tolist(),
                                                  self.arrays["annotation"].tolist()))
            }
        return self._index.get(lookup_key(content, box_rule, annotation))

    def counts(self) -> dict[str, Any]:
        """Faces per status, per crop origin and per MediaPipe status (names as keys)."""
        def count(col: str, names: Mapping[int, str]) -> dict[str, int]:
            v = self.arrays[col]
            return {names[k]: int((v == k).sum()) for k in names if int((v == k).sum())}

        return {
            "entries": len(self),
            "status": count("status", STATUS_NAMES),
            "box_from": count("box_from", BOX_FROM_NAMES),
            "mediapipe": count("mp_status", MP_STATUS_NAMES),
        }


def _read_meta(z: Any, path: Path) -> dict[str, Any]:
    meta = json.loads(str(z["meta"]))
    if meta.get("format") != FORMAT:
        raise IncompatibleFormatError(f"{path}: not a label-cache shard (format {meta.get('format')!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise IncompatibleFormatError(f"{path}: label-cache shard version {meta.get('version')!r}, "
                                      f"this MLANet reads {FORMAT_VERSION}")
    return meta


def source_folder(root: Path, source: str) -> Path:
    """``root / source`` for a plain source name (no path separators, not hidden); shared with the fit cache."""
    if not source or "/" in source or source.startswith("."):
        raise ValueError(f"bad source name {source!r}")
    return root / source


class LabelCache:
    """A label cache rooted at ``root`` (see the module docstring). Nothing is created until written."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser()

    # -------------------------------------------------------------- layout
    def source_dir(self, source: str) -> Path:
        return source_folder(self.root, source)

    def sources(self) -> list[str]:
        """Source folders that have a manifest."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())

    def shard_paths(self, source: str) -> list[Path]:
        d = self.source_dir(source)
        if not d.is_dir():
            return []
        return sorted(p for p in d.iterdir() if p.name.startswith(SHARD_PREFIX) and p.name.endswith(SHARD_SUFFIX))

    def remove_stale_temporaries(self, source: str) -> int:
        """Delete temporary shard files left by a killed writer (``.shard-*.tmp``); returns how many."""
        d = self.source_dir(source)
        n = 0
        if d.is_dir():
            for p in d.iterdir():
                if p.name.startswith("." + SHARD_PREFIX) and p.name.endswith(".tmp"):
                    p.unlink(missing_ok=True)
                    n += 1
        return n

    # -------------------------------------------------------------- manifest
    def read_manifest(self, source: str) -> dict[str, Any]:
        path = self.source_dir(source) / MANIFEST
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise AssetError(f"{path}: no label manifest (run `mlanet data label` for source {source!r})") from None
        except (OSError, ValueError) as exc:
            raise AssetError(f"{path}: unreadable label manifest ({exc})") from None

    def write_manifest(self, source: str, manifest: Mapping[str, Any]) -> Path:
        body = {"format": FORMAT, "version": FORMAT_VERSION, "source": source, **manifest}
        return write_json_atomic(self.source_dir(source) / MANIFEST, body)

    # -------------------------------------------------------------- shards
    def write_shard(self, source: str, entries: Sequence[LabelEntry], meta: Mapping[str, Any]) -> Path:
        """Write ``entries`` as a new shard atomically; ``meta`` must hold ``labeller_id``."""
        if not entries:
            raise ValueError("a shard needs at least one entry")
        if "labeller_id" not in meta:
            raise ValueError("shard meta needs 'labeller_id'")
        arrays = entries_to_arrays(entries)
        body = {"format": FORMAT, "version": FORMAT_VERSION, "source": source, "n": len(entries), **meta}
        # time first, so that sorted names are the writing order (and loads are reproducible)
        path = self.source_dir(source) / f"{SHARD_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{SHARD_SUFFIX}"
        with atomic_file(path, suffix=".tmp") as fh:
            np.savez(fh, meta=np.array(json.dumps(body)), **arrays)
        return path

    def _open(self, path: Path) -> tuple[Any, dict[str, Any]] | None:
        try:
            z = np.load(path, allow_pickle=False)
            return z, _read_meta(z, path)
        except IncompatibleFormatError as exc:
            logger.warning("%s; ignored", exc)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            logger.warning("%s: unreadable label shard (%s: %s); ignored", path, type(exc).__name__, exc)
        return None

    def existing(self, source: str, labeller_id: str) -> set[str]:
        """Lookup keys (:func:`lookup_key`) of every entry of ``labeller_id`` in ``source``."""
        out: set[str] = set()
        for path in self.shard_paths(source):
            opened = self._open(path)
            if opened is None:
                continue
            z, meta = opened
            with z:
                if meta.get("labeller_id") != labeller_id:
                    continue
                out.update(lookup_key(c, b, a) for c, b, a in zip(z["content"].tolist(), z["box_rule"].tolist(),
                                                                     z["annotation"].tolist()))
        return out

    def load(self, source: str, labeller_id: str | None = None) -> LabelTable:
        """Every entry of ``source`` (of ``labeller_id`` only, if given) as one :class:`LabelTable`.

        Unreadable shards and shards of another format version are skipped with a warning.
        """
        parts: list[dict[str, np.ndarray]] = []
        shards, metas = [], []
        for path in self.shard_paths(source):
            opened = self._open(path)
            if opened is None:
                continue
            z, meta = opened
            with z:
                if labeller_id is not None and meta.get("labeller_id") != labeller_id:
                    continue
                try:
                    part = {k: z[k] for k in z.files if k != "meta"}
                except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                    logger.warning("%s: unreadable label shard (%s); ignored", path, exc)
                    continue
            n = len(part.get("content", ()))
            missing = [c for c in (*STRING_COLUMNS, *COLUMNS) if c not in part or len(part[c]) != n]
            if missing:
                logger.warning("%s: label shard lacks or has bad column(s) %s; ignored", path, missing)
                continue
            parts.append(part)
            shards.append(path)
            metas.append(meta)
        return LabelTable(source, labeller_id, _concat(parts), shards, metas)


def _concat(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not parts:
        out: dict[str, np.ndarray] = {c: np.zeros(0, dtype=str) for c in STRING_COLUMNS}
        for name, (shape, dtype) in COLUMNS.items():
            out[name] = np.zeros((0, *shape), dtype=dtype)
        return out
    names: list[str] = []
    for p in parts:
        names += [k for k in p if k not in names]
    out = {}
    for k in names:
        if all(k in p for p in parts):
            out[k] = np.concatenate([p[k] for p in parts])
            continue
        # a manual set that only some shards have: NaN rows elsewhere
        ref = next(p[k] for p in parts if k in p)
        out[k] = np.concatenate([p[k] if k in p else np.full((len(p["content"]), *ref.shape[1:]), np.nan, ref.dtype)
                                 for p in parts])
    return out


def iter_chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start:start + size]
