"""ONNX export of MLANet networks and face decoders, their metadata, and a parity report.

* :func:`export_onnx` — a network ``images (B, 3, S, S) RGB [0, 1] -> params (B, P)`` with a
  dynamic batch axis (legacy TorchScript exporter).
* :func:`export_face_decoder_onnx` — the face model as a graph
  ``params (B, P) -> vertices (B, V, 3) metres (camera frame), landmarks (B, 68, 3)``.
* :func:`read_onnx_metadata` — the ``"mlanet"`` JSON entry of ``metadata_props`` that every
  exported file carries (layout, preprocessing, face model identity, versions, commit).
* :func:`parity_report` — torch vs onnxruntime on the same random images, measured in vertex
  space in millimetres.

``onnx`` and ``onnxruntime`` are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mlanet.errors import AssetError
from mlanet.fileutil import mkstemp_beside
from mlanet.model_metadata import (KIND_FACE_DECODER, KIND_NETWORK, ONNX_FORMAT, ONNX_FORMAT_VERSION,  # noqa: F401
                              ModelMetadata)

log = logging.getLogger(__name__)

# the metadata schema is the core's (one ModelMetadata for every artifact kind)
FORMAT_NAME = ONNX_FORMAT
FORMAT_VERSION = ONNX_FORMAT_VERSION
META_KEY = "mlanet"
MM_PER_M = 1000.0


# --------------------------------------------------------------------------- helpers
def _git_commit() -> str | None:
    """``git rev-parse HEAD`` of the repository holding this file, or ``None``."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def _versions(opset: int) -> dict[str, Any]:
    from mlanet import __version__

    return {
        "mlanet_version": __version__,
        "torch_version": torch.__version__,
        "opset": int(opset),
        "commit": _git_commit(),
    }


def drop_trailing_empty_inputs(graph: Any) -> int:
    """Remove trailing empty (omitted) optional inputs of every node of an ONNX ``graph``; returns how many.

    ``Pad(x, pads, "")`` means the same as ``Pad(x, pads)``, but onnxruntime (1.32) fuses a zero
    ``Pad`` into the following ``Conv``'s ``pads`` only in the second spelling; the legacy
    exporter writes the first for ``F.pad`` (EfficientNet-Lite's TensorFlow ``SAME`` padding:
    five unfused Pads cost ~20 % of mlanet_mobile_lite's time on 2 cores).
    """
    removed = 0
    for node in graph.node:
        while len(node.input) and node.input[-1] == "":
            del node.input[-1]
            removed += 1
    return removed


