"""A synthetic cross-modal benchmark with realistic structure, for the demo, tests and benchmarks.

Each item draws 1..``max_labels`` classes (multi-label, class frequencies skewed); a shared
latent vector is the mean of its classes' centroids plus item noise; each modality sees that
latent through its own random map (the modality gap) with its own noise, and text features are
non-negative (topic/tag-like). Everything is a pure function of the arguments and ``seed``.
"""

from __future__ import annotations

import numpy as np

from cmhash.data.dataset import CrossModalDataset


def make_synthetic(
    n: int = 3000,
    *,
    image_dim: int = 128,
    text_dim: int = 64,
    num_classes: int = 10,
    max_labels: int = 3,
    latent_dim: int = 32,
    item_noise: float = 0.6,
    feature_noise: float = 0.5,
    n_query: int | None = None,
    seed: int = 0,
    name: str = "synthetic",
) -> CrossModalDataset:
    """A dataset of ``n`` pairs with splits: query (``n_query``, default 10%), database = train = the rest."""
    if n < 10:
        raise ValueError(f"n must be >= 10, got {n}")
    for arg, value in (("image_dim", image_dim), ("text_dim", text_dim), ("num_classes", num_classes),
                       ("latent_dim", latent_dim)):
        if int(value) < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    for arg, value in (("item_noise", item_noise), ("feature_noise", feature_noise)):
        if not value >= 0:
            raise ValueError(f"{arg} must be >= 0, got {value}")
    if not 1 <= max_labels <= num_classes:
        raise ValueError(f"max_labels must be in 1..num_classes ({num_classes}), got {max_labels}")
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((num_classes, latent_dim)) * 1.5
    class_freq = rng.dirichlet(np.full(num_classes, 2.0))
    labels = np.zeros((n, num_classes), dtype=np.uint8)
    counts = rng.integers(1, max_labels + 1, size=n)
    for i in range(n):
        labels[i, rng.choice(num_classes, size=counts[i], replace=False, p=class_freq)] = 1
    latent = (labels @ centroids) / labels.sum(axis=1, keepdims=True)
    latent += item_noise * rng.standard_normal(latent.shape)
    a_img = rng.standard_normal((latent_dim, image_dim)) / np.sqrt(latent_dim)
    a_txt = rng.standard_normal((latent_dim, text_dim)) / np.sqrt(latent_dim)
    image = np.tanh(latent @ a_img) + feature_noise * rng.standard_normal((n, image_dim)) * 0.5
    text = np.maximum(latent @ a_txt + feature_noise * rng.standard_normal((n, text_dim)), 0.0)
    image, text = image.astype(np.float32), text.astype(np.float32)
    n_query = max(1, n // 10) if n_query is None else int(n_query)
    if not 1 <= n_query < n:
        raise ValueError(f"n_query must be in 1..{n - 1}, got {n_query}")
    perm = rng.permutation(n)
    q_idx, db_idx = np.sort(perm[:n_query]), np.sort(perm[n_query:])
    info = {
        "source": "synthetic",
        "generator": dict(n=n, image_dim=image_dim, text_dim=text_dim, num_classes=num_classes,
                          max_labels=max_labels, latent_dim=latent_dim, item_noise=item_noise,
                          feature_noise=feature_noise, n_query=n_query, seed=seed),
        "protocol": "synthetic: query = random n_query items, database = train = the rest",
    }
    full = CrossModalDataset(image=image, text=text, labels=labels, name=name, info=info)
    database = full.subset(db_idx, name=f"{name}/database")
    return full.with_splits(
        train=database.replace(name=f"{name}/train"),
        query=full.subset(q_idx, name=f"{name}/query"),
        database=database,
    )
