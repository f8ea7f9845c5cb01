"""Fit the face model to 2D landmarks of any definitions, and find where image points lie on the fit.

:func:`fit_landmarks` is a batched Levenberg-Marquardt fit of pose (rotation, translation),
identity and expression to 2D points in crop pixels of the standard crop camera
(:meth:`mlanet.preprocess.PreprocessCfg.camera`), one or more landmark definitions at once
(:class:`Observation`), each point with its own weight (0 = missing). The objective is the MAP
one of a Gaussian landmark noise of ``sigma_px`` crop pixels and the model's priors::

    sum_points w |proj(point) - target|^2 / sigma_px^2  +  |identity|^2  +  w_expression |expression|^2

with the expression weights kept in [0, 1]. Contour points of a definition follow the
silhouette (:mod:`mlanet.morphable.landmarks.definitions`) while fitting when ``silhouette=True``. Several yaw
starts are tried with the mean shape (pose only), the best goes on to the full fit. Analytic
Jacobians; everything is vectorised over faces (chunks of ``chunk``), float64.

:func:`reprojection_surface_points` finds, for 2D annotations of many fitted faces, the surface
points (triangle + barycentric, mean-shape frame) whose projections match them best: how a
definition is fitted from data. :func:`locate_visible` finds the visible surface point under
an image point of one fitted mesh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mlanet.geometry.rotations import euler_to_matrix, matrix_to_euler
from mlanet.preprocess import PreprocessCfg
from mlanet.morphable.landmarks import definitions as sl
from mlanet.morphable.model import MorphableModel

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class LandmarkFitSettings:
    """Settings of :func:`fit_landmarks` (pixels are pixels of the ``input_size`` crop)."""

    input_size: int = 224
    #: landmark noise (crop pixels) against the N(0, 1) identity prior: smaller fits closer, with less plausible faces.
    sigma_px: float = 1.5
    #: prior weight of the expression weights (per unit^2) relative to the identity prior.
    w_expression: float = 1.0
    iterations: int = 40
    pose_iterations: int = 12
    yaw_starts_deg: tuple[float, ...] = (-70.0, -35.0, 0.0, 35.0, 70.0)
    silhouette: bool = True
    chunk: int = 192

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["yaw_starts_deg"] = list(self.yaw_starts_deg)
        return d


@dataclass
class Observation:
    """2D targets of one landmark definition for N faces.

    definition: a name of the model's definitions or a :class:`~mlanet.morphable.landmarks.definitions.SurfaceDefinition`
    (one not stored in the model yet). points: (N, L, 2) crop pixels (NaN allowed where the
    weight is 0). weights: (N, L) (default 1).
    """

    definition: str | sl.SurfaceDefinition
    points: np.ndarray | torch.Tensor
    weights: np.ndarray | torch.Tensor | None = None


@dataclass
class LandmarkFit:
    """Result of :func:`fit_landmarks` (float64, CPU).

    rotation (N, 3, 3), translation (N, 3) (camera frame of the crop camera), identity
    (N, K_id), expression (N, K_exp), residual_px (N,) weighted mean point distance in crop
    pixels over all observations, cost (N,) the final objective.
    """

    rotation: torch.Tensor
    translation: torch.Tensor
    identity: torch.Tensor
    expression: torch.Tensor
    residual_px: np.ndarray
    cost: np.ndarray
    settings: LandmarkFitSettings
    #: (N, M) distance (crop px) of every point of every observation (in order) from its target; None after concat
    point_distance_px: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rotation.shape[0])

    @classmethod
    def concat(cls, fits: Sequence["LandmarkFit"]) -> "LandmarkFit":
        """One fit of all faces of ``fits`` (same input size), in order."""
        if len({f.settings.input_size for f in fits}) != 1:
            raise ValueError("fits of different crop sizes cannot be combined")
        return cls(
            torch.cat([f.rotation for f in fits]), torch.cat([f.translation for f in fits]),
            torch.cat([f.identity for f in fits]), torch.cat([f.expression for f in fits]),
            np.concatenate([f.residual_px for f in fits]), np.concatenate([f.cost for f in fits]), fits[0].settings,
        )

    @property
    def euler(self) -> torch.Tensor:
        """(N, 3) ``(pitch, yaw, roll)`` radians."""
        return matrix_to_euler(self.rotation)

    def vertices(self, model: MorphableModel, index: Sequence[int] | slice | None = None) -> torch.Tensor:
        """Camera-frame vertices (n, V, 3) float64 of the fitted faces ``index`` (default all)."""
        sel = slice(None) if index is None else index
        shape = model.shape(self.identity[sel].to(model.mean_shape.dtype), self.expression[sel].to(model.mean_shape.dtype))
        R, t = self.rotation[sel], self.translation[sel]
        return shape.double() @ R.transpose(1, 2) + t[:, None, :]

    def vertex_positions(self, model: MorphableModel, vertex_ids: np.ndarray | torch.Tensor, chunk: int = 1024) -> torch.Tensor:
        """Camera-frame positions (N, U, 3) float64 of the vertices ``vertex_ids`` (U,) on every fitted face."""
        ids = torch.as_tensor(np.asarray(vertex_ids), dtype=torch.long)
        V = model.n_vertices
        mean = model.mean_shape.detach().cpu().double()[ids]
        basis = model.shape_basis.detach().cpu().double().reshape(-1, V, 3)[:, ids]
        coeffs = torch.cat([self.identity, self.expression], 1).double()
        out = []
        for a in range(0, len(self), chunk):
            c = coeffs[a : a + chunk]
            X = mean + torch.einsum("bk,kud->bud", c, basis)
            out.append(X @ self.rotation[a : a + chunk].transpose(1, 2) + self.translation[a : a + chunk, None, :])
        return torch.cat(out)

    def camera(self, n: int = 1) -> Any:
        return PreprocessCfg(input_size=self.settings.input_size).camera(n, dtype=torch.float64)


# ----------------------------------------------------------------------------- compiled definitions
@dataclass
class _Compiled:
    corners: torch.Tensor  # (L, 3) indices into the reduced vertex set U
    bary: torch.Tensor  # (L, 3)
    crow: torch.Tensor  # (Lc,) contour rows
    cand: torch.Tensor  # (Lc, C) indices into U
    cvalid: torch.Tensor  # (Lc, C)
    side: torch.Tensor  # (Lc,)


def _definition_arrays(model: MorphableModel, d: str | sl.SurfaceDefinition) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(corners (L, 3) vertex ids, bary (L, 3), contour (L,) bool, candidates (L, C) or None)."""
    tris = model.triangles.cpu().numpy()
    if isinstance(d, sl.SurfaceDefinition):
        cand = d.contour_candidates if d.has_contour else None
        return d.corners(tris), d.barycentric.astype(np.float64), d.contour.astype(bool), cand
    if d == sl.ICT68:
        idx = model.landmark_index.cpu().numpy()
        return np.stack([idx] * 3, 1), np.tile([1.0, 0.0, 0.0], (len(idx), 1)), np.zeros(len(idx), bool), None
    if d == sl.MEDIAPIPE468:
        return (tris[model.mediapipe_triangle.cpu().numpy()], model.mediapipe_barycentric.cpu().double().numpy(),
                np.zeros(len(model.mediapipe_triangle), bool), None)
    model._require_definition(d)
    corners = getattr(model, f"lmdef_{d}_corners").cpu().numpy()
    bary = getattr(model, f"lmdef_{d}_bary").cpu().double().numpy()
    contour = np.zeros(len(corners), bool)
    cand = None
    if model.landmark_definition(d).get("n_contour"):
        rows = getattr(model, f"lmdef_{d}_crow").cpu().numpy()
        contour[rows] = True
        c = getattr(model, f"lmdef_{d}_cand").cpu().numpy()
        valid = getattr(model, f"lmdef_{d}_cvalid").cpu().numpy()
        cand = np.full((len(corners), c.shape[1]), -1, dtype=np.int64)
        cand[rows] = np.where(valid, c, -1)
    return corners, bary, contour, cand


