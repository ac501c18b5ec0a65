"""Datasets: the dataset model, readers for the field's files, protocols, scenarios, synthetic data."""

from cmhash.data.dataset import CrossModalDataset, one_hot
from cmhash.data.synthetic import make_synthetic

__all__ = ["CrossModalDataset", "one_hot", "make_synthetic"]
