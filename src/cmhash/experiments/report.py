"""Tables from a results store: mean +- std over seeds, the best per column marked, paper values beside.

``write_report(results, out)`` writes ``report.md`` (every table, the machine, versions and wall
times), one CSV per table, ``cells.csv`` (one row per finished cell) and the figures of
:mod:`cmhash.experiments.figures`.
"""

from __future__ import annotations

import csv
import io
import os
import platform
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cmhash.experiments.config import (
    DIAG_PREFIX, DIAGNOSTIC_NAMES, SCENARIO_AXES, ExperimentConfig, TableSpec, parse_config,
)
from cmhash.experiments.grid import Cell, expand
from cmhash.experiments.store import ResultsStore
from cmhash.io import atomic_write

DIRECTION_NAMES = {"i2t": "I→T", "t2i": "T→I"}
METRIC_TITLES = {
    "map_i2t": "mAP@all I→T (%)", "map_t2i": "mAP@all T→I (%)",
    "p_h2_i2t": "P@H≤2 I→T (%)", "p_h2_t2i": "P@H≤2 T→I (%)",
    "fisher_i2t": "Fisher ratio I→T (%)", "fisher_t2i": "Fisher ratio T→I (%)",
    "train_time_s": "training time (s)", "eval_time_s": "evaluation time (s)",
}
METRIC_TITLES.update({
    "unique_codes_image": "distinct image codes (training set)",
    "unique_codes_text": "distinct text codes (training set)",
    "unique_share_image": "distinct image codes / items", "unique_share_text": "distinct text codes / items",
    "bit_mean_abs_image": "mean abs(bit mean), image", "bit_mean_abs_text": "mean abs(bit mean), text",
    "best_epoch": "selected epoch", "best_val_map": "validation mAP@all (%)",
})
LOWER_IS_BETTER = {"train_time_s", "eval_time_s"}
#: diagnostics describe a run; no "best" is marked for them
UNRANKED = set(DIAGNOSTIC_NAMES) - {"best_val_map"}


def metric_title(metric: str) -> str:
    return METRIC_TITLES.get(metric, metric)


def metric_digits(metric: str) -> int:
    """Decimals shown: counts and epochs 1, times and other diagnostics 3, percentages 2."""
    if metric.startswith(("unique_codes_", "best_epoch")):
        return 1
    if metric in LOWER_IS_BETTER or not is_ranked(metric):
        return 3
    return 2


def is_ranked(metric: str) -> bool:
    return metric not in UNRANKED and not metric.startswith(DIAG_PREFIX)


def diagnostic_value(record: dict[str, Any], name: str) -> float | None:
    """A numeric scalar of a cell's ``record["diagnostics"]`` (``a.b`` = key b of the dict a), else
    of the run record itself (a method's own section, e.g. ``hint.pair_bit_agreement``); None
    when absent or not a number. Records written before the engine kept diagnostics still give
    ``best_epoch`` and ``best_val_map`` from their training record."""
    run = record.get("record", {})

    def lookup(value: Any) -> Any:
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    value = lookup(run.get("diagnostics", {}))
    if value is None:
        value = lookup(run)
    if value is None and name in ("best_epoch", "best_val_map"):
        value = run.get("training", {}).get("selected_epoch" if name == "best_epoch" else "best_val_map")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


@dataclass(frozen=True)
class Entry:
    """A cell of the config's grid with its stored record (None while unfinished)."""

    cell: Cell
    record: dict[str, Any] | None

    def dim(self, name: str) -> Any:
        if name == "method":
            return self.cell.method.label
        if name == "dataset":
            return self.cell.dataset.label
        if name == "bits":
            return self.cell.bits
        if name == "seed":
            return self.cell.seed
        return self.cell.scenario_dict[name]


def metric_value(record: dict[str, Any], metric: str) -> float | None:
    """A metric of a stored cell record, in the unit the tables show (% for retrieval metrics)."""
    if metric.startswith(DIAG_PREFIX):
        return diagnostic_value(record, metric[len(DIAG_PREFIX):])
    if metric in DIAGNOSTIC_NAMES:
        value = diagnostic_value(record, metric)
        return None if value is None else 100.0 * value if metric == "best_val_map" else value
    if metric == "train_time_s":
        return record["record"].get("wall_time_s")
    if metric == "eval_time_s":
        return record.get("eval_time_s")
    name, direction = metric.rsplit("_", 1)
    values = record["metrics"].get(direction, {})
    if name == "map":
        return 100.0 * values["map"]
    if name == "p_h2":
        return None if values.get("p_at_h2") is None else 100.0 * values["p_at_h2"]
    if name == "fisher":
        fisher = values.get("fisher")
        return None if fisher is None or fisher.get("mean") is None else 100.0 * fisher["mean"]
    raise KeyError(metric)


