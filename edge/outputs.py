"""Everything ``mlanet-video`` writes for one run, with checkpoints and resume.

Layout of the output folder::

    overlay.mp4                     H.264 overlay video (render mode chosen by --mode); frame k is input
                                    frame k (frames lost to damage are black; photos of another size
                                    than the first are letterboxed into its frame)
    params.npz                      one row per face per frame (see PARAMS_ARRAYS) + frames_done
    tracks.json                     per track: frames, mean identity/albedo, files
    blendshapes.csv                 frame, time_s, track_id, ARKit weights (expression shapes with ARKit names)
    meshes/track_003.mlmesh.npz     the track's mesh sequence (default, --meshes sequence): topology once,
                                    int16 vertices per frame, metres, camera frame; see
                                    writers.mesh_sequence (load_mesh_sequence); meshes/track_003.mlmesh.npz.partial
                                    is its spool while the run is going (never a finished file)
    meshes/track_003/frame_000120.obj   per-frame meshes with UVs on request (--meshes obj|ply; y-up, metres;
                                    see writers.meshes)
    meshes/IMG_0042.jpg/track_003.obj   a photo folder / single image: one OBJ (PLY with --meshes ply) per
                                    face per photo, in one folder per photo (a photo is not a sequence)
    tracks/track_003.glb            the track's mesh + ARKit morph targets + head pose, animated over time
    run.json                        what was run (input, weights metadata, face model, camera, config),
                                    status ("running", "complete", "interrupted", "input_damaged",
                                    "failed" with a one-line "reason"), frames_done, stage timing

Each file is written by its own sink (one module per format in :mod:`mlanet.edge.sinks`, called
in registration order; a new format is one module there plus one ``register_sink`` line);
:class:`VideoRunOutputs` coordinates them and owns the parameter rows, checkpoint timing and run.json.

Every file is written atomically (temporary file + rename). ``run.json`` and the parameter rows
are checkpointed every :data:`CHECKPOINT_EVERY` frames (run.json also when the run starts; the rows
as parts holding only the frames since the previous checkpoint, see :mod:`mlanet.edge.sinks.params`,
so a checkpoint's cost does not grow with the run); Ctrl-C
and a failure (a full disk, a damaged artifact) finalise all files for the frames done, as far as
they can, and only ``complete`` says the run ended normally. ``--resume`` continues from
``frames_done`` (also after a failure): rows at or after it are discarded, the overlay
video's first frames are re-encoded into the new file (an H.264 stream cannot be appended to),
the CSV is cut back, mesh sequences are cut back to the frames before it (from their spool after
a hard kill, which is then finished; a sequence left empty is removed), and track ids continue
after the largest one used (tracker state is not restored, so a face visible across the break
gets a new id and a new sequence file).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from mlanet.errors import MLANetError
from mlanet.fileutil import error_line, write_json_atomic
from mlanet.model_metadata import ModelMetadata
from mlanet.params import ParamLayout
from mlanet.edge.frames.base import FrameSource
from mlanet.edge.sinks import PARAMS_ARRAYS, OutputSink, ParamRows, RunContext, sinks_for
from mlanet.edge.sinks.base import TextureFn
from mlanet.edge.types import FrameResult

if TYPE_CHECKING:
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.morphable.model import MorphableModel

log = logging.getLogger(__name__)

#: Frames between checkpoints (run.json, the parameter rows' parts, CSV flush, ...).
CHECKPOINT_EVERY = 25

#: Values of ``--meshes`` / ``OutputOptions.meshes`` (None: no meshes).
MESH_KINDS = ("sequence", "obj", "ply")

__all__ = ["CHECKPOINT_EVERY", "MESH_KINDS", "PARAMS_ARRAYS", "OutputOptions", "VideoRunOutputs"]

RUN_FORMAT = "mlanet-video-run"
RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write: ``meshes`` "sequence" (one compact file per track) | "obj" | "ply"
    (one file per face per frame) | None, every ``mesh_every`` frames; ``video`` overlay; ``glb``
    per track; ``texture`` photo texture for the GLBs; ``extra`` names of opt-in sinks to add
    (registered with a ``flag``; see :func:`mlanet.edge.sinks.register_sink`)."""

    meshes: str | None = "sequence"
    mesh_every: int = 1
    video: bool = True
    glb: bool = True
    texture: bool = False
    extra: tuple[str, ...] = ()


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("mlanet", "torch", "numpy", "av", "mediapipe", "moderngl", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


class VideoRunOutputs:
    """Writes one ``mlanet-video`` run into ``out_dir`` (see the module docstring): calls the
    run's sinks (:func:`mlanet.edge.sinks.sinks_for` of ``options``) in order, keeps the
    parameter rows and frame times, checkpoints every :data:`CHECKPOINT_EVERY` frames and
    writes run.json with the run's status.

    Args:
        out_dir: output folder (created).
        face_model: the MorphableModel the parameters belong to.
        backend_metadata: the backend's ``metadata`` (recorded in run.json as its ``to_dict()``), or a
            JSON-able mapping recorded as it is (tests and tools without an artifact).
        source: the frame source (its name and fps are recorded; fps 25 when it has none).
        pipeline_cfg: the PipelineCfg (recorded), or None (recorded as null).
        options: :class:`OutputOptions`.
        resume: continue a previous run in ``out_dir`` instead of refusing to overwrite it.
        argv: the command line (recorded).
        texture_fn: ``(frame_rgb, FaceFit) -> (T, T, 3) uint8`` photo texture (for ``options.texture``).
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        face_model: MorphableModel,
        backend_metadata: ModelMetadata | Mapping[str, Any],
        source: FrameSource,
        pipeline_cfg: PipelineCfg | None,
        options: OutputOptions = OutputOptions(),
        resume: bool = False,
        argv: list[str] | None = None,
        texture_fn: TextureFn | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.face_model = face_model
        self.layout: ParamLayout = face_model.layout
        self.options = options
        self.source_name = source.name
        self.fps = float(source.fps or 25.0)
        self.first_track_id = 0
        self._t0_ns: int | None = None
        run_file = self.out_dir / "run.json"
        if run_file.exists() and not resume:
            raise MLANetError(f"{self.out_dir} already holds an mlanet-video run; use --resume to continue it or "
                              "choose another --out")
        if resume and not run_file.exists():
            raise MLANetError(f"--resume: {self.out_dir} holds no mlanet-video run (no run.json)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from mlanet.edge.writers.tables import ArkitMapping

        self.arkit = ArkitMapping.from_model(face_model)  # shapes sharing an ARKit name are merged
        recorded_options = asdict(options)
        if not options.extra:
            del recorded_options["extra"]  # run.json as before opt-in sinks existed
        self.run_info: dict[str, Any] = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "input": self.source_name,
            "fps": self.fps,
            "argv": list(argv) if argv else None,
            "backend": backend_metadata.to_dict() if isinstance(backend_metadata, ModelMetadata) else dict(backend_metadata),
            "face_model": face_model.describe(),
            "layout": self.layout.to_dict(),
            "pipeline": _jsonable(asdict(pipeline_cfg)) if pipeline_cfg is not None else None,
            "options": recorded_options,
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if options.meshes not in (None, *MESH_KINDS):
            raise MLANetError(f"meshes: unknown kind {options.meshes!r}; use one of {', '.join(MESH_KINDS)} or None")
        self.ctx = RunContext(out_dir=self.out_dir, face_model=face_model, layout=self.layout, arkit=self.arkit,
                              options=options, source_name=self.source_name, fps=self.fps, run_info=self.run_info,
                              rows=ParamRows(self.layout), texture_fn=texture_fn)
        self.sinks: list[OutputSink] = sinks_for(options, self.ctx)
        resume_from = None
        if resume:
            self._check_previous(run_file)
            resume_from = self._resume_point()
        for sink in self.sinks:
            sink.begin(resume_from)
        self._write_run("running")  # from here on the folder always says what state the run is in

    # the run's state lives in the context the sinks share
    @property
    def frames_done(self) -> int:
        """Frames fully written so far."""
        return self.ctx.frames_done

    @frames_done.setter
    def frames_done(self, value: int) -> None:
        self.ctx.frames_done = value

    @property
    def start_frame(self) -> int:
        """The frame the run (re)started at (0 for a new run)."""
        return self.ctx.start_frame

    @property
    def texture_fn(self) -> TextureFn | None:
        """``(frame_rgb, FaceFit) -> (T, T, 3) uint8`` photo texture for the GLBs, or None."""
        return self.ctx.texture_fn

    @texture_fn.setter
    def texture_fn(self, fn: TextureFn | None) -> None:
        self.ctx.texture_fn = fn

    # ------------------------------------------------------------------ resume

    def _check_previous(self, run_file: Path) -> None:
        try:
            prev = json.loads(run_file.read_text())
        except (OSError, ValueError) as exc:
            raise MLANetError(f"{run_file}: cannot read the previous run ({exc})") from None
        if prev.get("format") != RUN_FORMAT:
            raise MLANetError(f"{run_file}: not an mlanet-video run file")
        if prev.get("layout") != self.layout.to_dict() or (prev.get("face_model") or {}).get("model_id") != self.face_model.model_id:
            raise MLANetError(f"{run_file}: the previous run used another face model or parameter layout; "
                              "resume with the same --face-model and weights")
        if prev.get("input") != self.source_name:
            raise MLANetError(f"{run_file}: the previous run read {prev.get('input')}, not {self.source_name}")
        if prev.get("status") == "complete":
            raise MLANetError(f"{self.out_dir}: the previous run is complete; nothing to resume")

    def _resume_point(self) -> int:
        """The frame to continue at: the fewest frames any sink's previous files hold (params.npz
        loads its rows into ``ctx.rows`` here; the overlay may hold fewer frames than the checkpoint)."""
        kept = [n for n in (sink.resumable_frames() for sink in self.sinks) if n is not None]
        done = min(kept, default=0)
        self.ctx.rows.keep_before(done)
        self.ctx.start_frame = self.ctx.frames_done = done
        self.first_track_id = self.ctx.rows.max_track_id() + 1
        self.run_info["resumed_at_frame"] = done
        log.info("resume: %d frames done, track ids continue at %d", done, self.first_track_id)
        return done

    # ------------------------------------------------------------------ per frame

    def write(self, result: FrameResult) -> None:
        """Record one frame's results (rows, then every sink: CSV, meshes, overlay, ...)."""
        frame = result.frame
        if self._t0_ns is None:
            self._t0_ns = frame.t_capture_ns if frame.index == 0 else frame.t_capture_ns - int(frame.index * 1e9 / self.fps)
        t = (frame.t_capture_ns - self._t0_ns) * 1e-9
        self.ctx.rows.add(result, t)
        for sink in self.sinks:
            sink.write(result, t)
        self.frames_done = frame.index + 1
        if self.frames_done % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    # ------------------------------------------------------------------ checkpoint / finish

    def checkpoint(self, status: str = "running") -> None:
        """Checkpoint every sink (params.npz, CSV flush, ...) for the frames done so far, then run.json."""
        for sink in self.sinks:
            sink.checkpoint()
        self._write_run(status)

    def _write_run(self, status: str) -> None:
        write_json_atomic(self.out_dir / "run.json", {**self.run_info, "status": status, "frames_done": self.frames_done})

    def finish(self, *, status: str, message: str | None = None, reason: str | None = None,
               stats: dict[str, Any] | None = None, elapsed_s: float | None = None) -> None:
        """Finalise every file for the frames done (also after Ctrl-C, a damaged input or a failure).

        ``status="failed"`` records ``reason`` (one line: why the run stopped). Each sink is
        finished on its own, so one whose file cannot be written (a full disk) does not stop the
        others, and run.json is written last. An error while finishing a run that had not failed
        turns it into ``failed`` with that error as the reason, and is raised after run.json is
        written; after a failure such errors are only logged (the first error is the one to report).
        """
        self.run_info.update({"stats": stats, "message": message, "elapsed_s": elapsed_s})
        errors: list[Exception] = []
        for sink in self.sinks:
            try:
                sink.finish(status)
            except Exception as exc:  # noqa: BLE001 - recorded in run.json; see the docstring
                errors.append(exc)
        raise_first = bool(errors) and status != "failed"
        for later in errors[1 if raise_first else 0:]:
            log.warning("%s: could not finalise every file: %s", self.out_dir, error_line(later))
        if raise_first:
            status, reason = "failed", error_line(errors[0])
        if status == "failed":
            self.run_info["reason"] = reason
        self._write_run(status)
        if raise_first:
            raise errors[0]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
