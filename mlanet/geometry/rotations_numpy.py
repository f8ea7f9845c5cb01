"""NumPy twins of :mod:`mlanet.geometry.rotations` for small CPU batches.

The runtime converts one to a few poses per frame; at that size each PyTorch call costs more than
its arithmetic (a few microseconds of dispatch per tiny op), so the per-frame pose maths of the
CPU pipeline (:mod:`mlanet.edge.reconstruct`, :mod:`mlanet.edge.filters`) runs on these. Same
conventions, same gimbal-lock rule, same formulas as the PyTorch functions (which stay the
definition: training, export and the GPU path use them); ``tests/test_rotations_numpy.py``
checks every function against its twin. Not differentiable; float64 recommended.

Shapes: any leading batch dimensions ``...``.
"""

from __future__ import annotations

import numpy as np

from mlanet.geometry.rotations import GIMBAL_LOCK_EPS_FACTOR

__all__ = ["cross", "euler_to_matrix", "matrix_to_euler", "matrix_to_rotation_6d", "rotation_6d_to_matrix",
           "rotation_z_to"]


def cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a x b`` of 3-vectors ``(..., 3)``: ``np.cross``'s result, without its generic set-up (which costs
    ~15 us per call, more than the arithmetic for the few vectors of a frame)."""
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` from (pitch, yaw, roll) ``(..., 3)`` radians: ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    a = np.asarray(angles)
    c, s = np.cos(a), np.sin(a)
    cp, cy, cr = c[..., 0], c[..., 1], c[..., 2]
    sp, sy, sr = s[..., 0], s[..., 1], s[..., 2]
    R = np.empty(a.shape[:-1] + (3, 3), dtype=np.result_type(a.dtype, np.float32))
    R[..., 0, 0], R[..., 0, 1], R[..., 0, 2] = cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp
    R[..., 1, 0], R[..., 1, 1], R[..., 1, 2] = sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp
    R[..., 2, 0], R[..., 2, 1], R[..., 2, 2] = -sy, cy * sp, cy * cp
    return R


def matrix_to_euler(R: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) ``(..., 3)`` of ``(..., 3, 3)``; gimbal lock as :func:`mlanet.geometry.rotations.matrix_to_euler`."""
    R = np.asarray(R)
    r01, r02 = R[..., 0, 1], R[..., 0, 2]
    r11, r12 = R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    finfo = np.finfo(R.dtype if R.dtype.kind == "f" else np.float64)
    cos_yaw_sq = r21 * r21 + r22 * r22
    locked = cos_yaw_sq < (GIMBAL_LOCK_EPS_FACTOR * finfo.eps) ** 2
    yaw = np.arctan2(-r20, np.sqrt(np.maximum(cos_yaw_sq, finfo.tiny)))
    pitch = np.where(locked, 0.0, np.arctan2(np.where(locked, 0.0, r21), np.where(locked, 1.0, r22)))
    cp, sp = np.cos(pitch), np.sin(pitch)
    roll = np.arctan2(-(cp * r01 - sp * r02), cp * r11 - sp * r12)
    return np.stack([pitch, yaw, roll], axis=-1).astype(R.dtype, copy=False)


def matrix_to_rotation_6d(R: np.ndarray) -> np.ndarray:
    """``(..., 6)``: the first column of ``R``, then the second."""
    R = np.asarray(R)
    return np.concatenate([R[..., :, 0], R[..., :, 1]], axis=-1)


def _normalize(x: np.ndarray, eps: float) -> np.ndarray:
    return x / np.maximum(np.sqrt((x * x).sum(-1, keepdims=True)), eps)


def rotation_6d_to_matrix(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``(..., 3, 3)`` from 6D vectors ``(..., 6)`` by Gram-Schmidt (columns b1, b2, b1 x b2)."""
    x = np.asarray(x)
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = _normalize(a1, eps)
    b2 = _normalize(a2 - (b1 * a2).sum(-1, keepdims=True) * b1, eps)
    b3 = cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def rotation_z_to(d: np.ndarray) -> np.ndarray:
    """Smallest rotations ``(N, 3, 3)`` taking ``+z`` to the unit directions ``d`` ``(N, 3)`` (Rodrigues).

    ``R = I + s K + (1 - c) K^2`` about the unit axis ``k = (z x d) / s`` (``s``, ``c``: sine and cosine
    of the angle), written out: ``k`` has no z component, so ``K^2`` is closed-form too.
    """
    d = np.asarray(d)
    s = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])  # |z x d| = sin of the angle
    c = d[:, 2]  # cos of the angle
    inv = 1.0 / np.maximum(s, 1e-12)
    kx, ky = -d[:, 1] * inv, d[:, 0] * inv  # z x d = (-d_y, d_x, 0)
    v = 1.0 - c
    R = np.empty(d.shape[:1] + (3, 3), dtype=d.dtype)
    R[:, 0, 0], R[:, 0, 1], R[:, 0, 2] = 1.0 - v * ky * ky, v * kx * ky, s * ky
    R[:, 1, 0], R[:, 1, 1], R[:, 1, 2] = v * kx * ky, 1.0 - v * kx * kx, -s * kx
    R[:, 2, 0], R[:, 2, 1], R[:, 2, 2] = -s * ky, s * kx, 1.0 - v * (kx * kx + ky * ky)
    return R
