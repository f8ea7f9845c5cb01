"""``tracks/track_NNN.glb``: per track, the mesh + ARKit morph targets + head pose, animated over
time (see :mod:`mlanet.edge.writers.gltf`), with ``--texture`` a photo texture from the track's
most frontal frame. Written at the end (also after Ctrl-C or a failure) from the run's rows, so
resume needs nothing of its own.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from mlanet.geometry.rotations import euler_to_matrix
from mlanet.params import FaceParams
from mlanet.edge.types import FrameResult
from mlanet.edge.sinks.base import RunContext, SinkBase


class GlbSink(SinkBase):
    """Writes one GLB per track at :meth:`finish` and records ``glb`` for tracks.json."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._best_texture: dict[int, tuple[float, np.ndarray]] = {}  # track id -> (pitch + yaw rad, texture)

    def write(self, result: FrameResult, time_s: float) -> None:
        ctx = self.ctx
        if not ctx.options.texture or ctx.texture_fn is None:
            return
        rotation = ctx.layout.slices()["rotation"]
        for f in result.faces:
            rot = np.asarray(f.params[rotation])
            frontal = float(abs(rot[0]) + abs(rot[1]))  # pitch + yaw, radians
            best = self._best_texture.get(f.track_id)
            if best is None or frontal < best[0] - 0.02:
                self._best_texture[f.track_id] = (frontal, ctx.texture_fn(result.frame.image, f))

    def finish(self, status: str) -> None:
        from mlanet.edge.writers.gltf import write_track_glb
        from mlanet.edge.writers.tables import arkit_morph_mesh

        ctx = self.ctx
        tracks = ctx.rows.tracks(ctx.frames_done)
        if not tracks:
            return
        a = ctx.rows.arrays(ctx.frames_done)
        s = ctx.layout.slices()
        mesh = arkit_morph_mesh(ctx.face_model, ctx.arkit)  # topology and morph targets: once for all tracks
        with torch.no_grad():
            for tid, tr in tracks.items():
                rows = tr["rows"]
                fp = FaceParams.from_flat(torch.from_numpy(a["params"][rows]), ctx.layout)
                neutral = ctx.face_model.shape(torch.tensor([tr["identity"]]), torch.zeros(1, ctx.layout.expression))
                path = ctx.out_dir / "tracks" / f"track_{tid:03d}.glb"
                write_track_glb(
                    path,
                    **{**mesh, "neutral_vertices": neutral[0].numpy()},
                    times_s=a["time_s"][rows],
                    weights=ctx.arkit.weights(a["params"][rows][:, s["expression"]]),
                    rotations=euler_to_matrix(fp.rotation).numpy(),
                    translations=fp.translation.numpy(),
                    texture_png=self._best_texture.get(tid, (None, None))[1],
                )
                ctx.track_files.setdefault(tid, {})["glb"] = os.path.relpath(path, ctx.out_dir)
