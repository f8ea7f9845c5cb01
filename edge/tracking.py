"""Face tracking: where to crop each face in each frame.

Detections come from :mod:`mlanet.edge.face_detection` (:class:`~mlanet.edge.face_detection.MediaPipeFaceDetector`,
:func:`~mlanet.edge.face_detection.crop_box_from_detection`), scene cuts from :mod:`mlanet.edge.scene_cuts`.

Tracker (:class:`FaceTracker`, :class:`TrackerCfg`)
    ``rois = tracker.begin(frame)`` gives one square crop per tracked face;
    ``tracker.end({track_id: landmarks68 or None})`` turns this frame's fits into the next
    frame's crops. Rules:

    - The detector runs when there is no track, a track was lost (failed or implausible
      fit), the schedule is due (``frame.index - last_detect >= detect_every``; indices, so
      dropped frames count; ``recheck_every`` while a track is unconfirmed after a miss),
      the index went backwards, or at a scene cut.
    - Scheduled detections (every track live, no cut) run in the background
      (``detect_in_background``): on a worker thread while the pipeline fits the frame, and
      are associated at the next :meth:`~FaceTracker.begin`, which waits for them. Their boxes
      are one frame old, as the fit ROIs they are matched with (made from the same frame's
      fits); a new face gets its first crop one frame later. The detector's ~6 ms then no
      longer lands on one frame's time, and a run's results stay the same from run to run.
      Detections the tracker needs at once (no track, a lost track, a cut) run in the frame.
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from mlanet.preprocess import CropBox, box_from_points
from mlanet.edge.types import Detection, Frame, TrackROI
from mlanet.edge.face_detection import (FULL_RANGE_BOX_CALIBRATION, DetectionBoxCalibration, _check_image, box_inside_fraction,
                             box_iou, crop_box_from_detection)
from mlanet.edge.scene_cuts import SCENE_CUT_THRESHOLD, SceneCutDetector

logger = logging.getLogger(__name__)

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
        detect_in_background: run scheduled detections on a worker thread and associate them
            at the next frame (see the module docstring); False runs every detection in the
            frame that scheduled it.
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
    detect_in_background: bool = True

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
        #: Number of detector calls so far (background ones counted when started).
        self.detector_calls = 0
        self._worker: ThreadPoolExecutor | None = None  # the background detection's thread (created on first use)
        self._pending: Future[list[Detection]] | None = None  # a background detection not yet associated

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
        """Wait for a background detection, stop its thread and close the detector (if it has
        ``close``); the tracker is not used afterwards."""
        self._drop_pending()
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()

    def reset(self) -> None:
        """Forget all tracks and the previous frame (ids keep increasing)."""
        self._drop_pending()
        self._tracks = []
        self._last_detect = self._last_index = self._size = None
        self._active = set()
        if self.scene_cuts is not None:
            self.scene_cuts.reset()

    def begin(self, frame: Frame) -> list[TrackROI]:
        """Crops for this frame, one per tracked face, ordered by track id.

        First associates the background detection started at the previous frame (waiting for
        it), unless this frame is a cut or goes backwards. Then runs the detector in the frame
        when there are no tracks, a track is lost, the index went backwards or at a scene cut;
        when only the schedule is due (frame indices; the recheck interval while a track is
        unconfirmed after a miss) it starts the detection in the background (or runs it here
        with ``detect_in_background=False``). :attr:`last_detected` is True when this frame's
        crops include a detection round (run here or finished in the background).
        """
        image = _check_image(frame.image, "FaceTracker.begin")
        cfg = self.cfg
        index = int(frame.index)
        self._size = (image.shape[1], image.shape[0])
        cut = bool(self.scene_cuts(image)) if self.scene_cuts is not None else False
        backwards = self._last_index is not None and index < self._last_index
        detected = False
        if self._pending is not None:
            dets = self._take_pending()
            if not (cut or backwards):  # a cut or a jump back detects this frame instead
                self._associate(dets, False)
                detected = True
        last = self._last_detect
        interval = min(cfg.recheck_every, cfg.detect_every) if any(t.misses for t in self._tracks) else cfg.detect_every
        needed_now = cut or backwards or last is None or not self._tracks or any(t.lost for t in self._tracks)
        scheduled = not needed_now and last is not None and index - last >= interval
        self._last_index = index
        self.last_scene_cut = cut
        if needed_now or (scheduled and not cfg.detect_in_background):
            dets = list(self.detector(image))
            self.detector_calls += 1
            self._last_detect = index
            self._associate(dets, cut)
            detected = True
        elif scheduled:
            self._start_background(image)
            self._last_detect = index
        self.last_detected = detected
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
    def _start_background(self, image: np.ndarray) -> None:
        """Run the detector on a copy of ``image`` on the worker thread (the caller may reuse the frame)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlanet-detect")
        copy = image.copy()
        self._pending = self._worker.submit(lambda: list(self.detector(copy)))
        self.detector_calls += 1

    def _take_pending(self) -> list[Detection]:
        """Wait for the background detection and return its detections (its error, if any, is raised here)."""
        pending, self._pending = self._pending, None
        assert pending is not None
        return pending.result()

    def _drop_pending(self) -> None:
        """Wait for a background detection (the detector is used by one thread at a time) and discard it."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.exception()  # waits; a failure of a discarded detection does not matter

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
            boxes = (t.box,) if cut or t.anchor is None else (t.box, t.anchor)
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
