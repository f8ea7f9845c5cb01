"""Pseudo-3DMM fits (mlanet.data.fits): robust fit, trust weighting, cache keying/resume, store extras."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mlanet.data.fits import (
    fit_model_keys,
    FitCache,
    FitOutcome,
    LabelFitExtras,
    ObservationSpec,
    RobustFitSettings,
    fit_source,
    fitted_mask,
    robust_fit,
)
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.params import FaceParams, ParamLayout
from mlanet.preprocess import PreprocessCfg

FAST = RobustFitSettings(iterations=25, refine_iterations=10, chunk=16)


def _truth(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ident = 0.5 * torch.randn(n, model.n_identity, generator=g, dtype=torch.float64)
    expr = 0.6 * torch.rand(n, model.n_expression, generator=g, dtype=torch.float64)
    ang = torch.tensor([[0.1, 0.35, -0.05], [-0.05, -0.2, 0.1], [0.0, 0.0, 0.0]], dtype=torch.float64)[:n]
    t = torch.tensor([[0.01, -0.02, 1.0]], dtype=torch.float64).repeat(n, 1)
    return ident, expr, ang, t


def _project(model, ident, expr, ang, t, size=224):
    X = model.shape(ident.to(model.mean_shape.dtype), expr.to(model.mean_shape.dtype)).double()
    X = X[:, model.landmark_index] @ euler_to_matrix(ang).transpose(1, 2) + t[:, None]
    cam = PreprocessCfg(input_size=size).camera(1, dtype=torch.float64)
    f, cx, cy = float(cam.fx[0]), float(cam.cx[0]), float(cam.cy[0])
    return torch.stack([f * X[..., 0] / X[..., 2] + cx, f * X[..., 1] / X[..., 2] + cy], -1).numpy()


def _split(model, out):
    fp = FaceParams.from_flat(torch.as_tensor(out.params), ParamLayout.for_face_model(model))
    return fp


def test_robust_fit_recovers_known_parameters(synthetic_model):
    ident, expr, ang, t = _truth(synthetic_model)
    pts = _project(synthetic_model, ident, expr, ang, t)
    out = robust_fit(synthetic_model, [ObservationSpec("manual", "ict68", pts)], FAST)
    fp = _split(synthetic_model, out)
    assert out.params.shape == (3, ParamLayout.for_face_model(synthetic_model).total)
    assert np.all(out.residual_px < 0.3)
    assert torch.allclose(fp.rotation, ang, atol=math.radians(1.5))
    assert torch.allclose(fp.translation, t, atol=0.03)
    assert (fp.expression - expr).abs().max() < 0.15
    assert ((fp.expression >= 0) & (fp.expression <= 1)).all()
    # albedo / light at their neutral priors, flagged as not fitted
    neutral = FaceParams.neutral(ParamLayout.for_face_model(synthetic_model), 1, dtype=torch.float64)
    assert torch.allclose(fp.lighting, neutral.lighting.expand(3, -1, -1).double()) and (fp.albedo == 0).all()
    m = fitted_mask(synthetic_model)
    assert m.sum() == synthetic_model.n_identity + synthetic_model.n_expression + 6


def test_robust_fit_with_20_percent_outliers(synthetic_model):
    ident, expr, ang, t = _truth(synthetic_model, seed=1)
    clean = _project(synthetic_model, ident, expr, ang, t)
    rng = np.random.default_rng(0)
    noisy = clean.copy()
    bad = rng.random(clean.shape[:2]) < 0.2
    noisy[bad] += rng.choice([-1, 1], size=(int(bad.sum()), 2)) * rng.uniform(15, 40, (int(bad.sum()), 2))
    spec = [ObservationSpec("manual", "ict68", noisy)]
    plain = robust_fit(synthetic_model, spec, RobustFitSettings(**{**FAST.to_dict(), "irls_passes": 1}))
    rob = robust_fit(synthetic_model, spec, FAST)

    def inlier_err(out):
        fp = _split(synthetic_model, out)
        p = _project(synthetic_model, fp.identity, fp.expression, fp.rotation, fp.translation)
        return np.linalg.norm(p - clean, axis=-1)[~bad].mean()

    assert inlier_err(rob) < 1.0
    assert inlier_err(rob) < 0.5 * inlier_err(plain)
    assert np.all(rob.inlier_fraction > 0.7) and np.all(rob.inlier_fraction < 0.9)


def test_manual_points_weigh_more_than_pseudo_ones(synthetic_model):
    ident, expr, ang, t = _truth(synthetic_model, seed=2)
    pts = _project(synthetic_model, ident, expr, ang, t)
    shifted = pts + np.array([5.0, 0.0])
    out = robust_fit(synthetic_model, [ObservationSpec("manual", "ict68", pts),
                                       ObservationSpec("teacher", "ict68", shifted)], FAST)
    assert np.all(out.set_residual_px["manual"] < 1.0)
    assert np.all(out.set_residual_px["teacher"] > 4.0)
    assert np.allclose(out.residual_px, out.set_residual_px["manual"])


# ----------------------------------------------------------------------------- cache and extras
def _label_table(n, source="fake68", seed=0):
    from mlanet.data.labels.cache import LabelCache, LabelEntry  # noqa: F401

    rng = np.random.default_rng(seed)
    entries = []
    for i in range(n):
        pts = rng.uniform(40, 160, (68, 2))
        entries.append(LabelEntry(key=f"{source}:{i}", content=f"c{i}", box_rule="landmarks:ibug68", annotation=f"a{i}",
                                  status=0, t68=pts + 1, pose=np.zeros(3), mp_status=1,
                                  mp468=rng.uniform(40, 160, (468, 2)), manual={"ibug68": pts}))
    return entries


class FakeFitter:
    def __init__(self):
        self.faces = 0

    def __call__(self, model, specs, settings):
        n = specs[0].points.shape[0]
        self.faces += n
        assert {s.kind for s in specs} == {"manual", "teacher", "mediapipe"}
        P = ParamLayout.for_face_model(model).total
        return FitOutcome(np.full((n, P), 0.25), np.full(n, 1.0), {"manual": np.full(n, 1.0)}, np.ones(n))


def test_cache_keying_and_resume(tmp_path, synthetic_model):
    from mlanet.data.labels.cache import LabelCache

    lc = LabelCache(tmp_path / "labels")
    lc.write_shard("fake68", _label_table(7), {"labeller_id": "L1"})
    lc.write_manifest("fake68", {})
    table = lc.load("fake68")
    cache = FitCache(tmp_path / "fits")
    f1 = FakeFitter()
    st = fit_source(table, synthetic_model, cache, FAST, limit=3, shard_size=2, progress=False, fitter=f1)
    assert (st.fitted, st.hits, f1.faces) == (3, 0, 3)
    f2 = FakeFitter()
    st = fit_source(table, synthetic_model, cache, FAST, shard_size=2, progress=False, fitter=f2)
    assert (st.fitted, st.hits, f2.faces) == (4, 3, 4)
    ft = cache.load("fake68")
    assert len(ft) == 7 and ft["ok"].all() and np.allclose(ft["params"], 0.25)
    assert ft.row(ft["label_lookup"][5]) == 5
    # another fitter setting is another key: everything is fitted again
    f3 = FakeFitter()
    other = RobustFitSettings(**{**FAST.to_dict(), "sigma_mediapipe_px": 7.0})
    st = fit_source(table, synthetic_model, cache, other, shard_size=4, progress=False, fitter=f3)
    assert (st.fitted, st.hits) == (7, 0)
    assert len(cache.load("fake68", fitter=None)) == 14


def test_store_extras_provider(tmp_path, synthetic_model):
    from mlanet.data.labels.cache import LabelCache, LabelEntry
    from mlanet.data.labels.labeller import annotation_digest, box_rule_for
    from mlanet.data.sources.base import SourceReader
    from mlanet.data.sources.exclusion import ExclusionGuard
    from mlanet.data.sources.schema import FaceSample, LandmarkSet
    from mlanet.data.store import Store, prepare_store

    class Src(SourceReader):
        def __init__(self, samples):
            self.source, self.terms = "fake68", "test only"
            super().__init__(Path("/fake/fake68"), samples, [], [])

    rng = np.random.default_rng(3)
    samples, entries = [], []
    for i in range(3):
        img = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        pts = (rng.uniform(50, 150, (68, 2)) * 64).round() / 64
        s = FaceSample(f"fake68:{i}.jpg", "fake68", "test only", Path(f"{i}.jpg"),
                       {"ibug68": LandmarkSet("ibug68", pts, np.ones(68, bool))}, loader=(lambda im=img: im))
        samples.append(s)
        if i < 2:  # the third has no labels
            entries.append(LabelEntry(key=s.key, content=f"c{i}", box_rule=box_rule_for(s).tag,
                                      annotation=annotation_digest(s), status=0, t68=pts + 1.0,
                                      pose=np.array([0.1, 0.2, 0.3]), mp_status=1 if i == 0 else 0,
                                      mp468=rng.uniform(50, 150, (468, 2)), manual={"ibug68": pts}))
    lc = LabelCache(tmp_path / "labels")
    lc.write_shard("fake68", entries, {"labeller_id": "L1"})
    lc.write_manifest("fake68", {})
    fit_source(lc.load("fake68"), synthetic_model, FitCache(tmp_path / "fits"), FAST, progress=False,
               fitter=FakeFitter())
    hashes = {s.key: f"c{i}" for i, s in enumerate(samples)}
    extras = LabelFitExtras(tmp_path / "labels", tmp_path / "fits", hasher=lambda s: hashes[s.key])
    prepare_store([Src(samples)], tmp_path / "st", input_size=64, progress=False,
                  guard=ExclusionGuard(dev_folder=None), extras=extras)
    st = Store(tmp_path / "st")
    lab = st.labels
    assert lab["has_x_teacher68"].tolist() == [True, True, False]
    assert lab["has_x_mp468"].tolist() == [True, False, False]
    assert lab["has_x_fit_params"].tolist() == [True, True, False]
    assert np.allclose(lab["x_fit_params"][:2], 0.25) and lab["x_fit_ok"][:2].tolist() == [1.0, 1.0]
    assert np.allclose(lab["x_pose"][0], [0.1, 0.2, 0.3])
    # teacher points are stored in store-crop pixels like the manual set (t68 = manual + 1 image px)
    box = st.crop_box(0)
    expect = box.image_to_crop(samples[0].landmark_sets["ibug68"].points.astype(np.float64) + 1.0, st.size)
    assert np.allclose(lab["x_teacher68"][0], expect, atol=1e-3)


def test_frames_without_manual_points_are_placed_by_the_teachers_box(tmp_path):
    """Video frames (no manual set) reach the store through LabelFitExtras.face_box: the teacher's 68-point box."""
    from mlanet.data.labels.cache import LabelCache, LabelEntry
    from mlanet.data.labels.labeller import annotation_digest, box_rule_for
    from mlanet.data.sources.base import SourceReader
    from mlanet.data.sources.exclusion import ExclusionGuard
    from mlanet.data.sources.schema import FaceSample
    from mlanet.data.store import Store, prepare_store

    class Frames(SourceReader):
        def __init__(self, samples):
            self.source, self.terms = "video-folder", "test only"
            super().__init__(Path("/fake/clips"), samples, [], [])

    rng = np.random.default_rng(5)
    samples, entries = [], []
    for i in range(3):
        img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        s = FaceSample(f"video-folder:clips/a.mp4#{i:06d}", "video-folder", "test only", Path("a.mp4"), {},
                       loader=(lambda im=img: im))
        samples.append(s)
        if i < 2:  # the third frame has no teacher label: left out, counted
            t68 = rng.uniform(100, 180, (68, 2))
            t68[0], t68[1] = (100.0, 90.0), (180.0, 190.0)  # box x 100..180, y 90..190: side 100, centre (140, 140)
            entries.append(LabelEntry(key=s.key, content=f"c{i}", box_rule=box_rule_for(s).tag,
                                      annotation=annotation_digest(s), status=0, t68=t68,
                                      pose=np.zeros(3), mp_status=0, mp468=None, manual={}))
    lc = LabelCache(tmp_path / "labels")
    lc.write_shard("video-folder", entries, {"labeller_id": "L1"})
    lc.write_manifest("video-folder", {})
    hashes = {s.key: f"c{i}" for i, s in enumerate(samples)}
    extras = LabelFitExtras(tmp_path / "labels", None, hasher=lambda s: hashes[s.key])
    centre, side, rule = extras.face_box(samples[0])
    assert rule == "teacher68" and side == pytest.approx(100.0) and np.allclose(centre, [140.0, 140.0])
    assert extras.face_box(samples[2]) is None
    pre = PreprocessCfg(input_size=64)
    report = prepare_store([Frames(samples)], tmp_path / "st", preprocess=pre, progress=False,
                           guard=ExclusionGuard(dev_folder=None), extras=extras, box_fallback=extras.face_box)
    st = Store(tmp_path / "st")
    assert len(st) == 2 and report.manifest["sources"][0]["no_box"] == 1
    assert st.labels["box_rule"].tolist() == ["teacher68", "teacher68"]
    assert "teacher" in report.manifest["crop_rule"]["rules"]["teacher68"]["description"]
    box = st.crop_box(0)  # centred on the teacher box, side roi_scale * 100 * size / input_size
    assert box.size == pytest.approx(pre.roi_scale * 100.0 * st.size / 64)
    assert box.x0 + box.size / 2 == pytest.approx(140.0) and box.y0 + box.size / 2 == pytest.approx(140.0)
    assert lab_has(st, "teacher68") == [True, True]


