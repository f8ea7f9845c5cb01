"""Landmark sets, annotation readers, image decoding and the sample dict every dataset returns.

iBUG 68-point layout (0-based indices; "right"/"left" are the *subject's*, so for a frontal
face the subject's right side appears at smaller image x):

============  ========  =============================================================
group         indices   order
============  ========  =============================================================
jaw           0..16     from the subject's right ear (0) over the chin (8) to the left
right brow    17..21    outer end (17) to inner end (21)
left brow     22..26    inner end (22) to outer end (26)
nose bridge   27..30    top (27) to the tip (30)
nostrils      31..35    subject's right (31) over the subnasale (33) to the left (35)
right eye     36..41    outer corner 36, upper lid 37 38, inner corner 39, lower lid 40 41
left eye      42..47    inner corner 42, upper lid 43 44, outer corner 45, lower lid 46 47
outer lips    48..59    right corner 48, upper lip 49..53 (51 midline), left corner 54,
                        lower lip 55..59 (57 midline), clockwise on screen
inner lips    60..67    right corner 60, upper 61..63 (62 midline), left corner 64,
                        lower 65..67 (66 midline)
============  ========  =============================================================

Pixel conventions of annotation files (all readers return **our** convention, see
:mod:`mlanet.conventions`: pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)``):

* MATLAB / iBUG ``.pts`` / AFLW2000-3D / 300W-LP: 1-based, pixel centres at integers
  ``1..W``. A MATLAB coordinate ``x_m`` becomes ``x = x_m - 0.5`` (same for y)
  (:data:`MATLAB_TO_OURS`).
* dlib (imglab XML): 0-based pixel indices, pixel centres at integers ``0..W-1``, so
  ``x = x_dlib + 0.5`` (:data:`DLIB_TO_OURS`). Boxes ``left, top, width, height`` are
  inclusive pixel-index rectangles; the box covers ``[left, left + width)`` in our continuous
  coordinates.

Distances are unchanged by the common shift, crops are not: convert once, when reading.

Samples
    :func:`make_sample` builds the dict every dataset returns (keys :data:`SAMPLE_KEYS`);
    datasets add documented extras only when constructed with ``extras=True``.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import CropBox, PreprocessCfg, crop_image, image_to_tensor

logger = logging.getLogger(__name__)

#: Number of points of the iBUG 68-point layout.
IBUG68_N_POINTS: int = 68

#: Number of MediaPipe face-mesh points (without the iris).
MP468_N_POINTS: int = 468

#: Offset added to a 1-based MATLAB / iBUG ``.pts`` coordinate to get ours (pixels).
MATLAB_TO_OURS: float = -0.5

#: Offset added to a 0-based dlib (pixel-centre-at-integer) coordinate to get ours (pixels).
DLIB_TO_OURS: float = 0.5


def _ibug68_flip_permutation() -> tuple[int, ...]:
    pairs: list[tuple[int, int]] = []
    pairs += [(i, 16 - i) for i in range(0, 8)]  # jaw, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows: outer<->outer ... inner<->inner
    pairs += [(31, 35), (32, 34)]  # nostrils, 33 subnasale fixed
    # eyes: outer corners, upper lids, inner corners, lower lids
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips, 51 and 57 fixed
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips, 62 and 66 fixed
    perm = list(range(IBUG68_N_POINTS))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


#: Landmark ``i`` of a horizontally mirrored face is landmark ``IBUG68_FLIP_PERMUTATION[i]``
#: of the original (after mapping its position ``x -> W - x``). An involution.
IBUG68_FLIP_PERMUTATION: tuple[int, ...] = _ibug68_flip_permutation()


def check_flip_permutation(perm: Sequence[int], n: int | None = None) -> np.ndarray:
    """Validate a mirror permutation: a permutation of ``range(n)`` that is its own inverse.

    Returns it as an int64 array; raises ``ValueError`` otherwise.
    """
    p = np.asarray(perm, dtype=np.int64)
    n = len(p) if n is None else n
    if p.shape != (n,) or not np.array_equal(np.sort(p), np.arange(n)):
        raise ValueError(f"flip permutation must be a permutation of range({n})")
    if not np.array_equal(p[p], np.arange(n)):
        raise ValueError("flip permutation must be an involution (mirroring twice is the identity)")
    return p


def mirror_permutation(points: np.ndarray, tolerance: float) -> np.ndarray:
    """Mirror permutation of a left/right-symmetric point set (N, 3) or (N, 2).

    Point ``i`` mirrored through the plane ``x = 0`` lands on point ``perm[i]`` (nearest
    neighbour). Raises ``ValueError`` if some mirrored point is farther than ``tolerance``
    (same units as ``points``) from its partner or the result is not an involution. Used to
    derive the MediaPipe 468-point flip map from its canonical mesh (model frame, metres).
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    mirrored = pts.copy()
    mirrored[:, 0] *= -1.0
    dist, perm = cKDTree(pts).query(mirrored)
    if float(dist.max()) > tolerance:
        raise ValueError(f"point set is not mirror-symmetric: worst mirrored point {dist.max():.3g} from its partner")
    return check_flip_permutation(perm)


