"""A corpus of bad inputs for every CLI, each generated here: the user gets exit code 2 and one
line naming the input, never a traceback, and no half-written or falsely "complete" output.

Also the regression tests of the run that fails half-way (run.json ``failed`` with the reason,
valid files for the frames done, ``--resume`` continues), the log flood of MediaPipe's native
libraries, ``mlanet models list`` sizes and ``mlanet bench --help``.

The CLIs are called in-process (``main(argv)``) where that is cheap; a subprocess is used where
the process boundary matters (a crash inside OpenCV, what native code writes to fd 2).
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mlanet import cli as mlanet_cli
from mlanet.edge import live_cli, video_cli

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers

def _clip(path: Path, n: int = 6, width: int = 64, height: int = 48) -> Path:
    """A small H.264 .mp4 of noise frames (PyAV writes the index at the end: a cut file has none)."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return path


def _photo(path: Path, width: int, height: int, value: int = 120) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)
    return path


def _writable(folder: Path) -> bool:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(tmp)
    return True


def _error_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (argparse prints "usage: ..." before its one error line)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if lines and lines[0].startswith("usage:"):
        i = 1
        while i < len(lines) and lines[i].startswith(" "):
            i += 1
        lines = lines[i:]
    return lines


def _assert_user_error(rc: int, out: str, err: str, names: tuple[str, ...]) -> None:
    assert "Traceback" not in out + err, err
    assert rc == 2, (rc, err)
    lines = _error_lines(err)
    assert len(lines) == 1, lines
    assert "error:" in lines[0], lines
    for name in names:
        assert name in lines[0], (name, lines[0])


def _assert_no_false_output(root: Path) -> None:
    """No run.json that claims "complete" and no temporary file left anywhere under ``root``."""
    for run in root.rglob("run.json"):
        assert json.loads(run.read_text())["status"] != "complete", run
    left = [p for p in root.rglob("*") if p.name.startswith(".")]  # temporary files are dot files
    assert not left, left


def _call(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code)


