"""``mlanet-video`` end to end with its default outputs (issue 17: >= 30 fps on the Obama clip, >= 20 fps
on the multi-face clip; no stalls: p95 frame time <= 2 x p50).

Runs the command in this process (shipped weights, default backend and outputs: overlay video,
params, CSV, tracks, compact mesh sequences, GLBs) ``--repeats`` times per clip into temporary
folders, after one warm-up run that also fills the ONNX cache. Per run: frames, the frame loop's
wall time from ``run.json`` (``elapsed_s``: reading, every stage and writing every output;
model loading excluded), the whole command's wall time, and the per-frame total time's p50/p95
with every stage's p50/p95 from ``run.json``. The record keeps the median run by fps.

    mlanet bench video-e2e --repeats 3      (or: python -m mlanet.benchmarks.video_end_to_end --repeats 3)

Writes ``benchmarks/results/<device>/video_end_to_end.json`` (``--out`` for another results root).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip
from mlanet.edge.loading import positive_int
from mlanet.errors import MLANetError
from mlanet.run_environment import load_average_1min

TARGET_FPS = {"obama_720p.mp4": 30.0, "hamilton_360p_multiface.mp4": 20.0}


def run_once(clip: Path, out: Path, extra: list[str]) -> dict:
    from mlanet.edge import video_cli

    t0 = time.perf_counter()
    rc = video_cli.main([str(clip), "--out", str(out), "--quiet", *extra])
    command_s = time.perf_counter() - t0
    if rc != 0:
        raise MLANetError(f"mlanet-video {clip} exited with {rc}")
    run = json.loads((out / "run.json").read_text())
    stats = run["stats"]
    frames = int(run["frames_done"])
    return {
        "frames": frames,
        "loop_s": round(run["elapsed_s"], 3),
        "command_s": round(command_s, 3),
        "fps_end_to_end": round(frames / run["elapsed_s"], 2),
        "frame_total_p50_ms": stats["total"]["p50_ms"],
        "frame_total_p95_ms": stats["total"]["p95_ms"],
        "p95_over_p50": round(stats["total"]["p95_ms"] / stats["total"]["p50_ms"], 2),
        "stages_p50_ms": {k: v["p50_ms"] for k, v in stats["stages"].items() if v["n"]},
        "stages_p95_ms": {k: v["p95_ms"] for k, v in stats["stages"].items() if v["n"]},
        "backend": run["backend"].get("backend"),
        "thread_plan": run["backend"].get("thread_plan"),
        "encoder": run.get("encoder"),
    }


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``mlanet bench video-e2e`` (``--out`` is added by the caller)."""
    ap.add_argument("clips", nargs="*", help="videos (default: the shared Obama and multi-face clips)")
    ap.add_argument("--repeats", type=positive_int, default=3, help="timed runs per clip (median), after one warm-up run")
    ap.add_argument("--video-arg", action="append", default=[], metavar="ARG",
                    help="one more mlanet-video argument (repeatable, e.g. --video-arg=--meshes --video-arg=none)")


def run(args: argparse.Namespace) -> Path:
    """Run every clip, write ``video_end_to_end.json``; returns its path."""
    clips = [Path(c) for c in args.clips] or [shared_clip(n) for n in TARGET_FPS if shared_clip(n).exists()]
    if not clips:
        raise MLANetError("no clips given and none of the shared clips found (set MLANET_SHARED or name the videos)")
    for clip in clips:
        if not clip.is_file():
            raise MLANetError(f"{clip}: no such video file")
    extra = list(args.video_arg)
    load_start = load_average_1min()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mlanet-e2e-") as tmp:
        for clip in clips:
            run_once(clip, Path(tmp) / f"{clip.stem}-warmup", extra)
            runs = [run_once(clip, Path(tmp) / f"{clip.stem}-{i}", extra) for i in range(args.repeats)]
            median = sorted(runs, key=lambda r: r["fps_end_to_end"])[len(runs) // 2]
            rows.append({"clip": clip.name, "target_fps": TARGET_FPS.get(clip.name),
                         "fps_runs": [r["fps_end_to_end"] for r in runs], "median_run": median})
    results = {"command_args": extra, "repeats": args.repeats, "clips": rows,
               "load_average_1min_start": load_start, "load_average_1min_end": load_average_1min()}
    out = write_record("video_end_to_end", results, out_dir=record_dir(args.out))
    for r in rows:
        m = r["median_run"]
        print(f"{r['clip']:32s} {m['fps_end_to_end']:6.1f} fps (target {r['target_fps']}), frame p50 "
              f"{m['frame_total_p50_ms']} p95 {m['frame_total_p95_ms']} ms; stages p50 {m['stages_p50_ms']}")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlanet.benchmarks.video_end_to_end ARGS``: the same as ``mlanet bench video-e2e ARGS``."""
    from mlanet.benchmarks.cli import main_for

    return main_for("video-e2e", argv)


if __name__ == "__main__":
    sys.exit(main())
