"""``mlanet-live --camera 0``: fit and render faces live, in a window with a HUD or headless.

Keys in the window: ``m`` next render mode, ``w`` wireframe, ``l`` landmarks, ``f`` temporal
filter on/off, ``r`` start/stop recording the overlay (H.264, ``mlanet-live-<time>.mp4`` in
``--record-dir``), ``q`` or Esc quit. ``--video FILE`` replays a file in real time as if it were a
camera (stale frames are dropped when the pipeline is slower than the source; ``--replay-fps``
changes the rate). ``--no-window`` runs headless: it prints the stage timing every few seconds and can record with ``--record``.
``--send vmc://HOST:PORT`` streams ARKit blendshapes and head pose to VMC receivers and ``--serve``
shows the fitted head in a browser (:mod:`mlanet.edge.send`).
"""

from __future__ import annotations

import argparse
import collections
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlanet.errors import MLANetError
from mlanet.fileutil import check_writable_dir, check_writable_file
from mlanet.interrupts import interrupts_held
from mlanet.edge.loading import (add_model_arguments, add_verbose_argument, float_in, native_stderr_quiet, nonnegative_int,
                      open_detector, open_model, positive_int, run_cli)
from mlanet.edge.send import LiveSenders, add_send_arguments
from mlanet.edge.timing import peak_rss_mib, rss_mib
from mlanet.edge.types import FrameResult
from mlanet.edge.video_cli import add_pipeline_arguments, pipeline_cfg_from_args

if TYPE_CHECKING:
    from mlanet.edge.gl_renderer import FaceRenderer
    from mlanet.edge.mesh_topology import MeshTopology
    from mlanet.edge.pipeline import FacePipeline
    from mlanet.edge.protocols import FrameWriter

log = logging.getLogger(__name__)

#: Frames the live statistics (HUD log, --json-stats percentiles) are taken over: the newest 9,000
#: (5 minutes at 30 fps), so a session of any length holds the same memory and summarises as fast.
LIVE_STATS_WINDOW = 9000

