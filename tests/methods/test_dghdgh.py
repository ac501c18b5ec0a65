"""DGHDGH components (RGP attention mask, DGS interpolation, memory bound) and the plug-in."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.methods.dghdgh import (  # noqa: E402
    GlobalSenseSynthesis,
    MaskedMultiHeadAttention,
    RelevanceGlobalPropagation,
    hard_negatives,
    hardest_positive_distance,
    initial_edges,
    interpolation_ratio,
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


def test_interpolation_uses_the_real_negative_when_d_pos_not_below_d_neg():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    n = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    dist = torch.cdist(a, n)                                  # [[1, 2, 5], [1, 2, 5]]
    d_pos = torch.tensor([2.0, 0.5])
    use = d_pos[:, None] < dist
    lam = torch.full((2, 3, 2), 0.5)
    z = hard_negatives(a, n, interpolation_ratio(d_pos, dist, lam, tau=1.0), use)
    assert torch.equal(z[0, 0], n[0]) and torch.equal(z[0, 1], n[1])   # d+ = 2 >= d- = 1, 2
    assert not torch.equal(z[0, 2], n[2]) and not torch.equal(z[1, 0], n[0])


def test_interpolation_ratio_follows_eq7():
    a = torch.zeros(1, 3)
    n = torch.tensor([[3.0, 0.0, 4.0]])                       # d- = 5
    d_pos, dist = torch.tensor([2.0]), torch.tensor([[5.0]])
    use = torch.tensor([[True]])
    # lambda * tau = 0: the synthetic negative sits exactly at the positive's distance
    z = hard_negatives(a, n, interpolation_ratio(d_pos, dist, torch.zeros(1, 1, 3), tau=0.3), use)
    assert float(z.norm()) == pytest.approx(2.0)
    # lambda * tau = 1: the real negative
    z = hard_negatives(a, n, interpolation_ratio(d_pos, dist, torch.ones(1, 1, 3), tau=1.0), use)
    assert torch.allclose(z[0, 0], n[0])
    lam = torch.tensor([[[0.2, 0.5, 0.9]]])
    eta = interpolation_ratio(d_pos, dist, lam, tau=0.5)
    assert torch.allclose(eta[0, 0], (2 + lam[0, 0] * 0.5 * 3) / 5)


def test_hardest_positive_distance():
    dist = torch.tensor([[1.0, 3.0, 2.0], [4.0, 0.5, 9.0]])
    pos = torch.tensor([[True, False, True], [False, False, False]])
    assert torch.equal(hardest_positive_distance(dist, pos), torch.tensor([2.0, 0.0]))


def make_ctx(b, k, c, dims=(6, 5), seed=0):
    torch.manual_seed(seed)
    nets = HashNetworks({"image": dims[0], "text": dims[1]}, k, [8])
    lab = batch_labels(b, c, seed)
    data = {"image": torch.randn(b, dims[0]), "text": torch.randn(b, dims[1]), "labels": lab}
    ctx = TrainContext(networks=nets, device=torch.device("cpu"), data=data, bits=k, epochs=2, hparams={})
    return ctx, Batch(torch.arange(b), data["image"], data["text"], lab)


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
    plugin = GlobalSenseSynthesis()
    plugin.setup(ctx)
    ctx.optimizers["generator"] = torch.optim.Adam(ctx.modules["rgp"].parameters(), lr=1e-4)
    ctx.state["dgs"] = {"j_avg": 2.0, "l_go": 3.0}
    codes = {m: torch.tanh(ctx.networks(m, batch.features(m))) for m in ("image", "text")}
    with Largest() as probe:
        loss, _ = plugin.batch_loss(ctx, batch, codes)
        loss.backward()
    assert probe.max_numel <= 4 * b * b * k          # the edge MLP's hidden layer: B x B x 4K
    assert probe.max_numel < b ** 3 / 4
    assert not any(len(s) >= 3 and sum(d == b for d in s) >= 3 for s in probe.shapes)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(260, image_dim=12, text_dim=8, num_classes=4, seed=3)


def test_dghdgh_trains_and_schedules_hardness(data):
    model = get_method("dghdgh", hidden=[16], epochs=3, batch_size=48).fit(data.train, 8, seed=0)
    hist = model.record["training"]["history"]
    assert hist[0]["gamma_syn"] == 0.0 and hist[0]["tau"] == 1.0      # nothing known before epoch 1
    assert 0.0 < hist[1]["gamma_syn"] < 1.0 and 0.0 < hist[1]["tau"] < 1.0
    assert hist[1]["gamma_syn"] == pytest.approx(1 - np.exp(-1 / hist[0]["l_go"]))
    assert hist[1]["tau"] == pytest.approx(np.exp(-5.0 / hist[0]["loss"]))
    assert 0.0 < hist[-1]["interpolated"] <= 1.0
    assert model.encode("text", data.query.text).nbits == 8


@pytest.mark.parametrize("switch", [{"gt_blocks": 0}, {"hardness": False}, {"edge_to_node": False}])
def test_dghdgh_ablations_run(data, switch):
    hist = get_method("dghdgh", hidden=[16], epochs=2, batch_size=64, **switch).fit(data.train, 8, seed=0
                                                                                     ).record["training"]["history"]
    if switch == {"hardness": False}:
        assert all(h["tau"] == 1.0 for h in hist)
    assert np.isfinite(hist[-1]["loss"])


class Snapshot(GlobalSenseSynthesis):
    """Keeps copies of the generator's weights at the first and the last epoch."""

    def on_epoch_start(self, ctx):
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
