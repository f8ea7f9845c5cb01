"""Label quality: the cached teacher and MediaPipe points against the sources' manual points.

:func:`label_quality` reads a label cache (only the cache: the manual points are copied into
it) and compares, per source and manual landmark definition:

* teacher 68 vs manual iBUG 68 (300-W): all 68 points and the 51 inner points 17..67 (the
  teacher's jaw points are fixed model vertices, 300-W's are the visible outline);
* teacher and MediaPipe vs the points they share with AFLW's 21 and MTFL's 5 (and
  MediaPipe vs the iBUG points it has), by :mod:`.correspondence`;

each on every face the labeller labelled, and teacher and MediaPipe again on the faces
*both* labelled (the fair comparison: MediaPipe misses most profile faces). Sources without
manual points (video frames) get the teacher-MediaPipe agreement on the shared points.

NME of a face: the mean over its compared points (manual point visible) of
``|predicted - manual| / d``, reported in percent; the table gives the mean, median and 90th
percentile over faces. Normaliser ``d`` per manual definition (:data:`NORMALISERS`):

``ibug68`` -- ``sqrt(w * h)`` of the manual 68 points' box (the AFLW2000-3D protocol);
``aflw21`` -- the crop side / sqrt(2): AFLW's visible subset (4..21 points) does not span
    the face, but the crops are 3DDFA's landmark-rule crops (side sqrt(2) x the 68-point box),
    so side / sqrt(2) is the face-box size (``teacher_box_over_normaliser`` in the JSON checks
    it against the teacher's own 68-point box);
``mtfl5`` -- the distance between the two manual eye centres (MTFL's inter-ocular
    normalisation);
agreement (no manual points) -- ``sqrt(w * h)`` of the teacher's 68-point box.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Iterator, Mapping

import numpy as np

from mlanet.data.labels.cache import MP_FOUND, STATUS_LABELLED, LabelCache, LabelTable
from mlanet.data.labels.correspondence import (
    MEDIAPIPE468,
    MP468_VERTEX_CANDIDATES,
    REFERENCE_POINTS,
    TDDFA68,
    Correspondence,
    correspondence,
)

REPORT_FORMAT = "mlanet-label-quality"
REPORT_VERSION = 1

#: Normaliser per manual definition (see the module docstring).
NORMALISERS: Mapping[str, str] = {
    "ibug68": "sqrt(w*h) of the manual 68-point box",
    "aflw21": "crop side / sqrt(2) (the 68-point box side of 3DDFA's landmark-rule crop)",
    "mtfl5": "inter-ocular distance (manual eye centres)",
}
AGREEMENT_NORMALISER = "sqrt(w*h) of the teacher's 68-point box"

#: |yaw| bins (degrees) for sources with a manual yaw.
YAW_BINS: tuple[tuple[float, float], ...] = ((0.0, 30.0), (30.0, 60.0), (60.0, 90.0), (90.0, 180.0))


# ----------------------------------------------------------------------------- math
def box_size(points: np.ndarray) -> np.ndarray:
    """(N, L, 2) points (NaN ignored) -> (N,) ``sqrt(w * h)`` of each face's box (NaN without points)."""
    p = np.asarray(points, dtype=np.float64)
    with np.errstate(invalid="ignore"), _quiet():
        w = np.nanmax(p[..., 0], axis=1) - np.nanmin(p[..., 0], axis=1)
        h = np.nanmax(p[..., 1], axis=1) - np.nanmin(p[..., 1], axis=1)
    return np.sqrt(w * h)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN-slice RuntimeWarnings inside a block."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def point_errors(predicted: np.ndarray, manual: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """(N, K, 2), (N, K, 2), (N,) -> (N, K) ``|predicted - manual| / norm`` (NaN where manual is NaN)."""
    d = np.linalg.norm(np.asarray(predicted, dtype=np.float64) - np.asarray(manual, dtype=np.float64), axis=-1)
    return d / np.asarray(norm, dtype=np.float64)[:, None]


def nme_per_face(predicted: np.ndarray, manual: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """(N,) mean over each face's visible points of :func:`point_errors` (NaN for a face without any)."""
    e = point_errors(predicted, manual, norm)
    with _quiet():
        return np.nanmean(e, axis=1)


