"""Tests of the MediaPipe canonical mesh -> face model correspondence (mlanet.morphable.mediapipe_map).

The synthetic tests need nothing but numpy/scipy; the ``assets`` tests register the real
MediaPipe canonical mesh to ICT-FaceKit read from the shared archive, and check that the
registration is bit-identical across BLAS thread counts, OpenBLAS kernels and numpy SIMD levels.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

import mlanet
from mlanet.conventions import METRES_PER_CM, y_up_to_model_frame
from mlanet.errors import AssetError
from mlanet.morphable.mediapipe_map import (
    MEDIAPIPE_ANCHORS,
    MEDIAPIPE_N_VERTICES,
    MediaPipeCorrespondence,
    boundary_edges,
    closest_points_on_mesh,
    closest_points_on_triangles,
    read_mediapipe_canonical,
    register_mediapipe,
)
from mlanet.morphable.obj import read_obj, read_obj_vertices, triangulate


# ----------------------------------------------------------------------------- helpers
def _shared_dir() -> Path:
    env = os.environ.get("MLANET_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1] / ".." / "shared"


def _grid_mesh(nx: int = 21, ny: int = 25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A curved height-field 'face' in metres, model frame (bulging towards -z, the camera).

    Returns (vertices (V, 3), triangles (F, 3) CCW, modes (3, V, 3) smooth deformations).
    """
    x, y = np.meshgrid(np.linspace(-0.07, 0.07, nx), np.linspace(-0.09, 0.09, ny))
    x, y = x.ravel(), y.ravel()
    z = -0.05 + 4.0 * x**2 + 2.5 * y**2
    verts = np.stack([x, y, z], axis=1)
    idx = np.arange(nx * ny).reshape(ny, nx)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])
    # Orient so that (v1 - v0) x (v2 - v0) points towards -z (out of the face, to the camera).
    n = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    flip = n[:, 2] > 0
    tris[flip] = tris[flip][:, [0, 2, 1]]
    modes = np.zeros((3, len(verts), 3))
    modes[0, :, 2] = -0.004 * np.exp(-((x - 0.02) ** 2 + (y + 0.01) ** 2) / 0.03**2)  # a bump
    modes[1, :, 2] = 0.003 * np.sin(np.pi * x / 0.07) * np.cos(np.pi * y / 0.18)  # a twist
    modes[2, :, 2] = -0.003 * (y / 0.09) ** 3  # chin forward / forehead back
    return verts, tris.astype(np.int64), modes


def _interior_triangles(tris: np.ndarray, n_vertices: int, rings: int = 2) -> np.ndarray:
    """Indices of triangles at least ``rings`` vertex rings away from the mesh boundary."""
    near = np.zeros(n_vertices, dtype=bool)
    near[boundary_edges(tris).ravel()] = True
    for _ in range(rings):
        near[tris[near[tris].any(axis=1)].ravel()] = True
    return np.flatnonzero(~near[tris].any(axis=1))


