"""Timing statistics and self-describing JSON records for every benchmark.

Record schema (``SCHEMA`` = ``"mlanet-bench/1"``), one JSON file per benchmark under
``<results>/<device_tag>/<name>.json``::

    {
      "schema": "mlanet-bench/1",
      "benchmark": "<name>",                 # model_latency, pipeline, compare, accuracy, soak, ...
      "environment": {                       # mlanet.run_environment.environment()
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

import statistics
import time
from pathlib import Path
from typing import Any, Callable

from mlanet.fileutil import write_json_atomic
from mlanet.run_environment import environment

SCHEMA = "mlanet-bench/1"

_CHECKOUT_RESULTS = Path(__file__).resolve().parent / "results"
#: Default results folder: the checkout's benchmarks/results, or ./mlanet-bench-results for an installed package
#: (the records are not package files).
RESULTS = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path("mlanet-bench-results")


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
