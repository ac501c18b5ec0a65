"""Evaluation metrics, each defined as in PROTOCOL.md and tested against a brute force.

* ranking (Hamming ranking, ties by database index): :func:`mean_average_precision` (mAP@all,
  mAP@k), :func:`tie_aware_map`, :func:`precision_recall_at_n`, :func:`pr_curve`, and
  :func:`ranking_report` for several of them in one pass;
* lookup (Hamming radius): :func:`lookup_pr` (r = 0..L, pooled and macro), :func:`precision_at_radius`
  (P@H<=r);
* discrimination: :func:`fisher_ratio` (DGHDGH Eq. 19).

All take (query_codes, db_codes, query_labels, db_labels); codes packed or as {-1,+1} / {0,1}
arrays, labels multi-hot or 1-D class indices. Definitions: docs/evaluation.md.
"""

from cmhash.metrics.discrimination import FisherResult, fisher_ratio, fisher_ratio_from_distances
from cmhash.metrics.lookup import LookupPR, RadiusPrecision, lookup_pr, precision_at_radius
from cmhash.metrics.ranking import (
    MAPResult,
    PRCurve,
    PrecisionRecallAtN,
    RankingReport,
    mean_average_precision,
    pr_curve,
    precision_recall_at_n,
    ranking_report,
    tie_aware_map,
)

__all__ = [
    "FisherResult", "LookupPR", "MAPResult", "PRCurve", "PrecisionRecallAtN", "RadiusPrecision",
    "RankingReport", "fisher_ratio", "fisher_ratio_from_distances", "lookup_pr",
    "mean_average_precision", "pr_curve", "precision_at_radius", "precision_recall_at_n",
    "ranking_report", "tie_aware_map",
]
