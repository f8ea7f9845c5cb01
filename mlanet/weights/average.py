"""Average the weights of several checkpoints of one training run (``mlanet weights average``).

Checkpoints taken along a run at a small learning rate scatter around a minimum with the noise of
small batches; their mean sits nearer its centre (stochastic weight averaging, Izmailov et al. 2018,
applied after the fact). Only checkpoints of the same network, parameter layout, preprocessing and
face model (the decoder it describes, not the recipe its file was built with) are averaged. Floating-point tensors are averaged in float64 and stored in their own
dtype; integer buffers (BatchNorm's ``num_batches_tracked``) are taken from the last checkpoint.
BatchNorm running statistics are averaged like the rest, which is exact where they did not change
(``optim.freeze_batchnorm``) and an approximation otherwise.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import torch

from mlanet.checkpoint import CheckpointMeta, load_weights, save_weights, tensors_sha256
from mlanet.errors import AssetError
from mlanet.morphable.decoder_identity import binding_problems


def _same(a: CheckpointMeta, b: CheckpointMeta) -> str | None:
    """What differs between two checkpoints' descriptions (None when they may be averaged)."""
    if a.model_name != b.model_name or a.model_config != b.model_config:
        return "network"
    if a.layout != b.layout:
        return "parameter layout"
    if a.preprocess != b.preprocess:
        return "preprocessing"
    if binding_problems(a.face_model or {}, b.face_model or {}):  # the decoder, not how its file was built
        return "face model"
    return None


def average_checkpoints(paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write the mean of the checkpoints ``paths`` (at least two) to ``out``; returns ``out``.

    The metadata is the last checkpoint's, with ``extra["averaged_from"]`` listing each input
    (file, step, tensor checksum). Raises :class:`~mlanet.errors.AssetError` naming the file that
    does not match the first one (network, layout, preprocessing, face model or tensor names/shapes).
    """
    if len(paths) < 2:
        raise AssetError("weights average: give at least two checkpoints")
    loaded = [(Path(p), *load_weights(p)) for p in paths]
    first_path, first_sd, first_meta = loaded[0]
    for path, sd, meta in loaded[1:]:
        what = _same(first_meta, meta)
        if what is not None:
            raise AssetError(f"{path}: its {what} differs from {first_path}'s; only checkpoints of one run average")
        if sd.keys() != first_sd.keys() or any(sd[k].shape != first_sd[k].shape for k in sd):
            raise AssetError(f"{path}: its tensors differ from {first_path}'s (names or shapes)")
    last_sd, last_meta = loaded[-1][1], loaded[-1][2]
    averaged: dict[str, torch.Tensor] = {}
    for name, last in last_sd.items():
        if last.is_floating_point():
            total = torch.zeros(last.shape, dtype=torch.float64)
            for _, sd, _ in loaded:
                total += sd[name].double()
            averaged[name] = (total / len(loaded)).to(last.dtype)
        else:
            averaged[name] = last.clone()
    sources = [{"file": path.name, "step": meta.extra.get("step"), "tensors_sha256": meta.tensors_sha256
                or tensors_sha256(sd)} for path, sd, meta in loaded]
    meta = replace(last_meta, extra={**last_meta.extra, "averaged_from": sources})
    return save_weights(out, averaged, meta)
