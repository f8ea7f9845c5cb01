"""``mlanet assets``: build, fetch and inspect face-model files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from ..paths import DEFAULT_FACE_MODEL_NAME, default_face_model_path, face_model_dir
from . import ict_topology as topo

MEDIAPIPE_OBJ_NAME = "canonical_face_model.obj"


def _say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def find_mediapipe_canonical() -> Path | None:
    """MediaPipe's canonical mesh from ``$MLANET_SHARED`` or an installed mediapipe package (not imported)."""
    shared = os.environ.get("MLANET_SHARED")
    candidates = []
    if shared:
        candidates.append(Path(shared) / "assets" / "mediapipe-canonical" / MEDIAPIPE_OBJ_NAME)
    spec = importlib.util.find_spec("mediapipe")
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.append(Path(root) / "modules" / "face_geometry" / "data" / MEDIAPIPE_OBJ_NAME)
    return next((p for p in candidates if p.is_file()), None)


def _output_path(args: argparse.Namespace, default_name: str) -> Path:
    """Where the face-model file goes; refused (MLANetError naming the option) when it cannot be written."""
    from ..fileutil import check_writable_dir, check_writable_file

    if args.output:
        return check_writable_file(args.output, "--output")
    if args.out:
        return check_writable_dir(args.out, "--out") / default_name
    return check_writable_dir(face_model_dir(), "the asset home (MLANET_HOME)") / default_name


def _ict_file_name(crop: str) -> str:
    return DEFAULT_FACE_MODEL_NAME if crop == topo.DEFAULT_CROP else f"ict_{crop}.mlface.npz"


def _resolve_mediapipe(args: argparse.Namespace) -> Path | None:
    from ..errors import AssetError

    if args.no_mediapipe:
        return None
    if args.mediapipe:
        return Path(args.mediapipe).expanduser()
    found = find_mediapipe_canonical()
    if found is None:
        raise AssetError(
            f"MediaPipe's {MEDIAPIPE_OBJ_NAME} was not found (looked in $MLANET_SHARED/assets/mediapipe-canonical/ "
            "and in an installed mediapipe package); pass --mediapipe /path/to/canonical_face_model.obj, "
            "or --no-mediapipe to build without the 468-point correspondence"
        )
    return found


def _build_ict(source: Path | str, args: argparse.Namespace) -> Path:
    from ..errors import AssetError
    from .ict import build_ict_face_model

    if not Path(source).expanduser().exists():
        raise AssetError(f"{source}: no such file or folder (expected ICT-FaceKit's FaceXModel/ folder or archive)")
    out = _output_path(args, _ict_file_name(args.crop))  # checked before the build
    t0 = time.perf_counter()
    data = build_ict_face_model(
        source, crop=args.crop, mediapipe_obj=_resolve_mediapipe(args), progress=_say, albedo=getattr(args, "albedo", None),
        definitions=getattr(args, "landmarks", None),
    )
    out = data.save(out)
    _report(out, data, time.perf_counter() - t0)
    return out


def _report(out: Path, data, seconds: float) -> None:  # type: ignore[no-untyped-def]
    mp = data.header.get("mediapipe")
    mp_note = ""
    if mp:
        s = mp["stats"].get("final", {})
        mp_note = f", MediaPipe residual median {s.get('median_mm', float('nan')):.2f} mm"
    print(
        f"wrote face model {data.model_id} to {out}\n"
        f"  {data.n_vertices} vertices, {len(data.triangles)} triangles, {data.n_identity} identity, "
        f"{data.n_expression} expression, {data.n_albedo} albedo modes{mp_note}; built in {seconds:.1f} s"
    )
    if out != default_face_model_path() and out.name == DEFAULT_FACE_MODEL_NAME:
        print(f"  (commands look for the default model at {default_face_model_path()}; set MLANET_HOME to use another home)")


