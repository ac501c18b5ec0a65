"""Experiment configs: a TOML file naming datasets, methods, bits, seeds and scenario axes.

A config is data, validated on load: every error names the file and the key
(``wiki.toml: methods[2].hparams.alpa: unknown hyper-parameter ...``). Layout (see
docs/experiments.md for the full reference)::

    [experiment]            name, description
    [[datasets]]            name ("wiki", "synthetic" or a path), protocol, split_seed, label, params
    [[methods]]             name (registry), label, preset, hparams, bits (overrides grid.bits)
    [grid]                  bits = [...], seeds = [...]
    [scenarios]             axis = [values] or {values = [...], <fixed parameters>}
    [evaluation]            which metrics and curves each cell computes
    [[report.tables]]       table layouts, with the papers' values beside ours
    [report]                figure options

Methods whose module is not importable yet (a method still being written, or torch missing)
are validated lazily: their hyper-parameters are checked when the cell runs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmhash._toml import read_toml

# Scenario axes: name -> the value that means "clean" (no perturbation).
SCENARIO_AXES: dict[str, Any] = {
    "partial_pairing": 0.0,   # proportion of unpaired training pairs (DCGH Table 2, Fig. 4)
    "label_noise": 0.0,       # proportion of training labels perturbed (IDGH Table 3)
    "long_tail": 1.0,         # imbalance factor IF of the training classes (IDGH Fig. 5)
    "corrupted_pairs": 0.0,   # proportion of corrupted training pairs (HINT Table 6)
    "train_size": "all",      # number of training pairs (DCGH Fig. 8, DGHDGH Fig. 8)
    "batch_size": "default",  # the method's batch_size hyper-parameter (DGHDGH Fig. 8)
}
# Fixed parameters an axis accepts besides its values, with their types.
SCENARIO_PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "partial_pairing": {},
    "label_noise": {},
    "long_tail": {"head_size": int, "order": str},
    "corrupted_pairs": {},
    "train_size": {},
    "batch_size": {},
}
RATE_AXES = ("partial_pairing", "label_noise", "corrupted_pairs")

METRIC_NAMES = (
    "map_i2t", "map_t2i", "p_h2_i2t", "p_h2_t2i", "fisher_i2t", "fisher_t2i",
    "train_time_s", "eval_time_s",
)
# Run diagnostics a table can show (from record["diagnostics"], written by the deep engine), and
# the prefix that reaches any numeric scalar there: "diag:<name>" ("diag:<a>.<b>" inside a dict),
# or, failing that, in the run record itself (a method's own section: "diag:hint.pair_bit_agreement").
DIAGNOSTIC_NAMES = (
    "unique_codes_image", "unique_codes_text", "unique_share_image", "unique_share_text",
    "bit_mean_abs_image", "bit_mean_abs_text", "best_epoch", "best_val_map",
)
DIAG_PREFIX = "diag:"


def is_metric_name(name: str) -> bool:
    """A name a [[report.tables]] entry may list under ``metrics``."""
    return (name in METRIC_NAMES or name in DIAGNOSTIC_NAMES
            or (name.startswith(DIAG_PREFIX) and len(name) > len(DIAG_PREFIX)))


class ConfigError(ValueError):
    """A config file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    protocol: str | None = None
    split_seed: int = 0
    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "split_seed": self.split_seed,
                "params": dict(sorted(self.params.items()))}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    preset: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)
    bits: tuple[int, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "preset": self.preset,
                "hparams": dict(sorted(self.hparams.items()))}


