"""Structural entropy and the greedy encoding tree, against a plain evaluation of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from cmhash.graph.encoding_tree import (
    EncodingTree,
    agglomerate,
    build_encoding_tree,
    structural_entropy,
)


# ------------------------------------------------------------------ brute-force references
def leaves_under(parent: np.ndarray, n_leaves: int, node: int) -> set[int]:
    out = set()
    for leaf in range(n_leaves):
        x = leaf
        while x != -1:
            if x == node:
                out.add(leaf)
                break
            x = parent[x]
    return out


def direct_entropy(w: np.ndarray, parent: np.ndarray, n_leaves: int) -> float:
    """H = - sum_{a != root} (g_a / vol) log2(V_a / V_parent(a)), written out plainly."""
    deg = w.sum(axis=1)
    vol = deg.sum()
    total = 0.0
    for a in range(len(parent)):
        if parent[a] == -1:
            continue
        inside = leaves_under(parent, n_leaves, a)
        outside = [j for j in range(n_leaves) if j not in inside]
        v_a = sum(deg[i] for i in inside)
        v_p = sum(deg[i] for i in leaves_under(parent, n_leaves, parent[a]))
        g_a = sum(w[i, j] for i in inside for j in outside)
        if g_a > 0:
            total -= g_a / vol * math.log2(v_a / v_p)
    return total


def partition_tree(groups: list[set[int]], n: int) -> np.ndarray:
    """Parent array of root -> one node per group -> its leaves."""
    parent = np.full(n + len(groups) + 1, n + len(groups), dtype=np.int64)
    for k, members in enumerate(groups):
        for v in members:
            parent[v] = n + k
    parent[-1] = -1
    return parent


def random_graph(n: int, p: float, rng: np.random.Generator, weighted: bool) -> np.ndarray:
    w = np.triu((rng.random((n, n)) < p) * (rng.random((n, n)) + 0.1 if weighted else 1.0), 1)
    w = w + w.T
    # a ring keeps every node connected (degrees > 0)
    for i in range(n):
        j = (i + 1) % n
        w[i, j] = w[j, i] = max(w[i, j], 1.0)
    return w


def random_tree(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random tree with internal ids above their children, built by repeated grouping."""
    parent: list[int] = [-1] * n
    level = list(range(n))
    while len(level) > 1:
        rng.shuffle(level)
        nxt = []
        i = 0
        while i < len(level):
            size = int(rng.integers(1, 4))
            group = level[i : i + size]
            new = len(parent)
            parent.append(-1)
            for x in group:
                parent[x] = new
            nxt.append(new)
            i += size
        level = nxt
    return np.asarray(parent, dtype=np.int64)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index, from the contingency table (Hubert & Arabie 1985)."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    index = comb(table).sum()
    ra, rb = comb(table.sum(axis=1)).sum(), comb(table.sum(axis=0)).sum()
    expected = ra * rb / comb(len(a))
    return float((index - expected) / ((ra + rb) / 2 - expected))


