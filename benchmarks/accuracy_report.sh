#!/usr/bin/env bash
# The accuracy report of the shipped default weights (issue 7), from a clean install with ../shared:
#   bash benchmarks/accuracy_report.sh [OUT_DIR]      (default benchmarks/results/accuracy; ~3 min on 2 CPU cores)
# The combined CED record goes where `mlanet bench` records go (benchmarks/results/<device>/accuracy.json,
# or $BENCH_OUT/<device>/), so `mlanet bench report` puts it in SUMMARY.md.
# * AFLW2000-3D: only the 100 held-out dev images (mlanet/data/splits/aflw2000_dev_heldout.txt; the
#   other 99 trained the weights and the albedo model), per yaw bin, mean of bins, CED;
# * the same protocol on the dlib-annotated in-the-wild faces (+ the LFPW sample), never trained on;
# * landmark jitter on the shared clips, temporal filter on and off (the Hamilton clip's every 3rd
#   frame was a stage-2 training input; the Obama clip was not);
# * one CED plot of both networks and the untrained baseline next to the published numbers.
set -euo pipefail
SHARED=${MLANET_SHARED:-../shared}
OUT=${1:-benchmarks/results/accuracy}
mkdir -p "$OUT"
for m in mlanet_mobile mlanet_r50; do
  mlanet eval aflw2000 --data "$SHARED/data/aflw2000-3d-dev" --list aflw2000_dev_heldout --model $m \
    --json "$OUT/aflw2000_heldout_$m.json"
  mlanet eval landmarks68 --data "$SHARED/data/landmarks68/dlib-faces" --data "$SHARED/data/landmarks68/lfpw-sample" \
    --model $m --json "$OUT/landmarks68_$m.json"
done
mlanet eval jitter "$SHARED/data/video/obama_720p.mp4" "$SHARED/data/video/hamilton_360p_multiface.mp4" \
  --json "$OUT/jitter_mlanet_mobile.json"
mlanet bench accuracy --out "${BENCH_OUT:-benchmarks/results}" --data "$SHARED/data/aflw2000-3d-dev" --list aflw2000_dev_heldout \
  --weights "$(python -c 'from mlanet.weights import default_weights_path as d; print(d("mlanet_mobile"))')" \
  --weights "$(python -c 'from mlanet.weights import default_weights_path as d; print(d("mlanet_r50"))')" \
  --untrained mlanet_mobile --labels "mlanet_mobile (shipped)" "mlanet_r50 (shipped)" "untrained mlanet_mobile"
echo "report written to $OUT"
