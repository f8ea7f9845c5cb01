"""Tests of the in-the-wild 68-point benchmark (mlanet.eval.landmarks68) and ``mlanet eval landmarks68``.

Synthetic tests write small dlib imglab XML / iBUG .pts folders with known points; the
``assets`` tests run on ``shared/data/landmarks68`` (10 dlib photos with 43 faces, one LFPW image).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mlanet.cli import main
from mlanet.errors import AssetError
from mlanet.eval.landmarks68 import Landmarks68Eval
from mlanet.preprocess import PreprocessCfg

DLIB = "data/landmarks68/dlib-faces"
LFPW = "data/landmarks68/lfpw-sample"


class TruthPredictor:
    """Each face's ground truth (plus an image-pixel offset) in its crop; records the crops' centre pixels."""

    def __init__(self, bench: Landmarks68Eval, cfg: PreprocessCfg, offset=(0.0, 0.0)) -> None:
        self.faces, self.cfg, self.offset, self.k = bench.faces, cfg, np.asarray(offset, np.float64), 0
        self.centres: list[float] = []

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        S = self.cfg.input_size
        assert images.shape[1:] == (3, S, S)
        out = []
        for img in images:
            f = self.faces[self.k]
            self.k += 1
            self.centres.append(float(img[0, S // 2, S // 2]))
            out.append(f.crop_box(self.cfg.roi_scale).image_to_crop(f.landmarks + self.offset, S))
        return np.stack(out)


def _face(cx: float, cy: float, half: float) -> np.ndarray:
    """68 points on a jittered grid inside [cx - half, cx + half] x [cy - half, cy + half] (integer dlib coords)."""
    g = np.array([(i, j) for j in range(8) for i in range(9)][:68], dtype=np.float64)
    pts = np.stack([cx - half + 2 * half * g[:, 0] / 8, cy - half + 2 * half * g[:, 1] / 7], axis=1)
    return np.rint(pts)


def _xml(path: Path, images: list[tuple[str, list[tuple[np.ndarray, dict]]]]) -> None:
    lines = ["<?xml version='1.0' encoding='ISO-8859-1'?>", "<dataset>", "<images>"]
    for file, faces in images:
        lines.append(f"  <image file='{file}'>")
        for pts, attrs in faces:
            x0, y0 = np.nanmin(pts, axis=0)
            w, h = np.nanmax(pts, axis=0) - np.nanmin(pts, axis=0)
            extra = "".join(f" {k}='{v}'" for k, v in attrs.items())
            lines.append(f"    <box top='{int(y0)}' left='{int(x0)}' width='{int(w)}' height='{int(h)}'{extra}>")
            for k, (x, y) in enumerate(pts):
                if np.isfinite(x):
                    lines.append(f"      <part name='{k:02d}' x='{int(x)}' y='{int(y)}'/>")
            lines.append("    </box>")
        lines.append("  </image>")
    lines += ["</images>", "</dataset>"]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def wild(tmp_path: Path) -> Path:
    """photo_a: two faces (grey levels 100 and 200 under each face), one with a missing point, one ignored;
    photo_b: one face; one .pts face."""
    d = tmp_path / "wild"
    d.mkdir()
    a = np.zeros((200, 300, 3), np.uint8)
    a[40:100, 40:100] = 100
    a[60:160, 160:260] = 200
    Image.fromarray(a).save(d / "photo_a.png")
    Image.fromarray(np.full((120, 120, 3), 50, np.uint8)).save(d / "photo_b.jpg")
    incomplete = _face(150, 50, 20)
    incomplete[30] = np.nan
    faces_a = [(_face(70, 70, 25), {}), (_face(210, 110, 45), {}), (incomplete, {}), (_face(20, 20, 10), {"ignore": "1"})]
    _xml(d / "faces.xml", [("photo_a.png", faces_a), ("photo_b.jpg", [(_face(60, 60, 30), {})])])
    Image.fromarray(np.zeros((90, 90, 3), np.uint8)).save(d / "single.png")
    pts = _face(45, 45, 30) + 1.0  # .pts is 1-based
    (d / "single.pts").write_text("version: 1\nn_points:  68\n{\n" + "".join(f"{x:.3f} {y:.3f}\n" for x, y in pts) + "}\n")
    return d


def test_discovery_conversion_and_skips(wild: Path) -> None:
    bench = Landmarks68Eval([wild])
    assert [(f.image_path.name, f.face_index) for f in bench.faces] == [
        ("photo_a.png", 0), ("photo_a.png", 1), ("photo_b.jpg", 0), ("single.png", 0)
    ]
    # dlib is 0-based with integer pixel centres (+0.5); .pts is 1-based (-0.5)
    np.testing.assert_allclose(bench.faces[0].landmarks, _face(70, 70, 25) + 0.5)
    np.testing.assert_allclose(bench.faces[3].landmarks, _face(45, 45, 30) + 0.5)
    reasons = [(r["face_index"], r["reason"]) for r in bench.skipped]
    assert reasons == [(2, "incomplete_annotation"), (3, "ignore_flag")]
    assert bench.skipped[0]["n_points"] == 67


def test_ground_truth_scores_zero_and_one_pixel_offset_is_exact(wild: Path) -> None:
    bench = Landmarks68Eval([wild])
    cfg = PreprocessCfg(input_size=64)
    pred = TruthPredictor(bench, cfg)
    res = bench.evaluate(pred, cfg, batch_size=3)
    assert res["n"] == 4 and res["nme_mean"] < 1e-9 and res["nme_median"] < 1e-9
    assert res["auc_7"] == pytest.approx(1.0) and res["failure_rate_10"] == 0.0
    # crops come from the right place of the right photo: centre pixels are the grey levels under each face
    assert [round(c * 255) for c in pred.centres] == [100, 200, 50, 0]
    shifted = bench.evaluate(TruthPredictor(bench, cfg, offset=(1.0, 0.0)), cfg, batch_size=3)
    expected = [100.0 / f.box_px for f in bench.faces]
    np.testing.assert_allclose([r["nme"] for r in shifted["faces"]], expected, rtol=1e-9)
    assert shifted["nme_mean"] == pytest.approx(np.mean(expected))


def test_result_is_self_describing(wild: Path) -> None:
    bench = Landmarks68Eval([wild / "faces.xml", wild / "single.pts"])
    cfg = PreprocessCfg(input_size=32)
    res = bench.evaluate(TruthPredictor(bench, cfg, offset=(3.0, -2.0)), cfg, model={"name": "m"}, weights="w")
    json.dumps(res, allow_nan=False)
    assert res["crop"] == "gt" and res["detector_free"] is True and "ground-truth crops" in res["note"]
    assert res["skipped"]["counts"] == {"incomplete_annotation": 1, "ignore_flag": 1}
    assert res["data"] == {
        "sources": [str(wild / "faces.xml"), str(wild / "single.pts")],
        "n_images": 3, "n_faces_annotated": 6, "n_faces_scored": 4,
    }
    assert set(res["by_annotation"]) == {str(wild / "faces.xml"), str(wild / "single.pts")}
    assert res["by_annotation"][str(wild / "faces.xml")]["n"] == 3
    rec = res["faces"][1]
    assert rec["annotation"] == str(wild / "faces.xml") and rec["face_index"] == 1
    assert rec["box_px"] == pytest.approx(bench.faces[1].box_px) and rec["crop_px"] > rec["box_px"]
    assert len(res["ced"]["fraction"]) == len(res["ced"]["thresholds_percent"])


def test_bad_inputs_are_named(tmp_path: Path, wild: Path) -> None:
    with pytest.raises(AssetError, match="missing_dir.*no such file"):
        Landmarks68Eval([tmp_path / "missing_dir"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssetError, match=r"empty.*no dlib imglab \.xml or iBUG \.pts"):
        Landmarks68Eval([empty])
    (tmp_path / "corrupt.xml").write_text("<dataset><images><image file='x.png'>")
    with pytest.raises(AssetError, match=r"corrupt\.xml"):
        Landmarks68Eval([tmp_path / "corrupt.xml"])
    _xml(tmp_path / "gone.xml", [("not_there.jpg", [(_face(50, 50, 20), {})])])
    with pytest.raises(AssetError, match=r"gone\.xml.*not_there\.jpg.*not found"):
        Landmarks68Eval([tmp_path / "gone.xml"])
    (tmp_path / "orphan.pts").write_text((wild / "single.pts").read_text())
    with pytest.raises(AssetError, match=r"orphan\.pts.*no image"):
        Landmarks68Eval([tmp_path / "orphan.pts"])
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(AssetError, match=r"notes\.txt.*not an annotation file"):
        Landmarks68Eval([tmp_path / "notes.txt"])
    _xml(tmp_path / "only_ignored.xml", [("photo_a.png", [(_face(70, 70, 25), {"ignore": "1"})])])
    (tmp_path / "photo_a.png").write_bytes((wild / "photo_a.png").read_bytes())
    with pytest.raises(AssetError, match="no scorable face.*ignore_flag"):
        Landmarks68Eval([tmp_path / "only_ignored.xml"])


def test_unreadable_photo_is_named(wild: Path) -> None:
    (wild / "photo_b.jpg").write_bytes(b"broken")
    bench = Landmarks68Eval([wild])
    cfg = PreprocessCfg(input_size=32)
    with pytest.raises(AssetError, match=r"photo_b\.jpg"):
        bench.evaluate(TruthPredictor(bench, cfg), cfg)


# ------------------------------------------------------------------------ CLI
def test_cli_without_weights_says_so(wild: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import mlanet.weights

    monkeypatch.setattr(mlanet.weights, "default_weights_path", lambda name: None)  # an install without weights
    rc = main(["eval", "landmarks68", "--data", str(wild), "--json", str(tmp_path / "r.json")])
    assert rc == 2 and "--weights FILE" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_cli_bad_data_is_named_before_the_model(tmp_path: Path, capsys) -> None:
    rc = main(["eval", "landmarks68", "--data", str(tmp_path / "nope"), "--json", str(tmp_path / "r.json"),
               "--weights", str(tmp_path / "w.safetensors")])
    assert rc == 2 and str(tmp_path / "nope") in capsys.readouterr().err


def test_cli_untrained_end_to_end(wild: Path, tmp_path: Path, synthetic_data, capsys) -> None:
    fm = synthetic_data.save(tmp_path / "synthetic.mlface.npz")
    out = tmp_path / "out" / "wild.json"
    rc = main(["eval", "landmarks68", "--data", str(wild / "faces.xml"), "--data", str(wild / "single.pts"),
               "--untrained", "mlanet_mobile", "--face-model", str(fm), "--json", str(out), "--batch", "2"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    res = json.loads(out.read_text())
    assert res["n"] == 4 and res["weights"] == {"untrained": True, "model": "mlanet_mobile", "seed": 0}
    assert res["model"]["name"] == "mlanet_mobile" and np.isfinite(res["nme_mean"])
    assert res["skipped"]["counts"] == {"incomplete_annotation": 1, "ignore_flag": 1}
    assert "ground-truth crops" in printed.out and "skipped: incomplete_annotation 1, ignore_flag 1" in printed.out
    if importlib.util.find_spec("matplotlib") is not None:
        assert out.with_name("wild_ced.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_untrained_unknown_model(wild: Path, tmp_path: Path, capsys) -> None:
    rc = main(["eval", "landmarks68", "--data", str(wild), "--untrained", "no_such_net", "--json", str(tmp_path / "r.json")])
    assert rc == 2 and "no_such_net" in capsys.readouterr().err


# ------------------------------------------------------------------------ shared data
@pytest.mark.assets
def test_shared_photos_ground_truth_round_trip(shared: Path) -> None:
    bench = Landmarks68Eval([shared / DLIB, shared / LFPW])
    assert len(bench.faces) == 44 and bench.skipped == []  # 43 dlib faces in 9 annotated photos + 1 LFPW
    assert len({f.image_path for f in bench.faces}) == 10
    cfg = PreprocessCfg(input_size=64)
    res = bench.evaluate(TruthPredictor(bench, cfg), cfg, batch_size=16)
    assert res["n"] == 44 and res["nme_mean"] < 1e-9
    counts = {Path(k).name: v["n"] for k, v in res["by_annotation"].items()}
    assert counts == {"testing_with_face_landmarks.xml": 25, "training_with_face_landmarks.xml": 18, "image_0010.pts": 1}
