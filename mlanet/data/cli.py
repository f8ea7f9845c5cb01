"""``mlanet data``: derived labels for the training sources.

``mlanet data label --source NAME=PATH [--source ...] --cache DIR [--limit N]``
    Teacher 68 points + pose and MediaPipe 468 points for every face of each source, cached
    under ``DIR`` (:mod:`mlanet.data.labels`); faces already cached are skipped, so a run
    stopped with Ctrl-C resumes where it stopped (the shard in flight is discarded).
    Source names: ``aflw-crops``, ``300w``, ``mtfl``, ``video-folder`` (``--every K``: every
    K-th frame, default 5).

``mlanet data label-report --cache DIR --json OUT [--markdown OUT.md]``
    Label quality against the manual points (:func:`mlanet.data.labels.label_quality`).

``mlanet data prepare --source NAME=PATH [--source ...] --out DIR [--input-size 128] [--limit N]``
    The training store: every face decoded once into fixed-size uint8 crops with its labels
    (:mod:`mlanet.data.store`, command in :mod:`mlanet.data.store_cli`); resumable after Ctrl-C.

Bad input (a malformed ``--source``, an unknown source, a missing folder, an unwritable
cache, a missing teacher folder) ends with one line and status 2 before any labelling.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

#: Where the teacher's files are looked for when ``--teacher`` is not given (under a shared folder).
TEACHER_SUBDIR = Path("models/3ddfa_v2_mb05")


def parse_source_spec(spec: str) -> tuple[str, Path]:
    """``"NAME=PATH"`` -> (name, path); MLANetError for anything else."""
    from mlanet.errors import MLANetError

    name, sep, path = spec.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise MLANetError(f"--source {spec!r}: expected NAME=PATH (e.g. 300w=../shared/data/train/300w)")
    return name.strip(), Path(path.strip()).expanduser()


def find_teacher_dir() -> Path | None:
    """``models/3ddfa_v2_mb05`` under ``$MLANET_SHARED``, ``../shared``, ``./shared`` or the checkout's ``../shared``."""
    from mlanet.paths import SHARED_ENV_VAR

    roots = [os.environ.get(SHARED_ENV_VAR), Path.cwd() / ".." / "shared", Path.cwd() / "shared",
             Path(__file__).resolve().parents[2] / ".." / "shared"]
    for root in roots:
        if root and (Path(root) / TEACHER_SUBDIR).is_dir():
            return (Path(root) / TEACHER_SUBDIR).resolve()
    return None


