"""AFLW face crops (120x120) with AFLW's 21 manual points and yaw (``shared/data/train/aflw-crops``).

Layout: ``annotations.npz`` (numpy, no pickle) and ``images/<name>``. Fields:

* ``names`` (N,) file names under ``images/``;
* ``pts21`` (N, 21, 2) float32 points in the 450x450 frame the crop was cut from; a point
  whose **x is -1** was not annotated (its y holds no information);
* ``roi_box`` (N, 4) float32 ``x0, y0, x1, y1`` of the crop in that frame;
* ``yaw_deg`` (N,) float32, signed: positive when the face is turned towards the image's
  left (its image-left side turns away: AFLW point 12, the left ear lobe, is then never
  annotated), checked on drawn crops.

Mapping into the crop (pixels of the 120x120 image, project convention)::

    crop_xy = (p - 0.5 - (x0, y0)) * 120 / (x1 - x0)          (same scale for x and y)

How this was determined (issue 14):

* *The crop box* has continuous edges: the crop covers ``[x0, x0 + w) x [y0, y0 + w)`` of
  the 450 frame, ``w = x1 - x0``, resized with pixel centres aligned (OpenCV/PIL style),
  zero-padded where it leaves the image. 203 boxes are clipped at ``y1 = 450`` (so
  ``y1 - y0 < w``); their crops end in a black band, and the band's 50 % edge, measured on
  the 92 of the 124 most clipped crops whose image is bright enough above it, lies at
  ``(450 - y0) * 120 / w`` within a median of +0.03 crop pixels (spread 0.13; a box in
  1-based pixels would put it 0.34 px lower). The band also shows the crop is *not*
  stretched vertically: y uses the x scale, ``120 / (x1 - x0)``, for clipped boxes too.
* *The points* are 1-based (MATLAB) pixels of the 450 frame, like AFLW2000-3D in the same
  frame: in 269 of 300 faces sampled, every coordinate is ``1 + k * 450 / W`` (within
  0.002 px) for integers k and W (median W 457: integer AFLW clicks in the original image,
  scaled to 450 and shifted by +1 to 1-based); offsets 0, 0.5 or -0.5 instead of 1 fit at
  most 4 faces, and only on fine grids (W around 1500-2250, chance). So
  :data:`mlanet.data.landmarks.MATLAB_TO_OURS` (-0.5) is applied before mapping.
* *Drawn crops* (frontal, profile, and bottom-clipped boxes) show eyes, nose tip, mouth
  corners and chin on their features and the image-left points (``aflw21`` "left") on the
  image's left. Drawing resolves about one crop pixel (2-3.5 px of the 450 frame); the
  0.5 px offset of the points (0.13-0.2 crop px) is below that and rests on the measurement
  above.

Upstream quirk kept as is: 87 crops have visible points outside the crop, 30 of them more
than 10 crop pixels out. Drawn, these are crops cut too tight (extreme poses, boxes from
few points): the points inside sit on their features, the rest lie beyond the edge. They are
returned unchanged (``visible`` means annotated, not inside the image).

AFLW2000-3D: every crop numbered ``<= 4375`` is dropped by the guard (:mod:`.exclusion`);
the shared folder has none, so all 18,406 are kept.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from mlanet.errors import AssetError
from mlanet.data.landmarks import MATLAB_TO_OURS
from mlanet.data.sources.base import SourceReader
from mlanet.data.sources.exclusion import ExclusionGuard
from mlanet.data.sources.schema import AFLW21, FaceSample, LandmarkSet, make_key

logger = logging.getLogger(__name__)

SOURCE = "aflw-crops"
TERMS = (
    "research use only (non-commercial): AFLW (Koestinger et al. 2011), crops from the 3DDFA benchmark files; "
    "models trained on it are research-only"
)

#: Side of the stored crops, in pixels.
CROP_SIZE: int = 120

#: x value that marks a point AFLW did not annotate.
NOT_ANNOTATED: float = -1.0

_FIELDS = ("names", "pts21", "roi_box", "yaw_deg")


def load_annotations(path: Path) -> dict[str, np.ndarray]:
    """Read and check ``annotations.npz``.

    Returns:
        ``names`` (N,) str, ``pts21`` (N, 21, 2) float64, ``roi_box`` (N, 4) float64,
        ``yaw_deg`` (N,) float64, as stored (450 frame, 1-based).

    Raises:
        AssetError naming the file if it is missing, not an npz without pickles, lacks a
        field, or has inconsistent shapes or non-finite values.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [f for f in _FIELDS if f not in npz.files]
            if missing:
                raise AssetError(f"{path}: missing field(s) {missing} (expected {list(_FIELDS)})")
            raw = {f: npz[f] for f in _FIELDS}
    except FileNotFoundError:
        raise AssetError(f"{path}: annotation file not found") from None
    except AssetError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise AssetError(f"{path}: not a readable npz without pickles ({type(exc).__name__}: {exc})") from None
    names = raw["names"]
    if names.ndim != 1 or names.dtype.kind not in "U":
        raise AssetError(f"{path}: 'names' must be a 1-D array of strings, got {names.dtype} {names.shape}")
    n = len(names)
    shapes = {"pts21": (n, AFLW21.n_points, 2), "roi_box": (n, 4), "yaw_deg": (n,)}
    out: dict[str, np.ndarray] = {"names": names}
    for f, shape in shapes.items():
        a = raw[f]
        if a.dtype.kind not in "fiu" or a.shape != shape:
            raise AssetError(f"{path}: '{f}' must be numeric of shape {shape}, got {a.dtype} {a.shape}")
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)):
            raise AssetError(f"{path}: '{f}' contains NaN or infinite values")
        out[f] = a
    box = out["roi_box"]
    bad = np.flatnonzero(box[:, 2] <= box[:, 0])
    if len(bad):
        raise AssetError(f"{path}: roi_box of {names[bad[0]]} has x1 <= x0 ({box[bad[0]].tolist()})")
    if len(set(names.tolist())) != n:
        raise AssetError(f"{path}: 'names' has duplicates")
    return out


