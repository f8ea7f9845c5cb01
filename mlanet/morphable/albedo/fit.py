"""Build a data-driven PCA albedo model from real face photos (issue 7, item 1).

Pipeline (one function per step; :func:`build_albedo_model` runs them in order):

1. :func:`fit_geometry` -- pose, identity and expression of the face model fitted (Adam, CPU,
   batched over all images, three yaw starts per image) so that the model's 68 landmarks
   project onto the image's 68 landmarks through the standard crop camera
   (:meth:`mlanet.preprocess.PreprocessCfg.camera`); the residual is reported in crop pixels.
2. :func:`unwrap` -- each vertex's colour sampled (bilinear, ``align_corners=False``) from the
   crop where the vertex is visible: depth test against the project's rasteriser's z-buffer,
   and a grazing-angle cut on ``cos(normal, view direction)`` which also weights the sample;
   vertices on the mesh's open border are never used.
   Per-vertex samples on the face model's vertices are the "UV layout" here: every vertex
   carries the model's UVs, so these values are the model's texture at vertex resolution.
3. :func:`remove_lighting` -- alternates: per-image 2nd-order SH lighting (9 coefficients x
   RGB, the library's basis, :mod:`mlanet.geometry.sh`) by least squares given the current mean
   albedo and the fitted camera-frame normals; observed colour / shading = the image's
   albedo; the mean albedo re-estimated. The scale ambiguity is fixed by setting the mean
   albedo's skin brightness to the regional default's skin mean (the hand-made regional
   model of :func:`.albedo.default_albedo_model`, recomputed from the face model's geometry
   and regions -- never the albedo the face model file embeds, which may itself be
   data-driven; it is also the starting mean); the ambiguity between a
   person's skin tone and the photo's exposure / white balance is split by
   ``tone_split`` (the fraction of an image's per-channel deviation from the median image
   that stays in its albedo).
4. :func:`symmetry_fill` -- vertices not seen in an image take their mirror vertex's value
   (mirror map of :class:`mlanet.losses.terms.AlbedoPriors`); vertices seen on neither side
   take the mean albedo times the image's tone gain.
5. :func:`pca_albedo` -- mean + top-K components over the per-image albedo vectors (V*3),
   each scaled to one standard deviation and smoothed over the mesh.

Colours stay in the images' encoded RGB in [0, 1] (no gamma conversion): the photometric
loss compares rendered vertex colours with image pixels in that same space.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mlanet.geometry.rotations import euler_to_matrix
from mlanet.geometry.sh import LAMBERT_FACTORS, SH_C0, sh_basis
from mlanet.preprocess import PreprocessCfg, box_from_points, crop_image, image_to_tensor
from mlanet.render.rasterizer import rasterize
from mlanet.morphable.albedo.regional import DEFAULT_ALBEDO_ID, default_albedo_model, smooth_over_mesh, vertex_adjacency
from mlanet.morphable.albedo.file import AlbedoModelFile, topology_sha256
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.model import MorphableModel

ProgressFn = Callable[[str], None]

#: Rec. 709 luma weights, used only to measure brightness.
_LUMA = np.array([0.2126, 0.7152, 0.0722])


@dataclass
class FitSettings:
    """Settings of the landmark fit (crop pixels refer to the ``input_size`` crop)."""

    input_size: int = 224
    steps_pose: int = 150
    steps_full: int = 300
    yaw_starts_deg: tuple[float, ...] = (-50.0, 0.0, 50.0)
    w_identity: float = 3e-4
    w_expression: float = 3e-4
    #: weight of the jaw (0-16) and brow (17-26) landmarks, whose definitions differ most
    #: between annotation schemes; eyes, nose and mouth get 1.
    w_contour: float = 0.5
    max_residual_px: float = 6.0


@dataclass
class UnwrapSettings:
    min_cos: float = 0.3
    depth_tol_m: float = 0.004


@dataclass
class DelightSettings:
    iterations: int = 4
    tone_split: float = 0.5
    ridge: float = 1e-3
    min_shading: float = 0.15
    lighting_regions: tuple[str, ...] = ("skin", "nose")


@dataclass
class FitResult:
    """Fitted geometry: camera-frame vertices (N, V, 3) and per-image landmark residual (N,) px."""

    vertices: torch.Tensor
    residual_px: np.ndarray
    rotation: torch.Tensor
    translation: torch.Tensor


# ------------------------------------------------------------------------------------ 1. geometry


def fit_geometry(
    model: MorphableModel,
    landmarks_crop: torch.Tensor,
    settings: FitSettings | None = None,
    progress: ProgressFn | None = None,
) -> FitResult:
    """Fit pose, identity and expression to (N, 68, 2) landmarks in crop pixels (crop camera).

    Regularised least squares on the landmark reprojection (squared pixels / S^2, jaw and
    brows down-weighted by ``w_contour``) plus ``w * |coeffs|^2``; expression weights clamped to [0, 1]. Each image starts from every
    yaw in ``settings.yaw_starts_deg``; the best start wins.
    """
    s = settings or FitSettings()
    say = progress or (lambda m: None)
    target = landmarks_crop.double()
    N = target.shape[0]
    starts = len(s.yaw_starts_deg)
    tgt = target.repeat(starts, 1, 1)
    B = tgt.shape[0]
    cam = PreprocessCfg(input_size=s.input_size).camera(1, dtype=torch.float64)
    lm = model.landmark_index
    V = model.n_vertices
    mean = model.mean_shape.double()[lm]  # (68, 3)
    basis = model.shape_basis.double().reshape(-1, V, 3)[:, lm]  # (K, 68, 3)
    K_id = model.n_identity
    rot = torch.zeros(B, 3, dtype=torch.float64)
    rot[:, 1] = torch.tensor([math.radians(y) for y in s.yaw_starts_deg], dtype=torch.float64).repeat_interleave(N)
    trans = torch.zeros(B, 3, dtype=torch.float64)
    trans[:, 2] = PreprocessCfg().prior_depth_m
    coeffs = torch.zeros(B, basis.shape[0], dtype=torch.float64)
    for p in (rot, trans, coeffs):
        p.requires_grad_(True)
    scale = float(s.input_size)
    lw = torch.ones(68, dtype=torch.float64)
    lw[:27] = s.w_contour
    lw = lw / lw.mean()

    def residuals() -> torch.Tensor:
        shape = mean + torch.einsum("bk,kld->bld", coeffs, basis)
        cam_pts = shape @ euler_to_matrix(rot).transpose(1, 2) + trans[:, None, :]
        return (cam.project(cam_pts) - tgt) / scale

    def run(params: list[torch.Tensor], steps: int, lr: float, stage: str) -> None:
        opt = torch.optim.Adam(params, lr=lr)
        for i in range(steps):
            opt.zero_grad()
            r = residuals()
            loss = ((r**2).sum(-1) * lw).mean(-1)
            reg = s.w_identity * (coeffs[:, :K_id] ** 2).sum(-1) + s.w_expression * (coeffs[:, K_id:] ** 2).sum(-1)
            (loss + reg).sum().backward()
            opt.step()
            with torch.no_grad():
                coeffs[:, K_id:].clamp_(0.0, 1.0)
            if (i + 1) % 100 == 0 or i + 1 == steps:
                px = r.detach().norm(dim=-1).mean(-1) * scale
                say(f"fit {stage}: step {i + 1}/{steps}, median residual {px.median():.2f} px")

    run([rot, trans], s.steps_pose, 0.02, "pose")
    run([rot, trans, coeffs], s.steps_full, 0.01, "pose+shape")
    with torch.no_grad():
        px = (residuals().norm(dim=-1).mean(-1) * scale).reshape(starts, N)
        best = px.argmin(0)
        pick = best * N + torch.arange(N)
        r, t, c = rot[pick].detach(), trans[pick].detach(), coeffs[pick].detach()
        shape = model.shape(c[:, :K_id].float(), c[:, K_id:].float()).double()
        verts = shape @ euler_to_matrix(r).transpose(1, 2) + t[:, None, :]
    return FitResult(vertices=verts, residual_px=px.min(0).values.numpy(), rotation=r, translation=t)


# -------------------------------------------------------------------------------------- 2. unwrap


def unwrap(
    model: MorphableModel,
    vertices: torch.Tensor,
    crops: torch.Tensor,
    settings: UnwrapSettings | None = None,
    batch: int = 16,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-vertex colours of each crop where visible.

    Args:
        vertices: (N, V, 3) camera-frame vertices of the crop camera.
        crops: (N, 3, S, S) crop images in [0, 1].

    Returns:
        ``colours`` (N, V, 3), ``weights`` (N, V) (``cos(normal, view)`` where visible, else 0),
        ``normals`` (N, V, 3) camera frame; float64 numpy.
    """
    s = settings or UnwrapSettings()
    S = crops.shape[-1]
    cam = PreprocessCfg(input_size=S).camera(1, dtype=torch.float64)
    border = torch.as_tensor(boundary_vertices(model.triangles.numpy(), model.n_vertices))
    out_c, out_w, out_n = [], [], []
    for i in range(0, len(vertices), batch):
        v = vertices[i : i + batch].double()
        img = crops[i : i + batch].double()
        frags = rasterize(v, model.triangles, cam, S, S, cull_backfaces=True)
        pix = cam.project(v)  # (b, V, 2)
        col = pix[..., 0].floor().long()
        row = pix[..., 1].floor().long()
        inside = (col >= 0) & (col < S) & (row >= 0) & (row < S) & (v[..., 2] > 0)
        ci, ri = col.clamp(0, S - 1), row.clamp(0, S - 1)
        bi = torch.arange(len(v))[:, None].expand_as(ci)
        zbuf = frags.depth[bi, ri, ci]
        covered = frags.mask[bi, ri, ci]
        visible = inside & covered & (v[..., 2] <= zbuf + s.depth_tol_m)
        normals = model.normals(v)
        view = -v / v.norm(dim=-1, keepdim=True)
        cos = (normals * view).sum(-1)
        w = torch.where(visible & (cos > s.min_cos) & ~border, cos, torch.zeros_like(cos))
        grid = (2.0 * pix / S - 1.0)[:, :, None, :]  # (b, V, 1, 2)
        colour = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out_c.append(colour[..., 0].permute(0, 2, 1).numpy())
        out_w.append(w.numpy())
        out_n.append(normals.numpy())
    return np.concatenate(out_c), np.concatenate(out_w), np.concatenate(out_n)


