"""Correspondence from MediaPipe's canonical face mesh to a linear face model's surface.

MediaPipe's face mesh tracks 468 vertices of its *canonical face model*. To use those
landmarks with a face model (ICT-FaceKit by default), each of them needs a fixed place on the
model's surface: a triangle of the model and barycentric coordinates in it. Barycentric
coordinates found on one shape of a linear model transfer to every identity and expression of
the same topology, so the correspondence is computed once, when the model file is built, and
stored with it (:meth:`MediaPipeCorrespondence.to_extra`).

Algorithm (:func:`register_mediapipe`), all in the model frame (metres, see
:mod:`mlanet.conventions`):

1. **Rigid start.** A similarity ``q = s R p + t`` from the anchor pairs alone
   (:data:`MEDIAPIPE_ANCHORS`: MediaPipe vertices with a known iBUG-68 counterpart, verified on
   ICT-FaceKit), solved in closed form (Umeyama's objective, Horn's quaternion rotation:
   :func:`.exact_linalg.similarity_transform`). The closest-point distances of the
   transformed MediaPipe vertices to the *mean* surface are the "rigid-only" residual.
2. **Non-rigid registration (ICP with a morphable model).** Repeat: find the exact closest
   point on the current model surface for every transformed MediaPipe vertex
   (:func:`closest_points_on_mesh`); reject points whose closest point lies on the mesh
   boundary or farther than ``max(outlier_factor * median, outlier_floor_mm)``; re-solve the
   similarity (weighted, to those closest points plus the anchors' landmark vertices);
   then, with the similarity fixed, solve a regularised linear least-squares problem for the
   identity coefficients ``c`` (and optionally expression weights ``e``, bounded to [0, 1];
   through its normal equations, with :func:`.exact_linalg.box_qp` for the bounds)::

       sum_i (n_i . (q_i - S_i(c, e)))^2 / mm^2                    point-to-plane, inliers
     + point_weight  * sum_i |q_i - S_i(c, e)|^2 / mm^2            point-to-point, inliers
     + anchor_weight * sum_a |q_a - S_l(a)(c, e)|^2 / mm^2          anchors: landmark vertices
     + regularisation * |c|^2 + expression_regularisation * |e|^2

   where ``S_i`` is the model surface at point i's current (triangle, barycentric) and ``n_i``
   that triangle's unit normal. The surface thus deforms towards the MediaPipe shape only
   within the span of plausible faces. Stop when the mean distance changes by less than
   ``tolerance_mm`` or after ``n_iterations``.
3. **Correspondence.** Each transformed MediaPipe vertex's closest point on the fitted surface,
   as (triangle index, barycentric coordinates); its distance is the documented residual
   (``residual_mm``), and points whose closest point lies on a boundary edge (outside the
   cropped model, or on the lid / lip margins) are flagged in ``on_boundary``.

Residuals are measured in the model frame after the similarity, i.e. in the face model's
millimetres. :attr:`MediaPipeCorrespondence.stats` records the rigid-only and final residual
distributions, each anchor's residual, the iteration count and the number of boundary points.

**Determinism.** The stored correspondence must come out bit-identical wherever the model
file is built, but the ICP turns last-bit rounding differences into different triangles (with
BLAS-backed solves, 1 vs 2 OpenBLAS threads moved 25 of the 468 points). So the registration
uses no BLAS / LAPACK at all: every product, the normal equations, their Cholesky solve, the
box-constrained expression fit and the similarity (Horn's quaternion, Jacobi eigen-solver) come
from :mod:`.exact_linalg`, built on elementwise IEEE operations and numpy's fixed-order
pairwise sums; the closest-point search is exact and breaks ties by index. The output no
longer depends on the thread count, the OpenBLAS kernel (``OPENBLAS_CORETYPE``) or numpy's
SIMD level (``NPY_DISABLE_CPU_FEATURES``); ``tests/test_mediapipe_map.py`` checks this.

Measured on ICT-FaceKit's face region (vertices 0..9408, 18,460 triangles), default settings
(``tests/test_mediapipe_map.py`` recomputes the 30-mode column; the asset builder uses the last):

==========  ===========  =============  ==============  ===============================
residual    rigid only   final, 30 id   final, 100 id   final, 100 id + 55 expressions
==========  ===========  =============  ==============  ===============================
mean        1.23 mm      0.49 mm        0.41 mm         0.36 mm
median      0.84 mm      0.43 mm        0.35 mm         0.29 mm
p95         3.83 mm      1.15 mm        0.96 mm         0.88 mm
max         7.02 mm      2.49 mm        1.97 mm         1.74 mm
==========  ===========  =============  ==============  ===============================

The ICP's end point is sensitive to rounding: perturbing the MediaPipe vertices by 1e-15
(relative) spreads the last column's p95 over 0.86-0.88 mm and its max over 1.70-1.75 mm (the
30-mode max over 2.32-2.49 mm), the same spread as the earlier BLAS-based solver had; the
table is the one deterministic outcome. Anchors end within 2.7 mm of their ICT landmark
vertices, no point maps onto the mesh boundary, mirror-symmetric MediaPipe vertices land
within 0.3 mm of mirror-symmetric spots of the mean face, and registration takes about 0.4 s
(30 or 100 modes) and 0.7 s (with expressions) on the 2-core development machine. The strong
default expression regularisation keeps expression weights small (largest: jawOpen 0.07,
MediaPipe's canonical mouth being slightly open); with weak regularisation the fit uses
unrelated expressions (mouthPress, eyeLookDown about 0.4) for little gain.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.spatial import cKDTree

from mlanet.conventions import METRES_PER_CM, y_up_to_model_frame
from mlanet.errors import AssetError
from mlanet.morphable.exact_linalg import (
    box_qp,
    matmul,
    matvec,
    normal_equations,
    row_norms,
    rowwise_dot,
    similarity_transform,
    solve_spd,
    symmetric_eigen,
)
from mlanet.morphable.obj import read_obj

logger = logging.getLogger(__name__)

#: Number of vertices of MediaPipe's canonical face mesh (without the 10 iris vertices).
MEDIAPIPE_N_VERTICES: int = 468

#: MediaPipe canonical vertex index -> iBUG-68 landmark index (0-based) of the same anatomical
#: point, used to start and steer :func:`register_mediapipe`.
#:
#: Verified on ICT-FaceKit (face region, 30 identity modes): with each pair left out of the
#: anchor set in turn, the registration maps that MediaPipe vertex within 3 mm of the ICT
#: landmark vertex (leave-one-out distances in the comments), and it is the MediaPipe vertex
#: nearest to that landmark (except 17, 2.0 mm, where 16 is at 1.1 mm; 17 is kept because it is
#: MediaPipe's own lower-lip outer-contour point at the midline). Rejected candidates, measured
#: the same way: 1 -> 30 (6.7 mm: vertex 1 lies below the tip, towards the columella; 4 is the
#: pronasale), 152 -> 8 (7.6 mm: 152 is under the chin, ICT's 8 sits on the chin's front where
#: MediaPipe has 175), outer brow ends 70 -> 17 and 300 -> 26 (4.9 mm), brow middles 105 -> 19,
#: 334 -> 24 (3.8 mm), inner-lip midline 13 -> 62, 14 -> 66 (MediaPipe's mouth is slightly
#: open). Jaw contour points are not anatomically fixed and are not used, except the chin.
MEDIAPIPE_ANCHORS: Mapping[int, int] = MappingProxyType(
    {
        4: 30,  # nose tip, pronasale (0.2 mm)
        2: 33,  # subnasale, nose base at the midline (0.2 mm)
        97: 32,  # nostril, subject's right (0.7 mm)
        326: 34,  # nostril, subject's left (0.7 mm)
        98: 31,  # nose wing base, subject's right (2.9 mm)
        327: 35,  # nose wing base, subject's left (2.9 mm)
        33: 36,  # subject's right eye, outer corner (1.4 mm)
        133: 39,  # subject's right eye, inner corner (1.4 mm)
        362: 42,  # subject's left eye, inner corner (1.4 mm)
        263: 45,  # subject's left eye, outer corner (1.3 mm)
        107: 21,  # subject's right brow, inner end (2.3 mm)
        336: 22,  # subject's left brow, inner end (2.4 mm)
        61: 48,  # mouth corner, subject's right (1.1 mm)
        291: 54,  # mouth corner, subject's left (1.1 mm)
        0: 51,  # upper lip, top of the vermilion at the midline (0.0 mm)
        37: 50,  # upper lip, peak of the Cupid's bow, subject's right (0.3 mm)
        267: 52,  # upper lip, peak of the Cupid's bow, subject's left (0.3 mm)
        17: 57,  # lower lip, bottom of the vermilion at the midline (2.0 mm)
        175: 8,  # chin (1.6 mm)
    }
)

_MM = 1000.0  # millimetres per metre
_BARY_EPS = 1e-6


# --------------------------------------------------------------------------------- reading
def read_mediapipe_canonical(path: str | os.PathLike[str]) -> np.ndarray:
    """Read MediaPipe's ``canonical_face_model.obj`` into the model frame.

    The file is in centimetres, y up, z towards the viewer (like ICT-FaceKit). Returns the
    (468, 3) float64 vertex positions in the model frame, in metres. Raises
    :class:`AssetError` naming ``path`` when the file is missing, not an OBJ, has another
    vertex count (e.g. the 478-vertex iris variant) or implausible units.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AssetError(f"{path}: cannot read MediaPipe canonical face mesh ({exc.strerror or exc})") from None
    mesh = read_obj(data, str(path))
    n = len(mesh.vertices)
    if n != MEDIAPIPE_N_VERTICES:
        hint = " (the iris variant? use canonical_face_model.obj)" if n == MEDIAPIPE_N_VERTICES + 10 else ""
        raise AssetError(
            f"{path}: {n} vertices, but MediaPipe's canonical face mesh has {MEDIAPIPE_N_VERTICES}{hint}"
        )
    if not np.all(np.isfinite(mesh.vertices)):
        raise AssetError(f"{path}: vertex positions contain NaN or infinite values")
    width = float(np.ptp(mesh.vertices[:, 0]))
    if not 5.0 <= width <= 50.0:
        raise AssetError(f"{path}: face width {width:.3g} file units; expected centimetres (about 15)")
    return y_up_to_model_frame(mesh.vertices, METRES_PER_CM)


