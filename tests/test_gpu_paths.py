"""CUDA preprocessing (:mod:`mlanet.edge.gpu_crops`) and the FP16 PyTorch GPU backend
(:mod:`mlanet.edge.backends.torch_cuda`).

CPU tests (run everywhere): :func:`reference_crop` -- the CUDA kernel's arithmetic, line for line,
in numpy -- against the project's crop convention; the kernel's own source compiled for the CPU
(g++, a small shim) against :func:`reference_crop` bit for bit; nvcc's PTX of it (no fma) where
nvcc exists; the errors without CUDA or CuPy, light imports, and that the GPU parity model is
informative.

GPU tests (``gpu``; written on a machine without a GPU, not run yet): the kernel against
:func:`crop_faces` and :func:`reference_crop`, one launch for N faces, float16 and channels-last
outputs, CUDA-tensor frames and streams; :class:`TorchCudaBackend` FP16 vs :class:`TorchBackend`
FP32 (CPU) in vertex space, graph replay vs eager, and GPU crops fed to it without a host copy.

Tolerances
    * Crops, float32: ``CROP_TOL = 1e-5`` against :func:`crop_faces`. The kernel/reference sample
      at float64 positions; ``crop_faces`` goes through ``grid_sample``'s [-1, 1] float32 grid,
      whose positions are quantised to ~(region width) x 6e-8 px. On random-noise frames
      (neighbouring pixels differ by up to 1) that gives differences up to ~6e-6 for regions
      <= ~130 px (measured over 60 seeds) but ~1e-4 for 1920 px wide ones, so the 1e-5 check uses
      frames <= 64 px wide; large frames are checked against the float64 evaluation of the same
      convention (``crop_image`` on a float64 image) with ``F64_TOL = 1e-6`` (measured <= 1.7e-7),
      and against ``crop_faces`` with ``LARGE_FRAME_TOL = 2.5e-4`` (measured <= 1.1e-4).
    * Kernel vs reference: ``KERNEL_VS_REF_TOL = 1e-6`` (expected bit-identical: same operations,
      NVRTC ``--fmad=false``, IEEE rounding; the tests print the fraction of identical values).
    * float16 crops: within ``F16_TOL = 1e-3`` of crop_faces (half-ulp in [0.5, 1) is 2.4e-4).
    * FP16 network vs FP32 on the CPU, vertex space: mean <= 1 mm, max <= 3 mm (the rationale of
      ``tests/test_tensorrt_engine.py``: FP16 spacing at the 1 m prior depth is ~1 mm/2, and the
      calibrated model moves vertices by > 15 mm between random images; see
      test_parity_model_is_informative). Graph replay vs eager (same model, same kernels):
      max <= 1 mm (one FP16 rounding flip of the depth; a stale or wrong input moves ~30 mm).
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys

import numpy as np
from conftest import informative_untrained_model
import pytest
import torch

from mlanet.edge.backends import TorchBackend
from mlanet.edge.crops import crop_faces
from mlanet.edge.gpu_crops import KERNEL_NAME, KERNEL_SOURCE, NVRTC_OPTIONS, GpuUnavailableError, box_table, reference_crop
from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox, crop_image

CROP_TOL = 1e-5
F64_TOL = 1e-6
LARGE_FRAME_TOL = 2.5e-4
KERNEL_VS_REF_TOL = 1e-6
F16_TOL = 1e-3
FP16_MEAN_MM, FP16_MAX_MM = 1.0, 3.0
GRAPH_MAX_MM = 1.0
S_NET = 64


# ----------------------------------------------------------------------------------------- helpers
def _noise_frame(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _random_boxes(rng: np.random.Generator, h: int, w: int, n: int) -> list[CropBox]:
    """Non-integer boxes inside, partly outside and (sometimes) fully outside the frame."""
    return [
        CropBox(float(rng.uniform(-0.3 * w, 0.9 * w)), float(rng.uniform(-0.3 * h, 0.9 * h)),
                float(rng.uniform(0.5, 1.2 * min(h, w))))
        for _ in range(n)
    ]


def _special_boxes(h: int, w: int) -> list[CropBox]:
    return [
        CropBox(0.0, 0.0, float(min(h, w))),  # integer, inside
        CropBox(-5.25, -3.75, 20.5),  # over the top-left corner
        CropBox(w - 7.3, h - 9.1, 15.0),  # over the bottom-right corner
        CropBox(w + 3.0, 2.0, 10.0),  # fully outside (right)
        CropBox(-40.0, -40.0, 30.0),  # fully outside (top-left)
        CropBox(w / 3 + 0.37, h / 4 + 0.11, 0.8),  # smaller than a pixel
        CropBox(-0.5 * w, -0.5 * h, 2.0 * max(h, w)),  # the whole frame and more
    ]


def _float64_convention(frame: np.ndarray, boxes: list[CropBox], s: int) -> np.ndarray:
    """The crop convention evaluated in float64 (crop_image on a float64 image, whole frame)."""
    img = torch.from_numpy(frame).permute(2, 0, 1).double() / 255.0
    return crop_image(img, boxes, s).numpy()


def _calibrated_model(face_model, s: int = S_NET):
    """Untrained mlanet_mobile whose output depends on the image (see conftest.informative_untrained_model)."""
    return informative_untrained_model(face_model, s)


def _vertex_mm(face_model, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Mean and max vertex distance (mm) between the faces of two flat parameter batches."""
    ta = torch.as_tensor(np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a), dtype=torch.float32)
    tb = torch.as_tensor(np.asarray(b.cpu() if isinstance(b, torch.Tensor) else b), dtype=torch.float32)
    with torch.no_grad():
        d = torch.linalg.vector_norm(face_model(ta).double() - face_model(tb).double(), dim=-1) * 1000.0
    return {"mean": float(d.mean()), "max": float(d.max())}


