"""Evaluation metrics, each defined as in PROTOCOL.md and tested against a brute force."""

from cmhash.metrics.ranking import MAPResult, mean_average_precision

__all__ = ["MAPResult", "mean_average_precision"]
