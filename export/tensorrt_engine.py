"""TensorRT 10: build an FP16 engine from an MLANet ONNX, and run it. The only module that calls ``tensorrt``.

* :func:`build_engine` — ONNX (``mlanet export onnx``) -> MLANet engine file (see
  :mod:`mlanet.export.engine_file`: header with the ONNX metadata + serialized engine).
* :class:`TensorRTRunner` — deserializes an engine and runs ``images (B, 3, S, S)`` float32 RGB
  in [0, 1] -> ``params (B, P)`` float32 with the named-tensor API (``execute_async_v3``),
  device buffers allocated once for the profile's max batch, pinned host buffers, one CUDA
  stream, optional CUDA-graph capture per batch size. Uses pycuda for CUDA memory and streams.
* :func:`engine_parity_report` — TensorRT vs ONNX Runtime (CPU) in vertex space (mm).

``tensorrt`` and ``pycuda`` are imported inside the functions; when missing, a
:class:`TensorRTUnavailableError` carries the install instructions (:data:`INSTALL_HINT`).

Status: none of the code paths that call TensorRT or pycuda has been run in this project yet
(the development machines have no GPU and TensorRT cannot be installed there); they are written
against the TensorRT 10 Python API and pycuda >= 2022.1 (stream capture) and covered by the
``trt``/``gpu`` tests in ``tests/test_tensorrt_engine.py``, which run on a GPU host. TensorRT
11 removed the weakly typed precision flags (``BuilderFlag.FP16``) this builder uses, so
:func:`build_engine` refuses any major version other than 10.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mlanet.errors import AssetError, MLANetError
from mlanet.fileutil import write_bytes_atomic
from mlanet.export.engine_file import (
    INPUT_NAME,
    OUTPUT_NAME,
    _version_tuple,
    check_device,
    check_tensorrt_version,
    write_engine_file,
)

log = logging.getLogger(__name__)

SUPPORTED_TRT_MAJOR = 10
DEFAULT_MAX_BATCH = 32
#: TensorRT times its kernels at the "opt" shape. The live pipeline usually sees one face per
#: frame and is latency-bound, so 1 is the default; raise it (--opt-batch) for offline video
#: with many faces per batch.
DEFAULT_OPT_BATCH = 1
DEFAULT_WORKSPACE_MIB = 1024

INSTALL_HINT = (
    "TensorRT 10 is not installed (the Python module `tensorrt` cannot be imported). "
    "Desktop Linux x86_64 with an NVIDIA driver: "
    "`pip install --extra-index-url https://pypi.nvidia.com \"tensorrt-cu12>=10,<11\"` for CUDA 12 "
    "(\"tensorrt-cu13>=10.13,<11\" for CUDA 13), or unpack the TensorRT 10 tarball from "
    "developer.nvidia.com, `pip install TensorRT-10.*/python/tensorrt-10.*-cp3XX-none-linux_x86_64.whl` and add "
    "TensorRT-10.*/lib to LD_LIBRARY_PATH. "
    "Jetson: JetPack 6.1/6.2 ship TensorRT 10.3 for the system Python (JetPack 6.0 has 8.6, too old); create the venv with "
    "`python3 -m venv --system-site-packages` so `import tensorrt` finds it. "
    "The runtime also needs pycuda (`pip install pycuda`, builds with nvcc). See docs/tensorrt.md."
)
PYCUDA_HINT = (
    "pycuda is not installed (the TensorRT runtime uses it for CUDA memory and streams): "
    "`pip install pycuda` (it builds from source: needs nvcc on PATH and the CUDA headers; "
    "on Jetson `export PATH=/usr/local/cuda/bin:$PATH` first). See docs/tensorrt.md."
)


class TensorRTUnavailableError(MLANetError):
    """TensorRT (or pycuda, which the runtime needs) cannot be imported; the message says how to install it."""


def import_tensorrt(source: str | None = None) -> ModuleType:
    """``import tensorrt``, or :class:`TensorRTUnavailableError` with :data:`INSTALL_HINT` (prefixed by ``source``)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:  # OSError: a wheel without its libnvinfer
        prefix = f"{source}: " if source else ""
        raise TensorRTUnavailableError(f"{prefix}{INSTALL_HINT} ({type(exc).__name__}: {exc})") from None
    return trt


