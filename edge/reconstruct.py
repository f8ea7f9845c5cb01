"""From network outputs on crops to faces in the full frame's camera.

The network predicts pose in the *crop camera* (:meth:`mlanet.preprocess.PreprocessCfg.camera`:
focal ``f_c = focal_ratio * S`` pixels, principal point at the crop centre). A video frame has
its own camera, whose intrinsics are unknown for most clips: :func:`frame_camera` assumes a
pinhole camera with square pixels, the principal point at the image centre and a horizontal
field of view (60 degrees by default, a typical webcam; ``--fov`` changes it).

Crop -> frame (:func:`crop_pose_to_frame`). The crop of side ``size`` pixels centred at image
point ``(u_b, v_b)`` behaves like a camera of focal ``g = f_c * size / S`` *image* pixels looking
through ``(u_b, v_b)``. With the frame focal ``F`` and principal point ``(c_x, c_y)``, and the
*face anchor* ``a`` (:func:`face_anchor`: the centroid of the mean face's 68 landmarks, model
frame, about 9 cm in front of the ICT head origin):

* the anchor keeps its projection *and its image scale* (pixels per metre): in the crop camera it
  sits at ``A_c = R_c a + t_c``; in the frame camera at
  ``A_f = (A_cx + A_cz (u_b - c_x) / g,  A_cy + A_cz (v_b - c_y) / g,  A_cz F / g)``;
* the rotation is corrected for the viewing direction: the network sees the face as a camera
  on the ray through the crop centre would, so ``R_f = R_ray @ R_c`` where ``R_ray`` is the
  smallest rotation taking the optical axis ``+z`` to that ray;
* ``t_f = A_f - R_f a``.

Why the anchor, not the head origin: the crop camera is long (12.6 degrees, the face about 1 m
away), the frame camera short (60 degrees), so a face that fills a frame sits about 25 cm from
it. There a point 9 cm nearer than the head origin is imaged 1.5 times larger than the origin's
scale, against 1.1 times in the crop camera: keeping the origin's scale (the old rule) drew such
a face about 1.4 times too large, and a tracker that takes its next crop from those landmarks ran
away (the crop grew every frame until the track was lost; measured on the 480-512 px expression
clips). Keeping the scale at the face itself leaves only the depth relief of the two cameras:
points behind the anchor (the jaw line) are drawn a little smaller, points before it (the nose)
a little larger, a few per cent for a face filling a 60-degree frame (``tests/test_edge_reconstruct.py``).

The face keeps its metric size (identity and expression are not touched), so landmarks
projected with the frame camera agree with the crop prediction mapped to the image to within
the perspective difference of the two cameras: about 0.4 % of the crop size for a centred
face, about 3 % for a face 22 degrees off-axis (a real off-axis face is stretched radially by
about ``1 / cos`` of its ray angle, which a crop camera cannot express; without the ray
rotation the error would be about 13 %). Measured in ``tests/test_edge_reconstruct.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mlanet.geometry.camera import PinholeCamera
from mlanet.geometry import rotations_numpy as rot_np
from mlanet.geometry import rotations_scalar as rot_s
from mlanet.geometry.camera import MIN_DEPTH
from mlanet.geometry.rotations import euler_to_matrix, matrix_to_euler
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams, ParamLayout
from mlanet.preprocess import CropBox, PreprocessCfg

#: Default horizontal field of view of a frame camera whose intrinsics are unknown, degrees.
DEFAULT_FOV_DEG = 60.0

#: Fields of view :func:`frame_camera` accepts, degrees (inclusive).
FOV_RANGE_DEG = (1.0, 170.0)


def frame_camera(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG) -> PinholeCamera:
    """A pinhole camera for a ``width x height`` frame with horizontal field of view ``fov_deg``.

    Square pixels, principal point at the image centre ``(W / 2, H / 2)`` (continuous pixels).
    """
    if not FOV_RANGE_DEG[0] <= fov_deg <= FOV_RANGE_DEG[1]:
        lo, hi = FOV_RANGE_DEG
        raise ValueError(f"field of view must be within [{lo:g}, {hi:g}] degrees, got {fov_deg}")
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)
    # PinholeCamera converts numbers to (1,) tensors; its fields are typed as what they become
    return PinholeCamera(f, f, 0.5 * width, 0.5 * height, int(width), int(height))  # type: ignore[arg-type]


def camera_intrinsics(camera: PinholeCamera) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` of a single camera as Python floats (pixels)."""
    return float(camera.fx[0]), float(camera.fy[0]), float(camera.cx[0]), float(camera.cy[0])


