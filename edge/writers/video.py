"""H.264 video output through PyAV (libx264).

OpenCV's bundled FFmpeg cannot encode H.264, PyAV's can, so the overlay video of
``mlanet-video`` is written here. ``av`` is imported inside the functions that need it.

Format: H.264 High profile (libx264), ``yuv420p``, limited range, BT.709 matrix, primaries and
transfer (tagged in the stream, which is what players, browsers, PyAV and OpenCV assume for
sRGB-like content). The container follows the suffix of the target path: ``.mp4`` (with
``+faststart``, so the index is at the front for streaming), ``.mov`` or ``.mkv``.

Odd sizes: ``yuv420p`` subsamples chroma by 2 in both directions and libx264 refuses odd
widths and heights. The writer **pads** such frames by one column/row, repeating the last one
(edge replication, invisible in practice), so the encoded video is
``even_up(width) x even_up(height)``; :attr:`H264VideoWriter.encoded_size` says which. Frames
are still given at the requested ``(height, width)``.

Atomicity: frames are encoded into a temporary file beside the target (``.NAME.XXXX.mp4``) and
:meth:`H264VideoWriter.close` renames it onto the target once the encoder is flushed and the
trailer written. A process killed hard (SIGKILL, power loss) therefore never leaves a
half-written file at the target path (at worst an orphaned hidden temporary file beside it);
an exception inside ``with H264VideoWriter(...)`` (``KeyboardInterrupt`` included) still
finalises the frames written so far, so Ctrl-C leaves a valid, playable video of the frames
done. :meth:`H264VideoWriter.abort` discards everything.

Resume: an H.264 stream cannot simply be appended to (the container index, the encoder's
reference frames and the trailer all sit at the end of the file), so ``--resume`` re-encodes the
first ``n`` frames of the existing video into the new temporary file and then continues
(:meth:`H264VideoWriter.resume_from`). Frames are passed to the encoder as decoded YUV (no
extra colour conversion), but this is a second lossy generation of those frames; at the
default ``crf`` the difference is small.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.fileutil import mkstemp_beside
from mlanet.edge.writers import WriterError

#: libx264 options on top of the preset (``x264-params``): the cheapest motion search (diamond, one
#: subpixel refinement pass), 16x16 partitions and 4x4 transforms only, no weighted P prediction, no
#: adaptive quantisation and no B-frames (which also keeps a live stream's encoder latency at one frame).
#: On the 720p Obama clip at crf 20 (``benchmarks/encode_presets.py``, whole RGB frames, 2 cores): veryfast
#: alone 9.3 ms/frame and 16.1 ms CPU, 10.0 MB/min, 41.1 dB PSNR; with these 5.6 ms/frame and 7.7 ms CPU,
#: 13.3 MB/min, 41.9 dB. The encoder shares the cores with the rest of the pipeline, so its CPU time is
#: what the runtime pays; a user who wants smaller files passes ``x264_params`` (or a slower preset).
DEFAULT_X264_PARAMS = "me=dia:subme=1:partitions=none:no-8x8dct=1:weightp=0:aq-mode=0:bframes=0"

#: libx264 threading modes :class:`H264VideoWriter` accepts (PyAV ``codec_context.thread_type``).
THREAD_TYPES = ("AUTO", "FRAME", "SLICE")

log = logging.getLogger(__name__)

#: Container format per target suffix.
CONTAINERS: dict[str, str] = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}

# FFmpeg enum values (libavutil/pixfmt.h): BT.709 matrix/primaries/transfer, limited ("tv") range.
_AVCOL_BT709 = 1
_AVCOL_RANGE_MPEG = 1


def _even_up(n: int) -> int:
    return n + (n & 1)


def _as_fraction(fps: float | Fraction) -> Fraction:
    rate = fps if isinstance(fps, Fraction) else Fraction(float(fps)).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def rgb_to_i420(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB (H, W even) -> (H * 3 / 2, W) uint8 I420 planes, BT.709 limited range
    (swscale, as the writer converts whole frames)."""
    import av

    frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuv420p", dst_colorspace="itu709").to_ndarray()


