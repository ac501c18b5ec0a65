"""numba scan kernels of :mod:`cmhash.index.kernels` (the ``fast`` extra; imported on first use).

The hot loop (:func:`collect`) walks a range of codes in blocks of :data:`BLOCK` and first counts,
without branches, how many codes of the block are below the bound; only a block with a hit is
walked again to write its hits out (codes of one and two words: through a bit mask of its hits,
so the rewalk costs per hit). Loops start at a constant 0 over slices, so LLVM sees non-negative
indices (no wraparound code) and vectorises the counting loop (AVX2/AVX-512 popcount where the
CPU has it; codes of two words too). Callers scan the database tile by tile (:data:`TILE_BYTES`
of codes) and run every query of a group over a tile while it sits in cache (a lone radius
query: :data:`SOLO_TILE_BYTES`; top-k tiles grow from ~2k codes to a full tile).

Top-k keeps, per query, a candidate buffer compacted to the best k through a distance histogram
when full, and a bound kept at the k-th smallest distance seen: only d < it can enter (an equal
distance comes later in insertion order and loses the tie). A counting sort by distance gives the final order; candidates
arrive in position order, so ties stay in insertion order. Radius search collects d <= r the same
way. Results are exact and do not depend on tile, block or group sizes.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from cmhash._popcount import popcount

#: codes per branch-free check, for codes of one word and of more words
BLOCK = 64
BLOCK_WIDE = 32
#: hits in a block of BLOCK codes above which it is rewalked code by code, not hit by hit
DENSE = 8
#: a lone query stops scanning first words (``head``) once more than 1/HEAD_GIVE_UP of a tile's
#: codes have a first word within the radius: completing so many costs more than it saves
HEAD_GIVE_UP = 32
#: top-k scans first words only once its bound is at most this: a first word unrelated to the
#: query's (64 fair coin flips) is then below the bound with probability ~1.5% (< 1/HEAD_GIVE_UP)
HEAD_TOPK_BOUND = 24
#: bytes of database codes scanned by every query of a group while they are in cache
TILE_BYTES = 32768
#: bytes of codes a lone query scans between hand-offs of its hits (no cache to share: larger)
SOLO_TILE_BYTES = 262144
#: queries that share a tile
GROUP = 32


@njit(nogil=True, cache=True)
def _dist(qrow, blk, j):
    """Distance of ``qrow`` to code ``j`` of the flat word slice ``blk``."""
    nw = qrow.shape[0]
    d = 0
    for w in range(nw):
        d += popcount(qrow[w] ^ blk[j * nw + w])
    return d


# The branch-free checks: a compile-time trip count (BLOCK, BLOCK_WIDE) lets LLVM vectorise the
# loop without a remainder; a run-time one measured 2x slower.
@njit(nogil=True, cache=True)
def _count1(x, blk, bound):
    c = 0
    for j in range(BLOCK):
        c += popcount(x ^ blk[j]) < bound
    return c


@njit(nogil=True, cache=True)
def _count2(x0, x1, blk, bound):
    c = 0
    for j in range(BLOCK_WIDE):
        c += popcount(x0 ^ blk[2 * j]) + popcount(x1 ^ blk[2 * j + 1]) < bound
    return c


@njit(nogil=True, cache=True)
def _countn(qrow, blk, bound):
    c = 0
    for j in range(BLOCK_WIDE):
        c += _dist(qrow, blk, j) < bound
    return c


@njit(nogil=True, cache=True)
def _append(qrow, blk, p, b, bound, out_pos, out_d, cnt):
    """Append the codes of ``blk`` (positions p, p+1, ... p+b-1) with d < bound; return the count."""
    for j in range(b):
        d = _dist(qrow, blk, j)
        out_pos[cnt] = p + j
        out_d[cnt] = d
        cnt += d < bound  # branch-free: a miss is overwritten by the next code
    return cnt


@intrinsic
def _lowest_bit(typingctx, x):
    """The index of the lowest set bit of a nonzero uint64 (llvm.cttz: one TZCNT), as int64."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None

    def codegen(context, builder, sig, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.int64(x), codegen


# A block with hits is walked again as a bit mask of its hits (a vectorised pass over codes
# still in L1), then bit by bit: the cost follows the hits, not the block length.
@njit(nogil=True, cache=True)
def _mask1(x, blk, bound):
    m = np.uint64(0)
    for j in range(BLOCK):
        m |= np.uint64(popcount(x ^ blk[j]) < bound) << np.uint64(j)
    return m


@njit(nogil=True, cache=True)
def _mask2(x0, x1, blk, bound):
    m = np.uint64(0)
    for j in range(BLOCK_WIDE):
        m |= np.uint64(popcount(x0 ^ blk[2 * j]) + popcount(x1 ^ blk[2 * j + 1]) < bound) << np.uint64(j)
    return m


@njit(nogil=True, cache=True)
def _collect1(x, flat, lo, hi, bound, out_pos, out_d):
    """:func:`collect` for codes of one word."""
    cnt = 0
    for b in range((hi - lo) // BLOCK):  # whole blocks: count first, write only blocks with hits
        p = lo + b * BLOCK
        blk = flat[p : p + BLOCK]
        c = _count1(x, blk, bound)
        if c > DENSE:  # many hits: write every code, branch-free (a miss is overwritten)
            for j in range(BLOCK):
                d = popcount(x ^ blk[j])
                out_pos[cnt] = p + j
                out_d[cnt] = d
                cnt += d < bound
        elif c > 0:  # a few hits (the usual case once a top-k bound is tight): visit those only
            m = _mask1(x, blk, bound)
            while m:
                j = _lowest_bit(m)
                out_pos[cnt] = p + j
                out_d[cnt] = popcount(x ^ blk[j])
                cnt += 1
                m &= m - np.uint64(1)
    for p in range(lo + (hi - lo) // BLOCK * BLOCK, hi):  # the tail
        d = popcount(x ^ flat[p])
        out_pos[cnt] = p
        out_d[cnt] = d
        cnt += d < bound  # branch-free: a miss is overwritten by the next code
    return cnt


@njit(nogil=True, cache=True)
def _collect2(x0, x1, flat, lo, hi, bound, out_pos, out_d):
    """:func:`collect` for codes of two words."""
    cnt = 0
    for b in range((hi - lo) // BLOCK_WIDE):
        p = lo + b * BLOCK_WIDE
        blk = flat[2 * p : 2 * (p + BLOCK_WIDE)]
        c = _count2(x0, x1, blk, bound)
        if c > DENSE // 2:
            for j in range(BLOCK_WIDE):
                d = popcount(x0 ^ blk[2 * j]) + popcount(x1 ^ blk[2 * j + 1])
                out_pos[cnt] = p + j
                out_d[cnt] = d
                cnt += d < bound
        elif c > 0:
            m = _mask2(x0, x1, blk, bound)
            while m:
                j = _lowest_bit(m)
                out_pos[cnt] = p + j
                out_d[cnt] = popcount(x0 ^ blk[2 * j]) + popcount(x1 ^ blk[2 * j + 1])
                cnt += 1
                m &= m - np.uint64(1)
    for p in range(lo + (hi - lo) // BLOCK_WIDE * BLOCK_WIDE, hi):
        d = popcount(x0 ^ flat[2 * p]) + popcount(x1 ^ flat[2 * p + 1])
        out_pos[cnt] = p
        out_d[cnt] = d
        cnt += d < bound
    return cnt


@njit(nogil=True, cache=True)
def collect(qrow, flat, lo, hi, bound, out_pos, out_d):
    """Write the positions p in [lo, hi) with distance < ``bound`` (and the distances), in
    position order, to ``out_pos``/``out_d`` (room for hi - lo); return how many."""
    nw = qrow.shape[0]
    if nw == 1:
        return _collect1(qrow[0], flat, lo, hi, bound, out_pos, out_d)
    if nw == 2:
        return _collect2(qrow[0], qrow[1], flat, lo, hi, bound, out_pos, out_d)
    cnt = 0
    for b in range((hi - lo) // BLOCK_WIDE):
        p = lo + b * BLOCK_WIDE
        blk = flat[p * nw : (p + BLOCK_WIDE) * nw]
        if _countn(qrow, blk, bound) > 0:
            cnt = _append(qrow, blk, p, BLOCK_WIDE, bound, out_pos, out_d, cnt)
    p = lo + (hi - lo) // BLOCK_WIDE * BLOCK_WIDE  # the tail
    return _append(qrow, flat[p * nw : hi * nw], p, hi - p, bound, out_pos, out_d, cnt)


@njit(nogil=True, cache=True)
def _compact(cand_i, cand_d, m, hist, k):
    """Keep the best ``k`` of ``m`` candidates (by distance, then position) in place; return the
    k-th distance (the new bound: later items need a smaller one)."""
    total = 0
    t = 0
    while total + hist[t] < k:
        total += hist[t]
        t += 1
    need = k - total  # how many of distance t still fit
    j = 0
    for c in range(m):
        d = cand_d[c]
        if d < t or (d == t and need > 0):
            if d == t:
                need -= 1
            cand_i[j] = cand_i[c]
            cand_d[j] = d
            j += 1
    hist[:] = 0
    for c in range(j):
        hist[cand_d[c]] += 1
    return t


@njit(nogil=True, cache=True)
def _sorted_out(cand_i, cand_d, m, hist, start, idx_row, dist_row):
    """Counting sort of the ``m`` candidates by distance into the output rows (ties keep the
    candidates' order, which is position order)."""
    start[0] = 0
    for d in range(1, start.shape[0]):
        start[d] = start[d - 1] + hist[d - 1]
    for c in range(m):
        d = cand_d[c]
        idx_row[start[d]] = cand_i[c]
        dist_row[start[d]] = d
        start[d] += 1


def tile_codes(nw: int, tile_bytes: int = TILE_BYTES) -> int:
    """Codes per database tile: ``tile_bytes`` of codes, a whole number of blocks when it can
    (any tile gives the same results; a tile that is not whole blocks only scans slower)."""
    block = BLOCK if nw == 1 else BLOCK_WIDE
    codes = max(1, tile_bytes // (8 * nw))
    return codes // block * block if codes >= block else codes


@njit(nogil=True, cache=True)
def topk(qw, dw, head, lo, hi, k, nbits, capacity, tile, group, idx_out, dist_out):
    """Top-``k`` positions in [lo, hi) of each query (requires k <= hi - lo), sorted by
    (distance, position), into ``idx_out``/``dist_out`` (n_query x k).

    Per query: a candidate buffer, the histogram of its distances, and the bound b (only d < b
    can still enter): the k-th smallest candidate distance once there are k candidates, lowered
    after every push that makes it smaller, so the bound is always as tight as the items seen
    allow. ``below`` counts the candidates with d < b. ``head`` (as in :func:`radius`; empty:
    not used) is scanned instead of whole codes once b <= :data:`HEAD_TOPK_BOUND`, until a tile
    has too many codes whose first word is below b."""
    nq = qw.shape[0]
    flat = dw.ravel()
    g_max = min(group, nq)
    use_head = np.zeros(g_max, np.bool_)
    cand_i = np.empty((g_max, capacity), np.int64)
    cand_d = np.empty((g_max, capacity), np.int64)
    hist = np.zeros((g_max, nbits + 2), np.int64)
    fill = np.zeros(g_max, np.int64)
    bound = np.zeros(g_max, np.int64)
    below = np.zeros(g_max, np.int64)
    start = np.zeros(nbits + 2, np.int64)
    hit_pos = np.empty(min(tile, hi - lo), np.int64)  # room for one tile's hits
    hit_d = np.empty(min(tile, hi - lo), np.int64)
    blk = BLOCK if dw.shape[1] == 1 else BLOCK_WIDE
    first = (2 * k + blk - 1) // blk * blk
    for q0 in range(0, nq, group):
        g_n = min(group, nq - q0)
        hist[:] = 0
        fill[:] = 0
        below[:] = 0
        bound[:] = nbits + 1  # accept everything until there are k candidates
        use_head[:] = head.shape[0] > 0
        # Tiles start at a few blocks and double up to ``tile``: the first codes are all hits
        # (no bound yet), so a short first tile sets a bound before most of a tile is handed over.
        size = min(tile, first)
        t0 = lo
        while t0 < hi:
            t1 = min(t0 + size, hi)
            for g in range(g_n):
                if use_head[g] and bound[g] <= HEAD_TOPK_BOUND:
                    cnt = _collect1(qw[q0 + g, 0], head, t0, t1, bound[g], hit_pos, hit_d)
                    use_head[g] = cnt * HEAD_GIVE_UP <= t1 - t0
                    cnt = _complete(qw[q0 + g], flat, cnt, bound[g] - 1, hit_pos, hit_d)
                else:
                    cnt = collect(qw[q0 + g], flat, t0, t1, bound[g], hit_pos, hit_d)
                m, b, c = fill[g], bound[g], below[g]
                h_g = hist[g]
                for h in range(cnt):
                    d = hit_d[h]
                    if d < b:  # the bound may have tightened within this tile
                        cand_i[g, m] = hit_pos[h]
                        cand_d[g, m] = d
                        h_g[d] += 1
                        m += 1
                        c += 1
                        while c >= k:  # the k-th distance is below b: lower b to it
                            b -= 1
                            c -= h_g[b]
                        if m == capacity:  # keep the best k (the bound stays what it is)
                            _compact(cand_i[g], cand_d[g], m, h_g, k)
                            m = k
                fill[g], bound[g], below[g] = m, b, c
            t0 = t1
            size = min(2 * size, tile)
        for g in range(g_n):
            _compact(cand_i[g], cand_d[g], fill[g], hist[g], k)
            _sorted_out(cand_i[g], cand_d[g], k, hist[g], start, idx_out[q0 + g], dist_out[q0 + g])


@njit(nogil=True, cache=True)
def merge_topk(parts_i, parts_d, k, nbits, idx_out, dist_out):
    """Merge per-range top-k lists (parts x n_query x k, ranges in position order) into the
    top-k of the whole: a stable counting sort by distance of the concatenation."""
    n_parts, nq = parts_i.shape[0], parts_i.shape[1]
    hist = np.zeros(nbits + 2, np.int64)
    start = np.zeros(nbits + 2, np.int64)
    for q in range(nq):
        hist[:] = 0
        for p in range(n_parts):
            for c in range(k):
                hist[parts_d[p, q, c]] += 1
        start[0] = 0
        for d in range(1, nbits + 2):
            start[d] = start[d - 1] + hist[d - 1]
        for p in range(n_parts):
            for c in range(k):
                d = parts_d[p, q, c]
                s = start[d]
                if s < k:
                    idx_out[q, s] = parts_i[p, q, c]
                    dist_out[q, s] = d
                start[d] = s + 1


@njit(nogil=True, cache=True)
def _grown(arr, size, keep):
    """``arr`` with room for at least ``size`` entries (doubling), its first ``keep`` kept."""
    if size <= arr.shape[0]:
        return arr
    out = np.empty(max(size, 2 * arr.shape[0]), arr.dtype)
    out[:keep] = arr[:keep]
    return out


@njit(nogil=True, cache=True)
def _complete(qrow, flat, cnt, r, hit_pos, hit_d):
    """Add the other words' distances to the ``cnt`` first-word hits and keep those still <= r
    (in place, in order); return how many are kept."""
    nw = qrow.shape[0]
    kept = 0
    for h in range(cnt):
        p = hit_pos[h]
        d = hit_d[h]
        for w in range(1, nw):
            d += popcount(qrow[w] ^ flat[p * nw + w])
        hit_pos[kept] = p
        hit_d[kept] = d
        kept += d <= r
    return kept


@njit(nogil=True, cache=True)
def radius(qw, dw, head, lo, hi, r, nbits, tile, group):
    """Per query, every position in [lo, hi) with distance <= ``r``, sorted by (distance,
    position): (counts (n_query,), positions, distances) with the queries' hits back to back.

    Every query of a group scans a tile while it is in cache; the group's hits (query, position,
    distance) arrive in position order per query, so one stable counting sort by (query,
    distance) puts them in the final order. ``head`` (codes of two or more words; empty: not
    used) holds every code's first word, contiguous: the scan reads it alone and completes the
    distance from ``dw`` only where the first word's distance is already <= r (the full
    distance is never smaller), so it streams half the bytes of 128-bit codes; a query whose
    tile has too many such first words (:data:`HEAD_GIVE_UP`) scans whole codes from then on."""
    nq = qw.shape[0]
    flat = dw.ravel()
    use_head = np.zeros(min(group, nq), np.bool_)
    nd = nbits + 2
    hit_pos = np.empty(min(tile, hi - lo), np.int64)  # room for one tile's hits
    hit_d = np.empty(min(tile, hi - lo), np.int64)
    counts = np.zeros(nq, np.int64)
    out_pos = np.empty(1024, np.int64)
    out_d = np.empty(1024, np.uint16)
    g_q = np.empty(1024, np.int64)
    g_pos = np.empty(1024, np.int64)
    g_d = np.empty(1024, np.int64)
    start = np.zeros(min(group, nq) * nd + 1, np.int64)
    total = 0
    for q0 in range(0, nq, group):
        g_n = min(group, nq - q0)
        m = 0
        use_head[:] = head.shape[0] > 0
        for t0 in range(lo, hi, tile):
            t1 = min(t0 + tile, hi)
            for g in range(g_n):
                if use_head[g]:
                    cnt = _collect1(qw[q0 + g, 0], head, t0, t1, r + 1, hit_pos, hit_d)
                    use_head[g] = cnt * HEAD_GIVE_UP <= t1 - t0  # else whole codes from the next tile on
                    cnt = _complete(qw[q0 + g], flat, cnt, r, hit_pos, hit_d)
                else:
                    cnt = collect(qw[q0 + g], flat, t0, t1, r + 1, hit_pos, hit_d)
                if m + cnt > g_q.shape[0]:
                    g_q, g_pos, g_d = _grown(g_q, m + cnt, m), _grown(g_pos, m + cnt, m), _grown(g_d, m + cnt, m)
                for h in range(cnt):
                    g_q[m + h] = g
                    g_pos[m + h] = hit_pos[h]
                    g_d[m + h] = hit_d[h]
                m += cnt
        start[:] = 0
        for h in range(m):  # counting sort by (query, distance); stable, so positions ascend
            start[g_q[h] * nd + g_d[h] + 1] += 1
        for key in range(g_n * nd):
            start[key + 1] += start[key]
        for g in range(g_n):
            counts[q0 + g] = start[(g + 1) * nd] - start[g * nd]
        out_pos, out_d = _grown(out_pos, total + m, total), _grown(out_d, total + m, total)
        for h in range(m):
            key = g_q[h] * nd + g_d[h]
            at = total + start[key]
            start[key] += 1
            out_pos[at] = g_pos[h]
            out_d[at] = g_d[h]
        total += m
    return counts, out_pos[:total], out_d[:total]


@njit(nogil=True, cache=True)
def merge_radius(counts, pos, dist, nbits):
    """Merge per-range radius hits into per-query hits sorted by (distance, position).

    ``counts`` (ranges x n_query) and ``pos``/``dist`` hold the hits of each range back to back
    as :func:`radius` returns them (range after range, ranges in position order); a stable
    counting sort by distance of each query's hits, taken range by range, is the final order."""
    n_parts, nq = counts.shape
    first = np.zeros((n_parts, nq + 1), np.int64)  # where each (range, query) segment starts
    base = 0
    for p in range(n_parts):
        first[p, 0] = base
        for q in range(nq):
            first[p, q + 1] = first[p, q] + counts[p, q]
        base = first[p, nq]
    total = base
    out_counts = counts.sum(axis=0)
    out_pos = np.empty(total, np.int64)
    out_d = np.empty(total, np.uint16)
    hist = np.zeros(nbits + 2, np.int64)
    at = 0
    for q in range(nq):
        hist[:] = 0
        for p in range(n_parts):
            for h in range(first[p, q], first[p, q + 1]):
                hist[dist[h] + 1] += 1
        hist[0] = at
        for d in range(1, nbits + 2):
            hist[d] += hist[d - 1]
        for p in range(n_parts):
            for h in range(first[p, q], first[p, q + 1]):
                d = dist[h]
                out_pos[hist[d]] = pos[h]
                out_d[hist[d]] = d
                hist[d] += 1
        at += out_counts[q]
    return out_counts, out_pos, out_d
