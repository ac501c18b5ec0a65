"""IDGH components against numpy / explicit references, and the method end to end."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.methods.idgh import (  # noqa: E402
    IDGH,
    ClassCovariance,
    calibrate,
    covariance_root,
    covariance_roots,
    eta_at,
    matrix_power,
    matrix_sqrt,
    noise_powers,
    ndcg_triplet_loss,
    ndcg_triplet_weights,
    neighbour_covariances,
    refinement_weights,
    synthesize,
)
from cmhash.methods.registry import get_method  # noqa: E402


def toy(seed=0, n=40, k=5, c=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)) * rng.uniform(0.5, 2, k) + rng.standard_normal(k)
    lab = (rng.random((n, c)) < 0.4).astype(float)
    lab[np.arange(n), rng.integers(0, c, n)] = 1
    return x, lab


def numpy_class_stats(x, lab):
    means, covs = [], []
    for c in range(lab.shape[1]):
        xc = x[lab[:, c] > 0]
        means.append(xc.mean(0))
        covs.append(np.cov(xc.T, bias=True))
    return np.array(means), np.array(covs)


@pytest.mark.parametrize("full", [False, True])
def test_class_covariance_matches_numpy(full):
    x, lab = toy()
    est = ClassCovariance(lab.shape[1], x.shape[1], full=full)
    est.update(torch.tensor(x), torch.tensor(lab))
    means, covs = numpy_class_stats(x, lab)
    np.testing.assert_allclose(est.mean.numpy(), means, atol=1e-12)
    want = covs if full else np.array([np.diag(c) for c in covs])
    np.testing.assert_allclose(est.cov.numpy(), want, atol=1e-12)
    np.testing.assert_allclose(est.last_counts.numpy(), lab.sum(0))


@pytest.mark.parametrize("full", [False, True])
def test_running_estimate_is_exact_pooled_covariance_with_momentum_one(full):
    x, lab = toy(1, n=60)
    est = ClassCovariance(lab.shape[1], x.shape[1], full=full, momentum=1.0)
    est.update(torch.tensor(x[:25]), torch.tensor(lab[:25]))
    est.update(torch.tensor(x[25:]), torch.tensor(lab[25:]))
    means, covs = numpy_class_stats(x, lab)
    np.testing.assert_allclose(est.mean.numpy(), means, atol=1e-10)
    want = covs if full else np.array([np.diag(c) for c in covs])
    np.testing.assert_allclose(est.cov.numpy(), want, atol=1e-10)


def test_running_estimate_momentum_floor():
    x, lab = toy(2, n=60)
    est = ClassCovariance(lab.shape[1], x.shape[1], momentum=0.8)
    est.update(torch.tensor(x[:50]), torch.tensor(lab[:50]))
    m0, c0 = est.mean.numpy().copy(), est.cov.numpy().copy()
    est.update(torch.tensor(x[50:]), torch.tensor(lab[50:]))
    m1, c1 = numpy_class_stats(x[50:], lab[50:])
    n_old, n_new = lab[:50].sum(0), lab[50:].sum(0)
    alpha = np.maximum(n_new / (n_old + n_new), 0.2)[:, None]
    d = m0 - m1
    want = (1 - alpha) * c0 + alpha * np.array([np.diag(c) for c in c1]) + alpha * (1 - alpha) * d * d
    np.testing.assert_allclose(est.cov.numpy(), want, atol=1e-12)
    np.testing.assert_allclose(est.mean.numpy(), (1 - alpha) * m0 + alpha * m1, atol=1e-12)


def test_pooled_global_covariance_is_count_weighted():
    x, lab = toy(3)
    est = ClassCovariance(lab.shape[1], x.shape[1])
    est.update(torch.tensor(x), torch.tensor(lab))
    _, covs = numpy_class_stats(x, lab)
    n = lab.sum(0)
    want = (n[:, None] * np.array([np.diag(c) for c in covs])).sum(0) / n.sum()
    np.testing.assert_allclose(est.pooled().numpy(), want, atol=1e-12)


def test_refinement_weights_follow_formula():
    counts = torch.tensor([0.0, 1.0, 2.0, 10.0, 39.0, 40.0, 100.0], dtype=torch.float64)
    got = refinement_weights(counts, beta=0.1, below=40).numpy()
    want = [0.0] + [1 / (1 + math.log(1 + 0.1 * (n - 1))) for n in (1, 2, 10, 39)] + [0.0, 0.0]
    np.testing.assert_allclose(got, want)


def test_neighbour_covariances_follow_formula():
    rng = np.random.default_rng(4)
    c, k = 6, 3
    est_i, est_t = ClassCovariance(c, k), ClassCovariance(c, k)
    for est in (est_i, est_t):
        est.mean = torch.tensor(rng.standard_normal((c, k)))
        est.cov = torch.tensor(rng.random((c, k)))
    counts = np.array([5.0, 1.0, 8.0, 3.0, 0.0, 12.0])
    est_i.last_counts = est_t.last_counts = torch.tensor(counts)
    nb_i, nb_t, weights = neighbour_covariances(est_i, est_t, num_neighbors=2, sigma_m=1.0, sigma_cv=2.0)
    mi, mt, ci, ct = (t.numpy() for t in (est_i.mean, est_t.mean, est_i.cov, est_t.cov))
    dm = np.linalg.norm(mi[:, None] - mt[None], axis=2)
    dc = np.linalg.norm(ci[:, None] - ct[None], axis=2)
    ok = (counts > 0)[:, None] & (counts > 1)[None, :] & ~np.eye(c, dtype=bool)
    dm = (dm - dm[ok].min()) / (dm[ok].max() - dm[ok].min() + 1e-8)
    dc = (dc - dc[ok].min()) / (dc[ok].max() - dc[ok].min() + 1e-8)
    for a in range(c):
        if counts[a] == 0:
            assert np.all(weights[a].numpy() == 0)
            continue
        cand = [j for j in range(c) if ok[a, j]]
        near = sorted(cand, key=lambda j: dm[a, j] + dc[a, j])[:2]
        w = np.zeros(c)
        for j in near:
            w[j] = counts[j] * np.exp(-dm[a, j] ** 2 / 2 - dc[a, j] ** 2 / (2 * 4.0))
        np.testing.assert_allclose(weights[a].numpy(), w, rtol=1e-10)
        np.testing.assert_allclose(nb_i[a].numpy(), w @ ci / w.sum(), rtol=1e-10)
        np.testing.assert_allclose(nb_t[a].numpy(), w @ ct / w.sum(), rtol=1e-10)


def test_calibrate_formula():
    cov = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = torch.tensor([0.0, 0.5])
    glob, nb = torch.tensor([10.0, 20.0]), torch.tensor([[0.0, 0.0], [100.0, 200.0]])
    got = calibrate(cov, w, glob, nb, gamma=0.1).numpy()
    np.testing.assert_allclose(got[0], [1.0, 2.0])
    np.testing.assert_allclose(got[1], 0.5 * np.array([3, 4]) + 0.05 * np.array([10, 20]) + 0.45 * np.array([100, 200]))


def test_synthetic_samples_have_the_requested_diagonal_covariance():
    torch.manual_seed(0)
    centre = torch.tensor([[0.5, -0.2, 0.1]])
    var = torch.tensor([[0.04, 0.01, 0.09]])
    samples = synthesize(centre, [covariance_root(var)] * 30000, eta=0.5)
    np.testing.assert_allclose(samples.mean(0).numpy(), centre[0].numpy(), atol=0.005)
    np.testing.assert_allclose(samples.var(0).numpy(), 0.5 * var[0].numpy(), rtol=0.05)


@pytest.mark.parametrize("noise", ["official", "written"])
def test_each_sample_has_its_readings_variance(noise):
    """"written": every sample ~ N(b, eta Sigma); "official": sample s has std sqrt(eta) Sigma^(1/2^s)
    (the official loop's repeated square root), so for variances < 1 later samples are noisier."""
    torch.manual_seed(2)
    n, eta = 20000, 0.6
    centre = torch.tensor([[0.5, -0.2, 0.1]]).repeat(n, 1)
    var = torch.tensor([[0.04, 0.01, 0.09]])
    per = synthesize(centre, covariance_roots(var.repeat(n, 1), noise, 3), eta=eta).reshape(3, n, 3)
    for s in range(3):
        power = 0.5 if noise == "written" else 0.5 ** (s + 1)
        want_std = math.sqrt(eta) * var[0].numpy() ** power
        np.testing.assert_allclose(per[s].std(0).numpy(), want_std, rtol=0.03)
        np.testing.assert_allclose(per[s].mean(0).numpy(), centre[0].numpy(), atol=0.02)
    if noise == "official":
        stds = [float(per[s].std(0).mean()) for s in range(3)]
        assert stds[0] < stds[1] < stds[2]


def test_noise_powers_and_matrix_power():
    assert noise_powers("official", 3) == [0.5, 0.25, 0.125]
    assert noise_powers("written", 3) == [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="noise"):
        noise_powers("exact", 3)
    a = torch.tensor([[0.3, 0.0, 0.0], [0.2, 0.2, 0.0], [-0.1, 0.1, 0.1]], dtype=torch.float64)
    cov = (a @ a.T)[None]
    q = matrix_power(cov, 0.25)[0]
    torch.testing.assert_close(q @ q @ q @ q, cov[0], rtol=1e-8, atol=1e-10)
    roots = covariance_roots(cov, "official", 3)
    torch.testing.assert_close(roots[1][0] @ roots[1][0], roots[0][0], rtol=1e-8, atol=1e-10)


def test_synthetic_samples_have_the_requested_full_covariance():
    torch.manual_seed(1)
    a = torch.tensor([[0.3, 0.0, 0.0], [0.2, 0.2, 0.0], [-0.1, 0.1, 0.1]], dtype=torch.float64)
    cov = (a @ a.T)[None]
    samples = synthesize(torch.zeros(1, 3, dtype=torch.float64), [covariance_root(cov)] * 40000, eta=0.8)
    emp = np.cov(samples.numpy().T, bias=True)
    np.testing.assert_allclose(emp, 0.8 * cov[0].numpy(), atol=0.004)


def test_eta_schedule():
    assert [eta_at(0.8, p) for p in (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)] == pytest.approx(
        [0.8, 0.8, 0.72, 0.72, 0.6, 0.6, 0.48, 0.48])


def test_ndcg_triplet_loss_matches_loop():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((7, 4))
    la = (rng.random((6, 3)) < 0.5).astype(float)
    lb = (rng.random((7, 3)) < 0.5).astype(float)
    w, neg = ndcg_triplet_weights(torch.tensor(la), torch.tensor(lb), 10.0)
    got = float(ndcg_triplet_loss(torch.tensor(a), torch.tensor(b), w, neg, 0.1))
    cos = (a / np.linalg.norm(a, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    d = np.maximum(1 - cos, 0)
    s = la @ lb.T
    total, act = 0.0, 0
    for i in range(6):
        ideal = np.sort(s[i])[::-1]
        z = sum((2 ** v - 1) / np.log2(r + 2) for r, v in enumerate(ideal))
        for p, n in itertools.product(range(7), repeat=2):
            if s[i, p] > 0 and s[i, n] == 0 and d[i, p] - d[i, n] + 0.1 > 0:
                total += 10 * (2 ** s[i, p] - 1) / z * (d[i, p] - d[i, n] + 0.1)
                act += 1
    assert got == pytest.approx(total / max(act, 1))


@pytest.fixture(scope="module")
def data():
    return make_synthetic(300, image_dim=16, text_dim=8, num_classes=4, seed=2)


@pytest.mark.parametrize("switch", [
    {}, {"covariance": "full"}, {"noise": "written"}, {"noise": "written", "covariance": "full"}, {"sampling": "class-mean"}, {"class_cov": False}, {"global_cov": False},
    {"refine_below": 1000},  # every class is "under-populated": exercises the neighbour refinement
])
def test_idgh_trains_with_each_ablation_switch(data, switch):
    kw = dict(hidden=[16], epochs=3, batch_size=64, start_fraction=0.34, update_interval=1, **switch)
    model = get_method("idgh", **kw).fit(data.train, 8, seed=0)
    hist = model.record["training"]["history"]
    assert [h["synthetic"] for h in hist] == [0.0, 1.0, 1.0]
    assert model.encode("image", data.query.image).nbits == 8
    diag = model.record["diagnostics"]
    for m in ("image", "text"):
        stds = [diag[f"noise_std_{m}_s{s}"] for s in (1, 2, 3)]
        dists = [diag[f"syn_cos_dist_{m}_s{s}"] for s in (1, 2, 3)]
        assert all(0.0 < d < 2.0 for d in dists)
        if model.hparams["noise"] == "official":  # tanh-code variances < 1: later samples noisier
            assert diag[f"code_var_{m}"] < 1 and stds[0] < stds[1] < stds[2]
            assert dists[0] < dists[2]
        else:
            assert stds[0] == stds[1] == stds[2]


def test_displacement_diagnostic_leaves_the_training_draws_alone(data):
    """The synthetic-displacement diagnostic draws from its own generator: the same run with the
    diagnostic switched off (patched to a no-op) trains to the same codes."""
    kw = dict(hidden=[16], epochs=3, batch_size=64, start_fraction=0.34, update_interval=1)
    with_diag = get_method("idgh", **kw).fit(data.train, 8, seed=0)
    original = IDGH._record_displacement
    try:
        IDGH._record_displacement = lambda self, ctx, codes, diag, eta: None
        without = get_method("idgh", **kw).fit(data.train, 8, seed=0)
    finally:
        IDGH._record_displacement = original
    assert "syn_cos_dist_image_s1" in with_diag.record["diagnostics"]
    assert "syn_cos_dist_image_s1" not in without.record["diagnostics"]
    for m in ("image", "text"):
        x = getattr(data.query, m)
        assert np.array_equal(with_diag.encode(m, x).data, without.encode(m, x).data)


def test_idgh_paper_preset_and_default_noise():
    assert IDGH.defaults["noise"] == "official"
    assert IDGH.defaults["margin"] == 0.25  # chosen on the validation split (module docstring)
    assert IDGH(preset="paper").hparams["margin"] == 0.05
    assert IDGH(preset="paper").hparams["noise"] == "official"


def test_idgh_sampling_covariances_follow_the_switches(data):
    from cmhash.nn.engine import TrainContext
    from cmhash.nn.networks import HashNetworks

    def ctx_for(**switch):
        method = IDGH(hidden=[16], refine_below=1000, **switch)
        h = method._check_hparams()
        tr = data.train
        torch.manual_seed(0)
        net = HashNetworks(tr.dims, 6, [16])
        ctx = TrainContext(networks=net, device=torch.device("cpu"), bits=6, epochs=4, hparams=h, data={
            "image": torch.tensor(tr.image), "text": torch.tensor(tr.text),
            "labels": torch.tensor(tr.labels, dtype=torch.float32)})
        method.setup(ctx)
        method.estimate(ctx)
        return ctx

    ctx = ctx_for(class_cov=False)
    cov = ctx.state["sampling_cov"]
    assert torch.allclose(cov["image"], cov["image_global"].expand_as(cov["image"]))
    # global_cov=False equals the calibration with gamma = 0
    ctx0, ctx1 = ctx_for(global_cov=False), ctx_for(global_cov=True, gamma=0.0)
    assert torch.allclose(ctx0.state["sampling_cov"]["text"], ctx1.state["sampling_cov"]["text"])
    ctx2 = ctx_for()
    assert not torch.allclose(ctx2.state["sampling_cov"]["text"], ctx1.state["sampling_cov"]["text"])
    # a multi-label item's covariance is the mean of its classes'
    lab = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 0]])
    got = IDGH().item_covariance(ctx2, "image", lab)
    per = ctx2.state["sampling_cov"]["image"]
    assert torch.allclose(got[0], (per[0] + per[2]) / 2)
    assert torch.allclose(got[1], ctx2.state["sampling_cov"]["image_global"])


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_item_root_is_the_root_of_each_items_covariance(data, covariance):
    """item_root (one root per distinct label set) against the per-item reference."""
    from cmhash.nn.engine import TrainContext
    from cmhash.nn.networks import HashNetworks

    method = IDGH(hidden=[16], covariance=covariance)
    tr = data.train
    torch.manual_seed(0)
    ctx = TrainContext(networks=HashNetworks(tr.dims, 6, [16]), device=torch.device("cpu"), bits=6, epochs=4,
                       hparams=method._check_hparams(), data={
                           "image": torch.tensor(tr.image), "text": torch.tensor(tr.text),
                           "labels": torch.tensor(tr.labels, dtype=torch.float32)})
    method.setup(ctx)
    method.estimate(ctx)
    # repeated label sets, a multi-label item, label-less items, a single item of its set
    lab = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0],
                        [0, 0, 0, 1]])
    got = method.item_roots(ctx, "text", lab)
    assert len(got) == 3
    cov = method.item_covariance(ctx, "text", lab)
    for s, power in enumerate((0.5, 0.25, 0.125)):  # the default noise="official"
        for i in range(len(lab)):
            want = cov[i].clamp_min(0) ** power if covariance == "diag" else matrix_power(cov[i][None], power)[0]
            torch.testing.assert_close(got[s][i], want, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(got[0][1], cov[1].clamp_min(0).sqrt() if covariance == "diag"
                               else matrix_sqrt(cov[1][None])[0], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("bad, match", [({"covariance": "dense"}, "covariance"), ({"sampling": "x"}, "sampling"),
                                        ({"aug_num": -1}, "aug_num"), ({"update_interval": 0}, "update_interval"),
                                        ({"noise": "exact"}, "noise")])
def test_idgh_bad_hyper_parameters(data, bad, match):
    with pytest.raises(ValueError, match=match):
        get_method("idgh", **bad).fit(data.train, 8, seed=0)
