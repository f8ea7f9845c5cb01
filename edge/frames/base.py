"""The frame-source base class, shared constants and helpers.

Part of :mod:`mlanet.edge.frames` (see the package docstring for the conventions every source follows)."""

from __future__ import annotations

import logging
from collections.abc import Iterator


from mlanet.edge.types import Frame, SourceError


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
