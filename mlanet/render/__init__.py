"""Differentiable rendering in PyTorch: rasterisation with per-pixel visibility, interpolation, SH shading.

- :func:`mlanet.render.rasterizer.rasterize` -> ``Fragments`` (triangle id, perspective-correct
  barycentrics differentiable w.r.t. vertices, depth, mask); visibility is not differentiable.
- :func:`mlanet.render.rasterizer.interpolate` per-vertex attributes -> per-pixel.
- :func:`mlanet.render.renderer.render_mesh`, :func:`mlanet.render.renderer.render_face` -> ``RenderOutput``.
"""
