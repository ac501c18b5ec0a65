"""The `cmhash` command line: demo, datasets, train, eval (and more as the project grows)."""

from __future__ import annotations

import shlex
import time
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Cross-modal hashing: train paper methods, evaluate them exactly, search by Hamming distance.",
)
console = Console()

from cmhash.cli_data import data_app  # noqa: E402 (`cmhash data inspect|import`)

app.add_typer(data_app, name="data")


def _version_option(value: bool) -> None:
    if value:
        from cmhash import __version__

        console.print(f"cmhash {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version_option,
                                 help="print the cmhash version and exit"),
) -> None:
    """Cross-modal hashing: train paper methods, evaluate them exactly, search by Hamming distance."""


def fail(message: str) -> None:
    """Print a clear error and exit with status 2 (no traceback for user mistakes)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def demo(
    method: str = typer.Option("dcgh", help="method to train (see `cmhash methods`; e.g. cca-itq)"),
    bits: str = typer.Option("16,32,64", help="comma-separated code lengths"),
    n: int = typer.Option(4000, help="number of synthetic image-text pairs"),
    seed: int = typer.Option(0, help="seed for data and training"),
) -> None:
    """Train a hash model on a built-in synthetic dataset and print its mAP table."""
    from cmhash.data.synthetic import make_synthetic
    from cmhash.evaluation import evaluate
    from cmhash.methods.registry import get_method

    _check_run_arguments(seed=seed)
    for b in _parse_ints(bits, "bits"):
        _check_run_arguments(bits=b)
    data = make_synthetic(n, seed=seed)
    console.print(f"data: {data}")
    table = Table(title=f"{method} on synthetic data (mAP@all, stable tie order)")
    for col in ("bits", "I->T", "T->I", "train s"):
        table.add_column(col, justify="right")
    for b in _parse_ints(bits, "bits"):
        try:
            model_method = get_method(method)
        except ValueError as exc:
            fail(str(exc))
        start = time.perf_counter()
        model = model_method.fit(data.train, b, seed=seed)
        took = time.perf_counter() - start
        res = evaluate(model, data)
        table.add_row(str(b), f"{100 * res['i2t']['map']:.2f}", f"{100 * res['t2i']['map']:.2f}", f"{took:.2f}")
    console.print(table)


@app.command("methods")
def methods_cmd() -> None:
    """List the registered hashing methods."""
    from cmhash.methods.registry import get_method_class, list_methods

    table = Table(title="methods")
    for col in ("name", "supervised", "hyper-parameters (defaults)"):
        table.add_column(col)
    for name in list_methods():
        try:
            cls = get_method_class(name)
        except ImportError as exc:  # e.g. a deep method without torch installed
            table.add_row(name, "?", f"[yellow]unavailable: {exc}[/]")
            continue
        table.add_row(name, str(cls.supervised), ", ".join(f"{k}={v}" for k, v in cls.defaults.items()))
    console.print(table)


# ---------------------------------------------------------------- datasets (cmhash datasets)
@app.command("datasets")
def datasets_cmd() -> None:
    """List the known benchmarks and protocols, where data is looked for, and what was found."""
    from cmhash.data.protocols import PROTOCOLS, data_roots, describe

    for root in data_roots():
        console.print(f"looking in: {root}", soft_wrap=True, highlight=False)
    console.print("(set CMHASH_DATA to choose the data folder)")
    console.print("benchmarks: cmhash.load_dataset(name, protocol=..., seed=...); * = default protocol\n")
    for row in describe():
        _print_benchmark(row)
    protocols = Table(title="protocols")
    protocols.add_column("name")
    protocols.add_column("definition")
    for name, text in PROTOCOLS.items():
        protocols.add_row(name, text)
    console.print(protocols)



def _print_benchmark(row: dict) -> None:
    """One benchmark as a few short lines (readable at 80 columns: no file name is cut)."""
    status = "[green]found[/]" if row["found"] else "[yellow]not found[/]"
    console.print(f"[bold]{row['name']}[/]  {row['classes']}  {status}", soft_wrap=True)
    sizes = [f"{p}{'*' if p == row['default_protocol'] else ''}" + (f" {q} queries" if q else "")
             for p, q in row["protocols"].items()]
    if row["default_protocol"] not in row["protocols"]:
        sizes.insert(0, f"{row['default_protocol']}*")
    console.print("  protocols: " + ", ".join(sizes))
    if row["found"]:
        for path in row["found"]:
            console.print(f"  file: {path}", soft_wrap=True, highlight=False)
        return
    console.print(f"  looked for (in {row['name']}/ or directly), first complete set wins:")
    width = max(console.width, 40)
    for candidate in row["files"]:
        line = f"    {candidate}"
        if len(line) <= width:
            console.print(line, highlight=False)
        else:  # one file of the set per line
            for k, name in enumerate(candidate.split(" + ")):
                console.print(("    " if k == 0 else "      + ") + name, highlight=False)


# ---------------------------------------------------- training and evaluation (train / eval)
TRAIN_FILES = {"model": "model.npz", "codes": "codes.npz", "metrics": "metrics.json"}


def _parse_param(text: str) -> tuple[str, object]:
    """``key=value``; the value is read as JSON (1e4, 3, true, null) or else kept as text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        fail(f"--param must look like key=value, got '{text}'")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _parse_scenario(text: str) -> dict:
    """``name`` or ``name:key=value,key=value`` (e.g. ``partial_pairing:unpaired=0.5``)."""
    name, _, rest = text.partition(":")
    params = dict(_parse_param(item) for item in rest.split(",") if item.strip())
    return {"name": name.strip(), "params": params}


