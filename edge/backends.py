"""Inference backends: one class per runtime, chosen by the artifact's suffix.

Every backend maps preprocessed crops ``images (B, 3, S, S)`` float32 RGB in [0, 1] (numpy or
torch) to flat parameters ``(B, P)`` as a numpy float32 array, and exposes the artifact's
``metadata`` (layout, preprocessing, face model identity) so nothing downstream hard-codes
a crop size or a slice of the parameter vector.

* :class:`TorchBackend` — a ``.safetensors`` checkpoint or a training run folder.
* :class:`OnnxRuntimeBackend` — an ``.onnx`` file written by ``mlanet export onnx``.
* :class:`TensorRTBackend` — an ``.engine``/``.plan`` file written by ``mlanet export tensorrt``.
* :func:`open_backend` — picks the class from :data:`BACKENDS` by suffix.

Heavy runtimes (``onnxruntime``, ``onnx``, ``tensorrt``, ``pycuda``) are imported inside the classes that need them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import AssetError
from ..params import require_finite_params


@runtime_checkable
class InferenceBackend(Protocol):
    """``__call__(images (B, 3, S, S) float32) -> (B, P) numpy``; ``metadata``; ``warmup()``; ``close()``."""

    metadata: dict[str, Any]

    def __call__(self, images: Any) -> np.ndarray: ...

    def warmup(self) -> None: ...

    def close(self) -> None: ...


def _as_images(images: Any, size: int, where: str) -> np.ndarray:
    """``images`` as a contiguous float32 numpy array, checked against (B, 3, size, size)."""
    if hasattr(images, "detach") and hasattr(images, "cpu"):  # torch.Tensor without importing torch here
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[0] < 1 or arr.shape[1] != 3 or arr.shape[2] != size or arr.shape[3] != size:
        raise ValueError(
            f"{where} expects images of shape (B, 3, {size}, {size}) (float32 RGB in [0, 1]), got {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_face_model(source: str, meta: dict[str, Any], face_model: Any) -> None:
    """Refuse an artifact made for another face model than ``face_model`` (decoder signature, layout)."""
    from ..morphable.decoder_identity import check_binding
    from ..params import ParamLayout

    check_binding(source, meta.get("face_model"), face_model.describe())
    layout = ParamLayout.from_dict(meta["layout"])
    if layout != face_model.layout:
        raise AssetError(
            f"{source}: parameter layout {layout.sizes} differs from face model {face_model.model_id}'s "
            f"{face_model.layout.sizes}"
        )


class TorchBackend:
    """PyTorch backend for a ``.safetensors`` checkpoint or a training run folder (its ``last.json``).

    Args:
        weights: checkpoint file or run folder.
        face_model: optional MorphableModel; checked against the checkpoint (id, checksum, layout).
        device: torch device (default CPU).
    """

    def __init__(self, weights: str | os.PathLike[str], face_model: Any = None, *, device: str = "cpu") -> None:
        import torch

        from ..checkpoint import read_meta, resolve_weights
        from ..models.registry import create_model

        self.path = resolve_weights(weights)
        self._torch = torch
        self.device = torch.device(device)
        self.model = create_model(checkpoint=self.path, face_model=face_model).to(self.device).eval()
        meta = read_meta(self.path)
        self.metadata: dict[str, Any] = {
            "kind": "network",
            "backend": "torch",
            "source": str(self.path),
            "model_name": meta.model_name,
            "model_config": meta.model_config,
            "layout": meta.layout.to_dict(),
            "preprocess": meta.preprocess.to_dict(),
            "face_model": meta.face_model,
        }
        self.input_size = int(meta.preprocess.input_size)

    @classmethod
    def untrained(cls, model_name: str, face_model: Any, *, device: str = "cpu", seed: int = 0) -> "TorchBackend":
        """A freshly initialised ``model_name`` (no checkpoint) for ``face_model``.

        Only for testing the runtime and demos of the plumbing: the regression heads start at
        the neutral-face prior, so every face is fitted as the mean face looking at the camera.
        """
        import torch

        from ..models.registry import create_model

        torch.manual_seed(seed)
        self = cls.__new__(cls)
        self.path = Path(f"untrained:{model_name}")
        self._torch = torch
        self.device = torch.device(device)
        self.model = create_model(model_name, face_model=face_model).to(self.device).eval()
        self.metadata = {
            "kind": "network",
            "backend": "torch",
            "source": str(self.path),
            "untrained": True,
            "model_name": model_name,
            "model_config": self.model.config.to_dict(),
            "layout": self.model.layout.to_dict(),
            "preprocess": self.model.preprocess.to_dict(),
            "face_model": face_model.describe(),
        }
        self.input_size = int(self.model.preprocess.input_size)
        return self

    def __call__(self, images: Any) -> np.ndarray:
        arr = _as_images(images, self.input_size, f"{self.path}")
        with self._torch.no_grad():
            out = self.model(self._torch.from_numpy(arr).to(self.device))
        return require_finite_params(out.float().cpu().numpy(), str(self.path))

    def warmup(self) -> None:
        self(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


def ort_session_options(intra_op_threads: int | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` of every MLANet ONNX session (and of anything timed against them).

    Warnings-and-up logging, no spinning of idle intra-op threads, and ``intra_op_threads``
    threads (``None``: onnxruntime's default, one per physical core).
    """
    import onnxruntime as ort

    if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int)
                                         or intra_op_threads < 1):
        raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # No busy-waiting of idle worker threads after each run: in the runtime, ONNX Runtime shares the cores with
    # MediaPipe, the GL renderer (llvmpipe on CPU) and the encoder; spinning threads slowed rendering by ~30 %
    # on 2 cores (measured by `mlanet bench compare`), for ~20 % slower inference in isolation.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


