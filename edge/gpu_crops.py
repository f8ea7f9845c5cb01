"""Crops of a frame that is already on a device (CPU or CUDA tensor), in torch ops only.

The GPU mode of :class:`~mlanet.edge.pipeline.FacePipeline` crops the faces of a frame on the
device the network runs on (:mod:`mlanet.edge.device_path`), so the frame is uploaded once and no
crop makes a round trip through the host. The crop is plain torch (index gathers and bilinear
weights), so the same code runs on CPU tensors (the tests here) and on CUDA tensors; no CUDA
binding other than torch is involved (the project's CUDA bindings are torch, and pycuda for
TensorRT only).

What it computes
    The project's one crop convention (:func:`mlanet.preprocess.crop_image`, i.e. PyTorch's
    ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``), for N square
    boxes of one (H, W, 3) uint8 RGB frame, output (N, 3, S, S) float32 (or float16) RGB in [0, 1]:
    crop pixel ``(i, j)`` has its centre at image point ``(x0 + (i + 0.5) * size / S,
    y0 + (j + 0.5) * size / S)`` (continuous pixels, centres at integer + 0.5), so it samples the
    pixel grid at index coordinates ``fx = x0 - 0.5 + (i + 0.5) * size / S`` (same for y);
    bilinear weights of the four neighbours ``floor(fx) + {0, 1}``; a neighbour outside the
    image contributes zero (zero padding, never clamping).

Arithmetic
    Sample positions in float64 from a box table ``[x0 - 0.5, y0 - 0.5, size / S]`` (exact to
    ~1e-12 px on any frame size), fractions and weights in float32 on the uint8 values, ``/ 255``.
    :func:`~mlanet.edge.crops.crop_faces` (the CPU pipeline's crop) normalises its grid to
    [-1, 1] in float32 (``grid_sample``'s interface), which quantises positions to ~W * 6e-8 px:
    the two agree to ~1e-5 on small frames and ~1e-4 on 1080p noise frames, and
    :func:`crop_from_table` is within ~2e-7 of :func:`reference_crop` (the convention evaluated
    in float64 NumPy, an independent implementation) on any frame size (tests/test_gpu_paths.py).

Also here: :func:`require_cuda` and :class:`GpuUnavailableError` (the one "no CUDA GPU" error
of the runtime), :func:`normalize_device`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox


class GpuUnavailableError(MLANetError):
    """No CUDA GPU visible to PyTorch; the message says what to do instead (the flag to change)."""


# ----------------------------------------------------------------------------------------- shared checks
def _check_size(input_size: int) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    return int(input_size)


def box_table(boxes: Sequence[CropBox], input_size: int) -> np.ndarray:
    """(N, 3) float64 ``[x0 - 0.5, y0 - 0.5, size / S]`` per box: what :func:`crop_from_table` reads.

    Raises:
        ValueError: a box that is not a :class:`~mlanet.preprocess.CropBox` or not finite.
    """
    s = _check_size(input_size)
    table = np.empty((len(boxes), 3), dtype=np.float64)
    for k, b in enumerate(boxes):
        if not isinstance(b, CropBox):
            raise ValueError(f"boxes[{k}] must be a CropBox, got {type(b).__name__}")
        x0, y0, size = float(b.x0), float(b.y0), float(b.size)
        if not (math.isfinite(x0) and math.isfinite(y0) and math.isfinite(size)):
            raise ValueError(f"boxes[{k}] is not finite: {b}")
        table[k] = (x0 - 0.5, y0 - 0.5, size / s)
    return table


# ----------------------------------------------------------------------------------------- NumPy reference
def reference_crop(frame: np.ndarray, boxes: Sequence[CropBox], input_size: int) -> np.ndarray:
    """The crop convention evaluated in float64 NumPy, written independently of :func:`crop_from_table`.

    Args:
        frame: (H, W, 3) uint8 RGB.
        boxes: N :class:`~mlanet.preprocess.CropBox` (may leave the image; outside is zero).
        input_size: S.

    Returns:
        (N, 3, S, S) float64, values in [0, 1] (the module docstring says how close the torch crops are).
    """
    a = np.asarray(frame)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"reference_crop: frame must be (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
    s = _check_size(input_size)
    H, W = a.shape[:2]
    img = a.astype(np.float64) / 255.0
    padded = np.zeros((H + 2, W + 2, 3), np.float64)  # one zero pixel around: neighbours outside read 0
    padded[1:-1, 1:-1] = img
    out = np.zeros((len(boxes), 3, s, s), np.float64)
    for n, b in enumerate(boxes):
        pos = np.arange(s, dtype=np.float64) + 0.5
        fx = float(b.x0) - 0.5 + pos * float(b.size) / s  # (S,) pixel-index coordinates of the columns
        fy = float(b.y0) - 0.5 + pos * float(b.size) / s  # (S,) rows
        x0, y0 = np.floor(fx), np.floor(fy)
        tx, ty = fx - x0, fy - y0
        # index into the padded image; anything beyond the one-pixel border is outside anyway
        xi = np.clip(x0.astype(np.int64) + 1, 0, W + 1)
        yi = np.clip(y0.astype(np.int64) + 1, 0, H + 1)
        xj = np.clip(x0.astype(np.int64) + 2, 0, W + 1)
        yj = np.clip(y0.astype(np.int64) + 2, 0, H + 1)
        inx0 = (x0 >= 0) & (x0 < W)
        inx1 = (x0 + 1 >= 0) & (x0 + 1 < W)
        iny0 = (y0 >= 0) & (y0 < H)
        iny1 = (y0 + 1 >= 0) & (y0 + 1 < H)

        def px(rows: np.ndarray, cols: np.ndarray, rin: np.ndarray, cin: np.ndarray) -> np.ndarray:
            v = padded[rows[:, None], cols[None, :]]  # (S, S, 3)
            return v * (rin[:, None] & cin[None, :])[..., None]

        top = px(yi, xi, iny0, inx0) * (1 - tx)[None, :, None] + px(yi, xj, iny0, inx1) * tx[None, :, None]
        bot = px(yj, xi, iny1, inx0) * (1 - tx)[None, :, None] + px(yj, xj, iny1, inx1) * tx[None, :, None]
        out[n] = (top * (1 - ty)[:, None, None] + bot * ty[:, None, None]).transpose(2, 0, 1)
    return out


# ----------------------------------------------------------------------------------------- torch, any device
def _check_frame_tensor(frame: Any, where: str) -> None:
    """Refuse anything but an (H, W, 3) uint8 RGB torch tensor."""
    if (not isinstance(frame, torch.Tensor) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8
            or frame.shape[0] < 1 or frame.shape[1] < 1):
        desc = f"{tuple(frame.shape)} {frame.dtype}" if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"{where}: frame must be an (H, W, 3) uint8 RGB tensor, got {desc}")


def _check_table(table: Any, where: str, n: int | None = None, device: Any = None) -> None:
    """Refuse anything but an (N, 3) float64 box table tensor (``n`` rows, on ``device`` when given)."""
    if (not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[1] != 3 or table.dtype != torch.float64
            or (n is not None and table.shape[0] != n)):
        desc = f"{tuple(table.shape)} {table.dtype}" if isinstance(table, torch.Tensor) else type(table).__name__
        rows = "N" if n is None else str(n)
        raise ValueError(f"{where}: table must be an ({rows}, 3) float64 tensor [x0 - 0.5, y0 - 0.5, size / S], got {desc}")
    if device is not None and table.device != device:
        raise ValueError(f"{where}: table is on {table.device}, expected {device}")


def crop_from_table(frame: torch.Tensor, table: torch.Tensor, input_size: int,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
    """Crops of the boxes of ``table`` from ``frame``, on the frame's device (CPU or CUDA), no host sync.

    float64 sample positions clamped to ``[-2, W + 1]`` (only moves points whose four neighbours
    are all outside anyway), floor, float32 fractions and bilinear weights on the uint8 values,
    ``/ 255``, zero outside the image.

    Args:
        frame: (H, W, 3) uint8 RGB tensor (any strides).
        table: (N, 3) float64 box table (:func:`box_table`'s layout) on the frame's device;
            rows must be finite (not checked: that would synchronise a GPU).
        input_size: S.
        dtype: ``torch.float32`` (default) or ``torch.float16``.

    Returns:
        (N, 3, S, S) contiguous ``dtype`` tensor on the frame's device, RGB in [0, 1].
    """
    dtype = torch.float32 if dtype is None else dtype
    _check_frame_tensor(frame, "crop_from_table")
    _check_table(table, "crop_from_table", device=frame.device)
    S = _check_size(input_size)
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"crop_from_table: dtype must be torch.float32 or torch.float16, got {dtype}")
    dev = frame.device
    H, W = int(frame.shape[0]), int(frame.shape[1])
    n = int(table.shape[0])
    if n == 0:
        return torch.zeros((0, 3, S, S), dtype=dtype, device=dev)
    idx = torch.arange(S, dtype=torch.float64, device=dev) + 0.5
    ox, oy, step = table[:, 0:1], table[:, 1:2], table[:, 2:3]
    fx = (ox + idx[None, :] * step).clamp(-2.0, W + 1.0)  # (N, S): columns i
    fy = (oy + idx[None, :] * step).clamp(-2.0, H + 1.0)  # (N, S): rows j
    flx, fly = fx.floor(), fy.floor()
    x0, y0 = flx.long(), fly.long()
    tx, ty = (fx - flx).float(), (fy - fly).float()
    ux, uy = 1.0 - tx, 1.0 - ty

    def gather(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        """(N, S) rows, (N, S) columns -> (N, S, S, 3) float32 pixel values, zero outside."""
        inside = ((yy >= 0) & (yy < H))[:, :, None] & ((xx >= 0) & (xx < W))[:, None, :]
        vals = frame[yy.clamp(0, H - 1)[:, :, None], xx.clamp(0, W - 1)[:, None, :]]  # (N, S, S, 3) uint8
        return torch.where(inside[..., None], vals.float(), 0.0)

    p00, p01 = gather(y0, x0), gather(y0, x0 + 1)
    p10, p11 = gather(y0 + 1, x0), gather(y0 + 1, x0 + 1)
    txb, uxb = tx[:, None, :, None], ux[:, None, :, None]  # broadcast over rows and channels
    tyb, uyb = ty[:, :, None, None], uy[:, :, None, None]
    top = p00 * uxb + p01 * txb
    bot = p10 * uxb + p11 * txb
    v = (top * uyb + bot * tyb) / 255.0  # (N, S, S, 3) float32
    return v.permute(0, 3, 1, 2).contiguous().to(dtype)


# ----------------------------------------------------------------------------------------- devices
def normalize_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` with an explicit CUDA index (``cuda`` -> ``cuda:<current>``; an int -> ``cuda:N``)."""
    dev = torch.device("cuda", device) if isinstance(device, int) and not isinstance(device, bool) else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def require_cuda(what: str, hint: str = "run on the CPU instead (--device cpu)") -> Any:
    """``torch`` when a CUDA GPU is visible to it, else :class:`GpuUnavailableError` ending with ``hint``."""
    if not torch.cuda.is_available():
        raise GpuUnavailableError(
            f"{what} needs a CUDA GPU visible to PyTorch (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none: a CPU-only wheel'}); {hint}"
        )
    return torch
