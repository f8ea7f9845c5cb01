"""Networks: MLANet registry, attention modules, ablation switches, FLOP counter, weights I/O, CLI."""

from __future__ import annotations

import json
import re

import pytest
import torch
from torch import nn

from mlanet.cli import main as cli_main
from mlanet.errors import AssetError
from mlanet.models.attention import AttentionalFeatureFusion, CoordinateAttention
from mlanet.models.flops import count_flops, count_parameters
from mlanet.models.mlanet import MLANet, MLANetConfig
from mlanet.models.model_io import load_torchvision_resnet50, save_model
from mlanet.models.registry import MODELS, create_model, list_models
from mlanet.morphable.model import MorphableModel
from mlanet.morphable.synthetic import make_synthetic_face_model
from mlanet.params import UNIT_AMBIENT_SH_DC, FaceParams, ParamLayout
from mlanet.preprocess import PreprocessCfg

SMALL = PreprocessCfg(input_size=64)


@pytest.fixture(scope="module")
def face_data():
    return make_synthetic_face_model()


@pytest.fixture(scope="module")
def layout(face_data):
    return ParamLayout.for_face_model(face_data)


def _count(model: nn.Module, cls: type) -> int:
    return sum(isinstance(m, cls) for m in model.modules())


# ------------------------------------------------------------------------------- attention modules
def test_coordinate_attention_shapes_and_factors():
    torch.manual_seed(0)
    ca = CoordinateAttention(64, reduction=32, min_width=8).eval()
    assert ca.mip == 8  # 64 // 32 = 2, raised to the minimum width
    x = torch.randn(2, 64, 10, 7)
    a_h, a_w = ca.attention_maps(x)
    assert a_h.shape == (2, 64, 10, 1) and a_w.shape == (2, 64, 1, 7)
    assert torch.all((a_h > 0) & (a_h < 1)) and torch.all((a_w > 0) & (a_w < 1))
    assert torch.allclose(ca(x), x * a_h * a_w)
    with pytest.raises(ValueError, match="expects"):
        ca(torch.randn(2, 32, 10, 7))


def test_aff_is_a_convex_combination():
    torch.manual_seed(0)
    aff = AttentionalFeatureFusion(16, reduction=4).eval()
    x, y = torch.randn(1, 16, 5, 5), torch.randn(1, 16, 5, 5)
    w = aff.mscam(x + y)
    assert torch.allclose(aff(x, y), w * x + (1 - w) * y, atol=1e-6)
    assert torch.allclose(aff(x, x), x, atol=1e-6)  # fusing a map with itself changes nothing
    with pytest.raises(ValueError, match="same shape"):
        aff(x, torch.randn(1, 16, 4, 4))


# ----------------------------------------------------------------------------------- MLANet basics
@pytest.mark.parametrize("name", ["mlanet_r50", "mlanet_mobile"])
def test_output_shape_and_untrained_output_is_the_prior(name, layout):
    model = create_model(name, layout=layout, preprocess=SMALL).eval()
    assert isinstance(model, MLANet)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, layout.total)
    assert torch.equal(out, model.prior.expand(2, -1))  # zero-initialised heads: exactly the prior
    p = FaceParams.from_flat(out, layout)
    assert torch.equal(p.translation[0], torch.tensor([0.0, 0.0, SMALL.prior_depth_m]))
    assert torch.allclose(p.lighting[0, :, 0], torch.full((3,), UNIT_AMBIENT_SH_DC))
    assert torch.count_nonzero(p.lighting[0, :, 1:]) == 0
    for group in ("identity", "albedo", "rotation"):
        assert torch.count_nonzero(getattr(p, group)) == 0
    if model.config.expression_activation == "linear":
        assert torch.count_nonzero(p.expression) == 0
    else:  # sigmoid blendshape head (mlanet_mobile): every weight at the head's prior inside (0, 1)
        from mlanet.models.mlanet import EXPRESSION_LOGIT_INIT

        assert torch.allclose(p.expression, torch.sigmoid(torch.tensor(EXPRESSION_LOGIT_INIT)).expand_as(p.expression))
    assert model.predict(x).translation.shape == (2, 3)
    d = model.describe()
    assert d["name"] == name and d["output_size"] == layout.total and d["layout"] == layout.to_dict()
    assert model.layout == layout and model.preprocess == SMALL and model.config == MODELS[name][0]


