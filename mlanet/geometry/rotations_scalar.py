"""Plain-Python twins of :mod:`mlanet.geometry.rotations` for one pose at a time.

The CPU runtime converts one to a few poses per frame, right after the network has run. At that size
NumPy's per-call machinery costs more than the arithmetic, and more again when the network has just
pushed it out of the caches: the crop -> frame pose of one face took ~76 us warm and ~190 us right after
an ONNX Runtime run through :mod:`mlanet.geometry.rotations_numpy`, ~13 / ~43 us with these. Same
conventions, gimbal-lock rule and formulas as the PyTorch functions (which stay the definition);
``tests/test_rotations_numpy.py`` checks each against its twin. Matrices are row-major nested tuples
``((r00, r01, r02), (r10, r11, r12), (r20, r21, r22))``; angles (pitch, yaw, roll) in radians; float64.
"""

from __future__ import annotations

import math
import sys

from mlanet.geometry.rotations import GIMBAL_LOCK_EPS_FACTOR

Matrix3 = tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]

#: :func:`matrix_to_euler`'s gimbal-lock threshold on cos(yaw)^2 (float64, as the PyTorch function in float64).
_LOCKED_COS_YAW_SQ = (GIMBAL_LOCK_EPS_FACTOR * sys.float_info.epsilon) ** 2


def euler_to_matrix(pitch: float, yaw: float, roll: float) -> Matrix3:
    """``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``."""
    cp, sp, cy, sy, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(yaw), math.sin(yaw), math.cos(roll), math.sin(roll)
    return ((cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp),
            (sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp),
            (-sy, cy * sp, cy * cp))


def matrix_to_euler(R: Matrix3) -> tuple[float, float, float]:
    """(pitch, yaw, roll) of ``R``; at gimbal lock pitch = 0 and the whole angle in roll."""
    (_, r01, r02), (_, r11, r12), (r20, r21, r22) = R
    cos_yaw_sq = r21 * r21 + r22 * r22
    yaw = math.atan2(-r20, math.sqrt(max(cos_yaw_sq, sys.float_info.min)))
    pitch = 0.0 if cos_yaw_sq < _LOCKED_COS_YAW_SQ else math.atan2(r21, r22)
    cp, sp = math.cos(pitch), math.sin(pitch)
    return pitch, yaw, math.atan2(-(cp * r01 - sp * r02), cp * r11 - sp * r12)


def rotation_z_to(dx: float, dy: float, dz: float) -> Matrix3:
    """The smallest rotation taking ``+z`` to the unit direction ``(dx, dy, dz)`` (Rodrigues, as
    :func:`mlanet.geometry.rotations_numpy.rotation_z_to`)."""
    s = math.sqrt(dx * dx + dy * dy)
    inv = 1.0 / max(s, 1e-12)
    kx, ky, v = -dy * inv, dx * inv, 1.0 - dz
    return ((1.0 - v * ky * ky, v * kx * ky, s * ky),
            (v * kx * ky, 1.0 - v * kx * kx, -s * kx),
            (-s * ky, s * kx, 1.0 - v * (kx * kx + ky * ky)))


def matmul(A: Matrix3, B: Matrix3) -> Matrix3:
    """``A @ B``."""
    (a00, a01, a02), (a10, a11, a12), (a20, a21, a22) = A
    (b00, b01, b02), (b10, b11, b12), (b20, b21, b22) = B
    return ((a00 * b00 + a01 * b10 + a02 * b20, a00 * b01 + a01 * b11 + a02 * b21, a00 * b02 + a01 * b12 + a02 * b22),
            (a10 * b00 + a11 * b10 + a12 * b20, a10 * b01 + a11 * b11 + a12 * b21, a10 * b02 + a11 * b12 + a12 * b22),
            (a20 * b00 + a21 * b10 + a22 * b20, a20 * b01 + a21 * b11 + a22 * b21, a20 * b02 + a21 * b12 + a22 * b22))


def matrix_to_rotation_6d(R: Matrix3) -> tuple[float, float, float, float, float, float]:
    """The first column of ``R``, then the second."""
    (r00, r01, _), (r10, r11, _), (r20, r21, _) = R
    return r00, r10, r20, r01, r11, r21


def rotation_6d_to_matrix(x: tuple[float, ...] | list[float], eps: float = 1e-12) -> Matrix3:
    """The rotation of a 6D vector by Gram-Schmidt (columns b1, b2, b1 x b2; norms clamped to ``eps``)."""
    a0, a1, a2, c0, c1, c2 = x
    n = max(math.sqrt(a0 * a0 + a1 * a1 + a2 * a2), eps)
    b0, b1, b2 = a0 / n, a1 / n, a2 / n
    d = b0 * c0 + b1 * c1 + b2 * c2
    e0, e1, e2 = c0 - d * b0, c1 - d * b1, c2 - d * b2
    n = max(math.sqrt(e0 * e0 + e1 * e1 + e2 * e2), eps)
    e0, e1, e2 = e0 / n, e1 / n, e2 / n
    f0, f1, f2 = b1 * e2 - b2 * e1, b2 * e0 - b0 * e2, b0 * e1 - b1 * e0
    return ((b0, e0, f0), (b1, e1, f1), (b2, e2, f2))
