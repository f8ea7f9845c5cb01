"""Keep AFLW2000-3D out of training: the guard every training reader uses, and the list check.

AFLW2000-3D is drawn from AFLW: its 2,000 images are exactly the AFLW images numbered
``image00002`` ... ``image04375`` (``shared/data/train/README.md``). From issue 14 on, the
AFLW2000-3D dev split (``shared/data/aflw2000-3d-dev/``) is validation only. Rules:

* **Names.** A file whose stem starts with ``image`` + five digits (case-insensitive; e.g.
  ``image04375.jpg``, ``image04375_flip.png``) and whose number is ``<=``
  :data:`AFLW2000_MAX_NUMBER` is an AFLW2000-3D image, in whatever folder it sits. So is any
  file whose stem equals the stem of an image in the dev folder (when that folder is found).
  Every reader passes its candidate files through :meth:`ExclusionGuard.split`: such files are
  **dropped**, counted and logged (one warning per reader with the count and the first
  names); the reader keeps the dropped names in its ``excluded`` attribute.
* **Folders.** A reader given the dev folder (or a folder inside it), or any folder in the
  AFLW2000-3D layout (``imageNNNNN.mat`` annotation files next to the images, in the folder
  or one level below), **refuses** it: :func:`refuse_aflw2000_folder` raises
  :class:`AssetError` naming the folder.
* **Lists.** :func:`check_training_list` raises if a training list (sample keys or paths)
  names an AFLW2000-3D image; :func:`find_aflw2000_entries` returns the offending entries.

The dev folder is found at run time (``$MLANET_SHARED/data/aflw2000-3d-dev``, else
``<repo>/../shared/data/aflw2000-3d-dev``); only its file names are read.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from mlanet.errors import AssetError

logger = logging.getLogger(__name__)

#: Highest AFLW image number that belongs to AFLW2000-3D (``image04375``).
AFLW2000_MAX_NUMBER: int = 4375

#: The dev split's place inside a shared-data folder.
DEV_SPLIT = Path("data") / "aflw2000-3d-dev"

_AFLW_NAME = re.compile(r"^image(\d{5})(?!\d)", re.IGNORECASE)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _base_name(name: str | os.PathLike[str]) -> str:
    """Last path component of a file name, path or sample key (``"src:a/b.jpg#000010"`` -> ``"b.jpg"``)."""
    s = os.fspath(name).split("#", 1)[0].replace("\\", "/")
    return s.rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def aflw_number(name: str | os.PathLike[str]) -> int | None:
    """The AFLW image number of a file name, key or path (``"a/image04376.jpg"`` -> 4376), else None.

    Only the last path component counts; a sample key ``"source:rel/path#frame"`` works too.
    """
    m = _AFLW_NAME.match(_base_name(name))
    return int(m.group(1)) if m else None


def default_dev_folder() -> Path | None:
    """The shared AFLW2000-3D dev folder, if one is found (see the module docstring)."""
    candidates = []
    env = os.environ.get("MLANET_SHARED")
    if env:
        candidates.append(Path(env).expanduser() / DEV_SPLIT)
    candidates.append(Path(__file__).resolve().parents[3].parent / "shared" / DEV_SPLIT)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return None


@lru_cache(maxsize=8)
def _dev_stems(folder: str) -> frozenset[str]:
    root = Path(folder)
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise AssetError(f"{root}: cannot list the AFLW2000-3D dev folder ({exc.strerror or exc})") from None
    return frozenset(
        Path(e.name).stem.lower() for e in entries if e.is_file() and e.name.lower().endswith(_IMAGE_SUFFIXES)
    )


def dev_image_stems(dev_folder: str | os.PathLike[str] | None) -> frozenset[str]:
    """Lower-case stems of the images in the dev folder (empty set for None)."""
    if dev_folder is None:
        return frozenset()
    return _dev_stems(str(Path(dev_folder).resolve()))


@dataclass(frozen=True)
class ExclusionGuard:
    """Decides whether a file is an AFLW2000-3D image (see the module docstring).

    Attributes:
        dev_folder: the AFLW2000-3D dev folder whose file names are excluded too (None: the
            number rule only). :meth:`default` finds the shared one.
        max_number: AFLW numbers up to this are AFLW2000-3D.
    """

    dev_folder: Path | None = None
    max_number: int = AFLW2000_MAX_NUMBER

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dev_stems", dev_image_stems(self.dev_folder))

    @classmethod
    def default(cls) -> ExclusionGuard:
        """A guard with the shared dev folder, if found."""
        return cls(default_dev_folder())

    def reason(self, name: str | os.PathLike[str]) -> str | None:
        """Why ``name`` (file name, path or sample key) is AFLW2000-3D, or None if it is not."""
        number = aflw_number(name)
        if number is not None and number <= self.max_number:
            return f"AFLW image number {number} <= {self.max_number} (AFLW2000-3D)"
        base = _base_name(name).lower()
        stem = base.rsplit(".", 1)[0] if "." in base else base
        if stem in self._dev_stems:  # type: ignore[attr-defined]
            return f"same name as an image of the AFLW2000-3D dev folder {self.dev_folder}"
        return None

    def is_excluded(self, name: str | os.PathLike[str]) -> bool:
        """True if ``name`` is an AFLW2000-3D image."""
        return self.reason(name) is not None

    def split(self, names: Sequence[str], what: str) -> tuple[list[int], list[str]]:
        """Indices of ``names`` to keep, and the names dropped; logs one warning if any is dropped.

        Args:
            names: file names, paths or keys, in the reader's order.
            what: the reader and folder, for the log line.
        """
        keep: list[int] = []
        dropped: list[str] = []
        for i, n in enumerate(names):
            (dropped.append(str(n)) if self.is_excluded(n) else keep.append(i))
        if dropped:
            logger.warning(
                "%s: dropped %d AFLW2000-3D image(s) (validation only), e.g. %s", what, len(dropped), dropped[:3]
            )
        return keep, dropped

    def refuse_folder(self, root: str | os.PathLike[str], what: str) -> None:
        """:func:`refuse_aflw2000_folder` with this guard's dev folder."""
        refuse_aflw2000_folder(root, what, dev_folder=self.dev_folder)


