"""Augmentation: geometry keeps image content and points together, flips, determinism, policies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlanet.data.augment import Augment, AugmentCfg, AugmentDraw, transform_points, warp_image
from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION, SAMPLE_KEYS

S = 96
# A few well-separated landmarks that carry a dot each (index: (x, y) crop pixels).
DOTS = {0: (30.0, 30.0), 8: (48.0, 70.0), 16: (66.0, 30.0), 36: (37.3, 44.6), 45: (58.8, 44.1), 30: (47.6, 52.2)}



def _close(actual, expected, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    """numpy's assert_allclose on tensors (NaN equals NaN); avoids torch.testing's ~2 s first-call import."""
    np.testing.assert_allclose(torch.as_tensor(actual).double().numpy(), torch.as_tensor(expected).double().numpy(), atol=atol, rtol=rtol)


def _blob_image(points: dict[int, tuple[float, float]], sigma: float = 1.6) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64) + 0.5, torch.arange(S, dtype=torch.float64) + 0.5, indexing="ij")
    img = torch.zeros(S, S, dtype=torch.float64)
    for x, y in points.values():
        img += torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2))
    return img.clamp(max=1.0).float().expand(3, S, S).clone()


def _sample(points: dict[int, tuple[float, float]] | None = None, has_params: bool = False) -> dict:
    points = DOTS if points is None else points
    lm = torch.full((68, 2), float("nan"))
    for i, p in points.items():
        lm[i] = torch.tensor(p)
    mp = torch.rand(468, 2, generator=torch.Generator().manual_seed(5)) * S
    return {
        "image": _blob_image(points),
        "landmarks": lm,
        "landmarks_valid": torch.isfinite(lm).all(1),
        "params": torch.arange(7, dtype=torch.float32) if has_params else torch.full((7,), float("nan")),
        "has_params": torch.tensor(has_params),
        "mp468": mp,
        "has_mp468": torch.tensor(True),
        "box": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
        "index": torch.tensor(4),
    }


def _centroid_near(img: torch.Tensor, at: torch.Tensor, radius: float = 7.0) -> np.ndarray:
    grey = img.mean(0).double()
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float64) + 0.5, torch.arange(S, dtype=torch.float64) + 0.5, indexing="ij")
    window = ((xs - at[0]) ** 2 + (ys - at[1]) ** 2) <= radius**2
    w = grey * window
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def _draw(flip=False, scale=1.0, rot_deg=0.0, shift=(0.0, 0.0)) -> AugmentDraw:
    return AugmentDraw(flip, scale, math.radians(rot_deg), shift, 1.0, 1.0, 1.0, 0.0, 0.0, None, (0, 0, 0), S)


@pytest.mark.parametrize(
    "draw",
    [
        _draw(scale=1.13, rot_deg=17.0, shift=(3.5, -2.25)),
        _draw(scale=0.87, rot_deg=-23.0, shift=(-4.0, 1.5)),
        _draw(flip=True, scale=1.05, rot_deg=9.0, shift=(2.0, 2.0)),
        _draw(flip=True),
    ],
)
def test_dots_follow_the_landmarks(draw):
    sample = _sample()
    out = Augment(AugmentCfg.geometric_only()).apply(sample, draw)
    perm = IBUG68_FLIP_PERMUTATION if draw.flip else tuple(range(68))
    for i in DOTS:  # the dot that belonged to landmark perm[i] must be where landmark i now is
        new_i = perm.index(i)
        at = out["landmarks"][new_i]
        np.testing.assert_allclose(_centroid_near(out["image"], at), at.double().numpy(), atol=0.15)
    # the transform is the documented similarity about the crop centre
    m = draw.matrix
    p = np.array([10.0, 20.0])
    q = np.array([S - p[0], p[1]]) if draw.flip else p
    c = np.array([S / 2, S / 2])
    rot = np.array([[math.cos(draw.rotation), -math.sin(draw.rotation)], [math.sin(draw.rotation), math.cos(draw.rotation)]])
    np.testing.assert_allclose(m[:2, :2] @ p + m[:2, 2], c + np.array(draw.shift) + draw.scale * rot @ (q - c))


def test_dots_follow_within_half_a_pixel_for_random_draws():
    aug = Augment(AugmentCfg.geometric_only(shift=0.08, scale=(0.8, 1.2), rotation_deg=30.0, flip_prob=0.5))
    g = torch.Generator().manual_seed(123)
    worst = 0.0
    for _ in range(6):
        draw = aug.draw(S, g)
        out = aug.apply(_sample(), draw)
        for i in range(68):
            at = out["landmarks"][i]
            if torch.isfinite(at).all() and (at > 8).all() and (at < S - 8).all():
                worst = max(worst, float(np.abs(_centroid_near(out["image"], at) - at.double().numpy()).max()))
    assert worst < 0.15  # well inside the 0.5 px requirement; a half-pixel convention slip fails


def test_warp_identity_and_pixel_centre_convention():
    img = torch.rand(3, 20, 20, generator=torch.Generator().manual_seed(0))
    _close(warp_image(img, np.eye(3)), img, atol=1e-5, rtol=0)
    shift = np.array([[1.0, 0, 2.0], [0, 1.0, 3.0], [0, 0, 1.0]])  # content moves +2 px right, +3 px down
    out = warp_image(img, shift)
    _close(out[:, 3:, 2:], img[:, :-3, :-2], atol=1e-5, rtol=0)
    assert out[:, :3].abs().max() < 1e-5 and out[:, :, :2].abs().max() < 1e-5  # zeros outside
    pts = torch.tensor([[0.5, 0.5], [float("nan"), 1.0]])
    moved = transform_points(pts, shift)
    assert moved[0].tolist() == [2.5, 3.5] and torch.isnan(moved[1, 0])


def test_flip_twice_is_identity_and_matches_semantics():
    perm468 = np.arange(468).reshape(-1, 2)[:, ::-1].reshape(-1)  # some involution (pairs swapped)
    aug = Augment(AugmentCfg.geometric_only(), mp468_flip_permutation=perm468)
    s = _sample()
    once = aug.apply(s, _draw(flip=True))
    twice = aug.apply(once, _draw(flip=True))
    assert torch.equal(twice["image"], s["image"])
    _close(twice["landmarks"], s["landmarks"], atol=1e-5, rtol=0)
    _close(twice["mp468"], s["mp468"], atol=1e-4, rtol=0)
    assert torch.equal(twice["landmarks_valid"], s["landmarks_valid"])
    # subject's right eye outer corner (36) stays at smaller x than the left one (45) after a flip
    assert s["landmarks"][36, 0] < s["landmarks"][45, 0]
    assert once["landmarks"][36, 0] < once["landmarks"][45, 0]
    assert once["landmarks"][0, 0] < once["landmarks"][16, 0]
    _close(once["landmarks"][36, 0], S - s["landmarks"][45, 0])
    assert torch.equal(once["image"], torch.flip(s["image"], dims=[-1]))
    # x -> S - x for the points, with the mp468 permutation applied
    _close(once["mp468"][0], torch.stack([S - s["mp468"][1, 0], s["mp468"][1, 1]]))


def test_flip_without_mp468_map_drops_mp468():
    out = Augment(AugmentCfg.geometric_only()).apply(_sample(), _draw(flip=True))
    assert not out["has_mp468"] and torch.isnan(out["mp468"]).all()
    out = Augment(AugmentCfg.geometric_only()).apply(_sample(), _draw(rot_deg=5.0))
    assert out["has_mp468"] and torch.isfinite(out["mp468"]).all()


def test_determinism_and_keys():
    aug = Augment(AugmentCfg(blur_prob=0.5, occlusion_prob=0.5))
    s = _sample()
    a = aug(s, torch.Generator().manual_seed(7))
    b = aug(s, torch.Generator().manual_seed(7))
    c = aug(s, torch.Generator().manual_seed(8))
    assert set(a) == set(SAMPLE_KEYS)
    for k in a:
        assert torch.equal(torch.nan_to_num(a[k]), torch.nan_to_num(b[k])), k
        assert a[k].dtype == s[k].dtype and a[k].shape == s[k].shape, k
    assert not torch.equal(a["image"], c["image"])
    assert torch.equal(s["image"], _blob_image(DOTS))  # input untouched
    assert 0.0 <= float(a["image"].min()) and float(a["image"].max()) <= 1.0
    g = torch.Generator().manual_seed(1)
    aug.draw(S, g)
    after_one = g.get_state()
    g2 = torch.Generator().manual_seed(1)
    Augment(AugmentCfg(flip_prob=0.0, blur_prob=0.0)).draw(S, g2)
    assert torch.equal(g2.get_state(), after_one)  # the same number of draws whatever the config


def test_params_policies():
    draw = _draw(flip=True, scale=1.1, rot_deg=10.0)
    s = _sample(has_params=True)
    kept = Augment(AugmentCfg.geometric_only()).apply(s, draw)
    assert kept["has_params"] and torch.equal(kept["params"], s["params"])
    assert torch.equal(kept["image"], s["image"])
    _close(kept["landmarks"], s["landmarks"])
    dropped = Augment(AugmentCfg.geometric_only(params_policy="drop_params")).apply(s, draw)
    assert not dropped["has_params"] and torch.isnan(dropped["params"]).all()
    assert not torch.equal(dropped["image"], s["image"])
    photometric_only = Augment(AugmentCfg(params_policy="drop_params")).apply(s, _draw())
    assert photometric_only["has_params"]


def test_photometric_parts():
    s = _sample()
    s["image"] = torch.full((3, S, S), 0.5)
    s["image"][0] = 0.7
    occ = AugmentDraw(False, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 1.0, 0.0, 0.0, (10.0, 20.0, 30.0, 25.0), (0.1, 0.2, 0.3), S)
    out = Augment(AugmentCfg()).apply(s, occ)["image"]
    assert torch.allclose(out[:, 20:25, 10:30], torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1))
    assert torch.equal(out[:, 25:, :], s["image"][:, 25:, :]) and torch.equal(out[:, :, 30:], s["image"][:, :, 30:])
    grey_draw = AugmentDraw(False, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 0.0, 0.0, 0.0, None, (0, 0, 0), S)
    grey = Augment(AugmentCfg()).apply(s, grey_draw)["image"]
    assert torch.allclose(grey[0], grey[1]) and torch.allclose(grey[1], grey[2])
    hue = AugmentDraw(False, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 1.0, math.radians(120), 0.0, None, (0, 0, 0), S)
    rotated = Augment(AugmentCfg()).apply(s, hue)["image"]  # 120 degrees about grey cycles R -> G -> B
    _close(rotated[:, 0, 0], torch.tensor([0.5, 0.7, 0.5]), atol=1e-5, rtol=0)
    blur = AugmentDraw(False, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 1.0, 0.0, 1.2, None, (0, 0, 0), S)
    blurred = Augment(AugmentCfg()).apply(_sample(), blur)["image"]
    assert blurred.max() < _sample()["image"].max()
    _close(blurred.sum(), _sample()["image"].sum(), rtol=1e-3, atol=0)


def test_wide_rotation_draws_the_wider_range_at_its_rate():
    narrow = Augment(AugmentCfg(rotation_deg=15.0))
    wide = Augment(AugmentCfg(rotation_deg=15.0, wide_rotation_prob=0.25, wide_rotation_deg=180.0))
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = np.degrees([narrow.draw(S, g1).rotation for _ in range(800)])
    b = np.degrees([wide.draw(S, g2).rotation for _ in range(800)])
    assert np.abs(a).max() <= 15.0
    beyond = np.abs(b) > 15.0
    assert 0.15 < beyond.mean() < 0.3 and np.abs(b).max() > 150.0  # ~ 0.25 * 165 / 180 of the draws
    assert torch.equal(g1.get_state(), g2.get_state())  # the same number of draws either way


def test_cfg_validation():
    with pytest.raises(ValueError, match="wide_rotation_prob"):
        AugmentCfg(wide_rotation_prob=-0.1)
    with pytest.raises(ValueError, match="flip_prob"):
        AugmentCfg(flip_prob=1.5)
    with pytest.raises(ValueError, match="scale"):
        AugmentCfg(scale=(1.2, 1.1))
    with pytest.raises(ValueError, match="params_policy"):
        AugmentCfg(params_policy="keep")
    with pytest.raises(ValueError, match="square"):
        Augment()({"image": torch.zeros(3, 10, 12)}, torch.Generator())
    with pytest.raises(ValueError, match="involution"):
        Augment(mp468_flip_permutation=np.roll(np.arange(468), 1))


@pytest.mark.assets
def test_mediapipe_mirror_map_from_canonical_mesh(shared):
    from mlanet.data.mediapipe_labels import mediapipe468_flip_permutation

    perm = mediapipe468_flip_permutation(shared / "assets/mediapipe-canonical/canonical_face_model.obj")
    assert np.array_equal(perm[perm], np.arange(468))
    assert perm[33] == 263 and perm[133] == 362 and perm[61] == 291 and perm[4] == 4 and perm[0] == 0
    Augment(mp468_flip_permutation=perm)
