"""The training store (issue 14.6): prepare (resumable, guarded), read back, augmented samples.

Synthetic sources are in-memory readers (images made in code); the ``assets`` test prepares a
few dozen real samples from ``<shared>/data/train``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlanet.morphable.model import MorphableModel

from mlanet.data.augment import AugmentCfg, AugmentDraw
from mlanet.data.sources import DEFINITIONS, ExclusionGuard, FaceSample, LandmarkSet
from mlanet.data.sources.base import SourceReader
from mlanet.data.store import (
    BOX_RULES,
    FACE_CROP_RULES,
    Store,
    calibrate_box_rules,
    face_box,
    prepare_store,
)
from mlanet.cli import main as mlanet_main
from mlanet.data.store_dataset import StoreDataset, warp_uint8
from mlanet.errors import AssetError, MLANetError
from mlanet.preprocess import PreprocessCfg


def data_main(argv):
    return mlanet_main(["data", *argv])


NO_DEV = ExclusionGuard(dev_folder=None)
# roi_scale 1 and margin 1.25 with a 128 px landmark box give a 160 px store crop of a 160 px region:
# store pixels are image pixels shifted by an integer (an exact check of the crop convention)
PRE = PreprocessCfg(input_size=128, roi_scale=1.0)


class FakeSource(SourceReader):
    """An in-memory reader; ``on_decode(i)`` runs before image ``i`` is returned."""

    def __init__(self, name: str, samples: list[FaceSample], terms: str = "test only") -> None:
        self.source, self.terms = name, terms
        super().__init__(Path(f"/fake/{name}"), samples, [], [])


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


class _Loader:
    def __init__(self, image: np.ndarray, counter: dict[str, int] | None = None, fail_at: int | None = None) -> None:
        self.image, self.counter, self.fail_at = image, counter, fail_at

    def __call__(self) -> np.ndarray:
        if self.counter is not None:
            self.counter["n"] += 1
            if self.fail_at is not None and self.counter["n"] >= self.fail_at:
                raise KeyboardInterrupt
        return self.image


def _symmetric_points(definition: str, rng: np.random.Generator, centre: tuple[float, float], half: float) -> np.ndarray:
    """A frontal, mirror-symmetric set: twins at the same height, mirrored about x = centre."""
    d = DEFINITIONS[definition]
    perm = d.flip_permutation
    pts = np.zeros((d.n_points, 2))
    for i, j in enumerate(perm):
        if j < i:
            continue
        dx, y = rng.uniform(0.15, 1.0) * half, centre[1] + rng.uniform(-1, 1) * half
        side = d.frontal_side[i]
        if side == "C":
            pts[i] = (centre[0], y)
        else:
            sign = -1.0 if side == "L" else 1.0
            pts[i], pts[j] = (centre[0] + sign * dx, y), (centre[0] - sign * dx, y)
    return pts


def _fit_box(pts: np.ndarray, centre: tuple[float, float], side: float) -> np.ndarray:
    """Scale/shift points so that their box is a square of ``side`` centred on ``centre`` (max side)."""
    lo, hi = pts.min(0), pts.max(0)
    s = side / float(np.max(hi - lo))
    return np.round(((pts - (lo + hi) / 2) * s + np.asarray(centre)) * 64) / 64  # exact in float32


def make_sources(counter: dict[str, int] | None = None, fail_at: int | None = None, n68: int = 5,
                 seed: int = 0) -> list[FakeSource]:
    """Three small sources: 68-point photos, 5-point photos, AFLW-like 120x120 crops (21 points, some hidden)."""
    rng = np.random.default_rng(seed)
    kw = {"counter": counter, "fail_at": fail_at}
    s68, s5, s21 = [], [], []
    for i in range(n68):
        img = _image(rng, 200, 220)
        pts = _fit_box(_symmetric_points("ibug68", rng, (0, 0), 1.0), (100.0 + i, 90.0), 128.0)
        s68.append(FaceSample(f"fake68:img{i}.jpg", "fake68", "t68", Path(f"img{i}.jpg"),
                              {"ibug68": LandmarkSet("ibug68", pts, np.ones(68, bool))}, loader=_Loader(img, **kw)))
    for i in range(4):
        img = _image(rng, 150, 130)
        pts = _symmetric_points("mtfl5", rng, (65.0, 70.0), 20.0)
        s5.append(FaceSample(f"fake5:a/{i}.jpg", "fake5", "t5", Path(f"{i}.jpg"),
                             {"mtfl5": LandmarkSet("mtfl5", pts, np.ones(5, bool))}, loader=_Loader(img, **kw)))
    for i in range(3):
        img = _image(rng, 120, 120)
        pts = _symmetric_points("aflw21", rng, (60.0, 60.0), 35.0)
        vis = np.ones(21, bool)
        vis[[12, 4 + i]] = False
        s21.append(FaceSample(f"aflw-crops:images/image{5000 + i:05d}.jpg", "aflw-crops", "t21",
                              Path(f"image{5000 + i:05d}.jpg"), {"aflw21": LandmarkSet("aflw21", pts, vis)},
                              yaw_deg=10.0 * (i + 1), loader=_Loader(img, **kw)))
    return [FakeSource("fake68", s68, "t68"), FakeSource("fake5", s5, "t5"), FakeSource("aflw-crops", s21, "t21")]


def _prepare(sources, out, **kw):
    kw.setdefault("preprocess", PRE)
    kw.setdefault("guard", NO_DEV)
    kw.setdefault("progress", False)
    kw.setdefault("shard_size", 4)
    return prepare_store(sources, out, **kw)


# ----------------------------------------------------------------------------- store
def test_round_trip_points_and_pixels(tmp_path):
    sources = make_sources()
    rep = _prepare(sources, tmp_path / "st")
    st = Store(tmp_path / "st")
    samples = [s for src in sources for s in src]
    assert len(st) == len(samples) == rep.manifest["n"] == rep.manifest["n_ok"]
    assert st.size == 160 and st.margin == 1.25 and st.keys == [s.key for s in samples]
    assert st.definitions == ["ibug68", "aflw21", "mtfl5"]
    assert [s["written"] for s in st.sources] == [5, 4, 3] and st.sources[2]["terms"] == "t21"
    assert st.manifest["guard"]["passed"] and st.manifest["guard"]["checked_keys"] == len(samples)
    st.verify()
    for row, s in enumerate(samples):
        for name in st.definitions:
            p, v = st.points(row, name)
            if name in s.landmark_sets:
                ls = s.landmark_sets[name]
                assert np.array_equal(v, ls.visible)
                np.testing.assert_allclose(st.to_image(row, p[v]), ls.points[ls.visible], atol=1e-3)
                assert np.isnan(p[~v]).all()
            else:
                assert not v.any() and np.isnan(p).all()
    # 68-point photos: a 128 px box -> a 160 px store crop of 160 image pixels at an integer offset
    for row in range(5):
        x0, y0, side = st.labels["crop_box"][row]
        assert side == pytest.approx(160.0) and float(x0).is_integer() and float(y0).is_integer()
        img = samples[row].image
        x0, y0 = int(x0), int(y0)
        expected = np.zeros((160, 160, 3), np.uint8)
        ys, xs = slice(max(y0, 0), min(y0 + 160, 200)), slice(max(x0, 0), min(x0 + 160, 220))
        expected[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = img[ys, xs]
        assert np.array_equal(st.images[row], expected)
    # AFLW-like crops: the whole 120 crop, centred, 120 / 1.515 = the 68-equivalent side
    rule = FACE_CROP_RULES["aflw-crops"]
    for row in range(9, 12):
        x0, y0, side = st.labels["crop_box"][row]
        assert side == pytest.approx(PRE.roi_scale * 120 / rule.side_ratio * 1.25)
        assert x0 + side / 2 == pytest.approx(60.0) and y0 + side / 2 == pytest.approx(60.0)
        assert st.labels["box_rule"][row] == "face-crop" and st.labels["yaw_deg"][row] == 10.0 * (row - 8)
    assert st.labels["box_rule"][5] == "mtfl5" and st.labels["box_rule"][0] == "ibug68"
    # un-augmented dataset sample: the centre 128 pixels of the store crop, points shifted by 16
    ds = StoreDataset(st, None)
    for use_cv2 in (True, False):
        ds.use_cv2 = use_cv2
        d = ds[0]
        assert torch.equal(d["image"], torch.from_numpy(np.array(st.images[0][16:144, 16:144])).permute(2, 0, 1).float() / 255)
        np.testing.assert_allclose(d["landmarks"].numpy(), st.points(0, "ibug68")[0] - 16, atol=1e-5)
        assert d["landmarks_valid"].all() and not d["has_params"] and not d["has_mp468"]
    box = d["box"].numpy()  # the network's crop: roi_scale * 68-box side, centred on the 68 box
    assert box[2] == pytest.approx(128.0) and box[0] + box[2] / 2 == pytest.approx(100.0)


def test_prepare_resumes_after_ctrl_c(tmp_path):
    counter = {"n": 0}
    with pytest.raises(KeyboardInterrupt):
        _prepare(make_sources(counter, fail_at=7), tmp_path / "st")
    assert not (tmp_path / "st" / "manifest.json").exists()
    assert (tmp_path / "st" / "shards" / "labels_00000.npz").is_file()
    assert not (tmp_path / "st" / "shards" / "labels_00001.npz").exists()
    with pytest.raises(AssetError, match="unfinished"):
        Store(tmp_path / "st")
    with pytest.raises(MLANetError, match="other settings"):
        _prepare(make_sources(), tmp_path / "st", margin=1.5)
    images = np.load(tmp_path / "st" / "images.npy", mmap_mode="r+")
    images[5] = 7  # rows of an unfinished shard: overwritten on resume
    del images
    counter = {"n": 0}
    rep = _prepare(make_sources(counter), tmp_path / "st")
    assert rep.resumed and rep.shards_skipped == 1 and rep.shards_written == 2
    assert counter["n"] == 12 - 4  # the finished shard was not decoded again
    assert not (tmp_path / "st" / "shards").exists()
    fresh = _prepare(make_sources(), tmp_path / "fresh")
    assert rep.manifest["content_sha256"] == fresh.manifest["content_sha256"]
    assert np.array_equal(Store(tmp_path / "st").images, Store(tmp_path / "fresh").images)
    again = _prepare(make_sources(counter), tmp_path / "st")
    assert again.already_complete and counter["n"] == 8

    # a finished shard whose image rows were damaged is written again
    counter = {"n": 0}
    with pytest.raises(KeyboardInterrupt):
        _prepare(make_sources(counter, fail_at=10), tmp_path / "dmg")
    images = np.load(tmp_path / "dmg" / "images.npy", mmap_mode="r+")
    images[1] = 0
    del images
    counter = {"n": 0}
    rep = _prepare(make_sources(counter), tmp_path / "dmg")
    assert rep.shards_skipped == 1 and rep.shards_written == 2 and counter["n"] == 8
    assert rep.manifest["content_sha256"] == fresh.manifest["content_sha256"]


def test_aflw2000_keys_are_refused(tmp_path):
    sources = make_sources()
    bad = sources[2][0]
    sneaky = FaceSample("aflw-crops:images/image04375.jpg", "aflw-crops", "t", Path("image04375.jpg"),
                        dict(bad.landmark_sets), loader=bad.loader)
    sources[2] = FakeSource("aflw-crops", [sneaky])
    with pytest.raises(AssetError, match="AFLW2000-3D"):
        _prepare(sources, tmp_path / "st")
    assert not (tmp_path / "st" / "images.npy").exists()


def test_extras_are_stored_warped_and_flipped(tmp_path):
    sources = make_sources()

    def extras(sample):
        if sample.source != "fake68":
            return None
        return {"teacher68": sample.landmark_sets["ibug68"].points, "pose": np.array([0.1, 0.2, 0.3])}

    extras.point_sets = {"teacher68": "ibug68"}
    _prepare(sources, tmp_path / "st", extras=extras)
    st = Store(tmp_path / "st")
    assert st.extras["teacher68"] == {"shape": [68, 2], "dtype": "float32", "point_set": True, "definition": "ibug68"}
    assert st.labels["has_x_pose"].tolist() == [True] * 5 + [False] * 7
    assert np.isnan(st.labels["x_pose"][5:]).all()
    ds = StoreDataset(st, AugmentCfg(flip_prob=1.0))
    d = ds[(2, 5)]
    assert d["flipped"] and torch.allclose(d["x_teacher68"], d["landmarks"], atol=1e-4)
    assert torch.allclose(d["x_pose"], torch.tensor([0.1, 0.2, 0.3]))
    assert not ds[(7, 5)]["has_x_teacher68"]


# ----------------------------------------------------------------------------- augmentation
def _flip_only(size: int) -> AugmentDraw:
    return AugmentDraw(True, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 1.0, 0.0, 0.0, None, (0, 0, 0), size)


def test_flip_uses_each_definitions_permutation(tmp_path):
    _prepare(make_sources(), tmp_path / "st")
    ds = StoreDataset(tmp_path / "st", AugmentCfg())
    for row, name in ((0, "ibug68"), (5, "mtfl5"), (9, "aflw21")):
        plain = ds.sample(row)
        flipped = ds.sample(row, draw=_flip_only(128))
        p, v = plain[f"points_{name}"].numpy(), plain[f"visible_{name}"].numpy()
        q, w = flipped[f"points_{name}"].numpy(), flipped[f"visible_{name}"].numpy()
        perm = np.asarray(DEFINITIONS[name].flip_permutation)
        # definition of the flip: point i of the mirrored face is the mirror image of point perm[i]
        np.testing.assert_allclose(q[w], np.stack([128 - p[perm, 0], p[perm, 1]], 1)[w], atol=1e-4)
        assert np.array_equal(w, v[perm])
        # the synthetic faces are mirror-symmetric: the mirrored face has its points where they were
        both = w & v
        np.testing.assert_allclose(q[both], p[both], atol=1e-3)
        sides = np.asarray(DEFINITIONS[name].frontal_side)
        assert (q[w & (sides == "L"), 0] < 64).all() and (q[w & (sides == "R"), 0] > 64).all()
        assert torch.equal(flipped["image"], torch.flip(plain["image"], dims=[-1]))
    yaw = float(ds.sample(9)["yaw_deg"])
    assert float(ds.sample(9, draw=_flip_only(128))["yaw_deg"]) == -yaw == -10.0


def _dot_image(points: np.ndarray, h: int, w: int, sigma: float = 1.5) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    img = np.zeros((h, w))
    for x, y in points:
        img += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroid(image: np.ndarray, x: float, y: float, r: int = 4) -> np.ndarray:
    g = image[0].numpy().astype(np.float64)
    cx, cy = int(math.floor(x)), int(math.floor(y))
    ys, xs = np.mgrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
    wgt = g[cy - r:cy + r + 1, cx - r:cx + r + 1]
    return np.array([(wgt * (xs + 0.5)).sum(), (wgt * (ys + 0.5)).sum()]) / wgt.sum()


def test_warp_keeps_points_on_their_image_features(tmp_path):
    pts = np.array([[50.0, 52.0], [82.0, 51.0], [66.3, 70.2], [53.1, 88.0], [79.4, 87.6]])
    sample = FaceSample("dots:0.png", "dots", "t", Path("0.png"), {"mtfl5": LandmarkSet("mtfl5", pts, np.ones(5, bool))},
                        loader=_Loader(_dot_image(pts, 140, 130)))
    _prepare([FakeSource("dots", [sample])], tmp_path / "st", preprocess=PreprocessCfg(input_size=128))
    cfg = AugmentCfg.geometric_only(rotation_deg=30.0, scale=(0.8, 1.2), shift=0.08, flip_prob=0.5)
    ds = StoreDataset(tmp_path / "st", cfg)
    ds_torch = StoreDataset(tmp_path / "st", cfg, use_cv2=False)
    flips = checked = 0
    for seed in range(8):
        d = ds[(0, seed)]
        flips += int(d["flipped"])
        lm = d["points_mtfl5"].numpy()
        assert torch.allclose(torch.from_numpy(warp_uint8(ds.store.images[0], d["warp"].double().numpy(), 128))
                              .permute(2, 0, 1).float() / 255, d["image"])
        for x, y in lm:
            if 6 <= x < 122 and 6 <= y < 122:
                assert np.linalg.norm(_centroid(d["image"], x, y) - (x, y)) < 0.25
                checked += 1
        t = ds_torch[(0, seed)]["image"]
        assert (t - d["image"]).abs().max() <= 2.5 / 255  # OpenCV's fixed-point bilinear vs grid_sample
    assert 0 < flips < 8 and checked >= 30


def test_photometric_part_and_determinism(tmp_path):
    _prepare(make_sources(), tmp_path / "st")
    ds = StoreDataset(tmp_path / "st", AugmentCfg(occlusion_prob=1.0, blur_prob=1.0))
    a, b = ds[(3, 11)], ds[(3, 11)]
    assert torch.equal(a["image"], b["image"]) and a["image"].shape == (3, 128, 128)
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    assert not torch.equal(ds[(3, 12)]["image"], a["image"])
    ds.set_epoch(1)
    e1 = ds[3]["image"]
    ds.set_epoch(2)
    assert not torch.equal(ds[3]["image"], e1)
    batch = torch.utils.data.default_collate([ds[(i, i)] for i in range(4)])
    assert batch["image"].shape == (4, 3, 128, 128) and batch["points_aflw21"].shape == (4, 21, 2)
    assert StoreDataset(tmp_path / "st", None, sources=["fake5"]).rows.tolist() == [5, 6, 7, 8]
    with pytest.raises(ValueError, match="no source"):
        StoreDataset(tmp_path / "st", None, sources=["nope"])


# ----------------------------------------------------------------------------- rules and CLI
def test_face_box_rules():
    rng = np.random.default_rng(3)
    pts = _fit_box(rng.uniform(0, 1, (68, 2)), (40.0, 50.0), 30.0)
    s = FaceSample("x:1", "x", "t", Path("1"), {"ibug68": LandmarkSet("ibug68", pts, np.ones(68, bool))})
    centre, side, rule = face_box(s)
    assert rule == "ibug68" and side == pytest.approx(30.0) and np.allclose(centre, (40.0, 50.0))
    vis = np.ones(21, bool)
    vis[3] = False  # a non-ear point hidden: the aflw21 rule cannot give a box
    s = FaceSample("x:2", "x", "t", Path("2"), {"aflw21": LandmarkSet("aflw21", rng.uniform(0, 9, (21, 2)), vis)})
    assert face_box(s) is None
    m = BOX_RULES["mtfl5"]
    p5 = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 5.0], [1.0, 10.0], [9.0, 10.0]])
    s = FaceSample("x:3", "x", "t", Path("3"), {"mtfl5": LandmarkSet("mtfl5", p5, np.ones(5, bool))})
    centre, side, rule = face_box(s)
    assert rule == "mtfl5" and side == pytest.approx(10 * m.scale) and np.allclose(centre, (5.0, 5.0 + 10 * m.offset[1]))


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    for argv in (["prepare", "--source", "300w", "--out", str(tmp_path / "a")],
                 ["prepare", "--source", "nosuch=/x", "--out", str(tmp_path / "b")],
                 ["prepare", "--source", f"300w={tmp_path / 'missing'}", "--out", str(tmp_path / "c")],
                 ["prepare", "--out", str(tmp_path / "d")],
                 ["prepare", "--source", "300w=/x", "--out", str(tmp_path / "e"), "--limit", "0"],
                 ["prepare", "--source", "300w=/x", "--source", "300w=/y", "--out", str(tmp_path / "f")]):
        assert data_main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err


# ----------------------------------------------------------------------------- real data
@pytest.mark.assets
def test_real_prepare_small(shared, tmp_path, capsys):
    from mlanet.cli import main as mlanet_main

    train = shared / "data" / "train"
    out = tmp_path / "st"
    argv = ["data", "prepare", "--out", str(out), "--limit", "10", "--shard-size", "8", "--quiet"]
    for name in ("aflw-crops", "300w", "mtfl"):
        argv += ["--source", f"{name}={train / name}"]
    assert mlanet_main(argv) == 0  # through the mlanet command
    assert "30 crops 160x160" in capsys.readouterr().out
    st = Store(out)
    st.verify()
    m = json.loads((out / "manifest.json").read_text())
    assert [s["written"] for s in m["sources"]] == [10, 10, 10] and m["guard"]["passed"]
    assert all("research use only" in s["terms"] for s in m["sources"])
    # every visible point of the network's un-augmented crop lies in (or near) it
    ds = StoreDataset(st, None)
    for i in range(len(ds)):
        d = ds[i]
        for name in st.definitions:
            p = d[f"points_{name}"][d[f"visible_{name}"]]
            if len(p):
                assert float(p.min()) > -10 and float(p.max()) < 138, (st.keys[i], name)
    loader = torch.utils.data.DataLoader(StoreDataset(st, AugmentCfg()), batch_size=8, num_workers=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 128, 128)


@pytest.mark.assets
def test_box_rules_match_their_300w_calibration(shared):
    from mlanet.data.sources import open_source

    cal = calibrate_box_rules(open_source("300w", shared / "data" / "train" / "300w"))
    for name in ("aflw21", "mtfl5"):
        rule = BOX_RULES[name]
        assert cal[name]["n"] > 1000
        assert cal[name]["scale"] == pytest.approx(rule.scale, abs=0.005)
        assert cal[name]["dy"] == pytest.approx(rule.offset[1], abs=0.005)
        assert abs(cal[name]["dx"]) < 0.015


def test_training_reads_the_store_with_the_samplers_seed(tmp_path, synthetic_data):
    """`mlanet train` with data.store_dir: real-face samples come from the store, augmented from the sampler's seed."""
    import json

    from mlanet.cli import main as cli_main
    from mlanet.train.sampling import MixtureDataset

    pre = PreprocessCfg(input_size=64)
    store_dir = tmp_path / "store"
    _prepare(make_sources(), store_dir, preprocess=pre)
    face_path = synthetic_data.save(tmp_path / "face.mlface.npz")

    ds = StoreDataset(store_dir, seed=0, n_params=10)
    mix = MixtureDataset([ds], [None])
    a, b, c = mix[(0, 3, 7)], mix[(0, 3, 7)], mix[(0, 3, 8)]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])

    argv = ["train", "--out", str(tmp_path / "run"), "--set", f"face_model={face_path}",
            "--set", "preprocess.input_size=64", "--set", "preprocess.roi_scale=1.4142135623730951",
            "--set", f"data.store_dir={store_dir}", "--set", "data.synthetic=0.2", "--set", "optim.steps=2",
            "--set", "optim.batch_size=4", "--set", "optim.warmup_steps=1", "--set", "data.val_synthetic=4",
            "--set", "run.val_every=2", "--set", "run.ckpt_every=2", "--set", "run.log_every=1"]
    assert cli_main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 1 and summary["stopped_by"] == "finished"
    # another input size is fine (the store rescales its crops); another crop scale is refused, naming the store
    other = [a if not a.startswith("preprocess.input_size") else "preprocess.input_size=48" for a in argv]
    other[other.index("--out") + 1] = str(tmp_path / "run_48")
    assert cli_main(other) == 0
    bad = [a if not a.startswith("preprocess.roi_scale") else "preprocess.roi_scale=1.6" for a in argv]
    bad[bad.index("--out") + 1] = str(tmp_path / "run2")
    assert cli_main(bad) == 2  # one line naming the store, no traceback
    # a second store as its own mixture component; weights must match the folders
    extra = argv + ["--set", f"data.extra_store_dirs=[{store_dir}]", "--set", "data.extra_store_weights=[0.5]"]
    extra[extra.index("--out") + 1] = str(tmp_path / "run3")
    assert cli_main(extra) == 0
    from mlanet.config import load_config
    from mlanet.train.config import TrainCfg
    from mlanet.train.loop import build_sources

    cfg = load_config(TrainCfg, None, [a for a in extra[extra.index("--set"):] if a != "--set"])
    sources, weights, _ = build_sources(cfg, MorphableModel(synthetic_data))
    assert weights == [0.2, 1.0, 0.5] and len(sources) == 3
    mismatch = extra + ["--set", "data.extra_store_weights=[0.5, 0.1]"]
    assert cli_main(mismatch) == 2
    # the store's rotation ranges and the yaw balance reach the main store (not the extra one)
    tuned = [a for a in extra[extra.index("--set"):] if a != "--set"] + [
        "data.store_rotation_deg=30", "data.store_wide_rotation_prob=0.2", "data.store_yaw_balance=1.0"]
    cfg = load_config(TrainCfg, None, tuned)
    sources, _, _ = build_sources(cfg, MorphableModel(synthetic_data))
    main_store, extra_store = sources[1], sources[2]
    assert main_store.augment.cfg.rotation_deg == 30.0 and main_store.augment.cfg.wide_rotation_prob == 0.2
    yaw = main_store.abs_yaw_deg()
    assert np.isfinite(yaw).sum() == 3  # the three AFLW-like faces carry a yaw; the others have no pose label
    assert main_store.item_weights is not None and extra_store.item_weights is None
    assert np.allclose(main_store.item_weights, 1.0)  # yaw 10, 20, 30: one bin, nothing to even out
    cfg = load_config(TrainCfg, None, [a for a in extra[extra.index("--set"):] if a != "--set"] + ["data.augment=false"])
    assert build_sources(cfg, MorphableModel(synthetic_data))[0][1].augment is None
    # a fit_expression name the face model lacks: one line, exit 2
    typo = argv + ["--set", "loss.fit_expression=0.5", "--set", "loss.fit_expression_names=[jawOpenn]"]
    typo[typo.index("--out") + 1] = str(tmp_path / "run4")
    assert cli_main(typo) == 2