def _synthetic_problem(seed: int = 0, with_expression: bool = False):
    rng = np.random.default_rng(seed)
    verts, tris, modes = _grid_mesh()
    n_v = len(verts)
    inner_tris = _interior_triangles(tris, n_v)
    inner_verts = np.unique(tris[inner_tris])
    landmarks = rng.choice(inner_verts, size=68, replace=False)
    coeffs = np.array([0.8, -0.5, 0.6])
    target = verts + np.tensordot(coeffs, modes, axes=1)
    expression = None
    if with_expression:
        yy = verts[:, 1]
        expression = np.zeros((2, n_v, 3))
        expression[0, :, 1] = 0.004 * np.clip(yy / 0.09, 0, None) ** 2  # lower face drops
        expression[1, :, 0] = 0.003 * np.sin(np.pi * verts[:, 0] / 0.14)  # unused (weight 0)
        target = target + 0.5 * expression[0]
    # 200 points: 10 anchors exactly at landmark vertices, the rest random on interior triangles.
    n_pts, n_anchor = 200, 10
    tri_idx = np.empty(n_pts, dtype=np.int64)
    bary = np.empty((n_pts, 3))
    for i in range(n_anchor):
        t = np.flatnonzero((tris == landmarks[i]).any(axis=1))[0]
        tri_idx[i] = t
        bary[i] = (tris[t] == landmarks[i]).astype(float)
    tri_idx[n_anchor:] = rng.choice(inner_tris, size=n_pts - n_anchor)
    bary[n_anchor:] = rng.dirichlet(np.ones(3), size=n_pts - n_anchor)
    q_true = np.einsum("nk,nkj->nj", bary, target[tris[tri_idx]])
    # MediaPipe-side points: the inverse of a known similarity q = s R p + t.
    scale = 1.1
    rot = Rotation.from_rotvec(np.radians(10.0) * np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2]))
    trans = np.array([0.01, -0.02, 0.03])
    p = rot.inv().apply(q_true - trans) / scale
    anchors = [(i, i) for i in range(n_anchor)]
    lm68 = landmarks.copy()
    return dict(
        p=p, verts=verts, tris=tris, modes=modes, lm68=lm68, anchors=anchors, target=target, q_true=q_true,
        scale=scale, expression=expression, tri_idx=tri_idx, bary=bary,
    )


# ------------------------------------------------------------------ closest points
def test_closest_point_on_triangle_known_values():
    tri = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    pts = np.array(
        [
            [0.25, 0.25, 2.0],  # above the interior
            [-1.0, -1.0, 0.5],  # beyond vertex a
            [2.0, -0.5, 0.0],  # beyond vertex b
            [0.5, -1.0, 0.0],  # beyond edge ab
            [1.0, 1.0, -3.0],  # beyond edge bc
            [-2.0, 0.5, 0.0],  # beyond edge ca
        ]
    )
    closest, bary = closest_points_on_triangles(pts, np.broadcast_to(tri, (len(pts), 3, 3)))
    expected = np.array(
        [[0.25, 0.25, 0.0], [0, 0, 0], [1, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0]], dtype=float
    )
    np.testing.assert_allclose(closest, expected, atol=1e-12)
    np.testing.assert_allclose(bary.sum(axis=1), 1.0)
    assert (bary >= 0).all()
    np.testing.assert_allclose(np.einsum("nk,kj->nj", bary, tri), closest, atol=1e-12)


