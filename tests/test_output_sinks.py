"""Output sinks (mlanet.edge.sinks): the registry, the call protocol and resume, with a toy format
registered the way a new one would be (one class + one register_sink line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_mesh_sequence import _clip_folder, _run

from mlanet.edge import sinks
from mlanet.edge.sinks import SinkBase, register_sink, unregister_sink


class FrameLogSink(SinkBase):
    """Toy format: ``frame_log.txt``, one line ``<frame> <faces> <time_s>`` per frame; resume keeps the lines before it."""

    calls: list[tuple] = []

    @property
    def path(self) -> Path:
        return self.ctx.out_dir / "frame_log.txt"

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.exists() else []

    def resumable_frames(self) -> int | None:
        self.calls.append(("resumable_frames",))
        return len(self._lines())

    def begin(self, resume_from):
        self.calls.append(("begin", resume_from))
        keep = [ln for ln in self._lines() if int(ln.split()[0]) < resume_from] if resume_from is not None else []
        self.path.write_text("".join(keep))
        self._fh = open(self.path, "a")

    def write(self, result, time_s):
        self.calls.append(("write", result.frame.index))
        self._fh.write(f"{result.frame.index} {len(result.faces)} {time_s:.3f}\n")

    def checkpoint(self):
        self.calls.append(("checkpoint", self.ctx.frames_done))
        self._fh.flush()

    def finish(self, status):
        self.calls.append(("finish", status, self.ctx.frames_done))
        self._fh.close()
        self.path.write_text("".join(ln for ln in self._lines() if int(ln.split()[0]) < self.ctx.frames_done))


@pytest.fixture
def frame_log():
    FrameLogSink.calls = []
    spec = register_sink("frame_log", FrameLogSink, flag="--frame-log", help="toy: one line per frame")
    try:
        yield spec
    finally:
        unregister_sink("frame_log")


def _frames(out: Path) -> list[int]:
    return [int(ln.split()[0]) for ln in (out / "frame_log.txt").read_text().splitlines()]


def test_builtin_sinks_registered_in_order():
    names = [s.name for s in sinks.registered_sinks()]
    assert names == ["blendshapes_csv", "mesh_sequence", "frame_meshes", "glb", "overlay_video", "tracks_json",
                     "params_npz"]
    with pytest.raises(ValueError, match="already registered"):
        register_sink("glb", SinkBase)


def test_toy_sink_protocol_ctrl_c_and_resume(synthetic_model, tmp_path, frame_log):
    folder = _clip_folder(tmp_path / "clip", 45)
    out = tmp_path / "run"
    # opt-in: not called without OutputOptions.extra
    _run(synthetic_model, folder, tmp_path / "plain", resume=False, max_frames=5, finish="complete")
    assert FrameLogSink.calls == [] and not (tmp_path / "plain" / "frame_log.txt").exists()
    # Ctrl-C after 30 frames
    _run(synthetic_model, folder, out, resume=False, max_frames=30, finish="interrupted", extra=("frame_log",))
    calls = FrameLogSink.calls
    assert calls[0] == ("begin", None) and calls[-1] == ("finish", "interrupted", 30)
    assert [c[1] for c in calls if c[0] == "write"] == list(range(30))
    assert ("checkpoint", 25) in calls and calls.index(("checkpoint", 25)) == calls.index(("write", 24)) + 1
    assert _frames(out) == list(range(30))
    assert json.loads((out / "run.json").read_text())["options"]["extra"] == ["frame_log"]
    # resume continues at 30 (params.npz and the toy file agree) and the toy file continues too
    FrameLogSink.calls = []
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=None, finish="complete", extra=("frame_log",))
    assert outputs.start_frame == 30
    assert FrameLogSink.calls[:2] == [("resumable_frames",), ("begin", 30)]
    assert FrameLogSink.calls[-1] == ("finish", "complete", 45)
    assert _frames(out) == list(range(45))


def test_hard_kill_and_the_fewest_frames_any_sink_holds(synthetic_model, tmp_path, frame_log):
    folder = _clip_folder(tmp_path / "clip", 45)
    out = tmp_path / "run"
    # hard kill at frame 40: the checkpoint said 25, the toy file holds 40 lines -> resume cuts it back to 25
    _run(synthetic_model, folder, out, resume=False, max_frames=40, finish=None, extra=("frame_log",))
    assert not any(c[0] == "finish" for c in FrameLogSink.calls)
    assert FrameLogSink.calls[0] == ("begin", None)
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=35, finish="interrupted",
                   extra=("frame_log",))
    assert outputs.start_frame == 25 and _frames(out) == list(range(35))
    # the toy file losing lines: the run continues at the fewest frames any sink holds (12, not 35)
    (out / "frame_log.txt").write_text("".join(f"{k} 1 0\n" for k in range(12)))
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=None, finish="complete",
                   extra=("frame_log",))
    assert outputs.start_frame == 12 and _frames(out) == list(range(45))
    with np.load(out / "params.npz", allow_pickle=False) as z:
        assert sorted(set(z["frame_index"].tolist())) == list(range(45)) and int(z["frames_done"]) == 45
        assert len(z["frame_index"]) == len(set(z["frame_index"].tolist()))  # rows at or after 12 were dropped once


def test_full_meshes_only_for_sinks_that_read_them(frame_log):
    from mlanet.edge.outputs import OutputOptions

    assert sinks.meshes_needed(OutputOptions())  # mesh sequences
    assert sinks.meshes_needed(OutputOptions(meshes="obj"))
    assert not sinks.meshes_needed(OutputOptions(meshes=None))
    assert sinks.meshes_needed(OutputOptions(meshes=None, texture=True))  # GLB texture unwrapping
    assert not sinks.meshes_needed(OutputOptions(meshes=None, texture=True, glb=False))
    unregister_sink("frame_log")
    register_sink("frame_log", FrameLogSink, flag="--frame-log", needs_meshes=lambda o: True)
    assert not sinks.meshes_needed(OutputOptions(meshes=None))
    assert sinks.meshes_needed(OutputOptions(meshes=None, extra=("frame_log",)))


def test_opt_in_sink_gets_a_cli_flag(frame_log):
    from mlanet.edge import video_cli

    args = video_cli.build_parser().parse_args(["in.mp4", "--out", "o", "--frame-log"])
    assert args.sink_frame_log is True
    assert video_cli.build_parser().parse_args(["in.mp4", "--out", "o"]).sink_frame_log is False


def test_params_checkpoints_write_only_the_new_rows_and_resume_reads_them(synthetic_model, tmp_path):
    """Each checkpoint writes the rows since the previous one (a part), never the whole run; after a hard
    kill the parts give the rows back; a part that does not continue the rows held is not used."""
    from mlanet.edge.sinks.params import PARTS_DIR

    folder = _clip_folder(tmp_path / "clip", 80)
    out = tmp_path / "run"
    _run(synthetic_model, folder, out, resume=False, max_frames=78, finish=None)  # hard kill at frame 78
    parts = sorted((out / PARTS_DIR).glob("part_*.npz"))
    assert not (out / "params.npz").exists() and len(parts) == 3
    spans = []
    for part in parts:
        with np.load(part, allow_pickle=False) as z:
            spans.append((int(z["first_frame"]), int(z["frames_done"])))
            assert sorted(set(z["frame_index"].tolist())) == list(range(*spans[-1]))  # its own frames only
    assert spans == [(0, 25), (25, 50), (50, 75)]
    # a lost middle part: the rows continue only as far as the parts do without a gap
    parts[1].unlink()
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=60, finish=None)  # killed again at 60
    assert outputs.start_frame == 25
    with np.load(out / "params.npz", allow_pickle=False) as z:  # begin wrote the frames it continues from
        assert int(z["frames_done"]) == 25 and sorted(set(z["frame_index"].tolist())) == list(range(25))
    with np.load(out / PARTS_DIR / "part_000000.npz", allow_pickle=False) as z:  # this run's parts: after them
        assert (int(z["first_frame"]), int(z["frames_done"])) == (25, 50)
    outputs = _run(synthetic_model, folder, out, resume=True, max_frames=None, finish="complete")
    assert outputs.start_frame == 50  # params.npz (25) + the part that continues it (25-49)
    with np.load(out / "params.npz", allow_pickle=False) as z:
        fi = z["frame_index"].tolist()
        assert int(z["frames_done"]) == 80 and sorted(set(fi)) == list(range(80)) and len(fi) == len(set(fi))
    assert not (out / PARTS_DIR).exists() and not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_rows_a_checkpoint_wrote_leave_memory_and_every_output_still_has_them(synthetic_model, tmp_path):
    """ParamRows.spill: after each checkpoint only the rows since it stay in memory; the end (params.npz,
    tracks.json, GLB) reads the others back from the parts, identical to what was fitted; a resumed run
    spills the rows it continues from to params.npz."""
    folder = _clip_folder(tmp_path / "clip", 60)
    out = tmp_path / "run"
    seen: dict = {}
    outputs = _run(synthetic_model, folder, out, resume=False, max_frames=58, finish=None, seen=seen)  # hard kill
    rows = outputs.ctx.rows
    assert rows.n_spilled == rows.n_before(50) > 0 and rows.n_in_memory == len(rows) - rows.n_before(50)
    assert rows.max_track_id() == max(t for _, t in seen)
    a = rows.arrays(58)
    assert sorted(set(a["frame_index"].tolist())) == list(range(58)) and len(a["frame_index"]) == len(seen)
    assert a["params"].dtype == np.float32 and a["frame_index"].dtype == np.int64 and a["source_name"].dtype.kind == "U"
    with pytest.raises(RuntimeError, match="already in"):
        rows.keep_before(40)  # frames a part holds cannot be dropped
    with pytest.raises(ValueError, match="not held in memory"):
        rows.spill(len(rows) + 1, out / "x.npz")
    # a complete run: params.npz and the GLBs hold every frame, the parts are gone
    out2 = tmp_path / "run2"
    seen2: dict = {}
    outputs = _run(synthetic_model, folder, out2, resume=False, max_frames=None, finish="complete", seen=seen2, glb=True)
    with np.load(out2 / "params.npz", allow_pickle=False) as z:
        fi, tid = z["frame_index"].tolist(), z["track_id"].tolist()
    assert sorted(set(fi)) == list(range(60)) and set(zip(fi, tid)) == set(seen2)
    tracks = json.loads((out2 / "tracks.json").read_text())["tracks"]
    assert sum(t["frames"] for t in tracks) == len(seen2) and all((out2 / t["glb"]).exists() for t in tracks)
    # after the end the spilled rows are read from params.npz (the parts are gone)
    assert not (out2 / ".params.parts").exists()
    assert sorted(set(outputs.ctx.rows.arrays(60)["frame_index"].tolist())) == list(range(60))
    # resume after a hard kill: the rows it continues from are spilled to params.npz at once
    out3 = tmp_path / "run3"
    _run(synthetic_model, folder, out3, resume=False, max_frames=30, finish=None)
    outputs = _run(synthetic_model, folder, out3, resume=True, max_frames=None, finish="complete")
    assert outputs.start_frame == 25
    with np.load(out3 / "params.npz", allow_pickle=False) as z:
        assert sorted(set(z["frame_index"].tolist())) == list(range(60))


def test_param_rows_read_back_from_their_files_are_the_rows_added(tmp_path):
    from mlanet.edge.sinks import ParamRows
    from mlanet.edge.types import FaceFit, Frame, FrameResult
    from mlanet.edge.writers.tables import write_npz_atomic
    from mlanet.params import ParamLayout
    from mlanet.preprocess import CropBox

    layout = ParamLayout(identity=4, expression=3, albedo=2)
    rng = np.random.default_rng(0)
    rows = ParamRows(layout)
    for i in range(9):  # 1 or 2 faces per frame; names of different lengths (a photo folder)
        frame = Frame(np.zeros((4, 4, 3), np.uint8), i, i * 40_000_000, "clip.mp4", name="x" * (i + 1))
        faces = [FaceFit(t, CropBox(1.0 * i, 2.0, 30.0 + t), rng.normal(size=layout.total).astype(np.float32),
                         rng.normal(size=layout.total).astype(np.float32), None,
                         rng.normal(size=(68, 2)).astype(np.float32)) for t in range(1 + i % 2)]
        rows.add(FrameResult(frame, faces), i * 0.04)
    expected = rows.arrays(9)
    for stop_frame, name in ((3, "a.npz"), (7, "b.npz")):  # spill as the params checkpoints do
        n = rows.n_before(stop_frame)
        path = write_npz_atomic(tmp_path / name, rows.row_arrays(rows.n_spilled, n), compress=False)
        rows.spill(n, path)
    assert rows.n_in_memory == len(rows) - rows.n_before(7) and rows.n_spilled == rows.n_before(7)
    got = rows.arrays(9)
    assert set(got) == set(expected)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])
        assert got[k].dtype == expected[k].dtype or k == "source_name"
    for start, stop in ((0, 2), (2, 9), (len(rows) - 3, len(rows))):  # slices across the files and memory
        part = rows.row_arrays(start, stop)
        np.testing.assert_array_equal(part["params"], expected["params"][start:stop])
        assert part["source_name"].tolist() == expected["source_name"][start:stop].tolist()
    assert rows.n_before(5) == int((expected["frame_index"] < 5).sum()) and rows.max_track_id() == 1
    rows.keep_before(8)  # frames in memory can still be dropped
    assert rows.arrays(8)["frame_index"].max() == 7
    write_npz_atomic(tmp_path / "all.npz", rows.arrays(8), compress=False)
    rows.replace_files(tmp_path / "all.npz")
    (tmp_path / "a.npz").unlink()
    (tmp_path / "b.npz").unlink()
    np.testing.assert_array_equal(rows.arrays(8)["landmarks2d"], expected["landmarks2d"][:rows.n_before(8)])
