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


def test_p_h2_figure_marks_bit_lengths_without_a_value(tmp_path: Path):
    """P@H<=2 is undefined where no query retrieves anything within radius 2 (long codes): the
    figure marks that bit length "no value" instead of silently drawing a shorter line."""
    import matplotlib.pyplot as plt

    from cmhash.experiments.figures import _line_panels, _missing_points

    cfg = parse_config({"datasets": [{"name": "synthetic"}], "methods": [{"name": "cca-itq", "label": "M"}],
                        "grid": {"bits": [16, 128], "seeds": [0, 1]}, "report": {"figures": ["p_h2_bits"]}},
                       source="t")
    cells = expand(cfg)

    def rec(cell):
        value = None if cell.bits == 128 or (cell.bits == 16 and cell.seed == 1) else 0.5
        return {"metrics": {"i2t": {"p_at_h2": value}, "t2i": {"p_at_h2": value}}, "curves": {}, "record": {}}

    entries = [Entry(c, rec(c)) for c in cells]
    metric = lambda r: r["metrics"]["i2t"]["p_at_h2"]  # noqa: E731
    assert _missing_points(entries, lambda e: e.cell.bits, metric) == {"M": {16: (1, 2), 128: (2, 2)}}
    made = make_figures(cfg, entries, tmp_path)  # one bit length with values is still drawn
    assert [p.suffix for p in made] == [".png", ".svg"]
    fig = _line_panels({"I->T": {"M": [(16, 50.0, 0.0)]}}, "bits", "P@H≤2 (%)", "t", xlog=True,
                       missing={"I->T": {"M": {16: (1, 2), 128: (2, 2)}}}, missing_why="nothing within radius 2")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == ["M: 1/2 no value", "M: no value"]
    assert "no value: nothing within radius 2" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)


def test_tsne_class_panel_has_a_legend():
    import matplotlib.pyplot as plt
    import numpy as np

    from cmhash.experiments.figures import TSNE_LEGEND_CLASSES, _class_panel

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots()
    classes = np.array([0, 1, 2, -1] * 2)
    _class_panel(ax, rng.normal(size=(8, 2)), classes, 4, multi=False)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["no label", "class 0", "class 1", "class 2", "image", "text"]
    ax.clear()
    many = np.arange(30).repeat(2)
    _class_panel(ax, rng.normal(size=(60, 2)), many, 30, multi=True)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == TSNE_LEGEND_CLASSES + 3 and "... 10 more classes" in labels
    plt.close(fig)