def test_closest_points_on_mesh_matches_brute_force():
    rng = np.random.default_rng(1)
    verts, tris, _ = _grid_mesh(9, 11)
    verts = verts + rng.normal(scale=0.002, size=verts.shape)  # irregular triangles
    pts = verts.mean(0) + rng.normal(scale=[0.06, 0.08, 0.03], size=(300, 3))
    got = closest_points_on_mesh(pts, verts, tris)
    # Brute force: every point against every triangle.
    n, f = len(pts), len(tris)
    closest, _ = closest_points_on_triangles(np.repeat(pts, f, axis=0), np.tile(verts[tris], (n, 1, 1)))
    dist = np.linalg.norm(closest - np.repeat(pts, f, axis=0), axis=1).reshape(n, f)
    np.testing.assert_allclose(got.distance, dist.min(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.distance, np.linalg.norm(got.point - pts, axis=1), atol=1e-12)
    np.testing.assert_allclose(
        np.einsum("nk,nkj->nj", got.barycentric, verts[tris[got.triangle]]), got.point, atol=1e-12
    )


def test_boundary_edges_of_grid():
    _, tris, _ = _grid_mesh(5, 4)
    # A 5 x 4 vertex grid has 2 * (4 + 3) boundary edges.
    assert len(boundary_edges(tris)) == 14


# ----------------------------------------------------------------- registration
@pytest.mark.parametrize("with_expression", [False, True])
def test_register_synthetic_known_answer(with_expression):
    pb = _synthetic_problem(with_expression=with_expression)
    t0 = time.perf_counter()
    res = register_mediapipe(
        pb["p"], pb["verts"], pb["modes"], pb["tris"], pb["lm68"],
        expression_basis=pb["expression"], anchors=pb["anchors"], regularisation=1e-4,
        expression_regularisation=1e-4, n_iterations=100, tolerance_mm=1e-6,
    )
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0
    n = len(pb["p"])
    assert res.triangle.shape == (n,) and res.triangle.dtype == np.int32
    assert res.barycentric.shape == (n, 3) and res.barycentric.dtype == np.float32
    assert (res.barycentric >= 0).all()
    np.testing.assert_allclose(res.barycentric.sum(axis=1), 1.0, atol=1e-6)
    # Recovered points, on the true deformed shape, coincide with the known ones.
    err_mm = np.linalg.norm(res.points_on(pb["target"]) - pb["q_true"], axis=1) * 1000
    assert err_mm.max() < 0.05, f"max error {err_mm.max():.4f} mm"
    assert res.residual_mm.max() < 0.01
    assert res.scale == pytest.approx(pb["scale"], rel=1e-4)
    np.testing.assert_allclose(res.stats["identity_coefficients"], [0.8, -0.5, 0.6], atol=0.01)
    if with_expression:
        np.testing.assert_allclose(res.stats["expression_weights"], [0.5, 0.0], atol=0.01)
    assert all(v < 0.01 for v in res.stats["anchor_residual_mm"].values())
    assert res.stats["rigid"]["max_mm"] > res.stats["final"]["max_mm"]
    assert res.stats["n_on_boundary"] == 0 and not res.on_boundary.any()
    json.dumps(res.stats)  # the report is JSON-serialisable (for the model file's header)


def test_register_flags_points_beyond_the_boundary():
    pb = _synthetic_problem()
    p = pb["p"].copy()
    # Move two points far outside the grid (beyond x = +0.07 in the model frame).
    q_out = np.array([[0.10, 0.0, -0.02], [0.0, 0.13, -0.01]])
    rot = Rotation.from_rotvec(np.radians(10.0) * np.array([0.3, 1.0, 0.2]) / np.linalg.norm([0.3, 1.0, 0.2]))
    p[-2:] = rot.inv().apply(q_out - np.array([0.01, -0.02, 0.03])) / pb["scale"]
    res = register_mediapipe(
        p, pb["target"], pb["modes"], pb["tris"], pb["lm68"], anchors=pb["anchors"], regularisation=1e-3
    )
    assert res.on_boundary[-2:].all()
    assert res.on_boundary.sum() == 2 == res.stats["n_on_boundary"]
    assert (res.residual_mm[-2:] > 10).all()
    # The outliers do not disturb the others.
    err_mm = np.linalg.norm(res.points_on(pb["target"])[:-2] - pb["q_true"][:-2], axis=1) * 1000
    assert err_mm.max() < 0.05


def test_correspondence_extra_round_trip_and_points_on_batches():
    pb = _synthetic_problem()
    res = register_mediapipe(pb["p"], pb["verts"], pb["modes"], pb["tris"], pb["lm68"], anchors=pb["anchors"])
    extra = res.to_extra()
    assert set(extra) == {
        "mediapipe/triangle", "mediapipe/barycentric", "mediapipe/residual_mm", "mediapipe/on_boundary"
    }
    assert extra["mediapipe/triangle"].dtype == np.int32
    assert extra["mediapipe/barycentric"].dtype == np.float32
    assert extra["mediapipe/residual_mm"].dtype == np.float32
    assert extra["mediapipe/on_boundary"].dtype == np.uint8
    again = MediaPipeCorrespondence.from_extra(extra, pb["tris"])
    shapes = pb["verts"] + np.tensordot(np.random.default_rng(2).normal(size=(2, 4, 3)), pb["modes"], axes=1)
    out = res.points_on(shapes)
    assert out.shape == (2, 4, len(pb["p"]), 3)
    np.testing.assert_allclose(again.points_on(shapes), out)
    np.testing.assert_allclose(out[1, 2], res.points_on(shapes[1, 2]))
    with pytest.raises(ValueError, match="vertices"):
        res.points_on(np.zeros((5, 3)))


def test_register_rejects_bad_input():
    pb = _synthetic_problem()
    args = (pb["p"], pb["verts"], pb["modes"], pb["tris"], pb["lm68"])
    with pytest.raises(ValueError, match="mp_vertices"):
        register_mediapipe(pb["p"][:, :2], *args[1:], anchors=pb["anchors"])
    with pytest.raises(ValueError, match="identity_basis"):
        register_mediapipe(*args[:2], pb["modes"][:, :-1], *args[3:], anchors=pb["anchors"])
    with pytest.raises(ValueError, match="landmarks68"):
        register_mediapipe(*args[:4], pb["lm68"][:10], anchors=pb["anchors"])
    with pytest.raises(ValueError, match="at least 3"):
        register_mediapipe(*args, anchors=pb["anchors"][:2])
    with pytest.raises(ValueError, match="point indices"):
        register_mediapipe(*args, anchors=[(0, 0), (1, 1), (999, 2)])
    with pytest.raises(ValueError, match="landmark indices"):
        register_mediapipe(*args, anchors=[(0, 0), (1, 1), (2, 68)])
    collinear = pb["p"].copy()
    collinear[:3] = [[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.02, 0.0, 0.0]]
    with pytest.raises(ValueError, match="collinear"):
        register_mediapipe(collinear, *args[1:], anchors=pb["anchors"][:3])
    with pytest.raises(ValueError, match="NaN"):
        register_mediapipe(np.full_like(pb["p"], np.nan), *args[1:], anchors=pb["anchors"])


def test_anchor_constant_is_well_formed():
    assert len(MEDIAPIPE_ANCHORS) >= 8
    with pytest.raises(TypeError):
        MEDIAPIPE_ANCHORS[5] = 30  # type: ignore[index]
    mp_idx, ibug = np.array(list(MEDIAPIPE_ANCHORS.items())).T
    assert ((0 <= mp_idx) & (mp_idx < MEDIAPIPE_N_VERTICES)).all()
    assert len(set(ibug.tolist())) == len(ibug)
    jaw = set(range(17)) - {8}
    assert not jaw & set(ibug.tolist()), "jaw contour points are not anatomical anchors"


# ----------------------------------------------------------------------- reading
def test_read_mediapipe_canonical_bad_files(tmp_path):
    missing = tmp_path / "nope.obj"
    with pytest.raises(AssetError, match="nope.obj"):
        read_mediapipe_canonical(missing)
    small = tmp_path / "small.obj"
    small.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    with pytest.raises(AssetError, match=r"small\.obj.*3 vertices"):
        read_mediapipe_canonical(small)
    iris = tmp_path / "iris.obj"
    iris.write_text("".join(f"v {i * 0.03} {i * 0.02} 1\n" for i in range(478)))
    with pytest.raises(AssetError, match="iris"):
        read_mediapipe_canonical(iris)
    metres = tmp_path / "metres.obj"
    metres.write_text("".join(f"v {(i % 2 - 0.5) * 0.15} {i * 1e-4} 0.05\n" for i in range(468)))
    with pytest.raises(AssetError, match="centimetres"):
        read_mediapipe_canonical(metres)
    garbage = tmp_path / "garbage.obj"
    garbage.write_bytes(b"\x00\x01 not an obj")
    with pytest.raises(AssetError, match="garbage.obj"):
        read_mediapipe_canonical(garbage)


# ------------------------------------------------------------------ real assets
ICT_FACE_VERTICES = 9409  # ICT-FaceKit's "Face" geometry is vertices [0, 9408]
ICT_TEST_MODES = 30


@pytest.fixture(scope="module")
def ict_face():
    """ICT-FaceKit's face region (model frame, metres) read straight from the shared archive."""
    archive = _shared_dir() / "assets" / "ict-facekit" / "FaceXModel.tar.xz"
    if not archive.is_file():
        pytest.skip(f"ICT-FaceKit archive not found at {archive} (set MLANET_SHARED to the shared folder)")
    wanted_ids = {f"identity{i:03d}.obj": i for i in range(ICT_TEST_MODES)}
    wanted = set(wanted_ids) | {"generic_neutral_mesh.obj", "vertex_indices.json"}
    shapes: dict[int, np.ndarray] = {}
    neutral_mesh = None
    indices = None
    # One sequential pass over the xz stream (random access would decompress it again per member).
    with tarfile.open(archive, mode="r|xz") as tar:
        for member in tar:
            name = Path(member.name).name
            if not member.isfile() or name not in wanted:
                continue
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if name == "generic_neutral_mesh.obj":
                neutral_mesh = read_obj(data, f"{archive}:{name}")
            elif name == "vertex_indices.json":
                indices = json.load(io.BytesIO(data))
            else:
                shapes[wanted_ids[name]] = read_obj_vertices(data, f"{archive}:{name}")
    assert neutral_mesh is not None and indices is not None and len(shapes) == ICT_TEST_MODES
    nv = ICT_FACE_VERTICES
    neutral = neutral_mesh.vertices[:nv]
    polys = [f for f in neutral_mesh.faces if f.max() < nv]
    tris, _ = triangulate(polys)
    mean = y_up_to_model_frame(neutral, METRES_PER_CM)
    basis = np.stack([y_up_to_model_frame(shapes[i][:nv] - neutral, METRES_PER_CM) for i in range(ICT_TEST_MODES)])
    lm68 = np.asarray(indices["idx_to_landmark_verts"], dtype=np.int64)
    assert lm68.shape == (68,) and lm68.max() < nv
    return dict(mean=mean, basis=basis, tris=tris, lm68=lm68)


@pytest.fixture(scope="module")
def mediapipe_canonical():
    path = _shared_dir() / "assets" / "mediapipe-canonical" / "canonical_face_model.obj"
    if not path.is_file():
        pytest.skip(f"MediaPipe canonical mesh not found at {path} (set MLANET_SHARED to the shared folder)")
    return read_mediapipe_canonical(path)


@pytest.mark.assets
def test_read_mediapipe_canonical_frame(mediapipe_canonical):
    mp = mediapipe_canonical
    assert mp.shape == (MEDIAPIPE_N_VERTICES, 3) and mp.dtype == np.float64
    width = np.ptp(mp[:, 0])
    assert 0.10 < width < 0.20  # metres
    # Model frame: the chin is below the nose (+y), the nose tip closest to the camera (-z).
    assert mp[175, 1] > mp[4, 1] > mp[10, 1]
    assert mp[4, 2] == mp[:, 2].min()
    # Subject's right eye (33) at -x, like ICT-FaceKit.
    assert mp[33, 0] < 0 < mp[263, 0]


@pytest.mark.assets
def test_register_mediapipe_on_ict(ict_face, mediapipe_canonical):
    mp = mediapipe_canonical
    mean, tris, lm68 = ict_face["mean"], ict_face["tris"], ict_face["lm68"]
    t0 = time.perf_counter()
    res = register_mediapipe(mp, mean, ict_face["basis"], tris, lm68)
    elapsed = time.perf_counter() - t0
    st = res.stats
    fmt = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items())  # noqa: E731
    print(
        f"\nMediaPipe -> ICT ({ict_face['basis'].shape[0]} identity modes, {len(mean)} vertices, "
        f"{len(tris)} triangles): "
        f"{elapsed:.2f} s, {st['n_iterations']} iterations, scale {res.scale:.4f}\n"
        f"  rigid-only residual: {fmt(st['rigid'])}\n"
        f"  final residual:      {fmt(st['final'])}\n"
        f"  anchors mm: {fmt(st['anchor_residual_mm'])}\n"
        f"  on boundary: {st['n_on_boundary']}, outliers: {st['n_outliers']}"
    )
    assert elapsed < 30.0
    anchors = st["anchor_residual_mm"]
    assert len(anchors) == len(MEDIAPIPE_ANCHORS)
    assert max(anchors.values()) < 3.0, anchors
    assert max(st["anchor_mapped_mm"].values()) < 3.0, st["anchor_mapped_mm"]
    final = st["final"]
    assert final["median_mm"] < 1.0 and final["p95_mm"] < 2.0 and final["max_mm"] < 4.0, final
    assert final["mean_mm"] < st["rigid"]["mean_mm"]
    # Every MediaPipe point maps into the face region, inside the mesh (not onto its rim).
    assert res.triangle.min() >= 0 and res.triangle.max() < len(tris)
    assert res.corners.max() < ICT_FACE_VERTICES
    assert st["n_on_boundary"] == 0, np.flatnonzero(res.on_boundary)
    np.testing.assert_allclose(res.barycentric.sum(axis=1), 1.0, atol=1e-6)
    # Mirror-symmetric MediaPipe vertices land on mirror-symmetric spots of the mean face.
    dist, mirror = cKDTree(mp).query(mp * [-1.0, 1.0, 1.0])
    assert dist.max() < 1e-6  # the canonical mesh is exactly symmetric
    on_mean = res.points_on(mean)
    sym_err_mm = np.linalg.norm(on_mean - on_mean[mirror] * [-1.0, 1.0, 1.0], axis=1) * 1000
    assert sym_err_mm.max() < 2.0, sym_err_mm.max()
    # MediaPipe's nose tip (vertex 4, the pronasale) maps onto ICT's nose-tip landmark (iBUG 30).
    assert np.linalg.norm(on_mean[4] - mean[lm68[30]]) * 1000 < 1.5


