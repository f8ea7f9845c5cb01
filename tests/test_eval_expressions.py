"""Tests of the expression-tracking benchmark (mlanet.edge.evaluation.expressions) and ``mlanet eval expressions``.

The MediaPipe-derived measures are checked on synthetic point sets with known gaps and
apertures (and their invariance to scale, rotation and translation); the correlation summary on
perfect, inverse, constant and too-short series; the video loop on the real pipeline, tracker and
filter with a cheap stand-in network and fake detector / reference; the CLI on bad inputs; the
``assets`` test runs the command on the shared clip with an untrained network (no target values:
the network is being trained).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mlanet.cli import main
from mlanet.errors import MLANetError
from mlanet.edge.evaluation.expressions import (
    MIN_FRAMES,
    SKIP_REASONS,
    TARGETS,
    FaceSample,
    clip_record,
    collect_samples,
    correlation_summary,
    distribution,
    expression_summary,
    eye_apertures,
    face_height,
    lip_gap,
    mean_eye_aperture,
    out_of_range,
    pearson,
    target_indices,
)

#: 55 expression names with the three the benchmark reads at arbitrary positions.
NAMES = [f"shape{k:02d}" for k in range(55)]
NAMES[7], NAMES[20], NAMES[21] = "jawOpen", "eyeBlink_L", "eyeBlink_R"


def face_points(gap: float = 0.1, left: float = 0.3, right: float = 0.2, height: float = 100.0) -> np.ndarray:
    """(468, 2) points: face height ``height``, lip gap ``gap``, eye apertures ``left`` / ``right`` (eye width 20)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(-50.0, 50.0, (468, 2))
    p[10], p[152] = (0.0, 0.0), (0.0, height)
    p[13], p[14] = (1.0, 60.0), (1.0, 60.0 + gap * height)
    # subject's left eye (image right): corners 263 (outer), 362 (inner); lids 386 (upper), 374 (lower)
    p[263], p[362] = (40.0, 40.0), (20.0, 40.0)
    p[386], p[374] = (30.0, 40.0 - 10.0 * left), (30.0, 40.0 + 10.0 * left)
    # subject's right eye (image left): corners 33 (outer), 133 (inner); lids 159 (upper), 145 (lower)
    p[33], p[133] = (-40.0, 40.0), (-20.0, 40.0)
    p[159], p[145] = (-30.0, 40.0 - 10.0 * right), (-30.0, 40.0 + 10.0 * right)
    return p


# ------------------------------------------------------------------------------ the measures
def test_measures_of_known_points() -> None:
    p = face_points(gap=0.1, left=0.3, right=0.2)
    assert float(face_height(p)) == pytest.approx(100.0)
    assert float(lip_gap(p)) == pytest.approx(0.1)
    np.testing.assert_allclose(eye_apertures(p), [0.3, 0.2])
    assert float(mean_eye_aperture(p)) == pytest.approx(0.25)
    closed = face_points(gap=0.0, left=0.0, right=0.0)
    assert float(lip_gap(closed)) == 0.0 and float(mean_eye_aperture(closed)) == 0.0
    # batches: (N, 468, 2) -> (N,) and (N, 2); a third coordinate (MediaPipe z) is ignored
    batch = np.stack([face_points(gap=g, left=a, right=a) for g, a in ((0.0, 0.1), (0.2, 0.3), (0.05, 0.25))])
    np.testing.assert_allclose(lip_gap(batch), [0.0, 0.2, 0.05])
    np.testing.assert_allclose(eye_apertures(batch), [[0.1, 0.1], [0.3, 0.3], [0.25, 0.25]])
    with_z = np.concatenate([batch, np.ones((3, 468, 1))], axis=-1)
    np.testing.assert_allclose(lip_gap(with_z), lip_gap(batch))


def test_measures_do_not_depend_on_scale_rotation_or_position() -> None:
    p = face_points(gap=0.13, left=0.27, right=0.31)
    th = math.radians(17.0)
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    for scale in (0.25, 3.7, 40.0):
        q = p @ R.T * scale + [512.0, -33.0]
        assert float(lip_gap(q)) == pytest.approx(0.13, rel=1e-12)
        np.testing.assert_allclose(eye_apertures(q), [0.27, 0.31], rtol=1e-12)
        assert float(face_height(q)) == pytest.approx(100.0 * scale)


