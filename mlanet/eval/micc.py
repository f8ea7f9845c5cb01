"""MICC Florence dense-reconstruction error (the protocol of ``shared/PROTOCOLS.md``).

For one subject and setting:

1. **Crop** the ground-truth scan to the points within ``radius_m`` (95 mm) of its nose tip.
2. **Initial alignment**: the similarity (isotropic scale, rotation, translation) that maps the
   predicted landmarks onto the ground-truth landmarks in the least-squares sense
   (:func:`umeyama`).
3. **ICP with scale**, moving the *prediction*: for each cropped ground-truth point, the
   closest point on the current predicted surface (exact, via
   :func:`mlanet.morphable.mediapipe_map.closest_points_on_mesh`), then the similarity is
   re-solved. Each iteration tries a point-to-plane Gauss-Newton step (converges in a few
   iterations on smooth surfaces, where point-to-point ICP crawls) and falls back to the
   point-to-point step (:func:`umeyama` on the correspondences, taken on the untransformed
   mesh through their barycentric coordinates); a step is kept only if the mean squared
   closest-point distance decreases, so it never increases. Iteration stops when it falls by
   less than ``tol`` (relative), when neither step improves it, or after
   ``icp_iterations`` iterations.
4. **Error**: for each cropped ground-truth point, the distance to the closest point of the
   aligned predicted surface. Where the point projects inside a triangle this *is* the
   point-to-plane distance (along the surface normal at the closest point); near the
   prediction's border it is the distance to the border. RMSE in millimetres.

Units: all inputs in metres; the result reports millimetres where the key says ``_mm``.
Across subjects, :func:`evaluate_micc` reports mean ± std (population std, ``ddof = 0``)
per setting (cooperative, indoor, outdoor) and over all records.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from mlanet.errors import AssetError
from mlanet.morphable.obj import read_obj, read_obj_vertices, triangulate

#: The crop radius of the protocol, metres.
MICC_RADIUS_M = 0.095

#: The video settings of MICC Florence, in report order.
MICC_SETTINGS: tuple[str, ...] = ("cooperative", "indoor", "outdoor")

MM_PER_M = 1000.0


def umeyama(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991).

    Args:
        src, dst: (N, 3) corresponding points, N >= 3 (not all collinear).
        weights: optional (N,) non-negative weights.

    Returns:
        ``(s, R (3, 3) proper rotation, t (3,))``; ``s > 0`` for non-degenerate input.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise ValueError(f"umeyama needs two (N >= 3, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape != (len(src),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be (N,) non-negative with a positive sum")
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    var_s = float(w @ (a * a).sum(axis=1))
    if var_s <= 0:
        raise ValueError("umeyama: source points are all identical")
    cov = (b * w[:, None]).T @ a  # (3, 3) = sum_i w_i b_i a_i^T
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0  # reflection -> flip the weakest axis
    rot = (u * d) @ vt
    scale = float((sig * d).sum() / var_s)
    return scale, rot, mu_d - scale * rot @ mu_s


def _check(name: str, a: Any, shape_tail: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be a finite (N, {', '.join(map(str, shape_tail))}) array, got shape {arr.shape}")
    return arr


def _point_to_point_step(
    scale: float, rot: np.ndarray, trans: np.ndarray, cp: Any, verts: np.ndarray, tris: np.ndarray, g: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama on the current correspondences (closest surface points, on the original mesh, vs g)."""
    src = np.einsum("nk,nkj->nj", cp.barycentric, verts[tris[cp.triangle]])
    return umeyama(src, g)


