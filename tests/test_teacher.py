"""Tests of the 3DDFA_V2 MobileNet x0.5 teacher (mlanet.teacher.tddfa_mb05).

Unit tests run on random / hand-made ``.npz`` folders written into ``tmp_path``; the ``assets``
tests load the real files from ``<shared>/models/3ddfa_v2_mb05`` (read in place) and score the
teacher on the 199-image AFLW2000-3D dev split with the project's own protocol code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlanet.errors import AssetError
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.preprocess import CropBox, box_from_points
from mlanet.teacher import load_tddfa_mb05
from mlanet.teacher.tddfa_mb05 import (
    INPUT_SIZE,
    KEYPOINTS_FILE,
    N_PARAMS,
    PARAM_STATS_FILE,
    PREPROCESS,
    WEIGHTS_FILE,
    TDDFAMobileNet,
    as_roi,
    decode_crop,
    normalise,
    pose_from_params,
    roi_from_detector_box,
    roi_from_landmarks,
)

MODEL_DIR = "models/3ddfa_v2_mb05"
DEV = "data/aflw2000-3d-dev"
#: Independent measurement of the released model on the dev split, standard protocol (percent).
REFERENCE_BINS = (2.86, 3.98, 5.51)
REFERENCE_MEAN_BINS = 4.12
TOLERANCE = 0.3
F = np.diag([1.0, -1.0, -1.0])


# ----------------------------------------------------------------------------- helpers
def random_state(seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with upstream's names: random weights, plausible BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in TDDFAMobileNet().state_dict().items():
        if k.endswith("num_batches_tracked"):
            state[k] = np.array(7, dtype=np.int64)
        elif k.endswith("running_var"):
            state[k] = (0.5 + torch.rand(v.shape, generator=gen)).numpy()
        elif k.endswith("running_mean"):
            state[k] = (0.1 * torch.randn(v.shape, generator=gen)).numpy()
        else:
            state[k] = (0.2 * torch.randn(v.shape, generator=gen)).numpy()
    return state


def write_folder(folder: Path, state=None, stats=None, keypoints=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    state = random_state() if state is None else state
    if stats is None:
        stats = {"mean": rng.normal(size=62).astype(np.float32), "std": rng.uniform(0.5, 2, 62).astype(np.float32)}
    if keypoints is None:
        keypoints = {
            "u_base": rng.normal(size=204).astype(np.float32),
            "w_shp_base": rng.normal(size=(204, 40)).astype(np.float32),
            "w_exp_base": rng.normal(size=(204, 10)).astype(np.float32),
        }
    np.savez(folder / WEIGHTS_FILE, **state)
    np.savez(folder / PARAM_STATS_FILE, **stats)
    np.savez(folder / KEYPOINTS_FILE, **keypoints)
    return folder


def constant_output_folder(folder: Path, params: np.ndarray, keypoints: dict[str, np.ndarray]) -> Path:
    """A teacher whose de-whitened output is ``params`` for every image (fc weight 0, bias = params)."""
    state = random_state()
    state["fc_param.weight"] = np.zeros_like(state["fc_param.weight"])
    state["fc_param.bias"] = np.asarray(params, dtype=np.float32)
    stats = {"mean": np.zeros(62, np.float32), "std": np.ones(62, np.float32)}
    return write_folder(folder, state=state, stats=stats, keypoints=keypoints)


def hand_made_keypoints() -> dict[str, np.ndarray]:
    """Keypoint k = (k, 2k, 3k); shape mode 0 adds (1, 1, 1) to every point; expression mode 1 adds (0, 0, 1)."""
    k = np.arange(68, dtype=np.float32)
    u = np.stack([k, 2 * k, 3 * k], axis=1).reshape(-1)
    w_shp = np.zeros((204, 40), np.float32)
    w_shp[:, 0] = 1.0
    w_exp = np.zeros((204, 10), np.float32)
    w_exp[2::3, 1] = 1.0
    return {"u_base": u, "w_shp_base": w_shp, "w_exp_base": w_exp}


def upstream_matrix2angle(R_up: np.ndarray) -> tuple[float, float, float]:
    """3DDFA_V2's ``matrix2angle`` (away from gimbal lock): (yaw, pitch, roll) in radians."""
    x = math.asin(R_up[2, 0])
    y = math.atan2(R_up[2, 1] / math.cos(x), R_up[2, 2] / math.cos(x))
    z = math.atan2(R_up[1, 0] / math.cos(x), R_up[0, 0] / math.cos(x))
    return x, y, z


