"""Face detection: MediaPipe's BlazeFace detector and the detection box -> network crop rule.

``mediapipe`` is imported only inside :class:`MediaPipeFaceDetector`; everything else is numpy.

Detector (:class:`MediaPipeFaceDetector`)
    MediaPipe's legacy BlazeFace solution (mediapipe 0.10.14, ``shared/DESIGN.md`` section 6),
    full-range model by default (it also finds the small background faces of the shared
    multi-face clip; ~7 ms per 640x360 frame on the development CPU, short-range ~2.6 ms).
    Boxes and the 6 keypoints are ``relative * (W, H)``, no further correction. Whether that
    is our pixel-centre convention was checked like :mod:`mlanet.data.mediapipe_labels` did
    for the mesh: the CPU graph warps the (letterboxed, square ``S = max(W, H)``) image into
    the detector tensor with OpenCV (integer pixel centres) and decodes boxes in continuous
    tensor coordinates, which predicts ``ours = relative * (W, H) + 0.5 - 0.5 * S / T``
    (``T`` = 192 full-range, 128 short-range: -1.2 px at 640x360, -2.8 px at 1280x720). A
    mirror test (``x0' + x1 - W = -2c`` over 122-131 frontal AFLW2000-3D faces, images padded
    to S = 450, 1350, 2250 px) did not confirm it for the full-range model (1.9, 2.9, 2.4 px
    from the keypoints, predicted 1.3, 6.0, 10.7; the learned boxes are not mirror-symmetric
    to a pixel), while short-range roughly followed it (1.6, 8.3 px vs 2.5, 9.5). Either way
    the term is <= ~1% of the face box at the video sizes we run (it is below the detector's
    frame-to-frame jitter, median 1.0-1.6 px on a 257 px box in ``obama_720p.mp4``, and far
    below the box-to-landmark spread below), and at the calibration's scale it is absorbed
    into the measured offsets, so it is not applied.

Detection box -> network crop (:func:`crop_box_from_detection`)
    The network crop is ``box_from_points(68 landmarks, roi_scale)``; the detector's box is
    a different box (it includes the forehead, and the full-range box stays on the head
    while the 68 points turn with the face). ``benchmarks/calibrate_detection_box.py``
    measures on the AFLW2000-3D dev images (ground-truth 68 points, our convention) the
    ratio ``max side(68 box) / detection side`` and the centre offset in detection sides
    (medians of the frontal bin -> :class:`DetectionBoxCalibration`). Full-range model, each
    image centred on a black canvas 3x its size (faces ~1/6 of the frame as in 360p video;
    detected 128/131, 34/38, 23/30 faces per yaw bin [0,30], (30,60], (60,90] deg):

    ========  ================  =================  =================  ===============
    yaw bin   side ratio        x shift            y shift            crop IoU vs 68
    ========  ================  =================  =================  ===============
    [0, 30]   0.919 [.84,1.07]  +0.008 [-.12,.11]  +0.065 [.02,.10]   0.87 (p10 0.72)
    (30, 60]  0.963 [.88,1.14]  -0.123 [-.23,.23]  +0.094 [.03,.13]   0.85 (p10 0.60)
    (60, 90]  1.066 [.91,1.28]  +0.110 [-.22,.23]  +0.095 [-.01,.22]  0.69 (p10 0.52)
    ========  ================  =================  =================  ===============

    (median [p10, p90]; IoU of :func:`crop_box_from_detection` with the protocol crop.) The
    x shift follows the head turn: the midpoint of the two ear-tragion keypoints predicts it
    (``shift_x = -0.008 + 0.673 * (ear midpoint - box centre) / side``, p10..p90 of the
    residual -0.05..+0.05 frontal), which lifts the median crop IoU from 0.82 to 0.87 frontal
    and from 0.68 to 0.85 at 30-60 deg; the crop uses it whenever keypoints are present.
    Unpadded images (faces half the image) give 0.895 / +0.016 / +0.080 (ears: +0.79); the
    constants above still reach a frontal crop IoU of 0.86 there. Short-range (unpadded,
    131/131 frontal found): 0.954 / -0.007 / +0.039, spreads 0.88..1.11 / -0.04..+0.03 /
    -0.02..+0.09, frontal crop IoU 0.88 (p10 0.73); ears do not help there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlanet.preprocess import CropBox
from mlanet.edge.types import Detection

logger = logging.getLogger(__name__)

#: Names of MediaPipe's 6 face-detection keypoints, in output order (subject's right/left).
FACE_DETECTION_KEYPOINTS: tuple[str, ...] = (
    "right_eye",
    "left_eye",
    "nose_tip",
    "mouth_center",
    "right_ear_tragion",
    "left_ear_tragion",
)

#: MediaPipe ``model_selection`` per model name.
FACE_DETECTION_MODELS: dict[str, int] = {"short_range": 0, "full_range": 1}


@dataclass(frozen=True)
class DetectionBoxCalibration:
    """How a detector's box relates to the 68-landmark box that defines the network crop.

    Measured by ``benchmarks/calibrate_detection_box.py`` on AFLW2000-3D (see the module
    docstring). With ``s = max(w, h)`` of the detection box and ``c`` its centre:

    Attributes:
        side_ratio: max side of the 68-point box / ``s``.
        shift_x, shift_y: (68-box centre - ``c``) / ``s``, medians (used without keypoints).
        ear_intercept_x, ear_gain_x: with keypoints, the x shift is
            ``ear_intercept_x + ear_gain_x * (ear midpoint x - c_x) / s`` (least squares; the
            ear tragions show where the head is turned). ``ear_gain_x = 0`` ignores keypoints.
    """

    side_ratio: float
    shift_x: float
    shift_y: float
    ear_intercept_x: float = 0.0
    ear_gain_x: float = 0.0

    def __post_init__(self) -> None:
        if not self.side_ratio > 0:
            raise ValueError(f"side_ratio must be positive, got {self.side_ratio}")


#: Full-range model, measured on the 128 detected frontal (|yaw| <= 30 deg) AFLW2000-3D dev
#: faces, each image centred on a black canvas 3x its size (faces ~1/6 of the frame, as in
#: 360p video). Spread (p10..p90): side ratio 0.84..1.07, x shift -0.12..+0.11 (-0.05..+0.05
#: after the ear term), y shift +0.02..+0.10. Without padding (faces 1/2 of the image):
#: 0.895, +0.016, +0.080, ears -0.001 + 0.79 e.
FULL_RANGE_BOX_CALIBRATION = DetectionBoxCalibration(
    side_ratio=0.919, shift_x=0.008, shift_y=0.065, ear_intercept_x=-0.008, ear_gain_x=0.673
)

#: Short-range model, measured on all 131 frontal AFLW2000-3D dev faces (unpadded; this model
#: is meant for faces that fill a good part of the frame). Spread (p10..p90): side ratio
#: 0.88..1.11, x shift -0.04..+0.03, y shift -0.02..+0.09; the ear term does not help here.
SHORT_RANGE_BOX_CALIBRATION = DetectionBoxCalibration(side_ratio=0.954, shift_x=-0.007, shift_y=0.039)

#: Calibration per MediaPipe model name.
DETECTION_BOX_CALIBRATIONS: dict[str, DetectionBoxCalibration] = {
    "full_range": FULL_RANGE_BOX_CALIBRATION,
    "short_range": SHORT_RANGE_BOX_CALIBRATION,
}

#: Indices of the ear tragions in MediaPipe's keypoints (subject's right, left).
EAR_KEYPOINTS: tuple[int, int] = (4, 5)


def _check_image(image_rgb: np.ndarray, where: str) -> np.ndarray:
    a = np.asarray(image_rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"{where} expects an (H, W, 3) uint8 RGB image, got {a.shape} {a.dtype}")
    return a


class MediaPipeFaceDetector:
    """MediaPipe's BlazeFace detector (legacy ``mp.solutions.face_detection``, mediapipe 0.10.14).

    Args:
        model: ``"full_range"`` (default; finds faces down to ~20 px, ~7 ms at 640x360 on
            the development CPU) or ``"short_range"`` (faces within ~2 m, ~2.6 ms).
        min_score: detections below this confidence are discarded (MediaPipe's
            ``min_detection_confidence``).

    ``detector(image_rgb)`` with an (H, W, 3) uint8 RGB image returns a list of
    :class:`~mlanet.edge.types.Detection`, highest score first, boxes and the 6 keypoints
    (:data:`FACE_DETECTION_KEYPOINTS`) in image pixels. Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, model: str = "full_range", min_score: float = 0.5) -> None:
        if model not in FACE_DETECTION_MODELS:
            raise ValueError(f"unknown face detection model {model!r}; choose one of {sorted(FACE_DETECTION_MODELS)}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ImportError("face detection needs mediapipe==0.10.14 (pip install -e '.[edge]')") from exc
        self.model = model
        #: How this model's boxes relate to the 68-landmark crop (used by :class:`FaceTracker`).
        self.box_calibration = DETECTION_BOX_CALIBRATIONS[model]
        self.min_score = float(min_score)
        self.version = str(getattr(mp, "__version__", "unknown"))
        self._fd = mp.solutions.face_detection.FaceDetection(
            model_selection=FACE_DETECTION_MODELS[model], min_detection_confidence=self.min_score
        )

    def __call__(self, image_rgb: np.ndarray) -> list[Detection]:
        a = _check_image(image_rgb, "MediaPipeFaceDetector")
        if self._fd is None:
            raise RuntimeError("MediaPipeFaceDetector is closed")
        result = self._fd.process(np.ascontiguousarray(a))
        H, W = a.shape[:2]
        scale = np.array([float(W), float(H)])
        out = []
        for d in result.detections or []:
            loc = d.location_data
            rb = loc.relative_bounding_box
            box = np.array([rb.xmin, rb.ymin, rb.xmin + rb.width, rb.ymin + rb.height], dtype=np.float64)
            box *= np.tile(scale, 2)
            kps = loc.relative_keypoints
            keypoints = np.array([(k.x, k.y) for k in kps], dtype=np.float64) * scale if len(kps) else None
            score = float(d.score[0]) if len(d.score) else 0.0
            if box[2] > box[0] and box[3] > box[1] and np.all(np.isfinite(box)):
                out.append(Detection(box=box, score=score, keypoints=keypoints))
        out.sort(key=lambda det: -det.score)
        return out

    def close(self) -> None:
        if self._fd is not None:
            self._fd.close()
            self._fd = None

    def __enter__(self) -> "MediaPipeFaceDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def crop_box_from_detection(
    det: Detection, roi_scale: float, calibration: DetectionBoxCalibration = FULL_RANGE_BOX_CALIBRATION
) -> CropBox:
    """The network crop for a detected face: the 68-landmark protocol crop, estimated from the box.

    A square of side ``roi_scale * calibration.side_ratio * s`` (``s = max(w, h)`` of
    ``det.box``), centred at the box centre moved by ``(shift_x, shift_y) * s``; with the
    6 MediaPipe keypoints and a non-zero ``ear_gain_x`` the x shift follows the ear midpoint
    (see :class:`DetectionBoxCalibration`).
    """
    b = np.asarray(det.box, dtype=np.float64).reshape(-1)
    if b.shape != (4,) or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
        raise ValueError(f"detection box must be finite x0, y0, x1, y1 with x1 > x0, y1 > y0, got {det.box}")
    if not roi_scale > 0:
        raise ValueError(f"roi_scale must be positive, got {roi_scale}")
    s = float(max(b[2] - b[0], b[3] - b[1]))
    cx, cy = 0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3])
    shift_x = calibration.shift_x
    kp = det.keypoints
    if calibration.ear_gain_x != 0.0 and kp is not None:
        kp = np.asarray(kp, dtype=np.float64)
        if kp.ndim == 2 and kp.shape[0] > max(EAR_KEYPOINTS) and kp.shape[1] >= 2:
            ear_x = 0.5 * (kp[EAR_KEYPOINTS[0], 0] + kp[EAR_KEYPOINTS[1], 0])
            if math.isfinite(ear_x):
                shift_x = calibration.ear_intercept_x + calibration.ear_gain_x * (ear_x - cx) / s
    side = roi_scale * calibration.side_ratio * s
    cx += shift_x * s
    cy += calibration.shift_y * s
    return CropBox(cx - side / 2, cy - side / 2, side)


def box_iou(a: CropBox, b: CropBox) -> float:
    """Intersection over union of two square crop boxes (0 when disjoint)."""
    w = min(a.x0 + a.size, b.x0 + b.size) - max(a.x0, b.x0)
    h = min(a.y0 + a.size, b.y0 + b.size) - max(a.y0, b.y0)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return float(inter / (a.size * a.size + b.size * b.size - inter))


def box_inside_fraction(box: CropBox, width: int, height: int) -> float:
    """Fraction of the box's area that lies inside the image ``[0, W] x [0, H]``."""
    w = min(box.x0 + box.size, float(width)) - max(box.x0, 0.0)
    h = min(box.y0 + box.size, float(height)) - max(box.y0, 0.0)
    if w <= 0 or h <= 0:
        return 0.0
    return float(w * h / (box.size * box.size))
