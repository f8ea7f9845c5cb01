"""Weights <-> face model binding (decoder signature with a tolerance) and weights integrity.

Issue 13, items 1 and 2: a checkpoint is bound to what its outputs mean (mean shape, bases,
topology, landmark definitions, layout), not to derived extras or the whole file's checksum;
the face-model build is the same under any thread setting or BLAS kernel; flipped bits in a
tensor are refused on load; NaN/Inf outputs stop at the network boundary.
"""

from __future__ import annotations

import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ICT_ARCHIVE, MEDIAPIPE_OBJ
from mlanet.checkpoint import load_weights, read_meta, save_weights, tensors_sha256
from mlanet.errors import AssetError, ChecksumError, NonFiniteOutputError
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.decoder_identity import (
    RELATIVE_TOLERANCE,
    binding_problems,
    check_binding,
    decoder_signature,
    signature_differences,
)
from mlanet.morphable.model import MorphableModel, build_command
from mlanet.morphable.synthetic import make_synthetic_face_model
from mlanet.params import require_finite_params
from mlanet.preprocess import PreprocessCfg

SMALL = PreprocessCfg(input_size=64)


def _copy(data: FaceModelData) -> FaceModelData:
    return FaceModelData(
        header=dict(data.header), extra={k: v.copy() for k, v in data.extra.items()},
        **{k: getattr(data, k).copy() for k in ("mean_shape", "identity_basis", "expression_basis", "albedo_mean",
                                               "albedo_basis", "triangles", "uv", "triangles_uv", "landmarks68",
                                               "region_labels")},
    )


# ----------------------------------------------------------------------------- the signature
def test_signature_accepts_rounding_noise_and_ignores_derived_extras(synthetic_data):
    base = decoder_signature(synthetic_data)
    noisy = _copy(synthetic_data)
    rng = np.random.default_rng(0)
    for name in ("mean_shape", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis"):
        a = getattr(noisy, name)
        setattr(noisy, name, (a * (1 + 1e-7 * rng.standard_normal(a.shape))).astype(np.float32))
    noisy.extra["mediapipe/barycentric"] = rng.random((468, 3)).astype(np.float32)  # a derived extra
    noisy.header["built_at"] = "another day"
    assert signature_differences(base, decoder_signature(noisy)) == []
    assert json.loads(json.dumps(base)) == base  # JSON-serialisable as stored in artifacts


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: d.mean_shape.__setitem__((7, 2), d.mean_shape[7, 2] + 2e-4), "mean_shape"),  # one vertex, 0.2 mm
        (lambda d: d.identity_basis.__setitem__(3, d.identity_basis[3] * 1.001), "identity_basis"),
        (lambda d: d.expression_basis.__setitem__(0, d.expression_basis[1]), "expression_basis"),
        (lambda d: d.albedo_mean.__setitem__(slice(None), d.albedo_mean * 0.9), "albedo_mean"),
        (lambda d: d.albedo_basis.__setitem__(0, -d.albedo_basis[0]), "albedo_basis"),
        (lambda d: d.landmarks68.__setitem__(30, d.landmarks68[31]), "landmarks68 (other indices)"),
        (lambda d: d.triangles.__setitem__(0, d.triangles[0][::-1]), "triangles (other indices)"),
        (lambda d: d.header.__setitem__("expression_names", d.header["expression_names"][::-1]), "expression names"),
    ],
)
def test_signature_refuses_a_genuinely_different_model(synthetic_data, edit, expected):
    other = _copy(synthetic_data)
    edit(other)
    diffs = signature_differences(decoder_signature(synthetic_data), decoder_signature(other))
    assert diffs and expected in "; ".join(diffs)


def test_a_landmark_definition_added_later_is_accepted(synthetic_data):
    newer = _copy(synthetic_data)
    newer.extra["landmarks/new_definition"] = np.arange(5, dtype=np.int32)
    assert signature_differences(decoder_signature(synthetic_data), decoder_signature(newer)) == []
    missing = signature_differences(decoder_signature(newer), decoder_signature(synthetic_data))
    assert missing == ["landmarks/new_definition (missing from this face model)"]