def summarise(nme: np.ndarray) -> dict[str, Any]:
    """Mean, median, 90th percentile (percent) and count of the finite per-face NMEs."""
    v = np.asarray(nme, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {"n_faces": 0, "nme_mean_pct": None, "nme_median_pct": None, "nme_p90_pct": None}
    return {
        "n_faces": int(len(v)),
        "nme_mean_pct": round(100 * float(v.mean()), 3),
        "nme_median_pct": round(100 * float(np.median(v)), 3),
        "nme_p90_pct": round(100 * float(np.percentile(v, 90)), 3),
    }


def normaliser(table: LabelTable, definition: str) -> np.ndarray:
    """(N,) the normaliser of :data:`NORMALISERS` for ``definition`` (NaN where undefined)."""
    if definition == "ibug68":
        return box_size(table.manual("ibug68"))
    if definition == "aflw21":
        return table["image_hw"].max(axis=1).astype(np.float64) / math.sqrt(2.0)
    if definition == "mtfl5":
        m = table.manual("mtfl5").astype(np.float64)
        return np.linalg.norm(m[:, 0] - m[:, 1], axis=-1)
    raise ValueError(f"no normaliser for manual definition {definition!r}")


# ----------------------------------------------------------------------------- comparisons
def _predicted(table: LabelTable, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, L, 2), usable (N,)) of a predicted layout."""
    if layout == TDDFA68:
        return table["t68"], table["status"] == STATUS_LABELLED
    return table["mp468"], table["mp_status"] == MP_FOUND


def compare(table: LabelTable, corr: Correspondence, rows: np.ndarray, norm: np.ndarray,
            subset: str, normaliser_name: str, with_yaw: bool) -> dict[str, Any]:
    """One comparison row of the report on ``rows`` of ``table``."""
    pts, _ = _predicted(table, corr.predicted)
    pred = corr.gather(pts[rows])
    man = corr.manual_points(table.manual(corr.manual)[rows])
    e = point_errors(pred, man, norm[rows])
    with _quiet():
        per_face = np.nanmean(e, axis=1)
        per_point = np.nanmean(e, axis=0)
        # mean signed offset (predicted - manual) over faces and points: a convention or definition bias shows here
        offset = np.nanmean(((pred - man) / norm[rows][:, None, None]).reshape(-1, 2), axis=0) if len(rows) else None
    out: dict[str, Any] = {
        "predicted": corr.predicted,
        "manual": corr.manual,
        "points": len(corr),
        "point_names": list(corr.names) if len(corr) <= 25 else f"{corr.names[0]}..{corr.names[-1]}",
        "subset": subset,
        "normaliser": normaliser_name,
        "normaliser_median_px": round(float(np.nanmedian(norm[rows])), 2) if len(rows) else None,
        **summarise(per_face),
        "mean_signed_offset_xy_pct": None if offset is None else [round(100 * float(v), 3) for v in offset],
        "per_point_mean_pct": {n: (round(100 * float(v), 2) if np.isfinite(v) else None)
                               for n, v in zip(corr.names, per_point)} if len(corr) <= 25 else None,
    }
    if with_yaw:
        yaw = np.abs(table["yaw_deg"][rows].astype(np.float64))
        out["by_abs_yaw_deg"] = {
            f"{lo:g}-{hi:g}": summarise(per_face[(yaw >= lo) & (yaw < hi)]) for lo, hi in YAW_BINS
        }
    return out


def _agreement(table: LabelTable) -> dict[str, Any]:
    """Teacher vs MediaPipe on the shared reference points (faces where both labelled)."""
    t_ok = table["status"] == STATUS_LABELLED
    m_ok = table["mp_status"] == MP_FOUND
    rows = np.flatnonzero(t_ok & m_ok)
    tp = np.stack([table["t68"][rows][:, list(p.ibug68)].mean(axis=1) for p in REFERENCE_POINTS], axis=1)
    mp = np.stack([table["mp468"][rows][:, list(p.mp468)].mean(axis=1) for p in REFERENCE_POINTS], axis=1)
    norm = box_size(table["t68"][rows])
    e = point_errors(tp, mp, norm)
    with _quiet():
        per_point = np.nanmean(e, axis=0)
    return {
        "predicted": f"{TDDFA68} vs {MEDIAPIPE468}",
        "manual": None,
        "points": len(REFERENCE_POINTS),
        "point_names": [p.name for p in REFERENCE_POINTS],
        "subset": "both labelled",
        "normaliser": AGREEMENT_NORMALISER,
        **summarise(np.nanmean(e, axis=1) if len(rows) else np.zeros(0)),
        "per_point_mean_pct": {p.name: (round(100 * float(v), 2) if np.isfinite(v) else None)
                               for p, v in zip(REFERENCE_POINTS, per_point)} if len(rows) else None,
    }


def vertex_choice(table: LabelTable) -> dict[str, Any] | None:
    """Mean normalised distance of each :data:`MP468_VERTEX_CANDIDATES` vertex to its manual iBUG point."""
    if "ibug68" not in table.manual_definitions:
        return None
    rows = np.flatnonzero(table["mp_status"] == MP_FOUND)
    if not len(rows):
        return None
    man = table.manual("ibug68")[rows]
    norm = box_size(man)
    out: dict[str, Any] = {"faces": int(len(rows)), "normaliser": NORMALISERS["ibug68"]}
    for ibug, cands in MP468_VERTEX_CANDIDATES.items():
        d = {}
        for c in cands:
            e = np.linalg.norm(table["mp468"][rows, c].astype(np.float64) - man[:, ibug], axis=-1) / norm
            d[str(c)] = round(100 * float(np.nanmean(e)), 3)
        out[f"ibug{ibug}"] = d
    return out


def source_report(table: LabelTable) -> dict[str, Any]:
    """All comparisons for one source's :class:`LabelTable` (see the module docstring)."""
    t_ok = table["status"] == STATUS_LABELLED
    m_ok = table["mp_status"] == MP_FOUND
    with_yaw = bool(np.isfinite(table["yaw_deg"]).any()) if len(table) else False
    out: dict[str, Any] = {"counts": table.counts(), "comparisons": []}
    comps = out["comparisons"]
    for definition in table.manual_definitions:
        if definition not in NORMALISERS:
            continue
        norm = normaliser(table, definition)
        ok_norm = np.isfinite(norm) & (norm > 0)
        name = NORMALISERS[definition]
        if definition == "ibug68":
            for pts in ("all68", "inner51"):
                corr = correspondence(definition, TDDFA68, pts)
                comps.append(compare(table, corr, np.flatnonzero(t_ok & ok_norm), norm, "teacher labelled", name,
                                     with_yaw))
        else:
            corr = correspondence(definition, TDDFA68)
            comps.append(compare(table, corr, np.flatnonzero(t_ok & ok_norm), norm, "teacher labelled", name, with_yaw))
        corr = correspondence(definition, MEDIAPIPE468)
        comps.append(compare(table, corr, np.flatnonzero(m_ok & ok_norm), norm, "mediapipe found", name, with_yaw))
        both = np.flatnonzero(t_ok & m_ok & ok_norm)
        for layout in (TDDFA68, MEDIAPIPE468):
            corr = correspondence(definition, layout)
            comps.append(compare(table, corr, both, norm, "both labelled", name, with_yaw))
        if definition == "aflw21" and t_ok.any():
            ratio = box_size(table["t68"][t_ok]) / norm[t_ok]
            out["teacher_box_over_normaliser"] = {
                "median": round(float(np.nanmedian(ratio)), 4),
                "p10": round(float(np.nanpercentile(ratio, 10)), 4),
                "p90": round(float(np.nanpercentile(ratio, 90)), 4),
            }
    if not table.manual_definitions and len(table):
        comps.append(_agreement(table))
    choice = vertex_choice(table)
    if choice is not None:
        out["mediapipe_vertex_choice"] = choice
    sec = table["seconds"].astype(np.float64)
    sec = sec[np.isfinite(sec)]
    if len(sec):
        out["seconds_per_face"] = {"mean": round(float(sec.mean()), 4), "median": round(float(np.median(sec)), 4)}
    return out


