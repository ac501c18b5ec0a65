"""Config parsing: the shipped configs load; every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmhash.experiments.config import ConfigError, load_config, parse_config
from cmhash.methods import registry

REPO = Path(__file__).resolve().parents[2]

BASE = """
[[datasets]]
name = "synthetic"
params = { n = 200 }

[[methods]]
name = "cca-itq"

[grid]
bits = [8, 16]
seeds = [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_minimal_config_defaults(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.name == "exp"
    assert cfg.bits == (8, 16) and cfg.seeds == (0, 1)
    assert cfg.methods[0].label == "cca-itq" and cfg.methods[0].preset is None
    assert cfg.datasets[0].params == {"n": 200} and cfg.datasets[0].split_seed == 0
    assert cfg.scenarios == () and cfg.tables == ()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.methods and cfg.datasets


@pytest.mark.parametrize(
    "extra, key, words",
    [
        ("[extra]\nx = 1\n", "extra", "unknown key"),
        ("[evaluation]\ntopn_max = 'many'\n", "evaluation.topn_max", "expected int"),
        ("[evaluation]\ncurvs = true\n", "evaluation.curvs", "unknown key"),
        ("[scenarios]\nlabel_noise = [0.0, 1.5]\n", "scenarios.label_noise[1]", "rate in [0, 1)"),
        ("[scenarios]\nlong_tail = [0.5]\n", "scenarios.long_tail[0]", "imbalance factor"),
        ("[scenarios]\ntrain_size = ['all', -3]\n", "scenarios.train_size[1]", "positive integer"),
        ("[scenarios]\nlabel_nose = [0.2]\n", "scenarios.label_nose", "unknown key"),
        ("[scenarios]\nlong_tail = { values = [10], head = 2 }\n", "scenarios.long_tail.head", "unknown key"),
        ("[scenarios]\nlong_tail = [1, 10]\n", "scenarios.long_tail.head_size", "missing"),
        ("[scenarios]\nlabel_noise = [0.2, 0.2]\n", "scenarios.label_noise", "repeat"),
        ("[report]\nfigures = ['pie']\n", "report.figures[0]", "unknown figure"),
        ("[[report.tables]]\ncolumns = 'bits'\n", "report.tables[0].title", "missing"),
        ("[[report.tables]]\ntitle = 't'\nmetrics = ['map_x']\n", "report.tables[0].metrics[0]", "unknown metric"),
        ("[[report.tables]]\ntitle = 't'\ncolumns = 'colour'\n", "report.tables[0].columns", "unknown dimension"),
        ("[[report.tables]]\ntitle = 't'\n[report.tables.paper]\ndataset = 'x'\n",
         "report.tables[0].paper.source", "missing"),
        ("[[report.tables]]\ntitle = 't'\n[report.tables.paper]\nsource = 'P'\nmap_i2t = { m = { 8 = 'high' } }\n",
         "report.tables[0].paper.map_i2t.m.8", "expected a number"),
    ],
)
def test_errors_name_the_key(tmp_path, extra, key, words):
    msg = error_of(tmp_path, BASE + extra)
    assert f": {key}: " in msg and words in msg


def test_method_errors(tmp_path):
    msg = error_of(tmp_path, BASE.replace('name = "cca-itq"', 'name = "cca-itk"'))
    assert "methods[0].name" in msg and "unknown method 'cca-itk'" in msg and "dcgh" in msg
    msg = error_of(tmp_path, BASE + '[[methods]]\nname = "cca-itq"\nlabel = "b"\nhparams = { regg = 1.0 }\n')
    assert "methods[1].hparams.regg" in msg and "known: ['itq_iters', 'reg']" in msg
    msg = error_of(tmp_path, BASE + '[[methods]]\nname = "cca-itq"\nlabel = "b"\nhparams = { itq_iters = 2.5 }\n')
    assert "methods[1].hparams.itq_iters" in msg and "expected int" in msg
    msg = error_of(tmp_path, BASE + '[[methods]]\nname = "cca-itq"\nlabel = "b"\npreset = "wiki"\n')
    assert "methods[1].preset" in msg and "no preset 'wiki'" in msg
    msg = error_of(tmp_path, BASE + '[[methods]]\nname = "cca-itq"\n')
    assert "methods[1].label" in msg and "used twice" in msg
    msg = error_of(tmp_path, BASE + '[[methods]]\nname = "cca-itq"\nlabel = "x"\nbits = [8, "16"]\n')
    assert "methods[1].bits[1]" in msg


def test_dataset_errors(tmp_path):
    msg = error_of(tmp_path, BASE.replace("n = 200", "n = 200, colour = 3"))
    assert "datasets[0].params.colour" in msg and "synthetic generator" in msg
    msg = error_of(tmp_path, BASE.replace('name = "synthetic"\n', 'name = "synthetic"\nprotocol = "dcgh"\n', 1))
    assert "datasets[0].protocol" in msg
    msg = error_of(tmp_path, BASE.replace("[[datasets]]", "[[datasetz]]"))
    assert "datasetz" in msg and "unknown key" in msg
    msg = error_of(tmp_path, BASE.replace("[[datasets]]\nname = \"synthetic\"\nparams = { n = 200 }\n", ""))
    assert ": datasets: missing" in msg


def test_bits_required_somewhere(tmp_path):
    msg = error_of(tmp_path, BASE.replace("bits = [8, 16]\n", ""))
    assert "methods[0]" in msg and "no bits" in msg


def test_not_toml(tmp_path):
    msg = error_of(tmp_path, "[grid\nbits = 3")
    assert "not valid TOML" in msg
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml")


def test_method_without_module_is_validated_lazily(monkeypatch, tmp_path):
    """A registered name whose module has not landed yet: accepted, hyper-parameters unchecked."""
    monkeypatch.setitem(registry._BUILTIN, "later", "cmhash.methods.not_written_yet")
    cfg = load_config(write(tmp_path, BASE + '[[methods]]\nname = "later"\nhparams = { anything = 1 }\n'))
    assert cfg.methods[1].name == "later" and cfg.methods[1].hparams == {"anything": 1}


def test_batch_size_in_one_place_only(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._BUILTIN, "later", "cmhash.methods.not_written_yet")
    text = (BASE.replace('name = "cca-itq"', 'name = "later"\nlabel = "a"')
            + '[[methods]]\nname = "later"\nhparams = { batch_size = 64 }\n[scenarios]\nbatch_size = [32, 64]\n')
    msg = error_of(tmp_path, text)
    assert "methods[1].hparams.batch_size" in msg


def test_batch_size_axis_needs_the_hyper_parameter(tmp_path):
    msg = error_of(tmp_path, BASE + "[scenarios]\nbatch_size = [32, 64]\n")
    assert "scenarios.batch_size" in msg and "'cca-itq' (methods[0]) has no batch_size" in msg


def test_parse_config_source_in_errors():
    with pytest.raises(ConfigError, match=r"^inline: grid.seeds\[0\]"):
        parse_config({"datasets": [{"name": "synthetic"}], "methods": [{"name": "cca-itq"}],
                      "grid": {"bits": [8], "seeds": [-1]}}, source="inline")
