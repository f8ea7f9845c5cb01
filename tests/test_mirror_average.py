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
from mlanet.morphable.mirror import expression_mirror_permutation, mirror_average, mirrors_expressions
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
    sl = sided_model.layout.slices()
    ex, rot, tr = sl["expression"], sl["rotation"], sl["translation"]
    perm = expression_mirror_permutation(sided_model.expression_names)
    expected = plain.copy()  # written out here, independently of mlanet.morphable.mirror.mirror_average
    expected[:, ex] = 0.5 * (plain[:, ex] + mirror[:, ex][:, perm])
    expected[:, rot] = 0.5 * (plain[:, rot] + mirror[:, rot] * np.array([1.0, -1.0, -1.0]))  # pitch, yaw, roll
    expected[:, tr] = 0.5 * (plain[:, tr] + mirror[:, tr] * np.array([-1.0, 1.0, 1.0]))  # tx, ty, tz
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    rest = np.ones(sided_model.layout.total, bool)
    rest[ex] = rest[rot] = rest[tr] = False
    np.testing.assert_array_equal(out[:, rest], plain[:, rest])  # identity, albedo, light: the plain pass
    assert not np.allclose(out[:, ex], plain[:, ex])  # the fake network is lopsided, so averaging changed them
    # mirror-consistent by construction: the mirrored crops give the mirrored weights and pose
    flipped = backend(images[..., ::-1].copy())
    np.testing.assert_allclose(flipped[:, ex][:, perm], out[:, ex], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flipped[:, rot] * np.array([1.0, -1.0, -1.0]), out[:, rot], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flipped[:, tr] * np.array([-1.0, 1.0, 1.0]), out[:, tr], rtol=1e-5, atol=1e-6)
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


def test_numpy_and_torch_give_the_same_average_and_the_eval_wrapper_matches_the_runtime(sided_model) -> None:
    from mlanet.eval.predict import MirrorAveragedNetwork

    inner = _Lopsided(sided_model)
    rng = np.random.default_rng(2)
    a, b = (rng.normal(size=(4, sided_model.layout.total)).astype(np.float32) for _ in range(2))
    perm = expression_mirror_permutation(sided_model.expression_names)
    n = mirror_average(a, b, sided_model.layout, perm)
    t = mirror_average(torch.from_numpy(a), torch.from_numpy(b), sided_model.layout, torch.as_tensor(perm))
    np.testing.assert_allclose(t.numpy(), n, rtol=1e-6)
    assert not np.shares_memory(n, a)  # the inputs are not modified

    class Net(torch.nn.Module):  # the fake network as a module, for the 2D benchmarks' wrapper
        preprocess, layout, name = PreprocessCfg(input_size=S), sided_model.layout, "fake"

        def forward(self, x):
            return torch.from_numpy(inner(x))

    images = rng.uniform(0, 1, (3, 3, S, S)).astype(np.float32)
    wrapped = MirrorAveragedNetwork(Net(), sided_model)
    assert wrapped.preprocess.input_size == S and wrapped.layout == sided_model.layout
    assert wrapped.describe()["mirror_average"] is True
    np.testing.assert_allclose(wrapped(torch.from_numpy(images)).numpy(),
                               MirrorAveragedBackend(inner, sided_model)(images), rtol=1e-6, atol=1e-7)


@pytest.mark.assets
def test_the_pose_signs_mirror_a_symmetric_face(ict_model_file) -> None:
    """The sign vectors are the geometry: the ICT mean face posed with (pitch, yaw, roll, t) and drawn by the crop
    camera, mirrored in x about the crop centre, is the same face posed with (pitch, -yaw, -roll) and (-tx, ty, tz)
    (its 68 points with left and right traded)."""
    from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION
    from mlanet.geometry.rotations import euler_to_matrix
    from mlanet.params import FaceParams

    fm = MorphableModel.load(ict_model_file)
    pre = PreprocessCfg(input_size=96)
    cam = pre.camera(1)
    flat = torch.zeros(1, fm.layout.total)
    sl = fm.layout.slices()
    flat[0, sl["rotation"]] = torch.tensor([0.15, 0.4, -0.1])
    flat[0, sl["translation"]] = torch.tensor([0.01, -0.005, 0.9])
    mirrored = flat.clone()
    mirrored[0, sl["rotation"]] *= torch.tensor([1.0, -1.0, -1.0])
    mirrored[0, sl["translation"]] *= torch.tensor([-1.0, 1.0, 1.0])

    def points(f):
        params = FaceParams.from_flat(f, fm.layout)
        verts = fm(params)
        return cam.project(fm.landmark_points(verts, "ict68", camera=cam,
                                              rotation=euler_to_matrix(params.rotation)))[0].numpy()

    a, b = points(flat), points(mirrored)
    b_back = b[list(IBUG68_FLIP_PERMUTATION)].copy()
    b_back[:, 0] = 96 - b_back[:, 0]
    err = np.linalg.norm(a - b_back, axis=1)
    assert np.median(err) < 0.5 and err.max() < 1.5, err  # pixels of a 96 px crop (the mean face is near-symmetric)
    wrong = b[list(IBUG68_FLIP_PERMUTATION)].copy()  # without the mirror in x the points land far away
    assert np.median(np.linalg.norm(a - wrong, axis=1)) > 5
