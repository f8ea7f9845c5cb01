"""The GPU targets of the deployment path, measured on one CUDA GPU: ``mlanet bench gpu``.

What is measured (each against its target; the record says met or not, nothing is asserted):

============================  =========================================  ==================
name                          what                                       target
============================  =========================================  ==================
``r50_b1_latency``            ``mlanet_r50`` FP16, batch 1, per call      <= 1 ms
``r50_b32_throughput``        ``mlanet_r50`` FP16, batch 32              >= 10,000 faces/s
``mobile_b1_latency``         ``mlanet_mobile`` FP16, batch 1            <= 0.3 ms
``preprocess_8_faces_1080p``  the device crop, 8 faces from one 1080p    <= 0.1 ms
                              frame already on the GPU, to FP16
                              channels-last (S = 224)
``frame_path_1_face``         preprocess + infer + reconstruct of one    <= 2 ms
                              face in the pipeline's GPU mode (crop,
                              network, pose to the frame camera and 68
                              landmarks, downloaded), the 1080p frame
                              already on the GPU
============================  =========================================  ==================

Network numbers come from every GPU backend present, each measured the way ``mlanet bench
model`` does (:mod:`.model_latency`: warm-up, adaptive repeats, median): ``tensorrt`` (engine
alone, inputs on the device, CUDA-graph replay) when TensorRT and pycuda are installed, and
``torch-cuda-fp16`` in CUDA-graph mode; a target is judged per backend. The crop and the
per-frame path are timed with CUDA events around each call (median of ``--repeats`` after
``--warmup``); the per-frame path is ``FacePipeline``'s GPU mode, also timed as a whole
``process`` call with the 1080p frame's upload (``*_with_upload``, informational). Weights are untrained (seed 0): timing does
not depend on their values.

Without a CUDA GPU this command stops with a clear error and writes nothing.

Record ``results``::

    {"gpu": {...}, "input_size": 224, "frame": [1080, 1920], "face_model": {...},
     "targets": [{"name", "what", "target", "unit", "direction": "max" | "min",
                  "measured": {backend_or_variant: value}, "met": {backend_or_variant: bool}}],
     "details": {...per-measurement medians, p95, repeats, timing method...}}
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mlanet.errors import MLANetError
from mlanet.preprocess import CropBox
from mlanet.benchmarks.record import record_dir, write_record

log = logging.getLogger(__name__)

RECORD_NAME = "gpu_targets"
FRAME_HW = (1080, 1920)
INPUT_SIZE = 224


@dataclass(frozen=True)
class Target:
    """One target: ``direction="max"``: measured must be <= ``value``; ``"min"``: >= ``value``."""

    name: str
    what: str
    value: float
    unit: str
    direction: str

    def met(self, measured: float) -> bool:
        return measured <= self.value if self.direction == "max" else measured >= self.value


TARGETS: tuple[Target, ...] = (
    Target("r50_b1_latency", "mlanet_r50 FP16, batch 1, median ms per call", 1.0, "ms", "max"),
    Target("r50_b32_throughput", "mlanet_r50 FP16, batch 32, faces per second (batch / median call time)",
           10_000.0, "faces/s", "min"),
    Target("mobile_b1_latency", "mlanet_mobile FP16, batch 1, median ms per call", 0.3, "ms", "max"),
    Target("preprocess_8_faces_1080p", "device crop: 8 faces from one 1080p frame on the GPU to (8, 3, 224, 224) "
           "FP16 channels-last, median ms", 0.1, "ms", "max"),
    Target("frame_path_1_face", "preprocess + infer + reconstruct of one face from a 1080p frame on the GPU, "
           "median ms", 2.0, "ms", "max"),
)


def judge(measured: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The ``targets`` list of the record: each target with its measured values (per backend/variant)
    and whether each meets it. A target nothing measured has empty dicts."""
    out = []
    for t in TARGETS:
        values = measured.get(t.name, {})
        out.append({"name": t.name, "what": t.what, "target": t.value, "unit": t.unit, "direction": t.direction,
                    "measured": {k: round(float(v), 4) for k, v in values.items()},
                    "met": {k: t.met(float(v)) for k, v in values.items()}})
    return out


# --------------------------------------------------------------------------------------------- arguments
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repeats", type=int, default=200, help="timed calls per kernel/path measurement (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up calls before timing (default 20)")
    p.add_argument("--time-budget-s", type=float, default=60.0,
                   help="seconds of timed network calls per (model, backend) (default 60)")
    p.add_argument("--face-model", default=None,
                   help="face-model file (default: the asset home's, else the synthetic test model)")
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda)")


# --------------------------------------------------------------------------------------------- timing
def cuda_event_times(fn: Callable[[], Any], *, warmup: int, repeats: int, stream: Any = None) -> list[float]:
    """Milliseconds of ``fn()`` between two CUDA events on ``stream`` (default: the current one),
    synchronised after each call; ``warmup`` untimed calls first."""
    import torch

    if warmup < 0 or repeats < 1:
        raise MLANetError(f"need warmup >= 0 and repeats >= 1, got {warmup}, {repeats}")
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    stream = stream or torch.cuda.current_stream()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(float(start.elapsed_time(end)))
    return times


