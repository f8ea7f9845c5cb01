"""The interfaces at the edge runtime's stage boundaries, as :class:`typing.Protocol` classes.

What :class:`~mlanet.edge.pipeline.FacePipeline` and the output writers' callers need from the objects they
are handed, so mypy (``tools/typecheck.py``, run in CI) checks every call across a boundary, and a class that
stops matching (a method renamed, a return type changed) fails the type check and ``tests/test_protocols.py``:

* the inference backend: :class:`mlanet.edge.backends.base.InferenceBackend` (defined with the backends,
  re-exported here);
* :class:`DeviceInferenceBackend`: a backend whose results can stay on its device (``run_device``), what
  the GPU mode of the pipeline needs (:class:`mlanet.edge.backends.torch_cuda.TorchCudaBackend`, and
  :class:`mlanet.edge.backends.TorchBackend` for the same code on CPU tensors);
* :class:`FaceTrackerLike`: the tracker (:class:`mlanet.edge.tracking.FaceTracker`; tests pass fakes);
* :class:`FaceDecoderLike`: parameters -> landmarks and meshes (:class:`mlanet.edge.reconstruct.FaceDecoder`);
* :class:`FrameWriter`: a writer of whole frames (:class:`mlanet.edge.writers.video.H264VideoWriter`);
* :class:`TrackSequenceWriter`: a writer of one face track's meshes over time
  (:class:`mlanet.edge.writers.mesh_sequence.MeshSequenceWriter`).

Every protocol is ``runtime_checkable``: ``isinstance`` checks that the members exist (not their signatures;
mypy checks those). Nothing heavy is imported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from mlanet.edge.backends.base import InferenceBackend
from mlanet.edge.types import Frame, TrackROI

if TYPE_CHECKING:
    import os

    import torch

    from mlanet.geometry.camera import PinholeCamera
    from mlanet.edge.reconstruct import DecodedFaces

__all__ = ["InferenceBackend", "DeviceInferenceBackend", "FaceTrackerLike", "FaceDecoderLike", "OutputWriter", "FrameWriter", "TrackSequenceWriter"]


@runtime_checkable
class DeviceInferenceBackend(InferenceBackend, Protocol):
    """An :class:`InferenceBackend` that can also leave its results on its device.

    ``run_device(images)`` takes (B, 3, S, S) float crops already on :attr:`device` (a torch tensor) and
    returns (B, P) float32 parameters there, queued on the current stream with no host synchronisation.
    """

    device: torch.device

    def run_device(self, images: Any) -> Any: ...


@runtime_checkable
class FaceTrackerLike(Protocol):
    """What :class:`~mlanet.edge.pipeline.FacePipeline` calls on its tracker, in this order per frame.

    ``reset()`` (before an independent still: forget every track) -> ``begin(frame)`` (the ROIs to crop) ->
    ``end(fits)`` (each track's unfiltered 2D landmarks, or None for a failed fit, by track id);
    ``last_detected`` / ``last_scene_cut`` describe the latest ``begin``; ``close()`` releases the detector.
    Optional, read with ``getattr``: ``track_ids`` (ids alive after ``end``) and ``detector`` (warmed up by
    :meth:`FacePipeline.warmup`).
    """

    last_detected: bool
    last_scene_cut: bool

    def begin(self, frame: Frame) -> Sequence[TrackROI]: ...

    def end(self, fits: Mapping[int, np.ndarray | None]) -> None: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class FaceDecoderLike(Protocol):
    """Flat frame-camera parameters ``(N, P)`` -> what the reconstruct and mesh stages need."""

    def landmarks2d(self, flat: np.ndarray | torch.Tensor, camera: PinholeCamera, *,
                    intrinsics: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """``(N, 68, 2)`` float32 image pixels (no full mesh); ``intrinsics``: the camera's ``(fx, fy, cx,
        cy)`` floats when the caller keeps them."""
        ...

    device: torch.device

    def __call__(self, flat: np.ndarray | torch.Tensor, camera: PinholeCamera) -> DecodedFaces:
        """Full meshes: ``vertices (N, V, 3)``, ``landmarks2d (N, 68, 2)``, ``albedo (N, V, 3)``."""
        ...

    def mesh(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whole mesh and albedo in NumPy (CPU): ``(N, V, 3)`` metres, ``(N, V, 3)`` in [0, 1]."""
        ...

    def mesh_rows(self, flat: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Only the vertex ``rows`` (K,): ``(N, K, 3)`` metres and ``(N, K, 3)`` albedo."""
        ...


@runtime_checkable
class OutputWriter(Protocol):
    """A file written atomically: ``close()`` publishes it (returns its path, None if nothing was written),
    ``abort()`` discards it."""

    def close(self) -> Path | None: ...

    def abort(self) -> None: ...


@runtime_checkable
class FrameWriter(OutputWriter, Protocol):
    """Whole RGB frames ``(H, W, 3) uint8`` in order (a video). ``resume_from(existing, n)`` keeps the first
    ``n`` frames of an earlier file; ``settings`` is what the encoder runs with (for run records)."""

    path: Path
    width: int
    height: int
    n_written: int

    @property
    def settings(self) -> dict[str, Any]: ...

    def write(self, rgb: np.ndarray, *, base_yuv420: np.ndarray | None = None,
              changed_box: tuple[int, int, int, int] | None = None) -> None: ...

    def resume_from(self, existing: str | os.PathLike[str], n_frames: int) -> None: ...


@runtime_checkable
class TrackSequenceWriter(OutputWriter, Protocol):
    """One face track's vertices ``(V, 3)`` over time, one ``add`` per written frame (increasing frames).
    ``resume_from(before_frame)`` keeps an earlier run's frames before ``before_frame`` (returns how many);
    ``truncate_from(frame)`` drops frames from ``frame`` on."""

    path: Path

    @property
    def n_frames(self) -> int: ...

    def add(self, frame: int, time_s: float, vertices: np.ndarray) -> None: ...

    def resume_from(self, before_frame: int) -> int: ...

    def truncate_from(self, frame: int) -> None: ...
