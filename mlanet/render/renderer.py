"""Differentiable mesh and face rendering: rasterise, interpolate per-vertex colour, composite.

Shading happens per vertex (Gouraud): :func:`render_face` colours each vertex with
``MorphableModel.vertex_colors`` (albedo times SH Lambertian irradiance at the camera-frame
vertex normal, see :mod:`mlanet.geometry.sh`) and the rasteriser interpolates those colours
perspective-correctly. Gradients reach vertex positions (through the barycentrics, the normals
and the shading), albedo, lighting and every face-model parameter; visibility and silhouettes
are not differentiable (see :mod:`mlanet.render.rasterizer`).

Everything follows ``vertices.device`` and dtype; the camera and triangles are moved there.
Shapes: B batch, V vertices, F triangles, H x W image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mlanet.geometry.camera import PinholeCamera
from mlanet.params import FaceParams
from mlanet.render.rasterizer import Fragments, interpolate, rasterize

__all__ = ["RenderOutput", "render_mesh", "render_face"]


@dataclass(frozen=True, eq=False)
class RenderOutput:
    """Result of :func:`render_mesh` / :func:`render_face`.

    Attributes:
        image: ``(B, H, W, 3)`` RGB (linear, nominally [0, 1], not clamped): interpolated
            vertex colour where a triangle covers the pixel centre, the background elsewhere.
        mask: ``(B, H, W)`` float, 1 where covered, 0 elsewhere (not differentiable).
        depth: ``(B, H, W)`` camera-frame z in metres of the visible surface, 0 at background.
        fragments: the :class:`~mlanet.render.rasterizer.Fragments` (triangle ids, barycentrics).
        vertices: ``(B, V, 3)`` camera-frame vertices that were rendered (metres).
        colors: ``(B, V, 3)`` per-vertex RGB that was interpolated.
    """

    image: Tensor
    mask: Tensor
    depth: Tensor
    fragments: Fragments
    vertices: Tensor
    colors: Tensor


def render_mesh(
    vertices: Tensor,
    triangles: Tensor,
    vertex_colors: Tensor,
    camera: PinholeCamera,
    height: int,
    width: int,
    background: Tensor | None = None,
    *,
    cull_backfaces: bool = True,
    near: float = 1e-3,
) -> RenderOutput:
    """Render per-vertex-coloured triangle meshes.

    Args:
        vertices: ``(B, V, 3)`` camera-frame positions, metres.
        triangles: ``(F, 3)`` integer indices, counter-clockwise front faces (project convention).
        vertex_colors: ``(B, V, 3)`` (or ``(1, V, 3)``, shared) RGB per vertex.
        camera: :class:`PinholeCamera` (batch B or 1) for ``width x height`` images.
        height, width: image size in pixels.
        background: ``(B, H, W, 3)`` (or broadcastable, e.g. ``(1, H, W, 3)`` or ``(3,)``) RGB
            shown where no triangle is visible; ``None`` means black. Gradients flow to it
            at background pixels.
        cull_backfaces, near: passed to :func:`~mlanet.render.rasterizer.rasterize`.

    Returns:
        :class:`RenderOutput`; ``image = where(mask, interpolate(vertex_colors), background)``.
    """
    if not isinstance(vertex_colors, Tensor) or vertex_colors.ndim != 3 or vertex_colors.shape[-1] != 3:
        shape = tuple(vertex_colors.shape) if isinstance(vertex_colors, Tensor) else type(vertex_colors).__name__
        raise ValueError(f"vertex_colors must have shape (B, V, 3) (RGB per vertex), got {shape}")
    if vertex_colors.shape[1] != vertices.shape[1]:
        raise ValueError(
            f"vertex_colors has {vertex_colors.shape[1]} vertices but vertices has {vertices.shape[1]}"
        )
    fragments = rasterize(vertices, triangles, camera, height, width, cull_backfaces=cull_backfaces, near=near)
    colors = vertex_colors.to(device=vertices.device)
    image = interpolate(colors, fragments, triangles)
    mask = fragments.mask
    if background is not None:
        if not isinstance(background, Tensor):
            raise TypeError(f"background must be a torch.Tensor or None, got {type(background).__name__}")
        background = background.to(device=image.device, dtype=image.dtype)
        try:
            torch.broadcast_shapes(background.shape, image.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"background {tuple(background.shape)} does not broadcast to the image {tuple(image.shape)}"
            ) from exc
        image = torch.where(mask[..., None], image, background)
    return RenderOutput(
        image=image,
        mask=mask.to(image.dtype),
        depth=fragments.depth,
        fragments=fragments,
        vertices=vertices,
        colors=colors,
    )


def render_face(
    face_model: torch.nn.Module,
    params: FaceParams,
    camera: PinholeCamera,
    height: int,
    width: int,
    background: Tensor | None = None,
) -> RenderOutput:
    """Render faces of a :class:`~mlanet.morphable.model.MorphableModel` from their parameters.

    ``vertices = face_model(params)`` (camera frame, metres) and
    ``colors = face_model.vertex_colors(params, vertices)`` (albedo shaded by the SH lighting),
    rasterised with back-face culling. ``params`` must live on the face model's device.
    Differentiable w.r.t. every parameter group (except through visibility); see
    :func:`render_mesh` for the rest.
    """
    vertices = face_model(params)
    colors = face_model.vertex_colors(params, vertices)
    return render_mesh(vertices, face_model.triangles, colors, camera, height, width, background)