def test_extra_store_eye_balance_draws_closed_eyes_by_their_fits(tmp_path, synthetic_data):
    """data.extra_store_eye_balance weighs an extra store's faces by their fits' mean eyeBlink: the few
    closed-eye faces are drawn as often as the open ones; faces without a good fit keep weight 1."""
    import dataclasses

    from mlanet.config import load_config
    from mlanet.errors import ConfigError
    from mlanet.params import ParamLayout
    from mlanet.train.config import TrainCfg
    from mlanet.train.loop import build_sources

    names = ["eyeBlink_L", "eyeBlink_R"] + synthetic_data.expression_names[2:]
    face = MorphableModel(dataclasses.replace(synthetic_data, header={**synthetic_data.header, "expression_names": names}))
    layout = face.layout
    sl = layout.slices()["expression"]
    blinks = {0: (0.9, 0.7), 1: (0.05, 0.0), 2: (0.1, 0.1), 3: (0.3, 0.5), 4: (0.0, 0.1)}  # fake68 faces 0..4

    def extras(sample):
        if sample.source != "fake68":
            return None
        i = int(sample.key.split("img")[1].split(".")[0])
        fit = np.zeros(layout.total, np.float32)
        fit[sl.start:sl.start + 2] = blinks[i]
        return {"fit_params": fit, "fit_ok": np.array(0.0 if i == 4 else 1.0, np.float32)}

    store_dir = tmp_path / "store"
    _prepare(make_sources(), store_dir, preprocess=PreprocessCfg(input_size=64), extras=extras)
    ds = StoreDataset(store_dir, None)
    blink = ds.fitted_expression([0, 1], layout)
    assert np.allclose(blink[:4], [0.8, 0.025, 0.1, 0.4]) and np.isnan(blink[4:]).all()  # face 4: fit not ok
    with pytest.raises(ValueError, match="layout"):
        ds.fitted_expression([0, 1], ParamLayout(identity=1, expression=1, albedo=1))

    sets = ["face_model=unused", "preprocess.input_size=64", "preprocess.roi_scale=1.4142135623730951",
            "data.synthetic=0", f"data.extra_store_dirs=[{store_dir}]", "data.extra_store_weights=[1.0]"]
    cfg = load_config(TrainCfg, None, sets)
    assert build_sources(cfg, face)[0][0].item_weights is None  # no balance asked for: as stored
    cfg = load_config(TrainCfg, None, sets + ["data.extra_store_eye_balance=[1.0]"])
    w = build_sources(cfg, face)[0][0].item_weights
    closed, half, open_ = w[0], w[3], w[[1, 2]].sum()
    assert np.isclose(closed, half) and np.isclose(closed, open_)  # one face per bin weighs as much as two
    assert np.allclose(w[4:], w.mean())  # no good fit: neither favoured nor dropped
    with pytest.raises(ConfigError, match="eyeBlink"):  # a face model without eyeBlink shapes
        build_sources(cfg, MorphableModel(synthetic_data))
    with pytest.raises(MLANetError, match="extra_store_eye_balance"):  # one value per extra store, in [0, 1]
        load_config(TrainCfg, None, sets + ["data.extra_store_eye_balance=[1.0, 0.5]"])
    with pytest.raises(MLANetError, match="extra_store_eye_balance"):
        load_config(TrainCfg, None, sets + ["data.extra_store_eye_balance=[2.0]"])


