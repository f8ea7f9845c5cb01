"""``overlay.mp4``: the H.264 overlay video (render mode chosen by --mode).

Frame k is input frame k: frames lost to a damaged input are black, photos of another size than
the first are letterboxed into its frame. An H.264 stream cannot be appended to, so resume
re-encodes the previous file's first frames into a new one (and the run continues at no more
frames than the old file holds; a damaged one restarts at 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mlanet.errors import MLANetError
from mlanet.edge.protocols import FrameWriter
from mlanet.edge.types import FrameResult
from mlanet.edge.sinks.base import SinkBase

log = logging.getLogger(__name__)


class OverlayVideoSink(SinkBase):
    """Writes ``overlay.mp4`` from ``FrameResult.rendered`` ((H, W, 3) uint8 RGB; frames without one are
    skipped); outside ``FrameResult.rendered_box`` the source frame's own I420 planes are encoded
    (``Frame.yuv420``, when it has them), except for letterboxed photos."""

    _video: FrameWriter | None = None  # H264VideoWriter once the first frame is written
    _resume_from: int | None = None

    @property
    def path(self) -> Path:
        return self.ctx.out_dir / "overlay.mp4"

    def resumable_frames(self) -> int | None:
        from mlanet.edge.writers.video import count_video_frames

        if not self.path.exists():
            return 0
        try:
            return count_video_frames(self.path)
        except MLANetError:  # a damaged overlay is re-done from frame 0
            log.warning("%s cannot be read; the overlay restarts at frame 0", self.path)
            return 0

    def begin(self, resume_from: int | None) -> None:
        self._resume_from = resume_from  # the writer opens at the first frame (its size)

    def _open(self, width: int, height: int) -> None:
        from mlanet.edge.writers.video import H264VideoWriter

        start = self._resume_from
        if start and self.path.exists():
            # Photos differ in size: continue at the size the overlay already has (later ones are letterboxed).
            old = _overlay_size(self.path)
            if old is not None and old not in ((width, height), (width + width % 2, height + height % 2)):
                width, height = old
        self._video = H264VideoWriter(self.path, self.ctx.fps, width, height)
        self.ctx.run_info["encoder"] = self._video.settings
        if start:
            self._video.resume_from(self.path, start)

    def write(self, result: FrameResult, time_s: float) -> None:
        if result.rendered is None:
            return
        frame, rendered = result.frame, result.rendered
        if self._video is None:
            self._open(frame.width, frame.height)
        video = self._video
        if video is None:
            raise RuntimeError(f"{self.path}: the overlay writer did not open")
        if (frame.width, frame.height) != (video.width, video.height):
            from mlanet.edge.frames import letterbox  # photos of other sizes: fitted into the first one's frame

            rendered = letterbox(rendered, video.width, video.height)
        # Frames lost to a damaged input (index gaps) are black, so overlay frame k stays input frame k.
        if video.n_written < frame.index:
            black = np.zeros_like(rendered)
            for _ in range(frame.index - video.n_written):
                video.write(black)
        if rendered is result.rendered:  # not letterboxed: the source's own YUV outside the overlay
            video.write(rendered, base_yuv420=frame.yuv420, changed_box=result.rendered_box)
        else:
            video.write(rendered)

    def finish(self, status: str) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.close()


def _overlay_size(path: Path) -> tuple[int, int] | None:
    """(W, H) in pixels of the video stream of ``path``, or None when it cannot be read (then
    ``H264VideoWriter.resume_from`` reports the file)."""
    import av

    try:
        with av.open(str(path)) as c:
            cc = c.streams.video[0].codec_context
            return int(cc.width), int(cc.height)
    except (av.error.FFmpegError, OSError, IndexError):
        return None
