"""`mlanet train` end to end on the synthetic face model: run, resume, Ctrl-C, DDP (2 CPU processes, gloo)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mlanet.checkpoint import load_weights
from mlanet.cli import main


def _args(tmp_path, face_path, steps, extra=()):
    return [
        "train", "--out", str(tmp_path / "run"),
        "--set", f"face_model={face_path}",
        "--set", "preprocess.input_size=64",
        "--set", f"optim.steps={steps}", "--set", "optim.batch_size=2", "--set", "optim.warmup_steps=1",
        "--set", "data.val_synthetic=4", "--set", "run.val_every=2", "--set", "run.ckpt_every=2",
        "--set", "run.log_every=1", "--set", "run.image_every=1", "--set", "run.seed=1",
        *extra,
    ]


@pytest.fixture
def face_path(synthetic_data, tmp_path):
    return synthetic_data.save(tmp_path / "face.mlface.npz")


def _interrupt_on_call(monkeypatch, n):
    from mlanet.losses import objective

    calls = {"n": 0}
    original = objective.Objective.__call__

    def wrapped(self, batch, pred, **kw):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(self, batch, pred, **kw)

    monkeypatch.setattr(objective.Objective, "__call__", wrapped)


def _last_weights(run):
    return load_weights(run / "checkpoints" / json.loads((run / "last.json").read_text())["weights"])


def test_train_writes_everything(tmp_path, face_path):
    assert main(_args(tmp_path, face_path, 3)) == 0
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 2 and summary["stopped_by"] == "finished"
    assert "val_nme_pct" in summary["metrics"]
    assert (run / "config.yaml").is_file() and "input_size: 64" in (run / "config.yaml").read_text()
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss/landmarks" in l and "loss/photometric" in l for l in lines)
    assert list((run / "tb").iterdir()), "TensorBoard events written"
    sd, meta = _last_weights(run)
    assert meta.model_name == "mlanet_mobile" and meta.extra["step"] == 2
    assert meta.face_model["model_id"] == "synthetic-0" and meta.preprocess.input_size == 64
    assert meta.extra["train_config"]["optim"]["steps"] == 3


def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, face_path, monkeypatch, capsys):
    _interrupt_on_call(monkeypatch, 3)  # Ctrl-C during step 2: steps 0 and 1 are complete
    assert main(_args(tmp_path, face_path, 4)) == 130
    run = tmp_path / "run"
    last = json.loads((run / "last.json").read_text())
    assert last["step"] == 1 and (run / "checkpoints" / last["weights"]).is_file()
    assert "--resume" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(_args(tmp_path, face_path, 4) + ["--resume"]) == 0
    assert json.loads((run / "summary.json").read_text())["step"] == 3
    resumed, _ = _last_weights(run)
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    assert main(_args(straight_dir, face_path, 4)) == 0
    straight, _ = _last_weights(straight_dir / "run")
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], atol=1e-5), k


def test_resume_without_a_run_is_a_clear_error(tmp_path, face_path, capsys):
    assert main(_args(tmp_path, face_path, 2) + ["--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_unknown_config_key_exits_cleanly(tmp_path, face_path, capsys):
    assert main(_args(tmp_path, face_path, 1, ["--set", "optim.lrr=1"])) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, face_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mlanet.cli", *_args(tmp_path, face_path, 3, ["--set", "run.image_every=0"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["replicas_in_sync"] is True
    assert summary["step"] == 2


def _dev_folder(folder, size=120):
    """Three AFLW2000-3D-layout images (noise) with 68 points and one yaw per bin (10, 45, 75 degrees)."""
    import math

    import numpy as np
    from PIL import Image
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    folder.mkdir()
    for k, yaw in enumerate((10.0, 45.0, 75.0)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"image{k:05d}.jpg")
        pts = rng.uniform(35, 85, (68, 2))
        savemat(folder / f"image{k:05d}.mat", {"pt3d_68": np.vstack([pts.T, np.zeros((1, 68))]),
                                                "Pose_Para": np.array([[0.0, math.radians(yaw), 0, 0, 0, 0, 1.0]])})
    return folder


def test_dev_validation_chooses_the_checkpoint(tmp_path, face_path):
    dev = _dev_folder(tmp_path / "dev")
    extra = ("--set", f"data.val_aflw2000_dir={dev}", "--set", "data.val_definition=ict68",
             "--set", "run.ckpt_every=100")
    assert main(_args(tmp_path, face_path, 5, extra)) == 0
    run = tmp_path / "run"
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    vals = [(l["step"], l["dev_nme_mean_bins"]) for l in lines if "dev_nme_mean_bins" in l]
    assert [s for s, _ in vals] == [0, 2, 4, 4] or [s for s, _ in vals][:3] == [0, 2, 4]
    assert all(f"dev_nme_bin{i}" in l for l in lines if "dev_nme_mean_bins" in l for i in range(3))
    best = json.loads((run / "best.json").read_text())
    step, value = min(vals, key=lambda sv: sv[1])
    assert best["metric"] == "dev_nme_mean_bins" and best["value"] == pytest.approx(value)
    assert best["step"] == step and (run / "checkpoints" / best["weights"]).is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best"]["step"] == step


def test_validation_folder_is_never_a_training_source(tmp_path, face_path, capsys):
    dev = _dev_folder(tmp_path / "dev")
    extra = ("--set", f"data.val_aflw2000_dir={dev}", "--set", f"data.aflw2000_dir={dev}",
             "--set", "data.val_definition=ict68")
    assert main(_args(tmp_path, face_path, 2, extra)) == 2
    assert "must not be trained on" in capsys.readouterr().err


def test_channels_last_trains_the_same_network(tmp_path, face_path):
    """run.channels_last only changes the memory layout: same steps, weights within float tolerance."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    extra = ("--set", "loss.photometric=0")
    assert main(_args(a, face_path, 3, extra)) == 0
    assert main(_args(b, face_path, 3, extra + ("--set", "run.channels_last=true"))) == 0
    sa, _ = _last_weights(a / "run")
    sb, mb = _last_weights(b / "run")
    assert mb.extra["train_config"]["run"]["channels_last"] is True
    ia = json.loads((a / "run" / "summary.json").read_text())["initial_metrics"]
    ib = json.loads((b / "run" / "summary.json").read_text())["initial_metrics"]
    assert ia["val_nme_pct"] == pytest.approx(ib["val_nme_pct"], rel=1e-5)  # same network before any update
    assert sa.keys() == sb.keys()
    for k in sa:  # Adam turns rounding-level gradient differences into up to lr-sized steps: 3 steps at 1e-3
        if "running_" not in k and "num_batches" not in k:  # BN statistics follow the activations: not compared
            assert torch.allclose(sa[k].float(), sb[k].float(), rtol=0, atol=4e-3), k


