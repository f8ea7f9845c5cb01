"""3DDFA_V2 MobileNetV1 x0.5 (120 x 120): the project's own definition, loader and decoder.

A pseudo-label teacher for 68 landmarks and head pose (Guo et al., "Towards Fast, Accurate and
Stable 3D Dense Face Alignment", ECCV 2020; cleardusk/3DDFA_V2 at 1b6c676). The network below
is written from the facts in the model folder's ``README.md``; only the *weights* come from
upstream, read at run time from a folder the user gives (``../shared/models/3ddfa_v2_mb05`` in
a checkout). Nothing of that folder is copied into the repository or shipped.

Terms (recorded in :data:`TERMS` and in every :meth:`Teacher.describe`): upstream code MIT;
the weights research use only (trained on 300W-LP); the 68-keypoint BFM bases Basel Face Model
terms (academic, non-commercial). Labels made with the teacher inherit these terms.

Files of the folder (numpy ``.npz``, read with ``allow_pickle=False``):

* ``mb05_120x120_weights.npz``: the state dict, original names (``conv1.weight``, ``bn1.*``,
  ``dw2_1.conv_dw.weight``, ..., ``fc_param.*`` (62 outputs), ``fc_lm.*`` (136, unused but
  present, so loading is strict both ways).
* ``param_mean_std_62d.npz``: ``mean``, ``std`` (62,): the output is whitened.
* ``bfm_68_keypoints.npz``: ``u_base`` (204,), ``w_shp_base`` (204, 40), ``w_exp_base``
  (204, 10); rows x, y, z interleaved per keypoint.

Preprocessing (:func:`normalise`): the crop in BGR order, ``(pixel - 127.5) / 128`` with
``pixel`` in 0..255, NCHW. The project's crops are RGB float in [0, 1] (``x = pixel / 255``),
so the network sees ``(255 x - 127.5) / 128`` of the channel-reversed crop; the same affine map
is :data:`PREPROCESS` (mean 0.5, std 128/255 per channel), which every artifact can record.

Crop boxes (both squares in the project's continuous pixel frame, :class:`~mlanet.preprocess.CropBox`):

* from landmarks (3DDFA_V2 ``parse_roi_box_from_landmark``): centre of the axis-aligned box of
  the points, side ``sqrt(2) * max(w, h)`` -- exactly :func:`mlanet.preprocess.box_from_points`
  with ``roi_scale = sqrt(2)``, the AFLW2000-3D protocol crop (:func:`roi_from_landmarks`);
* from a detector box ``x0, y0, x1, y1`` (``parse_roi_box_from_bbox``): side
  ``1.58 * (w + h) / 2``, centre the box centre shifted down by ``0.14 * (w + h) / 2``
  (:func:`roi_from_detector_box`). Upstream truncates the side to an integer; this keeps it
  continuous (at most one pixel of difference).

The crop itself is the project's one crop function (:func:`mlanet.data.landmarks.crop_uint8`:
bilinear, zero outside the image, crop pixel ``i`` centred at image ``x0 + (i + 0.5) size / 120``),
the same sampling as upstream's integer crop + ``cv2.resize`` (``INTER_LINEAR``) up to the
sub-pixel rounding of the box that upstream does.

Decoding (:meth:`Teacher.decode`): ``p = out * std + mean``; ``P = p[:12]`` as a row-major
3 x 4 matrix ``[M | t]`` (``M`` = scale x rotation); ``a_shp = p[12:52]``, ``a_exp = p[52:62]``;
keypoint ``k`` of the face is ``S_k = (u + W_shp a_shp + W_exp a_exp)[3k : 3k + 3]`` (BFM units,
micrometres, BFM frame: +x subject's left, +y up, +z out of the face) and ``X_k = M S_k + t``.
Upstream's crop frame is then ``x = X0 - 1``, ``y = 120 - X1``, ``z = X2 - 1``: 0-based pixel
indices with pixel centres at *integers* (y flipped: ``X1`` points up). The project's pixel
centres are at integer + 0.5, so in the project's crop pixels

    ``u = X0 - 0.5``,  ``v = 120.5 - X1``  (crop of 120 pixels),

and in image pixels ``x = box.x0 + u * box.size / 120``, ``y = box.y0 + v * box.size / 120``
(:meth:`mlanet.preprocess.CropBox.crop_to_image`). The third coordinate is made a depth along
the OpenCV camera's +z (away from the viewer, so ``(x, y, z)`` is right-handed like the camera
frame), in the same pixel units, relative to the mean of the 68 points:
``z = -(X2 - mean_k X2) * box.size / 120``. (Upstream instead keeps ``z`` towards the viewer
and subtracts the minimum; only the offset and the sign differ.)

Head pose (:class:`HeadPose`): the scale is removed from the top two rows of ``M`` by the
polar decomposition (the nearest 2 x 3 matrix with orthonormal rows, from its SVD; the scale is
the mean singular value), the third row is their cross product (upstream ``P2sRt`` normalises
each row on its own; the two agree when the rows are orthogonal). That rotation ``R_up`` maps
the BFM frame to upstream's crop frame (+x right, +y up, +z towards the viewer). Converted to
the project's conventions (:mod:`mlanet.conventions`: model frame = BFM frame turned 180 degrees
about x, camera frame OpenCV) with ``F = diag(1, -1, -1)``:

    ``R = F R_up F``  (``x_cam = R x_model``),

and the angles are :func:`mlanet.geometry.rotations.matrix_to_euler` of ``R``:
``(pitch, yaw, roll)`` radians with ``R = Rz(roll) Ry(yaw) Rx(pitch)``. Relative to upstream's
``matrix2angle`` (degrees, returned as yaw, pitch, roll): pitch and yaw are the same numbers
(in radians), roll has the opposite sign. Positive yaw turns the nose towards image -x (left),
positive pitch towards image +y (down), positive roll turns image +x towards +y.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256
from mlanet.geometry.rotations import matrix_to_euler
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points

logger = logging.getLogger(__name__)

NAME = "3ddfa_v2_mb05"
#: Version of this module's definition + decoding; recorded in labels made with the teacher.
VERSION = 1

WEIGHTS_FILE = "mb05_120x120_weights.npz"
PARAM_STATS_FILE = "param_mean_std_62d.npz"
KEYPOINTS_FILE = "bfm_68_keypoints.npz"

#: Network input side S, pixels.
INPUT_SIZE = 120
#: Outputs: 12 pose (3 x 4 ``[M | t]``, row-major) + 40 shape + 10 expression.
N_POSE, N_SHAPE, N_EXP = 12, 40, 10
N_PARAMS = N_POSE + N_SHAPE + N_EXP
N_LANDMARKS = 68
#: Width multiplier of the MobileNetV1.
WIDTH = 0.5
BN_EPS = 1e-5

#: Upstream rule for a square crop from a detector box (``parse_roi_box_from_bbox``).
DETECTOR_SIDE_FACTOR = 1.58
DETECTOR_SHIFT_FACTOR = 0.14
#: Upstream rule for a square crop from landmarks (``parse_roi_box_from_landmark``).
LANDMARK_ROI_SCALE = math.sqrt(2.0)

#: ``(name, in channels, out channels, stride)`` of the 13 depthwise-separable blocks (width 0.5).
BLOCKS: tuple[tuple[str, int, int, int], ...] = tuple(
    (name, int(cin * WIDTH), int(cout * WIDTH), stride)
    for name, cin, cout, stride in (
        ("dw2_1", 32, 64, 1),
        ("dw2_2", 64, 128, 2),
        ("dw3_1", 128, 128, 1),
        ("dw3_2", 128, 256, 2),
        ("dw4_1", 256, 256, 1),
        ("dw4_2", 256, 512, 2),
        ("dw5_1", 512, 512, 1),
        ("dw5_2", 512, 512, 1),
        ("dw5_3", 512, 512, 1),
        ("dw5_4", 512, 512, 1),
        ("dw5_5", 512, 512, 1),
        ("dw5_6", 512, 1024, 2),
        ("dw6", 1024, 1024, 1),
    )
)
STEM_CHANNELS = int(32 * WIDTH)
FEATURES = int(1024 * WIDTH)

#: The network's input normalisation written as the project's PreprocessCfg (RGB [0, 1] in):
#: ``(255 x - 127.5) / 128 = (x - 0.5) / (128 / 255)``; the BGR reversal happens in :func:`normalise`.
PREPROCESS = PreprocessCfg(
    input_size=INPUT_SIZE, roi_scale=LANDMARK_ROI_SCALE, mean=(0.5, 0.5, 0.5), std=(128.0 / 255.0,) * 3
)

#: ``F = diag(1, -1, -1)``: upstream's y-up frames <-> the project's model / OpenCV camera frames.
FLIP_YZ = (1.0, -1.0, -1.0)

TERMS: dict[str, str] = {
    "code": "upstream cleardusk/3DDFA_V2 (1b6c676): MIT licence (LICENSE in the model folder); this network "
    "definition and decoder are the project's own",
    "weights": "research use only (trained on 300W-LP); read at run time from the user's folder, never copied into "
    "the repository or shipped",
    "keypoint_bases": "bfm_68_keypoints.npz: Basel Face Model terms (academic, non-commercial)",
    "labels": "landmarks and poses predicted by this teacher inherit the weights' and the BFM's terms",
}

CONVENTIONS: dict[str, str] = {
    "input": "crop (B, 3, 120, 120) RGB float in [0, 1]; the network sees the BGR reversal, (255 x - 127.5) / 128",
    "crop_from_landmarks": "square, centre of the landmark box, side sqrt(2) * max(w, h) "
    "(mlanet.preprocess.box_from_points)",
    "crop_from_detector_box": "square, side 1.58 * (w + h) / 2, centre = box centre + (0, 0.14 * (w + h) / 2)",
    "landmarks_crop": "upstream 0-based x = X0 - 1, y = 120 - X1 (centres at integers) -> project crop pixels "
    "u = X0 - 0.5, v = 120.5 - X1 (centres at integer + 0.5)",
    "landmarks_image": "x = box.x0 + u * box.size / 120, y = box.y0 + v * box.size / 120 (CropBox.crop_to_image)",
    "depth": "z = -(X2 - mean over the 68 points of X2) * box.size / 120: image pixels along the OpenCV camera +z",
    "pose": "R = F R_up F, F = diag(1, -1, -1), R_up = rows of P[:, :3] with the scale removed (polar "
    "decomposition of the top two rows, third = cross product); angles (pitch, yaw, roll) radians of "
    "mlanet.geometry.rotations.matrix_to_euler (R = Rz(roll) Ry(yaw) Rx(pitch)); upstream matrix2angle gives "
    "the same pitch and yaw and the opposite roll",
}


# ----------------------------------------------------------------------------- network
class DepthwiseSeparable(nn.Module):
    """Depthwise 3 x 3 conv + BN + ReLU, then pointwise 1 x 1 conv + BN + ReLU (upstream names)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False)
        self.bn_dw = nn.BatchNorm2d(cin, eps=BN_EPS)
        self.conv_sep = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn_sep = nn.BatchNorm2d(cout, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn_dw(self.conv_dw(x)))
        return F.relu(self.bn_sep(self.conv_sep(x)))


