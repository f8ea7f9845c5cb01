"""Which backend runs the network in the runtime CLIs (``--backend``), and the ONNX cache behind the default.

On a CPU, ONNX Runtime runs MLANet's networks 2-3x faster than PyTorch at batch 1
(``benchmarks/results/cpu/model_latency.json``). So with ``--backend auto`` (the default) a
PyTorch checkpoint is exported to ONNX **once** and the export is kept in the asset home
(``<asset home>/onnx-cache/<model>-<key>.onnx``), keyed by the checkpoint's tensor checksum, the
face model's decoder signature and the exporter's versions: the same weights and face model
reuse the file, anything else exports anew. Every new export is checked against PyTorch on
random images before it is used (vertices within :data:`PARITY_MAX_MM`), and written atomically.

``--backend torch`` runs the checkpoint on PyTorch; ``--backend onnxruntime`` insists on ONNX
Runtime (an error, not a PyTorch run, when onnxruntime or onnx is missing). ``.onnx`` files
always run on ONNX Runtime and ``.engine`` files on TensorRT. On ``--device cuda`` the GPU paths
of :func:`mlanet.edge.backends.open_backend` apply and ``--backend`` must be ``auto``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from mlanet.errors import AssetError, MLANetError

logger = logging.getLogger(__name__)

#: ``--backend`` choices.
BACKEND_CHOICES = ("auto", "torch", "onnxruntime")
#: Largest vertex difference (mm) between PyTorch and a fresh ONNX export before it is used.
PARITY_MAX_MM = 0.05
#: Sub-folder of the asset home holding exported networks.
CACHE_DIRNAME = "onnx-cache"


def onnx_runtime_available() -> bool:
    """Whether both ``onnx`` (the exporter's checker) and ``onnxruntime`` are installed."""
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def onnx_cache_dir() -> Path:
    from mlanet.paths import asset_home

    return asset_home() / CACHE_DIRNAME


def onnx_cache_key(checkpoint: Path, face_model: Any, opset: int) -> str:
    """Hex key of the export of ``checkpoint`` for ``face_model`` (what makes two exports equal).

    Loads the checkpoint, which verifies its tensors against their recorded checksum, and checks
    that ``face_model`` decodes it: a damaged or edited file, or the wrong face model, is refused
    here rather than served from the cache.
    """
    import torch

    from mlanet.checkpoint import load_weights
    from mlanet.export.onnx_export import FORMAT_VERSION
    from mlanet.fileutil import file_sha256
    from mlanet.models.registry import check_checkpoint_binding, describe_face_model

    _, meta = load_weights(checkpoint)
    check_checkpoint_binding(checkpoint, meta, describe_face_model(face_model))
    body = {
        "tensors": meta.tensors_sha256 or file_sha256(checkpoint),
        "model": meta.model_name,
        "decoder": hashlib.sha256(json.dumps(face_model.decoder_signature, sort_keys=True).encode()).hexdigest(),
        "onnx_format": FORMAT_VERSION,
        "opset": int(opset),
        "torch": torch.__version__,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cached_onnx(checkpoint: str | os.PathLike[str], face_model: Any, *, opset: int = 17,
                say: Callable[[str], None] | None = None) -> Path:
    """The ONNX export of ``checkpoint`` (a ``.safetensors`` file or run folder) for ``face_model``,
    exported and parity-checked on first use, then read from the cache.

    Raises:
        AssetError: the cache folder cannot be written (names it and the alternatives), or the
            export differs from PyTorch by more than :data:`PARITY_MAX_MM`.
    """
    from mlanet.checkpoint import read_meta, resolve_weights
    from mlanet.fileutil import os_error_message

    say = say or (lambda msg: print(msg, file=sys.stderr))
    ckpt = resolve_weights(checkpoint)
    key = onnx_cache_key(ckpt, face_model, opset)
    name = read_meta(ckpt).model_name
    path = onnx_cache_dir() / f"{name}-{key[:20]}.onnx"
    if path.is_file():
        return path
    from mlanet.export.onnx_export import export_onnx, parity_report
    from mlanet.models.registry import create_model

    say(f"exporting {ckpt.name} to ONNX once for the fastest CPU backend (cached as {path}; "
        "--backend torch skips this)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AssetError(f"{path.parent}: cannot create the ONNX cache ({os_error_message(exc)}); set MLANET_HOME "
                         "to a writable folder or run with --backend torch") from None
    model = create_model(checkpoint=ckpt, face_model=face_model).eval()
    tmp = path.with_name(path.name + f".{os.getpid()}.part.onnx")
    try:
        export_onnx(model, face_model, tmp, opset=opset)
        # weights whose PyTorch output is already NaN/inf have no parity to check: the backend's
        # finite-output check stops the run at its first face, naming the weights
        worst = float(parity_report(ckpt, face_model, tmp, n=2)["vertex_mm"]["max"]) if _outputs_finite(model) else 0.0
        if not worst <= PARITY_MAX_MM:
            raise AssetError(f"{ckpt}: its ONNX export differs from PyTorch by {worst:.3g} mm (allowed "
                             f"{PARITY_MAX_MM} mm); run with --backend torch and report this")
        os.replace(tmp, path)
    except OSError as exc:
        raise AssetError(f"{path}: cannot write the ONNX cache ({os_error_message(exc)}); set MLANET_HOME to a "
                         "writable folder or run with --backend torch") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _outputs_finite(model: Any) -> bool:
    import torch

    s = int(model.preprocess.input_size)
    with torch.no_grad():
        return bool(torch.isfinite(model(torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0)))).all())


