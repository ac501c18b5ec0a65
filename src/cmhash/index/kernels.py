"""Exact Hamming top-k and radius kernels for :class:`~cmhash.index.HammingIndex`.

Codes are scanned as machine words (:func:`to_words`): XOR + popcount per word, summed. The
numpy path works on (query block x database chunk) tiles small enough to stay in cache and keeps
a bounded top-k per query: once a query holds ``k`` candidates whose worst distance is ``t``, a
later item can only enter with distance ``< t`` (an equal distance loses the tie, because it
comes later in insertion order), so each chunk is filtered with one comparison and only the
survivors are merged. The optional numba kernels (the ``fast`` extra; top-k and radius) do the
same scan fused into one loop per query (index/_numba.py), with queries split over threads, or
the database when there are fewer queries than threads; the calling thread runs a share itself
(:mod:`cmhash.index._threads`). Both return the ranking of PROTOCOL.md: distance ascending, ties by position
ascending, and identical results.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from cmhash.index._threads import run_tasks as _run  # the shared helper threads

__all__ = ["to_words", "dist_dtype", "topk_numpy", "radius_numpy", "HAVE_NUMBA", "topk_numba", "radius_numba"]

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


# ------------------------------------------------------------------------------ numba kernels
# numba is imported on first use (``import cmhash.index`` stays fast): the compiled kernels live in
# the private module ``cmhash.index._numba``.

HAVE_NUMBA = importlib.util.find_spec("numba") is not None


_nb = None  # the module cmhash.index._numba, once imported
_NO_HEAD = np.empty(0, dtype=np.uint64)


def _numba():
    global _nb
    if _nb is None:
        if not HAVE_NUMBA:
            raise ImportError("the numba backend needs numba: pip install 'cmhash[fast]'")
        from cmhash.index import _numba as nb

        _nb = nb
    return _nb


def _workers(threads: int | None) -> int:
    return max(1, int(threads or os.cpu_count() or 1))


def _ranges(lo: int, hi: int, parts: int, align: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering [lo, hi), cut at multiples of ``align``."""
    if parts == 1:
        return [(lo, hi)] if hi > lo else []
    cuts = [lo + (hi - lo) * p // parts // align * align for p in range(parts)] + [hi]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _numba_args(qw: np.ndarray, dw: np.ndarray):
    """uint64 words (one compiled specialisation for every code length; narrower words widen
    without changing any XOR-popcount) and the block of the scan."""
    nb = _numba()
    if qw.dtype != np.uint64 or not qw.flags.c_contiguous:
        qw = np.ascontiguousarray(qw, dtype=np.uint64)
    if dw.dtype != np.uint64 or not dw.flags.c_contiguous:
        dw = np.ascontiguousarray(dw, dtype=np.uint64)
    return nb, qw, dw, nb.BLOCK if dw.shape[1] == 1 else nb.BLOCK_WIDE


def _radius_tile(nb, nw: int, tile_bytes: int | None, queries: int) -> int:
    """Codes per radius tile: ``tile_bytes`` if given; else a cache-sized tile shared by a group
    of queries, or a larger one for a lone query (nothing to share; fewer hand-offs of hits).
    Top-k keeps cache-sized tiles even for one query: its bound tightens between tiles."""
    return nb.tile_codes(nw, tile_bytes or (nb.SOLO_TILE_BYTES if queries == 1 else nb.TILE_BYTES))


def _checked_head(head: np.ndarray | None, dw: np.ndarray) -> np.ndarray:
    """``head`` as the kernels take it (empty: none), checked against the codes' words."""
    if head is None or dw.shape[1] < 2:
        return _NO_HEAD
    if head.shape != (dw.shape[0],) or head.dtype != np.uint64:
        raise ValueError(f"head must be the first words of the codes: uint64 ({dw.shape[0]},), got {head.dtype} {head.shape}")
    return head


def first_words(dw: np.ndarray) -> np.ndarray | None:
    """Every code's first uint64 word, contiguous, for codes of two or more words (else None):
    the ``head`` that lets :func:`radius_numba` stream one word per code instead of all."""
    if dw.ndim != 2 or dw.shape[1] < 2:
        return None
    return np.ascontiguousarray(dw[:, 0], dtype=np.uint64)


def topk_numba(
    qw: np.ndarray, dw: np.ndarray, k: int, nbits: int, *, capacity: int | None = None,
    threads: int | None = None, tile_bytes: int | None = None, group: int | None = None,
    head: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The numba twin of :func:`topk_numpy`: same results for any ``threads``, buffer
    ``capacity`` (candidates per query), tile and query ``group`` size, with or without ``head``.

    Many queries are split over the threads; fewer queries than threads split the database
    instead (each thread's top-k of its range, merged by distance then position). ``head``
    (:func:`first_words`) lets codes of two or more words scan their first word only once a
    query's k-th distance is small (see ``_numba.topk``)."""
    n = dw.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    nb, qw, dw, block = _numba_args(qw, dw)
    head = _checked_head(head, dw)
    capacity = max(k + 1, 4 * k, 1024) if capacity is None else max(int(capacity), k + 1)
    group = int(group or nb.GROUP)
    nq, workers, tile = qw.shape[0], _workers(threads), nb.tile_codes(dw.shape[1], tile_bytes or nb.TILE_BYTES)
    idx_out = np.empty((nq, k), dtype=np.int64)
    dist_out = np.empty((nq, k), dtype=np.uint16)
    if nq >= workers or workers == 1 or n < 2 * k:
        parts = _ranges(0, nq, min(workers, nq), 1)
        _run([lambda s=s, e=e: nb.topk(qw[s:e], dw, head, 0, n, k, nbits, capacity, tile, group, idx_out[s:e], dist_out[s:e])
              for s, e in parts])
        return idx_out, dist_out
    ranges = _ranges(0, n, min(workers, n // k), block)
    parts_i = np.empty((len(ranges), nq, k), dtype=np.int64)
    parts_d = np.empty((len(ranges), nq, k), dtype=np.uint16)
    _run([lambda p=p, a=a, b=b: nb.topk(qw, dw, head, a, b, k, nbits, capacity, tile, group, parts_i[p], parts_d[p])
          for p, (a, b) in enumerate(ranges)])
    nb.merge_topk(parts_i, parts_d, k, nbits, idx_out, dist_out)
    return idx_out, dist_out


def radius_numba(
    qw: np.ndarray, dw: np.ndarray, radius: int, nbits: int, *, threads: int | None = None,
    tile_bytes: int | None = None, group: int | None = None, head: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The numba twin of :func:`radius_numpy` (same results for any ``threads``, tile and
    query ``group`` size, with or without ``head``).
    Many queries are split over the threads; fewer queries than threads split the database
    (each thread's hits of its range, merged by distance then position). ``head``
    (:func:`first_words` of ``dw``, kept by the caller) makes codes of two or more words scan
    their first word only, completing the distance where that word is within the radius."""
    nb, qw, dw, block = _numba_args(qw, dw)
    n, nq, nw, workers = dw.shape[0], qw.shape[0], dw.shape[1], _workers(threads)
    r, group = min(int(radius), int(nbits)), int(group or nb.GROUP)
    if nq == 0:
        return []
    head = _checked_head(head, dw)
    if head.shape[0]:
        nw, block = 1, nb.BLOCK  # tiles and cuts in codes of the one word scanned
    if nq >= workers or workers == 1:
        parts = _ranges(0, nq, min(workers, nq), 1)
        found = _run([lambda s=s, e=e: nb.radius(qw[s:e], dw, head, 0, n, r, nbits, _radius_tile(nb, nw, tile_bytes, e - s), group)
                      for s, e in parts])
        counts, pos, dist = found[0] if len(found) == 1 else (np.concatenate(part) for part in zip(*found))
    else:  # few queries: split the database; ranges ascend in position
        tile = _radius_tile(nb, nw, tile_bytes, nq)
        found = _run([lambda a=a, b=b: nb.radius(qw, dw, head, a, b, r, nbits, tile, group)
                      for a, b in _ranges(0, n, min(workers, max(1, n // block)), block)])
        with_hits = [part for part in found if part[1].shape[0]]
        if len(with_hits) <= 1:  # the only range with hits holds the result as it is
            counts, pos, dist = (with_hits or found)[0]
        else:  # a stable counting sort by distance of each query's hits, range after range
            counts, pos, dist = nb.merge_radius(np.stack([c for c, _, _ in found]), np.concatenate([p for _, p, _ in found]),
                                                np.concatenate([d for _, _, d in found]), int(nbits))
    if nq == 1:
        return [(pos, dist)]
    ends = np.cumsum(counts).tolist()
    return [(pos[a:b], dist[a:b]) for a, b in zip([0] + ends[:-1], ends)]
