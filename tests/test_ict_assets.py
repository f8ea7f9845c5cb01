"""The real ICT-FaceKit model built from ../shared (assets marker)."""

import shutil

import numpy as np
import pytest
import torch

from mlanet.errors import AssetError
from mlanet.morphable.sources import ict_topology as topo
from mlanet.morphable.sources.ict import build_ict_face_model
from mlanet.morphable.sources.ict_archive import PINNED_CONTENT_SHA256, read_ict_release
from mlanet.morphable.model import MorphableModel
from mlanet.params import FaceParams

from conftest import ICT_ARCHIVE

pytestmark = pytest.mark.assets


def test_neutral_face_in_metres(ict_data):
    m = MorphableModel(ict_data)
    v = m(FaceParams.zeros(m.layout))[0].numpy()
    width = v[:, 0].max() - v[:, 0].min()
    assert 0.12 < width < 0.20, width
    lm = v[ict_data.landmarks68]
    assert 0.085 < np.linalg.norm(lm[36] - lm[45]) < 0.11  # outer eye corners ~9-10 cm apart
    # model frame: subject's right eye at -x, chin below (+y) the nose, nose tip in front (-z)
    assert lm[36, 0] < 0 < lm[45, 0]
    assert lm[8, 1] > lm[30, 1] > lm[27, 1]
    assert lm[30, 2] < lm[0, 2]


def test_jaw_open_lowers_the_chin(ict_data):
    m = MorphableModel(ict_data)
    expr = torch.zeros(1, m.n_expression)
    expr[0, m.expression_names.index("jawOpen")] = 1.0
    open_ = m.shape(torch.zeros(1, m.n_identity), expr)[0]
    delta = (open_ - m.mean_shape)[m.landmark_index[8]].numpy()
    # measured: 28 mm down (+y), 29 mm back (+z): the jaw rotates about its hinge
    assert 0.020 < delta[1] < 0.040, delta
    assert abs(delta[0]) < 1e-4
    lips_gap_closed = (m.mean_shape[m.landmark_index[66]] - m.mean_shape[m.landmark_index[62]])[1]
    lips_gap_open = (open_[m.landmark_index[66]] - open_[m.landmark_index[62]])[1]
    assert lips_gap_open > lips_gap_closed + 0.01


def test_expressions_and_arkit_names(ict_data):
    names = ict_data.expression_names
    assert len(names) == 55 and ict_data.n_expression == 55
    assert "PupilDilate_L" not in names and "PupilDilate_R" not in names
    arkit = ict_data.header["expression_arkit"]
    assert arkit["eyeBlink_L"] == "eyeBlinkLeft" and arkit["jawOpen"] == "jawOpen"
    assert arkit["browInnerUp_L"] == arkit["browInnerUp_R"] == "browInnerUp"
    unmapped = sorted(k for k, v in arkit.items() if v is None)
    assert unmapped == ["cheekRaiser_L", "cheekRaiser_R"]
    assert set(v for v in arkit.values() if v) == set(topo.ARKIT_BLENDSHAPES) - {"tongueOut"}


def test_sides_follow_the_subject(ict_data):
    """_L shapes move the subject's left side, which is +x in the model frame."""
    for name in ("eyeBlink_L", "mouthSmile_L", "browDown_L"):
        d = ict_data.expression_basis[ict_data.expression_names.index(name)]
        moved = np.linalg.norm(d, axis=1) > 1e-4
        assert ict_data.mean_shape[moved, 0].mean() > 0.01, name


def test_landmarks_fall_on_their_regions(ict_data):
    lab = ict_data.region_labels[ict_data.landmarks68]
    names = np.array(ict_data.region_names)[lab]
    assert set(names[36:48]) == {"eyes"}
    assert set(names[48:60]) == {"lips"}
    assert set(names[17:27]) == {"brows"}
    assert set(names[27:31]) == {"nose"}
    assert set(names[0:17]) == {"skin"}
    # left/right landmark pairs are mirror images on the neutral face
    lm = ict_data.mean_shape[ict_data.landmarks68]
    for r, l in ((36, 45), (39, 42), (48, 54), (0, 16), (17, 26)):
        np.testing.assert_allclose(lm[r] * [-1, 1, 1], lm[l], atol=1e-3)


