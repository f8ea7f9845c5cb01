"""Dependencies point one way, and no layer imports one above it, not even lazily inside a function:

* the core (the ``mlanet`` package minus the packages it installs from other folders) never imports the runtime
  (``mlanet.edge`` from ``edge/``), the export (``mlanet.export`` from ``export/``) or the benchmarks
  (``mlanet.benchmarks`` from ``benchmarks/``);
* the runtime and the export never import the benchmarks: the benchmarks sit on top, beside the command-line
  entry point :mod:`mlanet.cli`, which may import anything.
"""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Repository folder -> the package it is installed as (pyproject's ``package-dir``).
PACKAGE_DIRS = {folder: package for package, folder in
                tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].items()}
#: Modules above every layer (they only register commands).
ENTRY_POINTS = {"mlanet.cli"}
RUNTIME_AND_EXPORT = ("mlanet.edge", "mlanet.export")
BENCHMARKS = ("mlanet.benchmarks",)


def _module_name(path: Path) -> str:
    """The installed module name of a repository file (``edge/pipeline.py`` -> ``mlanet.edge.pipeline``)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    top = PACKAGE_DIRS.get(parts[0], parts[0])
    return ".".join([top, *parts[1:]])


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path`` (relative imports resolved; ``from X import y``
    also yields ``X.y``, which may be a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
    return out


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``file:line imports module`` for every import of a ``forbidden`` package (or a module inside it)."""
    out = []
    for path in files:
        if _module_name(path) in ENTRY_POINTS:
            continue
        for line, mod in imported_modules(path):
            if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    return out


def _core_files() -> list[Path]:
    mapped_inside = {ROOT / "mlanet" / Path(*p.split(".")[1:]) for p in PACKAGE_DIRS.values() if p != "mlanet"}
    return sorted(f for f in (ROOT / "mlanet").rglob("*.py") if not any(d in f.parents for d in mapped_inside))


def test_the_core_never_imports_the_runtime_export_or_benchmarks():
    files = _core_files()
    assert len(files) > 50
    bad = offenders(files, RUNTIME_AND_EXPORT + BENCHMARKS)
    assert not bad, "the core imports a layer above it:\n" + "\n".join(bad)


def test_the_runtime_and_export_never_import_the_benchmarks():
    files = sorted((ROOT / "edge").rglob("*.py")) + sorted((ROOT / "export").rglob("*.py"))
    assert len(files) > 50
    bad = offenders(files, BENCHMARKS)
    assert not bad, "the runtime/export imports the benchmarks:\n" + "\n".join(bad)


def test_the_benchmarks_are_installed_from_benchmarks():
    assert PACKAGE_DIRS["benchmarks"] == "mlanet.benchmarks"
    assert _module_name(ROOT / "benchmarks" / "record.py") == "mlanet.benchmarks.record"


def test_the_checker_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "mlanet" / "eval"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from ..edge.pipeline import FacePipeline\n    import mlanet.export.onnx_export\n"
                 "from .. import edge\n")
    runtime = tmp_path / "edge" / "evaluation"
    runtime.mkdir(parents=True)
    g = runtime / "y.py"
    g.write_text("def g():\n    from ...benchmarks.record import write_record\n\n\n"
                 "def h():\n    import mlanet.benchmarks.cli\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    mods = [m for _, m in imported_modules(f)]
    assert "mlanet.edge.pipeline" in mods and "mlanet.export.onnx_export" in mods and "mlanet.edge" in mods
    assert [m for _, m in imported_modules(g)][:2] == ["mlanet.benchmarks.record", "mlanet.benchmarks.record.write_record"]
    assert offenders([g], BENCHMARKS) == ["edge/evaluation/y.py:2 imports mlanet.benchmarks.record",
                                          "edge/evaluation/y.py:2 imports mlanet.benchmarks.record.write_record",
                                          "edge/evaluation/y.py:6 imports mlanet.benchmarks.cli"]
    assert len(offenders([f], RUNTIME_AND_EXPORT + BENCHMARKS)) == 4
