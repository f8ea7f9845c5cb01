"""Per-vertex region labels (skin, brows, eyes, nose, lips, ...) derived from the 68 landmarks.

Regions are drawn on the *frontal projection* (x, y of the model frame) of the mean face, with
polygons and polylines through landmark positions, so they follow any topology that carries
the 68 iBUG landmarks. Sizes are relative to the mean eye width (outer to inner corner), so
the same rules work for the synthetic test model. Only vertices in front of the ears (smaller
z than the jaw-ear landmarks 0 and 16) can become eyes/brows/nose/lips, so the back of the
head never lands inside a frontal polygon.

Labels are exclusive; assignment order is skin < nose < brows < eyes < lips (a later region
overrides an earlier one). Extra fixed labels (e.g. the ICT head-and-neck geometry) are given
by the caller and override everything.
"""

from __future__ import annotations

import numpy as np

#: Region names in label order; label ``i`` means ``REGION_NAMES[i]``.
REGION_NAMES: tuple[str, ...] = ("skin", "nose", "brows", "eyes", "lips", "neck_head")

#: Regions whose surface is bare skin (usable as a photometric-loss mask).
SKIN_REGIONS: tuple[str, ...] = ("skin", "nose")

# iBUG-68 index groups (0-based).
LM_RIGHT_BROW = tuple(range(17, 22))
LM_LEFT_BROW = tuple(range(22, 27))
LM_NOSE = tuple(range(27, 36))
LM_RIGHT_EYE = tuple(range(36, 42))
LM_LEFT_EYE = tuple(range(42, 48))
LM_OUTER_LIPS = tuple(range(48, 60))

# Margins as fractions of the mean eye width.
_EYE_MARGIN = 0.28
_BROW_HALF_WIDTH = 0.22
_NOSE_MARGIN = 0.08
_LIPS_MARGIN = 0.04


def _points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule: (N,) bool, ``points`` (N,2) inside closed ``polygon`` (M,2)."""
    x, y = points[:, 0:1], points[:, 1:2]
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_int = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return np.sum(crosses & (x < x_int), axis=1) % 2 == 1


def _distance_to_polyline(points: np.ndarray, line: np.ndarray, closed: bool) -> np.ndarray:
    """(N,) distance from ``points`` (N,2) to the segments of ``line`` (M,2)."""
    a = line if closed else line[:-1]
    b = np.roll(line, -1, axis=0) if closed else line[1:]
    ab = b - a  # (S,2)
    ap = points[:, None, :] - a[None]  # (N,S,2)
    t = np.clip((ap * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-18), 0.0, 1.0)
    closest = a[None] + t[..., None] * ab[None]
    return np.linalg.norm(points[:, None, :] - closest, axis=-1).min(axis=1)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Counter-clockwise convex hull (monotone chain) of (M,2) points."""
    pts = sorted(map(tuple, points))

    def cross(o: tuple, a: tuple, b: tuple) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def label_regions(
    mean_shape: np.ndarray,
    landmarks68: np.ndarray,
    fixed: dict[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Region label per vertex.

    Args:
        mean_shape: (V, 3) model-frame vertices (metres).
        landmarks68: (68,) vertex indices, iBUG order.
        fixed: optional region name -> (V,) bool mask assigned last (e.g. ``{"neck_head": mask}``).

    Returns:
        (V,) uint8 labels indexing :data:`REGION_NAMES`.
    """
    verts = np.asarray(mean_shape, dtype=np.float64)
    lm = verts[np.asarray(landmarks68)]
    xy, lm_xy = verts[:, :2], lm[:, :2]
    eye_width = 0.5 * (
        np.linalg.norm(lm_xy[36] - lm_xy[39]) + np.linalg.norm(lm_xy[42] - lm_xy[45])
    )
    frontal = verts[:, 2] < 0.5 * (lm[0, 2] + lm[16, 2])

    labels = np.zeros(len(verts), dtype=np.uint8)

    def assign(name: str, mask: np.ndarray) -> None:
        labels[mask & frontal] = REGION_NAMES.index(name)

    nose_hull = _convex_hull(lm_xy[list(LM_NOSE)])
    assign(
        "nose",
        _points_in_polygon(xy, nose_hull) | (_distance_to_polyline(xy, nose_hull, True) < _NOSE_MARGIN * eye_width),
    )
    brows = np.zeros(len(verts), dtype=bool)
    for group in (LM_RIGHT_BROW, LM_LEFT_BROW):
        brows |= _distance_to_polyline(xy, lm_xy[list(group)], closed=False) < _BROW_HALF_WIDTH * eye_width
    assign("brows", brows)
    eyes = np.zeros(len(verts), dtype=bool)
    for group in (LM_RIGHT_EYE, LM_LEFT_EYE):
        poly = lm_xy[list(group)]
        eyes |= _points_in_polygon(xy, poly) | (_distance_to_polyline(xy, poly, True) < _EYE_MARGIN * eye_width)
    assign("eyes", eyes)
    lips_poly = lm_xy[list(LM_OUTER_LIPS)]
    assign(
        "lips",
        _points_in_polygon(xy, lips_poly) | (_distance_to_polyline(xy, lips_poly, True) < _LIPS_MARGIN * eye_width),
    )
    for name, mask in (fixed or {}).items():
        labels[np.asarray(mask, dtype=bool)] = REGION_NAMES.index(name)
    return labels