def _point_to_plane_step(
    scale: float, rot: np.ndarray, trans: np.ndarray, cp: Any, verts: np.ndarray, tris: np.ndarray, g: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """One damped Gauss-Newton step of ``sum_i (n_i . (T(c_i) - g_i))^2`` over similarities.

    ``c_i``: current closest surface points; ``n_i``: unit normals of their triangles (both on
    the transformed prediction). The update ``y -> mu + e^sigma R(omega) (y - mu) + tau``
    (``mu``: centroid of ``g``, for conditioning) is linearised in ``(omega, tau, sigma)``.
    """
    corners = (scale * verts[tris[cp.triangle]]) @ rot.T + trans  # (M, 3, 3)
    n = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-300)
    mu = g.mean(axis=0)
    p = cp.point - mu
    jac = np.concatenate([np.cross(p, n), n, (n * p).sum(axis=1, keepdims=True)], axis=1)  # (M, 7)
    res = (n * (cp.point - g)).sum(axis=1)
    a = jac.T @ jac
    a[np.diag_indices(7)] *= 1.0 + 1e-9
    a[np.diag_indices(7)] += 1e-30
    try:
        x = np.linalg.solve(a, -jac.T @ res)
    except np.linalg.LinAlgError:
        x = np.linalg.lstsq(jac, -res, rcond=None)[0]
    from scipy.spatial.transform import Rotation

    d_rot = Rotation.from_rotvec(x[:3]).as_matrix()
    d_scale = math.exp(float(x[6]))
    return d_scale * scale, d_rot @ rot, mu + d_scale * d_rot @ (trans - mu) + x[3:6]


def micc_rmse(
    pred_vertices: np.ndarray,
    pred_triangles: np.ndarray,
    gt_points: np.ndarray,
    gt_nose_tip: np.ndarray,
    pred_landmarks: np.ndarray | None,
    gt_landmarks: np.ndarray | None,
    radius_m: float = MICC_RADIUS_M,
    icp_iterations: int = 100,
    tol: float = 1e-6,
) -> dict[str, Any]:
    """Point-to-surface RMSE (mm) of a predicted mesh against a ground-truth scan.

    Args:
        pred_vertices: (V, 3) predicted mesh vertices, metres.
        pred_triangles: (F, 3) int triangle indices into ``pred_vertices``.
        gt_points: (N, 3) ground-truth scan points (vertices), metres.
        gt_nose_tip: (3,) nose tip of the scan, metres (centre of the crop sphere).
        pred_landmarks, gt_landmarks: (K, 3), K >= 3, corresponding landmarks for the initial
            alignment; both ``None`` means the prediction is already in the scan's frame
            (identity initial transform).
        radius_m: crop radius around the nose tip (0.095 m in the protocol).
        icp_iterations: maximum ICP iterations (0: landmark alignment only).
        tol: stop when the mean squared distance falls by less than this fraction.

    Returns:
        JSON-ready dict: ``rmse_mm``; ``n_points`` (cropped ground-truth points);
        ``scale``, ``rotation`` (3x3 list), ``translation`` (3 list, metres) of the similarity
        ``x -> scale * R @ x + t`` applied to the prediction; ``iterations`` (ICP iterations
        run), ``converged``; ``initial_rmse_mm`` (after the landmark alignment).
    """
    verts = _check("pred_vertices", pred_vertices, (3,))
    tris = np.asarray(pred_triangles)
    if tris.ndim != 2 or tris.shape[1] != 3 or len(tris) == 0 or not np.issubdtype(tris.dtype, np.integer):
        raise ValueError(f"pred_triangles must be a non-empty (F, 3) int array, got {tris.shape} {tris.dtype}")
    if tris.min() < 0 or tris.max() >= len(verts):
        raise ValueError(f"pred_triangles index outside 0..{len(verts) - 1}")
    gt = _check("gt_points", gt_points, (3,))
    nose = np.asarray(gt_nose_tip, dtype=np.float64).reshape(-1)
    if nose.shape != (3,) or not np.all(np.isfinite(nose)):
        raise ValueError(f"gt_nose_tip must be 3 finite numbers, got {np.asarray(gt_nose_tip).shape}")
    if not radius_m > 0:
        raise ValueError(f"radius_m must be positive, got {radius_m}")
    if icp_iterations < 0:
        raise ValueError(f"icp_iterations must be >= 0, got {icp_iterations}")

    g = gt[np.linalg.norm(gt - nose, axis=1) <= radius_m]
    if len(g) < 3:
        raise ValueError(f"only {len(g)} ground-truth point(s) within {radius_m * MM_PER_M:g} mm of the nose tip")

    if (pred_landmarks is None) != (gt_landmarks is None):
        raise ValueError("give both pred_landmarks and gt_landmarks, or neither")
    if pred_landmarks is None:
        scale, rot, trans = 1.0, np.eye(3), np.zeros(3)
    else:
        pl = _check("pred_landmarks", pred_landmarks, (3,))
        gl = _check("gt_landmarks", gt_landmarks, (3,))
        if pl.shape != gl.shape:
            raise ValueError(f"pred_landmarks {pl.shape} and gt_landmarks {gl.shape} must correspond one to one")
        scale, rot, trans = umeyama(pl, gl)

    from mlanet.morphable.mediapipe_map import closest_points_on_mesh  # scipy.spatial: imported on use

    def closest(s: float, r: np.ndarray, t: np.ndarray):  # type: ignore[no-untyped-def]
        return closest_points_on_mesh(g, s * verts @ r.T + t, tris)

    cp = closest(scale, rot, trans)
    mse = float(np.mean(cp.distance**2))
    initial_mse = mse
    iterations, converged = 0, icp_iterations == 0
    while iterations < icp_iterations and mse > 0.0:
        iterations += 1
        # Point-to-plane Gauss-Newton step first (fast on smooth surfaces); the point-to-point
        # step (Umeyama on the current correspondences) as the fallback, which cannot increase
        # the error. A step is taken only if the true closest-point error decreases.
        best = None
        for solve in (_point_to_plane_step, _point_to_point_step):
            s_new, r_new, t_new = solve(scale, rot, trans, cp, verts, tris, g)
            cp_new = closest(s_new, r_new, t_new)
            mse_new = float(np.mean(cp_new.distance**2))
            if mse_new < mse:
                best = (s_new, r_new, t_new, cp_new, mse_new)
                break
        if best is None:
            converged = True
            break
        improvement = mse - best[4]
        scale, rot, trans, cp, mse = best
        if improvement <= tol * mse:
            converged = True
            break
    converged = converged or mse == 0.0
    return {
        "rmse_mm": math.sqrt(mse) * MM_PER_M,
        "n_points": int(len(g)),
        "scale": float(scale),
        "rotation": rot.tolist(),
        "translation": trans.tolist(),
        "iterations": iterations,
        "converged": bool(converged),
        "initial_rmse_mm": math.sqrt(initial_mse) * MM_PER_M,
        "radius_mm": float(radius_m * MM_PER_M),
    }


