"""``meshes/track_NNN.mlmesh.npz``: one compact mesh sequence per track (``--meshes sequence``,
the default): topology once, int16 vertices per frame, metres, camera frame; see
:mod:`mlanet.edge.writers.mesh_sequence` (``load_mesh_sequence``).

``meshes/track_NNN.mlmesh.npz.partial`` is a sequence's spool while the run is going (never a
finished file). Resume cuts every track's sequence in the folder back to the frames before the
resume point, whatever ``--meshes`` is now (from its spool after a hard kill, which is then
finished; a sequence left empty is removed), so this sink is always on and only writes frames
with ``--meshes sequence``. Independent photos get OBJs instead (:mod:`.meshes`).
"""

from __future__ import annotations

import logging
import os

from mlanet.fileutil import error_line
from mlanet.edge.protocols import TrackSequenceWriter
from mlanet.edge.types import FrameResult
from mlanet.edge.sinks.base import RunContext, SinkBase

log = logging.getLogger(__name__)


class MeshSequenceSink(SinkBase):
    """Writes one :class:`~mlanet.edge.writers.mesh_sequence.MeshSequenceWriter` per track and
    records ``mesh_sequence`` for tracks.json."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._writers: dict[int, TrackSequenceWriter] = {}  # track id -> MeshSequenceWriter
        self._on = ctx.options.meshes == "sequence"

    def _writer(self, track_id: int) -> TrackSequenceWriter:
        from mlanet.edge.writers.mesh_sequence import MeshSequenceWriter, sequence_path

        ctx = self.ctx
        tri, uv, tri_uv = ctx.topology()
        return MeshSequenceWriter(
            sequence_path(ctx.out_dir / "meshes", track_id),
            triangles=tri, n_vertices=int(ctx.face_model.n_vertices), uv=uv, triangles_uv=tri_uv,
            meta={"track_id": int(track_id),
                  "face_model": {k: ctx.run_info["face_model"].get(k) for k in ("model_id", "content_sha256")},
                  "source": ctx.source_name, "fps": ctx.fps, "mesh_every": ctx.options.mesh_every})

    def begin(self, resume_from: int | None) -> None:
        """On resume: cut every track's sequence back to the frames before ``resume_from`` (an
        unfinished spool is finished with its frames kept, a finished file holding later frames
        is rewritten, one left empty is removed). Old tracks get no new frames (ids continue
        after the largest one), so each is finished here."""
        from mlanet.edge.writers.mesh_sequence import SPOOL_SUFFIX, SUFFIX

        folder = self.ctx.out_dir / "meshes"
        if resume_from is None or not folder.is_dir():
            return
        ids = set()
        for p in folder.glob(f"track_*{SUFFIX}*"):
            stem = p.name[len("track_"):]
            for end in (SUFFIX + SPOOL_SUFFIX, SUFFIX):
                if stem.endswith(end) and stem[: -len(end)].isdigit():
                    ids.add(int(stem[: -len(end)]))
                    break
        for tid in sorted(ids):
            writer = self._writer(tid)
            kept = writer.resume_from(resume_from)
            writer.close()
            log.info("resume: %s keeps %d frames", writer.path.name, kept)

    def write(self, result: FrameResult, time_s: float) -> None:
        frame = result.frame
        if not self._on or (frame.independent and frame.name is not None) or frame.index % self.ctx.options.mesh_every:
            return
        for f in result.faces:
            if f.vertices is None:
                raise RuntimeError(f"track {f.track_id}: no mesh decoded for frame {frame.index} (a mesh sink needs_meshes)")
            writer = self._writers.get(f.track_id)
            if writer is None:
                writer = self._writers[f.track_id] = self._writer(f.track_id)
            writer.add(frame.index, time_s, f.vertices)

    def finish(self, status: str) -> None:
        """Finish every sequence with the frames done (each on its own; the first error is raised,
        its spool stays for --resume), then list every finished sequence of the run's tracks."""
        from mlanet.edge.writers.mesh_sequence import sequence_path

        writers, self._writers = self._writers, {}
        first: Exception | None = None
        for writer in writers.values():
            try:
                writer.truncate_from(self.ctx.frames_done)  # faces of a frame in flight when the run stopped
                writer.close()
            except Exception as exc:  # noqa: BLE001 - its spool stays for --resume
                if first is None:
                    first = exc
                else:
                    log.warning("%s: %s", writer.path, error_line(exc))
        ctx = self.ctx
        for tid in sorted(set(ctx.rows.arrays(ctx.frames_done)["track_id"].tolist())):
            seq = sequence_path(ctx.out_dir / "meshes", tid)
            if seq.exists():
                ctx.track_files.setdefault(tid, {})["mesh_sequence"] = os.path.relpath(seq, ctx.out_dir)
        if first is not None:
            raise first