# ------------------------------------------------------- determinism across machines
# The registration as the asset builder runs it (100 identity modes + 55 expressions), in
# fresh interpreters whose BLAS threads, OpenBLAS kernel or numpy SIMD level differ; the
# stored arrays must come out bit-identical (they used to differ in up to 25 triangles).
_REGISTER_CHILD = r"""
import json, sys
import numpy as np
from mlanet.morphable.mediapipe_map import register_mediapipe

z = np.load(sys.argv[1])
res = register_mediapipe(
    z["mp"], z["mean"], z["identity"], z["triangles"], z["landmarks68"], expression_basis=z["expression"]
)
np.savez(sys.argv[2], **{k.replace("/", "__"): v for k, v in res.to_extra().items()})
info = {"blas_architectures": None, "numpy_simd": None, "n_on_boundary": res.stats["n_on_boundary"]}
try:
    import threadpoolctl
    libs = threadpoolctl.threadpool_info()
    info["blas_architectures"] = sorted(
        {str(lib.get("architecture")) for lib in libs if lib.get("internal_api") == "openblas"}
    )
except ImportError:
    pass
try:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    info["numpy_simd"] = [t for t in __cpu_dispatch__ if __cpu_features__.get(t)]
except ImportError:
    pass
print(json.dumps(info))
"""
_ENV_KNOBS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE",
              "NPY_DISABLE_CPU_FEATURES")


