"""`mlanet bench model`: record schema, skipped backends, budget handling, argument errors (tiny settings, CPU)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mlanet.cli import main as mlanet_main
from mlanet.benchmarks import model_latency as ml
from mlanet.benchmarks.record import SCHEMA
from mlanet.errors import MLANetError

# 64 px input, one thread (stable on a loaded 2-core CI machine), small repeats.
TINY = ["--models", "mlanet_mobile", "--batch-sizes", "1,2", "--input-size", "64", "--torch-threads", "1",
        "--min-repeats", "3", "--time-budget-s", "30", "--quick"]


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    ml.add_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    out = tmp_path_factory.mktemp("bench") / "results"
    path = ml.run(_args(["--out", str(out), *TINY]))
    return out, path, json.loads(path.read_text())


def test_record_location_and_schema(record):
    out, path, rec = record
    assert path.name == "model_latency.json"
    assert path.parent.parent == out and path.parent.name == rec["environment"]["device_tag"].split(":")[0]
    assert rec["schema"] == SCHEMA and rec["benchmark"] == "model_latency"
    env = rec["environment"]
    assert {"device", "device_tag", "versions", "commit", "dirty_tree", "command", "time_utc", "torch_threads",
            "cpu_count"} <= set(env)
    assert "torch" in env["versions"]
    r = rec["results"]
    assert {"weights", "face_model", "input_size", "batch_sizes", "policy", "threads", "models", "backends", "runs",
            "wall_s", "load_average"} <= set(r)
    assert "untrained" in r["weights"]
    assert r["input_size"] == 64 and r["batch_sizes"] == [1, 2]
    assert r["face_model"]["source"] == "synthetic"  # conftest points MLANET_HOME at an empty folder
    assert r["threads"]["torch_intra_op"] == 1
    info = r["models"]["mlanet_mobile"]
    assert info["parameters"] > 1e5 and info["gmacs"] > 0 and info["input_size"] == 64
    assert info["output_size"] == r["face_model"]["params_P"]
    assert set(r["backends"]) == set(ml.BACKENDS)


def test_results_per_batch(record):
    _, _, rec = record
    runs = {(x["backend"], x["mode"]): x for x in rec["results"]["runs"] if x["status"] == "ok"}
    assert ("torch-cpu", "eager") in runs and ("onnxruntime-cpu", "eager") in runs
    assert runs[("onnxruntime-cpu", "eager")]["info"]["providers"] == ["CPUExecutionProvider"]
    assert "intra_op_num_threads" in runs[("onnxruntime-cpu", "eager")]["info"]
    assert runs[("torch-cpu", "eager")]["info"]["torch_threads"] == 1
    for run in runs.values():
        assert run["model"] == "mlanet_mobile" and run["setup_s"] >= 0 and run["wall_s"] > 0
        assert [b["batch"] for b in run["batches"]] == [1, 2]
        for b in run["batches"]:
            assert b["status"] == "ok", b
            assert 0 < b["min_ms"] <= b["median_ms"] <= b["p95_ms"] <= b["max_ms"]
            assert b["repeats"] >= 3 and b["warmup"] >= 2
            assert b["throughput_faces_per_s"] == pytest.approx(b["batch"] / (b["median_ms"] / 1e3), rel=1e-3)
            assert b["ms_per_face"] == pytest.approx(b["median_ms"] / b["batch"], rel=1e-3)


def test_absent_backends_are_skipped_with_a_reason(record):
    _, _, rec = record
    r = rec["results"]
    absent = [b for b, reason in ml.availability().items() if reason is not None]
    assert "tensorrt" in absent  # TensorRT cannot be installed on this machine (DESIGN.md §6)
    for b in absent:
        assert r["backends"][b]["available"] is False and r["backends"][b]["reason"]
        [run] = [x for x in r["runs"] if x["backend"] == b]
        assert run["status"] == "skipped" and run["reason"] == r["backends"][b]["reason"] and run["batches"] == []


def test_a_backend_reported_absent_is_skipped(tmp_path, monkeypatch):
    import dataclasses

    from mlanet.edge.backends import base

    spec = base.backend_named("onnxruntime-cpu")
    absent = dataclasses.replace(spec, probe=lambda: "pretend it is not installed")
    monkeypatch.setitem(base._REGISTRY, (".onnx", "cpu"), absent)  # the registry is what the bench asks
    path = ml.run(_args(["--out", str(tmp_path), *TINY, "--backends", "torch-cpu,onnxruntime-cpu",
                         "--batch-sizes", "1"]))
    r = json.loads(path.read_text())["results"]
    assert r["backends"]["onnxruntime-cpu"] == {"available": False, "reason": "pretend it is not installed"}
    assert [(x["backend"], x["status"]) for x in r["runs"]] == [("torch-cpu", "ok"), ("onnxruntime-cpu", "skipped")]


@pytest.mark.parametrize("flag, value, words", [
    ("--backends", "torch-cpu,tensor-rt", ["tensor-rt", "known backends", "tensorrt"]),
    ("--models", "mlanet_tiny", ["mlanet_tiny", "known models", "mlanet_mobile"]),
    ("--batch-sizes", "1,x", ["--batch-sizes"]),
    ("--batch-sizes", "0", ["--batch-sizes"]),
])
def test_bad_arguments_give_a_clear_error(tmp_path, flag, value, words):
    with pytest.raises(MLANetError) as info:
        ml.run(_args(["--out", str(tmp_path), flag, value]))
    assert all(w in str(info.value) for w in words)
    assert not any(tmp_path.iterdir())  # rejected before anything ran or was written


def test_unknown_backend_through_the_cli(tmp_path, capsys):
    assert mlanet_main(["bench", "model", "--out", str(tmp_path), "--backends", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "unknown backend" in err and "torch-cuda-fp16" in err


def test_help_through_the_cli(capsys):
    with pytest.raises(SystemExit) as info:
        mlanet_main(["bench", "model", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--models", "--backends", "--batch-sizes", "--face-model", "--quick", "--time-budget-s", "--out"):
        assert flag in out


def test_all_passes_only_out_and_quick():
    args = _args(["--out", "x", "--quick"])
    models, backends, batches, policy = ml._resolve_args(args)
    assert models == list(ml.DEFAULT_MODELS) and backends == list(ml.BACKENDS)
    assert batches == list(ml.QUICK_BATCH_SIZES) and policy == ml.QUICK_POLICY
    models, backends, batches, policy = ml._resolve_args(_args(["--out", "x"]))
    assert batches == list(ml.FULL_BATCH_SIZES) and policy == ml.FULL_POLICY


def test_summarise_known_values():
    s = ml.summarise([4.0, 1.0, 100.0, 3.0, 2.0])
    assert s == {"median_ms": 3.0, "p95_ms": 100.0, "min_ms": 1.0, "max_ms": 100.0}
    assert ml.summarise([1.0, 3.0])["median_ms"] == 2.0


class _SleepRunner(ml._Runner):
    """A fake backend whose call takes ``per_face_s * batch`` seconds."""

    def __init__(self, per_face_s: float) -> None:
        self.per_face_s = per_face_s
        self.batch = 0
        self.calls: list[int] = []

    def prepare(self, batch: int) -> None:
        self.batch = batch

    def timed_call(self) -> float:
        t0 = time.perf_counter()
        time.sleep(self.per_face_s * self.batch)
        self.calls.append(self.batch)
        return (time.perf_counter() - t0) * 1e3


def test_budget_skips_batch_sizes_that_no_longer_fit():
    policy = ml.RepeatPolicy(warmup=2, min_repeats=3, min_time_s=0.0, max_repeats=10, floor_repeats=3,
                             time_budget_s=2.0)
    runner = _SleepRunner(0.005)
    entries = ml._run_backend(runner, [1, 2, 256], policy, lambda e: None)
    assert [e["status"] for e in entries] == ["ok", "ok", "skipped"]
    assert entries[2]["reason"].startswith("budget:") and "2 s budget" in entries[2]["reason"]
    assert 256 not in runner.calls  # skipped without a single call
    assert all(e["repeats"] == 3 and e["warmup"] == 2 and not e["budget_limited"] for e in entries[:2])


def test_repeats_until_min_time_and_never_below_the_floor():
    runner = _SleepRunner(0.002)
    runner.prepare(1)
    policy = ml.RepeatPolicy(warmup=2, min_repeats=3, min_time_s=0.05, max_repeats=100, floor_repeats=3,
                             time_budget_s=10.0)
    entry, wall = ml.measure_batch(runner.timed_call, 1, policy, time.perf_counter() + 10.0, None)
    assert entry["status"] == "ok" and entry["repeats"] > 3 and wall > 0  # ~0.05 s / ~2 ms per call
    # a deadline already passed: the floor still gives a median, and the entry says the budget cut it
    entry, _ = ml.measure_batch(runner.timed_call, 1, policy, time.perf_counter() - 1.0, None)
    assert entry["repeats"] == 3 and entry["budget_limited"]


def test_tensorrt_that_imports_needs_pycuda_and_a_gpu(monkeypatch):
    import importlib.util
    import sys
    import types

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.9.9"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycuda" else real_find_spec(name, *a))
    reason = ml.availability(["tensorrt"])["tensorrt"]
    assert reason and "TensorRT 10.9.9" in reason and "pycuda" in reason
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "pycuda" else real_find_spec(name, *a))
    reason = ml.availability(["tensorrt"])["tensorrt"]
    if not torch.cuda.is_available():
        assert reason and "no CUDA GPU" in reason
    else:  # pragma: no cover - GPU hosts
        assert reason is None


def test_tensorrt_runner_builds_once_and_times_both_modes(monkeypatch, tmp_path):
    """The bench's TensorRT wiring with a stand-in engine (no TensorRT here): one build per model, the
    profile covering the largest batch, device mode timed by the runner's events, host mode by wall clock."""
    import types

    import mlanet.edge.backends.tensorrt as trt_backend
    import mlanet.export.tensorrt_engine as te
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    builds, opened = [], []

    def fake_build(onnx_path, engine_path, **kw):
        builds.append((Path(onnx_path).name, kw))
        Path(engine_path).write_bytes(b"engine")
        return Path(engine_path)

    class FakeRunner:
        def __init__(self):
            self.loaded = None

        def load_device_input(self, images):
            self.loaded = images.shape[0]
            return self.loaded

        def time_enqueue(self, n):
            assert n == self.loaded
            return 0.5 * n

    class FakeBackend:
        def __init__(self, path, face_model=None, device=0, cuda_graphs=False):
            opened.append(cuda_graphs)
            self._runner = FakeRunner()
            self.metadata = types.SimpleNamespace(extra={"engine": {"precision": "fp16"}}, input_size=32,
                                                  backend="tensorrt", format="mlanet-trt-engine")

        def __call__(self, images):
            return np.zeros((images.shape[0], 5), np.float32)

        def close(self):
            pass

    monkeypatch.setattr(te, "build_engine", fake_build)
    monkeypatch.setattr(trt_backend, "TensorRTBackend", FakeBackend)  # what the registry's tensorrt opener makes
    fm = MorphableModel(make_synthetic_face_model())
    model = ml._build_model("mlanet_mobile", fm, 32)
    policy = ml.RepeatPolicy(warmup=1, min_repeats=3, min_time_s=0.0, max_repeats=3, floor_repeats=3, time_budget_s=30)
    factories = ml._runners("tensorrt", model, fm, tmp_path, batch_sizes=[1, 4], trt_opt_batch=4)
    runs = [ml._run_one("mlanet_mobile", "tensorrt", f, [1, 4], policy) for f in factories]
    assert [r["mode"] for r in runs] == ["device", "host-to-host"] and opened == [True, False]
    assert len(builds) == 1 and builds[0][1]["max_batch"] == 4 and builds[0][1]["opt_batch"] == 4
    assert builds[0][1]["fp16"] is True
    dev = runs[0]["batches"]
    assert [b["median_ms"] for b in dev] == [0.5, 2.0]  # what the runner's events said
    assert all(b["status"] == "ok" for r in runs for b in r["batches"])


