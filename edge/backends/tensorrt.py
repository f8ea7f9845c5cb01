"""TensorRT: an ``.engine`` / ``.plan`` file written by ``mlanet export tensorrt`` (always on a GPU)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.params import require_finite_params
from mlanet.edge.backends.base import BackendSpec, _as_images, _check_face_model, register_backend


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
        from mlanet.export.engine_file import read_engine_file
        from mlanet.model_metadata import ModelMetadata

        self.path = Path(path)
        header, engine_bytes = read_engine_file(self.path)  # validated: network kind, layout, input size
        meta = ModelMetadata.from_engine_header(header, str(self.path))
        if face_model is not None:
            _check_face_model(str(self.path), meta, face_model)
        self.layout = meta.layout
        self.input_size = meta.input_size
        self.header = header

        from mlanet.export.tensorrt_engine import TensorRTRunner

        self._runner = TensorRTRunner(engine_bytes, header, source=str(self.path), device=device, cuda_graphs=cuda_graphs)
        self.metadata = meta.with_runtime(backend="tensorrt", device=f"cuda:{device}")

    def __call__(self, images: Any) -> np.ndarray:
        return require_finite_params(self._runner(_as_images(images, self.input_size, f"{self.path}")), str(self.path))

    def warmup(self) -> None:
        self._runner.warmup()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None  # type: ignore[assignment]



def _open(path: Path, face_model: Any, index: int | None, cuda_graphs: bool) -> TensorRTBackend:
    return TensorRTBackend(path, face_model=face_model, device=index or 0, cuda_graphs=cuda_graphs)


def tensorrt_unavailable_reason() -> str | None:
    """``None`` when TensorRT, pycuda and a CUDA GPU are all here, else what is missing."""
    import importlib.util

    try:
        import tensorrt
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken install (missing libnvinfer)
        return f"TensorRT is not importable ({type(exc).__name__}: {exc})"
    version = getattr(tensorrt, "__version__", "?")
    if importlib.util.find_spec("pycuda") is None:
        return f"TensorRT {version} imports, but pycuda (which runs engines) is not installed (pip install pycuda)"
    import torch

    if not torch.cuda.is_available():
        return f"TensorRT {version} imports, but no CUDA GPU is visible (torch {torch.__version__})"
    return None


# an engine runs on a GPU whatever --device says (device cpu opens it on GPU 0, as before the registry)
for _device in ("cuda", "cpu"):
    register_backend(BackendSpec("tensorrt", (".engine", ".plan"), _device, _open,
                                 "a TensorRT engine on GPU N (needs TensorRT and pycuda)",
                                 probe=tensorrt_unavailable_reason))
