"""A lighter mesh for drawing the overlay: the face model's mesh decimated once, on its own vertices.

On a CPU renderer (Mesa llvmpipe) the overlay's cost is the triangle setup of the face mesh: the
18,460-triangle ICT face took 6.5 ms of a 720p overlay, and a quarter of its triangles 3.6 ms
(measured with ``FaceRenderer.render`` on a fitted Obama frame; a face ~250 px tall covers ~3 px
per triangle there, far below what the eye resolves). :func:`decimate_mesh` removes vertices by
quadric-error half-edge collapses (Garland & Heckbert 1997, restricted to collapsing a vertex onto
a neighbour, so **every kept vertex is a vertex of the face model**): the display mesh is a subset
of the model's vertices with new triangles, and a frame's display vertices are a row subset of its
decoded mesh (or decoded directly from the same rows of the bases, see
:meth:`mlanet.edge.reconstruct.FaceDecoder.mesh_rows`).

What it keeps:

* the shape of the face in every expression: the error quadric of a vertex sums the planes of its
  triangles in the mean face and in the mean face plus each expression shape at weight 1 (a
  collapse that is harmless in the neutral face but flattens a smile or an open mouth costs what
  it does there);
* every hole and the outer border: a border vertex only collapses along its border onto the next
  border vertex, with planes through the border edges keeping its line; the mouth, eye openings
  and the crop edge stay where they are;
* the 68 landmark vertices (never removed) and manifold, unflipped triangles (a collapse that
  turns a triangle by more than 60 degrees, or breaks the link condition, is refused).

It is deterministic (same model, same target -> same mesh) and takes ~2 s for the ICT face, so
:func:`display_mesh` caches it in the asset home (``display-mesh/``), keyed by the face model's
decoder signature, the target and :data:`ALGORITHM_VERSION`.

The display mesh has no UV seams (one UV per kept vertex); texture unwrapping and written meshes
use the full mesh.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.edge.mesh_topology import MeshTopology

log = logging.getLogger(__name__)

#: Triangles of the default display mesh: a quarter of the ICT face (see the module docstring and
#: ``benchmarks/results/cpu/display_mesh.json`` for speed against surface error).
DISPLAY_TRIANGLES: int = 4000
#: Bumped when the decimation changes, so cached meshes are rebuilt.
ALGORITHM_VERSION: int = 1  # v1: QEM over the mean face + each expression, border planes, albedo term
#: Sub-folder of the asset home holding decimated meshes.
CACHE_DIRNAME = "display-mesh"
#: A collapse may turn a surviving triangle's normal by at most this angle (cosine).
MIN_NORMAL_COSINE: float = 0.5
#: ... and must face within this angle (cosine) of the original mesh's normal at each of its corners.
MIN_SURFACE_COSINE: float = 0.3
#: Weight of the border-line planes relative to the surface planes (keeps holes and the crop edge).
BORDER_WEIGHT: float = 100.0
#: Weight of the albedo lost by a collapse (per m^2 of surface and unit squared albedo difference):
#: keeps brows, lips and nostrils, whose colour lives in the per-vertex albedo. Chosen by eye and by
#: the pixel difference to the full mesh on a fitted frame (mean |diff| 0.313 -> 0.265 at 4,000 triangles).
COLOUR_WEIGHT: float = 0.1


@dataclass(frozen=True)
class DecimatedMesh:
    """A mesh on a subset of another mesh's vertices.

    Attributes:
        kept: (K,) int32, increasing: the original vertex of each display vertex.
        triangles: (F', 3) int32 indices into ``kept`` (counter-clockwise front faces, as the original).
    """

    kept: np.ndarray
    triangles: np.ndarray


def _plane_quadrics(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-triangle plane quadrics (F, 4, 4) weighted by area, and unit normals (F, 3)."""
    p0, p1, p2 = (points[triangles[:, k]] for k in range(3))
    n = np.cross(p1 - p0, p2 - p0)
    double_area = np.linalg.norm(n, axis=1)
    unit = n / np.maximum(double_area, 1e-30)[:, None]
    plane = np.concatenate([unit, -np.einsum("ij,ij->i", unit, p0)[:, None]], axis=1)  # (F, 4)
    return 0.5 * double_area[:, None, None] * plane[:, :, None] * plane[:, None, :], unit


def _accumulate(quadrics: np.ndarray, triangles: np.ndarray, n_vertices: int) -> np.ndarray:
    """Sum each triangle's quadric onto its three corners: (V, 4, 4)."""
    out = np.zeros((n_vertices, 4, 4))
    for k in range(3):
        np.add.at(out, triangles[:, k], quadrics)
    return out


def _border_edges(triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed border edges (E, 2) (each in its triangle's winding) and the triangle of each."""
    directed = triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    owner = np.repeat(np.arange(len(triangles)), 3)
    key = np.sort(directed, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    border = counts[inverse.reshape(-1)] == 1
    return directed[border], owner[border]


def decimate_mesh(poses: np.ndarray, triangles: np.ndarray, target_triangles: int, *,
                  locked: np.ndarray | None = None, colours: np.ndarray | None = None,
                  colour_weight: float = 0.0) -> DecimatedMesh:
    """Half-edge-collapse decimation of a triangle mesh to at most ``target_triangles``.

    Args:
        poses: (P, V, 3) float vertex positions of the same mesh in P shapes (metres); the first
            decides which triangles flip, all of them add to the error quadrics. (V, 3) is one pose.
        triangles: (F, 3) int vertex indices, consistently wound.
        target_triangles: stop when this many triangles are left (or no collapse is allowed).
        locked: optional vertex indices that are never removed.
        colours: optional (V, C) per-vertex attributes (albedo); a collapse ``u -> v`` loses
            ``u``'s colour, which costs ``colour_weight * area(u) * |c_u - c_v|^2`` on top of the
            geometric error (area in m^2, summed over the triangles a vertex has absorbed).

    Returns:
        :class:`DecimatedMesh`. Vertices the original triangles do not use are dropped too.
    """
    poses = np.asarray(poses, np.float64)
    if poses.ndim == 2:
        poses = poses[None]
    tri = np.asarray(triangles, np.int64)
    if poses.ndim != 3 or poses.shape[2] != 3 or tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"poses must be (P, V, 3) and triangles (F, 3), got {poses.shape} and {tri.shape}")
    V, F = poses.shape[1], len(tri)
    if not 1 <= target_triangles:
        raise ValueError(f"target_triangles must be >= 1, got {target_triangles}")
    points = poses[0]

    Q = np.zeros((V, 4, 4))
    for pose in poses:
        q, _ = _plane_quadrics(pose, tri)
        Q += _accumulate(q, tri, V)
    border, border_owner = _border_edges(tri)
    is_border = np.zeros(V, bool)
    is_border[border.reshape(-1)] = True
    if len(border):  # planes through each border edge, perpendicular to its triangle
        _, unit = _plane_quadrics(points, tri[border_owner])
        edge = points[border[:, 1]] - points[border[:, 0]]
        normal = np.cross(edge, unit)
        length = np.linalg.norm(normal, axis=1)
        normal /= np.maximum(length, 1e-30)[:, None]
        plane = np.concatenate([normal, -np.einsum("ij,ij->i", normal, points[border[:, 0]])[:, None]], axis=1)
        bq = BORDER_WEIGHT * np.linalg.norm(edge, axis=1)[:, None, None] ** 2 * plane[:, :, None] * plane[:, None, :]
        for k in range(2):
            np.add.at(Q, border[:, k], bq)

    face_normal = np.cross(points[tri[:, 1]] - points[tri[:, 0]], points[tri[:, 2]] - points[tri[:, 0]])  # |n| = 2 area
    area = np.zeros(V)  # a third of each triangle's area on each corner (m^2)
    third = np.linalg.norm(face_normal, axis=1) / 6.0
    for k in range(3):
        np.add.at(area, tri[:, k], third)
    colour = np.zeros((V, 1)) if colours is None else np.asarray(colours, np.float64).reshape(V, -1)
    colour_weight = float(colour_weight) if colours is not None else 0.0

    is_locked = np.zeros(V, bool)
    if locked is not None:
        is_locked[np.asarray(locked, np.int64)] = True

    surface_normal = np.zeros((V, 3))  # the original mesh's vertex normals (area-weighted)
    for k in range(3):
        np.add.at(surface_normal, tri[:, k], face_normal)
    surface_normal /= np.maximum(np.linalg.norm(surface_normal, axis=1), 1e-30)[:, None]

    faces = tri.copy()
    alive = np.ones(F, bool)
    vertex_faces: list[set[int]] = [set() for _ in range(V)]
    for f, (a, b, c) in enumerate(faces.tolist()):
        vertex_faces[a].add(f)
        vertex_faces[b].add(f)
        vertex_faces[c].add(f)
    border_pairs = {(min(a, b), max(a, b)) for a, b in border.tolist()}
    version = np.zeros(V, np.int64)
    homogeneous = np.concatenate([points, np.ones((V, 1))], axis=1)

    def neighbours(u: int) -> set[int]:
        out: set[int] = set()
        for f in vertex_faces[u]:
            out.update(faces[f].tolist())
        out.discard(u)
        return out

    def cost(u: int, v: int) -> float:
        h = homogeneous[v]
        c = float(h @ (Q[u] + Q[v]) @ h)
        if colour_weight:
            d = colour[u] - colour[v]
            c += colour_weight * area[u] * float(d @ d)
        return c

    heap: list[tuple[float, int, int, int, int]] = []

    def push(u: int, v: int) -> None:
        heapq.heappush(heap, (cost(u, v), u, v, int(version[u]), int(version[v])))

    edges = np.unique(np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1), axis=0)
    h = homogeneous
    for a_col, b_col in ((0, 1), (1, 0)):  # both directions of every edge, costs vectorised
        us, vs = edges[:, a_col], edges[:, b_col]
        c = np.einsum("ei,eij,ej->e", h[vs], Q[us] + Q[vs], h[vs])
        if colour_weight:
            c = c + colour_weight * area[us] * ((colour[us] - colour[vs]) ** 2).sum(1)
        heap.extend(zip(c.tolist(), us.tolist(), vs.tolist(), [0] * len(us), [0] * len(us)))
    heapq.heapify(heap)

    def allowed(u: int, v: int) -> bool:
        if is_locked[u]:
            return False
        if is_border[u] and not (is_border[v] and (min(u, v), max(u, v)) in border_pairs):
            return False  # a border vertex only slides along its own border edge
        shared = vertex_faces[u] & vertex_faces[v]
        if not shared:
            return False
        opposite = set()
        for f in shared:
            opposite.update(faces[f].tolist())
        opposite -= {u, v}
        if neighbours(u) & neighbours(v) != opposite:  # link condition: the surface stays a manifold
            return False
        if not is_border[u] and is_border[v] and len(shared) != 2:
            return False
        p_new = points[v]
        for f in vertex_faces[u] - shared:
            a, b, c = faces[f]
            corners = [points[a], points[b], points[c]]
            before = np.cross(corners[1] - corners[0], corners[2] - corners[0])
            corners[[a, b, c].index(u)] = p_new
            after = np.cross(corners[1] - corners[0], corners[2] - corners[0])
            nb, na = float(np.linalg.norm(before)), float(np.linalg.norm(after))
            if na <= 1e-12 * max(nb, 1e-30) or float(before @ after) < MIN_NORMAL_COSINE * nb * na:
                return False
            corners_after = [v if w == u else w for w in (a, b, c)]
            if float((surface_normal[corners_after] @ after).min()) < MIN_SURFACE_COSINE * na:
                return False  # the triangle would turn away from the original surface around it
        return True

    n_alive = F
    while n_alive > target_triangles and heap:
        _, u, v, ver_u, ver_v = heapq.heappop(heap)
        if version[u] != ver_u or version[v] != ver_v or version[u] < 0 or version[v] < 0:
            continue  # stale: one end changed (or is gone) since this entry was pushed
        if not allowed(u, v):
            continue
        shared = vertex_faces[u] & vertex_faces[v]
        for f in shared:
            alive[f] = False
            for w in faces[f].tolist():
                vertex_faces[w].discard(f)
        n_alive -= len(shared)
        for f in vertex_faces[u]:
            faces[f][faces[f] == u] = v
            vertex_faces[v].add(f)
        vertex_faces[u] = set()
        Q[v] += Q[u]
        area[v] += area[u]
        if is_border[u]:  # u's other border edge now ends at v
            for edge in [e for e in border_pairs if u in e]:
                border_pairs.discard(edge)
                w = edge[0] if edge[1] == u else edge[1]
                if w != v:
                    border_pairs.add((min(v, w), max(v, w)))
        version[u] = -1
        version[v] += 1  # every entry with v is stale (its quadric changed): push them again
        around = neighbours(v)
        for w in around:
            push(v, w)
            push(w, v)
        for w in around:  # their other edges keep their cost, but a refused collapse may now be allowed
            for x in neighbours(w) - {v}:
                push(w, x)

    kept_faces = faces[alive]
    kept = np.unique(kept_faces)
    remap = np.full(V, -1, np.int64)
    remap[kept] = np.arange(len(kept))
    return DecimatedMesh(kept.astype(np.int32), remap[kept_faces].astype(np.int32))


@dataclass(frozen=True, eq=False)
class DisplayMesh:
    """The display mesh of a face model.

    Attributes:
        kept: (K,) int32 face-model vertex of each display vertex (a row subset of the decoded mesh).
        topology: :class:`MeshTopology` over the K display vertices (one UV per vertex, no seams).
        source_triangles: triangles of the face model's own mesh.
    """

    kept: np.ndarray
    topology: MeshTopology
    source_triangles: int


def _cache_key(face_model: Any, target_triangles: int) -> str:
    signature = face_model.describe()["decoder"]
    blob = json.dumps({"decoder": signature, "target": int(target_triangles), "algorithm": ALGORITHM_VERSION},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    from mlanet.paths import asset_home

    return asset_home() / CACHE_DIRNAME


def _read_cached(path: Path, n_vertices: int) -> DecimatedMesh | None:
    try:
        with np.load(path) as z:
            kept, triangles = z["kept"].astype(np.int32), z["triangles"].astype(np.int32)
    except (OSError, KeyError, ValueError) as exc:
        log.warning("display mesh cache %s unreadable (%s); rebuilding it", path, exc)
        return None
    valid = (kept.ndim == 1 and len(kept) and triangles.ndim == 2 and triangles.shape[1] == 3 and len(triangles)
             and kept.min() >= 0 and kept.max() < n_vertices and np.all(np.diff(kept) > 0)
             and triangles.min() >= 0 and triangles.max() < len(kept))
    if not valid:
        log.warning("display mesh cache %s does not fit this face model; rebuilding it", path)
        return None
    return DecimatedMesh(kept, triangles)


def _write_cached(path: Path, mesh: DecimatedMesh) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, kept=mesh.kept, triangles=mesh.triangles)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only asset home: the mesh is still used, only rebuilt next time
        log.info("display mesh not cached (%s: %s)", path.parent, exc)


def face_model_poses(face_model: Any) -> np.ndarray:
    """(1 + E, V, 3) float64: the mean face, then the mean face plus each expression shape at weight 1."""
    mean = face_model.mean_shape.detach().cpu().double().numpy()
    n_id = face_model.layout.identity
    expression = face_model.shape_basis[n_id:].detach().cpu().double().numpy().reshape(-1, *mean.shape)
    return np.concatenate([mean[None], mean[None] + expression], axis=0)


def face_model_colours(face_model: Any) -> np.ndarray:
    """(V, 3 + 3 K_alb) float64: the mean albedo, then each albedo mode's per-vertex RGB."""
    mean = face_model.albedo_mean.detach().cpu().double().numpy()
    modes = face_model.albedo_basis.detach().cpu().double().numpy().reshape(-1, *mean.shape)
    return np.concatenate([mean, modes.transpose(1, 0, 2).reshape(len(mean), -1)], axis=1)


def display_mesh(face_model: Any, target_triangles: int = DISPLAY_TRIANGLES, *,
                 cache_dir: Path | None | bool = None) -> DisplayMesh:
    """The face model's display mesh (decimated to ``target_triangles``; cached).

    Args:
        face_model: a :class:`~mlanet.morphable.model.MorphableModel`.
        target_triangles: at most this many triangles; at or above the model's own count the
            model's mesh is returned unchanged (all vertices kept).
        cache_dir: where decimated meshes are kept (default ``<asset home>/display-mesh``);
            False: do not cache.
    """
    full = MeshTopology.from_face_model(face_model)
    V = full.n_vertices
    if target_triangles >= full.n_triangles:
        return DisplayMesh(np.arange(V, dtype=np.int32), full, full.n_triangles)
    mesh = None
    path = None
    if cache_dir is not False:
        folder = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        path = folder / f"{face_model.model_id}-{_cache_key(face_model, target_triangles)}.npz"
        if path.is_file():
            mesh = _read_cached(path, V)
    if mesh is None:
        landmarks = getattr(face_model, "landmark_index", None)
        locked = None if landmarks is None else np.asarray(landmarks.detach().cpu().numpy() if hasattr(landmarks, "detach") else landmarks)
        mesh = decimate_mesh(face_model_poses(face_model), full.triangles, target_triangles, locked=locked,
                             colours=face_model_colours(face_model), colour_weight=COLOUR_WEIGHT)
        log.info("display mesh of %s: %d -> %d triangles, %d of %d vertices", face_model.model_id,
                 full.n_triangles, len(mesh.triangles), len(mesh.kept), V)
        if path is not None:
            _write_cached(path, mesh)
    # one UV per display vertex: that of its first triangle corner in the full mesh
    first_uv = np.full(V, -1, np.int64)
    corners, corner_uv = full.triangles.reshape(-1)[::-1], full.triangles_uv.reshape(-1)[::-1]
    first_uv[corners] = corner_uv  # the last write wins: reversed, so the first corner's UV
    uv = full.uv[first_uv[mesh.kept]]
    remap = np.full(V, -1, np.int64)
    remap[mesh.kept] = np.arange(len(mesh.kept))
    lmk = full.landmark_index
    display_landmarks = None if lmk is None else remap[lmk]
    if display_landmarks is not None and (display_landmarks < 0).any():
        display_landmarks = None  # a cached mesh built without locked landmarks: draw them from landmarks2d only
    topology = MeshTopology(mesh.triangles, uv, mesh.triangles, display_landmarks, len(mesh.kept))
    return DisplayMesh(mesh.kept, topology, full.n_triangles)
