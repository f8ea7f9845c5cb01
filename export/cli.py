"""``mlanet export``: deployment artifacts.

``mlanet export onnx --weights FILE|RUN_DIR --out FILE.onnx [--decoder FILE.onnx]
[--face-model FILE] [--opset 17] [--report JSON]`` exports a checkpoint to ONNX (with its
metadata), optionally the face decoder too, checks torch vs onnxruntime parity in vertex space
and prints the mean/max vertex difference in millimetres (written as JSON with ``--report``).
Without ``--weights`` it exports the shipped weights of ``--model`` (default ``mlanet_mobile``).

``mlanet export tensorrt --onnx FILE.onnx --out FILE.engine [--max-batch 32] [--opt-batch 1]
[--no-fp16] [--workspace-mib 1024] [--timing-cache FILE] [--parity [--face-model FILE]
[--report JSON]]`` builds a TensorRT 10 engine from an ONNX written by ``mlanet export onnx``
(two steps on purpose: the ONNX export checks torch parity on any machine; the engine is
built on the machine, or at least the same GPU model and TensorRT version, that will run it).
The engine file carries the ONNX metadata in its header (see ``mlanet.export.engine_file``).
``--parity`` then compares the engine with ONNX Runtime in vertex space (mm). Without TensorRT
it exits with status 2 and the install instructions (docs/tensorrt.md).
"""

from __future__ import annotations

import argparse
import sys


def _check_outputs(args: argparse.Namespace, *options: str) -> None:
    """The output files of these options must be writable: checked before any work."""
    from mlanet.fileutil import check_writable_file

    for option in options:
        value = getattr(args, option.lstrip("-").replace("-", "_"))
        if value:
            check_writable_file(value, option)


def cmd_onnx(args: argparse.Namespace) -> int:
    from mlanet.checkpoint import resolve_weights
    from mlanet.weights import default_weights_path

    _check_outputs(args, "--out", "--decoder", "--report")

    if args.weights is None:
        shipped = default_weights_path(args.model)
        if shipped is None:
            print(f"this install has no shipped {args.model} weights; pass --weights FILE|RUN_DIR", file=sys.stderr)
            return 2
        print(f"exporting the shipped {args.model} weights {shipped}", file=sys.stderr)
        args.weights = str(shipped)
    from mlanet.fileutil import write_json_atomic
    from mlanet.models.registry import create_model
    from mlanet.morphable.model import MorphableModel
    from mlanet.export.onnx_export import export_face_decoder_onnx, export_onnx, parity_report

    face_model = MorphableModel.load(args.face_model)
    model = create_model(checkpoint=resolve_weights(args.weights), face_model=face_model)
    out = export_onnx(model, face_model, args.out, opset=args.opset)
    print(f"wrote {out}")
    if args.decoder:
        dec = export_face_decoder_onnx(face_model, args.decoder, opset=args.opset)
        print(f"wrote {dec}")
    report = parity_report(resolve_weights(args.weights), face_model, out)  # both opened by the backend registry
    v, lm = report["vertex_mm"], report["landmark_mm"]
    print(
        f"parity torch vs onnxruntime (batch {', '.join(map(str, report['batch_sizes']))}): "
        f"vertices mean {v['mean']:.3g} mm, max {v['max']:.3g} mm; "
        f"landmarks max {lm['max']:.3g} mm; params max |diff| {report['param_max_abs']:.3g}"
    )
    if args.report:
        if args.decoder:
            report["decoder"] = str(args.decoder)
        write_json_atomic(args.report, report)
        print(f"wrote {args.report}")
    return 0


