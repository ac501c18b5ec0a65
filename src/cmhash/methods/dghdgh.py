"""DGHDGH: Deep Global-sense Hard-negative Discriminative Generation Hashing.

Paper: ``papers/DGHDGH.txt`` (equation numbers below); what the official code
(QinLab-WFU/DGHDGH, train/gnn.py, train/graph_generator.py) adds is in METHODS.md. The hash
networks and the real-pair losses are the plain deep baseline's (Eq. 12, 14); this module adds
hard-negative generation as a :class:`~cmhash.nn.engine.LossPlugin`,
:class:`GlobalSenseSynthesis`, so it can be attached to any deep method (the paper's Fig. 7):
``get_method("idgh").add_plugin(GlobalSenseSynthesis())``.

Per batch and for each of the four graphs (I-I, I-T, T-I, T-T; anchors x, candidates y):

- Relevance Global Propagation (:class:`RelevanceGlobalPropagation`, Sec. 3.2): nodes are the
  (detached) relaxed codes, edges E_ij = (x_i - mean x_i) * (y_j - mean y_j) / (|.| |.|)
  channel-wise (graph_generator.py). ``gt_blocks`` (N2 = 2) blocks, parameters shared across the
  four graphs; each block first updates nodes (Eq. 4: masked multi-head self-attention with
  ``gt_heads`` (M2 = 4) heads in which a node attends only to its negatives, plus the edge-to-node
  message, then an MLP), then edges (Eq. 5: cross-attention from edge (i, j) to its end nodes i
  and j, then an MLP). Decision: the edge-to-node message is the *mean* of the transformed edges
  (Eq. 4 writes a sum, whose scale grows with the batch size).
- Discriminative Global-sense Synthesis (Sec. 3.3): lambda_an = sigmoid(FC(BN(E_an))) per
  channel (Eq. 6); eta = (d+ + lambda tau (d- - d+)) / d- (Eq. 7), tau = exp(-alpha / J_avg) with
  J_avg the previous epoch's mean loss (code: alpha = 5; the paper writes alpha = 1);
  z_an = (1 - eta) h_a + eta h_n channel-wise when d+ < d-, else the real negative h_n. d are
  Euclidean distances of relaxed codes; d+ is the anchor's hardest (farthest) positive.
- Generation loss (Sec. 3.4, Eq. 8-11, 13), optimised by its own Adam (``gen_lr``) on detached
  codes: L_go = gamma_sp CE(CL(z_an), l_n) with the hash classifier CL frozen + gamma_is
  (1 - cos(z_an, h_a)) + gamma_cd (1 - std_n lambda_an), plus CE(CL2(V), l) on the propagated
  nodes (Eq. 13) which also trains the graph transformer. Weights: the paper's appendix
  (1, 1, 0.2); the code uses (10, 10, 0.3), which makes L_go ~10x larger and gamma_syn below
  ~0.03, i.e. the synthetic negatives almost unused.
- Hash loss (Eq. 15-16): the cosine triplet loss with every real positive of the anchor and the
  synthetic negatives z_an (gradients reach h_a and h_n; eta is a constant there), weighted by
  gamma_syn = 1 - exp(-1 / L_go), L_go the previous epoch's mean over batches and the four
  graphs (the paper prints 1 - e^{1/L_go}, which is negative: a sign slip; 0 in the first epoch).

Cost: the T-I graph is the I-T graph with anchors and candidates swapped (the label mask is
symmetric and every block treats the two sides alike), so its propagation is the I-T result
transposed and is computed once (the paper's "three graphs": image, text, cross-modal); in the
I-I and T-T graphs the edges stay symmetric, so only their upper triangle is propagated. Tests
check both against the dense computation.

Memory: every tensor is at most (B x B x K) per graph (times the MLP width); the official
code's (B x B x B) triplet mask is never built (:func:`cmhash.nn.losses.weighted_triplet_loss`).
Ablations (Sec. 4.5): ``gt_blocks=0`` (w/o RGP), ``edge_to_node=False`` (w/o EMF),
``hardness=False`` (w/o HAP: tau = 1).
"""

from __future__ import annotations

import math
from typing import Any

from cmhash.nn.engine import Batch, LossPlugin, TrainContext  # first: clear error without torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from cmhash.methods.deep_baseline import DeepBaseline  # noqa: E402
from cmhash.methods.registry import register_method  # noqa: E402
from cmhash.nn.losses import multilabel_cross_entropy, weighted_triplet_loss  # noqa: E402

