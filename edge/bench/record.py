"""Shared helpers for benchmark harnesses: timing statistics and self-describing JSON records."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from mlanet.fileutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results"


def time_call(fn: Callable[[], Any], *, warmup: int = 5, repeats: int = 30) -> dict[str, float]:
    """Wall-clock milliseconds of ``fn()``: median, p95, min over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {
        "median_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, int(round(0.95 * (len(samples) - 1))))],
        "min_ms": samples[0],
        "repeats": repeats,
        "warmup": warmup,
    }


def environment() -> dict[str, Any]:
    """Device, library versions and commit for a record."""
    import numpy
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": gpu or f"cpu: {cpu}",
        "device_tag": (gpu or "cpu").lower().replace(" ", "-"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_driver": torch.version.cuda if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "commit": commit,
        "dirty_tree": dirty,
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_record(name: str, results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``{"benchmark", "environment", "results"}`` to ``results/<device_tag>/<name>.json`` atomically."""
    env = environment()
    out_dir = out_dir or RESULTS / env["device_tag"].split(":")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    write_json_atomic(path, {"benchmark": name, "environment": env, "results": results})
    return path
