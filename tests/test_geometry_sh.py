"""Tests for mlanet.geometry.sh."""

from __future__ import annotations

import math

import pytest
import torch

from mlanet.geometry import sh
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.geometry.sh import directional_light_sh, sh_basis, sh_irradiance, sh_shade
from mlanet.params import UNIT_AMBIENT_SH_DC


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``n`` nearly uniform unit vectors ``(n, 3)``."""
    i = torch.arange(n, dtype=dtype) + 0.5
    z = 1.0 - 2.0 * i / n
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    r = torch.sqrt(1.0 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_constants() -> None:
    assert sh.SH_C0 == pytest.approx(0.282095, abs=1e-6)
    assert sh.SH_C1 == pytest.approx(0.488603, abs=1e-6)
    assert sh.SH_C2_XY == pytest.approx(1.092548, abs=1e-6)
    assert sh.SH_C2_Z == pytest.approx(0.315392, abs=1e-6)
    assert sh.SH_C2_XX_YY == pytest.approx(0.546274, abs=1e-6)
    assert (sh.LAMBERT_A0, sh.LAMBERT_A1, sh.LAMBERT_A2) == pytest.approx((math.pi, 2 * math.pi / 3, math.pi / 4))
    assert len(sh.LAMBERT_FACTORS) == len(sh.SH_BAND) == 9
    assert UNIT_AMBIENT_SH_DC * sh.SH_C0 * sh.LAMBERT_A0 == pytest.approx(1.0, abs=1e-15)


def test_basis_order_known_values() -> None:
    c0, c1, cxy, cz, cxx = sh.SH_C0, sh.SH_C1, sh.SH_C2_XY, sh.SH_C2_Z, sh.SH_C2_XX_YY
    r = 1 / math.sqrt(2)
    cases = {
        (1.0, 0.0, 0.0): [c0, 0, 0, c1, 0, 0, -cz, 0, cxx],
        (0.0, 1.0, 0.0): [c0, c1, 0, 0, 0, 0, -cz, 0, -cxx],
        (0.0, 0.0, 1.0): [c0, 0, c1, 0, 0, 0, 2 * cz, 0, 0],
        (r, r, 0.0): [c0, c1 * r, 0, c1 * r, cxy / 2, 0, -cz, 0, 0],
        (0.0, r, r): [c0, c1 * r, c1 * r, 0, 0, cxy / 2, cz / 2, 0, -cxx / 2],
        (r, 0.0, r): [c0, 0, c1 * r, c1 * r, 0, 0, cz / 2, cxy / 2, cxx / 2],
    }
    n = torch.tensor(list(cases), dtype=torch.float64)
    expected = torch.tensor(list(cases.values()), dtype=torch.float64)
    torch.testing.assert_close(sh_basis(n), expected, atol=1e-15, rtol=0)


def test_basis_is_orthonormal() -> None:
    n = fibonacci_sphere(20000)
    Y = sh_basis(n)
    gram = Y.T @ Y * (4 * math.pi / len(n))
    torch.testing.assert_close(gram, torch.eye(9, dtype=torch.float64), atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unit_ambient_gives_unit_irradiance(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    normals = _unit(torch.randn(2, 50, 3, generator=g, dtype=dtype))
    lighting = torch.zeros(2, 3, 9, dtype=dtype)
    lighting[:, :, 0] = UNIT_AMBIENT_SH_DC
    E = sh_irradiance(normals, lighting)
    assert E.shape == (2, 50, 3) and E.dtype == dtype
    torch.testing.assert_close(E, torch.ones_like(E), atol=1e-6, rtol=0)
    albedo = torch.rand(2, 50, 3, generator=g, dtype=dtype)
    torch.testing.assert_close(sh_shade(albedo, normals, lighting), albedo, atol=1e-6, rtol=0)


def test_directional_light_analytic() -> None:
    color = torch.tensor([0.8, 0.5, 0.2], dtype=torch.float64)
    light = _unit(torch.tensor([0.3, -0.4, -0.8], dtype=torch.float64))
    L = directional_light_sh(light, color)
    assert L.shape == (3, 9)
    # at n = light direction: sum_l A_l (2l + 1) / (4 pi) = 1/4 + 1/2 + 5/16
    E_peak = sh_irradiance(light[None, None], L[None])[0, 0]
    torch.testing.assert_close(E_peak, 1.0625 * color, atol=1e-14, rtol=0)
    # everywhere: E(t) = 1/4 + t/2 + 5/32 (3 t^2 - 1) with t = n . l (Legendre expansion)
    normals = fibonacci_sphere(4000)
    E = sh_irradiance(normals[None], L[None])[0]
    t = normals @ light
    analytic = (0.25 + 0.5 * t + 5.0 / 32.0 * (3 * t * t - 1))[:, None] * color
    torch.testing.assert_close(E, analytic, atol=1e-13, rtol=0)
    # ... which approximates the clamped cosine within 3/32 (the error at grazing, t = 0)
    err = (E - torch.clamp(t, min=0)[:, None] * color).abs() / color
    assert float(err.max()) <= 3.0 / 32.0 + 1e-12
    assert float(err.max()) > 0.093  # the bound is attained near t = 0


def test_rotation_equivariance() -> None:
    g = torch.Generator().manual_seed(1)
    normals = _unit(torch.randn(1, 64, 3, generator=g, dtype=torch.float64))
    dirs = _unit(torch.randn(3, 3, generator=g, dtype=torch.float64))
    colors = torch.rand(3, 3, generator=g, dtype=torch.float64)
    lighting = directional_light_sh(dirs, colors).sum(0, keepdim=True)  # (1, 3, 9), SH is linear
    lighting[:, :, 0] += 0.3
    R = euler_to_matrix(torch.tensor([0.4, -1.1, 2.3], dtype=torch.float64))
    rotated = directional_light_sh(dirs @ R.T, colors).sum(0, keepdim=True)
    rotated[:, :, 0] += 0.3  # the DC term is rotation invariant
    E = sh_irradiance(normals, lighting)
    E_rot = sh_irradiance(normals @ R.T, rotated)
    torch.testing.assert_close(E_rot, E, atol=1e-13, rtol=0)


def test_channel_major_layout_and_broadcast() -> None:
    g = torch.Generator().manual_seed(2)
    normals = _unit(torch.randn(4, 10, 3, generator=g, dtype=torch.float64))
    lighting = torch.zeros(1, 3, 9, dtype=torch.float64)
    lighting[0, 1, :] = torch.randn(9, generator=g, dtype=torch.float64)  # green only
    E = sh_irradiance(normals, lighting)  # (1, 3, 9) broadcasts over B = 4
    assert E.shape == (4, 10, 3)
    assert bool((E[..., 0] == 0).all()) and bool((E[..., 2] == 0).all())
    assert bool((E[..., 1] != 0).all())
    flat = lighting.reshape(1, 27)  # (R0..R8, G0..G8, B0..B8)
    torch.testing.assert_close(flat[0, 9:18], lighting[0, 1])


def test_directional_light_batched() -> None:
    d = _unit(torch.randn(2, 5, 3))
    c = torch.rand(2, 5, 3)
    L = directional_light_sh(d, c)
    assert L.shape == (2, 5, 3, 9)
    torch.testing.assert_close(L[1, 2, 0], c[1, 2, 0] * sh_basis(d[1, 2]))


def test_gradcheck() -> None:
    g = torch.Generator().manual_seed(3)
    normals = _unit(torch.randn(2, 4, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    lighting = torch.randn(2, 3, 9, generator=g, dtype=torch.float64).requires_grad_(True)
    albedo = torch.rand(2, 4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(sh_irradiance, (normals, lighting))
    assert torch.autograd.gradcheck(sh_shade, (albedo, normals, lighting))
    direction = _unit(torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    color = torch.rand(2, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(directional_light_sh, (direction, color))


@pytest.mark.parametrize(
    "normals_shape, lighting_shape",
    [
        ((2, 5, 3), (2, 9, 3)),
        ((2, 5, 3), (2, 27)),
        ((2, 5, 4), (2, 3, 9)),
        ((3,), (3, 9)),
        ((2, 5, 3), (3, 3, 9)),
    ],
)
def test_bad_shapes_raise(normals_shape, lighting_shape) -> None:
    with pytest.raises(ValueError):
        sh_irradiance(torch.zeros(normals_shape), torch.zeros(lighting_shape))


def test_bad_shapes_raise_basis_shade_directional() -> None:
    with pytest.raises(ValueError):
        sh_basis(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        sh_shade(torch.zeros(2, 6, 3), torch.zeros(2, 5, 3), torch.zeros(2, 3, 9))
    with pytest.raises(ValueError):
        sh_shade(torch.zeros(2, 5, 4), torch.zeros(2, 5, 3), torch.zeros(2, 3, 9))
    with pytest.raises(ValueError):
        directional_light_sh(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError):
        sh_basis(torch.zeros(4, 3, dtype=torch.long))
