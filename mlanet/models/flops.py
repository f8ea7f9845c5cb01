"""Parameter and FLOP counts measured by forward hooks (no third-party counter).

:func:`count_flops` runs one forward pass (eval mode, no grad) with hooks on every module and
counts multiply-accumulates (MACs); FLOPs are reported as ``2 * MACs``. What is counted:

=========================  ==========================================================
module                     MACs
=========================  ==========================================================
``nn.Conv2d``              ``out.numel() * (C_in / groups) * k_h * k_w`` (bias not counted)
``nn.Linear``              ``out.numel() * in_features`` (bias not counted)
``nn.BatchNorm1d/2d``      ``out.numel()`` (one multiply-add per element, as at inference)
``nn.MaxPool2d``,          ``out.numel() * k_h * k_w`` (one op per window element)
``nn.AvgPool2d``
``nn.AdaptiveAvgPool2d``   ``in.numel()`` (one add per input element)
modules with               what the module's own ``forward`` does element-wise outside its
``elementwise_macs``       sub-modules: residual sums, coordinate attention's directional
                           means and broadcast products, AFF's sums and products, MLANet's
                           input normalisation (one MAC per element-wise op)
=========================  ==========================================================

Not counted: activation functions (ReLU, ReLU6, h-swish, sigmoid), dropout, reshapes and
concatenations. Conv/Linear dominate: a plain torchvision-style ResNet-50 at 224x224 gives
4.09 GMACs for its convolutions and fc, the usual figure.

The convention, against ``torch.utils.flop_counter.FlopCounterMode``: that counter reports FLOPs
(2 per multiply-accumulate) of matmuls and convolutions only, so its total equals
``2 * (by_type["conv"] + by_type["linear"])`` here, exactly (tested). It is not used because the
records (``mlanet models list/info``, the model card, the ablation tables) report MACs that also
count batchnorm, pooling and the element-wise terms (0.7 % of ``mlanet_r50``'s MACs, 2.2 % of
``mlanet_mobile``'s) and split them per top-level part; switching would change every published
figure by that much.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters once); ``trainable_only`` skips frozen ones."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _conv_macs(m: nn.Conv2d, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return int(output.numel()) * (m.in_channels // m.groups) * kh * kw


def _linear_macs(m: nn.Linear, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    return int(output.numel()) * m.in_features


def _elementwise_out(m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    return int(output.numel())


def _window_pool(m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    k = m.kernel_size  # type: ignore[attr-defined]
    kh, kw = (k, k) if isinstance(k, int) else k
    return int(output.numel()) * kh * kw


def _adaptive_pool(m: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    return int(inputs[0].numel())


#: Module type -> (category, MAC rule).
_RULES: dict[type, tuple[str, Callable[..., int]]] = {
    nn.Conv2d: ("conv", _conv_macs),
    nn.Linear: ("linear", _linear_macs),
    nn.BatchNorm1d: ("batchnorm", _elementwise_out),
    nn.BatchNorm2d: ("batchnorm", _elementwise_out),
    nn.MaxPool2d: ("pooling", _window_pool),
    nn.AvgPool2d: ("pooling", _window_pool),
    nn.AdaptiveAvgPool2d: ("pooling", _adaptive_pool),
}


def _input_tensor(model: nn.Module, input_size: int | tuple[int, ...] | None) -> torch.Tensor:
    if input_size is None:
        size = getattr(model, "input_size", None)
        if not isinstance(size, int):
            raise ValueError("count_flops needs input_size for a module without an int .input_size")
        input_size = size
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        if input_size < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        shape: tuple[int, ...] = (1, 3, input_size, input_size)
    elif isinstance(input_size, (tuple, list)) and input_size and all(isinstance(d, int) and d > 0 for d in input_size):
        shape = tuple(input_size)
    else:
        raise ValueError(f"input_size must be an int S (input (1, 3, S, S)) or a full input shape, got {input_size!r}")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    # Values in [0, 1] like real crops (data-independent counts, but keeps every branch finite).
    return torch.rand(shape, device=device, dtype=dtype)


def count_flops(model: nn.Module, input_size: int | tuple[int, ...] | None = None) -> dict[str, Any]:
    """MACs and FLOPs of one forward pass, measured with forward hooks.

    Args:
        model: any module; MLANet-style models take ``input_size=None`` (their own S).
        input_size: int S for a (1, 3, S, S) image input, or a full input shape (e.g. ``(1, 10)``
            for a Linear). Counts are for that whole input (use batch 1 for per-image numbers).

    Returns:
        ``{"input_shape", "macs", "gmacs", "flops" (= 2 * macs), "gflops", "parameters",
        "by_type": {category: macs}, "by_part": {top-level child name: macs}}``. Categories:
        conv, linear, batchnorm, pooling, elementwise (see the module docstring).
    """
    x = _input_tensor(model, input_size)
    by_type: dict[str, int] = {}
    by_part: dict[str, int] = {}
    handles = []

    def add(category: str, part: str, macs: int) -> None:
        if macs:
            by_type[category] = by_type.get(category, 0) + macs
            by_part[part] = by_part.get(part, 0) + macs

    for qualified, module in model.named_modules():
        part = qualified.split(".", 1)[0] if qualified else "model"
        rule = next((r for t, r in _RULES.items() if type(module) is t), None)
        if rule is None:
            rule = next((r for t, r in _RULES.items() if isinstance(module, t)), None)
        extra = getattr(module, "elementwise_macs", None)
        if rule is None and not callable(extra):
            continue

        def hook(m: nn.Module, inputs: tuple[Any, ...], output: Any, _rule=rule, _extra=extra, _part=part) -> None:
            if _rule is not None:
                add(_rule[0], _part, _rule[1](m, inputs, output))
            if callable(_extra):
                add("elementwise", _part, int(_extra(inputs, output)))

        handles.append(module.register_forward_hook(hook))

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    macs = sum(by_type.values())
    return {
        "input_shape": list(x.shape),
        "macs": macs,
        "gmacs": macs / 1e9,
        "flops": 2 * macs,
        "gflops": 2 * macs / 1e9,
        "parameters": count_parameters(model),
        "by_type": dict(sorted(by_type.items())),
        "by_part": by_part,
    }


def format_count(n: float) -> str:
    """Human-readable count: 25.6M, 4.87G."""
    if n == 0:
        return "0"
    units = ["", "K", "M", "G", "T"]
    k = min(int(math.log10(abs(n)) // 3), len(units) - 1)
    return f"{n / 10 ** (3 * k):.3g}{units[k]}" if k > 0 else str(int(n))
