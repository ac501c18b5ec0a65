"""HINT: Hierarchical Encoding Tree with Modality Mixup (Xiao et al., ICLR 2026), unsupervised.

No public code; every step follows ``papers/HINT.txt`` and METHODS.md:

1. Before training (Sec. 4.2): the cross-modal graph G_cross (2N nodes: the N pairs plus k = 3
   cosine nearest neighbours within each modality) and its encoding tree T* minimising the
   structural entropy (Eq. 3-4), :mod:`cmhash.graph`.
2. Proxies (Eq. 5): for item i of modality m, N+ = the other modality-m leaves of i's lowest
   tree community, N- = that community's leaves of the other modality (walking up one level at a
   time while a side is empty); m_same / m_cross = mean relaxed codes of N+ / N-, each through
   its own modality's network. The codes come from a gradient-free pass over the training set
   at the start of every epoch (the proxies are targets).
3. Modality mixup (Eq. 6): lambda = ``mmd_scale`` x Gaussian-kernel MMD between the profiles
   rho(m_same, B) and rho(m_cross, B) (rho = cosine distance to the batch's codes of both
   modalities; bandwidth by the median heuristic), mix_i^m = lambda/(1+lambda) m_same +
   1/(1+lambda) m_cross, b_mix = its sign (one per pair by default: ``target`` below), detached.
4. L_hash (Eq. 7): InfoNCE between each item's relaxed code and the batch's b_mix (tau = 0.3),
   for both modalities. *Decision*: the similarity is the cosine (``hash_similarity="inner"``
   gives the paper's literal inner product, whose logits grow with the code length).
5. L_con (Eq. 9-10): KL(p(f_i) || p(m_i^cross)), p = softmax of cosine similarities to the other
   modality's batch codes over a temperature (*decision*: ``con_tau`` = 0.3; plain softmax of
   cosines in [-1, 1] is nearly flat), weighted by ``con_weight``.

Readings where the paper is open or self-contradictory (each a parameter; no public code, so
"official code" never settles one here; "validation" = ``benchmarks/hint_validation.py``: a
seeded 20% held-out part of the training set, labels used only to score the held-out items
against the rest, never in training, never the test queries; numbers in docs/unsupervised.md):

- ``target`` (Eq. 7 vs Lemma 4.1 / Eq. 8): Eq. 8 writes ONE b_i^mix that both f_i^v and f_i^t
  are pulled to. ``"shared"`` (default, paper: Eq. 8): b_i^mix = sign(mix_i^v + mix_i^t), the sum
  of the two modalities' pre-sign mixes of Eq. 6. ``"per_modality"``: each modality against its
  own sign(mix_i^m) (the earlier reading; V1's "solely from the opposite modality").
- ``pair_in_cross`` (Eq. 5): N-(f_i) are "neighbouring nodes on the tree"; the paired item is a
  direct graph neighbour, yet on the unweighted graph the tree separates most pairs.
  ``True`` (default; validation): the pair is always in N-. ``pair_share`` = its weight in
  m_cross: a number s in (0, 1] gives m_cross = s b_pair + (1 - s) mean(N- without the pair)
  (default 0.75, validation); ``"member"`` counts it as one member among N- (the plain mean of
  Eq. 5 over N- with the pair). ``False``: N- as the tree gives it (the literal community
  reading; m_cross then ignores the pair for ~75% of WIKI items).
- ``mmd_scale`` (Eq. 6): a biased Gaussian MMD is at most sqrt(2), so with the literal
  lambda = MMD (scale 1) lambda/(1+lambda) <= 0.59 and the "intra-modal first" phase the paper
  describes can never dominate. lambda = mmd_scale x MMD; default 10 (validation: above 1 in
  every comparison made; the first epochs then weigh m_same above m_cross, lambda falls below 1
  as the modalities align).
- ``pair_weight`` (graph, Sec. 4.2): weight of the pair edges; default 1 = the paper's
  unweighted graph (2 keeps every WIKI pair in one community: reported beside the default).
- ``con_weight`` (Eq. 10; the paper adds L_con to L_hash without a weight, Alg. 1): default 1
  (paper; on validation 0, 0.3 and 1 lie within 0.006 mAP, 0 highest, one seed). L_con alone
  (``hash_weight=0``) collapses the codes (docs/unsupervised.md).

Diagnostics in ``model.record["hint"]`` (no labels): ``pairs_in_one_community`` (share of
pairs whose image and text have the same lowest community), ``pair_in_cross`` (share of items
whose tree N- holds their pair, per modality, before ``pair_in_cross`` adds it),
``pair_bit_agreement_per_epoch`` and ``pair_bit_agreement`` (share of equal bits between
sign(F_v(x_i)) and sign(F_t(y_i)) over the training pairs, after each epoch / the last one),
``lambda_per_epoch``.

Variants of Table 2 as presets: ``v1`` (pairs only: each modality's b_mix = sign of the paired
code, "solely from the opposite modality"; no L_con), ``v2`` (pairs + intra-modal kNN: b_mix =
sign of the mean of the kNN proxy and the paired code, no L_con), ``v3`` (tree proxies,
equal-weight mix, no L_con), ``v4`` (full L_hash, no L_con). V2-V4 keep the default readings
above (shared target; V3/V4 the pair in N-; V4 the MMD scale).

Unsupervised: training never sees labels (:meth:`HashingMethod.fit` hands over a label-free
copy), so the engine's label-based model selection is off by default (``val_fraction = 0``:
the last epoch is kept, as in the paper).
"""

