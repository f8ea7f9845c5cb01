"""Tests for mlanet.geometry.rotations."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from mlanet.geometry.rotations import (
    axis_angle_to_matrix,
    euler_to_matrix,
    euler_to_rotation_6d,
    matrix_to_euler,
    matrix_to_rotation_6d,
    rotation_6d_to_euler,
    rotation_6d_to_matrix,
)

DTYPES = [torch.float32, torch.float64]


def _tol(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-12


def _random_angles(n: int, dtype: torch.dtype, seed: int = 0, yaw_margin: float = 0.05) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    pitch = (2 * u[:, 0] - 1) * (math.pi - 1e-3)
    yaw = (2 * u[:, 1] - 1) * (math.pi / 2 - yaw_margin)
    roll = (2 * u[:, 2] - 1) * (math.pi - 1e-3)
    return torch.stack([pitch, yaw, roll], dim=-1).to(dtype)


def _assert_rotation(R: torch.Tensor, atol: float) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol, rtol=0)


def _elementary(axis: str, a: float) -> torch.Tensor:
    c, s = math.cos(a), math.sin(a)
    m = {
        "x": [[1, 0, 0], [0, c, -s], [0, s, c]],
        "y": [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        "z": [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    }[axis]
    return torch.tensor(m, dtype=torch.float64)


# ---------------------------------------------------------------------------- euler


def test_known_values_single_axes() -> None:
    q = math.pi / 2
    ez = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    ey = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    ex = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # yaw +90 degrees maps +z to +x
    R = euler_to_matrix(torch.tensor([0.0, q, 0.0], dtype=torch.float64))
    torch.testing.assert_close(R @ ez, ex, atol=1e-15, rtol=0)
    # pitch +90 degrees maps +y to +z
    R = euler_to_matrix(torch.tensor([q, 0.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(R @ ey, ez, atol=1e-15, rtol=0)
    # roll +90 degrees maps +x to +y
    R = euler_to_matrix(torch.tensor([0.0, 0.0, q], dtype=torch.float64))
    torch.testing.assert_close(R @ ex, ey, atol=1e-15, rtol=0)


def test_composition_order_and_scipy_agreement() -> None:
    p, y, r = 0.3, -0.7, 1.1
    R = euler_to_matrix(torch.tensor([p, y, r], dtype=torch.float64))
    expected = _elementary("z", r) @ _elementary("y", y) @ _elementary("x", p)
    torch.testing.assert_close(R, expected, atol=1e-15, rtol=0)
    # scipy's lower-case "xyz" is extrinsic x, then y, then z: Rz @ Ry @ Rx.
    angles = _random_angles(16, torch.float64, seed=3)
    ref = torch.from_numpy(Rotation.from_euler("xyz", angles.numpy()).as_matrix())
    torch.testing.assert_close(euler_to_matrix(angles), ref, atol=1e-14, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_euler_round_trip(dtype: torch.dtype) -> None:
    angles = _random_angles(256, dtype)
    R = euler_to_matrix(angles)
    _assert_rotation(R, atol=10 * _tol(dtype))
    back = matrix_to_euler(R)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(back, angles, atol=atol, rtol=0)
    assert back.dtype == dtype


def test_leading_batch_dims() -> None:
    angles = _random_angles(24, torch.float64).reshape(2, 3, 4, 3)
    R = euler_to_matrix(angles)
    assert R.shape == (2, 3, 4, 3, 3)
    assert matrix_to_euler(R).shape == (2, 3, 4, 3)
    assert matrix_to_rotation_6d(R).shape == (2, 3, 4, 6)
    assert axis_angle_to_matrix(angles).shape == (2, 3, 4, 3, 3)
    assert euler_to_matrix(torch.zeros(3)).shape == (3, 3)


def test_yaw_range() -> None:
    # Any rotation (here: random ones from scipy) decomposes with yaw in [-pi/2, pi/2].
    R = torch.from_numpy(Rotation.random(200, random_state=1).as_matrix())
    e = matrix_to_euler(R)
    assert bool((e[:, 1].abs() <= math.pi / 2 + 1e-12).all())
    assert bool((e[:, [0, 2]].abs() <= math.pi + 1e-12).all())
    torch.testing.assert_close(euler_to_matrix(e), R, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("yaw", [math.pi / 2, -math.pi / 2])
def test_gimbal_lock(dtype: torch.dtype, yaw: float) -> None:
    pitch = torch.tensor([0.4, -1.2, 2.5, 0.0], dtype=torch.float64)
    roll = torch.tensor([-0.3, 0.9, -2.0, 1.0], dtype=torch.float64)
    angles = torch.stack([pitch, torch.full_like(pitch, yaw), roll], dim=-1)
    R = euler_to_matrix(angles).to(dtype)
    e = matrix_to_euler(R)
    assert bool(torch.isfinite(e).all())
    torch.testing.assert_close(e[:, 0], torch.zeros_like(e[:, 0]))  # pitch = 0 by convention
    torch.testing.assert_close(e[:, 1], torch.full_like(e[:, 1], yaw), atol=1e-3 if dtype == torch.float32 else 1e-7, rtol=0)
    torch.testing.assert_close(euler_to_matrix(e), R, atol=10 * _tol(dtype), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("offset", [1e-9, 1e-7, 1e-5, 1e-3])
def test_near_gimbal_lock_reconstructs_matrix(dtype: torch.dtype, offset: float) -> None:
    angles = torch.tensor([[0.7, math.pi / 2 - offset, -0.4], [-2.0, -math.pi / 2 + offset, 1.3]], dtype=torch.float64)
    R = euler_to_matrix(angles).to(dtype)
    e = matrix_to_euler(R)
    torch.testing.assert_close(euler_to_matrix(e), R, atol=10 * _tol(dtype), rtol=0)


def test_matrix_to_euler_gradients_finite_at_gimbal_lock() -> None:
    R = euler_to_matrix(torch.tensor([0.0, math.pi / 2, 0.3], dtype=torch.float64)).requires_grad_(True)
    matrix_to_euler(R).sum().backward()
    assert bool(torch.isfinite(R.grad).all())


# ---------------------------------------------------------------------------- 6D


@pytest.mark.parametrize("dtype", DTYPES)
def test_6d_round_trip(dtype: torch.dtype) -> None:
    R = euler_to_matrix(_random_angles(64, dtype, seed=5))
    x = matrix_to_rotation_6d(R)
    torch.testing.assert_close(x[:, :3], R[:, :, 0])
    torch.testing.assert_close(x[:, 3:], R[:, :, 1])
    torch.testing.assert_close(rotation_6d_to_matrix(x), R, atol=10 * _tol(dtype), rtol=0)


def test_6d_from_arbitrary_vectors_is_rotation() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(128, 6, generator=g, dtype=torch.float64) * 3
    R = rotation_6d_to_matrix(x)
    _assert_rotation(R, atol=1e-12)
    # first column is the normalised first 3-vector; second lies in span(a1, a2)
    torch.testing.assert_close(R[:, :, 0], x[:, :3] / x[:, :3].norm(dim=-1, keepdim=True))
    normal = torch.linalg.cross(x[:, :3], x[:, 3:], dim=-1)
    torch.testing.assert_close((R[:, :, 1] * normal).sum(-1), torch.zeros(128, dtype=torch.float64), atol=1e-12, rtol=0)


def test_euler_6d_wrappers() -> None:
    angles = _random_angles(32, torch.float64, seed=9)
    x = euler_to_rotation_6d(angles)
    assert x.shape == (32, 6)
    torch.testing.assert_close(rotation_6d_to_euler(x), angles, atol=1e-10, rtol=0)


# ---------------------------------------------------------------------------- axis-angle


def test_axis_angle_known_values_and_scipy() -> None:
    a = 0.8
    for i in range(3):
        v = torch.zeros(3, dtype=torch.float64)
        v[i] = a
        e = torch.zeros(3, dtype=torch.float64)
        e[i] = a  # pitch about x, yaw about y, roll about z
        torch.testing.assert_close(axis_angle_to_matrix(v), euler_to_matrix(e), atol=1e-15, rtol=0)
    torch.testing.assert_close(axis_angle_to_matrix(torch.zeros(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(11)
    v = torch.randn(64, 3, generator=g, dtype=torch.float64)
    v = torch.cat([v, v * 1e-4, v * 1e-9, 3.0 * v / v.norm(dim=-1, keepdim=True)])
    ref = torch.from_numpy(Rotation.from_rotvec(v.numpy()).as_matrix())
    torch.testing.assert_close(axis_angle_to_matrix(v), ref, atol=1e-14, rtol=0)


def test_axis_angle_continuous_across_small_angle_branch() -> None:
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    axis = axis / axis.norm()
    thetas = torch.tensor([1e-3 * (1 - 1e-9), 1e-3 * (1 + 1e-9)], dtype=torch.float64)
    R = axis_angle_to_matrix(thetas[:, None] * axis)
    torch.testing.assert_close(R[0], R[1], atol=1e-11, rtol=0)
    _assert_rotation(axis_angle_to_matrix(torch.randn(50, 3) * 2), atol=1e-5)


# ---------------------------------------------------------------------------- gradients


def test_gradcheck_euler_to_matrix() -> None:
    angles = _random_angles(3, torch.float64, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(euler_to_matrix, (angles,))


def test_gradcheck_rotation_6d_to_matrix() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(rotation_6d_to_matrix, (x,))


@pytest.mark.parametrize("scale", [1.0, 1e-4, 0.0])
def test_gradcheck_axis_angle_to_matrix(scale: float) -> None:
    g = torch.Generator().manual_seed(6)
    v = (torch.randn(3, 3, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (v,))


def test_gradcheck_matrix_to_euler_away_from_lock() -> None:
    R = euler_to_matrix(_random_angles(2, torch.float64, seed=8, yaw_margin=0.3)).requires_grad_(True)
    assert torch.autograd.gradcheck(matrix_to_euler, (R,))


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "fn, shape",
    [
        (euler_to_matrix, (4, 2)),
        (axis_angle_to_matrix, (4,)),
        (rotation_6d_to_matrix, (4, 3)),
        (matrix_to_euler, (4, 3)),
        (matrix_to_euler, (3, 4)),
        (matrix_to_rotation_6d, (2, 2, 3)),
        (euler_to_matrix, ()),
    ],
)
def test_bad_shapes_raise(fn, shape) -> None:
    with pytest.raises(ValueError):
        fn(torch.zeros(shape))


def test_integer_input_raises() -> None:
    with pytest.raises(ValueError):
        euler_to_matrix(torch.zeros(3, dtype=torch.long))
