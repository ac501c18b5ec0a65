"""Ranking metrics (mAP@all, mAP@k, tie-aware mAP, P@N, R@N, PR) against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import (
    BACKENDS,
    code_form,
    interpolated_pr_reference,
    make_case,
    map_reference,
    precision_recall_at_n_reference,
    ranked_relevance,
    tie_aware_ap_reference,
)

from cmhash.codes import pack
from cmhash.metrics import (
    mean_average_precision,
    pr_curve,
    precision_recall_at_n,
    ranking_report,
    tie_aware_map,
)
from cmhash.metrics.kernels import CHUNK, numba_available


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("form", ["pm1", "01", "packed"])
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("bits", [3, 12, 24, 64])
def test_map_at_all_and_at_k_match_the_reference(bits, labels, form, backend):
    q, db, ql, dl = make_case(bits, bits=bits, labels=labels)
    qc, dc = code_form(q, form), code_form(db, form)
    for k in (None, 1, 7, 60, 100):
        ref_map, ref_ap = map_reference(q, db, ql, dl, k)
        res = mean_average_precision(qc, dc, ql, dl, topk=k, backend=backend)
        np.testing.assert_allclose(res.ap, ref_ap, rtol=1e-12, atol=0)
        assert res.map == pytest.approx(ref_map, rel=1e-12)
        assert res.topk == k and res.kind == "stable"
        ref_none = sum(1 for rel, _ in ranked_relevance(q, db, ql, dl) if not any(rel[:k]))
        assert res.queries_without_relevant == ref_none
    assert mean_average_precision(qc, dc, ql, dl, backend=backend).ap[0] == 0.0  # query 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits", [65, 128])
def test_multi_word_codes_and_labels_match_the_reference(bits, backend):
    # > 64 bits and > 64 classes: the kernels' general (multi-word) path
    q, db, ql, dl = make_case(bits, bits=bits, classes=69, flips=20)
    for k in (None, 9):
        ref_map, ref_ap = map_reference(q, db, ql, dl, k)
        res = mean_average_precision(q, db, ql, dl, topk=k, backend=backend)
        np.testing.assert_allclose(res.ap, ref_ap, rtol=1e-12, atol=0)
        assert res.map > 0
    res = precision_recall_at_n(q, db, ql, dl, n=[1, 7, 60], backend=backend)
    ref_p, ref_r = precision_recall_at_n_reference(q, db, ql, dl, [1, 7, 60])
    np.testing.assert_allclose(res.precision, ref_p, rtol=1e-12)
    np.testing.assert_allclose(res.recall, ref_r, rtol=1e-12)


def test_hand_computed_ap_and_the_top_k_definition():
    # query 0000; distances 1, 0, 2, 3, 4 -> ranking 1, 0, 2, 3, 4; relevance by ranking 0,1,0,1,1
    q = np.array([[0, 0, 0, 0]])
    db = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    ql = np.array([[1, 0]])
    dl = np.array([[1, 0], [0, 1], [0, 0], [1, 1], [1, 0]])
    # AP@all = (1/2 + 2/4 + 3/5) / 3
    assert mean_average_precision(q, db, ql, dl).map == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    # top-k definition: AP@2 = (1/2) / 1 (not "first 2 relevant anywhere": (1/2 + 2/4) / 2)
    assert mean_average_precision(q, db, ql, dl, topk=2).map == pytest.approx(0.5)
    res = mean_average_precision(q, db, ql, dl, topk=1)  # no relevant item in the top 1
    assert res.map == 0.0 and res.queries_without_relevant == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_are_broken_by_database_index(backend):
    db = np.ones((3, 12), dtype=np.int8)  # all at distance 0
    q = db[:1]
    for pos in range(3):
        dl = np.zeros((3, 1), dtype=np.uint8)
        dl[pos] = 1
        res = mean_average_precision(q, db, [[1]], dl, backend=backend)
        assert res.map == pytest.approx(1 / (pos + 1))
        # tie-aware: the relevant item is equally likely at each of the 3 ranks
        assert tie_aware_map(q, db, [[1]], dl, backend=backend).map == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("seed", range(6))
def test_tie_aware_map_equals_the_mean_over_all_tie_orders(seed, labels, backend):
    bits = 3 if seed % 2 else 12
    q, db, ql, dl = make_case(100 + seed, nq=4, ndb=9, bits=bits, labels=labels, prototypes=2, flips=1)
    res = tie_aware_map(q, db, ql, dl, backend=backend)
    ranked = ranked_relevance(q, db, ql, dl)
    expected = [tie_aware_ap_reference(rel, dist) for rel, dist in ranked]
    np.testing.assert_allclose(res.ap, expected, rtol=1e-12, atol=1e-15)
    assert res.kind == "tie-aware" and res.topk is None
    assert res.queries_without_relevant == sum(1 for rel, _ in ranked if not any(rel))
    assert any(len(set(d)) < len(d) for _, d in ranked)  # the case really has ties


def test_tie_aware_map_equals_stable_map_without_ties():
    # database codes at distances 0..8 from the query, in scrambled index order: no ties
    bits = 8
    rows = [np.r_[np.ones(i), np.zeros(bits - i)] for i in range(bits + 1)]
    perm = np.random.default_rng(0).permutation(bits + 1)
    db = np.array(rows)[perm]
    q = np.zeros((1, bits))
    dl = (np.random.default_rng(1).random((bits + 1, 3)) < 0.5).astype(int)
    ql = np.array([[1, 1, 0]])
    stable = mean_average_precision(q, db, ql, dl)
    assert stable.map > 0
    assert tie_aware_map(q, db, ql, dl).map == pytest.approx(stable.map, rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("bits", [12, 24])
def test_precision_and_recall_at_n_match_the_reference(bits, labels, backend):
    q, db, ql, dl = make_case(7 + bits, bits=bits, labels=labels)
    res = precision_recall_at_n(q, db, ql, dl, backend=backend)  # default: N = 1..n_db here
    np.testing.assert_array_equal(res.n, np.arange(1, 61))
    ref_p, ref_r = precision_recall_at_n_reference(q, db, ql, dl, range(1, 61))
    np.testing.assert_allclose(res.precision, ref_p, rtol=1e-12)
    np.testing.assert_allclose(res.recall, ref_r, rtol=1e-12)
    assert res.queries_without_relevant >= 1  # query 0, excluded from recall
    grid = np.array([1, 5, 33, 60])
    res = precision_recall_at_n(pack(q), pack(db), ql, dl, n=grid, backend=backend)
    ref_p, ref_r = precision_recall_at_n_reference(q, db, ql, dl, grid)
    np.testing.assert_allclose(res.precision, ref_p, rtol=1e-12)
    np.testing.assert_allclose(res.recall, ref_r, rtol=1e-12)
    assert res.recall[-1] == pytest.approx(1.0)


def test_default_n_grid_stops_at_5000():
    rng = np.random.default_rng(0)
    db = rng.choice([-1, 1], size=(5200, 12))
    res = precision_recall_at_n(db[:2], db, [1, 2], rng.integers(0, 3, 5200))
    np.testing.assert_array_equal(res.n, np.arange(1, 5001))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("labels", ["multi", "single"])
@pytest.mark.parametrize("bits", [3, 12, 24])
def test_interpolated_pr_curve_matches_the_reference(bits, labels, backend):
    q, db, ql, dl = make_case(31 + bits, bits=bits, labels=labels)
    for grid in (None, [0.0, 0.3, 1 / 3, 0.5, 0.7, 1.0], [0.05]):
        res = pr_curve(q, db, ql, dl, recall_grid=grid, backend=backend)
        levels = np.linspace(0, 1, 11) if grid is None else grid
        np.testing.assert_allclose(res.recall, levels, atol=1e-12)
        expected = interpolated_pr_reference(q, db, ql, dl, res.recall)
        np.testing.assert_allclose(res.precision, expected, rtol=1e-12)
        assert (np.diff(res.precision) <= 1e-15).all()  # interpolation makes it non-increasing
        assert res.queries_without_relevant == sum(
            1 for rel, _ in ranked_relevance(q, db, ql, dl) if not any(rel))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranking_report_equals_the_single_metrics(backend):
    q, db, ql, dl = make_case(5, bits=24)
    rep = ranking_report(q, db, ql, dl, topk=10, n=[1, 10, 50], recall_grid=[0, 0.5, 1], backend=backend)
    np.testing.assert_array_equal(rep.map.ap, mean_average_precision(q, db, ql, dl, 10, backend=backend).ap)
    at_n = precision_recall_at_n(q, db, ql, dl, n=[1, 10, 50], backend=backend)
    np.testing.assert_array_equal(rep.at_n.precision, at_n.precision)
    np.testing.assert_array_equal(rep.pr.precision,
                                  pr_curve(q, db, ql, dl, [0, 0.5, 1], backend=backend).precision)
    only = ranking_report(q, db, ql, dl, parts=("pr",), backend=backend)
    assert only.map is None and only.at_n is None and only.pr is not None
    # as_dict (documented in docs/evaluation.md): each part's own as_dict, JSON-ready with write_json
    full = rep.as_dict()
    assert set(full) == {"map", "at_n", "pr"}
    assert full["map"] == rep.map.as_dict() and full["pr"] == rep.pr.as_dict()
    assert only.as_dict()["map"] is None and only.as_dict()["at_n"] is None
    with pytest.raises(ValueError, match="parts"):
        ranking_report(q, db, ql, dl, parts=("mAP",))


def test_class_indices_and_one_hot_labels_agree():
    q, db, ql, dl = make_case(9, labels="single")
    classes = np.unique(np.concatenate([ql, dl]))
    one_hot_q = (ql[:, None] == classes).astype(np.uint8)
    one_hot_d = (dl[:, None] == classes).astype(np.uint8)
    a = mean_average_precision(q, db, ql, dl)
    b = mean_average_precision(q, db, one_hot_q, one_hot_d)
    np.testing.assert_array_equal(a.ap, b.ap)
    # float class indices that are whole numbers are fine too
    np.testing.assert_array_equal(mean_average_precision(q, db, ql.astype(float), dl).ap, a.ap)


@pytest.mark.skipif(not numba_available(), reason="numba not installed (extra 'fast')")
def test_numpy_and_numba_agree_exactly_across_chunks_and_threads():
    import numba

    rng = np.random.default_rng(11)
    nq, ndb, bits, classes = CHUNK + 77, 1500, 24, 70  # two chunks; labels need two uint64 words
    protos = rng.choice([-1, 1], size=(6, bits))
    q = protos[rng.integers(0, 6, nq)] * rng.choice([1, 1, 1, -1], size=(nq, bits))
    db = protos[rng.integers(0, 6, ndb)] * rng.choice([1, 1, 1, -1], size=(ndb, bits))
    ql = (rng.random((nq, classes)) < 0.03).astype(np.uint8)
    dl = (rng.random((ndb, classes)) < 0.03).astype(np.uint8)
    kwargs = dict(topk=100, n=[1, 10, 100, 1500], recall_grid=[0, 0.2, 0.9, 1.0])
    ref = ranking_report(q, db, ql, dl, backend="numpy", **kwargs)
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            got = ranking_report(q, db, ql, dl, backend="numba", **kwargs)
            np.testing.assert_array_equal(got.map.ap, ref.map.ap)
            assert got.map.map == ref.map.map
            assert got.map.queries_without_relevant == ref.map.queries_without_relevant
            for part, fields in (("at_n", ("precision", "recall")), ("pr", ("precision",))):
                for f in fields:
                    np.testing.assert_array_equal(getattr(getattr(got, part), f),
                                                  getattr(getattr(ref, part), f))
            np.testing.assert_array_equal(tie_aware_map(q, db, ql, dl, backend="numba").ap,
                                          tie_aware_map(q, db, ql, dl, backend="numpy").ap)
            np.testing.assert_array_equal(mean_average_precision(q, db, ql, dl, backend="numba").ap,
                                          mean_average_precision(q, db, ql, dl, backend="numpy").ap)
    finally:
        numba.set_num_threads(before)
    assert 0.05 < ref.map.map < 0.95  # a non-trivial case
    assert ref.map.queries_without_relevant > 0


def test_as_dict_is_json_ready():
    import json

    q, db, ql, dl = make_case(2)
    d = mean_average_precision(q, db, ql, dl, topk=5).as_dict()
    assert d["topk"] == 5 and d["queries"] == 8 and d["kind"] == "stable"
    json.dumps(d)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda q, db, ql, dl: (q, db, ql[:-1], dl), "query_labels has 7 rows"),
        (lambda q, db, ql, dl: (q, db, ql, dl[:-1]), "db_labels has 59 rows"),
        (lambda q, db, ql, dl: (q, db, ql[:, :-1], dl), "classes"),
        (lambda q, db, ql, dl: (q, db, ql * 2, dl), "query_labels: multi-hot labels must be 0 or 1"),
        (lambda q, db, ql, dl: (q, db, ql, np.where(dl > 0, np.nan, 0.0)), "db_labels: contains NaN"),
        (lambda q, db, ql, dl: (q, db, ql[:, 0], dl), "1-D"),
        (lambda q, db, ql, dl: (q, db[:, :-1], ql, dl), "12 bits but db_codes have 11 bits"),
        (lambda q, db, ql, dl: (q * 0.5, db, ql, dl), "query_codes: expected binary codes"),
        (lambda q, db, ql, dl: (q[:0], db, ql[:0], dl), "no queries"),
        (lambda q, db, ql, dl: (q, db, ql[:, :, None], dl[:, :, None]), "query_labels: expected multi-hot"),
    ],
)
def test_bad_input_is_a_clear_error(change, match):
    args = change(*make_case(3))
    with pytest.raises(ValueError, match=match):
        mean_average_precision(*args)


def test_bad_arguments_are_clear_errors():
    q, db, ql, dl = make_case(4)
    for topk in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="topk"):
            mean_average_precision(q, db, ql, dl, topk=topk)
    for n in ([0, 3], [3, 3], [5, 61], [1.5]):
        with pytest.raises(ValueError, match="n:"):
            precision_recall_at_n(q, db, ql, dl, n=n)
    for grid in ([0.5, 0.2], [-0.1, 0.5], [0.5, 1.5], [np.nan]):
        with pytest.raises(ValueError, match="recall_grid"):
            pr_curve(q, db, ql, dl, recall_grid=grid)
    with pytest.raises(ValueError, match="backend"):
        mean_average_precision(q, db, ql, dl, backend="gpu")
    with pytest.raises(ValueError, match="65536 bits"):
        mean_average_precision(np.ones((1, 65536)), np.ones((2, 65536)), [1], [1, 0])
    with pytest.raises(ValueError, match="single-label class indices|1-D"):
        mean_average_precision(q, db, np.array([0.5] * 8), np.zeros(60))


def test_without_numba_auto_uses_numpy_and_numba_is_a_clear_error(monkeypatch):
    from cmhash.metrics import kernels

    monkeypatch.setattr(kernels, "numba_available", lambda: False)
    monkeypatch.setattr(kernels, "_AUTO_NUMBA_MIN_WORK", 0)
    assert kernels.resolve_backend("auto", 10**9) == "numpy"
    q, db, ql, dl = make_case(12)
    ref_map, _ = map_reference(q, db, ql, dl)
    assert mean_average_precision(q, db, ql, dl).map == pytest.approx(ref_map, rel=1e-12)
    with pytest.raises(ValueError, match=r"pip install 'cmhash\[fast\]'"):
        mean_average_precision(q, db, ql, dl, backend="numba")


def test_auto_backend_choice():
    from cmhash.metrics.kernels import resolve_backend

    assert resolve_backend("auto", 1000) == "numpy"  # small: no JIT start-up
    assert resolve_backend("auto", 10**9) == ("numba" if numba_available() else "numpy")