GRAPHS = (("image", "image"), ("image", "text"), ("text", "image"), ("text", "text"))


def initial_edges(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """E_ij = centred x_i * centred y_j / (|centred x_i| |centred y_j|): (A x B x K)."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    xc = xc / xc.norm(dim=1, keepdim=True).clamp_min(eps)
    yc = yc / yc.norm(dim=1, keepdim=True).clamp_min(eps)
    return xc[:, None, :] * yc[None, :, :]


def _mlp(dim: int, mult: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.LayerNorm(mult * dim), nn.Linear(mult * dim, dim))


class MaskedMultiHeadAttention(nn.Module):
    """Multi-head attention of queries over keys, restricted to ``allowed`` (A x B) pairs.

    A query without any allowed key receives a zero message.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"gt_heads={heads} must divide the code length {dim}")
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        a, b = queries.shape[0], keys.shape[0]
        q = self.q(queries).view(a, self.heads, self.head_dim).transpose(0, 1)   # H x A x d
        k = self.k(keys).view(b, self.heads, self.head_dim).transpose(0, 1)      # H x B x d
        v = self.v(keys).view(b, self.heads, self.head_dim).transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(self.head_dim)               # H x A x B
        scores = scores.masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(dim=1)
        attn = torch.softmax(scores.masked_fill(~has_key[None, :, None], 0.0), dim=-1)
        attn = attn * has_key[None, :, None]
        return self.out((attn @ v).transpose(0, 1).reshape(a, -1))


class UpperTriangle:
    """The pairs i <= j of a B-node graph whose edges are symmetric (E_ij = E_ji).

    In the I-I and T-T graphs every block maps a symmetric edge tensor to a symmetric one, so the
    edges are kept as the T = B (B + 1) / 2 rows (i, j), i <= j, and expanded only where a
    B x B x K tensor is needed: the same values for about half the per-edge work.
    """

    def __init__(self, b: int, device: torch.device):
        self.rows, self.cols = torch.triu_indices(b, b, device=device)
        t = self.rows.shape[0]
        self.full = torch.empty(b, b, dtype=torch.long, device=device)   # (i, j) -> its row
        self.full[self.rows, self.cols] = torch.arange(t, device=device)
        self.full[self.cols, self.rows] = torch.arange(t, device=device)
        self.off = self.rows != self.cols
        self.b = b

    def row_mean(self, t: torch.Tensor) -> torch.Tensor:
        """mean_j f(E_ij) for every node i, from the triangle's rows of f(E) (T x K)."""
        total = torch.zeros(self.b, t.shape[1], dtype=t.dtype, device=t.device)
        total = total.index_add(0, self.rows, t).index_add(0, self.cols[self.off], t[self.off])
        return total / self.b


