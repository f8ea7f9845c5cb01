"""The project's own face-model file: arrays plus a JSON header, no pickle.

A face-model file (``*.mlface.npz``) is a zip archive written by :func:`numpy.savez_compressed`.
It holds the arrays of :class:`FaceModelData` and one extra member, ``header``: the UTF-8
bytes of a JSON object describing the model (format and version, provenance, units, frame,
names). Files are read with ``allow_pickle=False`` only, and the header carries a SHA-256 of
the array content, so truncated or edited files are refused.

All loaders (ICT-FaceKit, Basel Face Model, the synthetic test model) produce the same
:class:`FaceModelData`; :class:`mlanet.morphable.model.MorphableModel` consumes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError
from mlanet.fileutil import atomic_file

#: ``header["format"]`` of every face-model file.
FORMAT_NAME = "mlanet-facemodel"
#: Major version this code reads and writes. Bump on any incompatible change.
FORMAT_VERSION = 1
#: Name of the model frame (see :mod:`mlanet.conventions`).
MODEL_FRAME = "mlanet-model-v1: metres, +x subject's left, +y chin, +z back of head"

_HEADER_KEY = "header"
_EXTRA_PREFIX = "extra."
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")

_FLOAT_FIELDS = ("mean_shape", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis", "uv")
_INT_FIELDS = ("triangles", "triangles_uv", "landmarks68")


@dataclass
class FaceModelData:
    """Arrays of a linear face model, in the model frame (metres), plus a header dict.

    Shapes (V vertices, F triangles, U UV coordinates, K modes):
        mean_shape (V, 3) float32 metres
        identity_basis (K_id, V, 3) float32, metres per unit coefficient (coefficients ~N(0,1))
        expression_basis (K_exp, V, 3) float32, metres per unit weight
        albedo_mean (V, 3) float32 RGB in [0, 1]
        albedo_basis (K_alb, V, 3) float32 per unit coefficient (coefficients ~N(0,1))
        triangles (F, 3) int32, CCW front faces (see conventions)
        uv (U, 2) float32 in [0, 1], origin bottom-left (OBJ/OpenGL texture convention)
        triangles_uv (F, 3) int32 indices into ``uv`` (per-corner UVs; seams keep both sides)
        landmarks68 (68,) int32 vertex indices, iBUG/Multi-PIE 68-point order
        region_labels (V,) uint8 indices into ``header["region_names"]``
        extra: optional named arrays (e.g. ``landmarks/jaw_left``, ``mediapipe/triangle``); landmark
            definitions as ``landmarks/NAME/{triangle,barycentric,contour[,contour_candidates]}``
            with metadata in ``header["landmark_definitions"]`` (:mod:`mlanet.morphable.landmarks.definitions`)

    Required header keys: ``model_id``, ``expression_names`` (K_exp names), ``region_names``.
    :meth:`save` adds ``format``, ``format_version``, ``units``, ``frame``, counts and the
    content checksum.
    """

    header: dict[str, Any]
    mean_shape: np.ndarray
    identity_basis: np.ndarray
    expression_basis: np.ndarray
    albedo_mean: np.ndarray
    albedo_basis: np.ndarray
    triangles: np.ndarray
    uv: np.ndarray
    triangles_uv: np.ndarray
    landmarks68: np.ndarray
    region_labels: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ sizes
    @property
    def n_vertices(self) -> int:
        return int(self.mean_shape.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[0])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[0])

    @property
    def n_albedo(self) -> int:
        return int(self.albedo_basis.shape[0])

    @property
    def model_id(self) -> str:
        return str(self.header["model_id"])

    @property
    def expression_names(self) -> list[str]:
        return list(self.header["expression_names"])

    @property
    def region_names(self) -> list[str]:
        return list(self.header["region_names"])

    def region_mask(self, *names: str) -> np.ndarray:
        """Boolean (V,) mask of the vertices whose region is one of ``names``."""
        known = self.region_names
        unknown = [n for n in names if n not in known]
        if unknown:
            raise KeyError(f"unknown region(s) {unknown}; this model has {known}")
        ids = [known.index(n) for n in names]
        return np.isin(self.region_labels, ids)

    # ------------------------------------------------------------ validation
    def normalised(self) -> "FaceModelData":
        """Copy with canonical dtypes (float32 / int32 / uint8) and contiguous arrays."""
        kw: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _FLOAT_FIELDS:
                v = np.ascontiguousarray(v, dtype=np.float32)
            elif f.name in _INT_FIELDS:
                v = np.ascontiguousarray(v, dtype=np.int32)
            elif f.name == "region_labels":
                v = np.ascontiguousarray(v, dtype=np.uint8)
            elif f.name == "extra":
                v = {k: np.ascontiguousarray(a) for k, a in v.items()}
            elif f.name == "header":
                v = dict(v)
            kw[f.name] = v
        return FaceModelData(**kw)

    def validate(self, source: str = "face model") -> None:
        """Check shapes, index ranges and finiteness; raise :class:`AssetError` naming ``source``."""

        def fail(msg: str) -> None:
            raise AssetError(f"{source}: {msg}")

        for key in ("model_id", "expression_names", "region_names"):
            if key not in self.header:
                fail(f"header lacks {key!r}")
        V = self.mean_shape.shape[0] if self.mean_shape.ndim == 2 else -1
        if self.mean_shape.shape != (V, 3) or V < 3:
            fail(f"mean_shape must be (V, 3), got {self.mean_shape.shape}")
        for name in ("identity_basis", "expression_basis", "albedo_basis"):
            a = getattr(self, name)
            if a.ndim != 3 or a.shape[1:] != (V, 3):
                fail(f"{name} must be (K, {V}, 3), got {a.shape}")
        if self.albedo_mean.shape != (V, 3):
            fail(f"albedo_mean must be ({V}, 3), got {self.albedo_mean.shape}")
        if self.triangles.ndim != 2 or self.triangles.shape[1] != 3 or len(self.triangles) == 0:
            fail(f"triangles must be (F, 3), got {self.triangles.shape}")
        if self.triangles.min() < 0 or self.triangles.max() >= V:
            fail(f"triangle indices must lie in [0, {V}), got [{self.triangles.min()}, {self.triangles.max()}]")
        if self.uv.ndim != 2 or self.uv.shape[1] != 2:
            fail(f"uv must be (U, 2), got {self.uv.shape}")
        if self.triangles_uv.shape != self.triangles.shape:
            fail(f"triangles_uv must match triangles {self.triangles.shape}, got {self.triangles_uv.shape}")
        if len(self.uv) and (self.triangles_uv.min() < 0 or self.triangles_uv.max() >= len(self.uv)):
            fail(f"triangles_uv indices must lie in [0, {len(self.uv)})")
        if self.landmarks68.shape != (68,):
            fail(f"landmarks68 must be (68,), got {self.landmarks68.shape}")
        if self.landmarks68.min() < 0 or self.landmarks68.max() >= V:
            fail(f"landmark indices must lie in [0, {V})")
        if self.region_labels.shape != (V,):
            fail(f"region_labels must be ({V},), got {self.region_labels.shape}")
        if self.region_labels.max(initial=0) >= len(self.header["region_names"]):
            fail("region_labels refer to a region missing from header['region_names']")
        if len(self.header["expression_names"]) != self.expression_basis.shape[0]:
            fail(
                f"{len(self.header['expression_names'])} expression names for "
                f"{self.expression_basis.shape[0]} expression shapes"
            )
        for name in _FLOAT_FIELDS:
            if not np.all(np.isfinite(getattr(self, name))):
                fail(f"{name} contains NaN or infinite values")
        from mlanet.morphable.landmarks.definitions import read_definitions

        try:
            definitions = read_definitions(self.extra, self.header)
        except KeyError as exc:
            fail(f"incomplete landmark definition arrays ({exc})")
        for d in definitions.values():
            d.validate(len(self.triangles), V, source=source)

    def content_checksum(self) -> str:
        """The SHA-256 that :meth:`save` records (over the normalised arrays)."""
        return content_sha256(self.normalised()._arrays())

    # ---------------------------------------------------------------- file IO
    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("header", "extra")}
        arrays.update({_EXTRA_PREFIX + k: v for k, v in self.extra.items()})
        return arrays

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Validate and write atomically to ``path`` (a temp file renamed into place)."""
        data = self.normalised()
        data.validate(source=str(path))
        arrays = data._arrays()
        header = dict(data.header)
        header.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            units="m",
            frame=MODEL_FRAME,
            counts={
                "vertices": data.n_vertices,
                "triangles": int(len(data.triangles)),
                "uv": int(len(data.uv)),
                "identity": data.n_identity,
                "expression": data.n_expression,
                "albedo": data.n_albedo,
            },
            content_sha256=content_sha256(arrays),
        )
        path = write_npz_with_header(path, header, arrays)
        data.header = header
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "FaceModelData":
        """Read a face-model file, refusing pickles, corrupt/truncated or tampered files and other versions."""
        path = Path(path)
        if not path.is_file():
            raise AssetError(f"{path}: no such face-model file")
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic[:2] in _PICKLE_MAGICS or path.suffix in (".pkl", ".pickle"):
            raise AssetError(
                f"{path}: this is a Python pickle; MLANet never loads pickles. "
                "Build a face-model file with `mlanet assets build`."
            )
        if magic != _ZIP_MAGIC:
            raise AssetError(f"{path}: not an MLANet face-model file (expected a .mlface.npz zip archive)")
        header, arrays = read_npz_with_header(path, "face-model")
        if header.get("format") != FORMAT_NAME:
            raise AssetError(f"{path}: header format is {header.get('format')!r}, expected {FORMAT_NAME!r}")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"{path}: face-model format version {version} but this MLANet reads version {FORMAT_VERSION}; "
                "rebuild it with `mlanet assets build`"
            )
        expected = header.get("content_sha256")
        actual = content_sha256(arrays)
        if expected != actual:
            raise ChecksumError(
                f"{path}: content checksum mismatch (header {str(expected)[:12]}..., data {actual[:12]}...); "
                "the file was modified or damaged; rebuild it with `mlanet assets build`"
            )
        names = {f.name for f in fields(cls)} - {"header", "extra"}
        missing = names - set(arrays)
        if missing:
            raise AssetError(f"{path}: missing arrays {sorted(missing)}")
        extra = {k[len(_EXTRA_PREFIX):]: v for k, v in arrays.items() if k.startswith(_EXTRA_PREFIX)}
        data = cls(header=header, extra=extra, **{k: arrays[k] for k in names})
        data.validate(source=str(path))
        return data


