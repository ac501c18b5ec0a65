"""DCGH: each update step against its equation, the features, the objective, persistence, WIKI."""

import numpy as np
import pytest
import scipy.io as sio

from cmhash.codes import unpack
from cmhash.data.dataset import CrossModalDataset, one_hot
from cmhash.data.synthetic import make_synthetic
from cmhash.evaluation import evaluate
from cmhash.methods.base import HashModel
from cmhash.methods._dcgh_linalg import (
    anchor_distances, cholqr_rinv, fit_rbf, gram64, householder_q, matmul_rows, procrustes, rbf_features,
    ridge_projection,
)
from cmhash.methods.dcgh import DCGH, DCGHModel, Solver, balanced_orthogonal, normalise_labels, sgn
from cmhash.methods.registry import get_method


def random_feasible_b(n, r, rng):
    """A random B with B^T 1 = 0 and B^T B = n I."""
    z = rng.standard_normal((n, r))
    z -= z.mean(axis=0)
    return np.sqrt(n) * np.linalg.qr(z)[0]


def random_orthonormal(shape, rng):
    q = np.linalg.qr(rng.standard_normal((max(shape), min(shape))))[0]
    return q if shape[0] >= shape[1] else q.T


def nuclear(m):
    return np.linalg.svd(m, compute_uv=False).sum()


# ------------------------------------------------------------------------------ B-step
@pytest.mark.parametrize("rank", [None, 3, 0])
def test_b_step_is_balanced_orthogonal_and_optimal(rank):
    rng = np.random.default_rng(0)
    n, r = 60, 8
    j = rng.standard_normal((n, r)) * np.array([1e3, 1, 1, 1, 1, 1, 1, 1e-3])
    if rank is not None:  # rank-deficient after centring: rank directions plus a constant part
        j = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, r)) + rng.standard_normal(r)
    b = balanced_orthogonal(j, np.random.default_rng(1))
    np.testing.assert_allclose(b.sum(axis=0), 0, atol=1e-9)          # B^T 1 = 0
    np.testing.assert_allclose(b.T @ b, n * np.eye(r), atol=1e-9)   # B^T B = n I
    # Optimal: <B, J> = sqrt(n) * nuclear norm of the centred J, the maximum over the constraint
    jc = j - j.mean(axis=0)
    best = np.sqrt(n) * nuclear(jc)
    assert np.sum(b * j) == pytest.approx(best, rel=1e-10, abs=1e-8)
    for _ in range(50):
        assert np.sum(random_feasible_b(n, r, rng) * j) <= best + 1e-8


@pytest.mark.parametrize("rank", [None, 5])
def test_b_step_float32_input_gives_float32_b_with_the_float64_answer(rank):
    rng = np.random.default_rng(7)
    n, r = 301, 12
    j = rng.standard_normal((n, r)) * 10 + 3
    if rank is not None:
        j = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, r)) + rng.standard_normal(r)
    j = j.astype(np.float32)
    b32 = balanced_orthogonal(j, np.random.default_rng(1))
    b64 = balanced_orthogonal(j.astype(np.float64), np.random.default_rng(1))
    assert b32.dtype == np.float32 and b64.dtype == np.float64
    np.testing.assert_allclose(b32, b64, atol=1e-5)  # the float64 answer to float32 rounding
    j_copy = j.copy()
    b_inplace = balanced_orthogonal(j_copy, np.random.default_rng(1), inplace=True)
    assert b_inplace is j_copy
    np.testing.assert_array_equal(b_inplace, b32)  # written over J, block by block: the same B
    np.testing.assert_allclose(b32.astype(np.float64).T @ b32, n * np.eye(r), atol=1e-3)


def test_b_step_refuses_too_few_items():
    with pytest.raises(ValueError, match="more items than bits"):
        balanced_orthogonal(np.ones((4, 8)), np.random.default_rng(0))


