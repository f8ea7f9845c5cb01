"""Landmark definitions as named points on the face model's surface.

A *landmark definition* ``NAME`` is L points, each a triangle of the face model and barycentric
coordinates in it, so it moves with every identity, expression and pose. It lives in the
face-model file (:class:`~mlanet.morphable.data.FaceModelData`) as

* ``extra["landmarks/NAME/triangle"]`` (L,) int32 triangle index;
* ``extra["landmarks/NAME/barycentric"]`` (L, 3) float32 weights of the triangle's corners (sum 1);
* ``extra["landmarks/NAME/contour"]`` (L,) uint8: 1 where the point follows the silhouette;
* ``extra["landmarks/NAME/contour_candidates"]`` (L, C) int32 (only with contour points): for a
  contour point, the vertices of its *contour line* (a horizontal section of the mean face on
  the point's side, from the cheek near the nose to behind the jaw), -1 padding; -1 everywhere
  for the other points;
* ``header["landmark_definitions"][NAME]``: description, point names and order, flip
  permutation, how and on what data it was fitted, and the terms of that data.

Two definitions are *views* of arrays the file has anyway and are not duplicated:
``ict68`` (the ``landmarks68`` vertex indices, ICT-FaceKit's iBUG-68 vertices, what
:meth:`MorphableModel.landmarks` returns) and ``mediapipe468`` (the ``mediapipe/*``
correspondence).

Silhouette-following (the "dynamic contour" of FLAME / 3DDFA): seen by a camera, a contour
point is the candidate of its line that lies furthest out along the image direction of the
model's ``side * x`` axis at that point (``side`` = sign of the point's x on the mean face: the
subject's left is +x). For a horizontal section of a face this extreme is exactly where the
line of sight grazes the surface, on the near side as well as on the far side. The rotation
comes from the caller (``rotation=``) or is estimated from the vertices
(:func:`estimate_rotation`, a Kabsch fit to the mean shape).

Shapes: B batch, V vertices, F triangles, L points, C candidates per contour line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from mlanet.errors import AssetError

#: ``extra`` key prefix of landmark definitions (shared with :mod:`.decoder_identity`).
PREFIX = "landmarks/"
#: Array suffixes of a stored definition; ``contour_candidates`` is optional.
REQUIRED_ARRAYS = ("triangle", "barycentric", "contour")
OPTIONAL_ARRAYS = ("contour_candidates",)
#: The view of ``landmarks68`` (ICT-FaceKit's iBUG-68 vertices; the definition used before issue 14).
ICT68 = "ict68"
#: The view of the ``mediapipe/*`` correspondence.
MEDIAPIPE468 = "mediapipe468"
#: Header key holding the metadata of every stored definition.
HEADER_KEY = "landmark_definitions"


@dataclass
class SurfaceDefinition:
    """One landmark definition on a mesh (numpy; see the module docstring for the arrays).

    ``info`` is its ``header["landmark_definitions"][name]`` entry (JSON-able; ``point_names``,
    ``flip_permutation``, ``description``, ``fitted``, ``terms``, ...).
    """

    name: str
    triangle: np.ndarray
    barycentric: np.ndarray
    contour: np.ndarray
    contour_candidates: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_points(self) -> int:
        return int(len(self.triangle))

    @property
    def has_contour(self) -> bool:
        return bool(np.any(self.contour)) and self.contour_candidates is not None

    def normalised(self) -> "SurfaceDefinition":
        """Copy with canonical dtypes (int32 / float32 / uint8)."""
        cand = None if self.contour_candidates is None else np.ascontiguousarray(self.contour_candidates, dtype=np.int32)
        return SurfaceDefinition(
            self.name,
            np.ascontiguousarray(self.triangle, dtype=np.int32).reshape(-1),
            np.ascontiguousarray(self.barycentric, dtype=np.float32).reshape(-1, 3),
            np.ascontiguousarray(self.contour, dtype=np.uint8).reshape(-1),
            cand,
            dict(self.info),
        )

    def validate(self, n_triangles: int, n_vertices: int, source: str = "landmark definition") -> None:
        """Shapes, index ranges and barycentric sums; :class:`AssetError` naming ``source`` and the definition."""

        def fail(msg: str) -> None:
            raise AssetError(f"{source}: landmark definition {self.name!r}: {msg}")

        if not self.name or "/" in self.name or self.name in (ICT68, MEDIAPIPE468):
            fail("the name must be non-empty, without '/', and not a reserved view name")
        L = self.n_points
        if L < 1 or self.triangle.shape != (L,):
            fail(f"triangle must be (L,) with L >= 1, got {self.triangle.shape}")
        if self.barycentric.shape != (L, 3):
            fail(f"barycentric must be ({L}, 3), got {self.barycentric.shape}")
        if self.contour.shape != (L,) or (self.contour.size and self.contour.max() > 1):
            fail(f"contour must be ({L},) of 0/1, got shape {self.contour.shape}")
        if self.triangle.min() < 0 or self.triangle.max() >= n_triangles:
            fail(f"triangle indices must lie in [0, {n_triangles})")
        b = self.barycentric.astype(np.float64)
        if not np.all(np.isfinite(b)) or b.min() < -1e-4 or np.abs(b.sum(1) - 1.0).max() > 1e-4:
            fail("barycentric coordinates must be finite, >= 0 and sum to 1")
        if self.contour_candidates is not None:
            c = self.contour_candidates
            if c.ndim != 2 or c.shape[0] != L:
                fail(f"contour_candidates must be ({L}, C), got {c.shape}")
            if c.max(initial=-1) >= n_vertices or c.min(initial=-1) < -1:
                fail(f"contour_candidates must be vertex indices in [0, {n_vertices}) or -1")
            has = (c >= 0).any(1)
            if np.any(self.contour.astype(bool) & ~has):
                fail("a contour point has no candidate vertices")
        elif np.any(self.contour):
            fail("contour points need contour_candidates")
        perm = self.info.get("flip_permutation")
        if perm is not None:
            p = np.asarray(perm)
            if p.shape != (L,) or sorted(p.tolist()) != list(range(L)) or not np.array_equal(p[p], np.arange(L)):
                fail("flip_permutation must be an involution of range(L)")
        names = self.info.get("point_names")
        if names is not None and len(names) != L:
            fail(f"{len(names)} point names for {L} points")

    def to_extra(self) -> dict[str, np.ndarray]:
        """The ``extra`` arrays of this definition."""
        d = self.normalised()
        out = {
            f"{PREFIX}{d.name}/triangle": d.triangle,
            f"{PREFIX}{d.name}/barycentric": d.barycentric,
            f"{PREFIX}{d.name}/contour": d.contour,
        }
        if d.contour_candidates is not None:
            out[f"{PREFIX}{d.name}/contour_candidates"] = d.contour_candidates
        return out

    @classmethod
    def from_extra(cls, name: str, extra: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> "SurfaceDefinition":
        """Read definition ``name`` from ``extra`` arrays (:class:`KeyError` when it is not there)."""
        key = f"{PREFIX}{name}/"
        if key + "triangle" not in extra:
            raise KeyError(name)
        return cls(
            name,
            np.asarray(extra[key + "triangle"]),
            np.asarray(extra[key + "barycentric"]),
            np.asarray(extra[key + "contour"]),
            None if key + "contour_candidates" not in extra else np.asarray(extra[key + "contour_candidates"]),
            dict(info or {}),
        ).normalised()

    def corners(self, triangles: np.ndarray) -> np.ndarray:
        """(L, 3) vertex indices of each point's triangle."""
        return np.asarray(triangles)[self.triangle]

    def points(self, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """(L, 3) fixed points (no silhouette) on one mesh ``vertices`` (V, 3)."""
        v = np.asarray(vertices, dtype=np.float64)[self.corners(triangles)]  # (L, 3, 3)
        return (v * self.barycentric.astype(np.float64)[:, :, None]).sum(1)


def stored_definition_names(extra: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the definitions stored in ``extra`` (those with a ``landmarks/NAME/triangle`` array), sorted."""
    out = set()
    for k in extra:
        if k.startswith(PREFIX) and k.endswith("/triangle") and k.count("/") == 2:
            out.add(k[len(PREFIX):-len("/triangle")])
    return sorted(out)


def read_definitions(extra: Mapping[str, np.ndarray], header: Mapping[str, Any]) -> dict[str, SurfaceDefinition]:
    """Every stored definition of a face-model file (metadata from ``header[HEADER_KEY]``)."""
    meta = header.get(HEADER_KEY) or {}
    return {n: SurfaceDefinition.from_extra(n, extra, meta.get(n)) for n in stored_definition_names(extra)}


def is_definition_key(key: str) -> bool:
    """True for an ``extra`` key that belongs to a stored surface definition (``landmarks/NAME/...``)."""
    return key.startswith(PREFIX) and key.count("/") == 2


# ----------------------------------------------------------------------------- geometry helpers
def closest_point_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closest points of triangles (a, b, c) to points ``p`` (all (..., 3)); returns ``(point, barycentric (..., 3))``.

    Ericson, Real-Time Collision Detection, 5.1.5 (vectorised; degenerate triangles fall back to
    their closest corner).
    """
    p, a, b, c = (np.asarray(x, dtype=np.float64) for x in (p, a, b, c))
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = (ab * ap).sum(-1), (ac * ap).sum(-1)
    bp = p - b
    d3, d4 = (ab * bp).sum(-1), (ac * bp).sum(-1)
    cp = p - c
    d5, d6 = (ab * cp).sum(-1), (ac * cp).sum(-1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    shape = d1.shape
    bary = np.zeros(shape + (3,))
    done = np.zeros(shape, dtype=bool)

    def put(mask: np.ndarray, w: np.ndarray) -> None:
        m = mask & ~done
        bary[m] = w[m]
        done[m] = True

    one = np.ones(shape)
    zero = np.zeros(shape)
    put((d1 <= 0) & (d2 <= 0), np.stack([one, zero, zero], -1))
    put((d3 >= 0) & (d4 <= d3), np.stack([zero, one, zero], -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        v = d1 / (d1 - d3)
        put((vc <= 0) & (d1 >= 0) & (d3 <= 0), np.stack([1 - v, v, zero], -1))
        put((d6 >= 0) & (d5 <= d6), np.stack([zero, zero, one], -1))
        w = d2 / (d2 - d6)
        put((vb <= 0) & (d2 >= 0) & (d6 <= 0), np.stack([1 - w, zero, w], -1))
        w = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        put((va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0), np.stack([zero, 1 - w, w], -1))
        denom = va + vb + vc
        v, w = vb / denom, vc / denom
        inner = np.stack([1 - v - w, v, w], -1)
    bad = ~np.all(np.isfinite(inner), -1)
    inner[bad] = np.array([1.0, 0.0, 0.0])
    put(np.ones(shape, dtype=bool), inner)
    point = bary[..., :1] * a + bary[..., 1:2] * b + bary[..., 2:] * c
    return point, bary


def closest_surface_points(
    points: np.ndarray, vertices: np.ndarray, triangles: np.ndarray, k: int = 48
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest surface point of a mesh to each of ``points`` (P, 3).

    Candidate triangles are the ``k`` nearest by centroid (enough on meshes with roughly even
    triangles, as face models have). Returns ``(triangle (P,) int64, barycentric (P, 3), distance (P,))``.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    k = int(min(k, len(t)))
    _, cand = cKDTree(v[t].mean(1)).query(pts, k=k)
    cand = cand.reshape(len(pts), k)
    tri = t[cand]  # (P, k, 3)
    q, bary = closest_point_on_triangles(pts[:, None, :], v[tri[..., 0]], v[tri[..., 1]], v[tri[..., 2]])
    d = np.linalg.norm(q - pts[:, None, :], axis=-1)
    best = d.argmin(1)
    rows = np.arange(len(pts))
    return cand[rows, best], bary[rows, best], d[rows, best]


def vertex_as_surface_point(vertex: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(triangle, barycentric)`` that put weight 1 on each vertex of ``vertex`` (L,) (a triangle using it)."""
    t = np.asarray(triangles, dtype=np.int64)
    tri = np.empty(len(vertex), dtype=np.int64)
    bary = np.zeros((len(vertex), 3), dtype=np.float64)
    for i, v in enumerate(np.asarray(vertex, dtype=np.int64)):
        rows, cols = np.nonzero(t == v)
        if len(rows) == 0:
            raise ValueError(f"vertex {v} is in no triangle")
        tri[i] = rows[0]
        bary[i, cols[0]] = 1.0
    return tri, bary


def contour_lines(
    mean_shape: np.ndarray,
    anchors: np.ndarray,
    n_candidates: int = 32,
    band_m: float = 0.004,
    behind_m: float = 0.012,
    inner_fraction: float = 0.12,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Contour lines (L, C) of vertex ids (-1 padded) through the ``anchors`` (L,) vertices of a mean face.

    Line ``l`` holds the vertices within ``band_m`` of the anchor's height (model y) on the
    anchor's side (sign of x), from ``inner_fraction`` of the anchor's ``|x|`` out to ``behind_m``
    behind it (model +z), at most ``n_candidates`` of them, sorted from the midline outwards
    (by azimuth about the vertical axis), always including the anchor. ``exclude`` (V,) bool
    masks vertices that can never be on the contour (e.g. eyes, lips).
    """
    m = np.asarray(mean_shape, dtype=np.float64)
    out = np.full((len(anchors), n_candidates), -1, dtype=np.int32)
    zc = float(np.median(m[:, 2]))
    ok_all = np.ones(len(m), dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    for l, a in enumerate(np.asarray(anchors, dtype=np.int64)):
        p = m[a]
        side = 1.0 if p[0] >= 0 else -1.0
        sel = (
            ok_all
            & (np.abs(m[:, 1] - p[1]) <= band_m)
            & (side * m[:, 0] >= inner_fraction * abs(p[0]))
            & (m[:, 2] <= p[2] + behind_m)
        )
        idx = np.nonzero(sel)[0]
        az = np.arctan2(side * m[idx, 0], zc - m[idx, 2])  # 0 at the front midline, growing outwards
        idx = idx[np.argsort(az, kind="stable")]
        if len(idx) > n_candidates - 1:
            pick = np.unique(np.round(np.linspace(0, len(idx) - 1, n_candidates - 1)).astype(np.int64))
            idx = idx[pick]
        line = np.unique(np.concatenate([idx, [a]]))
        az = np.arctan2(side * m[line, 0], zc - m[line, 2])
        line = line[np.argsort(az, kind="stable")]
        out[l, : len(line)] = line
    return out


# ----------------------------------------------------------------------------- torch evaluation
def barycentric_points(vertices: torch.Tensor, corners: torch.Tensor, barycentric: torch.Tensor) -> torch.Tensor:
    """Points (B, L, 3) from vertices (B, V, 3), corner vertex ids (L, 3) and weights (L, 3)."""
    v = vertices[:, corners]  # (B, L, 3, 3)
    return (v * barycentric.to(vertices.dtype)[None, :, :, None]).sum(dim=2)


def estimate_rotation(vertices: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Least-squares rotations (B, 3, 3) taking ``reference`` (K, 3) (model frame) to ``vertices`` (B, K, 3) (Kabsch)."""
    ref = reference.to(vertices.dtype)
    a = ref - ref.mean(0)
    b = vertices - vertices.mean(1, keepdim=True)
    H = a.T[None] @ b  # (B, 3, 3)
    U, _, Vh = torch.linalg.svd(H)
    d = torch.sign(torch.linalg.det(Vh.transpose(1, 2) @ U.transpose(1, 2)))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    return Vh.transpose(1, 2) @ D @ U.transpose(1, 2)


def select_silhouette(
    cand_cam: torch.Tensor, cand_valid: torch.Tensor, camera: Any, rotation: torch.Tensor, side: torch.Tensor
) -> torch.Tensor:
    """Index (B, L') of the silhouette candidate of each contour line.

    Args:
        cand_cam: (B, L', C, 3) camera-frame candidate positions; cand_valid: (L', C) bool.
        camera: a :class:`~mlanet.geometry.camera.PinholeCamera` (batch 1 or B).
        rotation: (B, 3, 3) model -> camera rotations; side: (L',) +1 / -1 (the line's model x side).
    """
    B, Lc, C, _ = cand_cam.shape
    uv = camera.project(cand_cam.reshape(B, Lc * C, 3)).reshape(B, Lc, C, 2)
    axis = rotation[:, :, 0][:, None, :] * side.to(rotation.dtype)[None, :, None]  # (B, L', 3)
    # image direction of the model's side*x axis at each line's first candidate (finite difference)
    base = cand_cam[:, :, 0]
    eps = 1e-3 * base[..., 2:].abs().clamp_min(1e-3)
    d = camera.project((base + eps * axis).reshape(B, Lc, 3)) - camera.project(base.reshape(B, Lc, 3))
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    score = (uv * d[:, :, None, :]).sum(-1)
    score = score.masked_fill(~cand_valid[None], float("-inf"))
    return score.argmax(-1)
