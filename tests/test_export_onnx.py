"""ONNX export (network + face decoder), metadata, parity in vertex space, inference backends, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from mlanet.edge.backends import (  # noqa: E402
    RUN_FOLDER,
    InferenceBackend,
    OnnxRuntimeBackend,
    TorchBackend,
    open_backend,
)
from mlanet.errors import AssetError  # noqa: E402
from mlanet.export.onnx_export import (  # noqa: E402
    export_face_decoder_onnx,
    export_onnx,
    parity_report,
    read_onnx_metadata,
)
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model  # noqa: E402
from mlanet.morphable.model import MorphableModel  # noqa: E402
from mlanet.morphable.synthetic import make_synthetic_face_model  # noqa: E402
from mlanet.preprocess import PreprocessCfg  # noqa: E402

S = 64


def _nontrivial_model(face_model: MorphableModel):
    model = create_model("mlanet_mobile", face_model=face_model, preprocess=PreprocessCfg(input_size=S))
    torch.manual_seed(0)
    with torch.no_grad():
        for head in model.heads.values():
            head[-1].weight.normal_(0.0, 0.5)
            head[-1].bias.normal_(0.0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def data():
    return make_synthetic_face_model()


@pytest.fixture(scope="module")
def face_model(data):
    return MorphableModel(data)


@pytest.fixture(scope="module")
def model(face_model):
    return _nontrivial_model(face_model)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model, face_model):
    out = tmp_path_factory.mktemp("onnx")
    net = export_onnx(model, face_model, out / "net.onnx")
    dec = export_face_decoder_onnx(face_model, out / "decoder.onnx")
    return {"dir": out, "net": net, "decoder": dec}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, model, face_model):
    return save_model(model, tmp_path_factory.mktemp("ckpt") / "m.safetensors", face_model.describe())


def test_export_checks_and_has_dynamic_io(exported, model):
    proto = onnx.load(str(exported["net"]))
    onnx.checker.check_model(proto)
    (inp,) = proto.graph.input
    assert inp.name == "images"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, S, S]
    assert [o.name for o in proto.graph.output] == ["params"]
    assert not list(exported["dir"].glob("*.tmp"))  # atomic write leaves no temp files


def test_metadata_round_trip(exported, model, face_model):
    meta = read_onnx_metadata(exported["net"])
    assert meta["format"] == "mlanet-onnx" and meta["format_version"] == 1 and meta["kind"] == "network"
    assert meta["model_name"] == "mlanet_mobile"
    assert meta["model_config"] == model.config.to_dict()
    assert meta["layout"] == model.layout.to_dict()
    assert PreprocessCfg.from_dict(meta["preprocess"]) == model.preprocess
    assert meta["face_model"]["model_id"] == face_model.model_id
    assert meta["face_model"]["content_sha256"] == face_model.content_sha256
    assert meta["opset"] == 17 and meta["torch_version"] == torch.__version__
    assert "commit" in meta and "mlanet_version" in meta
    dec = read_onnx_metadata(exported["decoder"])
    assert dec["kind"] == "face_decoder" and dec["layout"] == face_model.layout.to_dict()
    assert dec["face_model"]["model_id"] == face_model.model_id


def test_read_metadata_refuses_bad_files(tmp_path, exported):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe definitely not protobuf \x00\x01" * 7)
    with pytest.raises(AssetError, match="junk.onnx"):
        read_onnx_metadata(junk)
    proto = onnx.load(str(exported["net"]))
    meta = json.loads(proto.metadata_props[0].value)
    meta["format_version"] = 99
    proto.metadata_props[0].value = json.dumps(meta)
    future = tmp_path / "future.onnx"
    onnx.save(proto, str(future))
    with pytest.raises(AssetError, match="future.onnx.*version"):
        read_onnx_metadata(future)


def test_parity_in_vertex_space(exported, model, face_model):
    report = parity_report(model, face_model, exported["net"], n=5)
    print("parity:", json.dumps(report))
    assert report["batch_sizes"] == [1, 5]
    assert report["vertex_mm"]["mean"] < 1e-3 and report["vertex_mm"]["max"] < 1e-2
    assert report["landmark_mm"]["max"] < 1e-2
    assert report["param_max_abs"] < 1e-4
    # The output is not trivial: it depends on the image (black vs white crops differ in vertex space).
    with torch.no_grad():
        verts = face_model(model(torch.stack([torch.zeros(3, S, S), torch.ones(3, S, S)])))
    assert float(torch.linalg.vector_norm(verts[0] - verts[1], dim=-1).mean()) * 1000 > 0.1


def test_dynamic_batch_sizes(exported):
    backend = OnnxRuntimeBackend(exported["net"])
    for b in (1, 5):
        assert backend(np.random.default_rng(b).random((b, 3, S, S), dtype=np.float32)).shape == (b, backend.layout.total)


def test_decoder_matches_face_model(exported, face_model):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported["decoder"]), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(3)
    for b in (1, 4):
        params = torch.randn(b, face_model.layout.total, generator=gen) * 0.3
        params[:, face_model.layout.slices()["translation"]] += torch.tensor([0.0, 0.0, 1.0])
        verts, lms = sess.run(["vertices", "landmarks"], {"params": params.numpy()})
        with torch.no_grad():
            ref = face_model(params)
        assert verts.shape == (b, face_model.n_vertices, 3) and lms.shape == (b, 68, 3)
        assert float(np.abs(verts - ref.numpy()).max()) * 1000 < 1e-3
        assert float(np.abs(lms - face_model.landmarks(ref).numpy()).max()) * 1000 < 1e-3


def test_ort_backend_refuses_other_face_model(exported, face_model):
    other = MorphableModel(make_synthetic_face_model(seed=1))
    assert other.model_id != face_model.model_id
    with pytest.raises(AssetError, match=rf"net\.onnx.*{face_model.model_id}.*{other.model_id}"):
        OnnxRuntimeBackend(exported["net"], face_model=other)
    ok = OnnxRuntimeBackend(exported["net"], face_model=face_model)
    assert ok.metadata.kind == "network"


def test_ort_backend_refuses_other_layout(exported):
    other = MorphableModel(make_synthetic_face_model(n_identity=5, seed=0))
    with pytest.raises(AssetError, match="net.onnx"):
        OnnxRuntimeBackend(exported["net"], face_model=other)


def test_ort_backend_refuses_missing_metadata(tmp_path, exported):
    proto = onnx.load(str(exported["net"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(AssetError, match="bare.onnx.*metadata"):
        OnnxRuntimeBackend(bare)


def test_ort_backend_refuses_decoder(exported):
    with pytest.raises(AssetError, match="decoder.onnx.*face_decoder"):
        OnnxRuntimeBackend(exported["decoder"])


def test_ort_backend_refuses_size_mismatch(tmp_path, exported):
    proto = onnx.load(str(exported["net"]))
    meta = json.loads(proto.metadata_props[0].value)
    meta["preprocess"]["input_size"] = 96
    proto.metadata_props[0].value = json.dumps(meta)
    lie = tmp_path / "lie.onnx"
    onnx.save(proto, str(lie))
    with pytest.raises(AssetError, match="lie.onnx.*input_size"):
        OnnxRuntimeBackend(lie)


def test_backend_rejects_wrong_image_shape(exported):
    backend = OnnxRuntimeBackend(exported["net"])
    with pytest.raises(ValueError, match=rf"\(B, 3, {S}, {S}\)"):
        backend(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=rf"\(B, 3, {S}, {S}\)"):
        backend(np.zeros((3, S, S), dtype=np.float32))


def test_open_backend_by_suffix(tmp_path, exported, checkpoint, face_model):
    from mlanet.edge.backends import registered_backends

    suffixes = {(s, spec.device) for spec in registered_backends() for s in spec.suffixes}
    assert {s for s, _ in suffixes} == {".onnx", ".safetensors", RUN_FOLDER, ".engine", ".plan"}
    assert all((s, d) in suffixes for s in (".onnx", ".safetensors", RUN_FOLDER, ".engine") for d in ("cpu", "cuda"))
    b = open_backend(exported["net"], face_model=face_model)
    assert isinstance(b, OnnxRuntimeBackend) and isinstance(b, InferenceBackend)
    t = open_backend(checkpoint, face_model=face_model)
    assert isinstance(t, TorchBackend) and isinstance(t, InferenceBackend)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "m.safetensors").write_bytes(Path(checkpoint).read_bytes())
    (run / "last.json").write_text(json.dumps({"weights": "m.safetensors"}))
    assert isinstance(open_backend(run), TorchBackend)
    for suffix in (".engine", ".plan"):
        with pytest.raises(AssetError, match="TensorRT"):
            open_backend(tmp_path / f"m{suffix}")
    with pytest.raises(AssetError, match=r"\.onnx.*\.safetensors"):
        open_backend(tmp_path / "m.tflite")


def test_a_new_backend_is_one_registration(tmp_path, monkeypatch):
    """The registry is the one way in: a new suffix opens through open_backend once registered; a second claim
    of a (suffix, device) pair is refused; a suffix registered for the CPU only says so on device cuda."""
    import mlanet.edge.backends.base as base
    from mlanet.edge.backends import BackendSpec, open_backend, register_backend

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    opened = []
    spec = register_backend(BackendSpec("fake-cpu", (".fake",), "cpu",
                                        lambda path, fm, index, graphs: opened.append((path.name, fm, index)) or "B"))
    assert open_backend(tmp_path / "m.FAKE", face_model="fm") == "B" and opened == [("m.FAKE", "fm", None)]
    with pytest.raises(ValueError, match="already fake-cpu's"):
        register_backend(BackendSpec("other", (".fake",), "cpu", spec.opener))
    with pytest.raises(AssetError, match="no cuda backend for .fake files.*use device cpu"):
        open_backend(tmp_path / "m.fake", device="cuda:0")
    with pytest.raises(ValueError, match="device must be"):
        register_backend(BackendSpec("tpu", (".x",), "tpu", spec.opener))


def test_torch_and_ort_backends_agree(exported, checkpoint, face_model):
    torch_b = TorchBackend(checkpoint, face_model=face_model)
    ort_b = OnnxRuntimeBackend(exported["net"], face_model=face_model)
    for b in (torch_b, ort_b):
        b.warmup()
    images = torch.rand(3, 3, S, S, generator=torch.Generator().manual_seed(7))
    a, o = torch_b(images), ort_b(images.numpy())
    assert a.shape == o.shape == (3, face_model.layout.total)
    assert np.abs(a - o).max() < 1e-4
    assert torch_b.metadata.layout == ort_b.metadata.layout
    torch_b.close()
    ort_b.close()


def test_cli_export_onnx(tmp_path, data, checkpoint):
    from mlanet.cli import main

    fm_path = data.save(tmp_path / "fm.mlface.npz")
    out, dec, report = tmp_path / "cli" / "net.onnx", tmp_path / "cli" / "dec.onnx", tmp_path / "cli" / "parity.json"
    rc = main(["export", "onnx", "--weights", str(checkpoint), "--out", str(out), "--decoder", str(dec),
               "--face-model", str(fm_path), "--report", str(report)])
    assert rc == 0
    assert out.is_file() and dec.is_file()
    rep = json.loads(report.read_text())
    assert rep["vertex_mm"]["max"] < 1e-2 and rep["batch_sizes"] == [1, 8]
    assert read_onnx_metadata(out)["face_model"]["model_id"] == "synthetic-0"
    assert main(["export", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2


def test_edge_import_stays_light():
    code = (
        "import sys, mlanet, mlanet.edge, mlanet.edge.backends, mlanet.export.onnx_export, mlanet.export.cli\n"
        "heavy = [m for m in ('onnxruntime', 'onnx', 'cv2', 'mediapipe', 'tensorrt') if m in sys.modules]\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
