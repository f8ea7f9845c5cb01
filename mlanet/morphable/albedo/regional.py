"""The regional albedo model: hand-made, MIT, no image data (``--albedo regional``).

ICT-FaceKit Light ships no albedo. For the ICT ``face`` crop the default is now the
data-driven PCA model built by :mod:`.fit` (research use only, see
:mod:`mlanet.morphable.albedo.file`); this regional model is the fallback for other crops and topologies and
the choice for MIT-only builds. Both fill the same arrays, ``albedo_mean`` (V,3) and
``albedo_basis`` (K,V,3):

* **Mean**: a reflectance per region (skin, nose, brows, eyes, lips, neck/head), in the
  library's RGB [0, 1], blended across region borders by diffusion over the mesh so there
  are no hard seams. The skin value is a medium skin reflectance, close to the average
  colour of published face albedo models.
* **Components** (coefficients ~N(0, 1); each basis vector is one standard deviation):
  global skin tone (lightness, redness, yellowness), region colours (lips, brows, eye
  surroundings), and smooth spatial variations (cheek flush, beard shadow, vertical and
  horizontal gradients). All are smooth over the surface, so the texture head can only
  explain low-frequency colour, never per-vertex noise.

Region names come from :mod:`mlanet.morphable.regions`.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from mlanet.morphable.regions import REGION_NAMES

#: Identifier recorded in face-model headers.
DEFAULT_ALBEDO_ID = "mlanet-default-regional-v1"

#: Mean reflectance (RGB in [0, 1]) per region.
REGION_ALBEDO: dict[str, tuple[float, float, float]] = {
    "skin": (0.70, 0.52, 0.44),
    "nose": (0.71, 0.52, 0.44),
    "brows": (0.36, 0.27, 0.22),
    "eyes": (0.66, 0.48, 0.41),
    "lips": (0.62, 0.36, 0.35),
    "neck_head": (0.68, 0.50, 0.42),
}

_SMOOTH_ITERATIONS = 12


def vertex_adjacency(triangles: np.ndarray, n_vertices: int) -> sp.csr_matrix:
    """Row-normalised (V, V) vertex adjacency of a triangle mesh (each row averages neighbours)."""
    t = np.asarray(triangles, dtype=np.int64)
    rows = np.concatenate([t[:, 0], t[:, 1], t[:, 2], t[:, 1], t[:, 2], t[:, 0]])
    cols = np.concatenate([t[:, 1], t[:, 2], t[:, 0], t[:, 0], t[:, 1], t[:, 2]])
    adj = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_vertices, n_vertices)).tocsr()
    adj.data[:] = 1.0
    deg = np.asarray(adj.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    return sp.diags(1.0 / deg) @ adj


def smooth_over_mesh(values: np.ndarray, adjacency: sp.csr_matrix, iterations: int) -> np.ndarray:
    """Diffuse per-vertex ``values`` (V, C) by ``iterations`` steps of neighbour averaging (half-step)."""
    out = np.asarray(values, dtype=np.float64)
    for _ in range(iterations):
        out = 0.5 * out + 0.5 * (adjacency @ out)
    return out


def default_albedo_model(
    mean_shape: np.ndarray,
    triangles: np.ndarray,
    region_labels: np.ndarray,
    landmarks68: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Build the regional albedo model.

    Args:
        mean_shape: (V, 3) model-frame vertices, metres.
        triangles: (F, 3) vertex indices.
        region_labels: (V,) labels indexing :data:`~mlanet.morphable.regions.REGION_NAMES`.
        landmarks68: (68,) vertex indices.

    Returns:
        ``(albedo_mean (V, 3), albedo_basis (K, V, 3), component_names (K,))``, float32.
    """
    verts = np.asarray(mean_shape, dtype=np.float64)
    V = len(verts)
    adj = vertex_adjacency(triangles, V)
    onehot = np.stack([region_labels == i for i in range(len(REGION_NAMES))], axis=1).astype(np.float64)
    soft = smooth_over_mesh(onehot, adj, _SMOOTH_ITERATIONS)
    soft /= np.maximum(soft.sum(axis=1, keepdims=True), 1e-12)
    palette = np.array([REGION_ALBEDO[n] for n in REGION_NAMES])
    mean = soft @ palette

    def region(name: str) -> np.ndarray:
        return soft[:, REGION_NAMES.index(name)][:, None]

    lm = verts[np.asarray(landmarks68)]
    eye_width = 0.5 * (np.linalg.norm(lm[36] - lm[39]) + np.linalg.norm(lm[42] - lm[45]))
    skin = region("skin") + region("nose") + region("neck_head")
    y_top, y_bottom = lm[19, 1], lm[8, 1]
    x_half = 0.5 * abs(lm[16, 0] - lm[0, 0])
    y_rel = np.clip((verts[:, 1] - 0.5 * (y_top + y_bottom)) / (0.5 * (y_bottom - y_top)), -1.5, 1.5)[:, None]
    x_rel = np.clip(verts[:, 0] / x_half, -1.5, 1.5)[:, None]

    def blob(center: np.ndarray, radius: float) -> np.ndarray:
        d2 = ((verts[:, :2] - center[:2]) ** 2).sum(axis=1)
        return np.exp(-0.5 * d2 / radius**2)[:, None]

    cheeks = blob(0.5 * (lm[2] + lm[31]), 0.9 * eye_width) + blob(0.5 * (lm[14] + lm[35]), 0.9 * eye_width)
    mouth_center = 0.5 * (lm[51] + lm[57])
    beard = blob(0.5 * (mouth_center + lm[8]), 1.5 * eye_width) * (1.0 - region("lips"))
    grey = np.ones((1, 3))
    components = {
        "tone_lightness": 0.20 * mean,
        "tone_redness": skin * np.array([[0.045, -0.015, -0.015]]),
        "tone_yellowness": skin * np.array([[0.025, 0.020, -0.035]]),
        "lips_colour": region("lips") * np.array([[0.06, -0.03, -0.02]]),
        "brows_darkness": -0.10 * region("brows") * grey,
        "eye_surround_darkness": -0.05 * region("eyes") * grey,
        "cheek_flush": cheeks * skin * np.array([[0.04, -0.01, -0.01]]),
        "beard_shadow": -0.07 * beard * skin * grey,
        "vertical_gradient": 0.03 * y_rel * mean,
        "horizontal_gradient": 0.02 * x_rel * mean,
    }
    basis = np.stack([smooth_over_mesh(c, adj, 4) for c in components.values()])
    return mean.astype(np.float32), basis.astype(np.float32), list(components)
