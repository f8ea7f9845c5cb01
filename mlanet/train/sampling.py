"""Deterministic, resumable batch sampling over a weighted mixture of datasets.

Batch ``s`` of process ``rank`` is a pure function of ``(seed, rank, s)``: a run resumed at
step ``s`` sees exactly the batches it would have seen, with any number of loader workers.
Each drawn item is a key ``(source, index, aug_seed)`` that :class:`MixtureDataset` resolves.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mlanet.data.sources.schema import LANDMARK_SETS  # the optional landmark keys (re-exported)

#: Keys every training sample carries (see mlanet.data); collation keeps exactly these.
SAMPLE_KEYS = ("image", "landmarks", "landmarks_valid", "params", "has_params", "mp468", "has_mp468", "box", "index")

#: Other optional keys: ``fit_params`` (P,) the store's pseudo-3DMM fit (NaN if absent), ``fit_ok``
#: () bool, ``flipped`` () bool (the sample's augmentation mirrored it).
OPTIONAL_KEYS = tuple(k for n in LANDMARK_SETS for k in (f"points_{n}", f"visible_{n}")) + ("fit_params", "fit_ok", "flipped")


def bin_balanced_weights(values: np.ndarray, strength: float, edges: Sequence[float]) -> np.ndarray:
    """Per-item sampling weights that even out how often the bins of a per-item value are drawn.

    Args:
        values: (N,) the value binned (NaN = unknown: such items keep weight 1 relative to the mean).
        strength: 0 = uniform; 1 = every bin (``values <= edges[0]``, ``(edges[0], edges[1]]``, ...,
            ``> edges[-1]``) drawn equally often; in between, a bin holding a fraction ``f`` of the
            items is drawn ``~ f^(1 - strength)``.
        edges: ascending bin edges, in the units of ``values``.
    Returns:
        (N,) float64 weights with mean 1 (unnormalised sampling probabilities).
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"balance strength must be in [0, 1], got {strength}")
    y = np.asarray(values, dtype=np.float64)
    w = np.ones(len(y))
    known = np.isfinite(y)
    if strength > 0 and known.any():
        bins = np.digitize(y[known], edges, right=True)
        counts = np.bincount(bins, minlength=len(edges) + 1).astype(np.float64)
        w[known] = (counts[bins] / known.sum()) ** -strength
        w[known] *= known.sum() / w[known].sum()  # known items keep their share of the draws
    return w / w.mean() if len(w) else w


def yaw_balanced_weights(abs_yaw_deg: np.ndarray, strength: float,
                         edges_deg: Sequence[float] = (30.0, 60.0)) -> np.ndarray:
    """Per-item sampling weights that even out the head-yaw bins of the benchmark.

    Args:
        abs_yaw_deg: (N,) absolute yaw, degrees (NaN = unknown: weight 1 relative to the mean).
        strength: see :func:`bin_balanced_weights` (1 = [0, 30], (30, 60], > 60 degrees drawn equally).
        edges_deg: bin edges, degrees.
    Returns:
        (N,) float64 weights with mean 1.
    """
    return bin_balanced_weights(abs_yaw_deg, strength, edges_deg)


#: Bin edges of :func:`eye_closure_balanced_weights`: open (<= 0.25), half closed, closed (> 0.5).
EYE_CLOSURE_EDGES: tuple[float, ...] = (0.25, 0.5)


def eye_closure_balanced_weights(eye_blink: np.ndarray, strength: float,
                                 edges: Sequence[float] = EYE_CLOSURE_EDGES) -> np.ndarray:
    """Per-item sampling weights that even out open, half-closed and closed eyes.

    Blinks are a few frames in a hundred, so a network trained on video frames as they come
    rarely sees a closed eye and learns not to close its own.

    Args:
        eye_blink: (N,) the mean fitted ``eyeBlink_L``/``eyeBlink_R`` weight of each item, in [0, 1]
            (NaN = no good fit: weight 1 relative to the mean).
        strength: see :func:`bin_balanced_weights`.
        edges: bin edges in eyeBlink units.
    Returns:
        (N,) float64 weights with mean 1.
    """
    return bin_balanced_weights(eye_blink, strength, edges)


class MixtureBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields ``steps - start_step`` batches of ``(source, index, aug_seed)`` keys.

    ``item_weights`` (optional, one entry per source): unnormalised (N_source,) sampling weights of
    that source's items (None = uniform), e.g. :func:`yaw_balanced_weights`.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, steps: int, *,
                 seed: int, rank: int = 0, start_step: int = 0,
                 item_weights: Sequence[np.ndarray | None] | None = None) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("need one weight per data source")
        item_weights = list(item_weights) if item_weights is not None else [None] * len(sizes)
        if len(item_weights) != len(sizes):
            raise ValueError("need one item_weights entry (or None) per data source")
        self.item_weights: list[torch.Tensor | None] = []
        for n, iw in zip(sizes, item_weights):
            if iw is not None:
                iw = torch.as_tensor(np.asarray(iw, dtype=np.float64))
                if iw.shape != (n,) or not torch.isfinite(iw).all() or (iw < 0).any() or (n and iw.sum() <= 0):
                    raise ValueError(f"item_weights must be {n} finite non-negative values with a positive sum")
            self.item_weights.append(iw)
        w = torch.tensor([float(x) if n > 0 else 0.0 for x, n in zip(weights, sizes)], dtype=torch.float64)
        if w.sum() <= 0:
            raise ValueError("all data sources are empty or have weight 0")
        self.sizes, self.probs = list(sizes), w / w.sum()
        self.batch_size, self.steps, self.start_step = batch_size, steps, start_step
        self.seed, self.rank = seed, rank

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def batch(self, step: int) -> list[tuple[int, int, int]]:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rank * 7_919 + step) % (2**63))
        sources = torch.multinomial(self.probs, self.batch_size, replacement=True, generator=g)
        keys = []
        for src in sources.tolist():
            iw = self.item_weights[src]
            idx = int(torch.randint(self.sizes[src], (1,), generator=g) if iw is None
                      else torch.multinomial(iw, 1, generator=g))
            aug = int(torch.randint(2**31 - 1, (1,), generator=g))
            keys.append((src, idx, aug))
        return keys

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start_step, self.steps):
            yield self.batch(step)


class MixtureDataset(Dataset):
    """Resolves ``(source, index, aug_seed)`` keys; applies each source's augmentation, if any."""

    def __init__(self, sources: Sequence[Dataset], augments: Sequence[Callable[..., dict] | None]) -> None:
        self.sources, self.augments = list(sources), list(augments)

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        src, idx, aug_seed = key
        source = self.sources[src]
        # a source that augments itself takes the sampler's seed, so a resumed run sees the same samples
        sample = source[(idx, aug_seed)] if getattr(source, "takes_aug_seed", False) else source[idx]
        augment = self.augments[src]
        if augment is not None:
            sample = augment(sample, torch.Generator().manual_seed(aug_seed))
        sample = dict(sample)
        sample["source"] = torch.tensor(src)
        return sample


def make_collate(n_params: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Collate to the common schema; samples without parameters get NaN vectors of length ``n_params``.

    Keeps :data:`SAMPLE_KEYS`, ``source`` and :data:`OPTIONAL_KEYS`; a sample lacking an optional
    key (or with a landmark set of the wrong size, or a fit vector not of length ``n_params``)
    gets NaN / False for it.
    """

    def optional(s: dict[str, Any], key: str) -> torch.Tensor:
        if key.startswith(("points_", "visible_")):
            name = key.split("_", 1)[1]
            n = LANDMARK_SETS[name][1]
            p, v = s.get(f"points_{name}"), s.get(f"visible_{name}")
            ok = p is not None and v is not None and tuple(torch.as_tensor(p).shape) == (n, 2) \
                and tuple(torch.as_tensor(v).shape) == (n,)
            if key.startswith("points_"):
                return torch.as_tensor(p).float() if ok else torch.full((n, 2), float("nan"))
            if not ok:
                return torch.zeros(n, dtype=torch.bool)
            return torch.as_tensor(v).bool() & torch.isfinite(torch.as_tensor(p)).all(-1)
        if key == "fit_params":
            v = s.get("fit_params")
            ok = v is not None and torch.as_tensor(v).numel() == n_params and bool(s.get("fit_ok", False))
            return torch.as_tensor(v).float().reshape(-1) if ok else torch.full((n_params,), float("nan"))
        if key == "fit_ok":
            v = s.get("fit_params")
            ok = v is not None and torch.as_tensor(v).numel() == n_params and bool(s.get("fit_ok", False))
            return torch.tensor(bool(ok and torch.isfinite(torch.as_tensor(v)).all()))
        return torch.tensor(bool(s.get(key, False)))  # flipped

    def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key in SAMPLE_KEYS + ("source",):
            values = []
            for s in samples:
                v = s[key]
                if key == "params" and (v.numel() != n_params or not bool(s["has_params"])):
                    v = torch.full((n_params,), float("nan"))
                values.append(torch.as_tensor(v))
            out[key] = torch.stack(values)
        for key in OPTIONAL_KEYS:
            out[key] = torch.stack([optional(s, key) for s in samples])
        return out

    return collate
