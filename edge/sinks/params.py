"""``params.npz``: one row per face per frame (:data:`~.base.PARAMS_ARRAYS`) + ``frames_done``.

Written atomically at every checkpoint and at the end from the run's rows (``ctx.rows``); on
``--resume`` it is what the run continues from (its ``frames_done``; rows at or after it are dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlanet.edge.sinks.base import PARAMS_ARRAYS, SinkBase


class ParamsNpzSink(SinkBase):
    """Writes ``params.npz`` from ``ctx.rows``; on resume loads the previous rows into ``ctx.rows``."""

    @property
    def path(self) -> Path:
        return self.ctx.out_dir / "params.npz"

    def resumable_frames(self) -> int | None:
        """Loads the previous run's rows of frames before its ``frames_done`` (0 with no params.npz)."""
        if not self.path.exists():
            return 0
        rows = self.ctx.rows
        with np.load(self.path, allow_pickle=False) as z:
            done = int(z["frames_done"])
            keep = z["frame_index"] < done
            for k in PARAMS_ARRAYS:
                if k in z.files:
                    rows.cols[k] = list(z[k][keep])
                else:  # a run from before source_name was recorded
                    rows.cols[k] = [Path(self.ctx.source_name).name] * int(keep.sum())
        return done

    def checkpoint(self) -> None:
        self._save()

    def finish(self, status: str) -> None:
        self._save()

    def _save(self) -> None:
        from mlanet.edge.writers.tables import write_params_npz

        write_params_npz(self.path, **self.ctx.rows.arrays(self.ctx.frames_done))
