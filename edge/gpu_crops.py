"""CUDA preprocessing: crop, warp, resize and convert the faces of one frame in ONE kernel launch.

UNTESTED ON A GPU: this module was written on a machine without one. What is tested on the CPU:
:func:`reference_crop` (:func:`crop_from_table`, the kernel's exact operations in torch), against the
crop convention; the kernel's own source text, compiled for the CPU by a C++ shim, against
:func:`reference_crop` bit for bit (float32/float16, NCHW/NHWC, strided frames); and, where nvcc
is installed, that it compiles for sm_90 with no fused multiply-add. Not yet run: NVRTC
compilation through CuPy, the launch, the pinned upload and the torch <-> CuPy interop (the
``gpu`` tests of ``tests/test_gpu_paths.py``), and :meth:`GpuCropper.crop_table` (a box table
already on the GPU, used by :mod:`mlanet.edge.gpu_stream`; its ``gpu`` test is in
``tests/test_gpu_stream.py``, against :func:`crop_from_table`).

What the kernel computes
    The project's one crop convention (:func:`mlanet.preprocess.crop_image`, i.e. PyTorch's
    ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)``), for N square
    boxes of one (H, W, 3) uint8 RGB frame, output (N, 3, S, S) float32 (or float16) RGB in [0, 1]:
    crop pixel ``(i, j)`` has its centre at image point ``(x0 + (i + 0.5) * size / S,
    y0 + (j + 0.5) * size / S)`` (continuous pixels, centres at integer + 0.5), so it samples the
    pixel grid at index coordinates ``fx = x0 - 0.5 + (i + 0.5) * size / S`` (same for y);
    bilinear weights of the four neighbours ``floor(fx) + {0, 1}``; a neighbour outside the
    image contributes zero (zero padding, never clamping).

Arithmetic (mirrored exactly by :func:`crop_from_table` / :func:`reference_crop`)
    One thread per output pixel ``(n, j, i)``, all three channels. Sample coordinates in float64
    (``ox + (i + 0.5) * step`` with ``ox = x0 - 0.5``, ``step = size / S``, computed on the host in
    float64), clamped to ``[-2, W + 1]`` (only changes points whose four neighbours are all
    outside anyway), ``floor``, fraction rounded to float32; then float32 only:
    ``top = p00 * (1 - tx) + p01 * tx``, ``bot = p10 * (1 - tx) + p11 * tx``,
    ``v = (top * (1 - ty) + bot * ty) / 255`` on the uint8 values, and float16 outputs by
    round-to-nearest-even. Compiled with ``--fmad=false --ftz=false --prec-div=true`` so each
    operation is one IEEE rounding, as in numpy: kernel and reference should agree bit for bit.

    float64 coordinates (two multiply-adds per pixel) keep the sampling positions exact to
    ~1e-12 px on any frame size; :func:`~mlanet.edge.crops.crop_faces` normalises the grid to
    [-1, 1] in float32 (``grid_sample``'s interface), which quantises positions to ~W * 6e-8 px:
    on random-noise frames that alone gives differences of ~5e-6 (160 px wide) to ~1e-4 (1920 px
    wide) between the two. :func:`reference_crop` is within 2e-7 of the float64 evaluation of
    the same convention on 1080p frames (tested on the CPU); the kernel should match it.

Interop
    Memory is PyTorch's (caching allocator, current stream); CuPy only compiles (NVRTC) and
    launches. Tensors reach the kernel through ``cupy.asarray(tensor)``, which reads
    ``__cuda_array_interface__`` (zero-copy, no synchronisation); the launch goes to PyTorch's
    current stream through ``cupy.cuda.ExternalStream``, so it is ordered with the torch work
    around it. A numpy frame is copied into a pinned staging buffer, then uploaded
    asynchronously; the staging buffer is reused only after its previous upload has finished.

CuPy is imported inside :class:`GpuCropper` only (``import mlanet.edge.gpu_crops`` stays light).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np
import torch

from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox

log = logging.getLogger(__name__)

#: Name of the kernel function (``extern "C"``, so profilers show it unmangled).
KERNEL_NAME = "mlanet_crop_rgb8"
#: NVRTC options: one IEEE rounding per operation (no FMA contraction, no flush-to-zero).
NVRTC_OPTIONS: tuple[str, ...] = ("--fmad=false", "--ftz=false", "--prec-div=true")
#: Threads per block (one thread per output pixel, all channels).
BLOCK = 256

CUPY_HINT = (
    "install CuPy for the CUDA major version of PyTorch (torch.version.cuda), e.g. `pip install cupy-cuda13x` "
    "(CUDA 13) or `pip install cupy-cuda12x` (CUDA 12)"
)

KERNEL_SOURCE = r"""
extern "C" __global__ void mlanet_crop_rgb8(
    const unsigned char* __restrict__ frame,  // (H, W, 3) uint8 RGB, strides in elements
    const int H, const int W,
    const long long sy, const long long sx, const long long sc,
    const double* __restrict__ boxes,         // (N, 3): ox = x0 - 0.5, oy = y0 - 0.5, step = size / S
    const int N, const int S,
    void* __restrict__ out,                   // (N, 3, S, S) float32 or float16
    const int out_half,                       // 0: float32, 1: float16
    const int out_nhwc)                       // 0: NCHW memory, 1: NHWC memory (channels_last)
{
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long per_face = (long long)S * S;
    if (t >= per_face * N) return;
    const int i = (int)(t % S);               // crop column
    const int j = (int)((t / S) % S);         // crop row
    const int n = (int)(t / per_face);        // face

    const double ox = boxes[3 * n], oy = boxes[3 * n + 1], step = boxes[3 * n + 2];
    double fx = ox + ((double)i + 0.5) * step;  // pixel-index coordinates of the sample
    double fy = oy + ((double)j + 0.5) * step;
    fx = fmin(fmax(fx, -2.0), (double)W + 1.0);   // all four neighbours outside stays so
    fy = fmin(fmax(fy, -2.0), (double)H + 1.0);
    const double flx = floor(fx), fly = floor(fy);
    const int x0 = (int)flx, y0 = (int)fly;
    const float tx = (float)(fx - flx), ty = (float)(fy - fly);
    const float ux = 1.0f - tx, uy = 1.0f - ty;
    const bool in_x0 = x0 >= 0 && x0 < W, in_x1 = x0 + 1 >= 0 && x0 + 1 < W;
    const bool in_y0 = y0 >= 0 && y0 < H, in_y1 = y0 + 1 >= 0 && y0 + 1 < H;
    const long long r0 = (long long)y0 * sy, r1 = r0 + sy;
    const long long c0 = (long long)x0 * sx, c1 = c0 + sx;

    for (int c = 0; c < 3; ++c) {
        const long long cc = (long long)c * sc;
        const float p00 = (in_y0 && in_x0) ? (float)frame[r0 + c0 + cc] : 0.0f;
        const float p01 = (in_y0 && in_x1) ? (float)frame[r0 + c1 + cc] : 0.0f;
        const float p10 = (in_y1 && in_x0) ? (float)frame[r1 + c0 + cc] : 0.0f;
        const float p11 = (in_y1 && in_x1) ? (float)frame[r1 + c1 + cc] : 0.0f;
        const float top = p00 * ux + p01 * tx;
        const float bot = p10 * ux + p11 * tx;
        const float v = (top * uy + bot * ty) / 255.0f;
        const long long o = out_nhwc ? ((t * 3) + c) : ((((long long)n * 3 + c) * S + j) * S + i);
        if (out_half) {
            unsigned short h;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
            ((unsigned short*)out)[o] = h;
        } else {
            ((float*)out)[o] = v;
        }
    }
}
"""


class GpuUnavailableError(MLANetError):
    """No CUDA GPU visible to PyTorch, or CuPy (NVRTC) missing; the message says what to install."""


# ----------------------------------------------------------------------------------------- shared checks
def _check_size(input_size: int) -> int:
    if isinstance(input_size, bool) or not isinstance(input_size, (int, np.integer)) or input_size < 1:
        raise ValueError(f"input_size must be a positive int, got {input_size!r}")
    return int(input_size)


def box_table(boxes: Sequence[CropBox], input_size: int) -> np.ndarray:
    """(N, 3) float64 ``[x0 - 0.5, y0 - 0.5, size / S]`` per box: what the kernel reads.

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


