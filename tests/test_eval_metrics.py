"""Tests of the AFLW2000-3D metrics (mlanet.eval.metrics): NME normalisation, yaw bins, summary, CED/AUC, plot."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mlanet.errors import MLANetError
from mlanet.eval.metrics import (
    NME_ALL_LABEL,
    MissingExtraError,
    auc,
    ced_curve,
    nme_per_image,
    plot_ced,
    summarise,
    yaw_bins,
)


def _toy_gt() -> np.ndarray:
    """(1, 68, 2) ground truth whose x, y box is 4 x 9 pixels (sqrt(w*h) = 6)."""
    rng = np.random.default_rng(0)
    gt = np.column_stack([rng.uniform(10, 14, 68), rng.uniform(20, 29, 68)])
    gt[0] = (10, 20)
    gt[1] = (14, 29)
    return gt[None]


def test_nme_normalisation_by_hand() -> None:
    gt = _toy_gt()
    pred = gt.copy()
    pred[0, 5] += (3.0, 4.0)  # one point 5 px off
    pred[0, 7] += (0.0, -2.0)  # one point 2 px off (the box of gt does not change: it is from gt)
    expected = (5.0 + 2.0) / 68 / 6.0
    assert nme_per_image(pred, gt) == pytest.approx([expected], rel=1e-12)
    # Torch tensors and extra z coordinates are accepted and ignored.
    pred3 = np.concatenate([pred, np.full((1, 68, 1), 7.0)], axis=2)
    gt3 = np.concatenate([gt, np.zeros((1, 68, 1))], axis=2)
    assert nme_per_image(torch.tensor(pred3), torch.tensor(gt3)) == pytest.approx([expected], rel=1e-12)


def test_nme_is_not_the_diagonal_normalisation() -> None:
    gt = _toy_gt()
    pred = gt + (1.0, 0.0)
    nme = nme_per_image(pred, gt)[0]
    assert nme == pytest.approx(1.0 / 6.0)
    assert nme != pytest.approx(1.0 / np.hypot(4.0, 9.0))


def test_nme_bad_input() -> None:
    gt = _toy_gt()
    with pytest.raises(ValueError, match="shapes differ"):
        nme_per_image(gt[:, :67], gt)
    with pytest.raises(ValueError, match="shape"):
        nme_per_image(gt[0], gt[0])
    flat = gt.copy()
    flat[..., 1] = 3.0
    with pytest.raises(ValueError, match="degenerate"):
        nme_per_image(flat, flat)
    bad = gt.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        nme_per_image(bad, gt)


def test_yaw_bins_edges() -> None:
    yaw = [0.0, 30.0, 30.0001, -45.0, 60.0, 60.01, 90.0, 120.0, -187.8, -30.0]
    assert yaw_bins(yaw).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 0]
    with pytest.raises(ValueError):
        yaw_bins([np.nan])


def test_summarise_known_values() -> None:
    nme = np.array([0.01, 0.03, 0.02, 0.04, 0.09])
    yaw = np.array([5.0, -20.0, 45.0, 70.0, 85.0])
    s = summarise(nme, yaw)
    assert s["n"] == 5 and s["n_bins"] == [2, 1, 2]
    assert s["nme_bins"] == pytest.approx([2.0, 2.0, 6.5])
    assert s["nme_mean_bins"] == pytest.approx((2.0 + 2.0 + 6.5) / 3)
    assert s["nme_all"] == pytest.approx(3.8)
    assert s["labels"]["nme_all"] == NME_ALL_LABEL == "nme_all (mean over images)"
    # AUC@7%: mean(max(0, 7 - e)) / 7 with e = 1, 3, 2, 4, 9 percent.
    assert s["auc_7"] == pytest.approx((6 + 4 + 5 + 3 + 0) / 5 / 7)
    ced = s["ced"]
    assert len(ced["thresholds_percent"]) == len(ced["fraction"])
    k = ced["thresholds_percent"].index(3.0)
    assert ced["fraction"][k] == pytest.approx(3 / 5)
    assert s["warnings"] == []


def test_auc_matches_numerical_integral_of_ced() -> None:
    rng = np.random.default_rng(1)
    nme = rng.gamma(3.0, 0.012, size=500)
    t = np.linspace(0.0, 7.0, 70001)
    numeric = np.trapezoid(ced_curve(nme, t), t) / 7.0
    assert auc(nme) == pytest.approx(numeric, abs=1e-4)
    assert auc(np.zeros(3)) == pytest.approx(1.0)
    assert auc(np.full(3, 0.08)) == 0.0


def test_summarise_empty_bin_has_no_headline() -> None:
    s = summarise(np.array([0.02, 0.03]), np.array([10.0, 40.0]))
    assert s["nme_bins"][2] is None and s["n_bins"] == [1, 1, 0]
    assert s["nme_mean_bins"] is None
    assert any("(60, 90]" in w for w in s["warnings"])
    assert s["nme_all"] == pytest.approx(2.5)
    with pytest.raises(ValueError):
        summarise(np.array([0.02]), np.array([1.0, 2.0]))


def test_plot_ced_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(2)
    out = plot_ced(
        {"a": rng.gamma(3.0, 0.012, 50), "b": rng.gamma(3.0, 0.015, 50)},
        tmp_path / "sub" / "ced.png",
        references={"3DDFA_V2 (published)": 3.51},
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["ced.png"]  # no temporary file left behind


def test_plot_ced_without_matplotlib_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[train\]'") as info:
        plot_ced({"a": [0.01]}, tmp_path / "ced.png")
    assert isinstance(info.value, MLANetError) and isinstance(info.value, ImportError)
    assert not (tmp_path / "ced.png").exists()


def test_mean_of_available_bins_and_ced_axis_limit() -> None:
    from mlanet.eval.metrics import ced_axis_limit, mean_of_available_bins

    assert mean_of_available_bins([3.0, None, 5.0]) == 4.0
    assert mean_of_available_bins([3.0, 4.0, 8.0]) == 5.0
    assert mean_of_available_bins([None, None, None]) is None
    assert ced_axis_limit([np.full(10, 0.03)]) == 10.0  # good models: the default 10 %
    assert ced_axis_limit([np.full(10, 0.03), np.linspace(0.0, 0.4, 11)]) == 40.0  # widened to the worst p90
    assert ced_axis_limit([np.full(10, 3.0)]) == 100.0  # at most 100 %
