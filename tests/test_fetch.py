"""`mlanet assets fetch`: offline failure is immediate and names the local-path form; checksums are enforced."""

import time

import pytest

from mlanet.cli import main
from mlanet.errors import ChecksumError, OfflineError
from mlanet.morphable.fetch import fetch_ict

from conftest import ICT_ARCHIVE

UNREACHABLE = "http://127.0.0.1:9/ICT-FaceKit.zip"  # discard port: connection refused at once


def test_offline_fails_at_once_with_local_alternative(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as exc:
        fetch_ict(UNREACHABLE, dest_dir=tmp_path, timeout=5)
    assert time.perf_counter() - t0 < 5
    assert "mlanet assets build --ict" in str(exc.value)
    assert not list(tmp_path.iterdir()), "a failed download must leave no file"


def test_offline_cli_message(capsys):
    assert main(["assets", "fetch", "--url", UNREACHABLE, "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "mlanet assets build --ict" in err and "Traceback" not in err


@pytest.mark.assets
def test_checksum_mismatch_removes_the_download(shared, tmp_path):
    url = (shared / ICT_ARCHIVE).resolve().as_uri()
    with pytest.raises(ChecksumError, match="does not match the pinned"):
        fetch_ict(url, dest_dir=tmp_path, expected_content_sha256="0" * 64)
    assert not list(tmp_path.iterdir())


@pytest.mark.assets
def test_fetch_verifies_the_pinned_release(shared, tmp_path):
    url = (shared / ICT_ARCHIVE).resolve().as_uri()
    path = fetch_ict(url, dest_dir=tmp_path)
    assert path.is_file() and path.parent == tmp_path
