"""The backend protocol and the registry every model opener goes through.

A backend maps preprocessed crops ``images (B, 3, S, S)`` float32 RGB in [0, 1] (numpy or torch) to flat
parameters ``(B, P)`` as a numpy float32 array, and exposes the artifact's ``metadata`` (layout,
preprocessing, face model identity) so nothing downstream hard-codes a crop size or a slice of the
parameter vector (:class:`InferenceBackend`).

Each backend module registers how it opens artifacts (:func:`register_backend`: a name, the artifact
suffixes, the device kind ``"cpu"`` or ``"cuda"`` and an opener); :func:`open_backend` looks the artifact
up by suffix and device. Adding a backend is one new module in this package that calls
:func:`register_backend`, plus its import in ``__init__``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from mlanet.errors import AssetError
from mlanet.model_metadata import ModelMetadata

#: The suffix of a training run folder (a folder is opened like its newest or best checkpoint).
RUN_FOLDER = "<run folder>"
#: Device kinds a backend registers for.
DEVICE_KINDS = ("cpu", "cuda")
#: What ``device=`` accepts (``cuda:N`` picks GPU N).
DEVICE_CHOICES = ("cpu", "cuda", "cuda:N")


@runtime_checkable
class InferenceBackend(Protocol):
    """``__call__(images (B, 3, S, S) float32) -> (B, P) numpy``; ``metadata``; ``warmup()``; ``close()``.

    ``metadata`` is the artifact's :class:`~mlanet.model_metadata.ModelMetadata` (layout, preprocessing,
    face model, ...), with ``runtime["backend"]`` naming the backend and any other facts of how it runs.
    """

    metadata: ModelMetadata

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


def _check_face_model(source: str, meta: ModelMetadata, face_model: Any) -> None:
    """Refuse an artifact made for another face model than ``face_model`` (decoder signature, layout)."""
    from mlanet.morphable.decoder_identity import check_binding

    check_binding(source, meta.face_model, face_model.describe())
    layout = meta.layout
    if layout != face_model.layout:
        raise AssetError(
            f"{source}: parameter layout {layout.sizes} differs from face model {face_model.model_id}'s "
            f"{face_model.layout.sizes}"
        )


@dataclass(frozen=True)
class BackendSpec:
    """One registered way to open artifacts.

    Attributes:
        name: the backend's name in records and messages (``"onnxruntime-cpu"``).
        suffixes: artifact suffixes it opens (lower case, with the dot; :data:`RUN_FOLDER` for a run folder).
        device: ``"cpu"`` or ``"cuda"``.
        opener: ``(path, face_model, index, cuda_graphs, **options) -> backend`` (``index``: the GPU, None =
            default; ``options``: the backend's own keyword arguments, e.g. ``intra_op_threads`` for ONNX
            Runtime; an opener refuses options it does not know with a TypeError).
        description: one line for help and docs.
        probe: ``() -> None`` when the backend can run on this machine, else why not (one line, with what to
            install); cheap, never opens a model. ``None``: always available.
    """

    name: str
    suffixes: tuple[str, ...]
    device: str
    opener: Callable[..., Any]
    description: str = ""
    probe: Callable[[], str | None] | None = None

    def unavailable_reason(self) -> str | None:
        """``None`` when this backend can run here, else why not (what its :attr:`probe` says)."""
        return None if self.probe is None else self.probe()

    def open(self, path: str | os.PathLike[str], face_model: Any = None, *, index: int | None = None,
             cuda_graphs: bool = True, **options: Any) -> Any:
        """Open ``path`` with this backend (what :func:`open_backend` does once it has picked the spec)."""
        try:
            return self.opener(Path(path), face_model, index, cuda_graphs, **options)
        except TypeError as exc:
            if options and "unexpected keyword argument" in str(exc):
                raise AssetError(f"{path}: backend {self.name} does not take option(s) "
                                 f"{', '.join(sorted(options))} ({exc})") from None
            raise


_REGISTRY: dict[tuple[str, str], BackendSpec] = {}


def register_backend(spec: BackendSpec) -> BackendSpec:
    """Register ``spec`` for each of its suffixes on its device kind; a second claim of a pair is an error."""
    if spec.device not in DEVICE_KINDS:
        raise ValueError(f"backend {spec.name}: device must be one of {DEVICE_KINDS}, got {spec.device!r}")
    for suffix in spec.suffixes:
        key = (suffix, spec.device)
        if key in _REGISTRY and _REGISTRY[key] is not spec:
            raise ValueError(f"backend {spec.name}: {suffix} on {spec.device} is already {_REGISTRY[key].name}'s")
    for suffix in spec.suffixes:
        _REGISTRY[(suffix, spec.device)] = spec
    return spec


def registered_backends() -> list[BackendSpec]:
    """Every registered spec, once each, in registration order."""
    seen: dict[int, BackendSpec] = {}
    for spec in _REGISTRY.values():
        seen.setdefault(id(spec), spec)
    return list(seen.values())


def backend_named(name: str) -> BackendSpec:
    """The registered spec called ``name`` (``"onnxruntime-cpu"``); AssetError listing the names otherwise."""
    for spec in registered_backends():
        if spec.name == name:
            return spec
    raise AssetError(f"unknown backend {name!r}; known backends: {', '.join(s.name for s in registered_backends())}")


def missing_modules(*names: str) -> list[str]:
    """Which of the modules ``names`` are not installed (without importing them)."""
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def backend_for(suffix: str, device: str) -> BackendSpec | None:
    """The spec that opens ``suffix`` on device kind ``device``, or None."""
    return _REGISTRY.get((suffix, device))


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


def artifact_suffix(path: Path) -> str:
    """The registry key of an artifact: its lower-case suffix, or :data:`RUN_FOLDER` for a folder."""
    return RUN_FOLDER if path.is_dir() else path.suffix.lower()


def open_backend(path: str | os.PathLike[str], face_model: Any = None, *, device: Any = "cpu",
                 cuda_graphs: bool = True, **options: Any) -> InferenceBackend:
    """Open ``path`` with the backend registered for its suffix (a folder: a training run) on ``device``.

    ``device="cpu"`` (default) or ``"cuda"`` / ``"cuda:N"``; ``cuda_graphs``: GPU backends replay CUDA graphs
    per batch size; ``options``: keyword arguments of that backend (``intra_op_threads`` for ONNX Runtime).
    What each backend does is in its module (``torch_cpu``, ``onnxruntime``, ``tensorrt``, ``torch_cuda``).

    Raises:
        AssetError: unknown suffixes (the message lists the known ones), an unknown device, a suffix with no
            backend on that device, or whatever the backend refuses.
        GpuUnavailableError: ``device="cuda"`` with no CUDA GPU visible to PyTorch.
        TensorRTUnavailableError: an engine file with a valid header, but no TensorRT/pycuda here.
    """
    path = Path(path)
    kind, index = parse_device(device)
    suffix = artifact_suffix(path)
    spec = backend_for(suffix, kind)
    if spec is None:
        known = sorted({s for s, _ in _REGISTRY if s != RUN_FOLDER})
        if not any(s == suffix for s, _ in _REGISTRY):
            raise AssetError(f"{path}: no backend for suffix {suffix or '(none)'!r}; known: {', '.join(known)} "
                             "or a training run folder")
        other = sorted(d for s, d in _REGISTRY if s == suffix)
        raise AssetError(f"{path}: no {kind} backend for {suffix} files (they run on: {', '.join(other)}); "
                         f"use device {other[0]}")
    return spec.open(path, face_model, index=index, cuda_graphs=cuda_graphs, **options)
