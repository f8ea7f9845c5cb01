"""The overlapped streaming loop (:mod:`mlanet.edge.gpu_stream`).

CPU tests (run everywhere, through :class:`SyncCpuOps`, the same loop code as on a GPU):
:func:`crop_from_table` against :func:`reference_crop` bit for bit; :func:`roi_table_from_landmarks`
against ``box_from_points`` + ``box_table`` bit for bit and the tracker's plausibility rule; the loop
against :class:`DeviceFacePath` run frame by frame (identical numbers) and against the CPU
:class:`FacePipeline` maths; no pinned slot reused before its transfer completed, with the same
numbers (a strict :class:`SyncCpuOps`); device tracking, detector override and the
``lost`` flag; 0/1/2 frames, frames without faces, frame size changes, exceptions and early exits.

GPU tests (``gpu``; written on a machine without a GPU, not run yet): ``GpuCropper.crop_table``
against :func:`crop_from_table`; the :class:`TorchCudaOps` loop (GpuCropper + FP16
TorchCudaBackend) against the :class:`SyncCpuOps` loop (FP32) in vertex space, with the
tolerances of ``tests/test_gpu_paths.py`` (mean <= 1 mm, max <= 3 mm); the overlap seen in CUDA
event timestamps and no host synchronisation in an iteration except the download event.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import informative_untrained_model

from mlanet.edge.crops import crop_faces
from mlanet.edge.gpu_crops import GpuUnavailableError, box_table, reference_crop
from mlanet.edge.gpu_stream import (
    EVENTS,
    HOST_STAGES,
    DeviceFacePath,
    ModuleInference,
    StreamingLoop,
    StreamResult,
    SyncCpuOps,
    TorchTableCropper,
    boxes_to_table,
    crop_boxes_from_table,
    crop_from_table,
    detect_every,
    roi_table_from_landmarks,
    table_to_boxes,
)
from mlanet.edge.reconstruct import FaceDecoder, crop_pose_to_frame, crop_pose_to_frame_tensor, frame_camera
from mlanet.edge.face_detection import box_iou
from mlanet.edge.types import Detection, Frame
from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox, box_from_points

S_NET = 32
H0, W0 = 96, 128
FP16_MEAN_MM, FP16_MAX_MM = 1.0, 3.0
#: CPU FacePipeline (grid_sample crops on a float32 grid) vs the loop (the kernel's arithmetic, float64
#: positions): the crops differ by <= ~6e-6 on frames this small (tests/test_gpu_paths.py), which moves
#: the informative network's outputs by at most 9e-6 (params), 1.5e-3 px, 6.4e-3 mm (measured over 10
#: seeds). Given the same crops, the loop's maths equals the pipeline's bit for bit (tested too).
PIPELINE_PARAM_TOL = 5e-5
PIPELINE_PX_TOL = 5e-3
PIPELINE_MM_TOL = 2e-2


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def face_model():
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return MorphableModel(make_synthetic_face_model())


@pytest.fixture(scope="module")
def net(face_model):
    return informative_untrained_model(face_model, S_NET)


@pytest.fixture(scope="module")
def path(net, face_model):
    return DeviceFacePath(ModuleInference(net), face_model, net.preprocess, TorchTableCropper(S_NET))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, net, face_model):
    from mlanet.models.model_io import save_model

    return save_model(net, tmp_path_factory.mktemp("stream_ckpt") / "net.safetensors", face_model)


def _frames(n: int, sizes=((H0, W0),), seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        out.append(Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), i, i * 33_000_000, "test"))
    return out


BOXES = [CropBox(10.25, 12.5, 60.0), CropBox(70.0, 30.75, 48.5)]


def _detect_at(indices, boxes=BOXES):
    """boxes_for giving ``boxes`` at the frame indices in ``indices``, tracking elsewhere."""
    def boxes_for(frame, latest):
        return list(boxes) if frame.index in indices else None
    return boxes_for


def _sequential(path, frames, boxes_for, *, roi_scale=None, max_size_ratio=1.5, min_iou=0.3):
    """The loop's numbers computed frame by frame with DeviceFacePath (the reference)."""
    roi = path.preprocess.roi_scale if roi_scale is None else roi_scale
    table = None
    out = []
    for f in frames:
        boxes = boxes_for(f, None)
        if boxes is not None:
            table = boxes_to_table(boxes, S_NET)
        elif table is None:
            table = torch.zeros((0, 3), dtype=torch.float64)
        faces = path(torch.from_numpy(f.image), table)
        nxt, ok = roi_table_from_landmarks(faces.landmarks2d, table, roi, S_NET, max_size_ratio, min_iou=min_iou)
        out.append({"table": table, "faces": faces, "lost": ~ok})
        table = nxt
    return out


