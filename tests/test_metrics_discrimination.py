"""Fisher ratio (DGHDGH Eq. 19): formula, sampling, seeding, and the population limit."""

from __future__ import annotations

import numpy as np
import pytest
from metrics_reference import distance, fisher_reference, make_case, relevant, to_pm1

from cmhash.metrics import fisher_ratio, fisher_ratio_from_distances
from cmhash.metrics.discrimination import sample_pairs
from cmhash.metrics.relevance import prepare


def test_formula_matches_the_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos, neg = rng.integers(0, 10, 37), rng.integers(5, 30, 50)
        assert fisher_ratio_from_distances(pos, neg) == pytest.approx(fisher_reference(pos, neg), rel=1e-12)
    # hand example: pos 1,3 (mean 2, var 1), neg 6,10 (mean 8, var 4): 6 / sqrt(2.5)
    assert fisher_ratio_from_distances([1, 3], [6, 10]) == pytest.approx(6 / np.sqrt(2.5))
    assert fisher_ratio_from_distances([2, 2], [5, 5]) == np.inf
    assert np.isnan(fisher_ratio_from_distances([2, 2], [2, 2]))
    with pytest.raises(ValueError, match="at least one"):
        fisher_ratio_from_distances([], [1, 2])


def test_sampled_pairs_are_of_the_right_kind():
    q, db, ql, dl = make_case(2, nq=10, ndb=50, labels="multi")
    ret = prepare(q, db, ql, dl)
    pos, neg = sample_pairs(ret, 300, np.random.default_rng(0))
    assert pos.shape == neg.shape == (300, 2)
    assert all(relevant(ql[i], dl[j]) for i, j in pos)
    assert not any(relevant(ql[i], dl[j]) for i, j in neg)
    assert pos[:, 0].max() < 10 and pos[:, 1].max() < 50


def test_positive_pairs_are_uniform_over_pairs_not_over_queries():
    # query 0 has 1 positive item, query 1 has 9, query 2 has 40: pairs per query ~ 1:9:40
    q = np.ones((3, 8))
    db = np.ones((50, 8))
    ql = np.array([0, 1, 2])
    dl = np.array([0] * 1 + [1] * 9 + [2] * 40)
    ret = prepare(q, db, ql, dl)
    pos, _ = sample_pairs(ret, 20000, np.random.default_rng(1))
    share = np.bincount(pos[:, 0], minlength=3) / 20000
    np.testing.assert_allclose(share, [1 / 50, 9 / 50, 40 / 50], atol=0.015)


def test_converges_to_the_fisher_ratio_of_all_pairs():
    q, db, ql, dl = make_case(4, nq=12, ndb=80, bits=24, flips=6)
    pq, pdb = to_pm1(q), to_pm1(db)
    pos, neg = [], []
    for i in range(len(q)):
        for j in range(len(db)):
            (pos if relevant(ql[i], dl[j]) else neg).append(distance(pq[i], pdb[j]))
    population = fisher_reference(pos, neg)
    res = fisher_ratio(q, db, ql, dl, sample_sizes=[40000], repeats=2, seed=3)
    assert res.values.shape == (1, 2)
    assert res.mean == pytest.approx(population, abs=0.03)


def test_protocol_defaults_seeding_and_summary():
    q, db, ql, dl = make_case(6, nq=20, ndb=200, bits=12, flips=3)
    a = fisher_ratio(q, db, ql, dl, seed=7)
    assert a.sample_sizes == (50, 100, 200, 400) and a.values.shape == (4, 5)
    np.testing.assert_array_equal(a.values, fisher_ratio(q, db, ql, dl, seed=7).values)
    assert not np.array_equal(a.values, fisher_ratio(q, db, ql, dl, seed=8).values)
    assert (a.std_per_size > 0).all()
    np.testing.assert_allclose(a.mean_per_size, a.values.mean(axis=1))
    assert a.mean == pytest.approx(a.values.mean()) and a.std == pytest.approx(a.values.std())
    # one cell can be reproduced on its own (its own seeded stream)
    one = fisher_ratio(q, db, ql, dl, sample_sizes=[200], repeats=3, seed=7)
    np.testing.assert_array_equal(one.values[0], a.values[2, :3])
    d = a.as_dict()
    assert d["seed"] == 7 and len(d["values"]) == 4


def test_errors():
    q, db, ql, dl = make_case(1)
    with pytest.raises(ValueError, match="no positive"):
        fisher_ratio(q, db, np.zeros_like(ql), dl, sample_sizes=[10], repeats=1)
    with pytest.raises(ValueError, match="no negative"):
        fisher_ratio(q, db, np.ones_like(ql), np.ones_like(dl), sample_sizes=[10], repeats=1)
    with pytest.raises(ValueError, match="sample_sizes"):
        fisher_ratio(q, db, ql, dl, sample_sizes=[1])
    with pytest.raises(ValueError, match="repeats"):
        fisher_ratio(q, db, ql, dl, repeats=0)
    with pytest.raises(ValueError, match="seed"):
        fisher_ratio(q, db, ql, dl, seed=-1)


def test_rare_pairs_give_up_with_a_clear_error(monkeypatch):
    from cmhash.metrics import discrimination

    monkeypatch.setattr(discrimination, "MAX_DRAWS", 4096)
    q, db = np.ones((10, 12)), np.ones((1000, 12))
    ql, dl = np.arange(10), np.r_[0, np.full(999, 99)]  # 1 positive pair in 10,000
    with pytest.raises(ValueError, match="found only .* of 50 positive pairs in 4096"):
        fisher_ratio(q, db, ql, dl, sample_sizes=[50], repeats=1)
