"""Checkpoints that describe themselves.

* **Weights** (``*.safetensors``): the model's state dict, plus one metadata entry ``"mlanet"``
  holding JSON: format and version, model name and resolved model config, the
  :class:`~mlanet.params.ParamLayout`, the :class:`~mlanet.preprocess.PreprocessCfg`, the face
  model's description (id, decoder signature; see :mod:`mlanet.morphable.decoder_identity`),
  ``tensors_sha256`` (a SHA-256 over every tensor's name, dtype, shape and bytes, verified on
  load, so a flipped bit in any tensor is refused) and free-form ``extra`` (training config,
  step, metrics). No pickle is involved; any user can load any checkpoint safely.
* **Training state** (``*.state.pt``, only for resuming): optimizer, scheduler, grad scaler,
  step, RNG states. Written with ``torch.save`` and read back with ``weights_only=True`` (a
  restricted unpickler that only rebuilds tensors and plain containers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError
from mlanet.fileutil import mkstemp_beside
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg

FORMAT_NAME = "mlanet-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "mlanet"

log = logging.getLogger(__name__)


@dataclass
class CheckpointMeta:
    """What a checkpoint says about itself."""

    model_name: str
    model_config: dict[str, Any]
    layout: ParamLayout
    preprocess: PreprocessCfg
    face_model: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    #: :func:`tensors_sha256` of the state dict (``None``: written before checksums existed).
    tensors_sha256: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "model_name": self.model_name,
                "model_config": self.model_config,
                "layout": self.layout.to_dict(),
                "preprocess": self.preprocess.to_dict(),
                "face_model": self.face_model,
                "extra": self.extra,
                "tensors_sha256": self.tensors_sha256,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str) -> "CheckpointMeta":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AssetError(f"{source}: checkpoint metadata is not valid JSON ({exc})") from None
        if d.get("format") != FORMAT_NAME:
            raise AssetError(f"{source}: not an MLANet checkpoint (format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise IncompatibleFormatError(
                f"{source}: checkpoint format version {d.get('format_version')} but this MLANet reads {FORMAT_VERSION}"
            )
        try:
            return cls(
                model_name=d["model_name"],
                model_config=d["model_config"],
                layout=ParamLayout.from_dict(d["layout"]),
                preprocess=PreprocessCfg.from_dict(d["preprocess"]),
                face_model=d["face_model"],
                extra=d.get("extra", {}),
                tensors_sha256=d.get("tensors_sha256"),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise AssetError(f"{source}: checkpoint metadata is incomplete or invalid ({exc})") from None


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of every tensor, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode("utf-8"))
        h.update(str(t.dtype).encode("ascii"))
        h.update(str(tuple(t.shape)).encode("ascii"))
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_weights(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: CheckpointMeta) -> Path:
    """Write weights + metadata atomically as safetensors; records :func:`tensors_sha256` in ``meta``."""
    from dataclasses import replace

    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = mkstemp_beside(path)
    os.close(fd)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        meta = replace(meta, tensors_sha256=tensors_sha256(tensors))
        save_file(tensors, tmp, metadata={_META_KEY: meta.to_json()})
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # safetensors re-creates the file with mode 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_weights(path: str | os.PathLike[str]) -> Path:
    """A weights file, a training run folder (its ``last.json`` names the newest checkpoint), or a run's
    ``best.json`` / ``last.json`` (the checkpoint it names: ``best.json``, the one chosen on validation)."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / "last.json").is_file():
            raise AssetError(f"{path}: a folder without last.json; pass a .safetensors file or a training run folder")
        path = path / "last.json"
    if path.name in ("best.json", "last.json") and path.is_file():
        try:
            name = json.loads(path.read_text())["weights"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise AssetError(f"{path}: unreadable ({exc})") from None
        return path.parent / "checkpoints" / name
    return path


def read_meta(path: str | os.PathLike[str]) -> CheckpointMeta:
    """Only the metadata of a weights file (cheap)."""
    return _open(Path(path))[1]


def _open(path: Path, load_tensors: bool = False) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise AssetError(f"{path}: no such checkpoint file")
    with open(path, "rb") as fh:
        head = fh.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header's "{". Only a file
    # that is not one of those is judged by its first bytes (a pickle's protocol mark, torch.save's zip).
    is_safetensors = head[8:9] == b"{"
    looks_pickled = head[:1] == b"\x80" or head[:2] == b"PK"
    if (looks_pickled and not is_safetensors) or path.suffix in (".pt", ".pth", ".pkl", ".ckpt"):
        raise AssetError(
            f"{path}: looks like a pickle-based PyTorch file; MLANet loads weights only from .safetensors "
            "checkpoints (never unpickles user files)"
        )
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()} if load_tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AssetError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if _META_KEY not in metadata:
        raise AssetError(f"{path}: safetensors file without MLANet metadata (layout, preprocessing, face model)")
    meta = CheckpointMeta.from_json(metadata[_META_KEY], str(path))
    if load_tensors:
        verify_tensors(path, tensors, meta)
    return tensors, meta


def verify_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: CheckpointMeta) -> None:
    """Refuse tensors whose :func:`tensors_sha256` differs from the one the checkpoint records.

    A checkpoint written before checksums existed loads with a warning (its integrity cannot be checked).
    """
    if meta.tensors_sha256 is None:
        log.warning("%s: no tensor checksum (written by an older MLANet); its integrity cannot be verified", path)
        return
    actual = tensors_sha256(tensors)
    if actual != meta.tensors_sha256:
        raise ChecksumError(
            f"{path}: tensor checksum mismatch (recorded {meta.tensors_sha256[:12]}..., data {actual[:12]}...); "
            "the weights file is damaged or was modified; use an intact copy"
        )


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """State dict (CPU tensors) and metadata of a weights file."""
    return _open(Path(path), load_tensors=True)


def save_training_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write resume state (optimizer, scheduler, scaler, step, RNG) atomically."""
    path = Path(path)
    fd, tmp = mkstemp_beside(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_training_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read resume state with the restricted (``weights_only``) unpickler."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such training-state file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise AssetError(f"{path}: cannot read training state ({type(exc).__name__}: {exc})") from None