def _noise(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _random_boxes(rng, h, w, n):
    return [CropBox(float(rng.uniform(-0.3 * w, 0.9 * w)), float(rng.uniform(-0.3 * h, 0.9 * h)),
                    float(rng.uniform(0.5, 1.2 * min(h, w)))) for _ in range(n)]


def _special_boxes(h, w):
    return [CropBox(0.0, 0.0, float(min(h, w))), CropBox(-5.25, -3.75, 20.5), CropBox(w - 7.3, h - 9.1, 15.0),
            CropBox(w + 3.0, 2.0, 10.0), CropBox(-40.0, -40.0, 30.0), CropBox(w / 3 + 0.37, h / 4 + 0.11, 0.8),
            CropBox(-0.5 * w, -0.5 * h, 2.0 * max(h, w))]


class StrictCpuOps(SyncCpuOps):
    """SyncCpuOps that treats a transfer as in flight until an event after it is host-synchronised.

    An event recorded on a stream covers every transfer issued on that stream before it; a host
    ``synchronize`` of it (or of a later event on the same stream) completes them. A transfer into
    or out of a pinned host buffer whose previous transfer has not completed that way is an error:
    it would race with the copy engine on a GPU.
    """

    def __init__(self) -> None:
        super().__init__(log=True)
        self.pending: dict[int, str] = {}  # host storage -> stream name, transfers not yet covered by an event
        self.covered: dict[int, tuple[str, int]] = {}  # host storage -> (stream name, sequence of its event)
        self.events_seq: dict[int, tuple[str, int]] = {}  # id(event) -> (stream name, sequence)
        self.synced: dict[str, int] = {}  # stream name -> highest synchronised event sequence
        self.seq = 0
        self.violations: list[str] = []

    def _transfer(self, host: torch.Tensor, stream, what) -> None:
        key = host.untyped_storage().data_ptr()
        if key in self.pending or (key in self.covered and self.synced.get(self.covered[key][0], -1) < self.covered[key][1]):
            self.violations.append(f"{what}: pinned buffer reused before its previous transfer completed")
        self.covered.pop(key, None)
        self.pending[key] = stream.name

    def upload(self, host, stream, *, out=None, label=None):
        self._transfer(host, stream, ("upload", label))
        return super().upload(host, stream, out=out, label=label)

    def download(self, device_tensor, host, stream, *, label=None):
        self._transfer(host, stream, ("download", label))
        super().download(device_tensor, host, stream, label=label)

    def record(self, event, stream) -> None:
        super().record(event, stream)
        self.seq += 1
        self.events_seq[id(event)] = (stream.name, self.seq)
        for key, name in list(self.pending.items()):
            if name == stream.name:
                self.covered[key] = (name, self.seq)
                del self.pending[key]

    def synchronize(self, event) -> None:
        super().synchronize(event)
        name, seq = self.events_seq[id(event)]
        self.synced[name] = max(self.synced.get(name, -1), seq)


# ========================================================================================= building blocks
def test_crop_from_table_equals_reference_crop_bit_for_bit():
    for seed in range(4):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29), (300, 500)):
            frame = _noise(rng, h, w)
            boxes = _random_boxes(rng, h, w, 4) + _special_boxes(h, w)
            for s in (16, 33):
                table = boxes_to_table(boxes, s)
                got = crop_from_table(torch.from_numpy(frame), table, s)
                assert got.shape == (len(boxes), 3, s, s) and got.dtype == torch.float32 and got.is_contiguous()
                np.testing.assert_array_equal(got.numpy(), reference_crop(frame, boxes, s))
                got16 = crop_from_table(torch.from_numpy(frame), table, s, torch.float16)
                np.testing.assert_array_equal(got16.numpy(), reference_crop(frame, boxes, s, dtype=np.float16))
    # a strided frame (a region of a bigger one) is read in place
    rng = np.random.default_rng(9)
    big = _noise(rng, 120, 160)
    region = torch.from_numpy(big)[10:90, 30:150]
    assert not region.is_contiguous()
    boxes = _random_boxes(rng, 80, 120, 5) + _special_boxes(80, 120)
    np.testing.assert_array_equal(crop_from_table(region, boxes_to_table(boxes, 24), 24).numpy(),
                                  reference_crop(np.ascontiguousarray(big[10:90, 30:150]), boxes, 24))
    # and agrees with the CPU pipeline's crops (grid_sample) to float32 grid precision
    frame = _noise(rng, 48, 64)
    boxes = _random_boxes(rng, 48, 64, 5)
    diff = np.abs(crop_from_table(torch.from_numpy(frame), boxes_to_table(boxes, 16), 16).numpy()
                  - crop_faces(frame, boxes, 16)).max()
    assert diff <= 1e-5