def load_results(results: str | os.PathLike, config: ExperimentConfig | None = None
                 ) -> tuple[ExperimentConfig, list[Entry]]:
    """The config saved in a results folder (or ``config``, e.g. the full config of a grid whose
    cells were run in parts) and its grid, each cell with its record if finished."""
    store = ResultsStore(results)
    if config is None:
        saved = store.load_config()
        source = saved.get("source") or str(Path(results) / "config.json")
        config = parse_config(saved["config"], source=source, path=Path(source))
    entries = [Entry(c, store.read(c.key) if store.has(c.key) else None) for c in expand(config)]
    return config, entries


# ------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    subtitle: str
    rows_dim: str
    cols_dim: str
    metrics: tuple[str, ...]
    rows: list[Any]
    cols: list[Any]
    cells: dict[tuple[str, Any, Any], list[float]]          # (metric, row, col) -> per-seed values
    paper: dict[tuple[str, str, str], float]                 # (metric, row, col) -> paper value
    paper_note: str = ""
    undefined: dict[tuple[str, Any, Any], int] = field(default_factory=dict)  # finished seeds without a value
    not_run: dict[tuple[str, Any, Any], int] = field(default_factory=dict)  # grid seeds not finished yet

    def fmt(self, metric: str, row: Any, col: Any, digits: int = 2) -> str:
        """mean ± std; "(n/N)" when only n of the N finished seeds have a value; "(n of N run)"
        when only n of the grid's N seeds are finished; "—" when none."""
        text = _fmt(self.stats(metric, row, col), digits)
        missing = self.undefined.get((metric, row, col), 0)
        if missing and text != "—":
            n = len(self.cells[(metric, row, col)])
            text += f" ({n}/{n + missing})"
        not_run = self.not_run.get((metric, row, col), 0)
        if not_run and text != "—":
            n = len(self.cells.get((metric, row, col), [])) + missing
            text += f" ({n} of {n + not_run} run)"
        return text

    @property
    def has_undefined(self) -> bool:
        return any(self.undefined.values())

    @property
    def has_not_run(self) -> bool:
        return any(self.not_run.values())

    def stats(self, metric: str, row: Any, col: Any) -> tuple[float, float, int] | None:
        vals = self.cells.get((metric, row, col))
        if not vals:
            return None
        arr = np.asarray(vals, dtype=float)
        return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0, int(arr.size)

    def best(self, metric: str, col: Any) -> Any:
        if not is_ranked(metric):
            return None
        scored = [(s[0], r) for r in self.rows if (s := self.stats(metric, r, col)) is not None]
        if not scored:
            return None
        pick = min if metric in LOWER_IS_BETTER else max
        return pick(scored, key=lambda t: t[0])[1]


def _norm(value: Any) -> str:
    """A dimension value as text ('0.5', '16', 'all'): filters and paper keys compare on it."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_tables(config: ExperimentConfig, entries: list[Entry]) -> list[Table]:
    specs = list(config.tables) or default_table_specs(config)
    tables: list[Table] = []
    for spec in specs:
        tables.extend(_build(spec, entries))
    return tables


def default_table_specs(config: ExperimentConfig) -> list[TableSpec]:
    """Without [[report.tables]]: mAP by bits, and mAP against each scenario axis that varies."""
    specs = [TableSpec(title="mAP@all (%) by code length", columns="bits")]
    for axis in config.scenarios:
        if len(axis.values) > 1:
            specs.append(TableSpec(title=f"mAP@all (%) against {axis.name}", columns=axis.name))
    return specs


def _matches(value: Any, wanted: Any) -> bool:
    """A table's ``where`` filter: one value, or a list of accepted values."""
    if isinstance(wanted, list):
        return any(_norm(value) == _norm(w) for w in wanted)
    return _norm(value) == _norm(wanted)