HUD_STAGES = ("detect_track", "preprocess", "infer", "reconstruct", "render")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlanet-live", description="Live 3D face fitting from a camera (or a video "
                                "replayed in real time) with a rendered overlay.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=nonnegative_int, metavar="INDEX", help="OpenCV camera index (0 = first camera)")
    src.add_argument("--video", metavar="FILE", help="replay a video file in real time instead of a camera")
    p.add_argument("--replay-fps", type=float_in(0.0, math.inf), default=None,
                   help="with --video: replay at this rate instead of the file's own (0 = as fast as possible)")
    p.add_argument("--loop", action="store_true",
                   help="with --video: start the file over at its end (demos, endurance runs); stop with q, Ctrl-C, "
                        "--duration or --max-frames")
    p.add_argument("--width", type=positive_int, default=None, help="requested camera width")
    p.add_argument("--height", type=positive_int, default=None, help="requested camera height")
    add_model_arguments(p)
    add_pipeline_arguments(p)
    o = p.add_argument_group("live")
    o.add_argument("--no-window", action="store_true", help="run headless (no display needed)")
    o.add_argument("--record", metavar="FILE", help="record the overlay to this .mp4 from the start")
    o.add_argument("--record-dir", default=None, help="folder for recordings started with the r key (default: the "
                   "current folder)")
    o.add_argument("--max-frames", type=positive_int, default=None, help="stop after N frames")
    o.add_argument("--duration", type=float_in(0.0, math.inf, lo_open=True), default=None,
                   help="stop after this many seconds")
    o.add_argument("--json-stats", metavar="FILE", help="write per-stage timing (p50/p95), dropped frames and a "
                   "timeline (frames, dropped frames, resident memory every --stats-every s) as JSON at the end")
    o.add_argument("--stats-every", type=float_in(0.0, math.inf, lo_open=True), default=10.0, metavar="S",
                   help="seconds between --json-stats timeline samples (default 10)")
    add_verbose_argument(o)
    add_send_arguments(p, serve=True)
    return p


def draw_hud(image: np.ndarray, fps: float, stage_ms: dict[str, float], n_faces: int, mode: str,
             recording: bool) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 RGB with fps, per-stage ms, faces, mode and REC drawn on it."""
    import cv2

    out = np.ascontiguousarray(image).copy()
    lines = [f"{fps:5.1f} fps  faces {n_faces}  mode {mode}"]
    lines += [f"{s:<12s}{stage_ms.get(s, 0.0):6.1f} ms" for s in HUD_STAGES]
    scale = max(0.4, out.shape[0] / 1000.0)
    for i, text in enumerate(lines):
        y = int((18 + 18 * i) * scale / 0.5)
        cv2.putText(out, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    if recording:
        cv2.circle(out, (out.shape[1] - 20, 20), 8, (255, 0, 0), -1)
    return out


class LiveSession:
    """State of the live loop: render mode, overlays, recording; reacts to key names.

    Recording: :meth:`start_recording` names the file, the next :meth:`record` opens the writer at
    that frame's size (``recording`` is True from the start), :meth:`stop_recording` closes it.
    ``fps`` is the recording's frame rate (frames per second).
    """

    def __init__(self, pipeline: FacePipeline, fps: float, record_dir: Path) -> None:
        from mlanet.edge.pipeline import RENDER_MODES

        self.pipeline = pipeline
        self.modes = list(RENDER_MODES)
        self.mode = pipeline.cfg.render_mode or "shaded"
        self.overlays = set(pipeline.cfg.overlays)
        self.fps = fps
        self.record_dir = record_dir
        self.recorder: FrameWriter | None = None  # open once the first recorded frame gave the size
        self.record_path: Path | None = None  # set while recording (the writer may not be open yet)
        self.quit = False

    @property
    def recording(self) -> bool:
        """True from :meth:`start_recording` until :meth:`stop_recording`."""
        return self.record_path is not None

    def on_key(self, key: str) -> None:
        if key in ("q", "escape"):
            self.quit = True
        elif key == "m":
            self.mode = self.modes[(self.modes.index(self.mode) + 1) % len(self.modes)]
        elif key in ("w", "l"):
            self.overlays ^= {"wireframe" if key == "w" else "landmarks"}
        elif key == "f":
            self.pipeline.filters.set_enabled(not self.pipeline.filters.cfg.enabled)
        elif key == "r":
            if not self.recording:
                self.start_recording(self.record_dir / time.strftime("mlanet-live-%Y%m%d-%H%M%S.mp4"))
            else:
                self.stop_recording()

    def start_recording(self, path: Path) -> None:
        self.record_path = Path(path)  # the writer opens at the next frame, when the size is known
        log.info("recording to %s", self.record_path)

    def record(self, image: np.ndarray) -> None:
        """Append ``image`` ((H, W, 3) uint8 RGB) to the recording, if one is on."""
        if self.record_path is None:
            return
        if self.recorder is None:
            from mlanet.edge.writers.video import H264VideoWriter

            self.recorder = H264VideoWriter(self.record_path, self.fps, image.shape[1], image.shape[0])
        self.recorder.write(image)

    def stop_recording(self) -> None:
        recorder, self.recorder, self.record_path = self.recorder, None, None
        if recorder is not None and (saved := recorder.close()) is not None:
            log.info("saved %s", saved)


def main(argv: list[str] | None = None) -> int:
    return run_cli("mlanet-live", build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from mlanet.edge.frames import CameraSource, LiveReplaySource, LiveSource, VideoFileSource
    from mlanet.edge.pipeline import FacePipeline

    if args.record:
        check_writable_file(args.record, "--record")
    if args.record_dir:
        check_writable_dir(args.record_dir, "--record-dir")
    if args.json_stats:
        check_writable_file(args.json_stats, "--json-stats")
    if args.loop and args.video is None:
        raise MLANetError("--loop needs --video (a camera has no end to start over from)")
    # nothing live writes whole meshes: the overlay decodes only the display mesh's rows
    cfg = replace(pipeline_cfg_from_args(args), meshes=False)
    window = None
    if not args.no_window:
        from mlanet.edge.window import GlfwWindow

        window = GlfwWindow(1280, 720, "mlanet-live")  # fails early and clearly without a display
    backend, face_model = open_model(args)
    try:
        senders = LiveSenders(args, face_model)  # a bad --send or a --serve port in use: before the camera opens
    except BaseException:
        backend.close()
        raise
    source: LiveSource
    try:
        if args.camera is not None:
            with native_stderr_quiet(not args.verbose):  # OpenCV logs each backend it tries (V4L2, FFmpeg, ...)
                source = CameraSource(args.camera, width=args.width, height=args.height)
        else:
            source = LiveReplaySource(VideoFileSource(args.video), fps=args.replay_fps, loop=args.loop)
    except BaseException:
        senders.close()  # the viewer's port and the sender thread
        raise
    renderer_factory = None
    if window is not None:  # render in the window's GL context (one context, no copies between them)
        ctx = window.ctx

        def window_renderer(w: int, h: int, topology: MeshTopology) -> FaceRenderer:
            from mlanet.edge.gl_renderer import FaceRenderer

            return FaceRenderer(w, h, topology, ctx=ctx)

        renderer_factory = window_renderer

    pipeline = FacePipeline(backend, face_model, cfg, detector=open_detector(args.detector, args.verbose),
                            renderer_factory=renderer_factory, stats_window=LIVE_STATS_WINDOW)
    session = LiveSession(pipeline, float(source.fps or 30.0), Path(args.record_dir or "."))
    if args.record:
        session.start_recording(Path(args.record))
    width, height = source.size or (None, None)
    pipeline.warmup(width, height)
    t_start = time.perf_counter()
    last_print = t_start
    frame_times: collections.deque[float] = collections.deque(maxlen=30)  # the HUD's fps: the last 30 frames
    timeline: list[dict[str, float]] = []  # --json-stats: frames, dropped frames and RSS over time
    next_sample = 0.0

    def sample(now: float) -> None:
        timeline.append({"t_s": round(now - t_start, 2), "frames": pipeline.frames_done,
                         "dropped_frames": source.dropped, "rss_mib": round(rss_mib(), 1)})

    def show(result: FrameResult) -> None:
        image = result.rendered if result.rendered is not None else result.frame.image
        now = time.perf_counter()
        frame_times.append(now)
        recent = [t for t in frame_times if now - t < 2.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
        session.record(image)
        senders.publish(result)
        if window is not None:
            window.show(draw_hud(image, fps, result.stage_ms, len(result.faces), session.mode, session.recording))

    def on_frame(result: FrameResult) -> bool:
        nonlocal last_print
        if window is not None:
            for key in window.poll():
                session.on_key(key)
            if window.should_close:
                session.quit = True
        nonlocal next_sample
        pipeline.cfg = replace(pipeline.cfg, render_mode=session.mode, overlays=tuple(sorted(session.overlays)))
        now = time.perf_counter()
        if args.json_stats and now - t_start >= next_sample:
            sample(now)
            next_sample += args.stats_every
        if window is None and now - last_print > 5.0:
            last_print = now
            st = pipeline.stats.stages()
            log.info("%d frames  %s", pipeline.frames_done,
                     "  ".join(f"{s} {st[s]['p50_ms']}" for s in HUD_STAGES if st[s]["n"]))
        if args.duration is not None and now - t_start > args.duration:
            return False
        return not session.quit

    interrupted = False
    try:
        with source:
            pipeline.run(source, show, max_frames=args.max_frames, on_frame=on_frame)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # a Ctrl-C while the recording, stats and senders close waits for them (no half-written files)
        with interrupts_held("mlanet-live: closing the recording and outputs; please wait") as held:
            session.stop_recording()
            stats = pipeline.stats.summary()
            stats["dropped_frames"] = source.dropped
            if args.json_stats:
                sample(time.perf_counter())
                stats["timeline"] = timeline
                stats["peak_rss_mib"] = round(peak_rss_mib(point["rss_mib"] for point in timeline), 1)
            senders.close()
            if senders.active:
                stats["live_outputs"] = senders.summary()
            if args.json_stats:
                from mlanet.fileutil import write_json_atomic

                write_json_atomic(args.json_stats, {"source": str(args.video if args.video else f"camera:{args.camera}"), **stats})
            pipeline.close()
            backend.close()
            if window is not None:
                window.close()
    interrupted = interrupted or held.received
    print(f"mlanet-live: {pipeline.frames_done} frames, {stats['dropped_frames']} stale frames dropped"
          + (" (interrupted)" if interrupted else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