def label_quality(cache: LabelCache | str, sources: list[str] | None = None) -> dict[str, Any]:
    """The label-quality report of every source in the cache (or ``sources``), JSON-ready.

    Each source is read with the labeller id of its manifest (the last run).
    """
    from mlanet.data.labels.labeller import load_labels

    cache = cache if isinstance(cache, LabelCache) else LabelCache(cache)
    names = cache.sources() if sources is None else list(sources)
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "cache": str(cache.root),
        "normalisers": dict(NORMALISERS, agreement=AGREEMENT_NORMALISER),
        "correspondences": [
            {"name": p.name, "ibug68_or_teacher": list(p.ibug68), "mediapipe468": list(p.mp468),
             "aflw21": p.aflw21, "mtfl5": p.mtfl5}
            for p in REFERENCE_POINTS
        ],
        "sources": {},
    }
    for name in names:
        manifest = cache.read_manifest(name)
        table = load_labels(cache, name)
        entry = source_report(table)
        entry["terms"] = manifest.get("terms")
        entry["root"] = manifest.get("root")
        entry["labeller_id"] = manifest.get("labeller_id")
        entry["state"] = manifest.get("state")
        run = manifest.get("run")
        if run:
            entry["last_run"] = {k: run.get(k) for k in ("samples", "hits", "computed", "wall_s", "hash_s",
                                                         "seconds_per_face")}
        report["sources"][name] = entry
        report.setdefault("labeller", manifest.get("labeller"))
    return report


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}"


