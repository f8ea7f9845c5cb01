"""Differentiable rendering in PyTorch: rasterisation with per-pixel visibility, interpolation, SH shading."""