def test_prepare_every_keeps_every_kth_video_frame(tmp_path, capsys, monkeypatch):
    """`mlanet data prepare --every K` reads every K-th frame of a video folder (as `mlanet data label --every`),
    so a store can hold the frames a label cache was made for; --every 0 is refused in one line."""
    import mlanet.data.store as store_module
    from test_train_sources import make_video

    root = tmp_path / "clips"
    make_video(root / "clip.mp4", n_frames=12)
    seen = {}

    def no_prepare(readers, out, **kw):  # the readers the command built; the store itself is tested above
        seen["frames"] = [s.meta["frame_index"] for s in readers[0]]
        raise MLANetError("stopped by the test")

    monkeypatch.setattr(store_module, "prepare_store", no_prepare)
    for every, frames in ((None, [0, 5, 10]), (2, [0, 2, 4, 6, 8, 10])):
        argv = ["prepare", "--source", f"video-folder={root}", "--out", str(tmp_path / "s"), "--quiet"]
        assert data_main(argv + (["--every", str(every)] if every else [])) == 2
        assert seen.pop("frames") == frames
    capsys.readouterr()
    assert data_main(["prepare", "--source", f"video-folder={root}", "--out", str(tmp_path / "x"), "--every", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "--every" in err and len(err.splitlines()) == 1 and "frames" not in seen