def sbm(sizes: list[int], p: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    block = np.repeat(np.arange(len(sizes)), sizes)
    prob = p[block][:, block]
    n = len(block)
    w = np.triu(rng.random((n, n)) < prob, 1).astype(float)
    return w + w.T, block


# ------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("weighted", [False, True])
def test_entropy_matches_direct_formula_on_random_trees(weighted):
    rng = np.random.default_rng(1)
    for trial in range(12):
        n = int(rng.integers(2, 14))
        w = random_graph(n, 0.3, rng, weighted)
        parent = random_tree(n, rng)
        tree = EncodingTree(parent=parent, n_leaves=n)
        assert structural_entropy(sp.csr_matrix(w), tree) == pytest.approx(
            direct_entropy(w, parent, n), rel=1e-12, abs=1e-12
        )


def test_flat_tree_entropy_is_one_dimensional_entropy():
    rng = np.random.default_rng(2)
    w = random_graph(9, 0.4, rng, weighted=True)
    d = w.sum(axis=1)
    p = d / d.sum()
    parent = np.array([9] * 9 + [-1])
    h1 = -(p * np.log2(p)).sum()  # HINT Eq. 3 (base 2)
    assert structural_entropy(sp.csr_matrix(w), EncodingTree(parent, 9)) == pytest.approx(h1)


@pytest.mark.parametrize("weighted", [False, True])
def test_every_merge_lowers_entropy_by_its_recorded_delta(weighted):
    rng = np.random.default_rng(3)
    w = random_graph(24, 0.15, rng, weighted)
    n = w.shape[0]
    levels = agglomerate(sp.csr_matrix(w), 2)
    assert len(levels) == 2 and len(levels[0][1]) > 0 and len(levels[1][1]) > 0
    # Level 1: replay each merge on the partition root -> communities -> leaves.
    groups = {v: {v} for v in range(n)}
    h = direct_entropy(w, partition_tree(list(groups.values()), n), n)
    for step, (a, b, delta) in enumerate(levels[0][1]):
        groups[n + step] = groups.pop(a) | groups.pop(b)  # new communities get ids n, n+1, ...
        h_new = direct_entropy(w, partition_tree(list(groups.values()), n), n)
        assert delta < 0
        assert h_new - h == pytest.approx(delta, abs=1e-10)
        h = h_new
    # The level's labels are the replayed partition.
    labels1 = levels[0][0]
    for members in groups.values():
        assert len({labels1[v] for v in members}) == 1
    assert len(set(labels1)) == len(groups)
    # Level 2: units are level-1 communities; replay on root -> super -> community -> leaves.
    c1 = int(labels1.max()) + 1
    comm = [set(np.flatnonzero(labels1 == k).tolist()) for k in range(c1)]

    def three_level(supers: list[set[int]]) -> np.ndarray:
        parent = np.full(n + c1 + len(supers) + 1, -1, dtype=np.int64)
        for k, members in enumerate(comm):
            for v in members:
                parent[v] = n + k
        for s, units in enumerate(supers):
            for k in units:
                parent[n + k] = n + c1 + s
            parent[n + c1 + s] = n + c1 + len(supers)
        return parent

    supers = {k: {k} for k in range(c1)}
    h2 = direct_entropy(w, three_level(list(supers.values())), n)
    assert h2 == pytest.approx(h)  # adding singleton super-communities changes nothing
    for step, (a, b, delta) in enumerate(levels[1][1]):
        supers[c1 + step] = supers.pop(a) | supers.pop(b)
        h_new = direct_entropy(w, three_level(list(supers.values())), n)
        assert delta < 0
        assert h_new - h2 == pytest.approx(delta, abs=1e-10)
        h2 = h_new


def test_built_tree_entropy_and_history_are_consistent():
    rng = np.random.default_rng(4)
    w = random_graph(30, 0.12, rng, weighted=True)
    a = sp.csr_matrix(w)
    flat = structural_entropy(a, EncodingTree(np.array([30] * 30 + [-1]), 30))
    for height in (2, 3, 4):
        tree = build_encoding_tree(a, height=height)
        assert tree.entropy == pytest.approx(direct_entropy(w, tree.parent, 30), abs=1e-10)
        assert tree.entropy < flat
        assert tree.height <= height
        assert flat + sum(op["delta"] for op in tree.history) == pytest.approx(tree.entropy, abs=1e-10)
        assert all(op["delta"] < 0 for op in tree.history if op["op"] == "merge")
        # compressing the single-child nodes left the entropy unchanged
        raw = build_encoding_tree(a, height=height, compress=False)
        assert raw.entropy == pytest.approx(tree.entropy, abs=1e-12)
        counts = np.bincount(tree.parent[:-1], minlength=tree.n_nodes)
        assert (counts[tree.n_leaves : -1] >= 2).all()
    deeper = build_encoding_tree(a, height=3).entropy
    assert deeper <= build_encoding_tree(a, height=2).entropy


def test_compress_never_lowers_entropy():
    """The docstring's claim: removing an internal node changes H by (G-g)/vol log2(Vp/Va) >= 0."""
    rng = np.random.default_rng(5)
    for _ in range(10):
        n = int(rng.integers(4, 12))
        w = random_graph(n, 0.35, rng, weighted=True)
        parent = random_tree(n, rng)
        h = direct_entropy(w, parent, n)
        for node in range(n, len(parent) - 1):
            p2 = parent.copy()
            p2[p2 == node] = parent[node]  # children move up to the grandparent
            kept = [x for x in range(len(parent)) if x != node]  # and the node goes away
            remap = {x: i for i, x in enumerate(kept)}
            p3 = np.array([remap[p2[x]] if p2[x] != -1 else -1 for x in kept])
            assert direct_entropy(w, p3, n) >= h - 1e-12


def test_recovers_planted_communities_of_a_stochastic_block_model():
    rng = np.random.default_rng(6)
    k = 5
    p = np.full((k, k), 0.01)
    np.fill_diagonal(p, 0.35)
    w, block = sbm([40] * k, p, rng)
    tree = build_encoding_tree(sp.csr_matrix(w), height=2)
    assert adjusted_rand(tree.communities(1), block) > 0.95


def test_height_three_recovers_both_levels_of_a_hierarchical_block_model():
    rng = np.random.default_rng(7)
    # 2 super-blocks of 3 blocks of 30 nodes each
    blocks = np.repeat(np.arange(6), 30)
    supers = blocks // 3
    p = np.where(blocks[:, None] == blocks[None, :], 0.4,
                 np.where(supers[:, None] == supers[None, :], 0.04, 0.002))
    w = np.triu(rng.random(p.shape) < p, 1).astype(float)
    w = w + w.T
    tree = build_encoding_tree(sp.csr_matrix(w), height=3)
    assert adjusted_rand(tree.communities(1), blocks) > 0.95
    assert adjusted_rand(tree.communities(2), supers) > 0.95


def test_deterministic():
    rng = np.random.default_rng(8)
    w = random_graph(60, 0.08, rng, weighted=False)  # unweighted: many equal deltas (ties)
    a = sp.csr_matrix(w)
    t1, t2 = build_encoding_tree(a, height=3), build_encoding_tree(a.copy(), height=3)
    assert np.array_equal(t1.parent, t2.parent)
    assert t1.history == t2.history


def test_disconnected_graph_keeps_components_apart():
    w = np.zeros((6, 6))
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]:
        w[i, j] = w[j, i] = 1.0
    tree = build_encoding_tree(sp.csr_matrix(w), height=2)
    labels = tree.communities(1)
    assert len(set(labels[:3])) == 1 and len(set(labels[3:])) == 1 and labels[0] != labels[3]
    assert tree.entropy == pytest.approx(direct_entropy(w, tree.parent, 6))