class TDDFAMobileNet(nn.Module):
    """MobileNetV1 x0.5 with upstream's parameter names; ``forward`` -> whitened parameters (B, 62).

    Input: (B, 3, 120, 120) already normalised (:func:`normalise`). ``fc_lm`` (136 outputs) exists
    only so that the upstream state dict loads strictly; it is not evaluated.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        for name, cin, cout, stride in BLOCKS:
            self.add_module(name, DepthwiseSeparable(cin, cout, stride))
        self.fc_param = nn.Linear(FEATURES, N_PARAMS)
        self.fc_lm = nn.Linear(FEATURES, 2 * N_LANDMARKS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised -> (B, 512) pooled features."""
        x = F.relu(self.bn1(self.conv1(x)))
        for name, *_ in BLOCKS:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_param(self.features(x))


def normalise(images: torch.Tensor) -> torch.Tensor:
    """RGB float crops (B, 3, S, S) in [0, 1] -> the network input: BGR, ``(255 x - 127.5) / 128``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, S, S) RGB in [0, 1], got {tuple(images.shape)}")
    return (images.flip(1) * 255.0 - 127.5) / 128.0


# ----------------------------------------------------------------------------- crop boxes
def roi_from_landmarks(points: np.ndarray) -> CropBox:
    """Upstream's landmark crop: square of side ``sqrt(2) * max(w, h)`` centred on the points' box (L, 2)."""
    return box_from_points(np.asarray(points, dtype=np.float64), LANDMARK_ROI_SCALE)


def roi_from_detector_box(x0: float, y0: float, x1: float, y1: float) -> CropBox:
    """Upstream's detector-box crop: side ``1.58 * (w + h) / 2``, centre shifted down by ``0.14 * (w + h) / 2``.

    Coordinates in the project's continuous pixel frame (the box covers ``[x0, x1) x [y0, y1)``).
    """
    w, h = float(x1) - float(x0), float(y1) - float(y0)
    if not (math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        raise ValueError(f"detector box needs x1 > x0 and y1 > y0 (finite), got {(x0, y0, x1, y1)}")
    mean_side = 0.5 * (w + h)
    side = DETECTOR_SIDE_FACTOR * mean_side
    cx = 0.5 * (float(x0) + float(x1))
    cy = 0.5 * (float(y0) + float(y1)) + DETECTOR_SHIFT_FACTOR * mean_side
    return CropBox(cx - side / 2, cy - side / 2, side)


def as_roi(spec: Any) -> CropBox:
    """A :class:`CropBox` as is; an (L >= 2, 2+) landmark array by :func:`roi_from_landmarks`;
    a (4,) detector box ``x0, y0, x1, y1`` by :func:`roi_from_detector_box`."""
    if isinstance(spec, CropBox):
        return spec
    a = np.asarray(spec.detach().cpu().numpy() if hasattr(spec, "detach") else spec, dtype=np.float64)
    if a.shape == (4,):
        return roi_from_detector_box(*a.tolist())
    if a.ndim == 2 and a.shape[0] >= 2 and a.shape[1] >= 2:
        return roi_from_landmarks(a[:, :2])
    raise ValueError(f"a box must be a CropBox, (L, 2) landmarks or a (4,) box x0 y0 x1 y1; got shape {a.shape}")


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class HeadPose:
    """Head pose of B faces (numpy, float64).

    angles: (B, 3) ``(pitch, yaw, roll)`` radians, ``R = Rz(roll) Ry(yaw) Rx(pitch)``
        (:mod:`mlanet.geometry.rotations`); rotation: (B, 3, 3) ``R`` (model frame -> OpenCV
        camera axes, ``x_cam = R x_model``); scale: (B,) image pixels per BFM unit (micrometre).
    """

    angles: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray

    @property
    def pitch(self) -> np.ndarray:
        return self.angles[:, 0]

    @property
    def yaw(self) -> np.ndarray:
        return self.angles[:, 1]

    @property
    def roll(self) -> np.ndarray:
        return self.angles[:, 2]


class TeacherPrediction(NamedTuple):
    """``points2d`` (B, 68, 2) and ``points3d`` (B, 68, 3) image pixels (see module docstring), ``pose``."""

    points2d: np.ndarray
    points3d: np.ndarray
    pose: HeadPose


# ----------------------------------------------------------------------------- decoding
def decode_crop(
    params: torch.Tensor, u_base: torch.Tensor, w_shp: torch.Tensor, w_exp: torch.Tensor, input_size: int = INPUT_SIZE
) -> torch.Tensor:
    """De-whitened parameters (B, 62) -> 68 points (B, 68, 3) in the project's crop pixels.

    ``u = X0 - 0.5``, ``v = input_size + 0.5 - X1``, ``d = -(X2 - mean_k X2)`` (crop pixels along
    the camera +z); see the module docstring.
    """
    if params.ndim != 2 or params.shape[1] != N_PARAMS:
        raise ValueError(f"params must be (B, {N_PARAMS}), got {tuple(params.shape)}")
    P = params[:, :N_POSE].reshape(-1, 3, 4)
    a_shp = params[:, N_POSE : N_POSE + N_SHAPE]
    a_exp = params[:, N_POSE + N_SHAPE :]
    shape = u_base + a_shp @ w_shp.T + a_exp @ w_exp.T  # (B, 204), x y z interleaved per keypoint
    S = shape.reshape(-1, N_LANDMARKS, 3)
    X = S @ P[:, :, :3].transpose(1, 2) + P[:, None, :, 3]  # (B, 68, 3) upstream crop frame, 1-based, y up
    u = X[..., 0] - 0.5
    v = (input_size + 0.5) - X[..., 1]
    d = -(X[..., 2] - X[..., 2].mean(dim=1, keepdim=True))
    return torch.stack([u, v, d], dim=-1)


def pose_from_params(params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """De-whitened parameters (B, 62) -> ``(angles (B, 3), R (B, 3, 3), scale (B,))`` in the project's
    conventions (float64; see the module docstring). ``scale`` is crop pixels per BFM unit."""
    M = params[:, :N_POSE].reshape(-1, 3, 4)[:, :, :3].to(torch.float64)
    A = M[:, :2, :]  # (B, 2, 3): the two image rows
    U, sv, Vh = torch.linalg.svd(A, full_matrices=False)
    Q = U @ Vh  # nearest matrix with orthonormal rows
    r3 = torch.linalg.cross(Q[:, 0], Q[:, 1], dim=-1)
    R_up = torch.cat([Q, r3[:, None, :]], dim=1)
    f = torch.tensor(FLIP_YZ, dtype=torch.float64, device=M.device)
    R = f[:, None] * R_up * f[None, :]
    return matrix_to_euler(R), R, sv.mean(dim=1)


# ----------------------------------------------------------------------------- the teacher
class Teacher(nn.Module):
    """The loaded 3DDFA_V2 MobileNet x0.5 with its parameter statistics and 68-keypoint bases.

    Build with :func:`load_tddfa_mb05`. Buffers move with ``.to(device)``.

    Attributes:
        net: :class:`TDDFAMobileNet`. preprocess: :data:`PREPROCESS`.
        files: ``{file name: {"path", "sha256"}}`` of the three files read. terms: :data:`TERMS`.
    """

    name = NAME
    version = VERSION

    def __init__(self, net: TDDFAMobileNet, mean: np.ndarray, std: np.ndarray, u_base: np.ndarray,
                 w_shp: np.ndarray, w_exp: np.ndarray, files: dict[str, dict[str, str]] | None = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.register_buffer("param_mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("param_std", torch.as_tensor(std, dtype=torch.float32))
        self.register_buffer("u_base", torch.as_tensor(u_base, dtype=torch.float32))
        self.register_buffer("w_shp_base", torch.as_tensor(w_shp, dtype=torch.float32))
        self.register_buffer("w_exp_base", torch.as_tensor(w_exp, dtype=torch.float32))
        self.preprocess = PREPROCESS
        self.files = dict(files or {})
        self.terms = dict(TERMS)
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.param_mean.device  # type: ignore[return-value]  # a registered buffer (Tensor)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Crops (B, 3, 120, 120) RGB float [0, 1] -> de-whitened parameters (B, 62)."""
        S = INPUT_SIZE
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, S, S):
            raise ValueError(f"images must be (B, 3, {S}, {S}) RGB in [0, 1], got {tuple(images.shape)}")
        out = self.net(normalise(images.to(device=self.device, dtype=torch.float32)))
        return out * self.param_std + self.param_mean

    def decode(self, params: torch.Tensor) -> torch.Tensor:
        """De-whitened parameters (B, 62) -> (B, 68, 3) in crop pixels (:func:`decode_crop`)."""
        return decode_crop(params, self.u_base, self.w_shp_base, self.w_exp_base, INPUT_SIZE)

    def crop_predictor(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """``predict_fn(images (B, 3, 120, 120) RGB [0, 1]) -> (B, 68, 2)`` crop pixels, on the CPU.

        The hook of :meth:`mlanet.eval.aflw2000.AFLW2000Eval.evaluate` and
        :func:`mlanet.eval.predict.predict_in_boxes` (with ``preprocess=teacher.preprocess``).
        """

        def predict(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return self.decode(self(images))[..., :2].cpu()

        return predict

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Any], batch_size: int = 64) -> TeacherPrediction:
        """68 points and head pose of one face per (image, box) pair.

        Args:
            images: B images (H, W, 3) uint8 RGB (the same array may repeat for several faces).
            boxes: B crop specs (:func:`as_roi`): a :class:`CropBox`, (L, 2) landmarks (upstream
                landmark rule) or a (4,) detector box ``x0, y0, x1, y1`` (upstream detector rule),
                all in the project's image pixels.
            batch_size: crops per network call.

        Returns:
            :class:`TeacherPrediction` (numpy float64): points2d (B, 68, 2) and points3d
            (B, 68, 3) in image pixels, pose :class:`HeadPose`.
        """
        from mlanet.data.landmarks import crop_uint8

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} boxes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        rois = [as_roi(b) for b in boxes]
        n = len(rois)
        p2 = np.zeros((n, N_LANDMARKS, 2))
        p3 = np.zeros((n, N_LANDMARKS, 3))
        angles, rot, scale = np.zeros((n, 3)), np.zeros((n, 3, 3)), np.zeros(n)
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            crops = torch.stack([crop_uint8(_check_image(images[k], k), rois[k], INPUT_SIZE) for k in idx])
            params = self(crops)
            crop_pts = self.decode(params).double().cpu().numpy()
            a, R, s = pose_from_params(params)
            for j, k in enumerate(idx):
                box, f = rois[k], rois[k].size / INPUT_SIZE
                p2[k] = box.crop_to_image(crop_pts[j, :, :2], INPUT_SIZE)
                p3[k, :, :2] = p2[k]
                p3[k, :, 2] = crop_pts[j, :, 2] * f
                scale[k] = float(s[j]) * f
            angles[start : start + len(idx)] = a.cpu().numpy()
            rot[start : start + len(idx)] = R.cpu().numpy()
        return TeacherPrediction(p2, p3, HeadPose(angles=angles, rotation=rot, scale=scale))

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the teacher: name, version, files with SHA-256, terms, conventions, preprocess."""
        return {
            "name": NAME,
            "version": VERSION,
            "architecture": "MobileNetV1 x0.5, 120 x 120 input, 62 outputs (12 pose + 40 shape + 10 expression)",
            "files": self.files,
            "terms": dict(self.terms),
            "conventions": dict(CONVENTIONS),
            "preprocess": self.preprocess.to_dict(),
        }


def _check_image(image: Any, k: int) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image {k} must be (H, W, 3) uint8 RGB, got {a.shape} {a.dtype}")
    return a


# ----------------------------------------------------------------------------- loading
def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise AssetError(f"{path}: file not found (the 3DDFA_V2 MobileNet x0.5 folder must hold {WEIGHTS_FILE}, "
                         f"{PARAM_STATS_FILE} and {KEYPOINTS_FILE})")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise AssetError(f"{path}: a single .npy array, expected an .npz archive of named arrays")
        with z:
            return {k: np.asarray(z[k]) for k in z.files}
    except AssetError:
        raise
    except ValueError as exc:  # object arrays need pickle: refused
        raise AssetError(f"{path}: not a plain numeric .npz ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile/numpy raise many types for damaged files
        raise AssetError(f"{path}: cannot read as .npz ({type(exc).__name__}: {exc})") from None


def _require(path: Path, arrays: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The ``expected`` arrays as float32, checked for presence, shape and finiteness (AssetError naming the file)."""
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise AssetError(f"{path}: missing array(s) {missing} (has {sorted(arrays)})")
    out = {}
    for k, shape in expected.items():
        a = arrays[k]
        if a.shape != shape:
            raise AssetError(f"{path}: '{k}' has shape {a.shape}, expected {shape}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise AssetError(f"{path}: '{k}' has dtype {a.dtype}, expected a numeric array")
        a = a.astype(np.float32)
        if not np.all(np.isfinite(a)):
            raise AssetError(f"{path}: '{k}' holds non-finite values")
        out[k] = a
    return out


def _load_state(path: Path, net: TDDFAMobileNet) -> None:
    arrays = _read_npz(path)
    reference = net.state_dict()
    missing = sorted(set(reference) - set(arrays))
    unexpected = sorted(set(arrays) - set(reference))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        raise AssetError(f"{path}: state-dict names do not match the MobileNetV1 x0.5 definition ({'; '.join(parts)})")
    state = {}
    for k, ref in reference.items():
        a = arrays[k]
        if tuple(a.shape) != tuple(ref.shape):
            raise AssetError(f"{path}: '{k}' has shape {a.shape}, expected {tuple(ref.shape)}")
        if ref.is_floating_point():
            if not np.issubdtype(a.dtype, np.floating):
                raise AssetError(f"{path}: '{k}' has dtype {a.dtype}, expected floating point")
            if not np.all(np.isfinite(a)):
                raise AssetError(f"{path}: '{k}' holds non-finite values")
        elif not np.issubdtype(a.dtype, np.integer):
            raise AssetError(f"{path}: '{k}' has dtype {a.dtype}, expected an integer")
        state[k] = torch.from_numpy(np.ascontiguousarray(a)).to(ref.dtype)
    if any(k.endswith("running_var") and bool((v < 0).any()) for k, v in state.items()):
        raise AssetError(f"{path}: negative BatchNorm running variance")
    net.load_state_dict(state, strict=True)


def load_tddfa_mb05(folder: str | Path) -> Teacher:
    """Load the 3DDFA_V2 MobileNet x0.5 teacher from a folder holding its three ``.npz`` files.

    The folder is read in place (e.g. ``../shared/models/3ddfa_v2_mb05``); nothing is copied.

    Raises:
        AssetError: the folder or a file is missing, unreadable, needs pickle, or an array is
            missing / misnamed / of the wrong shape / non-finite; the message names the file.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AssetError(f"{folder}: no such folder (expected the 3DDFA_V2 MobileNet x0.5 files {WEIGHTS_FILE}, "
                         f"{PARAM_STATS_FILE}, {KEYPOINTS_FILE})")
    net = TDDFAMobileNet()
    weights = folder / WEIGHTS_FILE
    _load_state(weights, net)
    stats_path = folder / PARAM_STATS_FILE
    stats = _require(stats_path, _read_npz(stats_path), {"mean": (N_PARAMS,), "std": (N_PARAMS,)})
    if not np.all(stats["std"] > 0):
        raise AssetError(f"{stats_path}: 'std' must be positive")
    kp_path = folder / KEYPOINTS_FILE
    n3 = 3 * N_LANDMARKS
    kp = _require(kp_path, _read_npz(kp_path),
                  {"u_base": (n3,), "w_shp_base": (n3, N_SHAPE), "w_exp_base": (n3, N_EXP)})
    files = {p.name: {"path": str(p.resolve()), "sha256": file_sha256(p)} for p in (weights, stats_path, kp_path)}
    logger.info("loaded %s from %s (terms: weights research use only, BFM keypoints academic)", NAME, folder)
    return Teacher(net, stats["mean"], stats["std"], kp["u_base"], kp["w_shp_base"], kp["w_exp_base"], files=files)