def _build(spec: TableSpec, entries: list[Entry]) -> list[Table]:
    done = [e for e in entries if all(_matches(e.dim(k), v) for k, v in spec.where.items())]
    fixed = {spec.rows, spec.columns, "seed", *(k for k, v in spec.where.items() if not isinstance(v, list))}
    other_dims = [d for d in ("dataset", *SCENARIO_AXES, "bits", "method") if d not in fixed]
    groups: dict[tuple, list[Entry]] = defaultdict(list)
    for e in done:
        groups[tuple(e.dim(d) for d in other_dims)].append(e)
    out = []
    for group_key, group in groups.items():
        varying = [(d, v) for d, v in zip(other_dims, group_key)
                   if len({_norm(e.dim(d)) for e in done}) > 1 or d == "dataset"]
        subtitle = ", ".join(f"{d} = {_norm(v)}" for d, v in varying)
        rows = _ordered(e.dim(spec.rows) for e in group)
        cols = _ordered(e.dim(spec.columns) for e in group)
        cells: dict[tuple[str, Any, Any], list[float]] = defaultdict(list)
        undefined: dict[tuple[str, Any, Any], int] = defaultdict(int)
        not_run: dict[tuple[str, Any, Any], int] = defaultdict(int)
        for e in group:
            if e.record is None:
                for metric in spec.metrics:
                    not_run[(metric, e.dim(spec.rows), e.dim(spec.columns))] += 1
                continue
            for metric in spec.metrics:
                value = metric_value(e.record, metric)
                where = (metric, e.dim(spec.rows), e.dim(spec.columns))
                if value is not None:
                    cells[where].append(value)
                else:
                    undefined[where] += 1
        paper: dict[tuple[str, str, str], float] = {}
        note = ""
        if spec.paper:
            scale = float(spec.paper.get("scale", 1.0))
            for metric in spec.metrics:
                for row, colvals in spec.paper.get(metric, {}).items():
                    for col, val in colvals.items():
                        paper[(metric, str(row), str(col))] = float(val) * scale
            note = f"paper: {spec.paper['source']}" + (
                f", on {spec.paper['dataset']}" if "dataset" in spec.paper else "")
        out.append(Table(spec.title, subtitle, spec.rows, spec.columns, spec.metrics,
                         rows, cols, dict(cells), paper, note, dict(undefined), dict(not_run)))
    return out


def _ordered(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    if all(isinstance(v, (int, float)) for v in seen):
        return sorted(seen)
    return seen


def _fmt(stats: tuple[float, float, int] | None, digits: int = 2) -> str:
    if stats is None:
        return "—"
    mean, std, n = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def table_markdown(table: Table) -> str:
    head = [table.rows_dim] + [_norm(c) for c in table.cols]
    if len(table.metrics) > 1:
        head = ["metric"] + head
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    paper_rows = list(dict.fromkeys(r for (_, r, _) in table.paper))  # in the paper's (config's) order
    for metric in table.metrics:
        digits = metric_digits(metric)
        best = {c: table.best(metric, c) for c in table.cols}
        for row in table.rows:
            vals = []
            for c in table.cols:
                text = table.fmt(metric, row, c, digits)
                vals.append(f"**{text}**" if best[c] == row and text != "—" else text)
            lines.append("| " + " | ".join(([metric_title(metric)] if len(table.metrics) > 1 else [])
                                             + [str(row)] + vals) + " |")
        for prow in paper_rows:
            vals = [table.paper.get((metric, prow, _norm(c))) for c in table.cols]
            if all(v is None for v in vals):
                continue
            cells = ["—" if v is None else f"*{v:.2f}*" for v in vals]
            lines.append("| " + " | ".join(([metric_title(metric)] if len(table.metrics) > 1 else [])
                                             + [f"*{prow} (paper)*"] + cells) + " |")
    return "\n".join(lines)


def table_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["subtitle", "metric", table.rows_dim, table.cols_dim, "mean", "std", "seeds", "best", "paper",
                "seeds_without_value", "seeds_not_run"])
    for metric in table.metrics:
        for c in table.cols:
            best = table.best(metric, c)
            for row in table.rows:
                s = table.stats(metric, row, c)
                paper = table.paper.get((metric, str(row), _norm(c)))
                w.writerow([table.subtitle, metric, row, _norm(c),
                            "" if s is None else f"{s[0]:.4f}", "" if s is None else f"{s[1]:.4f}",
                            0 if s is None else s[2], int(best == row and s is not None),
                            "" if paper is None else f"{paper:.4f}",
                            table.undefined.get((metric, row, c), 0), table.not_run.get((metric, row, c), 0)])
    return buf.getvalue()


