"""MediaPipe face-mesh pseudo-landmarks for unlabelled face images.

``mediapipe`` is imported only inside the functions that run it, never at module import.

Detector
    :class:`FaceMeshDetector` wraps MediaPipe's legacy
    ``mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
    refine_landmarks=False)`` (mediapipe 0.10.14); :func:`detect_face_mesh` is the one-shot
    form. Both return (468, 2) float64 image pixels in **our** convention (pixel (i, j) has its
    centre at (i + 0.5, j + 0.5)) or None when no face is found.

Coordinate convention of MediaPipe's output (measured, see :func:`mediapipe_to_pixels`)
    MediaPipe returns ``x, y`` normalised by the image width and height. Multiplying by W, H
    is *not* exactly our continuous convention:

    1. On the CPU graph that the Python solution runs, the face crop fed to the landmark
       network is cut with OpenCV (``getPerspectiveTransform`` + ``warpPerspective`` from the
       ROI's corners), whose pixel centres are at *integers*; landmarks come back through the
       same mapping. So ``n * W`` is 0.5 px too small relative to our convention.
       Measured by rescaling images (PIL, edge-aligned) by ``s``: for a convention offset
       ``c`` the rescaled result moves by ``c (1 - 1/s)`` original pixels. On 40 frontal
       AFLW2000-3D dev images: s = 0.5 gave -0.45 (x) / -0.46 (y) px (median; -0.5 expected
       for c = 0.5), s = 2 gave +0.26 / +0.29 px (+0.25 expected); c = 0 would give 0.
    2. The landmark network's output is in *continuous* coordinates of its 192 x 192 input
       tensor (edges at 0 and 192), but is mapped back as if it were integer-centred, which
       adds half a tensor pixel, ``0.5 * roi / 192`` image pixels along each tensor axis
       (``roi`` = the side of MediaPipe's square face ROI). Measured with mirrored images: for
       the mirror pairs of the canonical mesh, ``mean(x_i + x'_mirror(i)) - W`` equals twice
       the x bias. Over 39 frontal images at three scales (468-box sides 114, 227, 680 px) it
       was -0.25, +0.36, +2.86 px: a straight-line fit gives -0.87 + 0.00546 * side (expected
       -1 + side * roi_per_side / 192), i.e. ``roi ~ 1.1 x`` the side of the 468-point box
       (:data:`MEDIAPIPE_ROI_PER_BOX`; MediaPipe's ROI is 1.5 x its face-detector box).

    Hence ``u = n * (W, H) + 0.5 - (roi / 192) * R(theta) @ (0.5, 0.5)``, with ``theta`` the
    ROI rotation (MediaPipe aligns the eyes; we use the outer eye corners 33 -> 263). For a
    450 px AFLW image (face box ~230 px) the net correction is about -0.2 px; for a face box of
    700 px it is about -1.5 px. The mirror test cannot see a y bias of the network itself;
    the y part of step 2 assumes the tensor convention is the same on both axes.

Crop box from the 468 points (:func:`box_from_mp468`)
    The 468-point box spans the forehead, so it is taller and centred higher than the iBUG
    68-point box that defines the project's crop (``shared/PROTOCOLS.md``). Measured on the
    130 frontal (|yaw| <= 30 deg) AFLW2000-3D dev images where MediaPipe finds the face (with
    the ground-truth 68 points converted to our convention): ``max side(68 box) / max
    side(468 box)`` median 0.903 (mean 0.905, sd 0.053; 0.92 at 30-60 deg, 1.0 above 60
    deg; dlib example faces 0.94, the LFPW sample 0.85), and the 68-box centre lies below the
    468-box centre by 0.083 of the 468 side (x offset 0.000). So the crop is
    ``box_from_points(points, roi_scale * MP468_TO_IBUG68_SIDE)`` moved down by
    ``MP468_CENTRE_SHIFT_Y * side468``, which gives the same face scale and centre as the
    68-point protocol crop for frontal faces.

Cache (:class:`PseudoLabelCache`)
    One ``mediapipe468.npz`` per image folder under the cache directory (mirroring the
    folder tree), holding per image: relative path, SHA-256 of the file, status (face / no
    face / unreadable), image size and the 468 points (our convention, image pixels). Written
    atomically (temporary file + ``os.replace``); loaded with ``allow_pickle=False``. Images
    whose relative path and SHA-256 match an entry are not run again; a changed file is.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from torch.utils.data import Dataset

from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256, mkstemp_beside
from mlanet.params import ParamLayout
from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points
from mlanet.data.landmarks import MP468_N_POINTS, make_sample, mirror_permutation, read_image_rgb, warn_skipped

logger = logging.getLogger(__name__)

#: Side of the landmark network's square input tensor (pixels).
MEDIAPIPE_LANDMARK_INPUT_SIZE: int = 192

#: Side of MediaPipe's face ROI divided by the max side of the 468-point box (measured).
MEDIAPIPE_ROI_PER_BOX: float = 1.1

#: Outer eye corners (subject's right, left) of the 468-point mesh, giving the ROI rotation.
MP468_EYE_OUTER_CORNERS: tuple[int, int] = (33, 263)

#: max side of the iBUG-68 box / max side of the 468-point box (frontal faces, measured).
MP468_TO_IBUG68_SIDE: float = 0.90

#: Downward offset of the 68-box centre from the 468-box centre, in 468-box sides (measured).
MP468_CENTRE_SHIFT_Y: float = 0.083

#: Image suffixes :class:`UnlabelledFaces` reads (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png")

Detector = Callable[[np.ndarray], "np.ndarray | None"]


def mediapipe_to_pixels(normalised: np.ndarray, width: int, height: int) -> np.ndarray:
    """MediaPipe's normalised landmarks (468, 2+) -> (468, 2) float64 image pixels, our convention.

    Applies the measured correction in the module docstring:
    ``n * (W, H) + 0.5 - (roi / 192) * R(theta) @ (0.5, 0.5)``, ``roi = 1.1 * max side of the
    box of n * (W, H)``, ``theta`` the angle of the outer-eye-corner line.
    """
    n = np.asarray(normalised, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != MP468_N_POINTS or n.shape[1] < 2:
        raise ValueError(f"expected ({MP468_N_POINTS}, 2+) normalised landmarks, got {n.shape}")
    raw = n[:, :2] * np.array([float(width), float(height)])
    side = float(np.ptp(raw, axis=0).max())
    eye = raw[MP468_EYE_OUTER_CORNERS[1]] - raw[MP468_EYE_OUTER_CORNERS[0]]
    theta = math.atan2(eye[1], eye[0])
    c, s = math.cos(theta), math.sin(theta)
    k = 0.5 * MEDIAPIPE_ROI_PER_BOX * side / MEDIAPIPE_LANDMARK_INPUT_SIZE
    bias = k * np.array([c - s, s + c])
    return raw + 0.5 - bias


#: Points MediaPipe returns with ``refine_landmarks=True``: the 468 of the mesh, then 10 iris points.
MP478_N_POINTS = 478

#: How the labeller's FaceMesh runs, per ``refine`` (the text is part of the labeller's identity).
MESH_DESCRIPTION = {
    False: "face_mesh static_image_mode, 1 face, refine_landmarks=False",
    True: "face_mesh static_image_mode, 1 face, refine_landmarks=True (attention mesh: lids, lips, irises "
          "refined; the 468 mesh points kept, the 10 iris points dropped)",
}


class FaceMeshDetector:
    """A reusable MediaPipe FaceMesh session; ``detector(image_rgb)`` -> (468, 2) or None.

    ``image_rgb``: (H, W, 3) uint8 RGB. Output: float64 image pixels, our convention (see
    :func:`mediapipe_to_pixels`). Use as a context manager or call :meth:`close`.

    ``refine``: MediaPipe's attention mesh (``refine_landmarks=True``), which re-places the lid, lip and iris
    points. Without it the lids of a closed eye stay apart: on the most closed frames of the driving clips the
    lid distance / eye width is 0.12-0.15 unrefined and 0.03-0.07 refined (open eyes: ~0.35 both).
    """

    def __init__(self, refine: bool = False) -> None:
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ImportError(
                "MediaPipe pseudo-labels need mediapipe==0.10.14 (pip install -e '.[edge]')"
            ) from exc
        self.version = str(getattr(mp, "__version__", "unknown"))
        self.refine = bool(refine)
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=self.refine
        )

    def __call__(self, image_rgb: np.ndarray) -> np.ndarray | None:
        a = np.asarray(image_rgb)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {a.shape} {a.dtype}")
        result = self._mesh.process(np.ascontiguousarray(a))
        faces = result.multi_face_landmarks
        if not faces:
            return None
        lm = faces[0].landmark
        expected = MP478_N_POINTS if self.refine else MP468_N_POINTS
        if len(lm) != expected:
            raise RuntimeError(f"MediaPipe returned {len(lm)} landmarks, expected {expected}")
        n = np.array([(p.x, p.y) for p in lm], dtype=np.float64)[:MP468_N_POINTS]
        return mediapipe_to_pixels(n, a.shape[1], a.shape[0])

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> "FaceMeshDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def detect_face_mesh(image_rgb: np.ndarray, detector: Detector | None = None) -> np.ndarray | None:
    """468 face-mesh points of the (first) face in an image, or None.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        detector: a :class:`FaceMeshDetector` to reuse; a temporary one is made without it
            (model start-up costs ~0.1 s, so reuse one for many images).

    Returns:
        (468, 2) float64 image pixels in our convention, or None if no face is found.
    """
    if detector is not None:
        return detector(image_rgb)
    with FaceMeshDetector() as d:
        return d(image_rgb)


def box_from_mp468(points: np.ndarray, roi_scale: float) -> CropBox:
    """Crop box from 468 face-mesh points (N, 2) with the face scale of the 68-point protocol.

    ``box_from_points(points, roi_scale * MP468_TO_IBUG68_SIDE)`` moved down by
    ``MP468_CENTRE_SHIFT_Y`` times the side of the 468-point box (see module docstring).
    """
    pts = np.asarray(points, dtype=np.float64)[:, :2]
    box = box_from_points(pts, roi_scale * MP468_TO_IBUG68_SIDE)
    side468 = float(np.ptp(pts, axis=0).max())
    return CropBox(box.x0, box.y0 + MP468_CENTRE_SHIFT_Y * side468, box.size)


def mediapipe468_flip_permutation(canonical_obj: str | os.PathLike[str]) -> np.ndarray:
    """Mirror map of the 468 face-mesh points from MediaPipe's ``canonical_face_model.obj``.

    Point ``i`` of a horizontally mirrored face is point ``perm[i]`` of the original (an
    involution; 0.1 mm tolerance on the exactly symmetric canonical mesh). Pass it to
    :class:`mlanet.data.augment.Augment` to keep ``mp468`` through flips.
    """
    from mlanet.morphable.mediapipe_map import read_mediapipe_canonical

    vertices = read_mediapipe_canonical(canonical_obj)
    try:
        return mirror_permutation(vertices, tolerance=1e-4)
    except ValueError as exc:
        raise AssetError(f"{canonical_obj}: {exc}") from None


# ------------------------------------------------------------------------------ cache
STATUS_NO_FACE = 0
STATUS_FACE = 1
STATUS_UNREADABLE = 2

_CACHE_FORMAT = "mlanet-mp468-cache"
_CACHE_VERSION = 1
#: Changing the conversion in :func:`mediapipe_to_pixels` must change this tag.
_CACHE_CONVENTION = (
    f"ours-centre+0.5;cv-offset+0.5;tensor-bias roi={MEDIAPIPE_ROI_PER_BOX}xbox/{MEDIAPIPE_LANDMARK_INPUT_SIZE}"
)


@dataclass(frozen=True)
class PseudoLabel:
    """Cached result for one image.

    Attributes:
        path: absolute image path. relpath: POSIX path relative to the dataset root.
        sha256: hex digest of the file. status: ``STATUS_FACE``, ``STATUS_NO_FACE`` or
        ``STATUS_UNREADABLE``. image_size: (H, W) (0, 0 when unreadable).
        points: (468, 2) float32 image pixels (our convention), NaN unless a face was found.
    """

    path: Path
    relpath: str
    sha256: str
    status: int
    image_size: tuple[int, int]
    points: np.ndarray


class PseudoLabelCache:
    """MediaPipe 468-point results, one ``mediapipe468.npz`` per image folder.

    Args:
        cache_dir: where the files live; the file for images in ``<root>/a/b/`` is
            ``<cache_dir>/a/b/mediapipe468.npz`` (``<cache_dir>/mediapipe468.npz`` for root).
    """

    FILE_NAME = "mediapipe468.npz"

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.cache_dir = Path(cache_dir)
        #: Images run through the detector by the last :meth:`label` call.
        self.n_computed = 0

    def file_for(self, folder_rel: str) -> Path:
        """Cache file of the folder ``folder_rel`` (POSIX, relative to the root; ``""`` = root)."""
        return self.cache_dir.joinpath(*[p for p in folder_rel.split("/") if p], self.FILE_NAME)

    def load(self, folder_rel: str) -> dict[str, PseudoLabel]:
        """Entries of one folder's cache file keyed by relpath (empty if absent or outdated).

        ``path`` of the returned labels is relative (the cache does not know the root).
        A corrupt cache file is ignored with a warning (it is rebuilt).
        """
        file = self.file_for(folder_rel)
        if not file.is_file():
            return {}
        try:
            with np.load(file, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != _CACHE_FORMAT or meta.get("version") != _CACHE_VERSION or meta.get(
                    "convention"
                ) != _CACHE_CONVENTION:
                    logger.info("%s: cache written with another format or convention; recomputing", file)
                    return {}
                names, shas = z["relpath"], z["sha256"]
                status, sizes, points = z["status"], z["image_size"], z["points"]
                n = len(names)
                if not (len(shas) == len(status) == len(sizes) == len(points) == n) or points.shape[1:] != (
                    MP468_N_POINTS,
                    2,
                ):
                    raise ValueError("inconsistent array lengths")
                return {
                    str(names[i]): PseudoLabel(
                        Path(str(names[i])),
                        str(names[i]),
                        str(shas[i]),
                        int(status[i]),
                        (int(sizes[i, 0]), int(sizes[i, 1])),
                        points[i].astype(np.float32),
                    )
                    for i in range(n)
                }
        except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt, never trusted
            logger.warning("%s: unreadable pseudo-label cache (%s: %s); recomputing", file, type(exc).__name__, exc)
            return {}

    def save(self, folder_rel: str, labels: Iterable[PseudoLabel], detector_version: str = "unknown") -> Path:
        """Write one folder's entries atomically (temporary file in the same folder + rename)."""
        labels = sorted(labels, key=lambda lb: lb.relpath)
        file = self.file_for(folder_rel)
        file.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": _CACHE_FORMAT,
            "version": _CACHE_VERSION,
            "convention": _CACHE_CONVENTION,
            "detector": detector_version,
        }
        arrays = {
            "meta": np.array(json.dumps(meta)),
            "relpath": np.array([lb.relpath for lb in labels], dtype=str).reshape(-1),
            "sha256": np.array([lb.sha256 for lb in labels], dtype="<U64").reshape(-1),
            "status": np.array([lb.status for lb in labels], dtype=np.int8).reshape(-1),
            "image_size": np.array([lb.image_size for lb in labels], dtype=np.int32).reshape(-1, 2),
            "points": np.stack([lb.points for lb in labels]).astype(np.float32)
            if labels
            else np.zeros((0, MP468_N_POINTS, 2), np.float32),
        }
        fd, tmp = mkstemp_beside(file)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return file

    def label(
        self,
        root: str | os.PathLike[str],
        files: list[Path],
        detector: Detector | None = None,
        progress: bool = True,
        save_every: int = 200,
    ) -> list[PseudoLabel]:
        """Pseudo-labels for ``files`` (under ``root``), from the cache or by running the detector.

        Args:
            root: dataset root; relative paths are taken from it.
            files: image files under ``root``.
            detector: callable (H, W, 3) uint8 -> (468, 2) or None; default: a
                :class:`FaceMeshDetector`, created only if some image is not cached.
            progress: log progress (INFO) while detecting.
            save_every: also write a folder's cache after this many new detections.

        Returns:
            One :class:`PseudoLabel` per file, in the order of ``files`` (``path`` as given there).
        """
        root = Path(root)
        by_folder: dict[str, list[Path]] = {}
        for f in files:
            rel = f.relative_to(root).as_posix()
            by_folder.setdefault(rel.rpartition("/")[0], []).append(f)
        own_detector: FaceMeshDetector | None = None
        version = "custom"
        results: dict[Path, PseudoLabel] = {}
        todo_total = 0
        self.n_computed = 0
        t_last = time.monotonic()
        try:
            plans = []
            for folder_rel, folder_files in sorted(by_folder.items()):
                cached = self.load(folder_rel)
                todo = []
                current: dict[str, PseudoLabel] = {}
                for f in folder_files:
                    rel = f.relative_to(root).as_posix()
                    sha = file_sha256(f)
                    hit = cached.get(rel)
                    if hit is not None and hit.sha256 == sha:
                        current[rel] = PseudoLabel(f, rel, sha, hit.status, hit.image_size, hit.points)
                    else:
                        todo.append((f, rel, sha))
                plans.append((folder_rel, current, todo, len(cached) != len(current) or bool(todo)))
                todo_total += len(todo)
            if todo_total and progress:
                logger.info("MediaPipe pseudo-labels: %d of %d images need detection", todo_total, len(files))
            for folder_rel, current, todo, dirty in plans:
                new_since_save = 0
                for f, rel, sha in todo:
                    if detector is None:
                        own_detector = FaceMeshDetector()
                        detector = own_detector
                        version = f"mediapipe {own_detector.version}"
                    current[rel] = self._run_one(f, rel, sha, detector)
                    self.n_computed += 1
                    new_since_save += 1
                    if new_since_save >= save_every:
                        self.save(folder_rel, current.values(), version)
                        new_since_save = 0
                    if progress and (time.monotonic() - t_last > 5.0 or self.n_computed == todo_total):
                        logger.info("MediaPipe pseudo-labels: %d / %d images detected", self.n_computed, todo_total)
                        t_last = time.monotonic()
                if dirty:
                    self.save(folder_rel, current.values(), version)
                for lb in current.values():
                    results[lb.path] = lb
        finally:
            if own_detector is not None:
                own_detector.close()
        return [results[f] for f in files]

    @staticmethod
    def _run_one(path: Path, rel: str, sha: str, detector: Detector) -> PseudoLabel:
        nan = np.full((MP468_N_POINTS, 2), np.nan, dtype=np.float32)
        try:
            image = read_image_rgb(path)
        except AssetError as exc:
            logger.debug("%s", exc)
            return PseudoLabel(path, rel, sha, STATUS_UNREADABLE, (0, 0), nan)
        pts = detector(image)
        size = (int(image.shape[0]), int(image.shape[1]))
        if pts is None:
            return PseudoLabel(path, rel, sha, STATUS_NO_FACE, size, nan)
        pts = np.asarray(pts, dtype=np.float64)
        if pts.shape != (MP468_N_POINTS, 2) or not np.all(np.isfinite(pts)):
            raise ValueError(f"detector returned {pts.shape} points (finite: {np.isfinite(pts).all()}) for {path}")
        return PseudoLabel(path, rel, sha, STATUS_FACE, size, pts.astype(np.float32))


