"""Second-order real spherical harmonics and Lambertian SH shading (batched, differentiable).

Basis order (``mlanet.conventions``), evaluated on *unit* normals ``n = (x, y, z)`` in the
camera frame:

====  =======  =========================================
k     name     Y_k(n)
====  =======  =========================================
0     Y00      ``SH_C0``                      = 1 / (2 sqrt(pi))
1     Y1-1     ``SH_C1 * y``                  SH_C1 = sqrt(3 / (4 pi))
2     Y10      ``SH_C1 * z``
3     Y11      ``SH_C1 * x``
4     Y2-2     ``SH_C2_XY * x * y``           SH_C2_XY = sqrt(15 / (4 pi))
5     Y2-1     ``SH_C2_XY * y * z``
6     Y20      ``SH_C2_Z * (3 z^2 - 1)``      SH_C2_Z = sqrt(5 / (16 pi))
7     Y21      ``SH_C2_XY * x * z``
8     Y22      ``SH_C2_XX_YY * (x^2 - y^2)``  SH_C2_XX_YY = sqrt(15 / (16 pi))
====  =======  =========================================

Lighting is channel-major ``(B, 3, 9)``: ``lighting[:, c, k]`` is the coefficient of ``Y_k``
for colour channel ``c`` (RGB) of the incident radiance. Irradiance of a Lambertian surface
(Ramamoorthi & Hanrahan 2001, "An Efficient Representation for Irradiance Environment Maps")
is ``E_c(n) = sum_k A_band(k) * L_ck * Y_k(n)`` with the clamped-cosine convolution factors
``A0 = pi``, ``A1 = 2 pi / 3``, ``A2 = pi / 4``. Radiance and irradiance are unitless here
(scaled so that ``L00 = 2 / sqrt(pi)`` alone gives ``E = 1``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mlanet.conventions import COLOUR_CHANNELS, SH_COEFFS_PER_CHANNEL

__all__ = [
    "SH_C0",
    "SH_C1",
    "SH_C2_XY",
    "SH_C2_Z",
    "SH_C2_XX_YY",
    "LAMBERT_A0",
    "LAMBERT_A1",
    "LAMBERT_A2",
    "SH_BAND",
    "LAMBERT_FACTORS",
    "sh_basis",
    "sh_irradiance",
    "sh_shade",
    "directional_light_sh",
]

#: Y00 = 1 / (2 sqrt(pi)) ~= 0.282095.
SH_C0: float = 0.5 / math.sqrt(math.pi)
#: Band-1 constant sqrt(3 / (4 pi)) ~= 0.488603 (times y, z, x).
SH_C1: float = math.sqrt(3.0 / (4.0 * math.pi))
#: Band-2 constant sqrt(15 / (4 pi)) ~= 1.092548 (times xy, yz, xz).
SH_C2_XY: float = math.sqrt(15.0 / (4.0 * math.pi))
#: Band-2 constant sqrt(5 / (16 pi)) ~= 0.315392 (times 3 z^2 - 1).
SH_C2_Z: float = math.sqrt(5.0 / (16.0 * math.pi))
#: Band-2 constant sqrt(15 / (16 pi)) ~= 0.546274 (times x^2 - y^2).
SH_C2_XX_YY: float = math.sqrt(15.0 / (16.0 * math.pi))

#: Clamped-cosine (Lambertian) convolution factor of band 0: pi.
LAMBERT_A0: float = math.pi
#: Clamped-cosine convolution factor of band 1: 2 pi / 3.
LAMBERT_A1: float = 2.0 * math.pi / 3.0
#: Clamped-cosine convolution factor of band 2: pi / 4.
LAMBERT_A2: float = math.pi / 4.0

#: Band l of each of the 9 coefficients, in basis order.
SH_BAND: tuple[int, ...] = (0, 1, 1, 1, 2, 2, 2, 2, 2)
#: Lambertian factor A_band(k) of each of the 9 coefficients, in basis order.
LAMBERT_FACTORS: tuple[float, ...] = tuple((LAMBERT_A0, LAMBERT_A1, LAMBERT_A2)[b] for b in SH_BAND)


def _check_vectors(x: Tensor, name: str, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (..., 3) ({what}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_lighting(lighting: Tensor) -> None:
    if not isinstance(lighting, Tensor):
        raise TypeError(f"lighting must be a torch.Tensor, got {type(lighting).__name__}")
    expected = (COLOUR_CHANNELS, SH_COEFFS_PER_CHANNEL)
    if lighting.ndim < 2 or tuple(lighting.shape[-2:]) != expected:
        raise ValueError(
            f"lighting must have shape (B, {expected[0]}, {expected[1]}) (channel-major SH), "
            f"got {tuple(lighting.shape)}"
        )
    if not lighting.is_floating_point():
        raise ValueError(f"lighting must be a floating-point tensor, got dtype {lighting.dtype}")


def sh_basis(normals: Tensor) -> Tensor:
    """The 9 real SH basis functions ``(..., 9)`` at unit normals ``(..., 3)`` (camera frame).

    Normals are not renormalised; the formulas are the polynomial forms listed in the module
    docstring, so a non-unit input gives the polynomial's value, not ``Y_k(n / |n|)``.
    """
    _check_vectors(normals, "normals", "unit vectors")
    x, y, z = normals.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, SH_C0),
            SH_C1 * y,
            SH_C1 * z,
            SH_C1 * x,
            SH_C2_XY * x * y,
            SH_C2_XY * y * z,
            SH_C2_Z * (3.0 * z * z - 1.0),
            SH_C2_XY * x * z,
            SH_C2_XX_YY * (x * x - y * y),
        ],
        dim=-1,
    )


def sh_irradiance(normals: Tensor, lighting: Tensor) -> Tensor:
    """Lambertian irradiance ``(B, V, 3)`` at unit normals ``(B, V, 3)`` under SH lighting ``(B, 3, 9)``.

    ``E_c(n) = sum_k A_band(k) * lighting[b, c, k] * Y_k(n)``. Batch dimensions broadcast
    (e.g. ``(1, 3, 9)`` lighting with ``(B, V, 3)`` normals). Not clamped: strongly
    directional lighting can give slightly negative irradiance on back-facing normals.
    """
    _check_vectors(normals, "normals", "unit vectors")
    _check_lighting(lighting)
    if normals.ndim < 2:
        raise ValueError(f"normals must have shape (B, V, 3), got {tuple(normals.shape)}")
    try:
        torch.broadcast_shapes(normals.shape[:-2], lighting.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(
            f"batch dimensions of normals {tuple(normals.shape)} and lighting "
            f"{tuple(lighting.shape)} do not match"
        ) from exc
    basis = sh_basis(normals)  # (..., V, 9)
    factors = torch.tensor(LAMBERT_FACTORS, dtype=lighting.dtype, device=lighting.device)
    return basis @ (lighting * factors).transpose(-1, -2)  # (..., V, 9) @ (..., 9, 3)


def sh_shade(albedo: Tensor, normals: Tensor, lighting: Tensor) -> Tensor:
    """Lambertian shaded colour ``(B, V, 3)`` = ``albedo (B, V, 3) * sh_irradiance(normals, lighting)``.

    ``albedo`` is linear RGB in [0, 1]; ``normals`` unit, camera frame; ``lighting (B, 3, 9)``.
    """
    irradiance = sh_irradiance(normals, lighting)
    if not isinstance(albedo, Tensor):
        raise TypeError(f"albedo must be a torch.Tensor, got {type(albedo).__name__}")
    if albedo.ndim < 2 or albedo.shape[-1] != COLOUR_CHANNELS:
        raise ValueError(f"albedo must have shape (B, V, 3), got {tuple(albedo.shape)}")
    try:
        torch.broadcast_shapes(albedo.shape, irradiance.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"albedo {tuple(albedo.shape)} does not match normals {tuple(normals.shape)}"
        ) from exc
    return albedo * irradiance


def directional_light_sh(direction: Tensor, color: Tensor) -> Tensor:
    """SH lighting ``(..., 3, 9)`` of a distant light: ``L_ck = color_c * Y_k(direction)``.

    ``direction (..., 3)`` is the unit vector from the surface *towards* the light, camera
    frame; ``color (..., 3)`` is its RGB intensity. This is the order-2 projection of a delta
    light; with it, :func:`sh_irradiance` approximates ``max(0, n . direction) * color`` (exact
    value ``1.0625 * color`` at ``n = direction``; largest error ``3/32 * color`` at grazing
    ``n . direction = 0``). Leading dimensions broadcast.
    """
    _check_vectors(direction, "direction", "unit vector towards the light")
    _check_vectors(color, "color", "RGB intensity")
    basis = sh_basis(direction)  # (..., 9)
    return color[..., :, None] * basis[..., None, :]
