"""What the live outputs send for one frame: the chosen face's ARKit weights and head pose, stamped
with the frame's capture time.

A :class:`FaceSample` is made once per processed frame by :class:`FaceSampler` from the pipeline's
:class:`~mlanet.edge.types.FrameResult` and handed to every sink (VMC/OSC, the browser viewer).
Weights are the 52 ARKit blendshapes in Apple's order (:data:`ARKIT_NAMES`); shapes the face model
has no ARKit name for are 0. The expression head of the network puts the model's expression weights
in [0, 1] by construction; nothing here clamps them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from mlanet.conventions import camera_pose_to_vmc
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.morphable.sources.ict_topology import ARKIT_BLENDSHAPES
from mlanet.edge.writers.tables import ArkitMapping
from mlanet.edge.send import LARGEST, parse_face_choice  # noqa: F401 (parse_face_choice re-exported)
from mlanet.edge.types import FaceFit, FrameResult

if TYPE_CHECKING:
    from mlanet.morphable.model import MorphableModel

#: The 52 ARKit blendshape names, in the order they are sent.
ARKIT_NAMES: tuple[str, ...] = tuple(ARKIT_BLENDSHAPES)

@dataclass(frozen=True)
class FaceSample:
    """One tracked face of one frame.

    Attributes:
        capture_unix_s: wall-clock time of the frame's capture (seconds since the Unix epoch).
        frame_index: the frame's number in its source.
        track_id: the tracker's id of the face.
        weights: (52,) float32 ARKit weights in :data:`ARKIT_NAMES` order.
        rotation: (3, 3) head rotation, model frame -> OpenCV camera frame.
        translation: (3,) metres, OpenCV camera frame.
        vmc_position: (3,) metres and ``vmc_quaternion`` (4,) ``xyzw``: the same pose in the VMC
            protocol's Unity-style frame (:func:`mlanet.conventions.camera_pose_to_vmc`).
    """

    capture_unix_s: float
    frame_index: int
    track_id: int
    weights: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    vmc_position: np.ndarray
    vmc_quaternion: np.ndarray


class CaptureClock:
    """Maps a frame's ``t_capture_ns`` to wall-clock seconds.

    Live sources stamp frames with ``time.monotonic_ns()``; a file replayed by ``mlanet-video``
    stamps them with their presentation time in the file, and the replay starts when its first
    frame is sent (``file_replay=True``): that frame is due at once and stamped with the wall
    clock of that moment, and every later frame is due (:meth:`wait_until_due`) and stamped at
    its presentation time after it.
    """

    def __init__(self, *, file_replay: bool = False) -> None:
        self.file_replay = file_replay
        self._wall0_ns = time.time_ns()
        self._mono0_ns = time.monotonic_ns()
        self._first_pts_ns: int | None = None

    def _anchor(self, t_capture_ns: int) -> int:
        """The first frame's capture time (ns); the first call makes ``t_capture_ns`` it, now."""
        if self._first_pts_ns is None:
            self._first_pts_ns = int(t_capture_ns)
            self._wall0_ns, self._mono0_ns = time.time_ns(), time.monotonic_ns()
        return self._first_pts_ns

    def unix_s(self, t_capture_ns: int) -> float:
        if self.file_replay:
            first_ns = self._anchor(t_capture_ns)
            return (self._wall0_ns + int(t_capture_ns) - first_ns) * 1e-9
        return (self._wall0_ns + int(t_capture_ns) - self._mono0_ns) * 1e-9

    def wait_until_due(self, t_capture_ns: int) -> None:
        """For a file replay: sleep until the frame's presentation time has come (real-time pacing;
        a frame that is already late goes at once)."""
        if self.file_replay:
            first_ns = self._anchor(t_capture_ns)
            delay = (self._mono0_ns + int(t_capture_ns) - first_ns - time.monotonic_ns()) * 1e-9
            if delay > 0:
                time.sleep(delay)


class FaceSampler:
    """Turns frame results into :class:`FaceSample` for the face ``choice`` selects.

    Args:
        face_model: the ``MorphableModel`` the parameters belong to.
        choice: :data:`LARGEST` (the face with the largest crop this frame) or a track id.
        clock: how capture times become wall-clock times.
    """

    def __init__(self, face_model: MorphableModel, choice: str | int = LARGEST, clock: CaptureClock | None = None) -> None:
        mapping = ArkitMapping.from_model(face_model)
        self.layout = face_model.layout
        self.slices = self.layout.slices()
        self.choice = choice
        self.clock = clock or CaptureClock()
        # (52, K_exp): ARKit weights in ARKIT_NAMES order; rows of names the model lacks stay 0
        self.matrix = np.zeros((len(ARKIT_NAMES), len(mapping.expression_names)), dtype=np.float64)
        for row, name in enumerate(mapping.names):
            if name in ARKIT_NAMES:
                self.matrix[ARKIT_NAMES.index(name)] = mapping.matrix[row]

    def pick(self, faces: list[FaceFit]) -> FaceFit | None:
        """The chosen face among ``faces`` (``FaceFit``), or None when it is not in the frame."""
        if not faces:
            return None
        if self.choice == LARGEST:
            return max(faces, key=lambda f: float(f.box.size))
        return next((f for f in faces if f.track_id == self.choice), None)

    def sample(self, result: FrameResult) -> FaceSample | None:
        """The sample of one ``FrameResult`` (None: no chosen face in this frame)."""
        face = self.pick(result.faces)
        if face is None:
            return None
        params = np.asarray(face.params, dtype=np.float64)
        expression = params[self.slices["expression"]]
        R = euler_to_matrix(torch.from_numpy(params[self.slices["rotation"]]).reshape(1, 3))[0].numpy()
        t = params[self.slices["translation"]].copy()
        position, quaternion = camera_pose_to_vmc(R, t)
        return FaceSample(
            capture_unix_s=self.clock.unix_s(result.frame.t_capture_ns),
            frame_index=int(result.frame.index),
            track_id=int(face.track_id),
            weights=(self.matrix @ expression).astype(np.float32),
            rotation=R,
            translation=t,
            vmc_position=position,
            vmc_quaternion=quaternion,
        )
