"""The two computations every metric is built from, with a numpy and a numba backend.

* :func:`iter_rank_stats` — per query, over the stable Hamming ranking (distance ascending, ties by
  database index): R (relevant items), R_k (relevant in the top k), AP@k, the hit count at each
  N of a grid, and the interpolated precision at each level of a recall grid.
* :func:`distance_histograms` — per query, the number of items and of relevant items at each
  distance 0..L (enough for lookup metrics and tie-aware AP).

Both backends return bit-identical numbers: AP terms are added in fixed point (exact, see
:func:`ap_scale`); everything else is integer counts or exact maxima. numpy alone is always
correct; numba (``pip install cmhash[fast]``) makes large problems fast. Queries are processed in
fixed chunks of :data:`CHUNK` so that any reduction over queries done by a caller sees the same
blocks whatever the backend or thread count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cmhash.codes import _words, iter_hamming_blocks
from cmhash.metrics.relevance import Retrieval

__all__ = ["BACKENDS", "CHUNK", "RankStats", "ap_scale", "numba_available", "numba_word_layout",
           "resolve_backend", "iter_rank_stats", "distance_histograms"]

BACKENDS = ("auto", "numpy", "numba")
CHUNK = 512  # queries per chunk handed to a backend (and per reduction block)
_NUMPY_BLOCK = 32  # queries per numpy sort block (memory: ~ 20 bytes x block x n_db)
_AUTO_NUMBA_MIN_WORK = 20_000_000  # n_query x n_db from which "auto" prefers numba
_PACKED_HISTOGRAM_MAX_DB = 2**32 - 1  # both counts of a distance in one int64 word up to here


def numba_available() -> bool:
    """True when the numba kernels import (the optional ``fast`` extra is installed)."""
    try:
        from cmhash.metrics import _numba  # noqa: F401
    except ImportError:
        return False
    return True


def numba_word_layout(nbits: int, n_db: int) -> tuple[int, int] | None:
    """Bits of the distance field and of each count field of the numba kernel's bucket words, or
    None when distances 0..``nbits`` and counts up to ``n_db`` do not fit in 63 bits (codes of
    <= 127 bits: up to 2^28 - 1 items; 65,535 bits: 2^23 - 1)."""
    dist_bits = max(1, int(nbits).bit_length())
    count_bits = max(1, int(n_db).bit_length())
    return (dist_bits, count_bits) if dist_bits + 2 * count_bits <= 63 else None


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


def ap_scale(n_db: int) -> float:
    """Fixed-point unit of the AP sums: each term h/rank is rounded to a multiple of 1/scale and the
    terms are added as int64, exactly, so AP does not depend on summation order, block size,
    thread count or backend. scale = 2^(62 - bits(n_db)) keeps sums of up to n_db terms <= 1 in
    int64; the rounding moves an AP by at most 1/(2 scale) (2.8e-14 for 190,000 items)."""
    return float(2.0 ** (62 - int(n_db).bit_length()))


def _first_hit_reaching(recall_grid: np.ndarray, r_all: np.ndarray) -> np.ndarray:
    """(rows x levels) smallest h in 1..R with h/R >= rho (R if none): the numba kernel's scan."""
    r = r_all[:, None].astype(np.float64)
    h = np.clip(np.ceil(recall_grid[None, :] * r), 1, r).astype(np.int64)
    while True:  # float rounding can put the ceiling one off either way; h/R is monotone in h
        down = (h > 1) & ((h - 1) / r >= recall_grid)
        up = (h < r) & (h / r < recall_grid)
        if not (down.any() or up.any()):
            return h
        h = h - down + up


