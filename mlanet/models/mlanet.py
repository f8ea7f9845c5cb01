"""MLANet: multi-level attention network regressing the flat 3DMM parameter vector.

Pipeline of :class:`MLANet` for images (B, 3, S, S), RGB in [0, 1]:

1. normalise with the :class:`~mlanet.preprocess.PreprocessCfg` mean/std (buffers; the first
   operation, so every backend feeds the same [0, 1] tensor);
2. a backbone (:mod:`mlanet.models.backbones`) with coordinate attention inside every block
   (of the stages in ``ca_stages``) returns four stage maps at strides 4, 8, 16, 32;
3. :class:`BottomUpFusion`: stage 1 is projected by a strided 1x1 convolution + BN to the
   resolution and width of stage 2 and fused with it by attentional feature fusion (AFF); the
   result is projected to stage 3 and fused, then to stage 4 (``fusion=False``: stage 4 alone);
4. global average pooling;
5. one head per parameter group of the :class:`~mlanet.params.ParamLayout` (identity,
   expression, albedo, rotation, translation, lighting), each ending in a Linear whose weight
   and bias start at zero;
6. output ``prior + concat(head outputs)`` (B, P), with ``prior`` the neutral parameters
   (mean face at ``preprocess.prior_depth_m`` in front of the crop camera, unit ambient
   light), so an untrained network predicts exactly the prior. With
   ``expression_activation="sigmoid"`` the expression group is ``sigmoid(head + EXPRESSION_LOGIT_INIT)``
   instead: blendshape weights in (0, 1) by construction (its prior entries are that value at init).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlanet.params import GROUPS, FaceParams, ParamLayout
from mlanet.preprocess import PreprocessCfg
from mlanet.models.attention import AttentionalFeatureFusion, CoordinateAttention
from mlanet.models.backbones import ALL_STAGES, BACKBONES, DEFAULT_LAST_CHANNELS, build_backbone, check_ca_blocks, check_ca_stages


EXPRESSION_ACTIVATIONS = ("linear", "sigmoid")
#: logit the sigmoid expression head starts at (its last Linear starts at zero): sigmoid(-3) = 0.047
EXPRESSION_LOGIT_INIT = -3.0


@dataclass(frozen=True)
class MLANetConfig:
    """Architecture of an MLANet (stored in every checkpoint).

    Attributes:
        backbone: ``"resnet50"``, ``"mobilenetv2"`` or ``"efficientnet_lite0"`` (see
            :data:`~mlanet.models.backbones.BACKBONES`).
        block_attention: coordinate attention inside every backbone block (of the ``ca_stages``).
        fusion: bottom-up attentional feature fusion across the four stages (else stage 4 only).
        ca_reduction, ca_min_width: coordinate-attention bottleneck ratio and minimum width.
        fusion_reduction: MS-CAM bottleneck ratio r of each AFF.
        fusion_channels: 0 fuses at each stage's own width (the reference); > 0 first maps every
            stage to this width with a 1x1 convolution + BN and fuses there (the pooled feature
            then has this width).
        head_hidden: hidden width of each head's MLP; 0 makes every head one Linear.
        dropout: dropout probability on the pooled feature before each head's last layer(s).
        width_mult: channel multiplier of the mobile backbones (must be 1.0 for resnet50).
        ca_stages: backbone stages (1..4, strides 4..32) whose blocks carry coordinate attention
            when ``block_attention`` is on; default all four.
        ca_blocks: ``"all"`` blocks of the ``ca_stages`` (default, the paper) or only the
            ``"last"`` block of each of them.
        last_channels: width of the final 1x1 convolution of a mobile backbone's stage 4
            (1280, MobileNetV2's and EfficientNet-Lite's); 0 leaves it out. resnet50 needs 1280.
        expression_activation: ``"linear"`` (prior + head, unbounded: PCA expression bases such as
            the BFM's) or ``"sigmoid"`` (``sigmoid(head + EXPRESSION_LOGIT_INIT)``: blendshape weights
            in (0, 1) by construction, ICT-FaceKit/ARKit; starts at ~0.05 for every shape).
    """

    backbone: str = "resnet50"
    block_attention: bool = True
    fusion: bool = True
    ca_reduction: int = 32
    ca_min_width: int = 8
    fusion_reduction: int = 4
    fusion_channels: int = 0
    head_hidden: int = 0
    dropout: float = 0.0
    width_mult: float = 1.0
    ca_stages: tuple[int, ...] = ALL_STAGES
    ca_blocks: str = "all"
    last_channels: int = DEFAULT_LAST_CHANNELS
    expression_activation: str = "linear"

    def __post_init__(self) -> None:
        if self.expression_activation not in EXPRESSION_ACTIVATIONS:
            raise ValueError(f"MLANetConfig.expression_activation must be one of {EXPRESSION_ACTIVATIONS}, "
                             f"got {self.expression_activation!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"MLANetConfig.backbone {self.backbone!r} is unknown; known: {', '.join(sorted(BACKBONES))}")
        for name in ("block_attention", "fusion"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"MLANetConfig.{name} must be true or false, got {getattr(self, name)!r}")
        try:
            object.__setattr__(self, "ca_stages", check_ca_stages(self.ca_stages))
            check_ca_blocks(self.ca_blocks)
        except ValueError as exc:
            raise ValueError(f"MLANetConfig.{exc}") from None
        for name, minimum in (("ca_reduction", 1), ("ca_min_width", 1), ("fusion_reduction", 1),
                              ("fusion_channels", 0), ("head_hidden", 0), ("last_channels", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"MLANetConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MLANetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.width_mult, (int, float)) or not self.width_mult > 0:
            raise ValueError(f"MLANetConfig.width_mult must be positive, got {self.width_mult!r}")
        if self.backbone == "resnet50" and self.width_mult != 1.0:
            raise ValueError(
                f"MLANetConfig.width_mult applies to the mobile backbones only; resnet50 needs 1.0, got {self.width_mult}"
            )
        if self.backbone == "resnet50" and self.last_channels != DEFAULT_LAST_CHANNELS:
            raise ValueError(
                f"MLANetConfig.last_channels applies to the mobile backbones only; resnet50 needs "
                f"{DEFAULT_LAST_CHANNELS}, got {self.last_channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (what checkpoints store; ``ca_stages`` as a list)."""
        d = dataclasses.asdict(self)
        d["ca_stages"] = list(self.ca_stages)
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]


