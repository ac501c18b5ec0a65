"""The numba scan kernels against an explicit brute force, whatever the threads, tiles and groups."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cmhash
from cmhash.codes import pack
from cmhash.index import kernels

needs_numba = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba (the `fast` extra) is not installed")


def tied_problem(nbits, n=1500, nq=9, pool=30, seed=0):
    """{-1,+1} codes from a small pool (many equal distances), queries partly copied from the database."""
    rng = np.random.default_rng(seed + nbits)
    base = rng.choice([-1, 1], size=(pool, nbits)).astype(np.int8)
    db = base[rng.integers(0, pool, size=n)]
    query = np.vstack([db[:2], base[rng.integers(0, pool, size=nq - 2)]])
    dist = (query[:, None, :] != db[None, :, :]).sum(axis=2)
    qw, dw = kernels.to_words(pack(query).data), kernels.to_words(pack(db).data)
    return qw, dw, dist, np.argsort(dist, axis=1, kind="stable")


def heads(dw):
    """Searches without and, for codes of two or more words, with the first-word scan."""
    head = kernels.first_words(dw)
    return (None,) if head is None else (None, head)


# (tile bytes, query group): the default, tiles smaller than a block (tail path only), tiles of a
# few blocks that do not divide the database, one query per group
SETTINGS = [(None, None), (24, 2), (1000, 1), (4096, 5)]


@needs_numba
@pytest.mark.parametrize("nbits", [12, 24, 64, 72, 128])
def test_topk_equals_stable_brute_force(nbits):
    qw, dw, dist, order = tied_problem(nbits)
    for k in (1, 10, 100, 1500):
        ref = order[:, :k]
        ref_d = np.take_along_axis(dist, ref, axis=1)
        for threads in (1, 2, 3):
            for tile_bytes, group in SETTINGS:
                # one query splits the database over threads
                for rows, head in itertools.product((slice(0, 1), slice(0, 9)), heads(dw)):
                    idx, d = kernels.topk_numba(qw[rows], dw, k, nbits, threads=threads,
                                                tile_bytes=tile_bytes, group=group, head=head)
                    np.testing.assert_array_equal(idx, ref[rows])
                    np.testing.assert_array_equal(d, ref_d[rows])
        for capacity in (k + 1, 2 * k + 3):  # buffers that fill and compact often
            idx, d = kernels.topk_numba(qw, dw, k, nbits, capacity=capacity, threads=2)
            np.testing.assert_array_equal(idx, ref)


@needs_numba
@pytest.mark.parametrize("nbits", [12, 24, 64, 72, 128])
def test_radius_equals_stable_brute_force(nbits):
    qw, dw, dist, _ = tied_problem(nbits)
    for radius in (0, 2, nbits // 3, nbits, nbits + 4):
        expect = []
        for row in dist:
            hit = np.flatnonzero(row <= radius)
            hit = hit[np.argsort(row[hit], kind="stable")]
            expect.append((hit, row[hit]))
        for threads in (1, 2, 3):
            for tile_bytes, group in SETTINGS:
                for rows, head in itertools.product((slice(0, 1), slice(0, 9)), heads(dw)):
                    got = kernels.radius_numba(qw[rows], dw, radius, nbits, threads=threads,
                                               tile_bytes=tile_bytes, group=group, head=head)
                    assert len(got) == rows.stop
                    for (pos, d), (e_pos, e_d) in zip(got, expect[rows]):
                        np.testing.assert_array_equal(pos, e_pos)
                        np.testing.assert_array_equal(d, e_d)
                        assert d.dtype == np.uint16


@needs_numba
def test_database_smaller_than_a_block_and_k_equal_to_n():
    qw, dw, dist, order = tied_problem(64, n=5, nq=3)
    for threads in (1, 2):
        idx, d = kernels.topk_numba(qw, dw, 5, 64, threads=threads)
        np.testing.assert_array_equal(idx, order)
        got = kernels.radius_numba(qw, dw, 64, 64, threads=threads)
        np.testing.assert_array_equal(np.vstack([p for p, _ in got]), order)


def stable_radius(dist, radius):
    """Per query row of ``dist``: positions with d <= radius by (distance, position), and their d."""
    out = []
    for row in dist:
        hit = np.flatnonzero(row <= radius)
        hit = hit[np.argsort(row[hit], kind="stable")]
        out.append((hit, row[hit]))
    return out


def boundary_problem(nbits, threads, n=2000, seed=1):
    """Random codes with copies of the query (d = 0) and one-bit neighbours (d = 1) placed on both
    sides of every cut where a lone query's scan is split over ``threads`` (top-k and radius
    cut at the same block-aligned points here), so ties straddle the ranges the threads merge."""
    rng = np.random.default_rng(seed + nbits)
    db = rng.choice([-1, 1], size=(n, nbits)).astype(np.int8)
    query = rng.choice([-1, 1], size=(1, nbits)).astype(np.int8)
    block = 64 if (nbits + 63) // 64 == 1 else 32
    near = query[0].copy()
    near[nbits // 2] *= -1
    for t in range(2, threads + 1):
        for a, _ in kernels._ranges(0, n, t, block)[1:]:
            db[a - 2], db[a - 1], db[a], db[a + 1] = query[0], near, query[0], near
    db[-1] = query[0]
    dist = (query[:, None, :] != db[None, :, :]).sum(axis=2)
    return kernels.to_words(pack(query).data), kernels.to_words(pack(db).data), dist


@needs_numba
@pytest.mark.parametrize("nbits", [12, 24, 64, 72, 128])
def test_one_query_split_over_threads_merges_ties_across_the_cuts(nbits):
    qw, dw, dist = boundary_problem(nbits, threads=4)
    order = np.argsort(dist, axis=1, kind="stable")
    for threads in (1, 2, 3, 4):
        for tile_bytes, group in SETTINGS:
            # 11 copies at d = 0 (two at each of the 5 distinct cuts, the last code)
            for k, head in itertools.product((1, 5, 11, 12, 40), heads(dw)):
                idx, d = kernels.topk_numba(qw, dw, k, nbits, threads=threads, tile_bytes=tile_bytes, group=group,
                                            head=head)
                np.testing.assert_array_equal(idx, order[:, :k])
                np.testing.assert_array_equal(d, np.take_along_axis(dist, order[:, :k], axis=1))
            for radius, head in itertools.product((0, 1, nbits // 2, nbits, nbits + 1), heads(dw)):
                (pos, d), = kernels.radius_numba(qw, dw, radius, nbits, threads=threads, tile_bytes=tile_bytes,
                                                 group=group, head=head)
                (e_pos, e_d), = stable_radius(dist, radius)
                np.testing.assert_array_equal(pos, e_pos)
                np.testing.assert_array_equal(d, e_d)


@needs_numba
@pytest.mark.parametrize("nbits", [12, 64, 72, 128])
def test_default_tiles_on_a_database_larger_than_a_tile(nbits):
    """Past the default tiles: a lone radius query's larger tile (nb.SOLO_TILE_BYTES), top-k's
    tiles growing from a few blocks, a group of queries' cache-sized tiles; tie-heavy codes."""
    from cmhash.index import _numba as nb

    n = nb.SOLO_TILE_BYTES // (8 * ((nbits + 63) // 64)) * 5 // 4 + 7  # over one solo tile, not whole blocks
    qw, dw, dist, order = tied_problem(nbits, n=n, nq=3, pool=50)
    for threads in (1, 2, 3):
        for rows in (slice(0, 1), slice(0, 3)):
            for radius, head in itertools.product((0, nbits // 4, nbits), heads(dw)):
                got = kernels.radius_numba(qw[rows], dw, radius, nbits, threads=threads, head=head)
                for (pos, d), (e_pos, e_d) in zip(got, stable_radius(dist[rows], radius)):
                    np.testing.assert_array_equal(pos, e_pos)
                    np.testing.assert_array_equal(d, e_d)
            for k, head in itertools.product((1, 100, 5000), heads(dw)):
                idx, d = kernels.topk_numba(qw[rows], dw, k, nbits, threads=threads, head=head)
                np.testing.assert_array_equal(idx, order[rows, :k])
                np.testing.assert_array_equal(d, np.take_along_axis(dist[rows], order[rows, :k], axis=1))


@needs_numba
@pytest.mark.parametrize("nbits", [72, 128, 264])
def test_first_word_scan_where_it_is_used(nbits):
    """Random codes with near copies of the queries spread through them: the k-th distance drops
    low at once and few first words are close, so the searches scan first words (``head``)."""
    rng = np.random.default_rng(nbits)
    n, nq = 20_000, 3
    db = rng.choice([-1, 1], size=(n, nbits)).astype(np.int8)
    query = rng.choice([-1, 1], size=(nq, nbits)).astype(np.int8)
    at = rng.choice(n, size=(nq, 150), replace=False)
    for q in range(nq):
        near = np.repeat(query[q : q + 1], 150, axis=0)
        flips = rng.random(near.shape) < rng.uniform(0, 0.08, size=(150, 1))  # 0 to ~8% of bits, ties
        db[at[q]] = np.where(flips, -near, near)
    dist = (query[:, None, :] != db[None, :, :]).sum(axis=2)
    order = np.argsort(dist, axis=1, kind="stable")
    qw, dw = kernels.to_words(pack(query).data), kernels.to_words(pack(db).data)
    head = kernels.first_words(dw)
    for threads in (1, 2):
        for rows in (slice(0, 1), slice(0, 3)):
            for k in (1, 10, 100):
                idx, d = kernels.topk_numba(qw[rows], dw, k, nbits, threads=threads, head=head)
                np.testing.assert_array_equal(idx, order[rows, :k])
                np.testing.assert_array_equal(d, np.take_along_axis(dist[rows], order[rows, :k], axis=1))
            for radius in (0, 3, nbits // 10):
                got = kernels.radius_numba(qw[rows], dw, radius, nbits, threads=threads, head=head)
                for (pos, d), (e_pos, e_d) in zip(got, stable_radius(dist[rows], radius)):
                    np.testing.assert_array_equal(pos, e_pos)
                    np.testing.assert_array_equal(d, e_d)


@needs_numba
def test_a_head_that_is_not_the_codes_first_words_is_refused():
    qw, dw, _, _ = tied_problem(128, n=50)
    with pytest.raises(ValueError, match="head must be the first words"):
        kernels.radius_numba(qw, dw, 3, 128, head=kernels.first_words(dw)[:-1])
    with pytest.raises(ValueError, match="head must be the first words"):
        kernels.topk_numba(qw, dw, 3, 128, head=kernels.first_words(dw).astype(np.int64))
    assert kernels.first_words(kernels.to_words(np.zeros((4, 8), np.uint8))) is None  # one word: no head


def test_run_gives_results_in_task_order_and_waits_for_every_task_before_an_error():
    import threading
    import time

    done = []

    def slow(i):
        time.sleep(0.02 * (5 - i))
        done.append(i)
        return i * i

    for threads in (None, 1, 2, 3, 8):
        assert kernels._run([lambda i=i: slow(i) for i in range(5)], threads) == [0, 1, 4, 9, 16]

    def fail():
        raise RuntimeError("task failed")

    done.clear()
    with pytest.raises(RuntimeError, match="task failed"):
        kernels._run([fail] + [lambda i=i: slow(i) for i in range(1, 5)], 2)
    assert sorted(done) == [1, 2, 3, 4]  # nothing left running that writes into the caller's arrays

    # Several callers at once share the helper threads; each gets its own results.
    results = {}

    def caller(c):
        results[c] = kernels._run([lambda i=i: (c, i) for i in range(4)], 3)

    callers = [threading.Thread(target=caller, args=(c,)) for c in range(6)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert results == {c: [(c, i) for i in range(4)] for c in range(6)}


@needs_numba
def test_threads_work_in_a_forked_child():
    """A child forked after the helper threads started has none: it starts its own (else the
    caller would run every share itself, one thread)."""
    import multiprocessing

    qw, dw, dist, order = tied_problem(64)
    kernels.topk_numba(qw[:1], dw, 5, 64, threads=2)  # the parent's helpers exist now
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_forked_search, args=(queue, qw, dw))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked child's threaded search hung")
    assert child.exitcode == 0
    idx, helpers = queue.get(timeout=10)
    np.testing.assert_array_equal(idx, order[:1, :5])
    assert helpers >= 1


def _forked_search(queue, qw, dw):
    import threading

    idx = kernels.topk_numba(qw[:1], dw, 5, 64, threads=2)[0]
    queue.put((idx, sum(t.name.startswith("cmhash-index") and t.is_alive() for t in threading.enumerate())))


def test_importing_the_index_does_not_import_numba():
    src = str(Path(cmhash.__file__).resolve().parents[1])  # this checkout's cmhash, not an installed one
    code = "import sys, cmhash.index; assert 'numba' not in sys.modules, 'numba was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src}, timeout=60)
