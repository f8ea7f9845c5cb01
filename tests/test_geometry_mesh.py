"""Tests for mlanet.geometry.mesh."""

from __future__ import annotations

import math

import pytest
import torch

from mlanet.geometry.mesh import face_normals, vertex_normals


def uv_sphere(n_lat: int = 12, n_lon: int = 24, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit UV sphere ``(V, 3)``, int32 triangles ``(F, 3)`` wound so that normals point outwards.

    Quads (i, j), (i+1, j), (i+1, j+1), (i, j+1) in (polar, azimuth) index order: the edges
    along d/dtheta then d/dphi have cross product e_theta x e_phi = e_r (outwards).
    """
    verts = [(0.0, 0.0, 1.0)]
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon
            verts.append((math.sin(theta) * math.cos(phi), math.sin(theta) * math.sin(phi), math.cos(theta)))
    verts.append((0.0, 0.0, -1.0))
    south = len(verts) - 1

    def ring(i: int, j: int) -> int:  # i in 1..n_lat-1
        return 1 + (i - 1) * n_lon + (j % n_lon)

    tris = []
    for j in range(n_lon):
        tris.append((0, ring(1, j), ring(1, j + 1)))
        tris.append((ring(n_lat - 1, j), south, ring(n_lat - 1, j + 1)))
    for i in range(1, n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = ring(i, j), ring(i + 1, j), ring(i + 1, j + 1), ring(i, j + 1)
            tris.append((a, b, c))
            tris.append((a, c, d))
    return torch.tensor(verts, dtype=dtype), torch.tensor(tris, dtype=torch.int32)


def flat_quad(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=dtype)
    t = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return v[None], t


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_quad_exact(dtype: torch.dtype) -> None:
    v, t = flat_quad(dtype)
    fn = face_normals(v, t)
    # each triangle has area 1, so the unnormalised normal has length 2
    torch.testing.assert_close(fn, torch.tensor([[[0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]], dtype=dtype), atol=0, rtol=0)
    vn = vertex_normals(v, t)
    assert vn.dtype == dtype
    torch.testing.assert_close(vn, torch.tensor([0.0, 0.0, 1.0], dtype=dtype).expand(1, 4, 3), atol=0, rtol=0)


def test_face_normal_length_is_twice_area() -> None:
    v = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 4.0]]], dtype=torch.float64)
    t = torch.tensor([[0, 1, 2]])
    fn = face_normals(v, t)
    torch.testing.assert_close(fn, torch.tensor([[[0.0, -12.0, 0.0]]], dtype=torch.float64))
    assert fn.norm() == 2 * 6.0


def test_closed_sphere_normals_are_radial_and_outward() -> None:
    v, t = uv_sphere()
    fn = face_normals(v[None], t)[0]
    centroids = v[t.long()].mean(dim=1)
    assert bool(((fn * centroids).sum(-1) > 0).all()), "sphere faces must be wound outwards"
    vn = vertex_normals(v[None], t)[0]
    torch.testing.assert_close(vn.norm(dim=-1), torch.ones(len(v), dtype=torch.float64), atol=1e-12, rtol=0)
    cos = (vn * v).sum(-1)  # v is unit: the radial direction
    # the UV sphere's uneven triangle areas near the poles tilt normals by up to ~2.6 degrees
    assert float(cos.min()) > math.cos(math.radians(3.0))
    # ... but by mirror symmetry the equator ring and the poles are exactly radial
    exact = (v[:, 2].abs() < 1e-12) | (v[:, 2].abs() == 1.0)
    assert int(exact.sum()) == 24 + 2
    torch.testing.assert_close(vn[exact], v[exact], atol=1e-12, rtol=0)
    # shift and scale: normals are translation and scale invariant
    vn2 = vertex_normals((v * 0.1 + torch.tensor([0.3, -0.2, 1.5], dtype=torch.float64))[None], t)[0]
    torch.testing.assert_close(vn2, vn, atol=1e-12, rtol=0)


def test_winding_flip_flips_normals() -> None:
    v, t = uv_sphere(6, 8)
    flipped = t[:, [0, 2, 1]]
    torch.testing.assert_close(face_normals(v[None], flipped), -face_normals(v[None], t))
    torch.testing.assert_close(vertex_normals(v[None], flipped), -vertex_normals(v[None], t))


def test_batch_independent_and_index_dtypes() -> None:
    v, t = uv_sphere(5, 7)
    g = torch.Generator().manual_seed(0)
    batch = torch.stack([v, v + 0.05 * torch.randn(v.shape, generator=g, dtype=v.dtype)])
    vn = vertex_normals(batch, t)
    assert vn.shape == (2, len(v), 3)
    torch.testing.assert_close(vn[1:], vertex_normals(batch[1:], t))
    torch.testing.assert_close(vn, vertex_normals(batch, t.long()))
    # reference: explicit loop over faces
    fn = face_normals(batch, t)
    ref = torch.zeros_like(batch)
    for f, (a, b, c) in enumerate(t.tolist()):
        for k in (a, b, c):
            ref[:, k] += fn[:, f]
    ref = ref / ref.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(vn, ref, atol=1e-12, rtol=0)


def test_isolated_vertex_gives_zero_without_nan() -> None:
    v, t = flat_quad()
    v = torch.cat([v, torch.tensor([[[5.0, 5.0, 5.0]]], dtype=torch.float64)], dim=1).requires_grad_(True)
    vn = vertex_normals(v, t)
    torch.testing.assert_close(vn[0, 4], torch.zeros(3, dtype=torch.float64), atol=0, rtol=0)
    (vn * torch.arange(15, dtype=torch.float64).reshape(1, 5, 3)).sum().backward()
    assert bool(torch.isfinite(v.grad).all())
    torch.testing.assert_close(v.grad[0, 4], torch.zeros(3, dtype=torch.float64), atol=0, rtol=0)


def test_degenerate_triangle_no_nan() -> None:
    v = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    vn = vertex_normals(v, torch.tensor([[0, 1, 2]]))
    assert bool((vn == 0).all())
    vn.sum().backward()
    assert bool(torch.isfinite(v.grad).all())


def test_gradcheck_small_mesh() -> None:
    # tetrahedron, outward winding, perturbed so that no symmetry hides errors
    v = torch.tensor(
        [[[0.0, 0.0, 0.0], [1.0, 0.1, 0.0], [0.2, 1.0, 0.1], [0.3, 0.2, 1.0]]], dtype=torch.float64
    ).requires_grad_(True)
    t = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda x: vertex_normals(x, t), (v,))
    assert torch.autograd.gradcheck(lambda x: face_normals(x, t), (v,))


@pytest.mark.parametrize(
    "verts_shape, tris",
    [
        ((4, 3), torch.tensor([[0, 1, 2]])),
        ((1, 4, 2), torch.tensor([[0, 1, 2]])),
        ((1, 4, 3), torch.tensor([[0, 1, 2, 3]])),
        ((1, 4, 3), torch.tensor([0, 1, 2])),
        ((1, 4, 3), torch.tensor([[0.0, 1.0, 2.0]])),
    ],
)
def test_bad_shapes_raise(verts_shape, tris) -> None:
    with pytest.raises(ValueError):
        face_normals(torch.zeros(verts_shape), tris)
    with pytest.raises(ValueError):
        vertex_normals(torch.zeros(verts_shape), tris)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    v, t = uv_sphere(8, 12, dtype=torch.float32)
    cpu = vertex_normals(v[None], t)
    gpu = vertex_normals(v[None].cuda(), t)  # triangles on the CPU are moved
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-6, rtol=0)
