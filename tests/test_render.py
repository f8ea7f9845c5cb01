"""Differentiable renderer: analytic cases, an OpenGL reference, gradients, the face model, CUDA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlanet.geometry.camera import PinholeCamera
from mlanet.geometry.mesh import vertex_normals
from mlanet.geometry.sh import directional_light_sh, sh_shade
from mlanet.params import UNIT_AMBIENT_SH_DC, FaceParams
from mlanet.preprocess import PreprocessCfg
from mlanet.render.rasterizer import Fragments, interpolate, rasterize
from mlanet.render.renderer import RenderOutput, render_face, render_mesh

F64 = torch.float64


def camera(width: int = 40, height: int = 30, f: float = 50.0, dtype: torch.dtype = F64) -> PinholeCamera:
    """A camera with the principal point slightly off centre (catches cx/cy mix-ups)."""
    return PinholeCamera(
        torch.tensor([f], dtype=dtype), torch.tensor([f * 1.1], dtype=dtype),
        torch.tensor([width / 2 + 0.7], dtype=dtype), torch.tensor([height / 2 - 0.4], dtype=dtype),
        width, height,
    )


def lift(cam: PinholeCamera, pixels: list[tuple[float, float]], depth: float | list[float]) -> torch.Tensor:
    """Camera-frame points (1, N, 3) that project to ``pixels`` at camera ``z = depth``."""
    px = torch.tensor([pixels], dtype=cam.dtype)
    z = torch.as_tensor(depth, dtype=cam.dtype).expand(px.shape[1]).reshape(1, -1)
    return cam.unproject(px, z)


def pixel_centres(width: int, height: int) -> np.ndarray:
    """(H, W, 2) pixel centres (u, v) = (i + 0.5, j + 0.5)."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v], axis=-1)


def inside_convex(points: np.ndarray, polygon: list[tuple[float, float]]) -> np.ndarray:
    """Brute-force inclusive point-in-convex-polygon test (any orientation), (...,) bool."""
    poly = np.asarray(polygon, dtype=np.float64)
    signs = []
    for k in range(len(poly)):
        a, b = poly[k], poly[(k + 1) % len(poly)]
        signs.append((b[0] - a[0]) * (points[..., 1] - a[1]) - (b[1] - a[1]) * (points[..., 0] - a[0]))
    signs = np.stack(signs, -1)
    return np.all(signs >= 0, -1) | np.all(signs <= 0, -1)


# A front face in pixel coordinates (y down) has negative shoelace area.
QUAD_PX = [(5.3, 4.1), (5.3, 21.6), (27.8, 21.6), (27.8, 4.1)]  # TL, BL, BR, TR
QUAD_TRIS = torch.tensor([[0, 1, 2], [0, 2, 3]])


# ---------------------------------------------------------------------------------- analytic


def test_fronto_parallel_quad_mask_and_depth() -> None:
    cam = camera()
    verts = lift(cam, QUAD_PX, 2.0)
    frags = rasterize(verts, QUAD_TRIS, cam, 30, 40)
    expected = inside_convex(pixel_centres(40, 30), QUAD_PX)
    assert expected.sum() == 23 * 18  # columns 5..27, rows 4..21
    assert np.array_equal(frags.mask[0].numpy(), expected)
    assert torch.equal(frags.mask, frags.triangle_id >= 0)
    assert torch.allclose(frags.depth[frags.mask], torch.tensor(2.0, dtype=F64), atol=1e-12)
    assert (frags.depth[~frags.mask] == 0).all()
    assert (frags.barycentric[~frags.mask] == 0).all()
    assert torch.allclose(frags.barycentric.sum(-1)[frags.mask], torch.ones((), dtype=F64))
    # the diagonal splits the quad: both triangles appear
    assert set(frags.triangle_id[frags.mask].tolist()) == {0, 1}
    assert frags.foreground.shape == (int(expected.sum()),)
    assert frags.num_candidates >= expected.sum()


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_single_triangle_coverage_matches_brute_force(dtype: torch.dtype) -> None:
    cam = camera(dtype=dtype)
    tri_px = [(3.17, 2.71), (12.43, 27.38), (36.91, 14.06)]  # negative shoelace: front
    verts = lift(cam, tri_px, [1.0, 1.7, 2.9])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), cam, 30, 40)
    expected = inside_convex(pixel_centres(40, 30), tri_px)
    assert expected.sum() > 100
    assert np.array_equal(frags.mask[0].numpy(), expected)


