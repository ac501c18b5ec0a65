"""The two computations every metric is built from, with a numpy and a numba backend.

* :func:`iter_rank_stats` — per query, over the stable Hamming ranking (distance ascending, ties by
  database index): R (relevant items), R_k (relevant in the top k), AP@k, the hit count at each
  N of a grid, and the interpolated precision at each level of a recall grid.
* :func:`distance_histograms` — per query, the number of items and of relevant items at each
  distance 0..L (enough for lookup metrics and tie-aware AP).

Both backends return bit-identical numbers: AP is summed in rank order, one relevant item at a
time, in both; everything else is integer counts or exact maxima. numpy alone is always
correct; numba (``pip install cmhash[fast]``) makes large problems fast. Queries are processed in
fixed chunks of :data:`CHUNK` so that any reduction over queries done by a caller sees the same
blocks whatever the backend or thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cmhash.codes import _words, iter_hamming_blocks
from cmhash.metrics.relevance import Retrieval, relevance_matrix

__all__ = ["BACKENDS", "CHUNK", "RankStats", "numba_available", "resolve_backend",
           "iter_rank_stats", "distance_histograms"]

BACKENDS = ("auto", "numpy", "numba")
CHUNK = 512  # queries per chunk handed to a backend (and per reduction block)
_NUMPY_BLOCK = 16  # queries per numpy sort block (memory: ~ 40 bytes x block x n_db)
_AUTO_NUMBA_MIN_WORK = 20_000_000  # n_query x n_db from which "auto" prefers numba


def numba_available() -> bool:
    """True when the numba kernels import (the optional ``fast`` extra is installed)."""
    try:
        from cmhash.metrics import _numba  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str, work: int = 0) -> str:
    """``"numpy"`` or ``"numba"``; ``"auto"`` picks numba when installed and n_query x n_db is large
    (below that, JIT start-up costs more than it saves)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "numba" if work >= _AUTO_NUMBA_MIN_WORK and numba_available() else "numpy"
    if backend == "numba" and not numba_available():
        raise ValueError("backend='numba' needs numba: pip install 'cmhash[fast]'")
    return backend


@dataclass
class RankStats:
    """Per-query rank statistics for one chunk of queries (see :func:`iter_rank_stats`)."""

    relevant: np.ndarray  # R: relevant items in the database (int64)
    relevant_at_k: np.ndarray  # R_k: relevant items in the top k (int64)
    ap: np.ndarray  # AP@k, 0 where R_k = 0 (float64; zeros if not requested)
    hits: np.ndarray  # (chunk x len(n_grid)) relevant items in the top N (int64)
    interp_precision: np.ndarray  # (chunk x len(recall_grid)); NaN where R = 0


def _numpy_rank_block(dist, rel, k, want_ap, n_grid, recall_grid) -> RankStats:
    b, n = dist.shape
    order = np.argsort(dist, axis=1, kind="stable")  # radix sort on uint16: O(n) per row
    rel_s = np.take_along_axis(rel, order, axis=1)
    del order
    hits = np.cumsum(rel_s, axis=1, dtype=np.int64)
    r_all, r_k = hits[:, -1].copy(), hits[:, k - 1].copy()
    ap = np.zeros(b)
    if want_ap:
        contrib = np.where(rel_s[:, :k], hits[:, :k] / np.arange(1, k + 1), 0.0)
        s = np.cumsum(contrib, axis=1)[:, -1]  # sequential: the same sum, in rank order, as numba
        np.divide(s, r_k, out=ap, where=r_k > 0)
    out_hits = hits[:, n_grid - 1]
    pr = np.full((b, recall_grid.size), np.nan)
    if recall_grid.size:
        best = np.maximum.accumulate((hits / np.arange(1, n + 1))[:, ::-1], axis=1)[:, ::-1]
        has = r_all > 0
        recall = hits[has] / r_all[has, None]
        rows = np.arange(recall.shape[0])
        for g, rho in enumerate(recall_grid):
            first = np.argmax(recall >= rho, axis=1)
            pr[has, g] = best[has][rows, first]
    return RankStats(r_all, r_k, ap, out_hits, pr)


