"""`cmhash data`: inspect a feature file and import it through a dataset spec (docs/data.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(no_args_is_help=True, help="Read your own feature files: inspect them, import them through a spec.")
console = Console()


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


@data_app.command("inspect")
def inspect_cmd(
    files: list[str] = typer.Argument(..., help="a .mat (v5 or v7.3), .h5 or .npz file (several: their arrays are merged)"),
    spec_out: Optional[str] = typer.Option(None, "--spec-out", help="also write the suggested spec to this .toml file"),
) -> None:
    """Print every array (path, shape, dtype, values) and a suggested spec that reads the file."""
    from cmhash.data.inspection import inspect_files

    try:
        found = inspect_files(files)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    table = Table(title=", ".join(files))
    for col in ("path", "shape", "dtype", "kind", "values"):
        table.add_column(col, overflow="fold")
    for path, entry in found.entries.items():
        table.add_row(path, " x ".join(map(str, entry.shape)) or "scalar", entry.dtype, entry.kind,
                      found.summaries.get(path, ""))
    console.print(table)
    text = found.spec_toml()
    console.print("\nsuggested spec (save as a .toml; `cmhash data import SPEC --out data.npz`):\n")
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    if spec_out is not None:
        from cmhash.io import atomic_write

        if found.spec is None:
            _fail(f"no spec to write to {spec_out}: {found.problem}")
        with atomic_write(spec_out, "w") as fh:
            fh.write(text)
        console.print(f"wrote {spec_out}")


@data_app.command("import")
def import_cmd(
    spec: str = typer.Argument(..., help="a dataset spec (.toml with a [dataset] table)"),
    out: str = typer.Option(..., "--out", help="canonical dataset file to write (.npz)"),
) -> None:
    """Read the arrays a spec names and write the canonical .npz (arrays, 0-based split, provenance)."""
    from cmhash.data.spec import DatasetSpec, read_spec, save_canonical

    if not out.endswith(".npz"):
        _fail(f"--out must be a .npz file, got '{out}'")
    try:
        chosen = DatasetSpec.from_toml(spec)
        data, rows = read_spec(chosen)
        path = save_canonical(data, rows, out, {
            "spec_file": str(Path(spec).resolve()), "spec": chosen.as_dict(),
            "source_sha256": data.info["source_sha256"], "split": data.info.get("split"),
            "orientation": data.info.get("orientation"), "labels": data.info.get("labels"),
        })
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    splits = ", ".join(f"{r} {len(data.split(r))}" for r in ("train", "query", "database"))
    console.print(f"wrote {path}: {data} ({splits}); load it with cmhash.load_dataset('{path}')")
