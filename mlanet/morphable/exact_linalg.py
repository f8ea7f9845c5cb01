"""Small dense linear algebra whose rounding does not depend on BLAS, LAPACK, threads or CPU.

Why this exists: ``A @ B``, ``np.dot``, ``np.linalg.*`` and ``scipy.linalg`` / ``scipy.optimize``
call BLAS and LAPACK (OpenBLAS in numpy's and scipy's wheels). Their kernels are picked at run
time for the CPU (``OPENBLAS_CORETYPE``) and split work over threads (``OMP_NUM_THREADS``,
``OPENBLAS_NUM_THREADS``); each choice sums in another order, so the last bits of a result
change from machine to machine. An iterative fit that makes discrete decisions (an ICP that
picks closest triangles) turns those last bits into visibly different output.
:func:`mlanet.morphable.mediapipe_map.register_mediapipe` is such a fit, and its output is
stored in the face-model file, which must come out bit-identical wherever it is built.

How the results here are made deterministic: everything is built from

* elementwise IEEE-754 operations (``+ - * /``, ``np.sqrt``, ``np.clip``, comparisons): each
  is correctly rounded, so SIMD width and CPU do not matter, and numpy never fuses a multiply
  and an add of two separate ufunc calls into an FMA;
* ``np.sum(x, axis=-1)`` over a C-contiguous last axis (:func:`rowwise_dot`): numpy's add
  reduction runs single-threaded, without BLAS, and sums each row with the same fixed
  pairwise scheme (8 partial sums, blocks of 128) on every CPU -- its SIMD variants keep
  the order of the additions, they only run the 8 partial sums side by side;
* plain Python ``float`` arithmetic and ``math.sqrt`` (correctly rounded) for the 3x3 / 4x4
  eigenproblems (:func:`symmetric_eigen`).

Every product of two arrays goes through :func:`rowwise_dot`: the factors are laid out so that
the summed index is the last, contiguous axis, and each output element is the pairwise sum of
its own products in index order. Chunking (to bound memory) splits only the *other* axes, so
a result does not depend on the chunk size either. None of these functions calls ``@``,
``np.dot``, ``np.matmul``, ``np.einsum``, ``np.tensordot``, ``np.linalg``, ``scipy.linalg`` or
``scipy.optimize``. Results are reproducible for the same inputs and shapes (checked across
thread counts, ``OPENBLAS_CORETYPE`` and ``NPY_DISABLE_CPU_FEATURES`` by the tests); they agree
with LAPACK's to rounding, not bit for bit. The summation order is numpy's, so a numpy release
that changed its reduction scheme could change last bits. The cost is speed: fine for the
few-hundred-unknown problems of asset building, not a replacement for BLAS in hot loops.
"""

from __future__ import annotations

import math

import numpy as np

#: Largest number of float64 products held in memory at once by :func:`matmul` / :func:`normal_equations`
#: (16 MiB). A constant, so that work splits the same way everywhere (results do not depend on
#: it anyway: chunks split the output, never a sum).
CHUNK_ELEMENTS: int = 1 << 21

_EPS = float(np.finfo(np.float64).eps)


# ------------------------------------------------------------------------- products
def rowwise_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_k a[..., k] * b[..., k]`` for broadcastable (..., K) arrays -> (...,) float64.

    The products are formed elementwise and each row is summed by numpy's pairwise add
    reduction along the last axis (see the module docstring): no BLAS, no threads.
    """
    prod = np.multiply(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    return np.sum(np.ascontiguousarray(prod), axis=-1)


def row_norms(a: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows of a (..., K) array -> (...,) float64 (``np.linalg.norm(a, axis=-1)``)."""
    a = np.asarray(a, dtype=np.float64)
    return np.sqrt(rowwise_dot(a, a))


