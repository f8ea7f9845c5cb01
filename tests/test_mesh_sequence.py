"""Compact mesh sequences (``*.mlmesh.npz``, issue 17 item 3): round trip within the recorded error,
topology stored once, metadata, unfinished and damaged files refused, resume, and mlanet-video's
default ``--meshes sequence`` with Ctrl-C, hard kill and ``--resume`` (synthetic model, fake
detector and backend: no assets, GL or GPU).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlanet.edge.writers import WriterError
from mlanet.edge.writers.mesh_sequence import (FORMAT, FORMAT_VERSION, OPENCV_CAMERA, MeshSequenceWriter,
                                               load_mesh_sequence, quantise, spool_path)
from mlanet.errors import MLANetError


def _frames(synthetic_data, n: int, seed: int = 0) -> np.ndarray:
    """(n, V, 3) float32 camera-frame vertices: the synthetic mean face moved about, ~0.5-2.5 m away."""
    rng = np.random.default_rng(seed)
    base = np.asarray(synthetic_data.mean_shape, np.float64)
    out = []
    for k in range(n):
        wobble = 0.002 * rng.standard_normal(base.shape)  # "expression", millimetres
        shift = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(0.5, 2.5)])
        out.append(base * rng.uniform(0.9, 1.1) + wobble + shift)
    return np.asarray(out, np.float32)


def _writer(path: Path, d, **kw) -> MeshSequenceWriter:
    return MeshSequenceWriter(path, triangles=d.triangles, n_vertices=d.n_vertices, uv=d.uv,
                              triangles_uv=d.triangles_uv, **kw)


def _write(path: Path, d, verts: np.ndarray, frames=None, **kw) -> Path:
    frames = range(len(verts)) if frames is None else frames
    with _writer(path, d, **kw) as w:
        for f, v in zip(frames, verts):
            w.add(f, f / 30.0, v)
    return path


def _one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------- round trip
def test_round_trip_within_the_recorded_error(tmp_path, synthetic_data):
    d = synthetic_data
    verts = _frames(d, 12)
    frames = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]  # --mesh-every 2
    path = _write(tmp_path / "track_000.mlmesh.npz", d, verts, frames, meta={"track_id": 0, "mesh_every": 2})
    assert not spool_path(path).exists() and [p.name for p in tmp_path.iterdir()] == [path.name]
    with load_mesh_sequence(path) as seq:
        assert len(seq) == 12 and seq.n_vertices == d.n_vertices
        np.testing.assert_array_equal(seq.frames, frames)
        np.testing.assert_allclose(seq.times_s, np.array(frames) / 30.0)
        np.testing.assert_array_equal(seq.triangles, d.triangles)
        np.testing.assert_array_equal(seq.triangles_uv, d.triangles_uv)
        np.testing.assert_allclose(seq.uv, d.uv, atol=1e-7)
        assert seq.triangles.dtype == np.int32 and seq.uv.dtype == np.float32
        all_v = seq.vertices
        assert all_v.shape == (12, d.n_vertices, 3) and all_v.dtype == np.float32
        err = float(np.abs(all_v.astype(np.float64) - verts).max())
        assert 0 < err <= seq.max_abs_error_m
        # the bound of the docstring: half the largest bounding-box side / 65534 (+ float32 rounding)
        half = max(float((v.max(0) - v.min(0)).max()) / 2 for v in verts.astype(np.float64))
        assert seq.max_abs_error_m <= half / 65534 + 4e-7
        np.testing.assert_array_equal(seq.vertices_at(5), all_v[5])
        np.testing.assert_array_equal(seq.vertices_at(seq.index_of(10)), all_v[5])
        with pytest.raises(KeyError, match="frame 3 is not in the sequence"):
            seq.index_of(3)
        assert [f for f, _, _ in seq.iter_vertices()] == frames
    with load_mesh_sequence(path, mmap=False) as seq:
        assert not isinstance(seq.quantised, np.memmap)
        np.testing.assert_array_equal(seq.vertices, all_v)


def test_int16_beats_float16_at_camera_distances(synthetic_data):
    """Why int16 with a per-frame offset and scale: float16 rounds coordinates near 1-2 m to ~0.5 mm."""
    v = _frames(synthetic_data, 1, seed=3)[0] + np.float32([0, 0, 1.0])  # 1.5-3.5 m away
    offset, scale, q, err = quantise(v)
    f16 = float(np.abs(v.astype(np.float16).astype(np.float64) - v).max())
    assert q.dtype == np.int16 and np.abs(q).max() <= 32767
    assert err < 5e-6 and f16 > 2e-4 and f16 / err > 50


def test_topology_once_metadata_and_plain_numpy(tmp_path, synthetic_data):
    d = synthetic_data
    n = 7
    path = _write(tmp_path / "t.mlmesh.npz", d, _frames(d, n), meta={"track_id": 3, "source": "clip.mp4"})
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist()]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert names.count("triangles.npy") == 1 and names.count("uv.npy") == 1
    # size: the topology once + 6 bytes per vertex per frame + 32 bytes per frame, + small headers
    V, F, T = d.n_vertices, len(d.triangles), len(d.uv)
    topology = F * 3 * 4 * 2 + T * 2 * 4
    assert topology + n * (V * 6 + 32) < path.stat().st_size < topology + n * (V * 6 + 32) + 8000
    with np.load(path, allow_pickle=False) as z:  # plain numpy reads it
        meta = json.loads(str(z["meta"][()]))
        q = z["vertices_q"]
        assert q.shape == (n, V, 3) and q.dtype == np.int16
        v0 = z["offset"][0] + z["scale"][0] * q[0].astype(np.float32)
    with load_mesh_sequence(path) as seq:
        np.testing.assert_array_equal(v0, seq.vertices_at(0))
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert meta["units"] == "m" and meta["coordinate_frame"] == OPENCV_CAMERA
    assert (meta["n_vertices"], meta["n_triangles"], meta["n_frames"]) == (V, F, n)
    assert (meta["first_frame"], meta["last_frame"], meta["has_uv"]) == (0, n - 1, True)
    assert meta["track_id"] == 3 and meta["source"] == "clip.mp4" and len(meta["topology_sha256"]) == 64
    assert 0 < meta["max_abs_error_m"] < 1e-5 and "offset" in meta["encoding"]


def test_without_uv_and_to_obj(tmp_path, synthetic_data):
    d = synthetic_data
    verts = _frames(d, 2)
    path = tmp_path / "plain.mlmesh.npz"
    with MeshSequenceWriter(path, triangles=d.triangles, n_vertices=d.n_vertices) as w:
        w.add(4, 0.2, verts[0])
        w.add(5, 0.25, verts[1])
    with load_mesh_sequence(path) as seq:
        assert seq.uv is None and seq.triangles_uv is None and not seq.meta["has_uv"]
        obj = seq.to_obj(1, tmp_path / "f.obj")
        lines = obj.read_text().splitlines()
        v = np.array([[float(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("v ")])
        assert len(v) == d.n_vertices and "frame 5" in "\n".join(lines[:4])
        np.testing.assert_allclose(v, seq.vertices_at(1) * [1, -1, -1], atol=1e-6)  # y-up, like per-frame OBJ
    path_uv = _write(tmp_path / "uv.mlmesh.npz", d, verts)
    with load_mesh_sequence(path_uv) as seq:
        assert "\nvt " in seq.to_obj(0, tmp_path / "g.obj").read_text()


def test_bad_input_names_the_file(tmp_path, synthetic_data):
    d = synthetic_data
    path = tmp_path / "bad.mlmesh.npz"
    w = _writer(path, d)
    v = _frames(d, 1)[0]
    with pytest.raises(ValueError, match=r"bad\.mlmesh\.npz.*\(1353, 3\)"):
        w.add(0, 0.0, v[:10])
    nan = v.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"bad\.mlmesh\.npz.*NaN"):
        w.add(0, 0.0, nan)
    w.add(5, 0.1, v)
    with pytest.raises(ValueError, match="not after the previous frame 5"):
        w.add(5, 0.2, v)
    w.abort()
    assert not path.exists() and not spool_path(path).exists()
    with pytest.raises(ValueError, match="triangle indices"):
        MeshSequenceWriter(path, triangles=d.triangles, n_vertices=10)


# ---------------------------------------------------------------------------------------------- refused files
def test_unfinished_and_damaged_files_are_refused(tmp_path, synthetic_data):
    d = synthetic_data
    path = tmp_path / "track_001.mlmesh.npz"
    w = _writer(path, d)
    for k, v in enumerate(_frames(d, 3)):
        w.add(k, k / 25, v)
    # a hard kill here: only the spool exists, never a file under the final name
    assert spool_path(path).exists() and not path.exists()
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(path)
    assert "--resume" in _one_line(e, path) and "spool" in str(e.value)
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(spool_path(path))
    assert "unfinished" in _one_line(e, spool_path(path))
    assert issubclass(WriterError, MLANetError)
    w.close()
    data = path.read_bytes()

    cut = tmp_path / "cut.mlmesh.npz"
    cut.write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(cut)
    assert "truncated or damaged" in _one_line(e, cut)

    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(other)
    assert "not an MLANet mesh sequence" in _one_line(e, other)

    def rewrite(name: str, change) -> Path:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays["meta"][()]))
        change(meta, arrays)
        arrays["meta"] = np.array(json.dumps(meta))
        out = tmp_path / name
        np.savez(out, **arrays)
        return out

    newer = rewrite("newer.npz", lambda m, a: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(newer)
    assert "newer" in _one_line(e, newer)
    short = rewrite("short.npz", lambda m, a: a.update(vertices_q=a["vertices_q"][:2]))
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(short)
    assert "inconsistent" in _one_line(e, short)
    with pytest.raises(WriterError) as e:
        load_mesh_sequence(tmp_path / "missing.mlmesh.npz")
    assert "no such" in _one_line(e, tmp_path / "missing.mlmesh.npz")


def test_exception_inside_with_keeps_the_frames_added(tmp_path, synthetic_data):
    d = synthetic_data
    path = tmp_path / "k.mlmesh.npz"
    with pytest.raises(KeyboardInterrupt):
        with _writer(path, d) as w:
            for k, v in enumerate(_frames(d, 4)):
                w.add(k, k / 25, v)
            raise KeyboardInterrupt
    with load_mesh_sequence(path) as seq:
        assert seq.frames.tolist() == [0, 1, 2, 3]
    assert not spool_path(path).exists()


# ---------------------------------------------------------------------------------------------- resume
def test_resume_from_a_spool_after_a_hard_kill(tmp_path, synthetic_data):
    d = synthetic_data
    verts = _frames(d, 12)
    path = tmp_path / "track_000.mlmesh.npz"
    w = _writer(path, d)
    for k in range(10):
        w.add(k, k / 25, verts[k])
    with open(spool_path(path), "ab") as fh:  # killed half-way through the next record
        fh.write(b"\x01" * 100)
    del w
    w = _writer(path, d)
    assert w.resume_from(6) == 6
    for k in (6, 7, 8):
        w.add(k, k / 25, verts[k + 3])
    w.close()
    with load_mesh_sequence(path) as seq:
        assert seq.frames.tolist() == list(range(9))
        np.testing.assert_allclose(seq.vertices[:6], verts[:6], atol=seq.max_abs_error_m)
        np.testing.assert_allclose(seq.vertices[6:], verts[9:12], atol=seq.max_abs_error_m)


def test_resume_from_a_finished_file(tmp_path, synthetic_data):
    d = synthetic_data
    verts = _frames(d, 10)
    path = _write(tmp_path / "track_000.mlmesh.npz", d, verts, meta={"track_id": 0})
    before = path.read_bytes()
    w = _writer(path, d)
    assert w.resume_from(10) == 10 and w.close() == path
    assert path.read_bytes() == before  # nothing after the resume point: left as it was
    w = _writer(path, d)
    assert w.resume_from(4) == 4
    w.add(7, 1.0, verts[9])
    w.close()
    with load_mesh_sequence(path) as seq:
        assert seq.frames.tolist() == [0, 1, 2, 3, 7] and seq.meta["track_id"] == 0
        np.testing.assert_allclose(seq.vertices_at(4), verts[9], atol=seq.max_abs_error_m)
    w = _writer(path, d)
    assert w.resume_from(0) == 0 and w.close() is None
    assert not path.exists()  # every frame was after the resume point
    other = MeshSequenceWriter(tmp_path / "x.mlmesh.npz", triangles=d.triangles[:-1], n_vertices=d.n_vertices)
    _write(other.path, d, verts[:2])
    with pytest.raises(WriterError, match="differs from this track's"):
        other.resume_from(5)


# ---------------------------------------------------------------------------------------------- mlanet-video
class _SquareDetector:
    """Finds the white square drawn into every frame (a stand-in for MediaPipe)."""

    def __call__(self, image):
        from mlanet.edge.types import Detection

        ys, xs = np.nonzero(image[:, :, 0] == 255)
        if not len(xs):
            return []
        return [Detection(box=np.array([xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]), score=0.9)]


class _Backend:
    def __init__(self, layout) -> None:
        from mlanet.preprocess import PreprocessCfg

        self.layout = layout
        from mlanet.model_metadata import ModelMetadata

        self.metadata = ModelMetadata(layout=layout, preprocess=PreprocessCfg(input_size=32), source="fake")
        self.calls = 0

    def __call__(self, crops):
        from mlanet.params import FaceParams

        self.calls += 1
        flat = FaceParams.neutral(self.layout, batch_size=crops.shape[0], depth_m=1.0).to_flat().numpy()
        flat[:, self.layout.slices()["expression"]] = 0.3 * np.sin(self.calls)  # moves from frame to frame
        return flat

    def close(self) -> None:
        pass


def _clip_folder(folder: Path, n: int) -> Path:
    cv2 = pytest.importorskip("cv2")
    folder.mkdir()
    for k in range(n):
        img = np.full((90, 120, 3), 40, np.uint8)
        img[20:70, 30 + k % 5: 80 + k % 5] = 255
        cv2.imwrite(str(folder / f"frame_{k:04d}.png"), img)
    return folder


def _run(model, folder: Path, out_dir: Path, *, resume: bool, max_frames: int | None, finish: str | None,
         seen: dict | None = None, **options):
    """One mlanet-video run through VideoRunOutputs (what video_cli does); ``finish=None`` is a hard kill."""
    from mlanet.edge.frames import ImageFolderSource
    from mlanet.edge.outputs import OutputOptions, VideoRunOutputs
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.tracking import FaceTracker, TrackerCfg
    from mlanet.preprocess import PreprocessCfg

    src = ImageFolderSource(folder, sequence=True, fps=25.0)
    outputs = VideoRunOutputs(out_dir, face_model=model, backend_metadata={"source": "fake"}, source=src,
                              pipeline_cfg=None, resume=resume,
                              options=OutputOptions(**{"video": False, "glb": False, **options}))
    if outputs.start_frame:
        src = ImageFolderSource(folder, sequence=True, fps=25.0, start_frame=outputs.start_frame)
    tracker = FaceTracker(TrackerCfg(roi_scale=PreprocessCfg(input_size=32).roi_scale), _SquareDetector())
    pipeline = FacePipeline(_Backend(model.layout), model, PipelineCfg(render_mode=None), tracker=tracker)
    if outputs.first_track_id:
        pipeline.tracker.next_id = outputs.first_track_id

    def write(result):
        outputs.write(result)
        if seen is not None:
            for f in result.faces:
                seen[(result.frame.index, f.track_id)] = np.array(f.vertices)

    remaining = None if max_frames is None else max_frames - outputs.start_frame
    pipeline.run(src, write, max_frames=remaining)
    if finish is not None:
        outputs.finish(status=finish)
    return outputs


def test_video_run_default_sequence_ctrl_c_hard_kill_and_resume(synthetic_model, tmp_path):
    from mlanet.edge.outputs import OutputOptions

    assert OutputOptions().meshes == "sequence"
    folder = _clip_folder(tmp_path / "clip", 45)
    out = tmp_path / "run"
    meshes = out / "meshes"
    seen: dict = {}
    # 1. Ctrl-C after 10 frames: finished files for the frames done
    _run(synthetic_model, folder, out, resume=False, max_frames=10, finish="interrupted", seen=seen)
    assert sorted(p.name for p in meshes.iterdir()) == ["track_000.mlmesh.npz"]
    with load_mesh_sequence(meshes / "track_000.mlmesh.npz") as seq:
        assert seq.frames.tolist() == list(range(10)) and seq.meta["track_id"] == 0
        assert seq.meta["face_model"]["model_id"] == synthetic_model.model_id and seq.meta["mesh_every"] == 1
    # 2. --resume, then a hard kill at frame 40 (the last checkpoint said 25 frames): only a spool
    _run(synthetic_model, folder, out, resume=True, max_frames=40, finish=None, seen=seen)
    assert json.loads((out / "run.json").read_text())["status"] == "running"
    assert (meshes / "track_001.mlmesh.npz.partial").exists() and not (meshes / "track_001.mlmesh.npz").exists()
    with pytest.raises(WriterError, match="--resume"):
        load_mesh_sequence(meshes / "track_001.mlmesh.npz")
    # 3. --resume again: the spool keeps frames 10-24 and is finished; the rest is a new track
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=None, finish="complete", seen=seen)
    assert outputs.start_frame == 25
    assert sorted(p.name for p in meshes.iterdir()) == [f"track_{i:03d}.mlmesh.npz" for i in range(3)]
    with np.load(out / "params.npz", allow_pickle=False) as z:
        rows = sorted(zip(z["track_id"].tolist(), z["frame_index"].tolist()))
    got = []
    for tid, frames in enumerate([range(0, 10), range(10, 25), range(25, 45)]):
        with load_mesh_sequence(meshes / f"track_{tid:03d}.mlmesh.npz") as seq:
            assert seq.frames.tolist() == list(frames) and seq.meta["track_id"] == tid
            for i, f in enumerate(seq.frames.tolist()):
                got.append((tid, f))
                np.testing.assert_allclose(seq.vertices_at(i), seen[(f, tid)], atol=seq.max_abs_error_m, rtol=0)
    assert got == rows  # one mesh per face per frame, the same rows as params.npz
    tracks = json.loads((out / "tracks.json").read_text())["tracks"]
    assert [t["mesh_sequence"] for t in tracks] == [f"meshes/track_{i:03d}.mlmesh.npz" for i in range(3)]
    assert not list(out.rglob("*.partial")) and not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_video_run_mesh_every_and_per_frame_obj_on_request(synthetic_model, tmp_path):
    folder = _clip_folder(tmp_path / "clip", 7)
    out = tmp_path / "seq"
    _run(synthetic_model, folder, out, resume=False, max_frames=None, finish="complete", mesh_every=3)
    with load_mesh_sequence(out / "meshes" / "track_000.mlmesh.npz") as seq:
        assert seq.frames.tolist() == [0, 3, 6] and seq.meta["mesh_every"] == 3
    out = tmp_path / "obj"
    _run(synthetic_model, folder, out, resume=False, max_frames=None, finish="complete", meshes="obj", mesh_every=3)
    assert sorted(p.name for p in (out / "meshes" / "track_000").iterdir()) == [
        "frame_000000.obj", "frame_000003.obj", "frame_000006.obj"]
    assert not list(out.rglob("*.mlmesh.npz"))


def test_cli_meshes_choice():
    from mlanet.edge.video_cli import build_parser

    from mlanet.edge.outputs import MESH_KINDS

    p = build_parser()
    action = next(a for a in p._actions if a.dest == "meshes")
    assert tuple(action.choices) == (*MESH_KINDS, "none")  # the CLI offers what the outputs know
    assert p.parse_args(["in.mp4", "--out", "o"]).meshes == "sequence"
    for kind in ("sequence", "obj", "ply", "none"):
        assert p.parse_args(["in.mp4", "--out", "o", "--meshes", kind]).meshes == kind
    with pytest.raises(SystemExit) as e:
        p.parse_args(["in.mp4", "--out", "o", "--meshes", "fbx"])
    assert e.value.code == 2
