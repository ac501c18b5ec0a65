"""The numba scan kernels against an explicit brute force, whatever the threads, tiles and groups."""

from __future__ import annotations

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
                for rows in (slice(0, 1), slice(0, 9)):  # one query splits the database over threads
                    idx, d = kernels.topk_numba(qw[rows], dw, k, nbits, threads=threads,
                                                tile_bytes=tile_bytes, group=group)
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
                for rows in (slice(0, 1), slice(0, 9)):
                    got = kernels.radius_numba(qw[rows], dw, radius, nbits, threads=threads,
                                               tile_bytes=tile_bytes, group=group)
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


def test_importing_the_index_does_not_import_numba():
    src = str(Path(cmhash.__file__).resolve().parents[1])  # this checkout's cmhash, not an installed one
    code = "import sys, cmhash.index; assert 'numba' not in sys.modules, 'numba was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": src}, timeout=60)