def _compile(model: MorphableModel, defs: Sequence[str | sl.SurfaceDefinition], silhouette: bool) -> tuple[list[_Compiled], np.ndarray]:
    raw = [_definition_arrays(model, d) for d in defs]
    used = [r[0].ravel() for r in raw] + [r[3][r[3] >= 0] for r in raw if r[3] is not None and silhouette]
    U = np.unique(np.concatenate(used))
    where = np.full(model.n_vertices, -1, dtype=np.int64)
    where[U] = np.arange(len(U))
    mean = model.mean_shape.detach().cpu().double().numpy()
    out = []
    for corners, bary, contour, cand in raw:
        if cand is not None and silhouette and contour.any():
            rows = np.flatnonzero(contour)
            c = cand[rows]
            valid = c >= 0
            cu = np.where(valid, where[np.where(valid, c, 0)], 0)
            pts = (mean[corners[rows]] * bary[rows][:, :, None]).sum(1)
            side = np.where(pts[:, 0] >= 0, 1.0, -1.0)
        else:
            rows, cu, valid, side = (np.zeros(0, np.int64), np.zeros((0, 1), np.int64), np.zeros((0, 1), bool),
                                     np.zeros(0))
        out.append(_Compiled(torch.as_tensor(where[corners]), torch.as_tensor(bary, dtype=torch.float64),
                             torch.as_tensor(rows), torch.as_tensor(cu), torch.as_tensor(valid),
                             torch.as_tensor(side, dtype=torch.float64)))
    return out, U


