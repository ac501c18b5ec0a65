"""cmhash.codes against plain-Python references: packing, distances, top-k and radius search."""

from __future__ import annotations

import numpy as np
import pytest

from cmhash.codes import (
    PackedCodes,
    as_packed,
    hamming_distances,
    iter_hamming_blocks,
    pack,
    radius_search,
    sign,
    topk_search,
    unpack,
)

BIT_LENGTHS = [1, 7, 12, 24, 64, 65, 128]


def random_pm1(rng, n, bits):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, bits))


def brute_distances(q, db):
    """Plain loop: number of positions where the two {-1,+1} codes differ."""
    out = np.zeros((len(q), len(db)), dtype=np.int64)
    for i in range(len(q)):
        for j in range(len(db)):
            out[i, j] = sum(1 for a, b in zip(q[i], db[j]) if a != b)
    return out


def brute_stable_order(dist_row):
    """Database indices by (distance, index): the stable order of PROTOCOL.md."""
    return sorted(range(len(dist_row)), key=lambda j: (dist_row[j], j))


# --- sign ---------------------------------------------------------------------------------

def test_sign_maps_zero_to_plus_one():
    out = sign(np.array([-2.5, -0.0, 0.0, 1e-12, 3.0]))
    assert out.dtype == np.int8
    assert out.tolist() == [-1, 1, 1, 1, 1]
    assert sign(np.array([[0, -3], [5, 0]])).tolist() == [[1, -1], [1, 1]]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_sign_rejects_non_finite(bad):
    with pytest.raises(ValueError, match="NaN or inf"):
        sign(np.array([0.5, bad]))


# --- pack / unpack ------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_pack_unpack_round_trip_pm1_and_01(bits):
    rng = np.random.default_rng(bits)
    codes = random_pm1(rng, 37, bits)
    packed = pack(codes)
    assert packed.nbits == bits and len(packed) == 37
    assert packed.data.shape == (37, (bits + 7) // 8) and packed.data.dtype == np.uint8
    np.testing.assert_array_equal(unpack(packed), codes)
    # the same codes written as {0,1}, as bool, or as floats pack to the same bytes
    for form in ((codes > 0).astype(np.uint8), codes > 0, codes.astype(np.float32)):
        np.testing.assert_array_equal(pack(form).data, packed.data)
    np.testing.assert_array_equal(packed.unpack(), codes)


@pytest.mark.parametrize("bits", [1, 7, 12, 20, 65])
def test_padding_bits_are_zero_and_required_zero(bits):
    rng = np.random.default_rng(0)
    packed = pack(np.ones((5, bits), dtype=np.int8))
    pad = packed.data.shape[1] * 8 - bits
    assert pad > 0
    assert not (packed.data[:, -1] & np.uint8((1 << pad) - 1)).any()
    dirty = packed.data.copy()
    dirty[2, -1] |= 1  # lowest bit of the last byte is padding
    with pytest.raises(ValueError, match="padding"):
        PackedCodes(dirty, bits)
    # padding never counts: all-ones vs all-minus-ones differ in exactly `bits` positions
    d = hamming_distances(packed, pack(-np.ones((3, bits), dtype=np.int8)))
    assert (d == bits).all()
    q = random_pm1(rng, 4, bits)
    np.testing.assert_array_equal(hamming_distances(q, q).diagonal(), 0)


def test_packed_codes_validation_and_indexing():
    with pytest.raises(ValueError, match="uint8"):
        PackedCodes(np.zeros((2, 2), dtype=np.int64), 12)
    with pytest.raises(ValueError, match="need 2 bytes"):
        PackedCodes(np.zeros((2, 3), dtype=np.uint8), 12)
    with pytest.raises(ValueError, match="need"):
        PackedCodes(np.zeros((2, 1), dtype=np.uint8), 0)
    codes = random_pm1(np.random.default_rng(1), 6, 12)
    packed = pack(codes)
    np.testing.assert_array_equal(packed[2].unpack(), codes[2:3])
    np.testing.assert_array_equal(packed[[4, 0]].unpack(), codes[[4, 0]])
    np.testing.assert_array_equal(packed[1:3].unpack(), codes[1:3])
    assert as_packed(packed) is packed


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([[1, -1, 0]]), "values in"),  # a mixture of both conventions
        (np.array([[0, 2, 1]]), "values in"),
        (np.array([[0.5, 1.0]]), "values in"),
        (np.array([[np.nan, 1.0]]), "NaN"),
        (np.array([1, -1, 1]), "2-D"),
        (np.array([["a", "b"]]), "dtype"),
    ],
)
def test_pack_rejects_non_binary_input(bad, match):
    with pytest.raises(ValueError, match=match):
        pack(bad, name="image codes")
    with pytest.raises(ValueError, match="image codes"):
        pack(bad, name="image codes")