def test_bad_inputs_raise(layout):
    model = create_model("mlanet_mobile", layout=layout, preprocess=SMALL)
    with pytest.raises(ValueError, match="64x64"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, S, S\)"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="backbone"):
        MLANetConfig(backbone="vgg")
    with pytest.raises(ValueError, match="width_mult"):
        MLANetConfig(backbone="resnet50", width_mult=0.5)
    with pytest.raises(ValueError, match="dropout"):
        MLANetConfig(dropout=1.5)


def test_gradients_reach_the_first_conv(layout):
    torch.manual_seed(0)
    model = create_model("mlanet_r50", layout=layout, preprocess=SMALL).train()
    x = torch.rand(2, 3, 64, 64)
    model(x).square().sum().backward()
    assert torch.count_nonzero(model.backbone.conv1.weight.grad) == 0  # zero heads block the backbone at first
    model.zero_grad()
    with torch.no_grad():
        nn.init.normal_(model.heads["rotation"][-1].weight, std=0.01)
    model(x).square().sum().backward()
    grad = model.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # residual blocks start as the identity (zero gamma on bn3): that gamma gets a gradient, so they open
    assert model.backbone.layer1[0].bn3.weight.grad.abs().sum() > 0
    assert model.fusion.aff[0].mscam.local_att[0].weight.grad.abs().sum() > 0
    with torch.no_grad():  # once open, the coordinate attention inside the block is trained too
        model.backbone.layer1[0].bn3.weight.fill_(1.0)
    model.zero_grad()
    model(x).square().sum().backward()
    assert model.backbone.layer1[0].ca.reduce.weight.grad.abs().sum() > 0


def test_head_options_and_fusion_channels(layout):
    model = create_model("mlanet_mobile", layout=layout, preprocess=SMALL, head_hidden=32, dropout=0.1, fusion_channels=48)
    assert model.feature_channels == 48
    assert isinstance(model.heads["identity"][0], nn.Linear) and model.heads["identity"][0].out_features == 32
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert torch.equal(out[0], model.prior)
    # An empty group (no albedo basis) gets no head and no columns.
    no_albedo = ParamLayout(identity=4, expression=3, albedo=0)
    m2 = create_model("mlanet_mobile", layout=no_albedo, preprocess=SMALL)
    assert "albedo" not in m2.heads and m2(torch.rand(1, 3, 64, 64)).shape == (1, no_albedo.total)


# ------------------------------------------------------------------------------------ ablation
@pytest.mark.parametrize("name", ["mlanet_r50", "mlanet_mobile"])
def test_ablation_switches(name, layout):
    full = create_model(name, layout=layout, preprocess=SMALL)
    no_ca = create_model(name, layout=layout, preprocess=SMALL, block_attention=False)
    no_fusion = create_model(name, layout=layout, preprocess=SMALL, fusion=False)
    assert _count(full, CoordinateAttention) > 0 and _count(full, AttentionalFeatureFusion) == 3
    assert _count(no_ca, CoordinateAttention) == 0 and _count(no_ca, AttentionalFeatureFusion) == 3
    assert _count(no_fusion, AttentionalFeatureFusion) == 0 and no_fusion.fusion is None
    assert _count(no_fusion, CoordinateAttention) == _count(full, CoordinateAttention)
    f_full, f_no_ca, f_no_fusion = (count_flops(m) for m in (full, no_ca, no_fusion))
    assert f_no_ca["parameters"] < f_full["parameters"] and f_no_ca["macs"] < f_full["macs"]
    assert f_no_fusion["parameters"] < f_full["parameters"] and f_no_fusion["macs"] < f_full["macs"]
    assert "fusion" not in f_no_fusion["by_part"]
    for m in (no_ca, no_fusion):
        assert m(torch.rand(1, 3, 64, 64)).shape == (1, layout.total)


def test_r50_has_ca_in_every_bottleneck(layout):
    model = create_model("mlanet_r50", layout=layout, preprocess=SMALL)
    assert _count(model.backbone, CoordinateAttention) == 3 + 4 + 6 + 3
    assert all(isinstance(model.backbone.get_submodule(f"layer{i}")[0].ca, CoordinateAttention) for i in range(1, 5))


