"""The MLANet TensorRT engine file: a serialized TensorRT engine that describes itself.

Pure Python (no ``tensorrt`` import): the header of an engine can be read and checked on any
machine, and a tampered, truncated or mismatched engine is refused before TensorRT or CUDA is
touched. :mod:`mlanet.export.tensorrt_engine` writes these files and runs them.

File layout (all integers little-endian)::

    offset 0        8 bytes   magic b"MLANETRT"
    offset 8        4 bytes   u32 N, length of the JSON header in bytes (at most 16 MiB)
    offset 12       N bytes   JSON header, UTF-8 (keys below)
    offset 12 + N   M bytes   the serialized TensorRT engine ("plan"), M = header["engine"]["size"]

The file ends exactly after the engine bytes. Because the metadata travels inside the file, a
renamed or moved engine keeps it (a sidecar JSON would not). JSON header keys:

``format`` ("mlanet-trt-engine"), ``format_version`` (1)
``onnx_metadata``   the full ``"mlanet"`` metadata of the ONNX it was built from (kind
                    ``"network"``, layout, preprocess, model name/config, face model id and
                    checksum, opset, torch/mlanet versions, commit).
``tensorrt_version`` the TensorRT that built it, e.g. ``"10.7.0"``.
``device``          ``{"name", "compute_capability": [major, minor]}`` of the GPU it was built on
                    (values may be ``null`` when unknown at build time).
``precision``       ``"fp16"`` (FP16 kernels allowed, TF32 allowed) or ``"fp32"`` (FP32, TF32 off).
``profile``         ``{"input": "images", "min_batch", "opt_batch", "max_batch"}``.
``io``              tensor name -> ``{"mode": "input"|"output", "shape": [...], "dtype"}``;
                    ``-1`` marks the dynamic batch axis: ``images`` (-1, 3, S, S) float32 RGB
                    [0, 1], ``params`` (-1, P) float32.
``engine``          ``{"size": M, "sha256": hex}`` of the engine bytes.
``built_at``        UTC ISO-8601 time of the build; ``builder``: free-form build details
                    (mlanet version, commit, workspace, timing cache, source ONNX name and sha256).

TensorRT engines are not portable across TensorRT versions or GPU architectures: the loader
compares ``tensorrt_version`` and ``device.compute_capability`` with the machine it runs on
(:func:`check_tensorrt_version`, :func:`check_device`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import Any, Mapping

from mlanet.errors import AssetError, ChecksumError, IncompatibleFormatError
from mlanet.fileutil import atomic_file

log = logging.getLogger(__name__)

MAGIC = b"MLANETRT"
FORMAT_NAME = "mlanet-trt-engine"
FORMAT_VERSION = 1
PRECISIONS = ("fp16", "fp32")
INPUT_NAME = "images"
OUTPUT_NAME = "params"
MAX_HEADER_BYTES = 16 << 20
_PREFIX = struct.Struct("<8sI")  # magic, header length
REBUILD_HINT = "rebuild it with `mlanet export tensorrt --onnx MODEL.onnx --out MODEL.engine` on this machine"


# --------------------------------------------------------------------------- validation
def _fail(source: str, what: str) -> AssetError:
    return AssetError(f"{source}: {what}")


def _version_tuple(version: str) -> tuple[int, ...]:
    """``"10.7.0.23"`` -> ``(10, 7, 0)``: major, minor, patch (the build number is ignored)."""
    nums = re.findall(r"\d+", str(version))
    return tuple(int(n) for n in nums[:3])


def validate_header(header: Any, source: str) -> dict[str, Any]:
    """Check the structure of an engine header; returns it.

    Checks: format name and version, the ONNX metadata is an MLANet *network* with a readable
    layout and preprocessing, precision, profile (1 <= min <= opt <= max), the I/O tensors
    ``images`` (B, 3, S, S) with S equal to ``preprocess.input_size`` and ``params`` (B, P) with
    P equal to the layout's total, and the engine size/checksum fields.

    Raises:
        AssetError: (naming ``source``) anything missing or inconsistent.
        IncompatibleFormatError: another ``format_version``.
    """
    from mlanet.model_metadata import KIND_NETWORK, ONNX_FORMAT, ModelMetadata

    if not isinstance(header, dict):
        raise _fail(source, f"MLANet engine header is a {type(header).__name__}, not a JSON object")
    if header.get("format") != FORMAT_NAME:
        raise _fail(source, f"not an MLANet engine header (format {header.get('format')!r}, expected {FORMAT_NAME!r})")
    if header.get("format_version") != FORMAT_VERSION:
        raise IncompatibleFormatError(
            f"{source}: MLANet engine format version {header.get('format_version')!r} but this MLANet reads "
            f"{FORMAT_VERSION}; {REBUILD_HINT}"
        )
    meta = header.get("onnx_metadata")
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise _fail(source, "engine header has no MLANet ONNX metadata (onnx_metadata)")
    if meta.get("kind") != KIND_NETWORK:
        raise _fail(source, f"engine built from an MLANet ONNX of kind {meta.get('kind')!r}, not a network (images -> params)")
    try:
        typed = ModelMetadata.from_onnx_props(meta, source)
    except AssetError as exc:
        raise _fail(source, f"engine metadata (layout/preprocess) is incomplete or invalid ({exc})") from None
    layout, preprocess = typed.layout, typed.preprocess
    if preprocess is None:
        raise _fail(source, "engine header's ONNX metadata has no preprocessing (a face-decoder export, not a network)")
    if not isinstance(header.get("tensorrt_version"), str) or not _version_tuple(header["tensorrt_version"]):
        raise _fail(source, f"engine header has no valid tensorrt_version ({header.get('tensorrt_version')!r})")
    if header.get("precision") not in PRECISIONS:
        raise _fail(source, f"engine precision {header.get('precision')!r} is not one of {PRECISIONS}")
    prof = header.get("profile")
    try:
        lo, opt, hi = (int(prof[k]) for k in ("min_batch", "opt_batch", "max_batch"))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise _fail(source, f"engine header has no valid optimisation profile ({prof!r})") from None
    if not 1 <= lo <= opt <= hi:
        raise _fail(source, f"engine profile needs 1 <= min_batch <= opt_batch <= max_batch, got {lo}, {opt}, {hi}")
    io = header.get("io")
    if not isinstance(io, dict) or INPUT_NAME not in io or OUTPUT_NAME not in io:
        raise _fail(source, f"engine header must describe the tensors {INPUT_NAME!r} and {OUTPUT_NAME!r}")
    s = int(preprocess.input_size)
    in_shape = list(io[INPUT_NAME].get("shape") or [])
    if len(in_shape) != 4 or in_shape[1:] != [3, s, s]:
        raise _fail(
            source,
            f"engine input {INPUT_NAME!r} has shape {in_shape}, but its metadata says preprocess.input_size {s} "
            f"(expected (B, 3, {s}, {s}))",
        )
    out_shape = list(io[OUTPUT_NAME].get("shape") or [])
    if len(out_shape) != 2 or out_shape[1] != layout.total:
        raise _fail(source, f"engine output {OUTPUT_NAME!r} has shape {out_shape}, but the layout has P={layout.total}")
    eng = header.get("engine")
    if (
        not isinstance(eng, dict)
        or not isinstance(eng.get("size"), int)
        or eng["size"] < 0
        or not re.fullmatch(r"[0-9a-f]{64}", str(eng.get("sha256", "")))
    ):
        raise _fail(source, f"engine header has no valid engine size/sha256 ({eng!r})")
    return header


def input_size(header: Mapping[str, Any]) -> int:
    """S of the engine's input (B, 3, S, S), from its preprocessing metadata."""
    from mlanet.model_metadata import ModelMetadata

    return ModelMetadata.from_engine_header(header, "engine header").input_size


