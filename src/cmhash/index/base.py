"""The one index interface that the service, the CLI and the experiments code against.

Two implementations: :class:`cmhash.index.HammingIndex` (in memory, exact, ours) and
:class:`cmhash.index.milvus.MilvusIndex` (a Milvus collection; the ``milvus`` extra).

Shared rules:

- An item is ``(id, code, payload)``: ``id`` an int or a str, unique in the index; ``code`` one
  packed ``nbits``-bit row; ``payload`` a JSON-ready dict or None.
- ``add`` appends and refuses an id already present (ValueError naming it); ``upsert`` replaces
  present ids (they move to the end of the insertion order) and appends the others; ``remove``
  ignores unknown ids and returns how many it removed.
- ``search`` returns ids and distances of shape (n_query x min(k, len)), distance ascending;
  ``range_search`` returns, per query, every item with distance ``<= radius``.
- Ties: ``HammingIndex`` breaks them by insertion order (remove keeps the others' relative order).
  Milvus promises only the distances: within a distance, which ids come first (and which make the
  cut at the k-th distance) is its own choice. See docs/index.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from cmhash.codes import CodesLike, PackedCodes, as_packed

Payload = dict[str, Any]


@runtime_checkable
class Index(Protocol):
    """A Hamming index of packed binary codes with external ids and optional JSON payloads."""

    @property
    def nbits(self) -> int:
        """The code length in bits."""
        ...

    def __len__(self) -> int:
        """The number of items."""
        ...

    def add(self, codes: CodesLike, ids: Any = None, payloads: Sequence[Payload | None] | None = None) -> None:
        """Append items; an id already present is a ValueError naming it."""
        ...

    def upsert(self, codes: CodesLike, ids: Any, payloads: Sequence[Payload | None] | None = None) -> None:
        """Replace the items whose ids are present (they move to the end), append the others."""
        ...

    def remove(self, ids: Any) -> int:
        """Remove the items with these ids; unknown ids are ignored. Returns how many were removed."""
        ...

    def get(self, ids: Any) -> list[dict[str, Any] | None]:
        """Per id, ``{"id": id, "code": packed uint8 row, "payload": dict | None}``, or None if absent."""
        ...

    def search(self, query_codes: CodesLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items per query: (ids, distances), each (n_query x min(k, len))."""
        ...

    def range_search(self, query_codes: CodesLike, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (ids, distances) of every item within Hamming distance ``radius`` (inclusive)."""
        ...

    def payloads(self, ids: Any) -> list[Payload | None]:
        """Per id, its payload (None when the item has none or is absent): for search hits."""
        ...

    def save(self, path: str | Path) -> Path | None:
        """Persist: an in-memory index writes ``path``; a database-backed one flushes (returns None)."""
        ...

    def close(self) -> None:
        """Release what the index holds (connections, servers); a no-op for in-memory indexes."""
        ...


# ------------------------------------------------------------ shared argument checks
def as_id_array(ids: Any, name: str = "ids") -> np.ndarray:
    """``ids`` (one id, or a 1-D sequence of them) as a 1-D int64 or str array."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected one id or a 1-D sequence of ids, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name}: unsigned ids above 2**63 - 1 are not supported")
        return arr.astype(np.int64)
    if arr.dtype.kind == "U":
        return arr
    raise ValueError(f"{name} must be integers or strings, got dtype {arr.dtype}")


def check_payloads(payloads: Sequence[Payload | None] | None, m: int) -> list[Payload | None] | None:
    """``payloads`` (one per item: a JSON-ready dict or None) checked and copied through JSON, so
    what an index hands back is what it would hand back after a save and load (or from Milvus)."""
    import json

    if payloads is None:
        return None
    if isinstance(payloads, (dict, str, bytes)) or not hasattr(payloads, "__len__"):
        raise ValueError(f"payloads: expected a sequence of {m} dicts (or None), got {type(payloads).__name__}")
    if len(payloads) != m:
        raise ValueError(f"payloads: expected {m} (one per code), got {len(payloads)}")
    out: list[Payload | None] = []
    for i, p in enumerate(payloads):
        if p is None:
            out.append(None)
            continue
        if not isinstance(p, dict):
            raise ValueError(f"payloads[{i}]: expected a dict or None, got {type(p).__name__}")
        try:
            out.append(json.loads(json.dumps(p, allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payloads[{i}] must be JSON-ready (str, numbers, lists, dicts): {exc}") from exc
    return out


def check_codes(codes: CodesLike, nbits: int, name: str = "codes") -> PackedCodes:
    """``codes`` (PackedCodes or a {-1,+1}/{0,1} matrix, one row per code) as ``nbits``-bit PackedCodes."""
    if not isinstance(codes, PackedCodes):
        arr = np.asarray(codes)
        if arr.ndim == 1:
            raise ValueError(
                f"{name}: expected a 2-D array (items x {nbits} bits), got a 1-D array of "
                f"length {arr.shape[0]}; pass one code as a row, e.g. codes[None, :]"
            )
        codes = as_packed(arr, name=name)
    if codes.nbits != nbits:
        raise ValueError(f"{name} have {codes.nbits} bits but the index holds {nbits}-bit codes")
    return codes