class OnnxRuntimeBackend:
    """onnxruntime backend for an ``.onnx`` network written by ``mlanet export onnx``.

    The metadata is read and checked before any inference session is created.

    Args:
        path: the ``.onnx`` file.
        face_model: optional MorphableModel the file must have been exported for.
        providers: onnxruntime execution providers (default CPU).
        intra_op_threads: onnxruntime intra-op threads (default: onnxruntime's, one per physical
            core); see :func:`ort_session_options`.

    Raises:
        AssetError: (naming the file) no/invalid MLANet metadata, not a network (e.g. a face
            decoder), another face model or layout, graph input size differs from the metadata.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        face_model: Any = None,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        from ..export.onnx_export import KIND_NETWORK, load_onnx_proto, metadata_from_proto
        from ..params import ParamLayout
        from ..preprocess import PreprocessCfg

        self.path = Path(path)
        #: what errors name (the cached export of a checkpoint names the checkpoint)
        self.name = str(self.path)
        proto = load_onnx_proto(self.path)
        meta = metadata_from_proto(proto, str(self.path))
        if meta.get("kind") != KIND_NETWORK:
            raise AssetError(
                f"{self.path}: an MLANet ONNX of kind {meta.get('kind')!r}, not a network (images -> params)"
            )
        try:
            layout = ParamLayout.from_dict(meta["layout"])
            preprocess = PreprocessCfg.from_dict(meta["preprocess"])
        except (KeyError, ValueError, TypeError) as exc:
            raise AssetError(f"{self.path}: MLANet ONNX metadata is incomplete or invalid ({exc})") from None
        if face_model is not None:
            _check_face_model(str(self.path), meta, face_model)
        self.input_size = int(preprocess.input_size)
        self.layout = layout
        self._check_graph(proto)
        del proto

        import onnxruntime as ort

        opts = ort_session_options(intra_op_threads)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise AssetError(f"{self.path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
        self.metadata: dict[str, Any] = {**meta, "backend": "onnxruntime", "source": str(self.path)}

    def _check_graph(self, proto: Any) -> None:
        inputs = [i for i in proto.graph.input if i.name == "images"]
        outputs = [o for o in proto.graph.output if o.name == "params"]
        if not inputs or not outputs:
            raise AssetError(f"{self.path}: the graph needs an input 'images' and an output 'params'")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        s = self.input_size
        if len(dims) != 4 or dims[1] not in (3, None) or dims[2] not in (s, None) or dims[3] not in (s, None):
            raise AssetError(
                f"{self.path}: graph input 'images' has shape {dims}, but its metadata says preprocess.input_size "
                f"{s} (expected (B, 3, {s}, {s}))"
            )
        out_dims = [d.dim_value if d.HasField("dim_value") else None for d in outputs[0].type.tensor_type.shape.dim]
        if len(out_dims) != 2 or out_dims[1] not in (self.layout.total, None):
            raise AssetError(
                f"{self.path}: graph output 'params' has shape {out_dims}, but the layout has P={self.layout.total}"
            )

    def __call__(self, images: Any) -> np.ndarray:
        arr = _as_images(images, self.input_size, f"{self.path}")
        return require_finite_params(self.session.run(["params"], {"images": arr})[0], self.name)

    def warmup(self) -> None:
        self(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))

    def close(self) -> None:
        self.session = None


class TensorRTBackend:
    """TensorRT backend for an MLANet engine (``.engine`` / ``.plan``) written by ``mlanet export tensorrt``.

    The engine file's header is read and checked first — MLANet container, format version,
    size (truncation), engine SHA-256 (tampering), input size vs preprocessing, and the face
    model — so a bad or mismatched engine is refused before TensorRT or CUDA is imported. Then
    :class:`~mlanet.export.tensorrt_engine.TensorRTRunner` imports TensorRT (a clear error with
    install instructions if missing), compares the TensorRT version and the GPU with the header,
    and deserializes the engine.

    Args:
        path: the engine file.
        face_model: optional MorphableModel the engine must have been built for.
        device: CUDA device ordinal.
        cuda_graphs: replay one captured CUDA graph per batch size.

    Raises:
        AssetError: (naming the file) not an MLANet engine, truncated, tampered, another format
            version, face model, layout, TensorRT version or GPU architecture.
        TensorRTUnavailableError: TensorRT or pycuda missing (an MLANetError naming the file).
    """

    def __init__(
        self, path: str | os.PathLike[str], face_model: Any = None, *, device: int = 0, cuda_graphs: bool = False
    ) -> None:
        from ..export.engine_file import read_engine_file
        from ..params import ParamLayout

        self.path = Path(path)
        header, engine_bytes = read_engine_file(self.path)  # validated: network kind, layout, input size
        meta = header["onnx_metadata"]
        if face_model is not None:
            _check_face_model(str(self.path), meta, face_model)
        self.layout = ParamLayout.from_dict(meta["layout"])
        self.input_size = int(meta["preprocess"]["input_size"])
        self.header = header

        from ..export.tensorrt_engine import TensorRTRunner

        self._runner = TensorRTRunner(engine_bytes, header, source=str(self.path), device=device, cuda_graphs=cuda_graphs)
        self.metadata: dict[str, Any] = {
            **meta,
            "backend": "tensorrt",
            "source": str(self.path),
            "engine": {k: header.get(k) for k in ("tensorrt_version", "device", "precision", "profile", "built_at")},
        }

    def __call__(self, images: Any) -> np.ndarray:
        return require_finite_params(self._runner(_as_images(images, self.input_size, f"{self.path}")), str(self.path))

    def warmup(self) -> None:
        self._runner.warmup()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None  # type: ignore[assignment]


#: Artifact suffix -> backend class (on the CPU; see :func:`open_backend` for ``device="cuda"``).
BACKENDS: dict[str, type] = {
    ".onnx": OnnxRuntimeBackend,
    ".safetensors": TorchBackend,
    ".engine": TensorRTBackend,
    ".plan": TensorRTBackend,
}

#: Suffixes that belong to backends this build does not have; suffix -> reason.
UNAVAILABLE: dict[str, str] = {}

#: What ``device=`` accepts (``cuda:N`` picks GPU N).
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N")


def parse_device(device: Any) -> tuple[str, int | None]:
    """``"cpu"`` -> ``("cpu", None)``; ``"cuda"`` -> ``("cuda", None)``; ``"cuda:1"`` or ``1`` -> ``("cuda", 1)``.

    Raises:
        AssetError: anything else (the message lists :data:`DEVICE_CHOICES`).
    """
    if isinstance(device, int) and not isinstance(device, bool) and device >= 0:
        return "cuda", device
    text = str(getattr(device, "type", device) if not isinstance(device, str) else device).strip().lower()
    index = getattr(device, "index", None) if not isinstance(device, str) else None
    if text == "cpu":
        return "cpu", None
    if text == "cuda":
        return "cuda", index
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise AssetError(f"device {device!r} is not one of {', '.join(DEVICE_CHOICES)}")


def _onnx_cuda_providers(path: Path, index: int | None) -> list[Any]:
    """ONNX Runtime's CUDA execution provider (first) for ``device="cuda"``, or a clear error."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise AssetError(
            f"{path}: device cuda needs onnxruntime's CUDAExecutionProvider, which this onnxruntime "
            f"{ort.__version__} does not have (providers: {', '.join(ort.get_available_providers())}); install "
            "onnxruntime-gpu, or run a .safetensors checkpoint on the GPU with PyTorch (TorchCudaBackend), or "
            "use --device cpu"
        )
    return [("CUDAExecutionProvider", {"device_id": index or 0}), "CPUExecutionProvider"]


