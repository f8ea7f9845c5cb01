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

from mlanet.geometry.camera import PinholeCamera
from mlanet.preprocess import PreprocessCfg
from mlanet.edge.crops import crop_faces
from mlanet.edge.display_mesh import DISPLAY_TRIANGLES, DisplayMesh, display_mesh
from mlanet.edge.filters import FilterCfg, TrackFilters
from mlanet.edge.protocols import FaceDecoderLike, FaceTrackerLike, InferenceBackend
from mlanet.edge.reconstruct import (DEFAULT_FOV_DEG, FaceDecoder, camera_intrinsics, crop_pose_to_frame_numpy,
                                     frame_camera)
from mlanet.edge.timing import StageStats, timed
from mlanet.edge.tracking import FaceTracker, TrackerCfg
from mlanet.edge.types import Detection, FaceFit, Frame, FrameResult, TrackROI

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel

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
        meshes: decode every face's full mesh (vertices, albedo) in the ``mesh`` stage (mesh
            writers, texture unwrapping). False: parameters and 2D landmarks only
            (``FaceFit.vertices`` is None), which is all tracking needs; rendering then decodes
            only the display mesh's vertices (``extras["display_vertices"]``, ``["display_albedo"]``).
        display_triangles: triangles of the overlay's display mesh (the face model's mesh
            decimated on its own vertices, :mod:`mlanet.edge.display_mesh`; the ``wireframe``
            overlay and texture unwrapping always use the full mesh); None: draw the full mesh.
    """

    fov_deg: float = DEFAULT_FOV_DEG
    tracker: TrackerCfg = field(default_factory=TrackerCfg)
    filter: FilterCfg = field(default_factory=FilterCfg)
    render_mode: str | None = "shaded"
    overlays: tuple[str, ...] = ("landmarks",)
    mesh_alpha: float = 1.0
    meshes: bool = True
    display_triangles: int | None = DISPLAY_TRIANGLES

    def __post_init__(self) -> None:
        if self.display_triangles is not None and (
                not isinstance(self.display_triangles, int) or isinstance(self.display_triangles, bool)
                or self.display_triangles < 100):
            raise ValueError(f"display_triangles must be an int >= 100 or None, got {self.display_triangles!r}")
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
        renderer_factory: ``(width, height, topology) -> renderer`` with
            ``render(image, faces, camera, mode=..., overlays=..., alpha=...)`` for faces on
            ``topology`` (a :class:`~mlanet.edge.mesh_topology.MeshTopology`: the display mesh,
            or the full mesh for the wireframe and texture unwrapping); default: the ModernGL
            :class:`~mlanet.edge.gl_renderer.FaceRenderer` (offscreen EGL).
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
        renderer_factory: Callable[[int, int, Any], Any] | None = None,
        stats_window: int | None = None,
    ) -> None:
        self.backend = backend
        self.face_model = face_model
        meta = backend.metadata
        self.layout = meta.layout
        if meta.preprocess is None:
            raise ValueError(f"{meta.source or 'backend'}: a face-decoder export has no preprocessing; "
                             "the pipeline needs a network")
        self.preprocess: PreprocessCfg = meta.preprocess
        if self.layout != face_model.layout:
            raise ValueError(
                f"{meta.source or 'backend'}: parameter layout {self.layout.sizes} differs from face model "
                f"{face_model.model_id} ({face_model.layout.sizes})"
            )
        self.cfg = cfg
        if tracker is None:
            if detector is None:
                from mlanet.edge.face_detection import MediaPipeFaceDetector

                detector = MediaPipeFaceDetector()
            tracker = FaceTracker(replace(cfg.tracker, roi_scale=self.preprocess.roi_scale), detector)
        self.tracker: FaceTrackerLike = tracker
        self.decoder: FaceDecoderLike = FaceDecoder(face_model)
        self.filters = TrackFilters(self.layout, cfg.filter)
        self._renderer_factory = renderer_factory
        self._renderers: dict[str, Any] = {}  # "display" / "full" -> renderer of the current frame size
        self._display: DisplayMesh | None = None
        self._last_box: tuple[int, int, int, int] | None = None
        self._camera_key: tuple[int, int] | None = None
        self.camera: PinholeCamera | None = None
        self._intrinsics: tuple[float, float, float, float] | None = None
        self.stats = StageStats(warmup_frames=2, window=stats_window)
        self.frames_done = 0
        self.face_counts: list[int] = []

    # ------------------------------------------------------------------ stages

    def _camera_for(self, frame: Frame) -> PinholeCamera:
        key = (frame.width, frame.height)
        if self.camera is None or key != self._camera_key:
            self.camera = frame_camera(frame.width, frame.height, self.cfg.fov_deg)
            self._camera_key = key
            self._intrinsics = camera_intrinsics(self.camera)  # floats for the per-frame NumPy/Python maths
        return self.camera

    @property
    def display(self) -> DisplayMesh:
        """The overlay's display mesh (built or read from the asset home's cache on first use)."""
        if self._display is None:
            target = self.cfg.display_triangles
            self._display = display_mesh(self.face_model, target if target is not None else 1 << 62)
        return self._display

    def renderer(self, width: int, height: int, mesh: str = "display") -> Any:
        """The renderer of ``mesh`` (``"display"`` or ``"full"``) for this frame size (created on
        first use, recreated if the size changes)."""
        if mesh not in ("display", "full"):
            raise ValueError(f"mesh must be 'display' or 'full', got {mesh!r}")
        if self.cfg.display_triangles is None:
            mesh = "full"  # one renderer: the display mesh is the full mesh
        r = self._renderers.get(mesh)
        if r is None or (getattr(r, "width", width), getattr(r, "height", height)) != (width, height):
            if r is not None and hasattr(r, "release"):
                r.release()
            if mesh == "display":
                topology = self.display.topology
            else:
                from mlanet.edge.mesh_topology import MeshTopology

                topology = MeshTopology.from_face_model(self.face_model)
            if self._renderer_factory is not None:
                r = self._renderer_factory(width, height, topology)
            else:
                from mlanet.edge.gl_renderer import FaceRenderer

                r = FaceRenderer(width, height, topology)
            self._renderers[mesh] = r
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
        overlays = self.cfg.overlays if overlays is None else overlays
        if faces and (self.cfg.meshes or mode):
            with timed(ms, "mesh"):
                if self.cfg.meshes or "wireframe" in overlays or self.cfg.display_triangles is None:
                    self._add_meshes(faces, camera)
                else:
                    self._add_display_meshes(faces)
        fits_for_tracker = {f.track_id: f.extras.pop("raw_landmarks2d") for f in faces}
        with timed(ms, "detect_track"):
            self.tracker.end(fits_for_tracker)
            self.filters.retain({f.track_id for f in faces} | set(getattr(self.tracker, "track_ids", ())))
        result = FrameResult(frame=frame, faces=faces, stage_ms=ms,
                             scene_cut=bool(self.tracker.last_scene_cut),
                             detected=bool(self.tracker.last_detected))
        if mode:
            with timed(ms, "render"):
                result.rendered = self.render(frame, faces, mode, overlays)
                result.rendered_box = self._last_box
        return result

    def _reconstruct(self, frame: Frame, rois: Sequence[TrackROI], raw: np.ndarray,
                     camera: PinholeCamera) -> list[FaceFit]:
        if not rois:
            return []
        boxes = [r.box for r in rois]
        intrinsics = self._intrinsics if camera is self.camera else None  # the kept floats of this camera
        flat_frame = crop_pose_to_frame_numpy(raw, boxes, self.layout, self.preprocess, camera,
                                              intrinsics=intrinsics)  # (N, P) float32
        t = frame.t_capture_ns * 1e-9
        # The 68 landmark rows only, not the mesh; the tracker follows the unfiltered fit (a filtered
        # ROI would lag behind fast motion): both sets in one batch.
        if self.filters.cfg.enabled and not frame.independent:
            filtered = np.stack([self.filters(r.track_id, flat_frame[i], t) for i, r in enumerate(rois)])
            both = self.decoder.landmarks2d(np.concatenate([filtered, flat_frame]), camera, intrinsics=intrinsics)
            landmarks, raw_lm = both[: len(rois)], both[len(rois):]
        else:
            filtered = flat_frame.copy()
            landmarks = raw_lm = self.decoder.landmarks2d(filtered, camera, intrinsics=intrinsics)
        return [
            FaceFit(
                track_id=r.track_id, box=r.box, params=filtered[i], raw_params=flat_frame[i],
                vertices=None, landmarks2d=landmarks[i],
                extras={"raw_landmarks2d": raw_lm[i], "roi_source": r.source},
            )
            for i, r in enumerate(rois)
        ]

    def _add_meshes(self, faces: list[FaceFit], camera: PinholeCamera) -> None:
        """Decode the full mesh and albedo of ``faces`` (one batch) into ``vertices`` / ``extras["albedo"]``
        (NumPy on the CPU, :meth:`FaceDecoder.mesh`; the decoder's device otherwise)."""
        flat = np.stack([f.params for f in faces])
        if self.decoder.device.type == "cpu":
            vertices, albedo = self.decoder.mesh(flat)
        else:
            decoded = self.decoder(flat, camera)
            vertices, albedo = decoded.vertices, decoded.albedo
        for i, f in enumerate(faces):
            f.vertices = vertices[i]
            f.extras["albedo"] = albedo[i]

    def _add_display_meshes(self, faces: list[FaceFit]) -> None:
        """Decode only the display mesh's vertices and albedo of ``faces`` (NumPy, one batch) into
        ``extras["display_vertices"]`` / ``extras["display_albedo"]`` ((K, 3) float32 each)."""
        verts, albedo = self.decoder.mesh_rows(np.stack([f.params for f in faces]), self.display.kept)
        for i, f in enumerate(faces):
            f.extras["display_vertices"], f.extras["display_albedo"] = verts[i], albedo[i]

    def render(self, frame: Frame, faces: list[FaceFit], mode: str, overlays: tuple[str, ...]) -> np.ndarray:
        """The overlay image (H, W, 3) uint8 of ``faces`` drawn over ``frame`` (decoding the meshes of
        faces that have none yet, with the camera of the last processed frame).

        The surface is drawn with the display mesh (:attr:`PipelineCfg.display_triangles`), the
        ``wireframe`` overlay with the full mesh (a wireframe shows the face model's own edges)."""
        camera = self._camera_for(frame) if self.camera is None else self.camera
        full = "wireframe" in overlays or self.cfg.display_triangles is None
        if full:
            missing = [f for f in faces if f.vertices is None]
            if missing:
                self._add_meshes(missing, camera)
        else:
            missing = [f for f in faces if f.vertices is None and "display_vertices" not in f.extras]
            if missing:
                self._add_display_meshes(missing)
        renderer = self.renderer(frame.width, frame.height, "full" if full else "display")
        items = [self._render_face(f, full) for f in faces]
        image = renderer.render(frame.image, items, camera, mode=mode, overlays=overlays, alpha=self.cfg.mesh_alpha)
        self._last_box = getattr(renderer, "last_box", None)  # a renderer that does not say: anywhere
        return image

    def _render_face(self, f: FaceFit, full: bool = True) -> Any:
        from mlanet.edge.gl_renderer import RenderFace

        if not full and "display_vertices" in f.extras:
            vertices, albedo = f.extras["display_vertices"], f.extras["display_albedo"]
        elif f.vertices is None:
            raise ValueError(f"face {f.track_id} has no mesh: decode it first (PipelineCfg.meshes or render)")
        elif full:
            vertices, albedo = f.vertices, f.extras["albedo"]
        else:  # the full mesh was decoded (for writers): its display rows
            kept = self.display.kept
            vertices, albedo = f.vertices[kept], f.extras["albedo"][kept]
        lighting = np.asarray(f.params[self.layout.slices()["lighting"]], np.float32).reshape(3, 9)
        return RenderFace(vertices=vertices, albedo=albedo, lighting=lighting,
                          landmarks2d=f.landmarks2d, color_id=f.track_id)

    def unwrap_texture(self, image: np.ndarray, fit: FaceFit, size: int = 1024) -> np.ndarray:
        """The frame projected onto the face's UV layout: (size, size, 3) uint8 (occluded texels black).

        ``image`` must be the frame ``fit`` was made on (the camera of the last processed frame is used).
        """
        camera = self.camera if self.camera is not None else frame_camera(image.shape[1], image.shape[0], self.cfg.fov_deg)
        if fit.vertices is None:
            self._add_meshes([fit], camera)
        renderer = self.renderer(image.shape[1], image.shape[0], "full")
        texture, _visible = renderer.unwrap_texture(image, self._render_face(fit, True), camera, size=size)
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
        """Release the renderers, detector and backend."""
        for r in self._renderers.values():
            if hasattr(r, "release"):
                r.release()
        self._renderers.clear()
        self.tracker.close()
