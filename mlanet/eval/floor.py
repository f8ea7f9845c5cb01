"""The landmark *floor* of a face model on AFLW2000-3D: how well the model itself can match the ground truth.

For every image the face model (pose, identity, expression) is fitted directly to the image's
ground-truth 68 points (:func:`mlanet.morphable.landmarks.fit.fit_landmarks`, in crop pixels of
the standard protocol's ground-truth crop and the standard crop camera), and the fitted
model's points of one landmark definition are scored with the benchmark's own code
(:meth:`mlanet.eval.aflw2000.AFLW2000Eval.evaluate`: the fitted points are replayed as the
predictions, mapped back to image pixels and scored exactly like a network's). No network can
score below this floor with that face model and definition (up to what its regulariser allows):
it separates the error of the landmark *definition* from the error of the network.

The fit is the MAP estimate under the model's priors (identity ~ N(0, 1), expression weights
in [0, 1] with a unit Gaussian prior) and a landmark noise of ``sigma_px`` pixels of the 224 px
crop; the default 1.0 px gives fitted identities as spread as the prior says (median
``|identity|`` ~ sqrt(K_id)), i.e. plausible faces rather than landmark overfitting. The result
records the fit settings and the fitted coefficients' spread.

Only for measuring: AFLW2000-3D never enters the fitting of a definition (see
:mod:`mlanet.morphable.landmarks.build`).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mlanet.morphable.landmarks.fit import LandmarkFitSettings, Observation, fit_landmarks
from mlanet.morphable.model import MorphableModel
from mlanet.preprocess import PreprocessCfg
from mlanet.eval.aflw2000 import AFLW2000Eval, NameList

#: Default fit of the floor (see the module docstring).
FLOOR_FIT = LandmarkFitSettings(input_size=224, sigma_px=1.0, iterations=60, chunk=256)


def landmark_floor(
    bench: AFLW2000Eval,
    face_model: MorphableModel,
    definition: str,
    settings: LandmarkFitSettings | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The floor of ``definition`` on the images of ``bench`` (see the module docstring).

    Returns the :meth:`AFLW2000Eval.evaluate` result (``nme_bins``, ``nme_mean_bins``, ...,
    per-image records) plus ``floor``: the definition and its metadata, the fit settings, the
    median fit residual (crop pixels), the fitted coefficients' spread and the fitted yaw.
    """
    s = settings or FLOOR_FIT
    if definition not in face_model.landmark_names():
        face_model.landmark_definition(definition)  # raises the KeyError naming what the model has
    n_points = face_model.landmark_definition(definition).get("n_points")
    if n_points != 68:
        raise ValueError(f"the AFLW2000-3D floor scores 68 points; definition {definition!r} has {n_points}")
    cfg = PreprocessCfg(input_size=s.input_size)
    S = cfg.input_size
    boxes = [smp.crop_box(cfg.roi_scale) for smp in bench.samples]
    targets = np.stack([b.image_to_crop(smp.landmarks, S) for b, smp in zip(boxes, bench.samples)])
    fit = fit_landmarks(face_model.cpu(), [Observation(definition, targets)], s, progress=progress)
    cam = fit.camera()
    with torch.no_grad():
        preds = []
        for a in range(0, len(fit), 64):
            idx = slice(a, a + 64)
            v = fit.vertices(face_model, idx)
            pts = face_model.landmark_points(v, definition, camera=cam, rotation=fit.rotation[idx])
            preds.append(cam.project(pts))
        pred = torch.cat(preds).float()
    queue = list(pred)

    def replay(images: torch.Tensor) -> torch.Tensor:
        out = torch.stack([queue.pop(0) for _ in range(images.shape[0])])
        return out

    result = bench.evaluate(replay, cfg, batch_size=64, model={"name": f"floor:{definition}"},
                            weights={"fitted_to_ground_truth": True})
    if queue:
        raise RuntimeError(f"the benchmark consumed {len(pred) - len(queue)} of {len(pred)} fitted predictions")
    ident = fit.identity.norm(dim=1).numpy()
    result["floor"] = {
        "definition": definition,
        "definition_info": face_model.landmark_definition(definition),
        "what": (
            "the face model fitted directly to each image's ground-truth 68 points (pose, identity, expression; MAP "
            "under the model's priors) and its points of this definition scored with the standard protocol"
        ),
        "fit": {**s.to_dict(), "method": "Levenberg-Marquardt, analytic Jacobians (mlanet.morphable.landmarks.fit)",
                "camera": "the standard crop camera of PreprocessCfg(input_size) on the ground-truth crop"},
        "fit_residual_median_px": round(float(np.median(fit.residual_px)), 4),
        "identity_norm_median": round(float(np.median(ident)), 3),
        "identity_norm_prior_expectation": round(math.sqrt(fit.identity.shape[1]), 3),
        "expression_mean": round(float(fit.expression.mean()), 4),
        "fitted_abs_yaw_deg_median": round(float(torch.rad2deg(fit.euler[:, 1].abs()).median()), 2),
    }
    result["face_model"] = face_model.describe()
    return result


