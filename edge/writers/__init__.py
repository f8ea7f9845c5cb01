"""Writers for ``mlanet-video`` outputs (import the submodules; nothing heavy is imported here).

- :mod:`.video` — :class:`~.video.H264VideoWriter`: H.264 (libx264, yuv420p, BT.709) MP4/MKV/MOV
  through PyAV, written to a temporary file and renamed into place on ``close()``; ``--resume``
  re-encodes the first frames of an existing video; :func:`~.video.count_video_frames`.
- :mod:`.meshes` — :func:`~.meshes.write_obj` (OBJ + MTL + PNG texture) and
  :func:`~.meshes.write_ply` (binary PLY with per-corner texcoords), per-frame meshes in a
  y-up frame.
- :mod:`.gltf` — :func:`~.gltf.write_track_glb` / :class:`~.gltf.GlbTrackWriter`: one
  self-contained GLB 2.0 per face track (mesh with UVs and morph targets named with ARKit
  names, animated morph weights and head pose); :func:`~.gltf.read_track_animation`.
- :mod:`.tables` — :class:`~.tables.BlendshapeCsvWriter` (per-frame ARKit blendshape CSV,
  appended and flushed row by row, resumable), :class:`~.tables.ArkitMapping` (model
  expressions -> ARKit names), :func:`~.tables.write_params_npz`, :func:`~.tables.write_json`.

Every file is either written through a temporary file beside the target and renamed into
place (video, meshes, GLB, npz, JSON), or appended row by row and flushed (CSV), so an
interrupted run never leaves a half-written file under a final name, except the CSV whose last
line may be incomplete after a hard kill (``BlendshapeCsvWriter`` drops it on resume).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Iterator

from ...errors import MLANetError
from ...fileutil import mkstemp_beside


class WriterError(MLANetError):
    """An output file cannot be written, resumed or read back; the message names the file."""


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[IO[bytes]]:
    """Open a temporary file beside ``path`` for binary writing; rename it onto ``path`` on success.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and
    ``path`` is left as it was. The parent folder is created if needed.
    """
    fd, tmp = mkstemp_beside(path, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_file`); returns the path."""
    with atomic_file(path) as fh:
        fh.write(data)
    return Path(path)


__all__ = ["WriterError", "atomic_file", "write_bytes_atomic"]
