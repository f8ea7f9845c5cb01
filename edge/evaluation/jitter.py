"""Video landmark stability: frame-to-frame jitter of the edge pipeline's 68 landmarks.

Run (:func:`evaluate_clip`): the edge pipeline (:class:`mlanet.edge.pipeline.FacePipeline`, the
model loaded as ``mlanet-video`` loads it, no rendering) goes over the clip once with the
temporal filter on. Each :class:`~mlanet.edge.types.FaceFit` carries both the filtered
parameters (``params``) and the per-frame fit before filtering (``raw_params``); both are
decoded to 68 landmarks in frame pixels with the pipeline's own
:meth:`~mlanet.edge.reconstruct.FaceDecoder.landmarks2d`. One pass gives exactly what two passes
(filter on, filter off) would: the tracker follows the *unfiltered* fit in both modes
(:meth:`FacePipeline._reconstruct`), so crops, network inputs and raw fits are the same;
``tests/test_eval_jitter.py`` checks this against a second pass with the filter off.

Reference (:class:`WindowReference`): MediaPipe face mesh (:class:`mlanet.data.mediapipe_labels.
FaceMeshDetector`, 468 points, one image at a time, ``static_image_mode=True``), run for every
track in every frame on a window around the track's network crop (side
:data:`REFERENCE_WINDOW_SCALE` x the crop, resized to :data:`REFERENCE_INPUT_SIZE` px, so small
background faces are found too and each track gets its own reference). A result whose
68-point-equivalent crop (:func:`mlanet.data.mediapipe_labels.box_from_mp468`) is not centred
inside the track's crop (another face in the window) is discarded; overlap is not required, a
weak network's crop may shrink or drift between detections while the face stays inside it.
The reference is independent of the network: it only decides which frames are near-static and
gives the face size, and its own jitter is reported on the same frames for comparison.

Definitions, per track, for frame ``t`` whose neighbours ``t - 1`` and ``t + 1`` are in the same
track, consecutive (no track gap), in the same shot (no scene cut at ``t`` or ``t + 1``) and all
three have a reference:

* face size ``s_t``: ``sqrt(w * h)`` of the box of the reference's 468 points at ``t`` (pixels);
* head speed: RMS displacement of the reference's points at ``t - 2`` under the least-squares
  similarity transform onto those at ``t + 2``, divided by 4 (per frame), in percent of ``s_t``
  (:data:`SPEED_SPAN`). Fitting a similarity to 468 points averages independent per-point
  noise away, but not the reference's own whole-mesh jitter (MediaPipe re-detects its ROI in
  every image): the 4-frame baseline halves that noise relative to a 2-frame one, which at a
  0.5 % threshold decided which frames counted. Frames without a usable ``t - 2 .. t + 2``
  stretch (same track, consecutive, same shot, references) are valid but never near-static;
* near-static: head speed below :data:`STATIC_SPEED_PERCENT` % of the face size per frame;
* jitter of a landmark set ``x`` (L, 2): ``sqrt(mean_l |x_{t-1,l} - 2 x_{t,l} + x_{t+1,l}|^2) / 2``
  pixels (RMS over landmarks of half the second difference), also in percent of ``s_t``. A
  constant-velocity motion gives 0; white noise of standard deviation ``sigma`` per coordinate
  on a still face gives ``sqrt(3) * sigma``.

Per clip: frames, track-frames, valid frames and near-static frames, skipped frames by reason
(track start/end, track gap, scene cut, no reference), and the median and mean jitter of the
unfiltered and filtered 68 landmarks and of MediaPipe's 468 points, on the near-static frames
(the headline) and on all valid frames.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from mlanet.errors import MLANetError

if TYPE_CHECKING:  # torch is imported only when a clip is run (keeps `mlanet --help` fast)
    from mlanet.preprocess import CropBox
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.backends.base import InferenceBackend
    from mlanet.edge.pipeline import FacePipeline, PipelineCfg
    from mlanet.edge.types import Detection, Frame, FrameResult

#: Head speed (percent of the face size per frame) below which a frame is near-static.
STATIC_SPEED_PERCENT = 0.5

#: The head speed at ``t`` is measured from ``t - SPEED_SPAN`` to ``t + SPEED_SPAN`` (frames).
SPEED_SPAN = 2

#: Side of the reference's window around a track's network crop, in crop sides.
REFERENCE_WINDOW_SCALE = 2.0

#: Pixels of the (square) window image the reference runs on.
REFERENCE_INPUT_SIZE = 256

#: Why a track-frame is not a valid jitter sample (keys of ``skipped``).
SKIP_REASONS: dict[str, str] = {
    "track_end": "first or last frame of a track (no neighbour on one side)",
    "track_gap": "a neighbouring frame is missing from the track (lost face, dropped frame)",
    "scene_cut": "a scene cut between t-1 and t or between t and t+1",
    "no_reference": "the reference found no face (or another face) in t-1, t or t+1",
}

PROTOCOL = (
    "Landmark jitter on near-static frames: per track, jitter(t) = sqrt(mean_l |x(t-1) - 2x(t) + x(t+1)|^2) / 2 "
    "pixels over the 68 landmarks (frame pixels) of the edge pipeline, with the temporal filter (filtered) and "
    "before it (unfiltered); near-static frames: head speed below {thr:g}% of the face size per frame, measured "
    "independently by MediaPipe face mesh (468 points; RMS displacement under the least-squares similarity from t-2 "
    "to t+2, divided by 4); face size sqrt(w*h) of the 468-point box; frames whose triple crosses a scene cut or a track "
    "gap are skipped; MediaPipe's own 468-point jitter on the same frames for reference"
)


def face_size(points: np.ndarray) -> float:
    """``sqrt(w * h)`` of the axis-aligned box of ``points`` (N, 2), pixels."""
    w, h = np.ptp(np.asarray(points, dtype=np.float64)[:, :2], axis=0)
    return float(math.sqrt(max(w, 0.0) * max(h, 0.0)))


def second_difference_jitter(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray) -> float:
    """``sqrt(mean_l |prev_l - 2 cur_l + nxt_l|^2) / 2`` for three (L, 2) landmark sets (pixels)."""
    d = np.asarray(prev, np.float64) - 2.0 * np.asarray(cur, np.float64) + np.asarray(nxt, np.float64)
    return float(np.sqrt(np.mean(np.sum(d[:, :2] ** 2, axis=1))) / 2.0)


def similarity_motion(a: np.ndarray, b: np.ndarray) -> float:
    """RMS displacement (pixels) of the points ``a`` (N, 2) under the least-squares similarity ``a -> b``.

    The similarity (scale, rotation, translation) is fitted to all points, so independent
    per-point noise is averaged away: this is the rigid motion of the point set (a head),
    not the noise of its points.
    """
    a = np.asarray(a, np.float64)[:, :2]
    b = np.asarray(b, np.float64)[:, :2]
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    za = (a[:, 0] - ma[0]) + 1j * (a[:, 1] - ma[1])
    zb = (b[:, 0] - mb[0]) + 1j * (b[:, 1] - mb[1])
    norm = float(np.vdot(za, za).real)
    s = np.vdot(za, zb) / norm if norm > 0 else 1.0  # complex scale * rotation
    moved = s * za + (mb[0] + 1j * mb[1])
    return float(np.sqrt(np.mean(np.abs(moved - (a[:, 0] + 1j * a[:, 1])) ** 2)))


@dataclass
class TrackFrame:
    """One face of one frame.

    Attributes:
        frame: frame index. scene_cut: the tracker saw a cut at this frame (between it and
        the previous one). unfiltered, filtered: (68, 2) frame pixels. reference: (468, 2)
        frame pixels or None. box: the track's network crop ``(x0, y0, size)``.
    """

    frame: int
    scene_cut: bool
    unfiltered: np.ndarray
    filtered: np.ndarray
    reference: np.ndarray | None
    box: tuple[float, float, float]


class WindowReference:
    """MediaPipe's 468 points of the face in a window around a track's crop (module docstring).

    Args:
        detector: ``detector(image (S, S, 3) uint8) -> (468, 2) | None``; default a
            :class:`~mlanet.data.mediapipe_labels.FaceMeshDetector` (static images, one face).
        roi_scale: crop scale of the network (to compare the reference's crop with the track's).
        window_scale, input_size: see the module constants.
        refine: the default detector runs MediaPipe's attention mesh (``refine_landmarks=True``), whose lids
            meet on a closed eye; the plain mesh's stay apart (see :class:`~mlanet.data.mediapipe_labels.FaceMeshDetector`).
    """

    def __init__(
        self,
        detector: Callable[[np.ndarray], np.ndarray | None] | None = None,
        roi_scale: float = math.sqrt(2.0),
        window_scale: float = REFERENCE_WINDOW_SCALE,
        input_size: int = REFERENCE_INPUT_SIZE,
        refine: bool = False,
    ) -> None:
        if detector is None:
            from mlanet.data.mediapipe_labels import FaceMeshDetector

            detector = FaceMeshDetector(refine=refine)
        self.detector = detector
        self.refine = bool(getattr(detector, "refine", refine))
        self.roi_scale, self.window_scale = float(roi_scale), float(window_scale)
        self.input_size = int(input_size)

    def describe(self) -> dict[str, Any]:
        from mlanet.data.mediapipe_labels import MESH_DESCRIPTION

        return {
            "name": "MediaPipe face mesh, 468 points",
            "mode": "static_image_mode=True (no temporal smoothing), one face per window",
            "mesh": MESH_DESCRIPTION[self.refine],
            "mediapipe_version": getattr(self.detector, "version", None),
            "window_scale": self.window_scale,
            "window_pixels": self.input_size,
            "same_face_test": "the centre of the reference's 68-point-equivalent crop lies inside the track's crop",
        }

    def __call__(self, image: np.ndarray, box: CropBox) -> np.ndarray | None:
        from mlanet.data.landmarks import crop_uint8
        from mlanet.data.mediapipe_labels import box_from_mp468
        from mlanet.preprocess import CropBox

        side = box.size * self.window_scale
        c = box.size / 2.0
        window = CropBox(box.x0 + c - side / 2.0, box.y0 + c - side / 2.0, side)
        crop = crop_uint8(image, window, self.input_size)
        rgb = np.ascontiguousarray((crop.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8))
        points = self.detector(rgb)
        if points is None:
            return None
        points = np.asarray(window.crop_to_image(np.asarray(points, np.float64)[:, :2], self.input_size), np.float64)
        ref = box_from_mp468(points, self.roi_scale)
        cx, cy = ref.x0 + ref.size / 2.0, ref.y0 + ref.size / 2.0
        if not (box.x0 <= cx <= box.x0 + box.size and box.y0 <= cy <= box.y0 + box.size):
            return None
        return points

    def close(self) -> None:
        close = getattr(self.detector, "close", None)
        if close is not None:
            close()


def collect_tracks(
    source: Iterable[Frame],
    pipeline: FacePipeline,
    reference: Callable[[np.ndarray, CropBox], np.ndarray | None] | None,
    *,
    max_frames: int | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
) -> tuple[dict[int, list[TrackFrame]], dict[str, Any]]:
    """Run ``pipeline`` (filter enabled) over ``source``; per track id, its :class:`TrackFrame` list.

    Returns ``(tracks, info)``; ``info``: ``frames`` processed, ``scene_cuts`` (frame indices),
    ``faces_per_frame``.
    """
    if not pipeline.filters.cfg.enabled:
        raise ValueError("collect_tracks needs the temporal filter enabled (it reads filtered and raw fits)")
    tracks: dict[int, list[TrackFrame]] = defaultdict(list)
    cuts: list[int] = []
    faces_per_frame: list[int] = []

    def sink(result: FrameResult) -> None:
        faces = result.faces
        faces_per_frame.append(len(faces))
        if result.scene_cut:
            cuts.append(int(result.frame.index))
        if not faces:
            return
        camera = pipeline.camera
        if camera is None:  # set by the frame that produced this result
            raise RuntimeError("the pipeline returned faces without a frame camera")
        flat = np.stack([f.raw_params for f in faces] + [f.params for f in faces])
        lm = np.asarray(pipeline.decoder.landmarks2d(flat, camera), np.float64)
        n = len(faces)
        for i, f in enumerate(faces):
            ref = reference(result.frame.image, f.box) if reference is not None else None
            tracks[int(f.track_id)].append(
                TrackFrame(int(result.frame.index), bool(result.scene_cut), lm[i], lm[n + i], ref,
                           (float(f.box.x0), float(f.box.y0), float(f.box.size)))
            )

    frames = pipeline.run(source, sink, max_frames=max_frames, on_frame=on_frame)
    return dict(tracks), {"frames": int(frames), "scene_cuts": cuts, "faces_per_frame": faces_per_frame}


def _stats(values: list[float]) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {"median": None, "mean": None}
    return {"median": float(np.median(a)), "mean": float(a.mean())}


VARIANTS: tuple[str, ...] = ("unfiltered", "filtered", "mediapipe468")


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(records)}
    for unit in ("px", "percent"):
        out[f"jitter_{unit}"] = {v: _stats([r[f"jitter_{unit}"][v] for r in records]) for v in VARIANTS}
    return out


def _span_problem(seq: list[TrackFrame], k: int, r: int) -> str | None:
    """Why frames ``t - r .. t + r`` around ``seq[k]`` are not one usable stretch (None when they are).

    Usable: all in the track and consecutive, no scene cut between any two of them, all with
    a reference (of non-zero size).
    """
    if k - r < 0 or k + r >= len(seq):
        return "track_end"
    span = seq[k - r : k + r + 1]
    if any(f.frame != seq[k].frame + i - r for i, f in enumerate(span)):
        return "track_gap"
    if any(f.scene_cut for f in span[1:]):
        return "scene_cut"
    if any(f.reference is None or face_size(f.reference) <= 0 for f in span):
        return "no_reference"
    return None


def jitter_report(tracks: Mapping[int, list[TrackFrame]], static_speed_percent: float = STATIC_SPEED_PERCENT) -> dict[str, Any]:
    """Jitter statistics of collected tracks (definitions in the module docstring).

    Returns a JSON-ready dict: ``track_frames``, ``valid_frames``, ``near_static_frames``,
    ``skipped`` (count per :data:`SKIP_REASONS` key), ``near_static`` and ``all_valid``
    summaries (``n``, ``jitter_px`` and ``jitter_percent``: per variant ``median``/``mean``),
    ``filtered_to_unfiltered`` (ratio of the near-static medians), ``tracks`` (per track) and
    ``records`` (per valid frame).
    """
    if not static_speed_percent > 0:
        raise ValueError(f"static_speed_percent must be > 0, got {static_speed_percent}")
    skipped: Counter[str] = Counter()
    records: list[dict[str, Any]] = []
    per_track = []
    for tid in sorted(tracks):
        seq = sorted(tracks[tid], key=lambda f: f.frame)
        n_valid = 0
        for k, cur in enumerate(seq):
            reason = _span_problem(seq, k, 1)
            if reason is not None:
                skipped[reason] += 1
                continue
            prev, nxt = seq[k - 1], seq[k + 1]
            size = face_size(cur.reference)  # type: ignore[arg-type]  # _span_problem checked it
            speed = None
            if _span_problem(seq, k, SPEED_SPAN) is None:
                a, b = seq[k - SPEED_SPAN].reference, seq[k + SPEED_SPAN].reference
                speed = 100.0 * similarity_motion(a, b) / (2 * SPEED_SPAN) / size  # type: ignore[arg-type]
            px = {
                v: second_difference_jitter(getattr(prev, a), getattr(cur, a), getattr(nxt, a))
                for v, a in zip(VARIANTS, ("unfiltered", "filtered", "reference"))
            }
            records.append({
                "track": int(tid), "frame": cur.frame, "face_px": size, "head_speed_percent": speed,
                "near_static": bool(speed is not None and speed < static_speed_percent), "jitter_px": px,
                "jitter_percent": {v: 100.0 * j / size for v, j in px.items()},
            })
            n_valid += 1
        mine = [r for r in records if r["track"] == tid]
        static = [r for r in mine if r["near_static"]]
        per_track.append({
            "track": int(tid), "frames": len(seq), "first_frame": seq[0].frame, "last_frame": seq[-1].frame,
            "frames_with_reference": sum(f.reference is not None for f in seq), "valid_frames": n_valid,
            "near_static_frames": len(static),
            "median_face_px": float(np.median([r["face_px"] for r in mine])) if mine else None,
            "near_static_jitter_px_median": {v: _stats([r["jitter_px"][v] for r in static])["median"] for v in VARIANTS},
        })
    static = [r for r in records if r["near_static"]]
    near = _summary(static)
    med = near["jitter_px"]
    ratio = (med["filtered"]["median"] / med["unfiltered"]["median"]
             if static and med["unfiltered"]["median"] else None)
    warnings = []
    if not static:
        warnings.append("no near-static frame: the jitter on near-static frames is undefined (see all_valid)")
    return {
        "track_frames": sum(len(v) for v in tracks.values()),
        "valid_frames": len(records),
        "valid_frames_without_speed": sum(r["head_speed_percent"] is None for r in records),
        "near_static_frames": len(static),
        "skipped": {k: int(skipped.get(k, 0)) for k in SKIP_REASONS},
        "near_static": near,
        "all_valid": _summary(records),
        "filtered_to_unfiltered": ratio,
        "warnings": warnings,
        "tracks": per_track,
        "records": records,
    }


def evaluate_clip(
    path: str | Path,
    backend: InferenceBackend,
    face_model: MorphableModel,
    cfg: PipelineCfg,
    *,
    detector: Callable[[np.ndarray], Sequence[Detection]] | None = None,
    reference: WindowReference | None = None,
    static_speed_percent: float = STATIC_SPEED_PERCENT,
    max_frames: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Jitter of one video (or image folder): a fresh pipeline, one pass, :func:`jitter_report`.

    Args:
        path: the clip (anything :func:`mlanet.edge.frames.open_source` opens, not a camera).
        backend, face_model: as from :func:`mlanet.edge.loading.open_model`.
        cfg: a :class:`~mlanet.edge.pipeline.PipelineCfg`; its filter is switched on and
            rendering off.
        detector: the tracker's face detector (default MediaPipe full-range); closed at the end.
        reference: the reference landmarks (default: a :class:`WindowReference` made and closed
            here; one passed in is not closed).
        progress: ``progress(done, total)`` after each frame.
    """
    from dataclasses import replace

    from mlanet.edge.frames import open_source
    from mlanet.edge.pipeline import FacePipeline
    from mlanet.fileutil import file_sha256

    path = Path(path).expanduser()
    if not path.exists():
        raise MLANetError(f"{path}: no such video file or folder")
    cfg = replace(cfg, render_mode=None, overlays=(), meshes=False, filter=replace(cfg.filter, enabled=True))
    source = open_source(path, image_sequence=True)  # a folder of frames is one clip here
    pipeline = None
    own_reference = reference is None
    t0 = time.perf_counter()
    try:
        pipeline = FacePipeline(backend, face_model, cfg, detector=detector)
        if reference is None:
            reference = WindowReference(roi_scale=pipeline.preprocess.roi_scale)
        total = int(source.n_frames or 0)
        if max_frames is not None:
            total = min(total, max_frames) if total else max_frames
        done = [0]

        def on_frame(_: FrameResult) -> None:
            done[0] += 1
            if progress is not None:
                progress(done[0], total or done[0])

        tracks, info = collect_tracks(source, pipeline, reference, max_frames=max_frames, on_frame=on_frame)
        size, fps = source.size, source.fps
    finally:
        if pipeline is not None:
            pipeline.close()
        if own_reference and reference is not None:
            reference.close()
        source.close()
    report = jitter_report(tracks, static_speed_percent)
    return {
        "video": str(path),
        "sha256": file_sha256(path) if path.is_file() else None,
        "width": int(size[0]) if size else None,
        "height": int(size[1]) if size else None,
        "fps": float(fps) if fps else None,
        "frames": info["frames"],
        "scene_cuts": info["scene_cuts"],
        "n_tracks": len(tracks),
        "elapsed_s": time.perf_counter() - t0,
        **report,
    }


def pipeline_description(cfg: PipelineCfg) -> dict[str, Any]:
    """JSON-ready :class:`~mlanet.edge.pipeline.PipelineCfg` (tracker and filter settings)."""
    return {"fov_deg": cfg.fov_deg, "tracker": asdict(cfg.tracker), "filter": asdict(cfg.filter)}
