"""Small file helpers shared across the package."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Iterator


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


def save_figure_atomic(fig: object, path: str | os.PathLike[str], **savefig_kwargs: object) -> Path:
    """Save a matplotlib figure as PNG at ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", **savefig_kwargs)  # type: ignore[attr-defined]
    return Path(path)
