"""DGHDGH: Deep Global-sense Hard-negative Discriminative Generation Hashing.

Paper: ``papers/DGHDGH.txt`` (equation numbers below). Official code: QinLab-WFU/DGHDGH
(train/hash_train.py, train/loss.py, train/gnn.py, train/graph_generator.py, train/get_args.py);
METHODS.md lists what it does. The hash networks and the real-pair losses are the plain deep
baseline's (Eq. 12, 14); this module adds hard-negative generation as a
:class:`~cmhash.nn.engine.LossPlugin`, :class:`GlobalSenseSynthesis`, so it can be attached to any
deep method (the paper's Fig. 7): ``get_method("idgh").add_plugin(GlobalSenseSynthesis())``.

Per batch and for each of the four graphs (I-I, I-T, T-I, T-T; anchors x, candidates y):

- Relevance Global Propagation (:class:`RelevanceGlobalPropagation`, Sec. 3.2): nodes are the
  embeddings, edges E_ij = (x_i - mean x_i) * (y_j - mean y_j) / (|.| |.|) channel-wise
  (graph_generator.py). ``gt_blocks`` (N2 = 2) blocks, parameters shared across the four graphs;
  each block first updates nodes (Eq. 4: masked multi-head self-attention with ``gt_heads``
  (M2 = 4) heads in which a node attends only to its negatives, plus the edge-to-node message,
  then an MLP), then edges (Eq. 5: cross-attention from edge (i, j) to its end nodes i and j,
  then an MLP). Decision: the edge-to-node message is the *mean* of the transformed edges (Eq. 4
  writes a sum, whose scale grows with the batch size).
- Discriminative Global-sense Synthesis (Sec. 3.3): lambda_an = sigmoid(FC(BN(E_an))) per channel
  (Eq. 6); for each triplet (a, p, n), z = (1 - eta) h_a + eta h_n with eta = (d+ + lambda tau
  (d- - d+)) / d- channel-wise when d+ < d-, else the real negative h_n (Eq. 7).
- Generation step (Sec. 3.4, Eq. 8-11), its own Adam: L_go = gamma_sp CE(CL(z), l_n) (CL frozen)
  + gamma_is (1 - cos(z, h_a)) + gamma_cd (1 - std over a's negatives of lambda_an) (Eq. 10).
- Hash step (Eq. 13-16): L_hl = L_real + J_gca + gamma_syn L_syn, J_gca = CE(CL2(V), l) of the
  propagated nodes (Eq. 13), L_syn the triplet loss with the synthetic negatives (Eq. 15).

The schedule. Each reading: the equation, the paper's words, the official code, the parameter
(default = the code's, the paper's literal form as the option; ``preset="paper"`` takes them all):

- tau (Eq. 7): paper "tau = e^{-1/l_avg}, l_avg the average loss from the previous epoch"; code
  ``exp(-alpha / J_avg)``, alpha = 5, J_avg the running mean of the *real triplet loss* J_r over
  the current epoch's batches so far (0 at an epoch's first batch, read as 1e6: tau ~ 1 there;
  on WIKI J_r is 0.2-0.3, so tau < 1e-7 after it: the synthetic negative sits at the positive's
  distance, the hardest). ``tau_loss="real"`` (code) or ``"total"`` (paper: previous epoch's mean total
  loss, tau = 1 in the first epoch); ``alpha`` = 5 (code; the paper writes 1).
- d+ (Eq. 7): paper d_ap, code ``D_ap`` per triplet (one synthetic negative per triplet).
  ``d_pos="triplet"`` (paper and code) or ``"hardest"`` (the anchor's farthest positive: one
  synthetic negative per anchor-negative pair, this module's earlier reading).
- Distances (Eq. 7): the paper says d; the code's cdist and every graph see the L2-normalised
  tanh outputs (hash_train.py normalises before the losses). ``normalize=True`` (code) or False
  (the raw relaxed codes h, the paper's symbol).
- L_syn (Eq. 15): paper "the standard triplet loss"; code ``hardness="hard"``: the mean hinge
  over the triplets whose synthetic negative is more similar to the anchor than the positive
  (S_an > S_ap). ``syn_triplets="hard"`` (code) or ``"active"`` (every positive hinge). Both
  let the gradient reach h_a, h_p, h_n and eta's distance ratio d+/d- (code: not detached);
  lambda is detached there.
- J_gca (Eq. 13): the paper is silent on whether it trains the hash layers; the code builds the
  hash step's graphs from non-detached embeddings, so J_gca trains the hash layers and the graph
  transformer (stepped after the hash step, gradients clipped to norm 1), then the generation step
  rebuilds the graphs from the detached embeddings. ``gca_to_codes=True`` (code) or False (J_gca
  on detached codes, in the generation step: this module's earlier reading).
- Generator optimiser: ``gen_lr`` 1e-5 (code and the paper's appendix), ``gen_weight_decay`` 0.2
  (code), gradient norm clipped to 1 (code).
- gamma_syn (Eq. 16): paper "1 - e^{1/L_go}" (negative as printed: read 1 - e^{-1/L_go}, L_go
  the previous epoch's mean); code lambda3 = min(max(1 - exp(-beta / J_gen), 0.1), 0.9) with
  beta = 2 and J_gen the running mean of L_go over the current epoch's batches so far (0 read as
  1e6), then any value strictly inside (0.1, 0.9) is set to 0.1: gamma_syn is 0.9 when J_gen <=
  2 / ln 10 = 0.87 and 0.1 otherwise (never below 0.1). ``gamma_syn="code"`` or ``"paper"``.
- The classifier CL of L_sp (Eq. 8, 12): the code trains it on *detached* codes with its own
  Adam (lr 1e-5, CE weight 10) and adds no CE to the hash layers. DGHDGH's default
  ``cls_weight=0`` does the same: no CE term and no CE gradient in the hash step; the plug-in
  brings its own classifier (``cls_lr``) trained on detached embeddings after each hash step.
  With ``cls_weight > 0`` the host's classifier is used instead; ``classifier="joint"`` (the
  paper preset's) trains it with CE into the hash layers, the paper's Eq. 12 read as hash
  learning (the baseline's default, ``"detached"``, would keep CE out of them).
- Generator weights (Eq. 11): the paper's appendix (gamma_is, gamma_sp, gamma_cd) = (1, 1, 0.2);
  the code uses (10, 10, 0.3) (pass them to follow it). L_cd is Eq. 10's per-anchor std over
  the negatives; the code's J_div is 1 - sqrt(mean over all edges of |lambda - row mean|^2).

Scale: the host's L_real sums the four graphs (Eq. 14); J_gca and L_syn are sums too, so their
ratios are the code's (which averages all three over the graphs).

Cost: the T-I graph is the I-T graph with anchors and candidates swapped (the label mask is
symmetric and every block treats the two sides alike), so its propagation is the I-T result
transposed and is computed once (the paper's "three graphs"); in the I-I and T-T graphs the edges
stay symmetric, so only their upper triangle is propagated. Tests check both against the dense
computation. Memory: graph tensors are at most (B x B x 4K); triplets are index lists and
scalars (:mod:`cmhash.methods._dgs_synthesis` evaluates the synthetic negatives per
anchor-negative pair); the official code's (B x B x B) mask is never built.
Ablations (Sec. 4.5): ``generation=False`` on DGHDGH (w/o DGS), ``gt_blocks=0`` (w/o RGP),
``edge_to_node=False`` (w/o EMF), ``hardness=False`` (w/o HAP: tau = 1).
"""