def test_degenerate_and_wrong_shapes() -> None:
    p = face_points()
    p[152] = p[10]  # zero face height
    p[362] = p[263]  # zero left-eye width
    assert np.isnan(lip_gap(p)) and np.isnan(eye_apertures(p)[0]) and np.isfinite(eye_apertures(p)[1])
    with pytest.raises(ValueError, match="468"):
        lip_gap(np.zeros((68, 2)))


# ---------------------------------------------------------------------- the correlation summary
def test_pearson_perfect_inverse_constant_and_too_few() -> None:
    x = np.linspace(0.0, 1.0, 30)
    assert pearson(x, 2.0 * x + 1.0) == (pytest.approx(1.0), None)
    assert pearson(x, -0.5 * x)[0] == pytest.approx(-1.0)
    assert pearson(x, np.sin(7 * x))[0] == pytest.approx(np.corrcoef(x, np.sin(7 * x))[0, 1])
    r, reason = pearson(x, np.full(30, 0.047), names=("jawOpen", "the lip gap"))
    assert r is None and reason == "the lip gap is constant over the 30 frames"
    # float32 rounding of a constant output through a filter is still constant
    wobble = (np.float32(0.047) + np.float32(1e-9) * np.arange(30)).astype(np.float32)
    assert pearson(wobble, x, names=("eyeBlink", "y"))[1] == "eyeBlink is constant over the 30 frames"
    r, reason = pearson(x[: MIN_FRAMES - 1], x[: MIN_FRAMES - 1])
    assert r is None and reason == f"too few frames: {MIN_FRAMES - 1} < {MIN_FRAMES}"
    assert pearson(x[:MIN_FRAMES], x[:MIN_FRAMES])[0] == pytest.approx(1.0)
    # non-finite pairs are dropped before counting
    y = x.copy()
    y[::2] = np.nan
    assert pearson(x, y) == (pytest.approx(1.0), None)
    y[1:25:2] = np.inf
    assert pearson(x, y)[1] == "too few frames: 3 < 10"
    with pytest.raises(ValueError, match="lengths"):
        pearson(x, x[:-1])


def test_correlation_summary_is_json_ready_and_passes_or_fails() -> None:
    x = np.linspace(0.0, 1.0, 40)
    good = correlation_summary(x, x ** 2, x_name="jawOpen", y_name="the lip gap", target=0.8)
    assert good["r"] > 0.95 and good["pass"] is True and good["n"] == 40 and good["reason"] is None
    bad = correlation_summary(x, -x, target=0.8)
    assert bad["r"] == pytest.approx(-1.0) and bad["pass"] is False
    const = correlation_summary(np.zeros(40), x, x_name="jawOpen", target=0.8)
    assert const == {"r": None, "n": 40, "reason": "jawOpen is constant over the 40 frames", "target": 0.8, "pass": None}
    short = correlation_summary(x[:3], x[:3], target=0.6)
    assert short["r"] is None and "too few" in short["reason"] and short["pass"] is None
    assert correlation_summary(x, x)["pass"] is None  # no target
    json.dumps([good, bad, const, short], allow_nan=False)


def test_distribution_and_out_of_range() -> None:
    d = distribution(np.arange(101, dtype=float))
    assert d["n"] == 101 and d["min"] == 0.0 and d["max"] == 100.0 and d["p5"] == pytest.approx(5.0)
    assert d["p50"] == pytest.approx(50.0) and d["p95"] == pytest.approx(95.0) and d["mean"] == pytest.approx(50.0)
    empty = distribution([np.nan])
    assert empty["n"] == 0 and all(v is None for k, v in empty.items() if k != "n")
    w = np.full((4, 55), 0.5)
    assert out_of_range(w)["fraction"] == 0.0
    w[0, 3], w[2, 3], w[1, 9] = -0.01, 1.2, 1.0  # 1.0 is inside
    o = out_of_range(w)
    assert o["fraction"] == pytest.approx(2 / 220) and o["n_below_0"] == 1 and o["n_above_1"] == 1
    assert o["shapes_out_of_range"] == 1 and o["min"] == -0.01 and o["max"] == 1.2
    assert out_of_range(np.zeros((0, 55)))["fraction"] is None


