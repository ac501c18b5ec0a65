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

- sgn(0) = +1 (PROTOCOL.md); the official ``sgn`` maps 0 to -1.

This module holds the maths. How each step is computed fast (blocked float64 Grams, Cholesky QR,
Procrustes from M^T M, BLAS syrk, threaded row passes, BLAS thread control, float32 storage) is
the private ``cmhash.methods._dcgh_linalg``: the same maths, arranged for speed (docs/dcgh.md).

The H-step counts the centre term alpha ||H - F U||^2 once (as the official H-step does), so
the objective recorded per iteration is
    sum_v ||B_v - X_v W_v||^2 + alpha ||B_v - G_v U||^2 + beta ||H B_v^T - r S||^2
    + alpha ||H - F U||^2,
Eq. 4 with that term counted once. Every step except the W-step minimises it exactly given the
others; the W-step (Eq. 13) drops ||X_v W_v||^2, which is not constant when X_v^T X_v != I, so
the objective can rise there (the paper's Fig. 7 shows it converging; we record it as it is).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import numpy as np

from cmhash.codes import PackedCodes, pack
from cmhash.data.dataset import MODALITIES, CrossModalDataset
from cmhash.methods import _dcgh_linalg as fast
from cmhash.methods.base import HashingMethod, HashModel
from cmhash.methods.registry import register_method
from cmhash.progress import Progress, ensure_progress

KERNELS = ("official", "squared")
DATABASE_MODES = ("train_codes", "encode")
DTYPES = ("float32", "float64")
RANK_TOL_ABS = 1e-5  # the official code's eigenvalue cut-off in the B-step
RANK_TOL_REL = 1e-13  # ours: the eigen-solver's rounding level, for exactly rank-deficient J


# ------------------------------------------------------------------------ solver steps
def balanced_orthogonal(j: np.ndarray, rng: np.random.Generator, *, inplace: bool = False) -> np.ndarray:
    """Eq. 6-8: argmax_B <B, J> s.t. B^T 1 = 0, B^T B = n I, for J of shape n x r.

    J_c = J - 1 mean(J); J_c^T J_c = V diag(lam) V^T; with r* eigenvalues above the tolerance
    (the official 1e-5, or 1e-13 of the largest), Ubar = J_c V_r* lam^-1/2; if r* < r, Ufill =
    centred random columns made orthonormal to Ubar and each other (Gram-Schmidt);
    B = sqrt(n) [Ubar | Ufill] V^T. ``inplace``: B is written over J."""
    return fast.balanced_orthogonal(j, rng, tol_abs=RANK_TOL_ABS, tol_rel=RANK_TOL_REL, inplace=inplace)


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
        ltl = fast.gram64(labels)
        self.s_sq = float(np.sum(ltl * ltl))  # ||L L^T||_F^2 = ||L^T L||_F^2

    def update_xw(self) -> None:
        """Cache X_v W_v (used by the B-step and the objective), over the previous one."""
        with fast.BLAS.wide():
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
        for rows in fast.row_blocks(j.shape[0], fast.ROW_BLOCK):
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
        for rows in fast.row_blocks(n, fast.ROW_BLOCK):
            lb += self.l[rows].T @ (self.b[0][rows] + self.b[1][rows])
        lb *= self.beta * self.r
        alpha_u = self.alpha * self.u
        for rows in fast.row_blocks(n, fast.ROW_BLOCK):
            hb = self.h[rows]
            np.matmul(self.f[rows], alpha_u, out=hb)
            hb += self.l[rows] @ lb
            sgn(hb, inplace=True)

    def w_step(self, v: int) -> None:
        """Eq. 13: W_v = argmax tr(W^T X_v^T B_v) over orthonormal columns (Procrustes).

        X^T B is computed as (B^T X)^T: the same sums, and BLAS runs the r x n by n x a product
        about 1.4x faster than the transposed one on this machine (docs/dcgh.md, "Speed")."""
        with fast.BLAS.wide():
            m = (self.b[v].T @ self.x[v]).T
        self.w[v] = fast.procrustes(m)

    def u_step(self) -> None:
        """Eq. 15: U = argmax tr(U^T (sum_v G_v^T B_v + F^T H)) (Procrustes)."""
        self.u = fast.procrustes(sum(gv.T @ bv for gv, bv in zip(self.g, self.b)) + self.f.T @ self.h)

    def g_step(self, v: int) -> None:
        """Eq. 17: G_v = argmax tr(G^T B_v U^T) over orthonormal columns (Procrustes)."""
        self.g[v] = fast.procrustes(self.b[v] @ self.u.T)

    def f_step(self) -> None:
        """Eq. 18: F = argmax tr(F^T H U^T) over orthonormal columns (Procrustes)."""
        self.f = fast.procrustes(self.h @ self.u.T)

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
        if fast.threads_for(self.h.shape[0]) >= 2:
            fast.in_threads(step, [0, 1])
        else:
            step(0)
            step(1)

    def objective(self, **blocking: Any) -> dict[str, float]:
        """The objective of the module docstring and its terms, in O(n):
        fit = sum_v ||B_v - X_v W_v||^2, align = sum_v ||B_v - G_v U||^2,
        consensus = sum_v ||H B_v^T - r S||^2, centre = ||H - F U||^2, where
        ||H B^T - r S||^2 = <H^T H, B^T B> - 2 r <L^T B, L^T H> + r^2 ||S||^2 (no n x n matrix).
        ``blocking``: ``block``, ``dtype``, ``workers`` of ``_dcgh_linalg.objective_terms``."""
        blocking.setdefault("workers", fast.threads_for(self.h.shape[0]))
        fit, align, centre, grams, l_hb = fast.objective_terms(self.l, self.f, self.u, self.h, self.b, self.xw,
                                                               self.g, **blocking)
        r = self.r
        lh = l_hb[:, :r]
        consensus = sum(float(np.sum(grams[0] * grams[v + 1]))
                        - 2 * r * float(np.sum(l_hb[:, (v + 1) * r:(v + 2) * r] * lh)) + r ** 2 * self.s_sq
                        for v in range(len(self.b)))
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
        return fast.rbf_features(x, self.anchors[modality], self.sigma[modality],
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
        with fast.BLAS.small():  # one BLAS thread but for the n x a products (BlasThreads)
            return self._fit_model(train, bits, seed=seed, progress=progress)

    def _fit_model(self, train: CrossModalDataset, bits: int, *, seed: int, progress: Progress | None) -> HashModel:
        hp = self.hparams
        dtype = np.dtype(hp["dtype"])
        rng = np.random.default_rng(seed)
        anchors, sigma, x = {}, {}, []
        # Many items: the RBF row blocks are split between threads with one BLAS thread each
        # (5.3 against 6.1 s for 184,000 x 1,000-d text with two BLAS threads on each block);
        # few: each block's product gets the BLAS threads.
        threads = fast.threads_for(len(train))
        for m in MODALITIES:
            with fast.BLAS.wide() if threads == 1 else nullcontext():
                anchors[m], sigma[m], xm = fast.fit_rbf(train.features(m), hp["n_anchors"], rng, kernel=hp["kernel"],
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
        with fast.BLAS.wide():
            proj = {m: fast.ridge_projection(x[v], h, float(hp["lam"])) for v, m in enumerate(MODALITIES)}
        model = DCGHModel(anchors=anchors, sigma=sigma, proj=proj, train_codes=pack(h),
                          bits=bits, hparams=hp)
        model.record = {
            "objective": [t["total"] for t in history],
            "objective_terms": history,
            "anchors_used": {m: int(a.shape[0]) for m, a in anchors.items()},
            "sigma": dict(sigma),
        }
        return model