def open_runtime_backend(weights: str | os.PathLike[str], face_model: Any, *, device: str = "cpu",
                         backend: str = "auto", cores: int | None = None,
                         say: Callable[[str], None] | None = None) -> Any:
    """Open ``weights`` for the runtime with the backend ``backend`` selects (module docstring), and
    apply the process's thread plan (:func:`~mlanet.edge.thread_plan.plan_threads`) for it.

    Args:
        weights: ``.safetensors`` checkpoint, training run folder, ``.onnx`` or ``.engine``.
        face_model: the MorphableModel the weights must be bound to.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        backend: one of :data:`BACKEND_CHOICES`.
        cores: cores the plan is made for (default: the usable cores, or ``MLANET_THREADS``).
        say: where notices go (default stderr).

    Returns:
        An inference backend; ``metadata.runtime["backend"]`` names what runs the network and
        ``metadata.runtime["thread_plan"]`` the plan applied.

    Raises:
        MLANetError: an unknown or impossible choice (names the flag and the file).
    """
    from mlanet.edge.backends import open_backend, parse_device
    from mlanet.edge.thread_plan import plan_threads

    if backend not in BACKEND_CHOICES:
        raise MLANetError(f"--backend {backend}: choose one of {', '.join(BACKEND_CHOICES)}")
    say = say or (lambda msg: print(msg, file=sys.stderr))
    kind, _ = parse_device(device)
    path = Path(weights)
    suffix = ".safetensors" if path.is_dir() else path.suffix.lower()
    if kind != "cpu":
        if backend != "auto":
            raise MLANetError(f"--backend {backend} chooses a CPU runtime; with --device {device} the file's suffix "
                              "chooses the GPU runtime (leave --backend at auto)")
        plan = plan_threads("gpu", cores)
        plan.apply()
        b = open_backend(path, face_model=face_model, device=device)
    elif suffix == ".onnx":
        if backend == "torch":
            raise MLANetError(f"--backend torch: {path} is an ONNX file; give the .safetensors checkpoint to run "
                              "it on PyTorch")
        plan = plan_threads("onnxruntime", cores)
        plan.apply()
        b = open_backend(path, face_model=face_model, device="cpu", intra_op_threads=plan.network)
    elif suffix != ".safetensors" or backend == "torch" or (backend == "auto" and not onnx_runtime_available()):
        if suffix == ".safetensors" and backend == "auto":
            say("onnxruntime is not installed: the network runs on PyTorch (2-3x slower on a CPU; "
                "pip install 'mlanet[edge]' for the faster default)")
        plan = plan_threads("torch", cores)
        plan.apply()  # PyTorch runs the network on the process's pool, sized by the plan
        b = open_backend(path, face_model=face_model, device="cpu")  # an .engine here is refused with its reason
    else:
        if not onnx_runtime_available():
            raise MLANetError("--backend onnxruntime: onnxruntime and onnx are not both installed "
                              "(pip install 'mlanet[edge]')")
        plan = plan_threads("onnxruntime", cores)
        plan.apply()
        b = open_backend(cached_onnx(path, face_model, say=say), face_model=face_model, device="cpu",
                         intra_op_threads=plan.network)
        b.metadata = b.metadata.with_runtime(exported_from=str(path))
        setattr(b, "name", str(path))  # noqa: B010 - errors name the weights the user gave, not the cache file
    b.metadata = b.metadata.with_runtime(thread_plan=plan.to_dict())
    return b
