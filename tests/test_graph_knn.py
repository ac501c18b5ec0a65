"""Exact cosine kNN in blocks and HINT's cross-modal graph, against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from cmhash.graph.knn import cosine_knn, cross_modal_graph


def brute_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full similarity matrix; order: similarity desc, index asc; never itself."""
    n = len(x)
    idx = np.zeros((n, k), dtype=int)
    sim = np.zeros((n, k))
    for i in range(n):
        s = []
        for j in range(n):
            if j != i:
                c = float(x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j])))
                s.append((-c, j))
        s.sort()
        idx[i] = [j for _, j in s[:k]]
        sim[i] = [-c for c, _ in s[:k]]
    return idx, sim


@pytest.mark.parametrize("block_entries", [1, 37, 10**9])
def test_cosine_knn_matches_brute_force_with_ties(block_entries):
    rng = np.random.default_rng(0)
    # small integer features: many exactly tied similarities
    x = rng.integers(0, 3, size=(60, 3)).astype(float)
    x[:, 0] += 1  # no zero rows
    idx, sim = cosine_knn(x, 4, max_block_entries=block_entries)
    ref_idx, ref_sim = brute_knn(x, 4)
    np.testing.assert_allclose(sim, ref_sim, atol=1e-12)
    assert np.array_equal(idx, ref_idx)  # tied similarities ordered by index
    rng2 = np.random.default_rng(1)
    y = rng2.standard_normal((50, 7))
    i2, s2 = cosine_knn(y, 3, max_block_entries=block_entries)
    r2, rs2 = brute_knn(y, 3)
    assert np.array_equal(i2, r2)
    np.testing.assert_allclose(s2, rs2, atol=1e-12)


def test_cosine_knn_exact_tie_order_is_by_index():
    x = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    idx, sim = cosine_knn(x, 3)
    assert idx[0].tolist() == [1, 2, 3]
    assert idx[4].tolist() == [0, 1, 2]
    assert idx[5].tolist() == [0, 1, 2] and np.allclose(sim[5], 0.0)


def test_cosine_knn_refuses_bad_input():
    with pytest.raises(ValueError, match="k = 5"):
        cosine_knn(np.ones((5, 2)), 5)
    with pytest.raises(ValueError, match="positive integer"):
        cosine_knn(np.ones((5, 2)), 0)
    with pytest.raises(ValueError, match="NaN"):
        cosine_knn(np.array([[1.0, np.nan], [1.0, 2.0], [0.0, 1.0]]), 1)


@pytest.mark.parametrize("weighted", [False, True])
def test_cross_modal_graph_structure(weighted):
    rng = np.random.default_rng(2)
    n, k = 40, 3
    image, text = rng.standard_normal((n, 6)), rng.random((n, 5))
    a = cross_modal_graph(image, text, k=k, weighted=weighted, max_block_entries=100)
    assert a.shape == (2 * n, 2 * n)
    assert abs(a - a.T).sum() == 0 and a.diagonal().sum() == 0
    dense = a.toarray()
    expected = np.zeros((2 * n, 2 * n))
    for i in range(n):
        expected[i, n + i] = expected[n + i, i] = 1.0
    for off, feats in ((0, image), (n, text)):
        nb, s = brute_knn(feats, k)
        for i in range(n):
            for j, c in zip(nb[i], s[i]):
                wgt = max(c, 1e-6) if weighted else 1.0
                expected[off + i, off + j] = expected[off + j, off + i] = wgt
    np.testing.assert_allclose(dense, expected, atol=1e-12)
    # no edge crosses modalities except the pairs
    assert np.count_nonzero(dense[:n, n:]) == n


def test_cross_modal_graph_k0_is_the_pair_graph():
    a = cross_modal_graph(np.eye(4), np.eye(4), k=0)
    assert a.nnz == 8 and a[0, 4] == 1 and a[3, 7] == 1
    b = cross_modal_graph(np.eye(4), np.eye(4), k=0, pair_weight=2.5)
    assert b[0, 4] == 2.5 and b[7, 3] == 2.5
    with pytest.raises(ValueError, match="pair_weight"):
        cross_modal_graph(np.eye(4), np.eye(4), pair_weight=0)


def test_cross_modal_graph_refuses_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        cross_modal_graph(np.ones((4, 2)), np.ones((5, 2)))
