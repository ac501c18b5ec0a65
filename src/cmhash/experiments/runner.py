"""Fill a config's grid: skip finished cells, run the rest (in parallel processes with jobs > 1).

Only the parent process writes the store, one complete record per cell, so a kill at any moment
leaves finished cells intact and nothing half-written; the next run does the rest.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from cmhash.data import scenarios
from cmhash.data.dataset import CrossModalDataset
from cmhash.data.protocols import load_dataset
from cmhash.experiments.config import SCENARIO_AXES, ExperimentConfig, method_availability
from cmhash.experiments.grid import Cell, expand
from cmhash.experiments.measure import measure
from cmhash.experiments.store import ResultsStore
from cmhash.progress import Progress, ensure_progress

# Scenario axis (a name in cmhash.data.scenarios.SCENARIOS) -> the keyword that takes the axis value.
SCENARIO_KEYWORDS = {
    "partial_pairing": "unpaired",
    "label_noise": "rate",
    "long_tail": "imbalance_factor",
    "corrupted_pairs": "rate",
}


@dataclass
class RunSummary:
    total: int
    skipped: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed and self.skipped + self.done == self.total


def unique_cells(config: ExperimentConfig, only: tuple[str, ...] | list[str] = ()) -> list[Cell]:
    """The grid without repeated keys (the same spec under two labels runs once); with ``only``,
    just the cells it selects (:func:`parse_only`; a value no cell has raises ValueError naming
    the values the grid has, since a misspelt label would otherwise run nothing, silently)."""
    wanted = parse_only(only)
    cells = expand(config)
    for name, values in wanted.items():
        have = set().union(*(_cell_values(c, name) for c in cells))
        missing = sorted(values - have)
        if missing:
            raise ValueError(f"--only {name}={missing[0]}: no cell has {name} {missing[0]!r}; the grid has "
                             + ", ".join(repr(v) for v in sorted(have)))
    out: dict[str, Cell] = {}
    for cell in cells:
        if all(_cell_values(cell, name) & values for name, values in wanted.items()):
            out.setdefault(cell.key, cell)
    return list(out.values())


ONLY_FIELDS = ("method", "dataset", "bits", "seed", *SCENARIO_AXES)


def _cell_values(cell: Cell, name: str) -> set[str]:
    """The values ``--only name=...`` matches for ``cell`` (a method or dataset by name or label)."""
    if name == "method":
        return {cell.method.name, cell.method.label}
    if name == "dataset":
        return {cell.dataset.name, cell.dataset.label}
    if name in ("bits", "seed"):
        return {str(getattr(cell, name))}
    return {str(cell.scenario_dict[name])}


def parse_only(only: tuple[str, ...] | list[str] = ()) -> dict[str, set[str]]:
    """``FIELD=VALUE[,VALUE...]`` terms (e.g. ``bits=16,32``, ``method=DGHDGH (30 ep.)``) as
    field -> accepted values: a cell is selected if, for every field named, one of its values is
    accepted. Fields: method and dataset (name or label), bits, seed, the scenario axes."""
    wanted: dict[str, set[str]] = {}
    for term in only:
        name, sep, values = str(term).partition("=")
        name = name.strip()
        if not sep or not values.strip():
            raise ValueError(f"--only {term!r}: expected FIELD=VALUE, e.g. bits=16 or "
                             f"method=DCGH; fields: {', '.join(ONLY_FIELDS)}")
        if name not in ONLY_FIELDS:
            raise ValueError(f"--only {term!r}: unknown field {name!r}; fields: {', '.join(ONLY_FIELDS)}")
        wanted.setdefault(name, set()).update(v.strip() for v in values.split(","))
    return wanted


def cell_method(cell: Cell):
    """The configured method of a cell (its hyper-parameters, plus a scenario's batch size)."""
    from cmhash.methods.registry import get_method

    hparams = dict(cell.method.hparams)
    if "batch_size" in dict(cell.scenario):
        hparams["batch_size"] = dict(cell.scenario)["batch_size"]
    return get_method(cell.method.name, preset=cell.method.preset, **hparams)


def _json_form(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def is_current(store: ResultsStore, cell: Cell) -> bool:
    """True if the store holds the cell, trained with the hyper-parameters this code would use.

    A cell's key hashes the hyper-parameters its config names, not the method's defaults, so a
    record made before a default changed has the same key: it is stale and runs again (its
    resolved hyper-parameters, in the record, differ from the current ones)."""
    if not store.has(cell.key):
        return False
    recorded = store.read(cell.key).get("record", {}).get("hparams")
    try:
        current = cell_method(cell).hparams
    except (ImportError, ValueError):  # an unavailable or now-invalid method: run it (and fail clearly)
        return False
    return recorded is not None and _json_form(recorded) == _json_form(current)


def run_grid(
    config: ExperimentConfig,
    out: str | os.PathLike,
    *,
    jobs: int = 1,
    progress: Progress | None = None,
    only: tuple[str, ...] | list[str] = (),
) -> RunSummary:
    """Run every unfinished cell of ``config`` (those ``only`` selects: :func:`unique_cells`) into
    the results folder ``out``."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    cells = unique_cells(config, only)  # a bad selection fails before anything is written
    progress = ensure_progress(progress)
    store = ResultsStore(out)
    start = time.perf_counter()
    with store.lock():
        store.remove_stray_temps()
        store.save_config({"source": str(config.path) if config.path else None, "config": config.raw})
        todo = sorted((c for c in cells if not is_current(store, c)), key=_cost_hint, reverse=True)
        summary = RunSummary(total=len(cells), skipped=len(cells) - len(todo))
        progress.start(len(cells), f"{config.name}")
        if summary.skipped:
            progress.advance(summary.skipped)
        for cell, result in _execute(todo, jobs):
            if "error" in result:
                store.write_failure(cell.key, {"cell": cell.spec(), "label": cell.method.label, **result})
                summary.failed.append((cell.describe(), result["error"]))
                progress.log(f"FAILED {cell.describe()}: {result['error']}")
            else:
                store.write(cell.key, result)
                summary.done += 1
            progress.advance(1)
        progress.close()
        summary.wall_time_s = round(time.perf_counter() - start, 3)
        store.log_run({"config": config.name, "jobs": jobs, "total": summary.total,
                       "skipped": summary.skipped, "done": summary.done, "failed": len(summary.failed),
                       "wall_time_s": summary.wall_time_s, "cpus": os.cpu_count()})
    return summary


def _cost_hint(cell: Cell) -> float:
    """The method's rough cost estimate for the cell (0 when the method cannot be built): the
    runner starts expensive cells first, so parallel workers finish close together."""
    try:
        return float(cell_method(cell).cost_hint(cell.bits))
    except (ImportError, ValueError, TypeError):
        return 0.0


def _execute(cells: list[Cell], jobs: int) -> Iterator[tuple[Cell, dict[str, Any]]]:
    if jobs == 1 or len(cells) <= 1:
        for cell in cells:
            yield cell, run_cell_safely(cell)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    # The thread limits are inherited by the spawned workers before they import numpy or torch
    # (torch reads OMP_NUM_THREADS at import), so `jobs` workers share the cores.
    with _thread_env(threads):
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_die_with_parent) as pool:
            pending = {pool.submit(run_cell_safely, cell): cell for cell in cells}
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    cell = pending.pop(fut)
                    try:
                        yield cell, fut.result()
                    except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                        yield cell, {"error": f"worker process died: {exc}", "traceback": ""}


def _die_with_parent() -> None:
    """Worker start-up (Linux): be killed when the runner dies, e.g. by kill -9, instead of
    finishing a cell nobody will write (PR_SET_PDEATHSIG). Elsewhere a worker ends at its next
    task request."""
    if sys.platform != "linux":
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() == 1:  # the runner died before the call above took effect
        os._exit(1)


@contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
    old = {k: os.environ.get(k) for k in names}
    os.environ.update({k: str(threads) for k in names})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ------------------------------------------------------------------------ one cell


def run_cell_safely(cell: Cell) -> dict[str, Any]:
    """:func:`run_cell`, with an exception turned into ``{"error": ..., "traceback": ...}``."""
    try:
        return run_cell(cell)
    except Exception as exc:  # one bad cell must not stop the grid; it is reported and retried
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}


def run_cell(cell: Cell) -> dict[str, Any]:
    """Build the cell's data, train, measure; return the record (the store adds the key)."""
    missing = method_availability(cell.method.name)
    if missing is not None:
        raise RuntimeError(f"method '{cell.method.name}' is not available here ({missing})")
    data = cell_data(cell)
    method = cell_method(cell)
    model = method.fit(data.train, cell.bits, seed=cell.seed)
    measured = measure(model, data, cell.evaluation, seed=cell.seed)
    return {
        "cell": cell.spec(),
        "label": cell.method.label,
        "dataset_label": cell.dataset.label,
        "record": model.record,
        "data": {"checksum": data.checksum(), "info": _jsonable(data.info),
                 "train": len(data.train), "query": len(data.query), "database": len(data.database)},
        **measured,
    }


def cell_data(cell: Cell) -> CrossModalDataset:
    """The cell's dataset: the base benchmark with the cell's scenario applied to its train split."""
    data = base_dataset(cell.dataset)
    for axis, value in cell.scenario:
        params = dict(dict(cell.scenario_params).get(axis, ()))
        if axis == "batch_size":  # a hyper-parameter, set in run_cell
            continue
        if axis == "train_size":
            data = subsample_train(data, int(value), seed=cell.seed)
        else:
            data = scenarios.apply_scenario(data, axis, seed=cell.seed,
                                            **{SCENARIO_KEYWORDS[axis]: value}, **params)
    return data


@lru_cache(maxsize=4)
def _base_cached(spec_items: tuple) -> CrossModalDataset:
    spec = dict(spec_items)
    if spec["name"] == "synthetic":
        from cmhash.data.synthetic import make_synthetic

        return make_synthetic(**dict(spec["params"]), seed=spec["split_seed"])
    return load_dataset(spec["name"], protocol=spec["protocol"], seed=spec["split_seed"])


def base_dataset(spec) -> CrossModalDataset:
    """The dataset a :class:`DatasetSpec` names (cached per process: cells share it)."""
    return _base_cached((("name", spec.name), ("protocol", spec.protocol),
                         ("split_seed", spec.split_seed), ("params", tuple(sorted(spec.params.items())))))


def subsample_train(data: CrossModalDataset, n: int, *, seed: int) -> CrossModalDataset:
    """Keep ``n`` training pairs drawn with ``seed``.

    Where the database is the training set (the ``dcgh`` protocol) it shrinks with it, so the
    protocol "database = training set" still holds (and DCGH can search its learned codes);
    the scenarios of cmhash.data.scenarios, by contrast, change the training data only.
    """
    train = data.train
    if n > len(train):
        raise ValueError(f"train_size {n} is larger than the training split ({len(train)} pairs)")
    idx = np.sort(np.random.default_rng(seed).choice(len(train), size=n, replace=False))
    small = train.subset(idx, name=f"{train.name}[{n}]")
    small = small.replace(info={**train.info, "train_size": n, "train_size_seed": seed})
    splits = {"train": small}
    if "database" in data.splits and data.database.checksum() == train.checksum():
        splits["database"] = small
    return data.with_splits(**splits)


def _jsonable(obj: Any) -> Any:
    """``obj`` for a JSON record; arrays (e.g. the rows a scenario touched) are left out."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not isinstance(v, np.ndarray)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)
