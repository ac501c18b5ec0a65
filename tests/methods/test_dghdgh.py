"""DGHDGH components (RGP attention mask, DGS interpolation, memory bound) and the plug-in."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.methods._dgs_synthesis import PairTerms  # noqa: E402
from cmhash.methods.dghdgh import (  # noqa: E402
    GRAPHS,
    GlobalSenseSynthesis,
    MaskedMultiHeadAttention,
    RelevanceGlobalPropagation,
    initial_edges,
    synthetic_negatives,
    triplet_hinge_mean,
    triplet_indices,
)
from cmhash.methods.registry import get_method  # noqa: E402
from cmhash.nn.engine import Batch, TrainContext  # noqa: E402
from cmhash.nn.networks import HashNetworks  # noqa: E402


def batch_labels(b, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = (torch.rand(b, c, generator=g) < 0.3).float()
    lab[torch.arange(b), torch.randint(0, c, (b,), generator=g)] = 1
    return lab


def test_initial_edges_are_channelwise_centred_cosine_terms():
    x, y = torch.randn(3, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    e = initial_edges(x, y)
    xc, yc = x - x.mean(1, keepdim=True), y - y.mean(1, keepdim=True)
    for i in range(3):
        for j in range(4):
            want = xc[i] * yc[j] / (xc[i].norm() * yc[j].norm())
            assert torch.allclose(e[i, j], want)
    # the channels sum to the Pearson correlation of the two codes
    assert torch.allclose(e.sum(-1)[0, 0], torch.corrcoef(torch.stack([x[0], y[0]]))[0, 1])


def test_attention_mask_blocks_positives():
    torch.manual_seed(0)
    attn = MaskedMultiHeadAttention(8, 4)
    q, k = torch.randn(5, 8), torch.randn(6, 8)
    lab_q, lab_k = batch_labels(5, seed=1), batch_labels(6, seed=2)
    neg = (lab_q @ lab_k.T) == 0
    neg[0] = False                      # a query whose every key is a positive
    out = attn(q, k, neg)
    assert torch.all(out[0] == attn.out.bias)  # zero message (only the output bias)
    for i in range(1, 5):
        pos_keys = ~neg[i]
        if pos_keys.any() and neg[i].any():
            k2 = k.clone()
            k2[pos_keys] = torch.randn(int(pos_keys.sum()), 8) * 10   # change only positives
            assert torch.allclose(attn(q, k2, neg)[i], out[i], atol=1e-6)
            k3 = k.clone()
            k3[neg[i]] = torch.randn(int(neg[i].sum()), 8) * 10      # change the negatives
            assert not torch.allclose(attn(q, k3, neg)[i], out[i], atol=1e-4)


def test_lambda_is_channelwise_in_open_unit_interval():
    torch.manual_seed(0)
    b, k = 10, 8
    rgp = RelevanceGlobalPropagation(k, 4)
    lab = batch_labels(b)
    lam, lx, ly = rgp(torch.tanh(torch.randn(b, k)), torch.tanh(torch.randn(b, k)), (lab @ lab.T) == 0, same=False)
    assert lam.shape == (b, b, k) and lx.shape == (b, 4) and ly.shape == (b, 4)
    assert bool((lam > 0).all() and (lam < 1).all())
    assert float(lam.detach().std(dim=-1).mean()) > 1e-3   # channels differ: one coefficient per channel


def test_edge_update_matches_eq5_written_out():
    """update_edges projects the node keys instead of the edges; the value must be Eq. 5's."""
    import math

    torch.manual_seed(3)
    k = 12
    block = RelevanceGlobalPropagation(k, 3).blocks[0].double()
    edges = torch.randn(5, 7, k, dtype=torch.float64)
    vx, vy = torch.randn(5, k, dtype=torch.float64), torch.randn(7, k, dtype=torch.float64)
    q = block.ca_q(edges)                                     # the query of every edge, directly
    px, py = block.node_to_edge(vx), block.node_to_edge(vy)
    kx, ky = block.ca_k(px), block.ca_k(py)
    s = torch.stack([(q * kx[:, None, :]).sum(-1), (q * ky[None, :, :]).sum(-1)]) / math.sqrt(k)
    w = torch.softmax(s, dim=0)
    ca = w[0, :, :, None] * block.ca_v(px)[:, None, :] + w[1, :, :, None] * block.ca_v(py)[None, :, :]
    e = block.edge_norm1(ca + edges)
    want = block.edge_norm2(block.edge_mlp(e) + e)
    assert torch.allclose(block.update_edges(edges, vx, vy), want, atol=1e-12)