def cmd_label(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.fileutil import check_writable_dir
    from mlanet.data.sources import open_source

    specs = [parse_source_spec(s) for s in args.source]
    names = [n for n, _ in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MLANetError(f"--source {dup[0]} given twice (one folder per source name and run)")
    if args.limit is not None and args.limit < 1:
        raise MLANetError(f"--limit {args.limit}: must be >= 1")
    if args.every < 1:
        raise MLANetError(f"--every {args.every}: must be >= 1")
    if args.shard_size < 1:
        raise MLANetError(f"--shard-size {args.shard_size}: must be >= 1")
    cache_dir = check_writable_dir(args.cache, "--cache")
    teacher_dir = Path(args.teacher).expanduser() if args.teacher else find_teacher_dir()
    if teacher_dir is None:
        raise MLANetError(f"--teacher not given and no {TEACHER_SUBDIR} found under $MLANET_SHARED or ../shared")
    readers = []
    for name, path in specs:
        options = {"every": args.every} if name == "video-folder" else {}
        readers.append(open_source(name, path, **options))

    from mlanet.teacher import load_tddfa_mb05
    from mlanet.data.labels import LabelCache, TeacherMediaPipeLabeller, label_source

    teacher = load_tddfa_mb05(teacher_dir)
    try:
        labeller = TeacherMediaPipeLabeller(teacher, refine_mesh=args.mediapipe_refine)
    except ImportError as exc:
        raise MLANetError(str(exc)) from None
    cache = LabelCache(cache_dir)
    try:
        for reader in readers:
            stats = label_source(reader, cache, labeller, limit=args.limit, shard_size=args.shard_size,
                                 progress=not args.no_progress)
            c = stats.counts
            st = dict(c.get("status", {}))
            labelled = st.pop("labelled", 0)
            not_found = sum(st.values())
            print(f"{stats.source}: {stats.samples} faces, {labelled} labelled, {not_found} not labelled"
                  f"{' (' + ', '.join(f'{k} {v}' for k, v in st.items()) + ')' if st else ''}, "
                  f"MediaPipe found {c.get('mediapipe', {}).get('found', 0)}; "
                  f"{stats.computed} computed ({1000 * stats.seconds_per_face:.1f} ms/face), {stats.hits} cached")
    finally:
        labeller.close()
        for reader in readers:
            close = getattr(reader, "close", None)
            if close is not None:
                close()
    print(f"labels in {cache_dir}")
    return 0


def cmd_label_report(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.fileutil import check_writable_file, write_json_atomic, write_text_atomic
    from mlanet.data.labels import LabelCache, label_quality, markdown_table

    cache = LabelCache(args.cache)
    if not cache.root.is_dir():
        raise MLANetError(f"--cache {args.cache}: no such folder")
    if not cache.sources():
        raise MLANetError(f"--cache {args.cache}: holds no labelled source (run `mlanet data label` first)")
    json_path = check_writable_file(args.json, "--json")
    md_path = check_writable_file(args.markdown, "--markdown") if args.markdown else None
    report = label_quality(cache, args.only or None)
    write_json_atomic(json_path, report, allow_nan=False)
    print(f"wrote {json_path}")
    if md_path is not None:
        write_text_atomic(md_path, markdown_table(report))
        print(f"wrote {md_path}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.fileutil import check_writable_dir
    from mlanet.data.fits import FitCache, fit_source
    from mlanet.data.labels import LabelCache

    if args.limit is not None and args.limit < 1:
        raise MLANetError(f"--limit {args.limit}: must be >= 1")
    labels = LabelCache(args.labels)
    available = labels.sources()
    if not available:
        raise MLANetError(f"--labels {args.labels}: holds no labelled source (run `mlanet data label` first)")
    unknown = [s for s in (args.source or []) if s not in available]
    if unknown:
        raise MLANetError(f"--source {unknown[0]}: not in the label cache (has: {', '.join(available)})")
    out = check_writable_dir(args.out, "--out")
    model = _face_model(args.face_model)
    cache = FitCache(out)
    for src in args.source or available:
        stats = fit_source(labels.load(src), model, cache, limit=args.limit, stratify=args.stratify,
                           shard_size=args.shard_size, progress=not args.no_progress)
        print(f"{src}: {stats.candidates} faces, {stats.hits} cached, {stats.fitted} fitted, {stats.skipped} skipped; "
              f"{stats.faces_per_second:.2f} faces/s")
    print(f"fits in {out}")
    return 0


def _face_model(path: str | None):
    from mlanet.morphable.model import MorphableModel, load_face_model_data

    return MorphableModel(load_face_model_data(path))


def cmd_fit_report(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.fileutil import check_writable_file, write_json_atomic, write_text_atomic
    from mlanet.data.fits import FitCache, fit_model_keys, fit_report, report_markdown

    cache = FitCache(args.fits)
    if not cache.sources():
        raise MLANetError(f"--fits {args.fits}: holds no fits (run `mlanet data fit` first)")
    json_path = check_writable_file(args.json, "--json")
    rep = fit_report(cache, model_keys=fit_model_keys(_face_model(args.face_model)))
    write_json_atomic(json_path, rep, allow_nan=False)
    md = Path(json_path).with_suffix(".md")
    write_text_atomic(md, report_markdown(rep))
    print(f"wrote {json_path} and {md}")
    return 0


def cmd_eye_report(args: argparse.Namespace) -> int:
    from mlanet.errors import MLANetError
    from mlanet.fileutil import check_writable_file, write_json_atomic, write_text_atomic
    from mlanet.data.eye_aperture import eye_report, report_markdown
    from mlanet.data.fits import FitCache
    from mlanet.data.labels import LabelCache

    labels = LabelCache(args.labels)
    if not labels.sources():
        raise MLANetError(f"--labels {args.labels}: holds no labelled source (run `mlanet data label` first)")
    fits = None
    if args.fits is not None:
        fits = FitCache(args.fits)
        if not fits.sources():
            raise MLANetError(f"--fits {args.fits}: holds no fits (run `mlanet data fit` first)")
    json_path = check_writable_file(args.json, "--json")
    from mlanet.run_environment import environment

    rep = {**eye_report(labels, _face_model(args.face_model), fits, max_yaw_deg=args.max_yaw),
           "environment": environment()}  # device, versions, commit and command, as every record
    write_json_atomic(json_path, rep, allow_nan=False)
    md = Path(json_path).with_suffix(".md")
    write_text_atomic(md, report_markdown(rep))
    print(f"wrote {json_path} and {md}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="training data: derived labels (teacher 68 + pose, MediaPipe 468)")
    sub = p.add_subparsers(dest="data_cmd", required=True)
    lb = sub.add_parser("label", help="label every face of the sources (cached, resumable)")
    lb.add_argument("--source", required=True, action="append", metavar="NAME=PATH",
                    help="a training source: aflw-crops, 300w, mtfl or video-folder, and its folder (repeatable)")
    lb.add_argument("--cache", required=True, metavar="DIR", help="label cache folder (created if needed)")
    lb.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N faces of each source")
    lb.add_argument("--every", type=int, default=5, metavar="K", help="video-folder: every K-th frame (default 5)")
    lb.add_argument("--mediapipe-refine", action="store_true",
                    help="MediaPipe's attention mesh (refine_landmarks): lids that close on a closed eye; another "
                         "labeller id, so use a cache of its own")
    lb.add_argument("--teacher", default=None, metavar="DIR",
                    help="3DDFA_V2 MobileNet x0.5 folder (default: models/3ddfa_v2_mb05 under $MLANET_SHARED or "
                         "../shared)")
    lb.add_argument("--shard-size", type=int, default=512, metavar="N",
                    help="faces per cache shard (work lost on Ctrl-C is at most one shard; default 512)")
    lb.add_argument("--no-progress", action="store_true", help="no progress bar")
    lb.set_defaults(func=cmd_label)
    rp = sub.add_parser("label-report", help="label quality against the manual points")
    rp.add_argument("--cache", required=True, metavar="DIR", help="label cache folder")
    rp.add_argument("--json", required=True, metavar="OUT", help="report JSON to write")
    rp.add_argument("--markdown", default=None, metavar="OUT", help="also write a markdown table")
    rp.add_argument("--only", action="append", metavar="SOURCE", help="only these sources (repeatable)")
    rp.set_defaults(func=cmd_label_report)
    ft = sub.add_parser("fit", help="robust face-model fits (pose, identity, expression) to every labelled face's "
                                    "landmarks (cached, resumable; mlanet.data.fits)")
    ft.add_argument("--labels", required=True, metavar="CACHE", help="label cache folder (mlanet data label)")
    ft.add_argument("--out", required=True, metavar="FITCACHE", help="fit cache folder (created if needed)")
    ft.add_argument("--source", action="append", metavar="NAME", help="only these sources (repeatable; default all)")
    ft.add_argument("--limit", type=int, default=None, metavar="N", help="only N faces of each source")
    ft.add_argument("--stratify", action="store_true", help="with --limit: N faces spread evenly over the source")
    ft.add_argument("--face-model", default=None, metavar="FILE", help="face model file (default: the installed one)")
    ft.add_argument("--shard-size", type=int, default=192, metavar="N", help="faces per shard (default 192)")
    ft.add_argument("--no-progress", action="store_true", help="no progress bar")
    ft.set_defaults(func=cmd_fit)
    fr = sub.add_parser("fit-report", help="fit residual per source and the spread of jawOpen / eyeBlink")
    fr.add_argument("--fits", required=True, metavar="DIR", help="fit cache folder")
    fr.add_argument("--json", required=True, metavar="OUT", help="report JSON to write (a .md is written next to it)")
    fr.add_argument("--face-model", default=None, metavar="FILE",
                    help="report the fits made for this face model's geometry (default: the installed one)")
    fr.set_defaults(func=cmd_fit_report)
    er = sub.add_parser("eye-report", help="eye aperture of the labels (manual, MediaPipe, teacher), the fits' eyeBlink "
                                           "and the face model's eyelids (mlanet.data.eye_aperture)")
    er.add_argument("--labels", required=True, metavar="DIR", help="label cache folder")
    er.add_argument("--fits", default=None, metavar="DIR", help="fit cache folder (adds the fitted eyeBlink)")
    er.add_argument("--json", required=True, metavar="FILE", help="report JSON (a .md beside it)")
    er.add_argument("--max-yaw", type=float, default=20.0, metavar="DEG",
                    help="label apertures on faces within this teacher yaw (default 20)")
    er.add_argument("--face-model", default=None, metavar="FILE",
                    help="face model file (default: the installed one)")
    er.set_defaults(func=cmd_eye_report)
    from mlanet.data.store_cli import add_pack_parsers, add_prepare_parser  # the training store (mlanet.data.store)

    add_prepare_parser(sub)
    add_pack_parsers(sub)
