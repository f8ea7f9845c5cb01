"""``mlanet export``: deployment artifacts.

``mlanet export onnx --weights FILE|RUN_DIR --out FILE.onnx [--decoder FILE.onnx]
[--face-model FILE] [--opset 17] [--report JSON]`` exports a checkpoint to ONNX (with its
metadata), optionally the face decoder too, checks torch vs onnxruntime parity in vertex space
and prints the mean/max vertex difference in millimetres (written as JSON with ``--report``).
Without ``--weights`` it exits with status 2: no default weights are shipped yet.
"""

from __future__ import annotations

import argparse
import sys


def cmd_onnx(args: argparse.Namespace) -> int:
    if args.weights is None:
        print("no default weights are shipped yet; pass --weights FILE|RUN_DIR", file=sys.stderr)
        return 2
    from ..checkpoint import resolve_weights
    from ..fileutil import write_json_atomic
    from ..models.registry import create_model
    from ..morphable.model import MorphableModel
    from .onnx_export import export_face_decoder_onnx, export_onnx, parity_report

    face_model = MorphableModel.load(args.face_model)
    model = create_model(checkpoint=resolve_weights(args.weights), face_model=face_model)
    out = export_onnx(model, face_model, args.out, opset=args.opset)
    print(f"wrote {out}")
    if args.decoder:
        dec = export_face_decoder_onnx(face_model, args.decoder, opset=args.opset)
        print(f"wrote {dec}")
    report = parity_report(model, face_model, out)
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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="deployment artifacts: ONNX (+ face decoder) with parity check")
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser(
        "onnx",
        help="export a checkpoint to ONNX and check parity in vertex space (mm)",
        description="Export a checkpoint to ONNX (dynamic batch, metadata inside) and compare with torch.",
    )
    o.add_argument("--weights", default=None, metavar="FILE|RUN_DIR", help="checkpoint (.safetensors) or training run folder")
    o.add_argument("--out", required=True, metavar="FILE.onnx", help="network ONNX to write")
    o.add_argument("--decoder", default=None, metavar="FILE.onnx", help="also export the face decoder (params -> vertices, landmarks)")
    o.add_argument("--face-model", default=None, metavar="FILE", help="face-model file (default: the one in the asset home)")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    o.add_argument("--report", default=None, metavar="JSON", help="write the parity report here")
    o.set_defaults(func=cmd_onnx)
