"""Shared parts of the deep methods (needs torch: ``pip install cmhash[deep]``).

- :mod:`cmhash.nn.networks` — per-modality hash MLPs (tanh while training, sign at inference)
  and their conversion to/from plain numpy arrays for saving.
- :mod:`cmhash.nn.engine` — :class:`DeepHashingMethod` (one training loop: seeded batches,
  optimisers, schedule, device, validation split, early stopping, progress) and
  :class:`DeepHashModel` (what it returns).
- :mod:`cmhash.nn.losses` — pairwise similarities and triplet losses built without B^3 tensors.

A deep method module subclasses :class:`DeepHashingMethod` and implements only its per-batch
loss (plus optional hooks); nothing outside this package and the deep method modules imports
torch.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "cmhash's deep methods need PyTorch: install it with `pip install cmhash[deep]` "
        "(or the CPU wheel from pytorch.org first)"
    ) from exc

from cmhash.nn.engine import Batch, DeepHashingMethod, DeepHashModel, LossPlugin, TrainContext
from cmhash.nn.networks import HashMLP, HashNetworks

__all__ = [
    "Batch",
    "DeepHashingMethod",
    "DeepHashModel",
    "HashMLP",
    "HashNetworks",
    "LossPlugin",
    "TrainContext",
]
