"""DCGH's performance layer: how the solver's steps are computed, apart from what they compute.

``cmhash.methods.dcgh`` holds the method's maths (each step as the paper writes it, with its
equation number); this private module holds the arrangement that makes it fast at scale, the same
maths throughout (docs/dcgh.md, "Speed"):

- the RBF features in one pass over cache-sized row blocks (``rbf_features``, ``fit_rbf``);
- the B-step's re-orthonormalisation and its random fill by one Cholesky QR of [Ubar | fill]
  (Householder when that is not well conditioned: ``balanced_orthogonal``);
- each Procrustes step from the small M^T M (the SVD only when M is rank-deficient or
  ill-conditioned: ``procrustes``);
- the ridge Gram, with X^T H beside it, by BLAS syrk in float64 (``ridge_projection``);
- the objective from small Grams in one blocked pass (``objective_terms``);
- float64 Grams of n-row matrices over row blocks through one reused buffer (``gram64``,
  ``matmul_rows``);
- BLAS single-threaded except for the n x a products (``BlasThreads``), and from
  ``PARALLEL_MIN_ROWS`` items the RBF row blocks, the objective's row blocks and the two B- and
  G-steps of an iteration in two threads (the same results for any number of threads).

With ``dtype="float32"`` the features and the n-row matrices are float32; the Grams, J^T J and
Ubar of the B-step and the ridge system are float64 either way, and the objective is summed over
blocks in float64.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import scipy.linalg as sla

CHOLQR_MAX_COND = 1e2  # cond(U^T U) up to which Cholesky QR is used (orthogonality ~ cond * eps)
POLAR_MAX_COND = 1e7  # cond(M^T M) up to which the polar factor is taken from M^T M
# Items from which the two B-steps (and G-steps) of an iteration run in two threads. Scratch timing on
# 2 cores, fit at 64 bits, threads vs in turn: 1.07 vs 1.01 s on WIKI (2,173 items), equal at
# 5,000 synthetic items, 3.17 vs 3.30 s at 10,000, 7.54 vs 8.16 s at 25,000 (docs/dcgh.md).
PARALLEL_MIN_ROWS = 8192


# ------------------------------------------------------------------------- BLAS threads
class BlasThreads:
    """BLAS threads during a fit: one for everything inside ``small()`` (the solver's many small
    products and LAPACK calls, where thread start-up costs more than it saves and, on a loaded
    machine, spinning idle threads slow everything down), and the count the process was
    configured with (OPENBLAS_NUM_THREADS, threadpoolctl) inside ``wide()`` (the n x a products:
    RBF distances, X W, X^T B, the ridge Gram). Without threadpoolctl both are no-ops."""

    def __init__(self):
        self._ctl, self._wide = None, None

    def _controller(self):
        if self._ctl is None:
            try:
                from threadpoolctl import ThreadpoolController
            except ImportError:
                self._ctl = False
            else:
                self._ctl = ThreadpoolController()
        return self._ctl

    @contextmanager
    def small(self):
        ctl, outer = self._controller(), self._wide
        if not ctl:
            yield
            return
        if outer is None:
            self._wide = max((i["num_threads"] for i in ctl.info() if i["user_api"] == "blas"), default=1)
        try:
            with ctl.limit(limits=1, user_api="blas"):
                yield
        finally:
            self._wide = outer

    @contextmanager
    def wide(self):
        if not self._ctl or not self._wide or self._wide == 1:
            yield
            return
        with self._ctl.limit(limits=self._wide, user_api="blas"):
            yield

    def workers(self) -> int:
        """Inside ``small()``: the configured BLAS thread count, the number of Python threads
        that independent single-threaded steps may use side by side (1 without threadpoolctl)."""
        return self._wide or 1


BLAS = BlasThreads()


def threads_for(n: int) -> int:
    """Threads for the row-parallel parts of a fit on n items: the configured BLAS thread count
    (``BlasThreads.workers``) from ``PARALLEL_MIN_ROWS`` items, else 1."""
    return BLAS.workers() if n >= PARALLEL_MIN_ROWS else 1


# ------------------------------------------------------------------------- RBF features
def row_blocks(n: int, block: int):
    """Slices of ``block`` consecutive rows covering range(n)."""
    return (slice(start, min(start + block, n)) for start in range(0, n, block))


def squared_distance_blocks(x: np.ndarray, anchors: np.ndarray, out: np.ndarray, block: int):
    """Fill ``out`` (n x a) with squared Euclidean distances |x - a|^2, one row block at a time,
    and yield each block as soon as it is filled (while it is still in cache).

    |x - a|^2 = |x|^2 + |a|^2 - 2 x.a, all three terms from one matrix product per block:
    [x | 1 | |x|^2] [-2a | |a|^2 | 1]^T; x and the anchors are shifted by the anchors' mean first
    so that the cancellation loses less precision; clamped at 0.
    """
    dtype = out.dtype
    dim = x.shape[1]
    shift = np.asarray(anchors, dtype=np.float64).mean(axis=0)
    a = np.asarray(anchors - shift, dtype=dtype)
    a_aug = np.empty((a.shape[0], dim + 2), dtype=dtype)
    a_aug[:, :dim] = a * dtype.type(-2)  # exact
    a_aug[:, dim] = np.einsum("ij,ij->i", a, a)
    a_aug[:, dim + 1] = 1
    xb_buf = np.empty((min(block, x.shape[0]), dim + 2), dtype=dtype)
    xb_buf[:, dim] = 1
    for rows in row_blocks(x.shape[0], block):
        d = out[rows]
        xb = xb_buf[:d.shape[0]]
        xs = xb[:, :dim]
        np.subtract(x[rows], shift, out=xs)  # computed in float64, rounded once into dtype
        np.einsum("ij,ij->i", xs, xs, out=xb[:, dim + 1])
        np.matmul(xb, a_aug.T, out=d)
        np.maximum(d, 0, out=d)
        yield d


def anchor_distances(x: np.ndarray, anchors: np.ndarray, *, squared: bool, dtype, out=None,
                     block: int = 2048) -> np.ndarray:
    """Euclidean distances (``squared``: their squares) of each row of x to each anchor, n x a."""
    out = np.empty((x.shape[0], anchors.shape[0]), dtype=dtype) if out is None else out
    for d in squared_distance_blocks(np.asarray(x), anchors, out, block):
        if not squared:
            np.sqrt(d, out=d)
    return out


def row_parts(n: int, block: int, workers: int) -> list[slice]:
    """range(n) cut into at most ``workers`` contiguous parts at multiples of ``block``, so that
    each part's row blocks are exactly the row blocks of the whole (and results do not depend
    on the number of workers)."""
    n_blocks = -(-n // block)
    cuts = [round(i * n_blocks / max(1, min(workers, n_blocks))) * block for i in range(min(workers, n_blocks) + 1)]
    return [slice(lo, min(hi, n)) for lo, hi in zip(cuts, cuts[1:]) if lo < n] or [slice(0, n)]


def in_threads(fn, items: list) -> list:
    """[fn(item) for item in items], one thread per item if there are several (numpy and BLAS
    release the GIL; inside ``BLAS.small`` each thread's BLAS calls run on one BLAS thread)."""
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=len(items), thread_name_prefix="cmhash-dcgh") as pool:
        return list(pool.map(fn, items))


