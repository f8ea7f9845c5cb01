"""Check images: samples drawn with their landmarks, to look at (not used in training).

Colours (see :attr:`mlanet.data.sources.schema.LandmarkDefinition.frontal_side`): red for
points on the image's left of a frontal face, blue for the image's right, green for the
midline. Each visible point is a dot centred on its coordinate (pixel centres at +0.5) with
its index beside it; points that are not visible are not drawn. Every tile is scaled up to
``tile`` pixels (points scaled with it) and captioned with the key's file name and the yaw.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from mlanet.fileutil import write_bytes_atomic
from mlanet.data.sources.schema import DEFINITIONS, FaceSample

_SIDE_COLOUR = {"L": (255, 40, 40), "R": (40, 120, 255), "C": (40, 220, 40)}


def draw_sample(sample: FaceSample, tile: int = 256, labels: bool = True):  # -> PIL.Image.Image
    """One tile: the sample's image scaled to fit ``tile`` x ``tile`` with its landmarks drawn.

    Returns a PIL RGB image of size (tile, tile + 14) (caption strip below).
    """
    from PIL import Image, ImageDraw

    img = sample.image
    h, w = img.shape[:2]
    s = tile / max(h, w)
    pic = Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (tile, tile + 14), (30, 30, 30))
    canvas.paste(pic, (0, 0))
    d = ImageDraw.Draw(canvas)
    r = max(1.5, tile / 160)
    for name, ls in sample.landmark_sets.items():
        sides = DEFINITIONS[name].frontal_side
        for i in np.flatnonzero(ls.visible):
            # continuous coordinate u (centre of pixel i at i + 0.5) -> PIL pixel index u - 0.5
            x, y = float(ls.points[i, 0]) * s - 0.5, float(ls.points[i, 1]) * s - 0.5
            colour = _SIDE_COLOUR[sides[i]]
            d.ellipse([x - r, y - r, x + r, y + r], fill=colour)
            if labels and len(sides) <= 21:
                d.text((x + r + 1, y - r - 3), str(i), fill=colour)
    yaw = "" if sample.yaw_deg is None else f" yaw {sample.yaw_deg:+.0f}"
    d.text((2, tile + 1), f"{Path(sample.key.split(':', 1)[-1]).name}{yaw}"[: tile // 6], fill=(230, 230, 230))
    return canvas


def draw_samples(samples: Sequence[FaceSample], out_png: str | os.PathLike[str], tile: int = 256,
                 columns: int = 4, labels: bool = True) -> Path:
    """Draw ``samples`` as a grid of tiles (:func:`draw_sample`) into a PNG, written atomically.

    Args:
        samples: the samples (their images are decoded here).
        out_png: output file.
        tile: tile side in pixels. columns: tiles per row. labels: write point indices
            (definitions of at most 21 points).

    Returns:
        The output path. Raises ``ValueError`` for an empty ``samples``; decoding errors
        propagate (:class:`mlanet.errors.AssetError` naming the file).
    """
    from PIL import Image

    if not samples:
        raise ValueError("draw_samples needs at least one sample")
    tiles = [draw_sample(s, tile, labels) for s in samples]
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    tw, th = tiles[0].size
    sheet = Image.new("RGB", (cols * tw, rows * th), (0, 0, 0))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % cols) * tw, (k // cols) * th))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return write_bytes_atomic(out_png, buf.getvalue())
