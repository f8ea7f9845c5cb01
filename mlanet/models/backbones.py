"""Backbones of MLANet; each returns the feature maps of its four stages (strides 4, 8, 16, 32).

* :class:`ResNet50Backbone` — ResNet-50 (v1.5: the stride sits on the 3x3 convolution) whose
  module names are exactly torchvision's for every part torchvision has (``conv1``, ``bn1``,
  ``layer1.0.conv1`` ... ``layer4.2.bn3``, ``layerN.0.downsample.0/1``), so a torchvision
  state dict loads onto it (:func:`mlanet.models.model_io.load_torchvision_resnet50`). Each
  bottleneck carries coordinate attention as the extra sub-module ``.ca``, applied after the
  3x3 convolution + BN + ReLU; with ``block_attention=False`` it is an ``nn.Identity`` and
  the network is a plain ResNet-50.
* :class:`MobileNetV2Backbone` — MobileNetV2 inverted residual blocks (the architecture
  coordinate attention was designed for) with CA after the depthwise convolution of every
  block, grouped into four stages; a final 1x1 convolution widens stage 4 (MobileNetV2's last
  layer, 1280 channels at ``width_mult <= 1``).
* :class:`~mlanet.models.efficientnet_lite.EfficientNetLiteBackbone` (``"efficientnet_lite0"``,
  its own module) — EfficientNet-Lite0 built from the same :class:`InvertedResidual` blocks (3x3
  and 5x5 depthwise, ReLU6, no squeeze-excitation), CPU-fast, with ImageNet weights to start from.

All expose ``stage_channels`` (4 ints) and ``stage_strides`` ``(4, 8, 16, 32)``; ``forward(x)``
takes (B, 3, S, S) normalised images and returns a list of four (B, C_i, S / s_i, S / s_i) maps
(sizes rounded up for odd inputs). ``ca_stages`` (a subset of 1..4) says which stages' blocks
carry coordinate attention when ``block_attention`` is on (default: all four), ``ca_blocks``
which blocks of those stages: ``"all"`` (default, the paper) or ``"last"`` (the last block of
each stage only).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from mlanet.models.attention import CoordinateAttention

STAGE_STRIDES: tuple[int, int, int, int] = (4, 8, 16, 32)
#: Default of ``ca_stages``: coordinate attention in the blocks of all four stages.
ALL_STAGES: tuple[int, int, int, int] = (1, 2, 3, 4)


#: Values of ``ca_blocks``.
CA_BLOCKS = ("all", "last")


def check_ca_blocks(ca_blocks: Any) -> str:
    """``ca_blocks`` checked: ``"all"`` or ``"last"`` (ValueError otherwise)."""
    if ca_blocks not in CA_BLOCKS:
        raise ValueError(f"ca_blocks must be one of {', '.join(map(repr, CA_BLOCKS))}, got {ca_blocks!r}")
    return str(ca_blocks)


def _with_attention(block_attention: bool, stage: int, ca_stages: tuple[int, ...], ca_blocks: str, index: int,
                    count: int) -> bool:
    """Whether block ``index`` of ``count`` in ``stage`` carries coordinate attention."""
    return block_attention and stage in ca_stages and (ca_blocks == "all" or index == count - 1)


def check_ca_stages(ca_stages: Any) -> tuple[int, ...]:
    """``ca_stages`` as a sorted tuple of distinct stage numbers in 1..4 (ValueError otherwise)."""
    if isinstance(ca_stages, (str, bytes)) or not hasattr(ca_stages, "__iter__"):
        raise ValueError(f"ca_stages must be a list of stage numbers in 1..4, got {ca_stages!r}")
    stages = list(ca_stages)
    if any(isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= 4 for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"ca_stages must be distinct stage numbers in 1..4, got {ca_stages!r}")
    return tuple(sorted(stages))


def _attention(enabled: bool, channels: int, reduction: int, min_width: int) -> nn.Module:
    return CoordinateAttention(channels, reduction, min_width) if enabled else nn.Identity()


def _init_weights(module: nn.Module) -> None:
    """He-normal (fan-out) convolutions, unit/zero BN, as for training from scratch."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------- ResNet-50
class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1 -> 3x3 (stride) -> 1x1 x4) with coordinate attention after the 3x3.

    Shapes: ``forward(x (B, inplanes, H, W)) -> (B, 4 * planes, H / stride, W / stride)``.
    """

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        block_attention: bool = True,
        ca_reduction: int = 32,
        ca_min_width: int = 8,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.ca = _attention(block_attention, planes, ca_reduction, ca_min_width)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.ca(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The residual sum."""
        return int(output.numel())