def to_crop(pts: np.ndarray, roi_box: np.ndarray, crop_size: int = CROP_SIZE) -> np.ndarray:
    """Map 450-frame points (1-based) into crop pixels (project convention).

    Args:
        pts: (N, L, 2) points as stored. roi_box: (N, 4) ``x0, y0, x1, y1``.
        crop_size: side of the crop in pixels.

    Returns:
        (N, L, 2) float64 ``(pts - 0.5 - (x0, y0)) * crop_size / (x1 - x0)`` (see the module docstring).
    """
    scale = crop_size / (roi_box[:, 2] - roi_box[:, 0])
    return (pts + MATLAB_TO_OURS - roi_box[:, None, :2]) * scale[:, None, None]


class AFLWCrops(SourceReader):
    """Reader of an ``aflw-crops`` folder (see the module docstring).

    Args:
        root: folder with ``annotations.npz`` and ``images/``.
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`).

    Each sample: ``landmark_sets = {"aflw21": ...}`` (visible where x != -1), signed
    ``yaw_deg``, ``meta = {"roi_box": [x0, y0, x1, y1] (450 frame, as stored)}``, key
    ``"aflw-crops:images/<name>"``. Listed images missing from ``images/`` are skipped
    with a warning (:attr:`skipped`); crops numbered ``<= 4375`` are dropped
    (:attr:`excluded`). Raises :class:`AssetError` for a missing or corrupt annotation
    file, and for the AFLW2000-3D dev folder or layout.
    """

    source = SOURCE
    terms = TERMS

    def __init__(self, root: str | os.PathLike[str], guard: ExclusionGuard | None = None) -> None:
        root = Path(root)
        guard = ExclusionGuard.default() if guard is None else guard
        guard.refuse_folder(root, "the AFLW crops reader")
        if not root.is_dir():
            raise AssetError(f"{root}: AFLW crops folder not found")
        ann = load_annotations(root / "annotations.npz")
        names = ann["names"].tolist()
        keep, excluded = guard.split(names, f"AFLW crops {root}")
        images_dir = root / "images"
        try:
            present = {e.name for e in os.scandir(images_dir) if e.is_file()}
        except OSError as exc:
            raise AssetError(f"{images_dir}: cannot list the crops folder ({exc.strerror or exc})") from None
        skipped = [
            f"{images_dir / names[i]} (listed in annotations.npz, file missing)" for i in keep if names[i] not in present
        ]
        if skipped:
            logger.warning("AFLW crops %s: %d listed image(s) missing, e.g. %s", root, len(skipped), skipped[:3])
        keep = [i for i in keep if names[i] in present]
        idx = np.asarray(keep, dtype=np.int64)
        pts = ann["pts21"][idx]
        visible = pts[..., 0] != NOT_ANNOTATED
        crop = to_crop(pts, ann["roi_box"][idx])
        samples = []
        for row, i in enumerate(keep):
            path = images_dir / names[i]
            samples.append(
                FaceSample(
                    key=make_key(SOURCE, f"images/{names[i]}"),
                    source=SOURCE,
                    terms=TERMS,
                    image_path=path,
                    landmark_sets={AFLW21.name: LandmarkSet(AFLW21.name, crop[row], visible[row])},
                    yaw_deg=float(ann["yaw_deg"][i]),
                    meta={"roi_box": ann["roi_box"][i].tolist()},
                )
            )
        super().__init__(root, samples, excluded, skipped)
        logger.info("AFLW crops %s: %d samples (%d AFLW2000-3D dropped)", root, len(samples), len(excluded))
