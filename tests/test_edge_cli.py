"""mlanet-video and mlanet-live end to end on the shared clips (untrained network, real MediaPipe,
real GL renderer, real encoders): outputs, Ctrl-C + --resume, damaged inputs, headless live."""

import csv
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from mlanet.edge import live_cli, video_cli
from mlanet.edge import outputs as outputs_mod
from mlanet.edge.writers.video import DEFAULT_X264_PARAMS

pytestmark = [pytest.mark.assets, pytest.mark.gl]

OBAMA = "data/video/obama_720p.mp4"
HAMILTON = "data/video/hamilton_360p_multiface.mp4"
HAMILTON_FRAMES = 275


def _count_video_frames(path: Path) -> tuple[int, tuple[int, int]]:
    import av

    with av.open(str(path)) as c:
        frames = [f for f in c.decode(video=0)]
    return len(frames), (frames[0].width, frames[0].height)


def _read_glb_json(path: Path) -> dict:
    b = path.read_bytes()
    magic, version, length = struct.unpack("<4sII", b[:12])
    assert magic == b"glTF" and version == 2 and length == len(b)
    n, kind = struct.unpack("<I4s", b[12:20])
    assert kind == b"JSON"
    return json.loads(b[20:20 + n])


def _video(args, out, model_file, *extra):
    return video_cli.main([str(args), "--out", str(out), "--untrained", "mlanet_mobile", "--face-model",
                           str(model_file), "--quiet", *extra])


def test_video_outputs(obama_clip_24, ict_model_file, tmp_path):
    out = tmp_path / "run"
    stats = tmp_path / "stats.json"
    assert _video(obama_clip_24, out, ict_model_file, "--json-stats", str(stats), "--overlays", "landmarks,wireframe",
                  "--texture") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 24
    assert run["backend"]["untrained"] is True and run["face_model"]["model_id"]
    assert run["encoder"] == {"codec": "libx264", "preset": "veryfast", "x264_params": DEFAULT_X264_PARAMS, "crf": 20,
                              "thread_type": "AUTO",
                              "pix_fmt": "yuv420p", "colorspace": "bt709"}
    assert run["backend"]["thread_plan"]["network"] >= 1
    n, size = _count_video_frames(out / "overlay.mp4")
    assert n == 24 and size == (640, 360)
    with np.load(out / "params.npz", allow_pickle=False) as z:
        fi, tid = z["frame_index"], z["track_id"]
        assert set(fi.tolist()) == set(range(24))  # a face in every frame of the single-face clip
        assert len(set(tid.tolist())) == 1
        assert z["params"].shape[1] == z["raw_params"].shape[1] and z["landmarks2d"].shape[1:] == (68, 2)
    assert not list((out / "meshes").rglob("*.obj"))  # the default: one mesh sequence per track
    from mlanet.edge.writers.mesh_sequence import load_mesh_sequence

    with load_mesh_sequence(out / "meshes" / "track_000.mlmesh.npz") as seq:
        assert seq.frames.tolist() == list(range(24)) and seq.n_vertices > 9000 and seq.uv is not None
        assert seq.max_abs_error_m < 1e-5 and seq.meta["face_model"]["model_id"] == run["face_model"]["model_id"]
        text = seq.to_obj(0, out / "frame0.obj").read_text()
    (out / "frame0.obj").unlink()
    assert text.count("\nv ") > 9000 and "\nvt " in text and "\nf " in text
    rows = list(csv.reader((out / "blendshapes.csv").open()))
    assert rows[0][:3] == ["frame", "time_s", "track_id"] and "jawOpen" in rows[0] and len(rows) == 25
    tracks = json.loads((out / "tracks.json").read_text())["tracks"]
    glb = _read_glb_json(out / tracks[0]["glb"])
    names = glb["meshes"][0]["extras"]["targetNames"]
    assert "jawOpen" in names and len(glb["meshes"][0]["primitives"][0]["targets"]) == len(names)
    assert {c["target"]["path"] for c in glb["animations"][0]["channels"]} >= {"weights", "rotation", "translation"}
    assert glb["images"] and glb["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"]  # --texture
    st = json.loads(stats.read_text())
    assert {"decode", "detect_track", "preprocess", "infer", "reconstruct", "render", "encode"} <= set(st["stages"])
    assert all(st["stages"][s]["p50_ms"] is not None for s in ("decode", "infer", "render", "encode"))
    assert not list(out.rglob(".*.tmp")) and not list(out.rglob("*.tmp"))  # no temporary files left
    # a second run into the same folder is refused without --resume
    assert _video(obama_clip_24, out, ict_model_file) == 2


