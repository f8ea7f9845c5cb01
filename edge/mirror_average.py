"""Mirror averaging: each face's expression weights and pose from the crop and its left-right mirror image.

A face opens its jaw as far in a mirror, but a network need not agree with itself: the shipped
``mlanet_mobile`` gives the held-out Obama clip a jawOpen that follows the lip gap at r 0.63, and the
same clip mirrored r 0.82 (``mlanet eval expressions --mirror``; frame by frame the two differ by
0.08 on average). :class:`MirrorAveragedBackend` wraps any backend: it runs the network once on the
crops and their mirror images stacked into one batch (2B) and returns the crops' own parameters with
the expression weights and the pose replaced by the mean of the two, the mirror's mapped back
(:func:`mlanet.morphable.mirror.mirror_average`: ``eyeBlink_L`` <-> ``eyeBlink_R``, yaw and roll and x
negated). The result is mirror-consistent by construction: a mirrored input gives exactly the mirrored
weights and pose.

Identity, albedo and lighting come from the crop's own pass (a mirrored identity is not a permutation of
the identity coefficients). Blendshape face models only (PCA expression coefficients have no mirror map).
It costs a second network pass per face (one batch of 2B). ``mlanet eval aflw2000 --mirror-average``
scores the same average (:class:`mlanet.eval.predict.MirrorAveragedNetwork`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mlanet.morphable.mirror import expression_mirror_permutation, mirror_average, require_mirrorable


class MirrorAveragedBackend:
    """An :class:`~mlanet.edge.backends.base.InferenceBackend` that averages each face's expression weights and
    pose with its mirror image's (see the module docstring). ``metadata.runtime["mirror_average"]`` is True."""

    def __init__(self, inner: Any, face_model: Any) -> None:
        require_mirrorable(face_model)
        self.inner = inner
        self.metadata = inner.metadata.with_runtime(mirror_average=True)
        self.perm = expression_mirror_permutation(face_model.expression_names)

    def __call__(self, images: Any) -> np.ndarray:
        """``images (B, 3, S, S)`` float32 in [0, 1] (numpy, or a torch tensor on any device) -> ``(B, P)`` numpy."""
        both: Any
        if hasattr(images, "flip") and hasattr(images, "detach"):  # torch: stay on its device
            import torch

            both = torch.cat([images, images.flip(-1)], 0)
        else:
            arr = np.asarray(images)
            both = np.ascontiguousarray(np.concatenate([arr, arr[..., ::-1]], 0))
        out = np.asarray(self.inner(both), dtype=np.float32)
        n = out.shape[0] // 2
        return mirror_average(out[:n], out[n:], self.metadata.layout, self.perm)

    def warmup(self) -> None:
        """The inner backend's warm-up, then one call of a blank crop: the batch of two this wrapper runs per face
        (CUDA-graph capture, allocator) is ready before the first frame."""
        self.inner.warmup()
        size = self.metadata.preprocess.input_size
        self(np.zeros((1, 3, size, size), np.float32))

    def close(self) -> None:
        self.inner.close()
