"""MTFL faces with 5 manual points (``shared/data/train/mtfl``).

Layout: ``landmarks5.txt`` and the images it names (``lfw_5590/...``, ``net_7876/...``).
Each non-blank line not starting with ``#``: the image path relative to the folder (``\\``
accepted as separator), then x of (left eye, right eye, nose, left mouth corner, right mouth
corner), then y of the same five, in pixels. "Left" is the image's left (the ``mtfl5``
definition in :mod:`.schema`).

Coordinates: used as published, **no shift**. MTFL (and the Sun et al. 2013 sets it comes
from) does not document a pixel convention, and the values (on a 0.04 px grid, from
rescaled annotations) give no way to infer one; the possible half-pixel error (0.5 px on
80x80 faces) is below what the labels' own precision and a drawn check can show. Drawn
images show the points on the eye centres, nose tip and mouth corners, left on the left.
Points may lie slightly outside the image (y down to -7.5); they are annotated, so visible.

Misaligned subset (found in issue 14): in the shared copy, every ``net_7876/`` image whose
name starts with ``_`` (``_-20_1004_0.jpg``, 2,283 files) has labels about 28 px *above*
the features (80x80 images). Measured against MediaPipe face-detection keypoints (eyes,
nose tip) on all 9,932 images: median offset dy = -28.2 px (1-99 %: -29.8 .. -25.8) for
2,281 of those 2,283 (the other two: no detection), against -0.2 / -0.5 px (LFW / other web
faces) everywhere else; drawn images agree. :func:`is_misaligned` matches them and they are
skipped by default, listed in :attr:`SourceReader.skipped`
(``keep_misaligned=True`` keeps them).

No yaw. Images named in the list but missing are skipped with a warning
(:attr:`SourceReader.skipped`); a malformed line raises :class:`AssetError` naming the file
and line. Files named like an AFLW2000-3D image are dropped (:mod:`.exclusion`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np

from mlanet.errors import AssetError
from mlanet.data.landmarks import warn_skipped
from mlanet.data.sources.base import SourceReader
from mlanet.data.sources.exclusion import ExclusionGuard
from mlanet.data.sources.schema import MTFL5, FaceSample, LandmarkSet, make_key

logger = logging.getLogger(__name__)

SOURCE = "mtfl"
TERMS = (
    "research use only (non-commercial): MTFL (Zhang et al. 2014), web faces and LFW faces; "
    "models trained on it are research-only"
)

#: Name of the annotation file inside the folder.
LIST_FILE = "landmarks5.txt"


def is_misaligned(rel: str) -> bool:
    """True for a listed path in the misaligned subset: ``net_7876/_*`` (see the module docstring)."""
    parts = rel.split("/")
    return len(parts) == 2 and parts[0] == "net_7876" and parts[1].startswith("_")


def read_landmarks5(path: Path) -> list[tuple[str, np.ndarray]]:
    """Parse ``landmarks5.txt``.

    Returns:
        ``(relative posix path, (5, 2) float64 x, y)`` per line, in file order.

    Raises:
        AssetError naming the file (and line) if it is missing, unreadable, malformed,
        lists a path twice, escapes the folder or has no entries.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AssetError(f"{path}: MTFL landmark list not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AssetError(f"{path}: cannot read the MTFL landmark list ({exc})") from None
    out: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    n = MTFL5.n_points
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tokens = s.split()
        if len(tokens) < 2 * n + 1:
            raise AssetError(f"{path}:{lineno}: expected a path and {2 * n} numbers, got {len(tokens)} fields")
        try:
            v = np.array([float(t) for t in tokens[-2 * n :]], dtype=np.float64)
        except ValueError:
            raise AssetError(f"{path}:{lineno}: non-numeric coordinate in {tokens[-2 * n:]}") from None
        if not np.all(np.isfinite(v)):
            raise AssetError(f"{path}:{lineno}: non-finite coordinate")
        rel = " ".join(tokens[: -2 * n]).replace("\\", "/")
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or ".." in parts:
            raise AssetError(f"{path}:{lineno}: image path {rel!r} leaves the folder")
        if rel in seen:
            raise AssetError(f"{path}:{lineno}: {rel} is listed twice")
        seen.add(rel)
        out.append((rel, np.stack([v[:n], v[n:]], axis=1)))
    if not out:
        raise AssetError(f"{path}: lists no images")
    return out


class MTFL(SourceReader):
    """Reader of an MTFL folder (see the module docstring).

    Args:
        root: folder with ``landmarks5.txt`` and the images it names.
        guard: the AFLW2000-3D guard (default :meth:`ExclusionGuard.default`).
        keep_misaligned: keep the :func:`is_misaligned` subset (labels ~28 px off; default
            skipped).

    Each sample: ``landmark_sets = {"mtfl5": ...}`` (all visible), ``yaw_deg`` None, key
    ``"mtfl:<path as listed>"``.
    """

    source = SOURCE
    terms = TERMS

    def __init__(self, root: str | os.PathLike[str], guard: ExclusionGuard | None = None,
                 keep_misaligned: bool = False) -> None:
        root = Path(root)
        guard = ExclusionGuard.default() if guard is None else guard
        guard.refuse_folder(root, "the MTFL reader")
        if not root.is_dir():
            raise AssetError(f"{root}: MTFL folder not found")
        entries = read_landmarks5(root / LIST_FILE)
        keep, excluded = guard.split([rel for rel, _ in entries], f"MTFL {root}")
        listing: dict[Path, set[str]] = {}
        visible = np.ones(MTFL5.n_points, dtype=bool)
        samples, skipped, misaligned = [], [], []
        for i in keep:
            rel, pts = entries[i]
            path = root / rel
            if not keep_misaligned and is_misaligned(rel):
                misaligned.append(f"{path} (labels ~28 px above the features: net_7876/_* subset)")
                continue
            folder = path.parent
            if folder not in listing:
                try:
                    listing[folder] = {e.name for e in os.scandir(folder) if e.is_file()}
                except OSError:
                    listing[folder] = set()
            if path.name not in listing[folder]:
                skipped.append(f"{path} (listed in {LIST_FILE}, file missing)")
                continue
            samples.append(
                FaceSample(
                    key=make_key(SOURCE, rel),
                    source=SOURCE,
                    terms=TERMS,
                    image_path=path,
                    landmark_sets={MTFL5.name: LandmarkSet(MTFL5.name, pts, visible)},
                )
            )
        warn_skipped(logger, f"MTFL {root}", skipped)
        if misaligned:
            logger.warning("MTFL %s: skipped %d images with misaligned labels (%s)", root, len(misaligned),
                           "net_7876/_*; keep_misaligned=True keeps them")
        super().__init__(root, samples, excluded, skipped + misaligned)
        logger.info("MTFL %s: %d samples (%d skipped, %d AFLW2000-3D dropped)",
                    root, len(samples), len(self.skipped), len(excluded))
