"""numba kernels for the metrics (optional extra ``cmhash[fast]``); same results as the numpy path.

One fused counting pass per query, no sort. Hamming distances are integers 0..L, so in the stable
ranking (ties by index) relevant item i at distance d has

    rank = A[d] + Q_i + I_i + 1        hit number = B[d] + Q_i + 1

with A[d] / B[d] the numbers of all / relevant items at distances < d, and Q_i / I_i the numbers
of relevant / irrelevant items at distance d before i. Each bucket d keeps one int64 *bucket
word* packing (d, relevant seen, irrelevant seen); the pass computes an item's distance and
relevance, adds 1 to the right field of its bucket's word (one load, one add, one store) and, for
a relevant item, keeps a copy of the word as it was (a branch-free append). The copies hold d,
Q_i and I_i, so after the prefix sums over the L + 1 buckets every relevant item's rank and hit
number follow without a second pass over the database, and the AP sum is a loop LLVM vectorises.
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
def _histograms(qw, dw, qm, dm, qi, packed, h_all, h_rel, words):
    """Set ``h_all[d]`` / ``h_rel[d]`` to query ``qi``'s numbers of items / relevant items at each
    distance d. ``packed`` (< 2^32 items): one int64 word per distance counts both (irrelevant in
    the low half, relevant in the high half), so each item costs one load-add-store."""
    n, nw, nl = dw.shape[0], dw.shape[1], dm.shape[1]
    words[:] = 0
    rel_one = np.int64(1) << 32
    if not packed:
        h_all[:] = 0
        h_rel[:] = 0
        for i in range(n):
            d, r = _distance_relevance(qw, dw, qm, dm, qi, i)
            h_all[d] += 1
            h_rel[d] += r
        return
    if nw == 1 and nl == 1:
        x = qw[qi, 0]
        m = qm[qi, 0]
        for i in range(n):
            d = _popcount(x ^ dw[i, 0])
            words[d] += rel_one if (m & dm[i, 0]) != 0 else 1
    else:
        for i in range(n):
            d, r = _distance_relevance(qw, dw, qm, dm, qi, i)
            words[d] += rel_one if r else 1
    for d in range(words.shape[0]):
        rel = words[d] >> 32
        h_rel[d] = rel
        h_all[d] = rel + (words[d] & 0xFFFFFFFF)


@njit(cache=True, nogil=True)
def _count_one_word(x, m, codes, masks, words, buf, rel_one, irr_one):
    """The hot path (codes of <= 64 bits, <= 64 classes; 1-D ``codes`` and ``masks``): per item,
    bump its bucket word by ``rel_one`` or ``irr_one`` and append the old word to ``buf`` if the
    item is relevant (the slot is overwritten otherwise). Returns R."""
    cnt = 0
    for i in range(codes.shape[0]):
        d = _popcount(x ^ codes[i])
        r = (m & masks[i]) != 0
        v = words[d]
        buf[cnt] = v
        cnt += r
        words[d] = v + (rel_one if r else irr_one)
    return cnt


@njit(cache=True, nogil=True)
def _count_any_words(qw, dw, qm, dm, qi, words, buf, rel_one, irr_one):
    """:func:`_count_one_word` for any number of code and label words."""
    cnt = 0
    for i in range(dw.shape[0]):
        d, r = _distance_relevance(qw, dw, qm, dm, qi, i)
        v = words[d]
        buf[cnt] = v
        cnt += r
        words[d] = v + (rel_one if r else irr_one)
    return cnt


@njit(inline="always", nogil=True)
def _rank_and_hit(v, below_all, below_rel, dist_bits, count_bits):
    """The stable rank and hit number of the relevant item whose record (bucket word as it was
    before the item: d, Q_i, I_i) is ``v``, from the exclusive prefix sums of the buckets."""
    d = v & ((1 << dist_bits) - 1)
    q = (v >> dist_bits) & ((1 << count_bits) - 1)
    return below_all[d] + q + (v >> (dist_bits + count_bits)) + 1, below_rel[d] + q + 1


@njit(cache=True, nogil=True, error_model="numpy")
def _ap_terms(recs, below_all, below_rel, dist_bits, count_bits, k, ap_scale):
    """(R_k, fixed-point sum of hit/rank over the relevant items with rank <= k) from the
    records: no stores and no division check (error_model "numpy"; ranks are >= 1), so LLVM
    vectorises the divisions. Each term is rounded exactly as the numpy path rounds it."""
    rk = 0
    s = 0
    for t in range(recs.shape[0]):
        rank, hit = _rank_and_hit(recs[t], below_all, below_rel, dist_bits, count_bits)
        ok = rank <= k
        rk += ok
        term = np.int64(np.rint(hit / rank * ap_scale))
        s += term if ok else 0
    return rk, s


@njit(cache=True, nogil=True)
def _relevant_ranks(qw, dw, qm, dm, qi, nbits, dist_bits, count_bits, k, ap_scale, want_ranks,
                    buf, ranks):
    """(R, R_k, fixed-point AP sum) of query ``qi``; with ``want_ranks``, also ``ranks[h-1]`` =
    stable rank of the h-th relevant item (h = 1..R). ``buf`` and ``ranks`` need n_db slots."""
    n, nw, nl = dw.shape[0], dw.shape[1], dm.shape[1]
    rel_one = np.int64(1) << dist_bits
    irr_one = np.int64(1) << (dist_bits + count_bits)
    words = np.arange(nbits + 1)  # bucket words: distance field = d, both counts 0
    if nw == 1 and nl == 1:
        r_all = _count_one_word(qw[qi, 0], qm[qi, 0], dw.reshape(n), dm.reshape(n), words, buf,
                                rel_one, irr_one)
    else:
        r_all = _count_any_words(qw, dw, qm, dm, qi, words, buf, rel_one, irr_one)
    cmask = (1 << count_bits) - 1
    i_shift = dist_bits + count_bits
    below_all = np.empty(nbits + 1, np.int64)  # exclusive prefix sums over the buckets
    below_rel = np.empty(nbits + 1, np.int64)
    a = 0
    b = 0
    for d in range(nbits + 1):
        below_all[d] = a
        below_rel[d] = b
        q = (words[d] >> dist_bits) & cmask
        a += q + (words[d] >> i_shift)
        b += q
    recs = buf[:r_all]
    rk, s = _ap_terms(recs, below_all, below_rel, dist_bits, count_bits, k, ap_scale)
    if want_ranks:  # hit numbers are a permutation of 1..R: place each rank at its hit
        for t in range(r_all):
            rank, hit = _rank_and_hit(recs[t], below_all, below_rel, dist_bits, count_bits)
            ranks[hit - 1] = rank
    return r_all, rk, s


GROUP = 16  # queries per parallel task: scratch buffers are allocated once per task


@njit(cache=True, nogil=True)
def _rank_stats_one(qw, dw, qm, dm, qi, nbits, dist_bits, count_bits, k, ap_scale, n_grid,
                    recall_grid, buf, ranks, best, out_r, out_rk, out_ap, out_hits, out_pr):
    """All rank statistics of query ``qi`` (the sorted ranks only when a grid needs them)."""
    want_ranks = n_grid.shape[0] > 0 or recall_grid.shape[0] > 0
    r_all, rk, s = _relevant_ranks(qw, dw, qm, dm, qi, nbits, dist_bits, count_bits, k,
                                   ap_scale, want_ranks, buf, ranks)
    out_r[qi] = r_all
    out_rk[qi] = rk
    # fixed point (see kernels.ap_scale): exact, so the order of the sum cannot matter
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
def rank_kernel(qw, dw, qm, dm, nbits, dist_bits, count_bits, k, ap_scale, n_grid, recall_grid,
                out_r, out_rk, out_ap, out_hits, out_pr):
    """Per query: R, R_k, AP@k (``ap_scale`` 0: skipped), hits at each N, interpolated precision.
    ``dist_bits``, ``count_bits``: the bucket-word layout (``kernels.numba_word_layout``)."""
    nq, n = qw.shape[0], dw.shape[0]
    want_ranks = n_grid.shape[0] > 0 or recall_grid.shape[0] > 0
    for task in prange((nq + GROUP - 1) // GROUP):
        buf = np.empty(n, np.int64)
        ranks = np.empty(n if want_ranks else 0, np.int64)
        best = np.empty(n if recall_grid.shape[0] > 0 else 0)
        for qi in range(task * GROUP, min(nq, (task + 1) * GROUP)):
            _rank_stats_one(qw, dw, qm, dm, qi, nbits, dist_bits, count_bits, k, ap_scale,
                            n_grid, recall_grid, buf, ranks, best, out_r, out_rk, out_ap,
                            out_hits, out_pr)


@njit(parallel=True, cache=True, nogil=True)
def histogram_kernel(qw, dw, qm, dm, packed, out_all, out_rel):
    """Per query: number of items, and of relevant items, at each distance 0..L (``packed``: see
    :func:`_histograms`)."""
    for task in prange((qw.shape[0] + GROUP - 1) // GROUP):
        words = np.empty(out_all.shape[1], np.int64)
        for qi in range(task * GROUP, min(qw.shape[0], (task + 1) * GROUP)):
            _histograms(qw, dw, qm, dm, qi, packed, out_all[qi], out_rel[qi], words)
