"""One frame's faces on the device: box tables, the crop, the network, the frame pose, the mesh.

* Box tables (N, 3) float64 ``[x0 - 0.5, y0 - 0.5, size / S]`` -- what the crop kernel reads
  (:func:`boxes_to_table`, :func:`table_to_boxes`, :func:`crop_boxes_from_table`).
* :func:`roi_table_from_landmarks` -- the next frame's table from this frame's landmarks, on the
  device (the :class:`~mlanet.edge.tracking.FaceTracker` rule), with a plausibility flag.
* :class:`TorchTableCropper` -- :func:`~mlanet.edge.gpu_crops.crop_from_table` (the crop kernel's
  exact arithmetic in torch, any device) behind :class:`~mlanet.edge.gpu_crops.GpuCropper`'s interface.
* :class:`DeviceFacePath` -- crop -> network -> crop-to-frame pose -> vertices and 2D landmarks,
  all queued on the current stream with no host synchronisation (:class:`DeviceFaces`).

The GPU parts (GpuCropper, TorchCudaBackend under this path) are UNTESTED ON A GPU; the CPU
tests (tests/test_gpu_stream.py) check every number against the CPU pipeline's maths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mlanet.preprocess import CropBox, PreprocessCfg
from mlanet.edge.gpu_crops import _check_frame_tensor, _check_size, _check_table, box_table, crop_from_table, normalize_device
from mlanet.edge.reconstruct import DEFAULT_FOV_DEG, FaceDecoder, crop_pose_to_frame_tensor, frame_camera

#: Landmarks per face (the 68-point set of every face model).
N_LANDMARKS = 68


# ========================================================================================= box tables
def boxes_to_table(boxes: Sequence[CropBox], input_size: int, device: Any = "cpu") -> torch.Tensor:
    """(N, 3) float64 ``[x0 - 0.5, y0 - 0.5, size / S]`` on ``device``: :func:`~mlanet.edge.gpu_crops.box_table`'s values.

    A synchronous copy on a GPU; :class:`StreamingLoop` uploads tables through pinned memory instead.
    """
    return torch.from_numpy(box_table(boxes, input_size)).to(device)


def table_to_boxes(table: torch.Tensor, input_size: int) -> torch.Tensor:
    """Kernel table (N, 3) -> (N, 3) float64 ``[x0, y0, size]`` (image pixels), on the table's device."""
    _check_table(table, "table_to_boxes")
    s = _check_size(input_size)
    return torch.stack([table[:, 0] + 0.5, table[:, 1] + 0.5, table[:, 2] * s], dim=-1)


def crop_boxes_from_table(table: np.ndarray, input_size: int) -> list[CropBox]:
    """Host kernel table (N, 3) -> N :class:`~mlanet.preprocess.CropBox` (the inverse of ``box_table``, up to rounding)."""
    s = _check_size(input_size)
    t = np.asarray(table, dtype=np.float64).reshape(-1, 3)
    return [CropBox(float(r[0]) + 0.5, float(r[1]) + 0.5, float(r[2]) * s) for r in t]