def compose_i420(base: np.ndarray, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """I420 planes of ``rgb`` made from ``base`` (its I420 planes outside ``box``) plus ``box`` converted.

    Args:
        base: (H * 3 / 2, W) uint8 I420 (Y, then U and V at half resolution), H and W even.
        rgb: (H, W, 3) uint8 RGB that equals ``base`` (decoded) outside ``box``.
        box: ``(x0, y0, x1, y1)`` pixels, end exclusive; widened to even coordinates (chroma
            covers 2 x 2 pixels) and clipped to the frame. An empty box gives ``base``'s copy.

    Returns:
        A new (H * 3 / 2, W) uint8 array. Inside the (widened) box it equals :func:`rgb_to_i420`
        of ``rgb`` up to the chroma filter's reach across the box's edge (+-1 level inside the box,
        tested); outside it is ``base`` exactly.
    """
    H, W = rgb.shape[:2]
    out = base.copy()
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, y0 = max(0, x0 & ~1), max(0, y0 & ~1)
    x1, y1 = min(W, x1 + (x1 & 1)), min(H, y1 + (y1 & 1))
    if x1 <= x0 or y1 <= y0:
        return out
    h, w = y1 - y0, x1 - x0
    part = rgb_to_i420(rgb[y0:y1, x0:x1])
    out[y0:y1, x0:x1] = part[:h]
    chroma = out[H:].reshape(2, H // 2, W // 2)  # views into out: U then V
    part_chroma = part[h:].reshape(2, h // 2, w // 2)
    chroma[:, y0 // 2:y1 // 2, x0 // 2:x1 // 2] = part_chroma
    return out


class H264VideoWriter:
    """Write RGB frames to an H.264 video, atomically (temporary file + rename on close).

    Args:
        path: target file; its suffix picks the container (see :data:`CONTAINERS`).
        fps: frame rate (frames per second; a float or a :class:`fractions.Fraction` such as
            ``30000/1001``). Frame ``i`` is presented at ``i / fps`` seconds.
        width, height: frame size in pixels of the frames given to :meth:`write`. Odd sizes
            are padded by one column/row (see the module docstring).
        crf: libx264 constant rate factor (0 = lossless ... 51; 18-23 is visually good).
        preset: libx264 speed preset (``ultrafast`` ... ``veryslow``).
        x264_params: libx264 options on top of the preset, ``key=value:key=value`` (default
            :data:`DEFAULT_X264_PARAMS`; None or ``""``: the preset alone).
        thread_type: libx264 threading through PyAV: ``"AUTO"`` (default: frame threads, so
            ``write`` returns while earlier frames are still being encoded on other cores; at
            720p veryfast the call takes about a fifth of the time it takes with ``"SLICE"``,
            PyAV's default, ``benchmarks/encode_presets.py``), ``"FRAME"`` or ``"SLICE"``.

    Use as a context manager, or call :meth:`close` (or :meth:`abort`) yourself::

        with H264VideoWriter("out.mp4", fps=30, width=1280, height=720) as video:
            video.resume_from("out.mp4", 120)   # optional, before the first write
            for rgb in frames:                  # (720, 1280, 3) uint8 RGB
                video.write(rgb)

    Attributes:
        n_written: frames encoded so far (re-encoded resume frames included).
        encoded_size: ``(width, height)`` of the encoded video (even numbers).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float | Fraction,
        width: int,
        height: int,
        *,
        crf: int = 20,
        preset: str = "veryfast",
        thread_type: str = "AUTO",
        x264_params: str | None = DEFAULT_X264_PARAMS,
    ) -> None:
        self.path = Path(path)
        self.fps = _as_fraction(fps)
        self.width, self.height = int(width), int(height)
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"{self.path}: video size must be positive, got {width}x{height}")
        self.format = CONTAINERS.get(self.path.suffix.lower())
        if self.format is None:
            raise WriterError(
                f"{self.path}: unsupported video suffix {self.path.suffix!r}; use one of {sorted(CONTAINERS)}"
            )
        if not 0 <= int(crf) <= 51:
            raise ValueError(f"{self.path}: crf must lie in [0, 51], got {crf}")
        self.crf = int(crf)
        self.preset = str(preset)
        self.x264_params = str(x264_params or "")
        if thread_type not in THREAD_TYPES:
            raise ValueError(f"{self.path}: thread_type must be one of {THREAD_TYPES}, got {thread_type!r}")
        self.thread_type = thread_type
        self.encoded_size = (_even_up(self.width), _even_up(self.height))
        self.n_written = 0
        self._closed = False
        self._result: Path | None = None
        self._tmp: Path | None = None
        self._container: Any = None
        self._stream: Any = None
        self._open()

    # ------------------------------------------------------------------ lifecycle
    def _open(self) -> None:
        try:
            import av
        except ImportError as exc:  # pragma: no cover - av is part of the edge extra
            raise WriterError(f"{self.path}: writing H.264 needs PyAV (pip install 'mlanet[edge]'): {exc}") from None
        fd, tmp = mkstemp_beside(self.path, suffix=self.path.suffix)
        os.close(fd)
        self._tmp = Path(tmp)
        options = {"movflags": "+faststart"} if self.format in ("mp4", "mov") else {}
        try:
            self._container = av.open(str(self._tmp), mode="w", format=self.format, options=options)
            stream = self._container.add_stream("libx264", rate=self.fps)
            stream.width, stream.height = self.encoded_size
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(self.crf), "preset": self.preset,
                              **({"x264-params": self.x264_params} if self.x264_params else {})}
            cc = stream.codec_context
            cc.thread_type = self.thread_type  # thread count: libx264's own choice for the cores
            cc.colorspace = _AVCOL_BT709
            cc.color_primaries = _AVCOL_BT709
            cc.color_trc = _AVCOL_BT709
            cc.color_range = _AVCOL_RANGE_MPEG
            self._stream = stream
            self._time_base = Fraction(1, 1) / self.fps
        except BaseException as exc:
            self._discard()
            if isinstance(exc, Exception):
                raise WriterError(f"{self.path}: cannot open an H.264 encoder ({exc})") from exc
            raise
        log.debug("encoding %s into %s (%dx%d @ %s fps, crf %d)", self.path, self._tmp, *self.encoded_size, self.fps, self.crf)

    def __enter__(self) -> "H264VideoWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._closed:
            return
        if exc_type is None:
            self.close()
            return
        # Keep what was written (Ctrl-C leaves a playable video of the frames done), but never
        # let a failure while finalising hide the original exception.
        try:
            path = self.close()
            if path is not None:
                log.warning("%s: stopped by %s; kept the %d frames written", self.path, exc_type.__name__, self.n_written)
        except BaseException:  # noqa: BLE001
            log.exception("%s: could not finalise the video after %s", self.path, exc_type.__name__)
            self.abort()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ frames
    @property
    def settings(self) -> dict[str, Any]:
        """What the encoder runs with (for run records)."""
        return {"codec": "libx264", "preset": self.preset, "x264_params": self.x264_params, "crf": self.crf,
                "thread_type": self.thread_type,
                "pix_fmt": "yuv420p", "colorspace": "bt709"}

    def write(self, rgb: np.ndarray, *, base_yuv420: np.ndarray | None = None,
              changed_box: tuple[int, int, int, int] | None = None) -> None:
        """Encode one frame: ``rgb`` (H, W, 3) uint8 RGB with ``(H, W) == (height, width)``.

        Args:
            rgb: the frame.
            base_yuv420: optional (H * 3 / 2, W) uint8 I420 planes (BT.709, limited range) of an
                image that equals ``rgb`` outside ``changed_box`` -- the decoded source frame an
                overlay was drawn on (:attr:`mlanet.edge.types.Frame.yuv420`). Then only the box
                is converted from RGB (:func:`compose_i420`) and the rest is the source's own
                YUV: ~0.5 ms instead of ~2 ms for a 720p frame, and no RGB round trip for the
                pixels the overlay did not touch. Ignored (the whole frame is converted) unless
                its shape fits and the size is even.
            changed_box: ``(x0, y0, x1, y1)`` pixels (end exclusive) outside which ``rgb`` equals
                the base; ``(0, 0, 0, 0)``: nothing changed. Needed with ``base_yuv420``.
        """
        self._check_open()
        rgb = np.asarray(rgb)
        if rgb.shape != (self.height, self.width, 3) or rgb.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be ({self.height}, {self.width}, 3) uint8 RGB, "
                f"got {rgb.shape} {rgb.dtype}"
            )
        import av

        w, h = self.encoded_size
        if (base_yuv420 is not None and changed_box is not None and (w, h) == (self.width, self.height)
                and base_yuv420.shape == (h * 3 // 2, w) and base_yuv420.dtype == np.uint8):
            self._encode(av.VideoFrame.from_ndarray(compose_i420(base_yuv420, rgb, changed_box), format="yuv420p"))
            return
        if (w, h) != (self.width, self.height):
            rgb = np.pad(rgb, ((0, h - self.height), (0, w - self.width), (0, 0)), mode="edge")
        # wraps the array without a copy; reformat makes the encoder's own frame before this returns
        frame = av.VideoFrame.from_numpy_buffer(np.ascontiguousarray(rgb), format="rgb24")
        frame = frame.reformat(format="yuv420p", dst_colorspace="itu709")
        self._encode(frame)

    def _encode(self, frame: Any) -> None:
        frame.colorspace = _AVCOL_BT709
        frame.color_range = _AVCOL_RANGE_MPEG
        frame.pts = self.n_written
        frame.time_base = self._time_base  # decoded (resume) frames carry their container's time base
        try:
            packets = self._stream.encode(frame)
            self._container.mux(packets)
        except Exception as exc:
            raise WriterError(f"{self.path}: encoding frame {self.n_written} failed ({exc})") from exc
        self.n_written += 1

    def resume_from(self, existing: str | os.PathLike[str], n_frames: int) -> None:
        """Re-encode the first ``n_frames`` frames of ``existing`` as this video's first frames.

        Call before the first :meth:`write`. ``existing`` may be this writer's own target path
        (the usual ``--resume`` case): it is only read here, and replaced on :meth:`close`.

        Raises:
            WriterError: ``existing`` is unreadable, has another frame size, or has fewer than
                ``n_frames`` frames. On any failure (``KeyboardInterrupt`` included) the writer
                is aborted: the target is left as it was and the writer is closed.
        """
        self._check_open()
        if self.n_written:
            raise WriterError(f"{self.path}: resume_from must be called before the first frame is written")
        n_frames = int(n_frames)
        if n_frames < 0:
            raise ValueError(f"{self.path}: n_frames must be >= 0, got {n_frames}")
        if n_frames == 0:
            return
        try:
            self._reencode(Path(existing), n_frames)
        except BaseException:
            # A partial copy must never replace the target (Ctrl-C included): give up entirely.
            self.abort()
            raise
        log.info("%s: re-encoded %d frames of %s to resume", self.path, n_frames, existing)

    def _reencode(self, existing: Path, n_frames: int) -> None:
        import av

        w, h = self.encoded_size
        try:
            with av.open(str(existing)) as src:
                if not src.streams.video:
                    raise WriterError(f"{existing}: no video stream to resume from")
                stream = src.streams.video[0]
                for frame in src.decode(stream):
                    if self.n_written >= n_frames:
                        break
                    if (frame.width, frame.height) not in ((w, h), (self.width, self.height)):
                        raise WriterError(
                            f"{existing}: frames are {frame.width}x{frame.height}, cannot resume a "
                            f"{self.width}x{self.height} video from it"
                        )
                    if frame.format.name == "yuv420p" and (frame.width, frame.height) == (w, h):
                        copy = frame  # already what the encoder takes: no colour conversion
                    else:
                        rgb = frame.to_ndarray(format="rgb24")[: self.height, : self.width]
                        padded = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
                        copy = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded, np.uint8), format="rgb24").reformat(
                            format="yuv420p", dst_colorspace="itu709"
                        )
                    copy.pict_type = av.video.frame.PictureType.NONE
                    self._encode(copy)
        except WriterError:
            raise
        except Exception as exc:  # av.error.FFmpegError, OSError
            raise WriterError(f"{existing}: cannot read the video to resume from ({exc})") from exc
        if self.n_written < n_frames:
            raise WriterError(
                f"{existing}: has only {self.n_written} decodable frames, cannot resume after {n_frames}"
            )

    # ------------------------------------------------------------------ finish
    def close(self) -> Path | None:
        """Flush the encoder, write the trailer and rename the temporary file onto :attr:`path`.

        Returns the path, or ``None`` when no frame was written (no empty video is created and
        an existing file at the target is left untouched). Idempotent.
        """
        if self._closed:
            return self._result
        if self.n_written == 0:
            log.warning("%s: no frames were written; no video created", self.path)
            self.abort()
            return None
        assert self._tmp is not None  # set by _open() with the container
        try:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = None
            os.replace(self._tmp, self.path)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, Exception):
                raise WriterError(f"{self.path}: finalising the video failed ({exc})") from exc
            raise
        self._closed = True
        self._result = self.path
        log.info("%s: wrote %d frames (%dx%d, %s fps)", self.path, self.n_written, *self.encoded_size, self.fps)
        return self.path

    def abort(self) -> None:
        """Discard the video: close the encoder and delete the temporary file. Idempotent."""
        self._discard()

    def _discard(self) -> None:
        self._closed = True
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - being torn down anyway
                log.debug("%s: error while closing the discarded container", self.path, exc_info=True)
            self._container = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def _check_open(self) -> None:
        if self._closed:
            raise WriterError(f"{self.path}: the video writer is closed")

    def __del__(self) -> None:  # an unclosed writer never leaves its temporary file behind
        if not getattr(self, "_closed", True):
            self._discard()


def count_video_frames(path: str | os.PathLike[str]) -> int:
    """Number of frames in the first video stream of ``path`` (counts packets; no decoding).

    For finding how far a previous run got before ``--resume``. Raises :class:`WriterError`
    naming the file when it cannot be read.
    """
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as src:
            if not src.streams.video:
                raise WriterError(f"{path}: no video stream")
            return sum(1 for p in src.demux(src.streams.video[0]) if p.size)
    except WriterError:
        raise
    except Exception as exc:
        raise WriterError(f"{path}: cannot read video ({exc})") from exc