def _rows_per_chunk(cost_per_row: int) -> int:
    return max(1, CHUNK_ELEMENTS // max(int(cost_per_row), 1))


def matvec(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``a @ x`` for a (M, K) matrix and a (K,) vector -> (M,), chunked over the rows of ``a``."""
    a = np.asarray(a, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or x.ndim != 1 or a.shape[1] != x.shape[0]:
        raise ValueError(f"matvec needs (M, K) and (K,) arrays, got shapes {a.shape} and {x.shape}")
    m, k = a.shape
    out = np.empty(m)
    step = _rows_per_chunk(k)
    for i in range(0, m, step):
        out[i : i + step] = rowwise_dot(a[i : i + step], x)
    return out


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for (M, K) and (K, N) matrices -> (M, N) float64, without BLAS.

    ``out[i, j]`` is the pairwise sum over k of ``a[i, k] * b[k, j]`` (in k order), computed
    in chunks of rows of ``a`` of at most :data:`CHUNK_ELEMENTS` products.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs (M, K) and (K, N) arrays, got shapes {a.shape} and {b.shape}")
    m, k = a.shape
    n = b.shape[1]
    bt = np.ascontiguousarray(b.T)  # (N, K): the summed index last and contiguous
    out = np.empty((m, n))
    step = _rows_per_chunk(n * k)
    for i in range(0, m, step):
        out[i : i + step] = rowwise_dot(a[i : i + step, None, :], bt[None, :, :])
    return out


def normal_equations(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Gram matrix ``a.T @ a`` (K, K) and, if ``b`` (R,) is given, ``a.T @ b`` (K,) for a (R, K) ``a``.

    The Gram matrix is exactly symmetric (``x * y == y * x`` in IEEE arithmetic and both
    triangles sum in the same row order); only its upper triangle is computed.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"normal_equations needs an (R, K) matrix, got shape {a.shape}")
    r, k = a.shape
    at = np.ascontiguousarray(a.T)  # (K, R)
    g = np.zeros((k, k))
    step = _rows_per_chunk(k * r)
    for i in range(0, k, step):
        rows = at[i : i + step]
        g[i : i + step, i:] = rowwise_dot(rows[:, None, :], at[None, i:, :])
    g = np.triu(g) + np.triu(g, 1).T
    if b is None:
        return g, None
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (r,):
        raise ValueError(f"right-hand side must have shape ({r},) to match the matrix {a.shape}, got {b.shape}")
    return g, matvec(at, b)


# ---------------------------------------------------------------- Cholesky solves
def cholesky(a: np.ndarray) -> np.ndarray:
    """Lower-triangular ``L`` with ``L @ L.T == a`` for a symmetric positive definite (N, N) ``a``.

    Right-looking outer-product Cholesky: N steps of elementwise updates, only the lower
    triangle of ``a`` is read. Raises ``ValueError`` naming the pivot when ``a`` is not
    (numerically) positive definite.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"cholesky needs a square matrix, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("cholesky: the matrix contains NaN or infinite values")
    n = a.shape[0]
    work = np.tril(a)
    for j in range(n):
        pivot = float(work[j, j])
        if not pivot > 0.0:
            raise ValueError(f"cholesky: matrix is not positive definite (pivot {j} is {pivot:.3g})")
        d = math.sqrt(pivot)
        work[j, j] = d
        col = work[j + 1 :, j] / d
        work[j + 1 :, j] = col
        work[j + 1 :, j + 1 :] -= np.multiply.outer(col, col)  # the upper triangle is discarded below
    return np.tril(work)


def _as_columns(b: np.ndarray, n: int, what: str) -> tuple[np.ndarray, bool]:
    b = np.asarray(b, dtype=np.float64)
    if b.ndim not in (1, 2) or b.shape[0] != n:
        raise ValueError(f"{what}: right-hand side must be ({n},) or ({n}, M), got shape {b.shape}")
    vector = b.ndim == 1
    # Work on the transpose (M, N): each solve step then sums along the last, contiguous axis.
    return np.array(b[None, :] if vector else b.T, dtype=np.float64, order="C"), vector


def solve_lower(l_mat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``L x = b`` by forward substitution; L (N, N) lower triangular, b (N,) or (N, M)."""
    l_mat = np.asarray(l_mat, dtype=np.float64)
    n = l_mat.shape[0]
    bt, vector = _as_columns(b, n, "solve_lower")
    for i in range(n):
        bt[:, i] = (bt[:, i] - rowwise_dot(bt[:, :i], l_mat[i, :i])) / l_mat[i, i]
    return bt[0] if vector else np.ascontiguousarray(bt.T)


def solve_upper(u_mat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``U x = b`` by back substitution; U (N, N) upper triangular, b (N,) or (N, M)."""
    u_mat = np.asarray(u_mat, dtype=np.float64)
    n = u_mat.shape[0]
    bt, vector = _as_columns(b, n, "solve_upper")
    for i in range(n - 1, -1, -1):
        bt[:, i] = (bt[:, i] - rowwise_dot(bt[:, i + 1 :], u_mat[i, i + 1 :])) / u_mat[i, i]
    return bt[0] if vector else np.ascontiguousarray(bt.T)


def cholesky_solve(l_mat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``(L L^T) x = b`` given the factor from :func:`cholesky`; b (N,) or (N, M)."""
    l_mat = np.asarray(l_mat, dtype=np.float64)
    return solve_upper(np.ascontiguousarray(l_mat.T), solve_lower(l_mat, b))


def solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for a symmetric positive definite (N, N) ``a``; b (N,) or (N, M)."""
    return cholesky_solve(cholesky(a), b)


# ------------------------------------------------------------ box-constrained QP
def box_qp(
    gram: np.ndarray,
    rhs: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    x0: np.ndarray | None = None,
    max_iterations: int | None = None,
) -> np.ndarray:
    """Minimise ``0.5 x^T G x - rhs^T x`` subject to ``lower <= x <= upper``; G symmetric positive definite.

    With ``G = A^T A`` and ``rhs = A^T b`` this is the bounded least-squares problem
    ``min |A x - b|^2`` (what ``scipy.optimize.lsq_linear`` solves). gram (N, N), rhs (N,),
    lower / upper (N,) with ``-inf`` / ``+inf`` for no bound; x0 (N,) an optional starting
    point (clipped into the box). Returns the (unique) minimiser, (N,) float64.

    Method: variables without any bound are eliminated with a Cholesky factor of their block
    (Schur complement), then a primal active-set method runs on the bounded ones: solve the
    equality-constrained problem with the working set held at its bounds, step to the
    first bound hit, or, at the subproblem's minimum, release the bound whose multiplier has
    the wrong sign. It ends in finitely many steps with the exact (to rounding) minimiser.
    Raises ``ValueError`` for inconsistent shapes, ``lower > upper`` or a matrix that is not
    positive definite, ``RuntimeError`` if the active set does not settle within
    ``max_iterations`` (default ``10 * N + 100``).
    """
    g = np.asarray(gram, dtype=np.float64)
    h = np.asarray(rhs, dtype=np.float64)
    n = len(h)
    lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), (n,)).copy()
    hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), (n,)).copy()
    if g.shape != (n, n) or h.shape != (n,):
        raise ValueError(f"box_qp: gram must be (N, N) and rhs (N,), got {g.shape} and {h.shape}")
    if np.isnan(lo).any() or np.isnan(hi).any() or (lo > hi).any():
        raise ValueError("box_qp: bounds must satisfy lower <= upper (no NaN)")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(h))):
        raise ValueError("box_qp: gram or rhs contains NaN or infinite values")

    free_var = np.isneginf(lo) & np.isposinf(hi)
    u_idx, b_idx = np.flatnonzero(free_var), np.flatnonzero(~free_var)
    if len(b_idx) == 0:
        return solve_spd(g, h)
    start = np.zeros(n) if x0 is None else np.asarray(x0, dtype=np.float64).reshape(n)
    if len(u_idx) == 0:
        return _active_set(g, h, lo, hi, np.clip(start, lo, hi), max_iterations)

    # Eliminate the unbounded block U:  G_UU = L L^T,  W = L^-1 G_UB,  w = L^-1 h_U;
    # reduced problem in x_B: S = G_BB - W^T W, r = h_B - W^T w; then x_U = L^-T (w - W x_B).
    l_uu = cholesky(g[np.ix_(u_idx, u_idx)])
    w_mat = solve_lower(l_uu, g[np.ix_(u_idx, b_idx)])
    w_vec = solve_lower(l_uu, h[u_idx])
    s_mat = g[np.ix_(b_idx, b_idx)] - normal_equations(w_mat)[0]
    r_vec = h[b_idx] - matvec(np.ascontiguousarray(w_mat.T), w_vec)
    x_b = _active_set(s_mat, r_vec, lo[b_idx], hi[b_idx], np.clip(start[b_idx], lo[b_idx], hi[b_idx]), max_iterations)
    x = np.empty(n)
    x[b_idx] = x_b
    x[u_idx] = solve_upper(np.ascontiguousarray(l_uu.T), w_vec - matvec(w_mat, x_b))
    return x