def rbf_features(x: np.ndarray, anchors: np.ndarray, sigma: float, *, kernel: str = "official",
                 dtype=np.float64, block: int = 2048, workers: int = 1) -> np.ndarray:
    """RBF anchor features exp(-D / (2 sigma^2)) (Sec. 3.1), n x a, in one pass over row blocks
    (split between ``workers`` threads).

    ``kernel="official"``: D is the plain Euclidean distance (the official ``RBF_fast``);
    ``"squared"``: D is the squared distance, as the paper writes it.
    """
    x = np.asarray(x)
    out = np.empty((x.shape[0], anchors.shape[0]), dtype=dtype)
    scale = out.dtype.type(-1.0 / (2.0 * float(sigma) ** 2))

    def features(rows):
        for d in squared_distance_blocks(x[rows], anchors, out[rows], block):
            if kernel != "squared":
                np.sqrt(d, out=d)
            d *= scale
            np.exp(d, out=d)

    in_threads(features, row_parts(x.shape[0], block, workers))
    return out


def fit_rbf(x: np.ndarray, n_anchors: int, rng: np.random.Generator, *, kernel: str,
            sigma: float | None, dtype, block: int = 2048, workers: int = 1) -> tuple[np.ndarray, float, np.ndarray]:
    """Draw ``n_anchors`` training rows as anchors; sigma = mean Euclidean anchor distance.

    Returns (anchors, sigma, training features). With sigma given, one pass (``rbf_features``);
    otherwise the distances and their sum in one pass, then exp in place in a second. Row blocks
    are split between ``workers`` threads; the sum is taken block by block in row order, so
    sigma and the features are the same for any number of workers.
    """
    x = np.asarray(x)
    idx = np.sort(rng.choice(x.shape[0], size=min(int(n_anchors), x.shape[0]), replace=False))
    anchors = np.asarray(x[idx], dtype=np.float64)
    if sigma is not None:
        return anchors, float(sigma), rbf_features(x, anchors, sigma, kernel=kernel, dtype=dtype, block=block,
                                                   workers=workers)
    out = np.empty((x.shape[0], anchors.shape[0]), dtype=dtype)
    parts = row_parts(x.shape[0], block, workers)

    def distances(rows):  # Euclidean distances into out[rows]; the sum of each block
        sums = []
        for d in squared_distance_blocks(x[rows], anchors, out[rows], block):
            np.sqrt(d, out=d)
            sums.append(float(d.sum(axis=1).sum(dtype=np.float64)))  # rows pairwise in dtype, then float64
        return sums

    total = 0.0
    for block_sum in (s for part in in_threads(distances, parts) for s in part):
        total += block_sum
    sigma = total / out.size
    if not sigma > 0:
        raise ValueError(f"RBF kernel width must be > 0, got {sigma} (are all training items identical?)")
    scale = out.dtype.type(-1.0 / (2.0 * sigma ** 2))

    def kernel_values(rows):
        for sub in row_blocks(rows.stop - rows.start, block):
            d = out[rows][sub]
            if kernel == "squared":
                np.square(d, out=d)
            d *= scale
            np.exp(d, out=d)

    in_threads(kernel_values, parts)
    return anchors, float(sigma), out


