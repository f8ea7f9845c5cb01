"""Which network the runtime benchmarks run: the weights a user runs, or an untrained architecture.

``mlanet bench pipeline``, ``soak`` and ``compare`` time the whole runtime, whose cost depends on the
faces the network fits (the tracker's boxes, the overlay's area, the detector's re-detections), so by
default they run the shipped ``mlanet_mobile`` weights the way ``mlanet-video`` does
(:func:`mlanet.edge.runtime_backend.open_runtime_backend`: the cached ONNX export, the runtime's thread
plan). ``--weights FILE`` times other weights; ``--untrained MODEL`` an untrained registered network
(the speed of a new architecture before it is trained; its faces are not real ones).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mlanet.errors import MLANetError


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """``--weights FILE`` | ``--untrained MODEL`` (mutually exclusive)."""
    which = p.add_mutually_exclusive_group()
    which.add_argument("--weights", type=Path, default=None,
                       help="the network to run: a checkpoint, run folder or .onnx, opened as mlanet-video opens it "
                            "(default: the shipped mlanet_mobile weights)")
    which.add_argument("--untrained", metavar="MODEL", default=None,
                       help="an untrained registered network instead (a new architecture's speed; its faces are "
                            "not real, so the tracker and the overlay see other faces than a user's)")


def check_network_arguments(args: argparse.Namespace) -> None:
    """Fail early (before clips and face models are read) on an unknown ``--untrained`` model or missing weights."""
    from mlanet.edge.loading import DEFAULT_MODEL
    from mlanet.models.registry import list_models
    from mlanet.weights import default_weights_path

    untrained = getattr(args, "untrained", None)
    if untrained:
        if untrained not in list_models():
            raise MLANetError(f"--untrained {untrained}: unknown model; known: {', '.join(list_models())}")
    elif getattr(args, "weights", None) is None and default_weights_path(DEFAULT_MODEL) is None:
        raise MLANetError(f"this install has no shipped {DEFAULT_MODEL} weights: pass --weights FILE, or --untrained "
                          f"{DEFAULT_MODEL} to time an untrained network")


def open_network(args: argparse.Namespace, face_model: Any, tmp: Path, backend: str = "onnxruntime"
                 ) -> tuple[Any, dict[str, Any]]:
    """The backend the benchmark runs, under the runtime's thread plan (``metadata.runtime["thread_plan"]``),
    and a description of its weights for the record (``{"file", "shipped"}`` or ``{"untrained"}``).

    Args:
        args: parsed :func:`add_network_arguments` arguments.
        face_model: the MorphableModel.
        tmp: a folder for an untrained network's ONNX export.
        backend: ``"onnxruntime"`` or ``"torch"`` (the CPU runtime's backends).
    """
    from mlanet.edge.loading import DEFAULT_MODEL
    from mlanet.weights import default_weights_path

    check_network_arguments(args)
    untrained = getattr(args, "untrained", None)
    if untrained:
        from mlanet.edge.backends import TorchBackend, open_backend
        from mlanet.edge.thread_plan import plan_threads

        plan = plan_threads(backend)
        plan.apply()
        if backend == "torch":
            opened = TorchBackend.untrained(untrained, face_model)
        else:
            from mlanet.export.onnx_export import export_onnx
            from mlanet.models.registry import create_model

            path = export_onnx(create_model(untrained, face_model=face_model).eval(), face_model,
                               tmp / f"{untrained}.onnx")
            opened = open_backend(path, face_model, device="cpu", intra_op_threads=plan.network)
        opened.metadata = opened.metadata.with_runtime(thread_plan=plan.to_dict())
        return opened, {"untrained": untrained}
    from mlanet.edge.runtime_backend import open_runtime_backend

    weights = getattr(args, "weights", None) or default_weights_path(DEFAULT_MODEL)
    opened = open_runtime_backend(weights, face_model, device="cpu", backend=backend)
    return opened, {"file": Path(weights).name, "shipped": getattr(args, "weights", None) is None}