def cmd_tensorrt(args: argparse.Namespace) -> int:
    from mlanet.export.tensorrt_engine import build_engine

    if args.opt_batch > args.max_batch:
        print(f"--opt-batch ({args.opt_batch}) must be <= --max-batch ({args.max_batch})", file=sys.stderr)
        return 2
    if args.report and not args.parity:
        print("--report needs --parity", file=sys.stderr)
        return 2
    _check_outputs(args, "--out", "--report", "--timing-cache")
    out = build_engine(
        args.onnx,
        args.out,
        fp16=not args.no_fp16,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        workspace_mib=args.workspace_mib,
        timing_cache_path=args.timing_cache,
    )
    print(f"wrote {out}")
    if args.parity:
        from mlanet.fileutil import write_json_atomic
        from mlanet.morphable.model import MorphableModel
        from mlanet.export.tensorrt_engine import engine_parity_report

        report = engine_parity_report(out, args.onnx, MorphableModel.load(args.face_model))
        v, lm = report["vertex_mm"], report["landmark_mm"]
        print(
            f"parity TensorRT {report['precision']} vs onnxruntime (batch {', '.join(map(str, report['batch_sizes']))}): "
            f"vertices mean {v['mean']:.3g} mm, max {v['max']:.3g} mm; landmarks max {lm['max']:.3g} mm; "
            f"params max |diff| {report['param_max_abs']:.3g}"
        )
        if args.report:
            write_json_atomic(args.report, report)
            print(f"wrote {args.report}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="deployment artifacts: ONNX (+ face decoder), TensorRT engines; parity checks")
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser(
        "onnx",
        help="export a checkpoint to ONNX and check parity in vertex space (mm)",
        description="Export a checkpoint to ONNX (dynamic batch, metadata inside) and compare with torch.",
    )
    o.add_argument("--weights", default=None, metavar="FILE|RUN_DIR",
                   help="checkpoint (.safetensors) or training run folder (default: the shipped weights of --model)")
    o.add_argument("--model", default="mlanet_mobile", choices=["mlanet_mobile", "mlanet_r50"],
                   help="which shipped weights to export when --weights is not given (default mlanet_mobile)")
    o.add_argument("--out", required=True, metavar="FILE.onnx", help="network ONNX to write")
    o.add_argument("--decoder", default=None, metavar="FILE.onnx", help="also export the face decoder (params -> vertices, landmarks)")
    o.add_argument("--face-model", default=None, metavar="FILE", help="face-model file (default: the one in the asset home)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    o.add_argument("--report", default=None, metavar="JSON", help="write the parity report here")
    o.set_defaults(func=cmd_onnx)

    t = sub.add_parser(
        "tensorrt",
        help="build a TensorRT 10 engine (FP16, dynamic batch) from an exported ONNX",
        description=(
            "Build a TensorRT 10 engine from an ONNX written by `mlanet export onnx`. The engine file carries the "
            "ONNX metadata (layout, preprocessing, face model) and the TensorRT version/GPU it was built for; "
            "engines only run with the same TensorRT version on the same GPU architecture. See docs/tensorrt.md."
        ),
    )
    t.add_argument("--onnx", required=True, metavar="FILE.onnx", help="network ONNX from `mlanet export onnx`")
    t.add_argument("--out", required=True, metavar="FILE.engine", help="engine file to write (.engine or .plan)")
    t.add_argument("--max-batch", type=_positive_int, default=32, help="largest batch (faces per call) the engine accepts (default 32)")
    t.add_argument("--opt-batch", type=_positive_int, default=1, help="batch size TensorRT tunes for (default 1: live video, one face)")
    t.add_argument("--no-fp16", action="store_true", help="build FP32 (TF32 off) instead of FP16")
    t.add_argument("--workspace-mib", type=_positive_int, default=1024, help="builder workspace limit in MiB (default 1024)")
    t.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache to load (if present) and save")
    t.add_argument("--parity", action="store_true", help="compare the engine with onnxruntime in vertex space (mm)")
    t.add_argument("--face-model", default=None, metavar="FILE", help="face model for --parity (default: the one in the asset home)")
    t.add_argument("--report", default=None, metavar="JSON", help="write the --parity report here")
    t.set_defaults(func=cmd_tensorrt)
