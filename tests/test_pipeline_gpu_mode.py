"""The GPU mode of :class:`FacePipeline` (:mod:`mlanet.edge.device_path`): one pipeline, two modes.

CPU tests (run everywhere): the GPU mode's code on CPU tensors (a ``TorchBackend`` with
``device_mode=True``; :class:`SyncCpuOps`) against the host mode, frame by frame, within the crop's
float32-grid tolerance; its overlapped :meth:`FacePipeline.run` against :meth:`FacePipeline.process`
frame by frame, exactly, with device operations whose copies only happen when an event after them is
waited for (a missing wait reads NaN); at most two frames in flight; stops, ``max_frames`` and
interrupts; how the mode is chosen and the errors. ``assets``: the same comparison on a real clip with
the shipped weights, the ICT face model and MediaPipe.

GPU tests (``gpu``; written on a machine without a GPU, not run yet): the GPU mode with
``TorchCudaBackend`` (FP16, CUDA graphs) against the host mode in FP32 on the CPU in vertex space; the
overlapped run against ``process`` frame by frame; no implicit synchronisation inside a frame.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import informative_untrained_model

from mlanet.edge.backends import TorchBackend
from mlanet.edge.device_ops import SyncCpuOps
from mlanet.edge.device_path import DeviceFaceStage
from mlanet.edge.gpu_crops import GpuUnavailableError
from mlanet.edge.pipeline import FacePipeline, PipelineCfg
from mlanet.edge.tracking import FaceTracker, TrackerCfg
from mlanet.edge.types import Detection, Frame

S_NET = 32
#: Host mode (grid_sample crops on a float32 grid) vs GPU mode (float64 sample positions): the crops differ
#: by ~1e-5, which moves the informative network's outputs by ~1e-5 (params) and ~2e-3 px; tracking
#: feeds the landmarks back into the next crop, so allow an order of magnitude more.
PARAM_TOL = 2e-4
PX_TOL = 2e-2
FP16_MEAN_MM, FP16_MAX_MM = 1.0, 3.0


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def face_model():
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return MorphableModel(make_synthetic_face_model())


@pytest.fixture(scope="module")
def backend(face_model):
    return TorchBackend.from_model(informative_untrained_model(face_model, S_NET), face_model)


def _detector(image):
    """Two faces wherever the frame is (boxes scale with the frame), none on frames narrower than 60 px."""
    h, w = image.shape[:2]
    if w < 60:
        return []
    return [Detection(np.array([0.10 * w, 0.15 * h, 0.45 * w, 0.70 * h]), 0.9),
            Detection(np.array([0.55 * w, 0.20 * h, 0.90 * w, 0.75 * h]), 0.8)]


def _pipeline(backend, face_model, *, device_mode, ops=None, filter_on=True, detect_every=4):
    from mlanet.edge.filters import FilterCfg

    cfg = PipelineCfg(render_mode=None, meshes=True, filter=FilterCfg(enabled=filter_on),
                      tracker=TrackerCfg(detect_every=detect_every))
    tracker = FaceTracker(TrackerCfg(detect_every=detect_every, roi_scale=backend.metadata.preprocess.roi_scale),
                          _detector)
    return FacePipeline(backend, face_model, cfg, tracker=tracker, device_mode=device_mode, device_ops=ops)


def _frames(sizes, seed=0, independent=()):
    """Noise frames with a smooth bright blob that moves (so fits and tracked boxes change)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        blob = 200 * np.exp(-(((xx - w * (0.3 + 0.03 * i)) ** 2 + (yy - h * 0.5) ** 2) / (0.05 * w * w)))
        img = np.clip(rng.integers(0, 56, (h, w, 3)) + blob[..., None], 0, 255).astype(np.uint8)
        out.append(Frame(img, i, i * 40_000_000, "test", independent=i in independent))
    return out


SIZES = [(96, 128)] * 5 + [(80, 100)] * 3 + [(40, 50)] * 2 + [(96, 128)] * 3


def _compare(a, b, *, exact: bool, param_tol=PARAM_TOL, px_tol=PX_TOL):
    assert [r.frame.index for r in a] == [r.frame.index for r in b]
    for ra, rb in zip(a, b):
        assert [f.track_id for f in ra.faces] == [f.track_id for f in rb.faces], ra.frame.index
        assert (ra.detected, ra.scene_cut) == (rb.detected, rb.scene_cut)
        for fa, fb in zip(ra.faces, rb.faces):
            pairs = [(fa.params, fb.params, param_tol), (fa.raw_params, fb.raw_params, param_tol),
                     (fa.landmarks2d, fb.landmarks2d, px_tol), (fa.vertices, fb.vertices, param_tol),
                     (np.array([fa.box.x0, fa.box.y0, fa.box.size]), np.array([fb.box.x0, fb.box.y0, fb.box.size]),
                      px_tol)]
            for x, y, tol in pairs:
                if exact:
                    np.testing.assert_array_equal(x, y)
                else:
                    np.testing.assert_allclose(x, y, rtol=0, atol=tol)


