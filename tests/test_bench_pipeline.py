"""`mlanet bench pipeline|soak|report`: records, schema, plots and summary (tiny settings)."""

import json

import pytest

from mlanet.cli import main as mlanet_main
from mlanet.benchmarks import soak

VIDEO = "data/video/obama_720p.mp4"


def test_growth_pct():
    samples = [(float(t), 100.0) for t in range(0, 100)]
    assert soak.growth_pct(samples, 10.0) == 0.0
    grow = [(float(t), 100.0 + t * 0.5) for t in range(0, 100)]
    g = soak.growth_pct(grow, 10.0)
    assert 30 < g < 50
    assert soak.growth_pct(samples[:3], 0.0) is None


@pytest.mark.assets
@pytest.mark.gl
def test_pipeline_soak_and_report(shared, ict_model_file, tmp_path):
    out = tmp_path / "results"
    clip = shared / VIDEO
    common = ["--out", str(out)]
    assert mlanet_main(["bench", "pipeline", *common, "--clip", str(clip), "--face-model", str(ict_model_file),
                        "--max-frames", "6", "--faces", "1,2"]) == 0
    device_dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(device_dirs) == 1
    rec = json.loads((device_dirs[0] / "pipeline.json").read_text())
    assert rec["schema"] == "mlanet-bench/1" and rec["benchmark"] == "pipeline"
    env = rec["environment"]
    assert {"device", "versions", "commit", "command", "time_utc"} <= set(env)
    r = rec["results"]
    assert r["weights"] == {"file": "mlanet_mobile.safetensors", "shipped": True} and r["model"] == "mlanet_mobile"
    assert [c["clip"] for c in r["clips"]] == ["obama_720p.mp4"] and r["clips"][0]["resolution"] == "1280x720"
    runs = r["clips"][0]["runs"]
    assert [x["render_and_encode"] for x in runs] == [True, False]
    assert all(x["frames"] == 6 for x in runs)
    assert runs[0]["stages"]["render"]["n"] == 4 and runs[1]["stages"]["render"]["n"] == 0
    assert [f["faces"] for f in r["faces"]] == [1, 2]
    assert r["faces"][1]["faces_per_frame_mean"] > 1.0  # the tiled frame holds two faces and both are tracked
    assert r["clips"][0]["live"]["frames_processed"] >= 1 and r["memory"]["peak_rss_mib"] > 100

    assert mlanet_main(["bench", "soak", *common, "--clip", str(clip), "--face-model", str(ict_model_file),
                        "--minutes", "0.1", "--warmup-min", "0.02", "--sample-s", "0.5"]) == 0
    s = json.loads((device_dirs[0] / "soak.json").read_text())["results"]
    assert s["weights"]["shipped"] is True
    assert s["frames"] > 0 and len(s["rss_mib"]) >= 2 and s["targets"]["peak_rss_ok"] in (True, False)

    assert mlanet_main(["bench", "report", *common]) == 0
    summary = (out / "SUMMARY.md").read_text()
    assert "Pipeline" in summary and "Soak" in summary and "pipeline_stages.png" in summary
    for png in ("pipeline_stages.png", "pipeline_fps_vs_faces.png", "soak_rss.png"):
        assert (device_dirs[0] / png).stat().st_size > 1000


def test_report_without_results_is_clear(tmp_path, capsys):
    assert mlanet_main(["bench", "report", "--out", str(tmp_path / "none")]) == 2
    assert "mlanet bench" in capsys.readouterr().err


def test_bench_help(capsys):
    with pytest.raises(SystemExit) as e:
        mlanet_main(["bench", "--help"])
    assert e.value.code == 0
    assert "pipeline" in capsys.readouterr().out
