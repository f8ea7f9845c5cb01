"""ModernGL face renderer: fitted faces drawn over their frame, and per-frame photo textures.

:class:`FaceRenderer` draws the frame as a full-screen background, then each face mesh on top
(depth test, back faces culled, counter-clockwise front faces as everywhere in the project)
in one of :data:`MODES`, then the :data:`OVERLAYS`, and reads the result back as an
``(H, W, 3)`` uint8 RGB image. :meth:`FaceRenderer.unwrap_texture` renders a face into its UV
map, sampling the frame at each texel's projection and masking texels the camera cannot see.

Conventions (``docs/conventions.md``): vertices are in the frame camera (OpenCV: +x right,
+y down, +z forward), metres; pixels have their origin at the top-left corner, pixel centres
at ``i + 0.5``. Every camera-view pass uses ``PinholeCamera.projection_matrix_gl(near, far)``
-- the project's single OpenCV -> OpenGL flip -- and nothing here flips y, negates z or
reverses winding. Geometry given in pixels (background, landmarks) is lifted onto a plane of
the camera frame with ``K^-1`` and goes through the same matrix (``shaders/image_plane.vert``),
so frame pixel ``(u, v)`` lands on output pixel ``(u, v)``.

Depth range: :data:`NEAR_M` = 0.05 m to :data:`FAR_M` = 20 m. Faces in front of a camera are
between ~0.2 m (a phone at arm's length, closer than anyone films a face) and a few metres;
with a 24-bit depth buffer the resolution at 1 m is ~1e-6 m, far below any mesh detail, so
one fixed range serves every frame. Both are constructor arguments.

Colours are written as given (albedo and SH in the library's [0, 1] RGB, no gamma), clamped
by the 8-bit framebuffer. ``moderngl`` is imported inside the functions that need it.

Speed: all GL objects are created once; a frame uploads the frame texture and, per face, one
``(G, 9)`` float32 stream (position, normal, albedo gathered from the ``(V, 3)`` arrays with one
numpy ``take`` through a static GL-vertex -> model-vertex index map). Normals are computed on
the CPU with :meth:`MeshTopology.vertex_normals` unless the face brings its own.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from mlanet.geometry.camera import PinholeCamera
from mlanet.geometry.sh import LAMBERT_FACTORS, SH_C0, SH_C1, SH_C2_XX_YY, SH_C2_XY, SH_C2_Z
from mlanet.params import UNIT_AMBIENT_SH_DC
from mlanet.shaders import load_shader
from mlanet.edge.mesh_topology import MeshTopology, _as_array, _to_numpy
from mlanet.edge.types import RuntimeStageError

__all__ = [
    "FAR_M",
    "MODES",
    "NEAR_M",
    "OVERLAYS",
    "TRACK_COLOURS",
    "FaceRenderer",
    "MeshTopology",
    "RenderFace",
    "camera_uniforms",
    "create_standalone_context",
    "shader_source",
]

log = logging.getLogger(__name__)

#: Near and far clipping planes (camera-frame z, metres); see the module docstring.
NEAR_M: float = 0.05
FAR_M: float = 20.0
#: Face drawing modes of :meth:`FaceRenderer.render` (``"none"``: depth only, for wireframe alone).
MODES: tuple[str, ...] = ("shaded", "photo", "albedo", "normals", "none")
#: Overlays of :meth:`FaceRenderer.render` (any combination).
OVERLAYS: tuple[str, ...] = ("wireframe", "landmarks")
#: Per-track colours (RGB in [0, 1]) chosen by ``RenderFace.color_id % len(TRACK_COLOURS)``.
TRACK_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.20, 0.80, 1.00),
    (1.00, 0.60, 0.10),
    (0.60, 1.00, 0.20),
    (1.00, 0.30, 0.70),
    (0.70, 0.50, 1.00),
    (1.00, 1.00, 0.30),
)
#: How far a tracked face's mesh colour is mixed towards its track colour.
TINT_STRENGTH: float = 0.25
LANDMARK_COLOUR: tuple[float, float, float] = (0.10, 1.00, 0.30)
WIREFRAME_COLOUR: tuple[float, float, float] = (0.85, 0.85, 0.85)
DEFAULT_ALBEDO: tuple[float, float, float] = (0.7, 0.7, 0.7)
#: Albedo of the grey surface that ``photo_shading`` blends towards.
PHOTO_GREY: tuple[float, float, float] = (0.7, 0.7, 0.7)
#: :meth:`FaceRenderer.unwrap_texture`: a texel's surface point may lie this far (metres) behind
#: the camera-view depth map and still count as visible (depth-map resolution, rasterisation).
OCCLUSION_TOLERANCE_M: float = 0.003

#: ``A_band(k) * c_k``: what the SH polynomials ``P_k`` of ``shaders/sh_lighting.glsl`` are scaled by.
_SH_WEIGHTS = np.array(LAMBERT_FACTORS) * np.array(
    [SH_C0, SH_C1, SH_C1, SH_C1, SH_C2_XY, SH_C2_XY, SH_C2_Z, SH_C2_XY, SH_C2_XX_YY]
)
_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.MULTILINE)
_STREAM_FORMAT = ("3f 3f 3f", "in_position", "in_normal", "in_albedo")  # the (G, 9) per-frame stream
#: Shaders (vertex, fragment) of each surface mode. "shaded" lights per vertex (Gouraud, see
#: shaders/face_shaded.vert): on llvmpipe a third of the overlay's cost went to per-pixel lighting.
_FACE_SHADERS = {
    "shaded": ("face_shaded.vert", "face_shaded.frag"),
    "photo": ("face_mesh.vert", "face_photo.frag"),
    "albedo": ("face_mesh.vert", "face_albedo.frag"),
    "normals": ("face_mesh.vert", "face_normals.frag"),
}


# ---------------------------------------------------------------------------------- helpers
def _import_moderngl() -> Any:
    try:
        import moderngl
    except ImportError as exc:
        raise RuntimeStageError("the GL renderer needs moderngl: pip install -e '.[gl]'") from exc
    return moderngl


def create_standalone_context() -> Any:
    """An offscreen ModernGL context (EGL; Mesa llvmpipe is enough), GL 3.3 or newer.

    Raises :class:`RuntimeStageError` with the packages to install when EGL is unavailable.
    """
    moderngl = _import_moderngl()
    try:
        ctx = moderngl.create_standalone_context(backend="egl")
    except Exception as exc:  # noqa: BLE001 - every failure here means "no headless GL"
        raise RuntimeStageError(
            f"no EGL OpenGL context ({type(exc).__name__}: {exc}); install libegl1 libgl1 libegl-mesa0 "
            "libgl1-mesa-dri (Debian/Ubuntu), or render without GL"
        ) from exc
    if ctx.version_code < 330:
        version = ctx.version_code
        ctx.release()
        raise RuntimeStageError(f"the GL renderer needs OpenGL 3.3, the EGL context offers {version}")
    log.debug("EGL context: %s, GL %s", ctx.info.get("GL_RENDERER"), ctx.version_code)
    return ctx


def shader_source(name: str) -> str:
    """Text of ``shaders/<name>`` with ``#include "file"`` lines replaced by that file (one level)."""
    return _INCLUDE.sub(lambda m: load_shader(m.group(1)), load_shader(name))


