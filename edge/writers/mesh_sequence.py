"""Compact mesh sequences: one file per face track, topology once, int16 vertices per frame.

``mlanet-video`` writes one ``meshes/track_NNN.mlmesh.npz`` per track by default (``--meshes
sequence``); per-frame OBJ/PLY files (:mod:`.meshes`) are written on request. Read a file with
:func:`load_mesh_sequence`::

    from mlanet.edge.writers.mesh_sequence import load_mesh_sequence

    seq = load_mesh_sequence("runs/obama/meshes/track_000.mlmesh.npz")
    seq.triangles            # (F, 3) int32, counter-clockwise front faces
    seq.uv, seq.triangles_uv # (T, 2) float32 (origin bottom-left) and (F, 3) int32, or None
    seq.frames, seq.times_s  # (N,) int64 input frame numbers, (N,) float64 seconds
    seq.vertices_at(i)       # (V, 3) float32 metres, OpenCV camera frame, i-th stored frame
    seq.vertices             # (N, V, 3) float32, everything decoded at once (N * V * 12 bytes)
    seq.meta                 # the self-description below (dict)
    seq.to_obj(i, "f.obj")   # one frame as OBJ (y-up like the per-frame OBJ files), with UVs

File format (``FORMAT`` ``"mlanet-mesh-sequence"``, ``FORMAT_VERSION`` 1): an *uncompressed*
NumPy ``.npz`` (a ZIP of ``.npy`` members, ``ZIP_STORED``) readable with
``np.load(path, allow_pickle=False)``; because the members are stored, the loader memory-maps
the vertex block instead of reading it, so a long sequence opens instantly and one frame costs
one V x 3 read (deflating the int16 block saves only ~2 % on ICT faces, measured, so the
members are not compressed). Members:

=================  ================  ==================================================================
``meta``           0-d str           JSON: format, format_version, units ``"m"``, coordinate_frame,
                                     encoding, max_abs_error_m, n_vertices, n_triangles, n_frames,
                                     first_frame, last_frame, has_uv, topology_sha256, writer, and
                                     what the caller adds (mlanet-video: track_id, face_model,
                                     source, fps, mesh_every)
``triangles``      (F, 3) int32      vertex indices, counter-clockwise front faces (stored once)
``uv``             (T, 2) float32    texture coordinates, origin bottom-left (only with UVs)
``triangles_uv``   (F, 3) int32      per-corner indices into ``uv`` (only with UVs)
``frames``         (N,) int64        input frame number of each stored frame, increasing
``times_s``        (N,) float64      seconds from the start of the input
``offset``         (N, 3) float32    per-frame centre of the vertices' bounding box, metres
``scale``          (N,) float32      per-frame quantisation step, metres
``vertices_q``     (N, V, 3) int16   ``vertices = offset[n] + scale[n] * vertices_q[n]`` (float32)
=================  ================  ==================================================================

Vertices are in metres in the frame named by ``meta["coordinate_frame"]``; mlanet-video stores
the **OpenCV camera frame** of the input video (+x right, +y down, +z forward, camera at the
origin), the library's frame; :meth:`MeshSequence.to_obj` converts to the y-up frame of the
per-frame OBJ files.

Encoding, and why int16. Each frame is quantised on its own: ``offset`` is the centre of its
bounding box and ``scale = half_extent / 32767`` (``half_extent``: half the largest side of the
box), so ``|error| <= scale / 2 = half_extent / 65534`` per coordinate, plus float32 rounding of
the decode (~1e-7 m at 1 m). For the ICT face (about 0.18 x 0.29 x 0.16 m) that is <= 2.3
micrometres, and the writer records the largest error it actually measured, decoding exactly as
the loader does, as ``meta["max_abs_error_m"]``. float16 has the same size but a step of
2^-11 m = 0.49 mm for coordinates in [0.5, 1) m and 0.98 mm in [1, 2) m, i.e. rounding errors
up to 0.24-0.49 mm for a face at a normal distance from the camera (0.49 mm measured on ICT
faces at 0.9-1.8 m), a hundred to two hundred times more. float32 is exact to ~0.1 micrometre
but twice the size. Size: 6 bytes per vertex per frame (9409-vertex ICT face:
55 KiB per frame, about 102 MB per face per minute at 30 fps, against ~1 MB per frame for OBJ).
The decoder-level alternative is ``params.npz`` (198 floats per face per frame) together with
the face-model file; this format needs no face model to read.

Writing (:class:`MeshSequenceWriter`), and why a spool. Frames are appended as fixed-size
records to a *spool* beside the target, ``<target>.partial`` (a short header, then one record per
frame: frame, time, offset, scale, int16 vertices; written unbuffered), so memory stays at one
frame however long the video (a 60-minute video at 30 fps is ~6 GB per face: it cannot be held
in RAM, and an .npy header needs the frame count before the data). :meth:`~MeshSequenceWriter.close`
copies the spool into the npz in chunks through a temporary file, renames it onto the target
and removes the spool. So a file under the final name is always complete for the frames it
lists (whether the run covered the whole input is what mlanet-video's run.json status says);
after a hard kill only the spool exists, the loader refuses it, and
:meth:`~MeshSequenceWriter.resume_from` (``mlanet-video --resume``) keeps its frames before the
resume point (records have a fixed size, so a cut record is simply dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mlanet.edge.writers import WriterError, atomic_file

log = logging.getLogger(__name__)

FORMAT = "mlanet-mesh-sequence"
FORMAT_VERSION = 1
#: File name suffix of a finished sequence.
SUFFIX = ".mlmesh.npz"
#: Appended to the target's name for the unfinished spool.
SPOOL_SUFFIX = ".partial"
#: First bytes of a spool file.
SPOOL_MAGIC = b"MLANET-MESH-SEQUENCE-SPOOL\n"
#: Largest magnitude of a quantised coordinate.
Q_MAX = 32767
#: The coordinate frame mlanet-video stores, as written into ``meta["coordinate_frame"]``.
OPENCV_CAMERA = "opencv-camera: +x right, +y down, +z forward, camera at the origin (metres)"
#: Frames copied per chunk when a spool is turned into the npz.
_CHUNK_BYTES = 32 << 20
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader: 30 bytes


def spool_path(path: str | os.PathLike[str]) -> Path:
    """The spool of the sequence file ``path``: ``<path>.partial``."""
    path = Path(path)
    return path.with_name(path.name + SPOOL_SUFFIX)


def sequence_path(folder: str | os.PathLike[str], track_id: int) -> Path:
    """``<folder>/track_<id:03d>.mlmesh.npz``: where mlanet-video writes a track's sequence."""
    return Path(folder) / f"track_{int(track_id):03d}{SUFFIX}"


