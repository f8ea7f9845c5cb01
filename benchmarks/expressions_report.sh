#!/usr/bin/env bash
# The expression-tracking records of the shipped default weights, from a clean install with ../shared:
#   bash benchmarks/expressions_report.sh [OUT_DIR]   (default benchmarks/results/accuracy; ~10 min on 2 CPU cores)
# * held out (never trained on): the five source_* expression clips and the Obama clip, the first 150 frames,
#   measured against MediaPipe's plain face mesh (the measure) and its refined mesh (lids that meet);
# * the same held-out clips mirrored (--mirror), single pass and with --mirror-average, and with --mirror-average
#   as they are; the two mirror comparisons (python -m mlanet.benchmarks.mirror_consistency --records);
# * the driving_* clips (trained on by stages 5d and 5g; their first 150 frames), plain mesh.
set -euo pipefail
SHARED=${MLANET_SHARED:-../shared}
OUT=${1:-benchmarks/results/accuracy}
V="$SHARED/data/video"
mkdir -p "$OUT"
HELD_OUT=("$V"/expressions/source_s13.mp4 "$V"/expressions/source_s18.mp4 "$V"/expressions/source_s20.mp4
          "$V"/expressions/source_s29.mp4 "$V"/expressions/source_s32.mp4 "$V"/obama_720p.mp4)
mlanet eval expressions "${HELD_OUT[@]}" --max-frames 150 --json "$OUT/expressions_heldout_mlanet_mobile.json"
mlanet eval expressions "${HELD_OUT[@]}" --max-frames 150 --reference-mesh refined \
  --json "$OUT/expressions_heldout_refined_reference_mlanet_mobile.json"
mlanet eval expressions "${HELD_OUT[@]}" --max-frames 150 --mirror \
  --json "$OUT/expressions_heldout_mirrored_mlanet_mobile.json"
mlanet eval expressions "${HELD_OUT[@]}" --max-frames 150 --mirror-average \
  --json "$OUT/expressions_heldout_mirror_average_mlanet_mobile.json"
mlanet eval expressions "${HELD_OUT[@]}" --max-frames 150 --mirror-average --mirror \
  --json "$OUT/expressions_heldout_mirror_average_mirrored_mlanet_mobile.json"
python -m mlanet.benchmarks.mirror_consistency --records "$OUT/expressions_heldout_mlanet_mobile.json" \
  "$OUT/expressions_heldout_mirrored_mlanet_mobile.json" --json "$OUT/mirror_consistency_video_mlanet_mobile.json"
python -m mlanet.benchmarks.mirror_consistency --records "$OUT/expressions_heldout_mirror_average_mlanet_mobile.json" \
  "$OUT/expressions_heldout_mirror_average_mirrored_mlanet_mobile.json" \
  --json "$OUT/mirror_consistency_video_mirror_average_mlanet_mobile.json"
mlanet eval expressions "$V"/expressions/driving_d*.mp4 --max-frames 150 \
  --json "$OUT/expressions_driving_mlanet_mobile.json"
echo "expression records written to $OUT"
