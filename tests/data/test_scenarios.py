"""Scenarios: exact counts, determinism per seed, untouched query/database, the decay formula."""

from __future__ import annotations

import numpy as np
import pytest

from cmhash.data.dataset import CrossModalDataset
from cmhash.data.scenarios import (
    apply_scenario,
    corrupted_pairs,
    label_noise,
    long_tail,
    long_tail_sizes,
    partial_pairing,
)


def _data(n_train=200, n_query=20, c=5, multi=False, seed=0, views=False):
    """Train rows carry their id in image[:, 0], text[:, 0] and views[:, :, 0]."""
    rng = np.random.default_rng(seed)
    n = n_train + n_query
    image = rng.standard_normal((n, 3))
    text = rng.standard_normal((n, 2))
    image[:, 0] = text[:, 0] = np.arange(n)
    if multi:
        labels = (rng.random((n, c)) < 0.4).astype(np.uint8)
        labels[labels.sum(1) == 0, 0] = 1
    else:
        labels = np.eye(c, dtype=np.uint8)[np.arange(n) % c]
    v = None
    if views:
        v = rng.standard_normal((n, 2, 3))
        v[:, :, 0] = np.arange(n)[:, None]
    full = CrossModalDataset(image=image, text=text, labels=labels, views=v, name="toy", info={"protocol": "test"})
    train = full.subset(np.arange(n_train), name="toy/train")
    return full.with_splits(train=train, database=train.replace(name="toy/database"),
                            query=full.subset(np.arange(n_train, n), name="toy/query"))


def _ids(ds, key):
    return getattr(ds, key)[:, 0].astype(np.int64)


def _untouched(before, after):
    assert after.query.checksum() == before.query.checksum()
    assert after.database.checksum() == before.database.checksum()
    assert after.checksum() != before.checksum()  # the train split did change


# ------------------------------------------------------------------------------ partial pairing
def test_partial_pairing_default_breaks_exactly_half_as_dcgh():
    data = _data(n_train=200, views=True)
    out = partial_pairing(data, seed=1)
    tr = out.train
    img, txt = _ids(tr, "image"), _ids(tr, "text")
    assert (img != txt).sum() == 100  # 50% unpaired: the first 50 images and the last 50 texts
    assert sorted(img[:50]) == list(range(50)) and (img[:50] != np.arange(50)).all()
    assert sorted(txt[150:]) == list(range(150, 200)) and (txt[150:] != np.arange(150, 200)).all()
    np.testing.assert_array_equal(img[50:], np.arange(50, 200))
    np.testing.assert_array_equal(txt[:150], np.arange(150))
    np.testing.assert_array_equal(tr.labels, data.train.labels)  # labels stay in row order
    np.testing.assert_array_equal(tr.views[:, 0, 0], img)  # views move with their images
    _untouched(data, out)
    rec = out.train.info["scenarios"][-1]
    assert rec == {"name": "partial_pairing", "params": {"unpaired": 0.5}, "seed": 1, "train_items": 200,
                   "shuffled_images": 50, "shuffled_texts": 50, "unpaired_rows": 100}
    np.testing.assert_array_equal(out.train.info["partial_pairing_rows"], np.r_[0:50, 150:200])
    assert out.info["scenarios"] == out.train.info["scenarios"]
    assert out.train.info["protocol"] == "test"  # provenance kept


@pytest.mark.parametrize("unpaired, expected", [(0.0, 0), (0.3, 60), (1.0, 200)])
def test_partial_pairing_rates(unpaired, expected):
    tr = partial_pairing(_data(n_train=200), seed=0, unpaired=unpaired).train
    assert (_ids(tr, "image") != _ids(tr, "text")).sum() == expected


def test_partial_pairing_odd_size_blocks_do_not_overlap():
    tr = partial_pairing(_data(n_train=7), unpaired=1.0).train
    assert (_ids(tr, "image") != _ids(tr, "text")).sum() == 6