def write_npz_with_header(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` plus the JSON ``header`` (member ``header``) as a compressed npz, atomically."""
    header_bytes = np.frombuffer(json.dumps(header, indent=1, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    with atomic_file(path) as fh:
        np.savez_compressed(fh, **{_HEADER_KEY: header_bytes}, **arrays)
    return path


def read_npz_with_header(path: str | os.PathLike[str], kind: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(header, arrays)`` of a file written by :func:`write_npz_with_header` (no pickles).

    Raises :class:`AssetError` naming ``path`` and ``kind`` (e.g. ``"face-model"``) for a
    missing header or a corrupt / truncated archive. Checksums are the caller's job.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files") or _HEADER_KEY not in npz.files:
                raise AssetError(f"{path}: no '{_HEADER_KEY}' member; not an MLANet {kind} file")
            header = json.loads(bytes(npz[_HEADER_KEY]).decode("utf-8"))
            arrays = {k: npz[k] for k in npz.files if k != _HEADER_KEY}
    except AssetError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, UnicodeDecodeError, zipfile.LargeZipFile) as exc:
        raise AssetError(f"{path}: corrupt or truncated {kind} file ({exc})") from None
    if not isinstance(header, dict):
        raise AssetError(f"{path}: header is not a JSON object; not an MLANet {kind} file")
    return header, arrays


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of every array, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode("utf-8"))
        h.update(str(a.dtype.str).encode("ascii"))
        h.update(str(a.shape).encode("ascii"))
        h.update(a.tobytes())
    return h.hexdigest()


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Only the JSON header of a face-model file (cheap; no checksum verification)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf, zf.open(_HEADER_KEY + ".npy") as fh:
            arr = np.load(io.BytesIO(fh.read()), allow_pickle=False)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        raise AssetError(f"{path}: cannot read face-model header ({exc})") from None
    return json.loads(bytes(arr).decode("utf-8"))
