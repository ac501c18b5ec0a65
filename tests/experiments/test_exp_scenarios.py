"""Scenario axes reach the data (cmhash.data.scenarios) and the method (batch_size), and are recorded."""

from __future__ import annotations

from cmhash.experiments.config import parse_config
from cmhash.experiments.grid import expand
from cmhash.experiments.runner import cell_data, run_grid
from cmhash.experiments.store import ResultsStore
from cmhash.methods import registry
from cmhash.methods.cca_itq import CCAITQ

DATA = {"name": "synthetic", "params": {"n": 400, "num_classes": 4, "max_labels": 1, "image_dim": 16,
                                        "text_dim": 8, "latent_dim": 4}}


def _cells(scenarios):
    cfg = parse_config({"datasets": [DATA], "methods": [{"name": "cca-itq"}], "grid": {"bits": [8], "seeds": [3]},
                        "scenarios": scenarios}, source="t")
    return {tuple(c.scenario): c for c in expand(cfg)}


def test_data_scenarios_change_the_training_split_only():
    cells = _cells({"label_noise": [0.0, 0.5], "long_tail": {"values": [1, 4], "head_size": 60},
                    "partial_pairing": [0.0, 0.5], "corrupted_pairs": [0.0, 0.2], "train_size": ["all", 100]})
    clean = cell_data(cells[()])
    for key, cell in cells.items():
        data = cell_data(cell)
        assert data.query.checksum() == clean.query.checksum()
        if not key:
            continue
        names = [s["name"] for s in data.train.info.get("scenarios", [])]
        axes = [k for k, _ in key if k != "train_size"]
        assert names == axes  # each data scenario applied once, in axis order, and recorded
        assert data.train.checksum() != clean.train.checksum()
    noisy = cell_data(cells[(("label_noise", 0.5),)])
    assert (noisy.train.labels != clean.train.labels).any(axis=1).mean() > 0.2
    tail = cell_data(cells[(("long_tail", 4.0),)])
    assert tail.train.labels.sum(axis=0).max() == 60 and tail.train.labels.sum(axis=0).min() == 15
    small = cell_data(cells[(("train_size", 100),)])
    assert len(small.train) == 100 and len(small.database) == 100  # database = train here
    assert tail.database.checksum() == clean.database.checksum()   # data scenarios keep the database


class _BatchProbe(CCAITQ):
    """CCA-ITQ with a batch_size hyper-parameter, to see the batch_size axis arrive."""

    name = "test-batch-probe"
    defaults = {**CCAITQ.defaults, "batch_size": 128}


def test_batch_size_axis_sets_the_hyper_parameter(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._REGISTRY, _BatchProbe.name, _BatchProbe)
    cfg = parse_config({"datasets": [DATA], "methods": [{"name": _BatchProbe.name}],
                        "grid": {"bits": [8], "seeds": [0]}, "scenarios": {"batch_size": [16, 32]},
                        "evaluation": {"curves": False, "fisher": False, "code_samples": 0}}, source="t")
    summary = run_grid(cfg, tmp_path / "r")
    assert summary.complete and summary.done == 2
    got = sorted(r["record"]["hparams"]["batch_size"] for r in ResultsStore(tmp_path / "r").records())
    assert got == [16, 32]
