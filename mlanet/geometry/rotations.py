"""Batched, differentiable rotation conversions.

Conventions (see ``docs/conventions.md``): angles in radians; rotation matrices left-multiply
column vectors (``x_cam = R @ x_model + t``); right-handed axes.

Euler angles are ``(pitch, yaw, roll)`` and compose as

    ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)``

with the standard right-handed elementary rotations

    ``Rx(a) = [[1, 0, 0], [0, c, -s], [0, s, c]]``
    ``Ry(a) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``
    ``Rz(a) = [[c, -s, 0], [s, c, 0], [0, 0, 1]]``

so, e.g., a yaw of +pi/2 maps +z to +x. :func:`matrix_to_euler` returns yaw in
``[-pi/2, pi/2]`` and pitch, roll in ``[-pi, pi]``; at gimbal lock (``|yaw| = pi/2``, where only
``roll - pitch`` or ``roll + pitch`` is determined) it returns ``pitch = 0`` and puts the
whole in-plane angle into ``roll``.

The 6D representation (Zhou et al. 2019, "On the Continuity of Rotation Representations in
Neural Networks") is the first two *columns* of the matrix, concatenated:
``(R00, R10, R20, R01, R11, R21)``; :func:`rotation_6d_to_matrix` maps any 6-vector back with
Gram-Schmidt.

All functions accept arbitrary leading batch dimensions ``...``, float32 or float64, any
device, and are differentiable.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "GIMBAL_LOCK_EPS_FACTOR",
    "euler_to_matrix",
    "matrix_to_euler",
    "matrix_to_rotation_6d",
    "rotation_6d_to_matrix",
    "euler_to_rotation_6d",
    "rotation_6d_to_euler",
    "axis_angle_to_matrix",
]

#: :func:`matrix_to_euler` treats a matrix as gimbal-locked when ``cos(yaw)`` is below this many
#: machine epsilons of its dtype (float32: ~1e-6, float64: ~2e-15), i.e. at rounding level.
GIMBAL_LOCK_EPS_FACTOR: float = 8.0

# Rodrigues: below this squared angle (rad^2) the Taylor series of sin(t)/t is used; its
# first neglected term (t^6 / 5040 < 2e-22) is below float64 resolution.
_SMALL_ANGLE_SQ = 1e-6


def _check_last(x: Tensor, size: int, name: str, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name} must have shape (..., {size}) ({what}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_matrix(R: Tensor, name: str = "R") -> None:
    if not isinstance(R, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(R).__name__}")
    if R.ndim < 2 or R.shape[-2:] != (3, 3):
        raise ValueError(f"{name} must have shape (..., 3, 3), got {tuple(R.shape)}")
    if not R.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {R.dtype}")


def euler_to_matrix(angles: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` from Euler angles ``(..., 3)`` = (pitch, yaw, roll), radians.

    ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (pitch applied first to a column vector).
    """
    _check_last(angles, 3, "angles", "pitch, yaw, roll in radians")
    c = torch.cos(angles)
    s = torch.sin(angles)
    cp, cy, cr = c.unbind(-1)
    sp, sy, sr = s.unbind(-1)
    row0 = torch.stack([cr * cy, cr * sy * sp - sr * cp, cr * sy * cp + sr * sp], dim=-1)
    row1 = torch.stack([sr * cy, sr * sy * sp + cr * cp, sr * sy * cp - cr * sp], dim=-1)
    row2 = torch.stack([-sy, cy * sp, cy * cp], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def matrix_to_euler(R: Tensor) -> Tensor:
    """Euler angles ``(..., 3)`` = (pitch, yaw, roll) in radians of rotation matrices ``(..., 3, 3)``.

    Inverse of :func:`euler_to_matrix` for yaw in ``(-pi/2, pi/2)``; the returned yaw always lies
    in ``[-pi/2, pi/2]`` and pitch, roll in ``[-pi, pi]``.

    Gimbal lock: when ``cos(yaw) < GIMBAL_LOCK_EPS_FACTOR * finfo(R.dtype).eps``
    (``|yaw| = pi/2`` up to rounding) only
    ``roll - pitch`` (yaw = +pi/2) or ``roll + pitch`` (yaw = -pi/2) is determined; this function
    then returns ``pitch = 0`` and the whole angle in ``roll``, deterministically.
    ``euler_to_matrix(matrix_to_euler(R))`` reproduces ``R`` there as well.

    Roll is computed from the matrix with the recovered pitch removed, so the decomposition
    stays consistent near gimbal lock. Gradients are finite everywhere except at exact
    gimbal lock, where the angles are not differentiable functions of ``R``.
    """
    _check_matrix(R)
    r01, r02 = R[..., 0, 1], R[..., 0, 2]
    r11, r12 = R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]

    cos_yaw_sq = r21 * r21 + r22 * r22
    finfo = torch.finfo(R.dtype)
    locked = cos_yaw_sq < (GIMBAL_LOCK_EPS_FACTOR * finfo.eps) ** 2
    tiny = finfo.tiny
    cos_yaw = torch.sqrt(torch.clamp(cos_yaw_sq, min=tiny))
    yaw = torch.atan2(-r20, cos_yaw)

    # Safe arguments so that the unused branch of `where` never produces NaN gradients.
    one = torch.ones_like(r22)
    zero = torch.zeros_like(r22)
    pitch = torch.atan2(torch.where(locked, zero, r21), torch.where(locked, one, r22))
    pitch = torch.where(locked, zero, pitch)

    # R @ Rx(pitch)^T = Rz(roll) @ Ry(yaw), whose middle column is (-sin roll, cos roll, 0).
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    roll = torch.atan2(-(cp * r01 - sp * r02), cp * r11 - sp * r12)
    return torch.stack([pitch, yaw, roll], dim=-1)


