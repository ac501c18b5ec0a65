"""make_synthetic: shapes, determinism, labels, splits, and class structure that methods can learn."""

from __future__ import annotations

import numpy as np
import pytest

from cmhash.data.synthetic import make_synthetic


def test_shapes_splits_and_labels():
    data = make_synthetic(500, image_dim=20, text_dim=12, num_classes=7, max_labels=3, seed=1)
    assert data.image.shape == (500, 20) and data.text.shape == (500, 12) and data.labels.shape == (500, 7)
    counts = data.labels.sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and (counts > 1).any()  # multi-label, never empty
    assert (data.text >= 0).all()  # tag/topic-like text
    assert (len(data.query), len(data.database), len(data.train)) == (50, 450, 450)
    assert data.train.checksum() == data.database.checksum()
    q = {r.tobytes() for r in data.query.image}
    assert not q & {r.tobytes() for r in data.database.image}  # query and database disjoint
    assert len(q) + len(data.database) == 500
    assert data.info["generator"]["seed"] == 1
    assert len(make_synthetic(100, n_query=30).query) == 30


def test_deterministic_per_seed():
    a, b, c = make_synthetic(300, seed=4), make_synthetic(300, seed=4), make_synthetic(300, seed=5)
    assert a.checksum() == b.checksum() != c.checksum()


def _mean_distances(x, labels):
    sq = (x**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0))
    share = (labels @ labels.T) > 0
    off = ~np.eye(len(x), dtype=bool)
    return dist[share & off].mean(), dist[~share].mean()


@pytest.mark.parametrize("modality", ["image", "text"])
def test_items_sharing_a_label_are_closer(modality):
    data = make_synthetic(600, seed=2)
    same, other = _mean_distances(data.features(modality).astype(np.float64), data.labels.astype(np.float64))
    assert same < 0.9 * other


def test_single_label_option_and_errors():
    data = make_synthetic(200, max_labels=1, num_classes=4)
    assert (data.labels.sum(1) == 1).all()
    with pytest.raises(ValueError, match="n must be >= 10"):
        make_synthetic(5)
    with pytest.raises(ValueError, match=r"max_labels must be in 1..num_classes \(4\), got 5"):
        make_synthetic(100, num_classes=4, max_labels=5)
    with pytest.raises(ValueError, match="n_query must be in 1..99"):
        make_synthetic(100, n_query=100)
    with pytest.raises(ValueError, match="text_dim must be >= 1"):
        make_synthetic(100, text_dim=0)
    with pytest.raises(ValueError, match="item_noise must be >= 0"):
        make_synthetic(100, item_noise=-1)