def compare_floors(
    folder: str | Path,
    face_model: MorphableModel,
    definitions: Sequence[str],
    settings: LandmarkFitSettings | None = None,
    include: NameList | Sequence[str] | None = None,
    exclude: NameList | Sequence[str] | None = None,
    sigmas: Sequence[float] = (),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Floors of several definitions on one folder, plus (``sigmas``) their sensitivity to the fit's noise level.

    Returns ``{"data", "settings", "results": {definition: result}, "sensitivity": {definition: {sigma:
    {"nme_bins", "nme_mean_bins"}}}}``; per-image records are kept only in ``results``.
    """
    bench = AFLW2000Eval(folder, include=include, exclude=exclude)
    s = settings or FLOOR_FIT
    results = {d: landmark_floor(bench, face_model, d, s, progress) for d in definitions}
    sens: dict[str, Any] = {}
    for d in definitions:
        sens[d] = {}
        for sigma in sigmas:
            r = landmark_floor(bench, face_model, d, replace(s, sigma_px=float(sigma)), progress)
            sens[d][f"{float(sigma):g}"] = {"nme_bins": r["nme_bins"], "nme_mean_bins": r["nme_mean_bins"],
                                            "identity_norm_median": r["floor"]["identity_norm_median"]}
    return {
        "benchmark": "AFLW2000-3D landmark floor",
        "data": {"folder": str(bench.folder), "selection": bench.selection},
        "settings": s.to_dict(),
        "results": results,
        "sensitivity": sens,
    }


# ----------------------------------------------------------------------------- CLI
def cmd_floor(args: Any) -> int:
    import sys

    from mlanet.fileutil import check_writable_file, write_json_atomic
    from mlanet.errors import MLANetError

    check_writable_file(args.json, "--json")
    if not args.sigma_px > 0:
        raise MLANetError(f"--sigma-px must be > 0, got {args.sigma_px}")
    face_model = MorphableModel.load(args.face_model)
    definitions = args.definition or [d for d in ("ict68", "aflw2000_68") if face_model.has_landmarks(d)]
    for d in definitions:
        face_model.landmark_definition(d)
    include = NameList.load(args.list) if args.list else None
    s = replace(FLOOR_FIT, sigma_px=float(args.sigma_px))
    result = compare_floors(args.data, face_model, definitions, s, include=include, sigmas=args.sensitivity or ())
    result["face_model"] = face_model.describe()
    path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    n = next(iter(result["results"].values()))["n"]
    print(f"AFLW2000-3D landmark floor: face model {face_model.model_id} fitted to the ground truth of {n} images "
          f"(sigma {s.sigma_px:g} px of a {s.input_size} px crop), scored with the standard protocol")
    print(f"  {'definition':<14} {'[0,30]':>7} {'(30,60]':>8} {'(60,90]':>8} | {'mean of bins':>12} | {'all images':>10}")
    for d, r in result["results"].items():
        b = r["nme_bins"]
        print(f"  {d:<14} {b[0]:>7.3f} {b[1]:>8.3f} {b[2]:>8.3f} | {r['nme_mean_bins']:>12.3f} | {r['nme_all']:>10.3f}")
    for d, per in result["sensitivity"].items():
        for sigma, r in per.items():
            print(f"  {d:<14} sigma {sigma:>4} px: mean of bins {r['nme_mean_bins']:.3f}")
    print(f"json: {path}", file=sys.stdout)
    return 0


def add_floor_parser(sub: Any) -> None:
    f = sub.add_parser(
        "floor",
        help="landmark floor: the face model fitted to AFLW2000-3D's ground truth, scored per landmark definition",
        description=(
            "Fits the face model (pose, identity, expression) directly to each image's ground-truth 68 points (in the "
            "standard ground-truth crop) and scores the fitted model's points of each --definition with the standard "
            "AFLW2000-3D protocol: the lowest NME a network can reach with that face model and definition."
        ),
    )
    f.add_argument("--data", required=True, metavar="DIR", help="folder of AFLW2000-3D image/.mat pairs")
    f.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    f.add_argument("--definition", action="append", metavar="NAME",
                   help="landmark definition to score (repeatable; default: ict68 and aflw2000_68)")
    f.add_argument("--face-model", default=None, metavar="FILE", help="face-model file (default: the one in the asset home)")
    f.add_argument("--list", default=None, metavar="NAME_OR_FILE", help="only the image stems of this list")
    f.add_argument("--sigma-px", type=float, default=FLOOR_FIT.sigma_px, metavar="PX",
                   help=f"landmark noise of the fit in 224 px crop pixels (default {FLOOR_FIT.sigma_px:g})")
    f.add_argument("--sensitivity", type=float, action="append", metavar="PX",
                   help="also report the floor at this noise level (repeatable)")
    f.set_defaults(func=cmd_floor)
