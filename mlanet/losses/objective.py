"""The training objective: a weighted sum of the terms in :mod:`.terms`, weights from :class:`LossCfg`.

Which terms apply depends on what each sample carries (the sample schema of
:mod:`mlanet.data`): ``has_params`` -> vertex, 3D-landmark and colour supervision; ``landmarks_valid`` ->
68-point landmark loss; ``visible_<set>`` -> that set's landmark loss through the face model's
definition of it (ibug68, aflw21, mtfl5, teacher68 = aflw2000_68); ``has_mp468`` -> MediaPipe
pseudo-landmark loss; ``fit_ok`` -> identity/expression supervision by the store's fit; every sample ->
photometric loss on the rendered skin region and the regularisers. A term whose weight is 0
is not computed (the photometric term is the only one that needs the renderer).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mlanet.eval.face_measures import IBUG68_EYELID_ROWS
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.morphable.mirror import mirrors_expressions
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams
from mlanet.preprocess import PreprocessCfg
from mlanet.losses import terms

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossCfg:
    """Loss weights (0 disables a term)."""

    landmarks: float = 1.0
    mediapipe: float = 0.5
    landmarks3d: float = 0.0  # mm; the vertex term already covers 3D where parameters exist
    vertices: float = 0.02
    vertex_colour: float = 0.5
    photometric: float = 0.5
    #: run the renderer (photometric term) on every N-th step only (its weight is then N times larger on
    #: those steps, the same on average); the renderer costs about as much as the network on a CPU
    photometric_every: int = 1
    reg_identity: float = 1e-3
    reg_expression: float = 1e-3
    reg_albedo: float = 1e-3
    albedo_symmetry: float = 0.05
    albedo_smoothness: float = 0.05
    lighting: float = 0.05
    #: the face model's landmark definition the 68-point terms compare with ``batch["landmarks"]``
    #: (``ict68``: its iBUG-68 vertices, the default so far; ``ibug68``: 300-W's points, jaw on the
    #: silhouette of the crop camera; ``aflw2000_68``: AFLW2000-3D's points)
    landmark_definition: str = "ict68"
    #: per-definition 2D landmark terms (``points_<set>`` / ``visible_<set>`` of the batch, see
    #: :data:`mlanet.data.sources.schema.LANDMARK_SETS`): the face model's definition of the same name
    #: projected by the crop camera (``ibug68``'s jaw on the silhouette, the others fixed surface
    #: points), mean distance / crop size over visible points. Manual sets weigh 1; the teacher's
    #: pseudo points (``aflw2000_68``) 0.3, about the ratio of the fits' noise sigmas (1.5 / 4 px,
    #: :mod:`mlanet.data.fits`). A definition the face model lacks disables its term (logged).
    #: Samples with a visible ``ibug68`` set skip the old ``landmarks`` term (no double counting).
    landmarks_ibug68: float = 1.0
    landmarks_aflw21: float = 1.0
    landmarks_mtfl5: float = 1.0
    landmarks_teacher68: float = 0.3
    #: whether the teacher's eight eyelid points (:data:`mlanet.eval.face_measures.IBUG68_EYELID_ROWS`) enter
    #: its landmark term. The teacher does not see eyes close (its aperture correlates r = 0.14 with 300-W's
    #: manual one, MediaPipe's r = 0.70; ``mlanet data eye-report``) and its usual aperture is eyeBlink ~0.56
    #: of the face model's ``aflw2000_68`` lids, so with them every face is pulled towards half-closed eyes
    landmarks_teacher68_eyelids: bool = True
    #: pseudo-3DMM fit supervision (``fit_params`` where ``fit_ok``): model-frame vertex distance (mm)
    #: of identity + expression; half the weight of ground-truth ``vertices`` (the fit is a pseudo label)
    fit_shape: float = 0.01
    #: pseudo-3DMM fit supervision of chosen expression weights directly (L1 on the coefficients, where
    #: ``fit_ok``): the jaw moves few vertices, so the vertex term above hardly teaches jawOpen
    fit_expression: float = 0.0
    fit_expression_names: tuple[str, ...] = ("jawOpen",)
    #: the same L1 over every *other* expression shape (term ``fit_expression_others``): without it the
    #: shapes the landmarks leave ambiguous drift to whatever fits them (stage 5g on 300-W: the network's
    #: mouthLowerDown / mouthUpperUp / cheekRaiser correlate r 0.2-0.3 with the fits', jawOpen 0.82), and a
    #: held-out talking face opened its mouth with mouthUpperUp / mouthLowerDown rather than jawOpen
    fit_expression_others: float = 0.0
    #: the form of both fit-expression terms (:data:`mlanet.losses.terms.FIT_EXPRESSION_FORMS`): ``l1`` or
    #: ``cross_entropy`` (the Bernoulli KL divergence, whose gradient on the sigmoid's logit does not vanish near 0)
    fit_expression_form: str = "l1"
    #: mirror consistency of the expression weights (term ``mirror_expression``, every sample, no labels): L1 of
    #: the weights for the input to the mirror-permuted weights the network gives the left-right flipped input
    #: (a second, gradient-free forward pass in the training loop). Stage 5g's jawOpen on the held-out Obama clip
    #: followed the lip gap at r 0.63 and at 0.88 on the same clip mirrored: the weights depend on which way the
    #: face is turned. Blendshape expressions only (a mirror permutes them; PCA coefficients it does not)
    mirror_expression: float = 0.0
    #: a prior against chosen expression shapes (term ``expression_prior``, every sample, no labels): the weight
    #: times the mean of those shapes' weights over the batch. The landmarks open the lips as well with
    #: mouthUpperUp / mouthLowerDown as with jawOpen; stage 5g opens a held-out half-open mouth (source_s29) with
    #: mouthUpperUp 0.47 and jawOpen 0.07. Stage 5m put 0.3 on the lip-only shapes: they fell to a tenth, and the
    #: lip gap went to cheekRaiser / mouthSmile, not to the jaw (benchmarks/results/training/abandoned/
    #: mobile_lite_s5m_jaw_prior/). Blendshape expressions only (weights in [0, 1]; PCA coefficients are signed)
    expression_prior: float = 0.0
    expression_prior_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.fit_expression_form not in terms.FIT_EXPRESSION_FORMS:
            raise ValueError(f"fit_expression_form must be one of {terms.FIT_EXPRESSION_FORMS}, "
                             f"got {self.fit_expression_form!r}")
        if isinstance(self.photometric_every, bool) or not isinstance(self.photometric_every, int) \
                or self.photometric_every < 1:
            raise ValueError(f"photometric_every must be an integer >= 1, got {self.photometric_every!r}")


@dataclass
class LossOutput:
    """Total loss and its named, weighted terms (scalars), plus what the logger may draw."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    landmarks_px: torch.Tensor  # (B, 68, 2) predicted landmarks in crop pixels
    render: torch.Tensor | None = None  # (B, S, S, 3) when the photometric term ran
    render_mask: torch.Tensor | None = None  # (B, S, S)