def _has_aflw2000_mats(folder: Path) -> Path | None:
    """An ``imageNNNNN.mat`` file in ``folder`` or one level below, if any (the AFLW2000-3D layout)."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError:
        return None
    subdirs = []
    for e in entries:
        if e.is_file() and e.name.lower().endswith(".mat") and _AFLW_NAME.match(e.name):
            return Path(e.path)
        if e.is_dir() and not e.name.startswith("."):
            subdirs.append(Path(e.path))
    for sub in subdirs:
        try:
            with os.scandir(sub) as it:
                for e in it:
                    if e.is_file() and e.name.lower().endswith(".mat") and _AFLW_NAME.match(e.name):
                        return Path(e.path)
        except OSError:
            continue
    return None


def refuse_aflw2000_folder(
    root: str | os.PathLike[str], what: str, dev_folder: str | os.PathLike[str] | None = None
) -> None:
    """Raise :class:`AssetError` naming ``root`` if it is (inside) the dev folder or in the AFLW2000-3D layout.

    Args:
        root: the folder a training reader was given.
        what: the reader's name, for the message.
        dev_folder: the dev folder (None: only the layout check).
    """
    root = Path(root)
    hint = "AFLW2000-3D is validation only: no training reader may read it (shared/data/train/README.md)"
    if dev_folder is not None and root.exists():
        r, d = root.resolve(), Path(dev_folder).resolve()
        if r == d or d in r.parents:
            raise AssetError(f"{root}: is the AFLW2000-3D dev folder; {what} refuses it. {hint}")
    if root.is_dir():
        mat = _has_aflw2000_mats(root)
        if mat is not None:
            raise AssetError(
                f"{root}: is in the AFLW2000-3D layout ({mat.name} next to the images); {what} refuses it. {hint}"
            )


def find_aflw2000_entries(entries: Iterable[str | os.PathLike[str]], guard: ExclusionGuard | None = None) -> list[str]:
    """The entries of a training list (sample keys, file names or paths) that are AFLW2000-3D images.

    ``guard`` defaults to :meth:`ExclusionGuard.default` (number rule + the shared dev folder's names).
    """
    guard = ExclusionGuard.default() if guard is None else guard
    return [str(e) for e in entries if guard.is_excluded(e)]


def check_training_list(entries: Iterable[str | os.PathLike[str]], guard: ExclusionGuard | None = None,
                        what: str = "training list") -> None:
    """Raise :class:`AssetError` if a training list names any AFLW2000-3D image.

    Args:
        entries: sample keys (``FaceSample.key``), file names or paths.
        guard: see :func:`find_aflw2000_entries`.
        what: names the list in the message (e.g. its file).
    """
    bad = find_aflw2000_entries(entries, guard)
    if bad:
        raise AssetError(
            f"{what}: contains {len(bad)} AFLW2000-3D image(s), e.g. {bad[:5]}; "
            "AFLW2000-3D is validation only and may not be trained on"
        )
