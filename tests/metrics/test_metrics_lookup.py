"""Hash-lookup metrics (PR by radius, P@H<=r) against a brute-force loop over pairs."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import BACKENDS, code_form, lookup_reference, make_case

from cmhash.metrics import lookup_pr, precision_at_radius
from cmhash.metrics import kernels
from cmhash.metrics.kernels import distance_histograms, numba_available
from cmhash.metrics.relevance import prepare


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["pm1", "01", "packed"])
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("bits", [12, 24])
def test_lookup_pr_matches_the_reference_at_every_radius(bits, labels, form, backend):
    q, db, ql, dl = make_case(50 + bits, bits=bits, labels=labels, flips=3)
    res = lookup_pr(code_form(q, form), code_form(db, form), ql, dl, backend=backend)
    np.testing.assert_array_equal(res.radius, np.arange(bits + 1))
    for r in range(bits + 1):
        pp, pr, mp, mr, empty = lookup_reference(q, db, ql, dl, r)
        np.testing.assert_allclose(
            [res.precision_pooled[r], res.recall_pooled[r], res.precision_macro[r], res.recall_macro[r]],
            [pp, pr, mp, mr], rtol=1e-12, equal_nan=True)
        assert res.queries_without_result[r] == empty
    assert res.recall_pooled[-1] == pytest.approx(1.0)  # radius L retrieves everything
    assert res.queries_without_relevant >= 1 and res.n_query == 8


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [12, 24])
def test_precision_at_radius_matches_the_reference(bits, backend):
    q, db, ql, dl = make_case(70 + bits, bits=bits, flips=2)
    for radius in (0, 2, 5):
        pp, _, mp, _, empty = lookup_reference(q, db, ql, dl, radius)
        res = precision_at_radius(q, db, ql, dl, radius, backend=backend)
        assert res.pooled == pytest.approx(pp, rel=1e-12)
        assert res.macro == pytest.approx(mp, rel=1e-12)
        assert res.queries_without_result == empty and res.radius == radius
    # beyond the code length everything is retrieved: precision = fraction of relevant pairs
    far = precision_at_radius(q, db, ql, dl, 10 * bits, backend=backend)
    assert far.pooled == pytest.approx(lookup_reference(q, db, ql, dl, bits)[0])


def test_queries_retrieving_nothing_are_excluded_from_macro_and_counted():
    bits = 12
    db = np.ones((5, bits), dtype=np.int8)
    q = np.stack([np.ones(bits), -np.ones(bits), np.r_[-np.ones(3), np.ones(bits - 3)]])
    ql = np.array([[1, 0], [1, 0], [0, 1]])
    dl = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [0, 1]])
    res = precision_at_radius(q, db, ql, dl, radius=2)
    # query 0 retrieves all 5 (2 relevant), query 1 nothing (distance 12), query 2 nothing (3)
    assert res.queries_without_result == 2
    assert res.macro == pytest.approx(2 / 5) and res.pooled == pytest.approx(2 / 5)
    lk = lookup_pr(q, db, ql, dl)
    assert lk.queries_without_result[0] == 2 and lk.queries_without_result[3] == 1
    assert lk.precision_macro[3] == pytest.approx((2 / 5 + 3 / 5) / 2)
    assert lk.precision_pooled[3] == pytest.approx(5 / 10)
    # a radius where no query retrieves anything has no precision: NaN, not 0
    none = precision_at_radius(-np.ones((2, bits)), db, ql[:2], dl, radius=1)
    assert np.isnan(none.macro) and np.isnan(none.pooled) and none.queries_without_result == 2


@pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'fast')")
@pytest.mark.parametrize("bits, classes", [(12, 3), (24, 5), (64, 21), (72, 70), (100, 69)])
@pytest.mark.parametrize("packed", [True, False])
def test_histograms_are_identical_across_backends(bits, classes, packed, monkeypatch):
    # packed: both counts in one word per distance (the numba default below 2^32 items); else
    # the two-array loop it falls back to, forced here by lowering the limit
    if not packed:
        monkeypatch.setattr(kernels, "_PACKED_HISTOGRAM_MAX_DB", 10)
    q, db, ql, dl = make_case(8, nq=40, ndb=300, bits=bits, classes=classes, flips=5)
    ret = prepare(q, db, ql, dl)
    a_all, a_rel = distance_histograms(ret, backend="numpy")
    b_all, b_rel = distance_histograms(ret, backend="numba")
    np.testing.assert_array_equal(a_all, b_all)
    np.testing.assert_array_equal(a_rel, b_rel)
    assert (a_all.sum(axis=1) == 300).all()


def test_radius_argument_is_checked():
    q, db, ql, dl = make_case(1)
    for radius in (-1, 1.5, None):
        with pytest.raises(ValueError, match="radius"):
            precision_at_radius(q, db, ql, dl, radius)