def markdown_table(report: Mapping[str, Any]) -> str:
    """A short markdown summary of :func:`label_quality`'s result."""
    lines = [
        "# Label quality: teacher (3DDFA_V2 MobileNet x0.5) and MediaPipe 468 vs manual points",
        "",
        "NME in percent of the normaliser (mean / median / p90 over faces). Generated by "
        "`mlanet data label-report`; the JSON beside this file has per-point and per-yaw numbers.",
        "",
        "| source | labeller | manual | points | faces | subset | NME mean | median | p90 | normaliser |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for src, entry in report["sources"].items():
        for c in entry["comparisons"]:
            lines.append(
                f"| {src} | {c['predicted']} | {c['manual'] or '–'} | {c['points']} | {c['n_faces']} | {c['subset']} "
                f"| {_fmt(c['nme_mean_pct'])} | {_fmt(c['nme_median_pct'])} | {_fmt(c['nme_p90_pct'])} "
                f"| {c['normaliser']} |"
            )
    lines += ["", "| source | entries | labelled | not labelled | MediaPipe found | crop from | ms / face |",
              "|---|---|---|---|---|---|---|"]
    for src, entry in report["sources"].items():
        c = entry["counts"]
        st = dict(c["status"])
        labelled = st.pop("labelled", 0)
        other = ", ".join(f"{k}: {v}" for k, v in st.items()) or "0"
        spf = (entry.get("seconds_per_face") or {}).get("mean")
        mp = c["mediapipe"]
        rejected = mp.get("found another face (rejected)", 0)
        mp_cell = f"{mp.get('found', 0)}" + (f" (+{rejected} another face, rejected)" if rejected else "")
        lines.append(f"| {src} | {c['entries']} | {labelled} | {other} | {mp_cell} "
                     f"| {', '.join(f'{k}: {v}' for k, v in c['box_from'].items())} "
                     f"| {'–' if spf is None else f'{1000 * spf:.1f}'} |")
    return "\n".join(lines) + "\n"