def _active_set(
    g: np.ndarray, h: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, max_iterations: int | None
) -> np.ndarray:
    """Primal active-set method for :func:`box_qp`; ``x`` feasible start, every variable bounded on some side."""
    n = len(h)
    x = x.copy()
    at_lo = x <= lo
    at_hi = (x >= hi) & ~at_lo
    x[at_lo], x[at_hi] = lo[at_lo], hi[at_hi]
    limit = 10 * n + 100 if max_iterations is None else int(max_iterations)
    g_max, h_max = float(np.abs(g).max()), float(np.abs(h).max())
    for _ in range(limit):
        fixed = at_lo | at_hi
        free = np.flatnonzero(~fixed)
        if len(free):
            fix = np.flatnonzero(fixed)
            target = h[free] - (matvec(g[np.ix_(free, fix)], x[fix]) if len(fix) else 0.0)
            z = solve_spd(g[np.ix_(free, free)], target)
            step = z - x[free]
            # Largest step in [0, 1] along x -> z that stays in the box.
            below, above = z < lo[free], z > hi[free]
            ratio = np.full(len(free), np.inf)
            ratio[below] = (lo[free][below] - x[free][below]) / step[below]
            ratio[above] = (hi[free][above] - x[free][above]) / step[above]
            alpha = float(ratio.min())
            if alpha < 1.0:
                alpha = max(alpha, 0.0)
                x[free] = np.clip(x[free] + alpha * step, lo[free], hi[free])
                first = ratio == ratio.min()
                hit_lo, hit_hi = free[first & below], free[first & above]
                x[hit_lo], x[hit_hi] = lo[hit_lo], hi[hit_hi]
                at_lo[hit_lo], at_hi[hit_hi] = True, True
                continue
            x[free] = z
        # At the subproblem's minimum: KKT check of the variables held at a bound.
        grad = matvec(g, x) - h
        bad = np.where(at_lo, -grad, 0.0) + np.where(at_hi, grad, 0.0)  # > 0: the bound holds x back
        worst = int(np.argmax(bad))
        # Multipliers below this are rounding noise (the scale of the gradient's terms).
        tol = 64.0 * _EPS * n * (g_max * max(1.0, float(np.abs(x).max())) + h_max)
        if not bad[worst] > tol:
            return x
        at_lo[worst] = at_hi[worst] = False
    raise RuntimeError(f"box_qp: the active set did not settle within {limit} iterations (n = {n})")


