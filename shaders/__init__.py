"""GLSL shader sources (installed as ``mlanet.shaders``); read them with :func:`load_shader`."""

from __future__ import annotations

from importlib import resources


def load_shader(name: str) -> str:
    """Source text of the shader file ``name`` (e.g. ``"flat_color.vert"``) shipped in this package."""
    path = resources.files(__name__).joinpath(name)
    if not path.is_file():
        available = sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith((".vert", ".frag", ".glsl")))
        raise FileNotFoundError(f"no shader named {name!r}; available: {available}")
    return path.read_text(encoding="utf-8")