def test_tensorrt_reason_names_the_missing_piece():
    reason = ml.availability(["tensorrt"])["tensorrt"]
    assert reason and ("not importable" in reason or "pycuda" in reason or "no CUDA GPU" in reason)
    with pytest.raises(MLANetError, match="known backends"):
        ml.availability(["tpu"])


def test_bench_backends_are_registered_backends_opened_through_the_registry(monkeypatch, tmp_path):
    """Every bench backend name is a registry name, and the CPU runners open their artifact with open_backend."""
    import mlanet.edge.backends as backends
    from mlanet.edge.backends import backend_named

    assert [backend_named(b).name for b in ml.BACKENDS] == list(ml.BACKENDS)
    assert not [name for name in dir(ml) if name.endswith("_unavailable_reason") or name == "UNAVAILABLE"]
    opened = []
    real = backends.open_backend
    monkeypatch.setattr(backends, "open_backend", lambda path, *a, **k: opened.append(Path(path).suffix) or real(path, *a, **k))
    fm = _fake_face_model()
    model = ml._build_model("mlanet_mobile", fm, 32)
    policy = ml.RepeatPolicy(warmup=1, min_repeats=2, min_time_s=0.0, max_repeats=2, floor_repeats=2, time_budget_s=30)
    for backend in ("torch-cpu", "onnxruntime-cpu"):
        [factory] = ml._runners(backend, model, fm, tmp_path, ort_threads=1)
        run = ml._run_one("mlanet_mobile", backend, factory, [1], policy)
        assert run["status"] == "ok" and run["info"]["opened_by"].endswith("open_backend"), run
    assert opened == [".safetensors", ".onnx"]


