"""Reading an upstream ICT-FaceKit ``FaceXModel/`` release from a folder or an archive.

Accepted inputs (all give byte-identical results):

* the unpacked ``FaceXModel/`` folder, or a folder that contains ``FaceXModel/`` (a clone);
* a tar archive (``.tar.xz``, ``.tar.gz``, ``.tar``) or ``.zip`` whose members are the
  ``FaceXModel/`` files, at the archive root or under any prefix (GitHub archives put
  them under ``ICT-FaceKit-<commit>/FaceXModel/``).

Files are identified by base name inside the directory that holds
``generic_neutral_mesh.obj``. The *content checksum* is a SHA-256 over the sorted
``name sha256`` lines of the files the builder uses, so it does not depend on how the
release was packed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import posixpath
import tarfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256
from mlanet.morphable.sources import ict_topology as topo
from mlanet.morphable.obj import ObjMesh, read_obj, read_obj_vertices

log = logging.getLogger(__name__)

NEUTRAL_NAME = "generic_neutral_mesh.obj"
INDICES_NAME = "vertex_indices.json"
N_IDENTITY = 100

#: Content checksum (see module docstring) of FaceXModel/ at upstream commit da5f95a.
PINNED_CONTENT_SHA256 = "485c88934af294958821309d08ef919c98f865a389c764e1a938116aadbe5915"
PINNED_COMMIT = "da5f95a"
UPSTREAM_REPO = "https://github.com/ICT-VGL/ICT-FaceKit"

ProgressFn = Callable[[str], None]


@dataclass
class IctRelease:
    """The parsed release: neutral mesh, absolute shape positions, index file, checksums.

    ``shapes`` maps a shape name (file stem, e.g. ``identity000``, ``jawOpen``) to its
    absolute vertex positions (N, 3) in ICT units (cm, y up) — ICT stores every shape as
    ``neutral + delta``.
    """

    source: Path
    neutral: ObjMesh
    shapes: dict[str, np.ndarray]
    vertex_indices: dict
    file_sha256: dict[str, str] = field(default_factory=dict)
    archive_sha256: str | None = None

    @property
    def content_sha256(self) -> str:
        lines = "".join(f"{name} {digest}\n" for name, digest in sorted(self.file_sha256.items()))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()

    @property
    def identity_names(self) -> list[str]:
        return [f"identity{i:03d}" for i in range(N_IDENTITY)]

    @property
    def expression_names(self) -> list[str]:
        """Expression shapes in upstream order (``vertex_indices.json``), then any others, sorted."""
        listed = [n for n in self.vertex_indices.get("expressions", []) if n in self.shapes]
        others = sorted(
            n
            for n in self.shapes
            if n not in listed and not n.startswith("identity") and n not in topo.EXCLUDED_SHAPES
        )
        return listed + others


def _wanted(name: str) -> bool:
    return name.endswith(".obj") or name == INDICES_NAME


def _iter_folder(folder: Path) -> Iterator[tuple[str, bytes]]:
    for p in sorted(folder.iterdir()):
        if p.is_file() and _wanted(p.name):
            yield p.name, p.read_bytes()


def _members_under_model_dir(names: list[str], source: Path) -> str:
    dirs = [posixpath.dirname(n) for n in names if posixpath.basename(n) == NEUTRAL_NAME]
    if not dirs:
        raise AssetError(f"{source}: no {NEUTRAL_NAME} inside; is this an ICT-FaceKit FaceXModel archive?")
    if len(set(dirs)) > 1:
        raise AssetError(f"{source}: several {NEUTRAL_NAME} inside ({sorted(set(dirs))}); keep one FaceXModel")
    return dirs[0]


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, "r:*") as tf:
        members = [m for m in tf.getmembers() if m.isfile() and _wanted(posixpath.basename(m.name))]
        model_dir = _members_under_model_dir([m.name for m in members], path)
        for m in members:
            if posixpath.dirname(m.name) == model_dir:
                fh = tf.extractfile(m)
                if fh is not None:
                    yield posixpath.basename(m.name), fh.read()


def _iter_zip(path: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        members = [i for i in zf.infolist() if not i.is_dir() and _wanted(posixpath.basename(i.filename))]
        model_dir = _members_under_model_dir([i.filename for i in members], path)
        for info in members:
            if posixpath.dirname(info.filename) == model_dir:
                yield posixpath.basename(info.filename), zf.read(info)


def _resolve_folder(path: Path) -> Path:
    if (path / NEUTRAL_NAME).is_file():
        return path
    if (path / "FaceXModel" / NEUTRAL_NAME).is_file():
        return path / "FaceXModel"
    raise AssetError(
        f"{path}: no {NEUTRAL_NAME} here or in {path / 'FaceXModel'}; "
        "pass the ICT-FaceKit FaceXModel/ folder or its archive"
    )


def read_ict_release(path: str | Path, progress: ProgressFn | None = None) -> IctRelease:
    """Parse an ICT-FaceKit release from ``path`` (folder or archive); see the module docstring.

    Raises :class:`AssetError` naming the input for: a missing path, an unreadable, truncated
    or corrupt archive, missing files, malformed OBJs, and shapes whose vertex count differs
    from the neutral mesh.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise AssetError(f"{path}: no such file or folder")
    archive_sha = None
    if path.is_dir():
        folder = _resolve_folder(path)
        items: Iterator[tuple[str, bytes]] = _iter_folder(folder)
    elif zipfile.is_zipfile(path):
        items = _iter_zip(path)
        archive_sha = file_sha256(path)
    else:
        archive_sha = file_sha256(path)
        items = _iter_tar(path)

    neutral: ObjMesh | None = None
    shapes: dict[str, np.ndarray] = {}
    indices: dict | None = None
    digests: dict[str, str] = {}
    try:
        for i, (name, data) in enumerate(items, start=1):
            if name.endswith(".obj"):
                stem = name[: -len(".obj")]
                if stem in topo.EXCLUDED_SHAPES:
                    continue
                digests[name] = hashlib.sha256(data).hexdigest()
                where = f"{path}:{name}" if not path.is_dir() else str(path / name)
                if name == NEUTRAL_NAME:
                    neutral = read_obj(data, where)
                else:
                    shapes[stem] = read_obj_vertices(data, where)
            elif name == INDICES_NAME:
                digests[name] = hashlib.sha256(data).hexdigest()
                try:
                    indices = json.loads(data.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise AssetError(f"{path}: {INDICES_NAME} is not valid JSON ({exc})") from None
            if progress and i % 20 == 0:
                progress(f"read {i} files")
    except (tarfile.TarError, lzma.LZMAError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise AssetError(f"{path}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    except OSError as exc:
        raise AssetError(f"{path}: cannot read ({exc})") from None

    if neutral is None:
        raise AssetError(f"{path}: {NEUTRAL_NAME} is missing")
    if indices is None:
        raise AssetError(f"{path}: {INDICES_NAME} is missing")
    release = IctRelease(path, neutral, shapes, indices, digests, archive_sha)
    _check_release(release)
    return release


def _check_release(rel: IctRelease) -> None:
    n = len(rel.neutral.vertices)
    if n != topo.N_VERTICES:
        raise AssetError(
            f"{rel.source}: {NEUTRAL_NAME} has {n} vertices, expected {topo.N_VERTICES} (ICT-FaceKit topology)"
        )
    missing = [f"{s}.obj" for s in rel.identity_names if s not in rel.shapes]
    missing += [f"{s}.obj" for s in rel.vertex_indices.get("expressions", []) if s not in rel.shapes]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise AssetError(f"{rel.source}: missing shape files: {shown}")
    for name, verts in rel.shapes.items():
        if verts.shape != (n, 3):
            raise AssetError(
                f"{rel.source}: {name}.obj has {len(verts)} vertices but {NEUTRAL_NAME} has {n}; "
                "the file is damaged or from another topology"
            )
    lm = rel.vertex_indices.get("idx_to_landmark_verts")
    if lm is None or len(lm) != 68:
        raise AssetError(f"{rel.source}: {INDICES_NAME} lacks the 68 'idx_to_landmark_verts'")
    if tuple(lm) != topo.LANDMARKS_68:
        log.warning("%s: landmark indices differ from the ICT-FaceKit README; using the file's", rel.source)
