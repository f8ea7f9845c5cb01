"""Calibrate MediaPipe face-detection boxes against the 68-landmark network crop.

For every AFLW2000-3D image (ground-truth iBUG-68 points in our pixel convention, read with
:class:`mlanet.data.aflw2000.AFLW2000`) the detector runs on the full image, optionally
centred on a black canvas ``--canvas`` times its size (3: the face covers ~1/6 of the frame,
as in 360p video; the full-range model's boxes depend a little on the face's scale). The
detection whose box overlaps the 68-point box most (IoU >= 0.3) is the face's. Per face,
with ``s`` the detection side (max of w, h):

- ``side_ratio`` = max side of the 68-point box / ``s``;
- ``shift_x``, ``shift_y`` = (68-box centre - detection-box centre) / ``s``;
- ``ear_offset_x`` = (midpoint of the two ear-tragion keypoints - box centre x) / ``s``.

The frontal bin (|yaw| <= 30 deg) gives the suggested
:class:`mlanet.edge.face_detection.DetectionBoxCalibration`: medians of the three ratios and a
least-squares line ``shift_x ~ intercept + gain * ear_offset_x``. The constants in
``edge/tracking.py`` (``FULL_RANGE_BOX_CALIBRATION`` from canvas 3, ``SHORT_RANGE_...``
from canvas 1) are copied from this output by hand. The script then checks
:func:`mlanet.edge.face_detection.crop_box_from_detection` with the calibration *in the code*
(with and without keypoints) and with the suggested one against the protocol crop
``box_from_points(gt68, roi_scale)``: IoU, centre error / crop side and size ratio, per
yaw bin. Prints a table and writes ``benchmarks/results/<device>/detection_box_calibration.json``.

    python -m mlanet.benchmarks.calibrate_detection_box --root ../shared/data/aflw2000-3d-dev
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from mlanet.benchmarks.record import write_record
from mlanet.benchmarks.shared_data import shared_dir
from mlanet.data.aflw2000 import AFLW2000
from mlanet.data.landmarks import read_image_rgb, yaw_bin
from mlanet.edge.face_detection import (
    DETECTION_BOX_CALIBRATIONS,
    EAR_KEYPOINTS,
    DetectionBoxCalibration,
    MediaPipeFaceDetector,
    box_iou,
    crop_box_from_detection,
)
from mlanet.edge.types import Detection
from mlanet.preprocess import PreprocessCfg, box_from_points

BIN_NAMES = ("[0,30]", "(30,60]", "(60,90]")


def rect_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two axis-aligned rectangles x0, y0, x1, y1."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def stats(x: np.ndarray) -> dict[str, float]:
    """Median, mean, sd and the 10/25/75/90th percentiles (NaN-free input)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) == 0:
        return {"n": 0}
    q = np.percentile(x, [10, 25, 50, 75, 90])
    return {
        "n": int(len(x)),
        "median": float(q[2]),
        "mean": float(x.mean()),
        "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
        "p10": float(q[0]),
        "p25": float(q[1]),
        "p75": float(q[3]),
        "p90": float(q[4]),
    }


