"""One preprocessing definition: how a face is cropped, resized and normalised for the network.

:class:`PreprocessCfg` is stored inside every artifact (checkpoint, ONNX metadata, engine
header); training, evaluation and the runtime all crop with the functions below, so there is
exactly one crop convention.

Crop box
    A square ``CropBox(x0, y0, size)`` in continuous image pixels (see
    :mod:`mlanet.conventions`: pixel (i, j) has its centre at (i + 0.5, j + 0.5)). It may
    leave the image; outside pixels are zero (black), never clipped or shifted. Crop pixel
    ``(i, j)`` of an ``S x S`` input has its centre at image point
    ``(x0 + (i + 0.5) * size / S, y0 + (j + 0.5) * size / S)``; continuous points map by
    ``u_crop = (u - x0) * S / size``.

Boxes from landmarks
    The AFLW2000-3D protocol (``shared/PROTOCOLS.md``): a square of side
    ``roi_scale * max(w, h)`` centred on the axis-aligned box of the 68 landmarks, with
    ``roi_scale = sqrt(2)``.

Network input
    RGB float in [0, 1], shape (B, 3, S, S). Normalisation by ``mean``/``std`` happens inside
    the network (first layer), so every backend feeds the same [0, 1] tensor.

Crop camera
    The network predicts pose in the camera of the crop: a pinhole camera with square pixels,
    focal ``focal_ratio * S`` pixels and the principal point at the crop centre. With the
    defaults (focal 4.53 S, about 12.6 degrees field of view) a face whose 68-landmark box is
    15.5 cm wide (the ICT mean face: 14.7 cm) fills a ``sqrt(2)`` crop at ``prior_depth_m = 1``
    metre.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mlanet.geometry.camera import PinholeCamera

PREPROCESS_VERSION = 1


@dataclass(frozen=True)
class PreprocessCfg:
    """Crop, resize and normalisation of the network input (stored in every artifact)."""

    input_size: int = 224
    roi_scale: float = math.sqrt(2.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    focal_ratio: float = 1015.0 / 224.0
    prior_depth_m: float = 1.0

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input_size must be >= 16, got {self.input_size}")
        if self.roi_scale <= 0 or self.focal_ratio <= 0 or self.prior_depth_m <= 0:
            raise ValueError("roi_scale, focal_ratio and prior_depth_m must be positive")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values, std > 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return {"version": PREPROCESS_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PreprocessCfg":
        d = dict(d)
        version = d.pop("version", None)
        if version != PREPROCESS_VERSION:
            raise ValueError(f"unsupported PreprocessCfg version {version!r} (this MLANet reads {PREPROCESS_VERSION})")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown PreprocessCfg keys: {sorted(unknown)}")
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(x) for x in d[k])
        return cls(**d)

    def camera(self, batch_size: int = 1, dtype: torch.dtype = torch.float32, device: Any = None) -> PinholeCamera:
        """The crop camera (see module docstring)."""
        s = float(self.input_size)
        f = self.focal_ratio * s
        ones = torch.ones(batch_size, dtype=dtype, device=device)
        return PinholeCamera(f * ones, f * ones, 0.5 * s * ones, 0.5 * s * ones, self.input_size, self.input_size)


@dataclass(frozen=True)
class CropBox:
    """Square crop ``[x0, x0 + size) x [y0, y0 + size)`` in continuous image pixels."""

    x0: float
    y0: float
    size: float

    def __post_init__(self) -> None:
        if not self.size > 0:
            raise ValueError(f"crop size must be positive, got {self.size}")

    def as_array(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.size], dtype=np.float64)

    def image_to_crop(self, points: np.ndarray | torch.Tensor, input_size: int) -> np.ndarray | torch.Tensor:
        """Image pixels (..., 2) -> crop pixels (..., 2) (continuous coordinates)."""
        s = input_size / self.size
        offset = points.new_tensor([self.x0, self.y0]) if isinstance(points, torch.Tensor) else np.array([self.x0, self.y0])
        return (points[..., :2] - offset) * s

    def crop_to_image(self, points: np.ndarray | torch.Tensor, input_size: int) -> np.ndarray | torch.Tensor:
        """Crop pixels (..., 2) -> image pixels (..., 2); the inverse of :meth:`image_to_crop`."""
        s = self.size / input_size
        offset = points.new_tensor([self.x0, self.y0]) if isinstance(points, torch.Tensor) else np.array([self.x0, self.y0])
        return points[..., :2] * s + offset


def box_from_points(points: np.ndarray, roi_scale: float) -> CropBox:
    """Square box of side ``roi_scale * max(w, h)`` centred on the axis-aligned box of ``points`` (N, 2)."""
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    if pts.ndim != 2 or len(pts) < 2 or not np.all(np.isfinite(pts)):
        raise ValueError("box_from_points needs (N >= 2, 2) finite points")
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    side = roi_scale * float(max(hi - lo))
    if side <= 0:
        raise ValueError("landmarks are degenerate (zero-size box)")
    cx, cy = (lo + hi) / 2
    return CropBox(cx - side / 2, cy - side / 2, side)


def box_from_rect(x0: float, y0: float, x1: float, y1: float, roi_scale: float) -> CropBox:
    """Square box of side ``roi_scale * max(w, h)`` centred on the rectangle (e.g. a detector box)."""
    return box_from_points(np.array([[x0, y0], [x1, y1]]), roi_scale)


def crop_image(image: torch.Tensor, boxes: list[CropBox] | CropBox, input_size: int) -> torch.Tensor:
    """Crop and resize (bilinear) squares from an image, zero outside it.

    Args:
        image: (3, H, W) or (B, 3, H, W) float tensor (B must then equal ``len(boxes)``).
        boxes: one box per output.
        input_size: S.

    Returns:
        (N, 3, S, S), same dtype/device as ``image``. Differentiable w.r.t. ``image``.
    """
    if isinstance(boxes, CropBox):
        boxes = [boxes]
    if image.ndim == 3:
        image = image.unsqueeze(0).expand(len(boxes), -1, -1, -1)
    if image.ndim != 4 or image.shape[0] != len(boxes):
        raise ValueError(f"image must be (3,H,W) or (B,3,H,W) with B = number of boxes, got {tuple(image.shape)}")
    H, W = image.shape[-2:]
    S = input_size
    centres = (torch.arange(S, dtype=image.dtype, device=image.device) + 0.5) / S  # crop pixel centres in [0,1]
    grids = []
    for b in boxes:
        u = b.x0 + centres * b.size  # image pixel coords of crop pixel centres
        v = b.y0 + centres * b.size
        gx = 2.0 * u / W - 1.0  # align_corners=False normalisation: pixel edge at -1/+1
        gy = 2.0 * v / H - 1.0
        grids.append(torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1))
    grid = torch.stack(grids)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def image_to_tensor(image_uint8: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    a = np.asarray(image_uint8)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {a.shape} {a.dtype}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float().div_(255.0)
