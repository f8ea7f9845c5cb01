"""Tests of mlanet.morphable.exact_linalg: BLAS-free linear algebra with machine-independent rounding.

Values are checked against numpy / scipy (LAPACK) to rounding tolerance; determinism
properties (chunking, exact symmetry) are checked bit for bit; a source scan makes sure the
registration code does not call BLAS / LAPACK again. The cross-environment determinism of the
real registration is tested in tests/test_mediapipe_map.py.
"""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import scipy.linalg
from scipy.optimize import lsq_linear
from scipy.spatial.transform import Rotation

from mlanet.morphable import exact_linalg as el
from mlanet.morphable import mediapipe_map


# ------------------------------------------------------------------------- products
def test_products_match_numpy():
    rng = np.random.default_rng(0)
    a, b, x = rng.normal(size=(37, 23)), rng.normal(size=(23, 11)), rng.normal(size=23)
    np.testing.assert_allclose(el.matmul(a, b), a @ b, rtol=0, atol=1e-13)
    np.testing.assert_allclose(el.matvec(a, x), a @ x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(el.rowwise_dot(a, x), a @ x, rtol=0, atol=1e-13)
    np.testing.assert_allclose(el.row_norms(a), np.linalg.norm(a, axis=1), rtol=1e-14)
    r = rng.normal(size=37)
    gram, rhs = el.normal_equations(a, r)
    np.testing.assert_allclose(gram, a.T @ a, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rhs, a.T @ r, rtol=0, atol=1e-12)
    assert el.normal_equations(a)[1] is None
    # Non-contiguous and transposed inputs give the same values.
    np.testing.assert_allclose(el.matmul(a.T.copy().T, b[:, ::-1]), a @ b[:, ::-1], rtol=0, atol=1e-13)


def test_products_do_not_depend_on_chunking_or_layout(monkeypatch):
    rng = np.random.default_rng(1)
    a, b, x = rng.normal(size=(300, 57)), rng.normal(size=(57, 40)), rng.normal(size=57)
    ref_mm, ref_mv, ref_gram = el.matmul(a, b), el.matvec(a, x), el.normal_equations(a)[0]
    # Gram matrices are exactly symmetric (both triangles sum the same products in order).
    assert np.array_equal(ref_gram, ref_gram.T)
    for chunk in (1, 57, 1000, 12345):
        monkeypatch.setattr(el, "CHUNK_ELEMENTS", chunk)
        assert np.array_equal(el.matmul(a, b), ref_mm)
        assert np.array_equal(el.matvec(a, x), ref_mv)
        assert np.array_equal(el.normal_equations(a)[0], ref_gram)
    # A Fortran-ordered copy and a row subset give bit-identical rows.
    assert np.array_equal(el.matmul(np.asfortranarray(a), b), ref_mm)
    assert np.array_equal(el.matmul(a[100:107], b), ref_mm[100:107])


def test_product_shape_errors():
    with pytest.raises(ValueError, match=r"\(M, K\) and \(K, N\)"):
        el.matmul(np.zeros((3, 4)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="matvec"):
        el.matvec(np.zeros((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="right-hand side"):
        el.normal_equations(np.zeros((5, 2)), np.zeros(4))


# ---------------------------------------------------------------- Cholesky solves
def _spd(rng: np.random.Generator, n: int) -> np.ndarray:
    m = rng.normal(size=(n + 5, n))
    return m.T @ m + 0.1 * np.eye(n)


def test_cholesky_and_solves_match_lapack():
    rng = np.random.default_rng(2)
    a = _spd(rng, 31)
    l_mat = el.cholesky(a)
    np.testing.assert_allclose(l_mat, np.linalg.cholesky(a), rtol=0, atol=1e-12)
    assert np.array_equal(l_mat, np.tril(l_mat))
    b_vec, b_mat = rng.normal(size=31), rng.normal(size=(31, 4))
    for b in (b_vec, b_mat):
        np.testing.assert_allclose(el.solve_spd(a, b), np.linalg.solve(a, b), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            el.solve_lower(l_mat, b), scipy.linalg.solve_triangular(l_mat, b, lower=True), rtol=1e-11, atol=1e-12
        )
        u = np.triu(rng.normal(size=(31, 31))) + 5 * np.eye(31)
        np.testing.assert_allclose(
            el.solve_upper(u, b), scipy.linalg.solve_triangular(u, b, lower=False), rtol=1e-11, atol=1e-12
        )
    # Only the lower triangle is read.
    garbage_above = a + np.triu(rng.normal(size=a.shape), 1)
    assert np.array_equal(el.cholesky(garbage_above), l_mat)


def test_cholesky_rejects_indefinite_and_bad_input():
    a = np.diag([4.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="not positive definite.*pivot 2"):
        el.cholesky(a)
    with pytest.raises(ValueError, match="square"):
        el.cholesky(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        el.cholesky(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match=r"right-hand side must be \(3,\)"):
        el.solve_spd(np.eye(3), np.zeros(4))


# ------------------------------------------------------------ box-constrained QP
def _random_bounds(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mix of free, lower-only, upper-only and two-sided variables."""
    kind = rng.integers(0, 4, size=n)
    base = rng.normal(size=n) * 0.3 - 0.2
    width = 0.01 + np.abs(rng.normal(size=n)) * 0.5
    lower = np.where((kind == 1) | (kind == 3), base, -np.inf)
    upper = np.where(kind == 2, base, np.where(kind == 3, base + width, np.inf))
    return lower, upper


@pytest.mark.parametrize("seed", range(4))
def test_box_qp_matches_lsq_linear(seed):
    rng = np.random.default_rng(100 + seed)
    n_active = 0
    for _ in range(40):
        m, n = int(rng.integers(3, 60)), int(rng.integers(1, 30))
        a, b = rng.normal(size=(m, n)), rng.normal(size=m) * 3
        lower, upper = _random_bounds(rng, n)
        reg = 1e-3  # keeps G = A^T A + reg I positive definite when m < n
        gram, rhs = a.T @ a + reg * np.eye(n), a.T @ b
        ref = lsq_linear(
            np.vstack([a, np.sqrt(reg) * np.eye(n)]), np.r_[b, np.zeros(n)], bounds=(lower, upper),
            method="bvls", tol=1e-14,
        ).x
        got = el.box_qp(gram, rhs, lower, upper)
        assert ((got >= lower) & (got <= upper)).all()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8)
        # A warm start anywhere in the box ends at the same minimiser.
        warm = el.box_qp(gram, rhs, lower, upper, x0=rng.normal(size=n) * 2)
        np.testing.assert_allclose(warm, ref, rtol=0, atol=1e-8)
        n_active += int(((got == lower) | (got == upper)).sum())
    assert n_active > 50  # the bounds really were active in many problems


def test_box_qp_kkt_on_a_registration_sized_problem():
    """100 free + 55 variables in [0, 1], scaled like the MediaPipe fit (mm^2 rows)."""
    rng = np.random.default_rng(7)
    a = rng.normal(size=(1900, 155)) * np.r_[np.full(100, 3.0), np.full(55, 1.0)]
    b = rng.normal(size=1900) * 2 + a[:, 100:] @ np.r_[np.full(5, 0.6), np.full(50, -0.4)]
    gram = a.T @ a + np.diag(np.r_[np.full(100, 10.0), np.full(55, 1000.0)])
    rhs = a.T @ b
    lower = np.r_[np.full(100, -np.inf), np.zeros(55)]
    upper = np.r_[np.full(100, np.inf), np.ones(55)]
    x = el.box_qp(gram, rhs, lower, upper)
    grad = gram @ x - rhs
    at_lo, at_hi = x == lower, x == upper
    interior = ~(at_lo | at_hi)
    scale = np.abs(rhs).max()
    assert at_lo.sum() > 10  # the test exercises the bounds
    assert np.abs(grad[interior]).max() < 1e-9 * scale
    assert (grad[at_lo] > -1e-9 * scale).all() and (grad[at_hi] < 1e-9 * scale).all()


def test_box_qp_special_cases_and_errors():
    rng = np.random.default_rng(3)
    g = _spd(rng, 6)
    h = rng.normal(size=6)
    inf = np.full(6, np.inf)
    np.testing.assert_allclose(el.box_qp(g, h, -inf, inf), np.linalg.solve(g, h), rtol=1e-10)
    # Equal bounds pin a variable.
    lower, upper = np.full(6, -1.0), np.full(6, 1.0)
    lower[2] = upper[2] = 0.25
    assert el.box_qp(g, h, lower, upper)[2] == 0.25
    with pytest.raises(ValueError, match="lower <= upper"):
        el.box_qp(g, h, np.ones(6), np.zeros(6))
    with pytest.raises(ValueError, match=r"\(N, N\)"):
        el.box_qp(g[:5], h, -inf, inf)
    with pytest.raises(ValueError, match="not positive definite"):
        el.box_qp(-g, h, np.zeros(6), np.ones(6))


# ------------------------------------------------------------- small eigenproblems
@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_symmetric_eigen_matches_eigh(n):
    rng = np.random.default_rng(n)
    m = rng.normal(size=(n, n))
    m = m + m.T
    values, vectors = el.symmetric_eigen(m)
    np.testing.assert_allclose(values, np.linalg.eigvalsh(m), rtol=0, atol=1e-13)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(n), atol=1e-14)
    np.testing.assert_allclose(m @ vectors, vectors * values, atol=1e-13)


def test_symmetric_eigen_degenerate_and_errors():
    values, vectors = el.symmetric_eigen(np.diag([2.0, 2.0, -1.0]))
    np.testing.assert_array_equal(values, [-1.0, 2.0, 2.0])
    np.testing.assert_array_equal(np.abs(vectors), np.eye(3)[:, [2, 0, 1]])
    values, _ = el.symmetric_eigen(np.zeros((4, 4)))
    np.testing.assert_array_equal(values, np.zeros(4))
    with pytest.raises(ValueError, match="square"):
        el.symmetric_eigen(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        el.symmetric_eigen(np.array([[1.0, np.nan], [np.nan, 1.0]]))


# ---------------------------------------------------------------- similarity
def _umeyama_svd(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Reference: Umeyama's weighted similarity with LAPACK's SVD."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    s_c, d_c = src - mu_s, dst - mu_d
    cov = (d_c * w[:, None]).T @ s_c
    u, sig, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2] = -1.0
    rot = (u * sign) @ vt
    scale = float((sig * sign).sum() / (w @ (s_c**2).sum(axis=1)))
    return scale, rot, mu_d - scale * rot @ mu_s


def test_similarity_transform_recovers_known_similarity():
    rng = np.random.default_rng(4)
    rot = Rotation.from_rotvec([0.3, -1.2, 2.0]).as_matrix()
    src = rng.normal(size=(40, 3))
    dst = 1.7 * src @ rot.T + np.array([0.1, -2.0, 3.0])
    s, r, t = el.similarity_transform(src, dst)
    assert s == pytest.approx(1.7, rel=1e-12)
    np.testing.assert_allclose(r, rot, atol=1e-12)
    np.testing.assert_allclose(t, [0.1, -2.0, 3.0], atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_similarity_transform_matches_svd_umeyama(seed):
    rng = np.random.default_rng(10 + seed)
    src = rng.normal(size=(25, 3)) * [0.05, 0.07, 0.03]
    # Noisy targets; odd seeds mirror them, where the best orthogonal map is a reflection.
    dst = rng.normal(size=(25, 3)) * 0.01 + 1.1 * src @ Rotation.random(random_state=seed).as_matrix().T
    if seed % 2:
        dst[:, 0] *= -1
    w = rng.random(25) + 0.1
    s, r, t = el.similarity_transform(src, dst, w)
    s_ref, r_ref, t_ref = _umeyama_svd(src, dst, w)
    assert np.linalg.det(r) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert s == pytest.approx(s_ref, rel=1e-9)
    np.testing.assert_allclose(r, r_ref, atol=1e-9)
    np.testing.assert_allclose(t, t_ref, atol=1e-10)
    np.testing.assert_allclose(el.rotation_maximising_trace(np.eye(3)), np.eye(3), atol=1e-15)


def test_similarity_transform_errors():
    with pytest.raises(ValueError, match=r"two \(M, 3\) arrays"):
        el.similarity_transform(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="weights"):
        el.similarity_transform(np.eye(3), np.eye(3), np.zeros(3))
    with pytest.raises(ValueError, match="zero spread"):
        el.similarity_transform(np.ones((4, 3)), np.eye(4, 3))


# ---------------------------------------------------------- no BLAS in registration
_FORBIDDEN_NAMES = {"dot", "matmul", "einsum", "tensordot", "inner", "vdot", "linalg", "lstsq", "lsq_linear"}
_FORBIDDEN_MODULES = ("scipy.linalg", "scipy.optimize", "numpy.linalg")


def _blas_uses(source: str) -> list[str]:
    """``@``, ``np.<blas function>`` / ``x.dot``, and imports of BLAS/LAPACK-backed names or modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            found.append(f"line {node.lineno}: @")
        elif isinstance(node, ast.Attribute) and node.attr in _FORBIDDEN_NAMES:
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.startswith(_FORBIDDEN_MODULES)]
            found += [f"line {node.lineno}: import {name}" for name in bad]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("numpy", "scipy")):
            if node.module.startswith(_FORBIDDEN_MODULES) or any(a.name in _FORBIDDEN_NAMES for a in node.names):
                found.append(f"line {node.lineno}: from {node.module} import ...")
    return found


def test_registration_code_calls_no_blas():
    sources = {"exact_linalg": inspect.getsource(el)}
    for fn in (
        mediapipe_map.register_mediapipe, mediapipe_map.closest_points_on_triangles,
        mediapipe_map.closest_points_on_mesh, mediapipe_map._interpolate, mediapipe_map._BoundaryTest,
    ):
        sources[fn.__name__] = inspect.getsource(fn)
    found = {name: _blas_uses(src) for name, src in sources.items()}
    assert not any(found.values()), found
    # The scan itself catches each kind of call.
    probe = "import scipy.linalg\nfrom numpy import einsum\nx = a @ b + np.dot(a, b) + np.linalg.norm(a)\n"
    assert len(_blas_uses(probe)) == 5
