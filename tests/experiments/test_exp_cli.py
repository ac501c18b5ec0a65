"""The `cmhash run` / `cmhash report` commands: user mistakes give a clear message and status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cmhash.cli import app

RUNNER = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def text(res) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(res.output.split())


def test_run_rejects_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[datasets]]\nname = "synthetic"\n[[methods]]\nname = "nope"\n[grid]\nbits = [8]\n')
    res = RUNNER.invoke(app, ["run", str(bad), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "methods[0].name" in text(res) and "unknown method 'nope'" in text(res)
    res = RUNNER.invoke(app, ["run", str(REPO / "configs" / "synthetic.toml"), "--jobs", "0"])
    assert res.exit_code == 2 and "--jobs must be >= 1" in text(res)


def test_dry_run_lists_cells_without_running(tmp_path):
    out = tmp_path / "r"
    res = RUNNER.invoke(app, ["run", str(REPO / "configs" / "synthetic.toml"), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, text(res)
    assert "24 cells, 0 finished" in text(res) and text(res).count("to do") == 24
    assert not out.exists()


def test_report_needs_a_results_folder(tmp_path):
    res = RUNNER.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not a results folder" in text(res)


def test_only_runs_the_selected_cells_into_the_same_results(tmp_path):
    config, out = str(REPO / "configs" / "synthetic.toml"), str(tmp_path / "r")
    res = RUNNER.invoke(app, ["run", config, "--out", out, "--dry-run", "--only", "bits=8,16",
                              "--only", "method=CCA-ITQ", "--only", "train_size=200"])
    assert res.exit_code == 0, text(res)
    assert "4 cells selected by --only" in text(res) and text(res).count("to do") == 4
    assert all(" 32b " not in line and "no rotation" not in line for line in res.output.splitlines())
    # run one cell (a method matches by name too), then the whole grid knows it is finished
    res = RUNNER.invoke(app, ["run", config, "--out", out, "--only", "method=cca-itq", "--only", "bits=8",
                              "--only", "seed=1", "--only", "train_size=200"])
    assert res.exit_code == 0, text(res)
    assert "done 2, skipped 0 (already finished), failed 0 of 2 cells" in text(res)  # both entries: cca-itq
    res = RUNNER.invoke(app, ["run", config, "--out", out, "--dry-run"])
    assert "24 cells, 2 finished" in text(res)


@pytest.mark.parametrize("term, message", [
    ("bits", "expected FIELD=VALUE"),
    ("colour=red", "unknown field 'colour'"),
    ("bits=12", "no cell has bits '12'; the grid has '16', '32', '8'"),
    ("method=DCGH", "no cell has method 'DCGH'"),
])
def test_only_mistakes_are_clear_errors(term, message, tmp_path):
    out = tmp_path / "r"
    res = RUNNER.invoke(app, ["run", str(REPO / "configs" / "synthetic.toml"), "--out", str(out), "--only", term])
    assert res.exit_code == 2 and message in text(res), text(res)
    assert not out.exists()
