"""Packed stores (mlanet.data.store_pack): a store at another resolution in one small file, and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

from mlanet.data.sources import FaceSample, LandmarkSet
from mlanet.data.store import Store
from mlanet.data.store_dataset import StoreDataset
from mlanet.data.store_pack import pack_store, read_packed, select_rows, unpack_store
from mlanet.errors import AssetError, MLANetError
from mlanet.preprocess import PreprocessCfg

from test_store import FakeSource, _centroid, _dot_image, _Loader, _prepare, data_main, make_sources


def _store_with_extras(tmp_path: Path) -> Store:
    def extras(sample):
        if sample.source == "fake5":
            return None
        pts = next(iter(sample.landmark_sets.values())).points
        return {"teacher68": np.resize(pts, (68, 2)), "fit_params": np.linspace(-3, 3, 7) + len(sample.key) / 100}

    extras.point_sets = {"teacher68": "ibug68"}
    _prepare(make_sources(), tmp_path / "st", extras=extras)
    return Store(tmp_path / "st")


def test_packed_points_stay_on_their_image_features(tmp_path):
    pts = np.array([[50.0, 52.0], [82.0, 51.0], [66.3, 70.2], [53.1, 88.0], [79.4, 87.6]])
    sample = FaceSample("dots:0.png", "dots", "t", Path("0.png"), {"mtfl5": LandmarkSet("mtfl5", pts, np.ones(5, bool))},
                        loader=_Loader(_dot_image(pts, 140, 130, sigma=3.0)))
    _prepare([FakeSource("dots", [sample])], tmp_path / "st", preprocess=PreprocessCfg(input_size=128))
    pack_store(tmp_path / "st", tmp_path / "p.npz", input_size=64, quality=100, progress=False)
    st = unpack_store(tmp_path / "p.npz", tmp_path / "un", progress=False)
    assert (st.size, st.input_size) == (80, 64) and st.images.shape == (1, 80, 80, 3)
    ds = StoreDataset(st, None)  # un-augmented: the centre 64 px
    d = ds[0]
    for x, y in d["points_mtfl5"].numpy():
        assert np.linalg.norm(_centroid(d["image"], x, y) - (x, y)) < 0.3
    # the same crop as the original store read at 64 px
    orig = StoreDataset(tmp_path / "st", None, input_size=64)[0]
    assert np.allclose(orig["points_mtfl5"].numpy(), d["points_mtfl5"].numpy(), atol=0.02)
    assert (orig["image"] - d["image"]).abs().mean() < 4 / 255


def test_round_trip_rows_labels_extras_and_manifest(tmp_path):
    st = _store_with_extras(tmp_path)
    rows = select_rows(st, ["fake68", "aflw-crops"])
    assert [st.labels["source"][r] for r in rows] == [0] * 5 + [2] * 3
    m = pack_store(st, tmp_path / "p.npz", rows=rows, input_size=96, quality=90,
                   extra_sources={"teacher68": ["fake68"]}, half_extras=["fit_params"], progress=False)
    assert m["packed"]["scale"] == 0.75 and m["packed"]["from_content_sha256"] == st.manifest["content_sha256"]
    un = unpack_store(tmp_path / "p.npz", tmp_path / "un", progress=False)
    un.verify()  # hashes recomputed for the decoded images
    assert un.keys == [st.keys[r] for r in rows] and (un.size, un.input_size) == (120, 96)
    assert [s["written"] for s in un.sources] == [5, 0, 3]
    assert [s["written_before_packing"] for s in un.sources] == [s["written"] for s in st.sources]
    assert [s["terms"] for s in un.sources] == [s["terms"] for s in st.sources]
    for name in ("points_ibug68", "points_aflw21", "x_teacher68"):
        a, b = st.labels[name][rows] * 0.75, un.labels[name]
        assert un.labels[name].dtype == np.float32
        rows_kept = slice(0, 5) if name == "x_teacher68" else slice(None)  # teacher68 dropped on aflw-crops
        assert np.array_equal(np.isnan(a[rows_kept]), np.isnan(b[rows_kept])) and np.isfinite(b).any()
        assert np.nanmax(np.abs(a[rows_kept] - b[rows_kept])) < 0.07  # float16 steps
    # teacher68 kept on fake68 rows only; fit_params as float16, back as float32
    assert un.labels["has_x_teacher68"].tolist() == [True] * 5 + [False] * 3
    assert np.isnan(un.labels["x_teacher68"][5:]).all()
    assert un.labels["has_x_fit_params"].tolist() == [True] * 8
    assert np.allclose(un.labels["x_fit_params"], st.labels["x_fit_params"][rows], atol=5e-3)
    assert np.array_equal(un.labels["crop_box"], st.labels["crop_box"][rows])
    assert not np.array_equal(un.labels["x_fit_params"], st.labels["x_fit_params"][rows])  # really float16
    # read back like any store
    d = StoreDataset(un, None)[0]
    assert d["image"].shape == (3, 96, 96)


def test_select_rows_require_and_errors(tmp_path):
    st = _store_with_extras(tmp_path)
    assert len(select_rows(st)) == 12
    assert len(select_rows(st, (), {"fake5": "fit_params"})) == 8  # fake5 rows have no extras
    with pytest.raises(MLANetError, match="nosuch"):
        select_rows(st, ["nosuch"])
    with pytest.raises(MLANetError, match="extra 'nope'"):
        select_rows(st, (), {"fake5": "nope"})
    with pytest.raises(MLANetError, match="float extra"):
        pack_store(st, tmp_path / "p.npz", half_extras=["teacher68x"], progress=False)
    assert not (tmp_path / "p.npz").exists()


def test_unpack_refuses_bad_files(tmp_path):
    st = _store_with_extras(tmp_path)
    pack_store(st, tmp_path / "p.npz", progress=False)
    with pytest.raises(MLANetError, match="already holds a store"):
        unpack_store(tmp_path / "p.npz", tmp_path / "st", progress=False)
    (tmp_path / "bad.npz").write_bytes((tmp_path / "p.npz").read_bytes()[:1000])
    with pytest.raises(AssetError, match="not a readable packed store"):
        read_packed(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(AssetError, match="not a packed store"):
        unpack_store(tmp_path / "other.npz", tmp_path / "x", progress=False)
    assert not (tmp_path / "x" / "manifest.json").exists()


def test_cli_pack_unpack_and_bad_input(tmp_path, capsys):
    _store_with_extras(tmp_path)
    assert data_main(["pack", str(tmp_path / "st"), "--out", str(tmp_path / "p.npz"), "--input-size", "64",
                      "--source", "fake68", "--require", "fake68=fit_params", "--extra-sources", "teacher68=fake68",
                      "--half-extras", "fit_params", "--quiet"]) == 0
    assert "5 faces 80x80 for input 64" in capsys.readouterr().out
    assert data_main(["unpack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "un"), "--quiet"]) == 0
    capsys.readouterr()
    for argv in (["pack", str(tmp_path / "st"), "--out", str(tmp_path / "q.npz"), "--source", "nosuch"],
                 ["pack", str(tmp_path / "st"), "--out", str(tmp_path / "q.npz"), "--quality", "0"],
                 ["pack", str(tmp_path / "st"), "--out", str(tmp_path / "q.npz"), "--extra-sources", "teacher68"],
                 ["pack", str(tmp_path / "missing"), "--out", str(tmp_path / "q.npz")],
                 ["unpack", str(tmp_path / "p.npz"), "--out", str(tmp_path / "un")],
                 ["unpack", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "z")]):
        assert data_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "q.npz").exists()


def test_cli_drop_extras_leaves_an_extra_out_of_every_row(tmp_path, capsys):
    """--drop-extras teacher68: the packed store keeps its rows and other extras, the extra is absent everywhere
    (what keeps a large store under a transfer limit); naming it in --extra-sources too is a one-line error."""
    _store_with_extras(tmp_path)
    assert data_main(["pack", str(tmp_path / "st"), "--out", str(tmp_path / "p.npz"), "--drop-extras", "teacher68",
                      "--quiet"]) == 0
    capsys.readouterr()
    m, arrays = read_packed(tmp_path / "p.npz")
    assert m["packed"]["extra_sources"] == {"teacher68": []}
    assert not arrays["has_x_teacher68"].any() and arrays["has_x_fit_params"].any()
    un = unpack_store(tmp_path / "p.npz", tmp_path / "un", progress=False)
    assert not un.labels["has_x_teacher68"].any() and len(un.keys) == len(Store(tmp_path / "st").keys)
    assert data_main(["pack", str(tmp_path / "st"), "--out", str(tmp_path / "q.npz"), "--drop-extras", "teacher68",
                      "--extra-sources", "teacher68=fake68"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--drop-extras teacher68" in err and len(err.splitlines()) == 1
    assert data_main(["pack", str(tmp_path / "st"), "--out", str(tmp_path / "q.npz"), "--drop-extras", "nosuch"]) == 2
    assert "'nosuch' is not in the store" in capsys.readouterr().err
    assert not (tmp_path / "q.npz").exists()
