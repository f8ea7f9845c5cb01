"""Batched pinhole camera in pixels and the OpenCV camera frame; the one OpenCV -> OpenGL flip.

Conventions (see ``docs/conventions.md``):

- Image pixels: continuous coordinates ``(u, v)`` with the origin at the top-left corner of
  the top-left pixel, +u right, +v down; the centre of pixel ``(i, j)`` (column ``i``, row
  ``j``) is ``(i + 0.5, j + 0.5)``. A centred principal point is ``(width / 2, height / 2)``.
- Camera frame (OpenCV): +x right, +y down, +z forward (viewing direction), metres.
- Projection: ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (focal lengths in pixels).

:meth:`PinholeCamera.projection_matrix_gl` is the only place in the project where the y axis is
flipped for OpenGL; nothing else may flip y, negate z or
reverse triangle winding for rendering.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

__all__ = ["PinholeCamera", "MIN_DEPTH"]

#: Depths with ``|z|`` below this (metres) are replaced by ``+-MIN_DEPTH`` (sign of ``z``, 0 -> +)
#: before the perspective divide, so :meth:`PinholeCamera.project` never divides by zero.
MIN_DEPTH: float = 1e-8

Scalar = Union[float, int, Tensor]


def _is_number(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class PinholeCamera:
    """A batch of B pinhole cameras sharing one image size.

    Attributes:
        fx, fy: focal lengths in pixels, float tensors ``(B,)``.
        cx, cy: principal point in continuous pixel coordinates (origin at the image's
            top-left corner, pixel centres at ``i + 0.5``), float tensors ``(B,)``.
        width, height: image size in pixels (Python ints).

    The constructor also accepts Python numbers or 0-d / 1-element tensors for ``fx, fy, cx,
    cy``; they are converted to tensors and broadcast to a common ``(B,)``. The dtype and
    device are those of the first floating-point tensor argument, else
    ``torch.get_default_dtype()`` on the CPU (integer tensors are converted to that float
    dtype). Tensor arguments keep their autograd history, so intrinsics can be optimised.

    Methods that take points cast the intrinsics to the points' dtype and device. A camera
    batch of 1 broadcasts against any point batch B (and a point batch of 1 against a camera
    batch B).
    """

    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PinholeCamera.{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))
        names = ("fx", "fy", "cx", "cy")
        raw = [getattr(self, n) for n in names]
        ref = next((v for v in raw if isinstance(v, Tensor) and v.is_floating_point()), None)
        dtype = ref.dtype if ref is not None else torch.get_default_dtype()
        device = ref.device if ref is not None else torch.device("cpu")
        converted = []
        for name, value in zip(names, raw):
            if isinstance(value, Tensor):
                t = value.to(dtype=dtype, device=device)
            elif _is_number(value):
                t = torch.tensor(float(value), dtype=dtype, device=device)
            else:
                raise TypeError(f"PinholeCamera.{name} must be a float or a tensor, got {type(value).__name__}")
            if t.ndim > 1:
                raise ValueError(f"PinholeCamera.{name} must have shape (B,) or be a scalar, got {tuple(t.shape)}")
            converted.append(t.reshape(-1))
        try:
            converted = list(torch.broadcast_tensors(*converted))
        except RuntimeError as exc:
            shapes = {n: tuple(t.shape) for n, t in zip(names, converted)}
            raise ValueError(f"PinholeCamera intrinsics have incompatible batch sizes: {shapes}") from exc
        if converted[0].shape[0] == 0:
            raise ValueError("PinholeCamera needs a batch of at least one camera")
        for name, t in zip(names, converted):
            object.__setattr__(self, name, t)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_fov(
        cls,
        width: int,
        height: int,
        fov_y: float,
        batch_size: int = 1,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> "PinholeCamera":
        """Cameras with vertical field of view ``fov_y`` (radians, full angle), square pixels.

        ``fy = fx = (height / 2) / tan(fov_y / 2)``, principal point at the image centre
        ``(width / 2, height / 2)``; all B cameras identical.
        """
        if not (_is_number(fov_y) and 0.0 < float(fov_y) < math.pi):
            raise ValueError(f"fov_y must be an angle in (0, pi) radians, got {fov_y!r}")
        if not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for name, value in (("width", width), ("height", height)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        dtype = dtype or torch.get_default_dtype()
        focal = 0.5 * float(height) / math.tan(0.5 * float(fov_y))

        def full(value: float) -> Tensor:
            return torch.full((batch_size,), value, dtype=dtype, device=device)

        return cls(full(focal), full(focal), full(width / 2.0), full(height / 2.0), width, height)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "PinholeCamera":
        """The same cameras with intrinsics on ``device`` and/or of floating ``dtype``."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        kw = {"device": device, "dtype": dtype}
        return PinholeCamera(
            self.fx.to(**kw), self.fy.to(**kw), self.cx.to(**kw), self.cy.to(**kw), self.width, self.height
        )

    # ------------------------------------------------------------------ properties

    @property
    def batch_size(self) -> int:
        """Number B of cameras."""
        return int(self.fx.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the intrinsics."""
        return self.fx.dtype

    @property
    def device(self) -> torch.device:
        """Device of the intrinsics."""
        return self.fx.device

    def intrinsics(self) -> Tensor:
        """Intrinsic matrices ``K (B, 3, 3)`` = ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` (pixels).

        ``K @ (x, y, z)`` divided by its last entry is :meth:`project`'s ``(u, v, 1)``.
        """
        zero = torch.zeros_like(self.fx)
        one = torch.ones_like(self.fx)
        return torch.stack(
            [
                torch.stack([self.fx, zero, self.cx], dim=-1),
                torch.stack([zero, self.fy, self.cy], dim=-1),
                torch.stack([zero, zero, one], dim=-1),
            ],
            dim=-2,
        )

    # ------------------------------------------------------------------ helpers

    def _intrinsics_like(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """fx, fy, cx, cy as ``(B, 1)`` tensors of ``x``'s dtype and device."""
        fx, fy, cx, cy = (t.to(dtype=x.dtype, device=x.device)[:, None] for t in (self.fx, self.fy, self.cx, self.cy))
        return fx, fy, cx, cy

    def _check_points(self, x: Tensor, name: str, last: int, what: str) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 3 or x.shape[-1] != last:
            raise ValueError(f"{name} must have shape (B, N, {last}) ({what}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        b = x.shape[0]
        if b != self.batch_size and b != 1 and self.batch_size != 1:
            raise ValueError(
                f"{name} has batch size {b} but the camera has {self.batch_size} (need equal, or one of them 1)"
            )

    @staticmethod
    def _check_near_far(near: float, far: float) -> tuple[float, float]:
        if not (_is_number(near) and _is_number(far)):
            raise ValueError(f"near and far must be numbers (metres), got {near!r}, {far!r}")
        near, far = float(near), float(far)
        if not (0.0 < near < far < math.inf):
            raise ValueError(f"need 0 < near < far < inf (metres), got near={near}, far={far}")
        return near, far

    # ------------------------------------------------------------------ projection

    def project(self, points: Tensor) -> Tensor:
        """Pixel coordinates ``(B, N, 2)`` of camera-frame points ``(B, N, 3)`` (metres).

        ``u = fx * x / z + cx``, ``v = fy * y / z + cy``, continuous pixel coordinates (pixel
        ``(i, j)``'s centre at ``(i + 0.5, j + 0.5)``).

        Points not in front of the camera: for ``z < 0`` the same formula is applied (the
        result is the point mirrored through the optical centre: finite but meaningless, so
        mask with ``points[..., 2] > 0`` where it matters); ``|z| < MIN_DEPTH`` is replaced by
        ``+-MIN_DEPTH`` (the sign of ``z``, ``z = 0`` counting as positive), which gives large
        finite values and a zero gradient with respect to ``z``. The output is never NaN for
        finite input.
        """
        self._check_points(points, "points", 3, "camera-frame x, y, z in metres")
        fx, fy, cx, cy = self._intrinsics_like(points)
        x, y, z = points.unbind(-1)
        tiny = torch.full_like(z, MIN_DEPTH)
        tiny = torch.where(z < 0, -tiny, tiny)
        z_safe = torch.where(z.abs() < MIN_DEPTH, tiny, z)
        return torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)

    def unproject(self, pixels: Tensor, depth: Tensor) -> Tensor:
        """Camera-frame points ``(B, N, 3)`` (metres) at pixels ``(B, N, 2)`` with depth ``(B, N)``.

        ``depth`` is the camera-frame ``z`` (not the distance along the ray), in metres:
        ``x = (u - cx) / fx * z``, ``y = (v - cy) / fy * z``. Inverse of :meth:`project` for
        ``z > 0``.
        """
        self._check_points(pixels, "pixels", 2, "u, v in pixels")
        if not isinstance(depth, Tensor) or tuple(depth.shape) != tuple(pixels.shape[:-1]):
            shape = tuple(depth.shape) if isinstance(depth, Tensor) else type(depth).__name__
            raise ValueError(f"depth must have shape (B, N) = {tuple(pixels.shape[:-1])}, got {shape}")
        fx, fy, cx, cy = self._intrinsics_like(pixels)
        depth = depth.to(pixels.dtype)
        u, v = pixels.unbind(-1)
        return torch.stack([(u - cx) / fx * depth, (v - cy) / fy * depth, depth], dim=-1)

    def projection_matrix_gl(self, near: float, far: float) -> Tensor:
        """Matrices ``(B, 4, 4)`` mapping camera-frame ``(x, y, z, 1)`` (metres) to OpenGL clip coordinates.

        THE single place in the project where the OpenCV -> OpenGL flip happens (the renderer
        uploads it as its ``u_proj``; :func:`mlanet.edge.gl_renderer.camera_uniforms`). Row-major,
        acting on OpenCV camera-frame column vectors (not on OpenGL eye space: ``w_clip = +z``);
        it contains the y flip. Upload it to GLSL (column-major) transposed, or with
        ``transpose=GL_TRUE``. After the perspective divide by ``w_clip = z``:

        - ``x_ndc = 2 u / width - 1`` and ``y_ndc = 1 - 2 v / height`` (the y flip), where
          ``(u, v)`` is :meth:`project`'s pixel;
        - ``z_ndc`` is the standard OpenGL perspective depth: ``-1`` at ``z = near``, ``+1`` at
          ``z = far``, increasing with ``z`` (use ``GL_LESS``), i.e.
          ``z_ndc = (far + near) / (far - near) - 2 far near / ((far - near) z)``.

        With ``glViewport(0, 0, width, height)`` GL's window coordinates are
        ``(u, height - v)`` (origin bottom-left), so a vertex that projects to pixel ``(u, v)``
        lands on the same pixel ``(u, v)`` of the framebuffer *read back top-down* (the rows of
        ``glReadPixels`` reversed). Triangles that are front faces in our convention
        (``(v1 - v0) x (v2 - v0)`` pointing towards the camera; clockwise in y-down pixels)
        are counter-clockwise in NDC, i.e. front faces under GL's default
        ``glFrontFace(GL_CCW)``; no winding flip is needed anywhere.

        Clip coordinates are linear in the points (no divide here), so any ``z`` is fine;
        GL's clipping removes points with ``z`` outside ``[near, far]``. ``near``, ``far``:
        clipping planes in metres, ``0 < near < far``.
        """
        near, far = self._check_near_far(near, far)
        zero = torch.zeros_like(self.fx)
        one = torch.ones_like(self.fx)
        a = (far + near) / (far - near)
        b = -2.0 * far * near / (far - near)
        return torch.stack(
            [
                torch.stack([(2.0 / self.width) * self.fx, zero, (2.0 / self.width) * self.cx - 1.0, zero], dim=-1),
                torch.stack([zero, -(2.0 / self.height) * self.fy, 1.0 - (2.0 / self.height) * self.cy, zero], dim=-1),
                torch.stack([zero, zero, one * a, one * b], dim=-1),
                torch.stack([zero, zero, one, zero], dim=-1),
            ],
            dim=-2,
        )

    # ------------------------------------------------------------------ cropping

    def crop_resize(
        self, x0: Scalar, y0: Scalar, w: Scalar, h: Scalar, out_width: int, out_height: int
    ) -> "PinholeCamera":
        """Cameras seeing the pixel box ``[x0, x0 + w) x [y0, y0 + h)`` resized to ``out_width x out_height``.

        Box corners are continuous pixel coordinates of this camera (the box may extend past
        the image). Exact under the pixel-centre convention: with ``s_x = out_width / w``,
        ``fx' = fx * s_x`` and ``cx' = (cx - x0) * s_x`` (same for y), so the centre of crop
        pixel ``i`` (``i + 0.5``) corresponds to ``x0 + (i + 0.5) * w / out_width`` here.
        ``x0, y0, w, h`` are numbers or ``(B,)`` tensors (broadcast against the camera batch);
        ``w, h`` must be positive (checked for numbers only, to avoid a device sync).
        """
        for name, value in (("out_width", out_width), ("out_height", out_height)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        box = []
        for name, value in (("x0", x0), ("y0", y0), ("w", w), ("h", h)):
            if isinstance(value, Tensor):
                n = value.shape[0] if value.ndim == 1 else 1
                if value.ndim > 1 or (n not in (1, self.batch_size) and self.batch_size != 1):
                    raise ValueError(
                        f"{name} must be a number or a (B,) tensor with B = {self.batch_size}, "
                        f"got shape {tuple(value.shape)}"
                    )
                value = value.to(dtype=self.dtype, device=self.device).reshape(-1)
            elif _is_number(value):
                value = float(value)
                if name in ("w", "h") and not value > 0:
                    raise ValueError(f"{name} must be positive, got {value}")
            else:
                raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
            box.append(value)
        x0, y0, w, h = box
        sx = out_width / w
        sy = out_height / h
        return PinholeCamera(
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx - x0) * sx,
            cy=(self.cy - y0) * sy,
            width=int(out_width),
            height=int(out_height),
        )

    def __repr__(self) -> str:
        return (
            f"PinholeCamera(B={self.batch_size}, width={self.width}, height={self.height}, "
            f"dtype={self.dtype}, device={self.device})"
        )
