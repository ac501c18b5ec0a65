"""Training-set scenarios of the papers: partial pairing, label noise, long tail, corrupted pairs.

Each scenario is a pure function ``f(dataset, seed=..., **params) -> CrossModalDataset``: it
returns a new dataset and never changes its input. It applies to the ``train`` split (or to the
whole dataset when it has no splits); the ``query`` and ``database`` splits stay exactly as they
were, even under protocols where the database holds the same items as the training set
(``dcgh``, ``ucch``). Reason: a scenario models defects of the *training* data; retrieval is
judged against the true items and labels. A method that returns learned codes for its training
items as database codes (DCGH's H) still lines up row for row after pairing, noise and
corruption (same rows, same order); after ``long_tail`` the training set is smaller, so such a
method must encode the database (:func:`cmhash.evaluation.evaluate` says so).

What was done is recorded in ``info["scenarios"]`` (a list, in order of application: name,
parameters, seed, counts) on the returned dataset and on its train split, and the affected train
rows in ``info["<name>_rows"]`` (an integer array; arrays stay out of the JSON run records).
Random draws come from ``numpy.random.default_rng`` seeded by (seed, scenario name), so two
scenarios applied with the same seed draw independently.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import numpy as np

from cmhash.data.dataset import CrossModalDataset


def partial_pairing(dataset: CrossModalDataset, seed: int = 0, *, unpaired: float = 0.5) -> CrossModalDataset:
    """DCGH's partially paired setting (DCGH Sec. 4.3): ``unpaired`` of the train pairs broken.

    With n train items and k = min(round(n * unpaired / 2), n // 2): the image rows 0..k-1 are shuffled among
    themselves and the text rows n-k..n-1 among themselves (default: the first 25% of images and
    the last 25% of texts, 50% unpaired). The shuffles are derangements, so exactly 2k rows lose
    their partner (a plain shuffle leaves about one row in place; DCGH's wording, "randomly
    shuffle", does not say). Labels stay in row order: row i keeps its original pair's label,
    which describes its text in the first block and its image in the last block. Image ``views``
    move with their images.
    """
    _check_rate("unpaired", unpaired)

    def apply(train: CrossModalDataset, rng: np.random.Generator) -> tuple[CrossModalDataset, dict, np.ndarray]:
        n = len(train)
        k = min(int(round(n * unpaired / 2)), n // 2)  # the two blocks never overlap
        if k == 1:
            raise ValueError(f"partial_pairing: unpaired={unpaired} of {n} items shuffles one row, which cannot be unpaired")
        image_perm, text_perm = np.arange(n), np.arange(n)
        image_perm[:k] = _derangement(k, rng)
        text_perm[n - k:] = n - k + _derangement(k, rng)
        changed = train.replace(
            image=train.image[image_perm],
            text=train.text[text_perm],
            views=None if train.views is None else train.views[image_perm],
        )
        rows = np.concatenate([np.arange(k), np.arange(n - k, n)])
        return changed, {"shuffled_images": k, "shuffled_texts": k, "unpaired_rows": 2 * k}, rows

    return _apply(dataset, "partial_pairing", seed, {"unpaired": unpaired}, apply)


def label_noise(dataset: CrossModalDataset, seed: int = 0, *, rate: float = 0.2) -> CrossModalDataset:
    """Symmetric label noise: exactly round(rate * n) train rows get a wrong label set.

    Rows are drawn uniformly without replacement among those whose label set can change (at
    least one and fewer than all classes). A chosen row with k active labels gets k classes
    drawn uniformly without replacement from all c classes, redrawn until the set differs from
    the original: for single-label data this is the usual symmetric noise (a uniformly random
    *other* class); for multi-label data the number of labels per item is kept. All other rows
    are untouched. (IDGH App. B.7 perturbs 20/50/80% of the training labels without saying how.)
    """
    _check_rate("rate", rate)

    def apply(train: CrossModalDataset, rng: np.random.Generator) -> tuple[CrossModalDataset, dict, np.ndarray]:
        n, c = train.labels.shape
        counts = train.labels.sum(axis=1)
        candidates = np.flatnonzero((counts > 0) & (counts < c))
        m = int(round(rate * n))
        if m > candidates.size:
            raise ValueError(
                f"label_noise: rate={rate} needs {m} rows whose labels can change, only "
                f"{candidates.size} of {n} have between 1 and {c - 1} labels"
            )
        rows = np.sort(rng.choice(candidates, size=m, replace=False))
        labels = train.labels.copy()
        for i in rows:
            k = int(counts[i])
            while True:
                new = np.zeros(c, dtype=np.uint8)
                new[rng.choice(c, size=k, replace=False)] = 1
                if not np.array_equal(new, train.labels[i]):
                    break
            labels[i] = new
        return train.replace(labels=labels), {"noisy_rows": m}, rows

    return _apply(dataset, "label_noise", seed, {"rate": rate}, apply)


def long_tail_sizes(num_classes: int, head_size: int, imbalance_factor: float) -> np.ndarray:
    """Class sizes n_k = floor(d_h * IF^(-k / (C - 1))), k = 0..C-1 (exponential decay).

    The head class keeps d_h items and the tail class d_h / IF, so IF = d_h / d_t as in IDGH
    App. B.6, following Long-Tail Hashing (Chen et al., SIGIR 2021).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if head_size < 1:
        raise ValueError(f"head_size (d_h) must be >= 1, got {head_size}")
    if not imbalance_factor >= 1:
        raise ValueError(f"imbalance_factor (IF) must be >= 1, got {imbalance_factor}")
    if num_classes == 1:
        return np.array([head_size], dtype=np.int64)
    k = np.arange(num_classes)
    sizes = np.floor(head_size * float(imbalance_factor) ** (-k / (num_classes - 1)) + 1e-9).astype(np.int64)
    if sizes[-1] < 1:
        raise ValueError(
            f"head_size={head_size} with imbalance_factor={imbalance_factor} leaves the tail class "
            "no items; use head_size >= imbalance_factor"
        )
    return sizes


def long_tail(
    dataset: CrossModalDataset,
    seed: int = 0,
    *,
    head_size: int,
    imbalance_factor: float,
    order: str = "index",
) -> CrossModalDataset:
    """A long-tailed training set (IDGH App. B.6): class sizes decay exponentially, head to tail.

    ``head_size`` is d_h, the number of training items the head class keeps, and
    ``imbalance_factor`` IF = d_h / d_t; the intermediate sizes follow
    :func:`long_tail_sizes`. (The supplement writes "the number of head classes d_h", but
    IF = d_h / d_t only makes sense as item counts, as in Long-Tail Hashing.) ``order`` ranks the
    classes from head to tail: ``"index"`` (class 0 is the head, as in Long-Tail Hashing),
    ``"frequency"`` (most frequent training class first, ties by index) or ``"random"`` (seeded).
    Each class keeps a uniform random subset of its items; kept rows stay in their original
    order. Single-label data only: with multi-label items, class sizes cannot be set
    independently. Query and database stay balanced, as in Long-Tail Hashing.
    """
    if order not in ("index", "frequency", "random"):
        raise ValueError(f"order must be 'index', 'frequency' or 'random', got '{order}'")

    def apply(train: CrossModalDataset, rng: np.random.Generator) -> tuple[CrossModalDataset, dict, np.ndarray]:
        if not (train.labels.sum(axis=1) == 1).all():
            raise ValueError("long_tail: needs single-label data (one label per item); this train split is multi-label")
        cls = train.labels.argmax(axis=1)
        c = train.num_classes
        available = np.bincount(cls, minlength=c)
        if order == "index":
            ranking = np.arange(c)
        elif order == "frequency":
            ranking = np.argsort(-available, kind="stable")
        else:
            ranking = rng.permutation(c)
        sizes = long_tail_sizes(c, head_size, imbalance_factor)
        target = np.empty(c, dtype=np.int64)
        target[ranking] = sizes
        short = np.flatnonzero(available < target)
        if short.size:
            j = short[0]
            raise ValueError(
                f"long_tail: class {j} needs {target[j]} training items but has {available[j]} "
                f"({short.size} classes are short); use a smaller head_size (d_h = {head_size})"
            )
        keep = np.concatenate(
            [rng.choice(np.flatnonzero(cls == j), size=target[j], replace=False) for j in range(c)]
        )
        keep = np.sort(keep)
        record = {"class_sizes": target.tolist(), "head_class": int(ranking[0]), "tail_class": int(ranking[-1]),
                  "kept_rows": int(keep.size)}
        return train.subset(keep), record, keep

    return _apply(
        dataset, "long_tail", seed,
        {"head_size": int(head_size), "imbalance_factor": float(imbalance_factor), "order": order}, apply,
    )


def corrupted_pairs(dataset: CrossModalDataset, seed: int = 0, *, rate: float = 0.1) -> CrossModalDataset:
    """Noisy correspondence (HINT App. C.6: "randomly corrupting 10% of text-image pairs").

    Exactly m = round(rate * n) train rows, drawn uniformly without replacement, have their
    texts shuffled among themselves by a derangement, so every chosen image is paired with
    another item's text; this is the caption shuffling of the noisy-correspondence work HINT
    follows (Huang et al., NeurIPS 2021). Labels and views stay with the image.
    """
    _check_rate("rate", rate)

    def apply(train: CrossModalDataset, rng: np.random.Generator) -> tuple[CrossModalDataset, dict, np.ndarray]:
        n = len(train)
        m = int(round(rate * n))
        if m == 1:
            raise ValueError(f"corrupted_pairs: rate={rate} of {n} items corrupts one row, which cannot be re-paired")
        rows = np.sort(rng.choice(n, size=m, replace=False))
        perm = np.arange(n)
        perm[rows] = rows[_derangement(m, rng)]
        return train.replace(text=train.text[perm]), {"corrupted_rows": m}, rows

    return _apply(dataset, "corrupted_pairs", seed, {"rate": rate}, apply)


SCENARIOS: dict[str, Callable[..., CrossModalDataset]] = {
    "partial_pairing": partial_pairing,
    "label_noise": label_noise,
    "long_tail": long_tail,
    "corrupted_pairs": corrupted_pairs,
}


def apply_scenario(dataset: CrossModalDataset, name: str, seed: int = 0, **params: Any) -> CrossModalDataset:
    """Apply the scenario called ``name`` (``partial-pairing`` and ``partial_pairing`` both work)."""
    key = name.replace("-", "_")
    if key not in SCENARIOS:
        raise ValueError(f"unknown scenario '{name}'; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[key](dataset, seed, **params)


# ----------------------------------------------------------------------------------- plumbing
Apply = Callable[[CrossModalDataset, np.random.Generator], tuple[CrossModalDataset, dict, np.ndarray]]


def _apply(dataset: CrossModalDataset, name: str, seed: int, params: dict, apply: Apply) -> CrossModalDataset:
    rng = np.random.default_rng([int(seed), zlib.crc32(name.encode())])
    has_train = "train" in dataset.splits
    train = dataset.train if has_train else dataset
    changed, counts, rows = apply(train, rng)
    record = {"name": name, "params": params, "seed": int(seed), "train_items": len(train), **counts}

    def stamp(ds: CrossModalDataset) -> CrossModalDataset:
        info = dict(ds.info)
        info["scenarios"] = [*info.get("scenarios", []), record]
        info[f"{name}_rows"] = np.asarray(rows, dtype=np.int64)
        return ds.replace(info=info)

    if not has_train:
        return stamp(changed)
    return stamp(dataset).with_splits(train=stamp(changed))


def _derangement(k: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(k) with no fixed point (rejection sampling)."""
    if k == 0:
        return np.arange(0)
    while True:
        perm = rng.permutation(k)
        if (perm != np.arange(k)).all():
            return perm


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
