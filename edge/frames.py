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
so importing this module costs nothing beyond numpy.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import logging
import math
import re
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from .types import Frame, SourceError

log = logging.getLogger(__name__)

#: Suffixes (lower case) treated as still images by :class:`ImageFolderSource` and :func:`open_source`.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

#: Default limit on the pixel count of a still image (larger ones raise :class:`SourceError`).
DEFAULT_MAX_PIXELS = 50_000_000

#: Timestamp spacing of an image folder without an ``fps`` (1 frame per second).
NOMINAL_FOLDER_FPS = 1.0

_NS = 1_000_000_000


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class FrameSource:
    """Base of all frame sources: an iterable of :class:`Frame` with a few descriptive attributes.

    Attributes:
        name: human-readable name (the path as given, or ``camera:N``); used in messages.
        fps: nominal frames per second, or None when unknown / not meaningful.
        size: ``(W, H)`` of the frames in pixels, or None before the first frame when unknown.
            Image folders may mix sizes: then it is the size of the latest frame.
        n_frames: number of frames, or None when unknown (cameras). For video files this is a
            best-effort hint from the container, not a promise (see :class:`VideoFileSource`).
        is_live: True for sources that drop stale frames (cameras, live replay).
        independent_frames: True when the frames are unrelated stills (a photo folder, a single
            image): each :class:`Frame` then has ``independent=True`` and its file ``name``, and
            the pipeline fits every frame on its own (no tracking or filtering across frames).
        stopped_early: None, or (after iteration ended) a human message when a damaged input
            stopped decoding before its end.
        lost_frames: (after iteration) 0-based indices of the frames that were lost to damage
            and skipped (video packets that could not be decoded; unreadable photos of a folder).
            The frames around them are still yielded; ``index`` leaves a gap for each.
        damaged: None, or (after iteration ended) one human message when the input was damaged
            in any way: frames lost (:attr:`lost_frames`), decoding errors, or an early stop
            (:attr:`stopped_early`). Consumers report a run over a damaged input with it.

    Subclasses implement :meth:`_frames` (a generator) and extend :meth:`close`.
    """

    name: str = ""
    fps: float | None = None
    size: tuple[int, int] | None = None
    n_frames: int | None = None
    is_live: bool = False
    independent_frames: bool = False
    stopped_early: str | None = None
    lost_frames: tuple[int, ...] = ()
    damaged: str | None = None
    _closed: bool = False

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"{self.name}: the frame source is closed")
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the source (files, devices, threads). Idempotent."""
        self._closed = True

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, size={self.size}, fps={self.fps}, "
            f"n_frames={self.n_frames}, is_live={self.is_live})"
        )


# --------------------------------------------------------------------------------------------
# Pixel conversion and still images
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = True, where: str = "image") -> np.ndarray:
    """Any decoded image as (H, W, 3) uint8 RGB, C-contiguous.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array; uint8, uint16 (scaled to
            0..255 with rounding) or float (taken as [0, 1], clipped). Colour order BGR(A)
            when ``bgr`` (OpenCV), else RGB(A). Alpha is dropped (not composited).
        where: name used in error messages.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise SourceError(f"{where}: unsupported image layout {arr.shape} (expected H x W, H x W x 3 or H x W x 4)")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise SourceError(f"{where}: unsupported pixel type {arr.dtype} (expected 8- or 16-bit, or float)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif bgr:
        arr = arr[:, :, 2::-1]  # B G R (A) -> R G B
    else:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _header_size(path: Path, max_pixels: int) -> tuple[int, int] | None:
    """(W, H) from the image header via Pillow without decoding pixels; None if Pillow cannot tell."""
    try:
        from PIL import Image
    except ImportError:  # pillow is a dependency, but the check is only an early exit
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise SourceError(
            f"{path}: image is too large to process ({exc}); the limit is "
            f"{max_pixels / 1e6:g} megapixels (max_pixels) - downscale it first"
        ) from None
    except Exception:  # noqa: BLE001 - unknown to Pillow: OpenCV gets its chance below
        return None


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one still image as (H, W, 3) uint8 RGB (C-contiguous).

    EXIF orientation is applied; greyscale, RGBA and 16-bit images are converted. The pixel
    count is checked against ``max_pixels`` from the header (Pillow) before decoding when
    possible. Bytes are read by Python and decoded with ``cv2.imdecode``, so any path
    (unicode included) works.

    Raises:
        SourceError: missing file, a folder, not a decodable image, or more than ``max_pixels``
            pixels; the message names the file.
    """
    import cv2

    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, not an image file")
    size = _header_size(path, max_pixels)
    if size is not None:
        _check_pixels(path, size, max_pixels)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise SourceError(f"{path}: is empty (0 bytes), not an image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise SourceError(
            f"{path}: is not a readable image (OpenCV cannot decode its {len(data)} bytes; "
            f"supported: {', '.join(sorted(IMAGE_SUFFIXES))}); the file may be damaged or not an image"
        )
    _check_pixels(path, (image.shape[1], image.shape[0]), max_pixels)
    return to_rgb_uint8(image, bgr=True, where=str(path))


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise SourceError(
            f"{path}: image is {w}x{h} ({w * h / 1e6:.1f} megapixels), more than the limit of "
            f"{max_pixels / 1e6:g} megapixels; downscale it first or raise max_pixels"
        )


def _natural_key(path: Path) -> list[Any]:
    """Sort key ``img2.png`` < ``img10.png``; case-insensitive."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def format_frame_ranges(indices: Sequence[int], *, limit: int = 20) -> str:
    """Frame indices as short ranges: ``[0, 1, 2, 3, 7, 9, 10]`` -> ``"0-3, 7, 9-10"``.

    At most ``limit`` ranges are written; the rest are summarised (``", ... (+N more)"``).
    """
    values = sorted(set(int(i) for i in indices))
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    if len(runs) > limit:
        text += f", ... (+{sum(b - a + 1 for a, b in runs[limit:])} more)"
    return text


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (h, w, 3) uint8 scaled to fit inside ``width`` x ``height`` pixels, keeping its
    aspect ratio, and centred on black: (height, width, 3) uint8, C-contiguous.

    Used to put stills of different sizes into one overlay video. An image that already has the
    size is returned unchanged (no copy). Downscaling uses area averaging, upscaling bilinear.
    """
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if width < 1 or height < 1:
        raise ValueError(f"letterbox size must be positive, got {width}x{height}")
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


class ImageSource(FrameSource):
    """One still image as a one-frame source (``index`` 0, ``t_capture_ns`` 0).

    The image is read in the constructor, so a bad file fails at once. The source can be
    iterated any number of times. The frame is an independent still (``independent=True``,
    ``name`` = the file name; :attr:`independent_frames` is True).

    Raises:
        SourceError: see :func:`read_image`.
    """

    def __init__(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        self.name = str(path)
        self._image = read_image(self.path, max_pixels=max_pixels)
        self.size = (self._image.shape[1], self._image.shape[0])
        self.n_frames = 1
        self.independent_frames = True

    def _frames(self) -> Iterator[Frame]:
        if not self._closed:
            yield Frame(self._image, 0, 0, self.name, name=self.path.name, independent=True)


class ImageFolderSource(FrameSource):
    """The still images of one folder (not recursive), in natural sort order of their names.

    Files with a suffix in :data:`IMAGE_SUFFIXES` (case-insensitive) are used; other files and
    hidden files (``.name``) are ignored. A file among them that cannot be read (damaged, not
    an image, too large) is **skipped** with a ``logging`` warning naming it and counted in
    :attr:`skipped` / :attr:`skipped_files`: one bad photo should not stop a batch. Only when
    no image at all could be read does iteration raise :class:`SourceError`.

    ``index`` is the position in the sorted list (skipped files leave gaps; ``start_frame``
    resumes at that position), ``source`` of each frame is the image's own path, ``name`` its
    file name, and ``t_capture_ns = round(index * 1e9 / fps)`` with ``fps`` (or
    :data:`NOMINAL_FOLDER_FPS` when ``fps`` is None; then :attr:`fps` stays None). Images keep
    their own sizes. Skipped files are also listed in :attr:`lost_frames` and :attr:`damaged`.

    By default the folder is a set of **unrelated photos** (``independent=True`` on every frame,
    :attr:`independent_frames`): each is fitted on its own, nothing is tracked or averaged
    across photos. ``sequence=True`` reads it as the frames of one video instead (extracted
    frames ``frame_0001.png`` ...: tracking and temporal filtering as for a video file).

    Raises:
        SourceError: the folder is missing, is not a folder, or holds no image files.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        fps: float | None = None,
        start_frame: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        sequence: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self.independent_frames = not sequence
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        if not self.folder.exists():
            raise SourceError(f"{self.folder}: no such folder")
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: is not a folder")
        try:
            entries = list(self.folder.iterdir())
        except OSError as exc:
            raise SourceError(f"{self.folder}: cannot be listed ({exc.strerror or exc})") from exc
        self.paths: list[Path] = sorted(
            (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=_natural_key,
        )
        if not self.paths:
            raise SourceError(
                f"{self.folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
                f"the folder has {len(entries)} other entries)"
            )
        self.fps = fps
        self.start_frame = start_frame
        self.max_pixels = max_pixels
        self.n_frames = len(self.paths)
        self.skipped = 0
        self.skipped_files: list[Path] = []

    def _frames(self) -> Iterator[Frame]:
        self.skipped, self.skipped_files, self.stopped_early, self.damaged = 0, [], None, None
        self.lost_frames = ()
        lost: list[int] = []
        period_ns = _NS / (self.fps or NOMINAL_FOLDER_FPS)
        read, first_error = 0, None
        for index in range(self.start_frame, len(self.paths)):
            if self._closed:
                return
            path = self.paths[index]
            try:
                image = read_image(path, max_pixels=self.max_pixels)
            except SourceError as exc:
                log.warning("skipping %s", exc)
                self.skipped += 1
                self.skipped_files.append(path)
                lost.append(index)
                self.lost_frames = tuple(lost)
                first_error = first_error or exc
                continue
            read += 1
            self.size = (image.shape[1], image.shape[0])
            yield Frame(image, index, round(index * period_ns), str(path), name=path.name,
                        independent=self.independent_frames)
        if read == 0 and first_error is not None:
            raise SourceError(f"{self.folder}: none of its {self.skipped} images could be read (first: {first_error})")
        if self.skipped:
            names = ", ".join(p.name for p in self.skipped_files[:10]) + (", ..." if self.skipped > 10 else "")
            self.damaged = (
                f"{self.folder}: {self.skipped} of {len(self.paths) - self.start_frame} images could not be read and "
                f"were skipped (frames {format_frame_ranges(lost)}: {names}; first error: {first_error})"
            )


class ArraySource(FrameSource):
    """In-memory images as a finite source (synthetic input, tests).

    Args:
        images: a sequence of (H, W, 3) uint8 RGB arrays (other layouts/dtypes are converted as
            in :func:`to_rgb_uint8` with RGB order).
        fps: frame rate for the timestamps ``round(index * 1e9 / fps)``; None: 1 frame per second
            spacing and :attr:`fps` None.
        independent: the images are unrelated stills (like a photo folder): frames carry
            ``independent=True`` and ``name`` ``"<name>[<index>]"``.
    """

    def __init__(
        self, images: Sequence[np.ndarray], *, fps: float | None = None, name: str = "arrays", independent: bool = False
    ) -> None:
        self._images = images
        self.name = name
        self.fps = fps
        self.independent_frames = bool(independent)
        self.n_frames = len(images)
        if len(images):
            self.size = (int(images[0].shape[1]), int(images[0].shape[0]))

    def _frames(self) -> Iterator[Frame]:
        period_ns = _NS / (self.fps or NOMINAL_FOLDER_FPS)
        for index, image in enumerate(self._images):
            if self._closed:
                return
            rgb = to_rgb_uint8(image, bgr=False, where=f"{self.name}[{index}]")
            self.size = (rgb.shape[1], rgb.shape[0])
            still = f"{self.name}[{index}]" if self.independent_frames else None
            yield Frame(rgb, index, round(index * period_ns), self.name, name=still,
                        independent=self.independent_frames)


# --------------------------------------------------------------------------------------------
# Video files (PyAV)
# --------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
    """``TypeName: plain message`` (FFmpeg errors without the errno number and call site)."""
    msg = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {msg}"


def _why_unreadable(path: Path, exc: BaseException) -> str:
    """Plain words for an FFmpeg error on open ("Invalid data found when processing input", ...)."""
    import av

    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        head = b""
    ffmpeg = f"FFmpeg: {getattr(exc, 'strerror', None) or exc}"
    if not head:
        return "the file is empty (0 bytes)"
    if head[4:8] == b"ftyp":
        return (
            f"{ffmpeg}; it starts like an MP4/MOV file but its index (the 'moov' atom) is missing or "
            "incomplete, so it is most likely truncated (an interrupted recording, copy or download) or damaged"
        )
    if isinstance(exc, av.error.DecoderNotFoundError):
        return f"{ffmpeg}; its codec cannot be decoded by this FFmpeg build, or the file is truncated or damaged"
    return f"{ffmpeg}; it is not a video file, or it is truncated or damaged"


class _OpenVideo:
    """An opened container, its packet-by-packet decoder and what the decoder met so far.

    Attributes:
        container, stream: the PyAV container and its (first) video stream.
        frames: the rest of ``VideoFileSource._decode(self)``: ``(index, av_frame)`` pairs.
        first: the first ``(index, av_frame)`` (pulled on open); ``first_image`` its (H, W, 3)
            uint8 RGB pixels (rotation applied).
        lost: indices of the frames lost to damage so far, increasing.
        errors: decoding and demuxing errors met so far; ``first_error`` the first of them.
        stop_error: the demuxer error that ended reading before the end of the file, if any.
    """

    __slots__ = ("container", "stream", "frames", "first", "first_image", "lost", "errors", "first_error", "stop_error")

    def __init__(self, container: Any, stream: Any) -> None:
        self.container, self.stream = container, stream
        self.frames: Iterator[tuple[int, Any]] = iter(())
        self.first: tuple[int, Any] | None = None
        self.first_image: np.ndarray | None = None
        self.lost: list[int] = []
        self.errors = 0
        self.first_error: BaseException | None = None
        self.stop_error: BaseException | None = None

    def note_error(self, exc: BaseException) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = exc

    def close(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 - closing a damaged container must not mask the real error
            log.debug("closing the container failed", exc_info=True)


def _is_discard(packet: Any, start_pts: int | None) -> bool:
    """True for a packet decoded only as a reference and never shown (MP4 edit-list pre-roll)."""
    flag = getattr(packet, "is_discard", None)  # PyAV >= 13
    if flag is not None:
        return bool(flag)
    return packet.pts is not None and start_pts is not None and packet.pts < start_pts


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded with PyAV (FFmpeg): any container/codec FFmpeg reads.

    The first video stream is used; audio and other streams are ignored. Frames are converted
    to RGB and rotated by the stream's display matrix (as OpenCV and FFmpeg players do).
    ``index`` numbers the frames of the stream from 0 in presentation order; a frame lost to
    damage keeps its number, so indices have a gap there (with ``start_frame=N`` the first frame
    yielded has index >= N: the frames before are decoded and discarded, which is robust where
    seeking is not). ``t_capture_ns`` is the presentation time in ns from the start of the
    stream (falls back to ``index / fps`` for frames without a timestamp).

    ``n_frames`` is a best-effort hint: the smaller of the container's frame count and
    duration x frame rate. Containers can be wrong (the shared ``obama_720p.mp4`` reports 158
    video frames but holds 55, matching its 2.19 s duration at 25 fps: the other 103 are an
    edit-list pre-roll that is decoded for reference but never shown); count what you iterate.

    Damaged files are decoded the way the ``ffmpeg`` tool does: packet by packet, and a packet
    the decoder rejects (``InvalidDataError`` ...) is skipped while demuxing goes on, so every
    frame FFmpeg can still decode is yielded, also when the damage sits in the first GOP or
    the pre-roll. Frames FFmpeg conceals (decodes with artefacts) are yielded as they come.
    A frame is **lost** when its packet fails, or, once any error happened, when the decoder
    never outputs it (it referenced a damaged frame: after a damaged keyframe FFmpeg shows
    nothing until the next one); every packet the demuxer read and marked for display counts,
    matched by presentation time. Lost frames are listed in :attr:`lost_frames` after iteration
    and :attr:`damaged` says what happened (also logged as a warning); iteration itself never
    raises for damage. Demuxer errors are skipped too; after :attr:`MAX_DEMUX_ERRORS` in a
    row reading stops and :attr:`stopped_early` says where. A quiet end well before the
    duration the file declares is reported there as a possible truncation. An MP4 cut short
    usually cannot be opened at all (its index, the ``moov`` atom, sits at the end unless
    written with ``-movflags faststart``); a cut faststart MP4, AVI or MKV decodes up to the cut.

    The constructor opens the file and decodes up to the first frame that decodes, so a file
    that is missing, not a video, has no video stream, or of which not a single frame can be
    decoded raises :class:`SourceError` (one line naming the file).

    The source can be iterated again (it reopens the file). Use it from one thread.

    Args:
        path: the video file.
        start_frame: skip the frames with a smaller index (resume).
        autorotate: apply the display rotation of phone videos.

    Raises:
        SourceError: see above; the message names the file and the cause.
    """

    #: Demuxer errors in a row (no packet read in between) after which reading stops.
    MAX_DEMUX_ERRORS = 32
    #: Frames held back and sorted by presentation time once a decoding error happened
    #: (FFmpeg then outputs B-frames that referenced damaged frames out of order).
    REORDER_WINDOW = 8

    def __init__(self, path: str | Path, *, start_frame: int = 0, autorotate: bool = True) -> None:
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        self.path = Path(path)
        self.name = str(path)
        self.start_frame = int(start_frame)
        self.autorotate = autorotate
        self.codec: str | None = None
        self.container_format: str | None = None
        self.duration_s: float | None = None
        self._pending: _OpenVideo | None = None
        self._active: _OpenVideo | None = None
        self._pending = self._open()

    # -- opening -----------------------------------------------------------------------------

    def _open(self) -> _OpenVideo:
        import av

        path = self.path
        if not path.exists():
            raise SourceError(f"{path}: no such file")
        if path.is_dir():
            raise SourceError(f"{path}: is a folder, not a video file (open_source() reads a folder as images)")
        try:
            container = av.open(str(path), mode="r", metadata_errors="ignore")
        except PermissionError as exc:
            raise SourceError(f"{path}: permission denied") from exc
        except (OSError, UnicodeDecodeError) as exc:  # incl. FFmpeg's errno errors (no such file, ...)
            raise SourceError(f"{path}: cannot be opened as a video ({_describe(exc)})") from exc
        except av.error.FFmpegError as exc:  # InvalidDataError, DecoderNotFoundError, ...
            raise SourceError(f"{path}: cannot be opened as a video ({_why_unreadable(path, exc)})") from exc
        try:
            return self._inspect(container)
        except BaseException:
            container.close()
            raise

    def _inspect(self, container: Any) -> _OpenVideo:
        path = self.path
        fmt = container.format.name
        self.container_format = fmt
        if fmt == "image2" or fmt.endswith("_pipe"):
            kind = fmt.removesuffix("_pipe").upper() if fmt != "image2" else "an image"
            raise SourceError(
                f"{path}: is a still image ({kind}), not a video; open it as an image "
                f"(ImageSource, or give it an image suffix such as .jpg/.png for open_source())"
            )
        if not container.streams.video:
            found = ", ".join(
                f"{s.type} ({getattr(s.codec_context, 'name', None) or 'unknown codec'})" for s in container.streams
            )
            hint = ""
            if not (container.streams.audio or container.streams.subtitles):
                hint = "; the file is probably truncated or damaged"
            raise SourceError(f"{path}: has no video stream (streams found: {found or 'none'}){hint}")
        stream = container.streams.video[0]
        cc = stream.codec_context
        if cc is None:
            raise SourceError(
                f"{path}: its video stream has an unknown codec; the file is probably truncated or damaged, "
                "or uses a codec this FFmpeg build lacks"
            )
        self.codec = cc.name
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            self.fps = None
        if stream.duration is not None and stream.time_base is not None:
            self.duration_s = float(stream.duration * stream.time_base)
        elif container.duration is not None and len(container.streams) == 1:
            self.duration_s = container.duration / 1e6  # container duration in AV_TIME_BASE (us)
        counts = []
        if stream.frames:
            counts.append(int(stream.frames))
        if self.duration_s and self.fps:
            counts.append(round(self.duration_s * self.fps))
        self.n_frames = min(counts) if counts else None
        if cc.width and cc.height:
            self.size = (int(cc.width), int(cc.height))
        video = _OpenVideo(container, stream)
        video.frames = self._decode(video)
        try:
            video.first = next(video.frames)
        except StopIteration:
            why = "no packet could be read"
            if video.first_error is not None:
                why = f"{video.errors} decoding errors, first: {_describe(video.first_error)}"
            raise SourceError(
                f"{path}: has a video stream ({cc.name}) but not a single frame could be decoded ({why}); "
                "the file is probably truncated or damaged"
            ) from video.first_error
        video.first_image = self._to_rgb(video.first[1])
        self.size = (video.first_image.shape[1], video.first_image.shape[0])
        return video

    # -- decoding ----------------------------------------------------------------------------

    def _to_rgb(self, av_frame: Any) -> np.ndarray:
        image = av_frame.to_ndarray(format="rgb24")
        rotation = (getattr(av_frame, "rotation", 0) or 0) if self.autorotate else 0
        quarter_turns = round(rotation / 90) % 4
        if quarter_turns:
            # Same convention as FFmpeg's autorotate and OpenCV's CAP_PROP_ORIENTATION_AUTO.
            image = np.rot90(image, k=quarter_turns)
        return np.ascontiguousarray(image)

    def _decode(self, video: _OpenVideo) -> Iterator[tuple[int, Any]]:
        """``(index, av_frame)`` for every frame that decodes, in presentation order.

        Packets are sent to the decoder one by one; a packet it rejects, and a demuxer error,
        are noted in ``video`` and skipped. Indices: every packet marked for display is one
        frame; its presentation time (pts) waits in ``pending`` until a frame at or after it is
        handed out (decoders output in pts order, so a pts passed over will not come). Once an
        error happened, each pts passed over is a lost frame and keeps its index; without errors
        it is a packet that shows nothing (e.g. a VP8 alt-ref frame) and takes no index. Failed
        packets without a pts are counted as lost before the next frame out.

        After a decoding error FFmpeg may output frames out of order (B-frames that referenced a
        damaged frame come late), so from the first error on, frames pass through a window of
        :attr:`REORDER_WINDOW` frames sorted by pts; a frame later than that is dropped (its
        index was already reported lost).
        """
        import av

        failures = (av.error.FFmpegError, OSError, ValueError)
        stream = video.stream
        cc = stream.codec_context
        start_pts = stream.start_time
        pending: list[int] = []  # sorted pts of displayed packets not yet handed out
        window: list[tuple[int, int, Any]] = []  # heap (pts, arrival, frame), used once errors happened
        arrival = itertools.count()
        unplaced = 0  # failed packets without pts
        next_index = 0
        last_key: int | None = None  # pts of the last frame handed out or put into the window

        def place(av_frame: Any) -> int:
            nonlocal next_index, unplaced
            pts = av_frame.pts
            passed = 0
            if pts is not None and pending:
                passed = bisect.bisect_left(pending, pts)
                del pending[:passed]
                if pending and pending[0] == pts:
                    del pending[0]
            if video.errors:
                n_lost = passed + unplaced
                video.lost.extend(range(next_index, next_index + n_lost))
                next_index += n_lost
            unplaced = 0
            index = next_index
            next_index += 1
            return index

        out_pts: int | None = None  # pts of the last frame handed out

        def hand_out(frames: list[Any], final: bool = False) -> Iterator[tuple[int, Any]]:
            nonlocal last_key, out_pts
            for av_frame in frames:
                if not video.errors and not window:  # undamaged so far: decoder order is presentation order
                    if av_frame.pts is not None:
                        out_pts = last_key = av_frame.pts
                    yield place(av_frame), av_frame
                    continue
                key = av_frame.pts if av_frame.pts is not None else (last_key if last_key is not None else 0)
                last_key = key
                heapq.heappush(window, (key, next(arrival), av_frame))
            while window and (final or len(window) > self.REORDER_WINDOW):
                _, _, av_frame = heapq.heappop(window)
                pts = av_frame.pts
                if pts is not None and out_pts is not None and pts < out_pts:
                    log.debug("%s: frame at pts %s came after pts %s; dropped", self.name, pts, out_pts)
                    continue
                if pts is not None:
                    out_pts = pts
                yield place(av_frame), av_frame

        demux = video.container.demux(stream)
        errors_in_a_row = 0
        while not self._closed:  # close() may have closed the container: never touch it then
            try:
                packet = next(demux)
            except StopIteration:
                break
            except failures as exc:
                video.note_error(exc)
                errors_in_a_row += 1
                log.debug("%s: demuxer error (%s)", self.name, _describe(exc))
                if errors_in_a_row >= self.MAX_DEMUX_ERRORS:
                    video.stop_error = exc
                    break
                demux = video.container.demux(stream)  # av_read_frame goes on after the bad data
                continue
            errors_in_a_row = 0
            if not packet.size:  # PyAV's empty packet at the end of the stream: flushed below
                continue
            shown = not _is_discard(packet, start_pts)
            if shown and packet.pts is not None:
                bisect.insort(pending, int(packet.pts))
            try:
                decoded = cc.decode(packet)
            except failures as exc:
                video.note_error(exc)
                if shown and packet.pts is None:
                    unplaced += 1
                log.debug("%s: packet at pts %s not decoded (%s)", self.name, packet.pts, _describe(exc))
                continue
            yield from hand_out(decoded)
        if self._closed:
            return
        try:
            decoded = cc.decode(None)  # frames the decoder still holds (reordering delay)
        except failures as exc:
            video.note_error(exc)
            decoded = []
        for item in hand_out(decoded, final=True):
            if self._closed:
                return
            yield item
        if video.errors:
            n_lost = len(pending) + unplaced
            video.lost.extend(range(next_index, next_index + n_lost))

    def _frames(self) -> Iterator[Frame]:
        video, self._pending = self._pending, None
        if video is None:
            video = self._open()
        self._active = video
        self.stopped_early = self.damaged = None
        self.lost_frames = ()
        stream = video.stream
        time_base = stream.time_base
        start_pts = stream.start_time
        first = video.first
        index, last_pts, errors_seen = -1, None, 0
        try:
            for index, av_frame in itertools.chain([first], video.frames):
                if self._closed:
                    return
                if video.errors != errors_seen:  # keep the report current for consumers that stop early
                    errors_seen = video.errors
                    self.lost_frames = tuple(video.lost)
                    self.damaged = self._damage_message(video, None)
                pts = av_frame.pts
                if pts is not None:
                    last_pts = pts
                    if start_pts is None:
                        start_pts = pts
                if index < self.start_frame:
                    continue
                image = video.first_image if first is not None and av_frame is first[1] else self._to_rgb(av_frame)
                if pts is not None and time_base is not None:
                    t_ns = round(Fraction(pts - start_pts) * time_base * _NS)
                else:
                    t_ns = round(index * _NS / (self.fps or 1.0))
                self.size = (image.shape[1], image.shape[0])
                yield Frame(image, index, t_ns, self.name)
        finally:
            video.close()
            self._active = None
            self.lost_frames = tuple(video.lost)
        if self._closed:
            return
        stop = self._stop_message(index, video.stop_error, last_pts, start_pts, time_base)
        self.stopped_early = f"{self.name}: {stop}" if stop else None
        self.damaged = self._damage_message(video, stop)
        if self.damaged:
            log.warning("%s", self.damaged)
        elif index + 1 <= self.start_frame:
            log.warning(
                "%s: start_frame %d is past the end; the file has %d frames", self.name, self.start_frame, index + 1
            )

    def _damage_message(self, video: _OpenVideo, stop: str | None) -> str | None:
        """One line for :attr:`damaged` (None for an undamaged file)."""
        parts = []
        if video.lost:
            n = len(video.lost)
            parts.append(
                f"{n} frame{'s' if n != 1 else ''} could not be decoded and {'were' if n != 1 else 'was'} skipped "
                f"(frame{'s' if n != 1 else ''} {format_frame_ranges(video.lost)})"
            )
        if video.errors and video.first_error is not video.stop_error:
            what = f"{video.errors} decoding error{'s' if video.errors != 1 else ''}"
            first = _describe(video.first_error) if video.first_error is not None else "unknown"
            parts.append(
                f"FFmpeg reported {what} (first: {first})"
                + ("" if video.lost or stop else "; no frame was lost, some may show artefacts")
            )
        if stop:
            parts.append(stop)
        return f"{self.name}: the input is damaged: " + "; ".join(parts) if parts else None

    def _stop_message(
        self, index: int, error: BaseException | None, last_pts: int | None, start_pts: int | None, time_base: Any
    ) -> str | None:
        """Why reading ended before the end of the file (without the file name), or None."""
        read = index + 1
        where = f"after frame {index}" if index >= 0 else "before the first frame"
        tail = f"{read} frames were read" + (f" (from frame {self.start_frame} on yielded)" if self.start_frame else "")
        if error is not None:
            return f"decoding stopped {where} ({_describe(error)}); {tail}"
        # A quiet end well short of the declared duration: a cut file whose demuxer just hit EOF.
        if last_pts is None or start_pts is None or time_base is None or not self.duration_s or not self.fps:
            return None
        end_s = float((last_pts - start_pts) * time_base) + 1.0 / self.fps
        slack = max(2.0 / self.fps, 0.05 * self.duration_s)
        if end_s < self.duration_s - slack:
            return (
                f"decoding ended {where} at {end_s:.2f} s, but the file declares "
                f"{self.duration_s:.2f} s of video; it may be truncated or damaged; {tail}"
            )
        return None

    def close(self) -> None:
        self._closed = True
        for video in (self._pending, self._active):
            if video is not None:
                video.close()
        self._pending = self._active = None


# --------------------------------------------------------------------------------------------
# Live sources: latest-frame buffer + producer thread
# --------------------------------------------------------------------------------------------


class LatestFrameBuffer:
    """A one-slot, thread-safe hand-over of the newest frame from a producer to a consumer.

    :meth:`put` overwrites a frame the consumer has not taken yet (counted in :attr:`dropped`),
    so the consumer always gets the newest frame and latency never accumulates.

    Attributes:
        put_count: frames put so far.
        dropped: frames overwritten before anyone took them (``put_count = taken + dropped +
            pending``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Frame | None = None
        self._closed = False
        self.put_count = 0
        self.dropped = 0

    def put(self, frame: Frame) -> bool:
        """Offer a frame; returns False (and drops it) when the buffer is closed."""
        with self._cond:
            if self._closed:
                return False
            if self._item is not None:
                self.dropped += 1
            self._item = frame
            self.put_count += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Frame | None:
        """Take the newest frame, waiting up to ``timeout`` seconds (None: forever).

        Returns None on timeout, or when the buffer is closed and empty (see :attr:`exhausted`).
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._closed, timeout):
                return None
            item, self._item = self._item, None
            return item

    def close(self, *, discard: bool = False) -> None:
        """End of stream: wake waiting consumers. A pending frame stays available unless ``discard``."""
        with self._cond:
            self._closed = True
            if discard:
                self._item = None
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def exhausted(self) -> bool:
        """Closed and nothing left to take."""
        with self._cond:
            return self._closed and self._item is None


class LiveSource(FrameSource):
    """Base of live sources: a producer thread fills a :class:`LatestFrameBuffer`.

    Subclasses implement :meth:`_produce`, which loops until ``self._stop`` is set, hands frames
    to :meth:`_emit`, and returns at end of stream (optionally setting :attr:`stopped_early`).
    The thread starts when iteration starts; a live source can be iterated once. A consumer
    slower than the producer sees increasing indices with gaps; :attr:`dropped` counts the
    frames it never saw. An exception in the producer is re-raised in the consumer (as
    :class:`SourceError`) after the frames before it.
    """

    is_live = True
    #: seconds the consumer waits per poll (it re-checks ``close()`` in between).
    poll_s = 0.1
    #: seconds ``close()`` waits for the producer thread.
    join_timeout_s = 5.0

    def __init__(self) -> None:
        self._buffer = LatestFrameBuffer()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._started = False

    @property
    def dropped(self) -> int:
        """Frames overwritten in the buffer before the consumer took them."""
        return self._buffer.dropped

    @property
    def produced(self) -> int:
        """Frames the producer delivered to the buffer."""
        return self._buffer.put_count

    def _emit(self, frame: Frame) -> bool:
        return self._buffer.put(frame)

    def _produce(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            self._error = exc
        finally:
            self._buffer.close()

    def start(self) -> None:
        """Start the producer thread (iteration does this; calling it earlier starts grabbing earlier)."""
        if self._closed:
            raise SourceError(f"{self.name}: the frame source is closed")
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"mlanet-frames[{self.name}]", daemon=True)
            self._thread.start()

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise SourceError(f"{self.name}: the frame source is closed")
        if self._started:
            raise SourceError(f"{self.name}: a live source can be iterated only once")
        self._started = True
        self.start()
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        buffer = self._buffer
        while not self._closed:
            frame = buffer.get(timeout=self.poll_s)
            if frame is None:
                if buffer.exhausted:
                    break
                continue
            if self._closed:
                break
            yield frame
        if self._error is not None and not self._closed:
            error = self._error
            if isinstance(error, SourceError):
                raise SourceError(str(error)) from error
            raise SourceError(f"{self.name}: reading frames failed ({_describe(error)})") from error

    def close(self) -> None:
        """Stop the producer thread, join it (bounded by :attr:`join_timeout_s`), release the device."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._buffer.close(discard=True)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.join_timeout_s)
            if thread.is_alive():
                log.warning(
                    "%s: the reader thread did not stop within %.1f s; leaving it", self.name, self.join_timeout_s
                )
                return
        self._release()

    def _release(self) -> None:
        """Free the device / inner source after the producer stopped (subclasses)."""


def _camera_hint() -> str:
    if sys.platform.startswith("linux"):
        devices = sorted(str(p) for p in Path("/dev").glob("video*"))
        found = f"video devices present: {', '.join(devices)}" if devices else "no /dev/video* devices exist"
        return f"{found}; list cameras with `v4l2-ctl --list-devices`"
    if sys.platform == "darwin":
        return 'list cameras with `ffmpeg -f avfoundation -list_devices true -i ""`'
    if sys.platform.startswith("win"):
        return "list cameras with `ffmpeg -list_devices true -f dshow -i dummy`"
    return "check which cameras exist"


class CameraSource(LiveSource):
    """A camera read with OpenCV (``cv2.VideoCapture``) by a background thread.

    The thread grabs continuously and keeps only the newest frame (:class:`LatestFrameBuffer`);
    ``t_capture_ns = time.monotonic_ns()`` right after the grab returned; BGR is converted to
    RGB in the thread. ``index`` counts grabbed frames, so a slow consumer sees gaps and
    :attr:`dropped` counts what it missed. When the camera stops delivering frames for
    ``read_timeout_s`` (unplugged), iteration ends and :attr:`stopped_early` says so.

    Args:
        index: camera index (``/dev/video<index>`` on Linux).
        width, height, fps: requested capture mode (the driver may choose another; the
            attributes report what it gave).
        api_preference: an OpenCV ``cv2.CAP_*`` backend, default: OpenCV's choice.
        read_timeout_s: how long failed reads are retried before giving up.

    Raises:
        SourceError: the camera cannot be opened or delivers no first frame.
    """

    def __init__(
        self,
        index: int = 0,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        *,
        api_preference: int | None = None,
        read_timeout_s: float = 2.0,
    ) -> None:
        import cv2

        super().__init__()
        self.index = int(index)
        self.name = f"camera:{self.index}"
        self.read_timeout_s = read_timeout_s
        try:
            args = (self.index,) if api_preference is None else (self.index, api_preference)
            cap = cv2.VideoCapture(*args)
        except cv2.error as exc:
            raise SourceError(f"camera {self.index}: cannot be opened ({exc}); {_camera_hint()}") from exc
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"camera {self.index}: cannot be opened (no such device or it is busy); {_camera_hint()}; "
                "or use a video file instead (mlanet-live --video clip.mp4, or mlanet-video clip.mp4 --out DIR)"
            )
        try:
            if width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
            if height:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
            if fps:
                cap.set(cv2.CAP_PROP_FPS, float(fps))
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)  # where the backend supports it: no driver queue
            ok, bgr = cap.read()
            if not ok or bgr is None:
                raise SourceError(
                    f"camera {self.index}: opened but delivered no frame (it may be busy in another program); "
                    f"{_camera_hint()}"
                )
        except BaseException:
            cap.release()
            raise
        self._cap = cap
        reported = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(reported) if reported and math.isfinite(reported) and reported > 0 else None
        self.size = (int(bgr.shape[1]), int(bgr.shape[0]))
        self.n_frames = None

    def _produce(self) -> None:
        cap, stop = self._cap, self._stop
        index, failing_since = 0, None
        while not stop.is_set():
            ok = cap.grab()
            t_ns = time.monotonic_ns()
            bgr = None
            if ok:
                ok, bgr = cap.retrieve()
            if not ok or bgr is None:
                failing_since = failing_since or t_ns
                if t_ns - failing_since > self.read_timeout_s * _NS:
                    self.stopped_early = (
                        f"{self.name}: no frame for {self.read_timeout_s:g} s after frame {index - 1} "
                        f"(camera unplugged or stopped); {index} frames were grabbed"
                    )
                    log.warning("%s", self.stopped_early)
                    return
                stop.wait(0.01)
                continue
            failing_since = None
            image = to_rgb_uint8(bgr, bgr=True, where=self.name)
            self.size = (image.shape[1], image.shape[0])
            self._emit(Frame(image, index, t_ns, self.name))
            index += 1

    def _release(self) -> None:
        self._cap.release()


class LiveReplaySource(LiveSource):
    """Replays a finite source (video file, image folder, ...) as if it were a camera.

    A producer thread iterates ``inner`` and hands each frame to a :class:`LatestFrameBuffer`
    at the replay rate, so a slow consumer misses frames (:attr:`dropped`) instead of falling
    behind, exactly as with :class:`CameraSource`. Frames keep ``inner``'s index (plus an
    offset per lap when looping) and their other fields (``name``, ``independent``);
    ``t_capture_ns`` is ``time.monotonic_ns()`` at hand-over. :attr:`stopped_early`,
    :attr:`damaged` and :attr:`lost_frames` follow ``inner``'s after each lap.

    Args:
        inner: a non-live source; it is closed with this one.
        fps: replay rate; None: ``inner.fps`` (real time), and as fast as possible when that is
            None too; ``0`` or ``inf``: as fast as possible. When decoding is slower than the
            rate the producer does not burst to catch up.
        loop: start ``inner`` over at its end (demos); ``n_frames`` is then None.
    """

    def __init__(self, inner: FrameSource, fps: float | None = None, *, loop: bool = False) -> None:
        if inner.is_live:
            raise ValueError(f"{inner.name}: is already a live source")
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.loop = loop
        rate = inner.fps if fps is None else fps
        self.fps = float(rate) if rate and math.isfinite(rate) and rate > 0 else None
        self.size = inner.size
        self.n_frames = None if loop else inner.n_frames
        self.independent_frames = bool(getattr(inner, "independent_frames", False))

    def _produce(self) -> None:
        stop = self._stop
        period_ns = _NS / self.fps if self.fps else 0.0
        next_due = time.monotonic_ns()
        offset = 0
        while True:
            last = None
            for frame in self.inner:
                if stop.is_set():
                    return
                if period_ns:
                    wait_ns = next_due - time.monotonic_ns()
                    if wait_ns > 0 and stop.wait(wait_ns / _NS):
                        return
                    next_due = max(next_due + period_ns, time.monotonic_ns() - period_ns)
                last = frame.index + offset
                self.size = (frame.width, frame.height)
                self._emit(dataclasses.replace(frame, index=last, t_capture_ns=time.monotonic_ns()))
            self.stopped_early = self.inner.stopped_early
            self.damaged = getattr(self.inner, "damaged", None) or self.damaged
            self.lost_frames = self.lost_frames + tuple(i + offset for i in getattr(self.inner, "lost_frames", ()))
            if not self.loop or last is None or stop.is_set():
                return
            offset = last + 1

    def _release(self) -> None:
        self.inner.close()


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