# --------------------------------------------------------------------------- write
def write_engine_file(path: str | os.PathLike[str], engine_bytes: bytes, header: Mapping[str, Any]) -> Path:
    """Write ``MAGIC + u32 len + JSON header + engine_bytes`` to ``path`` atomically.

    ``header`` gets ``format``, ``format_version`` and ``engine`` (size, sha256) filled in from
    ``engine_bytes``; the result is validated with :func:`validate_header` before anything is
    written, so an inconsistent header never reaches the disk.

    Returns:
        ``path``.
    """
    path = Path(path)
    engine_bytes = bytes(engine_bytes)
    full = {
        **dict(header),
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "engine": {"size": len(engine_bytes), "sha256": hashlib.sha256(engine_bytes).hexdigest()},
    }
    validate_header(full, str(path))
    blob = json.dumps(full, sort_keys=True, allow_nan=False).encode("utf-8")
    if len(blob) > MAX_HEADER_BYTES:
        raise ValueError(f"engine header is {len(blob)} bytes, more than {MAX_HEADER_BYTES}")
    with atomic_file(path) as fh:
        fh.write(_PREFIX.pack(MAGIC, len(blob)))
        fh.write(blob)
        fh.write(engine_bytes)
        fh.flush()
        os.fsync(fh.fileno())
    return path


