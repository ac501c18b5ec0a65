"""Ranking metrics under the Hamming-ranking protocol (PROTOCOL.md).

Ranking: database items by Hamming distance ascending, ties by database index ascending (a
stable sort). Relevance: the item shares at least one label with the query. For a query with R
relevant items in the database and a ranking cut at K:

* AP@K = (1/R_K) sum_{j<=K, rel_j} P@j, with P@j = (relevant in the top j) / j and R_K the
  relevant items in the top K. R_K = 0 gives AP 0, and the query still counts in the mean.
* mAP@all: K = database size. mAP@k: K = k (the standard top-k definition, not "the first k
  relevant items anywhere").
* tie-aware AP (He et al., CVPR 2018): the expected AP@all when each group of equal distance is
  ordered uniformly at random, instead of by index.
* P@N = (relevant in the top N) / N; R@N = (relevant in the top N) / R.
* interpolated precision at recall level rho: the highest P@j over ranks j with R@j >= rho.

Codes may be :class:`~cmhash.codes.PackedCodes` or {-1,+1} / {0,1} arrays; labels multi-hot
(n x classes) or 1-D class indices. ``backend``: "auto", "numpy" or "numba" (same numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import digamma

from cmhash.codes import CodesLike
from cmhash.metrics.kernels import distance_histograms, iter_rank_stats
from cmhash.metrics.relevance import Retrieval, prepare

__all__ = [
    "MAPResult", "PrecisionRecallAtN", "PRCurve", "RankingReport",
    "mean_average_precision", "tie_aware_map", "precision_recall_at_n", "pr_curve",
    "ranking_report", "tie_aware_ap_from_histograms",
]

DEFAULT_MAX_N = 5000
DEFAULT_RECALL_GRID = np.round(np.linspace(0.0, 1.0, 11), 10)


@dataclass(frozen=True)
class MAPResult:
    """mAP over queries: ``map`` (float), ``ap`` (per query), ``queries_without_relevant``.

    ``queries_without_relevant`` counts queries with no relevant item in the top K (for
    tie-aware mAP: in the whole database); their AP is 0 and they count in the mean.
    """

    map: float
    ap: np.ndarray
    queries_without_relevant: int
    topk: int | None = None
    kind: str = "stable"  # "stable" (ties by index) or "tie-aware" (expected over tie orders)

    def as_dict(self) -> dict:
        return {"map": self.map, "topk": self.topk, "kind": self.kind, "queries": int(self.ap.size),
                "queries_without_relevant": self.queries_without_relevant}


@dataclass(frozen=True)
class PrecisionRecallAtN:
    """Mean P@N over all queries and mean R@N over queries with R > 0, for each N in ``n``."""

    n: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    queries_without_relevant: int  # excluded from the recall mean (R@N = 0/0)

    def as_dict(self) -> dict:
        return {"n": self.n, "precision": self.precision, "recall": self.recall,
                "queries_without_relevant": self.queries_without_relevant}


@dataclass(frozen=True)
class PRCurve:
    """Interpolated precision at each recall level, averaged over queries with R > 0."""

    recall: np.ndarray
    precision: np.ndarray
    queries_without_relevant: int  # excluded (recall undefined)

    def as_dict(self) -> dict:
        return {"recall": self.recall, "precision": self.precision,
                "queries_without_relevant": self.queries_without_relevant}


@dataclass(frozen=True)
class RankingReport:
    """Several ranking metrics from one pass over the data (absent parts are ``None``)."""

    map: MAPResult | None = None
    at_n: PrecisionRecallAtN | None = None
    pr: PRCurve | None = None

    def as_dict(self) -> dict:
        """Each computed part's ``as_dict()`` under its name; parts not computed are ``None``."""
        return {name: None if part is None else part.as_dict()
                for name, part in (("map", self.map), ("at_n", self.at_n), ("pr", self.pr))}