# ---------------------------------------------------------------------- solver steps
ROW_BLOCK = 4096  # rows per block of the n-row float64 passes (a block of 64 columns: 2 MB)


def converted_blocks(a: np.ndarray, block: int, center: np.ndarray | None = None, *, dtype=np.float64):
    """(rows, copy of a[rows] minus center, in ``dtype``) for consecutive row blocks of ``a``,
    through one reused buffer (a plain copy into it, then an in-place subtraction: both much
    faster than a mixed-dtype subtraction or a fresh ``astype`` per block). Where ``a`` is
    already of ``dtype`` and there is no centre, the blocks are views of ``a``."""
    if center is None and a.dtype == dtype:
        for rows in row_blocks(a.shape[0], block):
            yield rows, a[rows]
        return
    buf = np.empty((min(block, a.shape[0]), a.shape[1]), dtype=dtype)
    for rows in row_blocks(a.shape[0], block):
        ab = buf[:rows.stop - rows.start]
        ab[...] = a[rows]
        if center is not None:
            ab -= center
        yield rows, ab


def gram64(a: np.ndarray, b: np.ndarray | None = None, *, center: np.ndarray | None = None,
           block: int = ROW_BLOCK) -> np.ndarray:
    """(a - center)^T b, or (a - center)^T (a - center) if b is None, in float64 block by block:
    small matrices from n-row ones without an n-row float64 copy (the symmetric case through
    numpy's A^T A product, which BLAS computes as a rank-k update, syrk)."""
    out = np.zeros((a.shape[1], (a if b is None else b).shape[1]))
    b_blocks = None if b is None else converted_blocks(b, block)
    for rows, ab in converted_blocks(a, block, center):
        out += ab.T @ (ab if b_blocks is None else next(b_blocks)[1])
    return out


