"""Loader for the Basel Face Model 2009 in Deep3DFaceRecon's ``BFM_model_front.mat`` layout.

The file is user-supplied (Basel licence; MLANet never ships it). It is the MAT v5 file that
Deep3DFaceRecon's ``transferBFM09`` writes with :func:`scipy.io.savemat` from BFM 2009's
``01_MorphableModel.mat``, Guo et al.'s expression basis and ``facemodel_info.mat``. Variables
(N = 35709 vertices and F = 70789 triangles in the real file; 1-based indices throughout):

===============  ==========  ==============================================================
name             shape       meaning
===============  ==========  ==============================================================
meanshape        (1, 3N)     mean shape, decimetres, flat ``x0 y0 z0 x1 ...``
idBase           (3N, 80)    identity basis, dm per unit coefficient (already x std. dev.)
exBase           (3N, 64)    expression basis, dm per unit coefficient (already x std. dev.)
meantex          (1, 3N)     mean albedo, RGB in 0..255
texBase          (3N, 80)    albedo basis, 0..255 scale per unit coefficient (x std. dev.)
tri              (F, 3)      triangles, 1-based vertex indices
point_buf        (N, 8)      incident triangles of each vertex, 1-based; padded with F + 1
keypoints        (1, 68)     iBUG-68 landmark vertices, 1-based
frontmask2_idx   (K, 1)      optional: vertices of the photometric-loss region, 1-based
tri_mask2        (F2, 3)     optional: triangles of that region, 1-based vertex indices
skinmask         (1, N)      optional: 1 = skin (reflectance-loss region), 0 = not skin
===============  ==========  ==============================================================

Row/column vectors are accepted in either orientation (Deep3DFaceRecon's comments say
``[3*N, 1]`` while its converter writes ``[1, 3*N]``). Integer arrays may be stored as any
integer or floating dtype holding whole numbers. The BFM asset frame is y up, z towards the
viewer (Deep3DFaceRecon places its camera at (0, 0, 10) dm looking at the origin, up = +y).

:func:`load_bfm_front_mat` converts everything to :class:`~mlanet.morphable.data.FaceModelData`
in the model frame (metres, see :mod:`mlanet.conventions`). The file is read with
:func:`scipy.io.loadmat` only; nothing is ever unpickled.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

from mlanet.conventions import y_up_to_model_frame
from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256
from mlanet.morphable.data import FaceModelData

logger = logging.getLogger(__name__)

#: Metres per source unit for the ``units`` argument of :func:`load_bfm_front_mat`.
#: Deep3DFaceRecon divides BFM 2009's micrometre coordinates by 1e5, i.e. stores decimetres.
BFM_UNITS: dict[str, float] = {"dm": 0.1, "mm": 1e-3, "m": 1.0, "um": 1e-6}

#: Plausible width (x extent) of the converted mean face, metres (the real file: ~0.16 m).
FACE_WIDTH_RANGE_M: tuple[float, float] = (0.08, 0.30)

#: ``header["name"]`` of models built by this loader.
BFM_FRONT_NAME = "Basel Face Model 2009 (Deep3DFaceRecon front layout)"
#: ``header["source"]["license"]``.
BFM_LICENSE = "Basel Face Model 2009 — University of Basel licence; user-supplied; not redistributed by MLANet"

_REQUIRED = ("meanshape", "idBase", "exBase", "meantex", "texBase", "tri", "point_buf", "keypoints")
_OPTIONAL = ("frontmask2_idx", "tri_mask2", "skinmask")

_MAT5_VERSION = 0x0100
_MAT73_VERSION = 0x0200
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_PICKLE_MAGICS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"

#: Fraction of the face width around the nose tip whose triangles decide the winding.
_FRONT_RADIUS_FRACTION = 0.25


# --------------------------------------------------------------------------- public API
def load_bfm_front_mat(
    path: str | os.PathLike[str],
    *,
    units: str = "dm",
    recenter: bool = True,
    model_id: str = "bfm09-front",
) -> FaceModelData:
    """Load Deep3DFaceRecon's ``BFM_model_front.mat`` as :class:`FaceModelData`.

    Args:
        path: the MAT v5 file (user-supplied; MAT v7.3/HDF5, pickles and other files are refused).
        units: length unit of the file's geometry: ``"dm"`` (Deep3DFaceRecon's, default),
            ``"mm"``, ``"m"`` or ``"um"`` (raw BFM 2009). See :data:`BFM_UNITS`.
        recenter: subtract the centroid of the mean shape (the mean of its N vertices, in file
            units and frame) before conversion, as Deep3DFaceRecon does (``recenter=True`` in its
            ``ParametricFaceModel``), so the model-frame origin is the mean face's centroid.
            The subtracted offset is recorded in ``header["recenter_offset_m"]`` (model frame, m).
            Bases are differences and are never shifted.
        model_id: ``header["model_id"]``.

    Returns:
        FaceModelData in the model frame (metres; +x subject's left, +y chin, +z back of head),
        all float arrays float32:

        - mean_shape (N, 3) m; identity_basis (80, N, 3) and expression_basis (64, N, 3),
          m per unit coefficient (coefficients ~N(0, 1): the file's bases are already scaled
          by the standard deviations);
        - albedo_mean (N, 3) = meantex / 255 (clipped to [0, 1]); albedo_basis (80, N, 3) =
          texBase / 255, RGB per unit coefficient (colours are not frame-flipped);
        - triangles (F, 3) int32 0-based, CCW front faces (flipped if the file's winding is the
          other way; ``header["winding_flipped"]`` says which);
        - uv (N, 2) and triangles_uv = triangles: a frontal planar projection of the mean shape
          (the file has no UVs; see :func:`planar_frontal_uv`);
        - landmarks68 (68,) int32 0-based from ``keypoints``;
        - region_labels (N,) uint8: regions ``["skin", "non_skin"]`` from ``skinmask`` when
          present, else ``["face"]`` (all zeros);
        - extra ``bfm/point_buf`` (N, 8) int32 0-based triangle indices, where the padding value
          F means "no triangle" (append a zero normal before gathering); ``bfm/front_mask`` (K,)
          int32 0-based vertex indices; ``bfm/front_triangles`` (F2, 3) int32 0-based, with the
          same winding fix as ``triangles`` — each only when present in the file.

    Raises:
        AssetError: naming the file, if it is missing, not a MAT v5 file (v7.3/HDF5, pickle,
            text, truncated), lacks a variable, has a wrong shape/dtype/value range, or if the
            converted face is implausibly sized for ``units`` (the message suggests a unit).
        ValueError: if ``units`` is not one of :data:`BFM_UNITS`.
    """
    if units not in BFM_UNITS:
        raise ValueError(f"units must be one of {sorted(BFM_UNITS)}, got {units!r}")
    metres_per_unit = BFM_UNITS[units]
    path = Path(path)
    src = str(path)
    mat = _read_mat(path)
    arrays = _check_arrays(mat, src)

    n = arrays["n_vertices"]
    mean_src = arrays["meanshape"].reshape(n, 3)
    offset_src = mean_src.mean(axis=0) if recenter else np.zeros(3)
    mean_m = y_up_to_model_frame(mean_src - offset_src, metres_per_unit)
    _check_face_width(mean_m, units, src)

    identity = _basis_to_model(arrays["idBase"], n, metres_per_unit)
    expression = _basis_to_model(arrays["exBase"], n, metres_per_unit)
    albedo_mean = np.clip(arrays["meantex"].reshape(n, 3) / 255.0, 0.0, 1.0)
    albedo_basis = _basis_layout(arrays["texBase"], n) / 255.0

    triangles = arrays["tri"]
    flipped = _needs_winding_flip(mean_m, triangles, src)
    if flipped:
        logger.info("%s: triangles are clockwise for the face front; flipping their winding", src)
        triangles = triangles[:, [0, 2, 1]]

    extra: dict[str, np.ndarray] = {"bfm/point_buf": arrays["point_buf"]}
    if "frontmask2_idx" in arrays:
        extra["bfm/front_mask"] = arrays["frontmask2_idx"]
    if "tri_mask2" in arrays:
        front_tri = arrays["tri_mask2"]
        extra["bfm/front_triangles"] = front_tri[:, [0, 2, 1]] if flipped else front_tri

    if "skinmask" in arrays:
        region_names = ["skin", "non_skin"]
        region_labels = np.where(arrays["skinmask"] == 1, 0, 1).astype(np.uint8)
    else:
        region_names = ["face"]
        region_labels = np.zeros(n, dtype=np.uint8)

    header: dict[str, Any] = {
        "model_id": model_id,
        "name": BFM_FRONT_NAME,
        "expression_names": [f"exp_{i:02d}" for i in range(expression.shape[0])],
        "region_names": region_names,
        "expression_kind": "pca",
        "albedo_kind": "pca",
        "source": {
            "kind": "bfm09-front-mat",
            "path": src,
            "sha256": file_sha256(path),
            "license": BFM_LICENSE,
        },
        "units_in_source": units,
        "recentered": bool(recenter),
        "recenter_offset_m": [float(x) for x in y_up_to_model_frame(offset_src, metres_per_unit)],
        "winding_flipped": bool(flipped),
        "uv_source": "planar-frontal-projection",
        "point_buf_padding": int(len(triangles)),
    }
    data = FaceModelData(
        header=header,
        mean_shape=mean_m,
        identity_basis=identity,
        expression_basis=expression,
        albedo_mean=albedo_mean,
        albedo_basis=albedo_basis,
        triangles=triangles,
        uv=planar_frontal_uv(mean_m),
        triangles_uv=triangles.copy(),
        landmarks68=arrays["keypoints"],
        region_labels=region_labels,
        extra=extra,
    ).normalised()
    data.validate(source=src)
    logger.info(
        "%s: loaded BFM front model, %d vertices, %d triangles, %d/%d/%d id/exp/albedo modes",
        src, n, len(triangles), data.n_identity, data.n_expression, data.n_albedo,
    )
    return data


def planar_frontal_uv(vertices: np.ndarray) -> np.ndarray:
    """Per-vertex UVs (V, 2) in [0, 1] from a frontal orthographic projection of model-frame vertices (V, 3).

    u grows with x (the subject's left, image right for a frontal face) and v grows towards the
    forehead (against the model frame's +y, which points to the chin), so a texture laid out like
    a frontal photograph maps upright with the OBJ/OpenGL bottom-left UV origin. One scale is
    used for both axes (the larger of the x and y extents) so the projection keeps the aspect
    ratio; the shorter axis is centred in [0, 1]. z is ignored, so surfaces seen edge-on (the
    sides of the face) are stretched: good enough for debug textures and masks, not for texture
    synthesis.
    """
    v = np.asarray(vertices, dtype=np.float64)
    x, y = v[:, 0], -v[:, 1]
    lo = np.array([x.min(), y.min()])
    extent = np.array([x.max(), y.max()]) - lo
    scale = float(extent.max())
    if scale <= 0:
        raise ValueError("cannot project a mesh with zero extent in x and y")
    uv = (np.stack([x, y], axis=1) - lo) / scale + (1.0 - extent / scale) / 2.0
    return np.clip(uv, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- reading
def _read_mat(path: Path) -> dict[str, Any]:
    """Sniff the file type, then ``loadmat`` only the known variables; errors name ``path``."""
    if not path.is_file():
        raise AssetError(f"{path}: no such file (expected Deep3DFaceRecon's BFM_model_front.mat)")
    with open(path, "rb") as fh:
        head = fh.read(128)
    if head[:2] in _PICKLE_MAGICS or path.suffix.lower() in (".pkl", ".pickle"):
        raise AssetError(f"{path}: this is a Python pickle; MLANet never loads pickles. Supply the MAT v5 file.")
    if head.startswith(_HDF5_MAGIC) or head.startswith(b"MATLAB 7.3"):
        raise AssetError(_v73_message(path))
    if head.startswith(_ZIP_MAGIC):
        raise AssetError(f"{path}: not a MAT file (it is a zip/npz archive)")
    if len(head) < 128:
        raise AssetError(f"{path}: not a MAT v5 file (only {len(head)} bytes; truncated or empty?)")
    endian = head[126:128]
    if endian not in (b"IM", b"MI"):
        raise AssetError(f"{path}: not a MAT v5 file (no MATLAB header; is it a MATLAB .mat file?)")
    version = int.from_bytes(head[124:126], "little" if endian == b"IM" else "big")
    if version == _MAT73_VERSION:
        raise AssetError(_v73_message(path))
    if version != _MAT5_VERSION:
        raise AssetError(f"{path}: unsupported MAT header version 0x{version:04x}; expected MAT v5 (0x0100)")
    try:
        with open(path, "rb") as fh:
            mat = scipy.io.loadmat(fh, variable_names=list(_REQUIRED + _OPTIONAL), squeeze_me=False)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a corrupt asset, reported by name
        raise AssetError(
            f"{path}: cannot read MAT file, corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from None
    return mat


def _v73_message(path: Path) -> str:
    return (
        f"{path}: MAT v7.3 (HDF5) files are not supported; re-save it as MAT v5/v7 "
        "(MATLAB: save(..., '-v7'); Python: scipy.io.savemat) or regenerate it with Deep3DFaceRecon's "
        "transferBFM09"
    )


# --------------------------------------------------------------------------- validation
def _numeric(mat: dict[str, Any], name: str, src: str) -> np.ndarray:
    a = mat[name]
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf" or a.dtype.fields is not None:
        kind = getattr(a, "dtype", type(a).__name__)
        raise AssetError(f"{src}: variable {name!r} must be a real numeric array, got {kind}")
    if a.size == 0:
        raise AssetError(f"{src}: variable {name!r} is empty")
    return a


def _vector(mat: dict[str, Any], name: str, size: int | None, src: str) -> np.ndarray:
    """A row or column vector (or 1-D array) as 1-D; ``size`` None accepts any length."""
    a = _numeric(mat, name, src)
    if a.ndim > 2 or (a.ndim == 2 and 1 not in a.shape):
        raise AssetError(f"{src}: variable {name!r} must be a vector, got shape {a.shape}")
    flat = a.reshape(-1)
    if size is not None and flat.size != size:
        raise AssetError(f"{src}: variable {name!r} must have {size} elements, got shape {a.shape}")
    return flat


def _matrix(mat: dict[str, Any], name: str, rows: int | None, cols: int | None, src: str) -> np.ndarray:
    a = _numeric(mat, name, src)
    want = f"({'R' if rows is None else rows}, {'C' if cols is None else cols})"
    if a.ndim != 2 or (rows is not None and a.shape[0] != rows) or (cols is not None and a.shape[1] != cols):
        raise AssetError(f"{src}: variable {name!r} must have shape {want}, got {a.shape}")
    return a


def _floats(a: np.ndarray, name: str, src: str) -> np.ndarray:
    if a.dtype.kind == "b":
        raise AssetError(f"{src}: variable {name!r} must hold numbers, got a logical array")
    out = a.astype(np.float64)
    if not np.all(np.isfinite(out)):
        raise AssetError(f"{src}: variable {name!r} contains NaN or infinite values")
    return out


def _indices(a: np.ndarray, name: str, lo: int, hi: int, src: str) -> np.ndarray:
    """1-based whole numbers in [lo, hi] -> 0-based int32."""
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise AssetError(f"{src}: variable {name!r} must hold whole-number indices")
    elif a.dtype.kind not in "iu":
        raise AssetError(f"{src}: variable {name!r} must hold integer indices, got dtype {a.dtype}")
    amin, amax = a.min(), a.max()
    if amin < lo or amax > hi:
        raise AssetError(
            f"{src}: variable {name!r} has 1-based indices in [{amin:.0f}, {amax:.0f}], outside [{lo}, {hi}]"
        )
    return (a.astype(np.int64) - 1).astype(np.int32)


def _check_arrays(mat: dict[str, Any], src: str) -> dict[str, Any]:
    """Check presence, shapes, dtypes and ranges; return float64 / 0-based int32 arrays."""
    missing = [k for k in _REQUIRED if k not in mat]
    if missing:
        raise AssetError(
            f"{src}: missing variable(s) {missing}; not a Deep3DFaceRecon BFM_model_front.mat "
            f"(has {sorted(k for k in mat if not k.startswith('__'))})"
        )
    out: dict[str, Any] = {}
    mean = _floats(_vector(mat, "meanshape", None, src), "meanshape", src)
    if mean.size % 3 or mean.size < 9:
        raise AssetError(f"{src}: 'meanshape' must hold 3N coordinates (N >= 3), got {mean.size} values")
    n3 = mean.size
    n = n3 // 3
    out["n_vertices"] = n
    out["meanshape"] = mean
    out["meantex"] = _floats(_vector(mat, "meantex", n3, src), "meantex", src)
    for name in ("idBase", "exBase", "texBase"):
        out[name] = _floats(_matrix(mat, name, n3, None, src), name, src)

    tex = out["meantex"]
    if tex.min() < -1.0 or tex.max() > 256.0:
        raise AssetError(
            f"{src}: 'meantex' must be RGB in 0..255, got values in [{tex.min():.3g}, {tex.max():.3g}]"
        )
    if tex.max() <= 1.0:
        logger.warning("%s: 'meantex' is at most 1.0; expected 0..255 colours, the albedo will be near black", src)

    tri_raw = _matrix(mat, "tri", None, 3, src)
    out["tri"] = _indices(tri_raw, "tri", 1, n, src)
    n_tri = len(tri_raw)
    # point_buf pads with F + 1 (1-based), i.e. a "zero normal" slot appended after the F triangles.
    out["point_buf"] = _indices(_matrix(mat, "point_buf", n, None, src), "point_buf", 1, n_tri + 1, src)
    out["keypoints"] = _indices(_vector(mat, "keypoints", 68, src), "keypoints", 1, n, src)

    if "frontmask2_idx" in mat:
        out["frontmask2_idx"] = _indices(_vector(mat, "frontmask2_idx", None, src), "frontmask2_idx", 1, n, src)
    if "tri_mask2" in mat:
        out["tri_mask2"] = _indices(_matrix(mat, "tri_mask2", None, 3, src), "tri_mask2", 1, n, src)
    if "skinmask" in mat:
        skin = _vector(mat, "skinmask", n, src)
        if not np.all((skin == 0) | (skin == 1)):
            raise AssetError(f"{src}: 'skinmask' must hold only 0 and 1, got values {np.unique(skin)[:6]}")
        out["skinmask"] = skin.astype(np.uint8)
    return out


# --------------------------------------------------------------------------- conversion
def _basis_layout(basis: np.ndarray, n: int) -> np.ndarray:
    """(3N, K) flat ``x0 y0 z0 x1 ...`` columns -> (K, N, 3)."""
    k = basis.shape[1]
    return basis.reshape(n, 3, k).transpose(2, 0, 1)


def _basis_to_model(basis: np.ndarray, n: int, metres_per_unit: float) -> np.ndarray:
    """(3N, K) displacement basis in file units/frame -> (K, N, 3) float32 model-frame metres."""
    return y_up_to_model_frame(_basis_layout(basis, n), metres_per_unit).astype(np.float32)


def _check_face_width(mean_m: np.ndarray, units: str, src: str) -> None:
    width = float(np.ptp(mean_m[:, 0]))
    lo, hi = FACE_WIDTH_RANGE_M
    if lo <= width <= hi:
        return
    width_src = width / BFM_UNITS[units]
    plausible = [u for u, s in BFM_UNITS.items() if lo <= width_src * s <= hi]
    hint = f"; try units={plausible[0]!r}" if plausible else ""
    raise AssetError(
        f"{src}: with units={units!r} the mean face is {width:.4g} m wide (expected {lo}..{hi} m); "
        f"the file's units are probably different (Deep3DFaceRecon's file is in decimetres, units='dm'){hint}"
    )


def _needs_winding_flip(vertices: np.ndarray, triangles: np.ndarray, src: str) -> bool:
    """Whether CW-front triangles must be reversed to be CCW-front (normals towards -z in the model frame).

    Sums the z components of the area-weighted normals ``(v1 - v0) x (v2 - v0)`` of the triangles
    whose centroids lie within a quarter of the face width (in x, y) of the nose tip (the most
    forward vertex, smallest model-frame z); those face the camera on any face mesh. All
    triangles are used if none qualify.
    """
    tri_v = vertices[triangles]
    normals = np.cross(tri_v[:, 1] - tri_v[:, 0], tri_v[:, 2] - tri_v[:, 0])
    tip = vertices[np.argmin(vertices[:, 2])]
    radius = _FRONT_RADIUS_FRACTION * float(np.ptp(vertices[:, 0]))
    centroids = tri_v.mean(axis=1)
    near = np.linalg.norm(centroids[:, :2] - tip[:2], axis=1) <= radius
    if not near.any():
        near = np.ones(len(triangles), dtype=bool)
    nz = normals[near, 2]
    total = float(nz.sum())
    scale = float(np.linalg.norm(normals[near], axis=1).sum())
    if scale == 0.0 or abs(total) < 1e-3 * scale:
        raise AssetError(f"{src}: cannot tell the triangles' front side (the face front is edge-on or degenerate)")
    agree = float(np.mean(np.sign(nz) == np.sign(total)))
    if agree < 0.9:
        logger.warning("%s: only %.0f%% of the front triangles share one winding; the mesh is inconsistent",
                       src, 100 * agree)
    return total > 0.0