def test_slanted_plane_perspective_correct_interpolation() -> None:
    cam = camera()
    # A slanted quad: depth from 1 m (left) to 4 m (right), so perspective matters a lot.
    verts = lift(cam, QUAD_PX, [1.0, 1.0, 4.0, 4.0])
    frags = rasterize(verts, QUAD_TRIS, cam, 30, 40)
    out = interpolate(verts, frags, QUAD_TRIS)  # camera-frame x, y, z of the surface point
    m = frags.mask[0]
    # exact ray-plane intersection at each covered pixel centre
    p0, p1, p2 = verts[0, 0], verts[0, 1], verts[0, 2]
    normal = torch.linalg.cross(p1 - p0, p2 - p0)
    centres = torch.from_numpy(pixel_centres(40, 30))[m]
    rays = torch.stack(
        [(centres[:, 0] - cam.cx) / cam.fx, (centres[:, 1] - cam.cy) / cam.fy, torch.ones(len(centres), dtype=F64)], -1
    )
    t = (normal @ p0) / (rays @ normal)
    exact = rays * t[:, None]
    assert torch.allclose(out[0][m], exact, atol=1e-9)
    assert torch.allclose(frags.depth[0][m], exact[:, 2], atol=1e-9)
    # screen-space (affine) interpolation would be visibly wrong here
    affine = torch.from_numpy(pixel_centres(40, 30))[m][:, 0]
    z_affine = 1.0 + 3.0 * (affine - 5.3) / (27.8 - 5.3)
    assert (z_affine - exact[:, 2]).abs().max() > 0.3


def test_occlusion_nearer_quad_wins_in_any_order() -> None:
    cam = camera()
    far = lift(cam, QUAD_PX, 3.0)
    near_px = [(15.2, 10.3), (15.2, 29.4), (38.6, 29.4), (38.6, 10.3)]
    near = lift(cam, near_px, 1.5)
    verts = torch.cat([far, near], dim=1)
    tris = torch.cat([QUAD_TRIS, QUAD_TRIS + 4])
    centres = pixel_centres(40, 30)
    in_far, in_near = inside_convex(centres, QUAD_PX), inside_convex(centres, near_px)
    for order in (tris, tris.flip(0)):
        frags = rasterize(verts, order, cam, 30, 40)
        tid = frags.triangle_id[0].numpy()
        ids_near = {i for i, t in enumerate(order.tolist()) if min(t) >= 4}
        assert np.array_equal(frags.mask[0].numpy(), in_far | in_near)
        assert all(t in ids_near for t in tid[in_near])
        assert all(t not in ids_near for t in tid[in_far & ~in_near])
        depth = frags.depth[0].numpy()
        assert np.allclose(depth[in_near], 1.5) and np.allclose(depth[in_far & ~in_near], 3.0)


def test_equal_depth_ties_are_deterministic() -> None:
    cam = camera()
    verts = lift(cam, QUAD_PX, 2.0)
    tris = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2]])
    frags = rasterize(verts, tris, cam, 30, 40)
    assert (frags.triangle_id[frags.mask] == 0).all()  # smallest index wins exact ties


