"""Deployment export (installed as ``mlanet.export``): ONNX and TensorRT engines.

The exporters arrive with the export issue; this package exists so the layout and the
namespace mapping (``export/`` -> ``mlanet.export``) are fixed and tested from the start.
"""
