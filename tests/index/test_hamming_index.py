"""HammingIndex against an explicit brute force (bit-by-bit distances + a stable sort)."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from cmhash.codes import PackedCodes, pack, topk_search
from cmhash.index import HammingIndex, kernels
from cmhash.io import load_arrays, save_arrays

BACKENDS = ["numpy"] + (["numba"] if kernels.HAVE_NUMBA else [])


def tied_codes(rng, n, nbits, pool=None):
    """{-1,+1} codes drawn from a small pool, so many items share a code (and distances tie)."""
    pool = pool or max(3, n // 8)
    base = rng.choice([-1, 1], size=(pool, nbits)).astype(np.int8)
    return base[rng.integers(0, pool, size=n)]


def brute_force(query, db):
    """Distances by counting differing bits, ranking by a stable argsort (ties: insertion order)."""
    dist = (query[:, None, :] != db[None, :, :]).sum(axis=2)
    return dist, np.argsort(dist, axis=1, kind="stable")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nbits", [12, 24, 64, 128, 72])
def test_search_equals_stable_brute_force(nbits, backend):
    rng = np.random.default_rng(nbits)
    db = tied_codes(rng, 700, nbits)
    query = np.vstack([db[:3], tied_codes(rng, 20, nbits)])  # exact matches, and ties
    index = HammingIndex(nbits, backend=backend)
    index.add(db[:250])
    index.add(pack(db[250:]))  # a second add continues the insertion order
    dist, order = brute_force(query, db)
    for k in (1, 10, 100, 700, 1000):
        ids, d = index.search(query, k)
        kk = min(k, len(db))
        assert ids.shape == d.shape == (len(query), kk)
        np.testing.assert_array_equal(ids, order[:, :kk])
        np.testing.assert_array_equal(d, np.take_along_axis(dist, order[:, :kk], axis=1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("nbits", [12, 24, 64, 128])
def test_range_search_equals_brute_force(nbits, backend):
    rng = np.random.default_rng(100 + nbits)
    db = tied_codes(rng, 500, nbits)
    query = np.vstack([db[:2], tied_codes(rng, 9, nbits)])
    index = HammingIndex.from_codes(db, backend=backend)
    dist, _ = brute_force(query, db)
    for radius in (0, 2, nbits // 3, nbits, nbits + 5):
        results = index.range_search(query, radius)
        assert len(results) == len(query)
        for row, (ids, d) in zip(dist, results):
            hit = np.flatnonzero(row <= radius)
            expect = hit[np.argsort(row[hit], kind="stable")]
            np.testing.assert_array_equal(ids, expect)
            np.testing.assert_array_equal(d, row[expect])
    assert index.range_search(query[:1], 0)[0][0].size >= 1  # a query that is in the database


@pytest.mark.parametrize("nbits", [64, 72, 128, 264])
def test_searches_follow_adds_removes_and_upserts(nbits):
    """Codes over 64 bits keep a copy of their first words for the scans: every change of the
    codes must show in the next search (numba) as it does in the numpy backend."""
    rng = np.random.default_rng(nbits)
    db = tied_codes(rng, 900, nbits, pool=40)
    query = np.vstack([db[:2], tied_codes(rng, 3, nbits, pool=40)])
    indexes = [HammingIndex(nbits, backend=b) for b in BACKENDS]

    def same_as_brute_force():
        ids = indexes[0].ids
        dist, _ = brute_force(query, unpack_codes(indexes[0]))
        for index in indexes:
            for threads in (1, 2):
                index.threads = threads
                for radius in (0, 3, nbits // 4):
                    for row, (got_ids, d) in zip(dist, index.range_search(query, radius)):
                        hit = np.flatnonzero(row <= radius)
                        hit = hit[np.argsort(row[hit], kind="stable")]
                        np.testing.assert_array_equal(got_ids, ids[hit])
                        np.testing.assert_array_equal(d, row[hit])
                order = np.argsort(dist, axis=1, kind="stable")[:, :20]
                got_ids, d = index.search(query, 20)
                np.testing.assert_array_equal(got_ids, ids[order])
                np.testing.assert_array_equal(d, np.take_along_axis(dist, order, axis=1))

    for index in indexes:
        index.add(db[:500], ids=np.arange(500))
    same_as_brute_force()
    for index in indexes:
        index.add(db[500:], ids=np.arange(500, 900))
    same_as_brute_force()
    for index in indexes:
        index.remove(np.arange(0, 900, 3))
    same_as_brute_force()
    present = indexes[0].ids[:50].copy()
    for index in indexes:  # as many items as before, other codes at the same positions
        index.upsert(db[-50:], ids=present)  # present ids move to the end with new codes
    assert len(indexes[0]) == 600
    same_as_brute_force()


@pytest.mark.parametrize("nbits", [72, 128])
def test_first_word_scan_off_keeps_no_copy_and_gives_the_same_results(nbits):
    rng = np.random.default_rng(nbits + 1)
    db = tied_codes(rng, 700, nbits, pool=30)
    query = np.vstack([db[:3], tied_codes(rng, 3, nbits, pool=30)])
    on, off = HammingIndex(nbits, backend="numba"), HammingIndex(nbits, backend="numba")
    off.first_word_scan = False
    for index in (on, off):
        index.add(db)
    for k in (1, 20):
        for a, b in zip(on.search(query, k), off.search(query, k)):
            np.testing.assert_array_equal(a, b)
    for radius in (0, 4, nbits // 3):
        for (ia, da), (ib, db_) in zip(on.range_search(query, radius), off.range_search(query, radius)):
            np.testing.assert_array_equal(ia, ib)
            np.testing.assert_array_equal(da, db_)
    assert on._head is not None and off._head is None
    on.first_word_scan = False  # switching it off later drops the copy at the next search
    on.search(query, 5)
    assert on._head is None


def unpack_codes(index):
    """The index's codes as {-1,+1} rows in insertion order."""
    bits = np.unpackbits(index.codes.data, axis=1, count=index.nbits)
    return bits.astype(np.int8) * 2 - 1


