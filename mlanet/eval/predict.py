"""The prediction path every 2D benchmark shares.

* :func:`make_landmark_predictor` turns a parameter-regression network into the predictor
  the benchmarks call: ``images (B, 3, S, S) [0, 1] -> flat params (B, P) -> FaceParams ->
  vertices (B, V, 3) m -> the points of one landmark definition of the face model (B, L, 3)
  (:meth:`~mlanet.morphable.model.MorphableModel.landmark_points`) -> projected by the crop
  camera -> (B, L, 2) crop pixels``; :func:`resolve_eval_definition` picks the definition.
* :func:`predict_in_boxes` runs any such predictor on crops of image files: decode, crop
  (:func:`mlanet.data.landmarks.crop_uint8`, bilinear, zero padding, never clipped), batch,
  predict, and map the crop-pixel landmarks back to image pixels
  (:meth:`mlanet.preprocess.CropBox.crop_to_image`). AFLW2000-3D and the in-the-wild
  68-point benchmark both go through it.
* :func:`load_network` opens the network to score (a checkpoint, or an untrained registered model
  as a baseline), as ``mlanet eval`` and ``mlanet bench accuracy`` both do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from mlanet.geometry.rotations import euler_to_matrix
from mlanet.morphable.mirror import expression_mirror_permutation, mirror_average, require_mirrorable
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams, ParamLayout, require_finite_params
from mlanet.preprocess import CropBox, PreprocessCfg

#: ``predict_fn(images (B, 3, S, S) float [0, 1]) -> landmarks (B, L, 2+)`` in crop pixels.
PredictFn = Callable[[torch.Tensor], Any]

#: Where to crop an image: a box, or ``box_fn(image (H, W, 3) uint8 RGB) -> CropBox | None``
#: (None: no face, nothing predicted).
BoxSpec = Union[CropBox, Callable[[np.ndarray], "CropBox | None"]]


def check_network_choice(weights: str | Path | None, untrained: str | None) -> None:
    """Fail early (before any data or face model is loaded) on a checkpoint file that is missing, or, without
    one, an ``untrained`` name that is not a registered model (:class:`~mlanet.errors.AssetError` /
    :class:`~mlanet.errors.MLANetError` naming it)."""
    from mlanet.errors import AssetError, MLANetError
    from mlanet.models.registry import list_models

    if weights is None and untrained not in list_models():
        raise MLANetError(f"--untrained {untrained}: unknown model; known: {', '.join(list_models())}")
    if weights is not None and not Path(weights).is_file():
        raise AssetError(f"{weights}: no such checkpoint file")


def load_network(face_model: MorphableModel, weights: str | Path | None = None, model: str | None = None,
                 untrained: str | None = None, seed: int = 0) -> nn.Module:
    """The network a 2D benchmark scores, in eval mode.

    Args:
        face_model: the face model its parameters belong to.
        weights: a checkpoint file (``.safetensors``); ``None`` for an untrained baseline.
        model: registered model name for the checkpoint (``None``: the checkpoint's own).
        untrained: with ``weights=None``, the registered model to initialise (``torch.manual_seed(seed)``
            first, so a baseline is the same network every time).
        seed: the initialisation seed of an untrained model.

    Raises:
        MLANetError, AssetError: see :func:`check_network_choice`; a checkpoint that does not load.
    """
    from mlanet.models.registry import create_model

    check_network_choice(weights, untrained)
    if weights is None:
        torch.manual_seed(seed)
        return create_model(untrained, face_model=face_model).eval()
    return create_model(model, checkpoint=weights, face_model=face_model).eval()


class MirrorAveragedNetwork(nn.Module):
    """A network scored as the runtime's ``--mirror-average`` runs it (:mod:`mlanet.edge.mirror_average`): one
    forward pass of the crops and their left-right mirror images, expression and pose averaged
    (:func:`mlanet.morphable.mirror.mirror_average`). Keeps the wrapped network's ``preprocess``, ``layout``,
    ``name`` and ``describe()``."""

    def __init__(self, network: nn.Module, face_model: MorphableModel) -> None:
        super().__init__()
        require_mirrorable(face_model)
        self.network = network
        self.preprocess = getattr(network, "preprocess", None)
        self.layout = getattr(network, "layout", None)
        self.name = getattr(network, "name", type(network).__name__)
        self.register_buffer("expression_perm",
                             torch.as_tensor(expression_mirror_permutation(face_model.expression_names)),
                             persistent=False)

    def describe(self) -> dict[str, Any]:
        inner = self.network.describe() if hasattr(self.network, "describe") else {"name": self.name}
        return {**inner, "mirror_average": True}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        out = self.network(torch.cat([images, images.flip(-1)], 0))
        return mirror_average(out[:n], out[n:], self.layout, self.expression_perm)


def resolve_eval_definition(face_model: MorphableModel, requested: str | None, preferred: str,
                            warn: Callable[[str], None] | None = None) -> str:
    """The landmark definition a benchmark scores: ``requested`` (``None``/``"auto"``: ``preferred``).

    With ``"auto"`` a face model that lacks ``preferred`` (built before the fitted definitions
    existed) falls back to ``ict68`` (its ``landmarks68`` vertices) with a warning through
    ``warn``; an explicitly requested name must exist (``KeyError`` naming the model's definitions).
    """
    if requested not in (None, "auto"):
        face_model.landmark_definition(requested)
        return str(requested)
    if face_model.has_landmarks(preferred):
        return preferred
    if warn is not None:
        warn(f"face model {face_model.model_id} has no {preferred!r} landmark definition; scoring its ict68 vertices "
             "(rebuild the face model with `mlanet assets build` to embed the fitted definitions)")
    return "ict68"


def make_landmark_predictor(
    model: nn.Module,
    face_model: MorphableModel,
    preprocess: PreprocessCfg | None = None,
    layout: ParamLayout | None = None,
    definition: str = "ict68",
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``predict_fn(images (B, 3, S, S) float [0, 1]) -> (B, L, 2)`` crop-pixel landmarks.

    Args:
        model: maps images (B, 3, S, S) to flat parameters (B, P); put in eval mode.
        face_model: the face model the parameters belong to (moved to the model's device).
        preprocess: the crop camera and input size; default ``model.preprocess``.
        layout: the parameter layout; default ``model.layout``.
        definition: the face model's landmark definition to predict (``ict68``: its
            ``landmarks68`` vertices; ``aflw2000_68``: AFLW2000-3D's points; ``ibug68``: 300-W's,
            jaw on the silhouette of the crop camera's view).

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
    face_model.landmark_definition(definition)  # KeyError naming the model's definitions
    size = preprocess.input_size
    source = str(getattr(model, "name", None) or type(model).__name__)

    def predict(images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (size, size):
            raise ValueError(f"images must be (B, 3, {size}, {size}), got {tuple(images.shape)}")
        with torch.no_grad():
            flat = require_finite_params(model(images.to(device=device, dtype=dtype)), source)
            params = FaceParams.from_flat(flat, layout)
            verts = face_model(params)
            camera = preprocess.camera(verts.shape[0], dtype=verts.dtype, device=verts.device)
            landmarks = face_model.landmark_points(verts, definition, camera=camera,
                                                   rotation=euler_to_matrix(params.rotation.to(verts.dtype)))
            return camera.project(landmarks).cpu()

    return predict


def predict_in_boxes(
    jobs: Sequence[tuple[Path, BoxSpec]],
    predict_fn: PredictFn,
    input_size: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    n_landmarks: int = 68,
) -> list[np.ndarray | None]:
    """Predict landmarks in crops of image files, returned in image pixels.

    Args:
        jobs: ``(image path, box)`` pairs; the box is a :class:`CropBox` in image pixels or a
            callable ``box_fn(image) -> CropBox | None`` (a detector). Consecutive jobs on the
            same file decode it once (several faces of one photo).
        predict_fn: crops (B, 3, S, S) float32 RGB in [0, 1] -> (B, L, 2+) landmarks in crop
            pixels (tensor or array; trailing coordinates beyond x, y ignored). Called under
            ``torch.no_grad()``, at most ``batch_size`` crops at a time, in job order.
        input_size: S.
        batch_size: crops per ``predict_fn`` call.
        progress: ``progress(done, total)`` after each batch of jobs.
        n_landmarks: L, checked against the predictor's output.

    Returns:
        One entry per job: (L, 2) float64 image pixels, or None where ``box_fn`` returned None.

    Raises:
        AssetError: an image cannot be read (the message names it).
        ValueError: ``batch_size < 1`` or a predictor output of the wrong shape.
    """
    from mlanet.data.landmarks import crop_uint8, read_image_rgb

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total = len(jobs)
    out: list[np.ndarray | None] = [None] * total
    cached: tuple[Path | None, np.ndarray | None] = (None, None)
    for start in range(0, total, batch_size):
        crops, boxes, where = [], [], []
        for k in range(start, min(start + batch_size, total)):
            path, spec = jobs[k]
            if cached[0] != path:
                cached = (path, read_image_rgb(path))
            box = spec(cached[1]) if callable(spec) else spec
            if box is None:
                continue
            crops.append(crop_uint8(cached[1], box, input_size))
            boxes.append(box)
            where.append(k)
        if crops:
            with torch.no_grad():
                res = predict_fn(torch.stack(crops))
            pred = np.asarray(res.detach().cpu().numpy() if hasattr(res, "detach") else res, dtype=np.float64)
            if pred.ndim != 3 or pred.shape[0] != len(crops) or pred.shape[1] != n_landmarks or pred.shape[2] < 2:
                raise ValueError(f"predict_fn must return ({len(crops)}, {n_landmarks}, 2) landmarks, got {pred.shape}")
            for k, box, p in zip(where, boxes, pred):
                out[k] = np.asarray(box.crop_to_image(p[:, :2], input_size), dtype=np.float64)
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return out
