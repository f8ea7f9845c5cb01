"""Training-source readers (issue 14.1): one sample schema, the AFLW2000-3D guard, check images.

Synthetic copies of each format are written in ``tmp_path``; the ``assets`` tests read the
real folders under ``<shared>/data`` (annotations and file lists; only a few images decoded).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlanet.data.sources import (
    AFLW21,
    DEFINITIONS,
    IBUG68,
    MTFL5,
    READERS,
    AFLWCrops,
    ExclusionGuard,
    FaceSample,
    LandmarkSet,
    MTFL,
    UnknownSourceError,
    VideoFolder,
    W300,
    check_training_list,
    find_aflw2000_entries,
    list_sources,
    open_source,
)
from mlanet.data.sources.aflw_crops import to_crop
from mlanet.data.sources.draw import draw_samples
from mlanet.data.sources.exclusion import aflw_number, refuse_aflw2000_folder
from mlanet.errors import AssetError

NO_DEV = ExclusionGuard(dev_folder=None)  # the number rule only: synthetic tests never see the real dev folder


# ----------------------------------------------------------------------------- synthetic formats
def _jpg(path: Path, size: tuple[int, int] = (120, 120), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)
    return path


def make_aflw_crops(root: Path, names: list[str], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    """An aflw-crops folder: annotations.npz + images/, points in the 450 frame, some x = -1."""
    rng = np.random.default_rng(0) if rng is None else rng
    n = len(names)
    x0 = rng.integers(20, 100, n).astype(np.float32)
    y0 = rng.integers(20, 100, n).astype(np.float32)
    side = rng.integers(200, 300, n).astype(np.float32)
    box = np.stack([x0, y0, x0 + side, y0 + side], axis=1)
    pts = (box[:, None, :2] + rng.uniform(10, 190, (n, 21, 2))).astype(np.float32)
    pts[:, 5, 0] = -1.0  # not annotated; y keeps junk, as in the real file
    pts[:, 12, :] = (-1.0, 452.0)
    yaw = rng.uniform(-90, 90, n).astype(np.float32)
    ann = {"names": np.array(names), "pts21": pts, "roi_box": box, "yaw_deg": yaw}
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "annotations.npz", **ann)
    for nm in names:
        _jpg(root / "images" / nm)
    return ann


def write_pts(path: Path, pts: np.ndarray) -> Path:
    lines = ["version: 1", f"n_points: {len(pts)}", "{"] + [f"{x:.3f} {y:.3f}" for x, y in pts] + ["}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_w300(root: Path, stems: list[str], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1) if rng is None else rng
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for s in stems:
        pts = np.round(rng.uniform(1, 200, (68, 2)), 3)
        write_pts(root / f"{s}.pts", pts)
        _jpg(root / f"{s}.jpg", (200, 200))
        out[s] = pts
    return out


def make_mtfl(root: Path, rels: list[str], rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2) if rng is None else rng
    root.mkdir(parents=True, exist_ok=True)
    lines = ["# path x_eyeL x_eyeR x_nose x_mouthL x_mouthR y_eyeL y_eyeR y_nose y_mouthL y_mouthR"]
    out = {}
    for rel in rels:
        pts = np.round(rng.uniform(-5, 85, (5, 2)), 3)
        out[rel] = pts
        lines.append(rel.replace("/", "\\") + " " + " ".join(f"{v:.3f}" for v in [*pts[:, 0], *pts[:, 1]]))
        _jpg(root / rel, (80, 80))
    (root / "landmarks5.txt").write_text("\n".join(lines) + "\n")
    return out


def make_video(path: Path, n_frames: int = 12, size: int = 32) -> Path:
    """An H.264 (or MPEG-4) clip whose frame i is uniformly grey at 20 * i."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    for codec in ("libx264", "mpeg4"):
        try:
            with av.open(str(path), "w") as c:
                s = c.add_stream(codec, rate=10)
                s.width = s.height = size
                s.pix_fmt = "yuv420p"
                if codec == "libx264":
                    s.options = {"g": "4", "bf": "2"}  # several keyframes and B-frames: seeking matters
                for i in range(n_frames):
                    f = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * i, np.uint8), format="rgb24")
                    for p in s.encode(f):
                        c.mux(p)
                for p in s.encode():
                    c.mux(p)
            return path
        except Exception:  # noqa: BLE001 - encoder missing in this FFmpeg build: try the next
            continue
    pytest.skip("no H.264 or MPEG-4 encoder in this PyAV build")