def _check_frame_shape(shape: tuple[int, ...], dtype: Any, where: str) -> tuple[int, int]:
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1 or str(dtype) not in ("uint8", "torch.uint8"):
        raise ValueError(f"{where}: frame must be (H, W, 3) uint8 RGB, got {tuple(shape)} {dtype}")
    return int(shape[0]), int(shape[1])


# ----------------------------------------------------------------------------------------- CPU reference
def reference_crop(frame: np.ndarray, boxes: Sequence[CropBox], input_size: int, *, dtype: Any = np.float32) -> np.ndarray:
    """The kernel's arithmetic on the CPU for numpy inputs: crops of ``boxes`` from ``frame``
    (:func:`crop_from_table` on :func:`box_table`).

    Args:
        frame: (H, W, 3) uint8 RGB.
        boxes: N :class:`~mlanet.preprocess.CropBox` (may leave the image; outside is zero).
        input_size: S.
        dtype: ``np.float32`` (default) or ``np.float16`` (rounded to nearest even, as the kernel).

    Returns:
        (N, 3, S, S) C-contiguous, values in [0, 1]; equal to :func:`~mlanet.edge.crops.crop_faces`
        up to float32 rounding (see the module docstring for the bound).
    """
    a = np.asarray(frame)
    _check_frame_shape(a.shape, a.dtype, "reference_crop")
    S = _check_size(input_size)
    out_dtype = np.dtype(dtype)
    if out_dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"dtype must be float32 or float16, got {out_dtype}")
    table = box_table(boxes, S)
    torch_dtype = torch.float16 if out_dtype == np.dtype(np.float16) else torch.float32
    crops = crop_from_table(torch.from_numpy(np.ascontiguousarray(a)), torch.from_numpy(table), S, torch_dtype)
    return np.ascontiguousarray(crops.numpy())