from __future__ import annotations

import time
from typing import Any

from cmhash.nn.engine import UNSUPERVISED_ENGINE_DEFAULTS, Batch, DeepHashingMethod, TrainContext  # first: clear error without torch

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cmhash.graph import EncodingTree, build_encoding_tree, cosine_knn, cross_modal_graph  # noqa: E402
from cmhash.methods.registry import register_method  # noqa: E402

OTHER = {"image": "text", "text": "image"}


# ------------------------------------------------------------------------------ the maths
def gaussian_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Biased MMD estimate (Gretton et al. 2012) between samples x (n x d) and y (m x d).

    MMD = sqrt(max(0, mean k(x, x') + mean k(y, y') - 2 mean k(x, y))), Gaussian kernel
    k(a, b) = exp(-||a - b||^2 / (2 s^2)), s^2 = median of the pooled pairwise squared distances
    (a != b; median heuristic; 1 if they are all 0).
    """
    z = torch.cat([x, y])
    d2 = torch.cdist(z, z).pow(2)
    off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
    s2 = off.median() if off.numel() else z.new_tensor(1.0)
    s2 = torch.where(s2 > 0, s2, torch.ones_like(s2))
    k = torch.exp(-d2 / (2 * s2))
    n = len(x)
    mmd2 = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
    return mmd2.clamp_min(0).sqrt()


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """rho(a_i, b_j) = 1 - cos(a_i, b_j), (n_a x n_b)."""
    return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def mixup_weight(m_same: torch.Tensor, m_cross: torch.Tensor, reference: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
    """lambda of Eq. 6: ``scale`` x MMD between the distance profiles of the two proxy sets to
    the batch (scale 1 = the paper's literal lambda, at most sqrt(2))."""
    return scale * gaussian_mmd(cosine_distance(m_same, reference), cosine_distance(m_cross, reference))


def binarize(x: torch.Tensor) -> torch.Tensor:
    """sign(x) with sign(0) = +1."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def mixup_mix(m_same: torch.Tensor, m_cross: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """The argument of sign in Eq. 6: lambda/(1+lambda) m_same + 1/(1+lambda) m_cross."""
    return lam / (1 + lam) * m_same + 1 / (1 + lam) * m_cross


def mixup_target(m_same: torch.Tensor, m_cross: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """b_mix of Eq. 6 = sign(lambda/(1+lambda) m_same + 1/(1+lambda) m_cross), sign(0) = +1."""
    return binarize(mixup_mix(m_same, m_cross, lam))


def shared_target(mix_image: torch.Tensor, mix_text: torch.Tensor) -> torch.Tensor:
    """One b_i^mix per pair (Lemma 4.1, Eq. 8): sign(mix_i^v + mix_i^t) of the two Eq. 6 mixes."""
    return binarize(mix_image + mix_text)


def cross_proxy_with_pair(member_sum: torch.Tensor, member_count: torch.Tensor, contains: torch.Tensor,
                          pair: torch.Tensor, share: float | str) -> torch.Tensor:
    """m_cross of Eq. 5 with the paired item always in N-.

    ``member_sum`` (n x L) / ``member_count`` (n,): sum and size of each item's tree N-;
    ``contains`` (n,) 0/1: whether the tree's N- already holds the pair; ``pair`` (n x L): the
    paired items' codes. ``share="member"``: the mean over N- with the pair (one member among
    them); ``share=s``: s x pair + (1 - s) x mean(N- without the pair) (the pair alone when N- has
    nothing else).
    """
    rest_sum = member_sum - contains.unsqueeze(1) * pair
    rest_count = (member_count - contains).unsqueeze(1)
    if share == "member":
        return (rest_sum + pair) / (rest_count + 1)
    rest_mean = rest_sum / rest_count.clamp_min(1)
    return torch.where(rest_count > 0, share * pair + (1 - share) * rest_mean, pair)


def pair_bit_agreement(image_codes: torch.Tensor, text_codes: torch.Tensor) -> float:
    """Share of equal bits between sign(image_i) and sign(text_i) over all pairs i."""
    return float((binarize(image_codes) == binarize(text_codes)).double().mean())


def info_nce(f: torch.Tensor, targets: torch.Tensor, tau: float, similarity: str = "cosine") -> torch.Tensor:
    """Eq. 7 (mean over the batch): -log softmax_j(sim(f_i, t_j) / tau) at j = i."""
    if similarity == "cosine":
        logits = F.normalize(f, dim=1) @ F.normalize(targets, dim=1).T
    elif similarity == "inner":
        logits = f @ targets.T
    else:
        raise ValueError(f"hash_similarity must be 'cosine' or 'inner', got {similarity!r}")
    return F.cross_entropy(logits / tau, torch.arange(len(f), device=f.device))


def proxy_consistency(f: torch.Tensor, m_cross: torch.Tensor, others: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 9-10 (mean over the batch): KL(p(f_i) || p(m_i^cross)), p = softmax(cos(., others) / tau)."""
    log_p = F.log_softmax(F.normalize(f, dim=1) @ F.normalize(others, dim=1).T / tau, dim=1)
    log_q = F.log_softmax(F.normalize(m_cross, dim=1) @ F.normalize(others, dim=1).T / tau, dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


# --------------------------------------------------------------------- proxies from the tree
def tree_proxy_groups(tree: EncodingTree, n: int) -> dict[tuple[str, str], tuple[np.ndarray, sp.csr_matrix]]:
    """Eq. 5's neighbour sets N+ ("same") and N- ("cross") of every item, from the tree.

    Leaves 0..n-1 are the images, n..2n-1 the texts. For item i of modality m and each side, the
    community is i's parent, moved up while it holds no member of that side (for "same": no
    modality-m leaf other than i itself; the root holds all). Returns, per (modality, side),
    (group of each item (n,), members (groups x n) 0/1 matrix over the member modality's items);
    for "same" the item itself is among its group's members (callers subtract it).
    """
    if tree.n_leaves != 2 * n:
        raise ValueError(f"the tree has {tree.n_leaves} leaves, expected 2 x {n} (images, then texts)")
    size = tree.n_nodes
    is_text = np.arange(2 * n) >= n
    count = {}
    for m, mask in (("image", ~is_text), ("text", is_text)):
        c = np.zeros(size, dtype=np.int64)
        c[: 2 * n] = mask
        for x in range(size - 1):
            c[tree.parent[x]] += c[x]
        count[m] = c
    out = {}
    for m, offset in (("image", 0), ("text", n)):
        leaves = np.arange(n) + offset
        for side, member_mod, need in (("same", m, 2), ("cross", OTHER[m], 1)):
            node = tree.parent[leaves]
            while True:
                short = (count[member_mod][node] < need) & (tree.parent[node] >= 0)
                if not short.any():
                    break
                node = np.where(short, tree.parent[node], node)
            used, group = np.unique(node, return_inverse=True)
            out[(m, side)] = (group, _members(tree, used, n, 0 if member_mod == "image" else n))
    return out


def pair_in_cross_share(groups: dict[tuple[str, str], tuple[np.ndarray, sp.csr_matrix]], n: int
                        ) -> dict[str, np.ndarray]:
    """Per modality, whether each item's tree N- (``groups[(m, "cross")]``) holds its pair (n,) bool."""
    out = {}
    for m in ("image", "text"):
        group, members = groups[(m, "cross")]
        out[m] = np.asarray(members[group, np.arange(n)]).ravel() > 0
    return out


def _members(tree: EncodingTree, nodes: np.ndarray, n: int, offset: int) -> sp.csr_matrix:
    """0/1 matrix (len(nodes) x n): which of leaves offset..offset+n-1 lie under each node."""
    pos = np.full(tree.n_nodes, -1, dtype=np.int64)
    pos[nodes] = np.arange(len(nodes))
    rows, cols = [], []
    item = np.arange(n)
    a = item + offset
    while True:
        hit = pos[a] >= 0
        rows.append(pos[a][hit])
        cols.append(item[hit])
        up = tree.parent[a]
        keep = up >= 0
        if not keep.any():
            break
        a, item = up[keep], item[keep]
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(nodes), n))