# ----------------------------------------------------------- QR, row-block products
@pytest.mark.parametrize("n,k,block", [(37, 5, 8), (64, 7, 64), (50, 3, 1000), (9, 0, 4)])
def test_row_block_products_match_direct(n, k, block):
    rng = np.random.default_rng(11)
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((n, 4))
    centre = rng.standard_normal(k)
    ac = a.astype(np.float64) - centre
    np.testing.assert_allclose(gram64(a, block=block), a.T.astype(np.float64) @ a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gram64(a, center=centre, block=block), ac.T @ ac, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gram64(a, b, block=block), a.T.astype(np.float64) @ b, rtol=1e-12, atol=1e-12)
    m = rng.standard_normal((k, 6))
    out = matmul_rows(a, m, np.empty((n, 6), dtype=np.float32), center=centre, block=block)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ac @ m, rtol=1e-6, atol=1e-5)
    sq = rng.standard_normal((n, k))
    expected = sq @ np.eye(k)[::-1]
    np.testing.assert_allclose(matmul_rows(sq, np.eye(k)[::-1], sq, block=block), expected)  # in place


def reference_q(u):
    """Q of u = Q R with diag(R) > 0, from a Householder QR with the signs fixed."""
    q, rr = np.linalg.qr(u)
    return q * np.sign(np.diag(rr))


@pytest.mark.parametrize("cond", [1.0, 30.0, 1e6])
def test_cholesky_qr_and_householder_give_the_positive_diagonal_qr(cond):
    rng = np.random.default_rng(12)
    n, k = 203, 9
    u = np.linalg.qr(rng.standard_normal((n, k)))[0] @ np.diag(np.geomspace(1, 1 / cond, k))
    u = u @ np.linalg.qr(rng.standard_normal((k, k)))[0] * 5.0
    assert (cholqr_rinv(u) is None) == (cond ** 2 >= 100)  # Cholesky QR only when well conditioned
    rinv = cholqr_rinv(u)
    q = householder_q(u) if rinv is None else u @ rinv
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-13)
    np.testing.assert_allclose(q, reference_q(u), atol=1e-9 * cond)
    np.testing.assert_allclose(householder_q(u), reference_q(u), atol=1e-9 * cond)


def test_cholesky_qr_ignores_the_scale_of_the_columns():
    # Orthogonal directions with column norms from 1e-4 to 1e4: cond(u^T u) = 1e16, but Cholesky
    # QR of the equilibrated Gram is exact (the B-step's u = [Ubar | random fill] is like this).
    rng = np.random.default_rng(15)
    base = np.linalg.qr(rng.standard_normal((150, 6)))[0] + 0.05 * rng.standard_normal((150, 6))
    u = base * np.geomspace(1e-4, 1e4, 6)
    rinv = cholqr_rinv(u)
    assert rinv is not None
    q = u @ rinv
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-13)
    np.testing.assert_allclose(q, reference_q(u), atol=1e-10)


def test_cholqr_refuses_rank_deficient_input():
    rng = np.random.default_rng(13)
    u = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 5))
    assert cholqr_rinv(u) is None
    assert cholqr_rinv(np.zeros((40, 0))).shape == (0, 0)


# ------------------------------------------------------------------------ Procrustes
@pytest.mark.parametrize("shape,rank", [((40, 6), None), ((6, 40), None), ((10, 8), None), ((30, 10), 4),
                                        ((500, 21), None), ((500, 21), 8), ((21, 500), 8)])
def test_procrustes_is_orthogonal_and_maximises_trace(shape, rank):
    rng = np.random.default_rng(2)
    m = rng.standard_normal(shape)
    if rank is not None:
        m = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((rank, shape[1]))
    q = procrustes(m)
    k = min(shape)
    gram = q.T @ q if shape[0] >= shape[1] else q @ q.T
    np.testing.assert_allclose(gram, np.eye(k), atol=1e-12)
    value = np.sum(q * m)
    assert value == pytest.approx(nuclear(m), rel=1e-12)
    for _ in range(50):
        assert np.sum(random_orthonormal(shape, rng) * m) <= value + 1e-9


