"""Face measures from 2D landmarks: lip gap, eye aperture (dimensionless ratios).

Shared by the expression evaluation of clips (:mod:`mlanet.edge.evaluation.expressions`) and the
eye-aperture report of the training labels and fits (:mod:`mlanet.data.eye_aperture`), so both
measure the same thing. Points are image (or crop) coordinates in any common length unit; every
measure is a ratio of two distances of the same face, so it does not depend on the unit or the
face's size in the image.
"""

from __future__ import annotations

import numpy as np

#: MediaPipe 468 indices: inner-lip midpoints (upper, lower).
MP468_INNER_LIP: tuple[int, int] = (13, 14)
#: MediaPipe 468 indices: forehead top and chin (the face height).
MP468_FACE_HEIGHT: tuple[int, int] = (10, 152)
#: Per eye, subject's left then right: (upper lid, lower lid, outer corner, inner corner).
MP468_EYES: dict[str, tuple[int, int, int, int]] = {"L": (386, 374, 263, 362), "R": (159, 145, 33, 133)}

#: iBUG 68 (0-based), per eye, subject's left then right: (upper lid pair, lower lid pair, outer corner,
#: inner corner); the lid pairs face each other (43-47, 44-46; 38-40, 37-41).
IBUG68_EYES: dict[str, tuple[tuple[int, int], tuple[int, int], int, int]] = {
    "L": ((43, 44), (47, 46), 45, 42), "R": ((38, 37), (40, 41), 36, 39)}
#: The eight iBUG-68 eyelid points (both lids of both eyes, not the corners), sorted.
IBUG68_EYELID_ROWS: tuple[int, ...] = tuple(sorted(i for up, lo, _o, _i in IBUG68_EYES.values() for i in up + lo))

def _points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2] != 468 or p.shape[-1] < 2:
        raise ValueError(f"expected MediaPipe points of shape (..., 468, 2), got {p.shape}")
    return p[..., :2]


def _dist(p: np.ndarray, i: int, j: int) -> np.ndarray:
    return np.linalg.norm(p[..., i, :] - p[..., j, :], axis=-1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def face_height(points: np.ndarray) -> np.ndarray:
    """Forehead top (10) to chin (152) distance of MediaPipe points (..., 468, 2) -> (...,), same unit."""
    return _dist(_points(points), *MP468_FACE_HEIGHT)


def lip_gap(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap over face height: ``|p13 - p14| / |p10 - p152|``.

    Args:
        points: (..., 468, 2) MediaPipe face-mesh points, any (common) length unit.

    Returns:
        (...,) float64, dimensionless (0 with closed lips, about 0.1-0.3 wide open); NaN where
        the face height is 0.
    """
    p = _points(points)
    return _ratio(_dist(p, *MP468_INNER_LIP), _dist(p, *MP468_FACE_HEIGHT))


def eye_apertures(points: np.ndarray) -> np.ndarray:
    """Per-eye aperture: vertical lid distance over the eye's width.

    Args:
        points: (..., 468, 2) MediaPipe face-mesh points, any (common) length unit.

    Returns:
        (..., 2) float64, dimensionless: ``[..., 0]`` the subject's left eye
        ``|p386 - p374| / |p263 - p362|``, ``[..., 1]`` the subject's right eye
        ``|p159 - p145| / |p33 - p133|`` (about 0.25-0.35 open, near 0 closed); NaN where an eye's
        width is 0.
    """
    p = _points(points)
    out = [_ratio(_dist(p, up, lo), _dist(p, outer, inner)) for up, lo, outer, inner in MP468_EYES.values()]
    return np.stack(out, axis=-1)


def mean_eye_aperture(points: np.ndarray) -> np.ndarray:
    """Mean of both :func:`eye_apertures`: (..., 468, 2) -> (...,) float64, dimensionless."""
    return eye_apertures(points).mean(axis=-1)


def ibug68_eye_apertures(points: np.ndarray) -> np.ndarray:
    """Per-eye aperture of iBUG-68 points (manual 300-W, the teacher's): mean lid distance over eye width.

    Args:
        points: (..., 68, 2) points, any (common) length unit.

    Returns:
        (..., 2) float64, dimensionless: ``[..., 0]`` the subject's left eye
        ``(|p43 - p47| + |p44 - p46|) / 2 / |p45 - p42|``, ``[..., 1]`` the right eye
        ``(|p38 - p40| + |p37 - p41|) / 2 / |p36 - p39|``; NaN where an eye's width is 0.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 2 or p.shape[-2] != 68 or p.shape[-1] < 2:
        raise ValueError(f"expected 68 points of shape (..., 68, 2), got {p.shape}")
    p = p[..., :2]
    out = []
    for (u1, u2), (l1, l2), outer, inner in IBUG68_EYES.values():
        lids = (_dist(p, u1, l1) + _dist(p, u2, l2)) / 2.0
        out.append(_ratio(lids, _dist(p, outer, inner)))
    return np.stack(out, axis=-1)
