"""300W-LP reader, for users who have the dataset (it is not in ``../shared``).

Layout: any folder tree; every ``*.mat`` with a sibling image of the same stem (``.jpg``,
also ``.jpeg``/``.png``) is a sample. ``.mat`` files without an image (for example 300W-LP's
``landmarks/*_pts.mat``) are skipped and counted; one warning per file is logged for the first
few, then a summary.

``.mat`` schema (the 3DDFA fitting of the Basel Face Model; only the fields used are checked)::

    pt2d        (2, 68)   x, y of the 68 iBUG points, 1-based MATLAB pixels
    Pose_Para   (1, 7)    pitch, yaw, roll (radians), tx, ty, tz, scale
    Shape_Para  (199, 1)  BFM identity coefficients
    Exp_Para    (29, 1)   3DDFA expression coefficients
    (Color_Para (1, 7), Illum_Para (1, 10), Tex_Para (199, 1), roi are not read)

Landmarks are converted to our convention (``x = x_m - 0.5``, ``y = y_m - 0.5``); the crop is
``box_from_points(landmarks, preprocess.roi_scale)`` (the same rule as AFLW2000-3D).

The 300W-LP parameters belong to the BFM / 3DDFA model, not to our face model's
:class:`~mlanet.params.ParamLayout`, so ``has_params`` is False; they are exposed raw as
extras. Annotations are read lazily (300W-LP has about 122k files), in ``__getitem__``.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg, box_from_points
from mlanet.data.aflw2000 import find_pairs, load_mat
from mlanet.data.landmarks import IBUG68_N_POINTS, MATLAB_TO_OURS, make_sample, read_image_rgb, warn_skipped

logger = logging.getLogger(__name__)

#: Fields read from each 300W-LP ``.mat`` and their shapes.
W300LP_FIELDS: dict[str, tuple[int, ...]] = {
    "pt2d": (2, IBUG68_N_POINTS),
    "Pose_Para": (1, 7),
    "Shape_Para": (199, 1),
    "Exp_Para": (29, 1),
}


def read_w300lp_mat(path: Path) -> dict[str, np.ndarray]:
    """Read one 300W-LP ``.mat``.

    Returns:
        ``landmarks`` (68, 2) float64 image pixels (our convention), ``pose`` (7,),
        ``shape`` (199,), ``exp`` (29,) float64. Raises :class:`AssetError` naming the file.
    """
    f = load_mat(path, W300LP_FIELDS)
    lm = f["pt2d"].T + MATLAB_TO_OURS
    if not np.all(np.isfinite(lm)):
        raise AssetError(f"{path}: pt2d contains NaN or infinite values")
    if float(np.ptp(lm, axis=0).max()) <= 0:
        raise AssetError(f"{path}: pt2d is degenerate (all points coincide)")
    return {
        "landmarks": lm,
        "pose": f["Pose_Para"].reshape(7),
        "shape": f["Shape_Para"].reshape(199),
        "exp": f["Exp_Para"].reshape(29),
    }


class W300LP(Dataset):
    """300W-LP samples from a folder tree (recursive).

    Args:
        root: dataset root (e.g. ``300W_LP/``, or one of its subfolders).
        preprocess: crop size S and ``roi_scale``.
        layout: only sets the length P of the all-NaN ``params`` (0 without one).
        extras: add the extras below (turn off to concatenate under ``default_collate``).

    Sample: the standard keys (``landmarks`` from ``pt2d`` in crop pixels, all valid;
    ``has_params`` and ``has_mp468`` False) plus, with ``extras``:

    * ``w300lp_pose`` (7,) float32 ``Pose_Para`` (radians, then tx, ty, tz, scale);
    * ``w300lp_shape`` (199,) float32 ``Shape_Para``; ``w300lp_exp`` (29,) float32 ``Exp_Para``;
    * ``yaw_deg`` () float32, ``|yaw|`` in degrees.

    Raises :class:`AssetError` naming the folder if it is missing or holds no pair, and
    naming the file if a ``.mat`` or image is corrupt (when its sample is read).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        preprocess: PreprocessCfg,
        layout: ParamLayout | None = None,
        extras: bool = True,
    ) -> None:
        self.root = Path(root)
        self.preprocess = preprocess
        self.layout = layout
        self.extras = extras
        pairs, skipped = find_pairs(self.root, recursive=True, what="300W-LP")
        if not pairs:
            raise AssetError(f"{self.root}: no image/.mat pairs found (300W-LP layout: X.jpg next to X.mat)")
        warn_skipped(logger, f"300W-LP {self.root}", skipped)
        self.skipped: list[str] = skipped
        self.pairs: list[tuple[Path, Path]] = pairs
        logger.info("300W-LP %s: %d images (%d files skipped)", self.root, len(pairs), len(skipped))

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        image_path, mat_path = self.pairs[index]
        ann = read_w300lp_mat(mat_path)
        image = read_image_rgb(image_path)
        box = box_from_points(ann["landmarks"], self.preprocess.roi_scale)
        sample = make_sample(image, box, self.preprocess, index, landmarks_image=ann["landmarks"], layout=self.layout)
        if self.extras:
            sample["w300lp_pose"] = torch.from_numpy(ann["pose"].astype(np.float32))
            sample["w300lp_shape"] = torch.from_numpy(ann["shape"].astype(np.float32))
            sample["w300lp_exp"] = torch.from_numpy(ann["exp"].astype(np.float32))
            sample["yaw_deg"] = torch.tensor(abs(math.degrees(float(ann["pose"][1]))), dtype=torch.float32)
        return sample