class GraphTransformerBlock(nn.Module):
    """One node update (Eq. 4) followed by one edge update (Eq. 5) on a bipartite batch graph."""

    def __init__(self, dim: int, heads: int, mlp_mult: int, edge_to_node: bool):
        super().__init__()
        self.attn = MaskedMultiHeadAttention(dim, heads)
        self.edge_to_node = nn.Sequential(nn.Linear(dim, dim), nn.GELU()) if edge_to_node else None
        self.node_norm1, self.node_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.node_mlp = _mlp(dim, mlp_mult)
        self.node_to_edge = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.ca_q, self.ca_k, self.ca_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.edge_norm1, self.edge_norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.edge_mlp = _mlp(dim, mlp_mult)

    def update_nodes(self, nodes: torch.Tensor, others: torch.Tensor, edge_msg: torch.Tensor | None,
                     allowed: torch.Tensor) -> torch.Tensor:
        """Eq. 4; ``edge_msg`` is the node's mean transformed edge (None without EMF)."""
        msg = self.attn(nodes, others, allowed)
        if edge_msg is not None:
            msg = msg + edge_msg
        v = self.node_norm1(msg + nodes)
        return self.node_norm2(self.node_mlp(v) + v)

    def update_edges(self, edges: torch.Tensor, vx: torch.Tensor, vy: torch.Tensor,
                     tri: UpperTriangle | None = None) -> torch.Tensor:
        """Eq. 5: each edge (i, j) attends to its end nodes i and j (two keys, softmax over them).

        ``edges`` is A x B x K, or the T x K rows of ``tri``. The score q_ij . k_i with
        q_ij = Wq E_ij + bq equals E_ij . (Wq^T k_i) + bq . k_i, so the query projection is
        applied to the node keys instead of the B^2 edges (same value, one K x K product per
        edge fewer, forward and backward).
        """
        px, py = self.node_to_edge(vx), self.node_to_edge(vy)
        kx, ky, vvx, vvy = self.ca_k(px), self.ca_k(py), self.ca_v(px), self.ca_v(py)
        wq, bq = self.ca_q.weight, self.ca_q.bias
        gx, gy, bx, by = kx @ wq, ky @ wq, kx @ bq, ky @ bq
        if tri is None:
            sx = torch.einsum("abk,ak->ab", edges, gx) + bx[:, None]            # A x B
            sy = torch.einsum("abk,bk->ab", edges, gy) + by[None, :]
            ax, ay = vvx[:, None, :], vvy[None, :, :]
        else:
            r, c = tri.rows, tri.cols
            sx = (edges * gx[r]).sum(-1) + bx[r]                                # T
            sy = (edges * gy[c]).sum(-1) + by[c]
            ax, ay = vvx[r], vvy[c]
        w = torch.softmax(torch.stack([sx, sy]) / math.sqrt(edges.shape[-1]), dim=0)
        ca = w[0, ..., None] * ax + w[1, ..., None] * ay
        e = self.edge_norm1(ca + edges)
        return self.edge_norm2(self.edge_mlp(e) + e)

    def forward(self, vx, vy, edges, neg, tri: UpperTriangle | None = None):
        """One block; ``tri`` marks a graph of one modality with itself (vy is vx, edges symmetric)."""
        t = self.edge_to_node(edges) if self.edge_to_node is not None else None   # once, both ends
        if tri is not None:
            new_x = self.update_nodes(vx, vx, None if t is None else tri.row_mean(t), neg)
            return new_x, new_x, self.update_edges(edges, new_x, new_x, tri)
        new_x = self.update_nodes(vx, vy, None if t is None else t.mean(dim=1), neg)
        new_y = self.update_nodes(vy, vx, None if t is None else t.mean(dim=0), neg.T)
        return new_x, new_y, self.update_edges(edges, new_x, new_y)


class RelevanceGlobalPropagation(nn.Module):
    """The graph transformer (shared by the four graphs) and the lambda and node-class heads."""

    def __init__(self, dim: int, num_classes: int, *, blocks: int = 2, heads: int = 4, mlp_mult: int = 4,
                 edge_to_node: bool = True):
        super().__init__()
        self.node_in = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(GraphTransformerBlock(dim, heads, mlp_mult, edge_to_node) for _ in range(blocks))
        self.edge_bn, self.node_bn = nn.BatchNorm1d(dim), nn.BatchNorm1d(dim)
        self.lam_fc = nn.Linear(dim, dim)
        self.node_cls = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor, neg: torch.Tensor, same: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lambda (A x B x K) in (0, 1), node logits of x (A x C), of y (B x C)).

        ``same``: y is x (the I-I and T-T graphs); the symmetric edges are then propagated as
        their upper triangle (:class:`UpperTriangle`).
        """
        vx = self.node_in(x)
        if same:
            tri = UpperTriangle(x.shape[0], x.device)
            full = initial_edges(x, x)
            edges, vy = full[tri.rows, tri.cols], vx
        else:
            tri, edges, vy = None, initial_edges(x, y), self.node_in(y)
        for block in self.blocks:
            vx, vy, edges = block(vx, vy, edges, neg, tri)
        k = edges.shape[-1]
        if tri is None:
            a, b = edges.shape[:2]
            lam = torch.sigmoid(self.lam_fc(self.edge_bn(edges.reshape(a * b, k)))).reshape(a, b, k)  # Eq. 6
        else:  # batch statistics over all B^2 edges, the K x K layer on the triangle only
            b = tri.b
            normed = self.edge_bn(edges[tri.full].reshape(b * b, k)).reshape(b, b, k)
            lam = torch.sigmoid(self.lam_fc(normed[tri.rows, tri.cols]))[tri.full]
        logits_x = self.node_cls(self.node_bn(vx))
        logits_y = logits_x if same else self.node_cls(self.node_bn(vy))
        return lam, logits_x, logits_y


def interpolation_ratio(d_pos: torch.Tensor, d_neg: torch.Tensor, lam: torch.Tensor, tau: float) -> torch.Tensor:
    """eta = (d+ + lambda tau (d- - d+)) / d- channel-wise (Eq. 7): (A x B x K)."""
    ratio = (d_pos[:, None] / d_neg.clamp_min(1e-12))[..., None]
    return ratio + lam * tau * (1.0 - ratio)


def hard_negatives(anchor: torch.Tensor, negative: torch.Tensor, eta: torch.Tensor,
                   use: torch.Tensor) -> torch.Tensor:
    """z_an = (1 - eta) h_a + eta h_n where ``use`` (d+ < d-), else the real negative h_n."""
    mixed = (1.0 - eta) * anchor[:, None, :] + eta * negative[None, :, :]
    return torch.where(use[..., None], mixed, negative[None, :, :].expand_as(mixed))


def hardest_positive_distance(dist: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Per anchor, the largest distance to a positive (0 if it has none)."""
    return torch.where(pos, dist, torch.zeros_like(dist)).amax(dim=1)


