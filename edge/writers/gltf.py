"""One self-contained GLB 2.0 file per face track: mesh, morph targets, animation.

What the file holds (glTF 2.0, binary container, everything embedded):

- one mesh, one primitive (TRIANGLES): ``POSITION`` (the track's identity with zero expression),
  ``NORMAL``, ``TEXCOORD_0``, ``UNSIGNED_INT`` indices and one morph target per blendshape
  (``POSITION`` displacement per unit weight). ``mesh.extras.targetNames`` lists the target
  names (ARKit names; three.js and Blender read them), ``mesh.weights`` defaults to zeros.
  Morph targets carry no normal displacements: shading uses the neutral normals.
- one node carrying the mesh, with the first frame's head pose as its rest transform;
- one animation (when there are frames) whose samplers share the frame times as input:
  ``weights`` (N * K floats), ``rotation`` (unit quaternions ``xyzw``, sign-continuous from frame
  to frame so interpolation takes the short way) and ``translation``, all ``LINEAR``;
- the texture as an embedded PNG (image + sampler + texture + ``baseColorTexture``) when given,
  else a plain grey material.

Frames. The inputs follow :mod:`mlanet.conventions`: vertices and displacements in the model
frame, head pose ``x_cam = R @ x_model + t`` in the OpenCV camera frame, metres. glTF is +Y up
with +Z towards the viewer, so with ``D = diag(1, -1, -1)`` (a 180-degree rotation about x,
which keeps the counter-clockwise front faces front-facing) the file stores ``D @ x_model`` as
positions, ``D @ R @ D`` as the node rotation and ``D @ t`` as its translation; the node then
places the face exactly where the camera saw it, in glTF coordinates with a glTF camera at the
origin looking down -Z (the video's camera). Texture coordinates: the face model's ``uv``
has its origin bottom-left, glTF's top-left, so ``v`` is stored as ``1 - v``.

Seams. The face model has UVs per triangle corner; glTF has one attribute set per vertex, so
the vertex stream is unwrapped: one glTF vertex per distinct (vertex, uv) pair, and the
morph targets and normals are indexed the same way (normals are computed on the welded mesh,
so seams do not show in the shading).

Spec points respected: 4-byte aligned bufferViews and chunks, JSON chunk padded with spaces,
BIN chunk padded with zeros, ``min``/``max`` on every ``POSITION`` accessor (morph targets
included) and on the animation input, no ``byteStride`` anywhere (one tightly packed
bufferView per accessor), ``asset.version = "2.0"`` and a ``generator``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mlanet.geometry.quaternions import matrices_to_quaternions, quaternions_to_matrices  # noqa: F401 (re-exported)
from mlanet.edge.writers import WriterError, write_bytes_atomic

log = logging.getLogger(__name__)

GENERATOR = "MLANet mlanet-video GLB writer"

#: OpenCV camera frame / model frame -> glTF frame (its own inverse).
D_GLTF = np.diag([1.0, -1.0, -1.0])

GLB_MAGIC = 0x46546C67  # "glTF"
GLB_VERSION = 2
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942

FLOAT = 5126
UNSIGNED_INT = 5125
ARRAY_BUFFER = 34962
ELEMENT_ARRAY_BUFFER = 34963
_N_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
_DTYPES: dict[int, np.dtype[Any]] = {FLOAT: np.dtype("<f4"), UNSIGNED_INT: np.dtype("<u4"), 5123: np.dtype("<u2"), 5121: np.dtype("u1"),
           5122: np.dtype("<i2"), 5120: np.dtype("i1")}

#: Rotation matrices further than this from orthonormal (max abs entry of R^T R - I) are refused.
ORTHONORMAL_TOL = 1e-3


# ---------------------------------------------------------------------------- math helpers
def _vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unit area-weighted vertex normals (V, 3); isolated/degenerate vertices get +Z."""
    v = vertices.astype(np.float64)
    fn = np.cross(v[triangles[:, 1]] - v[triangles[:, 0]], v[triangles[:, 2]] - v[triangles[:, 0]])
    n = np.zeros_like(v)
    for c in range(3):
        np.add.at(n, triangles[:, c], fn)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    out = np.where(length > 1e-20, n / np.maximum(length, 1e-300), np.array([0.0, 0.0, 1.0]))
    return out


