"""Open the face model and the inference backend the runtime CLIs need, with clear errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import warnings
from typing import Any, Callable, Iterator

from mlanet.errors import MLANetError
from mlanet.fileutil import os_error_message

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
    g.add_argument("--backend", default="auto", choices=("auto", "torch", "onnxruntime"),
                   help="what runs a .safetensors checkpoint on the CPU: auto (default) = ONNX Runtime through a "
                   "one-time export cached in the asset home (2-3x faster than PyTorch), or PyTorch when "
                   "onnxruntime is not installed; torch; onnxruntime. Threads follow one plan for the process "
                   "(MLANET_THREADS=N limits the cores)")
    g.add_argument("--mirror-average", action="store_true",
                   help="average each face's expression weights and pose with those of its left-right mirror image "
                   "(one batch of twice the faces: the network's time per face doubles); they then do not depend on "
                   "which way the face is turned. Identity, albedo and light stay the single pass's")


def open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(backend, face_model)`` from the parsed model arguments; with ``args.mirror_average`` the backend
    is wrapped in :class:`~mlanet.edge.mirror_average.MirrorAveragedBackend`.

    Raises:
        MLANetError: no weights given and none shipped; unreadable or mismatched artifacts
            (messages name the file and say what to do); mirror averaging with a PCA-expression face model.
    """
    backend, face_model = _open_model(args)
    if getattr(args, "mirror_average", False):
        from mlanet.edge.mirror_average import MirrorAveragedBackend

        try:
            backend = MirrorAveragedBackend(backend, face_model)
        except MLANetError:
            backend.close()
            raise
    return backend, face_model


def _open_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """``(backend, face_model)`` from the parsed model arguments, single pass.

    Raises:
        MLANetError: no weights given and none shipped; unreadable or mismatched artifacts
            (messages name the file and say what to do).
    """
    from mlanet.weights import default_weights_path
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.backends import TorchBackend, parse_device
    from mlanet.edge.runtime_backend import open_runtime_backend
    from mlanet.edge.thread_plan import plan_threads

    if args.weights and args.untrained:
        raise MLANetError("give either --weights or --untrained, not both")
    device = getattr(args, "device", "cpu") or "cpu"
    kind, index = parse_device(device)  # an unknown device fails before the face model is read
    face_model = MorphableModel.load(args.face_model)
    if args.untrained:
        from mlanet.models.registry import list_models

        if args.untrained not in list_models():
            raise MLANetError(f"--untrained {args.untrained}: unknown model; known: {', '.join(list_models())}")
        if kind == "cuda":
            from mlanet.edge.backends import torch_cuda

            return torch_cuda.TorchCudaBackend.untrained(args.untrained, face_model, device="cuda" if index is None else index,
                                              cuda_graphs=True), face_model
        plan = plan_threads("torch")
        plan.apply()
        backend = TorchBackend.untrained(args.untrained, face_model)
        backend.metadata = backend.metadata.with_runtime(thread_plan=plan.to_dict())
        return backend, face_model
    weights = args.weights or default_weights_path(DEFAULT_MODEL)
    if weights is None:
        raise MLANetError(
            f"this install has no shipped {DEFAULT_MODEL} weights (mlanet/weights/). Pass --weights FILE (a checkpoint "
            "or run folder from `mlanet train`, or an .onnx from `mlanet export onnx`), or --untrained "
            f"{DEFAULT_MODEL} to run the pipeline with an untrained network (faces are fitted as the mean face)"
        )
    if not args.weights:
        announce_shipped_weights(weights)
    return open_runtime_backend(weights, face_model, device=device, backend=getattr(args, "backend", "auto") or "auto"), \
        face_model


def announce_shipped_weights(path: Any) -> None:
    """Say on stderr which shipped weights run and their terms (once per command)."""
    from mlanet.weights.pack import release_info

    notice = (release_info(path) or {}).get("notice")
    print(f"using the shipped weights {path}" + (f" ({notice})" if notice else ""), file=sys.stderr)


def run_cli(prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int],
            argv: list[str] | None) -> int:
    """Parse ``argv``, call ``run(args)``; an :class:`MLANetError` or :class:`OSError` (a path, a
    permission, a full disk) becomes one line ``prog: error: ...`` and exit code 2.

    Without ``args.verbose`` the warnings third-party code raises (protobuf deprecations in
    MediaPipe) are not shown; see also :func:`open_detector`.
    """
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            if not getattr(args, "verbose", False):
                warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated",
                                        category=UserWarning)
            return run(args)
    except MLANetError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{prog}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


def add_verbose_argument(parser: argparse._ActionsContainer) -> None:  # a parser or one of its argument groups
    """``--verbose``: show what MediaPipe's native libraries (TFLite, absl) log, and library warnings."""
    parser.add_argument("--verbose", action="store_true",
                        help="show the log lines of MediaPipe's native libraries (TFLite, absl) and library warnings")


@contextlib.contextmanager
def native_stderr_quiet(enabled: bool = True) -> Iterator[None]:
    """Point the stderr file descriptor at /dev/null while the block runs (``enabled``).

    Native libraries (MediaPipe's TFLite and absl) write their log lines straight to file
    descriptor 2, past Python; environment variables such as ``GLOG_minloglevel`` do not reach
    them in mediapipe 0.10.14. Anything Python writes to ``sys.stderr`` inside the block is lost
    too, so keep the block to the native call; an exception propagates after fd 2 is restored.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to quieten
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def open_detector(model: str, verbose: bool = False) -> Any:
    """A started :class:`~mlanet.edge.face_detection.MediaPipeFaceDetector`, quietly unless ``verbose``.

    MediaPipe starts its graph's calculators on worker threads when the detector is created and
    runs them on the first image; TFLite and absl print their start-up lines ("Created
    TensorFlow Lite XNNPACK delegate", "All log messages before absl::InitializeLog()", a
    feedback-manager warning) somewhere in between, on every run. Both steps run inside
    :func:`native_stderr_quiet` (the first image is a blank one).
    """
    import numpy as np

    from mlanet.edge.face_detection import MediaPipeFaceDetector

    with native_stderr_quiet(not verbose):
        detector = MediaPipeFaceDetector(model=model)
        detector(np.zeros((64, 64, 3), np.uint8))
    return detector


# ---------------------------------------------------------------------- argparse value types
# argparse turns an ArgumentTypeError into "prog: error: argument --x: <message>" and exit code 2.

def positive_int(text: str) -> int:
    """An ``int >= 1`` (argparse ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    """An ``int >= 0`` (argparse ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def float_in(lo: float, hi: float, *, lo_open: bool = False, unit: str = "") -> Callable[[str], float]:
    """argparse ``type=`` for a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``); ``hi`` may be inf."""
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{']' if math.isfinite(hi) else ')'}{unit}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return value

    parse.__name__ = "float"
    return parse
