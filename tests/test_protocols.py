"""The real stage classes satisfy the stage-boundary Protocols of :mod:`mlanet.edge.protocols`.

``isinstance`` with a ``runtime_checkable`` Protocol checks that every member exists, so renaming a method
of the tracker, the decoder or a writer (or dropping one from the Protocol's implementer) fails here as well
as in the type check (``tools/typecheck.py``, which also checks the signatures). The objects are real
instances built on small inputs (a synthetic face model, files in ``tmp_path``).
"""

import inspect

import numpy as np
import pytest

from mlanet.edge import protocols
from mlanet.edge.protocols import (FaceDecoderLike, FaceTrackerLike, FrameWriter, InferenceBackend, OutputWriter,
                                   TrackSequenceWriter)


def test_the_tracker_is_a_face_tracker():
    from mlanet.edge.tracking import FaceTracker, TrackerCfg

    tracker = FaceTracker(TrackerCfg(), lambda image: [])
    assert isinstance(tracker, FaceTrackerLike)
    tracker.close()


def test_the_decoder_is_a_face_decoder(synthetic_model):
    from mlanet.edge.reconstruct import FaceDecoder

    assert isinstance(FaceDecoder(synthetic_model), FaceDecoderLike)


def test_the_video_writer_is_a_frame_writer(tmp_path):
    pytest.importorskip("av")
    from mlanet.edge.writers.video import H264VideoWriter

    w = H264VideoWriter(tmp_path / "v.mp4", 25.0, 32, 24)
    try:
        assert isinstance(w, FrameWriter) and isinstance(w, OutputWriter)
        assert not isinstance(w, TrackSequenceWriter)  # no add(): the two writer kinds are told apart
    finally:
        w.abort()


def test_the_mesh_sequence_writer_is_a_track_sequence_writer(tmp_path):
    from mlanet.edge.writers.mesh_sequence import MeshSequenceWriter

    w = MeshSequenceWriter(tmp_path / "track_000.mlmesh.npz", triangles=np.array([[0, 1, 2]]), n_vertices=3)
    try:
        assert isinstance(w, TrackSequenceWriter) and isinstance(w, OutputWriter)
        assert not isinstance(w, FrameWriter)
    finally:
        w.abort()


def test_the_cpu_backend_is_an_inference_backend():
    from mlanet.edge.backends import OnnxRuntimeBackend, TensorRTBackend, TorchBackend, TorchCudaBackend

    # Class-level check (opening one needs an artifact): every protocol method is defined on each backend.
    for cls in (TorchBackend, OnnxRuntimeBackend, TensorRTBackend, TorchCudaBackend):
        for name in ("__call__", "warmup", "close"):
            assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {name}()"


def test_a_class_without_a_protocol_method_is_refused():
    class NoBegin:  # FaceTracker with begin() renamed
        last_detected = last_scene_cut = False

        def begin_frame(self, frame): ...

        def end(self, fits): ...

        def reset(self): ...

        def close(self): ...

    assert not isinstance(NoBegin(), FaceTrackerLike)


def test_every_protocol_is_runtime_checkable_and_exported():
    for name in protocols.__all__:
        proto = getattr(protocols, name)
        assert inspect.isclass(proto) and getattr(proto, "_is_runtime_protocol", False), name
    assert InferenceBackend.__module__ == "mlanet.edge.backends.base"  # re-exported, not redefined
