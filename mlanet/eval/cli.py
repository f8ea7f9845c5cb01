"""``mlanet eval``: benchmark a checkpoint on 2D landmarks, video stability or dense reconstruction.

``mlanet eval aflw2000 --data DIR --json OUT [--model NAME] [--weights FILE | --untrained NAME]
[--list NAME_OR_FILE] [--exclude-list NAME_OR_FILE] [--ced PNG] [--batch N] [--face-model FILE]``
runs the standard AFLW2000-3D protocol (``shared/PROTOCOLS.md``) on any folder of
``<name>.jpg`` + ``<name>.mat`` pairs (or only the stems of an image list, recorded with its
SHA-256), writes the result JSON and the CED plot (default: next to the JSON,
``<stem>_ced.png``) and prints a short table. Without ``--weights`` it uses the shipped default
weights of ``--model`` (an install without them says so and exits with status 2).

``mlanet eval landmarks68 --data DIR_OR_FILE [--data ...] --json OUT [same model options]``:
68-point NME on in-the-wild photos annotated in dlib imglab XML or iBUG ``.pts``, with the
same ground-truth crops and prediction path (:mod:`mlanet.eval.landmarks68`).

``mlanet eval jitter`` and ``mlanet eval expressions`` evaluate the video runtime, so they live with it
(:mod:`mlanet.edge.evaluation`: the core never imports the runtime); :mod:`mlanet.cli` adds them to this
group.

The 2D benchmarks score one landmark definition of the face model (``--landmarks``; default
``aflw2000_68`` for AFLW2000-3D, ``ibug68`` for ``landmarks68``, ``ict68`` where the face model
lacks them). ``mlanet eval floor --data DIR --json OUT [--definition NAME ...]`` fits the face
model directly to AFLW2000-3D's ground truth and scores each definition (:mod:`mlanet.eval.floor`).

``mlanet eval micc --pred DIR --gt DIR --json OUT`` evaluates predicted meshes against
ground-truth scans laid out as in :data:`mlanet.eval.micc.FOLDER_LAYOUT`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mlanet.fileutil import check_writable_file, file_sha256, write_json_atomic

#: Model whose shipped weights are used when neither --model nor --weights is given.
DEFAULT_MODEL = "mlanet_mobile"


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _progress(done: int, total: int, *_: Any) -> None:
    if sys.stderr.isatty():
        print(f"\r  {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)


def _resolve_weights(args: argparse.Namespace) -> Path | None:
    """The checkpoint to evaluate: ``--weights`` (file or run folder), else the shipped default of
    ``--model``; None with ``--untrained``. Raises :class:`MLANetError` when none is shipped."""
    from mlanet.errors import MLANetError

    if getattr(args, "untrained", None):
        return None
    if args.weights is not None:
        from mlanet.checkpoint import resolve_weights

        return resolve_weights(args.weights)
    from mlanet import weights as shipped

    model_name = args.model or DEFAULT_MODEL
    weights = shipped.default_weights_path(model_name)
    if weights is None:
        raise MLANetError(
            f"this install has no shipped weights for {model_name} (mlanet/weights/); "
            "pass --weights FILE (or --untrained MODEL to exercise the benchmark with an untrained network)"
        )
    return weights


def _load_predictor(args: argparse.Namespace, weights: Path | None) -> tuple[Any, Any, Any, dict, dict]:
    """``(predict_fn, preprocess, face_model, model descriptor, weights descriptor)`` for the 2D benchmarks."""
    from mlanet.morphable.model import MorphableModel
    from mlanet.eval.predict import (check_network_choice, load_network, make_landmark_predictor,
                                     resolve_eval_definition)

    check_network_choice(weights, args.untrained)
    face_model = MorphableModel.load(args.face_model)
    model = load_network(face_model, weights, args.model, untrained=args.untrained, seed=0)
    if getattr(args, "mirror_average", False):
        from mlanet.eval.predict import MirrorAveragedNetwork

        model = MirrorAveragedNetwork(model, face_model)
    if weights is None:  # --untrained
        weights_desc: dict[str, Any] = {"untrained": True, "model": args.untrained, "seed": 0}
    else:
        weights_desc = {"path": str(weights), "sha256": file_sha256(weights), "shipped_default": args.weights is None}
    definition = resolve_eval_definition(face_model, getattr(args, "landmarks", None),
                                         getattr(args, "preferred_landmarks", "ict68"),
                                         warn=lambda m: print(f"warning: {m}", file=sys.stderr))
    predictor = make_landmark_predictor(model, face_model, definition=definition)
    model_desc = model.describe() if hasattr(model, "describe") else {"name": getattr(model, "name", args.model)}
    model_desc = {**model_desc, "landmark_definition": definition,
                  "mirror_average": bool(getattr(args, "mirror_average", False))}
    return predictor, model.preprocess, face_model, model_desc, weights_desc


def _write_ced(curves: dict[str, Any], path: Path, title: str, references: dict[str, float] | None = None) -> Path | None:
    """The CED plot, or None (with a warning) when matplotlib is missing."""
    from mlanet.eval.metrics import MissingExtraError, plot_ced

    try:
        return plot_ced(curves, path, references=references, title=title)
    except MissingExtraError as exc:
        print(f"warning: CED plot skipped: {exc}", file=sys.stderr)
        return None


def _ced_path(args: argparse.Namespace, json_path: Path) -> Path:
    return Path(args.ced).expanduser() if args.ced else json_path.with_name(json_path.stem + "_ced.png")


def _check_batch(args: argparse.Namespace) -> None:
    from mlanet.errors import MLANetError

    if args.batch < 1:
        raise MLANetError(f"--batch must be >= 1, got {args.batch}")


def _check_outputs(args: argparse.Namespace) -> None:
    """``--json`` (and ``--ced``) must be writable files: checked before any work."""
    check_writable_file(args.json, "--json")
    if getattr(args, "ced", None):
        check_writable_file(args.ced, "--ced")


def cmd_aflw2000(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.eval.aflw2000 import REFERENCES, AFLW2000Eval, NameList

    _check_batch(args)
    _check_outputs(args)
    if args.crop == "detector":
        raise MLANetError(
            "--crop detector (the realistic variant) needs the project's face detector, which arrives with the edge "
            "runtime; use --crop gt (the standard, comparable protocol)"
        )
    weights = _resolve_weights(args)
    include = NameList.load(args.list) if args.list else None
    exclude = NameList.load(args.exclude_list) if args.exclude_list else None
    # fails early, naming the folder or the missing listed images, before any model is loaded
    bench = AFLW2000Eval(args.data, include=include, exclude=exclude)
    predictor, preprocess, face_model, model_desc, weights_desc = _load_predictor(args, weights)
    result = bench.evaluate(
        predictor,
        preprocess,
        batch_size=args.batch,
        crop=args.crop,
        progress=_progress,
        model=model_desc,
        weights=weights_desc,
    )
    result["face_model"] = face_model.describe()

    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    name = str(model_desc.get("name", args.model or DEFAULT_MODEL))
    ced_path = _write_ced(
        {name: [r["nme"] / 100.0 for r in result["images"]]},
        _ced_path(args, json_path),
        references={f"{k} (published, mean of bins)": v for k, v in REFERENCES["published_mean_of_bins"].items()},
        title=f"AFLW2000-3D CED, {result['n']} images ({'ground-truth crops' if args.crop == 'gt' else 'detector crops'})",
    )

    b = result["nme_bins"]
    n = result["n_bins"]
    print(f"AFLW2000-3D, {result['n']} images from {bench.folder}, model {name}, crop {args.crop}")
    for key, flag in (("list", "--list"), ("exclude_list", "--exclude-list")):
        listed = bench.selection[key]
        if listed is not None:
            print(f"  {flag} {listed['spec']} ({listed['n_names']} names, sha256 {listed['sha256'][:12]}...)")
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


def cmd_landmarks68(args: argparse.Namespace) -> int:
    from mlanet.eval.landmarks68 import Landmarks68Eval

    _check_batch(args)
    _check_outputs(args)
    weights = _resolve_weights(args)
    bench = Landmarks68Eval(args.data)  # fails early, naming the bad input, before any model is loaded
    predictor, preprocess, face_model, model_desc, weights_desc = _load_predictor(args, weights)
    result = bench.evaluate(predictor, preprocess, batch_size=args.batch, progress=_progress,
                            model=model_desc, weights=weights_desc)
    result["face_model"] = face_model.describe()
    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    name = str(model_desc.get("name", args.model or DEFAULT_MODEL))
    ced_path = _write_ced(
        {name: [r["nme"] / 100.0 for r in result["faces"]]},
        _ced_path(args, json_path),
        title=f"68-point alignment, {result['n']} in-the-wild faces (ground-truth crops)",
    )
    data = result["data"]
    print(f"68-point 2D alignment (ground-truth crops, detector-free), {result['n']} faces in {data['n_images']} images "
          f"from {len(data['sources'])} annotation file(s), model {name}")
    print(f"  NME (%)  mean {_fmt(result['nme_mean'])} | median {_fmt(result['nme_median'])} | "
          f"AUC@7% {_fmt(result['auc_7'], 3)} | failure rate (NME > 10%) {100 * result['failure_rate_10']:.1f}%")
    for src, s in result["by_annotation"].items():
        print(f"  {Path(src).name:<40} {s['n']:>4} faces  mean {_fmt(s['nme_mean'])}  median {_fmt(s['nme_median'])}")
    skipped = result["skipped"]["counts"]
    print("  skipped: " + (", ".join(f"{k} {v}" for k, v in skipped.items()) if skipped else "none"))
    print(f"json: {json_path}")
    if ced_path is not None:
        print(f"ced:  {ced_path}")
    return 0


def cmd_micc(args: argparse.Namespace) -> int:
    from mlanet.eval.micc import MM_PER_M, evaluate_micc_folders

    _check_outputs(args)
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


def _add_2d_arguments(a: argparse.ArgumentParser) -> None:
    """Output and model options shared by the 2D landmark benchmarks."""
    a.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    a.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help=f"registered model name (default: the checkpoint's own; {DEFAULT_MODEL} for shipped weights)",
    )
    w = a.add_mutually_exclusive_group()
    w.add_argument("--weights", default=None, metavar="FILE",
                   help="checkpoint (.safetensors) or a training run folder (uses its last.json); default: shipped weights")
    w.add_argument("--untrained", default=None, metavar="MODEL",
                   help="an untrained network (e.g. mlanet_mobile, seed 0) to exercise the benchmark; numbers are meaningless")
    a.add_argument("--ced", default=None, metavar="PNG", help="CED plot (default: <json stem>_ced.png next to the JSON)")
    a.add_argument("--batch", type=int, default=16, metavar="N", help="images per forward pass (default 16)")
    a.add_argument("--face-model", default=None, metavar="FILE", help="face-model file (default: the one in the asset home)")
    a.add_argument("--mirror-average", action="store_true",
                   help="score the network as the runtime's --mirror-average runs it: expression and pose averaged "
                   "with those of the crop's left-right mirror image (two passes per face)")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    from mlanet.eval.aflw2000 import LANDMARK_DEFINITION as AFLW2000_DEFINITION
    from mlanet.eval.micc import FOLDER_LAYOUT, MICC_RADIUS_M, MM_PER_M, UNITS

    p = subparsers.add_parser(
        "eval", help="benchmarks: AFLW2000-3D and in-the-wild 68-point NME, video landmark jitter and expression tracking, "
        "MICC Florence dense RMSE"
    )
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
    _add_2d_arguments(a)
    a.add_argument(
        "--list",
        default=None,
        metavar="NAME_OR_FILE",
        help="evaluate only the image stems of this list: a named list (aflw2000_dev_heldout, aflw2000_dev_train) "
        "or a file with one stem per line; recorded with its SHA-256 in the result",
    )
    a.add_argument("--exclude-list", default=None, metavar="NAME_OR_FILE", help="leave out the image stems of this list")
    a.add_argument(
        "--crop",
        choices=("gt", "detector"),
        default="gt",
        help="gt: the standard, comparable protocol (default); detector: the realistic variant (needs the edge runtime)",
    )
    a.add_argument("--landmarks", default="auto", metavar="NAME",
                   help="face-model landmark definition scored: auto (default: aflw2000_68, AFLW2000-3D's own points, "
                        "ict68 for a face model without it), or e.g. ict68 (the model's iBUG-68 vertices, as before)")
    a.set_defaults(func=cmd_aflw2000, preferred_landmarks=AFLW2000_DEFINITION)

    lm = sub.add_parser(
        "landmarks68",
        help="68-point 2D NME on in-the-wild photos (dlib imglab XML, iBUG .pts), ground-truth crops",
        description=(
            "Detector-free protocol mirroring AFLW2000-3D: ground-truth crops (roi_scale * max(w, h), zero padded), NME "
            "normalised by sqrt(w*h) of the ground-truth 68-point box; mean, median, AUC@7%%, failure rate (NME > 10%%), "
            "CED, per-face records. --data takes folders (every *.xml and *.pts in them) or annotation files."
        ),
    )
    lm.add_argument("--data", required=True, action="append", metavar="DIR_OR_FILE",
                    help="dlib imglab .xml, iBUG .pts (image of the same stem next to it) or a folder of them; repeatable")
    _add_2d_arguments(lm)
    lm.add_argument("--landmarks", default="auto", metavar="NAME",
                    help="face-model landmark definition scored: auto (default: ibug68, 300-W's points with the jaw on the "
                         "silhouette; ict68 for a face model without it) or any other 68-point definition")
    lm.set_defaults(func=cmd_landmarks68, preferred_landmarks="ibug68")

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

    from mlanet.eval.floor import add_floor_parser

    add_floor_parser(sub)
    return sub
