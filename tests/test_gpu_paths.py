"""The device crop (:mod:`mlanet.edge.gpu_crops`: torch ops, CPU or CUDA tensors) and the FP16 PyTorch GPU
backend (:mod:`mlanet.edge.backends.torch_cuda`).

CPU tests (run everywhere): :func:`reference_crop` (the convention in float64 NumPy) against
``crop_image`` on a float64 image; :func:`crop_from_table` (what the GPU mode runs, here on CPU tensors)
against :func:`reference_crop` and against the CPU pipeline's :func:`crop_faces`, with 1 and 2 torch
threads; known values, strided frames, errors; the no-GPU errors; light imports; no CUDA binding but
torch and pycuda anywhere in the project.

GPU tests (``gpu``; written on a machine without a GPU, not run yet): :func:`crop_from_table` on CUDA
tensors against the same call on the CPU; :class:`TorchCudaBackend` FP16 vs :class:`TorchBackend`
FP32 (CPU) in vertex space, graph replay vs eager, device crops fed to it without a host copy.

Tolerances
    * :func:`crop_from_table` vs :func:`reference_crop`: ``REF_TOL = 1e-6`` (float64 positions in both;
      the torch crop rounds fractions and weights to float32: measured <= ~2e-7).
    * vs :func:`crop_faces`: ``CROP_TOL = 1e-5`` on frames <= 64 px wide, ``LARGE_FRAME_TOL = 2.5e-4`` on
      1080p (``grid_sample``'s [-1, 1] float32 grid quantises positions to ~(region width) x 6e-8 px; on
      noise frames that is ~6e-6 at 130 px and ~1e-4 at 1920 px).
    * float16 crops: within ``F16_TOL = 1e-3`` of the float32 ones (half-ulp in [0.5, 1) is 2.4e-4).
    * CUDA vs CPU :func:`crop_from_table`: ``DEVICE_TOL = 1e-6`` (the same operations; a GPU may
      contract a multiply-add).
    * FP16 network vs FP32 on the CPU, vertex space: mean <= 1 mm, max <= 3 mm (the rationale of
      ``tests/test_tensorrt_engine.py``: FP16 spacing at the 1 m prior depth is ~1 mm/2, and the
      calibrated model moves vertices by > 15 mm between random images; see
      test_parity_model_is_informative). Graph replay vs eager (same model, same kernels):
      max <= 1 mm (one FP16 rounding flip of the depth; a stale or wrong input moves ~30 mm).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import informative_untrained_model
import pytest
import torch

from mlanet.edge.backends import TorchBackend
from mlanet.edge.crops import crop_faces
from mlanet.edge.gpu_crops import GpuUnavailableError, box_table, crop_from_table, reference_crop
from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox, crop_image

REPO = Path(__file__).resolve().parents[1]
REF_TOL = 1e-6
CROP_TOL = 1e-5
LARGE_FRAME_TOL = 2.5e-4
F16_TOL = 1e-3
DEVICE_TOL = 1e-6
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
def _crop(frame: np.ndarray, boxes: list[CropBox], s: int, dtype=None) -> np.ndarray:
    return crop_from_table(torch.from_numpy(frame), torch.from_numpy(box_table(boxes, s)), s, dtype).float().numpy()


def test_reference_is_the_convention():
    """The NumPy reference against crop_image (grid_sample) on a float64 image: two implementations."""
    worst = 0.0
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29), (120, 90)):
            frame = _noise_frame(rng, h, w)
            boxes = _random_boxes(rng, h, w, 4) + _special_boxes(h, w)
            ref = reference_crop(frame, boxes, 17)
            assert ref.shape == (len(boxes), 3, 17, 17) and ref.dtype == np.float64
            worst = max(worst, float(np.abs(ref - _float64_convention(frame, boxes, 17)).max()))
    print(f"reference vs crop_image in float64: max |diff| {worst:.2e}")
    assert worst <= 1e-9


@pytest.mark.parametrize("threads", [1, 2])
def test_crop_from_table_matches_the_reference(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        worst = worst16 = 0.0
        for seed in range(3):
            rng = np.random.default_rng(seed)
            for h, w in ((48, 64), (37, 29), (300, 500), (1080, 1920)):
                frame = _noise_frame(rng, h, w)
                boxes = _random_boxes(rng, h, w, 4) + _special_boxes(h, w)
                for s in (16, 33):
                    ref = reference_crop(frame, boxes, s)
                    got = crop_from_table(torch.from_numpy(frame), torch.from_numpy(box_table(boxes, s)), s)
                    assert got.shape == (len(boxes), 3, s, s) and got.dtype == torch.float32 and got.is_contiguous()
                    worst = max(worst, float(np.abs(got.numpy() - ref).max()))
                    got16 = _crop(frame, boxes, s, torch.float16)
                    worst16 = max(worst16, float(np.abs(got16 - ref).max()))
    finally:
        torch.set_num_threads(old)
    print(f"crop_from_table vs reference ({threads} threads): float32 {worst:.2e}, float16 {worst16:.2e}")
    assert worst <= REF_TOL and worst16 <= F16_TOL


def test_crop_from_table_matches_the_cpu_pipeline_crop():
    worst = 0.0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        for h, w in ((48, 64), (37, 29)):
            frame = _noise_frame(rng, h, w)
            boxes = _random_boxes(rng, h, w, 5) + _special_boxes(h, w)
            for s in (16, 33):
                worst = max(worst, float(np.abs(_crop(frame, boxes, s) - crop_faces(frame, boxes, s)).max()))
    rng = np.random.default_rng(11)
    frame = _noise_frame(rng, 1080, 1920)
    boxes = _random_boxes(rng, 1080, 1920, 4) + _special_boxes(1080, 1920)
    large = float(np.abs(_crop(frame, boxes, 48) - crop_faces(frame, boxes, 48)).max())
    print(f"crop_from_table vs crop_faces: frames <= 64 px {worst:.2e}, 1080p {large:.2e}")
    assert worst <= CROP_TOL and large <= LARGE_FRAME_TOL


def test_crop_known_values_and_strided_frames():
    rng = np.random.default_rng(0)
    frame = _noise_frame(rng, 30, 40)
    # an integer box of S pixels copies the pixels
    out = _crop(frame, [CropBox(5.0, 7.0, 16.0)], 16)[0]
    np.testing.assert_array_equal(out, frame[7:23, 5:21].transpose(2, 0, 1).astype(np.float32) / np.float32(255))
    # fully outside: zeros; half a pixel over the left edge of a white frame: 0.5 in the first column
    white = np.full((20, 20, 3), 255, np.uint8)
    assert not _crop(white, [CropBox(25.0, 0.0, 10.0), CropBox(-30.0, -30.0, 5.0)], 8).any()
    out = _crop(white, [CropBox(-0.5, 2.0, 10.0)], 10)[0]
    np.testing.assert_array_equal(out[:, :, 0], 0.5)
    np.testing.assert_array_equal(out[:, :, 1:], 1.0)
    # channels stay in RGB order
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    np.testing.assert_allclose(_crop(rgb, [CropBox(1.0, 1.0, 2.0)], 2)[0, :, 0, 0], [10 / 255, 20 / 255, 30 / 255],
                               rtol=1e-6)
    # a strided frame (a region of a bigger one, or a planar buffer viewed as HWC) is read in place
    big = _noise_frame(rng, 120, 160)
    boxes = _random_boxes(rng, 80, 120, 5) + _special_boxes(80, 120)
    region = torch.from_numpy(big)[10:90, 30:150]
    assert not region.is_contiguous()
    table = torch.from_numpy(box_table(boxes, 24))
    np.testing.assert_array_equal(crop_from_table(region, table, 24).numpy(),
                                  _crop(np.ascontiguousarray(big[10:90, 30:150]), boxes, 24))
    planar = torch.from_numpy(np.ascontiguousarray(big.transpose(2, 0, 1))).permute(1, 2, 0)
    np.testing.assert_array_equal(crop_from_table(planar, table, 24).numpy(), _crop(big, boxes, 24))


def test_box_table_crop_errors_and_empty():
    t = box_table([CropBox(10.0, 20.0, 64.0), CropBox(-1.5, 2.25, 32.0)], 32)
    np.testing.assert_array_equal(t, [[9.5, 19.5, 2.0], [-2.0, 1.75, 1.0]])
    assert t.dtype == np.float64 and box_table([], 32).shape == (0, 3)
    with pytest.raises(ValueError, match=r"boxes\[1\] is not finite"):
        box_table([CropBox(0, 0, 4), CropBox(float("inf"), 0, 4)], 8)
    with pytest.raises(ValueError, match=r"boxes\[0\] must be a CropBox"):
        box_table([(0, 0, 4)], 8)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="input_size"):
        box_table([CropBox(0, 0, 4)], 0)
    frame = torch.zeros((10, 12, 3), dtype=torch.uint8)
    table = torch.from_numpy(box_table([CropBox(0, 0, 4)], 8))
    assert crop_from_table(frame, table[:0], 8).shape == (0, 3, 8, 8)
    assert reference_crop(frame.numpy(), [], 8).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8"):
        crop_from_table(frame.float(), table, 8)
    with pytest.raises(ValueError, match=r"frame must be an \(H, W, 3\) uint8"):
        crop_from_table(frame.numpy(), table, 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"table must be an \(N, 3\) float64"):
        crop_from_table(frame, table.float(), 8)
    with pytest.raises(ValueError, match="float32 or torch.float16"):
        crop_from_table(frame, table, 8, torch.float64)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        reference_crop(np.zeros((10, 12, 4), np.uint8), [CropBox(0, 0, 4)], 8)


def test_torch_cuda_backend_without_cuda(monkeypatch, checkpoint, face_model):
    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="TorchCudaBackend needs a CUDA GPU.*--device cpu") as info:
        TorchCudaBackend(checkpoint, face_model=face_model)
    assert isinstance(info.value, MLANetError)
    with pytest.raises(GpuUnavailableError, match="TorchCudaBackend needs a CUDA GPU"):
        TorchCudaBackend.untrained("mlanet_mobile", face_model)


def test_gpu_modules_import_light():
    code = (
        "import sys, mlanet.edge.gpu_crops, mlanet.edge.device_path, mlanet.edge.backends.torch_cuda\n"
        "heavy = [m for m in ('tensorrt', 'pycuda') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_cuda_bindings_are_torch_and_pycuda_only():
    """One GPU path: the code imports no CUDA binding but torch (and pycuda, in the TensorRT runner), and
    neither the extras nor the docs ask for another one."""
    others = re.compile(r"\b(cupy|numba\.cuda|cuda\.bindings|cuda-python|pyopencl)\b", re.IGNORECASE)
    found = []
    for folder in ("mlanet", "edge", "export", "benchmarks", "tools", "docs"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".sh", ".toml") and path.is_file():
                found += [f"{path.relative_to(REPO)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                          if others.search(line)]
    for path in (REPO / "pyproject.toml", REPO / "README.md"):
        found += [f"{path.name}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if others.search(line)]
    assert not found, found
    pycuda_users = sorted(str(p.relative_to(REPO)) for folder in ("mlanet", "edge", "export")
                          for p in (REPO / folder).rglob("*.py") if re.search(r"^\s*import pycuda|^\s*from pycuda",
                                                                              p.read_text(), re.MULTILINE))
    assert all(p.startswith("export/tensorrt") for p in pycuda_users), pycuda_users


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
@pytest.mark.gpu
def test_crop_from_table_on_cuda_equals_the_cpu():
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in ((48, 64), (1080, 1920)):
        frame = _noise_frame(rng, h, w)
        boxes = _random_boxes(rng, h, w, 5) + _special_boxes(h, w)
        table = torch.from_numpy(box_table(boxes, 33))
        for dtype in (torch.float32, torch.float16):
            got = crop_from_table(torch.from_numpy(frame).cuda(), table.cuda(), 33, dtype)
            assert got.is_cuda and got.dtype == dtype
            want = crop_from_table(torch.from_numpy(frame), table, 33, dtype)
            worst = max(worst, float((got.cpu().float() - want.float()).abs().max()))
        np.testing.assert_allclose(crop_from_table(torch.from_numpy(frame).cuda(), table.cuda(), 33).cpu().numpy(),
                                   reference_crop(frame, boxes, 33), rtol=0, atol=REF_TOL)
    print(f"crop_from_table CUDA vs CPU: max |diff| {worst:.2e}")
    assert worst <= DEVICE_TOL


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
    rng = np.random.default_rng(9)
    frame = _noise_frame(rng, 480, 640)
    boxes = [CropBox(100.25, 80.5, 180.0), CropBox(400.0, 250.0, 150.5), CropBox(-30.0, 300.0, 200.0)]
    table = torch.from_numpy(box_table(boxes, S_NET)).cuda()
    crops = crop_from_table(torch.from_numpy(frame).cuda(), table, S_NET, torch.float16).contiguous(
        memory_format=torch.channels_last)
    assert gpu._device_images(crops).data_ptr() == crops.data_ptr()  # already in the model's format: no copy
    got = gpu.run_device(crops)
    want = ref(crop_faces(frame, boxes, S_NET))
    mm = _vertex_mm(face_model, want, got)
    print(f"device crops fp16 -> TorchCudaBackend fp16 vs crop_faces -> TorchBackend fp32: vertex mm {mm}")
    assert mm["mean"] <= FP16_MEAN_MM and mm["max"] <= FP16_MAX_MM
    gpu.close()