def open_backend(path: str | os.PathLike[str], face_model: Any = None, *, device: Any = "cpu",
                 cuda_graphs: bool = True) -> InferenceBackend:
    """Open ``path`` with the backend for its suffix (a folder: a training run) on ``device``.

    ``device="cpu"`` (default): :class:`TorchBackend` (FP32), :class:`OnnxRuntimeBackend` (CPU
    provider); an engine file still needs a GPU. ``device="cuda"`` / ``"cuda:N"``: a checkpoint or
    run folder opens as :class:`~mlanet.edge.torch_cuda_backend.TorchCudaBackend` (FP16,
    channels-last, CUDA-graph replay per batch size when ``cuda_graphs``); an ``.onnx`` file on ONNX
    Runtime's CUDA execution provider (refused, not silently run on the CPU, when this onnxruntime
    lacks it or the session does not use it); an engine on GPU ``N`` with :class:`TensorRTBackend`.

    Raises:
        AssetError: unknown suffixes (the message lists the known ones), an unknown device, or
            whatever the backend refuses.
        GpuUnavailableError: ``device="cuda"`` with no CUDA GPU visible to PyTorch.
        TensorRTUnavailableError: an engine file with a valid header, but no TensorRT/pycuda here.
    """
    path = Path(path)
    kind, index = parse_device(device)
    suffix = ".safetensors" if path.is_dir() else path.suffix.lower()
    if suffix in UNAVAILABLE:
        raise AssetError(f"{path}: {UNAVAILABLE[suffix]}")
    if suffix not in BACKENDS:
        raise AssetError(
            f"{path}: no backend for suffix {suffix or '(none)'!r}; known: {', '.join(sorted(BACKENDS))} "
            "or a training run folder"
        )
    cls = BACKENDS[suffix]
    if kind == "cpu":
        return cls(path, face_model=face_model)
    if cls is TorchBackend:
        from .torch_cuda_backend import TorchCudaBackend

        return TorchCudaBackend(path, face_model=face_model, device="cuda" if index is None else index,
                                cuda_graphs=cuda_graphs)
    if cls is OnnxRuntimeBackend:
        from .gpu_crops import require_cuda

        require_cuda(f"{path} on device cuda")
        backend = OnnxRuntimeBackend(path, face_model=face_model, providers=_onnx_cuda_providers(path, index))
        active = backend.session.get_providers()
        if "CUDAExecutionProvider" not in active:  # onnxruntime falls back to the CPU with only a log line
            raise AssetError(f"{path}: onnxruntime did not enable CUDAExecutionProvider (active: {', '.join(active)}); "
                             "check that its CUDA and cuDNN libraries match this onnxruntime-gpu build")
        backend.metadata["device"] = f"cuda:{index or 0}"
        return backend
    if cls is TensorRTBackend:
        return TensorRTBackend(path, face_model=face_model, device=index or 0, cuda_graphs=cuda_graphs)
    raise AssetError(f"{path}: backend {cls.__name__} has no GPU variant; use device cpu")
