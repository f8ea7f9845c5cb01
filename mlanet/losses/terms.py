"""Individual loss terms. Each returns a scalar tensor and is zero (with a graph) when no sample applies.

Units: landmark terms are distances in crop pixels divided by the crop size S (so they are
independent of the input size); vertex terms are in millimetres; colour terms in [0, 1] RGB.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from mlanet.morphable.albedo.regional import vertex_adjacency
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean; 0 (keeping the graph) when all weights are 0."""
    w = weights.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


def landmark_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, input_size: int) -> torch.Tensor:
    """Mean Euclidean distance of valid points, in units of the crop size.

    pred, target: (B, L, 2) crop pixels (NaN allowed in invalid target rows); valid: (B, L) bool.
    """
    target = torch.nan_to_num(target)
    dist = torch.linalg.vector_norm(pred - target, dim=-1) / float(input_size)
    return _masked_mean(dist, valid)


def expression_flip_permutation(names: list[str]) -> torch.Tensor:
    """(K,) long: expression ``k`` of a mirrored face is expression ``perm[k]`` of the original
    (:func:`mlanet.morphable.mirror.expression_mirror_permutation` as a tensor)."""
    from mlanet.morphable.mirror import expression_mirror_permutation

    return torch.as_tensor(expression_mirror_permutation(names), dtype=torch.long)


def fit_shape_loss(face_model: MorphableModel, pred: FaceParams, fit_flat: torch.Tensor, fit_ok: torch.Tensor,
                   flipped: torch.Tensor, expression_perm: torch.Tensor) -> torch.Tensor:
    """Mean model-frame vertex distance (mm) to the shape of a pseudo-3DMM fit (identity + expression only).

    ``fit_flat`` (B, P): flat :class:`~mlanet.params.ParamLayout` vectors (NaN rows where absent);
    ``fit_ok`` (B,) bool; ``flipped`` (B,) bool: the sample was mirrored by its augmentation, so
    the target expression is permuted with ``expression_perm`` and identity is not supervised
    (a mirrored identity is not a coefficient permutation: the target identity is the prediction's,
    detached). Pose, albedo and light of the fit are not used (the fit's pose is in the
    un-augmented crop camera; albedo and light are not fitted).
    """
    if not bool(fit_ok.any()):
        return pred.identity.sum() * 0.0
    fm = face_model
    target = FaceParams.from_flat(torch.nan_to_num(fit_flat[fit_ok]).to(pred.identity.dtype), fm.layout)
    p_id, p_ex = pred.identity[fit_ok], pred.expression[fit_ok]
    fl = flipped[fit_ok].bool()[:, None]
    t_ex = torch.where(fl, target.expression[:, expression_perm.to(target.expression.device)], target.expression)
    t_id = torch.where(fl, p_id.detach(), target.identity)
    diff = fm.shape(p_id, p_ex) - fm.shape(t_id, t_ex)
    return torch.linalg.vector_norm(diff, dim=-1).mean() * 1000.0


#: forms of :func:`fit_expression_loss`
FIT_EXPRESSION_FORMS = ("l1", "cross_entropy")

#: cross-entropy form: predicted weights are kept this far inside (0, 1) before the logarithm
_CE_EPS = 1e-6


def fit_expression_loss(pred: FaceParams, fit_flat: torch.Tensor, fit_ok: torch.Tensor, flipped: torch.Tensor,
                        expression_perm: torch.Tensor, index: torch.Tensor, layout: Any,
                        form: str = "l1") -> torch.Tensor:
    """Difference of chosen expression weights (``index`` (K,) into the expression group) to a pseudo-3DMM
    fit's, averaged over ``fit_ok`` samples and the K shapes; mirrored samples compare with the permuted fit.

    Parameter-space supervision for the shapes that vertex and landmark terms pick out weakly (jawOpen
    moves few of the mesh's vertices; the mean vertex distance of :func:`fit_shape_loss` barely sees it).

    ``form``: ``"l1"``, the mean absolute difference; ``"cross_entropy"``, the Bernoulli KL divergence
    ``t log(t/p) + (1-t) log((1-t)/(1-p))`` of the predicted weight p from the fit's t (both in [0, 1]; 0 when
    p = t). The network's weights come out of a sigmoid, whose slope near 0 is small (0.045 at p = 0.047): the L1
    gradient on the logit is ``sign(p - t) p (1 - p)``, vanishing on a shut mouth the fit says is open, while the
    cross-entropy's is ``p - t``, the error itself.
    """
    if form not in FIT_EXPRESSION_FORMS:
        raise ValueError(f"fit_expression_loss: form must be one of {FIT_EXPRESSION_FORMS}, got {form!r}")
    if not bool(fit_ok.any()):
        return pred.expression.sum() * 0.0
    target = FaceParams.from_flat(torch.nan_to_num(fit_flat[fit_ok]).to(pred.expression.dtype), layout).expression
    fl = flipped[fit_ok].bool()[:, None]
    target = torch.where(fl, target[:, expression_perm.to(target.device)], target)
    idx = index.to(target.device)
    p, t = pred.expression[fit_ok][:, idx], target[:, idx]
    if form == "l1":
        return (p - t).abs().mean()
    p = p.clamp(_CE_EPS, 1.0 - _CE_EPS)
    t = t.clamp(0.0, 1.0)
    return (torch.xlogy(t, t) - t * torch.log(p) + torch.xlogy(1 - t, 1 - t) - (1 - t) * torch.log1p(-p)).mean()


