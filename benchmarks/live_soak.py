"""Endurance of the live path (issue 17): ``mlanet-live`` replaying a clip in real time, looped, for an hour.

Runs ``mlanet-live --video CLIP --loop --no-window --duration MIN*60 --json-stats ...`` as its own process
(the shipped weights, default backend, shaded overlay with landmarks: what a user runs, headless), then reads
the timeline the command wrote (frames, stale frames dropped and resident memory every ``--stats-every`` s)
and checks the issue's two endurance targets:

* **memory**: RSS after warm-up grows by < 5 % (median of the last 10 % of the samples against the median
  of the first minute after warm-up, as ``mlanet bench soak``);
* **no dropped-frame drift**: the share of frames the live source dropped (the pipeline was busy when the
  next frame arrived) in the last quarter of the run is at most 2 percentage points above the first quarter
  after warm-up, and the processed frame rate at most 10 % below it (getting better is not drift).

    mlanet bench live-soak --minutes 60      (or: python -m mlanet.benchmarks.live_soak --minutes 60)

Writes ``benchmarks/results/<device>/live_soak.json`` (``--out`` for another results root). Memory does not
depend on a quiet machine; the drop rate does (a busy CPU drops more frames, evenly over the run: the drift
check compares the run with itself). The record keeps the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip
from mlanet.benchmarks.soak import TARGET_GROWTH_PCT, growth_pct
from mlanet.errors import MLANetError
from mlanet.run_environment import load_average_1min

#: Drop-rate drift allowed between the first and the last quarter after warm-up (percentage points),
#: and the processed-fps change allowed (fraction).
MAX_DROP_DRIFT_PP = 2.0
MAX_FPS_CHANGE = 0.10


def _window(timeline: list[dict], t0: float, t1: float) -> dict[str, float]:
    """Frames, drops, drop share (%) and processed fps between the samples nearest ``t0`` and ``t1`` seconds."""
    a = min(timeline, key=lambda s: abs(s["t_s"] - t0))
    b = min(timeline, key=lambda s: abs(s["t_s"] - t1))
    frames, dropped = b["frames"] - a["frames"], b["dropped_frames"] - a["dropped_frames"]
    span = max(b["t_s"] - a["t_s"], 1e-9)
    return {"from_s": a["t_s"], "to_s": b["t_s"], "frames": frames, "dropped": dropped,
            "drop_pct": round(100.0 * dropped / max(frames + dropped, 1), 3), "fps": round(frames / span, 2)}


def analyse(stats: dict, warmup_s: float) -> dict:
    """The endurance figures of one ``--json-stats`` record (see the module docstring)."""
    tl = stats["timeline"]
    end = tl[-1]["t_s"]
    if end <= warmup_s + 60.0:
        raise MLANetError(f"the run lasted {end:.0f} s, too short for a {warmup_s:.0f} s warm-up and a minute")
    quarter = (end - warmup_s) / 4.0
    first, last = _window(tl, warmup_s, warmup_s + quarter), _window(tl, end - quarter, end)
    growth = growth_pct([(s["t_s"], s["rss_mib"]) for s in tl], warmup_s)
    drift = round(last["drop_pct"] - first["drop_pct"], 3)
    fps_change = round(last["fps"] / first["fps"] - 1.0, 4) if first["fps"] else None
    return {
        "seconds": end, "frames": tl[-1]["frames"], "dropped_frames": tl[-1]["dropped_frames"],
        "rss_growth_after_warmup_pct": growth, "peak_rss_mib": stats.get("peak_rss_mib"),
        "first_quarter": first, "last_quarter": last, "drop_drift_pp": drift, "fps_change": fps_change,
        "targets": {
            "growth_pct_max": TARGET_GROWTH_PCT, "growth_ok": None if growth is None else growth < TARGET_GROWTH_PCT,
            "drop_drift_pp_max": MAX_DROP_DRIFT_PP, "fps_change_max": MAX_FPS_CHANGE,
            "no_drift_ok": drift <= MAX_DROP_DRIFT_PP and fps_change is not None and fps_change >= -MAX_FPS_CHANGE,
        },
    }


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``mlanet bench live-soak`` (``--out`` is added by the caller)."""
    ap.add_argument("--minutes", type=_positive_float, default=60.0, help="run length (default 60)")
    ap.add_argument("--warmup-min", type=float, default=2.0, help="minutes left out of the figures (default 2)")
    ap.add_argument("--stats-every", type=_positive_float, default=10.0, help="seconds between samples (default 10)")
    ap.add_argument("--clip", default=None, help="video (default: the shared obama_720p.mp4)")


def run(args: argparse.Namespace) -> Path:
    """Run ``mlanet-live`` for ``--minutes``, check the endurance targets, write ``live_soak.json``; its path."""
    clip = Path(args.clip) if args.clip else shared_clip()
    if not clip.is_file():
        raise MLANetError(f"{clip}: clip not found (pass --clip or set MLANET_SHARED)")
    load_start = load_average_1min()
    with tempfile.TemporaryDirectory(prefix="mlanet-live-soak-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        # the interpreter running this harness (a venv's mlanet-live need not be on PATH)
        cmd = [sys.executable, "-m", "mlanet.edge.live_cli", "--video", str(clip), "--loop", "--no-window",
               "--duration", str(args.minutes * 60.0), "--json-stats", str(stats_path), "--stats-every",
               str(args.stats_every)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not stats_path.is_file():
            raise MLANetError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
        stats = json.loads(stats_path.read_text())
    results = {"command": " ".join(["mlanet-live"] + [c if c != str(clip) else clip.name for c in cmd[3:]]),
               "clip": clip.name, "minutes": args.minutes, "warmup_min": args.warmup_min, "wall_s": round(wall, 1),
               "load_average_1min_start": load_start, "load_average_1min_end": load_average_1min(),
               **analyse(stats, args.warmup_min * 60.0), "stages": stats.get("stages"), "timeline": stats["timeline"]}
    out = write_record("live_soak", results, out_dir=record_dir(args.out))
    t = results["targets"]
    print(f"live soak {results['seconds'] / 60:.1f} min, {results['frames']} frames, {results['dropped_frames']} dropped: "
          f"RSS growth {results['rss_growth_after_warmup_pct']} % ({'ok' if t['growth_ok'] else 'FAIL'}), drop share "
          f"{results['first_quarter']['drop_pct']} -> {results['last_quarter']['drop_pct']} %, fps "
          f"{results['first_quarter']['fps']} -> {results['last_quarter']['fps']} ({'ok' if t['no_drift_ok'] else 'FAIL'})")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlanet.benchmarks.live_soak ARGS``: the same as ``mlanet bench live-soak ARGS``."""
    from mlanet.benchmarks.cli import main_for

    return main_for("live-soak", argv)


if __name__ == "__main__":
    sys.exit(main())
