"""Inference backends: one module per runtime, each registered by artifact suffix and device.

Every backend maps preprocessed crops ``images (B, 3, S, S)`` float32 RGB in [0, 1] (numpy or torch) to
flat parameters ``(B, P)`` as a numpy float32 array, and exposes the artifact's ``metadata``, one frozen
:class:`~mlanet.model_metadata.ModelMetadata` whatever the artifact (layout, preprocessing, face model
identity, model name, format; :func:`read_model_metadata` reads it from a file without opening a runtime),
so nothing downstream hard-codes a crop size or a slice of the parameter vector
(:class:`~.base.InferenceBackend`). Each registered backend can say why it cannot run on this machine
(:meth:`BackendSpec.unavailable_reason`).

=====================  ==========================  ======  ==============================================
backend (module)       artifacts                   device  what runs
=====================  ==========================  ======  ==============================================
``torch_cpu``          ``.safetensors``, run dir   cpu     :class:`TorchBackend`: PyTorch FP32
``torch_cuda``         ``.safetensors``, run dir   cuda    :class:`~.torch_cuda.TorchCudaBackend`: FP16,
                                                           channels-last, CUDA-graph replay per batch size
``onnxruntime``        ``.onnx``                   cpu     :class:`OnnxRuntimeBackend`, CPU provider
``onnxruntime``        ``.onnx``                   cuda    the same on the CUDA provider (onnxruntime-gpu;
                                                           refused, never silently on the CPU, without it)
``tensorrt``           ``.engine``, ``.plan``      either  :class:`TensorRTBackend` on GPU N
=====================  ==========================  ======  ==============================================

:func:`open_backend` picks the registered opener by suffix and device (:func:`register_backend`; a new
backend is one module here that registers itself, plus its import below). Heavy runtimes (``onnxruntime``,
``onnx``, ``tensorrt``, ``pycuda``, CUDA PyTorch paths) are imported inside the functions that need them,
so importing this package stays light.
"""

from __future__ import annotations

from mlanet.edge.backends.base import (DEVICE_CHOICES, RUN_FOLDER, BackendSpec, InferenceBackend, artifact_suffix, backend_for,
                   backend_named, open_backend, parse_device, register_backend, registered_backends)
from mlanet.edge.backends.metadata import ModelMetadata, read_model_metadata
from mlanet.edge.backends.onnxruntime import OnnxRuntimeBackend, ort_session, ort_session_options
from mlanet.edge.backends.tensorrt import TensorRTBackend
from mlanet.edge.backends.torch_cpu import TorchBackend
from mlanet.edge.backends.torch_cuda import TorchCudaBackend

__all__ = [
    "BackendSpec", "DEVICE_CHOICES", "InferenceBackend", "ModelMetadata", "OnnxRuntimeBackend", "RUN_FOLDER",
    "TensorRTBackend", "TorchBackend", "TorchCudaBackend", "artifact_suffix", "backend_for", "backend_named",
    "open_backend", "ort_session", "ort_session_options", "parse_device", "read_model_metadata", "register_backend",
    "registered_backends",
]
