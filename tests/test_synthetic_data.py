"""Synthetic face generator: determinism, schema, exact labels, image content, parameter ranges."""

from __future__ import annotations

import math

import pytest
import torch

from mlanet.data.landmarks import SAMPLE_KEYS
from mlanet.data.synthetic import SyntheticCfg, SyntheticFaces, hole_loops
from mlanet.morphable.model import MorphableModel
from mlanet.params import UNIT_AMBIENT_SH_DC, FaceParams
from mlanet.preprocess import PreprocessCfg
from mlanet.render.renderer import render_face

S = 64
PRE = PreprocessCfg(input_size=S)
CLEAN = SyntheticCfg(noise_std_max=0.0, blur_prob=0.0, occluder_prob=0.0)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].nan_to_num(), b[k].nan_to_num()) for k in a)


def test_schema(synthetic_model: MorphableModel) -> None:
    ds = SyntheticFaces(synthetic_model, PRE, length=10, seed=0)
    assert len(ds) == 10
    s = ds[3]
    assert set(s) == set(SAMPLE_KEYS) | {"skin_mask"}
    P = synthetic_model.layout.total
    expected = {
        "image": ((3, S, S), torch.float32),
        "params": ((P,), torch.float32),
        "has_params": ((), torch.bool),
        "landmarks": ((68, 2), torch.float32),
        "landmarks_valid": ((68,), torch.bool),
        "mp468": ((468, 2), torch.float32),
        "has_mp468": ((), torch.bool),
        "box": ((3,), torch.float64),
        "index": ((), torch.int64),
        "skin_mask": ((S, S), torch.float32),
    }
    for key, (shape, dtype) in expected.items():
        assert tuple(s[key].shape) == shape and s[key].dtype == dtype, key
        assert s[key].device.type == "cpu"
    assert bool(s["has_params"]) and bool(s["landmarks_valid"].all()) and int(s["index"]) == 3
    assert not bool(s["has_mp468"]) and torch.isnan(s["mp468"]).all()  # the synthetic model has no MediaPipe map
    assert s["box"].tolist() == [0.0, 0.0, float(S)]
    assert 0.0 <= float(s["image"].min()) and float(s["image"].max()) <= 1.0
    assert 0.0 <= float(s["skin_mask"].min()) and float(s["skin_mask"].max()) <= 1.0


def test_training_collate_accepts_samples(synthetic_model: MorphableModel) -> None:
    from mlanet.train.sampling import make_collate

    ds = SyntheticFaces(synthetic_model, PRE, length=4)
    batch = make_collate(synthetic_model.layout.total)([{**ds[i], "source": torch.tensor(0)} for i in range(3)])
    assert batch["image"].shape == (3, 3, S, S) and batch["params"].shape == (3, synthetic_model.layout.total)


def test_deterministic_by_seed_and_index(synthetic_model: MorphableModel) -> None:
    a = SyntheticFaces(synthetic_model, PRE, length=100, seed=7)
    b = SyntheticFaces(synthetic_model, PRE, length=100, seed=7)
    c = SyntheticFaces(synthetic_model, PRE, length=100, seed=8)
    assert same(a[5], a[5]) and same(a[5], b[5])
    assert not torch.equal(a[5]["image"], a[6]["image"]) and not torch.equal(a[5]["params"], a[6]["params"])
    assert not torch.equal(a[5]["params"], c[5]["params"])
    assert same(a[-1], a[99])
    with pytest.raises(IndexError):
        a[100]
    with pytest.raises(TypeError):
        a[1.5]  # type: ignore[index]


def test_render_batch_is_bit_identical_to_single_samples(synthetic_model: MorphableModel) -> None:
    ds = SyntheticFaces(synthetic_model, PRE, length=50, seed=1)
    batch = ds.render_batch([4, 17, 9])
    for row, i in enumerate((4, 17, 9)):
        assert same({k: v[row] for k, v in batch.items()}, ds[i])
    gen = ds.generate(3, start=4)
    assert torch.equal(gen["index"], torch.tensor([4, 5, 6])) and torch.equal(gen["image"][0], batch["image"][0])
    with pytest.raises(ValueError):
        ds.render_batch([])


