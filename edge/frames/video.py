"""Video files decoded with PyAV (FFmpeg), damaged files included.

Part of :mod:`mlanet.edge.frames` (see the package docstring for the conventions every source follows)."""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.edge.types import Frame, SourceError

from mlanet.edge.frames.base import FrameSource, _NS
from mlanet.edge.frames.stills import format_frame_ranges

log = logging.getLogger(__name__)

# FFmpeg enum values (libavutil/pixfmt.h): the BT.709 matrix; unspecified and limited ("tv") range.
_AVCOL_BT709 = 1
_AVCOL_RANGE_UNSPECIFIED = 0
_AVCOL_RANGE_MPEG = 1

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

    @staticmethod
    def _i420(av_frame: Any, image: np.ndarray) -> np.ndarray | None:
        """The frame's own I420 planes when ``image`` is their BT.709 limited-range RGB (even size, not
        rotated); else None. (The RGB conversion follows the frame's colour space, so only BT.709
        frames give back the planes a BT.709 writer would make.)"""
        if (av_frame.format.name != "yuv420p" or av_frame.colorspace != _AVCOL_BT709
                or av_frame.color_range not in (_AVCOL_RANGE_UNSPECIFIED, _AVCOL_RANGE_MPEG)
                or (av_frame.width, av_frame.height) != (image.shape[1], image.shape[0])
                or av_frame.width % 2 or av_frame.height % 2):
            return None
        return av_frame.to_ndarray()

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
        first, first_image = video.first, video.first_image
        if first is None or first_image is None:  # _open pulls the first frame or raises
            raise SourceError(f"{self.name}: the video was not opened")
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
                image = first_image if av_frame is first[1] else self._to_rgb(av_frame)
                if pts is not None and time_base is not None:
                    t_ns = round(Fraction(pts - start_pts) * time_base * _NS)
                else:
                    t_ns = round(index * _NS / (self.fps or 1.0))
                self.size = (image.shape[1], image.shape[0])
                yield Frame(image, index, t_ns, self.name, yuv420=self._i420(av_frame, image))
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
