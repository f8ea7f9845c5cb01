"""The edge pipeline with a fake source, tracker, backend and renderer: stage order, statistics,
stale frames dropped on live sources, clean shutdown."""

import time

import numpy as np
import pytest

from mlanet.edge.pipeline import FacePipeline, PipelineCfg
from mlanet.edge.timing import STAGES, peak_rss_mib, rss_mib
from mlanet.model_metadata import ModelMetadata
from mlanet.edge.types import Frame, TrackROI
from mlanet.params import FaceParams
from mlanet.preprocess import CropBox, PreprocessCfg

W, H = 160, 120


class FakeSource:
    name, fps, is_live, stopped_early = "fake", 30.0, False, None
    independent_frames, damaged, lost_frames = False, None, ()  # the rest of what a FrameSource says

    def __init__(self, n=10):
        self.n_frames = n
        self.closed = False

    @property
    def size(self):
        return (W, H)

    def __iter__(self):
        for i in range(self.n_frames):
            img = np.full((H, W, 3), (i * 20) % 256, np.uint8)
            yield Frame(img, i, int(i * 1e9 / self.fps), self.name)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FakeTracker:
    def __init__(self, log, n_faces=2):
        self.log, self.n_faces = log, n_faces
        self.fits = []
        self.closed = False
        self.last_detected = True
        self.last_scene_cut = False

    def begin(self, frame):
        self.log.append("detect_track")
        return [TrackROI(t, CropBox(20.0 + 40 * t, 30.0, 48.0), "detector") for t in range(self.n_faces)]

    def end(self, fits):
        self.log.append("track_end")
        self.fits.append(fits)

    def reset(self):
        self.log.append("track_reset")

    def close(self):
        self.closed = True


class FakeBackend:
    def __init__(self, log, layout, delay_s=0.0):
        self.log, self.layout, self.delay_s = log, layout, delay_s
        pre = PreprocessCfg(input_size=32)
        self.metadata = ModelMetadata(layout=layout, preprocess=pre, source="fake")
        self.batches = []

    def __call__(self, images):
        self.log.append("infer")
        self.batches.append(images.shape)
        if self.delay_s:
            time.sleep(self.delay_s)
        return FaceParams.neutral(self.layout, batch_size=images.shape[0], depth_m=1.0).to_flat().numpy()

    def close(self):
        pass


class FakeRenderer:
    def __init__(self, log, w, h):
        self.log, self.width, self.height = log, w, h
        self.calls = []

    def render(self, image, faces, camera, mode, overlays, alpha):
        self.log.append("render")
        self.calls.append((len(faces), mode, tuple(overlays)))
        return 255 - image


def _pipeline(model, log, **kw):
    layout = model.layout
    backend = FakeBackend(log, layout, kw.pop("delay_s", 0.0))
    tracker = FakeTracker(log, kw.pop("n_faces", 2))
    renderers = []

    def factory(w, h, topology):
        renderers.append(FakeRenderer(log, w, h))
        renderers[-1].topology = topology
        return renderers[-1]

    p = FacePipeline(backend, model, PipelineCfg(**kw), tracker=tracker, renderer_factory=factory)
    return p, backend, tracker, renderers


def test_stage_order_results_and_stats(synthetic_model):
    log = []
    p, backend, tracker, renderers = _pipeline(synthetic_model, log)
    sink_log = []
    n = p.run(FakeSource(6), sink=lambda r: sink_log.append(r))
    assert n == 6 and p.frames_done == 6
    assert log[:5] == ["detect_track", "infer", "track_end", "render", "detect_track"]
    r = sink_log[-1]
    assert [f.track_id for f in r.faces] == [0, 1]
    f = r.faces[0]
    V = synthetic_model.n_vertices
    assert f.vertices.shape == (V, 3) and f.landmarks2d.shape == (68, 2) and f.params.shape == (synthetic_model.layout.total,)
    # the untrained prior puts the face in its crop: landmarks lie inside the box in the full frame
    assert (f.landmarks2d[:, 0] > f.box.x0).all() and (f.landmarks2d[:, 0] < f.box.x0 + f.box.size).all()
    assert backend.batches[0] == (2, 3, 32, 32)  # all faces of a frame in one batch
    assert set(tracker.fits[0]) == {0, 1} and tracker.fits[0][0].shape == (68, 2)
    assert r.rendered is not None and renderers[0].calls[0] == (2, "shaded", ("landmarks",))
    assert set(r.stage_ms) == set(STAGES)  # decode and encode come from run()
    stats = p.stats.summary()
    assert stats["frames"] == 6 and all(stats["stages"][s]["n"] == 4 for s in STAGES)  # 2 warm-up frames excluded
    assert "latency_ms" not in stats  # file sources have no capture latency


