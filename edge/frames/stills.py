"""Still images: reading (size-checked), pixel conversion, single images, folders, in-memory arrays.

Part of :mod:`mlanet.edge.frames` (see the package docstring for the conventions every source follows)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from mlanet.edge.types import Frame, SourceError

from mlanet.edge.frames.base import DEFAULT_MAX_PIXELS, FrameSource, IMAGE_SUFFIXES, NOMINAL_FOLDER_FPS, _NS

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Pixel conversion and still images
# --------------------------------------------------------------------------------------------


def to_rgb_uint8(image: np.ndarray, *, bgr: bool = True, where: str = "image") -> np.ndarray:
    """Any decoded image as (H, W, 3) uint8 RGB, C-contiguous.

    Args:
        image: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array; uint8, uint16 (scaled to
            0..255 with rounding) or float (taken as [0, 1], clipped). Colour order BGR(A)
            when ``bgr`` (OpenCV), else RGB(A). Alpha is dropped (not composited).
        where: name used in error messages.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)) or arr.size == 0:
        raise SourceError(f"{where}: unsupported image layout {arr.shape} (expected H x W, H x W x 3 or H x W x 4)")
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype.kind == "f":
        arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise SourceError(f"{where}: unsupported pixel type {arr.dtype} (expected 8- or 16-bit, or float)")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif bgr:
        arr = arr[:, :, 2::-1]  # B G R (A) -> R G B
    else:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