def _conv1x1_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BottomUpFusion(nn.Module):
    """Bottom-up attentional fusion of four stage maps into one stride-32 map.

    ``g1 = f1``; ``g_{i+1} = AFF(f_{i+1}, down_i(g_i))`` where ``down_i`` is a stride-2 1x1
    convolution + BN to the width of stage i + 1. With ``fusion_channels > 0`` every ``f_i``
    is first mapped to that width by ``lateral_i`` (1x1 convolution + BN).

    Shapes: ``forward([f1 (B, C1, H1, W1), ..., f4 (B, C4, H4, W4)]) -> (B, out_channels, H4, W4)``.
    """

    def __init__(self, stage_channels: tuple[int, ...], fusion_channels: int = 0, reduction: int = 4) -> None:
        super().__init__()
        if len(stage_channels) != 4:
            raise ValueError(f"BottomUpFusion needs four stages, got channels {stage_channels}")
        if fusion_channels > 0:
            self.lateral: nn.ModuleList | None = nn.ModuleList(_conv1x1_bn(c, fusion_channels) for c in stage_channels)
            widths = [fusion_channels] * 4
        else:
            self.lateral = None
            widths = list(stage_channels)
        self.down = nn.ModuleList(_conv1x1_bn(widths[i], widths[i + 1], stride=2) for i in range(3))
        self.aff = nn.ModuleList(AttentionalFeatureFusion(widths[i + 1], reduction=reduction) for i in range(3))
        self.out_channels = widths[-1]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if len(feats) != 4:
            raise ValueError(f"BottomUpFusion expects four stage maps, got {len(feats)}")
        if self.lateral is not None:
            feats = [lat(f) for lat, f in zip(self.lateral, feats)]
        g = feats[0]
        for i in range(3):
            g = self.aff[i](feats[i + 1], self.down[i](g))
        return g


def _make_head(in_features: int, out_features: int, hidden: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    if hidden > 0:
        layers += [nn.Linear(in_features, hidden), nn.ReLU(inplace=True)]
        in_features = hidden
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    last = nn.Linear(in_features, out_features)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)