def test_partial_pairing_deterministic_per_seed():
    data = _data()
    a, b, c = (partial_pairing(data, seed=s) for s in (3, 3, 4))
    assert a.train.checksum() == b.train.checksum() != c.train.checksum()


# ---------------------------------------------------------------------------------- label noise
def test_label_noise_single_label_exact_count_other_class():
    data = _data(n_train=400, c=5)
    out = label_noise(data, seed=0, rate=0.2)
    before, after = data.train.labels, out.train.labels
    changed = np.flatnonzero((before != after).any(1))
    assert changed.size == 80
    np.testing.assert_array_equal(changed, out.train.info["label_noise_rows"])
    assert (after.sum(1) == 1).all()
    assert (before[changed].argmax(1) != after[changed].argmax(1)).all()
    shift = (after[changed].argmax(1) - before[changed].argmax(1)) % 5
    assert set(shift.tolist()) == {1, 2, 3, 4}  # every other class is reachable
    np.testing.assert_array_equal(out.train.image, data.train.image)
    _untouched(data, out)
    assert out.train.info["scenarios"][-1]["noisy_rows"] == 80


def test_label_noise_multi_label_keeps_label_counts():
    data = _data(n_train=300, c=6, multi=True, seed=2)
    out = label_noise(data, seed=5, rate=0.5)
    before, after = data.train.labels, out.train.labels
    assert (before != after).any(1).sum() == 150
    np.testing.assert_array_equal(before.sum(1), after.sum(1))


def test_label_noise_deterministic_and_limits():
    data = _data()
    assert label_noise(data, seed=1).train.checksum() == label_noise(data, seed=1).train.checksum()
    assert label_noise(data, seed=1).train.checksum() != label_noise(data, seed=2).train.checksum()
    zero = label_noise(data, rate=0.0)
    np.testing.assert_array_equal(zero.train.labels, data.train.labels)
    labels = np.ones((10, 3), dtype=np.uint8)  # every row has all labels: nothing can change
    labels[0] = [1, 0, 0]
    full = CrossModalDataset(image=np.ones((10, 2)), text=np.ones((10, 2)), labels=labels)
    with pytest.raises(ValueError, match=r"needs 5 rows whose labels can change, only 1 of 10"):
        label_noise(full, rate=0.5)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 1.5"):
        label_noise(data, rate=1.5)


# ------------------------------------------------------------------------------------ long tail
def test_long_tail_sizes_follow_the_decay_formula():
    np.testing.assert_array_equal(long_tail_sizes(3, 100, 100), [100, 10, 1])
    sizes = long_tail_sizes(10, 500, 50)
    k = np.arange(10)
    np.testing.assert_array_equal(sizes, np.floor(500 * 50.0 ** (-k / 9) + 1e-9))
    assert sizes[0] == 500 and sizes[-1] == 10 and (np.diff(sizes) <= 0).all()
    np.testing.assert_array_equal(long_tail_sizes(4, 20, 1), [20, 20, 20, 20])
    with pytest.raises(ValueError, match="leaves the tail class no items"):
        long_tail_sizes(5, 10, 20)
    with pytest.raises(ValueError, match="imbalance_factor"):
        long_tail_sizes(5, 10, 0.5)


def test_long_tail_subsamples_train_to_the_target_sizes():
    data = _data(n_train=500, c=5)  # 100 items per class
    out = long_tail(data, seed=0, head_size=80, imbalance_factor=16)
    counts = np.bincount(out.train.labels.argmax(1), minlength=5)
    np.testing.assert_array_equal(counts, [80, 40, 20, 10, 5])
    kept = _ids(out.train, "image")
    assert (np.diff(kept) > 0).all()  # a subset in the original order, pairs intact
    np.testing.assert_array_equal(kept, _ids(out.train, "text"))
    np.testing.assert_array_equal(out.train.labels, data.train.labels[kept])
    np.testing.assert_array_equal(out.train.info["long_tail_rows"], kept)
    _untouched(data, out)  # the database (= train under dcgh) stays balanced
    rec = out.info["scenarios"][-1]
    assert rec["class_sizes"] == [80, 40, 20, 10, 5] and rec["kept_rows"] == 155