@dataclass(frozen=True)
class ScenarioAxis:
    name: str
    values: tuple[Any, ...]
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluationSpec:
    curves: bool = True
    topn_max: int = 5000
    topn_points: int = 50
    recall_points: int = 21
    fisher: bool = True
    fisher_sizes: tuple[int, ...] = (50, 100, 200, 400)
    fisher_repeats: int = 5
    code_samples: int = 300

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class TableSpec:
    title: str
    columns: str = "bits"
    rows: str = "method"
    metrics: tuple[str, ...] = ("map_i2t", "map_t2i")
    where: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    name: str
    path: Path | None
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    bits: tuple[int, ...]
    seeds: tuple[int, ...]
    scenarios: tuple[ScenarioAxis, ...]
    evaluation: EvaluationSpec
    tables: tuple[TableSpec, ...]
    report: dict[str, Any]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def method(self, label: str) -> MethodSpec:
        for m in self.methods:
            if m.label == label:
                return m
        raise KeyError(label)


# ----------------------------------------------------------------------- loading


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML config; a :class:`ConfigError` names the file and key on error."""
    path = Path(path)
    raw = read_toml(path, "config", missing=ConfigError, invalid=ConfigError)
    return parse_config(raw, source=str(path), path=path)


def parse_config(raw: dict[str, Any], *, source: str = "<config>", path: Path | None = None) -> ExperimentConfig:
    """Validate an already-parsed config mapping (``source`` names it in errors)."""
    v = _Validator(source)
    v.keys(raw, "", {"experiment", "datasets", "methods", "grid", "scenarios", "evaluation", "report"})
    exp = v.table(raw.get("experiment", {}), "experiment")
    v.keys(exp, "experiment", {"name", "description"})
    default_name = path.stem if path is not None else "experiment"
    name = v.typed(exp.get("name", default_name), "experiment.name", str)
    description = v.typed(exp.get("description", ""), "experiment.description", str)

    datasets = tuple(_parse_dataset(v, d, f"datasets[{i}]")
                     for i, d in enumerate(v.array(raw, "datasets", required=True)))
    grid = v.table(raw.get("grid", {}), "grid")
    v.keys(grid, "grid", {"bits", "seeds"})
    bits = v.int_list(grid["bits"], "grid.bits", minimum=1) if "bits" in grid else ()
    seeds = v.int_list(grid.get("seeds", [0]), "grid.seeds", minimum=0)
    methods = tuple(_parse_method(v, m, f"methods[{i}]")
                    for i, m in enumerate(v.array(raw, "methods", required=True)))
    for i, m in enumerate(methods):
        if m.bits is None and not bits:
            v.fail(f"methods[{i}]", f"method '{m.label}' has no bits: set grid.bits or methods[{i}].bits")
    labels = [m.label for m in methods]
    for i, label in enumerate(labels):
        if labels.index(label) != i:
            v.fail(f"methods[{i}].label",
                   f"label '{label}' is used twice; give each variant of a method its own label")
    ds_labels = [d.label for d in datasets]
    for i, label in enumerate(ds_labels):
        if ds_labels.index(label) != i:
            v.fail(f"datasets[{i}].label", f"dataset label '{label}' is used twice")

    scen = v.table(raw.get("scenarios", {}), "scenarios")
    v.keys(scen, "scenarios", set(SCENARIO_AXES))
    scenarios = tuple(_parse_axis(v, k, scen[k]) for k in SCENARIO_AXES if k in scen)
    if any(a.name == "batch_size" for a in scenarios):
        from cmhash.methods.registry import get_method_class

        for i, m in enumerate(methods):
            if "batch_size" in m.hparams:
                v.fail(f"methods[{i}].hparams.batch_size",
                       "batch_size is also a scenario axis; set it in one place only")
            if method_availability(m.name) is None and "batch_size" not in get_method_class(m.name).defaults:
                v.fail("scenarios.batch_size", f"method '{m.name}' (methods[{i}]) has no batch_size hyper-parameter")

    evaluation = _parse_evaluation(v, v.table(raw.get("evaluation", {}), "evaluation"))
    report = v.table(raw.get("report", {}), "report")
    v.keys(report, "report", {"tables", "tsne_bits", "curve_bits", "figures"})
    tables = tuple(_parse_table(v, t, f"report.tables[{i}]")
                   for i, t in enumerate(v.array(report, "tables", required=False, where="report")))
    report_opts = {k: val for k, val in report.items() if k != "tables"}
    for key in ("tsne_bits", "curve_bits"):
        if key in report_opts:
            v.typed(report_opts[key], f"report.{key}", int)
    if "figures" in report_opts:
        known = set(FIGURES)
        figs = v.typed(report_opts["figures"], "report.figures", list)
        for j, f in enumerate(figs):
            if f not in known:
                v.fail(f"report.figures[{j}]", f"unknown figure '{f}'; known: {sorted(known)}")
    for i, m in enumerate(methods):
        _check_method(v, m, f"methods[{i}]")
    return ExperimentConfig(
        name=name, path=path, datasets=datasets, methods=methods, bits=bits, seeds=seeds,
        scenarios=scenarios, evaluation=evaluation, tables=tables, report=report_opts,
        description=description, raw=raw,
    )


FIGURES = ("pr_lookup", "pr_ranking", "topn", "p_h2_bits", "map_scenario", "tsne",
           "train_time", "lambda")


# --------------------------------------------------------------------- sections


def _parse_dataset(v: "_Validator", d: Any, where: str) -> DatasetSpec:
    d = v.table(d, where)
    v.keys(d, where, {"name", "protocol", "split_seed", "label", "params"})
    if "name" not in d:
        v.fail(f"{where}.name", "missing: a benchmark name (e.g. 'wiki'), 'synthetic' or a file path")
    name = v.typed(d["name"], f"{where}.name", str)
    protocol = v.typed(d["protocol"], f"{where}.protocol", str) if "protocol" in d else None
    split_seed = v.typed(d.get("split_seed", 0), f"{where}.split_seed", int)
    params = dict(v.table(d.get("params", {}), f"{where}.params"))
    if name == "synthetic":
        from cmhash.data.synthetic import make_synthetic

        allowed = {p for p in inspect.signature(make_synthetic).parameters} - {"seed", "name"}
        for key in params:
            if key not in allowed:
                v.fail(f"{where}.params.{key}",
                       f"unknown parameter of the synthetic generator; known: {sorted(allowed)}")
        if protocol is not None:
            v.fail(f"{where}.protocol", "the synthetic dataset has its own split; drop 'protocol'")
    elif params:
        v.fail(f"{where}.params", "only the 'synthetic' dataset takes generator parameters")
    label = v.typed(d.get("label", name if protocol is None else f"{name}/{protocol}"),
                    f"{where}.label", str)
    return DatasetSpec(name=name, protocol=protocol, split_seed=split_seed, label=label, params=params)


def _parse_method(v: "_Validator", m: Any, where: str) -> MethodSpec:
    from cmhash.methods.registry import list_methods

    m = v.table(m, where)
    v.keys(m, where, {"name", "label", "preset", "hparams", "bits"})
    if "name" not in m:
        v.fail(f"{where}.name", f"missing; known methods: {', '.join(list_methods())}")
    name = v.typed(m["name"], f"{where}.name", str).lower()
    if name not in list_methods():
        v.fail(f"{where}.name", f"unknown method '{m['name']}'; known methods: {', '.join(list_methods())}")
    preset = v.typed(m["preset"], f"{where}.preset", str) if "preset" in m else None
    hparams = dict(v.table(m.get("hparams", {}), f"{where}.hparams"))
    bits = tuple(v.int_list(m["bits"], f"{where}.bits", minimum=1)) if "bits" in m else None
    label = v.typed(m.get("label", name), f"{where}.label", str)
    return MethodSpec(name=name, label=label, preset=preset, hparams=hparams, bits=bits)


def method_availability(name: str) -> str | None:
    """None if the method's module imports, else why not (a method still being written, torch...)."""
    from cmhash.methods.registry import get_method_class

    try:
        get_method_class(name)
    except ImportError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_method(v: "_Validator", m: MethodSpec, where: str) -> None:
    """Check preset and hyper-parameters against the method class, when its module imports."""
    from cmhash.methods.registry import get_method_class

    if method_availability(m.name) is not None:
        return  # validated when the cell runs
    cls = get_method_class(m.name)
    if m.preset is not None and m.preset.lower() not in cls.presets:
        v.fail(f"{where}.preset",
               f"method '{m.name}' has no preset '{m.preset}' (presets: {sorted(cls.presets) or 'none'})")
    for key, value in m.hparams.items():
        if key not in cls.defaults:
            v.fail(f"{where}.hparams.{key}",
                   f"unknown hyper-parameter of '{m.name}'; known: {sorted(cls.defaults)}")
        default = cls.defaults[key]
        if not _same_kind(value, default):
            v.fail(f"{where}.hparams.{key}",
                   f"expected {type(default).__name__} like the default {default!r}, got {value!r}")


