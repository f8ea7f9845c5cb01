"""Frame sources: video files (PyAV), cameras (OpenCV, faked), live replay, image folders, images.

Test clips are encoded with PyAV into tmp folders (tiny, ~30 frames): frame ``i`` is a flat grey
of level ``20 + 7 i`` with a white square in its top-left corner, so order and orientation can be
checked after decoding; a noisy quarter keeps the files from compressing to nothing. Nothing
here needs a camera, a GPU or the network.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mlanet.edge.frames import (
    ArraySource,
    CameraSource,
    FrameSource,
    ImageFolderSource,
    ImageSource,
    LatestFrameBuffer,
    LiveReplaySource,
    VideoFileSource,
    open_source,
    read_image,
    to_rgb_uint8,
)
from mlanet.edge.types import Frame, SourceError

av = pytest.importorskip("av")
cv2 = pytest.importorskip("cv2")

N = 30  # frames per test clip
W, H = 64, 48


def _level(i: int) -> int:
    return 20 + 7 * i


def _frame_rgb(i: int, w: int = W, h: int = H) -> np.ndarray:
    img = np.full((h, w, 3), _level(i), np.uint8)
    img[:16, :16] = 255
    # changing texture in the top-right quarter, so the clips have realistic sizes (hard to compress)
    img[: h // 2, w // 2 :] = np.random.default_rng(i).integers(0, 256, (h // 2, w - w // 2, 3), dtype=np.uint8)
    return img


def _encode(path: Path, *, codec: str = "libx264", n: int = N, rate: int = 30, options=None, rotation=None) -> Path:
    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w", options=options or {}) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = W, H, pix
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame_rgb(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _truncate(src: Path, dst: Path, fraction: float = 0.6) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {
        "h264": _encode(d / "plain.mp4"),
        "h264_faststart": _encode(d / "faststart.mp4", options={"movflags": "faststart"}),
        "mjpeg_avi": _encode(d / "mjpeg.avi", codec="mjpeg"),
        "mjpeg_mkv": _encode(d / "mjpeg.mkv", codec="mjpeg"),
    }
    out["cut_faststart"] = _truncate(out["h264_faststart"], d / "cut_faststart.mp4")
    out["cut_plain"] = _truncate(out["h264"], d / "cut_plain.mp4")
    out["cut_mkv"] = _truncate(out["mjpeg_mkv"], d / "cut_mjpeg.mkv")
    out["cut_avi"] = _truncate(out["mjpeg_avi"], d / "cut_mjpeg.avi")
    return out


def _check_frame(frame: Frame) -> None:
    assert isinstance(frame, Frame)
    assert frame.image.dtype == np.uint8 and frame.image.ndim == 3 and frame.image.shape[2] == 3
    assert frame.image.flags.c_contiguous


def _grey(frame: Frame) -> float:
    """Mean level away from the white marker (bottom-right quarter)."""
    h, w = frame.image.shape[:2]
    return float(frame.image[h // 2 :, w // 2 :].mean())


# --------------------------------------------------------------------------------------------
# import hygiene
# --------------------------------------------------------------------------------------------


def test_import_does_not_load_av_or_cv2():
    code = "import sys, mlanet.edge.frames; print(sorted(m for m in ('av', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# video files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["h264", "h264_faststart", "mjpeg_avi", "mjpeg_mkv"])
def test_video_file_decodes_all_frames(clips, kind):
    with VideoFileSource(clips[kind]) as src:
        assert src.size == (W, H) and src.fps == pytest.approx(30.0)
        assert src.n_frames == N and not src.is_live
        frames = list(src)
    assert src.stopped_early is None
    assert [f.index for f in frames] == list(range(N))
    for i, f in enumerate(frames):
        _check_frame(f)
        assert (f.width, f.height) == (W, H)
        assert f.source == str(clips[kind])
        assert abs(_grey(f) - _level(i)) < 4  # right frame, right order, RGB levels
        assert f.image[4:12, 4:12].min() > 230  # marker top-left: not flipped
        assert abs(f.t_capture_ns - i * 1e9 / 30) < 1.5e6  # presentation time (mkv: ms time base)
    assert frames[0].t_capture_ns == 0


def test_video_file_start_frame_resumes(clips):
    full = list(VideoFileSource(clips["h264"]))
    with VideoFileSource(clips["h264"], start_frame=10) as src:
        resumed = list(src)
    assert [f.index for f in resumed] == list(range(10, N))
    assert [f.t_capture_ns for f in resumed] == [f.t_capture_ns for f in full[10:]]
    assert np.array_equal(resumed[0].image, full[10].image)
    with pytest.raises(ValueError):
        VideoFileSource(clips["h264"], start_frame=-1)


def test_video_file_start_frame_past_end_is_empty(clips, caplog):
    with caplog.at_level(logging.WARNING), VideoFileSource(clips["h264"], start_frame=100) as src:
        assert list(src) == []
    assert "past the end" in caplog.text


def test_video_file_iterates_again_and_closes(clips):
    src = VideoFileSource(clips["mjpeg_avi"])
    assert len(list(src)) == N
    assert len(list(src)) == N  # reopens
    it = iter(src)
    next(it), next(it)
    src.close()
    src.close()  # idempotent
    assert src.closed
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(SourceError, match="closed"):
        iter(src)


def test_video_truncated_faststart_yields_what_decodes(clips, caplog):
    path = clips["cut_faststart"]
    with caplog.at_level(logging.WARNING), VideoFileSource(path) as src:
        frames = list(src)  # no exception
    assert 0 < len(frames) < N
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(abs(_grey(f) - _level(f.index)) < 4 for f in frames)
    msg = src.stopped_early
    assert msg is not None and str(path) in msg
    assert f"after frame {len(frames) - 1}" in msg and f"{len(frames)} frames were read" in msg
    # the one-line damage report (logged) carries the early stop and names the file
    damaged = src.damaged
    assert damaged is not None and damaged.startswith(f"{path}: the input is damaged")
    assert msg.removeprefix(f"{path}: ") in damaged and damaged in caplog.text
    assert all(i >= len(frames) for i in src.lost_frames)  # a partial last packet, if any, is lost at the cut


def test_video_truncated_without_faststart_cannot_be_opened(clips, tmp_path):
    # The index (moov atom) is at the end of a plain MP4: cut before it, it is gone ...
    path = clips["cut_plain"]
    with pytest.raises(SourceError) as err:
        VideoFileSource(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "moov" in msg
    # ... cut inside it, FFmpeg fails in various ways (no streams, a data stream, a video stream
    # without codec, decoder not found, invalid data) or, near its end, still reads everything.
    data = clips["h264"].read_bytes()
    moov = data.rindex(b"moov")
    errors = 0
    for k in range(1, 20):
        inside = tmp_path / f"cut_in_moov_{k}.mp4"
        inside.write_bytes(data[: moov + (len(data) - moov) * k // 20])
        try:
            src = VideoFileSource(inside)
        except SourceError as exc:
            assert str(inside) in str(exc) and "truncated" in str(exc), str(exc)
            errors += 1
        else:
            with src:
                assert 0 < sum(1 for _ in src) <= N
    assert errors > 0


@pytest.mark.parametrize("kind", ["cut_avi", "cut_mkv"])
def test_video_truncated_mjpeg_containers(clips, kind):
    # AVI reports a decode error; MKV just ends early (caught by comparing with its duration).
    with VideoFileSource(clips[kind]) as src:
        frames = list(src)
    assert 0 < len(frames) < N
    assert src.stopped_early is not None and str(clips[kind]) in src.stopped_early
    if kind == "cut_mkv":
        assert "may be truncated" in src.stopped_early


def test_video_bad_inputs_name_the_file(clips, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    jpeg = tmp_path / "photo_renamed.mp4"
    jpeg.write_bytes(cv2.imencode(".jpg", np.zeros((20, 30, 3), np.uint8))[1].tobytes())
    audio = tmp_path / "sound.m4a"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=16000)
        for i in range(5):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cases = {
        tmp_path / "missing.mp4": "no such file",
        text: "not a video file",
        empty: "empty",
        jpeg: "still image (JPEG)",
        audio: "no video stream (streams found: audio (aac))",
        tmp_path: "is a folder",
    }
    for path, words in cases.items():
        with pytest.raises(SourceError) as err:
            VideoFileSource(path)
        assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_video_display_rotation_matches_opencv(tmp_path):
    path = _encode(tmp_path / "portrait.mp4", n=3, rotation=90)
    with VideoFileSource(path) as src:
        assert src.size == (H, W)  # known before iteration: the first frame is decoded on open
        first = next(iter(src))
    assert (first.width, first.height) == (H, W)
    cap = cv2.VideoCapture(str(path))  # OpenCV auto-rotates by default: an independent reference
    ok, bgr = cap.read()
    cap.release()
    assert ok and bgr.shape[:2] == first.image.shape[:2]
    assert np.abs(bgr[:, :, ::-1].astype(int) - first.image.astype(int)).mean() < 3
    with VideoFileSource(path, autorotate=False) as src:
        assert next(iter(src)).image.shape[:2] == (H, W)


@pytest.mark.assets
@pytest.mark.parametrize(
    ("name", "count", "size", "fps"),
    [("obama_720p.mp4", 55, (1280, 720), 25.0), ("hamilton_360p_multiface.mp4", 275, (640, 360), 29.97)],
)
def test_shared_clips(shared, name, count, size, fps):
    path = shared / "data" / "video" / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    with VideoFileSource(path) as src:
        assert src.size == size and src.fps == pytest.approx(fps, abs=0.01)
        assert src.n_frames == count  # obama: the container says 158 frames; the hint uses the duration
        times, n = [], 0
        for f in src:
            assert f.index == n and (f.width, f.height) == size
            times.append(f.t_capture_ns)
            n += 1
    assert n == count and src.stopped_early is None
    assert times[0] == 0 and all(b > a for a, b in zip(times, times[1:]))
    assert times[-1] == pytest.approx((count - 1) / fps * 1e9, rel=0.01)


# --------------------------------------------------------------------------------------------
# damaged video files: undecodable packets are skipped, the frames around them are kept
# --------------------------------------------------------------------------------------------


def _packets(path: Path) -> list[dict]:
    """The video packets of ``path`` in file (decode) order, each with its display ``rank``
    (0-based index among the displayed packets by presentation time; None for pre-roll)."""
    with av.open(str(path)) as c:
        pk = [{"pos": p.pos, "size": p.size, "pts": p.pts, "key": p.is_keyframe, "discard": p.is_discard}
              for p in c.demux(video=0) if p.size]
    shown = sorted(p["pts"] for p in pk if not p["discard"])
    for p in pk:
        p["rank"] = None if p["discard"] else shown.index(p["pts"])
    return pk


def _damage(src: Path, dst: Path, packets: list[dict], n_bytes: int = 8) -> Path:
    """A copy of ``src`` whose ``packets`` start with ``n_bytes`` of 0xFF: the NAL length prefix of
    an MP4/H.264 sample is destroyed, so FFmpeg rejects the packet (InvalidDataError)."""
    data = bytearray(src.read_bytes())
    for p in packets:
        data[p["pos"] : p["pos"] + n_bytes] = b"\xff" * n_bytes
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture(scope="module")
def gop_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames of H.264 with a keyframe every 10 frames and B-frames (decode order != display order)."""
    path = tmp_path_factory.mktemp("gop") / "gop10.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30, options={"g": "10", "bf": "2"})
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        for i in range(N):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame_rgb(i), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _check_damaged_pass(frames: list[Frame], src: VideoFileSource, total: int) -> None:
    """Every frame is either yielded or reported lost, once, in increasing index order."""
    idx = [f.index for f in frames]
    assert all(b > a for a, b in zip(idx, idx[1:]))
    assert sorted(idx + list(src.lost_frames)) == list(range(total))
    assert src.damaged is not None and src.damaged.startswith(f"{src.name}: the input is damaged")


