"""Every label the data has reaches a loss term: per-definition landmark sets, the teacher's 68
points and the store's pseudo-3DMM fits (mlanet.losses.objective, mlanet.train.sampling)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from mlanet.errors import ConfigError
from mlanet.losses import terms
from mlanet.losses.objective import LossCfg, Objective
from mlanet.morphable.landmarks import definitions as sl
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams
from mlanet.preprocess import PreprocessCfg
from mlanet.train.sampling import LANDMARK_SETS, OPTIONAL_KEYS, make_collate

OFF = dict(landmarks=0.0, mediapipe=0.0, vertices=0.0, vertex_colour=0.0, photometric=0.0, reg_identity=0.0,
           reg_expression=0.0, reg_albedo=0.0, albedo_symmetry=0.0, albedo_smoothness=0.0, lighting=0.0,
           landmarks_ibug68=0.0, landmarks_aflw21=0.0, landmarks_mtfl5=0.0, landmarks_teacher68=0.0, fit_shape=0.0)
PRE = PreprocessCfg(input_size=64)


def with_set_definitions(data: FaceModelData) -> FaceModelData:
    """The synthetic model plus ibug68 / aflw2000_68 / aflw21 / mtfl5 definitions on its 68 vertices
    (fixed points, no contour) and _L/_R expression names."""
    from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION
    from mlanet.data.sources.schema import DEFINITIONS

    tri, bary = sl.vertex_as_surface_point(data.landmarks68, data.triangles)
    extra, header = dict(data.extra), dict(data.header)
    infos = {}
    for name, n, perm in (("ibug68", 68, IBUG68_FLIP_PERMUTATION), ("aflw2000_68", 68, IBUG68_FLIP_PERMUTATION),
                          ("aflw21", 21, DEFINITIONS["aflw21"].flip_permutation),
                          ("mtfl5", 5, DEFINITIONS["mtfl5"].flip_permutation)):
        rows = np.arange(n) * (68 // n)
        info = {"point_names": [f"p{i}" for i in range(n)], "flip_permutation": [int(p) for p in perm],
                "description": "test"}
        d = sl.SurfaceDefinition(name, tri[rows], bary[rows], np.zeros(n, np.uint8), None, info).normalised()
        extra.update(d.to_extra())
        infos[name] = d.info
    header[sl.HEADER_KEY] = infos
    names = list(header["expression_names"])
    names[0], names[1] = "eyeBlink_L", "eyeBlink_R"
    header["expression_names"] = names
    return FaceModelData(**{**data.__dict__, "extra": extra, "header": header})


@pytest.fixture()
def model(synthetic_data):
    return MorphableModel(with_set_definitions(synthetic_data))


def _pred(m: MorphableModel, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = FaceParams.from_flat(torch.zeros(n, m.layout.total), m.layout)
    p = p.replace(identity=0.5 * torch.randn(n, m.n_identity, generator=g),
                  expression=torch.rand(n, m.n_expression, generator=g) * 0.5,
                  rotation=torch.randn(n, 3, generator=g) * 0.2,
                  translation=torch.tensor([[0.0, 0.0, 1.0]]).repeat(n, 1) + 0.01 * torch.randn(n, 3, generator=g))
    return p.to_flat()


def _exact_batch(m: MorphableModel, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """A collated batch whose sets are the exact projections of ``flat`` (all visible)."""
    cam = PRE.camera(flat.shape[0])
    verts = m(FaceParams.from_flat(flat, m.layout))
    samples = []
    for i in range(flat.shape[0]):
        s = {"image": torch.zeros(3, 64, 64), "landmarks": torch.full((68, 2), float("nan")),
             "landmarks_valid": torch.zeros(68, dtype=torch.bool), "params": torch.zeros(0),
             "has_params": torch.tensor(False), "mp468": torch.full((468, 2), float("nan")),
             "has_mp468": torch.tensor(False), "box": torch.zeros(3, dtype=torch.float64),
             "index": torch.tensor(i), "source": torch.tensor(0)}
        samples.append(s)
    for name, (definition, n) in LANDMARK_SETS.items():
        pts = cam.project(m.landmark_points(verts, definition, camera=cam))
        for i, s in enumerate(samples):
            s[f"points_{name}"], s[f"visible_{name}"] = pts[i].detach(), torch.ones(n, dtype=torch.bool)
    return make_collate(m.layout.total)(samples)


@pytest.mark.parametrize("name", list(LANDMARK_SETS))
def test_set_term_zero_when_exact_positive_otherwise_and_masked(model, name):
    obj = Objective(model, PRE, LossCfg(**{**OFF, f"landmarks_{name}": 1.0}))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    key = f"landmarks_{name}"
    assert obj(batch, flat).terms[key].abs().item() < 1e-5
    moved = dict(batch)
    moved[f"points_{name}"] = batch[f"points_{name}"] + 3.0
    out = obj(moved, flat.clone().requires_grad_(True))
    assert out.terms[key].item() > 1e-3
    # only invisible points are wrong (and the absent ones are NaN): still zero
    hidden = dict(batch)
    vis = batch[f"visible_{name}"].clone()
    vis[:, 0] = False
    vis[0] = False
    pts = batch[f"points_{name}"].clone()
    pts[:, 0] = 1e3
    pts[0] = float("nan")
    hidden[f"visible_{name}"], hidden[f"points_{name}"] = vis, pts
    assert obj(hidden, flat).terms[key].abs().item() < 1e-5
    # nothing visible: the term does not run
    none = dict(batch)
    none[f"visible_{name}"] = torch.zeros_like(vis)
    assert key not in obj(none, flat).terms


def test_ibug68_set_replaces_the_old_landmarks_term_for_its_samples(model):
    obj = Objective(model, PRE, LossCfg(**{**OFF, "landmarks": 1.0, "landmarks_ibug68": 1.0}))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    batch["landmarks"], batch["landmarks_valid"] = batch["points_ibug68"] + 5.0, torch.ones(3, 68, dtype=torch.bool)
    out = obj(batch, flat)
    assert out.terms["landmarks"].item() == 0.0  # every sample carries its ibug68 set
    batch["visible_ibug68"][1] = False
    assert obj(batch, flat).terms["landmarks"].item() > 0.0


def test_teacher_eyelids_can_be_left_out_of_the_teacher_term(model):
    """landmarks_teacher68_eyelids=False: wrong teacher eyelids cost nothing, other wrong points still do;
    the manual ibug68 term keeps its eyelids."""
    from mlanet.eval.face_measures import IBUG68_EYELID_ROWS

    lids = list(IBUG68_EYELID_ROWS)
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    moved = dict(batch)
    moved["points_teacher68"] = batch["points_teacher68"].clone()
    moved["points_teacher68"][:, lids] += 4.0
    moved["points_ibug68"] = batch["points_ibug68"].clone()
    moved["points_ibug68"][:, lids] += 4.0
    with_lids = Objective(model, PRE, LossCfg(**{**OFF, "landmarks_teacher68": 1.0, "landmarks_ibug68": 1.0}))
    without = Objective(model, PRE, LossCfg(**{**OFF, "landmarks_teacher68": 1.0, "landmarks_ibug68": 1.0,
                                               "landmarks_teacher68_eyelids": False}))
    assert with_lids(moved, flat).terms["landmarks_teacher68"].item() > 1e-3
    assert without(moved, flat).terms["landmarks_teacher68"].abs().item() < 1e-5
    assert without(moved, flat).terms["landmarks_ibug68"].item() > 1e-3
    off = dict(batch)
    off["points_teacher68"] = batch["points_teacher68"].clone()
    off["points_teacher68"][:, 30] += 4.0  # the nose tip
    assert without(off, flat).terms["landmarks_teacher68"].item() > 1e-3
    assert batch["visible_teacher68"].all()  # the batch itself is not changed


def test_photometric_every_n_steps_keeps_the_average_weight(model):
    obj = Objective(model, PRE, LossCfg(**{**OFF, "photometric": 0.5, "photometric_every": 4}))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    batch["image"] = torch.rand_like(batch["image"])
    full = obj(batch, flat).terms["photometric"]  # no step: every term, its plain weight
    assert "photometric" not in obj(batch, flat, step=3).terms and obj(batch, flat, step=3).render is None
    on = obj(batch, flat, step=8).terms["photometric"]
    assert float(on) == pytest.approx(4 * float(full), rel=1e-5)
    with pytest.raises(ValueError, match="photometric_every"):
        LossCfg(photometric_every=0)


def test_missing_definitions_disable_their_terms(synthetic_model, caplog):
    with caplog.at_level(logging.WARNING):
        obj = Objective(synthetic_model, PRE, LossCfg(**{**OFF, "landmarks_mtfl5": 1.0}))
    assert obj.sets == {} and "mtfl5" in caplog.text


def test_expression_flip_permutation():
    names = ["jawOpen", "eyeBlink_L", "eyeBlink_R", "mouthLeft", "mouthRight", "brow_L"]
    assert terms.expression_flip_permutation(names).tolist() == [0, 2, 1, 4, 3, 5]


def test_fit_shape_term(model):
    obj = Objective(model, PRE, LossCfg(**{**OFF, "fit_shape": 1.0}))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    assert "fit_shape" not in obj(batch, flat).terms  # no fits in the batch
    fit = FaceParams.from_flat(flat.clone(), model.layout)
    # pose, albedo and light of the fit are ignored (not fitted / other camera)
    fit = fit.replace(rotation=fit.rotation + 0.3, albedo=fit.albedo + 1.0, lighting=fit.lighting + 0.5)
    batch["fit_params"], batch["fit_ok"] = fit.to_flat(), torch.ones(3, dtype=torch.bool)
    assert obj(batch, flat).terms["fit_shape"].item() < 1e-4
    wrong = dict(batch)
    f2 = fit.replace(identity=fit.identity + 0.5)
    wrong["fit_params"] = f2.to_flat()
    assert obj(wrong, flat).terms["fit_shape"].item() > 0.1
    wrong["fit_ok"] = torch.tensor([False, False, False])
    assert "fit_shape" not in obj(wrong, flat).terms
    # a flipped sample: the target expression is the mirrored one, identity unsupervised
    perm = obj.expression_perm
    assert perm[:2].tolist() == [1, 0]
    flipped = dict(batch)
    mirrored = fit.replace(expression=fit.expression[:, perm], identity=fit.identity + 0.5)
    flipped["fit_params"], flipped["flipped"] = mirrored.to_flat(), torch.ones(3, dtype=torch.bool)
    assert obj(flipped, flat).terms["fit_shape"].item() < 1e-4
    flipped["flipped"] = torch.zeros(3, dtype=torch.bool)
    assert obj(flipped, flat).terms["fit_shape"].item() > 0.1


def test_fit_expression_term(model):
    names = model.expression_names
    chosen = names[0]  # mirrored with names[1] (see the flip permutation above)
    obj = Objective(model, PRE, LossCfg(**{**OFF, "fit_expression": 1.0, "fit_expression_names": (chosen,)}))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    assert "fit_expression" not in obj(batch, flat).terms  # no fits in the batch
    fit = FaceParams.from_flat(flat.clone(), model.layout)
    other = fit.expression.clone()
    other[:, 2:] += 0.4  # shapes that are not chosen do not count
    batch["fit_params"] = fit.replace(expression=other, identity=fit.identity + 1.0).to_flat()
    batch["fit_ok"] = torch.ones(3, dtype=torch.bool)
    assert obj(batch, flat).terms["fit_expression"].item() < 1e-6
    off = fit.expression.clone()
    off[:, 0] += 0.25
    batch["fit_params"] = fit.replace(expression=off).to_flat()
    assert obj(batch, flat).terms["fit_expression"].item() == pytest.approx(0.25, rel=1e-4)
    batch["fit_ok"] = torch.tensor([True, False, False])
    assert obj(batch, flat).terms["fit_expression"].item() == pytest.approx(0.25, rel=1e-4)
    # mirrored sample: compared with the fit's permuted weights
    batch["fit_ok"] = torch.ones(3, dtype=torch.bool)
    batch["fit_params"] = fit.replace(expression=fit.expression[:, obj.expression_perm]).to_flat()
    batch["flipped"] = torch.ones(3, dtype=torch.bool)
    assert obj(batch, flat).terms["fit_expression"].item() < 1e-6
    with pytest.raises(ValueError, match="no expression"):
        Objective(model, PRE, LossCfg(**{**OFF, "fit_expression": 1.0, "fit_expression_names": ("noSuchShape",)}))


def test_fit_expression_others_term_covers_the_shapes_not_named(model):
    names = model.expression_names
    obj = Objective(model, PRE, LossCfg(**{**OFF, "fit_expression": 1.0, "fit_expression_names": (names[0],),
                                           "fit_expression_others": 2.0}))
    assert sorted(obj.fit_expression_others_index.tolist()) == list(range(1, len(names)))
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    assert "fit_expression_others" not in obj(batch, flat).terms  # no fits in the batch
    fit = FaceParams.from_flat(flat.clone(), model.layout)
    batch["fit_ok"] = torch.ones(3, dtype=torch.bool)
    named_off = fit.expression.clone()
    named_off[:, 0] += 0.4  # only the named shape differs: the others term is zero
    batch["fit_params"] = fit.replace(expression=named_off).to_flat()
    t = obj(batch, flat).terms
    assert t["fit_expression"].item() == pytest.approx(0.4, rel=1e-4) and t["fit_expression_others"].item() < 1e-6
    others_off = fit.expression.clone()
    others_off[:, 1:] += 0.1  # every other shape off by 0.1: mean 0.1, weight 2
    batch["fit_params"] = fit.replace(expression=others_off).to_flat()
    t = obj(batch, flat).terms
    assert t["fit_expression"].item() < 1e-6 and t["fit_expression_others"].item() == pytest.approx(0.2, rel=1e-4)
    # mirrored samples compare with the fit's permuted weights, as the named term does
    batch["fit_params"] = fit.replace(expression=fit.expression[:, obj.expression_perm]).to_flat()
    batch["flipped"] = torch.ones(3, dtype=torch.bool)
    assert obj(batch, flat).terms["fit_expression_others"].item() < 1e-6
    off = Objective(model, PRE, LossCfg(**{**OFF, "fit_expression": 1.0, "fit_expression_names": (names[0],)}))
    assert "fit_expression_others" not in off(batch, flat).terms  # weight 0 (the default): no term

def test_expression_prior_is_the_weighted_mean_of_the_named_shapes_and_pushes_them_down(model):
    names = model.expression_names
    obj = Objective(model, PRE, LossCfg(**{**OFF, "expression_prior": 0.5, "expression_prior_names": (names[1], names[3])}))
    assert obj.expression_prior_index.tolist() == [1, 3]
    flat = _pred(model)
    batch = _exact_batch(model, flat)
    pred = FaceParams.from_flat(flat.clone(), model.layout)
    weights = torch.full_like(pred.expression, 0.9)  # the shapes not named do not count
    weights[:, 1], weights[:, 3] = 0.2, torch.tensor([0.0, 0.2, 0.4])  # named: mean over batch and shapes 0.2
    flat = pred.replace(expression=weights).to_flat().requires_grad_(True)
    term = obj(batch, flat).terms["expression_prior"]
    assert term.item() == pytest.approx(0.5 * 0.2, rel=1e-5)
    (grad,) = torch.autograd.grad(term, flat)
    expression_grad = FaceParams.from_flat(grad, model.layout).expression
    assert bool((expression_grad[:, [1, 3]] > 0).all())  # descent lowers the named shapes ...
    others = [i for i in range(len(names)) if i not in (1, 3)]
    assert float(expression_grad[:, others].abs().max()) == 0.0  # ... and leaves the rest alone
    assert float(grad.abs().sum()) == pytest.approx(float(expression_grad.abs().sum()))
    off = Objective(model, PRE, LossCfg(**OFF))
    assert "expression_prior" not in off(batch, flat).terms  # weight 0 (the default): no term


def test_expression_prior_refuses_unknown_or_missing_names(model):
    with pytest.raises(ConfigError, match=r"loss.expression_prior_names: the face model has no expression \['mouthOpn'\]"):
        Objective(model, PRE, LossCfg(**{**OFF, "expression_prior": 0.5, "expression_prior_names": ("mouthOpn",)}))
    with pytest.raises(ConfigError, match="expression_prior_names is empty"):
        Objective(model, PRE, LossCfg(**{**OFF, "expression_prior": 0.5}))
    # names are checked only when the term is on
    Objective(model, PRE, LossCfg(**{**OFF, "expression_prior_names": ("mouthOpn",)}))


def test_fit_expression_cross_entropy_is_zero_at_the_fit_and_keeps_its_gradient_near_zero(model):
    """The cross-entropy form: 0 where the weights equal the fit's, the Bernoulli KL divergence elsewhere, and a
    gradient on the sigmoid's logit of p - t where the L1 form's is p (1 - p)."""
    names = model.expression_names
    flat = _pred(model)
    fit = FaceParams.from_flat(flat.clone(), model.layout)
    ok, no_flip = torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)
    idx, perm = torch.tensor([0]), torch.arange(len(names))
    logit = torch.full((3, 1), -3.0, requires_grad=True)  # p = 0.047: the head's starting point
    expr = torch.cat([torch.sigmoid(logit), fit.expression[:, 1:]], 1)
    pred = fit.replace(expression=expr)
    target = fit.expression.clone()
    target[:, 0] = torch.sigmoid(torch.tensor(-3.0))
    same = fit.replace(expression=target).to_flat()
    assert terms.fit_expression_loss(pred, same, ok, no_flip, perm, idx, model.layout, form="cross_entropy").item() \
        == pytest.approx(0.0, abs=1e-6)
    target[:, 0] = 0.6  # the fit says open, the network says shut
    open_fit = fit.replace(expression=target).to_flat()
    p = float(torch.sigmoid(torch.tensor(-3.0)))
    kl = 0.6 * np.log(0.6 / p) + 0.4 * np.log(0.4 / (1 - p))
    ce = terms.fit_expression_loss(pred, open_fit, ok, no_flip, perm, idx, model.layout, form="cross_entropy")
    assert ce.item() == pytest.approx(kl, rel=1e-4)
    (g_ce,) = torch.autograd.grad(ce, logit, retain_graph=True)
    l1 = terms.fit_expression_loss(pred, open_fit, ok, no_flip, perm, idx, model.layout, form="l1")
    (g_l1,) = torch.autograd.grad(l1, logit)
    assert g_ce[0, 0].item() == pytest.approx((p - 0.6) / 3, rel=1e-3)  # mean over 3 samples
    assert g_l1[0, 0].item() == pytest.approx(-p * (1 - p) / 3, rel=1e-3)
    assert abs(g_ce[0, 0].item()) > 10 * abs(g_l1[0, 0].item())
    with pytest.raises(ValueError, match="form must be one of"):
        terms.fit_expression_loss(pred, open_fit, ok, no_flip, perm, idx, model.layout, form="l2")
    with pytest.raises(ValueError, match="fit_expression_form"):
        LossCfg(fit_expression_form="l2")
    obj = Objective(model, PRE, LossCfg(**{**OFF, "fit_expression": 1.0, "fit_expression_names": (names[0],),
                                           "fit_expression_form": "cross_entropy"}))
    batch = _exact_batch(model, flat)
    batch["fit_params"], batch["fit_ok"] = fit.to_flat(), ok
    assert obj(batch, flat).terms["fit_expression"].item() == pytest.approx(0.0, abs=1e-5)


def test_mirror_expression_term_is_zero_for_a_mirror_consistent_network(model):
    """The mirror term: 0 when the flipped image's weights are the input's mirrored (eyeBlink_L <-> _R), the mean
    absolute difference otherwise; the flipped image's weights are a target (no gradient); required input."""
    names = model.expression_names
    perm = terms.expression_flip_permutation(names)
    assert perm[0].item() == 1 and perm[1].item() == 0
    flat = _pred(model)
    pred = FaceParams.from_flat(flat.clone().requires_grad_(True), model.layout)
    consistent = pred.replace(expression=pred.expression.detach()[:, perm])  # what the flipped face should give
    assert terms.mirror_expression_loss(pred, consistent, perm).item() == pytest.approx(0.0, abs=1e-7)
    same = pred.replace(expression=pred.expression.detach())  # eyeBlink_L stays on the left: inconsistent
    expected = 2 * (pred.expression[:, 0] - pred.expression[:, 1]).abs().sum() / (3 * len(names))
    mirrored_flat = same.to_flat().detach().requires_grad_(True)
    loss = terms.mirror_expression_loss(pred, FaceParams.from_flat(mirrored_flat, model.layout), perm)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    loss.backward()
    assert mirrored_flat.grad is None or not mirrored_flat.grad.any()  # a target
    obj = Objective(model, PRE, LossCfg(**{**OFF, "mirror_expression": 2.0}))
    assert obj.needs_mirror and not Objective(model, PRE, LossCfg(**OFF)).needs_mirror
    batch = _exact_batch(model, flat)
    mirror = FaceParams.from_flat(flat, model.layout)
    mirror = mirror.replace(expression=mirror.expression[:, perm]).to_flat()
    assert obj(batch, flat, mirror_flat=mirror).terms["mirror_expression"].item() == pytest.approx(0.0, abs=1e-7)
    assert obj(batch, flat, mirror_flat=flat).terms["mirror_expression"].item() == pytest.approx(
        2.0 * expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="mirror_flat"):
        obj(batch, flat)