def _import_pycuda(source: str | None = None) -> ModuleType:
    try:
        import pycuda.driver as cuda
    except (ImportError, OSError) as exc:
        prefix = f"{source}: " if source else ""
        raise TensorRTUnavailableError(f"{prefix}{PYCUDA_HINT} ({type(exc).__name__}: {exc})") from None
    return cuda


def _device_info() -> dict[str, Any]:
    """Name and compute capability of CUDA device 0 as the builder sees it (``None`` values if unknown)."""
    try:
        import torch

        if torch.cuda.is_available():
            i = torch.cuda.current_device()
            return {"name": torch.cuda.get_device_name(i), "compute_capability": list(torch.cuda.get_device_capability(i))}
    except Exception as exc:  # noqa: BLE001 - best effort: the header records null instead
        log.debug("torch cannot describe the GPU: %s", exc)
    try:
        import pycuda.driver as cuda

        cuda.init()
        dev = cuda.Device(0)
        return {"name": dev.name(), "compute_capability": list(dev.compute_capability())}
    except Exception as exc:  # noqa: BLE001
        log.debug("pycuda cannot describe the GPU: %s", exc)
    log.warning("could not determine the GPU name/compute capability; the engine header records null")
    return {"name": None, "compute_capability": None}


def _dims(shape: Any) -> list[int]:
    return [int(d) for d in shape]


