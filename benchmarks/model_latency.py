"""The network alone: latency (median, p95) and throughput against batch size, per backend and model.

``mlanet bench model`` times ``images (B, 3, S, S) -> params (B, P)`` for every requested model
(default ``mlanet_mobile`` and ``mlanet_r50``) on every requested backend (default: all of
:data:`BACKENDS`; those absent on this machine are recorded as skipped with the reason) at each
batch size (default 1, 2, 4, ..., 64), after warm-up, and writes ``model_latency.json`` under
``<out>/<device_tag>/``. Each model runs at its own input size (its shipped weights', else the
registry's default; :func:`mlanet.models.registry.registered_preprocess`) unless ``--input-size``
is given.

Teacher comparison (``--teacher DIR``, e.g. ``../shared/models/3ddfa_v2_mb05``)
    The 3DDFA_V2 MobileNetV1 x0.5 teacher (:mod:`mlanet.teacher.tddfa_mb05`: the project's own
    network definition, weights read from DIR; crops (B, 3, 120, 120) RGB [0, 1] -> 62
    de-whitened parameters, normalisation included) is timed first, in the same run, on the CPU
    backends: ``torch-cpu`` called as the models are, ``onnxruntime-cpu`` exported by the same legacy
    exporter and settings (opset 17, dynamic batch) to a temporary folder and run in a session
    made by the ONNX Runtime backend's own :func:`~mlanet.edge.backends.ort_session` (same options,
    ``--ort-threads``), called the same way (contiguous float32 in, finiteness check out). The
    teacher is not an MLANet artifact (no layout, no face model), so it is the one thing not opened
    with :func:`~mlanet.edge.backends.open_backend`. Every model's time is then reported as a
    ratio to the teacher's for the same backend and batch size (``results["vs_teacher"]``). The
    ratio is measured in interleaved rounds (:func:`interleaved_ratio`: a few calls of the teacher,
    then of the model, alternating who goes first, :data:`INTERLEAVED_ROUNDS` rounds; the median
    over rounds of the round's model/teacher medians, with its min and max), because the blocks
    timed one after the other drift apart on a shared machine (two back-to-back runs here gave
    2.50x and 3.27x); the ratio of the two blocks' medians stays in the row as ``ratio_blockwise``,
    and the record is written as ``model_vs_teacher.json`` (so a full ``model_latency.json`` is
    not replaced by a comparison run). Typical: ``mlanet bench model --teacher
    ../shared/models/3ddfa_v2_mb05 --backends onnxruntime-cpu --batch-sizes 1 --ort-threads 2
    --models mlanet_mobile,mlanet_mobile_lite``.

Backends
    Every backend name is a registered backend of :mod:`mlanet.edge.backends` and every model is opened
    through :func:`~mlanet.edge.backends.open_backend`, as the runtime opens it: each untrained model is
    written once to a temporary ``.safetensors`` checkpoint (and exported to ONNX, built into an engine,
    as its backend needs); whether a backend can run here is what the registry says
    (:meth:`~mlanet.edge.backends.BackendSpec.unavailable_reason`). This module keeps only the timing.
    ``torch-cpu``: :class:`~mlanet.edge.backends.TorchBackend` (float32, numpy in, numpy out).
    ``onnxruntime-cpu``: the checkpoint exported with :func:`~mlanet.export.onnx_export.export_onnx`, run by
    :class:`~mlanet.edge.backends.OnnxRuntimeBackend` (CPU provider, ``--ort-threads``).
    ``torch-cuda-fp16``: :class:`~mlanet.edge.backends.TorchCudaBackend` (FP16, channels-last, cuDNN
    benchmark mode), inputs already on the device, ``run_device`` in two modes -- ``eager`` and
    ``cuda-graph`` (one captured :class:`torch.cuda.CUDAGraph` per batch size, replayed) -- timed
    device-side with CUDA events, peak GPU memory per batch size (``torch.cuda.max_memory_allocated``);
    written on a machine without a GPU. ``tensorrt``: the ONNX built into an FP16 engine once per model
    (:func:`~mlanet.export.tensorrt_engine.build_engine`, one profile 1..max(batch sizes), tuned at
    ``--trt-opt-batch``, a timing cache in the temporary folder; the build time is the run's ``setup_s``),
    then two modes of :class:`~mlanet.edge.backends.TensorRTBackend`: ``device`` (inputs already in the
    engine's device buffer, CUDA-graph replay, timed with CUDA events on the runner's stream: the engine
    alone) and ``host-to-host`` (numpy in, numpy out through pinned buffers, wall clock: what a caller of
    the backend sees). Written without TensorRT or a GPU; not yet run.

Timing
    CPU backends: wall clock (``time.perf_counter``) around each call. GPU: ``torch.cuda.Event``
    pairs around each call, synchronised after each call (latency, not pipelined throughput).
    Per (model, backend, batch): ``warmup`` calls (default 2), then repeats until at least
    ``min_repeats`` and at least ``min_time_s`` of samples, at most ``max_repeats``, all within the
    per-(model, backend) ``time_budget_s``. Before a batch size starts, its call time is
    extrapolated linearly from the previous batch size; when warm-up plus ``floor_repeats`` calls
    would not fit in what is left of the budget, the batch size is recorded as
    ``{"status": "skipped", "reason": "budget: ..."}`` (and so are the larger ones). When the budget
    cuts the repeats below the target, the entry says ``"budget_limited": true`` (never fewer than
    ``floor_repeats`` samples). Model building and ONNX export are outside the budget (``setup_s``).

Weights are untrained (random initialisation, seed 0): latency does not depend on the values.
The face model sets only the size P of the output heads (a few hundred outputs; negligible
next to the backbone): the asset home's ICT-FaceKit model when present (or ``--face-model``),
else the small synthetic one, and the record says which.

Record ``results`` (times in ms, rates per second, memory in MiB)::

    {
      "weights": "...", "face_model": {"source", "path", "model_id", "params_P"},
      "input_size": S (of the last model), "batch_sizes": [...], "quick": bool, "policy": {...},
      "threads": {"torch_intra_op", "torch_inter_op", "cpu_count", "ort_intra_op"},
      "models": {name: {"parameters", "gmacs", "input_size", "input_size_source", "output_size"}},
      "teacher"?: {"name", "folder", "describe", "parameters", "gmacs", "input_size", "output_size"},
      "backends": {name: {"available": bool, "reason"?: str}},
      "runs": [
        {"model", "backend", "mode", "status": "ok" | "skipped" | "error", "reason"?,
         "info": {...backend details: threads, dtype, timing method...},
         "setup_s", "wall_s", "time_budget_s",
         "batches": [
           {"batch", "status": "ok", "median_ms", "p95_ms", "min_ms", "max_ms", "ms_per_face",
            "throughput_faces_per_s" (= batch / median seconds), "repeats", "warmup",
            "budget_limited", "peak_gpu_mib"? (GPU)},
           {"batch", "status": "skipped", "reason": "budget: ..."}, ...
         ],
         "interleaved_vs_teacher"? (--teacher): [{"batch", "ratio", "ratio_min", "ratio_max", "rounds",
           "calls_per_round", "model_median_ms", "teacher_median_ms"} | {"status": "error", "reason"}]}
      ],
      "vs_teacher"?: [{"model", "backend", "mode", "batch", "model_median_ms", "teacher_median_ms" (the blocks),
                       "ratio" (interleaved where measured), "ratio_blockwise", "ratio_method", "interleaved"?}],
      "wall_s": float
    }
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlanet.errors import MLANetError
from mlanet.benchmarks.record import record_dir, write_record

log = logging.getLogger(__name__)

RECORD_NAME = "model_latency"
#: Record name of a run with ``--teacher``.
TEACHER_RECORD_NAME = "model_vs_teacher"
#: Name of the teacher's rows in the record.
TEACHER_NAME = "3ddfa_v2_mb05"
#: Backends the teacher is timed on.
TEACHER_BACKENDS = ("torch-cpu", "onnxruntime-cpu")

#: Every backend this benchmark knows, in table order.
BACKENDS = ("torch-cpu", "onnxruntime-cpu", "torch-cuda-fp16", "tensorrt")
#: Models timed by default.
DEFAULT_MODELS = ("mlanet_mobile", "mlanet_r50")
FULL_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)
QUICK_BATCH_SIZES = (1, 8, 32)

WEIGHTS_NOTE = "untrained (random initialisation, seed 0): latency and throughput do not depend on the weight values"


@dataclass(frozen=True)
class RepeatPolicy:
    """How many calls each (model, backend, batch) gets; see the module docstring."""

    warmup: int = 2
    min_repeats: int = 5
    min_time_s: float = 1.0
    max_repeats: int = 200
    floor_repeats: int = 3
    time_budget_s: float = 120.0

    def __post_init__(self) -> None:
        if self.warmup < 1 or self.floor_repeats < 1 or self.min_repeats < self.floor_repeats:
            raise MLANetError(
                f"repeat policy needs warmup >= 1 and min_repeats >= floor_repeats >= 1, got {self}"
            )
        if self.max_repeats < self.min_repeats or self.time_budget_s <= 0:
            raise MLANetError(f"repeat policy needs max_repeats >= min_repeats and time_budget_s > 0, got {self}")


#: Defaults of a full run (``mlanet bench model``): about 10 minutes on a 2-core CPU.
FULL_POLICY = RepeatPolicy()
#: Defaults of ``--quick``.
QUICK_POLICY = RepeatPolicy(warmup=2, min_repeats=3, min_time_s=0.3, max_repeats=50, floor_repeats=3, time_budget_s=40.0)


# --------------------------------------------------------------------------------------------- arguments
def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None,
                   help=f"comma-separated model names (default {','.join(DEFAULT_MODELS)})")
    p.add_argument("--backends", default=None,
                   help=f"comma-separated backends out of {','.join(BACKENDS)} (default: all; those absent on "
                        "this machine are recorded as skipped with the reason)")
    p.add_argument("--batch-sizes", default=None,
                   help=f"comma-separated batch sizes (default {','.join(map(str, FULL_BATCH_SIZES))}; "
                        f"--quick: {','.join(map(str, QUICK_BATCH_SIZES))})")
    p.add_argument("--face-model", default=None,
                   help="face-model file (sets the output size P only; default: the asset home's, else the "
                        "synthetic test model -- the record says which)")
    p.add_argument("--input-size", type=int, default=None,
                   help="input size S of every model (default: each model's own: its shipped weights', else the "
                        "registry's default)")
    p.add_argument("--teacher", default=None, metavar="DIR",
                   help="also time the 3DDFA_V2 MobileNet x0.5 teacher (weights from DIR, e.g. "
                        "../shared/models/3ddfa_v2_mb05) on the CPU backends in the same run, report each model's "
                        "ratio to it, and write model_vs_teacher.json instead of model_latency.json")
    p.add_argument("--ort-threads", type=int, default=None,
                   help="onnxruntime intra-op threads for onnxruntime-cpu (default: onnxruntime's, one per physical "
                        "core)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help=f"seconds of timed calls per (model, backend) (default {FULL_POLICY.time_budget_s:g}; "
                        f"--quick {QUICK_POLICY.time_budget_s:g}); batch sizes that no longer fit are recorded as "
                        "skipped")
    p.add_argument("--min-repeats", type=int, default=None,
                   help=f"timed calls per batch size at least (default {FULL_POLICY.min_repeats}; "
                        f"--quick {QUICK_POLICY.min_repeats}), more until {FULL_POLICY.min_time_s:g} s of samples")
    p.add_argument("--warmup", type=int, default=None, help=f"warm-up calls per batch size (default {FULL_POLICY.warmup})")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="PyTorch intra-op threads for torch-cpu (default: PyTorch's, one per core); restored afterwards")
    p.add_argument("--quick", action="store_true",
                   help="batch sizes 1,8,32, fewer repeats, a smaller budget (a smoke run)")
    p.add_argument("--trt-opt-batch", type=int, default=None,
                   help="batch size the TensorRT engine's profile is tuned for (default 1: latency; the profile "
                        "covers 1..max of --batch-sizes)")


# --------------------------------------------------------------------------------------------- availability
def backend_spec(name: str) -> Any:
    """The registered backend (:func:`~mlanet.edge.backends.backend_named`) a bench backend name stands for;
    :class:`MLANetError` listing :data:`BACKENDS` for any other name."""
    from mlanet.edge.backends import backend_named

    if name not in BACKENDS:
        raise MLANetError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return backend_named(name)


def availability(names: Any = BACKENDS) -> dict[str, str | None]:
    """``{name: None when it can run here, else why not}``, as the registry says
    (:meth:`~mlanet.edge.backends.BackendSpec.unavailable_reason`)."""
    return {name: backend_spec(name).unavailable_reason() for name in names}


# --------------------------------------------------------------------------------------------- runners
class _Runner:
    """One backend for one model: ``prepare(batch)`` then ``timed_call() -> ms`` repeatedly."""

    mode = "eager"
    timing = "wall clock (time.perf_counter) around each call"

    def info(self) -> dict[str, Any]:
        return {"timing": self.timing}

    def prepare(self, batch: int) -> None:
        raise NotImplementedError

    def timed_call(self) -> float:
        raise NotImplementedError

    def batch_extra(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _random_images(batch: int, size: int) -> np.ndarray:
    return np.random.default_rng(batch).random((batch, 3, size, size), dtype=np.float32)


class _CpuRunner(_Runner):
    """Wall-clock timing of ``fn(images)`` for numpy inputs."""

    def __init__(self, fn: Callable[[np.ndarray], Any], input_size: int) -> None:
        self.fn = fn
        self.input_size = input_size
        self.images: np.ndarray | None = None

    def prepare(self, batch: int) -> None:
        self.images = _random_images(batch, self.input_size)

    def timed_call(self) -> float:
        t0 = time.perf_counter()
        self.fn(self.images)
        return (time.perf_counter() - t0) * 1e3


def _ort_info(session: Any, onnx_mib: float) -> dict[str, Any]:
    import onnxruntime as ort

    opts = session.get_session_options()
    return {"dtype": "float32", "onnxruntime": ort.__version__, "providers": session.get_providers(),
            "intra_op_num_threads": opts.intra_op_num_threads, "inter_op_num_threads": opts.inter_op_num_threads,
            "threads_note": "0 = onnxruntime's default (intra-op: one thread per physical core)",
            "graph_optimization_level": str(opts.graph_optimization_level), "onnx_file_mib": round(onnx_mib, 2)}


def _torch_info() -> dict[str, Any]:
    import torch

    return {"dtype": "float32", "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads()}


class BackendRunner(_CpuRunner):
    """An MLANet artifact opened through the backend registry (:func:`~mlanet.edge.backends.open_backend`),
    timed by wall clock around ``backend(images)`` (numpy in, numpy out: what a caller of the backend sees)."""

    def __init__(self, backend: Any, *, mode: str = "eager", artifact: Path | None = None) -> None:
        self.backend = backend
        self.mode = mode
        self.artifact = artifact
        super().__init__(backend, backend.metadata.input_size)

    def info(self) -> dict[str, Any]:
        meta = self.backend.metadata
        out = {**super().info(), "opened_by": "mlanet.edge.backends.open_backend", "backend": meta.backend,
               "artifact": meta.format, "call": f"{type(self.backend).__name__}(images) (numpy in and out)"}
        if meta.backend == "onnxruntime":
            mib = self.artifact.stat().st_size / 2**20 if self.artifact else 0.0
            out.update(_ort_info(self.backend.session, mib))
        elif meta.backend == "torch":
            out.update(_torch_info())
        return out

    def close(self) -> None:
        self.backend.close()


class TorchCudaRunner(BackendRunner):
    """:class:`~mlanet.edge.backends.TorchCudaBackend` (FP16, channels-last) with inputs already on the GPU,
    ``TorchCudaBackend.run_device`` timed with CUDA events; ``mode`` ``eager`` or ``cuda-graph`` (the backend
    captures one graph per batch size during warm-up and replays it).

    UNTESTED on a GPU: written against the documented PyTorch API on a machine without one.
    """

    timing = "CUDA events around each call (device-side), synchronised after each call"

    def __init__(self, backend: Any, mode: str) -> None:
        import torch

        if mode not in ("eager", "cuda-graph"):
            raise ValueError(f"mode must be 'eager' or 'cuda-graph', got {mode!r}")
        super().__init__(backend, mode=mode)
        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)
        self._images: Any = None

    def info(self) -> dict[str, Any]:
        torch = self._torch
        b = self.backend
        return {"timing": self.timing, "opened_by": "mlanet.edge.backends.open_backend", "backend": b.metadata.backend,
                "dtype": "float16" if b.precision == "fp16" else "float32",
                "memory_format": b.metadata.runtime.get("memory_format"), "mode": self.mode,
                "gpu": torch.cuda.get_device_name(b.device), "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": b.benchmark,
                "call": "TorchCudaBackend.run_device(images), images already on the device in its dtype and layout"
                        + (" (CUDA-graph replay)" if self.mode == "cuda-graph" else "")}

    def prepare(self, batch: int) -> None:
        torch = self._torch
        b = self.backend
        torch.cuda.reset_peak_memory_stats(b.device)
        s = self.input_size
        gen = torch.Generator(device=b.device).manual_seed(batch)
        images = torch.rand((batch, 3, s, s), generator=gen, device=b.device, dtype=b.dtype)
        self._images = images.contiguous(memory_format=b.memory_format)

    def timed_call(self) -> float:
        assert self._images is not None, "prepare(batch) first"
        self._start.record()
        self.backend.run_device(self._images)
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def batch_extra(self) -> dict[str, Any]:
        return {"peak_gpu_mib": round(self._torch.cuda.max_memory_allocated(self.backend.device) / 2**20, 1)}


class TensorRTBenchRunner(BackendRunner):
    """An FP16 TensorRT engine opened through the registry; ``mode="device"``: the engine alone, inputs already
    on the GPU, CUDA-graph replay, CUDA events; ``mode="host-to-host"``: ``backend(images)`` with numpy (pinned
    upload, engine, download, synchronise), wall clock.

    UNTESTED: written without TensorRT or a GPU; check on the first GPU run.
    """

    MODES = ("device", "host-to-host")

    def __init__(self, backend: Any, mode: str, *, engine_path: Path, max_batch: int) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        super().__init__(backend, mode=mode, artifact=engine_path)
        self.timing = ("CUDA events around one engine run (execute_async_v3 or its CUDA-graph replay), inputs "
                       "already on the device" if mode == "device" else
                       "wall clock (time.perf_counter) around TensorRTBackend(images): pinned upload, engine, "
                       "download, synchronise")
        self.max_batch = max_batch
        self._batch = 0

    def info(self) -> dict[str, Any]:
        return {"timing": self.timing, "opened_by": "mlanet.edge.backends.open_backend",
                "dtype": "float16 kernels, float32 I/O", "mode": self.mode,
                "engine": self.backend.metadata.extra.get("engine"),
                "engine_mib": round(self.artifact.stat().st_size / 2**20, 2),
                "call": "TensorRTRunner.time_enqueue(B) after load_device_input" if self.mode == "device"
                        else "TensorRTBackend(images) (numpy in and out)"}

    def prepare(self, batch: int) -> None:
        if batch > self.max_batch:
            raise MLANetError(f"batch {batch} exceeds the engine profile's max batch {self.max_batch}")
        super().prepare(batch)
        self._batch = batch
        if self.mode == "device":
            self.backend._runner.load_device_input(self.images)

    def timed_call(self) -> float:
        if self.mode == "device":
            return self.backend._runner.time_enqueue(self._batch)
        return super().timed_call()


class _Artifacts:
    """The artifacts of the untrained models, written once each into ``tmp`` and opened through the registry:
    a ``.safetensors`` checkpoint (PyTorch backends), its ONNX export, TensorRT engines built from that."""

    def __init__(self, tmp: Path, face_model: Any) -> None:
        self.tmp, self.face_model = tmp, face_model

    def _stem(self, model: Any) -> str:
        return f"{model.name}-{int(model.input_size)}"

    def checkpoint(self, model: Any) -> Path:
        from mlanet.models.model_io import save_model

        path = self.tmp / f"{self._stem(model)}.safetensors"
        if not path.is_file():
            save_model(model, path, self.face_model)
        return path

    def onnx(self, model: Any) -> Path:
        from mlanet.export.onnx_export import export_onnx

        path = self.tmp / f"{self._stem(model)}.onnx"
        if not path.is_file():
            export_onnx(model, self.face_model, path)
        return path

    def engine(self, model: Any, max_batch: int, opt_batch: int) -> Path:
        from mlanet.export.tensorrt_engine import build_engine

        path = self.tmp / f"{self._stem(model)}-b{max_batch}-o{opt_batch}.engine"
        if not path.is_file():  # the build (minutes for the r50) is paid once per model
            build_engine(self.onnx(model), path, fp16=True, max_batch=max_batch, opt_batch=min(opt_batch, max_batch),
                         timing_cache_path=self.tmp / "timing.cache")
        return path


def export_teacher_onnx(teacher: Any, path: Path, *, opset: int = 17) -> Path:
    """The teacher (crops (B, 3, 120, 120) RGB [0, 1] -> de-whitened params (B, 62)) as ONNX, exported
    like an MLANet (:func:`~mlanet.export.onnx_export.export_onnx`'s exporter, opset and dynamic batch);
    its metadata says ``kind: "teacher"``, so :class:`~mlanet.edge.backends.OnnxRuntimeBackend` refuses it."""
    import torch

    from mlanet.export.onnx_export import FORMAT_NAME, FORMAT_VERSION, _export_with_metadata
    from mlanet.teacher.tddfa_mb05 import INPUT_SIZE

    s = INPUT_SIZE
    example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "kind": "teacher",
                "teacher": {k: v for k, v in teacher.describe().items() if k != "files"}}
    return _export_with_metadata(teacher.eval(), example, path, input_names=["images"], output_names=["params"],
                                 dynamic_axes={"images": {0: "batch"}, "params": {0: "batch"}},
                                 metadata=metadata, opset=opset)


class TeacherOnnxRuntimeRunner(_CpuRunner):
    """The teacher's ONNX (not an MLANet artifact: no layout or face model) in a session made by the ONNX
    Runtime backend's own :func:`~mlanet.edge.backends.ort_session` (same options and threads), called as
    :class:`~mlanet.edge.backends.OnnxRuntimeBackend` calls its session (contiguous float32 in, finiteness
    check out)."""

    def __init__(self, teacher: Any, tmp: Path, intra_op_threads: int | None = None) -> None:
        from mlanet.teacher.tddfa_mb05 import INPUT_SIZE
        from mlanet.edge.backends import ort_session

        path = export_teacher_onnx(teacher, tmp / f"{TEACHER_NAME}.onnx")
        self.onnx_mib = path.stat().st_size / 2**20
        self.session = ort_session(path, intra_op_threads=intra_op_threads)
        super().__init__(self._call, INPUT_SIZE)

    def _call(self, images: np.ndarray) -> np.ndarray:
        from mlanet.params import require_finite_params

        arr = np.ascontiguousarray(images, dtype=np.float32)
        return require_finite_params(self.session.run(["params"], {"images": arr})[0], TEACHER_NAME)

    def info(self) -> dict[str, Any]:
        return {**super().info(), **_ort_info(self.session, self.onnx_mib),
                "call": "session.run(['params'], {'images': contiguous float32}) + finiteness check "
                        "(as OnnxRuntimeBackend)"}

    def close(self) -> None:
        self.session = None


def _teacher_torch_runner(teacher: Any, input_size: int) -> _CpuRunner:
    """The teacher in PyTorch, called as :class:`~mlanet.edge.backends.TorchBackend` calls its network."""
    import torch

    def call(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return teacher(torch.from_numpy(images)).float().cpu().numpy()

    runner = _CpuRunner(call, input_size)
    runner.info = lambda: {"timing": runner.timing, **_torch_info(),  # type: ignore[method-assign]
                           "call": "model(torch.from_numpy(images)) under torch.no_grad(), output to numpy "
                                   "(as TorchBackend)"}
    return runner


# --------------------------------------------------------------------------------------------- measurement
def summarise(samples_ms: list[float]) -> dict[str, float]:
    """Median, p95 (nearest rank, as :func:`.record.time_call`), min and max of ``samples_ms``."""
    s = sorted(samples_ms)
    n = len(s)
    median = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {"median_ms": median, "p95_ms": s[min(n - 1, int(round(0.95 * (n - 1))))], "min_ms": s[0], "max_ms": s[-1]}


def measure_batch(
    timed_call: Callable[[], float], batch: int, policy: RepeatPolicy, deadline: float, est_call_s: float | None,
    prepare: Callable[[], None] | None = None,
) -> tuple[dict[str, Any], float | None]:
    """Warm-up and adaptive repeats of ``timed_call`` for one batch size, within ``deadline`` (perf_counter).

    ``est_call_s`` (seconds per call, extrapolated) decides whether the batch size still fits the
    budget; ``prepare`` (inputs, CUDA graph capture) runs only when it does.
    Returns (entry, median wall seconds of one call, or None when skipped).
    """
    left = deadline - time.perf_counter()
    calls = policy.warmup + policy.floor_repeats
    if est_call_s is not None and est_call_s * calls > left:
        return {"batch": batch, "status": "skipped",
                "reason": f"budget: about {est_call_s:.2f} s per call x {calls} calls (warm-up + minimum repeats) "
                          f"> {max(left, 0.0):.1f} s left of the {policy.time_budget_s:g} s budget"}, None
    if prepare is not None:
        prepare()
    wall = 0.0
    for _ in range(policy.warmup):
        t0 = time.perf_counter()
        timed_call()
        wall = time.perf_counter() - t0  # the last warm-up call is the most representative
    wall = max(wall, 1e-6)
    target = min(policy.max_repeats, max(policy.min_repeats, math.ceil(policy.min_time_s / wall)))
    fit = int((deadline - time.perf_counter()) / wall)
    planned = max(policy.floor_repeats, min(target, fit))
    samples: list[float] = []
    walls: list[float] = []
    for i in range(planned):
        t0 = time.perf_counter()
        samples.append(timed_call())
        walls.append(time.perf_counter() - t0)
        if i + 1 >= policy.floor_repeats and time.perf_counter() > deadline:
            break
    stats = summarise(samples)
    entry = {
        "batch": batch,
        "status": "ok",
        **{k: round(v, 4) for k, v in stats.items()},
        "ms_per_face": round(stats["median_ms"] / batch, 4),
        "throughput_faces_per_s": round(batch / (stats["median_ms"] / 1e3), 3),
        "repeats": len(samples),
        "warmup": policy.warmup,
        "budget_limited": len(samples) < target,
    }
    return entry, float(np.median(walls))


def _run_backend(runner: _Runner, batch_sizes: list[int], policy: RepeatPolicy,
                 on_entry: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    deadline = time.perf_counter() + policy.time_budget_s
    entries: list[dict[str, Any]] = []
    prev: tuple[int, float] | None = None
    for b in batch_sizes:
        est = prev[1] * b / prev[0] if prev else None
        try:
            entry, wall = measure_batch(runner.timed_call, b, policy, deadline, est,
                                        prepare=lambda b=b: runner.prepare(b))
            if entry["status"] == "ok":
                entry.update(runner.batch_extra())
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large batch; record and go on
            log.warning("batch %d failed: %s: %s", b, type(exc).__name__, exc)
            entry, wall = {"batch": b, "status": "error", "reason": f"{type(exc).__name__}: {exc}"}, None
        entries.append(entry)
        on_entry(entry)
        if wall is not None:
            prev = (b, wall)
    return entries


#: Rounds of the interleaved teacher comparison and the time one round aims at (both runners together).
INTERLEAVED_ROUNDS = 21
INTERLEAVED_ROUND_S = 0.05
INTERLEAVED_CALLS = (3, 25)  # the calls per runner per round: at least, at most


def interleaved_ratio(model: _Runner, teacher: _Runner, batch: int, est_ms: tuple[float, float],
                      rounds: int = INTERLEAVED_ROUNDS) -> dict[str, Any]:
    """The model's call time over the teacher's at ``batch``, timed in alternating rounds.

    Both runners are prepared at ``batch`` and warmed (2 calls each). Each round times ``calls``
    calls of one runner then ``calls`` of the other (the teacher first in even rounds, the model first in
    odd ones); ``calls`` follows from ``est_ms`` (model, teacher medians of their blocks) so that a round
    takes about :data:`INTERLEAVED_ROUND_S`. Returns ``ratio`` (median over rounds of the round's model
    median / teacher median), ``ratio_min``, ``ratio_max``, ``rounds``, ``calls_per_round`` and the
    medians over rounds of each runner's round medians (ms). On a machine whose speed drifts from round to
    round both runners drift together, so the median of the round ratios can differ from the ratio of those
    two medians (taken from different rounds); the first is the paired estimate.
    """
    lo, hi = INTERLEAVED_CALLS
    calls = int(min(hi, max(lo, INTERLEAVED_ROUND_S * 1e3 / max(sum(est_ms), 1e-6))))
    for runner in (model, teacher):
        runner.prepare(batch)
        for _ in range(2):
            runner.timed_call()
    ratios: list[float] = []
    model_ms: list[float] = []
    teacher_ms: list[float] = []
    for i in range(rounds):
        medians = {}
        for name, runner in (("teacher", teacher), ("model", model)) if i % 2 == 0 else \
                (("model", model), ("teacher", teacher)):
            medians[name] = float(np.median([runner.timed_call() for _ in range(calls)]))
        model_ms.append(medians["model"])
        teacher_ms.append(medians["teacher"])
        ratios.append(medians["model"] / max(medians["teacher"], 1e-9))
    return {"batch": batch, "ratio": round(float(np.median(ratios)), 3), "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3), "rounds": rounds, "calls_per_round": calls,
            "model_median_ms": round(float(np.median(model_ms)), 4),
            "teacher_median_ms": round(float(np.median(teacher_ms)), 4)}


def _interleave(model_factory: Callable[[], _Runner], teacher_factory: Callable[[], _Runner],
                model_batches: list[dict[str, Any]], teacher_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`interleaved_ratio` at every batch size both runs timed; an error is recorded, not raised."""
    teacher_ok = {b["batch"]: b["median_ms"] for b in teacher_batches if b.get("status") == "ok"}
    pairs = [(b["batch"], b["median_ms"], teacher_ok[b["batch"]]) for b in model_batches
             if b.get("status") == "ok" and b["batch"] in teacher_ok]
    if not pairs:
        return []
    out: list[dict[str, Any]] = []
    model = teacher = None
    try:
        model, teacher = model_factory(), teacher_factory()
        for batch, m_ms, t_ms in pairs:
            out.append(interleaved_ratio(model, teacher, batch, (m_ms, t_ms)))
    except Exception as exc:  # noqa: BLE001 - the blockwise ratio still stands; say why this one is missing
        log.warning("interleaved teacher comparison failed: %s: %s", type(exc).__name__, exc)
        out.append({"status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    finally:
        for runner in (model, teacher):
            if runner is not None:
                runner.close()
    return out


# --------------------------------------------------------------------------------------------- setup helpers
def _load_face_model(path: str | None) -> tuple[Any, dict[str, Any]]:
    from mlanet.morphable.model import MorphableModel
    from mlanet.paths import default_face_model_path

    if path is not None:
        fm = MorphableModel.load(Path(path).expanduser())
        return fm, {"source": "file", "path": str(Path(path).expanduser())}
    default = default_face_model_path()
    if default.is_file():
        return MorphableModel.load(default), {"source": "asset home", "path": str(default)}
    from mlanet.morphable.synthetic import make_synthetic_face_model

    log.warning("no face model at %s: using the synthetic test model (only the output size P differs)", default)
    return MorphableModel(make_synthetic_face_model()), {
        "source": "synthetic", "path": None,
        "note": f"no face model at {default}; the synthetic test model has fewer basis vectors, so the heads are "
                "slightly smaller than with ICT-FaceKit (negligible next to the backbone)",
    }


def _model_preprocess(name: str, input_size: int | None) -> tuple[Any, str]:
    """(PreprocessCfg, where it came from): ``input_size`` if given, else the model's own
    (:func:`~mlanet.models.registry.registered_preprocess`: shipped weights', else the registry's default)."""
    from mlanet.models.registry import registered_preprocess
    from mlanet.preprocess import PreprocessCfg

    if input_size:
        return PreprocessCfg(input_size=input_size), "--input-size"
    return registered_preprocess(name)


def _build_model(name: str, face_model: Any, input_size: int | None) -> Any:
    """The untrained model (seed 0) at :func:`_model_preprocess`'s input size."""
    import torch

    from mlanet.models.registry import create_model

    preprocess, _ = _model_preprocess(name, input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return create_model(name, face_model=face_model, preprocess=preprocess).eval()


def _runners(backend: str, model: Any, face_model: Any, tmp: Path, *, batch_sizes: list[int] = (1,),
             trt_opt_batch: int = 1, ort_threads: int | None = None) -> list[Callable[[], _Runner]]:
    """Factories of the runners (modes) of ``backend`` for ``model``, each opening the model's artifact
    through the backend registry (:func:`~mlanet.edge.backends.open_backend`); built lazily so setup time
    (writing the artifact, the export, the engine build, opening) is measured per mode."""
    from mlanet.edge.backends import open_backend

    backend_spec(backend)  # an unknown name fails here, naming the known ones
    files = _Artifacts(tmp, face_model)
    if backend == "torch-cpu":
        return [lambda: BackendRunner(open_backend(files.checkpoint(model), face_model, device="cpu"))]
    if backend == "onnxruntime-cpu":
        def ort() -> _Runner:
            path = files.onnx(model)
            return BackendRunner(open_backend(path, face_model, device="cpu", intra_op_threads=ort_threads),
                                 artifact=path)

        return [ort]
    if backend == "torch-cuda-fp16":
        return [lambda m=m: TorchCudaRunner(open_backend(files.checkpoint(model), face_model, device="cuda",
                                                         cuda_graphs=(m == "cuda-graph")), m)
                for m in ("eager", "cuda-graph")]
    # tensorrt: one engine per model, shared by both modes
    max_batch = max(batch_sizes)

    def trt(mode: str) -> _Runner:
        path = files.engine(model, max_batch, trt_opt_batch)
        b = open_backend(path, face_model, device="cuda", cuda_graphs=(mode == "device"))
        return TensorRTBenchRunner(b, mode, engine_path=path, max_batch=max_batch)

    return [lambda m=m: trt(m) for m in TensorRTBenchRunner.MODES]


def _resolve_args(args: argparse.Namespace) -> tuple[list[str], list[str], list[int], RepeatPolicy]:
    from mlanet.models.registry import list_models

    quick = bool(getattr(args, "quick", False))
    models = _csv(args.models) if getattr(args, "models", None) else list(DEFAULT_MODELS)
    unknown = [m for m in models if m not in list_models()]
    if unknown or not models:
        raise MLANetError(f"unknown model(s) {unknown or models}; known models: {', '.join(list_models())}")
    backends = _csv(args.backends) if getattr(args, "backends", None) else list(BACKENDS)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise MLANetError(f"unknown backend(s) {unknown or backends}; known backends: {', '.join(BACKENDS)}")
    raw = getattr(args, "batch_sizes", None)
    try:
        batches = [int(b) for b in _csv(raw)] if raw else list(QUICK_BATCH_SIZES if quick else FULL_BATCH_SIZES)
    except ValueError:
        raise MLANetError(f"--batch-sizes must be comma-separated positive integers, got {raw!r}") from None
    if not batches or min(batches) < 1:
        raise MLANetError(f"--batch-sizes must be comma-separated positive integers, got {raw!r}")
    policy = QUICK_POLICY if quick else FULL_POLICY
    overrides = {k: v for k, v in (("time_budget_s", getattr(args, "time_budget_s", None)),
                                   ("min_repeats", getattr(args, "min_repeats", None)),
                                   ("warmup", getattr(args, "warmup", None))) if v is not None}
    if "min_repeats" in overrides:
        overrides["floor_repeats"] = min(policy.floor_repeats, overrides["min_repeats"])
    policy = replace(policy, **overrides)
    ort_threads = getattr(args, "ort_threads", None)
    if ort_threads is not None and ort_threads < 1:
        raise MLANetError(f"--ort-threads must be >= 1, got {ort_threads}")
    teacher = getattr(args, "teacher", None)
    if teacher is not None and not Path(teacher).expanduser().is_dir():
        raise MLANetError(f"--teacher {teacher}: no such folder (the 3DDFA_V2 MobileNet x0.5 files, e.g. "
                          "../shared/models/3ddfa_v2_mb05)")
    return models, list(dict.fromkeys(backends)), sorted(set(batches)), policy


# --------------------------------------------------------------------------------------------- run
_ROW = "{:<24} {:<16} {:<10} {:>5} {:>10} {:>10} {:>10} {:>7}"


def _print_row(model: str, backend: str, mode: str, e: dict[str, Any]) -> None:
    if e["status"] == "ok":
        print(_ROW.format(model, backend, mode, e["batch"], f"{e['median_ms']:.2f}", f"{e['p95_ms']:.2f}",
                          f"{e['throughput_faces_per_s']:.1f}", e["repeats"]), flush=True)
    else:
        print(_ROW.format(model, backend, mode, e["batch"], e["status"], "", "", "") + f"  {e['reason']}", flush=True)


def run(args: argparse.Namespace) -> Path:
    """Time every (model, backend, batch size); write ``model_latency.json``; return its path."""
    import torch

    models, backends, batch_sizes, policy = _resolve_args(args)
    threads = getattr(args, "torch_threads", None)
    if threads is not None and threads < 1:
        raise MLANetError(f"--torch-threads must be >= 1, got {threads}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(args, models, backends, batch_sizes, policy)
    finally:
        torch.set_num_threads(old_threads)


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _run(args: argparse.Namespace, models: list[str], backends: list[str], batch_sizes: list[int],
         policy: RepeatPolicy) -> Path:
    import os

    import torch

    from mlanet.models.flops import count_flops

    t_start = time.perf_counter()
    load_start = _load_average()
    face_model, fm_info = _load_face_model(getattr(args, "face_model", None))
    fm_info.update({"model_id": face_model.model_id, "params_P": face_model.layout.total})
    reasons = availability()
    results: dict[str, Any] = {
        "weights": WEIGHTS_NOTE,
        "face_model": fm_info,
        "input_size": None,
        "batch_sizes": batch_sizes,
        "quick": bool(getattr(args, "quick", False)),
        "policy": asdict(policy),
        "threads": {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads(),
                    "cpu_count": os.cpu_count(), "ort_intra_op": getattr(args, "ort_threads", None)},
        "models": {},
        "backends": {b: ({"available": True} if r is None else {"available": False, "reason": r})
                     for b, r in reasons.items()},
        "runs": [],
    }
    ort_threads = getattr(args, "ort_threads", None)
    teacher_dir = getattr(args, "teacher", None)
    print(_ROW.format("model", "backend", "mode", "batch", "median_ms", "p95_ms", "faces/s", "repeats"), flush=True)
    with tempfile.TemporaryDirectory(prefix="mlanet-bench-model-") as tmp_dir:
        teacher_factories: dict[str, Callable[[], _Runner]] = {}
        if teacher_dir is not None:
            teacher_factories = _run_teacher(Path(teacher_dir).expanduser(), backends, reasons, batch_sizes, policy,
                                             Path(tmp_dir), ort_threads, results)
        teacher_batches = {r["backend"]: r.get("batches", []) for r in results["runs"] if r["model"] == TEACHER_NAME}
        for name in models:
            model = _build_model(name, face_model, getattr(args, "input_size", None))
            size_source = _model_preprocess(name, getattr(args, "input_size", None))[1]
            flops = count_flops(model)
            results["input_size"] = int(model.input_size)
            results["models"][name] = {"parameters": int(flops["parameters"]), "gmacs": round(flops["gmacs"], 4),
                                       "input_size": int(model.input_size), "input_size_source": size_source,
                                       "output_size": int(model.layout.total)}
            for backend in backends:
                if reasons[backend] is not None:
                    run_entry = {"model": name, "backend": backend, "mode": None, "status": "skipped",
                                 "reason": reasons[backend], "batches": []}
                    results["runs"].append(run_entry)
                    print(_ROW.format(name, backend, "-", "-", "skipped", "", "", "") + f"  {reasons[backend]}",
                          flush=True)
                    continue
                for factory in _runners(backend, model, face_model, Path(tmp_dir), batch_sizes=batch_sizes,
                                        trt_opt_batch=int(getattr(args, "trt_opt_batch", None) or 1),
                                        ort_threads=ort_threads):
                    entry = _run_one(name, backend, factory, batch_sizes, policy)
                    if backend in teacher_factories and entry["status"] == "ok":
                        entry["interleaved_vs_teacher"] = _interleave(factory, teacher_factories[backend],
                                                                      entry["batches"], teacher_batches[backend])
                    results["runs"].append(entry)
            del model
    if teacher_dir is not None:
        results["vs_teacher"] = teacher_ratios(results["runs"])
        _print_ratios(results["vs_teacher"])
    results["wall_s"] = round(time.perf_counter() - t_start, 2)
    results["load_average"] = {
        "start": load_start, "end": _load_average(),
        "note": "1/5/15-minute load averages (os.getloadavg); well above the CPU count means other work "
                "competed for the cores and CPU timings are not representative",
    }
    record = TEACHER_RECORD_NAME if teacher_dir is not None else RECORD_NAME
    path = write_record(record, results, out_dir=record_dir(getattr(args, "out", None)))
    log.info("model latency: %d runs in %.0f s -> %s", len(results["runs"]), results["wall_s"], path)
    return path


def _run_teacher(folder: Path, backends: list[str], reasons: dict[str, str | None], batch_sizes: list[int],
                 policy: RepeatPolicy, tmp: Path, ort_threads: int | None,
                 results: dict[str, Any]) -> dict[str, Callable[[], _Runner]]:
    """Time the teacher on the requested CPU backends; its runs go into ``results["runs"]`` as model
    :data:`TEACHER_NAME`, its description into ``results["teacher"]``. Returns the runner factory of each
    backend it ran on (for the interleaved comparison)."""
    from mlanet.models.flops import count_flops
    from mlanet.teacher.tddfa_mb05 import INPUT_SIZE, N_PARAMS, load_tddfa_mb05

    teacher = load_tddfa_mb05(folder).eval()
    factories: dict[str, Callable[[], _Runner]] = {}
    flops = count_flops(teacher, INPUT_SIZE)
    results["teacher"] = {"name": TEACHER_NAME, "folder": str(folder), "describe": teacher.describe(),
                          "parameters": int(flops["parameters"]), "gmacs": round(flops["gmacs"], 4),
                          "input_size": INPUT_SIZE, "output_size": N_PARAMS,
                          "note": "parameters include the unused fc_lm head (136 outputs) that the upstream weights "
                                  "carry; MACs count only what forward runs"}
    for backend in backends:
        reason = reasons[backend] or (None if backend in TEACHER_BACKENDS else
                                           f"the teacher is timed on {', '.join(TEACHER_BACKENDS)} only")
        if reason is not None:
            results["runs"].append({"model": TEACHER_NAME, "backend": backend, "mode": None, "status": "skipped",
                                    "reason": reason, "batches": []})
            print(_ROW.format(TEACHER_NAME, backend, "-", "-", "skipped", "", "", "") + f"  {reason}", flush=True)
            continue
        factory: Callable[[], _Runner] = (
            (lambda: _teacher_torch_runner(teacher, INPUT_SIZE)) if backend == "torch-cpu"
            else (lambda: TeacherOnnxRuntimeRunner(teacher, tmp, ort_threads))
        )
        run = _run_one(TEACHER_NAME, backend, factory, batch_sizes, policy)
        results["runs"].append(run)
        if run["status"] == "ok":
            factories[backend] = factory
    return factories


def teacher_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each model's time over the teacher's, per (backend, batch size) both were timed at: ``ratio`` from the
    interleaved rounds where the run has them (``interleaved``: its record), else the blocks' medians;
    ``ratio_blockwise`` always the blocks' medians."""
    teacher = {(r["backend"], b["batch"]): b["median_ms"] for r in runs if r["model"] == TEACHER_NAME
               for b in r.get("batches", []) if b.get("status") == "ok"}
    out = []
    for r in runs:
        if r["model"] == TEACHER_NAME:
            continue
        for b in r.get("batches", []):
            ref = teacher.get((r["backend"], b["batch"]))
            if b.get("status") == "ok" and ref:
                blockwise = round(b["median_ms"] / ref, 3)
                row = {"model": r["model"], "backend": r["backend"], "mode": r.get("mode"), "batch": b["batch"],
                       "model_median_ms": b["median_ms"], "teacher_median_ms": ref, "ratio": blockwise,
                       "ratio_blockwise": blockwise, "ratio_method": "blockwise"}
                inter = [x for x in r.get("interleaved_vs_teacher", []) if x.get("batch") == b["batch"]]
                if inter:
                    row.update(ratio=inter[0]["ratio"], ratio_method="interleaved", interleaved=inter[0])
                out.append(row)
    return out


def _print_ratios(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no model/teacher pair was timed on the same backend and batch size", flush=True)
        return
    fmt = "{:<24} {:<16} {:>5} {:>10} {:>12} {:>7}  {}"
    print(fmt.format("model", "backend", "batch", "model_ms", "teacher_ms", "ratio", "(ms: the blocks' medians; how "
                     "the ratio was measured)"), flush=True)
    for r in rows:
        i = r.get("interleaved")
        how = (f"interleaved, {i['rounds']} rounds: {i['ratio_min']:.2f}-{i['ratio_max']:.2f}x; blocks "
               f"{r['ratio_blockwise']:.2f}x") if i else "blocks"
        print(fmt.format(r["model"], r["backend"], r["batch"], f"{r['model_median_ms']:.3f}",
                         f"{r['teacher_median_ms']:.3f}", f"{r['ratio']:.2f}x", how), flush=True)


def _run_one(name: str, backend: str, factory: Callable[[], _Runner], batch_sizes: list[int],
             policy: RepeatPolicy) -> dict[str, Any]:
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"model": name, "backend": backend, "mode": None, "status": "ok",
                             "time_budget_s": policy.time_budget_s}
    try:
        runner = factory()
    except Exception as exc:  # noqa: BLE001 - an export or session failure is a result, not a crash
        log.warning("%s on %s: setup failed: %s: %s", name, backend, type(exc).__name__, exc)
        entry.update(status="error", reason=f"setup failed: {type(exc).__name__}: {exc}", batches=[],
                     setup_s=round(time.perf_counter() - t0, 2))
        print(_ROW.format(name, backend, "-", "-", "error", "", "", "") + f"  {entry['reason']}", flush=True)
        return entry
    entry["mode"] = runner.mode
    entry["setup_s"] = round(time.perf_counter() - t0, 2)
    try:
        entry["info"] = runner.info()
        t1 = time.perf_counter()
        entry["batches"] = _run_backend(runner, batch_sizes, policy,
                                        lambda e: _print_row(name, backend, runner.mode, e))
        entry["wall_s"] = round(time.perf_counter() - t1, 2)
    finally:
        runner.close()
    return entry