def face_anchor(face_model: MorphableModel) -> tuple[float, float, float]:
    """The point of the face whose image scale the crop -> frame conversion keeps (module docstring).

    Returns:
        ``(x, y, z)`` metres in the face model's frame: the centroid of the mean face's 68 landmarks
        (``landmark_index`` rows of ``mean_shape``).
    """
    centroid = face_model.mean_shape[face_model.landmark_index].double().mean(dim=0)
    x, y, z = (float(v) for v in centroid.cpu())
    return x, y, z


def _check_anchor(anchor: Sequence[float]) -> tuple[float, float, float]:
    a = tuple(float(v) for v in anchor)
    if len(a) != 3 or not all(math.isfinite(v) for v in a):
        raise ValueError(f"anchor must be 3 finite numbers (metres, model frame), got {anchor!r}")
    return a[0], a[1], a[2]


def _rotation_z_to(d: torch.Tensor) -> torch.Tensor:
    """Smallest rotations (N, 3, 3) taking +z to the unit directions ``d`` (N, 3) (Rodrigues)."""
    z = torch.zeros_like(d)
    z[:, 2] = 1.0
    axis = torch.cross(z, d, dim=-1)
    s = axis.norm(dim=-1)  # sin of the angle
    c = d[:, 2]  # cos of the angle
    k = axis / s.clamp_min(1e-12)[:, None]
    K = torch.zeros(d.shape[0], 3, 3, dtype=d.dtype, device=d.device)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 0] = -k[:, 2], k[:, 1], k[:, 2]
    K[:, 1, 2], K[:, 2, 0], K[:, 2, 1] = -k[:, 0], -k[:, 1], k[:, 0]
    eye = torch.eye(3, dtype=d.dtype, device=d.device).expand_as(K)
    return eye + s[:, None, None] * K + (1.0 - c)[:, None, None] * (K @ K)


