"""Writers for ``mlanet-video`` outputs (import the submodules; nothing heavy is imported here).

- :mod:`.video` — :class:`~.video.H264VideoWriter`: H.264 (libx264, yuv420p, BT.709) MP4/MKV/MOV
  through PyAV, written to a temporary file and renamed into place on ``close()``; ``--resume``
  re-encodes the first frames of an existing video; :func:`~.video.count_video_frames`.
- :mod:`.meshes` — :func:`~.meshes.write_obj` (OBJ + MTL + PNG texture) and
  :func:`~.meshes.write_ply` (binary PLY with per-corner texcoords), per-frame meshes in a
  y-up frame.
- :mod:`.mesh_sequence` — :class:`~.mesh_sequence.MeshSequenceWriter` and
  :func:`~.mesh_sequence.load_mesh_sequence`: one compact ``*.mlmesh.npz`` per face track
  (topology once, int16 vertices per frame with a per-frame offset and scale, self-describing
  metadata), spooled to ``<file>.partial`` while frames arrive, resumable; mlanet-video's default.
- :mod:`.gltf` — :func:`~.gltf.write_track_glb` / :class:`~.gltf.GlbTrackWriter`: one
  self-contained GLB 2.0 per face track (mesh with UVs and morph targets named with ARKit
  names, animated morph weights and head pose); :func:`~.gltf.read_track_animation`.
- :mod:`.tables` — :class:`~.tables.BlendshapeCsvWriter` (per-frame ARKit blendshape CSV,
  appended and flushed row by row, resumable), :class:`~.tables.ArkitMapping` (model
  expressions -> ARKit names), :func:`~.tables.write_params_npz`, :func:`~.tables.write_json`.

Every file is either written through a temporary file beside the target and renamed into
place (video, meshes, GLB, npz, JSON, mesh sequences, the last from a spool beside them), or
appended row by row and flushed (CSV), so an interrupted run never leaves a half-written file
under a final name, except the CSV whose last line may be incomplete after a hard kill
(``BlendshapeCsvWriter`` drops it on resume).
"""

from __future__ import annotations

from mlanet.errors import MLANetError
from mlanet.fileutil import atomic_file, write_bytes_atomic  # re-exported: the writers' atomic file helpers


class WriterError(MLANetError):
    """An output file cannot be written, resumed or read back; the message names the file."""


__all__ = ["WriterError", "atomic_file", "write_bytes_atomic"]
