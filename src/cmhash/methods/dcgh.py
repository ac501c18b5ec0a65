"""DCGH: Distribution Consistency Guided Hashing (Sun et al., ACM MM 2024; ``papers/DCGH.txt``).

Supervised and shallow. Each modality's RBF anchor features X_v (Sec. 3.1) are mapped to a
balanced, decorrelated real representation B_v (Eq. 1); consensus codes H tie the two together
through the label similarity S = L L^T (Eq. 2); class centres U with per-modality encodings G_v
and a consensus encoding F pull B_v and H around the same centres (Eq. 3). The alternating
solver (Sec. 3.3) follows the official MATLAB code (sunyuan-cs/2024-MM-DCGH, ``LHCC.m``):

    init  H = sgn(1), W_v, U, G_v, F ~ randn; 10 iterations of
    B_v = sqrt(n) [Ubar|Ufill] V^T  balanced-orthogonal maximiser of <B, J_v>  (Eq. 6-8)
          J_v = X_v W_v + alpha G_v U + beta r S H
    H   = sgn(alpha F U + beta r S (B_1 + B_2))                                 (Eq. 11)
    W_v, U, G_v, F  by orthogonal Procrustes                                   (Eq. 13, 15, 17, 18)

then ridge-regression hash functions P_v = (X_v^T X_v + lambda I)^-1 X_v^T H (Eq. 20) and
query codes sgn(K(x) P_v) (Eq. 21). Items are rows here (the paper's matrices transposed):
X_v is n x a, B_v and H are n x r, U is c x r, G_v and F are n x c.

Where this differs from the official code, on purpose:

- The kernel width sigma is the mean anchor distance over the *training* items, stored with the
  model. The official ``RBF_fast`` recomputes sigma from whatever batch it is given, so a query
  batch gets its own sigma and one item's code depends on the others in its batch.
- Symmetric eigenproblems use ``scipy.linalg.eigh`` (MATLAB's ``eig`` on a numerically
  non-symmetric C C^T can return complex values); the rank test of the B-step keeps the
  official absolute tolerance 1e-5 and adds a relative one (1e-13 of the largest eigenvalue,
  the rounding level of the eigen-solver) for exactly rank-deficient inputs; the kept columns
  are re-orthonormalised (a QR step), so B^T B = n I holds to rounding even when the
  eigenvalues span 12 orders of magnitude, as they do on WIKI.
- S = L L^T is never formed: S x is computed as L (L^T x), so memory and time are linear in n.

How it is computed (the same maths, arranged for speed; docs/dcgh.md, "Speed"): the RBF
features in one pass over cache-sized row blocks; the re-orthonormalisation of the B-step and
its random fill by one Cholesky QR of [Ubar | fill] (Householder when that is not well
conditioned); each Procrustes step from the small M^T M (the SVD only when M is rank-deficient
or ill-conditioned); the ridge Gram, with X^T H beside it, by BLAS syrk in float64; the objective
from small Grams in one blocked pass; the B-, H- and X W updates over their previous values;
BLAS single-threaded except for the n x a products (``BlasThreads``), and from 8,192 items the
RBF row blocks, the objective's row blocks and the two B- and G-steps of an iteration in two
threads (the same results for any number of threads). ``dtype="float32"`` (the default) stores
the features and the n-row matrices in float32; the Grams, J^T J and Ubar of the B-step and the
ridge system are float64 either way, and the objective is summed over blocks in float64.
- sgn(0) = +1 (PROTOCOL.md); the official ``sgn`` maps 0 to -1.

The H-step counts the centre term alpha ||H - F U||^2 once (as the official H-step does), so
the objective recorded per iteration is
    sum_v ||B_v - X_v W_v||^2 + alpha ||B_v - G_v U||^2 + beta ||H B_v^T - r S||^2
    + alpha ||H - F U||^2,
Eq. 4 with that term counted once. Every step except the W-step minimises it exactly given the
others; the W-step (Eq. 13) drops ||X_v W_v||^2, which is not constant when X_v^T X_v != I, so
the objective can rise there (the paper's Fig. 7 shows it converging; we record it as it is).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import scipy.linalg as sla

from cmhash.codes import PackedCodes, pack
from cmhash.data.dataset import MODALITIES, CrossModalDataset
from cmhash.methods.base import HashingMethod, HashModel
from cmhash.methods.registry import register_method
from cmhash.progress import Progress, ensure_progress

KERNELS = ("official", "squared")
DATABASE_MODES = ("train_codes", "encode")
DTYPES = ("float32", "float64")
RANK_TOL_ABS = 1e-5  # the official code's eigenvalue cut-off in the B-step
RANK_TOL_REL = 1e-13
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
def _row_blocks(n: int, block: int):
    """Slices of ``block`` consecutive rows covering range(n)."""
    return (slice(start, min(start + block, n)) for start in range(0, n, block))


def _squared_distance_blocks(x: np.ndarray, anchors: np.ndarray, out: np.ndarray, block: int):
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
    for rows in _row_blocks(x.shape[0], block):
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
    for d in _squared_distance_blocks(np.asarray(x), anchors, out, block):
        if not squared:
            np.sqrt(d, out=d)
    return out


def _row_parts(n: int, block: int, workers: int) -> list[slice]:
    """range(n) cut into at most ``workers`` contiguous parts at multiples of ``block``, so that
    each part's row blocks are exactly the row blocks of the whole (and results do not depend
    on the number of workers)."""
    n_blocks = -(-n // block)
    cuts = [round(i * n_blocks / max(1, min(workers, n_blocks))) * block for i in range(min(workers, n_blocks) + 1)]
    return [slice(lo, min(hi, n)) for lo, hi in zip(cuts, cuts[1:]) if lo < n] or [slice(0, n)]


def _in_threads(fn, items: list) -> list:
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
        for d in _squared_distance_blocks(x[rows], anchors, out[rows], block):
            if kernel != "squared":
                np.sqrt(d, out=d)
            d *= scale
            np.exp(d, out=d)

    _in_threads(features, _row_parts(x.shape[0], block, workers))
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
    parts = _row_parts(x.shape[0], block, workers)

    def distances(rows):  # Euclidean distances into out[rows]; the sum of each block
        sums = []
        for d in _squared_distance_blocks(x[rows], anchors, out[rows], block):
            np.sqrt(d, out=d)
            sums.append(float(d.sum(axis=1).sum(dtype=np.float64)))  # rows pairwise in dtype, then float64
        return sums

    total = 0.0
    for block_sum in (s for part in _in_threads(distances, parts) for s in part):
        total += block_sum
    sigma = total / out.size
    if not sigma > 0:
        raise ValueError(f"RBF kernel width must be > 0, got {sigma} (are all training items identical?)")
    scale = out.dtype.type(-1.0 / (2.0 * sigma ** 2))

    def kernel_values(rows):
        for sub in _row_blocks(rows.stop - rows.start, block):
            d = out[rows][sub]
            if kernel == "squared":
                np.square(d, out=d)
            d *= scale
            np.exp(d, out=d)

    _in_threads(kernel_values, parts)
    return anchors, float(sigma), out


# ---------------------------------------------------------------------- solver steps
ROW_BLOCK = 4096  # rows per block of the n-row float64 passes (a block of 64 columns: 2 MB)


def _converted_blocks(a: np.ndarray, block: int, center: np.ndarray | None = None, *, dtype=np.float64):
    """(rows, copy of a[rows] minus center, in ``dtype``) for consecutive row blocks of ``a``,
    through one reused buffer (a plain copy into it, then an in-place subtraction: both much
    faster than a mixed-dtype subtraction or a fresh ``astype`` per block). Where ``a`` is
    already of ``dtype`` and there is no centre, the blocks are views of ``a``."""
    if center is None and a.dtype == dtype:
        for rows in _row_blocks(a.shape[0], block):
            yield rows, a[rows]
        return
    buf = np.empty((min(block, a.shape[0]), a.shape[1]), dtype=dtype)
    for rows in _row_blocks(a.shape[0], block):
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
    b_blocks = None if b is None else _converted_blocks(b, block)
    for rows, ab in _converted_blocks(a, block, center):
        out += ab.T @ (ab if b_blocks is None else next(b_blocks)[1])
    return out


def matmul_rows(a: np.ndarray, m: np.ndarray, out: np.ndarray, *, center: np.ndarray | None = None,
                block: int = ROW_BLOCK) -> np.ndarray:
    """out = (a - center) m, computed in float64 block by block and stored in out's dtype.

    ``out`` may be ``a`` itself (each block is read before it is written)."""
    for rows, ab in _converted_blocks(a, block, center):
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


def balanced_orthogonal(j: np.ndarray, rng: np.random.Generator, *, inplace: bool = False) -> np.ndarray:
    """argmax_B <B, J> s.t. B^T 1 = 0, B^T B = n I (Eq. 6-8), for J of shape n x r.

    Eigen-decompose the centred J_c^T J_c = V diag(lam) V^T; with r* eigenvalues above the
    tolerance, Ubar = J_c V_{r*} lam^{-1/2}; if r* < r, fill with centred random columns made
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
    tol = max(RANK_TOL_ABS, RANK_TOL_REL * max(lam[0], 0.0))
    rank = int(np.sum(lam > tol))
    right = vec.T * np.sqrt(n)  # B = [Ubar | Ufill] (sqrt(n) V^T)
    u = j if inplace else np.empty((n, r), dtype=dt)  # [Ubar | random fill], then centred
    matmul_rows(j, vec[:, :rank] / np.sqrt(lam[:rank]), u[:, :rank], center=mean)  # Ubar = J_c V lam^-1/2
    if rank < r:  # drawn in float64 whatever the dtype (the same fill), a row block at a time (the same
        for rows in _row_blocks(n, ROW_BLOCK):  # numbers as one n x (r - rank) draw, without its memory)
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
    for rows in _row_blocks(n, ROW_BLOCK):
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