class ResNet50Backbone(nn.Module):
    """ResNet-50 stages [3, 4, 6, 3] with torchvision's module names, CA in every bottleneck.

    Args:
        block_attention: put :class:`CoordinateAttention` in every bottleneck (else identity).
        ca_reduction, ca_min_width: CA bottleneck ratio and minimum width.
        ca_stages: stages (``layer1`` .. ``layer4`` = 1 .. 4) whose bottlenecks carry CA.
        ca_blocks: ``"all"`` bottlenecks of those stages or the ``"last"`` one of each.

    Shapes: ``forward(x (B, 3, S, S)) -> [(B, 256, S/4, S/4), (B, 512, S/8, S/8),
    (B, 1024, S/16, S/16), (B, 2048, S/32, S/32)]``.
    """

    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    stage_strides = STAGE_STRIDES

    def __init__(
        self,
        block_attention: bool = True,
        ca_reduction: int = 32,
        ca_min_width: int = 8,
        ca_stages: tuple[int, ...] = ALL_STAGES,
        ca_blocks: str = "all",
    ) -> None:
        super().__init__()
        self._block_attention = block_attention
        self._ca_stages = check_ca_stages(ca_stages)
        self._ca_blocks = check_ca_blocks(ca_blocks)
        self._block_kwargs = dict(ca_reduction=ca_reduction, ca_min_width=ca_min_width)
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, self.layers[0], stride=1, stage=1)
        self.layer2 = self._make_layer(128, self.layers[1], stride=2, stage=2)
        self.layer3 = self._make_layer(256, self.layers[2], stride=2, stage=3)
        self.layer4 = self._make_layer(512, self.layers[3], stride=2, stage=4)
        self.stage_channels: tuple[int, int, int, int] = (256, 512, 1024, 2048)
        _init_weights(self)
        # every residual block starts as the identity (zero gamma on its last BN, Goyal et al. 2017):
        # from scratch with batch 16, the default init diverged in spikes and its eval-mode output drifted
        # far from its train-mode output (synthetic val NME 24 -> 70 % after 125 steps)
        for m in self.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)

    def _make_layer(self, planes: int, blocks: int, stride: int, stage: int) -> nn.Sequential:
        def kwargs(j: int) -> dict[str, Any]:
            ca = _with_attention(self._block_attention, stage, self._ca_stages, self._ca_blocks, j, blocks)
            return dict(self._block_kwargs, block_attention=ca)

        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, **kwargs(0))]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, **kwargs(j)) for j in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, S, S) -> four stage maps (see class docstring)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(x)
        return feats