def _skew(v: torch.Tensor) -> torch.Tensor:
    z = torch.zeros_like(v[..., 0])
    return torch.stack([
        torch.stack([z, -v[..., 2], v[..., 1]], -1),
        torch.stack([v[..., 2], z, -v[..., 0]], -1),
        torch.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def _rodrigues(w: torch.Tensor) -> torch.Tensor:
    from mlanet.geometry.rotations import axis_angle_to_matrix

    return axis_angle_to_matrix(w)


# ----------------------------------------------------------------------------- the fit
class _Problem:
    """One chunk of faces: targets, weights and the reduced model."""

    def __init__(self, comp: list[_Compiled], mean_U: torch.Tensor, basis_U: torch.Tensor, targets: list[torch.Tensor],
                 weights: list[torch.Tensor], cam: Any, s: LandmarkFitSettings, k_id: int) -> None:
        self.comp, self.mean_U, self.basis_U = comp, mean_U, basis_U
        self.targets = [torch.nan_to_num(t) for t in targets]
        self.sw = [w.clamp_min(0).sqrt() / s.sigma_px for w in weights]
        self.cam, self.s, self.k_id = cam, s, k_id
        K = basis_U.shape[0]
        prior = torch.ones(K, dtype=torch.float64)
        prior[k_id:] = s.w_expression
        self.prior = prior

    def evaluate(self, R: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None, jac: bool, shape_jac: bool):
        """Residuals (b, M), Jacobian (b, M, 6 [+ K]) if ``jac``; c None = mean shape."""
        parts = list(self._per_definition(R, t, c, jac, shape_jac))
        r = torch.cat([p[0] for p in parts], 1)
        return r, (torch.cat([p[1] for p in parts], 1) if jac else None)

    def normal_equations(self, R: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None, shape_jac: bool):
        """Residuals (b, M), ``J^T J`` (b, P, P) and ``J^T r`` (b, P), summed definition by definition
        (the stacked Jacobian of all definitions is never built: that copy dominated the fit's time)."""
        res, A, g = [], None, None
        for r_c, J_c in self._per_definition(R, t, c, True, shape_jac):
            Jt = J_c.transpose(1, 2)
            a_c, g_c = Jt @ J_c, (Jt @ r_c[..., None])[..., 0]
            A, g = (a_c, g_c) if A is None else (A + a_c, g + g_c)
            res.append(r_c)
        return torch.cat(res, 1), A, g

    def _per_definition(self, R: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None, jac: bool, shape_jac: bool):
        """Per definition: residuals (b, 2L) and, if ``jac``, the Jacobian (b, 2L, 6 [+ K])."""
        b = R.shape[0]
        X = self.mean_U[None].expand(b, -1, -1) if c is None else self.mean_U + torch.einsum("bk,kud->bud", c, self.basis_U)
        f = self.cam.fx[0]
        cx, cy = self.cam.cx[0], self.cam.cy[0]
        for comp, tgt, sw in zip(self.comp, self.targets, self.sw):
            P = (X[:, comp.corners] * comp.bary[None, :, :, None]).sum(2)  # (b, L, 3) model frame
            Bp = None
            if shape_jac:
                Bp = (self.basis_U[:, comp.corners] * comp.bary[None, :, :, None]).sum(2)  # (K, L, 3)
                Bp = Bp.permute(1, 2, 0)[None].expand(b, -1, -1, -1)  # (b, L, 3, K)
            if len(comp.crow):
                Xc = X @ R.transpose(1, 2) + t[:, None, :]
                cand_cam = Xc[:, comp.cand]  # (b, Lc, C, 3)
                pick = sl.select_silhouette(cand_cam, comp.cvalid, self.cam, R, comp.side)
                u_idx = torch.gather(comp.cand[None].expand(b, -1, -1), 2, pick[..., None])[..., 0]  # (b, Lc)
                P = P.clone()
                P[:, comp.crow] = torch.gather(X, 1, u_idx[..., None].expand(-1, -1, 3))
                if shape_jac:
                    Bp = Bp.clone()
                    Bc = self.basis_U.permute(1, 2, 0)[u_idx]  # (b, Lc, 3, K)
                    Bp[:, comp.crow] = Bc
            RP = P @ R.transpose(1, 2)
            Xcam = RP + t[:, None, :]
            z = Xcam[..., 2].clamp_min(1e-6)
            u = f * Xcam[..., 0] / z + cx
            v = f * Xcam[..., 1] / z + cy
            r = torch.stack([u - tgt[..., 0], v - tgt[..., 1]], -1) * sw[..., None]  # (b, L, 2)
            J = None
            if jac:
                zero = torch.zeros_like(z)
                D = torch.stack([
                    torch.stack([f / z, zero, -f * Xcam[..., 0] / z**2], -1),
                    torch.stack([zero, f / z, -f * Xcam[..., 1] / z**2], -1),
                ], -2) * sw[..., None, None]  # (b, L, 2, 3)
                Jw = -D @ _skew(RP)
                Jt = D
                parts = [Jw, Jt]
                if shape_jac:
                    parts.append(D @ R[:, None] @ Bp)  # (b, L, 2, K)
                J = torch.cat(parts, -1)
                J = J.reshape(b, -1, J.shape[-1])
            yield r.reshape(b, -1), J

    def cost(self, r: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        out = (r**2).sum(1)
        if c is not None:
            out = out + (self.prior * c**2).sum(1)
        return out


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve the batched symmetric positive-definite systems ``a (B, K, K) x = b (B, K)`` -> x (B, K).

    Cholesky, not ``torch.linalg.solve``: with torch 2.13's oneMKL, a batched LU solve after the
    process changed its thread count (``torch.set_num_threads``, e.g. by ``mlanet bench model
    --torch-threads``) fails inside DLASWP and never returns. A matrix that is not numerically
    positive definite falls back to a per-matrix LU solve, which is unaffected.
    """
    l_mat, info = torch.linalg.cholesky_ex(a)
    if bool((info == 0).all()):
        return torch.cholesky_solve(b[..., None], l_mat)[..., 0]
    return torch.stack([torch.linalg.solve(a[i], b[i]) for i in range(a.shape[0])])


def _lm(problem: _Problem, R: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None, iterations: int, k_id: int):
    """Levenberg-Marquardt on (rotation, translation[, coefficients]); returns updated R, t, c, cost."""
    shape = c is not None
    r, JtJ, Jtr = problem.normal_equations(R, t, c, shape)
    cost = problem.cost(r, c)
    lam = torch.full_like(cost, 1e-3)
    prior = torch.cat([torch.zeros(6, dtype=torch.float64), problem.prior]) if shape else torch.zeros(6, dtype=torch.float64)
    for _ in range(iterations):
        A = JtJ
        g = Jtr.clone()
        if shape:
            g[:, 6:] += problem.prior * c
        A = A + torch.diag_embed(prior.expand(A.shape[0], -1))
        if shape:
            # active set of the [0, 1] bounds on the expression weights: a weight at a bound whose
            # gradient pushes it outwards stays where it is (its row and column are decoupled)
            e = c[:, k_id:]
            ge = g[:, 6 + k_id:]
            active = torch.zeros_like(g, dtype=torch.bool)
            active[:, 6 + k_id:] = ((e <= 0.0) & (ge > 0)) | ((e >= 1.0) & (ge < 0))
            keep = (~active).double()
            A = A * keep[:, :, None] * keep[:, None, :] + torch.diag_embed(active.double())
            g = g * keep
        diag = torch.diagonal(A, dim1=1, dim2=2)
        A_lm = A + torch.diag_embed(lam[:, None] * diag + 1e-9)
        delta = -_solve_spd(A_lm, g)
        R_new = _rodrigues(delta[:, :3]) @ R
        t_new = t + delta[:, 3:6]
        c_new = None
        if shape:
            c_new = c + delta[:, 6:]
            c_new[:, k_id:] = c_new[:, k_id:].clamp(0.0, 1.0)
        r_new, JtJ_new, Jtr_new = problem.normal_equations(R_new, t_new, c_new, shape)
        cost_new = problem.cost(r_new, c_new)
        ok = torch.isfinite(cost_new) & (cost_new < cost)
        okv = ok[:, None]
        R = torch.where(ok[:, None, None], R_new, R)
        t = torch.where(okv, t_new, t)
        if shape:
            c = torch.where(okv, c_new, c)
        r = torch.where(okv, r_new, r)
        JtJ = torch.where(ok[:, None, None], JtJ_new, JtJ)
        Jtr = torch.where(okv, Jtr_new, Jtr)
        cost = torch.where(ok, cost_new, cost)
        lam = torch.where(ok, (lam / 3).clamp_min(1e-7), (lam * 4).clamp_max(1e7))
    return R, t, c, cost


def fit_landmarks(
    model: MorphableModel,
    observations: Sequence[Observation],
    settings: LandmarkFitSettings | None = None,
    progress: ProgressFn | None = None,
    init: LandmarkFit | None = None,
) -> LandmarkFit:
    """Fit pose, identity and expression of N faces to 2D landmarks (see the module docstring).

    All observations must have the same N; each gives (N, L, 2) crop pixels of the
    ``settings.input_size`` crop camera. ``init`` (a fit of the same N faces, e.g. the previous
    pass of an iteratively reweighted fit) replaces the yaw starts: the full fit starts from it.
    """
    s = settings or LandmarkFitSettings()
    say = progress or (lambda m: None)
    if not observations:
        raise ValueError("fit_landmarks needs at least one observation")
    tgts = [torch.as_tensor(np.asarray(o.points), dtype=torch.float64) for o in observations]
    N = tgts[0].shape[0]
    wts = []
    for o, tg in zip(observations, tgts):
        if tg.ndim != 3 or tg.shape[0] != N or tg.shape[2] != 2:
            raise ValueError(f"observation points must be (N={N}, L, 2), got {tuple(tg.shape)}")
        w = torch.ones(tg.shape[:2], dtype=torch.float64) if o.weights is None else torch.as_tensor(np.asarray(o.weights), dtype=torch.float64)
        if w.shape != tg.shape[:2]:
            raise ValueError(f"observation weights must be {tuple(tg.shape[:2])}, got {tuple(w.shape)}")
        w = torch.where(torch.isfinite(tg).all(-1), w, torch.zeros_like(w))
        wts.append(w)
    comp, U = _compile(model, [o.definition for o in observations], s.silhouette)
    for o, cp, tg in zip(observations, comp, tgts):
        if cp.corners.shape[0] != tg.shape[1]:
            name = o.definition if isinstance(o.definition, str) else o.definition.name
            raise ValueError(f"definition {name} has {cp.corners.shape[0]} points, the targets {tg.shape[1]}")
    V = model.n_vertices
    Ut = torch.as_tensor(U)
    mean_U = model.mean_shape.detach().cpu().double()[Ut]
    basis_U = model.shape_basis.detach().cpu().double().reshape(-1, V, 3)[:, Ut]
    K, k_id = basis_U.shape[0], model.n_identity
    cam = PreprocessCfg(input_size=s.input_size).camera(1, dtype=torch.float64)
    prior_depth = PreprocessCfg().prior_depth_m
    starts = torch.tensor([math.radians(y) for y in s.yaw_starts_deg], dtype=torch.float64)
    if init is not None and (len(init) != N or init.settings.input_size != s.input_size):
        raise ValueError(f"init must be a fit of the same {N} faces at input size {s.input_size}")
    out_R, out_t, out_c, out_cost = [], [], [], []
    for a in range(0, N, s.chunk):
        sl_ = slice(a, min(a + s.chunk, N))
        b = sl_.stop - sl_.start
        prob = _Problem(comp, mean_U, basis_U, [x[sl_] for x in tgts], [w[sl_] for w in wts], cam, s, k_id)
        if init is not None:
            c0 = torch.cat([init.identity[sl_], init.expression[sl_]], 1).double().clone()
            R, t, c, cost = _lm(prob, init.rotation[sl_].double(), init.translation[sl_].double(), c0, s.iterations, k_id)
            for acc, part in zip((out_R, out_t, out_c, out_cost), (R, t, c, cost)):
                acc.append(part)
            say(f"fit: {sl_.stop}/{N} faces")
            continue
        # pose-only starts
        n_st = len(starts)
        big = _Problem(comp, mean_U, basis_U, [x[sl_].repeat(n_st, 1, 1) for x in tgts],
                       [w[sl_].repeat(n_st, 1) for w in wts], cam, s, k_id)
        ang = torch.zeros(n_st * b, 3, dtype=torch.float64)
        ang[:, 1] = starts.repeat_interleave(b)
        R0 = euler_to_matrix(ang)
        t0 = _initial_translation(big, R0, cam, prior_depth)
        R1, t1, _, cost1 = _lm(big, R0, t0, None, s.pose_iterations, k_id)
        best = cost1.reshape(n_st, b).argmin(0)
        pick = best * b + torch.arange(b)
        R, t = R1[pick], t1[pick]
        c = torch.zeros(b, K, dtype=torch.float64)
        R, t, c, cost = _lm(prob, R, t, c, s.iterations, k_id)
        for acc, part in zip((out_R, out_t, out_c, out_cost), (R, t, c, cost)):
            acc.append(part)
        say(f"fit: {sl_.stop}/{N} faces")
    R, t, c, cost = torch.cat(out_R), torch.cat(out_t), torch.cat(out_c), torch.cat(out_cost)
    # mean point distance (crop px), weights as given
    unit = replace(s, sigma_px=1.0)
    dist = []
    with torch.no_grad():
        for a in range(0, N, s.chunk):
            sl_ = slice(a, min(a + s.chunk, N))
            full = _Problem(comp, mean_U, basis_U, [x[sl_] for x in tgts], [torch.ones_like(w[sl_]) for w in wts],
                            cam, unit, k_id)
            r, _ = full.evaluate(R[sl_], t[sl_], c[sl_], False, False)
            dist.append(r.reshape(r.shape[0], -1, 2).norm(dim=-1))
    d = torch.cat(dist)
    w = torch.cat(wts, 1)
    resid = ((d * (w > 0)).sum(1) / (w > 0).sum(1).clamp_min(1)).numpy()
    return LandmarkFit(R, t, c[:, :k_id], c[:, k_id:], resid, cost.numpy(), s, d.numpy())


def _initial_translation(prob: _Problem, R: torch.Tensor, cam: Any, depth: float) -> torch.Tensor:
    """Translation putting the rotated mean shape's points on the targets' centroid at a matching scale."""
    b = R.shape[0]
    f, cx, cy = cam.fx[0], cam.cx[0], cam.cy[0]
    pts, tg, ws = [], [], []
    for comp, t, sw in zip(prob.comp, prob.targets, prob.sw):
        P = (prob.mean_U[comp.corners] * comp.bary[:, :, None]).sum(1)  # (L, 3)
        pts.append(P[None].expand(b, -1, -1) @ R.transpose(1, 2))
        tg.append(t)
        ws.append((sw > 0).double())
    P, T, W = torch.cat(pts, 1), torch.cat(tg, 1), torch.cat(ws, 1)
    wn = W / W.sum(1, keepdim=True).clamp_min(1)
    pc = (P * wn[..., None]).sum(1)
    tc = (T * wn[..., None]).sum(1)
    size_m = (((P[..., :2] - pc[:, None, :2]) ** 2).sum(-1) * wn).sum(1).sqrt()
    size_t = (((T - tc[:, None]) ** 2).sum(-1) * wn).sum(1).sqrt().clamp_min(1e-6)
    z = (f * size_m / size_t).clamp(0.1 * depth, 10 * depth)
    x = (tc[:, 0] - cx) * z / f - pc[:, 0]
    y = (tc[:, 1] - cy) * z / f - pc[:, 1]
    return torch.stack([x, y, z - pc[:, 2]], -1)


# ----------------------------------------------------------------------------- locating image points on fits
def locate_visible(
    vertices: np.ndarray, triangles: np.ndarray, camera: Any, targets: np.ndarray, k: int = 96
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Visible surface point under each image point (L, 2) of one mesh: the front-most front-facing
    triangle containing it.

    Returns ``(triangle (L,), barycentric (L, 3) in 3D, found (L,) bool)``; a point over no
    front-facing triangle is not found.
    """
    from scipy.spatial import cKDTree

    v = np.asarray(vertices, dtype=np.float64)
    t = np.asarray(triangles, dtype=np.int64)
    f = float(camera.fx.reshape(-1)[0])
    cx, cy = float(camera.cx.reshape(-1)[0]), float(camera.cy.reshape(-1)[0])
    z = v[:, 2]
    uv = np.stack([f * v[:, 0] / z + cx, f * v[:, 1] / z + cy], 1)
    a, b, c = uv[t[:, 0]], uv[t[:, 1]], uv[t[:, 2]]
    # front-facing = counter-clockwise on screen seen from the camera (y down flips the sign)
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    tg = np.asarray(targets, dtype=np.float64)[:, :2]
    kk = int(min(k, len(t)))
    _, cand = cKDTree(uv[t].mean(1)).query(tg, k=kk)
    cand = cand.reshape(len(tg), kk)
    A, Bv, C = a[cand], b[cand], c[cand]
    p = tg[:, None, :]
    den = (Bv[..., 1] - C[..., 1]) * (A[..., 0] - C[..., 0]) + (C[..., 0] - Bv[..., 0]) * (A[..., 1] - C[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = ((Bv[..., 1] - C[..., 1]) * (p[..., 0] - C[..., 0]) + (C[..., 0] - Bv[..., 0]) * (p[..., 1] - C[..., 1])) / den
        l2 = ((C[..., 1] - A[..., 1]) * (p[..., 0] - C[..., 0]) + (A[..., 0] - C[..., 0]) * (p[..., 1] - C[..., 1])) / den
    l3 = 1 - l1 - l2
    lam = np.stack([l1, l2, l3], -1)
    inside = np.all(lam >= -1e-9, -1) & np.isfinite(den) & (np.abs(den) > 0)
    ccw = area[cand] < 0  # (see mlanet conventions: CCW front faces in a y-up view = clockwise in y-down pixels)
    zc = z[t[cand]]
    depth = 1.0 / np.where(inside, (lam / zc).sum(-1), np.nan)
    depth = np.where(inside, depth, np.inf)
    best = depth.argmin(1)
    rows = np.arange(len(tg))
    found = np.isfinite(depth[rows, best]) & ccw[rows, best]
    lb = lam[rows, best] / zc[rows, best]
    lb = lb / lb.sum(1, keepdims=True)
    return cand[rows, best], lb, found


def reprojection_surface_points(
    model: MorphableModel,
    fit: LandmarkFit,
    targets: np.ndarray,
    valid: np.ndarray,
    init: np.ndarray,
    radius_m: float | np.ndarray = 0.02,
    scale_px: float = 3.0,
    weights: np.ndarray | None = None,
    grid: int = 12,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The surface points (mean-shape frame) whose projections through the fitted faces best match 2D targets.

    For each landmark l, every vertex within ``radius_m`` of ``init[l]`` (mean-shape frame) is
    scored by the robust (Cauchy, scale ``scale_px`` crop pixels) reprojection error over the
    faces where ``valid``; around the best vertex, points of its incident triangles on a
    barycentric grid (step ``1 / grid``) are scored the same way and the best one is kept.
    Only 2D positions are used, so points hidden by the face itself (a far-side jaw point)
    count like visible ones, as they do in 2D benchmarks.

    Args:
        targets: (N, L, 2) crop pixels of the fit's crop camera; valid: (N, L) bool;
        init: (L, 3) starting points; weights: (N, L) optional per-face weights.

    Returns ``(triangle (L,), barycentric (L, 3), stats)`` with stats per landmark: faces used,
    median reprojection error (px), and how far the result moved from ``init`` (mm).
    """
    from scipy.spatial import cKDTree

    mean = model.mean_shape.detach().cpu().double().numpy()
    tris = model.triangles.cpu().numpy().astype(np.int64)
    tg = np.asarray(targets, dtype=np.float64)
    N, L, _ = tg.shape
    w_all = np.where(valid, 1.0 if weights is None else weights, 0.0)
    radius = np.broadcast_to(np.asarray(radius_m, dtype=np.float64), (L,))
    tree = cKDTree(mean)
    cands = [np.asarray(tree.query_ball_point(init[l], radius[l]), dtype=np.int64) for l in range(L)]
    for l in range(L):
        if len(cands[l]) == 0:
            cands[l] = np.array([tree.query(init[l])[1]])
    cam = fit.camera()
    f, cx, cy = float(cam.fx[0]), float(cam.cx[0]), float(cam.cy[0])

    def project(ids: np.ndarray) -> np.ndarray:
        X = fit.vertex_positions(model, ids).numpy()  # (N, U, 3)
        return np.stack([f * X[..., 0] / X[..., 2] + cx, f * X[..., 1] / X[..., 2] + cy], -1)

    def robust(uv: np.ndarray, l: int) -> np.ndarray:  # uv (N, M, 2) -> (M,)
        r2 = ((uv - tg[:, l, None, :]) ** 2).sum(-1) / scale_px**2
        r2 = np.nan_to_num(r2, nan=0.0)
        return (np.log1p(r2) * w_all[:, l, None]).sum(0)

    out_t = np.zeros(L, dtype=np.int64)
    out_b = np.zeros((L, 3))
    err, moved, used = [], [], []
    steps = np.array([(i, j, grid - i - j) for i in range(grid + 1) for j in range(grid + 1 - i)], dtype=np.float64) / grid
    for l in range(L):
        sel = w_all[:, l] > 0
        if not sel.any():
            raise ValueError(f"landmark {l}: no face gives a valid target")
        ids = cands[l]
        cost = np.concatenate([robust(project(ids[a : a + 256]), l) for a in range(0, len(ids), 256)])
        best = ids[int(np.argmin(cost))]
        ring = np.nonzero((tris == best).any(1))[0]
        corner_ids = np.unique(tris[ring])
        uvc = project(corner_ids)  # (N, C, 2)
        pos = {v: k for k, v in enumerate(corner_ids)}
        best_cost, best_tb = np.inf, (ring[0], np.array([1.0, 0.0, 0.0]))
        for tri_id in ring:
            k = [pos[v] for v in tris[tri_id]]
            # projection of a barycentric point ~ barycentric combination of projected corners (triangles of a few mm)
            uv = np.einsum("sk,nkd->nsd", steps, uvc[:, k])
            c = robust(uv, l)
            i = int(np.argmin(c))
            if c[i] < best_cost:
                best_cost, best_tb = c[i], (tri_id, steps[i])
        out_t[l], out_b[l] = best_tb
        p = (mean[tris[out_t[l]]] * out_b[l][:, None]).sum(0)
        uv = np.einsum("k,nkd->nd", out_b[l], uvc[:, [pos[v] for v in tris[out_t[l]]]])
        e = np.linalg.norm(uv - tg[:, l], axis=-1)[sel]
        err.append(round(float(np.median(e)), 3))
        moved.append(round(float(np.linalg.norm(p - init[l]) * 1000.0), 2))
        used.append(int(sel.sum()))
    return out_t, out_b, {"faces": used, "reprojection_median_px": err, "moved_from_start_mm": moved}