def test_long_tail_orders():
    rng = np.random.default_rng(0)
    cls = np.repeat([0, 1, 2], [30, 90, 60])
    ds = CrossModalDataset(image=rng.random((180, 2)), text=rng.random((180, 2)), labels=np.eye(3)[cls])
    freq = long_tail(ds, head_size=50, imbalance_factor=25, order="frequency")
    np.testing.assert_array_equal(np.bincount(freq.labels.argmax(1)), [2, 50, 10])
    rand = [long_tail(ds, seed=s, head_size=25, imbalance_factor=25, order="random") for s in range(6)]
    heads = {r.info["scenarios"][-1]["head_class"] for r in rand}
    assert len(heads) > 1  # the seed picks the ranking
    with pytest.raises(ValueError, match=r"class 0 needs 50 training items but has 30"):
        long_tail(ds, head_size=50, imbalance_factor=25)
    with pytest.raises(ValueError, match="order must be"):
        long_tail(ds, head_size=5, imbalance_factor=2, order="size")


def test_long_tail_rejects_multi_label_and_is_deterministic():
    with pytest.raises(ValueError, match="needs single-label data"):
        long_tail(_data(multi=True), head_size=5, imbalance_factor=2)
    data = _data(n_train=500)
    a = long_tail(data, seed=7, head_size=60, imbalance_factor=10)
    b = long_tail(data, seed=7, head_size=60, imbalance_factor=10)
    c = long_tail(data, seed=8, head_size=60, imbalance_factor=10)
    assert a.train.checksum() == b.train.checksum() != c.train.checksum()


# ------------------------------------------------------------------------------ corrupted pairs
def test_corrupted_pairs_exact_count_texts_shuffled_among_chosen_rows():
    data = _data(n_train=300, views=True)
    out = corrupted_pairs(data, seed=0, rate=0.1)
    tr = out.train
    img, txt = _ids(tr, "image"), _ids(tr, "text")
    bad = np.flatnonzero(img != txt)
    assert bad.size == 30
    np.testing.assert_array_equal(bad, out.train.info["corrupted_pairs_rows"])
    assert sorted(txt[bad]) == sorted(bad)  # texts moved only among the corrupted rows
    np.testing.assert_array_equal(tr.image, data.train.image)
    np.testing.assert_array_equal(tr.labels, data.train.labels)  # labels stay with the image
    np.testing.assert_array_equal(tr.views, data.train.views)
    _untouched(data, out)
    assert corrupted_pairs(data, seed=0).train.checksum() == tr.checksum()
    assert corrupted_pairs(data, seed=1).train.checksum() != tr.checksum()


# ------------------------------------------------------------------------------------- general
def test_chained_scenarios_are_recorded_in_order_and_input_is_unchanged():
    data = _data()
    snapshot = data.checksum()
    out = apply_scenario(apply_scenario(data, "partial-pairing", seed=1), "label_noise", seed=1, rate=0.1)
    assert [r["name"] for r in out.train.info["scenarios"]] == ["partial_pairing", "label_noise"]
    assert data.checksum() == snapshot and "scenarios" not in data.train.info
    with pytest.raises(ValueError, match="unknown scenario 'flip'"):
        apply_scenario(data, "flip")


def test_dataset_without_splits_is_changed_as_a_whole():
    whole = _data().train.replace(splits={})
    out = corrupted_pairs(whole, seed=0, rate=0.5)
    assert out.splits == {} and (_ids(out, "image") != _ids(out, "text")).sum() == 100


def test_one_row_cannot_be_unpaired():
    tiny = _data(n_train=4)
    with pytest.raises(ValueError, match="shuffles one row"):
        partial_pairing(tiny, unpaired=0.5)
    with pytest.raises(ValueError, match="corrupts one row"):
        corrupted_pairs(tiny, rate=0.25)
