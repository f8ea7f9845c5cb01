"""``mlanet-video IN --out DIR``: fit every face of a video (or image folder) and write the results.

Outputs (see :mod:`mlanet.edge.outputs`): the overlay video (H.264), per-frame parameters and
per-track results (NPZ + JSON), one compact mesh sequence per track (or per-frame OBJ/PLY meshes
with UVs on request), one animated GLB per track
with ARKit-named morph targets, ARKit blendshape weights as CSV, and per-stage timing.
Ctrl-C finishes the frame in flight and leaves valid files for the frames done (a Ctrl-C while
those files are being finished waits for them; exit status 130); ``--resume`` continues an
interrupted run. A run that fails after the output folder exists (a full disk, a damaged
artifact, ...) also leaves valid files for the frames done, with run.json status ``failed`` and
the reason, and ``--resume`` continues it too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlanet.errors import MLANetError
from mlanet.fileutil import check_writable_dir, check_writable_file, error_line
from mlanet.interrupts import interrupts_held
from mlanet.edge.loading import (add_model_arguments, add_verbose_argument, float_in, open_detector, open_model, positive_int,
                      run_cli)
from mlanet.edge.send import LiveSenders, add_send_arguments
from mlanet.edge.sinks import meshes_needed, registered_sinks
from mlanet.edge.types import FrameResult

if TYPE_CHECKING:
    from mlanet.edge.frames import FrameSource
    from mlanet.edge.outputs import VideoRunOutputs
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlanet-video",
        description="Fit 3D faces in every frame of a video, image folder or image and write overlay video, "
        "meshes, animated GLB per track, blendshape CSV and parameters.",
    )
    p.add_argument("input", help="video file (H.264, MJPEG, ...), image folder (unrelated photos, each fitted on its "
                   "own) or image")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--image-sequence", action="store_true",
                   help="read an image folder as the frames of one video (tracking and filtering across frames)")
    add_model_arguments(p)
    add_pipeline_arguments(p)
    o = p.add_argument_group("outputs")
    o.add_argument("--meshes", choices=("sequence", "obj", "ply", "none"), default="sequence",
                   help="sequence (default): one compact file per track, meshes/track_NNN.mlmesh.npz (topology once, "
                   "int16 vertices per frame; read it with mlanet.edge.writers.mesh_sequence.load_mesh_sequence); "
                   "obj or ply: one file per face per frame; none. Photos get one OBJ (or PLY) per face each")
    o.add_argument("--mesh-every", type=positive_int, default=1, metavar="N",
                   help="write a mesh every N frames (default 1)")
    o.add_argument("--no-video", action="store_true", help="do not render or write the overlay video")
    o.add_argument("--no-glb", action="store_true", help="do not write the per-track GLB files")
    o.add_argument("--texture", action="store_true",
                   help="photo-texture each track's GLB from its most frontal frame (projected UVs)")
    for spec in registered_sinks():  # opt-in output formats registered in mlanet.edge.sinks
        if spec.flag:
            o.add_argument(spec.flag, action="store_true", dest=f"sink_{spec.name}", help=spec.help)
    o.add_argument("--max-frames", type=positive_int, default=None, metavar="N",
                   help="stop after the first N frames of the input (also with --resume)")
    o.add_argument("--json-stats", metavar="FILE", help="write per-stage timing (p50/p95) as JSON here too")
    o.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    add_verbose_argument(o)
    add_send_arguments(p, serve=False)  # --send replays the input at its own frame rate
    return p


def add_pipeline_arguments(p: argparse.ArgumentParser) -> None:
    """Tracking, filtering and rendering options shared with mlanet-live.

    The settings are a :class:`~mlanet.edge.pipeline.PipelineCfg`: its defaults, then ``--config FILE``
    (YAML with the same keys), then ``--set key=value`` overrides (``tracker.detect_every=5``,
    ``filter.rotation_min_cutoff=1.0``, ...), then the flags below, when given.
    """
    from mlanet.edge.pipeline import RENDER_MODES
    from mlanet.edge.reconstruct import DEFAULT_FOV_DEG, FOV_RANGE_DEG

    g = p.add_argument_group("pipeline")
    g.add_argument("--config", metavar="FILE", default=None,
                   help="pipeline settings as YAML (keys of PipelineCfg: fov_deg, tracker.*, filter.*, render_mode, "
                        "overlays, mesh_alpha, meshes); the flags below override it")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", default=None,
                   help="override one pipeline setting, e.g. tracker.detect_every=5 or filter.enabled=false "
                        "(repeatable; after --config, before the flags below)")
    g.add_argument("--fov", type=float_in(*FOV_RANGE_DEG, unit=" degrees"), default=None,
                   help=f"horizontal field of view of the camera in degrees, {FOV_RANGE_DEG[0]:g} to "
                   f"{FOV_RANGE_DEG[1]:g} (default {DEFAULT_FOV_DEG:g})")
    g.add_argument("--max-faces", type=positive_int, default=None, help="most faces tracked at once (default 4)")
    g.add_argument("--detect-every", type=positive_int, default=None, metavar="N",
                   help="re-run the face detector every N frames (also on lost tracks and scene cuts; default 10)")
    g.add_argument("--detector", choices=("full_range", "short_range"), default="full_range",
                   help="MediaPipe detector model: full_range finds small faces up to ~5 m (default), "
                   "short_range is faster for faces within ~2 m")
    g.add_argument("--no-filter", action="store_true", help="disable temporal filtering (raw per-frame fits)")
    g.add_argument("--mode", choices=RENDER_MODES, default=None, help="render mode of the overlay (default shaded)")
    g.add_argument("--overlays", default=None,
                   help="comma-separated overlays: landmarks, wireframe, or none (default landmarks)")
    g.add_argument("--alpha", type=float_in(0.0, 1.0, lo_open=True), default=None,
                   help="opacity of the mesh over the frame, in (0, 1] (default 1)")


def pipeline_cfg_from_args(args: argparse.Namespace, *, render: bool = True) -> PipelineCfg:
    """:class:`PipelineCfg` from the pipeline arguments (defaults < --config < --set < flags)."""
    from mlanet.config import load_config
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.edge.reconstruct import FOV_RANGE_DEG

    try:
        cfg = load_config(PipelineCfg, args.config, args.set or [])
    except (ValueError, TypeError) as exc:  # a value PipelineCfg / TrackerCfg / FilterCfg refuses
        raise MLANetError(f"--config/--set: {exc}") from None
    tracker = cfg.tracker
    if args.max_faces is not None:
        tracker = replace(tracker, max_faces=args.max_faces)
    if args.detect_every is not None:
        tracker = replace(tracker, detect_every=args.detect_every)
    if tracker.max_faces < 1 or tracker.detect_every < 1:
        raise MLANetError("max faces (--max-faces, tracker.max_faces) and --detect-every (tracker.detect_every) "
                          "must be >= 1")
    overlays = cfg.overlays
    if args.overlays is not None:
        overlays = tuple(o.strip() for o in args.overlays.split(",") if o.strip() and o.strip() != "none")
    bad = set(overlays) - {"landmarks", "wireframe"}
    if bad:
        raise MLANetError(f"--overlays: unknown {sorted(bad)}; use landmarks, wireframe or none")
    fov = cfg.fov_deg if args.fov is None else args.fov
    if not FOV_RANGE_DEG[0] <= fov <= FOV_RANGE_DEG[1]:
        raise MLANetError(f"--fov (fov_deg) must be within [{FOV_RANGE_DEG[0]:g}, {FOV_RANGE_DEG[1]:g}] degrees, got {fov}")
    alpha = cfg.mesh_alpha if args.alpha is None else args.alpha
    if not 0.0 < alpha <= 1.0:
        raise MLANetError("--alpha (mesh_alpha) must be in (0, 1]")
    return replace(
        cfg,
        fov_deg=fov,
        tracker=tracker,
        filter=replace(cfg.filter, enabled=False) if args.no_filter else cfg.filter,
        render_mode=(args.mode or cfg.render_mode) if render else None,
        overlays=tuple(overlays),
        mesh_alpha=alpha,
    )


def main(argv: list[str] | None = None) -> int:
    return run_cli("mlanet-video", build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from mlanet.progress import Progress
    from mlanet.edge.frames import open_source
    from mlanet.edge.outputs import OutputOptions, VideoRunOutputs
    from mlanet.edge.pipeline import FacePipeline

    # output paths first: a run must not fail at its end because of them
    check_writable_dir(args.out, "--out")
    if args.json_stats:
        check_writable_file(args.json_stats, "--json-stats")
    cfg = pipeline_cfg_from_args(args, render=not args.no_video)
    backend, face_model = open_model(args)
    try:
        senders = LiveSenders(args, face_model, file_replay=True)
    except BaseException:
        backend.close()
        raise
    options = OutputOptions(
        meshes=None if args.meshes == "none" else args.meshes,
        mesh_every=args.mesh_every,
        video=not args.no_video,
        glb=not args.no_glb,
        texture=args.texture,
        extra=tuple(spec.name for spec in registered_sinks() if spec.flag and getattr(args, f"sink_{spec.name}", False)),
    )
    # full meshes only for what draws or writes them (GLBs, CSV and params need the parameters only)
    cfg = replace(cfg, meshes=meshes_needed(options))
    try:
        source = open_source(args.input, image_sequence=args.image_sequence)
    except BaseException:
        senders.close()
        backend.close()
        raise
    outputs: VideoRunOutputs | None = None
    pipeline: FacePipeline | None = None
    status, interrupted = "complete", False
    failure: Exception | None = None  # what ended the run early (recorded in run.json, then reported)
    msg: str | None = None  # the input's damage, if any
    stats: dict[str, Any] | None = None  # per-stage timing
    lost_frames: list[int] = []  # frames of the input lost to damage
    t0 = time.perf_counter()
    try:
        outputs = VideoRunOutputs(
            Path(args.out), face_model=face_model, backend_metadata=backend.metadata, source=source,
            pipeline_cfg=cfg, options=options, resume=args.resume, argv=sys.argv,
        )
        if outputs.start_frame:
            source.close()
            source = open_source(args.input, start_frame=outputs.start_frame, image_sequence=args.image_sequence)
            log.info("resuming %s at frame %d", args.out, outputs.start_frame)
        pipeline = FacePipeline(backend, face_model, cfg, detector=open_detector(args.detector, args.verbose))
        if options.texture:
            outputs.texture_fn = pipeline.unwrap_texture
        if outputs.first_track_id:
            from mlanet.edge.tracking import FaceTracker

            tracker = pipeline.tracker
            assert isinstance(tracker, FaceTracker), type(tracker)  # FacePipeline built it from cfg.tracker
            tracker.next_id = outputs.first_track_id
        total = source.n_frames if source.n_frames else 0
        # --max-frames counts from the start of the input, so "the same command + --resume" ends where it would have
        remaining = None if args.max_frames is None else max(0, args.max_frames - outputs.start_frame)
        if args.max_frames is not None:
            total = min(total, args.max_frames) if total else args.max_frames
        bar = Progress(total or 1, "mlanet-video", enabled=not args.quiet)
        wall0 = time.perf_counter()

        def on_frame(result: FrameResult) -> None:
            done = outputs.frames_done
            el = time.perf_counter() - wall0
            bar.update(done, fps=(done - outputs.start_frame) / el if el > 0 else 0.0, faces=len(result.faces))

        def write(result: FrameResult) -> None:
            try:
                outputs.write(result)
            except OSError as exc:
                _name_output_folder(exc, outputs.out_dir)
                raise
            senders.publish(result)

        try:
            pipeline.run(source, write, max_frames=remaining, on_frame=on_frame)
        except KeyboardInterrupt:
            interrupted, status = True, "interrupted"
        finally:
            bar.close()
        if not interrupted and _damage(source):
            status = "input_damaged"
    except KeyboardInterrupt:  # outside the frame loop (opening the detector, re-opening to resume)
        interrupted, status = True, "interrupted"
    except Exception as exc:  # noqa: BLE001 - recorded in run.json as "failed", then raised again below
        failure, status = exc, "failed"
    # from here on a Ctrl-C (a second one, or the first arriving just as the run ends) waits for the files
    with interrupts_held(f"mlanet-video: finishing the outputs in {args.out} (they will be valid); please wait") as held:
        try:
            if outputs is not None:
                stats = pipeline.stats.summary() if pipeline is not None else None
                msg = _damage(source)
                lost_frames = outputs.run_info["lost_frames"] = [int(i) for i in source.lost_frames]
                outputs.finish(status=status, message=msg, reason=None if failure is None else error_line(failure),
                               stats=stats, elapsed_s=time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - finishing failed (a full disk): finish() recorded "failed"
            if isinstance(exc, OSError) and outputs is not None:
                _name_output_folder(exc, outputs.out_dir)
            if failure is None:
                failure = exc
            else:
                log.warning("%s: after the failure, finishing the outputs failed too (%s)", args.out, error_line(exc))
        finally:
            if pipeline is not None:
                pipeline.close()
            senders.close()
            source.close()
            backend.close()
    if held.received and not interrupted and failure is None:
        interrupted = True  # the run itself ended (its outputs are complete or damaged-input), then the user stopped
    n = outputs.frames_done if outputs is not None else 0
    if failure is not None:
        if outputs is None or not isinstance(failure, (MLANetError, OSError)):
            raise failure  # before the folder existed, or a bug (its traceback is wanted)
        raise MLANetError(f"{error_line(failure)}; {args.out} holds valid outputs for the {n} frames done (run.json "
                          "status \"failed\"); remove the cause and run the same command with --resume to continue")
    if args.json_stats and stats is not None:
        from mlanet.fileutil import write_json_atomic

        write_json_atomic(args.json_stats, {"input": str(args.input), **stats})
    if interrupted:
        if status in ("complete", "input_damaged"):
            print(f"mlanet-video: interrupted while finishing; the run had ended and its outputs in {args.out} are "
                  f"complete ({n} frames, run.json status \"{status}\").", file=sys.stderr)
        else:
            print(f"mlanet-video: interrupted after {n} frames; outputs in {args.out} are valid for those frames. "
                  f"Run the same command with --resume to continue.", file=sys.stderr)
        return 128 + held.signals[0] if held.received else 130  # 130 = 128 + SIGINT, 143 = 128 + SIGTERM
    if status == "input_damaged":
        read = n - len([i for i in lost_frames if i < n])
        print(f"mlanet-video: {msg}. Outputs in {args.out} cover the {read} frames that could be read "
              "(lost frames are black in the overlay).", file=sys.stderr)
        return 0
    print(f"mlanet-video: {n} frames -> {args.out}", file=sys.stderr)
    return 0


def _damage(source: FrameSource) -> str | None:
    """The source's message about damage to the input (frames lost, an early stop), or None."""
    return source.damaged or source.stopped_early


def _name_output_folder(exc: OSError, out_dir: Path) -> None:
    """A writer's OSError without a path (a full disk while encoding) names the output folder."""
    if exc.filename is None:
        exc.filename = str(out_dir)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