def boundary_vertices(triangles: np.ndarray, n_vertices: int) -> np.ndarray:
    """(V,) bool: vertices on the open border of the mesh (edges used by one triangle).

    Their samples mix face and background, so :func:`unwrap` never uses them.
    """
    t = np.asarray(triangles, dtype=np.int64)
    e = np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)
    uniq, count = np.unique(e, axis=0, return_counts=True)
    out = np.zeros(n_vertices, dtype=bool)
    out[uniq[count == 1].ravel()] = True
    return out


# ---------------------------------------------------------------------------------- 3. lighting


def shading_basis(normals: np.ndarray) -> np.ndarray:
    """(…, V, 9) SH basis times the Lambertian factors, so ``shading = basis @ lighting[c]``."""
    y = sh_basis(torch.as_tensor(normals, dtype=torch.float64)).numpy()
    return y * np.asarray(LAMBERT_FACTORS)


def fit_lighting(colours: np.ndarray, weights: np.ndarray, albedo: np.ndarray, basis: np.ndarray,
                 mask: np.ndarray, ridge: float = 1e-3, robust_rounds: int = 2) -> np.ndarray:
    """Least-squares SH lighting (3, 9) of one image: ``colours ~ albedo * (basis @ L[c])``.

    ``colours``/``albedo`` (V, 3), ``weights`` (V,), ``basis`` (V, 9), ``mask`` (V,) vertices used.
    ``ridge`` damps the 8 non-constant coefficients (relative to the data's scale); after
    each of ``robust_rounds`` re-fits, samples whose relative residual exceeds 3 robust
    standard deviations (at least 3 %) are dropped.
    """
    L = np.zeros((3, 9))
    use = mask & (weights > 0)
    if use.sum() < 20:
        L[:, 0] = 1.0 / (LAMBERT_FACTORS[0] * SH_C0)  # irradiance 1 everywhere
        return L
    w = weights.copy()
    for _ in range(robust_rounds + 1):
        sel = use & (w > 0)
        Y = basis[sel]
        for c in range(3):
            A = albedo[sel, c, None] * Y * w[sel, None]
            b = colours[sel, c] * w[sel]
            AtA = A.T @ A
            reg = ridge * np.trace(AtA) / 9.0 * np.diag([0.0] + [1.0] * 8)
            L[c] = np.linalg.solve(AtA + reg + 1e-12 * np.eye(9), A.T @ b)
        # drop outliers (background at silhouettes, occluders, specular highlights): the
        # problem is ill-conditioned on a half sphere of normals, so a few of them bias it badly
        pred = albedo * (basis @ L.T)
        r = np.abs(colours - pred).mean(-1) / np.maximum(np.abs(pred).mean(-1), 1e-6)
        cut = max(3.0 * float(np.median(r[sel])) * 1.4826, 0.03)
        w = np.where(r < cut, weights, 0.0)
    return L


