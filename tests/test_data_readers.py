"""Landmark layout, annotation readers, AFLW2000-3D and 300W-LP datasets."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, default_collate

from mlanet.data.aflw2000 import AFLW2000, read_aflw2000_mat
from mlanet.data.landmarks import (
    IBUG68_FLIP_PERMUTATION,
    SAMPLE_KEYS,
    check_flip_permutation,
    read_dlib_xml,
    read_image_rgb,
    read_pts,
    yaw_bin,
)
from mlanet.data.w300lp import W300LP
from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import CropBox, PreprocessCfg

AFLW = "data/aflw2000-3d-dev"
LFPW = "data/landmarks68/lfpw-sample"
DLIB = "data/landmarks68/dlib-faces"
CFG = PreprocessCfg()
SMALL = PreprocessCfg(input_size=64)

# Left/right pairs (subject's right first) used to check the mirror semantics on real faces.
RIGHT_LEFT_PAIRS = [(0, 16), (3, 13), (17, 26), (21, 22), (31, 35), (36, 45), (39, 42), (48, 54), (60, 64)]



def _close(actual, expected, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    """numpy's assert_allclose on tensors (NaN equals NaN); avoids torch.testing's ~2 s first-call import."""
    np.testing.assert_allclose(torch.as_tensor(actual).double().numpy(), torch.as_tensor(expected).double().numpy(), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- landmarks
def test_flip_permutation_is_an_involution_with_the_ibug_pairs():
    p = check_flip_permutation(IBUG68_FLIP_PERMUTATION, 68)
    assert np.array_equal(p[p], np.arange(68))
    expected = {0: 16, 7: 9, 8: 8, 17: 26, 21: 22, 27: 27, 30: 30, 31: 35, 32: 34, 33: 33,
                36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46, 48: 54, 49: 53, 50: 52, 51: 51,
                55: 59, 56: 58, 57: 57, 60: 64, 61: 63, 62: 62, 65: 67, 66: 66}
    for i, j in expected.items():
        assert p[i] == j and p[j] == i
    fixed = {int(i) for i in np.flatnonzero(p == np.arange(68))}
    assert fixed == {8, 27, 28, 29, 30, 33, 51, 57, 62, 66}


def test_check_flip_permutation_rejects_non_involutions():
    with pytest.raises(ValueError, match="involution"):
        check_flip_permutation([1, 2, 0])
    with pytest.raises(ValueError, match="permutation"):
        check_flip_permutation([0, 0, 1])


def test_yaw_bins():
    assert [yaw_bin(v) for v in (0, 30, 30.01, -45, 60, 60.5, 95)] == [0, 0, 1, 1, 1, 2, 2]


def test_read_pts_errors(tmp_path):
    bad = tmp_path / "bad.pts"
    bad.write_text("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n")
    with pytest.raises(AssetError, match="bad.pts"):
        read_pts(bad)
    with pytest.raises(AssetError, match="missing.pts"):
        read_pts(tmp_path / "missing.pts")
    (tmp_path / "text.pts").write_text("hello")
    with pytest.raises(AssetError, match="text.pts"):
        read_pts(tmp_path / "text.pts")


def test_read_dlib_xml_errors_and_conversion(tmp_path):
    x = tmp_path / "faces.xml"
    x.write_text(
        "<dataset><images><image file='a.jpg'><box top='10' left='20' width='30' height='40'>"
        "<part name='00' x='25' y='15'/><part name='67' x='40' y='45'/></box></image></images></dataset>"
    )
    (img,) = read_dlib_xml(x)
    (face,) = img.faces
    assert img.path == (tmp_path / "a.jpg").resolve()
    np.testing.assert_array_equal(face.box, [20, 10, 50, 50])
    np.testing.assert_array_equal(face.landmarks[0], [25.5, 15.5])  # dlib pixel centre -> ours
    np.testing.assert_array_equal(face.landmarks[67], [40.5, 45.5])
    assert face.valid.sum() == 2 and np.isnan(face.landmarks[1]).all()
    x.write_text("<dataset><images><image file='a.jpg'><box top='1' left='1' width='3' height='4'>"
                 "<part name='68' x='1' y='1'/></box></image></images></dataset>")
    with pytest.raises(AssetError, match="faces.xml"):
        read_dlib_xml(x)
    x.write_text("<dataset><images>")
    with pytest.raises(AssetError, match="faces.xml"):
        read_dlib_xml(x)


def test_read_image_rgb_errors(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(AssetError, match="x.jpg"):
        read_image_rgb(tmp_path / "x.jpg")
    with pytest.raises(AssetError, match="nope.png"):
        read_image_rgb(tmp_path / "nope.png")
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "grey.png")
    assert read_image_rgb(tmp_path / "grey.png").shape == (5, 7, 3)


@pytest.mark.assets
def test_read_pts_lfpw(shared):
    pts = read_pts(shared / LFPW / "image_0010.pts")
    assert pts.shape == (68, 2)
    np.testing.assert_allclose(pts[0], [611.284152 - 0.5, 272.773913 - 0.5])  # 1-based -> ours
    w, h = Image.open(shared / LFPW / "image_0010.png").size
    assert np.all((pts > 0) & (pts < [w, h]))
    assert pts[36, 0] < pts[45, 0]  # subject's right eye outer corner at smaller image x


@pytest.mark.assets
def test_read_dlib_xml_shared(shared):
    images = read_dlib_xml(shared / DLIB / "training_with_face_landmarks.xml")
    images += read_dlib_xml(shared / DLIB / "testing_with_face_landmarks.xml")
    faces = [f for im in images for f in im.faces]
    assert len(images) == 9 and len(faces) == 43
    for im in images:
        assert im.path.is_file()
        with Image.open(im.path) as pil:
            assert pil.size == (im.width, im.height)
        for f in im.faces:
            assert f.landmarks.shape == (68, 2) and f.valid.all()
            assert np.all(f.landmarks >= 0) and np.all(f.landmarks <= [im.width, im.height])
    # mirror semantics on real faces: subject's right parts at smaller x, also after mirroring
    perm = np.array(IBUG68_FLIP_PERMUTATION)
    for f in faces:
        lm = f.landmarks
        mirrored = np.c_[1000.0 - lm[perm, 0], lm[perm, 1]]
        for arr in (lm, mirrored):
            for r, l in RIGHT_LEFT_PAIRS:
                assert arr[r, 0] < arr[l, 0], (r, l)
            assert arr[19, 1] < arr[30, 1] < arr[57, 1] < arr[8, 1]  # brow above nose above lip above chin


# --------------------------------------------------------------------------- AFLW2000-3D
@pytest.fixture()
def one_thread():
    """Per-sample crops are tiny ops: intra-op threads only add overhead (6x on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def aflw(shared):
    return AFLW2000(shared / AFLW, CFG)


@pytest.mark.assets
def test_aflw_dev_split_counts_and_bins(aflw):
    assert len(aflw) == 199 and aflw.n_skipped == 0
    bins = np.bincount([r.yaw_bin for r in aflw.records], minlength=3)
    assert bins.tolist() == [131, 38, 30]
    assert all(r.image_path.suffix == ".jpg" and r.mat_path.suffix == ".mat" for r in aflw.items())


@pytest.mark.assets
def test_aflw_every_sample_round_trip(shared, aflw, one_thread):
    S = SMALL.input_size  # the box does not depend on S; a small crop keeps the loop fast
    small = AFLW2000(shared / AFLW, SMALL)
    assert aflw[0]["image"].shape == (3, CFG.input_size, CFG.input_size)
    for i in range(len(small)):
        s = small[i]
        rec = small.records[i]
        assert set(s) == set(SAMPLE_KEYS) | {"yaw_deg", "gt_landmarks_image", "image_size"}
        assert s["image"].shape == (3, S, S) and s["image"].dtype == torch.float32
        assert s["landmarks_valid"].all() and not s["has_params"] and not s["has_mp468"]
        assert s["params"].shape == (0,) and torch.isnan(s["mp468"]).all()
        assert s["image_size"].tolist() == [450, 450] and int(s["index"]) == i
        box = CropBox(*s["box"].tolist())
        back = box.crop_to_image(s["landmarks"].double().numpy(), S)
        np.testing.assert_allclose(back, rec.landmarks, atol=1e-3)
        np.testing.assert_allclose(s["gt_landmarks_image"].numpy(), rec.landmarks, atol=1e-4)
        assert float(s["yaw_deg"]) == pytest.approx(rec.yaw_deg, abs=1e-4)
        # the protocol box: centred on the 68-point box, side sqrt(2) max(w, h)
        lo, hi = rec.landmarks.min(0), rec.landmarks.max(0)
        np.testing.assert_allclose([box.x0 + box.size / 2, box.y0 + box.size / 2], (lo + hi) / 2, atol=1e-9)
        assert box.size == pytest.approx(math.sqrt(2) * max(hi - lo))
        assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0


@pytest.mark.assets
def test_aflw_image00008_box_by_hand(shared, aflw):
    mat = scipy.io.loadmat(str(shared / AFLW / "image00008.mat"))
    xy = mat["pt3d_68"][:2].astype(np.float64) - 0.5  # 1-based MATLAB -> ours
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    side = math.sqrt(2) * max(hi - lo)
    x0, y0 = (lo + hi) / 2 - side / 2
    i = [r.image_path.name for r in aflw.records].index("image00008.jpg")
    np.testing.assert_allclose(aflw[i]["box"].numpy(), [x0, y0, side], rtol=0, atol=1e-9)
    # the same numbers, written down once (float32 file values)
    np.testing.assert_allclose([x0, y0, side], [108.767257, 137.184493, 266.350862], atol=1e-5)
    assert aflw.records[i].yaw_deg == pytest.approx(17.143373, abs=1e-5)


@pytest.mark.assets
def test_aflw_missing_mat_and_stray_files(shared, tmp_path, caplog):
    names = ["image00008", "image00040", "image00046", "image00049"]
    for n in names:
        shutil.copy(shared / AFLW / f"{n}.jpg", tmp_path)
        shutil.copy(shared / AFLW / f"{n}.mat", tmp_path)
    (tmp_path / "image00040.mat").unlink()
    shutil.copy(shared / AFLW / "image00057.mat", tmp_path)  # a .mat without its image
    (tmp_path / "notes.txt").write_text("not data")
    with caplog.at_level(logging.WARNING, logger="mlanet.data.aflw2000"):
        ds = AFLW2000(tmp_path, SMALL)
    assert len(ds) == 3 and ds.n_skipped == 2
    assert [r.image_path.stem for r in ds.records] == ["image00008", "image00046", "image00049"]
    assert "image00040.jpg" in caplog.text and "image00057.mat" in caplog.text
    assert ds[0]["image"].shape == (3, 64, 64)


def _write_aflw_mat(path: Path, pt3d: np.ndarray, yaw: float = 0.3) -> None:
    pose = np.array([[0.1, yaw, -0.2, 200.0, 210.0, -100.0, 0.0013]], dtype=np.float32)
    scipy.io.savemat(str(path), {"pt3d_68": pt3d.astype(np.float32), "Pose_Para": pose,
                                 "pt2d": np.zeros((2, 21)), "roi": np.zeros((1, 4), np.int16)})


def _face_like_points(rng: np.random.Generator, centre: tuple[float, float], size: float) -> np.ndarray:
    """(68, 2) points spread over a square of side ``size`` (not anatomical; readers do not care)."""
    return np.asarray(centre) + (rng.random((68, 2)) - 0.5) * size


def test_aflw_layout_synthetic_conversion_end_to_end(tmp_path):
    """A dot drawn at MATLAB pixel (c+1, r+1) must end up under landmark 30 in the crop."""
    rng = np.random.default_rng(0)
    H, W = 120, 140
    ours = _face_like_points(rng, (70.0, 60.0), 60.0)
    col, row = 66, 57
    ours[30] = (col + 0.5, row + 0.5)  # centre of pixel (col, row) in our convention
    img = np.zeros((H, W, 3), np.uint8)
    img[row, col] = 255
    Image.fromarray(img).save(tmp_path / "image00001.png")
    matlab = ours + 0.5
    _write_aflw_mat(tmp_path / "image00001.mat", np.r_[matlab.T, np.zeros((1, 68))])
    ds = AFLW2000(tmp_path, PreprocessCfg(input_size=128))
    s = ds[0]
    np.testing.assert_allclose(ds.records[0].landmarks, ours, atol=1e-4)
    assert float(s["yaw_deg"]) == pytest.approx(math.degrees(0.3), abs=1e-4)
    grey = s["image"].mean(0).double()
    ys, xs = torch.meshgrid(torch.arange(128.0) + 0.5, torch.arange(128.0) + 0.5, indexing="ij")
    centroid = torch.stack([(grey * xs).sum(), (grey * ys).sum()]) / grey.sum()
    np.testing.assert_allclose(centroid.numpy(), s["landmarks"][30].double().numpy(), atol=0.05)


def test_aflw_bad_inputs(tmp_path):
    with pytest.raises(AssetError, match="nowhere"):
        AFLW2000(tmp_path / "nowhere", SMALL)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssetError, match="empty"):
        AFLW2000(empty, SMALL)
    only_images = tmp_path / "only_images"
    only_images.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(only_images / "image00001.jpg")
    with pytest.raises(AssetError, match="only_images"):
        AFLW2000(only_images, SMALL)
    rng = np.random.default_rng(1)
    # corrupt image: found when the sample is read
    d = tmp_path / "corrupt_jpg"
    d.mkdir()
    (d / "image00001.jpg").write_bytes(b"\xff\xd8\xff garbage")
    _write_aflw_mat(d / "image00001.mat", np.r_[_face_like_points(rng, (50, 50), 40).T, np.zeros((1, 68))])
    ds = AFLW2000(d, SMALL)
    with pytest.raises(AssetError, match="image00001.jpg"):
        ds[0]
    # corrupt .mat: found at construction
    d = tmp_path / "corrupt_mat"
    d.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(d / "image00002.jpg")
    (d / "image00002.mat").write_bytes(b"MATLAB 5.0 MAT-file but truncated")
    with pytest.raises(AssetError, match="image00002.mat"):
        AFLW2000(d, SMALL)
    # wrong fields
    scipy.io.savemat(str(d / "image00002.mat"), {"pt3d_68": np.zeros((2, 68)), "Pose_Para": np.zeros((1, 7))})
    with pytest.raises(AssetError, match=r"image00002.mat.*pt3d_68.*shape"):
        AFLW2000(d, SMALL)
    scipy.io.savemat(str(d / "image00002.mat"), {"pt3d_68": np.zeros((3, 68))})
    with pytest.raises(AssetError, match=r"image00002.mat.*Pose_Para"):
        AFLW2000(d, SMALL)


