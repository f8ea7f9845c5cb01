#!/usr/bin/env bash
# Stage 4 of mlanet_mobile (mlanet/train/configs/mobile_lite_s4_gpu.yaml) on a lent GPU machine, from the
# repository root, with the device tool:
#   run(command="bash benchmarks/training/device_stage4.sh", carry=[".device_data"], timeout_s=570)
# .device_data/ (ignored by git: .git/info/exclude) holds store_main.npz and store_clips.npz (mlanet data pack,
# commands in the config's header) and the face model file (~/.local/share/mlanet/face_models/ict_face.mlface.npz).
# The script installs the package (no dependencies: the machine's PyTorch stack is used), unpacks the stores,
# measures samples/s in a short probe run, sets optim.steps so the run ends inside BUDGET_S seconds (cosine
# schedule over exactly those steps; run.max_minutes as a safety net), trains, and writes to $OUT: this log,
# the run's metrics.jsonl and summary/config (run_files.tar.gz), the last checkpoint (FP32) and FP16 copies of
# the intermediate ones -- scored on the AFLW2000-3D dev images back on the CPU machine.
# Continuing with a known rate: S4_STEPS=N skips the probe; S4_SET adds --set overrides (space-separated).
# Other stores: S4_STORES="aflw_refined 300w_refined clips_refined" unpacks .device_data/store_<name>.npz into
# runs/s4/store_<name> (default "main clips"), the folders the config names.
# Dry run on a CPU: OUT=/tmp/s4 S4_DEVICE=cpu BUDGET_S=120 S4_SET="optim.batch_size=8 data.num_workers=1" bash ...
set -uo pipefail
T0=$SECONDS
BUDGET_S=${BUDGET_S:-540}
CFG=${S4_CONFIG:-mlanet/train/configs/mobile_lite_s4_gpu.yaml}
RUN=${S4_RUN:-runs/mobile_lite_s4}
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/device_stage4.log") 2>&1
export PYTHONUNBUFFERED=1 MLANET_HOME=${MLANET_HOME:-/tmp/mlanet_home} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
extra=(--set "run.device=${S4_DEVICE:-cuda}")
for kv in ${S4_SET:-}; do extra+=(--set "$kv"); done
fail() { echo "FAILED: $*"; exit 1; }

echo "== $(date -u +%FT%TZ) setup"
if ! python3 -c "import mlanet.edge" 2>/dev/null; then
  python3 -m pip install -q --no-deps --no-index --no-build-isolation -e . || {
    echo "pip install -e . failed: running from the source tree (links for the top-level packages)"
    for p in edge export shaders benchmarks; do [ -e "mlanet/$p" ] || ln -s "../$p" "mlanet/$p"; done
    export PYTHONPATH=$PWD; }
fi
python3 -c "import mlanet.edge, mlanet.train.loop" || fail "import mlanet"
mkdir -p "$MLANET_HOME/face_models" && cp -n .device_data/ict_face.mlface.npz "$MLANET_HOME/face_models/"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, os; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpus', os.cpu_count())"
git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -5
for s in ${S4_STORES:-main clips}; do
  [ -f "runs/s4/store_$s/manifest.json" ] || python3 -m mlanet.cli data unpack ".device_data/store_$s.npz" \
    --out "runs/s4/store_$s" --quiet || fail "unpack store_$s"
done
batch=$(python3 -c "
import sys; from mlanet.config import load_config; from mlanet.train.config import TrainCfg
print(load_config(TrainCfg, '$CFG', sys.argv[1:]).optim.batch_size)" ${S4_SET:-}) || fail "config"
if [ -n "${S4_STEPS:-}" ]; then  # a known rate: no probe
  steps=$S4_STEPS
  left=$((BUDGET_S - (SECONDS - T0) - ${S4_RESERVE_S:-50}))
else
echo "== $(date -u +%FT%TZ) probe ($((SECONDS - T0)) s)"
rm -rf /tmp/s4_probe
python3 -m mlanet.cli train --config "$CFG" --out /tmp/s4_probe "${extra[@]}" --set "optim.steps=${PROBE_STEPS:-120}" \
  --set run.log_every=20 --set run.ckpt_every=0 --set optim.warmup_steps=20 >/dev/null || fail "probe run"
rate=$(python3 -c "
import json, statistics, sys
r = [json.loads(l)['samples_per_s'] for l in open('/tmp/s4_probe/metrics.jsonl') if 'samples_per_s' in l]
print(statistics.median(r[1:] or r))") || fail "no samples/s in the probe"
left=$((BUDGET_S - (SECONDS - T0) - ${S4_RESERVE_S:-50}))
steps=$(python3 -c "print(max(20, int($rate * $left * 0.93 / $batch)))")
echo "== $(date -u +%FT%TZ) probe: $rate samples/s at batch $batch; $left s left"
fi
every=$(( steps / 4 ))
echo "== $(date -u +%FT%TZ) $steps steps, checkpoints every $every"
rm -rf "$RUN"
python3 -m mlanet.cli train --config "$CFG" "${extra[@]}" --set "optim.steps=$steps" --set "run.ckpt_every=$every" \
  --set "run.max_minutes=$(python3 -c "print(round(($left + 20) / 60, 2))")" --set "run.out_dir=$RUN" >/dev/null \
  || echo "train exited with $? (checkpoints kept)"
echo "== $(date -u +%FT%TZ) collect ($((SECONDS - T0)) s)"
python3 - "$RUN" "$OUT" <<'PY'
import shutil, sys, tarfile
from pathlib import Path
from mlanet.checkpoint import load_weights, save_weights
run, out = Path(sys.argv[1]), Path(sys.argv[2])
ckpts = sorted((run / "checkpoints").glob("step_*.safetensors"))
for i, c in enumerate(ckpts):
    if i == len(ckpts) - 1:
        shutil.copyfile(c, out / f"s4_{c.stem}_fp32.safetensors")
    if i >= len(ckpts) - 4:
        tensors, meta = load_weights(c)
        save_weights(out / f"s4_{c.stem}_fp16.safetensors",
                     {k: (v.half() if v.is_floating_point() else v) for k, v in tensors.items()}, meta)
with tarfile.open(out / "run_files.tar.gz", "w:gz") as t:
    for name in ("config.yaml", "summary.json", "last.json", "metrics.jsonl"):
        if (run / name).exists():
            t.add(run / name, arcname=name)
    if Path("/tmp/s4_probe/metrics.jsonl").exists():
        t.add("/tmp/s4_probe/metrics.jsonl", arcname="probe_metrics.jsonl")
print("collected", [p.name for p in sorted(out.iterdir())])
PY
echo "== $(date -u +%FT%TZ) done ($((SECONDS - T0)) s)"
