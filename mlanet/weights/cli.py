"""``mlanet weights``: list the shipped weights, show their release block, pack new ones, rebind old ones.

``mlanet weights pack --weights RUN_DIR --name mlanet_mobile --out mlanet/weights/mlanet_mobile.safetensors``
packs the checkpoint the run's ``best.json`` names (chosen on the AFLW2000-3D dev images) as FP16, at most
10 MB, with a release block (:mod:`mlanet.weights.pack`). ``mlanet weights average CKPT CKPT ... --out FILE``
writes the mean of checkpoints of one run (:mod:`mlanet.weights.average`).
"""

from __future__ import annotations

import argparse
import json


def cmd_list(args: argparse.Namespace) -> int:
    from mlanet.checkpoint import read_meta
    from mlanet.weights import MODEL_CARD, NOT_SHIPPED, SHIPPED, default_weights_path

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
    for name, why in NOT_SHIPPED.items():
        print(f"{name}: {why}")
    print(f"model card: {MODEL_CARD}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mlanet.checkpoint import read_meta, resolve_weights
    from mlanet.errors import MLANetError
    from mlanet.weights import default_weights_path

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


def cmd_average(args: argparse.Namespace) -> int:
    from mlanet.fileutil import check_writable_file
    from mlanet.weights.average import average_checkpoints

    out = average_checkpoints(args.checkpoints, check_writable_file(args.out, "--out"))
    print(f"wrote the mean of {len(args.checkpoints)} checkpoints to {out}")
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    import sys

    from mlanet.checkpoint import read_meta
    from mlanet.weights.pack import pack_weights, release_info, unbuildable_albedo

    out = pack_weights(args.weights, args.out, stages=args.stage, name=args.name, stores=args.store,
                       stores_from=args.stores_from, reason=args.reason,
                       max_bytes=int(args.max_mb * 1e6) if args.max_mb > 0 else None)
    rel = release_info(out) or {}
    chosen, src = rel.get("chosen", {}), rel.get("packed_from", {})
    how, value = chosen.get("by"), chosen.get("value")
    if how == "best.json":
        how = f"best.json: step {chosen.get('step')}, {chosen.get('metric')} " + (
            f"{value:.2f}" if isinstance(value, (int, float)) else str(value))
    renamed = f", trained as {rel['trained_as']}" if rel.get("trained_as") else ""
    why = f"; {chosen['reason']}" if chosen.get("reason") else ""
    print(f"packed {src.get('file')} of run {src.get('run')} ({how}{why}) as {rel.get('model')}{renamed}")
    for st in rel.get("stages", []):
        if not st.get("finished"):
            print(f"warning: run {st['run']} has not finished ({st.get('stopped_by')}; {st.get('steps')} of "
                  f"{st.get('planned_steps', '?')} steps)", file=sys.stderr)
    if not rel.get("stores"):
        print("warning: no training store found (the run's data.store_dir / extra_store_dirs, or --store): the "
              "release block's data terms are the recipe's defaults, not the store manifests'", file=sys.stderr)
    albedo = unbuildable_albedo(read_meta(out).face_model)
    if albedo:
        print(f"warning: these weights were trained with a face model that embeds albedo model {albedo}, which this "
              "checkout no longer ships: a face model built now (`mlanet assets build`) has another albedo, and the "
              "weights will refuse it", file=sys.stderr)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {size / 1e6:.2f} MB)")
    return 0


def cmd_rebind(args: argparse.Namespace) -> int:
    from mlanet.weights.pack import rebind_weights

    out = rebind_weights(args.weights, args.face_model, args.out or args.weights)
    print(f"wrote {out}: bound to the decoder of {args.face_model}, tensor checksum recorded")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mlanet.weights import MAX_SHIPPED_BYTES

    p = subparsers.add_parser("weights", help="shipped default weights: list, info, pack, average")
    sub = p.add_subparsers(dest="weights_cmd", required=True)
    ls = sub.add_parser("list", help="the shipped weights of each network")
    ls.set_defaults(func=cmd_list)
    info = sub.add_parser("info", help="metadata and release block of shipped weights or a checkpoint")
    info.add_argument("weights", help="a network name (mlanet_mobile) or a weights file / run folder")
    info.set_defaults(func=cmd_info)
    pk = sub.add_parser("pack", help="convert a training checkpoint to FP16 shipped weights with a release block")
    pk.add_argument("--weights", required=True, metavar="RUN_DIR|FILE",
                    help="a training run folder (packs the checkpoint its best.json names, chosen on the dev images; "
                    "else its newest) or a checkpoint file")
    pk.add_argument("--out", required=True, metavar="FILE", help="the .safetensors to write")
    pk.add_argument("--name", default=None, metavar="MODEL",
                    help="the registered name to ship as (default: the checkpoint's, canonical: mlanet_mobile_lite "
                    "-> mlanet_mobile); its architecture must be exactly that name's")
    pk.add_argument("--stage", action="append", metavar="RUN_DIR",
                    help="training run folders in order (repeatable; default: the run the checkpoint comes from)")
    pk.add_argument("--store", action="append", metavar="DIR",
                    help="a training store (repeatable; default: data.store_dir and data.extra_store_dirs of the run's "
                    "config.yaml, those found)")
    pk.add_argument("--stores-from", default=None, metavar="FILE",
                    help="instead of --store: a weights file packed earlier whose release block recorded the training "
                    "stores (for packing where the stores are gone, e.g. a candidate packed at the end of its run)")
    pk.add_argument("--reason", default=None, metavar="TEXT",
                    help="why this checkpoint, when not the one best.json names (recorded in release.chosen.reason)")
    pk.add_argument("--max-mb", type=float, default=MAX_SHIPPED_BYTES / 1e6, metavar="MB",
                    help=f"refuse to write a bigger file (default {MAX_SHIPPED_BYTES / 1e6:g}; 0: no limit)")
    pk.set_defaults(func=cmd_pack)
    av = sub.add_parser("average", help="average the weights of checkpoints of one run (after-the-fact SWA)")
    av.add_argument("checkpoints", nargs="+", metavar="FILE", help="two or more .safetensors checkpoints of one run")
    av.add_argument("--out", required=True, metavar="FILE", help="the .safetensors to write")
    av.set_defaults(func=cmd_average)
    rb = sub.add_parser("rebind", help="upgrade a checkpoint from before decoder signatures, given the face-model "
                        "file it was made with (its checksum must match)")
    rb.add_argument("weights", metavar="FILE", help="the .safetensors checkpoint")
    rb.add_argument("--face-model", required=True, metavar="FILE", help="the face-model file it was trained with")
    rb.add_argument("--out", metavar="FILE", help="where to write (default: replace the checkpoint, atomically)")
    rb.set_defaults(func=cmd_rebind)
