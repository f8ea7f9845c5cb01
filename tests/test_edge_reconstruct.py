"""Crop -> frame pose conversion, CPU crops, temporal filters and stage statistics of the edge runtime."""

import math

import numpy as np
import pytest
import torch

from mlanet.edge.crops import crop_faces
from mlanet.geometry import rotations as rt
from mlanet.edge.filters import FilterCfg, OneEuroFilter, RunningMean, TrackFilter
from mlanet.edge.reconstruct import FaceDecoder, crop_pose_to_frame, face_anchor, frame_camera
from mlanet.edge.timing import STAGES, StageStats, timed
from mlanet.params import FaceParams
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points, crop_image, image_to_tensor


def test_frame_camera_field_of_view():
    cam = frame_camera(640, 360, 60.0)
    assert math.isclose(float(cam.fx[0]), 320 / math.tan(math.radians(30)), rel_tol=1e-6)
    assert (float(cam.cx[0]), float(cam.cy[0])) == (320.0, 180.0)
    with pytest.raises(ValueError, match="field of view"):
        frame_camera(640, 360, 0.0)


def _crop_landmarks_in_image(model, flat, box, pre):
    """Where the network's crop prediction puts the 68 landmarks in the image (the reference)."""
    p = FaceParams.from_flat(torch.as_tensor(flat)[None], model.layout)
    lm = model.landmarks(model(p))
    crop_px = pre.camera(1).project(lm)[0].numpy()
    return box.crop_to_image(crop_px, pre.input_size)


def _posed_face(layout, pre, seed=0):
    rng = np.random.default_rng(seed)
    flat = FaceParams.neutral(layout, depth_m=pre.prior_depth_m).to_flat()[0].numpy()
    s = layout.slices()
    flat[s["rotation"]] = rng.uniform(-0.3, 0.3, 3)
    flat[s["translation"]] = [0.01, -0.02, 1.1]
    flat[s["expression"]] = rng.uniform(0, 1, layout.expression)
    return flat


@pytest.mark.parametrize("centre,size", [((320.0, 180.0), 150.0), ((90.0, 70.0), 120.0), ((560.0, 300.0), 60.0)])
def test_frame_landmarks_agree_with_crop_prediction(synthetic_model, centre, size):
    pre = PreprocessCfg(input_size=64)
    layout = synthetic_model.layout
    s = layout.slices()
    flat = _posed_face(layout, pre)
    box = CropBox(centre[0] - size / 2, centre[1] - size / 2, size)
    cam = frame_camera(640, 360, 60.0)
    frame_flat = crop_pose_to_frame(flat[None], [box], layout, pre, cam, anchor=face_anchor(synthetic_model))
    decoder = FaceDecoder(synthetic_model)
    dec = decoder(frame_flat, cam)
    np.testing.assert_allclose(decoder.landmarks2d(frame_flat, cam), dec.landmarks2d, atol=1e-3)  # landmark-only path
    ref = _crop_landmarks_in_image(synthetic_model, flat, box, pre)
    err = np.abs(dec.landmarks2d[0] - ref).max()
    # The face anchor projects exactly; the rest differs by the perspective of the two cameras: an off-axis
    # face is stretched radially in the frame (~1/cos of the ray angle), which a crop camera cannot show.
    # Without the ray rotation the off-axis error is ~13 % of the box (measured), with it ~3 %.
    tol = 0.005 if centre == (320.0, 180.0) else 0.04
    assert err < tol * size, (centre, err)
    # identity, expression, albedo and light are untouched
    for g in ("identity", "expression", "albedo", "lighting"):
        np.testing.assert_allclose(frame_flat[0, s[g]].numpy(), flat[s[g]], atol=1e-6)


@pytest.mark.parametrize("frame,centre,size", [((640, 360), (320.0, 180.0), 330.0), ((480, 480), (240.0, 250.0), 350.0)])
def test_a_face_that_fills_the_frame_keeps_its_size(synthetic_model, frame, centre, size):
    """A face close to a wide frame camera: the head origin's scale (anchor at the origin) draws it
    8-15 % too large (the tracker, which takes its next crop from these landmarks, then ran away);
    keeping the scale at the face anchor draws it at the crop prediction's size."""
    pre = PreprocessCfg(input_size=64)
    layout = synthetic_model.layout
    flat = _posed_face(layout, pre)
    box = CropBox(centre[0] - size / 2, centre[1] - size / 2, size)
    cam = frame_camera(*frame, 60.0)
    ref = _crop_landmarks_in_image(synthetic_model, flat, box, pre)
    decoder = FaceDecoder(synthetic_model)

    def span_ratio(anchor):
        lm = decoder(crop_pose_to_frame(flat[None], [box], layout, pre, cam, anchor=anchor), cam).landmarks2d[0]
        return np.ptp(lm, axis=0).max() / np.ptp(ref, axis=0).max(), np.abs(lm - ref).max() / size

    ratio, err = span_ratio(face_anchor(synthetic_model))
    assert abs(ratio - 1.0) < 0.02 and err < 0.03, (ratio, err)
    old_ratio, old_err = span_ratio((0.0, 0.0, 0.0))
    assert old_ratio > 1.05 and old_err > err  # the rule this replaced


