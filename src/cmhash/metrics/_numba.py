"""numba kernels for the metrics (optional extra ``cmhash[fast]``); same results as the numpy path.

One fused counting pass per query, no sort: Hamming distances are integers 0..L, so the stable
rank of item i (ties by index) is #{d_j < d_i} + #{j < i : d_j = d_i} + 1. One pass over the
database computes each item's distance and relevance and histograms them (all items, relevant
items); the running bucket count at a relevant item is its second term, recorded on the spot.
The exclusive prefix sums of the histograms give the first term and the first hit number of each
bucket; a pass over the relevant items alone then yields, for h = 1..R, the rank of the h-th
relevant item in the stable ranking: everything rank-based follows from it in O(R).
Queries run in parallel (prange); each writes only its own output row, so results do not depend
on the thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cmhash._popcount import popcount as _popcount


@njit(inline="always", nogil=True)
def _distance_relevance(qw, dw, qm, dm, qi, i):
    """Hamming distance of query ``qi`` to item ``i`` (any number of words) and whether they
    share a label (any number of label words): the general path of both kernels below."""
    d = 0
    for w in range(dw.shape[1]):
        d += _popcount(qw[qi, w] ^ dw[i, w])
    r = False
    for w in range(dm.shape[1]):
        r |= (qm[qi, w] & dm[i, w]) != 0
    return d, r


@njit(cache=True, nogil=True)
def _histograms(qw, dw, qm, dm, qi, h_all, h_rel):
    """Add query ``qi``'s items to ``h_all[d]`` and its relevant items to ``h_rel[d]``."""
    n, nw, nl = dw.shape[0], dw.shape[1], dm.shape[1]
    if nw == 1 and nl == 1:
        x = qw[qi, 0]
        m = qm[qi, 0]
        for i in range(n):
            d = _popcount(x ^ dw[i, 0])
            h_all[d] += 1
            h_rel[d] += (m & dm[i, 0]) != 0
        return
    for i in range(n):
        d, r = _distance_relevance(qw, dw, qm, dm, qi, i)
        h_all[d] += 1
        h_rel[d] += r


@njit(cache=True, nogil=True)
def _relevant_ranks(qw, dw, qm, dm, qi, nbits, buf, ranks):
    """Fill ``ranks[h-1]`` = stable rank of the h-th relevant item (h = 1..R); return R.

    One pass over the database builds the histogram of all items; while it does, the running
    count of bucket d is the number of earlier items at distance d, so each relevant item records
    (its distance, that count) in ``buf`` (branch-free append). The relevant items' histogram is
    counted from those records afterwards (R steps; doing it in the pass, one more
    read-modify-write per item, cost ~20%). After the prefix sums, a pass over the R relevant
    items alone places them. ``buf`` and ``ranks`` need n_db slots.
    """
    n, nw, nl = dw.shape[0], dw.shape[1], dm.shape[1]
    h_all = np.zeros(nbits + 1, np.int64)
    h_rel = np.zeros(nbits + 1, np.int64)
    cnt = 0
    if nw == 1 and nl == 1:  # codes of <= 64 bits, <= 64 classes: the hot path
        x = qw[qi, 0]
        m = qm[qi, 0]
        for i in range(n):
            d = _popcount(x ^ dw[i, 0])
            r = (m & dm[i, 0]) != 0
            p = h_all[d]
            buf[cnt] = (p << 16) | d
            cnt += r
            h_all[d] = p + 1
    else:
        for i in range(n):
            d, r = _distance_relevance(qw, dw, qm, dm, qi, i)
            p = h_all[d]
            buf[cnt] = (p << 16) | d
            cnt += r
            h_all[d] = p + 1
    for t in range(cnt):  # the relevant items' histogram, from their records (R steps, not n)
        h_rel[buf[t] & 0xFFFF] += 1
    a = 0
    b = 0
    for d in range(nbits + 1):  # exclusive prefix sums: first rank-1 / first hit-1 of each bucket
        ca = h_all[d]
        cb = h_rel[d]
        h_all[d] = a
        h_rel[d] = b
        a += ca
        b += cb
    for t in range(cnt):  # relevant items in index order: within a bucket, in hit order
        v = buf[t]
        d = v & 0xFFFF
        hit = h_rel[d]
        h_rel[d] = hit + 1
        ranks[hit] = h_all[d] + (v >> 16) + 1
    return cnt


GROUP = 16  # queries per parallel task: scratch buffers are allocated once per task


@njit(cache=True, nogil=True)
def _rank_stats_one(qw, dw, qm, dm, qi, nbits, k, ap_scale, n_grid, recall_grid, buf, ranks, best,
                    out_r, out_rk, out_ap, out_hits, out_pr):
    """All rank statistics of query ``qi`` from the ranks of its relevant items."""
    r_all = _relevant_ranks(qw, dw, qm, dm, qi, nbits, buf, ranks)
    out_r[qi] = r_all
    rk = 0
    s = 0  # fixed point (see kernels.ap_scale): exact, so the order of the sum cannot matter
    while rk < r_all and ranks[rk] <= k:
        if ap_scale > 0:
            s += np.int64(np.rint((rk + 1) / ranks[rk] * ap_scale))
        rk += 1
    out_rk[qi] = rk
    out_ap[qi] = s / ap_scale / rk if rk > 0 and ap_scale > 0 else 0.0
    h = 0
    for g in range(n_grid.shape[0]):
        while h < r_all and ranks[h] <= n_grid[g]:
            h += 1
        out_hits[qi, g] = h
    if recall_grid.shape[0] > 0:
        if r_all == 0:
            for g in range(recall_grid.shape[0]):
                out_pr[qi, g] = np.nan
            return
        m = 0.0
        for j in range(r_all - 1, -1, -1):  # best[j] = max precision at hits >= j+1
            p = (j + 1) / ranks[j]
            if p > m:
                m = p
            best[j] = m
        j = 0
        for g in range(recall_grid.shape[0]):  # grid ascending: first hit with recall >= rho
            while j < r_all - 1 and (j + 1) / r_all < recall_grid[g]:
                j += 1
            out_pr[qi, g] = best[j]


@njit(parallel=True, cache=True, nogil=True)
def rank_kernel(qw, dw, qm, dm, nbits, k, ap_scale, n_grid, recall_grid,
                out_r, out_rk, out_ap, out_hits, out_pr):
    """Per query: R, R_k, AP@k (``ap_scale`` 0: skipped), hits at each N, interpolated precision."""
    nq, n = qw.shape[0], dw.shape[0]
    for task in prange((nq + GROUP - 1) // GROUP):
        buf = np.empty(n, np.int64)
        ranks = np.empty(n, np.int64)
        best = np.empty(n if recall_grid.shape[0] > 0 else 0)
        for qi in range(task * GROUP, min(nq, (task + 1) * GROUP)):
            _rank_stats_one(qw, dw, qm, dm, qi, nbits, k, ap_scale, n_grid, recall_grid, buf,
                            ranks, best, out_r, out_rk, out_ap, out_hits, out_pr)


@njit(parallel=True, cache=True, nogil=True)
def histogram_kernel(qw, dw, qm, dm, out_all, out_rel):
    """Per query: number of items, and of relevant items, at each distance 0..L."""
    for qi in prange(qw.shape[0]):
        _histograms(qw, dw, qm, dm, qi, out_all[qi], out_rel[qi])
