"""Open the face model and the inference backend the runtime CLIs need, with clear errors."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable

from ..errors import MLANetError

#: The network used when neither --weights nor --untrained says otherwise.
DEFAULT_MODEL = "mlanet_mobile"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--weights``, ``--untrained`` and ``--face-model`` (shared by mlanet-video and mlanet-live)."""
    g = parser.add_argument_group("model")
    g.add_argument("--weights", help="a .safetensors checkpoint or training run folder (mlanet train), or an "
                   ".onnx file (mlanet export onnx), or a TensorRT .engine (mlanet export tensorrt); default: the "
                   "shipped weights of " + DEFAULT_MODEL)
    g.add_argument("--untrained", metavar="MODEL",
                   help="run an untrained network (e.g. mlanet_mobile) to exercise the pipeline; every face is "
                   "fitted as the mean face")
    g.add_argument("--face-model", metavar="FILE",
                   help="face-model file (default: the asset home's, built by `mlanet assets build`)")
    g.add_argument("--device", default="cpu", metavar="cpu|cuda|cuda:N",
                   help="where the network runs (default: cpu). cuda: a checkpoint runs in PyTorch FP16 with "
                   "CUDA-graph replay, an .onnx on ONNX Runtime's CUDA provider (onnxruntime-gpu), an .engine with "
                   "TensorRT; without a CUDA GPU this is an error, never a silent CPU run")


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(backend, face_model)`` from the parsed model arguments.

    Raises:
        MLANetError: no weights given and none shipped; unreadable or mismatched artifacts
            (messages name the file and say what to do).
    """
    from ..weights import default_weights_path
    from ..morphable.model import MorphableModel
    from .backends import TorchBackend, open_backend, parse_device

    if args.weights and args.untrained:
        raise MLANetError("give either --weights or --untrained, not both")
    device = getattr(args, "device", "cpu") or "cpu"
    kind, index = parse_device(device)  # an unknown device fails before the face model is read
    face_model = MorphableModel.load(args.face_model)
    if args.untrained:
        from ..models.registry import list_models

        if args.untrained not in list_models():
            raise MLANetError(f"--untrained {args.untrained}: unknown model; known: {', '.join(list_models())}")
        if kind == "cuda":
            from .torch_cuda_backend import TorchCudaBackend

            return TorchCudaBackend.untrained(args.untrained, face_model, device="cuda" if index is None else index,
                                              cuda_graphs=True), face_model
        return TorchBackend.untrained(args.untrained, face_model), face_model
    weights = args.weights or default_weights_path(DEFAULT_MODEL)
    if weights is None:
        raise MLANetError(
            f"this install has no shipped {DEFAULT_MODEL} weights (mlanet/weights/). Pass --weights FILE (a checkpoint "
            "or run folder from `mlanet train`, or an .onnx from `mlanet export onnx`), or --untrained "
            f"{DEFAULT_MODEL} to run the pipeline with an untrained network (faces are fitted as the mean face)"
        )
    if not args.weights:
        announce_shipped_weights(weights)
    return open_backend(weights, face_model=face_model, device=device), face_model


def announce_shipped_weights(path: Any) -> None:
    """Say on stderr which shipped weights run and their terms (once per command)."""
    from ..weights.pack import release_info

    notice = (release_info(path) or {}).get("notice")
    print(f"using the shipped weights {path}" + (f" ({notice})" if notice else ""), file=sys.stderr)


def run_cli(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: list[str] | None) -> int:
    """Parse ``argv``, call ``run(args)``; an :class:`MLANetError` becomes ``prog: error: ...`` and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except MLANetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