# --------------------------------------------------------------------------- 300W-LP
def _write_w300lp_mat(path: Path, pt2d_matlab: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    fields = {
        "pt2d": pt2d_matlab.astype(np.float64),  # (2, 68), 1-based
        "Pose_Para": rng.normal(size=(1, 7)).astype(np.float32),
        "Shape_Para": rng.normal(size=(199, 1)).astype(np.float64),
        "Exp_Para": rng.normal(size=(29, 1)).astype(np.float64),
        "Color_Para": rng.normal(size=(1, 7)).astype(np.float32),
        "Illum_Para": rng.normal(size=(1, 10)).astype(np.float64),
        "Tex_Para": rng.normal(size=(199, 1)).astype(np.float64),
        "roi": np.array([[10, 10, 100, 100]], dtype=np.int16),
    }
    scipy.io.savemat(str(path), fields)
    return fields


@pytest.fixture()
def w300lp_tree(tmp_path):
    """A tiny 300W-LP-like tree: 3 samples in two folders, plus a landmarks/*_pts.mat without image."""
    rng = np.random.default_rng(42)
    root = tmp_path / "300W_LP"
    truth = {}
    for folder, stem in [("AFW", "AFW_134212_1_0"), ("AFW", "AFW_134212_1_1"), ("HELEN_Flip", "HELEN_232194_1_0")]:
        (root / folder).mkdir(parents=True, exist_ok=True)
        H, W = 110, 130
        ours = _face_like_points(rng, (65, 55), 50)
        col, row = 60, 52
        ours[30] = (col + 0.5, row + 0.5)
        img = (rng.random((H, W, 3)) * 40).astype(np.uint8)
        img[row - 1 : row + 2, col - 1 : col + 2] = 255
        Image.fromarray(img).save(root / folder / f"{stem}.jpg", quality=98)
        fields = _write_w300lp_mat(root / folder / f"{stem}.mat", (ours + 0.5).T, rng)
        truth[stem] = (ours, fields)
    (root / "landmarks" / "AFW").mkdir(parents=True)
    scipy.io.savemat(str(root / "landmarks" / "AFW" / "AFW_134212_1_0_pts.mat"), {"pts_2d": np.zeros((68, 2))})
    return root, truth


def test_w300lp_synthetic_tree(w300lp_tree, caplog):
    root, truth = w300lp_tree
    layout = ParamLayout(identity=4, expression=3, albedo=2)
    cfg = PreprocessCfg(input_size=96)
    with caplog.at_level(logging.WARNING, logger="mlanet.data.w300lp"):
        ds = W300LP(root, cfg, layout=layout)
    assert len(ds) == 3 and ds.n_skipped == 1 and "AFW_134212_1_0_pts.mat" in caplog.text
    for i in range(len(ds)):
        s = ds[i]
        stem = ds.pairs[i][1].stem
        ours, fields = truth[stem]
        assert set(s) == set(SAMPLE_KEYS) | {"w300lp_pose", "w300lp_shape", "w300lp_exp", "yaw_deg"}
        assert s["params"].shape == (layout.total,) and torch.isnan(s["params"]).all() and not s["has_params"]
        assert s["w300lp_pose"].dtype == torch.float32 and s["w300lp_pose"].shape == (7,)
        np.testing.assert_allclose(s["w300lp_pose"].numpy(), fields["Pose_Para"][0], rtol=1e-6)
        np.testing.assert_allclose(s["w300lp_shape"].numpy(), fields["Shape_Para"][:, 0], rtol=1e-6)
        np.testing.assert_allclose(s["w300lp_exp"].numpy(), fields["Exp_Para"][:, 0], rtol=1e-6)
        assert float(s["yaw_deg"]) == pytest.approx(abs(math.degrees(fields["Pose_Para"][0, 1])), rel=1e-5)
        box = CropBox(*s["box"].tolist())
        np.testing.assert_allclose(box.crop_to_image(s["landmarks"].double().numpy(), 96), ours, atol=1e-3)
        lo, hi = ours.min(0), ours.max(0)
        assert box.size == pytest.approx(cfg.roi_scale * max(hi - lo))
        # the bright 3x3 block is centred on landmark 30 in the crop (checks the 1-based shift)
        grey = s["image"].mean(0).double()
        peak = grey > 0.8
        ys, xs = torch.meshgrid(torch.arange(96.0) + 0.5, torch.arange(96.0) + 0.5, indexing="ij")
        w = grey * peak
        centroid = np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
        np.testing.assert_allclose(centroid, s["landmarks"][30].double().numpy(), atol=0.35)


def test_w300lp_bad_inputs(w300lp_tree, tmp_path):
    root, _ = w300lp_tree
    with pytest.raises(AssetError, match="missing_root"):
        W300LP(tmp_path / "missing_root", SMALL)
    with pytest.raises(AssetError, match="landmarks"):
        W300LP(root / "landmarks", SMALL)  # only .mat files without images
    mat = root / "AFW" / "AFW_134212_1_1.mat"
    scipy.io.savemat(str(mat), {"pt2d": np.zeros((2, 21)), "Pose_Para": np.zeros((1, 7))})
    ds = W300LP(root, SMALL)
    idx = [p[1] for p in ds.pairs].index(mat)
    with pytest.raises(AssetError, match=r"AFW_134212_1_1.mat.*pt2d"):
        ds[idx]
    mat.write_bytes(b"\x00" * 200)
    with pytest.raises(AssetError, match="AFW_134212_1_1.mat"):
        ds[idx]


@pytest.mark.assets
def test_concat_and_collate_across_datasets(shared, w300lp_tree):
    root, _ = w300lp_tree
    layout = ParamLayout(identity=4, expression=3, albedo=2)
    a = AFLW2000(shared / AFLW, SMALL, layout=layout, extras=False)
    b = W300LP(root, SMALL, layout=layout, extras=False)
    cat = ConcatDataset([a, b])
    batch = default_collate([cat[0], cat[len(a)], cat[1]])
    assert set(batch) == set(SAMPLE_KEYS)
    assert batch["image"].shape == (3, 3, 64, 64) and batch["params"].shape == (3, layout.total)
    assert batch["box"].dtype == torch.float64 and batch["index"].tolist() == [0, 0, 1]
    # with extras, samples of one dataset still collate
    full = AFLW2000(shared / AFLW, SMALL)
    b2 = default_collate([full[0], full[1]])
    assert b2["yaw_deg"].shape == (2,) and b2["gt_landmarks_image"].shape == (2, 68, 2)


@pytest.mark.assets
def test_read_aflw2000_mat_matches_file(shared):
    rec = read_aflw2000_mat(shared / AFLW / "image00008.mat")
    raw = scipy.io.loadmat(str(shared / AFLW / "image00008.mat"))["pt3d_68"].astype(np.float64)
    np.testing.assert_allclose(rec.landmarks + 0.5, raw[:2].T)
    np.testing.assert_allclose(rec.landmarks_3d[:, 2], raw[2])


def test_crop_uint8_equals_crop_image_of_the_whole_image():
    from mlanet.data.landmarks import crop_uint8
    from mlanet.preprocess import crop_image, image_to_tensor

    img = (np.random.default_rng(3).random((90, 120, 3)) * 255).astype(np.uint8)
    boxes = [CropBox(10.3, 20.7, 40.2), CropBox(-30.5, -10.2, 80.0), CropBox(100.2, 70.1, 50.3),
             CropBox(-300.0, -300.0, 50.0), CropBox(-5.0, -5.0, 200.0)]
    for b in boxes:
        ref = crop_image(image_to_tensor(img), b, 32)[0].clamp(0, 1)
        _close(crop_uint8(img, b, 32), ref, atol=1e-4, rtol=0)
