"""The numba rank kernel's bucket words: field widths at their limits, degenerate databases, and
the fallback when a problem does not fit the words. Every case is checked against the plain
references (and the numpy backend) on all rank statistics."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import (
    interpolated_pr_reference,
    map_reference,
    precision_recall_at_n_reference,
)

from cmhash.metrics import kernels, mean_average_precision, ranking_report
from cmhash.metrics.kernels import numba_available, numba_word_layout

needs_numba = pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'fast')")


def check_against_references(q, db, ql, dl):
    """mAP@all, mAP@k, P@N, R@N and the PR curve of the numba backend equal the references."""
    n_db = len(db)
    for k in (None, 1, max(1, n_db // 2)):
        _, ref_ap = map_reference(q, db, ql, dl, k)
        res = mean_average_precision(q, db, ql, dl, topk=k, backend="numba")
        np.testing.assert_allclose(res.ap, ref_ap, rtol=1e-12, atol=0)
    ns = sorted({1, max(1, n_db // 2), n_db})
    grid = [0.0, 0.5, 1.0]
    got = ranking_report(q, db, ql, dl, n=ns, recall_grid=grid, backend="numba")
    want = ranking_report(q, db, ql, dl, n=ns, recall_grid=grid, backend="numpy")
    np.testing.assert_array_equal(got.map.ap, want.map.ap)
    ref_p, ref_r = precision_recall_at_n_reference(q, db, ql, dl, ns)
    np.testing.assert_allclose(got.at_n.precision, ref_p, rtol=1e-12)
    np.testing.assert_allclose(got.at_n.recall, ref_r, rtol=1e-12)
    np.testing.assert_allclose(got.pr.precision, interpolated_pr_reference(q, db, ql, dl, grid),
                               rtol=1e-12)


def test_word_layout_fields():
    assert numba_word_layout(64, 190_000) == (7, 18)
    assert numba_word_layout(12, 7) == (4, 3)  # a count field holds n_db itself
    assert numba_word_layout(12, 8) == (4, 4)
    assert numba_word_layout(64, 2**28 - 1) == (7, 28)
    assert numba_word_layout(64, 2**28) is None
    assert numba_word_layout(65535, 2**23 - 1) == (16, 23)
    assert numba_word_layout(65535, 2**23) is None


@needs_numba
@pytest.mark.parametrize("odd_one", [False, True])
@pytest.mark.parametrize("n_db", [1, 2, 3, 4, 7, 8, 15, 16])
@pytest.mark.parametrize("relevant", ["all", "every_other", "none"])
def test_full_buckets_and_count_fields_at_their_widths(n_db, relevant, odd_one):
    # n_db = 2^m - 1 fills a count field; without the odd one every item shares one distance,
    # so one bucket's counts reach n_db; with it, a full bucket's counts feed the next buckets'
    # prefix sums (query 0: item 0 at distance 3 after n_db - 1 at 0; query 2: the reverse)
    db = np.zeros((n_db, 12), dtype=np.uint8)
    if odd_one:
        db[0, :3] = 1
    q = np.zeros((3, 12), dtype=np.uint8)
    q[1, :5] = 1
    q[2] = db[0]
    dl = np.ones((n_db, 1), dtype=np.uint8)
    if relevant == "every_other":
        dl[1::2] = 0
    elif relevant == "none":
        dl[:] = 0
    ql = np.ones((3, 1), dtype=np.uint8)
    check_against_references(q, db, ql, dl)


@needs_numba
@pytest.mark.parametrize("bits", [12, 24, 72])
def test_odd_lengths_with_queries_without_relevant_items(bits):
    rng = np.random.default_rng(bits)
    q = rng.integers(0, 2, (6, bits))
    db = np.r_[rng.integers(0, 2, (40, bits)), np.repeat(q[:1], 5, axis=0)]  # some ties at 0
    ql = rng.integers(0, 3, 6)
    ql[0] = 7  # no database item has class 7
    dl = rng.integers(0, 3, len(db))
    assert mean_average_precision(q, db, ql, dl, backend="numba").ap[0] == 0.0
    check_against_references(q, db, ql, dl)


def test_a_problem_too_large_for_the_words_falls_back_to_numpy(monkeypatch):
    rng = np.random.default_rng(5)
    q, db = rng.integers(0, 2, (3, 16)), rng.integers(0, 2, (30, 16))
    ql, dl = rng.integers(0, 2, 3), rng.integers(0, 2, 30)
    expected = mean_average_precision(q, db, ql, dl, backend="numpy").ap
    monkeypatch.setattr(kernels, "numba_word_layout", lambda nbits, n_db: None)
    monkeypatch.setattr(kernels, "_AUTO_NUMBA_MIN_WORK", 0)
    if numba_available():
        with pytest.raises(ValueError, match="30 database items with 16-bit codes exceed"):
            mean_average_precision(q, db, ql, dl, backend="numba")
    auto = mean_average_precision(q, db, ql, dl, backend="auto")
    np.testing.assert_array_equal(auto.ap, expected)
