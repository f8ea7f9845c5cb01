"""Shipped default weights: packing to FP16 (best.json, renaming, the architecture and size checks), the release
block, the r50 weights that do not ship, the shipped file itself."""

import json
import shutil

import pytest
import torch

from mlanet.checkpoint import CheckpointMeta, load_weights, save_weights
from mlanet.cli import main
from mlanet.errors import AssetError, MLANetError
from mlanet.weights import (
    MAX_SHIPPED_BYTES,
    MODEL_CARD,
    NOT_SHIPPED,
    SHIPPED,
    WEIGHTS_DIR,
    WeightsNotShippedError,
    default_weights_path,
)
from mlanet.weights.pack import default_data_terms, pack_weights, release_info


@pytest.fixture(scope="module")
def tiny_run(synthetic_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    face = synthetic_data.save(tmp / "face.mlface.npz")
    args = ["train", "--out", str(tmp / "run"), "--set", f"face_model={face}", "--set", "preprocess.input_size=64",
            "--set", "optim.steps=2", "--set", "optim.batch_size=2", "--set", "data.val_synthetic=0",
            "--set", "run.val_every=0", "--set", "run.image_every=0"]
    assert main(args) == 0
    return tmp / "run", face


def test_pack_is_fp16_with_release_and_predicts_like_the_checkpoint(tiny_run, tmp_path):
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    run, face_path = tiny_run
    out = pack_weights(run, tmp_path / "w.safetensors", stages=[str(run)])
    state, meta = load_weights(out)
    floats = [v for v in state.values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert any(v.dtype == torch.int64 for v in state.values()), "integer buffers keep their dtype"
    rel = release_info(out)
    assert rel["dtype"] == "float16" and rel["stages"][0]["run"] == "run" and rel["stages"][0]["steps"] == 2
    assert any("research" in d["terms"] for d in rel["data"]) and "research" in rel["notice"]
    assert len(rel["packed_from"]["sha256"]) == 64
    face = MorphableModel.load(face_path)
    ref = create_model(checkpoint=run / "checkpoints" / json.loads((run / "last.json").read_text())["weights"], face_model=face)
    half = create_model(checkpoint=out, face_model=face)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = ref(x), half(x)
    assert torch.allclose(a, b, atol=2e-2 * float(a.abs().max()) + 1e-3), float((a - b).abs().max())
    assert not torch.equal(a, b), "weights were really rounded"


def test_weights_cli_info_and_pack(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert main(["weights", "pack", "--weights", str(run), "--out", str(tmp_path / "p.safetensors"), "--stage", str(run)]) == 0
    assert "MiB" in capsys.readouterr().out
    assert main(["weights", "info", str(tmp_path / "p.safetensors")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["model"] == "mlanet_mobile" and info["release"]["dtype"] == "float16"
    assert main(["weights", "info", str(tmp_path / "nothing.safetensors")]) == 2


def _copy_run(run, dest):
    """A copy of the tiny run with a second checkpoint and a best.json naming it (as a dev-validated run has)."""
    shutil.copytree(run, dest)
    last = json.loads((dest / "last.json").read_text())["weights"]
    shutil.copy(dest / "checkpoints" / last, dest / "checkpoints" / "step_0000000.safetensors")
    (dest / "best.json").write_text(json.dumps({
        "metric": "dev_nme_mean_bins", "value": 12.5, "step": 0, "weights": "step_0000000.safetensors",
        "metrics": {"dev_nme_mean_bins": 12.5, "dev_nme_bin0": 10.0, "dev_n": 199.0},
        "chosen_on": "the AFLW2000-3D dev images (validation only, never trained on)"}))
    return dest


def _renamed(src, dest, name, **config):
    """``src`` written again under another model name (and optionally another architecture config)."""
    state, meta = load_weights(src)
    save_weights(dest, state, CheckpointMeta(name, {**meta.model_config, **config}, meta.layout, meta.preprocess,
                                             meta.face_model, dict(meta.extra)))
    return dest


def test_pack_uses_best_json_and_records_the_choice(tiny_run, tmp_path):
    run = _copy_run(tiny_run[0], tmp_path / "run")
    out = pack_weights(run, tmp_path / "w.safetensors")
    rel = release_info(out)
    assert rel["chosen"]["by"] == "best.json" and rel["chosen"]["step"] == 0
    assert rel["packed_from"]["file"] == "step_0000000.safetensors" and rel["packed_from"]["run"] == "run"
    [stage] = rel["stages"]  # default: the run the checkpoint comes from
    assert stage["finished"] and stage["steps"] == 2 and stage["planned_steps"] == 2
    assert stage["best"]["step"] == 0 and stage["best"]["metrics"]["dev_nme_mean_bins"] == 12.5
    assert "optim:" in stage["config_yaml"] and rel["model"] == "mlanet_mobile" and "trained_as" not in rel
    assert stage["face_model"]["model_id"] == "synthetic-0"  # the face model the stage trained with
    # the run's best.json itself names the same checkpoint; two stages are summarised in order
    rel = release_info(pack_weights(run / "best.json", tmp_path / "w1.safetensors", stages=[str(tiny_run[0]), str(run)]))
    assert rel["chosen"]["by"] == "best.json" and rel["packed_from"]["file"] == "step_0000000.safetensors"
    assert [st["run"] for st in rel["stages"]] == [tiny_run[0].name, "run"]
    # without best.json: the newest checkpoint, and the release says so
    (run / "best.json").unlink()
    rel = release_info(pack_weights(run, tmp_path / "w2.safetensors"))
    assert rel["chosen"]["by"].startswith("last.json") and rel["packed_from"]["step"] == 1
    # best.json naming a missing checkpoint is an error, not a silent fallback
    (run / "best.json").write_text(json.dumps({"weights": "step_0000099.safetensors", "step": 99}))
    with pytest.raises(AssetError, match="step_0000099"):
        pack_weights(run, tmp_path / "w3.safetensors")


def test_pack_renames_an_alias_checkpoint_and_refuses_another_architecture(tiny_run, tmp_path, capsys):
    from mlanet.models.registry import create_model

    run, _ = tiny_run
    src = run / "checkpoints" / json.loads((run / "last.json").read_text())["weights"]
    lite = _renamed(src, tmp_path / "lite.safetensors", "mlanet_mobile_lite")
    assert main(["weights", "pack", "--weights", str(lite), "--name", "mlanet_mobile",
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "as mlanet_mobile, trained as mlanet_mobile_lite" in capsys.readouterr().out
    state, meta = load_weights(tmp_path / "m.safetensors")
    assert meta.model_name == "mlanet_mobile" and meta.model_config == load_weights(lite)[1].model_config
    assert release_info(tmp_path / "m.safetensors")["trained_as"] == "mlanet_mobile_lite"
    # names are compared canonically on loading; a checkpoint keeps the name it was trained under
    assert create_model("mlanet_mobile", checkpoint=lite).name == "mlanet_mobile_lite"
    assert create_model("mlanet_mobile_lite", checkpoint=tmp_path / "m.safetensors").name == "mlanet_mobile"
    # an ablation (other config) or another network is never shipped under the name
    ablation = _renamed(src, tmp_path / "nofusion.safetensors", "mlanet_mobile", fusion=False)
    with pytest.raises(AssetError, match="fusion=False.*refusing to ship it as mlanet_mobile"):
        pack_weights(ablation, tmp_path / "x.safetensors")
    with pytest.raises(AssetError, match="backbone='efficientnet_lite0'.*'resnet50'"):
        pack_weights(src, tmp_path / "x.safetensors", name="mlanet_r50")
    assert main(["weights", "pack", "--weights", str(src), "--name", "mlanet_nano", "--out",
                 str(tmp_path / "x.safetensors")]) == 2
    assert "--name mlanet_nano is not a registered network" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_pack_refuses_a_file_over_the_size_limit(tiny_run, tmp_path, capsys):
    run, _ = tiny_run
    assert MAX_SHIPPED_BYTES == 10 * 10**6
    with pytest.raises(MLANetError, match="over the 0.001 MB limit.*nothing written"):
        pack_weights(run, tmp_path / "big.safetensors", max_bytes=1000)
    assert not (tmp_path / "big.safetensors").exists() and not list(tmp_path.iterdir())  # no temporary left
    assert main(["weights", "pack", "--weights", str(run), "--out", str(tmp_path / "big.safetensors"),
                 "--max-mb", "0.001"]) == 2
    assert not (tmp_path / "big.safetensors").exists()


def _store_with_one_source(store, fingerprint: str):
    """A training-store folder with only a manifest: 3 faces of 300-W, terms as the store recorded them."""
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({
        "format": "mlanet-store/1", "n": 3, "fingerprint": fingerprint,
        "sources": [{"name": "300w", "root": "x", "terms": "as recorded by the store", "written": 3}]}))
    return store


def test_release_data_terms_are_the_projects_records_verbatim(tiny_run, tmp_path):
    from mlanet.data.labels.labeller import MEDIAPIPE_TERMS
    from mlanet.data.sources import aflw_crops, mtfl, video_folder, w300
    from mlanet.models.efficientnet_lite import PRETRAINED_TERMS
    from mlanet.teacher.tddfa_mb05 import TERMS

    data = default_data_terms({"build": {"albedo": "mlanet-albedo-ict-v1"}})
    by_store = {d["store_source"]: d["terms"] for d in data if "store_source" in d}
    assert by_store == {"aflw-crops": aflw_crops.TERMS, "300w": w300.TERMS, "mtfl": mtfl.TERMS,
                        "video-folder": video_folder.TERMS}
    terms = [d["terms"] for d in data]
    assert "; ".join(f"{k}: {v}" for k, v in TERMS.items()) in terms  # the label cache's teacher terms
    assert MEDIAPIPE_TERMS in terms and "; ".join(f"{k}: {v}" for k, v in PRETRAINED_TERMS.items()) in terms
    synthetic = next(d for d in data if d["source"].startswith("synthetic"))
    assert "MIT" in synthetic["terms"] and "mlanet-albedo-ict-v1" in synthetic["terms"]
    assert "research use only (AFLW2000-3D)" in synthetic["terms"], "a retired albedo model keeps its terms"
    dev = next(d for d in data if d["source"].startswith("AFLW2000-3D dev"))
    assert dev["use"].startswith("validation only") and "never" in dev["use"]
    # the stores the run read: their sources and terms as the manifests recorded them
    run = _copy_run(tiny_run[0], tmp_path / "run")
    store = _store_with_one_source(tmp_path / "store", fingerprint="f" * 64)
    rel = release_info(pack_weights(run, tmp_path / "w.safetensors", stores=[str(store)]))
    assert rel["stores"][0]["fingerprint"] == "f" * 64 and rel["stores"][0]["sources"][0]["written"] == 3
    stored = [d for d in rel["data"] if "store_source" in d]
    assert [(d["store_source"], d["terms"], d["count"]) for d in stored] == [("300w", "as recorded by the store", 3)]
    with pytest.raises(AssetError, match="not a training store"):
        pack_weights(run, tmp_path / "w.safetensors", stores=[str(tmp_path)])


def test_pack_takes_the_stores_a_packed_file_recorded_and_a_reason(tiny_run, tmp_path, capsys):
    """Where the stores are gone (a fresh machine), a candidate packed at the end of its run still carries their
    manifests: --stores-from reads them from it and records which file they came from; --reason says why the
    checkpoint is not the one best.json names."""
    run = _copy_run(tiny_run[0], tmp_path / "run")
    store = _store_with_one_source(tmp_path / "store", fingerprint="e" * 64)
    candidate = pack_weights(run, tmp_path / "candidate.safetensors", stores=[str(store)])
    shutil.rmtree(store)
    out = tmp_path / "ship.safetensors"
    assert main(["weights", "pack", "--weights", str(candidate), "--stage", str(run), "--stores-from", str(candidate),
                 "--reason", "held-out expression clips", "--out", str(out)]) == 0
    assert "held-out expression clips" in capsys.readouterr().out
    rel = release_info(out)
    assert rel["chosen"]["reason"] == "held-out expression clips" and rel["chosen"]["by"] == "file given"
    assert rel["stores"][0]["fingerprint"] == "e" * 64
    assert rel["stores"][0]["recorded_by"]["file"] == "candidate.safetensors"
    first = release_info(candidate)["packed_from"]  # the repack says which checkpoint of which run it is
    assert rel["packed_from"]["repack_of"] == first and rel["packed_from"]["run"] == first["run"] == "run"
    assert [(d["store_source"], d["count"]) for d in rel["data"] if "store_source" in d] == [("300w", 3)]
    # a file that recorded no stores, a missing file, and both kinds of store at once are refused, nothing written
    bare = pack_weights(run, tmp_path / "bare.safetensors")
    for args, words in ((["--stores-from", str(bare)], "records no training stores"),
                        (["--stores-from", str(tmp_path / "gone.safetensors")], "no such weights file"),
                        (["--stores-from", str(candidate), "--store", str(tmp_path)], "not both")):
        assert main(["weights", "pack", "--weights", str(candidate), "--out", str(tmp_path / "x.safetensors"),
                     *args]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1
        assert not (tmp_path / "x.safetensors").exists()


def test_default_weights_path_unknown_model():
    assert default_weights_path("no_such_model") is None


def test_r50_weights_do_not_ship_and_asking_for_them_says_how_to_train_them(capsys, tmp_path):
    assert set(SHIPPED) == {"mlanet_mobile"} and "mlanet_r50" in NOT_SHIPPED
    assert not (WEIGHTS_DIR / "mlanet_r50.safetensors").exists()
    with pytest.raises(WeightsNotShippedError, match=r"mlanet train --config mlanet/train/configs/r50_s1_synthetic"):
        default_weights_path("mlanet_r50")
    for argv in (["weights", "info", "mlanet_r50"],
                 ["export", "onnx", "--model", "mlanet_r50", "--out", str(tmp_path / "r50.onnx")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "on a GPU" in err and "r50_s1_synthetic.yaml" in err, err
    assert main(["weights", "list"]) == 0
    assert "mlanet_r50: no mlanet_r50 weights ship" in capsys.readouterr().out


def _shipped():
    return {n: p for n in SHIPPED if (p := default_weights_path(n)) is not None}


def test_shipped_files_size_card_and_release():
    """Needs the shipped EfficientNet-Lite0 mlanet_mobile (the registry and the file land together)."""
    from mlanet.config import from_dict
    from mlanet.models.mlanet import MLANetConfig
    from mlanet.models.registry import DEFAULT_PREPROCESS, MODELS

    shipped = _shipped()
    if not shipped:
        pytest.skip("no shipped weights in mlanet/weights/ in this checkout")
    card = MODEL_CARD.read_text()
    for name, path in shipped.items():
        assert path.stat().st_size <= MAX_SHIPPED_BYTES
        state, meta = load_weights(path)
        assert meta.model_name == name
        assert from_dict(MLANetConfig, meta.model_config) == MODELS[name][0], "the registered architecture"
        assert meta.preprocess == DEFAULT_PREPROCESS[name]
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
        rel = release_info(path)
        assert rel and rel["data"] and rel["notice"] and rel["stages"] and rel["stores"]
        # the last run ended by itself: all its steps, or its run.max_minutes (a planned stop with a checkpoint,
        # e.g. stage 4b on a lent GPU with a fixed time), never an interruption or a crash
        last = rel["stages"][-1]
        assert last["finished"] or last.get("stopped_by") == "time limit", "shipped from a run that ended by itself"
        assert all(st.get("stopped_by") for st in rel["stages"]), "how every earlier stage ended is recorded"
        # chosen on the dev images (best.json), or a checkpoint given with the reason written down and its own
        # dev score recorded beside it
        chosen = rel["chosen"]
        assert (chosen["by"] == "best.json" and "dev_nme_mean_bins" in chosen["metrics"]) or (
            chosen["by"] == "file given" and len(chosen.get("reason", "")) > 20
            and "dev_nme_mean_bins" in meta.extra["metrics"])
        assert name in card
    assert "research" in card.lower() and "AFLW2000" in card and "TODO(numbers)" not in card
    assert sorted(p.name for p in WEIGHTS_DIR.glob("*.safetensors")) == sorted(SHIPPED.values())
    assert not list(WEIGHTS_DIR.glob("*.pt")) and not list(WEIGHTS_DIR.glob("*.pth")), "no pickles shipped"


@pytest.mark.assets
def test_shipped_weights_fit_the_face_model_built_from_the_archive(ict_model_file):
    """The face model a user builds from the ICT archive must be the one the weights were trained for."""
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    shipped = _shipped()
    if not shipped:
        pytest.skip("no shipped weights in mlanet/weights/ in this checkout")
    face = MorphableModel.load(ict_model_file)
    for path in shipped.values():
        model = create_model(checkpoint=path, face_model=face)  # refuses another face model content
        s = model.preprocess.input_size
        with torch.no_grad():
            out = model(torch.rand(1, 3, s, s))
        assert out.shape == (1, face.layout.total) and torch.isfinite(out).all()
