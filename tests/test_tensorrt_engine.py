"""TensorRT engines: the MLANet engine container, refusals before TensorRT is needed, the CLI, and
(on a GPU host with TensorRT 10 + pycuda) build/run/parity.

CPU tests use real MLANet ONNX metadata (a synthetic face model, ``mlanet export onnx``) with
placeholder engine bytes: they exercise the container and every check that happens before a
TensorRT engine is deserialized; the placeholder bytes are never handed to TensorRT.

GPU tests (``trt`` + ``gpu``) compare the engine with ONNX Runtime (CPU) in vertex space, on
the same random images, decoded with the same torch face model:

* FP16 engine: mean vertex distance <= 1 mm, max <= 3 mm. Rationale: the network adds the
  neutral prior (translation z = 1 m) at its output; FP16 spacing in [0.5, 2) m is 0.49-0.98 mm,
  so rounding the depth alone can move every vertex by up to ~0.5 mm, and FP16 activations
  (about 3 significant digits) add relative errors of ~1e-3 to the other parameters. The face
  is ~0.15 m wide, so 3 mm is ~2 % of its size: well below what is visible in a render.
* FP32 engine (TF32 disabled): max <= 0.05 mm (only summation order differs).
These bounds are first estimates: nothing TensorRT has been run in this project yet; record
the measured values when the tests first run on a GPU host.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
from conftest import informative_untrained_model
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mlanet.edge.backends import TensorRTBackend, open_backend  # noqa: E402
from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError, MLANetError  # noqa: E402
from mlanet.export.engine_file import (  # noqa: E402
    MAGIC,
    check_device,
    check_tensorrt_version,
    read_engine_file,
    read_engine_header,
    validate_header,
    write_engine_file,
)
from mlanet.export.onnx_export import export_face_decoder_onnx, export_onnx, read_onnx_metadata  # noqa: E402
from mlanet.export.tensorrt_engine import INSTALL_HINT, TensorRTUnavailableError, build_engine  # noqa: E402
from mlanet.morphable.model import MorphableModel  # noqa: E402
from mlanet.morphable.synthetic import make_synthetic_face_model  # noqa: E402

S = 64
FAKE_TRT = "10.7.0"
PLACEHOLDER = b"placeholder engine bytes: never deserialized " * 8
FP16_MEAN_MM, FP16_MAX_MM = 1.0, 3.0
FP32_MAX_MM = 0.05


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def face_model():
    return MorphableModel(make_synthetic_face_model())


@pytest.fixture(scope="module")
def model(face_model):
    """A small network whose output depends clearly on the image, with realistic parameters.

    Freshly initialised, the eval-mode network's pooled features are ~1e-5 (BatchNorm running
    statistics are still 0/1), so every image gives nearly the prior and a vertex-space parity
    check could not tell a broken engine from a working one. Calibrating the BatchNorm
    statistics on random images (cumulative average) gives features of ~0.3; heads with weights
    N(0, 0.002) then move the vertices by ~30 mm between random images while the pose stays
    plausible (depth ~1.0-1.05 m, angles < 0.1 rad). See test_parity_model_is_informative.
    """
    return informative_untrained_model(face_model, S)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory, model, face_model):
    out = tmp_path_factory.mktemp("trt_onnx")
    return {"net": export_onnx(model, face_model, out / "net.onnx"), "decoder": export_face_decoder_onnx(face_model, out / "decoder.onnx")}


@pytest.fixture(scope="module")
def meta(onnx_files):
    return read_onnx_metadata(onnx_files["net"])


def _header(meta, **overrides):
    p = sum(int(meta["layout"][g]) for g in meta["layout"]["groups"])
    s = int(meta["preprocess"]["input_size"])
    h = {
        "onnx_metadata": meta,
        "tensorrt_version": FAKE_TRT,
        "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
        "precision": "fp16",
        "profile": {"input": "images", "min_batch": 1, "opt_batch": 1, "max_batch": 8},
        "io": {
            "images": {"mode": "input", "shape": [-1, 3, s, s], "dtype": "float32"},
            "params": {"mode": "output", "shape": [-1, p], "dtype": "float32"},
        },
        "built_at": "2026-01-01T00:00:00Z",
        "builder": {"note": "test container with placeholder engine bytes"},
    }
    h.update(overrides)
    return h


def _raw_container(path: Path, header: dict, engine: bytes = PLACEHOLDER) -> Path:
    """Write a container by hand, bypassing write_engine_file's validation (for refusal tests)."""
    header = {"format": "mlanet-trt-engine", "format_version": 1,
              "engine": {"size": len(engine), "sha256": hashlib.sha256(engine).hexdigest()}, **header}
    blob = json.dumps(header).encode()
    path.write_bytes(MAGIC + struct.pack("<I", len(blob)) + blob + engine)
    return path


