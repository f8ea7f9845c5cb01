"""Per-frame meshes with UVs (``--meshes obj|ply``; y-up, metres; see :mod:`mlanet.edge.writers.meshes`).

``meshes/track_003/frame_000120.obj`` per face per frame (every ``mesh_every`` frames); a photo
folder / single image gets ``meshes/IMG_0042.jpg/track_003.obj`` (PLY with ``--meshes ply``,
OBJ with ``--meshes sequence``: a photo is not a sequence). Each file is written atomically and
complete, so checkpoints, finish and resume have nothing to do (resume rewrites later frames).
"""

from __future__ import annotations

from mlanet.edge.types import FrameResult
from mlanet.edge.sinks.base import SinkBase


class FrameMeshSink(SinkBase):
    """Writes one OBJ/PLY per face per frame (and per face per independent photo)."""

    def write(self, result: FrameResult, time_s: float) -> None:
        from mlanet.edge.writers.meshes import write_obj, write_ply

        ctx, frame = self.ctx, result.frame
        kind = ctx.options.meshes
        photo = frame.name if frame.independent else None
        if frame.index % ctx.options.mesh_every or (kind == "sequence" and photo is None):
            return  # video frames of a sequence: see mesh_sequence
        tri, uv, tri_uv = ctx.topology()
        for f in result.faces:
            if photo is not None:
                folder, stem = ctx.out_dir / "meshes" / photo, f"track_{f.track_id:03d}"
            else:
                folder, stem = ctx.out_dir / "meshes" / f"track_{f.track_id:03d}", f"frame_{frame.index:06d}"
            if f.vertices is None:
                raise RuntimeError(f"track {f.track_id}: no mesh decoded for frame {frame.index} (a mesh sink needs_meshes)")
            if kind in ("obj", "sequence"):
                write_obj(folder / f"{stem}.obj", f.vertices, tri, uv, tri_uv)
            else:
                write_ply(folder / f"{stem}.ply", f.vertices, tri, uv, tri_uv)