@pytest.mark.parametrize("cond", [1.0, 20.0, 1e3, 1e5])
def test_procrustes_polar_path_and_svd_path_agree(cond):
    # Full column rank: the maximiser is unique, so the M (M^T M)^-1/2 path (cond(M^T M) < 1e7;
    # with a second step above 100) and the SVD path (cond 1e5: cond(M^T M) = 1e10) must both
    # give P R^T of the SVD, to ~cond(M^T M) eps.
    rng = np.random.default_rng(14)
    p = np.linalg.qr(rng.standard_normal((300, 7)))[0]
    rt = np.linalg.qr(rng.standard_normal((7, 7)))[0]
    m = p @ np.diag(np.geomspace(1, 1 / cond, 7)) @ rt
    tol = 1e-13 * max(1.0, min(cond ** 2, 1e4))
    for mm, expected in ((m, p @ rt), (m.T, (p @ rt).T)):
        q = procrustes(mm)
        np.testing.assert_allclose(q, expected, atol=tol)
        gram = q.T @ q if mm.shape[0] >= mm.shape[1] else q @ q.T
        np.testing.assert_allclose(gram, np.eye(7), atol=1e-13)
    assert procrustes(m.astype(np.float32)).dtype == np.float32


def test_sgn_maps_zero_to_plus_one_and_keeps_dtype():
    x = np.array([[-2.0, 0.0, 3.0, -0.0]], dtype=np.float32)
    out = sgn(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[-1, 1, 1, 1]])


# ------------------------------------------------------------------- solver and objective
def small_solver(bits=6, n=80, c=4, alpha=3.0, beta=0.5, seed=0):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.35).astype(float)
    labels[np.arange(n), rng.integers(0, c, n)] = 1
    x = [rng.random((n, 12)), rng.random((n, 9))]
    return Solver(x, normalise_labels(labels, np.float64), bits, alpha, beta, rng)


def brute_objective(s):
    """Eq. 4 with the centre term once, with an explicit n x n S."""
    big_s = s.l @ s.l.T
    total = 0.0
    for v in range(2):
        total += np.sum((s.b[v] - s.x[v] @ s.w[v]) ** 2)
        total += s.alpha * np.sum((s.b[v] - s.g[v] @ s.u) ** 2)
        total += s.beta * np.sum((s.h @ s.b[v].T - s.r * big_s) ** 2)
    return total + s.alpha * np.sum((s.h - s.f @ s.u) ** 2)


@pytest.mark.parametrize("block", [2048, 7, 80])
def test_objective_matches_brute_force(block):
    s = small_solver()
    s.iterate()
    s.iterate()
    assert s.objective(block=block)["total"] == pytest.approx(brute_objective(s), rel=1e-10)
    serial = s.objective(block=block, workers=1)
    for workers in (2, 3):  # blocks split between threads: the same sums in the same order
        assert s.objective(block=block, workers=workers) == serial


def test_float32_objective_matches_the_float64_computation():
    s = small_solver(n=500)
    s.x = [xv.astype(np.float32) for xv in s.x]
    s.l = s.l.astype(np.float32)
    for _ in range(2):
        s.iterate()
    for name in ("h", "f", "u"):
        setattr(s, name, getattr(s, name).astype(np.float32))
    for name in ("b", "g", "xw"):
        setattr(s, name, [m.astype(np.float32) for m in getattr(s, name)])
    o32, o64 = s.objective(block=64), s.objective(block=64, dtype=np.float64)
    assert o32["total"] != o64["total"]  # really computed in float32
    for key in o64:
        assert o32[key] == pytest.approx(o64[key], rel=1e-5)


def test_h_step_is_the_exact_minimiser_over_codes():
    s = small_solver()
    s.iterate()
    s.h_step()
    h = s.h.copy()
    np.testing.assert_array_equal(
        h, np.where(s.alpha * s.f @ s.u + s.beta * s.r * (s.l @ s.l.T) @ (s.b[0] + s.b[1]) >= 0, 1, -1))
    base = s.objective()["total"]
    rng = np.random.default_rng(5)
    for _ in range(30):  # flipping any bit never lowers the objective (it is separable in H)
        i, k = rng.integers(0, h.shape[0]), rng.integers(0, h.shape[1])
        s.h = h.copy()
        s.h[i, k] *= -1
        assert s.objective()["total"] >= base - 1e-9 * abs(base)
    s.h = h


