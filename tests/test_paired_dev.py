"""benchmarks/paired_dev.py: mean of bins, the bootstrap interval of a paired difference, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mlanet.benchmarks.paired_dev import main, mean_of_bins, paired_comparison


def _result(path, nmes, bins):
    path.write_text(json.dumps({"images": [{"name": f"im{i}", "bin": int(b), "nme": float(e), "yaw_deg": 0.0}
                                           for i, (e, b) in enumerate(zip(nmes, bins))]}))
    return path


def test_mean_of_bins_weights_each_bin_equally():
    assert mean_of_bins(np.array([1.0, 1.0, 1.0, 4.0, 7.0]), np.array([0, 0, 0, 1, 2])) == pytest.approx(4.0)


def test_a_shift_inside_the_noise_has_an_interval_around_zero_and_a_real_one_does_not():
    rng = np.random.default_rng(1)
    bins = np.repeat([0, 1, 2], [130, 40, 30])
    a = rng.gamma(4.0, 1.0, len(bins)) + 2.0 * bins
    noisy = {f"im{i}": (int(b), float(e)) for i, (b, e) in enumerate(zip(bins, a + rng.normal(0, 1.0, len(a))))}
    ref = {f"im{i}": (int(b), float(e)) for i, (b, e) in enumerate(zip(bins, a))}
    r = paired_comparison(ref, noisy, resamples=500)
    lo, hi = r["interval_95"]
    assert lo < r["b_minus_a"] < hi and lo < 0.05 and hi > -0.05 and abs(r["b_minus_a"]) < 0.3
    better = {k: (b, e - 0.5) for k, (b, e) in ref.items()}
    r = paired_comparison(ref, better, resamples=500)
    assert r["b_minus_a"] == pytest.approx(-0.5) and r["interval_95"][1] < 0 and r["b_better_on"] == len(ref)
    assert r["images_per_bin"] == [130, 40, 30]


def test_cli_writes_json_and_refuses_other_images(tmp_path, capsys):
    a = _result(tmp_path / "a.json", [1.0, 2.0, 3.0], [0, 1, 2])
    b = _result(tmp_path / "b.json", [0.5, 2.0, 3.0], [0, 1, 2])
    assert main([str(a), str(b), "--resamples", "50", "--json", str(tmp_path / "c.json")]) == 0
    got = json.loads((tmp_path / "c.json").read_text())
    assert got["b_minus_a"] == pytest.approx(-0.5 / 3) and got["b_better_on"] == 1
    other = _result(tmp_path / "o.json", [1.0, 2.0], [0, 1])
    capsys.readouterr()
    assert main([str(a), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "different images" in err and len(err.splitlines()) == 1
    (tmp_path / "bad.json").write_text("{}")
    assert main([str(a), str(tmp_path / "bad.json")]) == 2
    assert "bad.json" in capsys.readouterr().err