def _intrinsics(camera: PinholeCamera) -> tuple[float, float, float, float]:
    return tuple(float(t[0]) for t in (camera.fx, camera.fy, camera.cx, camera.cy))  # type: ignore[return-value]


def _col_major(m: np.ndarray) -> bytes:
    """Bytes of a row-major numpy matrix for a GLSL (column-major) ``mat3``/``mat4`` uniform."""
    return np.ascontiguousarray(np.asarray(m, dtype=np.float32).T).tobytes()


def camera_uniforms(camera: PinholeCamera, near: float = NEAR_M, far: float = FAR_M) -> dict[str, Any]:
    """The camera uniforms of the shaders, as bytes for ``Uniform.write`` / values.

    ``u_proj``: ``camera.projection_matrix_gl(near, far)`` (the OpenCV -> GL flip) column-major;
    ``u_K``, ``u_K_inv``: intrinsics and inverse column-major; ``u_image_size``: ``(W, H)``;
    ``u_plane_depth``: where ``image_plane.vert`` puts pixel geometry, ``sqrt(near * far)`` m.
    """
    proj = camera.projection_matrix_gl(near, far)[0].detach().cpu().double().numpy()
    K = camera.intrinsics()[0].detach().cpu().double().numpy()
    return {
        "u_proj": _col_major(proj),
        "u_K": _col_major(K),
        "u_K_inv": _col_major(np.linalg.inv(K)),
        "u_image_size": (float(camera.width), float(camera.height)),
        "u_plane_depth": math.sqrt(near * far),
    }


