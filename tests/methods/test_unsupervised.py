"""DEMO and HINT end to end: training helps, labels never reach training, variants, records."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.evaluation import evaluate  # noqa: E402
from cmhash.methods.base import HashModel  # noqa: E402
from cmhash.methods.registry import get_method, get_method_class  # noqa: E402

FAST = {"batch_size": 64, "hidden": [64]}


@pytest.fixture(scope="module")
def tiny_data():
    return make_synthetic(360, image_dim=32, text_dim=16, num_classes=4, seed=3)


def mean_map(model, data) -> float:
    r = evaluate(model, data)
    return (r["i2t"]["map"] + r["t2i"]["map"]) / 2


@pytest.mark.parametrize("name", ["hint", "demo"])
def test_training_improves_map_over_the_untrained_network(name, tiny_data):
    untrained = get_method(name, epochs=1, lr=1e-12, **FAST).fit(tiny_data.train, 16, seed=0)
    trained = get_method(name, epochs=8, **FAST).fit(tiny_data.train, 16, seed=0)
    before, after = mean_map(untrained, tiny_data), mean_map(trained, tiny_data)
    assert after > before + 0.05, (before, after)


@pytest.mark.parametrize("name", ["hint", "demo"])
def test_labels_never_reach_training(name, tiny_data):
    """Altered labels give the identical model, even with the engine's label-based model
    selection switched on (val_fraction > 0); and the training code only ever sees zeros."""
    cls = get_method_class(name)
    seen = []

    class Spy(cls):  # same maths; records the labels the training loop holds
        def setup(self, ctx):
            seen.append(float(ctx.data["labels"].abs().sum()))
            super().setup(ctx)

    train = tiny_data.train
    rng = np.random.default_rng(0)
    altered = train.replace(labels=train.labels[rng.permutation(len(train))][:, ::-1])
    kw = dict(epochs=3, val_fraction=0.2, patience=1, **FAST)
    a = Spy(**kw).fit(train, 16, seed=1)
    b = Spy(**kw).fit(altered, 16, seed=1)
    assert seen == [0.0, 0.0]
    x = tiny_data.query
    for m in ("image", "text"):
        assert np.array_equal(a.encode(m, x.features(m)).data, b.encode(m, x.features(m)).data)
    assert a.record["training"]["history"] == b.record["training"]["history"]


@pytest.mark.parametrize("name", ["hint", "demo"])
def test_seeded_runs_are_identical_and_models_round_trip(name, tiny_data, tmp_path):
    a = get_method(name, epochs=2, **FAST).fit(tiny_data.train, 24, seed=5)
    b = get_method(name, epochs=2, **FAST).fit(tiny_data.train, 24, seed=5)
    x = tiny_data.query.image
    assert np.array_equal(a.encode("image", x).data, b.encode("image", x).data)
    loaded = HashModel.load(a.save(tmp_path / "m.npz"))
    assert np.array_equal(loaded.encode("image", x).data, a.encode("image", x).data)
    assert loaded.record[name] == a.record[name]


@pytest.mark.parametrize("preset", [None, "v1", "v2", "v3", "v4"])
def test_hint_variants_train_and_record(preset, tiny_data):
    method = get_method("hint", preset=preset, epochs=2, **FAST)
    model = method.fit(tiny_data.train, 16, seed=0)
    rec = model.record["hint"]
    assert rec["proxy_source"] == method.hparams["proxy_source"]
    lam = rec["lambda_per_epoch"]
    if method.hparams["mixup"] == "mmd":
        assert [e["epoch"] for e in lam] == [0, 1]
        cap = method.hparams["mmd_scale"] * math.sqrt(2)  # lambda = scale x a biased MMD <= sqrt(2)
        assert all(0 <= e["image"] <= cap and 0 <= e["text"] <= cap for e in lam)
    else:
        assert lam == []
    if rec["proxy_source"] == "tree":
        assert rec["tree"]["nodes"] == 2 * len(tiny_data.train) and rec["tree"]["build_seconds"] >= 0
    assert ("con" in model.record["training"]["history"][-1]) == (preset is None)
    agreement = rec["pair_bit_agreement_per_epoch"]
    assert len(agreement) == 2 and all(0 <= a <= 1 for a in agreement)
    if rec["proxy_source"] == "tree":
        assert 0 <= rec["pairs_in_one_community"] <= 1 and set(rec["pair_in_cross"]) == {"image", "text"}


@pytest.mark.parametrize("preset", [None, "wo_d", "wo_r", "wo_s"])
def test_demo_ablations_train_and_record(preset, tiny_data):
    model = get_method("demo", preset=preset, epochs=1, **FAST).fit(tiny_data.train, 16, seed=0)
    rec = model.record["demo"]
    assert rec["views"].startswith("original" if preset == "wo_d" else "feature-space augmentation")
    assert rec["tau"] > 0
    assert ("ret" in model.record["training"]["history"][-1]) == (preset != "wo_r")


def test_demo_uses_the_dataset_views_when_present(tiny_data):
    train = tiny_data.train
    rng = np.random.default_rng(0)
    views = train.image[:, None, :] + 0.05 * rng.standard_normal((len(train), 3, train.image.shape[1]))
    model = get_method("demo", epochs=1, **FAST).fit(train.replace(views=views), 16, seed=0)
    assert model.record["demo"]["views"] == "dataset views (M = 3)"


def test_demo_structure_depends_on_the_seed_not_the_code_length(tiny_data):
    taus = {(bits, seed): get_method("demo", epochs=1, **FAST).fit(tiny_data.train, bits, seed=seed)
            .record["demo"]["tau"] for bits in (8, 24) for seed in (0, 1)}
    assert taus[(8, 0)] == taus[(24, 0)] and taus[(8, 1)] == taus[(24, 1)]
    assert taus[(8, 0)] != taus[(8, 1)]
