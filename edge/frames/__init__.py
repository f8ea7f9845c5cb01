"""Frame sources of the edge runtime: video files, cameras, image folders, single images.

Every source is an iterable of :class:`~mlanet.edge.types.Frame` records: ``image`` (H, W, 3)
uint8 RGB C-contiguous, ``index`` (0-based; gaps mean frames were dropped or skipped),
``t_capture_ns`` and ``source``. Sources are context managers; ``close()`` is idempotent.

* :class:`VideoFileSource` — PyAV (FFmpeg) decoding of any container/codec FFmpeg reads
  (H.264, HEVC, MJPEG, VP9, ...). Display rotation (phone videos) is applied. A damaged or
  truncated file yields every frame FFmpeg can decode (damaged packets are skipped, as the
  ``ffmpeg`` tool does); :attr:`FrameSource.lost_frames` and :attr:`FrameSource.damaged` say
  which frames were lost, :attr:`FrameSource.stopped_early` where reading ended early.
* :class:`CameraSource` — OpenCV capture read by a background thread into a
  :class:`LatestFrameBuffer` (one slot, newest frame wins), so latency never accumulates.
* :class:`LiveReplaySource` — replays any finite source in real time through the same
  producer thread + latest-frame buffer, so a file can stand in for a camera.
* :class:`ImageFolderSource`, :class:`ImageSource` — still images (jpg, jpeg, png, bmp, webp),
  unrelated to each other by default (``Frame.independent``, ``Frame.name``): fitted one by one.
* :class:`ArraySource` — in-memory images (tests, synthetic input).
* :func:`open_source` — picks one from a user's ``--source`` string.

Timestamps (``t_capture_ns``)
    Live sources: ``time.monotonic_ns()`` when the frame was grabbed. Files: presentation time
    in ns from the start of the video stream. Image folders: ``index * 1e9 / fps``, with a
    nominal 1 frame per second when no ``fps`` is given (large gaps, so time-based temporal
    filters treat unrelated photos as unrelated). A single image: 0.

Threading
    File and image sources are plain generators: use (and ``close()``) them from one thread.
    Live sources are safe to ``close()`` from any thread; a consumer blocked waiting for a
    frame wakes up and its loop ends.

Heavy libraries (``av``, ``cv2``, ``PIL``) are imported inside the functions that use them,
so importing this package costs nothing beyond numpy.

Modules: :mod:`.base` (the base class, constants), :mod:`.stills` (images, folders, arrays),
:mod:`.video` (PyAV), :mod:`.live` (latest-frame buffer, cameras, real-time replay); this module
re-exports them and picks one from a user's spec (:func:`open_source`).
"""

from __future__ import annotations

import re
from pathlib import Path

from mlanet.edge.types import Frame, SourceError
from mlanet.edge.frames.base import DEFAULT_MAX_PIXELS, FrameSource, IMAGE_SUFFIXES, NOMINAL_FOLDER_FPS
from mlanet.edge.frames.live import CameraSource, LatestFrameBuffer, LiveReplaySource, LiveSource
from mlanet.edge.frames.stills import ArraySource, ImageFolderSource, ImageSource, format_frame_ranges, letterbox, read_image, to_rgb_uint8
from mlanet.edge.frames.video import VideoFileSource

# --------------------------------------------------------------------------------------------
# Choosing a source from a user's spec
# --------------------------------------------------------------------------------------------

_CAMERA_SPEC = re.compile(r"(?:camera:)?(\d+)|/dev/video(\d+)", re.IGNORECASE)


def open_source(
    spec: int | str | Path,
    *,
    live: bool = False,
    start_frame: int = 0,
    fps: float | None = None,
    width: int | None = None,
    height: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    image_sequence: bool = False,
) -> FrameSource:
    """Open a frame source from a ``--source`` value.

    * an int, a digit string (``"0"``), ``"camera:N"`` or ``/dev/videoN`` -> :class:`CameraSource`
      (a file literally named ``0`` is ``./0``);
    * a folder -> :class:`ImageFolderSource` (unrelated photos, or with ``image_sequence`` the
      frames of one video);
    * an existing file with an image suffix (:data:`IMAGE_SUFFIXES`) -> :class:`ImageSource`;
    * any other existing file -> :class:`VideoFileSource`.

    Args:
        live: wrap a file/folder source in :class:`LiveReplaySource` (cameras are always live).
        start_frame: resume a video file or folder at this frame (not for cameras).
        fps: camera: requested rate; live replay: replay rate (default the file's); image folder:
            the rate for its timestamps.
        width, height: requested camera resolution.
        max_pixels: limit for still images.
        image_sequence: read a folder as consecutive video frames (tracking across them)
            instead of unrelated photos.

    Raises:
        SourceError: missing path ("no such file or folder") or anything the chosen source raises.
        ValueError: ``start_frame`` for a camera.
    """
    camera = None
    if isinstance(spec, bool):
        raise TypeError("spec must be a camera index, path or string, not bool")
    if isinstance(spec, int):
        camera = spec
    elif isinstance(spec, str) and (m := _CAMERA_SPEC.fullmatch(spec.strip())):
        camera = int(m.group(1) or m.group(2))
    if camera is not None:
        if start_frame:
            raise ValueError("start_frame applies to video files and image folders, not to cameras")
        return CameraSource(camera, width, height, fps)
    assert not isinstance(spec, int)  # an int is a camera (returned above)

    path = Path(spec).expanduser()
    if path.is_dir():
        source: FrameSource = ImageFolderSource(
            path, fps=None if live else fps, start_frame=start_frame, max_pixels=max_pixels, sequence=image_sequence
        )
    elif not path.exists():
        raise SourceError(f"{spec}: no such file or folder")
    elif path.suffix.lower() in IMAGE_SUFFIXES:
        if start_frame:
            raise ValueError("start_frame applies to video files and image folders, not to a single image")
        source = ImageSource(path, max_pixels=max_pixels)
    else:
        source = VideoFileSource(path, start_frame=start_frame)
    return LiveReplaySource(source, fps=fps) if live else source


__all__ = [
    "ArraySource",
    "CameraSource",
    "DEFAULT_MAX_PIXELS",
    "Frame",
    "FrameSource",
    "IMAGE_SUFFIXES",
    "ImageFolderSource",
    "ImageSource",
    "LatestFrameBuffer",
    "LiveReplaySource",
    "LiveSource",
    "NOMINAL_FOLDER_FPS",
    "SourceError",
    "VideoFileSource",
    "format_frame_ranges",
    "letterbox",
    "open_source",
    "read_image",
    "to_rgb_uint8",
]
