"""Tests of the MICC Florence protocol (mlanet.eval.micc) on synthetic scans with known answers.

A "scan" is a dense set of points sampled uniformly (by area, barycentric) on the synthetic
face model's mesh; the prediction is the same mesh (or a modified one) under a known
similarity transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from mlanet.cli import main
from mlanet.errors import AssetError
from mlanet.eval.micc import (
    MICC_RADIUS_M,
    evaluate_micc,
    evaluate_micc_folders,
    micc_rmse,
    read_scan_points,
    umeyama,
)

NOSE_TIP = 30  # iBUG-68 index


@pytest.fixture(scope="module")
def face():
    """(vertices (V, 3) m, triangles (F, 3), landmark vertex indices (68,)) of the synthetic face."""
    from mlanet.morphable.synthetic import make_synthetic_face_model

    d = make_synthetic_face_model()
    return np.asarray(d.mean_shape, np.float64), np.asarray(d.triangles, np.int64), np.asarray(d.landmarks68)


def sample_surface(verts: np.ndarray, tris: np.ndarray, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n points uniform by area on the mesh: (points (n, 3), triangle index (n,))."""
    rng = np.random.default_rng(seed)
    corners = verts[tris]
    area = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    t = rng.choice(len(tris), n, p=area / area.sum())
    bary = rng.dirichlet([1.0, 1.0, 1.0], n)
    return np.einsum("nk,nkj->nj", bary, corners[t]), t


def vertex_normals_np(verts: np.ndarray, tris: np.ndarray) -> np.ndarray:
    from mlanet.geometry.mesh import vertex_normals
    import torch

    return vertex_normals(torch.tensor(verts)[None], torch.tensor(tris))[0].numpy()


SIM_ROT = Rotation.from_rotvec(np.deg2rad(20.0) * np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])).as_matrix()
SIM_SCALE, SIM_T = 1.2, np.array([0.03, -0.02, 0.5])


def similarity(x: np.ndarray) -> np.ndarray:
    return SIM_SCALE * x @ SIM_ROT.T + SIM_T


@pytest.fixture(scope="module")
def scan(face):
    verts, tris, _ = face
    return sample_surface(verts, tris, 4000)


def noisy(landmarks: np.ndarray, sigma_m: float = 0.003, seed: int = 3) -> np.ndarray:
    return landmarks + np.random.default_rng(seed).normal(0.0, sigma_m, landmarks.shape)


# --------------------------------------------------------------------------------- umeyama
def test_umeyama_recovers_a_similarity() -> None:
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 3))
    s, r, t = umeyama(src, similarity(src))
    assert s == pytest.approx(SIM_SCALE) and np.allclose(r, SIM_ROT) and np.allclose(t, SIM_T)
    # A mirrored target still gives a proper rotation.
    _, r2, _ = umeyama(src, src * np.array([-1.0, 1.0, 1.0]))
    assert np.linalg.det(r2) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        umeyama(src[:2], src[:2])


# ------------------------------------------------------------------------- known answers
def test_a_same_mesh_under_a_similarity_scores_zero(face, scan) -> None:
    verts, tris, lm = face
    gt, _ = scan
    pred = similarity(verts)
    # Landmarks with 3 mm noise: the landmark alignment is off by about 1 mm, ICP must fix it.
    res = micc_rmse(pred, tris, gt, verts[lm[NOSE_TIP]], pred[lm], noisy(verts[lm]))
    assert res["initial_rmse_mm"] > 0.3
    assert res["rmse_mm"] < 0.01
    assert res["converged"]
    assert res["scale"] == pytest.approx(1.0 / SIM_SCALE, rel=1e-6)
    assert np.allclose(np.asarray(res["rotation"]), SIM_ROT.T, atol=1e-6)
    inside = np.linalg.norm(gt - verts[lm[NOSE_TIP]], axis=1) <= MICC_RADIUS_M
    assert res["n_points"] == int(inside.sum()) < len(gt)  # the synthetic face reaches past 95 mm
    json.dumps(res, allow_nan=False)


def test_b_offset_along_normals_is_one_millimetre(face, scan) -> None:
    """The error measure: the prediction offset by 1 mm along its normals, in the scan's frame."""
    verts, tris, lm = face
    gt, _ = scan
    offset = verts + 0.001 * vertex_normals_np(verts, tris)
    res = micc_rmse(offset, tris, gt, verts[lm[NOSE_TIP]], None, None, icp_iterations=0)
    assert res["rmse_mm"] == pytest.approx(1.0, abs=0.05)
    assert res["scale"] == 1.0 and res["iterations"] == 0


