"""The fits-vs-lip-gap diagnostic (benchmarks/fits_follow_lip_gap.py): key parsing, the per-clip summary, bad input."""

import numpy as np
import pytest

from mlanet.benchmarks.fits_follow_lip_gap import clip_and_frame, clip_summary, main


def test_a_video_frame_key_gives_its_clip_and_frame():
    assert clip_and_frame("video-folder:clips_train/driving_d0.mp4#000012") == ("driving_d0.mp4", 12)
    assert clip_and_frame("video-folder:a.mp4#3") == ("a.mp4", 3)
    with pytest.raises(ValueError, match="not a video-frame sample key"):
        clip_and_frame("300w:indoor_001.png")


def test_the_summary_ranks_the_shapes_that_follow_the_gap():
    rng = np.random.default_rng(0)
    gap = np.abs(np.sin(np.linspace(0, 6, 120))) * 0.1
    names = ["jawOpen", "mouthLowerDown_L", "mouthSmile_L", "eyeBlink_L"]
    expr = np.stack([
        rng.normal(0, 0.05, 120),  # jawOpen: unrelated to the gap
        8 * gap + rng.normal(0, 0.02, 120),  # mouthLowerDown_L opens the mouth
        np.full(120, 0.3),  # constant: no r
        -4 * gap + rng.normal(0, 0.02, 120),  # anti-correlated
    ], 1)
    s = clip_summary(expr, gap, names)
    assert s["frames"] == 120 and abs(s["jaw_open_vs_lip_gap"]) < 0.3
    assert s["shapes_following"][0]["shape"] == "mouthLowerDown_L" and s["shapes_following"][0]["r"] > 0.9
    assert "mouthSmile_L" not in {t["shape"] for t in s["shapes_following"]}
    assert s["shapes_following"][-1]["shape"] == "eyeBlink_L"  # ranked, most negative last
    assert s["lip_gap_p5_p95"][0] < s["lip_gap_p5_p95"][1]


def test_too_few_frames_give_no_correlation():
    s = clip_summary(np.ones((3, 1)) * np.arange(3)[:, None], np.arange(3.0), ["jawOpen"])
    assert s["jaw_open_vs_lip_gap"] is None and s["shapes_following"] == []


def test_missing_caches_are_refused_with_exit_code_2(tmp_path, capsys):
    code = main(["--labels", str(tmp_path / "nope"), "--fits", str(tmp_path), "--face-model", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--labels" in err[0] and "not found" in err[0]
