"""``mlanet bench [PART]``: every benchmark of :mod:`mlanet.benchmarks` as one command.

``mlanet bench`` alone (= ``all``) runs the model, pipeline and comparison benchmarks with their
default settings, writes their records under ``<out>/<device_tag>/`` and regenerates the plots and
the markdown summary (:mod:`.report`). Each part can be run on its own; ``accuracy`` and ``soak``
are separate because they need checkpoints / take minutes by design; ``gpu`` needs a CUDA GPU;
``video-e2e``, ``encode``, ``display-mesh``, ``live-soak`` and ``mesh-sizes`` measure the runtime's
targets one by one (each also runs as ``python -m mlanet.benchmarks.<module>``, :func:`main_for`).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

#: Sub-command -> module (relative to this package) with ``add_arguments(parser)`` and ``run(args) -> Path``.
PARTS: dict[str, tuple[str, str]] = {
    "model": ("model_latency", "network latency and throughput vs batch size, per backend"),
    "pipeline": ("pipeline", "the edge pipeline on a clip: stages, fps, latency, memory, fps vs faces"),
    "compare": ("compare", "MediaPipe's face-mesh tracker vs the MLANet pipeline; renderer timings"),
    "accuracy": ("accuracy", "AFLW2000-3D NME/CED of several checkpoints on one plot"),
    "soak": ("soak", "loop a clip for N minutes and record memory over time"),
    "gpu": ("gpu_targets", "the GPU targets: FP16 network latency/throughput, crop kernel, per-frame GPU path"),
    "video-e2e": ("video_end_to_end", "mlanet-video end to end with its default outputs: fps per clip vs the targets"),
    "encode": ("encode_presets", "H.264 encode time, CPU and MB per minute per libx264 preset at 720p"),
    "display-mesh": ("display_mesh", "overlay render time against display-mesh triangle count, image difference"),
    "live-soak": ("live_soak", "mlanet-live looped for an hour: memory growth and dropped-frame drift"),
    "mesh-sizes": ("mesh_output_sizes", "disk use of every mlanet-video output kind, MB per minute of video"),
    "report": ("report", "plots (PNG) and the markdown summary from the records"),
}
#: What ``mlanet bench`` / ``mlanet bench all`` runs, in order (report last).
ALL = ("model", "pipeline", "compare", "report")

#: ``mlanet bench --help`` text (plain text: the module docstring is reStructuredText).
DESCRIPTION = (
    "mlanet bench alone (= mlanet bench all) runs the model, pipeline and comparison benchmarks with their default "
    "settings, writes their records under OUT/<device_tag>/ and regenerates the plots and the markdown summary "
    "(mlanet bench report). Each part can be run on its own; accuracy and soak are separate because they need "
    "checkpoints / take minutes by design; gpu needs a CUDA GPU."
)


def _module(part: str) -> Any:
    return importlib.import_module(f"{__package__}.{PARTS[part][0]}")


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    from mlanet.benchmarks.record import RESULTS

    p.add_argument("--out", type=Path, default=RESULTS,
                   help=f"results folder; records go to OUT/<device_tag>/ (default {RESULTS})")


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("bench", help="latency, throughput, memory and accuracy benchmarks (records + plots)",
                              description=DESCRIPTION)
    sub = p.add_subparsers(dest="bench_part")
    p.set_defaults(func=_run_all, bench_part=None)
    add_common_arguments(p)
    a = sub.add_parser("all", help="model + pipeline + compare, then the report")
    add_common_arguments(a)
    a.add_argument("--quick", action="store_true", help="fewer repeats and frames (a smoke run, ~3 min on 2 cores)")
    a.set_defaults(func=_run_all)
    p.add_argument("--quick", action="store_true", help="fewer repeats and frames (a smoke run)")
    for part, (_, help_text) in PARTS.items():
        sp = sub.add_parser(part, help=help_text)
        add_common_arguments(sp)
        _module(part).add_arguments(sp)
        sp.set_defaults(func=_run_part(part))


def _run_part(part: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        path = _module(part).run(args)
        if path is not None:
            print(path)
        return 0

    return run


def main_for(part: str, argv: list[str] | None = None) -> int:
    """``python -m mlanet.benchmarks.<module> ARGS``: the same as ``mlanet bench PART ARGS`` (one parser, one
    error handling: bad input prints one line and exits with status 2)."""
    import sys

    from mlanet.cli import main

    return main(["bench", part, *(sys.argv[1:] if argv is None else argv)])


def _run_all(args: argparse.Namespace) -> int:
    """Each part in its own process, so peak memory and thread pools of one part do not leak into the next."""
    import subprocess
    import sys

    for part in ALL:
        cmd = [sys.executable, "-m", "mlanet.cli", "bench", part, "--out", str(args.out)]
        if getattr(args, "quick", False) and part != "report":
            cmd.append("--quick")
        print(f"== mlanet bench {part}", flush=True)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"mlanet bench {part} failed (exit {rc}); stopping", file=sys.stderr)
            return rc
    return 0
