"""Tests for mlanet.geometry.camera."""

from __future__ import annotations

import math

import pytest
import torch

from mlanet.geometry.camera import MIN_DEPTH, PinholeCamera
from mlanet.geometry.mesh import face_normals


def _camera(dtype: torch.dtype = torch.float64, batch: int = 2) -> PinholeCamera:
    fx = torch.tensor([500.0, 620.0][:batch], dtype=dtype)
    fy = torch.tensor([510.0, 600.0][:batch], dtype=dtype)
    cx = torch.tensor([320.0, 300.5][:batch], dtype=dtype)
    cy = torch.tensor([240.0, 250.25][:batch], dtype=dtype)
    return PinholeCamera(fx, fy, cx, cy, 640, 480)


def _points(batch: int = 2, n: int = 20, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = (torch.rand(batch, n, 2, generator=g, dtype=dtype) - 0.5) * 0.6
    z = 0.3 + torch.rand(batch, n, 1, generator=g, dtype=dtype) * 2.0
    return torch.cat([xy, z], dim=-1)


def _shoelace(p: torch.Tensor) -> torch.Tensor:
    """Signed area of polygons ``(..., K, 2)`` (positive = counter-clockwise in a y-up frame)."""
    x, y = p[..., 0], p[..., 1]
    return 0.5 * (x * y.roll(-1, dims=-1) - x.roll(-1, dims=-1) * y).sum(-1)


# ---------------------------------------------------------------------------- construction


def test_construction_from_floats_and_broadcast() -> None:
    cam = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)
    assert cam.batch_size == 1 and cam.fx.shape == (1,) and cam.dtype == torch.get_default_dtype()
    cam = PinholeCamera(torch.tensor([400.0, 500.0, 600.0], dtype=torch.float64), 500, 320.0, torch.tensor(240.0), 640, 480)
    assert cam.batch_size == 3 and cam.dtype == torch.float64
    torch.testing.assert_close(cam.fy, torch.full((3,), 500.0, dtype=torch.float64))
    K = cam.intrinsics()
    assert K.shape == (3, 3, 3)
    torch.testing.assert_close(K[2], torch.tensor([[600.0, 0, 320], [0, 500, 240], [0, 0, 1]], dtype=torch.float64))


def test_construction_errors() -> None:
    with pytest.raises(ValueError):
        PinholeCamera(torch.ones(2), torch.ones(3), 0.0, 0.0, 64, 64)
    with pytest.raises(ValueError):
        PinholeCamera(torch.ones(2, 1), 1.0, 0.0, 0.0, 64, 64)
    with pytest.raises(ValueError):
        PinholeCamera(1.0, 1.0, 0.0, 0.0, 0, 64)
    with pytest.raises(ValueError):
        PinholeCamera(1.0, 1.0, 0.0, 0.0, 64, 64.0)
    with pytest.raises(ValueError):
        PinholeCamera.from_fov(64, 64, math.pi)
    with pytest.raises(ValueError):
        PinholeCamera.from_fov(64, 64, 0.5, batch_size=0)


def test_from_fov() -> None:
    fov = math.radians(60.0)
    cam = PinholeCamera.from_fov(640, 480, fov, batch_size=3, dtype=torch.float64)
    assert cam.batch_size == 3 and cam.dtype == torch.float64
    f = 240.0 / math.tan(fov / 2)
    torch.testing.assert_close(cam.fx, torch.full((3,), f, dtype=torch.float64))
    torch.testing.assert_close(cam.fy, cam.fx)
    torch.testing.assert_close(cam.cx, torch.full((3,), 320.0, dtype=torch.float64))
    torch.testing.assert_close(cam.cy, torch.full((3,), 240.0, dtype=torch.float64))
    # points on the top / bottom edge of the field of view land on the image's top / bottom border
    t = math.tan(fov / 2)
    p = torch.tensor([[[0.0, -t * 2.0, 2.0], [0.0, t * 0.5, 0.5]]], dtype=torch.float64).expand(3, 2, 3)
    uv = cam.project(p)
    torch.testing.assert_close(uv[..., 1], torch.tensor([0.0, 480.0], dtype=torch.float64).expand(3, 2))


def test_to_device_dtype() -> None:
    cam = _camera(torch.float64).to(dtype=torch.float32)
    assert cam.dtype == torch.float32 and cam.fx.dtype == torch.float32
    assert cam.to("cpu").device.type == "cpu"
    with pytest.raises(ValueError):
        cam.to(dtype=torch.int32)


