"""The ModernGL face renderer and the live window (EGL + Mesa llvmpipe headless; window under xvfb-run).

Goldens: ``tests/golden/gl_*.png``, rendered by this renderer on Mesa llvmpipe. Rewrite them with
``MLANET_UPDATE_GOLDEN=1 pytest tests/test_gl_renderer.py`` (then look at them before committing);
a mismatch writes ``<name>_actual.png`` and ``<name>_diff.png`` into the test's tmp dir.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlanet.edge.gl_renderer import FaceRenderer, RenderFace, create_standalone_context
from mlanet.edge.mesh_topology import MeshTopology
from mlanet.edge.types import RuntimeStageError
from mlanet.geometry.camera import PinholeCamera
from mlanet.geometry.mesh import vertex_normals
from mlanet.geometry.sh import directional_light_sh, sh_shade
from mlanet.params import UNIT_AMBIENT_SH_DC, FaceParams

pytestmark = pytest.mark.gl

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("MLANET_UPDATE_GOLDEN") == "1"
GOLDEN_TOLERANCE = 8  # per channel, out of 255
GOLDEN_MAX_FRACTION = 0.01  # of pixels allowed beyond the tolerance
FOV_Y = math.radians(40.0)


# ---------------------------------------------------------------------------------- scene helpers
def light(ambient: float = 0.4, strength: float = 0.8) -> np.ndarray:
    """(3, 9) SH: a white light from the upper left, in front of the face, plus ambient."""
    direction = torch.tensor([-0.3, -0.5, -1.0], dtype=torch.float64)
    sh = directional_light_sh(direction / direction.norm(), torch.full((3,), strength, dtype=torch.float64))
    sh[:, 0] += ambient * UNIT_AMBIENT_SH_DC
    return sh.numpy()


def face_pose(model, yaw: float = 0.3, pitch: float = 0.0, depth: float = 0.45, x: float = 0.0):
    """Camera-frame vertices (V, 3) and albedo (V, 3) of the mean synthetic face in a pose."""
    params = FaceParams.neutral(model.layout, depth_m=depth)
    params.rotation[0, 0] = pitch
    params.rotation[0, 1] = yaw
    params.translation[0, 0] = x
    with torch.no_grad():
        vertices = model(params)[0].numpy()
        albedo = model.albedo(params.albedo)[0].clamp(0, 1).numpy()
    return vertices, albedo


def pattern_frame(width: int, height: int) -> np.ndarray:
    """A deterministic frame: red ramp left to right, green ramp top to bottom, blue checker."""
    y, x = np.mgrid[0:height, 0:width]
    checker = ((x // 8 + y // 8) % 2) * 80 + 60
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1), checker], -1).astype(np.uint8)


def smooth_random_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    def wave() -> np.ndarray:
        return np.sin(rng.uniform(3, 12) * x + rng.uniform(3, 12) * y + rng.uniform(0, 6))

    channels = [wave() + wave() + wave() for _ in range(3)]
    return np.stack([np.clip(127.5 + 40.0 * c, 0, 255) for c in channels], -1).astype(np.uint8)


def camera(width: int, height: int) -> PinholeCamera:
    return PinholeCamera.from_fov(width, height, FOV_Y)


def project(cam: PinholeCamera, points: np.ndarray) -> np.ndarray:
    return cam.project(torch.from_numpy(np.asarray(points, np.float32))[None])[0].numpy()


@pytest.fixture(scope="module")
def gl_ctx():
    ctx = create_standalone_context()
    yield ctx
    ctx.release()


@pytest.fixture()
def make_renderer(gl_ctx, synthetic_data):
    made: list[FaceRenderer] = []

    def make(width: int, height: int, topology: MeshTopology | None = None, **kw) -> FaceRenderer:
        r = FaceRenderer(width, height, topology or MeshTopology.from_face_model(synthetic_data), ctx=gl_ctx, **kw)
        made.append(r)
        return r

    yield make
    for r in made:
        r.release()


def mesh_mask(renderer: FaceRenderer, faces: list[RenderFace], cam: PinholeCamera) -> np.ndarray:
    """Pixels covered by the faces: white unlit albedo over a black frame."""
    black = np.zeros((renderer.height, renderer.width, 3), np.uint8)
    white = [RenderFace(f.vertices, albedo=np.ones_like(f.vertices)) for f in faces]
    return renderer.render(black, white, cam, mode="albedo", overlays=())[..., 0] > 127


def check_golden(image: np.ndarray, name: str, tmp_path: Path) -> None:
    path = GOLDEN_DIR / name
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(exist_ok=True)
        Image.fromarray(image).save(path, optimize=True)
        return
    if not path.is_file():
        pytest.fail(f"golden image {path} is missing; create it with MLANET_UPDATE_GOLDEN=1")
    golden = np.asarray(Image.open(path).convert("RGB"))
    assert golden.shape == image.shape, f"{name}: golden is {golden.shape}, rendered {image.shape}"
    diff = np.abs(image.astype(np.int16) - golden.astype(np.int16)).max(axis=-1)
    bad = diff > GOLDEN_TOLERANCE
    if bad.mean() > GOLDEN_MAX_FRACTION:
        stem = Path(name).stem
        Image.fromarray(image).save(tmp_path / f"{stem}_actual.png")
        vis = np.zeros_like(image)
        vis[..., 0] = np.clip(diff * 4, 0, 255)
        vis[bad] = (255, 255, 0)
        Image.fromarray(vis).save(tmp_path / f"{stem}_diff.png")
        pytest.fail(
            f"{name}: {bad.mean():.2%} of pixels differ by more than {GOLDEN_TOLERANCE}/255 "
            f"(allowed {GOLDEN_MAX_FRACTION:.0%}, max diff {diff.max()}); see {tmp_path / (stem + '_diff.png')} "
            f"and {tmp_path / (stem + '_actual.png')}"
        )


# ---------------------------------------------------------------------------------- topology
def test_topology_unwraps_per_corner_uvs(synthetic_data):
    # a quad whose two triangles share vertices but not UVs along the diagonal (a seam)
    tri = np.array([[0, 1, 2], [2, 1, 3]])
    uv = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [0.5, 0.5]])
    tri_uv = np.array([[0, 1, 2], [4, 1, 3]])
    topo = MeshTopology(tri, uv, tri_uv)
    vertex_of, gl_uv, gl_tri = topo.gl_vertices
    assert topo.n_vertices == 4 and len(vertex_of) == 5  # vertex 2 is split by the seam
    np.testing.assert_array_equal(vertex_of[gl_tri], tri)
    np.testing.assert_array_equal(gl_uv[gl_tri], uv[tri_uv])
    assert len(topo.gl_edges) == 6  # 5 edges, the diagonal once per side of the seam

    full = MeshTopology.from_face_model(synthetic_data)
    assert full.n_vertices == synthetic_data.n_vertices and len(full.landmark_index) == 68


def test_topology_normals_match_the_library(synthetic_model):
    topo = MeshTopology.from_face_model(synthetic_model)
    verts, _ = face_pose(synthetic_model, yaw=0.5, pitch=0.2)
    expected = vertex_normals(torch.from_numpy(verts)[None], synthetic_model.triangles)[0].numpy()
    np.testing.assert_allclose(topo.vertex_normals(verts), expected, atol=1e-5)


def test_bad_inputs_raise_clear_errors(make_renderer, synthetic_model):
    r = make_renderer(32, 24)
    cam = camera(32, 24)
    frame = np.zeros((24, 32, 3), np.uint8)
    verts, albedo = face_pose(synthetic_model)
    with pytest.raises(ValueError, match=r"frame_rgb must be a \(24, 32, 3\) uint8"):
        r.render(np.zeros((24, 32, 4), np.uint8), [], cam)
    with pytest.raises(ValueError, match=r"faces\[0\]\.vertices must have shape"):
        r.render(frame, [RenderFace(verts[:10], albedo)], cam)
    with pytest.raises(ValueError, match=r"faces\[0\]\.lighting must have shape \(3, 9\)"):
        r.render(frame, [RenderFace(verts, albedo, lighting=np.zeros((9, 3 + 1)))], cam)
    flat = r.render(frame, [RenderFace(verts, albedo, light().reshape(27))], cam)  # flat channel-major is accepted
    np.testing.assert_array_equal(flat, r.render(frame, [RenderFace(verts, albedo, light())], cam))
    with pytest.raises(ValueError, match="mode must be one of"):
        r.render(frame, [], cam, mode="toon")
    with pytest.raises(ValueError, match="overlays must be a subset"):
        r.render(frame, [], cam, overlays=("axes",))
    with pytest.raises(ValueError, match="camera must be one camera of size 32x24"):
        r.render(frame, [], camera(64, 48))
    with pytest.raises(ValueError, match=r"triangles must have shape \(F, 3\)"):
        MeshTopology(np.zeros((4, 4)), np.zeros((3, 2)), np.zeros((4, 4)))


def test_missing_egl_is_a_runtime_stage_error(monkeypatch, synthetic_data):
    import moderngl

    def no_egl(*args, **kwargs):
        raise RuntimeError("eglGetDisplay failed")

    monkeypatch.setattr(moderngl, "create_standalone_context", no_egl)
    with pytest.raises(RuntimeStageError, match="libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri"):
        FaceRenderer(32, 24, MeshTopology.from_face_model(synthetic_data))


# ---------------------------------------------------------------------------------- geometry
def test_background_is_the_frame_pixel_for_pixel(make_renderer):
    W, H = 97, 61  # odd sizes: no row padding luck
    r = make_renderer(W, H)
    frame = smooth_random_frame(W, H)
    frame[0, :] = (255, 0, 0)  # top row red: catches a vertical flip
    np.testing.assert_array_equal(r.render(frame, [], camera(W, H)), frame)


def test_silhouette_matches_the_camera_projection(make_renderer, synthetic_model):
    W, H = 160, 120
    r = make_renderer(W, H)
    cam = camera(W, H)
    verts, _ = face_pose(synthetic_model, yaw=0.0)
    mask = mesh_mask(r, [RenderFace(verts)], cam)

    # every projected landmark (all visible in a frontal view) falls on a mesh pixel
    lmk = project(cam, verts[synthetic_model.landmark_index.numpy()])
    assert mask[lmk[:, 1].astype(int), lmk[:, 0].astype(int)].all()

    # area and centroid of the projected front-facing triangles (no overlaps in a frontal view)
    px = project(cam, verts)[synthetic_model.triangles.numpy()]  # (F, 3, 2)
    e1, e2 = px[:, 1] - px[:, 0], px[:, 2] - px[:, 0]
    signed = 0.5 * (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    front = signed < 0  # front faces are clockwise in y-down pixels (conventions)
    assert front.mean() > 0.99
    area = -signed[front]
    centroid = (px[front].mean(axis=1) * area[:, None]).sum(0) / area.sum()
    rows, cols = np.nonzero(mask)
    mask_centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])  # pixel centres
    assert abs(mask.sum() - area.sum()) / area.sum() < 0.005  # measured 0.1% on llvmpipe
    assert np.linalg.norm(mask_centroid - centroid) < 0.05, (mask_centroid, centroid)  # measured 1e-4 px
    # chin at the bottom: the lowest landmark (jaw tip, model +y) has the largest image row
    assert lmk[:, 1].argmax() == 8


def test_back_faces_are_culled_and_msaa_agrees(make_renderer, synthetic_model):
    W, H = 96, 72
    cam = camera(W, H)
    verts, _ = face_pose(synthetic_model, yaw=math.pi)  # the face looks away: we see its back
    assert not mesh_mask(make_renderer(W, H), [RenderFace(verts)], cam).any()
    verts, _ = face_pose(synthetic_model)
    plain = mesh_mask(make_renderer(W, H), [RenderFace(verts)], cam)
    msaa = mesh_mask(make_renderer(W, H, samples=4), [RenderFace(verts)], cam)
    assert (plain & msaa).sum() / (plain | msaa).sum() > 0.95


# ---------------------------------------------------------------------------------- shading
def test_shader_sh_equals_sh_shade_for_many_normals(make_renderer, synthetic_model):
    """Constant normals make every mesh pixel albedo * E(n): compare to the CPU formula."""
    W, H = 48, 36
    r = make_renderer(W, H)
    cam = camera(W, H)
    verts, _ = face_pose(synthetic_model, yaw=0.0)
    mask = mesh_mask(r, [RenderFace(verts)], cam)
    rng = np.random.default_rng(1)
    black = np.zeros((H, W, 3), np.uint8)
    albedo_rgb = np.array([0.8, 0.6, 0.5])
    for trial in range(12):
        lighting = rng.normal(scale=0.15, size=(3, 9))
        lighting[:, 0] = rng.uniform(0.6, 0.9) * UNIT_AMBIENT_SH_DC
        n = rng.normal(size=3)
        n /= np.linalg.norm(n)
        t = torch.from_numpy
        expected = sh_shade(t(albedo_rgb[None, None]), t(n[None, None]), t(lighting[None]))[0, 0].numpy()
        assert (expected > 0.02).all() and (expected < 0.98).all(), "pick lighting that does not clip"
        face = RenderFace(verts, np.tile(albedo_rgb, (len(verts), 1)), lighting, normals=np.tile(n, (len(verts), 1)))
        img = r.render(black, [face], cam, mode="shaded", overlays=())
        err = np.abs(img[mask] / 255.0 - expected).max()
        assert err <= 1.0 / 255 + 1e-6, (trial, err, expected, img[mask][0])


def test_shaded_pixels_match_per_vertex_sh_shade(make_renderer, synthetic_model):
    W, H = 320, 240
    r = make_renderer(W, H)
    cam = camera(W, H)
    verts, albedo = face_pose(synthetic_model, yaw=0.25, pitch=0.1, depth=0.35)
    lighting = light()
    normals = vertex_normals(torch.from_numpy(verts)[None].double(), synthetic_model.triangles)
    cpu = sh_shade(torch.from_numpy(albedo)[None].double(), normals, torch.from_numpy(lighting)[None])[0].numpy()
    img = r.render(np.zeros((H, W, 3), np.uint8), [RenderFace(verts, albedo, lighting)], cam, "shaded", overlays=())

    px = project(cam, verts)
    facing = (normals[0].numpy() * -verts / np.linalg.norm(verts, axis=1, keepdims=True)).sum(1)
    interior = np.ones(len(verts), bool)
    interior[np.unique(boundary_vertices(synthetic_model.triangles.numpy()))] = False
    pick = interior & (facing > 0.5) & (cpu.min(1) > 0.02) & (cpu.max(1) < 0.98)
    assert pick.sum() > 500
    gpu = img[px[pick, 1].astype(int), px[pick, 0].astype(int)] / 255.0
    err = np.abs(gpu - cpu[pick]).max(axis=1)
    # measured on llvmpipe: median 0.45/255, 95th percentile 0.94/255 (pixel centre != vertex, per-pixel normalisation)
    median, p95 = np.median(err) * 255, np.percentile(err, 95) * 255
    assert median < 1.0 and p95 < 2.0, (median, p95)


def boundary_vertices(triangles: np.ndarray) -> np.ndarray:
    edges = np.sort(triangles[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    return unique[counts == 1].reshape(-1)


# ---------------------------------------------------------------------------------- photo texture
def test_photo_mode_reproduces_the_frame_under_the_mesh(make_renderer, synthetic_model):
    W, H = 128, 96
    r = make_renderer(W, H)
    cam = camera(W, H)
    frame = smooth_random_frame(W, H, seed=3)
    verts, albedo = face_pose(synthetic_model, yaw=0.35, depth=0.4)
    face = RenderFace(verts, albedo, light())
    mask = mesh_mask(r, [face], cam)
    assert mask.sum() > 1000
    photo = r.render(frame, [face], cam, "photo", overlays=()).astype(int)
    assert np.abs(photo - frame)[mask].mean() < 0.5 and np.abs(photo - frame).max() <= 1  # measured: exact
    # the mesh really is drawn: fully grey-lit it differs under the mask only
    lit = r.render(frame, [face], cam, "photo", overlays=(), photo_shading=1.0).astype(int)
    assert np.abs(lit - frame)[mask].mean() > 10 and (lit == frame)[~mask].all()


def quads_topology() -> tuple[MeshTopology, np.ndarray, dict]:
    """A big back quad at z = 1 m, a small front quad at z = 0.8 m in front of its centre, and a
    back-facing quad (normal away from the camera) at the left. UVs: back quad on u in [0, 0.5],
    front quad on [0.5, 1] (v in [0.5, 1]), the away-facing quad on [0.5, 1] x [0, 0.5]."""
    back = dict(x=(-0.3, 0.3), y=(-0.2, 0.2), z=1.0, u=(0.0, 0.5), v=(0.0, 1.0))
    front = dict(x=(-0.1, 0.1), y=(-0.1, 0.1), z=0.8, u=(0.5, 1.0), v=(0.5, 1.0))
    away = dict(x=(-0.5, -0.35), y=(-0.1, 0.1), z=1.0, u=(0.5, 1.0), v=(0.0, 0.5))
    verts, uvs, tris = [], [], []
    for q, facing in ((back, True), (front, True), (away, False)):
        base = len(verts)
        (x0, x1), (y0, y1), (u0, u1), (v0, v1) = q["x"], q["y"], q["u"], q["v"]
        # corners: top-left, bottom-left, top-right, bottom-right (image y down); uv v = 1 at the top
        verts += [(x0, y0, q["z"]), (x0, y1, q["z"]), (x1, y0, q["z"]), (x1, y1, q["z"])]
        uvs += [(u0, v1), (u0, v0), (u1, v1), (u1, v0)]
        t = [[0, 1, 2], [2, 1, 3]] if facing else [[0, 2, 1], [2, 3, 1]]
        tris += [[base + i for i in tri] for tri in t]
    tris = np.array(tris)
    topo = MeshTopology(tris, np.array(uvs, np.float32), tris)
    return topo, np.array(verts, np.float32), {"back": back, "front": front, "away": away}


def test_unwrap_texture_samples_the_frame_and_masks_hidden_texels(make_renderer):
    W, H, S = 96, 72, 64
    topo, verts, quads = quads_topology()
    r = make_renderer(W, H, topo)
    cam = camera(W, H)
    # the frame encodes its own pixel position: R = u / W, G = v / H (at pixel centres)
    cols, rows = np.meshgrid((np.arange(W) + 0.5) / W, (np.arange(H) + 0.5) / H)
    frame = np.stack([cols * 255, rows * 255, np.full_like(cols, 128)], -1).round().astype(np.uint8)
    texture, visible = r.unwrap_texture(frame, RenderFace(verts), cam, size=S)
    assert texture.shape == (S, S, 3) and texture.dtype == np.uint8 and visible.shape == (S, S)

    # texel (row, col) covers uv = ((col + .5) / S, 1 - (row + .5) / S)
    tu, tv = np.meshgrid((np.arange(S) + 0.5) / S, 1.0 - (np.arange(S) + 0.5) / S)

    def surface(q):  # texels of quad q and their camera-frame points
        inside = (tu > q["u"][0]) & (tu < q["u"][1]) & (tv > q["v"][0]) & (tv < q["v"][1])
        a = (tu - q["u"][0]) / (q["u"][1] - q["u"][0])
        b = (q["v"][1] - tv) / (q["v"][1] - q["v"][0])  # 0 at the top edge (y0)
        x = q["x"][0] + a * (q["x"][1] - q["x"][0])
        y = q["y"][0] + b * (q["y"][1] - q["y"][0])
        return inside, np.stack([x, y, np.full_like(x, q["z"])], -1)

    front_px = project(cam, np.array([[-0.1, -0.1, 0.8], [0.1, 0.1, 0.8]]))  # the occluder's box in pixels
    inside, pts = surface(quads["back"])
    px = project(cam, pts.reshape(-1, 3)).reshape(S, S, 2)
    margin = 1.5  # pixels around the occluder's outline where either answer is fine
    hidden = ((px > front_px[0] + margin) & (px < front_px[1] - margin)).all(-1)
    clear = ~((px > front_px[0] - margin) & (px < front_px[1] + margin)).all(-1)
    inner = inside & (tu > 1.0 / S) & (tu < 0.5 - 1.0 / S) & (tv > 1.0 / S) & (tv < 1 - 1.0 / S)
    assert (inner & hidden).sum() > 50 and (inner & clear).sum() > 200
    assert not visible[inner & hidden].any(), "texels behind the front quad must be masked"
    assert visible[inner & clear].all()
    expected = np.concatenate([px / (W, H), np.full((S, S, 1), 128 / 255)], -1) * 255
    err = np.abs(texture[inner & clear] - expected[inner & clear])
    assert err.max() <= 2.0, err.max()
    assert (texture[~visible] == 0).all()

    inside, pts = surface(quads["front"])
    inner = inside & (tu > 0.5 + 1.0 / S) & (tv > 0.5 + 1.0 / S) & (tu < 1 - 1.0 / S) & (tv < 1 - 1.0 / S)
    assert visible[inner].all()
    px = project(cam, pts.reshape(-1, 3)).reshape(S, S, 2)
    expected = np.concatenate([px / (W, H), np.full((S, S, 1), 128 / 255)], -1) * 255
    assert np.abs(texture[inner] - expected[inner]).max() <= 2.0

    inside, _ = surface(quads["away"])
    assert inside.sum() > 100 and not visible[inside].any(), "back-facing texels must be masked"


def test_unwrap_texture_of_a_turned_face(make_renderer, synthetic_model):
    W, H, S = 128, 96, 128
    r = make_renderer(W, H)
    cam = camera(W, H)
    verts, albedo = face_pose(synthetic_model, yaw=1.1, depth=0.4)  # far cheek turned away
    frame = smooth_random_frame(W, H, seed=5)
    texture, visible = r.unwrap_texture(frame, RenderFace(verts, albedo), cam, size=S)
    normals = MeshTopology.from_face_model(synthetic_model).vertex_normals(verts)
    facing = (normals * -verts / np.linalg.norm(verts, axis=1, keepdims=True)).sum(1)
    uv = synthetic_model.uv.numpy()  # per vertex for the synthetic model (triangles_uv == triangles)
    col = np.clip((uv[:, 0] * S).astype(int), 0, S - 1)
    row = np.clip(((1 - uv[:, 1]) * S).astype(int), 0, S - 1)
    assert not visible[row[facing < -0.2], col[facing < -0.2]].any()
    assert 0.2 < visible.mean() < 0.9
    # visible texels at vertices carry the frame colour at the vertex's projection
    px = project(cam, verts)
    ok = visible[row, col] & (facing > 0.5)
    assert ok.sum() > 100
    sampled = frame[px[ok, 1].astype(int), px[ok, 0].astype(int)].astype(int)
    assert np.median(np.abs(texture[row[ok], col[ok]].astype(int) - sampled)) <= 3


# ---------------------------------------------------------------------------------- goldens
GOLDEN_W, GOLDEN_H = 96, 72


@pytest.mark.parametrize(
    "name, mode, overlays, kwargs",
    [
        ("gl_shaded.png", "shaded", (), {}),
        ("gl_albedo.png", "albedo", (), {}),
        ("gl_normals.png", "normals", (), {}),
        ("gl_photo.png", "photo", (), {"photo_shading": 0.5}),
        ("gl_landmarks.png", "shaded", ("landmarks",), {"alpha": 0.6}),
    ],
)
def test_golden_modes(name, mode, overlays, kwargs, make_renderer, synthetic_model, tmp_path):
    r = make_renderer(GOLDEN_W, GOLDEN_H)
    verts, albedo = face_pose(synthetic_model, yaw=0.3, pitch=-0.1)
    frame, cam = pattern_frame(GOLDEN_W, GOLDEN_H), camera(GOLDEN_W, GOLDEN_H)
    img = r.render(frame, [RenderFace(verts, albedo, light())], cam, mode, overlays, **kwargs)
    check_golden(img, name, tmp_path)


def test_golden_wireframe_and_two_tracked_faces(make_renderer, synthetic_data, tmp_path):
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    coarse = MorphableModel(make_synthetic_face_model(grid=(9, 11)))  # readable edges at this size
    r = make_renderer(GOLDEN_W, GOLDEN_H, MeshTopology.from_face_model(coarse))
    cam = camera(GOLDEN_W, GOLDEN_H)
    left, albedo = face_pose(coarse, yaw=0.4, x=-0.09, depth=0.5)
    right, _ = face_pose(coarse, yaw=-0.4, x=0.09, depth=0.5)
    faces = [RenderFace(left, albedo, light(), color_id=0), RenderFace(right, albedo, light(), color_id=1)]
    frame = pattern_frame(GOLDEN_W, GOLDEN_H)
    check_golden(r.render(frame, faces, cam, "none", ("wireframe",)), "gl_wireframe.png", tmp_path)
    check_golden(r.render(frame, faces, cam, "shaded", ("wireframe", "landmarks")), "gl_tracks.png", tmp_path)


# ---------------------------------------------------------------------------------- window
def test_window_without_a_display_is_a_clear_error(monkeypatch):
    pytest.importorskip("glfw")
    if not sys.platform.startswith("linux"):
        pytest.skip("the DISPLAY check is Linux-only")
    from mlanet.edge.window import GlfwWindow

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeStageError, match="no display: run with --no-window or set DISPLAY"):
        GlfwWindow(64, 48, "test")


def test_window_shows_images_and_reports_keys(synthetic_model):
    glfw = pytest.importorskip("glfw")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("no DISPLAY (run under xvfb-run to test the window)")
    from mlanet.edge.window import GlfwWindow

    try:
        window = GlfwWindow(64, 48, "mlanet test")
    except RuntimeStageError as exc:
        pytest.skip(f"cannot open a GLFW window here: {exc}")
    with window:
        fb_w, fb_h = glfw.get_framebuffer_size(window._window)
        image = np.zeros((32, 32, 3), np.uint8)
        image[:16] = (255, 0, 0)  # top half red, bottom half blue
        image[16:] = (0, 0, 255)
        window.draw(image)
        shown = np.frombuffer(window.ctx.screen.read(viewport=(0, 0, fb_w, fb_h), components=3), np.uint8)
        shown = shown.reshape(fb_h, fb_w, 3)[::-1]
        assert tuple(shown[fb_h // 4, fb_w // 2]) == (255, 0, 0)  # right way up
        assert tuple(shown[3 * fb_h // 4, fb_w // 2]) == (0, 0, 255)
        assert tuple(shown[fb_h // 2, 1]) == (0, 0, 0)  # letterbox bar: a square image in a 4:3 window
        window.show(image)
        assert window.poll() == [] and not window.should_close
        window._on_key(window._window, glfw.KEY_Q, 0, glfw.PRESS, 0)
        window._on_key(window._window, glfw.KEY_ESCAPE, 0, glfw.PRESS, 0)
        window._on_key(window._window, glfw.KEY_ESCAPE, 0, glfw.RELEASE, 0)
        assert window.poll() == ["q", "escape"]

        # the renderer works in the window's context and agrees with the offscreen one
        W, H = 64, 48
        cam = camera(W, H)
        verts, albedo = face_pose(synthetic_model)
        face = RenderFace(verts, albedo, light())
        topo = MeshTopology.from_face_model(synthetic_model)
        with FaceRenderer(W, H, topo, ctx=window.ctx) as in_window, FaceRenderer(W, H, topo) as offscreen:
            a = in_window.render(pattern_frame(W, H), [face], cam)
            b = offscreen.render(pattern_frame(W, H), [face], cam)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
        window.show(a)


def test_drawing_only_the_face_region_gives_the_full_render(make_renderer, synthetic_model, monkeypatch):
    """The renderer uploads, draws and reads back only the box the faces cover; the image must equal a
    whole-frame render pixel for pixel (every mode and overlay, a face off-centre and one leaving the
    frame), and a face out of view gives the frame itself."""
    r = make_renderer(160, 120)
    cam = camera(160, 120)
    frame = pattern_frame(160, 120)
    faces = [RenderFace(*face_pose(synthetic_model, yaw=0.2, x=0.05), light(), color_id=0),
             RenderFace(*face_pose(synthetic_model, yaw=-0.4, x=-0.16, depth=0.6), light(), color_id=1)]
    region = r._face_region(faces, cam, ("landmarks",))
    assert 0 < (region[2] - region[0]) * (region[3] - region[1]) < 160 * 120  # a part of the frame
    whole = FaceRenderer._face_region
    for mode in ("shaded", "photo", "albedo", "normals", "none"):
        for overlays in ((), ("landmarks", "wireframe")):
            boxed = r.render(frame, faces, cam, mode, overlays)
            x0, y0, x1, y1 = r.last_box  # outside it the output is the frame (the video writer relies on it)
            outside = np.ones((120, 160), bool)
            outside[y0:y1, x0:x1] = False
            np.testing.assert_array_equal(boxed[outside], frame[outside])
            monkeypatch.setattr(FaceRenderer, "_face_region", lambda *a: None)
            full = r.render(frame, faces, cam, mode, overlays)
            assert r.last_box is None
            monkeypatch.setattr(FaceRenderer, "_face_region", whole)
            np.testing.assert_array_equal(boxed, full, err_msg=f"{mode} {overlays}")
    away = [RenderFace(*face_pose(synthetic_model, x=2.0), light())]
    np.testing.assert_array_equal(r.render(frame, away, cam), frame)
    assert r.last_box == (0, 0, 0, 0)
