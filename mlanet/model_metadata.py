"""What every MLANet network artifact says about itself, as one typed, frozen :class:`ModelMetadata`.

Three artifact kinds carry the same facts in three containers:

==============================  ==========================  ===================================================
artifact                        container                   constructor / writer
==============================  ==========================  ===================================================
``.safetensors`` checkpoint     safetensors metadata        :meth:`ModelMetadata.from_checkpoint_meta`
                                ``"mlanet"`` (JSON)         (:class:`~mlanet.checkpoint.CheckpointMeta`)
``.onnx`` export                ``metadata_props``          :meth:`ModelMetadata.from_onnx_props` /
                                ``"mlanet"`` (JSON)         :meth:`ModelMetadata.to_onnx_props`
``.engine`` / ``.plan``         the engine file's JSON      :meth:`ModelMetadata.from_engine_header` (its
(TensorRT)                      header                      ``onnx_metadata`` plus the engine facts)
==============================  ==========================  ===================================================

The typed fields are what the runtime needs (the :class:`~mlanet.params.ParamLayout`, the
:class:`~mlanet.preprocess.PreprocessCfg`, the face model's identity and decoder signature, the
model's name and config, the container's format and version, the file it came from); the rest of
what the artifact holds (versions, opset, commit, training extras, engine facts) stays in ``extra``,
and how a backend runs it (backend name, device, precision, thread plan) in ``runtime``.

``mlanet.edge.backends.read_model_metadata(path)`` reads any of them by suffix (it needs the ONNX and
engine readers of ``mlanet.export``, which the core never imports). This module checks the ONNX and
engine *contents*; the container readers check the bytes around them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlanet.errors import AssetError, IncompatibleFormatError
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg

#: ``format`` of each container (the checkpoint's is :data:`mlanet.checkpoint.FORMAT_NAME`).
CHECKPOINT_FORMAT = "mlanet-checkpoint"
ONNX_FORMAT = "mlanet-onnx"
ONNX_FORMAT_VERSION = 1
ENGINE_FORMAT = "mlanet-trt-engine"
#: ``kind``: a network (images -> params) or an exported face decoder (params -> vertices).
KIND_NETWORK = "network"
KIND_FACE_DECODER = "face_decoder"
KINDS = (KIND_NETWORK, KIND_FACE_DECODER)
#: Keys of ONNX ``metadata_props["mlanet"]`` that are typed fields (the rest goes to ``extra``).
_ONNX_TYPED = ("format", "format_version", "kind", "model_name", "model_config", "layout", "preprocess", "face_model")
#: Engine-header facts kept in ``extra["engine"]``.
ENGINE_FACTS = ("tensorrt_version", "device", "precision", "profile", "built_at")


@dataclass(frozen=True)
class ModelMetadata:
    """The metadata of one network artifact (or of an in-memory network), read from any artifact kind.

    Attributes:
        layout: the flat parameter vector's layout.
        preprocess: crop size, normalisation, ROI scale (``None`` only for a face decoder export).
        face_model: the face model's description (``model_id``, ``decoder`` signature, layout, ...;
            :meth:`~mlanet.morphable.model.MorphableModel.describe`), what the artifact is bound to.
        model_name: the network's registry name (``mlanet_mobile``); ``""`` for a face decoder.
        model_config: the network's resolved config.
        kind: :data:`KIND_NETWORK` or :data:`KIND_FACE_DECODER`.
        format: the container (:data:`CHECKPOINT_FORMAT`, :data:`ONNX_FORMAT`, :data:`ENGINE_FORMAT`;
            ``"in-memory"`` for an untrained network).
        format_version: the container's format version.
        source: the file it was read from (a checkpoint's resolved path for a run folder).
        extra: everything else the artifact carries (versions, opset, commit, ``tensors_sha256``,
            a checkpoint's training extras, an engine's facts under ``"engine"``).
        runtime: how a backend runs it (``backend``, ``device``, ``precision``, ``thread_plan``,
            ``exported_from``, ...); empty for metadata read from a file.
    """

    layout: ParamLayout
    preprocess: PreprocessCfg | None
    face_model: Mapping[str, Any] = field(default_factory=dict)
    model_name: str = ""
    model_config: Mapping[str, Any] = field(default_factory=dict)
    kind: str = KIND_NETWORK
    format: str = "in-memory"
    format_version: int = 1
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.layout, ParamLayout):
            raise TypeError(f"layout must be a ParamLayout, got {type(self.layout).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == KIND_NETWORK and not isinstance(self.preprocess, PreprocessCfg):
            raise TypeError(f"a network's preprocess must be a PreprocessCfg, got {type(self.preprocess).__name__}")

    # ------------------------------------------------------------------ convenience
    @property
    def input_size(self) -> int:
        """S of the network's input (B, 3, S, S)."""
        if self.preprocess is None:
            raise ValueError(f"{self.source or 'metadata'}: a {self.kind} has no input size")
        return int(self.preprocess.input_size)

    @property
    def backend(self) -> str:
        """The backend that runs it (``runtime["backend"]``), ``""`` when read from a file."""
        return str(self.runtime.get("backend", ""))

    @property
    def face_model_id(self) -> str | None:
        return self.face_model.get("model_id")

    @property
    def decoder_signature(self) -> Any:
        """What the face model binding is checked against (:mod:`mlanet.morphable.decoder_identity`)."""
        return self.face_model.get("decoder")

    def with_runtime(self, **entries: Any) -> "ModelMetadata":
        """A copy with ``entries`` added to (or replacing those in) ``runtime``."""
        return dataclasses.replace(self, runtime={**self.runtime, **entries})

    def to_dict(self, *, checkpoint_extra: bool = False) -> dict[str, Any]:
        """JSON-able, for records (``run.json``, benchmark records): the typed fields as plain values,
        ``extra`` entries and ``runtime`` entries at the top level (the flat shape records always had).

        A checkpoint's training extras (train config, metrics: tens of kB) only with ``checkpoint_extra``.
        """
        out: dict[str, Any] = {k: v for k, v in self.extra.items() if checkpoint_extra or k != "checkpoint_extra"}
        out.update(self.runtime)
        out.update({
            "format": self.format, "format_version": self.format_version, "kind": self.kind,
            "model_name": self.model_name, "model_config": dict(self.model_config),
            "layout": self.layout.to_dict(), "face_model": dict(self.face_model), "source": self.source,
        })
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess.to_dict()
        return out

    # ------------------------------------------------------------------ constructors
    @classmethod
    def for_network(cls, model: Any, face_model: Any, *, source: str = "", **kwargs: Any) -> "ModelMetadata":
        """The metadata of an in-memory network ``model`` (``.name``, ``.config``, ``.layout``,
        ``.preprocess``) bound to ``face_model`` (a MorphableModel)."""
        config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
        return cls(layout=model.layout, preprocess=model.preprocess, face_model=dict(face_model.describe()),
                   model_name=str(model.name), model_config=config, source=source, **kwargs)

    @classmethod
    def from_checkpoint_meta(cls, meta: Any, source: str) -> "ModelMetadata":
        """From a :class:`~mlanet.checkpoint.CheckpointMeta` (already validated by its reader)."""
        extra = {"checkpoint_extra": dict(meta.extra)} if meta.extra else {}
        if meta.tensors_sha256 is not None:
            extra["tensors_sha256"] = meta.tensors_sha256
        from mlanet.checkpoint import FORMAT_VERSION

        return cls(layout=meta.layout, preprocess=meta.preprocess, face_model=dict(meta.face_model or {}),
                   model_name=str(meta.model_name), model_config=dict(meta.model_config or {}),
                   format=CHECKPOINT_FORMAT, format_version=FORMAT_VERSION, source=str(source), extra=extra)

    @classmethod
    def from_onnx_props(cls, props: Any, source: str) -> "ModelMetadata":
        """From the ``"mlanet"`` entry of an ONNX file's ``metadata_props``: the JSON text, or the decoded dict.

        Raises:
            AssetError: (naming ``source``) not JSON, not MLANet ONNX metadata, an unknown kind, or a
                layout / preprocessing that is missing or invalid.
            IncompatibleFormatError: another format version.
        """
        import json

        if isinstance(props, (str, bytes)):
            try:
                props = json.loads(props)
            except json.JSONDecodeError as exc:
                raise AssetError(f"{source}: MLANet ONNX metadata is not valid JSON ({exc})") from None
        if not isinstance(props, Mapping) or props.get("format") != ONNX_FORMAT:
            got = props.get("format") if isinstance(props, Mapping) else type(props).__name__
            raise AssetError(f"{source}: not MLANet ONNX metadata (format {got!r}, expected {ONNX_FORMAT!r})")
        if props.get("format_version") != ONNX_FORMAT_VERSION:
            raise IncompatibleFormatError(f"{source}: MLANet ONNX format version {props.get('format_version')!r} "
                                          f"but this MLANet reads {ONNX_FORMAT_VERSION}")
        kind = props.get("kind")
        if kind not in KINDS:
            raise AssetError(f"{source}: unknown MLANet ONNX kind {kind!r}")
        try:
            layout = ParamLayout.from_dict(props["layout"])
            preprocess = PreprocessCfg.from_dict(props["preprocess"]) if kind == KIND_NETWORK else None
            face_model = props.get("face_model") or {}
            config = props.get("model_config") or {}
            if not isinstance(face_model, Mapping) or not isinstance(config, Mapping):
                raise TypeError("face_model and model_config must be JSON objects")
        except (KeyError, ValueError, TypeError) as exc:
            raise AssetError(f"{source}: MLANet ONNX metadata is incomplete or invalid ({exc})") from None
        return cls(layout=layout, preprocess=preprocess, face_model=dict(face_model),
                   model_name=str(props.get("model_name") or ""), model_config=dict(config), kind=kind,
                   format=ONNX_FORMAT, format_version=ONNX_FORMAT_VERSION, source=str(source),
                   extra={k: v for k, v in props.items() if k not in _ONNX_TYPED})

    def to_onnx_props(self) -> dict[str, Any]:
        """The ``"mlanet"`` JSON object ``mlanet export onnx`` writes (:meth:`from_onnx_props` reads it back).

        ``extra`` entries (versions, opset, commit) are written at the top level, as they always were.
        """
        props: dict[str, Any] = {k: v for k, v in self.extra.items() if k != "engine"}
        props.update({"format": ONNX_FORMAT, "format_version": ONNX_FORMAT_VERSION, "kind": self.kind,
                      "layout": self.layout.to_dict(), "face_model": dict(self.face_model)})
        if self.kind == KIND_NETWORK:
            props.update({"model_name": self.model_name, "model_config": dict(self.model_config),
                          "preprocess": self.preprocess.to_dict()})  # type: ignore[union-attr]
        return props

    @classmethod
    def from_engine_header(cls, header: Mapping[str, Any], source: str) -> "ModelMetadata":
        """From an MLANet TensorRT engine header (validated by ``mlanet.export.engine_file.validate_header``):
        its ``onnx_metadata``, with the engine facts (TensorRT version, GPU, precision, profile, build
        time, the engine's size and SHA-256) in ``extra["engine"]``."""
        if not isinstance(header, Mapping) or header.get("format") != ENGINE_FORMAT:
            got = header.get("format") if isinstance(header, Mapping) else type(header).__name__
            raise AssetError(f"{source}: not an MLANet engine header (format {got!r}, expected {ENGINE_FORMAT!r})")
        onnx = cls.from_onnx_props(header.get("onnx_metadata"), source)
        if onnx.kind != KIND_NETWORK:
            raise AssetError(f"{source}: engine built from an MLANet ONNX of kind {onnx.kind!r}, not a network")
        engine = {k: header.get(k) for k in ENGINE_FACTS}
        raw_blob = header.get("engine")
        blob = raw_blob if isinstance(raw_blob, Mapping) else {}
        engine.update({"size": blob.get("size"), "sha256": blob.get("sha256")})
        return dataclasses.replace(onnx, format=ENGINE_FORMAT, format_version=int(header.get("format_version", 0)),
                                   extra={**dict(onnx.extra), "engine": engine})