def roi_table_from_landmarks(
    landmarks2d: torch.Tensor,
    prev_table: torch.Tensor,
    roi_scale: float,
    input_size: int,
    max_size_ratio: float = 1.5,
    *,
    min_iou: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next frame's crop table from this frame's fitted landmarks, on their device (no host sync).

    The torch form of :meth:`~mlanet.edge.tracking.FaceTracker`'s fit ROI: per face the square of
    side ``roi_scale * max(w, h)`` centred on the landmarks' bounding box
    (:func:`~mlanet.preprocess.box_from_points`, same float64 operations, so the same bits), as a
    kernel table row (:func:`~mlanet.edge.gpu_crops.box_table`).

    Args:
        landmarks2d: (N, L, 2) float image pixels (L >= 2; extra trailing columns are ignored).
        prev_table: (N, 3) float64 kernel table of the boxes the landmarks were fitted in.
        roi_scale: the artifact's ``PreprocessCfg.roi_scale``.
        input_size: S.
        max_size_ratio: a new side outside ``[old / r, old * r]`` is implausible.
        min_iou: a new box overlapping the previous one less than this is implausible
            (:attr:`~mlanet.edge.tracking.TrackerCfg.min_fit_iou`; 0 disables the check).

    Returns:
        ``(table (N, 3) float64, plausible (N,) bool)``; an implausible row (also: non-finite or
        degenerate landmarks) keeps ``prev_table``'s row.
    """
    if (not isinstance(landmarks2d, torch.Tensor) or landmarks2d.ndim != 3 or landmarks2d.shape[1] < 2
            or landmarks2d.shape[2] < 2 or not landmarks2d.is_floating_point()):
        desc = f"{tuple(landmarks2d.shape)} {landmarks2d.dtype}" if isinstance(landmarks2d, torch.Tensor) else type(landmarks2d).__name__
        raise ValueError(f"roi_table_from_landmarks: landmarks2d must be an (N, L >= 2, 2) float tensor, got {desc}")
    n = int(landmarks2d.shape[0])
    _check_table(prev_table, "roi_table_from_landmarks: prev_table", n, landmarks2d.device)
    s = _check_size(input_size)
    try:
        roi_scale = float(roi_scale)
    except (TypeError, ValueError):
        raise ValueError(f"roi_scale must be a positive number, got {roi_scale!r}") from None
    if not (roi_scale > 0 and math.isfinite(roi_scale)):
        raise ValueError(f"roi_scale must be a positive number, got {roi_scale!r}")
    if not max_size_ratio >= 1.0:
        raise ValueError(f"max_size_ratio must be >= 1, got {max_size_ratio!r}")
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou must be in [0, 1], got {min_iou!r}")
    lm = landmarks2d[..., :2].to(torch.float64)
    lo, hi = lm.amin(dim=1), lm.amax(dim=1)  # (N, 2); NaN propagates
    side = roi_scale * (hi - lo).amax(dim=1)
    centre = (lo + hi) / 2
    x0 = centre[:, 0] - side / 2
    y0 = centre[:, 1] - side / 2
    new = torch.stack([x0 - 0.5, y0 - 0.5, side / s], dim=-1)
    old_size = prev_table[:, 2] * s
    ratio = side / old_size
    r = float(max_size_ratio)
    ok = torch.isfinite(new).all(dim=1) & (side > 0) & (ratio >= 1.0 / r) & (ratio <= r)
    if min_iou > 0.0:
        ox0, oy0 = prev_table[:, 0] + 0.5, prev_table[:, 1] + 0.5
        w = (torch.minimum(ox0 + old_size, x0 + side) - torch.maximum(ox0, x0)).clamp_min(0.0)
        h = (torch.minimum(oy0 + old_size, y0 + side) - torch.maximum(oy0, y0)).clamp_min(0.0)
        inter = w * h
        iou = inter / (old_size * old_size + side * side - inter)
        ok = ok & (iou >= min_iou)
    return torch.where(ok[:, None], new, prev_table), ok


# ========================================================================================= crops in torch
class TorchTableCropper:
    """:func:`~mlanet.edge.gpu_crops.crop_from_table` with the interface of :meth:`~mlanet.edge.gpu_crops.GpuCropper.crop_table`.

    Args:
        input_size: S.
        dtype: output dtype (``torch.float32`` or ``torch.float16``).
    """

    def __init__(self, input_size: int, *, dtype: torch.dtype = torch.float32) -> None:
        self.input_size = _check_size(input_size)
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        self.dtype = dtype

    def crop_table(self, frame: torch.Tensor, table: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        crops = crop_from_table(frame, table, self.input_size, self.dtype)
        if out is None:
            return crops
        if out.shape != crops.shape or out.dtype != crops.dtype or out.device != crops.device:
            raise ValueError(f"TorchTableCropper: out must be {tuple(crops.shape)} {crops.dtype} on {crops.device}, "
                             f"got {tuple(out.shape)} {out.dtype} {out.device}")
        return out.copy_(crops)


class ModuleInference:
    """A torch network as the loop's inference: device images (B, 3, S, S) -> (B, P) float32 on the device.

    Runs under ``torch.no_grad()`` with the images cast to the network's parameter dtype; for a
    CPU :class:`~mlanet.edge.backends.TorchBackend` use ``ModuleInference(backend.model)``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        first = next(iter(model.parameters()), None)
        self.dtype = first.dtype if first is not None else torch.float32

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images.to(self.dtype)).float()


