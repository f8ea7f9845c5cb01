"""``mlanet-video`` on damaged videos (issue item 5): the frames FFmpeg can still decode are all
processed, the run's status is ``input_damaged``, run.json lists the lost frames, and only a file of
which nothing decodes is an error (exit code 2, one line naming the file).

The first tests need no assets: a small H.264 clip is encoded here with PyAV, damaged packet by
packet, and run with the synthetic face model and an untrained network (MediaPipe finds no face in
it, which does not matter for the bookkeeping). The last one damages the shared 720p clip's first
keyframe and checks the overlay: frame k of the overlay is input frame k, lost frames are black.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("mediapipe")

N, W, H = 30, 64, 48


def _encode_gop_clip(path: Path) -> Path:
    """N frames of H.264, a keyframe every 10 frames, B-frames; frame i is a flat grey 20 + 7 i."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "10", "bf": "2"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            img = np.full((H, W, 3), 20 + 7 * i, np.uint8)
            img[: H // 2, W // 2 :] = np.random.default_rng(i).integers(0, 256, (H // 2, W // 2, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _packets(path: Path) -> list[dict]:
    """Video packets in file order with their display rank (None for an edit-list pre-roll)."""
    with av.open(str(path)) as c:
        pk = [{"pos": p.pos, "pts": p.pts, "key": p.is_keyframe, "discard": p.is_discard}
              for p in c.demux(video=0) if p.size]
    shown = sorted(p["pts"] for p in pk if not p["discard"])
    for p in pk:
        p["rank"] = None if p["discard"] else shown.index(p["pts"])
    return pk


def _damage(src: Path, dst: Path, packets: list[dict]) -> Path:
    """Copy of ``src`` with the first 8 bytes (the H.264 NAL length) of each packet set to 0xFF."""
    data = bytearray(src.read_bytes())
    for p in packets:
        data[p["pos"] : p["pos"] + 8] = b"\xff" * 8
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory) -> Path:
    return _encode_gop_clip(tmp_path_factory.mktemp("clips") / "gop10.mp4")


@pytest.fixture(scope="module")
def synthetic_model_file(synthetic_data, tmp_path_factory) -> Path:
    return synthetic_data.save(tmp_path_factory.mktemp("model") / "synthetic.mlface.npz")


def _video(path, out, model_file, *extra) -> int:
    from mlanet.edge import video_cli

    return video_cli.main([str(path), "--out", str(out), "--untrained", "mlanet_mobile", "--face-model",
                           str(model_file), "--quiet", "--no-glb", "--meshes", "none", *extra])


def test_cli_damaged_mid_clip_goes_on(gop_clip, synthetic_model_file, tmp_path, capsys):
    victim = next(p for p in _packets(gop_clip) if p["rank"] == 14)
    path = _damage(gop_clip, tmp_path / "mid.mp4", [victim])
    out = tmp_path / "run"
    assert _video(path, out, synthetic_model_file, "--no-video") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "input_damaged" and run["frames_done"] == N  # read to the end, not stopped at 14
    assert run["lost_frames"] == [14]
    assert str(path) in run["message"] and "(frame 14)" in run["message"]
    err = capsys.readouterr().err.strip().splitlines()
    assert any(str(path) in line and "frame 14" in line and f"{N - 1} frames" in line for line in err)


def test_cli_damaged_first_gop_is_not_rejected(gop_clip, synthetic_model_file, tmp_path):
    pk = _packets(gop_clip)
    second_key = [p for p in pk if p["key"]][1]["rank"]
    path = _damage(gop_clip, tmp_path / "first.mp4", [pk[0]])
    out = tmp_path / "run"
    assert _video(path, out, synthetic_model_file, "--no-video") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "input_damaged" and run["frames_done"] == N
    assert run["lost_frames"] == list(range(second_key))
    assert f"frames 0-{second_key - 1}" in run["message"]


def test_cli_undamaged_clip_is_complete(gop_clip, synthetic_model_file, tmp_path):
    out = tmp_path / "run"
    assert _video(gop_clip, out, synthetic_model_file, "--no-video") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == N and run["message"] is None
    assert run["lost_frames"] == []


def test_cli_undecodable_video_is_a_one_line_error(gop_clip, synthetic_model_file, tmp_path, capsys):
    path = _damage(gop_clip, tmp_path / "nothing.mp4", _packets(gop_clip))
    assert _video(path, tmp_path / "run", synthetic_model_file, "--no-video") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not a single frame could be decoded" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "run.json").exists()


@pytest.mark.assets
@pytest.mark.gl
def test_cli_shared_clip_with_damaged_first_keyframe(shared, ict_model_file, tmp_path):
    """The 720p clip with its first keyframe (in the edit-list pre-roll) damaged: once rejected, now
    frames 0-25 are lost and the rest is processed; the overlay keeps input frame numbers."""
    clip = shared / "data" / "video" / "obama_720p.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    pk = _packets(clip)
    next_key = next(p for p in pk[1:] if p["key"])["rank"]
    assert pk[0]["key"] and pk[0]["discard"] and next_key == 26
    path = _damage(clip, tmp_path / "key0.mp4", [pk[0]])
    out = tmp_path / "run"
    assert _video(path, out, ict_model_file, "--max-frames", "3") == 0  # 3 frames processed: 26, 27, 28
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "input_damaged" and run["frames_done"] == 29
    assert run["lost_frames"] == list(range(26)) and "frames 0-25" in run["message"]
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert set(z["frame_index"].tolist()) == {26, 27, 28}  # one face in each frame read
    with av.open(str(out / "overlay.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 29 and frames[0].shape == (720, 1280, 3)
    assert max(int(f.max()) for f in frames[:26]) < 20 and all(f.mean() > 40 for f in frames[26:])
