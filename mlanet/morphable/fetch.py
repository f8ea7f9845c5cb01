"""Download the pinned ICT-FaceKit release for users with internet access.

The GitHub archive of the pinned commit is downloaded to ``<asset home>/downloads/`` (to a
``.part`` file, renamed when complete) and verified by its *content* checksum (the same one
the builder records; see :mod:`mlanet.morphable.sources.ict_archive`), which does not depend on how GitHub packs
the archive. Offline, it fails at once and names the local-path alternative.
"""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

from mlanet.errors import AssetError, ChecksumError, OfflineError
from mlanet.paths import downloads_dir
from mlanet.morphable.sources.ict_archive import PINNED_COMMIT, PINNED_CONTENT_SHA256, UPSTREAM_REPO, ProgressFn, read_ict_release

#: Archive of the pinned upstream commit.
ICT_ARCHIVE_URL = f"{UPSTREAM_REPO}/archive/{PINNED_COMMIT}.zip"

LOCAL_ALTERNATIVE = (
    "Build from a local copy instead: mlanet assets build --ict /path/to/FaceXModel "
    "(the unpacked ICT-FaceKit FaceXModel/ folder, a clone of the repository, or an archive of it)"
)


def download(url: str, dest: Path, *, timeout: float = 15.0, progress: ProgressFn | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (``dest.part`` then rename). Returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as fh:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while block := resp.read(1 << 20):
                fh.write(block)
                done += len(block)
                if progress:
                    progress(f"downloaded {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""))
        os.replace(part, dest)
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise AssetError(f"{url}: HTTP {exc.code} {exc.reason}. {LOCAL_ALTERNATIVE}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise OfflineError(f"cannot download {url} ({reason}); this machine may be offline. {LOCAL_ALTERNATIVE}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return dest


def fetch_ict(
    url: str = ICT_ARCHIVE_URL,
    *,
    expected_content_sha256: str = PINNED_CONTENT_SHA256,
    dest_dir: Path | None = None,
    timeout: float = 15.0,
    progress: ProgressFn | None = None,
) -> Path:
    """Download (or reuse) the pinned release archive and verify its content. Returns its path."""
    name = Path(url.split("?")[0]).name or "ict-facekit.zip"
    stem = hashlib.sha256(url.encode()).hexdigest()[:8]
    dest = (dest_dir or downloads_dir()) / f"ict-facekit-{stem}-{name}"
    if not dest.is_file():
        download(url, dest, timeout=timeout, progress=progress)
    release = read_ict_release(dest, progress=progress)
    if release.content_sha256 != expected_content_sha256:
        dest.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: content checksum {release.content_sha256} does not match the pinned "
            f"{expected_content_sha256} (ICT-FaceKit {PINNED_COMMIT}); the download was removed. {LOCAL_ALTERNATIVE}"
        )
    return dest
