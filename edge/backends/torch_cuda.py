"""PyTorch on a CUDA GPU: FP16, channels-last, cuDNN benchmark, optional CUDA-graph replay per batch size.

UNTESTED ON A GPU: written on a machine without one, against the documented PyTorch API
(``torch.cuda.CUDAGraph``, ``torch.cuda.graph``, ``torch.cuda.Stream``); its ``gpu`` tests are in
``tests/test_gpu_paths.py`` (FP16 vs the FP32 CPU :class:`~mlanet.edge.backends.TorchBackend` in
vertex space, graph replay vs eager, device crops (:func:`~mlanet.edge.gpu_crops.crop_from_table`)
without a host round trip).

:class:`TorchCudaBackend` follows the :class:`~mlanet.edge.backends.InferenceBackend` protocol
(``__call__(images) -> (B, P) numpy float32``, ``metadata``, ``warmup()``, ``close()``) and adds
:meth:`TorchCudaBackend.run_device`, which keeps the result on the GPU (what makes
:class:`~mlanet.edge.pipeline.FacePipeline` choose its GPU mode). It loads a checkpoint
exactly as :class:`~mlanet.edge.backends.TorchBackend` does (same checks, the same :class:`~mlanet.model_metadata.ModelMetadata`).

Shared helpers:

* :func:`prepare_cuda_model` — copy, ``eval()``, ``half()``, move, channels-last.
* :func:`cudnn_benchmark` — cuDNN benchmark mode for a block, restored afterwards (no global
  flag stays flipped).
* :func:`capture_cuda_graph` — warm up on a side stream, then capture one call.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from mlanet.params import require_finite_params
from mlanet.edge.gpu_crops import normalize_device, require_cuda
from mlanet.edge.backends.base import RUN_FOLDER, BackendSpec, _as_images, register_backend
from mlanet.edge.backends.torch_cpu import TorchBackend

if TYPE_CHECKING:
    from mlanet.model_metadata import ModelMetadata

log = logging.getLogger(__name__)

PRECISIONS = ("fp16", "fp32")


# ----------------------------------------------------------------------------------------- shared helpers
def prepare_cuda_model(model: Any, device: Any, *, precision: str = "fp16", channels_last: bool = True,
                       copy_model: bool = True) -> Any:
    """``model`` for GPU inference: (a deep copy unless ``copy_model=False``) ``eval()``, ``half()`` for
    ``precision="fp16"``, on ``device``, channels-last parameters when ``channels_last``."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    m = copy.deepcopy(model) if copy_model else model
    m = m.eval()
    if precision == "fp16":
        m = m.half()
    m = m.to(device)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool = True) -> Iterator[None]:
    """``torch.backends.cudnn.benchmark = enabled`` inside the block, the previous value after it.

    With fixed input shapes (one per batch size), cuDNN times its convolution algorithms on the
    first call of each shape and caches the fastest; later calls and CUDA-graph captures reuse it.
    """
    import torch

    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def capture_cuda_graph(fn: Callable[[Any], Any], static_input: Any, *, warmup: int = 3) -> tuple[Any, Any]:
    """Capture ``fn(static_input)`` as a :class:`torch.cuda.CUDAGraph`.

    ``fn`` runs ``warmup`` times on a side stream first (PyTorch's recipe: lazy initialisation,
    cuDNN benchmarking and allocator warm-up must not happen during capture), then once under
    capture. Replay with ``graph.replay()`` after writing new data into ``static_input`` (same
    shape, dtype, memory format); the result appears in the returned static output, which the
    next replay overwrites. Call under ``torch.no_grad()``.

    Returns:
        (graph, static_output).
    """
    import torch

    if warmup < 1:
        raise ValueError(f"warmup must be >= 1, got {warmup}")
    device = static_input.device
    current = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device=device)
    side.wait_stream(current)
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_input)
    current.wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = fn(static_input)
    return graph, static_output


@dataclass
class _Captured:
    graph: Any
    input: Any
    output: Any