def _set(program: Any, name: str, value: Any) -> None:
    """Set uniform ``name`` if the compiled program kept it (unused uniforms are optimised out)."""
    member = program.get(name, None)
    if member is None:
        return
    if isinstance(value, bytes):
        member.write(value)
    else:
        member.value = value


# ---------------------------------------------------------------------------------- records
@dataclass
class RenderFace:
    """One face to draw, in the frame camera.

    Attributes:
        vertices: (V, 3) float32 metres, frame camera (OpenCV frame).
        albedo: (V, 3) float RGB in [0, 1]; ``None``: uniform grey.
        lighting: (3, 9) channel-major SH coefficients (or flat (27,)), as in
            :mod:`mlanet.geometry.sh`; ``None``: unit ambient light (shading = albedo).
        landmarks2d: optional (L, 2) image pixels for the ``"landmarks"`` overlay; ``None``: the
            topology's ``landmark_index`` vertices projected with the camera.
        color_id: optional track id; colours the wireframe and landmarks (and tints the
            ``"normals"`` view) with ``TRACK_COLOURS[color_id % len(TRACK_COLOURS)]``; shaded,
            albedo and photo surfaces keep their own colours.
        normals: optional (V, 3) unit camera-frame normals; ``None``: computed from the vertices.
    """

    vertices: np.ndarray
    albedo: np.ndarray | None = None
    lighting: np.ndarray | None = None
    landmarks2d: np.ndarray | None = None
    color_id: int | None = None
    normals: np.ndarray | None = None


