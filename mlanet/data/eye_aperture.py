"""Eye aperture of the training labels, the fits and the face model (``mlanet data eye-report``).

Why it exists: the network's eyeBlink is taught by the pseudo-3DMM fits (:mod:`mlanet.data.fits`)
and, through the landmark terms, by every eyelid point it is trained on. Whether those sources can
teach a blink at all, and at which eyeBlink an ordinary open eye sits, is measured here:

* **labels** (frontal faces, ``|yaw| <= max_yaw_deg`` by the teacher's pose): the aperture
  (:mod:`mlanet.eval.face_measures`: lid distance over eye width, mean of both eyes) of the manual
  68 points where a source has them, of MediaPipe's 468 and of the teacher's 68; percentiles and
  the correlation of each with the others (a labeller that cannot see an eye close correlates
  weakly with the manual aperture);
* **face model**: the same aperture of each landmark definition on the mean identity, seen from
  the front, at eyeBlink 0, 0.25, ..., 1 (both eyes), and the eyeBlink at which the face model
  shows each labeller's median aperture ("blink equivalent" of the median open eye);
* **fits** (when a fit cache is given): percentiles of the fitted mean eyeBlink and its
  correlation with minus the MediaPipe and manual apertures.

Everything is computed on training sources only (the label cache never holds AFLW2000-3D).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from mlanet.eval.face_measures import eye_apertures, ibug68_eye_apertures

#: eyeBlink levels at which the face model's apertures are measured.
BLINK_LEVELS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
#: Landmark definitions measured on the face model, and which labeller's points each one models.
DEFINITION_OF: dict[str, str] = {"manual": "ibug68", "mediapipe": "mediapipe468", "teacher": "aflw2000_68"}
PERCENTILES: tuple[int, ...] = (5, 25, 50, 75, 95)


def _round(x: float | None, nd: int = 4) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 10 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return None
    return _round(np.corrcoef(x[ok], y[ok])[0, 1], 3)


def _percentiles(v: np.ndarray) -> dict[str, float | None]:
    v = v[np.isfinite(v)]
    if not len(v):
        return {f"p{q}": None for q in PERCENTILES}
    return {f"p{q}": _round(np.percentile(v, q)) for q in PERCENTILES}


def face_model_apertures(model: Any, definitions: Sequence[str] = tuple(DEFINITION_OF.values()),
                         blinks: Sequence[float] = BLINK_LEVELS) -> dict[str, list[float]]:
    """Mean eye aperture of each definition's points on the mean identity, frontal view, per eyeBlink level.

    Both ``eyeBlink_L`` and ``eyeBlink_R`` are set to each level, every other weight 0; the points are
    the model frame's (x, y) (the face looks along the model's z axis). Returns definition -> list of
    apertures (dimensionless), one per level; definitions the model lacks are left out.
    """
    import torch

    names = list(model.expression_names)
    eyes = [names.index("eyeBlink_L"), names.index("eyeBlink_R")]
    n_id = model.layout.identity
    out: dict[str, list[float]] = {}
    for definition in definitions:
        if not model.has_landmarks(definition):
            continue
        values = []
        for b in blinks:
            e = torch.zeros(1, len(names))
            e[0, eyes] = float(b)
            with torch.no_grad():
                pts = model.landmark_points(model.shape(torch.zeros(1, n_id), e), definition)[0, :, :2].double().numpy()
            ap = eye_apertures(pts) if definition == "mediapipe468" else ibug68_eye_apertures(pts)
            values.append(float(ap.mean()))
        out[definition] = values
    return out


def blink_equivalent(aperture: float | None, curve: Sequence[float], blinks: Sequence[float] = BLINK_LEVELS) -> float | None:
    """The eyeBlink at which the face model's aperture ``curve`` (decreasing in eyeBlink) equals ``aperture``.

    Linear interpolation between the levels; below the curve's range (more closed than eyeBlink 1) 1.0,
    above it (more open than eyeBlink 0) a negative value extrapolated from the first segment.
    """
    if aperture is None or not np.isfinite(aperture):
        return None
    c, b = np.asarray(curve, float)[::-1], np.asarray(blinks, float)[::-1]  # increasing aperture
    if aperture <= c[0]:
        return 1.0
    if aperture > c[-1]:
        slope = (b[-2] - b[-1]) / (c[-2] - c[-1])
        return _round(b[-1] + (aperture - c[-1]) * slope, 3)
    return _round(float(np.interp(aperture, c, b)), 3)


def label_apertures(arrays: Mapping[str, np.ndarray], max_yaw_deg: float = 20.0) -> dict[str, Any]:
    """Apertures of one source's label arrays (:class:`~mlanet.data.labels.LabelTable`'s columns).

    Uses faces MediaPipe found (``mp_status`` 1) whose teacher yaw is within ``max_yaw_deg``.
    Returns counts, per-labeller percentiles (mean of both eyes) and pairwise correlations.
    """
    from mlanet.data.labels.cache import STATUS_LABELLED

    yaw = np.degrees(np.asarray(arrays["pose"], np.float64)[:, 1])
    use = (np.asarray(arrays["mp_status"]) == 1) & (np.abs(yaw) <= max_yaw_deg)
    if "status" in arrays:
        use &= np.asarray(arrays["status"]) == STATUS_LABELLED
    per: dict[str, np.ndarray] = {
        "mediapipe": eye_apertures(np.asarray(arrays["mp468"], np.float64)[use]).mean(-1),
        "teacher": ibug68_eye_apertures(np.asarray(arrays["t68"], np.float64)[use]).mean(-1),
    }
    if "manual__ibug68" in arrays:
        per["manual"] = ibug68_eye_apertures(np.asarray(arrays["manual__ibug68"], np.float64)[use]).mean(-1)
    kinds = [k for k in ("manual", "mediapipe", "teacher") if k in per]
    return {
        "faces": int(len(use)), "frontal_with_mediapipe": int(use.sum()), "max_yaw_deg": max_yaw_deg,
        "aperture": {k: _percentiles(per[k]) for k in kinds},
        "correlation": {f"{a}~{b}": _pearson(per[a], per[b]) for i, a in enumerate(kinds) for b in kinds[i + 1:]},
    }


def fit_blinks(arrays: Mapping[str, np.ndarray], fits: Any, model: Any) -> dict[str, Any]:
    """Fitted mean eyeBlink of a source's good fits (``fits``: :class:`~mlanet.data.fits.FitTable`) and its
    correlation with minus the MediaPipe / manual apertures of the same faces (all yaws)."""
    from mlanet.data.labels.cache import lookup_key
    from mlanet.params import ParamLayout

    keys = [lookup_key(c, b, a) for c, b, a in zip(arrays["content"].tolist(), arrays["box_rule"].tolist(),
                                                    arrays["annotation"].tolist())]
    row_of = {k: i for i, k in enumerate(keys)}
    pairs = [(j, row_of[k]) for j, k in enumerate(fits["label_lookup"].tolist()) if k in row_of]
    fit_rows = np.array([j for j, _ in pairs], dtype=np.int64)
    rows = np.array([r for _, r in pairs], dtype=np.int64)
    ok = np.asarray(fits["ok"], bool)[fit_rows] & (np.asarray(arrays["mp_status"])[rows] == 1)
    fit_rows, rows = fit_rows[ok], rows[ok]
    expr = np.asarray(fits["params"], np.float64)[fit_rows][:, ParamLayout.for_face_model(model).slices()["expression"]]
    names = list(model.expression_names)
    blink = (expr[:, names.index("eyeBlink_L")] + expr[:, names.index("eyeBlink_R")]) / 2.0
    settings = {json.dumps(m.get("fitter", {}).get("settings"), sort_keys=True) for m in getattr(fits, "metas", [])}
    out: dict[str, Any] = {"faces": int(len(rows)), "eyeBlink": _percentiles(blink),
                           "fitter_settings": [json.loads(x) for x in sorted(settings)],
                           "r_vs_minus_mediapipe_aperture": _pearson(
                               blink, -eye_apertures(np.asarray(arrays["mp468"], np.float64)[rows]).mean(-1))}
    if "manual__ibug68" in arrays:
        out["r_vs_minus_manual_aperture"] = _pearson(
            blink, -ibug68_eye_apertures(np.asarray(arrays["manual__ibug68"], np.float64)[rows]).mean(-1))
    return out


def eye_report(labels: Any, model: Any, fits: Any = None, max_yaw_deg: float = 20.0) -> dict[str, Any]:
    """The whole report: ``labels`` a :class:`~mlanet.data.labels.LabelCache`, ``fits`` a
    :class:`~mlanet.data.fits.FitCache` or None (each source's entry records the fitter settings of its fits)."""
    from mlanet.data.fits import fit_model_keys

    curves = face_model_apertures(model)
    rep: dict[str, Any] = {
        "face_model": {"model_id": model.model_id, "blink_levels": list(BLINK_LEVELS),
                       "aperture": {d: [_round(v) for v in c] for d, c in curves.items()}},
        "sources": {},
    }
    keys = fit_model_keys(model) if fits is not None else None
    for source in labels.sources():
        arrays = labels.load(source).arrays
        entry = label_apertures(arrays, max_yaw_deg)
        entry["blink_equivalent_of_median"] = {
            kind: blink_equivalent(entry["aperture"][kind]["p50"], curves[DEFINITION_OF[kind]])
            for kind in entry["aperture"] if DEFINITION_OF[kind] in curves}
        if fits is not None and source in fits.sources():
            table = fits.load(source, model_keys=keys)
            if len(table):
                entry["fits"] = fit_blinks(arrays, table, model)
        rep["sources"][source] = entry
    return rep


def report_markdown(rep: Mapping[str, Any]) -> str:
    """The report as Markdown tables."""
    fm = rep["face_model"]
    lines = ["# Eye aperture of the labels, the fits and the face model", "",
             "Aperture = lid distance / eye width, mean of both eyes (`mlanet.eval.face_measures`); labels on frontal "
             "faces with MediaPipe points. Training sources only.", "",
             f"## Face model ({fm['model_id']}), mean identity, frontal", "",
             "| definition | " + " | ".join(f"eyeBlink {b:g}" for b in fm["blink_levels"]) + " |",
             "|---|" + "---|" * len(fm["blink_levels"])]
    for d, c in fm["aperture"].items():
        lines.append(f"| {d} | " + " | ".join(f"{v:.3f}" for v in c) + " |")
    lines += ["", "## Labels", "", "| source | frontal faces | labeller | p5 | p25 | p50 | p75 | p95 | eyeBlink at p50 |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s, e in rep["sources"].items():
        for kind, p in e["aperture"].items():
            be = e["blink_equivalent_of_median"].get(kind)
            lines.append(f"| {s} | {e['frontal_with_mediapipe']} | {kind} | "
                         + " | ".join("" if p[f'p{q}'] is None else f"{p[f'p{q}']:.3f}" for q in PERCENTILES)
                         + f" | {'' if be is None else f'{be:.2f}'} |")
    lines += ["", "| source | correlations of the apertures |", "|---|---|"]
    for s, e in rep["sources"].items():
        lines.append(f"| {s} | " + ", ".join(f"{k} {v}" for k, v in e["correlation"].items()) + " |")
    if any("fits" in e for e in rep["sources"].values()):
        lines += ["", "## Fits", "", "Mean of both fitted eyeBlinks over every good fit (all yaws); r = Pearson r with minus "
                  "the aperture of the same faces. Teacher eyelid weight of the fits in the last column.", "",
                  "| source | faces | eyeBlink p5 | p25 | p50 | p75 | p95 | r vs -MediaPipe aperture | r vs -manual aperture "
                  "| teacher_eyelid_weight |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s, e in rep["sources"].items():
            f = e.get("fits")
            if not f:
                continue
            lines.append(f"| {s} | {f['faces']} | " + " | ".join(
                "" if f['eyeBlink'][f'p{q}'] is None else f"{f['eyeBlink'][f'p{q}']:.3f}" for q in PERCENTILES)
                + f" | {f['r_vs_minus_mediapipe_aperture']} | {f.get('r_vs_minus_manual_aperture', '')} | "
                + ", ".join(str(st.get("teacher_eyelid_weight", 1.0)) for st in f["fitter_settings"] if st) + " |")
    return "\n".join(lines) + "\n"
