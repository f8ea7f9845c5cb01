"""Frames of every video in a folder, unlabelled (e.g. ``shared/data/video/expressions``).

The reader lists the videos (suffixes :data:`VIDEO_SUFFIXES`, not recursive) and indexes
each one by demuxing its packets with PyAV, without decoding: frame ``i`` of a video is the
``i``-th frame in presentation order (the ``i``-th smallest packet timestamp). It yields one
sample for frames ``0, every, 2 * every, ...`` of each video. Pixels are decoded only when a
sample's :attr:`~mlanet.data.sources.schema.FaceSample.image` is read, by a
:class:`VideoFrameDecoder` shared by the video's samples: it keeps the file open and decodes
forward from the last frame it returned, and seeks (to the keyframe before the frame, then
decodes up to the exact timestamp) when the requested frame lies behind it or far ahead, so
reading the samples in order decodes each video once. The display rotation of phone videos
is applied (the same quarter-turn convention as FFmpeg's autorotate and ``edge.frames``).

Samples: no landmark sets, no yaw; key ``"video-folder:<folder name>/<video file>#<frame>"``
(frame index zero-padded to 6 digits); ``meta = {"frame_index": i, "time_s": t}`` (t from
the video's start). Terms: the folder's clips come with no stated licence, so the default
terms are research use only (``terms=`` overrides for another folder).

Errors: a missing folder, a folder without videos, and a video that cannot be opened or has
no video stream or no frames raise :class:`AssetError` naming it when the reader is built;
a frame that cannot be decoded later raises :class:`AssetError` naming the video and frame.
Videos named like an AFLW2000-3D image are dropped and the AFLW2000-3D folders refused
(:mod:`.exclusion`), as for every reader.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mlanet.errors import AssetError
from mlanet.data.sources.base import SourceReader
from mlanet.data.sources.exclusion import ExclusionGuard
from mlanet.data.sources.schema import FaceSample

logger = logging.getLogger(__name__)

SOURCE = "video-folder"
TERMS = (
    "research use only: video clips with no stated licence (shared/data/video/expressions: talking and "
    "expression clips from a public animation project's examples); models trained on them are research-only"
)

#: File suffixes read as videos (lower case).
VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")

#: A requested frame at most this many frames ahead of the decoder is reached by decoding
#: forward instead of seeking.
FORWARD_LIMIT: int = 120


def _import_av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a declared dependency of the data path
        raise ImportError("reading video folders needs PyAV: pip install av") from exc
    return av


@dataclass(frozen=True)
class VideoIndex:
    """Frame timestamps of one video, from its packets (nothing decoded).

    Attributes:
        path: the video. pts: (N,) int64 presentation timestamps in stream ``time_base``
            units, ascending; frame ``i`` has ``pts[i]``. start_pts: the first frame's pts.
        time_base: seconds per pts unit. width, height: coded frame size in pixels.
    """

    path: Path
    pts: np.ndarray
    time_base: Fraction
    width: int
    height: int

    @property
    def n_frames(self) -> int:
        """N, the number of frames."""
        return len(self.pts)

    def time_s(self, index: int) -> float:
        """Seconds from the first frame to frame ``index``."""
        return float((int(self.pts[index]) - int(self.pts[0])) * self.time_base)


def index_video(path: Path) -> VideoIndex:
    """Index ``path`` by demuxing its first video stream (see :class:`VideoIndex`).

    Raises:
        AssetError naming the file if it cannot be opened or demuxed, has no video stream,
        has no frames, or has packets without timestamps.
    """
    av = _import_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise AssetError(f"{path}: no video stream")
            stream = container.streams.video[0]
            pts = [p.pts for p in container.demux(stream) if p.size > 0]
            tb = stream.time_base
            w, h = stream.codec_context.width, stream.codec_context.height
    except AssetError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise many types for damaged input
        raise AssetError(f"{path}: cannot read video ({type(exc).__name__}: {exc})") from None
    if not pts:
        raise AssetError(f"{path}: the video stream has no frames")
    if any(p is None for p in pts):
        raise AssetError(f"{path}: video packets without timestamps (cannot index frames)")
    if tb is None:
        raise AssetError(f"{path}: video stream without a time base")
    return VideoIndex(path, np.sort(np.asarray(pts, dtype=np.int64)), Fraction(tb), int(w), int(h))


def _to_rgb(av_frame: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PyAV frame with its display rotation applied."""
    image = av_frame.to_ndarray(format="rgb24")
    quarter_turns = round((getattr(av_frame, "rotation", 0) or 0) / 90) % 4
    if quarter_turns:
        image = np.rot90(image, k=quarter_turns)
    return np.ascontiguousarray(image)


