"""The per-frame face pipeline: track -> crop -> infer -> reconstruct (+ filter) -> render.

``FacePipeline.process(frame) -> FrameResult`` runs the stages on one frame and records their
milliseconds; :meth:`FacePipeline.run` pulls frames from a source (timing ``decode``) and hands
each result to a sink (timing ``encode``). Every stage reads the artifact's own metadata (the
backend's ``layout`` and ``preprocess``), so nothing here hard-codes a crop size or a slice of
the parameter vector.

Stage order and names: :data:`mlanet.edge.timing.STAGES`.

Two modes, one pipeline (:attr:`FacePipeline.device_stage`):

* **host mode** (every backend on the CPU, and GPU backends that return host arrays: ONNX Runtime's
  CUDA provider, TensorRT): the crops are made on the CPU (:func:`~mlanet.edge.crops.crop_faces`), the
  backend returns NumPy parameters, the crop -> frame pose and landmarks run in NumPy.
* **GPU mode** (a backend whose results stay on its device, ``run_device``: ``TorchCudaBackend``; chosen
  automatically when that device is a CUDA GPU): the frame is uploaded once and the crops, the network,
  the crop -> frame pose and the 68 landmarks run on the device
  (:class:`~mlanet.edge.device_path.DeviceFaceStage`); only the (N, P) parameters and (N, 68, 2)
  landmarks come back. :meth:`FacePipeline.run` then overlaps frames: frame t+1 is decoded and uploaded
  while frame t computes, and computes while frame t is rendered and written (two frames in flight at
  most). Tracking, filters, meshes and rendering are the host mode's code on those results. Stage times
  in this mode are host times: ``preprocess`` is the upload and the queueing of the device work,
  ``infer`` the wait for its results.

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
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from mlanet.geometry.camera import PinholeCamera
from mlanet.preprocess import PreprocessCfg
from mlanet.edge.crops import crop_faces
from mlanet.edge.device_ops import DeviceOps
from mlanet.edge.display_mesh import DISPLAY_TRIANGLES, DisplayMesh, display_mesh
from mlanet.edge.filters import FilterCfg, TrackFilters
from mlanet.edge.protocols import DeviceInferenceBackend, FaceDecoderLike, FaceTrackerLike, InferenceBackend
from mlanet.edge.reconstruct import (DEFAULT_FOV_DEG, FaceDecoder, camera_intrinsics, crop_pose_to_frame_cpu, face_anchor,
                                     frame_camera)
from mlanet.edge.timing import StageStats, timed
from mlanet.edge.tracking import FaceTracker, TrackerCfg
from mlanet.edge.types import Detection, FaceFit, Frame, FrameResult, TrackROI

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel
    from mlanet.edge.device_path import DeviceFaceStage

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
        device_mode: the GPU mode (see the module docstring). None (default): on when the backend is a
            :class:`~mlanet.edge.protocols.DeviceInferenceBackend` on a CUDA device; True: on for such a
            backend on any device (on the CPU it runs the GPU mode's code on CPU tensors); False: host mode.
        device_ops: the device operations of the GPU mode (default: CUDA streams and events on a GPU,
            :class:`~mlanet.edge.device_ops.SyncCpuOps` on the CPU).

    Raises:
        ValueError: ``device_mode=True`` with a backend that returns host arrays.
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
        device_mode: bool | None = None,
        device_ops: DeviceOps | None = None,
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
        #: the face point whose image scale the crop -> frame conversion keeps (model frame, metres)
        self.anchor = face_anchor(face_model)
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
        #: The GPU mode's device stages; None in host mode.
        self.device_stage: DeviceFaceStage | None = self._device_stage(device_mode, device_ops)

    def _device_stage(self, device_mode: bool | None, ops: DeviceOps | None) -> DeviceFaceStage | None:
        """The :class:`~mlanet.edge.device_path.DeviceFaceStage` of the GPU mode, or None (host mode)."""
        backend = self.backend
        if device_mode is None:
            device_mode = isinstance(backend, DeviceInferenceBackend) and torch.device(backend.device).type == "cuda"
        if not device_mode:
            return None
        if not isinstance(backend, DeviceInferenceBackend):
            raise ValueError(f"device_mode=True needs a backend whose results stay on its device (run_device: "
                             f"TorchCudaBackend, TorchBackend); {type(backend).__name__} returns host arrays")
        from mlanet.edge.device_path import DeviceFaceStage

        return DeviceFaceStage(backend, self.face_model, self.preprocess, ops=ops)

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
        camera, rois = self._begin(frame, ms)
        stage = self.device_stage
        if stage is None:
            boxes = [r.box for r in rois]
            with timed(ms, "preprocess"):
                crops = crop_faces(frame.image, boxes, self.preprocess.input_size)
            with timed(ms, "infer"):
                raw = self.backend(crops) if len(boxes) else np.zeros((0, self.layout.total), np.float32)
            with timed(ms, "reconstruct"):
                faces = self._reconstruct(frame, rois, raw, camera)
        else:
            with timed(ms, "preprocess"):
                pending = stage.submit(stage.upload(frame.image), [r.box for r in rois], camera)
            faces = self._collect(frame, rois, pending, camera, ms)
        mode, overlays = self._mode(render_mode, overlays)
        result = self._complete(frame, faces, camera, ms, mode, overlays)
        self._render_result(result, camera, mode, overlays)
        return result

    def _begin(self, frame: Frame, ms: dict[str, float]) -> tuple[PinholeCamera, list[TrackROI]]:
        """The frame's camera and the tracker's ROIs (timed as ``detect_track``); a still resets tracks and filters."""
        camera = self._camera_for(frame)
        if frame.independent:
            # An unrelated still: nothing carries over from the previous frame (tracks, filters).
            self.tracker.reset()
            self.filters.retain(set())
        with timed(ms, "detect_track"):
            rois = list(self.tracker.begin(frame))
        if self.tracker.last_scene_cut:
            self.filters.retain(set())  # a track that keeps its id across a cut must not blend the two shots
        return camera, rois

    def _collect(self, frame: Frame, rois: Sequence[TrackROI], pending: Any, camera: PinholeCamera,
                 ms: dict[str, float]) -> list[FaceFit]:
        """GPU mode: wait for the device's results of ``pending`` (``infer``), then the host part of ``reconstruct``."""
        assert self.device_stage is not None
        with timed(ms, "infer"):
            flat_frame, raw_lm = self.device_stage.collect(pending)
        with timed(ms, "reconstruct"):
            return self._fits(frame, rois, flat_frame, camera, raw_lm)

    def _mode(self, render_mode: str | None | bool, overlays: tuple[str, ...] | None) -> tuple[str | None, tuple[str, ...]]:
        mode = self.cfg.render_mode if render_mode is True else (render_mode or None)
        return mode, self.cfg.overlays if overlays is None else overlays

    def _complete(self, frame: Frame, faces: list[FaceFit], camera: PinholeCamera, ms: dict[str, float],
                  mode: str | None, overlays: tuple[str, ...]) -> FrameResult:
        """Meshes (``mesh``), the tracker's end of the frame, the :class:`FrameResult` (not rendered yet)."""
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
        return FrameResult(frame=frame, faces=faces, stage_ms=ms,
                           scene_cut=bool(self.tracker.last_scene_cut),
                           detected=bool(self.tracker.last_detected))

    def _render_result(self, result: FrameResult, camera: PinholeCamera, mode: str | None,
                       overlays: tuple[str, ...]) -> None:
        if mode:
            with timed(result.stage_ms, "render"):
                result.rendered = self._draw(result.frame, result.faces, mode, overlays, camera)
                result.rendered_box = self._last_box

    def _reconstruct(self, frame: Frame, rois: Sequence[TrackROI], raw: np.ndarray,
                     camera: PinholeCamera) -> list[FaceFit]:
        if not rois:
            return []
        boxes = [r.box for r in rois]
        flat_frame = crop_pose_to_frame_cpu(raw, boxes, self.layout, self.preprocess, camera, anchor=self.anchor,
                                              intrinsics=self._kept_intrinsics(camera))  # (N, P) float32
        return self._fits(frame, rois, flat_frame, camera)

    def _kept_intrinsics(self, camera: PinholeCamera) -> tuple[float, float, float, float] | None:
        """The floats of ``camera``'s intrinsics when it is the pipeline's own camera (kept per frame size)."""
        return self._intrinsics if camera is self.camera else None

    def _fits(self, frame: Frame, rois: Sequence[TrackROI], flat_frame: np.ndarray, camera: PinholeCamera,
              raw_lm: np.ndarray | None = None) -> list[FaceFit]:
        """Filtered fits of ``rois`` from their frame-camera parameters ``flat_frame`` (N, P) float32.

        ``raw_lm``: the (N, 68, 2) landmarks of ``flat_frame`` when already computed (the GPU mode's
        device decode); None computes them here.
        """
        if not rois:
            return []
        intrinsics = self._kept_intrinsics(camera)
        t = frame.t_capture_ns * 1e-9
        # The 68 landmark rows only, not the mesh; the tracker follows the unfiltered fit (a filtered
        # ROI would lag behind fast motion): both sets in one batch.
        if self.filters.cfg.enabled and not frame.independent:
            filtered = np.stack([self.filters(r.track_id, flat_frame[i], t) for i, r in enumerate(rois)])
            if raw_lm is None:
                both = self.decoder.landmarks2d(np.concatenate([filtered, flat_frame]), camera, intrinsics=intrinsics)
                landmarks, raw_lm = both[: len(rois)], both[len(rois):]
            else:
                landmarks = self.decoder.landmarks2d(filtered, camera, intrinsics=intrinsics)
        else:
            filtered = flat_frame.copy()
            if raw_lm is None:
                raw_lm = self.decoder.landmarks2d(filtered, camera, intrinsics=intrinsics)
            landmarks = raw_lm
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
        return self._draw(frame, faces, mode, overlays, camera)

    def _draw(self, frame: Frame, faces: list[FaceFit], mode: str, overlays: tuple[str, ...],
              camera: PinholeCamera) -> np.ndarray:
        """:meth:`render` with the frame's own camera (the GPU mode renders frame t after frame t+1 began)."""
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

        In GPU mode the frames overlap (:meth:`_run_overlapped`); the results are those of
        :meth:`process` called frame by frame.
        """
        live = bool(getattr(source, "is_live", False))
        it = iter(source)
        if self.device_stage is not None:
            return self._run_overlapped(it, sink, live, max_frames, on_frame)
        n = 0
        while max_frames is None or n < max_frames:
            decode_ms: dict[str, float] = {}
            with timed(decode_ms, "decode"):
                frame = next(it, None)
            if frame is None:
                break
            result = self.process(frame)
            result.stage_ms["decode"] = decode_ms["decode"]
            n += 1
            if not self._deliver(result, sink, live, on_frame):
                break
        return n

    def _deliver(self, result: FrameResult, sink: Callable[[FrameResult], None] | None, live: bool,
                 on_frame: Callable[[FrameResult], bool | None] | None) -> bool:
        """Sink (timed as ``encode``), statistics, counters, then ``on_frame``; False: stop."""
        if sink is not None:
            with timed(result.stage_ms, "encode"):
                sink(result)
        extra = {"latency_ms": (time.monotonic_ns() - result.frame.t_capture_ns) / 1e6} if live else {}
        self.stats.add(result.stage_ms, **extra)
        self.face_counts.append(len(result.faces))
        self.frames_done += 1
        return not (on_frame is not None and on_frame(result) is False)

    def _run_overlapped(self, it: Iterator[Frame], sink: Callable[[FrameResult], None] | None, live: bool,
                        max_frames: int | None, on_frame: Callable[[FrameResult], bool | None] | None) -> int:
        """:meth:`run` in GPU mode: at most two frames in flight.

        With frame t's device work queued: frame t+1 is read (``decode``) and its upload queued;
        the host waits for frame t's results and finishes its tracking (filters, meshes,
        ``tracker.end``); frame t+1 is begun (tracker, ROIs) and its device work queued; then frame t
        is rendered and handed to the sink while the device computes frame t+1. Every frame goes
        through the same steps as in :meth:`process`, in the same order for the tracker, so the
        results equal :meth:`process` frame by frame.

        When ``on_frame`` stops the run after frame t, frame t+1 has already been begun: it is
        finished through tracking (the tracker and filters stand after frame t+1, as if processed)
        and dropped, not rendered, handed to the sink or counted. On an exception the device work in
        flight is waited for before it propagates.
        """
        stage = self.device_stage
        assert stage is not None
        n = 0

        def read() -> tuple[Frame | None, dict[str, float]]:
            ms: dict[str, float] = {}
            with timed(ms, "decode"):
                frame = next(it, None)
            return frame, ms

        def begin(frame: Frame, staged: Any, ms: dict[str, float]) -> tuple[PinholeCamera, list[TrackROI], Any]:
            camera, rois = self._begin(frame, ms)
            with timed(ms, "preprocess"):
                pending = stage.submit(staged, [r.box for r in rois], camera)
            return camera, rois, pending

        if max_frames is not None and max_frames <= 0:
            return 0
        frame, ms = read()
        if frame is None:
            return 0
        mode, overlays = self._mode(True, None)
        try:
            with timed(ms, "preprocess"):
                staged = stage.upload(frame.image)
            camera, rois, pending = begin(frame, staged, ms)
            while True:
                nxt: Frame | None = None
                if max_frames is None or n + 1 < max_frames:
                    nxt, nxt_ms = read()  # the host decodes frame t+1 while the device computes frame t
                    if nxt is not None:
                        with timed(nxt_ms, "preprocess"):
                            nxt_staged = stage.upload(nxt.image)
                faces = self._collect(frame, rois, pending, camera, ms)
                result = self._complete(frame, faces, camera, ms, mode, overlays)
                if nxt is not None:  # frame t+1 computes while frame t is rendered and written
                    nxt_camera, nxt_rois, nxt_pending = begin(nxt, nxt_staged, nxt_ms)
                self._render_result(result, camera, mode, overlays)
                n += 1
                go_on = self._deliver(result, sink, live, on_frame)
                if nxt is None:
                    break
                frame, ms, camera, rois, pending = nxt, nxt_ms, nxt_camera, nxt_rois, nxt_pending
                if not go_on:  # frame t+1 was begun: finish its tracking, drop it
                    self._complete(frame, self._collect(frame, rois, pending, camera, ms), camera, ms, None, ())
                    break
        finally:
            stage.drain()
        return n

    def close(self) -> None:
        """Release the renderers, the GPU mode's buffers and the detector."""
        if self.device_stage is not None:
            self.device_stage.close()
        for r in self._renderers.values():
            if hasattr(r, "release"):
                r.release()
        self._renderers.clear()
        self.tracker.close()
