"""Tests of the AFLW2000-3D benchmark (mlanet.eval.aflw2000) and ``mlanet eval aflw2000``.

The ``assets`` tests run on the shared 199-image dev split; the synthetic tests build a
folder of PNG images with Gaussian blobs at known landmark positions and check the full
image -> crop -> image round trip to sub-pixel accuracy.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import loadmat, savemat

from mlanet.cli import main
from mlanet.errors import AssetError, MLANetError
from mlanet.eval.aflw2000 import AFLW2000Eval, read_aflw_mat
from mlanet.preprocess import PreprocessCfg

DEV = "data/aflw2000-3d-dev"


class GroundTruthPredictor:
    """Returns each sample's ground truth (plus an optional image-pixel offset) mapped into its crop.

    Relies on :meth:`AFLW2000Eval.evaluate` visiting ``bench.samples`` in order (``samples``
    overrides the list, e.g. without the images a detector misses).
    """

    def __init__(self, bench: AFLW2000Eval, cfg: PreprocessCfg, offset=(0.0, 0.0), samples=None) -> None:
        self.samples = bench.samples if samples is None else samples
        self.cfg, self.offset, self.k = cfg, np.asarray(offset, dtype=np.float64), 0

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        assert images.shape[1:] == (3, self.cfg.input_size, self.cfg.input_size)
        out = []
        for _ in range(len(images)):
            s = self.samples[self.k]
            self.k += 1
            out.append(s.crop_box(self.cfg.roi_scale).image_to_crop(s.landmarks + self.offset, self.cfg.input_size))
        return np.stack(out)


@pytest.fixture(scope="module")
def dev_bench(shared: Path) -> AFLW2000Eval:
    return AFLW2000Eval(shared / DEV)


@pytest.fixture(scope="module")
def gt_result(dev_bench: AFLW2000Eval) -> dict:
    cfg = PreprocessCfg(input_size=96)
    return dev_bench.evaluate(GroundTruthPredictor(dev_bench, cfg), cfg, batch_size=32)


def _copy_dev(shared: Path, dest: Path, per_bin: tuple[int, int, int]) -> Path:
    """Copy the first images of each yaw bin (``per_bin`` of them) of the dev split into ``dest``."""
    from mlanet.eval.metrics import yaw_bins

    bench = AFLW2000Eval(shared / DEV)
    bins = yaw_bins(bench.yaw_deg)
    dest.mkdir(parents=True)
    for b, count in enumerate(per_bin):
        for k in np.flatnonzero(bins == b)[:count]:
            s = bench.samples[k]
            shutil.copy(s.image_path, dest / s.image_path.name)
            shutil.copy(s.mat_path, dest / s.mat_path.name)
    return dest


# ------------------------------------------------------------------------ dev split (assets)
@pytest.mark.assets
def test_ground_truth_is_converted_from_matlab_coordinates(dev_bench: AFLW2000Eval) -> None:
    s = dev_bench.samples[0]
    mat = loadmat(s.mat_path)
    np.testing.assert_array_equal(s.landmarks, mat["pt3d_68"][:2].T - 0.5)
    assert s.yaw_deg == pytest.approx(math.degrees(mat["Pose_Para"][0][1]))
    assert len(dev_bench) == 199


@pytest.mark.assets
def test_dev_split_bin_counts(gt_result: dict) -> None:
    assert gt_result["n"] == 199
    assert gt_result["n_bins"] == [131, 38, 30]


@pytest.mark.assets
def test_ground_truth_round_trip_scores_zero(gt_result: dict) -> None:
    """GT -> crop pixels -> (through evaluate's crop_to_image) -> image pixels: NME < 1e-4 %."""
    per_image = np.array([r["nme"] for r in gt_result["images"]])
    assert per_image.max() < 1e-4
    assert gt_result["nme_mean_bins"] < 1e-4 and gt_result["nme_all"] < 1e-4
    assert gt_result["auc_7"] == pytest.approx(1.0)


@pytest.mark.assets
def test_result_is_self_describing_json(gt_result: dict) -> None:
    text = json.dumps(gt_result, allow_nan=False)
    back = json.loads(text)
    for key in ("nme_bins", "nme_mean_bins", "nme_all", "n", "n_bins", "auc_7", "ced", "protocol", "conventions",
                "roi_scale", "input_size", "references", "note", "images"):
        assert key in back, key
    assert len(back["nme_bins"]) == 3
    assert back["roi_scale"] == pytest.approx(math.sqrt(2.0)) and back["input_size"] == 96
    assert back["references"]["published_mean_of_bins"] == {
        "3DDFA_V2": 3.51, "SynergyNet": 3.41, "Deep3DFaceRecon": 3.37, "PRNet": 3.62,
    }
    assert "2,000" in back["references"]["label"] and "199" in back["note"]
    assert back["labels"]["nme_all"] == "nme_all (mean over images)"
    assert set(back["images"][0]) >= {"name", "yaw_deg", "nme"}


@pytest.fixture(scope="module")
def ten_copy(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten dev images (4 / 3 / 3 per yaw bin) copied to a folder with another name."""
    return _copy_dev(shared, tmp_path_factory.mktemp("copy") / "some other folder", (4, 3, 3))


@pytest.mark.assets
def test_works_on_a_copy_of_ten_images_anywhere(ten_copy: Path) -> None:
    folder = ten_copy
    bench = AFLW2000Eval(folder)
    assert len(bench) == 10
    cfg = PreprocessCfg(input_size=64)
    res = bench.evaluate(GroundTruthPredictor(bench, cfg), cfg, batch_size=4)
    assert res["n"] == 10 and res["n_bins"] == [4, 3, 3]
    assert res["nme_mean_bins"] < 1e-4
    assert res["data"]["folder"] == str(folder)


@pytest.mark.assets
def test_one_pixel_offset_gives_inverse_box_size(ten_copy: Path) -> None:
    """A constant 1-pixel error (image pixels) scores exactly 1 / sqrt(w * h) per image."""
    bench = AFLW2000Eval(ten_copy)
    cfg = PreprocessCfg(input_size=96)
    offset = np.array([0.6, 0.8])  # 1 image pixel long
    res = bench.evaluate(GroundTruthPredictor(bench, cfg, offset), cfg, batch_size=5)
    gt = bench.landmarks
    size = gt.max(axis=1) - gt.min(axis=1)
    expected = 100.0 / np.sqrt(size[:, 0] * size[:, 1])
    np.testing.assert_allclose([r["nme"] for r in res["images"]], expected, rtol=1e-9)
    assert res["nme_all"] == pytest.approx(expected.mean(), rel=1e-9)


@pytest.mark.assets
def test_detector_variant(shared: Path, tmp_path: Path) -> None:
    folder = _copy_dev(shared, tmp_path / "d", (2, 1, 1))
    bench = AFLW2000Eval(folder)
    cfg = PreprocessCfg(input_size=64)
    with pytest.raises(MLANetError, match="edge runtime"):
        bench.evaluate(GroundTruthPredictor(bench, cfg), cfg, crop="detector")
    truth = {s.image_path.name: s.landmarks for s in bench.samples}
    calls = iter(bench.samples)

    def detector(image: np.ndarray):
        s = next(calls)
        assert image.dtype == np.uint8 and image.ndim == 3
        if s is bench.samples[1]:
            return None  # "no face found"
        lo, hi = s.landmarks.min(axis=0), s.landmarks.max(axis=0)
        return np.concatenate([lo, hi]) if s is bench.samples[0] else truth[s.image_path.name]

    # The GT predictor maps with the GT crop box; the detector's boxes equal them here (same box).
    kept = [s for k, s in enumerate(bench.samples) if k != 1]
    res = bench.evaluate(GroundTruthPredictor(bench, cfg, samples=kept), cfg, crop="detector", detector_fn=detector)
    assert res["crop"] == "detector" and "realistic" in res["protocol"]
    assert res["detector_failures"] == [bench.samples[1].name]
    assert res["n"] == 3 and res["nme_all"] < 1e-4


# ------------------------------------------------------------------------ synthetic (no assets)
def _blob_folder(folder: Path, n_images: int = 3, size: int = 300, sigma: float = 2.5, seed: int = 0) -> None:
    """Images with one Gaussian blob per landmark (68 on a jittered 9 x 8 grid) + AFLW-style .mat files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5  # MLANet pixel centres
    from PIL import Image

    for k in range(n_images):
        grid = np.array([(i, j) for j in range(8) for i in range(9)][:68], dtype=np.float64)
        pts = 60.0 + 22.0 * grid + rng.uniform(-0.5, 0.5, (68, 2)) + rng.uniform(-20, 20, 2)
        img = np.zeros((size, size))
        for x, y in pts:
            img += np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
        rgb = np.repeat(np.clip(np.rint(255 * img), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        Image.fromarray(rgb).save(folder / f"image{k:05d}.png")
        pt3d = np.vstack([pts.T + 0.5, np.zeros((1, 68))])  # back to 1-based MATLAB coordinates
        pose = np.array([[0.1, math.radians([10.0, 45.0, 75.0][k % 3]), 0.0, 0, 0, 0, 1.0]])
        savemat(folder / f"image{k:05d}.mat", {"pt3d_68": pt3d, "Pose_Para": pose})


class BlobPredictor:
    """Finds each blob in the crop by an intensity centroid around a rough (+-1 px) starting guess."""

    def __init__(self, bench: AFLW2000Eval, cfg: PreprocessCfg, centre_offset: float = 0.5) -> None:
        self.bench, self.cfg, self.k, self.c = bench, cfg, 0, centre_offset
        self.rng = np.random.default_rng(1)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        S, out = self.cfg.input_size, []
        for img in images.numpy():
            s = self.bench.samples[self.k]
            self.k += 1
            guess = s.crop_box(self.cfg.roi_scale).image_to_crop(s.landmarks, S) + self.rng.uniform(-1, 1, (68, 2))
            found = []
            for x, y in guess:
                for _ in range(3):  # re-centre the window
                    i0, j0 = int(round(x)) - 6, int(round(y)) - 6
                    w = img[0, j0 : j0 + 13, i0 : i0 + 13].astype(np.float64)
                    jj, ii = np.mgrid[j0 : j0 + 13, i0 : i0 + 13] + self.c  # crop pixel centres
                    x, y = (w * ii).sum() / w.sum(), (w * jj).sum() / w.sum()
                found.append((x, y))
            out.append(found)
        return np.array(out)


def test_image_crop_image_round_trip_is_sub_pixel(tmp_path: Path) -> None:
    """Blob centroids found in the crop and mapped back land on the truth to ~1/50 pixel."""
    _blob_folder(tmp_path / "blobs")
    bench = AFLW2000Eval(tmp_path / "blobs")
    cfg = PreprocessCfg(input_size=224)
    res = bench.evaluate(BlobPredictor(bench, cfg), cfg, batch_size=2)
    # Box ~ 176 px: 0.02 px of error is ~0.011 % NME, a half-pixel shift ~0.28 %.
    assert res["nme_all"] < 0.03, res["nme_all"]
    assert res["n_bins"] == [1, 1, 1]
    # The same predictor with pixel centres at integers (a half-pixel convention error) is caught.
    wrong = bench.evaluate(BlobPredictor(bench, cfg, centre_offset=0.0), cfg, batch_size=2)
    assert wrong["nme_all"] > 0.15


def test_folder_discovery_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="no such folder"):
        AFLW2000Eval(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image00001.jpg").write_bytes(b"not a pair")
    with pytest.raises(AssetError, match=str(tmp_path / "empty")):
        AFLW2000Eval(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    savemat(bad / "image00001.mat", {"pt2d": np.zeros((2, 21))})
    (bad / "image00001.jpg").write_bytes(b"")
    with pytest.raises(AssetError, match=r"image00001\.mat.*pt3d_68"):
        AFLW2000Eval(bad)
    (bad / "image00001.mat").write_bytes(b"garbage")
    with pytest.raises(AssetError, match=r"image00001\.mat"):
        read_aflw_mat(bad / "image00001.mat")
    savemat(bad / "image00001.mat", {"pt3d_68": np.zeros((3, 21)), "Pose_Para": np.zeros((1, 7))})
    with pytest.raises(AssetError, match=r"\(3, 68\)"):
        AFLW2000Eval(bad)


def test_unreadable_annotation_is_skipped_and_counted(tmp_path: Path) -> None:
    """One damaged .mat does not abort the benchmark: it is left out, named and counted."""
    _blob_folder(tmp_path / "f", n_images=3)
    (tmp_path / "f" / "image00001.mat").write_bytes(b"garbage")
    bench = AFLW2000Eval(tmp_path / "f")
    assert [s.name for s in bench.samples] == ["image00000", "image00002"]
    cfg = PreprocessCfg(input_size=224)
    res = bench.evaluate(BlobPredictor(bench, cfg), cfg, batch_size=2)
    sel = res["data"]["selection"]
    assert res["n"] == 2 and sel["n_unreadable"] == 1 and sel["unreadable"][0]["name"] == "image00001"
    assert "image00001.mat" in sel["unreadable"][0]["reason"]
    assert any("image00001" in w for w in res["warnings"])
    assert res["nme_all"] < 0.03  # the two readable images are scored as before


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _blob_folder(tmp_path / "f", n_images=1)
    (tmp_path / "f" / "image00000.png").write_bytes(b"broken")
    bench = AFLW2000Eval(tmp_path / "f")
    cfg = PreprocessCfg(input_size=32)
    with pytest.raises(AssetError, match=r"image00000\.png"):
        bench.evaluate(lambda x: np.zeros((len(x), 68, 2)), cfg)


def test_predictor_output_shape_is_checked(tmp_path: Path) -> None:
    _blob_folder(tmp_path / "f", n_images=1)
    bench = AFLW2000Eval(tmp_path / "f")
    with pytest.raises(ValueError, match=r"\(1, 68, 2\)"):
        bench.evaluate(lambda x: np.zeros((len(x), 5, 2)), PreprocessCfg(input_size=32))


# ------------------------------------------------------------------------ image lists
def test_name_lists_select_and_are_recorded(tmp_path: Path) -> None:
    import hashlib

    from mlanet.eval.aflw2000 import NameList

    _blob_folder(tmp_path / "f", n_images=3)
    lst = tmp_path / "pick.txt"
    lst.write_text("# two of three\nimage00002\nimage00000  # trailing comment\n")
    picked = NameList.load(lst)
    assert picked.names == ("image00002", "image00000")
    bench = AFLW2000Eval(tmp_path / "f", include=picked)
    assert [s.name for s in bench.samples] == ["image00000", "image00002"]  # folder order
    sel = bench.selection
    assert sel["n_in_folder"] == 3 and sel["n_selected"] == 2 and sel["exclude_list"] is None
    assert sel["list"] == {"spec": str(lst), "path": str(lst), "sha256": hashlib.sha256(lst.read_bytes()).hexdigest(), "n_names": 2}
    assert sel["selected_names_sha256"] == hashlib.sha256(b"image00000\nimage00002\n").hexdigest()
    drop = tmp_path / "drop.txt"
    drop.write_text("image00000\n")
    both = AFLW2000Eval(tmp_path / "f", include=picked, exclude=NameList.load(drop))
    assert [s.name for s in both.samples] == ["image00002"] and both.selection["exclude_list"]["n_names"] == 1
    cfg = PreprocessCfg(input_size=32)
    res = both.evaluate(GroundTruthPredictor(both, cfg), cfg)
    assert res["n"] == 1 and res["data"]["selection"] == both.selection and res["images"][0]["name"] == "image00002"
    assert [s.name for s in AFLW2000Eval(tmp_path / "f", exclude=["image00001"]).samples] == ["image00000", "image00002"]


def test_name_list_errors_name_the_missing_images(tmp_path: Path) -> None:
    from mlanet.eval.aflw2000 import NameList

    _blob_folder(tmp_path / "f", n_images=2)
    lst = tmp_path / "other.txt"
    lst.write_text("image00001\nimage01234\n")
    with pytest.raises(AssetError, match=r"1 image\(s\) named by --list \(list .*other\.txt\).*image01234"):
        AFLW2000Eval(tmp_path / "f", include=NameList.load(lst))
    with pytest.raises(AssetError, match=r"--exclude-list.*image09999"):
        AFLW2000Eval(tmp_path / "f", exclude=["image09999"])
    with pytest.raises(AssetError, match="leave no image"):
        AFLW2000Eval(tmp_path / "f", include=["image00000"], exclude=["image00000"])
    with pytest.raises(AssetError, match="missing_list.txt.*not found"):
        NameList.load(tmp_path / "missing_list.txt")
    named = NameList.load("aflw2000_dev_heldout")
    assert named.spec == "aflw2000_dev_heldout" and len(named.names) == 100 and named.path.is_file()


def test_cli_list_naming_a_missing_image_fails_before_the_model(tmp_path: Path, capsys) -> None:
    _blob_folder(tmp_path / "f", n_images=1)
    lst = tmp_path / "l.txt"
    lst.write_text("image00000\nimage00077\n")
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(tmp_path / "r.json"),
               "--weights", str(tmp_path / "w.safetensors"), "--list", str(lst)])
    err = capsys.readouterr().err
    assert rc == 2 and "image00077" in err and str(lst) in err
    assert not (tmp_path / "r.json").exists()


def test_cli_list_and_untrained_end_to_end(tmp_path: Path, synthetic_data, capsys) -> None:
    _blob_folder(tmp_path / "f", n_images=3)
    fm = synthetic_data.save(tmp_path / "synthetic.mlface.npz")
    lst = tmp_path / "l.txt"
    lst.write_text("image00001\nimage00002\n")
    out = tmp_path / "r.json"
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(out), "--untrained", "mlanet_mobile",
               "--face-model", str(fm), "--list", str(lst), "--exclude-list", str(lst)])
    assert rc == 2 and "leave no image" in capsys.readouterr().err
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(out), "--untrained", "mlanet_mobile",
               "--face-model", str(fm), "--list", str(lst)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out.read_text())
    assert res["n"] == 2 and [r["name"] for r in res["images"]] == ["image00001", "image00002"]
    assert res["data"]["selection"]["list"]["path"] == str(lst) and res["weights"]["untrained"] is True
    assert f"--list {lst} (2 names, sha256" in printed.out
    assert res["model"]["mirror_average"] is False
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(out), "--untrained", "mlanet_mobile",
               "--face-model", str(fm), "--list", str(lst), "--mirror-average"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["n"] == 2 and res["model"]["mirror_average"] is True