# ---------------------------------------------------------------------------------- renderer
class FaceRenderer:
    """Offscreen (or caller-context) ModernGL renderer of face meshes over video frames.

    Args:
        width, height: output size in pixels; frames and cameras must have this size.
        topology: the face mesh's :class:`MeshTopology` (all faces share it).
        ctx: a ModernGL context to render in (e.g. :attr:`mlanet.edge.window.GlfwWindow.ctx`);
            ``None`` creates an offscreen EGL context owned (and released) by the renderer.
        samples: MSAA samples (0 = off).
        near, far: clipping planes, metres (camera-frame z).
        landmark_size: side of the landmark squares in pixels (default scales with the image).

    Use as a context manager or call :meth:`release`.
    """

    def __init__(
        self,
        width: int,
        height: int,
        topology: MeshTopology,
        *,
        ctx: Any = None,
        samples: int = 0,
        near: float = NEAR_M,
        far: float = FAR_M,
        landmark_size: float | None = None,
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(topology, MeshTopology):
            raise TypeError(
                f"topology must be a MeshTopology (MeshTopology.from_face_model(model)), got {type(topology).__name__}"
            )
        if not 0.0 < near < far < math.inf:
            raise ValueError(f"need 0 < near < far < inf (metres), got near={near}, far={far}")
        self._mgl = _import_moderngl()
        self.width, self.height = int(width), int(height)
        self.topology = topology
        self.near, self.far = float(near), float(far)
        self.landmark_size = float(landmark_size or max(3.0, min(self.width, self.height) / 150.0))
        self._owns_ctx = ctx is None
        self.ctx = create_standalone_context() if ctx is None else ctx
        self._make_current()
        self._objects: list[Any] = []
        self._uv_targets: dict[int, tuple[Any, np.ndarray]] = {}
        self._camera_key: tuple[float, ...] | None = None
        #: After :meth:`render`: ``(x0, y0, x1, y1)`` outside which the output is the frame itself
        #: (``(0, 0, 0, 0)``: nothing drawn), or None (the whole frame was drawn).
        self.last_box: tuple[int, int, int, int] | None = None
        try:
            self._build(samples)
        except BaseException:
            self.release()
            raise
        log.debug("FaceRenderer %dx%d: %d GL vertices, %d triangles", width, height, self._n_gl, topology.n_triangles)

    # ------------------------------------------------------------------ GL objects
    def _keep(self, obj: Any) -> Any:
        self._objects.append(obj)
        return obj

    def _program(self, vertex: str, fragment: str) -> Any:
        try:
            program = self.ctx.program(vertex_shader=shader_source(vertex), fragment_shader=shader_source(fragment))
        except self._mgl.Error as exc:
            raise RuntimeStageError(f"shaders {vertex} + {fragment} do not compile/link: {exc}") from exc
        return self._keep(program)

    def _target(self, size: tuple[int, int], samples: int = 0, depth: bool = False) -> Any:
        """An RGBA8 framebuffer (with a depth buffer if ``depth``) whose attachments we release."""
        colour = self._keep(self.ctx.renderbuffer(size, 4, samples=samples))
        depth_rb = self._keep(self.ctx.depth_renderbuffer(size, samples=samples)) if depth else None
        return self._keep(self.ctx.framebuffer(color_attachments=[colour], depth_attachment=depth_rb))

    def _build(self, samples: int) -> None:
        mgl, ctx, size = self._mgl, self.ctx, (self.width, self.height)
        vertex_of, gl_uv, gl_tri = self.topology.gl_vertices
        self._vertex_of = vertex_of
        self._n_gl = len(vertex_of)
        self._vertex_data = np.zeros((self.topology.n_vertices, 9), np.float32)  # position | normal | albedo
        self._stream_data = np.zeros((self._n_gl, 9), np.float32)

        self._stream = self._keep(ctx.buffer(reserve=self._stream_data.nbytes, dynamic=True))
        uv_buffer = self._keep(ctx.buffer(gl_uv.astype(np.float32).tobytes()))
        triangles = self._keep(ctx.buffer(gl_tri.tobytes()))
        edges = self._keep(ctx.buffer(self.topology.gl_edges.tobytes()))

        def mesh_vao(program: Any, index: Any, extra: Sequence[tuple] = ()) -> Any:
            content = [(self._stream, *_STREAM_FORMAT), *extra]
            vao = ctx.vertex_array(program, content, index_buffer=index, index_element_size=4, skip_errors=True)
            return self._keep(vao)

        self._face_programs = {mode: self._program(vert, frag) for mode, (vert, frag) in _FACE_SHADERS.items()}
        self._face_vaos = {mode: mesh_vao(p, triangles) for mode, p in self._face_programs.items()}
        self._depth_vao = mesh_vao(self._program("face_mesh.vert", "depth_only.frag"), triangles)
        self._wire_program = self._program("face_mesh.vert", "flat_color.frag")
        self._wire_vao = mesh_vao(self._wire_program, edges)
        self._unwrap_program = self._program("uv_unwrap.vert", "uv_unwrap.frag")
        self._unwrap_vao = mesh_vao(self._unwrap_program, triangles, [(uv_buffer, "2f", "in_uv")])

        self._background_program = self._program("image_plane.vert", "background.frag")
        corners = np.array([[0, 0], [self.width, 0], [0, self.height], [self.width, self.height]], np.float32)
        self._background_vao = self._keep(
            ctx.vertex_array(self._background_program, [(self._keep(ctx.buffer(corners.tobytes())), "2f", "in_pixel")])
        )
        self._points_program = self._program("image_plane.vert", "flat_color.frag")
        self._points = self._keep(ctx.buffer(reserve=1024 * 8, dynamic=True))
        self._points_vao = self._keep(ctx.vertex_array(self._points_program, [(self._points, "2f", "in_pixel")]))

        self._frame_texture = self._keep(ctx.texture(size, 3, dtype="f1"))
        # The background samples texel centres exactly: NEAREST gives the same pixels, cheaper on llvmpipe.
        self._nearest = self._keep(ctx.sampler(repeat_x=False, repeat_y=False, filter=(mgl.NEAREST, mgl.NEAREST)))
        self._linear = self._keep(ctx.sampler(repeat_x=False, repeat_y=False, filter=(mgl.LINEAR, mgl.LINEAR)))

        samples = min(int(samples), ctx.max_samples) if samples else 0
        self._fbo = self._target(size, samples, depth=True)
        self._resolve = self._target(size) if samples else None  # MSAA resolves into this one
        self._readback = np.empty((self.height, self.width, 3), np.uint8)

        self._depth_texture = self._keep(ctx.depth_texture(size))
        self._depth_texture.compare_func = ""  # sample raw depth, not a shadow comparison
        self._depth_texture.filter = (mgl.NEAREST, mgl.NEAREST)
        self._depth_fbo = self._keep(ctx.framebuffer(depth_attachment=self._depth_texture))

        for program in self._all_programs():
            _set(program, "u_point_size", self.landmark_size)
            _set(program, "u_frame", 0)
            _set(program, "u_depth", 1)
            _set(program, "u_near", self.near)
            _set(program, "u_far", self.far)
            _set(program, "u_grey", PHOTO_GREY)

    def _all_programs(self) -> list[Any]:
        return [
            *self._face_programs.values(),
            self._depth_vao.program,
            self._wire_program,
            self._unwrap_program,
            self._background_program,
            self._points_program,
        ]

    def release(self) -> None:
        """Free every GL object (and the context, when the renderer created it). Idempotent."""
        if self.ctx is not None:
            self._make_current()
        for obj in reversed(self._objects):
            obj.release()
        self._objects.clear()
        self._uv_targets.clear()
        if self._owns_ctx and self.ctx is not None:
            self.ctx.release()
        self.ctx = None

    def _make_current(self) -> None:
        """Make our context current: another may be (a window's, a second renderer's), and ModernGL
        issues GL calls to whichever is. (Not ``with ctx:``: leaving it makes *no* context current
        under EGL.)"""
        self.ctx.__enter__()

    def __enter__(self) -> "FaceRenderer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ inputs
    def _check_frame(self, frame: Any) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.shape != (self.height, self.width, 3):
            got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
            raise ValueError(f"frame_rgb must be a ({self.height}, {self.width}, 3) uint8 RGB array, got {got}")
        return np.ascontiguousarray(frame)

    def _use_camera(self, camera: PinholeCamera) -> None:
        """Upload the camera's projection (the single OpenCV -> GL flip) and intrinsics, when changed."""
        if not isinstance(camera, PinholeCamera):
            raise TypeError(f"camera must be a PinholeCamera, got {type(camera).__name__}")
        if camera.batch_size != 1 or (camera.width, camera.height) != (self.width, self.height):
            raise ValueError(
                f"camera must be one camera of size {self.width}x{self.height}, got batch "
                f"{camera.batch_size} of size {camera.width}x{camera.height}"
            )
        key = _intrinsics(camera)
        if key == self._camera_key:
            return
        values = camera_uniforms(camera, self.near, self.far)
        for program in self._all_programs():
            for name, value in values.items():
                _set(program, name, value)
        self._camera_key = key

    def _upload_face(self, face: RenderFace, index: int) -> None:
        """Gather position / normal / albedo into the GL stream of face ``index``; one buffer write."""
        if not isinstance(face, RenderFace):
            raise TypeError(f"faces[{index}] must be a RenderFace, got {type(face).__name__}")
        V = self.topology.n_vertices
        data = self._vertex_data
        verts = _as_array(face.vertices, f"faces[{index}].vertices", (V, 3), f"({V}, 3)")
        data[:, 0:3] = verts
        if face.normals is not None:
            data[:, 3:6] = _as_array(face.normals, f"faces[{index}].normals", (V, 3), f"({V}, 3)")
        else:
            data[:, 3:6] = self.topology.vertex_normals(verts)
        if face.albedo is not None:
            data[:, 6:9] = _as_array(face.albedo, f"faces[{index}].albedo", (V, 3), f"({V}, 3)")
        else:
            data[:, 6:9] = DEFAULT_ALBEDO
        np.take(data, self._vertex_of, axis=0, out=self._stream_data, mode="clip")  # indices valid by construction
        self._stream.write(self._stream_data)

    @staticmethod
    def _sh_uniform(face: RenderFace, index: int) -> bytes:
        """``u_sh`` (9 vec3): channel-major (3, 9) lighting transposed, times ``A_band(k) * c_k``."""
        if face.lighting is None:
            lighting = np.zeros((3, 9))
            lighting[:, 0] = UNIT_AMBIENT_SH_DC
        else:
            lighting = _to_numpy(face.lighting).astype(np.float64)
            if lighting.shape not in ((3, 9), (27,)):
                raise ValueError(
                    f"faces[{index}].lighting must have shape (3, 9) or (27,) (channel-major SH), got {lighting.shape}"
                )
            lighting = lighting.reshape(3, 9)
        return (lighting.T * _SH_WEIGHTS[:, None]).astype(np.float32).tobytes()

    # ------------------------------------------------------------------ render
    def render(
        self,
        frame_rgb: np.ndarray,
        faces: Sequence[RenderFace],
        camera: PinholeCamera,
        mode: str = "shaded",
        overlays: Iterable[str] = ("landmarks",),
        *,
        alpha: float = 1.0,
        photo_shading: float = 0.0,
    ) -> np.ndarray:
        """The frame with the faces drawn over it, ``(H, W, 3)`` uint8 RGB (top row first).

        Args:
            frame_rgb: (H, W, 3) uint8 RGB, the renderer's size; drawn as the background.
            faces: the faces to draw (frame camera).
            camera: the frame's :class:`PinholeCamera` (one camera, the renderer's size).
            mode: one of :data:`MODES`: ``"shaded"`` (per-pixel SH shading of the albedo),
                ``"photo"`` (textured with the frame through the projection), ``"albedo"``
                (unlit), ``"normals"`` (debug colours ``0.5 n + 0.5``, camera frame) or
                ``"none"`` (no surface; hides what it occludes, e.g. for a wireframe alone).
            overlays: any of :data:`OVERLAYS`: ``"wireframe"`` (mesh edges, hidden lines
                removed), ``"landmarks"`` (squares of ``landmark_size`` px, not occluded).
            alpha: opacity of the mesh over the frame (1 opaque); only the front-most surface
                is blended.
            photo_shading: ``"photo"`` mode only: blend from the photo (0) towards a grey
                surface lit by the face's SH lighting (1).
        """
        frame = self._check_frame(frame_rgb)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        overlays = (overlays,) if isinstance(overlays, str) else tuple(overlays)
        unknown = [o for o in overlays if o not in OVERLAYS]
        if unknown:
            raise ValueError(f"overlays must be a subset of {OVERLAYS}, got {unknown}")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= photo_shading <= 1.0:
            raise ValueError(f"alpha and photo_shading must lie in [0, 1], got {alpha}, {photo_shading}")
        if self.ctx is None:
            raise RuntimeStageError("this FaceRenderer has been released")
        faces = list(faces)
        self._make_current()
        self._use_camera(camera)
        mgl, ctx = self._mgl, self.ctx
        # Only the part of the frame the faces cover is uploaded, drawn and read back; the rest of
        # the output is the frame itself (the background pass reproduces frame pixels exactly).
        region = self._face_region(faces, camera, overlays) if self._resolve is None else None
        self.last_box = region
        if region is not None and (region[2] <= region[0] or region[3] <= region[1]):
            self.last_box = (0, 0, 0, 0)
            return frame.copy()  # nothing of any face is in view

        if region is None:
            self._frame_texture.write(frame)
            gl_box = None
        else:
            x0, y0, x1, y1 = region
            self._frame_texture.write(np.ascontiguousarray(frame[y0:y1, x0:x1]), viewport=(x0, y0, x1 - x0, y1 - y0))
            gl_box = (x0, self.height - y1, x1 - x0, y1 - y0)  # framebuffer rows are bottom-up
        self._fbo.scissor = gl_box
        try:
            self._colour_writes(False)  # the background covers every pixel: clear depth only
            self._fbo.clear(depth=1.0, viewport=gl_box)
            self._colour_writes(True)
            ctx.enable_only(mgl.NOTHING)
            self._frame_texture.use(0)
            self._nearest.use(0)
            self._background_vao.render(mgl.TRIANGLE_STRIP)
            self._linear.use(0)

            wireframe = "wireframe" in overlays
            for i, face in enumerate(faces):
                self._upload_face(face, i)
                self._draw_face(face, i, mode, wireframe, float(alpha), float(photo_shading))
            if "landmarks" in overlays:
                self._draw_landmarks(faces, camera)
            if region is None:
                return self._read()
            out = frame.copy()
            h, w = y1 - y0, x1 - x0
            view = self._readback.reshape(-1)[: h * w * 3].reshape(h, w, 3)  # contiguous
            self._fbo.read_into(view, viewport=gl_box, components=3, alignment=1)
            out[y0:y1, x0:x1] = view[::-1]
            return out
        finally:
            self._fbo.scissor = None
            self._fbo.use()

    def _face_region(self, faces: list[RenderFace], camera: PinholeCamera,
                     overlays: tuple[str, ...]) -> tuple[int, int, int, int] | None:
        """The pixel box ``(x0, y0, x1, y1)`` (top-left origin, end exclusive, clipped to the frame)
        that holds everything drawn for ``faces``: projected vertices, landmark squares, line
        widths and a margin for bilinear photo sampling. An empty box when nothing is in view;
        None (draw the whole frame) when a vertex lies at or behind the near plane."""
        fx, fy, cx, cy = _intrinsics(camera)
        lo, hi = np.array([np.inf, np.inf]), np.array([-np.inf, -np.inf])
        for i, face in enumerate(faces):
            v = _as_array(face.vertices, f"faces[{i}].vertices", (self.topology.n_vertices, 3),
                          f"({self.topology.n_vertices}, 3)")
            z = v[:, 2]
            if not (z > self.near).all():
                return None
            uv = np.stack([fx * v[:, 0] / z + cx, fy * v[:, 1] / z + cy], axis=1)
            if "landmarks" in overlays and face.landmarks2d is not None:
                uv = np.concatenate([uv, np.asarray(face.landmarks2d, np.float64).reshape(-1, 2)])
            lo, hi = np.minimum(lo, uv.min(0)), np.maximum(hi, uv.max(0))
        if not faces:
            return (0, 0, 0, 0)
        margin = math.ceil(self.landmark_size) + 3
        x0, y0 = (max(0, int(math.floor(c)) - margin) for c in lo)
        x1 = min(self.width, int(math.ceil(hi[0])) + margin)
        y1 = min(self.height, int(math.ceil(hi[1])) + margin)
        return (x0, y0, max(x0, x1), max(y0, y1))

    def _colour_writes(self, on: bool) -> None:
        """Enable/disable colour writes of the render target (ModernGL applies a framebuffer's
        colour mask in ``use()``, and its ``clear()`` leaves the mask it applied in place)."""
        self._fbo.color_mask = (on, on, on, on)
        self._fbo.use()

    def _draw_face(
        self, face: RenderFace, index: int, mode: str, wireframe: bool, alpha: float, photo_shading: float
    ) -> None:
        mgl, ctx = self._mgl, self.ctx
        colour = TRACK_COLOURS[face.color_id % len(TRACK_COLOURS)] if face.color_id is not None else None
        ctx.enable_only(mgl.DEPTH_TEST | mgl.CULL_FACE)  # default GL_CCW front faces, cull GL_BACK
        ctx.depth_func = "<"
        ctx.polygon_offset = (1.0, 1.0) if wireframe else (0.0, 0.0)  # push surfaces behind their edges
        if mode == "none" or alpha < 1.0:  # depth pre-pass: later passes touch only the front-most surface
            self._colour_writes(False)
            self._depth_vao.render(mgl.TRIANGLES)
            self._colour_writes(True)
            ctx.depth_func = "<="
        if mode != "none":
            program = self._face_programs[mode]
            _set(program, "u_sh", self._sh_uniform(face, index))
            _set(program, "u_alpha", alpha)
            # the surface keeps its own colours (a user must see their skin tone and the fitted light);
            # the track colour marks the wireframe and landmarks, and tints only the "normals" debug view
            tint = (*colour, TINT_STRENGTH) if colour and mode == "normals" else (0.0, 0.0, 0.0, 0.0)
            _set(program, "u_tint", tint)
            _set(program, "u_photo_shading", photo_shading)
            if alpha < 1.0:
                ctx.enable(mgl.BLEND)
                ctx.blend_func = mgl.SRC_ALPHA, mgl.ONE_MINUS_SRC_ALPHA
            self._face_vaos[mode].render(mgl.TRIANGLES)
            ctx.disable(mgl.BLEND)
        ctx.polygon_offset = (0.0, 0.0)
        if wireframe:
            ctx.depth_func = "<="
            line = tuple(0.5 * (a + b) for a, b in zip(WIREFRAME_COLOUR, colour)) if colour else WIREFRAME_COLOUR
            _set(self._wire_program, "u_color", (*line, 1.0))
            self._wire_vao.render(mgl.LINES)
        ctx.depth_func = "<"

    def _draw_landmarks(self, faces: list[RenderFace], camera: PinholeCamera) -> None:
        mgl, ctx = self._mgl, self.ctx
        ctx.enable_only(mgl.PROGRAM_POINT_SIZE)
        for i, face in enumerate(faces):
            if face.landmarks2d is not None:
                points = _as_array(face.landmarks2d, f"faces[{i}].landmarks2d", (None, 2), "(L, 2) image pixels")
            elif self.topology.landmark_index is not None:
                import torch

                verts = np.asarray(face.vertices, np.float32)[self.topology.landmark_index]
                points = camera.project(torch.from_numpy(verts)[None].to(camera.dtype))[0].numpy().astype(np.float32)
                points = points[verts[:, 2] > self.near]
            else:
                continue
            if len(points) == 0:
                continue
            if points.nbytes > self._points.size:
                self._points.orphan(points.nbytes)
            self._points.write(points)
            colour = TRACK_COLOURS[face.color_id % len(TRACK_COLOURS)] if face.color_id is not None else LANDMARK_COLOUR
            _set(self._points_program, "u_color", (*colour, 1.0))
            self._points_vao.render(mgl.POINTS, vertices=len(points))

    def _read(self) -> np.ndarray:
        source = self._fbo
        if self._resolve is not None:
            self.ctx.copy_framebuffer(self._resolve, self._fbo)
            source = self._resolve
        source.read_into(self._readback, components=3, alignment=1)
        return np.ascontiguousarray(self._readback[::-1])  # GL rows are bottom-up

    # ------------------------------------------------------------------ photo texture
    def _uv_target(self, size: int) -> tuple[Any, np.ndarray]:
        if size not in self._uv_targets:
            self._uv_targets[size] = (self._target((size, size)), np.empty((size, size, 4), np.uint8))
        return self._uv_targets[size]

    def unwrap_texture(
        self,
        frame_rgb: np.ndarray,
        face: RenderFace,
        camera: PinholeCamera,
        size: int = 512,
        *,
        depth_tolerance: float = OCCLUSION_TOLERANCE_M,
        min_facing: float = 0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This frame's photo texture of ``face`` in the face model's UV layout.

        Renders into UV space: each texel's surface point is projected into the frame and the
        frame is sampled there (bilinear). A texel is visible when its point is in front of the
        camera, inside the image, facing the camera (``n . to_camera > min_facing``) and not
        occluded: its depth may exceed the camera-view depth map (rendered first,
        shadow-map style) by at most ``depth_tolerance`` metres.

        Returns:
            texture: (size, size, 3) uint8 RGB, top row = ``v = 1`` (an ordinary image for the
                model's bottom-left-origin UVs: texel ``(row, col)`` covers
                ``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size``); 0 where not visible.
            visible_mask: (size, size) bool, False for occluded, back-facing, off-image and
                uncovered texels.
        """
        frame = self._check_frame(frame_rgb)
        if self.ctx is None:
            raise RuntimeStageError("this FaceRenderer has been released")
        limit = self.ctx.info["GL_MAX_RENDERBUFFER_SIZE"]
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 0 < size <= limit:
            raise ValueError(f"size must be an int in [1, {limit}] (texels), got {size!r}")
        self._make_current()
        self._use_camera(camera)
        mgl, ctx = self._mgl, self.ctx
        self._upload_face(face, 0)

        self._depth_fbo.use()  # camera-view depth map
        self._depth_fbo.clear(depth=1.0)
        ctx.enable_only(mgl.DEPTH_TEST | mgl.CULL_FACE)
        ctx.depth_func = "<"
        ctx.polygon_offset = (0.0, 0.0)
        self._depth_vao.render(mgl.TRIANGLES)

        fbo, rgba = self._uv_target(int(size))
        fbo.use()
        fbo.clear(0.0, 0.0, 0.0, 0.0)
        ctx.enable_only(mgl.NOTHING)  # UV winding says nothing about facing; the shader decides
        self._frame_texture.write(frame)
        self._frame_texture.use(0)
        self._linear.use(0)
        self._depth_texture.use(1)
        _set(self._unwrap_program, "u_depth_tolerance", float(depth_tolerance))
        _set(self._unwrap_program, "u_min_facing", float(min_facing))
        self._unwrap_vao.render(mgl.TRIANGLES)
        fbo.read_into(rgba, components=4, alignment=1)
        rgba = rgba[::-1]
        return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3] >= 128
