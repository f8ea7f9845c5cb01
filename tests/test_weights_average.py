"""mlanet weights average: the mean of checkpoints of one run, refused across runs of other networks/face models."""

from __future__ import annotations

import pytest
import torch

from mlanet.checkpoint import load_weights
from mlanet.cli import main
from mlanet.models.model_io import save_model
from mlanet.models.registry import create_model
from mlanet.morphable.model import MorphableModel
from mlanet.preprocess import PreprocessCfg


def _checkpoint(face: MorphableModel, path, seed: int, step: int, input_size: int = 64, description=None):
    torch.manual_seed(seed)
    model = create_model("mlanet_mobile", face_model=face, preprocess=PreprocessCfg(input_size=input_size))
    with torch.no_grad():
        for p in model.parameters():  # heads start at zero: give every tensor values that differ between seeds
            p.add_(torch.randn_like(p) * 0.1)
    return save_model(model, path, description or face.describe(), extra={"step": step})


def test_average_is_the_mean_of_the_checkpoints(synthetic_data, tmp_path, capsys):
    face = MorphableModel(synthetic_data)
    paths = [_checkpoint(face, tmp_path / f"step_{i}.safetensors", seed=i, step=100 * i) for i in range(3)]
    out = tmp_path / "mean.safetensors"
    assert main(["weights", "average", *map(str, paths), "--out", str(out)]) == 0
    assert "mean of 3 checkpoints" in capsys.readouterr().out
    got, meta = load_weights(out)
    sds = [load_weights(p)[0] for p in paths]
    floats = [k for k, v in got.items() if v.is_floating_point()]
    assert floats
    for k in floats:
        want = (sds[0][k].double() + sds[1][k].double() + sds[2][k].double()) / 3
        torch.testing.assert_close(got[k].double(), want, rtol=0, atol=1e-6)
    assert [s["step"] for s in meta.extra["averaged_from"]] == [0, 100, 200]
    assert meta.extra["step"] == 200 and meta.model_name == "mlanet_mobile"
    # the result loads as an ordinary checkpoint of the same network and face model
    net = create_model(checkpoint=out, face_model=synthetic_data)
    assert net.preprocess.input_size == 64


def test_average_refuses_checkpoints_of_different_runs(synthetic_data, tmp_path, capsys):
    face = MorphableModel(synthetic_data)
    a = _checkpoint(face, tmp_path / "a.safetensors", seed=0, step=0)
    b = _checkpoint(face, tmp_path / "b.safetensors", seed=1, step=1, input_size=96)
    out = tmp_path / "mean.safetensors"
    assert main(["weights", "average", str(a), str(b), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "b.safetensors" in err and "preprocessing" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["weights", "average", str(a), "--out", str(out)]) == 2
    assert "at least two" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["weights", "average", "--out", str(out)])


def test_average_compares_the_decoder_not_the_build_recipe(synthetic_data, tmp_path, capsys):
    """A checkpoint of the same decoder whose file recorded one more recipe field (the landmark
    definition id, session 13) averages; one whose decoder differs is refused naming the face model."""
    import copy

    face = MorphableModel(synthetic_data)
    plain = face.describe()
    with_recipe = copy.deepcopy(plain)
    with_recipe["build"] = {**(with_recipe.get("build") or {}), "landmarks": "mlanet-landmarks-ict-v2"}
    a = _checkpoint(face, tmp_path / "a.safetensors", seed=0, step=0, description=plain)
    b = _checkpoint(face, tmp_path / "b.safetensors", seed=1, step=1, description=with_recipe)
    out = tmp_path / "mean.safetensors"
    assert main(["weights", "average", str(a), str(b), "--out", str(out)]) == 0
    other = copy.deepcopy(plain)
    other["model_id"] = "another-face-model"
    c = _checkpoint(face, tmp_path / "c.safetensors", seed=2, step=2, description=other)
    capsys.readouterr()
    assert main(["weights", "average", str(a), str(c), "--out", str(tmp_path / "bad.safetensors")]) == 2
    err = capsys.readouterr().err.strip()
    assert "c.safetensors" in err and "face model" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad.safetensors").exists()
