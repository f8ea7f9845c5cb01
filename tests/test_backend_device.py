"""`open_backend(..., device=)` and the CLIs' `--device`: routing to the GPU backends, and clear errors
(never a silent CPU run) where a GPU or onnxruntime's CUDA provider is missing."""

from __future__ import annotations

import argparse

import pytest
import torch

from mlanet.edge.backends import TorchBackend, open_backend, parse_device
from mlanet.edge.gpu_crops import GpuUnavailableError
from mlanet.edge.loading import add_model_arguments, open_model
from mlanet.errors import AssetError, MLANetError
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.synthetic import make_synthetic_face_model
from mlanet.preprocess import PreprocessCfg

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU errors; this host has a GPU")


@pytest.fixture(scope="module")
def data():
    return make_synthetic_face_model()


@pytest.fixture(scope="module")
def face_model(data):
    return MorphableModel(data)


@pytest.fixture(scope="module")
def face_model_file(data, tmp_path_factory):
    return data.save(tmp_path_factory.mktemp("fm") / "synthetic.mlface.npz")


@pytest.fixture(scope="module")
def checkpoint(face_model, tmp_path_factory):
    model = create_model("mlanet_mobile", face_model=face_model, preprocess=PreprocessCfg(input_size=64)).eval()
    path = tmp_path_factory.mktemp("ckpt") / "net.safetensors"
    save_model(model, path, face_model)
    return path


class _Recorder:
    """Stands in for a GPU backend class: records how it was constructed."""

    calls: list[tuple[tuple, dict]] = []

    def __init__(self, *args, **kwargs):
        type(self).calls.append((args, kwargs))
        from mlanet.model_metadata import ModelMetadata
        from mlanet.params import ParamLayout

        self.metadata = ModelMetadata(layout=ParamLayout(1, 1, 1), preprocess=PreprocessCfg(input_size=32),
                                      runtime={"backend": "recorder"})

    @classmethod
    def untrained(cls, *args, **kwargs):
        return cls(*args, **kwargs)


@pytest.mark.parametrize("spec, expected", [
    ("cpu", ("cpu", None)), ("CPU", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:1", ("cuda", 1)),
    (0, ("cuda", 0)), (torch.device("cuda", 2), ("cuda", 2)), (torch.device("cpu"), ("cpu", None)),
])
def test_parse_device(spec, expected):
    assert parse_device(spec) == expected


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "", -1, True, "mps"],
                         ids=lambda s: f"spec={s!r}")  # an id "gpu" would select the gpu marker's skip
def test_parse_device_refuses_unknown(spec):
    with pytest.raises(AssetError, match="cpu, cuda, cuda:N"):
        parse_device(spec)


def test_cpu_is_the_default(checkpoint, face_model):
    b = open_backend(checkpoint, face_model=face_model)
    assert isinstance(b, TorchBackend) and b.device.type == "cpu"


@no_cuda
def test_cuda_checkpoint_without_a_gpu_is_a_clear_error(checkpoint, face_model):
    with pytest.raises(GpuUnavailableError, match="needs a CUDA GPU"):
        open_backend(checkpoint, face_model=face_model, device="cuda")


def test_cuda_checkpoint_routes_to_torch_cuda_backend(checkpoint, face_model, monkeypatch):
    import mlanet.edge.backends.torch_cuda as tcb

    _Recorder.calls = []
    monkeypatch.setattr(tcb, "TorchCudaBackend", _Recorder)
    open_backend(checkpoint, face_model=face_model, device="cuda:1")
    open_backend(checkpoint.parent, face_model=face_model, device="cuda", cuda_graphs=False)  # a folder: run dir
    (a1, k1), (a2, k2) = _Recorder.calls
    assert a1 == (checkpoint,) and k1 == {"face_model": face_model, "device": 1, "cuda_graphs": True}
    assert k2["device"] == "cuda" and k2["cuda_graphs"] is False


def test_cuda_engine_routes_to_the_requested_gpu(tmp_path, monkeypatch):
    import mlanet.edge.backends.tensorrt as trt_mod

    _Recorder.calls = []
    monkeypatch.setattr(trt_mod, "TensorRTBackend", _Recorder)
    open_backend(tmp_path / "m.engine", device="cuda:3")
    (_args, kwargs), = _Recorder.calls
    assert kwargs["device"] == 3 and kwargs["cuda_graphs"] is True


def test_cuda_onnx_needs_onnxruntime_cuda_provider(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend a GPU, so the provider check runs
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(AssetError, match="onnxruntime-gpu") as err:
        open_backend(tmp_path / "m.onnx", device="cuda")
    assert "m.onnx" in str(err.value)


def _args(argv):
    p = argparse.ArgumentParser()
    add_model_arguments(p)
    return p.parse_args(argv)


def test_cli_device_flag_defaults_to_cpu(face_model_file):
    args = _args(["--untrained", "mlanet_mobile", "--face-model", str(face_model_file)])
    assert args.device == "cpu"
    backend, _ = open_model(args)
    assert isinstance(backend, TorchBackend)


def test_cli_unknown_device_fails_before_loading(tmp_path):
    with pytest.raises(MLANetError, match="not one of"):
        open_model(_args(["--untrained", "mlanet_mobile", "--face-model", str(tmp_path / "absent"), "--device", "gpu"]))


@no_cuda
def test_cli_cuda_without_gpu_is_a_clear_error(face_model_file):
    with pytest.raises(GpuUnavailableError, match="CUDA GPU"):
        open_model(_args(["--untrained", "mlanet_mobile", "--face-model", str(face_model_file), "--device", "cuda"]))


def test_cli_cuda_untrained_routes_to_torch_cuda_backend(face_model_file, monkeypatch):
    import mlanet.edge.backends.torch_cuda as tcb

    _Recorder.calls = []
    monkeypatch.setattr(tcb, "TorchCudaBackend", _Recorder)
    open_model(_args(["--untrained", "mlanet_mobile", "--face-model", str(face_model_file), "--device", "cuda:0"]))
    (args, kwargs), = _Recorder.calls
    assert args[0] == "mlanet_mobile" and kwargs["device"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA-enabled PyTorch")
def test_cuda_checkpoint_runs_on_the_gpu(checkpoint, face_model):  # pragma: no cover - GPU hosts only
    import numpy as np

    from mlanet.edge.backends.torch_cuda import TorchCudaBackend

    b = open_backend(checkpoint, face_model=face_model, device="cuda")
    assert isinstance(b, TorchCudaBackend) and b.metadata.runtime["precision"] == "fp16"
    out = b(np.zeros((2, 3, 64, 64), np.float32))
    assert out.shape == (2, face_model.layout.total) and np.isfinite(out).all()