def test_crop_from_table_errors_and_empty():
    frame = torch.zeros((10, 12, 3), dtype=torch.uint8)
    table = boxes_to_table([CropBox(0, 0, 4)], 8)
    assert crop_from_table(frame, table[:0], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8"):
        crop_from_table(frame.float(), table, 8)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8"):
        crop_from_table(frame.numpy(), table, 8)
    with pytest.raises(ValueError, match=r"table must be an \(N, 3\) float64"):
        crop_from_table(frame, table.float(), 8)
    with pytest.raises(ValueError, match=r"table must be an \(N, 3\) float64"):
        crop_from_table(frame, table[:, :2], 8)
    with pytest.raises(ValueError, match="input_size"):
        crop_from_table(frame, table, 0)
    with pytest.raises(ValueError, match="float32 or torch.float16"):
        crop_from_table(frame, table, 8, torch.float64)
    with pytest.raises(ValueError, match="out must be"):
        TorchTableCropper(8).crop_table(frame, table, out=torch.empty(2, 3, 8, 8))


def test_box_tables_round_trip():
    boxes = [CropBox(10.0, 20.0, 64.0), CropBox(-1.5, 2.25, 32.0)]
    t = boxes_to_table(boxes, 32)
    assert t.dtype == torch.float64 and t.shape == (2, 3)
    np.testing.assert_array_equal(t.numpy(), box_table(boxes, 32))
    np.testing.assert_array_equal(table_to_boxes(t, 32).numpy(), [[10.0, 20.0, 64.0], [-1.5, 2.25, 32.0]])
    assert crop_boxes_from_table(t.numpy(), 32) == boxes
    assert boxes_to_table([], 32).shape == (0, 3)


def test_roi_table_from_landmarks_equals_box_from_points_and_the_tracker_rule():
    rng = np.random.default_rng(3)
    roi, s, r, min_iou = 2.0 ** 0.5, 48, 1.5, 0.3
    n = 200
    centres = rng.uniform(0, 600, (n, 1, 2))
    lm = (centres + rng.normal(0, 1, (n, 68, 2)) * rng.uniform(2, 60, (n, 1, 1))).astype(np.float32)
    prev = [CropBox(float(c[0, 0] - z / 2 + dx), float(c[0, 1] - z / 2), float(z))
            for c, z, dx in zip(centres, rng.uniform(20, 300, n), rng.uniform(-80, 80, n))]
    lm[0] = np.nan  # non-finite fit
    lm[1] = lm[1, :1]  # degenerate: all points coincide
    prev_table = boxes_to_table(prev, s)
    table, ok = roi_table_from_landmarks(torch.from_numpy(lm), prev_table, roi, s, r, min_iou=min_iou)
    assert table.dtype == torch.float64 and ok.dtype == torch.bool and table.shape == (n, 3)
    want_ok = []
    for k in range(n):
        try:
            new = box_from_points(lm[k], roi)
        except ValueError:
            want_ok.append(False)
            continue
        ratio = new.size / prev[k].size
        plausible = 1.0 / r <= ratio <= r and box_iou(prev[k], new) >= min_iou
        want_ok.append(plausible)
        if plausible:
            np.testing.assert_array_equal(table[k].numpy(), box_table([new], s)[0])  # the same bits
    np.testing.assert_array_equal(ok.numpy(), want_ok)
    np.testing.assert_array_equal(table[~ok].numpy(), prev_table[~ok].numpy())  # implausible: previous row kept
    assert 20 < int(ok.sum()) < n - 20, int(ok.sum())  # both cases exercised
    # without the IoU rule only the size ratio (and finiteness) counts
    _, ok_size = roi_table_from_landmarks(torch.from_numpy(lm), prev_table, roi, s, r)
    assert int(ok_size.sum()) >= int(ok.sum())
    with pytest.raises(ValueError, match=r"landmarks2d must be an \(N, L >= 2, 2\)"):
        roi_table_from_landmarks(torch.zeros(3, 68), prev_table[:3], roi, s)
    with pytest.raises(ValueError, match=r"prev_table: table must be an \(3, 3\) float64"):
        roi_table_from_landmarks(torch.zeros(3, 68, 2), prev_table[:2], roi, s)
    with pytest.raises(ValueError, match="max_size_ratio"):
        roi_table_from_landmarks(torch.zeros(3, 68, 2), prev_table[:3], roi, s, 0.5)


def test_crop_pose_to_frame_tensor_is_the_list_version(face_model):
    from mlanet.params import FaceParams
    from mlanet.preprocess import PreprocessCfg

    layout, pre, cam = face_model.layout, PreprocessCfg(input_size=S_NET), frame_camera(W0, H0)
    rng = np.random.default_rng(0)
    flat = FaceParams.neutral(layout, batch_size=4, depth_m=1.0).to_flat() + torch.from_numpy(rng.normal(0, 0.05, (4, layout.total))).float()
    boxes = _random_boxes(rng, H0, W0, 4)
    want = crop_pose_to_frame(flat, boxes, layout, pre, cam)
    got = crop_pose_to_frame_tensor(flat, torch.tensor([[b.x0, b.y0, b.size] for b in boxes], dtype=torch.float64),
                                    layout, pre, cam)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"boxes must be an \(N=4, 3\) float64"):
        crop_pose_to_frame_tensor(flat, torch.zeros(3, 3, dtype=torch.float64), layout, pre, cam)
    dec = FaceDecoder(face_model)
    verts, lm, alb = dec.decode_tensors(want, cam)
    ref = dec(want, cam)
    assert torch.equal(verts, torch.from_numpy(ref.vertices)) and torch.equal(lm, torch.from_numpy(ref.landmarks2d))
    assert torch.equal(alb, torch.from_numpy(ref.albedo))
    assert dec.decode_tensors(want, cam, albedo=False)[2] is None