def _header_size(path: Path, max_pixels: int) -> tuple[int, int] | None:
    """(W, H) from the image header via Pillow without decoding pixels; None if Pillow cannot tell."""
    try:
        from PIL import Image
    except ImportError:  # pillow is a dependency, but the check is only an early exit
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:
        raise SourceError(
            f"{path}: image is too large to process ({exc}); the limit is "
            f"{max_pixels / 1e6:g} megapixels (max_pixels) - downscale it first"
        ) from None
    except Exception:  # noqa: BLE001 - unknown to Pillow: OpenCV gets its chance below
        return None


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one still image as (H, W, 3) uint8 RGB (C-contiguous).

    EXIF orientation is applied; greyscale, RGBA and 16-bit images are converted. The pixel
    count is checked against ``max_pixels`` from the header (Pillow) before decoding when
    possible. Bytes are read by Python and decoded with ``cv2.imdecode``, so any path
    (unicode included) works.

    Raises:
        SourceError: missing file, a folder, not a decodable image, or more than ``max_pixels``
            pixels; the message names the file.
    """
    import cv2

    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder, not an image file")
    size = _header_size(path, max_pixels)
    if size is not None:
        _check_pixels(path, size, max_pixels)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise SourceError(f"{path}: is empty (0 bytes), not an image")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise SourceError(
            f"{path}: is not a readable image (OpenCV cannot decode its {len(data)} bytes; "
            f"supported: {', '.join(sorted(IMAGE_SUFFIXES))}); the file may be damaged or not an image"
        )
    _check_pixels(path, (image.shape[1], image.shape[0]), max_pixels)
    return to_rgb_uint8(image, bgr=True, where=str(path))


def _check_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w * h > max_pixels:
        raise SourceError(
            f"{path}: image is {w}x{h} ({w * h / 1e6:.1f} megapixels), more than the limit of "
            f"{max_pixels / 1e6:g} megapixels; downscale it first or raise max_pixels"
        )


def _natural_key(path: Path) -> list[int | str]:
    """Sort key ``img2.png`` < ``img10.png``; case-insensitive (text and numbers alternate, text first,
    so two keys compare str with str and int with int)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def format_frame_ranges(indices: Sequence[int], *, limit: int = 20) -> str:
    """Frame indices as short ranges: ``[0, 1, 2, 3, 7, 9, 10]`` -> ``"0-3, 7, 9-10"``.

    At most ``limit`` ranges are written; the rest are summarised (``", ... (+N more)"``).
    """
    values = sorted(set(int(i) for i in indices))
    runs: list[tuple[int, int]] = []
    for v in values:
        if runs and v == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], v)
        else:
            runs.append((v, v))
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:limit])
    if len(runs) > limit:
        text += f", ... (+{sum(b - a + 1 for a, b in runs[limit:])} more)"
    return text


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` (h, w, 3) uint8 scaled to fit inside ``width`` x ``height`` pixels, keeping its
    aspect ratio, and centred on black: (height, width, 3) uint8, C-contiguous.

    Used to put stills of different sizes into one overlay video. An image that already has the
    size is returned unchanged (no copy). Downscaling uses area averaging, upscaling bilinear.
    """
    import cv2

    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if width < 1 or height < 1:
        raise ValueError(f"letterbox size must be positive, got {width}x{height}")
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = resized
    return out


class ImageSource(FrameSource):
    """One still image as a one-frame source (``index`` 0, ``t_capture_ns`` 0).

    The image is read in the constructor, so a bad file fails at once. The source can be
    iterated any number of times. The frame is an independent still (``independent=True``,
    ``name`` = the file name; :attr:`independent_frames` is True).

    Raises:
        SourceError: see :func:`read_image`.
    """

    def __init__(self, path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        self.name = str(path)
        self._image = read_image(self.path, max_pixels=max_pixels)
        self.size = (self._image.shape[1], self._image.shape[0])
        self.n_frames = 1
        self.independent_frames = True

    def _frames(self) -> Iterator[Frame]:
        if not self._closed:
            yield Frame(self._image, 0, 0, self.name, name=self.path.name, independent=True)


class ImageFolderSource(FrameSource):
    """The still images of one folder (not recursive), in natural sort order of their names.

    Files with a suffix in :data:`IMAGE_SUFFIXES` (case-insensitive) are used; other files and
    hidden files (``.name``) are ignored. A file among them that cannot be read (damaged, not
    an image, too large) is **skipped** with a ``logging`` warning naming it and counted in
    :attr:`skipped` / :attr:`skipped_files`: one bad photo should not stop a batch. Only when
    no image at all could be read does iteration raise :class:`SourceError`.

    ``index`` is the position in the sorted list (skipped files leave gaps; ``start_frame``
    resumes at that position), ``source`` of each frame is the image's own path, ``name`` its
    file name, and ``t_capture_ns = round(index * 1e9 / fps)`` with ``fps`` (or
    :data:`NOMINAL_FOLDER_FPS` when ``fps`` is None; then :attr:`fps` stays None). Images keep
    their own sizes. Skipped files are also listed in :attr:`lost_frames` and :attr:`damaged`.

    By default the folder is a set of **unrelated photos** (``independent=True`` on every frame,
    :attr:`independent_frames`): each is fitted on its own, nothing is tracked or averaged
    across photos. ``sequence=True`` reads it as the frames of one video instead (extracted
    frames ``frame_0001.png`` ...: tracking and temporal filtering as for a video file).

    Raises:
        SourceError: the folder is missing, is not a folder, or holds no image files.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        fps: float | None = None,
        start_frame: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        sequence: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.name = str(folder)
        self.independent_frames = not sequence
        if start_frame < 0:
            raise ValueError(f"start_frame must be >= 0, got {start_frame}")
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0 or None, got {fps}")
        if not self.folder.exists():
            raise SourceError(f"{self.folder}: no such folder")
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: is not a folder")
        try:
            entries = list(self.folder.iterdir())
        except OSError as exc:
            raise SourceError(f"{self.folder}: cannot be listed ({exc.strerror or exc})") from exc
        self.paths: list[Path] = sorted(
            (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()),
            key=_natural_key,
        )
        if not self.paths:
            raise SourceError(
                f"{self.folder}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; "
                f"the folder has {len(entries)} other entries)"
            )
        self.fps = fps
        self.start_frame = start_frame
        self.max_pixels = max_pixels
        self.n_frames = len(self.paths)
        self.skipped = 0
        self.skipped_files: list[Path] = []

    def _frames(self) -> Iterator[Frame]:
        self.skipped, self.skipped_files, self.stopped_early, self.damaged = 0, [], None, None
        self.lost_frames = ()
        lost: list[int] = []
        period_ns = _NS / (self.fps or NOMINAL_FOLDER_FPS)
        read, first_error = 0, None
        for index in range(self.start_frame, len(self.paths)):
            if self._closed:
                return
            path = self.paths[index]
            try:
                image = read_image(path, max_pixels=self.max_pixels)
            except SourceError as exc:
                log.warning("skipping %s", exc)
                self.skipped += 1
                self.skipped_files.append(path)
                lost.append(index)
                self.lost_frames = tuple(lost)
                first_error = first_error or exc
                continue
            read += 1
            self.size = (image.shape[1], image.shape[0])
            yield Frame(image, index, round(index * period_ns), str(path), name=path.name,
                        independent=self.independent_frames)
        if read == 0 and first_error is not None:
            raise SourceError(f"{self.folder}: none of its {self.skipped} images could be read (first: {first_error})")
        if self.skipped:
            names = ", ".join(p.name for p in self.skipped_files[:10]) + (", ..." if self.skipped > 10 else "")
            self.damaged = (
                f"{self.folder}: {self.skipped} of {len(self.paths) - self.start_frame} images could not be read and "
                f"were skipped (frames {format_frame_ranges(lost)}: {names}; first error: {first_error})"
            )


class ArraySource(FrameSource):
    """In-memory images as a finite source (synthetic input, tests).

    Args:
        images: a sequence of (H, W, 3) uint8 RGB arrays (other layouts/dtypes are converted as
            in :func:`to_rgb_uint8` with RGB order).
        fps: frame rate for the timestamps ``round(index * 1e9 / fps)``; None: 1 frame per second
            spacing and :attr:`fps` None.
        independent: the images are unrelated stills (like a photo folder): frames carry
            ``independent=True`` and ``name`` ``"<name>[<index>]"``.
    """

    def __init__(
        self, images: Sequence[np.ndarray], *, fps: float | None = None, name: str = "arrays", independent: bool = False
    ) -> None:
        self._images = images
        self.name = name
        self.fps = fps
        self.independent_frames = bool(independent)
        self.n_frames = len(images)
        if len(images):
            self.size = (int(images[0].shape[1]), int(images[0].shape[0]))

    def _frames(self) -> Iterator[Frame]:
        period_ns = _NS / (self.fps or NOMINAL_FOLDER_FPS)
        for index, image in enumerate(self._images):
            if self._closed:
                return
            rgb = to_rgb_uint8(image, bgr=False, where=f"{self.name}[{index}]")
            self.size = (rgb.shape[1], rgb.shape[0])
            still = f"{self.name}[{index}]" if self.independent_frames else None
            yield Frame(rgb, index, round(index * period_ns), self.name, name=still,
                        independent=self.independent_frames)
