"""Per-frame mesh files: Wavefront OBJ (+ MTL + PNG texture) and binary PLY.

Units are metres. Inputs are in the project's frames (camera or model frame: +y down, +z
forward/away from the viewer, see :mod:`mlanet.conventions`). Most viewers and DCC tools
(Blender, MeshLab, three.js) expect +Y up with the viewer on +Z, so by default the files are
written in a **y-up, right-handed frame**: ``(x, y, z) -> (x, -y, -z)``, i.e. a 180-degree
rotation about x (``mlanet.conventions.Y_UP_TO_MODEL_FRAME`` is its own inverse). A rotation
preserves winding, so the project's counter-clockwise front faces stay counter-clockwise
front faces: a face that looks at the camera ends up upright, looking towards +Z (the
viewer). Camera-frame vertices land in OpenGL eye space (the camera at the origin looking
down -Z). Pass ``y_up=False`` to keep the input frame. Each file states its frame in a
comment on its first lines.

Texture coordinates: the face model's ``uv`` has its origin at the bottom-left of the image
(OBJ/OpenGL convention), which is what OBJ ``vt`` and PLY ``texcoord`` expect, so they are
written unchanged; texture images are given top row first, as usual.

Every file is written to a temporary file beside its target and renamed into place; for OBJ
the texture and the MTL are written before the OBJ that refers to them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mlanet.edge.writers import WriterError, write_bytes_atomic

log = logging.getLogger(__name__)

#: Written as a comment into every mesh file when ``y_up`` is True.
Y_UP_NOTE = "frame: y-up right-handed, metres; (x, y, z)_file = (x, -y, -z)_opencv (180 deg about x)"
#: ... and when it is False.
OPENCV_NOTE = "frame: OpenCV (+x right, +y down, +z forward), metres"

_FLIP = np.array([1.0, -1.0, -1.0])


def _check_mesh(path: Path, vertices: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"{path}: vertices must be (V, 3), got {v.shape}")
    if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"{path}: triangles must be an integer (F, 3) array, got {t.shape} {t.dtype}")
    if len(t) and (t.min() < 0 or t.max() >= len(v)):
        raise ValueError(f"{path}: triangle indices must lie in [0, {len(v)}), got [{t.min()}, {t.max()}]")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{path}: vertices contain NaN or infinite values")
    return v, t.astype(np.int64)


def _check_uv(path: Path, triangles: np.ndarray, uv: np.ndarray,
              triangles_uv: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    uv = np.asarray(uv, dtype=np.float64)
    tuv = np.asarray(triangles_uv)
    if uv.ndim != 2 or uv.shape[1] != 2:
        raise ValueError(f"{path}: uv must be (T, 2), got {uv.shape}")
    if tuv.shape != triangles.shape or not np.issubdtype(tuv.dtype, np.integer):
        raise ValueError(
            f"{path}: triangles_uv must be an integer array shaped like triangles {triangles.shape}, got {tuv.shape}"
        )
    if len(tuv) and (tuv.min() < 0 or tuv.max() >= len(uv)):
        raise ValueError(f"{path}: triangles_uv indices must lie in [0, {len(uv)}), got [{tuv.min()}, {tuv.max()}]")
    return uv, tuv.astype(np.int64)


def _to_file_frame(x: np.ndarray, y_up: bool) -> np.ndarray:
    return x * _FLIP if y_up else x


def _lines(fmt: str, rows: np.ndarray) -> str:
    """``fmt`` (one line, with a newline) applied to every row of a 2-D array; fast for big meshes."""
    if len(rows) == 0:
        return ""
    return (fmt * len(rows)) % tuple(rows.ravel().tolist())


def encode_png(image: np.ndarray, *, source: str = "texture") -> bytes:
    """PNG bytes of an (H, W, 3) uint8 RGB image (OpenCV does the encoding)."""
    import cv2

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{source}: texture must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))
    if not ok:
        raise WriterError(f"{source}: PNG encoding failed")
    return buf.tobytes()


def png_bytes(texture: np.ndarray | bytes, source: str = "texture") -> bytes:
    """PNG bytes of a texture given as an (H, W, 3) uint8 RGB image or as PNG bytes (checked)."""
    if isinstance(texture, (bytes, bytearray, memoryview)):
        data = bytes(texture)
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError(f"{source}: texture bytes are not a PNG file")
        return data
    return encode_png(texture, source=source)


def write_obj(
    path: str | os.PathLike[str],
    vertices: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray | None = None,
    triangles_uv: np.ndarray | None = None,
    *,
    texture_png: np.ndarray | bytes | str | os.PathLike[str] | None = None,
    normals: np.ndarray | None = None,
    y_up: bool = True,
    comment: str | None = None,
) -> Path:
    """Write a triangle mesh as Wavefront OBJ (``v``, ``vt``, ``vn``, ``f v/vt[/vn]``, 1-based).

    Args:
        path: the ``.obj`` file. With a texture, ``<stem>.mtl`` (and ``<stem>.png`` unless the
            texture is an existing file) are written beside it.
        vertices: (V, 3) metres, project frame (camera or model frame).
        triangles: (F, 3) int vertex indices, counter-clockwise front faces.
        uv: (T, 2) texture coordinates in [0, 1], origin bottom-left; optional.
        triangles_uv: (F, 3) int indices into ``uv`` (per-corner UVs); required with ``uv``.
        texture_png: the texture: an (H, W, 3) uint8 RGB image or PNG bytes (written as
            ``<stem>.png``), or the path of an existing image, referenced from the MTL (relative
            to the OBJ's folder when possible) and not copied — for sequences sharing one
            texture. Needs ``uv``.
        normals: (V, 3) per-vertex normals in the same frame as ``vertices``; optional.
        y_up: write in the y-up frame ``(x, -y, -z)`` (default; see the module docstring).
        comment: an extra comment line for the header.

    Returns the OBJ path.
    """
    path = Path(path)
    v, t = _check_mesh(path, vertices, triangles)
    if (uv is None) != (triangles_uv is None):
        raise ValueError(f"{path}: give both uv and triangles_uv, or neither")
    if texture_png is not None and uv is None:
        raise ValueError(f"{path}: a texture needs uv and triangles_uv")
    out = [f"# MLANet mesh: {len(v)} vertices, {len(t)} triangles (counter-clockwise front faces)\n"]
    out.append(f"# {Y_UP_NOTE if y_up else OPENCV_NOTE}\n")
    if comment:
        out += [f"# {line}\n" for line in str(comment).splitlines()]

    if texture_png is not None:
        mtl_path = path.with_suffix(".mtl")
        if isinstance(texture_png, (str, os.PathLike)):
            tex = Path(texture_png)
            if not tex.is_file():
                raise WriterError(f"{path}: texture file {tex} does not exist")
            try:
                tex_ref = os.path.relpath(tex.resolve(), path.parent.resolve())
            except ValueError:  # other drive (Windows)
                tex_ref = str(tex.resolve())
        else:
            tex_path = path.with_suffix(".png")
            write_bytes_atomic(tex_path, png_bytes(texture_png, str(tex_path)))
            tex_ref = tex_path.name
        mtl = (
            "# MLANet material\n"
            "newmtl face\n"
            "Ka 1.000 1.000 1.000\nKd 1.000 1.000 1.000\nKs 0.000 0.000 0.000\nd 1.0\nillum 1\n"
            f"map_Kd {tex_ref.replace(os.sep, '/')}\n"
        )
        write_bytes_atomic(mtl_path, mtl.encode("utf-8"))
        out.append(f"mtllib {mtl_path.name}\n")

    out.append(_lines("v %.6f %.6f %.6f\n", _to_file_frame(v, y_up)))
    if uv is not None:
        uv_arr, tuv = _check_uv(path, t, uv, triangles_uv)
        out.append(_lines("vt %.6f %.6f\n", uv_arr))
    if normals is not None:
        n = np.asarray(normals, dtype=np.float64)
        if n.shape != v.shape:
            raise ValueError(f"{path}: normals must be (V, 3) like vertices {v.shape}, got {n.shape}")
        out.append(_lines("vn %.5f %.5f %.5f\n", _to_file_frame(n, y_up)))
    if texture_png is not None:
        out.append("usemtl face\n")
    t1 = t + 1
    if uv is not None and normals is not None:
        cols = np.stack([t1, tuv + 1, t1], axis=-1).reshape(len(t), 9)
        out.append(_lines("f %d/%d/%d %d/%d/%d %d/%d/%d\n", cols))
    elif uv is not None:
        cols = np.stack([t1, tuv + 1], axis=-1).reshape(len(t), 6)
        out.append(_lines("f %d/%d %d/%d %d/%d\n", cols))
    elif normals is not None:
        cols = np.stack([t1, t1], axis=-1).reshape(len(t), 6)
        out.append(_lines("f %d//%d %d//%d %d//%d\n", cols))
    else:
        out.append(_lines("f %d %d %d\n", t1))
    write_bytes_atomic(path, "".join(out).encode("ascii"))
    return path


def write_ply(
    path: str | os.PathLike[str],
    vertices: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray | None = None,
    triangles_uv: np.ndarray | None = None,
    *,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
    y_up: bool = True,
    comment: str | None = None,
) -> Path:
    """Write a triangle mesh as binary little-endian PLY.

    Layout (MeshLab / Blender convention)::

        element vertex V: float x, y, z [float nx, ny, nz] [uchar red, green, blue]
        element face F:   list uchar int vertex_indices (3 per face)
                          [list uchar float texcoord (6 per face: u0 v0 u1 v1 u2 v2)]

    Args:
        path: the ``.ply`` file.
        vertices: (V, 3) metres, project frame.
        triangles: (F, 3) int, counter-clockwise front faces.
        uv, triangles_uv: optional per-corner UVs as in :func:`write_obj` (origin bottom-left).
        colors: optional (V, 3) per-vertex RGB, uint8 or float in [0, 1] (clipped, rounded).
        normals: optional (V, 3) per-vertex normals in the same frame as ``vertices``.
        y_up: write in the y-up frame ``(x, -y, -z)`` (default).
        comment: an extra comment line for the header.
    """
    path = Path(path)
    v, t = _check_mesh(path, vertices, triangles)
    if (uv is None) != (triangles_uv is None):
        raise ValueError(f"{path}: give both uv and triangles_uv, or neither")
    header = [
        "ply",
        "format binary_little_endian 1.0",
        "comment MLANet mesh, counter-clockwise front faces",
        f"comment {Y_UP_NOTE if y_up else OPENCV_NOTE}",
    ]
    if comment:
        header += [f"comment {line}" for line in str(comment).splitlines()]
    vdtype: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        vdtype += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        vdtype += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(len(v), dtype=np.dtype(vdtype))
    p = _to_file_frame(v, y_up)
    vert["x"], vert["y"], vert["z"] = p[:, 0], p[:, 1], p[:, 2]
    if normals is not None:
        n = np.asarray(normals, dtype=np.float64)
        if n.shape != v.shape:
            raise ValueError(f"{path}: normals must be (V, 3) like vertices {v.shape}, got {n.shape}")
        n = _to_file_frame(n, y_up)
        vert["nx"], vert["ny"], vert["nz"] = n[:, 0], n[:, 1], n[:, 2]
    if colors is not None:
        c = np.asarray(colors)
        if c.shape != v.shape:
            raise ValueError(f"{path}: colors must be (V, 3) like vertices {v.shape}, got {c.shape}")
        if c.dtype != np.uint8:
            c = np.round(np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    header += [f"element vertex {len(v)}"] + [f"property {'float' if d == '<f4' else 'uchar'} {k}" for k, d in vdtype]

    fdtype: list[tuple] = [("n", "u1"), ("vertex_indices", "<i4", (3,))]
    header += [f"element face {len(t)}", "property list uchar int vertex_indices"]
    if uv is not None:
        uv_arr, tuv = _check_uv(path, t, uv, triangles_uv)
        fdtype += [("nt", "u1"), ("texcoord", "<f4", (6,))]
        header.append("property list uchar float texcoord")
    face = np.empty(len(t), dtype=np.dtype(fdtype))
    face["n"] = 3
    face["vertex_indices"] = t
    if uv is not None:
        face["nt"] = 6
        face["texcoord"] = uv_arr[tuv].reshape(len(t), 6)
    header.append("end_header")
    data = ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()
    write_bytes_atomic(path, data)
    return path
