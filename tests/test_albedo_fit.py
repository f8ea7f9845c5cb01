"""The data-driven albedo model: delighting, symmetry fill, PCA, its file, and `assets build` embedding it."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch

from mlanet.errors import AssetError, ChecksumError
from mlanet.geometry.rotations import euler_to_matrix
from mlanet.geometry.sh import LAMBERT_FACTORS, SH_C0, sh_shade
from mlanet.morphable.albedo.file import (
    SHIPPED_ALBEDO,
    AlbedoModelFile,
    resolve_albedo,
    topology_sha256,
)
from mlanet.morphable.albedo.fit import (
    DelightSettings,
    FaceSample,
    FitSettings,
    build_albedo_model,
    fit_lighting,
    mirror_map,
    pca_albedo,
    remove_lighting,
    shading_basis,
    symmetry_fill,
    unwrap,
)
from mlanet.morphable.model import MorphableModel
from mlanet.preprocess import PreprocessCfg
from mlanet.render.rasterizer import interpolate, rasterize

S = 160


def _lighting(rng: np.random.Generator) -> np.ndarray:
    """Plausible RGB SH lighting (3, 9): ambient ~1 plus a random directional part."""
    L = np.zeros((3, 9))
    L[:, 0] = (0.8 + 0.3 * rng.random(3)) / (LAMBERT_FACTORS[0] * SH_C0)
    L[:, 1:4] = rng.normal(scale=0.35, size=3)[None] * np.array([[1.0], [0.95], [0.9]])
    L[:, 4:] = rng.normal(scale=0.08, size=5)[None]
    return L


def _render(model: MorphableModel, albedo: np.ndarray, yaw_deg: float, lighting: np.ndarray):
    """Camera-frame vertices (1, V, 3) and an (1, 3, S, S) image of the shaded face, crop camera."""
    cam = PreprocessCfg(input_size=S).camera(1, dtype=torch.float64)
    R = euler_to_matrix(torch.tensor([[0.0, math.radians(yaw_deg), 0.0]], dtype=torch.float64))
    verts = model.mean_shape.double()[None] @ R.transpose(1, 2) + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    colour = sh_shade(torch.as_tensor(albedo)[None], model.normals(verts), torch.as_tensor(lighting)[None])
    frags = rasterize(verts, model.triangles, cam, S, S)
    img = interpolate(colour, frags, model.triangles).permute(0, 3, 1, 2)
    return verts, img


@pytest.fixture(scope="module")
def renders(synthetic_data):
    """Five renders of the synthetic face (its regional albedo) under known lighting and yaw."""
    model = MorphableModel(synthetic_data)
    rng = np.random.default_rng(3)
    true = synthetic_data.albedo_mean.astype(np.float64)
    out = []
    for yaw in (-25.0, -10.0, 0.0, 12.0, 28.0):
        L = _lighting(rng)
        v, img = _render(model, true, yaw, L)
        out.append((v, img, L))
    return model, true, out


def test_fit_lighting_recovers_known_lighting(synthetic_data, renders):
    model, true, out = renders
    v, _, L = out[2]
    n = model.normals(v)[0].numpy()
    colours = sh_shade(torch.as_tensor(true)[None], torch.as_tensor(n)[None], torch.as_tensor(L)[None])[0].numpy()
    w = np.ones(len(true))
    est = fit_lighting(colours, w, true, shading_basis(n), np.ones(len(true), bool), ridge=0.0)
    np.testing.assert_allclose(est, L, atol=1e-6)


@pytest.fixture(scope="module")
def unwrapped(renders):
    model, _, out = renders
    return unwrap(model, torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]))


def test_unwrap_samples_the_rendered_colours(renders, unwrapped):
    model, true, out = renders
    colours, weights, normals = unwrapped
    assert (weights > 0).mean() > 0.8 and weights.max() <= 1.0
    for i, (v, _, L) in enumerate(out):
        expected = sh_shade(torch.as_tensor(true)[None], model.normals(v), torch.as_tensor(L)[None])[0].numpy()
        m = weights[i] > 0
        assert np.median(np.abs(colours[i][m] - expected[m])) < 2e-3
        np.testing.assert_allclose(normals[i], model.normals(v)[0].numpy(), atol=1e-9)


def test_delighting_recovers_albedo_and_lighting_of_synthetic_renders(synthetic_data, renders, unwrapped):
    """Starting from the right pattern at the wrong brightness, the known albedo is a fixed point."""
    model, true, out = renders
    colours, weights, normals = unwrapped
    skin = synthetic_data.region_mask("skin", "nose")
    albedo, mean, lighting, _ = remove_lighting(
        colours, weights, normals, 0.8 * true, skin, skin, DelightSettings(tone_split=0.0, ridge=0.0)
    )
    seen = (weights > 0).sum(0) >= 3
    rel = np.abs(mean[seen] - 0.8 * true[seen]) / true[seen]
    assert np.median(rel) < 0.005 and np.percentile(rel, 95) < 0.02
    basis = shading_basis(normals)
    for i, (_, _, L) in enumerate(out):  # brightness moved from albedo to light: L / 0.8
        m = weights[i] > 0
        # (the coefficients themselves are ill-conditioned on half a sphere of normals; the shading is not)
        shade, shade_true = basis[i][m] @ lighting[i].T, basis[i][m] @ (L / 0.8).T
        assert np.median(np.abs(shade - shade_true) / np.abs(shade_true)) < 0.005
        assert np.median(np.abs(albedo[i][m] - 0.8 * true[m]) / true[m]) < 0.005


def test_delighting_learns_the_albedo_pattern_from_a_flat_start(synthetic_data, renders, unwrapped):
    """From a flat skin colour, the darker brows and redder lips come from the images."""
    colours, weights, normals = unwrapped
    _, true, _ = renders
    skin = synthetic_data.region_mask("skin", "nose")
    init = np.tile(true[skin].mean(0), (len(true), 1))
    _, mean, _, stats = remove_lighting(colours, weights, normals, init, skin, skin)
    seen = (weights > 0).sum(0) >= 3
    for region in ("brows", "lips"):
        m = synthetic_data.region_mask(region) & seen
        ratio_true = true[m].mean(0) / true[skin & seen].mean(0)
        ratio = mean[m].mean(0) / mean[skin & seen].mean(0)
        np.testing.assert_allclose(ratio, ratio_true, rtol=0.1)  # init ratio is 1 (brows: 0.5)
    rel = np.abs(mean[seen] - true[seen]) / true[seen]
    assert np.median(rel) < 0.05
    assert stats["iterations"] == DelightSettings().iterations


def test_delighting_fixes_the_brightness_to_the_reference(synthetic_data, renders, unwrapped):
    _, true, _ = renders
    colours, weights, normals = unwrapped
    skin = synthetic_data.region_mask("skin", "nose")
    luma = np.array([0.2126, 0.7152, 0.0722])
    _, mean, _, _ = remove_lighting(colours, weights, normals, 0.5 * true, skin, skin)
    assert (mean[skin] @ luma).mean() == pytest.approx((0.5 * true[skin] @ luma).mean(), rel=1e-6)


def test_mirror_map_pairs_left_and_right(synthetic_data):
    m = mirror_map(synthetic_data.mean_shape)
    ok = m >= 0
    assert ok.mean() > 0.95
    x = synthetic_data.mean_shape[:, 0]
    np.testing.assert_allclose(x[m[ok]], -x[ok], atol=1e-6)
    np.testing.assert_array_equal(m[m[ok]], np.nonzero(ok)[0])


def test_symmetry_fill():
    albedo = np.arange(2 * 4 * 3, dtype=np.float64).reshape(2, 4, 3)
    weights = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    mirror = np.array([1, 0, 3, -1])  # 0 <-> 1, 2 -> 3, 3 has none
    fallback = np.full((4, 3), -1.0)
    out, stats = symmetry_fill(albedo, weights, mirror, fallback)
    np.testing.assert_array_equal(out[0, 0], albedo[0, 0])  # seen: kept
    np.testing.assert_array_equal(out[0, 1], albedo[0, 0])  # unseen, mirror seen: mirrored
    np.testing.assert_array_equal(out[0, 2], fallback[2])  # unseen, mirror unseen: fallback
    np.testing.assert_array_equal(out[0, 3], fallback[3])  # unseen, no mirror: fallback
    np.testing.assert_array_equal(out[1, 2], albedo[1, 3])
    np.testing.assert_array_equal(out[1, [0, 1, 3]], albedo[1, [0, 1, 3]])
    assert stats["observed"] == pytest.approx(4 / 8) and stats["mirrored"] == pytest.approx(2 / 8)


def test_pca_shapes_and_normalisation():
    rng = np.random.default_rng(0)
    V, N = 50, 400
    modes = rng.normal(size=(3, V * 3))
    modes /= np.linalg.norm(modes, axis=1, keepdims=True)
    modes = np.linalg.qr(modes.T)[0].T  # orthonormal
    sd = np.array([0.3, 0.2, 0.1])
    coeffs = rng.normal(size=(N, 3)) * sd
    base = rng.random(V * 3)
    X = (base + coeffs @ modes).reshape(N, V, 3)
    mean, basis, ratio = pca_albedo(X, 5)
    assert mean.shape == (V, 3) and basis.shape == (5, V, 3) and ratio.shape == (5,)
    np.testing.assert_allclose(mean, X.mean(0))
    # each basis vector is one standard deviation of the data along it
    np.testing.assert_allclose(np.linalg.norm(basis[:3].reshape(3, -1), axis=1), sd, rtol=0.1)
    assert np.linalg.norm(basis[3:]) < 1e-8  # rank-3 data
    assert ratio[:3].sum() == pytest.approx(1.0) and np.all(np.diff(ratio) <= 1e-12)
    # more components than images: padded with zero modes
    _, b2, r2 = pca_albedo(X[:3], 5)
    assert b2.shape == (5, V, 3) and np.all(b2[3:] == 0) and np.all(r2[3:] == 0)


def test_pca_smoothing_removes_vertex_noise(synthetic_data):
    rng = np.random.default_rng(1)
    V = synthetic_data.n_vertices
    X = 0.5 + 0.05 * rng.normal(size=(20, V, 3))
    _, rough, _ = pca_albedo(X, 3)
    _, smooth, _ = pca_albedo(X, 3, synthetic_data.triangles)
    assert np.abs(smooth).mean() < 0.6 * np.abs(rough).mean()


def _albedo_file(data, K: int = 10) -> AlbedoModelFile:
    rng = np.random.default_rng(0)
    V = data.n_vertices
    return AlbedoModelFile(
        header={
            "id": "test-albedo",
            "face_model": {"model_id": data.model_id, "vertices": V, "triangles_sha256": topology_sha256(data.triangles)},
            "components": [f"pc{k:02d}" for k in range(K)],
            "sources": [{"name": "unit test", "terms": "test only"}],
            "terms": "test only",
        },
        mean=rng.random((V, 3)).astype(np.float32),
        basis=(0.01 * rng.normal(size=(K, V, 3))).astype(np.float32),
    )


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_albedo_file_round_trip(synthetic_data, tmp_path, dtype):
    f = _albedo_file(synthetic_data)
    path = f.save(tmp_path / "a.npz", dtype=dtype)
    g = AlbedoModelFile.load(path)
    tol = 0 if dtype == "float32" else 1e-3
    np.testing.assert_allclose(g.mean, f.mean, atol=tol)
    np.testing.assert_allclose(g.basis, f.basis, atol=tol)
    assert g.id == "test-albedo" and g.header["dtype"] == dtype and g.header["terms"] == "test only"
    g.check_topology(synthetic_data.triangles, synthetic_data.n_vertices)
    with np.load(path, allow_pickle=False) as npz:  # plain arrays, no pickle
        assert set(npz.files) == {"header", "albedo_mean", "albedo_basis"}


def test_albedo_file_refuses_tampered_truncated_and_foreign(synthetic_data, tmp_path):
    path = _albedo_file(synthetic_data).save(tmp_path / "a.npz")
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["albedo_mean"] = arrays["albedo_mean"].copy()
    arrays["albedo_mean"][0, 0] += 0.1
    tampered = tmp_path / "tampered.npz"
    np.savez_compressed(tampered, **arrays)
    with pytest.raises(ChecksumError, match="tampered.npz.*checksum"):
        AlbedoModelFile.load(tampered)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(AssetError, match="truncated.npz"):
        AlbedoModelFile.load(truncated)
    with pytest.raises(AssetError, match="no such albedo-model file"):
        AlbedoModelFile.load(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez_compressed(other, header=np.frombuffer(b'{"format": "x"}', dtype=np.uint8))
    with pytest.raises(AssetError, match="expected 'mlanet-albedo'"):
        AlbedoModelFile.load(other)
    assert zipfile.is_zipfile(path)


def test_albedo_file_refuses_another_topology(synthetic_data):
    f = _albedo_file(synthetic_data)
    flipped = synthetic_data.triangles[:, [0, 2, 1]]
    with pytest.raises(AssetError, match="built for face model synthetic-0.*--albedo regional"):
        f.check_topology(flipped, synthetic_data.n_vertices, source="x")
    with pytest.raises(AssetError, match="vertices"):
        f.check_topology(synthetic_data.triangles, synthetic_data.n_vertices + 1)


def test_resolve_albedo_choices(synthetic_data, tmp_path):
    said: list[str] = []
    assert resolve_albedo("regional", "face", said.append) == (None, None)
    assert resolve_albedo("auto", "narrow", said.append) == (None, None)
    assert any("notice" in s and "regional" in s for s in said)  # not silent
    path = _albedo_file(synthetic_data).save(tmp_path / "a.npz")
    model, where = resolve_albedo(str(path), "narrow", said.append)
    assert model is not None and model.id == "test-albedo" and where == path
    if SHIPPED_ALBEDO["face"].is_file():
        model, where = resolve_albedo(None, "face", said.append)
        assert model is not None and where == SHIPPED_ALBEDO["face"]


def test_build_albedo_model_end_to_end_on_synthetic_photos(synthetic_data):
    """Fit geometry to projected landmarks of posed synthetic faces, unwrap, delight, PCA."""
    model = MorphableModel(synthetic_data)
    rng = np.random.default_rng(5)
    cfg = PreprocessCfg(input_size=S)
    cam = cfg.camera(1, dtype=torch.float64)
    samples = []
    base = synthetic_data.albedo_mean.astype(np.float64)
    for i, yaw in enumerate((-20.0, -5.0, 5.0, 20.0)):
        tint = base * (1.0 + 0.1 * rng.normal(size=3))
        verts, img = _render(model, tint, yaw, _lighting(rng))
        lm = cam.project(verts[:, model.landmark_index])[0].numpy()
        image = (img[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        # treat the render as a whole photo; the builder crops it around the landmarks
        samples.append(FaceSample(name=f"face{i}", image=image, landmarks=lm))
    fit = FitSettings(input_size=S, steps_pose=100, steps_full=150)
    build = build_albedo_model(synthetic_data, samples, [{"name": "synthetic", "terms": "MIT"}],
                               albedo_id="synthetic-albedo", n_components=3, fit=fit)
    h = build.model.header
    assert build.model.basis.shape == (3, synthetic_data.n_vertices, 3)
    assert h["images"] == {"total": 4, "used": 4, "rejected": 0}
    assert h["fit"]["residual_median_px"] < 1.5
    assert h["terms"] == "MIT" and h["id"] == "synthetic-albedo"
    assert h["face_model"]["triangles_sha256"] == topology_sha256(synthetic_data.triangles)
    seen = build.model.mean[synthetic_data.region_mask("skin")]
    assert np.all(np.isfinite(build.model.mean)) and 0.3 < seen.mean() < 0.9


# ------------------------------------------------------------- `mlanet assets albedo` on training data
def test_regional_reference_ignores_the_embedded_albedo(synthetic_data):
    """The builder starts from (and is scaled to) the regional default, never the face model's own albedo."""
    from mlanet.morphable.albedo.fit import regional_reference

    ref = regional_reference(synthetic_data)
    np.testing.assert_allclose(ref, synthetic_data.albedo_mean, atol=1e-6)  # synthetic embeds the regional one
    other = _copy_face(synthetic_data)
    other.albedo_mean = np.full_like(other.albedo_mean, 0.9)
    np.testing.assert_array_equal(regional_reference(other), ref)