def test_face_anchor_is_the_mean_landmark_centroid(synthetic_model):
    a = face_anchor(synthetic_model)
    ref = synthetic_model.mean_shape[synthetic_model.landmark_index].double().mean(0).numpy()
    np.testing.assert_allclose(a, ref, atol=1e-12)
    assert a[2] < 0  # in front of the head origin (the face looks along -z)


@pytest.mark.parametrize("anchor", [(0.0, 0.0, 0.0), (0.01, 0.02, -0.09)])
def test_centred_box_keeps_rotation_and_scales_the_anchor_depth(synthetic_model, anchor):
    pre = PreprocessCfg(input_size=64)
    layout = synthetic_model.layout
    flat = FaceParams.neutral(layout, depth_m=1.0).to_flat().numpy()
    flat[0, layout.slices()["rotation"]] = [0.1, -0.2, 0.05]
    cam = frame_camera(640, 360, 60.0)
    size = 200.0
    box = CropBox(320 - size / 2, 180 - size / 2, size)
    out = crop_pose_to_frame(flat, [box], layout, pre, cam, anchor=anchor)[0].numpy()
    s = layout.slices()
    np.testing.assert_allclose(out[s["rotation"]], [0.1, -0.2, 0.05], atol=1e-6)
    g = pre.focal_ratio * size
    R = rt.euler_to_matrix(torch.tensor([[0.1, -0.2, 0.05]], dtype=torch.float64))[0].numpy()
    a = np.asarray(anchor)
    A_c = R @ a + flat[0, s["translation"]]  # the anchor in the crop camera
    A_f = R @ a + out[s["translation"]]  # and in the frame camera (a centred box: no ray rotation)
    np.testing.assert_allclose(A_f, [A_c[0], A_c[1], A_c[2] * float(cam.fx[0]) / g], atol=1e-6)
    with pytest.raises(ValueError, match="anchor must be 3 finite numbers"):
        crop_pose_to_frame(flat, [box], layout, pre, cam, anchor=(0.0, float("nan"), 0.0))


def test_crop_pose_to_frame_shape_errors(synthetic_model):
    pre, layout = PreprocessCfg(input_size=64), synthetic_model.layout
    with pytest.raises(ValueError, match="flat must be"):
        crop_pose_to_frame(np.zeros((2, layout.total)), [CropBox(0, 0, 10)], layout, pre, frame_camera(64, 64),
                           anchor=(0, 0, 0))
    assert crop_pose_to_frame(np.zeros((0, layout.total)), [], layout, pre, frame_camera(64, 64),
                              anchor=(0, 0, 0)).shape == (0, layout.total)


def test_crop_faces_equals_full_frame_crop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (120, 200, 3), dtype=np.uint8)
    boxes = [CropBox(10.3, 20.7, 50.0), CropBox(-30.0, 90.0, 60.5), CropBox(170.2, -5.0, 45.0)]
    got = crop_faces(img, boxes, 32)
    assert got.shape == (3, 3, 32, 32) and got.dtype == np.float32 and got.flags.c_contiguous
    # crop_image is the definition; in float64 its sample positions are exact, in float32 they carry
    # grid_sample's [-1, 1] normalisation rounding (~W * 2^-24 pixels), which crop_faces does not
    ref64 = crop_image(image_to_tensor(img).double(), boxes, 32).numpy()
    np.testing.assert_allclose(got, ref64, atol=1e-6)
    np.testing.assert_allclose(got, crop_image(image_to_tensor(img), boxes, 32).numpy(), atol=1e-5)
    assert crop_faces(img, [], 32).shape == (0, 3, 32, 32)
    assert not crop_faces(img, [CropBox(500, 500, 20)], 16).any()
    with pytest.raises(ValueError, match="uint8 RGB"):
        crop_faces(img.astype(np.float32), boxes, 32)


