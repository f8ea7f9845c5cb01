"""Read the :class:`~mlanet.model_metadata.ModelMetadata` of any network artifact, by suffix.

``.safetensors`` checkpoints and training run folders (:mod:`mlanet.checkpoint`), ``.onnx`` exports
(:mod:`mlanet.export.onnx_export`), ``.engine`` / ``.plan`` TensorRT engines (:mod:`mlanet.export.engine_file`):
each reader checks its container and refuses, naming the file, an artifact without MLANet metadata or
with garbled or incomplete metadata. Nothing here imports onnxruntime, TensorRT or CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlanet.errors import AssetError
from mlanet.model_metadata import ModelMetadata

__all__ = ["ModelMetadata", "read_model_metadata"]


def read_model_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """The metadata of the network artifact ``path`` (a folder: a training run, read as its newest checkpoint).

    Raises:
        AssetError: (naming the file) an unknown suffix, a missing file, no MLANet metadata, metadata that is
            not JSON or lacks the layout / preprocessing, another kind than a network.
        IncompatibleFormatError: another format version (a subclass of AssetError).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir() or suffix == ".safetensors" or path.name in ("best.json", "last.json"):
        from mlanet.checkpoint import read_meta, resolve_weights

        resolved = resolve_weights(path)
        return ModelMetadata.from_checkpoint_meta(read_meta(resolved), str(resolved))
    if suffix == ".onnx":
        from mlanet.export.onnx_export import read_onnx_model_metadata

        return read_onnx_model_metadata(path)
    if suffix in (".engine", ".plan"):
        from mlanet.export.engine_file import read_engine_header

        return ModelMetadata.from_engine_header(read_engine_header(path), str(path))
    raise AssetError(f"{path}: no MLANet model metadata reader for suffix {suffix or '(none)'!r}; known: "
                     ".safetensors (or a training run folder), .onnx, .engine, .plan")
