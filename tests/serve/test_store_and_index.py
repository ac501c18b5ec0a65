"""The service's parts without HTTP: the SQLite item store, the mutable in-memory index, JSON depth,
API keys."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmhash.codes import PackedCodes, hamming_distances, pack
from cmhash.serve._mutable import MutableHammingIndex
from cmhash.serve.auth import ApiKeys
from cmhash.serve.limits import ServiceError, json_depth, parse_json
from cmhash.serve.store import Item, ItemStore


def brute_topk(db: np.ndarray, query: np.ndarray, ids: list, k: int):
    """Reference ranking: distance, then position (stable argsort)."""
    nbits = db.shape[1]
    d = hamming_distances(pack(query), pack(db)) if len(db) else np.zeros((len(query), 0), int)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return [[ids[j] for j in row] for row in order], np.take_along_axis(d, order, axis=1), nbits


@pytest.mark.parametrize("nbits, compact_after", [(12, 1), (24, 7), (72, 10**9), (24, 10**9)])
def test_mutable_index_matches_brute_force_after_adds_upserts_and_removes(nbits, compact_after):
    rng = np.random.default_rng(nbits)
    index = MutableHammingIndex(nbits, compact_after=compact_after)
    rows: dict = {}  # id -> (code row {-1,+1}, payload), in insertion order (dicts keep it)
    next_id = 0
    for step in range(40):
        op = rng.integers(3)
        if op == 0 or len(rows) < 5:  # add a batch (few distinct codes: many ties)
            m = int(rng.integers(1, 8))
            codes = np.where(rng.integers(0, 2, (m, nbits)) > 0, 1, -1)
            codes[: m // 2] = codes[0]
            new = list(range(next_id, next_id + m))
            next_id += m
            index.add(codes, new, [{"n": i} for i in new])
            rows.update((i, (c, {"n": i})) for i, c in zip(new, codes))
        elif op == 1:  # upsert: some existing ids (move to the end), one new
            old = list(rng.choice(list(rows), size=min(3, len(rows)), replace=False).tolist())
            ids = old + [next_id]
            next_id += 1
            codes = np.where(rng.integers(0, 2, (len(ids), nbits)) > 0, 1, -1)
            index.upsert(codes, ids, [{"v": step}] * len(ids))
            for i in old:
                del rows[i]
            rows.update((i, (c, {"v": step})) for i, c in zip(ids, codes))
        else:  # remove some ids and one unknown
            gone = list(rng.choice(list(rows), size=min(4, len(rows)), replace=False).tolist())
            assert index.remove(gone + [10**9]) == len(gone)
            for i in gone:
                del rows[i]
        ids = list(rows)
        db = np.array([rows[i][0] for i in ids]).reshape(len(ids), nbits)
        query = np.where(rng.integers(0, 2, (3, nbits)) > 0, 1, -1)
        want_ids, want_d, _ = brute_topk(db, query, ids, 7)
        got_ids, got_d = index.search(query, 7)
        assert got_ids.tolist() == want_ids and got_d.tolist() == want_d.tolist()
        radius = nbits // 2
        for (got_i, got_r), want_i, want_r in zip(index.range_search(query, radius), *brute_topk(db, query, ids, len(ids))[:2]):
            keep = [j for j, d in enumerate(want_r) if d <= radius]
            assert got_i.tolist() == [want_i[j] for j in keep] and got_r.tolist() == [int(want_r[j]) for j in keep]
        assert len(index) == len(rows)
    ids = list(rows)
    assert index.payloads(ids[:3] + ["nope"]) == [rows[i][1] for i in ids[:3]] + [None]
    got = index.get([ids[0], -5])
    assert got[1] is None and got[0]["id"] == ids[0]
    np.testing.assert_array_equal(got[0]["code"], pack(rows[ids[0]][0][None, :]).data[0])
    with pytest.raises(ValueError, match="already in the index"):
        index.add(rows[ids[0]][0][None, :], [ids[0]])
    with pytest.raises(ValueError, match="needs an id"):
        index.add(rows[ids[0]][0][None, :])


def _item(i, nbits=24, payload=None, text=True):
    code = bytes([i % 256, (i * 7) % 256, 3])[: (nbits + 7) // 8]
    return Item(i, {"image": code, "text": code if text else None}, payload)


def test_store_keeps_insertion_order_upsert_moves_to_the_end_and_writes_are_all_or_nothing(tmp_path):
    store = ItemStore(tmp_path / "s.db", 24)
    assert store.write([_item(i, payload={"i": i}) for i in range(5)], upsert=False) == (5, 0)
    assert store.write([_item(2, payload={"new": True}), _item(9, text=False)], upsert=True) == (1, 1)
    assert [it.id for batch in store.scan(batch=2) for it in batch] == [0, 1, 3, 4, 2, 9]
    got = store.get([2, 9, 77])
    assert got[0].payload == {"new": True} and got[1].codes["text"] is None and got[2] is None
    with pytest.raises(ValueError, match="id 3 is already stored"):
        store.write([_item(50), _item(3)], upsert=False)
    assert store.get([50]) == [None] and len(store) == 6  # the whole batch was rolled back
    with pytest.raises(ValueError, match="holds int ids, got str ids"):
        store.write([Item("a", {"image": b"abc", "text": None}, None)], upsert=False)
    with pytest.raises(ValueError, match="image code of 2 bytes, expected 3"):
        store.write([Item(60, {"image": b"ab", "text": None}, None)], upsert=False)
    assert store.delete([0, 4, 123]) == [0, 4]
    store.close()
    reopened = ItemStore(tmp_path / "s.db", 24)
    assert [it.id for batch in reopened.scan() for it in batch] == [1, 3, 2, 9] and reopened.id_kind == "int"
    reopened.close()
    with pytest.raises(ValueError, match="holds 24-bit codes, the service uses 16-bit"):
        ItemStore(tmp_path / "s.db", 16)
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ValueError, match="junk.db: not a usable SQLite item store"):
        ItemStore(tmp_path / "junk.db", 24)


@pytest.mark.parametrize(
    "text",
    ['{"a": [1, 2, {"b": []}]}', '"[[[["', '{"s": "\\\\"}', '{"s": "\\"[[[", "t": [[1]]}', "[]", "3", '[{}, [[]]]',
     '{"a": "x]]]]", "b": {"c": {"d": [1]}}}'],
)
def test_json_depth_matches_the_parsed_depth(text):
    def depth(obj):
        if isinstance(obj, (list, dict)):
            children = obj.values() if isinstance(obj, dict) else obj
            return 1 + max((depth(c) for c in children), default=0)
        return 0

    assert json_depth(text.encode()) == depth(json.loads(text))


def test_parse_json_refuses_deep_nesting_before_parsing():
    with pytest.raises(ServiceError, match="deeper than 32") as err:
        parse_json(b"[" * 1_000_000 + b"]" * 1_000_000, 32)
    assert err.value.status == 400 and err.value.code == "too_deep"
    assert parse_json(b'{"a": [[1]]}', 3) == {"a": [[1]]}
    with pytest.raises(ServiceError, match="not valid JSON"):
        parse_json(b"\xff\xfe", 3)


def test_api_keys_scopes_and_errors(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text("# comment\nwrite " + "w" * 20 + "\n\nread " + "r" * 20 + "  # trailing comment\n")
    keys = ApiKeys.from_file(path)
    assert keys.scope_of("w" * 20) == "write" and keys.scope_of("r" * 20) == "read"
    assert keys.scope_of("w" * 19) is None and keys.scope_of("") is None
    assert keys.any_read and keys.any_write and "w" * 20 not in repr(keys)
    path.write_text("admin " + "x" * 20 + "\n")
    with pytest.raises(ValueError, match=r"keys:1: expected 'read KEY' or 'write KEY'"):
        ApiKeys.from_file(path)
    path.write_text("write short\n")
    with pytest.raises(ValueError, match="at least 16"):
        ApiKeys.from_file(path)
    with pytest.raises(ValueError, match="cannot read the API keys file"):
        ApiKeys.from_file(tmp_path / "missing")
    monkeypatch.setenv("CMHASH_API_KEYS", "write:" + "a" * 16 + ", read:" + "b" * 16)
    env = ApiKeys.from_env()
    assert env.scope_of("a" * 16) == "write" and env.scope_of("b" * 16) == "read"
    assert ApiKeys.from_env("") is None
    with pytest.raises(ValueError, match="CMHASH_API_KEYS: expected scope:KEY"):
        ApiKeys.from_env("justakeywithoutscope")


def test_store_service_backends_agree_and_rebuild_from_the_store(tmp_path):
    """The same writes through the memory backend (tombstones) and HammingIndex (compaction) give the
    same answers, ties included, and a service reopened on the store answers the same again."""
    from cmhash.index.base import Index
    from cmhash.serve import SearchService

    assert isinstance(MutableHammingIndex(8), Index)
    rng = np.random.default_rng(5)
    services = {b: SearchService.open_store(tmp_path / f"{b}.db", nbits=12, index_factory=b) for b in ("memory", "hamming")}
    hexes = [f"{a:02x}{b << 4:02x}" for a, b in rng.integers(0, 4, size=(400, 2))]  # 12-bit codes, 16 values: ties
    for svc in services.values():
        svc.put_items({"items": [{"id": i, "image_code": hexes[i], "text_code": hexes[-i], "payload": {"i": i}}
                                 for i in range(300)]})
        svc.put_items({"items": [{"id": i, "image_code": hexes[(300 + i) % 400]} for i in range(0, 300, 7)], "upsert": True})
        svc.delete_items({"ids": list(range(1, 300, 11)) + [999]})
    queries = [f"{a:02x}{b << 4:02x}" for a in range(4) for b in range(4)]
    answers = {b: [svc.search({"codes": queries, "target": t, "k": 40}) for t in ("image", "text")] +
               [svc.search({"codes": queries[:3], "target": "image", "radius": 3})] for b, svc in services.items()}
    assert answers["memory"] == answers["hamming"]
    assert answers["memory"][1]["results"][0]["payloads"][0] is not None  # text hits carry payloads
    services["memory"].close()
    reopened = SearchService.open_store(tmp_path / "memory.db", nbits=12)
    assert [reopened.search({"codes": queries, "target": t, "k": 40}) for t in ("image", "text")] == answers["memory"][:2]
    with pytest.raises(ValueError, match="backend must be one of"):
        SearchService.open_store(tmp_path / "x.db", nbits=12, index_factory="faiss")
