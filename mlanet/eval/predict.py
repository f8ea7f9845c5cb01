"""Turn a parameter-regression network into the 68-landmark predictor the benchmarks call.

``images (B, 3, S, S) [0, 1] -> flat params (B, P) -> FaceParams -> vertices (B, V, 3) m
-> 68 landmarks (B, 68, 3) -> projected by the crop camera -> (B, 68, 2) crop pixels``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..morphable.model import MorphableModel
from ..params import FaceParams, ParamLayout
from ..preprocess import PreprocessCfg


def make_landmark_predictor(
    model: nn.Module,
    face_model: MorphableModel,
    preprocess: PreprocessCfg | None = None,
    layout: ParamLayout | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``predict_fn(images (B, 3, S, S) float [0, 1]) -> (B, 68, 2)`` crop-pixel landmarks.

    Args:
        model: maps images (B, 3, S, S) to flat parameters (B, P); put in eval mode.
        face_model: the face model the parameters belong to (moved to the model's device).
        preprocess: the crop camera and input size; default ``model.preprocess``.
        layout: the parameter layout; default ``model.layout``.

    Raises:
        ValueError: the layout does not match the face model, or the model has no
            ``preprocess``/``layout`` and none was given.
    """
    preprocess = preprocess if preprocess is not None else getattr(model, "preprocess", None)
    layout = layout if layout is not None else getattr(model, "layout", None)
    if preprocess is None or layout is None:
        raise ValueError("pass preprocess= and layout= (the model has no .preprocess / .layout attributes)")
    if layout != face_model.layout:
        raise ValueError(
            f"the model's parameter layout {layout.sizes} does not match face model {face_model.model_id} "
            f"({face_model.layout.sizes}); load the face model the checkpoint was trained with"
        )
    model.eval()
    try:
        ref = next(model.parameters())
        device, dtype = ref.device, ref.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    face_model = face_model.to(device)
    size = preprocess.input_size

    def predict(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
        with torch.no_grad():
            flat = model(images.to(device=device, dtype=dtype))
            params = FaceParams.from_flat(flat, layout)
            landmarks = face_model.landmarks(face_model(params))
            camera = preprocess.camera(landmarks.shape[0], dtype=landmarks.dtype, device=landmarks.device)
            return camera.project(landmarks).cpu()

    return predict
