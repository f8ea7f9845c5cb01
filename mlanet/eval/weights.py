"""Where the shipped default weights live (kept here for existing imports; see :mod:`mlanet.weights`)."""

from __future__ import annotations

from ..weights import default_weights_path

__all__ = ["default_weights_path"]
