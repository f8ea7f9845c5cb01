"""Stage-2 training features: init from another run, AFLW2000 image lists, video frames as unlabelled data."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mlanet.checkpoint import load_weights
from mlanet.cli import main
from mlanet.data.splits import AFLW2000_DEV_HELDOUT, AFLW2000_DEV_TRAIN, read_name_list
from mlanet.errors import AssetError


def _args(out, face_path, steps=2, extra=()):
    return ["train", "--out", str(out), "--set", f"face_model={face_path}", "--set", "preprocess.input_size=64",
            "--set", f"optim.steps={steps}", "--set", "optim.batch_size=2", "--set", "optim.warmup_steps=1",
            "--set", "data.val_synthetic=0", "--set", "run.val_every=0", "--set", "run.ckpt_every=0",
            "--set", "run.image_every=0", *extra]


@pytest.fixture
def face_path(synthetic_data, tmp_path):
    return synthetic_data.save(tmp_path / "face.mlface.npz")


def _final(run: Path):
    return load_weights(run / "checkpoints" / json.loads((run / "last.json").read_text())["weights"])


def test_init_weights_starts_from_the_other_run(tmp_path, face_path):
    assert main(_args(tmp_path / "a", face_path)) == 0
    first, _ = _final(tmp_path / "a")
    # with lr 0 (zero steps of change) the run must end with exactly the initial weights
    assert main(_args(tmp_path / "b", face_path, extra=["--set", f"model.init_weights={tmp_path / 'a'}",
                                                          "--set", "optim.lr=0", "--set", "loss.photometric=0"])) == 0
    second, meta = _final(tmp_path / "b")
    float_keys = [k for k, v in first.items() if v.is_floating_point() and "running" not in k]
    assert float_keys and all(torch.equal(first[k], second[k]) for k in float_keys)
    assert meta.extra["train_config"]["model"]["init_weights"] == str(tmp_path / "a")


def test_init_weights_refuses_another_network(tmp_path, face_path, capsys):
    assert main(_args(tmp_path / "a", face_path)) == 0
    rc = main(_args(tmp_path / "b", face_path, extra=["--set", "model.name=mlanet_r50",
                                                        "--set", f"model.init_weights={tmp_path / 'a'}"]))
    assert rc == 2
    err = capsys.readouterr().err
    assert "init_weights" in err and "mlanet_mobile" in err and "mlanet_r50" in err


def test_shipped_split_lists_are_disjoint_and_stratified():
    train, held = read_name_list(AFLW2000_DEV_TRAIN), read_name_list(AFLW2000_DEV_HELDOUT)
    assert len(train) == 99 and len(held) == 100 and not set(train) & set(held)
    assert read_name_list("aflw2000_dev_heldout") == held


def test_name_list_errors(tmp_path):
    with pytest.raises(AssetError, match="not found"):
        read_name_list(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(AssetError, match="names no images"):
        read_name_list(tmp_path / "empty.txt")
    (tmp_path / "dupe.txt").write_text("a\nb\na\n")
    with pytest.raises(AssetError, match="twice"):
        read_name_list(tmp_path / "dupe.txt")


@pytest.mark.assets
def test_aflw2000_list_filters_and_names_missing(shared):
    from mlanet.data.aflw2000 import AFLW2000
    from mlanet.preprocess import PreprocessCfg

    root = shared / "data" / "aflw2000-3d-dev"
    ds = AFLW2000(root, PreprocessCfg(input_size=32), names=read_name_list("aflw2000_dev_heldout"))
    assert len(ds) == 100 and {r.image_path.stem for r in ds.records} == set(read_name_list("aflw2000_dev_heldout"))
    assert sorted(r.yaw_bin for r in ds.records).count(2) == 15
    with pytest.raises(AssetError, match="image99999"):
        AFLW2000(root, PreprocessCfg(input_size=32), names=["image99999"])


def _write_clip(path: Path, n: int = 7) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(n):
            img = np.full((48, 64, 3), 20 * i, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def test_extract_frames_every_nth_and_cached(tmp_path):
    pytest.importorskip("av")
    from mlanet.data.video_frames import extract_frames

    clip = tmp_path / "clip.mp4"
    _write_clip(clip)
    out = extract_frames(clip, tmp_path / "cache", every=3)
    assert sorted(p.name for p in out.iterdir()) == ["frame_000000.png", "frame_000003.png", "frame_000006.png"]
    stamp = (out / "frame_000003.png").stat().st_mtime_ns
    assert extract_frames(clip, tmp_path / "cache", every=3) == out
    assert (out / "frame_000003.png").stat().st_mtime_ns == stamp, "second call reuses the cache"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [out.name], "no temporary folders left"


def test_extract_frames_bad_input(tmp_path):
    pytest.importorskip("av")
    from mlanet.data.video_frames import extract_frames

    with pytest.raises(AssetError, match="missing.mp4"):
        extract_frames(tmp_path / "missing.mp4", tmp_path / "cache")
    bad = tmp_path / "notes.mp4"
    bad.write_text("not a video")
    with pytest.raises(AssetError, match="notes.mp4"):
        extract_frames(bad, tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("*")), "nothing left behind"