# ------------------------------------------------------------- small eigenproblems
def symmetric_eigen(a: np.ndarray, max_sweeps: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a small symmetric (N, N) matrix by cyclic Jacobi rotations.

    Runs in plain Python floats (meant for N <= ~10: 3x3 covariances, Horn's 4x4 matrix).
    Returns ``(values (N,), vectors (N, N))``, eigenvalues ascending (ties in index order),
    ``vectors[:, i]`` the unit eigenvector of ``values[i]``. Only the upper triangle of ``a``
    is read. Raises ``ValueError`` for a non-square or non-finite input, ``RuntimeError`` if
    the rotations do not converge within ``max_sweeps`` sweeps.
    """
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"symmetric_eigen needs a square matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("symmetric_eigen: the matrix contains NaN or infinite values")
    n = arr.shape[0]
    m = [[float(arr[min(i, j), max(i, j)]) for j in range(n)] for i in range(n)]
    v = [[1.0 if i == j else 0.0 for j in range(n)] for i in range(n)]
    for sweep in range(max_sweeps):
        if all(m[p][q] == 0.0 for p in range(n) for q in range(p + 1, n)):
            break
        for p in range(n):
            for q in range(p + 1, n):
                apq = m[p][q]
                if apq == 0.0:
                    continue
                app, aqq = m[p][p], m[q][q]
                # After a few sweeps, drop entries below the diagonals' rounding (Numerical Recipes).
                if sweep > 3 and abs(app) + 100.0 * abs(apq) == abs(app) and abs(aqq) + 100.0 * abs(apq) == abs(aqq):
                    m[p][q] = m[q][p] = 0.0
                    continue
                theta = (aqq - app) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + math.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                m[p][p] = app - t * apq
                m[q][q] = aqq + t * apq
                m[p][q] = m[q][p] = 0.0
                for r in range(n):
                    if r != p and r != q:
                        arp, arq = m[r][p], m[r][q]
                        m[r][p] = m[p][r] = c * arp - s * arq
                        m[r][q] = m[q][r] = s * arp + c * arq
                for r in range(n):
                    vrp, vrq = v[r][p], v[r][q]
                    v[r][p] = c * vrp - s * vrq
                    v[r][q] = s * vrp + c * vrq
    else:
        raise RuntimeError(f"symmetric_eigen: no convergence within {max_sweeps} Jacobi sweeps")
    order = sorted(range(n), key=lambda i: (m[i][i], i))
    values = np.array([m[i][i] for i in order])
    vectors = np.array([[v[r][i] for i in order] for r in range(n)])
    return values, vectors


# ---------------------------------------------------------------- similarity
def rotation_maximising_trace(m: np.ndarray) -> np.ndarray:
    """The rotation R (det +1) maximising ``trace(R @ m)`` for a 3x3 ``m`` -> (3, 3) float64.

    With ``m = sum_i w_i src_i dst_i^T`` this is the rotation best aligning ``src`` to ``dst``
    (``dst ~ R src``). Horn's closed form: the unit quaternion is the eigenvector of the
    largest eigenvalue of a symmetric 4x4 matrix built from ``m`` (:func:`symmetric_eigen`).
    """
    s = np.asarray(m, dtype=np.float64)
    if s.shape != (3, 3) or not np.all(np.isfinite(s)):
        raise ValueError(f"rotation_maximising_trace needs a finite 3x3 matrix, got shape {s.shape}")
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = s.tolist()
    horn = np.array(
        [
            [sxx + syy + szz, syz - szy, szx - sxz, sxy - syx],
            [syz - szy, sxx - syy - szz, sxy + syx, szx + sxz],
            [szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy],
            [sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz],
        ]
    )
    _, vectors = symmetric_eigen(horn)
    w, x, y, z = vectors[:, 3].tolist()
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / norm, x / norm, y / norm, z / norm
    return np.array(
        [
            [w * w + x * x - y * y - z * z, 2.0 * (x * y - w * z), 2.0 * (x * z + w * y)],
            [2.0 * (y * x + w * z), w * w - x * x + y * y - z * z, 2.0 * (y * z - w * x)],
            [2.0 * (z * x - w * y), 2.0 * (z * y + w * x), w * w - x * x - y * y + z * z],
        ]
    )


def similarity_transform(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity ``dst ~ s R src + t`` (Umeyama's objective, Horn's rotation).

    src, dst (M, 3) corresponding points (any one length unit); weights (M,) >= 0, not all 0
    (default: all 1). Minimises ``sum_i w_i |dst_i - (s R src_i + t)|^2`` over rotations R
    (det +1, no reflection), scales s and translations t. Returns ``(s, R (3, 3), t (3,))``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or dst.shape != src.shape:
        raise ValueError(f"similarity_transform needs two (M, 3) arrays, got {src.shape} and {dst.shape}")
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(src),) or (w < 0).any() or not np.sum(w) > 0:
        raise ValueError(f"weights must be (M,) = ({len(src)},), >= 0 and not all 0; got shape {w.shape}")
    w = w / np.sum(w)
    src_t, dst_t = np.ascontiguousarray(src.T), np.ascontiguousarray(dst.T)  # (3, M)
    mu_s, mu_d = rowwise_dot(src_t, w), rowwise_dot(dst_t, w)
    s_c, d_c = src_t - mu_s[:, None], dst_t - mu_d[:, None]
    cross = rowwise_dot((s_c * w)[:, None, :], d_c[None, :, :])  # (3, 3): sum_i w_i s_i d_i^T
    var_s = float(np.sum(rowwise_dot(s_c * w, s_c)))  # sum_i w_i |s_i|^2
    if not var_s > 0:
        raise ValueError("similarity_transform: the weighted source points coincide (zero spread)")
    rot = rotation_maximising_trace(cross)
    scale = float(np.sum(rowwise_dot(rot, cross.T))) / var_s  # trace(R @ cross) / var
    trans = mu_d - scale * rowwise_dot(rot, mu_s)
    return scale, rot, trans
