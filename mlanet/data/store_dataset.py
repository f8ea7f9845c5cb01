"""Training samples from a store (:mod:`mlanet.data.store`) with cheap augmentation.

One similarity warp per sample takes the uint8 store crop (S x S, the network's crop plus a
margin) straight to the network input (``input_size``), with the augmentation's zoom,
rotation, shift and horizontal flip folded into the same matrix; then the photometric part
(colour, blur, occlusion) of :class:`mlanet.data.augment.Augment` runs on the small float
image. Nothing is decoded and nothing large is resampled.

Geometry (pixel centres at integer + 0.5, as everywhere)::

    M = D @ T,   T: p -> k (p - S/2) + s/2,   k = input_size / store.input_size

``T`` maps store pixels to the un-augmented network crop (with ``k = 1`` the centre
``input_size`` pixels of the store crop), ``D`` is :attr:`mlanet.data.augment.AugmentDraw.matrix`
(flip, zoom, rotation and shift about the crop centre, drawn by
:meth:`mlanet.data.augment.Augment.draw` for a crop of side ``s``). The image is resampled once
(``cv2.warpAffine`` on uint8, bilinear, zero outside, when OpenCV is installed; else
``torch.nn.functional.grid_sample``, same result to within rounding); every landmark set (and
every point-set extra) is moved by the same ``M``. A flip permutes each set with its own
definition's ``flip_permutation`` (stored in the manifest), so "left" points stay on the left;
visibility moves with its point. Yaw changes sign under a flip.

Sample dict (the keys :func:`mlanet.train.sampling.make_collate` keeps, plus store extras)::

    image (3, s, s) float32 [0, 1]     landmarks (68, 2) float32, the ibug68 set (NaN if absent)
    landmarks_valid (68,) bool         params (P,) NaN, has_params False (real images)
    mp468 (468, 2), has_mp468          from a point-set extra named "mp468", else NaN / False
    box (3,) float64                   the un-augmented network crop in the original image's pixels
    index () int64                     dataset index
    -- extras (dropped by make_collate; torch's default_collate keeps them) --
    points_<def> (L, 2), visible_<def> (L,)   every landmark set of the store, in input pixels
    yaw_deg () float32 (NaN unknown)   store_row () int64    store_source () int64
    flipped () bool                    warp (3, 3) float32: store pixels -> input pixels (M)
    points_teacher68, visible_teacher68   the ``teacher68`` extra (moved by M), when stored
    fit_params (P,), fit_ok () bool    the ``fit_params`` / ``fit_ok`` extras, when stored (as fitted:
                                       un-augmented crop camera, not flipped)
    x_<name>, has_x_<name>             stored extras (point sets moved by M; others as stored:
                                       flip-dependent ones such as a pose must use ``flipped``)

Randomness: ``dataset[(i, aug_seed)]`` draws from ``torch.Generator().manual_seed(aug_seed)``
(the ``(source, index, aug_seed)`` keys of :class:`mlanet.train.sampling.MixtureBatchSampler`);
``dataset[i]`` uses a seed made from ``(seed, epoch, i)`` (:meth:`StoreDataset.set_epoch`).
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mlanet.data.augment import Augment, AugmentCfg, AugmentDraw
from mlanet.data.landmarks import IBUG68_FLIP_PERMUTATION, MP468_N_POINTS, check_flip_permutation
from mlanet.data.sources.schema import DEFINITIONS
from mlanet.data.store import Store
from mlanet.params import FaceParams, ParamLayout

#: Name of the point-set extra that fills the loop's ``mp468`` / ``has_mp468`` keys.
MP468_EXTRA = "mp468"


def _identity_draw(size: int) -> AugmentDraw:
    return AugmentDraw(False, 1.0, 0.0, (0.0, 0.0), 1.0, 1.0, 1.0, 0.0, 0.0, None, (0.0, 0.0, 0.0), size)


def store_to_input(store_size: int, store_input_size: int, input_size: int) -> np.ndarray:
    """T (3, 3): store-crop pixels -> un-augmented network-input pixels (see the module docstring)."""
    k = input_size / store_input_size
    t = input_size / 2.0 - k * store_size / 2.0
    return np.array([[k, 0.0, t], [0.0, k, t], [0.0, 0.0, 1.0]])


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def warp_uint8(image: np.ndarray, matrix: np.ndarray, size: int, use_cv2: bool = True) -> np.ndarray:
    """Resample an (H, W, 3) uint8 image so that point p lands on ``matrix @ p``; (size, size, 3) uint8.

    Bilinear, zero outside. ``cv2.warpAffine`` (its pixel centres are at integers, hence the
    half-pixel conversion) or, without OpenCV, ``grid_sample`` with ``align_corners=False``.
    """
    cv2 = _cv2() if use_cv2 else None
    if cv2 is not None:
        a, t = matrix[:2, :2], matrix[:2, 2]
        m = np.concatenate([a, (t + a @ np.array([0.5, 0.5]) - 0.5)[:, None]], axis=1)
        return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    H, W = image.shape[:2]
    inv = np.linalg.inv(matrix)
    c = np.arange(size, dtype=np.float64) + 0.5
    gx, gy = np.meshgrid(c, c)
    sx = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
    sy = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
    grid = torch.from_numpy(np.stack([2.0 * sx / W - 1.0, 2.0 * sy / H - 1.0], axis=-1)).float()
    img = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(img, grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _move(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    p = points.astype(np.float64)
    return (p @ m[:2, :2].T + m[:2, 2]).astype(np.float32)


class StoreDataset(Dataset):
    """Augmented training samples from a :class:`Store` (see the module docstring).

    Args:
        store: a :class:`Store` or its folder.
        augment: ranges of the augmentation (:class:`AugmentCfg`); None = the un-augmented crop.
        input_size: network input side (default: the store's); another size rescales.
        seed: base seed for integer indices.
        n_params: P of the ``params`` vector (NaN; ``make_collate`` resizes it anyway).
        sources: only rows of these source names (default all).
        flip_permutations: mirror maps of point-set extras whose definition is not one of
            :data:`mlanet.data.sources.DEFINITIONS` (e.g. ``{"mp468": perm}``); without one a
            flip marks such an extra absent.
        include_failed: also rows whose image could not be decoded (black).
        use_cv2: resample with OpenCV when it is installed.
    """

    #: ``dataset[(index, aug_seed)]`` is accepted (a mixture can pass its sampler's augmentation seed).
    takes_aug_seed = True

    def __init__(self, store: Store | str | os.PathLike[str], augment: AugmentCfg | None = AugmentCfg(), *,
                 input_size: int | None = None, seed: int = 0, n_params: int = 0,
                 sources: Sequence[str] | None = None, flip_permutations: Mapping[str, Sequence[int]] | None = None,
                 include_failed: bool = False, use_cv2: bool = True) -> None:
        self.store = store if isinstance(store, Store) else Store(store)
        st = self.store
        self.input_size = int(input_size or st.input_size)
        self.augment = Augment(augment) if augment is not None else None
        self.seed, self.epoch, self.n_params, self.use_cv2 = int(seed), 0, int(n_params), use_cv2
        #: optional (len(self),) sampling weights for MixtureBatchSampler (None = uniform)
        self.item_weights: np.ndarray | None = None
        mask = np.ones(len(st), bool) if include_failed else st.labels["ok"].copy()
        if sources is not None:
            names = [s["name"] for s in st.sources]
            unknown = sorted(set(sources) - set(names))
            if unknown:
                raise ValueError(f"store {st.path} has no source(s) {unknown} (it has {names})")
            wanted = [i for i, n in enumerate(names) if n in set(sources)]
            mask &= np.isin(st.labels["source"], wanted)
        self.rows = np.flatnonzero(mask)
        self.T = store_to_input(st.size, st.input_size, self.input_size)
        self.perms: dict[str, np.ndarray] = {
            d: check_flip_permutation(st.manifest["definitions"][d]["flip_permutation"]) for d in st.definitions
        }
        self.extra_perms: dict[str, np.ndarray | None] = {}
        for name, spec in st.extras.items():
            if not spec.get("point_set"):
                continue
            perm = (flip_permutations or {}).get(name)
            d = spec.get("definition")
            if perm is None and d in DEFINITIONS:
                perm = DEFINITIONS[d].flip_permutation
            if perm is None and d == "aflw2000_68":  # AFLW2000-3D's 68 points are in iBUG-68 order
                perm = IBUG68_FLIP_PERMUTATION
            self.extra_perms[name] = None if perm is None else check_flip_permutation(perm, spec["shape"][0])

    def __len__(self) -> int:
        return len(self.rows)

    def abs_yaw_deg(self) -> np.ndarray:
        """(len(self),) absolute head yaw of each sample, degrees: the source's own yaw where it has
        one (AFLW), else the teacher's pose label; NaN where neither is known."""
        lab = self.store.labels
        yaw = np.asarray(lab["yaw_deg"], dtype=np.float64)[self.rows]
        if "x_pose" in lab:  # teacher (pitch, yaw, roll), radians
            teacher = np.degrees(np.asarray(lab["x_pose"], dtype=np.float64)[self.rows, 1])
            has = np.asarray(lab["has_x_pose"], bool)[self.rows]
            yaw = np.where(np.isfinite(yaw), yaw, np.where(has, teacher, np.nan))
        return np.abs(yaw)

    def fitted_expression(self, expression_index: Sequence[int], layout: ParamLayout) -> np.ndarray:
        """(len(self),) mean of the chosen expression weights of each sample's pseudo-3DMM fit.

        Args:
            expression_index: (K,) indices into the face model's expression group (e.g. the two eyeBlinks).
            layout: the face model's parameter layout (``MorphableModel.layout``), which the stored
                ``fit_params`` follow.
        Returns:
            float64 values; NaN where the sample has no fit or its fit is not ``fit_ok``, and everywhere
            when the store holds no fits.
        """
        lab = self.store.labels
        out = np.full(len(self.rows), np.nan)
        if "x_fit_params" not in lab:
            return out
        fits = np.asarray(lab["x_fit_params"], dtype=np.float64)[self.rows]
        good = np.asarray(lab["has_x_fit_params"], bool)[self.rows]
        if "x_fit_ok" in lab:
            good &= np.asarray(lab["x_fit_ok"], dtype=np.float64)[self.rows].reshape(len(self.rows), -1)[:, 0] > 0.5
        if fits.shape[1] != layout.total:
            raise ValueError(f"store {self.store.path}: fit_params have {fits.shape[1]} values, "
                             f"the face model's layout {layout.total}")
        exp = FaceParams.from_flat(torch.from_numpy(fits), layout).expression.numpy()[:, list(expression_index)]
        out[good] = exp[good].mean(axis=1)
        return out

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation of integer indices (call once per epoch, as with DistributedSampler)."""
        self.epoch = int(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, aug_seed = int(key[0]), int(key[1])
        else:
            index = int(key)
            aug_seed = (self.seed * 1_000_003 + self.epoch * 7_919 * 1_000_033 + index) % (2**63)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} outside a store dataset of {len(self)} samples")
        gen = torch.Generator().manual_seed(aug_seed) if self.augment is not None else None
        return self.sample(index % len(self), gen)

    def draw(self, generator: torch.Generator | None) -> AugmentDraw:
        """The augmentation draw for one sample (identity without augmentation or generator)."""
        if self.augment is None or generator is None:
            return _identity_draw(self.input_size)
        return self.augment.draw(self.input_size, generator)

    def sample(self, index: int, generator: torch.Generator | None = None, draw: AugmentDraw | None = None) -> dict[str, Any]:
        """Sample ``index`` with a random draw from ``generator`` (or the given ``draw``)."""
        st, s = self.store, self.input_size
        row = int(self.rows[index])
        d = draw if draw is not None else self.draw(generator)
        m = d.matrix @ self.T
        img = warp_uint8(st.images[row], m, s, use_cv2=self.use_cv2)
        image = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        if self.augment is not None:
            image = self.augment.apply({"image": image}, d.without_geometry())["image"]
        lab = st.labels
        out: dict[str, Any] = {"image": image}
        sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in st.definitions:
            p, v = _move(lab[f"points_{name}"][row], m), lab[f"visible_{name}"][row].copy()
            if d.flip:
                p, v = p[self.perms[name]], v[self.perms[name]]
            sets[name] = (p, v)
            out[f"points_{name}"], out[f"visible_{name}"] = torch.from_numpy(p), torch.from_numpy(v)
        if "ibug68" in sets:
            lm, valid = sets["ibug68"]
        else:
            lm, valid = np.full((68, 2), np.nan, np.float32), np.zeros(68, bool)
        out["landmarks"], out["landmarks_valid"] = torch.from_numpy(lm.copy()), torch.from_numpy(valid.copy())
        out["params"] = torch.full((self.n_params,), float("nan"))
        out["has_params"] = torch.tensor(False)
        out["mp468"] = torch.full((MP468_N_POINTS, 2), float("nan"))
        out["has_mp468"] = torch.tensor(False)
        for name, spec in st.extras.items():
            x = lab[f"x_{name}"][row]
            has = bool(lab[f"has_x_{name}"][row])
            if spec.get("point_set"):
                x = _move(x, m)
                if d.flip:
                    perm = self.extra_perms.get(name)
                    if perm is None:
                        x, has = np.full_like(x, np.nan), False
                    else:
                        x = x[perm]
                if name == MP468_EXTRA and x.shape == (MP468_N_POINTS, 2):
                    out["mp468"], out["has_mp468"] = torch.from_numpy(x.copy()), torch.tensor(has)
            out[f"x_{name}"] = torch.from_numpy(np.array(x))
            out[f"has_x_{name}"] = torch.tensor(has)
        x0, y0, side = lab["crop_box"][row].tolist()
        net_side = side * st.input_size / st.size
        c = (x0 + side / 2, y0 + side / 2)
        out["box"] = torch.tensor([c[0] - net_side / 2, c[1] - net_side / 2, net_side], dtype=torch.float64)
        out["index"] = torch.tensor(index, dtype=torch.long)
        yaw = float(lab["yaw_deg"][row])
        out["yaw_deg"] = torch.tensor(-yaw if (d.flip and math.isfinite(yaw)) else yaw, dtype=torch.float32)
        out["store_row"] = torch.tensor(row, dtype=torch.long)
        out["store_source"] = torch.tensor(int(lab["source"][row]), dtype=torch.long)
        # the loop's optional keys (mlanet.train.sampling.OPTIONAL_KEYS): teacher points and the fit
        if "x_teacher68" in out:
            t = out["x_teacher68"].float()
            out["points_teacher68"] = t
            out["visible_teacher68"] = torch.isfinite(t).all(-1) & out["has_x_teacher68"]
        if "x_fit_params" in out:
            ok = bool(out["has_x_fit_params"]) and bool(out.get("x_fit_ok", torch.tensor(0.0)).float().reshape(-1)[0] > 0.5)
            out["fit_params"], out["fit_ok"] = out["x_fit_params"].float(), torch.tensor(ok)
        out["flipped"] = torch.tensor(bool(d.flip))
        out["warp"] = torch.from_numpy(m.astype(np.float32))
        return out


__all__ = ["MP468_EXTRA", "StoreDataset", "store_to_input", "warp_uint8"]
