import pytest
import torch

from mlanet.params import GROUPS, UNIT_AMBIENT_SH_DC, FaceParams, ParamLayout


def test_layout_sizes_slices_total():
    layout = ParamLayout(identity=100, expression=55, albedo=10)
    assert layout.total == 100 + 55 + 10 + 3 + 3 + 27
    s = layout.slices()
    assert list(s) == list(GROUPS)
    assert s["identity"] == slice(0, 100)
    assert s["expression"] == slice(100, 155)
    assert s["lighting"] == slice(layout.total - 27, layout.total)
    # slices tile the vector without gaps
    assert sum(v.stop - v.start for v in s.values()) == layout.total


def test_layout_dict_round_trip_and_refusals():
    layout = ParamLayout(identity=8, expression=6, albedo=10)
    assert ParamLayout.from_dict(layout.to_dict()) == layout
    bad = layout.to_dict() | {"version": 99}
    with pytest.raises(ValueError, match="version"):
        ParamLayout.from_dict(bad)
    with pytest.raises(ValueError, match="unknown ParamLayout keys"):
        ParamLayout.from_dict(layout.to_dict() | {"scale": 1})
    with pytest.raises(ValueError):
        ParamLayout(identity=-1, expression=1, albedo=1)
    with pytest.raises(ValueError, match="rotation"):
        ParamLayout(identity=1, expression=1, albedo=1, rotation=6)


def test_faceparams_flat_round_trip():
    layout = ParamLayout(identity=4, expression=3, albedo=2)
    flat = torch.randn(5, layout.total)
    p = FaceParams.from_flat(flat, layout)
    assert p.identity.shape == (5, 4)
    assert p.lighting.shape == (5, 3, 9)
    assert torch.equal(p.to_flat(), flat)
    assert torch.equal(p.lighting[:, 1, :], flat[:, layout.slices()["lighting"]][:, 9:18])  # channel-major
    assert p.layout == layout


def test_faceparams_wrong_shape_is_clear():
    layout = ParamLayout(identity=4, expression=3, albedo=2)
    with pytest.raises(ValueError, match=rf"\(B, {layout.total}\)"):
        FaceParams.from_flat(torch.zeros(2, layout.total - 1), layout)


def test_neutral_params():
    layout = ParamLayout(identity=4, expression=3, albedo=2)
    p = FaceParams.neutral(layout, batch_size=2, depth_m=0.5)
    assert torch.allclose(p.translation, torch.tensor([[0.0, 0.0, 0.5]] * 2))
    assert torch.allclose(p.lighting[:, :, 0], torch.full((2, 3), UNIT_AMBIENT_SH_DC))
    assert p.lighting[:, :, 1:].abs().sum() == 0
    assert p.identity.abs().sum() == 0