def sgn(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """sgn with sgn(0) = +1 (-0 included), in the dtype of x (PROTOCOL.md); ``inplace``:
    overwrite x (a temporary) instead of allocating."""
    out = x if inplace else x.copy()
    out += out.dtype.type(0)  # -0 + 0 = +0, so that copysign sees +0
    return np.copysign(out.dtype.type(1), out, out=out)


def normalise_labels(labels: np.ndarray, dtype) -> np.ndarray:
    """Rows scaled to unit l2 norm (MATLAB ``normr``); an empty row stays zero."""
    lab = np.asarray(labels, dtype=dtype)
    norm = np.linalg.norm(lab, axis=1, keepdims=True)
    return np.divide(lab, norm, out=np.zeros_like(lab), where=norm > 0)


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
    for rows in _row_blocks(x.shape[0], block):
        xh = buf[:rows.stop - rows.start]
        xh[:, :a] = x[rows]
        xh[:, a:] = h[rows]
        gram = sla.blas.dsyrk(1.0, xh.T, beta=1.0, c=gram, overwrite_c=1)  # xh.T: Fortran-ordered, no copy
    xtx = np.asfortranarray(gram[:a, :a])
    xtx[np.diag_indices(a)] += lam
    return sla.cho_solve(sla.cho_factor(xtx, lower=False, overwrite_a=True), gram[:a, a:], overwrite_b=False)


class Solver:
    """State and update steps of the alternating solver (Sec. 3.3), one method per step.

    ``x``: the two kernel feature matrices (n x a_v); ``labels``: row-normalised L (n x c).
    S = L L^T is applied as L (L^T z) and never formed.
    """

    def __init__(self, x: list[np.ndarray], labels: np.ndarray, bits: int, alpha: float, beta: float,
                 rng: np.random.Generator):
        self.x, self.l, self.r, self.alpha, self.beta, self.rng = x, labels, bits, alpha, beta, rng
        n, c = labels.shape
        dt = x[0].dtype
        # Initialisation of the official code: H = sgn(ones), the rest standard normal.
        self.h = np.ones((n, bits), dtype=dt)
        self.w = [rng.standard_normal((xv.shape[1], bits)).astype(dt) for xv in x]
        self.u = rng.standard_normal((c, bits)).astype(dt)
        self.g = [rng.standard_normal((n, c)).astype(dt) for _ in x]
        self.f = rng.standard_normal((n, c)).astype(dt)
        self.b = [np.zeros((n, bits), dtype=dt) for _ in x]
        self.update_xw()
        ltl = gram64(labels)
        self.s_sq = float(np.sum(ltl * ltl))  # ||L L^T||_F^2 = ||L^T L||_F^2

    def update_xw(self) -> None:
        """Cache X_v W_v (used by the B-step and the objective), over the previous one."""
        with BLAS.wide():
            xw = getattr(self, "xw", None)
            if xw is None or any(o.dtype != np.result_type(xv, wv) for o, xv, wv in zip(xw, self.x, self.w)):
                self.xw = [xv @ wv for xv, wv in zip(self.x, self.w)]
            else:
                for xv, wv, out in zip(self.x, self.w, self.xw):
                    np.matmul(xv, wv, out=out)

    def _beta_r_lth(self) -> np.ndarray:
        """beta r L^T H (c x r): S H = L (L^T H) is then applied a row block at a time."""
        lth = self.l.T @ self.h
        lth *= self.beta * self.r
        return lth

    def b_step(self, v: int, lth: np.ndarray | None = None, rng: np.random.Generator | None = None) -> None:
        """Eq. 6-8: B_v = balanced-orthogonal argmax <B, X_v W_v + alpha G_v U + beta r S H>.

        ``lth``: beta r L^T H if already computed (H is the same for both B-steps of an
        iteration); ``rng``: the generator of the random fill (default: the solver's). J is
        assembled a row block at a time, so that its terms need no n x r temporaries."""
        lth = self._beta_r_lth() if lth is None else lth
        alpha_u = self.alpha * self.u
        j = self.b[v]  # B_v is not read by its own step: J, then the new B_v, are built over it
        for rows in _row_blocks(j.shape[0], ROW_BLOCK):
            jb = j[rows]
            np.matmul(self.g[v][rows], alpha_u, out=jb)
            jb += self.xw[v][rows]
            jb += self.l[rows] @ lth
        balanced_orthogonal(j, self.rng if rng is None else rng, inplace=True)

    def h_step(self) -> None:
        """Eq. 11 (official form): H = sgn(alpha F U + beta r S (B_1 + B_2)), sgn(0) = +1.

        Written over the old H (not read by its own step), a row block at a time."""
        n = self.h.shape[0]
        lb = np.zeros((self.l.shape[1], self.r), dtype=self.h.dtype)  # L^T (B_1 + B_2)
        for rows in _row_blocks(n, ROW_BLOCK):
            lb += self.l[rows].T @ (self.b[0][rows] + self.b[1][rows])
        lb *= self.beta * self.r
        alpha_u = self.alpha * self.u
        for rows in _row_blocks(n, ROW_BLOCK):
            hb = self.h[rows]
            np.matmul(self.f[rows], alpha_u, out=hb)
            hb += self.l[rows] @ lb
            sgn(hb, inplace=True)

    def w_step(self, v: int) -> None:
        """Eq. 13: W_v = argmax tr(W^T X_v^T B_v) over orthonormal columns (Procrustes).

        X^T B is computed as (B^T X)^T: the same sums, and BLAS runs the r x n by n x a product
        about 1.4x faster than the transposed one on this machine (docs/dcgh.md, "Speed")."""
        with BLAS.wide():
            m = (self.b[v].T @ self.x[v]).T
        self.w[v] = procrustes(m)

    def u_step(self) -> None:
        """Eq. 15: U = argmax tr(U^T (sum_v G_v^T B_v + F^T H)) (Procrustes)."""
        self.u = procrustes(sum(gv.T @ bv for gv, bv in zip(self.g, self.b)) + self.f.T @ self.h)

    def g_step(self, v: int) -> None:
        """Eq. 17: G_v = argmax tr(G^T B_v U^T) over orthonormal columns (Procrustes)."""
        self.g[v] = procrustes(self.b[v] @ self.u.T)

    def f_step(self) -> None:
        """Eq. 18: F = argmax tr(F^T H U^T) over orthonormal columns (Procrustes)."""
        self.f = procrustes(self.h @ self.u.T)

    def iterate(self) -> None:
        """One iteration in the official order: B_1, B_2, H, W_1, W_2, U, G_1, G_2, F.

        B_1 and B_2 depend on each other as little as G_1 and G_2 do (each pair reads only state
        the other does not write), so each pair runs in two threads side by side when BLAS is
        configured for two or more (``BlasThreads.workers``); each B-step draws its random fill
        from its own generator, spawned from the solver's, so the result does not depend on that."""
        lth = self._beta_r_lth()
        rngs = self.rng.spawn(2)
        self._both(lambda v: self.b_step(v, lth, rngs[v]))
        self.h_step()
        for v in range(2):
            self.w_step(v)
        self.update_xw()
        self.u_step()
        self._both(self.g_step)
        self.f_step()

    def _both(self, step) -> None:
        """step(0) and step(1): in two threads if BLAS has two or more and there are at least
        ``PARALLEL_MIN_ROWS`` items, else in turn."""
        if threads_for(self.h.shape[0]) >= 2:
            _in_threads(step, [0, 1])
        else:
            step(0)
            step(1)

    def objective(self, *, block: int = ROW_BLOCK, dtype=None, workers: int | None = None) -> dict[str, float]:
        """The objective of the module docstring and its terms, in O(n), over row blocks:
        fit = sum_v ||B_v - X_v W_v||^2, align = sum_v ||B_v - G_v U||^2,
        consensus = sum_v ||H B_v^T - r S||^2, centre = ||H - F U||^2.

        ||H B^T - r S||^2 = <H^T H, B^T B> - 2 r <L^T B, L^T H> + r^2 ||S||^2: no n x n matrix.
        Each block of H, B_1, B_2 is copied once into one buffer [H | B_1 | B_2], so that
        L^T [H | B_1 | B_2] is one product. The products within a block are computed in
        ``dtype`` (default: the solver's, float32 or float64) and summed over blocks in float64;
        in float32 the terms are exact to ~1e-6 relative (tested against float64), H^T H exactly.
        The blocks are split between ``workers`` threads (default: as for the B-steps) and their
        terms summed in block order, so the result does not depend on the number of threads."""
        dt = np.dtype(self.h.dtype if dtype is None else dtype)
        u = self.u.astype(dt)
        r, views, n = self.r, len(self.b), self.h.shape[0]
        if workers is None:
            workers = threads_for(n)

        def sq(d):
            return float(np.dot(d.ravel(), d.ravel()))

        def block_terms(part: slice) -> list[tuple]:
            """(centre, [fit_v], [align_v], [H^T H, B_v^T B_v], L^T [H | B_1 | B_2]) per block."""
            hb_buf = np.empty((min(block, n), (1 + views) * r), dtype=dt)
            diff_buf = np.empty((min(block, n), r), dtype=dt)
            arrays = [self.l, self.f, *self.xw, *self.g]
            terms = []
            for (rows, lab), (_, f), *more in zip(*(_converted_blocks(a[part], block, dtype=dt) for a in arrays)):
                xw, g = [m for _, m in more[:views]], [m for _, m in more[views:]]
                hb = hb_buf[:rows.stop - rows.start]
                diff = diff_buf[:hb.shape[0]]
                for k, m in enumerate([self.h, *self.b]):
                    hb[:, k * r:(k + 1) * r] = m[part][rows]
                h = hb[:, :r]
                np.matmul(f, u, out=diff)
                diff -= h
                centre = sq(diff)
                fit, align, grams = [], [], [h.T @ h]
                for v in range(views):
                    b = hb[:, (v + 1) * r:(v + 2) * r]
                    np.subtract(b, xw[v], out=diff)
                    fit.append(sq(diff))
                    np.matmul(g[v], u, out=diff)
                    diff -= b
                    align.append(sq(diff))
                    grams.append(b.T @ b)
                terms.append((centre, fit, align, grams, lab.T @ hb))
            return terms

        fit = align = centre = 0.0
        grams = np.zeros((1 + views, r, r))  # H^T H, B_v^T B_v
        l_hb = np.zeros((self.l.shape[1], (1 + views) * r))  # L^T [H | B_1 | B_2]
        for part in _in_threads(block_terms, _row_parts(n, block, workers)):
            for block_centre, block_fit, block_align, block_grams, block_l_hb in part:
                centre += block_centre
                for v in range(views):
                    fit += block_fit[v]
                    align += block_align[v]
                for k, gram in enumerate(block_grams):
                    grams[k] += gram
                l_hb += block_l_hb
        lh = l_hb[:, :r]
        consensus = sum(float(np.sum(grams[0] * grams[v + 1]))
                        - 2 * r * float(np.sum(l_hb[:, (v + 1) * r:(v + 2) * r] * lh)) + r ** 2 * self.s_sq
                        for v in range(views))
        total = fit + self.alpha * (align + centre) + self.beta * consensus
        return {"fit": fit, "align": align, "consensus": consensus, "centre": centre, "total": total}


# ------------------------------------------------------------------------------ model
class DCGHModel(HashModel):
    """RBF anchors and widths, the hash projections P_v, and the learned training codes H."""

    method = "dcgh"

    def __init__(self, *, anchors: dict[str, np.ndarray], sigma: dict[str, float],
                 proj: dict[str, np.ndarray], train_codes: PackedCodes, **common: Any):
        super().__init__(**common)
        self.anchors, self.sigma, self.proj, self.train_codes = anchors, sigma, proj, train_codes

    def features(self, modality: str, x: np.ndarray) -> np.ndarray:
        """RBF anchor features of ``x`` (Sec. 3.1) with the training anchors and width."""
        x = self.check_input(modality, x, {m: a.shape[1] for m, a in self.anchors.items()})
        return rbf_features(x, self.anchors[modality], self.sigma[modality],
                            kernel=self.hparams["kernel"], dtype=self.hparams["dtype"])

    def encode(self, modality: str, x: np.ndarray) -> PackedCodes:
        """sgn(K(x) P_v) (Eq. 21)."""
        return pack(sgn(self.features(modality, x) @ self.proj[modality].astype(self.hparams["dtype"]), inplace=True))

    def database_codes(self, modality: str) -> PackedCodes | None:
        """The learned training codes H (official evaluation), or None with ``database="encode"``."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality '{modality}', expected one of {MODALITIES}")
        return self.train_codes if self.hparams["database"] == "train_codes" else None

    def state(self):
        arrays: dict[str, np.ndarray] = {"train_codes": self.train_codes.data}
        for m in MODALITIES:
            arrays[f"anchors_{m}"] = self.anchors[m]
            arrays[f"proj_{m}"] = self.proj[m]
        return arrays, {"sigma": dict(self.sigma), "train_codes_bits": self.train_codes.nbits}

    @classmethod
    def from_state(cls, arrays, config, **common):
        return cls(
            anchors={m: arrays[f"anchors_{m}"] for m in MODALITIES},
            sigma={m: float(config["sigma"][m]) for m in MODALITIES},
            proj={m: arrays[f"proj_{m}"] for m in MODALITIES},
            train_codes=PackedCodes(arrays["train_codes"], int(config["train_codes_bits"])),
            **common,
        )


# ----------------------------------------------------------------------------- method
@register_method
class DCGH(HashingMethod):
    """DCGH with the official solver; presets hold the paper's (alpha, beta, lambda) per dataset.

    Hyper-parameters: ``alpha`` (distribution consistency), ``beta`` (consensus), ``lam`` (ridge
    of the hash functions), ``n_anchors`` per modality, ``max_iter``, ``kernel`` ("official":
    exp(-||x-a|| / 2 sigma^2); "squared": exp(-||x-a||^2 / 2 sigma^2)), ``sigma`` (None: mean
    training anchor distance), ``database`` ("train_codes": search against H, as the official
    evaluation; "encode": encode the database with the hash functions), ``dtype`` (of the
    kernel features and the n-row matrices; "float32", the default, halves their memory and
    speeds up the large products, and gives the float64 mAP on WIKI to within 0.1 point
    (docs/dcgh.md); the ridge Gram, the B-step's J^T J and Ubar and the objective are float64
    in both; "float64" remains available).
    """

    name = "dcgh"
    supervised = True
    model_class = DCGHModel
    defaults = {
        "alpha": 1e1, "beta": 1e1, "lam": 1e-2, "n_anchors": 1500, "max_iter": 10,
        "kernel": "official", "sigma": None, "database": "train_codes", "dtype": "float32",
    }
    presets = {  # Sec. 4.2: {alpha, beta, lambda} per dataset
        "wiki": {"alpha": 1e1, "beta": 1e1, "lam": 1e-2},
        "mirflickr": {"alpha": 1e4, "beta": 1e-1, "lam": 1e-2},
        "iapr": {"alpha": 1e3, "beta": 1e-2, "lam": 1e-3},
        "nus-wide": {"alpha": 1e4, "beta": 1e-1, "lam": 1e-4},
    }

    def __init__(self, preset: str | None = None, **hparams: Any):
        super().__init__(preset=preset, **hparams)
        hp = self.hparams
        for key, allowed in (("kernel", KERNELS), ("database", DATABASE_MODES), ("dtype", DTYPES)):
            if hp[key] not in allowed:
                raise ValueError(f"dcgh: {key} must be one of {allowed}, got {hp[key]!r}")
        for key in ("alpha", "beta", "lam"):
            if not (isinstance(hp[key], (int, float)) and hp[key] >= 0):
                raise ValueError(f"dcgh: {key} must be a number >= 0, got {hp[key]!r}")
        for key in ("n_anchors", "max_iter"):
            if int(hp[key]) != hp[key] or hp[key] < 1:
                raise ValueError(f"dcgh: {key} must be a positive integer, got {hp[key]!r}")
        if hp["sigma"] is not None and not (isinstance(hp["sigma"], (int, float)) and hp["sigma"] > 0):
            raise ValueError(f"dcgh: sigma must be None or a number > 0, got {hp['sigma']!r}")

    def _fit(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        with BLAS.small():  # one BLAS thread but for the n x a products (BlasThreads)
            return self._fit_model(train, bits, seed=seed, progress=progress)

    def _fit_model(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        hp = self.hparams
        dtype = np.dtype(hp["dtype"])
        rng = np.random.default_rng(seed)
        anchors, sigma, x = {}, {}, []
        # Many items: the RBF row blocks are split between threads with one BLAS thread each
        # (5.3 against 6.1 s for 184,000 x 1,000-d text with two BLAS threads on each block);
        # few: each block's product gets the BLAS threads.
        threads = threads_for(len(train))
        for m in MODALITIES:
            with BLAS.wide() if threads == 1 else nullcontext():
                anchors[m], sigma[m], xm = fit_rbf(train.features(m), hp["n_anchors"], rng, kernel=hp["kernel"],
                                                   sigma=hp["sigma"], dtype=dtype, workers=threads)
            x.append(xm)
        solver = Solver(x, normalise_labels(train.labels, dtype), bits, float(hp["alpha"]),
                        float(hp["beta"]), rng)
        prog = ensure_progress(progress)
        prog.start(int(hp["max_iter"]), f"dcgh {bits} bits")
        history: list[dict[str, float]] = []
        for it in range(int(hp["max_iter"])):  # maxIter = 10, no convergence test (official)
            solver.iterate()
            history.append(solver.objective())
            prog.advance(1)
            prog.log(f"iter {it + 1}", objective=history[-1]["total"])
        h = solver.h
        del solver  # its n-row matrices are not needed by the ridge step
        with BLAS.wide():
            proj = {m: ridge_projection(x[v], h, float(hp["lam"])) for v, m in enumerate(MODALITIES)}
        model = DCGHModel(anchors=anchors, sigma=sigma, proj=proj, train_codes=pack(h),
                          bits=bits, hparams=hp)
        model.record = {
            "objective": [t["total"] for t in history],
            "objective_terms": history,
            "anchors_used": {m: int(a.shape[0]) for m, a in anchors.items()},
            "sigma": dict(sigma),
        }
        return model
