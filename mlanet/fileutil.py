"""Small file helpers shared across the package."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: object, *, allow_nan: bool = True) -> Path:
    """Write ``obj`` as indented JSON (trailing newline) atomically; see :func:`write_text_atomic`."""
    import json

    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=allow_nan) + "\n")


def mkstemp_beside(path: str | os.PathLike[str], suffix: str = ".tmp") -> tuple[int, str]:
    """A temporary file next to ``path`` (same file system, so ``os.replace`` is atomic).

    Unlike :func:`tempfile.mkstemp` (mode 0600) the file gets the usual permissions of a new
    file (0666 minus the umask), so the final output is readable like any other file.
    """
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)
    return fd, tmp


def save_figure_atomic(fig: object, path: str | os.PathLike[str], **savefig_kwargs: object) -> Path:
    """Save a matplotlib figure as PNG at ``path`` through a temporary file beside it and a rename."""
    path = Path(path)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", **savefig_kwargs)  # type: ignore[attr-defined]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
