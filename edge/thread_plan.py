"""One thread plan for a runtime process: how many threads each stage may use.

The runtime's stages (frame decode, face tracking, the network, reconstruction, the GL overlay
and the H.264 encoder) run one after another per frame in one loop, each with its own thread
pool: PyTorch/OpenMP, ONNX Runtime, OpenCV, Mesa's llvmpipe and libx264 (which keeps its own
frame-threading default). Left alone, each pool
sizes itself to every core, and idle OpenMP threads spin after their work: on a 2-core machine
the network on PyTorch with 2 threads took 43 s for the Obama clip's 55 frames with
multi-second stalls, 9 s with one thread. The plan gives:

* ``network``: ONNX Runtime intra-op threads (spinning only while a run is in flight, :func:`~mlanet.edge.backends.ort_session_options`)
  or PyTorch threads when PyTorch runs the network;
* ``torch``: PyTorch threads for everything else (decoding parameters, filters, reconstruction
  are small tensors: one thread);
* ``opencv``: OpenCV's pool (colour conversion, resizing);
* ``blas``: NumPy's BLAS (OpenBLAS) pool, through threadpoolctl: the mesh and landmark products of
  one or a few faces are matrix-vector products that two threads only slow down (and, on a busy
  2-core machine, stall for milliseconds waiting for each other);
* ``gl``: llvmpipe rasteriser threads (``LP_NUM_THREADS``; only software GL; read when the GL
  context is created, so :meth:`ThreadPlan.apply` must run before it).

Stages run in sequence, so each may use every core while it runs; what the plan prevents is
pools that spin or oversubscribe while another stage works. Three things overlap the loop on
purpose: frame decoding (PyAV's thread), the encoder's frame threads, and the tracker's scheduled
re-detections (one worker thread running MediaPipe's detector while the frame is fitted, see
:mod:`mlanet.edge.tracking`): each replaces time the loop would otherwise wait. :func:`plan_threads` gives the
defaults; ``MLANET_THREADS`` (an integer) overrides the core count the plan is made for.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

#: Environment variable: the number of cores the runtime may use (default: all usable cores).
THREADS_ENV = "MLANET_THREADS"


@dataclass(frozen=True)
class ThreadPlan:
    """Threads per stage (see the module docstring); every field >= 1."""

    cores: int
    network: int
    torch: int
    opencv: int
    gl: int
    network_backend: str
    blas: int = 1

    def __post_init__(self) -> None:
        for name in ("cores", "network", "torch", "opencv", "gl", "blas"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ThreadPlan.{name} must be a positive integer, got {v!r}")

    def apply(self) -> None:
        """Set PyTorch's, OpenCV's and NumPy's BLAS pools and llvmpipe's thread count for this process.

        ``LP_NUM_THREADS`` is only set when the environment does not set it already (a user's
        choice wins) and takes effect for GL contexts created afterwards.
        """
        import torch

        if torch.get_num_threads() != self.torch:
            torch.set_num_threads(self.torch)
        try:
            import cv2

            cv2.setNumThreads(self.opencv)
        except ImportError:  # OpenCV is optional for the pure-PyTorch paths
            pass
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=self.blas, user_api="blas")  # stays in force for the process
        except ImportError:  # the edge extra brings it; without it NumPy keeps its own pool size
            logging.getLogger(__name__).warning(
                "threadpoolctl is not installed (pip install 'mlanet[edge]'): NumPy's BLAS keeps one thread "
                "per core, which slows the per-frame mesh products on a busy machine")
        os.environ.setdefault("LP_NUM_THREADS", str(self.gl))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_cores() -> int:
    """Cores this process may run on (``MLANET_THREADS`` if set, else the CPU affinity mask)."""
    env = os.environ.get(THREADS_ENV)
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            from mlanet.errors import MLANetError

            raise MLANetError(f"{THREADS_ENV}={env!r}: must be a positive integer (the cores the runtime may use)")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def plan_threads(network_backend: str, cores: int | None = None) -> ThreadPlan:
    """The default plan for ``cores`` (default :func:`usable_cores`) when ``network_backend``
    (``"onnxruntime"``, ``"torch"`` or ``"gpu"``) runs the network.

    ONNX Runtime runs the network on up to 4 cores (its pool does not spin between runs); PyTorch
    on the CPU gets one core fewer than the machine has (its OpenMP threads spin after each run
    and starve the next stage; on 2 cores that is 1 thread); a GPU backend needs one CPU thread.
    Everything else is small per frame and runs on one PyTorch and one OpenCV thread; llvmpipe
    may use every core (it runs while the network's pool is idle).
    """
    if network_backend not in ("onnxruntime", "torch", "gpu"):
        raise ValueError(f"network_backend must be onnxruntime, torch or gpu, got {network_backend!r}")
    n = usable_cores() if cores is None else int(cores)
    if n < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    if network_backend == "onnxruntime":
        network = min(n, 4)
    elif network_backend == "torch":
        network = max(1, min(n - 1, 4))
    else:
        network = 1
    torch_threads = network if network_backend == "torch" else 1
    return ThreadPlan(cores=n, network=network, torch=torch_threads, opencv=1, gl=n, network_backend=network_backend)