def _interrupt_writes_at(monkeypatch, frame_index):
    """Make the outputs raise KeyboardInterrupt (Ctrl-C) when frame ``frame_index`` is written; returns
    the real write, to put back with ``monkeypatch.setattr(outputs_mod.VideoRunOutputs, "write", ...)``."""
    real_write = outputs_mod.VideoRunOutputs.write

    def interrupting_write(self, result):
        if result.frame.index == frame_index:
            raise KeyboardInterrupt
        real_write(self, result)

    monkeypatch.setattr(outputs_mod.VideoRunOutputs, "write", interrupting_write)
    return real_write


def test_ctrl_c_then_resume(obama_clip_24, ict_model_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_write = _interrupt_writes_at(monkeypatch, 10)
    assert _video(obama_clip_24, out, ict_model_file, "--meshes", "ply") == 130
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and run["frames_done"] == 10
    assert _count_video_frames(out / "overlay.mp4")[0] == 10
    assert len(list(csv.reader((out / "blendshapes.csv").open()))) == 11
    assert (out / "tracks").is_dir() and list((out / "tracks").glob("*.glb"))
    monkeypatch.setattr(outputs_mod.VideoRunOutputs, "write", real_write)
    assert _video(obama_clip_24, out, ict_model_file, "--meshes", "ply", "--resume") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 24 and run["resumed_at_frame"] == 10
    assert _count_video_frames(out / "overlay.mp4")[0] == 24
    rows = list(csv.reader((out / "blendshapes.csv").open()))
    assert [int(r[0]) for r in rows[1:]] == list(range(24))
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert sorted(z["frame_index"].tolist()) == list(range(24))
    assert len(list((out / "meshes").rglob("*.ply"))) == 24
    # resuming a complete run says so
    assert _video(obama_clip_24, out, ict_model_file, "--resume") == 2


def test_ctrl_c_then_resume_default_mesh_sequence(obama_clip_24, ict_model_file, tmp_path, monkeypatch):
    """The default --meshes sequence across Ctrl-C + --resume: finished files for the frames done, and
    the resumed frames in a new track's file (track ids continue after a break)."""
    from mlanet.edge.writers.mesh_sequence import load_mesh_sequence

    out = tmp_path / "run"
    real_write = _interrupt_writes_at(monkeypatch, 10)
    assert _video(obama_clip_24, out, ict_model_file, "--no-video", "--no-glb") == 130
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["track_000.mlmesh.npz"]
    with load_mesh_sequence(out / "meshes" / "track_000.mlmesh.npz") as seq:
        assert seq.frames.tolist() == list(range(10))
    monkeypatch.setattr(outputs_mod.VideoRunOutputs, "write", real_write)
    assert _video(obama_clip_24, out, ict_model_file, "--no-video", "--no-glb", "--resume") == 0
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    frames = []
    for path in sorted((out / "meshes").iterdir()):
        with load_mesh_sequence(path) as seq:
            frames += seq.frames.tolist()
    assert sorted(frames) == list(range(24)) and len(list((out / "meshes").iterdir())) == 2
    assert not list(out.rglob("*.partial"))


def test_ctrl_c_while_finishing_waits_for_the_outputs(
    obama_clip_24, ict_model_file, tmp_path, monkeypatch, capsys, python_sigint_handler
):
    """A Ctrl-C that arrives as the run ends (while the GLBs are written) does not abort the writing: the
    outputs are complete, the exit status is 130 and the message says the run had ended."""
    import os
    import signal

    from mlanet.edge.sinks.glb import GlbSink

    real_finish = GlbSink.finish

    def finish_with_ctrl_c(self, status):
        os.kill(os.getpid(), signal.SIGINT)  # delivered inside this call, as a user's keypress would be
        real_finish(self, status)

    monkeypatch.setattr(GlbSink, "finish", finish_with_ctrl_c)
    out = tmp_path / "run"
    assert _video(obama_clip_24, out, ict_model_file, "--meshes", "none") == 130
    err = capsys.readouterr().err
    assert "finishing the outputs" in err and "interrupted while finishing" in err and "Traceback" not in err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 24
    tracks = json.loads((out / "tracks.json").read_text())["tracks"]
    assert _read_glb_json(out / tracks[0]["glb"])["animations"]
    assert _count_video_frames(out / "overlay.mp4")[0] == 24 and not list(out.rglob("*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own handler is back


def test_truncated_clip_keeps_the_frames_read(obama_clip_24, ict_model_file, tmp_path, capsys):
    data = obama_clip_24.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])  # faststart: the index survives, the tail of the data does not
    out = tmp_path / "run"
    assert _video(cut, out, ict_model_file, "--meshes", "none") == 0
    err = capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "input_damaged" and 0 < run["frames_done"] < 24
    assert "cut.mp4" in err and str(run["frames_done"]) in err
    assert _count_video_frames(out / "overlay.mp4")[0] == run["frames_done"]


def test_unreadable_inputs_are_clear(shared, ict_model_file, tmp_path, capsys):
    data = (shared / HAMILTON).read_bytes()
    cut = tmp_path / "no_index.mp4"
    cut.write_bytes(data[: len(data) // 2])  # moov atom at the end: nothing can be decoded
    assert _video(cut, tmp_path / "a", ict_model_file) == 2
    assert "no_index.mp4" in capsys.readouterr().err
    assert not (tmp_path / "a" / "overlay.mp4").exists()
    txt = tmp_path / "notes.mp4"
    txt.write_text("not a video")
    assert _video(txt, tmp_path / "b", ict_model_file) == 2
    assert "notes.mp4" in capsys.readouterr().err
    assert _video(tmp_path / "missing.mp4", tmp_path / "c", ict_model_file) == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_no_weights_message(obama_clip_24, ict_model_file, tmp_path, capsys, monkeypatch):
    import mlanet.weights

    monkeypatch.setattr(mlanet.weights, "default_weights_path", lambda name: None)  # an install without weights
    assert video_cli.main([str(obama_clip_24), "--out", str(tmp_path / "r"), "--face-model", str(ict_model_file)]) == 2
    assert "--untrained" in capsys.readouterr().err


def test_live_headless_replay(obama_clip_24, ict_model_file, tmp_path):
    stats = tmp_path / "live.json"
    rec = tmp_path / "rec.mp4"
    rc = live_cli.main(["--video", str(obama_clip_24), "--replay-fps", "8", "--no-window", "--untrained", "mlanet_mobile",
                        "--face-model", str(ict_model_file), "--record", str(rec), "--json-stats", str(stats)])
    assert rc == 0
    st = json.loads(stats.read_text())
    assert st["frames"] > 0 and st["frames"] + st["dropped_frames"] <= 24
    assert st["latency_ms"]["n"] > 0
    assert _count_video_frames(rec)[0] == st["frames"]


def test_live_loop_replays_past_the_end_with_a_timeline(obama_clip_24, ict_model_file, tmp_path):
    """--loop starts the 24-frame clip over; --json-stats carries the timeline an endurance run reads."""
    stats = tmp_path / "live.json"
    rc = live_cli.main(["--video", str(obama_clip_24), "--replay-fps", "0", "--loop", "--max-frames", "40",
                        "--no-window", "--untrained", "mlanet_mobile", "--face-model", str(ict_model_file),
                        "--json-stats", str(stats), "--stats-every", "0.05"])
    assert rc == 0
    st = json.loads(stats.read_text())
    assert st["frames"] == 40  # more than the clip holds
    tl = st["timeline"]
    assert len(tl) >= 2 and tl[-1]["frames"] == 40 and tl[-1]["dropped_frames"] == st["dropped_frames"]
    assert all(b["t_s"] >= a["t_s"] and b["frames"] >= a["frames"] for a, b in zip(tl, tl[1:]))
    assert all(100 < s["rss_mib"] < 8192 for s in tl) and st["peak_rss_mib"] >= max(s["rss_mib"] for s in tl)


def test_live_loop_needs_a_video(capsys):
    assert live_cli.main(["--camera", "0", "--loop", "--no-window", "--untrained", "mlanet_mobile"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--loop needs --video" in err


def test_live_missing_camera_is_clear(ict_model_file, capsys):
    rc = live_cli.main(["--camera", "57", "--no-window", "--untrained", "mlanet_mobile", "--face-model", str(ict_model_file)])
    assert rc == 2 and "camera 57" in capsys.readouterr().err


def test_pipeline_multi_face_clip_keeps_ids(shared, ict_model_file):
    """The whole pipeline (untrained network feeding its own ROIs) on the multi-face clip with cuts."""
    from mlanet.edge.backends import TorchBackend
    from mlanet.edge.frames import VideoFileSource
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.morphable.model import MorphableModel

    face_model = MorphableModel.load(ict_model_file)
    backend = TorchBackend.untrained("mlanet_mobile", face_model)
    pipeline = FacePipeline(backend, face_model, PipelineCfg(render_mode=None))
    per_frame, cuts = [], []

    def sink(r):
        per_frame.append(sorted(f.track_id for f in r.faces))
        if r.scene_cut:
            cuts.append(r.frame.index)

    with VideoFileSource(shared / HAMILTON) as src:
        pipeline.run(src, sink)
    pipeline.close()
    assert len(per_frame) == 275
    assert cuts == [20, 82, 211]
    shots = [(0, 20), (20, 82), (82, 211), (211, 275)]
    ids = [sorted({t for ids in per_frame[a:b] for t in ids}) for a, b in shots]
    # the single-performer shot: one face in every frame, one id
    assert all(len(x) == 1 for x in per_frame[82:211]) and len(ids[2]) == 1
    # the last shot: several faces at once, few ids (no churn)
    assert sum(len(x) >= 2 for x in per_frame[211:]) >= 50 and len(ids[3]) <= 4
    # no id survives a cut into an unrelated shot, and ids are never reused
    assert not set(ids[2]) & set(ids[3])
    first_seen = {}
    for i, x in enumerate(per_frame):
        for t in x:
            first_seen.setdefault(t, i)
    assert list(first_seen) == sorted(first_seen)


def test_live_session_keys(tmp_path):
    from types import SimpleNamespace

    from mlanet.edge.filters import FilterCfg, TrackFilters
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.params import ParamLayout

    pipe = SimpleNamespace(cfg=PipelineCfg(), filters=TrackFilters(ParamLayout(identity=2, expression=2, albedo=1), FilterCfg()))
    s = live_cli.LiveSession(pipe, 25.0, tmp_path)
    s.on_key("m")
    assert s.mode == "photo"
    s.on_key("w")
    s.on_key("l")
    assert s.overlays == {"wireframe"}
    s.on_key("f")
    assert pipe.filters.cfg.enabled is False
    s.on_key("r")
    assert s.recording and s.recorder is None  # the writer opens at the first frame (its size)
    s.record(np.zeros((48, 64, 3), np.uint8))
    s.record(np.zeros((48, 64, 3), np.uint8))
    path = s.record_path
    s.on_key("r")
    assert s.recorder is None and not s.recording and _count_video_frames(path)[0] == 2
    s.on_key("q")
    assert s.quit


def test_live_window(obama_clip_24, ict_model_file, tmp_path):
    import os

    if not os.environ.get("DISPLAY"):
        pytest.skip("no DISPLAY (CI runs the suite under Xvfb)")
    stats = tmp_path / "live.json"
    rc = live_cli.main(["--video", str(obama_clip_24), "--untrained", "mlanet_mobile", "--face-model", str(ict_model_file),
                        "--max-frames", "5", "--json-stats", str(stats), "--overlays", "wireframe"])
    assert rc == 0 and json.loads(stats.read_text())["frames"] >= 1


def test_sigint_leaves_valid_outputs_and_resume_finishes(shared, ict_model_file, tmp_path):
    """A real Ctrl-C (SIGINT to the process), then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mlanet.edge.video_cli", str(shared / HAMILTON), "--out", str(out), "--untrained",
           "mlanet_mobile", "--face-model", str(ict_model_file), "--meshes", "none", "--quiet"]
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps an ignored
    # SIGINT ignored: give the child the default disposition so it behaves like a foreground command.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".overlay.mp4*")):
        time.sleep(0.05)
    # the whole clip (275 frames) takes >= 3 s at 90 fps: a Ctrl-C 0.5 s after the first frame lands mid-run on
    # a fast machine too (with 80 frames and 1.5 s, CI's run had ended and the signal hit the finishing)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "--resume" in err
    run = json.loads((out / "run.json").read_text())
    done = run["frames_done"]
    assert run["status"] == "interrupted" and 0 < done < HAMILTON_FRAMES
    assert _count_video_frames(out / "overlay.mp4")[0] == done
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert z["frame_index"].max() < done
    assert not list(out.glob(".*.tmp"))
    done_rc = subprocess.run([*cmd, "--resume"],
                             capture_output=True, text=True, timeout=300)
    assert done_rc.returncode == 0, done_rc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["frames_done"] == HAMILTON_FRAMES and _count_video_frames(out / "overlay.mp4")[0] == HAMILTON_FRAMES


def test_onnx_backend_through_the_cli(obama_clip_24, ict_model_file, tmp_path):
    from mlanet.export.onnx_export import export_onnx
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    face_model = MorphableModel.load(ict_model_file)
    onnx_path = export_onnx(create_model("mlanet_mobile", face_model=face_model).eval(), face_model, tmp_path / "m.onnx")
    out = tmp_path / "run"
    rc = video_cli.main([str(obama_clip_24), "--out", str(out), "--weights", str(onnx_path), "--face-model",
                         str(ict_model_file), "--max-frames", "4", "--no-video", "--meshes", "none", "--quiet"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["backend"]["backend"] == "onnxruntime" and run["frames_done"] == 4
    assert not (out / "overlay.mp4").exists()