@pytest.mark.parametrize("edge_to_node", [True, False])
def test_text_image_graph_is_the_image_text_graph_transposed(edge_to_node):
    """The T-I propagation is reused from I-T; check the two really agree (training-mode BN)."""
    torch.manual_seed(4)
    b, k = 9, 8
    rgp = RelevanceGlobalPropagation(k, 4, edge_to_node=edge_to_node).double()
    img, txt = torch.randn(b, k, dtype=torch.float64), torch.randn(b, k, dtype=torch.float64)
    lab = batch_labels(b, seed=5)
    neg = (lab @ lab.T) == 0
    lam_it, logit_i, logit_t = rgp(img, txt, neg, same=False)
    lam_ti, logit_t2, logit_i2 = rgp(txt, img, neg, same=False)
    assert torch.allclose(lam_ti, lam_it.transpose(0, 1), atol=1e-12)
    assert torch.allclose(logit_t2, logit_t, atol=1e-12) and torch.allclose(logit_i2, logit_i, atol=1e-12)


def make_ctx(b, k, c, dims=(6, 5), seed=0):
    torch.manual_seed(seed)
    nets = HashNetworks({"image": dims[0], "text": dims[1]}, k, [8])
    lab = batch_labels(b, c, seed)
    data = {"image": torch.randn(b, dims[0]), "text": torch.randn(b, dims[1]), "labels": lab}
    ctx = TrainContext(networks=nets, device=torch.device("cpu"), data=data, bits=k, epochs=2, hparams={})
    return ctx, Batch(torch.arange(b), data["image"], data["text"], lab)


def setup_plugin(ctx, **config):
    """A plug-in set up on ``ctx`` with the optimisers the engine would create."""
    plugin = GlobalSenseSynthesis(**config)
    plugin.setup(ctx)
    for group, cfg in ctx.groups.items():
        if group != "main":
            params = [p for name in cfg["modules"] for p in ctx.modules[name].parameters()]
            ctx.optimizers[group] = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    plugin.on_epoch_start(ctx)
    return plugin


def test_no_cubic_tensor_in_a_training_step():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max_numel, self.shapes = 0, set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.max_numel = max(self.max_numel, t.numel())
                    self.shapes.add(tuple(t.shape))
            return out

    b, k, c = 96, 4, 5
    ctx, batch = make_ctx(b, k, c)
    plugin = setup_plugin(ctx)
    codes = {m: torch.tanh(ctx.networks(m, batch.features(m))) for m in ("image", "text")}
    shared = (batch.labels @ batch.labels.T) > 0
    n_triplets = len(triplet_indices(shared, ~shared)[0])
    with Largest() as probe:
        loss, _ = plugin.batch_loss(ctx, batch, codes)
        loss.backward()
        plugin.after_step(ctx)                        # the generation step
    # graph tensors: the edge MLP's hidden layer B x B x 4K; triplets: index lists and T x C logits
    assert probe.max_numel <= max(4 * b * b * k, n_triplets * c)
    assert not any(len(s) >= 3 and sum(d == b for d in s) >= 3 for s in probe.shapes)
    assert not any(len(s) >= 2 and s[0] == n_triplets and s[-1] == k for s in probe.shapes)  # no T x K