@pytest.fixture()
def engine_file(tmp_path, meta):
    return write_engine_file(tmp_path / "net.engine", PLACEHOLDER, _header(meta))


@pytest.fixture()
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` / `import pycuda` fail here even on a machine that has them."""
    for name in ("tensorrt", "pycuda", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)


def test_parity_model_is_informative(model, face_model):
    """The GPU parity tolerances are meaningful only if images move the vertices far more than they allow."""
    images = torch.rand(8, 3, S, S, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        params = model(images)
        verts = face_model(params)
    spread_mm = float(torch.linalg.vector_norm(verts - verts.mean(0, keepdim=True), dim=-1).mean()) * 1000
    assert spread_mm > 5 * FP16_MAX_MM, spread_mm
    depth = params[:, face_model.layout.slices()["translation"]][:, 2]
    assert float(depth.min()) > 0.8 and float(depth.max()) < 1.3


# --------------------------------------------------------------------------- container
def test_round_trip_and_layout(engine_file, meta):
    raw = engine_file.read_bytes()
    assert raw[:8] == MAGIC
    (n,) = struct.unpack("<I", raw[8:12])
    assert raw[12 + n :] == PLACEHOLDER and len(raw) == 12 + n + len(PLACEHOLDER)
    header = read_engine_header(engine_file)
    assert header["format"] == "mlanet-trt-engine" and header["format_version"] == 1
    assert header["onnx_metadata"] == meta
    assert header["engine"] == {"size": len(PLACEHOLDER), "sha256": hashlib.sha256(PLACEHOLDER).hexdigest()}
    h2, engine = read_engine_file(engine_file)
    assert h2 == header and engine == PLACEHOLDER
    assert not [p for p in engine_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_moved_engine_keeps_its_metadata(engine_file, tmp_path):
    moved = tmp_path / "elsewhere" / "renamed.plan"
    moved.parent.mkdir()
    os.replace(engine_file, moved)
    header, _ = read_engine_file(moved)
    assert header["onnx_metadata"]["face_model"]["model_id"] == "synthetic-0"
    assert header["onnx_metadata"]["preprocess"]["input_size"] == S


def test_truncated(engine_file, tmp_path):
    raw = engine_file.read_bytes()
    (n,) = struct.unpack("<I", raw[8:12])
    for cut in (4, 10, 12 + n // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.engine"
        bad.write_bytes(raw[:cut])
        with pytest.raises(AssetError, match=rf"cut{cut}\.engine.*truncated"):
            read_engine_header(bad)
    empty = tmp_path / "empty.engine"
    empty.write_bytes(b"")
    with pytest.raises(AssetError, match="empty.engine.*empty"):
        read_engine_header(empty)


def test_tampered(engine_file, tmp_path):
    raw = bytearray(engine_file.read_bytes())
    raw[-5] ^= 0xFF
    bad = tmp_path / "tampered.engine"
    bad.write_bytes(bytes(raw))
    read_engine_header(bad)  # header-only read does not hash the engine
    with pytest.raises(ChecksumError, match="tampered.engine.*checksum"):
        read_engine_file(bad)
    extra = tmp_path / "extra.engine"
    extra.write_bytes(engine_file.read_bytes() + b"\x00")
    with pytest.raises(AssetError, match="extra.engine.*unexpected bytes"):
        read_engine_header(extra)
    garbled = bytearray(engine_file.read_bytes())
    garbled[14] = 0xFF  # inside the JSON header
    bad_json = tmp_path / "garbled.engine"
    bad_json.write_bytes(bytes(garbled))
    with pytest.raises(AssetError, match="garbled.engine.*JSON"):
        read_engine_header(bad_json)


def test_raw_plan_refused(tmp_path):
    plan = tmp_path / "raw.plan"
    plan.write_bytes(b"ftrt" + os.urandom(4096))  # what a bare TensorRT serialization looks like to us
    with pytest.raises(AssetError, match=r"raw\.plan.*raw TensorRT plan without MLANet metadata.*mlanet export tensorrt"):
        read_engine_header(plan)
    with pytest.raises(AssetError, match="no such TensorRT engine"):
        read_engine_header(tmp_path / "missing.engine")


def test_unknown_format_version(tmp_path, meta):
    bad = _raw_container(tmp_path / "future.engine", {**_header(meta), "format_version": 2})
    with pytest.raises(IncompatibleFormatError, match="future.engine.*format version 2"):
        read_engine_header(bad)
    other = _raw_container(tmp_path / "other.engine", {**_header(meta), "format": "something-else"})
    with pytest.raises(AssetError, match="other.engine.*not an MLANet engine header"):
        read_engine_header(other)


def test_input_size_mismatch(tmp_path, meta):
    h = _header(meta)
    h["io"]["images"]["shape"] = [-1, 3, 96, 96]
    with pytest.raises(AssetError, match=r"input_size 64.*\(B, 3, 64, 64\)"):
        write_engine_file(tmp_path / "never.engine", PLACEHOLDER, h)
    assert not (tmp_path / "never.engine").exists()
    lie = _raw_container(tmp_path / "lie.engine", h)
    with pytest.raises(AssetError, match="lie.engine.*input_size"):
        read_engine_header(lie)
    h = _header(meta)
    h["io"]["params"]["shape"] = [-1, 7]
    with pytest.raises(AssetError, match="lie2.engine.*P="):
        read_engine_header(_raw_container(tmp_path / "lie2.engine", h))


def test_header_refuses_decoder_and_bad_profile(meta, onnx_files):
    dec_meta = read_onnx_metadata(onnx_files["decoder"])
    with pytest.raises(AssetError, match="face_decoder"):
        validate_header({**_header(meta), "format": "mlanet-trt-engine", "format_version": 1,
                         "engine": {"size": 0, "sha256": "0" * 64}, "onnx_metadata": dec_meta}, "x.engine")
    bad = _header(meta, profile={"input": "images", "min_batch": 1, "opt_batch": 9, "max_batch": 8})
    with pytest.raises(AssetError, match="opt_batch"):
        write_engine_file("/nonexistent/never.engine", PLACEHOLDER, bad)


def test_machine_checks(meta, caplog):
    h = _header(meta)
    check_tensorrt_version(h, "10.7.0.23", "e.engine")  # the build number does not matter
    with pytest.raises(IncompatibleFormatError, match=r"e\.engine.*TensorRT 10\.7\.0.*TensorRT 10\.8\.0.*not portable"):
        check_tensorrt_version(h, "10.8.0", "e.engine")
    check_device(h, "NVIDIA H100 80GB HBM3", (9, 0), "e.engine")
    check_device(h, None, None, "e.engine")  # unknown: not compared
    with pytest.raises(IncompatibleFormatError, match=r"e\.engine.*compute capability 9\.0.*8\.7.*not portable"):
        check_device(h, "Orin", (8, 7), "e.engine")
    with caplog.at_level("WARNING"):
        check_device(h, "NVIDIA H100 PCIe", (9, 0), "e.engine")
    assert "same compute capability" in caplog.text


# --------------------------------------------------------------------------- backend, before TensorRT
def test_open_backend_refuses_bad_engines_before_tensorrt(tmp_path, engine_file, no_tensorrt):
    raw = engine_file.read_bytes()
    cases = {
        "plan.engine": b"ftrt" + bytes(64),
        "cut.engine": raw[: len(raw) - 3],
        "tampered.plan": raw[:-1] + bytes([raw[-1] ^ 1]),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(AssetError, match=name.replace(".", r"\.")) as info:
            open_backend(tmp_path / name)
        assert "TensorRT 10 is not installed" not in str(info.value)


def test_open_backend_refuses_other_face_model_before_tensorrt(engine_file, face_model, no_tensorrt):
    other = MorphableModel(make_synthetic_face_model(seed=1))
    with pytest.raises(AssetError, match=rf"net\.engine.*{face_model.model_id}.*{other.model_id}"):
        open_backend(engine_file, face_model=other)
    other_layout = MorphableModel(make_synthetic_face_model(n_identity=5, seed=0))
    with pytest.raises(AssetError, match="net.engine"):
        open_backend(engine_file, face_model=other_layout)


def test_open_backend_valid_header_without_tensorrt(engine_file, face_model, no_tensorrt):
    with pytest.raises(TensorRTUnavailableError, match=r"net\.engine: TensorRT 10 is not installed") as info:
        open_backend(engine_file, face_model=face_model)
    msg = str(info.value)
    assert "tensorrt-cu12" in msg and "--system-site-packages" in msg and "docs/tensorrt.md" in msg
    assert isinstance(info.value, MLANetError)


def test_open_backend_checks_tensorrt_version_before_cuda(engine_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    with pytest.raises(IncompatibleFormatError, match=r"net\.engine: built with TensorRT 10\.7\.0.*10\.3\.0 is installed"):
        open_backend(engine_file)
    # Same version: the next missing piece is pycuda, and the message says how to get it.
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=FAKE_TRT))
    with pytest.raises(TensorRTUnavailableError, match=r"net\.engine: pycuda is not installed.*nvcc"):
        open_backend(engine_file)


# --------------------------------------------------------------------------- build + CLI, before TensorRT
def test_build_engine_checks_onnx_before_tensorrt(tmp_path, onnx_files, no_tensorrt):
    import onnx

    with pytest.raises(AssetError, match="decoder.onnx.*face_decoder"):
        build_engine(onnx_files["decoder"], tmp_path / "d.engine")
    proto = onnx.load(str(onnx_files["net"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(AssetError, match="bare.onnx.*metadata"):
        build_engine(bare, tmp_path / "b.engine")
    with pytest.raises(ValueError, match="opt_batch"):
        build_engine(onnx_files["net"], tmp_path / "x.engine", max_batch=4, opt_batch=8)
    with pytest.raises(TensorRTUnavailableError, match=r"net\.onnx: TensorRT 10 is not installed"):
        build_engine(onnx_files["net"], tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


def test_cli_export_tensorrt_without_tensorrt(tmp_path, onnx_files, no_tensorrt, capsys):
    from mlanet.cli import main

    out = tmp_path / "cli.engine"
    rc = main(["export", "tensorrt", "--onnx", str(onnx_files["net"]), "--out", str(out), "--max-batch", "8"])
    err = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    assert err.startswith("error: ") and "Traceback" not in err
    assert INSTALL_HINT.split(" (")[0] in err and "pip install --extra-index-url https://pypi.nvidia.com" in err
    assert main(["export", "tensorrt", "--onnx", str(onnx_files["decoder"]), "--out", str(out)]) == 2
    assert "face_decoder" in capsys.readouterr().err
    assert main(["export", "tensorrt", "--onnx", str(onnx_files["net"]), "--out", str(out),
                 "--max-batch", "2", "--opt-batch", "4"]) == 2
    assert "--opt-batch" in capsys.readouterr().err


def test_parity_report_measures_a_known_difference(tmp_path, meta, onnx_files, face_model, monkeypatch):
    """engine_parity_report's batching, decoding and measurement, with a stand-in for TensorRT that runs
    ONNX Runtime on the same ONNX and then moves every head 2 mm away from the camera: the report must
    find exactly that (2 mm on every vertex and landmark, 0.002 on one parameter). Not a TensorRT test:
    that is test_engine_parity_with_onnxruntime_in_vertex_space, on a GPU."""
    tz = face_model.layout.slices()["translation"].start + 2
    import mlanet.export.tensorrt_engine as te
    from mlanet.edge.backends import ort_session

    calls = []

    class OrtStandIn:
        def __init__(self, engine_bytes, header, *, source, **_):
            assert engine_bytes == PLACEHOLDER and source.endswith("p.engine")
            self.session = ort_session(onnx_files["net"])

        def __call__(self, images):
            calls.append(images.shape[0])
            out = self.session.run(["params"], {"images": images})[0].copy()
            out[:, tz] += 0.002  # metres along the optical axis
            return out

        def close(self):
            self.session = None

    monkeypatch.setattr(te, "TensorRTRunner", OrtStandIn)
    engine = write_engine_file(tmp_path / "p.engine", PLACEHOLDER, _header(meta))
    rep = te.engine_parity_report(engine, onnx_files["net"], face_model, n=20)
    assert calls == [1, 8] and rep["batch_sizes"] == [1, 8] and rep["n"] == 8  # n clipped to max_batch
    for key in ("vertex_mm", "landmark_mm"):
        assert rep[key]["mean"] == pytest.approx(2.0, abs=1e-3) and rep[key]["max"] == pytest.approx(2.0, abs=1e-3)
    assert rep["param_max_abs"] == pytest.approx(0.002, abs=1e-6)
    assert rep["precision"] == "fp16" and rep["tensorrt_version"] == FAKE_TRT


def test_tensorrt_modules_import_light():
    code = (
        "import sys, mlanet.export.engine_file, mlanet.export.tensorrt_engine, mlanet.edge.backends\n"
        "heavy = [m for m in ('tensorrt', 'pycuda', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- GPU host with TensorRT 10 + pycuda
@pytest.fixture(scope="module")
def built(tmp_path_factory, onnx_files):
    pytest.importorskip("pycuda.driver", reason="the TensorRT runtime needs pycuda (pip install pycuda)")
    out = tmp_path_factory.mktemp("trt_build")
    cache = out / "timing.cache"
    fp16 = build_engine(onnx_files["net"], out / "net_fp16.engine", max_batch=8, opt_batch=2, timing_cache_path=cache)
    fp32 = build_engine(onnx_files["net"], out / "net_fp32.plan", fp16=False, max_batch=8, timing_cache_path=cache)
    return {"fp16": fp16, "fp32": fp32, "cache": cache}


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_header_describes_the_build(built, meta):
    import tensorrt as trt

    header = read_engine_header(built["fp16"])
    assert header["onnx_metadata"] == meta
    assert header["tensorrt_version"] == trt.__version__ and header["precision"] == "fp16"
    assert header["device"]["compute_capability"] == list(torch.cuda.get_device_capability(0))
    assert header["profile"] == {"input": "images", "min_batch": 1, "opt_batch": 2, "max_batch": 8}
    assert read_engine_header(built["fp32"])["precision"] == "fp32"
    assert built["cache"].is_file() and built["cache"].stat().st_size > 0


@pytest.mark.trt
@pytest.mark.gpu
def test_engine_parity_with_onnxruntime_in_vertex_space(built, onnx_files, face_model):
    from mlanet.export.tensorrt_engine import engine_parity_report

    rep16 = engine_parity_report(built["fp16"], onnx_files["net"], face_model, n=8)
    rep32 = engine_parity_report(built["fp32"], onnx_files["net"], face_model, n=8)
    print("parity fp16:", json.dumps(rep16))
    print("parity fp32:", json.dumps(rep32))
    assert rep16["batch_sizes"] == [1, 8]
    assert rep16["vertex_mm"]["mean"] <= FP16_MEAN_MM and rep16["vertex_mm"]["max"] <= FP16_MAX_MM
    assert rep32["vertex_mm"]["max"] <= FP32_MAX_MM


@pytest.mark.trt
@pytest.mark.gpu
def test_tensorrt_backend_batches_chunks_and_graphs(built, onnx_files, face_model):
    from mlanet.edge.backends import OnnxRuntimeBackend

    ref = OnnxRuntimeBackend(onnx_files["net"], face_model=face_model)
    plain = open_backend(built["fp32"], face_model=face_model)
    graphs = TensorRTBackend(built["fp32"], face_model=face_model, cuda_graphs=True)
    assert plain.metadata.backend == "tensorrt" and plain.metadata.extra["engine"]["precision"] == "fp32"
    plain.warmup()
    graphs.warmup()
    rng = np.random.default_rng(0)
    for b in (1, 3, 8, 11):  # 11 > max_batch 8: runs in two chunks
        images = rng.random((b, 3, S, S), dtype=np.float32)
        want = ref(images)
        for backend in (plain, graphs):
            got = backend(images)
            assert got.shape == want.shape == (b, face_model.layout.total)
            assert np.abs(got - want).max() < 1e-3
    with pytest.raises(ValueError, match=rf"\(B, 3, {S}, {S}\)"):
        plain(np.zeros((1, 3, 32, 32), dtype=np.float32))
    plain.close()
    graphs.close()
    ref.close()
