"""Where the project keeps its assets on a user's machine.

One location, the *asset home*: ``$MLANET_HOME`` if set, else
``$XDG_DATA_HOME/mlanet`` (``~/.local/share/mlanet`` when ``XDG_DATA_HOME`` is unset).
Face models live in ``<home>/face_models/``; downloads in ``<home>/downloads/``.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the asset home.
HOME_ENV_VAR = "MLANET_HOME"

#: File name of the default face model inside ``face_models/``.
DEFAULT_FACE_MODEL_NAME = "ict_face.mlface.npz"


def asset_home() -> Path:
    """The asset home directory (not created)."""
    env = os.environ.get(HOME_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "mlanet"


def face_model_dir() -> Path:
    """Directory holding built face-model files."""
    return asset_home() / "face_models"


def default_face_model_path() -> Path:
    """Path of the default (ICT-FaceKit) face-model file."""
    return face_model_dir() / DEFAULT_FACE_MODEL_NAME


def downloads_dir() -> Path:
    """Directory for downloaded upstream archives."""
    return asset_home() / "downloads"


#: Where a checkout or a user keeps ICT-FaceKit and MediaPipe's canonical mesh, under a shared folder.
SHARED_ICT_ARCHIVE = Path("assets/ict-facekit/FaceXModel.tar.xz")
SHARED_MEDIAPIPE_OBJ = Path("assets/mediapipe-canonical/canonical_face_model.obj")
#: Environment variable naming a shared-assets folder (with ``assets/ict-facekit/...``).
SHARED_ENV_VAR = "MLANET_SHARED"


def find_local_ict_assets() -> tuple[Path, Path | None] | None:
    """``(ICT archive, MediaPipe OBJ or None)`` found in a shared-assets folder, else ``None``.

    Looks in ``$MLANET_SHARED``, ``../shared`` and ``./shared`` from the working directory, and
    ``shared/`` beside this checkout; paths are absolute.
    """
    roots = [os.environ.get(SHARED_ENV_VAR), Path.cwd() / ".." / "shared", Path.cwd() / "shared",
             Path(__file__).resolve().parents[1] / ".." / "shared"]
    for root in roots:
        if not root:
            continue
        ict = (Path(root) / SHARED_ICT_ARCHIVE).resolve()
        if ict.is_file():
            mp = (Path(root) / SHARED_MEDIAPIPE_OBJ).resolve()
            return ict, (mp if mp.is_file() else None)
    return None
