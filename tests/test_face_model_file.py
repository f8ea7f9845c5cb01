"""The face-model file format: round trip and every way a bad file is refused."""

import json
import pickle
import zipfile

import numpy as np
import pytest

from mlanet.errors import AssetError, ChecksumError, FaceModelNotFoundError, IncompatibleFormatError
from mlanet.morphable.data import FORMAT_VERSION, FaceModelData, read_header
from mlanet.morphable.model import load_face_model_data


def test_round_trip(synthetic_data, tmp_path):
    path = synthetic_data.save(tmp_path / "m.mlface.npz")
    loaded = FaceModelData.load(path)
    for name in ("mean_shape", "identity_basis", "expression_basis", "albedo_mean", "triangles", "uv", "landmarks68"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(synthetic_data, name))
    h = read_header(path)
    assert h["format_version"] == FORMAT_VERSION and h["units"] == "m"
    assert h["counts"]["vertices"] == synthetic_data.n_vertices
    assert len(h["content_sha256"]) == 64
    assert not list(tmp_path.glob("*.tmp")), "atomic write left a temp file"


def test_pickle_is_refused(synthetic_data, tmp_path):
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"mean_shape": synthetic_data.mean_shape}))
    with pytest.raises(AssetError, match="pickle") as exc:
        FaceModelData.load(path)
    assert str(path) in str(exc.value)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "notes.mlface.npz"
    path.write_text("hello")
    with pytest.raises(AssetError, match="not an MLANet face-model file"):
        FaceModelData.load(path)


def test_truncated_file_is_refused(synthetic_data, tmp_path):
    path = synthetic_data.save(tmp_path / "m.mlface.npz")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError, match="corrupt or truncated") as exc:
        FaceModelData.load(path)
    assert str(path) in str(exc.value)


def _rewrite(path, tmp_path, edit):
    """Copy the zip member by member, letting ``edit(name, bytes)`` change members."""
    out = tmp_path / "edited.mlface.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, edit(info.filename, src.read(info)))
    return out


def test_tampered_array_fails_checksum(synthetic_data, tmp_path):
    path = synthetic_data.save(tmp_path / "m.mlface.npz")

    def edit(name, blob):
        if name == "mean_shape.npy":
            arr = bytearray(blob)
            arr[-4:] = np.float32(1.0).tobytes()
            return bytes(arr)
        return blob

    with pytest.raises(ChecksumError, match="checksum mismatch"):
        FaceModelData.load(_rewrite(path, tmp_path, edit))


def test_incompatible_version_is_refused(synthetic_data, tmp_path):
    path = synthetic_data.save(tmp_path / "m.mlface.npz")

    def edit(name, blob):
        if name == "header.npy":
            import io

            header = json.loads(bytes(np.load(io.BytesIO(blob))).decode())
            header["format_version"] = FORMAT_VERSION + 1
            buf = io.BytesIO()
            np.save(buf, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
            return buf.getvalue()
        return blob

    with pytest.raises(IncompatibleFormatError, match="rebuild it with `mlanet assets build`"):
        FaceModelData.load(_rewrite(path, tmp_path, edit))


def test_validate_catches_bad_indices(synthetic_data):
    bad = synthetic_data.normalised()
    bad.triangles = bad.triangles.copy()
    bad.triangles[0, 0] = bad.n_vertices
    with pytest.raises(AssetError, match="triangle indices"):
        bad.validate("synthetic")


def test_missing_default_model_names_the_build_command():
    with pytest.raises(FaceModelNotFoundError, match="mlanet assets build --ict"):
        load_face_model_data(None)


def test_saved_files_are_readable_like_any_new_file(synthetic_data, tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = synthetic_data.save(tmp_path / "perm.mlface.npz")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