def _stats(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean_mm": float(a.mean()), "std_mm": float(a.std()), "n": int(a.size)}


def evaluate_micc(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-subject errors: mean ± std (population, ddof 0) per setting and overall.

    Args:
        records: mappings with ``subject`` (str), ``setting`` (str; normally one of
            :data:`MICC_SETTINGS`) and ``rmse_mm`` (float); one per (subject, setting).

    Returns:
        ``{"settings": {setting: {"mean_mm", "std_mm", "n"}}, "overall": {...},
        "subjects": [...], "std": "..."}``. Settings appear in the order cooperative, indoor,
        outdoor, then any others alphabetically; ``overall`` pools every record.

    Raises:
        ValueError: no records, a missing key, a non-finite error or a duplicate
        (subject, setting).
    """
    by_setting: dict[str, list[float]] = {}
    seen: set[tuple[str, str]] = set()
    subjects: set[str] = set()
    for rec in records:
        try:
            subject, setting, err = str(rec["subject"]), str(rec["setting"]), float(rec["rmse_mm"])
        except KeyError as exc:
            raise ValueError(f"MICC record without {exc.args[0]!r}: {dict(rec)}") from None
        if not math.isfinite(err) or err < 0:
            raise ValueError(f"MICC record {subject}/{setting}: rmse_mm must be finite and >= 0, got {err}")
        if (subject, setting) in seen:
            raise ValueError(f"duplicate MICC record for subject {subject!r}, setting {setting!r}")
        seen.add((subject, setting))
        subjects.add(subject)
        by_setting.setdefault(setting, []).append(err)
    if not seen:
        raise ValueError("no MICC records to aggregate")
    order = [s for s in MICC_SETTINGS if s in by_setting] + sorted(set(by_setting) - set(MICC_SETTINGS))
    return {
        "settings": {s: _stats(by_setting[s]) for s in order},
        "overall": _stats([e for s in order for e in by_setting[s]]),
        "subjects": sorted(subjects),
        "std": "population standard deviation (ddof = 0) over subjects",
    }


# ---------------------------------------------------------------------------------- files
#: Folder layout read by :func:`evaluate_micc_folders` (and ``mlanet eval micc``).
FOLDER_LAYOUT = """\
GT_DIR/<subject>.obj or <subject>.ply        ground-truth scan; only vertex positions are read
GT_DIR/<subject>.landmarks.txt               K landmarks, one "x y z" row each ('#' comments allowed);
                                             row NOSE_INDEX (default 30, the iBUG-68 nose tip) is the crop centre
PRED_DIR/<setting>/<subject>.obj             predicted mesh (vertices and faces), setting = cooperative | indoor | outdoor
PRED_DIR/<setting>/<subject>.landmarks.txt   the same K landmarks on the prediction, same order
Units: metres unless told otherwise (--gt-unit / --pred-unit: m, cm, mm)."""

#: Metres per file unit.
UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _read_ply_vertices(path: Path) -> np.ndarray:
    """Vertex positions (N, 3) of a PLY file (ascii or binary; the vertex element must come first)."""
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise AssetError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    body_start = data.index(b"\n", end) + 1
    fmt: str | None = None
    elements: list[Any] = []  # elements: [name, count, [(prop name, type or None for lists)]]
    for raw in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format" and len(words) >= 2:
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3:
            elements.append([words[1], int(words[2]), []])
        elif words[0] == "property" and elements:
            is_list = len(words) >= 2 and words[1] == "list"
            elements[-1][2].append((words[-1], None if is_list else _PLY_TYPES.get(words[1])))
    if not elements or elements[0][0] != "vertex":
        raise AssetError(f"{path}: PLY without a leading 'vertex' element")
    _, n, props = elements[0]
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise AssetError(f"{path}: PLY vertices lack x, y, z properties")
    cols = [names.index(c) for c in ("x", "y", "z")]
    if fmt == "ascii":
        lines = data[body_start:].split(b"\n")
        try:
            table = np.array([ln.split()[: len(props)] for ln in lines[:n]], dtype=np.float64)
        except ValueError as exc:
            raise AssetError(f"{path}: malformed PLY vertex data ({exc})") from None
        if table.shape != (n, len(props)):
            raise AssetError(f"{path}: PLY declares {n} vertices but the data is shorter")
        return table[:, cols]
    if fmt not in ("binary_little_endian", "binary_big_endian"):
        raise AssetError(f"{path}: unsupported PLY format {fmt!r}")
    if any(t is None for _, t in props):
        raise AssetError(f"{path}: PLY vertex element with list or unknown property types")
    order = "<" if fmt == "binary_little_endian" else ">"
    dtype = np.dtype([(f"p{i}", order + t) for i, (_, t) in enumerate(props)])
    if len(data) - body_start < n * dtype.itemsize:
        raise AssetError(f"{path}: PLY declares {n} vertices but the data is shorter")
    table = np.frombuffer(data, dtype=dtype, count=n, offset=body_start)
    return np.stack([table[f"p{c}"].astype(np.float64) for c in cols], axis=1)


def read_scan_points(path: str | Path, unit: str = "m") -> np.ndarray:
    """Vertex positions (N, 3) in metres of an OBJ or PLY scan whose coordinates are in ``unit``."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such scan file")
    if path.suffix.lower() == ".obj":
        pts = read_obj_vertices(path.read_bytes(), str(path))
    elif path.suffix.lower() == ".ply":
        pts = _read_ply_vertices(path)
    else:
        raise AssetError(f"{path}: scans must be .obj or .ply files")
    if not np.all(np.isfinite(pts)):
        raise AssetError(f"{path}: non-finite vertex coordinates")
    return pts * UNITS[unit]


def read_mesh(path: str | Path, unit: str = "m") -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V, 3) metres, triangles (F, 3) int64)`` of an OBJ mesh in ``unit``."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such mesh file")
    mesh = read_obj(path.read_bytes(), str(path))
    tris, _ = triangulate(mesh.faces)
    if len(tris) == 0:
        raise AssetError(f"{path}: the mesh has no faces ('f' lines); a predicted mesh needs its triangles")
    if not np.all(np.isfinite(mesh.vertices)):
        raise AssetError(f"{path}: non-finite vertex coordinates")
    return mesh.vertices * UNITS[unit], tris


