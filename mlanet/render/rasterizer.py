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
    2. Expand each kept triangle into the pixel centres of its bounding box. Triangles are
       grouped by box size rounded up to a power of two ``S`` and each group is expanded as a
       dense ``(triangles, S)`` block by broadcasting (candidate ``s`` of a box of width
       ``nx`` is at row ``s // nx``, column ``s % nx``; ``s >=`` the box size is padding),
       which needs no per-candidate gathers (about 1.3x the candidates of an exact
       ``repeat_interleave`` expansion, but faster on CPU than gathering the triangle data for
       each candidate). Blocks hold at most ``max_candidates`` candidates (a triangle is never
       split, so at most ``max(max_candidates, 2 * H * W)``), so a huge triangle cannot
       exhaust memory.
    3. Inside test with the three edge functions and perspective-correct depth of every
       candidate; a z-buffer by ``scatter_reduce(..., "amin")`` on a packed int64 key (the
       float32 bit pattern of the depth, which orders like the value for positive floats, in
       the high 32 bits; the triangle index in the low 32 bits), so ties are broken
       deterministically by the smaller triangle index, on any device. Rejected candidates
       get the empty key instead of being compacted (no host synchronisation per block).
    4. Decode the winner per pixel; recompute the barycentrics differentiably for the covered
       pixels only.

Edge functions are evaluated in a watertight way: the coefficients of an edge are computed
from its two vertices in a canonical order (smaller vertex index first) and then negated as
needed, so two triangles sharing an edge evaluate exactly opposite values there and a pixel
centre on a shared edge is never dropped by both. Centres exactly on an edge are inside
(inclusive test); the z-buffer then picks one triangle.

Visibility is computed in float32 (float64 for float64 vertices), the image-centred pixel
coordinates keeping the edge functions accurate to about 1e-3 pixel at 224 x 224. Limits:
``F < 2^31`` triangles, ``H * W <= 2^23`` pixels in float32.

Shapes: B batch, V vertices, F triangles, H x W image, N covered pixels.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import Tensor

from mlanet.conventions import PIXEL_CENTER_OFFSET
from mlanet.geometry.camera import PinholeCamera

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
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-triangle rasterisation data of the kept triangles with a non-empty box (no autograd).

    Args:
        pix: (B, V, 2) projected vertices, pixels. z: (B, V) camera z, metres. tri: (F, 3) long.

    Returns:
        ``table (16, T)`` float rows ``A0 A1 A2 B0 B1 B2 C0 C1 C2`` (edge functions
        ``E_k = A_k x + B_k y + C_k`` in image-centred pixel coordinates, signed to be >= 0
        inside), ``ZA ZB ZC`` (the plane ``1 / z = ZA x + ZB y + ZC``), ``X0 Y0`` (centred
        coordinates of the box's first pixel centre), ``NX`` (box width) and ``COUNT`` (number of
        pixel centres in the box),
        ``ids (2, T)`` long: base pixel index ``b * H * W + j0 * W + i0`` of the box and the
        triangle index ``f``, and ``counts (T,)`` long candidate pixel centres per triangle.
    """
    n_tri = tri.shape[0]
    dtype, device = pix.dtype, pix.device
    qx = pix[..., 0] - 0.5 * width  # image-centred pixel coordinates (better float32 precision)
    qy = pix[..., 1] - 0.5 * height

    def corners(values: Tensor) -> Tensor:  # (B, V) -> (3, B, F), contiguous
        return torch.stack([values.index_select(1, tri[:, k]) for k in range(3)])

    x, y, tz = corners(qx), corners(qy), corners(z)
    area2 = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])  # twice the shoelace area, (B, F)
    keep = (tz > near).all(dim=0)
    keep &= (area2 < 0) if cull_backfaces else (area2 != 0)
    keep &= torch.isfinite(area2)

    # Bounding box of the pixel centres: columns i with min(u) <= i + 0.5 <= max(u) (u = x + W / 2).
    shift_x, shift_y = 0.5 * width - PIXEL_CENTER_OFFSET, 0.5 * height - PIXEL_CENTER_OFFSET
    lo_x = torch.ceil(x.amin(dim=0) + shift_x).clamp_(0.0, float(width))
    hi_x = torch.floor(x.amax(dim=0) + shift_x).clamp_(-1.0, float(width - 1))
    lo_y = torch.ceil(y.amin(dim=0) + shift_y).clamp_(0.0, float(height))
    hi_y = torch.floor(y.amax(dim=0) + shift_y).clamp_(-1.0, float(height - 1))
    nx = (hi_x - lo_x + 1.0).clamp_min_(0.0)
    ny = (hi_y - lo_y + 1.0).clamp_min_(0.0)
    counts = torch.where(keep, nx * ny, 0.0).reshape(-1)

    # Only the kept triangles with a non-empty box from here on (T of them).
    sel = torch.nonzero(counts > 0).squeeze(1)
    b = torch.div(sel, n_tri, rounding_mode="floor")
    f = sel - b * n_tri

    def kept(values: Tensor) -> Tensor:  # (3, B, F) -> (3, T)
        return torch.stack([values[k].reshape(-1).index_select(0, sel) for k in range(3)])

    x, y, tz = kept(x), kept(y), kept(tz)
    area2 = area2.reshape(-1).index_select(0, sel)
    lo_x = lo_x.reshape(-1).index_select(0, sel)
    lo_y = lo_y.reshape(-1).index_select(0, sel)
    counts = counts.index_select(0, sel)

    # Edge k runs from vertex (k + 1) % 3 to (k + 2) % 3, so E_k(v_k) = area2 and sum_k E_k = area2.
    # Coefficients come from the endpoints in canonical order (smaller vertex index first) and
    # are negated where that order is reversed: triangles sharing an edge get bit-identical,
    # opposite edge functions (watertight), whatever the floating-point evaluation order.
    swap = (tri.roll(-1, dims=1) > tri.roll(-2, dims=1)).t()  # (3, F): static per mesh
    swap = torch.stack([swap[k].index_select(0, f) for k in range(3)])  # (3, T)
    xa, xb = x.roll(-1, dims=0), x.roll(-2, dims=0)
    ya, yb = y.roll(-1, dims=0), y.roll(-2, dims=0)
    xa, xb = torch.where(swap, xb, xa), torch.where(swap, xa, xb)
    ya, yb = torch.where(swap, yb, ya), torch.where(swap, ya, yb)
    orient = torch.where(area2 < 0, -1.0, 1.0).to(dtype)  # inside means E >= 0
    sign = torch.where(swap, -orient, orient)  # (3, T)

    table = torch.empty(16, sel.numel(), dtype=dtype, device=device)
    coef_a, coef_b, coef_c = table[0:3], table[3:6], table[6:9]
    torch.mul(ya - yb, sign, out=coef_a)
    torch.mul(xb - xa, sign, out=coef_b)
    torch.mul(xa * yb - xb * ya, sign, out=coef_c)
    # 1 / z(p) = sum_k E_k(p) / (|area2| z_k): an affine function of the pixel position.
    w = 1.0 / (area2.abs() * tz)  # (3, T); area2 != 0 and z > near > 0 for kept triangles
    torch.sum(coef_a * w, dim=0, out=table[9])
    torch.sum(coef_b * w, dim=0, out=table[10])
    torch.sum(coef_c * w, dim=0, out=table[11])
    torch.sub(lo_x, shift_x, out=table[12])  # centred x of the box's first pixel centre
    torch.sub(lo_y, shift_y, out=table[13])
    table[14] = nx.reshape(-1).index_select(0, sel)
    table[15] = counts
    ids = torch.stack([b * (height * width) + (lo_y * width + lo_x).long(), f])  # (2, T)
    return table, ids, counts.long()


def _zbuffer(
    pix: Tensor, z: Tensor, tri: Tensor, height: int, width: int, cull_backfaces: bool, near: float, budget: int
) -> tuple[Tensor, int]:
    """Packed z-buffer keys ``(B * H * W,)`` int64 (``_EMPTY_KEY`` where nothing is drawn) and the candidate count.

    See the module docstring (steps 2 and 3); ``budget`` bounds the candidates per block.
    """
    batch = pix.shape[0]
    device = pix.device
    keys = torch.full((batch * height * width,), _EMPTY_KEY, dtype=torch.long, device=device)
    table, ids, counts = _triangle_setup(pix, z, tri, height, width, cull_backfaces, near)
    # Float row/column arithmetic is exact while block positions s < 2 * H * W stay below 2^24 (float32).
    if 2 * height * width > (1 << 24 if table.dtype == torch.float32 else 1 << 53):
        raise ValueError(f"a {height}x{width} image is too large for {table.dtype} rasterisation")
    if counts.numel() == 0:
        return keys, 0
    # Group k holds boxes of 2^(k-1) < count <= 2^k pixel centres.
    group = torch.log2(counts.to(torch.float64)).ceil().long()
    order = torch.argsort(group, stable=True)
    n_groups = max(1, (height * width - 1).bit_length() + 1)
    sizes = torch.cat([torch.bincount(group, minlength=n_groups), counts.sum().reshape(1)]).tolist()
    total = int(sizes.pop())
    table = table.index_select(1, order)
    ids = ids.index_select(1, order)
    empty = torch.tensor(_EMPTY_KEY, device=device)
    start = 0
    for k, size in enumerate(sizes):
        if size == 0:
            continue
        span = 1 << k
        s = torch.arange(span, device=device, dtype=table.dtype)[None, :]  # (1, S)
        step = max(1, budget // span)
        for lo in range(start, start + size, step):
            hi = min(lo + step, start + size)
            t = table[:, lo:hi, None]  # (16, T, 1): per-triangle columns broadcast against s
            row = torch.floor(s / t[14])  # exact: s < 2^24 and a non-integer quotient is >= 1 / nx from one
            col = s - row * t[14]
            px = col + t[12]
            py = row + t[13]
            inside = s < t[15]
            inside &= torch.addcmul(torch.addcmul(t[6], t[0], px), t[3], py) >= 0
            inside &= torch.addcmul(torch.addcmul(t[7], t[1], px), t[4], py) >= 0
            inside &= torch.addcmul(torch.addcmul(t[8], t[2], px), t[5], py) >= 0
            zinv = torch.addcmul(torch.addcmul(t[11], t[9], px), t[10], py)
            depth = (1.0 / zinv).float().clamp_min_(0.0)  # the key orders like the depth for positive floats
            key = (depth.view(torch.int32).long() << 32) | ids[1, lo:hi, None]
            key = torch.where(inside, key, empty)
            target = torch.addcmul(col, row, torch.tensor(float(width), dtype=table.dtype, device=device))
            target = (target.long() + ids[0, lo:hi, None]).clamp_(max=keys.numel() - 1)  # padding: any pixel
            keys.scatter_reduce_(0, target.reshape(-1), key.reshape(-1), reduce="amin", include_self=True)
        start += size
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
            ``max(max_candidates, 2 * H * W)``).

    Returns:
        :class:`Fragments` for the pixel centres ``(i + 0.5, j + 0.5)``. Visibility
        (``triangle_id``, ``mask``) is not differentiable; ``barycentric`` and ``depth`` are,
        w.r.t. ``vertices`` (and tensor intrinsics), recomputed from the winning triangle's
        projected vertices. Works on any device: everything follows ``vertices.device``.
        Three host synchronisations per call (kept triangles, block sizes, covered pixels).
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
        vis = torch.promote_types(dtype, torch.float32)  # half precision is too coarse for visibility
        keys, total = _zbuffer(
            pix.detach().to(vis), z.detach().to(vis), tri, height, width, bool(cull_backfaces), float(near), max_candidates
        )
        covered = keys != _EMPTY_KEY
        triangle_id = (keys & _LOW32).masked_fill_(~covered, -1)
        fg = torch.nonzero(covered).squeeze(1)

    n_pix = batch * height * width
    # Differentiable barycentrics of the covered pixels at their pixel centres, component-major
    # (3, N) so that every elementwise operation runs on contiguous rows.
    per_image = height * width
    b = torch.div(fg, per_image, rounding_mode="floor")
    rem = fg - b * per_image
    row = torch.div(rem, width, rounding_mode="floor")
    col = rem - row * width
    tid = triangle_id.index_select(0, fg)
    vidx = torch.cat([tri[:, k].index_select(0, tid) + b * n_vertices for k in range(3)])  # (3 * N,) vertex k major
    # vertex positions relative to the pixel centre, pixels
    px = pix[..., 0].reshape(-1).index_select(0, vidx).reshape(3, -1) - (col.to(dtype) + PIXEL_CENTER_OFFSET)
    py = pix[..., 1].reshape(-1).index_select(0, vidx).reshape(3, -1) - (row.to(dtype) + PIXEL_CENTER_OFFSET)
    pz = z.reshape(-1).index_select(0, vidx).reshape(3, -1)
    # w_k = (v_{k+1} - p) x (v_{k+2} - p) = E_k(p); sum_k w_k = twice the signed area.
    x0, x1, x2 = px.unbind(0)
    y0, y1, y2 = py.unbind(0)
    w = torch.stack([x1 * y2 - y1 * x2, x2 * y0 - y2 * x0, x0 * y1 - y0 * x1])  # (3, N)
    q = w / pz  # perspective correction: screen-space weights over depth
    q_sum = q.sum(0)
    bary_fg = q / q_sum  # (3, N)
    depth_fg = w.sum(0) / q_sum

    # (in-place index_copy_ into fresh zeros: differentiable w.r.t. the source, no extra copy)
    barycentric = torch.zeros(n_pix, 3, dtype=dtype, device=device).index_copy_(0, fg, bary_fg.t())
    depth = torch.zeros(n_pix, dtype=dtype, device=device).index_copy_(0, fg, depth_fg)
    return Fragments(
        triangle_id=triangle_id.reshape(batch, height, width),
        barycentric=barycentric.reshape(batch, height, width, 3),
        depth=depth.reshape(batch, height, width),
        mask=covered.reshape(batch, height, width),
        foreground=fg,
        foreground_barycentric=bary_fg.t(),
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
    tid = fragments.triangle_id.reshape(-1).index_select(0, fg)
    offset = torch.div(fg, height * width, rounding_mode="floor") * n_vertices if attributes.shape[0] > 1 else 0
    vidx = torch.cat([tri[:, k].index_select(0, tid) + offset for k in range(3)])  # (3 * N,) vertex k major
    values = attributes.reshape(-1, channels).index_select(0, vidx).reshape(3, -1, channels)
    bary = fragments.foreground_barycentric.to(attributes.dtype).t()[..., None]  # (3, N, 1)
    out_fg = values[0] * bary[0] + values[1] * bary[1] + values[2] * bary[2]  # (N, C)
    out = torch.zeros(batch * height * width, channels, dtype=out_fg.dtype, device=out_fg.device)
    return out.index_copy_(0, fg, out_fg).reshape(batch, height, width, channels)
