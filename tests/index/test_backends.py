"""One behaviour suite for every Index backend: HammingIndex (in memory) and MilvusIndex (Milvus
Lite on a temporary file, started once for this module and always shut down).

Milvus differences, named where the tests branch on them:
- ranking ties: HammingIndex orders a distance's items by insertion order; Milvus promises only the
  distances, so for Milvus a row is checked to hold the same distances, the same id sets below the
  k-th distance and a valid subset at the k-th (`assert_valid_topk`);
- ids: HammingIndex without ids numbers items by position; MilvusIndex needs ids;
- upsert: HammingIndex moves a replaced item to the end of the tie order; Milvus has no order;
- k: Milvus caps k (and one range search) at MAX_TOPK = 16,384 hits per query.
"""

from __future__ import annotations

import glob
import os
import tempfile
import uuid

import numpy as np
import pytest

from cmhash.codes import pack
from cmhash.index import HammingIndex, Index

if os.environ.get("CI", "").lower() == "true":
    import pymilvus  # noqa: F401  (CI installs the milvus extra: a missing one must fail, not skip)
    import milvus_lite  # noqa: F401
pytest.importorskip("pymilvus", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")
pytest.importorskip("milvus_lite", reason="the milvus extra is not installed: pip install 'cmhash[milvus]'")

from cmhash.index import milvus as milvus_mod  # noqa: E402
from cmhash.index.milvus import MilvusError, MilvusIndex  # noqa: E402

BACKENDS = ["hamming", "milvus"]


@pytest.fixture(scope="module")
def lite(milvus_children):
    """A Milvus Lite file in a temporary folder, its server held open by one index for the
    module; afterwards: no server process, no socket, no lock file, the folder removed."""
    folder = tempfile.mkdtemp(prefix="cmhash-milvus-")
    name = f"t{uuid.uuid4().hex[:8]}.db"
    path = os.path.join(folder, name)
    before = set(milvus_children())
    keeper = MilvusIndex(path, "keeper", 8, id_type="int")
    assert set(milvus_children()) - before, "Milvus Lite should run as a child process"
    try:
        yield path
    finally:
        keeper.close()
        left = set(milvus_children()) - before
        sockets = glob.glob(os.path.join(tempfile.gettempdir(), f"*_{name}.sock"))
        files = sorted(os.listdir(folder))
        for f in files:
            os.unlink(os.path.join(folder, f))
        os.rmdir(folder)
        assert not left, f"Milvus Lite processes left running: {left}"
        assert not sockets, f"Milvus Lite sockets left: {sockets}"
        assert files == [name], f"unexpected files beside the Milvus Lite file: {files}"


@pytest.fixture
def make_index(request, lite):
    """make_index(nbits) -> an empty index of the backend under test, closed after the test."""
    made = []

    def make(nbits, **kwargs):
        if request.param == "hamming":
            index = HammingIndex(nbits)
        else:
            index = MilvusIndex(lite, f"c{uuid.uuid4().hex[:12]}", nbits, **kwargs)
        made.append(index)
        return index

    make.backend = request.param
    yield make
    for index in made:
        index.close()


def backends(fn):
    return pytest.mark.parametrize("make_index", BACKENDS, indirect=True)(fn)


def tied_codes(rng, n, nbits, pool):
    base = rng.choice([-1, 1], size=(pool, nbits)).astype(np.int8)
    return base[rng.integers(0, pool, size=n)]


def brute(query, db):
    return (query[:, None, :] != db[None, :, :]).sum(axis=2)


def assert_valid_topk(ids, dist, ref_ids, ref_dist, k):
    """Milvus's promise for one row: the k smallest distances; below the k-th distance exactly
    the items at those distances; at the k-th distance distinct items of that distance."""
    kk = min(k, len(ref_ids))
    expect = np.sort(ref_dist)[:kk]
    np.testing.assert_array_equal(dist, expect)
    assert len(set(ids.tolist())) == kk
    if kk == 0:
        return
    kth = expect[-1]
    assert set(ids[dist < kth].tolist()) == set(ref_ids[ref_dist < kth].tolist())
    assert set(ids[dist == kth].tolist()) <= set(ref_ids[ref_dist == kth].tolist())
    truth = dict(zip(ref_ids.tolist(), ref_dist.tolist()))
    assert [truth[i] for i in ids.tolist()] == dist.tolist()


def check_search(index, backend, query, db, db_ids, ks):
    ref = brute(query, db)
    for k in ks:
        ids, dist = index.search(query, k)
        kk = min(k, len(db))
        assert ids.shape == dist.shape == (len(query), kk)
        assert dist.dtype == np.uint16
        for q in range(len(query)):
            if backend == "hamming":  # our rule: distance, then insertion order
                order = np.argsort(ref[q], kind="stable")[:kk]
                np.testing.assert_array_equal(ids[q], db_ids[order])
            assert_valid_topk(ids[q], dist[q], db_ids, ref[q], k)


# ------------------------------------------------------------------ the shared behaviour suite
@backends
@pytest.mark.parametrize("nbits", [12, 24, 72])
def test_add_and_search_match_brute_force(make_index, nbits):
    rng = np.random.default_rng(nbits)
    index = make_index(nbits)
    assert isinstance(index, Index) and index.nbits == nbits and len(index) == 0
    db = tied_codes(rng, 300, nbits, pool=12)  # many ties
    ids = np.arange(300, dtype=np.int64) * 3 + 1
    index.add(db[:120], ids[:120])
    index.add(pack(db[120:]), ids[120:])
    assert len(index) == 300
    query = np.vstack([db[:2], tied_codes(rng, 6, nbits, pool=12)])
    check_search(index, make_index.backend, query, db, ids, ks=(1, 7, 50, 300, 400))


@backends
@pytest.mark.parametrize("nbits", [12, 24, 72])
def test_range_search_is_inclusive_and_exact(make_index, nbits):
    rng = np.random.default_rng(10 + nbits)
    index = make_index(nbits)
    db = tied_codes(rng, 200, nbits, pool=15)
    ids = [f"item-{i}" for i in range(200)]
    index.add(db, ids)
    query = np.vstack([db[:2], tied_codes(rng, 4, nbits, pool=15)])
    ref = brute(query, db)
    for radius in sorted({0, 1, int(np.median(ref)), nbits // 2, nbits}):
        for q, (got_ids, got_d) in enumerate(index.range_search(query, radius)):
            hit = ref[q] <= radius  # the boundary distance is included
            assert set(got_ids.tolist()) == {ids[i] for i in np.flatnonzero(hit)}
            assert np.all(np.diff(got_d.astype(int)) >= 0)
            assert [int(ref[q][int(i.split("-")[1])]) for i in got_ids] == got_d.tolist()
            if make_index.backend == "hamming":
                assert got_ids.tolist() == [ids[i] for i in np.flatnonzero(hit)[np.argsort(ref[q][hit], kind="stable")]]


@backends
def test_range_search_boundary_distances(make_index):
    """Items at exactly r, r + 1 (and 0): the radius keeps d <= r and drops d = r + 1."""
    nbits = 24
    db = np.zeros((nbits + 1, nbits), dtype=np.int8)
    for d in range(nbits + 1):
        db[d, :d] = 1  # {0,1} codes: item d is at distance d from the zero code
    index = make_index(nbits)
    index.add(db, np.arange(nbits + 1))
    for r in (0, 1, 5, nbits - 1, nbits):
        [(got, dist)] = index.range_search(db[:1], r)
        assert sorted(got.tolist()) == list(range(r + 1)) and dist.tolist() == list(range(r + 1))


@backends
def test_remove_get_payloads_upsert(make_index):
    rng = np.random.default_rng(3)
    nbits = 24
    index = make_index(nbits)
    db = tied_codes(rng, 40, nbits, pool=5)
    ids = np.arange(100, 140)
    payloads = [{"title": f"t{i}", "tags": ["a", i]} if i % 3 else None for i in range(40)]
    index.add(db, ids, payloads)
    got = index.get([100, 101, 999])
    assert got[2] is None and got[0]["payload"] is None and got[1]["payload"] == {"title": "t1", "tags": ["a", 1]}
    np.testing.assert_array_equal(got[1]["code"], pack(db[1:2]).data[0])
    assert index.payloads(np.array([101, 102, 999, 103])) == [payloads[1], payloads[2], None, None]
    # remove: a count, unknown ids ignored, repeated ids counted once
    assert index.remove([100, 105, 105, 12345]) == 2
    assert index.remove([100]) == 0
    assert len(index) == 38 and index.get([100, 105]) == [None, None]
    keep = np.setdiff1d(np.arange(40), [0, 5])
    check_search(index, index_backend(index), db[:4], db[keep], ids[keep], ks=(1, 10, 38))
    # upsert: one replaced, one new
    new_codes = tied_codes(rng, 2, nbits, pool=2)
    index.upsert(new_codes, [101, 777], [{"v": 2}, None])
    assert len(index) == 39
    assert index.payloads([101, 777]) == [{"v": 2}, None]
    np.testing.assert_array_equal(index.get(777)[0]["code"], pack(new_codes[1:2]).data[0])
    [(hit_ids, hit_d)] = index.range_search(new_codes[:1], 0)
    assert 101 in hit_ids.tolist()
    if index_backend(index) == "hamming":  # only HammingIndex has an insertion order to move to the end of
        assert hit_ids.tolist()[-1] in (101, 777)


def index_backend(index):
    return "hamming" if isinstance(index, HammingIndex) else "milvus"


@backends
def test_string_ids_and_empty_index(make_index):
    index = make_index(12)
    empty = np.ones((2, 12), dtype=np.int8)
    ids, dist = index.search(empty, 5)
    assert ids.shape == dist.shape == (2, 0)
    assert [len(h[0]) for h in index.range_search(empty, 12)] == [0, 0]
    assert index.get(["nope"]) == [None] and index.remove(["nope"]) == 0
    index.add(np.vstack([empty, -empty]), ["a", 'quote"d', "ü-ß", "back\\slash"])
    ids, dist = index.search(empty[:1], 4)
    assert set(ids[0].tolist()) == {"a", 'quote"d', "ü-ß", "back\\slash"} and dist[0].tolist() == [0, 0, 12, 12]
    assert index.remove(['quote"d', "back\\slash"]) == 2
    assert sorted(index.search(empty[:1], 4)[0][0].tolist()) == ["a", "ü-ß"]


@backends
def test_bad_inputs_give_clear_errors_and_change_nothing(make_index):
    index = make_index(24)
    codes = np.ones((3, 24), dtype=np.int8)
    index.add(codes[:2], [1, 2], [{"a": 1}, None])
    cases = [
        (lambda: index.add(codes[:1], [2]), "ids already in the index: \\[2\\]"),
        (lambda: index.add(codes[:2], [7, 7]), "duplicated: \\[7\\]"),
        (lambda: index.add(codes[:2], [7]), "ids must have shape \\(2,\\)"),
        (lambda: index.add(codes[:1], ["x"]), "the index has integer ids, got string ids"),
        (lambda: index.add(np.ones((1, 12)), [9]), "codes have 12 bits but the index holds 24-bit codes"),
        (lambda: index.add(codes[0], [9]), "expected a 2-D array"),
        (lambda: index.add(codes[:1], [9], [{"x": object()}]), "JSON-ready"),
        (lambda: index.add(codes[:1], [9], [{"a": 1}, None]), "payloads: expected 1"),
        (lambda: index.add(codes[:1], [9], ["text"]), "expected a dict or None"),
        (lambda: index.upsert(codes[:2], [3, 3]), "duplicated"),
        (lambda: index.search(codes, 0), "k must be a positive integer"),
        (lambda: index.search(codes, 2.5), "k must be a positive integer"),
        (lambda: index.search(np.ones((1, 16)), 1), "query codes have 16 bits"),
        (lambda: index.range_search(codes, -1), "radius must be a non-negative integer"),
        (lambda: index.remove(["1"]), "the index has integer ids"),
        (lambda: index.get([[1]]), "1-D sequence of ids"),
        (lambda: index.add(np.full((1, 24), 3), [9]), "codes"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert len(index) == 2 and index.payloads([1, 2]) == [{"a": 1}, None]


# ------------------------------------------------------------ both backends, same data, same answers
@pytest.mark.parametrize("nbits", [24, 64])
def test_backends_agree_under_the_ranking_rule(lite, nbits):
    rng = np.random.default_rng(7 * nbits)
    db = tied_codes(rng, 2000, nbits, pool=60)
    ids = rng.permutation(10_000)[:2000]
    query = np.vstack([db[:3], tied_codes(rng, 30, nbits, pool=60)])
    ours = HammingIndex.from_codes(db, ids=ids)
    with MilvusIndex(lite, f"agree{nbits}", nbits, insert_batch=700) as theirs:
        theirs.add(db, ids)
        ref = brute(query, db)
        for k in (1, 10, 100):
            a_ids, a_d = ours.search(query, k)
            b_ids, b_d = theirs.search(query, k)
            np.testing.assert_array_equal(a_d, b_d)  # the same distances, always
            for q in range(len(query)):
                assert_valid_topk(b_ids[q], b_d[q], ids, ref[q], k)
                kth = a_d[q, -1]
                assert set(a_ids[q][a_d[q] < kth]) == set(b_ids[q][b_d[q] < kth])
        for (a_ids, a_d), (b_ids, b_d) in zip(ours.range_search(query, nbits // 3), theirs.range_search(query, nbits // 3)):
            np.testing.assert_array_equal(a_d, b_d)
            assert set(a_ids.tolist()) == set(b_ids.tolist())


# ------------------------------------------------------------------------- Milvus specifics
def test_milvus_needs_ids_where_hamming_numbers_positions(lite):
    codes = np.ones((2, 16), dtype=np.int8)
    assert HammingIndex.from_codes(codes).search(codes[:1], 2)[0].tolist() == [[0, 1]]
    with MilvusIndex(lite, "noids", 16) as index:
        with pytest.raises(ValueError, match="MilvusIndex needs ids"):
            index.add(codes)


def test_milvus_collection_is_durable_and_checked_when_reopened(lite):
    codes = np.where(np.random.default_rng(0).random((5, 72)) < 0.5, -1, 1)
    with MilvusIndex(lite, "durable", 72, info={"modality": "image", "dataset": "wiki"}) as index:
        index.add(codes, ["a", "b", "c", "d", "e"], [{"i": i} for i in range(5)])
        index.save()
        with pytest.raises(ValueError, match="takes no path"):
            index.save("file.npz")
    with MilvusIndex(lite, "durable") as again:  # nbits and id type come from the collection
        assert again.nbits == 72 and again.id_type == "str" and len(again) == 5
        assert again.info == {"modality": "image", "dataset": "wiki"}
        assert again.payloads(["e"]) == [{"i": 4}]
        np.testing.assert_array_equal(again.search(codes[:1], 1)[1], [[0]])
    with pytest.raises(ValueError, match="holds 72-bit codes, not 64"):
        MilvusIndex(lite, "durable", 64)
    with pytest.raises(ValueError, match="has str ids, not int"):
        MilvusIndex(lite, "durable", id_type="int")
    with pytest.raises(ValueError, match="does not exist .* give nbits"):
        MilvusIndex(lite, "never_made")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        MilvusIndex(lite, "bad-name", 8)


def test_milvus_caps_and_range_search_paging(lite, monkeypatch):
    nbits = 16
    db = np.zeros((60, nbits), dtype=np.int8)
    for i in range(60):
        db[i, : i % 5] = 1  # 12 items at each distance 0..4 from the zero code
    with MilvusIndex(lite, "paging", nbits) as index:
        index.add(db, np.arange(60))
        monkeypatch.setattr(milvus_mod, "MAX_TOPK", 20)
        [(got, dist)] = index.range_search(db[:1], 3)  # 48 hits > 20: searched one distance at a time
        assert sorted(got.tolist()) == [i for i in range(60) if i % 5 <= 3]
        assert dist.tolist() == sorted(dist.tolist()) and len(dist) == 48
        monkeypatch.setattr(milvus_mod, "MAX_TOPK", 10)
        with pytest.raises(ValueError, match="12|10 or more items at distance 0"):
            index.range_search(db[:1], 3)
        with pytest.raises(ValueError, match="at most 10 hits per query, got k=11 over 60 items"):
            index.search(db[:1], 11)


def test_milvus_lite_limits_are_named(lite):
    with pytest.raises(ValueError, match="Milvus Lite supports only BIN_FLAT"):
        MilvusIndex(lite, "ivf", 64, id_type="int", index_type="BIN_IVF_FLAT")
    with MilvusIndex(lite, "quotes", 8) as index:
        with pytest.raises(ValueError, match="single quote"):
            index.add(np.ones((1, 8)), ["it's"])
        with pytest.raises(ValueError, match="at most 512 bytes"):
            index.add(np.ones((1, 8)), ["x" * 513])
    with pytest.raises(ValueError, match="must end in .db"):
        MilvusIndex(os.path.join(os.path.dirname(lite), "x.sqlite"), "c", 8)
    closed = MilvusIndex(lite, "closed", 8, id_type="int")
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.add(np.ones((1, 8)), [1])


def test_unreachable_server_is_a_milvus_error_naming_it_without_the_token():
    with pytest.raises(MilvusError, match="cannot connect to Milvus at http://127.0.0.1:9") as info:
        MilvusIndex("http://127.0.0.1:9", "c", 64, token="user:secret", timeout=2)
    assert "secret" not in str(info.value)