def test_backface_culling() -> None:
    cam = camera()
    tri_px = [(3.17, 2.71), (12.43, 27.38), (36.91, 14.06)]
    verts = lift(cam, tri_px, 2.0)
    front = torch.tensor([[0, 1, 2]])
    back = torch.tensor([[0, 2, 1]])
    expected = inside_convex(pixel_centres(40, 30), tri_px)
    assert not rasterize(verts, back, cam, 30, 40).mask.any()
    kept = rasterize(verts, back, cam, 30, 40, cull_backfaces=False)
    assert np.array_equal(kept.mask[0].numpy(), expected)
    assert np.array_equal(rasterize(verts, front, cam, 30, 40).mask[0].numpy(), expected)
    # the barycentrics refer to the triangle's own vertex order either way
    out = interpolate(verts, kept, back)
    assert torch.allclose(out[kept.mask][:, 2], torch.tensor(2.0, dtype=F64))
    # in the camera frame a front face's normal points towards the camera (negative z)
    n = torch.linalg.cross(verts[0, 1] - verts[0, 0], verts[0, 2] - verts[0, 0])
    assert n[2] < 0


def test_empty_scenes_are_background() -> None:
    cam = camera()
    verts = lift(cam, QUAD_PX, 2.0)
    for tris in (torch.zeros(0, 3, dtype=torch.long), QUAD_TRIS):
        v = verts if len(tris) == 0 else verts + torch.tensor([100.0, 0.0, 0.0], dtype=F64)  # far off-screen
        frags = rasterize(v, tris, cam, 30, 40)
        assert not frags.mask.any() and (frags.triangle_id == -1).all()
        assert frags.depth.abs().sum() == 0 and frags.num_candidates == 0
        out = render_mesh(v, tris, torch.ones_like(v), cam, 30, 40, background=torch.full((1, 30, 40, 3), 0.25, dtype=F64))
        assert torch.all(out.image == 0.25) and out.mask.sum() == 0


def test_triangles_behind_the_camera_or_crossing_near_are_dropped() -> None:
    cam = camera()
    verts = lift(cam, QUAD_PX, 2.0)
    behind = verts * torch.tensor([-1.0, -1.0, -1.0], dtype=F64)  # mirrored: projects onto the same pixels
    assert torch.allclose(cam.project(behind), cam.project(verts))
    assert not rasterize(behind, QUAD_TRIS, cam, 30, 40, cull_backfaces=False).mask.any()
    crossing = verts.clone()
    crossing[0, 1, 2] = 5e-4  # one vertex in front of the camera but nearer than `near`
    frags = rasterize(crossing, QUAD_TRIS, cam, 30, 40, near=1e-3)
    assert frags.mask.any() and not (frags.triangle_id == 0).any()  # triangle 0 (the only one using vertex 1) is gone


def test_batch_camera_broadcast_and_chunking() -> None:
    cam = camera()
    a = lift(cam, QUAD_PX, 2.0)
    b = lift(cam, [(1.5, 1.5), (1.5, 28.5), (38.5, 28.5), (38.5, 1.5)], [1.0, 2.0, 3.0, 1.5])
    verts = torch.cat([a, b])
    frags = rasterize(verts, QUAD_TRIS, cam, 30, 40)
    for i, v in enumerate((a, b)):
        single = rasterize(v, QUAD_TRIS, cam, 30, 40)
        assert torch.equal(single.triangle_id[0], frags.triangle_id[i])
        assert torch.allclose(single.depth[0], frags.depth[i])
    tiny_chunks = rasterize(verts, QUAD_TRIS, cam, 30, 40, max_candidates=7)
    assert torch.equal(tiny_chunks.triangle_id, frags.triangle_id)
    assert torch.equal(tiny_chunks.depth, frags.depth)
    # a batch-1 mesh against a batch-2 camera is broadcast
    cam2 = PinholeCamera(cam.fx.expand(2), cam.fy.expand(2), cam.cx.expand(2), cam.cy.expand(2), 40, 30)
    both = rasterize(a, QUAD_TRIS, cam2, 30, 40)
    assert both.triangle_id.shape == (2, 30, 40) and torch.equal(both.triangle_id[0], both.triangle_id[1])