# ----------------------------------------------------------------------------- --teacher (issue 15.1)
def _fake_teacher_folder(folder: Path) -> Path:
    """The three 3DDFA_V2 MobileNet x0.5 files with random weights (the real ones are in ../shared)."""
    from mlanet.teacher.tddfa_mb05 import (KEYPOINTS_FILE, N_EXP, N_LANDMARKS, N_PARAMS, N_SHAPE, PARAM_STATS_FILE,
                                           WEIGHTS_FILE, TDDFAMobileNet)

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in TDDFAMobileNet().state_dict().items()}
    np.savez(folder / WEIGHTS_FILE, **{k: v.numpy() for k, v in state.items()})
    np.savez(folder / PARAM_STATS_FILE, mean=np.zeros(N_PARAMS, np.float32), std=np.ones(N_PARAMS, np.float32))
    n3 = 3 * N_LANDMARKS
    np.savez(folder / KEYPOINTS_FILE, u_base=np.zeros(n3, np.float32), w_shp_base=np.zeros((n3, N_SHAPE), np.float32),
             w_exp_base=np.zeros((n3, N_EXP), np.float32))
    return folder


def test_teacher_timed_in_the_same_run_with_ratios(tmp_path):
    pytest.importorskip("onnxruntime")
    teacher = _fake_teacher_folder(tmp_path / "3ddfa_v2_mb05")
    path = ml.run(_args(["--out", str(tmp_path / "results"), "--teacher", str(teacher), "--models", "mlanet_mobile_lite",
                         "--backends", "onnxruntime-cpu,tensorrt", "--batch-sizes", "1", "--input-size", "64",
                         "--ort-threads", "1", "--min-repeats", "3", "--time-budget-s", "20", "--quick"]))
    assert path.name == "model_vs_teacher.json"  # a comparison run never replaces model_latency.json
    r = json.loads(path.read_text())["results"]
    assert r["teacher"]["input_size"] == 120 and r["teacher"]["output_size"] == 62 and r["teacher"]["gmacs"] > 0
    assert r["threads"]["ort_intra_op"] == 1 and r["models"]["mlanet_mobile_lite"]["input_size_source"] == "--input-size"
    runs = {(x["model"], x["backend"]): x for x in r["runs"]}
    t = runs[(ml.TEACHER_NAME, "onnxruntime-cpu")]
    m = runs[("mlanet_mobile_lite", "onnxruntime-cpu")]
    assert t["status"] == "ok" and m["status"] == "ok" and runs[(ml.TEACHER_NAME, "tensorrt")]["status"] == "skipped"
    assert t["info"]["intra_op_num_threads"] == m["info"]["intra_op_num_threads"] == 1
    assert t["info"]["graph_optimization_level"] == m["info"]["graph_optimization_level"]
    [ratio] = r["vs_teacher"]
    assert ratio["model"] == "mlanet_mobile_lite" and ratio["backend"] == "onnxruntime-cpu" and ratio["batch"] == 1
    assert ratio["ratio_blockwise"] == pytest.approx(m["batches"][0]["median_ms"] / t["batches"][0]["median_ms"],
                                                     rel=1e-2)
    # the headline ratio comes from interleaved rounds of the two, in the same run
    [inter] = m["interleaved_vs_teacher"]
    assert ratio["ratio_method"] == "interleaved" and ratio["interleaved"] == inter and ratio["ratio"] == inter["ratio"]
    assert inter["batch"] == 1 and inter["rounds"] == ml.INTERLEAVED_ROUNDS and inter["calls_per_round"] >= 3
    assert inter["ratio_min"] <= inter["ratio"] <= inter["ratio_max"] and inter["model_median_ms"] > 0


