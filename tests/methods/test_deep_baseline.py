"""The plain deep baseline's loss against an explicit triplet loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.methods.deep_baseline import PAIRS, real_triplet_loss  # noqa: E402


def test_real_triplet_loss_is_the_sum_of_four_cubic_losses():
    rng = np.random.default_rng(0)
    b, k = 7, 6
    codes = {m: torch.tanh(torch.tensor(rng.standard_normal((b, k)))) for m in ("image", "text")}
    labels = torch.tensor(rng.integers(0, 2, (b, 3)), dtype=torch.float64)
    labels[labels.sum(1) == 0, 1] = 1
    want = 0.0
    for u, v in PAIRS:
        cu = codes[u].numpy() / np.linalg.norm(codes[u].numpy(), axis=1, keepdims=True)
        cv = codes[v].numpy() / np.linalg.norm(codes[v].numpy(), axis=1, keepdims=True)
        d = 1 - cu @ cv.T
        rel = labels.numpy() @ labels.numpy().T > 0
        hinges = [d[a, p] - d[a, n] + 0.25 for a, p, n in itertools.product(range(b), repeat=3)
                  if rel[a, p] and not rel[a, n]]
        act = [h for h in hinges if h > 0]
        want += sum(act) / max(len(act), 1)
    assert float(real_triplet_loss(codes, labels, 0.25)) == pytest.approx(want)
