"""Ranking metrics under the Hamming-ranking protocol (PROTOCOL.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmhash.codes import CodesLike, iter_hamming_blocks


@dataclass(frozen=True)
class MAPResult:
    """mAP over queries: ``map`` (float), ``ap`` (per query), ``queries_without_relevant``."""

    map: float
    ap: np.ndarray
    queries_without_relevant: int
    topk: int | None = None

    def as_dict(self) -> dict:
        return {"map": self.map, "topk": self.topk, "queries": int(self.ap.size),
                "queries_without_relevant": self.queries_without_relevant}


def _check_labels(query_labels, db_labels, nq: int, ndb: int) -> tuple[np.ndarray, np.ndarray]:
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    if ql.ndim == 1:
        ql = ql[:, None]
    if dl.ndim == 1:
        dl = dl[:, None]
    if ql.shape[0] != nq:
        raise ValueError(f"query_labels has {ql.shape[0]} rows but there are {nq} query codes")
    if dl.shape[0] != ndb:
        raise ValueError(f"db_labels has {dl.shape[0]} rows but there are {ndb} database codes")
    if ql.shape[1] != dl.shape[1]:
        raise ValueError(f"query_labels has {ql.shape[1]} classes but db_labels has {dl.shape[1]}")
    return ql, dl


def mean_average_precision(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels,
                           topk: int | None = None) -> MAPResult:
    """mAP@all (``topk=None``) or mAP@k over the stable Hamming ranking.

    AP = (1/R_K) sum_{j<=K, rel_j} (relevant in top j)/j with R_K the relevant items in the top
    K; a query with R_K = 0 has AP 0 and counts in the mean. Relevance: any shared label.
    """
    from cmhash.codes import as_packed

    q, db = as_packed(query_codes, name="query codes"), as_packed(db_codes, name="database codes")
    ql, dl = _check_labels(query_labels, db_labels, len(q), len(db))
    k = len(db) if topk is None else min(int(topk), len(db))
    if k < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    ap = np.zeros(len(q))
    without = 0
    dlf = dl.astype(np.float32)
    ranks = np.arange(1, k + 1)
    for sl, dist in iter_hamming_blocks(q, db, block=64):
        rel_all = (ql[sl].astype(np.float32) @ dlf.T) > 0
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        rel = np.take_along_axis(rel_all, order, axis=1)
        hits = np.cumsum(rel, axis=1)
        r = hits[:, -1]
        num = (rel * hits / ranks).sum(axis=1)
        ap[sl] = np.where(r > 0, num / np.maximum(r, 1), 0.0)
        without += int((r == 0).sum())
    return MAPResult(float(ap.mean()) if ap.size else 0.0, ap, without, topk)