# ========================================================================================= one frame on the device
@dataclass
class DeviceFaces:
    """N faces of one frame, as tensors on the device.

    Attributes:
        params_crop: (N, P) float32, crop camera (what the network predicted).
        params_frame: (N, P) float32, frame camera.
        vertices: (N, V, 3) float32 metres, frame camera.
        landmarks2d: (N, 68, 2) float32 image pixels.
    """

    params_crop: torch.Tensor
    params_frame: torch.Tensor
    vertices: torch.Tensor
    landmarks2d: torch.Tensor


class DeviceFacePath:
    """Crop -> network -> frame pose -> vertices and 2D landmarks for one frame, queued on the current stream.

    No host synchronisation and no host data: the frame and the box table are device tensors.
    The maths is the CPU pipeline's (:func:`~mlanet.edge.reconstruct.crop_pose_to_frame_tensor`,
    :meth:`~mlanet.edge.reconstruct.FaceDecoder.decode_tensors`); only the crop differs (the
    kernel's float64 sample positions instead of ``grid_sample``'s float32 grid, ~1e-5).

    Args:
        infer: device images (N, 3, S, S) -> (N, P) float32 device params
            (:meth:`~mlanet.edge.backends.torch_cuda.TorchCudaBackend.run_device`, or
            :class:`ModuleInference`).
        face_model: the :class:`~mlanet.morphable.model.MorphableModel` (moved to ``device``).
        preprocess: the artifact's :class:`~mlanet.preprocess.PreprocessCfg`.
        cropper: ``crop_table(frame, table) -> (N, 3, S, S)``
            (:meth:`~mlanet.edge.gpu_crops.GpuCropper.crop_table` on CUDA, :class:`TorchTableCropper`).
        camera: a fixed frame camera; default: :func:`~mlanet.edge.reconstruct.frame_camera`
            of each frame size with ``fov_deg``.
        fov_deg: horizontal field of view of the default frame camera.
        device: where the work runs (default: ``cropper.device`` if it has one, else the CPU).
    """

    def __init__(self, infer: Callable[[torch.Tensor], torch.Tensor], face_model: Any, preprocess: PreprocessCfg,
                 cropper: Any, *, camera: Any = None, fov_deg: float = DEFAULT_FOV_DEG, device: Any = None) -> None:
        if not isinstance(preprocess, PreprocessCfg):
            raise ValueError(f"preprocess must be a PreprocessCfg, got {type(preprocess).__name__}")
        if not callable(infer):
            raise ValueError(f"infer must be callable (device images -> device params), got {type(infer).__name__}")
        if not callable(getattr(cropper, "crop_table", None)):
            raise ValueError(f"cropper needs a crop_table(frame, table) method, got {type(cropper).__name__}")
        s = getattr(cropper, "input_size", preprocess.input_size)
        if s != preprocess.input_size:
            raise ValueError(f"cropper makes {s}x{s} crops, the network expects {preprocess.input_size}")
        frame_camera(64, 64, fov_deg)  # validates fov_deg
        self.infer = infer
        self.preprocess = preprocess
        self.input_size = int(preprocess.input_size)
        self.cropper = cropper
        self.fov_deg = float(fov_deg)
        self.device = normalize_device(device if device is not None else getattr(cropper, "device", "cpu"))
        self.decoder = FaceDecoder(face_model, device=self.device)
        self.face_model = self.decoder.face_model
        self.layout = face_model.layout
        self.n_vertices = int(face_model.n_vertices)
        self._fixed_camera = camera
        self._cameras: dict[tuple[int, int], tuple[Any, Any]] = {}

    @classmethod
    def for_backend(cls, backend: Any, face_model: Any, **kwargs: Any) -> "DeviceFacePath":
        """The path for a backend: a :class:`~mlanet.edge.backends.torch_cuda.TorchCudaBackend`
        (:class:`~mlanet.edge.gpu_crops.GpuCropper` in the backend's dtype and memory format, its
        ``run_device``) or a :class:`~mlanet.edge.backends.TorchBackend` on any device
        (:class:`TorchTableCropper`, :class:`ModuleInference`). ``kwargs``: ``camera``, ``fov_deg``.

        Raises:
            ValueError: another backend (ONNX Runtime and TensorRT return host arrays), or a face
                model whose layout differs from the backend's.
        """
        from mlanet.model_metadata import ModelMetadata

        meta = getattr(backend, "metadata", None)
        if not isinstance(meta, ModelMetadata) or meta.preprocess is None:
            raise ValueError(f"backend {type(backend).__name__} has no ModelMetadata with a layout and preprocessing")
        preprocess, layout = meta.preprocess, meta.layout
        if layout != face_model.layout:
            raise ValueError(f"{meta.source or 'backend'}: parameter layout {layout.sizes} differs from face model "
                             f"{face_model.model_id} ({face_model.layout.sizes})")
        if callable(getattr(backend, "run_device", None)):
            from mlanet.edge.gpu_crops import GpuCropper

            cropper = GpuCropper(preprocess.input_size, backend.device, dtype=backend.dtype,
                                 channels_last=backend.memory_format == torch.channels_last)
            return cls(backend.run_device, face_model, preprocess, cropper, device=backend.device, **kwargs)
        model = getattr(backend, "model", None)
        if isinstance(model, torch.nn.Module):
            device = getattr(backend, "device", "cpu")
            return cls(ModuleInference(model), face_model, preprocess, TorchTableCropper(preprocess.input_size),
                       device=device, **kwargs)
        raise ValueError(f"DeviceFacePath needs a backend whose results stay on the device (TorchCudaBackend or "
                         f"TorchBackend), got {type(backend).__name__}")

    def cameras(self, width: int, height: int) -> tuple[Any, Any]:
        """(host camera, the same camera as float32 tensors on the device) for a ``width x height`` frame.

        The device copy is made with fills (``torch.full``), not a host-to-device copy, so even the
        first frame of a size does not synchronise.
        """
        key = (int(width), int(height))
        got = self._cameras.get(key)
        if got is None:
            from mlanet.geometry.camera import PinholeCamera

            host = self._fixed_camera if self._fixed_camera is not None else frame_camera(width, height, self.fov_deg)
            if (host.width, host.height) != key:
                raise ValueError(f"the camera is for {host.width}x{host.height} frames, got a {width}x{height} frame")
            fx, fy, cx, cy = (torch.full((1,), float(v[0]), dtype=torch.float32, device=self.device)
                              for v in (host.fx, host.fy, host.cx, host.cy))
            dev = PinholeCamera(fx, fy, cx, cy, host.width, host.height)
            got = self._cameras[key] = (host, dev)
        return got

    def empty(self) -> DeviceFaces:
        """Zero faces (no launch)."""
        P, V, dev = self.layout.total, self.n_vertices, self.device
        z = torch.zeros((0, P), dtype=torch.float32, device=dev)
        return DeviceFaces(z, z.clone(), torch.zeros((0, V, 3), device=dev), torch.zeros((0, N_LANDMARKS, 2), device=dev))

    def __call__(self, frame: torch.Tensor, table: torch.Tensor) -> DeviceFaces:
        """Faces of ``frame`` (H, W, 3) uint8 in the crops of ``table`` (N, 3) float64, both on :attr:`device`.

        Returns:
            :class:`DeviceFaces`, written by work queued on the current stream.
        """
        _check_frame_tensor(frame, "DeviceFacePath")
        if frame.device != self.device:
            raise ValueError(f"DeviceFacePath on {self.device} got a frame on {frame.device}")
        _check_table(table, "DeviceFacePath", device=self.device)
        host_cam, dev_cam = self.cameras(int(frame.shape[1]), int(frame.shape[0]))
        n = int(table.shape[0])
        if n == 0:
            return self.empty()
        with torch.no_grad():
            crops = self.cropper.crop_table(frame, table)
            params_crop = self.infer(crops)
            P = self.layout.total
            if not isinstance(params_crop, torch.Tensor) or tuple(params_crop.shape) != (n, P):
                desc = tuple(params_crop.shape) if isinstance(params_crop, torch.Tensor) else type(params_crop).__name__
                raise ValueError(f"DeviceFacePath: the network returned {desc}, expected ({n}, {P}) parameters")
            if params_crop.device != self.device:
                raise ValueError(f"DeviceFacePath: the network returned parameters on {params_crop.device}, not {self.device}")
            params_crop = params_crop.float()
            boxes = table_to_boxes(table, self.input_size)
            params_frame = crop_pose_to_frame_tensor(params_crop, boxes, self.layout, self.preprocess, host_cam)
            verts, lm2d, _ = self.decoder.decode_tensors(params_frame, dev_cam, albedo=False)
        return DeviceFaces(params_crop, params_frame, verts, lm2d)
