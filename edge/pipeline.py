"""The per-frame face pipeline: track -> crop -> infer -> reconstruct (+ filter) -> render.

``FacePipeline.process(frame) -> FrameResult`` runs the stages on one frame and records their
milliseconds; :meth:`FacePipeline.run` pulls frames from a source (timing ``decode``) and hands
each result to a sink (timing ``encode``). Every stage reads the artifact's own metadata (the
backend's ``layout`` and ``preprocess``), so nothing here hard-codes a crop size or a slice of
the parameter vector.

Stage order and names: :data:`mlanet.edge.timing.STAGES`.

Independent stills (``frame.independent``: the photos of a folder, a single image) are fitted
each on its own: the tracker is reset before the frame (so the detector runs and every face
gets a new id; ids still increase over the run), and no temporal filter runs on it
(``params == raw_params``: no identity/albedo averaging across photos). Video frames are
tracked and filtered as before.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from ..geometry.camera import PinholeCamera
from ..params import ParamLayout
from ..preprocess import PreprocessCfg
from .crops import crop_faces
from .filters import FilterCfg, TrackFilters
from .protocols import FaceDecoderLike, FaceTrackerLike, InferenceBackend
from .reconstruct import DEFAULT_FOV_DEG, FaceDecoder, crop_pose_to_frame_numpy, frame_camera
from .timing import StageStats, timed
from .tracking import FaceTracker, TrackerCfg
from .types import Detection, FaceFit, Frame, FrameResult, TrackROI

if TYPE_CHECKING:
    from ..morphable.model import MorphableModel

log = logging.getLogger(__name__)

#: Render modes of :class:`mlanet.edge.gl_renderer.FaceRenderer` the pipeline can ask for.
RENDER_MODES: tuple[str, ...] = ("shaded", "photo", "albedo", "normals")


@dataclass(frozen=True)
class PipelineCfg:
    """What the pipeline does per frame.

    Attributes:
        fov_deg: horizontal field of view assumed for the frame camera (degrees).
        tracker: detection/tracking settings (``roi_scale`` is overridden by the artifact's).
        filter: temporal filter settings (``filter.enabled = False`` for raw per-frame fits).
        render_mode: one of :data:`RENDER_MODES`, or None to skip rendering.
        overlays: any of ``"wireframe"``, ``"landmarks"``.
        mesh_alpha: opacity of the rendered mesh over the frame.
        meshes: decode every face's full mesh (vertices, albedo) in the ``mesh`` stage even when
            nothing is rendered (mesh writers, texture unwrapping); rendering always does. False:
            parameters and 2D landmarks only (``FaceFit.vertices`` is None), which is all
            tracking needs.
    """

    fov_deg: float = DEFAULT_FOV_DEG
    tracker: TrackerCfg = field(default_factory=TrackerCfg)
    filter: FilterCfg = field(default_factory=FilterCfg)
    render_mode: str | None = "shaded"
    overlays: tuple[str, ...] = ("landmarks",)
    mesh_alpha: float = 1.0
    meshes: bool = True

    def __post_init__(self) -> None:
        if self.render_mode is not None and self.render_mode not in RENDER_MODES:
            raise ValueError(f"render_mode must be one of {RENDER_MODES} or None, got {self.render_mode!r}")


class FacePipeline:
    """Runs the edge stages on frames.

    Args:
        backend: an :class:`mlanet.edge.backends.InferenceBackend` (its metadata gives layout and
            preprocessing).
        face_model: the :class:`~mlanet.morphable.model.MorphableModel` the backend predicts for.
        cfg: :class:`PipelineCfg`.
        detector: face detector for the tracker (default: MediaPipe full-range, created lazily).
        tracker: a ready :class:`~mlanet.edge.protocols.FaceTrackerLike` (tests); overrides ``detector``.
        renderer_factory: ``(width, height) -> renderer`` with
            ``render(image, faces, camera, mode=..., overlays=..., alpha=...)``; default: the
            ModernGL :class:`~mlanet.edge.gl_renderer.FaceRenderer` (offscreen EGL).
        stats_window: keep stage statistics for only the newest N frames (live sessions of any
            length); None keeps every frame (a file: whole-run statistics). See :class:`StageStats`.
    """

    def __init__(
        self,
        backend: InferenceBackend,
        face_model: MorphableModel,
        cfg: PipelineCfg = PipelineCfg(),
        *,
        detector: Callable[[np.ndarray], Sequence[Detection]] | None = None,
        tracker: FaceTrackerLike | None = None,
        renderer_factory: Callable[[int, int], Any] | None = None,
        stats_window: int | None = None,
    ) -> None:
        self.backend = backend
        self.face_model = face_model
        meta = backend.metadata
        self.layout = ParamLayout.from_dict(meta["layout"])
        self.preprocess = PreprocessCfg.from_dict(meta["preprocess"])
        if self.layout != face_model.layout:
            raise ValueError(
                f"{meta.get('source', 'backend')}: parameter layout {self.layout.sizes} differs from face model "
                f"{face_model.model_id} ({face_model.layout.sizes})"
            )
        self.cfg = cfg
        if tracker is None:
            if detector is None:
                from .face_detection import MediaPipeFaceDetector

                detector = MediaPipeFaceDetector()
            tracker = FaceTracker(replace(cfg.tracker, roi_scale=self.preprocess.roi_scale), detector)
        self.tracker: FaceTrackerLike = tracker
        self.decoder: FaceDecoderLike = FaceDecoder(face_model)
        self.filters = TrackFilters(self.layout, cfg.filter)
        self._renderer_factory = renderer_factory
        self._renderer: Any = None
        self._camera_key: tuple[int, int] | None = None
        self.camera: PinholeCamera | None = None
        self.stats = StageStats(warmup_frames=2, window=stats_window)
        self.frames_done = 0
        self.face_counts: list[int] = []

    # ------------------------------------------------------------------ stages

    def _camera_for(self, frame: Frame) -> PinholeCamera:
        key = (frame.width, frame.height)
        if self.camera is None or key != self._camera_key:
            self.camera = frame_camera(frame.width, frame.height, self.cfg.fov_deg)
            self._camera_key = key
        return self.camera

    def renderer(self, width: int, height: int) -> Any:
        """The renderer for this frame size (created on first use, recreated if the size changes)."""
        r = self._renderer
        if r is None or (getattr(r, "width", width), getattr(r, "height", height)) != (width, height):
            if r is not None and hasattr(r, "release"):
                r.release()
            if self._renderer_factory is not None:
                r = self._renderer_factory(width, height)
            else:
                from .gl_renderer import FaceRenderer
                from .mesh_topology import MeshTopology

                r = FaceRenderer(width, height, MeshTopology.from_face_model(self.face_model))
            self._renderer = r
        return r

    def process(self, frame: Frame, *, render_mode: str | None | bool = True,
                overlays: tuple[str, ...] | None = None) -> FrameResult:
        """Run detect/track, preprocess, infer, reconstruct and (optionally) render on ``frame``.

        ``render_mode=True`` uses ``cfg.render_mode``; a mode name overrides it; None/False skips
        rendering. ``overlays`` overrides ``cfg.overlays``.
        """
        ms: dict[str, float] = {}
        camera = self._camera_for(frame)
        if frame.independent:
            # An unrelated still: nothing carries over from the previous frame (tracks, filters).
            self.tracker.reset()
            self.filters.retain(set())
        with timed(ms, "detect_track"):
            rois = self.tracker.begin(frame)
        if self.tracker.last_scene_cut:
            self.filters.retain(set())  # a track that keeps its id across a cut must not blend the two shots
        boxes = [r.box for r in rois]
        with timed(ms, "preprocess"):
            crops = crop_faces(frame.image, boxes, self.preprocess.input_size)
        with timed(ms, "infer"):
            raw = self.backend(crops) if len(boxes) else np.zeros((0, self.layout.total), np.float32)
        with timed(ms, "reconstruct"):
            faces = self._reconstruct(frame, rois, raw, camera)
        mode = self.cfg.render_mode if render_mode is True else (render_mode or None)
        if faces and (self.cfg.meshes or mode):
            with timed(ms, "mesh"):
                self._add_meshes(faces, camera)
        fits_for_tracker = {f.track_id: f.extras.pop("raw_landmarks2d") for f in faces}
        with timed(ms, "detect_track"):
            self.tracker.end(fits_for_tracker)
            self.filters.retain({f.track_id for f in faces} | set(getattr(self.tracker, "track_ids", ())))
        result = FrameResult(frame=frame, faces=faces, stage_ms=ms,
                             scene_cut=bool(self.tracker.last_scene_cut),
                             detected=bool(self.tracker.last_detected))
        if mode:
            with timed(ms, "render"):
                result.rendered = self.render(frame, faces, mode, self.cfg.overlays if overlays is None else overlays)
        return result

    def _reconstruct(self, frame: Frame, rois: Sequence[TrackROI], raw: np.ndarray,
                     camera: PinholeCamera) -> list[FaceFit]:
        if not rois:
            return []
        boxes = [r.box for r in rois]
        flat_frame = crop_pose_to_frame_numpy(raw, boxes, self.layout, self.preprocess, camera)  # (N, P) float32
        t = frame.t_capture_ns * 1e-9
        # The 68 landmark rows only, not the mesh; the tracker follows the unfiltered fit (a filtered
        # ROI would lag behind fast motion): both sets in one batch.
        if self.filters.cfg.enabled and not frame.independent:
            filtered = np.stack([self.filters(r.track_id, flat_frame[i], t) for i, r in enumerate(rois)])
            both = self.decoder.landmarks2d(np.concatenate([filtered, flat_frame]), camera)
            landmarks, raw_lm = both[: len(rois)], both[len(rois):]
        else:
            filtered = flat_frame.copy()
            landmarks = raw_lm = self.decoder.landmarks2d(filtered, camera)
        return [
            FaceFit(
                track_id=r.track_id, box=r.box, params=filtered[i], raw_params=flat_frame[i],
                vertices=None, landmarks2d=landmarks[i],
                extras={"raw_landmarks2d": raw_lm[i], "roi_source": r.source},
            )
            for i, r in enumerate(rois)
        ]

    def _add_meshes(self, faces: list[FaceFit], camera: PinholeCamera) -> None:
        """Decode the full mesh and albedo of ``faces`` (one batch) into ``vertices`` / ``extras["albedo"]``."""
        decoded = self.decoder(np.stack([f.params for f in faces]), camera)
        for i, f in enumerate(faces):
            f.vertices = decoded.vertices[i]
            f.extras["albedo"] = decoded.albedo[i]

    def render(self, frame: Frame, faces: list[FaceFit], mode: str, overlays: tuple[str, ...]) -> np.ndarray:
        """The overlay image (H, W, 3) uint8 of ``faces`` drawn over ``frame`` (decoding the meshes of
        faces that have none yet, with the camera of the last processed frame)."""
        camera = self._camera_for(frame) if self.camera is None else self.camera
        missing = [f for f in faces if f.vertices is None]
        if missing:
            self._add_meshes(missing, camera)
        renderer = self.renderer(frame.width, frame.height)
        items = [self._render_face(f) for f in faces]
        return renderer.render(frame.image, items, camera, mode=mode, overlays=overlays, alpha=self.cfg.mesh_alpha)

    def _render_face(self, f: FaceFit) -> Any:
        from .gl_renderer import RenderFace

        lighting = np.asarray(f.params[self.layout.slices()["lighting"]], np.float32).reshape(3, 9)
        if f.vertices is None:
            raise ValueError(f"face {f.track_id} has no mesh: decode it first (PipelineCfg.meshes or render)")
        return RenderFace(vertices=f.vertices, albedo=f.extras["albedo"], lighting=lighting,
                          landmarks2d=f.landmarks2d, color_id=f.track_id)

    def unwrap_texture(self, image: np.ndarray, fit: FaceFit, size: int = 1024) -> np.ndarray:
        """The frame projected onto the face's UV layout: (size, size, 3) uint8 (occluded texels black).

        ``image`` must be the frame ``fit`` was made on (the camera of the last processed frame is used).
        """
        renderer = self.renderer(image.shape[1], image.shape[0])
        camera = self.camera if self.camera is not None else frame_camera(image.shape[1], image.shape[0], self.cfg.fov_deg)
        if fit.vertices is None:
            self._add_meshes([fit], camera)
        texture, _visible = renderer.unwrap_texture(image, self._render_face(fit), camera, size=size)
        return texture

    def warmup(self, width: int | None = None, height: int | None = None) -> None:
        """Pay start-up costs before frames arrive: the backend's first run, the detector's model
        load and (with a frame size) the renderer's GL context and shaders. Live sources call this
        before they start, so start-up does not turn into dropped frames."""
        self.backend.warmup()
        detector = getattr(self.tracker, "detector", None)
        if detector is not None:
            detector(np.zeros((64, 64, 3), np.uint8))
        if width and height and self.cfg.render_mode:
            blank = Frame(np.zeros((height, width, 3), np.uint8), 0, 0, "warmup")
            self._camera_for(blank)
            self.render(blank, [], self.cfg.render_mode, self.cfg.overlays)

    # ------------------------------------------------------------------ loop

    def run(
        self,
        source: Iterable[Frame],
        sink: Callable[[FrameResult], None] | None = None,
        *,
        max_frames: int | None = None,
        on_frame: Callable[[FrameResult], bool | None] | None = None,
    ) -> int:
        """Process frames from ``source`` until it ends, ``max_frames`` are done or ``on_frame`` returns False.

        ``sink(result)`` is timed as the ``encode`` stage (writing outputs); ``on_frame`` runs
        after it (progress, UI) and is not timed. Live sources (``source.is_live``) also record
        ``latency_ms``: capture to the end of the sink. ``KeyboardInterrupt`` propagates after
        the frame in flight is finished or dropped; :attr:`frames_done` counts frames whose sink
        completed. Returns the number of frames processed in this call.
        """
        live = bool(getattr(source, "is_live", False))
        it = iter(source)
        n = 0
        while max_frames is None or n < max_frames:
            decode_ms: dict[str, float] = {}
            with timed(decode_ms, "decode"):
                frame = next(it, None)
            if frame is None:
                break
            result = self.process(frame)
            result.stage_ms["decode"] = decode_ms["decode"]
            if sink is not None:
                with timed(result.stage_ms, "encode"):
                    sink(result)
            extra = {"latency_ms": (time.monotonic_ns() - frame.t_capture_ns) / 1e6} if live else {}
            self.stats.add(result.stage_ms, **extra)
            self.face_counts.append(len(result.faces))
            self.frames_done += 1
            n += 1
            if on_frame is not None and on_frame(result) is False:
                break
        return n

    def close(self) -> None:
        """Release the renderer, detector and backend."""
        if self._renderer is not None and hasattr(self._renderer, "release"):
            self._renderer.release()
        self._renderer = None
        self.tracker.close()