def test_no_render_and_no_faces(synthetic_model):
    log = []
    p, backend, tracker, renderers = _pipeline(synthetic_model, log, render_mode=None, n_faces=0)
    out = []
    p.run(FakeSource(3), sink=out.append)
    assert not renderers and not backend.batches and all(r.faces == [] and r.rendered is None for r in out)
    assert "render" not in out[0].stage_ms


def test_without_meshes_only_parameters_and_landmarks(synthetic_model):
    """meshes=False and no render: the reconstruct stage makes the 68 landmarks only (no mesh stage, no
    vertices), the same landmarks as the full decode; rendering such faces decodes then only the display
    mesh's rows (the same rows of the full decode), and the wireframe overlay the full mesh."""
    full_out, lean_out = [], []
    p_full, *_ = _pipeline(synthetic_model, [], render_mode=None)
    p_full.run(FakeSource(3), sink=full_out.append)
    p_lean, _, _, renderers = _pipeline(synthetic_model, [], render_mode=None, meshes=False, display_triangles=1000)
    p_lean.run(FakeSource(3), sink=lean_out.append)
    assert "mesh" in full_out[-1].stage_ms and "mesh" not in lean_out[-1].stage_ms
    for full, lean in zip(full_out[-1].faces, lean_out[-1].faces):
        assert lean.vertices is None and "albedo" not in lean.extras and full.vertices.shape[1] == 3
        np.testing.assert_allclose(lean.landmarks2d, full.landmarks2d, atol=1e-3)
        np.testing.assert_array_equal(lean.params, full.params)
    last, reference = lean_out[-1], full_out[-1].faces[0]
    p_lean.render(last.frame, last.faces, "shaded", ())
    kept = p_lean.display.kept
    assert len(p_lean.display.topology.triangles) <= 1000 < synthetic_model.triangles.shape[0]
    assert renderers[-1].topology is p_lean.display.topology
    assert all(f.vertices is None and f.extras["display_vertices"].shape == (len(kept), 3) for f in last.faces)
    np.testing.assert_allclose(last.faces[0].extras["display_vertices"], reference.vertices[kept], atol=1e-6)
    np.testing.assert_allclose(last.faces[0].extras["display_albedo"], reference.extras["albedo"][kept], atol=1e-6)
    p_lean.render(last.frame, last.faces, "shaded", ("wireframe",))
    assert renderers[-1].topology.n_triangles == synthetic_model.triangles.shape[0]
    assert all(f.vertices is not None and "albedo" in f.extras for f in last.faces)
    np.testing.assert_allclose(last.faces[0].vertices, reference.vertices, atol=1e-6)


def test_render_draws_the_display_mesh_rows_of_written_meshes(synthetic_model):
    """With meshes on (writers), the overlay draws the display mesh from the decoded full mesh's rows."""
    log = []
    p, _, _, renderers = _pipeline(synthetic_model, log, display_triangles=1000)
    out = []
    p.run(FakeSource(2), sink=out.append)
    kept = p.display.kept
    assert renderers[0].topology is p.display.topology and len(kept) < synthetic_model.n_vertices
    assert out[-1].faces[0].vertices.shape == (synthetic_model.n_vertices, 3)
    item = p._render_face(out[-1].faces[0], full=False)
    np.testing.assert_array_equal(item.vertices, out[-1].faces[0].vertices[kept])
    with pytest.raises(ValueError, match="display_triangles"):
        PipelineCfg(display_triangles=10)


def test_keyboard_interrupt_leaves_consistent_state(synthetic_model):
    log = []
    p, *_ = _pipeline(synthetic_model, log)
    seen = []

    def sink(r):
        if r.frame.index == 3:
            raise KeyboardInterrupt
        seen.append(r.frame.index)

    src = FakeSource(10)
    with pytest.raises(KeyboardInterrupt):
        with src:
            p.run(src, sink)
    assert src.closed and seen == [0, 1, 2] and p.frames_done == 3
    p.close()
    assert p.tracker.closed