@pytest.mark.assets
def test_dev_heldout_list_on_the_dev_split(shared: Path) -> None:
    from mlanet.eval.aflw2000 import NameList
    from mlanet.eval.metrics import yaw_bins

    held, train = NameList.load("aflw2000_dev_heldout"), NameList.load("aflw2000_dev_train")
    bench = AFLW2000Eval(shared / DEV, include=held)
    assert len(bench) == 100 and np.bincount(yaw_bins(bench.yaw_deg)).tolist() == [66, 19, 15]
    rest = AFLW2000Eval(shared / DEV, exclude=train)
    assert [s.name for s in rest.samples] == [s.name for s in bench.samples]  # the two lists partition the split
    assert set(held.names).isdisjoint(train.names)


# ------------------------------------------------------------------------ CLI
def test_cli_without_weights_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    import mlanet.weights

    monkeypatch.setattr(mlanet.weights, "default_weights_path", lambda name: None)  # an install without weights
    _blob_folder(tmp_path / "f", n_images=1)
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(tmp_path / "r.json")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no shipped weights for mlanet_mobile" in err and "--weights FILE" in err  # the default network
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(tmp_path / "r.json"), "--model", "mlanet_r50"])
    err = capsys.readouterr().err
    assert rc == 2 and "mlanet_r50" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_folder_without_pairs(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no pairs here"
    empty.mkdir()
    rc = main(["eval", "aflw2000", "--data", str(empty), "--json", str(tmp_path / "r.json"), "--weights", str(tmp_path / "w.safetensors")])
    assert rc == 2
    assert str(empty) in capsys.readouterr().err


def test_cli_detector_crop_is_refused(tmp_path: Path, capsys) -> None:
    _blob_folder(tmp_path / "f", n_images=1)
    rc = main(["eval", "aflw2000", "--data", str(tmp_path / "f"), "--json", str(tmp_path / "r.json"),
               "--weights", str(tmp_path / "w.safetensors"), "--crop", "detector"])
    assert rc == 2 and "edge runtime" in capsys.readouterr().err


@pytest.mark.assets
@pytest.mark.skipif(importlib.util.find_spec("mlanet.models.registry") is None, reason="mlanet.models.registry not written yet")
def test_cli_end_to_end_with_an_untrained_network(shared: Path, tmp_path: Path, synthetic_data, capsys) -> None:
    from mlanet.eval.predict import make_landmark_predictor
    from mlanet.models.model_io import save_model
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    folder = _copy_dev(shared, tmp_path / "four", (2, 1, 1))
    face_model = MorphableModel(synthetic_data)
    fm_path = synthetic_data.save(tmp_path / "synthetic.mlface.npz")
    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=face_model, preprocess=PreprocessCfg(input_size=64))
    ckpt = save_model(model, tmp_path / "untrained.safetensors", face_model)

    # The predictor on its own: (B, 68, 2) finite crop pixels.
    predict = make_landmark_predictor(model, face_model)
    lm = predict(torch.rand(1, 3, 64, 64))
    assert lm.shape == (1, 68, 2) and torch.isfinite(lm).all()

    out = tmp_path / "out" / "aflw.json"
    rc = main(["eval", "aflw2000", "--data", str(folder), "--json", str(out), "--weights", str(ckpt),
               "--face-model", str(fm_path), "--batch", "4"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    result = json.loads(out.read_text())
    for key in ("nme_bins", "nme_mean_bins", "nme_all", "n"):
        assert key in result
    assert result["n"] == 4 and result["n_bins"] == [2, 1, 1] and math.isfinite(result["nme_all"])
    assert result["model"]["name"] == "mlanet_mobile" and result["input_size"] == 64
    assert result["weights"]["path"] == str(ckpt) and len(result["weights"]["sha256"]) == 64
    assert "mean of bins" in printed.out and str(out) in printed.out
    if importlib.util.find_spec("matplotlib") is not None:
        ced = out.with_name("aflw_ced.png")
        assert ced.read_bytes()[:4] == b"\x89PNG" and str(ced) in printed.out
