"""Build the project's compact face-model file from an ICT-FaceKit release.

Steps (each a function below): read the release (:mod:`mlanet.morphable.sources.ict_archive`); crop to a face region
(a preset of :data:`~.ict_topology.CROP_PRESETS`), keeping only polygons whose vertices all
lie in it, re-indexing vertices and UVs and fan-triangulating quads (per-corner UV indices
are carried through, so UV seams stay seams); convert to the model frame in metres; take
identity modes and expression shapes as deltas from the neutral mesh; re-index the 68
landmarks and the jaw-contour alternatives; label regions; add the default albedo model and
the MediaPipe correspondence; record provenance in the header.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlanet import __version__
from mlanet.conventions import METRES_PER_CM, y_up_to_model_frame
from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256
from mlanet.morphable.sources import ict_topology as topo
from mlanet.morphable.albedo.regional import DEFAULT_ALBEDO_ID, default_albedo_model
from mlanet.morphable.albedo.file import resolve_albedo
from mlanet.morphable.data import FaceModelData
from mlanet.morphable.landmarks.file import resolve_landmarks
from mlanet.morphable.sources.ict_archive import (
    PINNED_COMMIT,
    PINNED_CONTENT_SHA256,
    UPSTREAM_REPO,
    IctRelease,
    ProgressFn,
    read_ict_release,
)
from mlanet.morphable.obj import triangulate
from mlanet.morphable.regions import REGION_NAMES, SKIN_REGIONS, label_regions

log = logging.getLogger(__name__)

ICT_LICENSE = (
    "MIT License. Copyright (c) 2020 USC Institute for Creative Technologies. Permission is hereby "
    "granted, free of charge, to any person obtaining a copy of this software and associated "
    "documentation files (the \"Software\"), to deal in the Software without restriction, including "
    "without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or "
    "sell copies of the Software, and to permit persons to whom the Software is furnished to do so, "
    "subject to the following conditions: The above copyright notice and this permission notice shall be "
    "included in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED \"AS IS\", "
    "WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF "
    "MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS "
    "OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF "
    "CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR "
    "OTHER DEALINGS IN THE SOFTWARE."
)


@dataclass
class CroppedMesh:
    """A cropped, triangulated, re-indexed mesh.

    vertex_index (V,) original vertex of each new vertex; uv_index (U,) original UV index;
    triangles (F, 3) and triangles_uv (F, 3) new indices; source_polygon (F,) original polygon.
    """

    vertex_index: np.ndarray
    uv_index: np.ndarray
    triangles: np.ndarray
    triangles_uv: np.ndarray
    source_polygon: np.ndarray

    def remap(self, original: np.ndarray) -> np.ndarray:
        """New indices of original vertex ids (-1 where the vertex was cropped away)."""
        lookup = np.full(topo.N_VERTICES, -1, dtype=np.int64)
        lookup[self.vertex_index] = np.arange(len(self.vertex_index))
        return lookup[np.asarray(original, dtype=np.int64)]


def crop_mesh(release: IctRelease, vertex_stop: int) -> CroppedMesh:
    """Keep the polygons whose vertices are all ``< vertex_stop``; triangulate; re-index vertices and UVs."""
    polys = release.neutral.faces
    polys_uv = release.neutral.faces_uv
    keep = [i for i, p in enumerate(polys) if p.max() < vertex_stop]
    if any(polys_uv[i] is None for i in keep):
        raise AssetError(f"{release.source}: some face polygons have no texture coordinates")
    tris, src = triangulate([polys[i] for i in keep])
    tris_uv, _ = triangulate([polys_uv[i] for i in keep])  # type: ignore[misc]
    vertex_index, tri_new = np.unique(tris, return_inverse=True)
    uv_index, tri_uv_new = np.unique(tris_uv, return_inverse=True)
    return CroppedMesh(
        vertex_index=vertex_index,
        uv_index=uv_index,
        triangles=tri_new.reshape(-1, 3),
        triangles_uv=tri_uv_new.reshape(-1, 3),
        source_polygon=np.asarray(keep)[src],
    )


def _to_model(vertices_cm: np.ndarray) -> np.ndarray:
    return y_up_to_model_frame(vertices_cm, METRES_PER_CM)


def build_ict_face_model(
    source: str | Path,
    *,
    crop: str = topo.DEFAULT_CROP,
    mediapipe_obj: str | Path | None = None,
    progress: ProgressFn | None = None,
    albedo: str | Path | None = "auto",
    definitions: str | Path | None = "auto",
) -> FaceModelData:
    """Build :class:`FaceModelData` from an ICT-FaceKit release (folder or archive).

    Args:
        source: ``FaceXModel/`` folder (or a folder containing it) or an archive of it.
        crop: one of :data:`~.ict_topology.CROP_PRESETS` (``narrow``, ``face``, ``face_neck``).
        mediapipe_obj: MediaPipe ``canonical_face_model.obj``; when given, the 468-vertex
            correspondence is registered and stored (``extra["mediapipe/..."]``).
        progress: optional callback receiving short status lines.
        albedo: ``"auto"`` (the shipped data-driven albedo for crops that have one, else the
            regional default with a notice through ``progress``), ``"regional"``, or an
            albedo-model file (:mod:`mlanet.morphable.albedo.file`; refused for another topology).
        definitions: fitted landmark definitions to embed (:mod:`mlanet.morphable.landmarks.file`): ``"auto"`` (the
            shipped file for crops that have one, else none with a notice through ``progress``),
            ``"none"``, or a landmark-definitions file (refused for another topology).
    """
    if crop not in topo.CROP_PRESETS:
        raise AssetError(f"unknown crop {crop!r}; choose one of {sorted(topo.CROP_PRESETS)}")
    say = progress or (lambda msg: None)
    say(f"reading {source}")
    release = read_ict_release(source, progress=say)
    vertex_stop, crop_description = topo.CROP_PRESETS[crop]
    mesh = crop_mesh(release, vertex_stop)
    neutral = _to_model(release.neutral.vertices[mesh.vertex_index])
    say(f"cropped to '{crop}': {len(mesh.vertex_index)} vertices, {len(mesh.triangles)} triangles")

    def deltas(names: list[str]) -> np.ndarray:
        out = np.empty((len(names), len(mesh.vertex_index), 3), dtype=np.float32)
        for k, name in enumerate(names):
            out[k] = _to_model(release.shapes[name][mesh.vertex_index]) - neutral
        return out

    identity = deltas(release.identity_names)
    expr_names = release.expression_names
    expression = deltas(expr_names)

    landmarks = mesh.remap(release.vertex_indices["idx_to_landmark_verts"])
    if (landmarks < 0).any():
        raise AssetError(f"crop {crop!r} removes some of the 68 landmark vertices; use a larger crop")
    extra: dict[str, np.ndarray] = {
        "source/vertex_index": mesh.vertex_index.astype(np.int32),
        "source/uv_index": mesh.uv_index.astype(np.int32),
    }
    landmark_sets = {}
    for name, ids in topo.LANDMARK_SETS.items():
        new = mesh.remap(ids)
        if (new < 0).any():
            log.warning("landmark set %s leaves the '%s' crop; not stored", name, crop)
            continue
        extra[f"landmarks/{name}"] = new.astype(np.int32)
        landmark_sets[name] = len(new)
    for key in ("idx_to_rigid_verts", "idx_to_fitting_verts"):
        new = mesh.remap(release.vertex_indices.get(key, []))
        extra[f"ict/{key[len('idx_to_'):]}"] = new[new >= 0].astype(np.int32)

    neck = mesh.vertex_index >= topo.FACE_STOP
    regions = label_regions(neutral, landmarks, fixed={"neck_head": neck})
    albedo_mean, albedo_basis, albedo_components = default_albedo_model(
        neutral, mesh.triangles, regions, landmarks
    )
    albedo_header = {
        "id": DEFAULT_ALBEDO_ID,
        "kind": "regional mean + smooth components (ICT-FaceKit Light has no albedo basis)",
        "components": albedo_components,
        "terms": "MIT (hand-made by MLANet, no image data)",
    }
    albedo_file, albedo_path = resolve_albedo(albedo, crop, say)
    if albedo_file is not None:
        albedo_file.check_topology(mesh.triangles, len(neutral), source=str(albedo_path))
        if albedo_file.n_components != albedo_basis.shape[0]:
            log.warning("%s: %d albedo components (the regional default has %d); the parameter layout changes",
                        albedo_path, albedo_file.n_components, albedo_basis.shape[0])
        albedo_mean, albedo_basis = albedo_file.mean, albedo_file.basis
        albedo_header = albedo_file.header_entry(albedo_path)
    uv = release.neutral.uv[mesh.uv_index]
    lm_file, lm_path = resolve_landmarks(definitions, crop, say)
    landmark_definitions, landmark_entry = {}, None
    if lm_file is not None:
        lm_file.check_topology(mesh.triangles, len(neutral), source=str(lm_path))
        extra.update(lm_file.extra())
        landmark_definitions, landmark_entry = lm_file.header_entries(lm_path)

    mediapipe_header = None
    if mediapipe_obj is not None:
        from mlanet.morphable.mediapipe_map import read_mediapipe_canonical, register_mediapipe

        say("registering MediaPipe's canonical mesh onto the face model")
        corr = register_mediapipe(
            read_mediapipe_canonical(mediapipe_obj), neutral, identity, mesh.triangles, landmarks,
            expression_basis=expression,
        )
        extra.update(corr.to_extra())
        mediapipe_header = {
            "source": str(mediapipe_obj),
            "sha256": file_sha256(Path(mediapipe_obj)),
            "license": "Apache-2.0 (MediaPipe canonical face model)",
            "method": "landmark similarity + ICP with identity-mode fit; barycentric on the model surface",
            "stats": corr.stats,
        }

    verified = release.content_sha256 == PINNED_CONTENT_SHA256
    if not verified:
        log.warning(
            "%s: content differs from the pinned ICT-FaceKit release %s; building anyway", source, PINNED_COMMIT
        )
    header = {
        "model_id": f"ict-facekit-{crop}",
        "name": f"ICT-FaceKit Light, {crop_description}",
        "expression_names": expr_names,
        "expression_kind": "blendshapes",
        "expression_arkit": {n: topo.arkit_name(n) for n in expr_names},
        "expression_sides": "_L = subject's left (+x in the model frame), _R = subject's right",
        "excluded_shapes": topo.EXCLUDED_SHAPES,
        "identity_kind": "pca-scaled (coefficients ~N(0,1))",
        "region_names": list(REGION_NAMES),
        "skin_regions": list(SKIN_REGIONS),
        "albedo_model": albedo_header,
        "terms": (
            "MIT (ICT-FaceKit geometry; MLANet's hand-made regional albedo, no image data)" if albedo_file is None else
            f"{albedo_header['terms']}: the albedo model {albedo_header['id']} was built from such images; "
            "geometry MIT (ICT-FaceKit)"
        ) + ("" if landmark_entry is None else f"; landmark definitions {landmark_entry['id']}: {landmark_entry['terms']}"),
        "landmarks68": "iBUG / Multi-PIE 68 points (ICT vertex_indices.json idx_to_landmark_verts)",
        "landmark_sets": landmark_sets,
        "landmark_definitions": landmark_definitions,
        "landmark_file": landmark_entry,
        "uv": "per-corner (triangles_uv), OBJ convention: origin bottom-left",
        "crop": {"name": crop, "description": crop_description, "ict_vertex_stop": vertex_stop},
        "mediapipe": mediapipe_header,
        "source": {
            "kind": "ict-facekit",
            "upstream": UPSTREAM_REPO,
            "upstream_commit": PINNED_COMMIT if verified else None,
            "verified_pinned_release": verified,
            "input": str(source),
            "input_sha256": release.archive_sha256,
            "content_sha256": release.content_sha256,
            "units_in_source": "cm, y up, z towards the viewer",
            "license": ICT_LICENSE,
        },
        "built_by": f"mlanet {__version__}",
        "built_at": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    data = FaceModelData(
        header=header,
        mean_shape=neutral,
        identity_basis=identity,
        expression_basis=expression,
        albedo_mean=albedo_mean,
        albedo_basis=albedo_basis,
        triangles=mesh.triangles,
        uv=uv,
        triangles_uv=mesh.triangles_uv,
        landmarks68=landmarks,
        region_labels=regions,
        extra=extra,
    ).normalised()
    data.validate(source=str(source))
    return data
