"""Plots and the markdown summary, generated from the JSON records only.

For every device folder under the results root: ``pipeline_stages.png`` (stacked per-stage
p50 latency of each pipeline run), ``model_throughput.png`` (faces/s against batch size per model
and backend), ``pipeline_fps_vs_faces.png`` and ``soak_rss.png`` when their records exist
(``accuracy_ced.png`` is drawn by the accuracy benchmark itself). ``SUMMARY.md`` at the results
root collects the numbers of all devices, with the command and commit of every record.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from mlanet.fileutil import save_figure_atomic, write_text_atomic

log = logging.getLogger(__name__)

STAGE_ORDER = ("decode", "detect_track", "preprocess", "infer", "reconstruct", "render", "encode")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)


def load_records(device_dir: Path) -> dict[str, dict[str, Any]]:
    """``{benchmark name: record}`` of the JSON records in ``device_dir`` (unreadable files skipped with a warning)."""
    out = {}
    for path in sorted(device_dir.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: skipped (%s)", path, exc)
            continue
        # benchmark records carry results and the environment they ran in; other JSON files beside them
        # (an evaluation's own output, e.g. accuracy/landmark_floor.json) are not summarised here
        if isinstance(rec, dict) and "results" in rec and "environment" in rec:
            out[path.stem] = rec
    return out


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pipeline_stages(rec: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    r = rec["results"]
    runs = [(f"{c['clip']} {c['resolution']} {'render+encode' if x['render_and_encode'] else 'no render'}", x["stages"])
            for c in r.get("clips", []) for x in c["runs"]]
    runs += [(f"{f['faces']} face{'s' if f['faces'] > 1 else ''} (tiled)", f["stages"]) for f in r.get("faces", [])]
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(runs) + 2.2))
    left = [0.0] * len(runs)
    colours = plt.get_cmap("tab10")
    for si, stage in enumerate(STAGE_ORDER):
        vals = [(st.get(stage) or {}).get("p50_ms") or 0.0 for _, st in runs]
        ax.barh(range(len(runs)), vals, left=left, color=colours(si), label=stage)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(runs)), [name for name, _ in runs])
    ax.invert_yaxis()
    ax.set_xlabel("ms per frame (p50 per stage)")
    ax.set_title(f"{r.get('model', '')} on {r.get('backend', '')} - {rec['environment']['device']}", fontsize=9)
    ax.legend(fontsize=7, ncol=len(STAGE_ORDER), loc="upper center", bbox_to_anchor=(0.5, -0.12 * 8 / max(len(runs), 4)))
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_fps_vs_faces(rec: dict[str, Any], path: Path) -> Path | None:
    faces = rec["results"].get("faces") or []
    if not faces:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([f["faces"] for f in faces], [f["fps_wall"] for f in faces], "o-")
    ax.set_xlabel("faces in the frame")
    ax.set_ylabel("fps (track + fit + reconstruct)")
    ax.set_xticks([f["faces"] for f in faces])
    ax.grid(alpha=0.3)
    ax.set_title(rec["environment"]["device"], fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def model_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows ``{model, backend (with mode), batch, median_ms, p95_ms, throughput_faces_per_s}`` of a
    model_latency record (measured batches only)."""
    rows = []
    for run in rec["results"].get("runs", []):
        backend = run["backend"] + ("" if run.get("mode", "eager") == "eager" else f" ({run['mode']})")
        for b in run.get("batches", []):
            if b.get("status") == "ok":
                rows.append({"model": run["model"], "backend": backend, **b})
    return rows


def plot_model_throughput(rec: dict[str, Any], path: Path) -> Path | None:
    rows = model_rows(rec)
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(x["model"], x["backend"]) for x in rows}):
        pts = sorted((x["batch"], x["throughput_faces_per_s"]) for x in rows if (x["model"], x["backend"]) == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{key[0]} / {key[1]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("faces / s")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    ax.set_title(rec["environment"]["device"], fontsize=8)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(rec: dict[str, Any], path: Path) -> Path | None:
    samples = rec["results"].get("rss_mib") or []
    if not samples:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s[0] / 60.0 for s in samples], [s[1] for s in samples])
    ax.axvline(rec["results"]["warmup_min"], color="grey", ls="--", lw=1, label="end of warm-up")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title(f"soak: growth after warm-up {rec['results']['rss_growth_after_warmup_pct']} %", fontsize=9)
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