def _numpy_rank_block(dist, rel, k, scale, n_grid, recall_grid) -> RankStats:
    """Rank statistics of a block of queries from one sort of unique keys (distance, index, relevance).

    The key orders items exactly as the stable ranking (index breaks ties; relevance is the lowest
    bit and never decides), so numpy's fast unstable sort serves, and the sorted positions of the
    relevant items are their ranks. Everything after the sort touches relevant items only.
    """
    b, n = dist.shape
    idx_bits = max(1, (n - 1).bit_length())
    key_dtype = np.uint32 if int(dist.max(initial=0)).bit_length() + idx_bits + 1 <= 32 else np.uint64
    key = dist.astype(key_dtype) << key_dtype(idx_bits + 1)
    key |= np.arange(n, dtype=key_dtype) << key_dtype(1)
    key |= rel
    key.sort(axis=1)
    flat = np.flatnonzero((key & key_dtype(1)).astype(bool))  # relevant, rank order, row by row
    del key
    starts = np.searchsorted(flat, np.arange(b + 1) * n)
    r_all = np.diff(starts)
    rows = np.repeat(np.arange(b), r_all)
    rank = flat - rows * n + 1  # 1-based stable rank
    hit = np.arange(1, flat.size + 1) - starts[rows]  # relevant items up to and including it
    del flat
    # rank order within each row makes (row, rank) ascending over the block: counts by searchsorted
    order_key = rows * (n + 1) + rank
    ends_k = np.searchsorted(order_key, np.arange(b) * (n + 1) + k, side="right")
    r_k = ends_k - starts[:-1]
    ap = np.zeros(b)
    if scale > 0:
        terms = hit / rank
        terms *= scale
        np.rint(terms, out=terms)
        csum = np.zeros(terms.size + 1, np.int64)
        np.cumsum(terms.astype(np.int64), out=csum[1:])  # int64: exact
        s = csum[ends_k] - csum[starts[:-1]]
        np.divide(s / scale, r_k, out=ap, where=r_k > 0)
    probe = np.arange(b)[:, None] * (n + 1) + n_grid[None, :]
    hits = np.searchsorted(order_key, probe, side="right") - starts[:-1, None]
    pr = np.full((b, recall_grid.size), np.nan)
    has = np.flatnonzero(r_all > 0)
    if recall_grid.size and has.size:
        precision = np.append(hit / rank, 0.0)  # sentinel so a segment may end at the last item
        first = starts[has, None] + _first_hit_reaching(recall_grid, r_all[has]) - 1
        for g in range(recall_grid.size):  # max over hits >= h_min: segments [first, row end)
            bounds = np.stack([first[:, g], starts[has + 1]], axis=1).ravel()
            pr[has, g] = np.maximum.reduceat(precision, bounds)[::2]
    return RankStats(r_all.astype(np.int64), r_k.astype(np.int64), ap, hits.astype(np.int64), pr)


def _numpy_rank_chunk(ret: Retrieval, sl: slice, k, scale, n_grid, recall_grid) -> RankStats:
    parts = []
    for bsl, dist in iter_hamming_blocks(ret.query[sl], ret.database, block=_NUMPY_BLOCK):
        rel = ret.relevance(slice(sl.start + bsl.start, sl.start + bsl.stop))
        parts.append(_numpy_rank_block(dist, rel, k, scale, n_grid, recall_grid))
    return RankStats(*(np.concatenate([getattr(p, f) for p in parts])
                       for f in ("relevant", "relevant_at_k", "ap", "hits", "interp_precision")))


def _numba_rank_chunk(ret: Retrieval, sl: slice, k, scale, n_grid, recall_grid) -> RankStats:
    from cmhash.metrics import _numba

    qw = np.ascontiguousarray(_words(ret.query[sl]))
    qm = np.ascontiguousarray(ret.query_masks[sl])
    b = qw.shape[0]
    st = RankStats(np.empty(b, np.int64), np.empty(b, np.int64), np.zeros(b),
                   np.empty((b, n_grid.size), np.int64), np.empty((b, recall_grid.size)))
    dist_bits, count_bits = numba_word_layout(ret.nbits, ret.n_db)
    _numba.rank_kernel(qw, _db_words(ret), qm, ret.db_masks, ret.nbits, dist_bits, count_bits, k,
                       scale, n_grid, recall_grid, st.relevant, st.relevant_at_k, st.ap, st.hits,
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
    chunk_fn = _numpy_rank_chunk
    if resolve_backend(backend, ret.n_query * ret.n_db) == "numba":
        if numba_word_layout(ret.nbits, ret.n_db) is not None:
            chunk_fn = _numba_rank_chunk
        elif backend == "numba":
            raise ValueError(f"backend='numba': {ret.n_db} database items with {ret.nbits}-bit "
                             "codes exceed the kernel's 63-bit bucket words; use backend='numpy'")
    for start in range(0, ret.n_query, CHUNK):
        sl = slice(start, min(start + CHUNK, ret.n_query))
        yield sl, chunk_fn(ret, sl, k, ap_scale(ret.n_db) if want_ap else 0.0, n_grid, recall_grid)


def distance_histograms(ret: Retrieval, *, backend: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(all, relevant): int64 (n_query x (L+1)) counts of database items at each distance."""
    nb = ret.nbits + 1
    h_all = np.zeros((ret.n_query, nb), np.int64)
    h_rel = np.zeros((ret.n_query, nb), np.int64)
    if resolve_backend(backend, ret.n_query * ret.n_db) == "numba":
        from cmhash.metrics import _numba

        qw = np.ascontiguousarray(_words(ret.query))
        _numba.histogram_kernel(qw, _db_words(ret), np.ascontiguousarray(ret.query_masks),
                                ret.db_masks, ret.n_db <= _PACKED_HISTOGRAM_MAX_DB, h_all, h_rel)
        return h_all, h_rel
    for sl, dist in iter_hamming_blocks(ret.query, ret.database, block=64):
        rel = ret.relevance(sl)
        idx = dist + (np.arange(dist.shape[0], dtype=np.int64) * nb)[:, None]
        size = dist.shape[0] * nb
        h_all[sl] = np.bincount(idx.ravel(), minlength=size).reshape(-1, nb)
        h_rel[sl] = np.bincount(idx[rel], minlength=size).reshape(-1, nb)
    return h_all, h_rel
