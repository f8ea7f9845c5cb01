"""The runtime's backend choice (--backend) with its cached ONNX export, and the process thread plan."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

from mlanet.edge import runtime_backend
from mlanet.edge.runtime_backend import cached_onnx, open_runtime_backend
from mlanet.edge.thread_plan import THREADS_ENV, plan_threads, usable_cores
from mlanet.errors import AssetError, MLANetError
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model
from mlanet.morphable.model import MorphableModel
from mlanet.preprocess import PreprocessCfg

SMALL = PreprocessCfg(input_size=64)


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MLANET_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture()
def checkpoint(tmp_path, synthetic_model):
    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=synthetic_model, preprocess=SMALL)
    return save_model(model, tmp_path / "ckpt.safetensors", synthetic_model.describe())


def _images(n=2):
    return np.random.default_rng(0).random((n, 3, 64, 64), dtype=np.float32)


def test_auto_exports_once_and_matches_pytorch(home, checkpoint, synthetic_model):
    said = []
    ort = open_runtime_backend(checkpoint, synthetic_model, say=said.append, cores=2)
    assert ort.metadata.backend == "onnxruntime" and ort.metadata.runtime["exported_from"] == str(checkpoint)
    assert len(said) == 1 and "exporting" in said[0]
    cached = list((home / "onnx-cache").glob("*.onnx"))
    assert len(cached) == 1 and not list((home / "onnx-cache").glob("*.part*"))
    mtime = cached[0].stat().st_mtime_ns
    again = open_runtime_backend(checkpoint, synthetic_model, say=said.append, cores=2)
    assert len(said) == 1 and cached[0].stat().st_mtime_ns == mtime  # read from the cache, no second export
    torch_b = open_runtime_backend(checkpoint, synthetic_model, backend="torch", cores=2)
    assert torch_b.metadata.backend == "torch"
    x = _images()
    v_ort = synthetic_model(torch.from_numpy(again(x)).float())
    v_torch = synthetic_model(torch.from_numpy(np.asarray(torch_b(x))).float())
    assert float((v_ort - v_torch).norm(dim=-1).max()) * 1000 < runtime_backend.PARITY_MAX_MM
    assert again.metadata.runtime["thread_plan"]["network"] == 2
    assert again.metadata.runtime["thread_plan"]["network_backend"] == "onnxruntime"


def test_another_face_model_or_weights_is_another_export(home, checkpoint, synthetic_data, synthetic_model, tmp_path):
    cached_onnx(checkpoint, synthetic_model, say=lambda m: None)
    other_albedo = MorphableModel(dataclasses.replace(synthetic_data, albedo_mean=synthetic_data.albedo_mean * 0.9))
    # a face model the weights are not bound to is refused before any cache lookup, naming the weights
    with pytest.raises(AssetError, match=str(checkpoint.name)):
        runtime_backend.onnx_cache_key(checkpoint, other_albedo, 17)
    assert runtime_backend.onnx_cache_key(checkpoint, synthetic_model, 18) != \
        runtime_backend.onnx_cache_key(checkpoint, synthetic_model, 17)
    torch.manual_seed(1)
    other = save_model(create_model("mlanet_mobile", face_model=synthetic_model, preprocess=SMALL),
                       tmp_path / "other.safetensors", synthetic_model.describe())
    cached_onnx(other, synthetic_model, say=lambda m: None)
    assert len(list((home / "onnx-cache").glob("*.onnx"))) == 2


def test_explicit_choices_and_their_errors(home, checkpoint, synthetic_model, tmp_path, monkeypatch):
    onnx_path = cached_onnx(checkpoint, synthetic_model, say=lambda m: None)
    assert open_runtime_backend(onnx_path, synthetic_model).metadata.backend == "onnxruntime"
    with pytest.raises(MLANetError, match="--backend torch: .* is an ONNX file"):
        open_runtime_backend(onnx_path, synthetic_model, backend="torch")
    with pytest.raises(MLANetError, match="--backend gpu: choose one of"):
        open_runtime_backend(checkpoint, synthetic_model, backend="gpu")
    with pytest.raises(MLANetError, match="leave --backend at auto"):
        open_runtime_backend(checkpoint, synthetic_model, backend="torch", device="cuda")
    # without onnxruntime: auto says so and runs PyTorch; onnxruntime asked for is an error
    monkeypatch.setattr(runtime_backend, "onnx_runtime_available", lambda: False)
    said = []
    b = open_runtime_backend(checkpoint, synthetic_model, say=said.append)
    assert b.metadata.backend == "torch" and "onnxruntime is not installed" in said[0]
    with pytest.raises(MLANetError, match="--backend onnxruntime: onnxruntime and onnx are not both installed"):
        open_runtime_backend(checkpoint, synthetic_model, backend="onnxruntime")


def test_an_unwritable_cache_is_a_clear_error(tmp_path, checkpoint, synthetic_model, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("MLANET_HOME", str(blocker))
    with pytest.raises(AssetError, match="cannot create the ONNX cache.*--backend torch"):
        cached_onnx(checkpoint, synthetic_model, say=lambda m: None)


def test_thread_plan(monkeypatch):
    old, had_lp = torch.get_num_threads(), "LP_NUM_THREADS" in os.environ
    try:
        p = plan_threads("onnxruntime", cores=2)
        assert (p.network, p.torch, p.opencv, p.gl) == (2, 1, 1, 2)
        assert plan_threads("onnxruntime", cores=16).network == 4
        assert plan_threads("torch", cores=2).network == 1 and plan_threads("torch", cores=2).torch == 1
        assert plan_threads("torch", cores=8).torch == 4
        assert plan_threads("gpu", cores=8).network == 1
        assert p.blas == 1
        from threadpoolctl import threadpool_info, threadpool_limits

        with threadpool_limits(limits=None, user_api="blas"):  # restores the BLAS pools for the tests after this one
            p.apply()
            assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        assert torch.get_num_threads() == 1 and os.environ["LP_NUM_THREADS"] == (os.environ["LP_NUM_THREADS"] if had_lp else "2")
        monkeypatch.setenv(THREADS_ENV, "3")
        assert usable_cores() == 3 and plan_threads("onnxruntime").cores == 3
        monkeypatch.setenv(THREADS_ENV, "zero")
        with pytest.raises(MLANetError, match="MLANET_THREADS='zero'"):
            usable_cores()
        with pytest.raises(ValueError, match="network_backend"):
            plan_threads("cuda", cores=2)
    finally:
        torch.set_num_threads(old)
        if not had_lp:
            os.environ.pop("LP_NUM_THREADS", None)
