"""Encoding trees of a weighted graph by greedy minimisation of structural entropy.

Structural entropy (Li & Pan, IEEE Trans. Inf. Theory 2016; HINT Eq. 4) of a graph G with
volume vol = sum of degrees, for an encoding tree T with root r:

    H^T(G) = - sum_{a in T, a != r} (g_a / vol) * log2(V_a / V_parent(a))

with V_a the sum of the degrees of the leaves under a and g_a the cut of a (total weight of the
edges with exactly one end under a). A leaf's cut is its degree (no self-loops).

The tree is built level by level, bottom-up, each level by greedy agglomeration (as CNM does for
modularity): the units of the level (leaves, then the communities found below) start as
singleton communities and the adjacent pair whose merge lowers H the most is merged, until no
merge lowers it. For a community Y of units u the terms that depend on the level's partition are

    f(Y) = -(g_Y / vol) log2(V_Y / vol) - (S_Y - G_Y log2 V_Y) / vol,
    S_Y = sum_u g_u log2 V_u,  G_Y = sum_u g_u,  V_Y = sum_u V_u,

(the first term is Y's own, the second its children's, which hang under Y). Merging A and B
gives V, S, G additive and g = g_A + g_B - 2 w_AB, so each merge's change of H is O(1), and a
merge never changes the change of any other pair: a heap with lazy deletion is exact.

Compress (remove an internal node a, its children re-attached to a's parent p) changes H by
((G_a - g_a) / vol) * log2(V_p / V_a) >= 0 (G_a - g_a is twice the weight inside a between
its children), so on its own it never lowers H; it is applied where it leaves H unchanged
(nodes with a single child, delta exactly 0), keeping every community node meaningful.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp


# ---------------------------------------------------------------------------- the tree
@dataclass(frozen=True, eq=False)
class EncodingTree:
    """A rooted tree over ``n_leaves`` graph nodes, as a parent array.

    Nodes ``0 .. n_leaves-1`` are the graph's nodes (leaves); internal nodes follow, each with
    a larger id than all of its children; the root is the last node (``parent[root] == -1``).
    ``history`` lists the accepted operations with their entropy change (see
    :func:`build_encoding_tree`).
    """

    parent: np.ndarray
    n_leaves: int
    entropy: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        parent = np.asarray(self.parent, dtype=np.int64)
        n = parent.shape[0]
        if parent.ndim != 1 or not 1 <= self.n_leaves <= n:
            raise ValueError(f"parent must be 1-D with at least n_leaves={self.n_leaves} entries")
        if parent[-1] != -1 or (parent[:-1] < 0).any():
            raise ValueError("the root must be the last node and the only one with parent -1")
        if (parent[:-1] <= np.arange(n - 1)).any():
            raise ValueError("every node's parent must have a larger id than the node")
        has_child = np.zeros(n, dtype=bool)
        has_child[parent[:-1]] = True
        if has_child[: self.n_leaves].any() or (n > 1 and not has_child[self.n_leaves:].all()):
            raise ValueError("leaves (ids < n_leaves) have no children; internal nodes need some")
        object.__setattr__(self, "parent", parent)

    @property
    def n_nodes(self) -> int:
        return self.parent.shape[0]

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    def depth(self) -> np.ndarray:
        """Distance of every node from the root."""
        d = np.zeros(self.n_nodes, dtype=np.int64)
        for a in range(self.n_nodes - 2, -1, -1):  # parents have larger ids: visit them first
            d[a] = d[self.parent[a]] + 1
        return d

    @property
    def height(self) -> int:
        return int(self.depth()[: self.n_leaves].max()) if self.n_nodes > 1 else 0

    def ancestors(self, up: int = 1) -> np.ndarray:
        """For each leaf, its ancestor ``up`` levels up (stopping at the root)."""
        a = np.arange(self.n_leaves)
        for _ in range(int(up)):
            p = self.parent[a]
            a = np.where(p >= 0, p, a)
        return a

    def communities(self, up: int = 1) -> np.ndarray:
        """Leaf labels 0..c-1: the leaves sharing the ancestor ``up`` levels up share a label."""
        return np.unique(self.ancestors(up), return_inverse=True)[1]

    def leaf_counts(self) -> np.ndarray:
        """Number of leaves under every node."""
        c = np.zeros(self.n_nodes, dtype=np.int64)
        c[: self.n_leaves] = 1
        for a in range(self.n_nodes - 1):
            c[self.parent[a]] += c[a]
        return c


# ------------------------------------------------------------------------ the entropy
def _check_graph(adj: Any) -> sp.csr_matrix:
    if not sp.issparse(adj):
        raise ValueError(f"the graph must be a scipy.sparse matrix, got {type(adj).__name__}")
    a = sp.csr_matrix(adj, dtype=np.float64)
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"the graph's adjacency must be square, got shape {a.shape}")
    if a.nnz and (a.data < 0).any():
        raise ValueError("the graph has negative edge weights; structural entropy needs weights >= 0")
    if not np.isfinite(a.data).all():
        raise ValueError("the graph has NaN or inf edge weights")
    if a.diagonal().any():
        raise ValueError("the graph has self-loops; remove them (the entropy assumes none)")
    if abs(a - a.T).sum() > 1e-9 * max(1.0, a.sum()):
        raise ValueError("the graph's adjacency must be symmetric (undirected)")
    a.eliminate_zeros()
    return a


def node_statistics(adj: sp.spmatrix, tree: EncodingTree) -> tuple[np.ndarray, np.ndarray]:
    """(V, g) of every tree node: the volume (sum of leaf degrees) and the cut weight."""
    a = _check_graph(adj)
    if a.shape[0] != tree.n_leaves:
        raise ValueError(f"graph has {a.shape[0]} nodes but the tree has {tree.n_leaves} leaves")
    deg = np.asarray(a.sum(axis=1)).ravel()
    vol_ = np.zeros(tree.n_nodes)
    vol_[: tree.n_leaves] = deg
    for x in range(tree.n_nodes - 1):
        vol_[tree.parent[x]] += vol_[x]
    # Weight inside a node: each edge's weight goes to the lowest common ancestor of its ends.
    coo = sp.triu(a, k=1).tocoo()
    u, v, w = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    while True:
        diff = u != v
        if not diff.any():
            break
        # Move the end with the smaller id up (ids grow towards the root), until they meet.
        lo = diff & (u < v)
        hi = diff & (v < u)
        u = np.where(lo, tree.parent[u], u)
        v = np.where(hi, tree.parent[v], v)
    inside = np.bincount(u, weights=w, minlength=tree.n_nodes)
    for x in range(tree.n_nodes - 1):
        inside[tree.parent[x]] += inside[x]
    cut = vol_ - 2.0 * inside
    return vol_, np.maximum(cut, 0.0)


def structural_entropy(adj: sp.spmatrix, tree: EncodingTree) -> float:
    """H^T(G) of HINT Eq. 4 (log base 2), in O(edges * height + nodes)."""
    vol_, cut = node_statistics(adj, tree)
    total = vol_[tree.root]
    if total <= 0:
        return 0.0
    par = tree.parent[:-1]
    va, vp, ga = vol_[:-1], vol_[par], cut[:-1]
    keep = ga > 0  # a term with no cut is 0 (also when V_a = 0)
    return float(-(ga[keep] / total * np.log2(va[keep] / vp[keep])).sum())


# --------------------------------------------------------------- greedy agglomeration
def _level_terms(V: float, g: float, S: float, G: float, vol: float) -> float:
    """f(Y) of the module docstring: the entropy terms owned by a community at this level."""
    out = 0.0
    if g > 0:
        out -= g / vol * math.log2(V / vol)
    if G > 0:
        out -= (S - G * math.log2(V)) / vol
    return out


def greedy_merge(
    adj: sp.csr_matrix, V: np.ndarray, g: np.ndarray, vol: float
) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """Greedy best-first merging of adjacent units (one tree level); returns (labels, merges).

    ``adj`` is the symmetric weight matrix between units (no diagonal), ``V`` and ``g`` their
    volumes and cuts, ``vol`` the whole graph's volume. ``labels[u]`` is the community of unit
    ``u`` (0..c-1, numbered by their smallest unit); ``merges`` lists (a, b, delta H) in order,
    where a new community gets the next id after the units (n, n+1, ...).
    """
    n = adj.shape[0]
    V = np.asarray(V, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    # Per community (python lists: the loop below is scalar code): V, g, S, G, f, alive.
    Vc = V.tolist()
    gc = g.tolist()
    Gc = g.tolist()
    Sc = (g * np.log2(np.where(V > 0, V, 1.0))).tolist()
    f = [_level_terms(Vc[u], gc[u], Sc[u], Gc[u], vol) for u in range(n)]
    alive = [True] * n
    parent_of = [-1] * n
    upper = sp.triu(adj, k=1).tocoo()
    edges = list(zip(upper.row.tolist(), upper.col.tolist(), upper.data.tolist()))
    nbrs: list[dict[int, float]] = [dict() for _ in range(n)]
    for a, b, w in edges:
        nbrs[a][b] = w
        nbrs[b][a] = w

    def delta(a: int, b: int, w: float) -> float:
        """Change of H if communities a and b (joined by weight w) merge."""
        merged = _level_terms(Vc[a] + Vc[b], max(gc[a] + gc[b] - 2.0 * w, 0.0),
                              Sc[a] + Sc[b], Gc[a] + Gc[b], vol)
        return merged - f[a] - f[b]

    # A pair's delta depends only on the pair, so a pair with delta >= 0 never becomes useful.
    heap = [(d, a, b, w) for a, b, w in edges if (d := delta(a, b, w)) < 0]
    heapq.heapify(heap)
    merges: list[tuple[int, int, float]] = []
    while heap:
        d, a, b, w = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # stale: one side was merged already (live pairs never change their delta)
        c = len(Vc)
        Vc.append(Vc[a] + Vc[b])
        gc.append(max(gc[a] + gc[b] - 2.0 * w, 0.0))
        Sc.append(Sc[a] + Sc[b])
        Gc.append(Gc[a] + Gc[b])
        f.append(_level_terms(Vc[c], gc[c], Sc[c], Gc[c], vol))
        alive[a] = alive[b] = False
        alive.append(True)
        parent_of[a] = parent_of[b] = c
        parent_of.append(-1)
        merges.append((a, b, d))
        # Neighbours of c: the union of a's and b's (weights added), small into large.
        na, nb = nbrs[a], nbrs[b]
        if len(na) < len(nb):
            na, nb = nb, na
        for dead in (a, b):
            na.pop(dead, None)
            nb.pop(dead, None)
        for x, wx in nb.items():
            na[x] = na.get(x, 0.0) + wx
        nbrs[a] = nbrs[b] = {}
        nbrs.append(na)
        for x, wx in na.items():
            nx = nbrs[x]
            nx.pop(a, None)
            nx.pop(b, None)
            nx[c] = wx
            dx = delta(x, c, wx)
            if dx < 0:
                heapq.heappush(heap, (dx, x, c, wx))
    parent_of = np.asarray(parent_of, dtype=np.int64)
    # Labels: follow each unit up to its live community.
    top = np.arange(n)
    while True:
        p = parent_of[top]
        moved = p >= 0
        if not moved.any():
            break
        top = np.where(moved, p, top)
    labels = np.unique(top, return_inverse=True)[1]
    # Number communities by their smallest unit (deterministic, independent of merge ids).
    first = np.full(labels.max() + 1, n, dtype=np.int64)
    np.minimum.at(first, labels, np.arange(n))
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    return rank[labels], merges


# -------------------------------------------------------------------------- the builder
def agglomerate(adj: sp.spmatrix, levels: int) -> list[tuple[np.ndarray, list[tuple[int, int, float]]]]:
    """Greedy merging ``levels`` times, bottom-up: [(labels, merges)] for each level.

    Level 1's units are the graph's nodes; level l+1's units are level l's communities (ids =
    its labels), on the community graph M^T A M without its diagonal, with V and g summed
    from below. Stops early when a level has a single unit left.
    """
    a = _check_graph(adj)
    deg = np.asarray(a.sum(axis=1)).ravel()
    vol = float(deg.sum())
    out: list[tuple[np.ndarray, list[tuple[int, int, float]]]] = []
    unit_adj, V, g = a, deg, deg  # a leaf's cut is its degree
    for _ in range(int(levels)):
        if vol <= 0 or unit_adj.shape[0] <= 1:
            break
        labels, merges = greedy_merge(unit_adj, V, g, vol)
        out.append((labels, merges))
        c = int(labels.max()) + 1
        m = sp.csr_matrix((np.ones(len(labels)), (np.arange(len(labels)), labels)), shape=(len(labels), c))
        agg = (m.T @ unit_adj @ m).tocoo()
        off = agg.row != agg.col
        unit_adj = sp.csr_matrix((agg.data[off], (agg.row[off], agg.col[off])), shape=(c, c))
        V = np.bincount(labels, weights=V, minlength=c)
        g = np.asarray(unit_adj.sum(axis=1)).ravel()
    return out


def build_encoding_tree(adj: sp.spmatrix, height: int = 2, *, compress: bool = True) -> EncodingTree:
    """An encoding tree of height <= ``height`` (2 or more) minimising H greedily.

    Level 1 merges the graph's nodes into communities; each further level merges the
    communities of the level below on their community graph (HINT Sec. 4.2, "Merge"); the
    root sits above the top level. Then nodes with a single child are compressed away
    ("Compress"; their delta is exactly 0). ``history`` holds one entry per accepted
    operation: ``{"op": "merge", "level", "a", "b", "delta"}`` (ids as in :func:`greedy_merge`)
    or ``{"op": "compress", "node", "delta": 0.0}``; the deltas sum to ``entropy`` minus the
    entropy of the flat tree (root -> leaves).
    """
    if int(height) != height or height < 2:
        raise ValueError(f"height must be an integer >= 2, got {height!r}")
    a = _check_graph(adj)
    n = a.shape[0]
    if n == 0:
        raise ValueError("the graph has no nodes")
    history: list[dict[str, Any]] = []
    parent = np.full(n, -1, dtype=np.int64)  # grows as levels are added
    units = np.arange(n)  # tree ids of this level's units
    for level, (labels, merges) in enumerate(agglomerate(a, height - 1), start=1):
        history += [{"op": "merge", "level": level, "a": int(x), "b": int(y), "delta": float(d)}
                    for x, y, d in merges]
        c = int(labels.max()) + 1
        base = parent.shape[0]
        parent = np.concatenate([parent, np.full(c, -1, dtype=np.int64)])
        parent[units] = base + labels
        units = base + np.arange(c)
    root = parent.shape[0]
    parent = np.concatenate([parent, [-1]])
    parent[units] = root
    if compress:
        parent, dropped = _compress_single_children(parent, n)
        history += [{"op": "compress", "node": int(x), "delta": 0.0} for x in dropped]
    tree = EncodingTree(parent=parent, n_leaves=n, history=history)
    object.__setattr__(tree, "entropy", structural_entropy(a, tree))
    return tree


def _compress_single_children(parent: np.ndarray, n_leaves: int) -> tuple[np.ndarray, list[int]]:
    """Remove internal non-root nodes with exactly one child (re-attach it to the grandparent)."""
    size = parent.shape[0]
    counts = np.bincount(parent[:-1], minlength=size)
    drop = np.zeros(size, dtype=bool)
    drop[n_leaves:-1] = counts[n_leaves:-1] == 1
    if not drop.any():
        return parent, []
    # Each node's new parent: its first ancestor that is kept.
    new_parent = parent.copy()
    for x in range(size - 2, -1, -1):
        p = new_parent[x]
        while p >= 0 and drop[p]:
            p = new_parent[p]
        new_parent[x] = p
    keep = ~drop
    remap = np.full(size, -1, dtype=np.int64)
    remap[keep] = np.arange(keep.sum())
    out = new_parent[keep]
    out = np.where(out >= 0, remap[np.maximum(out, 0)], -1)
    return out, np.flatnonzero(drop).tolist()