def test_models_run_at_their_own_input_size_by_default():
    model = ml._build_model("mlanet_mobile_lite_128", _fake_face_model(), None)  # a network without shipped weights
    assert model.input_size == 128 and "registry default" in ml._model_preprocess("mlanet_mobile_lite_128", None)[1]
    assert ml._build_model("mlanet_mobile_lite_128", _fake_face_model(), 64).input_size == 64


def _fake_face_model():
    from mlanet.morphable.model import MorphableModel
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return MorphableModel(make_synthetic_face_model())


def test_interleaved_ratio_alternates_the_runners_and_takes_the_median_of_round_ratios():
    class Fake(ml._Runner):
        def __init__(self, log, name, times):
            self.log, self.name, self.times, self.batch = log, name, iter(times), None

        def prepare(self, batch):
            self.batch = batch

        def timed_call(self):
            self.log.append(self.name)
            return next(self.times)

    log: list[str] = []
    rounds, calls = 5, 3
    # the model takes 2 ms and the teacher 1 ms, except in round 2, where a hiccup makes the model 10 ms
    model_times = [2.0] * 2 + [2.0] * 3 + [2.0] * 3 + [10.0] * 3 + [2.0] * 6
    teacher_times = [1.0] * (2 + rounds * calls)
    model, teacher = Fake(log, "m", model_times), Fake(log, "t", teacher_times)
    r = ml.interleaved_ratio(model, teacher, 4, est_ms=(ml.INTERLEAVED_ROUND_S * 1e3, 0.0), rounds=rounds)
    assert model.batch == teacher.batch == 4 and r["calls_per_round"] == calls  # a slow round: the fewest calls
    body = "".join(log[4:])  # after 2 warm-up calls each
    assert body == "ttt" "mmm" "mmm" "ttt" "ttt" "mmm" "mmm" "ttt" "ttt" "mmm"  # who goes first alternates
    assert r["ratio"] == 2.0 and r["ratio_min"] == 2.0 and r["ratio_max"] == 10.0 and r["rounds"] == rounds
    assert r["model_median_ms"] == 2.0 and r["teacher_median_ms"] == 1.0


