"""Datasets: the dataset model, readers for the field's files, protocols, scenarios, synthetic data."""

from cmhash.data.dataset import CrossModalDataset, one_hot
from cmhash.data.protocols import BENCHMARKS, PROTOCOLS, load_dataset
from cmhash.data.readers import read_source
from cmhash.data.scenarios import SCENARIOS, apply_scenario
from cmhash.data.synthetic import make_synthetic

__all__ = [
    "CrossModalDataset",
    "one_hot",
    "make_synthetic",
    "load_dataset",
    "read_source",
    "BENCHMARKS",
    "PROTOCOLS",
    "SCENARIOS",
    "apply_scenario",
]