def test_target_indices_by_name_or_arkit_name() -> None:
    assert target_indices(NAMES) == {"jawOpen": 7, "eyeBlink_L": 20, "eyeBlink_R": 21}
    arkit_names = ["x", "eyeBlinkRight", "jawOpen", "eyeBlinkLeft"]
    assert target_indices(arkit_names) == {"jawOpen": 2, "eyeBlink_L": 3, "eyeBlink_R": 1}
    mapped = target_indices(["a", "b", "jawOpen"], {"a": "eyeBlinkLeft", "b": "eyeBlinkRight"})
    assert mapped == {"jawOpen": 2, "eyeBlink_L": 0, "eyeBlink_R": 1}
    with pytest.raises(MLANetError, match="face model synthetic-0 has no expression shape.*eyeBlink_L, eyeBlink_R"):
        target_indices(["jawOpen", "x"], source="face model synthetic-0")


def _series(n: int = 60, seed: int = 0):
    """Weights that follow the reference exactly: jawOpen = 3 * gap, blink = 1 - aperture / 0.3."""
    rng = np.random.default_rng(seed)
    gaps, left, right = rng.uniform(0.0, 0.25, n), rng.uniform(0.0, 0.3, n), rng.uniform(0.0, 0.3, n)
    refs = np.stack([face_points(g, a, b) * s for g, a, b, s in zip(gaps, left, right, rng.uniform(0.5, 3.0, n))])
    expr = rng.uniform(0.0, 0.2, (n, 55))
    expr[:, 7] = 3.0 * gaps
    expr[:, 20], expr[:, 21] = 1.0 - left / 0.3, 1.0 - right / 0.3
    return expr, refs


def test_expression_summary_of_a_perfect_and_a_reversed_tracker() -> None:
    expr, refs = _series()
    s = expression_summary(expr, refs, NAMES)
    c = s["correlations"]
    assert c["jaw_open_vs_lip_gap"]["r"] == pytest.approx(1.0) and c["jaw_open_vs_lip_gap"]["pass"] is True
    # the mean blink follows the mean closure exactly; each eye its own
    assert c["eye_blink_vs_eye_closure"]["r"] == pytest.approx(1.0)
    assert c["eye_blink_per_eye"]["L"]["r"] == pytest.approx(1.0) and c["eye_blink_per_eye"]["R"]["r"] == pytest.approx(1.0)
    assert s["targets"] == {"jaw_open_vs_lip_gap": True, "eye_blink_vs_eye_closure": True, "out_of_range_zero": True}
    assert s["frames_used"] == 60 and s["warnings"] == []
    assert s["distributions"]["jawOpen"]["max"] == pytest.approx(expr[:, 7].max())
    assert s["distributions"]["eyeBlink"]["mean"] == pytest.approx(expr[:, 20:22].mean())
    assert s["unfiltered"] == s["correlations"]  # no unfiltered series given: the same
    # the diagnostic: jawOpen leads the lip gap's list, the two blinks the closure's (the rest is noise)
    top_gap = s["shapes_following"]["lip_gap"]
    assert top_gap[0]["shape"] == NAMES[7] and top_gap[0]["r"] == pytest.approx(1.0) and len(top_gap) == 5
    assert [d["r"] for d in top_gap] == sorted((d["r"] for d in top_gap), reverse=True)
    assert {d["shape"] for d in s["shapes_following"]["eye_closure"][:2]} == {NAMES[20], NAMES[21]}
    # a mouth opened by another shape: jawOpen misses, the diagnostic names the shape that follows
    other = expr.copy()
    other[:, 7], other[:, 40] = expr[:, 40], expr[:, 7]
    o = expression_summary(other, refs, NAMES)
    assert o["correlations"]["jaw_open_vs_lip_gap"]["pass"] is False
    assert o["shapes_following"]["lip_gap"][0]["shape"] == NAMES[40]
    # eyes swapped (a mirrored blink) and a jaw that closes when the mouth opens
    rev = expr.copy()
    rev[:, 7] = 0.8 - expr[:, 7]
    rev[:, 20], rev[:, 21] = expr[:, 21], expr[:, 20]
    rev[0, 30] = 1.5
    r = expression_summary(rev, refs, NAMES, unfiltered=expr)
    assert r["correlations"]["jaw_open_vs_lip_gap"]["r"] == pytest.approx(-1.0)
    assert r["targets"]["jaw_open_vs_lip_gap"] is False and r["targets"]["out_of_range_zero"] is False
    assert abs(r["correlations"]["eye_blink_per_eye"]["L"]["r"]) < 0.5
    assert r["unfiltered"]["jaw_open_vs_lip_gap"]["r"] == pytest.approx(1.0)
    assert r["out_of_range"]["filtered"]["fraction"] == pytest.approx(1 / expr.size)
    assert r["out_of_range"]["unfiltered"]["fraction"] == 0.0
    json.dumps([s, r], allow_nan=False)
    # a mouth that never opens: r is defined but the clip does not test jawOpen (a warning says so)
    still = refs.copy()
    still[:, 14] = still[:, 13] + (still[:, 152] - still[:, 10]) * np.linspace(0.0, 0.01, len(refs))[:, None]
    w = expression_summary(expr, still, NAMES)
    assert w["correlations"]["jaw_open_vs_lip_gap"]["r"] is not None and len(w["warnings"]) == 1
    assert w["warnings"][0].startswith("jaw_open_vs_lip_gap: the lip gap hardly varies")