def test_damaged_frame_mid_clip_is_skipped_and_reported(gop_clip, tmp_path, caplog):
    pk = _packets(gop_clip)
    victim = next(p for p in pk if p["rank"] == 14 and not p["key"])
    path = _damage(gop_clip, tmp_path / "mid.mp4", [victim])
    with caplog.at_level(logging.WARNING), VideoFileSource(path) as src:
        frames = list(src)  # no exception, and decoding goes on after the bad packet
    assert src.lost_frames == (14,)
    _check_damaged_pass(frames, src, N)
    assert src.stopped_early is None
    assert "1 frame could not be decoded" in src.damaged and "(frame 14)" in src.damaged
    assert src.damaged in caplog.text
    for f in frames:  # the right picture under every index; after the loss FFmpeg conceals (one level off)
        assert abs(_grey(f) - _level(f.index)) < (4 if f.index < 14 else 10), f.index
        assert abs(f.t_capture_ns - f.index * 1e9 / 30) < 1.5e6
    # resuming inside a damaged file gives the same frames
    with VideoFileSource(path, start_frame=12) as src2:
        assert [f.index for f in src2] == [i for i in range(12, N) if i != 14]


def test_damaged_keyframe_with_b_frames_keeps_indices(gop_clip, tmp_path):
    pk = _packets(gop_clip)
    key = [p for p in pk if p["key"]][1]  # the second GOP's keyframe
    with VideoFileSource(_damage(gop_clip, tmp_path / "key.mp4", [key])) as src:
        frames = list(src)
    _check_damaged_pass(frames, src, N)
    lost = list(src.lost_frames)
    # FFmpeg shows nothing from the damaged keyframe until the frames it can conceal again
    assert lost[0] == key["rank"] and lost == list(range(lost[0], lost[-1] + 1))
    # the B-frames shown before the keyframe come out of the decoder late: still in order, right index
    assert [f.index for f in frames if f.index < key["rank"]] == list(range(key["rank"]))
    assert all(abs(_grey(f) - _level(f.index)) < 4 for f in frames if f.index < key["rank"])