def _check_frame_tensor(frame: Any, where: str) -> None:
    """Refuse anything but an (H, W, 3) uint8 RGB torch tensor."""
    if (not isinstance(frame, torch.Tensor) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8
            or frame.shape[0] < 1 or frame.shape[1] < 1):
        desc = f"{tuple(frame.shape)} {frame.dtype}" if isinstance(frame, torch.Tensor) else type(frame).__name__
        raise ValueError(f"{where}: frame must be an (H, W, 3) uint8 RGB tensor, got {desc}")


def _check_table(table: Any, where: str, n: int | None = None, device: Any = None) -> None:
    """Refuse anything but an (N, 3) float64 kernel table tensor (``n`` rows, on ``device`` when given)."""
    if (not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[1] != 3 or table.dtype != torch.float64
            or (n is not None and table.shape[0] != n)):
        desc = f"{tuple(table.shape)} {table.dtype}" if isinstance(table, torch.Tensor) else type(table).__name__
        rows = "N" if n is None else str(n)
        raise ValueError(f"{where}: table must be an ({rows}, 3) float64 tensor [x0 - 0.5, y0 - 0.5, size / S], got {desc}")
    if device is not None and table.device != device:
        raise ValueError(f"{where}: table is on {table.device}, expected {device}")


def crop_from_table(frame: Any, table: Any, input_size: int, dtype: Any = None) -> Any:
    """The kernel's arithmetic in torch, on the frame's device (CPU or GPU), from a box table.

    The host implementation of what the kernel computes (see the module docstring):
    :func:`reference_crop` is this on numpy arrays, and the CPU stand-in for
    :meth:`GpuCropper.crop_table` (:class:`~mlanet.edge.device_path.TorchTableCropper`) calls it.
    float64 sample positions clamped to ``[-2, W + 1]``, floor, float32 fractions and bilinear
    weights on the uint8 values, ``/ 255``, zero outside the image, round-to-nearest-even for float16.

    Args:
        frame: (H, W, 3) uint8 RGB tensor.
        table: (N, 3) float64 kernel table (:func:`box_table`'s layout) on the frame's device;
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

    def gather(yy: Any, xx: Any) -> Any:
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


def normalize_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` with an explicit CUDA index (``cuda`` -> ``cuda:<current>``; an int -> ``cuda:N``)."""
    dev = torch.device("cuda", device) if isinstance(device, int) and not isinstance(device, bool) else torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