def test_triplet_indices_list_every_triplet_once():
    lab = batch_labels(9, c=3, seed=11)
    shared = (lab @ lab.T) > 0
    pos = shared & ~torch.eye(9, dtype=torch.bool)
    got = sorted(zip(*(t.tolist() for t in triplet_indices(pos, ~shared))))
    want = [(a, p, n) for a in range(9) for p in range(9) for n in range(9) if pos[a, p] and not shared[a, n]]
    assert got == want and len(want) > 0
    empty = torch.zeros(4, 4, dtype=torch.bool)
    assert all(len(t) == 0 for t in triplet_indices(empty, ~empty))


def test_synthetic_negative_uses_d_ap_of_its_own_triplet():
    """Eq. 7: with lambda tau = 0 the synthetic negative sits at the positive's distance d_ap
    (per triplet), with lambda tau = 1 it is the real negative; d+ >= d- keeps the real one."""
    a = torch.zeros(1, 3)
    n = torch.tensor([[3.0, 0.0, 4.0]])                       # d- = 5
    t = torch.tensor([0, 0, 0])
    rho = torch.tensor([2.0, 4.0, 6.0]) / 5.0                 # three positives, d_ap = 2, 4, 6
    z = synthetic_negatives(a, n, torch.zeros(1, 1, 3), t, t, rho)
    assert torch.allclose(z.norm(dim=1), torch.tensor([2.0, 4.0, 5.0]))   # the third: d+ >= d-, real
    assert torch.equal(z[2], n[0])
    z = synthetic_negatives(a, n, torch.ones(1, 1, 3), t, t, rho)
    assert torch.allclose(z, n.expand(3, -1))
    lam_tau = torch.tensor([[[0.1, 0.25, 0.45]]])
    z = synthetic_negatives(a, n, lam_tau, t[:1], t[:1], rho[:1])
    assert torch.allclose(z[0], ((2 + lam_tau[0, 0] * 3) / 5) * n[0])    # eta = (d+ + l t (d- - d+)) / d-


def test_pair_terms_equal_the_explicit_synthetic_negatives():
    torch.manual_seed(12)
    a, n = torch.randn(5, 6, dtype=torch.float64), torch.randn(7, 6, dtype=torch.float64)
    lam_tau = torch.rand(5, 7, 6, dtype=torch.float64)
    t_a, t_n = torch.randint(0, 5, (40,)), torch.randint(0, 7, (40,))
    rho = torch.rand(40, dtype=torch.float64) * 0.99
    z = synthetic_negatives(a, n, lam_tau, t_a, t_n, rho)
    terms = PairTerms(a, n, lam_tau)
    assert torch.allclose(terms.cosine(t_a, t_n, rho), torch.nn.functional.cosine_similarity(a[t_a], z, dim=1))
    w, bias = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert torch.allclose(terms.logits(w, bias, t_a, t_n, rho), z @ w.T + bias)


def test_hard_only_triplets_keep_synthetic_negatives_closer_than_the_positive():
    s_ap = torch.tensor([0.9, 0.5, 0.5, 0.2])
    s_an = torch.tensor([0.8, 0.6, 0.1, 0.1])                 # hinges (margin 0.25): .15, .35, -.15, .15
    assert float(triplet_hinge_mean(s_ap, s_an, 0.25, "active")) == pytest.approx((0.15 + 0.35 + 0.15) / 3)
    assert float(triplet_hinge_mean(s_ap, s_an, 0.25, "hard")) == pytest.approx(0.35)   # only S_an > S_ap
    assert float(triplet_hinge_mean(s_ap, s_an - 1.0, 0.25, "hard")) == 0.0