def test_tree_queries():
    parent = np.array([5, 5, 6, 6, 7, 7, 7, -1])  # leaves 0..4; 5 = {0,1}; 6 = {2,3}; root 7
    tree = EncodingTree(parent, 5)
    assert tree.height == 2
    assert tree.ancestors(1).tolist() == [5, 5, 6, 6, 7]
    assert tree.ancestors(5).tolist() == [7] * 5
    assert tree.leaf_counts().tolist() == [1, 1, 1, 1, 1, 2, 2, 5]
    assert tree.communities(1).tolist() == [0, 0, 1, 1, 2]


@pytest.mark.parametrize(
    "matrix, match",
    [
        (sp.csr_matrix(np.array([[0, -1.0], [-1.0, 0]])), "negative"),
        (sp.csr_matrix(np.array([[0, 1.0], [0, 0]])), "symmetric"),
        (sp.csr_matrix(np.array([[1.0, 1.0], [1.0, 0]])), "self-loops"),
        (np.array([[0, 1.0], [1.0, 0]]), "scipy.sparse"),
        (sp.csr_matrix(np.ones((2, 3))), "square"),
    ],
)
def test_bad_graphs_are_refused(matrix, match):
    with pytest.raises(ValueError, match=match):
        build_encoding_tree(matrix)


def test_bad_trees_and_heights_are_refused():
    with pytest.raises(ValueError, match="height"):
        build_encoding_tree(sp.csr_matrix(np.array([[0, 1.0], [1.0, 0]])), height=1)
    with pytest.raises(ValueError, match="larger id"):
        EncodingTree(np.array([2, 3, 1, -1]), 2)
    with pytest.raises(ValueError, match="root"):
        EncodingTree(np.array([2, 2, -1, -1]), 2)
