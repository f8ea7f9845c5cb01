"""The expression-filter sweep's scoring and its choice rule (benchmarks/expression_filter_sweep.py), on synthetic series."""

import numpy as np
import pytest

from mlanet.benchmarks.expression_filter_sweep import choose, score, sweep


def _clip(seed: int = 0, n: int = 150, fps: float = 25.0) -> dict[str, np.ndarray]:
    """A mouth that opens and closes three times and blinks twice, the fit = reference + noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fps
    gap = 0.1 * np.clip(np.sin(2 * np.pi * 0.5 * t), 0, None)
    closure = -0.35 + 0.25 * (np.abs(((t + 0.3) % 2.5) - 1.0) < 0.08)
    return {"t": t, "gap": gap, "closure": closure,
            "jaw": 3.0 * gap + rng.normal(0, 0.02, n), "blink": 2.0 * (closure + 0.35) + rng.normal(0, 0.02, n)}


def test_filtering_trades_correlation_for_smoothness():
    clip = _clip()
    raw = score(clip, None, 0.0)
    heavy = score(clip, 0.5, 0.0)
    assert raw["r_jaw"] > heavy["r_jaw"] and raw["r_blink"] > heavy["r_blink"]  # lag costs r
    assert heavy["roughness"]["jaw"] < raw["roughness"]["jaw"] / 3  # and removes noise


def test_a_reference_that_hardly_varies_gives_no_correlation():
    clip = _clip()
    clip["gap"] = 0.004 + 0.001 * np.sin(clip["t"])  # a closed mouth: below MIN_REFERENCE_RANGE
    assert score(clip, 2.0, 1.0)["r_jaw"] is None


def test_choose_takes_the_smoothest_setting_near_the_best_filtered_r():
    rows = sweep({"a": _clip(0), "b": _clip(1)})
    chosen = choose(rows, tolerance=0.02)
    filtered = [r for r in rows if r["expression_min_cutoff"] is not None]
    assert chosen["expression_min_cutoff"] is not None  # never "no filter"
    assert chosen["mean_r_jaw"] >= max(r["mean_r_jaw"] for r in filtered) - 0.02
    assert chosen["mean_r_blink"] >= max(r["mean_r_blink"] for r in filtered) - 0.02
    rough = chosen["median_roughness_jaw"] + chosen["median_roughness_blink"]
    assert rough <= min(r["median_roughness_jaw"] + r["median_roughness_blink"] for r in filtered
                        if r["mean_r_jaw"] >= max(x["mean_r_jaw"] for x in filtered) - 0.02
                        and r["mean_r_blink"] >= max(x["mean_r_blink"] for x in filtered) - 0.02)
    # a looser tolerance can only choose a smoother (or the same) setting
    loose = choose(rows, tolerance=0.2)
    assert loose["median_roughness_jaw"] + loose["median_roughness_blink"] <= rough
    with pytest.raises(ValueError, match="no filtered setting"):
        choose([r for r in rows if r["expression_min_cutoff"] is None])
