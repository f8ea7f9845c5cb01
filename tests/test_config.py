"""The config system: defaults, YAML, --set overrides, unknown keys, types."""

import pytest

from mlanet.config import ConfigError, apply_overrides, from_dict, load_config, save_config, to_dict
from mlanet.train.config import TrainCfg


def test_defaults_and_round_trip(tmp_path):
    cfg = TrainCfg()
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(TrainCfg, path) == cfg
    assert from_dict(TrainCfg, to_dict(cfg)) == cfg


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.01\n  batch_size: 4\nmodel:\n  name: mlanet_r50\n")
    cfg = load_config(TrainCfg, path, ["optim.lr=3e-4", "model.fusion=false", "preprocess.input_size=128",
                                       "preprocess.mean=[0.5, 0.5, 0.5]", "face_model=/x/y.npz"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.batch_size == 4
    assert cfg.model.name == "mlanet_r50" and cfg.model.fusion is False
    assert cfg.preprocess.input_size == 128 and cfg.preprocess.mean == (0.5, 0.5, 0.5)
    assert cfg.face_model == "/x/y.npz"
    assert apply_overrides(cfg, ["face_model=null"]).face_model is None


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        apply_overrides(TrainCfg(), ["optim.lrr=1"])
    path = tmp_path / "c.yaml"
    path.write_text("optm:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        load_config(TrainCfg, path)


def test_type_errors_are_clear():
    with pytest.raises(ConfigError, match="optim.batch_size: expected an integer"):
        apply_overrides(TrainCfg(), ["optim.batch_size=abc"])
    with pytest.raises(ConfigError, match="expected true/false"):
        apply_overrides(TrainCfg(), ["model.fusion=3"])
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(TrainCfg(), ["optim.lr"])
    with pytest.raises(ConfigError, match="input_size must be >= 16"):
        apply_overrides(TrainCfg(), ["preprocess.input_size=4"])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainCfg, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(TrainCfg, tmp_path / "missing.yaml")


def test_one_config_error_class_for_keys_types_and_fit_to_the_data():
    """A caller catches one class: the config system's key/type errors and the training code's "this value does
    not fit the face model / data" errors are the same ConfigError (an MLANetError, so the CLIs exit 2)."""
    from mlanet import errors

    assert ConfigError is errors.ConfigError and issubclass(ConfigError, errors.MLANetError)
    with pytest.raises(errors.ConfigError):
        apply_overrides(TrainCfg(), ["optim.lrr=1"])
