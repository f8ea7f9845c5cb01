"""The trained default weights shipped inside the package, and how they are made.

``mlanet/weights/<model>.safetensors`` — FP16 weights (no pickle) whose metadata describes
them like any checkpoint (network, parameter layout, preprocessing, face model id and content
checksum) plus a ``release`` block: where they came from (training runs and configs, commit),
the data they saw and its terms. ``MODEL_CARD.md`` beside them is the human-readable card.

:func:`default_weights_path` is what every command uses when no ``--weights`` is given
(``mlanet-video``, ``mlanet-live``, ``mlanet eval``, ``mlanet export onnx``).
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent

#: Networks with shipped weights -> file name inside :data:`WEIGHTS_DIR`.
SHIPPED = {"mlanet_mobile": "mlanet_mobile.safetensors", "mlanet_r50": "mlanet_r50.safetensors"}

MODEL_CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def default_weights_path(model_name: str) -> Path | None:
    """The shipped ``.safetensors`` of ``model_name``, or ``None`` if this install has none for it."""
    name = SHIPPED.get(model_name)
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None