# ----------------------------------------------------------------------------------------- backend
class TorchCudaBackend:
    """PyTorch backend on a CUDA GPU for a ``.safetensors`` checkpoint or a training run folder.

    UNTESTED ON A GPU (see the module docstring).

    Args:
        weights: checkpoint file or run folder (loaded by :class:`~mlanet.edge.backends.TorchBackend`).
        face_model: optional MorphableModel; checked against the checkpoint (id, checksum, layout).
        device: CUDA device (``"cuda"``, ``"cuda:1"``, an ordinal or a ``torch.device``).
        precision: ``"fp16"`` (default; ``model.half()``) or ``"fp32"``.
        cuda_graphs: capture one CUDA graph per batch size on its first call (up to
            ``max_graph_batch``; larger batches run eagerly) and replay it afterwards.
        max_graph_batch: largest batch size that gets a graph (each holds its own memory pool).
        channels_last: channels-last weights and inputs (faster FP16 convolutions on tensor cores).
        benchmark: cuDNN benchmark mode while this backend runs (restored after each call).

    Raises:
        GpuUnavailableError: no CUDA GPU visible to PyTorch (checked before the checkpoint is read).
        AssetError: whatever :class:`~mlanet.edge.backends.TorchBackend` refuses.
    """

    def __init__(self, weights: str | os.PathLike[str], face_model: Any = None, *, device: Any = "cuda",
                 precision: str = "fp16", cuda_graphs: bool = False, max_graph_batch: int = 64,
                 channels_last: bool = True, benchmark: bool = True) -> None:
        require_cuda("TorchCudaBackend")
        cpu = TorchBackend(weights, face_model=face_model, device="cpu")
        self._setup(cpu.model, cpu.metadata, cpu.path, device=device, precision=precision, cuda_graphs=cuda_graphs,
                    max_graph_batch=max_graph_batch, channels_last=channels_last, benchmark=benchmark,
                    copy_model=False)

    @classmethod
    def from_torch_backend(cls, backend: TorchBackend, **kwargs: Any) -> "TorchCudaBackend":
        """The GPU twin of a (CPU) :class:`~mlanet.edge.backends.TorchBackend` (its model is copied).

        ``kwargs``: the keyword arguments of the constructor (``device``, ``precision``, ...).
        """
        require_cuda("TorchCudaBackend")
        self = cls.__new__(cls)
        self._setup(backend.model, backend.metadata, backend.path, copy_model=True, **kwargs)
        return self

    @classmethod
    def untrained(cls, model_name: str, face_model: Any, *, seed: int = 0, **kwargs: Any) -> "TorchCudaBackend":
        """A freshly initialised ``model_name`` (see :meth:`TorchBackend.untrained`); only for tests and demos."""
        require_cuda("TorchCudaBackend")
        return cls.from_torch_backend(TorchBackend.untrained(model_name, face_model, seed=seed), **kwargs)

    def _setup(self, model: Any, metadata: "ModelMetadata", path: Any, *, device: Any = "cuda",
               precision: str = "fp16", cuda_graphs: bool = False, max_graph_batch: int = 64,
               channels_last: bool = True, benchmark: bool = True, copy_model: bool = True) -> None:
        import torch

        self._torch = torch
        self.device = normalize_device(device)
        if self.device.type != "cuda":
            raise ValueError(f"TorchCudaBackend needs a CUDA device, got {device!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if max_graph_batch < 1:
            raise ValueError(f"max_graph_batch must be >= 1, got {max_graph_batch}")
        self.path = path
        self.precision = precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.cuda_graphs = bool(cuda_graphs)
        self.max_graph_batch = int(max_graph_batch)
        self.benchmark = bool(benchmark)
        self.model = prepare_cuda_model(model, self.device, precision=precision, channels_last=channels_last,
                                        copy_model=copy_model)
        self.input_size = metadata.input_size
        self._graphs: dict[int, _Captured] = {}
        self.metadata = metadata.with_runtime(
            backend="torch-cuda", precision=precision, device=torch.cuda.get_device_name(self.device),
            memory_format="channels_last" if channels_last else "contiguous", cuda_graphs=self.cuda_graphs)

    # ------------------------------------------------------------------ inputs
    def _device_images(self, images: Any) -> Any:
        """(B, 3, S, S) on the device in the model's dtype and memory format (no copy if already so)."""
        torch = self._torch
        s = self.input_size
        if isinstance(images, torch.Tensor) and images.is_cuda:
            if (images.ndim != 4 or images.shape[0] < 1 or tuple(images.shape[1:]) != (3, s, s)
                    or not images.is_floating_point()):
                raise ValueError(f"{self.path} expects images of shape (B, 3, {s}, {s}) (float RGB in [0, 1]), "
                                 f"got {tuple(images.shape)} {images.dtype}")
            if images.device != self.device:
                raise ValueError(f"{self.path}: images on {images.device}, the model is on {self.device}")
            x = images.detach()
        else:
            x = torch.from_numpy(_as_images(images, s, f"{self.path}")).to(self.device)
        return x.to(dtype=self.dtype, memory_format=self.memory_format)

    # ------------------------------------------------------------------ inference
    def _capture(self, batch: int) -> _Captured:
        torch = self._torch
        s = self.input_size
        static_in = torch.zeros((batch, 3, s, s), dtype=self.dtype, device=self.device).contiguous(
            memory_format=self.memory_format)
        graph, static_out = capture_cuda_graph(self.model, static_in)
        cap = _Captured(graph, static_in, static_out)
        self._graphs[batch] = cap
        log.debug("captured a CUDA graph for batch %d", batch)
        return cap

    def run_device(self, images: Any, *, cuda_graph: bool | None = None) -> Any:
        """``images (B, 3, S, S)`` (numpy, CPU or CUDA tensor) -> params ``(B, P)`` float32 on the device.

        Queued on PyTorch's current stream; no host synchronisation. ``cuda_graph`` overrides the
        backend's ``cuda_graphs`` for this call (tests compare both on one model).
        """
        torch = self._torch
        if self.model is None:
            raise RuntimeError(f"{self.path}: backend is closed")
        x = self._device_images(images)
        batch = int(x.shape[0])
        use_graph = self.cuda_graphs if cuda_graph is None else bool(cuda_graph)
        with torch.cuda.device(self.device), torch.no_grad(), cudnn_benchmark(self.benchmark):
            if use_graph and batch <= self.max_graph_batch:
                cap = self._graphs.get(batch) or self._capture(batch)
                cap.input.copy_(x)
                cap.graph.replay()
                out = cap.output
            else:
                out = self.model(x)
            # always a new tensor: a graph's static output is overwritten by its next replay
            return out.to(torch.float32, copy=True)

    def __call__(self, images: Any) -> np.ndarray:
        """``images (B, 3, S, S)`` -> params ``(B, P)`` numpy float32 (waits for the GPU)."""
        return require_finite_params(self.run_device(images).float().cpu().numpy(), str(self.path))

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run (and with ``cuda_graphs``, capture) each batch size once: cuDNN benchmarking, allocator."""
        s = self.input_size
        for b in batch_sizes:
            self.run_device(self._torch.zeros((b, 3, s, s), dtype=self.dtype, device=self.device))
        self._torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self._graphs.clear()
        self.model = None  # type: ignore[assignment]


def _open(path: Any, face_model: Any, index: int | None, cuda_graphs: bool, **options: Any) -> "TorchCudaBackend":
    """``options``: ``precision``, ``max_graph_batch``, ``channels_last``, ``benchmark`` of :class:`TorchCudaBackend`."""
    return TorchCudaBackend(path, face_model=face_model, device="cuda" if index is None else index,
                            cuda_graphs=cuda_graphs, **options)


def cuda_unavailable_reason() -> str | None:
    """``None`` when PyTorch sees a CUDA GPU, else why not."""
    import torch

    if torch.cuda.is_available():
        return None
    return f"no CUDA GPU visible to PyTorch (torch {torch.__version__}, CUDA build {torch.version.cuda})"


register_backend(BackendSpec("torch-cuda-fp16", (".safetensors", RUN_FOLDER), "cuda", _open,
                             "a checkpoint or run folder in PyTorch on GPU N: FP16, channels-last, CUDA graphs",
                             probe=cuda_unavailable_reason))