def test_steps_other_than_w_never_increase_the_objective():
    s = small_solver()
    s.iterate()
    steps = [lambda: s.b_step(0), lambda: s.b_step(1), s.h_step, s.u_step,
             lambda: s.g_step(0), lambda: s.g_step(1), s.f_step]
    for _ in range(3):
        for step in steps:
            before = s.objective()["total"]
            step()
            assert s.objective()["total"] <= before + 1e-9 * abs(before)
        for v in range(2):
            s.w_step(v)
        s.update_xw()


def test_b_and_g_steps_in_two_threads_give_the_serial_result(monkeypatch):
    import cmhash.methods._dcgh_linalg as fast

    monkeypatch.setattr(fast, "PARALLEL_MIN_ROWS", 0)
    states = []
    for workers in (1, 2):
        monkeypatch.setattr(fast.BLAS, "workers", lambda w=workers: w)
        s = small_solver(bits=12, n=300, c=5)  # 12 bits of 9 + 12 features: the B-steps fill rank
        for _ in range(3):
            s.iterate()
        states.append([s.h, *s.b, *s.g, *s.w, s.u, s.f])
    for serial, threaded in zip(*states):
        np.testing.assert_array_equal(serial, threaded)


def test_w_step_maximises_its_trace():
    s = small_solver()
    s.iterate()
    s.w_step(0)
    m = s.x[0].T @ s.b[0]
    np.testing.assert_allclose(s.w[0].T @ s.w[0], np.eye(s.r), atol=1e-12)
    assert np.sum(s.w[0] * m) == pytest.approx(nuclear(m), rel=1e-12)


def test_normalise_labels_is_normr():
    lab = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    out = normalise_labels(lab, np.float64)
    np.testing.assert_allclose(out, [[2 ** -0.5, 2 ** -0.5, 0], [0, 0, 1], [0, 0, 0]])


