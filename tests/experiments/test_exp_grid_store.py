"""Grid expansion and the results store (atomic records, stray temps, the runner lock)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cmhash.experiments.config import parse_config
from cmhash.experiments.grid import expand
from cmhash.experiments.runner import unique_cells
from cmhash.experiments.store import ResultsStore, StoreLocked


def config(**over):
    raw = {
        "datasets": [{"name": "synthetic", "params": {"n": 200}}, {"name": "synthetic", "label": "s2",
                                                                    "params": {"n": 300}}],
        "methods": [{"name": "cca-itq", "label": "A"},
                    {"name": "cca-itq", "label": "B", "hparams": {"itq_iters": 3}, "bits": [12]}],
        "grid": {"bits": [8, 24], "seeds": [0, 1, 2]},
        "scenarios": {"label_noise": [0.0, 0.2], "long_tail": {"values": [1, 10], "head_size": 2}},
    }
    raw.update(over)
    return parse_config(raw, source="test")


def test_expand_counts_and_order():
    cells = expand(config())
    # datasets 2 x scenarios (2 x 2) x (A: 2 bits + B: 1 bit) x seeds 3
    assert len(cells) == 2 * 4 * 3 * 3
    assert len({c.key for c in cells}) == len(cells)
    first = cells[0]
    assert first.dataset.label == "synthetic" and first.scenario == () and first.method.label == "A"
    assert [c.seed for c in cells[:3]] == [0, 1, 2]
    assert {c.bits for c in cells if c.method.label == "B"} == {12}
    noisy_tail = [c for c in cells if dict(c.scenario) == {"label_noise": 0.2, "long_tail": 10.0}]
    assert len(noisy_tail) == 2 * 3 * 3
    assert all(dict(c.scenario_params) == {"long_tail": (("head_size", 2),)} for c in noisy_tail)
    # clean axes are not part of the spec: a clean cell hashes the same with or without the axes
    clean = next(c for c in cells if c.scenario == () and c.method.label == "A" and c.bits == 8)
    plain = expand(config(scenarios={}))
    assert clean.key in {c.key for c in plain}
    assert clean.scenario_dict["label_noise"] == 0.0 and clean.scenario_dict["train_size"] == "all"


def test_keys_follow_the_spec_not_the_label():
    same = config(methods=[{"name": "cca-itq", "label": "A"}, {"name": "cca-itq", "label": "A2"}])
    cells = expand(same)
    by_label = {}
    for c in cells:
        by_label.setdefault(c.method.label, []).append(c.key)
    assert by_label["A"] == by_label["A2"]
    assert len(unique_cells(same)) == len(cells) // 2
    changed = expand(config(methods=[{"name": "cca-itq", "hparams": {"reg": 0.1}}]))
    base = expand(config(methods=[{"name": "cca-itq"}]))
    assert not {c.key for c in changed} & {c.key for c in base}
    again = expand(config(methods=[{"name": "cca-itq"}]))
    assert [c.key for c in again] == [c.key for c in base]  # stable across processes too (sha256)


def test_store_records_and_stray_temps(tmp_path):
    store = ResultsStore(tmp_path / "res")
    assert store.keys() == [] and not store.has("abc")
    store.write_failure("abc", {"error": "boom"})
    store.write("abc", {"metrics": {"i2t": {"map": 0.5}}})
    assert store.has("abc") and store.read("abc")["metrics"]["i2t"]["map"] == 0.5
    assert store.failures() == []  # a success clears the cell's old failure
    (store.cells / ".abc.json.x1.tmp").write_text('{"trunc')  # what kill -9 during a write leaves
    assert store.keys() == ["abc"]
    assert store.remove_stray_temps() == 1
    assert sorted(p.name for p in store.cells.iterdir()) == ["abc.json"]
    store.path("bad").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: corrupt result record"):
        store.read("bad")
    store.path("other").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="not a cmhash experiment record"):
        store.read("other")


def test_lock_refuses_a_live_runner_and_takes_over_a_dead_one(tmp_path):
    store = ResultsStore(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(live.pid))
        with pytest.raises(StoreLocked, match=f"pid {live.pid}"):
            with store.lock():
                pass
    finally:
        live.kill()
        live.wait()
    with store.lock():  # the process is gone: its lock is stale
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()


def test_expensive_cells_are_started_first():
    """The runner orders unfinished cells by the methods' cost hints, most expensive first."""
    pytest.importorskip("torch")
    from cmhash.experiments.runner import _cost_hint

    cfg = parse_config({
        "datasets": [{"name": "synthetic", "params": {"n": 200}}],
        "methods": [{"name": "cca-itq"}, {"name": "deep-baseline", "hparams": {"epochs": 5}},
                    {"name": "deep-baseline", "label": "long", "hparams": {"epochs": 50}},
                    {"name": "dghdgh", "hparams": {"epochs": 5}}],
        "grid": {"bits": [16, 128], "seeds": [0]},
    }, source="test")
    hint = {(c.method.label, c.bits): _cost_hint(c) for c in unique_cells(cfg)}
    assert hint[("dghdgh", 128)] > hint[("dghdgh", 16)] > hint[("deep-baseline", 16)]
    assert hint[("long", 16)] == 10 * hint[("deep-baseline", 16)]   # scales with the epochs asked for
    assert hint[("cca-itq", 16)] < hint[("long", 16)]
