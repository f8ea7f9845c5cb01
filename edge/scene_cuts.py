"""Hard scene cuts from colour histograms (the tracker re-detects and drops unmatched tracks at a cut).

Scene cuts (:class:`SceneCutDetector`)
    Total-variation distance of 3 x 32-bin colour histograms of consecutive subsampled
    frames; threshold :data:`SCENE_CUT_THRESHOLD` = 0.12 (cuts in the shared clip 0.215-0.381,
    motion <= 0.058).
"""

from __future__ import annotations

import math

import numpy as np

from mlanet.edge.face_detection import _check_image


#: Default histogram distance above which two consecutive frames are a scene cut (see
#: :class:`SceneCutDetector`): the hard cuts of the shared multi-face clip give 0.215-0.381,
#: ordinary motion at most 0.058.
SCENE_CUT_THRESHOLD: float = 0.12


class SceneCutDetector:
    """Hard scene cuts from colour histograms of consecutive (downscaled) frames.

    Each frame is subsampled by an integer stride to about ``target_width`` pixels wide, and
    each RGB channel gets a ``bins``-bin histogram (normalised to sum 1). The distance of two
    frames is the total-variation distance ``0.5 * sum |p - q|`` averaged over the three
    channels (0: same colours, 1: disjoint). A frame is a cut when the distance to the
    previous frame given to :meth:`__call__` is ``>= threshold``.

    Measured on ``hamilton_360p_multiface.mp4`` (640x360, 275 frames, stride 4 -> 160x90,
    32 bins): the three hard cuts give 0.215 (frame 20), 0.381 (82) and 0.253 (211); every
    other frame is at most 0.058 (camera motion and a walking crowd, frames 21-27 and 46-47),
    so :data:`SCENE_CUT_THRESHOLD` = 0.12 sits about a factor 2 from both. The mean absolute
    pixel difference separates less well: 30.6, 28.5, 29.2 at the cuts but up to 14.2 for
    motion, so it is not used. ``obama_720p.mp4`` (55 frames, one shot): at most 0.023.
    Costs about 0.1 ms per 640x360 frame.

    Gradual transitions (fades, dissolves) are not cuts; the tracker's schedule handles them.
    """

    def __init__(self, threshold: float = SCENE_CUT_THRESHOLD, bins: int = 32, target_width: int = 160) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"scene-cut threshold must be in (0, 1], got {threshold}")
        if bins < 2 or bins > 256 or 256 % bins:
            raise ValueError(f"bins must divide 256 (2..256), got {bins}")
        if target_width < 8:
            raise ValueError(f"target_width must be >= 8, got {target_width}")
        self.threshold = float(threshold)
        self.bins = int(bins)
        self.target_width = int(target_width)
        self._prev: np.ndarray | None = None
        #: Distance of the last frame to the one before it (None for the first frame).
        self.last_distance: float | None = None

    def histogram(self, image_rgb: np.ndarray) -> np.ndarray:
        """(3, bins) normalised colour histograms of a subsampled (H, W, 3) uint8 RGB image."""
        a = _check_image(image_rgb, "SceneCutDetector")
        k = max(1, int(round(a.shape[1] / self.target_width)))
        small = a[::k, ::k]
        shift = 8 - int(math.log2(self.bins))
        n = small.shape[0] * small.shape[1]
        return np.stack(
            [np.bincount((small[..., c] >> shift).ravel(), minlength=self.bins) for c in range(3)]
        ).astype(np.float64) / n

    @staticmethod
    def distance(h1: np.ndarray, h2: np.ndarray) -> float:
        """Total-variation distance of two (3, bins) histograms, averaged over channels."""
        return float(0.5 * np.abs(h1 - h2).sum(axis=1).mean())

    def __call__(self, image_rgb: np.ndarray) -> bool:
        """Feed the next frame; True if it starts a new shot (never for the first frame)."""
        h = self.histogram(image_rgb)
        prev, self._prev = self._prev, h
        if prev is None:
            self.last_distance = None
            return False
        self.last_distance = self.distance(prev, h)
        return self.last_distance >= self.threshold

    def reset(self) -> None:
        """Forget the previous frame (the next frame is never a cut)."""
        self._prev = None
        self.last_distance = None
