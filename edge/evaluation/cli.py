"""``mlanet eval jitter`` and ``mlanet eval expressions``: evaluations of the video runtime.

They run the edge pipeline (:class:`mlanet.edge.pipeline.FacePipeline`, as ``mlanet-video`` does) over
clips, so they live above the runtime, not in the core's :mod:`mlanet.eval` (which must not import
:mod:`mlanet.edge`); :mod:`mlanet.cli` registers them in the ``mlanet eval`` group with
:func:`add_parsers`.

``mlanet eval jitter VIDEO [VIDEO ...] --json OUT [--weights FILE | --untrained NAME]``: landmark jitter
of the edge pipeline on near-static frames, temporal filter on and off, against MediaPipe face mesh
(:mod:`.jitter`); the model is opened as ``mlanet-video`` opens it.
``mlanet eval expressions VIDEO [VIDEO ...] --json OUT [same model options]``: correlation of the fitted
jawOpen / eyeBlink with MediaPipe's lip gap / eye aperture on the same frames (:mod:`.expressions`).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mlanet.errors import MLANetError
from mlanet.eval.cli import _check_outputs, _progress
from mlanet.fileutil import file_sha256, write_json_atomic

from mlanet.edge.filters import FilterCfg
from mlanet.edge.loading import add_model_arguments, float_in, open_model, positive_int
from mlanet.edge.pipeline import PipelineCfg
from mlanet.edge.reconstruct import DEFAULT_FOV_DEG, FOV_RANGE_DEG
from mlanet.edge.face_detection import MediaPipeFaceDetector
from mlanet.edge.tracking import TrackerCfg
from mlanet.edge.evaluation.expressions import add_expressions_parser
from mlanet.edge.evaluation.jitter import STATIC_SPEED_PERCENT


def cmd_jitter(args: argparse.Namespace) -> int:
    from mlanet.edge.evaluation.jitter import PROTOCOL, SKIP_REASONS, WindowReference, evaluate_clip, pipeline_description

    _check_outputs(args)
    for video in args.video:
        if not Path(video).expanduser().exists():
            raise MLANetError(f"{video}: no such video file or folder")
    if not args.static_speed > 0:
        raise MLANetError(f"--static-speed must be > 0, got {args.static_speed}")
    if args.max_faces < 1 or args.detect_every < 1:
        raise MLANetError("--max-faces and --detect-every must be >= 1")
    if args.max_frames is not None and args.max_frames < 1:
        raise MLANetError("--max-frames must be >= 1")
    backend, face_model = open_model(args)
    cfg = PipelineCfg(
        fov_deg=DEFAULT_FOV_DEG if args.fov is None else args.fov,
        tracker=replace(TrackerCfg(), max_faces=args.max_faces, detect_every=args.detect_every),
        filter=FilterCfg(enabled=True),
        render_mode=None,
        overlays=(),
        meshes=False,
    )
    clips = []
    reference = None
    try:
        roi_scale = backend.metadata.preprocess.roi_scale
        reference = WindowReference(roi_scale=roi_scale)
        for video in args.video:
            clips.append(evaluate_clip(video, backend, face_model, cfg, detector=MediaPipeFaceDetector(model=args.detector),
                                       reference=reference, static_speed_percent=args.static_speed,
                                       max_frames=args.max_frames, progress=_progress))
    finally:
        if reference is not None:
            reference.close()
        backend.close()
    meta = backend.metadata
    source = Path(meta.source)
    weights = {"source": str(source), "sha256": file_sha256(source) if source.is_file() else None,
               "untrained": bool(meta.runtime.get("untrained", False))}
    result = {
        "benchmark": "video landmark jitter",
        "protocol": PROTOCOL.format(thr=args.static_speed),
        "static_speed_percent": args.static_speed,
        "definitions": {
            "jitter": "sqrt(mean over landmarks of |x(t-1) - 2 x(t) + x(t+1)|^2) / 2, frame pixels; white noise of "
            "std sigma per coordinate gives sqrt(3)*sigma, constant-velocity motion gives 0",
            "jitter_percent": "jitter / face size * 100",
            "face_size": "sqrt(w*h) of the box of the reference's 468 points at t (pixels)",
            "head_speed_percent": "RMS displacement of the reference's 468 points at t-2 under the least-squares "
            "similarity onto those at t+2, divided by 4 (per frame), in percent of the face size; null where frames "
            "t-2..t+2 are not one stretch of the track with references (such frames are never near-static)",
            "near_static": f"head_speed_percent < {args.static_speed:g}",
            "unfiltered": "68 landmarks of the per-frame fit (FaceFit.raw_params) before the temporal filter",
            "filtered": "68 landmarks after the temporal filter (FaceFit.params), as mlanet-video shows them",
            "mediapipe468": "the reference's own 468 points (MediaPipe face mesh, per frame, no smoothing); near-static "
            "frames are selected with the same reference, which favours it slightly",
            "one_pass": "filtered and unfiltered landmarks come from one pass with the filter on: the tracker follows "
            "the unfiltered fit in both modes, so a pass with the filter off gives the same unfiltered fits",
            "skipped": SKIP_REASONS,
        },
        "reference": reference.describe(),
        "pipeline": {**pipeline_description(cfg), "detector": args.detector,
                     "mirror_average": bool(getattr(args, "mirror_average", False))},
        "model": {k: v for k, v in meta.to_dict().items() if k in ("model_name", "backend", "untrained", "preprocess")},
        "weights": weights,
        "face_model": face_model.describe(),
        "clips": clips,
    }
    json_path = write_json_atomic(Path(args.json).expanduser(), result, allow_nan=False)
    print(f"Landmark jitter (px, median over near-static frames: head speed < {args.static_speed:g}% of the face size "
          "per frame, MediaPipe 468 reference)")
    print(f"  {'clip':<32} {'frames':>6} {'tracks':>6} {'valid':>6} {'static':>6} | {'unfiltered':>16} | "
          f"{'filtered':>16} | {'MediaPipe 468':>16}")
    for clip in clips:
        j = clip["near_static"]

        def cell(v: str) -> str:
            px, pc = j["jitter_px"][v]["median"], j["jitter_percent"][v]["median"]
            return "n/a" if px is None else f"{px:.2f} ({pc:.2f}%)"

        print(f"  {Path(clip['video']).name[:32]:<32} {clip['frames']:>6} {clip['n_tracks']:>6} {clip['valid_frames']:>6} "
              f"{clip['near_static_frames']:>6} | {cell('unfiltered'):>16} | {cell('filtered'):>16} | {cell('mediapipe468'):>16}")
        for warning in clip["warnings"]:
            print(f"    warning: {warning}")
    print(f"json: {json_path}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add ``jitter`` and ``expressions`` to the sub-parsers of the ``mlanet eval`` group."""
    j = sub.add_parser(
        "jitter",
        help="video landmark stability: jitter of the edge pipeline's 68 landmarks on near-static frames, filter on/off",
        description=(
            "Runs the edge pipeline (as mlanet-video, no rendering) over each clip and measures per track the jitter "
            "sqrt(mean |x(t-1) - 2x(t) + x(t+1)|^2) / 2 of the 68 landmarks with and without the temporal filter, on "
            "near-static frames (head speed measured by MediaPipe face mesh), and MediaPipe's own 468-point jitter "
            "on the same frames. Frames whose triple crosses a scene cut or a track gap are skipped."
        ),
    )
    j.add_argument("video", nargs="+", help="video file(s) (or image folders)")
    j.add_argument("--json", required=True, metavar="OUT", help="result JSON to write")
    add_model_arguments(j)
    g = j.add_argument_group("pipeline")
    g.add_argument("--static-speed", type=float, default=STATIC_SPEED_PERCENT, metavar="PCT",
                   help=f"near-static: head speed below PCT %% of the face size per frame (default {STATIC_SPEED_PERCENT:g})")
    g.add_argument("--max-faces", type=int, default=4, help="most faces tracked at once (default 4)")
    g.add_argument("--detect-every", type=int, default=10, metavar="N", help="re-run the face detector every N frames (default 10)")
    g.add_argument("--detector", choices=("full_range", "short_range"), default="full_range",
                   help="MediaPipe detector model of the tracker (default full_range)")
    g.add_argument("--fov", type=float_in(*FOV_RANGE_DEG, unit=" degrees"), default=None, metavar="DEG",
                   help="horizontal field of view of the frame camera (default: mlanet-video's default)")
    g.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="only the first N frames of each clip")
    j.set_defaults(func=cmd_jitter)

    add_expressions_parser(sub)