def test_expression_summary_of_a_constant_network_and_of_too_few_frames() -> None:
    expr, refs = _series(30)
    const = np.full_like(expr, 0.047)
    s = expression_summary(const, refs, NAMES)
    for k in TARGETS:
        assert s["correlations"][k]["r"] is None and "constant" in s["correlations"][k]["reason"]
        assert s["targets"][k] is None
    assert len(s["warnings"]) == 2 and s["targets"]["out_of_range_zero"] is True
    few = expression_summary(expr[:4], refs[:4], NAMES)
    assert few["correlations"]["jaw_open_vs_lip_gap"]["reason"] == "too few frames: 4 < 10"
    none = expression_summary(np.zeros((0, 55)), np.zeros((0, 468, 2)), NAMES)
    assert none["frames_used"] == 0 and none["distributions"]["jawOpen"]["n"] == 0
    assert none["out_of_range"]["filtered"]["fraction"] is None and none["targets"]["out_of_range_zero"] is None
    assert s["shapes_following"]["lip_gap"] == [] and few["shapes_following"]["lip_gap"] == []  # constant; too few
    assert none["shapes_following"] == {"lip_gap": [], "eye_closure": []}
    json.dumps([s, few, none], allow_nan=False)


# --------------------------------------------------------------------------- the video loop
class _Backend:
    """A cheap image-dependent stand-in network: neutral face + a fixed linear map of 4 x 4 pooled colours."""

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
    """One face, or two from frame ``two_from`` on."""

    def __init__(self, two_from: int | None = None) -> None:
        self.two_from, self.calls = two_from, 0

    def __call__(self, image):
        from mlanet.edge.types import Detection

        self.calls += 1
        faces = [Detection(box=np.array([40.0, 36.0, 88.0, 92.0]), score=0.9)]
        if self.two_from is not None and self.calls > self.two_from:
            faces.append(Detection(box=np.array([120.0, 30.0, 160.0, 80.0]), score=0.8))
        return faces


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 255, (8, 12, 3)).astype(np.uint8).repeat(16, axis=0).repeat(16, axis=1)
    return [np.roll(base, (t, 2 * t), axis=(0, 1)) for t in range(n)]


def _pipeline(face_model, detector):
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.tracking import TrackerCfg

    # detections in the frame that schedules them, so "two faces from the 4th detector call" is frame 3
    # (background re-detections would add the second face one frame later; tests/test_tracking.py covers that)
    cfg = PipelineCfg(tracker=TrackerCfg(detect_every=1, detect_in_background=False), render_mode=None, overlays=())
    return FacePipeline(_Backend(face_model.layout), face_model, cfg, detector=detector)


