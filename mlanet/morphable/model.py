"""``MorphableModel``: the linear face model as a torch module.

All data lives in registered buffers, so ``.to(device)``, ``.double()`` and ``state_dict``
work as for any module. The geometry is one GEMM: identity and expression bases are stacked
into one (K_id + K_exp, 3V) matrix.

Frames and units: :meth:`shape` returns model-frame vertices, :meth:`forward` camera-frame
vertices (``R @ x + t``), both in metres; see :mod:`mlanet.conventions`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mlanet.errors import FaceModelNotFoundError
from mlanet.geometry.mesh import vertex_normals
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.geometry.sh import sh_shade
from mlanet.params import FaceParams, ParamLayout
from mlanet.paths import HOME_ENV_VAR, default_face_model_path, find_local_ict_assets
from mlanet.morphable.landmarks import definitions as sl
from mlanet.morphable.decoder_identity import build_recipe, decoder_signature
from mlanet.morphable.data import FaceModelData

def build_command(*flags: str) -> str:
    """A command that builds the default face model on this machine, as it can be typed.

    With a local ICT-FaceKit archive (:func:`~mlanet.paths.find_local_ict_assets`) the
    ``mlanet assets build --ict ... --mediapipe ...`` line with its absolute paths and ``flags``;
    otherwise ``mlanet assets fetch`` (downloads and verifies the pinned release; offline it
    fails at once and names the local-path form).
    """
    import shlex

    found = find_local_ict_assets()
    if found is None:
        return " ".join(["mlanet assets fetch", *flags])
    ict, mp = found
    words = ["mlanet", "assets", "build", "--ict", str(ict)] + (["--mediapipe", str(mp)] if mp else []) + list(flags)
    return " ".join(shlex.quote(w) for w in words)


class MorphableModel(nn.Module):
    """Linear 3DMM: ``shape = mean + B_id @ identity + B_exp @ expression``.

    Shapes: V vertices, F triangles, K_* basis sizes, B batch.

    Buffers: ``mean_shape`` (V, 3); ``shape_basis`` (K_id + K_exp, 3V); ``albedo_mean`` (V, 3);
    ``albedo_basis`` (K_alb, 3V); ``triangles`` (F, 3) long; ``uv`` (U, 2);
    ``triangles_uv`` (F, 3) long; ``landmark_index`` (68,) long; ``region_labels`` (V,) long;
    and, when the file has them, ``mediapipe_triangle`` (468,) long and
    ``mediapipe_barycentric`` (468, 3). Landmark definitions (:mod:`mlanet.morphable.landmarks.definitions`) are
    non-persistent buffers (``state_dict`` is unchanged by them); see :meth:`landmark_points`.
    """

    # registered buffers (typed here: nn.Module.__getattr__ would give Tensor | Module)
    mean_shape: torch.Tensor
    shape_basis: torch.Tensor
    albedo_mean: torch.Tensor
    albedo_basis: torch.Tensor
    triangles: torch.Tensor
    uv: torch.Tensor
    triangles_uv: torch.Tensor
    landmark_index: torch.Tensor
    region_labels: torch.Tensor

    def __init__(self, data: FaceModelData) -> None:
        super().__init__()
        data = data.normalised()
        data.validate()
        self.header: dict[str, Any] = dict(data.header)
        if not self.header.get("content_sha256"):  # built in memory, never saved: same checksum save() would write
            self.header["content_sha256"] = data.content_checksum()
        #: What the network's outputs mean with this model (see :mod:`.decoder_identity`).
        self.decoder_signature: dict[str, Any] = decoder_signature(data)
        self.n_identity = data.n_identity
        self.n_expression = data.n_expression
        self.n_albedo = data.n_albedo
        self.n_vertices = data.n_vertices
        V = data.n_vertices

        def t(a: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(a).to(dtype).clone()

        basis = torch.cat(
            [t(data.identity_basis).reshape(self.n_identity, 3 * V), t(data.expression_basis).reshape(self.n_expression, 3 * V)]
        )
        self.register_buffer("mean_shape", t(data.mean_shape))
        self.register_buffer("shape_basis", basis)
        self.register_buffer("albedo_mean", t(data.albedo_mean))
        self.register_buffer("albedo_basis", t(data.albedo_basis).reshape(self.n_albedo, 3 * V))
        self.register_buffer("triangles", t(data.triangles, torch.long))
        self.register_buffer("uv", t(data.uv))
        self.register_buffer("triangles_uv", t(data.triangles_uv, torch.long))
        self.register_buffer("landmark_index", t(data.landmarks68, torch.long))
        self.register_buffer("region_labels", t(data.region_labels, torch.long))
        self.has_mediapipe = "mediapipe/triangle" in data.extra
        if self.has_mediapipe:
            self.register_buffer("mediapipe_triangle", t(data.extra["mediapipe/triangle"], torch.long))
            self.register_buffer("mediapipe_barycentric", t(data.extra["mediapipe/barycentric"]))
        #: ICT's plain vertex-index landmark sets (``landmarks/jaw_*``), by name.
        self.landmark_sets = {
            k[len(sl.PREFIX):]: torch.as_tensor(v).long()
            for k, v in data.extra.items() if k.startswith(sl.PREFIX) and not sl.is_definition_key(k)
        }
        self._init_definitions(data)

    def _init_definitions(self, data: FaceModelData) -> None:
        """Buffers of every landmark definition (see :mod:`mlanet.morphable.landmarks.definitions`)."""
        tris = data.triangles.astype("int64")
        self._definitions: dict[str, dict[str, Any]] = {}
        self._definitions[sl.ICT68] = {
            "description": self.header.get("landmarks68", "iBUG-68 vertices of the face model (landmarks68)"),
            "kind": "view of landmarks68 (vertex indices)",
            "n_points": 68,
        }
        if self.has_mediapipe:
            self._definitions[sl.MEDIAPIPE468] = {
                "description": "MediaPipe canonical face mesh vertices (view of the mediapipe/* correspondence)",
                "kind": "view of mediapipe/triangle + mediapipe/barycentric",
                "n_points": int(len(data.extra["mediapipe/triangle"])),
            }
        for name, d in sl.read_definitions(data.extra, data.header).items():
            d.validate(len(tris), data.n_vertices, source=f"face model {self.model_id}")
            info = dict(d.info)
            info.update(kind="surface points (triangle + barycentric)", n_points=d.n_points,
                        n_contour=int(d.contour.sum()) if d.has_contour else 0)
            self._definitions[name] = info
            self.register_buffer(f"lmdef_{name}_corners", torch.as_tensor(d.corners(tris)).long(), persistent=False)
            self.register_buffer(f"lmdef_{name}_bary", torch.as_tensor(d.barycentric).float(), persistent=False)
            if d.has_contour:
                rows = torch.as_tensor(np.flatnonzero(d.contour)).long()
                cand = torch.as_tensor(d.contour_candidates[d.contour.astype(bool)]).long()
                side = torch.sign(torch.as_tensor(d.points(data.mean_shape, tris)[d.contour.astype(bool), 0])).float()
                self.register_buffer(f"lmdef_{name}_crow", rows, persistent=False)
                self.register_buffer(f"lmdef_{name}_cand", cand.clamp_min(0), persistent=False)
                self.register_buffer(f"lmdef_{name}_cvalid", cand >= 0, persistent=False)
                self.register_buffer(f"lmdef_{name}_cside", torch.where(side == 0, torch.ones_like(side), side),
                                     persistent=False)
        if any(v.get("n_contour") for v in self._definitions.values()):
            # vertices for estimating the head rotation from a mesh (Kabsch), away from eyes and lips
            keep = ~np.isin(data.region_labels, [i for i, n in enumerate(self.region_names) if n in ("eyes", "lips")])
            idx = np.flatnonzero(keep)
            idx = idx[:: max(1, len(idx) // 256)]
            self.register_buffer("_pose_ref_index", torch.as_tensor(idx).long(), persistent=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> "MorphableModel":
        """Load a face-model file; ``None`` loads the default one from the asset home."""
        return cls(load_face_model_data(path))

    # ------------------------------------------------------------------ description
    @property
    def model_id(self) -> str:
        return str(self.header["model_id"])

    @property
    def content_sha256(self) -> str | None:
        return self.header.get("content_sha256")

    @property
    def expression_names(self) -> list[str]:
        return list(self.header["expression_names"])

    @property
    def arkit_names(self) -> dict[str, str | None]:
        """Expression name -> ARKit blendshape name (``None`` where ARKit has no equivalent)."""
        return dict(self.header.get("expression_arkit", {}))

    @property
    def region_names(self) -> list[str]:
        return list(self.header["region_names"])

    @property
    def layout(self) -> ParamLayout:
        """The :class:`ParamLayout` of flat parameter vectors for this model."""
        return ParamLayout.for_face_model(self)

    def describe(self) -> dict[str, Any]:
        """Identity of the face model for artifacts.

        ``model_id``, ``content_sha256`` (the whole file, informative only), ``vertices``,
        ``layout``, ``decoder`` (:func:`~.decoder_identity.decoder_signature`: what artifacts are
        checked against) and ``build`` (how it was built, for the hint when it does not match).
        """
        return {
            "model_id": self.model_id,
            "content_sha256": self.content_sha256,
            "vertices": self.n_vertices,
            "layout": self.layout.to_dict(),
            "decoder": self.decoder_signature,
            "build": build_recipe(self.header),
        }

    def region_mask(self, *names: str) -> torch.Tensor:
        """(V,) bool mask of the vertices in any of the regions ``names``."""
        unknown = [n for n in names if n not in self.region_names]
        if unknown:
            raise KeyError(f"unknown region(s) {unknown}; this model has {self.region_names}")
        ids = torch.tensor([self.region_names.index(n) for n in names], device=self.region_labels.device)
        return torch.isin(self.region_labels, ids)

    # ------------------------------------------------------------------ geometry
    def _check(self, name: str, x: torch.Tensor, k: int) -> None:
        if x.ndim != 2 or x.shape[1] != k:
            raise ValueError(f"{name} must have shape (B, {k}) for face model {self.model_id}, got {tuple(x.shape)}")

    def shape(self, identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
        """Model-frame vertices (B, V, 3) in metres from identity (B, K_id) and expression (B, K_exp)."""
        self._check("identity", identity, self.n_identity)
        self._check("expression", expression, self.n_expression)
        coeffs = torch.cat([identity, expression], dim=1).to(self.shape_basis.dtype)
        flat = torch.addmm(self.mean_shape.reshape(1, -1), coeffs, self.shape_basis)
        return flat.reshape(-1, self.n_vertices, 3)

    def forward(self, params: FaceParams | torch.Tensor) -> torch.Tensor:
        """Camera-frame vertices (B, V, 3) in metres: ``R(rotation) @ shape + translation``.

        ``params`` is a :class:`FaceParams` or a flat (B, P) tensor in this model's layout.
        """
        if isinstance(params, torch.Tensor):
            params = FaceParams.from_flat(params, self.layout)
        verts = self.shape(params.identity, params.expression)
        rot = euler_to_matrix(params.rotation.to(verts.dtype))
        return verts @ rot.transpose(1, 2) + params.translation.to(verts.dtype)[:, None, :]

    def landmarks(self, vertices: torch.Tensor) -> torch.Tensor:
        """The 68 landmarks (B, 68, 3) of vertices (B, V, 3)."""
        return vertices[:, self.landmark_index]

    # ------------------------------------------------------------------ landmark definitions
    def landmark_names(self) -> list[str]:
        """Names accepted by :meth:`landmark_points`: ``ict68``, ``mediapipe468`` (when present) and the stored ones."""
        return list(self._definitions)

    def has_landmarks(self, name: str) -> bool:
        return name in self._definitions

    def landmark_definition(self, name: str) -> dict[str, Any]:
        """Metadata of definition ``name`` (a copy): description, point names, flip permutation, fit record, terms."""
        self._require_definition(name)
        return json_copy(self._definitions[name])

    def _require_definition(self, name: str) -> None:
        if name not in self._definitions:
            import difflib

            close = difflib.get_close_matches(name, list(self._definitions), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"face model {self.model_id} has no landmark definition {name!r} (it has {', '.join(self._definitions)})"
                f"{hint}; a face model built by an older MLANet lacks the fitted definitions: rebuild it with "
                f"{build_command()}"
            )

    def landmark_points(
        self,
        vertices: torch.Tensor,
        name: str = sl.ICT68,
        camera: Any = None,
        rotation: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Points (B, L, 3) of landmark definition ``name`` on meshes ``vertices`` (B, V, 3), in their frame.

        Without ``camera`` every point is its fixed surface point. With a camera
        (:class:`~mlanet.geometry.camera.PinholeCamera`, vertices in its frame) the definition's
        contour points follow the silhouette seen by it (:mod:`mlanet.morphable.landmarks.definitions`); ``rotation``
        (B, 3, 3), the head rotation, is estimated from the vertices when not given.
        """
        self._require_definition(name)
        if name == sl.ICT68:
            return vertices[:, self.landmark_index]
        if name == sl.MEDIAPIPE468:
            return self.mediapipe_points(vertices)
        pts = sl.barycentric_points(vertices, getattr(self, f"lmdef_{name}_corners"), getattr(self, f"lmdef_{name}_bary"))
        if camera is None or not self._definitions[name].get("n_contour"):
            return pts
        rows = getattr(self, f"lmdef_{name}_crow")
        cand = getattr(self, f"lmdef_{name}_cand")  # (Lc, C)
        if rotation is None:
            ref = self.mean_shape[self._pose_ref_index]
            rotation = sl.estimate_rotation(vertices[:, self._pose_ref_index], ref)
        cand_cam = vertices[:, cand]  # (B, Lc, C, 3)
        pick = sl.select_silhouette(cand_cam, getattr(self, f"lmdef_{name}_cvalid"), camera,
                                    rotation.to(vertices.dtype), getattr(self, f"lmdef_{name}_cside"))
        chosen = torch.gather(cand_cam, 2, pick[:, :, None, None].expand(-1, -1, 1, 3))[:, :, 0]
        pts = pts.clone()
        pts[:, rows] = chosen
        return pts

    def project_landmarks(
        self, vertices: torch.Tensor, name: str, camera: Any, silhouette: bool = True, rotation: torch.Tensor | None = None
    ) -> torch.Tensor:
        """2D landmarks (B, L, 2) of definition ``name`` seen by ``camera``; contour points follow the
        silhouette unless ``silhouette=False``."""
        pts = self.landmark_points(vertices, name, camera=camera if silhouette else None, rotation=rotation)
        return camera.project(pts)

    def normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """Unit vertex normals (B, V, 3), outward."""
        return vertex_normals(vertices, self.triangles)

    def albedo(self, coeffs: torch.Tensor) -> torch.Tensor:
        """Per-vertex albedo (B, V, 3), RGB in [0, 1] for in-distribution coefficients (B, K_alb).

        Not clamped, so gradients stay informative; clamp when displaying.
        """
        self._check("albedo coefficients", coeffs, self.n_albedo)
        flat = torch.addmm(self.albedo_mean.reshape(1, -1), coeffs.to(self.albedo_basis.dtype), self.albedo_basis)
        return flat.reshape(-1, self.n_vertices, 3)

    def vertex_colors(self, params: FaceParams, vertices: torch.Tensor | None = None) -> torch.Tensor:
        """Lit per-vertex colour (B, V, 3): albedo shaded by the SH lighting at camera-frame normals."""
        if vertices is None:
            vertices = self.forward(params)
        return sh_shade(self.albedo(params.albedo), self.normals(vertices), params.lighting.to(vertices.dtype))

    def mediapipe_points(self, vertices: torch.Tensor) -> torch.Tensor:
        """Positions (B, 468, 3) of MediaPipe's canonical-mesh vertices on the model surface."""
        if not self.has_mediapipe:
            raise RuntimeError(
                f"face model {self.model_id} has no MediaPipe correspondence; rebuild it with "
                "`mlanet assets build --ict ... --mediapipe /path/to/canonical_face_model.obj`"
            )
        corners = vertices[:, self.triangles[self.mediapipe_triangle]]  # (B, 468, 3, 3)
        return (corners * self.mediapipe_barycentric.to(vertices.dtype)[None, :, :, None]).sum(dim=2)


def json_copy(obj: Any) -> Any:
    """A deep copy of a JSON-like object (dicts, lists, scalars)."""
    import json

    return json.loads(json.dumps(obj))


def load_face_model_data(path: str | os.PathLike[str] | None = None) -> FaceModelData:
    """Read a face-model file; ``None`` means the default model in the asset home.

    Raises :class:`FaceModelNotFoundError` with the command that builds it when absent.
    """
    if path is None:
        path = default_face_model_path()
        if not Path(path).is_file():
            raise FaceModelNotFoundError(
                f"no face model at {path} (the asset home; set ${HOME_ENV_VAR} to use another). "
                f"Build it with: {build_command()}"
            )
    elif not Path(path).is_file():
        raise FaceModelNotFoundError(f"{path}: no such face-model file. Build the default one with: {build_command()}")
    return FaceModelData.load(path)
