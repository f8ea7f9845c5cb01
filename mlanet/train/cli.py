"""``mlanet train``: train MLANet from a YAML config with ``--set a.b=v`` overrides."""

from __future__ import annotations

import argparse
import json
import sys

from mlanet.config import load_config


def cmd_train(args: argparse.Namespace) -> int:
    from mlanet.train.config import TrainCfg
    from mlanet.train.loop import train

    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"run.out_dir={args.out}")
    cfg = load_config(TrainCfg, args.config, overrides)
    try:
        summary = train(cfg, resume=args.resume)
    except KeyboardInterrupt:
        print(f"interrupted; the last checkpoint is in {cfg.run.out_dir}/checkpoints (resume with --resume)", file=sys.stderr)
        return 130
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if summary.get("checkpoint"):
        print(json.dumps(summary, indent=2))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model (YAML config + --set overrides; run under torchrun for several GPUs/processes)"
    )
    p.add_argument("--config", help="YAML file overriding the defaults of mlanet.train.config.TrainCfg")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value, e.g. optim.lr=3e-4")
    p.add_argument("--out", help="output folder (same as --set run.out_dir=...)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.json")
    p.set_defaults(func=cmd_train)
