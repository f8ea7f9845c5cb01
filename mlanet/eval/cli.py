"""``mlanet eval``: benchmark a checkpoint on AFLW2000-3D (68-point NME) or MICC Florence (dense RMSE).

``mlanet eval aflw2000 --data DIR --json OUT [--model NAME] [--weights FILE] [--ced PNG]
[--batch N] [--face-model FILE]`` runs the standard AFLW2000-3D protocol
(``shared/PROTOCOLS.md``) on any folder of ``<name>.jpg`` + ``<name>.mat`` pairs, writes the
result JSON and the CED plot (default: next to the JSON, ``<stem>_ced.png``) and prints a
short table. Without ``--weights`` it uses the shipped default weights of ``--model``; none
are shipped yet, so it says so and exits with status 2.

``mlanet eval micc --pred DIR --gt DIR --json OUT`` evaluates predicted meshes against
ground-truth scans laid out as in :data:`mlanet.eval.micc.FOLDER_LAYOUT`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..fileutil import file_sha256, write_json_atomic

#: Model whose shipped weights are used when neither --model nor --weights is given.
DEFAULT_MODEL = "mlanet_r50"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _progress(done: int, total: int, *_: Any) -> None:
    if sys.stderr.isatty():
        print(f"\r  {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def cmd_aflw2000(args: argparse.Namespace) -> int:
    from ..errors import AssetError, MLANetError
    from .aflw2000 import REFERENCES, AFLW2000Eval
    from .metrics import MissingExtraError, plot_ced
    from .weights import default_weights_path

    model_name = args.model or DEFAULT_MODEL
    shipped = args.weights is None
    if shipped:
        weights = default_weights_path(model_name)
        if weights is None:
            print(
                f"no default weights are shipped for {model_name} yet (they arrive with the training issue); "
                "pass --weights FILE",
                file=sys.stderr,
            )
            return 2
    else:
        from ..checkpoint import resolve_weights

        weights = resolve_weights(args.weights)
    if args.batch < 1:
        raise MLANetError(f"--batch must be >= 1, got {args.batch}")
    if args.crop == "detector":
        raise MLANetError(
            "--crop detector (the realistic variant) needs the project's face detector, which arrives with the edge "
            "runtime; use --crop gt (the standard, comparable protocol)"
        )
    bench = AFLW2000Eval(args.data)  # fails early, naming the folder, before any model is loaded
    if not Path(weights).is_file():
        raise AssetError(f"{weights}: no such checkpoint file")

    from ..morphable.model import MorphableModel
    from ..models.registry import create_model
    from .predict import make_landmark_predictor

    face_model = MorphableModel.load(args.face_model)
    model = create_model(args.model, checkpoint=weights, face_model=face_model)
    predictor = make_landmark_predictor(model, face_model)
    model_desc = model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", model_name)}
    weights_desc = {"path": str(weights), "sha256": file_sha256(weights), "shipped_default": shipped}
    result = bench.evaluate(
        predictor,
        model.preprocess,
        batch_size=args.batch,
        crop=args.crop,
        progress=_progress,
        model=model_desc,
        weights=weights_desc,
    )
    result["face_model"] = face_model.describe()

    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    ced_path = Path(args.ced).expanduser() if args.ced else json_path.with_name(json_path.stem + "_ced.png")
    name = str(model_desc.get("name", model_name))
    try:
        plot_ced(
            {name: [r["nme"] / 100.0 for r in result["images"]]},
            ced_path,
            references={f"{k} (published, mean of bins)": v for k, v in REFERENCES["published_mean_of_bins"].items()},
            title=f"AFLW2000-3D CED, {result['n']} images ({'ground-truth crops' if args.crop == 'gt' else 'detector crops'})",
        )
    except MissingExtraError as exc:
        print(f"warning: CED plot skipped: {exc}", file=sys.stderr)
        ced_path = None

    b = result["nme_bins"]
    n = result["n_bins"]
    print(f"AFLW2000-3D, {result['n']} images from {bench.folder}, model {name}, crop {args.crop}")
    print("  NME (%)    [0,30]   (30,60]  (60,90]  | mean of bins | all images (mean over images) | AUC@7%")
    print(
        f"             {_fmt(b[0]):>6}   {_fmt(b[1]):>6}   {_fmt(b[2]):>6}   | {_fmt(result['nme_mean_bins']):>12} |"
        f" {_fmt(result['nme_all']):>29} | {_fmt(result['auc_7'], 3)}"
    )
    print(f"  images     {n[0]:>6}   {n[1]:>6}   {n[2]:>6}")
    refs = ", ".join(f"{k} {v:.2f}" for k, v in REFERENCES["published_mean_of_bins"].items())
    print(f"  published mean of bins (all 2,000 images): {refs}")
    for warning in result.get("warnings", []):
        print(f"  warning: {warning}")
    print(f"json: {json_path}")
    if ced_path is not None:
        print(f"ced:  {ced_path}")
    return 0


def cmd_micc(args: argparse.Namespace) -> int:
    from .micc import MM_PER_M, evaluate_micc_folders

    result = evaluate_micc_folders(
        args.pred,
        args.gt,
        gt_unit=args.gt_unit,
        pred_unit=args.pred_unit,
        nose_index=args.nose_index,
        radius_m=args.radius_mm / MM_PER_M,
        icp_iterations=args.icp_iterations,
        progress=_progress,
    )
    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    print(f"MICC Florence, {len(result['subjects'])} subject(s), {len(result['records'])} reconstruction(s)")
    print("  setting        RMSE (mm) mean +- std   n")
    for setting, s in [*result["settings"].items(), ("overall", result["overall"])]:
        print(f"  {setting:<12} {s['mean_mm']:>10.3f} +- {s['std_mm']:<8.3f} {s['n']:>3}")
    print(f"json: {json_path}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from .micc import FOLDER_LAYOUT, MICC_RADIUS_M, MM_PER_M, UNITS

    p = subparsers.add_parser("eval", help="benchmarks: AFLW2000-3D 68-point NME, MICC Florence dense RMSE")
    sub = p.add_subparsers(dest="eval_cmd", required=True)

    a = sub.add_parser(
        "aflw2000",
        help="AFLW2000-3D 68-point 2D NME (mean of the three yaw bins), CED and AUC",
        description=(
            "Standard AFLW2000-3D protocol: ground-truth crops (sqrt(2) * max(w, h), zero padded), NME normalised by "
            "sqrt(w*h) of the ground-truth box, yaw bins [0,30] (30,60] (60,90], headline = mean of the bin means. "
            "DIR is any folder of <name>.jpg + <name>.mat pairs."
        ),
    )
    a.add_argument("--data", required=True, metavar="DIR", help="folder of AFLW2000-3D image/.mat pairs")
    a.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    a.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"registered model name (default: the checkpoint's own; {DEFAULT_MODEL} for shipped weights)",
    )
    a.add_argument("--weights", default=None, metavar="FILE", help="checkpoint (.safetensors) or a training run folder (uses its last.json); default: shipped weights")
    a.add_argument("--ced", default=None, metavar="PNG", help="CED plot (default: <json stem>_ced.png next to the JSON)")
    a.add_argument("--batch", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    a.add_argument("--face-model", default=None, metavar="FILE", help="face-model file (default: the one in the asset home)")
    a.add_argument(
        "--crop",
        choices=("gt", "detector"),
        default="gt",
        help="gt: the standard, comparable protocol (default); detector: the realistic variant (needs the edge runtime)",
    )
    a.set_defaults(func=cmd_aflw2000)

    m = sub.add_parser(
        "micc",
        help="MICC Florence dense reconstruction: RMSE (mm) after landmark + scaled ICP alignment",
        description="Folder layout:\n" + FOLDER_LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("--pred", required=True, metavar="DIR", help="predicted meshes: DIR/<setting>/<subject>.obj (+ .landmarks.txt)")
    m.add_argument("--gt", required=True, metavar="DIR", help="ground-truth scans: DIR/<subject>.obj|.ply (+ .landmarks.txt)")
    m.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    m.add_argument("--gt-unit", choices=sorted(UNITS), default="m", help="length unit of the ground-truth files (default m)")
    m.add_argument("--pred-unit", choices=sorted(UNITS), default="m", help="length unit of the predicted files (default m)")
    m.add_argument("--nose-index", type=int, default=30, help="row of the nose tip in the GT landmarks (default 30, iBUG-68)")
    m.add_argument("--radius-mm", type=float, default=MICC_RADIUS_M * MM_PER_M, help="crop radius (default 95)")
    m.add_argument("--icp-iterations", type=int, default=100, help="maximum ICP iterations (default 100)")
    m.set_defaults(func=cmd_micc)
