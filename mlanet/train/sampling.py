"""Deterministic, resumable batch sampling over a weighted mixture of datasets.

Batch ``s`` of process ``rank`` is a pure function of ``(seed, rank, s)``: a run resumed at
step ``s`` sees exactly the batches it would have seen, with any number of loader workers.
Each drawn item is a key ``(source, index, aug_seed)`` that :class:`MixtureDataset` resolves.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils.data import Dataset, Sampler

from ..data.sources.schema import LANDMARK_SETS  # the optional landmark keys (re-exported)

#: Keys every training sample carries (see mlanet.data); collation keeps exactly these.
SAMPLE_KEYS = ("image", "landmarks", "landmarks_valid", "params", "has_params", "mp468", "has_mp468", "box", "index")

#: Other optional keys: ``fit_params`` (P,) the store's pseudo-3DMM fit (NaN if absent), ``fit_ok``
#: () bool, ``flipped`` () bool (the sample's augmentation mirrored it).
OPTIONAL_KEYS = tuple(k for n in LANDMARK_SETS for k in (f"points_{n}", f"visible_{n}")) + ("fit_params", "fit_ok", "flipped")


class MixtureBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields ``steps - start_step`` batches of ``(source, index, aug_seed)`` keys."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, steps: int, *,
                 seed: int, rank: int = 0, start_step: int = 0) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("need one weight per data source")
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
            idx = int(torch.randint(self.sizes[src], (1,), generator=g))
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
