"""numba kernels for the metrics (optional extra ``cmhash[fast]``); same results as the numpy path.

One fused counting pass per query, no sort: Hamming distances are integers 0..L, so the stable
rank of item i (ties by index) is #{d_j < d_i} + #{j < i : d_j = d_i} + 1. Pass 1 computes each
item's distance and relevance and histograms them (all items, relevant items); the exclusive
prefix sums of the histograms are the first free rank and first free hit count of each
distance bucket; pass 2, in index order, hands them out. The result is, for h = 1..R, the rank of
the h-th relevant item in the stable ranking: everything rank-based follows from it in O(R).
Queries run in parallel (prange); each writes only its own output row, so results do not depend
on the thread count.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, x):
    """llvm.ctpop on a uint64 (one POPCNT instruction where the CPU has it)."""
    if not isinstance(x, types.Integer):
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, [args[0]])

    return sig, codegen


@njit(cache=True, nogil=True)
def _distances_and_histograms(qw, dw, qm, dm, qi, dist, rel, h_all, h_rel):
    """Distance and relevance of every item to query ``qi``; histograms over distance."""
    n, nw, nl = dw.shape[0], dw.shape[1], dm.shape[1]
    for i in range(n):
        d = 0
        for w in range(nw):
            d += _popcount(qw[qi, w] ^ dw[i, w])
        r = False
        for w in range(nl):
            if (qm[qi, w] & dm[i, w]) != 0:
                r = True
                break
        dist[i] = d
        rel[i] = r
        h_all[d] += 1
        if r:
            h_rel[d] += 1


@njit(cache=True, nogil=True)
def _relevant_ranks(qw, dw, qm, dm, qi, nbits, dist, rel, ranks):
    """Fill ``ranks[h-1]`` = stable rank of the h-th relevant item (h = 1..R); return R."""
    h_all = np.zeros(nbits + 1, np.int64)
    h_rel = np.zeros(nbits + 1, np.int64)
    _distances_and_histograms(qw, dw, qm, dm, qi, dist, rel, h_all, h_rel)
    a = 0
    b = 0
    for d in range(nbits + 1):  # exclusive prefix sums: next free rank-1 / hit-1 per bucket
        ca = h_all[d]
        cb = h_rel[d]
        h_all[d] = a
        h_rel[d] = b
        a += ca
        b += cb
    for i in range(dist.shape[0]):
        d = dist[i]
        if rel[i]:
            ranks[h_rel[d]] = h_all[d] + 1
            h_rel[d] += 1
        h_all[d] += 1
    return b


@njit(parallel=True, cache=True, nogil=True)
def rank_kernel(qw, dw, qm, dm, nbits, k, want_ap, n_grid, recall_grid,
                out_r, out_rk, out_ap, out_hits, out_pr):
    """Per query: R, R_k, AP@k (summed in rank order), hits at each N, interpolated precision."""
    nq, n = qw.shape[0], dw.shape[0]
    for qi in prange(nq):
        dist = np.empty(n, np.uint16)
        rel = np.empty(n, np.bool_)
        ranks = np.empty(n, np.int64)
        r_all = _relevant_ranks(qw, dw, qm, dm, qi, nbits, dist, rel, ranks)
        out_r[qi] = r_all
        rk = 0
        s = 0.0
        while rk < r_all and ranks[rk] <= k:
            if want_ap:
                s += (rk + 1) / ranks[rk]
            rk += 1
        out_rk[qi] = rk
        out_ap[qi] = s / rk if rk > 0 else 0.0
        h = 0
        for g in range(n_grid.shape[0]):
            while h < r_all and ranks[h] <= n_grid[g]:
                h += 1
            out_hits[qi, g] = h
        if recall_grid.shape[0] > 0:
            if r_all == 0:
                for g in range(recall_grid.shape[0]):
                    out_pr[qi, g] = np.nan
            else:
                best = np.empty(r_all)
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
def histogram_kernel(qw, dw, qm, dm, out_all, out_rel):
    """Per query: number of items, and of relevant items, at each distance 0..L."""
    nq, n = qw.shape[0], dw.shape[0]
    for qi in prange(nq):
        dist = np.empty(n, np.uint16)
        rel = np.empty(n, np.bool_)
        h_all = np.zeros(out_all.shape[1], np.int64)
        h_rel = np.zeros(out_all.shape[1], np.int64)
        _distances_and_histograms(qw, dw, qm, dm, qi, dist, rel, h_all, h_rel)
        out_all[qi, :] = h_all
        out_rel[qi, :] = h_rel
