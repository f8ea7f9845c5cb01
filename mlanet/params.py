"""The flat parameter vector: one layout, one structured view.

:class:`ParamLayout` is the single source of truth for how the network's flat output
``(B, P)`` splits into parameter groups. Nothing else in the project slices that vector.

Groups, in order (sizes of the first three come from the face model):

=============  =========  ====================================================================
group          size       meaning
=============  =========  ====================================================================
identity       K_id       identity-shape coefficients, ~N(0, 1) (bases are scaled by sigma)
expression     K_exp      expression weights (blendshape weights, ~[0, 1] for ICT; PCA for BFM)
albedo         K_alb      albedo coefficients, ~N(0, 1)
rotation       3          Euler angles (pitch, yaw, roll) in radians,
                          ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (see ``geometry.rotations``)
translation    3          model-frame origin in the camera frame, metres
lighting       27         SH coefficients, channel-major ``(3, 9)`` (see ``conventions``)
=============  =========  ====================================================================
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from mlanet.conventions import COLOUR_CHANNELS, SH_COEFFS_PER_CHANNEL

#: Group names in flat-vector order.
GROUPS: tuple[str, ...] = ("identity", "expression", "albedo", "rotation", "translation", "lighting")

#: Version of the serialised layout dictionary.
LAYOUT_VERSION = 1

#: SH DC coefficient that makes Lambertian shading of any normal equal 1:
#: ``pi * Y00 * L00 = 1`` with ``Y00 = 1 / (2 sqrt(pi))``.
UNIT_AMBIENT_SH_DC: float = 2.0 / math.sqrt(math.pi)


@dataclass(frozen=True)
class ParamLayout:
    """Sizes of each parameter group of the flat vector ``(B, P)``.

    Build it from a face model with :meth:`for_face_model` (or directly from sizes) and store
    :meth:`to_dict` inside every artifact; :meth:`from_dict` reads it back and refuses unknown
    versions or keys.
    """

    identity: int
    expression: int
    albedo: int
    rotation: int = 3
    translation: int = 3
    lighting: int = COLOUR_CHANNELS * SH_COEFFS_PER_CHANNEL

    def __post_init__(self) -> None:
        for name in GROUPS:
            size = getattr(self, name)
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ValueError(f"ParamLayout.{name} must be a non-negative int, got {size!r}")
        if self.rotation != 3:
            raise ValueError(f"ParamLayout.rotation must be 3 (Euler angles), got {self.rotation}")
        if self.translation != 3:
            raise ValueError(f"ParamLayout.translation must be 3, got {self.translation}")
        if self.lighting != COLOUR_CHANNELS * SH_COEFFS_PER_CHANNEL:
            raise ValueError(f"ParamLayout.lighting must be 27 (3 x 9 SH), got {self.lighting}")

    @classmethod
    def for_face_model(cls, face_model: Any) -> "ParamLayout":
        """Layout matching a face model (anything with ``n_identity``, ``n_expression``, ``n_albedo``)."""
        return cls(
            identity=int(face_model.n_identity),
            expression=int(face_model.n_expression),
            albedo=int(face_model.n_albedo),
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Group name -> size, in flat-vector order."""
        return {name: getattr(self, name) for name in GROUPS}

    @property
    def total(self) -> int:
        """Length P of the flat vector."""
        return sum(self.sizes.values())

    def slices(self) -> dict[str, slice]:
        """Group name -> slice into the flat vector, in order."""
        out: dict[str, slice] = {}
        start = 0
        for name, size in self.sizes.items():
            out[name] = slice(start, start + size)
            start += size
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (stored in checkpoints, ONNX metadata, engine headers)."""
        return {"version": LAYOUT_VERSION, "groups": list(GROUPS), **self.sizes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParamLayout":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` on unknown versions or keys."""
        d = dict(d)
        version = d.pop("version", None)
        if version != LAYOUT_VERSION:
            raise ValueError(f"unsupported ParamLayout version {version!r} (this MLANet reads {LAYOUT_VERSION})")
        groups = d.pop("groups", list(GROUPS))
        if list(groups) != list(GROUPS):
            raise ValueError(f"ParamLayout group order {groups} differs from {list(GROUPS)}")
        unknown = set(d) - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown ParamLayout keys: {sorted(unknown)}")
        return cls(**{k: int(v) for k, v in d.items()})