def _copy_face(data):
    import copy

    return copy.deepcopy(data)


def test_select_faces_shares_the_cap_in_proportion_and_spreads_the_picks():
    from mlanet.morphable.albedo.sources import select_faces

    assert [len(i) for i in select_faces([5, 3], None)] == [5, 3]
    assert [len(i) for i in select_faces([5, 3], 100)] == [5, 3]
    picks = select_faces([1500, 500], 200)
    assert [len(i) for i in picks] == [150, 50]
    assert picks[0][0] == 0 and picks[0][-1] == 1499 and np.all(np.diff(picks[0]) > 0)  # evenly spread
    assert sum(len(i) for i in select_faces([7, 7, 7], 10)) == 10
    for a, b in zip(select_faces([1500, 500], 200), picks):  # deterministic
        np.testing.assert_array_equal(a, b)


def test_crop_window_keeps_the_builders_crop_exactly():
    from mlanet.morphable.albedo.sources import crop_window
    from mlanet.preprocess import box_from_points, crop_image, image_to_tensor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    cfg = PreprocessCfg()
    for centre in ((200.0, 150.0), (30.0, 20.0), (390.0, 290.0)):  # inside, and over two corners
        lm = np.asarray(centre) + rng.uniform(-60, 60, (68, 2))
        x0, y0, x1, y1 = crop_window(image.shape, lm, cfg.roi_scale)
        full = crop_image(image_to_tensor(image), box_from_points(lm, cfg.roi_scale), 224)
        win_lm = lm - (x0, y0)
        win = crop_image(image_to_tensor(np.ascontiguousarray(image[y0:y1, x0:x1])),
                         box_from_points(win_lm, cfg.roi_scale), 224)
        torch.testing.assert_close(win, full, atol=1e-4, rtol=0)  # float32 rounding of the grid, << 1/255


