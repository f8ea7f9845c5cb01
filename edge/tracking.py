"""Face detection and tracking: where to crop each face in each frame.

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

Scene cuts (:class:`SceneCutDetector`)
    Total-variation distance of 3 x 32-bin colour histograms of consecutive subsampled
    frames; threshold :data:`SCENE_CUT_THRESHOLD` = 0.12 (cuts in the shared clip 0.215-0.381,
    motion <= 0.058).

Tracker (:class:`FaceTracker`, :class:`TrackerCfg`)
    ``rois = tracker.begin(frame)`` gives one square crop per tracked face;
    ``tracker.end({track_id: landmarks68 or None})`` turns this frame's fits into the next
    frame's crops. Rules:

    - The detector runs when there is no track, a track was lost (failed or implausible
      fit), the schedule is due (``frame.index - last_detect >= detect_every``; indices, so
      dropped frames count; ``recheck_every`` while a track is unconfirmed after a miss),
      the index went backwards, or at a scene cut.
    - Association: greedy by IoU of crop boxes, highest first, ``>= iou_match`` and sizes
      within ``max_size_ratio``. A matched track keeps its fit ROI when that overlaps the
      detection's crop by ``>= keep_fit_iou`` (a good fit is better aligned than the
      detector), else it snaps to the detection's crop (always after a cut or when lost).
    - Unmatched detections (larger than ``min_face_px``, not overlapping a track by
      ``>= iou_match``) start tracks, largest first, up to ``max_faces``; ids increase
      monotonically and are never reused.
    - An unmatched track gets a miss and is dropped after more than ``max_misses``
      consecutive missed rounds; at a scene cut unmatched tracks are dropped at once.
      Matched tracks keep their id across a cut (their ROI snaps to the detection).
    - ``end``: the next ROI is ``box_from_points(landmarks, roi_scale)`` if plausible
      (side within ``max_size_ratio`` of the current ROI, IoU ``>= min_fit_iou``); else the
      track is lost: it gets no ROI until a detection re-associates it (same id) or it is
      dropped. A plausible ROI with less than ``min_inside`` of its area in the image drops
      the track.

    With an untrained network the fitted landmarks are a neutral face centred in the crop,
    so the fit ROI stays where it is and the scheduled detections move it; with a good fit
    the ROI follows the face between detections and the detections confirm it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..preprocess import CropBox, box_from_points
from .types import Detection, Frame, TrackROI

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


# ------------------------------------------------------------------------------ scene cuts
#: Default histogram distance above which two consecutive frames are a scene cut (see
#: :class:`SceneCutDetector`): the hard cuts of the shared multi-face clip give 0.215-0.381,
#: ordinary motion at most 0.058.
SCENE_CUT_THRESHOLD: float = 0.12


class SceneCutDetector:
    """Hard scene cuts from colour histograms of consecutive (downscaled) frames.

    Each frame is subsampled by an integer stride to about ``target_width`` pixels wide, and
    each RGB channel gets a ``bins``-bin histogram (normalised to sum 1). The distance of two
    frames is the total-variation distance ``0.5 * sum |p - q|`` averaged over the three
    channels (0: same colours, 1: disjoint). A frame is a cut when the distance to the
    previous frame given to :meth:`__call__` is ``>= threshold``.

    Measured on ``hamilton_360p_multiface.mp4`` (640x360, 275 frames, stride 4 -> 160x90,
    32 bins): the three hard cuts give 0.215 (frame 20), 0.381 (82) and 0.253 (211); every
    other frame is at most 0.058 (camera motion and a walking crowd, frames 21-27 and 46-47),
    so :data:`SCENE_CUT_THRESHOLD` = 0.12 sits about a factor 2 from both. The mean absolute
    pixel difference separates less well: 30.6, 28.5, 29.2 at the cuts but up to 14.2 for
    motion, so it is not used. ``obama_720p.mp4`` (55 frames, one shot): at most 0.023.
    Costs about 0.1 ms per 640x360 frame.

    Gradual transitions (fades, dissolves) are not cuts; the tracker's schedule handles them.
    """

    def __init__(self, threshold: float = SCENE_CUT_THRESHOLD, bins: int = 32, target_width: int = 160) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"scene-cut threshold must be in (0, 1], got {threshold}")
        if bins < 2 or bins > 256 or 256 % bins:
            raise ValueError(f"bins must divide 256 (2..256), got {bins}")
        if target_width < 8:
            raise ValueError(f"target_width must be >= 8, got {target_width}")
        self.threshold = float(threshold)
        self.bins = int(bins)
        self.target_width = int(target_width)
        self._prev: np.ndarray | None = None
        #: Distance of the last frame to the one before it (None for the first frame).
        self.last_distance: float | None = None

    def histogram(self, image_rgb: np.ndarray) -> np.ndarray:
        """(3, bins) normalised colour histograms of a subsampled (H, W, 3) uint8 RGB image."""
        a = _check_image(image_rgb, "SceneCutDetector")
        k = max(1, int(round(a.shape[1] / self.target_width)))
        small = a[::k, ::k]
        shift = 8 - int(math.log2(self.bins))
        n = small.shape[0] * small.shape[1]
        return np.stack(
            [np.bincount((small[..., c] >> shift).ravel(), minlength=self.bins) for c in range(3)]
        ).astype(np.float64) / n

    @staticmethod
    def distance(h1: np.ndarray, h2: np.ndarray) -> float:
        """Total-variation distance of two (3, bins) histograms, averaged over channels."""
        return float(0.5 * np.abs(h1 - h2).sum(axis=1).mean())

    def __call__(self, image_rgb: np.ndarray) -> bool:
        """Feed the next frame; True if it starts a new shot (never for the first frame)."""
        h = self.histogram(image_rgb)
        prev, self._prev = self._prev, h
        if prev is None:
            self.last_distance = None
            return False
        self.last_distance = self.distance(prev, h)
        return self.last_distance >= self.threshold

    def reset(self) -> None:
        """Forget the previous frame (the next frame is never a cut)."""
        self._prev = None
        self.last_distance = None


# ------------------------------------------------------------------------------ tracker
@dataclass(frozen=True)
class TrackerCfg:
    """Settings of :class:`FaceTracker` (all distances in image pixels, boxes are network crops).

    Attributes:
        detect_every: frames between scheduled detections, counted in frame indices (so
            dropped frames count): the detector runs when ``index - last_detect >= detect_every``.
        recheck_every: while some track went unmatched in the last detection round, the
            detector runs again after this many frames instead (a missed face is confirmed
            or dropped quickly); ``>= detect_every`` turns this off.
        max_faces: at most this many tracks (new faces are admitted largest first).
        iou_match: minimum IoU of a track's crop and a detection's crop to associate them
            (their sides must also agree within ``max_size_ratio``); an unmatched detection
            overlapping any track this much is taken for a duplicate, not a new face. Low
            because an untrained network's ROI stands still between detections: the
            performer in the shared clip moves 68 px in 10 frames on a 130 px crop (IoU 0.27).
        keep_fit_iou: a matched track keeps its fit ROI (better aligned than the detector:
            detection crops overlap the 68-landmark crop with IoU 0.87 median, 0.72 p10)
            when it overlaps the detection's crop at least this much; else it snaps to the
            detection.
        max_misses: detection rounds in a row a track may go unmatched; one more and it is
            dropped (0: dropped at the first miss). After a scene cut unmatched tracks are
            dropped at once.
        min_face_px: detections whose box side (max of w, h) is smaller are ignored.
        roi_scale: crop scale of the artifact's preprocessing (``PreprocessCfg.roi_scale``).
        max_size_ratio: a fit ROI whose side differs from the previous ROI by more than this
            factor (either way) is implausible: the track is lost and the detector runs. Also
            the largest size ratio of a track's crop and a detection's crop that can associate.
        min_fit_iou: a fit ROI overlapping the previous ROI less than this is implausible.
        min_inside: a track whose (plausible) fit ROI has less than this fraction of its area
            inside the image has left it and is dropped.
        scene_cut_threshold: :class:`SceneCutDetector` threshold; None disables cut detection.
    """

    detect_every: int = 10
    recheck_every: int = 2
    max_faces: int = 4
    iou_match: float = 0.2
    keep_fit_iou: float = 0.6
    max_misses: int = 2
    min_face_px: float = 20.0
    roi_scale: float = math.sqrt(2.0)
    max_size_ratio: float = 1.5
    min_fit_iou: float = 0.3
    min_inside: float = 0.05
    scene_cut_threshold: float | None = SCENE_CUT_THRESHOLD

    def __post_init__(self) -> None:
        if self.detect_every < 1 or self.recheck_every < 1:
            raise ValueError("detect_every and recheck_every must be >= 1")
        if self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {self.max_faces}")
        if self.max_misses < 0:
            raise ValueError(f"max_misses must be >= 0, got {self.max_misses}")
        for name in ("iou_match", "keep_fit_iou", "min_fit_iou", "min_inside"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.iou_match <= 0:
            raise ValueError("iou_match must be > 0")
        if not self.roi_scale > 0 or self.min_face_px < 0:
            raise ValueError("roi_scale must be positive and min_face_px non-negative")
        if not self.max_size_ratio >= 1.0:
            raise ValueError(f"max_size_ratio must be >= 1, got {self.max_size_ratio}")


FaceDetector = Callable[[np.ndarray], Sequence[Detection]]


@dataclass
class _Track:
    track_id: int
    box: CropBox
    source: str
    is_new: bool = True
    misses: int = 0
    lost: bool = False
    anchor: CropBox | None = None  # the crop of the last detection matched to this track

    def __post_init__(self) -> None:
        if self.anchor is None:
            self.anchor = self.box


class FaceTracker:
    """Detect-and-track: one square network crop per face per frame, with stable ids.

    Args:
        cfg: :class:`TrackerCfg`.
        detector: ``detector(image_rgb) -> Sequence[Detection]`` (e.g.
            :class:`MediaPipeFaceDetector`). Its ``box_calibration`` attribute, if any, maps
            its boxes to crops (:func:`crop_box_from_detection`); else the full-range one.

    Per frame the pipeline calls :meth:`begin` (crops for this frame), runs the network on
    them, and calls :meth:`end` with the fitted 68 landmarks per track (the next frame's
    crops). See the module docstring for the rules. Deterministic, numpy only.
    """

    def __init__(self, cfg: TrackerCfg, detector: FaceDetector) -> None:
        self.cfg = cfg
        self.detector = detector
        self.calibration: DetectionBoxCalibration = getattr(detector, "box_calibration", FULL_RANGE_BOX_CALIBRATION)
        self.scene_cuts = SceneCutDetector(cfg.scene_cut_threshold) if cfg.scene_cut_threshold is not None else None
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._last_detect: int | None = None
        self._last_index: int | None = None
        self._size: tuple[int, int] | None = None  # (W, H) of the current frame
        self._active: set[int] = set()  # ids returned by the last begin()
        #: The detector ran in the last :meth:`begin`.
        self.last_detected = False
        #: The last :meth:`begin` saw a scene cut.
        self.last_scene_cut = False
        #: Detections (after the ``min_face_px`` filter) of the last detection round.
        self.last_detections: list[Detection] = []
        #: Number of detector calls so far.
        self.detector_calls = 0

    # -------------------------------------------------------------- public
    @property
    def track_ids(self) -> list[int]:
        """Ids of all live tracks (including lost ones waiting for a detection)."""
        return [t.track_id for t in self._tracks]

    @property
    def next_id(self) -> int:
        """The id the next new track gets (ids only increase; set it to continue a resumed run)."""
        return self._next_id

    @next_id.setter
    def next_id(self, value: int) -> None:
        value = int(value)
        if value < self._next_id:
            raise ValueError(f"next_id {value} could reuse an id already given out (must be >= {self._next_id})")
        self._next_id = value

    def close(self) -> None:
        """Close the detector (if it has ``close``); the tracker is not used afterwards."""
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()

    def reset(self) -> None:
        """Forget all tracks and the previous frame (ids keep increasing)."""
        self._tracks = []
        self._last_detect = self._last_index = self._size = None
        self._active = set()
        if self.scene_cuts is not None:
            self.scene_cuts.reset()

    def begin(self, frame: Frame) -> list[TrackROI]:
        """Crops for this frame, one per tracked face, ordered by track id.

        Runs the detector when there are no tracks, a track was lost in the last
        :meth:`end` or missed by the last detection round beyond the recheck interval, the
        schedule is due (frame indices), the index went backwards, or at a scene cut.
        """
        image = _check_image(frame.image, "FaceTracker.begin")
        cfg = self.cfg
        index = int(frame.index)
        self._size = (image.shape[1], image.shape[0])
        cut = bool(self.scene_cuts(image)) if self.scene_cuts is not None else False
        last = self._last_detect
        interval = min(cfg.recheck_every, cfg.detect_every) if any(t.misses for t in self._tracks) else cfg.detect_every
        detect = (
            cut
            or last is None
            or not self._tracks
            or any(t.lost for t in self._tracks)
            or (self._last_index is not None and index < self._last_index)
            or index - last >= interval
        )
        self._last_index = index
        self.last_scene_cut = cut
        self.last_detected = detect
        if detect:
            dets = list(self.detector(image))
            self.detector_calls += 1
            self._last_detect = index
            self._associate(dets, cut)
        self._active = {t.track_id for t in self._tracks if not t.lost}
        return [
            TrackROI(t.track_id, t.box, t.source, t.is_new)
            for t in sorted(self._tracks, key=lambda t: t.track_id)
            if not t.lost
        ]

    def end(self, fits: Mapping[int, np.ndarray | None]) -> None:
        """Update the crops from this frame's fits: ``fits[track_id]`` = (68, 2) image px or None.

        A missing id counts as a failed fit. A failed or implausible fit (size ratio, IoU
        with the current crop) marks the track lost (the detector runs next frame; the track
        keeps its id if a detection associates with its last crop). A plausible crop that
        has left the image drops the track. Ids that :meth:`begin` did not return raise.
        """
        if self._size is None:
            raise RuntimeError("FaceTracker.end() called before begin()")
        unknown = set(fits) - self._active
        if unknown:
            raise ValueError(f"fits for track ids {sorted(unknown)} that the last begin() did not return")
        cfg = self.cfg
        W, H = self._size
        keep = []
        for t in self._tracks:
            if t.track_id in self._active:
                t.is_new = False
                new = self._fit_box(fits.get(t.track_id))
                if new is None or not self._plausible(t.box, new):
                    t.lost = True
                elif box_inside_fraction(new, W, H) < cfg.min_inside:
                    logger.debug("track %d left the image", t.track_id)
                    continue
                else:
                    t.box, t.source = new, "fit"
            keep.append(t)
        self._tracks = keep
        self._active = set()

    # -------------------------------------------------------------- internals
    def _fit_box(self, landmarks: np.ndarray | None) -> CropBox | None:
        if landmarks is None:
            return None
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.ndim != 2 or lm.shape[1] < 2 or lm.shape[0] < 2:
            raise ValueError(f"fitted landmarks must be (L, 2) image pixels, got shape {lm.shape}")
        if not np.all(np.isfinite(lm[:, :2])):
            return None
        try:
            return box_from_points(lm[:, :2], self.cfg.roi_scale)
        except ValueError:  # degenerate (all points coincide)
            return None

    def _plausible(self, old: CropBox, new: CropBox) -> bool:
        ratio = new.size / old.size
        r = self.cfg.max_size_ratio
        return 1.0 / r <= ratio <= r and box_iou(old, new) >= self.cfg.min_fit_iou

    def _associate(self, dets: list[Detection], cut: bool) -> None:
        cfg = self.cfg
        dets = [d for d in dets if _box_side(d) >= cfg.min_face_px]
        self.last_detections = dets
        crops = [crop_box_from_detection(d, cfg.roi_scale, self.calibration) for d in dets]
        tracks = self._tracks
        r = cfg.max_size_ratio
        # A track matches a detection through its current ROI or through its anchor (the crop of the
        # detection it last matched): a fit that drifts between detections (a biased or untrained
        # network feeding its own ROI) must not cost the face its id. Outside scene cuts only.
        def overlap(t: _Track, c: CropBox) -> float:
            boxes = (t.box,) if cut else (t.box, t.anchor)
            return max((box_iou(b, c) for b in boxes if 1.0 / r <= c.size / b.size <= r), default=0.0)

        pairs = sorted(
            ((overlap(t, c), ti, di) for ti, t in enumerate(tracks) for di, c in enumerate(crops)),
            key=lambda p: (-p[0], tracks[p[1]].track_id, p[2]),
        )
        t_used: set[int] = set()
        d_used: set[int] = set()
        for iou, ti, di in pairs:
            if iou < cfg.iou_match:
                break
            if ti in t_used or di in d_used:
                continue
            t_used.add(ti)
            d_used.add(di)
            t = tracks[ti]
            if cut or t.lost or t.source != "fit" or box_iou(t.box, crops[di]) < cfg.keep_fit_iou:
                t.box, t.source = crops[di], "detector"
            t.misses, t.lost, t.anchor = 0, False, crops[di]
        kept = []
        for ti, t in enumerate(tracks):
            if ti not in t_used:
                t.misses += 1
                if cut or t.misses > cfg.max_misses:
                    logger.debug("track %d dropped (%s)", t.track_id, "scene cut" if cut else "missed")
                    continue
            kept.append(t)
        # new faces: largest first, not overlapping any track, up to max_faces
        for di in sorted(set(range(len(dets))) - d_used, key=lambda i: (-crops[i].size, i)):
            if len(kept) >= cfg.max_faces:
                break
            if any(box_iou(crops[di], t.box) >= cfg.iou_match for t in kept):
                continue
            kept.append(_Track(self._next_id, crops[di], "detector"))
            self._next_id += 1
        self._tracks = kept


def _box_side(det: Detection) -> float:
    b = np.asarray(det.box, dtype=np.float64).reshape(-1)
    return float(max(b[2] - b[0], b[3] - b[1]))
