"""HammingIndex's ids, payloads, get, remove and upsert against a brute-force reference: a plain
list of (id, code, payload) in insertion order, ranked by bit-by-bit distance and a stable sort."""

from __future__ import annotations

import numpy as np
import pytest

from cmhash.codes import pack
from cmhash.index import HammingIndex, Index


class Reference:
    """The index's meaning written out naively: items in insertion order."""

    def __init__(self):
        self.items: list[tuple[object, np.ndarray, dict | None]] = []  # (id, {-1,+1} code, payload)

    def add(self, codes, ids, payloads=None):
        payloads = payloads or [None] * len(ids)
        self.items += list(zip(ids, codes, payloads))

    def remove(self, ids):
        gone = set(ids)
        before = len(self.items)
        self.items = [it for it in self.items if it[0] not in gone]
        return before - len(self.items)

    def upsert(self, codes, ids, payloads=None):
        self.remove(ids)
        self.add(codes, ids, payloads)

    def ranked(self, query):
        """Per query: ids and distances of every item, distance ascending, then insertion order."""
        db = np.array([it[1] for it in self.items]).reshape(len(self.items), -1)
        ids = np.array([it[0] for it in self.items])
        dist = (query[:, None, :] != db[None, :, :]).sum(axis=2)
        order = np.argsort(dist, axis=1, kind="stable")
        return [(ids[o], d[o]) for o, d in zip(order, dist)]


def tied_codes(rng, n, nbits, pool):
    base = rng.choice([-1, 1], size=(pool, nbits)).astype(np.int8)
    return base[rng.integers(0, pool, size=n)]