def matmul_rows(a: np.ndarray, m: np.ndarray, out: np.ndarray, *, center: np.ndarray | None = None,
                block: int = ROW_BLOCK) -> np.ndarray:
    """out = (a - center) m, computed in float64 block by block and stored in out's dtype.

    ``out`` may be ``a`` itself (each block is read before it is written)."""
    for rows, ab in converted_blocks(a, block, center):
        out[rows] = ab @ m
    return out


def cholqr_rinv(u: np.ndarray) -> np.ndarray | None:
    """R^-1 of the thin QR factorisation u = Q R (diag(R) > 0) from the Cholesky factor of
    u^T u = R^T R, or None where Cholesky QR would lose orthogonality: cond(D u^T u D) >= 100
    with D = diag(u^T u)^-1/2 (the columns' scale does not matter to Cholesky QR; its loss of
    orthogonality is about that condition number times eps) or u^T u not positive definite."""
    k = u.shape[1]
    if k == 0:
        return np.zeros((0, 0))
    c = gram64(u)
    diag = np.diag(c).copy()
    if not np.all(diag > 0):
        return None
    scale = 1.0 / np.sqrt(diag)
    c *= scale[:, None]
    c *= scale[None, :]
    ev = np.linalg.eigvalsh(c)
    if not (ev[0] > 0 and ev[-1] < CHOLQR_MAX_COND * ev[0]):
        return None
    # u D = Q R', so u = Q (R' D^-1) and R^-1 = D R'^-1.
    return scale[:, None] * sla.solve_triangular(sla.cholesky(c, lower=False), np.eye(k), lower=False)


def householder_q(u: np.ndarray) -> np.ndarray:
    """Q of u = Q R by Householder QR, with the signs of R's diagonal made positive."""
    q, rr = sla.qr(np.asarray(u, dtype=np.float64), mode="economic")
    return q * np.where(np.diag(rr) < 0, -1.0, 1.0)


def balanced_orthogonal(j: np.ndarray, rng: np.random.Generator, *, tol_abs: float, tol_rel: float,
                        inplace: bool = False) -> np.ndarray:
    """argmax_B <B, J> s.t. B^T 1 = 0, B^T B = n I (Eq. 6-8), for J of shape n x r.

    Eigen-decompose the centred J_c^T J_c = V diag(lam) V^T; with r* eigenvalues above
    max(tol_abs, tol_rel * lam_max), Ubar = J_c V_{r*} lam^{-1/2}; if r* < r, fill with centred random columns made
    orthonormal to Ubar and each other (the Gram-Schmidt step); B = sqrt(n) [Ubar | Ufill] V^T.

    Computed as: u = [Ubar | centred random columns], centred again (the rounding of Ubar's
    column means); [Ubar | Ufill] = Q of the thin QR u = Q R with R's diagonal positive. In exact
    arithmetic that Q is Ubar itself followed by the Gram-Schmidt fill, and Ubar = Q R with
    R = I + O(rounding), so the pairing with V is kept: the QR only removes the loss of
    orthogonality of the directions with small lam. It is a Cholesky QR (one Gram, one product,
    folded into B = u (R^-1 sqrt(n) V^T)) when u is well conditioned, Householder otherwise.
    J^T J, Ubar and the Gram of u are computed in float64 (by row blocks); the rest, products
    of well-conditioned n-row matrices with small ones, in J's dtype (as B itself).

    ``inplace``: u, then B, are written over J (a row block at a time), which is returned: the
    solver's B-steps need no n x r array beyond the one J is assembled in.
    """
    n, r = j.shape
    if n <= r:
        raise ValueError(f"the B-step needs more items than bits (n={n}, bits={r})")
    dt = j.dtype
    mean = j.mean(axis=0, dtype=np.float64)
    lam, vec = sla.eigh(gram64(j, center=mean))  # J_c^T J_c, symmetric: eigh, real
    lam, vec = lam[::-1], vec[:, ::-1]
    tol = max(tol_abs, tol_rel * max(lam[0], 0.0))
    rank = int(np.sum(lam > tol))
    right = vec.T * np.sqrt(n)  # B = [Ubar | Ufill] (sqrt(n) V^T)
    u = j if inplace else np.empty((n, r), dtype=dt)  # [Ubar | random fill], then centred
    matmul_rows(j, vec[:, :rank] / np.sqrt(lam[:rank]), u[:, :rank], center=mean)  # Ubar = J_c V lam^-1/2
    if rank < r:  # drawn in float64 whatever the dtype (the same fill), a row block at a time (the same
        for rows in row_blocks(n, ROW_BLOCK):  # numbers as one n x (r - rank) draw, without its memory)
            u[rows, rank:] = rng.random((rows.stop - rows.start, r - rank))
    u -= u.mean(axis=0, dtype=np.float64).astype(dt)
    rinv = cholqr_rinv(u)
    if rinv is None:
        u[...] = householder_q(u)
        m = right.astype(dt)
    else:
        m = (rinv @ right).astype(dt)
    if not inplace:
        return u @ m
    for rows in row_blocks(n, ROW_BLOCK):
        u[rows] = u[rows] @ m
    return u