# --------------------------------------------------------------------------- build
def build_engine(
    onnx_path: str | os.PathLike[str],
    engine_path: str | os.PathLike[str],
    *,
    fp16: bool = True,
    max_batch: int = DEFAULT_MAX_BATCH,
    opt_batch: int = DEFAULT_OPT_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Build an MLANet TensorRT engine file from an ONNX network written by ``mlanet export onnx``.

    The ONNX's MLANet metadata is read and checked first (a face decoder or an ONNX without
    MLANet metadata is refused before TensorRT is imported). The network is parsed with explicit
    batch (the only mode in TensorRT 10); one optimisation profile covers
    ``images`` (1..max_batch, 3, S, S) with S from the metadata, tuned at ``opt_batch``.

    Args:
        onnx_path: the network ONNX (input ``images`` (B, 3, S, S), output ``params`` (B, P)).
        engine_path: output file (written atomically; suffix ``.engine`` or ``.plan``).
        fp16: allow FP16 kernels (I/O stays float32). ``False`` builds FP32 with TF32 disabled.
        max_batch: largest batch the engine accepts (device buffers are sized for it).
        opt_batch: batch size TensorRT tunes for (1 <= opt_batch <= max_batch).
        workspace_mib: builder workspace memory-pool limit in MiB.
        timing_cache_path: a TensorRT timing cache file: loaded if it exists (ignored with a
            warning if it was made by another TensorRT/GPU), saved after the build. Speeds up
            rebuilds on the same machine.

    Returns:
        ``engine_path``.

    Raises:
        ValueError: bad batch sizes or workspace.
        AssetError: (naming the file) not an MLANet network ONNX, TensorRT cannot parse it, or
            its I/O differs from the metadata.
        TensorRTUnavailableError: TensorRT missing (message: how to install it).
        MLANetError: TensorRT other than 10.x, or the build failed (see the TensorRT log).
    """
    from mlanet.export.onnx_export import KIND_NETWORK, read_onnx_metadata, read_onnx_model_metadata

    for name, value in (("max_batch", max_batch), ("opt_batch", opt_batch), ("workspace_mib", workspace_mib)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if opt_batch > max_batch:
        raise ValueError(f"opt_batch ({opt_batch}) must be <= max_batch ({max_batch})")
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    typed = read_onnx_model_metadata(onnx_path)  # checks format, version, kind, layout and preprocessing
    if typed.kind != KIND_NETWORK:
        raise AssetError(
            f"{onnx_path}: an MLANet ONNX of kind {typed.kind!r}; only networks (images -> params) are built "
            "into TensorRT engines"
        )
    s, p = typed.input_size, typed.layout.total
    meta = read_onnx_metadata(onnx_path)  # the header keeps the ONNX metadata as written

    trt = import_tensorrt(str(onnx_path))
    version = str(trt.__version__)
    if _version_tuple(version)[:1] != (SUPPORTED_TRT_MAJOR,):
        raise MLANetError(
            f"TensorRT {version} is installed, but this builder targets TensorRT {SUPPORTED_TRT_MAJOR}.x "
            "(TensorRT 11 removed BuilderFlag.FP16 / weakly typed networks); install "
            "\"tensorrt-cu12>=10,<11\" (see docs/tensorrt.md)"
        )

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the default (and only mode) in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise AssetError(f"{onnx_path}: TensorRT {version} cannot parse this ONNX: {errors}")
    io = _network_io(trt, network, s, p, str(onnx_path))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # strict FP32, for parity checks
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, 3, s, s), (opt_batch, 3, s, s), (max_batch, 3, s, s))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache_path) if timing_cache_path else None
    if cache_path is not None:
        data = cache_path.read_bytes() if cache_path.is_file() else b""
        loaded = False
        if data:
            try:
                cache = config.create_timing_cache(data)
                # ignore_mismatch=False: a cache made by another TensorRT or GPU is refused, not silently used
                loaded = cache is not None and bool(config.set_timing_cache(cache, False))
            except Exception as exc:  # noqa: BLE001 - a corrupt cache only costs build time
                log.debug("timing cache %s: %s", cache_path, exc)
            if not loaded:
                log.warning("%s: unreadable timing cache or one made by another TensorRT/GPU; starting an empty one", cache_path)
        if not loaded:
            config.set_timing_cache(config.create_timing_cache(b""), False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise MLANetError(f"{onnx_path}: TensorRT {version} failed to build an engine (see the TensorRT log above)")
    engine_bytes = bytes(plan)
    build_s = time.perf_counter() - t0
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))

    from mlanet import __version__
    from mlanet.fileutil import file_sha256
    from mlanet.export.onnx_export import _git_commit

    header = {
        "onnx_metadata": meta,
        "tensorrt_version": version,
        "device": _device_info(),
        "precision": "fp16" if fp16 else "fp32",
        "profile": {"input": INPUT_NAME, "min_batch": 1, "opt_batch": opt_batch, "max_batch": max_batch},
        "io": io,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "builder": {
            "mlanet_version": __version__,
            "commit": _git_commit(),
            "workspace_mib": workspace_mib,
            "timing_cache": str(cache_path) if cache_path else None,
            "build_seconds": round(build_s, 3),
            "onnx_file": onnx_path.name,
            "onnx_sha256": file_sha256(onnx_path),
        },
    }
    out = write_engine_file(engine_path, engine_bytes, header)
    log.info("built %s (%d bytes, %s, batch 1..%d, opt %d) in %.1f s", out, len(engine_bytes), header["precision"],
             max_batch, opt_batch, build_s)
    return out


def _network_io(trt: ModuleType, network: Any, s: int, p: int, source: str) -> dict[str, Any]:
    """The parsed network's I/O as header ``io`` entries; refuses names/shapes/dtypes other than the metadata's."""
    io: dict[str, Any] = {}
    for mode, count, get in (("input", network.num_inputs, network.get_input), ("output", network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            io[t.name] = {"mode": mode, "shape": _dims(t.shape), "dtype": np.dtype(trt.nptype(t.dtype)).name}
    expected = {INPUT_NAME: ("input", [3, s, s]), OUTPUT_NAME: ("output", [p])}
    if set(io) != set(expected):
        raise AssetError(f"{source}: TensorRT sees tensors {sorted(io)}, expected exactly {sorted(expected)}")
    for name, (mode, tail) in expected.items():
        entry = io[name]
        if entry["mode"] != mode or entry["shape"][1:] != tail or entry["dtype"] != "float32":
            raise AssetError(
                f"{source}: tensor {name!r} is {entry['mode']} {entry['shape']} {entry['dtype']}, "
                f"expected {mode} [B, {', '.join(map(str, tail))}] float32 (from the metadata)"
            )
    return io


# --------------------------------------------------------------------------- run
class TensorRTRunner:
    """Run a serialized MLANet engine: ``images (B, 3, S, S)`` float32 -> ``params (B, P)`` float32.

    Order of checks: the installed TensorRT version against the header's (before pycuda or
    CUDA is touched), then the GPU's compute capability, then deserialisation and the engine's
    I/O tensors against the header. Device buffers for ``max_batch`` and pinned host buffers are
    allocated once; batches larger than ``max_batch`` run in chunks.

    Args:
        engine_bytes: the serialized engine (from :func:`~mlanet.export.engine_file.read_engine_file`).
        header: its validated header.
        source: the file name, used in messages.
        device: CUDA device ordinal.
        cuda_graphs: capture one CUDA graph per batch size on first use and replay it
            (lower launch overhead for small models; falls back to plain enqueue if TensorRT
            refuses capture).

    Untested: written against TensorRT 10 and pycuda; no GPU with TensorRT was available here.
    """

    def __init__(
        self, engine_bytes: bytes, header: dict[str, Any], *, source: str, device: int = 0, cuda_graphs: bool = False
    ) -> None:
        self.source = source
        self.header = header
        trt = import_tensorrt(source)
        self._trt = trt
        check_tensorrt_version(header, str(trt.__version__), source)
        cuda = _import_pycuda(source)
        self._cuda = cuda
        cuda.init()
        dev = cuda.Device(int(device))
        check_device(header, dev.name(), dev.compute_capability(), source)
        self.input_size = int(header["io"][INPUT_NAME]["shape"][2])
        self.n_params = int(header["io"][OUTPUT_NAME]["shape"][1])
        self.max_batch = int(header["profile"]["max_batch"])
        self.cuda_graphs = bool(cuda_graphs)
        self._graphs: dict[int, Any] = {}
        self._shape_batch: int | None = None
        self._ctx = dev.retain_primary_context()  # the context PyTorch and the CUDA runtime (TensorRT) use
        self._ctx.push()
        try:
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise AssetError(
                    f"{source}: TensorRT {trt.__version__} could not deserialize the engine (built with TensorRT "
                    f"{header['tensorrt_version']} on {header.get('device', {}).get('name')}); see the TensorRT log"
                )
            self._check_engine_io()
            self.context = self.engine.create_execution_context()
            s, b = self.input_size, self.max_batch
            self.stream = cuda.Stream()
            self._in_host = cuda.pagelocked_empty((b, 3, s, s), np.float32)
            self._out_host = cuda.pagelocked_empty((b, self.n_params), np.float32)
            self._in_dev = cuda.mem_alloc(self._in_host.nbytes)
            self._out_dev = cuda.mem_alloc(self._out_host.nbytes)
            # Addresses never change: the buffers are sized for max_batch, smaller batches use a prefix.
            self.context.set_tensor_address(INPUT_NAME, int(self._in_dev))
            self.context.set_tensor_address(OUTPUT_NAME, int(self._out_dev))
        except BaseException:
            cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None
            raise
        cuda.Context.pop()

    def _check_engine_io(self) -> None:
        trt, eng = self._trt, self.engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        if sorted(names) != sorted([INPUT_NAME, OUTPUT_NAME]):
            raise AssetError(f"{self.source}: engine tensors {names}, expected {INPUT_NAME!r} and {OUTPUT_NAME!r}")
        for name, mode in ((INPUT_NAME, trt.TensorIOMode.INPUT), (OUTPUT_NAME, trt.TensorIOMode.OUTPUT)):
            shape = _dims(eng.get_tensor_shape(name))
            want = self.header["io"][name]["shape"]
            if eng.get_tensor_mode(name) != mode or shape[1:] != list(want[1:]):
                raise AssetError(f"{self.source}: engine tensor {name!r} has shape {shape}, its header says {want}")
            if eng.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise AssetError(f"{self.source}: engine tensor {name!r} is {eng.get_tensor_dtype(name)}, expected float32")
        _, _, hi = eng.get_tensor_profile_shape(INPUT_NAME, 0)
        if int(hi[0]) < self.max_batch:
            raise AssetError(f"{self.source}: engine profile max batch {int(hi[0])} < header max_batch {self.max_batch}")

    def _enqueue(self, n: int) -> None:
        """Run the engine on the first ``n`` rows of the device buffers (context current, on self.stream)."""
        if self._shape_batch != n:
            if not self.context.set_input_shape(INPUT_NAME, (n, 3, self.input_size, self.input_size)):
                raise MLANetError(f"{self.source}: TensorRT refused input shape ({n}, 3, {self.input_size}, {self.input_size})")
            self._shape_batch = n
        if self.cuda_graphs:
            graph = self._graphs.get(n)
            if graph is None:
                graph = self._capture(n)
            if graph is not None:
                graph.launch(self.stream)  # pycuda GraphExec.launch(stream); untested here
                return
        if not self.context.execute_async_v3(self.stream.handle):
            raise MLANetError(f"{self.source}: TensorRT execute_async_v3 failed (batch {n}); see the TensorRT log")

    def _capture(self, n: int) -> Any:
        """Capture a CUDA graph of one enqueue at batch ``n``; ``None`` (and graphs off) if capture fails."""
        # One plain enqueue first: TensorRT applies deferred shape-dependent updates there, not during capture.
        if not self.context.execute_async_v3(self.stream.handle):
            raise MLANetError(f"{self.source}: TensorRT execute_async_v3 failed (batch {n})")
        self.stream.synchronize()
        try:
            self.stream.begin_capture()
            ok = self.context.execute_async_v3(self.stream.handle)
            graph = self.stream.end_capture()
            if not ok:
                raise RuntimeError("execute_async_v3 returned False during capture")
            instance = graph.instantiate()
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation: fall back to plain enqueue
            log.warning("%s: CUDA graph capture failed at batch %d (%s); running without graphs", self.source, n, exc)
            self.cuda_graphs = False
            return None
        self._graphs[n] = instance
        return instance

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``images (B, 3, S, S)`` float32 (C-contiguous) -> ``params (B, P)`` float32 (a new array)."""
        cuda = self._cuda
        images = np.ascontiguousarray(images, dtype=np.float32)
        s = self.input_size
        if images.ndim != 4 or images.shape[1:] != (3, s, s) or images.shape[0] < 1:
            raise ValueError(f"{self.source} expects images of shape (B, 3, {s}, {s}), got {tuple(images.shape)}")
        out = np.empty((images.shape[0], self.n_params), dtype=np.float32)
        self._ctx.push()
        try:
            for start in range(0, images.shape[0], self.max_batch):
                n = min(self.max_batch, images.shape[0] - start)
                np.copyto(self._in_host[:n], images[start : start + n])
                cuda.memcpy_htod_async(self._in_dev, self._in_host[:n], self.stream)
                self._enqueue(n)
                cuda.memcpy_dtoh_async(self._out_host[:n], self._out_dev, self.stream)
                self.stream.synchronize()
                out[start : start + n] = self._out_host[:n]
        finally:
            cuda.Context.pop()
        return out

    def warmup(self) -> None:
        self(np.zeros((1, 3, self.input_size, self.input_size), dtype=np.float32))

    def load_device_input(self, images: np.ndarray) -> int:
        """Copy ``images (B <= max_batch, 3, S, S)`` into the engine's device input buffer and wait; returns B.

        With :meth:`time_enqueue` this times the engine alone, inputs already on the GPU (what a
        device-side pipeline that crops into the engine's input buffer sees).
        """
        cuda = self._cuda
        images = np.ascontiguousarray(images, dtype=np.float32)
        s, n = self.input_size, int(images.shape[0]) if images.ndim == 4 else 0
        if images.ndim != 4 or images.shape[1:] != (3, s, s) or not 1 <= n <= self.max_batch:
            raise ValueError(f"{self.source}: device input must be (1..{self.max_batch}, 3, {s}, {s}), "
                             f"got {tuple(images.shape)}")
        self._ctx.push()
        try:
            np.copyto(self._in_host[:n], images)
            cuda.memcpy_htod_async(self._in_dev, self._in_host[:n], self.stream)
            self.stream.synchronize()
        finally:
            cuda.Context.pop()
        return n

    def time_enqueue(self, n: int) -> float:
        """Milliseconds (CUDA events on the runner's stream) of one engine run on the first ``n`` device
        input rows (see :meth:`load_device_input`): no host copies, CUDA-graph replay when enabled."""
        cuda = self._cuda
        if not 1 <= int(n) <= self.max_batch:
            raise ValueError(f"{self.source}: batch {n} outside 1..{self.max_batch}")
        self._ctx.push()
        try:
            start, end = cuda.Event(), cuda.Event()
            start.record(self.stream)
            self._enqueue(int(n))
            end.record(self.stream)
            end.synchronize()
            return float(end.time_since(start))
        finally:
            cuda.Context.pop()

    def close(self) -> None:
        """Free the buffers, graphs, context, engine and runtime, and release the primary context."""
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            self._graphs.clear()
            for name in ("_in_dev", "_out_dev"):
                buf = getattr(self, name, None)
                if buf is not None:
                    buf.free()
                setattr(self, name, None)
            self.context = None
            self.engine = None
            self._runtime = None
        finally:
            self._cuda.Context.pop()
            self._ctx.detach()
            self._ctx = None


