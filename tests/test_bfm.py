"""Tests of the Basel Face Model 2009 loader on small synthetic ``BFM_model_front.mat`` files.

The synthetic file uses the real file's variable names, shapes, 1-based indices and dtypes
(float32 bases except the float64 expression basis, as Deep3DFaceRecon's ``transferBFM09``
produces; index arrays as MATLAB doubles, plus an int32 variant): a 10 x 10 curved sheet in
decimetres, 1.5 dm wide, bulging towards the viewer (+z, y up), triangulated CCW-front.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import scipy.io

from mlanet.conventions import Y_UP_TO_MODEL_FRAME
from mlanet.errors import AssetError
from mlanet.morphable.sources.bfm import BFM_LICENSE, load_bfm_front_mat, planar_frontal_uv
from mlanet.morphable.data import FaceModelData

NX = NY = 10
N = NX * NY
K_ID, K_EXP, K_TEX = 80, 64, 80
OFFSET_DM = np.array([0.05, 0.3, 0.4])  # the sheet is not centred, to exercise recentering


def _grid_vertices() -> np.ndarray:
    """(N, 3) decimetres, y up, z towards the viewer; row-major in y then x."""
    xs = np.linspace(-0.75, 0.75, NX)
    ys = np.linspace(-0.9, 0.9, NY)
    gx, gy = np.meshgrid(xs, ys)  # (NY, NX)
    gz = 0.5 - 0.4 * (gx / 0.75) ** 2 - 0.2 * (gy / 0.9) ** 2
    return np.stack([gx, gy, gz], axis=-1).reshape(N, 3) + OFFSET_DM


def _grid_triangles() -> np.ndarray:
    """(F, 3) 0-based, CCW seen from +z with y up: normals (v1-v0)x(v2-v0) point to +z."""
    tris = []
    for j in range(NY - 1):
        for i in range(NX - 1):
            a, b = j * NX + i, j * NX + i + 1
            c, d = b + NX, a + NX
            tris += [(a, b, c), (a, c, d)]
    return np.array(tris)


def _point_buf(tri0: np.ndarray) -> np.ndarray:
    """(N, 8) 1-based incident triangles per vertex, padded with F + 1 like the real file."""
    f = len(tri0)
    buf = np.full((N, 8), f + 1, dtype=np.int64)
    fill = np.zeros(N, dtype=int)
    for t, corners in enumerate(tri0):
        for v in corners:
            buf[v, fill[v]] = t + 1
            fill[v] += 1
    return buf


def _smooth_basis(rng: np.random.Generator, k: int, amplitude: float) -> np.ndarray:
    """(3N, k) smooth random displacement fields (low-order polynomials of the grid position)."""
    v = _grid_vertices() - OFFSET_DM
    feats = np.stack([np.ones(N), v[:, 0], v[:, 1], v[:, 0] * v[:, 1], v[:, 0] ** 2, v[:, 1] ** 2], axis=1)
    coeffs = rng.normal(size=(6, 3, k)) * amplitude
    return np.einsum("nf,fck->nck", feats, coeffs).reshape(3 * N, k)


def _bfm_fields(int_dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    tri0 = _grid_triangles()
    keypoints = np.sort(rng.choice(N, size=68, replace=False)) + 1
    skin = np.ones(N)
    skin[:NX] = 0  # bottom row ("neck") is not skin
    front_idx = np.arange(2 * NX, 8 * NX) + 1
    front_tri = tri0[(tri0 >= 2 * NX).all(axis=1) & (tri0 < 8 * NX).all(axis=1)] + 1
    return {
        "meanshape": _grid_vertices().reshape(1, -1).astype(np.float32),
        "idBase": _smooth_basis(rng, K_ID, 0.01).astype(np.float32),
        "exBase": _smooth_basis(rng, K_EXP, 0.005).astype(np.float64),
        "meantex": rng.uniform(60, 220, size=(1, 3 * N)).astype(np.float32),
        "texBase": _smooth_basis(rng, K_TEX, 5.0).astype(np.float32),
        "tri": (tri0 + 1).astype(int_dtype),
        "point_buf": _point_buf(tri0).astype(int_dtype),
        "keypoints": keypoints.reshape(1, 68).astype(int_dtype),
        "frontmask2_idx": front_idx.reshape(-1, 1).astype(int_dtype),
        "tri_mask2": front_tri.astype(int_dtype),
        "skinmask": skin.reshape(1, N).astype(int_dtype),
    }


def _write(path, fields) -> str:
    scipy.io.savemat(str(path), fields)
    return str(path)


@pytest.fixture
def fields():
    return _bfm_fields()


@pytest.fixture
def mat_path(tmp_path, fields):
    return _write(tmp_path / "BFM_model_front.mat", fields)


# --------------------------------------------------------------------------- conversion
def test_loads_and_validates(mat_path):
    data = load_bfm_front_mat(mat_path)
    data.validate()
    assert data.mean_shape.shape == (N, 3) and data.mean_shape.dtype == np.float32
    assert data.identity_basis.shape == (K_ID, N, 3)
    assert data.expression_basis.shape == (K_EXP, N, 3)
    assert data.albedo_basis.shape == (K_TEX, N, 3)
    assert all(a.dtype == np.float32 for a in (data.identity_basis, data.expression_basis, data.albedo_basis))
    h = data.header
    assert h["model_id"] == "bfm09-front"
    assert h["expression_names"][0] == "exp_00" and h["expression_names"][-1] == "exp_63"
    assert len(h["expression_names"]) == K_EXP
    assert h["expression_kind"] == "pca" and h["albedo_kind"] == "pca"
    assert h["source"]["kind"] == "bfm09-front-mat"
    assert h["source"]["path"] == mat_path
    assert h["source"]["license"] == BFM_LICENSE
    assert len(h["source"]["sha256"]) == 64
    assert h["units_in_source"] == "dm" and h["recentered"] is True
    assert h["uv_source"] == "planar-frontal-projection"
    assert h["winding_flipped"] is False


def test_units_and_frame_flip_by_hand(mat_path, fields):
    data = load_bfm_front_mat(mat_path, recenter=False)
    src = fields["meanshape"].reshape(N, 3).astype(np.float64)
    # vertex 0 by hand: (x, y, z) dm -> (0.1 x, -0.1 y, -0.1 z) m
    x, y, z = src[0]
    np.testing.assert_allclose(data.mean_shape[0], [0.1 * x, -0.1 * y, -0.1 * z], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(data.mean_shape, (src @ Y_UP_TO_MODEL_FRAME.T) * 0.1, rtol=1e-6, atol=1e-8)
    width = np.ptp(data.mean_shape[:, 0])
    assert width == pytest.approx(0.15, rel=1e-5)
    # bases: column k of idBase, vertex i -> basis[k, i] with the same flip and scale
    id_src = fields["idBase"].astype(np.float64)
    k, i = 7, 42
    bx, by, bz = id_src[3 * i : 3 * i + 3, k]
    np.testing.assert_allclose(data.identity_basis[k, i], [0.1 * bx, -0.1 * by, -0.1 * bz], rtol=1e-5, atol=1e-9)
    ex_src = fields["exBase"]
    np.testing.assert_allclose(
        data.expression_basis, (ex_src.reshape(N, 3, K_EXP).transpose(2, 0, 1) * [0.1, -0.1, -0.1]), rtol=1e-5,
        atol=1e-9,
    )
    # the nose (the bulge, +z in the file) is towards the camera: smallest z in the model frame
    assert np.argmin(data.mean_shape[:, 2]) == np.argmax(src[:, 2])


def test_other_units(tmp_path, fields):
    mm = dict(fields, meanshape=fields["meanshape"] * 100.0, idBase=fields["idBase"] * 100.0)
    data = load_bfm_front_mat(_write(tmp_path / "mm.mat", mm), units="mm")
    ref = load_bfm_front_mat(_write(tmp_path / "dm.mat", fields))
    np.testing.assert_allclose(data.mean_shape, ref.mean_shape, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(data.identity_basis, ref.identity_basis, rtol=1e-5, atol=1e-9)
    um = dict(fields, meanshape=fields["meanshape"].astype(np.float64) * 1e5)
    data_um = load_bfm_front_mat(_write(tmp_path / "um.mat", um), units="um")
    np.testing.assert_allclose(data_um.mean_shape, ref.mean_shape, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="units"):
        load_bfm_front_mat(tmp_path / "dm.mat", units="cm")


def test_recentering(mat_path, fields):
    centred = load_bfm_front_mat(mat_path)
    raw = load_bfm_front_mat(mat_path, recenter=False)
    np.testing.assert_allclose(centred.mean_shape.mean(axis=0), 0.0, atol=1e-7)
    src_centroid = fields["meanshape"].reshape(N, 3).astype(np.float64).mean(axis=0)
    offset_m = src_centroid * [0.1, -0.1, -0.1]
    np.testing.assert_allclose(centred.header["recenter_offset_m"], offset_m, rtol=1e-6)
    np.testing.assert_allclose(raw.mean_shape - offset_m, centred.mean_shape, atol=1e-6)
    assert raw.header["recentered"] is False and raw.header["recenter_offset_m"] == [0.0, 0.0, 0.0]
    np.testing.assert_array_equal(raw.identity_basis, centred.identity_basis)  # bases never shift


def test_zero_based_indices(mat_path, fields):
    data = load_bfm_front_mat(mat_path)
    np.testing.assert_array_equal(data.triangles, fields["tri"].astype(int) - 1)
    assert data.triangles.dtype == np.int32 and data.triangles.min() == 0
    np.testing.assert_array_equal(data.triangles_uv, data.triangles)
    np.testing.assert_array_equal(data.landmarks68, fields["keypoints"].ravel().astype(int) - 1)
    assert data.landmarks68.dtype == np.int32
    pb = data.extra["bfm/point_buf"]
    assert pb.shape == (N, 8) and pb.dtype == np.int32
    np.testing.assert_array_equal(pb, fields["point_buf"].astype(int) - 1)
    assert pb.max() == len(data.triangles) == data.header["point_buf_padding"]  # padding slot = F
    np.testing.assert_array_equal(data.extra["bfm/front_mask"], fields["frontmask2_idx"].ravel().astype(int) - 1)
    np.testing.assert_array_equal(data.extra["bfm/front_triangles"], fields["tri_mask2"].astype(int) - 1)


def test_integer_stored_indices(tmp_path):
    data = load_bfm_front_mat(_write(tmp_path / "int.mat", _bfm_fields(int_dtype=np.int32)))
    ref = _bfm_fields()
    np.testing.assert_array_equal(data.triangles, ref["tri"].astype(int) - 1)
    np.testing.assert_array_equal(data.landmarks68, ref["keypoints"].ravel().astype(int) - 1)


def test_texture_scaled_to_unit_range(mat_path, fields):
    data = load_bfm_front_mat(mat_path)
    np.testing.assert_allclose(data.albedo_mean, fields["meantex"].reshape(N, 3) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(
        data.albedo_basis, fields["texBase"].reshape(N, 3, K_TEX).transpose(2, 0, 1) / 255.0, rtol=1e-5, atol=1e-9
    )
    assert 0.0 <= data.albedo_mean.min() and data.albedo_mean.max() <= 1.0


def _front_normal_z(data: FaceModelData) -> np.ndarray:
    v = data.mean_shape.astype(np.float64)[data.triangles]
    return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])[:, 2]


def test_winding_is_ccw_front(mat_path):
    data = load_bfm_front_mat(mat_path)
    nz = _front_normal_z(data)
    assert np.all(nz < 0), "outward normals of the face front must point towards -z (the camera)"


def test_reversed_winding_is_flipped_back(tmp_path, fields):
    rev = dict(fields, tri=fields["tri"][:, ::-1].copy(), tri_mask2=fields["tri_mask2"][:, ::-1].copy())
    data = load_bfm_front_mat(_write(tmp_path / "rev.mat", rev))
    assert data.header["winding_flipped"] is True
    assert np.all(_front_normal_z(data) < 0)
    ref = load_bfm_front_mat(_write(tmp_path / "fwd.mat", fields))
    # same triangles as the correctly wound file, up to a cyclic rotation of the corners
    for got, want in ((data.triangles, ref.triangles),
                      (data.extra["bfm/front_triangles"], ref.extra["bfm/front_triangles"])):
        rolled = [np.roll(want, s, axis=1) for s in range(3)]
        assert all(any(np.array_equal(g, r[i]) for r in rolled) for i, g in enumerate(got))


def test_regions_and_uv(mat_path, tmp_path, fields):
    data = load_bfm_front_mat(mat_path)
    assert data.region_names == ["skin", "non_skin"]
    skin = fields["skinmask"].ravel() == 1
    np.testing.assert_array_equal(data.region_mask("skin"), skin)
    np.testing.assert_array_equal(data.region_mask("non_skin"), ~skin)
    no_skin = {k: v for k, v in fields.items() if k not in ("skinmask", "frontmask2_idx", "tri_mask2")}
    plain = load_bfm_front_mat(_write(tmp_path / "noskin.mat", no_skin))
    assert plain.region_names == ["face"] and not plain.region_labels.any()
    assert not any(k in plain.extra for k in ("bfm/front_mask", "bfm/front_triangles"))
    # UV: within [0, 1], u grows with x, v grows towards the forehead (against model +y)
    uv = data.uv
    assert uv.shape == (N, 2) and uv.min() >= 0.0 and uv.max() <= 1.0
    assert np.all(np.diff(uv.reshape(NY, NX, 2)[:, :, 0], axis=1) > 0)
    assert np.all(np.diff(uv.reshape(NY, NX, 2)[:, :, 1], axis=0) > 0)  # file rows go up in y
    assert uv[:, 1].min() == pytest.approx(0.0, abs=1e-6) and uv[:, 1].max() == pytest.approx(1.0, abs=1e-6)
    # aspect kept: the 1.5-wide, 1.8-tall sheet spans 1.5 / 1.8 of the u range, centred
    assert np.ptp(uv[:, 0]) == pytest.approx(1.5 / 1.8, rel=1e-5)
    assert uv[:, 0].mean() == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(planar_frontal_uv(data.mean_shape), uv)


def test_save_load_round_trip(mat_path, tmp_path):
    data = load_bfm_front_mat(mat_path)
    out = data.save(tmp_path / "out" / "bfm.mlface.npz")
    back = FaceModelData.load(out)
    for name in ("mean_shape", "identity_basis", "expression_basis", "albedo_mean", "albedo_basis",
                 "triangles", "uv", "triangles_uv", "landmarks68", "region_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name), err_msg=name)
    assert set(back.extra) == {"bfm/point_buf", "bfm/front_mask", "bfm/front_triangles"}
    for k, v in data.extra.items():
        np.testing.assert_array_equal(back.extra[k], v)
    assert back.header["source"] == data.header["source"]
    assert back.header["winding_flipped"] is False and back.header["units"] == "m"


# --------------------------------------------------------------------------- errors
def _assert_asset_error(path, match: str, **kw) -> AssetError:
    with pytest.raises(AssetError, match=match) as info:
        load_bfm_front_mat(path, **kw)
    assert str(path) in str(info.value), f"message does not name the file: {info.value}"
    return info.value


def test_error_missing_file(tmp_path):
    _assert_asset_error(tmp_path / "nope.mat", "no such file")


def test_error_truncated(tmp_path, mat_path):
    raw = open(mat_path, "rb").read()
    bad = tmp_path / "truncated.mat"
    bad.write_bytes(raw[: len(raw) // 3])
    _assert_asset_error(bad, "corrupt or truncated|missing variable")
    tiny = tmp_path / "tiny.mat"
    tiny.write_bytes(raw[:60])
    _assert_asset_error(tiny, "truncated")


def test_error_text_file(tmp_path):
    bad = tmp_path / "notes.mat"
    bad.write_text("this is not a MATLAB file\n" * 20)
    _assert_asset_error(bad, "not a MAT v5 file")


def test_error_pickle(tmp_path, fields):
    bad = tmp_path / "model.mat"
    bad.write_bytes(pickle.dumps({"meanshape": fields["meanshape"]}, protocol=4))
    _assert_asset_error(bad, "pickle")


def test_error_hdf5_v73(tmp_path):
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + (0x0200).to_bytes(2, "little") + b"IM"
    assert len(header) == 128
    bad = tmp_path / "v73.mat"
    bad.write_bytes(header + bytes(range(256)) * 4)
    err = _assert_asset_error(bad, "v7.3")
    assert "HDF5" in str(err)
    # a version-0x0200 header whose text does not say 7.3 is refused the same way
    bad2 = tmp_path / "v73b.mat"
    bad2.write_bytes(b"MATLAB".ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 600)
    _assert_asset_error(bad2, "v7.3")


def test_error_missing_idbase(tmp_path, fields):
    bad = _write(tmp_path / "noid.mat", {k: v for k, v in fields.items() if k != "idBase"})
    _assert_asset_error(bad, "idBase")


def test_error_wrong_idbase_shape(tmp_path, fields):
    bad = _write(tmp_path / "transposed.mat", dict(fields, idBase=fields["idBase"].T.copy()))
    _assert_asset_error(bad, "'idBase' must have shape")
    bad2 = _write(tmp_path / "short.mat", dict(fields, idBase=fields["idBase"][:-3]))
    _assert_asset_error(bad2, "'idBase' must have shape")


def test_error_wrong_dtype(tmp_path, fields):
    bad = _write(tmp_path / "chars.mat", dict(fields, idBase="not numbers"))
    _assert_asset_error(bad, "idBase")
    bad2 = _write(tmp_path / "frac.mat", dict(fields, tri=fields["tri"] + 0.5))
    _assert_asset_error(bad2, "whole-number")


def test_error_out_of_range_tri(tmp_path, fields):
    tri = fields["tri"].copy()
    tri[5, 1] = N + 1
    _assert_asset_error(_write(tmp_path / "oob.mat", dict(fields, tri=tri)), "'tri'.*outside")
    tri0 = fields["tri"].copy()
    tri0[0, 0] = 0  # a 0-based file
    _assert_asset_error(_write(tmp_path / "zero.mat", dict(fields, tri=tri0)), "'tri'.*outside")
    kp = fields["keypoints"].copy()
    kp[0, 3] = N + 7
    _assert_asset_error(_write(tmp_path / "kp.mat", dict(fields, keypoints=kp)), "keypoints")


def test_error_implausible_units(mat_path):
    err = _assert_asset_error(mat_path, "units", units="m")
    assert "units='dm'" in str(err)


def test_error_non_finite(tmp_path, fields):
    ms = fields["meanshape"].copy()
    ms[0, 4] = np.nan
    _assert_asset_error(_write(tmp_path / "nan.mat", dict(fields, meanshape=ms)), "NaN")


def test_logs_no_print(mat_path, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="mlanet.morphable.sources.bfm"):
        load_bfm_front_mat(mat_path)
    assert any("loaded BFM front model" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr().out == ""
