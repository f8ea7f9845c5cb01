"""68-point 2D alignment on in-the-wild photos (dlib imglab XML and iBUG ``.pts`` annotations).

Inputs (any mix, each a file or a folder):

* dlib imglab XML (``*.xml``, e.g. ``training_with_face_landmarks.xml``): several images,
  several faces per image, 68 ``<part>`` elements per face; 0-based pixel-centre coordinates,
  converted by :func:`mlanet.data.landmarks.read_dlib_xml` (``x + 0.5``).
* iBUG ``.pts`` (one face per file) with an image of the same stem (``.jpg``, ``.jpeg``,
  ``.png``) next to it; 1-based, converted by :func:`mlanet.data.landmarks.read_pts`
  (``x - 0.5``).

A folder contributes every ``*.xml`` and ``*.pts`` in it (not recursive), sorted by name.

Protocol (the AFLW2000-3D one of ``shared/PROTOCOLS.md``, without yaw bins): the crop is
``box_from_points(gt, roi_scale)`` -- the square of side ``roi_scale * max(w, h)`` centred on
the box of the ground-truth 68 points, zero padded, never clipped -- i.e. ground-truth crops,
detector-free; the prediction path is :func:`mlanet.eval.predict.predict_in_boxes`, the one
the AFLW2000-3D benchmark uses; NME = mean 2D point error / ``sqrt(w * h)`` of the ground-truth
68-point box. Reported: per-face NME, mean, median, AUC at 7 %, failure rate (NME > 10 %), the
CED, per annotation file, and one record per face.

Faces that cannot be scored are skipped and counted by reason (:data:`SKIP_REASONS`): an
annotation with fewer than 68 points (dlib files may omit parts), a box marked ``ignore``,
a ``.pts`` file with another number of points, a degenerate (zero width or height) box.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mlanet.data.landmarks import IBUG68_N_POINTS, read_dlib_xml, read_pts
from mlanet.errors import AssetError, MLANetError
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points
from mlanet.eval.metrics import nme_per_image, summarise_nme
from mlanet.eval.predict import PredictFn, predict_in_boxes

#: Image suffixes searched for next to a ``.pts`` file, in order.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")

#: Why a face can be skipped (keys of the result's ``skipped.counts``).
SKIP_REASONS: dict[str, str] = {
    "incomplete_annotation": "fewer than 68 annotated points",
    "ignore_flag": "the annotation box is marked ignore='1'",
    "not_68_points": "a .pts file with another number of points",
    "degenerate_box": "the 68 points have a zero-width or zero-height box",
}

PROTOCOL = (
    "68-point 2D alignment on in-the-wild photos, detector-free protocol mirroring AFLW2000-3D: crop = square of "
    "side roi_scale*max(w,h) centred on the axis-aligned box of the ground-truth 68 points (ground-truth crops, zero "
    "padding, not clipped to the image), resized (bilinear) to the model input; predictions mapped back to image "
    "pixels; NME = mean over the 68 points of the 2D distance divided by sqrt(w*h) of the ground-truth landmark box; "
    "per-face NME, mean, median, AUC at 7%, failure rate (NME > 10%)"
)

CONVENTIONS = {
    "image_pixels": "origin at the top-left image corner, +x right, +y down, pixel (i, j) centred at (i + 0.5, j + 0.5)",
    "dlib_xml": "0-based, pixel centres at integers; converted by x = x_dlib + 0.5, y = y_dlib + 0.5",
    "pts": "1-based (MATLAB); converted by x = x_pts - 0.5, y = y_pts - 0.5",
    "crop": "ground-truth crops (detector-free): box_from_points(gt, roi_scale), as the AFLW2000-3D standard protocol",
    "nme_units": "percent",
    "box_px": "sqrt(w*h) of the ground-truth 68-point box in image pixels (the NME normaliser)",
}


@dataclass(frozen=True)
class AnnotatedFace:
    """One scorable face.

    Attributes:
        annotation: the XML or ``.pts`` file. image_path: the photo.
        face_index: index of the face among the annotation's faces of that image (0 for .pts).
        landmarks: (68, 2) float64 ground truth in MLANet image pixels.
    """

    annotation: Path
    image_path: Path
    face_index: int
    landmarks: np.ndarray

    @property
    def box_px(self) -> float:
        """``sqrt(w * h)`` of the ground-truth box (pixels), the NME normaliser."""
        w, h = self.landmarks.max(axis=0) - self.landmarks.min(axis=0)
        return float(math.sqrt(w * h))

    def crop_box(self, roi_scale: float) -> CropBox:
        """The protocol crop (from the ground truth)."""
        return box_from_points(self.landmarks, roi_scale)


def _pts_image(pts: Path) -> Path:
    image = next((pts.with_suffix(s) for s in IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
    if image is None:
        raise AssetError(f"{pts}: no image of the same name next to it ({', '.join(IMAGE_SUFFIXES[:3])})")
    return image


def _annotation_files(spec: str | Path) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted([*path.glob("*.xml"), *path.glob("*.pts")])
        if not files:
            raise AssetError(f"{path}: no dlib imglab .xml or iBUG .pts annotation files in this folder")
        return files
    if not path.exists():
        raise AssetError(f"{path}: no such file or folder")
    if path.suffix.lower() not in (".xml", ".pts"):
        raise AssetError(f"{path}: not an annotation file (expected a dlib imglab .xml or an iBUG .pts)")
    return [path]


class Landmarks68Eval:
    """The in-the-wild 68-point benchmark over annotation files or folders (module docstring).

    Args:
        inputs: files (``.xml``, ``.pts``) or folders holding them.

    Attributes:
        faces: list of :class:`AnnotatedFace`, in input, file and face order.
        skipped: one record per face that cannot be scored (``annotation``, ``image``,
            ``face_index``, ``reason``).
        sources: the annotation files read.

    Raises:
        AssetError: a missing input, a folder without annotations, an unreadable or malformed
            annotation, an annotated image that does not exist (each message names the file).
    """

    def __init__(self, inputs: Sequence[str | Path]) -> None:
        if not inputs:
            raise MLANetError("no annotation files or folders given")
        self.faces: list[AnnotatedFace] = []
        self.skipped: list[dict[str, Any]] = []
        self.sources: list[Path] = []
        for spec in inputs:
            for file in _annotation_files(spec):
                if file in self.sources:
                    continue
                self.sources.append(file)
                if file.suffix.lower() == ".pts":
                    self._add(file, _pts_image(file), 0, read_pts(file), None)
                    continue
                for image in read_dlib_xml(file, n_points=IBUG68_N_POINTS):
                    if not image.path.is_file():
                        raise AssetError(f"{file}: annotated image {image.path} not found")
                    for k, face in enumerate(image.faces):
                        self._add(file, image.path, k, face.landmarks, "ignore_flag" if face.ignore else None)
        if not self.faces:
            raise AssetError(
                f"no scorable face in {', '.join(map(str, self.sources))} "
                f"(skipped: {dict(Counter(r['reason'] for r in self.skipped))})"
            )

    def _add(self, annotation: Path, image: Path, index: int, points: np.ndarray, reason: str | None) -> None:
        if reason is None and len(points) != IBUG68_N_POINTS:
            reason = "not_68_points"
        if reason is None and not np.isfinite(points).all():
            reason = "incomplete_annotation"
        if reason is None and not np.all(points.max(axis=0) - points.min(axis=0) > 0):
            reason = "degenerate_box"
        if reason is not None:
            rec = {"annotation": str(annotation), "image": str(image), "face_index": index, "reason": reason}
            if reason == "incomplete_annotation":
                rec["n_points"] = int(np.isfinite(points).all(axis=1).sum())
            elif reason == "not_68_points":
                rec["n_points"] = int(len(points))
            self.skipped.append(rec)
            return
        self.faces.append(AnnotatedFace(annotation, image, index, np.asarray(points, dtype=np.float64)))

    def __len__(self) -> int:
        return len(self.faces)

    def evaluate(
        self,
        predict_fn: PredictFn,
        preprocess: PreprocessCfg,
        batch_size: int = 16,
        progress: Callable[[int, int], None] | None = None,
        model: Mapping[str, Any] | str | None = None,
        weights: Mapping[str, Any] | str | None = None,
    ) -> dict[str, Any]:
        """Run the benchmark.

        Args:
            predict_fn: crops (B, 3, S, S) float32 RGB in [0, 1] -> (B, 68, 2+) crop pixels
                (:func:`mlanet.eval.predict.make_landmark_predictor`), called in face order.
            preprocess: input size S and ``roi_scale`` of the crop.
            batch_size: faces per ``predict_fn`` call.
            progress: ``progress(done, total)`` after each batch.
            model, weights: descriptors recorded verbatim.

        Returns:
            JSON-ready dict: the :func:`~mlanet.eval.metrics.summarise_nme` keys (``n``,
            ``nme_mean``, ``nme_median``, ``auc_7``, ``failure_rate_10``, ``ced``, ``labels``;
            NMEs in percent) plus ``benchmark``, ``protocol``, ``crop`` (``"gt"``),
            ``detector_free`` (True), ``conventions``, ``roi_scale``, ``input_size``,
            ``preprocess``, ``data`` (sources, image and face counts), ``skipped``
            (``counts`` per reason, ``reasons``, ``faces``), ``by_annotation`` (per file:
            ``n``, ``nme_mean``, ``nme_median``), ``model``, ``weights`` and ``faces`` (per
            face: ``annotation``, ``image``, ``face_index``, ``box_px``, ``crop_px``, ``nme``).
        """
        S, roi = preprocess.input_size, preprocess.roi_scale
        boxes = [f.crop_box(roi) for f in self.faces]
        preds = predict_in_boxes([(f.image_path, b) for f, b in zip(self.faces, boxes)], predict_fn, S,
                                 batch_size=batch_size, progress=progress, n_landmarks=IBUG68_N_POINTS)
        nme = nme_per_image(np.stack(preds), np.stack([f.landmarks for f in self.faces]))
        records = [
            {"annotation": str(f.annotation), "image": str(f.image_path), "face_index": f.face_index,
             "box_px": f.box_px, "crop_px": float(b.size), "nme": float(100.0 * e)}
            for f, b, e in zip(self.faces, boxes, nme)
        ]
        by_annotation = {}
        for src in self.sources:
            e = np.array([r["nme"] for r in records if r["annotation"] == str(src)])
            if e.size:
                by_annotation[str(src)] = {"n": int(e.size), "nme_mean": float(e.mean()), "nme_median": float(np.median(e))}
        return {
            "benchmark": "68-point 2D alignment, in-the-wild photos",
            "protocol": PROTOCOL,
            "crop": "gt",
            "detector_free": True,
            "note": "ground-truth crops (detector-free protocol): the numbers measure the network given a well-placed "
            "crop, not detection; they are not comparable with detector-based in-the-wild results",
            **summarise_nme(nme),
            "conventions": dict(CONVENTIONS),
            "roi_scale": float(roi),
            "input_size": int(S),
            "preprocess": preprocess.to_dict(),
            "data": {
                "sources": [str(s) for s in self.sources],
                "n_images": len({f.image_path for f in self.faces}),
                "n_faces_annotated": len(self.faces) + len(self.skipped),
                "n_faces_scored": len(self.faces),
            },
            "skipped": {
                "counts": dict(Counter(r["reason"] for r in self.skipped)),
                "reasons": dict(SKIP_REASONS),
                "faces": list(self.skipped),
            },
            "by_annotation": by_annotation,
            "model": model,
            "weights": weights,
            "faces": records,
        }
