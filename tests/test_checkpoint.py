"""Checkpoint files: metadata round trip and refusal of pickles and foreign files."""

import pickle

import pytest
import torch

from mlanet.checkpoint import CheckpointMeta, load_training_state, load_weights, read_meta, save_training_state, save_weights
from mlanet.errors import AssetError
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg


def _meta():
    return CheckpointMeta("mlanet_mobile", {"fusion": True}, ParamLayout(8, 6, 10), PreprocessCfg(input_size=64),
                          {"model_id": "synthetic-0", "content_sha256": "ab"}, {"step": 3})


def test_weights_round_trip(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "b.bias": torch.arange(5.0)}
    path = save_weights(tmp_path / "w.safetensors", sd, _meta())
    loaded, meta = load_weights(path)
    assert torch.equal(loaded["a.weight"], sd["a.weight"])
    assert meta.layout == ParamLayout(8, 6, 10) and meta.preprocess.input_size == 64
    assert meta.extra == {"step": 3} and read_meta(path).model_name == "mlanet_mobile"


def test_pickles_and_foreign_files_are_refused(tmp_path):
    pth = tmp_path / "w.pth"
    torch.save({"a": torch.zeros(1)}, pth)
    with pytest.raises(AssetError, match="pickle"):
        load_weights(pth)
    raw = tmp_path / "x.safetensors"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(AssetError, match="pickle"):
        load_weights(raw)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AssetError, match="not a readable safetensors"):
        load_weights(junk)
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"a": torch.zeros(1)}, str(bare))
    with pytest.raises(AssetError, match="without MLANet metadata"):
        load_weights(bare)


def test_training_state_round_trip(tmp_path):
    state = {"step": 7, "torch_rng": torch.get_rng_state(), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    path = save_training_state(tmp_path / "s.state.pt", state)
    back = load_training_state(path)
    assert back["step"] == 7 and torch.equal(back["torch_rng"], state["torch_rng"])
    with pytest.raises(AssetError, match="no such training-state"):
        load_training_state(tmp_path / "missing.pt")


def test_resolve_weights_from_a_run_folder(tmp_path):
    import json

    from mlanet.checkpoint import resolve_weights

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "last.json").write_text(json.dumps({"weights": "step_0000007.safetensors"}))
    assert resolve_weights(tmp_path) == tmp_path / "checkpoints" / "step_0000007.safetensors"
    assert resolve_weights(tmp_path / "x.safetensors") == tmp_path / "x.safetensors"
    (tmp_path / "best.json").write_text(json.dumps({"weights": "step_0000003.safetensors", "value": 4.2}))
    assert resolve_weights(tmp_path / "best.json") == tmp_path / "checkpoints" / "step_0000003.safetensors"
    assert resolve_weights(tmp_path / "last.json") == tmp_path / "checkpoints" / "step_0000007.safetensors"
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "best.json").write_text("{")
    with pytest.raises(AssetError, match="unreadable"):
        resolve_weights(tmp_path / "broken" / "best.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssetError, match="without last.json"):
        resolve_weights(empty)


def test_a_safetensors_header_length_ending_in_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The first byte of a safetensors file is the low byte of its header length: 0x80 happens."""
    import json

    import torch
    from safetensors.torch import save_file

    from mlanet.checkpoint import _open

    path = tmp_path / "w.safetensors"
    for pad in range(0, 300):  # find a metadata length whose header length's low byte is 0x80
        save_file({"x": torch.zeros(1)}, str(path), metadata={"mlanet": json.dumps({"format": "x", "pad": "p" * pad})})
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    with pytest.raises(AssetError, match="not an MLANet checkpoint"):  # read as safetensors, not refused as a pickle
        _open(path)
