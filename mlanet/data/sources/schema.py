"""The one sample schema every training-data reader returns, and the named landmark definitions.

A :class:`FaceSample` is one face image with every label its source has: a dict of
:class:`LandmarkSet` keyed by *definition name*, the yaw where the source knows it, the
source's name and its terms of use. Pixels are decoded only when :attr:`FaceSample.image`
is read, so listing a source never decodes an image.

Coordinates: image pixels of the sample's own image (the file as stored, or the video frame),
the project's convention (:mod:`mlanet.conventions`): origin at the top-left corner of the
top-left pixel, +x right, +y down, pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)``.
Each reader converts its file's convention once, when reading, and says how in its docstring.

Landmark definitions (:data:`DEFINITIONS`), point order 0-based:

``ibug68`` (300-W, 68 points)
    The iBUG / Multi-PIE layout documented in :mod:`mlanet.data.landmarks`: jaw 0..16 from the
    subject's right ear over the chin (8) to the left ear; right brow 17..21, left brow 22..26;
    nose bridge 27..30 (30 = tip); nostrils 31..35; right eye 36..41, left eye 42..47; outer
    lips 48..59 (48 and 54 corners); inner lips 60..67. "Right"/"left" are the *subject's*:
    on a frontal face the subject's right side (jaw 0, eye 36..41, mouth corner 48) lies at the
    image's left.

``aflw21`` (AFLW, 21 points)
    0 left brow left corner, 1 left brow centre, 2 left brow right corner, 3 right brow left
    corner, 4 right brow centre, 5 right brow right corner, 6 left eye left corner, 7 left eye
    centre, 8 left eye right corner, 9 right eye left corner, 10 right eye centre, 11 right eye
    right corner, 12 left ear lobe, 13 nose left, 14 nose centre (tip), 15 nose right, 16 right
    ear lobe, 17 mouth left corner, 18 mouth centre, 19 mouth right corner, 20 chin centre.
    "Left" is the *image's* left on a frontal face (AFLW's naming), i.e. the subject's right:
    AFLW point 6 (left eye left corner) is iBUG 36 (right eye outer corner).

``mtfl5`` (MTFL, 5 points)
    0 left eye centre, 1 right eye centre, 2 nose tip, 3 left mouth corner, 4 right mouth
    corner. "Left" is the *image's* left on a frontal face (the subject's right).

:attr:`LandmarkDefinition.frontal_side` records for every point on which side of the image
it lies on a frontal face (``"L"``, ``"R"`` or ``"C"`` for the midline), so checks and
drawings need no per-dataset knowledge; :attr:`LandmarkDefinition.flip_permutation` maps
each point to its mirror twin (for horizontal-flip augmentation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np

from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION, IBUG68_N_POINTS, check_flip_permutation


@dataclass(frozen=True)
class LandmarkDefinition:
    """A named landmark layout.

    Attributes:
        name: the definition name used as key in :attr:`FaceSample.landmark_sets`.
        point_names: (L,) one short name per point, in file order.
        flip_permutation: (L,) point ``i`` of a horizontally mirrored face is point
            ``flip_permutation[i]`` of the original (an involution).
        frontal_side: (L,) ``"L"``/``"R"``/``"C"``: the image side a point lies on for a
            frontal, upright face (``"C"``: on the midline).
        origin: where the layout comes from (one line).
    """

    name: str
    point_names: tuple[str, ...]
    flip_permutation: tuple[int, ...]
    frontal_side: tuple[str, ...]
    origin: str

    def __post_init__(self) -> None:
        n = len(self.point_names)
        check_flip_permutation(self.flip_permutation, n)
        if len(self.frontal_side) != n or set(self.frontal_side) - {"L", "R", "C"}:
            raise ValueError(f"{self.name}: frontal_side must have {n} entries from 'L', 'R', 'C'")
        for i, j in enumerate(self.flip_permutation):
            a, b = self.frontal_side[i], self.frontal_side[j]
            if (a == "C") != (i == j) or (a != "C" and a == b):
                raise ValueError(f"{self.name}: points {i} and {j} are twins but lie on sides {a}, {b}")

    @property
    def n_points(self) -> int:
        """L, the number of points."""
        return len(self.point_names)


def _ibug68_names_and_sides() -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = [f"jaw{i}" for i in range(17)]
    names += [f"right_brow{i}" for i in range(5)] + [f"left_brow{i}" for i in range(5)]
    names += [f"nose_bridge{i}" for i in range(4)] + [f"nostril{i}" for i in range(5)]
    names += [f"right_eye{i}" for i in range(6)] + [f"left_eye{i}" for i in range(6)]
    names += [f"outer_lip{i}" for i in range(12)] + [f"inner_lip{i}" for i in range(8)]
    # The subject's right is the image's left on a frontal face.
    sides = ["L"] * 8 + ["C"] + ["R"] * 8  # jaw
    sides += ["L"] * 5 + ["R"] * 5  # brows
    sides += ["C"] * 4 + ["L", "L", "C", "R", "R"]  # bridge, nostrils
    sides += ["L"] * 6 + ["R"] * 6  # eyes
    sides += ["L", "L", "L", "C", "R", "R", "R", "R", "R", "C", "L", "L"]  # outer lips 48..59
    sides += ["L", "L", "C", "R", "R", "R", "C", "L"]  # inner lips 60..67
    assert len(names) == len(sides) == IBUG68_N_POINTS
    return tuple(names), tuple(sides)


def _flip_from_pairs(n: int, pairs: list[tuple[int, int]]) -> tuple[int, ...]:
    perm = list(range(n))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


_IBUG68_NAMES, _IBUG68_SIDES = _ibug68_names_and_sides()

#: iBUG / Multi-PIE 68 points (300-W); subject's left/right (see the module docstring).
IBUG68 = LandmarkDefinition(
    name="ibug68",
    point_names=_IBUG68_NAMES,
    flip_permutation=IBUG68_FLIP_PERMUTATION,
    frontal_side=_IBUG68_SIDES,
    origin="300-W (Sagonas et al. 2013), iBUG/Multi-PIE 68-point mark-up",
)

#: AFLW's 21 points; image's left/right (see the module docstring).
AFLW21 = LandmarkDefinition(
    name="aflw21",
    point_names=(
        "left_brow_left", "left_brow_centre", "left_brow_right",
        "right_brow_left", "right_brow_centre", "right_brow_right",
        "left_eye_left", "left_eye_centre", "left_eye_right",
        "right_eye_left", "right_eye_centre", "right_eye_right",
        "left_ear_lobe", "nose_left", "nose_tip", "nose_right", "right_ear_lobe",
        "mouth_left", "mouth_centre", "mouth_right", "chin_centre",
    ),
    flip_permutation=_flip_from_pairs(
        21, [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 16), (13, 15), (17, 19)]
    ),
    frontal_side=tuple("LLLRRRLLLRRRLLCRRLCRC"),
    origin="AFLW (Koestinger et al. 2011), 21 manual points, only the visible ones annotated",
)

#: MTFL's 5 points; image's left/right (see the module docstring).
MTFL5 = LandmarkDefinition(
    name="mtfl5",
    point_names=("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right"),
    flip_permutation=(1, 0, 2, 4, 3),
    frontal_side=("L", "R", "C", "L", "R"),
    origin="MTFL (Zhang et al. 2014), 5 manual points",
)

#: Every definition a reader may return, by name.
DEFINITIONS: Mapping[str, LandmarkDefinition] = MappingProxyType({d.name: d for d in (IBUG68, AFLW21, MTFL5)})


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class LandmarkSet:
    """One set of landmarks of one definition on one image.

    Attributes:
        definition: a name in :data:`DEFINITIONS`.
        points: (L, 2) float32 x, y in pixels of the sample's image (project convention:
            pixel centres at integer + 0.5). Rows of points that are not visible hold NaN.
        visible: (L,) bool, True where the point was annotated (its position is known).
            A visible point may still lie outside the image.

    Both arrays are read-only. Construction checks shapes, dtypes and that visible points
    are finite; it raises ``ValueError`` otherwise.
    """

    definition: str
    points: np.ndarray
    visible: np.ndarray

    def __post_init__(self) -> None:
        if self.definition not in DEFINITIONS:
            raise ValueError(f"unknown landmark definition {self.definition!r} (known: {', '.join(DEFINITIONS)})")
        n = DEFINITIONS[self.definition].n_points
        pts = np.array(self.points, dtype=np.float32)  # a copy
        vis = np.array(self.visible, dtype=bool)
        if pts.shape != (n, 2) or vis.shape != (n,):
            raise ValueError(
                f"{self.definition}: points must be ({n}, 2) and visible ({n},), got {pts.shape}, {vis.shape}"
            )
        if not np.all(np.isfinite(pts[vis])):
            raise ValueError(f"{self.definition}: a visible point is not finite")
        pts[~vis] = np.nan
        object.__setattr__(self, "points", _readonly(pts))
        object.__setattr__(self, "visible", _readonly(vis))

    @property
    def n_visible(self) -> int:
        """Number of visible points."""
        return int(self.visible.sum())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LandmarkSet):
            return NotImplemented
        return (
            self.definition == other.definition
            and np.array_equal(self.visible, other.visible)
            and np.array_equal(self.points, other.points, equal_nan=True)
        )


@dataclass(frozen=True, eq=False)
class FaceSample:
    """One face image of a training source with all of its labels.

    Attributes:
        key: unique id, ``"<source>:<path relative to the source root>"``, e.g.
            ``"aflw-crops:images/image04376.jpg"``; video frames:
            ``"video-folder:<folder name>/<video>#<frame, 6 digits>"``.
        source: the source name (a key of :func:`mlanet.data.sources.list_sources`).
        terms: the source's terms of use (one line).
        image_path: the file the pixels come from (the video for a video frame).
        landmark_sets: definition name -> :class:`LandmarkSet`; empty for unlabelled sources.
        yaw_deg: head yaw in degrees where the source gives it (sign convention in the
            reader's docstring), else None.
        meta: small source-specific facts (JSON-like values, e.g. the crop box or frame
            time); informational only, nothing downstream may depend on a source's keys.

    :attr:`image` decodes the pixels on each access: (H, W, 3) uint8 RGB.
    """

    key: str
    source: str
    terms: str
    image_path: Path
    landmark_sets: Mapping[str, LandmarkSet] = field(default_factory=dict)
    yaw_deg: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)
    loader: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, ls in self.landmark_sets.items():
            if not isinstance(ls, LandmarkSet) or ls.definition != name:
                raise ValueError(f"{self.key}: landmark_sets[{name!r}] must be a LandmarkSet of definition {name!r}")
        if self.yaw_deg is not None:
            if not math.isfinite(self.yaw_deg):
                raise ValueError(f"{self.key}: yaw_deg must be finite or None")
            object.__setattr__(self, "yaw_deg", float(self.yaw_deg))
        object.__setattr__(self, "image_path", Path(self.image_path))
        object.__setattr__(self, "landmark_sets", MappingProxyType(dict(self.landmark_sets)))
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def image(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, decoded now (AssetError naming the file if it cannot be)."""
        if self.loader is not None:
            return self.loader()
        from mlanet.data.landmarks import read_image_rgb

        return read_image_rgb(self.image_path)


def make_key(source: str, rel: str) -> str:
    """A sample key: ``"<source>:<rel>"``, ``rel`` the file's path under the source root (``/`` separators)."""
    return f"{source}:{rel}"


#: Optional 2D landmark sets ``points_<name>`` (L, 2) crop pixels + ``visible_<name>`` (L,) bool:
#: set name -> (face-model landmark definition, L). The manual sets of a store (ibug68, aflw21,
#: mtfl5) and the teacher's 68 points (``teacher68``, AFLW2000-3D's definition). A sample without
#: a set (synthetic data, older readers) gets NaN points and False visibility from the collate.
LANDMARK_SETS: dict[str, tuple[str, int]] = {
    "ibug68": ("ibug68", 68),
    "aflw21": ("aflw21", 21),
    "mtfl5": ("mtfl5", 5),
    "teacher68": ("aflw2000_68", 68),
}
