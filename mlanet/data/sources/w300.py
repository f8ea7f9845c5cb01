"""300-W training images with 68 manual points (``shared/data/train/300w``).

Layout: a flat folder of ``<stem>.jpg`` (or ``.jpeg``/``.png``) images each with a
``<stem>.pts`` file in the standard 300-W format (``version: 1``, ``n_points: 68``, then 68
``x y`` lines between braces), read by :func:`mlanet.data.landmarks.read_pts`.

Coordinates: the ``.pts`` files use the original release's **1-based** pixel coordinates
(the centre of the top-left pixel is ``(1, 1)``; the shared copies were cropped and scaled
with pixel centres preserved, so this still holds). Converted once, exactly::

    x_ours = x_pts - 0.5,   y_ours = y_pts - 0.5      (mlanet.data.landmarks.MATLAB_TO_OURS)

so pixel ``(i, j)`` (0-based column, row) has its centre at ``(i + 0.5, j + 0.5)``.
Checked on drawn images: the points sit on the jaw, brows, eyes, nose and lips, and the
subject's right (iBUG 0..7, 36..41, 48) lies at the image's left on frontal faces.

Every point is visible (300-W places occluded points too). No yaw. An image without a
``.pts`` (or the reverse) is skipped with a warning (:attr:`SourceReader.skipped`); a
``.pts`` file that cannot be parsed or has another number of points raises
:class:`AssetError` naming it when the reader is built. Files named like an AFLW2000-3D
image are dropped (:mod:`.exclusion`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from mlanet.errors import AssetError
from mlanet.data.landmarks import read_pts, warn_skipped
from mlanet.data.sources.base import SourceReader
from mlanet.data.sources.exclusion import ExclusionGuard
from mlanet.data.sources.schema import IBUG68, FaceSample, LandmarkSet, make_key

logger = logging.getLogger(__name__)

SOURCE = "300w"
TERMS = (
    "research use only (non-commercial): 300-W training sets AFW and HELEN (Sagonas et al. 2013); "
    "models trained on it are research-only"
)

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_pts_pairs(root: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair the images of ``root`` (not recursive, hidden files ignored) with ``.pts`` files of the same stem.

    Returns:
        (sorted pairs (image, pts), skipped descriptions). Two images with one stem: the
        first in sorted order is used.
    """
    images: dict[str, Path] = {}
    pts: dict[str, Path] = {}
    for e in sorted(os.scandir(root), key=lambda e: e.name):
        if e.name.startswith(".") or not e.is_file():
            continue
        p = Path(e.path)
        suffix = p.suffix.lower()
        if suffix in _IMAGE_SUFFIXES:
            images.setdefault(p.stem, p)
        elif suffix == ".pts":
            pts[p.stem] = p
    pairs = [(images[k], pts[k]) for k in sorted(images.keys() & pts.keys())]
    skipped = [f"{images[k]} (no .pts file)" for k in sorted(images.keys() - pts.keys())]
    skipped += [f"{pts[k]} (no image file)" for k in sorted(pts.keys() - images.keys())]
    return pairs, skipped


class W300(SourceReader):
    """Reader of a 300-W folder (see the module docstring).

    Args:
        root: flat folder of image + ``.pts`` pairs.
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`).

    Each sample: ``landmark_sets = {"ibug68": ...}`` (all visible), ``yaw_deg`` None, key
    ``"300w:<image file name>"``. Raises :class:`AssetError` for a missing folder, a
    folder without pairs, a bad ``.pts`` file, or an AFLW2000-3D folder.
    """

    source = SOURCE
    terms = TERMS

    def __init__(self, root: str | os.PathLike[str], guard: ExclusionGuard | None = None) -> None:
        root = Path(root)
        guard = ExclusionGuard.default() if guard is None else guard
        guard.refuse_folder(root, "the 300-W reader")
        if not root.is_dir():
            raise AssetError(f"{root}: 300-W folder not found")
        pairs, skipped = find_pts_pairs(root)
        warn_skipped(logger, f"300-W {root}", skipped)
        keep, excluded = guard.split([img.name for img, _ in pairs], f"300-W {root}")
        pairs = [pairs[i] for i in keep]
        if not pairs and not excluded:
            raise AssetError(f"{root}: no image + .pts pairs found (expected <name>.jpg next to <name>.pts)")
        visible = np.ones(IBUG68.n_points, dtype=bool)
        samples = []
        for img, pts_path in pairs:
            pts = read_pts(pts_path)
            if pts.shape != (IBUG68.n_points, 2):
                raise AssetError(f"{pts_path}: has {len(pts)} points, expected {IBUG68.n_points} (iBUG 68)")
            samples.append(
                FaceSample(
                    key=make_key(SOURCE, img.name),
                    source=SOURCE,
                    terms=TERMS,
                    image_path=img,
                    landmark_sets={IBUG68.name: LandmarkSet(IBUG68.name, pts, visible)},
                )
            )
        super().__init__(root, samples, excluded, skipped)
        logger.info("300-W %s: %d samples (%d skipped, %d AFLW2000-3D dropped)",
                    root, len(samples), len(skipped), len(excluded))
