"""Layout, namespace and import-weight guarantees, and the CLI entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlanet.cli import main

REPO = Path(__file__).resolve().parents[1]
HEAVY = ["tensorrt", "pycuda", "onnxruntime", "moderngl", "mediapipe", "cv2"]


def test_top_level_layout():
    for name in ("mlanet", "export", "edge", "shaders", "benchmarks", "tests", "pyproject.toml"):
        assert (REPO / name).exists(), name


def test_export_and_edge_live_under_the_mlanet_namespace():
    import mlanet.edge
    import mlanet.export

    assert Path(mlanet.export.__file__).parent.name == "export"
    assert Path(mlanet.edge.__file__).parent.name == "edge"


@pytest.mark.parametrize("module", ["mlanet", "mlanet.morphable.model", "mlanet.cli"])
def test_import_does_not_pull_heavy_dependencies(module):
    code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_cli_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "mlanet" in capsys.readouterr().out


def test_cli_build_needs_an_input(capsys):
    assert main(["assets", "build", "--ict", "/nonexistent/FaceXModel"]) == 2
    err = capsys.readouterr().err
    assert "/nonexistent/FaceXModel" in err and "Traceback" not in err


def test_cli_info_without_model_says_how_to_build(capsys):
    assert main(["assets", "info"]) == 2
    assert "mlanet assets build --ict" in capsys.readouterr().err


def test_cli_preview_and_info_on_a_model_file(synthetic_data, tmp_path, capsys):
    path = synthetic_data.save(tmp_path / "s.mlface.npz")
    assert main(["assets", "info", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["model_id"] == synthetic_data.model_id
    png = tmp_path / "check.png"
    assert main(["assets", "preview", str(path), "--out", str(png), "--size", "128", "--expression", "expr_00=1"]) == 0
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (128, 128, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # a shaded face, not an empty canvas
    assert main(["assets", "preview", str(path), "--out", str(png), "--expression", "nope=1"]) == 2


def test_bfm_build_via_cli(tmp_path, capsys):
    """`mlanet assets build --bfm` on a synthetic file in Deep3DFaceRecon's layout."""
    from test_bfm import _bfm_fields, _write  # the BFM tests' synthetic-file writer

    mat = _write(tmp_path / "BFM_model_front.mat", _bfm_fields())
    out = tmp_path / "bfm.mlface.npz"
    assert main(["assets", "build", "--bfm", str(mat), "--output", str(out)]) == 0
    assert out.is_file() and "bfm09-front" in capsys.readouterr().out


def test_every_python_package_is_listed_for_the_wheel():
    """A package missing from pyproject's ``packages`` works in an editable install but not from a wheel."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    dirs = {v: k for k, v in cfg["package-dir"].items()}
    found = set()
    for top, name in dirs.items():
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((name, *rel)))
    assert sorted(found - listed) == []


def test_a_closed_pipe_ends_quietly(tmp_path):
    """``mlanet assets info | head -1``: no "error: Broken pipe" line, no traceback; exit 141 like a shell."""
    from mlanet.morphable.synthetic import make_synthetic_face_model

    path = make_synthetic_face_model().save(tmp_path / "f.mlface.npz")
    code = ("import os, sys; from mlanet.cli import main; r, w = os.pipe(); os.close(r); "
            "sys.stdout = os.fdopen(w, 'w', buffering=1); "
            f"rc = main(['assets', 'info', {str(path)!r}]); sys.stderr.write(f'rc={{rc}}')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("rc=141"), proc.stderr
    assert "Broken pipe" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
