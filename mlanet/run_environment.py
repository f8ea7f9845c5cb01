"""The environment of one measured run: device, library versions, commit, command line, time, load.

Anything that records a measurement (the benchmarks' JSON records, ``mlanet eval expressions``) stores
:func:`environment` next to its numbers, so a number can be traced to the machine, the code and the
command that produced it. It sits in the core, below both the runtime (``mlanet.edge``) and the benchmarks
(``mlanet.benchmarks``), so each can use it without importing the other.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Packages whose versions every environment carries (those installed).
VERSIONED = ("mlanet", "torch", "numpy", "onnxruntime", "onnx", "mediapipe", "opencv-contrib-python", "av",
             "moderngl", "tensorrt", "pycuda")

#: The source checkout this package runs from (its git commit is recorded; an installed copy has none).
CHECKOUT = Path(__file__).resolve().parents[1]

#: Tracked paths whose changes do not make a tree "dirty": the benchmark records themselves (records written
#: earlier in the same session must not mark the next record as measured on modified code).
NOT_CODE = ("benchmarks/results",)


def load_average_1min() -> float | None:
    """The 1-minute load average (None where the OS has none): above the core count, other work competed."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def versions() -> dict[str, str]:
    """``{package: version}`` of the :data:`VERSIONED` packages that are installed."""
    from importlib import metadata

    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def command_line(argv: list[str] | None = None) -> str:
    """The command as a user would type it again.

    ``python -m mlanet.benchmarks.video_end_to_end --repeats 3`` for a module run with ``-m`` (``mlanet ...``
    for ``python -m mlanet.cli``), else the program's file name and its arguments (``mlanet bench model``,
    ``mlanet-video clip.mp4``).
    """
    argv = list(sys.argv if argv is None else argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", None)
    if name:
        name = name.removesuffix(".__main__")
        program = "mlanet" if name == "mlanet.cli" else f"python -m {name}"
    else:
        program = Path(argv[0]).name if argv else "python"
    return " ".join([program, *argv[1:]])


def _git_state(repo: Path) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout at ``repo``; ``(None, None)`` outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                     ".", *(f":(exclude){p}" for p in NOT_CODE)],
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, dirty


def _gpu_driver() -> str | None:
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None


def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def environment() -> dict[str, Any]:
    """Device, driver, library versions, commit and command line of this run (JSON-ready).

    Keys: ``device`` (the GPU's name, else ``cpu: <model>``), ``device_tag`` (its lower-case, dash-joined
    form: the folder records of this device go to), ``cpu``, ``cpu_count``, ``torch_threads``, ``gpu``,
    ``gpu_driver``, ``cuda``, ``python``, ``platform``, ``versions``, ``torch``, ``commit``, ``dirty_tree``
    (tracked files other than the records changed), ``command`` (:func:`command_line`) and ``time_utc``.
    """
    import torch

    commit, dirty = _git_state(CHECKOUT)
    cpu = _cpu_name()
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
        "versions": versions(),
        # kept at the top level too, for records written before the versions map existed
        "torch": torch.__version__,
        "commit": commit,
        "dirty_tree": dirty,
        "command": command_line(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
