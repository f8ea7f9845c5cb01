"""Turn a training checkpoint into shipped weights: FP16 safetensors with a ``release`` block.

``mlanet weights pack --weights RUN_DIR|FILE --out mlanet/weights/mlanet_mobile.safetensors
--stage RUN_DIR ...`` (see :mod:`mlanet.weights.cli`). Floating-point tensors are stored as
float16 (integers, e.g. BatchNorm's ``num_batches_tracked``, are kept); loading copies them
into the float32 network, so inference is float32 on weights rounded to FP16. The
``release`` block records what a user needs to judge the weights: the training runs (config,
steps, final validation metrics), the data and its terms, the commit and the packing date.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointMeta, load_weights, resolve_weights, save_weights
from ..fileutil import file_sha256

#: The data the default weights saw, with terms (see ../shared/README.md and the model card).
DEFAULT_DATA_TERMS = [
    {"source": "synthetic faces rendered from ICT-FaceKit", "use": "training (both stages)", "terms": "MIT"},
    {"source": "AFLW2000-3D dev split, train half (mlanet/data/splits/aflw2000_dev_train.txt, 99 images)",
     "use": "training, stage 2 (68-point ground truth, photometric)", "terms": "research use only"},
    {"source": "hamilton_360p_multiface.mp4, every 3rd frame with a MediaPipe face",
     "use": "training, stage 2 (MediaPipe pseudo-landmarks, photometric)", "terms": "research / demo use"},
]

RESEARCH_ONLY_NOTICE = (
    "research use only: trained on research-only images (AFLW2000-3D, a research/demo video); "
    "see mlanet/weights/MODEL_CARD.md"
)


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _stage_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Config, steps and final metrics of one training run folder."""
    run = Path(run_dir)
    info: dict[str, Any] = {"run": run.name}
    summary = run / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        info.update({"steps": s.get("step", -1) + 1, "stopped_by": s.get("stopped_by"),
                     "minutes": round(float(s.get("seconds", 0.0)) / 60.0, 1), "val": s.get("metrics")})
    config = run / "config.yaml"
    if config.is_file():
        info["config_yaml"] = config.read_text()
    return info


def pack_weights(weights: str | os.PathLike[str], out: str | os.PathLike[str],
                 stages: list[str] | None = None, data: list[dict[str, str]] | None = None,
                 notice: str = RESEARCH_ONLY_NOTICE) -> Path:
    """Write ``weights`` (checkpoint or run folder) as FP16 shipped weights to ``out`` (atomic).

    Args:
        weights: the final checkpoint (or its run folder).
        out: the ``.safetensors`` to write.
        stages: training run folders in order (e.g. stage 1, stage 2), summarised in ``release``.
        data: data sources with their use and terms (default :data:`DEFAULT_DATA_TERMS`).
        notice: the one-line terms notice commands print when they use these weights.
    """
    src = resolve_weights(weights)
    state, meta = load_weights(src)
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v) for k, v in state.items()}
    release = {
        "packed_from": {"file": src.name, "sha256": file_sha256(src)},
        "packed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
        "dtype": "float16",
        "stages": [_stage_summary(s) for s in (stages or [])],
        "data": data if data is not None else DEFAULT_DATA_TERMS,
        "notice": notice,
        "model_card": "mlanet/weights/MODEL_CARD.md",
    }
    extra = {k: v for k, v in meta.extra.items() if k != "release"}
    extra["release"] = release
    new_meta = CheckpointMeta(meta.model_name, meta.model_config, meta.layout, meta.preprocess, meta.face_model, extra)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_weights(out, half, new_meta)


def release_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``release`` block of shipped weights (``None`` for an ordinary checkpoint)."""
    from ..checkpoint import read_meta

    return read_meta(path).extra.get("release")


def rebind_weights(weights: str | os.PathLike[str], face_model: str | os.PathLike[str],
                   out: str | os.PathLike[str]) -> Path:
    """Record the decoder signature and tensor checksum in a checkpoint written before they existed.

    Older checkpoints name their face model only by the whole file's SHA-256, which changes with
    derived extras (the MediaPipe correspondence) from machine to machine. Given the very file the
    checkpoint was made with (its content checksum must match the recorded one), this writes the
    same tensors to ``out`` with that model's :meth:`~mlanet.morphable.model.MorphableModel.describe`
    (decoder signature, build recipe) and a tensor checksum; the ``extra`` block is kept and gets a
    ``rebound`` entry. A checkpoint that already has a decoder signature is checked against
    ``face_model`` and rewritten with a tensor checksum.

    Raises:
        AssetError: ``face_model`` is not the file the checkpoint was made with.
    """
    from ..errors import AssetError
    from ..morphable.decoder_identity import check_binding
    from ..morphable.model import MorphableModel

    src = resolve_weights(weights)
    state, meta = load_weights(src)
    face = MorphableModel.load(face_model)
    given = face.describe()
    stored = meta.face_model or {}
    if stored.get("decoder"):
        check_binding(str(src), stored, given)
    elif stored.get("model_id") != given["model_id"] or stored.get("content_sha256") != given["content_sha256"]:
        raise AssetError(
            f"{face_model}: not the face-model file {src} was made with (model {given['model_id']}, checksum "
            f"{str(given['content_sha256'])[:12]}... vs the checkpoint's {stored.get('model_id')}, "
            f"{str(stored.get('content_sha256'))[:12]}...); rebinding needs that very file"
        )
    extra = dict(meta.extra)
    extra["rebound"] = {
        "from_content_sha256": stored.get("content_sha256"),
        "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(),
    }
    new_meta = CheckpointMeta(meta.model_name, meta.model_config, meta.layout, meta.preprocess, given, extra)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return save_weights(out, state, new_meta)
