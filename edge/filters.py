"""Temporal filtering of per-track face parameters, causal (no look-ahead).

* Pose and expression: the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): an
  exponential smoother whose cutoff frequency rises with the signal's speed, so slow motion is
  smoothed strongly (no jitter) and fast motion follows with little lag. Rotation is filtered in
  the continuous 6D representation (first two matrix columns) and re-orthonormalised, which
  avoids Euler wrap-around; translation in metres; expression weights as they are; SH lighting
  with a slower cutoff.
* Identity and albedo: a running mean per track (the face does not change while it is
  tracked), with a window cap so an early bad frame is eventually forgotten.

Time comes from the frames' capture timestamps (seconds), so dropped frames in a live stream
are handled correctly. The first sample of a track passes through unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mlanet.geometry import rotations_scalar as rot_s
from mlanet.params import ParamLayout


class OneEuroFilter:
    """Vectorised One-Euro filter over a fixed-size float vector.

    Args:
        min_cutoff: cutoff frequency (Hz) at zero speed; lower = smoother when still. A scalar, or
            one value per element of the vector (D,).
        beta: speed coefficient (1 / signal unit); higher = less lag when moving (scalar or (D,)).
        d_cutoff: cutoff (Hz) of the derivative estimate.
    """

    def __init__(self, min_cutoff: float | np.ndarray = 1.0, beta: float | np.ndarray = 0.0,
                 d_cutoff: float = 1.0) -> None:
        mc, b = np.asarray(min_cutoff, np.float64), np.asarray(beta, np.float64)
        if (mc <= 0).any() or d_cutoff <= 0 or (b < 0).any():
            raise ValueError("min_cutoff and d_cutoff must be positive and beta >= 0")
        # scalars stay floats; arrays give each element of the vector its own setting
        self.min_cutoff: float | np.ndarray = float(mc) if mc.ndim == 0 else mc
        self.beta: float | np.ndarray = float(b) if b.ndim == 0 else b
        self.d_cutoff = float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample ``x`` (D,) taken at time ``t`` seconds; returns the filtered (D,)."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._t is None:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        if x.shape != self._x.shape:
            raise ValueError(f"sample shape {x.shape} differs from the filter's {self._x.shape}")
        dt = t - self._t
        if dt <= 0:  # a repeated or out-of-order timestamp: keep the state, return the last output
            return self._x.copy()
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        assert self._dx is not None  # set with _x by the first sample
        self._dx = a_d * dx + (1.0 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t = t
        return self._x.copy()


class RunningMean:
    """Mean of the samples seen so far, over at most ``window`` samples (then exponential)."""

    def __init__(self, window: int = 300) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = int(window)
        self.count = 0
        self.mean: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        self.count += 1
        if self.mean is None:
            self.mean = x.copy()
        else:
            self.mean += (x - self.mean) / min(self.count, self.window)
        return self.mean.copy()


@dataclass(frozen=True)
class FilterCfg:
    """Settings of :class:`TrackFilter` (frequencies in Hz, ``beta`` per unit of the signal).

    Defaults were chosen for 25-30 fps video: rotation (6D, ~radians) and expression weights
    (0..1) follow fast motion; translation in metres needs a larger ``beta``. The expression
    settings (1 Hz at rest, ``beta`` 10: smoothed when still, little lag in a blink or a spoken
    syllable) come from ``benchmarks/expression_filter_sweep.py`` on the trained-on driving clips
    (the least rough setting within 0.02 of the best filtered correlation with MediaPipe's lip gap and
    eye aperture; record ``benchmarks/results/accuracy/expression_filter_sweep.json``; before: 2 Hz, 1).
    """

    enabled: bool = True
    rotation_min_cutoff: float = 1.5
    rotation_beta: float = 0.5
    translation_min_cutoff: float = 1.0
    translation_beta: float = 20.0
    expression_min_cutoff: float = 1.0
    expression_beta: float = 10.0
    lighting_min_cutoff: float = 0.3
    identity_window: int = 300


class TrackFilter:
    """Filters one track's frame-camera parameters (P,) over time (see module docstring)."""

    #: The groups smoothed by the One-Euro filter, in the order of its vector (rotation as 6D).
    MOTION_GROUPS = ("rotation", "translation", "expression", "lighting")

    def __init__(self, layout: ParamLayout, cfg: FilterCfg = FilterCfg()) -> None:
        self.layout, self.cfg = layout, cfg
        self._slices = layout.slices()
        missing = {"rotation", "translation", "expression", "lighting", "identity", "albedo"} - set(self._slices)
        if missing:
            raise ValueError(f"parameter layout without {sorted(missing)}")
        # One One-Euro filter over [rotation 6D | translation | expression | lighting] with per-element
        # settings (the filter is element-wise, so this equals one filter per group, in one call), and one
        # running mean over [identity | albedo].
        sizes = {"rotation": 6, "translation": 3, "expression": layout.expression, "lighting": layout.lighting}
        settings = {"rotation": (cfg.rotation_min_cutoff, cfg.rotation_beta),
                    "translation": (cfg.translation_min_cutoff, cfg.translation_beta),
                    "expression": (cfg.expression_min_cutoff, cfg.expression_beta),
                    "lighting": (cfg.lighting_min_cutoff, 0.0)}
        self.motion = OneEuroFilter(
            np.concatenate([np.full(sizes[g], settings[g][0]) for g in self.MOTION_GROUPS]),
            np.concatenate([np.full(sizes[g], settings[g][1]) for g in self.MOTION_GROUPS]))
        self.shape = RunningMean(cfg.identity_window)
        self._motion_columns = np.concatenate(
            [np.arange(self._slices[g].start, self._slices[g].stop) for g in self.MOTION_GROUPS[1:]])
        self._shape_columns = np.concatenate(
            [np.arange(self._slices[g].start, self._slices[g].stop) for g in ("identity", "albedo")])

    def __call__(self, flat: np.ndarray, t: float) -> np.ndarray:
        """Filtered copy of ``flat`` (P,) observed at time ``t`` seconds.

        NumPy for the vectors and plain-Python floats for the one rotation (one face per call: PyTorch's
        per-op dispatch, or NumPy's for 3x3 matrices, would cost more than the arithmetic); the rotation
        conversions are :mod:`mlanet.geometry.rotations_scalar`, twins of the functions that define them.
        """
        x = np.asarray(flat, dtype=np.float64)
        if x.shape != (self.layout.total,):
            raise ValueError(f"flat must be ({self.layout.total},), got {x.shape}")
        if not self.cfg.enabled:
            return x.astype(np.float32)
        rot, out = self._slices["rotation"], x.copy()
        r6 = rot_s.matrix_to_rotation_6d(rot_s.euler_to_matrix(*x[rot].tolist()))
        smoothed = self.motion(np.concatenate([r6, x[self._motion_columns]]), t)
        out[rot] = rot_s.matrix_to_euler(rot_s.rotation_6d_to_matrix(smoothed[:6].tolist()))
        out[self._motion_columns] = smoothed[6:]
        out[self._shape_columns] = self.shape(x[self._shape_columns])
        return out.astype(np.float32)


class TrackFilters:
    """One :class:`TrackFilter` per track id; tracks that disappear are forgotten by :meth:`retain`."""

    def __init__(self, layout: ParamLayout, cfg: FilterCfg = FilterCfg()) -> None:
        self.layout, self.cfg = layout, cfg
        self._filters: dict[int, TrackFilter] = {}

    def __call__(self, track_id: int, flat: np.ndarray, t: float) -> np.ndarray:
        f = self._filters.get(track_id)
        if f is None:
            f = self._filters[track_id] = TrackFilter(self.layout, self.cfg)
        return f(flat, t)

    def set_enabled(self, enabled: bool) -> None:
        """Switch filtering on or off (the tracks' states restart)."""
        from dataclasses import replace

        self.cfg = replace(self.cfg, enabled=bool(enabled))
        self._filters.clear()

    def retain(self, track_ids: set[int]) -> None:
        """Drop the state of tracks not in ``track_ids``."""
        for tid in list(self._filters):
            if tid not in track_ids:
                del self._filters[tid]