@pytest.fixture(scope="module")
def builder_inputs(tmp_path_factory):
    """The asset builder's registration inputs (float64 mean, float32 deltas), saved to an .npz."""
    from mlanet.morphable.sources.ict import crop_mesh
    from mlanet.morphable.sources.ict_archive import read_ict_release
    from mlanet.morphable.sources.ict_topology import CROP_PRESETS, DEFAULT_CROP

    archive = _shared_dir() / "assets" / "ict-facekit" / "FaceXModel.tar.xz"
    mp_path = _shared_dir() / "assets" / "mediapipe-canonical" / "canonical_face_model.obj"
    for path in (archive, mp_path):
        if not path.is_file():
            pytest.skip(f"{path} not found (set MLANET_SHARED to the shared folder)")
    release = read_ict_release(archive)
    mesh = crop_mesh(release, CROP_PRESETS[DEFAULT_CROP][0])
    to_model = lambda v: y_up_to_model_frame(v[mesh.vertex_index], METRES_PER_CM)  # noqa: E731
    mean = to_model(release.neutral.vertices)

    def deltas(names):
        return np.stack([to_model(release.shapes[n]) - mean for n in names]).astype(np.float32)

    path = tmp_path_factory.mktemp("mediapipe_determinism") / "inputs.npz"
    np.savez(
        path, mp=read_mediapipe_canonical(mp_path), mean=mean, identity=deltas(release.identity_names),
        expression=deltas(release.expression_names), triangles=mesh.triangles,
        landmarks68=mesh.remap(release.vertex_indices["idx_to_landmark_verts"]),
    )
    return path