def test_labels_are_exact(synthetic_model: MorphableModel) -> None:
    m = synthetic_model
    ds = SyntheticFaces(m, PRE, cfg=CLEAN, length=20, seed=2)
    cam = PRE.camera()
    for i in range(4):
        s = ds[i]
        params = FaceParams.from_flat(s["params"][None], m.layout)
        verts = m(params)
        assert torch.allclose(cam.project(m.landmarks(verts))[0], s["landmarks"], atol=1e-4)
        # with noise, blur and occluders off, the face pixels are the rendered shaded albedo
        ref = render_face(m, params, cam, S, S)
        face = ref.mask[0].bool() & (s["skin_mask"] > 0.999)
        assert face.sum() > 100
        expected = ref.image[0].clamp(0, 1)[face]
        assert torch.allclose(s["image"].permute(1, 2, 0)[face], expected, atol=1e-5)
        # the skin mask lies inside the rendered face
        assert (s["skin_mask"][~ref.mask[0].bool()] == 0).all()


def test_image_content_face_differs_from_background(synthetic_model: MorphableModel) -> None:
    m = synthetic_model
    ds = SyntheticFaces(m, PRE, length=40, seed=3)
    batch = ds.generate(16)
    img = batch["image"]
    assert (img.std(dim=(1, 2, 3)) > 0.03).all()  # not empty or flat
    assert ((batch["skin_mask"] > 0.5).float().mean(dim=(1, 2)) > 0.05).all()  # a face in every sample
    ref = render_face(m, FaceParams.from_flat(batch["params"], m.layout), PRE.camera(16), S, S)
    differs = 0
    for k in range(16):
        face = img[k][:, batch["skin_mask"][k] > 0.5].mean(dim=1)
        background = img[k][:, ~ref.mask[k].bool()].mean(dim=1)
        differs += int((face - background).abs().max() > 0.05)
    assert differs >= 12
    # backgrounds differ between samples
    corner = img[:, :, :6, :6].mean(dim=(2, 3))  # (16, 3)
    assert corner.std(dim=0).max() > 0.1


def test_occluders_appear_and_stay_small(synthetic_model: MorphableModel) -> None:
    m = synthetic_model
    sharp = {"blur_prob": 0.0}  # blur would spread the occluder's edge (the random draws stay the same)
    always = SyntheticFaces(m, PRE, cfg=SyntheticCfg(occluder_prob=1.0, **sharp), length=50, seed=4).generate(12)
    never = SyntheticFaces(m, PRE, cfg=SyntheticCfg(occluder_prob=0.0, **sharp), length=50, seed=4).generate(12)
    default = SyntheticFaces(m, PRE, cfg=SyntheticCfg(**sharp), length=50, seed=4).generate(12)
    assert torch.equal(always["params"], never["params"])  # only the occluder changed
    changed = (always["image"] != never["image"]).any(dim=1)  # (12, S, S)
    lm = always["landmarks"]
    box_area = (lm.amax(1) - lm.amin(1)).prod(-1)
    frac = changed.float().sum(dim=(1, 2)) / box_area  # at most occluder_max_area = 0.2, plus edge pixels
    assert (frac > 0.005).all() and (frac < 0.2 * 1.1).all(), frac
    assert (always["skin_mask"] <= never["skin_mask"]).all()
    assert (always["skin_mask"].sum(dim=(1, 2)) < never["skin_mask"].sum(dim=(1, 2))).sum() >= 8
    n_default = int((default["image"] != never["image"]).any(dim=1).flatten(1).any(1).sum())
    assert 1 <= n_default <= 9  # occluder_prob = 0.3 over 12 samples


def test_parameter_ranges(synthetic_model: MorphableModel) -> None:
    m = synthetic_model
    cfg = SyntheticCfg()
    ds = SyntheticFaces(m, PRE, cfg=cfg, length=100, seed=5)
    batch = ds.generate(32)
    p = FaceParams.from_flat(batch["params"], m.layout)
    deg = p.rotation.abs().amax(0) * 180 / math.pi  # pitch, yaw, roll
    assert (deg <= torch.tensor([cfg.pitch_deg, cfg.yaw_deg, cfg.roll_deg]) + 1e-3).all()
    assert deg[1] > 40  # yaw really varies
    assert (p.expression >= 0).all() and (p.expression <= cfg.expression_max).all()
    assert (p.expression == 0).float().mean() > 0.6  # sparse
    assert p.identity.std() == pytest.approx(cfg.identity_std, rel=0.3)
    dc = p.lighting[:, :, 0] / UNIT_AMBIENT_SH_DC  # ambient irradiance per channel (+ directional part)
    assert (dc > 0.3).all() and (dc < 1.6).all()
    # framing: the landmark box is S / roi_scale * (1 +- scale_jitter), centred within shift_jitter * S
    lm = batch["landmarks"]
    lo, hi = lm.amin(1), lm.amax(1)
    size = (hi - lo).amax(-1) / (S / PRE.roi_scale)
    assert (size > 1 - cfg.scale_jitter - 0.01).all() and (size < 1 + cfg.scale_jitter + 0.01).all()
    offset = ((lo + hi) / 2 - S / 2).abs() / S
    assert (offset <= cfg.shift_jitter + 0.005).all()
    assert (p.translation[:, 2] > 0.5).all() and (p.translation[:, 2] < 2.0).all()


