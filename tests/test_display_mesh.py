"""The overlay's display mesh: decimation on the model's own vertices, its cache, the ICT face's."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from mlanet.edge import display_mesh as dm


def _grid(n: int, hole: bool = False, bump: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """An n x n vertex grid in the z=0 plane (counter-clockwise seen from +z), optionally with a bump
    and a square hole in the middle. Returns (V, 3) points and (F, 3) triangles."""
    xs, ys = np.meshgrid(np.linspace(0, 1, n), np.linspace(0, 1, n))
    z = bump * np.exp(-((xs - 0.3) ** 2 + (ys - 0.3) ** 2) / 0.02)
    points = np.stack([xs, ys, z], -1).reshape(-1, 3)
    tris = []
    for i in range(n - 1):
        for j in range(n - 1):
            if hole and n // 3 <= i < 2 * n // 3 and n // 3 <= j < 2 * n // 3:
                continue
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            tris += [(a, b, d), (a, d, c)]
    return points, np.array(tris)


def _edge_counts(tri: np.ndarray) -> tuple[dict, dict]:
    directed, undirected = {}, {}
    for a, b in tri[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2).tolist():
        directed[(a, b)] = directed.get((a, b), 0) + 1
        key = (min(a, b), max(a, b))
        undirected[key] = undirected.get(key, 0) + 1
    return directed, undirected


def _border_loops(tri: np.ndarray) -> int:
    """Number of border loops (holes + outer border) of a manifold mesh."""
    _, undirected = _edge_counts(tri)
    border = [e for e, c in undirected.items() if c == 1]
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for a, b in border:
        parent[find(a)] = find(b)
    return len({find(v) for e in border for v in e})


def _normals(points, tri):
    n = np.cross(points[tri[:, 1]] - points[tri[:, 0]], points[tri[:, 2]] - points[tri[:, 0]])
    return n


def test_decimation_keeps_a_manifold_with_its_holes_orientation_and_locked_vertices():
    points, tri = _grid(21, hole=True, bump=0.15)
    locked = np.array([0, 5, 100, 440])  # vertices the triangles use
    out = dm.decimate_mesh(points, tri, 200, locked=locked)
    assert len(out.triangles) <= 200 and len(out.triangles) > 50
    assert np.all(np.diff(out.kept) > 0) and out.kept.max() < len(points)
    assert set(locked) <= set(out.kept.tolist())
    directed, undirected = _edge_counts(out.triangles)
    assert max(directed.values()) == 1  # consistent winding: no directed edge twice
    assert max(undirected.values()) <= 2  # manifold
    assert _border_loops(out.triangles) == _border_loops(tri) == 2  # outer border + the hole
    p = points[out.kept]
    n = _normals(p, out.triangles)
    assert (n[:, 2] > 0).all()  # nothing flipped (every triangle still faces +z)
    area_full = 0.5 * np.linalg.norm(_normals(points, tri), axis=1).sum()
    area = 0.5 * np.linalg.norm(n, axis=1).sum()
    assert area == pytest.approx(area_full, rel=0.03)
    again = dm.decimate_mesh(points, tri, 200, locked=locked)
    np.testing.assert_array_equal(again.kept, out.kept)  # deterministic
    np.testing.assert_array_equal(again.triangles, out.triangles)


def test_a_flat_region_goes_first_and_the_bump_keeps_its_vertices():
    points, tri = _grid(21, bump=0.15)
    out = dm.decimate_mesh(points, tri, 300)
    kept = points[out.kept]
    near_bump = np.hypot(kept[:, 0] - 0.3, kept[:, 1] - 0.3) < 0.2
    all_near = np.hypot(points[:, 0] - 0.3, points[:, 1] - 0.3) < 0.2
    # the bump (curved) keeps a larger share of its vertices than the flat rest
    assert near_bump.sum() / all_near.sum() > 2 * (~near_bump).sum() / (~all_near).sum()


def test_colour_term_keeps_a_colour_edge():
    """On a flat plane every collapse is free geometrically; with the colour term the triangles that
    blend the two colours (drawn as a smear) cover less area."""
    points, tri = _grid(21)
    colours = (points[:, :1] > 0.5).astype(float)  # a sharp colour edge between x = 0.5 and 0.55

    def smeared_area(mesh):
        c = colours[mesh.kept][mesh.triangles][..., 0]
        mixed = c.min(1) != c.max(1)
        p = points[mesh.kept]
        return 0.5 * np.linalg.norm(_normals(p, mesh.triangles[mixed]), axis=1).sum()

    plain = dm.decimate_mesh(points, tri, 100)
    coloured = dm.decimate_mesh(points, tri, 100, colours=colours, colour_weight=10.0)
    assert smeared_area(coloured) < 0.8 * smeared_area(plain)  # measured 0.48 vs 0.68


def test_bad_arguments():
    points, tri = _grid(5)
    with pytest.raises(ValueError, match="target_triangles"):
        dm.decimate_mesh(points, tri, 0)
    with pytest.raises(ValueError, match="poses"):
        dm.decimate_mesh(points[:, :2], tri, 10)


def test_display_mesh_is_cached_and_a_damaged_cache_is_rebuilt(synthetic_model, tmp_path, monkeypatch, caplog):
    first = dm.display_mesh(synthetic_model, 1000, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith(synthetic_model.model_id)
    assert first.topology.n_vertices == len(first.kept) and first.topology.n_triangles <= 1000
    assert first.source_triangles == synthetic_model.triangles.shape[0]

    def refuse(*a, **k):
        raise AssertionError("decimated again instead of reading the cache")

    monkeypatch.setattr(dm, "decimate_mesh", refuse)
    cached = dm.display_mesh(synthetic_model, 1000, cache_dir=tmp_path)
    np.testing.assert_array_equal(cached.kept, first.kept)
    np.testing.assert_array_equal(cached.topology.triangles, first.topology.triangles)
    monkeypatch.undo()

    files[0].write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        rebuilt = dm.display_mesh(synthetic_model, 1000, cache_dir=tmp_path)
    assert "unreadable" in caplog.text
    np.testing.assert_array_equal(rebuilt.kept, first.kept)
    assert dm.display_mesh(synthetic_model, 1001, cache_dir=tmp_path).kept is not None
    assert len(list(tmp_path.glob("*.npz"))) == 2  # the target is part of the key

    whole = dm.display_mesh(synthetic_model, 10**6, cache_dir=False)  # at or above the model's count: the mesh
    assert whole.topology.n_triangles == synthetic_model.triangles.shape[0]


@pytest.mark.assets
def test_ict_display_mesh_keeps_the_face(ict_model_file, tmp_path):
    """The default display mesh of the ICT face: the triangle budget, every landmark vertex, the mouth,
    eye and outer borders, and the surface in the expressions that move it most."""
    from mlanet.morphable.model import MorphableModel

    model = MorphableModel.load(ict_model_file)
    display = dm.display_mesh(model, dm.DISPLAY_TRIANGLES, cache_dir=tmp_path)
    full_tri = model.triangles.numpy()
    tri = display.topology.triangles
    assert len(tri) <= dm.DISPLAY_TRIANGLES and len(tri) > 0.9 * dm.DISPLAY_TRIANGLES
    assert set(model.landmark_index.numpy().tolist()) <= set(display.kept.tolist())
    assert display.topology.landmark_index is not None
    assert _border_loops(tri) == _border_loops(full_tri)
    directed, _ = _edge_counts(tri)
    assert max(directed.values()) == 1
    poses = dm.face_model_poses(model)
    names = list(model.expression_names)
    for name in ("neutral", "jawOpen", "mouthSmile_L", "eyeBlink_L"):
        pose = poses[0] if name == "neutral" else poses[1 + names.index(name)]
        a_full = 0.5 * np.linalg.norm(_normals(pose, full_tri), axis=1).sum()
        n = _normals(pose[display.kept], tri)
        assert 0.5 * np.linalg.norm(n, axis=1).sum() == pytest.approx(a_full, rel=0.02), name
        # no triangle turned away from its neighbourhood: compare with the full mesh's vertex normals
        from mlanet.edge.mesh_topology import MeshTopology

        vn = MeshTopology(full_tri, model.uv.numpy(), model.triangles_uv.numpy()).vertex_normals(pose)
        corner_normals = vn[display.kept][tri].mean(1)
        cos = np.einsum("ij,ij->i", n / np.linalg.norm(n, axis=1, keepdims=True), corner_normals)
        # the full mesh has 22 such triangles at its creases (lips, eyelids), 0.12 %
        assert np.percentile(cos, 1) > 0.5 and (cos < 0.5).mean() < 0.01, name