def lab_has(st, name):
    return st.labels[f"has_x_{name}"].tolist()


@pytest.mark.assets
def test_real_faces_fit(shared, ict_data, tmp_path):
    pytest.importorskip("mediapipe")
    from mlanet.cli import main as mlanet_main
    from mlanet.data.labels import LabelCache
    from mlanet.morphable.model import MorphableModel

    teacher = shared / "models" / "3ddfa_v2_mb05"
    w300 = shared / "data" / "train" / "300w"
    if not (teacher.is_dir() and w300.is_dir()):
        pytest.skip("the 300-W training folder or the teacher folder is missing")
    root = tmp_path / "labels"
    assert mlanet_main(["data", "label", "--cache", str(root), "--limit", "4", "--teacher", str(teacher),
                        "--no-progress", "--source", f"300w={w300}"]) == 0
    model = MorphableModel(ict_data)
    from mlanet.data.fits import fit_box_for, specs_for_rows

    t = LabelCache(root).load("300w")
    rows = np.arange(4)
    boxes = [fit_box_for("300w", t.arrays, int(r))[0] for r in rows]
    out = robust_fit(model, specs_for_rows("300w", t.arrays, rows, boxes, FAST), FAST)
    assert np.all(out.residual_px < 6.0)
    assert np.all(out.set_residual_px["mediapipe"] < 8.0)


