"""Plot training curves of one or more ``mlanet train`` runs from their ``metrics.jsonl``.

    python -m mlanet.benchmarks.plot_training_curves --out curves.png RUN_DIR_OR_JSONL [...]

Stages of one model are drawn end to end (the step axis of each run continues where the
previous one stopped) when they are given in order with ``--chain``. Panels: total loss and the
landmark terms (per logged step, with a running median), learning rate, and the validation NME (%):
held-back synthetic faces, and the AFLW2000-3D dev images (mean of yaw bins) where the run scored them, or
where its checkpoints were scored afterwards (``best.json``'s ``all``: runs on a lent GPU machine, scored back
here). ``--samples`` puts training samples (steps x the run's ``optim.batch_size`` from its config.yaml) on the
x axis, for stages with different batch sizes. Reads only the files; writes one PNG atomically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """The JSON objects of a ``metrics.jsonl`` (or the one inside a run folder)."""
    f = path / "metrics.jsonl" if path.is_dir() else path
    if not f.is_file():
        raise SystemExit(f"error: {f}: no metrics.jsonl")
    rows = []
    for n, line in enumerate(f.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SystemExit(f"error: {f}:{n}: not JSON ({exc})") from None
    return rows


def running_median(values: list[float], k: int = 9) -> list[float]:
    half = k // 2
    return [statistics.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))]


#: the 2D landmark terms summed in the second panel (whichever a run logged)
LANDMARK_TERMS = ("loss/landmarks", "loss/landmarks_ibug68", "loss/landmarks_aflw21", "loss/landmarks_mtfl5",
                  "loss/landmarks_teacher68", "loss/mediapipe")


def _landmark_sum(row: dict) -> float:
    return float(sum(row.get(k, 0.0) for k in LANDMARK_TERMS))


def _batch_size(run: Path) -> int:
    """``optim.batch_size`` of a run folder's config.yaml (the loop's default 16 if it names none)."""
    import yaml

    cfg = run / "config.yaml" if run.is_dir() else run.parent / "config.yaml"
    if not cfg.is_file():
        raise SystemExit(f"error: {cfg}: no config.yaml (needed for --samples)")
    return int((yaml.safe_load(cfg.read_text()) or {}).get("optim", {}).get("batch_size", 16))


def _scored_afterwards(run: Path) -> list[dict]:
    """Dev scores of checkpoints scored after the run (``best.json``'s ``all``: step -> metrics)."""
    best = (run if run.is_dir() else run.parent) / "best.json"
    if not best.is_file():
        return []
    scored = json.loads(best.read_text()).get("all") or {}
    return [{"step": int(s), **m} for s, m in sorted(scored.items(), key=lambda kv: int(kv[0]))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run folders (or metrics.jsonl files)")
    ap.add_argument("--out", required=True, type=Path, help="PNG to write")
    ap.add_argument("--chain", action="store_true", help="the runs are consecutive stages of one model")
    ap.add_argument("--samples", action="store_true", help="x axis: training samples (steps x batch size)")
    ap.add_argument("--title", default="training curves")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlanet.fileutil import save_figure_atomic

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    offset = 0
    for run in args.runs:
        rows = read_metrics(run)
        label = run.name if run.is_dir() else run.parent.name
        train = [r for r in rows if "loss/total" in r and r["step"] >= 0]
        val = [r for r in rows if "val_nme_pct" in r]
        init = [r for r in rows if "initial_val_nme_pct" in r]
        scale = _batch_size(run) if args.samples else 1
        steps = [offset + r["step"] * scale for r in train]
        for ax, key in ((axes[0], "loss/total"), (axes[1], LANDMARK_TERMS)):
            vals = [r[key] if isinstance(key, str) else _landmark_sum(r) for r in train]
            (line,) = ax.plot(steps, running_median(vals), label=label)
            ax.plot(steps, vals, alpha=0.25, color=line.get_color())
        axes[2].plot(steps, [r["lr"] for r in train], label=label)
        vsteps = [offset + max(r["step"], 0) * scale for r in init + val]
        (vline,) = axes[3].plot(vsteps, [r.get("val_nme_pct", r.get("initial_val_nme_pct")) for r in init + val], "o-",
                                label=f"{label}: synthetic")
        dev = [r for r in init + val if "dev_nme_mean_bins" in r or "initial_dev_nme_mean_bins" in r]
        dev += _scored_afterwards(run)
        if dev:  # the AFLW2000-3D dev images (validation only), mean of yaw bins
            axes[3].plot([offset + max(r["step"], 0) * scale for r in dev],
                         [r.get("dev_nme_mean_bins", r.get("initial_dev_nme_mean_bins")) for r in dev], "s--",
                         color=vline.get_color(), label=f"{label}: AFLW2000-3D dev, mean of bins")
        if args.chain and train:
            offset = steps[-1] + scale
    for ax, t in zip(axes, ("total loss", "landmark terms (sum)", "learning rate", "validation NME (%)")):
        ax.set_title(t)
        ax.set_xlabel(("training samples" if args.samples else "step") + (" (stages chained)" if args.chain else ""))
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[3].legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    save_figure_atomic(fig, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
