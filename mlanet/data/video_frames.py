"""Frames of a video as an image folder, extracted once and cached (training data from clips).

:func:`extract_frames` decodes every ``every``-th frame of a video with PyAV and writes them as
PNG files into ``<cache_root>/<video stem>-<content id>-every<N>/frame_NNNNNN.png``. The content
id is a SHA-256 of the file's bytes, so a changed video gets a new folder. The folder is built
under a temporary name and renamed when complete: an interrupted extraction leaves no partial
folder that a later run would mistake for a finished one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256

logger = logging.getLogger(__name__)


def extract_frames(video: str | os.PathLike[str], cache_root: str | os.PathLike[str], every: int = 5) -> Path:
    """Folder of PNG frames 0, every, 2*every, ... of ``video`` (built on first use).

    Args:
        video: a video file FFmpeg can decode.
        cache_root: folder that holds one sub-folder per (video content, every).
        every: keep one frame in ``every`` (>= 1).

    Returns:
        The folder of ``frame_NNNNNN.png`` files (N = the frame's index in the video).

    Raises:
        AssetError naming the video if it is missing, cannot be decoded or has no frames;
        ImportError with the install hint if PyAV is missing.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    video = Path(video)
    if not video.is_file():
        raise AssetError(f"{video}: video file not found")
    out = Path(cache_root) / f"{video.stem}-{file_sha256(video)[:12]}-every{every}"
    if out.is_dir():
        return out
    try:
        import av
    except ImportError as exc:
        raise ImportError("extracting video frames needs PyAV: pip install -e '.[edge]'") from exc
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    n = 0
    try:
        try:
            with av.open(str(video)) as container:
                if not container.streams.video:
                    raise AssetError(f"{video}: no video stream")
                for index, frame in enumerate(container.decode(video=0)):
                    if index % every == 0:
                        frame.to_image().save(tmp / f"frame_{index:06d}.png")
                        n += 1
        except AssetError:
            raise
        except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg raise many types for damaged input
            if n == 0:
                raise AssetError(f"{video}: cannot decode video ({type(exc).__name__}: {exc})") from None
            logger.warning("%s: decoding stopped after %d kept frames (%s); using those", video, n, exc)
        if n == 0:
            raise AssetError(f"{video}: no frames decoded")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("%s: %d frames (every %d) extracted to %s", video, n, every, out)
    return out