def test_on_frame_false_stops(synthetic_model):
    p, *_ = _pipeline(synthetic_model, [])
    assert p.run(FakeSource(10), on_frame=lambda r: r.frame.index < 4) == 5


def test_layout_mismatch_is_refused(synthetic_model):
    from mlanet.params import ParamLayout

    log = []
    backend = FakeBackend(log, ParamLayout(identity=3, expression=2, albedo=1))
    with pytest.raises(ValueError, match="parameter layout"):
        FacePipeline(backend, synthetic_model, PipelineCfg(), tracker=FakeTracker(log))


def test_live_source_drops_stale_frames_and_records_latency(synthetic_model):
    from mlanet.edge.frames import LiveReplaySource

    p, *_ = _pipeline(synthetic_model, [], delay_s=0.03, render_mode=None)
    src = LiveReplaySource(FakeSource(60), fps=200.0)  # the source outruns a ~30 ms pipeline
    indices = []
    with src:
        p.run(src, sink=lambda r: indices.append(r.frame.index))
    assert len(indices) < 60 and src.dropped > 0
    assert all(b > a for a, b in zip(indices, indices[1:]))
    assert p.stats.summary()["latency_ms"]["n"] > 0


def test_pipeline_settings_from_config_set_and_flags(tmp_path):
    """mlanet-video / mlanet-live settings: PipelineCfg defaults < --config < --set < flags."""
    from mlanet.edge import video_cli
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.errors import MLANetError

    parser = video_cli.build_parser()
    cfg = video_cli.pipeline_cfg_from_args(parser.parse_args(["in.mp4", "--out", "o"]))
    assert cfg == PipelineCfg()  # no flag given: exactly the defaults
    conf = tmp_path / "pipe.yaml"
    conf.write_text("fov_deg: 70\ntracker:\n  detect_every: 3\n  max_faces: 2\nfilter:\n  rotation_min_cutoff: 0.9\n"
                    "overlays: [wireframe]\n")
    args = parser.parse_args(["in.mp4", "--out", "o", "--config", str(conf), "--set", "tracker.max_faces=5",
                              "--set", "filter.expression_beta=2.5", "--detect-every", "7", "--mode", "albedo"])
    cfg = video_cli.pipeline_cfg_from_args(args)
    assert (cfg.fov_deg, cfg.tracker.detect_every, cfg.tracker.max_faces) == (70.0, 7, 5)
    assert (cfg.filter.rotation_min_cutoff, cfg.filter.expression_beta, cfg.filter.enabled) == (0.9, 2.5, True)
    assert cfg.overlays == ("wireframe",) and cfg.render_mode == "albedo"
    off = video_cli.pipeline_cfg_from_args(parser.parse_args(["in.mp4", "--out", "o", "--config", str(conf),
                                                              "--no-filter", "--overlays", "none"]), render=False)
    assert not off.filter.enabled and off.filter.rotation_min_cutoff == 0.9 and off.overlays == () and off.render_mode is None
    for bad in (["--set", "tracker.nope=1"], ["--set", "fov_deg=500"], ["--set", "tracker.max_faces=0"],
                ["--config", str(tmp_path / "missing.yaml")], ["--set", "render_mode=sketch"]):
        with pytest.raises(MLANetError):
            video_cli.pipeline_cfg_from_args(parser.parse_args(["in.mp4", "--out", "o", *bad]))


def test_pipeline_config_errors_are_one_line_exit_2(tmp_path, capsys):
    from mlanet.edge import live_cli, video_cli

    for main, argv in ((video_cli.main, [str(tmp_path / "in.mp4"), "--out", str(tmp_path / "o")]),
                       (live_cli.main, ["--video", str(tmp_path / "in.mp4"), "--no-window"])):
        assert main([*argv, "--set", "tracker.detect_evry=3"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "detect_evry" in err, err


def test_peak_rss_is_never_below_a_reading_reported_beside_it():
    """The kernel syncs RSS counters lazily, so a sampled /proc reading can exceed ru_maxrss: a record
    that reports samples and a peak must have peak >= every sample (CI once saw 1170.1 < 1170.2)."""
    now = rss_mib()
    assert peak_rss_mib() >= now > 10
    assert peak_rss_mib([now + 512.0]) == now + 512.0  # an earlier reading above the kernel's high-water mark
    assert peak_rss_mib([float("nan")]) >= now  # a NaN reading (off Linux) is no reading
