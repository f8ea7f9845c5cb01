"""The README's speed section is the one tools/readme_speed.py writes from the committed records."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "readme_speed.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True)


def test_readme_speed_section_matches_the_records():
    r = _run("--check")
    assert r.returncode == 0, r.stderr


def test_a_changed_record_is_caught_and_rewritten(tmp_path):
    records = tmp_path / "cpu"
    shutil.copytree(ROOT / "benchmarks" / "results" / "cpu", records)
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    path = records / "compare.json"
    rec = json.loads(path.read_text())
    rec["results"]["mlanet_fit"]["median_ms"] = 123.456
    path.write_text(json.dumps(rec))
    r = _run("--check", "--records", str(records), "--readme", str(readme))
    assert r.returncode == 1 and "differs from the records" in r.stderr
    assert _run("--records", str(records), "--readme", str(readme)).returncode == 0
    assert "123.46 ms" in readme.read_text()
    assert _run("--check", "--records", str(records), "--readme", str(readme)).returncode == 0


def test_missing_record_and_markers_are_named(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    r = _run("--records", str(tmp_path), "--readme", str(readme))
    assert r.returncode != 0 and "video_end_to_end.json: cannot read the record" in r.stderr
    r = _run("--readme", str(readme))
    assert r.returncode != 0 and "markers" in r.stderr
