"""The project's geometric and colour conventions, written once.

Everything here is a constant or a tiny pure function; ``docs/conventions.md`` is the prose
version of the same facts. Nothing in the library may re-state these numbers elsewhere.

Image pixels
    Origin at the top-left corner of the top-left pixel, +x right, +y down. The *centre* of
    pixel (i, j) (column i, row j) is at ``(i + 0.5, j + 0.5)``: ``PIXEL_CENTER_OFFSET``.

Camera frame (OpenCV)
    +x right, +y down, +z forward (the viewing direction). Lengths in metres, angles in
    radians. Rotation matrices left-multiply column vectors: ``x_cam = R @ x_model + t``.

Model frame (every face model after loading)
    Metres. Axes aligned with the camera frame for a face looking straight into the camera:
    +x towards the subject's *left* (image right for a frontal face), +y towards the chin,
    +z from the face towards the back of the head. A face with identity rotation and
    translation ``(0, 0, d)``, ``d > 0``, therefore faces a camera at the origin.

Triangles
    int32, counter-clockwise front faces as seen from the camera *in a y-up view* (OpenGL
    NDC after :meth:`mlanet.geometry.camera.PinholeCamera.projection_matrix_gl`), so that
    ``(v1 - v0) x (v2 - v0)`` is the outward normal. In image pixel coordinates (y down) a
    front face has *negative* shoelace area (it appears clockwise).

VMC protocol frame (``/VMC/Ext/Bone/Pos``; Unity style)
    Left-handed, metres: +x right, +y up, +z forward, for an avatar that faces the camera and
    does what the performer does (the performer's left is the avatar's left, as ARKit's
    ``...Left`` blendshapes are the face's own left). Every OpenCV camera axis flips:
    ``u = -x_cam`` (``OPENCV_TO_VMC``); a head rotation ``R`` (model -> camera) is
    ``OPENCV_TO_VMC @ R @ OPENCV_TO_VMC^T = R`` in that frame, and the head's position is
    ``-t``: where the head is relative to the camera (``z < 0``: in front of it, the avatar
    facing +z towards it). :func:`camera_pose_to_vmc` converts.

Colour
    RGB float in [0, 1] inside the library. BGR uint8 exists only at the OpenCV boundary.

Spherical harmonics
    Second-order real SH, 9 coefficients per colour channel, flat order channel-major
    ``(R0..R8, G0..G8, B0..B8)``; basis order ``Y00, Y1-1(y), Y10(z), Y11(x), Y2-2(xy),
    Y2-1(yz), Y20(3z^2-1), Y21(xz), Y22(x^2-y^2)`` evaluated on unit normals in the camera
    frame.

Tensor shape letters in docstrings: B batch, V vertices, F faces, L landmarks, P params,
H W image size, K basis modes.
"""

from __future__ import annotations

import numpy as np

from mlanet.geometry.quaternions import matrices_to_quaternions

#: Offset from a pixel's integer index to its centre, in pixels.
PIXEL_CENTER_OFFSET: float = 0.5

#: Metres per centimetre (ICT-FaceKit and MediaPipe's canonical mesh are in centimetres).
METRES_PER_CM: float = 0.01

#: Proper rotation (det +1) taking a y-up, z-towards-viewer asset frame (OBJ/Maya style, as
#: used by ICT-FaceKit, MediaPipe's canonical mesh and the Basel Face Model) to the model
#: frame above: x unchanged, y and z negated (180 degrees about x).
Y_UP_TO_MODEL_FRAME: np.ndarray = np.diag([1.0, -1.0, -1.0])

#: Number of spherical-harmonics coefficients per colour channel (bands 0..2).
SH_COEFFS_PER_CHANNEL: int = 9

#: Number of colour channels.
COLOUR_CHANNELS: int = 3


def y_up_to_model_frame(vertices: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """Convert asset-frame vertices (..., 3) in asset units to model-frame metres (..., 3).

    ``metres_per_unit`` is 0.01 for centimetres, 1e-3 for millimetres.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.shape[-1] != 3:
        raise ValueError(f"vertices must have a last dimension of 3, got shape {v.shape}")
    return (v @ Y_UP_TO_MODEL_FRAME.T) * metres_per_unit


#: OpenCV camera frame -> the VMC protocol's Unity-style frame (see the module docstring): a
#: reflection (det -1), because Unity's frame is left-handed.
OPENCV_TO_VMC: np.ndarray = -np.eye(3)


def camera_pose_to_vmc(rotation: np.ndarray, translation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A head pose ``x_cam = R @ x_model + t`` as the VMC protocol's position and rotation.

    Args:
        rotation: (3, 3) proper rotation, model frame -> OpenCV camera frame.
        translation: (3,) metres, OpenCV camera frame.

    Returns:
        ``(position, quaternion)``: (3,) metres and (4,) unit quaternion ``x, y, z, w`` (Unity's
        order), both in the VMC frame; the identity rotation (facing the camera) is ``(0, 0, 0, 1)``.
    """
    R = np.asarray(rotation, dtype=np.float64)
    t = np.asarray(translation, dtype=np.float64)
    if R.shape != (3, 3) or t.shape != (3,):
        raise ValueError(f"rotation must be (3, 3) and translation (3,), got {R.shape} and {t.shape}")
    R_vmc = OPENCV_TO_VMC @ R @ OPENCV_TO_VMC.T
    q = matrices_to_quaternions(R_vmc[None])[0]
    if q[3] < 0.0:  # one of the two equal quaternions, w >= 0
        q = -q
    return OPENCV_TO_VMC @ t, q