def procrustes(m: np.ndarray) -> np.ndarray:
    """argmax_Q tr(Q^T M) over Q with orthonormal columns (or rows, if wide): Q = P R^T from M = P S R^T.

    Q is the polar factor of M. For a (transposed, if wide) M of full column rank with
    cond(M^T M) < 1e7 it is M (M^T M)^-1/2 from the eigen-decomposition of the small M^T M
    (a float64 Gram over M's rows, then one product in M's dtype), followed, if
    cond(M^T M) > 100, by one more such step on the result, which restores orthogonality to
    rounding; Q is then within ~cond(M^T M) eps of the exact polar factor (the trace,
    stationary there, to its square). Otherwise (rank-deficient M: Q is not unique) it comes
    from the SVD, in float64.
    """
    wide = m.shape[0] < m.shape[1]
    a = m.T if wide else m
    lam, v = np.linalg.eigh(gram64(a))
    if lam.size and lam[0] > lam[-1] / POLAR_MAX_COND:
        q = a @ ((v / np.sqrt(lam)) @ v.T).astype(a.dtype)
        if lam[-1] > 100 * lam[0]:
            lam, v = np.linalg.eigh(gram64(q))
            q = q @ ((v / np.sqrt(lam)) @ v.T).astype(a.dtype)
    else:
        p, _, rt = sla.svd(np.asarray(a, dtype=np.float64), full_matrices=False)
        q = (p @ rt).astype(a.dtype, copy=False)
    return q.T if wide else q


def ridge_projection(x: np.ndarray, h: np.ndarray, lam: float, *, block: int = ROW_BLOCK) -> np.ndarray:
    """P = (X^T X + lam I)^-1 X^T H (Eq. 20), via a Cholesky factor.

    X^T X and X^T H are accumulated in float64, even when X is float32: a float32 Gram of n >> a
    rows carries rounding errors far above lam (1e-4 for NUS-WIDE); one of 50,000 synthetic pairs
    was not even positive definite. Both come from one symmetric rank-k update (BLAS syrk: half
    the work of a general product) of the Gram of [X | H], over float64 row blocks: X^T X is its
    upper-left block and X^T H the block beside it (a separate X^T H product was 3x slower per
    flop than the syrk).
    """
    a = x.shape[1]
    gram = np.zeros((a + h.shape[1],) * 2, order="F")  # upper triangle of [X | H]^T [X | H]
    buf = np.empty((min(block, x.shape[0]), gram.shape[0]))
    for rows in row_blocks(x.shape[0], block):
        xh = buf[:rows.stop - rows.start]
        xh[:, :a] = x[rows]
        xh[:, a:] = h[rows]
        gram = sla.blas.dsyrk(1.0, xh.T, beta=1.0, c=gram, overwrite_c=1)  # xh.T: Fortran-ordered, no copy
    xtx = np.asfortranarray(gram[:a, :a])
    xtx[np.diag_indices(a)] += lam
    return sla.cho_solve(sla.cho_factor(xtx, lower=False, overwrite_a=True), gram[:a, a:], overwrite_b=False)