def test_collect_samples_every_max_frames_and_skips(synthetic_model) -> None:
    from mlanet.edge.frames import ArraySource

    seen = []

    def reference(image, box):
        seen.append(box)
        return None if len(seen) == 2 else face_points(gap=0.01 * len(seen))

    pipe = _pipeline(synthetic_model, _Detector())
    samples, info = collect_samples(ArraySource(_frames(20), fps=25.0), pipe, reference, every=3, max_frames=5)
    assert info["frames"] == 5 and [s.frame for s in samples] == [0, 3, 6, 9, 12]
    assert info["skipped"] == {"no_face": 0, "multiple_faces": 0, "no_reference": 1} and set(info["skipped"]) == set(SKIP_REASONS)
    assert [s.reference is None for s in samples] == [False, True, False, False, False]
    K = synthetic_model.n_expression
    s0 = samples[0]
    assert s0.expression.shape == (K,) and s0.raw_expression.shape == (K,) and s0.faces_in_frame == 1
    # the filter runs (filtered and unfiltered weights differ once the track has history)
    assert any(np.abs(s.expression - s.raw_expression).max() > 0 for s in samples[1:])
    # two faces from the 4th frame on: those frames are skipped and MediaPipe is not asked about them
    seen.clear()
    pipe = _pipeline(synthetic_model, _Detector(two_from=3))
    samples, info = collect_samples(ArraySource(_frames(6), fps=25.0), pipe, lambda im, box: face_points())
    assert info["frames"] == 6 and info["frames_with_face"] == 6
    assert info["skipped"]["multiple_faces"] == 3 and len(samples) == 3 + 2 * 3 and len(info["tracks"]) == 2
    with pytest.raises(ValueError, match="every"):
        collect_samples([], pipe, None, every=0)


def test_mirrored_frames_flip_left_right_and_keep_the_rest() -> None:
    from mlanet.edge.evaluation.expressions import mirrored_frames
    from mlanet.edge.types import Frame

    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    frames = [Frame(img, 4, 160_000_000, "clip.mp4", yuv420=np.zeros((3, 3), np.uint8))]
    (m,) = list(mirrored_frames(frames))
    assert np.array_equal(m.image, img[:, ::-1]) and m.image.flags["C_CONTIGUOUS"]
    assert (m.index, m.t_capture_ns, m.source, m.yuv420) == (4, 160_000_000, "clip.mp4", None)
    assert np.array_equal(frames[0].image, np.arange(18, dtype=np.uint8).reshape(2, 3, 3))  # input untouched


def test_clip_record_schema() -> None:
    expr, refs = _series(24)
    samples = [FaceSample(t, 0, 1, expr[t], expr[t] + 0.01, refs[t]) for t in range(20)]
    samples += [FaceSample(20, 0, 1, expr[20], expr[20], None)]  # no reference
    samples += [FaceSample(21, k, 2, expr[21 + k], expr[21 + k], None) for k in range(2)]  # two faces
    info = {"frames": 23, "frames_with_face": 22, "skipped": {"no_face": 1, "multiple_faces": 1, "no_reference": 1},
            "tracks": [0, 1], "scene_cuts": []}
    rec = clip_record(samples, info, NAMES)
    json.dumps(rec, allow_nan=False)
    assert rec["frames"] == 23 and rec["frames_used"] == 20 and rec["n_tracks"] == 2 and rec["tracks_used"] == [0]
    assert set(rec) >= {"skipped", "correlations", "unfiltered", "distributions", "out_of_range", "targets", "warnings",
                        "records", "scene_cuts"}
    assert set(rec["correlations"]) == {"jaw_open_vs_lip_gap", "eye_blink_vs_eye_closure", "eye_blink_per_eye"}
    for k, target in TARGETS.items():
        assert set(rec["correlations"][k]) == {"r", "n", "reason", "target", "pass"} and rec["correlations"][k]["target"] == target
    assert set(rec["distributions"]) == {"jawOpen", "eyeBlink", "eyeBlink_L", "eyeBlink_R", "lip_gap", "eye_aperture"}
    assert set(rec["targets"]) == {"jaw_open_vs_lip_gap", "eye_blink_vs_eye_closure", "out_of_range_zero"}
    assert rec["out_of_range"]["filtered"]["n_values"] == 23 * 55  # every fitted face, not only the frames used
    assert rec["warnings"][0].startswith("1 frame(s) with more than one fitted face skipped")
    r0 = rec["records"][0]
    assert set(r0) == {"frame", "track", "jawOpen", "eyeBlink_L", "eyeBlink_R", "lip_gap", "eye_aperture_L", "eye_aperture_R"}
    assert r0["jawOpen"] == pytest.approx(expr[0, 7]) and r0["lip_gap"] == pytest.approx(float(lip_gap(refs[0])))
    assert len(rec["records"]) == 20


