"""An in-memory index with ids, payloads, upsert and remove, over :class:`HammingIndex`.

Implements the ``Index`` protocol of INDEX_INTERFACE.md (add / upsert / remove / get / payloads /
search / range_search) for the service's in-memory backend, by composition: ``HammingIndex`` keeps
the codes and runs the scans; this class keeps an id -> position map and the payloads. ``remove``
rebuilds the scan arrays from the rows that remain, in their order (a stable compaction, so the
ranking rule "distance, then insertion order" holds for what remains): O(n) per write, which at the
service's scale (1e5-1e6 rows) is a copy of a few MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cmhash.codes import CodesLike, PackedCodes, as_packed
from cmhash.index import HammingIndex


class MutableHammingIndex:
    """Exact Hamming search over ``nbits``-bit codes, each item with an id and an optional payload."""

    def __init__(self, nbits: int, *, backend: str = "auto", info: dict[str, Any] | None = None):
        self._backend = backend
        self._index = HammingIndex(nbits, backend=backend, info=info)
        self._pos: dict[Any, int] = {}
        self._payloads: list[dict | None] = []

    @property
    def nbits(self) -> int:
        return self._index.nbits

    @property
    def kernel(self) -> str:
        return self._index.kernel

    @property
    def info(self) -> dict[str, Any]:
        return self._index.info

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"MutableHammingIndex(n={len(self)}, nbits={self.nbits}, kernel={self.kernel!r})"

    # ---------------------------------------------------------------- writes
    def add(self, codes: CodesLike, ids: Any = None, payloads: Sequence[dict | None] | None = None) -> None:
        """Append items; an id already present is a ValueError naming it."""
        packed = as_packed(codes, name="codes")
        ids = self._ids(ids, len(packed))
        payloads = self._check_payloads(payloads, len(ids))
        clash = [i for i in ids if i in self._pos]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]}")
        if not ids:
            return
        self._index.add(packed, np.asarray(ids))
        start = len(self._payloads)
        self._pos.update((item_id, start + j) for j, item_id in enumerate(ids))
        self._payloads.extend(payloads)

    def upsert(self, codes: CodesLike, ids: Any, payloads: Sequence[dict | None] | None = None) -> None:
        """Replace existing ids (they move to the end, in the given order) and append new ones."""
        packed = as_packed(codes, name="codes")
        ids = self._ids(ids, len(packed))
        payloads = self._check_payloads(payloads, len(ids))
        self.remove(ids)
        self.add(packed, ids, payloads)

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` (unknown ids are ignored); the rest keep their relative order."""
        gone = sorted({self._pos[i] for i in _as_list(ids) if i in self._pos})
        if not gone:
            return 0
        keep = np.ones(len(self), dtype=bool)
        keep[gone] = False
        codes = self._index.codes.data[keep]
        kept_ids = [i for i, k in zip(self._index.ids.tolist(), keep) if k]
        payloads = [p for p, k in zip(self._payloads, keep) if k]
        self._index = HammingIndex(self.nbits, backend=self._backend, info=self._index.info)
        self._pos, self._payloads = {}, []
        self.add(PackedCodes(codes, self.nbits), kept_ids, payloads)
        return len(gone)

    # ----------------------------------------------------------------- reads
    def get(self, ids: Any) -> list[dict | None]:
        codes = self._index.codes.data
        out: list[dict | None] = []
        for item_id in _as_list(ids):
            pos = self._pos.get(item_id)
            out.append(None if pos is None else {"id": item_id, "code": codes[pos].copy(), "payload": self._payloads[pos]})
        return out

    def payloads(self, ids: Any) -> list[dict | None]:
        return [self._payloads[self._pos[i]] if i in self._pos else None for i in _as_list(ids)]

    def search(self, query_codes: CodesLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._index.search(query_codes, k)

    def range_search(self, query_codes: CodesLike, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return self._index.range_search(query_codes, radius)

    def save(self, path: str | Path) -> Path | None:
        return None  # the service's durable copy is its SQLite store

    def close(self) -> None:
        pass

    # --------------------------------------------------------------- checks
    @staticmethod
    def _ids(ids: Any, m: int) -> list:
        if ids is None:
            raise ValueError("this index needs an id for every item (ids=...)")
        ids = _as_list(ids)
        if len(ids) != m:
            raise ValueError(f"ids: {len(ids)} ids for {m} codes")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call")
        return ids

    @staticmethod
    def _check_payloads(payloads: Sequence[dict | None] | None, m: int) -> list[dict | None]:
        if payloads is None:
            return [None] * m
        payloads = list(payloads)
        if len(payloads) != m:
            raise ValueError(f"payloads: {len(payloads)} payloads for {m} items")
        return payloads


def _as_list(ids: Any) -> list:
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (str, int)):
        return [ids]
    return list(ids)
