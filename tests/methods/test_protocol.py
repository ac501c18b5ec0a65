"""The method protocol and registry: hyper-parameters, presets, label hiding, save/load."""

import numpy as np
import pytest

import cmhash
from cmhash.codes import pack, unpack
from cmhash.data.synthetic import make_synthetic
from cmhash.evaluation import evaluate
from cmhash.methods.base import HashingMethod, HashModel, without_labels
from cmhash.methods.registry import get_method, list_methods, register_method


@pytest.fixture(scope="module")
def data():
    return make_synthetic(1200, seed=3)


def test_registry_lists_and_refuses_unknown_or_duplicate():
    assert "cca-itq" in list_methods()
    with pytest.raises(ValueError, match="unknown method 'nope'.*cca-itq"):
        get_method("nope")

    class Dup(HashingMethod):
        name = "cca-itq"

    with pytest.raises(ValueError, match="already registered"):
        register_method(Dup)


def test_unknown_hparam_and_preset_are_errors():
    with pytest.raises(ValueError, match=r"unknown hyper-parameter\(s\) \['alpha'\]"):
        get_method("cca-itq", alpha=1)
    with pytest.raises(ValueError, match="no preset 'wiki'"):
        get_method("cca-itq", preset="wiki")
    assert get_method("cca-itq", itq_iters=3).hparams["itq_iters"] == 3


def test_bits_must_be_positive_int(data):
    with pytest.raises(ValueError, match="bits"):
        get_method("cca-itq").fit(data.train, 0)


def test_unsupervised_fit_never_sees_labels(data):
    seen = {}

    class Spy(HashingMethod):
        name = "spy-unsupervised"
        supervised = False

        def _fit(self, train, bits, *, seed, progress):
            seen["labels"] = train.labels.copy()
            return get_method("cca-itq")._fit(train, bits, seed=seed, progress=progress)

    Spy().fit(data.train, 8, seed=0)
    assert not seen["labels"].any()
    assert without_labels(data.train).labels.shape == (len(data.train), 1)


def test_cca_itq_learns_and_round_trips(data, tmp_path):
    model = cmhash.get_method("cca-itq").fit(data.train, 24, seed=0)
    res = evaluate(model, data)
    # Random codes give mAP near the positive rate; a learned model must be far above it.
    rng = np.random.default_rng(0)
    rand = cmhash.mean_average_precision(
        rng.integers(0, 2, (len(data.query), 24)), rng.integers(0, 2, (len(data.database), 24)),
        data.query.labels, data.database.labels,
    )
    assert res["i2t"]["map"] > rand.map + 0.15 and res["t2i"]["map"] > rand.map + 0.15
    assert model.record["seed"] == 0 and model.record["bits"] == 24
    assert model.record["dataset"]["checksum"] == data.train.checksum()

    path = model.save(tmp_path / "model.npz")
    loaded = HashModel.load(path)
    for m in ("image", "text"):
        x = data.query.features(m)
        np.testing.assert_array_equal(loaded.encode(m, x).data, model.encode(m, x).data)
    assert loaded.record == model.record
    assert unpack(model.encode("text", data.query.text)).shape == (len(data.query), 24)


def test_fit_is_deterministic_per_seed(data):
    a = get_method("cca-itq").fit(data.train, 16, seed=1).encode("image", data.query.image)
    b = get_method("cca-itq").fit(data.train, 16, seed=1).encode("image", data.query.image)
    np.testing.assert_array_equal(a.data, b.data)


def test_encode_checks_input(data):
    model = get_method("cca-itq").fit(data.train, 8, seed=0)
    with pytest.raises(ValueError, match=r"image features must be \(n x 128\)"):
        model.encode("image", data.query.text)
    bad = data.query.image.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.encode("image", bad)
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        model.encode("audio", bad)


def test_database_codes_must_cover_the_database(data):
    model = get_method("cca-itq").fit(data.train, 8, seed=0)
    model.database_codes = lambda modality: pack(np.ones((3, 8)))
    with pytest.raises(ValueError, match="cover 3 items but the database split has"):
        evaluate(model, data)


def test_load_rejects_other_files(tmp_path):
    from cmhash.io import save_arrays

    save_arrays(tmp_path / "x.npz", {}, {"format": "something-else"})
    with pytest.raises(ValueError, match="not a cmhash model"):
        HashModel.load(tmp_path / "x.npz")


def test_bits_no_method_can_learn_are_refused_before_any_work(data, monkeypatch):
    """bits > training items (or > 65,535) is refused up front: CCA-ITQ at 10**6 bits once tried
    to allocate a 7.28 TiB rotation. The check sits in the shared fit(), before _fit runs."""
    method = get_method("cca-itq")
    called = []
    import types

    monkeypatch.setattr(type(method), "_fit", lambda self, *a, **k: called.append(1) or types.SimpleNamespace(record={}))
    n = len(data.train)
    for bits in (10**6, n + 1):
        with pytest.raises(ValueError, match=rf"cca-itq: {bits} bits cannot be learned from {n} training items \(at most {n}"):
            method.fit(data.train, bits)
    for bits in (0, -3, True):
        with pytest.raises(ValueError, match="bits must be a positive integer"):
            method.fit(data.train, bits)
    assert called == []
    method.fit(data.train, n)  # the bound itself is allowed
    assert called == [1]


def test_model_files_are_checksummed(data, tmp_path):
    """An edited weight (or setting) fails to load with a clear error; files saved before model
    checksums existed (no checksum in the record) still load."""
    from cmhash.io import load_arrays, save_arrays

    model = get_method("cca-itq").fit(data.train, 16, seed=0)
    path = model.save(tmp_path / "model.npz")
    arrays, meta = load_arrays(path)
    assert meta["checksum"].startswith("sha256:")
    key = next(k for k in arrays if arrays[k].dtype.kind == "f")
    edited = dict(arrays)
    edited[key] = arrays[key].copy()
    edited[key].flat[0] += 1e-3
    save_arrays(tmp_path / "edited.npz", edited, meta)
    with pytest.raises(ValueError, match="edited.npz: checksum mismatch: the model's weights or settings changed"):
        HashModel.load(tmp_path / "edited.npz")
    settings = dict(meta, bits=17)
    save_arrays(tmp_path / "settings.npz", arrays, settings)
    with pytest.raises(ValueError, match="checksum mismatch"):
        HashModel.load(tmp_path / "settings.npz")
    old = {k: v for k, v in meta.items() if k != "checksum"}
    save_arrays(tmp_path / "old.npz", arrays, old)
    loaded = HashModel.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(loaded.encode("image", data.query.image).data,
                                  model.encode("image", data.query.image).data)