def test_config_validation(synthetic_model: MorphableModel) -> None:
    with pytest.raises(ValueError, match="yaw_deg"):
        SyntheticCfg(yaw_deg=120.0)
    with pytest.raises(ValueError, match="occluder_prob"):
        SyntheticCfg(occluder_prob=1.5)
    with pytest.raises(ValueError, match="ambient_range"):
        SyntheticCfg(ambient_range=(1.0, 0.5))
    with pytest.raises(ValueError, match="length"):
        SyntheticFaces(synthetic_model, PRE, length=-1)
    with pytest.raises(TypeError):
        SyntheticFaces(synthetic_model, PRE, cfg={"yaw_deg": 10})  # type: ignore[arg-type]


def test_hole_loops_find_eye_and_mouth_openings() -> None:
    import numpy as np

    # 6 x 6 vertex grid (y down) with two 1-quad holes; CCW-front in a y-up view as the models
    n = 6
    idx = np.arange(n * n).reshape(n, n)
    quads = [(idx[r, c], idx[r + 1, c], idx[r + 1, c + 1], idx[r, c + 1]) for r in range(n - 1) for c in range(n - 1)]
    holes = {(1, 1), (3, 3)}
    tris = [t for (r, c), (a, d, cc, b) in zip([(r, c) for r in range(n - 1) for c in range(n - 1)], quads)
            if (r, c) not in holes for t in ((a, d, cc), (a, cc, b))]
    labels = np.zeros(n * n, dtype=np.int64)  # skin
    labels[[idx[1, 1], idx[1, 2], idx[2, 1], idx[2, 2]]] = 3  # eyes
    labels[[idx[3, 3], idx[3, 4], idx[4, 3], idx[4, 4]]] = 4  # lips
    names = ["skin", "nose", "brows", "eyes", "lips", "neck_head"]
    loops = hole_loops(np.array(tris), labels, names)
    assert sorted(k for k, _ in loops) == ["eye", "mouth"]  # the outer boundary (skin) is not a hole
    tri_edges = {(int(t[k]), int(t[(k + 1) % 3])) for t in tris for k in range(3)}
    for _, loop in loops:
        assert len(loop) == 4
        # the loop follows the mesh's own boundary edges, so a cap traversing it backwards matches
        assert all((int(loop[k]), int(loop[(k + 1) % 4])) in tri_edges for k in range(4))


def test_models_without_holes_get_no_caps(synthetic_model: MorphableModel) -> None:
    ds = SyntheticFaces(synthetic_model, PRE, length=1)
    assert ds.holes == []


@pytest.mark.assets
def test_ict_model(ict_data) -> None:
    m = MorphableModel(ict_data)
    pre = PreprocessCfg(input_size=96)
    ds = SyntheticFaces(m, pre, length=10, seed=0)
    assert sorted(kind for kind, _ in ds.holes) == ["eye", "eye", "mouth"]  # ICT's eye and mouth openings are capped
    batch = ds.generate(3)
    s = ds[1]
    assert same({k: v[1] for k, v in batch.items()}, s)
    assert m.has_mediapipe and bool(s["has_mp468"]) and torch.isfinite(s["mp468"]).all()
    verts = m(FaceParams.from_flat(s["params"][None], m.layout))
    cam = pre.camera()
    assert torch.allclose(cam.project(m.landmarks(verts))[0], s["landmarks"], atol=1e-3)
    assert torch.allclose(cam.project(m.mediapipe_points(verts))[0], s["mp468"], atol=1e-3)
    assert (batch["skin_mask"].flatten(1).mean(1) > 0.1).all()
    centre = batch["skin_mask"][:, 40:56, 40:56].mean(dim=(1, 2))
    assert (centre > 0.3).all()  # the face covers the crop centre
