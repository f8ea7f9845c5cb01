"""Mirror averaging (mlanet.edge.mirror_average): one batch of the crops and their mirror images, the expression
weights averaged with the mirror's permuted back, everything else from the crop's own pass."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from mlanet.edge.loading import add_model_arguments, open_model
from mlanet.edge.mirror_average import MirrorAveragedBackend
from mlanet.errors import MLANetError
from mlanet.model_metadata import ModelMetadata
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.mirror import expression_mirror_permutation, mirrors_expressions
from mlanet.morphable.model import MorphableModel
from mlanet.preprocess import PreprocessCfg

S = 16


@pytest.fixture()
def sided_model(synthetic_data) -> MorphableModel:
    """The synthetic face model with a left/right pair and a symmetric shape among its expression names."""
    names = list(synthetic_data.header["expression_names"])
    names[0], names[1], names[2] = "eyeBlink_L", "eyeBlink_R", "jawOpen"
    return MorphableModel(FaceModelData(**{**synthetic_data.__dict__,
                                           "header": {**synthetic_data.header, "expression_names": names}}))


class _Lopsided:
    """A fake network that is not mirror-consistent: every parameter is a different weighted sum of the pixels,
    with weights that are not left-right symmetric. Records the batches it was called with."""

    def __init__(self, face_model: MorphableModel) -> None:
        P = face_model.layout.total
        self.w = np.random.default_rng(0).uniform(0, 1, (P, 3 * S * S)).astype(np.float32) / (3 * S * S)
        self.metadata = ModelMetadata(model_name="fake", model_config={}, layout=face_model.layout,
                                      preprocess=PreprocessCfg(input_size=S), face_model=face_model.describe())
        self.calls: list[tuple[int, ...]] = []
        self.closed = self.warmed = False

    def __call__(self, images) -> np.ndarray:
        arr = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        self.calls.append(arr.shape)
        return (arr.reshape(len(arr), -1) @ self.w.T).astype(np.float32)

    def warmup(self) -> None:
        self.warmed = True

    def close(self) -> None:
        self.closed = True


def test_the_mirror_permutation_trades_sides_and_keeps_symmetric_shapes() -> None:
    perm = expression_mirror_permutation(["jawOpen", "eyeBlink_L", "eyeBlink_R", "browDownLeft", "browDownRight", "x_L"])
    assert perm.tolist() == [0, 2, 1, 4, 3, 5]  # x_L has no x_R: itself


def test_expressions_are_averaged_with_the_mirror_and_the_rest_is_the_plain_pass(sided_model) -> None:
    inner = _Lopsided(sided_model)
    backend = MirrorAveragedBackend(inner, sided_model)
    images = np.random.default_rng(1).uniform(0, 1, (3, 3, S, S)).astype(np.float32)
    out = backend(images)
    assert inner.calls == [(6, 3, S, S)]  # one batch: the crops, then their mirrors
    plain, mirror = inner(images), inner(images[..., ::-1].copy())
    ex = sided_model.layout.slices()["expression"]
    perm = expression_mirror_permutation(sided_model.expression_names)
    expected = plain.copy()
    expected[:, ex] = 0.5 * (plain[:, ex] + mirror[:, ex][:, perm])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    rest = np.ones(sided_model.layout.total, bool)
    rest[ex] = False
    np.testing.assert_array_equal(out[:, rest], plain[:, rest])
    assert not np.allclose(out[:, ex], plain[:, ex])  # the fake network is lopsided, so averaging changed them
    # mirror-consistent by construction: the mirrored crops give the mirrored weights
    flipped = backend(images[..., ::-1].copy())
    np.testing.assert_allclose(flipped[:, ex][:, perm], out[:, ex], rtol=1e-5, atol=1e-6)
    assert out[:, ex][:, 2].tolist() == pytest.approx(flipped[:, ex][:, 2].tolist(), rel=1e-5)  # jawOpen alike
    assert backend.metadata.runtime["mirror_average"] is True and "mirror_average" not in inner.metadata.runtime
    t = backend(torch.from_numpy(images))  # torch input stays torch until the inner backend
    np.testing.assert_allclose(t, out, rtol=1e-6, atol=1e-7)
    inner.calls.clear()
    backend.warmup()
    assert inner.warmed and inner.calls == [(2, 3, S, S)]  # the batch of two it runs per face, warmed too
    backend.close()
    assert inner.closed


def test_pca_expressions_are_refused(synthetic_data) -> None:
    pca = MorphableModel(FaceModelData(**{**synthetic_data.__dict__,
                                          "header": {**synthetic_data.header, "expression_kind": "pca"}}))
    assert not mirrors_expressions(pca)
    with pytest.raises(MLANetError, match="PCA"):
        MirrorAveragedBackend(_Lopsided(pca), pca)


def test_the_cli_flag_wraps_the_backend(synthetic_data, tmp_path) -> None:
    path = synthetic_data.save(tmp_path / "fm.mlface.npz")
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    plain, _ = open_model(p.parse_args(["--untrained", "mlanet_mobile", "--face-model", str(path)]))
    wrapped, face_model = open_model(p.parse_args(["--untrained", "mlanet_mobile", "--face-model", str(path),
                                                   "--mirror-average"]))
    assert not isinstance(plain, MirrorAveragedBackend) and isinstance(wrapped, MirrorAveragedBackend)
    S_ = wrapped.metadata.preprocess.input_size
    out = wrapped(np.zeros((2, 3, S_, S_), np.float32))
    assert out.shape == (2, face_model.layout.total) and np.isfinite(out).all()
    plain.close()
    wrapped.close()