def test_mirror_expression_and_expression_prior_refuse_pca_expressions(synthetic_data):
    from mlanet.errors import ConfigError
    from mlanet.morphable.data import FaceModelData

    data = with_set_definitions(synthetic_data)
    pca = FaceModelData(**{**data.__dict__, "header": {**data.header, "expression_kind": "pca"}})
    with pytest.raises(ConfigError, match="mirror_expression"):
        Objective(MorphableModel(pca), PRE, LossCfg(**{**OFF, "mirror_expression": 1.0}))
    names = (pca.expression_names[0],)
    with pytest.raises(ConfigError, match="expression_prior: .* PCA expression coefficients"):
        Objective(MorphableModel(pca), PRE, LossCfg(**{**OFF, "expression_prior": 0.5, "expression_prior_names": names}))
    Objective(MorphableModel(pca), PRE, LossCfg(**OFF))  # without the terms it is fine


def test_collate_fills_absent_optional_keys():
    s = {"image": torch.zeros(3, 8, 8), "landmarks": torch.zeros(68, 2), "landmarks_valid": torch.ones(68, dtype=torch.bool),
         "params": torch.zeros(4), "has_params": torch.tensor(True), "mp468": torch.zeros(468, 2),
         "has_mp468": torch.tensor(False), "box": torch.zeros(3), "index": torch.tensor(0), "source": torch.tensor(0)}
    t = {**s, "points_mtfl5": torch.ones(5, 2), "visible_mtfl5": torch.tensor([True, True, False, True, True]),
         "fit_params": torch.ones(4), "fit_ok": torch.tensor(True), "flipped": torch.tensor(True)}
    t["points_mtfl5"][1] = float("nan")
    b = make_collate(4)([s, t])
    assert set(OPTIONAL_KEYS) <= set(b)
    assert torch.isnan(b["points_ibug68"]).all() and not b["visible_ibug68"].any()
    assert b["visible_mtfl5"].tolist() == [[False] * 5, [True, False, False, True, True]]
    assert b["fit_ok"].tolist() == [False, True] and torch.isnan(b["fit_params"][0]).all()
    assert b["flipped"].tolist() == [False, True]


