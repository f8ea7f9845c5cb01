"""``mlanet assets landmarks``: fit the face model's landmark definitions from training data.

``mlanet assets landmarks --w300 DIR --teacher DIR [--aflw-crops DIR] [--mtfl DIR] --out FILE
[--face-model FILE] [--aflw-per-bin N] [--mtfl-faces N] [--seed S]`` runs
:func:`mlanet.morphable.landmarks.build.build_landmark_file` and writes a landmark-definitions
file (:mod:`mlanet.morphable.landmarks.file`) that ``mlanet assets build --landmarks FILE``
embeds. The shipped ``data/ict_face_landmarks_v1.npz`` was made with the defaults and
all three sources (``../shared/data/train/{300w,aflw-crops,mtfl}``, teacher
``../shared/models/3ddfa_v2_mb05``); AFLW2000-3D folders are refused by every reader.
"""

from __future__ import annotations

import argparse
import sys
import time

from mlanet.morphable.landmarks.build import EYELID_SOURCES


def _say(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def cmd_landmarks(args: argparse.Namespace) -> int:
    from mlanet.fileutil import check_writable_file
    from mlanet.teacher import load_tddfa_mb05
    from mlanet.morphable.landmarks.build import BuildSettings, build_landmark_file, prepare_aflw, prepare_mtfl, prepare_w300
    from mlanet.morphable.model import load_face_model_data

    out = check_writable_file(args.out, "--out")
    t0 = time.perf_counter()
    data = load_face_model_data(args.face_model)
    teacher = load_tddfa_mb05(args.teacher)
    _say(f"teacher {teacher.name} from {args.teacher}")
    w300 = prepare_w300(args.w300, teacher, progress=_say)
    aflw = prepare_aflw(args.aflw_crops, teacher, per_bin=args.aflw_per_bin, seed=args.seed, progress=_say) \
        if args.aflw_crops else None
    mtfl = prepare_mtfl(args.mtfl, teacher, n=args.mtfl_faces, seed=args.seed, progress=_say) if args.mtfl else None
    lf = build_landmark_file(data, w300, aflw, mtfl, BuildSettings(aflw2000_eyelids=args.aflw2000_eyelids), file_id=args.id,
                             teacher_info=teacher.describe(), progress=_say)
    lf.save(out)
    print(f"wrote landmark definitions {lf.id} to {out}: " + ", ".join(
        f"{n} ({d.n_points} points)" for n, d in sorted(lf.definitions.items())))
    print(f"  fitted on the face model {data.model_id}; terms: {lf.header['terms']}; {time.perf_counter() - t0:.0f} s")
    print(f"  embed with: mlanet assets build --ict ... --landmarks {out}")
    return 0


def add_landmarks_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "landmarks",
        help="fit landmark definitions (ibug68, aflw2000_68, aflw21, mtfl5) on training data",
        description=(
            "Fits the face model's landmark definitions on training faces (300-W manual 68 points, the 3DDFA_V2 "
            "teacher's 68 points, AFLW crops' 21 points, MTFL's 5) and writes a landmark-definitions file for "
            "`mlanet assets build --landmarks FILE`. Never reads AFLW2000-3D. Takes about 15 minutes on 2 CPU cores."
        ),
    )
    p.add_argument("--w300", required=True, metavar="DIR", help="300-W folder (image + .pts pairs)")
    p.add_argument("--teacher", required=True, metavar="DIR", help="3DDFA_V2 MobileNet x0.5 folder (npz files)")
    p.add_argument("--aflw-crops", default=None, metavar="DIR",
                   help="AFLW crops folder (annotations.npz + images/): fits aflw21 and refines aflw2000_68 over all poses")
    p.add_argument("--mtfl", default=None, metavar="DIR", help="MTFL folder (landmarks5.txt + images): fits mtfl5")
    p.add_argument("--out", required=True, metavar="FILE", help="landmark-definitions file to write (.npz)")
    p.add_argument("--face-model", default=None, metavar="FILE", help="face model to fit on (default: the default model)")
    p.add_argument("--aflw-per-bin", type=int, default=700, metavar="N",
                   help="AFLW crops sampled per |yaw| bin [0,30] (30,60] >60 (default %(default)s)")
    p.add_argument("--mtfl-faces", type=int, default=1500, metavar="N", help="MTFL faces sampled (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    p.add_argument("--id", default="mlanet-landmarks-ict-v1", help="file id (default %(default)s)")
    p.add_argument("--aflw2000-eyelids", choices=EYELID_SOURCES, default="teacher-fits",
                   help="where aflw2000_68's eyelid points come from: 'teacher-fits' (as the shipped v1 file) or "
                        "'manual' (the teacher's eyelids out of every fit; the points placed through the 300-W faces "
                        "fitted to their manual points, so the fits' eyeBlink follows drawn lids) (default %(default)s)")
    p.set_defaults(func=cmd_landmarks)
