"""The service's durable item store: one SQLite file (WAL journal, full fsync on every commit).

An item is an id, an image code and/or a text code (packed bytes) and an optional JSON payload.
Rows are kept in *insertion order* (``seq``): an upsert deletes the old row and inserts a new one,
so a replaced item moves to the end, exactly as ``Index.upsert`` orders it. Reading the rows back
by ``seq`` therefore rebuilds indexes that rank ties as the live ones did.

Every write method runs in one transaction and returns only after the commit is on disk
(``synchronous=FULL``): a process killed at any moment leaves either the whole write or none of it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmhash.data.dataset import MODALITIES

FORMAT = "cmhash-item-store"
FORMAT_VERSION = 1
ID_KINDS = ("int", "str")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    image BLOB,
    text BLOB,
    payload TEXT
);
"""


@dataclass(frozen=True)
class Item:
    """One stored item: packed codes per modality (bytes or None) and a payload (dict or None)."""

    id: int | str
    codes: dict[str, bytes | None]
    payload: dict[str, Any] | None


class ItemStore:
    """Items of ``nbits``-bit codes in a SQLite file at ``path`` (created when missing).

    ``id_kind`` ("int" or "str") is fixed by the first write and recorded in the file; so is
    ``nbits``. Opening a file with a different ``nbits`` is an error naming both.
    """

    def __init__(self, path: str | Path, nbits: int):
        self.path = Path(path)
        self.nbits = int(nbits)
        self.nbytes = (self.nbits + 7) // 8
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a usable SQLite item store ({exc})") from None
        meta = self.meta()
        if meta.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{self.path}: format {meta['format']!r}, expected {FORMAT!r}")
        if "nbits" in meta and int(meta["nbits"]) != self.nbits:
            raise ValueError(f"{self.path}: the store holds {meta['nbits']}-bit codes, the service uses {self.nbits}-bit codes")
        if "nbits" not in meta:
            self._set_meta({"format": FORMAT, "format_version": str(FORMAT_VERSION), "nbits": str(self.nbits)})

    # ------------------------------------------------------------- metadata
    def meta(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, value FROM meta").fetchall())

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._lock, self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    @property
    def id_kind(self) -> str | None:
        """"int" or "str" once an item was written, else None."""
        return self.meta().get("id_kind")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0]

    # ---------------------------------------------------------------- reads
    def get(self, ids: Sequence[int | str]) -> list[Item | None]:
        """The stored item of each id (None where absent)."""
        out: list[Item | None] = []
        with self._lock:
            for item_id in ids:
                row = self._db.execute(
                    "SELECT image, text, payload FROM items WHERE id = ?", (_key(item_id),)
                ).fetchone()
                out.append(None if row is None else _item(item_id, row))
        return out

    def scan(self, batch: int = 10_000) -> Iterator[list[Item]]:
        """Every item in insertion order, in lists of up to ``batch``."""
        kind = self.id_kind
        last = -1
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT seq, id, image, text, payload FROM items WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [_item(int(r[1]) if kind == "int" else r[1], r[2:]) for r in rows]

    # --------------------------------------------------------------- writes
    def write(self, items: Sequence[Item], *, upsert: bool) -> tuple[int, int]:
        """Add ``items`` (or replace existing ids when ``upsert``) in one transaction.

        Returns (added, replaced). Without ``upsert`` an id already stored is a ValueError naming
        it and nothing is written.
        """
        if not items:
            return 0, 0
        stored_kind = self.id_kind
        kind = check_items(items, self.nbytes, stored_kind)
        replaced = 0
        with self._lock, self._transaction():
            if stored_kind is None:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('id_kind', ?)", (kind,))
            for item in items:
                key = _key(item.id)
                if upsert:
                    replaced += self._db.execute("DELETE FROM items WHERE id = ?", (key,)).rowcount
                elif self._db.execute("SELECT 1 FROM items WHERE id = ?", (key,)).fetchone():
                    raise ValueError(f"id {item.id!r} is already stored; use upsert to replace it")
                self._db.execute(
                    "INSERT INTO items (id, image, text, payload) VALUES (?, ?, ?, ?)",
                    (key, item.codes.get("image"), item.codes.get("text"),
                     None if item.payload is None else json.dumps(item.payload)),
                )
        return len(items) - replaced, replaced

    def delete(self, ids: Sequence[int | str]) -> list[int | str]:
        """Delete ``ids`` in one transaction; returns the ids that were stored (unknown ones are ignored)."""
        removed = []
        with self._lock, self._transaction():
            for item_id in ids:
                if self._db.execute("DELETE FROM items WHERE id = ?", (_key(item_id),)).rowcount:
                    removed.append(item_id)
        return removed

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -------------------------------------------------------------- helpers
    def _transaction(self) -> "_Transaction":
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def check_items(items: Sequence[Item], nbytes: int, stored_kind: str | None) -> str:
    """The id kind ("int" or "str") of a write's items, checked: one kind, the kind the store
    holds (``stored_kind``; None: empty store), codes of ``nbytes`` bytes."""
    kind = _id_kind(items[0].id)
    for item in items:
        if _id_kind(item.id) != kind:
            raise ValueError("ids: mix of integer and string ids in one request; use one kind")
        for m, code in item.codes.items():
            if code is not None and len(code) != nbytes:
                raise ValueError(f"item {item.id!r}: {m} code of {len(code)} bytes, expected {nbytes}")
    if stored_kind is not None and stored_kind != kind:
        raise ValueError(f"ids: this store holds {stored_kind} ids, got {kind} ids")
    return kind


def _id_kind(item_id: Any) -> str:
    if isinstance(item_id, bool) or not isinstance(item_id, (int, str)):
        raise ValueError(f"ids must be integers or strings, got {item_id!r}")
    return "int" if isinstance(item_id, int) else "str"


def _key(item_id: int | str) -> str:
    return str(item_id)


def _item(item_id: int | str, row: Sequence[Any]) -> Item:
    image, text, payload = row
    return Item(item_id, {"image": image, "text": text}, None if payload is None else json.loads(payload))


assert MODALITIES == ("image", "text"), "the items table has one code column per modality"
