"""Vectorised triangle rasterisation in PyTorch with differentiable barycentrics (CPU and CUDA).

What is computed
    For each image of a batch, each pixel *centre* ``(i + 0.5, j + 0.5)`` (see
    ``docs/conventions.md``) is tested against every triangle whose projected pixel bounding
    box contains it; the nearest covering triangle (smallest camera-frame ``z`` at that pixel)
    wins. :func:`rasterize` returns the winner per pixel and its perspective-correct
    barycentric coordinates; :func:`interpolate` turns per-vertex attributes into per-pixel
    attributes with them.

Differentiability (as in nvdiffrast without its antialiasing pass)
    *Visibility is not differentiable*: which triangle covers a pixel, and whether a pixel is
    covered at all, is a discrete decision made under ``torch.no_grad``. Given that decision,
    the barycentric coordinates and the depth are recomputed with autograd from the projected
    vertex positions of the winning triangle at the pixel centre, so gradients flow from
    ``Fragments.barycentric`` / ``Fragments.depth`` / :func:`interpolate` to the vertex
    positions (and through :meth:`PinholeCamera.project` to tensor intrinsics), and from
    :func:`interpolate` to the attributes. Silhouette edges and occlusion boundaries therefore
    give no gradient with respect to vertex positions; losses that need them must add their own
    (e.g. landmark or mask terms).

Algorithm (no Python loop over triangles or pixels)
    1. Project the vertices with the camera (pixels); per triangle compute its edge functions
       and its plane of ``1 / z`` in screen space, its pixel bounding box and whether it is
       kept: every vertex at ``z > near`` (triangles with a vertex at ``z <= near`` are
       *dropped*, not clipped), non-zero area, and, with back-face culling, front-facing
       (negative shoelace area in pixel coordinates, the project's winding rule).
    2. Expand each kept triangle into the pixel centres of its bounding box
       (``repeat_interleave`` over the box sizes), in chunks of at most
       ``max_candidates`` candidates (one triangle is never split, so a chunk holds at most
       ``max(max_candidates, H * W)``), so a huge triangle cannot exhaust memory.
    3. Inside test with the three edge functions; perspective-correct depth of the inside
       candidates; a z-buffer by ``scatter_reduce(..., "amin")`` on a packed int64 key (the
       float32 bit pattern of the depth, which orders like the value for positive floats, in
       the high 32 bits; the triangle index in the low 32 bits), so ties are broken
       deterministically by the smaller triangle index, on any device.
    4. Decode the winner per pixel; recompute the barycentrics differentiably for the covered
       pixels only.

Edge functions are evaluated in a watertight way: the coefficients of an edge are computed
from its two vertices in a canonical order (smaller vertex index first) and then negated as
needed, so two triangles sharing an edge evaluate exactly opposite values there and a pixel
centre on a shared edge is never dropped by both. Centres exactly on an edge are inside
(inclusive test); the z-buffer then picks one triangle.

Shapes: B batch, V vertices, F triangles, H x W image, N covered pixels.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..conventions import PIXEL_CENTER_OFFSET
from ..geometry.camera import PinholeCamera

__all__ = ["Fragments", "rasterize", "interpolate", "DEFAULT_MAX_CANDIDATES"]

#: Default bound on the candidate (triangle, pixel centre) pairs processed at once.
DEFAULT_MAX_CANDIDATES: int = 1 << 21

_EMPTY_KEY = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF


@dataclass(frozen=True, eq=False)
class Fragments:
    """Per-pixel result of :func:`rasterize`.

    Attributes:
        triangle_id: ``(B, H, W)`` long, index into ``triangles`` (``F``) of the visible
            triangle at each pixel centre, ``-1`` for background.
        barycentric: ``(B, H, W, 3)`` perspective-correct barycentric coordinates of the pixel
            centre's surface point with respect to the triangle's vertices ``(v0, v1, v2)``
            (sum to 1; 0 at background). Differentiable w.r.t. vertex positions.
        depth: ``(B, H, W)`` camera-frame ``z`` in metres of the visible surface at the pixel
            centre (0 at background). Differentiable w.r.t. vertex positions.
        mask: ``(B, H, W)`` bool, True where a triangle covers the pixel centre.
        foreground: ``(N,)`` long, the covered pixels as flat indices into ``B * H * W``
            (ascending), i.e. ``mask.reshape(-1).nonzero()``.
        foreground_barycentric: ``(N, 3)`` the barycentrics of those pixels (the rows of
            ``barycentric`` at ``foreground``; same autograd graph). :func:`interpolate` uses
            this compact form.
        num_candidates: total number of (triangle, pixel centre) pairs tested over the batch
            (a cost statistic).
    """

    triangle_id: Tensor
    barycentric: Tensor
    depth: Tensor
    mask: Tensor
    foreground: Tensor
    foreground_barycentric: Tensor
    num_candidates: int = 0

    @property
    def batch_size(self) -> int:
        return int(self.triangle_id.shape[0])

    @property
    def height(self) -> int:
        return int(self.triangle_id.shape[1])

    @property
    def width(self) -> int:
        return int(self.triangle_id.shape[2])


# ---------------------------------------------------------------------------------- checks


def _check_size(name: str, value: object) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_triangles(triangles: Tensor) -> None:
    if not isinstance(triangles, Tensor):
        raise TypeError(f"triangles must be a torch.Tensor, got {type(triangles).__name__}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must have shape (F, 3), got {tuple(triangles.shape)}")
    if triangles.is_floating_point() or triangles.is_complex() or triangles.dtype == torch.bool:
        raise ValueError(f"triangles must be an integer tensor, got dtype {triangles.dtype}")


def _check_inputs(vertices: Tensor, triangles: Tensor, camera: PinholeCamera, height: int, width: int) -> None:
    if not isinstance(vertices, Tensor):
        raise TypeError(f"vertices must be a torch.Tensor, got {type(vertices).__name__}")
    if vertices.ndim != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"vertices must have shape (B, V, 3) (camera frame, metres), got {tuple(vertices.shape)}")
    if not vertices.is_floating_point():
        raise ValueError(f"vertices must be a floating-point tensor, got dtype {vertices.dtype}")
    _check_triangles(triangles)
    if not isinstance(camera, PinholeCamera):
        raise TypeError(f"camera must be a PinholeCamera, got {type(camera).__name__}")
    if (camera.width, camera.height) != (width, height):
        raise ValueError(
            f"the camera is for {camera.width}x{camera.height} images but {width}x{height} was requested; "
            "use camera.crop_resize(...) to render at another size"
        )
    b, cb = vertices.shape[0], camera.batch_size
    if b != cb and b != 1 and cb != 1:
        raise ValueError(f"vertices have batch size {b} but the camera has {cb} (need equal, or one of them 1)")


# ---------------------------------------------------------------------------------- z-buffer


def _triangle_setup(
    pix: Tensor, z: Tensor, tri: Tensor, height: int, width: int, cull_backfaces: bool, near: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-triangle rasterisation data for the kept triangles (no autograd).

    Args:
        pix: (B, V, 2) projected vertices, pixels. z: (B, V) camera z. tri: (F, 3) long.

    Returns:
        sel (T,) flat index ``b * F + f`` of the kept triangles with a non-empty box,
        table (12, T) rows ``A0 B0 C0 A1 B1 C1 A2 B2 C2 ZA ZB ZC`` (edge functions normalised
        to be >= 0 inside, and the 1/z plane, in image-centred pixel coordinates),
        i0, j0, nx (T,) first column, first row and width of the bounding box,
        counts (T,) number of candidate pixel centres.
    """
    batch, n_tri = pix.shape[0], tri.shape[0]
    half = pix.new_tensor([0.5 * width, 0.5 * height])
    q = pix - half  # image-centred pixel coordinates (better float32 precision)
    p = q[:, tri]  # (B, F, 3, 2)
    tz = z[:, tri]  # (B, F, 3)
    d1 = p[:, :, 1] - p[:, :, 0]
    d2 = p[:, :, 2] - p[:, :, 0]
    area2 = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]  # twice the shoelace area, (B, F)

    # Edge k joins vertices (k + 1) % 3 -> (k + 2) % 3; E_k(v_k) = area2 and sum_k E_k = area2.
    a = tri[:, [1, 2, 0]]
    b = tri[:, [2, 0, 1]]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    flip = (a > b).to(pix.dtype) * -2.0 + 1.0  # (F, 3): -1 where the canonical order is reversed
    pa, pb = q[:, lo], q[:, hi]  # (B, F, 3, 2)
    coef_a = pa[..., 1] - pb[..., 1]
    coef_b = pb[..., 0] - pa[..., 0]
    coef_c = pa[..., 0] * pb[..., 1] - pb[..., 0] * pa[..., 1]
    orient = torch.where(area2 < 0, -1.0, 1.0).to(pix.dtype)  # make "inside" mean E >= 0
    sign = flip[None] * orient[..., None]  # (B, F, 3)
    coef_a, coef_b, coef_c = coef_a * sign, coef_b * sign, coef_c * sign

    keep = (tz > near).all(dim=-1)
    keep &= (area2 < 0) if cull_backfaces else (area2 != 0)
    keep &= torch.isfinite(p).all(dim=-1).all(dim=-1)

    # 1/z(p) = sum_k E_k(p) / (|area2| z_k): an affine function of the pixel position.
    w = 1.0 / (area2.abs().clamp_min(torch.finfo(pix.dtype).tiny)[..., None] * tz.clamp_min(near))  # (B, F, 3)
    za = (coef_a * w).sum(-1)
    zb = (coef_b * w).sum(-1)
    zc = (coef_c * w).sum(-1)

    # Bounding box of the pixel centres: columns i with umin <= i + 0.5 <= umax.
    lo_uv = p.amin(dim=2) + half - PIXEL_CENTER_OFFSET  # (B, F, 2)
    hi_uv = p.amax(dim=2) + half - PIXEL_CENTER_OFFSET
    size = pix.new_tensor([float(width), float(height)])
    first = torch.minimum(torch.ceil(lo_uv).clamp_min(0.0), size)
    last = torch.maximum(torch.floor(hi_uv), pix.new_tensor(-1.0))
    last = torch.minimum(last, size - 1.0)
    extent = (last - first + 1.0).clamp_min(0.0)
    counts = (extent[..., 0] * extent[..., 1]).long() * keep  # (B, F)

    sel = torch.nonzero(counts.reshape(-1) > 0).squeeze(1)
    flat = batch * n_tri
    table = torch.cat(
        [
            torch.stack([coef_a, coef_b, coef_c], dim=-1).reshape(flat, 9),
            torch.stack([za, zb, zc], dim=-1).reshape(flat, 3),
        ],
        dim=1,
    )
    table = table.index_select(0, sel).t().contiguous()  # (12, T)
    first = first.reshape(flat, 2).index_select(0, sel).long()
    nx = extent[..., 0].reshape(flat).index_select(0, sel).long()
    return sel, table, first[:, 0], first[:, 1], nx, counts.reshape(flat).index_select(0, sel)


