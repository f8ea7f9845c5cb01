"""MorphableModel on the synthetic face: shapes, known values, gradients, dtype/device moves."""

import pytest
import torch

from mlanet.params import FaceParams
from mlanet.morphable.model import MorphableModel


def test_zero_params_give_mean_shape(synthetic_model):
    m = synthetic_model
    verts = m(FaceParams.zeros(m.layout, batch_size=2))
    assert verts.shape == (2, m.n_vertices, 3)
    assert torch.allclose(verts[0], m.mean_shape)


def test_translation_and_rotation(synthetic_model):
    m = synthetic_model
    p = FaceParams.zeros(m.layout)
    p.translation[:] = torch.tensor([0.1, -0.2, 0.6])
    assert torch.allclose(m(p)[0], m.mean_shape + torch.tensor([0.1, -0.2, 0.6]), atol=1e-6)
    p = FaceParams.zeros(m.layout)
    p.rotation[0, 1] = torch.pi / 2  # yaw +90 deg: model +z -> camera +x
    v = m(p)[0]
    assert torch.allclose(v[:, 0], m.mean_shape[:, 2], atol=1e-6)


def test_identity_and_expression_are_linear(synthetic_model):
    m = synthetic_model
    ident = torch.randn(3, m.n_identity)
    expr = torch.rand(3, m.n_expression)
    full = m.shape(ident, expr)
    only_id = m.shape(ident, torch.zeros_like(expr))
    only_ex = m.shape(torch.zeros_like(ident), expr)
    assert torch.allclose(full + m.mean_shape, only_id + only_ex, atol=1e-6)


def test_flat_input_and_bad_shapes(synthetic_model):
    m = synthetic_model
    flat = torch.zeros(1, m.layout.total)
    assert m(flat).shape == (1, m.n_vertices, 3)
    with pytest.raises(ValueError, match="flat parameters must have shape"):
        m(torch.zeros(1, m.layout.total + 1))
    with pytest.raises(ValueError, match="identity must have shape"):
        m.shape(torch.zeros(1, m.n_identity + 1), torch.zeros(1, m.n_expression))


def test_landmarks_albedo_normals(synthetic_model):
    m = synthetic_model
    v = m(FaceParams.zeros(m.layout))
    lm = m.landmarks(v)
    assert lm.shape == (1, 68, 3)
    assert torch.equal(lm[0], m.mean_shape[m.landmark_index])
    alb = m.albedo(torch.zeros(1, m.n_albedo))
    assert torch.allclose(alb[0], m.albedo_mean)
    assert alb.min() >= 0 and alb.max() <= 1
    n = m.normals(v)
    assert torch.allclose(n.norm(dim=-1), torch.ones(1, m.n_vertices), atol=1e-5)
    assert (n[0, :, 2] < 0).float().mean() > 0.95  # the face looks at the camera (-z)


def test_neutral_lighting_renders_albedo(synthetic_model):
    m = synthetic_model
    p = FaceParams.neutral(m.layout)
    colors = m.vertex_colors(p)
    assert torch.allclose(colors, m.albedo(p.albedo), atol=1e-5)


def test_region_masks(synthetic_model):
    m = synthetic_model
    lips = m.region_mask("lips")
    assert lips[m.landmark_index[48:60]].all()
    assert m.region_mask("eyes")[m.landmark_index[36:48]].all()
    with pytest.raises(KeyError, match="unknown region"):
        m.region_mask("hair")


def test_gradients_float64():
    from mlanet.morphable.synthetic import make_synthetic_face_model

    m = MorphableModel(make_synthetic_face_model(n_identity=3, n_expression=2, grid=(13, 17))).double()
    assert m.shape_basis.dtype == torch.float64 and m.triangles.dtype == torch.long
    flat = (0.1 * torch.randn(1, m.layout.total, dtype=torch.float64)).requires_grad_()
    picked = m.landmark_index[[8, 30, 36, 48]]

    def f(x):
        p = FaceParams.from_flat(x, m.layout)
        v = m(p)
        return m.landmarks(v)[:, [8, 30, 36, 48]], m.vertex_colors(p, v)[:, picked]

    assert torch.autograd.gradcheck(f, (flat,), eps=1e-6, atol=1e-5)


def test_state_dict_round_trip(synthetic_data):
    a = MorphableModel(synthetic_data)
    b = MorphableModel(synthetic_data)
    b.load_state_dict(a.state_dict())
    assert "shape_basis" in a.state_dict()


def test_mediapipe_points_need_correspondence(synthetic_model):
    with pytest.raises(RuntimeError, match="--mediapipe"):
        synthetic_model.mediapipe_points(synthetic_model.mean_shape[None])


@pytest.mark.gpu
def test_runs_on_cuda(synthetic_data):
    m = MorphableModel(synthetic_data).cuda()
    p = FaceParams.neutral(m.layout, device="cuda")
    assert m(p).is_cuda and m.vertex_colors(p).is_cuda


def test_in_memory_model_has_the_checksum_its_file_would_have(synthetic_data, tmp_path):
    from mlanet.morphable.data import read_header

    in_memory = MorphableModel(synthetic_data)
    path = synthetic_data.save(tmp_path / "m.mlface.npz")
    assert in_memory.content_sha256 == read_header(path)["content_sha256"] == MorphableModel.load(path).content_sha256