class GlobalSenseSynthesis(LossPlugin):
    """Hard-negative generation (RGP + DGS) as a loss plug-in for any deep hashing method."""

    name = "dgs"

    def __init__(self, *, margin: float = 0.25, gt_blocks: int = 2, gt_heads: int = 4, gt_mlp_mult: int = 4,
                 edge_to_node: bool = True, hardness: bool = True, alpha: float = 5.0, gen_lr: float = 1e-4,
                 gamma_sp: float = 1.0, gamma_is: float = 1.0, gamma_cd: float = 0.2):
        if gt_blocks < 0 or gt_heads < 1 or gt_mlp_mult < 1:
            raise ValueError(f"dgs: gt_blocks >= 0, gt_heads >= 1, gt_mlp_mult >= 1 expected, got "
                             f"{gt_blocks}, {gt_heads}, {gt_mlp_mult}")
        if not gen_lr > 0:
            raise ValueError(f"dgs: gen_lr must be > 0, got {gen_lr}")
        self.config = dict(margin=margin, gt_blocks=gt_blocks, gt_heads=gt_heads, gt_mlp_mult=gt_mlp_mult,
                           edge_to_node=edge_to_node, hardness=hardness, alpha=alpha, gen_lr=gen_lr,
                           gamma_sp=gamma_sp, gamma_is=gamma_is, gamma_cd=gamma_cd)

    def hparams(self) -> dict[str, Any]:
        return dict(self.config)

    def epoch_cost(self, bits: int) -> float:
        # three B x B x K graphs through MLPs of width 4K: grows ~K^2 (measured ~15-60 baseline epochs)
        return 8.0 + 8.0 * (bits / 32) ** 2

    def setup(self, ctx: TrainContext) -> None:
        c = self.config
        ctx.add_module("rgp", RelevanceGlobalPropagation(
            ctx.bits, ctx.num_classes, blocks=c["gt_blocks"], heads=c["gt_heads"], mlp_mult=c["gt_mlp_mult"],
            edge_to_node=c["edge_to_node"]), group="generator", lr=c["gen_lr"])
        self.own_classifier = "classifier" not in ctx.modules
        if self.own_classifier:  # the host has no classifier CL: train one on real codes (Eq. 12)
            ctx.add_module("dgs_classifier", nn.Linear(ctx.bits, ctx.num_classes))
        ctx.state["dgs"] = {"j_avg": math.inf, "l_go": math.inf}

    def on_epoch_end(self, ctx: TrainContext, logs: dict[str, float]) -> None:
        ctx.state["dgs"] = {"j_avg": logs.get("loss", math.inf), "l_go": logs.get("l_go", math.inf)}

    def tau(self, ctx: TrainContext) -> float:
        if not self.config["hardness"]:
            return 1.0
        return math.exp(-self.config["alpha"] / ctx.state["dgs"]["j_avg"])

    def gamma_syn(self, ctx: TrainContext) -> float:
        return 1.0 - math.exp(-1.0 / ctx.state["dgs"]["l_go"])

    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        rgp: RelevanceGlobalPropagation = ctx.modules["rgp"]
        cls: nn.Linear = ctx.modules["dgs_classifier" if self.own_classifier else "classifier"]
        labels = batch.labels
        pos = (labels @ labels.T) > 0
        neg = ~pos
        tau = self.tau(ctx)
        l_go = l_gen = l_syn = 0.0
        logs = {"l_is": 0.0, "l_sp": 0.0, "l_cd": 0.0, "l_sp2": 0.0, "interpolated": 0.0}
        propagated = {}
        for u, v in GRAPHS:
            hu, hv = codes[u].detach(), codes[v].detach()
            if (v, u) in propagated:  # T-I is I-T with the roles swapped: reuse it, transposed
                lam_t, logits_v, logits_u = propagated[(v, u)]
                lam = lam_t.transpose(0, 1)
            else:
                lam, logits_u, logits_v = propagated[(u, v)] = rgp(hu, hv, neg, same=u == v)
            dist = torch.cdist(hu, hv)
            d_pos = hardest_positive_distance(dist, pos)
            use = neg & (d_pos[:, None] < dist)
            eta = interpolation_ratio(d_pos, dist, lam, tau)
            # generation step: gradients reach lambda (the graph transformer) only
            z = hard_negatives(hu, hv, eta, use)[use]                     # interpolated pairs
            l_sp2 = multilabel_cross_entropy(logits_u, labels) + (
                0.0 if u == v else multilabel_cross_entropy(logits_v, labels))
            if z.shape[0]:
                neg_labels = labels[None, :, :].expand(labels.shape[0], -1, -1)[use]
                l_sp = multilabel_cross_entropy(F.linear(z, cls.weight.detach(), cls.bias.detach()), neg_labels)
                l_is = (1.0 - F.cosine_similarity(z, hu[:, None, :].expand_as(eta)[use], dim=1)).mean()
            else:
                l_sp = l_is = lam.sum() * 0.0
            has_neg = neg.sum(dim=1) > 1
            mask = neg[..., None].to(lam.dtype)
            cnt = neg.sum(dim=1)[:, None].to(lam.dtype).clamp_min(1.0)
            mean = (lam * mask).sum(dim=1) / cnt
            var = (((lam - mean[:, None, :]) ** 2) * mask).sum(dim=1) / cnt            # A x K over negatives
            std = (var + 1e-12).sqrt()                                                  # finite gradient at 0
            l_cd = (1.0 - std[has_neg]).mean() if bool(has_neg.any()) else lam.sum() * 0.0
            go = c["gamma_is"] * l_is + c["gamma_sp"] * l_sp + c["gamma_cd"] * l_cd          # Eq. 11
            l_go = l_go + go / len(GRAPHS)
            l_gen = l_gen + go + l_sp2
            # hash step: the synthetic negatives as functions of the codes, eta fixed
            zh = hard_negatives(codes[u], codes[v], eta.detach(), use)
            a = F.normalize(codes[u], dim=1)
            d_syn = 1.0 - (a[:, None, :] * F.normalize(zh, dim=2)).sum(-1)
            d_real = 1.0 - a @ F.normalize(codes[v], dim=1).T
            l_syn = l_syn + weighted_triplet_loss(d_real, pos.to(d_real.dtype), d_syn, neg, c["margin"])[0]
            for key, val in (("l_is", l_is), ("l_sp", l_sp), ("l_cd", l_cd), ("l_sp2", l_sp2)):
                logs[key] += float(val.detach()) if torch.is_tensor(val) else float(val)
            logs["interpolated"] += float(use.sum()) / max(float(neg.sum()), 1.0) / len(GRAPHS)
        ctx.optimizer_step("generator", l_gen)
        gamma = self.gamma_syn(ctx)
        loss = gamma * l_syn
        if self.own_classifier:
            loss = loss + sum(multilabel_cross_entropy(cls(codes[m]), labels) for m in ("image", "text"))
        logs.update(l_go=float(l_go.detach()), l_syn=float(l_syn.detach()), gamma_syn=gamma, tau=tau)
        return loss, logs


DGS_DEFAULTS = {k: v for k, v in GlobalSenseSynthesis().config.items() if k != "margin"}


@register_method
class DGHDGH(DeepBaseline):
    """The deep baseline's networks and real-pair losses + global-sense hard-negative generation."""

    name = "dghdgh"
    defaults = {**DeepBaseline.defaults, **DGS_DEFAULTS}

    def __init__(self, preset: str | None = None, **hparams: Any):
        super().__init__(preset=preset, **hparams)
        h = self.hparams
        self.plugins.append(GlobalSenseSynthesis(margin=h["margin"], **{k: h[k] for k in DGS_DEFAULTS}))
