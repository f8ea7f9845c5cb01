"""Attention modules of MLANet: coordinate attention inside blocks, attentional fusion across stages.

* :class:`CoordinateAttention` (Hou, Zhou and Feng, "Coordinate Attention for Efficient Mobile
  Network Design", CVPR 2021): channel attention that keeps position along one axis. The
  feature map is averaged along W (giving a column per channel, (B, C, H, 1)) and along H
  (a row, (B, C, 1, W)); both are concatenated along the spatial axis and encoded by one shared
  1x1 convolution + BN + h-swish into ``mip = max(min_width, C // reduction)`` channels; the
  result is split back, and two 1x1 convolutions + sigmoid give ``a_h`` (B, C, H, 1) and
  ``a_w`` (B, C, 1, W). Output: ``x * a_h * a_w``. Exported to ONNX (eval mode), the same
  function is computed per direction (:meth:`CoordinateAttention.forward`), which runs much
  faster in onnxruntime.
* :class:`MSCAM` and :class:`AttentionalFeatureFusion` (Dai, Gieseke, Oehmcke, Wu and Barnard,
  "Attentional Feature Fusion", WACV 2021): the multi-scale channel attention module sums a
  local branch (pointwise-convolution bottleneck at every position) and a global branch
  (global average pooling + pointwise bottleneck), then a sigmoid gives per-position,
  per-channel weights ``w`` in (0, 1). AFF fuses two maps of the same shape as
  ``w * x + (1 - w) * y`` with ``w = MS-CAM(x + y)``.

Everything here is plain convolutions, BN, means, sigmoids and broadcast products, so it exports
to ONNX / TensorRT without custom operators.

FLOP accounting: each module's :meth:`elementwise_macs` reports the element-wise work its own
``forward`` does outside its sub-modules (means, broadcast products, sums), one MAC per
element-wise multiply or add; its convolutions and BNs are counted by
:func:`mlanet.models.flops.count_flops` through their own hooks. Sigmoid and activation
functions are not counted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_width(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class CoordinateAttention(nn.Module):
    """Coordinate attention (CA) over a (B, C, H, W) feature map.

    Args:
        channels: C, input and output channels.
        reduction: bottleneck ratio; the shared encoding has ``max(min_width, C // reduction)``
            channels (the paper uses 32 with a minimum of 8).
        min_width: smallest bottleneck width.

    Shapes: ``forward(x (B, C, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 32, min_width: int = 8) -> None:
        super().__init__()
        _check_width("channels", channels)
        _check_width("reduction", reduction)
        _check_width("min_width", min_width)
        self.channels = channels
        self.mip = max(min_width, channels // reduction)
        self.reduce = nn.Conv2d(channels, self.mip, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(self.mip)
        self.act = nn.Hardswish()
        self.attn_h = nn.Conv2d(self.mip, channels, kernel_size=1)
        self.attn_w = nn.Conv2d(self.mip, channels, kernel_size=1)

    def attention_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two attention factors: ``a_h`` (B, C, H, 1) and ``a_w`` (B, C, 1, W), in (0, 1)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"CoordinateAttention({self.channels}) expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        pooled_h = x.mean(dim=3, keepdim=True)  # (B, C, H, 1): average along W
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, C, W, 1): average along H
        y = self.act(self.bn(self.reduce(torch.cat([pooled_h, pooled_w], dim=2))))  # (B, mip, H + W, 1)
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.attn_h(y_h))  # (B, C, H, 1)
        a_w = torch.sigmoid(self.attn_w(y_w)).transpose(2, 3)  # (B, C, 1, W)
        return a_h, a_w

    def _attention_maps_per_direction(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attention_maps` in eval mode, each direction encoded on its own (no concat/split/transpose).

        Equal to :meth:`attention_maps` when BN uses its running statistics (then ``bn`` is a fixed
        per-channel affine map and ``reduce`` a per-position 1x1 convolution, so encoding the
        concatenation equals concatenating the encodings). Not used in training, where BN's
        batch statistics over the concatenation differ from those of each half.
        """
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"CoordinateAttention({self.channels}) expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        pooled_h = F.avg_pool2d(x, (1, w))  # (B, C, H, 1): average along W
        pooled_w = F.avg_pool2d(x, (h, 1))  # (B, C, 1, W): average along H
        a_h = torch.sigmoid(self.attn_h(self.act(self.bn(self.reduce(pooled_h)))))
        a_w = torch.sigmoid(self.attn_w(self.act(self.bn(self.reduce(pooled_w)))))
        return a_h, a_w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> x * a_h * a_w (B, C, H, W).

        PyTorch, training and eval: :meth:`attention_maps` (the paper's shared encoding of the
        concatenated directions). ONNX export in eval mode: the same function per direction
        (:meth:`_attention_maps_per_direction`): a graph without Concat/Split/Transpose whose
        pooling and convolutions stay in onnxruntime's blocked (NCHWc) layout, with the factors
        repeated to (B, C, H, W) (nearest Resize, exact) before the products, because
        onnxruntime's broadcast along the innermost axis runs one tiny loop per row. Measured on
        2 cores: coordinate attention in the 5 stage-4 blocks of EfficientNet-Lite0 at 96 px cost
        about 1.4 ms with the training graph and 0.6 ms with this one. Outputs agree to float rounding
        (the export's parity check covers it).
        """
        if not self.training and torch.onnx.is_in_onnx_export():
            a_h, a_w = self._attention_maps_per_direction(x)
            h, w = int(x.shape[2]), int(x.shape[3])
            # scale factors, not sizes: constant Resize scales (sizes would be computed from the dynamic batch axis)
            a_h = F.interpolate(a_h, scale_factor=(1.0, float(w)), mode="nearest")
            a_w = F.interpolate(a_w, scale_factor=(float(h), 1.0), mode="nearest")
            return x * a_h * a_w
        a_h, a_w = self.attention_maps(x)
        return x * a_h * a_w

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """Two directional means (one add per element each) and two broadcast products."""
        return 4 * int(inputs[0].numel())

    def extra_repr(self) -> str:
        return f"channels={self.channels}, mip={self.mip}"


class MSCAM(nn.Module):
    """Multi-scale channel attention: ``sigmoid(local(x) + global(x))``.

    Local branch: 1x1 conv C -> C/r, BN, ReLU, 1x1 conv C/r -> C, BN (per position).
    Global branch: global average pooling, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C (with
    biases). The global branch has no BN: on 1x1 maps BN would see one value per sample and
    channel, which breaks training with batch size 1 and is noisy for small batches.

    Args:
        channels: C.
        reduction: r; the bottleneck has ``max(min_width, C // r)`` channels.
        min_width: smallest bottleneck width.

    Shapes: ``forward(x (B, C, H, W)) -> weights (B, C, H, W)`` in (0, 1).
    """

    def __init__(self, channels: int, reduction: int = 4, min_width: int = 8) -> None:
        super().__init__()
        _check_width("channels", channels)
        _check_width("reduction", reduction)
        _check_width("min_width", min_width)
        self.channels = channels
        inter = max(min_width, channels // reduction)
        self.inter_channels = inter
        self.local_att = nn.Sequential(
            nn.Conv2d(channels, inter, 1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.global_att = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, inter, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(inter, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> attention weights (B, C, H, W)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"MSCAM({self.channels}) expects (B, {self.channels}, H, W), got {tuple(x.shape)}")
        return torch.sigmoid(self.local_att(x) + self.global_att(x))

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """The broadcast sum of the local and global logits."""
        return int(output.numel())

    def extra_repr(self) -> str:
        return f"channels={self.channels}, inter={self.inter_channels}"


class AttentionalFeatureFusion(nn.Module):
    """Fuse two same-shaped maps with learned soft selection: ``w * x + (1 - w) * y``.

    ``w = MS-CAM(x + y)`` (B, C, H, W). Computed as ``y + w * (x - y)``.

    Args:
        channels: C of both inputs.
        reduction: MS-CAM bottleneck ratio r (the paper uses 4).
        min_width: smallest MS-CAM bottleneck width.

    Shapes: ``forward(x (B, C, H, W), y (B, C, H, W)) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, reduction: int = 4, min_width: int = 8) -> None:
        super().__init__()
        self.channels = channels
        self.mscam = MSCAM(channels, reduction=reduction, min_width=min_width)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y (B, C, H, W) -> fused (B, C, H, W)."""
        if x.shape != y.shape:
            raise ValueError(
                f"AttentionalFeatureFusion needs two maps of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        w = self.mscam(x + y)
        return y + w * (x - y)

    def elementwise_macs(self, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
        """x + y, x - y, the product with w and the final sum."""
        return 4 * int(output.numel())