def make_aflw2000_layout(root: Path) -> Path:
    _jpg(root / "image00008.jpg", (450, 450))
    (root / "image00008.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    return root


# ----------------------------------------------------------------------------- schema
def test_definitions_are_consistent() -> None:
    assert set(DEFINITIONS) == {"ibug68", "aflw21", "mtfl5"}
    assert (IBUG68.n_points, AFLW21.n_points, MTFL5.n_points) == (68, 21, 5)
    for d in DEFINITIONS.values():
        p = np.asarray(d.flip_permutation)
        assert np.array_equal(p[p], np.arange(d.n_points))
        for i, j in enumerate(p):
            assert {d.frontal_side[i], d.frontal_side[j]} in ({"C"}, {"L", "R"})
    # iBUG: subject's right eye (36..41) on the image's left; AFLW/MTFL: "left" is the image's left
    assert IBUG68.frontal_side[36] == "L" and IBUG68.frontal_side[45] == "R" and IBUG68.frontal_side[8] == "C"
    assert AFLW21.point_names[6] == "left_eye_left" and AFLW21.frontal_side[6] == "L"
    assert AFLW21.flip_permutation[12] == 16 and AFLW21.frontal_side[14] == "C"
    assert MTFL5.frontal_side == ("L", "R", "C", "L", "R")


def test_landmark_set_validates_and_is_read_only() -> None:
    pts = np.arange(10, dtype=np.float64).reshape(5, 2)
    vis = np.array([True, False, True, True, True])
    ls = LandmarkSet("mtfl5", pts, vis)
    assert ls.points.dtype == np.float32 and ls.visible.dtype == bool and ls.n_visible == 4
    assert np.isnan(ls.points[1]).all() and ls.points[2].tolist() == [4.0, 5.0]
    with pytest.raises(ValueError):
        ls.points[0, 0] = 1.0
    with pytest.raises(ValueError, match="unknown landmark definition"):
        LandmarkSet("dlib5", pts, vis)
    with pytest.raises(ValueError, match="points must be"):
        LandmarkSet("aflw21", pts, vis)
    bad = pts.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        LandmarkSet("mtfl5", bad, np.ones(5, bool))
    assert LandmarkSet("mtfl5", pts, vis) == ls


def test_face_sample_checks_keys_and_loads_lazily(tmp_path: Path) -> None:
    ls = LandmarkSet("mtfl5", np.zeros((5, 2)), np.ones(5, bool))
    with pytest.raises(ValueError, match="must be a LandmarkSet of definition"):
        FaceSample("k", "s", "t", tmp_path / "x.jpg", {"ibug68": ls})
    calls = []
    s = FaceSample("k", "s", "t", tmp_path / "x.jpg", {"mtfl5": ls},
                   loader=lambda: calls.append(1) or np.zeros((2, 2, 3), np.uint8))
    assert not calls and s.image.shape == (2, 2, 3) and calls == [1]
    missing = FaceSample("k", "s", "t", tmp_path / "missing.jpg")
    with pytest.raises(AssetError, match="missing.jpg"):
        missing.image
    with pytest.raises(TypeError):
        s.landmark_sets["x"] = ls  # read-only mapping


def test_registry() -> None:
    assert list_sources() == ["aflw-crops", "300w", "mtfl", "video-folder"]
    with pytest.raises(UnknownSourceError, match="did you mean '300w'"):
        open_source("300W", "/nowhere")


# ----------------------------------------------------------------------------- AFLW crops
def test_aflw_crops_reads_maps_and_drops_aflw2000(tmp_path: Path) -> None:
    root = tmp_path / "aflw-crops"
    names = ["image04375.jpg", "image04376.jpg", "image05000.jpg"]
    ann = make_aflw_crops(root, names)
    r = AFLWCrops(root, guard=NO_DEV)
    assert [s.key for s in r] == ["aflw-crops:images/image04376.jpg", "aflw-crops:images/image05000.jpg"]
    assert r.excluded == ["image04375.jpg"] and r.skipped == []
    for row, s in zip((1, 2), r):
        box = ann["roi_box"][row].astype(np.float64)
        p = ann["pts21"][row].astype(np.float64)
        expect = ((p - 0.5 - box[:2]) * 120.0 / (box[2] - box[0])).astype(np.float32)
        ls = s.landmark_sets["aflw21"]
        vis = p[:, 0] != -1
        assert np.array_equal(ls.visible, vis) and not ls.visible[5] and not ls.visible[12] and ls.n_visible == 19
        assert np.array_equal(ls.points[vis], expect[vis])  # exact round trip
        assert np.isnan(ls.points[~vis]).all()
        assert s.yaw_deg == float(ann["yaw_deg"][row]) and s.source == "aflw-crops" and "research use only" in s.terms
        assert s.meta["roi_box"] == ann["roi_box"][row].tolist()
    img = r[0].image
    assert img.shape == (120, 120, 3) and img.dtype == np.uint8


def test_aflw_to_crop_known_values() -> None:
    # A 1-based coordinate c is the continuous position c - 0.5: the box edge x0 sits at 1-based
    # x0 + 0.5 and maps to crop 0; the far edge to 120; y uses the x scale.
    box = np.array([[100.0, 40.0, 400.0, 330.0]])
    pts = np.array([[[100.5, 40.5], [400.5, 340.5], [250.5, 190.5]]])
    assert np.allclose(to_crop(pts, box), [[[0, 0], [120, 120], [60, 60]]])


def test_aflw_crops_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "aflw-crops"
    (root / "images").mkdir(parents=True)
    with pytest.raises(AssetError, match="annotations.npz: annotation file not found"):
        AFLWCrops(root, guard=NO_DEV)
    (root / "annotations.npz").write_bytes(b"not a zip")
    with pytest.raises(AssetError, match="annotations.npz: not a readable npz"):
        AFLWCrops(root, guard=NO_DEV)
    np.savez(root / "annotations.npz", names=np.array(["image05000.jpg"]), pts21=np.zeros((1, 21, 2)))
    with pytest.raises(AssetError, match=r"annotations.npz: missing field\(s\) \['roi_box', 'yaw_deg'\]"):
        AFLWCrops(root, guard=NO_DEV)
    np.savez(root / "annotations.npz", names=np.array(["image05000.jpg"]), pts21=np.zeros((1, 20, 2)),
             roi_box=np.array([[0, 0, 10, 10]]), yaw_deg=np.zeros(1))
    with pytest.raises(AssetError, match="annotations.npz: 'pts21' must be numeric of shape"):
        AFLWCrops(root, guard=NO_DEV)
    np.savez(root / "annotations.npz", names=np.array([{"a": 1}], dtype=object), pts21=np.zeros((1, 21, 2)),
             roi_box=np.array([[0, 0, 10, 10]]), yaw_deg=np.zeros(1))
    with pytest.raises(AssetError, match="annotations.npz"):  # pickled objects are refused
        AFLWCrops(root, guard=NO_DEV)
    # a listed image that is missing is skipped; a corrupt image fails when decoded, naming it
    make_aflw_crops(root, ["image05000.jpg", "image05001.jpg"])
    (root / "images" / "image05000.jpg").unlink()
    (root / "images" / "image05001.jpg").write_bytes(b"garbage")
    r = AFLWCrops(root, guard=NO_DEV)
    assert len(r) == 1 and "image05000.jpg" in r.skipped[0]
    with pytest.raises(AssetError, match="image05001.jpg: not a readable image"):
        r[0].image


# ----------------------------------------------------------------------------- 300-W
def test_w300_reads_converts_and_drops_aflw2000_names(tmp_path: Path) -> None:
    root = tmp_path / "300w"
    pts = make_w300(root, ["afw_1", "helen_2", "image00002", "image04375_flip"])
    _jpg(root / "no_labels.jpg")
    write_pts(root / "no_image.pts", np.ones((68, 2)))
    r = W300(root, guard=NO_DEV)
    assert [s.key for s in r] == ["300w:afw_1.jpg", "300w:helen_2.jpg"]
    assert r.excluded == ["image00002.jpg", "image04375_flip.jpg"]
    assert len(r.skipped) == 2 and any("no_labels.jpg (no .pts file)" in s for s in r.skipped)
    for s in r:
        ls = s.landmark_sets["ibug68"]
        stem = s.key.split(":")[1][:-4]
        assert ls.visible.all() and s.yaw_deg is None and "300-W" in s.terms
        assert np.array_equal(ls.points, (pts[stem] - 0.5).astype(np.float32))  # 1-based -> ours, exact
    assert r[0].image.shape == (200, 200, 3)


def test_w300_bad_files(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="300-W folder not found"):
        W300(tmp_path / "nope", guard=NO_DEV)
    root = tmp_path / "300w"
    root.mkdir()
    with pytest.raises(AssetError, match="no image \\+ .pts pairs"):
        W300(root, guard=NO_DEV)
    make_w300(root, ["a"])
    write_pts(root / "a.pts", np.ones((5, 2)))
    with pytest.raises(AssetError, match=r"a.pts: has 5 points, expected 68"):
        W300(root, guard=NO_DEV)
    (root / "a.pts").write_text("version: 1\nn_points: 68\n{\n1 x\n}\n")
    with pytest.raises(AssetError, match="a.pts: non-numeric"):
        W300(root, guard=NO_DEV)


# ----------------------------------------------------------------------------- MTFL
def test_mtfl_reads_and_drops(tmp_path: Path) -> None:
    root = tmp_path / "mtfl"
    rels = ["lfw_5590/A_0001.jpg", "net_7876/12_0_0.jpg", "net_7876/image00100.jpg", "net_7876/_-20_5_0.jpg",
            "net_7876/gone.jpg"]
    pts = make_mtfl(root, rels)
    (root / "net_7876" / "gone.jpg").unlink()
    r = MTFL(root, guard=NO_DEV)
    assert [s.key for s in r] == ["mtfl:lfw_5590/A_0001.jpg", "mtfl:net_7876/12_0_0.jpg"]
    assert r.excluded == ["net_7876/image00100.jpg"]
    assert len(r.skipped) == 2 and any("gone.jpg" in s for s in r.skipped)
    assert any("_-20_5_0.jpg" in s for s in r.skipped)
    for s in r:
        ls = s.landmark_sets["mtfl5"]
        assert ls.visible.all() and np.array_equal(ls.points, pts[s.key.split(":", 1)[1]].astype(np.float32))
    kept = MTFL(root, guard=NO_DEV, keep_misaligned=True)
    assert len(kept) == 3 and kept[2].key == "mtfl:net_7876/_-20_5_0.jpg"
    assert r[0].image.shape == (80, 80, 3)


def test_mtfl_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "mtfl"
    root.mkdir()
    with pytest.raises(AssetError, match="landmarks5.txt: MTFL landmark list not found"):
        MTFL(root, guard=NO_DEV)
    (root / "landmarks5.txt").write_text("# header\na.jpg 1 2 3\n")
    with pytest.raises(AssetError, match=r"landmarks5.txt:2: expected a path and 10 numbers"):
        MTFL(root, guard=NO_DEV)
    (root / "landmarks5.txt").write_text("a.jpg 1 2 3 4 5 6 7 8 9 x\n")
    with pytest.raises(AssetError, match=r"landmarks5.txt:1: non-numeric"):
        MTFL(root, guard=NO_DEV)
    (root / "landmarks5.txt").write_text("../a.jpg 1 2 3 4 5 6 7 8 9 10\n")
    with pytest.raises(AssetError, match="leaves the folder"):
        MTFL(root, guard=NO_DEV)
    (root / "landmarks5.txt").write_text("# only a comment\n")
    with pytest.raises(AssetError, match="lists no images"):
        MTFL(root, guard=NO_DEV)


# ----------------------------------------------------------------------------- video folders
def test_video_folder_frames(tmp_path: Path) -> None:
    root = tmp_path / "clips"
    make_video(root / "a.mp4", 12)
    make_video(root / "b.mp4", 5)
    (root / "notes.txt").write_text("not a video")
    r = VideoFolder(root, every=3, guard=NO_DEV)
    assert [v.n_frames for v in r.videos] == [12, 5]
    assert [s.key for s in r] == [f"video-folder:clips/a.mp4#{i:06d}" for i in (0, 3, 6, 9)] + [
        f"video-folder:clips/b.mp4#{i:06d}" for i in (0, 3)]
    assert all(s.landmark_sets == {} and s.yaw_deg is None and "research use only" in s.terms for s in r)
    assert r[2].meta == {"frame_index": 6, "time_s": pytest.approx(0.6)}

    def level(img: np.ndarray) -> int:
        return int(round(float(img.mean()) / 20.0))

    # random access, backwards and forwards, then sequential: each frame is the right one
    order = [3, 0, 2, 1, 2, 5, 4]
    assert [level(r[i].image) for i in order] == [9, 0, 6, 3, 6, 3, 0]
    assert r[0].image.shape == (32, 32, 3) and r[0].image.dtype == np.uint8
    clone = pickle.loads(pickle.dumps(r[3].loader))  # picklable for worker processes
    assert level(clone()) == 9
    r.close()
    assert level(r[1].image) == 3  # reopens after close
    every1 = VideoFolder(root, every=1, guard=NO_DEV)
    assert [level(s.image) for s in every1][:12] == list(range(12))


def test_video_folder_bad_input(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="video folder not found"):
        VideoFolder(tmp_path / "nope", guard=NO_DEV)
    root = tmp_path / "clips"
    root.mkdir()
    with pytest.raises(AssetError, match="no video files"):
        VideoFolder(root, guard=NO_DEV)
    (root / "broken.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(AssetError, match="broken.mp4: cannot read video"):
        VideoFolder(root, guard=NO_DEV)
    with pytest.raises(ValueError, match="every"):
        VideoFolder(root, every=0, guard=NO_DEV)


# ----------------------------------------------------------------------------- the AFLW2000-3D guard
def test_aflw_number_and_guard_rules(tmp_path: Path) -> None:
    assert aflw_number("image04375.jpg") == 4375 and aflw_number("a/b/IMAGE00002.png") == 2
    assert aflw_number("aflw-crops:images/image04376.jpg") == 4376
    assert aflw_number("x:clips/image00010.mp4#000005") == 10
    assert aflw_number("image0437.jpg") is None and aflw_number("myimage04375.jpg") is None
    assert aflw_number("image043750.jpg") is None and aflw_number("helen_1.jpg") is None
    g = NO_DEV
    assert g.is_excluded("image04375.jpg") and g.is_excluded("image04375_flip.jpg")
    assert not g.is_excluded("image04376.jpg")
    dev = tmp_path / "dev"
    _jpg(dev / "image09999.jpg")
    g2 = ExclusionGuard(dev)
    assert g2.is_excluded("300w:image09999.jpg") and "dev folder" in g2.reason("image09999.png")
    assert not g2.is_excluded("image10000.jpg")


def test_check_training_list(tmp_path: Path) -> None:
    ok = ["aflw-crops:images/image04376.jpg", "300w:afw_1.jpg", str(tmp_path / "mtfl" / "lfw_5590" / "A_0001.jpg")]
    check_training_list(ok, NO_DEV)
    bad = ok + ["aflw-crops:images/image04375.jpg", "/data/aflw2000-3d-dev/image00008.jpg"]
    assert find_aflw2000_entries(bad, NO_DEV) == bad[-2:]
    with pytest.raises(AssetError, match=r"my list: contains 2 AFLW2000-3D image\(s\)"):
        check_training_list(bad, NO_DEV, what="my list")
    dev = tmp_path / "dev"
    _jpg(dev / "image09999.jpg")
    with pytest.raises(AssetError, match="1 AFLW2000-3D"):
        check_training_list(ok + ["300w:image09999.jpg"], ExclusionGuard(dev))


@pytest.mark.parametrize("name", list(READERS))
def test_every_reader_refuses_aflw2000_folders(tmp_path: Path, name: str) -> None:
    layout = make_aflw2000_layout(tmp_path / "some-copy")
    with pytest.raises(AssetError, match="some-copy: is in the AFLW2000-3D layout"):
        open_source(name, layout, guard=NO_DEV)
    nested = make_aflw2000_layout(tmp_path / "outer" / "inner").parent
    with pytest.raises(AssetError, match="outer: is in the AFLW2000-3D layout"):
        open_source(name, nested, guard=NO_DEV)
    dev = tmp_path / "dev"  # the dev folder itself (here without .mat files) and a folder inside it
    _jpg(dev / "image00008.jpg")
    (dev / "sub").mkdir()
    for folder in (dev, dev / "sub"):
        with pytest.raises(AssetError, match="is the AFLW2000-3D dev folder"):
            open_source(name, folder, guard=ExclusionGuard(dev))


@pytest.mark.parametrize("name", list(READERS))
def test_every_reader_drops_aflw2000_images(tmp_path: Path, name: str) -> None:
    """Each reader, given its format with AFLW2000-3D-named files, yields only the others."""
    root = tmp_path / name
    if name == "aflw-crops":
        make_aflw_crops(root, ["image04375.jpg", "image04376.jpg"])
        expected = ["aflw-crops:images/image04376.jpg"]
    elif name == "300w":
        make_w300(root, ["image04375", "image04376"])
        expected = ["300w:image04376.jpg"]
    elif name == "mtfl":
        make_mtfl(root, ["net_7876/image04375.jpg", "net_7876/image04376.jpg"])
        expected = ["mtfl:net_7876/image04376.jpg"]
    else:
        make_video(root / "image04375.mp4", 2)
        make_video(root / "image04376.mp4", 2)
        expected = [f"video-folder:{name}/image04376.mp4#000000"]
    r = open_source(name, root, guard=NO_DEV)
    assert [s.key for s in r] == expected and len(r.excluded) == 1 and "image04375" in r.excluded[0]
    check_training_list(r.keys, NO_DEV)


def test_refuse_aflw2000_folder_accepts_ordinary_folders(tmp_path: Path) -> None:
    make_w300(tmp_path / "300w", ["a"])
    refuse_aflw2000_folder(tmp_path / "300w", "test", dev_folder=tmp_path / "dev")  # no error
    refuse_aflw2000_folder(tmp_path / "missing", "test")  # readers report missing folders themselves


# ----------------------------------------------------------------------------- check images
def test_draw_samples_places_points_at_pixel_centres(tmp_path: Path) -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    pts = np.full((5, 2), 40.5)
    pts[0] = (10.5, 20.5)  # the centre of pixel column 10, row 20
    s = FaceSample("t:a.png", "t", "terms", tmp_path / "a.png", {"mtfl5": LandmarkSet("mtfl5", pts, np.ones(5, bool))},
                   loader=lambda: img)
    out = draw_samples([s, s], tmp_path / "sheet.png", tile=64, columns=2, labels=False)
    sheet = np.asarray(Image.open(out).convert("RGB"))
    assert sheet.shape == (64 + 14, 128, 3)
    assert tuple(sheet[20, 10]) == (255, 40, 40)  # point 0 ("L") in red, centred on its pixel
    assert tuple(sheet[20, 64 + 10]) == (255, 40, 40)
    assert sheet[20, 14].sum() == 0 and sheet[16, 10].sum() == 0  # a small dot
    assert not list(tmp_path.glob(".sheet.png*"))  # atomic write left no temporary file
    with pytest.raises(ValueError):
        draw_samples([], tmp_path / "empty.png")


# ----------------------------------------------------------------------------- the real folders
@pytest.fixture(scope="module")
def real(shared: Path) -> dict[str, object]:
    data = shared / "data"
    return {
        "aflw-crops": AFLWCrops(data / "train" / "aflw-crops"),
        "300w": W300(data / "train" / "300w"),
        "mtfl": MTFL(data / "train" / "mtfl"),
        "video-folder": VideoFolder(data / "video" / "expressions", every=5),
        "dev": data / "aflw2000-3d-dev",
    }


def _frontal_left_of_right(samples: list[FaceSample], definition: str) -> float:
    """Fraction of (point, twin) pairs where the "L" point has the smaller x."""
    d = DEFINITIONS[definition]
    left = [i for i, s in enumerate(d.frontal_side) if s == "L"]
    good = total = 0
    for s in samples:
        ls = s.landmark_sets[definition]
        for i in left:
            j = d.flip_permutation[i]
            if ls.visible[i] and ls.visible[j]:
                total += 1
                good += ls.points[i, 0] < ls.points[j, 0]
    return good / total


@pytest.mark.assets
def test_real_aflw_crops(real: dict) -> None:
    r = real["aflw-crops"]
    assert len(r) == 18406 and r.excluded == [] and r.skipped == []  # the folder holds no crop <= 4375
    nums = [aflw_number(k) for k in r.keys]
    assert min(nums) > 4375
    n_vis = np.array([s.landmark_sets["aflw21"].n_visible for s in r])
    assert n_vis.min() >= 4 and n_vis.max() == 21 and 15.0 < n_vis.mean() < 16.5
    frontal = [s for s in r if abs(s.yaw_deg) < 10]
    assert _frontal_left_of_right(frontal, "aflw21") > 0.97
    # crop frame: visible points of frontal faces lie inside the 120 x 120 crop
    inside = np.concatenate([s.landmark_sets["aflw21"].points[s.landmark_sets["aflw21"].visible] for s in frontal])
    assert ((inside >= 0) & (inside <= 120)).mean() > 0.999
    for s in (r[0], r[len(r) // 2], r[-1]):
        assert s.image.shape == (120, 120, 3)


def _band_edge(img: np.ndarray, expected: float) -> float | None:
    """Continuous y where a crop's bottom black band reaches 50 % of the brightness above it."""
    prof = img.astype(np.float64).mean(axis=2)[:, 20:100].mean(axis=1)
    r0 = int(np.floor(expected))
    ref = prof[r0 - 6 : r0 - 2].mean()
    if ref < 40:
        return None
    f = prof / ref
    for r in range(r0 - 3, len(f)):
        if f[r] < 0.5:  # row r has its centre at r + 0.5
            return r - 0.5 + (f[r - 1] - 0.5) / (f[r - 1] - f[r])
    return None


@pytest.mark.assets
def test_real_aflw_crop_box_convention(real: dict) -> None:
    """Crops whose box is clipped at the 450 frame's bottom end in a black band; its edge lies at
    (450 - y0) * 120 / (x1 - x0) (box edges continuous, y scaled like x), not 120 / w lower."""
    r = real["aflw-crops"]
    clipped = [s for s in r if s.meta["roi_box"][3] == 450
               and (s.meta["roi_box"][2] - s.meta["roi_box"][0]) - (450 - s.meta["roi_box"][1]) > 3]
    assert len(clipped) == 124
    diffs, shift = [], []
    for s in clipped[::4]:
        x0, y0, x1, _ = s.meta["roi_box"]
        expected = (450 - y0) * 120 / (x1 - x0)
        edge = _band_edge(s.image, expected)
        if edge is not None:
            diffs.append(edge - expected)
            shift.append(120 / (x1 - x0))
    assert len(diffs) >= 20
    assert abs(np.median(diffs)) < 0.1 < 0.25 < np.median(shift)


@pytest.mark.assets
def test_real_300w(real: dict) -> None:
    r = real["300w"]
    assert len(r) == 1537 and r.excluded == [] and r.skipped == []
    assert sum(k.startswith("300w:afw_") for k in r.keys) == 337
    assert sum(k.startswith("300w:helen_") for k in r.keys) == 1200
    assert all(s.landmark_sets["ibug68"].visible.all() for s in r)
    assert _frontal_left_of_right(list(r), "ibug68") > 0.97
    img = r[0].image
    pts = r[0].landmark_sets["ibug68"].points
    assert img.shape[0] <= 288 and pts.min() > -20 and pts.max() < max(img.shape) + 20


@pytest.mark.assets
def test_real_mtfl(real: dict, shared: Path) -> None:
    r = real["mtfl"]
    assert len(r) == 7649 and r.excluded == [] and len(r.skipped) == 2283
    assert all("net_7876/_" in s for s in r.skipped)
    everything = MTFL(shared / "data" / "train" / "mtfl", keep_misaligned=True)
    assert len(everything) == 9932
    assert sum("lfw_5590/" in k for k in everything.keys) == 4151
    assert _frontal_left_of_right(list(everything), "mtfl5") == 1.0
    assert r[0].image.shape == (80, 80, 3)


@pytest.mark.assets
def test_real_video_folder(real: dict) -> None:
    r = real["video-folder"]
    counts = {v.path.name: v.n_frames for v in r.videos}
    assert counts == {
        "driving_d0.mp4": 78, "driving_d11.mp4": 225, "driving_d12.mp4": 183, "driving_d13.mp4": 352,
        "driving_d14.mp4": 536, "driving_d18.mp4": 216, "driving_d20.mp4": 175, "driving_d6.mp4": 1008,
        "driving_d9.mp4": 587, "source_s13.mp4": 103, "source_s18.mp4": 282, "source_s20.mp4": 297,
        "source_s29.mp4": 160, "source_s32.mp4": 180,
    }
    assert sum(counts.values()) == 4382 and len(r) == sum(-(-n // 5) for n in counts.values()) == 882
    img = r[1].image  # driving_d0 frame 5
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    r.close()


@pytest.mark.assets
def test_real_sources_hold_no_aflw2000_image(real: dict) -> None:
    dev: Path = real["dev"]
    guard = ExclusionGuard(dev)
    dev_stems = {p.stem for p in dev.glob("*.jpg")}
    assert len(dev_stems) == 199 and all(aflw_number(s) <= 4375 for s in dev_stems)
    for name in READERS:
        reader = real[name]
        check_training_list(reader.keys, guard, what=name)
        assert not {Path(k.split("#")[0]).stem for k in reader.keys} & dev_stems
        with pytest.raises(AssetError, match="is the AFLW2000-3D dev folder"):
            open_source(name, dev)
