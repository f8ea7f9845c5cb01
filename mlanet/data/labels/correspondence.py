"""Which points of the labellers' outputs correspond to which manual points (named constants).

The labels cached by :mod:`.cache` come in two *predicted* layouts:

``tddfa68``
    The 3DDFA_V2 teacher's 68 points (:mod:`mlanet.teacher.tddfa_mb05`). They follow the
    AFLW2000-3D / BFM keypoint definition, which uses the iBUG 68 index layout
    (:data:`mlanet.data.sources.schema.IBUG68`: 36..41 the subject's right eye, 48 the
    subject's right mouth corner, ...), so the iBUG indices below apply to it. Its jaw
    points 0..16 are fixed 3D vertices projected into the image, not a silhouette, which is
    why comparisons with 300-W's manual jaw contour are also given without them (the 51
    inner points 17..67, :data:`IBUG68_INNER`).
``mediapipe468``
    MediaPipe's 468 face-mesh points (:mod:`mlanet.data.mediapipe_labels`). Indices below are
    MediaPipe's canonical-mesh vertex numbers; the eye and brow contours are the vertex sets
    of ``mp.solutions.face_mesh_connections.FACEMESH_{RIGHT,LEFT}_{EYE,EYEBROW}``
    (mediapipe 0.10.14), "right" = the subject's right (image left on a frontal face).

A predicted point is the mean of a *group* of indices (one index for a plain point). Eye
centres are the means of the eye contours: iBUG 36..41 / 42..47 (6 points each), MediaPipe's
16-point contours -- the centre of the eye opening, which is what AFLW's "eye centre" and
MTFL's eye points mark on open eyes.

Correspondences (manual point -> predicted group), the manual layouts of
:mod:`mlanet.data.sources.schema` (AFLW and MTFL name sides by the *image*: "left" = the
subject's right):

===================  ==========  ====================  ==================================
manual point         iBUG 68     MediaPipe 468         note
===================  ==========  ====================  ==================================
brow outer end       17 / 26     (70, 46) / (300, 276) MP: mean of upper and lower contour
brow centre          19 / 24     (105, 52) / (334, 282) ends; iBUG marks the upper edge
brow inner end       21 / 22     (107, 55) / (336, 285)
eye outer corner     36 / 45     33 / 263
eye inner corner     39 / 42     133 / 362
eye centre           36..41 /    16-point contours     means of the contours
                     42..47
nose wing            31 / 35     98 / 327              AFLW "nose left/right" (alar base)
nose tip             30          4                     4 = pronasale (1 lies below it)
mouth corner         48 / 54     61 / 291
mouth centre         (62, 66)    (13, 14)              inner-lip midline, top and bottom
chin                 8           152                   2D chin bottom (see below)
===================  ==========  ====================  ==================================

(left of "/": the subject's right, AFLW/MTFL "left"). AFLW's ear lobes (points 12 and 16)
have no counterpart and are not compared.

The MediaPipe chin and nose-tip vertices were chosen against 300-W's manual points 8 and 30
(image-space clicks on the chin's lower outline and the nose tip), not only from the 3D anchors
of :data:`mlanet.morphable.mediapipe_map.MEDIAPIPE_ANCHORS` (175 and 4, placed on a 3D mesh
where iBUG 8 sits on the chin's front): on all 1,537 300-W faces (MediaPipe found every one;
``mediapipe_vertex_choice`` in ``benchmarks/results/data/label_quality.json``) the mean
distance to the manual chin is 4.31 % of the face box for vertex 152, 6.38 % for 175 and
10.39 % for 199, and to the manual nose tip 2.28 % for vertex 4, 4.54 % for 1 and 6.47 % for 5.
The MediaPipe groups of each left/right pair are mirror images on MediaPipe's canonical mesh
(tested).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

#: Name of the teacher's 68-point layout in the cache (iBUG index layout).
TDDFA68 = "tddfa68"
#: Name of MediaPipe's 468-point layout in the cache.
MEDIAPIPE468 = "mediapipe468"

#: iBUG 68 eye contours (subject's right, left).
IBUG68_RIGHT_EYE: tuple[int, ...] = (36, 37, 38, 39, 40, 41)
IBUG68_LEFT_EYE: tuple[int, ...] = (42, 43, 44, 45, 46, 47)
#: The 51 inner points 17..67 (brows, nose, eyes, lips): all of iBUG 68 but the jaw contour.
IBUG68_INNER: tuple[int, ...] = tuple(range(17, 68))
#: All 68 points.
IBUG68_ALL: tuple[int, ...] = tuple(range(68))

#: MediaPipe 468 eye contours (FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE vertices).
MP468_RIGHT_EYE: tuple[int, ...] = (7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246)
MP468_LEFT_EYE: tuple[int, ...] = (249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466)
#: MediaPipe brow contours, outer end -> inner end: (upper edge, lower edge), subject's right / left.
MP468_RIGHT_BROW: tuple[tuple[int, ...], tuple[int, ...]] = ((70, 63, 105, 66, 107), (46, 53, 52, 65, 55))
MP468_LEFT_BROW: tuple[tuple[int, ...], tuple[int, ...]] = ((300, 293, 334, 296, 336), (276, 283, 282, 295, 285))

#: Candidate MediaPipe vertices compared against 300-W's manual points when choosing the
#: chin and nose-tip vertices (see the module docstring): iBUG index -> candidates.
MP468_VERTEX_CANDIDATES: Mapping[int, tuple[int, ...]] = MappingProxyType({8: (152, 175, 199), 30: (4, 1, 5)})


@dataclass(frozen=True)
class ReferencePoint:
    """One anatomical point and how each layout gives it.

    Attributes:
        name: short name (subject's side spelled out: ``r_`` / ``l_``).
        ibug68: iBUG/teacher indices averaged for this point.
        mp468: MediaPipe indices averaged for this point.
        aflw21: AFLW index of the point, or None. mtfl5: MTFL index, or None.
    """

    name: str
    ibug68: tuple[int, ...]
    mp468: tuple[int, ...]
    aflw21: int | None = None
    mtfl5: int | None = None


#: Every point compared between manual and predicted labels (see the table in the module docstring).
REFERENCE_POINTS: tuple[ReferencePoint, ...] = (
    ReferencePoint("r_brow_outer", (17,), (70, 46), aflw21=0),
    ReferencePoint("r_brow_centre", (19,), (105, 52), aflw21=1),
    ReferencePoint("r_brow_inner", (21,), (107, 55), aflw21=2),
    ReferencePoint("l_brow_inner", (22,), (336, 285), aflw21=3),
    ReferencePoint("l_brow_centre", (24,), (334, 282), aflw21=4),
    ReferencePoint("l_brow_outer", (26,), (300, 276), aflw21=5),
    ReferencePoint("r_eye_outer", (36,), (33,), aflw21=6),
    ReferencePoint("r_eye_centre", IBUG68_RIGHT_EYE, MP468_RIGHT_EYE, aflw21=7, mtfl5=0),
    ReferencePoint("r_eye_inner", (39,), (133,), aflw21=8),
    ReferencePoint("l_eye_inner", (42,), (362,), aflw21=9),
    ReferencePoint("l_eye_centre", IBUG68_LEFT_EYE, MP468_LEFT_EYE, aflw21=10, mtfl5=1),
    ReferencePoint("l_eye_outer", (45,), (263,), aflw21=11),
    ReferencePoint("r_nose_wing", (31,), (98,), aflw21=13),
    ReferencePoint("nose_tip", (30,), (4,), aflw21=14, mtfl5=2),
    ReferencePoint("l_nose_wing", (35,), (327,), aflw21=15),
    ReferencePoint("r_mouth_corner", (48,), (61,), aflw21=17, mtfl5=3),
    ReferencePoint("mouth_centre", (62, 66), (13, 14), aflw21=18),
    ReferencePoint("l_mouth_corner", (54,), (291,), aflw21=19, mtfl5=4),
    ReferencePoint("chin", (8,), (152,), aflw21=20),
)

@dataclass(frozen=True)
class Correspondence:
    """Manual points of one definition matched to groups of a predicted layout.

    Attributes:
        manual: manual definition name (``ibug68``, ``aflw21``, ``mtfl5``).
        predicted: :data:`TDDFA68` or :data:`MEDIAPIPE468`.
        names: (K,) point names. manual_groups: (K,) tuples of manual indices averaged per point
        (one index except iBUG eye and mouth centres). groups: (K,) tuples of predicted
        indices averaged per point.
    """

    manual: str
    predicted: str
    names: tuple[str, ...]
    manual_groups: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.names)

    def gather(self, predicted: np.ndarray) -> np.ndarray:
        """(N, L, 2) predicted points -> (N, K, 2): the mean of each group."""
        p = np.asarray(predicted, dtype=np.float64)
        return np.stack([p[:, list(g), :].mean(axis=1) for g in self.groups], axis=1)

    def manual_points(self, manual: np.ndarray) -> np.ndarray:
        """(N, L_manual, 2) -> (N, K, 2) the matched manual points (means of the groups; NaN stays NaN)."""
        m = np.asarray(manual, dtype=np.float64)
        return np.stack([m[:, list(g), :].mean(axis=1) for g in self.manual_groups], axis=1)


def _predicted_groups(point: ReferencePoint, predicted: str) -> tuple[int, ...]:
    if predicted == TDDFA68:
        return point.ibug68
    if predicted == MEDIAPIPE468:
        return point.mp468
    raise ValueError(f"unknown predicted layout {predicted!r} (known: {TDDFA68}, {MEDIAPIPE468})")


def correspondence(manual: str, predicted: str, points: str = "shared") -> Correspondence:
    """The correspondence between a manual definition and a predicted layout.

    Args:
        manual: ``"ibug68"``, ``"aflw21"`` or ``"mtfl5"``.
        predicted: :data:`TDDFA68` or :data:`MEDIAPIPE468`.
        points: for ``ibug68`` vs :data:`TDDFA68`: ``"all68"`` (identity on 68 points) or
            ``"inner51"`` (17..67); otherwise ``"shared"``: the :data:`REFERENCE_POINTS` the
            manual layout has (all 19 for ``ibug68``, its eye and mouth centres as means of
            the manual points too).

    Raises:
        ValueError for an unknown combination.
    """
    _predicted_groups(REFERENCE_POINTS[0], predicted)  # validates ``predicted``
    if manual == "ibug68" and predicted == TDDFA68 and points in ("all68", "inner51"):
        idx = IBUG68_ALL if points == "all68" else IBUG68_INNER
        single = tuple((i,) for i in idx)
        return Correspondence(manual, predicted, tuple(f"ibug{i}" for i in idx), single, single)
    if points != "shared":
        raise ValueError(f"points={points!r} is only for ibug68 vs {TDDFA68}; use 'shared'")
    if manual == "ibug68":
        refs = list(REFERENCE_POINTS)
        index = [p.ibug68 for p in refs]
    elif manual in ("aflw21", "mtfl5"):
        refs = [p for p in REFERENCE_POINTS if getattr(p, manual) is not None]
        index = [(getattr(p, manual),) for p in refs]
    else:
        raise ValueError(f"no correspondence for manual definition {manual!r} (known: ibug68, aflw21, mtfl5)")
    return Correspondence(
        manual, predicted, tuple(p.name for p in refs), tuple(index), tuple(_predicted_groups(p, predicted) for p in refs)
    )
