"""Figures that need what only some records carry (HINT's lambda), and the figure switch."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmhash.experiments.config import parse_config
from cmhash.experiments.figures import lambda_curve, make_figures
from cmhash.experiments.grid import expand
from cmhash.experiments.report import Entry

pytest.importorskip("matplotlib")


def _config(figures):
    return parse_config({"datasets": [{"name": "synthetic"}], "methods": [{"name": "cca-itq", "label": "M"}],
                         "grid": {"bits": [16], "seeds": [0, 1]}, "report": {"figures": figures}}, source="t")


def _record(lams):
    rows = [{"epoch": i + 1, "image": v, "text": v / 2} for i, v in enumerate(lams)]
    return {"record": {"hint": {"lambda_per_epoch": rows}}, "metrics": {}, "curves": {}}


def test_lambda_curve_reads_the_hint_record():
    lam = lambda_curve(_record([0.5, 0.3, 0.2])["record"])
    assert lam["epoch"].tolist() == [1, 2, 3] and lam["image"].tolist() == [0.5, 0.3, 0.2]
    assert lam["text"].tolist() == [0.25, 0.15, 0.1]
    assert lambda_curve({"method": "cca-itq"}) is None


def test_lambda_figure_only_when_records_carry_it(tmp_path: Path):
    cfg = _config(["lambda"])
    cells = expand(cfg)
    with_lambda = [Entry(c, _record([0.9, 0.6, 0.4, 0.3])) for c in cells]
    made = make_figures(cfg, with_lambda, tmp_path / "a")
    assert [p.name for p in made] == ["lambda_synthetic.png", "lambda_synthetic.svg"]
    assert all(p.stat().st_size > 1000 for p in made)
    without = [Entry(c, {"record": {}, "metrics": {}, "curves": {}}) for c in cells]
    assert make_figures(cfg, without, tmp_path / "b") == []
    assert make_figures(_config([]), with_lambda, tmp_path / "c") == []  # figures switched off


def test_figures_are_byte_identical_when_redrawn(tmp_path: Path):
    """No creation date and fixed SVG ids: regenerating a report does not churn its figures."""
    cfg = _config(["lambda"])
    entries = [Entry(c, _record([0.9, 0.6, 0.4, 0.3])) for c in expand(cfg)]
    first = make_figures(cfg, entries, tmp_path / "a")
    second = make_figures(cfg, entries, tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