def _export_with_metadata(
    module: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    metadata: dict[str, Any],
    opset: int,
) -> Path:
    """Trace ``module`` to ONNX, attach ``metadata`` as ``metadata_props["mlanet"]``, check, write atomically."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = mkstemp_beside(path, suffix=".raw.tmp")
    os.close(fd)
    fd, tmp = mkstemp_beside(path)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks turned into constants
            torch.onnx.export(
                module,
                (example,),
                raw,
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=int(opset),
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(raw)
        drop_trailing_empty_inputs(proto.graph)
        del proto.metadata_props[:]
        entry = proto.metadata_props.add()
        entry.key = META_KEY
        entry.value = json.dumps(metadata, sort_keys=True)
        proto.producer_name = "mlanet"
        onnx.checker.check_model(proto, full_check=False)
        onnx.save(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        Path(raw).unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- network
def export_onnx(model: Any, face_model: Any, path: str | os.PathLike[str], *, opset: int = 17) -> Path:
    """Export an MLANet to ONNX with self-describing metadata.

    Args:
        model: an MLANet (``.layout``, ``.preprocess``, ``.config``, ``.name``); exported in eval
            mode on CPU in float32 (its training mode is restored afterwards).
        face_model: the :class:`~mlanet.morphable.model.MorphableModel` the network was trained for.
        path: output ``.onnx`` file (written via a temporary file and a rename).
        opset: ONNX opset.

    Returns:
        ``path``. Input ``"images"`` (B, 3, S, S) float32, output ``"params"`` (B, P); B is dynamic.

    Raises:
        ValueError: the face model's layout differs from the network's.
    """
    if face_model.layout != model.layout:
        raise ValueError(
            f"face model {face_model.model_id} has layout {face_model.layout.sizes}, "
            f"the network {model.layout.sizes}"
        )
    s = int(model.preprocess.input_size)
    metadata = ModelMetadata.for_network(model, face_model, extra=_versions(opset)).to_onnx_props()
    was_training = model.training
    model.eval()
    try:
        example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
        return _export_with_metadata(
            model,
            example,
            path,
            input_names=["images"],
            output_names=["params"],
            dynamic_axes={"images": {0: "batch"}, "params": {0: "batch"}},
            metadata=metadata,
            opset=opset,
        )
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- face decoder
class DecoderGraph(nn.Module):
    """The graph :func:`export_face_decoder_onnx` exports: ``params (B, P) -> (vertices (B, V, 3) metres camera
    frame, landmarks (B, 68, 3))``. (The runtime's decoder of frame-camera parameters is
    :class:`mlanet.edge.reconstruct.FaceDecoder`.)"""

    def __init__(self, face_model: Any) -> None:
        super().__init__()
        self.face_model = face_model

    def forward(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        vertices = self.face_model(params)
        return vertices, self.face_model.landmarks(vertices)


def export_face_decoder_onnx(face_model: Any, path: str | os.PathLike[str], *, opset: int = 17) -> Path:
    """Export ``face_model`` as an ONNX decoder (input ``"params"``, outputs ``"vertices"``, ``"landmarks"``).

    Metadata kind is ``"face_decoder"`` with the face model's id, checksum and layout.
    """
    layout = face_model.layout
    metadata = ModelMetadata(layout=layout, preprocess=None, face_model=dict(face_model.describe()),
                             kind=KIND_FACE_DECODER, extra=_versions(opset)).to_onnx_props()
    decoder = DecoderGraph(face_model).eval()
    example = torch.zeros(2, layout.total)
    return _export_with_metadata(
        decoder,
        example,
        path,
        input_names=["params"],
        output_names=["vertices", "landmarks"],
        dynamic_axes={"params": {0: "batch"}, "vertices": {0: "batch"}, "landmarks": {0: "batch"}},
        metadata=metadata,
        opset=opset,
    )


# --------------------------------------------------------------------------- metadata
def load_onnx_proto(path: str | os.PathLike[str]) -> Any:
    """The ``onnx.ModelProto`` of ``path``; :class:`AssetError` naming the file if it is not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise AssetError(f"{path}: not an ONNX file ({type(exc).__name__}: {exc})") from None
    if not proto.graph.node and not proto.graph.input:
        raise AssetError(f"{path}: not an ONNX file (no graph)")
    return proto


def metadata_from_proto(proto: Any, source: str) -> dict[str, Any]:
    """The validated ``"mlanet"`` metadata dict of an already loaded ``onnx.ModelProto`` (as written; the typed
    view is :func:`model_metadata_from_proto`)."""
    import json

    raw = _props_entry(proto, source)
    model_metadata_from_proto(proto, source)  # validates: format, version, kind, layout, preprocessing
    return json.loads(raw)


def _props_entry(proto: Any, source: str) -> str:
    entries = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in entries:
        raise AssetError(
            f"{source}: ONNX file without MLANet metadata (layout, preprocessing, face model); "
            "export it with `mlanet export onnx`"
        )
    return entries[META_KEY]


def model_metadata_from_proto(proto: Any, source: str) -> ModelMetadata:
    """The :class:`~mlanet.model_metadata.ModelMetadata` of an already loaded ``onnx.ModelProto``.

    Raises:
        AssetError: (naming ``source``) no MLANet metadata, not JSON, another format, an unknown kind, a
            missing or invalid layout / preprocessing.
        IncompatibleFormatError: another format version.
    """
    return ModelMetadata.from_onnx_props(_props_entry(proto, source), source)


