"""Writers of ``mlanet-video`` outputs: H.264 video, OBJ/PLY meshes, track GLB, CSV/npz/JSON.

Every file is read back with an independent reader written here (PyAV for video, a tiny
OBJ/PLY/GLB parser), not with the writers' own helpers.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mlanet.edge.writers import WriterError

D = np.diag([1.0, -1.0, -1.0])


def _no_temp_files(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def _rot(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch) (the project's convention), numpy."""
    cx, sx, cy, sy, cz, sz = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_importing_the_writers_is_light():
    mods = ", ".join(f"mlanet.edge.writers.{m}" for m in ("video", "meshes", "mesh_sequence", "gltf", "tables"))
    code = f"import sys, json, {mods}; print(json.dumps([m for m in ('av', 'cv2', 'torch') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


# ============================================================================ video
COLOURS = [(200, 40, 90), (30, 180, 60), (240, 240, 20)]


@pytest.fixture(autouse=False)
def needs_av():
    pytest.importorskip("av", reason="PyAV is part of the edge extra")


def _decode(path: Path) -> tuple[list[np.ndarray], object]:
    import av

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        rate = stream.average_rate
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
    return frames, rate


def test_video_solid_colours_round_trip(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter, count_video_frames

    path = tmp_path / "out.mp4"
    with H264VideoWriter(path, 25, 64, 48) as video:
        assert not path.exists()  # nothing at the target before close
        for i in range(12):
            video.write(np.full((48, 64, 3), COLOURS[i % 3], np.uint8))
        assert video.n_written == 12
    frames, rate = _decode(path)
    assert len(frames) == 12 and count_video_frames(path) == 12
    assert float(rate) == 25
    for i, f in enumerate(frames):
        assert f.shape == (48, 64, 3)
        np.testing.assert_allclose(f.reshape(-1, 3).mean(0), COLOURS[i % 3], atol=4)
    assert _no_temp_files(tmp_path)


def _textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8, w // 8, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(base, 8, 0), 8, 1))


def test_compose_i420_converts_only_the_changed_box(needs_av):
    """The overlay writer's shortcut: the base's own planes outside the box (exactly), the box converted
    like a whole frame (Y exactly, chroma within the filter's reach across the box edge)."""
    from mlanet.edge.writers.video import compose_i420, rgb_to_i420

    H, W = 96, 128
    image = _textured(H, W, 0)
    base = rgb_to_i420(image)
    overlay = image.copy()
    overlay[21:61, 33:91] = _textured(H, W, 1)[21:61, 33:91]  # odd box edges: widened to even ones
    box = (33, 21, 91, 61)
    out = compose_i420(base, overlay, box)
    full = rgb_to_i420(overlay)
    assert out.shape == base.shape and out.dtype == np.uint8
    inside = np.zeros((H, W), bool)
    inside[20:62, 32:92] = True
    y, y_full, y_base = out[:H], full[:H], base[:H]
    np.testing.assert_array_equal(y[inside], y_full[inside])
    np.testing.assert_array_equal(y[~inside], y_base[~inside])
    chroma, chroma_full, chroma_base = (a[H:].reshape(2, H // 2, W // 2).astype(int) for a in (out, full, base))
    c_inside = np.zeros((H // 2, W // 2), bool)
    c_inside[10:31, 16:46] = True
    np.testing.assert_array_equal(chroma[:, ~c_inside], chroma_base[:, ~c_inside])
    core = np.zeros_like(c_inside)
    core[12:29, 18:44] = True  # away from the box edge the chroma filter sees the same pixels
    np.testing.assert_array_equal(chroma[:, core], chroma_full[:, core])
    assert np.abs(chroma[:, c_inside] - chroma_full[:, c_inside]).max() <= 40  # edge texels: neighbours differ
    np.testing.assert_array_equal(compose_i420(base, overlay, (0, 0, 0, 0)), base)  # nothing changed
    np.testing.assert_array_equal(compose_i420(base, overlay, (-5, -5, W + 9, H + 9))[:H], full[:H])  # clipped


def test_video_with_base_planes_keeps_the_source_outside_the_box(tmp_path, needs_av):
    """write(base_yuv420=..., changed_box=...): pixels outside the box decode to the base frame's pixels
    as closely as a plain write does, and those inside to the overlay; a wrong-shape base is ignored."""
    from mlanet.edge.writers.video import H264VideoWriter, rgb_to_i420

    H, W = 96, 128
    image = _textured(H, W, 2)
    base = rgb_to_i420(image)
    overlay = image.copy()
    overlay[24:64, 40:88] = (250, 20, 20)
    box = (40, 24, 88, 64)
    for i, kwargs in enumerate([{}, {"base_yuv420": base, "changed_box": box},
                                {"base_yuv420": base[:-2], "changed_box": box}]):
        path = tmp_path / f"v{i}.mp4"
        with H264VideoWriter(path, 25, W, H, crf=0) as video:  # lossless: compare the planes' content
            for _ in range(3):
                video.write(overlay, **kwargs)
        frames, _ = _decode(path)
        assert len(frames) == 3
        if i == 0:
            plain = frames[0].astype(int)
            band = np.zeros((H, W), bool)  # where chroma filtering crosses the box edge (both ways)
            band[20:68, 36:92] = True
            band[28:60, 44:84] = False
        else:
            np.testing.assert_allclose(frames[0][~band].astype(int), plain[~band], atol=3)
            assert np.abs(frames[0][band].astype(int) - plain[band]).mean() < 8
    np.testing.assert_allclose(frames[0][30:60, 45:80].reshape(-1, 3).mean(0), (250, 20, 20), atol=4)


def test_video_odd_size_is_padded(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter

    path = tmp_path / "odd.mkv"
    img = np.zeros((21, 33, 3), np.uint8)
    img[:, :, 0] = 220
    with H264VideoWriter(path, 30, 33, 21) as video:
        assert video.encoded_size == (34, 22)
        for _ in range(3):
            video.write(img)
    frames, _ = _decode(path)
    assert len(frames) == 3 and frames[0].shape == (22, 34, 3)
    np.testing.assert_allclose(frames[0][:21, :33].reshape(-1, 3).mean(0), (220, 0, 0), atol=5)
    np.testing.assert_allclose(frames[0][21, :33].mean(0), (220, 0, 0), atol=8)  # replicated edge row


def test_video_exception_inside_with_keeps_frames_done(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter

    path = tmp_path / "interrupted.mp4"
    with pytest.raises(KeyboardInterrupt):
        with H264VideoWriter(path, 25, 32, 32) as video:
            for i in range(5):
                video.write(np.full((32, 32, 3), COLOURS[0], np.uint8))
            raise KeyboardInterrupt
    frames, _ = _decode(path)
    assert len(frames) == 5
    assert _no_temp_files(tmp_path)


def test_video_abort_and_empty_leave_the_target_alone(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter

    path = tmp_path / "keep.mp4"
    path.write_bytes(b"previous")
    video = H264VideoWriter(path, 25, 16, 16)
    video.write(np.zeros((16, 16, 3), np.uint8))
    video.abort()
    assert path.read_bytes() == b"previous" and _no_temp_files(tmp_path)
    with H264VideoWriter(path, 25, 16, 16) as video:
        pass
    assert video.close() is None and path.read_bytes() == b"previous" and _no_temp_files(tmp_path)


def test_video_bad_input_names_the_file(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter

    with pytest.raises(WriterError, match="out.avi"):
        H264VideoWriter(tmp_path / "out.avi", 25, 16, 16)
    with H264VideoWriter(tmp_path / "v.mp4", 25, 16, 16) as video:
        with pytest.raises(ValueError, match=r"v\.mp4.*\(16, 16, 3\) uint8"):
            video.write(np.zeros((16, 17, 3), np.uint8))
        with pytest.raises(ValueError, match="v.mp4"):
            video.write(np.zeros((16, 16, 3), np.float32))
        video.write(np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(WriterError, match="closed"):
        video.write(np.zeros((16, 16, 3), np.uint8))


def test_video_resume_reencodes_the_first_frames(tmp_path, needs_av):
    from mlanet.edge.writers.video import H264VideoWriter

    path = tmp_path / "resume.mp4"
    greys = [10 + 20 * i for i in range(10)]
    with H264VideoWriter(path, 25, 32, 24) as video:
        for g in greys:
            video.write(np.full((24, 32, 3), g, np.uint8))
    with H264VideoWriter(path, 25, 32, 24) as video:
        video.resume_from(path, 6)  # the usual --resume case: read the target, replace it on close
        assert video.n_written == 6
        for _ in range(3):
            video.write(np.full((24, 32, 3), COLOURS[1], np.uint8))
    frames, _ = _decode(path)
    assert len(frames) == 9
    for f, g in zip(frames[:6], greys[:6]):
        np.testing.assert_allclose(f.mean(), g, atol=3)
    for f in frames[6:]:
        np.testing.assert_allclose(f.reshape(-1, 3).mean(0), COLOURS[1], atol=4)

    with pytest.raises(WriterError, match="only 9"):
        with H264VideoWriter(path, 25, 32, 24) as video:
            video.resume_from(path, 20)
    assert video.closed and len(_decode(path)[0]) == 9  # a failed resume leaves the target as it was
    with pytest.raises(WriterError, match="32x24"):
        with H264VideoWriter(tmp_path / "other.mp4", 25, 48, 24) as video:
            video.resume_from(path, 2)
    assert not (tmp_path / "other.mp4").exists() and _no_temp_files(tmp_path)


# ============================================================================ meshes
def _face_mesh(synthetic_data):
    """The synthetic face with a UV seam: the left half of the triangles uses duplicated UVs."""
    v = synthetic_data.mean_shape.astype(np.float64)
    tri = synthetic_data.triangles.astype(np.int64)
    uv = synthetic_data.uv.astype(np.float64)
    tuv = synthetic_data.triangles_uv.astype(np.int64).copy()
    left = v[tri].mean(axis=1)[:, 0] < 0
    used = np.unique(tuv[left])
    remap = np.full(len(uv), -1)
    remap[used] = len(uv) + np.arange(len(used))
    uv = np.concatenate([uv, uv[used] * 0.5])  # a separate UV island
    tuv[left] = remap[tuv[left]]
    return v, tri, uv, tuv


def _face_normals(v: np.ndarray, tri: np.ndarray) -> np.ndarray:
    return np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])


def _parse_obj(path: Path) -> dict:
    out: dict = {"v": [], "vt": [], "vn": [], "f": [], "comments": [], "mtllib": None}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(" ")
        if key == "#":
            out["comments"].append(rest)
        elif key in ("v", "vt", "vn"):
            out[key].append([float(x) for x in rest.split()])
        elif key == "f":
            out["f"].append([[int(x) if x else 0 for x in c.split("/")] for c in rest.split()])
        elif key == "mtllib":
            out["mtllib"] = rest
    return {k: (np.array(v) if k in ("v", "vt", "vn", "f") else v) for k, v in out.items()}


def test_obj_y_up_frame_indices_uv_and_texture(tmp_path, synthetic_data):
    cv2 = pytest.importorskip("cv2")
    from mlanet.edge.writers.meshes import write_obj

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    v_cam = v + [0.0, 0.0, 0.6]  # a face looking at the camera
    tex = np.zeros((16, 32, 3), np.uint8)
    tex[:, :16] = (255, 0, 0)
    path = write_obj(tmp_path / "f0001.obj", v_cam, tri, uv, tuv, texture_png=tex)
    obj = _parse_obj(path)
    assert any("y-up" in c for c in obj["comments"][:3])
    np.testing.assert_allclose(obj["v"], v_cam * [1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(obj["vt"], uv, atol=1e-6)
    f = obj["f"]  # (F, 3 corners, [v, vt])
    np.testing.assert_array_equal(f[:, :, 0] - 1, tri)
    np.testing.assert_array_equal(f[:, :, 1] - 1, tuv)
    # Winding: front faces point at the camera in the OpenCV frame (normal z < 0) and at the
    # viewer (+Z) in the file; the forehead (-y in the model frame) is up (+y) in the file.
    assert (_face_normals(v_cam, tri)[:, 2] < 0).mean() > 0.95
    assert (_face_normals(obj["v"], f[:, :, 0] - 1)[:, 2] > 0).mean() > 0.95
    assert obj["v"][np.argmin(v[:, 1]), 1] == obj["v"][:, 1].max()
    # Material and texture.
    mtl = (tmp_path / obj["mtllib"]).read_text()
    assert "map_Kd f0001.png" in mtl
    png = cv2.imread(str(tmp_path / "f0001.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(png[..., ::-1], tex)
    assert _no_temp_files(tmp_path)


def test_obj_with_normals_and_shared_texture(tmp_path, synthetic_data):
    from mlanet.edge.writers.meshes import write_obj

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    n = np.tile([0.0, 0.0, -1.0], (len(v), 1))
    shared = tmp_path / "tex" / "face.png"
    shared.parent.mkdir()
    shared.write_bytes(b"\x89PNG\r\n\x1a\n")
    path = write_obj(tmp_path / "seq" / "f0002.obj", v, tri, uv, tuv, texture_png=shared, normals=n)
    obj = _parse_obj(path)
    np.testing.assert_allclose(obj["vn"], n * [1, -1, -1])
    np.testing.assert_array_equal(obj["f"][:, :, 2] - 1, tri)
    assert "map_Kd ../tex/face.png" in (path.parent / "f0002.mtl").read_text()
    assert not (path.parent / "f0002.png").exists()
    # Without UVs, plain "f a b c"; y_up=False keeps the OpenCV frame.
    plain = _parse_obj(write_obj(tmp_path / "plain.obj", v, tri, y_up=False))
    np.testing.assert_allclose(plain["v"], v, atol=1e-6)
    np.testing.assert_array_equal(plain["f"][:, :, 0] - 1, tri)


def test_mesh_bad_input_names_the_file_and_keeps_the_old_one(tmp_path, synthetic_data):
    from mlanet.edge.writers.meshes import write_obj, write_ply

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    path = tmp_path / "m.obj"
    path.write_text("old")
    with pytest.raises(ValueError, match=r"m\.obj.*triangle indices"):
        write_obj(path, v[:10], tri, uv, tuv)
    with pytest.raises(ValueError, match="m.obj"):
        write_obj(path, v, tri, uv, tuv[:5])
    with pytest.raises(ValueError, match="m.ply"):
        write_ply(tmp_path / "m.ply", v, tri, colors=np.zeros((3, 3)))
    assert path.read_text() == "old" and _no_temp_files(tmp_path)


def _parse_ply(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    types = {"float": "<f4", "uchar": "u1", "int": "<i4"}
    elements: list[tuple[str, int, list]] = []
    for line in header:
        parts = line.split()
        if parts[0] == "element":
            elements.append((parts[1], int(parts[2]), []))
        elif parts[0] == "property":
            elements[-1][2].append(parts[1:])
    arrays = []
    offset = end
    for name, count, props in elements:
        fields: list[tuple] = []
        if name == "face":  # fixed-size lists: 3 indices, 6 texcoords (checked through the counts)
            for p in props:
                assert p[0] == "list" and p[1] == "uchar"
                size = 3 if p[3] == "vertex_indices" else 6
                fields += [("n_" + p[3], "u1"), (p[3], types[p[2]], (size,))]
        else:
            fields = [(p[1], types[p[0]]) for p in props]
        dt = np.dtype(fields)
        arrays.append(np.frombuffer(data, dtype=dt, count=count, offset=offset))
        offset += dt.itemsize * count
    assert offset == len(data)
    return header, arrays[0], arrays[1]


def test_ply_binary_layout(tmp_path, synthetic_data):
    from mlanet.edge.writers.meshes import write_ply

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    colours = np.linspace(0, 1, len(v) * 3).reshape(-1, 3)
    path = write_ply(tmp_path / "m.ply", v, tri, uv, tuv, colors=colours)
    header, vert, face = _parse_ply(path)
    assert any("y-up" in line for line in header)
    assert "property list uchar int vertex_indices" in header and "property list uchar float texcoord" in header
    np.testing.assert_allclose(np.stack([vert["x"], vert["y"], vert["z"]], 1), v * [1, -1, -1], atol=1e-7)
    np.testing.assert_array_equal(np.stack([vert["red"], vert["green"], vert["blue"]], 1), np.round(colours * 255))
    assert np.all(face["n_vertex_indices"] == 3) and np.all(face["n_texcoord"] == 6)
    np.testing.assert_array_equal(face["vertex_indices"], tri)
    np.testing.assert_allclose(face["texcoord"], uv[tuv].reshape(-1, 6), atol=1e-7)
    # Without UVs or colours: just positions and indices.
    header, vert, face = _parse_ply(write_ply(tmp_path / "p.ply", v, tri))
    assert vert.dtype.names == ("x", "y", "z") and face.dtype.names == ("n_vertex_indices", "vertex_indices")


# ============================================================================ GLB
def _read_glb(path: Path):
    """A minimal, independent GLB reader that also checks the container rules."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    jlen, jtype = struct.unpack_from("<I4s", data, 12)
    assert jtype == b"JSON" and jlen % 4 == 0
    jbytes = data[20:20 + jlen]
    assert jbytes.rstrip(b" ").endswith(b"}")  # padded with spaces
    gltf = json.loads(jbytes)
    blen, btype = struct.unpack_from("<I4s", data, 20 + jlen)
    assert btype == b"BIN\x00" and blen % 4 == 0
    binary = data[28 + jlen:28 + jlen + blen]
    assert 28 + jlen + blen == len(data)
    assert gltf["buffers"][0]["byteLength"] <= blen

    def accessor(i: int) -> np.ndarray:
        acc = gltf["accessors"][i]
        bv = gltf["bufferViews"][acc["bufferView"]]
        n = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
        dt = {5126: "<f4", 5125: "<u4"}[acc["componentType"]]
        start = bv.get("byteOffset", 0) + acc.get("byteOffset", 0)
        assert acc.get("byteOffset", 0) + acc["count"] * n * 4 <= bv["byteLength"]
        a = np.frombuffer(binary, dtype=dt, count=acc["count"] * n, offset=start)
        return a.reshape(acc["count"], n) if n > 1 else a

    return gltf, binary, accessor


def _track(n_frames: int = 8):
    times = np.arange(n_frames) / 30.0 + 1.0
    rng = np.random.default_rng(3)
    rotations = np.stack([_rot(0.2 * np.sin(i), 0.3 * np.cos(i), 0.1 * i) for i in range(n_frames)])
    translations = np.stack([[0.01 * i, -0.02, 0.6 + 0.01 * i] for i in range(n_frames)])
    return times, rng, rotations, translations


def test_glb_structure_geometry_and_animation(tmp_path, synthetic_data):
    from mlanet.edge.writers.gltf import write_track_glb

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    basis = synthetic_data.expression_basis.astype(np.float64)
    names = ["jawOpen", None, "mouthSmileLeft", "mouthSmileRight", None, "eyeBlinkLeft"]
    keep = [i for i, n in enumerate(names) if n]
    times, rng, rotations, translations = _track()
    weights = rng.uniform(0, 1, (len(times), len(names)))
    tex = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = write_track_glb(
        tmp_path / "track0.glb", neutral_vertices=v, triangles=tri, uv=uv, triangles_uv=tuv,
        expression_basis=basis, morph_names=names, times_s=times, weights=weights,
        rotations=rotations, translations=translations, texture_png=tex, frames=np.arange(30, 38),
    )
    gltf, binary, acc = _read_glb(path)
    assert gltf["asset"]["version"] == "2.0" and gltf["asset"]["generator"]
    for bv in gltf["bufferViews"]:
        assert bv["byteOffset"] % 4 == 0 and "byteStride" not in bv
        assert bv["byteOffset"] + bv["byteLength"] <= len(binary)

    prim = gltf["meshes"][0]["primitives"][0]
    pos = acc(prim["attributes"]["POSITION"]).astype(np.float64)
    nrm = acc(prim["attributes"]["NORMAL"]).astype(np.float64)
    tex_uv = acc(prim["attributes"]["TEXCOORD_0"]).astype(np.float64)
    idx = acc(prim["indices"]).reshape(-1, 3)
    assert gltf["accessors"][prim["indices"]]["componentType"] == 5125
    assert idx.max() < len(pos) and len(idx) == len(tri)
    assert len(v) < len(pos) <= len(v) + len(uv)  # split at the seam only
    pacc = gltf["accessors"][prim["attributes"]["POSITION"]]
    np.testing.assert_array_equal(pacc["min"], pos.min(0).astype(np.float32))
    np.testing.assert_array_equal(pacc["max"], pos.max(0).astype(np.float32))
    # Every triangle corner: position D @ v, texture coordinate (u, 1 - v).
    np.testing.assert_allclose(pos[idx], (v @ D)[tri], atol=1e-6)
    np.testing.assert_allclose(tex_uv[idx], (uv * [1, -1] + [0, 1])[tuv], atol=1e-6)
    # Unit normals that agree with the (still counter-clockwise) winding; the face looks at +Z.
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1, atol=1e-5)
    fn = _face_normals(pos, idx)
    assert (np.einsum("fc,fc->f", fn, nrm[idx].mean(1)) > 0).mean() > 0.99
    assert (fn[:, 2] > 0).mean() > 0.95

    # Morph targets: one per named expression, named with the given (ARKit) names.
    assert gltf["meshes"][0]["extras"]["targetNames"] == [names[i] for i in keep]
    assert gltf["meshes"][0]["weights"] == [0.0] * len(keep)
    assert len(prim["targets"]) == len(keep)
    for k, target in zip(keep, prim["targets"]):
        disp = acc(target["POSITION"]).astype(np.float64)
        a = gltf["accessors"][target["POSITION"]]
        assert "min" in a and "max" in a
        np.testing.assert_allclose(disp[idx], (basis[k] @ D)[tri], atol=1e-7)

    # Animation: shared input = times; weights, unit sign-continuous quaternions, translations.
    (anim,) = gltf["animations"]
    assert anim["extras"]["frames"] == list(range(30, 38))
    channels = {c["target"]["path"]: anim["samplers"][c["sampler"]] for c in anim["channels"]}
    assert {c["target"]["node"] for c in anim["channels"]} == {0} and gltf["nodes"][0]["mesh"] == 0
    assert set(channels) == {"weights", "rotation", "translation"}
    for s in channels.values():
        assert s["interpolation"] == "LINEAR"
        t_in = acc(s["input"])
        np.testing.assert_array_equal(t_in, times.astype(np.float32))
        assert np.all(np.diff(t_in) > 0)
        tacc = gltf["accessors"][s["input"]]
        assert tacc["min"] == [float(t_in[0])] and tacc["max"] == [float(t_in[-1])]
    w_out = acc(channels["weights"]["output"])
    assert w_out.shape == (len(times) * len(keep),)
    np.testing.assert_allclose(w_out.reshape(len(times), -1), weights[:, keep], atol=1e-6)
    q = acc(channels["rotation"]["output"]).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-6)
    assert np.all(np.einsum("nc,nc->n", q[1:], q[:-1]) >= 0)
    R_gl = _quat_to_matrix(q)
    np.testing.assert_allclose(R_gl, D @ rotations @ D, atol=1e-6)
    tr = acc(channels["translation"]["output"]).astype(np.float64)
    np.testing.assert_allclose(tr, translations @ D, atol=1e-6)

    # End to end: node transform of the morphed mesh = D @ camera-frame vertices, every frame.
    for i in range(len(times)):
        morphed = pos + sum(w_out.reshape(len(times), -1)[i, j] * acc(t["POSITION"]) for j, t in enumerate(prim["targets"]))
        world = morphed @ R_gl[i].T + tr[i]
        v_cam = (v + np.einsum("k,kvc->vc", weights[i, keep], basis[keep])) @ rotations[i].T + translations[i]
        np.testing.assert_allclose(world[idx], (v_cam @ D)[tri], atol=2e-6)

    # Embedded texture.
    cv2 = pytest.importorskip("cv2")

    img = gltf["images"][0]
    assert img["mimeType"] == "image/png"
    bv = gltf["bufferViews"][img["bufferView"]]
    png = np.frombuffer(binary[bv["byteOffset"]:bv["byteOffset"] + bv["byteLength"]], np.uint8)
    np.testing.assert_array_equal(cv2.imdecode(png, cv2.IMREAD_COLOR)[..., ::-1], tex)
    mat = gltf["materials"][prim["material"]]
    assert gltf["textures"][mat["pbrMetallicRoughness"]["baseColorTexture"]["index"]]["source"] == 0
    assert _no_temp_files(tmp_path)


def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def test_quaternions_all_branches_and_sign_continuity():
    from mlanet.edge.writers.gltf import matrices_to_quaternions, quaternions_to_matrices

    angles = np.linspace(0, 4 * np.pi, 97)  # past pi: the raw quaternion would flip sign
    for axis in range(3):
        R = np.stack([_rot(*(a if k == axis else 0.0 for k in range(3))) for a in angles])
        q = matrices_to_quaternions(R)
        np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, atol=1e-12)
        assert np.all(np.einsum("nc,nc->n", q[1:], q[:-1]) > 0)
        np.testing.assert_allclose(_quat_to_matrix(q), R, atol=1e-12)
    R = np.stack([_rot(*a) for a in np.random.default_rng(0).uniform(-np.pi, np.pi, (200, 3))])
    np.testing.assert_allclose(quaternions_to_matrices(matrices_to_quaternions(R)), R, atol=1e-12)
    # 180-degree turns about each axis (trace -1: the diagonal branches).
    for R in (np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]), np.diag([-1.0, -1, 1])):
        np.testing.assert_allclose(_quat_to_matrix(matrices_to_quaternions(R[None])), R[None], atol=1e-12)


def test_glb_without_texture_targets_or_frames(tmp_path, synthetic_data):
    from mlanet.edge.writers.gltf import write_track_glb

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    kw = dict(neutral_vertices=v, triangles=tri, uv=uv, triangles_uv=tuv, expression_basis=synthetic_data.expression_basis)
    path = write_track_glb(tmp_path / "a.glb", morph_names=[None] * 6, times_s=[], weights=np.zeros((0, 6)),
                           rotations=np.zeros((0, 3, 3)), translations=np.zeros((0, 3)), **kw)
    gltf, _, _ = _read_glb(path)
    assert "animations" not in gltf and "targets" not in gltf["meshes"][0]["primitives"][0]
    assert "images" not in gltf and "baseColorFactor" in gltf["materials"][0]["pbrMetallicRoughness"]

    times, rng, rotations, translations = _track(3)
    good = dict(times_s=times, weights=np.zeros((3, 6)), rotations=rotations, translations=translations, **kw)
    with pytest.raises(ValueError, match=r"b\.glb.*duplicate morph target names \['jawOpen'\]"):
        write_track_glb(tmp_path / "b.glb", morph_names=["jawOpen"] * 2 + [None] * 4, **good)
    with pytest.raises(ValueError, match="strictly increasing"):
        write_track_glb(tmp_path / "b.glb", morph_names=[None] * 6, **{**good, "times_s": times[::-1]})
    mirrored = rotations.copy()
    mirrored[1] = mirrored[1] @ np.diag([1.0, 1.0, -1.0])  # orthonormal, det -1
    with pytest.raises(ValueError, match=r"rotations\[1\] is not a rotation.*det = -1"):
        write_track_glb(tmp_path / "b.glb", morph_names=[None] * 6, **{**good, "rotations": mirrored})
    assert not (tmp_path / "b.glb").exists()


def test_glb_track_writer_interrupt_and_resume(tmp_path, synthetic_data):
    from mlanet.edge.writers.gltf import GlbTrackWriter, read_track_animation

    v, tri, uv, tuv = _face_mesh(synthetic_data)
    names = ["jawOpen", None, "a", "b", "c", "d"]
    mesh = dict(neutral_vertices=v, triangles=tri, uv=uv, triangles_uv=tuv,
                expression_basis=synthetic_data.expression_basis, morph_names=names)
    times, rng, rotations, translations = _track(8)
    weights = rng.uniform(0, 1, (8, 6))
    path = tmp_path / "track.glb"
    with pytest.raises(KeyboardInterrupt):
        with GlbTrackWriter(path, **mesh) as glb:
            for i in range(6):
                glb.add(10 + i, times[i], weights[i], rotations[i], translations[i])
            raise KeyboardInterrupt
    got = read_track_animation(path)
    assert got["frames"].tolist() == list(range(10, 16))
    # --resume from frame 14: frames 10..13 kept, 14.. recomputed.
    with GlbTrackWriter(path, **mesh) as glb:
        assert glb.resume_from(path, 14) == 4
        for i in range(4, 8):
            glb.add(10 + i, times[i], weights[i], rotations[i], translations[i])
    got = read_track_animation(path)
    assert got["frames"].tolist() == list(range(10, 18))
    np.testing.assert_allclose(got["times_s"], times, atol=1e-6)
    np.testing.assert_allclose(got["weights"], weights[:, [0, 2, 3, 4, 5]], atol=1e-6)
    np.testing.assert_allclose(got["rotations"], rotations, atol=1e-6)
    np.testing.assert_allclose(got["translations"], translations, atol=1e-6)
    with pytest.raises(WriterError, match="track.glb.*differ"):
        with GlbTrackWriter(tmp_path / "x.glb", **{**mesh, "morph_names": [None] * 6}) as glb:
            glb.resume_from(path, 3)
    assert not (tmp_path / "x.glb").exists()
    # An error before the first frame never replaces an earlier file with an empty track.
    before = path.read_bytes()
    with pytest.raises(RuntimeError):
        with GlbTrackWriter(path, **mesh):
            raise RuntimeError("pipeline failed at start-up")
    assert path.read_bytes() == before and _no_temp_files(tmp_path)


# ============================================================================ tables
def test_arkit_mapping_merges_shared_names():
    from mlanet.edge.writers.tables import ArkitMapping

    m = ArkitMapping.from_names(
        ["browInnerUp_L", "browInnerUp_R", "jawOpen", "cheekRaiser_L"],
        {"browInnerUp_L": "browInnerUp", "browInnerUp_R": "browInnerUp", "jawOpen": "jawOpen", "cheekRaiser_L": None},
    )
    assert m.names == ("browInnerUp", "jawOpen")
    np.testing.assert_allclose(m.weights([0.2, 0.6, 0.5, 0.9]), [0.4, 0.5])
    basis = np.arange(4 * 2 * 3, dtype=float).reshape(4, 2, 3)
    merged = m.basis(basis)
    np.testing.assert_allclose(merged[0], basis[0] + basis[1])
    np.testing.assert_allclose(merged[1], basis[2])
    # Symmetric motion is reproduced exactly by the merged shape.
    w = np.array([0.3, 0.3, 0.7, 0.0])
    np.testing.assert_allclose(np.einsum("a,avc->vc", m.weights(w), merged), np.einsum("k,kvc->vc", w[:3], basis[:3]))


def test_blendshape_csv_rows_flush_and_resume(tmp_path):
    from mlanet.edge.writers.tables import BlendshapeCsvWriter, read_blendshape_csv

    path = tmp_path / "blendshapes.csv"
    names = ["jawOpen", "eyeBlinkLeft"]
    csv = BlendshapeCsvWriter(path, names)
    for f in range(5):
        for track in (0, 1):
            csv.write(f, f / 30, track, [f / 10, track])
    # flushed row by row: readable while open (what Ctrl-C would leave)
    lines = path.read_text().splitlines()
    assert lines[0] == "frame,time_s,track_id,jawOpen,eyeBlinkLeft" and len(lines) == 11
    assert lines[3] == "1,0.033333,0,0.1,0"
    csv.close()
    with open(path, "a") as fh:
        fh.write("5,0.16")  # a line cut by a hard kill
    with BlendshapeCsvWriter(path, names, resume_before_frame=3) as csv:
        assert csv.n_rows == 6
        csv.write(3, 0.1, 0, [0.9, 0.0])
    table = read_blendshape_csv(path)
    assert table["names"] == names
    assert table["frame"].tolist() == [0, 0, 1, 1, 2, 2, 3]
    np.testing.assert_allclose(table["weights"][-1], [0.9, 0.0])
    np.testing.assert_allclose(table["time_s"][:2], [0, 0])
    assert table["track_id"].tolist() == [0, 1] * 3 + [0]
    with pytest.raises(WriterError, match=r"blendshapes\.csv.*header differs.*unexpected \['eyeBlinkLeft'\]"):
        BlendshapeCsvWriter(path, ["jawOpen"], resume_before_frame=2)
    assert len(read_blendshape_csv(path)["frame"]) == 7  # refused resume changed nothing
    with BlendshapeCsvWriter(path, ["jawOpen"]) as csv:  # a new run replaces the file
        with pytest.raises(ValueError, match="blendshapes.csv"):
            csv.write(0, 0.0, 0, [1.0, 2.0])
    assert path.read_text() == "frame,time_s,track_id,jawOpen\n"
    with pytest.raises(ValueError, match="invalid CSV column"):
        BlendshapeCsvWriter(tmp_path / "bad.csv", ["a,b"])
    with pytest.raises(ValueError, match=r"bad\.csv: duplicate column names \['cheekPuff'\].*ArkitMapping"):
        BlendshapeCsvWriter(tmp_path / "bad.csv", ["cheekPuff", "jawOpen", "cheekPuff"])
    with BlendshapeCsvWriter(tmp_path / "new.csv", names, resume_before_frame=4) as csv:  # nothing to resume
        assert csv.n_rows == 0
    assert _no_temp_files(tmp_path)


def test_params_npz_and_json(tmp_path):
    from mlanet.edge.writers.tables import write_json, write_params_npz

    path = write_params_npz(tmp_path / "params.npz", params=np.ones((3, 5), np.float32), frames=np.arange(3))
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["params"], np.ones((3, 5)))
        assert npz["frames"].tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"bad\.npz.*'x'.*object"):
        write_params_npz(tmp_path / "bad.npz", x=np.array([{}], dtype=object))
    assert not (tmp_path / "bad.npz").exists()
    out = write_json(tmp_path / "run.json", {"n": np.int64(3), "a": np.arange(2), "p": tmp_path, "f": np.float32(0.5)})
    assert json.loads(out.read_text()) == {"n": 3, "a": [0, 1], "p": str(tmp_path), "f": 0.5}
    assert _no_temp_files(tmp_path)