def test_teacher_ratios_pair_backend_and_batch():
    ok = lambda b, ms: {"batch": b, "status": "ok", "median_ms": ms}  # noqa: E731
    runs = [{"model": ml.TEACHER_NAME, "backend": "onnxruntime-cpu", "batches": [ok(1, 0.5), ok(8, 2.0)]},
            {"model": "a", "backend": "onnxruntime-cpu", "mode": "eager", "batches": [ok(1, 1.5), ok(8, 3.0)]},
            {"model": "a", "backend": "torch-cpu", "mode": "eager", "batches": [ok(1, 9.0)]}]
    rows = ml.teacher_ratios(runs)
    assert [(x["batch"], x["ratio"]) for x in rows] == [(1, 3.0), (8, 1.5)]  # no teacher on torch-cpu: no pair


def test_missing_teacher_folder_is_rejected_before_anything_runs(tmp_path):
    with pytest.raises(MLANetError, match="--teacher"):
        ml.run(_args(["--out", str(tmp_path), "--teacher", str(tmp_path / "nope")]))
    assert not any(tmp_path.iterdir())


def test_report_summarises_bench_records_only(tmp_path):
    """`mlanet bench report` reads the records of every folder; an evaluation's own JSON with a "results" key
    but no environment (accuracy/landmark_floor.json) broke it with a KeyError; it is left out now."""
    import json

    from mlanet.run_environment import environment
    from mlanet.benchmarks.report import build_report, load_records

    (tmp_path / "accuracy").mkdir()
    (tmp_path / "accuracy" / "landmark_floor.json").write_text(json.dumps({"results": [1, 2]}))
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "encode_presets.json").write_text(json.dumps({
        "schema": "mlanet-bench/1", "benchmark": "encode_presets", "environment": environment(), "results": {}}))
    assert load_records(tmp_path / "accuracy") == {}
    assert list(load_records(tmp_path / "cpu")) == ["encode_presets"]
    text = build_report(tmp_path).read_text()
    assert "## cpu" in text
