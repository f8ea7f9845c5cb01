"""CPU preprocessing: crop, warp and resize the tracked faces of one frame for the network.

A thin layer over :func:`mlanet.preprocess.crop_image` (the project's single crop convention):
only the part of the frame the boxes touch is converted to float, so a small face in a 1080p
frame does not pay for converting the whole frame. The result is identical to cropping the
whole frame (tested), because pixels outside the image are zero either way.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from mlanet.preprocess import CropBox, crop_image


def crop_faces(image: np.ndarray, boxes: Sequence[CropBox], input_size: int) -> np.ndarray:
    """Crops of ``boxes`` from ``image``.

    Args:
        image: (H, W, 3) uint8 RGB frame.
        boxes: N square boxes in image pixels (may leave the image; outside is black).
        input_size: S, the network input size.

    Returns:
        (N, 3, S, S) float32 RGB in [0, 1], C-contiguous.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
    if not boxes:
        return np.zeros((0, 3, input_size, input_size), np.float32)
    H, W = a.shape[:2]
    # Pixels a bilinear sample inside any box can touch: the union of the boxes plus one pixel.
    x0 = max(0, min(math.floor(b.x0) - 1 for b in boxes))
    y0 = max(0, min(math.floor(b.y0) - 1 for b in boxes))
    x1 = min(W, max(math.ceil(b.x0 + b.size) + 1 for b in boxes))
    y1 = min(H, max(math.ceil(b.y0 + b.size) + 1 for b in boxes))
    if x1 <= x0 or y1 <= y0:  # every box lies outside the image
        return np.zeros((len(boxes), 3, input_size, input_size), np.float32)
    region = torch.from_numpy(np.ascontiguousarray(a[y0:y1, x0:x1])).permute(2, 0, 1).float().div_(255.0)
    shifted = [CropBox(b.x0 - x0, b.y0 - y0, b.size) for b in boxes]
    # Outside the region but inside the image there is nothing a sample can reach (one-pixel margin),
    # so zero padding at the region's border equals the frame's content there.
    return np.ascontiguousarray(crop_image(region, shifted, input_size).numpy())