# --------------------------------------------------------------------------- read
def _read_prefix_and_header(fh: Any, path: Path, file_size: int) -> tuple[dict[str, Any], int]:
    """Read and validate the header; returns ``(header, engine offset)``."""
    source = str(path)
    head = fh.read(_PREFIX.size)
    if not head:
        raise _fail(source, f"empty file, not an MLANet engine; {REBUILD_HINT}")
    if len(head) < len(MAGIC):
        if MAGIC.startswith(head):
            raise _fail(source, f"truncated MLANet engine ({file_size} bytes, the header is incomplete)")
        raise _fail(source, f"not an MLANet engine ({file_size} bytes, no {MAGIC.decode()} header); {REBUILD_HINT}")
    if head[: len(MAGIC)] != MAGIC:
        raise _fail(
            source,
            f"not an MLANet engine: no {MAGIC.decode()} header (a raw TensorRT plan without MLANet metadata, or "
            "another file); MLANet needs the layout and preprocessing stored with the engine — rebuild with "
            "`mlanet export tensorrt`",
        )
    if len(head) < _PREFIX.size:
        raise _fail(source, f"truncated MLANet engine ({file_size} bytes, the header is incomplete)")
    _, n = _PREFIX.unpack(head)
    if n == 0 or n > MAX_HEADER_BYTES:
        raise _fail(source, f"corrupt MLANet engine: header length {n} is out of range (1..{MAX_HEADER_BYTES})")
    if _PREFIX.size + n > file_size:
        raise _fail(source, f"truncated MLANet engine ({file_size} bytes, the header alone needs {_PREFIX.size + n})")
    blob = fh.read(n)
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(source, f"corrupt MLANet engine: the header is not valid JSON ({exc})") from None
    validate_header(header, source)
    offset = _PREFIX.size + n
    expected = offset + header["engine"]["size"]
    if file_size < expected:
        raise _fail(
            source,
            f"truncated MLANet engine: {file_size} bytes, the header promises {expected} "
            f"({header['engine']['size']} engine bytes); copy or rebuild it",
        )
    if file_size > expected:
        raise _fail(source, f"corrupt MLANet engine: {file_size - expected} unexpected bytes after the engine")
    return header, offset


def _open(path: str | os.PathLike[str]) -> tuple[Path, int]:
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such TensorRT engine file")
    return path, path.stat().st_size


def read_engine_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated JSON header of an MLANet engine file, without reading the engine bytes.

    Also checks that the file has exactly the size the header promises (truncation). The
    engine checksum is verified by :func:`read_engine_file`.

    Raises:
        AssetError: (naming the file) missing, not an MLANet engine (e.g. a raw TensorRT plan),
            truncated, corrupt header, inconsistent input size or layout.
        IncompatibleFormatError: another format version.
    """
    path, size = _open(path)
    with open(path, "rb") as fh:
        header, _ = _read_prefix_and_header(fh, path, size)
    return header


def read_engine_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], bytes]:
    """``(header, engine_bytes)`` of an MLANet engine file, the engine's SHA-256 verified.

    Raises:
        AssetError: as :func:`read_engine_header`.
        ChecksumError: the engine bytes do not match the header's SHA-256 (tampered or corrupt).
    """
    path, size = _open(path)
    with open(path, "rb") as fh:
        header, _ = _read_prefix_and_header(fh, path, size)
        engine_bytes = fh.read()
    digest = hashlib.sha256(engine_bytes).hexdigest()
    if digest != header["engine"]["sha256"]:
        raise ChecksumError(
            f"{path}: engine bytes do not match the checksum in its header (sha256 {digest[:12]}..., "
            f"expected {header['engine']['sha256'][:12]}...): the file was modified or corrupted; {REBUILD_HINT}"
        )
    return header, engine_bytes


# --------------------------------------------------------------------------- machine checks
def check_tensorrt_version(header: Mapping[str, Any], installed: str, source: str) -> None:
    """Refuse an engine built by another TensorRT (major.minor.patch must match ``installed``)."""
    built = str(header["tensorrt_version"])
    if _version_tuple(built) != _version_tuple(installed):
        raise IncompatibleFormatError(
            f"{source}: built with TensorRT {built}, but TensorRT {installed} is installed; TensorRT engines are not "
            f"portable across TensorRT versions or GPU models — {REBUILD_HINT}"
        )


def check_device(header: Mapping[str, Any], name: str | None, compute_capability: Any, source: str) -> None:
    """Refuse an engine built for another GPU architecture (compute capability); warn on another GPU model.

    ``compute_capability`` is ``(major, minor)`` of the GPU that will run it; unknown values
    (``None`` on either side) are not compared.
    """
    dev = header.get("device") or {}
    built_cc, built_name = dev.get("compute_capability"), dev.get("name")
    if built_cc is not None and compute_capability is not None:
        if tuple(int(x) for x in built_cc) != tuple(int(x) for x in compute_capability):
            cc = ".".join(str(int(x)) for x in compute_capability)
            raise IncompatibleFormatError(
                f"{source}: built for compute capability {'.'.join(map(str, built_cc))} ({built_name}), this GPU is "
                f"{name} (compute capability {cc}); TensorRT engines are not portable across GPU models — {REBUILD_HINT}"
            )
    if built_name and name and built_name != name:
        log.warning("%s: built on %s, running on %s (same compute capability): it should load, but tactics were "
                    "timed on the other GPU; rebuild for best speed", source, built_name, name)