def _register_in_child(inputs: Path, out: Path, **env_settings: str) -> tuple[dict, dict[str, np.ndarray]]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KNOBS}
    env.update(env_settings)
    # The child imports the same mlanet as this process.
    env["PYTHONPATH"] = os.pathsep.join([str(Path(mlanet.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", _REGISTER_CHILD, str(inputs), str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"registration with {env_settings} failed:\n{proc.stderr[-3000:]}"
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out) as z:
        arrays = {k.replace("__", "/"): z[k] for k in z.files}
    return info, arrays


@pytest.fixture(scope="module")
def single_thread_registration(builder_inputs):
    return _register_in_child(
        builder_inputs, builder_inputs.with_name("one_thread.npz"), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
    )


@pytest.mark.assets
@pytest.mark.parametrize("variant", ["two_threads", "other_openblas_kernel", "numpy_baseline_simd"])
def test_registration_is_bit_identical_across_environments(variant, builder_inputs, single_thread_registration):
    ref_info, ref = single_thread_registration
    assert set(ref) == {"mediapipe/triangle", "mediapipe/barycentric", "mediapipe/residual_mm", "mediapipe/on_boundary"}
    assert ref_info["n_on_boundary"] == 0
    if variant == "two_threads":
        settings = {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}
    elif variant == "other_openblas_kernel":
        if ref_info["blas_architectures"] is None:
            pytest.skip("threadpoolctl is not installed: cannot confirm that OPENBLAS_CORETYPE changes the kernel")
        coretype = "Sandybridge" if "Haswell" in ref_info["blas_architectures"] else "Haswell"
        settings = {"OPENBLAS_CORETYPE": coretype}
    else:
        if not ref_info["numpy_simd"]:
            pytest.skip("numpy reports no SIMD dispatch targets above its baseline on this CPU")
        settings = {"NPY_DISABLE_CPU_FEATURES": " ".join(ref_info["numpy_simd"])}
    info, got = _register_in_child(builder_inputs, builder_inputs.with_name(f"{variant}.npz"), **settings)
    if variant == "other_openblas_kernel" and info["blas_architectures"] == ref_info["blas_architectures"]:
        pytest.skip(f"OpenBLAS ignores OPENBLAS_CORETYPE here (still {info['blas_architectures']})")
    if variant == "numpy_baseline_simd":
        assert info["numpy_simd"] == [], info  # the variant really ran numpy's baseline kernels
    for key, value in ref.items():
        assert got[key].dtype == value.dtype
        differ = np.flatnonzero((got[key] != value).reshape(len(value), -1).any(axis=1))
        assert differ.size == 0, f"{key} differs under {settings} at {differ.size} points, e.g. {differ[:10].tolist()}"
