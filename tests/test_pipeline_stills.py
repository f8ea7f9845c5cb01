"""Photo folders and single images are independent stills (issue item 4): every photo is fitted on
its own (no tracking, no temporal filter, no identity averaging across photos), and the outputs say
which photo each row / mesh / track came from. Video frames keep tracking and filtering.

The first tests use the real :class:`FaceTracker` with a fake detector (it finds the bright square
drawn into each image), a fake backend and the synthetic face model: no assets, GPU or GL. The last
one runs ``mlanet-video`` on three photos of three different people, of three different sizes,
cut from the shared dlib faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mlanet.edge.frames import ArraySource, ImageFolderSource, ImageSource, open_source
from mlanet.edge.pipeline import FacePipeline, PipelineCfg
from mlanet.edge.tracking import FaceTracker, TrackerCfg
from mlanet.edge.types import Detection
from mlanet.model_metadata import ModelMetadata
from mlanet.params import FaceParams
from mlanet.preprocess import PreprocessCfg

cv2 = pytest.importorskip("cv2")


def _photo(w: int, h: int, box: tuple[int, int, int], level: int = 40) -> np.ndarray:
    """(h, w, 3) uint8: a flat background with a white square ``(x0, y0, side)`` (the "face")."""
    img = np.full((h, w, 3), level, np.uint8)
    x0, y0, side = box
    img[y0 : y0 + side, x0 : x0 + side] = 255
    return img


class SquareDetector:
    """Finds the white square of :func:`_photo` (a stand-in for MediaPipe)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[Detection]:
        self.calls += 1
        ys, xs = np.nonzero(image[:, :, 0] == 255)
        if not len(xs):
            return []
        box = np.array([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0], np.float64)
        return [Detection(box=box, score=0.9)]


class VaryingBackend:
    """Neutral faces whose identity coefficients differ per call (so a running mean would show)."""

    def __init__(self, layout) -> None:
        self.layout = layout
        self.metadata = ModelMetadata(layout=layout, preprocess=PreprocessCfg(input_size=32), source="fake")
        self.calls = 0

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        self.calls += 1
        flat = FaceParams.neutral(self.layout, batch_size=crops.shape[0], depth_m=1.0).to_flat().numpy()
        flat[:, self.layout.slices()["identity"]] = 0.5 * self.calls  # a different "person" every call
        return flat

    def close(self) -> None:
        pass


def _pipeline(model):
    detector = SquareDetector()
    backend = VaryingBackend(model.layout)
    tracker = FaceTracker(TrackerCfg(roi_scale=PreprocessCfg(input_size=32).roi_scale), detector)
    return FacePipeline(backend, model, PipelineCfg(render_mode=None), tracker=tracker), detector


# Three "photos" of different sizes with the face at the same relative place.
PHOTOS = [_photo(200, 150, (70, 40, 60)), _photo(120, 160, (30, 50, 60)), _photo(300, 300, (120, 120, 60))]


def test_independent_stills_get_fresh_tracks_and_no_filtering(synthetic_model):
    pipeline, detector = _pipeline(synthetic_model)
    results = []
    pipeline.run(ArraySource(PHOTOS, name="photos", independent=True), results.append)
    assert [r.frame.name for r in results] == ["photos[0]", "photos[1]", "photos[2]"]
    assert all(r.frame.independent for r in results)
    ids = [[f.track_id for f in r.faces] for r in results]
    assert ids == [[0], [1], [2]]  # one face per photo, each its own id
    assert detector.calls == 3 and all(r.detected for r in results)  # the detector ran on every photo
    for r in results:
        f = r.faces[0]
        np.testing.assert_array_equal(f.params, f.raw_params)  # no temporal filter, no identity mean


def test_the_same_images_as_video_frames_are_tracked_and_filtered(synthetic_model):
    """The counterpart: identical images as a video keep one id and the identity is averaged."""
    same = [PHOTOS[2]] * 3
    pipeline, _ = _pipeline(synthetic_model)
    video = []
    pipeline.run(ArraySource(same, fps=25.0), video.append)
    assert [[f.track_id for f in r.faces] for r in video] == [[0], [0], [0]]
    assert video[2].frame.name is None and not video[2].frame.independent
    s = synthetic_model.layout.slices()["identity"]
    assert not np.allclose(video[2].faces[0].params[s], video[2].faces[0].raw_params[s])  # running mean

    pipeline, _ = _pipeline(synthetic_model)
    stills = []
    pipeline.run(ArraySource(same, independent=True), stills.append)
    assert [[f.track_id for f in r.faces] for r in stills] == [[0], [1], [2]]
    np.testing.assert_array_equal(stills[2].faces[0].params[s], stills[2].faces[0].raw_params[s])