def mirror_expression_loss(pred: FaceParams, mirrored: FaceParams, expression_perm: torch.Tensor) -> torch.Tensor:
    """Mean |e(x) - P e(flip x)| over samples and expression shapes: mirror consistency, self-supervised.

    ``pred``: the network's parameters for the input crops x (B, ...); ``mirrored``: its parameters for the
    same crops flipped left-right about the crop centre (``image.flip(-1)``), a target (detached here).
    ``expression_perm`` (K,) maps a mirrored face's expression k to the original's (:func:`expression_flip_permutation`),
    so ``P e(flip x)`` is what e(x) must be if the network treats a face and its mirror image alike (a face's jaw
    opens as far in the mirror). The weights are in [0, 1] (the sigmoid head), the loss likewise.
    Only meaningful for blendshape expressions, whose mirror is a permutation (not PCA coefficients).
    """
    target = mirrored.expression.detach()[:, expression_perm.to(mirrored.expression.device)]
    return (pred.expression - target.to(pred.expression.dtype)).abs().mean()


def vertex_loss(
    face_model: MorphableModel, pred: FaceParams, target: FaceParams, has_params: torch.Tensor,
    vertex_subset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean per-vertex distance (mm) between predicted and ground-truth camera-frame meshes.

    Parameter supervision in vertex space: errors are weighted by how much they move the
    surface, not by raw coefficient differences. ``vertex_subset`` (K,) limits the vertices.
    """
    if not bool(has_params.any()):
        return pred.rotation.sum() * 0.0
    vp, vt = face_model(pred.select(has_params)), face_model(target.select(has_params))
    if vertex_subset is not None:
        vp, vt = vp[:, vertex_subset], vt[:, vertex_subset]
    return torch.linalg.vector_norm(vp - vt, dim=-1).mean() * 1000.0


def landmark3d_loss(face_model: MorphableModel, pred: FaceParams, target: FaceParams, has_params: torch.Tensor,
                    definition: str = "ict68") -> torch.Tensor:
    """Mean 3D distance (mm) of the points of a landmark definition (fixed surface points) in the camera frame,
    for samples with parameters."""
    if not bool(has_params.any()):
        return pred.rotation.sum() * 0.0
    lp = face_model.landmark_points(face_model(pred.select(has_params)), definition)
    lt = face_model.landmark_points(face_model(target.select(has_params)), definition)
    return torch.linalg.vector_norm(lp - lt, dim=-1).mean() * 1000.0


def vertex_colour_loss(face_model: MorphableModel, pred: FaceParams, target: FaceParams, has_params: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of lit vertex colours: predicted albedo and light on the true geometry."""
    if not bool(has_params.any()):
        return pred.albedo.sum() * 0.0
    p, t = pred.select(has_params), target.select(has_params)
    verts = face_model(t)
    lit_pred = face_model.vertex_colors(t.replace(albedo=p.albedo, lighting=p.lighting), verts)
    return (lit_pred - face_model.vertex_colors(t, verts)).abs().mean()


def photometric_loss(rendered: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel RGB Euclidean distance over the mask (robust L2,1).

    rendered, image: (B, H, W, 3); mask: (B, H, W) in [0, 1].
    """
    dist = torch.sqrt(((rendered - image) ** 2).sum(-1) + 1e-8)
    return _masked_mean(dist, mask)


def coefficient_regulariser(params: FaceParams, w_identity: float, w_expression: float, w_albedo: float) -> torch.Tensor:
    """Weighted mean squares of the identity, expression and albedo coefficients."""
    return (
        w_identity * params.identity.pow(2).mean()
        + w_expression * params.expression.pow(2).mean()
        + w_albedo * params.albedo.pow(2).mean()
    )


def lighting_prior(params: FaceParams) -> torch.Tensor:
    """Discourage coloured light: variance of each SH coefficient across the three channels."""
    return params.lighting.var(dim=1, unbiased=False).mean()


class AlbedoPriors:
    """Albedo smoothness (Laplacian over the mesh) and left/right symmetry of a face model.

    The mirror map pairs each vertex with the vertex nearest to its reflection ``x -> -x`` on
    the mean shape (pairs further than ``max_mirror_mm`` apart are ignored).
    """

    def __init__(self, face_model: MorphableModel, max_mirror_mm: float = 3.0) -> None:
        mean = face_model.mean_shape.detach().cpu().double().numpy()
        dist, mirror = cKDTree(mean).query(mean * np.array([-1.0, 1.0, 1.0]))
        keep = dist * 1000.0 < max_mirror_mm
        device = face_model.mean_shape.device
        self.src = torch.as_tensor(np.nonzero(keep)[0], device=device)
        self.dst = torch.as_tensor(mirror[keep], device=device)
        adj = vertex_adjacency(face_model.triangles.cpu().numpy(), face_model.n_vertices).tocoo()
        self.adj = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([adj.row, adj.col]).astype(np.int64)), torch.from_numpy(adj.data), size=adj.shape, dtype=torch.float32, device=device,
            check_invariants=False,  # built from a valid scipy COO matrix
        ).coalesce()

    def symmetry(self, albedo: torch.Tensor) -> torch.Tensor:
        """Mean |albedo(v) - albedo(mirror(v))| for albedo (B, V, 3)."""
        return (albedo[:, self.src] - albedo[:, self.dst]).abs().mean()

    def smoothness(self, albedo: torch.Tensor) -> torch.Tensor:
        """Mean |albedo - neighbour average| for albedo (B, V, 3)."""
        B, V, _ = albedo.shape
        flat = albedo.permute(1, 0, 2).reshape(V, B * 3).float()
        smooth = torch.sparse.mm(self.adj, flat).reshape(V, B, 3).permute(1, 0, 2)
        return (albedo - smooth.to(albedo.dtype)).abs().mean()