@pytest.mark.parametrize("nbits", [24, 128, 264])
def test_kernels_agree_across_tiles_and_buffer_sizes(nbits):
    """Tiny tiles (numpy merge path) and a tiny candidate buffer (numba compaction) change nothing."""
    rng = np.random.default_rng(7)
    db = tied_codes(rng, 999, nbits, pool=40)
    query = tied_codes(rng, 13, nbits, pool=40)
    qw, dw = kernels.to_words(pack(query).data), kernels.to_words(pack(db).data)
    dist, order = brute_force(query, db)
    for k in (1, 17, 999):
        ref = order[:, :k]
        for qb, chunk in ((3, 7), (32, 8192)):
            idx, d = kernels.topk_numpy(qw, dw, k, nbits, query_block=qb, db_chunk=chunk)
            np.testing.assert_array_equal(idx, ref)
            np.testing.assert_array_equal(d, np.take_along_axis(dist, ref, axis=1))
        if kernels.HAVE_NUMBA:
            for capacity in (k + 1, 3 * k, None):
                idx, d = kernels.topk_numba(qw, dw, k, nbits, capacity=capacity)
                np.testing.assert_array_equal(idx, ref)
                np.testing.assert_array_equal(d, np.take_along_axis(dist, ref, axis=1))
            for threads in (1, 4):
                idx, d = kernels.topk_numba(qw, dw, k, nbits, threads=threads)
                np.testing.assert_array_equal(idx, ref)
    for (a, da), row in zip(kernels.radius_numpy(qw, dw, nbits // 3, nbits, query_block=2, db_chunk=5), dist):
        hit = np.flatnonzero(row <= nbits // 3)
        np.testing.assert_array_equal(a, hit[np.argsort(row[hit], kind="stable")])
        np.testing.assert_array_equal(da, np.sort(row[hit]))


def test_agrees_with_codes_topk_search():
    rng = np.random.default_rng(3)
    db, query = pack(tied_codes(rng, 400, 32)), pack(tied_codes(rng, 15, 32))
    ids, d = HammingIndex.from_codes(db, backend="numpy").search(query, 50)
    ref_ids, ref_d = topk_search(query, db, 50)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(d, ref_d)


def test_external_ids_are_returned_in_place_of_positions():
    rng = np.random.default_rng(4)
    db = tied_codes(rng, 60, 16)
    query = db[:5]
    _, order = brute_force(query, db)
    names = np.array([f"doc-{i:03d}" for i in range(60)])
    index = HammingIndex(16)
    index.add(db[:30], ids=names[:30])
    index.add(db[30:], ids=list(names[30:]))
    ids, _ = index.search(query, 8)
    np.testing.assert_array_equal(ids, names[order[:, :8]])
    numbered = HammingIndex.from_codes(db, ids=np.arange(60) * 10 + 5)
    ids, _ = numbered.search(query, 8)
    np.testing.assert_array_equal(ids, order[:, :8] * 10 + 5)
    ranged = numbered.range_search(query, 3)
    assert all(((i - 5) % 10 == 0).all() for i, _ in ranged)


def test_bad_input_gives_clear_errors():
    rng = np.random.default_rng(5)
    db = rng.choice([-1, 1], size=(10, 24))
    index = HammingIndex.from_codes(db, ids=np.arange(10))
    with pytest.raises(ValueError, match="32 bits but the index holds 24-bit"):
        index.search(rng.choice([-1, 1], size=(2, 32)), 3)
    with pytest.raises(ValueError, match="codes have 12 bits"):
        index.add(rng.choice([-1, 1], size=(2, 12)), ids=[100, 101])
    with pytest.raises(ValueError, match="unique; duplicated: \\[7\\]"):
        index.add(db[:2], ids=[7, 7])
    with pytest.raises(ValueError, match="already in the index: \\[3\\]"):
        index.add(db[:2], ids=[3, 11])
    with pytest.raises(ValueError, match="pass ids="):
        index.add(db[:2])
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        index.add(db[:2], ids=[20, 21, 22])
    with pytest.raises(ValueError, match="integers or strings"):
        index.add(db[:2], ids=[1.5, 2.5])
    with pytest.raises(ValueError, match="integer ids, got string"):
        index.add(db[:2], ids=["a", "b"])
    nan = db[:2].astype(float)
    nan[0, 3] = np.nan
    with pytest.raises(ValueError, match="query codes: contains NaN"):
        index.search(nan, 3)
    with pytest.raises(ValueError, match="1-D array of length 24"):
        index.search(db[0], 3)
    with pytest.raises(ValueError, match="values in \\{-1, \\+1\\}"):
        index.search(db[:2] * 3, 3)
    for bad_k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            index.search(db[:1], bad_k)
    with pytest.raises(ValueError, match="radius must be a non-negative"):
        index.range_search(db[:1], -1)
    with pytest.raises(ValueError, match="backend must be one of"):
        HammingIndex(24, backend="gpu")
    with pytest.raises(ValueError, match="nbits must be a positive integer"):
        HammingIndex(0)
    with pytest.raises(ValueError, match="at most 65535"):
        HammingIndex(70_000)
    plain = HammingIndex.from_codes(db)
    with pytest.raises(ValueError, match="has no ids"):
        plain.add(db[:1], ids=[99])
    assert len(index) == 10 and len(plain) == 10  # failed adds changed nothing


def test_empty_index_and_empty_queries():
    index = HammingIndex(64)
    query = np.ones((3, 64), dtype=np.int8)
    ids, d = index.search(query, 5)
    assert ids.shape == d.shape == (3, 0)
    assert [len(i) for i, _ in index.range_search(query, 64)] == [0, 0, 0]
    index.add(query)
    for threads in (1, 2):  # no queries: nothing to split over threads
        index.threads = threads
        ids, d = index.search(PackedCodes(np.empty((0, 8), np.uint8), 64), 5)
        assert ids.shape == (0, 3)
        assert index.range_search(PackedCodes(np.empty((0, 8), np.uint8), 64), 3) == []


def test_growth_keeps_every_code():
    rng = np.random.default_rng(6)
    parts = [rng.choice([-1, 1], size=(m, 40)) for m in (1, 1500, 3, 700)]
    index = HammingIndex(40)
    for part in parts:
        index.add(part)
    allcodes = np.vstack(parts)
    np.testing.assert_array_equal(index.codes.unpack(), allcodes)
    ids, d = index.search(allcodes[::97], 1)
    assert (d[:, 0] == 0).all()


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("ids", [None, "int", "str"])
def test_save_load_round_trip(tmp_path, ids):
    rng = np.random.default_rng(8)
    db = tied_codes(rng, 300, 24)
    given = {None: None, "int": rng.permutation(300) * 3, "str": np.array([f"x{i}" for i in range(300)])}[ids]
    index = HammingIndex.from_codes(db, ids=given, info={"modality": "image", "n_db": 300})
    path = index.save(tmp_path / "db.index.npz")
    loaded = HammingIndex.load(path)
    assert len(loaded) == 300 and loaded.nbits == 24 and loaded.info == index.info
    np.testing.assert_array_equal(loaded.ids, index.ids)
    query = db[:7]
    for a, b in zip(index.search(query, 20), loaded.search(query, 20)):
        np.testing.assert_array_equal(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.index.npz"]  # no temp files left


def test_early_sync_of_large_files_writes_the_same_bytes(tmp_path, monkeypatch):
    # files of >= 8 MiB are fsynced before the CRCs are awaited; forced here on a small index
    from cmhash.index import _store

    rng = np.random.default_rng(12)
    index = HammingIndex.from_codes(tied_codes(rng, 500, 72), ids=rng.permutation(500))
    synced = []
    real_fsync = _store.os.fsync
    monkeypatch.setattr(_store.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    plain = index.save(tmp_path / "plain.npz").read_bytes()
    n_plain = len(synced)  # the temp file once, its folder once
    monkeypatch.setattr(_store, "_EARLY_SYNC_BYTES", 0)
    early = index.save(tmp_path / "early.npz")
    assert len(synced) - n_plain == n_plain + 1 and early.read_bytes() == plain
    loaded = HammingIndex.load(early)  # CRCs verified
    np.testing.assert_array_equal(loaded.ids, index.ids)
    with zipfile.ZipFile(early) as zf:
        assert zf.testzip() is None  # the zip's own CRCs, patched in after the early sync


def test_info_must_be_json_ready(tmp_path):
    index = HammingIndex(8, info={"when": object()})
    with pytest.raises(ValueError, match="info must be JSON-ready"):
        index.save(tmp_path / "x.npz")
    assert not list(tmp_path.iterdir())


def _saved(tmp_path):
    rng = np.random.default_rng(9)
    index = HammingIndex.from_codes(rng.choice([-1, 1], size=(2000, 64)))
    path = index.save(tmp_path / "corrupt.npz")
    return index, path


def test_truncated_file_names_the_file(tmp_path):
    _, path = _saved(tmp_path)
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) // 2, 10):
        path.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="corrupt.npz.*(corrupt|truncated)"):
            HammingIndex.load(path)


def test_flipped_code_bytes_are_detected(tmp_path):
    index, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    start = bytes(raw).find(index.codes.data.tobytes())
    assert start > 0  # the codes are stored uncompressed: flip bytes inside them
    for offset in (0, 777, index.codes.data.nbytes - 1):
        bad = bytearray(raw)
        bad[start + offset] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(ValueError, match="corrupt.npz.*corrupt"):
            HammingIndex.load(path)


def test_checksum_catches_codes_changed_behind_a_valid_container(tmp_path):
    """A well-formed file whose codes no longer match the recorded checksum (e.g. edited)."""
    _, path = _saved(tmp_path)
    arrays, meta = load_arrays(path)
    arrays["codes"][5, 0] ^= 1
    save_arrays(path, arrays, meta)
    with pytest.raises(ValueError, match="corrupt.npz: checksum mismatch"):
        HammingIndex.load(path)


def test_foreign_or_newer_files_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    arrays, meta = load_arrays(path)
    save_arrays(path, arrays, {**meta, "format_version": 99})
    with pytest.raises(ValueError, match="version 99 is not supported"):
        HammingIndex.load(path)
    save_arrays(path, arrays, {**meta, "format": "cmhash-model"})
    with pytest.raises(ValueError, match="not a cmhash Hamming index"):
        HammingIndex.load(path)
    save_arrays(path, {"codes": arrays["codes"][:, :4]}, meta)
    with pytest.raises(ValueError, match="checksum mismatch"):
        HammingIndex.load(path)
    with pytest.raises(ValueError, match="'codes' should be uint8 \\(2000, 8\\)"):
        HammingIndex.load(path, verify=False)


@pytest.mark.parametrize("nbits", [64, 16, 24])
def test_memory_mapped_load_gives_the_same_results(tmp_path, nbits):
    rng = np.random.default_rng(10)
    db = tied_codes(rng, 3000, nbits)
    index = HammingIndex.from_codes(db, ids=np.arange(3000) + 7)
    path = index.save(tmp_path / "big.npz")
    mapped = HammingIndex.load(path, mmap=True)
    assert len(mapped) == 3000 and mapped.nbits == nbits
    if nbits in (64, 16):  # whole-word codes are scanned straight from the mapping
        assert not mapped._words.flags.writeable  # a view of the read-only mapping, not a copy
    else:
        assert mapped._words.flags.writeable
    for a, b in zip(index.search(db[:9], 30), mapped.search(db[:9], 30)):
        np.testing.assert_array_equal(a, b)
    mapped.add(db[:2], ids=[-1, -2])  # growing moves the codes into memory; the file is untouched
    assert len(mapped) == 3002 and len(HammingIndex.load(path, mmap=True)) == 3000


def test_memory_mapped_load_detects_corruption(tmp_path):
    index, path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    start = bytes(raw).find(index.codes.data.tobytes())
    raw[start + 123] ^= 0x01  # the zip CRC is not read when mapping: the checksum catches it
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt.npz: checksum mismatch"):
        HammingIndex.load(path, mmap=True)
    assert len(HammingIndex.load(path, mmap=True, verify=False)) == 2000  # verify=False trusts the file
    path.write_bytes(bytes(raw[: start + 1000]))
    with pytest.raises(ValueError, match="corrupt.npz.*(corrupt|truncated)"):
        HammingIndex.load(path, mmap=True)


def test_version_2_file_is_a_valid_zip_that_numpy_reads(tmp_path):
    rng = np.random.default_rng(11)
    index = HammingIndex.from_codes(tied_codes(rng, 500, 72), ids=np.array([f"d{i}" for i in range(500)]))
    path = index.save(tmp_path / "v2.npz")
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every member's CRC (computed once, while writing) is right
    arrays, meta = load_arrays(path)
    assert meta["format_version"] == 2 and set(meta["checksums"]) == {"codes", "ids"}
    np.testing.assert_array_equal(arrays["codes"], index.codes.data)
    np.testing.assert_array_equal(arrays["ids"], index.ids)


def test_version_1_files_still_load(tmp_path):
    """A file as cmhash wrote it before format version 2 (np.savez, sha256 in the metadata)."""
    from cmhash.index.hamming import codes_checksum

    rng = np.random.default_rng(12)
    db = pack(tied_codes(rng, 400, 24))
    ids = np.arange(400, dtype=np.int64) * 5
    meta = {"format": "cmhash-hamming-index", "format_version": 1, "nbits": 24, "n": 400, "has_ids": True,
            "checksum": "sha256:" + codes_checksum(db.data, ids), "info": {"modality": "text"}}
    path = tmp_path / "v1.npz"
    save_arrays(path, {"codes": db.data, "ids": ids}, meta)
    fresh = HammingIndex.from_codes(db, ids=ids)
    for mmap in (False, True):
        old = HammingIndex.load(path, mmap=mmap)
        assert old.info == {"modality": "text"}
        for a, b in zip(old.search(db[:5], 40), fresh.search(db[:5], 40)):
            np.testing.assert_array_equal(a, b)
    bad = db.data.copy()
    bad[3, 0] ^= 0x80
    save_arrays(path, {"codes": bad, "ids": ids}, meta)
    with pytest.raises(ValueError, match="v1.npz: checksum mismatch"):
        HammingIndex.load(path)


def test_extra_arrays_are_stored_and_verified(tmp_path):
    """Subclasses (or later features) add arrays through _arrays_to_save; each gets a checksum."""

    class WithNotes(HammingIndex):
        def _arrays_to_save(self):
            return {**super()._arrays_to_save(), "notes": np.frombuffer(b'["a", "b"]', np.uint8)}

    index = WithNotes.from_codes(np.eye(2, 16, dtype=np.int8))
    path = index.save(tmp_path / "extra.npz")
    assert len(WithNotes.load(path)) == 2
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(b'["a", "b"]')
    raw[at + 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="extra.npz: checksum mismatch: 'notes'"):
        HammingIndex.load(path)


def test_corrupt_payloads_in_the_metadata_are_detected(tmp_path):
    index = HammingIndex.from_codes(np.eye(3, 16, dtype=np.int8), ids=[1, 2, 3])
    index.upsert(np.eye(1, 16, 5, dtype=np.int8), ids=[9], payloads=[{"title": "a distinctive title"}])
    path = index.save(tmp_path / "payloads.npz")
    assert HammingIndex.load(path).payloads([9]) == [{"title": "a distinctive title"}]
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(b"distinctive")
    raw[at] ^= 0x01  # still valid JSON: only the member's CRC can tell
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="payloads.npz.*corrupt"):
        HammingIndex.load(path)
