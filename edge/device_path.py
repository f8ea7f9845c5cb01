"""The device stages of the pipeline's GPU mode: upload, crop -> network -> frame pose -> 2D landmarks, download.

:class:`DeviceFaceStage` is what :class:`~mlanet.edge.pipeline.FacePipeline` runs for its ``preprocess``,
``infer`` and (the device part of) ``reconstruct`` stages when its backend keeps results on a device
(a :class:`~mlanet.edge.protocols.DeviceInferenceBackend`: ``TorchCudaBackend`` on a GPU). Per frame:

1. :meth:`DeviceFaceStage.upload`: the (H, W, 3) uint8 frame is copied into a pinned host slot and
   uploaded once, asynchronously, on the *upload* stream (event ``uploaded``);
2. :meth:`DeviceFaceStage.submit`: on the *compute* stream, after ``uploaded``: the N boxes (a few
   hundred bytes, through pinned memory), the crops (:func:`~mlanet.edge.gpu_crops.crop_from_table`), the network
   (``backend.run_device``), the crop -> frame pose (:func:`~mlanet.edge.reconstruct.crop_pose_to_frame_tensor`)
   and the 68 landmarks (:meth:`~mlanet.edge.reconstruct.FaceDecoder.landmarks2d_device`); then the
   D2H copies of the (N, P) parameters and (N, 68, 2) landmarks into pinned memory (event ``done``);
3. :meth:`DeviceFaceStage.collect`: the host waits for ``done`` (the only blocking call) and gets
   NumPy arrays.

Nothing else leaves the device; the tracker, the temporal filter, the meshes and the GL render run on
the host on those small results, exactly as in the CPU mode.

Overlap (:meth:`FacePipeline.run <mlanet.edge.pipeline.FacePipeline.run>` in GPU mode)
    Two frame slots: while frame t computes, frame t+1 is decoded on the host and uploaded on the
    upload stream, and while the host renders and writes frame t, frame t+1 computes. A slot's
    pinned buffer is rewritten only after its previous upload completed (host ``synchronize`` of
    ``uploaded``, long done in steady state); its device buffer only after the compute that read it
    (the upload stream waits that frame's ``done``, no host block).

Allocator rule
    The device frame buffers are allocated on the host's current stream and used on the upload and
    compute streams: each gets :meth:`~mlanet.edge.device_ops.DeviceOps.record_stream` for both once, at
    allocation. Everything else a frame allocates is allocated and used on the compute stream.

On the CPU
    With a CPU backend (``TorchBackend``) and :class:`~mlanet.edge.device_ops.SyncCpuOps` the same code
    runs on CPU tensors (each operation at once): what the tests run. UNTESTED ON A GPU: the CUDA
    streams, events and pinned copies (:class:`~mlanet.edge.device_ops.TorchCudaOps`) have not run yet.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mlanet.errors import MLANetError
from mlanet.geometry.camera import PinholeCamera
from mlanet.params import require_finite_params
from mlanet.preprocess import CropBox, PreprocessCfg
from mlanet.edge.device_ops import DeviceOps, SyncCpuOps, TorchCudaOps
from mlanet.edge.gpu_crops import box_table, crop_from_table, normalize_device
from mlanet.edge.protocols import DeviceInferenceBackend
from mlanet.edge.reconstruct import FaceDecoder, crop_pose_to_frame_tensor, face_anchor

#: Landmarks per face (the 68-point set of every face model).
N_LANDMARKS = 68
#: Frame slots (pinned host buffer + device buffer): the frame computing and the next one uploading.
FRAME_SLOTS = 2


@dataclass(eq=False)
class _FrameSlot:
    """One pinned host frame buffer and its device twin."""

    host: torch.Tensor | None = None  # pinned (H, W, 3) uint8
    dev: torch.Tensor | None = None  # device (H, W, 3) uint8
    uploaded: Any = None  # event after its last H2D: the host may rewrite `host` once it completed
    released: Any = None  # `done` event of the last compute that read `dev`: the upload stream waits it


@dataclass(eq=False)
class StagedFrame:
    """A frame whose upload is queued (:meth:`DeviceFaceStage.upload`): its slot and upload event."""

    slot: _FrameSlot
    uploaded: Any
    width: int
    height: int


@dataclass(eq=False)
class PendingFaces:
    """One frame's queued device work (:meth:`DeviceFaceStage.submit`): pinned result buffers, filled
    once ``done`` completed."""

    n: int
    params: torch.Tensor  # pinned (N, P) float32, frame camera
    landmarks2d: torch.Tensor  # pinned (N, 68, 2) float32, image pixels
    done: Any


class DeviceFaceStage:
    """Crop, network, frame pose and 2D landmarks of one frame's faces on the backend's device.

    Args:
        backend: a :class:`~mlanet.edge.protocols.DeviceInferenceBackend` (``run_device``, ``device``).
        face_model: the :class:`~mlanet.morphable.model.MorphableModel` (a copy is moved to the device
            when it is elsewhere; the caller's model stays where it is).
        preprocess: the artifact's :class:`~mlanet.preprocess.PreprocessCfg`.
        ops: the device operations (default: :class:`~mlanet.edge.device_ops.TorchCudaOps` on a CUDA
            device, :class:`~mlanet.edge.device_ops.SyncCpuOps` on the CPU).

    Raises:
        ValueError: a backend without ``run_device``, or ``ops`` on another device than the backend.
        GpuUnavailableError: a CUDA backend device without a CUDA GPU.
    """

    def __init__(self, backend: DeviceInferenceBackend, face_model: Any, preprocess: PreprocessCfg, *,
                 ops: DeviceOps | None = None) -> None:
        if not isinstance(backend, DeviceInferenceBackend):
            raise ValueError(f"the device mode needs a backend whose results stay on its device (run_device, "
                             f"device: TorchCudaBackend, TorchBackend), got {type(backend).__name__}")
        if not isinstance(preprocess, PreprocessCfg):
            raise ValueError(f"preprocess must be a PreprocessCfg, got {type(preprocess).__name__}")
        self.device = normalize_device(backend.device)
        if ops is None:
            ops = TorchCudaOps(self.device) if self.device.type == "cuda" else SyncCpuOps()
        if not isinstance(ops, DeviceOps):
            raise ValueError(f"ops must implement DeviceOps (TorchCudaOps, SyncCpuOps), got {type(ops).__name__}")
        if normalize_device(ops.device) != self.device:
            raise ValueError(f"the backend runs on {self.device}, the ops on {ops.device}")
        self.backend = backend
        self.ops = ops
        self.preprocess = preprocess
        self.input_size = int(preprocess.input_size)
        self.layout = face_model.layout
        model_device = next((b.device for b in face_model.buffers()), torch.device("cpu"))
        if normalize_device(model_device) != self.device:  # FaceDecoder moves its model: move a copy
            face_model = copy.deepcopy(face_model)
        self.decoder = FaceDecoder(face_model, device=str(self.device))
        #: the crop -> frame face anchor on the device, made once (not a host-to-device copy per frame)
        self.anchor = torch.tensor(face_anchor(face_model), dtype=torch.float64, device=self.device)
        self._streams = {name: ops.new_stream(name) for name in ("upload", "compute")}
        self._slots = [_FrameSlot() for _ in range(FRAME_SLOTS)]
        self._next_slot = 0
        self._cameras: dict[tuple[float, ...], PinholeCamera] = {}
        self._source = str(backend.metadata.source or type(backend).__name__)

    # ------------------------------------------------------------------ steps
    def _device_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A long-lived device buffer used on both streams (recorded on each, see the module docstring)."""
        buf = self.ops.device_empty(shape, dtype)
        for stream in self._streams.values():
            self.ops.record_stream(buf, stream)
        return buf

    def upload(self, image: np.ndarray) -> StagedFrame:
        """Queue the upload of ``image`` (H, W, 3) uint8 RGB into the next frame slot (upload stream).

        Raises:
            ValueError: an image that is not (H, W, 3) uint8.
        """
        if (not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8
                or image.shape[0] < 1 or image.shape[1] < 1):
            desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"DeviceFaceStage: the frame must be an (H, W, 3) uint8 RGB array, got {desc}")
        ops = self.ops
        slot = self._slots[self._next_slot % FRAME_SLOTS]
        self._next_slot += 1
        if slot.uploaded is not None:
            ops.synchronize(slot.uploaded)  # its previous H2D has read the pinned buffer
        H, W = int(image.shape[0]), int(image.shape[1])
        if slot.host is None or slot.dev is None or tuple(slot.host.shape) != (H, W, 3):
            if slot.released is not None:
                ops.synchronize(slot.released)  # the old device buffer is no longer read
            slot.host = ops.pinned_empty((H, W, 3), torch.uint8)
            slot.dev = self._device_buffer((H, W, 3), torch.uint8)
        np.copyto(slot.host.numpy(), image)
        up = self._streams["upload"]
        if slot.released is not None:
            ops.wait(up, slot.released)  # the compute that read this device buffer has finished
        ops.upload(slot.host, up, out=slot.dev, label=("frame", self._next_slot - 1))
        event = ops.new_event(("uploaded", self._next_slot - 1))
        ops.record(event, up)
        slot.uploaded = event
        return StagedFrame(slot, event, W, H)

    def device_camera(self, camera: PinholeCamera) -> PinholeCamera:
        """``camera`` (batch 1) as float32 tensors on the device, made with fills (``torch.full``), not a
        host-to-device copy, so even the first frame of a size does not synchronise; cached per size."""
        values = tuple(float(getattr(camera, k)[0]) for k in ("fx", "fy", "cx", "cy"))  # host floats: no sync
        key = (int(camera.width), int(camera.height), *values)
        got = self._cameras.get(key)
        if got is None:
            fx, fy, cx, cy = (torch.full((1,), v, dtype=torch.float32, device=self.device) for v in values)
            got = self._cameras[key] = PinholeCamera(fx, fy, cx, cy, camera.width, camera.height)
        return got

    def submit(self, staged: StagedFrame, boxes: Sequence[CropBox], camera: PinholeCamera) -> PendingFaces:
        """Queue the faces of ``staged`` in ``boxes`` on the compute stream, and their download.

        Args:
            staged: from :meth:`upload`.
            boxes: N crops in image pixels (the tracker's ROIs).
            camera: the frame camera on the host (batch 1).

        Returns:
            :class:`PendingFaces`; :meth:`collect` waits for it.
        """
        ops = self.ops
        comp = self._streams["compute"]
        n, P, S = len(boxes), self.layout.total, self.input_size
        # [x0 - 0.5, y0 - 0.5, size / S | x0, y0, size]: the crop table and the pose boxes in one upload
        host_boxes = ops.pinned_empty((n, 6), torch.float64)  # pinned: a truly asynchronous copy
        host_boxes.numpy()[:, :3] = box_table(boxes, S)
        host_boxes.numpy()[:, 3:] = np.array([[b.x0, b.y0, b.size] for b in boxes], np.float64).reshape(n, 3)
        params = ops.pinned_empty((n, P), torch.float32)
        landmarks = ops.pinned_empty((n, N_LANDMARKS, 2), torch.float32)
        dev_cam = self.device_camera(camera)
        frame = staged.slot.dev
        if frame is None:
            raise MLANetError("DeviceFaceStage.submit: the frame slot has no device buffer (upload it first)")
        with torch.no_grad(), ops.on(comp):
            ops.wait(comp, staged.uploaded)
            if n:
                table = ops.upload(host_boxes, comp, label=("boxes", n))
                crops = crop_from_table(frame, table[:, :3], S)
                raw = self.backend.run_device(crops)
                if not isinstance(raw, torch.Tensor) or tuple(raw.shape) != (n, P):
                    desc = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
                    raise ValueError(f"{self._source}: the network returned {desc}, expected ({n}, {P}) parameters")
                if raw.device != self.device:
                    raise ValueError(f"{self._source}: the network returned parameters on {raw.device}, not {self.device}")
                flat = crop_pose_to_frame_tensor(raw.float(), table[:, 3:], self.layout, self.preprocess, camera,
                                                 anchor=self.anchor)
                lm = self.decoder.landmarks2d_device(flat, dev_cam)
                ops.download(flat, params, comp, label=("params", n))
                ops.download(lm, landmarks, comp, label=("landmarks2d", n))
            done = ops.new_event(("done", n))
            ops.record(done, comp)
        staged.slot.released = done
        return PendingFaces(n, params, landmarks, done)

    def collect(self, pending: PendingFaces) -> tuple[np.ndarray, np.ndarray]:
        """Wait for ``pending`` and return ``(params (N, P) float32 frame camera, landmarks2d (N, 68, 2)
        float32 pixels)`` as NumPy arrays (they own pinned buffers of their own).

        Raises:
            NonFiniteOutputError: the network produced NaN or infinite values (the backend check of the CPU mode).
        """
        self.ops.synchronize(pending.done)
        params = pending.params.numpy()
        require_finite_params(params, self._source)
        return params, pending.landmarks2d.numpy()

    def drain(self) -> None:
        """Block until everything queued on both streams has finished (an interrupted run leaves no work
        in flight that reads a buffer the caller may drop)."""
        for stream in self._streams.values():
            event = self.ops.new_event(("drain", -1))
            self.ops.record(event, stream)
            self.ops.synchronize(event)

    def close(self) -> None:
        """Drain and release the frame buffers."""
        self.drain()
        self._slots = [_FrameSlot() for _ in range(FRAME_SLOTS)]
        self._cameras.clear()
