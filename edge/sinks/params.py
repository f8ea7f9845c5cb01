"""``params.npz``: one row per face per frame (:data:`~.base.PARAMS_ARRAYS`) + ``frames_done``.

Written atomically at the end from the run's rows (``ctx.rows``). During the run each checkpoint
writes only the rows since the previous one, as a *part* ``.params.parts/part_NNNNNN.npz`` (its
rows, ``first_frame`` and ``frames_done``; each part atomic), so a checkpoint costs the same after
an hour as after a second (rewriting the whole file every checkpoint cost 0.12 ms per frame already
done: 32 ms at frame 275 of the multi-face clip, seconds after minutes of video), and the rows it
wrote leave memory (:meth:`~.base.ParamRows.spill`): the other sinks read them back from the parts
at the end. The end writes params.npz and removes the parts.

On ``--resume`` the rows are params.npz's (if any) followed by the parts that continue it
(``first_frame`` equal to the frames held so far; a hard kill leaves the parts of the killed run);
``frames_done`` is the last one's. :meth:`ParamsNpzSink.begin` then writes params.npz for the
frames the run continues from and removes the parts, so what the next run reads is one file again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from mlanet.edge.sinks.base import PARAMS_ARRAYS, RunContext, SinkBase

#: The folder of the checkpoint parts, inside the output folder.
PARTS_DIR = ".params.parts"


class ParamsNpzSink(SinkBase):
    """Writes ``params.npz`` from ``ctx.rows`` (at the end), checkpoint parts meanwhile; on resume loads
    the previous rows into ``ctx.rows``."""

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._rows_saved = 0  # rows in params.npz + the parts of this run
        self._frames_saved = 0  # frames they cover
        self._next_part = 0

    @property
    def path(self) -> Path:
        return self.ctx.out_dir / "params.npz"

    @property
    def parts_dir(self) -> Path:
        return self.ctx.out_dir / PARTS_DIR

    def resumable_frames(self) -> int | None:
        """Loads the previous runs' rows of frames before their ``frames_done`` (params.npz, then the
        parts that continue it); 0 with neither."""
        rows = self.ctx.rows
        missing_name = Path(self.ctx.source_name).name
        done = 0
        if self.path.exists():
            with np.load(self.path, allow_pickle=False) as z:
                done = int(z["frames_done"])
                keep = z["frame_index"] < done
                rows.extend({k: z[k][keep] for k in PARAMS_ARRAYS if k in z.files}, missing_name)
        for part in sorted(self.parts_dir.glob("part_*.npz")):
            with np.load(part, allow_pickle=False) as z:
                if int(z["first_frame"]) != done:  # a part that does not continue what is held
                    break
                rows.extend({k: z[k] for k in PARAMS_ARRAYS}, missing_name)
                done = int(z["frames_done"])
        return done

    def begin(self, resume_from: int | None) -> None:
        if resume_from:  # one file for the frames the run continues from (ctx.rows holds exactly those)
            self._save()
            self.ctx.rows.spill(len(self.ctx.rows), self.path)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        self._rows_saved, self._frames_saved = len(self.ctx.rows), resume_from or 0

    def checkpoint(self) -> None:
        """Write the rows of the frames since the previous checkpoint as the next part."""
        from mlanet.edge.writers.tables import write_npz_atomic

        ctx = self.ctx
        n = ctx.rows.n_before(ctx.frames_done)
        part = {**ctx.rows.row_arrays(self._rows_saved, n), "first_frame": np.array(self._frames_saved, np.int64),
                "frames_done": np.array(ctx.frames_done, np.int64)}
        path = write_npz_atomic(self.parts_dir / f"part_{self._next_part:06d}.npz", part, compress=False)
        ctx.rows.spill(n, path)  # the part holds them now: memory keeps only their frame and track ids
        self._next_part += 1
        self._rows_saved, self._frames_saved = n, ctx.frames_done

    def finish(self, status: str) -> None:
        self._save()
        self.ctx.rows.replace_files(self.path)  # params.npz holds every row: the parts can go
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def _save(self) -> None:
        from mlanet.edge.writers.tables import write_params_npz

        write_params_npz(self.path, **self.ctx.rows.arrays(self.ctx.frames_done))