def test_b_one_millimetre_scan_noise_survives_alignment(face, scan) -> None:
    """Scan points moved +-1 mm (random sign) along the surface normal: no similarity can hide it."""
    verts, tris, lm = face
    gt, tri_of = scan
    corners = verts[tris]
    fn = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    sign = np.random.default_rng(5).choice([-1.0, 1.0], len(gt))
    gt_noisy = gt + 0.001 * sign[:, None] * fn[tri_of]
    pred = similarity(verts)
    res = micc_rmse(pred, tris, gt_noisy, verts[lm[NOSE_TIP]], pred[lm], noisy(verts[lm]))
    assert res["rmse_mm"] == pytest.approx(1.0, abs=0.05)
    assert res["scale"] == pytest.approx(1.0 / SIM_SCALE, rel=1e-2)  # rim effects bias it slightly


def test_b_scaled_icp_can_absorb_a_uniform_offset(face, scan) -> None:
    """Documented property of the protocol: on a nearly spherical cap, a uniform 1 mm normal offset is
    mostly a change of scale, which ICP with scale removes. The result never exceeds the unaligned error."""
    verts, tris, lm = face
    gt, _ = scan
    offset = verts + 0.001 * vertex_normals_np(verts, tris)
    pred = similarity(offset)
    res = micc_rmse(pred, tris, gt, verts[lm[NOSE_TIP]], pred[lm], noisy(verts[lm]))
    assert 0.0 < res["rmse_mm"] < 1.0