# ------------------------------------------------------------------- features and P
@pytest.mark.parametrize("kernel", ["official", "squared"])
def test_rbf_features_match_a_direct_computation(kernel):
    rng = np.random.default_rng(3)
    x = rng.random((37, 5))
    anchors, sigma, feats = fit_rbf(x, 9, np.random.default_rng(4), kernel=kernel, sigma=None,
                                    dtype=np.float64)
    dist = np.array([[np.sqrt(np.sum((xi - a) ** 2)) for a in anchors] for xi in x])
    # |x|^2 + |a|^2 - 2 x.a leaves ~1e-16 where x is an anchor: ~1e-8 after the square root.
    assert sigma == pytest.approx(dist.mean(), rel=1e-9)
    d = dist if kernel == "official" else dist ** 2
    np.testing.assert_allclose(feats, np.exp(-d / (2 * sigma ** 2)), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(rbf_features(x, anchors, sigma, kernel=kernel, block=4), feats, atol=1e-8)
    assert {tuple(a) for a in anchors} <= {tuple(r) for r in x}  # anchors are training rows
    assert len({tuple(a) for a in anchors}) == 9


@pytest.mark.parametrize("kernel,block", [("official", 5), ("squared", 37), ("official", 1000)])
def test_rbf_blocks_and_float32_match_a_direct_computation(kernel, block):
    rng = np.random.default_rng(8)
    x = rng.random((37, 6)) * 3
    anchors = x[rng.choice(37, 11, replace=False)]
    dist = np.sqrt(((x[:, None, :] - anchors[None]) ** 2).sum(-1))
    np.testing.assert_allclose(anchor_distances(x, anchors, squared=False, dtype=np.float64, block=block),
                               dist, rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(anchor_distances(x, anchors, squared=True, dtype=np.float64, block=block),
                               dist ** 2, rtol=1e-10, atol=1e-10)
    d = dist if kernel == "official" else dist ** 2
    # float32: |x|^2 + |a|^2 - 2 x.a rounds to ~eps32 |x|^2 where x is an anchor, so the plain
    # distance there is ~sqrt(eps32) |x| ~ 1e-3 instead of 0 (the squared one stays ~1e-7).
    for dtype, tol in ((np.float64, 1e-7), (np.float32, 1e-3 if kernel == "official" else 1e-5)):
        feats = rbf_features(x.astype(np.float32), anchors, 1.3, kernel=kernel, dtype=dtype, block=block)
        assert feats.dtype == dtype
        np.testing.assert_allclose(feats, np.exp(-d / (2 * 1.3 ** 2)), atol=tol)
        _, sigma, fitted = fit_rbf(x, 11, np.random.default_rng(9), kernel=kernel, sigma=None, dtype=dtype,
                                   block=block)
        _, _, fitted_given = fit_rbf(x, 11, np.random.default_rng(9), kernel=kernel, sigma=sigma, dtype=dtype,
                                     block=block)
        np.testing.assert_allclose(fitted, fitted_given, atol=tol)  # one-pass path = two-pass path


@pytest.mark.parametrize("kernel,sigma", [("official", None), ("squared", None), ("official", 2.5)])
def test_rbf_in_threads_is_the_serial_result(kernel, sigma):
    x = np.random.default_rng(16).random((103, 7)).astype(np.float32) * 4
    results = [fit_rbf(x, 13, np.random.default_rng(17), kernel=kernel, sigma=sigma, dtype=np.float32,
                       block=8, workers=workers) for workers in (1, 2, 3, 40)]
    for anchors, sig, feats in results[1:]:
        np.testing.assert_array_equal(anchors, results[0][0])
        assert sig == results[0][1]
        np.testing.assert_array_equal(feats, results[0][2])


@pytest.mark.parametrize("n,block,workers", [(103, 8, 2), (103, 8, 40), (16, 8, 3), (5, 8, 2), (0, 8, 2)])
def test_row_parts_cover_the_rows_at_block_boundaries(n, block, workers):
    from cmhash.methods._dcgh_linalg import row_parts

    parts = row_parts(n, block, workers)
    assert len(parts) <= max(1, workers)
    assert [p.start for p in parts] == [0] + [p.stop for p in parts[:-1]] and parts[-1].stop == n
    assert all(p.start % block == 0 for p in parts)


@pytest.mark.parametrize("n,block,dtype", [(50, 8, np.float64), (50, 7, np.float32), (50, 512, np.float64)])
def test_ridge_projection_matches_closed_form(n, block, dtype):
    rng = np.random.default_rng(6)
    x, h = rng.random((n, 7)), np.where(rng.random((n, 4)) < 0.5, -1.0, 1.0)
    x, h = x.astype(dtype), h.astype(dtype)
    x64 = x.astype(np.float64)
    expected = np.linalg.solve(x64.T @ x64 + 0.1 * np.eye(7), x64.T @ h)
    np.testing.assert_allclose(ridge_projection(x, h, 0.1, block=block), expected, rtol=1e-10)


# ---------------------------------------------------------------------- whole method
@pytest.fixture(scope="module")
def data():
    return make_synthetic(700, seed=1)


@pytest.fixture(scope="module")
def model(data):
    return get_method("dcgh", n_anchors=200).fit(data.train, 12, seed=0)


def test_fit_records_objective_and_learns(model, data):
    obj = model.record["objective"]
    assert len(obj) == 10 and all(np.isfinite(obj))
    assert obj[-1] < obj[0]
    assert model.record["anchors_used"] == {"image": 200, "text": 200}
    res = evaluate(model, data)
    assert res["i2t"]["map"] > 0.6 and res["t2i"]["map"] > 0.6  # chance is ~0.3 here


def test_database_codes_are_learned_h(model, data):
    h = model.database_codes("image")
    assert h is model.database_codes("text") and len(h) == len(data.train) and h.nbits == 12
    enc = get_method("dcgh", n_anchors=200, database="encode").fit(data.train, 12, seed=0)
    assert enc.database_codes("text") is None
    np.testing.assert_array_equal(enc.train_codes.data, h.data)  # same training, other convention
    with pytest.raises(ValueError, match="unknown modality"):
        model.database_codes("audio")


def test_same_seed_same_codes_and_save_load_round_trip(model, data, tmp_path):
    again = get_method("dcgh", n_anchors=200).fit(data.train, 12, seed=0)
    np.testing.assert_array_equal(again.train_codes.data, model.train_codes.data)
    path = model.save(tmp_path / "dcgh.npz")
    loaded = HashModel.load(path)
    assert isinstance(loaded, DCGHModel) and loaded.record["objective"] == model.record["objective"]
    for m in ("image", "text"):
        q = data.query.features(m)
        np.testing.assert_array_equal(loaded.encode(m, q).data, model.encode(m, q).data)
        np.testing.assert_array_equal(loaded.database_codes(m).data, model.database_codes(m).data)


def test_float32_solver_stays_float32():
    s = small_solver()
    s.x = [xv.astype(np.float32) for xv in s.x]
    s.l = s.l.astype(np.float32)
    for name in ("h", "u", "f"):
        setattr(s, name, getattr(s, name).astype(np.float32))
    for name in ("w", "g", "b"):
        setattr(s, name, [a.astype(np.float32) for a in getattr(s, name)])
    s.update_xw()
    s.iterate()
    arrays = [s.h, s.u, s.f, *s.w, *s.g, *s.b, *s.xw]
    assert all(a.dtype == np.float32 for a in arrays), [a.dtype for a in arrays]


def test_float32_is_the_default_and_agrees_with_float64(model, data):
    assert model.hparams["dtype"] == "float32"
    f64 = get_method("dcgh", n_anchors=200, dtype="float64").fit(data.train, 12, seed=0)
    res32, res64 = evaluate(model, data), evaluate(f64, data)
    for d in ("i2t", "t2i"):
        assert abs(res32[d]["map"] - res64[d]["map"]) < 0.03


def test_encode_checks_input(model):
    with pytest.raises(ValueError, match=r"image features must be \(n x 128\)"):
        model.encode("image", np.zeros((3, 5)))


@pytest.mark.parametrize("bad,match", [
    ({"kernel": "gauss"}, "kernel must be one of"), ({"database": "h"}, "database must be one of"),
    ({"alpha": -1}, "alpha must be a number >= 0"), ({"n_anchors": 0}, "n_anchors must be a positive"),
    ({"sigma": 0}, "sigma must be None or a number > 0"), ({"dtype": "float16"}, "dtype must be one of"),
])
def test_bad_hyper_parameters_are_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        get_method("dcgh", **bad)


def test_presets_are_the_papers_values():
    assert DCGH.presets["wiki"] == {"alpha": 10.0, "beta": 10.0, "lam": 0.01}
    m = get_method("dcgh", preset="nus-wide")
    assert (m.hparams["alpha"], m.hparams["beta"], m.hparams["lam"]) == (1e4, 1e-1, 1e-4)
    assert set(DCGH.presets) == {"wiki", "mirflickr", "iapr", "nus-wide"}


@pytest.mark.wiki
def test_wiki_16_bits_is_in_the_papers_range(wiki_path):
    m = sio.loadmat(wiki_path)
    split = lambda s: CrossModalDataset(image=m[f"I_{s}"], text=m[f"T_{s}"],  # noqa: E731
                                        labels=one_hot(m[f"L_{s}"], 10), name=f"wiki/{s}")
    train = split("tr")
    data = train.with_splits(train=train, query=split("te"), database=train)
    model = get_method("dcgh", preset="wiki").fit(train, 16, seed=0)
    res = evaluate(model, data)
    # Official code under Octave, 5 seeds: 35.82 / 75.03; one seed varies by about a point.
    assert 0.33 < res["i2t"]["map"] < 0.40
    assert 0.72 < res["t2i"]["map"] < 0.78
    assert unpack(model.train_codes).shape == (2173, 16)


def test_blas_threads_one_for_small_work_configured_count_for_wide_products():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from cmhash.methods._dcgh_linalg import BlasThreads

    def counts():
        return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    blas = BlasThreads()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        assert counts() == {2}
        with blas.small():
            assert counts() == {1}
            with blas.wide():
                assert counts() == {2}
            assert counts() == {1}
        assert counts() == {2}
        with blas.wide():  # outside small(): leaves the configuration alone
            assert counts() == {2}
