"""The one crop convention: boxes, crop <-> image mapping, warping, the crop camera."""

import math

import numpy as np
import pytest
import torch

from mlanet.preprocess import CropBox, PreprocessCfg, box_from_points, crop_image, image_to_tensor


def test_box_from_points_is_the_protocol_square():
    pts = np.array([[10.0, 20.0], [50.0, 30.0], [30.0, 80.0]])
    box = box_from_points(pts, math.sqrt(2))
    side = math.sqrt(2) * 60.0  # max(w=40, h=60)
    assert box.size == pytest.approx(side)
    assert box.x0 + box.size / 2 == pytest.approx(30.0) and box.y0 + box.size / 2 == pytest.approx(50.0)
    with pytest.raises(ValueError):
        box_from_points(np.array([[1.0, 1.0], [1.0, 1.0]]), 1.4)


def test_crop_mapping_round_trip_and_pixel_centres():
    box = CropBox(3.3, -7.1, 17.0)
    p = np.random.default_rng(0).uniform(-20, 60, size=(30, 2))
    np.testing.assert_allclose(box.crop_to_image(box.image_to_crop(p, 224), 224), p, atol=1e-9)
    # centre of crop pixel 0 sits at x0 + 0.5 * size / S
    np.testing.assert_allclose(box.crop_to_image(np.array([[0.5, 0.5]]), 17), [[3.8, -6.6]])
    t = torch.tensor(p)
    assert torch.allclose(box.crop_to_image(box.image_to_crop(t, 64), 64), t)


def test_crop_image_integer_box_copies_pixels_and_pads_with_zero():
    img = torch.rand(3, 40, 60)
    out = crop_image(img, CropBox(10, 5, 30), 30)
    assert torch.allclose(out[0], img[:, 5:35, 10:40], atol=1e-5)
    out = crop_image(img, CropBox(-10, -10, 20), 20)[0]
    assert out[:, :10, :].abs().max() < 1e-5 and out[:, :, :10].abs().max() < 1e-5
    assert torch.allclose(out[:, 10:, 10:], img[:, :10, :10], atol=1e-5)


def test_crop_image_samples_where_the_mapping_says():
    """A linear ramp image: the crop's value at each pixel equals the image coordinate of its centre."""
    H, W = 50, 70
    xs = (torch.arange(W) + 0.5).float()
    img = xs.expand(H, W)[None].repeat(3, 1, 1)
    box, S = CropBox(12.25, 8.5, 31.0), 16
    out = crop_image(img, box, S)[0, 0]
    expected = box.crop_to_image(np.stack([np.arange(S) + 0.5, np.zeros(S)], 1), S)[:, 0]
    assert torch.allclose(out[5], torch.tensor(expected, dtype=torch.float32), atol=1e-4)


def test_crop_camera_and_cfg_dict():
    cfg = PreprocessCfg()
    cam = cfg.camera(2)
    assert cam.fx.shape == (2,) and float(cam.cx[0]) == cfg.input_size / 2
    # a 15.5 cm wide landmark box at the prior depth fills the sqrt(2) crop
    width_px = float(cam.fx[0]) * 0.155 / cfg.prior_depth_m
    assert width_px * cfg.roi_scale == pytest.approx(cfg.input_size, rel=0.02)
    assert PreprocessCfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown PreprocessCfg keys"):
        PreprocessCfg.from_dict(cfg.to_dict() | {"crop": 1})


def test_image_to_tensor_checks_input():
    t = image_to_tensor(np.full((4, 5, 3), 255, np.uint8))
    assert t.shape == (3, 4, 5) and float(t.max()) == 1.0
    with pytest.raises(ValueError, match="uint8 RGB"):
        image_to_tensor(np.zeros((4, 5), np.uint8))