def test_shared_edges_are_watertight() -> None:
    # A fan of thin triangles around a centre pixel, whose edges pass exactly through pixel
    # centres: every centre of the covered polygon must be drawn (no cracks), exactly once.
    cam = PinholeCamera(40.0, 40.0, 16.0, 16.0, 32, 32).to(dtype=F64)
    centre = (16.5, 16.5)
    ring = [(16.5 + 12 * math.cos(a), 16.5 + 12 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 25)[:-1]]
    ring = [(round(u) + 0.5, round(v) + 0.5) for u, v in ring]  # vertices on pixel centres
    pts = [centre] + ring
    verts = lift(cam, pts, 1.0)
    n = len(ring)
    # (centre, next, this) has negative shoelace area in y-down pixels for increasing angle
    tris = torch.tensor([[0, 1 + (k + 1) % n, 1 + k] for k in range(n)])
    frags = rasterize(verts, tris, cam, 32, 32)
    expected = inside_convex(pixel_centres(32, 32), ring)
    assert np.array_equal(frags.mask[0].numpy(), expected)


def test_interpolate_shared_attributes_and_errors() -> None:
    cam = camera()
    verts = torch.cat([lift(cam, QUAD_PX, 2.0)] * 2)
    frags = rasterize(verts, QUAD_TRIS, cam, 30, 40)
    colors = torch.rand(1, 4, 5, dtype=F64)
    shared = interpolate(colors, frags, QUAD_TRIS)
    assert shared.shape == (2, 30, 40, 5)
    assert torch.allclose(shared, interpolate(colors.expand(2, -1, -1), frags, QUAD_TRIS))
    with pytest.raises(ValueError, match="attributes must have shape"):
        interpolate(torch.rand(3, 4, 5, dtype=F64), frags, QUAD_TRIS)
    with pytest.raises(ValueError, match="vertices must have shape"):
        rasterize(verts[0], QUAD_TRIS, cam, 30, 40)
    with pytest.raises(ValueError, match="triangles must have shape"):
        rasterize(verts, QUAD_TRIS.reshape(-1), cam, 30, 40)
    with pytest.raises(ValueError, match="requested"):
        rasterize(verts, QUAD_TRIS, cam, 31, 40)
    with pytest.raises(ValueError, match="integer"):
        rasterize(verts, QUAD_TRIS.double(), cam, 30, 40)
    with pytest.raises(ValueError, match="vertex_colors"):
        render_mesh(verts, QUAD_TRIS, torch.rand(2, 3, 3, dtype=F64), cam, 30, 40)


def test_render_mesh_background_and_types() -> None:
    cam = camera()
    verts = lift(cam, QUAD_PX, 2.0)
    colors = torch.tensor([[[1.0, 0.0, 0.0]] * 4], dtype=F64)
    bg = torch.rand(1, 30, 40, 3, dtype=F64)
    out = render_mesh(verts, QUAD_TRIS, colors, cam, 30, 40, background=bg)
    assert isinstance(out, RenderOutput) and isinstance(out.fragments, Fragments)
    m = out.mask[0].bool()
    assert out.mask.dtype == F64 and out.image.shape == (1, 30, 40, 3)
    assert torch.allclose(out.image[0][m], colors[0, 0]) and torch.equal(out.image[0][~m], bg[0][~m])
    black = render_mesh(verts, QUAD_TRIS, colors, cam, 30, 40)
    assert (black.image[0][~m] == 0).all()


# ---------------------------------------------------------------------------------- OpenGL reference


