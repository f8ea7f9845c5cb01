"""The project's albedo-model file: a PCA albedo basis bound to one face-model topology.

An albedo-model file (``*.mlalbedo.npz`` or the shipped ``data/*.npz``) is a zip archive
written by :func:`numpy.savez_compressed` with three arrays and a JSON header, read with
``allow_pickle=False`` only:

* ``albedo_mean`` (V, 3): per-vertex mean albedo, RGB in [0, 1] (the images' encoded RGB, the
  same space the photometric loss compares rendered colours in);
* ``albedo_basis`` (K, V, 3): one standard deviation per component (coefficients ~N(0, 1));
* ``header``: UTF-8 JSON (format, version, id, the face model it was built on with a
  topology fingerprint, data sources and their terms, build statistics, ``content_sha256``).

Per-vertex values on the face model's vertices *are* its UV layout here: every vertex carries
its UVs (``triangles_uv``), so a texture is one rasterisation of these values in UV space away.

The file is refused (:class:`~mlanet.errors.AssetError`, naming the file) when it is not a zip,
is truncated, fails its checksum, or was built for another topology
(:func:`check_topology`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError
from mlanet.morphable.data import content_sha256, read_npz_with_header, write_npz_with_header

log = logging.getLogger(__name__)

#: ``header["format"]`` of every albedo-model file.
ALBEDO_FORMAT_NAME = "mlanet-albedo"
#: Major version this code reads and writes.
ALBEDO_FORMAT_VERSION = 1
#: Folder of albedo files shipped inside the package.
SHIPPED_ALBEDO_DIR = Path(__file__).resolve().parent / "data"
#: Shipped data-driven albedo per ICT crop (only crops listed here have one). ``mlanet-albedo-ict-v2``
#: was built by ``mlanet assets albedo`` from training data only (300-W and expression-clip frames; its
#: header records the sources, their terms and the command); v1, built from AFLW2000-3D dev images,
#: is no longer shipped (AFLW2000-3D is validation only).
SHIPPED_ALBEDO = {"face": SHIPPED_ALBEDO_DIR / "ict_face_albedo_v2.npz"}
#: ``--albedo`` value selecting the hand-made regional model (MIT, no image data).
REGIONAL = "regional"
#: ``--albedo`` value selecting the shipped data-driven model where one exists, else regional.
AUTO = "auto"

_ARRAYS = ("albedo_mean", "albedo_basis")


def topology_sha256(triangles: np.ndarray) -> str:
    """Fingerprint of a mesh topology: SHA-256 of its (F, 3) triangles as contiguous int32."""
    t = np.ascontiguousarray(np.asarray(triangles), dtype=np.int32)
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"triangles must be (F, 3), got {t.shape}")
    return hashlib.sha256(t.tobytes()).hexdigest()


@dataclass
class AlbedoModelFile:
    """A PCA albedo model: ``albedo = mean + sum_k c_k basis[k]``, ``c ~ N(0, 1)``.

    ``mean`` (V, 3), ``basis`` (K, V, 3), ``header`` a JSON-able dict with at least ``id``,
    ``face_model`` (``model_id``, ``vertices``, ``triangles_sha256``), ``components`` (K names),
    ``sources`` (list of dicts with ``name`` and ``terms``) and ``terms`` (a one-line summary).
    """

    header: dict[str, Any]
    mean: np.ndarray
    basis: np.ndarray

    @property
    def id(self) -> str:
        return str(self.header["id"])

    @property
    def n_components(self) -> int:
        return int(self.basis.shape[0])

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    def validate(self, source: str = "albedo model") -> None:
        """Shapes, finiteness and required header keys; :class:`AssetError` naming ``source``."""

        def fail(msg: str) -> None:
            raise AssetError(f"{source}: {msg}")

        for key in ("id", "face_model", "components", "sources", "terms"):
            if key not in self.header:
                fail(f"header lacks {key!r}")
        fm = self.header["face_model"]
        if not isinstance(fm, dict) or not {"model_id", "vertices", "triangles_sha256"} <= set(fm):
            fail("header 'face_model' must give model_id, vertices and triangles_sha256")
        V = self.mean.shape[0] if self.mean.ndim == 2 else -1
        if self.mean.shape != (V, 3) or V < 3:
            fail(f"albedo_mean must be (V, 3), got {self.mean.shape}")
        if self.basis.ndim != 3 or self.basis.shape[1:] != (V, 3) or self.basis.shape[0] < 1:
            fail(f"albedo_basis must be (K, {V}, 3), got {self.basis.shape}")
        if int(fm["vertices"]) != V:
            fail(f"header says {fm['vertices']} vertices but the arrays have {V}")
        if len(self.header["components"]) != self.basis.shape[0]:
            fail(f"{len(self.header['components'])} component names for {self.basis.shape[0]} components")
        if not (np.all(np.isfinite(self.mean)) and np.all(np.isfinite(self.basis))):
            fail("albedo arrays contain NaN or infinite values")

    def save(self, path: str | os.PathLike[str], dtype: str = "float32") -> Path:
        """Validate and write atomically; ``dtype`` ``float32`` or ``float16`` (the shipped file)."""
        if dtype not in ("float32", "float16"):
            raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
        path = Path(path)
        self.validate(source=str(path))
        arrays = {
            "albedo_mean": np.ascontiguousarray(self.mean, dtype=dtype),
            "albedo_basis": np.ascontiguousarray(self.basis, dtype=dtype),
        }
        header = dict(self.header)
        header.update(
            format=ALBEDO_FORMAT_NAME,
            format_version=ALBEDO_FORMAT_VERSION,
            dtype=dtype,
            counts={"vertices": self.n_vertices, "components": self.n_components},
            content_sha256=content_sha256(arrays),
        )
        write_npz_with_header(path, header, arrays)
        self.header = header
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "AlbedoModelFile":
        """Read and verify an albedo-model file (arrays returned as float32)."""
        path = Path(path)
        if not path.is_file():
            raise AssetError(f"{path}: no such albedo-model file")
        header, arrays = read_npz_with_header(path, "albedo-model")
        if header.get("format") != ALBEDO_FORMAT_NAME:
            raise AssetError(f"{path}: header format is {header.get('format')!r}, expected {ALBEDO_FORMAT_NAME!r}")
        if header.get("format_version") != ALBEDO_FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"{path}: albedo format version {header.get('format_version')} but this MLANet reads "
                f"version {ALBEDO_FORMAT_VERSION}; rebuild it with `mlanet assets albedo`"
            )
        missing = [k for k in _ARRAYS if k not in arrays]
        if missing:
            raise AssetError(f"{path}: missing arrays {missing}")
        actual = content_sha256({k: arrays[k] for k in _ARRAYS})
        if header.get("content_sha256") != actual:
            raise ChecksumError(
                f"{path}: albedo content checksum mismatch (header {str(header.get('content_sha256'))[:12]}..., "
                f"data {actual[:12]}...); the file was modified or damaged; rebuild it with `mlanet assets albedo`"
            )
        out = cls(header=header, mean=arrays["albedo_mean"].astype(np.float32),
                  basis=arrays["albedo_basis"].astype(np.float32))
        out.validate(source=str(path))
        return out

    def check_topology(self, triangles: np.ndarray, n_vertices: int, source: str = "albedo model") -> None:
        """Refuse a face model with another vertex count or triangle list (clear :class:`AssetError`)."""
        fm = self.header["face_model"]
        if int(fm["vertices"]) != int(n_vertices) or fm["triangles_sha256"] != topology_sha256(triangles):
            raise AssetError(
                f"{source}: albedo model {self.id} was built for face model {fm['model_id']} "
                f"({fm['vertices']} vertices, topology {str(fm['triangles_sha256'])[:12]}...) but this face model has "
                f"{n_vertices} vertices, topology {topology_sha256(triangles)[:12]}...; build an albedo model for "
                "this topology with `mlanet assets albedo`, or use --albedo regional"
            )

    def header_entry(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The ``albedo_model`` entry a face-model header records for this albedo model."""
        h = self.header
        entry = {
            "id": self.id,
            "kind": "pca (data-driven, built by `mlanet assets albedo`)",
            "components": list(h["components"]),
            "terms": h["terms"],
            "sources": h["sources"],
            "explained_variance_ratio": h.get("explained_variance_ratio"),
            "content_sha256": h.get("content_sha256"),
        }
        if path is not None:
            entry["file"] = Path(path).name
        return entry


def resolve_albedo(
    choice: str | os.PathLike[str] | None, crop: str, say: Callable[[str], None] | None = None
) -> tuple[AlbedoModelFile | None, Path | None]:
    """The albedo model ``mlanet assets build`` embeds: ``(model, path)``, or ``(None, None)`` for regional.

    ``choice``: ``"auto"``/``None`` (the shipped data-driven model for crops that have one,
    else the regional default with a printed notice), ``"regional"``, or a file path.
    """
    say = say or (lambda msg: log.info(msg))
    c = AUTO if choice is None else str(choice)
    if c == REGIONAL:
        return None, None
    if c == AUTO:
        shipped = SHIPPED_ALBEDO.get(crop)
        if shipped is None or not shipped.is_file():
            why = "this MLANet install has no shipped albedo file" if shipped else f"none is shipped for crop '{crop}'"
            say(f"notice: using the regional default albedo model (data-driven albedo: {why}; "
                "pass --albedo FILE to embed one)")
            return None, None
        path = shipped
    else:
        path = Path(c).expanduser()
    model = AlbedoModelFile.load(path)
    say(f"albedo: embedding data-driven model {model.id} from {path} (terms: {model.header['terms']})")
    return model, path