@pytest.fixture()
def random_folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "mb05")


# ----------------------------------------------------------------------------- loader
def test_loads_strictly_and_records_files_and_terms(random_folder: Path) -> None:
    teacher = load_tddfa_mb05(random_folder)
    written = np.load(random_folder / WEIGHTS_FILE)
    loaded = teacher.net.state_dict()
    assert set(loaded) == set(written.files)
    for k in written.files:
        np.testing.assert_array_equal(loaded[k].numpy(), written[k])
    info = teacher.describe()
    assert set(info["files"]) == {WEIGHTS_FILE, PARAM_STATS_FILE, KEYPOINTS_FILE}
    assert all(len(f["sha256"]) == 64 for f in info["files"].values())
    assert "research use only" in info["terms"]["weights"]
    assert "academic" in info["terms"]["keypoint_bases"] and "MIT" in info["terms"]["code"]
    assert info["preprocess"]["input_size"] == INPUT_SIZE


def test_missing_folder_and_files_name_the_path(tmp_path: Path, random_folder: Path) -> None:
    with pytest.raises(AssetError, match="nowhere"):
        load_tddfa_mb05(tmp_path / "nowhere")
    for name in (WEIGHTS_FILE, PARAM_STATS_FILE, KEYPOINTS_FILE):
        folder = write_folder(tmp_path / f"without_{name}")
        (folder / name).unlink()
        with pytest.raises(AssetError, match=name):
            load_tddfa_mb05(folder)


def test_state_dict_names_must_match_both_ways(tmp_path: Path) -> None:
    state = random_state()
    del state["dw5_3.bn_sep.running_var"]
    with pytest.raises(AssetError, match=rf"{WEIGHTS_FILE}.*missing 1.*dw5_3\.bn_sep\.running_var"):
        load_tddfa_mb05(write_folder(tmp_path / "a", state=state))
    state = random_state()
    state["fc.weight"] = state.pop("fc_param.weight")  # renamed
    with pytest.raises(AssetError, match=r"missing 1.*fc_param\.weight.*unexpected 1.*fc\.weight"):
        load_tddfa_mb05(write_folder(tmp_path / "b", state=state))


def test_shapes_and_values_are_checked(tmp_path: Path) -> None:
    state = random_state()
    state["dw4_2.conv_sep.weight"] = np.zeros((256, 64, 1, 1), np.float32)  # a width-0.25 layer
    msg = rf"{WEIGHTS_FILE}.*dw4_2\.conv_sep\.weight.*\(256, 64, 1, 1\).*\(256, 128, 1, 1\)"
    with pytest.raises(AssetError, match=msg):
        load_tddfa_mb05(write_folder(tmp_path / "a", state=state))
    state = random_state()
    state["conv1.weight"][0, 0, 0, 0] = np.nan
    with pytest.raises(AssetError, match=r"conv1\.weight.*non-finite"):
        load_tddfa_mb05(write_folder(tmp_path / "b", state=state))
    stats = {"mean": np.zeros(62, np.float32), "std": np.ones(61, np.float32)}
    with pytest.raises(AssetError, match=rf"{PARAM_STATS_FILE}.*'std'.*\(61,\).*\(62,\)"):
        load_tddfa_mb05(write_folder(tmp_path / "c", stats=stats))
    stats = {"mean": np.zeros(62, np.float32), "std": np.zeros(62, np.float32)}
    with pytest.raises(AssetError, match=rf"{PARAM_STATS_FILE}.*positive"):
        load_tddfa_mb05(write_folder(tmp_path / "d", stats=stats))
    kp = hand_made_keypoints()
    kp["w_exp_base"] = kp["w_exp_base"][:, :9]
    with pytest.raises(AssetError, match=rf"{KEYPOINTS_FILE}.*w_exp_base.*\(204, 9\).*\(204, 10\)"):
        load_tddfa_mb05(write_folder(tmp_path / "e", keypoints=kp))
    kp = hand_made_keypoints()
    del kp["u_base"]
    with pytest.raises(AssetError, match=rf"{KEYPOINTS_FILE}.*missing.*u_base"):
        load_tddfa_mb05(write_folder(tmp_path / "f", keypoints=kp))


