"""``mlanet bench live-soak``'s reading of a live run's timeline (mlanet.benchmarks.live_soak): memory growth and
dropped-frame drift."""

import pytest

from mlanet.errors import MLANetError


@pytest.fixture(scope="module")
def soak():
    from mlanet.benchmarks import live_soak

    return live_soak


def _timeline(minutes=20, rss=lambda t: 600.0, drop_rate=lambda t: 0.02, fps=25.0):
    out, frames, dropped = [], 0, 0.0
    for k in range(int(minutes * 6) + 1):  # a sample every 10 s
        t = 10.0 * k
        if k:
            arrived = fps * 10.0
            dropped += arrived * drop_rate(t)
            frames += int(round(arrived * (1 - drop_rate(t))))
        out.append({"t_s": t, "frames": frames, "dropped_frames": int(dropped), "rss_mib": rss(t)})
    return {"timeline": out, "peak_rss_mib": max(s["rss_mib"] for s in out)}


def test_steady_run_passes(soak):
    r = soak.analyse(_timeline(), warmup_s=120.0)
    assert r["targets"]["growth_ok"] and r["targets"]["no_drift_ok"]
    assert abs(r["first_quarter"]["drop_pct"] - 2.0) < 0.3 and abs(r["first_quarter"]["fps"] - 24.5) < 0.5


def test_leak_and_drift_are_caught(soak):
    leak = soak.analyse(_timeline(rss=lambda t: 600.0 + 0.05 * t), warmup_s=120.0)  # +60 MiB over 20 min
    assert not leak["targets"]["growth_ok"] and leak["rss_growth_after_warmup_pct"] > 5
    drift = soak.analyse(_timeline(drop_rate=lambda t: 0.02 + 0.1 * t / 1200.0), warmup_s=120.0)
    assert not drift["targets"]["no_drift_ok"] and drift["drop_drift_pp"] > 2
    better = soak.analyse(_timeline(drop_rate=lambda t: 0.12 - 0.1 * t / 1200.0), warmup_s=120.0)
    assert better["targets"]["no_drift_ok"] and better["drop_drift_pp"] < 0  # fewer drops later is not drift


def test_too_short_a_run_is_refused(soak):
    with pytest.raises(MLANetError, match="too short"):
        soak.analyse(_timeline(minutes=2), warmup_s=120.0)
