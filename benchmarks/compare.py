"""``mlanet bench compare``: MediaPipe's face-mesh tracker vs the MLANet pipeline, side by side.

One run, one clip, one machine. What is compared and how (also written into the record under
``results.methodology``, so a reviewer can re-measure the same thing):

Clip
    ``--clip`` (default ``data/video/obama_720p.mp4`` of the shared folder: ``$MLANET_SHARED``,
    else ``<repo>/../shared``). The first ``--frames`` frames (default: all) are decoded **once**
    up front into memory; decoding is excluded from both sides, which see the same frames (same
    arrays, same order, same timestamps).

Sides (each gets a fresh session per pass and processes every frame of the clip in order)
    ``mediapipe_face_mesh``
        ``mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=N,
        refine_landmarks=False)``: MediaPipe's own tracking mode (its short-range BlazeFace
        detector when it has no face, else the 468-landmark model on the ROI carried over from
        the previous frame). Per frame: wall time of ``process(image)``; reading the 468
        landmarks out of the result into numpy is timed separately (``extract_landmarks``) and
        not included.
    ``mlanet_fit``
        :class:`~mlanet.edge.pipeline.FacePipeline` ``.process(frame)`` with ``render_mode=None``:
        track (MediaPipe full-range BlazeFace every ``TrackerCfg.detect_every`` frames, ROI from
        the previous fit in between) + crop + network + reconstruction (vertices, landmarks,
        albedo) + temporal filter. The network is ``--model`` (default ``mlanet_mobile``) with
        untrained weights (speed does not depend on them) exported to a temporary ONNX file and
        run on ONNX Runtime's CPU provider. Per frame: wall time around ``process()``; the
        pipeline's own stage breakdown is kept alongside.
    ``mlanet_fit_render``
        the same plus the ModernGL overlay (``PipelineCfg`` default: ``shaded`` mesh + landmark
        overlay, offscreen EGL, read back to an RGB image) of every frame.

Statistics
    ``--passes`` passes (default 3); in each pass every side runs the whole clip once, the
    order of the sides rotating from pass to pass (so slow drift of the machine does not favour
    one side). The first ``--warmup`` frames (default 3) of each pass and side are excluded
    (graph/session start-up, first detection, GL context). Each timed frame's time is the
    median over the passes; ``median_ms`` / ``p95_ms`` are over those per-frame medians,
    ``fps = 1000 / median_ms``. MediaPipe uses its default threading on all cores; the MLANet side
    runs under the runtime's own thread plan (:func:`mlanet.edge.thread_plan.plan_threads`, as
    ``mlanet-video`` and ``mlanet-live`` do), recorded in the settings.

Ratios (``results.ratios``)
    ``mlanet_fit_over_mediapipe = fps(mlanet_fit) / fps(mediapipe) = median_ms(mediapipe) /
    median_ms(mlanet_fit)``, likewise ``mlanet_fit_render_over_mediapipe``: **< 1 means MLANet
    is slower** than MediaPipe's tracker, > 1 faster. ``*_p95`` keys use the p95 times.

Renderers
    ``differentiable_renderer``: :func:`differentiable_renderer_timings` (also used by
    ``benchmarks/bench_renderer.py``): ``render_face`` forward and forward+backward, batch 8 at
    224 x 224 on the face model, torch on CPU (GPU when available).
    ``gl_renderer``: :meth:`FacePipeline.render` of one fitted face from the clip at the clip's
    resolution: ``shaded``, ``shaded`` + landmarks (the pipeline default), ``shaded`` + wireframe +
    landmarks, and the frame alone (upload + readback, no face); ``time_call`` medians.

Heavy libraries (mediapipe, onnxruntime, moderngl, torch) are imported inside the functions,
so building the ``mlanet`` parser stays light.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from mlanet.errors import FaceModelNotFoundError, MLANetError
from mlanet.benchmarks.network import add_network_arguments, check_network_arguments, open_network
from mlanet.benchmarks.record import RESULTS, record_dir, time_call, write_record
from mlanet.benchmarks.shared_data import shared_dir
from mlanet.run_environment import load_average_1min

log = logging.getLogger(__name__)

#: The clip compared by default, relative to the shared folder.
DEFAULT_CLIP = "data/video/obama_720p.mp4"
#: The sides, in the order of the first pass.
SIDES: tuple[str, ...] = ("mediapipe_face_mesh", "mlanet_fit", "mlanet_fit_render")
#: Default settings, and the ``--quick`` ones (used where the option is not given).
DEFAULTS = {"frames": None, "passes": 3, "warmup": 3, "renderer_repeats": 20, "renderer_warmup": 3,
            "gl_repeats": 30, "gl_warmup": 5}
QUICK = {"frames": 20, "passes": 1, "warmup": 2, "renderer_repeats": 3, "renderer_warmup": 1,
         "gl_repeats": 5, "gl_warmup": 1}

RATIO_DEFINITION = (
    "fps(MLANet) / fps(MediaPipe face mesh) = median_ms(MediaPipe) / median_ms(MLANet), per frame; "
    "< 1 means MLANet is slower, > 1 faster"
)


# ------------------------------------------------------------------------------------ helpers


def resolve_clip(clip: str | os.PathLike[str] | None) -> Path:
    path = Path(clip) if clip is not None else shared_dir() / DEFAULT_CLIP
    if not path.is_file():
        hint = "" if clip is not None else " (the shared clip; set $MLANET_SHARED or pass --clip FILE)"
        raise MLANetError(f"{path}: no such video file{hint}")
    return path


def resolve_face_model(path: str | os.PathLike[str] | None) -> Path:
    from mlanet.morphable.model import build_command
    from mlanet.paths import default_face_model_path

    if path is None:
        p = default_face_model_path()
        if not p.is_file():
            raise FaceModelNotFoundError(
                f"no face model at {p} (the asset home); build it with `{build_command()}` "
                "or pass --face-model FILE"
            )
        return p
    p = Path(path)
    if not p.is_file():
        raise FaceModelNotFoundError(f"{p}: no such face-model file; build one with `{build_command()}`")
    return p


def decode_frames(clip: Path, max_frames: int | None) -> tuple[list[Any], dict[str, Any]]:
    """The first ``max_frames`` frames of ``clip`` (all when None), decoded into memory, and clip info."""
    from mlanet.edge.frames import open_source

    t0 = time.perf_counter()
    with open_source(clip) as source:
        frames = []
        for frame in source:
            frames.append(frame)
            if max_frames is not None and len(frames) >= max_frames:
                break
        fps, n_hint = source.fps, source.n_frames
    if not frames:
        raise MLANetError(f"{clip}: no frames could be decoded")
    info = {
        "name": clip.name,
        "path": str(clip),
        "width": frames[0].width,
        "height": frames[0].height,
        "fps": fps,
        "frames_in_container": n_hint,
        "frames_decoded": len(frames),
        "decode_seconds": round(time.perf_counter() - t0, 3),
    }
    return frames, info


def _r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def _sig(x: float, digits: int = 5) -> float:
    """``x`` rounded to ``digits`` significant digits (rates and ratios span orders of magnitude)."""
    return float(f"{float(x):.{digits}g}")


def summarize_side(per_pass_ms: list[list[float]], warmup: int) -> dict[str, Any]:
    """Statistics of one side from its per-pass, per-frame wall times (ms).

    Each timed frame (index >= ``warmup``) is reduced to its median over the passes;
    ``median_ms``/``p95_ms``/``mean_ms``/``min_ms``/``max_ms`` are over those per-frame medians.
    """
    import numpy as np

    a = np.asarray(per_pass_ms, np.float64)  # (passes, frames)
    timed = a[:, warmup:]
    per_frame = np.median(timed, axis=0)
    median = float(np.median(per_frame))
    return {
        "median_ms": _r(median),
        "p95_ms": _r(np.percentile(per_frame, 95)),
        "mean_ms": _r(per_frame.mean()),
        "min_ms": _r(per_frame.min()),
        "max_ms": _r(per_frame.max()),
        "fps": _sig(1000.0 / median),
        "frames": int(a.shape[1]),
        "frames_timed": int(timed.shape[1]),
        "passes": int(a.shape[0]),
        "per_pass_median_ms": [_r(np.median(p)) for p in timed],
        "pooled_median_ms": _r(np.median(timed)),
        "per_frame_ms": [_r(v) for v in per_frame],
        "warmup_ms": [_r(v) for v in np.median(a[:, :warmup], axis=0)],
    }


def ratio(numerator_ms: float, denominator_ms: float) -> float:
    """``numerator_ms / denominator_ms`` to 5 significant digits (an fps ratio when the numerator is the baseline)."""
    return _sig(float(numerator_ms) / float(denominator_ms))


# ------------------------------------------------------------------------------------ sides


def mediapipe_pass(frames: Sequence[Any], max_faces: int) -> dict[str, list]:
    """One pass of MediaPipe's face mesh in tracking mode over ``frames`` (a fresh graph).

    Returns per-frame ``ms`` (``process()`` wall time), ``faces`` (faces found) and
    ``extract_ms`` (reading the landmarks into a (468, 2) pixel array; not part of ``ms``).
    """
    import mediapipe as mp
    import numpy as np

    ms, faces, extract = [], [], []
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=max_faces,
                                         refine_landmarks=False) as mesh:
        for frame in frames:
            image = frame.image
            t0 = time.perf_counter()
            result = mesh.process(image)
            t1 = time.perf_counter()
            found = result.multi_face_landmarks or []
            for face in found:
                np.array([(p.x, p.y) for p in face.landmark], np.float64) * (frame.width, frame.height)
            t2 = time.perf_counter()
            ms.append((t1 - t0) * 1e3)
            extract.append((t2 - t1) * 1e3)
            faces.append(len(found))
    return {"ms": ms, "faces": faces, "extract_ms": extract}


def mlanet_pass(backend: Any, face_model: Any, frames: Sequence[Any], max_faces: int,
                render_mode: str | None) -> dict[str, list]:
    """One pass of :class:`FacePipeline` over ``frames`` (fresh tracker, detector, filters, renderer).

    Returns per-frame ``ms`` (wall time of ``process()``), ``stage_ms`` (its stage breakdown),
    ``faces`` (faces fitted) and ``detected`` (whether the detector ran).
    """
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.face_detection import MediaPipeFaceDetector
    from mlanet.edge.tracking import TrackerCfg

    cfg = PipelineCfg(render_mode=render_mode, tracker=TrackerCfg(max_faces=max_faces), meshes=False)
    pipeline = FacePipeline(backend, face_model, cfg, detector=MediaPipeFaceDetector())
    ms, stages, faces, detected = [], [], [], []
    try:
        for frame in frames:
            t0 = time.perf_counter()
            result = pipeline.process(frame)
            ms.append((time.perf_counter() - t0) * 1e3)
            stages.append(dict(result.stage_ms))
            faces.append(len(result.faces))
            detected.append(bool(result.detected))
    finally:
        pipeline.close()
    return {"ms": ms, "stage_ms": stages, "faces": faces, "detected": detected}


def _stage_summary(per_pass_stages: list[list[dict[str, float]]], warmup: int) -> dict[str, Any]:
    """Median/p95 per stage over the timed frames of all passes (pooled), and their sum's median."""
    import numpy as np

    from mlanet.edge.timing import STAGES

    order = {s: i for i, s in enumerate(STAGES)}
    frames = [s for stages in per_pass_stages for s in stages[warmup:]]
    names = sorted({k for s in frames for k in s}, key=lambda k: (order.get(k, len(order)), k))
    out: dict[str, Any] = {}
    for name in names:
        v = [s.get(name, 0.0) for s in frames]
        out[name] = {"median_ms": _r(np.median(v)), "p95_ms": _r(np.percentile(v, 95)), "mean_ms": _r(np.mean(v))}
    out["sum_of_stages"] = {"median_ms": _r(np.median([sum(s.values()) for s in frames]))}
    return out


