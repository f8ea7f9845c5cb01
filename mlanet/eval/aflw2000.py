"""AFLW2000-3D 68-point 2D alignment benchmark (the protocol of ``shared/PROTOCOLS.md``).

Folder layout: any folder holding ``<name>.jpg`` images (``.jpeg``/``.png`` also accepted)
each with a ``<name>.mat`` next to it, as in the AFLW2000-3D release (``image00002.jpg`` +
``image00002.mat``). Only two variables of each ``.mat`` are read:

* ``pt3d_68`` (3, 68): rows x, y, z of the 68 landmarks in **1-based** (MATLAB) pixel
  coordinates of the image. Converted once, at load time, to MLANet pixels (origin at the
  top-left image corner, pixel (i, j) centred at (i + 0.5, j + 0.5)): ``x = x_m - 0.5``,
  ``y = y_m - 0.5`` (the centre of 1-based pixel ``k`` is ``x_m = k``, ours ``k - 0.5``).
* ``Pose_Para`` (1, 7): element 1 is the yaw in radians; ``|yaw|`` in degrees picks the bin.

Standard (comparable) protocol, ``crop="gt"``: the crop is the square of side
``roi_scale * max(w, h)`` (``roi_scale = sqrt(2)``) centred on the axis-aligned box of the
ground-truth 68 points, zero-padded where it leaves the image, never clipped, resized to the
model input with bilinear sampling (:func:`mlanet.preprocess.box_from_points`,
:func:`mlanet.preprocess.crop_image` via :func:`mlanet.data.landmarks.crop_uint8`). The model
predicts 68 points in crop pixels; they go back to image pixels with
:meth:`mlanet.preprocess.CropBox.crop_to_image` (both steps: :func:`mlanet.eval.predict.predict_in_boxes`,
shared with the other 2D benchmarks) and are scored with :func:`mlanet.eval.metrics.nme_per_image`.

An annotation that cannot be read (a damaged or foreign ``.mat``) does not stop the benchmark:
the image is skipped with a warning, and the result names it (``data.selection.unreadable``,
``warnings``); only a folder where no annotation can be read is an error.

Image lists: ``AFLW2000Eval(folder, include=NameList.load("aflw2000_dev_heldout"))`` evaluates
only the listed stems (``exclude=`` leaves some out); the result's ``data.selection`` records
the list files with their SHA-256, so a report can show which images it was computed on.

Realistic variant, ``crop="detector"``: the crop comes from a detector (landmarks or a box
per image), labelled as such in the result; images where it finds no face are listed and
left out of the NME.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mlanet.errors import AssetError, MLANetError
from mlanet.fileutil import file_sha256
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points, box_from_rect
from mlanet.eval.metrics import nme_per_image, summarise, yaw_bins
from mlanet.eval.predict import PredictFn, predict_in_boxes

log = logging.getLogger(__name__)

#: Image suffixes searched for, in order of preference, for each ``.mat`` file.
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

#: Number of landmarks of the protocol.
N_LANDMARKS = 68

#: The face-model landmark definition scored by default (``--landmarks auto``): AFLW2000-3D's own 68 points,
#: fitted to its annotations (:func:`mlanet.eval.predict.resolve_eval_definition` falls back to ``ict68`` for a
#: face model built without it).
LANDMARK_DEFINITION = "aflw2000_68"

#: MATLAB 1-based pixel coordinate -> MLANet coordinate: ``x = x_m + MATLAB_TO_MLANET``.
MATLAB_TO_MLANET = -0.5

PROTOCOL_STANDARD = (
    "AFLW2000-3D 68-point 2D alignment, standard protocol: crop = square of side sqrt(2)*max(w,h) centred on the "
    "axis-aligned box of the ground-truth 68 points (zero padding, not clipped to the image), resized (bilinear) to "
    "the model input; predictions mapped back to image pixels; NME = mean over the 68 points of the 2D distance "
    "divided by sqrt(w*h) of the ground-truth landmark box (x, y); |yaw| bins [0,30], (30,60], (60,90] degrees "
    "(|yaw| > 90 counted in the last bin); headline = mean of the three bin means"
)
PROTOCOL_DETECTOR = (
    "AFLW2000-3D 68-point 2D alignment, realistic variant: crop from the project's own detector (square of side "
    "roi_scale*max(w,h) of the detected landmarks or box), NOT the ground-truth crop of the standard protocol; "
    "scoring as in the standard protocol (sqrt(w*h) of the ground-truth box, mean of the three yaw-bin means)"
)

CONVENTIONS = {
    "image_pixels": "origin at the top-left image corner, +x right, +y down, pixel (i, j) centred at (i + 0.5, j + 0.5)",
    "ground_truth": "pt3d_68 rows x, y are 1-based MATLAB pixel coordinates; converted by x = x_m - 0.5, y = y_m - 0.5",
    "crop": "crop pixel i of an S-pixel input is centred at image x0 + (i + 0.5) * size / S; bilinear, zeros outside",
    "prediction": "landmarks (B, 68, 2) in crop pixels (same convention), mapped back by x = x0 + u * size / S",
    "yaw": "Pose_Para[0][1] in radians, |yaw| in degrees",
    "nme_units": "percent",
}

REFERENCES: dict[str, Any] = {
    "published_mean_of_bins": {"3DDFA_V2": 3.51, "SynergyNet": 3.41, "Deep3DFaceRecon": 3.37, "PRNet": 3.62},
    "label": (
        "published mean-of-bins NME (%), same protocol (ground-truth crops, sqrt(w*h) normalisation, mean of the "
        "three yaw-bin means), all 2,000 AFLW2000-3D images"
    ),
    "independent_measurement": {
        "model": "3DDFA_V2 MobileNet x0.5 (released weights)",
        "nme_bins": [2.95, 3.85, 4.99],
        "nme_mean_bins": 3.93,
        "label": "measured on all 2,000 images by an independent implementation of the same protocol",
    },
    "warning": (
        "numbers normalised by the box diagonal and averaged over images are about 29% lower; never compare across "
        "the two"
    ),
}

DEV_SPLIT_NOTE = (
    "The project's development split (shared/data/aflw2000-3d-dev) holds 199 of the 2,000 AFLW2000-3D images, "
    "stratified by yaw 131/38/30; the other 1,801 are a held-out test set the project does not have. Results on the "
    "dev split (or any subset) are indicative, not directly comparable with the full-set references."
)

#: ``detector_fn(image (H, W, 3) uint8 RGB) -> (68, 2) landmarks, (4,) box x0 y0 x1 y1, or None``.
DetectorFn = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class AFLWSample:
    """One annotated image.

    name: file stem (``image00002``); image_path, mat_path: the pair;
    landmarks: (68, 2) float64 ground truth in MLANet image pixels (already converted from
    1-based); yaw_deg: signed yaw in degrees.
    """

    name: str
    image_path: Path
    mat_path: Path
    landmarks: np.ndarray
    yaw_deg: float

    def crop_box(self, roi_scale: float) -> CropBox:
        """The standard-protocol crop box (from the ground truth)."""
        return box_from_points(self.landmarks, roi_scale)


def read_aflw_mat(path: str | Path) -> tuple[np.ndarray, float]:
    """Ground truth of one AFLW2000-3D ``.mat``: ``(landmarks (68, 2) MLANet pixels, yaw degrees)``."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(str(path), variable_names=["pt3d_68", "Pose_Para"])
    except Exception as exc:  # noqa: BLE001 - scipy raises many types for bad files
        raise AssetError(f"{path}: cannot read MATLAB file ({type(exc).__name__}: {exc})") from None
    for key in ("pt3d_68", "Pose_Para"):
        if key not in mat:
            raise AssetError(f"{path}: no '{key}' variable (not an AFLW2000-3D annotation)")
    try:
        pts = np.asarray(mat["pt3d_68"], dtype=np.float64)
        pose = np.asarray(mat["Pose_Para"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise AssetError(f"{path}: pt3d_68 / Pose_Para are not numeric arrays") from None
    if pts.ndim != 2 or pts.shape[0] < 2 or pts.shape[1] != N_LANDMARKS:
        raise AssetError(f"{path}: pt3d_68 must be (3, 68) (rows x, y, z), got {pts.shape}")
    if pose.size < 2:
        raise AssetError(f"{path}: Pose_Para must hold at least (pitch, yaw), got {pose.size} values")
    xy = pts[:2].T + MATLAB_TO_MLANET
    yaw = math.degrees(float(pose[1]))
    if not (np.all(np.isfinite(xy)) and math.isfinite(yaw)):
        raise AssetError(f"{path}: non-finite landmarks or yaw")
    size = xy.max(axis=0) - xy.min(axis=0)
    if not np.all(size > 0):
        raise AssetError(f"{path}: degenerate landmark box {size.tolist()}")
    return xy, yaw


def discover_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """``(name, image, mat)`` for every ``<name>.mat`` with an image of the same stem, sorted by name."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise AssetError(f"{folder}: no such folder (expected AFLW2000-3D image/.mat pairs)")
    pairs = []
    for mat in sorted(folder.glob("*.mat")):
        image = next((mat.with_suffix(s) for s in IMAGE_SUFFIXES if mat.with_suffix(s).is_file()), None)
        if image is not None:
            pairs.append((mat.stem, image, mat))
    if not pairs:
        raise AssetError(
            f"{folder}: no AFLW2000-3D image/annotation pairs (<name>.jpg with <name>.mat, e.g. image00002.jpg + "
            "image00002.mat)"
        )
    return pairs


@dataclass(frozen=True)
class NameList:
    """An image list (one stem per line, :func:`mlanet.data.splits.read_name_list`) and where it came from.

    Attributes:
        spec: what the user gave (a named list such as ``aflw2000_dev_heldout`` or a path).
        path: the list file. sha256: hex digest of its bytes. names: the stems, in file order.
    """

    spec: str
    path: Path
    sha256: str
    names: tuple[str, ...]

    @classmethod
    def load(cls, spec: str | Path) -> "NameList":
        """Read a named list or a list file (:class:`AssetError` naming it on any problem)."""
        from mlanet.data.splits import NAMED_LISTS, read_name_list, resolve_list

        names = read_name_list(spec)
        path = resolve_list(spec)
        return cls(spec=str(spec) if str(spec) in NAMED_LISTS else str(Path(spec).expanduser()), path=path,
                   sha256=file_sha256(path), names=tuple(names))

    def describe(self) -> dict[str, Any]:
        """JSON-ready record: ``spec``, ``path``, ``sha256`` (of the file's bytes), ``n_names``."""
        return {"spec": self.spec, "path": str(self.path), "sha256": self.sha256, "n_names": len(self.names)}


class AFLW2000Eval:
    """The AFLW2000-3D benchmark on one folder (see the module docstring for layout and protocol).

    Args:
        folder: the data folder.
        include: evaluate only these image stems (a :class:`NameList` or a sequence of stems);
            None = every pair in the folder.
        exclude: leave these stems out (applied after ``include``).

    Every name in ``include`` and ``exclude`` must be an image/.mat pair of the folder, else
    :class:`AssetError` names the missing ones (a list meant for another folder must not
    silently evaluate a different set).

    Attributes:
        folder: the data folder.
        samples: list of :class:`AFLWSample`, sorted by name; :meth:`evaluate` processes them
            in this order.
        selection: JSON-ready record of the folder size, the lists used (with their SHA-256)
            and the number of images selected; recorded in the result's ``data``.
    """

    def __init__(
        self,
        folder: str | Path,
        include: NameList | Sequence[str] | None = None,
        exclude: NameList | Sequence[str] | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser()
        pairs = discover_pairs(self.folder)
        in_folder = {name for name, _, _ in pairs}
        wanted = None if include is None else set(self._check_listed(include, in_folder, "--list"))
        unwanted = set() if exclude is None else set(self._check_listed(exclude, in_folder, "--exclude-list"))
        selected = [p for p in pairs if (wanted is None or p[0] in wanted) and p[0] not in unwanted]
        if not selected:
            raise AssetError(f"{self.folder}: the image lists leave no image to evaluate")
        self.samples: list[AFLWSample] = []
        #: Selected images whose annotation could not be read: ``{"name", "reason"}`` each (skipped).
        self.unreadable: list[dict[str, str]] = []
        for name, image, mat in selected:
            try:
                landmarks, yaw = read_aflw_mat(mat)
            except AssetError as exc:
                log.warning("skipping %s: %s", name, exc)
                self.unreadable.append({"name": name, "reason": str(exc)})
                continue
            self.samples.append(AFLWSample(name=name, image_path=image, mat_path=mat, landmarks=landmarks, yaw_deg=yaw))
        if not self.samples:
            more = f" (and {len(self.unreadable) - 1} more)" if len(self.unreadable) > 1 else ""
            raise AssetError(f"{self.folder}: no annotation could be read: {self.unreadable[0]['reason']}{more}")
        names = "\n".join(s.name for s in self.samples) + "\n"
        self.selection: dict[str, Any] = {
            "n_in_folder": len(pairs),
            "n_selected": len(self.samples),
            "n_unreadable": len(self.unreadable),
            "unreadable": list(self.unreadable),
            "list": self._describe_list(include),
            "exclude_list": self._describe_list(exclude),
            "selected_names_sha256": hashlib.sha256(names.encode()).hexdigest(),
            "selected_names_sha256_of": "the evaluated stems, sorted, one per line, each followed by a newline",
        }

    def _check_listed(self, listed: NameList | Sequence[str], in_folder: set[str], what: str) -> tuple[str, ...]:
        names = listed.names if isinstance(listed, NameList) else tuple(listed)
        missing = [n for n in names if n not in in_folder]
        if missing:
            src = f" (list {listed.path})" if isinstance(listed, NameList) else ""
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise AssetError(
                f"{self.folder}: {len(missing)} image(s) named by {what}{src} are not image/.mat pairs of this folder: "
                f"{', '.join(missing[:10])}{more}"
            )
        return names

    @staticmethod
    def _describe_list(listed: NameList | Sequence[str] | None) -> dict[str, Any] | None:
        if listed is None:
            return None
        if isinstance(listed, NameList):
            return listed.describe()
        return {"spec": None, "path": None, "sha256": None, "n_names": len(tuple(listed))}

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def landmarks(self) -> np.ndarray:
        """(N, 68, 2) ground truth, MLANet image pixels."""
        return np.stack([s.landmarks for s in self.samples])

    @property
    def yaw_deg(self) -> np.ndarray:
        """(N,) signed yaw in degrees."""
        return np.array([s.yaw_deg for s in self.samples])

    @staticmethod
    def _detected_box(image: np.ndarray, detector_fn: DetectorFn, roi_scale: float) -> CropBox | None:
        found = detector_fn(image)
        if found is None:
            return None
        a = np.asarray(found.detach().cpu().numpy() if hasattr(found, "detach") else found, dtype=np.float64)
        if a.shape == (4,):
            return box_from_rect(*a.tolist(), roi_scale=roi_scale)
        if a.ndim == 2 and a.shape[1] >= 2 and len(a) >= 2:
            return box_from_points(a[:, :2], roi_scale)
        raise ValueError(f"detector_fn must return (L, 2) landmarks, a (4,) box x0 y0 x1 y1 or None; got shape {a.shape}")

    def evaluate(
        self,
        predict_fn: PredictFn,
        preprocess: PreprocessCfg,
        batch_size: int = 16,
        crop: str = "gt",
        detector_fn: DetectorFn | None = None,
        progress: Callable[[int, int], None] | None = None,
        model: Mapping[str, Any] | str | None = None,
        weights: Mapping[str, Any] | str | None = None,
    ) -> dict[str, Any]:
        """Run the benchmark.

        Args:
            predict_fn: images (B, 3, S, S) float32 RGB in [0, 1] (S = ``preprocess.input_size``)
                -> landmarks (B, 68, 2) (tensor or array; extra trailing coordinates ignored)
                in crop pixels, MLANet convention. Called under ``torch.no_grad()``.
            preprocess: input size and ``roi_scale`` of the crop.
            batch_size: images per ``predict_fn`` call.
            crop: ``"gt"`` (the standard, comparable protocol) or ``"detector"`` (realistic
                variant; needs ``detector_fn``).
            detector_fn: image (H, W, 3) uint8 RGB -> (L, 2) landmarks or a (4,) box
                ``x0, y0, x1, y1`` in image pixels, or ``None`` when no face is found.
            progress: called as ``progress(done, total)`` after each batch.
            model, weights: descriptors recorded verbatim in the result.

        Returns:
            JSON-ready dict: the :func:`~mlanet.eval.metrics.summarise` keys (``nme_bins``,
            ``nme_mean_bins``, ``nme_all``, ``n``, ``n_bins``, ``auc_7``, ``ced``, ...; NMEs
            in percent), plus ``benchmark``, ``protocol``, ``crop``, ``conventions``,
            ``roi_scale``, ``input_size``, ``preprocess``, ``data``, ``model``, ``weights``,
            ``references``, ``note``, and ``images`` (per image: ``name``, ``yaw_deg``,
            ``bin``, ``nme`` in percent).
        """
        if crop not in ("gt", "detector"):
            raise ValueError(f"crop must be 'gt' or 'detector', got {crop!r}")
        if crop == "detector" and detector_fn is None:
            raise MLANetError(
                "crop='detector' (the realistic variant) needs a face detector; the project's detector arrives with "
                "the edge runtime. Use crop='gt' for the standard, comparable protocol"
            )
        S = preprocess.input_size
        total = len(self.samples)
        roi = preprocess.roi_scale
        jobs = [
            (s.image_path, s.crop_box(roi) if crop == "gt" else partial(self._detected_box, detector_fn=detector_fn, roi_scale=roi))
            for s in self.samples
        ]
        found = predict_in_boxes(jobs, predict_fn, S, batch_size=batch_size, progress=progress, n_landmarks=N_LANDMARKS)
        kept = [(s, p) for s, p in zip(self.samples, found) if p is not None]
        failures = [s.name for s, p in zip(self.samples, found) if p is None]
        if not kept:
            raise MLANetError(f"{self.folder}: no image could be evaluated (the detector found no face in any)")
        names = [s.name for s, _ in kept]
        preds = [p for _, p in kept]
        gts = [s.landmarks for s, _ in kept]
        yaws = [s.yaw_deg for s, _ in kept]
        nme = nme_per_image(np.stack(preds), np.stack(gts))
        yaw = np.array(yaws)
        bins = yaw_bins(yaw)
        result: dict[str, Any] = {
            "benchmark": "AFLW2000-3D",
            "protocol": PROTOCOL_STANDARD if crop == "gt" else PROTOCOL_DETECTOR,
            "crop": crop,
            **summarise(nme, yaw),
            "conventions": dict(CONVENTIONS),
            "roi_scale": float(preprocess.roi_scale),
            "input_size": int(S),
            "preprocess": preprocess.to_dict(),
            "data": {"folder": str(self.folder), "n_images": total, "selection": self.selection},
            "model": model,
            "weights": weights,
            "references": REFERENCES,
            "note": DEV_SPLIT_NOTE,
            "images": [
                {"name": n, "yaw_deg": float(y), "bin": int(b), "nme": float(100.0 * e)}
                for n, y, b, e in zip(names, yaw, bins, nme)
            ],
        }
        if self.unreadable:
            result["warnings"].append(
                f"{len(self.unreadable)} selected image(s) were skipped because their annotation could not be read: "
                + ", ".join(u["name"] for u in self.unreadable[:10]) + (" ..." if len(self.unreadable) > 10 else "")
            )
        if crop == "detector":
            result["detector_failures"] = failures
            if failures:
                result["warnings"].append(f"the detector found no face in {len(failures)} image(s); they are not scored")
        return result
