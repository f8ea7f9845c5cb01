"""PyTorch on the CPU: a ``.safetensors`` checkpoint or a training run folder (FP32)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlanet.params import require_finite_params
from mlanet.edge.backends.base import RUN_FOLDER, BackendSpec, _as_images, register_backend

if TYPE_CHECKING:
    from mlanet.model_metadata import ModelMetadata


class TorchBackend:
    """PyTorch backend for a ``.safetensors`` checkpoint or a training run folder (its ``last.json``).

    Args:
        weights: checkpoint file or run folder.
        face_model: optional MorphableModel; checked against the checkpoint (id, checksum, layout).
        device: torch device (default CPU).
    """

    def __init__(self, weights: str | os.PathLike[str], face_model: Any = None, *, device: str = "cpu") -> None:
        import torch

        from mlanet.checkpoint import read_meta, resolve_weights
        from mlanet.model_metadata import ModelMetadata
        from mlanet.models.registry import create_model

        self.metadata: ModelMetadata
        self.path = resolve_weights(weights)
        self._torch = torch
        self.device = torch.device(device)
        self.model = create_model(checkpoint=self.path, face_model=face_model).to(self.device).eval()
        self.metadata = ModelMetadata.from_checkpoint_meta(read_meta(self.path), str(self.path)).with_runtime(
            backend="torch", device=str(self.device))
        self.input_size = self.metadata.input_size

    @classmethod
    def untrained(cls, model_name: str, face_model: Any, *, device: str = "cpu", seed: int = 0) -> "TorchBackend":
        """A freshly initialised ``model_name`` (no checkpoint) for ``face_model``.

        Only for testing the runtime and demos of the plumbing: the regression heads start at
        the neutral-face prior, so every face is fitted as the mean face looking at the camera.
        """
        import torch

        from mlanet.model_metadata import ModelMetadata
        from mlanet.models.registry import create_model

        torch.manual_seed(seed)
        self = cls.__new__(cls)
        self.path = Path(f"untrained:{model_name}")
        self._torch = torch
        self.device = torch.device(device)
        self.model = create_model(model_name, face_model=face_model).to(self.device).eval()
        self.metadata = ModelMetadata.for_network(self.model, face_model, source=str(self.path)).with_runtime(
            backend="torch", device=str(self.device), untrained=True)
        self.input_size = self.metadata.input_size
        return self

    @classmethod
    def from_model(cls, model: Any, face_model: Any, *, device: str = "cpu", source: str = "") -> "TorchBackend":
        """An in-memory network ``model`` (an MLANet, put in eval mode) as a backend, bound to ``face_model``
        (its layout must match); what a parity check of a just-exported network compares against."""
        import torch

        from mlanet.errors import AssetError
        from mlanet.model_metadata import ModelMetadata

        if model.layout != face_model.layout:
            raise AssetError(f"{source or model.name}: layout {model.layout.sizes} differs from face model "
                             f"{face_model.model_id}'s {face_model.layout.sizes}")
        self = cls.__new__(cls)
        self.path = Path(source or f"in-memory:{model.name}")
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.metadata = ModelMetadata.for_network(model, face_model, source=str(self.path)).with_runtime(
            backend="torch", device=str(self.device))
        self.input_size = self.metadata.input_size
        return self

    def __call__(self, images: Any) -> np.ndarray:
        arr = _as_images(images, self.input_size, f"{self.path}")
        with self._torch.no_grad():
            out = self.model(self._torch.from_numpy(arr).to(self.device))
        return require_finite_params(out.float().cpu().numpy(), str(self.path))

    def run_device(self, images: Any) -> Any:
        """``images (B, 3, S, S)`` float tensor on :attr:`device` -> params ``(B, P)`` float32 tensor on
        :attr:`device`, with no host copy (what the device mode of
        :class:`~mlanet.edge.pipeline.FacePipeline` calls; :meth:`__call__` is this plus the copy to
        NumPy and the finiteness check, which the device mode does on the downloaded results)."""
        torch = self._torch
        s = self.input_size
        if (not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] < 1
                or tuple(images.shape[1:]) != (3, s, s) or not images.is_floating_point()):
            desc = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{self.path} expects an image tensor of shape (B, 3, {s}, {s}) (float RGB in [0, 1]), "
                             f"got {desc}")
        if images.device != self.device:
            raise ValueError(f"{self.path}: images on {images.device}, the model is on {self.device}")
        with torch.no_grad():
            return self.model(images.float()).float()

    def warmup(self) -> None:
        self(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]



register_backend(BackendSpec(
    "torch-cpu", (".safetensors", RUN_FOLDER), "cpu",
    lambda path, face_model, index, cuda_graphs: TorchBackend(path, face_model=face_model),
    "a checkpoint or run folder in PyTorch, FP32, on the CPU"))
