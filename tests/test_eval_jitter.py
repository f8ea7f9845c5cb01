"""Tests of the video landmark-jitter benchmark (mlanet.edge.evaluation.jitter) and ``mlanet eval jitter``.

The metric is checked on synthetic trajectories with known answers (still + white noise,
constant velocity, constant acceleration); the one-pass claim (raw fits of a filter-on pass
equal a filter-off pass) on the real pipeline, tracker and filter with a cheap image-dependent
stand-in network and a fake detector; the ``assets`` test runs the command on the shared clip with MediaPipe.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlanet.cli import main
from mlanet.errors import MLANetError
from mlanet.edge.evaluation.jitter import (
    SKIP_REASONS,
    TrackFrame,
    collect_tracks,
    evaluate_clip,
    face_size,
    jitter_report,
    second_difference_jitter,
    similarity_motion,
)

RNG = np.random.default_rng(0)
FACE68 = RNG.uniform(100.0, 200.0, (68, 2))
FACE468 = RNG.uniform(90.0, 210.0, (468, 2))


# ------------------------------------------------------------------------ the metric
def test_second_difference_of_known_trajectories() -> None:
    rng = np.random.default_rng(1)
    sigma = 0.7
    # still face + white noise: sqrt(3) * sigma (E|d|^2 = 2 coords * 6 sigma^2, / 4)
    noisy = FACE68[None] + rng.normal(0.0, sigma, (400, 68, 2))
    j = [second_difference_jitter(noisy[t - 1], noisy[t], noisy[t + 1]) for t in range(1, 399)]
    assert np.sqrt(np.mean(np.square(j))) == pytest.approx(math.sqrt(3.0) * sigma, rel=0.02)
    # constant velocity: 0; constant acceleration a: |a| / 2
    v, a = np.array([3.0, -1.0]), np.array([0.6, 0.8])
    lin = [FACE68 + t * v for t in range(3)]
    assert second_difference_jitter(*lin) == pytest.approx(0.0, abs=1e-12)
    acc = [FACE68 + t * v + 0.5 * t * t * a for t in range(3)]
    assert second_difference_jitter(*acc) == pytest.approx(0.5, abs=1e-12)  # |a| = 1


def test_similarity_motion_measures_the_head_not_the_noise() -> None:
    assert similarity_motion(FACE468, FACE468 + [3.0, 4.0]) == pytest.approx(5.0)
    c = FACE468.mean(axis=0)
    th = math.radians(2.0)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    turned = (FACE468 - c) @ R.T * 1.01 + c
    expected = np.sqrt(np.mean(np.sum((turned - FACE468) ** 2, axis=1)))
    assert similarity_motion(FACE468, turned) == pytest.approx(expected, rel=1e-9)
    # per-point noise of 1 px barely registers (the similarity averages it over 468 points)
    noisy = FACE468 + np.random.default_rng(2).normal(0.0, 1.0, FACE468.shape)
    assert similarity_motion(FACE468, noisy) < 0.15
    assert face_size(np.array([[0.0, 0.0], [4.0, 9.0]])) == pytest.approx(6.0)


def _track(n: int, sigma_raw: float, sigma_filt: float, speed_px: float = 0.0, seed: int = 0,
           cuts: tuple[int, ...] = (), missing: tuple[int, ...] = (), no_ref: tuple[int, ...] = ()) -> list[TrackFrame]:
    rng = np.random.default_rng(seed)
    out = []
    for t in range(n):
        if t in missing:
            continue
        shift = np.array([speed_px * t, 0.0])
        out.append(TrackFrame(
            frame=t, scene_cut=t in cuts,
            unfiltered=FACE68 + shift + rng.normal(0.0, sigma_raw, (68, 2)),
            filtered=FACE68 + shift + rng.normal(0.0, sigma_filt, (68, 2)),
            reference=None if t in no_ref else FACE468 + shift + rng.normal(0.0, 0.05, (468, 2)),
            box=(90.0, 90.0, 120.0),
        ))
    return out


def test_report_on_a_still_noisy_track() -> None:
    rep = jitter_report({0: _track(300, 1.0, 0.25)})
    # the speed needs t-2..t+2: frames 1 and 298 are valid but cannot be near-static
    assert rep["track_frames"] == 300 and rep["valid_frames"] == 298 and rep["near_static_frames"] == 296
    assert rep["valid_frames_without_speed"] == 2
    assert [r["frame"] for r in rep["records"] if r["head_speed_percent"] is None] == [1, 298]
    assert rep["skipped"] == {"track_end": 2, "track_gap": 0, "scene_cut": 0, "no_reference": 0}
    px = rep["near_static"]["jitter_px"]
    assert px["unfiltered"]["mean"] == pytest.approx(math.sqrt(3.0), rel=0.03)
    assert px["filtered"]["mean"] == pytest.approx(0.25 * math.sqrt(3.0), rel=0.03)
    assert px["mediapipe468"]["mean"] == pytest.approx(0.05 * math.sqrt(3.0), rel=0.03)
    assert rep["filtered_to_unfiltered"] == pytest.approx(0.25, rel=0.05)
    size = face_size(FACE468)
    assert rep["near_static"]["jitter_percent"]["unfiltered"]["mean"] == pytest.approx(
        100.0 * px["unfiltered"]["mean"] / size, rel=0.01)
    json.dumps(rep, allow_nan=False)


def test_report_skips_cuts_gaps_and_frames_without_reference() -> None:
    # frames 0..19; cut at 10 (invalidates centres 9 and 10), frame 15 missing (centres 14, 16), no reference at 5
    seq = _track(20, 1.0, 0.5, cuts=(10,), missing=(15,), no_ref=(5,))
    rep = jitter_report({3: seq})
    assert rep["track_frames"] == 19
    assert rep["skipped"] == {"track_end": 2, "track_gap": 2, "scene_cut": 2, "no_reference": 3}
    assert rep["valid_frames"] == 19 - 9
    frames = {r["frame"] for r in rep["records"]}
    assert frames.isdisjoint({0, 4, 5, 6, 9, 10, 14, 16, 19}) and all(r["track"] == 3 for r in rep["records"])
    assert rep["tracks"][0]["frames_with_reference"] == 18
    # a speed needs a clean t-2..t+2 stretch: valid frames next to the cut, the gap, the missing reference or the ends have none
    with_speed = sorted(r["frame"] for r in rep["records"] if r["head_speed_percent"] is not None)
    assert with_speed == [2, 12]
    assert set(rep["skipped"]) == set(SKIP_REASONS)


def test_moving_head_is_not_near_static_but_counts_in_all_valid() -> None:
    size = face_size(FACE468)
    fast = _track(30, 1.0, 0.5, speed_px=0.02 * size, seed=1)  # 2 % of the face per frame, constant velocity
    slow = _track(30, 1.0, 0.5, speed_px=0.002 * size, seed=2)  # 0.2 %
    rep = jitter_report({0: fast, 1: slow}, static_speed_percent=0.5)
    assert rep["valid_frames"] == 56 and rep["near_static_frames"] == 26
    assert {r["track"] for r in rep["records"] if r["near_static"]} == {1}
    speeds = [r["head_speed_percent"] for r in rep["records"] if r["track"] == 0 and r["head_speed_percent"] is not None]
    assert len(speeds) == 26 and np.allclose(speeds, 2.0, rtol=0.02)
    # constant velocity adds no jitter: the moving track's jitter is its noise only
    moving = [r["jitter_px"]["unfiltered"] for r in rep["records"] if r["track"] == 0]
    assert np.sqrt(np.mean(np.square(moving))) == pytest.approx(math.sqrt(3.0), rel=0.2)
    assert rep["all_valid"]["n"] == 56 and rep["near_static"]["n"] == 26
    none = jitter_report({0: fast})
    assert none["near_static"]["jitter_px"]["filtered"]["median"] is None and none["warnings"]
    assert none["filtered_to_unfiltered"] is None
    with pytest.raises(ValueError):
        jitter_report({0: slow}, static_speed_percent=0.0)


def test_window_reference_maps_back_and_rejects_other_faces() -> None:
    from mlanet.edge.evaluation.jitter import WindowReference
    from mlanet.preprocess import CropBox

    image = np.zeros((300, 400, 3), np.uint8)
    image[140:160, 190:210] = 222  # the pixel under the box centre (200, 150)
    S = 64
    grid = np.stack(np.meshgrid(np.linspace(-8, 8, 26), np.linspace(-8, 8, 18)), -1).reshape(-1, 2)[:468]
    seen = []

    class Fake:
        def __init__(self, centre):
            self.centre = np.asarray(centre, np.float64)

        def __call__(self, window):
            seen.append(window)
            return self.centre + grid

    box = CropBox(150.0, 100.0, 100.0)  # centre (200, 150); window side 200 -> 64 px, 3.125 image px per window px
    ref = WindowReference(Fake((32.0, 32.0)), window_scale=2.0, input_size=S)
    pts = ref(image, box)
    assert seen[0].shape == (S, S, 3) and seen[0].dtype == np.uint8 and seen[0][32, 32, 0] == 222
    np.testing.assert_allclose(pts, 200.0 - 100.0 + (32.0 + grid) * 200.0 / S + [0.0, -50.0], atol=1e-9)
    assert WindowReference(Fake((4.0, 4.0)), window_scale=2.0, input_size=S)(image, box) is None  # another face
    assert WindowReference(lambda w: None, input_size=S)(image, box) is None


# ------------------------------------------------------------------------ the pipeline, one pass
class _Backend:
    """An image-dependent stand-in for a network: neutral face + a fixed linear map of 4 x 4 pooled colours.

    Its fits move with the image (so the tracker's ROI and the filter have something to do) and it
    is cheap; the real network is exercised by the CLI tests.
    """

    def __init__(self, layout, size: int = 32) -> None:
        from mlanet.params import FaceParams
        from mlanet.preprocess import PreprocessCfg

        self.size = size
        from mlanet.model_metadata import ModelMetadata

        self.metadata = ModelMetadata(layout=layout, preprocess=PreprocessCfg(input_size=size), source="test")
        self.neutral = FaceParams.neutral(layout, batch_size=1, depth_m=1.0).to_flat().numpy()
        self.W = np.random.default_rng(0).normal(0.0, 0.01, (48, layout.total))

    def __call__(self, images):
        x = np.asarray(images, np.float64)
        B, S = x.shape[0], self.size
        pooled = x.reshape(B, 3, 4, S // 4, 4, S // 4).mean(axis=(3, 5)).reshape(B, 48) - 0.5
        return (self.neutral + pooled @ self.W).astype(np.float32)

    def warmup(self) -> None:
        pass

    def close(self) -> None:
        pass


class _Detector:
    def __call__(self, image):
        from mlanet.edge.types import Detection

        return [Detection(box=np.array([40.0, 36.0, 88.0, 92.0]), score=0.9)]


def _frames(n: int = 9) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (8, 8, 3)).astype(np.uint8).repeat(16, axis=0).repeat(16, axis=1)
    return [np.roll(base, (t, 2 * t), axis=(0, 1)) for t in range(n)]


def _pipeline(face_model, enabled: bool):
    from mlanet.edge.filters import FilterCfg
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg

    cfg = PipelineCfg(filter=FilterCfg(enabled=enabled), render_mode=None, overlays=())
    return FacePipeline(_Backend(face_model.layout), face_model, cfg, detector=_Detector())


def test_one_pass_gives_the_filter_off_fits(synthetic_model) -> None:
    """The unfiltered landmarks of a filter-on pass equal those of a pass with the filter off."""
    from mlanet.edge.frames import ArraySource

    frames = _frames()
    seen = []

    def reference(image, box):
        seen.append(box)
        return FACE468 if len(seen) % 4 else None

    tracks, info = collect_tracks(ArraySource(frames, fps=25.0), _pipeline(synthetic_model, True), reference)
    assert info["frames"] == len(frames) and info["scene_cuts"] == []
    off = []
    _pipeline(synthetic_model, False).run(ArraySource(frames, fps=25.0), lambda r: off.append(r))
    expected = {(f.track_id, r.frame.index): f.landmarks2d for r in off for f in r.faces}
    got = {(tid, tf.frame): tf for tid, seq in tracks.items() for tf in seq}
    assert set(got) == set(expected) and len(got) >= len(frames)
    for key, tf in got.items():
        np.testing.assert_allclose(tf.unfiltered, expected[key], atol=2e-3)
    # the filter did something, the reference was called once per face and frame, boxes recorded
    assert max(np.abs(tf.filtered - tf.unfiltered).max() for tf in got.values()) > 0.05
    assert len(seen) == len(got) and sum(tf.reference is None for tf in got.values()) == len(got) // 4
    assert len({tf.box for tf in got.values()}) > len(frames) // 2  # the tracker's ROI follows the (raw) fits
    with pytest.raises(ValueError, match="filter enabled"):
        collect_tracks(ArraySource(frames), _pipeline(synthetic_model, False), reference)


def test_evaluate_clip_names_a_missing_video(synthetic_model, tmp_path: Path) -> None:
    with pytest.raises(MLANetError, match="nope.mp4"):
        evaluate_clip(tmp_path / "nope.mp4", None, synthetic_model, None)


# ------------------------------------------------------------------------ CLI
def test_cli_missing_video_is_named_before_the_model(tmp_path: Path, capsys) -> None:
    rc = main(["eval", "jitter", str(tmp_path / "gone.mp4"), "--json", str(tmp_path / "j.json"), "--untrained", "mlanet_mobile"])
    assert rc == 2 and "gone.mp4" in capsys.readouterr().err


def test_cli_without_weights_says_so(tmp_path: Path, synthetic_data, capsys, monkeypatch) -> None:
    import mlanet.weights

    fm = synthetic_data.save(tmp_path / "synthetic.mlface.npz")
    video = tmp_path / "frames"
    video.mkdir()
    monkeypatch.setattr(mlanet.weights, "default_weights_path", lambda name: None)  # an install without weights
    rc = main(["eval", "jitter", str(video), "--json", str(tmp_path / "j.json"), "--face-model", str(fm)])
    assert rc == 2 and "--weights FILE" in capsys.readouterr().err
    rc = main(["eval", "jitter", str(video), "--json", str(tmp_path / "j.json"), "--untrained", "mlanet_mobile",
               "--static-speed", "0"])
    assert rc == 2 and "--static-speed" in capsys.readouterr().err


@pytest.mark.assets
@pytest.mark.slow
def test_cli_on_the_shared_clip(shared: Path, tmp_path: Path, synthetic_data, capsys) -> None:
    pytest.importorskip("mediapipe")
    fm = synthetic_data.save(tmp_path / "synthetic.mlface.npz")
    out = tmp_path / "jitter.json"
    rc = main(["eval", "jitter", str(shared / "data/video/obama_720p.mp4"), "--untrained", "mlanet_mobile",
               "--face-model", str(fm), "--max-frames", "8", "--json", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out.read_text())
    clip = res["clips"][0]
    assert clip["frames"] == 8 and clip["n_tracks"] == 1 and clip["track_frames"] == 8
    assert clip["tracks"][0]["frames_with_reference"] >= 6  # MediaPipe finds the face around the track's crop
    assert clip["valid_frames"] + sum(clip["skipped"].values()) == clip["track_frames"]
    assert res["weights"]["untrained"] is True and "near-static" in res["protocol"]
    assert res["reference"]["name"].startswith("MediaPipe") and len(clip["sha256"]) == 64
    assert "obama_720p.mp4" in printed.out
