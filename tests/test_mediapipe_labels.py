"""MediaPipe pseudo-labels: coordinate conversion, crop box, cache, UnlabelledFaces.

Tests without ``mediapipe`` use a fake detector; those marked ``assets`` that run MediaPipe
skip when it is not installed.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mlanet.data.mediapipe_labels as ml
from mlanet.data.landmarks import SAMPLE_KEYS, read_image_rgb, read_pts
from mlanet.errors import AssetError
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points

CFG = PreprocessCfg(input_size=64)
# mediapipe 0.10.14 + protobuf 4 warn about a deprecated protobuf call on every run
pytestmark = pytest.mark.filterwarnings("ignore:SymbolDatabase.GetPrototype:UserWarning")
AFLW = "data/aflw2000-3d-dev"
LFPW = "data/landmarks68/lfpw-sample"
AFLW_FRONTAL = ["image00008", "image00040", "image00046"]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the axis-aligned boxes of two point sets (N, 2)."""
    (ax0, ay0), (ax1, ay1) = a.min(0), a.max(0)
    (bx0, by0), (bx1, by1) = b.min(0), b.max(0)
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / ((ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter)


def _box_iou(a: CropBox, b: CropBox) -> float:
    return _iou(np.array([[a.x0, a.y0], [a.x0 + a.size, a.y0 + a.size]]), np.array([[b.x0, b.y0], [b.x0 + b.size, b.y0 + b.size]]))


# ------------------------------------------------------------------ conversion and box
def test_mediapipe_to_pixels_formula():
    rng = np.random.default_rng(0)
    n = 0.3 + 0.4 * rng.random((468, 3))
    n[33, :2], n[263, :2] = (0.35, 0.4), (0.65, 0.4)  # eyes level: theta = 0
    W, H = 400, 300
    raw = n[:, :2] * [W, H]
    k = 0.5 * ml.MEDIAPIPE_ROI_PER_BOX * np.ptp(raw, axis=0).max() / ml.MEDIAPIPE_LANDMARK_INPUT_SIZE
    np.testing.assert_allclose(ml.mediapipe_to_pixels(n, W, H), raw + 0.5 - k)
    n[33, :2], n[263, :2] = (0.5, 0.35), (0.5, 0.65)  # face rotated: eye line points down (+90 deg)
    raw = n[:, :2] * [W, H]
    k = 0.5 * ml.MEDIAPIPE_ROI_PER_BOX * np.ptp(raw, axis=0).max() / ml.MEDIAPIPE_LANDMARK_INPUT_SIZE
    np.testing.assert_allclose(ml.mediapipe_to_pixels(n, W, H), raw + 0.5 + k * np.array([1.0, -1.0]))
    with pytest.raises(ValueError):
        ml.mediapipe_to_pixels(n[:10], W, H)


def test_box_from_mp468():
    rng = np.random.default_rng(1)
    pts = np.array([100.0, 80.0]) + rng.random((468, 2)) * [120.0, 150.0]
    box = ml.box_from_mp468(pts, math.sqrt(2))
    lo, hi = pts.min(0), pts.max(0)
    side468 = max(hi - lo)
    assert box.size == pytest.approx(math.sqrt(2) * ml.MP468_TO_IBUG68_SIDE * side468)
    cx, cy = (lo + hi) / 2
    assert box.x0 + box.size / 2 == pytest.approx(cx)
    assert box.y0 + box.size / 2 == pytest.approx(cy + ml.MP468_CENTRE_SHIFT_Y * side468)


def test_mediapipe_is_not_imported_at_module_level():
    """No module of mlanet.data imports mediapipe (or cv2) outside a function body."""
    import ast

    import mlanet.data

    for path in Path(mlanet.data.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in tree.body:  # module-level statements only
            for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else (
                    [sub.module or ""] if isinstance(sub, ast.ImportFrom) else [])
                assert not any(n.split(".")[0] in ("mediapipe", "cv2") for n in names), (path, names)


# ------------------------------------------------------------------ cache (fake detector)
class FakeDetector:
    """Bright images get a fixed 468-point 'face' scaled to the image; dark ones none."""

    def __init__(self) -> None:
        self.calls = 0
        self.template = np.random.default_rng(2).random((468, 2))

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        self.calls += 1
        if image.mean() < 10:
            return None
        H, W = image.shape[:2]
        return np.array([W * 0.25, H * 0.2]) + self.template * [W * 0.5, H * 0.6]


def _make_folder(root: Path) -> None:
    rng = np.random.default_rng(3)
    (root / "sub" / "deeper").mkdir(parents=True)
    for rel, size in [("a.jpg", (60, 80)), ("sub/b.png", (50, 50)), ("sub/deeper/c.jpeg", (70, 40))]:
        Image.fromarray((100 + rng.random((*size, 3)) * 100).astype(np.uint8)).save(root / rel)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "sub" / "dark.png")
    (root / "sub" / "broken.jpg").write_bytes(b"this is not an image")
    (root / "notes.txt").write_text("not an image")


def test_cache_build_reuse_and_invalidate(tmp_path, caplog, monkeypatch):
    root = tmp_path / "faces"
    _make_folder(root)
    det = FakeDetector()
    with caplog.at_level(logging.WARNING, logger="mlanet.data"):
        ds = ml.UnlabelledFaces(root, CFG, detector=det, progress=False)
    assert det.calls == 4  # broken.jpg is not decodable, so the detector never sees it
    assert len(ds) == 3 and ds.n_no_face == 1 and ds.n_unreadable == 1
    assert "broken.jpg" in caplog.text and "notes.txt" in caplog.text
    assert [lb.relpath for lb in ds.labels] == ["a.jpg", "sub/b.png", "sub/deeper/c.jpeg"]
    cache = root / ".mlanet_cache"
    files = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*") if p.is_file())
    assert files == ["mediapipe468.npz", "sub/deeper/mediapipe468.npz", "sub/mediapipe468.npz"]  # no temp files left

    # second run: everything cached, the default MediaPipe detector is never even created
    def no_mediapipe(*_a, **_k):
        raise AssertionError("detector must not be created when everything is cached")

    monkeypatch.setattr(ml, "FaceMeshDetector", no_mediapipe)
    ds2 = ml.UnlabelledFaces(root, CFG, progress=False)
    assert [lb.relpath for lb in ds2.labels] == [lb.relpath for lb in ds.labels]
    for a, b in zip(ds.labels, ds2.labels):
        np.testing.assert_array_equal(a.points, b.points)

    # a changed image is recomputed, the others are not
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(root / "a.jpg")
    det2 = FakeDetector()
    ds3 = ml.UnlabelledFaces(root, CFG, detector=det2, progress=False)
    assert det2.calls == 1 and len(ds3) == 3
    # a new image is detected too; a deleted one disappears from its folder's cache file
    (root / "sub" / "dark.png").unlink()
    shutil.copy(root / "sub" / "b.png", root / "sub" / "b2.png")
    det3 = FakeDetector()
    ds4 = ml.UnlabelledFaces(root, CFG, detector=det3, progress=False)
    assert det3.calls == 1 and [lb.relpath for lb in ds4.labels] == ["a.jpg", "sub/b.png", "sub/b2.png", "sub/deeper/c.jpeg"]
    assert sorted(ml.PseudoLabelCache(cache).load("sub")) == ["sub/b.png", "sub/b2.png", "sub/broken.jpg"]


def test_cache_corrupt_file_is_rebuilt_and_explicit_dir(tmp_path, caplog):
    root = tmp_path / "faces"
    _make_folder(root)
    cache_dir = tmp_path / "elsewhere"
    ml.UnlabelledFaces(root, CFG, cache_dir=cache_dir, detector=FakeDetector(), progress=False)
    assert not (root / ".mlanet_cache").exists() and (cache_dir / "mediapipe468.npz").is_file()
    (cache_dir / "sub" / "mediapipe468.npz").write_bytes(b"garbage")
    det = FakeDetector()
    with caplog.at_level(logging.WARNING, logger="mlanet.data.mediapipe_labels"):
        ml.UnlabelledFaces(root, CFG, cache_dir=cache_dir, detector=det, progress=False)
    assert det.calls == 2 and "unreadable pseudo-label cache" in caplog.text  # b.png and dark.png again
    with np.load(cache_dir / "sub" / "mediapipe468.npz", allow_pickle=False) as z:
        assert sorted(z["relpath"].tolist()) == ["sub/b.png", "sub/broken.jpg", "sub/dark.png"]
        assert z["points"].shape == (3, 468, 2) and z["sha256"].dtype.kind == "U"


def test_unlabelled_sample_contents(tmp_path):
    root = tmp_path / "faces"
    _make_folder(root)
    det = FakeDetector()
    ds = ml.UnlabelledFaces(root, CFG, detector=det, progress=False)
    for i in range(len(ds)):
        s = ds[i]
        lb = ds.labels[i]
        assert set(s) == set(SAMPLE_KEYS)
        assert s["image"].shape == (3, 64, 64) and s["has_mp468"] and not s["has_params"]
        assert not s["landmarks_valid"].any() and torch.isnan(s["landmarks"]).all()
        box = ml.box_from_mp468(lb.points.astype(np.float64), CFG.roi_scale)
        np.testing.assert_allclose(s["box"].numpy(), box.as_array())
        np.testing.assert_allclose(s["mp468"].numpy(), box.image_to_crop(lb.points.astype(np.float64), 64), atol=1e-4)
        assert s["params"].shape == (0,)


def test_unlabelled_bad_folders(tmp_path):
    with pytest.raises(AssetError, match="missing"):
        ml.UnlabelledFaces(tmp_path / "missing", CFG, detector=FakeDetector())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(AssetError, match="empty"):
        ml.UnlabelledFaces(empty, CFG, detector=FakeDetector())
    dark = tmp_path / "dark"
    dark.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(dark / "x.png")
    with pytest.raises(AssetError, match="no face"):
        ml.UnlabelledFaces(dark, CFG, detector=FakeDetector(), progress=False)


# ------------------------------------------------------------------ real MediaPipe
@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("mediapipe")
    with ml.FaceMeshDetector() as d:
        yield d


def _ground_truth(shared: Path) -> list[tuple[Path, np.ndarray]]:
    from mlanet.data.aflw2000 import read_aflw2000_mat

    out = [(shared / LFPW / "image_0010.png", read_pts(shared / LFPW / "image_0010.pts"))]
    for stem in AFLW_FRONTAL:
        rec = read_aflw2000_mat(shared / AFLW / f"{stem}.mat")
        out.append((rec.image_path, rec.landmarks))
    return out


@pytest.mark.assets
def test_mediapipe_finds_faces_matching_ground_truth(shared, detector):
    for path, gt in _ground_truth(shared):
        img = read_image_rgb(path)
        pts = ml.detect_face_mesh(img, detector)
        assert pts is not None and pts.shape == (468, 2), path
        assert _iou(pts, gt) > 0.5, path
        # the crop from the 468 points matches the 68-point protocol crop
        assert _box_iou(ml.box_from_mp468(pts, math.sqrt(2)), box_from_points(gt, math.sqrt(2))) > 0.75, path
    assert ml.detect_face_mesh(np.zeros((64, 64, 3), np.uint8), detector) is None


@pytest.mark.assets
def test_mediapipe_convention_mirror_check(shared, detector):
    """Mirror-pair consistency of the converted points on 3x upscaled frontal faces.

    For point i and its mirror partner m(i), x_i(image) + x_m(i)(mirrored image) = W exactly
    in a consistent continuous convention. The plain ``n * W`` reading is off by about +3 px
    here (``n * W + 0.5`` by +4): see the module docstring of ``mlanet.data.mediapipe_labels``.
    """
    from mlanet.data.aflw2000 import AFLW2000

    perm = ml.mediapipe468_flip_permutation(shared / "assets/mediapipe-canonical/canonical_face_model.obj")
    recs = [r for r in AFLW2000(shared / AFLW, CFG).records if r.yaw_bin == 0][:8]
    vals = []
    for r in recs:
        img = np.asarray(Image.fromarray(read_image_rgb(r.image_path)).resize((1350, 1350), Image.BICUBIC))
        p = detector(img)
        q = detector(np.ascontiguousarray(img[:, ::-1]))
        vals.append(float(np.mean(p[:, 0] + q[perm, 0])) - img.shape[1])
    assert abs(np.mean(vals)) < 1.5


@pytest.mark.assets
def test_unlabelled_faces_with_mediapipe_and_cache(shared, tmp_path, monkeypatch, caplog):
    pytest.importorskip("mediapipe")
    root = tmp_path / "photos"
    (root / "aflw").mkdir(parents=True)
    shutil.copy(shared / LFPW / "image_0010.png", root)
    for stem in AFLW_FRONTAL:
        shutil.copy(shared / AFLW / f"{stem}.jpg", root / "aflw")
    (root / "aflw" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "aflw" / "image00008.mat").write_bytes(b"not an image")

    calls = []
    real_call = ml.FaceMeshDetector.__call__

    def counting(self, image):
        calls.append(image.shape)
        return real_call(self, image)

    monkeypatch.setattr(ml.FaceMeshDetector, "__call__", counting)
    with caplog.at_level(logging.WARNING, logger="mlanet.data"):
        ds = ml.UnlabelledFaces(root, CFG)
    assert len(calls) == 4 and len(ds) == 4 and ds.n_unreadable == 1
    assert "corrupt.jpg" in caplog.text and "image00008.mat" in caplog.text
    gts = {p.name: gt for p, gt in _ground_truth(shared)}
    for i, lb in enumerate(ds.labels):
        assert _iou(lb.points.astype(np.float64), gts[lb.path.name]) > 0.5
        s = ds[i]
        assert s["has_mp468"] and torch.isfinite(s["mp468"]).all()
        inside = ((s["mp468"] > 0) & (s["mp468"] < 64)).all(1).float().mean()
        assert inside > 0.95  # the face mesh lies in the crop

    ds2 = ml.UnlabelledFaces(root, CFG)
    assert len(calls) == 4 and len(ds2) == 4  # second run: no detector call at all


@pytest.mark.assets
def test_refined_mesh_closes_the_lids_of_a_closed_eye(shared):
    """refine=True (MediaPipe's attention mesh): on a closed-eye frame of a driving clip the lids meet
    (lid distance / eye width < 0.09; unrefined they stay apart, > 0.1); on an open eye both agree; the mesh
    keeps 468 points either way."""
    pytest.importorskip("mediapipe")
    from mlanet.data.sources.video_folder import VideoFrameDecoder, index_video
    from mlanet.eval.face_measures import eye_apertures

    decoder = VideoFrameDecoder(index_video(shared / "data/video/expressions/driving_d9.mp4"))
    closed, open_ = decoder.frame(295), decoder.frame(0)  # frame 295: mid-blink (found from the labels)
    decoder.close()
    with ml.FaceMeshDetector() as plain, ml.FaceMeshDetector(refine=True) as refined:
        got = {name: [d(img) for img in (closed, open_)] for name, d in (("plain", plain), ("refined", refined))}
    for pts in got["plain"] + got["refined"]:
        assert pts is not None and pts.shape == (468, 2)
    ap = {name: [float(eye_apertures(p).mean()) for p in pts] for name, pts in got.items()}
    assert ap["refined"][0] < 0.09 < 0.1 < ap["plain"][0], ap
    assert ap["refined"][1] > 0.25 and ap["plain"][1] > 0.25 and abs(ap["refined"][1] - ap["plain"][1]) < 0.1, ap


def test_the_refined_mesh_is_another_labeller():
    """Refined and unrefined MediaPipe labels never share a labeller id (a cache never mixes them), and the
    unrefined identity is the one existing caches were made with."""
    from mlanet.data.labels.labeller import TeacherMediaPipeLabeller

    class Teacher:
        name, version, files, terms = "t", 1, {}, {}

    def mesh(image):
        return None

    def detector(image):
        return []

    plain = TeacherMediaPipeLabeller(Teacher(), mesh=mesh, detector=detector).identity()
    refined = TeacherMediaPipeLabeller(Teacher(), mesh=mesh, detector=detector, refine_mesh=True).identity()
    assert plain["mediapipe"]["mesh"] == "face_mesh static_image_mode, 1 face, refine_landmarks=False"
    assert "refine_landmarks=True" in refined["mediapipe"]["mesh"] and plain != refined