def pad_to_canvas(image: np.ndarray, canvas: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``image`` on a black square of side ``canvas * max(H, W)``; returns (image, offset x, y)."""
    H, W = image.shape[:2]
    side = int(round(canvas * max(H, W)))
    if side <= max(H, W):
        return image, np.zeros(2)
    ox, oy = (side - W) // 2, (side - H) // 2
    out = np.zeros((side, side, 3), np.uint8)
    out[oy : oy + H, ox : ox + W] = image
    return out, np.array([ox, oy], dtype=np.float64)


def detect_all(root: Path, model: str, min_score: float, canvas: float) -> tuple[list[dict], list[int], float]:
    """Run the detector on every image; per matched face the raw quantities (image pixels)."""
    ds = AFLW2000(root, PreprocessCfg())
    faces, misses, t_det = [], [0, 0, 0], []
    with MediaPipeFaceDetector(model=model, min_score=min_score) as det:
        for rec in ds.records:
            image, offset = pad_to_canvas(read_image_rgb(rec.image_path), canvas)
            t0 = time.perf_counter()
            dets = det(image)
            t_det.append((time.perf_counter() - t0) * 1e3)
            gt = rec.landmarks + offset
            lo, hi = gt.min(axis=0), gt.max(axis=0)
            gt_rect = np.array([lo[0], lo[1], hi[0], hi[1]])
            best = max(dets, key=lambda d: rect_iou(d.box, gt_rect), default=None)
            b = yaw_bin(rec.yaw_deg)
            if best is None or rect_iou(best.box, gt_rect) < 0.3:
                misses[b] += 1
                continue
            box = best.box
            s = float(max(box[2] - box[0], box[3] - box[1]))
            c_det = 0.5 * (box[:2] + box[2:])
            c_gt = 0.5 * (lo + hi)
            ear_x = 0.5 * (best.keypoints[EAR_KEYPOINTS[0], 0] + best.keypoints[EAR_KEYPOINTS[1], 0])
            faces.append(
                {
                    "image": rec.image_path.name,
                    "yaw_signed_deg": math.degrees(float(rec.pose[1])),
                    "bin": b,
                    "score": best.score,
                    "det_side": s,
                    "side_ratio": float(max(hi - lo)) / s,
                    "shift_x": float(c_gt[0] - c_det[0]) / s,
                    "shift_y": float(c_gt[1] - c_det[1]) / s,
                    "ear_offset_x": float(ear_x - c_det[0]) / s,
                    "_det": best,
                    "_gt": gt,
                }
            )
    return faces, misses, float(np.median(t_det))


def crop_errors(faces: list[dict], calib: DetectionBoxCalibration, roi_scale: float, keypoints: bool) -> list[dict]:
    """Per face: IoU, centre error / side and size ratio of the detection crop vs the protocol crop."""
    out = []
    for f in faces:
        det = f["_det"] if keypoints else Detection(f["_det"].box, f["_det"].score, None)
        crop = crop_box_from_detection(det, roi_scale, calib)
        ref = box_from_points(f["_gt"], roi_scale)
        d = (crop.x0 + crop.size / 2 - ref.x0 - ref.size / 2, crop.y0 + crop.size / 2 - ref.y0 - ref.size / 2)
        err = float(np.hypot(*d)) / ref.size
        out.append({"iou": box_iou(crop, ref), "centre_err": err, "size_ratio": crop.size / ref.size})
    return out


def measure(
    root: Path, model: str, min_score: float, roi_scale: float, canvas: float = 1.0, per_image: bool = False
) -> dict:
    faces, misses, det_ms = detect_all(root, model, min_score, canvas)
    frontal = [f for f in faces if f["bin"] == 0]
    e = np.array([f["ear_offset_x"] for f in frontal])
    sx = np.array([f["shift_x"] for f in frontal])
    intercept, gain = (float(v) for v in np.linalg.lstsq(np.c_[np.ones_like(e), e], sx, rcond=None)[0])
    suggested = DetectionBoxCalibration(
        side_ratio=float(np.median([f["side_ratio"] for f in frontal])),
        shift_x=float(np.median(sx)),
        shift_y=float(np.median([f["shift_y"] for f in frontal])),
        ear_intercept_x=intercept,
        ear_gain_x=gain,
    )
    in_code = DETECTION_BOX_CALIBRATIONS[model]
    per_bin = {}
    for b, name in enumerate(BIN_NAMES):
        fb = [f for f in faces if f["bin"] == b]
        entry: dict = {"images": len(fb) + misses[b], "detected": len(fb)}
        for k in ("side_ratio", "shift_x", "shift_y", "ear_offset_x"):
            entry[k] = stats(np.array([f[k] for f in fb]))
        shift_x_resid = [f["shift_x"] - intercept - gain * f["ear_offset_x"] for f in fb]
        entry["shift_x_residual_after_ears"] = stats(np.array(shift_x_resid))
        for label, calib in (("code", in_code), ("suggested", suggested)):
            for kp in (True, False):
                errs = crop_errors(fb, calib, roi_scale, kp)
                entry[f"crop_{label}_{'kp' if kp else 'nokp'}"] = {
                    k: stats(np.array([x[k] for x in errs])) for k in ("iou", "centre_err", "size_ratio")
                }
        per_bin[name] = entry
    out = {
        "root": str(root),
        "model": model,
        "min_score": min_score,
        "roi_scale": roi_scale,
        "canvas": canvas,
        "detector_ms_median": det_ms,
        "per_yaw_bin": per_bin,
        "suggested_calibration": asdict(suggested),
        "calibration_in_code": asdict(in_code),
    }
    if per_image:
        out["per_image"] = [
            {k: (round(v, 5) if isinstance(v, float) else v) for k, v in f.items() if not k.startswith("_")}
            for f in faces
        ]
    return out


def fmt_calib(c: dict) -> str:
    return ", ".join(f"{k}={v:+.4f}" for k, v in c.items())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", type=Path, default=shared_dir() / "data" / "aflw2000-3d-dev")
    p.add_argument("--model", nargs="+", default=["full_range", "short_range"], choices=["full_range", "short_range"])
    p.add_argument("--min-score", type=float, default=0.5)
    p.add_argument("--roi-scale", type=float, default=PreprocessCfg().roi_scale)
    p.add_argument(
        "--canvas",
        type=float,
        nargs="+",
        default=[1.0, 3.0],
        help="also measure with each image centred on a black square canvas this many times its size "
        "(3: the face covers ~1/6 of the frame width, as in 360p video)",
    )
    p.add_argument("--per-image", action="store_true", help="also store every face's measurements in the record")
    p.add_argument("--no-record", action="store_true", help="print only, write no JSON record")
    args = p.parse_args(argv)
    results = {}
    runs = [(model, canvas) for model in args.model for canvas in args.canvas]
    for model, canvas in runs:
        r = measure(args.root, model, args.min_score, args.roi_scale, canvas, args.per_image)
        results[f"{model}/canvas{canvas:g}"] = r
        ms = r["detector_ms_median"]
        print(f"\n{model}, canvas {canvas:g}x (min_score {args.min_score}, detector {ms:.1f} ms/image median)")
        print(f"  suggested (frontal bin): {fmt_calib(r['suggested_calibration'])}")
        print(f"  in code:                 {fmt_calib(r['calibration_in_code'])}")
        print(
            "  bin        det/n   side_ratio med [p10,p90]  shift_x med [p10,p90]   after ears [p10,p90]  "
            "shift_y med [p10,p90]  | crop IoU med/p10: code kp, code no-kp, suggested kp "
            "| centre err/side med/p90 (code kp)"
        )
        for name, b in r["per_yaw_bin"].items():
            if not b["detected"]:
                print(f"  {name:9s} {b['detected']:3d}/{b['images']:<3d}")
                continue
            sr, sx, sy, rx = b["side_ratio"], b["shift_x"], b["shift_y"], b["shift_x_residual_after_ears"]
            ious = [b[k]["iou"] for k in ("crop_code_kp", "crop_code_nokp", "crop_suggested_kp")]
            ce = b["crop_code_kp"]["centre_err"]
            print(
                f"  {name:9s} {b['detected']:3d}/{b['images']:<3d}"
                f"  {sr['median']:.3f} [{sr['p10']:.3f},{sr['p90']:.3f}]"
                f"   {sx['median']:+.3f} [{sx['p10']:+.3f},{sx['p90']:+.3f}]   [{rx['p10']:+.3f},{rx['p90']:+.3f}]"
                f"      {sy['median']:+.3f} [{sy['p10']:+.3f},{sy['p90']:+.3f}]  | "
                + "  ".join(f"{x['median']:.3f}/{x['p10']:.3f}" for x in ious)
                + f" | {ce['median']:.3f}/{ce['p90']:.3f}"
            )
    if not args.no_record:
        path = write_record("detection_box_calibration", results)
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