def test_fits_follow_the_face_models_geometry_not_its_albedo(tmp_path, synthetic_data):
    """A new albedo keeps the fits; a changed shape basis refits; shards keyed only by the whole decoder
    (format 1 before geometry keys) still match that very face model; the store takes matching fits only."""
    import dataclasses

    from mlanet.data.labels.cache import LabelCache
    from mlanet.morphable.model import MorphableModel

    base = MorphableModel(synthetic_data)
    new_albedo = MorphableModel(dataclasses.replace(synthetic_data, albedo_mean=np.clip(synthetic_data.albedo_mean * 0.8, 0, 1)))
    moved = MorphableModel(dataclasses.replace(synthetic_data, mean_shape=synthetic_data.mean_shape * 1.01))
    kb, ka, km = (fit_model_keys(m) for m in (base, new_albedo, moved))
    assert kb["geometry_sha256"] == ka["geometry_sha256"] and kb["decoder_sha256"] != ka["decoder_sha256"]
    assert kb["geometry_sha256"] != km["geometry_sha256"]

    lc = LabelCache(tmp_path / "labels")
    lc.write_shard("fake68", _label_table(4), {"labeller_id": "L1"})
    lc.write_manifest("fake68", {})
    table = lc.load("fake68")
    cache = FitCache(tmp_path / "fits")
    st = fit_source(table, base, cache, FAST, progress=False, fitter=FakeFitter())
    assert st.fitted == 4
    st = fit_source(table, new_albedo, cache, FAST, progress=False, fitter=FakeFitter())
    assert (st.fitted, st.hits) == (0, 4)  # the albedo does not enter a landmark fit
    st = fit_source(table, moved, cache, FAST, progress=False, fitter=FakeFitter())
    assert (st.fitted, st.hits) == (4, 0)
    assert len(cache.load("fake68", model_keys=kb)) == 4 and len(cache.load("fake68", model_keys=km)) == 4
    assert len(cache.load("fake68")) == 8
    extras = LabelFitExtras(tmp_path / "labels", tmp_path / "fits", face_model=moved)
    assert len(extras._fit_table("fake68")) == 4
    assert extras.details == {"fits_geometry_sha256": km["geometry_sha256"]}

    # a legacy shard (decoder_sha256 only) matches the face model whose whole decoder it names
    legacy = FitCache(tmp_path / "legacy")
    for path in cache.shard_paths("fake68"):
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        if meta["geometry_sha256"] != kb["geometry_sha256"]:
            continue
        meta.pop("geometry_sha256")
        meta = {k: v for k, v in meta.items() if k not in ("format", "version", "source")}
        legacy.write_shard("fake68", {k: z[k] for k in z.files if k != "meta"}, meta)
    assert len(legacy.load("fake68", model_keys=kb)) == 4
    assert len(legacy.load("fake68", model_keys=ka)) == 0  # another whole decoder: unknown geometry, refit
