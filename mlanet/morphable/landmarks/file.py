"""The project's landmark-definitions file: fitted surface landmark definitions bound to one topology.

A landmark-definitions file (the shipped ``data/ict_face_landmarks_v1.npz`` and ``_v2.npz``, or any file
``mlanet assets landmarks`` writes) is a zip archive written by :func:`numpy.savez_compressed`,
read with ``allow_pickle=False`` only:

* per definition ``NAME``: ``NAME/triangle`` (L,) int32, ``NAME/barycentric`` (L, 3) float32,
  ``NAME/contour`` (L,) uint8 and, with contour points, ``NAME/contour_candidates`` (L, C)
  int32 (see :mod:`mlanet.morphable.landmarks.definitions`);
* ``header``: UTF-8 JSON: format, version, id, the face model it was fitted on (with a
  topology fingerprint), ``definitions`` (per name: description, point names, flip
  permutation, how and on what data it was fitted, terms), data ``sources`` with their terms,
  ``terms`` (one line), build statistics and ``content_sha256``.

``mlanet assets build`` embeds the file into the face-model file (``extra["landmarks/NAME/..."]``
plus ``header["landmark_definitions"]``); the file is refused (:class:`~mlanet.errors.AssetError`,
naming it) when it is not a zip, is truncated, fails its checksum, or was fitted on another
topology (:meth:`LandmarkDefinitionsFile.check_topology`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError
from mlanet.morphable.landmarks import definitions as sl
from mlanet.morphable.albedo.file import topology_sha256
from mlanet.morphable.data import content_sha256, read_npz_with_header, write_npz_with_header

log = logging.getLogger(__name__)

#: ``header["format"]`` of every landmark-definitions file.
LANDMARK_FORMAT_NAME = "mlanet-landmarks"
#: Major version this code reads and writes.
LANDMARK_FORMAT_VERSION = 1
#: Folder of landmark files shipped inside the package.
SHIPPED_LANDMARK_DIR = Path(__file__).resolve().parent / "data"
#: ``aflw2000_68``'s eyelid points placed through fits to 300-W's manual points (``mlanet assets landmarks
#: --aflw2000-eyelids manual``): the default since the stage-5b weights, which were trained with it.
LANDMARKS_V2_MANUAL_EYELIDS = SHIPPED_LANDMARK_DIR / "ict_face_landmarks_v2.npz"
#: The first definitions (eyelids drifted with the teacher's, eyeBlink ~0.56 for an open eye): the weights shipped
#: until stage 4b were trained with them; ``mlanet assets build --landmarks`` this path runs those.
LANDMARKS_V1 = SHIPPED_LANDMARK_DIR / "ict_face_landmarks_v1.npz"
#: Shipped definitions per ICT crop (only crops listed here have them).
SHIPPED_LANDMARKS = {"face": LANDMARKS_V2_MANUAL_EYELIDS}
#: ``--landmarks`` value: the shipped file where one exists for the crop, else none (with a notice).
AUTO = "auto"
#: ``--landmarks`` value: embed no fitted definitions (only the ``ict68`` / ``mediapipe468`` views).
NONE = "none"


@dataclass
class LandmarkDefinitionsFile:
    """Fitted landmark definitions of one face-model topology.

    ``header`` (JSON-able) has at least ``id``, ``face_model`` (``model_id``, ``vertices``,
    ``triangles``, ``triangles_sha256``), ``definitions`` (name -> metadata), ``sources`` and
    ``terms``; ``definitions`` maps names to :class:`~mlanet.morphable.landmarks.definitions.SurfaceDefinition`.
    """

    header: dict[str, Any]
    definitions: dict[str, sl.SurfaceDefinition]

    @property
    def id(self) -> str:
        return str(self.header["id"])

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name in sorted(self.definitions):
            for k, v in self.definitions[name].to_extra().items():
                out[k[len(sl.PREFIX):]] = v
        return out

    def validate(self, source: str = "landmark definitions") -> None:
        """Header keys, per-definition arrays against the recorded topology size; :class:`AssetError` naming ``source``."""
        for key in ("id", "face_model", "definitions", "sources", "terms"):
            if key not in self.header:
                raise AssetError(f"{source}: header lacks {key!r}")
        fm = self.header["face_model"]
        if not isinstance(fm, dict) or not {"model_id", "vertices", "triangles", "triangles_sha256"} <= set(fm):
            raise AssetError(f"{source}: header 'face_model' must give model_id, vertices, triangles and triangles_sha256")
        if not self.definitions:
            raise AssetError(f"{source}: holds no landmark definition")
        if set(self.header["definitions"]) != set(self.definitions):
            raise AssetError(f"{source}: header describes {sorted(self.header['definitions'])} but the arrays hold "
                             f"{sorted(self.definitions)}")
        for d in self.definitions.values():
            d.validate(int(fm["triangles"]), int(fm["vertices"]), source=source)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Validate and write atomically."""
        path = Path(path)
        for name, d in self.definitions.items():
            self.definitions[name] = d.normalised()
            self.definitions[name].info = dict(self.header["definitions"].get(name, {}))
        self.validate(source=str(path))
        arrays = self._arrays()
        header = dict(self.header)
        header.update(format=LANDMARK_FORMAT_NAME, format_version=LANDMARK_FORMAT_VERSION,
                      counts={n: d.n_points for n, d in sorted(self.definitions.items())},
                      content_sha256=content_sha256(arrays))
        write_npz_with_header(path, header, arrays)
        self.header = header
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LandmarkDefinitionsFile":
        """Read and verify a landmark-definitions file."""
        path = Path(path)
        if not path.is_file():
            raise AssetError(f"{path}: no such landmark-definitions file")
        header, arrays = read_npz_with_header(path, "landmark-definitions")
        if header.get("format") != LANDMARK_FORMAT_NAME:
            raise AssetError(f"{path}: header format is {header.get('format')!r}, expected {LANDMARK_FORMAT_NAME!r}")
        if header.get("format_version") != LANDMARK_FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"{path}: landmark-definitions format version {header.get('format_version')} but this MLANet reads "
                f"version {LANDMARK_FORMAT_VERSION}; refit it with `mlanet assets landmarks`"
            )
        actual = content_sha256(arrays)
        if header.get("content_sha256") != actual:
            raise ChecksumError(
                f"{path}: landmark-definitions content checksum mismatch (header "
                f"{str(header.get('content_sha256'))[:12]}..., data {actual[:12]}...); the file was modified or "
                "damaged; refit it with `mlanet assets landmarks`"
            )
        extra = {sl.PREFIX + k: v for k, v in arrays.items()}
        meta = header.get("definitions") or {}
        try:
            defs = {n: sl.SurfaceDefinition.from_extra(n, extra, meta.get(n)) for n in sl.stored_definition_names(extra)}
        except KeyError as exc:
            raise AssetError(f"{path}: incomplete definition arrays ({exc})") from None
        out = cls(header=header, definitions=defs)
        out.validate(source=str(path))
        return out

    def check_topology(self, triangles: np.ndarray, n_vertices: int, source: str = "landmark definitions") -> None:
        """Refuse a face model with another vertex count or triangle list (clear :class:`AssetError`)."""
        fm = self.header["face_model"]
        if int(fm["vertices"]) != int(n_vertices) or fm["triangles_sha256"] != topology_sha256(triangles):
            raise AssetError(
                f"{source}: landmark definitions {self.id} were fitted on face model {fm['model_id']} "
                f"({fm['vertices']} vertices, topology {str(fm['triangles_sha256'])[:12]}...) but this face model has "
                f"{n_vertices} vertices, topology {topology_sha256(triangles)[:12]}...; fit definitions for this "
                "topology with `mlanet assets landmarks --face-model FILE ...`, or build with --landmarks none"
            )

    def extra(self) -> dict[str, np.ndarray]:
        """The face-model ``extra`` arrays of every definition."""
        out: dict[str, np.ndarray] = {}
        for d in self.definitions.values():
            out.update(d.to_extra())
        return out

    def header_entries(self, path: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(header["landmark_definitions"], header["landmark_file"])`` entries of a face model embedding this file."""
        h = self.header
        defs = {n: {**h["definitions"][n], "file_id": self.id} for n in sorted(self.definitions)}
        entry = {"id": self.id, "terms": h["terms"], "sources": h["sources"], "content_sha256": h.get("content_sha256"),
                 "definitions": sorted(self.definitions)}
        if path is not None:
            entry["file"] = Path(path).name
        return defs, entry


def resolve_landmarks(
    choice: str | os.PathLike[str] | None, crop: str, say: Callable[[str], None] | None = None
) -> tuple[LandmarkDefinitionsFile | None, Path | None]:
    """The definitions file ``mlanet assets build`` embeds: ``(file, path)`` or ``(None, None)``.

    ``choice``: ``"auto"``/``None`` (the shipped file for crops that have one, else none with a
    notice), ``"none"``, or a file path.
    """
    say = say or (lambda msg: log.info(msg))
    c = AUTO if choice is None else str(choice)
    if c == NONE:
        return None, None
    if c == AUTO:
        shipped = SHIPPED_LANDMARKS.get(crop)
        if shipped is None or not shipped.is_file():
            why = "this MLANet install has no shipped file" if shipped else f"none is shipped for crop '{crop}'"
            say(f"notice: no fitted landmark definitions embedded ({why}); only ict68 (and mediapipe468) are "
                "available; fit some with `mlanet assets landmarks` and pass --landmarks FILE")
            return None, None
        path = shipped
    else:
        path = Path(c).expanduser()
    lf = LandmarkDefinitionsFile.load(path)
    say(f"landmarks: embedding definitions {', '.join(sorted(lf.definitions))} ({lf.id}) from {path} "
        f"(terms: {lf.header['terms']})")
    return lf, path