def _same_kind(value: Any, default: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _parse_axis(v: "_Validator", name: str, spec: Any) -> ScenarioAxis:
    where = f"scenarios.{name}"
    params: dict[str, Any] = {}
    if isinstance(spec, dict):
        v.keys(spec, where, {"values", *SCENARIO_PARAMS[name]})
        if "values" not in spec:
            v.fail(f"{where}.values", "missing: the list of values of this axis")
        for key, typ in SCENARIO_PARAMS[name].items():
            if key in spec:
                params[key] = v.typed(spec[key], f"{where}.{key}", typ)
        values = spec["values"]
    else:
        values = spec
    if not isinstance(values, list) or not values:
        v.fail(where, f"expected a non-empty list of values, got {values!r}")
    clean = SCENARIO_AXES[name]
    out = []
    for j, val in enumerate(values):
        key = f"{where}[{j}]"
        if val == clean and not isinstance(val, bool):
            out.append(clean)
            continue
        if name in RATE_AXES:
            if isinstance(val, bool) or not isinstance(val, (int, float)) or not 0 <= val < 1:
                v.fail(key, f"expected a rate in [0, 1), got {val!r}")
            out.append(float(val))
        elif name == "long_tail":
            if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 1:
                v.fail(key, f"expected an imbalance factor >= 1, got {val!r}")
            out.append(float(val))
        else:  # train_size, batch_size
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                v.fail(key, f"expected a positive integer or '{clean}', got {val!r}")
            out.append(int(val))
    if len(set(map(str, out))) != len(out):
        v.fail(where, f"values repeat: {values!r}")
    if name == "long_tail" and any(val != clean for val in out) and "head_size" not in params:
        v.fail(f"{where}.head_size",
               "missing: the long tail needs head_size (d_h, training items of the head class): "
               "long_tail = { values = [...], head_size = ... }")
    return ScenarioAxis(name=name, values=tuple(out), params=params)


def _parse_evaluation(v: "_Validator", e: dict[str, Any]) -> EvaluationSpec:
    defaults = EvaluationSpec()
    v.keys(e, "evaluation", set(defaults.__dict__))
    kw: dict[str, Any] = {}
    for key, default in defaults.__dict__.items():
        if key not in e:
            continue
        where = f"evaluation.{key}"
        if isinstance(default, tuple):
            kw[key] = tuple(v.int_list(e[key], where, minimum=1))
        elif isinstance(default, bool):
            kw[key] = v.typed(e[key], where, bool)
        else:
            val = v.typed(e[key], where, int)
            if val < (0 if key == "code_samples" else 1):
                v.fail(where, f"expected a positive integer, got {val}")
            kw[key] = val
    if kw.get("recall_points", defaults.recall_points) < 2:
        v.fail("evaluation.recall_points", "need at least 2 points")
    return EvaluationSpec(**kw)


def _parse_table(v: "_Validator", t: Any, where: str) -> TableSpec:
    t = v.table(t, where)
    v.keys(t, where, {"title", "columns", "rows", "metrics", "where", "paper"})
    if "title" not in t:
        v.fail(f"{where}.title", "missing: a title for the table")
    columns = v.typed(t.get("columns", "bits"), f"{where}.columns", str)
    rows = v.typed(t.get("rows", "method"), f"{where}.rows", str)
    for key, dim in (("columns", columns), ("rows", rows)):
        if dim not in TABLE_DIMS:
            v.fail(f"{where}.{key}", f"unknown dimension '{dim}'; known: {list(TABLE_DIMS)}")
    metrics = tuple(v.typed(t.get("metrics", ["map_i2t", "map_t2i"]), f"{where}.metrics", list))
    for j, metric in enumerate(metrics):
        if not isinstance(metric, str) or not is_metric_name(metric):
            v.fail(f"{where}.metrics[{j}]", f"unknown metric {metric!r}; known: {list(METRIC_NAMES + DIAGNOSTIC_NAMES)}"
                   f" or '{DIAG_PREFIX}<name>' for any numeric run diagnostic")
    filt = dict(v.table(t.get("where", {}), f"{where}.where"))
    for key in filt:
        if key not in TABLE_DIMS:
            v.fail(f"{where}.where.{key}", f"unknown dimension; known: {list(TABLE_DIMS)}")
    paper = None
    if "paper" in t:
        paper = dict(v.table(t["paper"], f"{where}.paper"))
        v.keys(paper, f"{where}.paper", {"source", "dataset", "scale", *metrics})
        if "source" not in paper:
            v.fail(f"{where}.paper.source", "missing: cite the paper and table, e.g. 'DCGH Table 1'")
        for metric in metrics:
            rows_ = v.table(paper.get(metric, {}), f"{where}.paper.{metric}")
            for row, cols in rows_.items():
                cols = v.table(cols, f"{where}.paper.{metric}.{row}")
                for col, val in cols.items():
                    if isinstance(val, bool) or not isinstance(val, (int, float)):
                        v.fail(f"{where}.paper.{metric}.{row}.{col}", f"expected a number, got {val!r}")
    return TableSpec(title=t["title"], columns=columns, rows=rows, metrics=metrics, where=filt, paper=paper)


TABLE_DIMS = ("method", "bits", "seed", "dataset", *SCENARIO_AXES)


# --------------------------------------------------------------------- validator


class _Validator:
    """Small helpers that raise :class:`ConfigError` naming the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def keys(self, table: dict[str, Any], where: str, allowed: set[str]) -> None:
        for key in table:
            if key not in allowed:
                prefix = f"{where}." if where else ""
                self.fail(f"{prefix}{key}", f"unknown key; expected one of {sorted(allowed)}")

    def table(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {type(value).__name__} {value!r}")
        return value

    def array(self, table: dict[str, Any], key: str, *, required: bool, where: str = "") -> list[Any]:
        name = f"{where}.{key}" if where else key
        if key not in table:
            if required:
                self.fail(name, f"missing: add at least one [[{name}]] table")
            return []
        value = table[key]
        if not isinstance(value, list) or not value:
            self.fail(name, f"expected one or more [[{name}]] tables, got {value!r}")
        return value

    def typed(self, value: Any, where: str, typ: type | tuple[type, ...]) -> Any:
        ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
        if not ok:
            expected = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            self.fail(where, f"expected {expected}, got {type(value).__name__} {value!r}")
        return value

    def int_list(self, value: Any, where: str, *, minimum: int) -> tuple[int, ...]:
        if not isinstance(value, list) or not value:
            self.fail(where, f"expected a non-empty list of integers, got {value!r}")
        for j, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
                self.fail(f"{where}[{j}]", f"expected an integer >= {minimum}, got {item!r}")
        if len(set(value)) != len(value):
            self.fail(where, f"values repeat: {value!r}")
        return tuple(value)