@pytest.fixture(scope="module")
def face_model():
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return MorphableModel(make_synthetic_face_model())


@pytest.fixture(scope="module")
def net(face_model):
    return _calibrated_model(face_model)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, net, face_model):
    from mlanet.models.model_io import save_model

    return save_model(net, tmp_path_factory.mktemp("gpu_ckpt") / "net.safetensors", face_model)


# ========================================================================================= CPU
def test_reference_equals_crop_faces_on_small_frames():
    worst = 0.0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29)):
            frame = _noise_frame(rng, h, w)
            boxes = _random_boxes(rng, h, w, 5) + _special_boxes(h, w)
            for s in (16, 33):
                ref = reference_crop(frame, boxes, s)
                want = crop_faces(frame, boxes, s)
                assert ref.shape == want.shape == (len(boxes), 3, s, s) and ref.dtype == np.float32
                assert ref.flags.c_contiguous
                worst = max(worst, float(np.abs(ref - want).max()))
    print(f"reference vs crop_faces, frames <= 64 px: max |diff| {worst:.2e}")
    assert worst <= CROP_TOL


def test_reference_matches_the_float64_convention_on_large_frames():
    rng = np.random.default_rng(7)
    for h, w in ((480, 640), (1080, 1920)):
        frame = _noise_frame(rng, h, w)
        boxes = _random_boxes(rng, h, w, 4) + _special_boxes(h, w)
        ref = reference_crop(frame, boxes, 48)
        exact = np.abs(ref - _float64_convention(frame, boxes, 48)).max()
        loose = np.abs(ref - crop_faces(frame, boxes, 48)).max()
        print(f"{w}x{h}: reference vs float64 {exact:.2e}, vs crop_faces {loose:.2e}")
        assert exact <= F64_TOL
        assert loose <= LARGE_FRAME_TOL


