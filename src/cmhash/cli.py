"""The `cmhash` command line: demo, datasets, train, eval (and more as the project grows)."""

from __future__ import annotations

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


def fail(message: str) -> None:
    """Print a clear error and exit with status 2 (no traceback for user mistakes)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.command()
def demo(
    method: str = typer.Option("cca-itq", help="method to train (see `cmhash methods`)"),
    bits: str = typer.Option("16,32,64", help="comma-separated code lengths"),
    n: int = typer.Option(4000, help="number of synthetic image-text pairs"),
    seed: int = typer.Option(0, help="seed for data and training"),
) -> None:
    """Train a hash model on a built-in synthetic dataset and print its mAP table."""
    from cmhash.data.synthetic import make_synthetic
    from cmhash.evaluation import evaluate
    from cmhash.methods.registry import get_method

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

    console.print("looking in: " + ", ".join(str(r) for r in data_roots())
                  + "  (set CMHASH_DATA to choose the folder)")
    table = Table(title="benchmarks (cmhash.load_dataset(name, protocol=..., seed=...))")
    for col in ("name", "classes", "query size by protocol", "default", "files looked for", "found"):
        table.add_column(col)
    for row in describe():
        sizes = ", ".join(f"{p}: {q}" for p, q in row["protocols"].items() if q)
        found = "\n".join(row["found"]) if row["found"] else "[yellow]not found[/]"
        table.add_row(row["name"], row["classes"], sizes, row["default_protocol"],
                      "\n".join(row["files"]), found)
    console.print(table)
    protocols = Table(title="protocols")
    protocols.add_column("name")
    protocols.add_column("definition")
    for name, text in PROTOCOLS.items():
        protocols.add_row(name, text)
    console.print(protocols)



# ---------------------------------------------------- training and evaluation (train / eval)


# ----------------------------------------------------------- experiments (run / report)


@app.command("run")
def run_cmd(
    config: str = typer.Argument(..., help="experiment config (TOML), e.g. configs/synthetic.toml"),
    out: Optional[str] = typer.Option(None, "--out", help="results folder (default: results/<experiment name>)"),
    jobs: int = typer.Option(1, "--jobs", help="cells run in parallel (processes)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the cells and which are finished, run nothing"),
) -> None:
    """Fill a config's grid of runs; re-running skips finished cells (safe to interrupt)."""
    from cmhash.experiments.config import ConfigError, load_config, method_availability
    from cmhash.experiments.runner import run_grid, unique_cells
    from cmhash.experiments.store import ResultsStore, StoreLocked
    from cmhash.progress import ConsoleProgress

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        fail(str(exc))
    if jobs < 1:
        fail(f"--jobs must be >= 1, got {jobs}")
    results = out or f"results/{cfg.name}"
    cells = unique_cells(cfg)
    store = ResultsStore(results)
    finished = sum(store.has(c.key) for c in cells)
    console.print(f"{cfg.name}: {len(cells)} cells, {finished} finished, results in {results}")
    for name in sorted({c.method.name for c in cells}):
        why = method_availability(name)
        if why is not None:
            console.print(f"[yellow]warning:[/] method '{name}' is not available ({why}); its cells will fail")
    if dry_run:
        for c in cells:
            console.print(f"  {'done ' if store.has(c.key) else 'to do'}  {c.key}  {c.describe()}")
        return
    try:
        summary = run_grid(cfg, results, jobs=jobs, progress=ConsoleProgress())
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
) -> None:
    """Write markdown + CSV tables and figures (PNG + SVG) for a results folder."""
    from cmhash.experiments.config import ConfigError
    from cmhash.experiments.report import write_report

    try:
        path = write_report(results, out, figures=figures)
    except (ConfigError, ValueError) as exc:
        fail(str(exc))
    console.print(f"report: {path}")


# -------------------------------------------------- Hamming index and search server (index / serve)
index_app = typer.Typer(no_args_is_help=True, help="Build and inspect Hamming indexes of database codes.")
app.add_typer(index_app, name="index")


@index_app.command("build")
def index_build(
    model: str = typer.Argument(..., help="saved model file, or a folder holding model.npz"),
    dataset: str = typer.Option(..., help="benchmark name or data file(s), as cmhash.load_dataset takes"),
    out: str = typer.Option(..., help="index file to write (.npz)"),
    modality: str = typer.Option("image", help="modality of the database codes (image or text)"),
    protocol: Optional[str] = typer.Option(None, help="split protocol (default: the benchmark's)"),
    seed: int = typer.Option(0, help="split seed"),
) -> None:
    """Encode a dataset's database split with a saved model and save a HammingIndex of the codes."""
    from cmhash.data.protocols import load_dataset
    from cmhash.evaluation import database_codes
    from cmhash.index import HammingIndex
    from cmhash.methods.base import HashModel
    from cmhash.serve import resolve_model_path

    try:
        model_path = resolve_model_path(model)
        hash_model = HashModel.load(model_path)
        data = load_dataset(dataset, protocol=protocol, seed=seed)
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
    try:
        index = HammingIndex.from_codes(codes, ids=database.ids, info=info)
        index.save(out)
    except (ValueError, OSError) as exc:
        fail(f"cannot build the index: {exc}")
    console.print(f"wrote {out}: {len(index)} {modality} codes of {index.nbits} bits ({data.name}, {hash_model.method})")


@app.command("serve")
def serve_cmd(
    model: str = typer.Option(..., help="saved model file, or a folder holding model.npz"),
    index: str = typer.Option(..., help="index file written by `cmhash index build`"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on (0: any free port)"),
) -> None:
    """Serve /health, /info, /encode and /search over HTTP until interrupted."""
    from cmhash.serve import load_service, make_server

    try:
        server = make_server(load_service(model, index), host, port)
    except (ValueError, FileNotFoundError, OSError) as exc:
        fail(str(exc))
    bound_host, bound_port = server.server_address[:2]
    console.print(f"serving {index} on http://{bound_host}:{bound_port} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _parse_ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"--{name} must be comma-separated integers, got '{text}'")
    if not values:
        fail(f"--{name} is empty")
    return values


def main(argv: Optional[list[str]] = None) -> None:
    app(args=argv, prog_name="cmhash")


if __name__ == "__main__":
    main()