from __future__ import annotations

import math
from typing import Any

from cmhash.nn.engine import Batch, LossPlugin, TrainContext  # first: clear error without torch

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from cmhash.methods._dgs_synthesis import PairTerms  # noqa: E402
from cmhash.methods.deep_baseline import DeepBaseline  # noqa: E402
from cmhash.methods.registry import register_method  # noqa: E402
from cmhash.nn.losses import multilabel_cross_entropy  # noqa: E402

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




# ------------------------------------------------------------------ triplets and synthesis
def triplet_indices(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) rows of every triplet: p with pos[a, p], n with neg[a, n].

    Index lists of length T = sum_a #pos(a) #neg(a), built without an (A x P x N) mask.
    """
    ap = pos.nonzero()                                        # sorted by anchor
    n_neg = neg.sum(dim=1)
    neg_cols = neg.nonzero()[:, 1]                            # each anchor's negatives, in a row
    first_neg = torch.cumsum(n_neg, 0) - n_neg
    reps = n_neg[ap[:, 0]]
    t_a, t_p = ap[:, 0].repeat_interleave(reps), ap[:, 1].repeat_interleave(reps)
    within = torch.arange(int(reps.sum()), device=pos.device) - (torch.cumsum(reps, 0) - reps).repeat_interleave(reps)
    return t_a, t_p, neg_cols[first_neg[t_a] + within]


def synthetic_negatives(anchors: torch.Tensor, negatives: torch.Tensor, lam_tau: torch.Tensor,
                        t_a: torch.Tensor, t_n: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Eq. 7 written out, one row per triplet (T x K): z = (1 - eta) h_a + eta h_n with
    eta = rho + lambda tau (1 - rho) = (d+ + lambda tau (d- - d+)) / d-, rho = d+ / d-; the real
    negative h_n where rho >= 1 (d+ >= d-). ``lam_tau`` is lambda * tau (A x N x K).

    Training evaluates these through :class:`~cmhash.methods._dgs_synthesis.PairTerms` instead.
    """
    m = lam_tau[t_a, t_n]
    eta = rho[:, None] + m * (1.0 - rho[:, None])
    z = (1.0 - eta) * anchors[t_a] + eta * negatives[t_n]
    return torch.where((rho < 1.0)[:, None], z, negatives[t_n])


