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