def _n_grid(n, n_db: int) -> np.ndarray:
    if n is None:
        return np.arange(1, min(DEFAULT_MAX_N, n_db) + 1, dtype=np.int64)
    grid = np.atleast_1d(np.asarray(n))
    if grid.ndim != 1 or grid.size == 0 or not np.issubdtype(grid.dtype, np.integer):
        raise ValueError(f"n: expected a non-empty 1-D array of integers, got {grid!r}")
    if (np.diff(grid) <= 0).any() or grid[0] < 1 or grid[-1] > n_db:
        raise ValueError(f"n: values must be strictly increasing in 1..{n_db} (database size), "
                         f"got {grid[0]}..{grid[-1]}")
    return grid.astype(np.int64)


def _recall_grid(grid) -> np.ndarray:
    if grid is None:
        return DEFAULT_RECALL_GRID.copy()
    grid = np.atleast_1d(np.asarray(grid, dtype=np.float64))
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"recall_grid: expected a non-empty 1-D array of finite levels, got {grid!r}")
    if (np.diff(grid) <= 0).any() or grid[0] < 0 or grid[-1] > 1:
        raise ValueError("recall_grid: levels must be strictly increasing within [0, 1]")
    return grid


def _topk(topk) -> int | None:
    if topk is None:
        return None
    if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
        raise ValueError(f"topk must be a positive integer or None, got {topk!r}")
    return int(topk)


def ranking_report(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels, *,
                   parts=("map", "at_n", "pr"), topk: int | None = None, n=None,
                   recall_grid=None, backend: str = "auto") -> RankingReport:
    """mAP@``topk`` (all if None), P@N / R@N over ``n`` and the interpolated PR curve, in one pass.

    ``parts``: which of "map", "at_n", "pr" to compute. ``n`` defaults to 1..min(5000, n_db);
    ``recall_grid`` to 0, 0.1, ..., 1. See the module docstring for definitions.
    """
    unknown = set(parts) - {"map", "at_n", "pr"}
    if unknown:
        raise ValueError(f"parts: unknown {sorted(unknown)}; choose from 'map', 'at_n', 'pr'")
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    return _ranking(ret, topk=_topk(topk), want_map="map" in parts,
                    n_grid=_n_grid(n, ret.n_db) if "at_n" in parts else None,
                    recall_grid=_recall_grid(recall_grid) if "pr" in parts else None,
                    backend=backend)


def _ranking(ret: Retrieval, *, topk, want_map, n_grid, recall_grid, backend) -> RankingReport:
    k = ret.n_db if topk is None else min(topk, ret.n_db)
    ap = np.zeros(ret.n_query)
    without_k = without_all = 0
    g = 0 if n_grid is None else n_grid.size
    p_sum, r_sum = np.zeros(g, np.int64), np.zeros(g)
    pr_sum = np.zeros(0 if recall_grid is None else recall_grid.size)
    for sl, st in iter_rank_stats(ret, k=k, want_ap=want_map, n_grid=n_grid,
                                  recall_grid=recall_grid, backend=backend):
        ap[sl] = st.ap
        without_k += int((st.relevant_at_k == 0).sum())
        has = st.relevant > 0
        without_all += int((~has).sum())
        if g:
            p_sum += st.hits.sum(axis=0)
            r_sum += (st.hits[has] / st.relevant[has, None]).sum(axis=0)
        if pr_sum.size:
            pr_sum += st.interp_precision[has].sum(axis=0)
    n_rel = ret.n_query - without_all
    return RankingReport(
        map=MAPResult(float(ap.mean()), ap, without_k, topk) if want_map else None,
        at_n=PrecisionRecallAtN(n_grid, p_sum / (n_grid * ret.n_query),
                                r_sum / n_rel if n_rel else np.full(g, np.nan), without_all)
        if g else None,
        pr=PRCurve(recall_grid, pr_sum / n_rel if n_rel else np.full(pr_sum.size, np.nan),
                   without_all) if pr_sum.size else None,
    )