def test_c_points_beyond_the_radius_are_excluded(face, scan) -> None:
    verts, tris, lm = face
    gt, _ = scan
    nose = verts[lm[NOSE_TIP]]
    rng = np.random.default_rng(7)
    direction = rng.normal(size=(500, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    far = nose + direction * rng.uniform(0.12, 0.30, (500, 1))  # 120-300 mm away: hair, shoulders
    pred = similarity(verts)
    args = (pred, tris)
    kw = dict(pred_landmarks=pred[lm], gt_landmarks=noisy(verts[lm]))
    base = micc_rmse(*args, gt, nose, **kw)
    with_far = micc_rmse(*args, np.concatenate([gt, far]), nose, **kw)
    assert with_far["n_points"] == base["n_points"]
    assert with_far["rmse_mm"] == base["rmse_mm"]
    # A smaller radius keeps fewer points, all within it.
    small = micc_rmse(*args, gt, nose, radius_m=0.05, **kw)
    assert small["n_points"] == int((np.linalg.norm(gt - nose, axis=1) <= 0.05).sum()) < base["n_points"]
    # Without cropping the far points would dominate.
    huge = micc_rmse(*args, np.concatenate([gt, far]), nose, radius_m=1.0, icp_iterations=0, **kw)
    assert huge["rmse_mm"] > 10.0


def test_bad_input(face, scan) -> None:
    verts, tris, lm = face
    gt, _ = scan
    nose = verts[lm[NOSE_TIP]]
    with pytest.raises(ValueError, match="within"):
        micc_rmse(verts, tris, gt + 1.0, nose, None, None)
    with pytest.raises(ValueError, match="both"):
        micc_rmse(verts, tris, gt, nose, verts[lm], None)
    with pytest.raises(ValueError, match="pred_triangles"):
        micc_rmse(verts, tris + len(verts), gt, nose, None, None)
    with pytest.raises(ValueError, match="correspond"):
        micc_rmse(verts, tris, gt, nose, verts[lm[:10]], verts[lm])


# --------------------------------------------------------------------------------- aggregation
def test_d_aggregation_over_subjects_and_settings() -> None:
    records = [
        {"subject": "s1", "setting": "indoor", "rmse_mm": 1.0},
        {"subject": "s2", "setting": "indoor", "rmse_mm": 3.0},
        {"subject": "s1", "setting": "cooperative", "rmse_mm": 2.0},
        {"subject": "s2", "setting": "cooperative", "rmse_mm": 2.0},
        {"subject": "s1", "setting": "outdoor", "rmse_mm": 4.0},
    ]
    agg = evaluate_micc(records)
    assert list(agg["settings"]) == ["cooperative", "indoor", "outdoor"]
    assert agg["settings"]["cooperative"] == {"mean_mm": 2.0, "std_mm": 0.0, "n": 2}
    assert agg["settings"]["indoor"] == {"mean_mm": 2.0, "std_mm": 1.0, "n": 2}
    assert agg["settings"]["outdoor"]["n"] == 1
    assert agg["overall"]["mean_mm"] == pytest.approx(2.4)
    assert agg["overall"]["std_mm"] == pytest.approx(np.std([1, 3, 2, 2, 4]))
    assert agg["subjects"] == ["s1", "s2"]
    with pytest.raises(ValueError, match="duplicate"):
        evaluate_micc(records + [{"subject": "s1", "setting": "indoor", "rmse_mm": 1.0}])
    with pytest.raises(ValueError):
        evaluate_micc([])
    with pytest.raises(ValueError, match="rmse_mm"):
        evaluate_micc([{"subject": "s1", "setting": "indoor"}])


# --------------------------------------------------------------------------------- files + CLI
def _write_obj(path: Path, verts: np.ndarray, tris: np.ndarray | None = None) -> None:
    lines = [f"v {x:.9f} {y:.9f} {z:.9f}" for x, y, z in verts]
    if tris is not None:
        lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in tris]
    path.write_text("\n".join(lines) + "\n")


def _write_ply(path: Path, verts: np.ndarray, binary: bool) -> None:
    header = (
        f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\ncomment synthetic scan\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"
    )
    if binary:
        rec = np.zeros(len(verts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1")])
        rec["x"], rec["y"], rec["z"] = verts.T
        path.write_bytes(header.encode() + rec.tobytes())
    else:
        path.write_text(header + "".join(f"{x:.4f} {y:.4f} {z:.4f} 200\n" for x, y, z in verts))


def test_scan_readers_agree(tmp_path: Path, scan) -> None:
    gt = scan[0][:200] * 1000.0  # mm
    _write_obj(tmp_path / "a.obj", gt)
    _write_ply(tmp_path / "a.ply", gt, binary=False)
    _write_ply(tmp_path / "b.ply", gt, binary=True)
    ref = read_scan_points(tmp_path / "a.obj", unit="mm")
    assert ref == pytest.approx(gt / 1000.0)
    assert read_scan_points(tmp_path / "a.ply", unit="mm") == pytest.approx(ref, abs=1e-7)
    assert read_scan_points(tmp_path / "b.ply", unit="mm") == pytest.approx(ref, abs=1e-7)
    (tmp_path / "c.ply").write_bytes(b"not a ply")
    with pytest.raises(AssetError, match="c.ply"):
        read_scan_points(tmp_path / "c.ply")


@pytest.fixture(scope="module")
def micc_layout(face, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """Two subjects x three settings; GT in millimetres (one OBJ, one binary PLY), predictions in metres."""
    verts, tris, lm = face
    root = tmp_path_factory.mktemp("micc")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    expected = {}
    normals = vertex_normals_np(verts, tris)
    for k, subject in enumerate(["subject01", "subject02"]):
        pts, _ = sample_surface(verts, tris, 1500, seed=10 + k)
        if k == 0:
            _write_obj(gt_dir / f"{subject}.obj", pts * 1000.0)
        else:
            _write_ply(gt_dir / f"{subject}.ply", pts * 1000.0, binary=True)
        np.savetxt(gt_dir / f"{subject}.landmarks.txt", noisy(verts[lm], seed=k) * 1000.0, header="x y z (mm)")
        for setting, offset_mm in (("cooperative", 0.0), ("indoor", 0.5), ("outdoor", 1.0)):
            d = pred_dir / setting
            d.mkdir(parents=True, exist_ok=True)
            pred = similarity(verts + offset_mm / 1000.0 * normals)
            _write_obj(d / f"{subject}.obj", pred, tris)
            np.savetxt(d / f"{subject}.landmarks.txt", pred[lm])
            expected[(subject, setting)] = offset_mm
    return gt_dir, pred_dir, expected


def test_folder_evaluation_and_cli(micc_layout, tmp_path: Path, capsys) -> None:
    gt_dir, pred_dir, expected = micc_layout
    out = tmp_path / "micc.json"
    rc = main(["eval", "micc", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", str(out), "--gt-unit", "mm"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    result = json.loads(out.read_text())
    assert len(result["records"]) == 6 and result["subjects"] == ["subject01", "subject02"]
    assert list(result["settings"]) == ["cooperative", "indoor", "outdoor"]
    for rec in result["records"]:
        if expected[(rec["subject"], rec["setting"])] == 0.0:
            assert rec["rmse_mm"] < 0.01  # the float32 PLY and 9-digit OBJ round the scan by < 1 um
        else:  # offsets: ICP with scale absorbs most of a uniform offset, never adds error
            assert rec["rmse_mm"] < expected[(rec["subject"], rec["setting"])]
    assert result["settings"]["cooperative"]["mean_mm"] < 0.01
    assert result["overall"]["n"] == 6
    assert "cooperative" in printed.out and str(out) in printed.out


def test_folder_errors_name_the_file(micc_layout, tmp_path: Path, capsys) -> None:
    gt_dir, pred_dir, _ = micc_layout
    with pytest.raises(AssetError, match="no predicted meshes"):
        evaluate_micc_folders(tmp_path, gt_dir)
    lonely = tmp_path / "pred" / "indoor"
    lonely.mkdir(parents=True)
    _write_obj(lonely / "subject99.obj", np.eye(3), np.array([[0, 1, 2]]))
    rc = main(["eval", "micc", "--pred", str(tmp_path / "pred"), "--gt", str(gt_dir), "--json", str(tmp_path / "o.json")])
    assert rc == 2 and "subject99" in capsys.readouterr().err
