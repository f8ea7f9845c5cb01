"""Disk use of every ``mlanet-video`` output kind, in MB per minute of video (issue 17 item 3).

Runs ``mlanet-video`` (in this process, the shipped weights unless ``--untrained``) on the first
``--max-frames`` frames of each clip: once with the defaults (overlay video, params.npz,
blendshapes.csv, tracks.json, run.json, GLB per track, ``--meshes sequence``), then once per
per-frame mesh kind (``--meshes obj``, ``--meshes ply``, with ``--no-video --no-glb``). Sizes are
scaled to one minute of video with the clip's frame rate::

    MB/min = (bytes - fixed_bytes) / 1e6 / (frames / fps / 60)

``fixed_bytes`` is what a file holds once however long the video: a mesh sequence's topology
(exact: its size minus N * (6 V + 32) bytes) and a GLB's mesh and morph targets (its size minus
its animation data, 4 * (K + 8) bytes per keyframe). ``mb_per_face_minute`` divides by the face
count too (face-frames / frames); mesh outputs grow with faces, not with the video's resolution.
Only the overlay video depends on the resolution (720p for obama_720p.mp4).

    OMP_NUM_THREADS=1 mlanet bench mesh-sizes --max-frames 60

(or ``python -m mlanet.benchmarks.mesh_output_sizes ...``, the same options).

Writes ``benchmarks/results/<device>/mesh_output_sizes.json`` (``--out`` for another results root).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_clip
from mlanet.edge.loading import positive_int
from mlanet.errors import MLANetError
from mlanet.run_environment import load_average_1min


def _size(paths) -> int:
    return int(sum(p.stat().st_size for p in paths if p.is_file()))


def _glb_fixed_bytes(path: Path) -> int:
    """A GLB's size minus its animation data (4 bytes per float: K weights + 4 rotation + 3 translation + 1 time)."""
    from mlanet.edge.writers.gltf import read_track_animation

    anim = read_track_animation(path)
    n, K = anim["weights"].shape
    return path.stat().st_size - n * 4 * (K + 8)


def _run(clip: Path, out: Path, max_frames: int, model_args: list[str], extra: list[str]) -> dict:
    from mlanet.edge import video_cli

    t0 = time.perf_counter()
    rc = video_cli.main([str(clip), "--out", str(out), "--max-frames", str(max_frames), "--quiet", *model_args, *extra])
    wall = time.perf_counter() - t0
    if rc != 0:
        raise MLANetError(f"mlanet-video exited with {rc} on {clip}")
    run = json.loads((out / "run.json").read_text())
    with np.load(out / "params.npz", allow_pickle=False) as z:
        face_frames = int(len(z["frame_index"]))
        tracks = len(set(z["track_id"].tolist()))
    return {"frames": int(run["frames_done"]), "fps": float(run["fps"]), "face_frames": face_frames, "tracks": tracks,
            "wall_s": round(wall, 1), "argv_extra": extra}


def _row(kind: str, files: list[Path], run: dict, fixed: int = 0, note: str | None = None) -> dict:
    total = _size(files)
    minutes = run["frames"] / run["fps"] / 60.0
    faces = run["face_frames"] / max(run["frames"], 1)
    rate = (total - fixed) / 1e6 / minutes
    row = {"kind": kind, "files": len(files), "bytes": total, "fixed_bytes": int(fixed),
           "mb_per_minute": round(rate, 3), "mb_per_face_minute": round(rate / faces, 3) if faces else None}
    if note:
        row["note"] = note
    return row