class VideoFrameDecoder:
    """Decodes frames of one video by index (see the module docstring). Thread-safe.

    Args:
        index: the video's :class:`VideoIndex`.

    The open file is not pickled: a copy in another process reopens it on first use.
    """

    def __init__(self, index: VideoIndex) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._container: Any = None
        self._frames: Any = None  # iterator over decoded frames
        self._last = -1  # index of the last frame taken from _frames

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index"])

    def close(self) -> None:
        """Close the file (it is reopened if another frame is asked for)."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames, self._last = None, None, -1

    def _seek(self, target: int) -> None:
        av = _import_av()
        if self._container is None:
            self._container = av.open(str(self.index.path))
        stream = self._container.streams.video[0]
        self._container.seek(int(self.index.pts[target]), stream=stream, backward=True, any_frame=False)
        self._frames = self._container.decode(stream)
        self._last = None  # unknown until a frame with a known pts comes out

    def frame(self, i: int) -> np.ndarray:
        """Frame ``i`` as (H, W, 3) uint8 RGB; AssetError naming the video and frame if it cannot be decoded."""
        n = self.index.n_frames
        if not 0 <= i < n:
            raise IndexError(f"{self.index.path}: frame {i} outside 0..{n - 1}")
        want = int(self.index.pts[i])
        with self._lock:
            try:
                if self._frames is None or self._last is None or not (self._last < i <= self._last + FORWARD_LIMIT):
                    self._seek(i)
                for fr in self._frames:
                    if fr.pts is None:
                        continue
                    if fr.pts >= want:
                        self._last = int(np.searchsorted(self.index.pts, fr.pts))
                        if fr.pts == want:
                            return _to_rgb(fr)
                        break
            except AssetError:
                raise
            except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise many types for damaged input
                self._close()
                raise AssetError(
                    f"{self.index.path}: cannot decode frame {i} ({type(exc).__name__}: {exc})"
                ) from None
            self._close()
        raise AssetError(f"{self.index.path}: frame {i} (pts {want}) was not produced by the decoder")


@dataclass(frozen=True)
class _FrameLoader:
    decoder: VideoFrameDecoder
    index: int

    def __call__(self) -> np.ndarray:
        return self.decoder.frame(self.index)


class VideoFolder(SourceReader):
    """Reader of a folder of videos (see the module docstring).

    Args:
        root: the folder (videos directly inside it).
        every: keep frames ``0, every, 2 * every, ...`` of each video (>= 1).
        terms: the terms of use of this folder's clips.
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`).

    Attributes (besides :class:`SourceReader`'s): ``videos``: the :class:`VideoIndex` of each
    video read, in order.
    """

    source = SOURCE
    terms = TERMS

    def __init__(self, root: str | os.PathLike[str], every: int = 5, terms: str = TERMS,
                 guard: ExclusionGuard | None = None) -> None:
        if int(every) != every or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        every = int(every)
        root = Path(root)
        guard = ExclusionGuard.default() if guard is None else guard
        guard.refuse_folder(root, "the video folder reader")
        if not root.is_dir():
            raise AssetError(f"{root}: video folder not found")
        videos = sorted(
            Path(e.path) for e in os.scandir(root)
            if e.is_file() and not e.name.startswith(".") and Path(e.name).suffix.lower() in VIDEO_SUFFIXES
        )
        keep, excluded = guard.split([v.name for v in videos], f"video folder {root}")
        videos = [videos[i] for i in keep]
        if not videos and not excluded:
            raise AssetError(f"{root}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        self.terms = terms
        self.every = every
        self.videos: list[VideoIndex] = []
        samples: list[FaceSample] = []
        for path in videos:
            idx = index_video(path)
            self.videos.append(idx)
            decoder = VideoFrameDecoder(idx)
            for i in range(0, idx.n_frames, every):
                samples.append(
                    FaceSample(
                        key=f"{SOURCE}:{root.name}/{path.name}#{i:06d}",
                        source=SOURCE,
                        terms=terms,
                        image_path=path,
                        meta={"frame_index": i, "time_s": idx.time_s(i)},
                        loader=_FrameLoader(decoder, i),
                    )
                )
        super().__init__(root, samples, excluded, [])
        logger.info("video folder %s: %d videos, %d frames kept (every %d)",
                    root, len(self.videos), len(samples), every)

    def close(self) -> None:
        """Close every open video file."""
        for s in self._samples:
            if isinstance(s.loader, _FrameLoader):
                s.loader.decoder.close()
