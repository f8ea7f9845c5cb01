"""AFLW2000-3D reader (any folder in its layout), following ``shared/PROTOCOLS.md``.

Layout: ``imageXXXXX.jpg`` next to ``imageXXXXX.mat`` with (among others)

* ``pt3d_68`` (3, 68): x, y, z of the 68 iBUG points in **1-based MATLAB pixels** of the
  original image (pixel centres at integers 1..W);
* ``Pose_Para`` (1, 7): pitch, yaw, roll (radians), tx, ty, tz, scale.

Conversion (:data:`mlanet.data.landmarks.MATLAB_TO_OURS`): our coordinate is
``x = x_m - 0.5``, ``y = y_m - 0.5`` (pixel (i, j) has its centre at (i + 0.5, j + 0.5)).
Everything this module returns is in our convention; evaluation compares in our convention
(NME is unchanged by the common shift, but crops are not).

Standard protocol crop: ``box_from_points(gt_2d, preprocess.roi_scale)`` on the converted
ground truth (a square of side sqrt(2) max(w, h) centred on the 68-point box, not clipped,
zero-padded outside the image).

Annotations (all ``.mat`` files) are read when the dataset is constructed (about 1 ms per
file), so a corrupt ``.mat`` fails early and :meth:`AFLW2000.records` needs no image decoding.
Images are decoded in ``__getitem__``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points
from mlanet.data.landmarks import IBUG68_N_POINTS, MATLAB_TO_OURS, make_sample, read_image_rgb, warn_skipped, yaw_bin

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def load_mat(path: Path, fields: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Load the named fields of a MATLAB ``.mat`` file and check their shapes.

    Args:
        path: the file.
        fields: field name -> required shape (after ``np.asarray``; e.g. ``(3, 68)``).

    Returns:
        field -> float64 array of that shape (finite values are not required here).

    Raises:
        AssetError naming the file if it cannot be read, a field is missing, has another
        shape or is not numeric.
    """
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=list(fields))
    except FileNotFoundError:
        raise AssetError(f"{path}: .mat file not found") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise AssetError(f"{path}: not a readable MATLAB .mat file ({type(exc).__name__}: {exc})") from None
    out = {}
    for name, shape in fields.items():
        if name not in mat:
            raise AssetError(f"{path}: missing field '{name}'")
        a = np.asarray(mat[name])
        if a.dtype.kind not in "fiu":
            raise AssetError(f"{path}: field '{name}' is not numeric (dtype {a.dtype})")
        if a.shape != shape:
            raise AssetError(f"{path}: field '{name}' has shape {a.shape}, expected {shape}")
        out[name] = a.astype(np.float64)
    return out


