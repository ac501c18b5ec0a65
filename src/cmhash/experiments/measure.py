"""Everything a cell measures on a trained model: metrics, compact curves, a sample of codes.

All numbers come from cmhash.evaluation and cmhash.metrics (the definitions of PROTOCOL.md);
this module only decides what to compute, on which codes, and how to store it compactly.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from cmhash.codes import PackedCodes
from cmhash.data.dataset import CrossModalDataset
from cmhash.evaluation import direction_codes, map_by_direction
from cmhash.experiments.config import EvaluationSpec
from cmhash.methods.base import HashModel
from cmhash.metrics import fisher_ratio, ranking_report
from cmhash.metrics.kernels import distance_histograms
from cmhash.metrics.lookup import lookup_pr_from_histograms
from cmhash.metrics.ranking import tie_aware_ap_from_histograms
from cmhash.metrics.relevance import prepare

LOOKUP_RADIUS = 2  # P@H<=2 (DGHDGH Fig. 4)


def measure(model: HashModel, data: CrossModalDataset, spec: EvaluationSpec, *, seed: int) -> dict[str, Any]:
    """``{"metrics": {...}, "curves": {...}, "codes": {...}, "eval_time_s": t}`` for one model."""
    start = time.perf_counter()
    query, database = data.query, data.database
    codes = direction_codes(model, data)
    maps = map_by_direction(codes, data)
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for direction, (q_codes, db_codes) in codes.items():
        metrics[direction] = {
            "map": maps[direction]["map"],
            "queries": maps[direction]["queries"],
            "queries_without_relevant": maps[direction]["queries_without_relevant"],
        }
        lookup = _lookup(q_codes, db_codes, query.labels, database.labels)
        metrics[direction].update(lookup["metrics"])
        if spec.fisher:
            metrics[direction]["fisher"] = _fisher(q_codes, db_codes, query.labels, database.labels, spec, seed)
        if spec.curves:
            curves[direction] = {
                "pr_lookup": lookup["curve"],
                **_ranking_curves(q_codes, db_codes, query.labels, database.labels, spec),
            }
    out = {
        "metrics": metrics,
        "curves": curves,
        "codes": code_sample(model, query, spec.code_samples),
    }
    out["eval_time_s"] = round(time.perf_counter() - start, 4)
    return out


def _lookup(q: PackedCodes, db: PackedCodes, ql: np.ndarray, dl: np.ndarray) -> dict[str, Any]:
    """One pass of distance histograms: lookup PR at every radius, P@H<=2, tie-aware mAP."""
    h_all, h_rel = distance_histograms(prepare(q, db, ql, dl))
    lk = lookup_pr_from_histograms(h_all, h_rel)
    r = min(LOOKUP_RADIUS, q.nbits)
    metrics = {
        "map_tie_aware": float(tie_aware_ap_from_histograms(h_all, h_rel).mean()),
        "p_at_h2": _num(lk.precision_pooled[r]),
        "p_at_h2_macro": _num(lk.precision_macro[r]),
        "queries_without_result_h2": int(lk.queries_without_result[r]),
    }
    curve = {
        "radius": lk.radius.tolist(),
        "precision": _nums(lk.precision_pooled), "recall": _nums(lk.recall_pooled),
        "precision_macro": _nums(lk.precision_macro), "recall_macro": _nums(lk.recall_macro),
    }
    return {"metrics": metrics, "curve": curve}


def _ranking_curves(q: PackedCodes, db: PackedCodes, ql: np.ndarray, dl: np.ndarray,
                    spec: EvaluationSpec) -> dict[str, Any]:
    """PR by ranking on a recall grid and P@N / R@N on ``topn_points`` N up to ``topn_max``."""
    top = min(spec.topn_max, len(db))
    n_grid = np.unique(np.linspace(1, top, min(spec.topn_points, top)).round().astype(np.int64))
    rep = ranking_report(q, db, ql, dl, parts=("at_n", "pr"), n=n_grid,
                         recall_grid=np.linspace(0.0, 1.0, spec.recall_points))
    return {
        "pr_ranking": {"recall": _nums(rep.pr.recall), "precision": _nums(rep.pr.precision)},
        "topn": {"n": n_grid.tolist(), "precision": _nums(rep.at_n.precision),
                 "recall": _nums(rep.at_n.recall)},
    }


def _fisher(q: PackedCodes, db: PackedCodes, ql: np.ndarray, dl: np.ndarray, spec: EvaluationSpec,
            seed: int) -> dict[str, Any]:
    """Fisher ratio (DGHDGH Eq. 19) over the configured sample sizes and repeats."""
    try:
        res = fisher_ratio(q, db, ql, dl, sample_sizes=spec.fisher_sizes, repeats=spec.fisher_repeats,
                           seed=seed)
    except ValueError as exc:  # e.g. no negative pairs at all (a single class)
        return {"mean": None, "std": None, "error": str(exc)}
    return {"mean": _num(res.mean), "std": _num(res.std), "sample_sizes": list(res.sample_sizes),
            "mean_per_size": _nums(res.mean_per_size), "std_per_size": _nums(res.std_per_size)}


def _num(x: float) -> float | None:
    """A float for JSON: rounded to 6 decimals, NaN/inf (undefined) as null."""
    x = float(x)
    return round(x, 6) if np.isfinite(x) else None


def _nums(xs: np.ndarray) -> list[float | None]:
    return [_num(x) for x in np.asarray(xs, dtype=np.float64)]


def code_sample(model: HashModel, query: CrossModalDataset, n: int) -> dict[str, Any]:
    """Codes of up to ``n`` evenly spaced query items, both modalities, packed (one hex string each).

    Enough for the t-SNE figures without storing every code.
    """
    if n == 0:
        return {}
    idx = np.unique(np.linspace(0, len(query) - 1, min(n, len(query))).round().astype(int))
    out: dict[str, Any] = {"index": idx.tolist(), "labels": [np.flatnonzero(r).tolist() for r in query.labels[idx]]}
    for modality in ("image", "text"):
        codes = model.encode(modality, query.features(modality)[idx])
        out["nbits"] = codes.nbits
        out["bytes_per_code"] = codes.nbytes_per_code
        out[modality] = codes.data.tobytes().hex()
    return out


def decode_sample(sample: dict[str, Any], modality: str) -> np.ndarray:
    """The {-1,+1} codes of a stored :func:`code_sample` (items x bits)."""
    data = np.frombuffer(bytes.fromhex(sample[modality]), dtype=np.uint8)
    return PackedCodes(data.reshape(-1, int(sample["bytes_per_code"])), int(sample["nbits"])).unpack()
