"""Output formats of ``mlanet-video``: one :class:`~.base.OutputSink` per format, registered here.

A new format is one new module in this package (a class following :class:`~.base.OutputSink`,
usually a :class:`~.base.SinkBase`) plus one :func:`~.base.register_sink` line below; an opt-in
format passes ``flag="--my-format"`` and mlanet-video gets that flag. Sinks are called in the
order registered: tracks.json lists files the sinks before it wrote, and params.npz goes last.
"""

from __future__ import annotations

from mlanet.edge.sinks.base import (PARAMS_ARRAYS, OutputSink, ParamRows, RunContext, SinkBase, SinkSpec, meshes_needed,
                   register_sink, registered_sinks, sinks_for, unregister_sink)
from mlanet.edge.sinks.blendshapes import BlendshapeCsvSink
from mlanet.edge.sinks.glb import GlbSink
from mlanet.edge.sinks.mesh_sequence import MeshSequenceSink
from mlanet.edge.sinks.meshes import FrameMeshSink
from mlanet.edge.sinks.params import ParamsNpzSink
from mlanet.edge.sinks.tracks import TracksJsonSink
from mlanet.edge.sinks.video import OverlayVideoSink

__all__ = ["PARAMS_ARRAYS", "OutputSink", "ParamRows", "RunContext", "SinkBase", "SinkSpec", "meshes_needed",
           "register_sink", "registered_sinks", "sinks_for", "unregister_sink"]

register_sink("blendshapes_csv", BlendshapeCsvSink)
register_sink("mesh_sequence", MeshSequenceSink,  # always: resume cuts back sequences whatever --meshes is
              needs_meshes=lambda o: o.meshes == "sequence")
register_sink("frame_meshes", FrameMeshSink, enabled_by=lambda o: o.meshes is not None, needs_meshes=lambda o: True)
register_sink("glb", GlbSink, enabled_by=lambda o: o.glb, needs_meshes=lambda o: o.texture)  # texture unwrapping
register_sink("overlay_video", OverlayVideoSink, enabled_by=lambda o: o.video)
register_sink("tracks_json", TracksJsonSink)
register_sink("params_npz", ParamsNpzSink)