def test_crop_faces_on_a_720p_frame_with_faces_of_every_size():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    boxes = [CropBox(500.25, 90.5, 450.0), CropBox(1200.0, 650.0, 200.0), CropBox(3.7, 5.1, 37.0),
             CropBox(-100.0, -100.0, 1500.0)]
    got = crop_faces(img, boxes, 96)
    ref64 = crop_image(image_to_tensor(img).double(), boxes, 96).numpy()
    np.testing.assert_allclose(got, ref64, atol=1e-6)
    assert got[1, :, -20:, -20:].max() == 0.0  # the part of the second box below and right of the frame


def test_one_euro_smooths_noise_and_follows_steps():
    f = OneEuroFilter(min_cutoff=1.0, beta=0.0)
    rng = np.random.default_rng(0)
    noisy = 0.5 + 0.05 * rng.standard_normal(300)
    out = np.array([f(np.array([x]), i / 30.0)[0] for i, x in enumerate(noisy)])
    assert out[50:].std() < 0.4 * noisy[50:].std()
    # a larger beta follows a fast ramp with less lag
    lags = []
    for beta in (0.0, 5.0):
        g = OneEuroFilter(min_cutoff=1.0, beta=beta)
        ys = [g(np.array([i / 30.0 * 2.0]), i / 30.0)[0] for i in range(60)]
        lags.append(2.0 * 59 / 30.0 - ys[-1])
    assert lags[1] < 0.5 * lags[0]
    # first sample passes unchanged; a repeated timestamp keeps the state
    h = OneEuroFilter()
    assert h(np.array([3.0]), 0.0)[0] == 3.0
    assert h(np.array([9.0]), 0.0)[0] == 3.0


def test_running_mean_window():
    m = RunningMean(window=4)
    for x in (1.0, 2.0, 3.0):
        v = m(np.array([x]))
    assert v[0] == pytest.approx(2.0)
    for _ in range(50):
        v = m(np.array([10.0]))
    assert v[0] == pytest.approx(10.0, abs=1e-3)


def test_track_filter_groups(synthetic_model):
    layout = synthetic_model.layout
    s = layout.slices()
    base = FaceParams.neutral(layout).to_flat()[0].numpy()
    tf = TrackFilter(layout)
    rng = np.random.default_rng(2)
    outs, ins = [], []
    for i in range(60):
        x = base.copy()
        x[s["identity"]] = rng.standard_normal(layout.identity)
        x[s["rotation"]] = [0.0, 0.2 + 0.03 * rng.standard_normal(), 0.0]
        ins.append(x)
        outs.append(tf(x, i / 30.0))
    ins, outs = np.array(ins), np.array(outs)
    np.testing.assert_allclose(outs[-1, s["identity"]], ins[:, s["identity"]].mean(0), atol=1e-5)  # running mean
    yaw = s["rotation"].start + 1
    assert outs[20:, yaw].std() < 0.6 * ins[20:, yaw].std()
    assert abs(outs[20:, yaw].mean() - 0.2) < 0.02
    off = TrackFilter(layout, FilterCfg(enabled=False))
    np.testing.assert_array_equal(off(ins[5], 0.0), ins[5].astype(np.float32))


def test_track_filter_equals_one_filter_per_group(synthetic_model):
    """TrackFilter runs the groups as one vector (per-element settings): the same numbers as one
    One-Euro filter per group and one running mean per shape group."""
    layout = synthetic_model.layout
    s = layout.slices()
    cfg = FilterCfg()
    tf = TrackFilter(layout, cfg)
    rot = OneEuroFilter(cfg.rotation_min_cutoff, cfg.rotation_beta)
    groups = {"translation": OneEuroFilter(cfg.translation_min_cutoff, cfg.translation_beta),
              "expression": OneEuroFilter(cfg.expression_min_cutoff, cfg.expression_beta),
              "lighting": OneEuroFilter(cfg.lighting_min_cutoff, 0.0),
              "identity": RunningMean(cfg.identity_window), "albedo": RunningMean(cfg.identity_window)}
    rng = np.random.default_rng(5)
    base = FaceParams.neutral(layout).to_flat()[0].numpy().astype(np.float64)
    for i in range(40):
        x = base + 0.1 * rng.standard_normal(layout.total)
        t = i / 25.0 + (0.01 if i % 7 == 0 else 0.0)  # uneven frame times
        got = tf(x, t)
        want = x.copy()
        r6 = rt.matrix_to_rotation_6d(rt.euler_to_matrix(torch.from_numpy(x[s["rotation"]]))).numpy()
        want[s["rotation"]] = rt.matrix_to_euler(rt.rotation_6d_to_matrix(torch.from_numpy(rot(r6, t)))).numpy()
        for g, f in groups.items():
            want[s[g]] = f(x[s[g]], t) if isinstance(f, OneEuroFilter) else f(x[s[g]])
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=1e-6, atol=1e-7)


