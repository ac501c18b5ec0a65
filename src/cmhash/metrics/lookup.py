"""Hash-lookup metrics (PROTOCOL.md): what a query retrieves within Hamming radius r.

For radius r, query q retrieves the items with distance <= r; of them rel_q(r) are relevant,
out of R_q relevant items in the database. Two ways to average over queries:

* pooled: precision(r) = sum_q rel_q(r) / sum_q retrieved_q(r); recall(r) = sum_q rel_q(r) / sum_q R_q.
* macro: precision(r) = mean of rel_q(r) / retrieved_q(r) over the queries that retrieve something
  (the others are excluded and counted in ``queries_without_result``); recall(r) = mean of
  rel_q(r) / R_q over the queries with R_q > 0.

A precision with nothing to average (no query retrieves anything) is NaN, not 0.
P@H<=r (e.g. DGHDGH Eq. 18 with r = 2) is the precision at radius r.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmhash.codes import CodesLike
from cmhash.metrics.kernels import distance_histograms
from cmhash.metrics.relevance import prepare

__all__ = ["LookupPR", "RadiusPrecision", "lookup_pr", "lookup_pr_from_histograms",
           "precision_at_radius"]


@dataclass(frozen=True)
class LookupPR:
    """Lookup precision/recall for each radius 0..L (arrays of length L+1)."""

    radius: np.ndarray
    precision_pooled: np.ndarray
    recall_pooled: np.ndarray
    precision_macro: np.ndarray
    recall_macro: np.ndarray
    queries_without_result: np.ndarray  # per radius: queries that retrieve nothing
    queries_without_relevant: int  # R_q = 0: excluded from the macro recall
    n_query: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class RadiusPrecision:
    """P@H<=r: precision within Hamming radius r, pooled and macro-averaged."""

    radius: int
    pooled: float
    macro: float
    queries_without_result: int  # excluded from ``macro``
    n_query: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den > 0)


def lookup_pr_from_histograms(h_all: np.ndarray, h_rel: np.ndarray) -> LookupPR:
    """Lookup PR from per-query counts of all / relevant items at each distance (n_query x (L+1))."""
    retrieved = np.cumsum(h_all, axis=1)
    rel_ret = np.cumsum(h_rel, axis=1)
    r_q = rel_ret[:, -1]
    has_result = retrieved > 0
    has_rel = r_q > 0
    per_q_precision = _ratio(rel_ret, retrieved)
    n_result = has_result.sum(axis=0)
    macro_p = _ratio(np.where(has_result, per_q_precision, 0.0).sum(axis=0), n_result)
    macro_r = (rel_ret[has_rel] / r_q[has_rel, None]).sum(axis=0) / has_rel.sum() if has_rel.any() \
        else np.full(h_all.shape[1], np.nan)
    return LookupPR(
        radius=np.arange(h_all.shape[1]),
        precision_pooled=_ratio(rel_ret.sum(axis=0), retrieved.sum(axis=0)),
        recall_pooled=_ratio(rel_ret.sum(axis=0), np.full(h_all.shape[1], r_q.sum())),
        precision_macro=macro_p,
        recall_macro=macro_r,
        queries_without_result=h_all.shape[0] - n_result,
        queries_without_relevant=int((~has_rel).sum()),
        n_query=h_all.shape[0],
    )


def lookup_pr(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels, *,
              backend: str = "auto") -> LookupPR:
    """Precision and recall of hash lookup at every radius r = 0..L, pooled and macro (see module)."""
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    return lookup_pr_from_histograms(*distance_histograms(ret, backend=backend))


def precision_at_radius(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels,
                        radius: int = 2, *, backend: str = "auto") -> RadiusPrecision:
    """P@H<=r = relevant retrieved / retrieved within Hamming distance ``radius`` (DGHDGH Eq. 18).

    ``pooled`` sums over queries before dividing; ``macro`` averages per-query precision over the
    queries that retrieve something (the rest are counted in ``queries_without_result``). A radius
    beyond the code length retrieves everything.
    """
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    lk = lookup_pr_from_histograms(*distance_histograms(ret, backend=backend))
    r = min(int(radius), ret.nbits)
    return RadiusPrecision(int(radius), float(lk.precision_pooled[r]), float(lk.precision_macro[r]),
                           int(lk.queries_without_result[r]), ret.n_query)
