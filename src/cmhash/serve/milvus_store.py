"""`cmhash serve --backend milvus`: one Milvus collection is the service's durable store and its indexes.

The collection (created at the first write, when the id kind is known) holds one row per item:
``id`` (INT64 or VARCHAR), ``image`` and ``text`` (BINARY_VECTOR codes; a modality an item lacks
is stored as zeros with ``has_image`` / ``has_text`` false), ``payload`` (JSON) and
``has_payload``. Each write request is one Milvus upsert (or delete) of whole rows, so an item's
codes and payload change together. The service's per-modality indexes are
:class:`~cmhash.index.milvus.MilvusIndex` views of the same collection (``code_field="image"``,
``present_field="has_image"``), so a write needs no separate index update.

Durability: on Milvus Lite each write is flushed before it is acknowledged; a Milvus server
persists an acknowledged write in its write-ahead log. What differs from the SQLite store +
in-memory index, visible through the API: within one distance Milvus, not insertion order, ranks
the ties (``/info`` says so), and an upsert replaces an item in place.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np

from cmhash.data.dataset import MODALITIES
from cmhash.index.milvus import MAX_STR_ID, MilvusIndex, _pymilvus, code_bytes
from cmhash.serve.service import SearchService
from cmhash.serve.store import Item, _id_kind, check_items

RANKING = "Hamming distance ascending; ties within a distance in Milvus's order (not insertion order)"


class MilvusItemStore:
    """The service's items in the Milvus collection ``collection`` at ``uri`` (see the module doc).

    Has the methods of :class:`cmhash.serve.store.ItemStore` the service calls: ``write``,
    ``delete``, ``get``, ``id_kind``, ``len``, ``path``, ``close``; ``indexes`` are the views."""

    def __init__(self, uri: str, collection: str, nbits: int, *, token: str | None = None, timeout: float = 60.0):
        self.path = str(uri)
        self.collection = collection
        self.nbits = int(nbits)
        self.nbytes = (self.nbits + 7) // 8
        self.indexes: dict[str, MilvusIndex] = {}
        try:
            for m in MODALITIES:
                self.indexes[m] = MilvusIndex(uri, collection, self.nbits, token=token, timeout=timeout,
                                              info={"modality": m}, code_field=m, present_field=f"has_{m}")
        except BaseException:
            self.close()
            raise
        self._main = self.indexes[MODALITIES[0]]  # its connection carries the store's own calls
        self._orm = None

    # ------------------------------------------------------------- reads
    @property
    def id_kind(self) -> str | None:
        self._main._ready()
        return self._main.id_type

    def __len__(self) -> int:
        return self._main._count(every_row=True) if self._main._ready() else 0

    def _rows(self, ids: list, fields: list[str]) -> dict[Any, dict]:
        if not ids or not self._main._ready():
            return {}
        kind = self._main.id_type
        return self._main._rows_by_id([i for i in ids if _id_kind(i) == kind], fields, every_row=True)

    def get(self, ids: Sequence[int | str]) -> list[Item | None]:
        """The stored item of each id (None where absent)."""
        fields = [*MODALITIES, *(f"has_{m}" for m in MODALITIES), "payload", "has_payload"]
        rows = self._rows(list(ids), fields)
        out: list[Item | None] = []
        for item_id in ids:
            row = rows.get(item_id)
            if row is None:
                out.append(None)
                continue
            codes = {m: (code_bytes(row[m]) if row[f"has_{m}"] else None) for m in MODALITIES}
            out.append(Item(item_id, codes, row["payload"] if row["has_payload"] else None))
        return out

    # ------------------------------------------------------------ writes
    def write(self, items: Sequence[Item], *, upsert: bool) -> tuple[int, int]:
        """Add ``items`` (or replace stored ids when ``upsert``) in one Milvus upsert; returns
        (added, replaced). Without ``upsert`` an id already stored is a ValueError naming it and
        nothing is written."""
        if not items:
            return 0, 0
        stored_kind = self.id_kind
        kind = check_items(items, self.nbytes, stored_kind)
        for item in items:
            if kind == "str" and (len(item.id.encode()) > MAX_STR_ID or (self._main.lite and "'" in item.id)):
                raise ValueError(f"id {item.id[:40]!r}: string ids are at most {MAX_STR_ID} bytes"
                                 + (" and, on Milvus Lite, without a single quote" if self._main.lite else ""))
            if item.payload is not None:
                json.dumps(item.payload, allow_nan=False)
        ids = [item.id for item in items]
        present = self._rows(ids, [])
        stored = [i for i in ids if i in present]
        if stored and not upsert:
            raise ValueError(f"id {stored[0]!r} is already stored; use upsert to replace it")
        if stored_kind is None:
            self._create(kind)
        zero = bytes(self.nbytes)
        columns: list[list] = [ids]
        columns += [[it.codes[m] if it.codes[m] is not None else zero for it in items] for m in MODALITIES]
        columns += [[it.codes[m] is not None for it in items] for m in MODALITIES]
        columns += [[{} if it.payload is None else it.payload for it in items], [it.payload is not None for it in items]]
        self._main._call("upsert", self._collection().upsert, columns)
        self._flush()
        return len(items) - len(stored), len(stored)

    def delete(self, ids: Sequence[int | str]) -> list[int | str]:
        """Delete ``ids`` in one Milvus delete; returns those that were stored (unknown ones are ignored)."""
        ids = list(ids)
        rows = self._rows(ids, [])
        removed = [i for i in dict.fromkeys(ids) if i in rows]
        if removed:
            self._main._call("delete", self._main._live().delete, self.collection, filter=self._main._id_filter(removed))
            self._flush()
        return removed

    def _create(self, kind: str) -> None:
        pymilvus = _pymilvus()
        DataType = pymilvus.DataType
        client = self._main._live()
        description = json.dumps({"cmhash": {"nbits": self.nbits, "info": {"role": "cmhash serve items"}}})
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        if kind == "int":
            schema.add_field("id", DataType.INT64, is_primary=True)
        else:
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_STR_ID)
        for m in MODALITIES:
            schema.add_field(m, DataType.BINARY_VECTOR, dim=8 * self.nbytes)
        for m in MODALITIES:
            schema.add_field(f"has_{m}", DataType.BOOL)
        schema.add_field("payload", DataType.JSON)
        schema.add_field("has_payload", DataType.BOOL)
        params = client.prepare_index_params()
        for m in MODALITIES:
            params.add_index(field_name=m, index_type="BIN_FLAT", metric_type="HAMMING")
        self._main._call("create_collection", client.create_collection, self.collection,
                         schema=schema, index_params=params, consistency_level="Strong")
        for index in self.indexes.values():
            index._ready()

    def _collection(self):
        if self._orm is None:
            self._orm = _pymilvus().Collection(self.collection, using=self._main._live()._using)
        return self._orm

    def _flush(self) -> None:
        if self._main.lite:
            self._main.save()

    def close(self) -> None:
        self._orm = None
        for index in self.indexes.values():
            index.close()


class MilvusSearchService(SearchService):
    """The search service over a :class:`MilvusItemStore`: the store's writes are the index updates."""

    def _apply(self, items: list[Item], *, upsert: bool) -> None:
        """Nothing to mirror: the indexes are views of the collection the store just wrote."""

    def info(self) -> dict[str, Any]:
        out = super().info()
        out["ranking"] = RANKING
        out["store"]["backend"] = "milvus"
        out["store"]["collection"] = self.store.collection
        return out


def open_milvus_service(uri: str, collection: str, *, model: Any = None, nbits: int | None = None,
                        token: str | None = None, limits: Any = None) -> MilvusSearchService:
    """A writable service whose items live in the Milvus collection ``collection`` at ``uri``."""
    if nbits is None:
        if model is None:
            raise ValueError("a store needs the code length: give a model or nbits")
        nbits = model.bits
    store = MilvusItemStore(uri, collection, nbits, token=token)
    try:
        return MilvusSearchService(model, indexes=dict(store.indexes), store=store, limits=limits)
    except BaseException:
        store.close()
        raise