def _chunks(counts: Tensor, budget: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Split triangles into contiguous ranges with at most ``budget`` candidates (>= 1 triangle each).

    Returns the total candidate count and a list of ``(start, stop, n_candidates)``.
    """
    if counts.numel() == 0:
        return 0, []
    cum = counts.cumsum(0)
    total = int(cum[-1])
    if total <= budget:
        return total, [(0, counts.numel(), total)]
    cum_np = cum.cpu().numpy()
    out = []
    start, before = 0, 0
    n = len(cum_np)
    while start < n:
        stop = int(np.searchsorted(cum_np, before + budget, side="right"))
        stop = max(stop, start + 1)
        after = int(cum_np[stop - 1])
        out.append((start, stop, after - before))
        start, before = stop, after
    return total, out


def _zbuffer(
    pix: Tensor, z: Tensor, tri: Tensor, height: int, width: int, cull_backfaces: bool, near: float, budget: int
) -> tuple[Tensor, int]:
    """Packed z-buffer keys ``(B * H * W,)`` int64 (``_EMPTY_KEY`` where nothing is drawn) and the candidate count."""
    batch, n_tri = pix.shape[0], tri.shape[0]
    device = pix.device
    keys = torch.full((batch * height * width,), _EMPTY_KEY, dtype=torch.long, device=device)
    sel, table, i0, j0, nx, counts = _triangle_setup(pix, z, tri, height, width, cull_backfaces, near)
    total, chunks = _chunks(counts, budget)
    pix_per_image = height * width
    # Per kept triangle: base pixel index of its box and its triangle id within its mesh.
    base = (sel // n_tri) * pix_per_image + j0 * width + i0
    tri_id = sel % n_tri
    dtype = pix.dtype
    x_off = PIXEL_CENTER_OFFSET - 0.5 * width  # image-centred coordinate of column 0's centre
    y_off = PIXEL_CENTER_OFFSET - 0.5 * height
    for start, stop, n in chunks:
        c = counts[start:stop]
        local = torch.repeat_interleave(torch.arange(stop - start, device=device), c, output_size=n)
        excl = c.cumsum(0) - c
        off = torch.arange(n, device=device) - excl.index_select(0, local)  # position inside the box
        w_box = nx[start:stop].index_select(0, local)
        # Row/column inside the box; float division is exact here (values far below 2^24).
        row = torch.div(off, w_box, rounding_mode="floor")
        col = off - row * w_box
        i = col + i0[start:stop].index_select(0, local)
        j = row + j0[start:stop].index_select(0, local)
        px = i.to(dtype) + x_off
        py = j.to(dtype) + y_off
        t = table[:, start:stop].index_select(1, local)  # (12, n)
        inside = (t[0] * px + t[1] * py + t[2]) >= 0
        inside &= (t[3] * px + t[4] * py + t[5]) >= 0
        inside &= (t[6] * px + t[7] * py + t[8]) >= 0
        hit = torch.nonzero(inside).squeeze(1)
        if hit.numel() == 0:
            continue
        t_hit = t[9:].index_select(1, hit)
        zinv = t_hit[0] * px.index_select(0, hit) + t_hit[1] * py.index_select(0, hit) + t_hit[2]
        depth = (1.0 / zinv).float().clamp_min(0.0)  # positive: the key orders like the depth
        key = (depth.view(torch.int32).long() << 32) | tri_id[start:stop].index_select(0, local.index_select(0, hit))
        target = base[start:stop].index_select(0, local.index_select(0, hit)) + row.index_select(0, hit) * width
        target = target + col.index_select(0, hit)
        keys.scatter_reduce_(0, target, key, reduce="amin", include_self=True)
    return keys, total


# ---------------------------------------------------------------------------------- public API


def rasterize(
    vertices: Tensor,
    triangles: Tensor,
    camera: PinholeCamera,
    height: int,
    width: int,
    *,
    cull_backfaces: bool = True,
    near: float = 1e-3,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Fragments:
    """Rasterise triangle meshes seen by pinhole cameras; differentiable barycentrics and depth.

    Args:
        vertices: ``(B, V, 3)`` camera-frame positions in metres (OpenCV frame: +z forward).
        triangles: ``(F, 3)`` integer vertex indices, counter-clockwise front faces in the
            project's convention (negative shoelace area in pixel coordinates).
        camera: :class:`PinholeCamera` of batch ``B`` or 1 (a vertex batch of 1 is broadcast
            against a camera batch ``B``) for ``width x height`` images.
        height, width: image size in pixels; must equal the camera's.
        cull_backfaces: drop triangles whose projection is not a front face. With ``False``
            both orientations are drawn (zero-area projections never are).
        near: triangles with any vertex at camera ``z <= near`` (metres) are dropped entirely
            (no clipping against the near plane).
        max_candidates: bound on the (triangle, pixel centre) pairs processed at once (memory
            bound; a single triangle is never split, so the real bound is
            ``max(max_candidates, H * W)``).

    Returns:
        :class:`Fragments` for the pixel centres ``(i + 0.5, j + 0.5)``. Visibility
        (``triangle_id``, ``mask``) is not differentiable; ``barycentric`` and ``depth`` are,
        w.r.t. ``vertices`` (and tensor intrinsics), recomputed from the winning triangle's
        projected vertices. Works on any device: everything follows ``vertices.device``.
        Host synchronisations: one for the candidate count and one for the covered pixels.
    """
    height = _check_size("height", height)
    width = _check_size("width", width)
    _check_inputs(vertices, triangles, camera, height, width)
    if not (isinstance(near, numbers.Real) and near > 0):
        raise ValueError(f"near must be a positive number of metres, got {near!r}")
    max_candidates = _check_size("max_candidates", max_candidates)
    if vertices.shape[0] == 1 and camera.batch_size > 1:
        vertices = vertices.expand(camera.batch_size, -1, -1)
    batch, n_vertices = vertices.shape[0], vertices.shape[1]
    device, dtype = vertices.device, vertices.dtype
    tri = triangles.to(device=device, dtype=torch.long)

    pix = camera.project(vertices)  # (B, V, 2), differentiable
    z = vertices[..., 2]
    with torch.no_grad():
        keys, total = _zbuffer(pix.detach(), z.detach(), tri, height, width, bool(cull_backfaces), float(near), max_candidates)
        covered = keys != _EMPTY_KEY
        triangle_id = torch.where(covered, keys & _LOW32, torch.full_like(keys, -1))
        fg = torch.nonzero(covered).squeeze(1)

    n_pix = batch * height * width
    # Differentiable barycentrics of the covered pixels, at their pixel centres.
    per_image = height * width
    b = fg // per_image
    rem = fg - b * per_image
    row = rem // width
    col = rem - row * width
    vidx = (tri.index_select(0, triangle_id.index_select(0, fg)) + (b * n_vertices)[:, None]).reshape(-1)
    pv = pix.reshape(batch * n_vertices, 2).index_select(0, vidx).reshape(-1, 3, 2)
    zv = z.reshape(batch * n_vertices).index_select(0, vidx).reshape(-1, 3)
    centre = torch.stack([col, row], dim=-1).to(dtype) + PIXEL_CENTER_OFFSET  # (N, 2)
    d = pv - centre[:, None, :]  # vertex positions relative to the pixel centre
    # w_k = (v_{k+1} - p) x (v_{k+2} - p): E_k at the centre; sum_k w_k = twice the signed area.
    d1, d2 = d.roll(-1, dims=1), d.roll(-2, dims=1)
    w = d1[..., 0] * d2[..., 1] - d1[..., 1] * d2[..., 0]  # (N, 3)
    q = w / zv  # perspective correction: screen-space weights divided by depth
    q_sum = q.sum(-1, keepdim=True)
    bary_fg = q / q_sum
    depth_fg = w.sum(-1) / q_sum.squeeze(-1)

    barycentric = torch.zeros(n_pix, 3, dtype=dtype, device=device).index_copy(0, fg, bary_fg)
    depth = torch.zeros(n_pix, dtype=dtype, device=device).index_copy(0, fg, depth_fg)
    return Fragments(
        triangle_id=triangle_id.reshape(batch, height, width),
        barycentric=barycentric.reshape(batch, height, width, 3),
        depth=depth.reshape(batch, height, width),
        mask=covered.reshape(batch, height, width),
        foreground=fg,
        foreground_barycentric=bary_fg,
        num_candidates=total,
    )


def interpolate(attributes: Tensor, fragments: Fragments, triangles: Tensor) -> Tensor:
    """Per-pixel attributes ``(B, H, W, C)`` from per-vertex attributes ``(B, V, C)``.

    ``out[b, j, i] = sum_k bary_k * attributes[b, triangles[t, k]]`` with ``t`` the visible
    triangle and ``bary`` its perspective-correct barycentrics at the pixel centre, so a
    quantity that is linear on each 3-D triangle (e.g. the camera-frame position, or colour
    assigned per vertex) is interpolated exactly. Background pixels are 0. Differentiable
    w.r.t. ``attributes`` and, through the barycentrics, w.r.t. the rasterised vertices.
    ``attributes`` of batch 1 are shared by every image. ``triangles (F, 3)`` must be those
    passed to :func:`rasterize`.
    """
    if not isinstance(fragments, Fragments):
        raise TypeError(f"fragments must be Fragments, got {type(fragments).__name__}")
    _check_triangles(triangles)
    if not isinstance(attributes, Tensor):
        raise TypeError(f"attributes must be a torch.Tensor, got {type(attributes).__name__}")
    batch, height, width = fragments.triangle_id.shape
    if attributes.ndim != 3 or attributes.shape[0] not in (1, batch):
        raise ValueError(f"attributes must have shape (B, V, C) with B = {batch} or 1, got {tuple(attributes.shape)}")
    if not attributes.is_floating_point():
        raise ValueError(f"attributes must be a floating-point tensor, got dtype {attributes.dtype}")
    n_vertices, channels = attributes.shape[1], attributes.shape[2]
    device = fragments.triangle_id.device
    fg = fragments.foreground
    tri = triangles.to(device=device, dtype=torch.long)
    vidx = tri.index_select(0, fragments.triangle_id.reshape(-1).index_select(0, fg))  # (N, 3)
    if attributes.shape[0] > 1:
        vidx = vidx + ((fg // (height * width)) * n_vertices)[:, None]
    values = attributes.reshape(-1, channels).index_select(0, vidx.reshape(-1)).reshape(-1, 3, channels)
    bary = fragments.foreground_barycentric.to(attributes.dtype)
    out_fg = torch.einsum("nk,nkc->nc", bary, values)
    out = torch.zeros(batch * height * width, channels, dtype=out_fg.dtype, device=out_fg.device)
    return out.index_copy(0, fg, out_fg).reshape(batch, height, width, channels)