def test_training_on_a_store_with_labels_and_fits(tmp_path, synthetic_data):
    """`mlanet train` for 2 steps on a tiny store whose samples carry teacher points and fits."""
    from test_store import _prepare, make_sources

    from mlanet.cli import main as cli_main
    from mlanet.data.store_dataset import StoreDataset
    from mlanet.train.sampling import MixtureDataset

    data = with_set_definitions(synthetic_data)
    m = MorphableModel(data)
    P = m.layout.total
    fit = np.zeros(P, np.float32)
    fit[m.layout.slices()["identity"]] = 0.1
    fit[m.layout.slices()["expression"]] = 0.2

    class Extras:
        name, version, point_sets = "test-extras", 1, {"teacher68": "aflw2000_68"}

        def __call__(self, sample):
            sets = sample.landmark_sets
            if "ibug68" not in sets:
                return None
            return {"teacher68": (sets["ibug68"].points + 1.0).astype(np.float32), "fit_params": fit,
                    "fit_ok": np.array(1.0, np.float32)}

    pre = PreprocessCfg(input_size=64)
    store_dir = tmp_path / "store"
    _prepare(make_sources(), store_dir, preprocess=pre, extras=Extras())
    ds = StoreDataset(store_dir, seed=0, n_params=P)
    mix = MixtureDataset([ds], [None])
    batch = make_collate(P)([mix[(0, i, 5)] for i in range(len(ds))])
    has68 = batch["visible_ibug68"].any(-1)
    assert bool(has68.any()) and batch["visible_teacher68"].any(-1).tolist() == has68.tolist()
    assert batch["fit_ok"].tolist() == has68.tolist()
    assert batch["visible_mtfl5"].any() and batch["visible_aflw21"].any()
    face_path = data.save(tmp_path / "face.mlface.npz")
    argv = ["train", "--out", str(tmp_path / "run"), "--set", f"face_model={face_path}",
            "--set", "preprocess.input_size=64", "--set", "preprocess.roi_scale=1.4142135623730951",
            "--set", f"data.store_dir={store_dir}", "--set", "data.synthetic=0.2", "--set", "optim.steps=2",
            "--set", "optim.batch_size=8", "--set", "optim.warmup_steps=1", "--set", "data.val_synthetic=4",
            "--set", "run.val_every=2", "--set", "run.ckpt_every=2", "--set", "run.log_every=1",
            "--set", "loss.mirror_expression=1.0"]
    assert cli_main(argv) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 1 and summary["stopped_by"] == "finished"
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    mirror = [r["loss/mirror_expression"] for r in logged if "loss/mirror_expression" in r]
    assert len(mirror) == 2 and all(np.isfinite(mirror))  # the loop ran the flipped pass on both steps