def test_pickled_or_damaged_files_are_refused(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "a")
    np.savez(folder / PARAM_STATS_FILE, mean=np.array([{"x": 1}], dtype=object), std=np.ones(62))
    with pytest.raises(AssetError, match=PARAM_STATS_FILE):
        load_tddfa_mb05(folder)
    folder = write_folder(tmp_path / "b")
    (folder / WEIGHTS_FILE).write_bytes(b"not a zip archive")
    with pytest.raises(AssetError, match=WEIGHTS_FILE):
        load_tddfa_mb05(folder)
    folder = write_folder(tmp_path / "c")
    with open(folder / KEYPOINTS_FILE, "wb") as fh:
        np.save(fh, np.zeros(204))
    with pytest.raises(AssetError, match=rf"{KEYPOINTS_FILE}.*\.npz"):
        load_tddfa_mb05(folder)


# ----------------------------------------------------------------------------- network and preprocessing
def test_network_shapes_and_stage_sizes() -> None:
    net = TDDFAMobileNet().eval()
    x = torch.randn(2, 3, INPUT_SIZE, INPUT_SIZE)
    sizes = []
    hooks = [
        getattr(net, n).register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[1:])))
        for n in ("dw2_1", "dw5_5", "dw6")
    ]
    with torch.no_grad():
        assert net(x).shape == (2, N_PARAMS)
    for h in hooks:
        h.remove()
    assert sizes == [(32, 60, 60), (256, 8, 8), (512, 4, 4)]