def test_signature_refuses_other_sizes(synthetic_data):
    other = make_synthetic_face_model(n_identity=synthetic_data.n_identity + 1)
    diffs = signature_differences(decoder_signature(synthetic_data), decoder_signature(other))
    assert any("identity_basis shape" in d for d in diffs)


def test_binding_message_names_the_file_the_difference_and_the_command(synthetic_data):
    face = MorphableModel(synthetic_data)
    stored = face.describe() | {"build": {"kind": "ict-facekit", "crop": "face", "albedo": "mlanet-albedo-ict-v2",
                                          "upstream_commit": "da5f95a"}}
    other = _copy(synthetic_data)
    other.albedo_basis = other.albedo_basis * 1.5
    with pytest.raises(AssetError) as err:
        check_binding("w.safetensors", stored, MorphableModel(other).describe())
    msg = str(err.value)
    assert msg.startswith("w.safetensors: trained for another face model")
    assert "albedo_basis" in msg and "--crop face --albedo auto" in msg and "da5f95a" in msg and "\n" not in msg
    # an albedo model that no longer ships (v1) cannot come from --albedo auto: the user passes its file
    old_albedo = stored | {"build": {**stored["build"], "albedo": "mlanet-albedo-ict-v1"}}
    with pytest.raises(AssetError) as err:
        check_binding("w.safetensors", old_albedo, MorphableModel(other).describe())
    assert "--albedo ALBEDO_FILE" in str(err.value) and "mlanet-albedo-ict-v1" in str(err.value)
    # Another model id is named as such; a description without a decoder signature needs the same file.
    assert "model id" in " ".join(binding_problems(stored, face.describe() | {"model_id": "x"}))
    legacy = {k: v for k, v in stored.items() if k not in ("decoder", "build")}
    assert binding_problems(legacy, face.describe()) == []
    assert "predates" in " ".join(binding_problems(legacy, face.describe() | {"content_sha256": "0" * 64}))


def test_relative_tolerance_is_far_above_float32_noise_and_below_a_tenth_of_a_millimetre():
    assert 1e-7 * 10 < RELATIVE_TOLERANCE < 1e-4


# ----------------------------------------------------------------------------- tensors checksum
def _tiny_checkpoint(tmp_path: Path, face: MorphableModel) -> Path:
    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=face, preprocess=SMALL)
    return save_model(model, tmp_path / "ckpt.safetensors", face.describe())


def _flip_bit_in_tensor(path: Path, name: str, byte: int = 5, bit: int = 6) -> None:
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    start = 8 + n + header[name]["data_offsets"][0]
    raw[start + byte] ^= 1 << bit
    path.write_bytes(bytes(raw))


def test_flipped_bit_in_one_tensor_is_refused(tmp_path, synthetic_model):
    path = _tiny_checkpoint(tmp_path, synthetic_model)
    state, meta = load_weights(path)
    assert meta.tensors_sha256 == tensors_sha256(state)
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 8)
    _flip_bit_in_tensor(path, name)
    with pytest.raises(ChecksumError, match=rf"{path.name}: tensor checksum mismatch"):
        create_model(checkpoint=path, face_model=synthetic_model)
    read_meta(path)  # the metadata alone is still readable (for `mlanet weights info`)


def test_checkpoint_without_tensor_checksum_loads_with_a_warning(tmp_path, synthetic_model, caplog):
    path = _tiny_checkpoint(tmp_path, synthetic_model)
    state, meta = load_weights(path)
    from safetensors.torch import save_file

    legacy = json.loads(meta.to_json())
    legacy.pop("tensors_sha256")
    save_file(state, str(path), metadata={"mlanet": json.dumps(legacy)})
    with caplog.at_level("WARNING"):
        create_model(checkpoint=path, face_model=synthetic_model)
    assert "no tensor checksum" in caplog.text