def crop_pose_to_frame(
    flat: np.ndarray | torch.Tensor,
    boxes: Sequence[CropBox],
    layout: ParamLayout,
    preprocess: PreprocessCfg,
    camera: PinholeCamera,
    *,
    anchor: Sequence[float],
) -> torch.Tensor:
    """Convert predicted parameters from each crop's camera to the frame camera.

    Args:
        flat: (N, P) parameters as the network predicts them (crop camera).
        boxes: the N crops (image pixels).
        layout: the parameter layout of ``flat``.
        preprocess: the crop convention the network was trained with.
        camera: the frame camera (batch 1).
        anchor: the face point whose projection and image scale are kept, ``(x, y, z)`` metres in
            the model frame (:func:`face_anchor` of the face model).

    Returns:
        (N, P) float32 tensor: the same parameters with rotation and translation in the frame
        camera (see the module docstring). Computed in float64 by :func:`crop_pose_to_frame_tensor`.
    """
    x = torch.as_tensor(np.asarray(flat) if not isinstance(flat, torch.Tensor) else flat).double()
    if x.ndim != 2 or x.shape[1] != layout.total or x.shape[0] != len(boxes):
        raise ValueError(f"flat must be (N={len(boxes)}, P={layout.total}), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        return x.float()
    b = torch.tensor([[bx.x0, bx.y0, bx.size] for bx in boxes], dtype=torch.float64, device=x.device)
    return crop_pose_to_frame_tensor(x, b, layout, preprocess, camera, anchor=anchor)


def crop_pose_to_frame_cpu(
    flat: np.ndarray,
    boxes: Sequence[CropBox],
    layout: ParamLayout,
    preprocess: PreprocessCfg,
    camera: PinholeCamera,
    *,
    anchor: Sequence[float],
    intrinsics: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """:func:`crop_pose_to_frame` on the CPU for a few faces: (N, P) float32 array, computed in float64.

    The per-frame path of the CPU runtime: each face's pose is converted with plain-Python float maths
    (:mod:`mlanet.geometry.rotations_scalar`; PyTorch's per-op dispatch or NumPy's per-call set-up would
    cost more than the arithmetic). The same maths as :func:`crop_pose_to_frame_tensor`, which stays the
    definition; ``tests/test_edge_reconstruct.py`` checks that the two agree. ``intrinsics``: the
    camera's ``(fx, fy, cx, cy)`` as floats when the caller keeps them (:func:`camera_intrinsics`).
    """
    x = np.asarray(flat, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != layout.total or x.shape[0] != len(boxes):
        raise ValueError(f"flat must be (N={len(boxes)}, P={layout.total}), got {tuple(x.shape)}")
    out = x.copy()
    if x.shape[0] == 0:
        return out.astype(np.float32)
    sl = layout.slices()
    r0, t0 = sl["rotation"].start, sl["translation"].start
    F, _, cx, cy = camera_intrinsics(camera) if intrinsics is None else intrinsics
    a = _check_anchor(anchor)
    for i, (bx, (pitch, yaw, roll), (tx, ty, tz)) in enumerate(
            zip(boxes, x[:, r0:r0 + 3].tolist(), x[:, t0:t0 + 3].tolist())):
        u, v = bx.x0 + 0.5 * bx.size - cx, bx.y0 + 0.5 * bx.size - cy  # crop centre from the principal point
        g = preprocess.focal_ratio * bx.size
        R_c = rot_s.euler_to_matrix(pitch, yaw, roll)
        ax, ay, az = (sum(R_c[r][k] * a[k] for k in range(3)) + t for r, t in enumerate((tx, ty, tz)))  # A_c
        norm = math.sqrt(u * u + v * v + F * F)  # the ray (u / F, v / F, 1), normalised
        R_f = rot_s.matmul(rot_s.rotation_z_to(u / norm, v / norm, F / norm), R_c)
        A_f = (ax + az * u / g, ay + az * v / g, az * F / g)
        out[i, t0:t0 + 3] = [A_f[r] - sum(R_f[r][k] * a[k] for k in range(3)) for r in range(3)]
        out[i, r0:r0 + 3] = rot_s.matrix_to_euler(R_f)
    return out.astype(np.float32)


def crop_pose_to_frame_tensor(
    flat: torch.Tensor,
    boxes: torch.Tensor,
    layout: ParamLayout,
    preprocess: PreprocessCfg,
    camera: PinholeCamera,
    *,
    anchor: Sequence[float] | torch.Tensor,
) -> torch.Tensor:
    """:func:`crop_pose_to_frame` for a box table already in a tensor, on any device, no host sync.

    The one implementation of the crop -> frame maths (:func:`crop_pose_to_frame` builds the
    table from its :class:`~mlanet.preprocess.CropBox` list and calls this).

    Args:
        flat: (N, P) float tensor (crop camera), on the device that does the work.
        boxes: (N, 3) float64 tensor ``[x0, y0, size]`` per crop (image pixels), same device.
        layout: the parameter layout of ``flat``.
        preprocess: the crop convention the network was trained with.
        camera: the frame camera (batch 1). Its intrinsics are read as Python numbers: keep it
            on the CPU (a CUDA camera would cost a host synchronisation per read).
        anchor: see :func:`crop_pose_to_frame`; or a (3,) tensor already on ``flat``'s device (the per-frame
            device path keeps one, so no host-to-device copy is queued per frame).

    Returns:
        (N, P) float32 tensor on ``flat``'s device, computed in float64.
    """
    if not isinstance(flat, torch.Tensor) or flat.ndim != 2 or flat.shape[1] != layout.total:
        desc = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
        raise ValueError(f"flat must be an (N, P={layout.total}) tensor, got {desc}")
    n = flat.shape[0]
    if not isinstance(boxes, torch.Tensor) or tuple(boxes.shape) != (n, 3) or boxes.dtype != torch.float64:
        got = f"{tuple(boxes.shape)} {boxes.dtype}" if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(f"boxes must be an (N={n}, 3) float64 tensor [x0, y0, size], got {got}")
    if boxes.device != flat.device:
        raise ValueError(f"boxes are on {boxes.device}, flat on {flat.device}")
    if isinstance(anchor, torch.Tensor):
        if tuple(anchor.shape) != (3,) or anchor.device != flat.device:
            raise ValueError(f"an anchor tensor must be (3,) on {flat.device}, got {tuple(anchor.shape)} on {anchor.device}")
        a_model = anchor.double()
    else:
        a_model = torch.tensor(_check_anchor(anchor), dtype=torch.float64, device=flat.device)
    x = flat.double()
    if n == 0:
        return x.float()
    p = FaceParams.from_flat(x, layout)
    size = boxes[:, 2]
    b = torch.stack([boxes[:, 0] + 0.5 * size, boxes[:, 1] + 0.5 * size, size], -1)  # centre u, v and side
    F = float(camera.fx[0])
    cx, cy = float(camera.cx[0]), float(camera.cy[0])
    g = preprocess.focal_ratio * b[:, 2]  # crop focal in image pixels: f_c * size / S with f_c = ratio * S
    R_c = euler_to_matrix(p.rotation)
    A = R_c @ a_model + p.translation  # (N, 3) the anchor in the crop camera
    A_f = torch.stack([A[:, 0] + A[:, 2] * (b[:, 0] - cx) / g, A[:, 1] + A[:, 2] * (b[:, 1] - cy) / g, A[:, 2] * F / g], -1)
    ray = torch.stack([(b[:, 0] - cx) / F, (b[:, 1] - cy) / F, torch.ones_like(g)], -1)
    R_f = _rotation_z_to(ray / ray.norm(dim=-1, keepdim=True)) @ R_c
    t_f = A_f - R_f @ a_model
    return p.replace(rotation=matrix_to_euler(R_f), translation=t_f).to_flat().float()


@dataclass
class DecodedFaces:
    """Meshes of N faces in the frame camera.

    Attributes:
        vertices: (N, V, 3) float32 metres.
        landmarks2d: (N, 68, 2) float32 image pixels.
        albedo: (N, V, 3) float32 RGB, clamped to [0, 1].
    """

    vertices: np.ndarray
    landmarks2d: np.ndarray
    albedo: np.ndarray


class FaceDecoder:
    """Frame-camera parameters (N, P) -> vertices, 2D landmarks and albedo, batched on one device.

    Args:
        face_model: the face model the parameters belong to.
        device: torch device for the GEMMs (default CPU).
    """

    def __init__(self, face_model: MorphableModel, device: str = "cpu") -> None:
        self.face_model = face_model.to(device).eval()
        self.device = torch.device(device)
        self.layout = face_model.layout
        # The 68 landmark rows of the shape model, for landmarks without the full mesh (tracking).
        idx = face_model.landmark_index
        cols = (3 * idx[:, None] + torch.arange(3, device=idx.device)).reshape(-1)
        self._lm_mean = face_model.mean_shape[idx].reshape(1, -1)
        self._lm_basis = face_model.shape_basis[:, cols]
        # the same rows as NumPy arrays, for the per-frame CPU path (landmarks2d)
        self._lm_mean_np = self._lm_mean.detach().cpu().numpy().astype(np.float32)
        self._lm_basis_np = self._lm_basis.detach().cpu().numpy().astype(np.float32)
        sl = self.layout.slices()
        self._coeff_cols = np.r_[sl["identity"], sl["expression"]]
        self._rot, self._trans = sl["rotation"], sl["translation"]
        self._albedo = sl["albedo"]
        self._row_bases: dict = {}
        self._all_rows: np.ndarray | None = None

    @torch.no_grad()
    def __call__(self, flat: np.ndarray | torch.Tensor, camera: PinholeCamera) -> DecodedFaces:
        x = torch.as_tensor(flat, dtype=torch.float32, device=self.device)
        if x.ndim != 2 or x.shape[1] != self.layout.total:
            raise ValueError(f"parameters must be (N, {self.layout.total}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            V = self.face_model.n_vertices
            return DecodedFaces(np.zeros((0, V, 3), np.float32), np.zeros((0, 68, 2), np.float32), np.zeros((0, V, 3), np.float32))
        verts, lm2d, albedo = self.decode_tensors(x, camera)
        assert albedo is not None  # decode_tensors(albedo=True)
        return DecodedFaces(verts.cpu().numpy(), lm2d.cpu().numpy(), albedo.cpu().numpy())

    @torch.no_grad()
    def decode_tensors(self, flat: torch.Tensor, camera: PinholeCamera, *,
                       albedo: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`__call__` without leaving the device (no host synchronisation).

        Args:
            flat: (N, P) frame-camera parameters (any float dtype; used as float32 on this
                decoder's device).
            camera: the frame camera; already on this device as float32 avoids a copy (a CPU
                camera is copied, which synchronises with a CUDA device).
            albedo: also compute the albedo (else None is returned for it).

        Returns:
            (vertices (N, V, 3) float32 metres, landmarks2d (N, 68, 2) float32 pixels,
            albedo (N, V, 3) float32 clamped to [0, 1] or None), tensors on this device.
        """
        x = torch.as_tensor(flat, dtype=torch.float32, device=self.device)
        if x.ndim != 2 or x.shape[1] != self.layout.total:
            raise ValueError(f"parameters must be (N, {self.layout.total}), got {tuple(x.shape)}")
        params = FaceParams.from_flat(x, self.layout)
        verts = self.face_model(params)
        lm2d = camera.to(self.device, torch.float32).project(self.face_model.landmarks(verts))
        alb = self.face_model.albedo(params.albedo).clamp(0.0, 1.0) if albedo else None
        return verts, lm2d, alb

    def landmarks2d(self, flat: np.ndarray | torch.Tensor, camera: PinholeCamera, *,
                    intrinsics: tuple[float, float, float, float] | None = None) -> np.ndarray:
        """(N, 68, 2) float32 image pixels of frame-camera parameters (N, P), without the full mesh.

        On the CPU with a NumPy input this runs in NumPy (a few faces per frame: PyTorch's per-op
        dispatch would cost more than the arithmetic); else as :meth:`landmarks2d_tensor`. The two
        agree to float32 rounding (tested). ``intrinsics``: the camera's ``(fx, fy, cx, cy)`` floats
        when the caller keeps them (:func:`camera_intrinsics`).
        """
        if self.device.type != "cpu" or isinstance(flat, torch.Tensor):
            return self.landmarks2d_tensor(flat, camera)
        x = np.asarray(flat, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.layout.total:
            raise ValueError(f"parameters must be (N, {self.layout.total}), got {tuple(x.shape)}")
        lm = (self._lm_mean_np + x[:, self._coeff_cols] @ self._lm_basis_np).reshape(-1, 68, 3)
        R = rot_np.euler_to_matrix(x[:, self._rot].astype(np.float64)).astype(np.float32)
        lm = lm @ R.transpose(0, 2, 1) + x[:, None, self._trans]
        z = lm[..., 2]
        z = np.where(np.abs(z) < MIN_DEPTH, np.where(z < 0, -MIN_DEPTH, MIN_DEPTH), z).astype(np.float32)
        fx, fy, cx, cy = camera_intrinsics(camera) if intrinsics is None else intrinsics
        return np.stack([fx * lm[..., 0] / z + cx, fy * lm[..., 1] / z + cy], axis=-1).astype(np.float32)

    def mesh_rows(self, flat: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vertices and albedo of only the mesh ``rows`` (e.g. a display mesh's vertices), in NumPy.

        Args:
            flat: (N, P) frame-camera parameters.
            rows: (K,) int vertex indices of the face model.

        Returns:
            (vertices (N, K, 3) float32 metres in the frame camera, albedo (N, K, 3) float32 in
            [0, 1]): the same rows of :meth:`__call__`'s vertices and albedo (to float32 rounding;
            tested), at K/V of its cost. The row bases are cached per ``rows`` array.
        """
        x = np.asarray(flat, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.layout.total:
            raise ValueError(f"parameters must be (N, {self.layout.total}), got {tuple(x.shape)}")
        key = id(rows), len(rows)
        cached = self._row_bases.get(key)
        if cached is None or cached[0] is not rows:
            if len(self._row_bases) >= 4:  # a few row sets at a time (the display mesh, the whole mesh)
                self._row_bases.pop(next(iter(self._row_bases)))
            r = torch.as_tensor(np.asarray(rows, np.int64), device=self.face_model.mean_shape.device)
            cols = (3 * r[:, None] + torch.arange(3, device=r.device)).reshape(-1)
            fm = self.face_model
            cached = (rows, *(np.ascontiguousarray(a.detach().cpu().numpy(), dtype=np.float32) for a in (
                fm.mean_shape[r].reshape(1, -1), fm.shape_basis[:, cols],
                fm.albedo_mean[r].reshape(1, -1), fm.albedo_basis[:, cols])))
            self._row_bases[key] = cached
        _, mean, basis, albedo_mean, albedo_basis = cached
        K = len(rows)
        verts = (mean + x[:, self._coeff_cols] @ basis).reshape(-1, K, 3)
        R = rot_np.euler_to_matrix(x[:, self._rot].astype(np.float64)).astype(np.float32)
        verts = verts @ R.transpose(0, 2, 1) + x[:, None, self._trans]
        albedo = (albedo_mean + x[:, self._albedo] @ albedo_basis).reshape(-1, K, 3)
        np.clip(albedo, 0.0, 1.0, out=albedo)
        return verts.astype(np.float32, copy=False), albedo

    def mesh(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole mesh and albedo of frame-camera parameters (N, P) in NumPy: (N, V, 3) float32
        metres and (N, V, 3) float32 in [0, 1], equal to :meth:`__call__`'s to float32 rounding.
        A face costs ~0.3 ms here against ~0.9 ms through PyTorch (per-op dispatch, thread hand-offs)."""
        if self._all_rows is None:
            self._all_rows = np.arange(self.face_model.n_vertices)
        return self.mesh_rows(flat, self._all_rows)

    @torch.no_grad()
    def landmarks2d_tensor(self, flat: np.ndarray | torch.Tensor, camera: PinholeCamera) -> np.ndarray:
        """:meth:`landmarks2d` in PyTorch on this decoder's device: (N, 68, 2) float32 NumPy array."""
        return self.landmarks2d_device(torch.as_tensor(flat, dtype=torch.float32, device=self.device),
                                       camera).cpu().numpy()

    @torch.no_grad()
    def landmarks2d_device(self, flat: torch.Tensor, camera: PinholeCamera) -> torch.Tensor:
        """(N, 68, 2) float32 image pixels as a tensor on this decoder's device (no host synchronisation).

        Args:
            flat: (N, P) frame-camera parameters, a tensor on this decoder's device.
            camera: the frame camera; float32 on this device avoids a copy (a host camera is copied,
                which synchronises a CUDA device).
        """
        x = flat.to(torch.float32)
        if x.ndim != 2 or x.shape[1] != self.layout.total:
            raise ValueError(f"parameters must be (N, {self.layout.total}), got {tuple(x.shape)}")
        p = FaceParams.from_flat(x, self.layout)
        coeffs = torch.cat([p.identity, p.expression], dim=1)
        lm = torch.addmm(self._lm_mean, coeffs, self._lm_basis).reshape(-1, 68, 3)
        lm = lm @ euler_to_matrix(p.rotation).transpose(1, 2) + p.translation[:, None, :]
        return camera.to(self.device, torch.float32).project(lm)