@pytest.mark.gl
def test_matches_opengl_on_the_synthetic_face(synthetic_model, gl_clip) -> None:
    import moderngl

    from mlanet.shaders import load_shader

    size, near, far = 96, 0.1, 10.0
    cam = PinholeCamera.from_fov(size, size, math.radians(25.0))
    g = torch.Generator().manual_seed(3)
    params = FaceParams.neutral(synthetic_model.layout, batch_size=1, depth_m=0.6)
    angles = (torch.rand(1, 3, generator=g) * 2 - 1) * torch.tensor([0.35, 0.7, 0.3])  # pitch, yaw, roll
    shift = (torch.rand(1, 3, generator=g) * 2 - 1) * torch.tensor([0.02, 0.02, 0.05])
    params = params.replace(rotation=angles, translation=params.translation + shift, expression=torch.rand(1, 6, generator=g))
    verts = synthetic_model(params).detach()
    tris = synthetic_model.triangles
    frags = rasterize(verts, tris, cam, size, size)

    ctx = moderngl.create_standalone_context(backend="egl")
    try:
        prog = ctx.program(vertex_shader=load_shader("tri_id.vert"), fragment_shader=load_shader("tri_id.frag"))
        clip = gl_clip(cam, verts, near=near, far=far)[0][tris.reshape(-1)].numpy().astype("f4")  # unindexed
        ids = np.repeat(np.arange(len(tris), dtype="i4"), 3)
        vao = ctx.vertex_array(prog, [(ctx.buffer(clip.tobytes()), "4f", "in_clip"), (ctx.buffer(ids.tobytes()), "i", "in_id")])
        depth_tex = ctx.depth_texture((size, size))
        fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((size, size), components=4)], depth_attachment=depth_tex)
        fbo.use()
        ctx.viewport = (0, 0, size, size)
        fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)  # GL_LESS, cull back faces, CCW front
        vao.render(moderngl.TRIANGLES)
        rgb = np.frombuffer(fbo.read(components=3), dtype=np.uint8).reshape(size, size, 3)[::-1].astype(np.int64)
        d_win = np.frombuffer(fbo.read(components=1, attachment=-1, dtype="f4"), dtype=np.float32).reshape(size, size)[::-1]
    finally:
        ctx.release()
    gl_id = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2] - 1
    gl_mask = gl_id >= 0
    mask = frags.mask[0].numpy()
    tid = frags.triangle_id[0].numpy()
    assert mask.mean() > 0.3  # the face fills a good part of the image
    mask_agree = (gl_mask == mask).mean()
    both = gl_mask & mask
    id_agree = (gl_id[both] == tid[both]).mean()
    assert mask_agree >= 0.99, f"mask agreement {mask_agree:.4f}"
    assert id_agree >= 0.97, f"triangle-id agreement {id_agree:.4f}"
    same = both & (gl_id == tid)
    z_ndc = 2.0 * d_win.astype(np.float64) - 1.0
    gl_depth = 2.0 * far * near / ((far + near) - z_ndc * (far - near))
    err = np.abs(gl_depth[same] - frags.depth[0].numpy()[same])
    assert err.max() < 1e-4, f"max depth difference {err.max():.2e} m"


# ---------------------------------------------------------------------------------- gradients


def _grad_scene() -> tuple[torch.Tensor, torch.Tensor, PinholeCamera, int, int]:
    """A slanted 3x3-vertex patch (8 triangles) covering most of a 12x10 image; float64."""
    cam = PinholeCamera(30.0, 30.0, 6.0, 5.0, 12, 10).to(dtype=F64)
    us, vs = [0.37, 6.22, 11.51], [0.29, 5.02, 9.34]
    pts = [(u + 0.13 * j, v - 0.11 * i) for j, v in enumerate(vs) for i, u in enumerate(us)]
    depth = [1.0 + 0.2 * i + 0.15 * j + 0.05 * (i * j) for j in range(3) for i in range(3)]
    verts = lift(cam, pts, depth)
    quads = [(j * 3 + i, (j + 1) * 3 + i, (j + 1) * 3 + i + 1, j * 3 + i + 1) for j in range(2) for i in range(2)]
    tris = torch.tensor([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))])
    return verts, tris, cam, 10, 12


