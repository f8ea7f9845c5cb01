"""The mirror-consistency diagnostic (benchmarks/mirror_consistency.py): its summary and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlanet.benchmarks.mirror_consistency import disagreement, main

NAMES = ["eyeBlink_L", "eyeBlink_R", "jawOpen", "mouthSmile_L", "mouthSmile_R"]
PERM = np.array([1, 0, 2, 4, 3])


def _faces(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, len(NAMES))), rng.uniform(-0.5, 0.5, (n, 3))


def test_a_mirror_consistent_network_scores_zero() -> None:
    e, r = _faces()
    em = e[:, PERM]  # the flipped face's weights: left and right traded
    rm = r * np.array([1.0, -1.0, -1.0])  # pitch kept, yaw and roll negated
    s = disagreement(e, em, r, rm, PERM, NAMES)
    assert s["crops"] == 50 and s["expression_mean_abs"] == pytest.approx(0.0, abs=1e-12)
    assert s["jaw_open"]["mean_abs"] == 0.0 and all(v == pytest.approx(0.0, abs=1e-9) for v in s["pose_deg"].values())


def test_disagreement_in_weights_and_pose_is_measured_where_it_is() -> None:
    e, r = _faces()
    em = e[:, PERM].copy()
    em[:, 2] += 0.1  # jawOpen opens wider in the mirror
    rm = r * np.array([1.0, -1.0, -1.0]) + np.array([0.0, np.radians(2.0), 0.0])
    s = disagreement(e, em, r, rm, PERM, NAMES)
    assert s["jaw_open"]["mean_abs"] == pytest.approx(0.1) and s["jaw_open"]["p90_abs"] == pytest.approx(0.1)
    assert s["expression_mean_abs"] == pytest.approx(0.1 / len(NAMES))
    assert s["worst_shapes"][0] == {"shape": "jawOpen", "mean_abs": pytest.approx(0.1)}
    assert s["pose_deg"]["yaw"] == pytest.approx(2.0) and s["pose_deg"]["pitch"] == pytest.approx(0.0, abs=1e-9)
    # a network that ignores the mirror (eyeBlink_L stays on the left) disagrees on the paired shapes only
    s = disagreement(e, e, r, r * np.array([1.0, -1.0, -1.0]), PERM, NAMES)
    worst = {w["shape"] for w in s["worst_shapes"] if w["mean_abs"] > 0}
    assert worst == {"eyeBlink_L", "eyeBlink_R", "mouthSmile_L", "mouthSmile_R"}


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["--weights", str(tmp_path / "none.safetensors"), "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weights" in err and "not found" in err
    w = tmp_path / "w.safetensors"
    w.write_bytes(b"x")
    assert main(["--weights", str(w), "--store", str(tmp_path / "nostore")]) == 2
    assert "--store" in capsys.readouterr().err
    assert main(["--weights", str(w), "--store", str(tmp_path), "--n", "0"]) == 2
    assert "--n 0" in capsys.readouterr().err


def test_measure_runs_a_network_on_store_crops_and_their_mirrors(tmp_path: Path, synthetic_data) -> None:
    import torch
    from test_store import _prepare, make_sources

    from mlanet.benchmarks.mirror_consistency import measure
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel
    from mlanet.preprocess import PreprocessCfg

    store = tmp_path / "store"
    _prepare(make_sources(), store, preprocess=PreprocessCfg(input_size=64))
    face_model = MorphableModel(synthetic_data)
    torch.manual_seed(0)
    network = create_model("mlanet_mobile_lite", face_model=face_model).eval()
    s = measure(network, face_model, store, n=5)
    assert s["crops"] == 5 and len(s["worst_shapes"]) == min(6, face_model.n_expression)
    assert 0.0 <= s["expression_mean_abs"] <= 1.0 and all(np.isfinite(v) for v in s["pose_deg"].values())


def _record(video: str, mirrored: bool | None, jaw: np.ndarray, gap: np.ndarray, frames: list[int]) -> dict:
    recs = [{"frame": f, "track": 0, "jawOpen": float(j), "eyeBlink_L": 0.1, "eyeBlink_R": 0.1 + 0.01 * f,
             "lip_gap": float(g), "eye_aperture_L": 0.3, "eye_aperture_R": 0.3 - 0.005 * f}
            for f, j, g in zip(frames, jaw, gap)]
    clip = {"video": video, "records": recs}
    if mirrored is not None:
        clip["mirrored"] = mirrored
    return {"clips": [clip]}


def test_compare_records_splits_the_network_from_the_reference(tmp_path: Path, capsys) -> None:
    import json

    from mlanet.benchmarks.mirror_consistency import compare_records

    rng = np.random.default_rng(1)
    gap = rng.uniform(0.02, 0.12, 30)
    plain = _record("clips/a.mp4", None, 3 * gap, gap, list(range(30)))  # a record from before the flag
    # mirrored: the reference is the same, the network's jaw is off by 0.05 on every other frame; one frame missing
    jaw_m = 3 * gap + np.where(np.arange(30) % 2 == 0, 0.05, 0.0)
    mirrored = _record("clips/a.mp4", True, np.delete(jaw_m, 7), np.delete(gap, 7), [f for f in range(30) if f != 7])
    c = compare_records(plain, mirrored)["a.mp4"]
    assert c["frames"] == 29
    assert c["lip_gap"]["mean_abs"] == pytest.approx(0.0) and c["lip_gap"]["r"] == pytest.approx(1.0)
    assert c["jawOpen"]["mean_abs"] == pytest.approx(0.05 * 15 / 29) and c["jawOpen"]["r"] < 1.0
    assert c["eyeBlink"]["mean_abs"] == pytest.approx(0.0, abs=1e-12)
    assert c["cross"]["jaw_open_mirrored_vs_lip_gap"] < 1.0 and c["cross"]["eye_blink_mirrored_vs_eye_closure"] > 0.99
    with pytest.raises(ValueError, match="plain run first"):
        compare_records(mirrored, plain)
    with pytest.raises(ValueError, match="share no clip"):
        compare_records(plain, _record("clips/b.mp4", True, gap, gap, list(range(30))))
    # the CLI: bad files exit 2 with one line; good ones print and write JSON
    p, m, bad = tmp_path / "p.json", tmp_path / "m.json", tmp_path / "bad.json"
    p.write_text(json.dumps(plain))
    m.write_text(json.dumps(mirrored))
    bad.write_text("[1, 2]")
    assert main(["--records", str(p), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err
    assert main(["--records", str(m), str(p)]) == 2 and "plain run first" in capsys.readouterr().err
    assert main(["--records", str(p), str(m), "--json", str(tmp_path / "out.json")]) == 0
    assert "a.mp4" in capsys.readouterr().out
    assert json.loads((tmp_path / "out.json").read_text())["clips"]["a.mp4"]["frames"] == 29
    assert main([]) == 2 and "--records" in capsys.readouterr().err