def cmd_build(args: argparse.Namespace) -> int:
    from .bfm import load_bfm_front_mat

    if bool(args.ict) == bool(args.bfm):
        print("error: give exactly one of --ict PATH or --bfm PATH", file=sys.stderr)
        return 2
    if args.ict:
        _build_ict(args.ict, args)
        return 0
    out = _output_path(args, "bfm09_front.mlface.npz")
    t0 = time.perf_counter()
    data = load_bfm_front_mat(args.bfm, units=args.units)
    out = data.save(out)
    _report(out, data, time.perf_counter() - t0)
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    from .fetch import ICT_ARCHIVE_URL, fetch_ict

    _output_path(args, _ict_file_name(args.crop))  # refuse an unwritable output before the download
    archive = fetch_ict(args.url or ICT_ARCHIVE_URL, timeout=args.timeout, progress=_say)
    _say(f"verified {archive}")
    _build_ict(archive, args)
    return 0


def cmd_albedo(args: argparse.Namespace) -> int:
    from .albedo_fit import FitSettings, build_albedo_model
    from .albedo_sources import AFLW_TERMS, aflw_samples
    from ..fileutil import check_writable_file
    from .model import load_face_model_data

    check_writable_file(args.out, "--out")
    t0 = time.perf_counter()
    face = load_face_model_data(args.face_model)
    root = Path(args.aflw).expanduser()
    _say(f"reading AFLW2000-3D images of list {args.list} from {root}")
    samples = aflw_samples(root, args.list)
    sources = [{
        "name": "AFLW2000-3D (dev subset, training half)",
        "path": str(root),
        "list": str(args.list),
        "images": [s.name for s in samples],
        "landmarks": "pt3d_68 ground truth (x, y)",
        "terms": AFLW_TERMS,
    }]
    build = build_albedo_model(
        face, samples, sources, albedo_id=args.id,
        fit=FitSettings(max_residual_px=args.max_residual_px), progress=_say,
    )
    out = build.model.save(Path(args.out).expanduser(), dtype=args.dtype)
    h = build.model.header
    print(
        f"wrote albedo model {h['id']} to {out}\n"
        f"  images used {h['images']['used']}, rejected {h['images']['rejected']} (> {args.max_residual_px} px); "
        f"median fit residual {h['fit']['residual_median_px']:.2f} px; "
        f"{build.model.n_components} components explain {h['explained_variance_total']:.1%}; "
        f"terms: {h['terms']}; built in {time.perf_counter() - t0:.0f} s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .model import load_face_model_data

    data = load_face_model_data(args.path)
    h = data.header
    summary = {
        "model_id": h["model_id"],
        "name": h.get("name"),
        "counts": h.get("counts"),
        "crop": h.get("crop"),
        "albedo_model": h.get("albedo_model", {}).get("id"),
        "albedo_terms": h.get("albedo_model", {}).get("terms"),
        "terms": h.get("terms"),
        "mediapipe": (h.get("mediapipe") or {}).get("stats", {}).get("final"),
        "landmark_definitions": sorted(h.get("landmark_definitions") or {}),
        "landmark_file": (h.get("landmark_file") or {}).get("id"),
        "source": {k: v for k, v in h.get("source", {}).items() if k != "license"},
        "content_sha256": h.get("content_sha256"),
        "format_version": h.get("format_version"),
    }
    print(json.dumps(summary, indent=2))
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from ..fileutil import check_writable_file
    from .model import load_face_model_data
    from .preview import render_preview

    check_writable_file(args.out, "--out")
    data = load_face_model_data(args.path)
    expression = {}
    for item in args.expression or []:
        name, _, weight = item.partition("=")
        if name not in data.expression_names:
            print(f"error: unknown expression {name!r}; known: {', '.join(data.expression_names)}", file=sys.stderr)
            return 2
        expression[name] = float(weight or 1.0)
    out = render_preview(data, args.out, size=args.size, expression=expression, yaw_deg=args.yaw)
    print(f"wrote {out}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("assets", help="build, fetch and inspect face-model files")
    sub = p.add_subparsers(dest="assets_cmd", required=True)

    def outputs(q: argparse.ArgumentParser) -> None:
        q.add_argument("--out", help=f"output folder (default: {face_model_dir()})")
        q.add_argument("--output", help="output file (overrides --out)")

    def ict_options(q: argparse.ArgumentParser) -> None:
        q.add_argument("--crop", default=topo.DEFAULT_CROP, choices=sorted(topo.CROP_PRESETS),
                       help="face region to keep (default: %(default)s)")
        q.add_argument("--mediapipe", help=f"MediaPipe {MEDIAPIPE_OBJ_NAME} for the 468-point correspondence")
        q.add_argument("--no-mediapipe", action="store_true", help="build without the MediaPipe correspondence")
        q.add_argument("--albedo", default="auto", metavar="auto|regional|FILE",
                       help="albedo model to embed: 'auto' (default: the shipped data-driven model for the 'face' "
                            "crop, research use only; the regional default elsewhere, with a notice), 'regional' "
                            "(hand-made, MIT, no image data) or an albedo file from `mlanet assets albedo`")
        q.add_argument("--landmarks", default="auto", metavar="auto|none|FILE",
                       help="fitted landmark definitions to embed (ibug68, aflw2000_68, aflw21, mtfl5): 'auto' (default: "
                            "the shipped file for the 'face' crop, research use only; none elsewhere, with a notice), "
                            "'none', or a file from `mlanet assets landmarks`")

    b = sub.add_parser("build", help="build a face-model file from ICT-FaceKit (default) or the Basel Face Model")
    b.add_argument("--ict", help="ICT-FaceKit FaceXModel/ folder, or its .tar.xz/.tar.gz/.zip archive")
    b.add_argument("--bfm", help="Basel Face Model 2009 in Deep3DFaceRecon's BFM_model_front.mat layout")
    b.add_argument("--units", default="dm", choices=["dm", "mm", "m", "um"], help="units of the --bfm file")
    ict_options(b)
    outputs(b)
    b.set_defaults(func=cmd_build)

    f = sub.add_parser("fetch", help="download the pinned ICT-FaceKit release (needs internet), verify, build")
    f.add_argument("--url", help="archive URL (default: the pinned GitHub archive)")
    f.add_argument("--timeout", type=float, default=15.0, help="network timeout in seconds")
    ict_options(f)
    outputs(f)
    f.set_defaults(func=cmd_fetch)

    a = sub.add_parser("albedo", help="build a data-driven albedo model file from face photos (AFLW2000-3D)")
    a.add_argument("--aflw", required=True, help="AFLW2000-3D folder (imageXXXXX.jpg + .mat)")
    a.add_argument("--list", default="aflw2000_dev_train",
                   help="image list (a file or a named list; default: %(default)s; never the held-out list)")
    a.add_argument("--face-model", help="face model to build on (default: the default model)")
    a.add_argument("--out", required=True, help="albedo file to write (.npz)")
    a.add_argument("--id", default="mlanet-albedo-ict-v1", help="albedo model id (default: %(default)s)")
    a.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="array dtype in the file")
    a.add_argument("--max-residual-px", type=float, default=6.0,
                   help="reject images whose mean landmark fit residual (224 px crop) exceeds this")
    a.set_defaults(func=cmd_albedo)

    from .landmark_cli import add_landmarks_parser

    add_landmarks_parser(sub)

    i = sub.add_parser("info", help="print a face-model file's header summary")
    i.add_argument("path", nargs="?", help="face-model file (default: the default model)")
    i.set_defaults(func=cmd_info)

    v = sub.add_parser("preview", help="write a check image: regions, 68 landmarks, MediaPipe points")
    v.add_argument("path", nargs="?", help="face-model file (default: the default model)")
    v.add_argument("--out", required=True, help="PNG file to write")
    v.add_argument("--size", type=int, default=768, help="image size in pixels")
    v.add_argument("--yaw", type=float, default=0.0, help="turn the head by this many degrees")
    v.add_argument("--expression", action="append", metavar="NAME=W", help="expression weight, e.g. jawOpen=1")
    v.set_defaults(func=cmd_preview)
