"""Experiments as data: a TOML config names a grid, the runner fills it, the report shows it.

``load_config(path)`` -> :class:`ExperimentConfig`; ``expand(config)`` -> cells;
``run_grid(config, out, jobs=...)`` fills a resumable results store; ``write_report(out)``
writes tables and figures. The CLI: ``cmhash run CONFIG`` and ``cmhash report RESULTS``.
"""

from cmhash.experiments.config import ConfigError, ExperimentConfig, load_config, parse_config
from cmhash.experiments.grid import Cell, expand
from cmhash.experiments.report import write_report
from cmhash.experiments.runner import RunSummary, run_grid
from cmhash.experiments.store import ResultsStore

__all__ = [
    "ConfigError", "ExperimentConfig", "load_config", "parse_config", "Cell", "expand",
    "run_grid", "RunSummary", "write_report", "ResultsStore",
]
