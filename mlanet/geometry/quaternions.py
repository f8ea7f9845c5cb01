"""Rotation matrices <-> unit quaternions (``xyzw``), in NumPy (file writers and network senders).

The batched, differentiable rotations of the training stack are in :mod:`mlanet.geometry.rotations`
(PyTorch); these are for output formats that store quaternions (glTF, the VMC protocol).
"""

from __future__ import annotations

import numpy as np


def matrices_to_quaternions(R: np.ndarray) -> np.ndarray:
    """Unit quaternions (N, 4) ``xyzw`` of rotation matrices (N, 3, 3), sign-continuous.

    Shepperd's method per matrix (numerically safe for every angle), normalised; each
    quaternion's sign is then chosen so that its dot product with the previous one is >= 0, so
    that interpolating consecutive keyframes never takes the long way round.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[1:] != (3, 3):
        raise ValueError(f"rotations must be (N, 3, 3), got {R.shape}")
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    trace = m00 + m11 + m22
    # Four candidate formulas; pick the one with the largest pivot per matrix.
    cand = np.stack([trace, m00, m11, m22], axis=1)
    pick = np.argmax(cand, axis=1)
    q = np.empty((len(R), 4))  # x, y, z, w
    for k in range(4):
        sel = pick == k
        if not np.any(sel):
            continue
        r = R[sel]
        if k == 0:
            s = 2.0 * np.sqrt(np.maximum(1.0 + trace[sel], 1e-300))
            q[sel] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s,
                               (r[:, 1, 0] - r[:, 0, 1]) / s, 0.25 * s], axis=1)
        elif k == 1:
            s = 2.0 * np.sqrt(np.maximum(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2], 1e-300))
            q[sel] = np.stack([0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s,
                               (r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 2, 1] - r[:, 1, 2]) / s], axis=1)
        elif k == 2:
            s = 2.0 * np.sqrt(np.maximum(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2], 1e-300))
            q[sel] = np.stack([(r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s,
                               (r[:, 1, 2] + r[:, 2, 1]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s], axis=1)
        else:
            s = 2.0 * np.sqrt(np.maximum(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1], 1e-300))
            q[sel] = np.stack([(r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s,
                               0.25 * s, (r[:, 1, 0] - r[:, 0, 1]) / s], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    for i in range(1, len(q)):
        if np.dot(q[i], q[i - 1]) < 0.0:
            q[i] = -q[i]
    return q


def quaternions_to_matrices(q: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) of quaternions (N, 4) ``xyzw`` (normalised first)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
