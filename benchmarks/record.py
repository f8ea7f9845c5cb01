"""Timing statistics and self-describing JSON records for every benchmark.

Record schema (``SCHEMA`` = ``"mlanet-bench/1"``), one JSON file per benchmark under
``<results>/<device_tag>/<name>.json``::

    {
      "schema": "mlanet-bench/1",
      "benchmark": "<name>",                 # model_latency, pipeline, compare, accuracy, soak, ...
      "environment": {                       # see environment()
        "device", "device_tag", "cpu", "cpu_count", "torch_threads", "gpu", "gpu_driver", "cuda",
        "python", "platform", "versions": {package: version}, "commit", "dirty_tree", "command",
        "time_utc"
      },
      "results": {...}                       # benchmark-specific; times in ms, rates per second,
    }                                        # memory in MiB; medians after warm-up, p95 alongside

``<results>`` is ``benchmarks/results`` of the checkout this package runs from (when it runs
from a source checkout), else ``./mlanet-bench-results``; ``--out`` overrides it.
"""

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

SCHEMA = "mlanet-bench/1"

_CHECKOUT_RESULTS = Path(__file__).resolve().parent / "results"
#: Default results folder: the checkout's benchmarks/results, or ./mlanet-bench-results for an installed package.
RESULTS = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path("mlanet-bench-results")

#: Packages whose versions every record carries (those installed).
VERSIONED = ("mlanet", "torch", "numpy", "onnxruntime", "onnx", "mediapipe", "opencv-contrib-python", "av",
             "moderngl", "tensorrt", "pycuda")


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


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _gpu_driver() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def load_average_1min() -> float | None:
    """The 1-minute load average (None where the OS has none): above the core count, other work competed."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def environment() -> dict[str, Any]:
    """Device, driver, library versions, commit and command line for a record."""
    import torch

    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        # Changes to tracked files other than the benchmark results themselves (records written earlier in
        # the same session must not mark the next record as measured on modified code).
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                     ".", ":(exclude)benchmarks/results"],
                                    capture_output=True, text=True).stdout.strip())
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
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": gpu,
        "gpu_driver": _gpu_driver() if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": _versions(),
        # kept at the top level too, for records written before the versions map existed
        "torch": torch.__version__,
        "commit": commit,
        "dirty_tree": dirty,
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def record_dir(root: Path | str | None = None) -> Path:
    """The folder :func:`write_record` puts records in for results root ``root``: ``<root>/<device_tag>/``.

    ``root`` defaults to :data:`RESULTS`; benchmark CLIs pass their ``--out`` here and the result as
    ``write_record(..., out_dir=record_dir(args.out))``.
    """
    return Path(root if root is not None else RESULTS) / environment()["device_tag"].split(":")[0]


def write_record(name: str, results: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``{"benchmark", "environment", "results"}`` to ``results/<device_tag>/<name>.json`` atomically."""
    env = environment()
    out_dir = out_dir or RESULTS / env["device_tag"].split(":")[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    write_json_atomic(path, {"schema": SCHEMA, "benchmark": name, "environment": env, "results": results})
    return path
