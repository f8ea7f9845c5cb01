"""``mlanet assets``: build, fetch and inspect face-model files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

from mlanet.paths import DEFAULT_FACE_MODEL_NAME, default_face_model_path, face_model_dir
from mlanet.morphable.sources import ict_topology as topo

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
    from mlanet.fileutil import check_writable_dir, check_writable_file

    if args.output:
        return check_writable_file(args.output, "--output")
    if args.out:
        return check_writable_dir(args.out, "--out") / default_name
    return check_writable_dir(face_model_dir(), "the asset home (MLANET_HOME)") / default_name


def _ict_file_name(crop: str) -> str:
    return DEFAULT_FACE_MODEL_NAME if crop == topo.DEFAULT_CROP else f"ict_{crop}.mlface.npz"


def _resolve_mediapipe(args: argparse.Namespace) -> Path | None:
    from mlanet.errors import AssetError

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
    from mlanet.errors import AssetError
    from mlanet.morphable.sources.ict import build_ict_face_model

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
    from mlanet.morphable.sources.bfm import load_bfm_front_mat

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
    from mlanet.morphable.fetch import ICT_ARCHIVE_URL, fetch_ict

    _output_path(args, _ict_file_name(args.crop))  # refuse an unwritable output before the download
    archive = fetch_ict(args.url or ICT_ARCHIVE_URL, timeout=args.timeout, progress=_say)
    _say(f"verified {archive}")
    _build_ict(archive, args)
    return 0


def _albedo_command(args: argparse.Namespace, specs: list[tuple[str, Path]], face_model: str) -> str:
    """The ``mlanet assets albedo`` command that rebuilds this file: every option explicit, paths absolute."""
    import shlex

    parts = ["mlanet", "assets", "albedo"]
    for name, path in specs:
        parts += ["--source", f"{name}={Path(path).expanduser().resolve()}"]
    if args.labels:
        parts += ["--labels", str(Path(args.labels).expanduser().resolve())]
    if any(n == "video-folder" for n, _ in specs):
        parts += ["--every", str(args.every)]
    parts += ["--max-faces", str(args.max_faces) if args.max_faces else "0"]
    parts += ["--face-model", face_model, "--out", str(Path(args.out).expanduser().resolve()), "--id", args.id,
              "--dtype", args.dtype, "--max-residual-px", f"{args.max_residual_px:g}"]
    return " ".join(shlex.quote(p) for p in parts)


def cmd_albedo(args: argparse.Namespace) -> int:
    from mlanet.data.cli import parse_source_spec
    from mlanet.data.sources import ExclusionGuard, check_training_list
    from mlanet.errors import AssetError, MLANetError
    from mlanet.fileutil import check_writable_file
    from mlanet.paths import default_face_model_path
    from mlanet.preprocess import PreprocessCfg
    from mlanet.morphable.albedo.fit import FitSettings, build_albedo_model
    from mlanet.morphable.albedo.sources import ALBEDO_SOURCES, load_faces, open_albedo_sources, select_faces, source_entry
    from mlanet.morphable.model import load_face_model_data

    if args.aflw is not None or args.list is not None:
        raise AssetError(
            f"{'--aflw' if args.aflw is not None else '--list'}: the albedo is no longer built from AFLW2000-3D "
            "(validation only); build it from training data: --source 300w=DIR [--source video-folder=DIR "
            "--labels DIR]"
        )
    if not args.source:
        raise MLANetError(f"give at least one --source NAME=PATH (albedo sources: {', '.join(ALBEDO_SOURCES)})")
    if args.max_faces is not None and args.max_faces < 0:
        raise MLANetError(f"--max-faces {args.max_faces}: must be >= 2 (0: no cap)")
    if args.max_faces is not None and 0 < args.max_faces < 2:
        raise MLANetError(f"--max-faces {args.max_faces}: the PCA needs at least 2 faces")
    specs = [parse_source_spec(s) for s in args.source]
    check_writable_file(args.out, "--out")
    t0 = time.perf_counter()
    face_path = Path(args.face_model).expanduser().resolve() if args.face_model else default_face_model_path()
    face = load_face_model_data(args.face_model)
    guard = ExclusionGuard.default()
    sources = open_albedo_sources(specs, labels=args.labels, every=args.every, guard=guard, progress=_say)
    picks = select_faces([len(s.samples) for s in sources], args.max_faces or None)
    keys = [[src.samples[int(i)].key for i in idx] for src, idx in zip(sources, picks)]
    paths = [str(src.samples[int(i)].image_path) for src, idx in zip(sources, picks) for i in idx]
    check_training_list([k for ks in keys for k in ks] + paths, guard, what="the albedo's faces")
    fit = FitSettings(max_residual_px=args.max_residual_px)
    roi = PreprocessCfg(input_size=fit.input_size).roi_scale
    samples = []
    for src, idx in zip(sources, picks):
        _say(f"{src.name}: decoding {len(idx)} of {len(src.samples)} faces")
        samples += load_faces(src, idx, roi, progress=_say)
    t_load = time.perf_counter() - t0
    entries = [source_entry(src, ks, []) for src, ks in zip(sources, keys)]
    try:
        build = build_albedo_model(face, samples, entries, albedo_id=args.id, fit=fit, progress=_say)
    except ValueError as exc:  # too few faces, or too few fitted within --max-residual-px
        raise AssetError(f"cannot build the albedo: {exc}") from None
    h = build.model.header
    h["sources"] = [source_entry(src, ks, build.rejected) for src, ks in zip(sources, keys)]
    h["command"] = _albedo_command(args, specs, str(face_path))
    h["max_faces"] = args.max_faces or None
    h["seconds"] = {"read": round(t_load, 1), "total": round(time.perf_counter() - t0, 1)}
    out = build.model.save(Path(args.out).expanduser(), dtype=args.dtype)
    used = ", ".join(f"{e['name']} {e['counts']['used']}/{e['counts']['selected']}" for e in h["sources"])
    print(
        f"wrote albedo model {h['id']} to {out}\n"
        f"  faces used (of selected) per source: {used}; rejected {h['images']['rejected']} "
        f"(> {args.max_residual_px} px); median fit residual {h['fit']['residual_median_px']:.2f} px; "
        f"{build.model.n_components} components explain {h['explained_variance_total']:.1%}; "
        f"terms: {h['terms']}; built in {time.perf_counter() - t0:.0f} s"
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from mlanet.morphable.model import load_face_model_data

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
    from mlanet.fileutil import check_writable_file
    from mlanet.morphable.model import load_face_model_data
    from mlanet.morphable.preview import render_preview

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

    from mlanet.morphable.albedo.sources import DEFAULT_EVERY, DEFAULT_MAX_FACES

    a = sub.add_parser("albedo", help="build a data-driven albedo model file from training faces (300-W, video frames)")
    a.add_argument("--source", action="append", metavar="NAME=PATH",
                   help="a training source and its folder: 300w=DIR (manual 68 points) or video-folder=DIR "
                        "(frames, teacher 68 points from --labels); repeatable. aflw-crops and mtfl are too "
                        "small; AFLW2000-3D is refused (validation only)")
    a.add_argument("--labels", metavar="DIR", help="label cache from `mlanet data label` (68 points for video frames)")
    a.add_argument("--every", type=int, default=DEFAULT_EVERY, metavar="K",
                   help="video-folder: every K-th frame (default: %(default)s; the label cache must hold them)")
    a.add_argument("--max-faces", type=int, default=DEFAULT_MAX_FACES, metavar="N",
                   help="at most N faces, shared among the sources in proportion to their faces, evenly spaced "
                        "within each (default: %(default)s; 0: all)")
    a.add_argument("--aflw", help=argparse.SUPPRESS)  # removed: an error that says why
    a.add_argument("--list", help=argparse.SUPPRESS)
    a.add_argument("--face-model", help="face model to build on (default: the default model)")
    a.add_argument("--out", required=True, help="albedo file to write (.npz)")
    a.add_argument("--id", default="mlanet-albedo-ict-v2", help="albedo model id (default: %(default)s)")
    a.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="array dtype in the file")
    a.add_argument("--max-residual-px", type=float, default=6.0,
                   help="reject faces whose mean landmark fit residual (224 px crop) exceeds this")
    a.set_defaults(func=cmd_albedo)

    from mlanet.morphable.landmarks.cli import add_landmarks_parser

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
