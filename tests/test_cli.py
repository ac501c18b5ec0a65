"""The generic `cmhash train` / `cmhash eval` commands, end to end on synthetic data."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import cmhash.cli
from cmhash.cli import app
from cmhash.data.synthetic import make_synthetic
from cmhash.io import load_arrays
from cmhash.methods.base import HashModel

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """rich wraps at the terminal width; long tmp paths would split the messages checked here."""
    monkeypatch.setattr(cmhash.cli.console, "width", 400)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def text(res) -> str:
    """The output with rich's line wrapping undone (wrapping depends on path lengths)."""
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def dcgh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    res = invoke("train", "dcgh", "--dataset", "synthetic:600", "--bits", 12, "--seed", 1,
                 "--out", out, "--param", "n_anchors=120", "--param", "kernel=squared")
    assert res.exit_code == 0, res.output
    return out


def test_train_writes_model_codes_and_metrics(dcgh_run):
    assert {p.name for p in dcgh_run.iterdir()} >= {"model.npz", "codes.npz", "metrics.json"}
    saved = json.loads((dcgh_run / "metrics.json").read_text())
    rec = saved["record"]
    assert rec["method"] == "dcgh" and rec["bits"] == 12 and rec["seed"] == 1
    assert rec["hparams"]["n_anchors"] == 120 and rec["hparams"]["kernel"] == "squared"
    assert rec["dataset"]["n"] == 540 and len(rec["dataset"]["checksum"]) == 64
    assert "versions" in rec and "metric_definitions" in rec and len(rec["objective"]) == 10
    for d in ("i2t", "t2i"):
        assert 0.5 < saved["metrics"][d]["map"] <= 1 and saved["metrics"][d]["queries"] == 60
    assert "--param kernel=squared" in saved["command"]
    # The saved codes are what the saved model gives on the run's data.
    model = HashModel.load(dcgh_run / "model.npz")
    arrays, meta = load_arrays(dcgh_run / "codes.npz")
    data = make_synthetic(600, seed=0)
    np.testing.assert_array_equal(arrays["i2t_query"], model.encode("image", data.query.image).data)
    np.testing.assert_array_equal(arrays["t2i_query"], model.encode("text", data.query.text).data)
    np.testing.assert_array_equal(arrays["i2t_database"], model.database_codes("text").data)
    assert meta["nbits"]["i2t_query"] == 12


def test_eval_recomputes_the_same_metrics(dcgh_run):
    res = invoke("eval", dcgh_run, "--check")
    assert res.exit_code == 0, res.output
    ev = json.loads((dcgh_run / "eval.json").read_text())
    saved = json.loads((dcgh_run / "metrics.json").read_text())
    assert ev["matches_metrics_json"] is True
    assert ev["metrics"]["t2i"]["map"] == saved["metrics"]["t2i"]["map"]


def test_eval_check_fails_when_metrics_json_was_altered(dcgh_run, tmp_path):
    for name in ("model.npz", "metrics.json"):
        (tmp_path / name).write_bytes((dcgh_run / name).read_bytes())
    saved = json.loads((tmp_path / "metrics.json").read_text())
    saved["metrics"]["i2t"]["map"] += 0.01
    (tmp_path / "metrics.json").write_text(json.dumps(saved))
    res = invoke("eval", tmp_path, "--check")
    assert res.exit_code == 1 and "differs" in res.output


def test_train_works_for_any_method_and_records_scenarios(tmp_path):
    res = invoke("train", "cca-itq", "--dataset", "synthetic:500", "--bits", 8, "--out", tmp_path,
                 "--scenario", "partial_pairing:unpaired=0.5")
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["data_spec"]["scenarios"] == [{"name": "partial_pairing", "params": {"unpaired": 0.5}}]
    assert saved["record"]["dataset"]["scenarios"][0]["unpaired_rows"] == 224  # 2 x round(450 x 0.25)
    assert invoke("eval", tmp_path, "--check").exit_code == 0


@pytest.mark.parametrize("args,message", [
    (("train", "nope", "--dataset", "synthetic:300"), "unknown method 'nope'"),
    (("train", "dcgh", "--dataset", "synthetic:300", "--param", "alpha"), "key=value"),
    (("train", "dcgh", "--dataset", "synthetic:300", "--param", "gamma=1"), "unknown hyper-parameter"),
    (("train", "dcgh", "--dataset", "synthetic:x"), "integer N"),
    (("train", "dcgh", "--dataset", "synthetic:300", "--preset", "mscoco"), "no preset 'mscoco'"),
    (("train", "dcgh", "--dataset", "synthetic:300", "--scenario", "flood"), "unknown scenario 'flood'"),
    (("train", "dcgh", "--dataset", "no-such-benchmark"), "no-such-benchmark"),
])
def test_bad_train_arguments_are_clear_errors(args, message, tmp_path):
    res = invoke(*args, "--out", tmp_path)
    assert res.exit_code == 2 and message in text(res), res.output
    assert not (tmp_path / "metrics.json").exists()


def test_eval_of_a_folder_without_a_run_is_a_clear_error(tmp_path):
    res = invoke("eval", tmp_path)
    assert res.exit_code == 2 and "metrics.json: no such file" in text(res)
    (tmp_path / "metrics.json").write_text("{}")
    res = invoke("eval", tmp_path)
    assert res.exit_code == 2 and "not a metrics file" in text(res)


def test_auto_preset_follows_the_dataset_name():
    from cmhash.cli import _choose_preset
    from cmhash.methods.dcgh import DCGH

    data = make_synthetic(100, seed=0)
    assert _choose_preset(DCGH, "auto", data) is None
    assert _choose_preset(DCGH, "auto", data.replace(name="WIKI")) == "wiki"
    assert _choose_preset(DCGH, "none", data.replace(name="wiki")) is None
    assert _choose_preset(DCGH, "iapr", data) == "iapr"


@pytest.mark.parametrize("method", ["deep-baseline", "idgh", "dghdgh", "demo", "hint"])
def test_train_and_eval_work_for_the_deep_methods(method, tmp_path):
    """The deep methods go through the same generic command: train, save, reload, re-evaluate."""
    pytest.importorskip("torch")
    res = invoke("train", method, "--dataset", "synthetic:300", "--bits", 16, "--out", tmp_path,
                 "--param", "epochs=1", "--param", "batch_size=64")
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["record"]["method"] == method and metrics["record"]["hparams"]["epochs"] == 1
    assert invoke("eval", tmp_path, "--check").exit_code == 0