@pytest.mark.assets
def test_flipped_bit_in_the_shipped_weights_is_a_clear_cli_error(tmp_path, ict_model_file):
    from mlanet.weights import default_weights_path

    shipped = default_weights_path("mlanet_mobile")
    if shipped is None:
        pytest.skip("no shipped mlanet_mobile weights in this checkout")
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(shipped.read_bytes())
    _flip_bit_in_tensor(bad, "heads.expression.0.weight")
    out = tmp_path / "run"
    image = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    proc = subprocess.run(
        [sys.executable, "-m", "mlanet.edge.video_cli", str(image), "--out", str(out),
         "--weights", str(bad), "--face-model", str(ict_model_file)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "tensor checksum mismatch" in proc.stderr and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    assert not (out / "run.json").exists()


# ----------------------------------------------------------------------------- NaN / Inf outputs
def test_non_finite_outputs_stop_at_the_network_boundary(tmp_path, synthetic_model):
    assert require_finite_params(np.zeros((2, 3)), "x").shape == (2, 3)
    with pytest.raises(NonFiniteOutputError, match=r"^net: .*1 of 2 faces"):
        require_finite_params(np.array([[0.0, np.nan], [1.0, 2.0]]), "net")
    with pytest.raises(NonFiniteOutputError, match="2 of 2 faces"):
        require_finite_params(torch.tensor([[np.inf], [np.nan]]), "net")

    from mlanet.edge.backends import TorchBackend

    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=synthetic_model, preprocess=SMALL)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("heads")).fill_(float("nan"))
    path = save_model(model, tmp_path / "nan.safetensors", synthetic_model.describe())
    backend = TorchBackend(path, face_model=synthetic_model)
    with pytest.raises(NonFiniteOutputError, match=r"nan\.safetensors: the network produced NaN"):
        backend(np.zeros((1, 3, 64, 64), np.float32))


# ----------------------------------------------------------------------------- rebind
def test_rebind_upgrades_a_legacy_checkpoint_only_with_its_own_face_model(tmp_path, synthetic_data):
    from mlanet.weights.pack import rebind_weights

    path = tmp_path / "face.mlface.npz"
    _copy(synthetic_data).save(path)
    face = MorphableModel.load(path)
    ckpt = _tiny_checkpoint(tmp_path, face)
    state, meta = load_weights(ckpt)
    meta.face_model = {k: v for k, v in meta.face_model.items() if k not in ("decoder", "build")}
    meta.tensors_sha256 = None
    save_weights(ckpt, state, meta)

    other_path = tmp_path / "other.mlface.npz"
    other = _copy(synthetic_data)
    other.extra["source/vertex_index"] = np.arange(3, dtype=np.int32)  # same decoder, another file
    other.save(other_path)
    with pytest.raises(AssetError, match="not the face-model file"):
        rebind_weights(ckpt, other_path, tmp_path / "out.safetensors")

    out = rebind_weights(ckpt, path, tmp_path / "out.safetensors")
    new = read_meta(out)
    assert new.face_model["decoder"] == face.decoder_signature and new.tensors_sha256
    assert new.extra["rebound"]["from_content_sha256"] == face.content_sha256
    assert oct(out.stat().st_mode & 0o777) != oct(0o600)  # readable like any other output
    create_model(checkpoint=out, face_model=MorphableModel.load(other_path))  # now bound to the decoder


# ----------------------------------------------------------------------------- the real build
_BUILD = """
import sys
from mlanet.morphable.sources.ict import build_ict_face_model
build_ict_face_model(sys.argv[1], mediapipe_obj=sys.argv[2]).save(sys.argv[3])
"""


def _openblas_coretype_has_effect() -> bool:
    code = ("import numpy, threadpoolctl, json; "
            "print(json.dumps([i.get('architecture') for i in threadpoolctl.threadpool_info()]))")
    try:
        a = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"})
        b = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"})
    except (OSError, subprocess.SubprocessError):
        return False
    return a.returncode == 0 and b.returncode == 0 and a.stdout != b.stdout