# ----------------------------------------------------------------------------- readers
def read_pts(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an iBUG ``.pts`` file (``version: 1``, ``n_points: N``, ``{`` x y lines ``}``).

    Coordinates in the file are 1-based (MATLAB); returns (N, 2) float64 in our convention
    (``x - 0.5``, ``y - 0.5``). Raises :class:`AssetError` naming the file on any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        raise AssetError(f"{path}: cannot read .pts file ({exc})") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    n_points = None
    try:
        start = lines.index("{")
        end = lines.index("}", start)
    except ValueError:
        raise AssetError(f"{path}: not an iBUG .pts file (no '{{' ... '}}' block)") from None
    for ln in lines[:start]:
        key, _, value = ln.partition(":")
        if key.strip() == "n_points":
            try:
                n_points = int(value)
            except ValueError:
                raise AssetError(f"{path}: bad n_points line {ln!r}") from None
    try:
        pts = np.array([[float(v) for v in ln.split()] for ln in lines[start + 1 : end]], dtype=np.float64)
    except ValueError:
        raise AssetError(f"{path}: non-numeric point coordinates") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise AssetError(f"{path}: expected lines of two coordinates, got shape {pts.shape}")
    if n_points is not None and n_points != len(pts):
        raise AssetError(f"{path}: header says n_points {n_points} but {len(pts)} points follow")
    if not np.all(np.isfinite(pts)):
        raise AssetError(f"{path}: non-finite coordinates")
    return pts + MATLAB_TO_OURS


@dataclass(frozen=True)
class DlibFace:
    """One annotated face of a dlib imglab XML file.

    Attributes:
        box: (x0, y0, x1, y1) float64, our continuous pixel convention (x1 = left + width).
        landmarks: (68, 2) float64 in our convention; NaN rows for parts the file lacks.
        valid: (68,) bool, True where the part is present.
        ignore: the box's ``ignore`` flag.
    """

    box: np.ndarray
    landmarks: np.ndarray
    valid: np.ndarray
    ignore: bool


@dataclass(frozen=True)
class DlibImage:
    """One ``<image>`` element: absolute ``path`` (resolved next to the XML) and its faces."""

    path: Path
    faces: tuple[DlibFace, ...]
    width: int | None = None
    height: int | None = None


def read_dlib_xml(path: str | os.PathLike[str], n_points: int = IBUG68_N_POINTS) -> list[DlibImage]:
    """Read a dlib imglab XML (e.g. ``training_with_face_landmarks.xml``).

    Each ``<image file=...>`` has ``<box top left width height [ignore]>`` elements with
    ``<part name='00'..'67' x y/>`` children. Returns one :class:`DlibImage` per image with
    coordinates converted to our convention (``+0.5``, see module docstring). Parts named
    outside ``0..n_points-1`` raise :class:`AssetError`, as does malformed XML.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise AssetError(f"{path}: cannot parse dlib XML ({exc})") from None
    images_el = root.find("images")
    if images_el is None:
        raise AssetError(f"{path}: no <images> element (not a dlib imglab dataset file)")
    out: list[DlibImage] = []

    def num(el: ET.Element, key: str) -> float:
        try:
            return float(el.attrib[key])
        except (KeyError, ValueError):
            raise AssetError(f"{path}: <{el.tag}> lacks a numeric '{key}' attribute") from None

    for img_el in images_el.findall("image"):
        file = img_el.attrib.get("file")
        if not file:
            raise AssetError(f"{path}: <image> without a 'file' attribute")
        faces = []
        for box_el in img_el.findall("box"):
            left, top = num(box_el, "left"), num(box_el, "top")
            width, height = num(box_el, "width"), num(box_el, "height")
            lm = np.full((n_points, 2), np.nan)
            for part in box_el.findall("part"):
                name = part.attrib.get("name", "")
                try:
                    k = int(name)
                except ValueError:
                    raise AssetError(f"{path}: part name {name!r} is not an index") from None
                if not 0 <= k < n_points:
                    raise AssetError(f"{path}: part index {k} outside 0..{n_points - 1}")
                lm[k] = (num(part, "x") + DLIB_TO_OURS, num(part, "y") + DLIB_TO_OURS)
            box = np.array([left, top, left + width, top + height], dtype=np.float64)
            ignore = box_el.attrib.get("ignore", "0").strip() not in ("0", "", "false")
            faces.append(DlibFace(box, lm, np.isfinite(lm).all(axis=1), ignore))
        w, h = img_el.attrib.get("width"), img_el.attrib.get("height")
        out.append(
            DlibImage(
                (path.parent / file).resolve(),
                tuple(faces),
                int(w) if w and w.isdigit() else None,
                int(h) if h and h.isdigit() else None,
            )
        )
    return out


def read_image_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB (EXIF orientation is *not* applied).

    Raises :class:`AssetError` naming the file if it is missing or not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise AssetError(f"{path}: image file not found") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise AssetError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    a = np.array(rgb, dtype=np.uint8)  # a writable copy
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise AssetError(f"{path}: decoded to an unusable array of shape {a.shape}")
    return a


# ----------------------------------------------------------------------------- samples
#: Keys every dataset's sample has (same shapes and dtypes across datasets).
SAMPLE_KEYS: tuple[str, ...] = (
    "image",
    "landmarks",
    "landmarks_valid",
    "params",
    "has_params",
    "mp468",
    "has_mp468",
    "box",
    "index",
)


def param_count(layout: ParamLayout | None) -> int:
    """P of a sample's ``params``: ``layout.total``, or 0 without a layout."""
    return 0 if layout is None else int(layout.total)


def crop_uint8(image_rgb: np.ndarray, box: CropBox, input_size: int) -> torch.Tensor:
    """:func:`mlanet.preprocess.crop_image` of a uint8 image, converting only the pixels it reads.

    The bilinear samples of the crop touch image columns ``floor(x0 - 0.5) .. ceil(x0 + size)``
    (same for rows), so the image is cut to that range plus a 2-pixel margin (clipped to the
    image, so zero padding outside the image is unchanged) and the box is shifted by the cut's
    origin. Equal to cropping the whole image up to float rounding, and much cheaper for
    large photos with small faces.

    Args:
        image_rgb: (H, W, 3) uint8 RGB. box: crop box in image pixels. input_size: S.

    Returns:
        (3, S, S) float32 in [0, 1].
    """
    H, W = image_rgb.shape[:2]
    c0 = max(0, int(math.floor(box.x0 - 0.5)) - 2)
    r0 = max(0, int(math.floor(box.y0 - 0.5)) - 2)
    c1 = min(W, int(math.ceil(box.x0 + box.size)) + 2)
    r1 = min(H, int(math.ceil(box.y0 + box.size)) + 2)
    if c1 <= c0 or r1 <= r0:  # the box lies entirely outside the image
        return torch.zeros(3, input_size, input_size)
    sub = image_to_tensor(image_rgb[r0:r1, c0:c1])
    shifted = CropBox(box.x0 - c0, box.y0 - r0, box.size)
    return crop_image(sub, shifted, input_size)[0].clamp_(0.0, 1.0)


def make_sample(
    image_rgb: np.ndarray,
    box: CropBox,
    preprocess: PreprocessCfg,
    index: int,
    *,
    landmarks_image: np.ndarray | None = None,
    mp468_image: np.ndarray | None = None,
    params: np.ndarray | None = None,
    layout: ParamLayout | None = None,
) -> dict[str, torch.Tensor]:
    """The standard sample dict (:data:`SAMPLE_KEYS`) from an image and image-space labels.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        box: the crop in image pixels (our convention).
        preprocess: gives S = ``input_size``.
        index: dataset index.
        landmarks_image: (68, 2) image pixels, NaN rows unknown; None = all unknown.
        mp468_image: (468, 2) image pixels or None.
        params: (P,) flat parameters in ``layout`` or None.
        layout: parameter layout (P = ``layout.total``; 0 when None).

    Returns:
        ``image`` (3, S, S) float32 in [0, 1]; ``landmarks`` (68, 2) float32 crop pixels;
        ``landmarks_valid`` (68,) bool; ``params`` (P,) float32 (NaN when absent);
        ``has_params`` bool; ``mp468`` (468, 2) float32 crop pixels (NaN when absent);
        ``has_mp468`` bool; ``box`` (3,) float64 ``(x0, y0, size)``; ``index`` int64.
    """
    S = preprocess.input_size
    crop = crop_uint8(image_rgb, box, S)
    if landmarks_image is None:
        lm = np.full((IBUG68_N_POINTS, 2), np.nan)
    else:
        lm = box.image_to_crop(np.asarray(landmarks_image, dtype=np.float64), S)
    valid = np.isfinite(lm).all(axis=1)
    if mp468_image is None:
        mp = np.full((MP468_N_POINTS, 2), np.nan)
    else:
        mp = box.image_to_crop(np.asarray(mp468_image, dtype=np.float64), S)
    P = param_count(layout)
    if params is None:
        prm = np.full((P,), np.nan, dtype=np.float32)
    else:
        prm = np.asarray(params, dtype=np.float32).reshape(-1)
        if prm.shape != (P,):
            raise ValueError(f"params must have {P} values for this layout, got {prm.shape}")
    return {
        "image": crop,
        "landmarks": torch.from_numpy(lm.astype(np.float32)),
        "landmarks_valid": torch.from_numpy(valid),
        "params": torch.from_numpy(prm),
        "has_params": torch.tensor(params is not None),
        "mp468": torch.from_numpy(mp.astype(np.float32)),
        "has_mp468": torch.tensor(mp468_image is not None),
        "box": torch.from_numpy(box.as_array()),
        "index": torch.tensor(int(index), dtype=torch.long),
    }


def warn_skipped(logger_: logging.Logger, what: str, skipped: Sequence[str], limit: int = 10) -> None:
    """Log one warning per skipped file (up to ``limit``) and a summary line for the rest."""
    for item in skipped[:limit]:
        logger_.warning("%s: skipped %s", what, item)
    if len(skipped) > limit:
        logger_.warning("%s: skipped %d more files (%d in all)", what, len(skipped) - limit, len(skipped))


def yaw_bin(yaw_deg: float) -> int:
    """AFLW2000-3D yaw bin of ``|yaw|`` in degrees: 0 for [0, 30], 1 for (30, 60], 2 for (60, 90+]."""
    a = abs(float(yaw_deg))
    if not math.isfinite(a):
        raise ValueError("yaw must be finite")
    return 0 if a <= 30.0 else (1 if a <= 60.0 else 2)