def test_damaged_first_keyframe_is_not_rejected(gop_clip, tmp_path):
    pk = _packets(gop_clip)
    second_key = [p for p in pk if p["key"]][1]
    path = _damage(gop_clip, tmp_path / "first.mp4", [pk[0]])
    with VideoFileSource(path) as src:  # the constructor decodes up to the first frame that decodes
        assert src.size == (W, H)
        frames = list(src)
    assert frames[0].index == second_key["rank"]  # the first GOP is lost, the rest decodes
    assert src.lost_frames == tuple(range(second_key["rank"]))
    _check_damaged_pass(frames, src, N)
    assert f"frames 0-{second_key['rank'] - 1}" in src.damaged
    assert all(abs(_grey(f) - _level(f.index)) < 4 for f in frames)


def test_video_that_decodes_nowhere_is_an_error(gop_clip, tmp_path):
    path = _damage(gop_clip, tmp_path / "all.mp4", _packets(gop_clip))
    with pytest.raises(SourceError) as err:
        VideoFileSource(path)
    msg = str(err.value)
    assert str(path) in msg and "not a single frame could be decoded" in msg and "InvalidDataError" in msg
    assert "\n" not in msg


def test_format_frame_ranges():
    from mlanet.edge.frames import format_frame_ranges

    assert format_frame_ranges([7, 0, 1, 2, 3, 9, 10]) == "0-3, 7, 9-10"
    assert format_frame_ranges([]) == ""
    assert format_frame_ranges(range(0, 100, 2), limit=3) == "0, 2, 4, ... (+47 more)"


