"""DEMO's pieces against plain loops: energy distance, structure, the three consistency losses."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cmhash.methods.demo as demo  # noqa: E402
from cmhash.methods.demo import (  # noqa: E402
    augment_views,
    co_occurrence,
    distance_quantile,
    energy_distances,
    guided_consistency,
    retrieval_consistency,
    sharpen,
    similarity_structure,
    unit_view_means,
)
from cmhash.methods.registry import get_method  # noqa: E402


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def energy_direct(u: np.ndarray, v: np.ndarray) -> float:
    """Eq. 6-7 written out: 2A - B - C with rho = cosine distance, averages over all M^2 pairs."""
    M = len(u)
    rho = lambda a, b: 1 - cos(a, b)  # noqa: E731
    A = sum(rho(u[m], v[k]) for m in range(M) for k in range(M)) / M**2
    B = sum(rho(u[m], u[k]) for m in range(M) for k in range(M)) / M**2
    C = sum(rho(v[m], v[k]) for m in range(M) for k in range(M)) / M**2
    return 2 * A - B - C


def test_energy_distance_matches_direct_loop_on_tiny_view_sets():
    rng = np.random.default_rng(0)
    views = rng.standard_normal((6, 4, 5))  # 6 items, M = 4 views, d = 5
    z = unit_view_means(views)
    got = energy_distances(z, z)
    for i in range(6):
        for j in range(6):
            assert got[i, j] == pytest.approx(energy_direct(views[i], views[j]), abs=1e-12)
    assert np.allclose(np.diag(got), 0) and (got >= 0).all()
    # M = 1: twice the cosine distance (the w/o D reading)
    single = unit_view_means(views[:, :1])
    assert energy_distances(single, single)[0, 1] == pytest.approx(2 * (1 - cos(views[0, 0], views[1, 0])))


@pytest.mark.parametrize("block", [1, 2, 5, 1000])
def test_blockwise_equals_all_at_once(block):
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((11, 7)), rng.standard_normal((9, 7))
    full = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(energy_distances(a, b, block_rows=block), full, atol=1e-12)
    t = energy_distances(torch.tensor(a), torch.tensor(b), block_rows=block)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), full, atol=1e-12)


def test_distance_quantile_exact_and_sampled(monkeypatch):
    rng = np.random.default_rng(2)
    z = unit_view_means(rng.standard_normal((300, 3, 6)))
    full = energy_distances(z, z)
    upper = full[np.triu_indices(300, 1)]
    want = np.quantile(upper, 0.1)
    assert distance_quantile(z, 0.1, np.random.default_rng(0)) == pytest.approx(want, abs=1e-12)
    monkeypatch.setattr(demo, "QUANTILE_EXACT_MAX_ITEMS", 10)
    monkeypatch.setattr(demo, "QUANTILE_SAMPLE_PAIRS", 200_000)
    assert distance_quantile(z, 0.1, np.random.default_rng(0)) == pytest.approx(want, rel=0.03)


def test_similarity_structure_is_eq_11():
    rng = np.random.default_rng(3)
    d, sv, st = (torch.tensor(rng.random((5, 5))) for _ in range(3))
    s = similarity_structure(d, sv, st, tau=0.4, alpha=0.3)
    for i in range(5):
        for j in range(5):
            want = 1.0 if d[i, j] < 0.4 else 0.3 * sv[i, j] + 0.7 * st[i, j]
            assert float(s[i, j]) == pytest.approx(float(want))


def test_guided_consistency_matches_plain_loop_of_eq12():
    """Eq. 12 literally: e1 and e2 each run over {v, t}, so the image-text term counts twice."""
    rng = np.random.default_rng(4)
    bv, bt, s = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)), rng.random((4, 4))
    b = {"v": bv, "t": bt}
    want = 0.0
    for e1 in ("v", "t"):
        for e2 in ("v", "t"):
            want += sum((cos(b[e1][i], b[e2][j]) - s[i, j]) ** 2 for i in range(4) for j in range(4)) / 16
    got = guided_consistency(torch.tensor(bv), torch.tensor(bt), torch.tensor(s))
    assert float(got) == pytest.approx(want, rel=1e-10)


def test_guided_consistency_unordered_counts_image_text_once():
    rng = np.random.default_rng(14)
    bv, bt = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))
    s = rng.random((5, 5))
    s = (s + s.T) / 2  # S of Eq. 11 is symmetric
    want = 0.0
    for x, y in ((bv, bv), (bt, bt), (bv, bt)):
        want += sum((cos(x[i], y[j]) - s[i, j]) ** 2 for i in range(5) for j in range(5)) / 25
    args = torch.tensor(bv), torch.tensor(bt), torch.tensor(s)
    got = guided_consistency(*args, "unordered")
    assert float(got) == pytest.approx(want, rel=1e-10)
    vt = sum((cos(bv[i], bt[j]) - s[i, j]) ** 2 for i in range(5) for j in range(5)) / 25
    assert float(guided_consistency(*args)) == pytest.approx(want + vt, rel=1e-10)  # (t,v) = (v,t) here
    with pytest.raises(ValueError, match="gui_terms"):
        guided_consistency(*args, "both")
    with pytest.raises(ValueError, match="gui_terms"):
        get_method("demo", gui_terms="twice")._check_hparams()


def softmax(v):
    e = np.exp(v - max(v))
    return e / e.sum()


@pytest.mark.parametrize("temperature", [0.25, None])
def test_retrieval_consistency_matches_plain_loop(temperature):
    rng = np.random.default_rng(5)
    bv, bt = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    want = 0.0
    for i in range(5):
        p_i2t = softmax(np.array([cos(bv[i], bt[j]) for j in range(5)]))
        p_t2i = softmax(np.array([cos(bt[i], bv[j]) for j in range(5)]))
        for target, q in ((p_i2t, p_t2i), (p_t2i, p_i2t)):
            if temperature is not None:
                target = target ** (1 / temperature) / (target ** (1 / temperature)).sum()  # Eq. 15
            want += float((target * np.log(target / q)).sum())
    got = retrieval_consistency(torch.tensor(bv), torch.tensor(bt), temperature)
    assert float(got) == pytest.approx(want / 5, rel=1e-9)


def test_retrieval_consistency_targets_are_detached():
    bv = torch.randn(4, 3, requires_grad=True)
    bt = torch.randn(4, 3)
    retrieval_consistency(bv, bt, 0.25).backward()
    g_full = bv.grad.clone()
    # the same loss with the targets built from frozen copies has the same gradient
    bv.grad = None
    bv2 = bv.detach().clone()

    def loss_with_fixed_targets():
        import torch.nn.functional as F
        cm = lambda a, b: F.normalize(a, dim=1) @ F.normalize(b, dim=1).T  # noqa: E731
        t_i2t = sharpen(F.softmax(cm(bv2, bt), 1), 0.25)
        t_t2i = sharpen(F.softmax(cm(bt, bv2), 1), 0.25)
        log_i2t, log_t2i = F.log_softmax(cm(bv, bt), 1), F.log_softmax(cm(bt, bv), 1)
        return ((t_i2t * (t_i2t.log() - log_t2i)).sum(1).mean()
                + (t_t2i * (t_t2i.log() - log_i2t)).sum(1).mean())

    loss_with_fixed_targets().backward()
    assert torch.allclose(bv.grad, g_full, atol=1e-6)


def test_sharpen_and_co_occurrence():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    want = np.array([0.5, 0.3, 0.2]) ** 4
    assert np.allclose(sharpen(p, 0.25).numpy(), want / want.sum())
    bv, bt = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    assert float(co_occurrence(bv, bt, 1.5)) == pytest.approx(((1 - 1.5) ** 2 + (-1 - 1.5) ** 2) / 2)


def test_augment_views_shape_dropout_and_noise():
    rng = np.random.default_rng(6)
    x = rng.random((200, 8)) + 1.0
    v = augment_views(x, 5, dropout=0.25, noise=0.0, rng=np.random.default_rng(0))
    assert v.shape == (200, 5, 8)
    kept = v != 0
    assert abs(kept.mean() - 0.75) < 0.02 and np.allclose(v[kept], np.repeat(x[:, None], 5, 1)[kept])
    w = augment_views(x, 3, dropout=0.0, noise=0.5, rng=np.random.default_rng(0))
    assert np.std(w - x[:, None]) == pytest.approx(0.5 * x.std(axis=0).mean(), rel=0.15)


def test_hparams_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        get_method("demo", tau=1.25)._check_hparams()
    with pytest.raises(ValueError, match="tau_quantile"):
        get_method("demo", tau_quantile=1.5)._check_hparams()
    assert get_method("demo", tau=1.25, tau_quantile=None)._check_hparams()["tau"] == 1.25
    with pytest.raises(ValueError, match="views"):
        get_method("demo", views=0)._check_hparams()
    assert math.isclose(get_method("demo").hparams["sharpen_T"], 0.25)