def _sparse_tensor(matrix: sp.spmatrix, device: torch.device) -> torch.Tensor:
    coo = matrix.tocoo()
    index = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
    values = torch.as_tensor(coo.data, dtype=torch.float32)
    return torch.sparse_coo_tensor(index, values, size=coo.shape, device=device, check_invariants=True).coalesce()


# ------------------------------------------------------------------------------ the method
@register_method
class HINT(DeepHashingMethod):
    """HINT on the shared deep engine (the maths above; batching etc. from the engine)."""

    name = "hint"
    supervised = False
    defaults = {
        **UNSUPERVISED_ENGINE_DEFAULTS,
        "knn": 3,                  # k of the intra-modal kNN graph (Sec. 4.2)
        "weighted": False,         # kNN edges weigh their cosine similarity
        "pair_weight": 1.0,        # weight of the pair edges (1 = the paper's graph)
        "tree_height": 3,          # height of the encoding tree (>= 2)
        "tau": 0.3,                # InfoNCE temperature (Eq. 7)
        "hash_similarity": "cosine",
        "target": "shared",        # one b_mix per pair (Lemma 4.1) or "per_modality"
        "pair_in_cross": True,     # the paired item always in N- (Eq. 5 reading)
        "pair_share": 0.75,        # its weight in m_cross ("member" = one member among N-)
        "mmd_scale": 10.0,         # lambda = mmd_scale x MMD (Eq. 6; 1 = literal)
        "hash_weight": 1.0,        # weight of L_hash (0 = L_con alone: a diagnostic)
        "con_weight": 1.0,         # weight of L_con (0 = off: V1-V4)
        "con_tau": 0.3,            # softmax temperature of Eq. 9
        "proxy_source": "tree",    # "tree" (Eq. 5), "knn" (V2), "pair" (V1)
        "mixup": "mmd",            # "mmd" (Eq. 6), "mean" (V2, V3), "cross" (V1)
    }
    presets = {
        "v1": {"proxy_source": "pair", "mixup": "cross", "con_weight": 0.0, "target": "per_modality"},
        "v2": {"proxy_source": "knn", "mixup": "mean", "con_weight": 0.0},
        "v3": {"proxy_source": "tree", "mixup": "mean", "con_weight": 0.0},
        "v4": {"proxy_source": "tree", "mixup": "mmd", "con_weight": 0.0},
    }

    def _check_hparams(self) -> dict[str, Any]:
        h = super()._check_hparams()
        choices = {"proxy_source": ("tree", "knn", "pair"), "mixup": ("mmd", "mean", "cross"),
                   "hash_similarity": ("cosine", "inner"), "target": ("shared", "per_modality")}
        for key, allowed in choices.items():
            if h[key] not in allowed:
                raise ValueError(f"hint: '{key}' must be one of {allowed}, got {h[key]!r}")
        if h["mixup"] == "mmd" and h["proxy_source"] == "pair":
            raise ValueError("hint: mixup='mmd' needs same-modality proxies (proxy_source 'tree' or 'knn')")
        if int(h["tree_height"]) != h["tree_height"] or h["tree_height"] < 2:
            raise ValueError(f"hint: 'tree_height' must be an integer >= 2, got {h['tree_height']!r}")
        if not (h["tau"] > 0 and h["con_tau"] > 0 and h["con_weight"] >= 0 and h["hash_weight"] >= 0):
            raise ValueError("hint: 'tau' and 'con_tau' must be > 0, 'con_weight' and 'hash_weight' >= 0")
        if h["hash_weight"] == 0 and h["con_weight"] == 0:
            raise ValueError("hint: 'hash_weight' and 'con_weight' are both 0: no loss left")
        if not isinstance(h["pair_in_cross"], bool):
            raise ValueError(f"hint: 'pair_in_cross' must be true or false, got {h['pair_in_cross']!r}")
        share = h["pair_share"]
        if share != "member" and not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise ValueError(f"hint: 'pair_share' must be 'member' or a number in (0, 1], got {share!r}")
        if not h["mmd_scale"] > 0:
            raise ValueError(f"hint: 'mmd_scale' must be > 0, got {h['mmd_scale']!r}")
        return h

    # ---------------------------------------------------------------- before training
    def setup(self, ctx: TrainContext) -> None:
        h = ctx.hparams
        image, text = (ctx.data[m].cpu().numpy().astype(np.float64) for m in ("image", "text"))
        n = len(image)
        info: dict[str, Any] = {"proxy_source": h["proxy_source"], "mixup": h["mixup"]}
        if h["proxy_source"] == "tree":
            tick = time.perf_counter()
            graph = cross_modal_graph(image, text, k=int(h["knn"]), weighted=bool(h["weighted"]),
                                      pair_weight=float(h["pair_weight"]))
            graph_s = time.perf_counter() - tick
            tree = build_encoding_tree(graph, height=int(h["tree_height"]))
            groups = tree_proxy_groups(tree, n)
            contains = pair_in_cross_share(groups, n)
            info["pairs_in_one_community"] = float(np.mean(tree.parent[:n] == tree.parent[n:2 * n]))
            info["pair_in_cross"] = {m: float(c.mean()) for m, c in contains.items()}
            ctx.state["contains_pair"] = {m: torch.as_tensor(c, dtype=torch.float32, device=ctx.device)
                                          for m, c in contains.items()}
            info["tree"] = {
                "graph_seconds": round(graph_s, 4),
                "build_seconds": round(time.perf_counter() - tick - graph_s, 4),
                "nodes": 2 * n, "edges": int(graph.nnz // 2), "entropy": tree.entropy,
                "height": tree.height, "tree_nodes": tree.n_nodes,
                "mean_group_size": {f"{m}_{s}": float(np.mean(np.asarray(g[1].sum(axis=1)).ravel()[g[0]]))
                                    for (m, s), g in groups.items()},
            }
            ctx.state["groups"] = {
                key: (torch.as_tensor(group, device=ctx.device),
                      _sparse_tensor(mem, ctx.device),
                      torch.as_tensor(np.asarray(mem.sum(axis=1)).ravel(), dtype=torch.float32,
                                      device=ctx.device))
                for key, (group, mem) in groups.items()
            }
        elif h["proxy_source"] == "knn":
            ctx.state["knn"] = {m: torch.as_tensor(cosine_knn(x, int(h["knn"]), name=m)[0], device=ctx.device)
                                for m, x in (("image", image), ("text", text))}
        ctx.state["lambda"] = {"image": [], "text": []}
        ctx.state["record"] = {"hint": {**info, "lambda_per_epoch": [], "pair_bit_agreement_per_epoch": []}}

    def on_epoch_start(self, ctx: TrainContext) -> None:
        """Proxies of every item from a gradient-free pass (Eq. 5)."""
        source = ctx.hparams["proxy_source"]
        if source == "pair":
            return
        bank = {m: ctx.relaxed_codes(m) for m in ("image", "text")}
        proxies = {}
        for m in ("image", "text"):
            if source == "tree":
                group, members, count = ctx.state["groups"][(m, "same")]
                same = (members @ bank[m])[group] - bank[m]  # without the item itself
                same = same / (count[group] - 1).clamp_min(1).unsqueeze(1)
                group, members, count = ctx.state["groups"][(m, "cross")]
                member_sum, member_count = (members @ bank[OTHER[m]])[group], count[group]
                if ctx.hparams["pair_in_cross"]:
                    cross = cross_proxy_with_pair(member_sum, member_count, ctx.state["contains_pair"][m],
                                                  bank[OTHER[m]], ctx.hparams["pair_share"])
                else:
                    cross = member_sum / member_count.clamp_min(1).unsqueeze(1)
            else:  # knn (V2): same = mean of the k neighbours; cross = the pair, taken per batch
                same, cross = bank[m][ctx.state["knn"][m]].mean(dim=1), None
            proxies[m] = (same, cross)
        ctx.state["proxies"] = proxies

    # -------------------------------------------------------------------- per batch
    def batch_loss(self, ctx: TrainContext, batch: Batch, codes: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, dict[str, float]]:
        h = ctx.hparams
        reference = torch.cat([codes["image"], codes["text"]]).detach()
        l_con = codes["image"].new_zeros(())
        logs: dict[str, float] = {}
        mixes = {}
        for m in ("image", "text"):
            paired = codes[OTHER[m]].detach()
            if h["proxy_source"] == "pair":
                same, cross = None, paired
            else:
                same, cross = (p[batch.index] if p is not None else None for p in ctx.state["proxies"][m])
                cross = paired if cross is None else cross
            if h["mixup"] == "mmd":
                lam = mixup_weight(same, cross, reference, h["mmd_scale"])
                ctx.state["lambda"][m].append(float(lam))
                logs[f"lambda_{m}"] = float(lam)
                mixes[m] = mixup_mix(same, cross, lam)
            elif h["mixup"] == "mean":
                mixes[m] = mixup_mix(same, cross, 1.0)
            else:  # "cross" (V1): the paired code alone
                mixes[m] = cross
            if h["con_weight"] > 0:
                l_con = l_con + proxy_consistency(codes[m], cross, codes[OTHER[m]].detach(), h["con_tau"])
        if h["target"] == "shared":
            targets = dict.fromkeys(mixes, shared_target(mixes["image"], mixes["text"]))
        else:
            targets = {m: binarize(mix) for m, mix in mixes.items()}
        l_hash = sum(info_nce(codes[m], targets[m], h["tau"], h["hash_similarity"]) for m in ("image", "text"))
        logs["hash"] = float(l_hash.detach())
        loss = h["hash_weight"] * l_hash
        if h["con_weight"] > 0:
            logs["con"] = float(l_con.detach())
            loss = loss + h["con_weight"] * l_con
        return loss, logs

    def on_epoch_end(self, ctx: TrainContext, logs: dict[str, float]) -> None:
        lam = ctx.state["lambda"]
        if lam["image"]:
            ctx.state["record"]["hint"]["lambda_per_epoch"].append(
                {"epoch": ctx.epoch, **{m: float(np.mean(v)) for m, v in lam.items()}})
        ctx.state["lambda"] = {"image": [], "text": []}
        agreement = pair_bit_agreement(ctx.relaxed_codes("image"), ctx.relaxed_codes("text"))
        record = ctx.state["record"]["hint"]
        record["pair_bit_agreement_per_epoch"].append(round(agreement, 6))
        record["pair_bit_agreement"] = agreement  # after the last epoch run