@pytest.mark.assets
def test_the_build_is_the_same_under_other_thread_settings_and_blas_kernels(shared, ict_model_file, tmp_path):
    """Build the face model again under other settings; same file content, and the shipped weights run on each."""
    from mlanet.weights import SHIPPED, default_weights_path

    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE",)}
    variants = {"one_thread": base | {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
    if _openblas_coretype_has_effect():
        variants["haswell_kernels"] = base | {"OPENBLAS_CORETYPE": "Haswell"}
    reference = FaceModelData.load(ict_model_file)
    shipped = [p for p in (default_weights_path(n) for n in SHIPPED) if p is not None]
    for name, env in variants.items():
        out = tmp_path / f"{name}.mlface.npz"
        proc = subprocess.run([sys.executable, "-c", _BUILD, str(shared / ICT_ARCHIVE), str(shared / MEDIAPIPE_OBJ),
                               str(out)], env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        built = FaceModelData.load(out)
        assert built.header["content_sha256"] == reference.header["content_sha256"], name
        face = MorphableModel(built)
        for path in shipped:
            model = create_model(checkpoint=path, face_model=face)
            s = model.preprocess.input_size
            with torch.no_grad():
                assert torch.isfinite(model(torch.rand(1, 3, s, s))).all()


def test_the_missing_face_model_hint_is_a_command_that_runs(tmp_path, monkeypatch):
    """The hint names real paths when a shared folder is found, else `mlanet assets fetch` (a real command)."""
    from mlanet.errors import FaceModelNotFoundError
    from mlanet.morphable.model import load_face_model_data

    monkeypatch.setenv("MLANET_HOME", str(tmp_path / "home"))
    with pytest.raises(FaceModelNotFoundError) as err:
        load_face_model_data()
    hint = str(err.value).split("Build it with: ", 1)[1]
    assert hint == build_command()
    words = shlex.split(hint)
    assert words[:3] in (["mlanet", "assets", "build"], ["mlanet", "assets", "fetch"])
    if words[2] == "build":
        assert all(Path(w).is_file() for w in words[4::2]), words  # --ict PATH --mediapipe PATH exist as printed
        from mlanet.cli import build_parser

        build_parser().parse_args(words[1:])  # and parse as the CLI's own arguments


def test_rebuild_hint_names_the_landmark_file_the_weights_were_trained_with():
    """The refusal's build command reaches the right face model when only the landmark definitions differ:
    the shipped default needs no flag, an older shipped file is named by its path, an unknown one by its id,
    and an artifact from before the recipe named its file is told that it needs other definitions."""
    from mlanet.morphable.decoder_identity import rebuild_hint
    from mlanet.morphable.landmarks.file import LANDMARKS_V1, SHIPPED_LANDMARKS, LandmarkDefinitionsFile

    base = {"kind": "ict-facekit", "crop": "face", "albedo": None, "upstream_commit": "da5f95a"}
    default_id = LandmarkDefinitionsFile.load(SHIPPED_LANDMARKS["face"]).id
    v1_id = LandmarkDefinitionsFile.load(LANDMARKS_V1).id
    assert "--landmarks" not in rebuild_hint(base | {"landmarks": default_id})
    assert f"--landmarks {LANDMARKS_V1}" in rebuild_hint(base | {"landmarks": v1_id})
    unknown = rebuild_hint(base | {"landmarks": "someone-elses-landmarks"})
    assert "--landmarks LANDMARKS_FILE" in unknown and "someone-elses-landmarks" in unknown
    legacy = rebuild_hint(base, landmarks_differ=True)
    assert "--landmarks LANDMARKS_FILE" in legacy and str(LANDMARKS_V1) in legacy and "\n" not in legacy
    assert "--landmarks" not in rebuild_hint(base)  # other differences: the default build