# ------------------------------------------------------------------------ closest points
def closest_points_on_triangles(points: np.ndarray, tri_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact closest point of each point on its own triangle (Ericson's region test).

    points (N, 3); tri_vertices (N, 3, 3) corners a, b, c of N triangles (any length unit).
    Returns ``(closest (N, 3), barycentric (N, 3))`` with barycentric weights of a, b, c that
    are >= 0 and sum to 1. Degenerate triangles give a closest point on one of their edges.
    """
    p = np.asarray(points, dtype=np.float64)
    tv = np.asarray(tri_vertices, dtype=np.float64)
    a, b, c = tv[:, 0], tv[:, 1], tv[:, 2]
    ab, ac = b - a, c - a
    ap, bp, cp = p - a, p - b, p - c
    d1 = rowwise_dot(ab, ap)
    d2 = rowwise_dot(ac, ap)
    d3 = rowwise_dot(ab, bp)
    d4 = rowwise_dot(ac, bp)
    d5 = rowwise_dot(ab, cp)
    d6 = rowwise_dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2

    def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        ok = den != 0
        return np.where(ok, num / np.where(ok, den, 1.0), 0.0)

    n = len(p)
    bary = np.empty((n, 3))
    # Interior (the default), then override region by region in reverse priority, so that the
    # first matching test of Ericson's sequence wins.
    denom = va + vb + vc
    v = np.clip(safe_div(vb, denom), 0.0, 1.0)
    w = np.clip(safe_div(vc, denom), 0.0, 1.0)
    bary[:] = np.stack([1.0 - v - w, v, w], axis=1)
    # Edge BC.
    e_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
    wbc = np.clip(safe_div(d4 - d3, (d4 - d3) + (d5 - d6)), 0.0, 1.0)
    bary[e_bc] = np.stack([np.zeros(n), 1.0 - wbc, wbc], axis=1)[e_bc]
    # Edge AC.
    e_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    wac = np.clip(safe_div(d2, d2 - d6), 0.0, 1.0)
    bary[e_ac] = np.stack([1.0 - wac, np.zeros(n), wac], axis=1)[e_ac]
    # Vertex C.
    bary[(d6 >= 0) & (d5 <= d6)] = (0.0, 0.0, 1.0)
    # Edge AB.
    e_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    vab = np.clip(safe_div(d1, d1 - d3), 0.0, 1.0)
    bary[e_ab] = np.stack([1.0 - vab, vab, np.zeros(n)], axis=1)[e_ab]
    # Vertex B, then vertex A (highest priority).
    bary[(d3 >= 0) & (d4 <= d3)] = (0.0, 1.0, 0.0)
    bary[(d1 <= 0) & (d2 <= 0)] = (1.0, 0.0, 0.0)
    bary = np.clip(bary, 0.0, None)
    bary /= bary.sum(axis=1, keepdims=True)
    closest = _interpolate(bary, tv)
    return closest, bary


@dataclass
class MeshClosestPoints:
    """Closest points of N query points on a triangle mesh.

    triangle (N,) int64 triangle index; barycentric (N, 3) float64 (>= 0, rows sum to 1);
    point (N, 3) the closest surface points; distance (N,) Euclidean distances (same unit as
    the mesh).
    """

    triangle: np.ndarray
    barycentric: np.ndarray
    point: np.ndarray
    distance: np.ndarray


def closest_points_on_mesh(points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray) -> MeshClosestPoints:
    """Exact closest points on a triangle mesh's surface.

    points (N, 3), vertices (V, 3), triangles (F, 3) int. The search is exact, not an
    approximation: an upper bound ``d`` on each point's distance comes from its nearest
    triangles by centroid; every triangle that can hold a point within ``d`` has its centroid
    within ``d + r`` (``r``: the triangle's largest centroid-to-corner distance), so all such
    triangles are gathered with k-d trees over the centroids (one tree per octave of ``r``,
    to keep the candidate sets small) and tested with :func:`closest_points_on_triangles`.
    Exact ties (a closest point on a shared edge or vertex) go to the lowest triangle index.
    """
    p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    verts = np.asarray(vertices, dtype=np.float64)
    tris = np.asarray(triangles, dtype=np.int64)
    tv = verts[tris]  # (F, 3, 3)
    centroids = tv.mean(axis=1)
    radius = row_norms(tv - centroids[:, None, :]).max(axis=1)
    n, f = len(p), len(tris)
    if n == 0:
        return MeshClosestPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))

    # Upper bound on each point's distance: exact distances to the k nearest-centroid triangles.
    k = min(8, f)
    _, near = cKDTree(centroids).query(p, k=k)
    near = np.asarray(near).reshape(n, k)
    cp, _ = closest_points_on_triangles(np.repeat(p, k, axis=0), tv[near.ravel()])
    bound = row_norms(cp - np.repeat(p, k, axis=0)).reshape(n, k).min(axis=1)
    bound = bound * (1.0 + 1e-9) + 1e-12

    # All triangles whose centroid lies within bound + r, grouped by octaves of r.
    r_floor = max(float(radius.max()) * 1e-3, 1e-12)
    octave = np.floor(np.log2(np.maximum(radius, r_floor) / r_floor)).astype(np.int64)
    pair_pt: list[np.ndarray] = []
    pair_tri: list[np.ndarray] = []
    for level in np.unique(octave):
        members = np.flatnonzero(octave == level)
        hits = cKDTree(centroids[members]).query_ball_point(
            p, bound + float(radius[members].max()), return_sorted=False
        )
        counts = np.fromiter((len(h) for h in hits), dtype=np.int64, count=n)
        if counts.sum() == 0:
            continue
        pair_pt.append(np.repeat(np.arange(n), counts))
        pair_tri.append(members[np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])])
    pt = np.concatenate(pair_pt)
    ti = np.concatenate(pair_tri)
    closest, bary = closest_points_on_triangles(p[pt], tv[ti])
    dist2 = rowwise_dot(closest - p[pt], closest - p[pt])
    order = np.lexsort((ti, dist2, pt))
    first = order[np.r_[True, pt[order][1:] != pt[order][:-1]]]
    if len(first) != n:  # cannot happen: the bound's own triangle is always a candidate
        raise RuntimeError("closest-point search lost a query point")
    return MeshClosestPoints(
        triangle=ti[first], barycentric=bary[first], point=closest[first], distance=np.sqrt(dist2[first])
    )


def boundary_edges(triangles: np.ndarray) -> np.ndarray:
    """Edges used by exactly one triangle: (E, 2) int64 vertex pairs, sorted within each row."""
    tris = np.asarray(triangles, dtype=np.int64)
    edges = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    uniq, counts = np.unique(edges, axis=0, return_counts=True)
    return uniq[counts == 1]


class _BoundaryTest:
    """Tells whether surface points (triangle, barycentric) lie on the mesh boundary."""

    def __init__(self, triangles: np.ndarray, n_vertices: int) -> None:
        self.triangles = np.asarray(triangles, dtype=np.int64)
        self.n_vertices = n_vertices
        edges = boundary_edges(self.triangles)
        self.edge_keys = np.unique(edges[:, 0] * n_vertices + edges[:, 1])
        self.vertex = np.zeros(n_vertices, dtype=bool)
        self.vertex[edges.ravel()] = True

    def __call__(self, tri_index: np.ndarray, bary: np.ndarray) -> np.ndarray:
        """(N,) bool: on a boundary edge (the opposite barycentric is 0) or at a boundary vertex."""
        corners = self.triangles[tri_index]  # (N, 3)
        out = np.zeros(len(tri_index), dtype=bool)
        for k in range(3):
            i, j = corners[:, (k + 1) % 3], corners[:, (k + 2) % 3]
            key = np.minimum(i, j) * self.n_vertices + np.maximum(i, j)
            out |= (bary[:, k] <= _BARY_EPS) & np.isin(key, self.edge_keys)
            out |= (bary[:, k] >= 1.0 - _BARY_EPS) & self.vertex[corners[:, k]]
        return out


# ------------------------------------------------------------------------- result type
@dataclass
class MediaPipeCorrespondence:
    """Where each MediaPipe canonical vertex lies on the face model's surface (N = 468).

    triangle (N,) int32 triangle indices into the model's ``triangles``;
    barycentric (N, 3) float32 weights of the triangle's corners (>= 0, rows sum to 1);
    corners (N, 3) int32 the model vertex indices of those corners (``triangles[triangle]``);
    residual_mm (N,) float32 distance from the registered MediaPipe vertex to the fitted model
    surface, millimetres; on_boundary (N,) bool, the closest point lies on a boundary edge of
    the mesh; scale: the similarity scale from MediaPipe's (metre-converted) canonical frame to
    the model frame; stats: JSON-serialisable registration report (see
    :func:`register_mediapipe`).
    """

    triangle: np.ndarray
    barycentric: np.ndarray
    residual_mm: np.ndarray
    on_boundary: np.ndarray
    corners: np.ndarray
    scale: float
    stats: dict[str, Any] = field(default_factory=dict)

    def to_extra(self) -> dict[str, np.ndarray]:
        """Arrays for :attr:`FaceModelData.extra` (``mediapipe/...`` keys)."""
        return {
            "mediapipe/triangle": np.ascontiguousarray(self.triangle, dtype=np.int32),
            "mediapipe/barycentric": np.ascontiguousarray(self.barycentric, dtype=np.float32),
            "mediapipe/residual_mm": np.ascontiguousarray(self.residual_mm, dtype=np.float32),
            "mediapipe/on_boundary": np.ascontiguousarray(self.on_boundary, dtype=np.uint8),
        }

    @classmethod
    def from_extra(cls, extra: Mapping[str, np.ndarray], triangles: np.ndarray) -> "MediaPipeCorrespondence":
        """Rebuild from :meth:`to_extra` arrays and the model's (F, 3) triangles (``stats`` empty, scale NaN)."""
        try:
            tri = np.asarray(extra["mediapipe/triangle"], dtype=np.int32)
            bary = np.asarray(extra["mediapipe/barycentric"], dtype=np.float32)
            res = np.asarray(extra["mediapipe/residual_mm"], dtype=np.float32)
            bnd = np.asarray(extra["mediapipe/on_boundary"]).astype(bool)
        except KeyError as exc:
            raise KeyError(f"face-model extra arrays lack {exc.args[0]!r}; rebuild the model file") from None
        tris = np.asarray(triangles)
        if tri.size and (tri.min() < 0 or tri.max() >= len(tris)):
            raise ValueError(f"mediapipe/triangle indices must lie in [0, {len(tris)})")
        return cls(tri, bary, res, bnd, tris[tri].astype(np.int32), float("nan"), {})

    def points_on(self, vertices: np.ndarray) -> np.ndarray:
        """Interpolate the N MediaPipe points on a shape of the model.

        vertices (..., V, 3): any shape(s) of the model the correspondence was computed for
        (any identity / expression). Returns (..., N, 3) in the unit of ``vertices``.
        """
        v = np.asarray(vertices)
        if v.ndim < 2 or v.shape[-1] != 3:
            raise ValueError(f"vertices must be (..., V, 3), got shape {v.shape}")
        if self.corners.size and int(self.corners.max()) >= v.shape[-2]:
            raise ValueError(
                f"the correspondence refers to vertex {int(self.corners.max())} but vertices has {v.shape[-2]}"
            )
        gathered = v[..., self.corners, :]  # (..., N, 3, 3)
        weights = self.barycentric.astype(v.dtype if v.dtype.kind == "f" else np.float64)
        return np.einsum("nk,...nkj->...nj", weights, gathered)


# ----------------------------------------------------------------------------- helpers
def _interpolate(bary: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Barycentric interpolation: bary (N, 3) weights of corners (N, 3, ...) -> (N, ...).

    Written out term by term (elementwise IEEE operations, no einsum / BLAS), so that the
    result does not depend on the machine (see :mod:`.exact_linalg`).
    """
    shape = (len(bary),) + (1,) * (corners.ndim - 2)
    w0, w1, w2 = (bary[:, k].reshape(shape) for k in range(3))
    return w0 * corners[:, 0] + w1 * corners[:, 1] + w2 * corners[:, 2]


def _distance_stats(d_mm: np.ndarray) -> dict[str, float]:
    """Summary of distances in mm: ``mean_mm``, ``median_mm``, ``p95_mm``, ``max_mm``."""
    return {
        "mean_mm": float(np.mean(d_mm)),
        "median_mm": float(np.median(d_mm)),
        "p95_mm": float(np.percentile(d_mm, 95)),
        "max_mm": float(np.max(d_mm)),
    }


def _normalise_anchors(anchors: Mapping[int, int] | Sequence[tuple[int, int]] | None, n_points: int) -> np.ndarray:
    """(A, 2) int64 (point index, iBUG-68 index) pairs, checked against ``n_points``."""
    if anchors is None:
        anchors = MEDIAPIPE_ANCHORS
    items = list(anchors.items()) if isinstance(anchors, Mapping) else [tuple(a) for a in anchors]
    arr = np.asarray(items, dtype=np.int64).reshape(-1, 2)
    if len(arr) < 3:
        raise ValueError(f"need at least 3 anchor pairs (point index, landmark index), got {len(arr)}")
    if arr[:, 0].min() < 0 or arr[:, 0].max() >= n_points:
        raise ValueError(f"anchor point indices must lie in [0, {n_points}), got {arr[:, 0].tolist()}")
    if arr[:, 1].min() < 0 or arr[:, 1].max() >= 68:
        raise ValueError(f"anchor landmark indices must lie in [0, 68), got {arr[:, 1].tolist()}")
    return arr


def _check_inputs(
    mp_vertices: np.ndarray,
    mean_shape: np.ndarray,
    identity_basis: np.ndarray,
    triangles: np.ndarray,
    landmarks68: np.ndarray,
    expression_basis: np.ndarray | None,
) -> None:
    if mp_vertices.ndim != 2 or mp_vertices.shape[1] != 3 or len(mp_vertices) < 3:
        raise ValueError(f"mp_vertices must be (N, 3) with N >= 3, got {mp_vertices.shape}")
    v = mean_shape.shape[0]
    if mean_shape.shape != (v, 3):
        raise ValueError(f"mean_shape must be (V, 3), got {mean_shape.shape}")
    if identity_basis.ndim != 3 or identity_basis.shape[1:] != (v, 3):
        raise ValueError(f"identity_basis must be (K, {v}, 3), got {identity_basis.shape}")
    if expression_basis is not None and (expression_basis.ndim != 3 or expression_basis.shape[1:] != (v, 3)):
        raise ValueError(f"expression_basis must be (K_exp, {v}, 3), got {expression_basis.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
        raise ValueError(f"triangles must be (F, 3), got {triangles.shape}")
    if triangles.min() < 0 or triangles.max() >= v:
        raise ValueError(f"triangle indices must lie in [0, {v})")
    if landmarks68.shape != (68,) or landmarks68.min() < 0 or landmarks68.max() >= v:
        raise ValueError(f"landmarks68 must be (68,) vertex indices in [0, {v}), got shape {landmarks68.shape}")
    for name, arr in (("mp_vertices", mp_vertices), ("mean_shape", mean_shape), ("identity_basis", identity_basis)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or infinite values")


# ------------------------------------------------------------------------ registration
def register_mediapipe(
    mp_vertices: np.ndarray,
    mean_shape: np.ndarray,
    identity_basis: np.ndarray,
    triangles: np.ndarray,
    landmarks68: np.ndarray,
    *,
    expression_basis: np.ndarray | None = None,
    anchors: Mapping[int, int] | Sequence[tuple[int, int]] | None = None,
    n_iterations: int = 30,
    regularisation: float = 10.0,
    expression_regularisation: float = 1000.0,
    anchor_weight: float = 4.0,
    point_weight: float = 0.1,
    outlier_factor: float = 3.0,
    outlier_floor_mm: float = 5.0,
    tolerance_mm: float = 1e-3,
) -> MediaPipeCorrespondence:
    """Register MediaPipe's canonical mesh to a linear face model (see the module docstring).

    Args:
        mp_vertices: (N, 3) MediaPipe canonical vertices (N = 468; any N for tests), model
            frame, metres (:func:`read_mediapipe_canonical`).
        mean_shape: (V, 3) the model's mean shape, metres, model frame.
        identity_basis: (K, V, 3) identity modes, metres per unit coefficient (coefficients
            ~N(0, 1)).
        triangles: (F, 3) int triangles of the model surface the points map onto.
        landmarks68: (68,) int vertex indices of the iBUG-68 landmarks.
        expression_basis: optional (K_exp, V, 3) blendshapes, metres per unit weight; when
            given, weights in [0, 1] are fitted too (e.g. a slightly open mouth).
        anchors: (point index, iBUG-68 index) pairs, as a mapping or a sequence of pairs;
            default :data:`MEDIAPIPE_ANCHORS`.
        n_iterations: maximum number of closest-point / fit alternations.
        regularisation: weight of ``|c|^2`` (identity coefficients) against squared residuals
            in mm^2.
        expression_regularisation: weight of ``|e|^2`` (expression weights), same units; the
            strong default lets expressions in only where they clearly pay off.
        anchor_weight: weight of an anchor's squared 3D residual relative to a surface point's.
        point_weight: weight of the point-to-point term relative to the point-to-plane term.
        outlier_factor, outlier_floor_mm: points farther than
            ``max(outlier_factor * median distance, outlier_floor_mm)`` are left out of the fit.
        tolerance_mm: stop when the mean distance changes by less than this.

    Returns:
        :class:`MediaPipeCorrespondence`; ``stats`` (JSON-serialisable) holds ``rigid`` and
        ``final`` residual summaries (``mean_mm``, ``median_mm``, ``p95_mm``, ``max_mm``: after
        step 1 on the mean shape, and of the result), ``anchor_residual_mm`` (per anchor
        "mp->ibug": registered point to the fitted landmark vertex), ``anchor_mapped_mm``
        (mapped surface point to the landmark vertex, fitted shape), ``anchor_rigid_mm``,
        ``n_iterations``, ``n_on_boundary``, ``n_outliers`` (points left out of the last fit:
        outliers and boundary points), ``scale``,
        ``rotation_deg``, ``translation_m``, ``identity_coefficients``,
        ``expression_weights`` and ``seconds``.
    """
    t_start = time.perf_counter()
    p = np.asarray(mp_vertices, dtype=np.float64)
    mean = np.asarray(mean_shape, dtype=np.float64)
    basis = np.asarray(identity_basis, dtype=np.float64)
    tris = np.asarray(triangles, dtype=np.int64)
    lm = np.asarray(landmarks68, dtype=np.int64)
    expr = None if expression_basis is None else np.asarray(expression_basis, dtype=np.float64)
    _check_inputs(p, mean, basis, tris, lm, expr)
    anchor_pairs = _normalise_anchors(anchors, len(p))
    a_pt, a_lm = anchor_pairs[:, 0], lm[anchor_pairs[:, 1]]
    centred = p[a_pt] - p[a_pt].mean(axis=0)
    spread = np.sqrt(np.maximum(symmetric_eigen(normal_equations(centred)[0])[0], 0.0))  # ascending
    if spread[1] <= 1e-6 * max(spread[2], 1e-300):
        raise ValueError("the anchor points are collinear (or coincide); a similarity needs 3 non-collinear anchors")
    n_vertices = len(mean)
    on_boundary_test = _BoundaryTest(tris, n_vertices)

    # All shape modes, identity first, then expressions, as (V, 3, K_all): the coefficient
    # index last and contiguous, for the deterministic products of .exact_linalg.
    modes_vk = np.ascontiguousarray(
        (basis if expr is None else np.concatenate([basis, expr], axis=0)).transpose(1, 2, 0)
    )
    k_id, k_all = len(basis), modes_vk.shape[2]
    modes_rows = modes_vk.reshape(-1, k_all)  # (3V, K_all)
    reg = np.full(k_all, float(regularisation))
    reg[k_id:] = float(expression_regularisation)
    lower = np.full(k_all, -np.inf)
    upper = np.full(k_all, np.inf)
    lower[k_id:], upper[k_id:] = 0.0, 1.0

    def shape_of(coeffs: np.ndarray) -> np.ndarray:
        return mean + matvec(modes_rows, coeffs).reshape(n_vertices, 3)

    def transform(scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
        return scale * matmul(p, rot.T) + trans

    # (1) Similarity from the anchors alone.
    scale, rot, trans = similarity_transform(p[a_pt], mean[a_lm])
    coeffs = np.zeros(k_all)
    q = transform(scale, rot, trans)
    rigid = closest_points_on_mesh(q, mean, tris)
    rigid_stats = _distance_stats(rigid.distance * _MM)
    anchor_rigid = row_norms(q[a_pt] - mean[a_lm]) * _MM
    logger.info(
        "MediaPipe registration: rigid start, scale %.4f, closest-point distance median %.2f mm, p95 %.2f mm",
        scale, rigid_stats["median_mm"], rigid_stats["p95_mm"],
    )

    # (2) Alternate closest points, similarity and model coefficients.
    w_point = _MM * np.sqrt(float(point_weight))
    w_anchor = _MM * np.sqrt(float(anchor_weight))
    prev_mean = np.inf
    n_done = 0
    n_outliers = 0
    for it in range(max(int(n_iterations), 0)):
        n_done = it + 1
        shape = shape_of(coeffs)
        cps = closest_points_on_mesh(q, shape, tris)
        boundary = on_boundary_test(cps.triangle, cps.barycentric)
        d = cps.distance
        inner = ~boundary
        med = float(np.median(d[inner])) if inner.any() else float(np.median(d))
        limit = max(outlier_factor * med, outlier_floor_mm / _MM)
        inlier = inner & (d <= limit)
        n_outliers = int((~inlier).sum())

        # Similarity: inliers to their closest points, anchors to their landmark vertices.
        src = np.concatenate([p[inlier], p[a_pt]])
        dst = np.concatenate([cps.point[inlier], shape[a_lm]])
        w = np.concatenate([np.ones(int(inlier.sum())), np.full(len(a_pt), float(anchor_weight))])
        scale, rot, trans = similarity_transform(src, dst, w)
        q = transform(scale, rot, trans)

        # Coefficients: regularised least squares with the correspondences held fixed (rows in
        # mm), solved through its normal equations (.exact_linalg: no BLAS/LAPACK).
        idx = np.flatnonzero(inlier)
        corners = tris[cps.triangle[idx]]  # (M, 3)
        bc = cps.barycentric[idx]  # (M, 3)
        m_i = _interpolate(bc, mean[corners])  # (M, 3)
        b_i = _interpolate(bc, modes_vk[corners])  # (M, 3, K)
        tv = shape[corners]
        nrm = np.cross(tv[:, 1] - tv[:, 0], tv[:, 2] - tv[:, 0])
        nrm /= np.maximum(row_norms(nrm), 1e-300)[:, None]
        r_i = q[idx] - m_i  # (M, 3)
        plane = nrm[:, 0, None] * b_i[:, 0] + nrm[:, 1, None] * b_i[:, 1] + nrm[:, 2, None] * b_i[:, 2]
        rows = [
            plane * _MM,
            b_i.reshape(-1, k_all) * w_point,
            modes_vk[a_lm].reshape(-1, k_all) * w_anchor,
        ]
        rhs = [
            rowwise_dot(nrm, r_i) * _MM,
            r_i.reshape(-1) * w_point,
            (q[a_pt] - mean[a_lm]).reshape(-1) * w_anchor,
        ]
        gram, h_vec = normal_equations(np.concatenate(rows), np.concatenate(rhs))
        gram[np.diag_indices(k_all)] += reg
        if expr is None:
            coeffs = solve_spd(gram, h_vec)
        else:
            coeffs = box_qp(gram, h_vec, lower, upper, x0=coeffs)

        cur_mean = float(d.mean() * _MM)
        logger.debug(
            "iteration %d: mean distance %.3f mm, %d outliers/boundary, |c| %.2f", n_done, cur_mean, n_outliers,
            float(row_norms(coeffs[:k_id])),
        )
        if abs(prev_mean - cur_mean) < tolerance_mm:
            break
        prev_mean = cur_mean

    # (3) Final correspondence on the fitted surface.
    fitted = shape_of(coeffs)
    final = closest_points_on_mesh(q, fitted, tris)
    on_boundary = on_boundary_test(final.triangle, final.barycentric)
    residual = final.distance * _MM
    final_stats = _distance_stats(residual)
    anchor_res = row_norms(q[a_pt] - fitted[a_lm]) * _MM
    mapped = _interpolate(final.barycentric, fitted[tris[final.triangle]])
    anchor_mapped = row_norms(mapped[a_pt] - fitted[a_lm]) * _MM
    names = [f"{int(i)}->{int(j)}" for i, j in anchor_pairs]
    angle = math.degrees(math.acos(min(max((float(rot[0, 0] + rot[1, 1] + rot[2, 2]) - 1.0) / 2.0, -1.0), 1.0)))
    stats: dict[str, Any] = {
        "rigid": rigid_stats,
        "final": final_stats,
        "anchor_residual_mm": dict(zip(names, map(float, anchor_res))),
        "anchor_mapped_mm": dict(zip(names, map(float, anchor_mapped))),
        "anchor_rigid_mm": dict(zip(names, map(float, anchor_rigid))),
        "n_iterations": n_done,
        "n_on_boundary": int(on_boundary.sum()),
        "n_outliers": n_outliers,
        "scale": float(scale),
        "rotation_deg": angle,
        "translation_m": [float(x) for x in trans],
        "identity_coefficients": [float(x) for x in coeffs[:k_id]],
        "expression_weights": [float(x) for x in coeffs[k_id:]],
        "seconds": time.perf_counter() - t_start,
    }
    worst = int(np.argmax(anchor_res))
    if anchor_res[worst] > 5.0:
        logger.warning(
            "MediaPipe registration: anchor %s ends %.1f mm from its landmark; check the anchor list for this model",
            names[worst], anchor_res[worst],
        )
    logger.info(
        "MediaPipe registration: %d iterations, %.2f s; final distance median %.2f mm, p95 %.2f mm, max %.2f mm; "
        "%d points on the boundary; worst anchor %s at %.2f mm",
        n_done, stats["seconds"], final_stats["median_mm"], final_stats["p95_mm"], final_stats["max_mm"],
        stats["n_on_boundary"], names[worst], anchor_res[worst],
    )
    return MediaPipeCorrespondence(
        triangle=final.triangle.astype(np.int32),
        barycentric=final.barycentric.astype(np.float32),
        residual_mm=residual.astype(np.float32),
        on_boundary=on_boundary,
        corners=tris[final.triangle].astype(np.int32),
        scale=float(scale),
        stats=stats,
    )
