"""``mlanet models``: list the registered networks and describe one (parameters, MACs/FLOPs, layout)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: Basis sizes of the ICT-FaceKit default face model, used when no face-model file is available.
ICT_SIZES = {"identity": 100, "expression": 55, "albedo": 10}


def _layout_from_header(header: dict[str, Any]):  # type: ignore[no-untyped-def]
    from mlanet.params import ParamLayout

    counts = header.get("counts") or {}
    if all(k in counts for k in ICT_SIZES):
        return ParamLayout(**{k: int(counts[k]) for k in ICT_SIZES})
    return None


def resolve_layout(face_model: str | None) -> tuple[Any, str]:
    """(ParamLayout, where it came from): ``face_model`` file, else the default model, else ICT sizes."""
    from mlanet.errors import FaceModelNotFoundError
    from mlanet.morphable.data import read_header
    from mlanet.morphable.model import load_face_model_data
    from mlanet.params import ParamLayout
    from mlanet.paths import default_face_model_path

    if face_model is not None:
        if not Path(face_model).expanduser().is_file():
            raise FaceModelNotFoundError(f"{face_model}: no such face-model file")
        face_model = str(Path(face_model).expanduser())
        layout = _layout_from_header(read_header(face_model))  # cheap: the header has the counts
        if layout is None:
            layout = ParamLayout.for_face_model(load_face_model_data(face_model))
        return layout, f"face model {face_model}"
    path = default_face_model_path()
    try:
        if not path.is_file():
            raise FaceModelNotFoundError(str(path))
        layout = _layout_from_header(read_header(path)) or ParamLayout.for_face_model(load_face_model_data(None))
        return layout, f"default face model {path}"
    except FaceModelNotFoundError:
        sizes = ", ".join(f"{k} {v}" for k, v in ICT_SIZES.items())
        return ParamLayout(**ICT_SIZES), f"ICT-FaceKit sizes ({sizes}); no face model at {path}"


def cmd_list(args: argparse.Namespace) -> int:
    from mlanet.models.flops import count_flops, format_count
    from mlanet.models.registry import MODELS, create_model, list_models

    from mlanet.preprocess import PreprocessCfg

    layout, source = resolve_layout(args.face_model)
    try:
        preprocess = PreprocessCfg(input_size=args.input_size) if args.input_size else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# layout: {source} (P = {layout.total})")
    width = max(len(n) for n in list_models())
    for name in list_models():
        if preprocess is not None:
            model_preprocess, size_source = preprocess, "--input-size"
        else:
            model_preprocess, size_source = input_preprocess(name)
        model = create_model(name, layout=layout, preprocess=model_preprocess)
        f = count_flops(model)
        print(
            f"{name:<{width}}  {format_count(f['parameters']):>6} params  {f['gmacs']:6.3f} GMACs @ "
            f"{model.input_size} px ({size_source})  {MODELS[name][1]}"
        )
    return 0


def input_preprocess(name: str) -> tuple[Any, str]:
    """``(PreprocessCfg, where it came from)`` of a model as it runs: its shipped weights' preprocessing
    (their input size, e.g. 128 px) where this install ships weights for it, else the registry's default
    (:func:`mlanet.models.registry.registered_preprocess`)."""
    from mlanet.models.registry import registered_preprocess

    return registered_preprocess(name)


def cmd_info(args: argparse.Namespace) -> int:
    from mlanet.config import apply_overrides
    from mlanet.preprocess import PreprocessCfg
    from mlanet.models.flops import count_flops
    from mlanet.models.registry import MODELS, create_model, list_models

    if args.name not in MODELS:
        print(f"error: unknown model {args.name!r}; known models: {', '.join(list_models())}", file=sys.stderr)
        return 2
    config = apply_overrides(MODELS[args.name][0], args.set or [])  # unknown fields: ConfigError with a suggestion
    layout, source = resolve_layout(args.face_model)
    try:
        if args.input_size:
            preprocess, size_source = PreprocessCfg(input_size=args.input_size), "--input-size"
        else:
            preprocess, size_source = input_preprocess(args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = create_model(args.name, layout=layout, preprocess=preprocess, **config.to_dict())
    desc = model.describe()
    flops = count_flops(model)
    out = {
        "name": args.name,
        "description": MODELS[args.name][1],
        "config": desc["config"],
        "input_shape": desc["input_shape"],
        "input_size_source": size_source,
        "output_size": desc["output_size"],
        "layout": desc["layout"],
        "layout_source": source,
        "parameters": flops["parameters"],
        "macs": flops["macs"],
        "gmacs": round(flops["gmacs"], 4),
        "flops": flops["flops"],
        "gflops": round(flops["gflops"], 4),
        "macs_by_part": flops["by_part"],
        "macs_by_type": flops["by_type"],
        "backbone": desc["backbone"],
        "feature_channels": desc["feature_channels"],
        "coordinate_attention_modules": desc["coordinate_attention_modules"],
        "fusion_modules": desc["fusion_modules"],
        "preprocess": desc["preprocess"],
    }
    print(json.dumps(out, indent=2))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list and describe the registered networks")
    sub = p.add_subparsers(dest="models_cmd", required=True)

    def face_model(q: argparse.ArgumentParser) -> None:
        q.add_argument("--face-model", help="face-model file that sets the layout (default: the default model, "
                                            "else ICT-FaceKit sizes)")

    ls = sub.add_parser("list", help="one line per model: name, parameters, GMACs at its input size, description")
    ls.add_argument("--input-size", type=int, help="count MACs at this input size S instead of each model's own (its "
                    "shipped weights' input size where this install has them, else PreprocessCfg's)")
    face_model(ls)
    ls.set_defaults(func=cmd_list)

    i = sub.add_parser("info", help="JSON: config, parameters, MACs/FLOPs, output size and layout of one model")
    i.add_argument("name", help="registered model name (see `mlanet models list`)")
    i.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set block_attention=false --set fusion=false")
    i.add_argument("--input-size", type=int, help="input size S (default: the shipped weights' where this install "
                   "has them, else PreprocessCfg's)")
    face_model(i)
    i.set_defaults(func=cmd_info)