class MLANet(nn.Module):
    """Backbone with block attention, bottom-up cross-stage fusion, one head per parameter group.

    Args:
        config: the architecture.
        layout: sizes of the parameter groups (from the face model).
        preprocess: input size and normalisation (default ``PreprocessCfg()``).
        name: registry name (``describe()`` and checkpoints record it).

    Shapes: ``forward(images (B, 3, S, S) RGB in [0, 1]) -> flat params (B, P)``, with
    ``S = preprocess.input_size`` and ``P = layout.total``.
    """

    def __init__(
        self,
        config: MLANetConfig,
        layout: ParamLayout,
        preprocess: PreprocessCfg | None = None,
        *,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, MLANetConfig):
            raise ValueError(f"config must be an MLANetConfig, got {type(config).__name__}")
        if not isinstance(layout, ParamLayout):
            raise ValueError(f"layout must be a ParamLayout, got {type(layout).__name__}")
        preprocess = PreprocessCfg() if preprocess is None else preprocess
        if not isinstance(preprocess, PreprocessCfg):
            raise ValueError(f"preprocess must be a PreprocessCfg, got {type(preprocess).__name__}")
        self._config = config
        self._layout = layout
        self._preprocess = preprocess
        self._name = name or f"mlanet_custom_{config.backbone}"

        self.backbone = build_backbone(
            config.backbone,
            block_attention=config.block_attention,
            ca_reduction=config.ca_reduction,
            ca_min_width=config.ca_min_width,
            width_mult=config.width_mult,
            ca_stages=config.ca_stages,
            ca_blocks=config.ca_blocks,
            last_channels=config.last_channels,
        )
        stage_channels = tuple(self.backbone.stage_channels)
        if config.fusion:
            self.fusion: BottomUpFusion | None = BottomUpFusion(stage_channels, config.fusion_channels, config.fusion_reduction)
            self.feature_channels = self.fusion.out_channels
        else:
            self.fusion = None
            self.feature_channels = stage_channels[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.heads = nn.ModuleDict(
            {
                group: _make_head(self.feature_channels, size, config.head_hidden, float(config.dropout))
                for group, size in layout.sizes.items()
                if size > 0
            }
        )
        # Derived from preprocess/layout (which every artifact stores), so not part of the state dict.
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        prior = FaceParams.neutral(layout, depth_m=preprocess.prior_depth_m).to_flat()[0].to(torch.float32)
        if config.expression_activation == "sigmoid":  # what the zero-initialised sigmoid head outputs
            sl = layout.slices()["expression"]
            prior[sl] = torch.sigmoid(torch.full_like(prior[sl], EXPRESSION_LOGIT_INIT))
        self.register_buffer("prior", prior, persistent=False)

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> MLANetConfig:
        return self._config

    @property
    def layout(self) -> ParamLayout:
        return self._layout

    @property
    def preprocess(self) -> PreprocessCfg:
        return self._preprocess

    @property
    def name(self) -> str:
        return self._name

    @property
    def input_size(self) -> int:
        """S of the (B, 3, S, S) input."""
        return self._preprocess.input_size

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary: name, config, layout, preprocessing, sizes, module counts."""
        return {
            "name": self.name,
            "config": self.config.to_dict(),
            "layout": self.layout.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "input_shape": [3, self.input_size, self.input_size],
            "output_size": self.layout.total,
            "backbone": {
                "name": self.config.backbone,
                "stage_channels": list(self.backbone.stage_channels),
                "stage_strides": list(self.backbone.stage_strides),
            },
            "feature_channels": self.feature_channels,
            "parameters": sum(p.numel() for p in self.parameters()),
            "coordinate_attention_modules": sum(isinstance(m, CoordinateAttention) for m in self.modules()),
            "fusion_modules": sum(isinstance(m, AttentionalFeatureFusion) for m in self.modules()),
        }

    # ------------------------------------------------------------------ forward
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled feature (B, feature_channels) of images (B, 3, S, S) in [0, 1]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"MLANet expects images of shape (B, 3, S, S), got {tuple(images.shape)}")
        s = self.input_size
        if images.shape[2] != s or images.shape[3] != s:
            raise ValueError(
                f"MLANet {self.name} was built for {s}x{s} crops (preprocess.input_size), got "
                f"{images.shape[2]}x{images.shape[3]}; crop with mlanet.preprocess.crop_image(..., {s})"
            )
        x = (images - self.mean) / self.std
        feats = self.backbone(x)
        fused = self.fusion(feats) if self.fusion is not None else feats[-1]
        return torch.flatten(self.pool(fused), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) RGB in [0, 1] -> flat parameters (B, P) in layout order."""
        pooled = self.features(images)
        # Heads in GROUPS order (the layout's flat order); empty groups have no head.
        if self.config.expression_activation == "linear":
            out = torch.cat([self.heads[g](pooled) for g in GROUPS if g in self.heads], dim=1)
            return self.prior + out
        parts, start = [], 0
        for g in GROUPS:
            if g not in self.heads:
                continue
            y = self.heads[g](pooled)
            stop = start + y.shape[1]
            if g == "expression":
                parts.append(torch.sigmoid(y + EXPRESSION_LOGIT_INIT))  # (0, 1) blendshape weights
            else:
                parts.append(self.prior[start:stop] + y)
            start = stop
        return torch.cat(parts, dim=1)

    def predict(self, images: torch.Tensor) -> FaceParams:
        """images (B, 3, S, S) -> structured :class:`FaceParams` (views of ``forward``'s output)."""
        return FaceParams.from_flat(self(images), self.layout)

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Input normalisation (one multiply-add per element) and the prior sum."""
        return int(inputs[0].numel()) + int(output.numel())