def unwrap_uv_seams(triangles: np.ndarray, triangles_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices at UV seams: one output vertex per distinct (vertex, uv) pair.

    Args:
        triangles: (F, 3) vertex indices.
        triangles_uv: (F, 3) uv indices (per corner).

    Returns ``(vertex_index (G,), uv_index (G,), indices (F, 3))``: output vertex ``g`` is mesh
    vertex ``vertex_index[g]`` with texture coordinate ``uv_index[g]``; ``indices`` are the
    triangles re-indexed into the G output vertices (same winding).
    """
    pairs = np.stack([np.asarray(triangles, np.int64).ravel(), np.asarray(triangles_uv, np.int64).ravel()], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return unique[:, 0], unique[:, 1], inverse.reshape(-1, 3)


# ---------------------------------------------------------------------------- GLB container
class _GlbBuilder:
    """Accumulates the binary buffer and the JSON arrays that describe it."""

    def __init__(self) -> None:
        self.gltf: dict[str, Any] = {"bufferViews": [], "accessors": []}
        self._parts: list[bytes] = []
        self._length = 0

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self._length) % 4
        if pad:
            self._parts.append(b"\x00" * pad)
            self._length += pad
        bv: dict[str, Any] = {"buffer": 0, "byteOffset": self._length, "byteLength": len(data)}
        if target is not None:
            bv["target"] = target
        self._parts.append(data)
        self._length += len(data)
        self.gltf["bufferViews"].append(bv)
        return len(self.gltf["bufferViews"]) - 1

    def accessor(self, array: np.ndarray, type_: str, component: int, *, target: int | None = None,
                 minmax: bool = False) -> int:
        a = np.ascontiguousarray(array, dtype=_DTYPES[component])
        n = _N_COMPONENTS[type_]
        count = a.size // n
        if a.size != count * n or count == 0:
            raise ValueError(f"accessor of type {type_} needs a non-empty multiple of {n} values, got {a.size}")
        acc: dict[str, Any] = {"bufferView": self.view(a.tobytes(), target), "componentType": component,
                               "count": count, "type": type_}
        if minmax:
            flat = a.reshape(count, n)
            cast = float if component == FLOAT else int
            acc["min"] = [cast(x) for x in flat.min(axis=0)]
            acc["max"] = [cast(x) for x in flat.max(axis=0)]
        self.gltf["accessors"].append(acc)
        return len(self.gltf["accessors"]) - 1

    def to_glb(self) -> bytes:
        binary = b"".join(self._parts)
        binary += b"\x00" * ((-len(binary)) % 4)
        self.gltf["buffers"] = [{"byteLength": len(binary)}]
        text = json.dumps(self.gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
        text += b" " * ((-len(text)) % 4)
        total = 12 + 8 + len(text) + 8 + len(binary)
        return b"".join([
            struct.pack("<III", GLB_MAGIC, GLB_VERSION, total),
            struct.pack("<II", len(text), CHUNK_JSON), text,
            struct.pack("<II", len(binary), CHUNK_BIN), binary,
        ])


def read_glb(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """Parse a GLB 2.0 file into its JSON dict and BIN chunk; raises :class:`WriterError` naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WriterError(f"{path}: cannot read ({exc})") from None
    if len(data) < 20:
        raise WriterError(f"{path}: too short for a GLB file")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != GLB_VERSION or length != len(data):
        raise WriterError(f"{path}: not a complete GLB 2.0 file (magic {magic:#x}, version {version}, "
                          f"length {length} of {len(data)} bytes)")
    offset, js, binary = 12, None, b""
    while offset + 8 <= len(data):
        clen, ctype = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8: offset + 8 + clen]
        if ctype == CHUNK_JSON:
            js = json.loads(chunk.decode("utf-8"))
        elif ctype == CHUNK_BIN:
            binary = chunk
        offset += 8 + clen
    if js is None:
        raise WriterError(f"{path}: GLB file without a JSON chunk")
    return js, binary