def _load_data(spec: dict):
    """The dataset a run used: a benchmark name or file path via ``load_dataset``, or the
    built-in ``synthetic[:N]`` data; then the scenarios, in order."""
    from cmhash.data.scenarios import apply_scenario

    name = spec["dataset"]
    if name == "synthetic" or name.startswith("synthetic:"):
        from cmhash.data.synthetic import make_synthetic

        n = name.partition(":")[2] or "4000"
        if not n.isdigit():
            fail(f"--dataset synthetic:N needs an integer N, got '{name}'")
        data = make_synthetic(int(n), seed=spec["split_seed"])
    else:
        from cmhash.data.protocols import load_dataset

        data = load_dataset(name, protocol=spec["protocol"], seed=spec["split_seed"])
    for sc in spec["scenarios"]:
        data = apply_scenario(data, sc["name"], seed=spec["split_seed"], **sc["params"])
    return data


def _codes_and_metrics(model, data) -> tuple[dict, dict, dict]:
    """Query and database codes of both directions, mAP@all of each, and the seconds taken."""
    from cmhash.evaluation import direction_codes, map_by_direction

    start = time.perf_counter()
    pairs = direction_codes(model, data)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = map_by_direction(pairs, data)
    map_s = time.perf_counter() - start
    codes = {f"{d}_{role}": c for d, (q, db) in pairs.items() for role, c in (("query", q), ("database", db))}
    return codes, metrics, {"encode_s": round(encode_s, 4), "map_s": round(map_s, 4)}


def _save_codes(path, codes: dict) -> None:
    from cmhash.io import save_arrays

    save_arrays(path, {k: c.data for k, c in codes.items()},
                {"format": "cmhash-codes", "nbits": {k: c.nbits for k, c in codes.items()},
                 "layout": "packed, 8 bits per byte (numpy.packbits, big-endian), +1 -> 1"})


def _metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for col in ("direction", "mAP@all %", "queries", "no relevant"):
        table.add_column(col, justify="right")
    for direction, label in (("i2t", "I->T"), ("t2i", "T->I")):
        m = metrics[direction]
        table.add_row(label, f"{100 * m['map']:.2f}", str(m["queries"]), str(m["queries_without_relevant"]))
    return table


