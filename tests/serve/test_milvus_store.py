"""MilvusItemStore in process (Milvus Lite on a temporary file): the ItemStore methods the service
calls, the per-modality views, and reopening the collection."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("milvus_lite", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")

from cmhash.codes import PackedCodes  # noqa: E402
from cmhash.index import Index  # noqa: E402
from cmhash.serve.milvus_store import MilvusItemStore  # noqa: E402
from cmhash.serve.store import Item  # noqa: E402


def item(i, image=True, text=True, payload=None):
    code = bytes([i % 256, (i * 7) % 256])
    return Item(i, {"image": code if image else None, "text": code[::-1] if text else None}, payload)


def test_store_writes_reads_deletes_and_reopens(tmp_path, milvus_children):
    before = set(milvus_children())
    uri = str(tmp_path / "s.db")
    store = MilvusItemStore(uri, "items", 16)
    try:
        assert len(store) == 0 and store.id_kind is None and store.get([1]) == [None]
        assert all(isinstance(ix, Index) and len(ix) == 0 for ix in store.indexes.values())
        assert store.write([item(i, text=i % 2 == 0, payload={"i": i} if i % 3 else None) for i in range(10)], upsert=False) == (10, 0)
        assert store.id_kind == "int" and len(store) == 10
        assert len(store.indexes["image"]) == 10 and len(store.indexes["text"]) == 5
        got = store.get([3, 4, 99])
        assert got[2] is None and got[0].codes["text"] is None and got[0].payload is None
        assert got[1].codes == item(4).codes and got[1].payload == {"i": 4}
        with pytest.raises(ValueError, match="id 2 is already stored"):
            store.write([item(11), item(2)], upsert=False)
        assert len(store) == 10  # nothing written
        with pytest.raises(ValueError, match="this store holds int ids, got str ids"):
            store.write([Item("a", {"image": b"\0\0", "text": None}, None)], upsert=False)
        with pytest.raises(ValueError, match="code of 3 bytes, expected 2"):
            store.write([Item(50, {"image": b"\0\0\0", "text": None}, None)], upsert=False)
        assert store.write([item(2, text=False, payload={"new": 1}), item(20)], upsert=True) == (1, 1)
        assert store.get([2])[0].codes["text"] is None and store.get([2])[0].payload == {"new": 1}
        assert len(store.indexes["text"]) == 5  # 2 lost its text code, 20 brought one
        query = PackedCodes(np.frombuffer(item(20).codes["image"], np.uint8)[None, :], 16)
        ids, dist = store.indexes["image"].search(query, 1)
        assert ids.tolist() == [[20]] and dist.tolist() == [[0]]
        assert store.indexes["image"].payloads([2, 3]) == [{"new": 1}, None]
        assert store.delete([1, 1, 77, 20]) == [1, 20]
        assert len(store) == 9 and store.get([1, 20]) == [None, None]
        with pytest.raises(ValueError, match="write its items through the item store"):
            store.indexes["image"].add(np.zeros((1, 16)), [100])
        assert store.indexes["image"].remove([12345]) == 0
    finally:
        store.close()
    again = MilvusItemStore(uri, "items", 16)
    try:
        assert len(again) == 9 and again.id_kind == "int" and again.get([2])[0].payload == {"new": 1}
        with pytest.raises(ValueError, match="holds 16-bit codes, not 24"):
            MilvusItemStore(uri, "items", 24)
    finally:
        again.close()
    assert set(milvus_children()) == before
