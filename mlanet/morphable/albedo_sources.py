"""Training photos for the data-driven albedo model (:mod:`.albedo_fit`), with their terms.

Only images named in a training list are read; lists that share a name with the AFLW2000-3D
held-out list (:data:`mlanet.data.splits.AFLW2000_DEV_HELDOUT`) are refused, so accuracy
reported on the held-out images never comes from faces the albedo model has seen.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import AssetError
from .albedo_fit import FaceSample

#: Terms of AFLW2000-3D, recorded in the albedo file's header (see ``shared/README.md``).
AFLW_TERMS = "research use only (AFLW2000-3D)"


def aflw_samples(root: str | Path, list_spec: str) -> list[FaceSample]:
    """The images of ``list_spec`` (a list file or named list) in the AFLW2000-3D folder ``root``.

    Landmarks are the ground-truth ``pt3d_68`` x, y in image pixels (project convention).
    Raises :class:`AssetError` for a list that overlaps the held-out list, a missing folder,
    or listed images without their ``.jpg``/``.mat`` pair.
    """
    from ..data.aflw2000 import read_aflw2000_mat
    from ..data.landmarks import read_image_rgb
    from ..data.splits import AFLW2000_DEV_HELDOUT, read_name_list

    names = read_name_list(list_spec)
    held_out = set(read_name_list(AFLW2000_DEV_HELDOUT))
    overlap = sorted(held_out.intersection(names))
    if overlap:
        raise AssetError(
            f"{list_spec}: {len(overlap)} image(s) of the held-out list (e.g. {overlap[:3]}); the held-out "
            "images are for reporting accuracy only, never for building models"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise AssetError(f"{root}: no such AFLW2000-3D folder")
    missing = [n for n in names if not (root / f"{n}.mat").is_file() or not (root / f"{n}.jpg").is_file()]
    if missing:
        raise AssetError(f"{root}: {len(missing)} listed image(s) lack their .jpg/.mat pair, e.g. {missing[:3]}")
    out = []
    for n in names:
        rec = read_aflw2000_mat(root / f"{n}.mat", image_path=root / f"{n}.jpg")
        out.append(FaceSample(name=n, image=read_image_rgb(rec.image_path), landmarks=rec.landmarks))
    return out
