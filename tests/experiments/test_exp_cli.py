"""The `cmhash run` / `cmhash report` commands: user mistakes give a clear message and status 2."""

from __future__ import annotations

from pathlib import Path

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
