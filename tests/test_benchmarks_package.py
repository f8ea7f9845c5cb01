"""The benchmarks home: ``benchmarks/`` is the package ``mlanet.benchmarks``, its harnesses are modules run as
``mlanet bench PART`` or ``python -m mlanet.benchmarks.<module>``, and records name the command as typed."""

from __future__ import annotations

import ast
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mlanet.cli import main
from mlanet.run_environment import command_line

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
#: ``mlanet bench`` parts that are also ``python -m mlanet.benchmarks.<module>``.
SCRIPT_PARTS = {"video-e2e": "video_end_to_end", "encode": "encode_presets", "display-mesh": "display_mesh",
                "live-soak": "live_soak", "mesh-sizes": "mesh_output_sizes"}


def _modules() -> list[Path]:
    return sorted(p for p in BENCHMARKS.rglob("*.py") if "results" not in p.parts)


def test_the_package_is_benchmarks_and_edge_has_no_bench():
    import mlanet.benchmarks

    assert Path(mlanet.benchmarks.__file__).resolve().parent == BENCHMARKS
    assert not list((REPO / "edge" / "bench").glob("*.py"))
    assert not (BENCHMARKS / "record.py").read_text().startswith('"""Compatibility shim')


def test_no_module_edits_sys_path_or_imports_relatively_to_the_folder():
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        src = path.read_text()
        assert "sys.path" not in src, path
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level:
                assert node.module is None or node.module.split(".")[0] in {
                    "__future__", "mlanet", *sys.stdlib_module_names, "numpy", "torch", "PIL", "matplotlib", "yaml",
                    "scipy"}, f"{path.name}: from {node.module} import ..."


def test_every_harness_has_a_main():
    skip = {"__init__", "record", "shared_data", "network", "cli", "report", "model_latency", "pipeline", "compare", "accuracy",
            "soak", "gpu_targets"}
    for path in _modules():
        if path.stem in skip:
            continue
        names = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert "main" in names, path


def test_mlanet_bench_help_lists_the_script_parts(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for part in SCRIPT_PARTS:
        assert part in text


@pytest.mark.parametrize("part,args", [("encode", ["--clip"]), ("display-mesh", ["--clip"]),
                                       ("live-soak", ["--clip"]), ("video-e2e", []), ("mesh-sizes", ["--clips"])])
def test_a_missing_clip_is_one_line_and_status_2(part, args, tmp_path, capsys):
    missing = tmp_path / "no such clip.mp4"
    assert main(["bench", part, "--out", str(tmp_path / "o"), *args, str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_bad_numbers_are_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "encode", "--repeats", "0"])
    assert exc.value.code == 2


def test_python_dash_m_is_the_same_command(tmp_path):
    missing = tmp_path / "absent.mp4"
    proc = subprocess.run([sys.executable, "-m", "mlanet.benchmarks.encode_presets", "--clip", str(missing),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mlanet.benchmarks.live_soak", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--minutes" in proc.stdout and "--out" in proc.stdout


def test_a_harness_still_runs_as_a_file(tmp_path):
    """``python benchmarks/X.py`` keeps working: the modules import only absolute ``mlanet.`` paths."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_face_model.py"), "--help"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "--ict" in proc.stdout, proc.stderr


def test_command_line_names_the_command_as_typed(monkeypatch):
    main_module = types.ModuleType("__main__")
    main_module.__spec__ = types.SimpleNamespace(name="mlanet.benchmarks.video_end_to_end")
    monkeypatch.setitem(sys.modules, "__main__", main_module)
    assert command_line(["/x/video_end_to_end.py", "--repeats", "3"]) == (
        "python -m mlanet.benchmarks.video_end_to_end --repeats 3")
    main_module.__spec__ = types.SimpleNamespace(name="mlanet.cli")
    assert command_line(["/x/mlanet/cli.py", "bench", "model"]) == "mlanet bench model"
    main_module.__spec__ = None
    assert command_line(["/venv/bin/mlanet", "bench", "encode"]) == "mlanet bench encode"


def test_the_record_default_root_is_the_checkouts_results():
    from mlanet.benchmarks.record import RESULTS

    assert RESULTS == BENCHMARKS / "results"
