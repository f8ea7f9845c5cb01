"""Dependencies point one way: the core (the ``mlanet`` package minus the runtime and export packages it
installs, ``mlanet.edge`` from ``edge/`` and ``mlanet.export`` from ``export/``) never imports them, not even
lazily inside a function. Only the command-line entry point :mod:`mlanet.cli` sits above everything."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "mlanet"
#: Modules above both layers (they only register commands).
ENTRY_POINTS = {"mlanet.cli"}
UPPER = ("mlanet.edge", "mlanet.export")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


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


def test_the_core_never_imports_the_runtime_or_export():
    offenders = []
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        if _module_name(path) in ENTRY_POINTS:
            continue
        for line, mod in imported_modules(path):
            if any(mod == u or mod.startswith(u + ".") for u in UPPER):
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {mod}")
    assert not offenders, "the core imports the runtime/export layer:\n" + "\n".join(offenders)


def test_the_checker_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "mlanet" / "eval"
    pkg.mkdir(parents=True)
    f = pkg / "x.py"
    f.write_text("def f():\n    from ..edge.pipeline import FacePipeline\n    import mlanet.export.onnx_export\n"
                 "from .. import edge\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    mods = [m for _, m in imported_modules(f)]
    assert "mlanet.edge.pipeline" in mods and "mlanet.export.onnx_export" in mods and "mlanet.edge" in mods