def read_onnx_model_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """The :class:`~mlanet.model_metadata.ModelMetadata` of an exported ONNX file (see :func:`read_onnx_metadata`)."""
    return model_metadata_from_proto(load_onnx_proto(path), str(path))


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``"mlanet"`` metadata of an exported ONNX file.

    Raises:
        AssetError: (naming the file) not an ONNX file, no MLANet metadata, another format.
        IncompatibleFormatError: another format version (a subclass of AssetError).
    """
    return metadata_from_proto(load_onnx_proto(path), str(path))


# --------------------------------------------------------------------------- parity
def _stats_mm(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean and max Euclidean distance (mm) between point sets a, b (B, N, 3) in metres."""
    d = torch.linalg.vector_norm(a.double() - b.double(), dim=-1) * MM_PER_M
    return {"mean": float(d.mean()), "max": float(d.max())}


def open_reference(reference: Any, face_model: Any) -> Any:
    """The backend a parity check compares against: ``reference`` opened through the backend registry
    (:func:`mlanet.edge.backends.open_backend`, on the CPU) when it is an artifact path, an in-memory network
    wrapped as :class:`~mlanet.edge.backends.TorchBackend` (:meth:`~mlanet.edge.backends.TorchBackend.from_model`),
    or an already open backend as it is."""
    from mlanet.edge.backends import TorchBackend, open_backend

    if isinstance(reference, (str, os.PathLike)):
        return open_backend(reference, face_model, device="cpu")
    if isinstance(reference, nn.Module):
        return TorchBackend.from_model(reference, face_model)
    return reference


def compare_backends(reference: Any, candidate: Any, face_model: Any, *, n: int, seed: int,
                     max_batch: int | None = None) -> dict[str, Any]:
    """``reference`` vs ``candidate`` (two open backends) on the same ``n`` random images (``torch.Generator``
    seeded with ``seed``) at batch sizes 1 and ``n`` (``n`` clipped to ``max_batch``); both flat outputs decoded
    with the torch ``face_model`` and compared in vertex space (mm)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    n = min(int(n), int(max_batch)) if max_batch else int(n)
    s = reference.metadata.input_size
    if candidate.metadata.input_size != s:
        raise AssetError(f"{candidate.metadata.source}: input size {candidate.metadata.input_size}, but "
                         f"{reference.metadata.source} has {s}")
    images = torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed)).numpy()
    batches = sorted({1, n})
    ref = torch.cat([torch.from_numpy(reference(images[:b])).float() for b in batches])
    got = torch.cat([torch.from_numpy(candidate(images[:b])).float() for b in batches])
    with torch.no_grad():
        v_ref, v_got = face_model(ref), face_model(got)
        l_ref, l_got = face_model.landmarks(v_ref), face_model.landmarks(v_got)
    return {
        "n": n,
        "seed": seed,
        "batch_sizes": batches,
        "vertex_mm": _stats_mm(v_ref, v_got),
        "landmark_mm": _stats_mm(l_ref, l_got),
        "param_max_abs": float((ref - got).abs().max()),
    }


def parity_report(reference: Any, face_model: Any, onnx_path: str | os.PathLike[str], *, n: int = 8,
                  seed: int = 0) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime (CPU) on ``n`` random images, in vertex space.

    Both sides are opened through the backend registry (:func:`mlanet.edge.backends.open_backend`):
    ``reference`` is the checkpoint (``.safetensors`` or run folder; an in-memory network or an open
    backend also works, see :func:`open_reference`), ``onnx_path`` the export, checked against
    ``face_model``. The same images go through both, at batch sizes 1 and ``n``; both flat outputs are
    decoded with the torch face model.

    Returns:
        ``{"vertex_mm": {"mean", "max"}, "landmark_mm": {"mean", "max"}, "param_max_abs",
        "batch_sizes", "n", "seed", "provider", "onnx", "model_name", "face_model_id"}``.

    Raises:
        NonFiniteOutputError: either side produced NaN or infinite parameters.
    """
    from mlanet.edge.backends import open_backend

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ref = open_reference(reference, face_model)
    ort = open_backend(onnx_path, face_model, device="cpu")
    try:
        report = compare_backends(ref, ort, face_model, n=n, seed=seed)
        provider = getattr(ort, "session").get_providers()[0]  # noqa: B009 - the ONNX Runtime backend's session
    finally:
        ort.close()
    return {
        "onnx": str(onnx_path),
        "model_name": ref.metadata.model_name or None,
        "face_model_id": face_model.model_id,
        "provider": provider,
        **report,
    }