def triplet_loss_by_loops(codes, labels, lam, tau, margin, *, synthetic, d_pos="triplet", select="hard",
                          normalize=True):
    """The hash step's triplet losses written out triplet by triplet (the official code's
    gen_triplets, GeneralPulling and triplet_loss): the real J_r (mean of the four graphs) or
    L_syn (sum of the four graphs: the host's Eq. 14 scale)."""
    b = len(labels)
    shared = (labels @ labels.T) > 0
    total = 0.0
    for u, v in GRAPHS:
        hu, hv = codes[u].double(), codes[v].double()
        if normalize:
            hu, hv = hu / hu.norm(dim=1, keepdim=True), hv / hv.norm(dim=1, keepdim=True)
        hinges = []
        for a in range(b):
            positives = [p for p in range(b) if shared[a, p] and not (u == v and p == a)]
            farthest = max(float((hu[a] - hv[p]).norm()) for p in positives) if positives else 0.0
            for p in positives:
                for n in range(b):
                    if shared[a, n]:
                        continue
                    s_ap = float(hu[a] @ hv[p] / (hu[a].norm() * hv[p].norm()))
                    z = hv[n]
                    if synthetic:
                        dp = float((hu[a] - hv[p]).norm()) if d_pos == "triplet" else farthest
                        dn = float((hu[a] - hv[n]).norm())
                        if dp < dn:
                            eta = (dp + lam[(u, v)][a, n].double() * tau * (dn - dp)) / dn
                            z = (1 - eta) * hu[a] + eta * hv[n]
                    s_an = float(hu[a] @ z / (hu[a].norm() * z.norm()))
                    h = s_an - s_ap + margin
                    if h > 0 and (select == "active" or not synthetic or s_an > s_ap):
                        hinges.append(h)
        total += float(np.mean(hinges)) if hinges else 0.0
    return total if synthetic else total / 4


class FixedLambda(GlobalSenseSynthesis):
    """lambda and node logits fixed (random), so the schedule is tested apart from the graphs."""

    lam: dict = {}

    def _propagate(self, rgp, emb, neg):
        return {g: (self.lam[g], torch.zeros(len(neg), 3)) for g in GRAPHS}


@pytest.mark.parametrize("options", [
    {},                                                                      # the official code's
    {"d_pos": "hardest"}, {"syn_triplets": "active"}, {"normalize": False},
    {"d_pos": "hardest", "syn_triplets": "active", "normalize": False},
])
@pytest.mark.parametrize("j_r_mean", [0.5, 4.5])   # tau = exp(-10) ~ 0 (the code's regime), exp(-1.1)
def test_hash_step_losses_match_the_triplet_loops(options, j_r_mean):
    """tau from the real triplet loss J_r; L_syn with per-triplet d_ap, hard-only triplets and
    normalised distances (each option against the same loops with that reading)."""
    b, k = 8, 5
    ctx, batch = make_ctx(b, k, 3, seed=13)
    plugin = FixedLambda(gt_heads=1, **options)
    plugin.setup(ctx)
    ctx.optimizers["generator"] = torch.optim.Adam(ctx.modules["rgp"].parameters(), lr=1e-5)
    plugin.on_epoch_start(ctx)
    g = torch.Generator().manual_seed(14)
    plugin.lam = {gr: torch.rand(b, b, k, generator=g) for gr in GRAPHS}
    codes = {m: torch.tanh(3 * torch.randn(b, k, generator=g)) for m in ("image", "text")}
    assert plugin.tau(ctx) == pytest.approx(np.exp(-5.0 / 1e6))             # the code's empty running mean
    ctx.state["dgs"].update(j_r_sum=2 * j_r_mean, j_r_n=2)                   # two earlier batches
    tau = plugin.tau(ctx)
    assert tau == pytest.approx(np.exp(-5.0 / j_r_mean))
    _, logs = plugin.batch_loss(ctx, batch, codes)
    lab = batch.labels
    want_jr = triplet_loss_by_loops(codes, lab, None, None, 0.25, synthetic=False)
    assert logs["j_r"] == pytest.approx(want_jr, rel=1e-5)
    assert plugin.tau(ctx) == pytest.approx(np.exp(-5.0 / ((2 * j_r_mean + want_jr) / 3)))  # now with this batch
    readings = {"d_pos": options.get("d_pos", "triplet"), "select": options.get("syn_triplets", "hard"),
                "normalize": options.get("normalize", True)}
    want = triplet_loss_by_loops(codes, lab, plugin.lam, tau, 0.25, synthetic=True, **readings)
    assert logs["l_syn"] == pytest.approx(want, rel=1e-5)
    if options == {} and j_r_mean == 0.5:   # each reading changes the value here: the test tells them apart
        for key, other in (("d_pos", "hardest"), ("select", "active"), ("normalize", False)):
            changed = triplet_loss_by_loops(codes, lab, plugin.lam, tau, 0.25, synthetic=True,
                                            **{**readings, key: other})
            assert changed != pytest.approx(want, rel=1e-3), key