def _process_all(pipeline, frames):
    return [pipeline.process(f) for f in frames]


class LazyCpuOps(SyncCpuOps):
    """:class:`SyncCpuOps` with the ordering of a GPU: a copy on a stream other than the one the compute is
    issued on (``on``), and every download, runs only when an event recorded after it on its stream is
    waited for (``wait`` or ``synchronize``); new buffers are NaN (floats) or 0xAB (bytes). Code that reads
    a result, or reads or rewrites a buffer, without the event that orders it sees wrong numbers."""

    def __init__(self) -> None:
        self.queued: dict[int, list] = {}  # id(stream) -> copies not yet covered by an event
        self.active = None  # the stream of `on`: its uploads run in order with the (eager) compute
        self.copies = 0

    def record(self, event, stream) -> None:
        super().record(event, stream)
        event.thunks = self.queued.pop(id(stream), [])
        event.earlier = getattr(stream, "events", [])
        stream.events = [*event.earlier, event]

    def _flush(self, event) -> None:
        for ev in [*getattr(event, "earlier", []), event]:
            thunks, ev.thunks = getattr(ev, "thunks", []), []
            for thunk in thunks:
                thunk()

    def wait(self, stream, event) -> None:
        super().wait(stream, event)
        self._flush(event)

    def synchronize(self, event) -> None:
        super().synchronize(event)
        self._flush(event)

    @staticmethod
    def _fill(t):
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(0xAB if t.dtype == torch.uint8 else 1)

    def pinned_empty(self, shape, dtype):
        return self._fill(torch.empty(shape, dtype=dtype))

    def device_empty(self, shape, dtype):
        return self._fill(torch.empty(shape, dtype=dtype))

    def on(self, stream):
        import contextlib

        @contextlib.contextmanager
        def active():
            old, self.active = self.active, stream
            try:
                yield
            finally:
                self.active = old

        return active()

    def upload(self, host, stream, *, out=None, label=None):
        out = self._fill(torch.empty(host.shape, dtype=host.dtype)) if out is None else out
        snapshot = host.clone()  # what the copy engine reads, if the host leaves the buffer alone until it runs

        def copy():
            self.copies += 1
            assert torch.equal(host, snapshot), "a pinned buffer was rewritten before its upload ran"
            out.copy_(host)

        if stream is self.active:
            copy()
        else:
            self.queued.setdefault(id(stream), []).append(copy)
        return out

    def download(self, device_tensor, host, stream, *, label=None):
        self.queued.setdefault(id(stream), []).append(lambda: host.copy_(device_tensor))


# ========================================================================================= choosing the mode
def test_the_mode_follows_the_backend(backend, face_model):
    assert _pipeline(backend, face_model, device_mode=None).device_stage is None  # a CPU backend: host mode
    p = _pipeline(backend, face_model, device_mode=True)
    assert isinstance(p.device_stage, DeviceFaceStage) and isinstance(p.device_stage.ops, SyncCpuOps)

    class HostArrays:  # ONNX Runtime / TensorRT: no run_device
        metadata = backend.metadata

        def __call__(self, images):
            return backend(images)

        def warmup(self):
            pass

        def close(self):
            pass

    assert _pipeline(HostArrays(), face_model, device_mode=None).device_stage is None
    with pytest.raises(ValueError, match="device_mode=True needs a backend whose results stay on its device"):
        _pipeline(HostArrays(), face_model, device_mode=True)


def test_a_cuda_backend_without_cuda_is_a_clear_error(backend, face_model, monkeypatch):
    """A backend on a CUDA device picks the GPU mode; without CUDA that is GpuUnavailableError (one line
    from the CLIs, exit 2), never a silent run on the CPU."""

    class OnCuda(HostArraysOnDevice):
        def __init__(self, inner):
            super().__init__(inner)
            self.device = torch.device("cuda", 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match=r"needs a CUDA GPU.*--device cpu"):
        _pipeline(OnCuda(backend), face_model, device_mode=None)


class HostArraysOnDevice:
    """A DeviceInferenceBackend wrapper (tests pick its device)."""

    def __init__(self, inner):
        self.inner, self.metadata, self.device = inner, inner.metadata, inner.device

    def __call__(self, images):
        return self.inner(images)

    def run_device(self, images):
        return self.inner.run_device(images)

    def warmup(self):
        pass

    def close(self):
        pass


