"""Brute-force references for the metrics, written as plainly as possible (loops, no tricks).

Each function follows the PROTOCOL.md definition word for word; tests compare cmhash.metrics
with them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cmhash.codes import pack
from cmhash.metrics.kernels import numba_available


def to_pm1(codes):
    codes = np.asarray(codes)
    return np.where(codes > 0, 1, -1)


def distance(a, b) -> int:
    return sum(1 for x, y in zip(a, b) if x != y)


def relevant(ql, dl) -> bool:
    """Share at least one label (multi-hot rows) or the same class (scalars)."""
    if np.ndim(ql) == 0:
        return ql == dl
    return any(x == 1 and y == 1 for x, y in zip(ql, dl))


def stable_ranking(q, db):
    """(database indices by distance then index, their relevance is computed by the caller)."""
    d = [distance(q, x) for x in db]
    return sorted(range(len(db)), key=lambda j: (d[j], j)), d


def average_precision(rel_in_order, k=None) -> float:
    """(1/R_K) sum_{j<=K, rel_j} (hits in top j)/j; 0 when R_K = 0."""
    if k is not None:
        rel_in_order = rel_in_order[:k]
    hits, total = 0, 0.0
    for j, r in enumerate(rel_in_order, start=1):
        if r:
            hits += 1
            total += hits / j
    return total / hits if hits else 0.0


def ranked_relevance(q_codes, db_codes, q_labels, db_labels):
    """For each query: relevance of the database items in stable ranking order, and distances."""
    q_codes, db_codes = to_pm1(q_codes), to_pm1(db_codes)
    out = []
    for i in range(len(q_codes)):
        order, d = stable_ranking(q_codes[i], db_codes)
        out.append(([relevant(q_labels[i], db_labels[j]) for j in order], [d[j] for j in order]))
    return out


def map_reference(q_codes, db_codes, q_labels, db_labels, k=None):
    aps = [average_precision(rel, k) for rel, _ in ranked_relevance(q_codes, db_codes, q_labels, db_labels)]
    return float(np.mean(aps)), aps


def tie_aware_ap_reference(rel_in_order, dist_in_order) -> float:
    """Mean AP@all over every ordering of the items inside each tie group (tiny inputs only)."""
    groups = [[r for _, r in g] for _, g in itertools.groupby(zip(dist_in_order, rel_in_order),
                                                            key=lambda t: t[0])]
    aps = [average_precision([r for perm in combo for r in perm])
           for combo in itertools.product(*[itertools.permutations(g) for g in groups])]
    return sum(aps) / len(aps)


def precision_recall_at_n_reference(q_codes, db_codes, q_labels, db_labels, ns):
    ranked = ranked_relevance(q_codes, db_codes, q_labels, db_labels)
    prec, rec = [], []
    for n in ns:
        prec.append(np.mean([sum(rel[:n]) / n for rel, _ in ranked]))
        with_rel = [sum(rel[:n]) / sum(rel) for rel, _ in ranked if sum(rel) > 0]
        rec.append(np.mean(with_rel) if with_rel else np.nan)
    return np.array(prec), np.array(rec)


def interpolated_pr_reference(q_codes, db_codes, q_labels, db_labels, grid):
    """Per query with R > 0: max over ranks j with recall@j >= rho of precision@j; then the mean."""
    curves = []
    for rel, _ in ranked_relevance(q_codes, db_codes, q_labels, db_labels):
        total = sum(rel)
        if total == 0:
            continue
        hits, points = 0, []
        for j, r in enumerate(rel, start=1):
            hits += r
            points.append((hits / total, hits / j))
        curves.append([max(p for rc, p in points if rc >= rho) for rho in grid])
    return np.mean(curves, axis=0) if curves else np.full(len(grid), np.nan)


def lookup_reference(q_codes, db_codes, q_labels, db_labels, radius):
    """(pooled P, pooled R, macro P, macro R, queries retrieving nothing) at one radius."""
    q_codes, db_codes = to_pm1(q_codes), to_pm1(db_codes)
    sum_ret = sum_relret = sum_rel = 0
    per_p, per_r, empty = [], [], 0
    for i in range(len(q_codes)):
        ret = relret = rel_total = 0
        for j in range(len(db_codes)):
            rel = relevant(q_labels[i], db_labels[j])
            rel_total += rel
            if distance(q_codes[i], db_codes[j]) <= radius:
                ret += 1
                relret += rel
        sum_ret += ret
        sum_relret += relret
        sum_rel += rel_total
        if ret:
            per_p.append(relret / ret)
        else:
            empty += 1
        if rel_total:
            per_r.append(relret / rel_total)
    pooled_p = sum_relret / sum_ret if sum_ret else np.nan
    pooled_r = sum_relret / sum_rel if sum_rel else np.nan
    macro_p = np.mean(per_p) if per_p else np.nan
    macro_r = np.mean(per_r) if per_r else np.nan
    return pooled_p, pooled_r, macro_p, macro_r, empty


def fisher_reference(pos, neg) -> float:
    mp, mn = sum(pos) / len(pos), sum(neg) / len(neg)
    vp = sum((x - mp) ** 2 for x in pos) / len(pos)
    vn = sum((x - mn) ** 2 for x in neg) / len(neg)
    return (mn - mp) / ((vp + vn) / 2) ** 0.5


# --- test cases ---------------------------------------------------------------------------

BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(
    not numba_available(), reason="numba not installed (extra 'fast')"))]


def make_case(seed, *, nq=8, ndb=60, bits=12, labels="multi", classes=5, prototypes=4, flips=2):
    """Clustered codes (many ties) and labels; query 0 gets a class no database item has."""
    rng = np.random.default_rng(seed)
    protos = rng.choice([-1, 1], size=(prototypes, bits))

    def draw(n):
        codes = protos[rng.integers(0, prototypes, n)].copy()
        for row in codes:
            row[rng.integers(0, bits, rng.integers(0, flips + 1))] *= -1
        return codes.astype(np.int8)

    q, db = draw(nq), draw(ndb)
    if labels == "single":
        ql = rng.integers(0, classes, nq)
        dl = rng.integers(0, classes, ndb)
        ql[0] = classes + 3  # absent from the database
    else:
        ql = (rng.random((nq, classes + 1)) < 0.3).astype(np.uint8)
        dl = (rng.random((ndb, classes + 1)) < 0.3).astype(np.uint8)
        dl[:, -1] = 0
        ql[0] = 0
        ql[0, -1] = 1  # only the class nobody in the database has
    return q, db, ql, dl


def code_form(codes, form):
    return {"pm1": codes, "01": (codes > 0).astype(np.uint8), "packed": pack(codes)}[form]
