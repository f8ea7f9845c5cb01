"""Face boxes for labelling: MediaPipe's BlazeFace (legacy ``mp.solutions.face_detection``).

``mediapipe`` is imported only when a :class:`FaceBoxDetector` is built. The runtime has its
own tracker-oriented wrapper (``mlanet.edge.face_detection.MediaPipeFaceDetector``, with keypoints
and box calibrations); the library may not import ``edge``, so labelling uses this small one.

Models: the *short-range* model first (faces within ~2 m, i.e. faces filling much of the
image: on 40 random faces each of the AFLW crops, 300-W, MTFL and the expression clips it
found 39, 40, 40 and 39, the full-range model 16, 36, 32 and 40), then the *full-range*
model when the short-range one finds nothing (small faces in large frames).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: MediaPipe ``model_selection`` values, in the order they are tried.
MODELS: tuple[tuple[str, int], ...] = (("short_range", 0), ("full_range", 1))
#: Default minimum detection confidence (MediaPipe's default).
MIN_SCORE: float = 0.5


class FaceBox(NamedTuple):
    """A detected face: ``box`` (4,) ``x0, y0, x1, y1`` image pixels, ``score`` in [0, 1], ``model`` name."""

    box: np.ndarray
    score: float
    model: str


class FaceBoxDetector:
    """``detector(image_rgb)`` -> list of :class:`FaceBox`, highest score first (see the module docstring).

    ``image_rgb``: (H, W, 3) uint8 RGB. Boxes are MediaPipe's relative boxes times (W, H):
    continuous image coordinates (edges, not pixel centres). Use as a context manager or call
    :meth:`close`.
    """

    def __init__(self, min_score: float = MIN_SCORE) -> None:
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        try:
            import mediapipe as mp
        except ImportError as exc:
            raise ImportError("face detection needs mediapipe==0.10.14 (pip install -e '.[edge]')") from exc
        self.version = str(getattr(mp, "__version__", "unknown"))
        self.min_score = float(min_score)
        self._models: list[tuple[str, Any]] = [
            (name, mp.solutions.face_detection.FaceDetection(model_selection=sel, min_detection_confidence=min_score))
            for name, sel in MODELS
        ]

    def describe(self) -> dict[str, Any]:
        return {"detector": "mediapipe face_detection (BlazeFace)", "mediapipe": self.version,
                "models_in_order": [m for m, _ in MODELS], "min_score": self.min_score}

    def __call__(self, image_rgb: np.ndarray) -> list[FaceBox]:
        a = np.asarray(image_rgb)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {a.shape} {a.dtype}")
        if not self._models:
            raise RuntimeError("FaceBoxDetector is closed")
        H, W = a.shape[:2]
        scale = np.array([W, H, W, H], dtype=np.float64)
        a = np.ascontiguousarray(a)
        for name, model in self._models:
            out = []
            for d in model.process(a).detections or []:
                rb = d.location_data.relative_bounding_box
                box = np.array([rb.xmin, rb.ymin, rb.xmin + rb.width, rb.ymin + rb.height], dtype=np.float64) * scale
                if np.all(np.isfinite(box)) and box[2] > box[0] and box[3] > box[1]:
                    out.append(FaceBox(box, float(d.score[0]) if len(d.score) else 0.0, name))
            if out:
                return sorted(out, key=lambda f: -f.score)
        return []

    def close(self) -> None:
        for _, model in self._models:
            model.close()
        self._models = []

    def __enter__(self) -> "FaceBoxDetector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
