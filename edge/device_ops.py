"""What the streaming loop needs from a device: streams, events, pinned host and device buffers, async copies.

* :class:`DeviceOps` -- the protocol the GPU mode of :class:`~mlanet.edge.pipeline.FacePipeline`
  (:class:`~mlanet.edge.device_path.DeviceFaceStage`) is written against.
* :class:`TorchCudaOps` -- PyTorch CUDA streams and events, pinned memory, ``non_blocking`` copies.
  UNTESTED ON A GPU (written on a machine without one; gpu tests in tests/test_pipeline_gpu_mode.py).
* :class:`SyncCpuOps` -- the same operations on the CPU, executed at once (an event is complete
  when recorded): the device mode's code on CPU tensors, what the CPU tests run.

Allocator rule (PyTorch's caching allocator): a tensor used on another stream than the one it
was allocated on gets :meth:`DeviceOps.record_stream` for that stream, so its memory is not
handed out again before that stream's work on it is done. :mod:`mlanet.edge.device_path` says
which tensors cross streams.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Protocol, runtime_checkable

import torch

from mlanet.errors import MLANetError
from mlanet.edge.gpu_crops import normalize_device, require_cuda


# ========================================================================================= device operations
@runtime_checkable
class DeviceOps(Protocol):
    """What the device mode needs from a device: streams, events, pinned memory, async copies.

    ``label`` arguments (``(name, frame_index)``) only name operations for profilers.
    """

    device: torch.device

    def new_stream(self, name: str = "") -> Any:
        """A new stream (work on different streams may overlap)."""

    def new_event(self, label: tuple[str, int] | None = None) -> Any:
        """A new event (records a point in a stream's work)."""

    def record(self, event: Any, stream: Any) -> None:
        """``event`` completes when the work queued on ``stream`` so far has finished."""

    def wait(self, stream: Any, event: Any) -> None:
        """Work queued on ``stream`` from now on starts after ``event`` (no host block)."""

    def synchronize(self, event: Any) -> None:
        """Block the host until ``event`` has completed."""

    def elapsed_ms(self, start: Any, end: Any) -> float | None:
        """Milliseconds between two completed events; None when this device does not time events."""

    def pinned_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised host buffer that asynchronous copies can use (page-locked on CUDA)."""

    def device_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised buffer on :attr:`device` (allocated on the host's current stream)."""

    def upload(self, host: torch.Tensor, stream: Any, *, out: torch.Tensor | None = None,
               label: tuple[str, int] | None = None) -> torch.Tensor:
        """Asynchronous H2D copy of ``host`` on ``stream`` into ``out`` (or a new tensor allocated on ``stream``)."""

    def download(self, device_tensor: torch.Tensor, host: torch.Tensor, stream: Any, *,
                 label: tuple[str, int] | None = None) -> None:
        """Asynchronous D2H copy of ``device_tensor`` into the pinned ``host`` buffer on ``stream``."""

    def on(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        """Context in which PyTorch's work (kernels, allocations) goes to ``stream``."""

    def record_stream(self, tensor: torch.Tensor, stream: Any) -> None:
        """Tell the allocator that ``tensor`` is used on ``stream`` (see the module docstring)."""


class _CpuStream:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"CpuStream({self.name!r})"


class _CpuEvent:
    def __init__(self, label: tuple[str, int] | None) -> None:
        self.label = label
        self.t_ns: int | None = None
        self.stream: _CpuStream | None = None

    def __repr__(self) -> str:
        return f"CpuEvent({self.label!r}, recorded={self.t_ns is not None})"


class SyncCpuOps:
    """:class:`DeviceOps` on the CPU: every operation runs when issued, an event completes when recorded.

    The streams do not overlap, so the device mode runs its schedule sequentially; the numbers are
    those the GPU should produce (up to its floating-point precision).
    """

    device = torch.device("cpu")

    def new_stream(self, name: str = "") -> _CpuStream:
        return _CpuStream(name)

    def new_event(self, label: tuple[str, int] | None = None) -> _CpuEvent:
        return _CpuEvent(label)

    def record(self, event: _CpuEvent, stream: _CpuStream) -> None:
        event.t_ns, event.stream = time.perf_counter_ns(), stream

    def _check_recorded(self, event: _CpuEvent, what: str) -> None:
        if not isinstance(event, _CpuEvent) or event.t_ns is None:
            raise MLANetError(f"SyncCpuOps.{what}: {event!r} was never recorded")

    def wait(self, stream: _CpuStream, event: _CpuEvent) -> None:
        self._check_recorded(event, "wait")

    def synchronize(self, event: _CpuEvent) -> None:
        self._check_recorded(event, "synchronize")

    def elapsed_ms(self, start: _CpuEvent, end: _CpuEvent) -> float | None:
        if start.t_ns is None or end.t_ns is None:
            return None
        return (end.t_ns - start.t_ns) / 1e6

    def pinned_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def device_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def upload(self, host: torch.Tensor, stream: _CpuStream, *, out: torch.Tensor | None = None,
               label: tuple[str, int] | None = None) -> torch.Tensor:
        if out is None:
            return host.clone()
        if out.shape != host.shape or out.dtype != host.dtype:
            raise ValueError(f"upload: out is {tuple(out.shape)} {out.dtype}, host {tuple(host.shape)} {host.dtype}")
        return out.copy_(host)

    def download(self, device_tensor: torch.Tensor, host: torch.Tensor, stream: _CpuStream, *,
                 label: tuple[str, int] | None = None) -> None:
        if host.shape != device_tensor.shape or host.dtype != device_tensor.dtype:
            raise ValueError(f"download: host buffer is {tuple(host.shape)} {host.dtype}, "
                             f"the tensor {tuple(device_tensor.shape)} {device_tensor.dtype}")
        host.copy_(device_tensor)

    def on(self, stream: _CpuStream) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def record_stream(self, tensor: torch.Tensor, stream: _CpuStream) -> None:
        return None


class TorchCudaOps:
    """:class:`DeviceOps` on a CUDA GPU through PyTorch: ``torch.cuda.Stream``/``Event``, pinned memory.

    UNTESTED ON A GPU (see the module docstring).

    Args:
        device: CUDA device (``"cuda"``, ``"cuda:1"``, an ordinal or a ``torch.device``).
        timing: events with ``enable_timing=True`` (:meth:`elapsed_ms` gives GPU milliseconds);
            False makes events a little cheaper and :meth:`elapsed_ms` return None.

    Raises:
        GpuUnavailableError: no CUDA GPU visible to PyTorch.
    """

    def __init__(self, device: Any = "cuda", *, timing: bool = True) -> None:
        require_cuda("TorchCudaOps")
        dev = normalize_device(device)
        if dev.type != "cuda":
            raise ValueError(f"TorchCudaOps needs a CUDA device, got {device!r}")
        self.device = dev
        self.timing = bool(timing)

    def new_stream(self, name: str = "") -> Any:
        return torch.cuda.Stream(device=self.device)

    def new_event(self, label: tuple[str, int] | None = None) -> Any:
        return torch.cuda.Event(enable_timing=self.timing)

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def synchronize(self, event: Any) -> None:
        event.synchronize()

    def elapsed_ms(self, start: Any, end: Any) -> float | None:
        return float(start.elapsed_time(end)) if self.timing else None

    def pinned_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def device_empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self.device)

    def upload(self, host: torch.Tensor, stream: Any, *, out: torch.Tensor | None = None,
               label: tuple[str, int] | None = None) -> torch.Tensor:
        with torch.cuda.stream(stream):
            if out is None:
                out = torch.empty(host.shape, dtype=host.dtype, device=self.device)  # allocated on `stream`
            out.copy_(host, non_blocking=True)
        return out

    def download(self, device_tensor: torch.Tensor, host: torch.Tensor, stream: Any, *,
                 label: tuple[str, int] | None = None) -> None:
        with torch.cuda.stream(stream):
            host.copy_(device_tensor, non_blocking=True)

    def on(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def record_stream(self, tensor: torch.Tensor, stream: Any) -> None:
        tensor.record_stream(stream)