# ------------------------------------------------------------------------------------ MobileNetV2
def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor``, never below 90 % of ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BN + ReLU6. Shapes: (B, Cin, H, W) -> (B, Cout, H / stride, W / stride).

    ``bn_eps``: BatchNorm epsilon (PyTorch's 1e-5; 1e-3 for weights trained in TensorFlow, e.g. EfficientNet-Lite).
    """

    def __init__(
        self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, groups: int = 1, bn_eps: float = 1e-5
    ) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=bn_eps),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> kxk depthwise (stride) -> CA -> 1x1 linear projection.

    The residual connection is used when ``stride == 1`` and ``cin == cout``. ``kernel_size``
    (3 in MobileNetV2, 3 or 5 in EfficientNet-Lite) is the depthwise kernel; ``bn_eps`` the
    BatchNorm epsilon of every BN in the block.

    Shapes: ``forward(x (B, cin, H, W)) -> (B, cout, H / stride, W / stride)``.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        expand_ratio: int,
        block_attention: bool = True,
        ca_reduction: int = 32,
        ca_min_width: int = 8,
        kernel_size: int = 3,
        bn_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, kernel_size=1, bn_eps=bn_eps) if expand_ratio != 1 else nn.Identity()
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size=kernel_size, stride=stride, groups=hidden, bn_eps=bn_eps)
        self.ca = _attention(block_attention, hidden, ca_reduction, ca_min_width)
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=bn_eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.ca(self.depthwise(self.expand(x))))
        return x + out if self.use_residual else out

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The residual sum, when there is one."""
        return int(output.numel()) if self.use_residual else 0


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 with coordinate attention in every inverted residual, as four stages.

    Stage layout (expansion t, channels c, repeats n, first stride s), channels scaled by
    ``width_mult`` and rounded to multiples of 8:

    =====  =====================================================  ======
    stage  blocks                                                 stride
    =====  =====================================================  ======
    stem   3x3 conv 32, stride 2
    1      (1, 16, 1, 1), (6, 24, 2, 2)                           4
    2      (6, 32, 3, 2)                                          8
    3      (6, 64, 4, 2), (6, 96, 3, 1)                           16
    4      (6, 160, 3, 2), (6, 320, 1, 1), 1x1 conv to 1280       32
    =====  =====================================================  ======

    Args:
        width_mult: channel multiplier (> 0).
        block_attention: CA after every depthwise convolution (else identity).
        ca_reduction, ca_min_width: CA bottleneck ratio and minimum width.
        last_channels: width of the final 1x1 convolution (scaled up, never down, by ``width_mult``);
            0 leaves it out (stage 4 then ends with the 320 x ``width_mult`` projection).
        ca_stages: stages whose blocks carry CA (when ``block_attention``).
        ca_blocks: ``"all"`` blocks of those stages or the ``"last"`` one of each.

    Shapes: ``forward(x (B, 3, S, S))`` -> four maps with ``stage_channels`` channels at strides
    4, 8, 16, 32 (``(24, 32, 96, 1280)`` at ``width_mult = 1``).
    """

    settings: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
        ((1, 16, 1, 1), (6, 24, 2, 2)),
        ((6, 32, 3, 2),),
        ((6, 64, 4, 2), (6, 96, 3, 1)),
        ((6, 160, 3, 2), (6, 320, 1, 1)),
    )
    stage_strides = STAGE_STRIDES

    def __init__(
        self,
        width_mult: float = 1.0,
        block_attention: bool = True,
        ca_reduction: int = 32,
        ca_min_width: int = 8,
        last_channels: int = 1280,
        ca_stages: tuple[int, ...] = ALL_STAGES,
        ca_blocks: str = "all",
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        if isinstance(last_channels, bool) or not isinstance(last_channels, int) or last_channels < 0:
            raise ValueError(f"last_channels must be an integer >= 0, got {last_channels!r}")
        ca_stages = check_ca_stages(ca_stages)
        ca_blocks = check_ca_blocks(ca_blocks)
        cin = make_divisible(32 * width_mult)
        self.stem = ConvBNAct(3, cin, kernel_size=3, stride=2)
        stages: list[nn.Sequential] = []
        channels: list[int] = []
        for i, stage in enumerate(self.settings):
            blocks: list[nn.Module] = []
            count = sum(n for _, _, n, _ in stage)
            for t, c, n, s in stage:
                cout = make_divisible(c * width_mult)
                for j in range(n):
                    attention = _with_attention(block_attention, i + 1, ca_stages, ca_blocks, len(blocks), count)
                    blocks.append(
                        InvertedResidual(cin, cout, s if j == 0 else 1, t, attention, ca_reduction, ca_min_width)
                    )
                    cin = cout
            if i == len(self.settings) - 1 and last_channels > 0:
                last = make_divisible(last_channels * max(1.0, width_mult))
                blocks.append(ConvBNAct(cin, last, kernel_size=1))
                cin = last
            stages.append(nn.Sequential(*blocks))
            channels.append(cin)
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.stage_channels: tuple[int, int, int, int] = tuple(channels)  # type: ignore[assignment]
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, S, S) -> four stage maps (see class docstring)."""
        x = self.stem(x)
        feats = []
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
            feats.append(x)
        return feats


# ---------------------------------------------------------------------------------------- registry
#: Final 1x1 convolution width of the mobile backbones (MobileNetV2's and EfficientNet-Lite's 1280).
DEFAULT_LAST_CHANNELS = 1280


def _resnet50(*, block_attention: bool, ca_reduction: int, ca_min_width: int, width_mult: float,
              ca_stages: tuple[int, ...], ca_blocks: str, last_channels: int) -> nn.Module:
    return ResNet50Backbone(block_attention, ca_reduction, ca_min_width, ca_stages, ca_blocks)


def _mobilenetv2(*, block_attention: bool, ca_reduction: int, ca_min_width: int, width_mult: float,
                 ca_stages: tuple[int, ...], ca_blocks: str, last_channels: int) -> nn.Module:
    return MobileNetV2Backbone(width_mult, block_attention, ca_reduction, ca_min_width, last_channels, ca_stages,
                               ca_blocks)


def _efficientnet_lite0(*, block_attention: bool, ca_reduction: int, ca_min_width: int, width_mult: float,
                        ca_stages: tuple[int, ...], ca_blocks: str, last_channels: int) -> nn.Module:
    from mlanet.models.efficientnet_lite import EfficientNetLiteBackbone  # its own module (it builds on this one)

    return EfficientNetLiteBackbone(width_mult, block_attention, ca_reduction, ca_min_width, last_channels, ca_stages,
                                    ca_blocks)


#: Backbone name -> builder(*, block_attention, ca_reduction, ca_min_width, width_mult, ca_stages, ca_blocks,
#: last_channels).
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet50": _resnet50,
    "mobilenetv2": _mobilenetv2,
    "efficientnet_lite0": _efficientnet_lite0,
}


def build_backbone(
    name: str,
    *,
    block_attention: bool = True,
    ca_reduction: int = 32,
    ca_min_width: int = 8,
    width_mult: float = 1.0,
    ca_stages: tuple[int, ...] = ALL_STAGES,
    ca_blocks: str = "all",
    last_channels: int = DEFAULT_LAST_CHANNELS,
) -> nn.Module:
    """Build a backbone by name (see :data:`BACKBONES`); it has ``stage_channels`` and ``stage_strides``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    if name == "resnet50" and width_mult != 1.0:
        raise ValueError(f"width_mult applies to the mobile backbones only; resnet50 needs 1.0, got {width_mult}")
    if name == "resnet50" and last_channels != DEFAULT_LAST_CHANNELS:
        raise ValueError(
            f"last_channels applies to the mobile backbones only; resnet50 needs {DEFAULT_LAST_CHANNELS}, got {last_channels}"
        )
    return BACKBONES[name](block_attention=block_attention, ca_reduction=ca_reduction, ca_min_width=ca_min_width,
                           width_mult=width_mult, ca_stages=check_ca_stages(ca_stages),
                           ca_blocks=check_ca_blocks(ca_blocks), last_channels=last_channels)
