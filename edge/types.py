"""Records that flow between the edge runtime's stages (one definition, imported everywhere).

Shapes use the project's letters: H W image size, V vertices, L landmarks. Pixels follow
:mod:`mlanet.conventions` (origin top-left, pixel centres at integer + 0.5); 3D points are in
the *frame camera* (OpenCV: +x right, +y down, +z forward), metres.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox


class SourceError(MLANetError):
    """A frame source cannot be opened or read (missing camera, unreadable or damaged file)."""


class RuntimeStageError(MLANetError):
    """A pipeline stage cannot run (missing optional dependency, no GL context, ...)."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        image: (H, W, 3) uint8 RGB, C-contiguous.
        index: 0-based frame number within its source (gaps mean frames were dropped).
        t_capture_ns: monotonic capture time (``time.monotonic_ns()`` when the frame was
            grabbed for live sources; for files the presentation time in ns from the start).
        source: a human-readable name of the source (path or ``camera:0``).
        name: the file name of the still image this frame was read from (photo folders and
            single images, e.g. ``"IMG_0042.jpg"``); None for video and camera frames.
        independent: True when the frame is unrelated to the frames before it (the photos of
            a folder, a single image): the pipeline then detects faces afresh, with no track
            continuity and no temporal filtering across frames (each face gets its own id).
        yuv420: optional (H * 3 / 2, W) uint8 I420 planes the frame was decoded from, when they
            are BT.709 limited range (``image`` is their RGB); the overlay writer reuses them for
            the pixels the overlay leaves unchanged. None for other sources and colour spaces.
    """

    image: np.ndarray
    index: int
    t_capture_ns: int
    source: str
    name: str | None = None
    independent: bool = False
    yuv420: np.ndarray | None = None

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass(frozen=True)
class Detection:
    """A face found by a detector.

    Attributes:
        box: (4,) float64 ``x0, y0, x1, y1`` in image pixels (continuous coordinates).
        score: detector confidence in [0, 1].
        keypoints: optional (K, 2) float64 image pixels (MediaPipe: 6 points).
    """

    box: np.ndarray
    score: float
    keypoints: np.ndarray | None = None


@dataclass(frozen=True)
class TrackROI:
    """Where to crop one tracked face in the current frame.

    Attributes:
        track_id: stable id of the face (0, 1, 2, ... in order of first appearance).
        box: the square network crop in image pixels (ROI scale already applied).
        source: ``"detector"`` (placed from a detection this frame) or ``"fit"`` (from the
            previous frame's fitted landmarks).
        is_new: True on the first frame of the track.
    """

    track_id: int
    box: CropBox
    source: str
    is_new: bool = False


@dataclass
class FaceFit:
    """One face fitted in one frame, in the frame camera.

    Attributes:
        track_id: the tracker's id.
        box: the crop the network saw.
        params: flat parameters (P,) float32 in the frame camera (``ParamLayout`` order);
            pose already converted from the crop camera, after temporal filtering if enabled.
        raw_params: the same before temporal filtering.
        vertices: (V, 3) float32 metres, frame camera; None when the pipeline makes no meshes
            (``PipelineCfg.meshes`` False and nothing rendered: parameters and landmarks only).
        landmarks2d: (68, 2) float32 image pixels.
        extras: anything a stage wants to attach (e.g. per-vertex colours for rendering).
    """

    track_id: int
    box: CropBox
    params: np.ndarray
    raw_params: np.ndarray
    vertices: np.ndarray | None
    landmarks2d: np.ndarray
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class FrameResult:
    """Everything the pipeline produced for one frame.

    Attributes:
        frame: the input frame.
        faces: one :class:`FaceFit` per tracked face.
        stage_ms: milliseconds spent per stage on this frame (stage name -> ms).
        rendered: (H, W, 3) uint8 RGB overlay, when the render stage ran.
        rendered_box: ``(x0, y0, x1, y1)`` pixels (end exclusive) outside which ``rendered``
            equals ``frame.image`` (``(0, 0, 0, 0)``: nothing drawn); None: anywhere.
        scene_cut: the tracker saw a scene cut at this frame.
        detected: the detector ran on this frame.
    """

    frame: Frame
    faces: list[FaceFit]
    stage_ms: dict[str, float] = field(default_factory=dict)
    rendered: np.ndarray | None = None
    rendered_box: tuple[int, int, int, int] | None = None
    scene_cut: bool = False
    detected: bool = False