def _normalise_brightness(mean: np.ndarray, ref_skin_luma: float, skin: np.ndarray) -> float:
    return ref_skin_luma / max(float((mean[skin] @ _LUMA).mean()), 1e-6)


def remove_lighting(
    colours: np.ndarray,
    weights: np.ndarray,
    normals: np.ndarray,
    init_albedo: np.ndarray,
    skin: np.ndarray,
    lighting_mask: np.ndarray,
    settings: DelightSettings | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Alternate SH lighting estimation and albedo estimation.

    Args:
        colours, weights, normals: from :func:`unwrap`, (N, V, 3), (N, V), (N, V, 3).
        init_albedo: (V, 3) starting mean albedo (the regional default); its mean luma over
            ``skin`` fixes the overall brightness of the result.
        skin: (V,) bool, vertices defining brightness.
        lighting_mask: (V,) bool, vertices used to fit the lighting (smooth skin).

    Returns:
        ``albedo`` (N, V, 3) per image (valid where ``weights > 0``), ``mean`` (V, 3),
        ``lighting`` (N, 3, 9), and statistics.
    """
    s = settings or DelightSettings()
    say = progress or (lambda m: None)
    N, V, _ = colours.shape
    basis = shading_basis(normals)  # (N, V, 9)
    ref = float((init_albedo[skin] @ _LUMA).mean())
    mean = init_albedo.astype(np.float64).copy()
    # per-image, per-channel observed brightness over the lighting region: the tone/exposure signal
    wl = weights * lighting_mask[None]
    obs = (colours * wl[..., None]).sum(1) / np.maximum(wl.sum(1), 1e-9)[:, None]  # (N, 3)
    gain = (obs / np.median(obs, axis=0)) ** s.tone_split  # (N, 3)
    lighting = np.zeros((N, 3, 9))
    albedo = np.zeros_like(colours)
    history = []
    for it in range(s.iterations):
        for i in range(N):
            lighting[i] = fit_lighting(colours[i], weights[i], mean * gain[i], basis[i], lighting_mask, s.ridge)
        shading = np.einsum("nvk,nck->nvc", basis, lighting)
        floor = s.min_shading * np.median(shading[weights > 0], axis=0)
        albedo = np.clip(colours / np.maximum(shading, floor), 0.0, 1.5)
        wsum = weights.sum(0)
        toneless = albedo / gain[:, None, :]  # the mean is estimated without each image's tone gain
        new_mean = np.where(
            wsum[:, None] > 1e-6, (toneless * weights[..., None]).sum(0) / np.maximum(wsum, 1e-9)[:, None], mean
        )
        k = _normalise_brightness(new_mean, ref, skin)
        new_mean *= k
        albedo *= k
        lighting /= k
        change = float(np.abs(new_mean - mean).mean())
        mean = new_mean
        history.append(change)
        say(f"delighting iteration {it + 1}/{s.iterations}: mean albedo change {change:.4f}")
    stats = {
        "iterations": s.iterations,
        "mean_change_per_iteration": [round(h, 5) for h in history],
        "tone_split": s.tone_split,
        "gain_range": [float(gain.min()), float(gain.max())],
    }
    return albedo, mean, lighting, stats


# ---------------------------------------------------------------------------------- 4. symmetry


def mirror_map(mean_shape: np.ndarray, max_mirror_mm: float = 3.0) -> np.ndarray:
    """(V,) index of each vertex's mirror (x -> -x, model frame), -1 where none is close enough.

    The same pairing as :class:`mlanet.losses.terms.AlbedoPriors` (nearest neighbour of the
    reflected mean shape, pairs further than ``max_mirror_mm`` dropped).
    """
    from scipy.spatial import cKDTree

    mean = np.asarray(mean_shape, dtype=np.float64)
    dist, idx = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0]))
    return np.where(dist * 1000.0 < max_mirror_mm, idx, -1)


def symmetry_fill(
    albedo: np.ndarray, weights: np.ndarray, mirror: np.ndarray, fallback: np.ndarray, min_weight: float = 1e-6
) -> tuple[np.ndarray, dict[str, float]]:
    """Complete per-image albedos (N, V, 3): unseen vertices take their mirror's value, else ``fallback``.

    ``fallback`` is (V, 3) or (N, V, 3). Returns the filled array and the fractions observed /
    mirrored / fallback.
    """
    N, V, _ = albedo.shape
    seen = weights > min_weight
    fb = np.broadcast_to(fallback, albedo.shape)
    out = np.where(seen[..., None], albedo, fb).copy()
    has_mirror = mirror >= 0
    m = np.where(has_mirror, mirror, 0)
    mirrored = (~seen) & has_mirror[None] & seen[:, m]
    out[mirrored] = albedo[:, m][mirrored]
    stats = {
        "observed": float(seen.mean()),
        "mirrored": float(mirrored.mean()),
        "fallback": float(1.0 - seen.mean() - mirrored.mean()),
    }
    return out, stats


# --------------------------------------------------------------------------------------- 5. PCA


def pca_albedo(
    albedos: np.ndarray, n_components: int, triangles: np.ndarray | None = None, smooth_iterations: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean (V, 3), basis (K, V, 3) (one standard deviation each) and explained-variance ratios (K,).

    ``albedos`` (N, V, 3) complete per-image albedos. With ``triangles`` the mean and basis
    are smoothed over the mesh by ``smooth_iterations`` half-steps of neighbour averaging.
    """
    N, V, _ = albedos.shape
    if N < 2:
        raise ValueError(f"PCA needs at least 2 albedos, got {N}")
    X = albedos.reshape(N, V * 3).astype(np.float64)
    mean = X.mean(0)
    _, S, Vt = np.linalg.svd(X - mean, full_matrices=False)
    var = S**2 / (N - 1)
    ratio = var / max(var.sum(), 1e-30)
    K = n_components
    comps = Vt[:K] * np.sqrt(var[:K])[:, None]
    if K > len(var):  # fewer images than components: pad with zero modes
        comps = np.concatenate([comps, np.zeros((K - len(var), V * 3))])
        ratio = np.concatenate([ratio, np.zeros(K - len(var))])
    mean = mean.reshape(V, 3)
    comps = comps.reshape(K, V, 3)
    if triangles is not None and smooth_iterations > 0:
        adj = vertex_adjacency(triangles, V)
        mean = smooth_over_mesh(mean, adj, smooth_iterations)
        comps = np.stack([smooth_over_mesh(c, adj, smooth_iterations) for c in comps])
    # sign convention: each component brightens the mean on average
    signs = np.where(comps.reshape(K, -1).sum(1) < 0, -1.0, 1.0)
    return mean, comps * signs[:, None, None], ratio[:K]


# ------------------------------------------------------------------------------------ driver


@dataclass
class FaceSample:
    """One training photo: name, (H, W, 3) uint8 RGB image and (68, 2) landmarks in image pixels."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray


def regional_reference(face: FaceModelData) -> np.ndarray:
    """(V, 3) float64 mean of the regional default albedo of ``face`` (no image data).

    Recomputed from the face model's mean shape, triangles, regions and 68 landmarks as
    ``mlanet assets build`` makes it, so a data-driven albedo embedded in ``face`` (e.g. an
    earlier build of this pipeline, on other data) never leaks into a new one.
    """
    mean, _, _ = default_albedo_model(face.mean_shape, face.triangles, face.region_labels, face.landmarks68)
    return np.asarray(mean, dtype=np.float64)


@dataclass
class AlbedoBuild:
    """Result of :func:`build_albedo_model`: the model and per-image diagnostics."""

    model: AlbedoModelFile
    residual_px: dict[str, float]
    rejected: list[str]
    mean_unsmoothed: np.ndarray = field(repr=False)


def build_albedo_model(
    face: FaceModelData,
    samples: Sequence[FaceSample],
    sources: list[dict[str, Any]],
    *,
    albedo_id: str = "mlanet-albedo-ict-v2",
    n_components: int | None = None,
    fit: FitSettings | None = None,
    unwrap_settings: UnwrapSettings | None = None,
    delight: DelightSettings | None = None,
    mask_regions: tuple[str, ...] = (),
    progress: ProgressFn | None = None,
) -> AlbedoBuild:
    """Run the whole pipeline on ``samples`` and return an :class:`AlbedoModelFile` (not saved).

    Args:
        face: the face model. Its geometry and regions give the regional default albedo
            (:func:`regional_reference`), the starting mean and brightness reference; the
            albedo the face model embeds is not used.
        sources: header entries, one per data source: ``name``, ``terms`` and anything useful.
        n_components: defaults to the face model's albedo size (keeps the parameter layout).
        mask_regions: regions whose albedo is replaced by the regional default (mean and basis).

    ``samples`` must be named (``FaceSample.name``) uniquely, e.g. by training-sample key; the
    header's ``rejected`` and ``fit.residual_px`` use these names.
    """
    say = progress or (lambda m: None)
    fit = fit or FitSettings()
    unwrap_settings = unwrap_settings or UnwrapSettings()
    delight = delight or DelightSettings()
    K = n_components or face.n_albedo
    if len(samples) < 2:
        raise ValueError(f"need at least 2 face images to build an albedo model, got {len(samples)}")
    model = MorphableModel(face)
    cfg = PreprocessCfg(input_size=fit.input_size)
    crops, lms = [], []
    for smp in samples:
        box = box_from_points(smp.landmarks, cfg.roi_scale)
        crops.append(crop_image(image_to_tensor(smp.image), box, cfg.input_size)[0])
        lms.append(torch.as_tensor(box.image_to_crop(np.asarray(smp.landmarks, dtype=np.float64), cfg.input_size)))
    crops_t = torch.stack(crops)
    del crops  # (a copy is in crops_t; about 0.6 MB per face)
    say(f"fitting geometry to {len(samples)} images (68 landmarks, {cfg.input_size} px crop camera)")
    result = fit_geometry(model, torch.stack(lms), fit, progress=say)
    res = result.residual_px
    ok = res <= fit.max_residual_px
    names = [s.name for s in samples]
    rejected = [n for n, k in zip(names, ok) if not k]
    say(f"landmark fit: median {np.median(res):.2f} px, max {res.max():.2f} px; rejected {len(rejected)} "
        f"above {fit.max_residual_px} px")
    if ok.sum() < 2:
        raise ValueError(f"only {int(ok.sum())} images fitted within {fit.max_residual_px} px; cannot build")
    idx = np.nonzero(ok)[0]
    say(f"unwrapping colours of {len(idx)} images")
    colours, weights, normals = unwrap(model, result.vertices[idx], crops_t[idx], unwrap_settings)
    del crops_t  # not needed by the delighting, whose arrays set the peak memory
    regions = face.region_labels
    names_r = face.region_names
    skin = np.isin(regions, [names_r.index(r) for r in ("skin", "nose") if r in names_r])
    light_mask = np.isin(regions, [names_r.index(r) for r in delight.lighting_regions if r in names_r])
    reference = regional_reference(face)
    albedo, mean, lighting, dstats = remove_lighting(
        colours, weights, normals, reference, skin, light_mask, delight, progress=say
    )
    mirror = mirror_map(face.mean_shape)
    wl = weights * light_mask[None]
    gain = (albedo * wl[..., None]).sum(1) / np.maximum(wl.sum(1), 1e-9)[:, None]
    gain /= np.maximum((mean * light_mask[:, None]).sum(0) / max(light_mask.sum(), 1), 1e-9)
    filled, fstats = symmetry_fill(albedo, weights, mirror, mean[None] * gain[:, None, :])
    say(f"symmetry fill: observed {fstats['observed']:.1%}, mirrored {fstats['mirrored']:.1%}, "
        f"mean-filled {fstats['fallback']:.1%}")
    pmean, basis, ratio = pca_albedo(filled, K, face.triangles)
    if mask_regions:
        m = np.isin(regions, [names_r.index(r) for r in mask_regions])
        pmean[m] = reference[m]
        basis[:, m] = 0.0
    say(f"PCA: {K} components explain {ratio.sum():.1%} of the variance "
        f"({', '.join(f'{r:.1%}' for r in ratio[:5])}, ...)")
    header = {
        "id": albedo_id,
        "name": "MLANet data-driven albedo (PCA over delit, symmetry-filled per-vertex albedos)",
        "layout": "per-vertex values on the face model's vertices (the model's UV layout at vertex resolution)",
        "colour_space": "the images' encoded RGB in [0, 1] (no gamma conversion)",
        "face_model": {
            "model_id": face.model_id,
            "vertices": face.n_vertices,
            "triangles_sha256": topology_sha256(face.triangles),
            "content_sha256": face.header.get("content_sha256"),
        },
        "components": [f"pc{k + 1:02d}" for k in range(K)],
        "explained_variance_ratio": [round(float(r), 6) for r in ratio],
        "explained_variance_total": round(float(ratio.sum()), 6),
        "sources": sources,
        "terms": "; ".join(sorted({str(s["terms"]) for s in sources})),
        "images": {"total": len(samples), "used": int(len(idx)), "rejected": len(rejected)},
        "rejected": rejected,
        "fit": {
            "method": "68-landmark reprojection, crop camera, Adam (pose then pose+identity+expression), "
                      f"yaw starts {list(fit.yaw_starts_deg)} deg",
            "input_size": fit.input_size,
            "residual_unit": f"mean landmark distance in {fit.input_size} px crop pixels",
            "reject_above_px": fit.max_residual_px,
            "residual_median_px": round(float(np.median(res)), 3),
            "residual_used_median_px": round(float(np.median(res[idx])), 3),
            "residual_px": {n: round(float(r), 3) for n, r in zip(names, res)},
        },
        "unwrap": {"min_cos": unwrap_settings.min_cos, "depth_tol_m": unwrap_settings.depth_tol_m,
                   "weight": "cos(normal, view direction)"},
        "delighting": {
            "sh": "2nd order, 9 coefficients x RGB, mlanet.geometry.sh basis with Lambertian factors",
            "lighting_regions": list(delight.lighting_regions),
            "start_and_reference": f"{DEFAULT_ALBEDO_ID} (the hand-made regional model, no image data), "
                                   "recomputed from the face model's geometry and regions",
            "brightness": "mean albedo's skin+nose luma fixed to the regional default's "
                          f"({float((reference[skin] @ _LUMA).mean()):.4f})",
            **dstats,
        },
        "symmetry_fill": {k: round(v, 4) for k, v in fstats.items()},
        "mask_regions": list(mask_regions),
        "smoothing": "3 half-steps of neighbour averaging over the mesh (mean and basis)",
        "built_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    from mlanet import __version__

    header["built_by"] = f"mlanet {__version__}"
    out = AlbedoModelFile(header=header, mean=pmean.astype(np.float32), basis=basis.astype(np.float32))
    out.validate()
    return AlbedoBuild(model=out, residual_px=dict(zip(names, map(float, res))), rejected=rejected,
                       mean_unsmoothed=mean)