def test_cli_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU error; this host has a GPU")
    from mlanet.morphable.synthetic import make_synthetic_face_model
    from mlanet.edge.video_cli import main

    fm = make_synthetic_face_model().save(tmp_path / "fm.mlface.npz")
    still = tmp_path / "a.png"
    import cv2

    cv2.imwrite(str(still), np.zeros((64, 64, 3), np.uint8))
    assert main([str(still), "--out", str(tmp_path / "out"), "--untrained", "mlanet_mobile", "--face-model", str(fm),
                 "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs a CUDA GPU" in err[0] and "--device cpu" in err[0], err
    assert "Traceback" not in err[0]


# ========================================================================================= equal results
def test_gpu_mode_equals_the_host_mode(backend, face_model):
    """Detections on every frame: an untrained network on noise frames is no stable tracker (a 1e-5 change of a
    crop grows to pixels within three tracked frames), so tracking is compared on the real clip below."""
    frames = _frames([hw for hw in SIZES if hw[1] >= 60], seed=1)  # a face on every frame
    # no temporal filter: it would carry a tracked frame's difference into the next ones (the filter is host
    # code, the same in both modes; the overlapped test below runs it)
    host = _process_all(_pipeline(backend, face_model, device_mode=False, detect_every=1, filter_on=False), frames)
    dev = _process_all(_pipeline(backend, face_model, device_mode=True, detect_every=1, filter_on=False), frames)
    detected = [all(f.extras["roi_source"] == "detector" for f in r.faces) for r in host]
    assert sum(len(r.faces) for r, d in zip(host, detected) if d) >= 16
    # frames whose boxes all come from the detector (a track that keeps its fitted box is chaotic, see above)
    _compare([r for r, d in zip(dev, detected) if d], [r for r, d in zip(host, detected) if d], exact=False)
    worst = max(float(np.abs(fa.landmarks2d - fb.landmarks2d).max()) for a, b in zip(dev, host)
                for fa, fb in zip(a.faces, b.faces))
    print(f"GPU mode (CPU tensors) vs host mode: max landmark difference {worst:.2e} px")


@pytest.mark.parametrize("filter_on", [True, False])
def test_overlapped_run_equals_process_frame_by_frame(backend, face_model, filter_on):
    frames = _frames(SIZES, seed=2, independent={6})
    want = _process_all(_pipeline(backend, face_model, device_mode=True, filter_on=filter_on), frames)
    ops = LazyCpuOps()
    pipeline = _pipeline(backend, face_model, device_mode=True, ops=ops, filter_on=filter_on)
    got: list = []
    assert pipeline.run(frames, got.append) == len(frames) == pipeline.frames_done
    assert ops.copies >= len(frames)  # every frame (and box table) went through the ordered copies
    _compare(got, want, exact=True)
    # and the host mode's run equals its process (the loop the CLIs use)
    host_run: list = []
    _pipeline(backend, face_model, device_mode=False, filter_on=filter_on).run(frames, host_run.append)
    _compare(host_run, _process_all(_pipeline(backend, face_model, device_mode=False, filter_on=filter_on), frames),
             exact=True)


def test_lazy_ops_catch_a_missing_wait(backend, face_model):
    """The check above can fail: results read without waiting for their event are NaN."""
    frames = _frames(SIZES[:3], seed=3)
    ops = LazyCpuOps()
    p = _pipeline(backend, face_model, device_mode=True, ops=ops)
    stage = p.device_stage
    camera, rois = p._begin(frames[0], {})
    pending = stage.submit(stage.upload(frames[0].image), [r.box for r in rois], camera)
    assert rois and np.isnan(pending.params.numpy()).all()  # nothing downloaded before the wait
    params, _lm = stage.collect(pending)
    assert np.isfinite(params).all()


# ========================================================================================= the overlapped loop
class CountingSource:
    def __init__(self, frames):
        self.frames, self.read = frames, 0

    def __iter__(self):
        for f in self.frames:
            self.read += 1
            yield f


def test_at_most_two_frames_in_flight(backend, face_model):
    frames = _frames(SIZES, seed=4)
    for device_mode, ahead in ((True, 2), (False, 1)):
        source = CountingSource(frames)
        seen: list[tuple[int, int]] = []
        _pipeline(backend, face_model, device_mode=device_mode).run(
            source, lambda r: seen.append((r.frame.index, source.read)))
        assert [i for i, _ in seen] == list(range(len(frames)))
        assert all(read - i <= ahead for i, read in seen), (device_mode, seen)
    # max_frames reads no frame beyond the last one it processes
    source = CountingSource(frames)
    assert _pipeline(backend, face_model, device_mode=True).run(source, max_frames=3) == 3 and source.read == 3


def test_stop_interrupt_and_reuse(backend, face_model):
    frames = _frames(SIZES, seed=5)
    p = _pipeline(backend, face_model, device_mode=True)
    got: list = []
    n = p.run(frames, got.append, on_frame=lambda r: r.frame.index < 2)
    assert n == 3 == p.frames_done and [r.frame.index for r in got] == [0, 1, 2]
    # the begun frame 3 was finished through tracking: the pipeline goes on from frame 4 without error
    assert len(p.process(frames[4]).faces) == 2

    def failing(result):
        if result.frame.index == 1:
            raise KeyboardInterrupt

    p2 = _pipeline(backend, face_model, device_mode=True)
    with pytest.raises(KeyboardInterrupt):
        p2.run(frames, failing)
    assert p2.frames_done == 1
    p2.run(frames[:2])  # usable again
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        p2.run([Frame(np.zeros((8, 8), np.uint8), 0, 0, "bad")])
    p2.close()


# ========================================================================================= a real clip
@pytest.mark.assets
def test_gpu_mode_on_a_real_clip_equals_the_cpu_mode(obama_clip_24, ict_model_file):
    from mlanet.edge.face_detection import MediaPipeFaceDetector
    from mlanet.edge.frames import open_source
    from mlanet.morphable.model import MorphableModel
    from mlanet.weights import default_weights_path

    weights = default_weights_path("mlanet_mobile")
    if weights is None:
        pytest.skip("no shipped mlanet_mobile weights in this install")
    fm = MorphableModel.load(ict_model_file)
    backend = TorchBackend(weights, face_model=fm)
    runs = {}
    for mode in (False, True):
        p = FacePipeline(backend, fm, PipelineCfg(render_mode=None), detector=MediaPipeFaceDetector(), device_mode=mode)
        with open_source(str(obama_clip_24)) as source:
            out: list = []
            p.run(source, out.append)
        p.close()
        runs[mode] = out
    assert len(runs[True]) == 24 and sum(len(r.faces) for r in runs[False]) >= 20
    verts_mm = max(float(np.linalg.norm(fa.vertices - fb.vertices, axis=-1).max()) * 1000
                   for a, b in zip(runs[True], runs[False]) for fa, fb in zip(a.faces, b.faces))
    px = max(float(np.abs(fa.landmarks2d - fb.landmarks2d).max())
             for a, b in zip(runs[True], runs[False]) for fa, fb in zip(a.faces, b.faces))
    print(f"real clip, GPU mode (CPU tensors) vs CPU mode: max vertex {verts_mm:.4f} mm, max landmark {px:.4f} px")
    _compare(runs[True], runs[False], exact=False, param_tol=1e-3, px_tol=0.05)
    assert verts_mm <= 0.1


# ========================================================================================= GPU
@pytest.mark.gpu
def test_gpu_mode_on_cuda_equals_the_host_mode_and_its_own_process(backend, face_model):
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    gpu_backend = TorchCudaBackend.from_torch_backend(backend, cuda_graphs=True)
    gpu_backend.warmup(batch_sizes=(1, 2))
    fm_gpu = MorphableModel(make_synthetic_face_model())
    frames = _frames([(480, 640)] * 6 + [(360, 480)] * 4, seed=6)
    host = _process_all(_pipeline(backend, face_model, device_mode=False, filter_on=False), frames)
    p = _pipeline(gpu_backend, fm_gpu, device_mode=None, filter_on=False)
    assert p.device_stage is not None and p.device_stage.device.type == "cuda"
    got: list = []
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        p.run(frames, got.append)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    worst = {"mean": 0.0, "max": 0.0}
    for a, b in zip(got, host):
        assert [f.track_id for f in a.faces] == [f.track_id for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            d = np.linalg.norm(fa.vertices.astype(np.float64) - fb.vertices, axis=-1) * 1000
            worst = {"mean": max(worst["mean"], float(d.mean())), "max": max(worst["max"], float(d.max()))}
    print(f"GPU mode on CUDA (fp16) vs host mode (fp32, CPU): vertex mm {worst}")
    assert worst["mean"] <= FP16_MEAN_MM and worst["max"] <= FP16_MAX_MM
    seq = _process_all(_pipeline(gpu_backend, fm_gpu, device_mode=None, filter_on=False), frames)
    _compare(got, seq, exact=False, param_tol=1e-5, px_tol=1e-3)  # same kernels, same order: equal up to atomics
    p.close()
    gpu_backend.close()
