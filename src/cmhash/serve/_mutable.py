"""An in-memory index with ids, payloads, upsert and remove, over :class:`HammingIndex`.

Implements the ``Index`` protocol of INDEX_INTERFACE.md (add / upsert / remove / get / payloads /
search / range_search) for the service's in-memory backend, by composition. ``HammingIndex`` keeps
the codes and runs the scans; each row there carries a private *serial* number (never reused), and
this class maps live serials to (id, payload). ``remove`` only marks a serial dead (a tombstone): the
row stays in the scan arrays until ``compact_after`` rows are dead, then the live rows are copied
in their order and renumbered (a stable compaction). Ids and payloads sit in numpy object arrays
indexed by serial, so mapping a result block back to ids and payloads is vectorised. A search asks the scan for ``k + dead`` rows and drops the
dead ones, so results follow the ranking rule exactly: distance, then insertion order of what
remains. A write therefore costs O(1) amortised O(n / compact_after), not a copy of the index.
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

    def __init__(self, nbits: int, *, backend: str = "auto", info: dict[str, Any] | None = None,
                 compact_after: int = 256):
        self._backend = backend
        self._index = HammingIndex(nbits, backend=backend, info=info)
        self._serial_of: dict[Any, int] = {}  # id -> serial of its live row
        # Per serial (grown by doubling): its id, its payload, and whether it is live.
        self._id_at = np.empty(0, dtype=object)
        self._payload_at = np.empty(0, dtype=object)
        self._alive = np.zeros(0, dtype=bool)
        self._next = 0
        self._dead = 0
        self.compact_after = int(compact_after)

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
        return len(self._serial_of)

    def __repr__(self) -> str:
        return f"MutableHammingIndex(n={len(self)}, nbits={self.nbits}, kernel={self.kernel!r})"

    # ---------------------------------------------------------------- writes
    def add(self, codes: CodesLike, ids: Any = None, payloads: Sequence[dict | None] | None = None) -> None:
        """Append items; an id already present is a ValueError naming it."""
        packed = self._check_codes(codes)
        ids = self._ids(ids, len(packed))
        payloads = self._check_payloads(payloads, len(ids))
        clash = [i for i in ids if i in self._serial_of]
        if clash:
            raise ValueError(f"ids already in the index: {clash[:5]}")
        if not ids:
            return
        start, stop = self._next, self._next + len(ids)
        if stop > len(self._alive):
            self._grow(max(stop, 2 * len(self._alive), 1024))
        self._index.add(packed, np.arange(start, stop, dtype=np.int64))
        self._next = stop
        self._id_at[start:stop] = _object_array(ids)
        self._payload_at[start:stop] = _object_array(payloads)
        self._alive[start:stop] = True
        self._serial_of.update(zip(ids, range(start, stop)))

    def _grow(self, capacity: int) -> None:
        for name in ("_id_at", "_payload_at", "_alive"):
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype) if old.dtype == bool else np.empty(capacity, dtype=object)
            new[: len(old)] = old
            setattr(self, name, new)

    def upsert(self, codes: CodesLike, ids: Any, payloads: Sequence[dict | None] | None = None) -> None:
        """Replace existing ids (they move to the end, in the given order) and append new ones."""
        packed = self._check_codes(codes)
        ids = self._ids(ids, len(packed))
        payloads = self._check_payloads(payloads, len(ids))
        self.remove(ids)
        self.add(packed, ids, payloads)

    def remove(self, ids: Any) -> int:
        """Remove ``ids`` (unknown ids are ignored); the rest keep their relative order."""
        removed = 0
        for item_id in _as_list(ids):
            s = self._serial_of.pop(item_id, None)
            if s is not None:
                self._alive[s] = False
                self._payload_at[s] = None
                removed += 1
        self._dead += removed
        if self._dead >= self.compact_after:
            self.compact()
        return removed

    def compact(self) -> None:
        """Drop the dead rows from the scan arrays (the live ones keep their order)."""
        if not self._dead:
            return
        serials = self._index.ids
        live = serials[self._alive[serials]]
        codes = PackedCodes(self._index.codes.data[self._alive[serials]], self.nbits)
        ids, payloads = self._id_at[live].tolist(), self._payload_at[live].tolist()
        self.__init__(self.nbits, backend=self._backend, info=self._index.info, compact_after=self.compact_after)
        self.add(codes, ids, payloads)  # renumbered: serials 0..n-1 in the same order

    # ----------------------------------------------------------------- reads
    def get(self, ids: Any) -> list[dict | None]:
        out: list[dict | None] = []
        for item_id in _as_list(ids):
            s = self._serial_of.get(item_id)
            if s is None:
                out.append(None)
                continue
            pos = int(np.searchsorted(self._index.ids, s))  # serials increase along the rows
            out.append({"id": item_id, "code": self._index.codes.data[pos].copy(), "payload": self._payload_at[s]})
        return out

    def payloads(self, ids: Any) -> list[dict | None]:
        get = self._serial_of.get
        serials = np.array([get(i, -1) for i in _as_list(ids)], dtype=np.int64)
        out = self._payload_at[np.maximum(serials, 0)] if len(self._payload_at) else np.full(len(serials), None)
        out[serials < 0] = None
        return out.tolist()

    def search(self, query_codes: CodesLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest live items per query: (ids, distances), ranked by distance then insertion order."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self))
        serials, dist = self._index.search(query_codes, k + self._dead) if len(self._index) else \
            self._index.search(query_codes, 1)
        if self._dead:  # drop dead rows, keep the first k live ones of each row (order unchanged)
            alive = self._alive[serials]
            first = np.argsort(~alive, axis=1, kind="stable")[:, :k]
            serials, dist = np.take_along_axis(serials, first, 1), np.take_along_axis(dist, first, 1)
        else:
            serials, dist = serials[:, :k], dist[:, :k]
        return self._ids_of(serials), dist

    def range_search(self, query_codes: CodesLike, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for serials, dist in self._index.range_search(query_codes, radius):
            alive = self._alive[serials]
            out.append((self._ids_of(serials[alive]), dist[alive]))
        return out

    def _ids_of(self, serials: np.ndarray) -> np.ndarray:
        ids = self._id_at[serials]
        if ids.size and not isinstance(ids.flat[0], str):
            return ids.astype(np.int64)
        return ids if ids.size else ids.astype(np.int64)

    def save(self, path: str | Path) -> Path | None:
        return None  # the service's durable copy is its SQLite store

    def close(self) -> None:
        pass

    # --------------------------------------------------------------- checks
    def _check_codes(self, codes: CodesLike) -> PackedCodes:
        packed = as_packed(codes, name="codes")
        if packed.nbits != self.nbits:
            raise ValueError(f"codes have {packed.nbits} bits but the index holds {self.nbits}-bit codes")
        return packed

    @staticmethod
    def _ids(ids: Any, m: int) -> list:
        if ids is None:
            raise ValueError("this index needs an id for every item (ids=...)")
        ids = _as_list(ids)
        if len(ids) != m:
            raise ValueError(f"ids: {len(ids)} ids for {m} codes")
        if len(set(ids)) != len(ids):
            raise ValueError("ids must be unique within one call")
        kinds = {isinstance(i, str) for i in ids}
        if any(isinstance(i, bool) or not isinstance(i, (int, str)) for i in ids) or len(kinds) > 1:
            raise ValueError("ids must be all integers or all strings")
        return ids

    @staticmethod
    def _check_payloads(payloads: Sequence[dict | None] | None, m: int) -> list[dict | None]:
        if payloads is None:
            return [None] * m
        payloads = list(payloads)
        if len(payloads) != m:
            raise ValueError(f"payloads: {len(payloads)} payloads for {m} items")
        return payloads


def _object_array(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _as_list(ids: Any) -> list:
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, (str, int)):
        return [ids]
    return list(ids)