def test_tau_from_the_previous_epochs_total_loss_and_the_paper_gamma():
    ctx, _ = make_ctx(6, 4, 3)
    plugin = setup_plugin(ctx, tau_loss="total", alpha=1.0, gamma_syn="paper")
    assert plugin.tau(ctx) == 1.0 and plugin.gamma_syn(ctx) == 0.0           # nothing known before epoch 1
    plugin.on_epoch_end(ctx, {"loss": 2.0, "tau": 1.0, "gamma_syn": 0.0, "interpolated": 0.5, "j_r": 0.3})
    ctx.state["dgs"].update(prev_l_go=4.0)
    assert plugin.tau(ctx) == pytest.approx(np.exp(-1 / 2.0))
    assert plugin.gamma_syn(ctx) == pytest.approx(1 - np.exp(-1 / 4.0))


@pytest.mark.parametrize("l_go_sum, l_go_n, want", [
    (0.0, 0, 0.1),                  # an epoch's first batch: the code reads the empty mean as 1e6
    (1.6, 2, 0.9),                  # J_gen 0.8 <= 2 / ln 10: 1 - exp(-2.5) = 0.92 -> 0.9
    (1.8, 2, 0.1),                  # J_gen 0.9: 1 - exp(-2.22) = 0.89, inside (0.1, 0.9) -> 0.1
    (46.0, 2, 0.1),                 # J_gen 23 (CE of an untrained classifier x 10): 0.083 -> 0.1
])
def test_gamma_syn_is_the_codes_clamped_lambda3(l_go_sum, l_go_n, want):
    ctx, _ = make_ctx(6, 4, 3)
    plugin = setup_plugin(ctx)
    ctx.state["dgs"].update(l_go_sum=l_go_sum, l_go_n=l_go_n)
    assert plugin.gamma_syn(ctx) == want


def network_grads(method, ctx, batch, perturb):
    """Gradients of the hash step's loss w.r.t. the hash networks, after ``perturb(ctx)``."""
    perturb(ctx)
    for plugin in method.plugins:
        plugin.on_epoch_start(ctx)                      # the same schedule state (tau) each call
    codes = {m: torch.tanh(ctx.networks(m, batch.features(m))) for m in ("image", "text")}
    loss, logs = method.batch_loss(ctx, batch, codes)
    for plugin in method.plugins:
        extra, extra_logs = plugin.batch_loss(ctx, batch, codes)
        loss, logs = loss + extra, {**logs, **extra_logs}
        ctx.state["dgs"].pop("pending")
    grads = torch.autograd.grad(loss, list(ctx.networks.parameters()))
    return torch.cat([g.flatten() for g in grads]), logs


def setup_method(ctx, **hparams):
    method = get_method("dghdgh", **hparams)
    ctx.hparams.update(method.hparams)  # as the engine's context carries them
    for hook in (method, *method.plugins):
        hook.setup(ctx)
    for group, cfg in ctx.groups.items():
        if group != "main":
            params = [p for name in cfg["modules"] for p in ctx.modules[name].parameters()]
            ctx.optimizers[group] = torch.optim.Adam(params, lr=cfg["lr"])
    for hook in method.plugins:
        hook.on_epoch_start(ctx)
    return method


def scramble(name):
    def perturb(ctx):
        with torch.no_grad():
            g = torch.Generator().manual_seed(99)                # leaves the global RNG (dropout) alone
            for p in ctx.modules[name].parameters():
                p.add_(torch.randn(p.shape, generator=g))
    return perturb