def check_against(index, ref, query, nbits):
    assert len(index) == len(ref.items)
    ranked = ref.ranked(query)
    for k in (1, 5, 40, len(ref.items) + 3):
        ids, dist = index.search(query, k)
        kk = min(k, len(ref.items))
        assert ids.shape == dist.shape == (len(query), kk)
        for row_ids, row_d, (exp_ids, exp_d) in zip(ids, dist, ranked):
            np.testing.assert_array_equal(row_ids, exp_ids[:kk])
            np.testing.assert_array_equal(row_d, exp_d[:kk])
    for radius in (0, nbits // 4, nbits):
        for (got_ids, got_d), (exp_ids, exp_d) in zip(index.range_search(query, radius), ranked):
            keep = exp_d <= radius
            np.testing.assert_array_equal(got_ids, exp_ids[keep])
            np.testing.assert_array_equal(got_d, exp_d[keep])
    want = [it[0] for it in ref.items]
    np.testing.assert_array_equal(index.ids, np.array(want).reshape(-1))
    got = index.get(want)
    for it, g in zip(ref.items, got):
        assert g["id"] == it[0]
        np.testing.assert_array_equal(g["code"], pack(it[1][None, :]).data[0])
        assert g["payload"] == it[2]
    assert index.payloads(want) == [it[2] for it in ref.items]


@pytest.mark.parametrize("id_kind", ["int", "str"])
@pytest.mark.parametrize("nbits", [12, 24, 72])
def test_add_remove_upsert_match_the_reference(nbits, id_kind, tmp_path):
    rng = np.random.default_rng(nbits)
    index, ref = HammingIndex(nbits), Reference()
    assert isinstance(index, Index)
    make_id = (lambda i: int(i) * 7 - 300) if id_kind == "int" else (lambda i: f"doc-{i}")
    next_id = 0
    query = tied_codes(rng, 9, nbits, pool=6)
    for step in range(12):
        op = ["add", "add", "remove", "upsert"][step % 4]
        if op == "add" or not ref.items:
            m = int(rng.integers(1, 60))
            codes = tied_codes(rng, m, nbits, pool=6)  # few distinct codes: many ties
            ids = [make_id(next_id + i) for i in range(m)]
            next_id += m
            payloads = [None if i % 3 == 0 else {"n": int(i), "tag": f"s{step}"} for i in range(m)]
            index.add(codes, ids, payloads if step % 2 == 0 else None)
            ref.add(codes, ids, payloads if step % 2 == 0 else None)
        elif op == "remove":
            present = [it[0] for it in ref.items]
            pick = list(rng.choice(len(present), size=min(len(present), 15), replace=False))
            asked = [present[i] for i in pick] + [make_id(10_000 + step)]  # plus one unknown id
            assert index.remove(asked) == ref.remove(asked)
        else:
            present = [it[0] for it in ref.items]
            old = [present[i] for i in rng.choice(len(present), size=min(len(present), 5), replace=False)]
            ids = old + [make_id(next_id)]
            next_id += 1
            codes = tied_codes(rng, len(ids), nbits, pool=6)
            payloads = [{"upserted": step}] * len(ids)
            index.upsert(codes, ids, payloads)
            ref.upsert(codes, ids, payloads)
        check_against(index, ref, query, nbits)
    # the ids, payloads and order survive a save and load (also memory-mapped)
    index.save(tmp_path / "i.npz")
    for mmap in (False, True):
        check_against(HammingIndex.load(tmp_path / "i.npz", mmap=mmap), ref, query, nbits)
    # removing from a loaded, memory-mapped index copies the codes (the file stays untouched)
    loaded = HammingIndex.load(tmp_path / "i.npz", mmap=True)
    gone = ref.items[0][0]
    assert loaded.remove([gone]) == ref.remove([gone]) == 1
    check_against(loaded, ref, query, nbits)


def test_remove_everything_then_add_again():
    index = HammingIndex(24)
    codes = np.where(np.random.default_rng(0).random((10, 24)) < 0.5, -1, 1)
    index.add(codes, list(range(10)), [{"i": i} for i in range(10)])
    assert index.remove(np.arange(10)) == 10
    assert len(index) == 0
    ids, dist = index.search(codes[:2], 3)
    assert ids.shape == (2, 0)
    assert index.get([0]) == [None] and index.payloads([0]) == [None]
    index.add(codes[:2], [5, 6])
    assert index.search(codes[:1], 1)[0].tolist() == [[5]]
    assert index.payloads([5, 6]) == [None, None]


def test_upsert_moves_the_item_to_the_end_of_the_tie_order():
    code = np.ones((1, 12), dtype=np.int8)
    index = HammingIndex(12)
    index.add(np.repeat(code, 3, axis=0), ["a", "b", "c"])
    index.upsert(code, ["a"], [{"v": 2}])
    ids, dist = index.search(code, 3)
    assert ids.tolist() == [["b", "c", "a"]] and dist.tolist() == [[0, 0, 0]]
    assert index.get("a")[0]["payload"] == {"v": 2}
    assert index.get(["zzz", "b"])[0] is None


def test_index_without_ids_still_works_and_refuses_remove():
    codes = np.where(np.random.default_rng(1).random((6, 12)) < 0.5, -1, 1)
    index = HammingIndex.from_codes(codes)
    assert index.get([2, 99])[0]["id"] == 2 and index.get([2, 99])[1] is None
    assert index.payloads([0]) == [None]
    with pytest.raises(ValueError, match="remove needs an index with ids"):
        index.remove([1])
    with pytest.raises(ValueError, match="upsert needs an index with ids"):
        index.upsert(codes[:1], [1])
    assert len(index) == 6


def test_bad_ids_and_payloads_are_refused_before_any_change():
    codes = np.where(np.random.default_rng(2).random((4, 12)) < 0.5, -1, 1)
    index = HammingIndex(12)
    index.add(codes[:2], [1, 2], [{"a": 1}, None])
    with pytest.raises(ValueError, match="ids already in the index: \\[2\\]"):
        index.add(codes[2:], [3, 2])
    with pytest.raises(ValueError, match="payloads: expected 2"):
        index.add(codes[2:], [3, 4], [{"a": 1}])
    with pytest.raises(ValueError, match=r"payloads\[1\]: expected a dict"):
        index.add(codes[2:], [3, 4], [None, "text"])
    with pytest.raises(ValueError, match=r"payloads\[0\] must be JSON-ready"):
        index.add(codes[2:], [3, 4], [{"x": object()}, None])
    with pytest.raises(ValueError, match="the index has integer ids, got string ids"):
        index.remove(["1"])
    with pytest.raises(ValueError, match="duplicated: \\[1\\]"):
        index.upsert(codes[2:], [1, 1])
    with pytest.raises(ValueError, match="the index has integer ids"):
        index.upsert(codes[2:], ["x", "y"])
    with pytest.raises(ValueError, match="upsert needs ids"):
        index.upsert(codes[2:], None)
    with pytest.raises(ValueError, match="1-D sequence of ids"):
        index.get([[1, 2]])
    assert len(index) == 2 and index.payloads([1, 2]) == [{"a": 1}, None]


def test_payloads_are_copies():
    index = HammingIndex(12)
    given = {"tags": ["x"]}
    index.add(np.ones((1, 12)), [7], [given])
    given["tags"].append("changed by the caller")
    index.payloads([7])[0]["tags"].append("changed by a reader")
    assert index.get(7)[0]["payload"] == {"tags": ["x"]}


def test_corrupt_payloads_in_a_file_name_the_file(tmp_path):
    from cmhash.io import load_arrays, save_arrays

    index = HammingIndex(12)
    index.add(np.ones((2, 12)), [1, 2], [{"a": 1}, None])
    path = index.save(tmp_path / "i.npz")
    arrays, meta = load_arrays(path)
    meta["payloads"] = [{"a": 1}]
    save_arrays(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match="bad.npz.*'payloads' should be a list of 2"):
        HammingIndex.load(tmp_path / "bad.npz", verify=False)
