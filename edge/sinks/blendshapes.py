"""``blendshapes.csv``: ``frame, time_s, track_id`` + one ARKit weight per column (expression
shapes sharing an ARKit name merged; see :class:`~mlanet.edge.writers.tables.BlendshapeCsvWriter`).

One line per face per frame, appended and flushed as it is written; resume cuts it back to the
frames before the resume point; the end drops the rows of a frame in flight (Ctrl-C).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mlanet.edge.types import FrameResult
from mlanet.edge.sinks.base import SinkBase

if TYPE_CHECKING:
    from mlanet.edge.writers.tables import BlendshapeCsvWriter


class BlendshapeCsvSink(SinkBase):
    """Writes ``blendshapes.csv``: per face, the (A,) unitless ARKit weights of its (K_exp,) expression
    coefficients (``ArkitMapping.weights``; not clipped), ``time_s`` in seconds."""

    _csv: BlendshapeCsvWriter | None = None

    def begin(self, resume_from: int | None) -> None:
        from mlanet.edge.writers.tables import BlendshapeCsvWriter

        self._csv = BlendshapeCsvWriter(self.ctx.out_dir / "blendshapes.csv", self.ctx.arkit.names,
                                        resume_before_frame=resume_from if resume_from else None)

    def write(self, result: FrameResult, time_s: float) -> None:
        if self._csv is None:
            raise RuntimeError("blendshapes.csv: write() before begin() or after finish()")
        expression = self.ctx.layout.slices()["expression"]
        for f in result.faces:
            expr = np.asarray(f.params[expression])
            self._csv.write(result.frame.index, time_s, f.track_id, self.ctx.arkit.weights(expr))

    def checkpoint(self) -> None:
        if self._csv is not None:
            self._csv.flush()

    def finish(self, status: str) -> None:
        csv, self._csv = self._csv, None
        if csv is not None:
            try:
                if csv.n_rows > self.ctx.rows.n_before(self.ctx.frames_done):
                    csv.truncate_from(self.ctx.frames_done)  # rows of a frame in flight when the run stopped
            finally:
                csv.close()
