"""One ModelMetadata from every artifact kind: round trips (checkpoint -> ONNX -> engine header), refusals of
missing or garbled metadata (naming the file), the backends' typed ``metadata``, and the shipped weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mlanet.checkpoint import read_meta
from mlanet.edge.backends import open_backend, read_model_metadata
from mlanet.errors import AssetError, IncompatibleFormatError
from mlanet.model_metadata import (CHECKPOINT_FORMAT, ENGINE_FORMAT, KIND_FACE_DECODER, ONNX_FORMAT,
                                   ModelMetadata)
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.synthetic import make_synthetic_face_model
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mlanet.export.engine_file import write_engine_file  # noqa: E402
from mlanet.export.onnx_export import export_face_decoder_onnx, export_onnx, read_onnx_metadata  # noqa: E402

S = 48
#: What every artifact kind must agree on (format, version, source and extras differ by container).
SHARED = ("layout", "preprocess", "face_model", "model_name", "model_config", "kind")


@pytest.fixture(scope="module")
def face_model():
    return MorphableModel(make_synthetic_face_model())


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, face_model):
    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=face_model, preprocess=PreprocessCfg(input_size=S)).eval()
    out = tmp_path_factory.mktemp("meta")
    ckpt = save_model(model, out / "net.safetensors", face_model, extra={"step": 7})
    net = export_onnx(model, face_model, out / "net.onnx")
    dec = export_face_decoder_onnx(face_model, out / "decoder.onnx")
    meta = read_onnx_metadata(net)
    p, s = model.layout.total, S
    header = {
        "onnx_metadata": meta, "tensorrt_version": "10.7.0", "precision": "fp16",
        "device": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": [9, 0]},
        "profile": {"input": "images", "min_batch": 1, "opt_batch": 1, "max_batch": 8},
        "io": {"images": {"mode": "input", "shape": [-1, 3, s, s], "dtype": "float32"},
               "params": {"mode": "output", "shape": [-1, p], "dtype": "float32"}},
        "built_at": "2026-01-01T00:00:00Z", "builder": {},
    }
    engine = write_engine_file(out / "net.engine", b"not a real plan", header)
    return {"model": model, "ckpt": ckpt, "onnx": net, "decoder": dec, "engine": engine, "dir": out}


def _shared(m: ModelMetadata) -> dict:
    return {k: getattr(m, k) for k in SHARED}


def test_every_artifact_kind_reads_as_the_same_metadata(artifacts, face_model):
    from_ckpt = read_model_metadata(artifacts["ckpt"])
    from_onnx = read_model_metadata(artifacts["onnx"])
    from_engine = read_model_metadata(artifacts["engine"])
    expected = ModelMetadata.for_network(artifacts["model"], face_model)
    assert isinstance(from_ckpt.layout, ParamLayout) and isinstance(from_ckpt.preprocess, PreprocessCfg)
    assert _shared(from_ckpt) == _shared(from_onnx) == _shared(from_engine) == _shared(expected)
    assert from_ckpt.input_size == S and from_ckpt.model_name == "mlanet_mobile"
    assert from_ckpt.face_model_id == face_model.model_id and from_ckpt.decoder_signature is not None
    assert (from_ckpt.format, from_onnx.format, from_engine.format) == (CHECKPOINT_FORMAT, ONNX_FORMAT, ENGINE_FORMAT)
    assert from_ckpt.source == str(artifacts["ckpt"]) and from_onnx.source == str(artifacts["onnx"])
    assert from_ckpt.extra["checkpoint_extra"]["step"] == 7 and len(from_ckpt.extra["tensors_sha256"]) == 64
    assert from_onnx.extra["opset"] == 17 and "mlanet_version" in from_onnx.extra
    engine = from_engine.extra["engine"]
    assert engine["tensorrt_version"] == "10.7.0" and engine["precision"] == "fp16" and len(engine["sha256"]) == 64
    assert from_ckpt.runtime == {} and from_ckpt.backend == ""


def test_checkpoint_meta_and_onnx_props_round_trip(artifacts):
    ckpt_meta = read_meta(artifacts["ckpt"])
    typed = ModelMetadata.from_checkpoint_meta(ckpt_meta, "x")
    assert (typed.layout, typed.preprocess, typed.model_name) == (ckpt_meta.layout, ckpt_meta.preprocess,
                                                                  ckpt_meta.model_name)
    # ONNX: what is written reads back equal, and writing it again gives the same JSON
    props = read_onnx_metadata(artifacts["onnx"])
    again = ModelMetadata.from_onnx_props(props, "y")
    assert again.to_onnx_props() == props
    assert ModelMetadata.from_onnx_props(json.dumps(again.to_onnx_props()), "y") == again
    # the engine's metadata writes back the ONNX metadata it was built from
    assert read_model_metadata(artifacts["engine"]).to_onnx_props() == props


def test_face_decoder_export_has_no_preprocessing(artifacts, face_model):
    from mlanet.export.onnx_export import read_onnx_model_metadata

    dec = read_onnx_model_metadata(artifacts["decoder"])
    assert dec.kind == KIND_FACE_DECODER and dec.preprocess is None and dec.layout == face_model.layout
    assert ModelMetadata.from_onnx_props(dec.to_onnx_props(), "d") == dataclasses.replace(dec, source="d")
    with pytest.raises(ValueError, match="no input size"):
        dec.input_size


def test_backends_expose_the_typed_metadata(artifacts, face_model):
    torch_b = open_backend(artifacts["ckpt"], face_model)
    ort_b = open_backend(artifacts["onnx"], face_model)
    assert isinstance(torch_b.metadata, ModelMetadata) and isinstance(ort_b.metadata, ModelMetadata)
    assert _shared(torch_b.metadata) == _shared(ort_b.metadata)
    assert (torch_b.metadata.backend, ort_b.metadata.backend) == ("torch", "onnxruntime")
    record = ort_b.metadata.to_dict()
    json.dumps(record)  # records are JSON
    assert record["backend"] == "onnxruntime" and record["layout"] == face_model.layout.to_dict()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ort_b.metadata.model_name = "other"  # type: ignore[misc]
    assert ort_b.metadata.with_runtime(thread_plan={"network": 2}).runtime["thread_plan"] == {"network": 2}
    assert "thread_plan" not in ort_b.metadata.runtime
    assert "checkpoint_extra" not in torch_b.metadata.to_dict()
    assert torch_b.metadata.to_dict(checkpoint_extra=True)["checkpoint_extra"]["step"] == 7


def _onnx_with_props(src: Path, dst: Path, value: str | None) -> Path:
    proto = onnx.load(str(src))
    del proto.metadata_props[:]
    if value is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "mlanet", value
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.parametrize("value, match", [
    (None, "without MLANet metadata"),
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "something-else"}), "not MLANet ONNX metadata"),
    (json.dumps({"format": "mlanet-onnx", "format_version": 1, "kind": "network"}), "incomplete or invalid"),
    (json.dumps({"format": "mlanet-onnx", "format_version": 1, "kind": "network", "preprocess": {},
                 "layout": {"identity": "many"}}), "incomplete or invalid"),
    (json.dumps({"format": "mlanet-onnx", "format_version": 1, "kind": "teapot"}), "unknown MLANet ONNX kind"),
], ids=["missing", "garbled", "foreign", "no-layout", "bad-layout", "kind"])
def test_onnx_with_missing_or_garbled_metadata_is_refused_naming_the_file(artifacts, tmp_path, value, match):
    bad = _onnx_with_props(artifacts["onnx"], tmp_path / "bad.onnx", value)
    with pytest.raises(AssetError, match=match) as info:
        read_model_metadata(bad)
    assert str(bad) in str(info.value)
    with pytest.raises(AssetError, match=match):
        open_backend(bad)


def test_onnx_of_another_format_version_is_refused(artifacts, tmp_path):
    props = {**read_onnx_metadata(artifacts["onnx"]), "format_version": 99}
    bad = _onnx_with_props(artifacts["onnx"], tmp_path / "future.onnx", json.dumps(props))
    with pytest.raises(IncompatibleFormatError, match="format version 99") as info:
        read_model_metadata(bad)
    assert str(bad) in str(info.value)


def test_checkpoint_without_or_with_garbled_metadata_is_refused_naming_the_file(tmp_path):
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(AssetError, match="without MLANet metadata") as info:
        read_model_metadata(bare)
    assert str(bare) in str(info.value)
    garbled = tmp_path / "garbled.safetensors"
    save_file({"w": torch.zeros(2)}, str(garbled), metadata={"mlanet": "{oops"})
    with pytest.raises(AssetError, match="not valid JSON") as info:
        read_model_metadata(garbled)
    assert str(garbled) in str(info.value)


def test_engine_with_garbled_header_and_unknown_suffix_are_refused(tmp_path):
    junk = tmp_path / "junk.engine"
    junk.write_bytes(b"MLANETRT" + (5).to_bytes(4, "little") + b"{oops")
    with pytest.raises(AssetError, match="not valid JSON") as info:
        read_model_metadata(junk)
    assert str(junk) in str(info.value)
    with pytest.raises(AssetError, match="no MLANet model metadata reader") as info:
        read_model_metadata(tmp_path / "weights.bin")
    assert "weights.bin" in str(info.value)


def test_a_network_needs_preprocessing():
    with pytest.raises(TypeError, match="PreprocessCfg"):
        ModelMetadata(layout=ParamLayout(1, 1, 1), preprocess=None)


def test_shipped_weights_and_cached_exports_still_read():
    from mlanet.weights import default_weights_path

    shipped = default_weights_path("mlanet_mobile")
    if shipped is None:
        pytest.skip("no shipped mlanet_mobile weights in this install")
    meta = read_model_metadata(shipped)
    assert meta.model_name == "mlanet_mobile" and meta.format == CHECKPOINT_FORMAT and meta.input_size >= 16
    assert meta.face_model_id


def test_export_parity_opens_both_models_through_the_registry(artifacts, face_model, monkeypatch):
    import mlanet.edge.backends as backends
    from mlanet.export.onnx_export import parity_report

    opened = []
    real = backends.open_backend

    def spy(path, *args, **kwargs):
        opened.append(Path(path).suffix)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(backends, "open_backend", spy)
    report = parity_report(artifacts["ckpt"], face_model, artifacts["onnx"], n=3)
    assert opened == [".safetensors", ".onnx"]
    assert report["batch_sizes"] == [1, 3] and report["vertex_mm"]["max"] < 1e-2
    assert report["model_name"] == "mlanet_mobile" and report["provider"] == "CPUExecutionProvider"