def _numpy_rank_chunk(ret: Retrieval, sl: slice, k, want_ap, n_grid, recall_grid) -> RankStats:
    parts = []
    sub = ret.query[sl]
    for bsl, dist in iter_hamming_blocks(sub, ret.database, block=_NUMPY_BLOCK):
        rel = relevance_matrix(ret.query_masks[sl][bsl], ret.db_masks)
        parts.append(_numpy_rank_block(dist, rel, k, want_ap, n_grid, recall_grid))
    return RankStats(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("relevant", "relevant_at_k", "ap", "hits", "interp_precision")))


def _numba_rank_chunk(ret: Retrieval, sl: slice, k, want_ap, n_grid, recall_grid) -> RankStats:
    from cmhash.metrics import _numba

    qw = np.ascontiguousarray(_words(ret.query[sl]))
    qm = np.ascontiguousarray(ret.query_masks[sl])
    b = qw.shape[0]
    st = RankStats(np.empty(b, np.int64), np.empty(b, np.int64), np.zeros(b),
                   np.empty((b, n_grid.size), np.int64), np.empty((b, recall_grid.size)))
    _numba.rank_kernel(qw, _db_words(ret), qm, ret.db_masks, ret.nbits, k, want_ap, n_grid,
                       recall_grid, st.relevant, st.relevant_at_k, st.ap, st.hits,
                       st.interp_precision)
    return st


def _db_words(ret: Retrieval) -> np.ndarray:
    return np.ascontiguousarray(_words(ret.database))


def iter_rank_stats(ret: Retrieval, *, k: int | None = None, want_ap: bool = True,
                    n_grid: np.ndarray | None = None, recall_grid: np.ndarray | None = None,
                    backend: str = "auto") -> Iterator[tuple[slice, RankStats]]:
    """Yield (query slice, :class:`RankStats`) for chunks of :data:`CHUNK` queries.

    ``k``: top-k cut for R_k and AP@k (``None``: all). ``n_grid``: ascending N values in 1..n_db.
    ``recall_grid``: ascending levels in [0, 1]; interpolated precision at level rho is the
    highest precision at any rank whose recall is >= rho.
    """
    k = ret.n_db if k is None else int(k)
    n_grid = np.zeros(0, np.int64) if n_grid is None else np.ascontiguousarray(n_grid, np.int64)
    recall_grid = (np.zeros(0) if recall_grid is None
                   else np.ascontiguousarray(recall_grid, np.float64))
    chunk_fn = (_numba_rank_chunk if resolve_backend(backend, ret.n_query * ret.n_db) == "numba"
                else _numpy_rank_chunk)
    for start in range(0, ret.n_query, CHUNK):
        sl = slice(start, min(start + CHUNK, ret.n_query))
        yield sl, chunk_fn(ret, sl, k, bool(want_ap), n_grid, recall_grid)


def distance_histograms(ret: Retrieval, *, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(all, relevant): int64 (n_query x (L+1)) counts of database items at each distance."""
    nb = ret.nbits + 1
    h_all = np.zeros((ret.n_query, nb), np.int64)
    h_rel = np.zeros((ret.n_query, nb), np.int64)
    if resolve_backend(backend, ret.n_query * ret.n_db) == "numba":
        from cmhash.metrics import _numba

        qw = np.ascontiguousarray(_words(ret.query))
        _numba.histogram_kernel(qw, _db_words(ret), np.ascontiguousarray(ret.query_masks),
                                ret.db_masks, h_all, h_rel)
        return h_all, h_rel
    for sl, dist in iter_hamming_blocks(ret.query, ret.database, block=64):
        rel = relevance_matrix(ret.query_masks[sl], ret.db_masks)
        idx = dist + (np.arange(dist.shape[0], dtype=np.int64) * nb)[:, None]
        size = dist.shape[0] * nb
        h_all[sl] = np.bincount(idx.ravel(), minlength=size).reshape(-1, nb)
        h_rel[sl] = np.bincount(idx[rel], minlength=size).reshape(-1, nb)
    return h_all, h_rel
