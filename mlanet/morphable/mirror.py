"""What a left-right mirror of the crop does to a face's parameters, and the mirror average.

A blendshape model's mirrored face has the same weights with left and right shapes traded
(``eyeBlink_L`` <-> ``eyeBlink_R``); symmetric shapes (``jawOpen``) keep theirs. PCA expression
coefficients have no such map (:func:`mirrors_expressions`).

The pose: flipping the crop about its centre (``image[..., ::-1]``; the crop camera's principal point
is the centre, :meth:`mlanet.preprocess.PreprocessCfg.camera`) mirrors camera space in x. For
``R = Rz(roll) Ry(yaw) Rx(pitch)`` (:func:`mlanet.geometry.rotations.euler_to_matrix`) the mirrored
rotation ``M R M`` (``M = diag(-1, 1, 1)``) has angles (pitch, -yaw, -roll), and the translation
(-tx, ty, tz) (:data:`ROTATION_MIRROR_SIGNS`, :data:`TRANSLATION_MIRROR_SIGNS`); this assumes the face
model's head is symmetric about its own x = 0 plane, as ICT-FaceKit's is. A mirrored identity is not a
permutation of identity coefficients, nor are albedo or SH light (its x-odd bands change sign; not used).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Multiply the (pitch, yaw, roll) of a mirrored crop's fit by these to express it in the original crop.
ROTATION_MIRROR_SIGNS = (1.0, -1.0, -1.0)
#: Multiply the (tx, ty, tz) of a mirrored crop's fit by these to express it in the original crop.
TRANSLATION_MIRROR_SIGNS = (-1.0, 1.0, 1.0)

#: Name suffix pairs that mark the two sides of one shape.
SIDE_SUFFIXES = (("_L", "_R"), ("_R", "_L"), ("Left", "Right"), ("Right", "Left"))


def expression_mirror_permutation(names: Sequence[str]) -> np.ndarray:
    """(K,) int64: expression ``k`` of a mirrored face is expression ``perm[k]`` of the original.

    Pairs names that differ only in a ``_L``/``_R`` (or ``Left``/``Right``) suffix; every other
    expression (symmetric shapes such as ``jawOpen``) maps to itself.
    """
    index = {n: i for i, n in enumerate(names)}
    perm = list(range(len(names)))
    for i, n in enumerate(names):
        for a, b in SIDE_SUFFIXES:
            if n.endswith(a) and n[: -len(a)] + b in index:
                perm[i] = index[n[: -len(a)] + b]
                break
    return np.asarray(perm, dtype=np.int64)


def mirrors_expressions(face_model: Any) -> bool:
    """Whether a mirror permutes ``face_model``'s expression parameters (blendshape models; not PCA)."""
    return str(face_model.header.get("expression_kind", "blendshapes")) == "blendshapes"


def require_mirrorable(face_model: Any, what: str = "mirror averaging") -> None:
    """Raise :class:`~mlanet.errors.MLANetError` naming ``what`` when ``face_model``'s expressions are PCA coefficients."""
    if not mirrors_expressions(face_model):
        from mlanet.errors import MLANetError

        raise MLANetError(f"{what}: face model {face_model.model_id} has PCA expression coefficients, "
                          "which a mirror does not permute")


def mirror_average(plain: Any, mirrored: Any, layout: Any, expression_perm: Any) -> Any:
    """Parameters ``(B, P)`` for crops from the network's ``plain`` output for them and its ``mirrored`` output for
    the same crops flipped left-right (numpy arrays or torch tensors, the same kind; not modified).

    Expression weights and pose (rotation, translation) are the mean of the two, the mirrored ones mapped back
    (``expression_perm``: :func:`expression_mirror_permutation`; the pose by the sign vectors above); identity,
    albedo and light are the plain pass's. The result is mirror-consistent: swapping the roles of a crop and
    its mirror image gives the mirrored result.
    """
    s = layout.slices()
    if isinstance(plain, np.ndarray):
        out, perm = plain.copy(), np.asarray(expression_perm)

        def signs(v: Sequence[float]) -> Any:
            return np.asarray(v, dtype=plain.dtype)
    else:  # a torch tensor (imported only here: the numpy path needs no torch)
        import torch

        out = plain.clone()
        perm = (expression_perm.to(plain.device) if isinstance(expression_perm, torch.Tensor)
                else torch.as_tensor(np.asarray(expression_perm), device=plain.device))

        def signs(v: Sequence[float]) -> Any:
            return plain.new_tensor(v)
    ex = s["expression"]
    out[:, ex] = 0.5 * (plain[:, ex] + mirrored[:, ex][:, perm])
    for name, sign in (("rotation", ROTATION_MIRROR_SIGNS), ("translation", TRANSLATION_MIRROR_SIGNS)):
        sl = s[name]
        out[:, sl] = 0.5 * (plain[:, sl] + mirrored[:, sl] * signs(sign))
    return out