def mean_average_precision(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels,
                           topk: int | None = None, *, backend: str = "auto") -> MAPResult:
    """mAP@all (``topk=None``) or mAP@k over the stable Hamming ranking.

    AP = (1/R_K) sum_{j<=K, rel_j} (relevant in top j)/j with R_K the relevant items in the top
    K (K = database size, or ``topk``); a query with R_K = 0 has AP 0 and counts in the mean.
    Relevance: any shared label. Ties: database index ascending.
    """
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    return _ranking(ret, topk=_topk(topk), want_map=True, n_grid=None,
                    recall_grid=None, backend=backend).map


def precision_recall_at_n(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels,
                          n=None, *, backend: str = "auto") -> PrecisionRecallAtN:
    """P@N (mean over all queries) and R@N (mean over queries with a relevant item) for each N.

    P@N = (relevant in the stable top N) / N; R@N = (relevant in the top N) / R. ``n``: strictly
    increasing integers in 1..n_db; default 1..min(5000, n_db) (the DEMO/HINT figures).
    """
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    return _ranking(ret, topk=None, want_map=False, n_grid=_n_grid(n, ret.n_db),
                    recall_grid=None, backend=backend).at_n


def pr_curve(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels,
             recall_grid=None, *, backend: str = "auto") -> PRCurve:
    """Precision-recall curve by ranking, interpolated on a recall grid (DCGH figures).

    Per query, precision at level rho = max P@j over ranks j with R@j >= rho (the standard
    interpolation, so curves are non-increasing); averaged over queries with R > 0. Queries
    with no relevant item are excluded and counted. Default grid: 0, 0.1, ..., 1.
    """
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    return _ranking(ret, topk=None, want_map=False, n_grid=None,
                    recall_grid=_recall_grid(recall_grid), backend=backend).pr


def tie_aware_ap_from_histograms(h_all: np.ndarray, h_rel: np.ndarray) -> np.ndarray:
    """Tie-aware AP@all per query from the distance histograms (He et al., CVPR 2018).

    In a tie group of n items (m relevant) preceded by B items (B+ relevant), a relevant item
    lands at each position t = B+1..B+n with probability 1/n and then has, in expectation,
    (t-B-1)(m-1)/(n-1) other relevant items of its group before it, so
    E[sum over the group of P@rank] = (m/n) sum_t (B+ + 1 + (t-B-1)c)/t with c = (m-1)/(n-1)
    = (m/n) [(B+ + 1 - (B+1)c)(H(B+n) - H(B)) + c n], H the harmonic numbers. AP = that sum
    over groups / R; 0 when R = 0.
    """
    h_all = np.asarray(h_all, dtype=np.float64)
    h_rel = np.asarray(h_rel, dtype=np.float64)
    before = np.cumsum(h_all, axis=1) - h_all
    before_rel = np.cumsum(h_rel, axis=1) - h_rel
    groups = h_rel > 0
    n, m, b, bp = h_all[groups], h_rel[groups], before[groups], before_rel[groups]
    c = np.where(n > 1, (m - 1) / np.maximum(n - 1, 1), 0.0)
    dh = digamma(b + n + 1) - digamma(b + 1)  # H(B+n) - H(B)
    term = np.zeros_like(h_all)
    term[groups] = (m / n) * ((bp + 1 - (b + 1) * c) * dh + c * n)
    r = h_rel.sum(axis=1)
    return np.divide(term.sum(axis=1), r, out=np.zeros(r.shape), where=r > 0)


def tie_aware_map(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels, *,
                  backend: str = "auto") -> MAPResult:
    """Tie-aware mAP@all (He et al., CVPR 2018): the expected AP@all, per query, when items at equal
    Hamming distance are ordered uniformly at random; report it beside the stable mAP.

    Queries without any relevant item have AP 0 and count (as for the stable mAP).
    """
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    h_all, h_rel = distance_histograms(ret, backend=backend)
    ap = tie_aware_ap_from_histograms(h_all, h_rel)
    return MAPResult(float(ap.mean()), ap, int((h_rel.sum(axis=1) == 0).sum()), None, "tie-aware")
