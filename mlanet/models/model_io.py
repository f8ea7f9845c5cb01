"""Checkpoint writing and foreign-weight import for MLANets (the registry, :mod:`mlanet.models.registry`, builds
and restores them).

* :func:`save_model` — a network and its self-description (config, layout, preprocessing, the face model's
  identity, free-form extras) as a ``.safetensors`` checkpoint that
  :func:`~mlanet.models.registry.create_model` restores with nothing else.
* :func:`load_torchvision_resnet50` — copy a torchvision-layout ResNet-50 state dict (``.pth`` read with the
  restricted ``weights_only`` loader, or ``.safetensors``) into an ``mlanet_r50`` backbone. No ImageNet
  weights ship with MLANet; by default it trains from scratch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from mlanet.errors import AssetError
from mlanet.checkpoint import CheckpointMeta, save_weights
from mlanet.params import ParamLayout
from mlanet.models.mlanet import MLANet
from mlanet.models.registry import describe_face_model

log = logging.getLogger(__name__)


def _unwrap(model: Any) -> Any:
    """The MLANet inside DistributedDataParallel / DataParallel (``.module``) or torch.compile (``._orig_mod``)."""
    for _ in range(3):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(model, MLANet) or not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def save_model(
    model: MLANet,
    path: str | os.PathLike[str],
    face_model_desc: Mapping[str, Any] | Any,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and self-description to a ``.safetensors`` checkpoint.

    Args:
        model: the network (a DDP / DataParallel / torch.compile wrapper is unwrapped).
        path: output file; must end in ``.safetensors``.
        face_model_desc: the face model's description (``MorphableModel.describe()``), or the face
            model itself; needs ``model_id``.
        extra: free-form JSON-serialisable data (training config, step, metrics).
    """
    model = _unwrap(model)
    if not isinstance(model, MLANet):
        raise ValueError(f"save_model expects an MLANet, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: MLANet checkpoints are .safetensors files")
    desc = describe_face_model(face_model_desc)
    if "layout" in desc and ParamLayout.from_dict(desc["layout"]) != model.layout:
        face_layout = ParamLayout.from_dict(desc["layout"])
        raise ValueError(f"face model layout {face_layout.sizes} differs from the model's {model.layout.sizes}")
    meta = CheckpointMeta(
        model_name=model.name,
        model_config=model.config.to_dict(),
        layout=model.layout,
        preprocess=model.preprocess,
        face_model=desc,
        extra=dict(extra or {}),
    )
    return save_weights(path, model.state_dict(), meta)


# --------------------------------------------------------------------------- torchvision weights
def _read_state_dict(source: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(source, Mapping):
        state, where = dict(source), "state dict"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise AssetError(f"{path}: no such weights file")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                state = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise AssetError(f"{path}: not a readable safetensors file ({exc})") from None
        elif path.suffix in (".pth", ".pt"):
            try:
                # Restricted unpickler: only tensors and plain containers, never arbitrary objects.
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
                raise AssetError(
                    f"{path}: cannot read a state dict with torch.load(weights_only=True) ({type(exc).__name__}: {exc})"
                ) from None
        else:
            raise AssetError(f"{path}: expected a .pth/.pt (torch.save) or .safetensors state dict")
    # Training scripts often wrap the weights: {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = dict(state[key])
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetError(f"{where}: not a state dict of tensors")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, where


def load_torchvision_resnet50(
    model: MLANet, source: str | os.PathLike[str] | Mapping[str, torch.Tensor], *, strict: bool = True
) -> dict[str, Any]:
    """Copy a torchvision-layout ResNet-50 state dict into ``model.backbone``.

    Names map one to one (``conv1.weight`` -> ``backbone.conv1.weight``, ``layer1.0.conv1.weight``
    -> ``backbone.layer1.0.conv1.weight``, ...); ``fc.*`` is ignored. The coordinate-attention
    modules (``.ca``), fusion and heads keep their initialisation.

    Args:
        model: an MLANet with the ``resnet50`` backbone.
        source: a state dict, or a ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``)
            or ``.safetensors`` file.
        strict: raise when any backbone tensor is missing from the source or has another shape
            (``num_batches_tracked`` may be absent); with ``strict=False`` load what matches.

    Returns:
        ``{"loaded", "missing", "unexpected", "skipped_shape_mismatch", "ignored", "not_in_torchvision"}``:
        lists of names (``skipped_shape_mismatch`` as ``"name: source shape vs model shape"``;
        ``not_in_torchvision`` are the backbone tensors torchvision has no counterpart for, i.e. CA).

    Raises:
        ValueError: the model's backbone is not resnet50.
        AssetError: unreadable source, nothing matched, or (strict) missing / mis-shaped tensors.
    """
    model = _unwrap(model)
    if not isinstance(model, MLANet) or model.config.backbone != "resnet50":
        got = model.config.backbone if isinstance(model, MLANet) else type(model).__name__
        raise ValueError(
            f"torchvision ResNet-50 weights need a model with the resnet50 backbone (e.g. mlanet_r50), got {got}"
        )
    state, where = _read_state_dict(source)
    target = model.backbone.state_dict()
    torchvision_keys = {k for k in target if ".ca." not in k}
    report: dict[str, Any] = {
        "loaded": [],
        "missing": [],
        "unexpected": [],
        "skipped_shape_mismatch": [],
        "ignored": sorted(k for k in state if k.startswith("fc.")),
        "not_in_torchvision": sorted(set(target) - torchvision_keys),
    }
    updates: dict[str, torch.Tensor] = {}
    mismatched: set[str] = set()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if key not in torchvision_keys:
            report["unexpected"].append(key)
        elif tuple(value.shape) != tuple(target[key].shape):
            report["skipped_shape_mismatch"].append(f"{key}: {tuple(value.shape)} vs {tuple(target[key].shape)}")
            mismatched.add(key)
        else:
            updates[key] = value
    report["missing"] = sorted(torchvision_keys - set(updates) - mismatched)
    report["loaded"] = sorted(updates)
    if not updates:
        raise AssetError(
            f"{where}: no tensor matched a ResNet-50 backbone (expected torchvision names such as "
            f"'conv1.weight', 'layer1.0.conv1.weight'; got e.g. {sorted(state)[:3]})"
        )
    if strict:
        hard_missing = [k for k in report["missing"] if not k.endswith("num_batches_tracked")]
        if report["skipped_shape_mismatch"] or hard_missing:
            first = (report["skipped_shape_mismatch"] + hard_missing)[0]
            raise AssetError(
                f"{where}: not a torchvision ResNet-50 state dict: {len(report['skipped_shape_mismatch'])} tensor(s) "
                f"with other shapes and {len(hard_missing)} missing (first: {first}); ResNet-18/34 use basic "
                "blocks and do not fit. Pass strict=False to load only what matches."
            )
    with torch.no_grad():
        for key, value in updates.items():
            target[key].copy_(value.to(dtype=target[key].dtype))
    log.info(
        "loaded %d torchvision ResNet-50 tensors into %s (%d missing, %d unexpected, %d shape mismatches)",
        len(report["loaded"]), model.name, len(report["missing"]), len(report["unexpected"]),
        len(report["skipped_shape_mismatch"]),
    )
    return report
