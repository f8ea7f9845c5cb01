"""A small, fast Wavefront OBJ reader for the face-model assets.

Reads positions (``v``), texture coordinates (``vt``) and polygon faces (``f``) with their
per-corner texture indices; normals, groups and materials are ignored. Faces are kept as
polygons (triangles and quads in ICT-FaceKit) and triangulated with :func:`triangulate`.
Errors name the file and the line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mlanet.errors import AssetError


@dataclass
class ObjMesh:
    """Raw OBJ content, in file units and file frame, 0-based indices.

    vertices (N, 3) float64; uv (U, 2) float64 (may be empty);
    faces: list of int arrays of vertex indices, one per polygon (CCW as in the file);
    faces_uv: parallel list of uv indices (``None`` entries when a face has none).
    """

    vertices: np.ndarray
    uv: np.ndarray
    faces: list[np.ndarray]
    faces_uv: list[np.ndarray | None]


def _floats(lines: list[bytes], n: int, what: str, source: str) -> np.ndarray:
    if not lines:
        return np.zeros((0, n))
    try:
        flat = np.array(b" ".join(lines).split(), dtype=np.float64)
    except ValueError as exc:
        raise AssetError(f"{source}: malformed '{what}' line ({exc})") from None
    if flat.size != n * len(lines):
        # Some exporters write optional extra components (e.g. 'vt u v w'); parse line by line.
        rows = [ln.split() for ln in lines]
        if any(len(r) < n for r in rows):
            raise AssetError(f"{source}: a '{what}' line has fewer than {n} numbers")
        flat = np.array([r[:n] for r in rows], dtype=np.float64).ravel()
    return flat.reshape(-1, n)


def read_obj_vertices(data: bytes, source: str) -> np.ndarray:
    """Only the ``v`` positions (N, 3) of an OBJ file's bytes (fast path for shape files)."""
    lines = [ln[2:] for ln in data.split(b"\n") if ln.startswith(b"v ")]
    if not lines:
        raise AssetError(f"{source}: no vertices ('v' lines) found; not an OBJ mesh")
    return _floats(lines, 3, "v", source)


def read_obj(data: bytes, source: str) -> ObjMesh:
    """Parse an OBJ file's bytes. ``source`` names the file in error messages."""
    v_lines: list[bytes] = []
    vt_lines: list[bytes] = []
    f_lines: list[tuple[int, bytes]] = []
    for lineno, line in enumerate(data.split(b"\n"), start=1):
        if line.startswith(b"v "):
            v_lines.append(line[2:])
        elif line.startswith(b"vt "):
            vt_lines.append(line[3:])
        elif line.startswith(b"f "):
            f_lines.append((lineno, line[2:]))
    if not v_lines:
        raise AssetError(f"{source}: no vertices ('v' lines) found; not an OBJ mesh")
    vertices = _floats(v_lines, 3, "v", source)
    uv = _floats(vt_lines, 2, "vt", source)
    n_v, n_uv = len(vertices), len(uv)
    faces: list[np.ndarray] = []
    faces_uv: list[np.ndarray | None] = []
    for lineno, body in f_lines:
        corners = body.split()
        if len(corners) < 3:
            raise AssetError(f"{source}:{lineno}: a face needs at least 3 corners")
        vi, ti = [], []
        for c in corners:
            parts = c.split(b"/")
            try:
                v = int(parts[0])
                t = int(parts[1]) if len(parts) > 1 and parts[1] else None
            except ValueError:
                raise AssetError(f"{source}:{lineno}: malformed face corner {c.decode(errors='replace')!r}") from None
            vi.append(v - 1 if v > 0 else n_v + v)  # OBJ indices are 1-based; negatives count from the end
            ti.append(None if t is None else (t - 1 if t > 0 else n_uv + t))
        fv = np.array(vi, dtype=np.int64)
        if fv.min() < 0 or fv.max() >= n_v:
            raise AssetError(f"{source}:{lineno}: face refers to vertex outside 1..{n_v}")
        faces.append(fv)
        if all(t is not None for t in ti):
            ft = np.array(ti, dtype=np.int64)
            if ft.min() < 0 or ft.max() >= n_uv:
                raise AssetError(f"{source}:{lineno}: face refers to texture coordinate outside 1..{n_uv}")
            faces_uv.append(ft)
        else:
            faces_uv.append(None)
    return ObjMesh(vertices=vertices, uv=uv, faces=faces, faces_uv=faces_uv)


def triangulate(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Fan-triangulate polygons, keeping their winding.

    Returns ``(triangles (T, 3) int64, source_polygon (T,) int64)``; polygon ``[a, b, c, d]``
    becomes ``[a, b, c]`` and ``[a, c, d]``. Use the same call on per-corner UV indices to get
    matching UV triangles.
    """
    tris: list[list[int]] = []
    src: list[int] = []
    for pi, poly in enumerate(polygons):
        for k in range(1, len(poly) - 1):
            tris.append([int(poly[0]), int(poly[k]), int(poly[k + 1])])
            src.append(pi)
    return np.array(tris, dtype=np.int64).reshape(-1, 3), np.array(src, dtype=np.int64)
