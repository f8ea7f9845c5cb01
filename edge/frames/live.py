"""Live sources: the latest-frame buffer, cameras, and real-time replay of a file.

Part of :mod:`mlanet.edge.frames` (see the package docstring for the conventions every source follows)."""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path


from mlanet.edge.types import Frame, SourceError

from mlanet.edge.frames.base import FrameSource, _NS
from mlanet.edge.frames.stills import to_rgb_uint8
from mlanet.edge.frames.video import _describe

log = logging.getLogger(__name__)

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
        self.independent_frames = inner.independent_frames

    def _produce(self) -> None:
        stop = self._stop
        period_ns = _NS / self.fps if self.fps else 0.0
        next_due: float = time.monotonic_ns()  # ns
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
            self.damaged = self.inner.damaged or self.damaged
            self.lost_frames = self.lost_frames + tuple(i + offset for i in self.inner.lost_frames)
            if not self.loop or last is None or stop.is_set():
                return
            offset = last + 1

    def _release(self) -> None:
        self.inner.close()
