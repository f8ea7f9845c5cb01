"""Eye aperture measures, the eye-aperture report of labels / fits / face model, and the fitter's teacher-eyelid weight."""

from __future__ import annotations

import numpy as np
import pytest

from mlanet.data.eye_aperture import BLINK_LEVELS, blink_equivalent, face_model_apertures, label_apertures
from mlanet.data.fits import TEACHER_EYELID_ROWS, ObservationSpec, RobustFitSettings, robust_fit
from mlanet.eval.face_measures import ibug68_eye_apertures


def ibug_points(left: float, right: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """(68, 2) points with eye apertures ``left`` / ``right`` (eye width 20 px), the rest random."""
    rng = rng or np.random.default_rng(0)
    p = rng.uniform(0.0, 100.0, (68, 2))
    # subject's left eye: corners 42 (inner), 45 (outer); upper 43, 44; lower 47, 46
    p[42], p[45] = (60.0, 40.0), (80.0, 40.0)
    p[43], p[44] = (66.0, 40.0 - 10.0 * left), (74.0, 40.0 - 10.0 * left)
    p[47], p[46] = (66.0, 40.0 + 10.0 * left), (74.0, 40.0 + 10.0 * left)
    # subject's right eye: corners 36 (outer), 39 (inner); upper 37, 38; lower 41, 40
    p[36], p[39] = (20.0, 40.0), (40.0, 40.0)
    p[37], p[38] = (26.0, 40.0 - 10.0 * right), (34.0, 40.0 - 10.0 * right)
    p[41], p[40] = (26.0, 40.0 + 10.0 * right), (34.0, 40.0 + 10.0 * right)
    return p


def mp_points(left: float, right: float, rng: np.random.Generator | None = None) -> np.ndarray:
    rng = rng or np.random.default_rng(1)
    p = rng.uniform(0.0, 100.0, (468, 2))
    p[263], p[362] = (80.0, 40.0), (60.0, 40.0)
    p[386], p[374] = (70.0, 40.0 - 10.0 * left), (70.0, 40.0 + 10.0 * left)
    p[33], p[133] = (20.0, 40.0), (40.0, 40.0)
    p[159], p[145] = (30.0, 40.0 - 10.0 * right), (30.0, 40.0 + 10.0 * right)
    return p


def test_ibug68_apertures_known_points_and_invariance() -> None:
    p = ibug_points(0.3, 0.1)
    np.testing.assert_allclose(ibug68_eye_apertures(p), [0.3, 0.1], rtol=1e-12)
    th = 0.4
    R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    np.testing.assert_allclose(ibug68_eye_apertures(p @ R.T * 3.5 + 7.0), [0.3, 0.1], rtol=1e-12)
    batch = np.stack([ibug_points(a, a) for a in (0.0, 0.2)])
    np.testing.assert_allclose(ibug68_eye_apertures(batch), [[0.0, 0.0], [0.2, 0.2]], atol=1e-12)
    with pytest.raises(ValueError, match="68"):
        ibug68_eye_apertures(np.zeros((468, 2)))


def test_blink_equivalent_inverts_a_decreasing_curve() -> None:
    curve = [0.4, 0.3, 0.2, 0.1, 0.0]  # aperture at eyeBlink 0, .25, .5, .75, 1
    assert blink_equivalent(0.3, curve) == pytest.approx(0.25)
    assert blink_equivalent(0.15, curve) == pytest.approx(0.625)
    assert blink_equivalent(0.45, curve) == pytest.approx(-0.125)  # more open than the model's neutral
    assert blink_equivalent(-0.1, curve) == 1.0
    assert blink_equivalent(None, curve) is None and blink_equivalent(float("nan"), curve) is None


def test_label_apertures_percentiles_and_correlations() -> None:
    rng = np.random.default_rng(3)
    n = 60
    truth = rng.uniform(0.05, 0.4, n)
    manual = np.stack([ibug_points(a, a, rng) for a in truth])
    mp = np.stack([mp_points(a + 0.02, a + 0.02, rng) for a in truth])  # follows the eye
    teacher = np.stack([ibug_points(0.28 + 0.01 * s, 0.28, rng) for s in rng.standard_normal(n)])  # does not
    yaw = np.zeros((n, 3))
    yaw[:5, 1] = np.radians(45.0)  # profile faces are left out
    arrays = {"manual__ibug68": manual, "mp468": mp, "t68": teacher, "pose": yaw, "mp_status": np.ones(n, np.int8),
              "status": np.zeros(n, np.int8)}
    rep = label_apertures(arrays, max_yaw_deg=20.0)
    assert rep["frontal_with_mediapipe"] == n - 5
    assert rep["aperture"]["manual"]["p50"] == pytest.approx(float(np.median(truth[5:])), abs=1e-3)
    assert rep["aperture"]["mediapipe"]["p50"] == pytest.approx(float(np.median(truth[5:])) + 0.02, abs=1e-3)
    assert rep["correlation"]["manual~mediapipe"] == pytest.approx(1.0, abs=1e-6)
    assert abs(rep["correlation"]["manual~teacher"]) < 0.5


@pytest.mark.assets
def test_face_model_eyelids_close_with_eyeblink(ict_data) -> None:
    from mlanet.morphable.model import MorphableModel

    curves = face_model_apertures(MorphableModel(ict_data))
    assert "mediapipe468" in curves
    for definition, curve in curves.items():
        assert len(curve) == len(BLINK_LEVELS)
        assert all(a > b for a, b in zip(curve, curve[1:])), (definition, curve)
        assert curve[0] > 0.25 and curve[-1] < 0.15, (definition, curve)


def test_teacher_eyelid_weight_zero_is_the_same_as_no_teacher_eyelids(synthetic_model) -> None:
    """Weight 0 makes the teacher's eyelid points count for nothing (as if absent); weight 1 lets them pull."""
    from test_fits import FAST, _project, _truth

    ident, expr, ang, t = _truth(synthetic_model, seed=4)
    pts = _project(synthetic_model, ident, expr, ang, t)
    lids = list(TEACHER_EYELID_ROWS)
    teacher = pts.copy()
    teacher[:, lids, 1] += 6.0  # the teacher's lids 6 px lower than the face's
    absent = teacher.copy()
    absent[:, lids] = np.nan
    s0 = RobustFitSettings(**{**FAST.to_dict(), "teacher_eyelid_weight": 0.0})
    s1 = RobustFitSettings(**{**FAST.to_dict(), "teacher_eyelid_weight": 1.0})
    fit0 = robust_fit(synthetic_model, [ObservationSpec("teacher", "ict68", teacher)], s0)
    fit_absent = robust_fit(synthetic_model, [ObservationSpec("teacher", "ict68", absent)], s0)
    fit1 = robust_fit(synthetic_model, [ObservationSpec("teacher", "ict68", teacher)], s1)
    np.testing.assert_allclose(fit0.params, fit_absent.params, atol=1e-6)
    assert np.abs(fit1.params - fit0.params).max() > 1e-3
    # a manual set's eyelids are not affected by the teacher's weight
    fit_manual0 = robust_fit(synthetic_model, [ObservationSpec("manual", "ict68", teacher)], s0)
    fit_manual1 = robust_fit(synthetic_model, [ObservationSpec("manual", "ict68", teacher)], s1)
    np.testing.assert_allclose(fit_manual0.params, fit_manual1.params, atol=1e-9)


def test_fit_blinks_correlate_with_the_apertures_they_were_made_from(synthetic_data) -> None:
    """fit_blinks pairs every fit with its label row by lookup key, skips bad fits, and measures r."""
    from mlanet.data.eye_aperture import fit_blinks
    from mlanet.data.fits import FitTable
    from mlanet.data.labels.cache import lookup_key
    from mlanet.morphable.model import MorphableModel
    from mlanet.params import ParamLayout
    from test_objective_sets import with_set_definitions

    model = MorphableModel(with_set_definitions(synthetic_data))
    layout = ParamLayout.for_face_model(model)
    rng = np.random.default_rng(5)
    n = 40
    aperture = rng.uniform(0.05, 0.4, n)
    arrays = {"content": np.array([f"c{i}" for i in range(n)]), "box_rule": np.array(["r"] * n),
              "annotation": np.array([f"a{i}" for i in range(n)]), "mp_status": np.ones(n, np.int8),
              "mp468": np.stack([mp_points(a, a, rng) for a in aperture]),
              "manual__ibug68": np.stack([ibug_points(a, a, rng) for a in aperture])}
    order = rng.permutation(n)  # the fit table is in another order than the labels
    params = np.zeros((n, layout.total), np.float32)
    e = layout.slices()["expression"]
    blink = 1.0 - aperture / 0.4
    params[:, e.start + model.expression_names.index("eyeBlink_L")] = blink[order]
    params[:, e.start + model.expression_names.index("eyeBlink_R")] = blink[order]
    ok = np.ones(n, bool)
    ok[:3] = False
    fits = FitTable("src", {"label_lookup": np.array([lookup_key(f"c{i}", "r", f"a{i}") for i in order]),
                            "params": params, "ok": ok},
                    [{"fitter": {"settings": {"teacher_eyelid_weight": 0.0}}}])
    rep = fit_blinks(arrays, fits, model)
    assert rep["faces"] == n - 3
    assert rep["r_vs_minus_mediapipe_aperture"] == pytest.approx(1.0, abs=1e-6)
    assert rep["r_vs_minus_manual_aperture"] == pytest.approx(1.0, abs=1e-6)
    assert rep["eyeBlink"]["p50"] == pytest.approx(float(np.median(blink[order][3:])), abs=1e-3)
    assert rep["fitter_settings"] == [{"teacher_eyelid_weight": 0.0}]