PLOTS = {
    "pipeline": (("pipeline_stages.png", plot_pipeline_stages), ("pipeline_fps_vs_faces.png", plot_fps_vs_faces)),
    "model_latency": (("model_throughput.png", plot_model_throughput),),
    "soak": (("soak_rss.png", plot_soak),),
}


def _ms(d: dict[str, Any] | None, key: str = "p50_ms") -> str:
    v = (d or {}).get(key)
    return "-" if v is None else f"{v:.1f}"


def _provenance(rec: dict[str, Any]) -> str:
    env = rec["environment"]
    commit = (env.get("commit") or "?")[:10] + (" (uncommitted changes)" if env.get("dirty_tree") else "")
    return f"<sub>`{env.get('command', '?')}` · commit {commit} · {env.get('time_utc', '?')}</sub>"


def summarise_device(device_dir: Path, recs: dict[str, dict[str, Any]], images: list[Path], root: Path) -> str:
    env = next(iter(recs.values()))["environment"]
    lines = [f"## {env['device']}", "", f"{env.get('cpu_count')} CPU threads visible, torch {env.get('torch')}, "
             f"Python {env.get('python')}; folder `{device_dir.relative_to(root)}`", ""]
    if "pipeline" in recs:
        r = recs["pipeline"]["results"]
        lines += [f"### Pipeline: {r['model']} on {r['backend']} ({r.get('weights')})", "",
                  "Per-stage p50 ms; fps from wall time over the whole clip (warm-up included).", "",
                  "| clip | run | fps (wall) | frame p50 ms | " + " | ".join(STAGE_ORDER) + " |",
                  "|---|---|---|---|" + "---|" * len(STAGE_ORDER)]
        for c in r.get("clips", []):
            for x in c["runs"]:
                name = "render + encode" if x["render_and_encode"] else "track + fit + reconstruct"
                lines.append(f"| {c['clip']} {c['resolution']} | {name} | {x['fps_wall']} | {_ms(x['total'])} | "
                             + " | ".join(_ms(x["stages"].get(s)) for s in STAGE_ORDER) + " |")
        for f in r.get("faces", []):
            lines.append(f"| {f.get('clip', '')} tiled | {f['faces']} faces, no render | {f['fps_wall']} | "
                         f"{_ms(f['total'])} | " + " | ".join(_ms(f["stages"].get(s)) for s in STAGE_ORDER) + " |")
        live = next((c["live"] for c in r.get("clips", []) if c.get("live")), None)
        if live and live.get("capture_to_render_ms"):
            lat = live["capture_to_render_ms"]
            lines += ["", f"Real-time replay at {live['replay_fps']} fps: capture-to-render latency p50 "
                      f"{_ms(lat)} ms, p95 {_ms(lat, 'p95_ms')} ms; {live['frames_processed']} frames processed, "
                      f"{live['frames_dropped']} stale frames dropped."]
        mem = r.get("memory") or {}
        lines += ["", f"Peak RSS {mem.get('peak_rss_mib')} MiB (whole process)"
                  + (f", GPU peak {mem['gpu_peak_mib']:.0f} MiB" if mem.get("gpu_peak_mib") else "") + ".",
                  "", _provenance(recs["pipeline"]), ""]
    if "model_latency" in recs:
        ml = recs["model_latency"]["results"]
        rows = model_rows(recs["model_latency"])
        lines += ["### Network alone (latency per call, throughput)", "",
                  f"Untrained weights (speed does not depend on them), input {ml.get('input_size')}; load average "
                  f"at start/end {ml.get('load_average')}.", "",
                  "| model | backend | batch | median ms | p95 ms | faces/s |", "|---|---|---|---|---|---|"]
        for x in rows:
            lines.append(f"| {x['model']} | {x['backend']} | {x['batch']} | {x['median_ms']:.2f} | "
                         f"{x['p95_ms']:.2f} | {x['throughput_faces_per_s']:.1f} |")
        for run in ml.get("runs", []):
            for b in run.get("batches", []):
                if b.get("status") != "ok":
                    lines.append(f"\n{run['model']} / {run['backend']} batch {b.get('batch')}: {b.get('status')} "
                                 f"({b.get('reason', '')})")
        for name, avail in (ml.get("backends") or {}).items():
            if isinstance(avail, dict) and not avail.get("available", True):
                lines.append(f"\n{name}: not measured ({avail.get('reason')})")
        lines += ["", _provenance(recs["model_latency"]), ""]
    if "compare" in recs:
        c = recs["compare"]["results"].get("summary") or {}
        lines += ["### Side by side with MediaPipe (same frames, decoded once)", "",
                  f"Clip {c.get('clip')}, {c.get('frames_x_passes')}. {c.get('ratio_definition', '')}", "",
                  "| pipeline | median ms/frame | p95 ms | fps | frames with a face | fps ratio vs MediaPipe |",
                  "|---|---|---|---|---|---|"]
        ratios = c.get("fps_ratio_mlanet_over_mediapipe") or {}
        for side, d in (c.get("per_frame_ms") or {}).items():
            ratio = ratios.get(f"{side}_over_mediapipe")
            lines.append(f"| {side} | {d['median']:.2f} | {d['p95']:.2f} | {d['fps']:.1f} | {d['frames_with_face']} | "
                         f"{'1 (reference)' if side.startswith('mediapipe') else ratio} |")
        gl = c.get("gl_renderer_ms") or {}
        dr = c.get("differentiable_renderer_ms_b8_224px") or {}
        lines += ["", "GL renderer per frame (ms): " + ", ".join(f"{k} {v}" for k, v in gl.items()),
                  "", "Differentiable renderer, 8 faces at 224 (ms): " + ", ".join(f"{k} {v}" for k, v in dr.items()),
                  "", _provenance(recs["compare"]), ""]
    if "accuracy" in recs:
        lines += ["### Accuracy (AFLW2000-3D)", ""]
        acc = recs["accuracy"]["results"]
        data = acc.get("data") or {}
        lines += [f"Data: `{data.get('name')}`, {data.get('subset')}. NME (%) per yaw bin [0,30] / (30,60] / (60,90], "
                  "mean of bins (the headline), all images, AUC@7%.", "",
                  "| model | bins | mean of bins | all images | AUC@7% | n |", "|---|---|---|---|---|---|"]
        for m in acc.get("models", []):
            bins = " / ".join("-" if v is None else f"{v:.2f}" for v in (m.get("nme_bins") or []))
            mb = m.get("nme_mean_bins")
            lines.append(f"| {m.get('label')} | {bins} | {'-' if mb is None else f'{mb:.2f}'} | "
                         f"{m.get('nme_all', float('nan')):.2f} | {m.get('auc_7', float('nan')):.3f} | {m.get('n')} |")
        for name, ref in ((acc.get("references") or {}).get("published") or {}).items():
            lines.append(f"\nPublished, not measured here: {name} {ref['nme_mean_bins']} % mean of bins on the full "
                         f"AFLW2000-3D ({ref['citation']}).")
        lines += ["", _provenance(recs["accuracy"]), ""]
    if "soak" in recs:
        s = recs["soak"]["results"]
        lines += ["### Soak", "", f"{s['minutes']} min, {s['frames']} frames ({s['fps']} fps): peak RSS "
                  f"{s['peak_rss_mib']} MiB (target <= {s['targets']['peak_rss_mib_max']:.0f}), growth after warm-up "
                  f"{s['rss_growth_after_warmup_pct']} % over {s['targets']['growth_over_minutes']} min "
                  f"(target < {s['targets']['growth_pct_max']:.0f} %).", "", _provenance(recs["soak"]), ""]
    for img in images:
        lines.append(f"![{img.stem}]({img.relative_to(root).as_posix()})")
    return "\n".join(lines) + "\n"


def build_report(root: Path) -> Path:
    """Draw the plots of every device folder under ``root`` and write ``root/SUMMARY.md``."""
    if not root.is_dir():
        from mlanet.errors import MLANetError

        raise MLANetError(f"{root}: no benchmark results folder (run `mlanet bench` first)")
    sections = []
    for device_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        recs = load_records(device_dir)
        if not recs:
            continue
        images = []
        for name, plots in PLOTS.items():
            if name in recs:
                for fname, fn in plots:
                    out = fn(recs[name], device_dir / fname)
                    if out is not None:
                        images.append(out)
        ced = device_dir / "accuracy_ced.png"
        if ced.exists():
            images.append(ced)
        sections.append(summarise_device(device_dir, recs, images, root))
    text = ("# Benchmark summary\n\nGenerated by `mlanet bench report` from the JSON records next to this file "
            "(schema `mlanet-bench/1`, see `benchmarks/record.py`). Medians after warm-up; every record "
            "carries its device, library versions, commit and command.\n\n" + "\n".join(sections))
    return write_text_atomic(root / "SUMMARY.md", text)


def run(args: argparse.Namespace) -> Path:
    return build_report(Path(args.out))