def objective_terms(l: np.ndarray, f: np.ndarray, u: np.ndarray, h: np.ndarray, b: list[np.ndarray],
                    xw: list[np.ndarray], g: list[np.ndarray], *, block: int = ROW_BLOCK, dtype=None,
                    workers: int = 1) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """The row sums of DCGH's objective in one blocked pass: (fit, align, centre, grams, l_hb) with
    fit = sum_v ||B_v - X_v W_v||^2, align = sum_v ||B_v - G_v U||^2, centre = ||H - F U||^2,
    grams = [H^T H, B_v^T B_v ...] and l_hb = L^T [H | B_1 | B_2] (from which the consensus term
    follows without any n x n matrix).

    Each block of H, B_1, B_2 is copied once into one buffer [H | B_1 | B_2], so that
    L^T [H | B_1 | B_2] is one product. The products within a block are computed in ``dtype``
    (default: H's, float32 or float64) and summed over blocks in float64; in float32 the terms
    are exact to ~1e-6 relative (tested against float64), H^T H exactly. The blocks are split
    between ``workers`` threads and their terms summed in block order, so the result does not
    depend on the number of threads."""
    dt = np.dtype(h.dtype if dtype is None else dtype)
    u = u.astype(dt)
    r, views, n = h.shape[1], len(b), h.shape[0]

    def sq(d):
        return float(np.dot(d.ravel(), d.ravel()))

    def block_terms(part: slice) -> list[tuple]:
        """(centre, [fit_v], [align_v], [H^T H, B_v^T B_v], L^T [H | B_1 | B_2]) per block."""
        hb_buf = np.empty((min(block, n), (1 + views) * r), dtype=dt)
        diff_buf = np.empty((min(block, n), r), dtype=dt)
        arrays = [l, f, *xw, *g]
        terms = []
        for (rows, lab), (_, fb), *more in zip(*(converted_blocks(a[part], block, dtype=dt) for a in arrays)):
            xwb, gb = [m for _, m in more[:views]], [m for _, m in more[views:]]
            hb = hb_buf[:rows.stop - rows.start]
            diff = diff_buf[:hb.shape[0]]
            for k, m in enumerate([h, *b]):
                hb[:, k * r:(k + 1) * r] = m[part][rows]
            hr = hb[:, :r]
            np.matmul(fb, u, out=diff)
            diff -= hr
            centre = sq(diff)
            fit, align, grams = [], [], [hr.T @ hr]
            for v in range(views):
                bv = hb[:, (v + 1) * r:(v + 2) * r]
                np.subtract(bv, xwb[v], out=diff)
                fit.append(sq(diff))
                np.matmul(gb[v], u, out=diff)
                diff -= bv
                align.append(sq(diff))
                grams.append(bv.T @ bv)
            terms.append((centre, fit, align, grams, lab.T @ hb))
        return terms

    fit = align = centre = 0.0
    grams = np.zeros((1 + views, r, r))  # H^T H, B_v^T B_v
    l_hb = np.zeros((l.shape[1], (1 + views) * r))  # L^T [H | B_1 | B_2]
    for part in in_threads(block_terms, row_parts(n, block, workers)):
        for block_centre, block_fit, block_align, block_grams, block_l_hb in part:
            centre += block_centre
            for v in range(views):
                fit += block_fit[v]
                align += block_align[v]
            for k, gram in enumerate(block_grams):
                grams[k] += gram
            l_hb += block_l_hb
    return fit, align, centre, grams, l_hb