# ------------------------------------------------------------------------------------ CLI
def _noise_clip(path: Path, n: int = 6) -> Path:
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        for _ in range(n):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


@pytest.fixture()
def named_face_model(tmp_path: Path) -> Path:
    """The synthetic face model with its first three shapes named like the ICT ones the benchmark reads."""
    from mlanet.morphable.synthetic import make_synthetic_face_model

    data = make_synthetic_face_model()
    names = ["jawOpen", "eyeBlink_L", "eyeBlink_R"] + data.header["expression_names"][3:]
    data.header["expression_names"] = names
    data.header["expression_arkit"] = {n: None for n in names}
    return data.save(tmp_path / "named.mlface.npz")


def _assert_one_line_error(rc: int, err: str, name: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], err


def test_cli_bad_inputs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "e.json"
    rc = main(["eval", "expressions", str(tmp_path / "gone.mp4"), "--json", str(out), "--untrained", "mlanet_mobile"])
    _assert_one_line_error(rc, capsys.readouterr().err, "gone.mp4")
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    rc = main(["eval", "expressions", str(text), "--json", str(out), "--untrained", "mlanet_mobile"])
    _assert_one_line_error(rc, capsys.readouterr().err, "notes.mp4")
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "still.jpg")
    rc = main(["eval", "expressions", str(tmp_path / "still.jpg"), "--json", str(out), "--untrained", "mlanet_mobile"])
    _assert_one_line_error(rc, capsys.readouterr().err, "still.jpg")
    with pytest.raises(SystemExit) as exc:  # argparse: exit 2
        main(["eval", "expressions", str(text), "--json", str(out), "--every", "0"])
    assert exc.value.code == 2 and "--every" in capsys.readouterr().err
    assert not out.exists()


