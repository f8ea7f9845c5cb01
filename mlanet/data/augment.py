"""Augmentation of cropped samples (the dicts of :func:`mlanet.data.landmarks.make_sample`).

Geometry
    One similarity transform about the crop centre ``c = (S/2, S/2)``, optionally preceded by
    a horizontal flip, acting on crop pixels (our convention: pixel (i, j) has its centre at
    (i + 0.5, j + 0.5))::

        p' = c + t + s R(theta) (F(p) - c),   F(x, y) = (S - x, y) when flipped, else identity

    ``s`` zooms (s > 1 enlarges the face), ``theta`` rotates (image axes, y down: positive is
    clockwise on screen), ``t`` shifts (pixels). The same 3 x 3 matrix
    (:attr:`AugmentDraw.matrix`) moves ``landmarks`` and ``mp468``; the image is resampled once
    with ``grid_sample(align_corners=False, padding_mode="zeros", bilinear)`` at the inverse
    image of each output pixel centre, so image content and points stay together exactly. A
    pure flip (no similarity) uses ``torch.flip`` (exact). The flip maps x -> S - x and
    permutes the 68 landmarks with :data:`IBUG68_FLIP_PERMUTATION`; ``mp468`` is permuted with
    a 468-point mirror map when one is given
    (:func:`mlanet.data.mediapipe_labels.mediapipe468_flip_permutation`), otherwise set to NaN
    with ``has_mp468`` False. ``landmarks_valid`` is unchanged (points moved outside the crop
    stay valid: the network should still place them).

Samples with parameters (``has_params`` True)
    A geometric change alters the true pose (and a flip mirrors identity and expression), so
    with ``AugmentCfg.params_policy = "skip_geometry"`` (default) such samples get only the
    photometric part (the synthetic generator already randomises pose); with ``"drop_params"``
    they are transformed like any other and ``params`` become NaN / ``has_params`` False
    whenever the geometry is not the identity.

Photometric part (in this order, after the geometry; image RGB in [0, 1], clamped at the end)
    brightness (multiply by ``b``), contrast (blend with the mean luminance), saturation (blend
    with per-pixel luminance, Rec. 601 weights), hue-ish (rotation of RGB about the grey axis),
    Gaussian blur (probability, sigma in pixels), occlusion (probability; a rectangle of random
    colour covering the pixels whose centres fall inside it; landmarks under it stay valid).

``box`` keeps the crop box of the *un-augmented* sample: evaluation must not map augmented
predictions back to the image.

Randomness: every call draws the same number of values from the given ``torch.Generator``
(:meth:`Augment.draw`), so results are deterministic given the generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION, MP468_N_POINTS, check_flip_permutation

_LUMA = (0.299, 0.587, 0.114)
_N_DRAWS = 21
_POLICIES = ("skip_geometry", "drop_params")


@dataclass(frozen=True)
class AugmentCfg:
    """Augmentation ranges (all optional: zero or probability 0 disables a part).

    Attributes:
        shift: maximum translation per axis, fraction of the crop side S (uniform).
        scale: zoom range (low, high), drawn log-uniformly; > 1 enlarges the face.
        rotation_deg: maximum in-plane rotation, degrees (uniform in +-rotation_deg).
        wide_rotation_prob: probability that the rotation is drawn from +-wide_rotation_deg
            instead (faces lying or upside down in the image; 0 disables).
        wide_rotation_deg: that wider range, degrees.
        flip_prob: probability of a horizontal flip.
        brightness: brightness factor drawn uniformly in [1 - brightness, 1 + brightness].
        contrast: contrast factor in [1 - contrast, 1 + contrast].
        saturation: saturation factor in [1 - saturation, 1 + saturation].
        hue_deg: maximum rotation of RGB about the grey axis, degrees.
        blur_prob: probability of a Gaussian blur; blur_sigma: its sigma range (pixels).
        occlusion_prob: probability of an occluding rectangle; occlusion_size: its side range,
            fraction of S (width and height drawn independently).
        params_policy: ``"skip_geometry"`` or ``"drop_params"`` (see module docstring).
    """

    shift: float = 0.05
    scale: tuple[float, float] = (0.9, 1.1)
    rotation_deg: float = 15.0
    wide_rotation_prob: float = 0.0
    wide_rotation_deg: float = 180.0
    flip_prob: float = 0.5
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue_deg: float = 8.0
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.5)
    occlusion_prob: float = 0.15
    occlusion_size: tuple[float, float] = (0.1, 0.35)
    params_policy: str = "skip_geometry"

    def __post_init__(self) -> None:
        def check(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"AugmentCfg: {msg}")

        check(0 <= self.shift < 1, f"shift must be in [0, 1), got {self.shift}")
        check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1], f"scale must be 0 < low <= high, got {self.scale}")
        check(0 <= self.rotation_deg <= 180, f"rotation_deg must be in [0, 180], got {self.rotation_deg}")
        check(0 <= self.wide_rotation_deg <= 180, f"wide_rotation_deg must be in [0, 180], got {self.wide_rotation_deg}")
        for name in ("flip_prob", "blur_prob", "occlusion_prob", "wide_rotation_prob"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be a probability, got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            check(0 <= getattr(self, name) <= 1, f"{name} must be in [0, 1], got {getattr(self, name)}")
        check(0 <= self.hue_deg <= 180, f"hue_deg must be in [0, 180], got {self.hue_deg}")
        lo, hi = self.blur_sigma
        check(0 < lo <= hi, f"blur_sigma must be 0 < low <= high, got {self.blur_sigma}")
        lo, hi = self.occlusion_size
        check(0 < lo <= hi <= 1, f"occlusion_size must be 0 < low <= high <= 1, got {self.occlusion_size}")
        check(self.params_policy in _POLICIES, f"params_policy must be one of {_POLICIES}, got {self.params_policy!r}")

    @classmethod
    def geometric_only(cls, **changes: Any) -> "AugmentCfg":
        """Only the geometric part (no colour, blur or occlusion), with overrides."""
        base = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue_deg=0.0, blur_prob=0.0, occlusion_prob=0.0)
        base.update(changes)
        return cls(**base)


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices of one call (values, not ranges).

    Attributes:
        flip: horizontal flip. scale, rotation (radians), shift (2,) pixels: the similarity.
        brightness, contrast, saturation: factors; hue: radians.
        blur_sigma: pixels, or 0 for no blur.
        occlusion: (x0, y0, x1, y1) crop pixels or None; occlusion_colour: (3,) RGB.
        size: crop side S the draw was made for.
    """

    flip: bool
    scale: float
    rotation: float
    shift: tuple[float, float]
    brightness: float
    contrast: float
    saturation: float
    hue: float
    blur_sigma: float
    occlusion: tuple[float, float, float, float] | None
    occlusion_colour: tuple[float, float, float]
    size: int

    @property
    def has_similarity(self) -> bool:
        return self.scale != 1.0 or self.rotation != 0.0 or self.shift != (0.0, 0.0)

    @property
    def has_geometry(self) -> bool:
        return self.flip or self.has_similarity

    @property
    def matrix(self) -> np.ndarray:
        """(3, 3) float64 homogeneous map from input to output crop pixels (flip included)."""
        S = float(self.size)
        c = S / 2.0
        flip = np.array([[-1.0, 0.0, S], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if self.flip else np.eye(3)
        co, si = math.cos(self.rotation), math.sin(self.rotation)
        a = self.scale * np.array([[co, -si], [si, co]])
        m = np.eye(3)
        m[:2, :2] = a
        m[:2, 2] = np.array([c, c]) + np.array(self.shift) - a @ np.array([c, c])
        return m @ flip

    def without_geometry(self) -> "AugmentDraw":
        """The same draw with the geometric part set to the identity."""
        return AugmentDraw(
            False, 1.0, 0.0, (0.0, 0.0), self.brightness, self.contrast, self.saturation, self.hue,
            self.blur_sigma, self.occlusion, self.occlusion_colour, self.size,
        )


def transform_points(points: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Apply a (3, 3) homogeneous map to points (N, 2) (NaN rows stay NaN); same dtype."""
    m = torch.as_tensor(matrix, dtype=torch.float64)
    p = points.to(torch.float64)
    return (p @ m[:2, :2].T + m[:2, 2]).to(points.dtype)


def warp_image(image: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Resample an image (3, H, W) so that input point p lands on ``matrix @ p`` (pixels).

    Output pixel centres (i + 0.5, j + 0.5) sample the input at ``inverse(matrix) @ centre``
    (bilinear, zeros outside, ``align_corners=False``, so normalised -1/+1 are the image
    edges and continuous pixel u maps to ``2u / W - 1``).
    """
    _, H, W = image.shape
    inv = torch.as_tensor(np.linalg.inv(matrix), dtype=torch.float64)
    ys = torch.arange(H, dtype=torch.float64) + 0.5
    xs = torch.arange(W, dtype=torch.float64) + 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    src_x = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    src_y = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    grid = torch.stack([2.0 * src_x / W - 1.0, 2.0 * src_y / H - 1.0], dim=-1).to(image.dtype)
    return F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    radius = min(radius, min(image.shape[-2:]) - 1)
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = image.shape[0]
    img = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    img = F.conv2d(img, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    img = F.conv2d(img, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return img[0]


def _hue_matrix(angle: float) -> torch.Tensor:
    """Rotation of RGB vectors about the grey axis (1, 1, 1) / sqrt(3) by ``angle`` radians."""
    k = torch.full((3,), 1.0 / math.sqrt(3.0), dtype=torch.float64)
    kx = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]], dtype=torch.float64)
    return math.cos(angle) * torch.eye(3, dtype=torch.float64) + math.sin(angle) * kx + (1 - math.cos(angle)) * torch.outer(k, k)


class Augment:
    """Random geometric + photometric augmentation of a cropped sample.

    Args:
        cfg: ranges and probabilities.
        mp468_flip_permutation: (468,) mirror map of the MediaPipe points; without it a flip
            sets ``mp468`` to NaN and ``has_mp468`` False.

    ``augment(sample, generator)`` returns a new dict (the input is not modified) with
    ``image``, ``landmarks``, ``mp468`` (and the flags/params per the module docstring)
    replaced; every other key is passed through.
    """

    def __init__(self, cfg: AugmentCfg = AugmentCfg(), mp468_flip_permutation: Sequence[int] | None = None) -> None:
        self.cfg = cfg
        self.flip68 = torch.as_tensor(check_flip_permutation(IBUG68_FLIP_PERMUTATION, 68))
        self.flip468 = (
            None
            if mp468_flip_permutation is None
            else torch.as_tensor(check_flip_permutation(mp468_flip_permutation, MP468_N_POINTS))
        )

    def draw(self, size: int, generator: torch.Generator) -> AugmentDraw:
        """Draw the random choices for a crop of side ``size`` (always ``_N_DRAWS`` uniforms)."""
        cfg = self.cfg
        u = torch.rand(_N_DRAWS, generator=generator, dtype=torch.float64).tolist()

        def sym(v: float, r: float) -> float:  # uniform in [-r, r]
            return (2.0 * v - 1.0) * r

        lo, hi = math.log(cfg.scale[0]), math.log(cfg.scale[1])
        scale = math.exp(lo + (hi - lo) * u[1]) if hi > lo else cfg.scale[0]
        blur = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[10] if u[9] < cfg.blur_prob else 0.0
        occlusion = None
        if u[11] < cfg.occlusion_prob:
            a, b = cfg.occlusion_size
            w, h = (a + (b - a) * u[12]) * size, (a + (b - a) * u[13]) * size
            x0, y0 = (size - w) * u[14], (size - h) * u[15]
            occlusion = (x0, y0, x0 + w, y0 + h)
        return AugmentDraw(
            flip=u[0] < cfg.flip_prob,
            scale=scale,
            rotation=math.radians(sym(u[20], cfg.wide_rotation_deg) if u[19] < cfg.wide_rotation_prob
                                  else sym(u[2], cfg.rotation_deg)),
            shift=(sym(u[3], cfg.shift * size), sym(u[4], cfg.shift * size)),
            brightness=1.0 + sym(u[5], cfg.brightness),
            contrast=1.0 + sym(u[6], cfg.contrast),
            saturation=1.0 + sym(u[7], cfg.saturation),
            hue=math.radians(sym(u[8], cfg.hue_deg)),
            blur_sigma=blur,
            occlusion=occlusion,
            occlusion_colour=(u[16], u[17], u[18]),
            size=size,
        )

    def __call__(self, sample: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        image = sample["image"]
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] != image.shape[2]:
            raise ValueError(f"augment expects a square (3, S, S) crop, got {tuple(image.shape)}")
        return self.apply(sample, self.draw(int(image.shape[-1]), generator))

    def apply(self, sample: dict[str, Any], draw: AugmentDraw) -> dict[str, Any]:
        """Apply a given draw (see :meth:`draw`) to a sample; returns a new dict."""
        out = dict(sample)
        has_params = bool(sample.get("has_params", torch.tensor(False)))
        if has_params and self.cfg.params_policy == "skip_geometry":
            draw = draw.without_geometry()
        image = sample["image"]
        if draw.has_geometry:
            out.update(self._geometry(sample, draw))
            if has_params:  # params_policy == "drop_params"
                out["params"] = torch.full_like(sample["params"], float("nan"))
                out["has_params"] = torch.tensor(False)
            image = out["image"]
        out["image"] = self._photometric(image, draw)
        return out

    def _geometry(self, sample: dict[str, Any], draw: AugmentDraw) -> dict[str, Any]:
        m = draw.matrix
        res: dict[str, Any] = {}
        if draw.has_similarity:
            res["image"] = warp_image(sample["image"], m)
        else:  # pure flip: exact
            res["image"] = torch.flip(sample["image"], dims=[-1])
        lm = transform_points(sample["landmarks"], m)
        valid = sample["landmarks_valid"]
        if draw.flip:
            lm, valid = lm[self.flip68], valid[self.flip68]
        res["landmarks"], res["landmarks_valid"] = lm, valid
        if "mp468" in sample:
            mp = transform_points(sample["mp468"], m)
            has_mp = sample["has_mp468"]
            if draw.flip:
                if self.flip468 is not None:
                    mp = mp[self.flip468]
                else:
                    mp = torch.full_like(mp, float("nan"))
                    has_mp = torch.tensor(False)
            res["mp468"], res["has_mp468"] = mp, has_mp
        return res

    def _photometric(self, image: torch.Tensor, draw: AugmentDraw) -> torch.Tensor:
        img = image
        changed = False
        luma = torch.tensor(_LUMA, dtype=img.dtype).view(3, 1, 1)
        if draw.brightness != 1.0:
            img = img * draw.brightness
            changed = True
        if draw.contrast != 1.0:
            mean = (img * luma).sum(0).mean()
            img = (img - mean) * draw.contrast + mean
            changed = True
        if draw.saturation != 1.0:
            grey = (img * luma).sum(0, keepdim=True)
            img = (img - grey) * draw.saturation + grey
            changed = True
        if draw.hue != 0.0:
            r = _hue_matrix(draw.hue).to(img.dtype)
            img = torch.einsum("ij,jhw->ihw", r, img)
            changed = True
        if changed:
            img = img.clamp(0.0, 1.0)
        if draw.blur_sigma > 0:
            img = _gaussian_blur(img, draw.blur_sigma)
        if draw.occlusion is not None:
            x0, y0, x1, y1 = draw.occlusion
            S = img.shape[-1]
            centres = torch.arange(S, dtype=torch.float64) + 0.5
            cols = ((centres >= x0) & (centres < x1)).nonzero().flatten()
            rows = ((centres >= y0) & (centres < y1)).nonzero().flatten()
            if len(cols) and len(rows):
                img = img.clone()
                colour = torch.tensor(draw.occlusion_colour, dtype=img.dtype).view(3, 1, 1)
                img[:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = colour
        return img