def cells_csv(entries: list[Entry], axes: list[str]) -> str:
    """One row per finished cell (every metric), for analysis elsewhere."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    metrics = list(METRIC_TITLES)  # the retrieval metrics, times and the engine's diagnostics
    w.writerow(["key", "dataset", "method", "bits", "seed", *axes, *metrics])
    seen: set[tuple[str, str]] = set()
    for e in entries:
        if e.record is None or (e.cell.key, e.cell.method.label) in seen:
            continue
        seen.add((e.cell.key, e.cell.method.label))
        vals = [metric_value(e.record, m) for m in metrics]
        w.writerow([e.cell.key, e.cell.dataset.label, e.cell.method.label, e.cell.bits, e.cell.seed,
                    *[_norm(e.dim(a)) for a in axes], *["" if v is None else f"{v:.6g}" for v in vals]])
    return buf.getvalue()


# ------------------------------------------------------------------------- report


def write_report(results: str | os.PathLike, out: str | os.PathLike | None = None, *,
                 figures: bool = True, config: ExperimentConfig | None = None) -> Path:
    """Write the report of a results folder; return the markdown file's path.

    ``out`` a folder (default ``RESULTS/report``): ``report.md``, ``cells.csv``, ``tables/`` and
    ``figures/`` go in it. ``out`` a ``.md`` file (e.g. ``docs/results-wiki.md``): the markdown
    goes there and the rest into the folder of the same name beside it (``docs/results-wiki/``).
    """
    config, entries = load_results(results, config)
    out = Path(out) if out is not None else Path(results) / "report"
    if out.suffix == ".md":
        md_path, assets = out, out.with_suffix("")
    else:
        md_path, assets = out / "report.md", out
    link = lambda p: p.relative_to(md_path.parent).as_posix()  # noqa: E731
    tables = build_tables(config, entries)
    axes = [a.name for a in config.scenarios]
    _write_text(assets / "cells.csv", cells_csv(entries, axes))
    parts = [f"# {config.name}", ""]
    if config.description:
        parts += [config.description, ""]
    parts += _summary_lines(config, entries, results)
    parts += [f"Generated by `cmhash report {results}`; one row per finished cell in `{link(assets / 'cells.csv')}`.", ""]
    for i, table in enumerate(tables, 1):
        csv_path = assets / "tables" / f"table{i}.csv"
        _write_text(csv_path, table_csv(table))
        title = table.title + (f" — {table.subtitle}" if table.subtitle else "")
        parts += [f"## {title}", ""]
        if table.paper_note:
            parts += [f"Mean ± std over seeds; best of ours per column in bold; *italic rows: {table.paper_note}*.", ""]
        else:
            parts += ["Mean ± std over seeds" + ("; best per column in bold." if any(map(is_ranked, table.metrics))
                                                 else " (run diagnostics: no best marked)."), ""]
        parts += [table_markdown(table), ""]
        if table.has_undefined:
            parts += ["Some seeds have no value here (e.g. P@H≤2 when no query finds any item within "
                      "Hamming radius 2): \"(n/N)\" = mean and std over the n of N seeds with a value; "
                      "\"—\" = no seed has one.", ""]
        if table.has_not_run:
            parts += ["\"(n of N run)\" = only n of the grid's N seeds of that cell are finished (the "
                      "mean and std are over those n).", ""]
        parts += [f"CSV: `{link(csv_path)}`", ""]
    if figures:
        from cmhash.experiments.figures import make_figures

        fig_dir = assets / "figures"
        for old in (*fig_dir.glob("*.png"), *fig_dir.glob("*.svg")):  # figures of an earlier report
            old.unlink()
        made = make_figures(config, entries, fig_dir)
        if made:
            parts += ["## Figures", "", "Each figure also as SVG beside the PNG.", ""]
            for path in [p for p in made if p.suffix == ".png"]:
                parts += [f"![{path.stem}]({link(path)})", ""]
    _write_text(md_path, "\n".join(parts).rstrip() + "\n")
    return md_path


def _summary_lines(config: ExperimentConfig, entries: list[Entry], results: str | os.PathLike) -> list[str]:
    store = ResultsStore(results)
    keys = {e.cell.key for e in entries}
    finished = {e.cell.key for e in entries if e.record is not None}
    records = {e.cell.key: e.record for e in entries if e.record is not None}
    train = sum(r["record"].get("wall_time_s") or 0.0 for r in records.values())
    evals = sum(r.get("eval_time_s") or 0.0 for r in records.values())
    versions: dict[str, set[str]] = defaultdict(set)
    for r in records.values():
        for k, v in r["record"].get("versions", {}).items():
            versions[k].add(str(v))
    runs = store.runs()
    lines = [
        f"- config: `{config.path}`; results: `{results}`",
        f"- cells finished: {len(finished)} of {len(keys)}"
        + (f" ({len(store.failures())} failed, see `failed/`)" if store.failures() else ""),
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()})",
        f"- time: training {train:.1f} s + evaluation {evals:.1f} s summed over cells"
        + (f"; runner wall time {sum(r['wall_time_s'] for r in runs):.1f} s over {len(runs)} run(s)"
           f" (jobs: {', '.join(sorted({str(r['jobs']) for r in runs}))})" if runs else ""),
    ]
    if versions:
        lines.append("- versions: " + ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(versions.items())
                                               if k != "platform"))
    return lines + [""]


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)
