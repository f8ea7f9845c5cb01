"""The NumPy and plain-Python rotation twins (mlanet.geometry.rotations_numpy, rotations_scalar) against the
PyTorch functions that define them."""

import math

import numpy as np
import torch

from mlanet.edge.reconstruct import _rotation_z_to
from mlanet.geometry import rotations as rt
from mlanet.geometry import rotations_numpy as rn
from mlanet.geometry import rotations_scalar as rs


def _angles(n=400, seed=0):
    rng = np.random.default_rng(seed)
    a = np.stack([rng.uniform(-math.pi, math.pi, n), rng.uniform(-math.pi / 2, math.pi / 2, n),
                  rng.uniform(-math.pi, math.pi, n)], -1)
    a[:5, 1] = [math.pi / 2, -math.pi / 2, math.pi / 2 - 1e-9, 0.0, -math.pi / 2 + 1e-7]  # gimbal lock and near it
    return a


def test_euler_matrix_matches_torch():
    a = _angles()
    R = rn.euler_to_matrix(a)
    np.testing.assert_allclose(R, rt.euler_to_matrix(torch.from_numpy(a)).numpy(), atol=1e-15)
    assert R.dtype == np.float64 and rn.euler_to_matrix(a.astype(np.float32)).dtype == np.float32


def test_cross_matches_numpy_cross_on_any_batch_shape():
    rng = np.random.default_rng(3)
    for shape in ((3,), (7, 3), (2, 5, 3)):
        a, b = rng.standard_normal(shape), rng.standard_normal(shape)
        np.testing.assert_allclose(rn.cross(a, b), np.cross(a, b), rtol=1e-12, atol=1e-15)
    a32 = rng.standard_normal((4, 3)).astype(np.float32)
    assert rn.cross(a32, a32).dtype == np.float32 and not rn.cross(a32, a32).any()


def test_scalar_twins_match_torch_gimbal_lock_included():
    a = _angles(n=200, seed=4)
    R_ref = rt.euler_to_matrix(torch.from_numpy(a)).numpy()
    for angles, ref in zip(a.tolist(), R_ref):
        R = rs.euler_to_matrix(*angles)
        np.testing.assert_allclose(np.array(R), ref, atol=1e-15)
        np.testing.assert_allclose(rs.matrix_to_euler(R), rt.matrix_to_euler(torch.from_numpy(ref)).numpy(), atol=1e-12)
    rng = np.random.default_rng(6)
    d = rng.normal(size=(30, 3))
    d[:, 2] = np.abs(d[:, 2]) + 0.1
    d[0] = [0.0, 0.0, 1.0]
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    ref = _rotation_z_to(torch.from_numpy(d)).numpy()
    for di, Ri in zip(d.tolist(), ref):
        np.testing.assert_allclose(np.array(rs.rotation_z_to(*di)), Ri, atol=1e-14)
    A, B = rs.euler_to_matrix(0.3, -0.2, 1.1), rs.euler_to_matrix(-1.0, 0.4, 0.2)
    np.testing.assert_allclose(np.array(rs.matmul(A, B)), np.array(A) @ np.array(B), atol=1e-15)


def test_scalar_6d_twins_match_torch():
    R = rt.euler_to_matrix(torch.from_numpy(_angles(n=100, seed=7))).numpy()
    r6 = rt.matrix_to_rotation_6d(torch.from_numpy(R)).numpy()
    noisy = r6 + np.random.default_rng(8).normal(0, 0.05, r6.shape)
    ref = rt.rotation_6d_to_matrix(torch.from_numpy(noisy)).numpy()
    for Ri, r6i, ni, refi in zip(R, r6, noisy, ref):
        assert rs.matrix_to_rotation_6d(tuple(map(tuple, Ri.tolist()))) == tuple(r6i.tolist())
        np.testing.assert_allclose(np.array(rs.rotation_6d_to_matrix(ni.tolist())), refi, atol=1e-14)