@app.command()
def train(
    method: str = typer.Argument(..., help="method name (see `cmhash methods`)"),
    dataset: str = typer.Option(..., "--dataset", help="benchmark name (see `cmhash datasets`), file path, or synthetic[:N]"),
    out: str = typer.Option(..., "--out", help="folder for model.npz, codes.npz and metrics.json"),
    bits: int = typer.Option(32, help="code length"),
    seed: int = typer.Option(0, help="training seed"),
    split_seed: int = typer.Option(0, "--split-seed", help="seed of the query/database split and of the scenarios"),
    protocol: Optional[str] = typer.Option(None, help="evaluation protocol (default: the benchmark's)"),
    preset: str = typer.Option("auto", help="hyper-parameter preset; auto: the one named like the dataset, if any; none: defaults"),
    param: list[str] = typer.Option([], "--param", help="hyper-parameter override key=value (repeatable)"),
    scenario: list[str] = typer.Option([], "--scenario", help="training scenario name[:key=value,...], e.g. partial_pairing:unpaired=0.5 (repeatable)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log each epoch / iteration as a plain line (a terminal also gets a progress bar)"),
) -> None:
    """Train METHOD on a dataset, evaluate mAP@all in both directions, and save everything to OUT."""
    from pathlib import Path

    from cmhash.io import write_json
    from cmhash.methods.registry import get_method_class

    _check_run_arguments(bits=bits, seed=seed, split_seed=split_seed)
    _check_writable(out, "--out")

    spec = {"dataset": dataset, "protocol": protocol, "split_seed": split_seed,
            "scenarios": [_parse_scenario(s) for s in scenario]}
    hparams = dict(_parse_param(p) for p in param)
    try:
        cls = get_method_class(method)
        data = _load_data(spec)
        chosen = _choose_preset(cls, preset, data)
        model_method = cls(preset=chosen, **hparams)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"data: {data}" + (f"\npreset: {chosen}" if chosen else ""))
    progress = _train_progress(verbose)
    start = time.perf_counter()
    try:
        model = model_method.fit(data.train, bits, seed=seed, progress=progress)
    except (ValueError, MemoryError) as exc:
        fail(str(exc) or f"out of memory training {method} at {bits} bits")
    finally:
        if progress is not None:
            progress.close()
    train_s = time.perf_counter() - start
    try:
        codes, metrics, timing = _codes_and_metrics(model, data)
    except ValueError as exc:
        fail(str(exc))
    folder = Path(out)
    model.save(folder / TRAIN_FILES["model"])
    _save_codes(folder / TRAIN_FILES["codes"], codes)
    write_json(folder / TRAIN_FILES["metrics"], {
        "command": shlex.join(
            ["cmhash", "train", method, "--dataset", dataset, "--out", out, "--bits", str(bits),
             "--seed", str(seed), "--split-seed", str(split_seed), "--preset", preset]
            + (["--protocol", protocol] if protocol else [])
            + [a for p in param for a in ("--param", p)] + [a for sc in scenario for a in ("--scenario", sc)]),
        "metrics": metrics,
        "data_spec": spec,
        "files": TRAIN_FILES,
        "timing": {"train_s": round(train_s, 4), **timing},
        "record": model.record,
    })
    console.print(_metrics_table(f"{method}, {bits} bits, seed {seed}", metrics))
    console.print(f"saved to {folder}/: " + ", ".join(TRAIN_FILES.values()))


def _check_run_arguments(**values: int) -> None:
    """One-line errors for values numpy or a method would reject with a traceback."""
    if "bits" in values and values["bits"] < 1:
        fail(f"--bits must be a positive integer, got {values['bits']}")
    for name in ("seed", "split_seed"):
        if name in values and values[name] < 0:
            fail(f"--{name.replace('_', '-')} must be >= 0 (numpy seeds are non-negative), got {values[name]}")


def _check_writable(folder: str, option: str) -> None:
    """Fail now, not after training, when ``folder`` cannot be created or written."""
    import os
    import tempfile
    from pathlib import Path

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        fail(f"{option} {folder}: cannot write there ({exc.strerror or exc})")
    if not os.access(path, os.W_OK):  # pragma: no cover - TemporaryFile already failed then
        fail(f"{option} {folder}: cannot write there")


def _check_port(port: int) -> None:
    if not 0 <= port <= 65535:
        fail(f"--port must be in 0..65535 (0: any free port), got {port}")


def _train_progress(verbose: bool):
    """A progress bar plus per-epoch lines in a terminal; plain log lines with --verbose elsewhere."""
    from cmhash.progress import ConsoleProgress, LogProgress

    if console.is_terminal:
        return ConsoleProgress()
    return LogProgress() if verbose else None


def _choose_preset(cls, preset: str, data) -> Optional[str]:
    """``auto``: the method's preset named like the dataset's benchmark (or name), if it has one."""
    if preset == "none":
        return None
    if preset != "auto":
        return preset
    names = [data.info.get("benchmark"), data.name]
    return next((n.lower() for n in names if isinstance(n, str) and n.lower() in cls.presets), None)