def _stats(times: list[float]) -> dict[str, Any]:
    from mlanet.benchmarks.model_latency import summarise

    return {**{k: round(v, 5) for k, v in summarise(times).items()}, "repeats": len(times)}


def boxes_8_faces(frame_hw: tuple[int, int] = FRAME_HW) -> list[CropBox]:
    """Eight face crops spread over a frame, 180-420 px (a group shot at 1080p), two partly outside."""
    h, w = frame_hw
    sizes = [180, 220, 260, 300, 340, 380, 420, 240]
    boxes = []
    for k, s in enumerate(sizes):
        x = (k % 4) * w / 4 + 20 - (60 if k == 0 else 0)
        y = (k // 4) * h / 2 + 40 + (h / 2 - s - 20 if k == 7 else 0) + (60 if k == 7 else 0)
        boxes.append(CropBox(float(x), float(y), float(s)))
    return boxes


def _random_frame(frame_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*frame_hw, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------- parts
def measure_networks(face_model: Any, policy: Any, details: dict[str, Any], tmp: Path) -> dict[str, dict[str, float]]:
    """r50 batch 1 and 32, mobile batch 1, on every GPU backend present."""
    from mlanet.benchmarks import model_latency as ml

    measured: dict[str, dict[str, float]] = {}
    plan = {"mlanet_r50": [1, 32], "mlanet_mobile": [1]}
    models = {name: ml._build_model(name, face_model, INPUT_SIZE) for name in plan}  # each runner copies its own
    for backend in ("tensorrt", "torch-cuda-fp16"):
        reason = ml.availability([backend])[backend]
        if reason is not None:
            details.setdefault("skipped_backends", {})[backend] = reason
            continue
        for name, batches in plan.items():
            model = models[name]
            factories = ml._runners(backend, model, face_model, tmp, batch_sizes=batches, trt_opt_batch=1)
            factory = factories[0] if backend == "tensorrt" else factories[1]  # device / cuda-graph mode
            run = ml._run_one(name, backend, factory, batches, policy)
            details.setdefault("networks", []).append(run)
            label = f"{backend}:{run.get('mode')}"
            for entry in run.get("batches", []):
                if entry.get("status") != "ok":
                    continue
                if name == "mlanet_r50" and entry["batch"] == 1:
                    measured.setdefault("r50_b1_latency", {})[label] = entry["median_ms"]
                if name == "mlanet_r50" and entry["batch"] == 32:
                    measured.setdefault("r50_b32_throughput", {})[label] = entry["throughput_faces_per_s"]
                if name == "mlanet_mobile" and entry["batch"] == 1:
                    measured.setdefault("mobile_b1_latency", {})[label] = entry["median_ms"]
    return measured


def measure_preprocess(device: Any, warmup: int, repeats: int, details: dict[str, Any]) -> dict[str, float]:
    """The device crop (:func:`~mlanet.edge.gpu_crops.crop_from_table`, torch ops) of 8 boxes of a 1080p
    frame already on the GPU, to FP16 channels-last and to FP32 NCHW."""
    import torch

    from mlanet.edge.gpu_crops import box_table, crop_from_table

    dev_frame = torch.from_numpy(_random_frame(FRAME_HW)).to(device)
    table = torch.from_numpy(box_table(boxes_8_faces(FRAME_HW), INPUT_SIZE)).to(device)
    out: dict[str, float] = {}
    for label, dtype, fmt in (("fp16_channels_last", torch.float16, torch.channels_last),
                              ("fp32_nchw", torch.float32, torch.contiguous_format)):
        t = cuda_event_times(lambda: crop_from_table(dev_frame, table, INPUT_SIZE, dtype).contiguous(memory_format=fmt),
                             warmup=warmup, repeats=repeats)
        details.setdefault("preprocess", {})[label] = {**_stats(t), "frame": "on the GPU (uint8)"}
        out[label] = float(np.median(t))
    return out


def measure_frame_path(face_model: Any, device: Any, warmup: int, repeats: int,
                       details: dict[str, Any]) -> dict[str, float]:
    """Preprocess + infer + reconstruct of one face in the GPU mode of :class:`~mlanet.edge.pipeline.FacePipeline`
    (its :class:`~mlanet.edge.device_path.DeviceFaceStage`: crop, FP16 network with CUDA-graph replay, pose to
    the frame camera and 68 landmarks on the device, results downloaded), for each model: the 1080p frame
    already on the GPU (``frame-on-gpu``); ``FacePipeline.process`` with the upload from numpy and a
    fixed-box tracker (``with-upload``); and ``FacePipeline.run``'s overlapped wall time per frame
    (informational). The device work runs on the stage's own streams; the events on the current stream
    around each call (which waits for its results) give the latency the host sees."""
    from mlanet.edge.backends import torch_cuda
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.reconstruct import frame_camera
    from mlanet.edge.types import Detection, Frame

    frame = _random_frame(FRAME_HW, seed=1)
    h, w = FRAME_HW
    side = round(0.28 * h)  # a 300 px face crop at 1080p, centred
    box = CropBox((w - side) / 2.0, (h - side) / 2.0, float(side))
    detection = Detection(np.array([box.x0, box.y0, box.x0 + box.size, box.y0 + box.size], np.float64), 0.9)
    cfg = PipelineCfg(render_mode=None, meshes=False)
    out: dict[str, float] = {}
    for name in ("mlanet_mobile", "mlanet_r50"):
        backend = torch_cuda.TorchCudaBackend.untrained(name, face_model, device=device, cuda_graphs=True)
        pipeline = FacePipeline(backend, face_model, cfg, detector=lambda image: [detection])
        stage = pipeline.device_stage
        if stage is None:
            raise MLANetError(f"{name}: the pipeline did not choose its GPU mode on {device}")
        camera = frame_camera(w, h, cfg.fov_deg)
        staged = stage.upload(frame)
        t = cuda_event_times(lambda: stage.collect(stage.submit(staged, [box], camera)), warmup=warmup, repeats=repeats)
        frames = [Frame(frame, i, i * 33_333_333, "bench") for i in range(warmup + repeats + 1)]
        t_up = cuda_event_times(lambda: pipeline.process(frames[0]), warmup=warmup, repeats=max(repeats // 4, 10))
        walls: list[float] = []
        t_prev: list[float] = []

        def on_frame(_result: Any) -> None:
            now = time.perf_counter()
            if t_prev and pipeline.frames_done > warmup:
                walls.append((now - t_prev[-1]) * 1e3)
            t_prev.append(now)

        pipeline.run(frames, on_frame=on_frame)
        entry = {"frame_on_gpu": _stats(t), "with_upload_from_numpy": _stats(t_up),
                 "backend": {k: backend.metadata.runtime.get(k)
                             for k in ("backend", "precision", "memory_format", "cuda_graphs")}}
        if walls:
            entry["pipeline_run_wall_ms_per_frame"] = _stats(walls)
        details.setdefault("frame_path", {})[name] = entry
        out[f"{name}:frame-on-gpu"] = float(np.median(t))
        out[f"{name}:with-upload"] = float(np.median(t_up))
        pipeline.close()
        backend.close()
    return out


# --------------------------------------------------------------------------------------------- run
def _gpu_info(device: Any) -> dict[str, Any]:
    import torch

    p = torch.cuda.get_device_properties(device)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1),
            "multiprocessors": p.multi_processor_count, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def run(args: argparse.Namespace) -> Path:
    """Measure every target on the GPU; write ``gpu_targets.json``; return its path."""
    import torch

    from mlanet.edge.gpu_crops import require_cuda
    from mlanet.benchmarks import model_latency as ml

    require_cuda("mlanet bench gpu", "run it on a GPU host (bash benchmarks/gpu_session.sh); `mlanet bench model` measures the CPU backends")
    if args.repeats < 1 or args.warmup < 0:
        raise MLANetError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats}, {args.warmup}")
    device = torch.device(args.device)
    torch.cuda.set_device(device)
    t0 = time.perf_counter()
    face_model, fm_info = ml._load_face_model(getattr(args, "face_model", None))
    fm_info.update({"model_id": face_model.model_id, "params_P": face_model.layout.total})
    policy = replace(ml.FULL_POLICY, time_budget_s=float(args.time_budget_s), warmup=max(ml.FULL_POLICY.warmup, 5),
                     min_repeats=20, max_repeats=1000)
    details: dict[str, Any] = {"policy": {"warmup": args.warmup, "repeats": args.repeats,
                                          "network_policy": policy.__dict__}}
    measured: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mlanet-bench-gpu-") as tmp:
        measured.update(measure_networks(face_model, policy, details, Path(tmp)))
    pre = measure_preprocess(device, args.warmup, args.repeats, details)
    measured["preprocess_8_faces_1080p"] = {"device-crop:fp16_channels_last": pre["fp16_channels_last"]}
    path_ms = measure_frame_path(face_model, device, args.warmup, args.repeats, details)
    measured["frame_path_1_face"] = path_ms
    results: dict[str, Any] = {"gpu": _gpu_info(device), "input_size": INPUT_SIZE, "frame": list(FRAME_HW), "face_model": fm_info,
               "weights": ml.WEIGHTS_NOTE, "targets": judge(measured), "details": details,
               "wall_s": round(time.perf_counter() - t0, 2)}
    for t in results["targets"]:
        for k, v in t["measured"].items():
            print(f"{t['name']:<26} {k:<34} {v:>12.4f} {t['unit']:<8} target {'<=' if t['direction'] == 'max' else '>='} "
                  f"{t['target']:g}: {'met' if t['met'][k] else 'NOT met'}", flush=True)
    return write_record(RECORD_NAME, results, out_dir=record_dir(getattr(args, "out", None)))
