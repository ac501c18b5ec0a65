"""Reading a TOML file with errors that name it (experiment configs, dataset specs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib


def read_toml(path: Path, what: str, *, missing: type[Exception] = FileNotFoundError,
              invalid: type[Exception] = ValueError) -> dict[str, Any]:
    """The parsed file; ``missing("<path>: no such <what> file")`` when it is absent and
    ``invalid("<path>: not valid TOML: ...")`` when it does not parse."""
    if not path.is_file():
        raise missing(f"{path}: no such {what} file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise invalid(f"{path}: not valid TOML: {exc}") from exc