@app.command("eval")
def eval_cmd(
    run_dir: str = typer.Argument(..., help="a folder written by `cmhash train`"),
    check: bool = typer.Option(False, help="exit with status 1 if the metrics differ from metrics.json"),
) -> None:
    """Recompute mAP from the saved model on the run's data; write eval.json beside metrics.json."""
    import json
    from pathlib import Path

    from cmhash.io import write_json
    from cmhash.methods.base import HashModel

    folder = Path(run_dir)
    try:
        saved = json.loads((folder / TRAIN_FILES["metrics"]).read_text())
        spec = saved["data_spec"]
    except FileNotFoundError:
        fail(f"{folder / TRAIN_FILES['metrics']}: no such file; is {folder} a folder written by `cmhash train`?")
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        fail(f"{folder / TRAIN_FILES['metrics']}: not a metrics file written by `cmhash train` ({exc})")
    try:
        model = HashModel.load(folder / TRAIN_FILES["model"])
        data = _load_data(spec)
    except (ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc))
    recorded = saved["record"].get("dataset", {}).get("checksum")
    if recorded is not None and recorded != data.train.checksum():
        fail(f"the training data of {spec['dataset']} changed since the run (checksum differs); "
             "the saved database codes no longer describe it")
    try:
        _, metrics, timing = _codes_and_metrics(model, data)
    except ValueError as exc:
        fail(str(exc))
    same = all(metrics[d]["map"] == saved["metrics"][d]["map"] for d in metrics)
    write_json(folder / "eval.json", {"metrics": metrics, "timing": timing, "matches_metrics_json": same})
    console.print(_metrics_table(f"{model.method}, {model.bits} bits (recomputed)", metrics))
    console.print("same as metrics.json" if same else "[yellow]differs from metrics.json[/]")
    if check and not same:
        raise typer.Exit(1)




# ----------------------------------------------------------- experiments (run / report)


@app.command("run")
def run_cmd(
    config: str = typer.Argument(..., help="experiment config (TOML), e.g. configs/synthetic.toml"),
    out: Optional[str] = typer.Option(None, "--out", help="results folder (default: results/<experiment name>)"),
    jobs: int = typer.Option(1, "--jobs", help="cells run in parallel (processes)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and which are finished, run nothing"),
    only: Optional[list[str]] = typer.Option(
        None, "--only", help="run only matching cells: FIELD=VALUE[,VALUE] with FIELD method or dataset "
        "(name or label), bits, seed or a scenario axis; repeat for several fields, e.g. "
        "--only bits=16 --only 'method=DCGH'"),
) -> None:
    """Fill a config's grid of runs; re-running skips finished cells (safe to interrupt)."""
    from cmhash.experiments.config import ConfigError, load_config, method_availability
    from cmhash.experiments.runner import is_current, run_grid, unique_cells
    from cmhash.experiments.store import ResultsStore, StoreLocked
    from cmhash.progress import ConsoleProgress

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    if jobs < 1:
        fail(f"--jobs must be >= 1, got {jobs}")
    only = tuple(only or ())
    try:
        cells = unique_cells(cfg, only)
    except ValueError as exc:
        fail(str(exc))
    results = out or f"results/{cfg.name}"
    store = ResultsStore(results)
    current = {c.key: is_current(store, c) for c in cells}
    finished = sum(current.values())
    stale = sum(store.has(c.key) and not current[c.key] for c in cells)
    selected = f" selected by --only ({'; '.join(only)})" if only else ""
    console.print(f"{cfg.name}: {len(cells)} cells{selected}, {finished} finished, results in {results}")
    if stale:
        console.print(f"[yellow]note:[/] {stale} finished cell(s) were trained with other hyper-parameters "
                      "(a method default changed since): they run again")
    for name in sorted({c.method.name for c in cells}):
        why = method_availability(name)
        if why is not None:
            console.print(f"[yellow]warning:[/] method '{name}' is not available ({why}); its cells will fail")
    if dry_run:
        for c in cells:
            console.print(f"  {'done ' if current[c.key] else 'to do'}  {c.key}  {c.describe()}")
        return
    try:
        summary = run_grid(cfg, results, jobs=jobs, progress=ConsoleProgress(), only=only)
    except StoreLocked as exc:
        fail(str(exc))
    console.print(
        f"done {summary.done}, skipped {summary.skipped} (already finished), failed {len(summary.failed)} "
        f"of {summary.total} cells in {summary.wall_time_s:.1f} s"
    )
    for what, error in summary.failed[:5]:
        console.print(f"[red]failed:[/] {what}: {error}")
    if len(summary.failed) > 5:
        console.print(f"... and {len(summary.failed) - 5} more")
    if summary.failed:
        console.print(f"tracebacks in {results}/failed/; re-run the same command to retry")
        raise typer.Exit(1)
    console.print(f"next: cmhash report {results}")


@app.command("report")
def report_cmd(
    results: str = typer.Argument(..., help="results folder written by `cmhash run`"),
    out: Optional[str] = typer.Option(
        None, "--out", help="report folder (default: RESULTS/report), or a .md file with its assets beside it"
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="draw the figures (matplotlib)"),
    config: Optional[str] = typer.Option(
        None, "--config", help="report against this config instead of the one saved in RESULTS (cells run in parts)"
    ),
) -> None:
    """Write markdown + CSV tables and figures (PNG + SVG) for a results folder."""
    from cmhash.experiments.config import ConfigError, load_config
    from cmhash.experiments.report import write_report

    try:
        path = write_report(results, out, figures=figures, config=load_config(config) if config else None)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    console.print(f"report: {path}")


