"""The trained default weights shipped inside the package, and how they are made.

``mlanet/weights/<model>.safetensors`` — FP16 weights (no pickle) whose metadata describes
them like any checkpoint (network, parameter layout, preprocessing, face model id and content
checksum) plus a ``release`` block: where they came from (training run, its config, the
checkpoint chosen on the dev images and its metrics, commit), the data they saw and its terms.
``MODEL_CARD.md`` beside them is the human-readable card.

Only ``mlanet_mobile`` ships (:data:`SHIPPED`). ``mlanet_r50`` is registered but ships no weights
(:data:`NOT_SHIPPED`): asking for them is a one-line error that says how to train them.

:func:`default_weights_path` is what every command uses when no ``--weights`` is given
(``mlanet-video``, ``mlanet-live``, ``mlanet eval``, ``mlanet export onnx``).
"""

from __future__ import annotations

from pathlib import Path

from mlanet.errors import MLANetError

WEIGHTS_DIR = Path(__file__).resolve().parent

#: Networks with shipped weights -> file name inside :data:`WEIGHTS_DIR`.
SHIPPED = {"mlanet_mobile": "mlanet_mobile.safetensors"}

#: Registered networks whose weights deliberately do not ship -> the one-line reason and how to make them.
NOT_SHIPPED = {
    "mlanet_r50": (
        "no mlanet_r50 weights ship with MLANet: they ship only if they beat mlanet_mobile on the AFLW2000-3D dev "
        "images, and the CPU-trained ones scored ~17.7 % NME (the 3DDFA_V2 teacher: 4 %). Train them on a GPU with "
        "`mlanet train --config mlanet/train/configs/r50_s1_synthetic.yaml --set preprocess.input_size=224` (then "
        "r50_s2_real.yaml, which reads the training stores) and pass --weights runs/r50_s2/best.json"
    ),
}

#: The most a shipped weights file may weigh (``mlanet weights pack`` refuses to write more).
MAX_SHIPPED_BYTES = 10 * 10**6

MODEL_CARD = WEIGHTS_DIR / "MODEL_CARD.md"


class WeightsNotShippedError(MLANetError):
    """Shipped weights were asked for a network that ships none on purpose (:data:`NOT_SHIPPED`)."""


def _canonical(model_name: str) -> str:
    from mlanet.models.registry import canonical_name

    return canonical_name(model_name)


def shipped_weights_file(model_name: str) -> Path | None:
    """The shipped ``.safetensors`` of ``model_name`` (or of the network an alias stands for), or ``None``."""
    name = SHIPPED.get(_canonical(model_name))
    if name is None:
        return None
    path = WEIGHTS_DIR / name
    return path if path.is_file() else None


def default_weights_path(model_name: str) -> Path | None:
    """The shipped ``.safetensors`` of ``model_name``, or ``None`` if this install has none for it.

    Raises:
        WeightsNotShippedError: ``model_name`` is a network whose weights do not ship on purpose
            (``mlanet_r50``); the message is one line saying how to train them.
    """
    canonical = _canonical(model_name)
    if canonical in NOT_SHIPPED:
        raise WeightsNotShippedError(NOT_SHIPPED[canonical])
    return shipped_weights_file(canonical)
