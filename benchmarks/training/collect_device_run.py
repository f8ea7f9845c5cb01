"""Turn what a device run sent back (benchmarks/training/device_stage4.sh's $OUT) into a training run folder,
scoring every returned checkpoint on the AFLW2000-3D dev images and naming the best in best.json.

    python -m mlanet.benchmarks.training.collect_device_run /work/.device/1 --run runs/mobile_lite_s4 \
        --dev ../shared/data/aflw2000-3d-dev

The run folder then looks like one trained here (config.yaml, summary.json, last.json, metrics.jsonl,
checkpoints/, best.json) so `mlanet weights pack --stage ...` and the curve plots read it; the dev scores of each
checkpoint go to <run>/dev/step_NNNNNNN.json (mlanet eval aflw2000's record). The dev images only choose the
checkpoint (validation); they never travel to the device machine and never train.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

BEST_METRIC = "dev_nme_mean_bins"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("device_out", type=Path, help="the folder the device call's files came back to")
    ap.add_argument("--run", type=Path, required=True, help="run folder to create or complete")
    ap.add_argument("--dev", type=Path, required=True, help="the AFLW2000-3D dev folder (validation only)")
    args = ap.parse_args(argv)
    files = args.device_out / "run_files.tar.gz"
    if not files.is_file():
        print(f"error: {files}: not found (is {args.device_out} a device_stage4.sh output?)", file=sys.stderr)
        return 2
    run = args.run
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "dev").mkdir(exist_ok=True)
    with tarfile.open(files) as t:
        t.extractall(run, filter="data")
    shutil.copyfile(args.device_out / "device_stage4.log", run / "device_stage4.log")
    ckpts = {}
    for p in sorted(args.device_out.glob("s4_step_*_fp*.safetensors")):
        m = re.fullmatch(r"s4_(step_\d+)_(fp16|fp32)\.safetensors", p.name)
        if m is None:
            continue
        name = f"{m.group(1)}.safetensors" if m.group(2) == "fp32" else f"{m.group(1)}.fp16.safetensors"
        shutil.copyfile(p, run / "checkpoints" / name)
        if m.group(2) == "fp16":
            ckpts[int(m.group(1)[5:])] = run / "checkpoints" / name
    scores = {}
    for step, path in sorted(ckpts.items()):
        rec = run / "dev" / f"step_{step:07d}.json"
        if not rec.is_file():
            subprocess.run(["mlanet", "eval", "aflw2000", "--data", str(args.dev), "--weights", str(path),
                            "--json", str(rec)], check=True, stdout=subprocess.DEVNULL)
        d = json.loads(rec.read_text())
        scores[step] = {BEST_METRIC: d["nme_mean_bins"], "dev_nme_all": d["nme_all"], "dev_n": d["n"],
                        **{f"dev_nme_bin{i}": v for i, v in enumerate(d["nme_bins"])}}
        print(f"step {step}: mean of bins {d['nme_mean_bins']:.3f} %, bins "
              + " / ".join(f"{v:.2f}" for v in d["nme_bins"]))
    if not scores:
        print(f"error: no checkpoints in {args.device_out}", file=sys.stderr)
        return 2
    step = min(scores, key=lambda s: scores[s][BEST_METRIC])
    best = {"metric": BEST_METRIC, "value": scores[step][BEST_METRIC], "step": step,
            "weights": ckpts[step].name, "metrics": scores[step],
            "chosen_on": "the AFLW2000-3D dev images (validation only, never trained on); scored on the CPU machine "
                         "from the FP16 checkpoints the device run sent back",
            "all": {str(s): v for s, v in scores.items()}}
    (run / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    print(f"best: step {step} ({scores[step][BEST_METRIC]:.3f} %) -> {run / 'best.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
