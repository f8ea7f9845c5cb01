"""A check image of a face model: regions, 68 landmarks and MediaPipe points over a shaded mesh.

Pure numpy + Pillow (no GL), orthographic, painter's algorithm: good enough to *look at* a
model — e.g. that landmarks sit on the eyes, nose, lips and jaw, and that region labels
cover the right areas. Not a renderer for the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlanet.morphable.data import FaceModelData

#: Display colours per region name (RGB 0..255).
REGION_COLOURS = {
    "skin": (225, 190, 170),
    "nose": (235, 170, 120),
    "brows": (120, 90, 60),
    "eyes": (120, 170, 230),
    "lips": (220, 90, 110),
    "neck_head": (190, 190, 190),
}


def render_preview(
    data: FaceModelData,
    out: str | Path,
    *,
    size: int = 768,
    expression: dict[str, float] | None = None,
    yaw_deg: float = 0.0,
) -> Path:
    """Write a PNG check image of ``data`` (mean identity, optional expression weights) to ``out``."""
    from PIL import Image, ImageDraw

    verts = data.mean_shape.astype(np.float64).copy()
    for name, weight in (expression or {}).items():
        verts += weight * data.expression_basis[data.expression_names.index(name)]
    a = np.deg2rad(yaw_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    verts = verts @ rot.T
    lo, hi = verts[:, :2].min(0), verts[:, :2].max(0)
    scale = 0.9 * size / (hi - lo).max()
    xy = (verts[:, :2] - (lo + hi) / 2) * scale + size / 2

    tris = data.triangles
    normals = np.cross(verts[tris[:, 1]] - verts[tris[:, 0]], verts[tris[:, 2]] - verts[tris[:, 0]])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    facing = normals[:, 2] < 0  # front faces look at the viewer (-z)
    shade = np.clip(-normals[:, 2], 0.0, 1.0) * 0.75 + 0.25
    palette = np.array([REGION_COLOURS.get(n, (200, 200, 200)) for n in data.region_names], dtype=np.float64)
    tri_colour = palette[data.region_labels[tris[:, 0]]] * shade[:, None]
    order = np.argsort(-verts[tris].mean(axis=1)[:, 2])  # far to near

    img = Image.new("RGB", (size, size), (30, 30, 36))
    draw = ImageDraw.Draw(img)
    for t in order:
        if facing[t]:
            draw.polygon([tuple(p) for p in xy[tris[t]]], fill=tuple(int(c) for c in tri_colour[t]))
    if "mediapipe/triangle" in data.extra:
        corners = xy[tris[data.extra["mediapipe/triangle"]]]
        mp = (corners * data.extra["mediapipe/barycentric"][:, :, None]).sum(axis=1)
        for p in mp:
            draw.ellipse([p[0] - 1.5, p[1] - 1.5, p[0] + 1.5, p[1] + 1.5], fill=(40, 220, 90))
    r = max(2.0, size / 220)
    for i, p in enumerate(xy[data.landmarks68]):
        draw.ellipse([p[0] - r, p[1] - r, p[0] + r, p[1] + r], fill=(255, 235, 40), outline=(0, 0, 0))
        draw.text((p[0] + r, p[1] - 3 * r), str(i), fill=(255, 255, 255))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    img.save(tmp)
    tmp.replace(out)
    return out