@pytest.fixture(scope="module")
def face_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic face model (no asset needed); the untrained network runs on it."""
    from mlanet.morphable.synthetic import make_synthetic_face_model

    return make_synthetic_face_model().save(tmp_path_factory.mktemp("fm") / "synthetic.mlface.npz")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clip(tmp_path_factory.mktemp("clip") / "noise.mp4")


@pytest.fixture()
def readonly_dir(tmp_path: Path):
    """A folder nobody may write in. Root ignores permission bits, so as root it is /sys (sysfs
    refuses new files even to root); skipped where neither works."""
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    try:
        if _writable(d):
            d = Path("/sys")
            if not d.is_dir() or _writable(d):
                pytest.skip("no read-only folder here (root without a read-only /sys)")
        yield d
    finally:
        (tmp_path / "readonly").chmod(0o755)


# ---------------------------------------------------------------------------------------------- the corpus

@dataclass
class Case:
    """One bad input: ``make(tmp, face_model, clip, readonly) -> (argv, names)``; ``absent``: paths
    (relative to tmp, or absolute) that must not exist afterwards."""

    cli: str  # "video", "live" or "mlanet"
    make: Callable[..., tuple[list[str], tuple[str, ...]]]
    absent: tuple[str, ...] = ("out",)
    needs_readonly: bool = False
    marks: list = field(default_factory=list)


def _video_args(inp: object, fm: Path, out: Path, *extra: str) -> list[str]:
    return [str(inp), "--out", str(out), "--untrained", "mlanet_mobile", "--face-model", str(fm), "--quiet",
            "--no-glb", *extra]


def _weights_args(inp: object, weights: Path, fm: Path, out: Path) -> list[str]:
    return [str(inp), "--out", str(out), "--weights", str(weights), "--face-model", str(fm), "--quiet"]


def _cut_video(t, fm, clip, ro):
    cut = t / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: nothing can be decoded
    return _video_args(cut, fm, t / "out"), ("cut.mp4",)


def _garbage_video(t, fm, clip, ro):
    (t / "garbage.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return _video_args(t / "garbage.mp4", fm, t / "out"), ("garbage.mp4",)


def _empty_video(t, fm, clip, ro):
    (t / "empty.mp4").write_bytes(b"")
    return _video_args(t / "empty.mp4", fm, t / "out"), ("empty.mp4",)


def _text_as_jpg(t, fm, clip, ro):
    (t / "photo.jpg").write_text("this is not a JPEG\n")
    return _video_args(t / "photo.jpg", fm, t / "out"), ("photo.jpg",)


def _folder_without_images(t, fm, clip, ro):
    (t / "photos").mkdir()
    (t / "photos" / "notes.txt").write_text("no images here\n")
    return _video_args(t / "photos", fm, t / "out"), ("photos",)


def _missing_input(t, fm, clip, ro):
    return _video_args(t / "nowhere.mp4", fm, t / "out"), ("nowhere.mp4",)


def _garbage_onnx(t, fm, clip, ro):
    (t / "net.onnx").write_bytes(b"\x08\x07garbage" * 100)
    return _weights_args(clip, t / "net.onnx", fm, t / "out"), ("net.onnx",)


def _garbage_engine(t, fm, clip, ro):
    (t / "net.engine").write_bytes(os.urandom(2048))
    return _weights_args(clip, t / "net.engine", fm, t / "out"), ("net.engine",)


def _garbage_safetensors(t, fm, clip, ro):
    (t / "net.safetensors").write_bytes(os.urandom(2048))
    return _weights_args(clip, t / "net.safetensors", fm, t / "out"), ("net.safetensors",)


def _pickle_as_safetensors(t, fm, clip, ro):
    import torch

    torch.save({"weight": torch.zeros(3)}, t / "net.safetensors")  # a pickle: must never be unpickled
    return _weights_args(clip, t / "net.safetensors", fm, t / "out"), ("net.safetensors",)


def _pt_pickle(t, fm, clip, ro):
    import torch

    torch.save({"weight": torch.zeros(3)}, t / "net.pt")
    return _weights_args(clip, t / "net.pt", fm, t / "out"), ("net.pt",)


def _weights_folder_without_run(t, fm, clip, ro):
    (t / "run").mkdir()
    return _weights_args(clip, t / "run", fm, t / "out"), ("run",)


def _tiny_checkpoint(t: Path, fm: Path, face_data=None) -> Path:
    import torch

    from mlanet.models.model_io import save_model
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel
    from mlanet.preprocess import PreprocessCfg

    face = MorphableModel.load(fm) if face_data is None else MorphableModel(face_data)
    torch.manual_seed(0)
    model = create_model("mlanet_mobile", face_model=face, preprocess=PreprocessCfg(input_size=64))
    return save_model(model, t / "net.safetensors", face.describe())


def _flipped_bit_weights(t, fm, clip, ro):
    path = _tiny_checkpoint(t, fm)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x10  # a bit in the last tensor's data
    path.write_bytes(bytes(raw))
    return _weights_args(clip, path, fm, t / "out"), ("net.safetensors", "tensor checksum")


def _weights_for_another_face_model(t, fm, clip, ro):
    from mlanet.morphable.data import FaceModelData

    other = FaceModelData.load(fm)
    other.albedo_basis = other.albedo_basis * 2.0  # another albedo model, same sizes and id
    other.header = {k: v for k, v in other.header.items() if k != "content_sha256"}
    path = _tiny_checkpoint(t, fm, face_data=other)
    return _weights_args(clip, path, fm, t / "out"), ("net.safetensors", "albedo_basis")


def _garbage_face_model(t, fm, clip, ro):
    (t / "face.mlface.npz").write_bytes(b"garbage" * 50)
    return _video_args(clip, t / "face.mlface.npz", t / "out"), ("face.mlface.npz",)


def _truncated_face_model(t, fm, clip, ro):
    data = fm.read_bytes()
    (t / "face.mlface.npz").write_bytes(data[: len(data) // 2])
    return _video_args(clip, t / "face.mlface.npz", t / "out"), ("face.mlface.npz",)


def _missing_face_model(t, fm, clip, ro):
    return _video_args(clip, t / "absent.mlface.npz", t / "out"), ("absent.mlface.npz",)


def _value(flag: str, value: str, cli_args=_video_args):
    def make(t, fm, clip, ro):
        return cli_args(clip, fm, t / "out", flag, value), (flag, value)

    return make


def _device(t, fm, clip, ro):
    return _video_args(clip, fm, t / "out", "--device", "tpu7"), ("tpu7",)


def _untrained_unknown(t, fm, clip, ro):
    argv = _video_args(clip, fm, t / "out")
    argv[argv.index("mlanet_mobile")] = "mlanet_nano"
    return argv, ("--untrained", "mlanet_nano")


def _out_is_file(t, fm, clip, ro):
    (t / "out").write_text("a file, not a folder\n")
    return _video_args(clip, fm, t / "out"), ("--out", str(t / "out"))


def _out_under_file(t, fm, clip, ro):
    (t / "afile").write_text("x\n")
    return _video_args(clip, fm, t / "afile" / "run"), ("--out", str(t / "afile"))


def _out_readonly(t, fm, clip, ro):
    return _video_args(clip, fm, ro / "mlanet-run"), ("--out", str(ro / "mlanet-run"))


def _json_stats_folder(t, fm, clip, ro):
    (t / "stats").mkdir()
    return _video_args(clip, fm, t / "out", "--json-stats", str(t / "stats")), ("--json-stats", str(t / "stats"))


def _resume_nothing(t, fm, clip, ro):
    (t / "out").mkdir()
    return _video_args(clip, fm, t / "out", "--resume"), ("--resume", str(t / "out"))


def _live_args(fm: Path, *extra: str) -> list[str]:
    return ["--no-window", "--untrained", "mlanet_mobile", "--face-model", str(fm), *extra]


def _live_record_folder(t, fm, clip, ro):
    (t / "rec").mkdir()
    return _live_args(fm, "--video", str(clip), "--record", str(t / "rec")), ("--record", str(t / "rec"))


def _live_value(*argv: str, names: tuple[str, ...]):
    def make(t, fm, clip, ro):
        return _live_args(fm, *[a.replace("CLIP", str(clip)) for a in argv]), names

    return make


def _eval_json_folder(t, fm, clip, ro):
    (t / "result").mkdir()
    return (["eval", "aflw2000", "--data", str(t), "--untrained", "mlanet_mobile", "--json", str(t / "result")],
            ("--json", str(t / "result")))


def _eval_json_readonly(t, fm, clip, ro):
    return (["eval", "aflw2000", "--data", str(t), "--untrained", "mlanet_mobile", "--json", str(ro / "r.json")],
            ("--json", str(ro / "r.json")))


def _eval_all_mats_broken(t, fm, clip, ro):
    _photo(t / "aflw" / "image00001.jpg", 120, 120)
    (t / "aflw" / "image00001.mat").write_bytes(b"MATLAB 5.0 MAT-file, but broken")
    return (["eval", "aflw2000", "--data", str(t / "aflw"), "--untrained", "mlanet_mobile", "--face-model", str(fm),
             "--json", str(t / "r.json")], ("image00001.mat",))


def _jitter_fov(t, fm, clip, ro):
    return ["eval", "jitter", str(clip), "--json", str(t / "j.json"), "--fov", "0"], ("--fov", "0")


def _export_out_folder(t, fm, clip, ro):
    (t / "net.onnx").mkdir()
    return ["export", "onnx", "--out", str(t / "net.onnx")], ("--out", str(t / "net.onnx"))


def _export_report_readonly(t, fm, clip, ro):
    return (["export", "onnx", "--out", str(t / "net.onnx"), "--report", str(ro / "parity.json")],
            ("--report", str(ro / "parity.json")))


def _tensorrt_out_folder(t, fm, clip, ro):
    (t / "net.engine").mkdir()
    (t / "net.onnx").write_bytes(b"")
    return (["export", "tensorrt", "--onnx", str(t / "net.onnx"), "--out", str(t / "net.engine")],
            ("--out", str(t / "net.engine")))


def _assets_out_readonly(t, fm, clip, ro):
    (t / "FaceXModel").mkdir()
    return (["assets", "build", "--ict", str(t / "FaceXModel"), "--no-mediapipe", "--out", str(ro / "models")],
            ("--out", str(ro / "models")))


def _assets_output_folder(t, fm, clip, ro):
    (t / "FaceXModel").mkdir()
    (t / "model.mlface.npz").mkdir()
    return (["assets", "build", "--ict", str(t / "FaceXModel"), "--no-mediapipe", "--output",
             str(t / "model.mlface.npz")], ("--output", str(t / "model.mlface.npz")))


def _assets_info_garbage(t, fm, clip, ro):
    (t / "face.mlface.npz").write_bytes(b"PK\x03\x04 truncated zip")
    return ["assets", "info", str(t / "face.mlface.npz")], ("face.mlface.npz",)


CASES: dict[str, Case] = {
    # video, images, folders
    "video-cut-without-index": Case("video", _cut_video),
    "video-garbage-bytes": Case("video", _garbage_video),
    "video-zero-bytes": Case("video", _empty_video),
    "image-text-named-jpg": Case("video", _text_as_jpg),
    "folder-without-images": Case("video", _folder_without_images),
    "input-missing": Case("video", _missing_input),
    # weights and artifacts
    "weights-garbage-onnx": Case("video", _garbage_onnx),
    "weights-garbage-engine": Case("video", _garbage_engine),
    "weights-garbage-safetensors": Case("video", _garbage_safetensors),
    "weights-flipped-bit": Case("video", _flipped_bit_weights),
    "weights-for-another-face-model": Case("video", _weights_for_another_face_model),
    "weights-pickle-named-safetensors": Case("video", _pickle_as_safetensors),
    "weights-pt-pickle": Case("video", _pt_pickle),
    "weights-folder-without-run": Case("video", _weights_folder_without_run),
    "untrained-unknown-model": Case("video", _untrained_unknown),
    # face models
    "face-model-garbage": Case("video", _garbage_face_model),
    "face-model-truncated": Case("video", _truncated_face_model),
    "face-model-missing": Case("video", _missing_face_model),
    # CLI values
    "fov-0": Case("video", _value("--fov", "0")),
    "fov-500": Case("video", _value("--fov", "500")),
    "fov-nan": Case("video", _value("--fov", "nan")),
    "max-frames--1": Case("video", _value("--max-frames", "-1")),
    "max-frames-0": Case("video", _value("--max-frames", "0")),
    "mesh-every-0": Case("video", _value("--mesh-every", "0")),
    "alpha-2": Case("video", _value("--alpha", "2")),
    "alpha-0": Case("video", _value("--alpha", "0")),
    "max-faces-0": Case("video", _value("--max-faces", "0")),
    "detect-every-x": Case("video", _value("--detect-every", "x")),
    "device-unknown": Case("video", _device),
    "live-camera--1": Case("live", _live_value("--camera", "-1", names=("--camera", "-1"))),
    "live-max-frames--1": Case("live", _live_value("--video", "CLIP", "--max-frames", "-1",
                                                   names=("--max-frames", "-1"))),
    "live-replay-fps--2": Case("live", _live_value("--video", "CLIP", "--replay-fps", "-2",
                                                   names=("--replay-fps", "-2"))),
    "live-duration-inf": Case("live", _live_value("--video", "CLIP", "--duration", "inf",
                                                  names=("--duration", "inf"))),
    "jitter-fov-0": Case("mlanet", _jitter_fov, absent=("j.json",)),
    # output paths
    "out-is-a-file": Case("video", _out_is_file, absent=()),
    "out-under-a-file": Case("video", _out_under_file, absent=("afile/run",)),
    "out-read-only": Case("video", _out_readonly, absent=(), needs_readonly=True),
    "json-stats-is-a-folder": Case("video", _json_stats_folder),
    "resume-without-run": Case("video", _resume_nothing, absent=("out/run.json",)),
    "live-record-is-a-folder": Case("live", _live_record_folder, absent=()),
    "eval-json-is-a-folder": Case("mlanet", _eval_json_folder, absent=("result_ced.png",)),
    "eval-json-read-only": Case("mlanet", _eval_json_readonly, absent=(), needs_readonly=True),
    "eval-every-mat-broken": Case("mlanet", _eval_all_mats_broken, absent=("r.json", "r_ced.png")),
    "export-out-is-a-folder": Case("mlanet", _export_out_folder, absent=()),
    "export-report-read-only": Case("mlanet", _export_report_readonly, absent=("net.onnx",), needs_readonly=True),
    "tensorrt-out-is-a-folder": Case("mlanet", _tensorrt_out_folder, absent=()),
    "assets-out-read-only": Case("mlanet", _assets_out_readonly, absent=(), needs_readonly=True),
    "assets-output-is-a-folder": Case("mlanet", _assets_output_folder, absent=()),
    "assets-info-garbage": Case("mlanet", _assets_info_garbage, absent=()),
}

MAINS = {"video": video_cli.main, "live": live_cli.main, "mlanet": mlanet_cli.main}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name: str, tmp_path: Path, face_model_file: Path, clip: Path, capsys, request) -> None:
    case = CASES[name]
    ro = request.getfixturevalue("readonly_dir") if case.needs_readonly else None
    work = tmp_path / "work"
    work.mkdir()
    argv, names = case.make(work, face_model_file, clip, ro)
    before = set(ro.iterdir()) if ro is not None else set()
    rc = _call(MAINS[case.cli], argv)
    out, err = capsys.readouterr()
    _assert_user_error(rc, out, err, names)
    _assert_no_false_output(work)
    for rel in case.absent:
        assert not (work / rel).exists(), rel
    if ro is not None:
        assert set(ro.iterdir()) == before  # nothing created in the read-only folder


def test_the_corpus_is_broad() -> None:
    assert len(CASES) >= 25
    assert {c.cli for c in CASES.values()} == {"video", "live", "mlanet"}


def test_camera_minus_one_never_reaches_opencv(face_model_file: Path) -> None:
    """--camera -1 crashed inside OpenCV; it must be refused by the parser, in a real process."""
    r = subprocess.run([sys.executable, "-m", "mlanet.edge.live_cli", "--camera", "-1", "--no-window",
                        "--untrained", "mlanet_mobile", "--face-model", str(face_model_file)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    _assert_user_error(r.returncode, r.stdout, r.stderr, ("--camera", "-1"))


# ---------------------------------------------------------------------------------------------- inputs that must work

def test_photos_of_different_sizes_are_fitted(tmp_path: Path, face_model_file: Path, capsys) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "a.jpg", 64, 48)
    _photo(photos / "b.jpg", 60, 80, value=200)
    out = tmp_path / "run"
    rc = video_cli.main(_video_args(photos, face_model_file, out, "--no-video"))
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 2


def test_a_broken_photo_in_a_folder_is_skipped_and_named(tmp_path: Path, face_model_file: Path, capsys,
                                                         caplog) -> None:
    photos = tmp_path / "photos"
    _photo(photos / "a.png", 64, 48)
    (photos / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc = video_cli.main(_video_args(photos, face_model_file, tmp_path / "run", "--no-video"))
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err, err
    assert "b.png" in caplog.text + err


def _aflw_folder(folder: Path, n: int = 2) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for k in range(n):
        _photo(folder / f"image{k:05d}.jpg", 160, 160, value=60 + 40 * k)
        pts = 40.0 + 80.0 * rng.random((68, 2))
        savemat(folder / f"image{k:05d}.mat", {"pt3d_68": np.vstack([pts.T, np.zeros((1, 68))]),
                                              "Pose_Para": np.array([[0.0, math.radians(20.0 * k), 0, 0, 0, 0, 1]])})


def test_eval_skips_an_unreadable_mat_and_counts_it(tmp_path: Path, face_model_file: Path, capsys) -> None:
    data = tmp_path / "aflw"
    _aflw_folder(data, n=3)
    (data / "image00001.mat").write_bytes(b"\x00not a MATLAB file")
    result = tmp_path / "r.json"
    rc = mlanet_cli.main(["eval", "aflw2000", "--data", str(data), "--untrained", "mlanet_mobile", "--face-model",
                          str(face_model_file), "--json", str(result), "--batch", "2"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in out + err, err
    r = json.loads(result.read_text())
    sel = r["data"]["selection"]
    assert r["n"] == 2 and sel["n_unreadable"] == 1 and sel["unreadable"][0]["name"] == "image00001"
    assert "image00001.mat" in sel["unreadable"][0]["reason"]
    assert any("image00001" in w for w in r["warnings"]) and "image00001" in out


# ---------------------------------------------------------------------------------------------- a run that fails

def _enospc_on_call(monkeypatch, cls, method: str, call: int) -> None:
    real = getattr(cls, method)
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, failing)


@pytest.mark.gl
def test_full_disk_fails_the_run_keeps_the_frames_and_resume_finishes(tmp_path: Path, face_model_file: Path,
                                                                      clip: Path, capsys, monkeypatch) -> None:
    from mlanet.edge.writers.video import H264VideoWriter, count_video_frames

    out = tmp_path / "run"
    argv = _video_args(clip, face_model_file, out)
    _enospc_on_call(monkeypatch, H264VideoWriter, "write", 4)  # the disk fills up while encoding frame 3
    rc = video_cli.main(argv)
    _, err = capsys.readouterr()
    _assert_user_error(rc, "", err, (str(out), "No space left on device", "--resume"))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["frames_done"] == 3 and "No space left on device" in run["reason"]
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert int(z["frames_done"]) == 3
    assert count_video_frames(out / "overlay.mp4") == 3  # the frames done are a valid video
    _assert_no_false_output(tmp_path)
    monkeypatch.undo()
    assert video_cli.main([*argv, "--resume"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 6 and run["resumed_at_frame"] == 3
    assert "reason" not in run
    assert count_video_frames(out / "overlay.mp4") == 6


def test_full_disk_at_the_end_is_not_complete(tmp_path: Path, face_model_file: Path, clip: Path, capsys,
                                              monkeypatch) -> None:
    """Finishing the files (tracks.json here) on a full disk: run.json says failed, never complete."""
    from mlanet.edge.sinks import tracks as tracks_sink

    out = tmp_path / "run"
    real = tracks_sink.write_json_atomic

    def no_space_for_tracks(path, obj, **kw):
        if Path(path).name == "tracks.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, obj, **kw)

    monkeypatch.setattr(tracks_sink, "write_json_atomic", no_space_for_tracks)
    rc = video_cli.main(_video_args(clip, face_model_file, out, "--no-video"))
    _, err = capsys.readouterr()
    _assert_user_error(rc, "", err, ("No space left on device",))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["frames_done"] == 6 and "No space left on device" in run["reason"]


def test_a_library_error_mid_run_is_recorded(tmp_path: Path, face_model_file: Path, clip: Path, capsys,
                                             monkeypatch) -> None:
    """Any MLANetError raised half-way (here from the frame sink) ends as run.json "failed" + one line."""
    from mlanet.edge import outputs as outputs_mod
    from mlanet.errors import NonFiniteOutputError

    real = outputs_mod.VideoRunOutputs.write

    def write(self, result):
        if result.frame.index == 2:
            raise NonFiniteOutputError("net.safetensors: the network produced NaN parameters")
        real(self, result)

    monkeypatch.setattr(outputs_mod.VideoRunOutputs, "write", write)
    out = tmp_path / "run"
    rc = video_cli.main(_video_args(clip, face_model_file, out, "--no-video"))
    _, err = capsys.readouterr()
    _assert_user_error(rc, "", err, ("net.safetensors", str(out)))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["frames_done"] == 2 and "NaN" in run["reason"]


@pytest.mark.assets
def test_nan_weights_fail_the_run(tmp_path: Path, face_model_file: Path, shared: Path, capsys) -> None:
    """Weights that turn every face into NaN (saved intact, checksum and all): the run stops at the
    first face with run.json "failed", never "complete"."""
    import torch

    from mlanet.models.model_io import save_model
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel

    fm = MorphableModel.load(face_model_file)
    model = create_model("mlanet_mobile", face_model=fm)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    weights = save_model(model, tmp_path / "nan.safetensors", fm)
    out = tmp_path / "run"
    image = shared / "data/aflw2000-3d-dev/image00008.jpg"  # one photo with one face
    rc = video_cli.main([str(image), "--out", str(out), "--weights", str(weights), "--face-model", str(face_model_file),
                         "--quiet", "--no-video"])
    _, err = capsys.readouterr()
    # the default CPU backend exports the checkpoint to ONNX once and says so on a line of its own
    notice, _, err = err.partition("\n") if err.startswith("exporting nan.safetensors to ONNX") else ("", "", err)
    _assert_user_error(rc, "", err, ("nan.safetensors",))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and run["frames_done"] == 0 and "nan.safetensors" in run["reason"]
    assert notice and run["backend"]["backend"] == "onnxruntime"
    # the same on PyTorch
    out2 = tmp_path / "run_torch"
    rc = video_cli.main([str(image), "--out", str(out2), "--weights", str(weights), "--face-model", str(face_model_file),
                         "--quiet", "--no-video", "--backend", "torch"])
    _assert_user_error(rc, "", capsys.readouterr()[1], ("nan.safetensors",))
    run = json.loads((out2 / "run.json").read_text())
    assert run["status"] == "failed" and run["backend"]["backend"] == "torch"


# ---------------------------------------------------------------------------------------------- newcomer papercuts

def test_native_log_lines_are_quiet_unless_verbose(tmp_path: Path, face_model_file: Path, clip: Path) -> None:
    noisy = ("TensorFlow Lite", "absl::InitializeLog", "inference_feedback_manager", "GetPrototype")

    def run(*extra: str) -> str:
        r = subprocess.run([sys.executable, "-m", "mlanet.edge.video_cli",
                            *_video_args(clip, face_model_file, tmp_path / f"run{len(extra)}", "--no-video", *extra)],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
        assert r.returncode == 0, r.stderr
        return r.stderr

    quiet = run()
    assert not [n for n in noisy if n in quiet], quiet
    assert "frames ->" in quiet  # our own lines still reach stderr
    loud = run("--verbose")
    assert "TensorFlow Lite" in loud


def test_missing_camera_hint_names_real_options() -> None:
    from mlanet.edge.frames import CameraSource
    from mlanet.edge.types import SourceError

    with pytest.raises(SourceError) as e:
        CameraSource(63)
    msg = str(e.value)
    assert "camera 63" in msg and "--source" not in msg, msg
    assert "--video" in msg, msg


def test_models_list_reports_the_shipped_input_size(capsys) -> None:
    from mlanet.checkpoint import read_meta
    from mlanet.weights import default_weights_path

    shipped = default_weights_path("mlanet_mobile")
    if shipped is None:
        pytest.skip("this install ships no mlanet_mobile weights")
    size = read_meta(shipped).preprocess.input_size
    assert mlanet_cli.main(["models", "list"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("mlanet_mobile"))
    assert f"@ {size} px (shipped weights {shipped.name})" in line, line


def test_bench_help_is_plain_text(capsys) -> None:
    with pytest.raises(SystemExit):
        mlanet_cli.main(["bench", "--help"])
    text = capsys.readouterr().out
    assert "mlanet bench" in text
    assert "``" not in text and ":mod:" not in text


def test_readme_apt_line_works_without_sudo() -> None:
    readme = (REPO / "README.md").read_text()
    apt = [ln for ln in readme.splitlines() if "apt-get install" in ln]
    assert apt and not [ln for ln in apt if ln.lstrip().startswith("sudo")]
    assert "as root, without sudo" in readme