def test_normalise_is_bgr_and_matches_the_recorded_preprocess_cfg() -> None:
    img = torch.zeros(1, 3, 4, 4)
    img[:, 0], img[:, 1], img[:, 2] = 1.0, 0.5, 0.0  # R, G, B
    out = normalise(img)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [(0 - 127.5) / 128, (127.5 - 127.5) / 128, (255 - 127.5) / 128])
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mean = torch.tensor(PREPROCESS.mean, dtype=torch.float64)[:, None, None]
    std = torch.tensor(PREPROCESS.std, dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(normalise(x), ((x - mean) / std).flip(1))
    with pytest.raises(ValueError):
        normalise(torch.zeros(3, 8, 8))


def test_forward_dewhitens_the_network_output(random_folder: Path) -> None:
    teacher = load_tddfa_mb05(random_folder)
    x = torch.rand(3, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(2))
    stats = np.load(random_folder / PARAM_STATS_FILE)
    with torch.no_grad():
        expected = teacher.net(normalise(x)) * torch.from_numpy(stats["std"]) + torch.from_numpy(stats["mean"])
        torch.testing.assert_close(teacher(x), expected)
    with pytest.raises(ValueError, match="120"):
        teacher(torch.rand(1, 3, 96, 96))


# ----------------------------------------------------------------------------- crop boxes
def test_roi_rules() -> None:
    pts = np.array([[0.0, 0.0], [10.0, 20.0], [4.0, 3.0]])
    box = roi_from_landmarks(pts)
    side = math.sqrt(2) * 20
    assert box == box_from_points(pts, math.sqrt(2))
    np.testing.assert_allclose(box.as_array(), [5 - side / 2, 10 - side / 2, side])
    det = roi_from_detector_box(0, 0, 100, 200)  # mean side 150: side 237, centre (50, 100 + 21)
    np.testing.assert_allclose(det.as_array(), [50 - 118.5, 121 - 118.5, 237.0])
    assert as_roi(det) is det
    assert as_roi(np.array([0, 0, 100, 200])) == det
    assert as_roi(pts) == box
    with pytest.raises(ValueError):
        as_roi(np.zeros(3))
    with pytest.raises(ValueError):
        roi_from_detector_box(10, 0, 5, 20)


# ----------------------------------------------------------------------------- decoding
def test_decoding_a_hand_made_parameter_vector(tmp_path: Path) -> None:
    """P = [0.5 I | (10, 100, 7)], a_shp[0] = 2, a_exp[1] = -1 on :func:`hand_made_keypoints`.

    Keypoint k: S = (k + 2, 2k + 2, 3k + 1), X = P S = (0.5k + 11, k + 101, 1.5k + 7.5); project
    crop pixels u = X0 - 0.5 = 0.5k + 10.5, v = 120.5 - X1 = 19.5 - k, depth
    -(X2 - mean X2) = -1.5 (k - 33.5). In the crop box (20, 30, side 240; 2 image px per crop
    px): x = k + 41, y = 69 - 2k, z = -3 (k - 33.5). Pose: identity, scale 0.5 * 2 = 1.
    """
    params = np.zeros(62, np.float32)
    params[:12] = [0.5, 0, 0, 10, 0, 0.5, 0, 100, 0, 0, 0.5, 7]
    params[12] = 2.0
    params[52 + 1] = -1.0
    teacher = load_tddfa_mb05(constant_output_folder(tmp_path / "c", params, hand_made_keypoints()))
    k = np.arange(68.0)
    crop = teacher.decode(torch.from_numpy(params)[None]).numpy()[0]
    np.testing.assert_allclose(crop, np.stack([0.5 * k + 10.5, 19.5 - k, -1.5 * (k - 33.5)], 1), atol=1e-4)

    image = np.zeros((50, 60, 3), np.uint8)
    out = teacher.predict([image, image], [CropBox(20.0, 30.0, 240.0), CropBox(-5.0, 0.0, 120.0)], batch_size=1)
    np.testing.assert_allclose(out.points2d[0], np.stack([k + 41, 69 - 2 * k], 1), atol=1e-4)
    np.testing.assert_allclose(out.points3d[0], np.stack([k + 41, 69 - 2 * k, -3 * (k - 33.5)], 1), atol=1e-4)
    np.testing.assert_allclose(out.points2d[1], np.stack([0.5 * k + 10.5 - 5, 19.5 - k], 1), atol=1e-4)
    np.testing.assert_allclose(out.pose.angles, 0.0, atol=1e-7)
    np.testing.assert_allclose(out.pose.rotation, np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-7)
    np.testing.assert_allclose(out.pose.scale, [1.0, 0.5], rtol=1e-6)
    pts2, pts3, pose = out  # the batch API unpacks as (points2d, points3d, pose)
    assert pts2.shape == (2, 68, 2) and pts3.shape == (2, 68, 3) and pose.yaw.shape == (2,)


def test_pose_known_answer_and_upstream_angle_relation() -> None:
    angles = torch.tensor([[0.2, -0.4, 0.3], [-0.1, 0.7, -0.25]], dtype=torch.float64)  # pitch, yaw, roll
    R = euler_to_matrix(angles).numpy()
    params = torch.zeros(2, 62, dtype=torch.float64)
    for b, s in enumerate((1e-3, 2.5e-3)):
        R_up = F @ R[b] @ F
        params[b, :12] = torch.from_numpy(np.concatenate([s * R_up, [[60.0], [70.0], [-5.0]]], 1).reshape(-1))
        yaw_up, pitch_up, roll_up = upstream_matrix2angle(R_up)
        assert (pitch_up, yaw_up, -roll_up) == pytest.approx(angles[b].tolist(), abs=1e-12)
    got_angles, got_R, scale = pose_from_params(params)
    torch.testing.assert_close(got_angles, angles)
    np.testing.assert_allclose(got_R.numpy(), R, atol=1e-12)
    np.testing.assert_allclose(scale.numpy(), [1e-3, 2.5e-3])


def test_decoded_points_follow_the_pose_in_the_project_frame() -> None:
    """Crop points = s R (F S) + c for the returned R, and positive yaw moves the nose to image left."""
    rng = np.random.default_rng(3)
    S_bfm = rng.normal(size=(68, 3)) * 5e4
    S_bfm[30] = [0.0, 0.0, 1.2e5]  # a nose tip, out of the face (+z in the BFM frame)
    u = torch.from_numpy(S_bfm.reshape(-1))
    w_shp, w_exp = torch.zeros(204, 40, dtype=torch.float64), torch.zeros(204, 10, dtype=torch.float64)
    angles = torch.tensor([[0.15, 0.5, -0.2]], dtype=torch.float64)
    R = euler_to_matrix(angles)[0].numpy()
    s = 6e-4
    params = torch.zeros(1, 62, dtype=torch.float64)
    params[0, :12] = torch.from_numpy(np.concatenate([s * F @ R @ F, [[60.0], [60.0], [0.0]]], 1).reshape(-1))
    pts = decode_crop(params, u, w_shp, w_exp).numpy()[0]
    model = S_bfm @ F  # BFM -> the project's model frame (y, z negated)
    expected = s * model @ R.T
    np.testing.assert_allclose(pts - pts.mean(0), expected - expected.mean(0), atol=1e-9)
    assert pts[30, 0] < pts[:, 0].mean() - 10  # yaw > 0: the nose points towards image -x


# ----------------------------------------------------------------------------- the real model (assets)
@pytest.fixture(scope="module")
def real_teacher(shared: Path):
    folder = shared / MODEL_DIR
    if not (folder / WEIGHTS_FILE).is_file():
        pytest.skip(f"3DDFA_V2 MobileNet x0.5 files not found in {folder}")
    return load_tddfa_mb05(folder)


@pytest.fixture(scope="module")
def dev_bench(shared: Path):
    from mlanet.eval.aflw2000 import AFLW2000Eval

    return AFLW2000Eval(shared / DEV)


@pytest.mark.assets
def test_real_weights_load_with_the_published_shapes(real_teacher) -> None:
    n = sum(p.numel() for p in real_teacher.net.parameters())
    assert n == 16 * 27 + 16 * 2 + sum(  # conv1 + bn1, the 13 blocks, fc_param, fc_lm
        9 * ci + 2 * ci + ci * co + 2 * co for ci, co in
        [(16, 32), (32, 64), (64, 64), (64, 128), (128, 128), (128, 256)] + [(256, 256)] * 5 + [(256, 512), (512, 512)]
    ) + 512 * 62 + 62 + 512 * 136 + 136


@pytest.mark.assets
def test_reproduces_the_reference_nme_on_the_dev_split(real_teacher, dev_bench) -> None:
    """Standard protocol (ground-truth crops, sqrt(w h), yaw bins) through mlanet.eval.aflw2000."""
    result = dev_bench.evaluate(real_teacher.crop_predictor(), real_teacher.preprocess, batch_size=32,
                                model=real_teacher.describe())
    assert result["n"] == 199 and result["n_bins"] == [131, 38, 30]
    for got, ref in zip(result["nme_bins"], REFERENCE_BINS):
        assert abs(got - ref) <= TOLERANCE, (result["nme_bins"], REFERENCE_BINS)
    assert abs(result["nme_mean_bins"] - REFERENCE_MEAN_BINS) <= TOLERANCE, result["nme_mean_bins"]


@pytest.mark.assets
def test_batch_api_matches_the_eval_path_and_yaw_agrees_with_the_labels(real_teacher, dev_bench) -> None:
    from mlanet.data.landmarks import read_image_rgb
    from mlanet.eval.predict import predict_in_boxes

    samples = dev_bench.samples[::10]  # 20 faces across the yaw range
    images = [read_image_rgb(s.image_path) for s in samples]
    out = real_teacher.predict(images, [s.landmarks for s in samples], batch_size=8)
    jobs = [(s.image_path, s.crop_box(real_teacher.preprocess.roi_scale)) for s in samples]
    ref = predict_in_boxes(jobs, real_teacher.crop_predictor(), INPUT_SIZE, batch_size=8)
    np.testing.assert_allclose(out.points2d, np.stack(ref), atol=1e-3)
    np.testing.assert_allclose(out.points3d[..., :2], out.points2d)
    R = out.pose.rotation
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
    yaw_gt = np.array([s.yaw_deg for s in samples])
    keep = np.abs(yaw_gt) <= 90  # a few AFLW labels are beyond 90 degrees
    err = np.abs(np.degrees(out.pose.yaw[keep]) - yaw_gt[keep])
    assert np.median(err) < 6.0, np.round(err, 1)
