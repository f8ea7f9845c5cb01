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

Every file is written atomically (temporary file + rename). ``params.npz`` and ``run.json`` are
checkpointed every :data:`CHECKPOINT_EVERY` frames (run.json also when the run starts); Ctrl-C
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
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from ..errors import MLANetError
from ..fileutil import error_line, write_json_atomic
from ..geometry.rotations import euler_to_matrix
from ..params import FaceParams, ParamLayout
from .protocols import FrameWriter, TrackSequenceWriter
from .types import FrameResult

if TYPE_CHECKING:
    from .writers.tables import BlendshapeCsvWriter

log = logging.getLogger(__name__)

#: Frames between checkpoints of params.npz and run.json.
CHECKPOINT_EVERY = 25

#: Values of ``--meshes`` / ``OutputOptions.meshes`` (None: no meshes).
MESH_KINDS = ("sequence", "obj", "ply")

#: Arrays of params.npz with one row per face per frame.
#: ``source_name`` (str) is the file each row came from: the photo's file name for photo folders
#: and single images (``Frame.name``), else the input file's name.
PARAMS_ARRAYS = ("frame_index", "time_s", "track_id", "params", "raw_params", "boxes", "landmarks2d", "source_name")

RUN_FORMAT = "mlanet-video-run"
RUN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class OutputOptions:
    """Which outputs to write: ``meshes`` "sequence" (one compact file per track) | "obj" | "ply"
    (one file per face per frame) | None, every ``mesh_every`` frames; ``video`` overlay; ``glb``
    per track; ``texture`` photo texture for the GLBs."""

    meshes: str | None = "sequence"
    mesh_every: int = 1
    video: bool = True
    glb: bool = True
    texture: bool = False


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
    """Writes one ``mlanet-video`` run into ``out_dir`` (see the module docstring).

    Args:
        out_dir: output folder (created).
        face_model: the MorphableModel the parameters belong to.
        backend_metadata: the backend's ``metadata`` (a ModelMetadata, recorded in run.json as its ``to_dict()``).
        source: the frame source (name, fps, size).
        pipeline_cfg: the PipelineCfg (recorded).
        options: :class:`OutputOptions`.
        resume: continue a previous run in ``out_dir`` instead of refusing to overwrite it.
        argv: the command line (recorded).
        texture_fn: ``(frame_rgb, FaceFit) -> (T, T, 3) uint8`` photo texture (for ``options.texture``).
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        face_model: Any,
        backend_metadata: Any,
        source: Any,
        pipeline_cfg: Any,
        options: OutputOptions = OutputOptions(),
        resume: bool = False,
        argv: list[str] | None = None,
        texture_fn: Callable[[np.ndarray, Any], np.ndarray] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.face_model = face_model
        self.layout: ParamLayout = face_model.layout
        self.options = options
        self.texture_fn = texture_fn
        self.source_name = str(getattr(source, "name", source))
        self.fps = float(getattr(source, "fps", None) or 25.0)
        self.rows: dict[str, list[Any]] = {k: [] for k in PARAMS_ARRAYS}
        self.frames_done = 0
        self.start_frame = 0
        self.first_track_id = 0
        self._video: FrameWriter | None = None  # H264VideoWriter once the first frame is written
        self._csv: BlendshapeCsvWriter | None = None
        self._sequences: dict[int, TrackSequenceWriter] = {}  # track id -> MeshSequenceWriter
        self._best_texture: dict[int, tuple[float, np.ndarray]] = {}
        self._t0_ns: int | None = None
        run_file = self.out_dir / "run.json"
        if run_file.exists() and not resume:
            raise MLANetError(f"{self.out_dir} already holds an mlanet-video run; use --resume to continue it or "
                              "choose another --out")
        if resume and not run_file.exists():
            raise MLANetError(f"--resume: {self.out_dir} holds no mlanet-video run (no run.json)")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        from .writers.tables import ArkitMapping

        self.arkit = ArkitMapping.from_model(face_model)  # shapes sharing an ARKit name are merged
        self.run_info: dict[str, Any] = {
            "format": RUN_FORMAT,
            "format_version": RUN_FORMAT_VERSION,
            "input": self.source_name,
            "fps": self.fps,
            "argv": list(argv) if argv else None,
            "backend": backend_metadata.to_dict() if hasattr(backend_metadata, "to_dict") else backend_metadata,
            "face_model": face_model.describe(),
            "layout": self.layout.to_dict(),
            "pipeline": _jsonable(asdict(pipeline_cfg)) if pipeline_cfg is not None else None,
            "options": asdict(options),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if options.meshes not in (None, *MESH_KINDS):
            raise MLANetError(f"meshes: unknown kind {options.meshes!r}; use one of {', '.join(MESH_KINDS)} or None")
        if resume:
            self._load_previous(run_file)
            self._resume_sequences()
        self._open_streams()
        self._write_run("running")  # from here on the folder always says what state the run is in

    # ------------------------------------------------------------------ resume

    def _load_previous(self, run_file: Path) -> None:
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
        done = 0
        npz = self.out_dir / "params.npz"
        if npz.exists():
            with np.load(npz, allow_pickle=False) as z:
                done = int(z["frames_done"])
                keep = z["frame_index"] < done
                for k in PARAMS_ARRAYS:
                    if k in z.files:
                        self.rows[k] = list(z[k][keep])
                    else:  # a run from before source_name was recorded
                        self.rows[k] = [Path(self.source_name).name] * int(keep.sum())
        if self.options.video:
            done = min(done, self._video_frames(self.out_dir / "overlay.mp4"))
            for k in PARAMS_ARRAYS:  # the video may hold fewer frames than the checkpoint
                keep = [i for i, f in enumerate(self.rows["frame_index"]) if f < done]
                self.rows[k] = [self.rows[k][i] for i in keep]
        self.start_frame = self.frames_done = done
        self.first_track_id = int(max(self.rows["track_id"], default=-1)) + 1
        self.run_info["resumed_at_frame"] = done
        log.info("resume: %d frames done, track ids continue at %d", done, self.first_track_id)

    def _resume_sequences(self) -> None:
        """Cut every track's mesh sequence back to the frames before ``start_frame`` (whatever
        ``--meshes`` is now): an unfinished spool (hard kill) is finished with its frames kept, a
        finished file holding later frames is rewritten, one left empty is removed. Old tracks get
        no new frames (ids continue after the largest one), so each is finished here."""
        from .writers.mesh_sequence import SPOOL_SUFFIX, SUFFIX

        folder = self.out_dir / "meshes"
        if not folder.is_dir():
            return
        ids = set()
        for p in folder.glob(f"track_*{SUFFIX}*"):
            stem = p.name[len("track_"):]
            for end in (SUFFIX + SPOOL_SUFFIX, SUFFIX):
                if stem.endswith(end) and stem[: -len(end)].isdigit():
                    ids.add(int(stem[: -len(end)]))
                    break
        for tid in sorted(ids):
            writer = self._sequence_writer(tid)
            kept = writer.resume_from(self.start_frame)
            writer.close()
            log.info("resume: %s keeps %d frames", writer.path.name, kept)

    def _sequence_writer(self, track_id: int) -> TrackSequenceWriter:
        from .writers.mesh_sequence import MeshSequenceWriter, sequence_path

        fm = self.face_model
        return MeshSequenceWriter(
            sequence_path(self.out_dir / "meshes", track_id),
            triangles=fm.triangles.cpu().numpy(), n_vertices=int(fm.n_vertices), uv=fm.uv.cpu().numpy(),
            triangles_uv=fm.triangles_uv.cpu().numpy(),
            meta={"track_id": int(track_id),
                  "face_model": {k: self.run_info["face_model"].get(k) for k in ("model_id", "content_sha256")},
                  "source": self.source_name, "fps": self.fps, "mesh_every": self.options.mesh_every})

    @staticmethod
    def _video_frames(path: Path) -> int:
        from .writers.video import count_video_frames

        if not path.exists():
            return 0
        try:
            return count_video_frames(path)
        except MLANetError:  # a damaged overlay is re-done from frame 0
            log.warning("%s cannot be read; the overlay restarts at frame 0", path)
            return 0

    def _open_streams(self) -> None:
        from .writers.tables import BlendshapeCsvWriter

        self._csv = BlendshapeCsvWriter(self.out_dir / "blendshapes.csv", self.arkit.names,
                                        resume_before_frame=self.start_frame if self.start_frame else None)

    def _open_video(self, width: int, height: int) -> None:
        from .writers.video import H264VideoWriter

        path = self.out_dir / "overlay.mp4"
        if self.start_frame and path.exists():
            # Photos differ in size: continue at the size the overlay already has (later ones are letterboxed).
            old = _overlay_size(path)
            if old is not None and old not in ((width, height), (width + width % 2, height + height % 2)):
                width, height = old
        self._video = H264VideoWriter(path, self.fps, width, height)
        self.run_info["encoder"] = self._video.settings
        if self.start_frame:
            self._video.resume_from(path, self.start_frame)

    # ------------------------------------------------------------------ per frame

    def write(self, result: FrameResult) -> None:
        """Record one frame's results (rows, CSV, meshes, overlay)."""
        frame = result.frame
        if self._t0_ns is None:
            self._t0_ns = frame.t_capture_ns if frame.index == 0 else frame.t_capture_ns - int(frame.index * 1e9 / self.fps)
        t = (frame.t_capture_ns - self._t0_ns) * 1e-9
        for f in result.faces:
            self.rows["frame_index"].append(frame.index)
            self.rows["time_s"].append(t)
            self.rows["track_id"].append(f.track_id)
            self.rows["params"].append(np.asarray(f.params, np.float32))
            self.rows["raw_params"].append(np.asarray(f.raw_params, np.float32))
            self.rows["boxes"].append(np.array([f.box.x0, f.box.y0, f.box.size], np.float32))
            self.rows["landmarks2d"].append(np.asarray(f.landmarks2d, np.float32))
            self.rows["source_name"].append(frame.name or Path(frame.source).name)
            expr = np.asarray(f.params[self.layout.slices()["expression"]])
            self._csv.write(frame.index, t, f.track_id, self.arkit.weights(expr))
            if self.options.meshes and frame.index % self.options.mesh_every == 0:
                self._write_mesh(frame.index, t, f, frame.name if frame.independent else None)
            if self.options.texture and self.texture_fn is not None:
                self._maybe_texture(frame.image, f)
        if self.options.video and result.rendered is not None:
            rendered = result.rendered
            if self._video is None:
                self._open_video(frame.width, frame.height)
            if (frame.width, frame.height) != (self._video.width, self._video.height):
                from .frames import letterbox  # photos of other sizes: fitted into the first one's frame

                rendered = letterbox(rendered, self._video.width, self._video.height)
            # Frames lost to a damaged input (index gaps) are black, so overlay frame k stays input frame k.
            if self._video.n_written < frame.index:
                black = np.zeros_like(rendered)
                for _ in range(frame.index - self._video.n_written):
                    self._video.write(black)
            if rendered is result.rendered:  # not letterboxed: the source's own YUV outside the overlay
                self._video.write(rendered, base_yuv420=result.frame.yuv420, changed_box=result.rendered_box)
            else:
                self._video.write(rendered)
        self.frames_done = frame.index + 1
        if self.frames_done % CHECKPOINT_EVERY == 0:
            self.checkpoint()

    def _write_mesh(self, index: int, t: float, f: Any, photo: str | None = None) -> None:
        """Add the frame to ``meshes/track_<id>.mlmesh.npz`` (kind "sequence"), or write
        ``meshes/track_<id>/frame_<index>.<ext>``; an independent photo gets ``meshes/<photo>/track_<id>.<ext>``
        (OBJ for the kind "sequence")."""
        from .writers.meshes import write_obj, write_ply

        if self.options.meshes == "sequence" and photo is None:
            writer = self._sequences.get(f.track_id)
            if writer is None:
                writer = self._sequences[f.track_id] = self._sequence_writer(f.track_id)
            writer.add(index, t, f.vertices)
            return
        fm = self.face_model
        if photo is not None:
            folder, stem = self.out_dir / "meshes" / photo, f"track_{f.track_id:03d}"
        else:
            folder, stem = self.out_dir / "meshes" / f"track_{f.track_id:03d}", f"frame_{index:06d}"
        tri, uv, tri_uv = (fm.triangles.cpu().numpy(), fm.uv.cpu().numpy(), fm.triangles_uv.cpu().numpy())
        if self.options.meshes in ("obj", "sequence"):
            write_obj(folder / f"{stem}.obj", f.vertices, tri, uv, tri_uv)
        else:
            write_ply(folder / f"{stem}.ply", f.vertices, tri, uv, tri_uv)

    def _maybe_texture(self, image: np.ndarray, f: Any) -> None:
        rot = np.asarray(f.params[self.layout.slices()["rotation"]])
        frontal = float(abs(rot[0]) + abs(rot[1]))  # pitch + yaw, radians
        best = self._best_texture.get(f.track_id)
        if best is None or frontal < best[0] - 0.02:
            self._best_texture[f.track_id] = (frontal, self.texture_fn(image, f))

    # ------------------------------------------------------------------ finish

    def _arrays(self) -> dict[str, np.ndarray]:
        # Rows of a frame interrupted half-way through write() (Ctrl-C) are not part of the result.
        n = sum(1 for f in self.rows["frame_index"] if f < self.frames_done)
        if n != len(self.rows["frame_index"]):
            for k in PARAMS_ARRAYS:
                self.rows[k] = [v for f, v in zip(self.rows["frame_index"], self.rows[k]) if f < self.frames_done]
        P = self.layout.total
        empty = {"frame_index": (0,), "time_s": (0,), "track_id": (0,), "params": (0, P), "raw_params": (0, P),
                 "boxes": (0, 3), "landmarks2d": (0, 68, 2)}
        out = {}
        for k in empty:
            out[k] = np.stack(self.rows[k]) if self.rows[k] else np.zeros(empty[k], np.float32)
        out["source_name"] = np.array([str(v) for v in self.rows["source_name"]], dtype=str)  # (N,) unicode
        out["frame_index"] = out["frame_index"].astype(np.int64)
        out["track_id"] = out["track_id"].astype(np.int64)
        out["time_s"] = out["time_s"].astype(np.float64)
        out["frames_done"] = np.array(self.frames_done, np.int64)
        return out

    def checkpoint(self, status: str = "running") -> None:
        """Write params.npz and run.json for the frames done so far."""
        from .writers.tables import write_params_npz

        write_params_npz(self.out_dir / "params.npz", **self._arrays())
        self._write_run(status)
        if self._csv is not None:
            self._csv.flush()

    def _write_run(self, status: str) -> None:
        write_json_atomic(self.out_dir / "run.json", {**self.run_info, "status": status, "frames_done": self.frames_done})

    def _tracks(self) -> dict[int, dict[str, Any]]:
        a = self._arrays()
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
                "source_name": str(a["source_name"][m][0]),  # the photo (photo folders) or the input file
                "identity": p[-1, s["identity"]].tolist(),  # the running mean at the track's last frame
                "albedo": p[-1, s["albedo"]].tolist(),
                "rows": np.flatnonzero(m),
            }
        return tracks

    def _write_glbs(self, tracks: dict[int, dict[str, Any]]) -> None:
        from .writers.gltf import write_track_glb
        from .writers.tables import arkit_morph_mesh

        a = self._arrays()
        s = self.layout.slices()
        mesh = arkit_morph_mesh(self.face_model, self.arkit)  # topology and morph targets: once for all tracks
        with torch.no_grad():
            for tid, tr in tracks.items():
                rows = tr["rows"]
                p = torch.from_numpy(a["params"][rows])
                fp = FaceParams.from_flat(p, self.layout)
                neutral = self.face_model.shape(torch.tensor([tr["identity"]]), torch.zeros(1, self.layout.expression))
                texture = self._best_texture.get(tid, (None, None))[1]
                path = self.out_dir / "tracks" / f"track_{tid:03d}.glb"
                write_track_glb(
                    path,
                    **{**mesh, "neutral_vertices": neutral[0].numpy()},
                    times_s=a["time_s"][rows],
                    weights=self.arkit.weights(a["params"][rows][:, s["expression"]]),
                    rotations=euler_to_matrix(fp.rotation).numpy(),
                    translations=fp.translation.numpy(),
                    texture_png=texture,
                )
                tr["glb"] = os.path.relpath(path, self.out_dir)

    def finish(self, *, status: str, message: str | None = None, reason: str | None = None,
               stats: dict[str, Any] | None = None, elapsed_s: float | None = None) -> None:
        """Finalise every file for the frames done (also after Ctrl-C, a damaged input or a failure).

        ``status="failed"`` records ``reason`` (one line: why the run stopped). Each file is
        finalised on its own, so one that cannot be written (a full disk) does not stop the
        others, and run.json is written last. An error while finishing a run that had not failed
        turns it into ``failed`` with that error as the reason, and is raised after run.json is
        written; after a failure such errors are only logged (the first error is the one to report).
        """
        from .writers.tables import write_params_npz

        self.run_info.update({"stats": stats, "message": message, "elapsed_s": elapsed_s})
        errors: list[Exception] = []
        for step in (self._close_video, self._close_csv, self._close_sequences, self._write_tracks,
                     lambda: write_params_npz(self.out_dir / "params.npz", **self._arrays())):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - recorded in run.json; see the docstring
                errors.append(exc)
        raise_first = bool(errors) and status != "failed"
        for exc in errors[1 if raise_first else 0:]:
            log.warning("%s: could not finalise every file: %s", self.out_dir, error_line(exc))
        if raise_first:
            status, reason = "failed", error_line(errors[0])
        if status == "failed":
            self.run_info["reason"] = reason
        self._write_run(status)
        if raise_first:
            raise errors[0]

    def _close_video(self) -> None:
        video, self._video = self._video, None
        if video is not None:
            video.close()

    def _close_csv(self) -> None:
        csv, self._csv = self._csv, None
        if csv is not None:
            try:
                if csv.n_rows > sum(1 for f in self.rows["frame_index"] if f < self.frames_done):
                    csv.truncate_from(self.frames_done)  # rows of a frame in flight when the run stopped
            finally:
                csv.close()

    def _close_sequences(self) -> None:
        """Finish every track's mesh sequence with the frames done (each on its own; the first error is raised)."""
        sequences, self._sequences = self._sequences, {}
        first: Exception | None = None
        for writer in sequences.values():
            try:
                writer.truncate_from(self.frames_done)  # faces of a frame in flight when the run stopped
                writer.close()
            except Exception as exc:  # noqa: BLE001 - its spool stays for --resume
                if first is None:
                    first = exc
                else:
                    log.warning("%s: %s", writer.path, error_line(exc))
        if first is not None:
            raise first

    def _write_tracks(self) -> None:
        from .writers.mesh_sequence import sequence_path

        tracks = self._tracks()
        if self.options.glb and tracks:
            self._write_glbs(tracks)
        for tid, tr in tracks.items():
            tr.pop("rows")
            seq = sequence_path(self.out_dir / "meshes", tid)
            if seq.exists():
                tr["mesh_sequence"] = os.path.relpath(seq, self.out_dir)
        write_json_atomic(self.out_dir / "tracks.json", {"tracks": list(tracks.values())})


def _overlay_size(path: Path) -> tuple[int, int] | None:
    """(W, H) in pixels of the video stream of ``path``, or None when it cannot be read (then
    ``H264VideoWriter.resume_from`` reports the file)."""
    import av

    try:
        with av.open(str(path)) as c:
            cc = c.streams.video[0].codec_context
            return int(cc.width), int(cc.height)
    except (av.error.FFmpegError, OSError, IndexError):
        return None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
