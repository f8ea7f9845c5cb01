"""Pseudo-label teachers: published networks re-implemented here, weights read from the user's folder.

* :mod:`.tddfa_mb05`: 3DDFA_V2 MobileNet x0.5 (68 landmarks + head pose); weights research use
  only, BFM keypoint bases academic -- see its ``TERMS``.
"""

from __future__ import annotations

from mlanet.teacher.tddfa_mb05 import (
    HeadPose,
    Teacher,
    TeacherPrediction,
    TDDFAMobileNet,
    load_tddfa_mb05,
    roi_from_detector_box,
    roi_from_landmarks,
)

__all__ = [
    "HeadPose",
    "Teacher",
    "TeacherPrediction",
    "TDDFAMobileNet",
    "load_tddfa_mb05",
    "roi_from_detector_box",
    "roi_from_landmarks",
]