@pytest.mark.assets
def test_damaged_shared_clip(shared, tmp_path):
    """The 720p clip (H.264 with a 103-frame edit-list pre-roll before its 55 shown frames)."""
    clip = shared / "data" / "video" / "obama_720p.mp4"
    if not clip.is_file():
        pytest.skip(f"{clip} not present")
    with VideoFileSource(clip) as src:
        ref = {f.index: f.image for f in src}
    assert len(ref) == 55 and src.damaged is None and src.lost_frames == ()
    pk = _packets(clip)
    assert pk[0]["key"] and pk[0]["discard"]  # the first GOP starts in the pre-roll

    # 1. one frame mid-clip: only it is lost; the frames decoded before it are bit-identical
    victim = next(p for p in pk if p["rank"] == 31)
    before = {p["rank"] for p in pk[: pk.index(victim)] if p["rank"] is not None}
    with VideoFileSource(_damage(clip, tmp_path / "mid.mp4", [victim])) as src:
        frames = list(src)
    assert src.lost_frames == (31,) and src.stopped_early is None
    _check_damaged_pass(frames, src, 55)
    assert all(np.array_equal(f.image, ref[f.index]) for f in frames if f.index in before)
    assert len(before) >= 28
    assert all(np.abs(f.image.astype(int) - ref[f.index]).mean() < 8 for f in frames)  # concealed after it

    # 2. the first keyframe (in the pre-roll): opened, frames up to the next keyframe lost, the rest kept
    with VideoFileSource(_damage(clip, tmp_path / "key0.mp4", [pk[0]])) as src:
        frames = list(src)
    next_key = next(p for p in pk[1:] if p["key"])
    assert frames[0].index == next_key["rank"] and src.lost_frames == tuple(range(next_key["rank"]))
    _check_damaged_pass(frames, src, 55)
    assert all(np.array_equal(f.image, ref[f.index]) for f in frames)

    # 3. a pre-roll P-frame: FFmpeg decodes every shown frame; the damage is still reported
    with VideoFileSource(_damage(clip, tmp_path / "pre.mp4", [pk[1]])) as src:
        frames = list(src)
    assert len(frames) == 55 and src.lost_frames == ()
    assert "decoding error" in src.damaged and "no frame was lost" in src.damaged

    # 4. a few hundred garbage bytes in the middle of the file: whatever FFmpeg decodes is kept
    data = bytearray(clip.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 400] = np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes()
    (tmp_path / "garbage.mp4").write_bytes(bytes(data))
    with VideoFileSource(tmp_path / "garbage.mp4") as src:
        frames = list(src)
    idx = [f.index for f in frames]
    assert all(b > a for a, b in zip(idx, idx[1:])) and sorted(idx + list(src.lost_frames)) == list(range(55))
    assert len(frames) >= 50


