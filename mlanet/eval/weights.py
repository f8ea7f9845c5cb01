"""Where shipped default weights would live.

No default weights are shipped yet: they arrive with the training issue (issue 7), either
inside the package as ``mlanet/weights/<model>.safetensors`` or downloaded into the asset home.
Until then :func:`default_weights_path` returns ``None`` and ``mlanet eval`` asks for
``--weights FILE``.
"""

from __future__ import annotations

from pathlib import Path


def default_weights_path(model_name: str) -> Path | None:
    """Path of the shipped default weights (``.safetensors``) of ``model_name``, or ``None`` if none are shipped."""
    del model_name  # no model ships weights yet
    return None