def test_sigterm_stops_a_background_run_with_a_checkpoint(tmp_path, face_path):
    """A background job ignores Ctrl-C's SIGINT; `kill PID` (SIGTERM) stops it after a step with a checkpoint."""
    import signal
    import time

    cmd = [sys.executable, "-m", "mlanet.cli", *_args(tmp_path, face_path, 100000,
                                                      ["--set", "run.image_every=0", "--set", "run.val_every=0"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file() and sum(1 for _ in metrics.open()) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # ignored, as in a background job
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = json.loads((tmp_path / "run" / "last.json").read_text())
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "interrupted" and last["step"] == summary["step"] >= 1
    assert "resume with --resume" in err


@pytest.mark.assets
def test_aflw2000_images_are_refused_as_a_training_source(tmp_path, face_path, shared, capsys):
    """data.aflw2000_dir reads AFLW2000-3D-layout folders (e.g. 300W-LP), never AFLW2000-3D's own images."""
    import shutil

    dev = shared / "data" / "aflw2000-3d-dev"
    copy = tmp_path / "copied"
    copy.mkdir()
    for mat in sorted(dev.glob("*.mat"))[:3]:
        shutil.copy(mat, copy / mat.name)
        shutil.copy(mat.with_suffix(".jpg"), copy / mat.with_suffix(".jpg").name)
    assert main(_args(tmp_path, face_path, 2, ("--set", f"data.aflw2000_dir={copy}"))) == 2
    err = capsys.readouterr().err
    assert "AFLW2000-3D" in err and "validation only" in err and "Traceback" not in err


def test_a_stop_signal_during_a_checkpoint_write_waits_for_the_write():
    """SIGTERM arriving inside torch.save broke the archive ("unexpected pos"); the gate holds it until the
    write is complete, then stops the loop; the run's final write drops a held signal (it is stopping)."""
    import signal

    from mlanet.train.loop import _InterruptGate

    gate = _InterruptGate()
    with pytest.raises(KeyboardInterrupt):
        gate.handler(signal.SIGTERM, None)
    written = []
    with pytest.raises(KeyboardInterrupt):
        with gate.writing():
            gate.handler(signal.SIGTERM, None)  # held: no exception inside the write
            written.append("checkpoint")
    assert written == ["checkpoint"]
    with gate.writing(raise_held=False):
        gate.handler(signal.SIGTERM, None)
    with gate.writing():  # nothing held any more
        pass


def test_freeze_batchnorm_keeps_the_running_statistics(tmp_path, face_path):
    """optim.freeze_batchnorm: BatchNorm layers normalise with, and keep, the statistics of the weights they start
    from (also across validations, which switch the model to eval and back), while their scale and shift train."""
    start, frozen, free = tmp_path / "start", tmp_path / "frozen", tmp_path / "free"
    for d in (start, frozen, free):
        d.mkdir()
    assert main(_args(start, face_path, 2)) == 0
    init = ("--set", f"model.init_weights={start / 'run'}")
    assert main(_args(frozen, face_path, 3, init + ("--set", "optim.freeze_batchnorm=true"))) == 0
    assert main(_args(free, face_path, 3, init)) == 0
    s0, _ = _last_weights(start / "run")
    sf, mf = _last_weights(frozen / "run")
    sn, _ = _last_weights(free / "run")
    assert mf.extra["train_config"]["optim"]["freeze_batchnorm"] is True
    stats = [k for k in s0 if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats
    for k in stats:
        assert torch.equal(sf[k], s0[k]), k
    assert any(not torch.equal(sn[k], s0[k]) for k in stats)  # without it they follow the batches
    scales = [k[: -len("running_mean")] + "weight" for k in stats if k.endswith("running_mean")]
    assert any(not torch.equal(sf[k], s0[k]) for k in scales)  # the affine parameters still train


def test_train_only_updates_the_named_parameters_and_keeps_the_rest(tmp_path, face_path, capsys):
    """optim.train_only: the expression head trains, every other tensor keeps the start's values; a prefix that
    names no parameter is a one-line error (exit 2) that lists the network's groups."""
    start, head = tmp_path / "start", tmp_path / "head"
    for d in (start, head):
        d.mkdir()
    assert main(_args(start, face_path, 2)) == 0
    init = ("--set", f"model.init_weights={start / 'run'}", "--set", "optim.lr=0.01")
    assert main(_args(head, face_path, 3, init + ("--set", "optim.train_only=[heads.expression]"))) == 0
    s0, _ = _last_weights(start / "run")
    s1, meta = _last_weights(head / "run")
    assert meta.extra["train_config"]["optim"]["train_only"] == ["heads.expression"]
    floats = [k for k, v in s0.items() if v.is_floating_point()]  # BatchNorm statistics included: frozen layers keep them
    assert any("running_mean" in k for k in floats)
    changed = {k for k in floats if not torch.equal(s0[k], s1[k])}
    assert changed and all(k.startswith("heads.expression") for k in changed), sorted(changed)[:5]
    capsys.readouterr()
    bad = tmp_path / "bad"
    bad.mkdir()
    assert main(_args(bad, face_path, 1, init + ("--set", "optim.train_only=[heads.expresion]"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.train_only" in err[0] and "'heads.expresion'" in err[0] and "heads.expression" in err[0]
