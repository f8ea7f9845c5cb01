"""Readers of the real training sources, all returning one sample schema (issue 14).

========================  =========================================  ===============================
source name               reader                                     labels
========================  =========================================  ===============================
``aflw-crops``            :class:`.aflw_crops.AFLWCrops`              ``aflw21`` (visible subset), yaw
``300w``                  :class:`.w300.W300`                         ``ibug68``
``mtfl``                  :class:`.mtfl.MTFL`                         ``mtfl5``
``video-folder``          :class:`.video_folder.VideoFolder`          none (frames of every video)
========================  =========================================  ===============================

``open_source(name, path, **options)`` builds a reader; each reader is a sequence of
:class:`.schema.FaceSample`. Every reader drops AFLW2000-3D images and refuses AFLW2000-3D
folders (:mod:`.exclusion`); :func:`check_training_list` checks any list of keys or paths.
:func:`.draw.draw_samples` draws check images.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Callable

from mlanet.errors import MLANetError
from mlanet.data.sources.aflw_crops import AFLWCrops
from mlanet.data.sources.base import SourceReader
from mlanet.data.sources.exclusion import AFLW2000_MAX_NUMBER, ExclusionGuard, check_training_list, find_aflw2000_entries
from mlanet.data.sources.mtfl import MTFL
from mlanet.data.sources.schema import AFLW21, DEFINITIONS, IBUG68, MTFL5, FaceSample, LandmarkDefinition, LandmarkSet
from mlanet.data.sources.video_folder import VideoFolder
from mlanet.data.sources.w300 import W300

#: Source name -> reader class (called as ``reader(path, **options)``).
READERS: dict[str, Callable[..., SourceReader]] = {
    AFLWCrops.source: AFLWCrops,
    W300.source: W300,
    MTFL.source: MTFL,
    VideoFolder.source: VideoFolder,
}


class UnknownSourceError(MLANetError):
    """``open_source`` was given a name no reader has."""


def list_sources() -> list[str]:
    """Names accepted by :func:`open_source`."""
    return list(READERS)


def open_source(name: str, path: str | os.PathLike[str], **options: Any) -> SourceReader:
    """The reader of source ``name`` on the folder ``path``.

    ``options`` go to the reader (e.g. ``every=`` for ``video-folder``, ``guard=`` for all).
    Raises :class:`UnknownSourceError` (with a suggestion) for an unknown name, and the
    reader's :class:`mlanet.errors.AssetError` for a bad folder.
    """
    if name not in READERS:
        close = difflib.get_close_matches(name, list(READERS), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(READERS)}"
        raise UnknownSourceError(f"unknown training source {name!r} ({hint})")
    return READERS[name](path, **options)


__all__ = [
    "AFLW21", "AFLW2000_MAX_NUMBER", "AFLWCrops", "DEFINITIONS", "ExclusionGuard", "FaceSample", "IBUG68",
    "LandmarkDefinition", "LandmarkSet", "MTFL", "MTFL5", "READERS", "SourceReader", "UnknownSourceError",
    "VideoFolder", "W300", "check_training_list", "find_aflw2000_entries", "list_sources", "open_source",
]