def _photos(synthetic_data, n: int, seed: int = 5):
    """``n`` renders of the synthetic face (yaw, tint, lighting vary): (image uint8, 68 landmarks in pixels)."""
    model = MorphableModel(synthetic_data)
    rng = np.random.default_rng(seed)
    cam = PreprocessCfg(input_size=S).camera(1, dtype=torch.float64)
    base = synthetic_data.albedo_mean.astype(np.float64)
    out = []
    for yaw in np.linspace(-20.0, 20.0, n):
        verts, img = _render(model, base * (1.0 + 0.1 * rng.normal(size=3)), float(yaw), _lighting(rng))
        lm = cam.project(verts[:, model.landmark_index])[0].numpy()
        out.append(((img[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8), lm))
    return out


def _write_300w(root, photos, stems=None):
    """A 300-W folder: <stem>.png + <stem>.pts (1-based coordinates, as the release)."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    stems = stems or [f"helen_{i}" for i in range(len(photos))]
    for stem, (image, lm) in zip(stems, photos):
        Image.fromarray(image).save(root / f"{stem}.png")
        lines = ["version: 1", "n_points: 68", "{"] + [f"{x + 0.5:.3f} {y + 0.5:.3f}" for x, y in lm] + ["}"]
        (root / f"{stem}.pts").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def synthetic_face_file(synthetic_data, tmp_path_factory):
    return synthetic_data.save(tmp_path_factory.mktemp("face") / "synthetic.mlface.npz")


def _albedo_cli(*args: str) -> int:
    from mlanet.cli import main

    return main(["assets", "albedo", *map(str, args)])


def test_albedo_command_builds_from_300w_and_records_sources_terms_and_command(
        synthetic_data, synthetic_face_file, tmp_path, capsys):
    from mlanet.data.sources.w300 import TERMS as W300_TERMS

    root = _write_300w(tmp_path / "300w", _photos(synthetic_data, 4))
    out = tmp_path / "albedo.npz"
    assert _albedo_cli("--source", f"300w={root}", "--face-model", synthetic_face_file, "--out", out) == 0
    assert "faces used (of selected) per source: 300w 4/4" in capsys.readouterr().out
    f = AlbedoModelFile.load(out)
    h = f.header
    assert h["id"] == "mlanet-albedo-ict-v2" and f.n_components == synthetic_data.n_albedo
    (src,) = h["sources"]
    assert src["name"] == "300w" and src["path"] == str(root.resolve()) and src["terms"] == W300_TERMS
    assert src["counts"] == {"in_folder": 4, "with_landmarks": 4, "selected": 4, "used": 4, "rejected_by_fit": 0}
    assert src["faces"] == [f"300w:helen_{i}.png" for i in range(4)] and "ibug68" in src["landmarks"]["definition"]
    assert h["terms"] == W300_TERMS and h["images"] == {"total": 4, "used": 4, "rejected": 0}
    assert h["command"].startswith(f"mlanet assets albedo --source 300w={root.resolve()} --max-faces 2000 ")
    assert f"--face-model {synthetic_face_file}" in h["command"] and f"--out {out.resolve()}" in h["command"]
    assert "regional" in h["delighting"]["start_and_reference"]
    assert h["fit"]["residual_median_px"] < 1.5


def _write_video(path, frames):
    import av

    for codec in ("libx264", "mpeg4"):
        try:
            with av.open(str(path), "w") as c:
                st = c.add_stream(codec, rate=10)
                st.width, st.height, st.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
                for fr in frames:
                    for p in st.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                        c.mux(p)
                for p in st.encode():
                    c.mux(p)
            return path
        except Exception:  # noqa: BLE001 - encoder missing in this FFmpeg build: try the next
            continue
    pytest.skip("no H.264 or MPEG-4 encoder in this PyAV build")


def test_albedo_command_takes_video_frames_with_teacher_points_from_a_label_cache(
        synthetic_data, synthetic_face_file, tmp_path, capsys):
    from mlanet.data.labels import LabelCache, LabelEntry, annotation_digest, box_rule_for
    from mlanet.data.labels.labeller import ContentHasher
    from mlanet.data.sources import VideoFolder

    photos = _photos(synthetic_data, 6, seed=9)
    w300 = _write_300w(tmp_path / "300w", photos[:3])
    clips = tmp_path / "clips"
    clips.mkdir()
    _write_video(clips / "talk.mp4", [p[0] for p in photos[3:] for _ in range(2)])  # frames 0..5: faces 3,3,4,4,5,5
    # a label cache as `mlanet data label --every 1` leaves it, the teacher's points = the true landmarks;
    # in frame 4 the teacher found no face
    cache = LabelCache(tmp_path / "labels")
    hasher, entries = ContentHasher(), []
    for s in VideoFolder(clips, every=1):
        i = s.meta["frame_index"]
        entries.append(LabelEntry(key=s.key, content=hasher(s), box_rule=box_rule_for(s).tag,
                                  annotation=annotation_digest(s), status=0 if i != 4 else 1,
                                  t68=photos[3 + i // 2][1] if i != 4 else None))
    cache.write_shard("video-folder", entries, {"labeller_id": "L1"})
    cache.write_manifest("video-folder", {"labeller_id": "L1", "labeller": {"name": "fake", "terms": {"teacher": "T"}}})
    out = tmp_path / "albedo.npz"
    code = _albedo_cli("--source", f"300w={w300}", "--source", f"video-folder={clips}", "--labels", cache.root,
                       "--every", 2, "--face-model", synthetic_face_file, "--out", out)
    assert code == 0, capsys.readouterr().err
    h = AlbedoModelFile.load(out).header
    w, v = h["sources"]
    assert (w["name"], v["name"]) == ("300w", "video-folder")
    # frames 0, 2, 4 (every 2); frame 4 has no teacher points
    assert v["counts"] == {"in_folder": 3, "with_landmarks": 2, "selected": 2, "used": 2, "rejected_by_fit": 0}
    assert v["faces"] == ["video-folder:clips/talk.mp4#000000", "video-folder:clips/talk.mp4#000002"]
    assert v["skipped"] == {"no face found by the teacher": 1} and w["counts"]["used"] == 3
    assert v["landmarks"]["labeller_id"] == "L1" and v["landmarks"]["every"] == 2 and v["landmarks"]["terms"] == "T"
    assert "research use only" in v["terms"] and v["path"] == str(clips.resolve())
    assert h["terms"] == "; ".join(sorted({w["terms"], v["terms"]}))
    assert "--every 2" in h["command"] and f"--labels {cache.root.resolve()}" in h["command"]


@pytest.mark.parametrize("case", ["aflw2000_name", "dev_folder", "aflw2000_layout", "aflw_option", "list_option",
                                  "mtfl", "aflw-crops", "video_without_labels"])
def test_albedo_command_refuses_aflw2000_and_unfit_sources(case, synthetic_data, synthetic_face_file, tmp_path,
                                                           monkeypatch, capsys):
    """AFLW2000-3D (a file name, the dev folder, its layout, the old options) and unfit sources: exit 2, one line."""
    shared = tmp_path / "shared"
    dev = shared / "data" / "aflw2000-3d-dev"
    monkeypatch.setenv("MLANET_SHARED", str(shared))
    photos = _photos(synthetic_data, 2)
    root = tmp_path / "src"
    expect = {
        "aflw2000_name": "AFLW2000-3D file(s) (e.g. ['image04375.png', 'image04375.pts']); AFLW2000-3D is "
                         "validation only",
        "dev_folder": "is the AFLW2000-3D dev folder",
        "aflw2000_layout": "is in the AFLW2000-3D layout",
        "aflw_option": "--aflw: the albedo is no longer built from AFLW2000-3D (validation only)",
        "list_option": "--list: the albedo is no longer built from AFLW2000-3D (validation only)",
        "mtfl": "--source mtfl: not used for the albedo: its images are 80x80",
        "aflw-crops": "--source aflw-crops: not used for the albedo: its faces are 120x120 crops",
        "video_without_labels": "video frames have no landmarks; give --labels DIR",
    }[case]
    if case == "aflw2000_name":
        _write_300w(root, photos, ["helen_1", "image04375"])
    elif case == "dev_folder":  # names that pass the number rule: only the dev-folder rule refuses it
        root = _write_300w(dev, photos)
    elif case == "aflw2000_layout":
        _write_300w(root / "sub", photos, ["helen_1", "image01234"])
        (root / "sub" / "image01234.mat").write_bytes(b"MATLAB 5.0 MAT-file")
    else:
        _write_300w(root, photos)
    source = {"mtfl": "mtfl", "aflw-crops": "aflw-crops", "video_without_labels": "video-folder"}.get(case, "300w")
    args = ["--source", f"{source}={root}", "--face-model", synthetic_face_file, "--out", tmp_path / "a.npz"]
    if case == "aflw_option":
        args = ["--aflw", dev, "--out", tmp_path / "a.npz"]
    elif case == "list_option":
        args += ["--list", "aflw2000_dev_train"]
    elif case == "aflw2000_layout":
        args[1] = f"300w={root}"
    assert _albedo_cli(*args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and expect in err, err
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.assets
def test_albedo_command_on_real_300w_faces(shared, ict_model_file, tmp_path, monkeypatch, capsys):
    """A few real 300-W faces on the real ICT model; the real dev folder is refused."""
    monkeypatch.setenv("MLANET_SHARED", str(shared))
    w300 = shared / "data" / "train" / "300w"
    out = tmp_path / "albedo.npz"
    code = _albedo_cli("--source", f"300w={w300}", "--max-faces", 8, "--face-model", ict_model_file, "--out", out)
    assert code == 0, capsys.readouterr().err
    f = AlbedoModelFile.load(out)
    h = f.header
    (src,) = h["sources"]
    assert src["counts"]["in_folder"] == 1537 and src["counts"]["selected"] == 8 and src["counts"]["used"] >= 5
    assert {k.split(":")[1].split("_")[0] for k in src["faces"]} == {"afw", "helen"}  # spread over the folder
    assert "300-W" in h["terms"] and "aflw2000" not in json.dumps([src["path"], src["faces"]]).lower()
    assert h["fit"]["residual_used_median_px"] < 6.0
    skin = f.mean[ict_data_region(ict_model_file, "skin")]
    assert 0.3 < float(skin.mean()) < 0.8
    capsys.readouterr()
    assert _albedo_cli("--source", f"300w={shared / 'data' / 'aflw2000-3d-dev'}", "--face-model", ict_model_file,
                       "--out", tmp_path / "b.npz") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "AFLW2000-3D" in err and not (tmp_path / "b.npz").exists()


def ict_data_region(path, region: str) -> np.ndarray:
    from mlanet.morphable.data import FaceModelData

    return FaceModelData.load(path).region_mask(region)


@pytest.mark.assets
def test_shipped_albedo_file_matches_the_ict_face_model(ict_data):
    f = AlbedoModelFile.load(SHIPPED_ALBEDO["face"])
    f.check_topology(ict_data.triangles, ict_data.n_vertices)
    assert f.n_components == 10 and f.header["dtype"] == "float16"
    assert "research use only" in f.header["terms"]
    assert f.header["images"]["used"] >= 1000
    # built from training data only: 300-W and video frames, never AFLW2000-3D (validation only)
    assert {s["name"] for s in f.header["sources"]} <= {"300w", "video-folder"}
    assert all(s["terms"] and s["counts"]["used"] > 0 for s in f.header["sources"])
    assert f.header["command"].startswith("mlanet assets albedo --source 300w=")
    assert "aflw2000" not in json.dumps([[s["name"], s["path"], s["faces"]] for s in f.header["sources"]]).lower()
    from mlanet.data.sources import check_training_list

    check_training_list([k for s in f.header["sources"] for k in s["faces"]])
    skin = ict_data.region_mask("skin")
    assert 0.3 < float(f.mean[skin].mean()) < 0.8  # a skin albedo, not black/white


@pytest.mark.assets
def test_assets_build_embeds_the_data_driven_albedo(ict_data):
    """The session's ICT build uses the default (`auto`): the shipped albedo for the 'face' crop."""
    entry = ict_data.header["albedo_model"]
    assert entry["id"] == "mlanet-albedo-ict-v2"
    assert "research use only" in entry["terms"] and "research use only" in ict_data.header["terms"]
    assert entry["terms"] == "; ".join(sorted({s["terms"] for s in entry["sources"]}))
    assert {s["name"] for s in entry["sources"]} <= {"300w", "video-folder"}
    shipped = AlbedoModelFile.load(SHIPPED_ALBEDO["face"])
    np.testing.assert_allclose(ict_data.albedo_mean, shipped.mean)
    np.testing.assert_allclose(ict_data.albedo_basis, shipped.basis)


@pytest.mark.assets
def test_assets_build_regional_and_foreign_albedo(ict_unpacked, synthetic_data, tmp_path):
    from mlanet.morphable.albedo.regional import DEFAULT_ALBEDO_ID
    from mlanet.morphable.sources.ict import build_ict_face_model

    said: list[str] = []
    data = build_ict_face_model(ict_unpacked, crop="narrow", progress=said.append)  # auto, no shipped file: notice
    assert data.header["albedo_model"]["id"] == DEFAULT_ALBEDO_ID
    assert any(s.startswith("notice") for s in said)
    foreign = _albedo_file(synthetic_data).save(tmp_path / "foreign.npz")
    with pytest.raises(AssetError, match="foreign.npz: albedo model test-albedo was built for face model synthetic-0"):
        build_ict_face_model(ict_unpacked, crop="narrow", albedo=foreign)