def read_landmarks_txt(path: str | Path, unit: str = "m") -> np.ndarray:
    """Landmarks (K, 3) in metres from a text file of K ``x y z`` rows in ``unit``."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: no such landmark file")
    try:
        pts = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except ValueError as exc:
        raise AssetError(f"{path}: malformed landmark file ({exc})") from None
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 3 or not np.all(np.isfinite(pts)):
        raise AssetError(f"{path}: expected K >= 3 rows of 3 finite numbers (x y z), got shape {pts.shape}")
    return pts * UNITS[unit]


def _gt_scan_path(gt_dir: Path, subject: str) -> Path:
    for suffix in (".obj", ".ply"):
        if (gt_dir / f"{subject}{suffix}").is_file():
            return gt_dir / f"{subject}{suffix}"
    raise AssetError(f"{gt_dir / subject}.obj (or .ply): no ground-truth scan for subject {subject!r}")


def evaluate_micc_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    gt_unit: str = "m",
    pred_unit: str = "m",
    nose_index: int = 30,
    radius_m: float = MICC_RADIUS_M,
    icp_iterations: int = 100,
    progress: Any = None,
) -> dict[str, Any]:
    """Evaluate every predicted mesh in the :data:`FOLDER_LAYOUT` against its ground truth.

    Returns:
        JSON-ready dict: the :func:`evaluate_micc` aggregate plus ``records`` (per subject and
        setting: ``subject``, ``setting``, ``pred``, ``gt`` and the :func:`micc_rmse` result),
        ``protocol`` and ``layout``. ``progress(done, total, record)`` is called per record.
    """
    pred_dir, gt_dir = Path(pred_dir).expanduser(), Path(gt_dir).expanduser()
    for unit in (gt_unit, pred_unit):
        if unit not in UNITS:
            raise ValueError(f"unknown unit {unit!r}; use one of {sorted(UNITS)}")
    for folder in (pred_dir, gt_dir):
        if not folder.is_dir():
            raise AssetError(f"{folder}: no such folder")
    jobs = [(d.name, p) for d in sorted(pred_dir.iterdir()) if d.is_dir() for p in sorted(d.glob("*.obj"))]
    if not jobs:
        raise AssetError(f"{pred_dir}: no predicted meshes (expected <setting>/<subject>.obj)\n{FOLDER_LAYOUT}")
    gt_cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    records = []
    for k, (setting, pred_path) in enumerate(jobs):
        subject = pred_path.stem
        if subject not in gt_cache:
            gt_lm_path = gt_dir / f"{subject}.landmarks.txt"
            gt_cache[subject] = (read_scan_points(_gt_scan_path(gt_dir, subject), gt_unit), read_landmarks_txt(gt_lm_path, gt_unit))
        gt_points, gt_lm = gt_cache[subject]
        gt_lm_path = gt_dir / f"{subject}.landmarks.txt"
        if not 0 <= nose_index < len(gt_lm):
            raise AssetError(f"{gt_lm_path}: nose index {nose_index} outside its {len(gt_lm)} landmarks (pass --nose-index)")
        pred_lm_path = pred_path.with_name(f"{subject}.landmarks.txt")
        pred_lm = read_landmarks_txt(pred_lm_path, pred_unit)
        if pred_lm.shape != gt_lm.shape:
            raise AssetError(f"{pred_lm_path}: {len(pred_lm)} landmarks but {gt_lm_path} has {len(gt_lm)}")
        verts, tris = read_mesh(pred_path, pred_unit)
        try:
            res = micc_rmse(verts, tris, gt_points, gt_lm[nose_index], pred_lm, gt_lm, radius_m=radius_m, icp_iterations=icp_iterations)
        except ValueError as exc:
            raise AssetError(f"{pred_path} vs {gt_dir / subject}: {exc}") from None
        record = {"subject": subject, "setting": setting, "pred": str(pred_path), "gt": str(_gt_scan_path(gt_dir, subject)), **res}
        records.append(record)
        if progress is not None:
            progress(k + 1, len(jobs), record)
    return {
        "benchmark": "MICC Florence",
        "protocol": (
            f"ground-truth scan cropped to {radius_m * MM_PER_M:g} mm around the nose tip; prediction aligned to it "
            "by a landmark similarity, then ICP with isotropic scale; RMSE (mm) of the distances from the cropped "
            "ground-truth points to the closest points of the predicted surface (point-to-plane inside triangles); "
            "mean +- std over subjects per setting"
        ),
        "layout": FOLDER_LAYOUT,
        **evaluate_micc(records),
        "records": records,
    }