@pytest.mark.parametrize("cls_weight", [0.0, 1.0])
def test_cls_weight_zero_gives_no_ce_gradient(cls_weight):
    """cls_weight=0: no CE term and no CE gradient in the hash step (the classifier, the plug-in's
    own, trains on detached embeddings), even with classifier="joint"; cls_weight=1 with the joint
    classifier, the control: the host's CE moves them."""
    ctx, batch = make_ctx(24, 8, 4, seed=15)
    method = setup_method(ctx, cls_weight=cls_weight, classifier="joint", hidden=[8])
    name = "classifier" if cls_weight else "dgs_classifier"
    assert (name == "dgs_classifier") == method.plugins[0].own_classifier
    torch.manual_seed(16)
    before, logs = network_grads(method, ctx, batch, lambda ctx: None)
    torch.manual_seed(16)
    after, _ = network_grads(method, ctx, batch, scramble(name))
    assert ("cls" in logs) == bool(cls_weight)
    if cls_weight:
        assert not torch.allclose(before, after)
    else:
        assert torch.equal(before, after)


@pytest.mark.parametrize("gca_to_codes", [True, False])
def test_node_classification_trains_the_hash_layers_only_where_the_code_lets_it(gca_to_codes):
    """J_gca (Eq. 13) reaches the hash networks with ``gca_to_codes`` (the code's stage-2
    graphs on non-detached embeddings), not without it."""
    ctx, batch = make_ctx(24, 8, 4, seed=17)
    method = setup_method(ctx, gca_to_codes=gca_to_codes, hidden=[8])
    torch.manual_seed(18)
    before, _ = network_grads(method, ctx, batch, lambda ctx: None)
    torch.manual_seed(18)

    def move_node_classifier(ctx):
        with torch.no_grad():
            w = ctx.modules["rgp"].node_cls.weight
            w.add_(torch.randn(w.shape, generator=torch.Generator().manual_seed(99)))

    after, _ = network_grads(method, ctx, batch, move_node_classifier)
    assert torch.equal(before, after) != gca_to_codes


def test_generation_step_follows_the_hash_step_and_moves_only_the_generator():
    ctx, batch = make_ctx(24, 8, 4, seed=19)
    plugin = setup_plugin(ctx, gen_lr=1e-3)
    codes = {m: torch.tanh(ctx.networks(m, batch.features(m))) for m in ("image", "text")}
    loss, _ = plugin.batch_loss(ctx, batch, codes)
    loss.backward()
    rgp_before = {k: v.clone() for k, v in ctx.modules["rgp"].state_dict().items()}
    nets_before = {k: v.clone() for k, v in ctx.networks.state_dict().items()}
    plugin.after_step(ctx)
    assert "pending" not in ctx.state["dgs"] and ctx.state["dgs"]["l_go_n"] == 1
    assert any(not torch.equal(rgp_before[k], v) for k, v in ctx.modules["rgp"].state_dict().items())
    assert all(torch.equal(nets_before[k], v) for k, v in ctx.networks.state_dict().items())
    plugin.after_step(ctx)                         # nothing pending: no second step
    assert ctx.state["dgs"]["l_go_n"] == 1


@pytest.fixture(scope="module")
def data():
    return make_synthetic(260, image_dim=12, text_dim=8, num_classes=4, seed=3)


def test_dghdgh_trains_and_records_its_schedule(data):
    model = get_method("dghdgh", hidden=[16], epochs=3, batch_size=48).fit(data.train, 8, seed=0)
    hist = model.record["training"]["history"]
    diag = model.record["diagnostics"]
    n_batches = int(np.ceil(len(data.train) * 0.9 / 48))
    for i, h in enumerate(hist):
        # tau ~ 1 at each epoch's first batch (the code's empty running mean), ~ 0 after it
        assert 1.0 / n_batches - 1e-3 < h["tau"] < 1.0 / n_batches + 0.05
        assert 0.1 <= h["gamma_syn"] <= 0.9
        assert diag["dgs_tau_per_epoch"][i] == pytest.approx(h["tau"], abs=1e-7)
        assert diag["dgs_gamma_syn_per_epoch"][i] == pytest.approx(h["gamma_syn"], abs=1e-7)
        assert 0.0 < diag["dgs_interpolated_per_epoch"][i] <= 1.0
    assert len(diag["dgs_l_go_per_epoch"]) == len(hist) and "cls" not in hist[0]
    assert model.encode("text", data.query.text).nbits == 8


