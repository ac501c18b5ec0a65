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