def test_uvs_match_the_upstream_obj_across_seams(ict_data, shared):
    release = read_ict_release(shared / ICT_ARCHIVE)
    obj = release.neutral
    src_v = ict_data.extra["source/vertex_index"]
    src_uv = ict_data.extra["source/uv_index"]
    # each triangle corner keeps the (vertex, uv) pair of the upstream polygon corner
    pairs = set()
    for poly, poly_uv in zip(obj.faces, obj.faces_uv):
        if poly.max() < topo.FACE_STOP:
            pairs.update(zip(poly.tolist(), poly_uv.tolist()))
    got = set(zip(src_v[ict_data.triangles].ravel().tolist(), src_uv[ict_data.triangles_uv].ravel().tolist()))
    assert got == pairs
    np.testing.assert_allclose(ict_data.uv, obj.uv[src_uv].astype(np.float32))
    # seams exist: some vertices carry two or more UVs, and those stay distinct
    per_vertex = {}
    for v, t in got:
        per_vertex.setdefault(v, set()).add(t)
    assert sum(len(s) > 1 for s in per_vertex.values()) > 50


def test_mediapipe_correspondence(ict_data):
    stats = ict_data.header["mediapipe"]["stats"]
    assert ict_data.extra["mediapipe/triangle"].shape == (468,)
    bary = ict_data.extra["mediapipe/barycentric"]
    np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-5)
    assert stats["final"]["median_mm"] < 3.0
    m = MorphableModel(ict_data)
    mp = m.mediapipe_points(m.mean_shape[None])[0].numpy()
    nose_tip = ict_data.mean_shape[ict_data.landmarks68[30]]
    assert np.linalg.norm(mp[4] - nose_tip) < 0.002  # MediaPipe vertex 4 is the nose tip (1 lies below it)
    chin = ict_data.mean_shape[ict_data.landmarks68[8]]
    assert np.linalg.norm(mp[175] - chin) < 0.004


def test_folder_and_archive_give_the_same_model(ict_data, ict_unpacked):
    from_folder = build_ict_face_model(ict_unpacked)
    for name in ("mean_shape", "identity_basis", "expression_basis", "triangles", "uv", "triangles_uv"):
        np.testing.assert_array_equal(getattr(from_folder, name), getattr(ict_data, name))
    assert from_folder.header["source"]["content_sha256"] == PINNED_CONTENT_SHA256
    assert from_folder.header["source"]["verified_pinned_release"]


@pytest.mark.parametrize("crop", ["narrow", "face_neck"])
def test_crop_presets(ict_unpacked, crop):
    data = build_ict_face_model(ict_unpacked, crop=crop)
    stop = topo.CROP_PRESETS[crop][0]
    assert data.extra["source/vertex_index"].max() < stop
    if crop == "face_neck":
        assert data.region_mask("neck_head").sum() > 1000
        assert data.n_vertices > topo.FACE_STOP


def test_truncated_archive_is_refused(shared, tmp_path):
    bad = tmp_path / "FaceXModel.tar.xz"
    bad.write_bytes((shared / ICT_ARCHIVE).read_bytes()[:2_000_000])
    with pytest.raises(AssetError, match="corrupt or truncated") as exc:
        read_ict_release(bad)
    assert str(bad) in str(exc.value)


def test_obj_with_wrong_vertex_count_is_refused(ict_unpacked, tmp_path):
    folder = tmp_path / "FaceXModel"
    shutil.copytree(ict_unpacked, folder)
    path = folder / "identity000.obj"
    lines = path.read_text().splitlines()
    first_v = next(i for i, ln in enumerate(lines) if ln.startswith("v "))
    del lines[first_v]
    path.write_text("\n".join(lines))
    with pytest.raises(AssetError, match="identity000.obj has 26718 vertices"):
        read_ict_release(folder)


def test_missing_shape_file_is_refused(ict_unpacked, tmp_path):
    folder = tmp_path / "FaceXModel"
    shutil.copytree(ict_unpacked, folder)
    (folder / "jawOpen.obj").unlink()
    with pytest.raises(AssetError, match="missing shape files: jawOpen.obj"):
        read_ict_release(folder)


def test_not_an_archive(tmp_path):
    bad = tmp_path / "FaceXModel.tar.xz"
    bad.write_text("this is not an archive")
    with pytest.raises(AssetError, match=str(bad)):
        read_ict_release(bad)
