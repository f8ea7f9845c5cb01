"""A live preview window: GLFW + ModernGL, showing RGB images letterboxed, reporting key presses.

``glfw`` and ``moderngl`` are imported when a window is opened. Draw text (HUD) into the image
before :meth:`GlfwWindow.show` (e.g. ``cv2.putText``); the window only blits images. The
window's :attr:`GlfwWindow.ctx` can be handed to :class:`mlanet.edge.gl_renderer.FaceRenderer`
so rendering and display share one context.

The image is drawn with the same pixel-geometry path as the renderer's background
(``shaders/image_plane.vert`` + ``background.frag``, through a :class:`PinholeCamera` of the
image's size), so image row 0 is at the top and no code here flips y.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from typing import Any

import numpy as np

from mlanet.geometry.camera import PinholeCamera
from mlanet.edge.gl_renderer import camera_uniforms, shader_source
from mlanet.edge.types import RuntimeStageError

__all__ = ["GlfwWindow", "NO_DISPLAY_MESSAGE"]

log = logging.getLogger(__name__)

NO_DISPLAY_MESSAGE = "no display: run with --no-window or set DISPLAY"


def _unbind_egl_context() -> None:
    """Make no EGL context current on this thread (best effort; nothing to do without libEGL).

    With Mesa + glvnd, GLFW cannot create a GLX window context on a thread where an EGL context
    (e.g. an offscreen renderer's, or one created and released by a GL availability check) is
    still current: ``glXMakeCurrent`` fails with BadAccess and Xlib exits the process.
    """
    import ctypes

    try:
        egl = ctypes.CDLL("libEGL.so.1")
    except OSError:
        return
    egl.eglGetCurrentContext.restype = ctypes.c_void_p
    if not egl.eglGetCurrentContext():
        return
    egl.eglGetCurrentDisplay.restype = ctypes.c_void_p
    egl.eglMakeCurrent.argtypes = [ctypes.c_void_p] * 4
    egl.eglMakeCurrent(egl.eglGetCurrentDisplay(), None, None, None)


def _key_names(glfw: Any) -> dict[int, str]:
    names = {
        glfw.KEY_ESCAPE: "escape",
        glfw.KEY_SPACE: "space",
        glfw.KEY_ENTER: "enter",
        glfw.KEY_TAB: "tab",
        glfw.KEY_BACKSPACE: "backspace",
        glfw.KEY_LEFT: "left",
        glfw.KEY_RIGHT: "right",
        glfw.KEY_UP: "up",
        glfw.KEY_DOWN: "down",
        glfw.KEY_MINUS: "-",
        glfw.KEY_EQUAL: "=",
    }
    names.update({getattr(glfw, f"KEY_{c}"): c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"})
    names.update({getattr(glfw, f"KEY_F{i}"): f"f{i}" for i in range(1, 13)})
    return names


class GlfwWindow:
    """A resizable window with a GL 3.3 core ModernGL context.

    Args:
        width, height: initial window size in screen coordinates.
        title: window title.
        vsync: wait for the display's refresh in :meth:`show` (off: never throttles the pipeline).

    Raises:
        RuntimeStageError: no display (``DISPLAY``/``WAYLAND_DISPLAY`` unset or GLFW cannot
            initialise), glfw/moderngl missing, or no GL 3.3 core context.
    """

    def __init__(self, width: int, height: int, title: str = "MLANet", *, vsync: bool = False) -> None:
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        try:
            import glfw
            import moderngl
        except ImportError as exc:
            raise RuntimeStageError(f"the live window needs glfw and moderngl ({exc}): pip install -e '.[gl]'") from exc
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise RuntimeStageError(NO_DISPLAY_MESSAGE)
        self._glfw, self._mgl = glfw, moderngl
        self._window: Any = None  # a pyGLFW window handle (ctypes pointer)
        self.ctx: Any = None  # the moderngl.Context (None once closed)
        self._objects: list[Any] = []  # moderngl objects released by close(), newest last
        self._texture: Any = None  # the frame's moderngl.Texture, made at the first draw and on a size change
        self._keys: list[str] = []
        errors: list[str] = []
        def on_error(code: int, text: Any) -> None:
            errors.append(f"{code}: {text.decode() if isinstance(text, bytes) else text}")

        glfw.set_error_callback(on_error)
        try:
            ok = glfw.init()
        except Exception as exc:  # noqa: BLE001 - pyGLFW may raise GLFWError depending on its ERROR_REPORTING
            ok, errors = False, [*errors, str(exc)]
        if not ok:
            reason = "; ".join(errors) or "unknown error"
            raise RuntimeStageError(f"{NO_DISPLAY_MESSAGE} (GLFW cannot initialise: {reason})")
        try:
            glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
            glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
            glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
            glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
            _unbind_egl_context()
            self._window = glfw.create_window(int(width), int(height), str(title), None, None)
            if not self._window:
                reason = "; ".join(errors) or "unknown error"
                raise RuntimeStageError(f"cannot open a window with an OpenGL 3.3 core context: {reason}")
            glfw.make_context_current(self._window)
            glfw.swap_interval(1 if vsync else 0)
            self.ctx = moderngl.create_context(require=330)
            self._names = _key_names(glfw)
            glfw.set_key_callback(self._window, self._on_key)
            self._program = self._keep(
                self.ctx.program(
                    vertex_shader=shader_source("image_plane.vert"), fragment_shader=shader_source("background.frag")
                )
            )
            self._program["u_frame"].value = 0
            self._corners = self._keep(self.ctx.buffer(reserve=4 * 2 * 4))
            self._vao = self._keep(self.ctx.vertex_array(self._program, [(self._corners, "2f", "in_pixel")]))
            self._sampler = self._keep(
                self.ctx.sampler(repeat_x=False, repeat_y=False, filter=(moderngl.LINEAR, moderngl.LINEAR))
            )
        except BaseException:
            self.close()
            raise
        log.debug("window %dx%d: %s", width, height, self.ctx.info.get("GL_RENDERER"))

    def _keep(self, obj: Any) -> Any:
        self._objects.append(obj)
        return obj

    # ------------------------------------------------------------------ events
    def _on_key(self, window: Any, key: int, scancode: int, action: int, mods: int) -> None:
        if action != self._glfw.PRESS:
            return
        name = self._names.get(key)
        if name is None:
            name = self._glfw.get_key_name(key, scancode) or f"key{key}"
        self._keys.append(name)

    def poll(self) -> list[str]:
        """Process window events; the names of the keys pressed since the last call, in order.

        Names: ``"a"``..``"z"``, ``"0"``..``"9"``, ``"escape"``, ``"space"``, ``"enter"``, ``"tab"``,
        ``"backspace"``, ``"left"``, ``"right"``, ``"up"``, ``"down"``, ``"f1"``..``"f12"``, else
        GLFW's key name or ``"key<code>"``.
        """
        self._glfw.poll_events()
        keys, self._keys = self._keys, []
        return keys

    @property
    def should_close(self) -> bool:
        """True once the user asked to close the window (close button / window manager)."""
        return self._window is None or bool(self._glfw.window_should_close(self._window))

    # ------------------------------------------------------------------ drawing
    def draw(self, image: np.ndarray) -> None:
        """Draw ``image`` (H, W, 3) uint8 RGB into the back buffer, scaled to fit, aspect kept (black bars)."""
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {got}")
        if self.ctx is None:
            raise RuntimeStageError("this window has been closed")
        mgl, ctx = self._mgl, self.ctx
        _unbind_egl_context()  # a renderer's offscreen context may be current
        self._glfw.make_context_current(self._window)
        h, w = image.shape[:2]
        if self._texture is None or self._texture.size != (w, h):
            if self._texture is not None:
                self._texture.release()
            self._texture = ctx.texture((w, h), 3, dtype="f1")
            camera = PinholeCamera.from_fov(w, h, math.radians(60.0))  # any camera of this size
            for name, value in camera_uniforms(camera).items():
                member = self._program.get(name, None)
                if member is not None:
                    member.write(value) if isinstance(value, bytes) else setattr(member, "value", value)
            self._corners.write(np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float32).tobytes())
        self._texture.write(np.ascontiguousarray(image))
        fb_w, fb_h = self._glfw.get_framebuffer_size(self._window)
        screen = ctx.screen
        screen.use()
        screen.viewport = (0, 0, fb_w, fb_h)
        ctx.clear(0.0, 0.0, 0.0, 1.0)
        if fb_w <= 0 or fb_h <= 0:  # minimised
            return
        scale = min(fb_w / w, fb_h / h)
        vw, vh = max(1, round(w * scale)), max(1, round(h * scale))
        screen.viewport = ((fb_w - vw) // 2, (fb_h - vh) // 2, vw, vh)
        ctx.enable_only(mgl.NOTHING)
        self._texture.use(0)
        self._sampler.use(0)
        self._vao.render(mgl.TRIANGLE_STRIP)

    def show(self, image: np.ndarray) -> None:
        """:meth:`draw` ``image`` and present it (swap buffers)."""
        self.draw(image)
        self._glfw.swap_buffers(self._window)

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release GL objects, destroy the window and terminate GLFW. Idempotent."""
        for obj in reversed(self._objects):
            obj.release()
        self._objects.clear()
        if self._texture is not None:
            self._texture.release()
            self._texture = None
        if self.ctx is not None:
            self.ctx.release()
            self.ctx = None
        if self._window is not None:
            self._glfw.destroy_window(self._window)
            self._window = None
        self._glfw.terminate()

    def __enter__(self) -> "GlfwWindow":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
