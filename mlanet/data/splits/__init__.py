"""Named image lists (splits) shipped with the project, and the reader for any such list.

A list file holds one image stem per line (``image00008``); ``#`` starts a comment. The
AFLW2000-3D dev split used for the default weights (issue 7):

* :data:`AFLW2000_DEV_TRAIN` — 99 images used to train the default weights and to build the
  albedo model; never report accuracy on them.
* :data:`AFLW2000_DEV_HELDOUT` — the other 100 images (66 / 19 / 15 per yaw bin); accuracy of
  the default weights is reported on these only.

Both are stratified by yaw bin and ordered by a salted SHA-256 of the name, so the split does
not depend on file order or on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from mlanet.errors import AssetError

_HERE = Path(__file__).resolve().parent

AFLW2000_DEV_TRAIN = _HERE / "aflw2000_dev_train.txt"
AFLW2000_DEV_HELDOUT = _HERE / "aflw2000_dev_heldout.txt"

#: Names accepted wherever a list path is expected (``--list aflw2000_dev_heldout``).
NAMED_LISTS = {"aflw2000_dev_train": AFLW2000_DEV_TRAIN, "aflw2000_dev_heldout": AFLW2000_DEV_HELDOUT}


def resolve_list(spec: str | os.PathLike[str]) -> Path:
    """A list file from a path or one of the names in :data:`NAMED_LISTS`."""
    s = str(spec)
    return NAMED_LISTS[s] if s in NAMED_LISTS else Path(s)


def read_name_list(spec: str | os.PathLike[str]) -> list[str]:
    """The stems in a list file (or named list), in file order, without comments or blanks.

    Raises:
        AssetError naming the file if it is missing, unreadable, empty or has duplicates.
    """
    path = resolve_list(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AssetError(f"{path}: list file not found (known names: {', '.join(NAMED_LISTS)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AssetError(f"{path}: not a readable text list ({exc})") from None
    names = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise AssetError(f"{path}: the list names no images")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise AssetError(f"{path}: names listed twice: {dupes[:5]}")
    return names
