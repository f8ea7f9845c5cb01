"""Small file helpers shared across the package."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import IO, Iterator

from mlanet.errors import MLANetError


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


def os_error_message(exc: OSError) -> str:
    """One line for an :class:`OSError`: the path it is about (the target of a rename) and the reason."""
    name = exc.filename2 if exc.filename2 is not None else exc.filename
    reason = exc.strerror or str(exc)
    return f"{name}: {reason}" if name is not None else reason


def error_line(exc: BaseException) -> str:
    """One line for an error that ends a run: :func:`os_error_message` for an :class:`OSError`, the
    message of an :class:`MLANetError`, else the type and message (an unexpected error)."""
    if isinstance(exc, OSError):
        return os_error_message(exc)
    if isinstance(exc, MLANetError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _probe_writable(folder: Path, what: str, given: str | os.PathLike[str]) -> None:
    """Create and remove a file in the existing ``folder`` (``os.access`` is not enough: root, read-only mounts)."""
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=".mlanet-write-check.", dir=folder)
    except OSError as exc:
        raise MLANetError(f"{what} {given}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_creatable(folder: Path, what: str, given: str | os.PathLike[str]) -> None:
    """``folder`` exists and is writable, or can be created (its nearest existing ancestor is a writable folder)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise MLANetError(f"{what} {given}: {existing} is not a folder")
    _probe_writable(existing, what, given)


def check_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output folder that cannot be written, before any work is done.

    ``path`` may exist (a writable folder) or not (then its nearest existing ancestor must be a
    writable folder, so it can be created). Nothing is created. ``what`` names the option
    (``"--out"``) in the :class:`MLANetError`.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise MLANetError(f"{what} {path}: exists and is not a folder")
    _check_creatable(p, what, path)
    return p


def check_writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output file path that cannot be written, before any work is done.

    The file is written beside itself and renamed (:func:`atomic_file`), so ``path`` must not be
    a folder and its folder must be writable or creatable. Nothing is created. ``what`` names
    the option (``"--json"``) in the :class:`MLANetError`.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise MLANetError(f"{what} {path}: is a folder; give a file name")
    if str(path).endswith(("/", os.sep)):
        raise MLANetError(f"{what} {path}: names a folder; give a file name")
    _check_creatable(p.parent, what, path)
    return p
