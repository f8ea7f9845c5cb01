"""ONNX Runtime: an ``.onnx`` file written by ``mlanet export onnx``, on the CPU or ONNX Runtime's CUDA provider."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.errors import AssetError
from mlanet.model_metadata import ModelMetadata
from mlanet.params import require_finite_params
from mlanet.edge.backends.base import BackendSpec, _as_images, _check_face_model, missing_modules, register_backend


def ort_session_options(intra_op_threads: int | None = None) -> Any:
    """The ``onnxruntime.SessionOptions`` of every MLANet ONNX session (and of anything timed against them).

    Warnings-and-up logging, intra-op threads that spin only while a run is in flight, and ``intra_op_threads``
    threads (``None``: onnxruntime's default, one per physical core).
    """
    import onnxruntime as ort

    if intra_op_threads is not None and (isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int)
                                         or intra_op_threads < 1):
        raise ValueError(f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Worker threads spin while a run is in flight (the hand-offs between the many small layers of a 96 px
    # network cost more than the work when threads sleep) and stop spinning when Run() returns: in the runtime,
    # ONNX Runtime shares the cores with MediaPipe, the GL renderer (llvmpipe on CPU) and the encoder, and
    # threads left spinning after a run slowed rendering by ~30 % on 2 cores. Measured in one
    # `mlanet bench compare --passes 6` pair (2 cores): no spinning at all, network stage 3.4 ms; spinning only
    # inside a run, 2.6 ms; fit fps ratio to MediaPipe 0.58 -> 0.73.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if intra_op_threads is not None:
        opts.intra_op_num_threads = int(intra_op_threads)
    return opts


def ort_session(path: str | os.PathLike[str], *, intra_op_threads: int | None = None,
                providers: list[Any] | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``path`` with :func:`ort_session_options` (CPU provider by default):
    how every ONNX Runtime session in MLANet is made (backends, the teacher timed against them).

    Raises:
        AssetError: (naming the file) onnxruntime cannot load it.
    """
    import onnxruntime as ort

    opts = ort_session_options(intra_op_threads)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise AssetError(f"{path}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None


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
        from mlanet.export.onnx_export import KIND_NETWORK, load_onnx_proto, model_metadata_from_proto

        self.path = Path(path)
        #: what errors name (the cached export of a checkpoint names the checkpoint)
        self.name = str(self.path)
        proto = load_onnx_proto(self.path)
        meta = model_metadata_from_proto(proto, str(self.path))
        if meta.kind != KIND_NETWORK:
            raise AssetError(f"{self.path}: an MLANet ONNX of kind {meta.kind!r}, not a network (images -> params)")
        if face_model is not None:
            _check_face_model(str(self.path), meta, face_model)
        self.input_size = meta.input_size
        self.layout = meta.layout
        self._check_graph(proto)
        del proto
        self.session = ort_session(self.path, intra_op_threads=intra_op_threads, providers=providers)
        self.metadata: ModelMetadata = meta.with_runtime(backend="onnxruntime", device="cpu")

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



def _open_cpu(path: Path, face_model: Any, index: int | None, cuda_graphs: bool, *,
              intra_op_threads: int | None = None) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(path, face_model=face_model, intra_op_threads=intra_op_threads)


def _open_cuda(path: Path, face_model: Any, index: int | None, cuda_graphs: bool, *,
               intra_op_threads: int | None = None) -> OnnxRuntimeBackend:
    """On ONNX Runtime's CUDA execution provider: refused, not silently run on the CPU, when this onnxruntime
    lacks it or the session does not use it."""
    from mlanet.edge.gpu_crops import require_cuda

    require_cuda(f"{path} on device cuda")
    backend = OnnxRuntimeBackend(path, face_model=face_model, providers=_onnx_cuda_providers(path, index),
                                 intra_op_threads=intra_op_threads)
    active = backend.session.get_providers()
    if "CUDAExecutionProvider" not in active:  # onnxruntime falls back to the CPU with only a log line
        raise AssetError(f"{path}: onnxruntime did not enable CUDAExecutionProvider (active: {', '.join(active)}); "
                         "check that its CUDA and cuDNN libraries match this onnxruntime-gpu build")
    backend.metadata = backend.metadata.with_runtime(device=f"cuda:{index or 0}")
    return backend


def onnxruntime_unavailable_reason() -> str | None:
    """``None`` when onnx and onnxruntime are installed, else what is missing."""
    missing = missing_modules("onnx", "onnxruntime")
    return f"{' and '.join(missing)} not installed (pip install -e '.[export]')" if missing else None


def onnxruntime_cuda_unavailable_reason() -> str | None:
    """``None`` when onnxruntime has its CUDA provider and PyTorch sees a GPU, else why not."""
    reason = onnxruntime_unavailable_reason()
    if reason:
        return reason
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    from mlanet.edge.backends.torch_cuda import cuda_unavailable_reason

    return cuda_unavailable_reason()


register_backend(BackendSpec(
    "onnxruntime-cpu", (".onnx",), "cpu",
    _open_cpu,
    "an exported network in ONNX Runtime, CPU provider", probe=onnxruntime_unavailable_reason))
register_backend(BackendSpec("onnxruntime-cuda", (".onnx",), "cuda", _open_cuda,
                             "an exported network in ONNX Runtime, CUDA provider (onnxruntime-gpu)",
                             probe=onnxruntime_cuda_unavailable_reason))
