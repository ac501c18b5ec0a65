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
from cmhash.evaluation import DIRECTIONS, database_codes, evaluate
from cmhash.experiments.config import EvaluationSpec
from cmhash.methods.base import HashModel


def measure(model: HashModel, data: CrossModalDataset, spec: EvaluationSpec, *, seed: int) -> dict[str, Any]:
    """``{"metrics": {...}, "curves": {...}, "codes": {...}, "eval_time_s": t}`` for one model."""
    start = time.perf_counter()
    query, database = data.query, data.database
    maps = evaluate(model, data)
    metrics: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for direction, (q_mod, db_mod) in DIRECTIONS.items():
        metrics[direction] = {
            "map": maps[direction]["map"],
            "queries": maps[direction]["queries"],
            "queries_without_relevant": maps[direction]["queries_without_relevant"],
        }
    out = {
        "metrics": metrics,
        "curves": curves,
        "codes": code_sample(model, query, spec.code_samples),
    }
    out["eval_time_s"] = round(time.perf_counter() - start, 4)
    return out


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
