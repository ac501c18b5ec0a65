"""Config -> run -> report on the shipped synthetic grid, resume after kill -9, parallel cells."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmhash.data.synthetic import make_synthetic
from cmhash.evaluation import evaluate
from cmhash.experiments.config import load_config, parse_config
from cmhash.experiments.grid import expand
from cmhash.experiments.report import write_report
from cmhash.experiments.runner import run_grid, unique_cells
from cmhash.experiments.store import ResultsStore
from cmhash.methods import registry
from cmhash.methods.registry import get_method

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "synthetic.toml"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exp") / "results"
    summary = run_grid(load_config(CONFIG), out)
    assert summary.complete and summary.done == summary.total == 24 and summary.skipped == 0
    return out


@pytest.fixture(scope="module")
def report(results) -> Path:
    return write_report(results)


def maps(results: Path) -> dict[str, tuple[float, float]]:
    store = ResultsStore(results)
    return {k: (r["metrics"]["i2t"]["map"], r["metrics"]["t2i"]["map"])
            for k, r in ((k, store.read(k)) for k in store.keys())}


def test_records_hold_the_run_record_and_the_metrics(results):
    cfg = load_config(CONFIG)
    store = ResultsStore(results)
    cell = next(c for c in expand(cfg) if c.method.label == "CCA-ITQ" and c.bits == 16 and c.seed == 1
                and not c.scenario)
    rec = store.read(cell.key)
    # recompute the same cell by hand: the stored numbers are the library's numbers
    data = make_synthetic(**cfg.datasets[0].params, seed=0)
    model = get_method("cca-itq").fit(data.train, 16, seed=1)
    direct = evaluate(model, data)
    assert rec["metrics"]["i2t"]["map"] == pytest.approx(direct["i2t"]["map"], abs=1e-12)
    assert rec["metrics"]["t2i"]["map"] == pytest.approx(direct["t2i"]["map"], abs=1e-12)
    run = rec["record"]
    assert run["method"] == "cca-itq" and run["bits"] == 16 and run["seed"] == 1
    assert run["hparams"] == {"reg": 1e-4, "itq_iters": 50}
    assert run["dataset"]["checksum"] == data.train.checksum() and "versions" in run
    assert rec["cell"]["dataset"]["split_seed"] == 0 and rec["label"] == "CCA-ITQ"
    assert rec["data"]["train"] == len(data.train) and rec["data"]["query"] == 60
    small = next(c for c in expand(cfg) if dict(c.scenario) == {"train_size": 200})
    assert store.read(small.key)["data"]["train"] == 200
    assert store.read(small.key)["record"]["dataset"]["n"] == 200


def test_rerun_skips_finished_cells(results):
    before = {k: ResultsStore(results).path(k).stat().st_mtime_ns for k in ResultsStore(results).keys()}
    summary = run_grid(load_config(CONFIG), results)
    assert summary.skipped == 24 and summary.done == 0 and summary.complete
    after = {k: ResultsStore(results).path(k).stat().st_mtime_ns for k in ResultsStore(results).keys()}
    assert after == before


def test_a_changed_default_reruns_the_cells_it_affects(results, tmp_path, monkeypatch):
    """Keys hash the hyper-parameters a config names, not the defaults: a finished cell whose
    recorded hyper-parameters differ from what the code would now use is stale and runs again."""
    import shutil

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    cls = registry.get_method_class("cca-itq")
    monkeypatch.setattr(cls, "defaults", {**cls.defaults, "itq_iters": 7})
    cfg = load_config(CONFIG)
    affected = {c.key for c in unique_cells(cfg) if c.method.name == "cca-itq"
                and "itq_iters" not in c.method.hparams}
    assert affected and len(affected) < 24
    summary = run_grid(cfg, copy)
    assert summary.done == len(affected) and summary.skipped == 24 - len(affected) and summary.complete
    for key in affected:
        assert ResultsStore(copy).read(key)["record"]["hparams"]["itq_iters"] == 7


def test_report_tables(results, report):
    store = ResultsStore(results)
    cfg = load_config(CONFIG)
    rows = list(csv.DictReader((report.parent / "tables" / "table1.csv").open()))
    assert len(rows) == 2 * 3 * 2  # metrics x bits x methods (train_size = all only)
    for metric, direction in (("map_i2t", "i2t"), ("map_t2i", "t2i")):
        for bits in (8, 16, 32):
            means = {}
            for label in ("CCA-ITQ", "CCA-ITQ (no rotation)"):
                vals = [100 * store.read(c.key)["metrics"][direction]["map"] for c in expand(cfg)
                        if c.method.label == label and c.bits == bits and not c.scenario]
                row = next(r for r in rows if r["metric"] == metric and r["bits"] == str(bits)
                           and r["method"] == label)
                assert float(row["mean"]) == pytest.approx(np.mean(vals), abs=1e-4)
                assert float(row["std"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-4)
                assert row["seeds"] == "2"
                means[label] = np.mean(vals)
            best = max(means, key=means.get)
            flags = {r["method"]: r["best"] for r in rows if r["metric"] == metric and r["bits"] == str(bits)}
            assert flags[best] == "1" and list(flags.values()).count("1") == 1
    md = report.read_text()
    assert "| metric | method | 8 | 16 | 32 |" in md and "**" in md and " ± " in md
    assert "cells finished: 24 of 24" in md and "machine:" in md and "numpy" in md
    assert "| metric | method | all | 200 |" in md
    cells = list(csv.DictReader((report.parent / "cells.csv").open()))
    assert len(cells) == 24 and {c["train_size"] for c in cells} == {"all", "200"}


def test_figures_written(report):
    figs = report.parent / "figures"
    names = {p.name for p in figs.iterdir()}
    for stem in ("map_scenario_train_size_synthetic-600_32b", "train_time_synthetic-600",
                 "tsne_synthetic-600_CCA-ITQ_32b"):
        for ext in ("png", "svg"):
            assert f"{stem}.{ext}" in names
    for p in figs.iterdir():
        assert p.stat().st_size > 1000, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![tsne_synthetic-600_CCA-ITQ_32b](figures/tsne_synthetic-600_CCA-ITQ_32b.png)" in report.read_text()


def test_resume_after_kill_matches_an_uninterrupted_run(results, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "cmhash", "run", str(CONFIG), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells = out / "cells"
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if cells.is_dir() and any(cells.glob("*.json")):
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    first = ResultsStore(out).keys()
    assert 1 <= len(first) < 24
    for key in first:  # whatever was written is complete
        ResultsStore(out).read(key)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"skipped {len(first)} (already finished)" in done.stdout.replace("\n", " ")
    assert sorted(p.name for p in cells.iterdir()) == sorted(f"{k}.json" for k in ResultsStore(results).keys())
    assert not list(out.rglob("*.tmp")) and not (out / ".lock").exists()
    assert maps(out) == maps(results)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_killing_a_parallel_run_takes_its_workers_down(results, tmp_path):
    """kill -9 a --jobs 2 run: its workers go too; the re-run (also parallel) gives exactly the
    records of the serial, uninterrupted run."""
    out = tmp_path / "par-killed"
    cmd = [sys.executable, "-m", "cmhash", "run", str(CONFIG), "--out", str(out), "--jobs", "2"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline and not list((out / "cells").glob("*.json")):
        time.sleep(0.01)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(workers) >= 2
    deadline = time.monotonic() + 10
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "workers outlived the killed runner"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert maps(out) == maps(results)


def test_failed_cells_are_reported_and_retried(monkeypatch, tmp_path):
    monkeypatch.setitem(registry._BUILTIN, "later", "cmhash.methods.not_written_yet")
    raw = {"datasets": [{"name": "synthetic", "params": {"n": 200}}],
           "methods": [{"name": "cca-itq"}, {"name": "later"}], "grid": {"bits": [8], "seeds": [0]}}
    cfg = parse_config(raw, source="failing")
    summary = run_grid(cfg, tmp_path / "r")
    assert summary.done == 1 and len(summary.failed) == 1 and not summary.complete
    assert "method 'later' is not available" in summary.failed[0][1]
    store = ResultsStore(tmp_path / "r")
    assert len(store.keys()) == 1 and len(store.failures()) == 1
    assert "Traceback" in store.failures()[0]["traceback"]
    again = run_grid(cfg, tmp_path / "r")
    assert again.skipped == 1 and len(again.failed) == 1  # retried, still failing, nothing duplicated
    assert len(store.keys()) == 1


def test_paper_values_beside_ours(tmp_path):
    raw = {
        "datasets": [{"name": "synthetic", "params": {"n": 200}}],
        "methods": [{"name": "cca-itq", "label": "CCA-ITQ"}],
        "grid": {"bits": [8, 16], "seeds": [0]},
        "evaluation": {"curves": False, "code_samples": 0},
        "report": {"figures": [], "tables": [{
            "title": "Layout of Table 9", "metrics": ["map_i2t"],
            "paper": {"source": "A paper, Table 9", "dataset": "other data", "scale": 100,
                      "map_i2t": {"PaperNet": {"8": 0.3384, "16": 0.3735}}}}]},
    }
    cfg = parse_config(raw, source="paper")
    run_grid(cfg, tmp_path / "r")
    md = write_report(tmp_path / "r").read_text()
    assert "| *PaperNet (paper)* | *33.84* | *37.35* |" in md
    assert "A paper, Table 9, on other data" in md
    rows = list(csv.DictReader((tmp_path / "r" / "report" / "tables" / "table1.csv").open()))
    assert [r["method"] for r in rows] == ["CCA-ITQ", "CCA-ITQ"] and all(r["paper"] == "" for r in rows)
    assert not (tmp_path / "r" / "report" / "figures").exists()
    # a .md target: the markdown there, tables beside it in a folder of the same name
    md = write_report(tmp_path / "r", tmp_path / "docs" / "results-x.md")
    assert md == tmp_path / "docs" / "results-x.md"
    assert (tmp_path / "docs" / "results-x" / "tables" / "table1.csv").is_file()
    assert "CSV: `results-x/tables/table1.csv`" in md.read_text()


def test_table_marks_seeds_without_a_value():
    """P@H<=2 is undefined when no query retrieves anything within radius 2: such seeds are
    counted, not silently dropped, and a value missing in every seed reads '—'."""
    from cmhash.experiments.report import Table, table_csv, table_markdown

    cells = {("p_h2_i2t", "A", 16): [40.0, 60.0], ("p_h2_i2t", "B", 16): [30.0, 31.0, 32.0]}
    undefined = {("p_h2_i2t", "A", 16): 1, ("p_h2_i2t", "A", 128): 3}
    table = Table("t", "", "method", "bits", ("p_h2_i2t",), ["A", "B"], [16, 128], cells, {}, "", undefined)
    assert table.fmt("p_h2_i2t", "A", 16) == "50.00 ± 14.14 (2/3)"
    assert table.fmt("p_h2_i2t", "B", 16) == "31.00 ± 1.00"
    assert table.fmt("p_h2_i2t", "A", 128) == "—" and table.has_undefined
    assert "| A | **50.00 ± 14.14 (2/3)** | — |" in table_markdown(table)
    rows = list(csv.DictReader(table_csv(table).splitlines()))
    assert [(r["method"], r["bits"], r["seeds"], r["seeds_without_value"]) for r in rows] == [
        ("A", "16", "2", "1"), ("B", "16", "3", "0"), ("A", "128", "0", "3"), ("B", "128", "0", "0")]


def test_run_diagnostics_are_table_metrics():
    """Engine diagnostics and any numeric scalar under record["diagnostics"] ("diag:<name>", dotted
    for nested dicts) can be table metrics; non-numbers read as missing; no best is marked."""
    from cmhash.experiments.report import Table, metric_value, table_markdown

    rec = {"metrics": {}, "record": {"training": {"selected_epoch": 7, "best_val_map": 0.5},
                                      "diagnostics": {"unique_codes_image": 812, "bit_mean_abs_text": 0.25,
                                                      "best_epoch": 9, "best_val_map": 0.4321, "tau": 0.0125,
                                                      "selection": "best validation mAP", "flag": True,
                                                      "hint": {"pair_agreement": 0.97}}}}
    assert metric_value(rec, "unique_codes_image") == 812.0
    assert metric_value(rec, "bit_mean_abs_text") == 0.25
    assert metric_value(rec, "best_epoch") == 9.0
    assert metric_value(rec, "best_val_map") == pytest.approx(43.21)
    assert metric_value(rec, "diag:tau") == 0.0125
    assert metric_value(rec, "diag:hint.pair_agreement") == 0.97
    assert metric_value(rec, "diag:selection") is None and metric_value(rec, "diag:flag") is None
    assert metric_value(rec, "diag:missing") is None and metric_value(rec, "unique_codes_text") is None
    # a method's own record section, outside "diagnostics" (HINT's "hint"), is reached by its path
    own = {"metrics": {}, "record": {"hint": {"pairs_in_one_community": 0.25, "tree": {"levels": 3}}}}
    assert metric_value(own, "diag:hint.pairs_in_one_community") == 0.25
    assert metric_value(own, "diag:hint.tree.levels") == 3.0 and metric_value(own, "diag:hint.nothing") is None
    old = {"metrics": {}, "record": {"training": {"selected_epoch": 7, "best_val_map": 0.5}}}  # before diagnostics
    assert metric_value(old, "best_epoch") == 7.0 and metric_value(old, "best_val_map") == 50.0
    cells = {("unique_codes_image", "A", 16): [800.0, 812.0], ("unique_codes_image", "B", 16): [10.0, 12.0],
             ("diag:tau", "A", 16): [0.01, 0.02], ("diag:tau", "B", 16): [0.5, 0.5]}
    table = Table("t", "", "method", "bits", ("unique_codes_image", "diag:tau"), ["A", "B"], [16], cells, {})
    md = table_markdown(table)
    assert "**" not in md
    assert "| distinct image codes (training set) | A | 806.0 ± 8.5 |" in md
    assert "| diag:tau | B | 0.500 ± 0.000 |" in md


def test_diagnostic_metrics_in_a_config(tmp_path):
    raw = {
        "datasets": [{"name": "synthetic", "params": {"n": 200}}],
        "methods": [{"name": "deep-baseline", "label": "DB", "hparams": {"epochs": 2, "hidden": [16]}}],
        "grid": {"bits": [8], "seeds": [0, 1]},
        "evaluation": {"curves": False, "code_samples": 0, "fisher": False},
        "report": {"figures": [], "tables": [{
            "title": "Diagnostics", "metrics": ["best_epoch", "unique_codes_text", "bit_mean_abs_image",
                                                "diag:unique_share_image"]}]},
    }
    cfg = parse_config(raw, source="diag")
    run_grid(cfg, tmp_path / "r")
    md = write_report(tmp_path / "r").read_text()
    assert "| selected epoch | DB |" in md and "| diag:unique_share_image | DB |" in md
    rows = list(csv.DictReader((tmp_path / "r" / "report" / "tables" / "table1.csv").open()))
    store = ResultsStore(tmp_path / "r")
    recs = [store.read(k) for k in store.keys()]
    want = np.mean([r["record"]["diagnostics"]["unique_codes_text"] for r in recs])
    got = next(r for r in rows if r["metric"] == "unique_codes_text")
    assert float(got["mean"]) == pytest.approx(want) and got["seeds"] == "2" and got["best"] == "0"
    cells = list(csv.DictReader((tmp_path / "r" / "report" / "cells.csv").open()))
    assert {"unique_codes_image", "bit_mean_abs_text", "best_epoch"} <= set(cells[0])
    bad = {**raw, "report": {"tables": [{"title": "x", "metrics": ["unique_codes"]}]}}
    with pytest.raises(ValueError, match=r"metrics\[0\].*diag:<name>"):
        parse_config(bad, source="bad")


def test_table_where_takes_one_value_or_a_list():
    from cmhash.experiments.report import _matches

    assert _matches("HINT", "HINT") and not _matches("HINT V1", "HINT")
    assert _matches("HINT V1", ["HINT", "HINT V1"]) and not _matches("DEMO", ["HINT", "HINT V1"])
    assert _matches(16, [16, 32]) and not _matches(64, [16, 32])


def test_report_against_another_config(results, tmp_path):
    """`cmhash report RESULTS --config C`: tables of C's grid from the cells in RESULTS (cells run
    in parts under other configs are found by key); the saved config is not used."""
    text = CONFIG.read_text().replace('label = "CCA-ITQ (no rotation)"', 'label = "Unrotated"')
    other = tmp_path / "renamed.toml"
    other.write_text(text)
    md = write_report(results, tmp_path / "rep.md", figures=False, config=load_config(other)).read_text()
    assert "Unrotated" in md and "CCA-ITQ (no rotation)" not in md
    assert "(no rotation)" in write_report(results, tmp_path / "saved.md", figures=False).read_text()


def test_report_marks_cells_with_seeds_not_run(results, tmp_path):
    """A grid only partly run: a cell with n of its N seeds finished reads '(n of N run)', the CSV
    counts the seeds not run, and a footnote says what the mark means."""
    import shutil

    partial = tmp_path / "partial"
    shutil.copytree(results, partial)
    store = ResultsStore(partial)
    config = load_config(CONFIG)
    cells = expand(config)
    victim = cells[0]
    same_but_seed = lambda c: {k: v for k, v in c.spec().items() if k != "seed"}  # noqa: E731
    removed = [c for c in cells if c.method.label == victim.method.label and c.seed != victim.seed
               and same_but_seed(c) == same_but_seed(victim)]
    for c in removed:
        (partial / "cells" / f"{c.key}.json").unlink()
    assert not any(store.has(c.key) for c in removed) and store.has(victim.key)
    seeds = len(removed) + 1
    md = write_report(partial, tmp_path / "partial.md", figures=False).read_text()
    assert f"(1 of {seeds} run)" in md and "of the grid's N seeds" in md
    assert " run)" not in write_report(results, tmp_path / "full.md", figures=False).read_text()  # all run
    rows = list(csv.DictReader((tmp_path / "partial" / "tables" / "table1.csv").read_text().splitlines()))
    assert any(r["seeds_not_run"] == str(len(removed)) and r["seeds"] == "1" for r in rows)