def test_all_constant_codes_are_unambiguous():
    # all zeros ({0,1}) and all -1 ({-1,+1}) are both "every bit 0"; all ones is "every bit 1"
    np.testing.assert_array_equal(pack(np.zeros((2, 9))).data, pack(-np.ones((2, 9))).data)
    assert unpack(pack(np.ones((2, 9)))).min() == 1


# --- distances ----------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BIT_LENGTHS)
def test_hamming_distances_match_a_loop(bits):
    rng = np.random.default_rng(100 + bits)
    q, db = random_pm1(rng, 9, bits), random_pm1(rng, 23, bits)
    expected = brute_distances(q, db)
    got = hamming_distances(q, db)
    assert got.dtype == np.uint16 and got.shape == (9, 23)
    np.testing.assert_array_equal(got, expected)
    # mixed input forms give the same distances
    np.testing.assert_array_equal(hamming_distances(pack(q), (db > 0).astype(np.uint8)), expected)


def test_iter_hamming_blocks_cover_all_queries_in_order():
    rng = np.random.default_rng(3)
    q, db = random_pm1(rng, 10, 24), random_pm1(rng, 7, 24)
    expected = brute_distances(q, db)
    for block in (1, 3, 10, 64):
        seen = []
        for sl, dist in iter_hamming_blocks(q, db, block=block):
            np.testing.assert_array_equal(dist, expected[sl])
            seen.extend(range(sl.start, sl.stop))
        assert seen == list(range(10))


def test_bit_length_mismatch_is_an_error():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="12 bits.*16 bits"):
        hamming_distances(random_pm1(rng, 2, 12), random_pm1(rng, 3, 16))
    with pytest.raises(ValueError, match="bits"):
        topk_search(random_pm1(rng, 2, 24), random_pm1(rng, 3, 25), 2)


# --- search -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [3, 12, 24, 65])
@pytest.mark.parametrize("k", [1, 5, 40, 60, 200])
def test_topk_search_matches_a_stable_sort_with_ties(bits, k):
    rng = np.random.default_rng(bits * 1000 + k)
    q, db = random_pm1(rng, 6, bits), random_pm1(rng, 60, bits)
    db[10:20] = db[0]  # exact duplicates: a heavy tie group
    q[0] = db[0]
    dist = brute_distances(q, db)
    idx, d = topk_search(q, db, k)
    kk = min(k, 60)
    assert idx.shape == d.shape == (6, kk)
    for i in range(6):
        order = brute_stable_order(dist[i])[:kk]
        assert idx[i].tolist() == order
        assert d[i].tolist() == [dist[i][j] for j in order]
    group = [j for j in idx[0].tolist() if j == 0 or 10 <= j < 20]
    assert group == sorted(group)  # the duplicated codes come out in index order


def test_topk_search_all_equal_codes_gives_index_order():
    db = np.ones((50, 12), dtype=np.int8)
    idx, d = topk_search(db[:2], db, 50, block=1)
    assert (idx == np.arange(50)).all() and (d == 0).all()


@pytest.mark.parametrize("bits", [3, 12, 24])
@pytest.mark.parametrize("radius", [0, 1, 2, 5, 30])
def test_radius_search_matches_a_loop(bits, radius):
    rng = np.random.default_rng(bits + radius)
    q, db = random_pm1(rng, 5, bits), random_pm1(rng, 40, bits)
    db[5:9] = q[1]
    dist = brute_distances(q, db)
    results = radius_search(q, db, radius, block=2)
    assert len(results) == 5
    for i, (idx, d) in enumerate(results):
        expected = [j for j in brute_stable_order(dist[i]) if dist[i][j] <= radius]
        assert idx.tolist() == expected
        assert d.tolist() == [dist[i][j] for j in expected]


def test_search_argument_errors():
    db = np.ones((4, 12))
    with pytest.raises(ValueError, match="k must be"):
        topk_search(db, db, 0)
    with pytest.raises(ValueError, match="radius"):
        radius_search(db, db, -1)