def test_device_face_path_checks(path, face_model):
    frame = torch.zeros((H0, W0, 3), dtype=torch.uint8)
    faces = path(frame, boxes_to_table([], S_NET))
    V, P = face_model.n_vertices, face_model.layout.total
    assert faces.params_frame.shape == (0, P) and faces.vertices.shape == (0, V, 3) and faces.landmarks2d.shape == (0, 68, 2)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8"):
        path(frame.float(), boxes_to_table(BOXES, S_NET))
    with pytest.raises(ValueError, match=r"table must be an \(N, 3\) float64"):
        path(frame, boxes_to_table(BOXES, S_NET).float())
    bad = DeviceFacePath(lambda x: torch.zeros(x.shape[0], 5), face_model, path.preprocess, TorchTableCropper(S_NET))
    with pytest.raises(ValueError, match=rf"network returned \(2, 5\), expected \(2, {P}\)"):
        bad(frame, boxes_to_table(BOXES, S_NET))
    with pytest.raises(ValueError, match="cropper makes 16x16 crops"):
        DeviceFacePath(path.infer, face_model, path.preprocess, TorchTableCropper(16))
    fixed = DeviceFacePath(path.infer, face_model, path.preprocess, TorchTableCropper(S_NET), camera=frame_camera(W0, H0))
    with pytest.raises(ValueError, match=f"camera is for {W0}x{H0} frames"):
        fixed(torch.zeros((50, 60, 3), dtype=torch.uint8), boxes_to_table(BOXES, S_NET))


def test_for_backend(checkpoint, face_model):
    from mlanet.edge.backends import TorchBackend

    backend = TorchBackend(checkpoint, face_model=face_model)
    p = DeviceFacePath.for_backend(backend, face_model)
    assert isinstance(p.cropper, TorchTableCropper) and p.input_size == S_NET and p.device == torch.device("cpu")
    frame = _frames(1)[0]
    faces = p(torch.from_numpy(frame.image), boxes_to_table(BOXES, S_NET))
    np.testing.assert_allclose(faces.params_crop.numpy(), backend(crop_from_table(
        torch.from_numpy(frame.image), boxes_to_table(BOXES, S_NET), S_NET)), atol=1e-6)

    class HostOnly:
        metadata = backend.metadata

    with pytest.raises(ValueError, match="results stay on the device"):
        DeviceFacePath.for_backend(HostOnly(), face_model)


def test_torch_cuda_ops_without_cuda(monkeypatch):
    from mlanet.edge.gpu_stream import TorchCudaOps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="TorchCudaOps needs a CUDA GPU") as info:
        TorchCudaOps()
    assert isinstance(info.value, MLANetError)


