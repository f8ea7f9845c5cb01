"""The protocol every output format of ``mlanet-video`` follows, what they share, and the registry.

An output format is one :class:`OutputSink`: a small class (one module of this package) built
by its factory from the run's :class:`RunContext`, then called by the coordinator
(:class:`mlanet.edge.outputs.VideoRunOutputs`) in this order::

    resumable_frames()      only with --resume, before begin: frames its previous files hold
    begin(resume_from)      resume_from: None (a new run) or the frame the run continues at
    write(result, time_s)   every frame, in input order
    checkpoint()            every CHECKPOINT_EVERY frames (the rows' parts, CSV flush, ...): cheap,
                            its cost must not grow with the frames done
    finish(status)          once, also after Ctrl-C or a failure: finalise for ctx.frames_done

The coordinator keeps the parameter rows (:class:`ParamRows`, shared through ``ctx.rows``),
frame times, checkpoint timing, run.json and its status; each sink owns its files, their
atomic writes and their own resume. :func:`register_sink` adds a format (see
:mod:`mlanet.edge.sinks`, which registers the built-in ones); :func:`sinks_for` turns
:class:`~mlanet.edge.outputs.OutputOptions` into the sinks of one run.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from mlanet.params import ParamLayout
from mlanet.edge.types import FaceFit, FrameResult

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.outputs import OutputOptions
    from mlanet.edge.writers.tables import ArkitMapping

#: ``(frame_rgb (H, W, 3) uint8, face) -> (T, T, 3) uint8`` photo texture of the face (GLB ``--texture``).
TextureFn = Callable[[np.ndarray, FaceFit], np.ndarray]

#: ``(OutputOptions) -> bool``: whether a sink is enabled / reads full meshes.
OptionsPredicate = Callable[["OutputOptions"], bool]

#: Arrays of params.npz with one row per face per frame.
#: ``source_name`` (str) is the file each row came from: the photo's file name for photo folders
#: and single images (``Frame.name``), else the input file's name.
PARAMS_ARRAYS = ("frame_index", "time_s", "track_id", "params", "raw_params", "boxes", "landmarks2d", "source_name")


class ParamRows:
    """One row per face per frame of the whole run (params.npz, tracks.json, GLBs and resume read it).
    Columns are :data:`PARAMS_ARRAYS`; :meth:`arrays` gives them as arrays.

    Rows a checkpoint has written to a file (the params sink's parts) are *spilled* (:meth:`spill`):
    only their frame indices and track ids stay in memory (16 bytes a row), and :meth:`arrays` reads
    them back from their files. Held in memory a row takes about 2.8 kB (P = 198: ~300 MB per
    face-hour at 30 fps, measured with tracemalloc); spilled, a run's memory no longer grows with its
    length. Only the end, which writes the GLBs and params.npz from all rows, holds them at once.
    """

    def __init__(self, layout: ParamLayout) -> None:
        self.layout = layout
        self.cols: dict[str, list[Any]] = {k: [] for k in PARAMS_ARRAYS}  # the rows held in memory
        self._spilled: list[tuple[Path, int]] = []  # (file, rows) of the spilled rows, in row order
        self._spilled_frames = array("q")  # frame index and track id of every spilled row
        self._spilled_tracks = array("q")

    def __len__(self) -> int:
        return len(self._spilled_frames) + len(self.cols["frame_index"])

    @property
    def n_spilled(self) -> int:
        """Rows whose data live in files (the first ``n_spilled`` rows)."""
        return len(self._spilled_frames)

    @property
    def n_in_memory(self) -> int:
        return len(self.cols["frame_index"])

    def add(self, result: FrameResult, time_s: float) -> None:
        """Append one row per face of ``result`` (``time_s``: seconds since the input's frame 0)."""
        frame = result.frame
        for f in result.faces:
            c = self.cols
            c["frame_index"].append(frame.index)
            c["time_s"].append(time_s)
            c["track_id"].append(f.track_id)
            c["params"].append(np.asarray(f.params, np.float32))
            c["raw_params"].append(np.asarray(f.raw_params, np.float32))
            c["boxes"].append(np.array([f.box.x0, f.box.y0, f.box.size], np.float32))
            c["landmarks2d"].append(np.asarray(f.landmarks2d, np.float32))
            c["source_name"].append(frame.name or Path(frame.source).name)

    def n_before(self, frame: int) -> int:
        """Rows of frames ``< frame`` (rows are in frame order: frames arrive in input order)."""
        n = bisect.bisect_left(self._spilled_frames, frame)
        if n < self.n_spilled:
            return n
        return n + bisect.bisect_left(self.cols["frame_index"], frame)

    def keep_before(self, frame: int) -> None:
        """Drop the rows of frames ``>= frame`` (a frame in flight when the run stopped, or past a resume point).

        Raises:
            RuntimeError: spilled rows would be dropped (they are written for frames before a checkpoint).
        """
        if self._spilled_frames and self._spilled_frames[-1] >= frame:
            raise RuntimeError(f"ParamRows: rows of frames >= {frame} are already in {self._spilled[-1][0]}")
        if self.n_before(frame) != len(self):
            idx = self.cols["frame_index"]
            self.cols = {k: [v for f, v in zip(idx, vals) if f < frame] for k, vals in self.cols.items()}

    def max_track_id(self, default: int = -1) -> int:
        """The largest track id of any row (``default`` without rows)."""
        return int(max(max(self._spilled_tracks, default=default), max(self.cols["track_id"], default=default)))

    def spill(self, stop: int, path: Path) -> None:
        """Rows ``n_spilled:stop`` (held in memory) are in ``path`` (a file with their :data:`PARAMS_ARRAYS` arrays,
        those rows only, in order): keep only their frame indices and track ids; :meth:`arrays` reads the rest back."""
        m = stop - self.n_spilled
        if m < 0 or m > self.n_in_memory:
            raise ValueError(f"ParamRows.spill: rows {self.n_spilled}:{stop} are not held in memory")
        if m == 0:
            return
        self._spilled_frames.extend(int(v) for v in self.cols["frame_index"][:m])
        self._spilled_tracks.extend(int(v) for v in self.cols["track_id"][:m])
        self.cols = {k: v[m:] for k, v in self.cols.items()}
        self._spilled.append((Path(path), m))

    def replace_files(self, path: Path) -> None:
        """Every spilled row is now read from ``path`` (one file of all of them, e.g. params.npz written from
        :meth:`arrays`), so the files they came from may be removed."""
        if self._spilled:
            self._spilled = [(Path(path), self.n_spilled)]

    def tracks(self, frames_done: int) -> dict[int, dict[str, Any]]:
        """Per track id (ascending), over the rows of frames ``< frames_done``: ``track_id``,
        ``frames``, ``first_frame``, ``last_frame``, ``source_name`` (the photo, or the input
        file), ``identity`` and ``albedo`` (lists: the running mean at the track's last frame), and
        ``rows`` ((n,) int indices into :meth:`arrays`; not JSON)."""
        a = self.arrays(frames_done)
        s = self.layout.slices()
        tracks = {}
        for tid in sorted(set(a["track_id"].tolist())):
            m = a["track_id"] == tid
            p = a["params"][m]
            tracks[tid] = {
                "track_id": tid,
                "frames": int(m.sum()),
                "first_frame": int(a["frame_index"][m].min()),
                "last_frame": int(a["frame_index"][m].max()),
                "source_name": str(a["source_name"][m][0]),
                "identity": p[-1, s["identity"]].tolist(),
                "albedo": p[-1, s["albedo"]].tolist(),
                "rows": np.flatnonzero(m),
            }
        return tracks

    def arrays(self, frames_done: int) -> dict[str, np.ndarray]:
        """The rows of frames ``< frames_done`` as params.npz arrays (N rows; ``params``/``raw_params``
        (N, P) float32, ``boxes`` (N, 3) float32 x0, y0, size in pixels, ``landmarks2d`` (N, 68, 2)
        float32 pixels, ``time_s`` (N,) float64 seconds, ``frame_index``/``track_id`` (N,) int64,
        ``source_name`` (N,) unicode) plus ``frames_done`` () int64. Drops later rows (Ctrl-C).
        Spilled rows are read back from their files."""
        self.keep_before(frames_done)
        out = self.row_arrays(0, len(self))
        out["frames_done"] = np.array(frames_done, np.int64)
        return out

    def row_arrays(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` as the :data:`PARAMS_ARRAYS` arrays of :meth:`arrays` (no ``frames_done``);
        costs what the slice holds, not the whole run (the params checkpoint's parts), unless it reaches
        into the spilled rows, which are read from their files."""
        P = self.layout.total
        empty = {"frame_index": (0,), "time_s": (0,), "track_id": (0,), "params": (0, P), "raw_params": (0, P),
                 "boxes": (0, 3), "landmarks2d": (0, 68, 2)}
        k0 = self.n_spilled
        out = {}
        for k in empty:
            vals = self.cols[k][max(start - k0, 0):max(stop - k0, 0)]
            out[k] = np.stack(vals) if vals else np.zeros(empty[k], np.float32)
        out["source_name"] = np.array([str(v) for v in self.cols["source_name"][max(start - k0, 0):max(stop - k0, 0)]],
                                      dtype=str)  # (N,) unicode
        if start < k0:
            spilled = self._read_spilled(start, min(stop, k0))
            out = {k: np.concatenate([spilled[k], out[k]]) if len(out[k]) else spilled[k] for k in out}
        out["frame_index"] = out["frame_index"].astype(np.int64)
        out["track_id"] = out["track_id"].astype(np.int64)
        out["time_s"] = out["time_s"].astype(np.float64)
        return out

    def _read_spilled(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Spilled rows ``start:stop`` from their files."""
        chunks: dict[str, list[np.ndarray]] = {k: [] for k in PARAMS_ARRAYS}
        first = 0
        for path, n in self._spilled:
            lo, hi = max(start, first), min(stop, first + n)
            if lo < hi:
                with np.load(path, allow_pickle=False) as z:
                    if len(z["frame_index"]) < n:
                        raise RuntimeError(f"{path}: holds {len(z['frame_index'])} rows, {n} were spilled to it")
                    for k in PARAMS_ARRAYS:
                        chunks[k].append(z[k][lo - first:hi - first])
            first += n
        return {k: np.concatenate(v) for k, v in chunks.items()}

    def extend(self, arrays: Mapping[str, np.ndarray], missing_source_name: str) -> None:
        """Append rows read back from params.npz or a checkpoint part (the :data:`PARAMS_ARRAYS` arrays,
        later frames than the rows held); a file from before ``source_name`` was recorded gets
        ``missing_source_name`` (the input's file name)."""
        n = len(arrays["frame_index"])
        for k in PARAMS_ARRAYS:
            self.cols[k].extend(arrays[k] if k in arrays else [missing_source_name] * n)


@dataclass
class RunContext:
    """What the sinks of one run share (built by the coordinator; sinks read it, and write only
    ``run_info`` entries of their own and ``track_files``).

    Attributes:
        out_dir: the output folder (exists).
        face_model: the MorphableModel the parameters belong to (triangles, uv, shape(), ...).
        layout: its parameter layout (slices of ``params``).
        arkit: :class:`~mlanet.edge.writers.tables.ArkitMapping` of the model's expressions.
        options: the run's :class:`~mlanet.edge.outputs.OutputOptions`.
        source_name: the input's name (as recorded in run.json).
        fps: frames per second of the input (25 when it has none).
        run_info: run.json's content (a sink may add its own keys, e.g. ``encoder``).
        rows: the parameter rows of the run (see :class:`ParamRows`).
        start_frame: the frame the run (re)started at (0 for a new run).
        frames_done: frames fully written so far (the coordinator advances it after every sink wrote).
        texture_fn: ``(frame_rgb, FaceFit) -> (T, T, 3) uint8`` photo texture, or None (set after construction).
        track_files: per track id, files a sink wrote for it at finish (``{"glb": "tracks/track_000.glb"}``,
            paths relative to ``out_dir``), listed in tracks.json in key order.
    """

    out_dir: Path
    face_model: MorphableModel
    layout: ParamLayout
    arkit: ArkitMapping
    options: OutputOptions
    source_name: str
    fps: float
    run_info: dict[str, Any]
    rows: ParamRows
    start_frame: int = 0
    frames_done: int = 0
    texture_fn: TextureFn | None = None
    track_files: dict[int, dict[str, str]] = field(default_factory=dict)
    _topology: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def topology(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(triangles (F, 3) int, uv (U, 2) float, triangles_uv (F, 3) int)`` of the face model, as numpy (cached)."""
        if self._topology is None:
            fm = self.face_model
            self._topology = (fm.triangles.cpu().numpy(), fm.uv.cpu().numpy(), fm.triangles_uv.cpu().numpy())
        return self._topology


@runtime_checkable
class OutputSink(Protocol):
    """One output format of a run (see the module docstring for the call order).

    Every method may raise; the coordinator finishes every sink on its own (an error in one
    does not stop the others) and records the first error in run.json.
    """

    def resumable_frames(self) -> int | None:
        """--resume only, before :meth:`begin`: how many leading frames the previous run's files
        of this format hold (the run continues at the smallest answer), or None (no limit)."""
        ...

    def begin(self, resume_from: int | None) -> None:
        """Open the files: ``resume_from`` None starts them anew; an int ``k`` continues the
        previous run's files, keeping its frames ``< k``."""
        ...

    def write(self, result: FrameResult, time_s: float) -> None:
        """Write one frame (``time_s``: seconds since the input's frame 0)."""
        ...

    def checkpoint(self) -> None:
        """Make the files valid for ``ctx.frames_done`` frames as far as the format allows cheaply."""
        ...

    def finish(self, status: str) -> None:
        """Finalise the files for ``ctx.frames_done`` frames (``status``: what run.json will say)."""
        ...


class SinkBase:
    """Convenience base: keeps ``self.ctx`` and does nothing in every :class:`OutputSink` method."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def resumable_frames(self) -> int | None:
        return None

    def begin(self, resume_from: int | None) -> None:
        pass

    def write(self, result: FrameResult, time_s: float) -> None:
        pass

    def checkpoint(self) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


@dataclass(frozen=True)
class SinkSpec:
    """A registered output format: ``factory(ctx) -> OutputSink``; ``enabled_by(options) -> bool``;
    ``flag``: the mlanet-video flag that turns on an opt-in format (with ``help``), or None;
    ``needs_meshes(options) -> bool``: whether its ``write`` reads ``FaceFit.vertices`` (full meshes)."""

    name: str
    factory: Callable[[RunContext], OutputSink]
    enabled_by: OptionsPredicate
    flag: str | None = None
    help: str | None = None
    needs_meshes: OptionsPredicate = lambda options: False


_REGISTRY: dict[str, SinkSpec] = {}


def register_sink(name: str, factory: Callable[[RunContext], OutputSink], *,
                  enabled_by: OptionsPredicate | None = None, flag: str | None = None,
                  help: str | None = None, needs_meshes: OptionsPredicate | None = None) -> SinkSpec:
    """Add an output format; sinks are called in registration order.

    Args:
        name: unique name (also the key of ``OutputOptions.extra`` for an opt-in format).
        factory: ``(RunContext) -> OutputSink``, called once per run.
        enabled_by: ``(OutputOptions) -> bool``; default: always for a format without ``flag``,
            else when ``name in options.extra``.
        flag: e.g. ``"--frame-log"``: mlanet-video gets this flag (store_true) and puts ``name``
            into ``OutputOptions.extra`` when it is given.
        help: the flag's help text.
        needs_meshes: ``(OutputOptions) -> bool``: the sink reads each face's full mesh
            (``FaceFit.vertices``; decoded only when some enabled sink or the overlay needs it).
            Default: never.
    """
    if name in _REGISTRY:
        raise ValueError(f"output sink {name!r} is already registered")
    if enabled_by is None:
        enabled_by = (lambda o: name in o.extra) if flag else (lambda o: True)
    spec = _REGISTRY[name] = SinkSpec(name, factory, enabled_by, flag, help,
                                      needs_meshes or (lambda options: False))
    return spec


def unregister_sink(name: str) -> None:
    """Remove a registered format (tests, plug-ins)."""
    _REGISTRY.pop(name, None)


def registered_sinks() -> tuple[SinkSpec, ...]:
    """Every registered format, in call order."""
    return tuple(_REGISTRY.values())


def meshes_needed(options: OutputOptions) -> bool:
    """Whether any sink ``options`` enables reads full meshes (``PipelineCfg.meshes`` of mlanet-video)."""
    return any(spec.enabled_by(options) and spec.needs_meshes(options) for spec in _REGISTRY.values())


def sinks_for(options: OutputOptions, ctx: RunContext) -> list[OutputSink]:
    """The sinks of one run: every registered format that ``options`` enables, built from ``ctx``."""
    return [spec.factory(ctx) for spec in _REGISTRY.values() if spec.enabled_by(options)]
