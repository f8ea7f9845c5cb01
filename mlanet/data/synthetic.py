"""Synthetic training faces rendered from the face model, with exact labels.

Each sample is a random face (identity, expression, albedo), pose, SH lighting, background,
optional occluder and sensor noise, rendered with the differentiable renderer
(:mod:`mlanet.render`) through the crop camera of :class:`~mlanet.preprocess.PreprocessCfg`,
so its labels are exact: the flat parameters that produced it, the projected 3-D landmarks
(and MediaPipe correspondence points when the face model has them) in crop pixels.

Framing mimics real crops: the pose's translation is solved so that the projected 68-landmark
box has side ``input_size / roi_scale`` (the crop that :func:`mlanet.preprocess.box_from_points`
would take) times a random scale in ``1 +- scale_jitter``, centred on the crop centre plus a
random offset of up to ``shift_jitter * input_size`` per axis.

Determinism: sample ``i`` of a dataset with seed ``s`` is a pure function of ``(s, i)`` and the
face model: every random number comes from a ``torch.Generator`` seeded from ``(s, i)`` and
drawn in a fixed order. :meth:`SyntheticFaces.render_batch` renders many samples in one
rasteriser call and gives bit-identical samples to ``dataset[i]`` (the face model is evaluated
per sample, since batched matrix products round differently; everything after that is
elementwise per pixel).

Face models without eyeballs and mouth interior (ICT-FaceKit's face mesh) have holes there.
Every closed boundary loop of the mesh whose vertices are mostly in the ``eyes`` (or ``lips``)
region is closed by a cap drawn with the face: an eye cap has a sclera rim, an iris ring and a
pupil with a random gaze offset and iris colour; a mouth cap is a dark red cavity. Caps are
shaded with the mean irradiance of their rim and are not skin.

Sample dict (:data:`mlanet.data.landmarks.SAMPLE_KEYS` plus ``skin_mask``), CPU tensors:
``image`` (3, S, S) float32 RGB in [0, 1]; ``params`` (P,) float32 in ``face_model.layout``;
``has_params`` bool (True); ``landmarks`` (68, 2) float32 crop pixels (continuous coordinates,
pixel centres at ``i + 0.5``; projections of the 3-D landmarks, so self-occluded ones are
included); ``landmarks_valid`` (68,) bool (all True); ``mp468`` (468, 2) float32 crop pixels or
NaN, ``has_mp468`` bool; ``box`` (3,) float64 ``(0, 0, S)`` (the image *is* the crop);
``index`` int64; ``skin_mask`` (S, S) float32: the per-vertex skin indicator (regions ``skin``
and ``nose``) interpolated over the visible surface, 0 at background, on eye and mouth caps and
under occluders.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from mlanet.conventions import COLOUR_CHANNELS, PIXEL_CENTER_OFFSET, SH_COEFFS_PER_CHANNEL
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.geometry.sh import directional_light_sh, sh_irradiance
from mlanet.morphable.model import MorphableModel
from mlanet.params import UNIT_AMBIENT_SH_DC, FaceParams
from mlanet.preprocess import PreprocessCfg
from mlanet.render.rasterizer import interpolate, rasterize

__all__ = ["SyntheticCfg", "SyntheticFaces", "SKIN_REGIONS_FOR_MASK", "hole_loops"]

#: Face-model regions whose rendered visibility forms ``skin_mask``.
SKIN_REGIONS_FOR_MASK: tuple[str, ...] = ("skin", "nose")

_BLUR_RADIUS = 3  # taps on each side of the Gaussian blur kernel
_BACKGROUND_GRID = 6  # low-frequency background noise: a (3, 6, 6) grid upsampled bilinearly
#: Hole caps: colours (RGB reflectance) of rim, ring and centre, and the ring's relative size.
_SCLERA = (0.80, 0.77, 0.73)
_PUPIL = (0.03, 0.03, 0.03)
_IRIS_PALETTE = torch.tensor(
    [[0.30, 0.18, 0.10], [0.40, 0.29, 0.14], [0.22, 0.32, 0.42], [0.25, 0.33, 0.20], [0.14, 0.09, 0.06]]
)
_MOUTH = ((0.42, 0.20, 0.19), (0.22, 0.08, 0.08), (0.10, 0.04, 0.04))
_EYE_RING = 0.5  # iris radius as a fraction of the eye opening (centre to rim)
_MOUTH_RING = 0.6
_GAZE = 0.3  # largest iris offset as a fraction of the eye opening's half extent


def hole_loops(triangles: np.ndarray, region_labels: np.ndarray, region_names: list[str]) -> list[tuple[str, np.ndarray]]:
    """Closed boundary loops of a triangle mesh that are eye or mouth openings.

    Args:
        triangles: (F, 3) vertex indices (counter-clockwise front faces).
        region_labels: (V,) region index per vertex; region_names: names of the labels.

    Returns:
        ``(kind, loop)`` pairs, ``kind`` in ``("eye", "mouth")``, ``loop`` (n,) vertex indices in
        the direction of the mesh's boundary edges (so a cap traversing it backwards has the
        mesh's orientation). Loops through non-manifold vertices are skipped.
    """
    tri = np.asarray(triangles, dtype=np.int64)
    directed = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    n_vertices = int(max(tri.max() + 1, len(region_labels)))
    code = directed[:, 0] * n_vertices + directed[:, 1]
    reverse = directed[:, 1] * n_vertices + directed[:, 0]
    boundary = directed[~np.isin(reverse, code)]
    starts, counts = np.unique(boundary[:, 0], return_counts=True)
    bad = set(starts[counts > 1].tolist())
    following = {int(a): int(b) for a, b in boundary if int(a) not in bad}
    kinds = {"eyes": "eye", "lips": "mouth"}
    loops, seen = [], set()
    for start in following:
        if start in seen:
            continue
        loop, v = [start], following[start]
        seen.add(start)
        while v != start and v in following and v not in seen:
            loop.append(v)
            seen.add(v)
            v = following[v]
        if v != start or len(loop) < 3:
            continue  # open chain (non-manifold) or degenerate
        labels = np.bincount(np.asarray(region_labels)[loop], minlength=len(region_names))
        name = region_names[int(labels.argmax())]
        if name in kinds and labels.max() * 2 > len(loop):
            loops.append((kinds[name], np.asarray(loop, dtype=np.int64)))
    return loops


@dataclass(frozen=True)
class SyntheticCfg:
    """Distributions of the synthetic generator (all ranges inclusive, uniform unless stated).

    Shape and appearance:
        identity_std: identity coefficients ~N(0, identity_std^2) (the bases are in units of
            one standard deviation).
        expression_active_prob: blendshape models: each expression weight is active with this
            probability (sparse); an active weight is ``expression_max * u^2``, ``u ~ U(0, 1)``
            (mostly small). PCA expression models (``expression_kind != "blendshapes"``) use
            ``N(0, expression_pca_std^2)`` on the active coefficients instead.
        albedo_std: albedo coefficients ~N(0, albedo_std^2).
    Pose (degrees; Euler angles as in ``docs/conventions.md``):
        yaw_deg, pitch_deg, roll_deg: each angle ~U(-range, range).
        scale_jitter: the landmark box side is ``S / roi_scale * U(1 - j, 1 + j)``.
        shift_jitter: the landmark box centre is the crop centre plus ``U(-j, j) * S`` per axis.
    Lighting (camera-frame SH, unit ambient = ``UNIT_AMBIENT_SH_DC``):
        ambient_range: ambient (DC) irradiance, times a per-channel tint ``1 + N(0, tint_std^2)``.
        light_range: irradiance of one distant light from a random direction on the camera's
            side of the face (``directional_light_sh``), with its own tint.
        tint_std: colour tint spread of ambient and directional light.
        sh_noise_std: extra N(0, std^2) on every SH coefficient (irregular environments).
    Background (behind the face):
        background_noise_max: a smooth two-colour gradient mixed with upsampled low-frequency
            colour noise (weight ~U(0, 0.6)) plus per-pixel noise of std ~U(0, max).
    Occluders (in front of the face):
        occluder_prob: probability of one rectangle or ellipse of random colour and texture.
        occluder_max_area: its area is at most this fraction of the landmark box (~U(0.03, max)),
            aspect ratio ~logU(1/3, 3), centre uniform in the landmark box.
    Sensor:
        noise_std_max: Gaussian pixel noise of std ~U(0, max).
        blur_prob, blur_sigma_range: Gaussian blur (sigma in pixels) with this probability.
    """

    identity_std: float = 1.0
    expression_active_prob: float = 0.15
    expression_max: float = 1.0
    expression_pca_std: float = 0.5
    albedo_std: float = 1.0
    yaw_deg: float = 80.0
    pitch_deg: float = 30.0
    roll_deg: float = 25.0
    scale_jitter: float = 0.1
    shift_jitter: float = 0.1
    ambient_range: tuple[float, float] = (0.45, 1.0)
    light_range: tuple[float, float] = (0.0, 0.6)
    tint_std: float = 0.06
    sh_noise_std: float = 0.02
    background_noise_max: float = 0.12
    occluder_prob: float = 0.3
    occluder_max_area: float = 0.2
    noise_std_max: float = 0.02
    blur_prob: float = 0.3
    blur_sigma_range: tuple[float, float] = (0.4, 1.2)

    def __post_init__(self) -> None:
        for name in ("identity_std", "expression_max", "expression_pca_std", "albedo_std", "tint_std",
                     "sh_noise_std", "background_noise_max", "noise_std_max"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"SyntheticCfg.{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("expression_active_prob", "occluder_prob", "blur_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticCfg.{name} must be a probability in [0, 1], got {getattr(self, name)!r}")
        for name, top in (("yaw_deg", 89.0), ("pitch_deg", 89.0), ("roll_deg", 180.0)):
            if not 0 <= getattr(self, name) <= top:
                raise ValueError(f"SyntheticCfg.{name} must be in [0, {top}] degrees, got {getattr(self, name)!r}")
        if not (0 <= self.scale_jitter < 1 and 0 <= self.shift_jitter <= 0.5):
            raise ValueError("SyntheticCfg.scale_jitter must be in [0, 1) and shift_jitter in [0, 0.5]")
        if not 0 < self.occluder_max_area <= 1:
            raise ValueError(f"SyntheticCfg.occluder_max_area must be in (0, 1], got {self.occluder_max_area!r}")
        for name in ("ambient_range", "light_range", "blur_sigma_range"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"SyntheticCfg.{name} must be (lo, hi) with 0 <= lo <= hi, got {(lo, hi)!r}")
        if self.blur_sigma_range[0] <= 0 and self.blur_prob > 0:
            raise ValueError("SyntheticCfg.blur_sigma_range must be positive when blur_prob > 0")


@dataclass
class _Draw:
    """Every random number of one sample, drawn in a fixed order from its generator."""

    identity: Tensor  # (K_id,)
    expression: Tensor  # (K_exp,)
    albedo: Tensor  # (K_alb,)
    rotation: Tensor  # (3,) pitch, yaw, roll, radians
    scale: Tensor  # () landmark-box scale factor
    shift: Tensor  # (2,) landmark-box centre offset, fraction of S
    lighting: Tensor  # (3, 9)
    bg_colors: Tensor  # (2, 3) gradient end colours
    bg_angle: Tensor  # () gradient direction, radians
    bg_grid: Tensor  # (3, G, G) low-frequency colours
    bg_mix: Tensor  # () weight of the low-frequency noise
    bg_noise_std: Tensor  # ()
    occluder: Tensor  # (9,) present, is_ellipse, area, log_aspect, u, v, r, g, b
    occluder_texture: Tensor  # () texture amplitude
    noise_std: Tensor  # ()
    blur_sigma: Tensor  # () 0 = no blur
    iris: Tensor  # (3,) iris colour
    gaze: Tensor  # (2,) iris offset, fraction of the eye opening's half extent (x, y)
    sclera: Tensor  # () sclera brightness factor
    mouth: Tensor  # () mouth cavity brightness factor
    generator: torch.Generator  # continues with the per-pixel noise fields, drawn into batch buffers


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


class SyntheticFaces(Dataset):
    """Random faces rendered from ``face_model`` into ``preprocess.input_size`` crops; exact labels.

    Args:
        face_model: the :class:`MorphableModel` (CPU or CUDA; outputs are always on the CPU).
        preprocess: crop size ``S`` and crop camera (``preprocess.camera()``), ``roi_scale``
            and ``prior_depth_m`` for framing.
        cfg: distributions (:class:`SyntheticCfg`).
        length: number of samples (indices ``0 .. length - 1``).
        seed: dataset seed; sample ``i`` depends only on ``(seed, i)``.

    ``dataset[i]`` renders one sample; :meth:`render_batch` / :meth:`generate` render many in one
    rasteriser call (faster; identical samples). See the module docstring for the keys.
    """

    def __init__(
        self,
        face_model: MorphableModel,
        preprocess: PreprocessCfg,
        cfg: SyntheticCfg = SyntheticCfg(),
        length: int = 100_000,
        seed: int = 0,
    ) -> None:
        if not isinstance(face_model, MorphableModel):
            raise TypeError(f"face_model must be a MorphableModel, got {type(face_model).__name__}")
        if not isinstance(preprocess, PreprocessCfg):
            raise TypeError(f"preprocess must be a PreprocessCfg, got {type(preprocess).__name__}")
        if not isinstance(cfg, SyntheticCfg):
            raise TypeError(f"cfg must be a SyntheticCfg, got {type(cfg).__name__}")
        if not isinstance(length, numbers.Integral) or isinstance(length, bool) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.face_model = face_model
        self.preprocess = preprocess
        self.cfg = cfg
        self.length = int(length)
        self.seed = int(seed)
        self.blendshapes = str(face_model.header.get("expression_kind", "blendshapes")) == "blendshapes"
        self._skin = face_model.region_mask(*SKIN_REGIONS_FOR_MASK).to(torch.float32)  # (V,)
        self.holes = hole_loops(
            face_model.triangles.cpu().numpy(), face_model.region_labels.cpu().numpy(), face_model.region_names
        )
        # Cap of a loop of n vertices: rim copies (n), ring (n), centre (1), appended after the
        # model's V vertices; triangles rim->ring quads and a ring->centre fan.
        cap_tris, offset = [], face_model.n_vertices
        for _, loop in self.holes:
            n = len(loop)
            k = torch.arange(n)
            rim, ring, centre = offset + k, offset + n + k, offset + 2 * n
            rim_next, ring_next = offset + (k + 1) % n, offset + n + (k + 1) % n
            cap_tris += [
                torch.stack([rim_next, rim, ring], 1),
                torch.stack([rim_next, ring, ring_next], 1),
                torch.stack([ring_next, ring, torch.full_like(k, centre)], 1),
            ]
            offset += 2 * n + 1
        device = face_model.triangles.device
        self._triangles = torch.cat([face_model.triangles.cpu()] + cap_tris).to(device)  # (F + F_caps, 3)
        self._skin_ext = torch.cat([self._skin.cpu(), torch.zeros(offset - face_model.n_vertices)]).to(device)

    def __len__(self) -> int:
        return self.length

    # ------------------------------------------------------------------ randomness
    def generator(self, index: int) -> torch.Generator:
        """The CPU generator of sample ``index``, seeded from ``(seed, index)`` (well mixed)."""
        state = np.random.SeedSequence([self.seed, int(index)]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))

    def _check_index(self, index: int) -> int:
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic samples")
        return i

    def _draw(self, index: int) -> _Draw:
        c, m = self.cfg, self.face_model
        g = self.generator(index)
        identity = c.identity_std * torch.randn(m.n_identity, generator=g)
        active = torch.rand(m.n_expression, generator=g) < c.expression_active_prob
        if self.blendshapes:
            expression = c.expression_max * torch.rand(m.n_expression, generator=g).square() * active
        else:
            expression = c.expression_pca_std * torch.randn(m.n_expression, generator=g) * active
        albedo = c.albedo_std * torch.randn(m.n_albedo, generator=g)
        limits = torch.tensor([c.pitch_deg, c.yaw_deg, c.roll_deg]) * (math.pi / 180.0)
        rotation = (2.0 * torch.rand(3, generator=g) - 1.0) * limits
        scale = _uniform(g, 1.0 - c.scale_jitter, 1.0 + c.scale_jitter)
        shift = _uniform(g, -c.shift_jitter, c.shift_jitter, 2)

        # Lighting: tinted ambient + one tinted distant light on the camera's side + small noise.
        ambient = _uniform(g, *c.ambient_range) * (1.0 + c.tint_std * torch.randn(3, generator=g)).clamp_min(0.0)
        direction = torch.stack(
            [_uniform(g, -1.0, 1.0), _uniform(g, -0.8, 0.8), -_uniform(g, 0.15, 1.0)]
        ).reshape(3)
        direction = direction / direction.norm()
        light = _uniform(g, *c.light_range) * (1.0 + c.tint_std * torch.randn(3, generator=g)).clamp_min(0.0)
        lighting = directional_light_sh(direction, light)  # (3, 9)
        lighting[:, 0] += UNIT_AMBIENT_SH_DC * ambient
        lighting = lighting + c.sh_noise_std * torch.randn(COLOUR_CHANNELS, SH_COEFFS_PER_CHANNEL, generator=g)

        bg_colors = torch.rand(2, 3, generator=g)
        bg_angle = _uniform(g, 0.0, 2.0 * math.pi)
        bg_grid = torch.rand(3, _BACKGROUND_GRID, _BACKGROUND_GRID, generator=g)
        bg_mix = _uniform(g, 0.0, 0.6)
        bg_noise_std = _uniform(g, 0.0, c.background_noise_max)

        occ_present = (torch.rand((), generator=g) < c.occluder_prob).float()
        occ = torch.cat(
            [
                occ_present.reshape(1),
                (torch.rand(1, generator=g) < 0.5).float(),  # ellipse or rectangle
                _uniform(g, min(0.03, c.occluder_max_area), c.occluder_max_area, 1),  # area / box area
                _uniform(g, -math.log(3.0), math.log(3.0), 1),  # log aspect (w / h)
                torch.rand(2, generator=g),  # centre in the landmark box, fractions
                torch.rand(3, generator=g),  # colour
            ]
        )
        occ_texture = _uniform(g, 0.0, 0.15)

        noise_std = _uniform(g, 0.0, c.noise_std_max)
        blur = torch.rand((), generator=g) < c.blur_prob
        blur_sigma = _uniform(g, *c.blur_sigma_range) * blur
        iris = _IRIS_PALETTE[torch.randint(len(_IRIS_PALETTE), (), generator=g)] * _uniform(g, 0.7, 1.2)
        gaze = _uniform(g, -_GAZE, _GAZE, 2)
        sclera = _uniform(g, 0.8, 1.05)
        mouth = _uniform(g, 0.6, 1.4)
        return _Draw(identity, expression, albedo, rotation, scale, shift, lighting, bg_colors, bg_angle, bg_grid,
                     bg_mix, bg_noise_std, occ, occ_texture, noise_std, blur_sigma, iris, gaze, sclera, mouth, g)

    # ------------------------------------------------------------------ geometry
    def _solve_translation(self, shape: Tensor, rotation: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """Translation (B, 3) in metres framing the landmark box as configured.

        ``shape`` (B, V, 3) model-frame vertices, ``rotation`` (B, 3) Euler radians, ``scale``
        (B,), ``shift`` (B, 2). A few fixed-point steps (depth from the box size, x/y from the
        box centre); converges to a small fraction of a pixel.
        """
        pre = self.preprocess
        S = float(pre.input_size)
        f = pre.focal_ratio * S
        R = euler_to_matrix(rotation)
        lm = self.face_model.landmarks(shape) @ R.transpose(1, 2)  # (B, 68, 3) rotated, origin-relative
        z_mid = lm[..., 2].mean(dim=1)
        target_size = S / pre.roi_scale * scale
        target_centre = 0.5 * S + shift * S  # (B, 2)
        t = torch.zeros(lm.shape[0], 3, dtype=lm.dtype, device=lm.device)
        t[:, 2] = pre.prior_depth_m
        for _ in range(4):
            p = lm + t[:, None, :]
            uv = f * p[..., :2] / p[..., 2:] + 0.5 * S
            lo, hi = uv.amin(dim=1), uv.amax(dim=1)
            size = (hi - lo).amax(dim=-1)
            ratio = size / target_size
            depth = (t[:, 2] + z_mid) * ratio  # projected size ~ 1 / depth
            t = torch.cat([t[:, :2] * ratio[:, None], (depth - z_mid)[:, None]], dim=1)
            centre = 0.5 * (lo + hi)  # unchanged to first order by the scaling above
            t[:, :2] += (target_centre - centre) * depth[:, None] / f
        return t

    def _caps(self, verts: Tensor, irradiance: Tensor, draw: _Draw) -> tuple[Tensor, Tensor]:
        """Cap vertices (1, V_caps, 3) and colours (1, V_caps, 3) closing the eye and mouth holes.

        ``verts`` (1, V, 3) camera frame and ``irradiance`` (1, V, 3) of the face; the cap
        colours are reflectances times the mean irradiance of the loop's rim.
        """
        pos, col = [], []
        for kind, loop in self.holes:
            loop_t = torch.as_tensor(loop, device=verts.device)
            rim = verts[:, loop_t]  # (1, n, 3)
            light = irradiance[:, loop_t].mean(dim=1, keepdim=True)  # (1, 1, 3)
            centre = rim.mean(dim=1, keepdim=True)
            if kind == "eye":
                half = 0.5 * (rim.amax(dim=1, keepdim=True) - rim.amin(dim=1, keepdim=True))
                offset = torch.cat([draw.gaze, torch.zeros(1)]).to(verts)
                centre = centre + offset * half
                ring_scale = _EYE_RING
                colours = (torch.tensor(_SCLERA) * draw.sclera, draw.iris, torch.tensor(_PUPIL))
            else:
                ring_scale = _MOUTH_RING
                colours = tuple(torch.tensor(c) * draw.mouth for c in _MOUTH)
            ring = centre + ring_scale * (rim - centre)
            n = len(loop)
            pos.append(torch.cat([rim, ring, centre], dim=1))
            reflect = torch.cat([c.to(verts).expand(count, 3) for c, count in zip(colours, (n, n, 1))])
            col.append(reflect[None] * light)
        if not pos:
            empty = verts.new_zeros(1, 0, 3)
            return empty, empty
        return torch.cat(pos, dim=1), torch.cat(col, dim=1)

    # ------------------------------------------------------------------ rendering
    def render_batch(self, indices: Iterable[int]) -> dict[str, Tensor]:
        """Render samples ``indices`` in one batch: the sample dict with a leading batch dimension.

        Same keys and bit-identical per-sample content as ``dataset[i]``, stacked:
        ``image`` (B, 3, S, S), ``params`` (B, P), ``landmarks`` (B, 68, 2), ... .
        """
        idx = [self._check_index(i) for i in indices]
        if not idx:
            raise ValueError("render_batch needs at least one index")
        with torch.no_grad():
            return self._render([self._draw(i) for i in idx], idx)

    def generate(self, n: int, start: int = 0) -> dict[str, Tensor]:
        """Samples ``start .. start + n - 1`` rendered as one batch (see :meth:`render_batch`)."""
        return self.render_batch(range(start, start + n))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        batch = self.render_batch([index])
        return {k: v[0] for k, v in batch.items()}

    def _render(self, draws: list[_Draw], indices: list[int]) -> dict[str, Tensor]:
        m, pre = self.face_model, self.preprocess
        S, B = pre.input_size, len(draws)
        device = m.mean_shape.device

        def stack(name: str) -> Tensor:
            return torch.stack([getattr(d, name) for d in draws]).to(device=device, dtype=torch.float32)

        # Face geometry and colour one sample at a time: matrix products round differently for
        # different batch sizes, and this keeps render_batch bit-identical to dataset[i].
        flat, verts, colours = [], [], []
        for d in draws:
            one = {name: getattr(d, name)[None].to(device=device, dtype=torch.float32)
                   for name in ("identity", "expression", "albedo", "rotation", "scale", "shift", "lighting")}
            shape = m.shape(one["identity"], one["expression"])
            translation = self._solve_translation(shape, one["rotation"], one["scale"], one["shift"])
            p = FaceParams(one["identity"], one["expression"], one["albedo"], one["rotation"], translation, one["lighting"])
            p = FaceParams.from_flat(p.to_flat(), m.layout)  # exactly what the flat labels say
            v = shape @ euler_to_matrix(p.rotation).transpose(1, 2) + p.translation[:, None, :]  # as m(p)
            irradiance = sh_irradiance(m.normals(v), p.lighting)
            v_caps, c_caps = self._caps(v, irradiance, d)
            flat.append(p.to_flat())
            verts.append(torch.cat([v, v_caps], dim=1))
            colours.append(torch.cat([m.albedo(p.albedo) * irradiance, c_caps], dim=1))
        flat, verts, colours = torch.cat(flat), torch.cat(verts), torch.cat(colours)
        n_face = m.n_vertices

        camera = pre.camera(B, device=device)
        tri = self._triangles.to(device)
        frags = rasterize(verts, tri, camera, S, S)
        face = interpolate(colours, frags, tri).permute(0, 3, 1, 2)  # (B, 3, S, S)
        skin = interpolate(self._skin_ext.to(device)[None, :, None], frags, tri).permute(0, 3, 1, 2)  # (B, 1, S, S)
        landmarks = camera.project(m.landmarks(verts[:, :n_face]))  # (B, 68, 2)

        # Per-pixel noise fields, drawn from each sample's generator into batch buffers.
        bg_noise = torch.empty(B, 3, S, S)
        noise = torch.empty(B, 3, S, S)
        for k, d in enumerate(draws):
            torch.randn(3, S, S, generator=d.generator, out=bg_noise[k])
            torch.randn(3, S, S, generator=d.generator, out=noise[k])
        bg_noise, noise = bg_noise.to(device), noise.to(device)

        # Background behind the face: two-colour gradient, low-frequency colour noise, pixel noise.
        centres = (torch.arange(S, device=device, dtype=torch.float32) + PIXEL_CENTER_OFFSET) / S  # (S,)
        yy, xx = torch.meshgrid(centres, centres, indexing="ij")  # (S, S) in (0, 1)
        angle = stack("bg_angle")[:, None, None]
        ramp = (xx - 0.5) * torch.cos(angle) + (yy - 0.5) * torch.sin(angle)
        ramp = ((ramp / math.sqrt(0.5) + 1.0) * 0.5)[:, None]  # (B, 1, S, S) in [0, 1]
        colors = stack("bg_colors")[..., None, None]  # (B, 2, 3, 1, 1)
        background = torch.lerp(colors[:, 0], colors[:, 1], ramp)
        grid = F.interpolate(stack("bg_grid"), size=(S, S), mode="bilinear", align_corners=False)
        background = torch.lerp(background, grid, stack("bg_mix")[:, None, None, None])
        background = (background + stack("bg_noise_std")[:, None, None, None] * bg_noise).clamp_(0.0, 1.0)
        image = torch.where(frags.mask[:, None], face, background)

        # One optional occluder over the landmark box.
        occ = stack("occluder")  # (B, 9)
        lo, hi = landmarks.amin(dim=1), landmarks.amax(dim=1)  # (B, 2) crop pixels
        box = hi - lo
        aspect = torch.exp(occ[:, 3])
        half_w = (0.5 * torch.sqrt(occ[:, 2] * aspect) * box[:, 0]).clamp_min(1e-6)
        half_h = (0.5 * torch.sqrt(occ[:, 2] / aspect) * box[:, 1]).clamp_min(1e-6)
        cx = lo[:, 0] + occ[:, 4] * box[:, 0]
        cy = lo[:, 1] + occ[:, 5] * box[:, 1]
        dx = (xx * S - cx[:, None, None]) / half_w[:, None, None]
        dy = (yy * S - cy[:, None, None]) / half_h[:, None, None]
        ellipse = occ[:, 1, None, None] > 0.5
        inside = torch.where(ellipse, dx.square() + dy.square() <= 1.0, (dx.abs() <= 1.0) & (dy.abs() <= 1.0))
        occluded = (inside & (occ[:, 0, None, None] > 0.5))[:, None]  # (B, 1, S, S)
        texture = stack("occluder_texture")[:, None, None, None] * bg_noise.roll(shifts=(S // 2, S // 3), dims=(2, 3))
        occ_colour = (occ[:, 6:9, None, None] + texture).clamp_(0.0, 1.0)
        image = torch.where(occluded, occ_colour, image)
        skin = (skin * ~occluded)[:, 0].clamp_(0.0, 1.0)  # interpolation may overshoot 1 by rounding

        # Sensor: blur, then noise.
        image = self._blur(image, stack("blur_sigma"))
        image = image.add_(stack("noise_std")[:, None, None, None] * noise).clamp_(0.0, 1.0)

        if m.has_mediapipe:
            mp468 = camera.project(m.mediapipe_points(verts[:, :n_face]))
        else:
            mp468 = torch.full((B, 468, 2), float("nan"), device=device)
        out = {
            "image": image,
            "landmarks": landmarks,
            "landmarks_valid": torch.ones(B, landmarks.shape[1], dtype=torch.bool),
            "params": flat,
            "has_params": torch.ones(B, dtype=torch.bool),
            "mp468": mp468,
            "has_mp468": torch.full((B,), bool(m.has_mediapipe)),
            "box": torch.tensor([0.0, 0.0, float(S)], dtype=torch.float64).expand(B, 3).clone(),
            "index": torch.tensor(indices, dtype=torch.long),
            "skin_mask": skin,
        }
        for key, value in out.items():
            if value.is_floating_point() and key != "box":
                value = value.to(torch.float32)
            out[key] = value.detach().cpu().contiguous()
        return out

    @staticmethod
    def _blur(images: Tensor, sigma: Tensor) -> Tensor:
        """Separable Gaussian blur of ``images`` (B, 3, S, S) with per-image ``sigma`` (B,) pixels (0 = none).

        Borders replicate the edge pixels. Only the images with ``sigma > 0`` are processed.
        """
        which = torch.nonzero(sigma > 0).squeeze(1)
        if which.numel() == 0:
            return images
        r = _BLUR_RADIUS
        x = torch.arange(-r, r + 1, device=images.device, dtype=images.dtype)
        k = torch.exp(-0.5 * (x[None, :] / sigma.index_select(0, which)[:, None]) ** 2)
        k = (k / k.sum(dim=1, keepdim=True))[:, :, None, None, None]  # (n, taps, 1, 1, 1)
        sub = images.index_select(0, which)
        H, W = sub.shape[-2:]
        padded = F.pad(sub, (r, r, 0, 0), mode="replicate")
        sub = sum(k[:, t] * padded[..., t : t + W] for t in range(2 * r + 1))
        padded = F.pad(sub, (0, 0, r, r), mode="replicate")
        sub = sum(k[:, t] * padded[..., t : t + H, :] for t in range(2 * r + 1))
        return images.index_copy(0, which, sub)