# ---------------------------------------------------------------------------- projection


def test_project_known_values() -> None:
    cam = _camera()
    p = torch.tensor([[[0.0, 0.0, 2.0], [0.1, -0.2, 1.0]], [[0.0, 0.0, 0.5], [0.2, 0.1, 2.0]]], dtype=torch.float64)
    uv = cam.project(p)
    expected = torch.tensor(
        [[[320.0, 240.0], [370.0, 138.0]], [[300.5, 250.25], [300.5 + 62.0, 250.25 + 30.0]]], dtype=torch.float64
    )
    torch.testing.assert_close(uv, expected)
    # agrees with K @ p / z
    p = _points()
    Kp = (cam.intrinsics()[:, None] @ p[..., None])[..., 0]
    torch.testing.assert_close(cam.project(p), Kp[..., :2] / Kp[..., 2:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_project_unproject_round_trip(dtype: torch.dtype) -> None:
    cam = _camera(dtype)
    p = _points(dtype=dtype)
    uv = cam.project(p)
    assert uv.shape == (2, 20, 2) and uv.dtype == dtype
    back = cam.unproject(uv, p[..., 2])
    torch.testing.assert_close(back, p, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0)
    torch.testing.assert_close(cam.project(back), uv, atol=1e-3 if dtype == torch.float32 else 1e-9, rtol=0)


def test_batch_broadcast_and_dtype_follow_points() -> None:
    cam1 = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480)  # float32, B = 1
    p = _points(batch=3)  # float64
    uv = cam1.project(p)
    assert uv.shape == (3, 20, 2) and uv.dtype == torch.float64
    uv2 = _camera().project(p[:1])  # points B = 1, camera B = 2
    assert uv2.shape == (2, 20, 2)


def test_points_behind_or_on_camera_plane_are_finite() -> None:
    cam = _camera()
    p = torch.tensor(
        [[[0.1, 0.2, 0.0], [0.0, 0.0, 0.0], [0.1, -0.3, -1.5], [0.1, 0.1, -1e-12]]], dtype=torch.float64
    ).expand(2, 4, 3).clone().requires_grad_(True)
    uv = cam.project(p)
    assert bool(torch.isfinite(uv).all())
    uv.sum().backward()
    assert bool(torch.isfinite(p.grad).all())
    # z = 0 behaves like z = +MIN_DEPTH; z < 0 is the point mirrored through the optical centre
    torch.testing.assert_close(uv[:, 0], cam.project(torch.tensor([[[0.1, 0.2, MIN_DEPTH]]], dtype=torch.float64))[:, 0])
    torch.testing.assert_close(uv[:, 2], cam.project(torch.tensor([[[-0.1, 0.3, 1.5]]], dtype=torch.float64))[:, 0])
    torch.testing.assert_close(uv[:, 3], cam.project(torch.tensor([[[-0.1, -0.1, MIN_DEPTH]]], dtype=torch.float64))[:, 0])


# ---------------------------------------------------------------------------- OpenGL


def test_gl_projection_matches_project(gl_clip) -> None:
    cam = _camera()
    p = _points()
    near, far = 0.1, 10.0
    assert cam.projection_matrix_gl(near, far).shape == (2, 4, 4)
    clip = gl_clip(cam, p, near, far)
    assert clip.shape == (2, 20, 4)
    torch.testing.assert_close(clip[..., 3], p[..., 2])  # w_clip = z
    ndc = clip[..., :3] / clip[..., 3:]
    uv = cam.project(p)
    torch.testing.assert_close(ndc[..., 0], 2 * uv[..., 0] / cam.width - 1)
    torch.testing.assert_close(ndc[..., 1], 1 - 2 * uv[..., 1] / cam.height)
    # depth: near -> -1, far -> +1, monotone in between
    zs = torch.tensor([[[0.0, 0.0, near], [0.0, 0.0, 1.0], [0.0, 0.0, far]]], dtype=torch.float64).expand(2, 3, 3)
    c = gl_clip(cam, zs, near, far)
    z_ndc = c[..., 2] / c[..., 3]
    torch.testing.assert_close(z_ndc[:, 0], torch.full((2,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(z_ndc[:, 2], torch.full((2,), 1.0, dtype=torch.float64))
    assert bool((z_ndc[:, 0] < z_ndc[:, 1]).all() and (z_ndc[:, 1] < z_ndc[:, 2]).all())


def test_gl_window_coordinates_match_pixels(gl_clip) -> None:
    # GL window coords with glViewport(0, 0, W, H): x_w = (x_ndc + 1) W / 2, y_w = (y_ndc + 1) H / 2,
    # origin bottom-left; reading the framebuffer top-down maps y_w to image row coordinate H - y_w.
    cam = _camera()
    p = _points()
    clip = gl_clip(cam, p, 0.05, 20.0)
    ndc = clip[..., :2] / clip[..., 3:]
    x_w = (ndc[..., 0] + 1) * cam.width / 2
    y_w = (ndc[..., 1] + 1) * cam.height / 2
    uv = cam.project(p)
    torch.testing.assert_close(x_w, uv[..., 0])
    torch.testing.assert_close(cam.height - y_w, uv[..., 1])


def test_front_face_winding_convention(gl_clip) -> None:
    # A triangle 1 m in front of the camera whose (v1 - v0) x (v2 - v0) points towards the camera.
    tri = torch.tensor([[[0.0, 0.0, 1.0], [0.1, 0.0, 1.0], [0.0, -0.1, 1.0]]], dtype=torch.float64)
    n = face_normals(tri, torch.tensor([[0, 1, 2]], dtype=torch.int32))[0, 0]
    assert float(n[2]) < 0  # faces the camera (camera looks along +z)
    assert float((n * -tri[0, 0]).sum()) > 0  # ... i.e. points towards the camera centre
    cam = PinholeCamera.from_fov(64, 48, 1.0, dtype=torch.float64)
    pixels = cam.project(tri)[0]
    assert float(_shoelace(pixels)) < 0  # negative shoelace area in y-down pixel coordinates
    clip = gl_clip(cam, tri, 0.1, 10.0)[0]
    ndc = clip[:, :2] / clip[:, 3:]
    assert float(_shoelace(ndc)) > 0  # counter-clockwise in NDC: front face under glFrontFace(GL_CCW)
    # flipping the winding flips all three signs
    flipped = tri[:, [0, 2, 1]]
    assert float(face_normals(flipped, torch.tensor([[0, 1, 2]]))[0, 0, 2]) > 0
    assert float(_shoelace(cam.project(flipped)[0])) > 0
    c = gl_clip(cam, flipped, 0.1, 10.0)[0]
    assert float(_shoelace(c[:, :2] / c[:, 3:])) < 0


# ---------------------------------------------------------------------------- crop


def test_crop_resize_equals_shift_and_scale() -> None:
    cam = _camera()
    x0, y0, w, h = 100.5, -20.0, 300.0, 250.0
    crop = cam.crop_resize(x0, y0, w, h, 224, 192)
    assert (crop.width, crop.height, crop.batch_size) == (224, 192, 2)
    p = _points()
    uv = cam.project(p)
    scale = torch.tensor([224 / w, 192 / h], dtype=torch.float64)
    torch.testing.assert_close(crop.project(p), (uv - torch.tensor([x0, y0], dtype=torch.float64)) * scale)


def test_crop_resize_pixel_centres() -> None:
    cam = _camera()
    x0, y0, w, h = 37.0, 52.0, 160.0, 120.0
    crop = cam.crop_resize(x0, y0, w, h, 64, 48)
    depth = torch.full((2, 2), 1.7, dtype=torch.float64)
    # centres of crop pixels (0, 0) and (63, 47)
    centres = torch.tensor([[0.5, 0.5], [63.5, 47.5]], dtype=torch.float64).expand(2, 2, 2)
    orig = cam.project(crop.unproject(centres, depth))
    expected = torch.tensor(
        [[x0 + 0.5 * w / 64, y0 + 0.5 * h / 48], [x0 + 63.5 * w / 64, y0 + 47.5 * h / 48]], dtype=torch.float64
    )
    torch.testing.assert_close(orig, expected.expand(2, 2, 2))
    # the crop's corners are the box corners
    corners = torch.tensor([[0.0, 0.0], [64.0, 48.0]], dtype=torch.float64).expand(2, 2, 2)
    orig = cam.project(crop.unproject(corners, depth))
    torch.testing.assert_close(orig, torch.tensor([[x0, y0], [x0 + w, y0 + h]], dtype=torch.float64).expand(2, 2, 2))


def test_crop_resize_per_camera_boxes() -> None:
    cam = PinholeCamera(500.0, 500.0, 320.0, 240.0, 640, 480).to(dtype=torch.float64)  # B = 1
    x0 = torch.tensor([10.0, 200.0], dtype=torch.float64)
    y0 = torch.tensor([5.0, 100.0], dtype=torch.float64)
    w = torch.tensor([100.0, 300.0], dtype=torch.float64)
    crop = cam.crop_resize(x0, y0, w, w, 128, 128)
    assert crop.batch_size == 2
    for b in range(2):
        single = cam.crop_resize(float(x0[b]), float(y0[b]), float(w[b]), float(w[b]), 128, 128)
        torch.testing.assert_close(crop.intrinsics()[b], single.intrinsics()[0])
    with pytest.raises(ValueError):
        cam.crop_resize(0.0, 0.0, -5.0, 10.0, 32, 32)
    with pytest.raises(ValueError):
        cam.crop_resize(0.0, 0.0, 5.0, 10.0, 32, 0)
    with pytest.raises(ValueError):
        _camera().crop_resize(torch.zeros(3), 0.0, 5.0, 5.0, 32, 32)


# ---------------------------------------------------------------------------- gradients


def test_gradcheck_project_points_and_intrinsics(gl_clip) -> None:
    p = _points(batch=2, n=3).requires_grad_(True)
    fx = torch.tensor([500.0, 450.0], dtype=torch.float64, requires_grad=True)
    fy = torch.tensor([510.0, 440.0], dtype=torch.float64, requires_grad=True)
    cx = torch.tensor([320.0, 310.0], dtype=torch.float64, requires_grad=True)
    cy = torch.tensor([240.0, 230.0], dtype=torch.float64, requires_grad=True)

    def f(points, fx, fy, cx, cy):
        return PinholeCamera(fx, fy, cx, cy, 640, 480).project(points)

    assert torch.autograd.gradcheck(f, (p, fx, fy, cx, cy))

    def g(points, fx, fy, cx, cy):  # the GL projection matrix, applied to the points
        return gl_clip(PinholeCamera(fx, fy, cx, cy, 640, 480), points, 0.1, 10.0)

    assert torch.autograd.gradcheck(g, (p, fx, fy, cx, cy))


def test_gradcheck_unproject() -> None:
    cam = _camera()
    uv = cam.project(_points(n=3)).detach().requires_grad_(True)
    depth = torch.rand(2, 3, dtype=torch.float64).add(0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(cam.unproject, (uv, depth))


# ---------------------------------------------------------------------------- errors


def test_bad_shapes_raise() -> None:
    cam = _camera()
    with pytest.raises(ValueError):
        cam.project(torch.zeros(20, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        cam.project(torch.zeros(2, 20, 2, dtype=torch.float64))
    with pytest.raises(ValueError):
        cam.project(torch.zeros(3, 20, 3, dtype=torch.float64))  # camera B = 2
    with pytest.raises(ValueError):
        cam.project(torch.zeros(2, 20, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        cam.unproject(torch.zeros(2, 20, 2), torch.zeros(2, 19))
    with pytest.raises(ValueError):
        cam.unproject(torch.zeros(2, 20, 3), torch.zeros(2, 20))
    with pytest.raises(ValueError):
        cam.projection_matrix_gl(0.0, 1.0)
    with pytest.raises(ValueError):
        cam.projection_matrix_gl(2.0, 1.0)
    with pytest.raises(ValueError):
        cam.projection_matrix_gl(-1.0, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    cam = _camera(torch.float32)
    p = _points(dtype=torch.float32)
    gcam = cam.to("cuda")
    assert gcam.device.type == "cuda"
    torch.testing.assert_close(gcam.project(p.cuda()).cpu(), cam.project(p))
    torch.testing.assert_close(gcam.projection_matrix_gl(0.1, 10.0).cpu(), cam.projection_matrix_gl(0.1, 10.0))
    torch.testing.assert_close(gcam.crop_resize(1.0, 2.0, 30.0, 40.0, 8, 8).intrinsics().cpu(),
                               cam.crop_resize(1.0, 2.0, 30.0, 40.0, 8, 8).intrinsics())
