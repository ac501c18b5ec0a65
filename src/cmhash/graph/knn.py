"""Exact cosine k-nearest neighbours in blocks, and HINT's cross-modal relation graph.

HINT Sec. 4.2 ("Enhance"): 2N nodes (N images, then N texts); edges = the N image-text pairs
(G_inter) plus, within each modality, each item's k nearest neighbours by cosine similarity
(G_intra, k = 3). Nothing here forms an N x N matrix: similarities are computed ``block_rows``
query rows at a time, so memory is O(block_rows * N) and the graph is a sparse matrix.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

#: default bound on the number of similarity entries held at once (float64: 128 MiB)
MAX_BLOCK_ENTRIES = 1 << 24


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (items x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    # A zero row has no direction: it gets similarity 0 to everything (not NaN).
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def cosine_knn(
    x: np.ndarray, k: int, *, max_block_entries: int = MAX_BLOCK_ENTRIES, name: str = "x"
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most cosine-similar other rows: (indices, similarities), both (n x k).

    Exact. Neighbours are ordered by similarity descending, ties by index ascending, so the
    result is deterministic; a row is never its own neighbour. Memory: at most
    ``max_block_entries`` similarities at once.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    u = _unit_rows(x, name)
    n = u.shape[0]
    if k > n - 1:
        raise ValueError(f"k = {k} neighbours need at least {k + 1} rows in {name}, got {n}")
    block = max(1, min(n, int(max_block_entries) // max(n, 1)))
    idx = np.empty((n, k), dtype=np.int64)
    sim = np.empty((n, k), dtype=np.float64)
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = u[start:stop] @ u.T  # (rows x n)
        rows = np.arange(stop - start)
        s[rows, np.arange(start, stop)] = -np.inf  # never its own neighbour
        # The k largest per row, then an exact order: similarity desc, index asc.
        part = np.argpartition(s, n - k, axis=1)[:, n - k:]
        ps = s[rows[:, None], part]
        kth = ps.min(axis=1)
        ties = (s >= kth[:, None]).sum(axis=1) > k  # the k-th value is shared beyond the top k
        order = np.lexsort((part, -ps), axis=1)
        idx[start:stop] = np.take_along_axis(part, order, axis=1)
        sim[start:stop] = np.take_along_axis(ps, order, axis=1)
        for r in np.flatnonzero(ties):  # rare: pick the tied candidates by index
            cand = np.flatnonzero(s[r] >= kth[r])
            top = cand[np.lexsort((cand, -s[r, cand]))[:k]]
            idx[start + r] = top
            sim[start + r] = s[r, top]
    return idx, sim


def cross_modal_graph(
    image: np.ndarray,
    text: np.ndarray,
    *,
    k: int = 3,
    weighted: bool = False,
    pair_weight: float = 1.0,
    min_weight: float = 1e-6,
    max_block_entries: int = MAX_BLOCK_ENTRIES,
) -> sp.csr_matrix:
    """HINT's G_cross (Sec. 4.2) as a symmetric sparse (2N x 2N) matrix without self-loops.

    Node ``i`` is image ``i``, node ``N + i`` is text ``i``. Edges: each pair (i, N + i), and
    each item's ``k`` cosine nearest neighbours within its modality (symmetrised: an edge when
    either end lists the other). ``weighted=False``: every edge weighs 1. ``weighted=True``:
    a kNN edge weighs its cosine similarity (clipped below at ``min_weight`` so weights stay
    positive); a pair edge weighs 1 (image and text features live in different spaces, so
    they have no cosine similarity). ``pair_weight`` scales the pair edges (1 = the paper's
    graph; larger values keep pairs in the same community). ``k = 0`` gives the pair graph alone.
    """
    image = np.asarray(image)
    text = np.asarray(text)
    if image.ndim != 2 or text.ndim != 2 or image.shape[0] != text.shape[0]:
        raise ValueError(
            f"image and text must be 2-D with the same number of rows, got {image.shape} and {text.shape}"
        )
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    if not pair_weight > 0:
        raise ValueError(f"pair_weight must be > 0, got {pair_weight!r}")
    if not min_weight > 0:
        raise ValueError(f"min_weight must be > 0, got {min_weight!r}")
    n = image.shape[0]
    rows = [np.arange(n)]
    cols = [np.arange(n) + n]
    vals = [np.full(n, float(pair_weight))]
    if k > 0:
        for offset, (feats, name) in enumerate(((image, "image"), (text, "text"))):
            nb, s = cosine_knn(feats, k, max_block_entries=max_block_entries, name=name)
            rows.append(np.repeat(np.arange(n), k) + offset * n)
            cols.append(nb.reshape(-1) + offset * n)
            vals.append(np.maximum(s.reshape(-1), min_weight) if weighted else np.ones(n * k))
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    a = sp.coo_matrix((v, (r, c)), shape=(2 * n, 2 * n)).tocsr()
    a.sum_duplicates()
    # Symmetrise with max (an edge listed from both ends is one edge, not two).
    a = a.maximum(a.T).tocsr()
    a.sort_indices()
    return a
