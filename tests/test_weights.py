"""Shipped default weights: packing to FP16, the release block, the shipped files themselves."""

import json

import pytest
import torch

from mlanet.checkpoint import load_weights
from mlanet.cli import main
from mlanet.weights import MODEL_CARD, SHIPPED, WEIGHTS_DIR, default_weights_path
from mlanet.weights.pack import pack_weights, release_info

MAX_SHIPPED_BYTES = 80 * 10**6  # issue 7: 80 MB in total at most


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


def test_default_weights_path_unknown_model():
    assert default_weights_path("no_such_model") is None


def _shipped():
    return {n: p for n in SHIPPED if (p := default_weights_path(n)) is not None}


def test_shipped_files_size_card_and_release():
    shipped = _shipped()
    if not shipped:
        pytest.skip("no shipped weights in mlanet/weights/ in this checkout")
    assert sum(p.stat().st_size for p in shipped.values()) <= MAX_SHIPPED_BYTES
    card = MODEL_CARD.read_text()
    for name, path in shipped.items():
        state, meta = load_weights(path)
        assert meta.model_name == name
        assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
        rel = release_info(path)
        assert rel and rel["data"] and rel["notice"] and len(rel["stages"]) >= 2
        assert name in card
    assert "research" in card.lower() and "AFLW2000" in card
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