@dataclass(frozen=True)
class FaceParams:
    """Structured view of a batch of flat parameter vectors.

    Attributes (B = batch):
        identity (B, K_id), expression (B, K_exp), albedo (B, K_alb),
        rotation (B, 3) Euler radians, translation (B, 3) metres,
        lighting (B, 3, 9) SH coefficients per colour channel.
    """

    identity: torch.Tensor
    expression: torch.Tensor
    albedo: torch.Tensor
    rotation: torch.Tensor
    translation: torch.Tensor
    lighting: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.rotation.shape[0])

    @property
    def layout(self) -> ParamLayout:
        return ParamLayout(
            identity=int(self.identity.shape[1]),
            expression=int(self.expression.shape[1]),
            albedo=int(self.albedo.shape[1]),
        )

    @classmethod
    def from_flat(cls, flat: torch.Tensor, layout: ParamLayout) -> "FaceParams":
        """Split ``flat`` (B, P) according to ``layout``. Views, not copies."""
        if flat.ndim != 2 or flat.shape[1] != layout.total:
            raise ValueError(
                f"flat parameters must have shape (B, {layout.total}) for layout {layout.sizes}, "
                f"got {tuple(flat.shape)}"
            )
        parts = {name: flat[:, s] for name, s in layout.slices().items()}
        parts["lighting"] = parts["lighting"].reshape(-1, COLOUR_CHANNELS, SH_COEFFS_PER_CHANNEL)
        return cls(**parts)

    def to_flat(self) -> torch.Tensor:
        """Concatenate back to (B, P) in layout order."""
        b = self.batch_size
        return torch.cat([getattr(self, n).reshape(b, -1) for n in GROUPS], dim=1)

    @classmethod
    def zeros(cls, layout: ParamLayout, batch_size: int = 1, **tensor_kwargs: Any) -> "FaceParams":
        """All-zero parameters (neutral face at the camera origin, no light)."""
        return cls.from_flat(torch.zeros(batch_size, layout.total, **tensor_kwargs), layout)

    @classmethod
    def neutral(
        cls, layout: ParamLayout, batch_size: int = 1, depth_m: float = 0.6, **tensor_kwargs: Any
    ) -> "FaceParams":
        """Mean face looking into the camera at ``depth_m`` metres under unit white ambient light.

        A sensible prior for regression heads and renderers: shading is 1 everywhere, so the
        rendered colour equals the albedo.
        """
        flat = torch.zeros(batch_size, layout.total, **tensor_kwargs)
        s = layout.slices()
        flat[:, s["translation"].start + 2] = depth_m
        for channel in range(COLOUR_CHANNELS):  # DC coefficient of each channel (channel-major)
            flat[:, s["lighting"].start + channel * SH_COEFFS_PER_CHANNEL] = UNIT_AMBIENT_SH_DC
        return cls.from_flat(flat, layout)

    def select(self, index: torch.Tensor | slice) -> "FaceParams":
        """The samples ``index`` of the batch (a bool mask, index tensor or slice)."""
        return FaceParams(**{name: getattr(self, name)[index] for name in GROUPS})

    def replace(self, **changes: torch.Tensor) -> "FaceParams":
        """Copy with some groups replaced."""
        return dataclasses.replace(self, **changes)


def require_finite_params(params: Any, source: str) -> Any:
    """Return ``params`` (B, P) (numpy array or tensor) unchanged, or raise if any value is NaN/inf.

    The one check at the network boundary (every inference backend and evaluation calls it), so
    damaged weights stop with a clear error instead of NaN meshes deep in a writer.

    Raises:
        NonFiniteOutputError: naming ``source`` and how many of the B faces are affected.
    """
    from mlanet.errors import NonFiniteOutputError

    finite = torch.isfinite(params) if isinstance(params, torch.Tensor) else _np_isfinite(params)
    if finite.all():
        return params
    rows = finite.reshape(finite.shape[0], -1).all(1) if finite.ndim else finite
    n_bad = int((~rows).sum()) if finite.ndim else 1
    total = int(finite.shape[0]) if finite.ndim else 1
    raise NonFiniteOutputError(
        f"{source}: the network produced NaN or infinite parameters for {n_bad} of {total} faces; "
        "its weights are damaged or were trained into divergence; use intact weights"
    )


def _np_isfinite(a: Any) -> Any:
    import numpy as np

    return np.isfinite(np.asarray(a))