def _read_accessor(gltf: dict[str, Any], binary: bytes, index: int) -> np.ndarray:
    acc = gltf["accessors"][index]
    bv = gltf["bufferViews"][acc["bufferView"]]
    n = _N_COMPONENTS[acc["type"]]
    dtype = _DTYPES[acc["componentType"]]
    start = bv.get("byteOffset", 0) + acc.get("byteOffset", 0)
    a = np.frombuffer(binary, dtype=dtype, count=acc["count"] * n, offset=start)
    return a.reshape(acc["count"], n) if n > 1 else a


# ---------------------------------------------------------------------------- writer
def _check_inputs(path: Path, **a: Any) -> dict[str, np.ndarray]:
    def bad(msg: str) -> None:
        raise ValueError(f"{path}: {msg}")

    v = np.asarray(a["neutral_vertices"], dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 3 or not np.all(np.isfinite(v)):
        bad(f"neutral_vertices must be finite (V, 3), got {v.shape}")
    tri = np.asarray(a["triangles"])
    if tri.ndim != 2 or tri.shape[1] != 3 or not np.issubdtype(tri.dtype, np.integer) or len(tri) == 0:
        bad(f"triangles must be an integer (F, 3) array, got {tri.shape} {tri.dtype}")
    if tri.min() < 0 or tri.max() >= len(v):
        bad(f"triangle indices must lie in [0, {len(v)})")
    uv = np.asarray(a["uv"], dtype=np.float64)
    tuv = np.asarray(a["triangles_uv"])
    if uv.ndim != 2 or uv.shape[1] != 2:
        bad(f"uv must be (T, 2), got {uv.shape}")
    if tuv.shape != tri.shape or not np.issubdtype(tuv.dtype, np.integer) or tuv.min() < 0 or tuv.max() >= len(uv):
        bad(f"triangles_uv must be integer {tri.shape} indices into uv (T = {len(uv)})")
    basis = np.asarray(a["expression_basis"], dtype=np.float64)
    if basis.ndim != 3 or basis.shape[1:] != v.shape:
        bad(f"expression_basis must be (K, {len(v)}, 3), got {basis.shape}")
    return {"v": v, "tri": tri.astype(np.int64), "uv": uv, "tuv": tuv.astype(np.int64), "basis": basis}


def _check_animation(path: Path, K: int, times_s: Any, weights: Any, rotations: Any, translations: Any) -> dict[str, np.ndarray]:
    t = np.asarray(times_s, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"{path}: times_s must be (N,), got {t.shape}")
    N = len(t)
    w = np.asarray(weights, dtype=np.float64)
    R = np.asarray(rotations, dtype=np.float64)
    tr = np.asarray(translations, dtype=np.float64)
    if N == 0:  # no animation: accept any empty arrays
        w, R, tr = np.zeros((0, K)), np.zeros((0, 3, 3)), np.zeros((0, 3))
    for name, arr, shape in (("weights", w, (N, K)), ("rotations", R, (N, 3, 3)), ("translations", tr, (N, 3))):
        if arr.shape != shape:
            raise ValueError(f"{path}: {name} must be {shape} for {N} times and {K} morph names, got {arr.shape}")
    for name, arr in (("times_s", t), ("weights", w), ("rotations", R), ("translations", tr)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{path}: {name} contains NaN or infinite values")
    t32 = t.astype(np.float32)
    if N > 1 and not np.all(np.diff(t32) > 0):
        i = int(np.argmin(np.diff(t32)))
        raise ValueError(f"{path}: times_s must be strictly increasing (as float32), but t[{i}]={t[i]} and "
                         f"t[{i + 1}]={t[i + 1]}")
    if N:
        err = np.abs(np.einsum("nji,njk->nik", R, R) - np.eye(3)).max(axis=(1, 2))
        det = np.linalg.det(R)
        badr = np.nonzero((err > ORTHONORMAL_TOL) | (det <= 0))[0]
        if len(badr):
            raise ValueError(f"{path}: rotations[{badr[0]}] is not a rotation matrix "
                             f"(|R^T R - I| = {err[badr[0]]:.2e}, det = {det[badr[0]]:.3f})")
    return {"t": t, "w": w, "R": R, "tr": tr}


def write_track_glb(path: str | os.PathLike[str], **mesh_and_animation: Any) -> Path:
    """Write one face track as a self-contained GLB 2.0 file (atomically); the keyword arguments
    are those of :func:`track_glb_bytes`. Returns the path."""
    path = Path(path)
    data = track_glb_bytes(path, **mesh_and_animation)
    write_bytes_atomic(path, data)
    log.info("%s: GLB, %.2f MB", path, len(data) / 1e6)
    return path


def track_glb_bytes(
    path: str | os.PathLike[str],
    *,
    neutral_vertices: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray,
    triangles_uv: np.ndarray,
    expression_basis: np.ndarray,
    morph_names: Sequence[str | None],
    times_s: np.ndarray,
    weights: np.ndarray,
    rotations: np.ndarray,
    translations: np.ndarray,
    texture_png: np.ndarray | bytes | None = None,
    frames: np.ndarray | None = None,
    name: str = "face",
    extras: dict[str, Any] | None = None,
) -> bytes:
    """One face track as the bytes of a self-contained GLB 2.0 file. See the module docstring.

    Args:
        path: the ``.glb`` file the bytes are for (named by errors).
        neutral_vertices: (V, 3) metres, model frame: the track's identity with zero expression.
        triangles: (F, 3) int, counter-clockwise front faces.
        uv: (T, 2) in [0, 1], origin bottom-left; triangles_uv: (F, 3) int indices into ``uv``.
        expression_basis: (K, V, 3) metres of displacement per unit weight, model frame.
        morph_names: (K,) target names (ARKit names). Entries that are ``None`` are skipped
            together with their basis and weight columns; the remaining names must be unique
            (use :class:`mlanet.edge.writers.tables.ArkitMapping` to merge a model's
            expressions that share an ARKit name).
        times_s: (N,) seconds, strictly increasing (video presentation times of the frames).
            ``N = 0`` writes the mesh without an animation.
        weights: (N, K) morph weights per frame.
        rotations: (N, 3, 3) head rotation (model -> OpenCV camera frame).
        translations: (N, 3) metres, OpenCV camera frame.
        texture_png: optional texture, (H, W, 3) uint8 RGB or PNG bytes.
        frames: optional (N,) source frame numbers, stored in ``animations[0].extras.frames``
            (used by :meth:`GlbTrackWriter.resume_from`).
        name: node / mesh name.
        extras: merged into ``asset.extras``.

    Returns the file's bytes. Raises ``ValueError`` naming the file for inconsistent inputs.
    """
    path = Path(path)
    m = _check_inputs(path, neutral_vertices=neutral_vertices, triangles=triangles, uv=uv,
                      triangles_uv=triangles_uv, expression_basis=expression_basis)
    names = list(morph_names)
    if len(names) != len(m["basis"]):
        raise ValueError(f"{path}: {len(names)} morph names for {len(m['basis'])} expression shapes")
    keep = [i for i, n in enumerate(names) if n is not None]
    kept_names = [str(names[i]) for i in keep]
    dupes = sorted({n for n in kept_names if kept_names.count(n) > 1})
    if dupes:
        raise ValueError(f"{path}: duplicate morph target names {dupes}; merge them first (tables.ArkitMapping)")
    anim = _check_animation(path, len(names), times_s, weights, rotations, translations)
    N = len(anim["t"])
    if frames is not None:
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        if len(frames) != N:
            raise ValueError(f"{path}: {len(frames)} frame numbers for {N} times")

    D = D_GLTF
    vidx, uvidx, indices = unwrap_uv_seams(m["tri"], m["tuv"])
    pos_gl = m["v"] @ D  # D is diagonal and symmetric: (D @ x^T)^T == x @ D
    normals = _vertex_normals(pos_gl, m["tri"])[vidx]
    uv_gl = m["uv"][uvidx] * [1.0, -1.0] + [0.0, 1.0]

    b = _GlbBuilder()
    attributes = {
        "POSITION": b.accessor(pos_gl[vidx], "VEC3", FLOAT, target=ARRAY_BUFFER, minmax=True),
        "NORMAL": b.accessor(normals, "VEC3", FLOAT, target=ARRAY_BUFFER),
        "TEXCOORD_0": b.accessor(uv_gl, "VEC2", FLOAT, target=ARRAY_BUFFER),
    }
    targets = [{"POSITION": b.accessor(m["basis"][k][vidx] @ D, "VEC3", FLOAT, target=ARRAY_BUFFER, minmax=True)}
               for k in keep]
    primitive: dict[str, Any] = {
        "attributes": attributes,
        "indices": b.accessor(indices.astype(np.uint32), "SCALAR", UNSIGNED_INT, target=ELEMENT_ARRAY_BUFFER),
        "mode": 4,
        "material": 0,
    }
    if targets:
        primitive["targets"] = targets
    mesh: dict[str, Any] = {"name": name, "primitives": [primitive]}
    if targets:
        mesh["weights"] = [0.0] * len(keep)
        mesh["extras"] = {"targetNames": kept_names}

    material: dict[str, Any] = {
        "name": f"{name}_material",
        "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 0.7},
    }
    if texture_png is not None:
        from mlanet.edge.writers.meshes import png_bytes

        png = png_bytes(texture_png, f"{path} texture")
        b.gltf["images"] = [{"bufferView": b.view(png), "mimeType": "image/png", "name": f"{name}_texture"}]
        b.gltf["samplers"] = [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}]
        b.gltf["textures"] = [{"sampler": 0, "source": 0}]
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0, "texCoord": 0}
    else:
        material["pbrMetallicRoughness"]["baseColorFactor"] = [0.8, 0.8, 0.8, 1.0]

    node: dict[str, Any] = {"name": name, "mesh": 0}
    if N:
        R_gl = np.einsum("ij,njk,kl->nil", D, anim["R"], D)
        quats = matrices_to_quaternions(R_gl)
        trans = anim["tr"] @ D
        node["rotation"] = [float(x) for x in quats[0].astype(np.float32)]
        node["translation"] = [float(x) for x in trans[0].astype(np.float32)]
        t_in = b.accessor(anim["t"].astype(np.float32), "SCALAR", FLOAT, minmax=True)
        samplers = []
        channels = []
        if keep:
            samplers.append({"input": t_in, "output": b.accessor(anim["w"][:, keep], "SCALAR", FLOAT), "interpolation": "LINEAR"})
            channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "weights"}})
        samplers.append({"input": t_in, "output": b.accessor(quats, "VEC4", FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "rotation"}})
        samplers.append({"input": t_in, "output": b.accessor(trans, "VEC3", FLOAT), "interpolation": "LINEAR"})
        channels.append({"sampler": len(samplers) - 1, "target": {"node": 0, "path": "translation"}})
        animation: dict[str, Any] = {"name": f"{name}_track", "samplers": samplers, "channels": channels}
        if frames is not None:
            animation["extras"] = {"frames": [int(f) for f in frames]}
        b.gltf["animations"] = [animation]

    asset_extras = {
        "units": "metres",
        "frame": "glTF (+Y up, +Z towards the viewer) = diag(1,-1,-1) x OpenCV camera frame; "
                 "a glTF camera at the origin looking down -Z is the video's camera",
        "morph_targets": "POSITION displacement per unit weight; names in mesh.extras.targetNames (ARKit)",
    }
    asset_extras.update(extras or {})
    b.gltf.update({
        "asset": {"version": "2.0", "generator": GENERATOR, "extras": asset_extras},
        "scene": 0,
        "scenes": [{"name": name, "nodes": [0]}],
        "nodes": [node],
        "meshes": [mesh],
        "materials": [material],
    })
    data = b.to_glb()
    log.debug("%s: GLB with %d vertices (%d after seam split), %d morph targets, %d keyframes, %.2f MB",
              path, len(m["v"]), len(vidx), len(keep), N, len(data) / 1e6)
    return data


