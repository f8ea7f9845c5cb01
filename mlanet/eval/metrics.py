"""2D landmark-alignment metrics for the AFLW2000-3D protocol (``shared/PROTOCOLS.md``).

* **NME** of one image: the mean over the 68 points of the 2D Euclidean distance between
  prediction and ground truth, divided by ``sqrt(w * h)`` of the axis-aligned box of the
  ground-truth 68 points (x, y only). Returned as a *fraction*; reports use percent.
* **Yaw bins**: ``|yaw|`` in degrees, bins ``[0, 30]``, ``(30, 60]``, ``(60, 90]``.
* **Headline**: the mean of the three bin means (``nme_mean_bins``). The mean over images
  (``nme_all``) is reported too, labelled as such; the two are never interchangeable.
* **CED / AUC**: the cumulative error distribution (fraction of images with NME <= t) and
  its area from 0 to 7 % NME, normalised to [0, 1] (``auc_7``).

Never compare with numbers normalised by the box diagonal or averaged over images only:
those are about 29 % lower for the same predictions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mlanet.errors import MLANetError
from mlanet.fileutil import save_figure_atomic

#: Yaw bin edges in degrees: bin k holds ``YAW_BIN_EDGES_DEG[k] < |yaw| <= YAW_BIN_EDGES_DEG[k + 1]``
#: (bin 0 includes 0); anything beyond 90 degrees falls into the last bin.
YAW_BIN_EDGES_DEG: tuple[float, float, float, float] = (0.0, 30.0, 60.0, 90.0)

#: Human-readable bin labels, in bin order.
YAW_BIN_LABELS: tuple[str, str, str] = ("[0, 30]", "(30, 60]", "(60, 90]")

#: Upper NME limit (percent) of the AUC integral.
AUC_LIMIT_PERCENT = 7.0

#: NME (percent) above which an image counts as a failure (the failure rate of 2D alignment reports).
FAILURE_THRESHOLD_PERCENT = 10.0

#: Thresholds (percent) at which the CED curve is tabulated in the summary.
CED_THRESHOLDS_PERCENT: np.ndarray = np.round(np.arange(0.0, 10.0 + 1e-9, 0.1), 10)

#: Label of the all-image mean, written next to it in every report.
NME_ALL_LABEL = "nme_all (mean over images)"

#: Label of the headline number.
NME_MEAN_BINS_LABEL = "nme_mean_bins (mean of the three yaw-bin means; the headline)"

#: Label of ``auc_7`` in every summary.
AUC_LABEL = f"area under the CED curve from 0 to {AUC_LIMIT_PERCENT:g}% NME, normalised to [0, 1]"


class MissingExtraError(MLANetError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def _as_points(name: str, a: Any) -> np.ndarray:
    arr = np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[2] < 2:
        raise ValueError(f"{name} must have shape (N, L, 2), got {arr.shape}")
    return arr[..., :2]


def nme_per_image(pred: Any, gt: Any) -> np.ndarray:
    """Per-image NME as a fraction (multiply by 100 for percent).

    Args:
        pred: (N, L, 2) predicted landmarks (x, y), pixels; numpy array or torch tensor.
            Extra trailing coordinates (e.g. z) are ignored.
        gt: (N, L, 2) ground-truth landmarks in the **same** pixel convention.

    Returns:
        (N,) float64: ``mean_l ||pred_l - gt_l|| / sqrt(w * h)`` with ``w, h`` the width and
        height of the axis-aligned box of ``gt``'s x, y coordinates.

    Raises:
        ValueError: mismatched shapes, non-finite values, or a degenerate ground-truth box.
    """
    p, g = _as_points("pred", pred), _as_points("gt", gt)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt shapes differ: {p.shape} vs {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("gt contains non-finite values")
    if not np.all(np.isfinite(p)):
        raise ValueError("pred contains non-finite values")
    size = g.max(axis=1) - g.min(axis=1)  # (N, 2): w, h
    norm = np.sqrt(size[:, 0] * size[:, 1])
    if np.any(norm <= 0):
        raise ValueError(f"degenerate ground-truth landmark box (zero width or height) at index {int(np.argmin(norm))}")
    return np.linalg.norm(p - g, axis=2).mean(axis=1) / norm


def yaw_bins(yaw_deg: Any) -> np.ndarray:
    """Yaw bin index (N,) int64 of yaw angles (N,) in degrees.

    Bin 0: ``|yaw| <= 30``; bin 1: ``30 < |yaw| <= 60``; bin 2: ``|yaw| > 60``. Angles with
    ``|yaw| > 90`` (a few AFLW2000-3D annotations reach about 188 degrees) go to bin 2, as in
    the published benchmark scripts, which only compare against 30 and 60.
    """
    y = np.abs(np.asarray(yaw_deg, dtype=np.float64).reshape(-1))
    if not np.all(np.isfinite(y)):
        raise ValueError("yaw angles must be finite")
    return np.where(y <= YAW_BIN_EDGES_DEG[1], 0, np.where(y <= YAW_BIN_EDGES_DEG[2], 1, 2)).astype(np.int64)


def ced_curve(nme: Any, thresholds_percent: Any = CED_THRESHOLDS_PERCENT) -> np.ndarray:
    """Cumulative error distribution: fraction (T,) of images with NME (fraction) <= each threshold (percent)."""
    e = 100.0 * np.asarray(nme, dtype=np.float64).reshape(-1)
    t = np.asarray(thresholds_percent, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return np.zeros_like(t)
    return (e[None, :] <= t[:, None]).mean(axis=1)


def ced_axis_limit(curves: Any) -> float:
    """The NME axis limit (percent) of a CED plot of ``curves`` (per-image NMEs as fractions, one array each):
    10 %, widened in steps of 5 (at most 100 %) to the largest curve's 90th percentile, so a weak model's
    curve is not cut off."""
    p90 = max(float(np.percentile(np.asarray(v, dtype=np.float64), 90)) for v in curves) * 100.0
    return float(min(100.0, max(10.0, np.ceil(p90 / 5.0) * 5.0)))


def auc(nme: Any, limit_percent: float = AUC_LIMIT_PERCENT) -> float:
    """Area under the CED curve from 0 to ``limit_percent`` NME, normalised to [0, 1].

    Computed exactly (no threshold grid): ``integral_0^T 1[e <= t] dt = max(0, T - e)``, so
    the AUC is ``mean(max(0, T - e_i)) / T`` over the per-image NMEs ``e_i`` (percent).
    """
    e = 100.0 * np.asarray(nme, dtype=np.float64).reshape(-1)
    if e.size == 0:
        return float("nan")
    return float(np.mean(np.clip(limit_percent - e, 0.0, None)) / limit_percent)


def summarise(nme: Any, yaw_deg: Any) -> dict[str, Any]:
    """The AFLW2000-3D summary of per-image NMEs.

    Args:
        nme: (N,) per-image NME as fractions (:func:`nme_per_image`).
        yaw_deg: (N,) yaw angles in degrees (the sign is ignored).

    Returns:
        A JSON-ready dict; all NMEs in **percent**:

        * ``nme_bins``: [3] mean NME per yaw bin (``None`` for an empty bin);
        * ``nme_mean_bins``: mean of the three bin means, the headline (``None`` when a bin
          is empty: the headline is then undefined, and ``warnings`` says so);
        * ``nme_all``: mean over all images, labelled ``labels["nme_all"]``;
        * ``n``, ``n_bins`` [3], ``bin_labels`` [3];
        * ``auc_7``: CED area from 0 to 7 % NME, in [0, 1];
        * ``ced``: ``{"thresholds_percent": [T], "fraction": [T]}``;
        * ``labels``, ``warnings``.
    """
    e = np.asarray(nme, dtype=np.float64).reshape(-1)
    yaw = np.asarray(yaw_deg, dtype=np.float64).reshape(-1)
    if e.shape != yaw.shape:
        raise ValueError(f"nme and yaw_deg must have the same length, got {e.shape} and {yaw.shape}")
    _check_nme(e, "images")
    bins = yaw_bins(yaw)
    n_bins = [int((bins == k).sum()) for k in range(3)]
    nme_bins: list[float | None] = [float(100.0 * e[bins == k].mean()) if n_bins[k] else None for k in range(3)]
    warnings = [f"yaw bin {YAW_BIN_LABELS[k]} is empty" for k in range(3) if not n_bins[k]]
    if warnings:
        warnings.append("nme_mean_bins (the headline) is undefined without all three bins")
        mean_bins = None
    else:
        mean_bins = float(np.mean(nme_bins))
    return {
        "nme_bins": nme_bins,
        "nme_mean_bins": mean_bins,
        "nme_all": float(100.0 * e.mean()),
        "n": int(e.size),
        "n_bins": n_bins,
        "bin_labels": list(YAW_BIN_LABELS),
        **_ced_summary(e),
        "labels": {
            "nme_bins": "mean NME (%) per |yaw| bin " + ", ".join(YAW_BIN_LABELS) + " degrees",
            "nme_mean_bins": NME_MEAN_BINS_LABEL,
            "nme_all": NME_ALL_LABEL,
            "auc_7": AUC_LABEL,
        },
        "warnings": warnings,
    }


def mean_of_available_bins(nme_bins: Any) -> float | None:
    """Mean (percent) of the yaw-bin means that hold images (``None`` entries skipped); ``None`` when none does.

    Equals ``nme_mean_bins`` when all three bins hold images; otherwise it is NOT the protocol's headline
    (a subset without profile faces scores lower), so reports label it as such.
    """
    available = [float(b) for b in nme_bins if b is not None]
    return float(sum(available) / len(available)) if available else None


def _check_nme(e: np.ndarray, what: str) -> np.ndarray:
    if e.size == 0:
        raise ValueError(f"no {what} to summarise")
    if not np.all(np.isfinite(e)):
        raise ValueError("nme contains non-finite values")
    return e


def _ced_summary(e: np.ndarray) -> dict[str, Any]:
    """``auc_7`` and the tabulated ``ced`` of per-image NMEs ``e`` (fractions)."""
    return {
        "auc_7": auc(e),
        "ced": {
            "thresholds_percent": [float(t) for t in CED_THRESHOLDS_PERCENT],
            "fraction": [float(f) for f in ced_curve(e)],
        },
    }


def summarise_nme(nme: Any) -> dict[str, Any]:
    """Summary of per-face NMEs without yaw bins (in-the-wild 68-point sets).

    Args:
        nme: (N,) per-face NME as fractions (:func:`nme_per_image`).

    Returns:
        JSON-ready dict, NMEs in **percent**: ``n``, ``nme_mean``, ``nme_median``, ``auc_7``,
        ``failure_rate_10`` (fraction of faces with NME > :data:`FAILURE_THRESHOLD_PERCENT`),
        ``ced`` (as in :func:`summarise`) and ``labels``.
    """
    e = _check_nme(np.asarray(nme, dtype=np.float64).reshape(-1), "faces")
    return {
        "n": int(e.size),
        "nme_mean": float(100.0 * e.mean()),
        "nme_median": float(100.0 * np.median(e)),
        **_ced_summary(e),
        "failure_rate_10": float(np.mean(100.0 * e > FAILURE_THRESHOLD_PERCENT)),
        "labels": {
            "nme_mean": "mean NME (%) over faces",
            "nme_median": "median NME (%) over faces",
            "auc_7": AUC_LABEL,
            "failure_rate_10": f"fraction of faces with NME > {FAILURE_THRESHOLD_PERCENT:g}%",
        },
    }


def plot_ced(
    curves: Mapping[str, Any],
    path: str | os.PathLike[str],
    references: Mapping[str, float] | None = None,
    title: str = "AFLW2000-3D: cumulative error distribution",
    max_percent: float | None = None,
) -> Path:
    """Draw CED curves to a PNG, written atomically (temporary file + rename).

    Args:
        curves: name -> per-image NMEs as **fractions** (N,) (the output of
            :func:`nme_per_image`); the legend shows each curve's AUC at 7 %.
        path: output PNG.
        references: optional name -> NME in **percent** (e.g. published mean-of-bins
            numbers), drawn as labelled vertical dashed lines.
        title: figure title.
        max_percent: x-axis limit in percent; ``None`` = 10 %, widened (up to 100 %) to the
            largest curve's 90th percentile so a weak model's curve is not cut off.

    Returns:
        The written path.

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install -e '.[train]'``).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError(
            f"drawing the CED curve needs matplotlib ({exc}); install the extra: pip install -e '.[train]'"
        ) from None
    if not curves:
        raise ValueError("plot_ced needs at least one curve")
    path = Path(path)
    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas, without touching pyplot's global backend
    ax = fig.add_subplot(1, 1, 1)
    if max_percent is None:
        max_percent = ced_axis_limit(curves.values())
    grid = np.linspace(0.0, max_percent, 1001)
    for name, nme in curves.items():
        e = np.asarray(nme, dtype=np.float64).reshape(-1)
        ax.plot(grid, 100.0 * ced_curve(e, grid), label=f"{name} (AUC@7% {auc(e):.3f}, n={e.size})")
    colours = ["0.35", "tab:gray", "tab:brown", "tab:olive", "tab:cyan", "tab:pink"]
    for k, (name, value) in enumerate((references or {}).items()):
        ax.axvline(float(value), ls="--", lw=1.0, color=colours[k % len(colours)], label=f"{name}: {float(value):.2f}%")
    ax.set_xlim(0.0, max_percent)
    ax.set_ylim(0.0, 100.0)
    ax.set_xlabel("NME (%), normalised by sqrt(w·h) of the ground-truth box")
    ax.set_ylabel("images (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure_atomic(fig, path)
    return path
