"""Paired comparison of two networks on the same benchmark images, from two ``mlanet eval aflw2000 --json`` files.

    python -m mlanet.benchmarks.paired_dev A.json B.json [--resamples 2000] [--seed 0] [--json OUT]

Prints and (with ``--json``) writes the mean-of-bins NME of each, the difference B - A with a bootstrap
95 % interval (images resampled with replacement within their yaw bin, so every resample keeps the bins'
sizes), and on how many images B is better. Both files must score the same images (by name). With 199
dev images, differences inside the interval are noise: use it before calling one checkpoint better.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

N_BINS = 3


def _per_image(path: Path) -> dict[str, tuple[int, float]]:
    try:
        rec = json.loads(path.read_text())
        return {str(i["name"]): (int(i["bin"]), float(i["nme"])) for i in rec["images"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not an `mlanet eval aflw2000 --json` result with per-image NMEs ({exc})") from None


def mean_of_bins(nme: np.ndarray, bins: np.ndarray) -> float:
    """Mean over the yaw bins of each bin's mean NME (bins without images are left out)."""
    return float(np.mean([nme[bins == b].mean() for b in range(N_BINS) if (bins == b).any()]))


def paired_comparison(a: dict[str, tuple[int, float]], b: dict[str, tuple[int, float]], resamples: int = 2000,
                      seed: int = 0) -> dict[str, Any]:
    """``a``, ``b``: image name -> (yaw bin, NME %). Returns the comparison (see the module docstring)."""
    if set(a) != set(b):
        raise ValueError(f"the two results score different images ({len(set(a) ^ set(b))} differ)")
    names = sorted(a)
    bins = np.array([a[n][0] for n in names])
    if any(a[n][0] != b[n][0] for n in names):
        raise ValueError("the two results put some images in different yaw bins")
    ea, eb = np.array([a[n][1] for n in names]), np.array([b[n][1] for n in names])
    rng = np.random.default_rng(seed)
    groups = [np.nonzero(bins == k)[0] for k in range(N_BINS) if (bins == k).any()]
    diffs = np.empty(resamples)
    for r in range(resamples):
        picks = [rng.choice(g, len(g)) for g in groups]
        diffs[r] = np.mean([(eb[p] - ea[p]).mean() for p in picks])
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"a_mean_of_bins": mean_of_bins(ea, bins), "b_mean_of_bins": mean_of_bins(eb, bins),
            "b_minus_a": mean_of_bins(eb, bins) - mean_of_bins(ea, bins), "interval_95": [float(lo), float(hi)],
            "images_per_bin": [int(len(g)) for g in groups], "b_better_on": int((eb < ea).sum()), "images": len(names),
            "resamples": resamples, "seed": seed, "method": "bootstrap, images resampled within their yaw bin"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("a", type=Path, help="eval JSON of the reference network")
    p.add_argument("b", type=Path, help="eval JSON of the network compared with it")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the comparison here")
    args = p.parse_args(argv)
    try:
        res = paired_comparison(_per_image(args.a), _per_image(args.b), args.resamples, args.seed)
    except ValueError as exc:
        print(f"paired_dev: {exc}", file=sys.stderr)
        return 2
    res = {"a": str(args.a), "b": str(args.b), **res}
    lo, hi = res["interval_95"]
    print(f"A {res['a_mean_of_bins']:.3f} %  B {res['b_mean_of_bins']:.3f} %  B - A {res['b_minus_a']:+.3f} "
          f"(95 % {lo:+.3f} .. {hi:+.3f}); B better on {res['b_better_on']} of {res['images']} images")
    if args.json:
        from mlanet.fileutil import write_json_atomic

        write_json_atomic(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