def _require_expression_names(face_model: MorphableModel, names: Sequence[str], key: str) -> list[int]:
    """Indices of ``names`` among the face model's expression shapes.

    Raises:
        ConfigError: a name the face model lacks (the message names ``key`` and suggests near names).
    """
    missing = [n for n in names if n not in face_model.expression_names]
    if missing:
        import difflib

        from mlanet.errors import ConfigError

        near = {n: difflib.get_close_matches(n, face_model.expression_names, n=2, cutoff=0.5) for n in missing}
        hint = "; ".join(f"{n}: did you mean {' or '.join(c)}?" for n, c in near.items() if c)
        raise ConfigError(f"{key}: the face model has no expression {missing}"
                          + (f" ({hint})" if hint else f" (it has {', '.join(face_model.expression_names)})"))
    return [face_model.expression_names.index(n) for n in names]


class Objective:
    """Computes :class:`LossOutput` for a batch; holds per-model constants (masks, mirror map)."""

    def __init__(self, face_model: MorphableModel, preprocess: PreprocessCfg, cfg: LossCfg) -> None:
        self.face_model = face_model
        self.preprocess = preprocess
        self.cfg = cfg
        self.skin = face_model.region_mask(*face_model.header.get("skin_regions", ["skin"])).float()
        self.albedo_priors = (
            terms.AlbedoPriors(face_model) if (cfg.albedo_symmetry or cfg.albedo_smoothness) else None
        )
        face_model.landmark_definition(cfg.landmark_definition)  # KeyError naming the model's definitions
        from mlanet.data.sources.schema import LANDMARK_SETS

        #: set name -> (definition, weight) of the per-definition landmark terms that run
        self.sets: dict[str, tuple[str, float]] = {}
        for name, (definition, _n) in LANDMARK_SETS.items():
            w = float(getattr(cfg, f"landmarks_{name}"))
            if not w:
                continue
            if not face_model.has_landmarks(definition):
                logger.warning("face model %s has no landmark definition %r: the %r landmark term is off",
                               face_model.model_id, definition, name)
                continue
            self.sets[name] = (definition, w)
        self.expression_perm = terms.expression_flip_permutation(face_model.expression_names)
        from mlanet.errors import ConfigError

        for key in ("mirror_expression", "expression_prior"):  # terms on blendshape weights (mirror map, [0, 1])
            if getattr(cfg, key) and not mirrors_expressions(face_model):
                raise ConfigError(f"loss.{key}: face model {face_model.model_id} has PCA expression coefficients, "
                                  "not the blendshape weights this term needs; set it to 0")
        if cfg.fit_expression:
            _require_expression_names(face_model, cfg.fit_expression_names, "loss.fit_expression_names")
        if cfg.expression_prior and not cfg.expression_prior_names:
            raise ConfigError("loss.expression_prior is set but loss.expression_prior_names is empty: name the shapes")
        #: (K_prior,) the expression shapes the ``expression_prior`` term holds down
        self.expression_prior_index = torch.tensor(
            _require_expression_names(face_model, cfg.expression_prior_names, "loss.expression_prior_names")
            if cfg.expression_prior else [], dtype=torch.long)
        self.fit_expression_index = torch.tensor(
            [face_model.expression_names.index(n) for n in cfg.fit_expression_names if n in face_model.expression_names],
            dtype=torch.long)
        chosen = set(self.fit_expression_index.tolist())
        #: (K_other,) the expression shapes the ``fit_expression_others`` term compares
        self.fit_expression_others_index = torch.tensor(
            [i for i in range(len(face_model.expression_names)) if i not in chosen], dtype=torch.long)

    @property
    def needs_mirror(self) -> bool:
        """Whether :meth:`__call__` needs ``mirror_flat``, the network's output for the flipped images."""
        return bool(self.cfg.mirror_expression)

    def __call__(self, batch: dict[str, torch.Tensor], pred_flat: torch.Tensor, step: int | None = None,
                 mirror_flat: torch.Tensor | None = None) -> LossOutput:
        """Loss of one batch; ``step`` (the optimisation step) selects the photometric steps
        (``cfg.photometric_every``); ``None`` runs every term. ``mirror_flat`` (B, P): the network's output for
        ``batch["image"].flip(-1)`` (required when :attr:`needs_mirror`; treated as a target)."""
        fm, cfg, S = self.face_model, self.cfg, self.preprocess.input_size
        every = cfg.photometric_every
        if step is None:
            photometric = cfg.photometric
        else:
            photometric = cfg.photometric * every if step % every == 0 else 0.0
        B = pred_flat.shape[0]
        pred = FaceParams.from_flat(pred_flat.float(), fm.layout)
        camera = self.preprocess.camera(B, device=pred_flat.device)
        verts = fm(pred)
        lm_px = camera.project(fm.landmark_points(verts, cfg.landmark_definition, camera=camera,
                                                  rotation=euler_to_matrix(pred.rotation.to(verts.dtype))))
        rotation = euler_to_matrix(pred.rotation.to(verts.dtype))
        out: dict[str, torch.Tensor] = {}
        if cfg.landmarks:
            valid = batch["landmarks_valid"].bool()
            if "ibug68" in self.sets and "visible_ibug68" in batch:  # those samples have their own term
                valid = valid & ~batch["visible_ibug68"].bool().any(-1, keepdim=True)
            out["landmarks"] = cfg.landmarks * terms.landmark_loss(lm_px, batch["landmarks"], valid, S)
        for name, (definition, w) in self.sets.items():
            vis = batch.get(f"visible_{name}")
            if vis is None or not bool(vis.any()):
                continue
            pts = camera.project(fm.landmark_points(verts, definition, camera=camera, rotation=rotation))
            vis = vis.bool()
            if name == "teacher68" and not cfg.landmarks_teacher68_eyelids:
                vis = vis.clone()
                vis[:, list(IBUG68_EYELID_ROWS)] = False
            out[f"landmarks_{name}"] = w * terms.landmark_loss(pts, batch[f"points_{name}"], vis, S)
        if cfg.mediapipe and fm.has_mediapipe and bool(batch["has_mp468"].any()):
            valid = batch["has_mp468"][:, None].expand(-1, batch["mp468"].shape[1])
            mp_px = camera.project(fm.landmark_points(verts, "mediapipe468"))
            out["mediapipe"] = cfg.mediapipe * terms.landmark_loss(mp_px, batch["mp468"], valid, S)
        if "fit_ok" in batch and bool(batch["fit_ok"].any()):  # pseudo-3DMM fit supervision
            fit_ok = batch["fit_ok"].bool()
            flipped = batch.get("flipped", torch.zeros_like(batch["fit_ok"])).bool()
            if cfg.fit_shape:
                out["fit_shape"] = cfg.fit_shape * terms.fit_shape_loss(
                    fm, pred, batch["fit_params"], fit_ok, flipped, self.expression_perm)
            for term, weight, index in (("fit_expression", cfg.fit_expression, self.fit_expression_index),
                                        ("fit_expression_others", cfg.fit_expression_others,
                                         self.fit_expression_others_index)):
                if weight and len(index):
                    out[term] = weight * terms.fit_expression_loss(
                        pred, batch["fit_params"], fit_ok, flipped, self.expression_perm, index, fm.layout,
                        form=cfg.fit_expression_form)
        if cfg.mirror_expression:
            if mirror_flat is None:
                raise ValueError("Objective: loss.mirror_expression needs mirror_flat, the output for the flipped images")
            mirrored = FaceParams.from_flat(mirror_flat.detach().float(), fm.layout)
            out["mirror_expression"] = cfg.mirror_expression * terms.mirror_expression_loss(
                pred, mirrored, self.expression_perm)
        if cfg.expression_prior:
            out["expression_prior"] = cfg.expression_prior * pred.expression[:, self.expression_prior_index].mean()
        has_params = batch["has_params"].bool()
        if bool(has_params.any()) and (cfg.vertices or cfg.vertex_colour or cfg.landmarks3d):
            target = FaceParams.from_flat(torch.nan_to_num(batch["params"]).float(), fm.layout)
            if cfg.vertices:
                out["vertices"] = cfg.vertices * terms.vertex_loss(fm, pred, target, has_params)
            if cfg.landmarks3d:
                out["landmarks3d"] = cfg.landmarks3d * terms.landmark3d_loss(fm, pred, target, has_params,
                                                                             cfg.landmark_definition)
            if cfg.vertex_colour:
                out["vertex_colour"] = cfg.vertex_colour * terms.vertex_colour_loss(fm, pred, target, has_params)
        render = render_mask = None
        if photometric:
            from mlanet.render.rasterizer import interpolate
            from mlanet.render.renderer import render_face

            r = render_face(fm, pred, camera, S, S)
            skin = interpolate(self.skin[None, :, None].expand(B, -1, -1), r.fragments, fm.triangles)[..., 0]
            render, render_mask = r.image, r.mask * skin
            image = batch["image"].permute(0, 2, 3, 1).to(render.dtype)
            out["photometric"] = photometric * terms.photometric_loss(render, image, render_mask)
        out["regulariser"] = terms.coefficient_regulariser(pred, cfg.reg_identity, cfg.reg_expression, cfg.reg_albedo)
        if cfg.lighting:
            out["lighting"] = cfg.lighting * terms.lighting_prior(pred)
        if self.albedo_priors is not None:
            albedo = fm.albedo(pred.albedo)
            if cfg.albedo_symmetry:
                out["albedo_symmetry"] = cfg.albedo_symmetry * self.albedo_priors.symmetry(albedo)
            if cfg.albedo_smoothness:
                out["albedo_smoothness"] = cfg.albedo_smoothness * self.albedo_priors.smoothness(albedo)
        total = torch.stack(list(out.values())).sum()
        return LossOutput(total=total, terms=out, landmarks_px=lm_px, render=render, render_mask=render_mask)
