"""Where the benchmarks find the shared data (clips, the AFLW2000-3D dev split, the teacher's weights).

The shared folder is ``$MLANET_SHARED`` when set, else ``shared/`` beside the checkout (``<repo>/../shared``,
as the tests resolve it). It is never part of the package: an installed copy sets ``$MLANET_SHARED`` or passes
the paths explicitly.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlanet.paths import SHARED_ENV_VAR

#: The shared clips, relative to the shared folder.
VIDEO = Path("data") / "video"


def shared_dir() -> Path:
    """The shared data folder: ``$MLANET_SHARED``, else ``<checkout>/../shared`` (absolute; may not exist)."""
    env = os.environ.get(SHARED_ENV_VAR)
    return Path(env).expanduser() if env else (Path(__file__).resolve().parents[1] / ".." / "shared").resolve()


def shared_clip(name: str = "obama_720p.mp4") -> Path:
    """A clip of the shared folder's ``data/video/`` (absolute; may not exist)."""
    return (shared_dir() / VIDEO / name).resolve()