# -------------------------------------------------- Hamming index and search server (index / serve)
index_app = typer.Typer(no_args_is_help=True, help="Build and inspect Hamming indexes of database codes.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    model: str = typer.Argument(..., help="saved model file, or a folder holding model.npz"),
    dataset: str = typer.Option(..., help="benchmark name, data file or spec (as cmhash.load_dataset takes), or synthetic[:N]"),
    out: Optional[str] = typer.Option(None, help="index file to write (.npz; the hamming backend)"),
    modality: str = typer.Option("image", help="modality of the database codes (image or text)"),
    protocol: Optional[str] = typer.Option(None, help="split protocol (default: the benchmark's)"),
    seed: int = typer.Option(0, help="split seed"),
    backend: str = typer.Option("hamming", help="hamming (an .npz file) or milvus (a Milvus collection)"),
    uri: Optional[str] = typer.Option(None, help="milvus: a Milvus Lite file (.db) or http://host:19530"),
    collection: Optional[str] = typer.Option(None, help="milvus: the collection to create"),
    token: Optional[str] = typer.Option(None, envvar="CMHASH_MILVUS_TOKEN", help="milvus: server token (or $CMHASH_MILVUS_TOKEN)"),
) -> None:
    """Encode a dataset's database split with a saved model and save a HammingIndex of the codes
    (or, with --backend milvus, insert them into a new Milvus collection)."""
    if backend not in ("hamming", "milvus"):
        fail(f"--backend must be hamming or milvus, got '{backend}'")
    if backend == "hamming" and not out:
        fail("--out is required with --backend hamming (the index file to write)")
    if backend == "milvus" and not (uri and collection):
        fail("--backend milvus needs --uri (a .db file or http://host:19530) and --collection")
    from cmhash.evaluation import database_codes
    from cmhash.index import HammingIndex
    from cmhash.methods.base import HashModel
    from cmhash.serve import resolve_model_path

    try:
        model_path = resolve_model_path(model)
        hash_model = HashModel.load(model_path)
        data = _load_data({"dataset": dataset, "protocol": protocol, "split_seed": seed, "scenarios": []})
        database = data.database
        codes = database_codes(hash_model, database, modality)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    info = {
        "modality": modality, "model": str(model_path), "method": hash_model.method,
        "dataset": data.name, "dataset_checksum": data.checksum(), "protocol": data.info.get("protocol"),
        "split": "database", "split_seed": seed,
        "ids": "dataset ids" if database.ids is not None else "positions in the database split",
    }
    if backend == "milvus":
        n = _build_milvus_index(codes, database.ids, info, uri, collection, token)
        console.print(f"inserted {n} {modality} codes of {codes.nbits} bits into collection {collection} at {uri} ({data.name}, {hash_model.method})")
        return
    try:
        index = HammingIndex.from_codes(codes, ids=database.ids, info=info)
        index.save(out)
    except (ValueError, OSError) as exc:
        fail(f"cannot build the index: {exc}")
    console.print(f"wrote {out}: {len(index)} {modality} codes of {index.nbits} bits ({data.name}, {hash_model.method})")


def _build_milvus_index(codes, ids, info: dict, uri: str, collection: str, token: Optional[str]) -> int:
    """Insert database codes into a new (or empty) Milvus collection; returns its size."""
    import numpy as np

    try:
        from cmhash.index.milvus import MilvusError, MilvusIndex
    except ImportError as exc:
        fail(str(exc))
    ids = np.arange(len(codes), dtype=np.int64) if ids is None else ids
    try:
        with MilvusIndex(uri, collection, codes.nbits, token=token, info=info) as index:
            if len(index):
                fail(f"collection {collection} at {uri} already holds {len(index)} items: pick a new name or drop it")
            index.add(codes, ids)
            index.save()
            return len(index)
    except (ValueError, OSError, MilvusError) as exc:
        fail(f"cannot build the Milvus index: {exc}")


# serve / search / encode live in cmhash/serve/cli.py (the HTTP parts import only when they run)
from cmhash.serve.cli import register as _register_service_commands  # noqa: E402

_register_service_commands(app)


def _parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--{name} must be comma-separated integers, got '{text}'")
    if not values:
        fail(f"--{name} is empty")
    return values


# ------------------------------------------------ features from raw images and captions (features)
from cmhash.cli_features import features as _features  # noqa: E402 (typer only; torch loads on use)

app.command("features")(_features)


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv, prog_name="cmhash")


if __name__ == "__main__":
    main()