def triplet_hinge_mean(s_ap: torch.Tensor, s_an: torch.Tensor, margin: float, select: str) -> torch.Tensor:
    """Mean of [S_an - S_ap + margin]_+ over the selected triplets (0 if none), similarities S.

    ``select="active"``: every positive hinge (Eq. 14-15 as a standard triplet loss); ``"hard"``:
    also S_an > S_ap (the official code's ``hardness="hard"``).
    """
    hinge = s_an - s_ap + margin
    keep = hinge > 0
    if select == "hard":
        keep = keep & (s_an > s_ap)
    return hinge[keep].mean() if bool(keep.any()) else hinge.sum() * 0.0


def coefficient_diversity(lam: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Eq. 10: mean over anchors with >= 2 negatives and channels of 1 - std over a's negatives."""
    has_neg = neg.sum(dim=1) > 1
    if not bool(has_neg.any()):
        return lam.sum() * 0.0
    mask = neg[..., None].to(lam.dtype)
    cnt = neg.sum(dim=1)[:, None].to(lam.dtype).clamp_min(1.0)
    mean = (lam * mask).sum(dim=1) / cnt
    var = (((lam - mean[:, None, :]) ** 2) * mask).sum(dim=1) / cnt        # A x K over negatives
    return (1.0 - (var + 1e-12).sqrt()[has_neg]).mean()                     # finite gradient at 0


def _row_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the cross-entropy of :func:`~cmhash.nn.losses.multilabel_cross_entropy` (its mean)."""
    target = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)


def _value(x: torch.Tensor | float) -> float:
    return float(x.detach()) if torch.is_tensor(x) else float(x)


CHOICES = {"tau_loss": ("real", "total"), "d_pos": ("triplet", "hardest"), "syn_triplets": ("hard", "active"),
           "gamma_syn": ("code", "paper")}


class GlobalSenseSynthesis(LossPlugin):
    """Hard-negative generation (RGP + DGS) as a loss plug-in for any deep hashing method.

    The hash step (:meth:`batch_loss`) adds J_gca + gamma_syn L_syn; after the hash networks'
    step (:meth:`after_step`) the graph transformer takes J_gca's gradients, the plug-in's own
    classifier (if the host has none) its CE step on detached embeddings, and the generator its
    L_go step on the same, detached, embeddings: the official code's order.
    """

    name = "dgs"

    def __init__(self, *, margin: float = 0.25, gt_blocks: int = 2, gt_heads: int = 4, gt_mlp_mult: int = 4,
                 edge_to_node: bool = True, hardness: bool = True, alpha: float = 5.0, tau_loss: str = "real",
                 d_pos: str = "triplet", normalize: bool = True, syn_triplets: str = "hard",
                 gca_to_codes: bool = True, gen_lr: float = 1e-5, gen_weight_decay: float = 0.2,
                 gamma_syn: str = "code", beta: float = 2.0, gamma_sp: float = 1.0, gamma_is: float = 1.0,
                 gamma_cd: float = 0.2, cls_lr: float = 1e-5):
        if gt_blocks < 0 or gt_heads < 1 or gt_mlp_mult < 1:
            raise ValueError(f"dgs: gt_blocks >= 0, gt_heads >= 1, gt_mlp_mult >= 1 expected, got "
                             f"{gt_blocks}, {gt_heads}, {gt_mlp_mult}")
        for key, lr in (("gen_lr", gen_lr), ("cls_lr", cls_lr)):
            if not lr > 0:
                raise ValueError(f"dgs: {key} must be > 0, got {lr}")
        given = {"tau_loss": tau_loss, "d_pos": d_pos, "syn_triplets": syn_triplets, "gamma_syn": gamma_syn}
        for key, value in given.items():
            if value not in CHOICES[key]:
                raise ValueError(f"dgs: {key} must be one of {CHOICES[key]}, got {value!r}")
        self.config = dict(margin=margin, gt_blocks=gt_blocks, gt_heads=gt_heads, gt_mlp_mult=gt_mlp_mult,
                           edge_to_node=edge_to_node, hardness=hardness, alpha=alpha, tau_loss=tau_loss,
                           d_pos=d_pos, normalize=normalize, syn_triplets=syn_triplets, gca_to_codes=gca_to_codes,
                           gen_lr=gen_lr, gen_weight_decay=gen_weight_decay, gamma_syn=gamma_syn, beta=beta,
                           gamma_sp=gamma_sp, gamma_is=gamma_is, gamma_cd=gamma_cd, cls_lr=cls_lr)

    def hparams(self) -> dict[str, Any]:
        return dict(self.config)

    def epoch_cost(self, bits: int) -> float:
        # B x B x K graphs through MLPs of width 4K, twice per batch: grows ~K^2
        return 16.0 + 16.0 * (bits / 32) ** 2

    # ------------------------------------------------------------------------ schedule
    def setup(self, ctx: TrainContext) -> None:
        c = self.config
        ctx.add_module("rgp", RelevanceGlobalPropagation(
            ctx.bits, ctx.num_classes, blocks=c["gt_blocks"], heads=c["gt_heads"], mlp_mult=c["gt_mlp_mult"],
            edge_to_node=c["edge_to_node"]), group="generator", lr=c["gen_lr"], weight_decay=c["gen_weight_decay"])
        self.own_classifier = "classifier" not in ctx.modules
        if self.own_classifier:  # the host has no classifier CL: train one on detached embeddings (Eq. 12)
            ctx.add_module("dgs_classifier", nn.Linear(ctx.bits, ctx.num_classes), group="dgs_classifier",
                           lr=c["cls_lr"])
        ctx.state["dgs"] = {"prev_loss": math.inf, "prev_l_go": math.inf, **self._fresh_epoch()}
        diag = ctx.state.setdefault("record", {}).setdefault("diagnostics", {})
        for key in ("tau", "gamma_syn", "interpolated", "l_go", "j_r"):
            diag[f"dgs_{key}_per_epoch"] = []

    @staticmethod
    def _fresh_epoch() -> dict[str, Any]:
        """The code's running means restart each epoch (its AverageMeters)."""
        return {"j_r_sum": 0.0, "j_r_n": 0, "l_go_sum": 0.0, "l_go_n": 0}

    def on_epoch_start(self, ctx: TrainContext) -> None:
        ctx.state["dgs"].update(self._fresh_epoch())

    def on_epoch_end(self, ctx: TrainContext, logs: dict[str, float]) -> None:
        st = ctx.state["dgs"]
        l_go = st["l_go_sum"] / st["l_go_n"] if st["l_go_n"] else math.inf
        st.update(prev_loss=logs.get("loss", math.inf), prev_l_go=l_go)
        diag = ctx.state["record"]["diagnostics"]
        for key, value in (("tau", logs.get("tau")), ("gamma_syn", logs.get("gamma_syn")),
                           ("interpolated", logs.get("interpolated")), ("l_go", l_go), ("j_r", logs.get("j_r"))):
            diag[f"dgs_{key}_per_epoch"].append(None if value is None or not math.isfinite(value) else round(value, 8))
        for key in ("tau", "gamma_syn", "interpolated"):   # scalars for reports: means over the epochs run
            vals = [v for v in diag[f"dgs_{key}_per_epoch"] if v is not None]
            diag[f"dgs_{key}_mean"] = round(sum(vals) / len(vals), 8) if vals else None

    def tau(self, ctx: TrainContext) -> float:
        """Eq. 7's tau from what is known now (see the module docstring, ``tau_loss``)."""
        c, st = self.config, ctx.state["dgs"]
        if not c["hardness"]:
            return 1.0
        if c["tau_loss"] == "real":
            x = st["j_r_sum"] / st["j_r_n"] if st["j_r_n"] else 0.0
            x = 1e6 if x == 0 else x                              # the code's empty running mean
        else:
            x = st["prev_loss"]
        return math.exp(-c["alpha"] / x)

    def gamma_syn(self, ctx: TrainContext) -> float:
        """Eq. 16's gamma_syn (see the module docstring, ``gamma_syn``)."""
        c, st = self.config, ctx.state["dgs"]
        if c["gamma_syn"] == "paper":
            return 1.0 - math.exp(-1.0 / st["prev_l_go"])
        x = st["l_go_sum"] / st["l_go_n"] if st["l_go_n"] else 0.0
        x = 1e6 if x == 0 else x
        return 0.9 if 1.0 - math.exp(-c["beta"] / x) >= 0.9 else 0.1

    # ---------------------------------------------------------------------- per batch
    def _embeddings(self, codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: F.normalize(h, dim=1) if self.config["normalize"] else h for m, h in codes.items()}

    def _triplets(self, labels: torch.Tensor) -> dict[bool, tuple[torch.Tensor, ...]]:
        """Per graph kind (same modality or not): (pos, neg, t_a, t_p, t_n). Within a modality an
        item is not its own positive; across modalities its pair is (the code's gen_triplets)."""
        shared = (labels @ labels.T) > 0
        neg = ~shared
        same_pos = shared & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        return {same: (pos, neg, *triplet_indices(pos, neg)) for same, pos in ((True, same_pos), (False, shared))}

    @staticmethod
    def _propagate(rgp: RelevanceGlobalPropagation, emb: dict[str, torch.Tensor], neg: torch.Tensor
                   ) -> dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]]:
        """(lambda, anchor-node logits) of the four graphs; T-I is I-T transposed."""
        out, raw = {}, {}
        for u, v in GRAPHS:
            if (v, u) in raw:
                lam_t, logits_v, logits_u = raw[(v, u)]
                out[(u, v)] = (lam_t.transpose(0, 1), logits_u)
            else:
                lam, logits_u, logits_v = raw[(u, v)] = rgp(emb[u], emb[v], neg, same=u == v)
                out[(u, v)] = (lam, logits_u)
        return out

    def _ratios(self, hu: torch.Tensor, hv: torch.Tensor, pos: torch.Tensor, t_a, t_p, t_n) -> torch.Tensor:
        """rho = d+ / d- per triplet, d the Euclidean distances between the embeddings ``hu`` and
        ``hv`` clamped at 1e-6 as the code does."""
        dist = torch.cdist(hu, hv).clamp_min(1e-6)
        if self.config["d_pos"] == "triplet":
            d_pos = dist[t_a, t_p]
        else:
            d_pos = torch.where(pos, dist, torch.zeros_like(dist)).amax(dim=1)[t_a]
        return d_pos / dist[t_a, t_n]

    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        c, st = self.config, ctx.state["dgs"]
        rgp: RelevanceGlobalPropagation = ctx.modules["rgp"]
        ctx.optimizers["generator"].zero_grad(set_to_none=True)   # the main backward leaves J_gca's gradients
        labels = batch.labels
        trip = self._triplets(labels)
        neg = trip[True][1]
        emb = self._embeddings(codes)
        fixed = {m: h.detach() for m, h in emb.items()}
        tau, gamma = self.tau(ctx), self.gamma_syn(ctx)
        props = self._propagate(rgp, emb if c["gca_to_codes"] else fixed, neg)
        l_syn = l_gca = 0.0
        j_r = interpolated = 0.0
        for u, v in GRAPHS:
            lam, logits_u = props[(u, v)]
            pos, _, t_a, t_p, t_n = trip[u == v]
            sim = F.normalize(emb[u], dim=1) @ F.normalize(emb[v], dim=1).T
            s_ap, s_real = sim[t_a, t_p], sim[t_a, t_n]
            rho = self._ratios(emb[u], emb[v], pos, t_a, t_p, t_n)
            use = rho < 1.0
            terms = PairTerms(emb[u], emb[v], lam.detach() * tau)
            s_syn = terms.cosine(t_a, t_n, torch.where(use, rho, torch.zeros_like(rho)))
            l_syn = l_syn + triplet_hinge_mean(s_ap, torch.where(use, s_syn, s_real), c["margin"], c["syn_triplets"])
            if c["gca_to_codes"]:
                l_gca = l_gca + multilabel_cross_entropy(logits_u, labels)                 # Eq. 13
            j_r += float(triplet_hinge_mean(s_ap.detach(), s_real.detach(), c["margin"], "active"))
            interpolated += float(use.float().mean()) if len(use) else 0.0
        j_r /= len(GRAPHS)
        st.update(j_r_sum=st["j_r_sum"] + j_r, j_r_n=st["j_r_n"] + 1)
        st["pending"] = {"emb": fixed, "labels": labels, "trip": trip,
                         "props": None if c["gca_to_codes"] else props}  # detached inputs: reusable
        loss = gamma * l_syn + l_gca
        logs = {"j_r": j_r, "l_syn": _value(l_syn), "l_gca": _value(l_gca), "tau": tau, "gamma_syn": gamma,
                "interpolated": interpolated / len(GRAPHS)}
        return loss, logs

    def after_step(self, ctx: TrainContext) -> None:
        st = ctx.state["dgs"]
        pending = st.pop("pending", None)
        if pending is None:
            return
        c, rgp = self.config, ctx.modules["rgp"]
        gen_opt = ctx.optimizers["generator"]
        if c["gca_to_codes"]:   # J_gca's gradients, left by the hash step's backward
            torch.nn.utils.clip_grad_norm_(rgp.parameters(), 1.0)
            gen_opt.step()
        emb, labels, trip = pending["emb"], pending["labels"], pending["trip"]
        if self.own_classifier:   # CL on detached embeddings, its own optimiser (the code's J_cz)
            cls = ctx.modules["dgs_classifier"]
            ce = sum(multilabel_cross_entropy(cls(h), labels) for h in emb.values()) / 2
            ctx.optimizer_step("dgs_classifier", ce)
        else:
            cls = ctx.modules["classifier"]
        weight, bias = cls.weight.detach(), cls.bias.detach()                     # frozen for L_sp (Eq. 8)
        tau = self.tau(ctx)                                                        # J_r now includes this batch
        neg = trip[True][1]
        props = pending["props"] or self._propagate(rgp, emb, neg)
        l_go = l_gca = 0.0
        for u, v in GRAPHS:
            lam, logits_u = props[(u, v)]
            pos, _, t_a, t_p, t_n = trip[u == v]
            hu, hv = emb[u], emb[v]
            rho = self._ratios(hu, hv, pos, t_a, t_p, t_n)
            use = rho < 1.0
            # means over all triplets; where d+ >= d- the real negative stands in (no gradient)
            syn, real = use.nonzero().squeeze(1), (~use).nonzero().squeeze(1)
            ta, tn, r = t_a[syn], t_n[syn], rho[syn]
            terms = PairTerms(hu, hv, lam * tau)
            real_cos = (F.normalize(hu, dim=1) @ F.normalize(hv, dim=1).T)[t_a[real], t_n[real]]
            real_ce = _row_cross_entropy(F.linear(hv, weight, bias), labels)[t_n[real]]
            count = max(len(t_a), 1)
            l_is = ((1.0 - terms.cosine(ta, tn, r)).sum() + (1.0 - real_cos).sum()) / count            # Eq. 9
            l_sp = (_row_cross_entropy(terms.logits(weight, bias, ta, tn, r), labels[tn]).sum()
                    + real_ce.sum()) / count                                                            # Eq. 8
            l_cd = coefficient_diversity(lam, neg)                                                     # Eq. 10
            l_go = l_go + (c["gamma_is"] * l_is + c["gamma_sp"] * l_sp + c["gamma_cd"] * l_cd) / len(GRAPHS)
            if not c["gca_to_codes"]:
                l_gca = l_gca + multilabel_cross_entropy(logits_u, labels) / len(GRAPHS)
        gen_opt.zero_grad(set_to_none=True)
        (l_go + l_gca).backward()
        torch.nn.utils.clip_grad_norm_(rgp.parameters(), 1.0)
        gen_opt.step()
        st.update(l_go_sum=st["l_go_sum"] + _value(l_go), l_go_n=st["l_go_n"] + 1)


