"""Run mypy on the ``mlanet`` package as it is installed: ``mlanet`` + ``mlanet.edge`` / ``.export`` / ``.shaders`` /
``.benchmarks``.

Why a script: the repository keeps ``edge/``, ``export/``, ``shaders/`` and ``benchmarks/`` at its top level and
setuptools maps them to ``mlanet.edge``, ``mlanet.export``, ``mlanet.shaders`` and ``mlanet.benchmarks``
(``package-dir`` in pyproject.toml). mypy
maps files to module names by directory (``edge/pipeline.py`` would be a top-level ``edge.pipeline``, and its
``from ..params import ...`` would leave the package), and the editable install's import hook, which does the
mapping at run time, is invisible to a static checker. So this script lays a shadow tree in a temporary
folder::

    TMP/mlanet/<every entry of mlanet/>  -> symlinks to the real files and folders
    TMP/mlanet/edge                      -> edge/
    TMP/mlanet/export                    -> export/
    TMP/mlanet/shaders                   -> shaders/
    TMP/mlanet/benchmarks                -> benchmarks/

and runs ``mypy -p mlanet`` there with the settings of ``[tool.mypy]`` in pyproject.toml. Messages name the
real paths (the links are resolved back to the repository), so editors and CI logs point at the right files.
The incremental cache lives in ``.mypy_cache/`` at the repository root, so a second run takes seconds.

Usage: ``python tools/typecheck.py [extra mypy arguments]``; exit status is mypy's (1 on a type error).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: package-dir of pyproject.toml: the sub-packages that live outside mlanet/ in the repository.
MAPPED = {"edge": ROOT / "edge", "export": ROOT / "export", "shaders": ROOT / "shaders",
          "benchmarks": ROOT / "benchmarks"}


def build_shadow_tree(tmp: Path) -> Path:
    """``tmp/mlanet`` laid out as the installed package (symlinks into the repository); returns it."""
    pkg = tmp / "mlanet"
    pkg.mkdir()
    for entry in sorted((ROOT / "mlanet").iterdir()):
        if entry.name == "__pycache__" or entry.name in MAPPED:
            continue
        (pkg / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for name, real in MAPPED.items():
        (pkg / name).symlink_to(real, target_is_directory=True)
    return pkg


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="mlanet-typecheck-") as tmp_name:
        tmp = Path(tmp_name)
        build_shadow_tree(tmp)
        cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "mlanet", *argv]
        env = dict(os.environ, MYPYPATH="")
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
        # Point messages at the repository's files: "mlanet/edge/x.py:3: ..." -> "edge/x.py:3: ...".
        mapped = "|".join(MAPPED)
        out = re.sub(rf"^mlanet/({mapped})/", r"\1/", proc.stdout, flags=re.M)
        sys.stdout.write(out)
        sys.stderr.write(proc.stderr)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
