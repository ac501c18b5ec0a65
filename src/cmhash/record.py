"""The run record of PROTOCOL.md: everything needed to reproduce or audit a number."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from typing import Any

import numpy as np

METRIC_DEFINITIONS = {
    "relevance": "query and database item share at least one label",
    "ranking": "Hamming distance ascending, ties by database index ascending (stable)",
    "ap": "(1/R_K) sum_{j<=K, rel_j} P@j; a query with no relevant item in the top K has AP 0 and counts",
    "map_at_k": "top-k AP: K = k (not 'the first k relevant items anywhere')",
    "sign": "sign(0) = +1",
}


def versions() -> dict[str, str]:
    """Versions of Python, the platform and the libraries that shape results."""
    from cmhash import __version__

    out = {
        "cmhash": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
    }
    for mod in ("scipy", "torch", "numba", "h5py"):
        module = sys.modules.get(mod)
        if module is not None:
            out[mod] = getattr(module, "__version__", "?")
    return out


def run_record(
    *,
    method: str,
    hparams: dict[str, Any],
    bits: int,
    seed: int,
    dataset: Any = None,
    dataset_checksum: str | None = None,
    wall_time_s: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A JSON-ready record of one training run (``dataset_checksum``: ``dataset.checksum()``, if
    the caller has it already)."""
    rec: dict[str, Any] = {
        "method": method,
        "hparams": dict(hparams),
        "bits": int(bits),
        "seed": int(seed),
        "versions": versions(),
        "metric_definitions": METRIC_DEFINITIONS,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if dataset is not None:
        rec["dataset"] = {
            "name": dataset.name,
            "n": len(dataset),
            "checksum": dataset.checksum() if dataset_checksum is None else dataset_checksum,
            **{k: v for k, v in dataset.info.items() if isinstance(v, (str, int, float, bool, type(None), dict, list))},
        }
    if wall_time_s is not None:
        rec["wall_time_s"] = round(float(wall_time_s), 4)
    rec.update(extra)
    return rec
