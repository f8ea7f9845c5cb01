"""Regenerate the README's CPU speed section from the benchmark records (issue 17: README numbers come
from the records, for the default command a user runs).

Reads ``benchmarks/results/cpu/`` (``video_end_to_end.json``, ``pipeline.json``, ``compare.json``,
``encode_presets.json``, ``live_soak.json``) and writes the markdown between the markers
``<!-- speed:begin -->`` and ``<!-- speed:end -->`` in ``README.md``.

    python tools/readme_speed.py            # rewrite the block
    python tools/readme_speed.py --check    # exit 1 when the README's block differs from the records

Every number in the block is read from a record (rounded for reading); nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- speed:begin -->", "<!-- speed:end -->"
#: Where the records are and the files the block reads.
RECORDS = ("video_end_to_end", "pipeline", "compare", "encode_presets", "live_soak")
#: Targets of issue 17 shown next to the measurements.
TARGETS = {"obama_720p.mp4": 30.0, "hamilton_360p_multiface.mp4": 20.0}
CLIP_LABEL = {"obama_720p.mp4": "1280x720, one face", "hamilton_360p_multiface.mp4": "640x360, several faces with cuts"}


def load_records(folder: Path) -> dict[str, dict[str, Any]]:
    """``{name: record}`` of :data:`RECORDS` in ``folder``; a missing or unreadable one is an error naming it."""
    out = {}
    for name in RECORDS:
        path = folder / f"{name}.json"
        try:
            out[name] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: cannot read the record ({exc}); run its benchmark first") from None
    return out


def _f(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def _commit(rec: dict[str, Any]) -> str:
    env = rec.get("environment", {})
    c = (env.get("commit") or "?")[:7]
    return c + (" (modified tree)" if env.get("dirty_tree") else "")


def render(recs: dict[str, dict[str, Any]]) -> str:
    """The markdown block (without the markers)."""
    e2e, pipe, cmp_, enc, soak = (recs[n] for n in RECORDS)
    e2e_r, pipe_r, cmp_r, enc_r, soak_r = (r["results"] for r in (e2e, pipe, cmp_, enc, soak))
    pipe_clips = {c["clip"]: c for c in pipe_r["clips"]}
    lines = [
        f"Speed on the {e2e['environment'].get('cpu_count', '?')}-core development CPU "
        f"({e2e['environment'].get('cpu', 'CPU')}), the shipped `mlanet_mobile` weights on ONNX Runtime "
        "(the default backend), MediaPipe tracking, GL render on Mesa llvmpipe, H.264 encode "
        f"(libx264 {e2e_r['clips'][0]['median_run']['encoder']['preset']} + "
        f"`{e2e_r['clips'][0]['median_run']['encoder']['x264_params']}`, frame threads). "
        "`mlanet-video` with its default outputs (overlay video, params, CSV, mesh sequences, GLBs; "
        f"`mlanet bench video-e2e --repeats {e2e_r['repeats']}`, "
        "[video_end_to_end.json](benchmarks/results/cpu/video_end_to_end.json), fps over the frame loop, the "
        "median run) and the pipeline alone (`mlanet bench pipeline`, "
        "[pipeline.json](benchmarks/results/cpu/pipeline.json), fps from wall time over the clip). "
        "This machine is a shared virtual machine: the same command varies by about ±20 % from minute to minute.",
        "",
        "| clip | `mlanet-video`, default outputs (target) | frame p50 / p95 (p95 ÷ p50, target ≤ 2) "
        "| pipeline with render + encode | track + fit + reconstruct only |",
        "|---|---|---|---|---|",
    ]
    for c in e2e_r["clips"]:
        m = c["median_run"]
        runs = {r["render_and_encode"]: r for r in pipe_clips.get(c["clip"], {}).get("runs", [])}
        label = f"{CLIP_LABEL.get(c['clip'], c['clip'])} ({m['frames']} frames)"
        lines.append(
            f"| {label} | {_f(m['fps_end_to_end'])} fps (≥ {_f(c['target_fps'], 0)}) "
            f"| {_f(m['frame_total_p50_ms'])} / {_f(m['frame_total_p95_ms'])} ms ({_f(m['p95_over_p50'], 2)}) "
            f"| {_f(runs[True]['fps_wall']) + ' fps' if True in runs else '–'} "
            f"| {_f(runs[False]['fps_wall']) + ' fps' if False in runs else '–'} |")
    first = e2e_r["clips"][0]["median_run"]["stages_p50_ms"]
    stages = ", ".join(f"{k.replace('_', '/')} {_f(v, 2)} ms" for k, v in first.items())
    lines += [
        "",
        f"Per stage at 720p in `mlanet-video` (p50): {stages}. Targets: reconstruct ≤ 0.5 ms per face (pose into "
        "the frame camera, temporal filter and the 68 tracking landmarks; the surface's vertices are decoded in "
        "`mesh`, only the display mesh's when nothing is written), render ≤ 5 ms (llvmpipe, a software "
        "rasteriser: only the face region is drawn and read back, with the 4,000-triangle display mesh), "
        "encode ≤ 5 ms (only the overlay's box is converted to YUV; the rest is the decoded frame's own planes).",
    ]
    ec = enc_r["presets"].get(f"{enc_r['default_preset']}+{enc_r['default_x264_params']}")
    if ec:
        lines += ["",
                  f"The encoder alone on whole 720p RGB frames ([encode_presets.json](benchmarks/results/cpu/"
                  f"encode_presets.json)): {_f(ec['wall_ms_per_frame'], 2)} ms per frame, "
                  f"{_f(ec['mb_per_minute'])} MB per minute, {_f(ec['psnr_db'], 2)} dB PSNR "
                  f"(preset {enc_r['reference_preset']} alone: "
                  f"{_f(enc_r['presets'][enc_r['reference_preset']]['wall_ms_per_frame'], 2)} ms, "
                  f"{_f(enc_r['presets'][enc_r['reference_preset']]['psnr_db'], 2)} dB)."]
    mp, fit, fr = (cmp_r[k] for k in ("mediapipe_face_mesh", "mlanet_fit", "mlanet_fit_render"))
    q = cmp_r["ratios"]
    live = pipe_clips.get(e2e_r["clips"][0]["clip"], {}).get("live")
    lines += [
        "",
        f"In one `mlanet bench compare` run on the same {mp['frames']} frames "
        f"([compare.json](benchmarks/results/cpu/compare.json)) MediaPipe's own face-mesh tracker takes "
        f"{_f(mp['median_ms'], 2)} ms per frame and MLANet track + fit + reconstruct {_f(fit['median_ms'], 2)} ms "
        f"(fps ratio {_f(q['mlanet_fit_over_mediapipe'], 2)}, target ≥ 0.5), with the overlay "
        f"{_f(fr['median_ms'], 2)} ms ({_f(q['mlanet_fit_render_over_mediapipe'], 2)}, target ≥ 0.25).",
    ]
    if live:
        lat = live["capture_to_render_ms"]
        lines[-1] += (f" Capture-to-render latency in a real-time replay at {_f(live['replay_fps'], 0)} fps: "
                      f"p50 {_f(lat['p50_ms'])} ms, p95 {_f(lat['p95_ms'])} ms (target p50 ≤ 40 ms), "
                      f"{live['frames_dropped']} frames dropped.")
    lines += [
        "",
        f"The live path holds flat memory over long sessions: `mlanet bench live-soak` ran `mlanet-live "
        f"--loop` for {_f(soak_r['minutes'], 0)} minutes ({soak_r['frames']:,} frames): RSS growth after warm-up "
        f"{_f(soak_r['rss_growth_after_warmup_pct'], 2)} % (target < 5 %), dropped frames "
        f"{_f(soak_r['first_quarter']['drop_pct'], 2)} % in the first quarter and "
        f"{_f(soak_r['last_quarter']['drop_pct'], 2)} % in the last, {_f(soak_r['last_quarter']['fps'])} fps "
        "([live_soak.json](benchmarks/results/cpu/live_soak.json)).",
        "",
        "Commits measured: " + ", ".join(f"{n} {_commit(recs[n])}" for n in RECORDS) + ". All records, plots "
        "and the comparison with MediaPipe's own tracker: [benchmarks/results/SUMMARY.md](benchmarks/results/SUMMARY.md). "
        "This block is written by `python tools/readme_speed.py` from the records.",
    ]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the markers replaced by ``block``."""
    try:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
    except ValueError:
        raise SystemExit(f"README.md: the markers {BEGIN} ... {END} are missing") from None
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=Path, default=ROOT / "benchmarks" / "results" / "cpu",
                    help="folder of the CPU records (default benchmarks/results/cpu)")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    ap.add_argument("--check", action="store_true", help="exit 1 when the README's block differs from the records")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    new = replace_block(text, render(load_records(args.records)))
    if args.check:
        if new != text:
            print(f"{args.readme}: the speed section differs from the records; run python tools/readme_speed.py",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        tmp = args.readme.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(args.readme)
    print(f"{args.readme}: speed section written from {args.records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
