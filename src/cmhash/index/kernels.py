"""Exact Hamming top-k and radius kernels for :class:`~cmhash.index.HammingIndex`.

Codes are scanned as machine words (:func:`to_words`): XOR + popcount per word, summed. The
numpy path works on (query block x database chunk) tiles small enough to stay in cache and keeps
a bounded top-k per query: once a query holds ``k`` candidates whose worst distance is ``t``, a
later item can only enter with distance ``< t`` (an equal distance loses the tie, because it
comes later in insertion order), so each chunk is filtered with one comparison and only the
survivors are merged. The optional numba top-k kernel (the ``fast`` extra) does the same scan
fused into one loop per query, with queries split over threads. Radius search is numpy only.
Both return the ranking of PROTOCOL.md: distance ascending, ties by position ascending, and
identical results.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["to_words", "dist_dtype", "topk_numpy", "radius_numpy", "HAVE_NUMBA", "topk_numba"]

#: cache-sized tiles of the numpy path: query rows per block, database items per chunk
QUERY_BLOCK = 32
DB_CHUNK = 8192


def to_words(data: np.ndarray) -> np.ndarray:
    """Packed codes (n x nbytes uint8) as words: the narrowest of uint8/16/32 that holds a code,
    else uint64 words (zero-padded). Zero padding never changes a distance; a 12-bit code is
    scanned as 2 bytes instead of a padded 8."""
    n, nbytes = data.shape
    if nbytes in (1, 2, 4):
        return np.ascontiguousarray(data).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[nbytes])
    width = 4 if nbytes == 3 else 8 * ((nbytes + 7) // 8)
    if width == nbytes:
        return np.ascontiguousarray(data).view(np.uint64)
    padded = np.zeros((n, width), dtype=np.uint8)
    padded[:, :nbytes] = data
    return padded.view(np.uint32 if width == 4 else np.uint64)


def dist_dtype(nbits: int) -> type:
    """The smallest unsigned type that holds every distance of ``nbits``-bit codes and ``nbits + 1``."""
    return np.uint8 if nbits < 255 else np.uint16


class _Tiles:
    """Scratch arrays for one (query block x database chunk) tile, reused across tiles."""

    def __init__(self, rows: int, cols: int, word: np.dtype, dist: type):
        self.xor = np.empty((rows, cols), dtype=word)
        self.count = np.empty((rows, cols), dtype=np.uint8)
        self.dist = np.empty((rows, cols), dtype=dist)

    def distances(self, qw: np.ndarray, dw: np.ndarray) -> np.ndarray:
        """Hamming distances (b x c) of query words ``qw`` (b x w) to database words ``dw`` (c x w)."""
        b, c = qw.shape[0], dw.shape[0]
        xor, count, dist = self.xor[:b, :c], self.count[:b, :c], self.dist[:b, :c]
        for w in range(qw.shape[1]):
            np.bitwise_xor(qw[:, w, None], dw[None, :, w], out=xor)
            if w == 0:
                np.bitwise_count(xor, out=dist, casting="unsafe")
            else:
                np.bitwise_count(xor, out=count)
                np.add(dist, count, out=dist, casting="unsafe")
        return dist


def topk_numpy(
    qw: np.ndarray, dw: np.ndarray, k: int, nbits: int, *, query_block: int = QUERY_BLOCK, db_chunk: int = DB_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` positions and distances (n_query x k) of each query; requires 1 <= k <= n_db."""
    nq, n = qw.shape[0], dw.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    dtype = dist_dtype(nbits)
    big = nbits + 1  # "no candidate yet": a distance no code reaches
    query_block = max(1, min(query_block, 2**22 // k))  # bound the (block x k) buffers for large k
    # Sort keys (row, distance, position) fit in int64 for any realistic size.
    if (query_block + 1) * (big + 1) * (n + 1) >= 2**62:
        raise ValueError(f"index too large for the numpy top-k key ({n} items, {nbits} bits)")
    idx_out = np.empty((nq, k), dtype=np.int64)
    dist_out = np.empty((nq, k), dtype=np.uint16)
    tiles = _Tiles(query_block, db_chunk, qw.dtype, dtype)
    for q0 in range(0, nq, query_block):
        qb = qw[q0 : q0 + query_block]
        b = qb.shape[0]
        rows = np.arange(b, dtype=np.int64)
        best_d = np.full((b, k), big, dtype=np.int64)
        best_i = np.full((b, k), n, dtype=np.int64)
        for c0 in range(0, n, db_chunk):
            c1 = min(c0 + db_chunk, n)
            dist = tiles.distances(qb, dw[c0:c1])
            bound = best_d[:, -1]  # only d < the k-th best distance so far can enter
            if c0 == 0 and c1 >= k:  # first chunk: start from its own k-th distance, not "all"
                bound = np.partition(dist, k - 1, axis=1)[:, k - 1].astype(np.int64) + 1
            flat = np.flatnonzero(dist < bound[:, None].astype(dtype))  # 1-D nonzero: ~3x faster than 2-D
            if flat.size == 0:
                continue
            hit_r, hit_c = np.divmod(flat, c1 - c0)
            cand_d = np.concatenate([best_d.ravel(), dist[hit_r, hit_c].astype(np.int64)])
            cand_i = np.concatenate([best_i.ravel(), hit_c.astype(np.int64) + c0])
            cand_r = np.concatenate([np.repeat(rows, k), hit_r.astype(np.int64)])
            key = np.sort((cand_r * (big + 1) + cand_d) * (n + 1) + cand_i)
            # Keep the first k keys of every row (each row has at least k: its current best).
            r = key // ((big + 1) * (n + 1))
            start = np.searchsorted(r, rows)
            keep = key[(start[:, None] + np.arange(k)).ravel()]
            best_i = (keep % (n + 1)).reshape(b, k)
            best_d = ((keep // (n + 1)) % (big + 1)).reshape(b, k)
        idx_out[q0 : q0 + b] = best_i
        dist_out[q0 : q0 + b] = best_d
    return idx_out, dist_out


def radius_numpy(
    qw: np.ndarray, dw: np.ndarray, radius: int, nbits: int, *, query_block: int = QUERY_BLOCK, db_chunk: int = DB_CHUNK
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, the positions within distance ``radius`` and their distances, by (distance, position)."""
    nq, n = qw.shape[0], dw.shape[0]
    dtype = dist_dtype(nbits)
    radius = min(int(radius), nbits)
    tiles = _Tiles(query_block, db_chunk, qw.dtype, dtype)
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for q0 in range(0, nq, query_block):
        qb = qw[q0 : q0 + query_block]
        b = qb.shape[0]
        parts_r, parts_i, parts_d = [], [], []
        for c0 in range(0, n, db_chunk):
            c1 = min(c0 + db_chunk, n)
            dist = tiles.distances(qb, dw[c0:c1])
            hit_r, hit_c = np.divmod(np.flatnonzero(dist <= radius), c1 - c0)
            parts_r.append(hit_r)
            parts_i.append(hit_c.astype(np.int64) + c0)
            parts_d.append(dist[hit_r, hit_c].astype(np.uint16))
        hit_r = np.concatenate(parts_r) if parts_r else np.empty(0, np.int64)
        hit_i = np.concatenate(parts_i) if parts_i else np.empty(0, np.int64)
        hit_d = np.concatenate(parts_d) if parts_d else np.empty(0, np.uint16)
        # Order by row, then distance, then position (PROTOCOL.md's ranking within each query).
        order = np.lexsort((hit_i, hit_d, hit_r))
        hit_r, hit_i, hit_d = hit_r[order], hit_i[order], hit_d[order]
        bounds = np.searchsorted(hit_r, np.arange(b + 1))
        out.extend((hit_i[s:e], hit_d[s:e]) for s, e in zip(bounds[:-1], bounds[1:]))
    return out


# ------------------------------------------------------------------------------ numba kernel
try:  # the `fast` extra
    import numba

    from cmhash._popcount import popcount as _popcount

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    HAVE_NUMBA = False


if HAVE_NUMBA:

    @numba.njit(cache=True)
    def _compact(cand_i, cand_d, m, hist, k):
        """Keep the best ``k`` of ``m`` candidates (by distance, then position) in place; return the new bound."""
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

    # The hot scans: the next position at or after ``i`` whose distance is below ``bound`` (or n),
    # specialised for one and two words per code. Keeping the rare candidate handling out of
    # these loops made the scan about 1.8x faster in a measurement on this project's machine.
    @numba.njit(nogil=True, cache=True)
    def _next1(qw, flat, q, i, bound):
        q0, n = qw[q, 0], flat.shape[0]
        while i < n:
            if _popcount(q0 ^ flat[i]) < bound:
                return i
            i += 1
        return n

    @numba.njit(nogil=True, cache=True)
    def _next2(qw, flat, q, i, bound):
        q0, q1, n = qw[q, 0], qw[q, 1], flat.shape[0] // 2
        while i < n:
            if _popcount(q0 ^ flat[2 * i]) + _popcount(q1 ^ flat[2 * i + 1]) < bound:
                return i
            i += 1
        return n

    @numba.njit(nogil=True, cache=True)
    def _dist(qw, flat, q, i):
        nw = qw.shape[1]
        d = 0
        for w in range(nw):
            d += _popcount(qw[q, w] ^ flat[i * nw + w])
        return d

    @numba.njit(nogil=True, cache=True)
    def _next(qw, flat, q, i, bound):
        nw = qw.shape[1]
        n = flat.shape[0] // nw
        if nw == 1:
            return _next1(qw, flat, q, i, bound)
        if nw == 2:
            return _next2(qw, flat, q, i, bound)
        while i < n:
            if _dist(qw, flat, q, i) < bound:
                return i
            i += 1
        return n

    @numba.njit(nogil=True, cache=True)
    def _topk_numba(qw, dw, k, nbits, capacity, idx_out, dist_out):
        n = dw.shape[0]
        flat = dw.ravel()
        cand_i = np.empty(capacity, dtype=np.int64)
        cand_d = np.empty(capacity, dtype=np.int64)
        hist = np.zeros(nbits + 2, dtype=np.int64)
        start = np.zeros(nbits + 2, dtype=np.int64)
        for q in range(qw.shape[0]):
            hist[:] = 0
            bound = nbits + 1  # accept everything until the buffer first fills
            m = 0
            i = _next(qw, flat, q, 0, bound)
            while i < n:
                d = _dist(qw, flat, q, i)
                cand_i[m] = i
                cand_d[m] = d
                hist[d] += 1
                m += 1
                if m == capacity:  # keep the best k; from now on only d < k-th distance can enter
                    bound = _compact(cand_i, cand_d, m, hist, k)
                    m = k
                i = _next(qw, flat, q, i + 1, bound)
            _compact(cand_i, cand_d, m, hist, k)
            # Counting sort by distance; candidates are already in position order, so ties keep it.
            start[0] = 0
            for d in range(1, nbits + 2):
                start[d] = start[d - 1] + hist[d - 1]
            for c in range(k):
                d = cand_d[c]
                idx_out[q, start[d]] = cand_i[c]
                dist_out[q, start[d]] = d
                start[d] += 1


def topk_numba(
    qw: np.ndarray, dw: np.ndarray, k: int, nbits: int, *, capacity: int | None = None, threads: int | None = None
):
    """The numba twin of :func:`topk_numpy` (same results, for any ``threads``); ``capacity`` is
    the candidate buffer size per query."""
    if not HAVE_NUMBA:
        raise ImportError("the numba backend needs numba: pip install 'cmhash[fast]'")
    n = dw.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    capacity = max(k + 1, 4 * k, 1024) if capacity is None else max(int(capacity), k + 1)
    nq = qw.shape[0]
    # One word type for the compiled kernel: narrower words (codes of <= 4 bytes) are widened to
    # uint64, which leaves every XOR-popcount unchanged and compiles one specialisation, not four.
    qw, dw = np.ascontiguousarray(qw, dtype=np.uint64), np.ascontiguousarray(dw, dtype=np.uint64)
    idx_out = np.empty((nq, k), dtype=np.int64)
    dist_out = np.empty((nq, k), dtype=np.uint16)
    # Queries are independent: split them over threads (the kernel releases the GIL). A plain
    # thread pool instead of numba's parallel=True keeps compilation to a second or two.
    workers = max(1, min(threads or os.cpu_count() or 1, nq))
    bounds = np.linspace(0, nq, workers + 1).astype(int)

    def run(part: int) -> None:
        s, e = bounds[part], bounds[part + 1]
        _topk_numba(qw[s:e], dw, int(k), int(nbits), capacity, idx_out[s:e], dist_out[s:e])

    if workers == 1:
        run(0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(workers)))
    return idx_out, dist_out