def read_track_animation(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read back the animation of a GLB written by :func:`write_track_glb`, in the input frames.

    Returns a dict: ``morph_names`` (list, K'), ``times_s`` (N,), ``weights`` (N, K'),
    ``rotations`` (N, 3, 3) and ``translations`` (N, 3) in the OpenCV camera frame, and
    ``frames`` (N,) int64 or ``None``. A file without an animation gives N = 0.
    """
    path = Path(path)
    gltf, binary = read_glb(path)
    try:
        mesh = gltf["meshes"][0]
        names = list(mesh.get("extras", {}).get("targetNames", []))
        K = len(names)
        out: dict[str, Any] = {"morph_names": names, "times_s": np.zeros(0), "weights": np.zeros((0, K)),
                               "rotations": np.zeros((0, 3, 3)), "translations": np.zeros((0, 3)), "frames": None}
        anims = gltf.get("animations", [])
        if not anims:
            return out
        anim = anims[0]
        by_path = {ch["target"]["path"]: anim["samplers"][ch["sampler"]] for ch in anim["channels"]}
        t = _read_accessor(gltf, binary, by_path["rotation"]["input"]).astype(np.float64)
        N = len(t)
        out["times_s"] = t
        if "weights" in by_path:
            out["weights"] = _read_accessor(gltf, binary, by_path["weights"]["output"]).astype(np.float64).reshape(N, K)
        q = _read_accessor(gltf, binary, by_path["rotation"]["output"])
        out["rotations"] = np.einsum("ij,njk,kl->nil", D_GLTF, quaternions_to_matrices(q), D_GLTF)
        out["translations"] = _read_accessor(gltf, binary, by_path["translation"]["output"]).astype(np.float64) @ D_GLTF
        frames = anim.get("extras", {}).get("frames")
        out["frames"] = None if frames is None else np.asarray(frames, dtype=np.int64)
        return out
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise WriterError(f"{path}: not a track GLB written by MLANet ({type(exc).__name__}: {exc})") from None


class GlbTrackWriter:
    """Collect one track's frames and write them as one GLB on :meth:`close` (atomically).

    The mesh arguments are those of :func:`write_track_glb`; frames arrive one by one through
    :meth:`add`. Used as a context manager, an exception inside the block (Ctrl-C included)
    still writes the frames collected so far. Nothing reaches ``path`` before :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        neutral_vertices: np.ndarray,
        triangles: np.ndarray,
        uv: np.ndarray,
        triangles_uv: np.ndarray,
        expression_basis: np.ndarray,
        morph_names: Sequence[str | None],
        texture_png: np.ndarray | bytes | None = None,
        name: str = "face",
        extras: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self._mesh: dict[str, Any] = dict(neutral_vertices=neutral_vertices, triangles=triangles, uv=uv, triangles_uv=triangles_uv,
                          expression_basis=expression_basis, morph_names=list(morph_names), texture_png=texture_png,
                          name=name, extras=extras)
        self.K = len(self._mesh["morph_names"])
        if np.shape(expression_basis)[0] != self.K:
            raise ValueError(f"{self.path}: {self.K} morph names for {np.shape(expression_basis)[0]} expression shapes")
        self._frames: list[int] = []
        self._times: list[float] = []
        self._weights: list[np.ndarray] = []
        self._rotations: list[np.ndarray] = []
        self._translations: list[np.ndarray] = []
        self._closed = False
        self._result: Path | None = None

    @property
    def n_frames(self) -> int:
        return len(self._times)

    def add(self, frame: int, time_s: float, weights: np.ndarray, rotation: np.ndarray, translation: np.ndarray) -> None:
        """Add one keyframe: frame number, time (s, increasing), weights (K,), rotation (3, 3), translation (3,) m."""
        if self._closed:
            raise WriterError(f"{self.path}: the GLB writer is closed")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != (self.K,):
            raise ValueError(f"{self.path}: weights must be ({self.K},), got {np.shape(weights)}")
        if self._times and not float(time_s) > self._times[-1]:
            raise ValueError(f"{self.path}: frame {frame} time {time_s} s is not after the previous {self._times[-1]} s")
        self._frames.append(int(frame))
        self._times.append(float(time_s))
        self._weights.append(w)
        self._rotations.append(np.asarray(rotation, dtype=np.float64).reshape(3, 3))
        self._translations.append(np.asarray(translation, dtype=np.float64).reshape(3))

    def resume_from(self, existing: str | os.PathLike[str], before_frame: int) -> int:
        """Load the keyframes of an earlier GLB of this track with frame number < ``before_frame``.

        Call before :meth:`add`. ``existing`` may be this writer's own path. The earlier file's
        morph names must equal this writer's (``None`` names excluded). Returns the number of
        keyframes loaded. On failure while loading, the writer is aborted (nothing is written).
        """
        if self._times:
            raise WriterError(f"{self.path}: resume_from must be called before the first add()")
        old = read_track_animation(existing)
        cols = [i for i, n in enumerate(self._mesh["morph_names"]) if n is not None]
        names = [self._mesh["morph_names"][i] for i in cols]
        if old["morph_names"] != names:
            raise WriterError(f"{existing}: its morph targets {old['morph_names'][:5]}... differ from this track's "
                              f"{names[:5]}...; cannot resume")
        if old["frames"] is None:
            raise WriterError(f"{existing}: has no frame numbers (animations[0].extras.frames); cannot resume")
        keep = np.nonzero(old["frames"] < int(before_frame))[0]
        try:
            for i in keep:
                w = np.zeros(self.K)
                w[cols] = old["weights"][i]
                self.add(int(old["frames"][i]), float(old["times_s"][i]), w, old["rotations"][i], old["translations"][i])
        except BaseException:
            self.abort()  # a partial copy must never replace the earlier file
            raise
        return len(keep)

    def close(self) -> Path | None:
        """Write the GLB (mesh + animation of the frames added); idempotent.

        Returns the path, or ``None`` when no frame was added (then nothing is written and an
        existing file at the path is left untouched).
        """
        if self._closed:
            return self._result
        self._closed = True
        n = self.n_frames
        if n == 0:
            log.warning("%s: no frames were added; no GLB written", self.path)
            return None
        self._result = write_track_glb(
            self.path,
            times_s=np.asarray(self._times),
            weights=np.asarray(self._weights).reshape(n, self.K),
            rotations=np.asarray(self._rotations).reshape(n, 3, 3),
            translations=np.asarray(self._translations).reshape(n, 3),
            frames=np.asarray(self._frames, dtype=np.int64),
            **self._mesh,
        )
        return self._result

    def abort(self) -> None:
        """Drop the collected frames; nothing is written."""
        self._closed = True

    def __enter__(self) -> "GlbTrackWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
            return
        try:
            if self.close() is not None:
                log.warning("%s: stopped by %s; wrote the %d frames collected", self.path, exc_type.__name__, self.n_frames)
        except BaseException:  # noqa: BLE001 - never hide the original exception
            log.exception("%s: could not write the GLB after %s", self.path, exc_type.__name__)