# --------------------------------------------------------------------------- parity
def engine_parity_report(
    engine_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    face_model: Any,
    *,
    n: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """TensorRT engine vs ONNX Runtime (CPU) on the same random images, in vertex space.

    Images are ``torch.rand`` seeded with ``seed`` at batch sizes 1 and ``n`` (``n`` at most the
    engine's max batch); both flat outputs are decoded with the torch ``face_model``.

    Returns:
        ``{"vertex_mm": {"mean", "max"}, "landmark_mm": {...}, "param_max_abs", "batch_sizes",
        "precision", "tensorrt_version", "device", "engine", "onnx"}``.
    """
    from mlanet.edge.backends import open_backend
    from mlanet.export.onnx_export import compare_backends

    engine = open_backend(engine_path, face_model, device="cuda")  # header, checksum, face model checked first
    onnx = open_backend(onnx_path, face_model, device="cpu")
    try:
        header = getattr(engine, "header")  # noqa: B009 - the TensorRT backend's own attribute
        report = compare_backends(onnx, engine, face_model, n=max(1, int(n)), seed=seed,
                                  max_batch=int(header["profile"]["max_batch"]))
    finally:
        engine.close()
        onnx.close()
    return {
        "engine": str(engine_path),
        "onnx": str(onnx_path),
        "precision": header["precision"],
        "tensorrt_version": header["tensorrt_version"],
        "device": header.get("device"),
        **report,
    }
