"""Discrimination of a Hamming space: the Fisher ratio of DGHDGH (Appendix B.1.3, Eq. 19).

    Fisher = (mu_neg - mu_pos) / sqrt((sigma_pos^2 + sigma_neg^2) / 2)

over the Hamming distances of sampled positive (sharing a label) and negative (query, database)
pairs, anchors from the query set. Protocol: for each sample size n in 50/100/200/400, draw n
positive and n negative pairs, 5 repeats with different seeds; report mean +- std. The paper's
Table 2 prints the ratio x 100 ("%").

Sampling here: pairs uniform over all positive (resp. negative) (query, item) pairs, with
replacement, by rejection from uniform pairs. Repeat j of sample size n draws from
``np.random.default_rng([seed, n, j])``, so any one number can be reproduced on its own.
sigma is the population standard deviation (ddof = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmhash.codes import CodesLike
from cmhash.metrics.relevance import Retrieval, prepare, relevance_matrix

__all__ = ["FisherResult", "fisher_ratio", "fisher_ratio_from_distances", "sample_pairs"]

DEFAULT_SAMPLE_SIZES = (50, 100, 200, 400)
MAX_DRAWS = 20_000_000  # uniform pairs tried before giving up on a rare side


@dataclass(frozen=True)
class FisherResult:
    """Fisher ratios: ``values[i, j]`` for sample size ``sample_sizes[i]``, repeat ``j``."""

    sample_sizes: tuple[int, ...]
    values: np.ndarray
    seed: int

    @property
    def mean(self) -> float:
        """Mean over every sample size and repeat (the paper's headline number)."""
        return float(self.values.mean())

    @property
    def std(self) -> float:
        return float(self.values.std())

    @property
    def mean_per_size(self) -> np.ndarray:
        return self.values.mean(axis=1)

    @property
    def std_per_size(self) -> np.ndarray:
        return self.values.std(axis=1)

    def as_dict(self) -> dict:
        return {"sample_sizes": list(self.sample_sizes), "values": self.values, "seed": self.seed,
                "mean": self.mean, "std": self.std, "mean_per_size": self.mean_per_size,
                "std_per_size": self.std_per_size}


def fisher_ratio_from_distances(pos: np.ndarray, neg: np.ndarray) -> float:
    """Eq. 19 on given distances; +inf / NaN when both spreads are 0 (means apart / equal)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("fisher_ratio_from_distances: need at least one positive and one negative distance")
    pooled = np.sqrt((pos.var() + neg.var()) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float((neg.mean() - pos.mean()) / pooled)


def _pair_distances(ret: Retrieval, qi: np.ndarray, di: np.ndarray) -> np.ndarray:
    diff = ret.query.data[qi] ^ ret.database.data[di]
    return np.bitwise_count(diff).sum(axis=1, dtype=np.int64)


def _kinds_present(ret: Retrieval) -> dict[bool, bool]:
    """Whether positive / negative pairs exist, checked exactly over distinct label patterns
    (skipped, {} returned, when there are too many patterns to compare cheaply)."""
    uq = np.unique(ret.query_masks, axis=0)
    ud = np.unique(ret.db_masks, axis=0)
    if uq.shape[0] * ud.shape[0] > 4_000_000:
        return {}
    rel = relevance_matrix(uq, ud)
    return {True: bool(rel.any()), False: bool(not rel.all())}


def sample_pairs(ret: Retrieval, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` positive and ``n`` negative (query, item) pairs, uniform over each kind, with replacement.

    Returns (pos, neg), each (n x 2) int64 of (query index, database index).
    """
    exists = _kinds_present(ret)
    for kind, name in ((True, "positive"), (False, "negative")):
        if exists.get(kind) is False:
            raise ValueError(f"fisher_ratio: there are no {name} (query, item) pairs to sample")
    found = {True: [], False: []}
    count = {True: 0, False: 0}
    drawn = 0
    batch = max(4096, 8 * n)
    while min(count.values()) < n and drawn < MAX_DRAWS:
        qi = rng.integers(0, ret.n_query, batch)
        di = rng.integers(0, ret.n_db, batch)
        rel = ((ret.query_masks[qi] & ret.db_masks[di]) != 0).any(axis=1)
        for kind in (True, False):
            if count[kind] < n:
                sel = np.flatnonzero(rel == kind)[: n - count[kind]]
                found[kind].append(np.stack([qi[sel], di[sel]], axis=1))
                count[kind] += sel.size
        drawn += batch
    for kind, name in ((True, "positive"), (False, "negative")):
        if count[kind] < n:
            raise ValueError(f"fisher_ratio: found only {count[kind]} of {n} {name} pairs in {drawn} "
                             f"random (query, item) pairs; {name} pairs are absent or too rare")
    return np.concatenate(found[True]), np.concatenate(found[False])


def fisher_ratio(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels, *,
                 sample_sizes=DEFAULT_SAMPLE_SIZES, repeats: int = 5, seed: int = 0) -> FisherResult:
    """Fisher ratio (DGHDGH Eq. 19) of sampled positive/negative pairs; see the module docstring."""
    sizes = tuple(int(s) for s in np.atleast_1d(sample_sizes))
    if not sizes or min(sizes) < 2:
        raise ValueError(f"sample_sizes: need sizes >= 2, got {sample_sizes!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    ret = prepare(query_codes, db_codes, query_labels, db_labels)
    values = np.empty((len(sizes), repeats))
    for i, n in enumerate(sizes):
        for j in range(repeats):
            pos, neg = sample_pairs(ret, n, np.random.default_rng([int(seed), n, j]))
            values[i, j] = fisher_ratio_from_distances(_pair_distances(ret, *pos.T),
                                                       _pair_distances(ret, *neg.T))
    return FisherResult(sizes, values, int(seed))
