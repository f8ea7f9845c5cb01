"""Overlapped streaming on a GPU: upload of frame t+1, inference of frame t and download of frame t-1 at once.

UNTESTED ON A GPU: written on a machine without one; its gpu tests are in tests/test_gpu_stream.py
(:class:`TorchCudaOps` + :class:`~mlanet.edge.gpu_crops.GpuCropper` +
:class:`~mlanet.edge.backends.torch_cuda.TorchCudaBackend` against the :class:`SyncCpuOps` loop in
vertex space, overlap seen in CUDA event timestamps, no host synchronisation inside an iteration
except the download event). What is tested on the CPU: the whole schedule and every number, through
:class:`SyncCpuOps` (the same loop code; every operation runs at once): issue order, slot reuse,
device tracking, equality with :class:`DeviceFacePath` frame by frame and with the CPU
:class:`~mlanet.edge.pipeline.FacePipeline` maths, edge cases and clean shutdown.

What overlaps with what (:class:`StreamingLoop`)
    Three streams: *upload*, *compute*, *download*. Iteration t of :meth:`StreamingLoop.run`:

    1. host: read frame t+1 from the source, ask ``boxes_for`` for its boxes, copy it into a free
       pinned slot; upload stream: H2D of the frame (and of the detector's box table, if any),
       event ``up[t+1]``;
    2. compute stream: wait ``up[t]``; crop (one kernel), network, crop -> frame pose, vertices and
       2D landmarks of frame t; the next frame's ROI table from these landmarks; event ``done[t]``;
    3. download stream: wait ``done[t-1]``; D2H of frame t-1's results into a pinned result slot,
       event ``dl[t-1]``;
    4. host: wait for ``dl[t-1]`` (the only blocking call of the iteration) and yield frame t-1's
       :class:`StreamResult`.

    While the consumer renders or writes frame t-1 and the host decodes frame t+2, the GPU is
    still computing frame t and copying frame t+1: copy engines (H2D, D2H) and the SMs work at
    the same time. The waits between streams are ``cudaStreamWaitEvent`` (device side, no host
    block).

Latency
    A frame is yielded one iteration after its compute was issued (two after its upload): with
    a steady source the result of frame t comes out while frame t+1 computes. ``boxes_for`` of
    frame t+1 sees the latest yielded result, that of frame t-2.

Buffers
    Pinned host rings of depth 3 (:data:`RING_DEPTH`) for frames and for results, and one device
    frame buffer (plus box table) per frame slot, reused from frame to frame and reallocated when
    the frame size (or the number of faces beyond the capacity) changes. A pinned frame slot is
    rewritten only after the event of its previous upload completed (the host synchronises it;
    in steady state it has long completed); its device buffer is overwritten only after the
    download stream finished the frame that used it (the upload stream waits that frame's
    ``dl`` event). A pinned result slot is rewritten only after its previous download completed;
    results are copied out of it before they are yielded, so a :class:`StreamResult` owns its
    arrays.

Stream and allocator rules (PyTorch's caching allocator)
    A block freed by a tensor returns to the pool of the stream it was *allocated* on and may be
    handed out again at once to work queued on that stream. Every tensor used on another stream
    than its allocation stream therefore gets ``tensor.record_stream(other)``
    (:meth:`DeviceOps.record_stream`): the device frame buffers and box tables (allocated on the
    host's current stream, written on the upload stream, read on the compute and download
    streams: recorded for all three once, at allocation, which covers every later use), and
    each frame's result tensors (allocated by the compute stream, read by the D2H copies on the
    download stream). Pinned host memory is PyTorch's pinned caching allocator, which records an
    event for each asynchronous copy itself; the loop keeps its own buffers alive anyway.

Device tracking
    ``boxes_for(frame, latest)`` runs on the host before each upload. A list of
    :class:`~mlanet.preprocess.CropBox` (a detector's crops, :func:`detect_every`) sets the
    faces of that frame; None keeps tracking on the GPU: the box table of frame t is computed on
    the compute stream from frame t-1's landmarks (:func:`roi_table_from_landmarks`, the
    :class:`~mlanet.edge.tracking.FaceTracker` rule ``box_from_points(landmarks, roi_scale)``),
    never leaving the device. An implausible update (size ratio beyond ``max_size_ratio``, IoU
    with the previous box below ``min_fit_iou``, non-finite or degenerate landmarks) keeps the
    previous box and is reported as ``StreamResult.lost`` so that ``boxes_for`` can re-detect.
    Unlike :class:`~mlanet.edge.tracking.FaceTracker`, faces are neither dropped nor given ids
    here: a face is row k until ``boxes_for`` gives new boxes.

On the CPU
    :class:`SyncCpuOps` implements the same operations synchronously (an event is complete when
    recorded); with :func:`crop_from_table` (the kernel's arithmetic in torch) and
    :class:`ModuleInference` the loop runs anywhere, and it is what the CPU tests run.

First calls on a GPU
    NVRTC compilation (:class:`~mlanet.edge.gpu_crops.GpuCropper`), cuDNN benchmarking and CUDA
    graph capture (``torch.cuda.graph`` synchronises the device) happen on the first call of each
    shape: warm the backend up (``backend.warmup(batch_sizes)``) before the loop for a steady
    start.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence, cast

import numpy as np
import torch

from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox
from mlanet.edge.gpu_crops import box_table, crop_from_table, normalize_device
from mlanet.edge.face_detection import FULL_RANGE_BOX_CALIBRATION, DetectionBoxCalibration, crop_box_from_detection
from mlanet.edge.types import Frame
from mlanet.edge.device_ops import DeviceOps, SyncCpuOps, TorchCudaOps
from mlanet.edge.device_path import (
    N_LANDMARKS,
    DeviceFacePath,
    DeviceFaces,
    ModuleInference,
    TorchTableCropper,
    boxes_to_table,
    crop_boxes_from_table,
    roi_table_from_landmarks,
    table_to_boxes,
)

#: The loop's public API in one place (the device operations and the per-frame path are re-exported).
__all__ = [
    "BoxesFor", "DeviceFacePath", "DeviceFaces", "DeviceOps", "ModuleInference", "RING_DEPTH", "StreamResult",
    "StreamingLoop", "SyncCpuOps", "TorchCudaOps", "TorchTableCropper", "boxes_to_table", "crop_boxes_from_table",
    "crop_from_table", "detect_every", "roi_table_from_landmarks", "table_to_boxes",
]

log = logging.getLogger(__name__)

#: Depth of the pinned host rings (frames and results): the least that lets the upload of frame
#: t+1 reuse the slot of frame t-2, whose download event was recorded one iteration earlier.
RING_DEPTH = 3
#: Event names per frame, in stream order: upload, compute, download (start and end of each).
EVENTS: tuple[str, ...] = ("up_start", "up", "compute_start", "done", "dl_start", "dl")
#: Host-side stages in :attr:`StreamResult.host_ms`.
HOST_STAGES: tuple[str, ...] = ("decode", "boxes", "stage", "upload", "compute", "download", "wait", "unpack")

BoxesFor = Callable[[Frame, "StreamResult | None"], "Sequence[CropBox] | None"]


# ========================================================================================= the loop
@dataclass
class StreamResult:
    """One frame out of :class:`StreamingLoop` (host arrays, owned by this object).

    Attributes:
        frame: the input frame.
        boxes: the N crops used (the detector's boxes, or the tracked ones).
        params: (N, P) float32 frame-camera parameters.
        landmarks2d: (N, 68, 2) float32 image pixels.
        vertices: (N, V, 3) float32 metres, frame camera; None when the loop does not download them.
        lost: (N,) bool: this frame's fit of face k gave an implausible next box (see
            :func:`roi_table_from_landmarks`); the next tracked frame reuses this frame's box.
        detected: the boxes came from ``boxes_for`` (not from tracking).
        host_ms: host milliseconds per stage (:data:`HOST_STAGES`; on a GPU ``upload``,
            ``compute`` and ``download`` are the time to *queue* the work).
        gpu_ms: device milliseconds of ``upload``, ``compute``, ``download`` (from events; wall time
            with :class:`SyncCpuOps`); empty when the ops do not time events.
        gpu_spans: ``(start_ms, end_ms)`` of the same three, relative to the start of the run.
    """

    frame: Frame
    boxes: list[CropBox]
    params: np.ndarray
    landmarks2d: np.ndarray
    vertices: np.ndarray | None
    lost: np.ndarray
    detected: bool
    host_ms: dict[str, float] = field(default_factory=dict)
    gpu_ms: dict[str, float] = field(default_factory=dict)
    gpu_spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def n_faces(self) -> int:
        return len(self.boxes)


@dataclass(eq=False)
class _FrameSlot:
    """One pinned frame slot and its device buffers."""

    host: Any = None  # pinned (H, W, 3) uint8
    dev: Any = None  # device (H, W, 3) uint8
    host_table: Any = None  # pinned (capacity, 3) float64
    dev_table: Any = None  # device (capacity, 3) float64
    uploaded: Any = None  # event after its last H2D: the host may rewrite `host` once it completed
    released: Any = None  # `dl` event of the last frame that used `dev`: the upload stream waits it


@dataclass(eq=False)
class _ResultSlot:
    """One pinned result slot: buffers of `capacity` faces."""

    capacity: int = 0
    bufs: dict[str, Any] = field(default_factory=dict)
    done: Any = None  # event after its last D2H


@dataclass(eq=False)
class _Work:
    """A frame between its upload and its result."""

    seq: int
    frame: Frame
    slot: _FrameSlot
    n: int
    boxes: list[CropBox] | None
    events: dict[str, Any]
    host_ms: dict[str, float]
    recorded: list[Any] = field(default_factory=list)
    out: dict[str, torch.Tensor] | None = None
    res: _ResultSlot | None = None


_END = object()


class StreamingLoop:
    """Frames in, :class:`StreamResult` out, with upload, compute and download of three frames overlapped.

    See the module docstring for the schedule, the latency, the buffers and the allocator rules.

    Args:
        path: the :class:`DeviceFacePath` (its device must be ``ops.device``).
        ops: :class:`TorchCudaOps` on a GPU, :class:`SyncCpuOps` on the CPU.
        download_vertices: copy the (N, V, 3) vertices to the host (False: landmarks and
            parameters only, ``StreamResult.vertices`` is None).
        roi_scale: tracking ROI scale (default: the artifact's ``preprocess.roi_scale``).
        max_size_ratio, min_fit_iou: plausibility of a tracked box (defaults of
            :class:`~mlanet.edge.tracking.TrackerCfg`).

    Use :meth:`run`; :meth:`close` (or ``with``) releases the buffers and streams.
    """

    def __init__(self, path: DeviceFacePath, ops: DeviceOps, *, download_vertices: bool = True,
                 roi_scale: float | None = None, max_size_ratio: float = 1.5, min_fit_iou: float = 0.3) -> None:
        if not isinstance(ops, DeviceOps):
            raise ValueError(f"ops must implement DeviceOps (TorchCudaOps, SyncCpuOps), got {type(ops).__name__}")
        if normalize_device(ops.device) != path.device:
            raise ValueError(f"the path runs on {path.device}, the ops on {ops.device}")
        self.path = path
        self.ops = ops
        self.download_vertices = bool(download_vertices)
        self.roi_scale = float(path.preprocess.roi_scale if roi_scale is None else roi_scale)
        if not self.roi_scale > 0:
            raise ValueError(f"roi_scale must be positive, got {roi_scale!r}")
        if not max_size_ratio >= 1.0:
            raise ValueError(f"max_size_ratio must be >= 1, got {max_size_ratio!r}")
        if not 0.0 <= min_fit_iou <= 1.0:
            raise ValueError(f"min_fit_iou must be in [0, 1], got {min_fit_iou!r}")
        self.max_size_ratio = float(max_size_ratio)
        self.min_fit_iou = float(min_fit_iou)
        self.input_size = path.input_size
        self._streams: dict[str, Any] | None = None
        self._frame_slots = [_FrameSlot() for _ in range(RING_DEPTH)]
        self._result_slots = [_ResultSlot() for _ in range(RING_DEPTH)]
        self._inflight: list[_Work] = []
        self._next_table: torch.Tensor | None = None
        self._tracked_n = 0
        self._origin: Any = None
        self._gen: Any = None
        self._closed = False

    # ------------------------------------------------------------------ public
    def run(self, frames: Iterable[Frame], boxes_for: BoxesFor) -> Iterator[StreamResult]:
        """Results of ``frames`` in order, each one iteration after its compute (see the module docstring).

        Args:
            frames: :class:`~mlanet.edge.types.Frame` objects (any frame size; a size change
                reallocates the buffers of the slot it lands in).
            boxes_for: ``(frame, latest) -> list[CropBox] | None``, called on the host before
                the frame's upload with the most recent yielded result (None before the first):
                a list sets the faces of this frame (an empty list: none), None keeps tracking
                on the device from the previous frame (:func:`detect_every` makes one).

        Returns:
            A generator; closing it early (``break``, an exception, Ctrl-C) waits for the work in
            flight and leaves the loop ready for another run.

        Raises:
            RuntimeError: another run of this loop is still open, or the loop is closed.
        """
        if self._closed:
            raise RuntimeError("StreamingLoop is closed")
        if not callable(boxes_for):
            raise ValueError(f"boxes_for must be callable (frame, latest) -> boxes or None, got {type(boxes_for).__name__}")
        old = self._open_run()
        if old is not None:
            if inspect.getgeneratorstate(old) != inspect.GEN_CREATED:
                raise RuntimeError("StreamingLoop.run: another run of this loop is still open; finish or close() it first")
            old.close()  # never started: nothing in flight
        gen = self._run(iter(frames), boxes_for)
        self._gen = weakref.ref(gen)
        return gen

    def _open_run(self) -> Any:
        """The generator of the current run, if one exists and is not finished."""
        gen = self._gen() if self._gen is not None else None
        if gen is None or inspect.getgeneratorstate(gen) == inspect.GEN_CLOSED:
            self._gen = None
            return None
        return gen

    def close(self) -> None:
        """Finish an open run (waiting for its work in flight) and release buffers and streams."""
        gen = self._open_run()
        self._gen = None
        if gen is not None:
            try:
                gen.close()
            except ValueError:  # close() called from inside the run (e.g. from boxes_for): drain directly
                self._drain()
        self._frame_slots = [_FrameSlot() for _ in range(RING_DEPTH)]
        self._result_slots = [_ResultSlot() for _ in range(RING_DEPTH)]
        self._streams = None
        self._closed = True

    def __enter__(self) -> "StreamingLoop":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ schedule
    def _run(self, it: Iterator[Frame], boxes_for: BoxesFor) -> Iterator[StreamResult]:
        ops = self.ops
        if self._streams is None:
            self._streams = {name: ops.new_stream(name) for name in ("upload", "compute", "download")}
        try:
            self._origin = ops.new_event(("origin", -1))
            ops.record(self._origin, self._streams["upload"])
            latest: StreamResult | None = None
            seq = 0
            nxt = self._stage(it, seq, latest, boxes_for)  # upload frame 0
            computing: _Work | None = None
            while nxt is not None or computing is not None:
                cur, nxt = nxt, None
                if cur is not None:
                    seq += 1
                    nxt = self._stage(it, seq, latest, boxes_for)  # upload t+1
                    self._compute(cur)  # compute t
                prev, computing = computing, cur
                if prev is not None:
                    self._download(prev)  # download t-1
                    latest = self._finish(prev)  # the host waits for dl[t-1]
                    yield latest
        finally:
            self._drain()
            self._gen = None

    def _new_events(self, index: int) -> dict[str, Any]:
        return {name: self.ops.new_event((name, index)) for name in EVENTS}

    def _record(self, w: _Work, name: str, stream: Any) -> None:
        self.ops.record(w.events[name], stream)
        w.recorded.append(w.events[name])

    def _device_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A long-lived device buffer used on all three streams (recorded on each, see the module docstring)."""
        buf = self.ops.device_empty(shape, dtype)
        for s in self._streams.values():  # type: ignore[union-attr]
            self.ops.record_stream(buf, s)
        return buf

    def _stage(self, it: Iterator[Frame], seq: int, latest: StreamResult | None, boxes_for: BoxesFor) -> _Work | None:
        """Read the next frame, get its boxes, copy it into a pinned slot and queue its upload."""
        ops = self.ops
        ms: dict[str, float] = {}
        t0 = time.perf_counter()
        item = next(it, _END)
        ms["decode"] = 1000.0 * (time.perf_counter() - t0)
        if item is _END:
            return None
        frame = cast(Frame, item)  # checked next
        image = getattr(frame, "image", None)
        if (not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8
                or image.shape[0] < 1 or image.shape[1] < 1):
            desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"StreamingLoop: frame {seq} of the source must be a Frame with an (H, W, 3) uint8 RGB "
                             f"image, got {desc}")
        t0 = time.perf_counter()
        got = boxes_for(frame, latest)
        boxes: list[CropBox] | None = None
        table = None
        if got is not None:
            boxes = list(got)
            table = box_table(boxes, self.input_size)  # ValueError naming boxes[k] for a bad box
        n = len(boxes) if boxes is not None else self._tracked_n
        self._tracked_n = n
        ms["boxes"] = 1000.0 * (time.perf_counter() - t0)

        t0 = time.perf_counter()
        slot = self._frame_slots[seq % RING_DEPTH]
        if slot.uploaded is not None:
            ops.synchronize(slot.uploaded)  # its previous H2D has read the pinned buffer (long done in steady state)
        H, W = int(image.shape[0]), int(image.shape[1])
        if slot.host is None or tuple(slot.host.shape) != (H, W, 3):
            if slot.host is not None:
                log.debug("StreamingLoop: frame size %dx%d, reallocating slot %d", W, H, seq % RING_DEPTH)
            slot.host = ops.pinned_empty((H, W, 3), torch.uint8)
            slot.dev = self._device_buffer((H, W, 3), torch.uint8)
        np.copyto(slot.host.numpy(), image)
        if table is not None and n:
            if slot.host_table is None or slot.host_table.shape[0] < n:
                cap = max(n, 4)
                slot.host_table = ops.pinned_empty((cap, 3), torch.float64)
                slot.dev_table = self._device_buffer((cap, 3), torch.float64)
            slot.host_table[:n].numpy()[...] = table
        ms["stage"] = 1000.0 * (time.perf_counter() - t0)

        t0 = time.perf_counter()
        w = _Work(seq, frame, slot, n, boxes, self._new_events(frame.index), ms)
        self._inflight.append(w)
        up = self._streams["upload"]  # type: ignore[index]
        if slot.released is not None:
            ops.wait(up, slot.released)  # the frame that used these device buffers is downloaded
        self._record(w, "up_start", up)
        ops.upload(slot.host, up, out=slot.dev, label=("frame", frame.index))
        if table is not None and n:
            ops.upload(slot.host_table[:n], up, out=slot.dev_table[:n], label=("table", frame.index))
        self._record(w, "up", up)
        slot.uploaded = w.events["up"]
        ms["upload"] = 1000.0 * (time.perf_counter() - t0)
        return w

    def _compute(self, w: _Work) -> None:
        """Queue frame ``w``'s faces and the next frame's tracked table on the compute stream."""
        ops = self.ops
        comp, dl = self._streams["compute"], self._streams["download"]  # type: ignore[index]
        t0 = time.perf_counter()
        with torch.no_grad(), ops.on(comp):
            ops.wait(comp, w.events["up"])
            self._record(w, "compute_start", comp)
            if w.n:
                if w.boxes is not None:
                    table = w.slot.dev_table[: w.n]
                else:
                    table = self._next_table
                    if table is None or table.shape[0] != w.n:  # cannot happen: _tracked_n follows the tables
                        raise MLANetError(f"StreamingLoop: no tracked table of {w.n} faces for frame {w.frame.index}")
                faces = self.path(w.slot.dev, table)
                next_table, plausible = roi_table_from_landmarks(
                    faces.landmarks2d, table, self.roi_scale, self.input_size, self.max_size_ratio,
                    min_iou=self.min_fit_iou)
                out = {"params": faces.params_frame, "landmarks2d": faces.landmarks2d, "table": table,
                       "plausible": plausible}
                if self.download_vertices:
                    out["vertices"] = faces.vertices
                for t in out.values():
                    ops.record_stream(t, dl)  # allocated on the compute stream, read by the D2H copies
                w.out = out
                self._next_table = next_table
            else:
                self._next_table = None
            self._record(w, "done", comp)
        w.host_ms["compute"] = 1000.0 * (time.perf_counter() - t0)

    def _result_slot(self, seq: int, n: int) -> _ResultSlot:
        ops = self.ops
        res = self._result_slots[seq % RING_DEPTH]
        if res.done is not None:
            ops.synchronize(res.done)  # its previous D2H has finished (and was copied out before its yield)
        if res.capacity < n:
            cap = max(n, 4)
            P, V = self.path.layout.total, self.path.n_vertices
            res.bufs = {
                "params": ops.pinned_empty((cap, P), torch.float32),
                "landmarks2d": ops.pinned_empty((cap, N_LANDMARKS, 2), torch.float32),
                "table": ops.pinned_empty((cap, 3), torch.float64),
                "plausible": ops.pinned_empty((cap,), torch.bool),
            }
            if self.download_vertices:
                res.bufs["vertices"] = ops.pinned_empty((cap, V, 3), torch.float32)
            res.capacity = cap
        return res

    def _download(self, w: _Work) -> None:
        """Queue frame ``w``'s results into a pinned result slot on the download stream."""
        ops = self.ops
        dl = self._streams["download"]  # type: ignore[index]
        t0 = time.perf_counter()
        ops.wait(dl, w.events["done"])
        self._record(w, "dl_start", dl)
        res = self._result_slot(w.seq, w.n)
        if w.n and w.out is not None:
            for name, t in w.out.items():
                ops.download(t, res.bufs[name][: w.n], dl, label=(name, w.frame.index))
        self._record(w, "dl", dl)
        res.done = w.events["dl"]
        w.res = res
        w.slot.released = w.events["dl"]
        w.host_ms["download"] = 1000.0 * (time.perf_counter() - t0)

    def _finish(self, w: _Work) -> StreamResult:
        """Wait for frame ``w``'s download and copy its results out of the pinned slot."""
        ops = self.ops
        t0 = time.perf_counter()
        ops.synchronize(w.events["dl"])
        w.host_ms["wait"] = 1000.0 * (time.perf_counter() - t0)
        t0 = time.perf_counter()
        n, P, V = w.n, self.path.layout.total, self.path.n_vertices
        bufs = w.res.bufs if w.res is not None else {}

        def take(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
            return bufs[name][:n].numpy().copy() if n else np.zeros((0, *shape), dtype)

        params = take("params", (P,), np.float32)
        lm = take("landmarks2d", (N_LANDMARKS, 2), np.float32)
        verts = take("vertices", (V, 3), np.float32) if self.download_vertices else None
        lost = ~take("plausible", (), np.bool_)
        boxes = w.boxes if w.boxes is not None else crop_boxes_from_table(take("table", (3,), np.float64), self.input_size)
        w.out = None  # the downloads are complete: the device results may go back to the allocator
        w.host_ms["unpack"] = 1000.0 * (time.perf_counter() - t0)
        gpu_ms: dict[str, float] = {}
        spans: dict[str, tuple[float, float]] = {}
        for stage, (a, b) in {"upload": ("up_start", "up"), "compute": ("compute_start", "done"),
                              "download": ("dl_start", "dl")}.items():
            d = ops.elapsed_ms(w.events[a], w.events[b])
            if d is None:
                continue
            gpu_ms[stage] = d
            start = ops.elapsed_ms(self._origin, w.events[a])
            if start is not None:
                spans[stage] = (start, start + d)
        self._inflight.remove(w)
        return StreamResult(frame=w.frame, boxes=list(boxes), params=params, landmarks2d=lm, vertices=verts, lost=lost,
                            detected=w.boxes is not None, host_ms=w.host_ms, gpu_ms=gpu_ms, gpu_spans=spans)

    def _drain(self) -> None:
        """Wait for every queued operation of the frames in flight, then forget them (no dangling state).

        Each recorded event of a frame in flight is synchronised, then one new event per stream,
        which also covers work queued after a frame's last event (an exception in the middle of a
        compute).
        """
        first_error: BaseException | None = None
        events = [ev for w in self._inflight for ev in w.recorded]
        if self._streams is not None:
            for stream in self._streams.values():
                ev = self.ops.new_event(("drain", -1))
                self.ops.record(ev, stream)
                events.append(ev)
        for ev in events:
            try:
                self.ops.synchronize(ev)
            except Exception as exc:  # noqa: BLE001 - keep draining; report the first failure
                first_error = first_error or exc
        for w in self._inflight:
            w.out = None
        self._inflight = []
        self._next_table = None
        self._tracked_n = 0
        if first_error is not None:
            log.warning("StreamingLoop: waiting for the work in flight failed: %s", first_error)


# ========================================================================================= detection schedule
def detect_every(
    detector: Callable[[np.ndarray], Sequence[Any]],
    every: int = 10,
    *,
    roi_scale: float = math.sqrt(2.0),
    calibration: DetectionBoxCalibration | None = None,
    max_faces: int | None = None,
) -> BoxesFor:
    """A ``boxes_for`` for :meth:`StreamingLoop.run`: run ``detector`` on a schedule, track on the device otherwise.

    The detector runs on a frame when it never ran, when ``every`` frame indices passed since it
    last ran (indices, so dropped frames count; also when the index went backwards), when the
    frame size changed, or when the latest result at or after the last detection has no face or
    a lost one. Detections become crops by
    :func:`~mlanet.edge.face_detection.crop_box_from_detection`.

    Args:
        detector: ``image (H, W, 3) uint8 RGB -> list[Detection]`` (e.g.
            :class:`~mlanet.edge.face_detection.MediaPipeFaceDetector`), best first.
        every: frames between scheduled detections (>= 1).
        roi_scale: pass the artifact's ``PreprocessCfg.roi_scale`` (the default is its default).
        calibration: detection box -> crop (default: the detector's ``box_calibration``, else
            :data:`~mlanet.edge.face_detection.FULL_RANGE_BOX_CALIBRATION`).
        max_faces: keep at most this many detections.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int, got {every!r}")
    if max_faces is not None and (isinstance(max_faces, bool) or not isinstance(max_faces, int) or max_faces < 0):
        raise ValueError(f"max_faces must be a non-negative int or None, got {max_faces!r}")
    cal = calibration or getattr(detector, "box_calibration", None) or FULL_RANGE_BOX_CALIBRATION
    state: dict[str, Any] = {"last": None, "size": None}

    def boxes_for(frame: Frame, latest: StreamResult | None) -> list[CropBox] | None:
        last = state["last"]
        due = (last is None or frame.index - last >= every or frame.index < last
               or (frame.width, frame.height) != state["size"])
        if not due and latest is not None and latest.frame.index >= last:
            due = latest.n_faces == 0 or bool(np.any(latest.lost))
        if not due:
            return None
        dets = list(detector(frame.image))
        if max_faces is not None:
            dets = dets[:max_faces]
        state["last"], state["size"] = frame.index, (frame.width, frame.height)
        return [crop_box_from_detection(d, roi_scale, cal) for d in dets]

    return boxes_for