# ------------------------------------------------------------------------------------ renderers


def perturbed_params(model: Any, batch: int, depth_m: float, seed: int, device: str) -> Any:
    """Flat (B, P) parameters: neutral face at ``depth_m`` plus small random perturbations."""
    import torch

    from mlanet.params import FaceParams

    g = torch.Generator().manual_seed(seed)
    layout = model.layout
    flat = FaceParams.neutral(layout, batch_size=batch, depth_m=depth_m).to_flat()
    s = layout.slices()
    scale = torch.zeros(layout.total)
    scale[s["identity"]] = 0.3
    scale[s["albedo"]] = 0.3
    scale[s["rotation"]] = 0.1  # rad
    scale[s["translation"]] = 0.01  # m
    scale[s["lighting"]] = 0.05
    flat = flat + torch.randn(batch, layout.total, generator=g) * scale
    flat[:, s["expression"]] = 0.1 * torch.rand(batch, layout.expression, generator=g)
    return flat.to(device)


#: What :func:`differentiable_renderer_timings` can time (``parts``), in order.
RENDERER_PARTS: tuple[str, ...] = (
    "render_face_forward",
    "render_face_forward_backward",
    "rasterize_interpolate_forward",
    "rasterize_interpolate_forward_backward",
    "rasterize_no_grad",
)


