#!/usr/bin/env bash
# The accuracy report of the shipped default weights, from a clean install with ../shared:
#   bash benchmarks/accuracy_report.sh [OUT_DIR]      (default benchmarks/results/accuracy; ~3 min on 2 CPU cores)
# The combined CED record goes where `mlanet bench` records go (benchmarks/results/<device>/accuracy.json,
# or $BENCH_OUT/<device>/), so `mlanet bench report` puts it in SUMMARY.md.
# * AFLW2000-3D: all 199 dev images (validation only: never trained on, nor the albedo model; the
#   checkpoint was chosen on them), per yaw bin, mean of bins, CED;
# * the same protocol on the dlib-annotated in-the-wild faces (+ the LFPW sample), never trained on;
# * landmark jitter on the shared clips, temporal filter on and off (neither clip was trained on);
# * dev, in-the-wild and jitter again with --mirror-average (two passes per face), paired against the single pass;
# * one CED plot of the network and the untrained baseline next to the published numbers.
set -euo pipefail
SHARED=${MLANET_SHARED:-../shared}
OUT=${1:-benchmarks/results/accuracy}
mkdir -p "$OUT"
for m in mlanet_mobile; do
  mlanet eval aflw2000 --data "$SHARED/data/aflw2000-3d-dev" --model $m \
    --json "$OUT/aflw2000_dev_$m.json"
  mlanet eval landmarks68 --data "$SHARED/data/landmarks68/dlib-faces" --data "$SHARED/data/landmarks68/lfpw-sample" \
    --model $m --json "$OUT/landmarks68_$m.json"
done
mlanet eval jitter "$SHARED/data/video/obama_720p.mp4" "$SHARED/data/video/hamilton_360p_multiface.mp4" \
  --json "$OUT/jitter_mlanet_mobile.json"
# the same network run as --mirror-average runs it (expression and pose averaged with the mirror image's)
mlanet eval aflw2000 --data "$SHARED/data/aflw2000-3d-dev" --mirror-average \
  --json "$OUT/aflw2000_dev_mirror_average_mlanet_mobile.json"
python -m mlanet.benchmarks.paired_dev "$OUT/aflw2000_dev_mlanet_mobile.json" \
  "$OUT/aflw2000_dev_mirror_average_mlanet_mobile.json" --json "$OUT/paired_dev_mirror_average_vs_single.json"
mlanet eval landmarks68 --data "$SHARED/data/landmarks68/dlib-faces" --data "$SHARED/data/landmarks68/lfpw-sample" \
  --mirror-average --json "$OUT/landmarks68_mirror_average_mlanet_mobile.json"
mlanet eval jitter "$SHARED/data/video/obama_720p.mp4" "$SHARED/data/video/hamilton_360p_multiface.mp4" \
  --mirror-average --json "$OUT/jitter_mirror_average_mlanet_mobile.json"
mlanet bench accuracy --out "${BENCH_OUT:-benchmarks/results}" --data "$SHARED/data/aflw2000-3d-dev" \
  --weights "$(python -c 'from mlanet.weights import default_weights_path as d; print(d("mlanet_mobile"))')" \
  --untrained mlanet_mobile --labels "mlanet_mobile (shipped)" "untrained mlanet_mobile"
echo "report written to $OUT"