def find_pairs(root: Path, recursive: bool, what: str) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair image files with ``.mat`` files of the same stem in the same folder.

    Returns (sorted pairs (image, mat), skipped descriptions). Raises :class:`AssetError`
    naming ``root`` if it is not a folder.
    """
    if not root.is_dir():
        raise AssetError(f"{root}: {what} folder not found")
    pattern = "**/*" if recursive else "*"
    images: dict[Path, Path] = {}
    mats: dict[Path, Path] = {}
    for p in root.glob(pattern):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        suffix = p.suffix.lower()
        key = p.with_suffix("")
        if suffix in _IMAGE_SUFFIXES:
            if key in images:  # two images with one stem: keep the first in sorted order
                images[key] = min(images[key], p)
            else:
                images[key] = p
        elif suffix == ".mat":
            mats[key] = p
    pairs = sorted((images[k], mats[k]) for k in images.keys() & mats.keys())
    skipped = [f"{images[k]} (no .mat file)" for k in sorted(images.keys() - mats.keys())]
    skipped += [f"{mats[k]} (no image file)" for k in sorted(mats.keys() - images.keys())]
    return pairs, skipped


@dataclass(frozen=True)
class AFLW2000Record:
    """Annotations of one AFLW2000-3D image (no pixels).

    Attributes:
        image_path, mat_path: the files.
        landmarks: (68, 2) float64 ground-truth x, y in image pixels, our convention.
        landmarks_3d: (68, 3) float64 x, y (our convention) and z (file units, unshifted).
        pose: (7,) float64 ``Pose_Para``: pitch, yaw, roll (radians), tx, ty, tz, scale.
        yaw_deg: ``|yaw|`` in degrees.
    """

    image_path: Path
    mat_path: Path
    landmarks: np.ndarray
    landmarks_3d: np.ndarray
    pose: np.ndarray
    yaw_deg: float

    @property
    def yaw_bin(self) -> int:
        """0: [0, 30], 1: (30, 60], 2: above 60 degrees."""
        return yaw_bin(self.yaw_deg)

    def crop_box(self, roi_scale: float) -> CropBox:
        """The standard-protocol crop: ``box_from_points(landmarks, roi_scale)``."""
        return box_from_points(self.landmarks, roi_scale)


def read_aflw2000_mat(path: Path, image_path: Path | None = None) -> AFLW2000Record:
    """Read one AFLW2000-3D ``.mat`` file into an :class:`AFLW2000Record` (our convention)."""
    f = load_mat(path, {"pt3d_68": (3, IBUG68_N_POINTS), "Pose_Para": (1, 7)})
    pt3d = f["pt3d_68"].T.copy()
    pose = f["Pose_Para"].reshape(7)
    if not np.all(np.isfinite(pt3d[:, :2])) or not np.all(np.isfinite(pose[:3])):
        raise AssetError(f"{path}: pt3d_68 or Pose_Para contain NaN or infinite values")
    if float(np.ptp(pt3d[:, :2], axis=0).max()) <= 0:
        raise AssetError(f"{path}: pt3d_68 is degenerate (all points coincide)")
    pt3d[:, :2] += MATLAB_TO_OURS
    yaw = abs(math.degrees(float(pose[1])))
    return AFLW2000Record(
        image_path if image_path is not None else path.with_suffix(".jpg"),
        path,
        pt3d[:, :2].copy(),
        pt3d,
        pose,
        yaw,
    )


class AFLW2000(Dataset):
    """AFLW2000-3D (or any folder in its layout) with the standard ground-truth crop.

    Args:
        root: folder with ``imageXXXXX.jpg`` + ``imageXXXXX.mat`` pairs (not recursive).
        preprocess: crop size S and ``roi_scale``.
        layout: parameter layout; only sets the length P of the (all-NaN) ``params``
            (P = 0 without one). Pass the training layout to concatenate with datasets
            that carry parameters.
        extras: add the extras below to each sample (turn off to concatenate with other
            datasets under ``default_collate``, which needs identical keys).
        names: keep only these image stems (e.g. a split from :mod:`mlanet.data.splits`); a
            listed stem missing from the folder raises :class:`AssetError`.

    An image without its ``.mat`` (or the reverse) is skipped with a logged warning and
    counted in :attr:`n_skipped` / :attr:`skipped`. A folder with no pair raises
    :class:`AssetError` naming it, as does a corrupt ``.mat`` (at construction) or image (when
    its sample is read).

    Sample: the standard keys of :func:`mlanet.data.landmarks.make_sample` (``landmarks``:
    the 68 ground-truth points in crop pixels, all valid; ``params`` NaN; ``has_params``
    and ``has_mp468`` False) plus, with ``extras``:

    * ``yaw_deg``: () float32, ``|Pose_Para[1]|`` in degrees;
    * ``gt_landmarks_image``: (68, 2) float32 ground truth in image pixels (our convention);
    * ``image_size``: (2,) int64 ``(H, W)`` of the original image.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        preprocess: PreprocessCfg,
        layout: ParamLayout | None = None,
        extras: bool = True,
        names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.preprocess = preprocess
        self.layout = layout
        self.extras = extras
        pairs, skipped = find_pairs(self.root, recursive=False, what="AFLW2000-3D")
        if not pairs:
            raise AssetError(f"{self.root}: no image/.mat pairs found (expected imageXXXXX.jpg + imageXXXXX.mat)")
        warn_skipped(logger, f"AFLW2000-3D {self.root}", skipped)
        if names is not None:
            by_stem = {img.stem: (img, mat) for img, mat in pairs}
            missing = [n for n in names if n not in by_stem]
            if missing:
                raise AssetError(
                    f"{self.root}: {len(missing)} listed image(s) not in the folder, e.g. {missing[:3]} "
                    "(is this the folder the list was made for?)"
                )
            pairs = [by_stem[n] for n in sorted(set(names))]
        self.skipped: list[str] = skipped
        self._records = [read_aflw2000_mat(mat, image_path=img) for img, mat in pairs]
        logger.info("AFLW2000-3D %s: %d images (%d files skipped)", self.root, len(self._records), len(skipped))

    @property
    def n_skipped(self) -> int:
        """Number of unpaired files skipped at construction."""
        return len(self.skipped)

    @property
    def records(self) -> list[AFLW2000Record]:
        """Annotations of every sample, in index order (no image decoding)."""
        return list(self._records)

    def items(self) -> list[AFLW2000Record]:
        """Same as :attr:`records`."""
        return self.records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        rec = self._records[index]
        image = read_image_rgb(rec.image_path)
        box = rec.crop_box(self.preprocess.roi_scale)
        sample = make_sample(image, box, self.preprocess, index, landmarks_image=rec.landmarks, layout=self.layout)
        if self.extras:
            sample["yaw_deg"] = torch.tensor(rec.yaw_deg, dtype=torch.float32)
            sample["gt_landmarks_image"] = torch.from_numpy(rec.landmarks.astype(np.float32))
            sample["image_size"] = torch.tensor(image.shape[:2], dtype=torch.long)
        return sample