def test_one_euro_per_element_settings_are_checked():
    with pytest.raises(ValueError, match="positive"):
        OneEuroFilter(np.array([1.0, 0.0]), 0.0)
    with pytest.raises(ValueError, match="beta"):
        OneEuroFilter(1.0, np.array([0.5, -1.0]))


def test_stage_stats_summary():
    st = StageStats(warmup_frames=1)
    for i in range(5):
        ms: dict[str, float] = {}
        with timed(ms, "infer"):
            pass
        ms["decode"] = float(i)
        st.add(ms, latency_ms=10.0 * i)
    out = st.summary()
    assert set(STAGES) <= set(out["stages"])
    assert out["stages"]["decode"]["n"] == 4 and out["stages"]["decode"]["p50_ms"] == 2.5
    assert out["stages"]["render"]["n"] == 0
    assert out["latency_ms"]["max_ms"] == 40.0
    assert out["frames"] == 5 and out["warmup_frames_excluded"] == 1


def test_stage_stats_memory_is_fixed_per_frame_and_windowed_for_live():
    """An hour of live frames must not grow the process (the dict per frame did, ~45 MiB) nor slow summary()."""
    whole = StageStats(warmup_frames=2)
    live = StageStats(warmup_frames=2, window=100)
    for i in range(10_000):
        ms = {"decode": float(i % 7), "infer": 3.0, "custom_stage": 1.0}
        whole.add(ms, latency_ms=float(i))
        live.add(ms, latency_ms=float(i))
    assert live._table.nbytes == 100 * live._table.shape[1] * 4  # fixed, whatever the run length
    assert whole._table.nbytes <= 12_288 * whole._table.shape[1] * 4  # float32 rows, grown in chunks
    w, lv = whole.summary(), live.summary()
    assert w["frames"] == lv["frames"] == 10_000 and w["stages"]["infer"]["n"] == 9_998
    assert w["stages"]["custom_stage"]["n"] == 9_998 and w["total"]["p50_ms"] == pytest.approx(7.0, abs=1e-3)
    assert lv["summarised_frames"] == 100 and lv["window_frames"] == 100
    assert lv["latency_ms"]["max_ms"] == 9_999.0 and lv["latency_ms"]["n"] == 100  # the newest frames
    assert w["latency_ms"]["max_ms"] == 9_999.0 and w["latency_ms"]["n"] == 9_998
    short = StageStats(warmup_frames=5, window=3)
    short.add({"decode": 1.0})
    assert short.summary()["stages"]["decode"]["n"] == 0  # still warming up
    with pytest.raises(ValueError, match="window"):
        StageStats(window=0)


def test_box_from_points_used_by_tracker_is_square():
    b = box_from_points(np.array([[0.0, 0.0], [10.0, 20.0]]), math.sqrt(2))
    assert b.size == pytest.approx(20 * math.sqrt(2))