def list_images(root: Path) -> tuple[list[Path], list[Path]]:
    """Image files (by suffix) under ``root``, recursively, skipping hidden files and folders.

    Returns (sorted images, sorted other files).
    """
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            (images if p.suffix.lower() in IMAGE_SUFFIXES else others).append(p)
    return sorted(images), sorted(others)


class UnlabelledFaces(Dataset):
    """Face images without annotations, labelled with MediaPipe's 468 points (cached).

    Args:
        root: folder of images (``.jpg``/``.jpeg``/``.png``, recursive; hidden folders skipped).
        preprocess: crop size S and ``roi_scale``.
        cache_dir: pseudo-label cache folder; default ``<root>/.mlanet_cache``.
        progress: log progress while detecting.
        detector: callable (H, W, 3) uint8 -> (468, 2) image pixels (our convention) or None;
            default a :class:`FaceMeshDetector` (only created if some image is not cached).
        layout: only sets the length P of the all-NaN ``params`` (0 without one).

    The cache is built or loaded at construction. Only images with a detected face are kept;
    unreadable files (warning each) and images without a face are counted in
    :attr:`n_unreadable` / :attr:`n_no_face`; files without an image suffix are skipped with
    one warning. A missing folder or one without a usable image raises :class:`AssetError`.

    Sample: the standard keys, with ``mp468`` the 468 points in crop pixels and ``has_mp468``
    True, ``landmarks`` NaN / ``landmarks_valid`` False, ``params`` NaN / ``has_params`` False;
    the crop is :func:`box_from_mp468`. :attr:`labels` gives each index's path and points.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        preprocess: PreprocessCfg,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: bool = True,
        detector: Detector | None = None,
        layout: ParamLayout | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise AssetError(f"{self.root}: image folder not found")
        self.preprocess = preprocess
        self.layout = layout
        self.cache = PseudoLabelCache(self.root / ".mlanet_cache" if cache_dir is None else cache_dir)
        images, others = list_images(self.root)
        if others:
            warn_skipped(logger, f"unlabelled faces {self.root}", [f"{p} (not a .jpg/.jpeg/.png file)" for p in others], 3)
        if not images:
            raise AssetError(f"{self.root}: no .jpg/.jpeg/.png images found")
        all_labels = self.cache.label(self.root, images, detector=detector, progress=progress)
        unreadable = [lb for lb in all_labels if lb.status == STATUS_UNREADABLE]
        for lb in unreadable:  # cached failures are reported again on every construction
            logger.warning("%s: not a readable image; skipped", lb.path)
        self.n_unreadable = len(unreadable)
        self.n_no_face = sum(lb.status == STATUS_NO_FACE for lb in all_labels)
        self.labels: list[PseudoLabel] = [lb for lb in all_labels if lb.status == STATUS_FACE]
        if not self.labels:
            raise AssetError(f"{self.root}: MediaPipe found no face in any of {len(images)} images")
        logger.info(
            "unlabelled faces %s: %d images with a face (%d without, %d unreadable)",
            self.root,
            len(self.labels),
            self.n_no_face,
            self.n_unreadable,
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        lb = self.labels[index]
        image = read_image_rgb(lb.path)
        if tuple(image.shape[:2]) != lb.image_size:
            raise AssetError(
                f"{lb.path}: image is {image.shape[0]}x{image.shape[1]} but was {lb.image_size[0]}x{lb.image_size[1]} "
                "when its pseudo-labels were computed; rebuild the dataset"
            )
        pts = lb.points.astype(np.float64)
        box = box_from_mp468(pts, self.preprocess.roi_scale)
        return make_sample(image, box, self.preprocess, index, mp468_image=pts, layout=self.layout)
