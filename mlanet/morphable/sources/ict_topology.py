"""Facts about the ICT-FaceKit topology, as named constants.

Source: ICT-FaceKit ``README.md`` at upstream commit da5f95a (MIT licence,
Copyright (c) 2020 USC Institute for Creative Technologies). All indices are 0-based
vertex indices of the full 26,719-vertex mesh. The jaw-contour lists exist only in the
upstream README, not in ``vertex_indices.json``, so they are recorded here.
"""

from __future__ import annotations

#: Vertices of the full ICT mesh (every OBJ of the release has exactly this many).
N_VERTICES = 26719

#: Contiguous vertex ranges [start, stop) of the geometries the face crop may use.
#: The face and head-and-neck geometries are the first ones in the file, so each crop
#: preset is a prefix ``[0, stop)`` of the vertex array.
FACE_NARROW_STOP = 6706  # "Narrow face area" [0:6705]
FACE_STOP = 9409  # "Face" / "Full face area" [0:9408]
HEAD_AND_NECK_STOP = 11248  # "Head and Neck" [9409:11247]

#: Crop presets: name -> (vertex stop, description).
CROP_PRESETS: dict[str, tuple[int, str]] = {
    "narrow": (FACE_NARROW_STOP, "ICT narrow face area (no ears, forehead cut lower)"),
    "face": (FACE_STOP, "ICT full face area (face, ears, forehead)"),
    "face_neck": (HEAD_AND_NECK_STOP, "ICT face plus head-and-neck (whole skin surface, back of head, neck)"),
}
DEFAULT_CROP = "face"

#: Multi-PIE / iBUG 68-point landmark vertices (also ``idx_to_landmark_verts`` in vertex_indices.json).
LANDMARKS_68: tuple[int, ...] = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147,
    4269, 3360, 1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695,
    2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517,
    5966,
)

#: Alternatives for the jaw landmarks (README "Right jawline (substitutes 0-7 in Multi PIE)" etc.).
JAW_RIGHT: tuple[int, ...] = (1278, 1272, 12, 1834, 243, 781, 2199, 1447)
JAW_LEFT: tuple[int, ...] = (3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496)
JAW_RIGHT_EXTENDED: tuple[int, ...] = (
    1280, 1278, 1275, 1272, 1248, 12, 820, 1834, 1902, 243, 844, 781, 1673, 2199, 801, 1447, 800,
)
JAW_LEFT_EXTENDED: tuple[int, ...] = (
    3041, 3661, 3042, 4390, 3880, 3022, 3085, 2484, 4102, 4036, 3061, 2253, 3466, 3490, 3493, 3496, 3498,
)

#: Named landmark sets stored in the model file as ``landmarks/<name>``.
LANDMARK_SETS: dict[str, tuple[int, ...]] = {
    "jaw_right": JAW_RIGHT,
    "jaw_left": JAW_LEFT,
    "jaw_right_extended": JAW_RIGHT_EXTENDED,
    "jaw_left_extended": JAW_LEFT_EXTENDED,
}

#: Shapes shipped with the release that are not facial expressions; kept out of the basis.
EXCLUDED_SHAPES: dict[str, str] = {
    "PupilDilate_L": "pupil dilation changes the iris only (no facial motion, no ARKit name)",
    "PupilDilate_R": "pupil dilation changes the iris only (no facial motion, no ARKit name)",
}

#: The 52 Apple ARKit blendshape locations (ARFaceAnchor.BlendShapeLocation raw names).
ARKIT_BLENDSHAPES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft",
    "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft",
    "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)

#: ICT shapes split into sides where ARKit has one symmetric shape.
_ARKIT_MERGED = {"browInnerUp", "cheekPuff"}


def arkit_name(ict_name: str) -> str | None:
    """ARKit blendshape name for an ICT expression name, or ``None`` if ARKit has no such shape.

    ICT writes sides as ``_L``/``_R`` (the subject's left/right; ``_L`` moves +x in the model
    frame), ARKit as ``Left``/``Right``. ICT splits ``browInnerUp`` and ``cheekPuff`` into
    sides; both sides map to ARKit's single shape (combine their weights, e.g. by the mean).
    """
    base, side = ict_name, ""
    if ict_name.endswith("_L"):
        base, side = ict_name[:-2], "Left"
    elif ict_name.endswith("_R"):
        base, side = ict_name[:-2], "Right"
    candidate = base if base in _ARKIT_MERGED else base + side
    return candidate if candidate in ARKIT_BLENDSHAPES else None
