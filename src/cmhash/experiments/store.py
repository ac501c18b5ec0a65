"""The results store: one JSON file per finished cell, written atomically, so it survives kill -9.

Layout of a results folder::

    RESULTS/
      cells/<key>.json     one finished cell: spec, run record, metrics, curves, code samples
      failed/<key>.json    the last error of a cell that raised (retried on the next run)
      config.json          the config of the last run (the report reads its tables from it)
      runs/NNNNN.json      one summary per completed run (wall time, jobs, cells done)
      .lock                the pid of the runner using the folder

A record file exists only once its cell is complete (cmhash.io.write_json writes a temp file
and renames it), so an interrupted run leaves finished cells and at most a stray temp file,
which the next run removes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

from cmhash.io import write_json

RECORD_FORMAT = "cmhash-experiment-cell"


class StoreLocked(RuntimeError):
    """Another live runner holds the results folder."""


class ResultsStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.cells = self.root / "cells"
        self.failed = self.root / "failed"

    # ------------------------------------------------------------------ records
    def path(self, key: str) -> Path:
        return self.cells / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, key: str, record: dict[str, Any]) -> None:
        write_json(self.path(key), {"format": RECORD_FORMAT, "key": key, **record})
        stale = self.failed / f"{key}.json"
        if stale.exists():
            stale.unlink()

    def write_failure(self, key: str, failure: dict[str, Any]) -> None:
        write_json(self.failed / f"{key}.json", {"key": key, **failure})

    def read(self, key: str) -> dict[str, Any]:
        path = self.path(key)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: corrupt result record ({exc}); delete it to re-run the cell") from exc
        if record.get("format") != RECORD_FORMAT or record.get("key") != key:
            raise ValueError(f"{path}: not a cmhash experiment record for cell {key}")
        return record

    def keys(self) -> list[str]:
        if not self.cells.is_dir():
            return []
        return sorted(p.stem for p in self.cells.glob("*.json"))

    def records(self) -> Iterator[dict[str, Any]]:
        for key in self.keys():
            yield self.read(key)

    def failures(self) -> list[dict[str, Any]]:
        if not self.failed.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.failed.glob("*.json"))]

    def log_run(self, summary: dict[str, Any]) -> None:
        """Keep one small JSON per completed `cmhash run` (wall time, jobs, counts)."""
        runs = self.root / "runs"
        write_json(runs / f"{len(list(runs.glob('*.json'))) if runs.is_dir() else 0:05d}.json", summary)

    def runs(self) -> list[dict[str, Any]]:
        folder = self.root / "runs"
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]

    # ------------------------------------------------------------------ config
    def save_config(self, config_dict: dict[str, Any]) -> None:
        write_json(self.root / "config.json", config_dict)

    def load_config(self) -> dict[str, Any]:
        path = self.root / "config.json"
        if not path.is_file():
            raise ValueError(f"{self.root}: not a results folder (no config.json); run `cmhash run CONFIG --out {self.root}` first")
        return json.loads(path.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ hygiene
    def remove_stray_temps(self) -> int:
        """Delete temp files an interrupted write left behind (call while holding the lock)."""
        removed = 0
        for folder in (self.cells, self.failed, self.root):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    def lock(self) -> "StoreLock":
        return StoreLock(self.root / ".lock")


class StoreLock:
    """An exclusive lock file holding the runner's pid; a lock whose process is gone is taken over."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> "StoreLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise StoreLocked(
                        f"{self.path.parent}: in use by another `cmhash run` (pid {owner}); "
                        f"wait for it, or delete {self.path} if that process is not a runner"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a killed runner
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(str(os.getpid()))
            return self
        raise StoreLocked(f"{self.path}: could not take the lock")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc: Any) -> None:
        if self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():  # our own pid in a lock we do not hold: left by an earlier use
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