def test_module_imports_light():
    code = ("import sys, mlanet.edge.gpu_stream\n"
            "heavy = [m for m in ('cupy', 'tensorrt', 'pycuda', 'mediapipe', 'moderngl') if m in sys.modules]\n"
            "print(heavy)\nsys.exit(1 if heavy else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ========================================================================================= the loop on the CPU
def _check_same(results, ref, *, vertices=True):
    assert len(results) == len(ref)
    for r, want in zip(results, ref):
        f = want["faces"]
        np.testing.assert_array_equal(r.params, f.params_frame.numpy())
        np.testing.assert_array_equal(r.landmarks2d, f.landmarks2d.numpy())
        if vertices:
            np.testing.assert_array_equal(r.vertices, f.vertices.numpy())
        np.testing.assert_array_equal(r.lost, want["lost"].numpy())
        np.testing.assert_allclose(box_table(r.boxes, S_NET).reshape(-1, 3), want["table"].numpy(), rtol=0, atol=1e-9)


def test_loop_equals_the_path_frame_by_frame(path):
    frames = _frames(7)
    boxes_for = _detect_at({0, 4})
    results = list(StreamingLoop(path, SyncCpuOps()).run(frames, boxes_for))
    assert [r.frame.index for r in results] == list(range(7))
    assert [r.detected for r in results] == [True, False, False, False, True, False, False]
    assert all(isinstance(r, StreamResult) and r.n_faces == 2 for r in results)
    assert results[0].boxes == BOXES and results[4].boxes == BOXES  # detector boxes reported as given
    _check_same(results, _sequential(path, frames, boxes_for))
    r = results[3]
    assert r.params.dtype == np.float32 and r.vertices.shape == (2, path.n_vertices, 3) and r.lost.dtype == bool
    assert set(r.host_ms) == set(HOST_STAGES) and set(r.gpu_ms) == {"upload", "compute", "download"}
    spans = r.gpu_spans
    assert spans["upload"][0] <= spans["upload"][1] <= spans["compute"][0] <= spans["compute"][1]
    # without vertices, the rest is unchanged
    light = list(StreamingLoop(path, SyncCpuOps(), download_vertices=False).run(frames, boxes_for))
    assert all(r.vertices is None for r in light)
    _check_same(light, _sequential(path, frames, boxes_for), vertices=False)


def test_first_detected_frame_equals_the_cpu_pipeline(path, checkpoint, face_model):
    from mlanet.edge.backends import TorchBackend
    from mlanet.edge.filters import FilterCfg
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.types import TrackROI

    class FixedTracker:
        last_detected, last_scene_cut = True, False

        def begin(self, frame):
            return [TrackROI(k, b, "detector", True) for k, b in enumerate(BOXES)]

        def end(self, fits):
            pass

        def reset(self):
            pass

        def close(self):
            pass

    backend = TorchBackend(checkpoint, face_model=face_model)
    pipe = FacePipeline(backend, face_model, PipelineCfg(filter=FilterCfg(enabled=False), render_mode=None),
                        tracker=FixedTracker())
    frames = _frames(3, seed=5)
    want = pipe.process(frames[0])
    got = next(iter(StreamingLoop(path, SyncCpuOps()).run(frames, _detect_at({0}))))
    params = np.stack([f.raw_params for f in want.faces])
    lm = np.stack([f.landmarks2d for f in want.faces])
    verts = np.stack([f.vertices for f in want.faces])
    d_params = np.abs(got.params - params).max()
    d_px = np.abs(got.landmarks2d - lm).max()
    d_mm = np.linalg.norm(got.vertices - verts, axis=-1).max() * 1000
    print(f"loop vs FacePipeline: params {d_params:.2e}, landmarks {d_px:.2e} px, vertices {d_mm:.2e} mm")
    assert d_params <= PIPELINE_PARAM_TOL and d_px <= PIPELINE_PX_TOL and d_mm <= PIPELINE_MM_TOL
    # the pipeline's maths (backend, crop_pose_to_frame, FaceDecoder) on the loop's crops: the same bits
    crops = crop_from_table(torch.from_numpy(frames[0].image), boxes_to_table(BOXES, S_NET), S_NET).numpy()
    cam = frame_camera(frames[0].width, frames[0].height)
    flat = crop_pose_to_frame(backend(crops), BOXES, face_model.layout, path.preprocess, cam).numpy()
    dec = FaceDecoder(face_model)(flat, cam)
    np.testing.assert_array_equal(got.params, flat)
    np.testing.assert_array_equal(got.landmarks2d, dec.landmarks2d)
    np.testing.assert_array_equal(got.vertices, dec.vertices)


def test_the_loop_under_strict_transfer_rules_equals_the_sequential_reference(path):
    """Under :class:`StrictCpuOps`, which flags a pinned buffer reused before its previous transfer
    completed (on a GPU: a race with the copy engine), every frame comes out once, in order, with no
    violation and with the numbers of the same frames run one at a time through DeviceFacePath.

    (This replaces a test that pinned the loop's own operation log, issue 16: it could only fail when
    the code changed, not when results did. The overlap itself is measured on a GPU, in CUDA event
    timestamps: :func:`test_gpu_loop_overlaps_and_syncs_only_on_download_events`.)
    """
    ops = StrictCpuOps()
    frames = _frames(8)
    boxes_for = _detect_at({0, 5})
    results = list(StreamingLoop(path, ops).run(frames, boxes_for))
    assert [r.frame.index for r in results] == list(range(8))
    assert [r.detected for r in results] == [i in (0, 5) for i in range(8)]
    assert not ops.violations, ops.violations
    _check_same(results, _sequential(path, frames, boxes_for))


def test_strict_ops_catch_a_reused_slot():
    ops = StrictCpuOps()
    up = ops.new_stream("upload")
    host = torch.zeros(4)
    ops.upload(host, up)
    ev = ops.new_event(("up", 0))
    ops.record(ev, up)
    ops.upload(host, up)  # before ev was synchronised
    assert ops.violations
    with pytest.raises(MLANetError, match="never recorded"):
        ops.synchronize(ops.new_event(("x", 1)))


def test_device_tracking_detector_override_and_lost(path, face_model):
    frames = _frames(8, seed=2)
    roi = path.preprocess.roi_scale
    calls = []
    z = face_model.layout.slices()["translation"].start + 2

    def infer(images):  # frame 3's fits come out 3x closer: 3x larger in the image -> implausible next box
        out = path.infer(images)
        calls.append(len(calls))
        if len(calls) == 4:
            out = out.clone()
            out[:, z] /= 3.0
        return out

    p = DeviceFacePath(infer, face_model, path.preprocess, TorchTableCropper(S_NET))
    results = list(StreamingLoop(p, SyncCpuOps(), min_fit_iou=0.0).run(frames, _detect_at({0, 6})))
    lost = np.stack([r.lost for r in results])
    assert lost[3].all() and not lost[[0, 1, 2, 4]].any(), lost
    for t in range(1, 8):
        r, prev = results[t], results[t - 1]
        if t == 6:  # the detector's boxes replace the tracked ones
            assert r.boxes == BOXES and r.detected
            continue
        assert not r.detected
        for k in range(2):
            if prev.lost[k]:  # implausible update: the box stays
                want = prev.boxes[k]
            else:  # the tracker's rule on the previous frame's landmarks
                want = box_from_points(prev.landmarks2d[k], roi)
            np.testing.assert_allclose([r.boxes[k].x0, r.boxes[k].y0, r.boxes[k].size], [want.x0, want.y0, want.size],
                                       rtol=0, atol=1e-9)


def test_zero_one_two_frames(path):
    for n in (0, 1, 2):
        ops = SyncCpuOps(log=True)
        frames = _frames(n)
        results = list(StreamingLoop(path, ops).run(frames, _detect_at({0})))
        assert [r.frame.index for r in results] == list(range(n))
        _check_same(results, _sequential(path, frames, _detect_at({0})))
        recorded = sorted((name, i) for op, name, i in ops.log if op == "record" and name not in ("origin", "drain"))
        assert recorded == sorted((e, i) for i in range(n) for e in EVENTS)  # every event once per frame
        assert [i for op, name, i in ops.log if op == "synchronize" and name == "dl"] == list(range(n))


def test_frames_without_faces(path):
    frames = _frames(6)
    seen = []

    def boxes_for(frame, latest):
        seen.append(None if latest is None else latest.frame.index)
        return {0: [], 3: BOXES[:1]}.get(frame.index)

    results = list(StreamingLoop(path, SyncCpuOps()).run(frames, boxes_for))
    assert [r.n_faces for r in results] == [0, 0, 0, 1, 1, 1]
    r = results[1]
    P, V = path.layout.total, path.n_vertices
    assert r.params.shape == (0, P) and r.landmarks2d.shape == (0, 68, 2) and r.vertices.shape == (0, V, 3)
    assert r.lost.shape == (0,) and r.boxes == []
    _check_same(results, _sequential(path, frames, lambda f, latest: {0: [], 3: BOXES[:1]}.get(f.index)))
    assert seen == [None, None, None, 0, 1, 2]  # boxes_for of frame t+1 sees the result of frame t-2
    # no boxes at all (no detector output ever): no faces, no network call
    calls = []
    p = DeviceFacePath(lambda x: calls.append(1) or path.infer(x), path.face_model, path.preprocess, TorchTableCropper(S_NET))
    assert [r.n_faces for r in StreamingLoop(p, SyncCpuOps()).run(_frames(3), lambda f, latest: None)] == [0, 0, 0]
    assert not calls


def test_frame_size_changes(path):
    sizes = ((H0, W0), (H0, W0), (70, 90), (70, 90), (70, 90), (H0, W0), (120, 100))
    frames = _frames(len(sizes), sizes=[*sizes], seed=4)
    boxes_for = _detect_at({0, 2, 5})
    results = list(StreamingLoop(path, SyncCpuOps()).run(frames, boxes_for))
    assert [r.frame.image.shape[:2] for r in results] == list(sizes)
    _check_same(results, _sequential(path, frames, boxes_for))


def test_exceptions_and_early_exit_leave_the_loop_clean(path):
    frames = _frames(6)
    ops = SyncCpuOps(log=True)
    loop = StreamingLoop(path, ops)
    want = list(loop.run(frames, _detect_at({0})))
    del ops.log[:]

    def failing(frame, latest):
        if frame.index == 3:
            raise KeyboardInterrupt
        return BOXES if frame.index == 0 else None

    got = []
    with pytest.raises(KeyboardInterrupt):
        for r in loop.run(frames, failing):
            got.append(r.frame.index)
    assert got == [0]  # frame 3 is staged in iteration 2, before frame 1's download: frames 1 and 2 were in flight
    assert loop._inflight == [] and loop._next_table is None and loop._open_run() is None
    # every event recorded for the frames in flight (1 and 2) was waited for before the exception left
    for i in (1, 2):
        recorded = {name for op, name, j in ops.log if op == "record" and j == i}
        synced = {name for op, name, j in ops.log if op == "synchronize" and j == i}
        assert recorded and recorded <= synced, (i, recorded, synced)
    # the consumer stops early
    gen = loop.run(frames, _detect_at({0}))
    assert next(gen).frame.index == 0
    with pytest.raises(RuntimeError, match="another run of this loop is still open"):
        loop.run(frames, _detect_at({0}))
    gen.close()
    assert loop._inflight == []
    # an error inside the compute (a broken network) propagates the same way
    broken = DeviceFacePath(lambda x: torch.full((x.shape[0], path.layout.total + 1), 0.0), path.face_model,
                            path.preprocess, TorchTableCropper(S_NET))
    bad_loop = StreamingLoop(broken, SyncCpuOps())
    with pytest.raises(ValueError, match="network returned"):
        list(bad_loop.run(frames, _detect_at({0})))
    assert bad_loop._inflight == []
    # the loop still gives the same results after all that
    _check_same(list(loop.run(frames, _detect_at({0}))), _sequential(path, frames, _detect_at({0})))
    _check_same(want, _sequential(path, frames, _detect_at({0})))
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(frames, _detect_at({0}))


def test_bad_inputs(path, face_model):
    loop = StreamingLoop(path, SyncCpuOps())
    with pytest.raises(ValueError, match=r"frame 1 of the source must be a Frame with an \(H, W, 3\) uint8"):
        bad = [_frames(1)[0], Frame(np.zeros((8, 8), np.uint8), 1, 0, "t")]
        list(loop.run(bad, _detect_at({0})))
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a CropBox"):
        list(loop.run(_frames(2), lambda f, latest: [BOXES[0], (1, 2, 3)]))
    with pytest.raises(ValueError, match="boxes_for must be callable"):
        loop.run(_frames(2), None)
    with pytest.raises(ValueError, match="ops must implement DeviceOps"):
        StreamingLoop(path, object())
    with pytest.raises(ValueError, match="max_size_ratio"):
        StreamingLoop(path, SyncCpuOps(), max_size_ratio=0.9)
    # a run that never started does not block the next one
    loop.run(_frames(2), _detect_at({0}))
    assert len(list(loop.run(_frames(2), _detect_at({0})))) == 2


def test_detect_every_schedule():
    calls = []

    class Detector:
        box_calibration = None

        def __init__(self):
            self.faces = 1

        def __call__(self, image):
            calls.append(image.shape)
            return [Detection(np.array([20.0, 20.0, 60.0, 70.0]), 0.9)] * self.faces

    det = Detector()
    boxes_for = detect_every(det, every=3, roi_scale=1.5)
    frames = _frames(12)

    def result(frame, n=1, lost=False):
        return StreamResult(frame, [BOXES[0]] * n, np.zeros((n, 3)), np.zeros((n, 68, 2)), None,
                            np.full(n, lost), True)

    out = [boxes_for(frames[0], None)]
    assert len(out[0]) == 1 and isinstance(out[0][0], CropBox)
    assert boxes_for(frames[1], None) is None and boxes_for(frames[2], result(frames[0])) is None
    assert boxes_for(frames[3], result(frames[1])) is not None  # scheduled (every 3)
    assert boxes_for(frames[4], result(frames[2])) is None  # a result from before the detection: ignored
    assert boxes_for(frames[5], result(frames[3], lost=True)) is not None  # lost since the detection
    assert boxes_for(frames[6], result(frames[5], n=0)) is not None  # no face
    assert boxes_for(frames[7], result(frames[6])) is None
    big = Frame(np.zeros((50, 40, 3), np.uint8), 8, 0, "t")
    assert boxes_for(big, result(frames[7])) is not None  # size change
    assert len(calls) == 5
    det.faces = 3
    assert len(detect_every(det, 1, max_faces=2)(frames[0], None)) == 2
    with pytest.raises(ValueError, match="every must be a positive int"):
        detect_every(det, 0)


def test_detect_every_in_the_loop(path):
    class Detector:
        def __init__(self):
            self.n = 0

        def __call__(self, image):
            self.n += 1
            return [Detection(np.array([20.0, 22.0, 70.0, 80.0]), 0.9)]

    det = Detector()
    results = list(StreamingLoop(path, SyncCpuOps(), min_fit_iou=0.0).run(
        _frames(9), detect_every(det, 4, roi_scale=path.preprocess.roi_scale)))
    assert [r.detected for r in results][:5] == [True, False, False, False, True]
    assert det.n >= 3 and all(r.n_faces == 1 for r in results)


# ========================================================================================= GPU
def _gpu_setup(checkpoint, face_model, **backend_kw):
    pytest.importorskip("cupy", reason="GpuCropper needs CuPy (pip install cupy-cuda13x)")
    from mlanet.edge.gpu_stream import TorchCudaOps
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    gpu_model = MorphableModel(make_synthetic_face_model())  # DeviceFacePath moves its face model to the GPU
    backend = TorchCudaBackend(checkpoint, face_model=gpu_model, **backend_kw)
    backend.warmup(batch_sizes=(1, 2, 3, 4, 8))
    return DeviceFacePath.for_backend(backend, gpu_model), TorchCudaOps(), backend


def _vertex_mm(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    d = np.linalg.norm(a.astype(np.float64) - b.astype(np.float64), axis=-1) * 1000.0
    return {"mean": float(d.mean()), "max": float(d.max())}


@pytest.mark.gpu
def test_gpu_crop_table_equals_crop_from_table():
    pytest.importorskip("cupy", reason="GpuCropper needs CuPy")
    from mlanet.edge.gpu_crops import GpuCropper

    rng = np.random.default_rng(0)
    for dtype in (torch.float32, torch.float16):
        cropper = GpuCropper(33, dtype=dtype)
        for h, w in ((48, 64), (1080, 1920)):
            frame = _noise(rng, h, w)
            boxes = _random_boxes(rng, h, w, 5) + _special_boxes(h, w)
            table = boxes_to_table(boxes, 33)
            got = cropper.crop_table(torch.from_numpy(frame).cuda(), table.cuda()).cpu()
            want = crop_from_table(torch.from_numpy(frame), table, 33, dtype)
            assert float((got.float() - want.float()).abs().max()) <= 1e-7
            ref = reference_crop(frame, boxes, 33, dtype=np.float16 if dtype == torch.float16 else np.float32)
            np.testing.assert_array_equal(got.float().numpy(), ref.astype(np.float32))  # expected bit for bit
        with pytest.raises(ValueError, match="table must be an"):
            cropper.crop_table(torch.from_numpy(frame).cuda(), table.cuda().float())
        with pytest.raises(ValueError, match="frame must be a CUDA tensor"):
            cropper.crop_table(torch.from_numpy(frame), table.cuda())


@pytest.mark.gpu
def test_gpu_loop_equals_cpu_loop_in_vertex_space(checkpoint, face_model, path):
    gpu_path, ops, backend = _gpu_setup(checkpoint, face_model, cuda_graphs=True)
    frames = _frames(9, sizes=((480, 640), (480, 640), (360, 480)), seed=8)
    boxes = [CropBox(100.25, 80.5, 180.0), CropBox(300.0, 150.0, 150.5), CropBox(-30.0, 200.0, 200.0)]
    boxes_for = _detect_at({0, 3, 6}, boxes)
    cpu = list(StreamingLoop(path, SyncCpuOps()).run(frames, boxes_for))
    gpu = list(StreamingLoop(gpu_path, ops).run(frames, boxes_for))
    worst = {"mean": 0.0, "max": 0.0}
    for c, g in zip(cpu, gpu, strict=True):
        assert g.n_faces == c.n_faces == 3
        mm = _vertex_mm(c.vertices, g.vertices)
        worst = {k: max(worst[k], mm[k]) for k in worst}
        assert set(g.gpu_ms) == {"upload", "compute", "download"}
    print(f"TorchCudaOps loop (fp16) vs SyncCpuOps loop (fp32): vertex mm {worst}")
    assert worst["mean"] <= FP16_MEAN_MM and worst["max"] <= FP16_MAX_MM
    backend.close()


@pytest.mark.gpu
def test_gpu_loop_overlaps_and_syncs_only_on_download_events(checkpoint, face_model):
    from mlanet.edge.gpu_stream import TorchCudaOps

    gpu_path, _ops, backend = _gpu_setup(checkpoint, face_model, cuda_graphs=True)

    class CountingOps(TorchCudaOps):
        def __init__(self):
            super().__init__()
            self.blocking: list[str] = []

        def synchronize(self, event):
            if not event.query():  # would block the host
                self.blocking.append(getattr(event, "_mlanet_name", "?"))
            super().synchronize(event)

        def new_event(self, label=None):
            ev = super().new_event(label)
            ev._mlanet_name = label[0] if label else "?"
            return ev

    ops = CountingOps()
    frames = _frames(12, sizes=((2160, 3840),), seed=1)  # 25 MB frames: an H2D of ~1 ms
    boxes = [CropBox(200.0 + 400 * k, 300.0 + 100 * k, 360.0) for k in range(8)]
    loop = StreamingLoop(gpu_path, ops)
    list(loop.run(frames[:4], _detect_at({0}, boxes)))  # warm-up: allocations, graphs, NVRTC
    torch.cuda.synchronize()
    ops.blocking.clear()
    torch.cuda.set_sync_debug_mode("error")  # any implicit synchronisation in an iteration raises
    try:
        results = list(loop.run(frames, _detect_at({0, 6}, boxes)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(ops.blocking) <= {"dl", "drain"}, ops.blocking  # drain: the end of the run, after the last result
    overlaps = 0
    for t in range(1, len(results) - 1):
        c0, c1 = results[t].gpu_spans["compute"]
        u0, u1 = results[t + 1].gpu_spans["upload"]
        overlaps += int(u0 < c1 and c0 < u1)
    spans = [(r.gpu_spans["upload"], r.gpu_spans["compute"], r.gpu_spans["download"]) for r in results]
    print(f"spans (ms): {spans}")
    assert overlaps >= (len(results) - 2) // 2, spans
    backend.close()
