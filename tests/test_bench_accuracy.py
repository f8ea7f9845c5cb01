"""Tests of ``mlanet bench accuracy`` (mlanet.benchmarks.accuracy).

The ``assets`` tests evaluate untrained networks (and a checkpoint of one) on the first images of
the shared AFLW2000-3D dev split; the argument and bad-input tests need no data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from mlanet.cli import main
from mlanet.benchmarks import accuracy, cli
from mlanet.errors import MLANetError

DEV = "data/aflw2000-3d-dev"


def _args(*argv: str) -> argparse.Namespace:
    """Parse like ``mlanet bench accuracy`` does (the bench CLI's common options + this part's)."""
    parser = argparse.ArgumentParser()
    cli.add_common_arguments(parser)
    accuracy.add_arguments(parser)
    return parser.parse_args(list(argv))


def _device_tag() -> str:
    from mlanet.run_environment import environment

    return str(environment()["device_tag"]).split(":")[0]


def _check_png(path: Path) -> None:
    from PIL import Image

    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
        assert 600 <= w <= 3000 and 400 <= h <= 3000, im.size
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.std() > 5.0  # not a blank canvas


def _check_entry(entry: dict) -> None:
    """Per-model numbers are consistent with each other and with the per-image NMEs."""
    e = np.asarray(entry["nme_per_image"])
    assert entry["n"] == e.size == sum(entry["n_bins"])
    assert len(entry["nme_bins"]) == len(entry["n_bins"]) == len(entry["bin_labels"]) == 3
    assert entry["bin_labels"] == ["[0, 30]", "(30, 60]", "(60, 90]"]
    for value, count in zip(entry["nme_bins"], entry["n_bins"]):
        assert (value is None) == (count == 0)
    present = [b for b in entry["nme_bins"] if b is not None]
    assert entry["nme_mean_available_bins"] == pytest.approx(np.mean(present), rel=1e-12)
    if all(c > 0 for c in entry["n_bins"]):
        assert entry["nme_mean_bins"] == pytest.approx(np.mean(entry["nme_bins"]), rel=1e-12)
    else:
        assert entry["nme_mean_bins"] is None  # the protocol's headline needs all three bins
    assert entry["nme_all"] == pytest.approx(e.mean(), abs=1e-3)
    assert 0.0 <= entry["auc_7"] <= 1.0
    t, f = np.asarray(entry["ced"]["thresholds_percent"]), np.asarray(entry["ced"]["fraction"])
    assert t.shape == f.shape and t[0] == 0.0 and t[-1] == pytest.approx(10.0)
    assert np.all(np.diff(f) >= 0) and np.all((0 <= f) & (f <= 1))
    np.testing.assert_allclose(f, [(e <= x).mean() for x in t], atol=1e-4 + 1.0 / e.size)
    speed = entry["speed"]
    assert speed["inference_ms_per_image"] > 0 and "excludes image decoding" in speed["label"]
    batch = speed["timed"]["batch_B"]
    assert speed["inference_ms_per_image"] == batch["median_ms"] / batch["batch_size"]
    assert speed["latency_ms_batch_1"] == speed["timed"]["batch_1"]["median_ms"] > 0
    assert speed["eval_pass"]["ms_per_image"] > 0 and speed["eval_pass"]["batches"] >= 1


def _check_references(results: dict) -> None:
    refs = results["references"]["published"]
    assert set(refs) == {"3DDFA_V2", "SynergyNet"}
    assert refs["3DDFA_V2"]["nme_mean_bins"] == 3.51 and refs["SynergyNet"]["nme_mean_bins"] == 3.41
    assert "Guo et al." in refs["3DDFA_V2"]["citation"] and "ECCV 2020" in refs["3DDFA_V2"]["citation"]
    assert "Wu et al." in refs["SynergyNet"]["citation"] and "3DV 2021" in refs["SynergyNet"]["citation"]
    assert refs["3DDFA_V2"]["legend"] == "3DDFA_V2 (published, mean of bins 3.51%)"
    assert refs["SynergyNet"]["legend"] == "SynergyNet (published, 3.41%)"
    for ref in refs.values():
        assert ref["published"] is True and ref["measured_here"] is False
        assert "2,000" in ref["data"]
    assert "NOT measured" in results["references"]["label"]


# ------------------------------------------------------------------------ dev split (assets)
@pytest.mark.assets
def test_two_untrained_models_on_six_images(shared: Path, ict_model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = _args("--out", str(out), "--data", str(shared / DEV), "--untrained", "mlanet_mobile",
                 "--untrained", "mlanet_mobile", "--labels", "first", "second", "--limit", "6",
                 "--face-model", str(ict_model_file), "--batch", "4")
    path = accuracy.run(args)
    tag = _device_tag()
    assert path == out / tag / "accuracy.json"
    record = json.loads(path.read_text())
    assert record["schema"] == "mlanet-bench/1" and record["benchmark"] == "accuracy"
    assert record["environment"]["device_tag"].split(":")[0] == tag
    res = record["results"]
    assert res["data"]["limit"] == 6 and res["data"]["n_images"] == 6
    assert res["data"]["n_images_in_folder"] == 199 and len(res["data"]["image_names"]) == 6
    assert res["data"]["name"] == "aflw2000-3d-dev" and "first 6 of 199" in res["data"]["subset"]
    assert "ground-truth" in res["protocol"] and res["crop"] == "gt"
    models = res["models"]
    assert [m["label"] for m in models] == ["first", "second"]
    for m in models:
        assert m["kind"] == "untrained" and m["source"] == "untrained:mlanet_mobile" and m["model"] == "mlanet_mobile"
        assert m["weights"] is None and m["seed"] == 0
        _check_entry(m)
    # the first six dev images all lie in the [0, 30] bin: the mean of bins is undefined, and said so
    assert models[0]["n_bins"] == [6, 0, 0] and models[0]["nme_mean_bins"] is None
    assert any("undefined" in w for w in models[0]["warnings"])
    # same model, same seed: the same numbers
    assert models[0]["nme_per_image"] == models[1]["nme_per_image"]
    _check_references(res)
    assert res["plot"] == "accuracy_ced.png"
    _check_png(out / tag / "accuracy_ced.png")


@pytest.mark.assets
def test_checkpoint_and_untrained_default_labels_all_bins(shared: Path, ict_model_file: Path, tmp_path: Path) -> None:
    """A checkpoint (the eval command's loading path) next to the untrained baseline; 10 images fill all bins."""
    import torch

    from mlanet.fileutil import file_sha256
    from mlanet.models.model_io import save_model
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel
    from mlanet.preprocess import PreprocessCfg

    face_model = MorphableModel.load(ict_model_file)
    torch.manual_seed(1)
    net = create_model("mlanet_mobile", face_model=face_model, preprocess=PreprocessCfg(input_size=64))
    ckpt = save_model(net, tmp_path / "tiny" / "checkpoints" / "step_0000001.safetensors", face_model)

    out = tmp_path / "out"
    path = accuracy.run(_args("--out", str(out), "--data", str(shared / DEV), "--weights", str(ckpt),
                              "--untrained", "mlanet_mobile", "--limit", "10", "--face-model", str(ict_model_file)))
    res = json.loads(path.read_text())["results"]
    first, second = res["models"]
    assert first["label"] == "mlanet_mobile (tiny/step_0000001)" and first["kind"] == "checkpoint"
    assert first["weights"] == {"path": str(ckpt), "sha256": file_sha256(ckpt)} and first["input_size"] == 64
    assert second["label"] == "untrained" and second["input_size"] == 96  # mlanet_mobile's registered input size
    for m in (first, second):
        assert all(c > 0 for c in m["n_bins"]) and m["n"] == 10
        _check_entry(m)
    _check_png(path.parent / "accuracy_ced.png")


# ------------------------------------------------------------------------ arguments and bad inputs (no assets)
def test_folder_without_aflw_files_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "not aflw"
    folder.mkdir()
    (folder / "photo.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(MLANetError, match=str(folder)):
        accuracy.run(_args("--out", str(tmp_path / "o"), "--data", str(folder), "--untrained", "mlanet_mobile"))
    assert not (tmp_path / "o").exists()  # nothing written


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    base = ("--out", str(tmp_path / "o"), "--data", str(tmp_path))
    with pytest.raises(MLANetError, match="2 name.*1 model"):
        accuracy.run(_args(*base, "--labels", "a", "b"))
    with pytest.raises(MLANetError, match="unknown model.*mlanet_mobile"):
        accuracy.run(_args(*base, "--untrained", "no_such_net"))
    with pytest.raises(MLANetError, match="no such checkpoint"):
        accuracy.run(_args(*base, "--weights", str(tmp_path / "missing.safetensors")))
    with pytest.raises(MLANetError, match="--limit"):
        accuracy.run(_args(*base, "--limit", "0"))


def test_arguments_defaults_and_quick(tmp_path: Path) -> None:
    args = _args("--out", str(tmp_path), "--data", str(tmp_path), "--quick", "--weights", "a", "b", "--weights", "c")
    assert args.weights == ["a", "b", "c"] and args.untrained == [] and args.quick and args.limit is None
    specs = accuracy.model_specs([], ["mlanet_mobile", "mlanet_r50"], None)
    assert [s.source for s in specs] == ["untrained:mlanet_mobile", "untrained:mlanet_r50"]
    assert accuracy._derived_labels(specs) == ["untrained mlanet_mobile", "untrained mlanet_r50"]
    assert accuracy._derived_labels(accuracy.model_specs([], ["mlanet_mobile"] * 2, None)) == [
        "untrained mlanet_mobile", "untrained mlanet_mobile #2"]


def test_help_through_the_mlanet_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "accuracy", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--weights", "--untrained", "--labels", "--face-model", "--limit", "--quick", "--out"):
        assert option in text


def test_bad_folder_through_the_mlanet_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "accuracy", "--out", str(tmp_path / "o"), "--data", str(tmp_path), "--untrained",
               "mlanet_mobile"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and "AFLW2000-3D" in err


@pytest.mark.assets
def test_held_out_list_is_evaluated_and_recorded(shared: Path, ict_model_file: Path, tmp_path: Path) -> None:
    from mlanet.data.splits import read_name_list

    out = tmp_path / "results"
    args = _args("--out", str(out), "--data", str(shared / DEV), "--untrained", "mlanet_mobile",
                 "--list", "aflw2000_dev_heldout", "--limit", "3", "--face-model", str(ict_model_file))
    res = json.loads(accuracy.run(args).read_text())["results"]
    held = sorted(read_name_list("aflw2000_dev_heldout"))
    assert res["data"]["image_names"] == held[:3]
    assert res["data"]["selection"]["n_selected"] == 100 and res["data"]["selection"]["list"]["spec"] == "aflw2000_dev_heldout"
    assert res["data"]["n_images_in_folder"] == 199 and "list aflw2000_dev_heldout: first 3 of 100" in res["data"]["subset"]


# ------------------------------------------------------------------------ one protocol: bench accuracy = eval aflw2000
@pytest.mark.assets
def test_scores_match_mlanet_eval_aflw2000(shared: Path, ict_model_file: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The benchmark scores through the evaluation's functions: on the same images, the same untrained
    network (seed 0) gets the same per-image NMEs and the same landmark definition as ``mlanet eval aflw2000``."""
    from mlanet.eval.aflw2000 import LANDMARK_DEFINITION, discover_pairs

    stems = [name for name, _, _ in discover_pairs(shared / DEV)][:5]
    listed = tmp_path / "five.txt"
    listed.write_text("\n".join(stems) + "\n")
    record = json.loads(accuracy.run(_args(
        "--out", str(tmp_path / "o"), "--data", str(shared / DEV), "--untrained", "mlanet_mobile", "--list",
        str(listed), "--face-model", str(ict_model_file), "--timing-repeats", "0")).read_text())
    entry = record["results"]["models"][0]
    assert entry["landmark_definition"] == LANDMARK_DEFINITION
    assert main(["eval", "aflw2000", "--data", str(shared / DEV), "--untrained", "mlanet_mobile", "--list", str(listed),
                 "--face-model", str(ict_model_file), "--json", str(tmp_path / "eval.json")]) == 0
    capsys.readouterr()
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["model"]["landmark_definition"] == LANDMARK_DEFINITION
    assert [r["name"] for r in evaluated["images"]] == record["results"]["data"]["image_names"] == stems
    np.testing.assert_allclose(entry["nme_per_image"], [r["nme"] for r in evaluated["images"]], atol=1e-4)
    assert entry["nme_bins"] == evaluated["nme_bins"] and entry["auc_7"] == evaluated["auc_7"]


@pytest.mark.assets
def test_unknown_landmark_definition_is_one_clear_error(shared: Path, ict_model_file: Path, tmp_path: Path) -> None:
    with pytest.raises(MLANetError, match="--landmarks no_such_points.*no landmark definition"):
        accuracy.run(_args("--out", str(tmp_path / "o"), "--data", str(shared / DEV), "--untrained", "mlanet_mobile",
                           "--limit", "2", "--landmarks", "no_such_points", "--face-model", str(ict_model_file)))
    assert not (tmp_path / "o").exists()