@pytest.mark.parametrize("generation", [True, False])
def test_classifier_mode_is_inert_without_a_host_classifier(data, generation):
    """cls_weight=0 (DGHDGH's default) means no host classifier, so the baseline's ``classifier``
    mode (joint / detached) cannot change a DGHDGH fit: the same codes either way. (Cells run
    before ``classifier`` existed are therefore the same runs as today's.)"""
    def weights(name, **hp):
        model = get_method(name, hidden=[16], epochs=2, batch_size=48, **hp).fit(data.train, 8, seed=0)
        arrays, _ = model.state()
        return {k: v for k, v in arrays.items() if "classifier" not in k}

    joint = weights("dghdgh", generation=generation, classifier="joint")
    detached = weights("dghdgh", generation=generation, classifier="detached")
    assert joint.keys() == detached.keys() and joint
    for key in joint:
        np.testing.assert_array_equal(joint[key], detached[key])
    # the control: where the host classifier exists (the baseline), the mode does change the fit
    base_joint, base_detached = weights("deep-baseline", classifier="joint"), weights("deep-baseline", classifier="detached")
    assert any(not np.array_equal(base_joint[k], base_detached[k]) for k in base_joint)


def test_dghdgh_paper_preset_schedules_from_the_previous_epoch(data):
    model = get_method("dghdgh", preset="paper", hidden=[16], epochs=3, batch_size=48).fit(data.train, 8, seed=0)
    hist, diag = model.record["training"]["history"], model.record["diagnostics"]
    assert hist[0]["gamma_syn"] == 0.0 and hist[0]["tau"] == 1.0      # nothing known before epoch 1
    assert hist[1]["tau"] == pytest.approx(np.exp(-1.0 / hist[0]["loss"]))
    assert hist[1]["gamma_syn"] == pytest.approx(1 - np.exp(-1 / diag["dgs_l_go_per_epoch"][0]), rel=1e-6)
    assert "cls" in hist[0]                                             # CE into the hash layers


@pytest.mark.parametrize("switch", [{"gt_blocks": 0}, {"hardness": False}, {"edge_to_node": False},
                                    {"generation": False}])
def test_dghdgh_ablations_run(data, switch):
    model = get_method("dghdgh", hidden=[16], epochs=2, batch_size=64, **switch).fit(data.train, 8, seed=0)
    hist = model.record["training"]["history"]
    if switch == {"hardness": False}:
        assert all(h["tau"] == 1.0 for h in hist)
    if switch == {"generation": False}:
        assert "l_syn" not in hist[-1] and not model.record["hparams"].get("plugins")
    assert np.isfinite(hist[-1]["loss"])


class Snapshot(GlobalSenseSynthesis):
    """Keeps copies of the generator's weights at the first and the last epoch."""

    def on_epoch_start(self, ctx):
        super().on_epoch_start(ctx)
        self.first = getattr(self, "first", None) or {k: v.clone() for k, v in ctx.modules["rgp"].state_dict().items()}
        self.net_first = getattr(self, "net_first", None) or {
            k: v.clone() for k, v in ctx.networks.state_dict().items()}

    def on_epoch_end(self, ctx, logs):
        super().on_epoch_end(ctx, logs)
        self.last = {k: v.clone() for k, v in ctx.modules["rgp"].state_dict().items()}
        self.own = self.own_classifier


