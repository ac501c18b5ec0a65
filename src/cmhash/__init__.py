"""cmhash: cross-modal hashing — paper methods, an exact evaluation protocol, Hamming search."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"

# Public names, imported on first use so `import cmhash` stays light (no torch, no scipy).
_LAZY = {
    "CrossModalDataset": "cmhash.data.dataset",
    "make_synthetic": "cmhash.data.synthetic",
    "load_dataset": "cmhash.data.protocols",
    "PackedCodes": "cmhash.codes",
    "HashingMethod": "cmhash.methods.base",
    "HashModel": "cmhash.methods.base",
    "get_method": "cmhash.methods.registry",
    "list_methods": "cmhash.methods.registry",
    "register_method": "cmhash.methods.registry",
    "mean_average_precision": "cmhash.metrics.ranking",
    "tie_aware_map": "cmhash.metrics.ranking",
    "precision_recall_at_n": "cmhash.metrics.ranking",
    "pr_curve": "cmhash.metrics.ranking",
    "ranking_report": "cmhash.metrics.ranking",
    "lookup_pr": "cmhash.metrics.lookup",
    "precision_at_radius": "cmhash.metrics.lookup",
    "fisher_ratio": "cmhash.metrics.discrimination",
    "evaluate": "cmhash.evaluation",
    "HammingIndex": "cmhash.index",
}


__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    # subpackages, also imported on first use: `import cmhash; cmhash.metrics.ranking_report(...)`
    if not name.startswith("_") and importlib.util.find_spec(f"cmhash.{name}") is not None:
        return importlib.import_module(f"cmhash.{name}")
    raise AttributeError(f"module 'cmhash' has no attribute '{name}'")
