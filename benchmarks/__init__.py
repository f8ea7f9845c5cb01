"""``mlanet bench``: measured latency, throughput, memory and accuracy, recorded as JSON + plots.

Modules (one job each): :mod:`record` (environment tags and the record schema), :mod:`model_latency`
(the network alone per backend and batch size), :mod:`pipeline` (the edge pipeline on a clip:
stages, fps, latency, memory, fps vs faces), :mod:`compare` (MediaPipe's face-mesh tracker vs the
MLANet pipeline; differentiable and GL renderers), :mod:`accuracy` (AFLW2000-3D CED of several
checkpoints), :mod:`soak` (memory over time), :mod:`report` (plots and the markdown summary),
:mod:`cli` (the ``mlanet bench`` command).
"""