def measure_clip(clip: Path, max_frames: int, kinds: list[str], model_args: list[str], tmp: Path) -> dict:
    from mlanet.edge.writers.mesh_sequence import load_mesh_sequence

    base = tmp / f"{clip.stem}_sequence"
    run = _run(clip, base, max_frames, model_args, [])
    seqs = sorted((base / "meshes").glob("*.mlmesh.npz"))
    seq_fixed, V = 0, None
    for p in seqs:
        with load_mesh_sequence(p) as s:
            V = s.n_vertices
            seq_fixed += p.stat().st_size - s.n_frames * (6 * V + 32)
    glbs = sorted((base / "tracks").glob("*.glb"))
    rows = [
        _row("sequence", seqs, run, seq_fixed, "meshes/track_NNN.mlmesh.npz; fixed = topology once per track"),
        _row("overlay_mp4", [base / "overlay.mp4"], run, 0, "H.264 overlay at the input's resolution"),
        _row("params_npz", [base / "params.npz"], run),
        _row("blendshapes_csv", [base / "blendshapes.csv"], run),
        _row("glb", glbs, run, sum(_glb_fixed_bytes(p) for p in glbs),
             "tracks/track_NNN.glb; fixed = mesh + morph targets once per track"),
        _row("tracks_json_run_json", [base / "tracks.json", base / "run.json"], run, _size([base / "tracks.json",
                                                                                            base / "run.json"]),
             "fixed size"),
    ]
    runs = {"sequence": run}
    for kind in kinds:
        if kind == "sequence":
            continue
        out = tmp / f"{clip.stem}_{kind}"
        r = _run(clip, out, max_frames, model_args, ["--meshes", kind, "--no-video", "--no-glb"])
        runs[kind] = r
        rows.insert(1, _row(kind, sorted((out / "meshes").rglob(f"*.{kind}")), r, 0, f"one .{kind} per face per frame"))
    for row in rows:
        print(f"{clip.name:34s} {row['kind']:22s} {row['mb_per_minute']:10.2f} MB/min "
              f"({row['mb_per_face_minute'] if row['mb_per_face_minute'] is not None else '-'} MB per face-minute; "
              f"fixed {row['fixed_bytes'] / 1e6:.2f} MB)")
    return {"clip": clip.name, "max_frames": max_frames, "n_vertices": V, "runs": runs, "outputs": rows}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of ``mlanet bench mesh-sizes`` (``--out`` is added by the caller)."""
    ap.add_argument("--clips", nargs="*", help="videos (default: obama_720p.mp4 and hamilton_360p_multiface.mp4 "
                    "under $MLANET_SHARED/data/video)")
    ap.add_argument("--max-frames", type=positive_int, default=60, help="frames of each clip (default 60)")
    ap.add_argument("--kinds", default="sequence,obj,ply", help="mesh kinds to measure")
    ap.add_argument("--untrained", metavar="NAME", help="an untrained network instead of the shipped weights")
    ap.add_argument("--face-model", metavar="FILE", help="face-model file (default: the asset home's)")


def run(args: argparse.Namespace) -> Path:
    """Run ``mlanet-video`` per output kind on every clip, write ``mesh_output_sizes.json``; returns its path."""
    clips = [Path(c) for c in args.clips] if args.clips else [
        p for p in (shared_clip("obama_720p.mp4"), shared_clip("hamilton_360p_multiface.mp4")) if p.exists()]
    if not clips:
        raise MLANetError("no clips given and none of the shared clips found (set MLANET_SHARED or pass --clips)")
    for clip in clips:
        if not clip.is_file():
            raise MLANetError(f"{clip}: no such video file")
    model_args = (["--untrained", args.untrained] if args.untrained else []) + (
        ["--face-model", args.face_model] if args.face_model else [])
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    load_start, t0 = load_average_1min(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mlanet-sizes-") as tmp:
        clip_rows = [measure_clip(c, args.max_frames, kinds, model_args, Path(tmp)) for c in clips]
    results = {
        "units": "MB = 1e6 bytes per minute of input video (frames / fps), fixed_bytes once per file",
        "settings": {"max_frames": args.max_frames, "kinds": kinds, "model_args": model_args,
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "clips": clip_rows,
        "load_average_1min_start": load_start,
        "load_average_1min_end": load_average_1min(),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = write_record("mesh_output_sizes", results, out_dir=record_dir(args.out))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m mlanet.benchmarks.mesh_output_sizes ARGS``: the same as ``mlanet bench mesh-sizes ARGS``."""
    from mlanet.benchmarks.cli import main_for

    return main_for("mesh-sizes", argv)


if __name__ == "__main__":
    sys.exit(main())
