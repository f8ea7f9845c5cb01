"""Deterministic, resumable mixture sampling and schema collation."""

import torch

from mlanet.train.sampling import MixtureBatchSampler, MixtureDataset, make_collate


def test_batches_are_a_function_of_the_step():
    a = MixtureBatchSampler([100, 10], [1.0, 1.0], 8, 20, seed=3)
    b = MixtureBatchSampler([100, 10], [1.0, 1.0], 8, 20, seed=3, start_step=12)
    assert list(a)[12:] == list(b)
    assert a.batch(5) != MixtureBatchSampler([100, 10], [1.0, 1.0], 8, 20, seed=3, rank=1).batch(5)
    assert len(b) == 8


def test_weights_steer_the_mixture():
    s = MixtureBatchSampler([100, 100], [3.0, 1.0], 64, 50, seed=0)
    srcs = torch.tensor([k[0] for batch in s for k in batch]).float()
    assert 0.2 < srcs.mean() < 0.3  # about a quarter from source 1
    s = MixtureBatchSampler([100, 0], [1.0, 1.0], 16, 5, seed=0)  # an empty source is never drawn
    assert all(k[0] == 0 for batch in s for k in batch)


def _sample(has_params, P=5):
    return {"image": torch.zeros(3, 4, 4), "landmarks": torch.zeros(68, 2), "landmarks_valid": torch.ones(68, dtype=torch.bool),
            "params": torch.ones(P) if has_params else torch.zeros(0), "has_params": torch.tensor(has_params),
            "mp468": torch.full((468, 2), float("nan")), "has_mp468": torch.tensor(False), "box": torch.zeros(3, dtype=torch.float64),
            "index": torch.tensor(0), "source": torch.tensor(0), "extra_key_ignored": "x"}


def test_collate_fills_missing_params_with_nan():
    batch = make_collate(5)([_sample(True), _sample(False)])
    assert batch["params"].shape == (2, 5)
    assert torch.isnan(batch["params"][1]).all() and not torch.isnan(batch["params"][0]).any()
    assert "extra_key_ignored" not in batch


def test_mixture_dataset_applies_augmentation_deterministically():
    class Src(torch.utils.data.Dataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return {"value": torch.tensor(float(i))}

    def aug(sample, g):
        return {"value": sample["value"] + torch.rand(1, generator=g)}

    ds = MixtureDataset([Src(), Src()], [None, aug])
    assert float(ds[(0, 2, 9)]["value"]) == 2.0
    assert float(ds[(1, 2, 9)]["value"]) == float(ds[(1, 2, 9)]["value"]) != 2.0


def test_item_weights_steer_the_draws_within_a_source_and_resume_exactly():
    import numpy as np

    w = np.zeros(50)
    w[:5] = 1.0  # only the first five items may be drawn
    s = MixtureBatchSampler([50, 10], [1.0, 1.0], 16, 30, seed=2, item_weights=[w, None])
    keys = [k for batch in s for k in batch]
    assert {i for src, i, _ in keys if src == 0} <= set(range(5))
    assert len({i for src, i, _ in keys if src == 1}) > 5  # the other source stays uniform
    resumed = MixtureBatchSampler([50, 10], [1.0, 1.0], 16, 30, seed=2, start_step=20, item_weights=[w, None])
    assert list(s)[20:] == list(resumed)
    import pytest

    with pytest.raises(ValueError, match="item_weights"):
        MixtureBatchSampler([50], [1.0], 4, 2, seed=0, item_weights=[np.ones(49)])
    with pytest.raises(ValueError, match="item_weights"):
        MixtureBatchSampler([50], [1.0], 4, 2, seed=0, item_weights=[np.full(50, -1.0)])


def test_yaw_balanced_weights_even_out_the_bins():
    import numpy as np
    import pytest

    from mlanet.train.sampling import yaw_balanced_weights

    yaw = np.array([5.0] * 70 + [45.0] * 20 + [80.0] * 10 + [np.nan] * 20)
    bins = np.digitize(yaw, (30.0, 60.0), right=True)
    known = np.isfinite(yaw)

    def shares(strength):
        w = yaw_balanced_weights(yaw, strength)
        return [w[known & (bins == k)].sum() / w[known].sum() for k in range(3)], w

    (uniform, w0) = shares(0.0)
    assert np.allclose(w0, 1.0) and np.allclose(uniform, [0.7, 0.2, 0.1])
    equal, w1 = shares(1.0)
    assert np.allclose(equal, [1 / 3] * 3)
    half, _ = shares(0.5)
    assert 0.7 > half[0] > 1 / 3 and 0.1 < half[2] < 1 / 3
    # items of unknown yaw keep their share of the draws (weight = the mean)
    assert np.isclose(w1[~known].sum() / w1.sum(), 20 / 120)
    assert np.isclose(w1.mean(), 1.0)
    with pytest.raises(ValueError, match="strength"):
        yaw_balanced_weights(yaw, 1.5)


def test_eye_closure_balanced_weights_draw_closed_eyes_as_often_as_open_ones():
    import numpy as np
    import pytest

    from mlanet.train.sampling import EYE_CLOSURE_EDGES, eye_closure_balanced_weights

    blink = np.array([0.05] * 90 + [0.4] * 8 + [0.9] * 2 + [np.nan] * 10)  # video frames: blinks are rare
    known = np.isfinite(blink)
    bins = np.digitize(blink, EYE_CLOSURE_EDGES, right=True)
    w = eye_closure_balanced_weights(blink, 1.0)
    shares = [w[known & (bins == k)].sum() / w[known].sum() for k in range(3)]
    assert np.allclose(shares, [1 / 3] * 3)  # the two closed-eye frames are drawn a third of the time
    assert np.isclose(w[~known].sum() / w.sum(), 10 / 110) and np.isclose(w.mean(), 1.0)
    assert np.allclose(eye_closure_balanced_weights(blink, 0.0), 1.0)
    with pytest.raises(ValueError, match="strength"):
        eye_closure_balanced_weights(blink, -0.1)
