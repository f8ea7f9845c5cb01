"""Deployment export (installed as ``mlanet.export``).

* :mod:`.onnx_export` -- self-describing ONNX of the network and the face decoder, parity in mm.
* :mod:`.engine_file` -- the MLANet TensorRT engine container (JSON header + plan), no TensorRT needed.
* :mod:`.tensorrt_engine` -- the only module that calls TensorRT: engine build and runner.
* :mod:`.cli` -- ``mlanet export onnx|tensorrt``.
"""
