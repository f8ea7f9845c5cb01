"""How a face model's expression shapes map under a left-right mirror of the face.

A blendshape model's mirrored face has the same weights with left and right shapes traded
(``eyeBlink_L`` <-> ``eyeBlink_R``); symmetric shapes (``jawOpen``) keep theirs. PCA expression
coefficients have no such map (:func:`mirrors_expressions`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

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