def test_reference_known_values():
    rng = np.random.default_rng(0)
    frame = _noise_frame(rng, 30, 40)
    # an integer box of S pixels copies the pixels
    out = reference_crop(frame, [CropBox(5.0, 7.0, 16.0)], 16)[0]
    np.testing.assert_array_equal(out, frame[7:23, 5:21].transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    # fully outside: zeros; half a pixel over the left edge of a white frame: 0.5 in the first column
    white = np.full((20, 20, 3), 255, np.uint8)
    assert not reference_crop(white, [CropBox(25.0, 0.0, 10.0), CropBox(-30.0, -30.0, 5.0)], 8).any()
    out = reference_crop(white, [CropBox(-0.5, 2.0, 10.0)], 10)[0]
    np.testing.assert_array_equal(out[:, :, 0], 0.5)
    np.testing.assert_array_equal(out[:, :, 1:], 1.0)
    # channels stay in RGB order
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    np.testing.assert_allclose(reference_crop(rgb, [CropBox(1.0, 1.0, 2.0)], 2)[0, :, 0, 0], [10 / 255, 20 / 255, 30 / 255])


def test_reference_float16():
    rng = np.random.default_rng(3)
    frame = _noise_frame(rng, 48, 64)
    boxes = _random_boxes(rng, 48, 64, 4) + _special_boxes(48, 64)
    f32 = reference_crop(frame, boxes, 24)
    f16 = reference_crop(frame, boxes, 24, dtype=np.float16)
    assert f16.dtype == np.float16 and f16.shape == f32.shape
    np.testing.assert_array_equal(f16, f32.astype(np.float16))  # round to nearest even, like the kernel
    assert np.abs(f16.astype(np.float32) - crop_faces(frame, boxes, 24)).max() <= F16_TOL


def test_box_table_shapes_and_errors():
    t = box_table([CropBox(10.0, 20.0, 64.0), CropBox(-1.5, 2.25, 32.0)], 32)
    np.testing.assert_array_equal(t, [[9.5, 19.5, 2.0], [-2.0, 1.75, 1.0]])
    assert t.dtype == np.float64 and box_table([], 32).shape == (0, 3)
    frame = np.zeros((10, 12, 3), np.uint8)
    assert reference_crop(frame, [], 16).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        reference_crop(np.zeros((10, 12, 3), np.float32), [CropBox(0, 0, 4)], 8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        reference_crop(np.zeros((10, 12, 4), np.uint8), [CropBox(0, 0, 4)], 8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        reference_crop(np.zeros((10, 12), np.uint8), [CropBox(0, 0, 4)], 8)
    with pytest.raises(ValueError, match=r"boxes\[1\] is not finite"):
        reference_crop(frame, [CropBox(0, 0, 4), CropBox(float("inf"), 0, 4)], 8)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a CropBox"):
        reference_crop(frame, [(0, 0, 4)], 8)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="input_size"):
        reference_crop(frame, [CropBox(0, 0, 4)], 0)
    with pytest.raises(ValueError, match="float32 or float16"):
        reference_crop(frame, [CropBox(0, 0, 4)], 8, dtype=np.float64)


# The kernel's own source, compiled for the CPU: a C++ shim defines blockIdx/threadIdx/blockDim,
# replaces the one PTX instruction (float -> half, round to nearest even) by GCC's _Float16
# conversion (the same rounding), and loops over the grid. This runs the kernel text itself --
# indexing, strides, layouts, the arithmetic -- against reference_crop, bit for bit.
HOST_SHIM = r"""
#include <cmath>
#include <cstring>
struct mlanet_dim3 { unsigned x; };
static mlanet_dim3 blockIdx, threadIdx, blockDim;
#define __global__
using std::floor; using std::fmax; using std::fmin;
static inline unsigned short mlanet_f2h(float v) { _Float16 h = (_Float16)v; unsigned short u; std::memcpy(&u, &h, 2); return u; }
"""
HOST_DRIVER = r"""
extern "C" void run_grid(const unsigned char* frame, int H, int W, long long sy, long long sx, long long sc,
                         const double* boxes, int N, int S, void* out, int out_half, int out_nhwc, int block) {
    long long total = (long long)N * S * S;
    unsigned grid = (unsigned)((total + block - 1) / block);
    blockDim.x = (unsigned)block;
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        for (unsigned t = 0; t < (unsigned)block; ++t) {
            threadIdx.x = t;
            mlanet_crop_rgb8(frame, H, W, sy, sx, sc, boxes, N, S, out, out_half, out_nhwc);
        }
    }
}
"""
ASM_F16 = 'asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));'


@pytest.fixture(scope="module")
def host_kernel(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build the kernel source for the CPU")
    assert KERNEL_SOURCE.count(ASM_F16) == 1, "the float16 store changed: update ASM_F16"
    src = HOST_SHIM + KERNEL_SOURCE.replace(ASM_F16, "h = mlanet_f2h(v);") + HOST_DRIVER
    d = tmp_path_factory.mktemp("host_kernel")
    (d / "k.cpp").write_text(src)
    # -ffp-contract=off: no fused multiply-add, like NVRTC's --fmad=false; x86-64 float math is SSE (no x87)
    res = subprocess.run([cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math",
                          "-o", str(d / "k.so"), str(d / "k.cpp")], capture_output=True, text=True, timeout=120)
    if res.returncode != 0 and "_Float16" in res.stderr:
        pytest.skip(f"{cxx} has no _Float16: {res.stderr[:200]}")
    assert res.returncode == 0, res.stderr
    lib = ctypes.CDLL(str(d / "k.so"))
    lib.run_grid.restype = None
    ll, i32, vp = ctypes.c_longlong, ctypes.c_int, ctypes.c_void_p
    lib.run_grid.argtypes = [vp, i32, i32, ll, ll, ll, vp, i32, i32, vp, i32, i32, i32]

    def run(frame: np.ndarray, boxes: list[CropBox], s: int, *, half: bool = False, nhwc: bool = False,
            block: int = 256) -> np.ndarray:
        """The kernel on the CPU; returns (N, 3, S, S) values whatever the memory layout."""
        table = np.ascontiguousarray(box_table(boxes, s))
        n = len(table)
        dtype = np.float16 if half else np.float32
        buf = np.full((n, s, s, 3) if nhwc else (n, 3, s, s), np.nan, dtype)
        sy, sx, sc = (st // frame.itemsize for st in frame.strides)
        lib.run_grid(frame.ctypes.data, frame.shape[0], frame.shape[1], sy, sx, sc, table.ctypes.data, n, s,
                     buf.ctypes.data, int(half), int(nhwc), block)
        return buf.transpose(0, 3, 1, 2) if nhwc else buf

    return run


def test_kernel_source_on_the_cpu_equals_reference_bit_for_bit(host_kernel):
    for seed in range(4):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29), (300, 500)):
            frame = _noise_frame(rng, h, w)
            boxes = _random_boxes(rng, h, w, 4) + _special_boxes(h, w)
            for s in (16, 33):
                ref = reference_crop(frame, boxes, s)
                np.testing.assert_array_equal(host_kernel(frame, boxes, s, block=128), ref)
                np.testing.assert_array_equal(host_kernel(frame, boxes, s, nhwc=True), ref)
                ref16 = reference_crop(frame, boxes, s, dtype=np.float16)
                np.testing.assert_array_equal(host_kernel(frame, boxes, s, half=True), ref16)
                np.testing.assert_array_equal(host_kernel(frame, boxes, s, half=True, nhwc=True), ref16)
    # a strided frame (a region of a bigger one) and a channels-first buffer viewed as HWC
    rng = np.random.default_rng(9)
    big = _noise_frame(rng, 120, 160)
    region = big[10:90, 30:150]
    boxes = _random_boxes(rng, 80, 120, 5) + _special_boxes(80, 120)
    want = reference_crop(np.ascontiguousarray(region), boxes, 24)
    np.testing.assert_array_equal(host_kernel(region, boxes, 24), want)
    planar = np.ascontiguousarray(big.transpose(2, 0, 1)).transpose(1, 2, 0)  # strides (W, 1, H*W)
    np.testing.assert_array_equal(host_kernel(planar, boxes, 24), reference_crop(big, boxes, 24))


def test_kernel_compiles_for_hopper_without_fused_multiply_add(tmp_path):
    """nvcc (where installed) with the NVRTC options: the PTX has no fma, divisions are IEEE (div.rn)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not installed (the GPU tests compile the kernel with NVRTC through CuPy)")
    (tmp_path / "k.cu").write_text(KERNEL_SOURCE)
    res = subprocess.run([nvcc, "-arch=sm_90", "-ptx", *NVRTC_OPTIONS, "-o", str(tmp_path / "k.ptx"),
                          str(tmp_path / "k.cu")], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert f".entry {KERNEL_NAME}(" in ptx
    assert not re.search(r"\bfma\.", ptx)
    assert "div.rn.f32" in ptx and "cvt.rn.f16.f32" in ptx and "cvt.rmi.f64.f64" in ptx


def test_gpu_cropper_without_cuda(monkeypatch):
    from mlanet.edge.gpu_crops import GpuCropper

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="GpuCropper needs a CUDA GPU visible to PyTorch.*crop_faces") as info:
        GpuCropper(64)
    assert isinstance(info.value, MLANetError)


def test_gpu_cropper_without_cupy(monkeypatch):
    from mlanet.edge.gpu_crops import GpuCropper

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` raises ImportError
    with pytest.raises(GpuUnavailableError, match=r"CuPy \(NVRTC\).*not importable.*cupy-cuda13x"):
        GpuCropper(64)


def test_torch_cuda_backend_without_cuda(monkeypatch, checkpoint, face_model):
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="TorchCudaBackend needs a CUDA GPU"):
        TorchCudaBackend(checkpoint, face_model=face_model)
    with pytest.raises(GpuUnavailableError, match="TorchCudaBackend needs a CUDA GPU"):
        TorchCudaBackend.untrained("mlanet_mobile", face_model)


def test_gpu_modules_import_light():
    code = (
        "import sys, mlanet.edge.gpu_crops, mlanet.edge.backends.torch_cuda\n"
        "heavy = [m for m in ('cupy', 'tensorrt', 'pycuda') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_parity_model_is_informative(net, face_model):
    """The FP16 tolerances mean something only if images move the vertices far more than they allow."""
    images = torch.rand(8, 3, S_NET, S_NET, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        params = net(images)
        verts = face_model(params)
    spread_mm = float(torch.linalg.vector_norm(verts - verts.mean(0, keepdim=True), dim=-1).mean()) * 1000
    print(f"vertex spread between random images: {spread_mm:.1f} mm")
    assert spread_mm > 5 * FP16_MAX_MM, spread_mm


# ========================================================================================= GPU
def _gpu_cropper(s: int, **kw):
    pytest.importorskip("cupy", reason="GpuCropper needs CuPy (pip install cupy-cuda13x)")
    from mlanet.edge.gpu_crops import GpuCropper

    return GpuCropper(s, **kw)


@pytest.mark.gpu
def test_kernel_matches_crop_faces_and_reference():
    worst_cf = worst_ref = 0.0
    identical = total = 0
    croppers = {s: _gpu_cropper(s) for s in (16, 33, 48)}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29)):
            frame = _noise_frame(rng, h, w)
            boxes = _random_boxes(rng, h, w, 5) + _special_boxes(h, w)
            for s in (16, 33):
                got = croppers[s](frame, boxes)
                assert got.shape == (len(boxes), 3, s, s) and got.dtype == torch.float32 and got.is_cuda
                got = got.cpu().numpy()
                ref = reference_crop(frame, boxes, s)
                worst_cf = max(worst_cf, float(np.abs(got - crop_faces(frame, boxes, s)).max()))
                worst_ref = max(worst_ref, float(np.abs(got - ref).max()))
                identical += int((got == ref).sum())
                total += got.size
    rng = np.random.default_rng(11)
    frame = _noise_frame(rng, 1080, 1920)
    boxes = _random_boxes(rng, 1080, 1920, 4) + _special_boxes(1080, 1920)
    got = croppers[48](frame, boxes).cpu().numpy()
    large_ref = float(np.abs(got - reference_crop(frame, boxes, 48)).max())
    large_f64 = float(np.abs(got - _float64_convention(frame, boxes, 48)).max())
    print(f"kernel vs crop_faces (<= 64 px frames) {worst_cf:.2e}; vs reference {worst_ref:.2e} "
          f"({identical}/{total} identical); 1080p: vs reference {large_ref:.2e}, vs float64 {large_f64:.2e}")
    assert worst_cf <= CROP_TOL
    assert worst_ref <= KERNEL_VS_REF_TOL and large_ref <= KERNEL_VS_REF_TOL
    assert large_f64 <= F64_TOL


@pytest.mark.gpu
def test_one_launch_for_n_faces():
    cropper = _gpu_cropper(32)
    calls = []
    kernel = cropper._kernel

    class Counting:
        def __call__(self, grid, block, args, **kw):
            calls.append((grid, block))
            return kernel(grid, block, args, **kw)

        def __getattr__(self, name):
            return getattr(kernel, name)

    cropper._kernel = Counting()
    rng = np.random.default_rng(0)
    frame = _noise_frame(rng, 120, 160)
    for n in (1, 5, 17):
        boxes = _random_boxes(rng, 120, 160, n)
        before = len(calls)
        cropper(frame, boxes)
        assert len(calls) - before == 1
    assert cropper.launches == 3
    assert cropper(frame, []).shape == (0, 3, 32, 32) and len(calls) == 3  # no boxes: no launch
    # independent evidence from the profiler (CUPTI sees kernels whoever launched them)
    cropper._kernel = kernel
    from torch.profiler import ProfilerActivity, profile

    boxes = _random_boxes(rng, 120, 160, 9)
    probe = torch.zeros(4, device="cuda")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        cropper(frame, boxes)
        probe.add_(1.0)
        torch.cuda.synchronize()
    names = [e.name for e in prof.events()]
    crop = [n for n in names if KERNEL_NAME in n]
    torch_kernels = [n for n in names if "elementwise" in n.lower() or "vectorized" in n.lower()]
    print(f"profiler: {len(crop)} x {KERNEL_NAME}; torch kernels seen: {len(torch_kernels)}")
    if torch_kernels:  # the profiler records GPU kernels here
        assert len(crop) == 1, names


@pytest.mark.gpu
def test_float16_and_channels_last_outputs():
    rng = np.random.default_rng(4)
    frame = _noise_frame(rng, 48, 64)
    boxes = _random_boxes(rng, 48, 64, 5) + _special_boxes(48, 64)
    want = crop_faces(frame, boxes, 24)
    f16 = _gpu_cropper(24, dtype=torch.float16)(frame, boxes)
    assert f16.dtype == torch.float16 and f16.is_contiguous()
    got = f16.float().cpu().numpy()
    ref16 = reference_crop(frame, boxes, 24, dtype=np.float16).astype(np.float32)
    print(f"float16 kernel vs crop_faces {np.abs(got - want).max():.2e}; identical to reference "
          f"{(got == ref16).mean():.4f}")
    assert np.abs(got - want).max() <= F16_TOL
    assert np.abs(got - ref16).max() <= F16_TOL / 2
    for dtype in (torch.float32, torch.float16):
        cl = _gpu_cropper(24, dtype=dtype, channels_last=True)(frame, boxes)
        assert cl.is_contiguous(memory_format=torch.channels_last) and cl.dtype == dtype
        plain = _gpu_cropper(24, dtype=dtype)(frame, boxes)
        assert torch.equal(cl, plain)


@pytest.mark.gpu
def test_cuda_frames_streams_and_out():
    cropper = _gpu_cropper(32)
    rng = np.random.default_rng(5)
    frame = _noise_frame(rng, 200, 300)
    boxes = _random_boxes(rng, 200, 300, 6)
    want = cropper(frame, boxes).cpu().numpy()
    dev = torch.from_numpy(frame).cuda()
    np.testing.assert_array_equal(cropper(dev, boxes).cpu().numpy(), want)
    # a strided view (a region of a bigger frame) is read in place
    sub = dev[20:150, 40:260]
    assert not sub.is_contiguous()
    sub_boxes = _random_boxes(rng, 130, 220, 4) + _special_boxes(130, 220)
    np.testing.assert_array_equal(cropper(sub, sub_boxes).cpu().numpy(),
                                  reference_crop(np.ascontiguousarray(frame[20:150, 40:260]), sub_boxes, 32))
    # on a side stream, into a preallocated output; then many frames in a row through the staging buffer
    side = torch.cuda.Stream()
    out = torch.empty((6, 3, 32, 32), device="cuda")
    with torch.cuda.stream(side):
        res = cropper(frame, boxes, out=out)
    side.synchronize()
    assert res is out
    np.testing.assert_array_equal(out.cpu().numpy(), want)
    frames = [_noise_frame(rng, 200, 300) for _ in range(4)]
    outs = [cropper(f, boxes) for f in frames]
    for f, o in zip(frames, outs):
        np.testing.assert_array_equal(o.cpu().numpy(), reference_crop(f, boxes, 32))
    with pytest.raises(ValueError, match="out must be"):
        cropper(frame, boxes, out=torch.empty((5, 3, 32, 32), device="cuda"))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        cropper(dev.float(), boxes)


@pytest.mark.gpu
def test_torch_cuda_backend_fp16_vs_torch_fp32_in_vertex_space(checkpoint, face_model):
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    ref = TorchBackend(checkpoint, face_model=face_model)
    gpu = TorchCudaBackend(checkpoint, face_model=face_model)
    for key in ("kind", "source", "model_name", "model_config", "layout", "preprocess", "face_model"):
        assert getattr(gpu.metadata, key) == getattr(ref.metadata, key), key
    assert gpu.metadata.backend == "torch-cuda" and gpu.metadata.runtime["precision"] == "fp16"
    gpu.warmup()
    images = torch.rand(8, 3, S_NET, S_NET, generator=torch.Generator().manual_seed(1)).numpy()
    want = ref(images)
    got = gpu(images)
    assert got.shape == want.shape == (8, face_model.layout.total) and got.dtype == np.float32
    on_device = gpu.run_device(torch.from_numpy(images).cuda())
    assert on_device.is_cuda and on_device.dtype == torch.float32
    mm = _vertex_mm(face_model, want, got)
    print(f"TorchCudaBackend fp16 vs TorchBackend fp32 (CPU): vertex mm {mm}")
    assert mm["mean"] <= FP16_MEAN_MM and mm["max"] <= FP16_MAX_MM
    assert _vertex_mm(face_model, on_device, got)["max"] <= GRAPH_MAX_MM
    with pytest.raises(ValueError, match=rf"\(B, 3, {S_NET}, {S_NET}\)"):
        gpu(np.zeros((1, 3, 32, 32), np.float32))
    gpu.close()


@pytest.mark.gpu
def test_graph_replay_equals_eager(checkpoint, face_model):
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    gpu = TorchCudaBackend(checkpoint, face_model=face_model, cuda_graphs=True, max_graph_batch=8)
    gen = torch.Generator(device="cuda").manual_seed(2)
    worst = 0.0
    for b in (1, 3, 8, 1, 3, 12):  # repeated sizes replay their graph; 12 > max_graph_batch runs eagerly
        for _ in range(2):  # new inputs each time: a replay must see them
            images = torch.rand((b, 3, S_NET, S_NET), generator=gen, device="cuda")
            graph = gpu.run_device(images)
            eager = gpu.run_device(images, cuda_graph=False)
            worst = max(worst, _vertex_mm(face_model, graph, eager)["max"])
    assert sorted(gpu._graphs) == [1, 3, 8]
    print(f"graph replay vs eager: max vertex distance {worst:.4f} mm")
    assert worst <= GRAPH_MAX_MM
    # the output of one replay survives the next one (run_device returns a copy)
    a_in = torch.rand((3, 3, S_NET, S_NET), generator=gen, device="cuda")
    b_in = torch.rand((3, 3, S_NET, S_NET), generator=gen, device="cuda")
    a = gpu.run_device(a_in)
    a_copy = a.clone()
    gpu.run_device(b_in)
    assert torch.equal(a, a_copy)
    gpu.close()


@pytest.mark.gpu
def test_gpu_crops_feed_the_backend_without_a_host_copy(checkpoint, face_model):
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    ref = TorchBackend(checkpoint, face_model=face_model)
    gpu = TorchCudaBackend(checkpoint, face_model=face_model, cuda_graphs=True)
    cropper = _gpu_cropper(S_NET, dtype=torch.float16, channels_last=True)
    rng = np.random.default_rng(9)
    frame = _noise_frame(rng, 480, 640)
    boxes = [CropBox(100.25, 80.5, 180.0), CropBox(400.0, 250.0, 150.5), CropBox(-30.0, 300.0, 200.0)]
    crops = cropper(frame, boxes)
    assert crops.dtype == torch.float16 and crops.is_contiguous(memory_format=torch.channels_last)
    assert gpu._device_images(crops).data_ptr() == crops.data_ptr()  # already in the model's format: no copy
    got = gpu.run_device(crops)
    want = ref(crop_faces(frame, boxes, S_NET))
    mm = _vertex_mm(face_model, want, got)
    print(f"GpuCropper fp16 -> TorchCudaBackend fp16 vs crop_faces -> TorchBackend fp32: vertex mm {mm}")
    assert mm["mean"] <= FP16_MEAN_MM and mm["max"] <= FP16_MAX_MM