@pytest.mark.parametrize("host", ["deep-baseline", "idgh"])
def test_generation_module_plugs_into_other_methods_with_its_own_optimiser(data, host):
    tiny = Snapshot(gen_lr=1e-9)
    method = get_method(host, hidden=[16], epochs=2, batch_size=64, val_fraction=0.0).add_plugin(tiny)
    model = method.fit(data.train, 8, seed=0)
    assert model.record["hparams"]["plugins"][0]["name"] == "dgs"
    assert "l_syn" in model.record["training"]["history"][-1]
    assert tiny.own == (host == "idgh")  # IDGH has no classifier: the plug-in brings one
    # the generator moved by ~gen_lr per step only: it is not in the hash networks' optimiser
    weights = [k for k in tiny.first if k.endswith("weight") and "bn" not in k]
    moved = max(float((tiny.last[k] - tiny.first[k]).abs().max()) for k in weights)
    assert 0.0 < moved < 1e-6
    normal = Snapshot(gen_lr=1e-3)
    get_method(host, hidden=[16], epochs=2, batch_size=64, val_fraction=0.0).add_plugin(normal).fit(data.train, 8, seed=0)
    assert max(float((normal.last[k] - normal.first[k]).abs().max()) for k in weights) > 1e-4


def test_dgs_bad_parameters():
    with pytest.raises(ValueError, match="gen_lr"):
        GlobalSenseSynthesis(gen_lr=0.0)
    with pytest.raises(ValueError, match="d_pos"):
        GlobalSenseSynthesis(d_pos="farthest")
    with pytest.raises(ValueError, match="gt_heads"):
        RelevanceGlobalPropagation(6, 3, heads=4)


@pytest.mark.parametrize("edge_to_node", [True, False])
def test_same_modality_graph_on_the_triangle_matches_the_dense_graph(edge_to_node):
    """I-I / T-T graphs propagate only i <= j; same lambda, logits and gradients as dense."""
    torch.manual_seed(6)
    b, k = 10, 8
    rgp = RelevanceGlobalPropagation(k, 4, edge_to_node=edge_to_node).double()
    x = torch.randn(b, k, dtype=torch.float64)
    lab = batch_labels(b, seed=7)
    neg = (lab @ lab.T) == 0
    lam_tri, logits_tri, logits_tri_y = rgp(x, x, neg, same=True)
    grads_tri = torch.autograd.grad(lam_tri.pow(2).sum() + logits_tri.sum(), list(rgp.parameters()),
                                    allow_unused=True)
    lam_dense, logits_dense, _ = rgp(x, x.clone(), neg, same=False)   # the full B x B graph
    grads_dense = torch.autograd.grad(lam_dense.pow(2).sum() + logits_dense.sum(), list(rgp.parameters()),
                                      allow_unused=True)
    assert torch.allclose(lam_tri, lam_dense, atol=1e-12)
    assert torch.allclose(lam_tri, lam_tri.transpose(0, 1))
    assert torch.allclose(logits_tri, logits_dense, atol=1e-12) and logits_tri_y is logits_tri
    # the same function of the parameters, so the same gradients
    names = [n for n, _ in rgp.named_parameters()]
    for name, gt, gd in zip(names, grads_tri, grads_dense):
        assert (gt is None) == (gd is None), name
        if gt is not None:
            assert torch.allclose(gt, gd, atol=1e-10), name


def test_engine_calls_after_step_once_per_batch_after_the_hash_step(data):
    """The engine hook the generation step relies on (cmhash.nn.engine, ``after_step``)."""
    from cmhash.nn.engine import LossPlugin

    class Probe(LossPlugin):
        name = "probe"
        calls: list = []

        def batch_loss(self, ctx, batch, codes):
            self.seen = [p.detach().clone() for p in ctx.networks.parameters()]
            return codes["image"].sum() * 0.0, {}

        def after_step(self, ctx):
            moved = any(not torch.equal(a, b) for a, b in zip(self.seen, ctx.networks.parameters()))
            self.calls.append((ctx.epoch, ctx.step, moved))

    probe = Probe()
    get_method("deep-baseline", hidden=[16], epochs=2, batch_size=64, val_fraction=0.0).add_plugin(probe).fit(
        data.train, 8, seed=0)
    per_epoch = int(np.ceil(len(data.train) / 64))
    assert len(probe.calls) == 2 * per_epoch
    assert [s for _, s, _ in probe.calls] == list(range(2 * per_epoch))   # before ctx.step advances
    assert all(moved for _, _, moved in probe.calls)                      # the hash step came first
