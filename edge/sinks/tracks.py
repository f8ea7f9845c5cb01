"""``tracks.json``: per track its frames, first/last frame, source, mean identity/albedo and the
files other sinks wrote for it (``glb``, ``mesh_sequence``; from ``ctx.track_files``).

Written atomically at the end from the run's rows; register it after the sinks whose files it lists.
"""

from __future__ import annotations

from mlanet.fileutil import write_json_atomic
from mlanet.edge.sinks.base import SinkBase


class TracksJsonSink(SinkBase):
    """Writes ``tracks.json`` = ``{"tracks": [{track_id, frames, first_frame, last_frame,
    source_name, identity, albedo, <file kind>: <path relative to the output folder>...}, ...]}``."""

    def finish(self, status: str) -> None:
        ctx = self.ctx
        tracks = ctx.rows.tracks(ctx.frames_done)
        for tid, tr in tracks.items():
            tr.pop("rows")
            files = ctx.track_files.get(tid, {})
            tr.update({k: files[k] for k in sorted(files)})
        write_json_atomic(ctx.out_dir / "tracks.json", {"tracks": list(tracks.values())})
