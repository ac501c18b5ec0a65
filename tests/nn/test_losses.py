"""The shared deep losses against explicit loops (brute-force references)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.nn.losses import (  # noqa: E402
    cosine_similarity_matrix,
    multilabel_cross_entropy,
    ndcg_gains,
    triplet_coefficients,
    triplet_loss_from_similarity,
    weighted_triplet_loss,
)
from cmhash.nn.losses import _numba_kernel  # noqa: E402

BACKENDS = ["torch"] + (["numba"] if _numba_kernel() is not None else [])


def brute_triplet(d_pos, w_pos, d_neg, neg_mask, margin):
    """The cubic definition: every (anchor, positive, negative) triplet, one by one."""
    total, active = 0.0, 0
    a_n, p_n = d_pos.shape
    for a, p, n in itertools.product(range(a_n), range(p_n), range(d_neg.shape[1])):
        if w_pos[a, p] > 0 and neg_mask[a, n]:
            h = d_pos[a, p] - d_neg[a, n] + margin
            if h > 0:
                total += w_pos[a, p] * h
                active += 1
    return total / max(active, 1), active


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_triplet_matches_cubic_loop_with_ties(dtype, seed):
    rng = np.random.default_rng(seed)
    a, p, n = 5, 7, 9
    # distances on a coarse grid, so d_ap - d_an + margin hits exactly 0 and negatives tie
    d_pos = rng.integers(0, 5, (a, p)) / 4.0
    d_neg = rng.integers(0, 5, (a, n)) / 4.0
    w_pos = rng.random((a, p)) * (rng.random((a, p)) < 0.6)
    neg_mask = rng.random((a, n)) < 0.6
    neg_mask[0] = False          # an anchor without negatives
    w_pos[1] = 0.0               # an anchor without positives
    for margin in (0.0, 0.25, 0.5):
        got, n_act = weighted_triplet_loss(
            torch.tensor(d_pos, dtype=dtype), torch.tensor(w_pos, dtype=dtype),
            torch.tensor(d_neg, dtype=dtype), torch.tensor(neg_mask), margin,
        )
        want, want_act = brute_triplet(d_pos, w_pos, d_neg, neg_mask, margin)
        assert n_act == want_act
        assert float(got) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_weighted_triplet_gradient_matches_cubic_autograd():
    rng = np.random.default_rng(5)
    a, p, n = 4, 6, 8
    d_pos = torch.tensor(rng.random((a, p)), dtype=torch.float64, requires_grad=True)
    d_neg = torch.tensor(rng.random((a, n)), dtype=torch.float64, requires_grad=True)
    w = torch.tensor(rng.random((a, p)) * (rng.random((a, p)) < 0.7))
    mask = torch.tensor(rng.random((a, n)) < 0.7)
    loss, _ = weighted_triplet_loss(d_pos, w, d_neg, mask, 0.3)
    g_pos, g_neg = torch.autograd.grad(loss, (d_pos, d_neg))
    # cubic reference with autograd
    dp = d_pos.detach().clone().requires_grad_(True)
    dn = d_neg.detach().clone().requires_grad_(True)
    h = (dp[:, :, None] - dn[:, None, :] + 0.3) * (w[:, :, None] > 0) * mask[:, None, :]
    ref = (w[:, :, None] * h.clamp_min(0)).sum() / max(int((h > 0).sum()), 1)
    r_pos, r_neg = torch.autograd.grad(ref, (dp, dn))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()))
    assert torch.allclose(g_pos, r_pos) and torch.allclose(g_neg, r_neg)


def brute_coefficients(x, w, y, neg):
    """count_ap, below_ap (positives only) and m_an (negatives only), one pair at a time."""
    a_n, p_n, n_n = x.shape[0], x.shape[1], y.shape[1]
    count, below, m = np.zeros((a_n, p_n), int), np.zeros((a_n, p_n)), np.zeros((a_n, n_n))
    for a, p, n in itertools.product(range(a_n), range(p_n), range(n_n)):
        if w[a, p] > 0 and neg[a, n] and y[a, n] < x[a, p]:
            count[a, p] += 1
            below[a, p] += y[a, n]
            m[a, n] += w[a, p]
    return count, below, m


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_coefficients_match_pairwise_loop_with_ties(backend, dtype, seed):
    rng = np.random.default_rng(seed)
    a, p, n = 6, 7, 9
    d_pos = rng.integers(0, 5, (a, p)) / 4.0       # coarse grid: x_ap == d_an happens, and ties
    d_neg = rng.integers(0, 5, (a, n)) / 4.0
    w = rng.random((a, p)) * (rng.random((a, p)) < 0.6)
    neg = rng.random((a, n)) < 0.6
    neg[0], w[1], neg[2], w[3] = False, 0.0, True, 1.0   # no negatives / no positives / all / all
    for margin in (0.0, 0.25):
        x = d_pos + margin
        count, below, m = triplet_coefficients(torch.tensor(x, dtype=dtype), torch.tensor(w, dtype=dtype),
                                               torch.tensor(d_neg, dtype=dtype), torch.tensor(neg),
                                               backend=backend)
        want = brute_coefficients(x, w, d_neg, neg)
        np.testing.assert_array_equal(count.numpy(), want[0])
        np.testing.assert_allclose(below.numpy(), want[1], atol=1e-6)
        np.testing.assert_allclose(m.numpy(), want[2], atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_triplet_coefficients_same_order_shortcut(backend):
    """x = d + margin on the same matrix (positives and negatives share columns): one argsort."""
    rng = np.random.default_rng(7)
    d = rng.integers(0, 6, (8, 8)).astype(np.float32) / 5
    labels = rng.integers(0, 2, (8, 3)).astype(np.float32)
    shared = labels @ labels.T
    w, neg = (shared > 0) * rng.random((8, 8)).astype(np.float32), shared == 0
    dt = torch.tensor(d)
    got = triplet_coefficients(dt + 0.2, torch.tensor(w), dt, torch.tensor(neg), same_order=True, backend=backend)
    want = brute_coefficients((dt + 0.2).numpy(), w, d, neg)
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_allclose(got[1].numpy(), want[1], atol=1e-6)
    np.testing.assert_allclose(got[2].numpy(), want[2], atol=1e-6)


def test_triplet_coefficients_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        triplet_coefficients(torch.zeros(2, 2), torch.ones(2, 2), torch.zeros(2, 2),
                             torch.ones(2, 2, dtype=torch.bool), backend="cuda")


def test_weighted_triplet_same_matrix_gradient_matches_cubic_autograd():
    """The call shape of the deep methods: d_pos is d_neg, complementary masks."""
    rng = np.random.default_rng(11)
    labels = torch.tensor(rng.integers(0, 2, (10, 3)), dtype=torch.float64)
    shared = labels @ labels.T
    d = torch.tensor(rng.random((10, 10)), requires_grad=True)
    raw_w = torch.tensor(rng.random((10, 10)), requires_grad=True)   # weights with a gradient too
    w = (shared > 0) * raw_w
    loss, _ = weighted_triplet_loss(d, w, d, shared == 0, 0.2)
    g, g_w = torch.autograd.grad(loss, (d, raw_w))
    dd, ww = d.detach().clone().requires_grad_(True), raw_w.detach().clone().requires_grad_(True)
    wr = (shared > 0) * ww
    h = (dd[:, :, None] - dd[:, None, :] + 0.2) * (wr[:, :, None] > 0) * (shared == 0)[:, None, :]
    ref = (wr[:, :, None] * h.clamp_min(0)).sum() / max(int((h > 0).sum()), 1)
    r, r_w = torch.autograd.grad(ref, (dd, ww))
    assert float(loss.detach()) == pytest.approx(float(ref.detach()))
    assert torch.allclose(g, r) and torch.allclose(g_w, r_w)


def previous_triplet_loss(d_pos, w_pos, d_neg, neg_mask, margin):
    """The previous implementation (torch sort + searchsorted + prefix sums, autograd through the
    sort), kept as the reference the current one must reproduce to rounding."""
    x = d_pos + margin
    big = x.detach().abs().max() + d_neg.detach().abs().max() + 1.0
    y_sorted, _ = torch.sort(torch.where(neg_mask, d_neg, big.to(d_neg.dtype)), dim=1)
    prefix = torch.cat([torch.zeros_like(y_sorted[:, :1]), torch.cumsum(y_sorted, dim=1)], dim=1)
    count = torch.searchsorted(y_sorted.detach().contiguous(), x.detach().contiguous(), side="left")
    count = torch.minimum(count, neg_mask.sum(dim=1, keepdim=True))
    hinge_sum = count.to(x.dtype) * x - torch.gather(prefix, 1, count)
    active = w_pos > 0
    return (w_pos * hinge_sum * active).sum() / max(int((count * active).sum()), 1), int((count * active).sum())


@pytest.mark.parametrize("same_matrix", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_triplet_reproduces_previous_implementation(same_matrix, seed):
    rng = np.random.default_rng(seed)
    a = n = 40
    labels = torch.tensor((rng.random((a, 4)) < 0.3).astype(float))
    labels[0] = 0.0                                          # an anchor without positives
    labels[1] = 1.0                                          # an anchor without negatives
    shared = labels @ labels.T
    w = (shared > 0) * torch.tensor(rng.random((a, n)))
    neg = shared == 0
    d_neg = torch.tensor(np.round(rng.random((a, n)), 2), requires_grad=True)   # ties
    d_pos = d_neg if same_matrix else torch.tensor(np.round(rng.random((a, n)), 2), requires_grad=True)
    got, got_n = weighted_triplet_loss(d_pos, w, d_neg, neg, 0.05)
    want, want_n = previous_triplet_loss(d_pos, w, d_neg, neg, 0.05)
    assert got_n == want_n
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    inputs = (d_neg,) if same_matrix else (d_pos, d_neg)
    for g, r in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-15)


def test_ndcg_gains_reproduce_previous_formula():
    rng = np.random.default_rng(4)
    labels = torch.tensor((rng.random((30, 6)) < 0.3).astype(np.float32))
    labels[0] = 0.0
    shared = labels @ labels.T
    ideal = torch.sort(shared, dim=1, descending=True).values
    ranks = torch.arange(2, 32, dtype=torch.float32)
    z = ((2.0 ** ideal - 1.0) / torch.log2(ranks)).sum(dim=1, keepdim=True)
    torch.testing.assert_close(ndcg_gains(shared), (2.0 ** shared - 1.0) / z.clamp_min(1e-12), rtol=0, atol=0)


def test_no_triplet_gives_zero_not_nan():
    loss, n_act = weighted_triplet_loss(torch.zeros(3, 3), torch.zeros(3, 3), torch.ones(3, 3),
                                        torch.ones(3, 3, dtype=torch.bool), 0.1)
    assert n_act == 0 and float(loss) == 0.0


def test_triplet_from_similarity_uses_shared_labels():
    rng = np.random.default_rng(3)
    sim = rng.uniform(-1, 1, (6, 6))
    labels = rng.integers(0, 2, (6, 3)).astype(float)
    labels[labels.sum(1) == 0, 0] = 1
    shared = labels @ labels.T
    got, _ = triplet_loss_from_similarity(torch.tensor(sim), torch.tensor(shared), 0.2)
    want, _ = brute_triplet(1 - sim, (shared > 0).astype(float), 1 - sim, shared == 0, 0.2)
    assert float(got) == pytest.approx(want)


def test_ndcg_gains_follow_definition():
    shared = np.array([[2, 0, 1, 1], [0, 0, 0, 0], [3, 1, 0, 2]], dtype=float)
    got = ndcg_gains(torch.tensor(shared)).numpy()
    for i, row in enumerate(shared):
        ideal = np.sort(row)[::-1]
        z = sum((2 ** v - 1) / np.log2(r + 2) for r, v in enumerate(ideal))
        want = (2 ** row - 1) / z if z > 0 else np.zeros_like(row)
        np.testing.assert_allclose(got[i], want)


def test_cosine_matrix_and_cross_entropy_match_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((3, 5))
    want = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    np.testing.assert_allclose(cosine_similarity_matrix(torch.tensor(a), torch.tensor(b)).numpy(), want)
    logits, labels = rng.standard_normal((4, 3)), np.array([[1, 0, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]], float)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want_ce = -np.mean(((labels / labels.sum(1, keepdims=True)) * logp).sum(1))
    got_ce = multilabel_cross_entropy(torch.tensor(logits), torch.tensor(labels))
    assert float(got_ce) == pytest.approx(want_ce)