def test_cli_no_face_and_wrong_face_model(tmp_path: Path, named_face_model: Path, synthetic_data, capsys) -> None:
    pytest.importorskip("mediapipe")
    clip = _noise_clip(tmp_path / "noise.mp4")
    out = tmp_path / "e.json"
    rc = main(["eval", "expressions", str(clip), "--json", str(out), "--untrained", "mlanet_mobile",
               "--face-model", str(named_face_model)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, "noise.mp4")
    assert "no face found in any of the 6 frame(s)" in err
    plain = synthetic_data.save(tmp_path / "plain.mlface.npz")  # shapes named expr_00 ...
    rc = main(["eval", "expressions", str(clip), "--json", str(out), "--untrained", "mlanet_mobile",
               "--face-model", str(plain)])
    err = capsys.readouterr().err
    _assert_one_line_error(rc, err, "jawOpen")
    assert "synthetic-0" in err and not out.exists()


@pytest.mark.assets
def test_cli_on_the_shared_clip(shared: Path, ict_model_file: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("mediapipe")
    out = tmp_path / "expressions.json"
    rc = main(["eval", "expressions", str(shared / "data/video/obama_720p.mp4"), "--untrained", "mlanet_mobile_lite",
               "--face-model", str(ict_model_file), "--max-frames", "12", "--every", "2", "--json", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    res = json.loads(text)
    assert res["benchmark"] == "video expression tracking" and res["weights"]["untrained"] is True
    assert res["environment"]["versions"]["mediapipe"] and "commit" in res["environment"]
    assert res["pipeline"]["every"] == 2 and res["pipeline"]["max_frames"] == 12
    assert "refine_landmarks=False" in res["reference"]["mesh"]  # the default measure: the plain face mesh
    clip = res["clips"][0]
    assert clip["frames"] == 12 and len(clip["sha256"]) == 64 and clip["every"] == 2
    assert clip["frames_used"] >= 10  # MediaPipe finds the one face around the track's crop
    assert clip["frames_used"] + sum(clip["skipped"].values()) == clip["frames"]
    assert [r["frame"] for r in clip["records"]][:3] == [0, 2, 4]
    for block in (clip["correlations"], clip["unfiltered"]):
        for k in TARGETS:
            c = block[k]
            assert (c["r"] is not None and -1.0 <= c["r"] <= 1.0) or (c["r"] is None and c["reason"])
    for d in clip["distributions"].values():
        assert all(v is None or math.isfinite(v) for v in d.values())
    assert 0.0 < clip["distributions"]["lip_gap"]["max"] < 0.5 and 0.05 < clip["distributions"]["eye_aperture"]["p50"] < 0.6
    frac = clip["out_of_range"]["filtered"]["fraction"]
    assert frac is not None and 0.0 <= frac <= 1.0
    assert "obama_720p.mp4" in printed.out and "jawOpen r" in printed.out


@pytest.mark.assets
def test_cli_refined_reference_mesh_is_used_and_recorded(shared: Path, ict_model_file: Path, tmp_path: Path,
                                                         capsys) -> None:
    """--reference-mesh refined measures with MediaPipe's attention mesh (lids that meet on a closed eye) and
    says so in the record; the 468 points keep their indices, so the measures stay comparable."""
    pytest.importorskip("mediapipe")
    out = tmp_path / "refined.json"
    rc = main(["eval", "expressions", str(shared / "data/video/obama_720p.mp4"), "--untrained", "mlanet_mobile_lite",
               "--face-model", str(ict_model_file), "--max-frames", "6", "--every", "3", "--reference-mesh", "refined",
               "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert "refine_landmarks=True" in res["reference"]["mesh"]
    clip = res["clips"][0]
    assert clip["frames_used"] >= 5 and 0.05 < clip["distributions"]["eye_aperture"]["p50"] < 0.6
    with pytest.raises(SystemExit) as exc:  # argparse: a usage error naming the choices
        main(["eval", "expressions", str(shared / "data/video/obama_720p.mp4"), "--reference-mesh", "iris",
              "--json", str(out)])
    assert exc.value.code == 2 and "'unrefined', 'refined'" in capsys.readouterr().err


@pytest.mark.assets
def test_cli_mirror_flips_the_clip_for_pipeline_and_reference(shared: Path, ict_model_file: Path, tmp_path: Path,
                                                               capsys) -> None:
    """--mirror: the pipeline and MediaPipe see the frames flipped and the record says so; the lip gap (a mirror-
    invariant measure) stays about as on the clip."""
    pytest.importorskip("mediapipe")
    runs = {}
    for mirror in (False, True):
        out = tmp_path / f"mirror_{mirror}.json"
        argv = ["eval", "expressions", str(shared / "data/video/obama_720p.mp4"), "--untrained", "mlanet_mobile_lite",
                "--face-model", str(ict_model_file), "--max-frames", "6", "--every", "4", "--json", str(out)]
        rc = main(argv + (["--mirror"] if mirror else []))
        printed = capsys.readouterr()
        assert rc == 0, printed.err
        runs[mirror] = json.loads(out.read_text())
        assert runs[mirror]["pipeline"]["mirrored"] is mirror and runs[mirror]["clips"][0]["mirrored"] is mirror
    assert "(mirrored)" in printed.out
    plain, flipped = (runs[m]["clips"][0]["records"] for m in (False, True))
    assert [r["frame"] for r in plain] == [r["frame"] for r in flipped] and len(plain) >= 5
    gap = np.array([[r["lip_gap"] for r in recs] for recs in (plain, flipped)])
    assert not np.array_equal(gap[0], gap[1])  # MediaPipe saw other pixels ...
    assert np.median(np.abs(gap[0] - gap[1])) < 0.015  # ... of the same mouth (gap 0.02-0.13 on this clip; MediaPipe
    # itself is not exactly mirror-symmetric: single frames differ by up to 0.04)