def matrix_to_rotation_6d(R: Tensor) -> Tensor:
    """6D representation ``(..., 6)`` of rotation matrices ``(..., 3, 3)``: first column, then second."""
    _check_matrix(R)
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def rotation_6d_to_matrix(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` from 6D vectors ``(..., 6)`` by Gram-Schmidt.

    ``x[..., :3]`` gives the direction of the first column, ``x[..., 3:]`` (with its component
    along the first column removed) the second; the third is their cross product, so the
    result is a proper rotation (det +1). The two 3-vectors must be non-zero and not
    parallel; degenerate inputs are not detected (norms are clamped to ``eps``, so the output
    is finite but not a rotation).
    """
    _check_last(x, 6, "x", "two 3-vectors")
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = _normalize(a1, eps)
    b2 = _normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, eps)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def euler_to_rotation_6d(angles: Tensor) -> Tensor:
    """6D representation ``(..., 6)`` of Euler angles ``(..., 3)`` = (pitch, yaw, roll), radians."""
    return matrix_to_rotation_6d(euler_to_matrix(angles))


def rotation_6d_to_euler(x: Tensor) -> Tensor:
    """Euler angles ``(..., 3)`` = (pitch, yaw, roll), radians, of 6D vectors ``(..., 6)``.

    Gimbal-lock handling as in :func:`matrix_to_euler`.
    """
    return matrix_to_euler(rotation_6d_to_matrix(x))


def axis_angle_to_matrix(v: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` from axis-angle vectors ``(..., 3)`` (Rodrigues).

    ``v = theta * axis`` with ``theta`` in radians (right-hand rule about ``axis``). Uses
    ``R = I + A K + B K^2`` with ``K`` the cross-product matrix of ``v``,
    ``A = sin(theta) / theta`` and ``B = (1 - cos(theta)) / theta^2`` (written as
    ``2 sin^2(theta/2) / theta^2``, which has no cancellation); near ``theta = 0`` a Taylor
    series is used, so values and gradients are exact and finite at ``v = 0``.
    """
    _check_last(v, 3, "v", "axis * angle in radians")
    theta_sq = (v * v).sum(-1)
    small = theta_sq < _SMALL_ANGLE_SQ
    theta = torch.sqrt(torch.where(small, torch.ones_like(theta_sq), theta_sq))
    half = 0.5 * theta
    a_big = torch.sin(theta) / theta
    sinc_half = torch.sin(half) / half
    b_big = 0.5 * sinc_half * sinc_half
    a_small = 1.0 - theta_sq / 6.0 + theta_sq * theta_sq / 120.0
    b_small = 0.5 - theta_sq / 24.0 + theta_sq * theta_sq / 720.0
    a = torch.where(small, a_small, a_big)[..., None, None]
    b = torch.where(small, b_small, b_big)[..., None, None]

    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack(
        [
            torch.stack([zero, -z, y], dim=-1),
            torch.stack([z, zero, -x], dim=-1),
            torch.stack([-y, x, zero], dim=-1),
        ],
        dim=-2,
    )
    eye = torch.eye(3, dtype=v.dtype, device=v.device)
    return eye + a * K + b * (K @ K)


def _normalize(x: Tensor, eps: float) -> Tensor:
    """``x / max(|x|, eps)`` along the last dimension, with finite gradients at ``x = 0``."""
    norm_sq = (x * x).sum(-1, keepdim=True)
    return x / torch.sqrt(torch.clamp(norm_sq, min=eps * eps))
