"""``mlanet bench compare``: MediaPipe face mesh vs the MLANet pipeline, and the renderer timings.

The end-to-end run uses tiny settings (6 frames, 1 pass, ``--quick``, a small differentiable
renderer batch); it checks the record's structure and internal consistency, not speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from mlanet.benchmarks import compare
from mlanet.benchmarks.cli import add_common_arguments
from mlanet.errors import FaceModelNotFoundError, MLANetError

SIDES = ("mediapipe_face_mesh", "mlanet_fit", "mlanet_fit_render")


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_common_arguments(p)
    compare.add_arguments(p)
    return p.parse_args(list(argv))


def test_import_is_light():
    code = ("import sys, mlanet.benchmarks.compare; "
            "print([m for m in ('torch', 'mediapipe', 'cv2', 'moderngl', 'onnxruntime', 'av') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_via_mlanet_cli(monkeypatch, capsys):
    from mlanet.cli import main
    from mlanet.benchmarks import cli as bench_cli

    # Only the parts whose modules exist (each part's own tests cover its parser).
    parts = {k: v for k, v in bench_cli.PARTS.items() if importlib.util.find_spec(f"mlanet.benchmarks.{v[0]}")}
    monkeypatch.setattr(bench_cli, "PARTS", parts)
    with pytest.raises(SystemExit) as exc:
        main(["bench", "compare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--clip", "--frames", "--passes", "--max-faces", "--face-model", "--out"):
        assert option in text


def test_settings_quick_and_overrides():
    assert compare._settings(_args())["passes"] == compare.DEFAULTS["passes"]
    assert compare._settings(_args())["frames"] is None  # all frames of the clip
    q = compare._settings(_args("--quick"))
    assert q["passes"] == compare.QUICK["passes"] and q["frames"] == compare.QUICK["frames"]
    q = compare._settings(_args("--quick", "--frames", "6", "--passes", "2"))
    assert (q["frames"], q["passes"]) == (6, 2)
    with pytest.raises(MLANetError, match="--passes"):
        compare._settings(_args("--passes", "0"))
    with pytest.raises(MLANetError, match="--max-faces"):
        compare._settings(_args("--max-faces", "0"))


def test_missing_face_model_says_how_to_build(tmp_path):
    # conftest points MLANET_HOME at an empty temporary folder
    with pytest.raises(FaceModelNotFoundError, match="mlanet assets build"):
        compare.run(_args("--out", str(tmp_path)))
    with pytest.raises(FaceModelNotFoundError, match="mlanet assets build"):
        compare.run(_args("--out", str(tmp_path), "--face-model", str(tmp_path / "nope.npz")))
    assert not list(tmp_path.iterdir())


def test_untrained_network_must_be_registered_and_excludes_weights(tmp_path):
    with pytest.raises(MLANetError, match="--untrained nope: unknown model"):
        compare.run(_args("--out", str(tmp_path), "--untrained", "nope"))
    with pytest.raises(SystemExit):
        _args("--untrained", "mlanet_mobile", "--weights", "w.safetensors")
    assert not list(tmp_path.iterdir())


def test_missing_clip(tmp_path):
    fm = tmp_path / "fm.npz"
    fm.write_bytes(b"")
    with pytest.raises(MLANetError, match="no such video"):
        compare.run(_args("--out", str(tmp_path / "out"), "--face-model", str(fm), "--clip", str(tmp_path / "x.mp4")))


def test_summarize_side_and_ratio():
    # 2 passes x 4 frames; frame 0 is warm-up; per-frame medians over passes: 2, 4, 6
    s = compare.summarize_side([[100.0, 1.0, 4.0, 6.0], [90.0, 3.0, 4.0, 6.0]], warmup=1)
    assert s["per_frame_ms"] == [2.0, 4.0, 6.0]
    assert s["median_ms"] == 4.0 and s["fps"] == 250.0
    assert s["frames"] == 4 and s["frames_timed"] == 3 and s["passes"] == 2
    assert s["min_ms"] == 2.0 and s["max_ms"] == 6.0 and s["warmup_ms"] == [95.0]
    assert s["p95_ms"] == pytest.approx(5.8)
    assert compare.ratio(4.0, 8.0) == 0.5


def test_differentiable_renderer_timings_synthetic(synthetic_model):
    r = compare.differentiable_renderer_timings(synthetic_model, batch=2, size=32, warmup=0, repeats=1,
                                                device="cpu", parts=("render_face_forward",
                                                                     "render_face_forward_backward"))
    assert list(r["timings"]) == ["render_face_forward", "render_face_forward_backward"]
    assert r["batch"] == 2 and r["image_size"] == 32 and r["torch_device"] == "cpu"
    assert all(t["median_ms"] > 0 and t["repeats"] == 1 for t in r["timings"].values())
    assert r["stats"]["vertices"] == synthetic_model.n_vertices
    with pytest.raises(ValueError, match="unknown renderer parts"):
        compare.differentiable_renderer_timings(synthetic_model, parts=("nope",))


@pytest.mark.assets
@pytest.mark.gl
def test_run_tiny(ict_model_file, shared, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLANET_SHARED", str(shared))
    args = _args("--out", str(tmp_path), "--face-model", str(ict_model_file), "--frames", "6", "--passes", "1",
                 "--quick", "--renderer-batch", "2", "--renderer-size", "64")
    path = compare.run(args)
    assert path.name == "compare.json" and path.parent.parent == tmp_path and path.is_file()
    assert "fps ratio MLANet/MediaPipe" in capsys.readouterr().out

    rec = json.loads(path.read_text())
    assert rec["schema"] == "mlanet-bench/1" and rec["benchmark"] == "compare"
    assert path.parent.name == rec["environment"]["device_tag"].split(":")[0]
    r = rec["results"]
    assert r["clip"]["name"] == "obama_720p.mp4" and (r["clip"]["width"], r["clip"]["height"]) == (1280, 720)
    assert r["clip"]["frames_decoded"] == 6
    st = r["settings"]
    assert (st["frames"], st["passes"], st["max_faces"], st["quick"]) == (6, 1, 1, True)
    # the weights a user runs (the shipped ones), not an untrained network
    assert st["backend"] == "onnxruntime-cpu" and st["weights"] == {"file": "mlanet_mobile.safetensors", "shipped": True}
    assert st["model"] == "mlanet_mobile" and st["thread_plan"]["network_backend"] == "onnxruntime"
    assert any("decoded once" in line for line in r["methodology"])
    warmup = st["warmup_frames"]

    # both (all three) sides saw the same frames
    for side in SIDES:
        s = r[side]
        assert s["frames"] == 6 and s["frames_timed"] == 6 - warmup and s["passes"] == 1
        assert len(s["per_frame_ms"]) == s["frames_timed"] and len(s["warmup_ms"]) == warmup
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["p95_ms"] <= s["max_ms"]
        assert s["fps"] == pytest.approx(1000.0 / s["median_ms"], rel=1e-3)
        assert 0 < s["frames_with_face"] <= 6  # the single face of the clip is found
        assert s["frames_with_face_per_pass"] == [s["frames_with_face"]]
    assert r["mediapipe_face_mesh"]["landmarks"] == 468
    assert r["mediapipe_face_mesh"]["extract_landmarks"]["included"] is False
    for side in ("mlanet_fit", "mlanet_fit_render"):
        stages = r[side]["stages"]
        assert {"detect_track", "preprocess", "infer", "reconstruct"} <= set(stages)
        assert r[side]["detector_frames"] >= 1
        # wall time around process() covers the stages it reports
        assert stages["sum_of_stages"]["median_ms"] <= r[side]["median_ms"] * 1.05 + 0.5
    assert "render" not in r["mlanet_fit"]["stages"] and "render" in r["mlanet_fit_render"]["stages"]
    assert r["mlanet_fit"]["render_mode"] is None and r["mlanet_fit_render"]["render_mode"] == "shaded"

    # ratios are fps(MLANet) / fps(MediaPipe) = ms(MediaPipe) / ms(MLANet)
    q, mp = r["ratios"], r["mediapipe_face_mesh"]
    assert "< 1 means MLANet is slower" in q["definition"]
    for side in ("mlanet_fit", "mlanet_fit_render"):
        assert q[f"{side}_over_mediapipe"] == pytest.approx(mp["median_ms"] / r[side]["median_ms"], rel=1e-3)
        assert q[f"{side}_over_mediapipe"] == pytest.approx(r[side]["fps"] / mp["fps"], rel=1e-2)
        assert q[f"{side}_over_mediapipe_p95"] == pytest.approx(mp["p95_ms"] / r[side]["p95_ms"], rel=1e-3)

    sm = r["summary"]  # the headline numbers the report shows
    assert list(r)[0] == "summary" and set(sm["per_frame_ms"]) == set(SIDES)
    assert sm["fps_ratio_mlanet_over_mediapipe"]["mlanet_fit_over_mediapipe"] == q["mlanet_fit_over_mediapipe"]
    assert len(json.dumps(sm, indent=1)) < 3000

    gl = r["gl_renderer"]
    assert (gl["width"], gl["height"]) == (1280, 720) and gl["faces"] == 1
    assert set(gl["timings"]) == {"shaded", "shaded_landmarks", "shaded_wireframe_landmarks", "frame_only"}
    assert all(t["median_ms"] > 0 for t in gl["timings"].values())
    dr = r["differentiable_renderer"]
    assert set(dr["timings"]) == {"render_face_forward", "render_face_forward_backward"}
    assert (dr["batch"], dr["image_size"]) == (2, 64)
    assert dr["timings"]["render_face_forward"]["repeats"] == compare.QUICK["renderer_repeats"]