def _min_edge_distance(verts: torch.Tensor, tris: torch.Tensor, cam: PinholeCamera, h: int, w: int) -> float:
    px = cam.project(verts)[0].numpy()
    c = pixel_centres(w, h).reshape(-1, 2)
    best = np.inf
    for t in tris.tolist():
        for k in range(3):
            a, b = px[t[k]], px[t[(k + 1) % 3]]
            ab = b - a
            s = np.clip(((c - a) @ ab) / (ab @ ab), 0, 1)
            best = min(best, np.linalg.norm(c - (a + s[:, None] * ab), axis=1).min())
    return best


def test_gradcheck_vertices_colours_and_lighting() -> None:
    verts, tris, cam, h, w = _grad_scene()
    assert _min_edge_distance(verts, tris, cam, h, w) > 0.01  # visibility cannot flip under gradcheck's eps
    frags = rasterize(verts, tris, cam, h, w)
    assert frags.mask.float().mean() > 0.6
    colors = torch.rand(1, verts.shape[1], 3, dtype=F64, generator=torch.Generator().manual_seed(0))

    def by_vertices(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = render_mesh(v, tris, colors, cam, h, w)
        return out.image, out.depth

    def by_barycentrics(v: torch.Tensor) -> torch.Tensor:
        return rasterize(v, tris, cam, h, w).barycentric

    def by_colours(c: torch.Tensor) -> torch.Tensor:
        return render_mesh(verts, tris, c, cam, h, w).image

    albedo = colors
    light = directional_light_sh(torch.tensor([[0.3, -0.4, -0.866]], dtype=F64), torch.tensor([[0.9, 0.8, 0.7]], dtype=F64))
    light = light.clone()
    light[:, :, 0] += UNIT_AMBIENT_SH_DC * 0.5

    def by_lighting_and_vertices(lighting: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        shaded = sh_shade(albedo, vertex_normals(v, tris), lighting)
        return render_mesh(v, tris, shaded, cam, h, w).image

    v = verts.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(by_vertices, (v,), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(by_barycentrics, (v,), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(by_colours, (colors.clone().requires_grad_(True),))
    assert torch.autograd.gradcheck(by_lighting_and_vertices, (light.requires_grad_(True), v), eps=1e-7, atol=1e-6)


def test_gradcheck_intrinsics_and_background() -> None:
    verts, tris, _, h, w = _grad_scene()
    colors = torch.rand(1, verts.shape[1], 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    bg = torch.rand(1, h, w, 3, dtype=F64, generator=torch.Generator().manual_seed(2))

    def fn(fx: torch.Tensor, cx: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
        cam = PinholeCamera(fx, torch.tensor([30.0], dtype=F64), cx, torch.tensor([5.0], dtype=F64), w, h)
        return render_mesh(verts, tris, colors, cam, h, w, background=background).image

    args = (torch.tensor([30.0], dtype=F64, requires_grad=True), torch.tensor([6.0], dtype=F64, requires_grad=True),
            bg.requires_grad_(True))
    assert torch.autograd.gradcheck(fn, args, eps=1e-7, atol=1e-6)


def test_visibility_gives_no_gradient_but_float32_backward_works(synthetic_model) -> None:
    cam = PreprocessCfg(input_size=64).camera()
    params = FaceParams.neutral(synthetic_model.layout, depth_m=1.0)
    flat = params.to_flat().requires_grad_(True)
    p = FaceParams.from_flat(flat, synthetic_model.layout)
    out = render_face(synthetic_model, p, cam, 64, 64)
    (out.image.mean() + out.depth.mean()).backward()
    grad = FaceParams.from_flat(flat.grad, synthetic_model.layout)
    assert torch.isfinite(flat.grad).all()
    assert grad.albedo.abs().sum() > 0 and grad.lighting.abs().sum() > 0 and grad.translation.abs().sum() > 0
    assert grad.identity.abs().sum() > 0 and grad.rotation.abs().sum() > 0


# ---------------------------------------------------------------------------------- face model


def test_render_face_neutral_is_the_albedo(synthetic_model) -> None:
    size = 64
    cfg = PreprocessCfg(input_size=size)
    m = synthetic_model
    params = FaceParams.neutral(m.layout, depth_m=cfg.prior_depth_m)
    out = render_face(m, params, cfg.camera(), size, size)
    assert out.image.shape == (1, size, size, 3) and out.depth.shape == (1, size, size)
    mask = out.mask[0].bool()
    assert mask[size // 2 - 4 : size // 2 + 4, size // 2 - 4 : size // 2 + 4].all()  # the face covers the centre
    assert 0.2 < mask.float().mean() < 0.95
    albedo = interpolate(m.albedo(params.albedo), out.fragments, m.triangles)
    assert torch.allclose(out.image[0][mask], albedo[0][mask], atol=1e-5)
    assert (out.image[0][~mask] == 0).all()
    # the visible surface is the face, about prior_depth_m away
    d = out.depth[0][mask]
    assert (d > cfg.prior_depth_m - 0.08).all() and (d < cfg.prior_depth_m + 0.01).all()
    # with a background and a directional light: background outside, shading differs inside
    bg = torch.full((1, size, size, 3), 0.5)
    light = directional_light_sh(torch.tensor([[0.0, 0.0, -1.0]]), torch.ones(1, 3))
    lit = render_face(m, params.replace(lighting=light), cfg.camera(), size, size, background=bg)
    assert torch.equal(lit.image[0][~mask], bg[0][~mask])
    assert not torch.allclose(lit.image[0][mask], out.image[0][mask])


def test_render_face_batch_with_pose(synthetic_model) -> None:
    cfg = PreprocessCfg(input_size=48)
    m = synthetic_model
    params = FaceParams.neutral(m.layout, batch_size=3, depth_m=1.0)
    rot = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.0, -0.6, 0.0]])
    out = render_face(m, params.replace(rotation=rot), cfg.camera(3), 48, 48)
    assert out.image.shape == (3, 48, 48, 3)
    # yawed faces are mirror images of each other's silhouettes (the model is left-right symmetric)
    assert torch.equal(out.mask[1], out.mask[2].flip(-1)) or (out.mask[1] != out.mask[2].flip(-1)).float().mean() < 0.01
    assert out.mask[1].sum() < out.mask[0].sum()


# ---------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
def test_cuda_matches_cpu(synthetic_model) -> None:
    cfg = PreprocessCfg(input_size=96)
    m = synthetic_model
    g = torch.Generator().manual_seed(0)
    params = FaceParams.neutral(m.layout, batch_size=4, depth_m=1.0)
    flat = params.to_flat() + 0.05 * torch.randn(4, m.layout.total, generator=g)

    def run(device: str) -> tuple[RenderOutput, torch.Tensor]:
        model = m.to(device)
        f = flat.to(device).requires_grad_(True)
        out = render_face(model, FaceParams.from_flat(f, model.layout), cfg.camera(4, device=device), 96, 96)
        (out.image.square().mean() + out.depth.mean()).backward()
        return out, f.grad

    cpu, grad_cpu = run("cpu")
    gpu, grad_gpu = run("cuda")
    assert gpu.image.device.type == "cuda"
    assert (gpu.fragments.triangle_id.cpu() != cpu.fragments.triangle_id).float().mean() < 1e-3
    same = gpu.fragments.triangle_id.cpu() == cpu.fragments.triangle_id
    assert torch.allclose(gpu.image.cpu()[same], cpu.image[same], atol=1e-4)
    assert torch.allclose(gpu.depth.cpu()[same], cpu.depth[same], atol=1e-5)
    assert torch.allclose(grad_gpu.cpu(), grad_cpu, rtol=1e-2, atol=1e-5)