# --------------------------------------------------------------------------------------------
# still images
# --------------------------------------------------------------------------------------------


def _write_png(path: Path, array: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_to_rgb_uint8_conversions():
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[..., 0] = 255
    assert to_rgb_uint8(bgr)[0, 0].tolist() == [0, 0, 255]
    assert to_rgb_uint8(bgr, bgr=False)[0, 0].tolist() == [255, 0, 0]
    assert to_rgb_uint8(np.full((2, 2), 65535, np.uint16))[0, 0].tolist() == [255, 255, 255]
    assert to_rgb_uint8(np.full((2, 2, 4), 9, np.uint8)).shape == (2, 2, 3)
    assert to_rgb_uint8(np.full((2, 2, 1), 0.5, np.float32))[0, 0].tolist() == [128, 128, 128]
    with pytest.raises(SourceError, match="layout"):
        to_rgb_uint8(np.zeros((2, 2, 2), np.uint8))


def test_read_image_formats(tmp_path):
    grey16 = _write_png(tmp_path / "grey16.png", np.full((5, 7), 257 * 100, np.uint16))
    img = read_image(grey16)
    assert img.shape == (5, 7, 3) and img.dtype == np.uint8 and (img == 100).all()
    bgra = np.zeros((4, 6, 4), np.uint8)
    bgra[..., 2], bgra[..., 3] = 200, 10  # red, nearly transparent
    img = read_image(_write_png(tmp_path / "rgba.png", bgra))
    assert img.shape == (4, 6, 3) and img[0, 0].tolist() == [200, 0, 0]
    # unicode path
    uni = _write_png(tmp_path / "фото_é.png", np.full((3, 3, 3), 50, np.uint8))
    assert read_image(uni).shape == (3, 3, 3)
    # EXIF orientation 6 (rotate 90 clockwise to display): 40x20 stored -> 20x40 shown
    from PIL import Image

    im = Image.fromarray(np.zeros((20, 40, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert read_image(tmp_path / "phone.jpg").shape == (40, 20, 3)


def test_image_source(tmp_path):
    path = _write_png(tmp_path / "face.png", np.full((10, 12, 3), 7, np.uint8))
    with ImageSource(path) as src:
        assert src.size == (12, 10) and src.n_frames == 1 and src.fps is None
        frames = list(src)
        assert len(list(src)) == 1  # iterable again
    assert len(frames) == 1 and frames[0].index == 0 and frames[0].t_capture_ns == 0
    _check_frame(frames[0])


def test_image_source_bad_inputs(tmp_path):
    fake = tmp_path / "not_really.jpg"
    fake.write_text("hello")
    with pytest.raises(SourceError, match="not_really.jpg: is not a readable image"):
        ImageSource(fake)
    with pytest.raises(SourceError, match="missing.png: no such file"):
        ImageSource(tmp_path / "missing.png")


def test_image_too_large_is_refused_before_decoding(tmp_path, monkeypatch):
    path = _write_png(tmp_path / "big.png", np.zeros((30, 40, 3), np.uint8))

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the header already says it is too large")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(SourceError) as err:
        ImageSource(path, max_pixels=1000)
    assert "big.png" in str(err.value) and "40x30" in str(err.value) and "megapixels" in str(err.value)


@pytest.fixture()
def photo_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in [(0, "img1.png"), (1, "img2.PNG"), (2, "img10.png"), (3, "IMG11.JpG")]:
        ok, buf = cv2.imencode(Path(name).suffix.lower(), np.full((8 + i, 10, 3), 10 * i, np.uint8))
        (folder / name).write_bytes(buf.tobytes())
    (folder / "img3.jpg").write_text("damaged")  # sorts between img2 and img10
    (folder / "notes.txt").write_text("ignored")
    (folder / ".hidden.png").write_text("ignored")
    return folder


def test_image_folder_skips_bad_files(photo_folder, caplog):
    with caplog.at_level(logging.WARNING), ImageFolderSource(photo_folder) as src:
        assert src.n_frames == 5 and src.fps is None
        frames = list(src)
    names = [Path(f.source).name for f in frames]
    assert names == ["img1.png", "img2.PNG", "img10.png", "IMG11.JpG"]  # natural, case-insensitive order
    assert [f.index for f in frames] == [0, 1, 3, 4]  # the skipped file leaves a gap
    assert [f.t_capture_ns for f in frames] == [i * 1_000_000_000 for i in (0, 1, 3, 4)]  # nominal 1 fps
    assert [f.height for f in frames] == [8, 9, 10, 11] and src.size == (10, 11)
    assert src.skipped == 1 and src.skipped_files == [photo_folder / "img3.jpg"]
    assert "img3.jpg" in caplog.text
    for f in frames:
        _check_frame(f)


def test_image_folder_fps_and_start_frame(photo_folder):
    with ImageFolderSource(photo_folder, fps=10.0, start_frame=3) as src:
        frames = list(src)
    assert [f.index for f in frames] == [3, 4]
    assert [f.t_capture_ns for f in frames] == [300_000_000, 400_000_000]


def test_image_folder_errors(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        ImageFolderSource(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="empty: no images found"):
        ImageFolderSource(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("x")
    (bad / "b.png").write_text("y")
    with pytest.raises(SourceError, match="none of its 2 images could be read"):
        list(ImageFolderSource(bad))


# --------------------------------------------------------------------------------------------
# latest-frame buffer and live replay
# --------------------------------------------------------------------------------------------


def _tiny(i: int) -> Frame:
    return Frame(np.zeros((2, 2, 3), np.uint8), i, i, "t")


def test_latest_frame_buffer():
    buf = LatestFrameBuffer()
    t0 = time.monotonic()
    assert buf.get(timeout=0.05) is None and time.monotonic() - t0 < 1.0
    for i in range(3):
        assert buf.put(_tiny(i))
    assert buf.get(0).index == 2 and buf.dropped == 2 and buf.put_count == 3
    buf.put(_tiny(3))
    buf.close()
    assert not buf.put(_tiny(4))
    assert not buf.exhausted
    assert buf.get(0).index == 3  # a pending frame survives close()
    assert buf.exhausted and buf.get(None) is None  # closed: no waiting

    waiter = LatestFrameBuffer()
    got = []
    t = threading.Thread(target=lambda: got.append(waiter.get(timeout=10)))
    t.start()
    time.sleep(0.05)
    waiter.close(discard=True)
    t.join(2)
    assert not t.is_alive() and got == [None]


def _frames(n: int, size: int = 8) -> list[np.ndarray]:
    return [np.full((size, size, 3), i % 256, np.uint8) for i in range(n)]


def test_live_replay_drops_stale_frames_deterministically():
    src = LiveReplaySource(ArraySource(_frames(100)))  # no fps anywhere: as fast as possible
    assert src.is_live and src.fps is None
    it = iter(src)
    got = [next(it)]
    src._thread.join(5)  # the producer finishes while the consumer "works"
    assert not src._thread.is_alive()
    got += list(it)
    src.close()
    idx = [f.index for f in got]
    assert idx[-1] == 99 and all(b > a for a, b in zip(idx, idx[1:]))
    assert len(got) + src.dropped == 100 == src.produced
    assert src.dropped >= 98


def test_live_replay_slow_consumer_sees_newest_frames():
    with LiveReplaySource(ArraySource(_frames(100)), fps=2000.0) as src:
        got = []
        for f in src:
            got.append(f)
            time.sleep(0.02)  # a slow model
        assert src.stopped_early is None
    idx = [f.index for f in got]
    assert all(b > a for a, b in zip(idx, idx[1:])), idx
    assert all(b.t_capture_ns >= a.t_capture_ns for a, b in zip(got, got[1:]))
    assert src.dropped > 0 and len(got) + src.dropped == 100
    assert all(int(f.image[0, 0, 0]) == f.index for f in got)  # the image belongs to its index
    assert not src._thread.is_alive()


def test_live_replay_paces_real_time():
    inner = ArraySource(_frames(10), fps=50.0)
    t0 = time.monotonic()
    with LiveReplaySource(inner) as src:
        assert src.fps == 50.0
        got = list(src)  # a fast consumer keeps up: nothing dropped
    elapsed = time.monotonic() - t0
    assert [f.index for f in got] == list(range(10)) and src.dropped == 0
    assert elapsed >= 0.15  # 9 periods of 20 ms
    span_ms = (got[-1].t_capture_ns - got[0].t_capture_ns) / 1e6
    assert 150 <= span_ms < 2000


def test_live_replay_close_from_another_thread_unblocks_consumer():
    inner = ArraySource(_frames(3))
    src = LiveReplaySource(inner, fps=5.0, loop=True)  # endless, slow
    got: list[Frame] = []
    consumer = threading.Thread(target=lambda: got.extend(src))
    consumer.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    src.close()
    consumer.join(3)
    assert not consumer.is_alive() and time.monotonic() - t0 < 2.0
    assert not src._thread.is_alive() and inner.closed
    assert len(got) >= 1


def test_live_replay_loop_and_close_mid_iteration():
    inner = ArraySource(_frames(4))
    src = LiveReplaySource(inner, fps=1000.0, loop=True)
    assert src.n_frames is None
    got = []
    for f in src:
        got.append(f)
        if len(got) == 12:
            break
    src.close()
    assert not src._thread.is_alive() and inner.closed
    idx = [f.index for f in got]
    assert all(b > a for a, b in zip(idx, idx[1:])) and idx[-1] >= 11  # indices keep growing across laps
    with pytest.raises(SourceError, match="closed"):
        iter(src)


def test_live_replay_of_a_video_file_and_rules(clips):
    src = LiveReplaySource(VideoFileSource(clips["cut_faststart"]), fps=0)  # 0: as fast as possible
    with src:
        n = sum(1 for _ in src)
        with pytest.raises(SourceError, match="only once"):
            iter(src)
    assert 0 < n < N and "may be truncated" in src.stopped_early
    assert src.damaged == src.inner.damaged and "the input is damaged" in src.damaged
    assert src.lost_frames == src.inner.lost_frames
    with pytest.raises(ValueError, match="already a live source"):
        LiveReplaySource(src)


class _Failing(FrameSource):
    name = "failing"

    def _frames(self):
        for i in range(3):
            yield Frame(np.zeros((2, 2, 3), np.uint8), i, i, self.name)
        raise SourceError("failing: the disk went away")


def test_live_producer_error_reaches_the_consumer():
    src = LiveReplaySource(_Failing(), fps=1000.0)
    got = []
    with pytest.raises(SourceError, match="the disk went away"):
        for f in src:
            got.append(f.index)
    src.close()
    assert got and got[-1] == 2


# --------------------------------------------------------------------------------------------
# cameras (OpenCV faked: CI has none)
# --------------------------------------------------------------------------------------------


class _FakeCapture:
    """Stands in for cv2.VideoCapture: BGR frames (blue = 255, green = frame number), ~1 kHz."""

    instances: list[_FakeCapture] = []

    def __init__(self, index, *args, opened=True, fail_after=None):
        self.index, self.opened, self.fail_after = index, opened, fail_after
        self.count, self.released, self.props = 0, False, {}
        _FakeCapture.instances.append(self)

    def isOpened(self):
        return self.opened

    def set(self, prop, value):
        self.props[prop] = value
        return True

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def grab(self):
        time.sleep(0.001)
        return self.fail_after is None or self.count < self.fail_after

    def retrieve(self):
        img = np.zeros((6, 8, 3), np.uint8)
        img[..., 0] = 255
        img[..., 1] = self.count % 256
        self.count += 1
        return True, img

    def read(self):
        return (self.grab() and self.retrieve()) or (False, None)

    def release(self):
        self.released = True


@pytest.fixture()
def fake_camera(monkeypatch):
    _FakeCapture.instances = []
    monkeypatch.setattr(cv2, "VideoCapture", _FakeCapture)
    return _FakeCapture


def test_camera_latest_frame_policy(fake_camera):
    with CameraSource(0, width=640, height=480, fps=30) as cam:
        assert cam.is_live and cam.name == "camera:0" and cam.size == (8, 6) and cam.fps == 30.0
        assert cam.n_frames is None
        cap = fake_camera.instances[0]
        assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 640 and cap.props[cv2.CAP_PROP_BUFFERSIZE] == 1
        got = []
        t_before = time.monotonic_ns()
        for f in cam:
            got.append(f)
            time.sleep(0.02)  # slow consumer
            if len(got) == 6:
                break
        assert cam.dropped > 0
    assert cap.released and not cam._thread.is_alive()
    idx = [f.index for f in got]
    assert all(b > a for a, b in zip(idx, idx[1:])) and idx[-1] - idx[0] > len(got) - 1  # gaps
    assert all(f.t_capture_ns >= t_before for f in got)
    assert all(b.t_capture_ns > a.t_capture_ns for a, b in zip(got, got[1:]))
    img = got[0].image
    _check_frame(got[0])
    assert img[0, 0, 2] == 255 and img[0, 0, 0] == 0  # BGR -> RGB: blue ends up last


def test_camera_stopped_delivering(fake_camera, monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda i, *a: _FakeCapture(i, fail_after=5))
    with CameraSource(1, read_timeout_s=0.1) as cam:
        frames = list(cam)  # ends by itself
    assert 1 <= len(frames) <= 4  # the constructor's probe read took frame 0 of the fake
    assert cam.stopped_early is not None and "camera:1" in cam.stopped_early


def test_camera_missing(fake_camera, monkeypatch):
    monkeypatch.setattr(cv2, "VideoCapture", lambda i, *a: _FakeCapture(i, opened=False))
    with pytest.raises(SourceError) as err:
        CameraSource(0)
    msg = str(err.value)
    assert msg.startswith("camera 0: cannot be opened") and "video file" in msg
    assert _FakeCapture.instances[-1].released
    monkeypatch.setattr(cv2, "VideoCapture", lambda i, *a: _FakeCapture(i, fail_after=0))
    with pytest.raises(SourceError, match="camera 2: opened but delivered no frame"):
        CameraSource(2)


def test_camera_missing_real_opencv():
    with pytest.raises(SourceError, match="camera 97: cannot be opened"):
        CameraSource(97, api_preference=cv2.CAP_V4L2 if sys.platform.startswith("linux") else None)


# --------------------------------------------------------------------------------------------
# open_source
# --------------------------------------------------------------------------------------------


def test_open_source_dispatch(clips, photo_folder, tmp_path, fake_camera):
    image = _write_png(tmp_path / "one.PNG", np.zeros((4, 4, 3), np.uint8))
    cases = [
        (0, CameraSource),
        ("1", CameraSource),
        ("camera:2", CameraSource),
        (str(photo_folder), ImageFolderSource),
        (image, ImageSource),
        (clips["mjpeg_avi"], VideoFileSource),
    ]
    for spec, cls in cases:
        with open_source(spec) as src:
            assert type(src) is cls, spec
    assert [c.index for c in fake_camera.instances] == [0, 1, 2]
    with open_source(clips["h264"], live=True, start_frame=28) as src:
        assert isinstance(src, LiveReplaySource) and isinstance(src.inner, VideoFileSource)
        assert [f.index for f in src] == [28, 29]  # fps 30: about 70 ms
    with pytest.raises(SourceError, match="nothing_here.mp4: no such file or folder"):
        open_source(tmp_path / "nothing_here.mp4")
    with pytest.raises(ValueError, match="cameras"):
        open_source(0, start_frame=5)


def test_video_frames_carry_their_bt709_planes_only(clips, tmp_path):
    """A BT.709 limited-range clip's frames carry their I420 planes (the RGB is their conversion); an
    untagged one (decoded with FFmpeg's BT.601 default) does not, so no writer reuses planes that
    would not match the RGB."""
    import av

    from mlanet.edge.frames import VideoFileSource
    from mlanet.edge.writers.video import H264VideoWriter, rgb_to_i420

    tagged = tmp_path / "bt709.mp4"
    with H264VideoWriter(tagged, 30, W, H) as video:
        for i in range(3):
            video.write(_frame_rgb(i))
    with VideoFileSource(tagged) as src:
        frames = list(src)
    assert len(frames) == 3
    for f in frames:
        assert f.yuv420 is not None and f.yuv420.shape == (H * 3 // 2, W) and f.yuv420.dtype == np.uint8
        # the RGB goes back to (nearly) the same planes: YUV -> 8-bit RGB -> YUV rounds twice (about one level
        # on average, depending on the content the encoder produced), clearly closer than BT.601's conversion
        again = rgb_to_i420(f.image).astype(int)
        as_601 = av.VideoFrame.from_ndarray(np.ascontiguousarray(f.image), format="rgb24").reformat(
            format="yuv420p", dst_colorspace="itu601").to_ndarray().astype(int)
        err_709, err_601 = (np.abs(x[:H] - f.yuv420[:H]).mean() for x in (again, as_601))
        assert err_709 < 1.25 and err_709 < err_601 - 0.2, (err_709, err_601)
    with VideoFileSource(clips["h264"]) as src:  # encoded without colour tags
        assert all(f.yuv420 is None for f in src)