def topology_sha256(triangles: np.ndarray, uv: np.ndarray | None = None, triangles_uv: np.ndarray | None = None) -> str:
    """Hex SHA-256 of the topology as stored (int32 triangles, float32 uv, int32 triangles_uv)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(triangles, dtype="<i4").tobytes())
    if uv is not None:
        h.update(np.ascontiguousarray(uv, dtype="<f4").tobytes())
        h.update(np.ascontiguousarray(triangles_uv, dtype="<i4").tobytes())
    return h.hexdigest()


def _record_dtype(n_vertices: int) -> np.dtype:
    """One spool record: frame, time, measured error (m), offset, scale, quantised vertices (packed, little-endian)."""
    return np.dtype([("frame", "<i8"), ("time_s", "<f8"), ("err", "<f8"), ("offset", "<f4", (3,)), ("scale", "<f4"),
                     ("q", "<i2", (n_vertices, 3))])


def quantise(vertices: np.ndarray) -> tuple[np.ndarray, np.float32, np.ndarray, float]:
    """Quantise one frame: ``(offset (3,) float32, scale float32, q (V, 3) int16, max_abs_error_m)``.

    ``offset + scale * q`` (float32) reproduces ``vertices`` (V, 3) within ``max_abs_error_m``,
    which is measured on exactly that float32 decode (<= half the largest bounding-box side / 65534
    plus float32 rounding).
    """
    v = np.asarray(vertices, dtype=np.float64)
    lo, hi = v.min(axis=0), v.max(axis=0)
    offset = ((lo + hi) / 2.0).astype(np.float32)
    half = float(np.max(np.maximum(hi - offset, offset - lo)))
    scale = np.float32(max(half / Q_MAX * (1.0 + 1e-6), 1e-12))
    q = np.clip(np.rint((v - offset) / np.float64(scale)), -Q_MAX, Q_MAX).astype(np.int16)
    decoded = offset + scale * q.astype(np.float32)
    err = float(np.max(np.abs(decoded.astype(np.float64) - v))) if len(v) else 0.0
    return offset, scale, q, err


class MeshSequenceWriter:
    """Write one track's mesh sequence to ``path`` (``*.mlmesh.npz``), frame by frame.

    Args:
        path: the target file; the spool ``<path>.partial`` is written beside it until :meth:`close`.
        triangles: (F, 3) int vertex indices, counter-clockwise front faces.
        n_vertices: V, the vertex count of every frame.
        uv: (T, 2) texture coordinates in [0, 1], origin bottom-left; optional.
        triangles_uv: (F, 3) int indices into ``uv``; required with ``uv``.
        coordinate_frame: what the vertices' frame is, recorded in the metadata.
        meta: extra JSON-able metadata (mlanet-video: track_id, face_model, source, fps, mesh_every).

    Frames arrive through :meth:`add` with increasing frame numbers; :meth:`close` writes the
    file. Used as a context manager, an exception inside the block (Ctrl-C included) still
    finishes the file with the frames added. Nothing reaches ``path`` before :meth:`close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        triangles: np.ndarray,
        n_vertices: int,
        uv: np.ndarray | None = None,
        triangles_uv: np.ndarray | None = None,
        coordinate_frame: str = OPENCV_CAMERA,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.spool = spool_path(self.path)
        self.V = int(n_vertices)
        t = np.asarray(triangles)
        if t.ndim != 2 or t.shape[1] != 3 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"{self.path}: triangles must be an integer (F, 3) array, got {t.shape} {t.dtype}")
        if len(t) and (t.min() < 0 or t.max() >= self.V):
            raise ValueError(f"{self.path}: triangle indices must lie in [0, {self.V}), got [{t.min()}, {t.max()}]")
        if (uv is None) != (triangles_uv is None):
            raise ValueError(f"{self.path}: give both uv and triangles_uv, or neither")
        self.triangles = t.astype(np.int32)
        self.uv: np.ndarray | None = None
        self.triangles_uv: np.ndarray | None = None
        if uv is not None:
            uv_a, tuv = np.asarray(uv, dtype=np.float32), np.asarray(triangles_uv)
            if uv_a.ndim != 2 or uv_a.shape[1] != 2:
                raise ValueError(f"{self.path}: uv must be (T, 2), got {uv_a.shape}")
            if tuv.shape != t.shape or not np.issubdtype(tuv.dtype, np.integer):
                raise ValueError(f"{self.path}: triangles_uv must be an integer array shaped like triangles {t.shape}")
            if len(tuv) and (tuv.min() < 0 or tuv.max() >= len(uv_a)):
                raise ValueError(f"{self.path}: triangles_uv indices must lie in [0, {len(uv_a)})")
            self.uv, self.triangles_uv = uv_a, tuv.astype(np.int32)
        self.topology_sha256 = topology_sha256(self.triangles, self.uv, self.triangles_uv)
        self.coordinate_frame = coordinate_frame
        self.extra_meta = dict(meta or {})
        self.dtype = _record_dtype(self.V)
        self._n = 0  # records in the spool
        self._last_frame: int | None = None
        self._last_time: float | None = None
        self._data_offset: int | None = None  # spool header size, once the spool exists
        self._from_file: int | None = None  # resume_from kept this many frames of the finished file (spool not made yet)
        self._replace_final = False  # close() must rewrite (or remove) an existing target
        self._closed = False
        self._result: Path | None = None

    @property
    def n_frames(self) -> int:
        return self._n if self._from_file is None else self._from_file

    # ------------------------------------------------------------------ spool
    def _header(self) -> bytes:
        info = {"format": FORMAT + "-spool", "format_version": FORMAT_VERSION, "n_vertices": self.V,
                "topology_sha256": self.topology_sha256, "record_bytes": self.dtype.itemsize}
        body = json.dumps(info).encode("utf-8")
        body += b" " * ((-(len(SPOOL_MAGIC) + 4 + len(body))) % 64)  # records start on a 64-byte boundary
        return SPOOL_MAGIC + struct.pack("<I", len(body)) + body

    def _new_spool(self) -> None:
        header = self._header()
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool, "wb", buffering=0) as fh:
            fh.write(header)
        self._data_offset = len(header)
        self._n = 0

    def _append(self, records: np.ndarray) -> None:
        with open(self.spool, "ab", buffering=0) as fh:
            fh.write(records.tobytes())
        self._n += len(records)

    def _spool_offset(self) -> int:
        """Where the spool's records start (its header size); the spool must exist."""
        if self._data_offset is None:
            raise WriterError(f"{self.path}: no spool yet")
        return self._data_offset

    def _records(self) -> np.ndarray:
        """The spool's records as a read-only memory map, (n,) of :func:`_record_dtype`."""
        if self._n == 0:
            return np.zeros(0, self.dtype)
        return np.memmap(self.spool, dtype=self.dtype, mode="r", offset=self._spool_offset(), shape=(self._n,))

    def _materialise(self) -> None:
        """After resume_from kept frames of the finished file: copy them into a fresh spool."""
        keep, self._from_file = self._from_file, None
        self._new_spool()
        if not keep:
            return
        old = load_mesh_sequence(self.path)
        try:
            step = max(1, _CHUNK_BYTES // self.dtype.itemsize)
            for a in range(0, keep, step):
                b = min(keep, a + step)
                rec = np.zeros(b - a, self.dtype)
                rec["frame"], rec["time_s"], rec["err"] = old.frames[a:b], old.times_s[a:b], old.max_abs_error_m
                rec["offset"], rec["scale"], rec["q"] = old.offset[a:b], old.scale[a:b], old.quantised[a:b]
                self._append(rec)
        finally:
            old.close()

    # ------------------------------------------------------------------ public API
    def add(self, frame: int, time_s: float, vertices: np.ndarray) -> None:
        """Append one frame: its input frame number (increasing), time (s) and vertices (V, 3) metres."""
        if self._closed:
            raise WriterError(f"{self.path}: the mesh-sequence writer is closed")
        v = np.asarray(vertices)
        if v.shape != (self.V, 3):
            raise ValueError(f"{self.path}: vertices must be ({self.V}, 3), got {v.shape}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{self.path}: frame {frame}: vertices contain NaN or infinite values")
        if self._last_frame is not None and not int(frame) > self._last_frame:
            raise ValueError(f"{self.path}: frame {frame} is not after the previous frame {self._last_frame}")
        if self._from_file is not None:
            self._materialise()
        elif self._data_offset is None:
            self._new_spool()
        offset, scale, q, err = quantise(v)
        rec = np.zeros(1, self.dtype)
        rec["frame"], rec["time_s"], rec["err"], rec["offset"], rec["scale"] = int(frame), float(time_s), err, offset, scale
        rec["q"][0] = q
        self._append(rec)
        self._last_frame, self._last_time = int(frame), float(time_s)
        self._replace_final = True

    def resume_from(self, before_frame: int) -> int:
        """Continue an earlier writer of the same target: keep its frames numbered < ``before_frame``.

        Takes the unfinished spool when there is one (it is newer than any finished file: the
        spool is removed only once the file is written), else the finished file. Call before
        :meth:`add`. The topology and vertex count must match this writer's. Returns the number of
        frames kept; frames at or after ``before_frame`` are dropped from the target on
        :meth:`close` (a target left with no frames is removed).
        """
        if self._n or self._data_offset is not None or self._from_file is not None:
            raise WriterError(f"{self.path}: resume_from must be called before the first add()")
        before = int(before_frame)
        if self.spool.exists():
            info, data_offset = read_spool_header(self.spool)
            self._check_same(self.spool, info["n_vertices"], info["topology_sha256"])
            n = max(0, (self.spool.stat().st_size - data_offset) // self.dtype.itemsize)  # a cut record is dropped
            frames = times = np.zeros(0)
            if n:
                mm = np.memmap(self.spool, dtype=self.dtype, mode="r", offset=data_offset, shape=(n,))
                frames, times = np.array(mm["frame"]), np.array(mm["time_s"])
                del mm  # no map of the spool is alive when it is cut below
            keep = _increasing_prefix_before(frames, before)
            os.truncate(self.spool, data_offset + keep * self.dtype.itemsize)
            self._data_offset, self._n = data_offset, keep
            if keep:
                self._last_frame, self._last_time = int(frames[keep - 1]), float(times[keep - 1])
            self._replace_final = True
            log.info("%s: resumed from the unfinished spool, %d frames kept", self.path, keep)
            return keep
        if self.path.exists():
            old = load_mesh_sequence(self.path)
            try:
                self._check_same(self.path, old.n_vertices, old.meta.get("topology_sha256"))
                keep = _increasing_prefix_before(old.frames, before)
                if keep:
                    self._last_frame, self._last_time = int(old.frames[keep - 1]), float(old.times_s[keep - 1])
                    self.extra_meta = {**{k: v for k, v in old.meta.items() if k not in _OWN_META}, **self.extra_meta}
                self._from_file = keep
                self._replace_final = keep < old.n_frames
            finally:
                old.close()
            return keep
        return 0

    def _check_same(self, source: Path, n_vertices: Any, topo: Any) -> None:
        if int(n_vertices) != self.V or topo != self.topology_sha256:
            raise WriterError(f"{source}: its mesh ({n_vertices} vertices, topology {str(topo)[:12]}) differs from this "
                              f"track's ({self.V} vertices, topology {self.topology_sha256[:12]}); cannot resume")

    def truncate_from(self, frame: int) -> None:
        """Drop the frames numbered >= ``frame`` (those of a frame in flight when a run stopped)."""
        if self._from_file is not None:
            self._materialise()
        if not self._n:
            return
        rec = self._records()
        frames, times = np.array(rec["frame"]), np.array(rec["time_s"])
        del rec
        keep = _increasing_prefix_before(frames, int(frame))
        if keep < self._n:
            os.truncate(self.spool, self._spool_offset() + keep * self.dtype.itemsize)
            self._n = keep
            self._last_frame = int(frames[keep - 1]) if keep else None
            self._last_time = float(times[keep - 1]) if keep else None
            self._replace_final = True

    def close(self) -> Path | None:
        """Write the file (atomically) and remove the spool; idempotent.

        Returns the path, or ``None`` when the sequence has no frames: then nothing is written,
        and a target this writer resumed and emptied is removed (its frames were all dropped).
        """
        if self._closed:
            return self._result
        self._closed = True
        if self._from_file is not None and not self._replace_final:  # resumed, nothing to change
            self._result = self.path if self._from_file else None
            return self._result
        if self._from_file is not None:
            self._materialise()
        if self._n == 0:
            if self._replace_final and self.path.exists():
                self.path.unlink()
            self.spool.unlink(missing_ok=True)
            if not self._replace_final:
                log.warning("%s: no frames were added; no mesh sequence written", self.path)
            return None
        os.truncate(self.spool, self._spool_offset() + self._n * self.dtype.itemsize)  # a record cut by Ctrl-C
        self._write_npz()
        self.spool.unlink(missing_ok=True)
        self._result = self.path
        return self.path

    def abort(self) -> None:
        """Drop the frames added and the spool; the target is left as it was."""
        self._closed = True
        if self._data_offset is not None:
            self.spool.unlink(missing_ok=True)

    def __enter__(self) -> "MeshSequenceWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ the npz
    def _write_npz(self) -> None:
        rec = self._records()
        n = len(rec)
        frames = np.ascontiguousarray(rec["frame"], dtype=np.int64)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "units": "m",
            "coordinate_frame": self.coordinate_frame,
            "encoding": "vertices[n] = offset[n] + scale[n] * vertices_q[n] (float32); vertices_q int16 (N, V, 3), "
                        "offset (N, 3) float32 = centre of the frame's bounding box, scale (N,) float32 = "
                        "half its largest side / 32767",
            "max_abs_error_m": float(np.max(rec["err"])),
            "n_vertices": self.V,
            "n_triangles": int(len(self.triangles)),
            "n_frames": int(n),
            "first_frame": int(frames[0]),
            "last_frame": int(frames[-1]),
            "has_uv": self.uv is not None,
            "topology_sha256": self.topology_sha256,
            "writer": _writer_version(),
            **self.extra_meta,
        }
        small: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta)), "triangles": self.triangles}
        if self.uv is not None and self.triangles_uv is not None:  # both or neither (__init__)
            small.update(uv=self.uv, triangles_uv=self.triangles_uv)
        small.update(frames=frames, times_s=np.ascontiguousarray(rec["time_s"], dtype=np.float64),
                     offset=np.ascontiguousarray(rec["offset"], dtype=np.float32),
                     scale=np.ascontiguousarray(rec["scale"], dtype=np.float32))
        q_bytes = n * self.V * 3 * 2
        with atomic_file(self.path) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in small.items():
                with zf.open(f"{name}.npy", "w") as m:
                    np.lib.format.write_array(m, np.require(arr, requirements='C'), allow_pickle=False)
            with zf.open("vertices_q.npy", "w", force_zip64=q_bytes > (1 << 30)) as m:
                np.lib.format.write_array_header_1_0(
                    m, {"descr": np.lib.format.dtype_to_descr(np.dtype("<i2")), "fortran_order": False,
                        "shape": (n, self.V, 3)})
                step = max(1, _CHUNK_BYTES // self.dtype.itemsize)
                for a in range(0, n, step):
                    m.write(np.ascontiguousarray(rec["q"][a:a + step], dtype="<i2").tobytes())
        del rec


#: Metadata keys the writer computes itself (not copied from an earlier file on resume).
_OWN_META = frozenset({"format", "format_version", "units", "coordinate_frame", "encoding", "max_abs_error_m",
                       "n_vertices", "n_triangles", "n_frames", "first_frame", "last_frame", "has_uv",
                       "topology_sha256", "writer"})


def _writer_version() -> str:
    from importlib import metadata

    try:
        return f"mlanet {metadata.version('mlanet')}"
    except metadata.PackageNotFoundError:
        return "mlanet"


def _increasing_prefix_before(frames: np.ndarray, before: int) -> int:
    """Length of the longest prefix of ``frames`` that increases strictly and stays < ``before``."""
    frames = np.asarray(frames, dtype=np.int64)
    if not len(frames):
        return 0
    ok = frames < before
    ok[1:] &= np.diff(frames) > 0
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if len(bad) else len(frames)


def read_spool_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    """``(info, data_offset)`` of a spool file (``<target>.partial``); WriterError names a damaged one."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SPOOL_MAGIC) + 4)
            if len(head) < len(SPOOL_MAGIC) + 4 or not head.startswith(SPOOL_MAGIC):
                raise WriterError(f"{path}: not a mesh-sequence spool")
            (n,) = struct.unpack("<I", head[len(SPOOL_MAGIC):])
            info = json.loads(fh.read(n).decode("utf-8"))
        return info, len(SPOOL_MAGIC) + 4 + n
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise WriterError(f"{path}: cannot read the mesh-sequence spool ({exc})") from None


# ============================================================================ reading
class MeshSequence:
    """A mesh sequence read by :func:`load_mesh_sequence` (see the module docstring).

    Attributes:
        path: the file.
        meta: its metadata (dict; see the module docstring).
        triangles: (F, 3) int32, counter-clockwise front faces.
        uv: (T, 2) float32, origin bottom-left, or None. triangles_uv: (F, 3) int32 or None.
        frames: (N,) int64 input frame numbers, increasing. times_s: (N,) float64 seconds.
        offset: (N, 3) float32 metres. scale: (N,) float32 metres.
        quantised: (N, V, 3) int16 (a read-only memory map when the file is uncompressed).
    """

    def __init__(self, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray], quantised: np.ndarray) -> None:
        self.path = path
        self.meta = meta
        self.triangles = arrays["triangles"]
        self.uv = arrays.get("uv")
        self.triangles_uv = arrays.get("triangles_uv")
        self.frames = arrays["frames"]
        self.times_s = arrays["times_s"]
        self.offset = arrays["offset"]
        self.scale = arrays["scale"]
        self.quantised = quantised
        self._closed = False

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_vertices(self) -> int:
        return int(self.meta["n_vertices"])

    def _check_open(self) -> None:
        if self._closed:
            raise WriterError(f"{self.path}: the mesh sequence was closed")

    @property
    def max_abs_error_m(self) -> float:
        """Largest difference (metres, per coordinate) between decoded and written vertices."""
        return float(self.meta["max_abs_error_m"])

    def __len__(self) -> int:
        return self.n_frames

    def vertices_at(self, i: int) -> np.ndarray:
        """(V, 3) float32 metres of the ``i``-th stored frame (``frames[i]`` is its frame number)."""
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"{self.path}: frame position {i} out of range for {self.n_frames} frames")
        self._check_open()
        return self.offset[i] + self.scale[i] * np.asarray(self.quantised[i], dtype=np.float32)

    def index_of(self, frame: int) -> int:
        """Position of input frame number ``frame``; KeyError when the sequence has no such frame."""
        i = int(np.searchsorted(self.frames, frame))
        if i >= self.n_frames or self.frames[i] != frame:
            raise KeyError(f"{self.path}: frame {frame} is not in the sequence (frames {self.frames[:1].tolist()}"
                           f"..{self.frames[-1:].tolist()}, every {self.meta.get('mesh_every', 1)})")
        return i

    @property
    def vertices(self) -> np.ndarray:
        """(N, V, 3) float32 metres: every frame decoded at once (N * V * 12 bytes; see :meth:`iter_vertices`)."""
        self._check_open()
        return self.offset[:, None, :] + self.scale[:, None, None] * np.asarray(self.quantised, dtype=np.float32)

    def iter_vertices(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """``(frame, time_s, vertices (V, 3) float32)`` for every stored frame, one at a time."""
        for i in range(self.n_frames):
            yield int(self.frames[i]), float(self.times_s[i]), self.vertices_at(i)

    def to_obj(self, i: int, path: str | os.PathLike[str], *, y_up: bool = True, **kwargs: Any) -> Path:
        """Write the ``i``-th stored frame as OBJ with :func:`.meshes.write_obj` (y-up by default, UVs
        when stored; ``kwargs`` go to it, e.g. ``texture_png``). Only for sequences in the OpenCV
        camera frame, which ``write_obj`` expects."""
        from mlanet.edge.writers.meshes import write_obj

        if self.meta.get("coordinate_frame") != OPENCV_CAMERA:
            raise WriterError(f"{self.path}: vertices are in {self.meta.get('coordinate_frame')!r}, not the OpenCV "
                              "camera frame write_obj expects")
        comment = f"{self.path.name} frame {int(self.frames[i])} t={float(self.times_s[i]):.6f} s"
        return write_obj(path, self.vertices_at(i), self.triangles, self.uv, self.triangles_uv, y_up=y_up,
                         comment=kwargs.pop("comment", comment), **kwargs)

    def close(self) -> None:
        """Drop the memory map of the vertex block (the other arrays stay usable)."""
        if isinstance(self.quantised, np.memmap):
            self.quantised = np.zeros((0,) + self.quantised.shape[1:], np.int16)
            self._closed = True

    def __enter__(self) -> "MeshSequence":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"MeshSequence({self.path.name}: {self.n_frames} frames {self.meta.get('first_frame')}.."
                f"{self.meta.get('last_frame')}, {self.n_vertices} vertices, {len(self.triangles)} triangles)")


def load_mesh_sequence(path: str | os.PathLike[str], *, mmap: bool = True) -> MeshSequence:
    """Read a mesh sequence written by :class:`MeshSequenceWriter` (``*.mlmesh.npz``).

    The vertex block is memory-mapped (``mmap=False`` reads it into memory); everything else is
    read and checked. Raises :class:`~mlanet.edge.writers.WriterError` with one line naming the
    file for: a missing file, an unfinished spool (the run stopped before finishing it; ``mlanet-video
    --resume`` finishes it), a truncated or damaged file, another format or a newer version, and
    arrays that disagree with the metadata.
    """
    path = Path(path)
    if not path.exists():
        spool = spool_path(path)
        hint = (f"; only its unfinished spool {spool.name} exists (the run stopped before finishing the file: "
                "run the same mlanet-video command with --resume)") if spool.exists() else ""
        raise WriterError(f"{path}: no such mesh-sequence file{hint}")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SPOOL_MAGIC))
    except OSError as exc:
        raise WriterError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head == SPOOL_MAGIC:
        raise WriterError(f"{path}: an unfinished mesh-sequence spool, not a finished file (the run stopped before "
                          "finishing it: run the same mlanet-video command with --resume)")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = set(z.files)
            if "meta" not in names:
                raise WriterError(f"{path}: not an MLANet mesh sequence (no meta array)")
            meta = json.loads(str(z["meta"][()]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                fmt = meta.get("format") if isinstance(meta, dict) else None
                raise WriterError(f"{path}: not an MLANet mesh sequence (format {fmt!r})")
            if int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise WriterError(f"{path}: mesh-sequence format version {meta['format_version']} is newer than this "
                                  f"reader's {FORMAT_VERSION}; update mlanet")
            wanted = ["triangles", "frames", "times_s", "offset", "scale", "vertices_q"]
            if meta.get("has_uv"):
                wanted += ["uv", "triangles_uv"]
            missing = [k for k in wanted if k not in names]
            if missing:
                raise WriterError(f"{path}: incomplete mesh sequence, missing {missing}")
            arrays = {k: z[k] for k in wanted if k != "vertices_q"}
            quantised = _map_member(path, "vertices_q.npy") if mmap else None
            if quantised is None:
                quantised = z["vertices_q"]
    except WriterError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise WriterError(f"{path}: not a complete mesh-sequence file (truncated or damaged: "
                          f"{type(exc).__name__}: {exc})") from None
    _check_arrays(path, meta, arrays, quantised)
    return MeshSequence(path, meta, arrays, quantised)


def _map_member(path: Path, name: str) -> np.ndarray | None:
    """A read-only memory map of the stored (uncompressed) .npy member ``name``, or None if compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(_ZIP_LOCAL_HEADER.size)
        if len(local) != _ZIP_LOCAL_HEADER.size:
            raise EOFError(f"{name}: cut local header")
        fields = _ZIP_LOCAL_HEADER.unpack(local)
        if fields[0] != b"PK\x03\x04":
            raise ValueError(f"{name}: bad local header")
        start = info.header_offset + _ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1]
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        data = fh.tell()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if fortran or dtype.hasobject or data + nbytes > start + info.compress_size:
        raise ValueError(f"{name}: unexpected array layout or size")
    if nbytes == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data, shape=tuple(shape))


def _check_arrays(path: Path, meta: dict[str, Any], a: dict[str, np.ndarray], q: np.ndarray) -> None:
    n, V = int(meta.get("n_frames", -1)), int(meta.get("n_vertices", -1))
    checks = [
        (q.dtype == np.int16 and q.shape == (n, V, 3), f"vertices_q is {q.shape} {q.dtype}, meta says ({n}, {V}, 3) int16"),
        (a["frames"].shape == (n,) and a["times_s"].shape == (n,), "frames/times_s do not have n_frames rows"),
        (a["offset"].shape == (n, 3) and a["scale"].shape == (n,), "offset/scale do not have n_frames rows"),
        (a["triangles"].ndim == 2 and a["triangles"].shape[1:] == (3,) and len(a["triangles"]) == meta.get("n_triangles"),
         f"triangles are {a['triangles'].shape}, meta says {meta.get('n_triangles')}"),
        (n == 0 or (int(a["frames"][0]) == meta.get("first_frame") and int(a["frames"][-1]) == meta.get("last_frame")),
         "frames disagree with first_frame/last_frame"),
        (bool(np.all(np.diff(a["frames"]) > 0)), "frame numbers are not increasing"),
    ]
    if len(a["triangles"]):
        checks.append((0 <= int(a["triangles"].min()) and int(a["triangles"].max()) < V, "triangle indices out of range"))
    for ok, what in checks:
        if not ok:
            raise WriterError(f"{path}: inconsistent mesh sequence: {what}")