def differentiable_renderer_timings(
    model: Any,
    *,
    batch: int = 8,
    size: int = 224,
    warmup: int = 3,
    repeats: int = 20,
    device: str | None = None,
    parts: Sequence[str] = RENDERER_PARTS,
) -> dict[str, Any]:
    """Latency of the differentiable renderer on ``model`` (a MorphableModel): ``batch`` faces at ``size`` px.

    Renders ``batch`` faces (neutral parameters at ``PreprocessCfg().prior_depth_m`` plus small
    random perturbations, :func:`perturbed_params`) with the crop camera of ``PreprocessCfg``:

    - ``render_face_forward``: params -> vertices -> shaded colours -> rasterise -> interpolate,
      with autograd recording (as in training);
    - ``render_face_forward_backward``: the same plus ``(image.mean() + depth.mean()).backward()``
      down to the flat parameter vector;
    - ``rasterize_interpolate_*``: the renderer alone, from fixed vertices/colours that require grad;
    - ``rasterize_no_grad``: visibility + barycentrics only, under ``torch.no_grad``.

    Returns ``{"torch_device", "batch", "image_size", "loss", "timings": {part: time_call(...)},
    "stats": {candidates/covered pixels per image, triangles, vertices}}``.
    """
    import torch

    from mlanet.params import FaceParams
    from mlanet.preprocess import PreprocessCfg
    from mlanet.render.rasterizer import interpolate, rasterize
    from mlanet.render.renderer import render_face

    unknown = [p for p in parts if p not in RENDERER_PARTS]
    if unknown:
        raise ValueError(f"unknown renderer parts {unknown}; choose from {RENDERER_PARTS}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    cfg = PreprocessCfg(input_size=size)
    camera = cfg.camera(batch, device=device)
    flat = perturbed_params(model, batch, cfg.prior_depth_m, seed=0, device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def forward() -> None:
        render_face(model, FaceParams.from_flat(flat, model.layout), camera, size, size)
        sync()

    def forward_backward() -> None:
        f = flat.detach().requires_grad_(True)
        out = render_face(model, FaceParams.from_flat(f, model.layout), camera, size, size)
        (out.image.mean() + out.depth.mean()).backward()
        sync()

    with torch.no_grad():
        params = FaceParams.from_flat(flat, model.layout)
        vertices = model(params)
        colors = model.vertex_colors(params, vertices)
    v_req = vertices.clone().requires_grad_(True)
    c_req = colors.clone().requires_grad_(True)

    def raster_forward_backward() -> None:
        frags = rasterize(v_req, model.triangles, camera, size, size)
        image = interpolate(c_req, frags, model.triangles)
        (image.mean() + frags.depth.mean()).backward()
        sync()

    def raster_forward() -> None:
        frags = rasterize(v_req, model.triangles, camera, size, size)
        interpolate(c_req, frags, model.triangles)
        sync()

    def raster_no_grad() -> None:
        with torch.no_grad():
            rasterize(vertices, model.triangles, camera, size, size)
        sync()

    fns: dict[str, Callable[[], None]] = {
        "render_face_forward": forward,
        "render_face_forward_backward": forward_backward,
        "rasterize_interpolate_forward": raster_forward,
        "rasterize_interpolate_forward_backward": raster_forward_backward,
        "rasterize_no_grad": raster_no_grad,
    }
    timings = {p: time_call(fns[p], warmup=warmup, repeats=repeats) for p in RENDERER_PARTS if p in parts}
    with torch.no_grad():
        frags = rasterize(vertices, model.triangles, camera, size, size)
    stats = {
        "candidates_per_image": frags.num_candidates / batch,
        "covered_pixels_per_image": float(frags.mask.sum()) / batch,
        "triangles": int(model.triangles.shape[0]),
        "vertices": int(model.n_vertices),
    }
    return {
        "torch_device": str(device),
        "torch_threads": torch.get_num_threads(),
        "batch": batch,
        "image_size": size,
        "loss": "image.mean() + depth.mean()",
        "timings": timings,
        "stats": stats,
    }


def gl_renderer_timings(backend: Any, face_model: Any, frames: Sequence[Any], *, warmup: int = 5,
                        repeats: int = 30) -> dict[str, Any]:
    """GL overlay per frame at the clip's resolution (:meth:`FacePipeline.render`, one fitted face).

    The face is the pipeline's fit on the first frame of ``frames`` where it finds one.
    """
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.face_detection import MediaPipeFaceDetector
    from mlanet.edge.tracking import TrackerCfg

    pipeline = FacePipeline(backend, face_model, PipelineCfg(render_mode=None, tracker=TrackerCfg(max_faces=1)),
                            detector=MediaPipeFaceDetector())
    try:
        frame, faces = frames[0], []
        for frame in frames:
            faces = pipeline.process(frame).faces
            if faces:
                break
        if not faces:
            raise MLANetError("gl renderer timing: the pipeline found no face in the clip")
        configs = {
            "shaded": ("shaded", (), faces[:1]),
            "shaded_landmarks": ("shaded", ("landmarks",), faces[:1]),  # the pipeline's default overlay
            "shaded_wireframe_landmarks": ("shaded", ("wireframe", "landmarks"), faces[:1]),
            "frame_only": ("shaded", (), []),
        }
        timings = {
            name: time_call(lambda m=mode, o=overlays, f=fs: pipeline.render(frame, f, m, o),
                            warmup=warmup, repeats=repeats)
            for name, (mode, overlays, fs) in configs.items()
        }
        renderer = pipeline.renderer(frame.width, frame.height)
        gl_info = {}
        try:
            gl_info = {k: renderer.ctx.info.get(k) for k in ("GL_RENDERER", "GL_VERSION")}
        except Exception:  # noqa: BLE001 - informational only
            pass
    finally:
        pipeline.close()
    return {
        "width": frame.width,
        "height": frame.height,
        "faces": 1,
        "frame_index": frame.index,
        "what": "FacePipeline.render: frame upload, background, mesh (+ overlays), RGB readback",
        "gl": gl_info,
        "timings": timings,
    }


# ------------------------------------------------------------------------------------ CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("MediaPipe's face-mesh tracker vs the MLANet pipeline (track + fit + reconstruct, with and "
                     "without the GL overlay) on the same in-memory frames, as an fps ratio; plus the "
                     "differentiable and GL renderers.")
    p.add_argument("--quick", action="store_true",
                   help=f"fewer frames/passes/repeats where not given ({QUICK['frames']} frames, "
                        f"{QUICK['passes']} pass)")
    p.add_argument("--clip", type=Path, default=None,
                   help=f"video file (default: $MLANET_SHARED or <repo>/../shared, {DEFAULT_CLIP})")
    p.add_argument("--frames", type=int, default=None, help="frames of the clip to use (default: all)")
    p.add_argument("--passes", type=int, default=None,
                   help=f"passes over the clip per side (default {DEFAULTS['passes']})")
    p.add_argument("--warmup", type=int, default=None,
                   help=f"first frames of each pass excluded from the statistics (default {DEFAULTS['warmup']})")
    p.add_argument("--max-faces", type=int, default=1, help="faces tracked by both sides (default 1: single-face clip)")
    p.add_argument("--face-model", type=Path, default=None, help="face-model file (default: the asset home's)")
    add_network_arguments(p)
    p.add_argument("--renderer-batch", type=int, default=8, help="differentiable renderer batch (default 8)")
    p.add_argument("--renderer-size", type=int, default=224, help="differentiable renderer image size (default 224)")
    p.add_argument("--skip-renderers", action="store_true", help="only the tracker/pipeline comparison")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    base = QUICK if getattr(args, "quick", False) else DEFAULTS
    s = dict(base)
    for key in ("frames", "passes", "warmup"):
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    if s["frames"] is not None and s["frames"] < 1:
        raise MLANetError(f"--frames must be >= 1, got {s['frames']}")
    if s["passes"] < 1:
        raise MLANetError(f"--passes must be >= 1, got {s['passes']}")
    if s["warmup"] < 0:
        raise MLANetError(f"--warmup must be >= 0, got {s['warmup']}")
    if getattr(args, "max_faces", 1) < 1:
        raise MLANetError(f"--max-faces must be >= 1, got {args.max_faces}")
    return s


def _out_dir(args: argparse.Namespace) -> Path:
    return record_dir(getattr(args, "out", None) or RESULTS)


def methodology(settings: dict[str, Any]) -> list[str]:
    return [
        "Frames are decoded once up front into memory; decoding is excluded from every side, which all "
        "process the same frames in the same order.",
        f"{settings['passes']} pass(es); in each pass every side runs the whole clip with a fresh session "
        "(MediaPipe graph / FacePipeline with new tracker, detector, filters and renderer); the order of "
        "the sides rotates from pass to pass.",
        f"The first {settings['warmup']} frame(s) of each pass and side are excluded (start-up, first "
        "detection, GL context). Each timed frame's time is its median over the passes; median/p95 are "
        "over those per-frame medians; fps = 1000 / median_ms.",
        "mediapipe_face_mesh: wall time of FaceMesh(static_image_mode=False, max_num_faces=N, "
        "refine_landmarks=False).process(image) (tracking mode: its own detector + landmark tracker); "
        "reading the landmarks into numpy is timed separately (extract_landmarks) and not included.",
        "mlanet_fit: wall time of FacePipeline.process(frame), render_mode=None: detect/track (MediaPipe "
        "BlazeFace full-range every TrackerCfg.detect_every frames), crop, network on ONNX Runtime CPU, "
        "reconstruction, temporal filter, with the weights a user runs (settings.weights; the shipped ones by "
        "default): the faces they fit set the tracker's boxes and the overlay's area.",
        "mlanet_fit_render: the same plus the ModernGL overlay (PipelineCfg default: shaded + landmarks, "
        "offscreen EGL, RGB readback).",
        "Ratios: " + RATIO_DEFINITION + ".",
        "Threads: MediaPipe/XNNPACK its default on all cores; MLANet the runtime's thread plan (ONNX Runtime "
        "intra-op threads, one PyTorch/OpenCV/BLAS thread for the small per-frame work, llvmpipe on all cores), "
        "as mlanet-video runs it (settings.thread_plan).",
    ]


def run(args: argparse.Namespace) -> Path:
    """Run the comparison with ``args`` (see :func:`add_arguments`); write and return the record."""
    import numpy as np

    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.pipeline import PipelineCfg
    from mlanet.edge.tracking import TrackerCfg

    t_start = time.perf_counter()
    s = _settings(args)
    max_faces = int(getattr(args, "max_faces", 1))
    check_network_arguments(args)
    face_model_path = resolve_face_model(getattr(args, "face_model", None))
    clip = resolve_clip(getattr(args, "clip", None))
    out_dir = _out_dir(args)

    frames, clip_info = decode_frames(clip, s["frames"])
    if len(frames) <= s["warmup"]:
        raise MLANetError(f"{clip}: {len(frames)} frame(s) decoded, need more than --warmup {s['warmup']}")
    face_model = MorphableModel.load(face_model_path)

    results: dict[str, Any] = {
        "clip": clip_info,
        "settings": {
            "frames": len(frames),
            "passes": s["passes"],
            "warmup_frames": s["warmup"],
            "max_faces": max_faces,
            "quick": bool(getattr(args, "quick", False)),
            "backend": "onnxruntime-cpu",
            "face_model": face_model.describe() | {"file": face_model_path.name},
            "mlanet_tracker": {"detector": "mediapipe BlazeFace full_range",
                               "detect_every": TrackerCfg().detect_every},
            "mlanet_render": {"mode": "shaded", "overlays": list(PipelineCfg().overlays)},
            # a busy machine inflates every number; compare records only when this is ~0
            "load_average_1min_start": load_average_1min(),
        },
        "methodology": methodology(s),
    }

    with tempfile.TemporaryDirectory(prefix="mlanet-bench-compare-") as tmp:
        t0 = time.perf_counter()
        backend, results["settings"]["weights"] = open_network(args, face_model, Path(tmp))
        thread_plan = backend.metadata.runtime["thread_plan"]
        results["settings"]["model"] = backend.metadata.model_name
        results["settings"]["thread_plan"] = thread_plan
        backend.warmup()
        results["settings"]["open_model_seconds"] = round(time.perf_counter() - t0, 3)
        import onnxruntime as ort
        import mediapipe as mp

        results["settings"]["versions"] = {"onnxruntime": ort.__version__, "mediapipe": mp.__version__}

        runners: dict[str, Callable[[], dict[str, list]]] = {
            "mediapipe_face_mesh": lambda: mediapipe_pass(frames, max_faces),
            "mlanet_fit": lambda: mlanet_pass(backend, face_model, frames, max_faces, None),
            "mlanet_fit_render": lambda: mlanet_pass(backend, face_model, frames, max_faces, "shaded"),
        }
        passes: dict[str, list[dict[str, list]]] = {side: [] for side in SIDES}
        for p in range(s["passes"]):
            order = SIDES[p % len(SIDES):] + SIDES[:p % len(SIDES)]
            for side in order:
                passes[side].append(runners[side]())
                log.info("pass %d %s: median %.1f ms", p, side, np.median(passes[side][-1]["ms"][s["warmup"]:]))

        w = s["warmup"]
        for side in SIDES:
            runs = passes[side]
            side_stats = summarize_side([r["ms"] for r in runs], w)
            faces = runs[0]["faces"]
            side_stats["frames_with_face"] = int(sum(1 for n in faces if n > 0))
            side_stats["frames_with_face_per_pass"] = [int(sum(1 for n in r["faces"] if n > 0)) for r in runs]
            side_stats["faces_per_frame_mean"] = _r(sum(faces) / len(faces))
            if side == "mediapipe_face_mesh":
                side_stats["landmarks"] = 468
                ex = [v for r in runs for v in r["extract_ms"][w:]]
                side_stats["extract_landmarks"] = {"median_ms": _r(np.median(ex)), "included": False}
            else:
                side_stats["stages"] = _stage_summary([r["stage_ms"] for r in runs], w)
                side_stats["detector_frames"] = int(sum(runs[0]["detected"]))
                side_stats["render_mode"] = "shaded" if side == "mlanet_fit_render" else None
            results[side] = side_stats

        mp_side = results["mediapipe_face_mesh"]
        results["ratios"] = {"definition": RATIO_DEFINITION}
        for side in ("mlanet_fit", "mlanet_fit_render"):
            results["ratios"][f"{side}_over_mediapipe"] = ratio(mp_side["median_ms"], results[side]["median_ms"])
            results["ratios"][f"{side}_over_mediapipe_p95"] = ratio(mp_side["p95_ms"], results[side]["p95_ms"])

        if not getattr(args, "skip_renderers", False):
            results["gl_renderer"] = gl_renderer_timings(backend, face_model, frames, warmup=s["gl_warmup"],
                                                         repeats=s["gl_repeats"])
            results["differentiable_renderer"] = differentiable_renderer_timings(
                face_model, batch=args.renderer_batch, size=args.renderer_size, warmup=s["renderer_warmup"],
                repeats=s["renderer_repeats"], parts=("render_face_forward", "render_face_forward_backward"))

    results["settings"]["load_average_1min_end"] = load_average_1min()
    results["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    results = {"summary": summary(results), **results}
    path = write_record("compare", results, out_dir=out_dir)
    _print_summary(results)
    return path


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a ``compare`` record's results (what the report shows)."""
    c, st = r["clip"], r["settings"]
    out: dict[str, Any] = {
        "clip": f"{c['name']} {c['width']}x{c['height']}",
        "frames_x_passes": f"{st['frames']} x {st['passes']} ({st['warmup_frames']} warm-up excluded per pass)",
        "per_frame_ms": {side: {"median": r[side]["median_ms"], "p95": r[side]["p95_ms"], "fps": r[side]["fps"],
                                "frames_with_face": r[side]["frames_with_face"]} for side in SIDES},
        "fps_ratio_mlanet_over_mediapipe": {k: v for k, v in r["ratios"].items() if k != "definition"},
        "ratio_definition": r["ratios"]["definition"],
    }
    if "gl_renderer" in r:
        out["gl_renderer_ms"] = {k: _r(v["median_ms"]) for k, v in r["gl_renderer"]["timings"].items()}
    if "differentiable_renderer" in r:
        d = r["differentiable_renderer"]
        out[f"differentiable_renderer_ms_b{d['batch']}_{d['image_size']}px"] = {
            k: _r(v["median_ms"], 1) for k, v in d["timings"].items()}
    return out


def _print_summary(r: dict[str, Any]) -> None:
    c, st = r["clip"], r["settings"]
    print(f"compare on {c['name']} ({c['width']}x{c['height']}), {st['frames']} frames x {st['passes']} pass(es), "
          f"{st['warmup_frames']} warm-up frames excluded, max faces {st['max_faces']}")
    for side in SIDES:
        x = r[side]
        print(f"  {side:22s} median {x['median_ms']:7.2f} ms  p95 {x['p95_ms']:7.2f} ms  {x['fps']:7.1f} fps  "
              f"face in {x['frames_with_face']}/{x['frames']} frames")
    q = r["ratios"]
    print(f"  fps ratio MLANet/MediaPipe (< 1: MLANet slower): fit {q['mlanet_fit_over_mediapipe']:.3f}, "
          f"fit+render {q['mlanet_fit_render_over_mediapipe']:.3f}")
    if "gl_renderer" in r:
        g = r["gl_renderer"]
        print(f"  GL renderer {g['width']}x{g['height']}: " + ", ".join(
            f"{k} {v['median_ms']:.2f} ms" for k, v in g["timings"].items()))
    if "differentiable_renderer" in r:
        d = r["differentiable_renderer"]
        print(f"  differentiable renderer B={d['batch']} {d['image_size']}px on {d['torch_device']}: " + ", ".join(
            f"{k} {v['median_ms']:.1f} ms" for k, v in d["timings"].items()))
    print(f"  wall {r['wall_seconds']} s; 1-min load average {st['load_average_1min_start']} at the start, "
          f"{st['load_average_1min_end']} at the end (on {os.cpu_count()} CPUs)")