# ----------------------------------------------------------------------------------------- GPU
def require_cuda(what: str, hint: str = "run on the CPU instead (--device cpu)") -> Any:
    """``torch`` when a CUDA GPU is visible to it, else :class:`GpuUnavailableError` ending with ``hint``."""
    import torch

    if not torch.cuda.is_available():
        raise GpuUnavailableError(
            f"{what} needs a CUDA GPU visible to PyTorch (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none: a CPU-only wheel'}); {hint}"
        )
    return torch


def _import_cupy(what: str) -> Any:
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken install (missing CUDA libraries)
        raise GpuUnavailableError(f"{what} compiles its kernel with CuPy (NVRTC), which is not importable "
                                  f"({type(exc).__name__}: {exc}); {CUPY_HINT}") from None
    return cupy


class GpuCropper:
    """Crops N faces of one frame on the GPU in a single kernel launch (see the module docstring).

    UNTESTED ON A GPU (written without one); the ``gpu`` tests in ``tests/test_gpu_paths.py``
    check it against :func:`~mlanet.edge.crops.crop_faces` and :func:`reference_crop`.

    Args:
        input_size: S, the network input size (``PreprocessCfg.input_size`` of the artifact).
        device: CUDA device ordinal (or ``"cuda:k"`` / ``torch.device``).
        dtype: output dtype, ``torch.float32`` (default) or ``torch.float16`` (for an FP16 backend).
        channels_last: write the (N, 3, S, S) output in channels-last memory (NHWC), what an FP16
            channels-last network reads without a conversion copy.

    Attributes:
        launches: kernel launches so far (one per call with at least one box).

    Raises:
        GpuUnavailableError: no CUDA GPU visible to PyTorch, or CuPy not importable.
        MLANetError: the kernel does not compile (the NVRTC log is in the message).
    """

    def __init__(self, input_size: int, device: Any = 0, *, dtype: Any = None, channels_last: bool = False) -> None:
        self.input_size = _check_size(input_size)
        torch = require_cuda("GpuCropper", "use the CPU crop (mlanet.edge.crops.crop_faces) here")
        cupy = _import_cupy("GpuCropper")
        self._torch, self._cupy = torch, cupy
        self.device = normalize_device(device)
        if self.device.type != "cuda":
            raise ValueError(f"GpuCropper needs a CUDA device, got {device!r}")
        dtype = torch.float32 if dtype is None else dtype
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"dtype must be torch.float32 or torch.float16, got {dtype}")
        self.dtype = dtype
        self.channels_last = bool(channels_last)
        self.launches = 0
        self._kernel = cupy.RawKernel(KERNEL_SOURCE, KERNEL_NAME, options=NVRTC_OPTIONS)
        with cupy.cuda.Device(self.device.index):
            try:  # compile now (RawKernel.compile, CuPy >= 9), not at the first frame; cached on disk by CuPy
                compile_now = getattr(self._kernel, "compile", None)
                if compile_now is not None:
                    compile_now()
            except Exception as exc:  # noqa: BLE001 - cupy.cuda.compiler.CompileException and driver errors
                raise MLANetError(f"GpuCropper: the CUDA kernel {KERNEL_NAME} does not compile with NVRTC "
                                  f"({type(exc).__name__}: {exc})") from None
        # pinned host staging (frame bytes, box table), reused once the previous upload has finished
        self._frame_staging: Any = None
        self._box_staging: Any = None
        self._uploaded: Any = None  # torch.cuda.Event after the last upload from staging

    # ------------------------------------------------------------------ staging
    def _pinned(self, current: Any, nbytes: int) -> Any:
        torch = self._torch
        if current is None or current.numel() < nbytes:
            current = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
        return current

    def _wait_staging_free(self) -> None:
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the previous async copy has read the staging buffers

    def _upload(self, frame: np.ndarray | None, table: np.ndarray, stream: Any) -> tuple[Any, Any]:
        """(device frame or None, device box table (N, 3) float64) via pinned staging, async on ``stream``."""
        torch = self._torch
        self._wait_staging_free()
        dev_frame = None
        if frame is not None:
            self._frame_staging = self._pinned(self._frame_staging, frame.nbytes)
            host = self._frame_staging[: frame.nbytes].view(frame.shape)
            np.copyto(host.numpy(), frame)
            dev_frame = torch.empty(frame.shape, dtype=torch.uint8, device=self.device)
            dev_frame.copy_(host, non_blocking=True)
        self._box_staging = self._pinned(self._box_staging, table.nbytes)
        host_boxes = self._box_staging[: table.nbytes].view(torch.float64).view(table.shape)
        np.copyto(host_boxes.numpy(), table)
        dev_boxes = torch.empty(table.shape, dtype=torch.float64, device=self.device)
        dev_boxes.copy_(host_boxes, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        self._uploaded = event
        return dev_frame, dev_boxes

    # ------------------------------------------------------------------ call
    def _device_frame(self, frame: Any) -> tuple[Any, np.ndarray | None]:
        """(CUDA uint8 tensor, None) for a CUDA tensor; (None, contiguous numpy) for host frames."""
        torch = self._torch
        if isinstance(frame, torch.Tensor):
            _check_frame_shape(tuple(frame.shape), frame.dtype, "GpuCropper")
            if frame.is_cuda:
                if frame.device != self.device:
                    raise ValueError(f"GpuCropper on {self.device} got a frame on {frame.device}")
                if min(frame.stride()) < 0:
                    raise ValueError("GpuCropper: frame strides must be non-negative")
                return frame, None
            frame = frame.numpy()
        a = np.asarray(frame)
        _check_frame_shape(a.shape, a.dtype, "GpuCropper")
        return None, np.ascontiguousarray(a)

    def _check_out(self, out: Any, n: int) -> None:
        torch = self._torch
        s = self.input_size
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        if (not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, 3, s, s) or out.dtype != self.dtype
                or out.device != self.device or not out.is_contiguous(memory_format=fmt)):
            desc = f"{tuple(out.shape)} {out.dtype} {out.device}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"GpuCropper: out must be a ({n}, 3, {s}, {s}) {self.dtype} tensor on {self.device} "
                             f"({'channels_last' if self.channels_last else 'contiguous'}), got {desc}")

    def __call__(self, frame: Any, boxes: Sequence[CropBox], *, out: Any = None) -> Any:
        """Crops of ``boxes`` from ``frame``.

        Args:
            frame: (H, W, 3) uint8 RGB: a numpy array (uploaded through pinned memory), or a
                torch tensor on this cropper's device (any non-negative strides, read in place).
            boxes: N :class:`~mlanet.preprocess.CropBox`.
            out: optional preallocated (N, 3, S, S) output (dtype, device and memory format of
                this cropper) to write into.

        Returns:
            (N, 3, S, S) ``self.dtype`` tensor on ``self.device``, RGB in [0, 1]; written by work
            queued on PyTorch's current stream (no host synchronisation).
        """
        torch = self._torch
        table = box_table(boxes, self.input_size)
        dev_frame, host_frame = self._device_frame(frame)
        n = len(table)
        out = self._output(n, out)
        if n == 0:
            return out
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            uploaded, dev_boxes = self._upload(host_frame, table, stream)
            if dev_frame is None:
                dev_frame = uploaded
            self._launch(dev_frame, dev_boxes, out, stream)
        return out

    def crop_table(self, frame: Any, table: Any, out: Any = None) -> Any:
        """Crops for a box table that is already on the GPU: no host data, no upload, one launch.

        What :class:`~mlanet.edge.gpu_stream.StreamingLoop` uses: the table comes from the
        previous frame's landmarks (computed on the device) or from an asynchronous upload.

        Args:
            frame: (H, W, 3) uint8 RGB CUDA tensor on this cropper's device (non-negative strides).
            table: (N, 3) float64 CUDA tensor on this device, rows ``[x0 - 0.5, y0 - 0.5, size / S]``
                (:func:`box_table`'s layout); made contiguous if it is not (a device copy).
            out: optional preallocated output, as in :meth:`__call__`.

        Returns:
            (N, 3, S, S) ``self.dtype`` tensor, written by work queued on PyTorch's current stream.

        Raises:
            ValueError: ``frame`` or ``table`` of the wrong type, shape, dtype or device.
        """
        torch = self._torch
        if not isinstance(frame, torch.Tensor) or not frame.is_cuda:
            raise ValueError(f"GpuCropper.crop_table: frame must be a CUDA tensor on {self.device}, "
                             f"got {type(frame).__name__}{'' if not isinstance(frame, torch.Tensor) else ' on ' + str(frame.device)}")
        _check_frame_tensor(frame, "GpuCropper.crop_table")
        if frame.device != self.device:
            raise ValueError(f"GpuCropper on {self.device} got a frame on {frame.device}")
        if min(frame.stride()) < 0:
            raise ValueError("GpuCropper.crop_table: frame strides must be non-negative")
        _check_table(table, "GpuCropper.crop_table", device=self.device)
        n = int(table.shape[0])
        out = self._output(n, out)
        if n == 0:
            return out
        with torch.cuda.device(self.device):
            self._launch(frame, table.contiguous(), out, torch.cuda.current_stream(self.device))
        return out

    def _output(self, n: int, out: Any) -> Any:
        """``out`` checked, or a new (N, 3, S, S) output in this cropper's dtype and memory format."""
        torch = self._torch
        S = self.input_size
        if n * 3 * S * S >= 2**62:
            raise ValueError(f"GpuCropper: {n} boxes of {S}x{S} are too many for one launch")
        if out is not None:
            self._check_out(out, n)
            return out
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return torch.empty((n, 3, S, S), dtype=self.dtype, device=self.device, memory_format=fmt)

    def _launch(self, frame: Any, boxes: Any, out: Any, stream: Any) -> None:
        """The one kernel launch: all faces, all pixels, all channels."""
        cp = self._cupy
        H, W = int(frame.shape[0]), int(frame.shape[1])
        sy, sx, sc = (int(v) for v in frame.stride())
        n, S = int(boxes.shape[0]), self.input_size
        total = n * S * S
        grid = ((total + BLOCK - 1) // BLOCK,)
        with cp.cuda.Device(self.device.index), cp.cuda.ExternalStream(stream.cuda_stream, self.device.index):
            self._kernel(
                grid, (BLOCK,),
                (
                    cp.asarray(frame),  # zero-copy views through __cuda_array_interface__
                    np.int32(H), np.int32(W), np.int64(sy), np.int64(sx), np.int64(sc),
                    cp.asarray(boxes), np.int32(n), np.int32(S),
                    cp.asarray(out), np.int32(out.dtype == self._torch.float16), np.int32(self.channels_last),
                ),
            )
        self.launches += 1

    def close(self) -> None:
        """Drop the staging buffers (after their last upload has finished)."""
        self._wait_staging_free()
        self._frame_staging = self._box_staging = self._uploaded = None