def _write_jpg(path: Path, rgb: np.ndarray) -> Path:
    ok, buf = cv2.imencode(path.suffix, rgb[:, :, ::-1])
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_photo_sources_say_they_are_independent(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, img in zip(["b.jpg", "a.png", "c.jpg"], PHOTOS):
        _write_jpg(folder / name, img)
    src = open_source(folder)
    assert isinstance(src, ImageFolderSource) and src.independent_frames
    frames = list(src)
    assert [(f.name, f.independent, f.width) for f in frames] == [("a.png", True, 120), ("b.jpg", True, 200),
                                                                  ("c.jpg", True, 300)]
    seq = open_source(folder, image_sequence=True)  # a folder of extracted video frames
    assert not seq.independent_frames
    assert [(f.name, f.independent) for f in seq] == [("a.png", False), ("b.jpg", False), ("c.jpg", False)]
    single = open_source(folder / "c.jpg")
    assert isinstance(single, ImageSource) and single.independent_frames
    (f,) = list(single)
    assert f.name == "c.jpg" and f.independent


class FakeRenderer:
    def __init__(self, w, h, topology=None):
        self.width, self.height, self.topology = w, h, topology

    def render(self, image, faces, camera, mode, overlays, alpha):
        out = image.copy()
        out[:4] = 200  # a mark: the overlay is the rendered image
        return out


def test_outputs_name_the_photo_of_every_row_mesh_and_track(synthetic_model, tmp_path):
    """VideoRunOutputs over a folder of three photos of different sizes (one of them unreadable)."""
    pytest.importorskip("av")
    from mlanet.edge.outputs import OutputOptions, VideoRunOutputs

    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["p1_small.jpg", "p2_tall.png", "p3_big.jpg"]
    for name, img in zip(names, PHOTOS):
        _write_jpg(folder / name, img)
    (folder / "p2b_broken.jpg").write_bytes(b"not a jpeg")  # sorts between p2 and p3: a gap at index 2
    src = ImageFolderSource(folder)
    pipeline, _ = _pipeline(synthetic_model)
    pipeline._renderer_factory = FakeRenderer
    pipeline.cfg = PipelineCfg(render_mode="shaded")
    out_dir = tmp_path / "run"
    outputs = VideoRunOutputs(out_dir, face_model=synthetic_model, backend_metadata={"source": "fake"}, source=src,
                              pipeline_cfg=pipeline.cfg, options=OutputOptions(meshes="obj", glb=False))
    pipeline.run(src, outputs.write)
    assert src.lost_frames == (2,) and "p2b_broken.jpg" in src.damaged
    outputs.finish(status="complete")

    with np.load(out_dir / "params.npz", allow_pickle=False) as z:
        assert z["track_id"].tolist() == [0, 1, 2]
        assert z["frame_index"].tolist() == [0, 1, 3]
        assert z["source_name"].tolist() == names
    tracks = json.loads((out_dir / "tracks.json").read_text())["tracks"]
    assert [(t["track_id"], t["source_name"]) for t in tracks] == list(zip([0, 1, 2], names))
    meshes = sorted(p.relative_to(out_dir).as_posix() for p in (out_dir / "meshes").rglob("*.obj"))
    assert meshes == [f"meshes/{n}/track_{i:03d}.obj" for i, n in enumerate(names)]

    import av

    with av.open(str(out_dir / "overlay.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    # overlay frame k is input frame k: the unreadable photo is a black frame, and every photo is
    # letterboxed into the first one's 200 x 150 frame
    assert len(frames) == 4 and all(f.shape == (150, 200, 3) for f in frames)
    assert frames[2].max() < 20
    tall = frames[1]  # 120 x 160 scaled to 112 x 150: black bars left and right, marked top rows
    assert tall[:, :30].max() < 20 and tall[:, -30:].max() < 20 and tall[1, 100].min() > 150
    big = frames[3]  # 300 x 300 scaled to 150 x 150: bars of 25 px
    assert big[:, :20].max() < 20 and big[75, 100].min() > 200  # the white square in the middle


def test_photo_folder_resume_keeps_the_overlay_size(synthetic_model, tmp_path):
    """Interrupted after two photos, resumed: the overlay keeps the first photo's frame size."""
    pytest.importorskip("av")
    from mlanet.edge.outputs import OutputOptions, VideoRunOutputs

    folder = tmp_path / "photos"
    folder.mkdir()
    names = ["p1.jpg", "p2.png", "p3.jpg"]
    for name, img in zip(names, PHOTOS):
        _write_jpg(folder / name, img)
    out_dir = tmp_path / "run"

    def run(resume: bool, max_frames: int | None) -> VideoRunOutputs:
        src = ImageFolderSource(folder)
        outputs = VideoRunOutputs(out_dir, face_model=synthetic_model, backend_metadata={"source": "fake"},
                                  source=src, pipeline_cfg=None, options=OutputOptions(meshes=None, glb=False),
                                  resume=resume)
        if outputs.start_frame:
            src = ImageFolderSource(folder, start_frame=outputs.start_frame)
        pipeline, _ = _pipeline(synthetic_model)
        pipeline._renderer_factory = FakeRenderer
        pipeline.cfg = PipelineCfg(render_mode="shaded")
        if outputs.first_track_id:
            pipeline.tracker.next_id = outputs.first_track_id
        pipeline.run(src, outputs.write, max_frames=max_frames)
        outputs.finish(status="interrupted" if max_frames else "complete")
        return outputs

    assert run(False, 2).frames_done == 2
    assert run(True, None).start_frame == 2
    with np.load(out_dir / "params.npz", allow_pickle=False) as z:
        assert list(zip(z["track_id"].tolist(), z["source_name"].tolist())) == list(zip([0, 1, 2], names))
    import av

    with av.open(str(out_dir / "overlay.mp4")) as c:
        shapes = [f.to_ndarray(format="rgb24").shape for f in c.decode(video=0)]
    assert shapes == [(150, 200, 3)] * 3


@pytest.mark.assets
def test_cli_three_people_three_sizes(shared, ict_model_file, tmp_path):
    """mlanet-video on a folder with three photos of three different people, of three different sizes."""
    from mlanet.edge import video_cli

    faces = shared / "data" / "landmarks68" / "dlib-faces"
    folder = tmp_path / "people"
    folder.mkdir()
    crops = {  # file -> (source photo, crop x0, y0, x1, y1, output size): one face each
        "a_cruise.jpg": ("Tom_Cruise_avp_2014_4.jpg", (0, 0, 565, 800), (283, 400)),
        "b_man.png": ("2008_001322.jpg", (40, 100, 250, 310), (320, 320)),
        "c_girl.jpg": ("2009_004587.jpg", (100, 0, 290, 190), (190, 190)),
    }
    for name, (src_name, (x0, y0, x1, y1), size) in crops.items():
        img = cv2.imread(str(faces / src_name))[y0:y1, x0:x1]
        cv2.imwrite(str(folder / name), cv2.resize(img, size, interpolation=cv2.INTER_AREA))
    out = tmp_path / "run"
    rc = video_cli.main([str(folder), "--out", str(out), "--untrained", "mlanet_mobile", "--face-model",
                         str(ict_model_file), "--quiet", "--no-video", "--no-glb", "--meshes", "obj"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["frames_done"] == 3
    with np.load(out / "params.npz", allow_pickle=False) as z:
        rows = list(zip(z["frame_index"].tolist(), z["track_id"].tolist(), z["source_name"].tolist()))
    assert rows == [(0, 0, "a_cruise.jpg"), (1, 1, "b_man.png"), (2, 2, "c_girl.jpg")]
    tracks = json.loads((out / "tracks.json").read_text())["tracks"]
    assert [(t["track_id"], t["source_name"], t["frames"]) for t in tracks] == [
        (0, "a_cruise.jpg", 1), (1, "b_man.png", 1), (2, "c_girl.jpg", 1)]
    meshes = sorted(p.relative_to(out).as_posix() for p in (out / "meshes").rglob("*.obj"))
    assert meshes == ["meshes/a_cruise.jpg/track_000.obj", "meshes/b_man.png/track_001.obj",
                      "meshes/c_girl.jpg/track_002.obj"]