@pytest.mark.parametrize("threads", [1, 2])
def test_numpy_pose_and_landmark_paths_match_the_torch_ones(synthetic_model, threads):
    """The CPU runtime's per-frame NumPy path (crop -> frame, 68 landmarks) against the PyTorch definition."""
    from mlanet.edge.reconstruct import crop_pose_to_frame_cpu

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pre = PreprocessCfg(input_size=96)
        layout = synthetic_model.layout
        s = layout.slices()
        rng = np.random.default_rng(5)
        flat = np.repeat(FaceParams.neutral(layout, depth_m=pre.prior_depth_m).to_flat().numpy(), 4, axis=0)
        flat[:, s["rotation"]] = rng.uniform(-1.2, 1.2, (4, 3))
        flat[:, s["translation"]] += rng.normal(0, 0.02, (4, 3))
        flat[:, s["identity"]] = rng.normal(0, 1, (4, layout.identity))
        flat[:, s["expression"]] = rng.uniform(0, 1, (4, layout.expression))
        boxes = [CropBox(10, 20, 200), CropBox(900, 500, 90), CropBox(-40, 300, 400), CropBox(600, 0, 30)]
        cam = frame_camera(1280, 720, 70.0)
        anchor = face_anchor(synthetic_model)
        ref = crop_pose_to_frame(flat, boxes, layout, pre, cam, anchor=anchor).numpy()
        got = crop_pose_to_frame_cpu(flat, boxes, layout, pre, cam, anchor=anchor)
        assert got.dtype == np.float32 and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=2e-6)
        decoder = FaceDecoder(synthetic_model)
        lm = decoder.landmarks2d(got, cam)  # NumPy input: NumPy path
        lm_ref = decoder.landmarks2d_tensor(got, cam)
        assert lm.dtype == np.float32 and lm.shape == (4, 68, 2)
        np.testing.assert_allclose(lm, lm_ref, atol=2e-3)  # pixels; float32 GEMMs in different orders
        np.testing.assert_allclose(lm, decoder(got, cam).landmarks2d, atol=2e-3)  # the full-mesh decode
        rows = np.array([0, 7, 3, synthetic_model.n_vertices - 1, 100])  # any order, a row subset
        flat[:, s["albedo"]] = rng.normal(0, 2, (4, layout.albedo))  # some albedo clamps at 0 or 1
        full = decoder(flat, cam)
        verts, albedo = decoder.mesh_rows(flat, rows)
        assert verts.dtype == albedo.dtype == np.float32 and verts.shape == albedo.shape == (4, len(rows), 3)
        np.testing.assert_allclose(verts, full.vertices[:, rows], atol=2e-6)  # metres
        np.testing.assert_allclose(albedo, full.albedo[:, rows], atol=2e-6)
        assert albedo.min() >= 0.0 and albedo.max() <= 1.0
        whole_v, whole_a = decoder.mesh(flat)
        np.testing.assert_allclose(whole_v, full.vertices, atol=2e-6)
        np.testing.assert_allclose(whole_a, full.albedo, atol=2e-6)
        other = np.array([1, 2])
        np.testing.assert_allclose(decoder.mesh_rows(flat, other)[0], full.vertices[:, other], atol=2e-6)
        with pytest.raises(ValueError, match="parameters must be"):
            decoder.mesh_rows(flat[:, :5], rows)
        assert crop_pose_to_frame_cpu(flat[:0], [], layout, pre, cam, anchor=anchor).shape == (0, layout.total)
        with pytest.raises(ValueError, match="flat must be"):
            crop_pose_to_frame_cpu(flat, boxes[:2], layout, pre, cam, anchor=anchor)
    finally:
        torch.set_num_threads(old)


def test_track_filter_rotation_has_no_wrap_around(synthetic_model):
    """Roll alternating across +-pi (the same head orientation, give or take 0.02 rad) must not average to 0."""
    from mlanet.geometry.rotations_numpy import euler_to_matrix

    layout = synthetic_model.layout
    s = layout.slices()
    base = FaceParams.neutral(layout).to_flat()[0].numpy()
    tf = TrackFilter(layout)
    for i in range(30):
        x = base.copy()
        x[s["rotation"]] = [0.1, 0.2, math.pi - 0.01 if i % 2 else -math.pi + 0.01]
        out = tf(x, i / 30.0)
        R_in, R_out = euler_to_matrix(x[s["rotation"]].astype(np.float64)), euler_to_matrix(out[s["rotation"]].astype(np.float64))
        assert np.abs(R_in - R_out).max() < 0.05, (i, out[s["rotation"]])
    with pytest.raises(ValueError, match="flat must be"):
        tf(base[:-1], 2.0)


def test_an_anchor_tensor_on_the_device_equals_the_anchor_numbers(synthetic_model):
    """The device path keeps its anchor as a (3,) tensor (no host-to-device copy per frame): same result."""
    from mlanet.edge.reconstruct import crop_pose_to_frame_tensor

    pre = PreprocessCfg(input_size=64)
    layout = synthetic_model.layout
    flat = torch.as_tensor(_posed_face(layout, pre))[None].float()
    boxes = torch.tensor([[40.0, 30.0, 300.0]], dtype=torch.float64)
    cam = frame_camera(480, 480, 60.0)
    a = face_anchor(synthetic_model)
    ref = crop_pose_to_frame_tensor(flat, boxes, layout, pre, cam, anchor=a)
    got = crop_pose_to_frame_tensor(flat, boxes, layout, pre, cam, anchor=torch.tensor(a, dtype=torch.float64))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"anchor tensor must be \(3,\)"):
        crop_pose_to_frame_tensor(flat, boxes, layout, pre, cam, anchor=torch.zeros(2, dtype=torch.float64))
