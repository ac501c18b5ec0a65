"""The shared deep training engine: selection, early stopping, seeding, save/load, hooks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cmhash.data.synthetic import make_synthetic  # noqa: E402
from cmhash.evaluation import evaluate  # noqa: E402
from cmhash.methods.base import HashModel  # noqa: E402
from cmhash.methods.registry import get_method  # noqa: E402
from cmhash.metrics.ranking import mean_average_precision  # noqa: E402
from cmhash.nn.engine import DeepHashModel, LossPlugin, split_validation  # noqa: E402
from cmhash.nn.networks import HashNetworks  # noqa: E402
from cmhash.progress import RecordingProgress  # noqa: E402

SMALL = dict(hidden=[32], batch_size=64, epochs=6)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(600, image_dim=24, text_dim=12, num_classes=5, seed=1)


@pytest.fixture(scope="module")
def trained(data):
    progress = RecordingProgress()
    model = get_method("deep-baseline", **SMALL).fit(data.train, 16, seed=0, progress=progress)
    return model, progress


def test_training_beats_the_untrained_network(data, trained):
    model, _ = trained
    torch.manual_seed(0)
    untrained = HashNetworks(data.train.dims, 16, [32])
    base = DeepHashModel(networks=untrained, method="deep-baseline", bits=16, hparams={})
    before, after = evaluate(base, data), evaluate(model, data)
    for direction in ("i2t", "t2i"):
        assert after[direction]["map"] > before[direction]["map"] + 0.1


def test_selected_epoch_is_the_best_validation_epoch(data, trained):
    model, progress = trained
    tr = model.record["training"]
    history = tr["history"]
    scores = [h["val_map"] for h in history]
    assert tr["selected_epoch"] == int(np.argmax(scores))  # first maximum
    assert tr["best_val_map"] == max(scores)
    # the returned networks are the selected epoch's: recompute their validation mAP
    fit_idx, val_idx = split_validation(len(data.train), 0.1, seed=0)
    t = data.train
    val_i2t = mean_average_precision(model.encode("image", t.image[val_idx]), model.encode("text", t.text[fit_idx]),
                                     t.labels[val_idx], t.labels[fit_idx]).map
    val_t2i = mean_average_precision(model.encode("text", t.text[val_idx]), model.encode("image", t.image[fit_idx]),
                                     t.labels[val_idx], t.labels[fit_idx]).map
    assert (val_i2t + val_t2i) / 2 == pytest.approx(tr["best_val_map"])
    # progress saw one log per epoch with losses and validation mAP
    assert len(progress.records) == tr["epochs_run"]
    assert {"loss", "triplet", "val_map", "epoch"} <= set(progress.records[0])


def test_early_stopping_stops_after_patience_and_keeps_the_best(data):
    # a learning rate far too high makes validation mAP wander, so patience triggers
    method = get_method("deep-baseline", hidden=[32], batch_size=64, epochs=40, lr=0.3, patience=2,
                        schedule="constant")
    tr = method.fit(data.train, 16, seed=3).record["training"]
    scores = [h["val_map"] for h in tr["history"]]
    assert tr["stopped_early"] and tr["epochs_run"] < 40
    assert tr["selected_epoch"] == int(np.argmax(scores))
    assert tr["epochs_run"] - 1 - tr["selected_epoch"] == 2  # two evaluations without improvement


def test_no_validation_keeps_the_last_epoch(data):
    tr = get_method("deep-baseline", **{**SMALL, "epochs": 2}, val_fraction=0.0).fit(data.train, 8, seed=0).record["training"]
    assert tr["selected_epoch"] == 1 and tr["val_size"] == 0 and tr["best_val_map"] is None


def test_validation_split_is_seeded_disjoint_and_inside_train():
    fit, val = split_validation(100, 0.2, seed=4)
    assert len(val) == 20 and len(fit) == 80
    assert not set(fit) & set(val) and set(fit) | set(val) == set(range(100))
    again = split_validation(100, 0.2, seed=4)
    assert np.array_equal(val, again[1])
    assert not np.array_equal(val, split_validation(100, 0.2, seed=5)[1])
    with pytest.raises(ValueError, match="too small"):
        split_validation(2, 0.5, seed=0)


def test_save_load_encodes_identically(data, trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    loaded = HashModel.load(path)
    assert isinstance(loaded, DeepHashModel) and loaded.method == "deep-baseline"
    assert loaded.hparams == model.hparams
    assert loaded.record["training"]["selected_epoch"] == model.record["training"]["selected_epoch"]
    rng = np.random.default_rng(0)
    for m in ("image", "text"):
        x = np.vstack([data.query.features(m), rng.standard_normal((5, data.dims[m]))])
        assert np.array_equal(model.encode(m, x).data, loaded.encode(m, x).data)


def test_same_seed_same_codes_and_global_rng_untouched(data):
    state = torch.get_rng_state()
    kw = {**SMALL, "epochs": 2}
    a = get_method("deep-baseline", **kw).fit(data.train, 16, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    b = get_method("deep-baseline", **kw).fit(data.train, 16, seed=7)
    c = get_method("deep-baseline", **kw).fit(data.train, 16, seed=8)
    x = data.query.image
    assert np.array_equal(a.encode("image", x).data, b.encode("image", x).data)
    assert not np.array_equal(a.encode("image", x).data, c.encode("image", x).data)


def test_sign_of_zero_output_is_plus_one(data):
    net = HashNetworks(data.train.dims, 12, [])
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    model = DeepHashModel(networks=net, method="deep-baseline", bits=12, hparams={})
    assert (model.encode("text", data.query.text).unpack() == 1).all()


@pytest.mark.parametrize("bad, match", [
    ({"batch_size": 1}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"device": "tpu"}, "device"), ({"hidden": [0]}, "hidden"), ({"schedule": "step"}, "schedule"),
    ({"epochs": 0}, "epochs"),
])
def test_bad_hyper_parameters_are_named(data, bad, match):
    with pytest.raises(ValueError, match=match):
        get_method("deep-baseline", **{**SMALL, **bad}).fit(data.train, 8, seed=0)


def test_encode_rejects_wrong_shapes(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="image features"):
        model.encode("image", np.zeros((3, 5)))


class CountingPlugin(LossPlugin):
    name = "counting"

    def __init__(self):
        self.calls = {"setup": 0, "start": 0, "end": 0, "batch": 0}

    def hparams(self):
        return {"weight": 0.0}

    def setup(self, ctx):
        self.calls["setup"] += 1

    def on_epoch_start(self, ctx):
        self.calls["start"] += 1

    def on_epoch_end(self, ctx, logs):
        self.calls["end"] += 1

    def batch_loss(self, ctx, batch, codes):
        self.calls["batch"] += 1
        return codes["image"].sum() * 0.0, {"plugin_term": 1.0}


def test_plugins_get_every_hook_and_are_recorded(data):
    plugin = CountingPlugin()
    method = get_method("deep-baseline", **{**SMALL, "epochs": 2}).add_plugin(plugin)
    model = method.fit(data.train, 8, seed=0)
    assert plugin.calls["setup"] == 1 and plugin.calls["start"] == plugin.calls["end"] == 2
    assert plugin.calls["batch"] == 2 * int(np.ceil(model.record["training"]["fit_size"] / 64))
    assert model.record["hparams"]["plugins"] == [{"name": "counting", "weight": 0.0}]
    assert model.record["training"]["history"][0]["plugin_term"] == 1.0


def test_core_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import cmhash\n"
        "from cmhash.methods.registry import get_method\n"
        "from cmhash.data.synthetic import make_synthetic\n"
        "d = make_synthetic(200, seed=0)\n"
        "get_method('cca-itq').fit(d.train, 8, seed=0)\n"
        "try:\n"
        "    get_method('deep-baseline')\n"
        "except ImportError as e:\n"
        "    assert 'cmhash[deep]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('deep method imported without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[2]),
                   env={**__import__("os").environ, "PYTHONPATH": "src"})


# ------------------------------------------------------------------ run diagnostics in the record
class DiagnosingPlugin(CountingPlugin):
    """Puts method-specific diagnostics where the engine merges them."""

    name = "diagnosing"

    def on_epoch_end(self, ctx, logs):
        ctx.state.setdefault("record", {}).setdefault("diagnostics", {})["plugin_tau"] = 0.25 + ctx.epoch


@pytest.mark.parametrize("bits", [12, 16])
def test_code_diagnostics_match_brute_force(data, bits):
    from cmhash.codes import sign as sign_codes

    model = get_method("deep-baseline", **{**SMALL, "epochs": 2}).add_plugin(DiagnosingPlugin()).fit(
        data.train, bits, seed=0)
    diag = model.record["diagnostics"]
    tr = data.train
    assert diag["diagnostic_items"] == len(tr)
    for m in ("image", "text"):
        codes = sign_codes(model.networks.outputs(m, tr.features(m)).numpy())  # the selected networks
        assert diag[f"unique_codes_{m}"] == len({tuple(row) for row in codes.tolist()})
        assert diag[f"unique_share_{m}"] == pytest.approx(diag[f"unique_codes_{m}"] / len(tr), abs=1e-6)
        bit_means = [abs(sum(codes[:, j].tolist()) / len(codes)) for j in range(bits)]
        assert diag[f"bit_mean_abs_{m}"] == pytest.approx(sum(bit_means) / bits, abs=1e-6)
        # the model's own codes agree (what the database is encoded with)
        packed = model.encode(m, tr.features(m))
        assert len(np.unique(packed.data, axis=0)) == diag[f"unique_codes_{m}"]
    tr_rec = model.record["training"]
    assert diag["best_epoch"] == tr_rec["selected_epoch"] and diag["best_val_map"] == tr_rec["best_val_map"]
    assert diag["selection"] == "best validation mAP"
    assert diag["plugin_tau"] == 1.25  # a hook's diagnostics are merged, not overwriting the engine's
    assert "diagnostics" not in {k for k in model.record if k != "diagnostics"}


def test_collapsed_codes_show_in_the_diagnostics(data):
    """A network whose output ignores the input gives one code per modality and |bit mean| = 1."""
    from cmhash.nn.engine import code_diagnostics

    torch.manual_seed(0)
    net = HashNetworks(data.train.dims, 12, [8])
    with torch.no_grad():
        for mlp in net.nets.values():
            last = mlp.body[-1]
            last.weight.zero_()
            last.bias.copy_(torch.linspace(-1, 1, 12))
    diag = code_diagnostics(net, data.train)
    assert diag["unique_codes_image"] == diag["unique_codes_text"] == 1
    assert diag["bit_mean_abs_image"] == diag["bit_mean_abs_text"] == 1.0


def test_no_validation_split_records_the_last_epoch(data):
    model = get_method("deep-baseline", **{**SMALL, "epochs": 2, "val_fraction": 0.0}).fit(data.train, 8, seed=0)
    diag = model.record["diagnostics"]
    assert diag["best_epoch"] == 1 and diag["best_val_map"] is None
    assert diag["selection"].startswith("last epoch")
