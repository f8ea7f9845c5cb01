"""``mlanet weights``: list the shipped weights, show their release block, pack new ones, rebind old ones."""

from __future__ import annotations

import argparse
import json


def cmd_list(args: argparse.Namespace) -> int:
    from ..checkpoint import read_meta
    from . import MODEL_CARD, SHIPPED, default_weights_path

    for name in SHIPPED:
        path = default_weights_path(name)
        if path is None:
            print(f"{name}: not shipped in this install")
            continue
        meta = read_meta(path)
        rel = meta.extra.get("release", {})
        print(f"{name}: {path} ({path.stat().st_size / 2**20:.1f} MiB, {rel.get('dtype', '?')}, "
              f"{meta.preprocess.input_size} px input, face model {meta.face_model.get('model_id')}, "
              f"{'decoder signature' if meta.face_model.get('decoder') else 'no decoder signature'}, "
              f"{'tensor checksum' if meta.tensors_sha256 else 'no tensor checksum'})")
        if rel.get("notice"):
            print(f"  {rel['notice']}")
    print(f"model card: {MODEL_CARD}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..checkpoint import read_meta, resolve_weights
    from ..errors import MLANetError
    from . import default_weights_path

    path = default_weights_path(args.weights) or resolve_weights(args.weights)
    if not path.is_file():
        raise MLANetError(f"{args.weights}: neither a shipped model name nor a weights file")
    meta = read_meta(path)
    rel = dict(meta.extra.get("release") or {})
    for st in rel.get("stages", []):
        st.pop("config_yaml", None)  # long; see the run's config.yaml or the committed configs
    print(json.dumps({"file": str(path), "model": meta.model_name, "input_size": meta.preprocess.input_size,
                      "face_model": meta.face_model, "release": rel or None}, indent=2))
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from .pack import pack_weights

    out = pack_weights(args.weights, args.out, stages=args.stage)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_rebind(args: argparse.Namespace) -> int:
    from .pack import rebind_weights

    out = rebind_weights(args.weights, args.face_model, args.out or args.weights)
    print(f"wrote {out}: bound to the decoder of {args.face_model}, tensor checksum recorded")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("weights", help="shipped default weights: list, info, pack")
    sub = p.add_subparsers(dest="weights_cmd", required=True)
    ls = sub.add_parser("list", help="the shipped weights of each network")
    ls.set_defaults(func=cmd_list)
    info = sub.add_parser("info", help="metadata and release block of shipped weights or a checkpoint")
    info.add_argument("weights", help="a network name (mlanet_mobile) or a weights file / run folder")
    info.set_defaults(func=cmd_info)
    pk = sub.add_parser("pack", help="convert a training checkpoint to FP16 shipped weights with a release block")
    pk.add_argument("--weights", required=True, metavar="FILE|RUN_DIR", help="the final checkpoint or its run folder")
    pk.add_argument("--out", required=True, metavar="FILE", help="the .safetensors to write")
    pk.add_argument("--stage", action="append", metavar="RUN_DIR", help="training run folders in order (repeatable)")
    pk.set_defaults(func=cmd_pack)
    rb = sub.add_parser("rebind", help="upgrade a checkpoint from before decoder signatures, given the face-model "
                        "file it was made with (its checksum must match)")
    rb.add_argument("weights", metavar="FILE", help="the .safetensors checkpoint")
    rb.add_argument("--face-model", required=True, metavar="FILE", help="the face-model file it was trained with")
    rb.add_argument("--out", metavar="FILE", help="where to write (default: replace the checkpoint, atomically)")
    rb.set_defaults(func=cmd_rebind)
