"""NumPy twins of :mod:`mlanet.geometry.rotations` for small CPU batches: the ones the CPU runtime uses.

The runtime decodes one to a few faces per frame; at that size each PyTorch call costs more than
its arithmetic (a few microseconds of dispatch per tiny op), so the per-frame mesh and landmark
maths of the CPU pipeline (:mod:`mlanet.edge.reconstruct`, :mod:`mlanet.edge.mesh_topology`) runs
on these; per-face pose maths runs on the plain-Python :mod:`mlanet.geometry.rotations_scalar`.
Same conventions and formulas as the PyTorch functions (which stay the definition: training,
export and the GPU path use them); ``tests/test_rotations_numpy.py`` checks every function
against its twin. Not differentiable; float64 recommended.

Shapes: any leading batch dimensions ``...``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cross", "euler_to_matrix"]


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
