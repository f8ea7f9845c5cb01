"""The ``mlanet`` command: ``mlanet <group> <command> [options]``.

Each group lives in its own module and registers its sub-parser; imports are deferred so
``mlanet --help`` stays fast. User errors (:class:`~mlanet.errors.MLANetError`) and errors of
the environment (:class:`OSError`: a path, a permission, a full disk) print one clear line and
exit with status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from mlanet import __version__
from mlanet.errors import MLANetError

#: Command groups: name -> module providing ``add_parser(subparsers)``.
GROUPS = {
    "assets": "mlanet.morphable.assets_cli",
    "bench": "mlanet.benchmarks.cli",
    "data": "mlanet.data.cli",
    "eval": "mlanet.eval.cli",
    "export": "mlanet.export.cli",
    "models": "mlanet.models.cli",
    "train": "mlanet.train.cli",
    "weights": "mlanet.weights.cli",
}


#: Commands that live above the core but belong to one of its groups: group -> module providing
#: ``add_parsers(group_subparsers)``. ``mlanet eval jitter`` / ``expressions`` run the video runtime, so they
#: live in :mod:`mlanet.edge.evaluation` (the core never imports the runtime; this entry point may).
GROUP_EXTENSIONS = {
    "eval": "mlanet.edge.evaluation.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlanet", description="MLANet: 3D face reconstruction")
    parser.add_argument("--version", action="version", version=f"mlanet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="group", required=True)
    for group, module in GROUPS.items():
        group_sub = importlib.import_module(module).add_parser(sub)
        if group in GROUP_EXTENSIONS:
            importlib.import_module(GROUP_EXTENSIONS[group]).add_parsers(group_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except MLANetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`mlanet assets info | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as exc:
        from mlanet.fileutil import os_error_message

        print(f"error: {os_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
