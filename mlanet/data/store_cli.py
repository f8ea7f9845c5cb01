"""``mlanet data prepare``: build the training store (:mod:`mlanet.data.store`) from the sources.

::

    mlanet data prepare --source aflw-crops=../shared/data/train/aflw-crops \\
        --source 300w=../shared/data/train/300w --source mtfl=../shared/data/train/mtfl \\
        --out runs/store128 --input-size 128

A progress bar goes to stderr; Ctrl-C stops after saving the finished shards (exit 130) and
the same command resumes. Bad input (an unknown source, a missing folder, an AFLW2000-3D
image, a store folder prepared with other settings) prints one line and exits 2.

Hook-up: :func:`add_prepare_parser` adds ``prepare`` to the sub-parsers of the ``data`` group
(:mod:`mlanet.data.cli` calls it); :func:`main` runs ``prepare`` stand-alone.
"""

from __future__ import annotations

import argparse
import sys

from mlanet.errors import MLANetError


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run ``mlanet data prepare``; returns the exit status."""
    from mlanet.fileutil import check_writable_dir
    from mlanet.data.cli import parse_source_spec
    from mlanet.data.sources import list_sources, open_source
    from mlanet.data.store import prepare_store

    if not args.source:
        raise MLANetError(f"give at least one --source NAME=PATH (sources: {', '.join(list_sources())})")
    if args.input_size < 16:
        raise MLANetError(f"--input-size must be >= 16, got {args.input_size}")
    if not args.margin >= 1.0:
        raise MLANetError(f"--margin must be >= 1, got {args.margin}")
    if args.limit is not None and args.limit < 1:
        raise MLANetError(f"--limit must be >= 1, got {args.limit}")
    if args.shard_size < 1:
        raise MLANetError(f"--shard-size must be >= 1, got {args.shard_size}")
    specs = [parse_source_spec(s) for s in args.source]
    names = [n for n, _ in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise MLANetError(f"--source {dup[0]} given twice (one folder per source name)")
    out = check_writable_dir(args.out, "--out")
    if args.every < 1:
        raise MLANetError(f"--every {args.every}: must be >= 1")
    readers = [open_source(name, path, **({"every": args.every} if name == "video-folder" else {}))
               for name, path in specs]
    extras = None
    if args.labels or args.fits:
        from mlanet.data.fits import LabelFitExtras

        if not args.labels:
            raise MLANetError("--fits needs --labels (fits are matched through the label entries)")
        from mlanet.data.cli import _face_model

        # fits are used only where they were made for this face model's geometry
        extras = LabelFitExtras(args.labels, args.fits, face_model=_face_model(args.face_model) if args.fits else None)
    try:
        report = prepare_store(readers, out, input_size=args.input_size, margin=args.margin, limit=args.limit,
                               shard_size=args.shard_size, progress=not args.quiet, extras=extras,
                               box_fallback=extras.face_box if extras is not None else None)
    except KeyboardInterrupt:
        print(f"interrupted; finished shards are kept in {out}: run the same command again to resume",
              file=sys.stderr)
        return 130
    m = report.manifest
    state = "already complete" if report.already_complete else (
        f"{report.shards_written} shard(s) written, {report.shards_skipped} resumed" if report.resumed
        else f"{report.shards_written} shard(s) written")
    print(f"{out}: {m['n']} crops {m['size']}x{m['size']} ({m['n_ok']} ok) for input {m['input_size']}; {state}; "
          f"{report.seconds:.1f} s; content {m['content_sha256'][:16]}")
    for s in m["sources"]:
        print(f"  {s['name']}: {s['written']} written, {s['failed']} failed, {s['no_box']} without landmarks, "
              f"{s['excluded_aflw2000']} AFLW2000-3D dropped by the reader; terms: {s['terms']}")
    return 0


def add_prepare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``prepare`` to the sub-parsers ``sub`` of the ``data`` command group."""
    from mlanet.data.store import DEFAULT_MARGIN, DEFAULT_SHARD_SIZE

    p = sub.add_parser("prepare", help="decode the training sources once into a store of fixed-size uint8 crops "
                                       "with their labels (resumable)")
    p.add_argument("--source", action="append", metavar="NAME=PATH",
                   help="a training source and its folder, e.g. 300w=../shared/data/train/300w (repeatable)")
    p.add_argument("--out", required=True, help="the store folder (an unfinished store there is resumed)")
    p.add_argument("--input-size", type=int, default=128, help="network input side in pixels (default 128)")
    p.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                   help=f"store crop side / input side: room for augmentation (default {DEFAULT_MARGIN})")
    p.add_argument("--limit", type=int, help="only the first N faces of each source (quick stores)")
    p.add_argument("--every", type=int, default=5, metavar="K",
                   help="video-folder: every K-th frame (default 5; the label cache must hold them)")
    p.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"rows per shard, the unit of resumption (default {DEFAULT_SHARD_SIZE})")
    p.add_argument("--labels", default=None, metavar="DIR",
                   help="label cache (mlanet data label): adds teacher68, pose, mp468 per sample")
    p.add_argument("--fits", default=None, metavar="DIR",
                   help="fit cache (mlanet data fit): adds fit_params and fit_ok per sample (needs --labels); only "
                        "fits made for the face model's geometry are used")
    p.add_argument("--face-model", default=None, metavar="FILE",
                   help="face model the fits must match (default: the installed one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_prepare)
    return p


def _parse_pairs(specs: list[str] | None, flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for spec in specs or []:
        name, sep, values = spec.partition("=")
        if not sep or not name or not values:
            raise MLANetError(f"{flag} {spec!r}: expected NAME=VALUE[,VALUE...]")
        out.setdefault(name, []).extend(v for v in values.split(",") if v)
    return out


def cmd_pack(args: argparse.Namespace) -> int:
    """Run ``mlanet data pack``; returns the exit status."""
    from mlanet.data.store import Store
    from mlanet.data.store_pack import pack_store, select_rows

    if args.input_size is not None and args.input_size < 16:
        raise MLANetError(f"--input-size must be >= 16, got {args.input_size}")
    if not 1 <= args.quality <= 100:
        raise MLANetError(f"--quality must be 1..100, got {args.quality}")
    store = Store(args.store)
    require = {src: extras[-1] for src, extras in _parse_pairs(args.require, "--require").items()}
    rows = select_rows(store, args.source or (), require)
    extra_sources = _parse_pairs(args.extra_sources, "--extra-sources")
    for extra in args.drop_extras or ():
        if extra in extra_sources:
            raise MLANetError(f"--drop-extras {extra} and --extra-sources {extra}=...: give one of them")
        extra_sources[extra] = []  # kept on the rows of no source: absent everywhere
    try:
        m = pack_store(store, args.out, rows=rows, input_size=args.input_size, quality=args.quality,
                       extra_sources=extra_sources,
                       half_extras=args.half_extras or (), progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"interrupted; {args.out} not written", file=sys.stderr)
        return 130
    print(f"{args.out}: {m['n']} faces {m['size']}x{m['size']} for input {m['input_size']}; "
          + ", ".join(f"{s['name']} {s['written']}" for s in m["sources"]))
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    """Run ``mlanet data unpack``; returns the exit status."""
    from mlanet.data.store_pack import unpack_store

    st = unpack_store(args.packed, args.out, progress=not args.quiet)
    print(f"{args.out}: {st!r}; content {st.manifest['content_sha256'][:16]}")
    return 0


def add_pack_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``pack`` and ``unpack`` (:mod:`mlanet.data.store_pack`) to the ``data`` sub-parsers."""
    from mlanet.data.store_pack import DEFAULT_QUALITY

    p = sub.add_parser("pack", help="pack a store into one small file (WebP crops at the network's size) to move it "
                                    "to another machine")
    p.add_argument("store", help="a finished store folder (mlanet data prepare)")
    p.add_argument("--out", required=True, help="packed file to write (.npz)")
    p.add_argument("--input-size", type=int, default=None,
                   help="network input side of the packed store (default the store's; the margin is kept)")
    p.add_argument("--quality", type=int, default=DEFAULT_QUALITY, help=f"WebP quality (default {DEFAULT_QUALITY})")
    p.add_argument("--source", action="append", metavar="NAME", help="only rows of these sources (repeatable)")
    p.add_argument("--require", action="append", metavar="SOURCE=EXTRA",
                   help="rows of SOURCE only where they have EXTRA, e.g. mtfl=fit_params (repeatable)")
    p.add_argument("--extra-sources", action="append", metavar="EXTRA=SRC[,SRC]",
                   help="keep EXTRA only on rows of these sources, e.g. mp468=300w (saves space; repeatable)")
    p.add_argument("--drop-extras", action="append", metavar="EXTRA",
                   help="leave EXTRA out of every row, e.g. mp468 of a large store that must fit a transfer limit "
                   "(repeatable)")
    p.add_argument("--half-extras", action="append", metavar="EXTRA",
                   help="store this float extra as float16, e.g. fit_params (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress")
    p.set_defaults(func=cmd_pack)
    u = sub.add_parser("unpack", help="decode a packed store (mlanet data pack) into a store folder")
    u.add_argument("packed", help="the packed file")
    u.add_argument("--out", required=True, help="a new store folder")
    u.add_argument("--quiet", action="store_true", help="no progress")
    u.set_defaults(func=cmd_unpack)
