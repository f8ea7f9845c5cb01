"""Derived labels for the real training faces (issue 14): teacher 68 points + pose, MediaPipe 468 points.

* :mod:`.cache` -- the on-disk cache: per-source shards of column arrays keyed by the image
  file's SHA-256 (+ frame index), the crop rule, the manual labels and the labeller id;
  resumable, written atomically, loaded in one piece (:class:`LabelCache`, :class:`LabelTable`).
* :mod:`.labeller` -- the crop rule per source (:data:`SOURCE_BOX_RULES`), the real labeller
  (:class:`TeacherMediaPipeLabeller`) and the resumable run (:func:`label_source`).
* :mod:`.correspondence` -- named correspondences between the teacher's / MediaPipe's points
  and the manual AFLW 21, MTFL 5 and iBUG 68 points.
* :mod:`.report` -- label quality against the manual points (:func:`label_quality`).
* :mod:`.detect` -- MediaPipe face boxes for sources without a manual face box.

Nothing here imports ``mediapipe`` at module level; the CLI is ``mlanet data label`` /
``mlanet data label-report`` (:mod:`mlanet.data.cli`).
"""

from __future__ import annotations

from mlanet.data.labels.cache import (
    BOX_FROM_NAMES,
    MP_STATUS_NAMES,
    STATUS_NAMES,
    LabelCache,
    LabelEntry,
    LabelTable,
    lookup_key,
)
from mlanet.data.labels.correspondence import REFERENCE_POINTS, Correspondence, ReferencePoint, correspondence
from mlanet.data.labels.labeller import (
    DETECTOR_REFINE,
    IBUG68_LANDMARKS,
    SOURCE_BOX_RULES,
    WHOLE_IMAGE,
    BoxRule,
    ContentHasher,
    FaceLabels,
    Labeller,
    RunStats,
    TeacherMediaPipeLabeller,
    annotation_digest,
    box_rule_for,
    label_source,
    labeller_id,
    load_labels,
)
from mlanet.data.labels.report import label_quality, markdown_table

__all__ = [
    "BOX_FROM_NAMES", "BoxRule", "ContentHasher", "Correspondence", "DETECTOR_REFINE", "FaceLabels",
    "IBUG68_LANDMARKS", "LabelCache", "LabelEntry", "LabelTable", "Labeller", "MP_STATUS_NAMES", "REFERENCE_POINTS",
    "ReferencePoint", "RunStats", "SOURCE_BOX_RULES", "STATUS_NAMES", "TeacherMediaPipeLabeller", "WHOLE_IMAGE",
    "annotation_digest", "box_rule_for", "correspondence", "label_quality", "label_source", "labeller_id",
    "load_labels", "lookup_key", "markdown_table",
]
