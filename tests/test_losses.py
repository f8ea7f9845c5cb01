"""Loss terms: known values, masking, and the full objective on exact synthetic ground truth."""

import pytest
import torch

from mlanet.losses import terms
from mlanet.losses.objective import LossCfg, Objective
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams
from mlanet.preprocess import PreprocessCfg


def test_landmark_loss_known_value_and_mask():
    pred = torch.zeros(2, 68, 2)
    target = torch.zeros(2, 68, 2)
    target[0, :, 0] = 3.0  # 3 px off everywhere in sample 0
    target[1] = float("nan")  # sample 1 unknown
    valid = torch.zeros(2, 68, dtype=torch.bool)
    valid[0] = True
    assert float(terms.landmark_loss(pred, target, valid, input_size=100)) == pytest.approx(0.03)
    none = terms.landmark_loss(pred.requires_grad_(), target, torch.zeros_like(valid), 100)
    assert float(none.detach()) == 0.0 and none.requires_grad


def test_vertex_and_landmark3d_losses_in_millimetres(synthetic_model):
    m = synthetic_model
    a = FaceParams.neutral(m.layout, batch_size=2)
    b = a.replace(translation=a.translation + torch.tensor([0.0, 0.0, 0.004]))
    has = torch.tensor([True, False])
    assert float(terms.vertex_loss(m, a, a, has)) == 0.0
    assert float(terms.vertex_loss(m, a, b, has)) == pytest.approx(4.0, rel=1e-4)
    assert float(terms.landmark3d_loss(m, a, b, has)) == pytest.approx(4.0, rel=1e-4)
    assert float(terms.vertex_loss(m, a, b, torch.tensor([False, False]))) == 0.0


def test_photometric_loss_masks_and_scale():
    img = torch.rand(1, 8, 8, 3)
    other = img.clone()
    other[0, :4] += torch.tensor([0.3, 0.4, 0.0])  # distance 0.5 on the top half
    mask = torch.ones(1, 8, 8)
    assert float(terms.photometric_loss(other, img, mask)) == pytest.approx(0.25, abs=1e-3)
    mask[0, :4] = 0
    assert float(terms.photometric_loss(other, img, mask)) == pytest.approx(0.0, abs=1e-3)


def test_regulariser_and_lighting_prior(synthetic_model):
    p = FaceParams.neutral(synthetic_model.layout)
    assert float(terms.coefficient_regulariser(p, 1, 1, 1)) == 0.0
    assert float(terms.lighting_prior(p)) == 0.0  # white light
    coloured = p.lighting.clone()
    coloured[0, 0, 0] += 0.3
    assert float(terms.lighting_prior(p.replace(lighting=coloured))) > 0
    ident = p.identity + 2.0
    assert float(terms.coefficient_regulariser(p.replace(identity=ident), 1, 0, 0)) == pytest.approx(4.0)


def test_albedo_priors(synthetic_model):
    priors = terms.AlbedoPriors(synthetic_model)
    flat = torch.full((1, synthetic_model.n_vertices, 3), 0.5)
    assert float(priors.symmetry(flat)) == 0.0 and float(priors.smoothness(flat)) == pytest.approx(0.0, abs=1e-6)
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert float(priors.smoothness(noisy)) > 0.05 and float(priors.symmetry(noisy)) > 0.05


def test_objective_is_near_zero_on_exact_ground_truth(synthetic_data):
    from mlanet.data.synthetic import SyntheticFaces
    from mlanet.train.sampling import make_collate

    m = MorphableModel(synthetic_data)
    pre = PreprocessCfg(input_size=64)
    data = SyntheticFaces(m, pre, length=4, seed=5)
    batch = make_collate(m.layout.total)([{**data[i], "source": torch.tensor(0)} for i in range(4)])
    cfg = LossCfg(reg_identity=0, reg_expression=0, reg_albedo=0, albedo_symmetry=0, albedo_smoothness=0, lighting=0,
                  landmarks3d=1.0)
    out = Objective(m, pre, cfg)(batch, batch["params"])
    assert float(out.terms["landmarks"]) < 1e-5
    assert float(out.terms["vertices"]) == 0.0 and float(out.terms["landmarks3d"]) == 0.0
    assert float(out.terms["vertex_colour"]) == 0.0
    assert out.render.shape == (4, 64, 64, 3)
    # a wrong prediction costs more, and gradients flow back to the parameters
    wrong = batch["params"].clone().requires_grad_()
    out_wrong = Objective(m, pre, cfg)(batch, wrong + 0.05)
    assert float(out_wrong.terms["landmarks"].detach()) > 1e-3 and float(out_wrong.total.detach()) > float(out.total)
    out_wrong.total.backward()
    assert torch.isfinite(wrong.grad).all() and wrong.grad.abs().sum() > 0