DGS_DEFAULTS = {k: v for k, v in GlobalSenseSynthesis().config.items() if k != "margin"}


@register_method
class DGHDGH(DeepBaseline):
    """The deep baseline's networks and real-pair losses + global-sense hard-negative generation.

    ``cls_weight=0`` by default: the official code adds no classifier CE to the hash layers (its
    classifier trains on detached codes: the plug-in's own). ``generation=False``: w/o DGS.
    """

    name = "dghdgh"
    defaults = {**DeepBaseline.defaults, "cls_weight": 0.0, "generation": True, **DGS_DEFAULTS}
    #: the paper's literal forms where it states one (see the module docstring); J_gca on detached
    #: codes and CE into the hash layers are this module's earlier readings of the silent points.
    presets = {"paper": {"alpha": 1.0, "tau_loss": "total", "normalize": False, "syn_triplets": "active",
                         "gamma_syn": "paper", "gca_to_codes": False, "cls_weight": 1.0,
                         "classifier": "joint"}}

    def __init__(self, preset: str | None = None, **hparams: Any):
        super().__init__(preset=preset, **hparams)
        h = self.hparams
        if h["generation"]:
            self.plugins.append(GlobalSenseSynthesis(margin=h["margin"], **{k: h[k] for k in DGS_DEFAULTS}))