# ---------------------------------------------------------------------------------------- FLOPs
def test_count_flops_single_layers():
    conv = nn.Conv2d(8, 16, kernel_size=3, stride=2, padding=1, groups=2)
    f = count_flops(conv, (1, 8, 10, 10))
    assert f["macs"] == 16 * 5 * 5 * (8 // 2) * 3 * 3  # out elements x (Cin / groups) x kh x kw
    assert f["flops"] == 2 * f["macs"]
    lin = nn.Linear(10, 5)
    f = count_flops(lin, (3, 10))
    assert f["macs"] == 3 * 10 * 5 and f["parameters"] == 55 == count_parameters(lin)
    dw = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    assert count_flops(dw, (1, 4, 6, 6))["macs"] == 4 * 6 * 6 * 9


@pytest.mark.parametrize("name", ["mlanet_mobile", "mlanet_r50"])
def test_conv_and_linear_macs_equal_torch_flop_counter(name, layout):
    """The hook rules for convolutions and linear layers give exactly what ``torch.utils.flop_counter``
    counts (it counts only matmuls and convolutions: batchnorm, pooling and the element-wise terms are
    ours alone, 0.7 % of r50's MACs and 2.2 % of mobile's, so the counter is kept rather than replaced)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model(name, layout=layout, preprocess=SMALL).eval()
    ours = count_flops(model)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.rand(ours["input_shape"]))
    assert counter.get_total_flops() == 2 * (ours["by_type"]["conv"] + ours["by_type"]["linear"])


def test_plain_resnet50_macs_match_the_known_figure(layout):
    plain = create_model("mlanet_r50", layout=layout, block_attention=False, fusion=False)
    conv = count_flops(plain)["by_type"]["conv"]
    assert 4.05e9 < conv < 4.12e9  # torchvision ResNet-50: 4.09 GMACs (convolutions + fc)


def test_mobile_is_at_most_a_tenth_of_r50(layout):
    r50 = count_flops(create_model("mlanet_r50", layout=layout))  # one r50 forward at 224
    mobile = count_flops(create_model("mlanet_mobile", layout=layout))
    print(
        f"\nmlanet_r50: {r50['parameters'] / 1e6:.2f} M params, {r50['gmacs']:.3f} GMACs; "
        f"mlanet_mobile: {mobile['parameters'] / 1e6:.2f} M params, {mobile['gmacs']:.3f} GMACs "
        f"({mobile['macs'] / r50['macs']:.3f} of r50)"
    )
    assert r50["input_shape"] == [1, 3, 224, 224]
    assert 4.1e9 < r50["macs"] < 5.5e9
    assert mobile["macs"] <= 0.1 * r50["macs"]


# ------------------------------------------------------------------------- torchvision weights
class _TVBasicBlock(nn.Module):
    """torchvision's BasicBlock module names (ResNet-18/34), for state-dict layout only."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample


class _TVBottleneck(nn.Module):
    """torchvision's Bottleneck module names (ResNet-50 v1.5)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample


class _TVResNet(nn.Module):
    """A plain torchvision-layout ResNet (no forward needed: only its state-dict names and shapes)."""

    def __init__(self, block: type, layers: list[int]) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or self.inplanes != planes * block.expansion:
                down = nn.Sequential(
                    nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                    nn.BatchNorm2d(planes * block.expansion),
                )
            blocks = [block(self.inplanes, planes, stride, down)]
            self.inplanes = planes * block.expansion
            blocks += [block(self.inplanes, planes) for _ in range(1, n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, 1000)


def _random_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(1, 1000, (), generator=g, dtype=v.dtype)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g)
    return out


def test_load_torchvision_resnet50_from_pth(tmp_path, layout):
    tv_state = _random_state(_TVResNet(_TVBottleneck, [3, 4, 6, 3]), seed=1)
    path = tmp_path / "resnet50.pth"
    torch.save(tv_state, path)
    model = create_model("mlanet_r50", layout=layout, preprocess=SMALL)
    ca_before = model.backbone.layer2[1].ca.attn_h.weight.clone()
    report = load_torchvision_resnet50(model, path)
    backbone = model.backbone.state_dict()
    # Every torchvision name except fc exists in the backbone; the backbone adds only the CA modules.
    tv_keys = {k for k in tv_state if not k.startswith("fc.")}
    assert set(report["loaded"]) == tv_keys
    assert {k for k in backbone if ".ca." not in k} == tv_keys
    assert report["missing"] == [] and report["unexpected"] == [] and report["skipped_shape_mismatch"] == []
    assert report["ignored"] == ["fc.bias", "fc.weight"]
    for k in tv_keys:
        assert torch.equal(backbone[k], tv_state[k]), k
    assert torch.equal(model.backbone.layer2[1].ca.attn_h.weight, ca_before)
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64))).all()

    # The same dict as .safetensors, and straight from memory.
    from safetensors.torch import save_file

    st = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in tv_state.items()}, str(st))
    other = create_model("mlanet_r50", layout=layout, preprocess=SMALL, block_attention=False)
    assert len(load_torchvision_resnet50(other, st)["loaded"]) == len(tv_keys)
    assert torch.equal(other.backbone.layer4[2].conv3.weight, tv_state["layer4.2.conv3.weight"])


def test_load_torchvision_refuses_wrong_weights_and_models(tmp_path, layout):
    model = create_model("mlanet_r50", layout=layout, preprocess=SMALL)
    r18 = _random_state(_TVResNet(_TVBasicBlock, [2, 2, 2, 2]), seed=2)
    with pytest.raises(AssetError, match="not a torchvision ResNet-50"):
        load_torchvision_resnet50(model, r18)
    report = load_torchvision_resnet50(model, r18, strict=False)  # loads only what fits (the stem)
    assert "conv1.weight" in report["loaded"] and report["skipped_shape_mismatch"]
    with pytest.raises(AssetError, match="no tensor matched"):
        load_torchvision_resnet50(model, {"features.0.weight": torch.zeros(3)})
    mobile = create_model("mlanet_mobile", layout=layout, preprocess=SMALL)
    with pytest.raises(ValueError, match="resnet50 backbone"):
        load_torchvision_resnet50(mobile, r18)
    with pytest.raises(AssetError, match="no such"):
        load_torchvision_resnet50(model, tmp_path / "missing.pth")


# ------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_and_face_model_check(tmp_path, face_data, layout):
    torch.manual_seed(0)
    face = MorphableModel(face_data)
    model = create_model("mlanet_mobile", face_model=face, preprocess=SMALL, block_attention=False)
    with torch.no_grad():  # make the output depend on every part
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    assert not torch.equal(expected[0], model.prior)
    path = save_model(model, tmp_path / "ckpt.safetensors", face.describe(), {"step": 7})

    restored = create_model("mlanet_mobile", checkpoint=path, face_model=face)
    assert restored.config == model.config and restored.layout == layout and restored.preprocess == SMALL
    assert not restored.training
    with torch.no_grad():
        assert torch.equal(restored(x), expected)
    assert create_model(None, checkpoint=path).name == "mlanet_mobile"
    assert create_model(checkpoint=path, face_model=face_data).layout == layout

    other = make_synthetic_face_model(seed=1)  # model_id synthetic-1
    with pytest.raises(AssetError, match="trained for another face model"):
        create_model("mlanet_mobile", checkpoint=path, face_model=other)
    with pytest.raises(AssetError, match="holds model 'mlanet_mobile'"):
        create_model("mlanet_r50", checkpoint=path)
    with pytest.raises(ValueError, match="cannot be combined"):
        create_model("mlanet_mobile", checkpoint=path, fusion=False)
    with pytest.raises(ValueError, match="safetensors"):
        save_model(model, tmp_path / "ckpt.pt", face.describe())

    # Same decoder, other whole-file checksum (e.g. another MediaPipe registration): accepted.
    # A DataParallel wrapper is unwrapped.
    desc = face.describe() | {"content_sha256": "a" * 64}
    path2 = save_model(nn.DataParallel(model), tmp_path / "ckpt2.safetensors", desc)
    assert create_model(checkpoint=path2, face_model=desc | {"content_sha256": "b" * 64}).layout == layout
    # A checkpoint from before decoder signatures matches only the very same file.
    legacy = {k: v for k, v in desc.items() if k not in ("decoder", "build")}
    path3 = save_model(model, tmp_path / "ckpt3.safetensors", legacy)
    assert create_model(checkpoint=path3, face_model=desc | {"content_sha256": "a" * 64}).layout == layout
    with pytest.raises(AssetError, match="content checksum.*predates decoder signatures"):
        create_model(checkpoint=path3, face_model=desc | {"content_sha256": "b" * 64})


# --------------------------------------------------------------------------------------- registry
def test_registry_errors(layout):
    assert list_models() == ["mlanet_mobile", "mlanet_mobile_lite", "mlanet_mobile_lite_128", "mlanet_mobilenetv2",
                             "mlanet_r50"]
    with pytest.raises(ValueError, match="mlanet_mobile, mlanet_mobile_lite, mlanet_mobile_lite_128, mlanet_mobilenetv2, "
                                         "mlanet_r50"):
        create_model("mlanet_r101", layout=layout)
    with pytest.raises(ValueError, match="valid fields: backbone, block_attention"):
        create_model("mlanet_r50", layout=layout, attention=False)
    with pytest.raises(ValueError, match="needs the parameter layout"):
        create_model("mlanet_r50")


# -------------------------------------------------------------------------------------------- CLI
def test_cli_models_list_and_info(capsys, tmp_path, face_data):
    # (the default 224 counts are covered by test_mobile_is_at_most_a_tenth_of_r50; 64 keeps this fast)
    assert cli_main(["models", "list", "--input-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "ICT-FaceKit sizes" in out  # no default face model in the test's MLANET_HOME
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("mlanet_")}
    assert set(lines) == {"mlanet_r50", "mlanet_mobile", "mlanet_mobile_lite", "mlanet_mobile_lite_128",
                          "mlanet_mobilenetv2"}
    for line in lines.values():
        assert re.search(r"\d+(\.\d+)?[KM] params +\d+\.\d{3} GMACs @ 64", line), line

    face_file = face_data.save(tmp_path / "synthetic.mlface.npz")
    assert cli_main(["models", "info", "mlanet_r50", "--face-model", str(face_file), "--input-size", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == ParamLayout.for_face_model(face_data).to_dict()
    assert info["coordinate_attention_modules"] == 16 and info["fusion_modules"] == 3
    assert str(face_file) in info["layout_source"]

    assert cli_main(["models", "info", "mlanet_mobile", "--set", "fusion=false", "--input-size", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["fusion"] is False and info["fusion_modules"] == 0
    assert info["output_size"] == 100 + 55 + 10 + 33 and info["layout"]["identity"] == 100
    assert info["parameters"] > 0 and info["flops"] == 2 * info["macs"] > 0
    assert "ICT-FaceKit" in info["layout_source"]

    assert cli_main(["models", "info", "mlanet_mobile", "--set", "fuson=false"]) == 2
    assert "did you mean 'fusion'" in capsys.readouterr().err
    assert cli_main(["models", "info", "nope"]) == 2


def test_sigmoid_expression_head_is_bounded_and_starts_at_its_prior(synthetic_data):
    from mlanet.models.mlanet import EXPRESSION_LOGIT_INIT

    layout = ParamLayout.for_face_model(synthetic_data)
    cfg = MLANetConfig(backbone="efficientnet_lite0", width_mult=0.5, ca_stages=(4,), ca_blocks="last",
                       last_channels=0, expression_activation="sigmoid")
    net = MLANet(cfg, layout).eval()
    x = torch.rand(2, 3, net.input_size, net.input_size)
    sl = layout.slices()["expression"]
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net.prior.expand(2, -1))  # zero-initialised heads: exactly the prior
        assert torch.allclose(out[:, sl], torch.sigmoid(torch.tensor(EXPRESSION_LOGIT_INIT)))
        for head in net.heads.values():  # large random heads: the other groups leave [0, 1], expressions never
            for p in head.parameters():
                p.normal_(0.0, 50.0)
        out = net(x)
    assert float(out[:, sl].min()) >= 0.0 and float(out[:, sl].max()) <= 1.0
    others = torch.cat([out[:, :sl.start], out[:, sl.stop:]], 1)
    assert float(others.abs().max()) > 1.0


def test_sigmoid_expression_head_refuses_a_pca_expression_basis(synthetic_data):
    import dataclasses

    bfm_like = dataclasses.replace(synthetic_data, header={**synthetic_data.header, "source": {"kind": "bfm09-front-mat"}})
    with pytest.raises(ValueError, match="PCA"):
        create_model("mlanet_mobile_lite", face_model=bfm_like)
    assert create_model("mlanet_mobile_lite", face_model=bfm_like, expression_activation="linear") is not None
    assert create_model("mlanet_mobile_lite", face_model=synthetic_data).config.expression_activation == "sigmoid"
