"""`mlanet bench gpu`: target judgement, the 8-face layout, and the clear no-GPU error (its measurements
need a CUDA GPU: tests marked gpu run them at tiny settings)."""

from __future__ import annotations

import argparse

import pytest
import torch

from mlanet.cli import main as mlanet_main
from mlanet.benchmarks import gpu_targets as gt


def test_judge_per_backend():
    out = {x["name"]: x for x in gt.judge({
        "r50_b1_latency": {"tensorrt:device": 0.8, "torch-cuda-fp16:cuda-graph": 1.7},
        "r50_b32_throughput": {"tensorrt:device": 12_000.0, "torch-cuda-fp16:cuda-graph": 9_000.0},
    })}
    assert out["r50_b1_latency"]["met"] == {"tensorrt:device": True, "torch-cuda-fp16:cuda-graph": False}
    assert out["r50_b32_throughput"]["met"] == {"tensorrt:device": True, "torch-cuda-fp16:cuda-graph": False}
    assert out["frame_path_1_face"]["measured"] == {} and out["frame_path_1_face"]["met"] == {}
    assert gt.TARGETS[0].met(1.0) and not gt.TARGETS[0].met(1.0001)  # the bound itself meets a max target


def test_eight_boxes_cover_a_1080p_frame():
    boxes = gt.boxes_8_faces()
    assert len(boxes) == 8 and len({(b.x0, b.y0) for b in boxes}) == 8
    h, w = gt.FRAME_HW
    outside = [b for b in boxes if b.x0 < 0 or b.y0 < 0 or b.x0 + b.size > w or b.y0 + b.size > h]
    assert 1 <= len(outside) <= 3  # some leave the frame: the kernel's zero padding is exercised
    assert all(b.x0 + b.size > 0 and b.y0 + b.size > 0 and b.x0 < w and b.y0 < h for b in boxes)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_without_a_gpu_it_stops_clearly_and_writes_nothing(tmp_path, capsys):
    assert mlanet_main(["bench", "gpu", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "mlanet bench gpu needs a CUDA GPU" in err
    assert not any(tmp_path.rglob("*.json"))


def test_cuda_event_times_checks_its_arguments():
    with pytest.raises(Exception, match="repeats >= 1"):
        gt.cuda_event_times(lambda: None, warmup=0, repeats=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA-enabled PyTorch")
def test_gpu_targets_tiny_run(tmp_path):  # pragma: no cover - GPU hosts only
    import json

    args = argparse.Namespace(repeats=5, warmup=2, time_budget_s=5.0, face_model=None, device="cuda", out=tmp_path)
    rec = json.loads(gt.run(args).read_text())
    names = {t["name"]: t for t in rec["results"]["targets"]}
    for name in ("r50_b1_latency", "mobile_b1_latency", "preprocess_8_faces_1080p", "frame_path_1_face"):
        assert names[name]["measured"], name


def test_frame_path_measurement_runs_with_cpu_stand_ins(monkeypatch):
    """`measure_frame_path`'s plumbing (FacePipeline in its GPU mode, the record layout) on the CPU: the CUDA
    backend is swapped for its CPU twin (TorchBackend, which also has run_device), the pipeline is told to use
    the GPU mode's code on the CPU (the auto choice keeps a CPU backend in host mode), events become wall time."""
    import time as _time

    import mlanet.edge.backends.torch_cuda as tcb
    import mlanet.edge.pipeline as pipeline_mod
    from mlanet.edge.backends import TorchBackend
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    def wall_times(fn, *, warmup, repeats, stream=None):
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(repeats):
            t0 = _time.perf_counter()
            fn()
            out.append((_time.perf_counter() - t0) * 1e3)
        return out

    class CpuTwin:
        @staticmethod
        def untrained(name, face_model, **kw):
            return TorchBackend.untrained(name, face_model)

    real = pipeline_mod.FacePipeline

    def device_mode_pipeline(*args, **kwargs):
        return real(*args, device_mode=True, **kwargs)

    monkeypatch.setattr(gt, "cuda_event_times", wall_times)
    monkeypatch.setattr(tcb, "TorchCudaBackend", CpuTwin)
    monkeypatch.setattr(pipeline_mod, "FacePipeline", device_mode_pipeline)
    monkeypatch.setattr(gt, "FRAME_HW", (240, 320))
    fm = MorphableModel(make_synthetic_face_model())
    details: dict = {}
    out = gt.measure_frame_path(fm, "cpu", warmup=1, repeats=2, details=details)
    assert set(out) == {f"{m}:{v}" for m in ("mlanet_mobile", "mlanet_r50") for v in ("frame-on-gpu", "with-upload")}
    assert all(v > 0 for v in out.values())
    entry = details["frame_path"]["mlanet_mobile"]
    assert entry["frame_on_gpu"]["repeats"] == 2 and entry["pipeline_run_wall_ms_per_frame"]["repeats"] >= 1


def test_preprocess_measurement_runs_on_cpu_tensors(monkeypatch):
    monkeypatch.setattr(gt, "cuda_event_times", lambda fn, *, warmup, repeats, stream=None: [float(fn() is not None)] * repeats)
    monkeypatch.setattr(gt, "FRAME_HW", (240, 320))
    details: dict = {}
    out = gt.measure_preprocess("cpu", warmup=0, repeats=3, details=details)
    assert set(out) == {"fp16_channels_last", "fp32_nchw"} and details["preprocess"]["fp32_nchw"]["repeats"] == 3
