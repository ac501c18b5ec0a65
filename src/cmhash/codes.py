"""Binary codes: sign convention, bit packing and exact Hamming search.

Conventions (PROTOCOL.md): codes are {-1, +1}^L with sign(0) := +1; bit j of a code is 1 where
the code is +1. Packed codes store 8 bits per byte (``np.packbits``, big-endian bit order), the
last byte zero-padded, so any bit length (12, 24, ...) works and the padding never changes a
distance. Ranking ties are broken by database index ascending, everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np

__all__ = [
    "PackedCodes",
    "sign",
    "pack",
    "as_packed",
    "unpack",
    "hamming_distances",
    "iter_hamming_blocks",
    "topk_search",
    "radius_search",
]


def sign(x: np.ndarray) -> np.ndarray:
    """Elementwise sign with sign(0) = +1, as int8 in {-1, +1}."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise ValueError("sign: input contains NaN or inf")
    return np.where(x >= 0, 1, -1).astype(np.int8)


@dataclass(frozen=True, eq=False)
class PackedCodes:
    """``n`` binary codes of ``nbits`` bits, packed 8 per byte: ``data`` is (n, ceil(nbits/8)) uint8."""

    data: np.ndarray
    nbits: int

    def __post_init__(self) -> None:
        data = np.ascontiguousarray(self.data)
        if data.dtype != np.uint8 or data.ndim != 2:
            raise ValueError(f"PackedCodes.data must be a 2-D uint8 array, got {data.dtype} {data.shape}")
        if self.nbits < 1 or data.shape[1] != (self.nbits + 7) // 8:
            raise ValueError(
                f"PackedCodes: {self.nbits} bits need {(self.nbits + 7) // 8} bytes per code, "
                f"data has {data.shape[1]}"
            )
        pad = data.shape[1] * 8 - self.nbits
        if pad and data.size and (data[:, -1] & np.uint8((1 << pad) - 1)).any():
            raise ValueError("PackedCodes: padding bits of the last byte must be zero")
        object.__setattr__(self, "data", data)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def nbytes_per_code(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, idx) -> "PackedCodes":
        rows = self.data[idx]
        return PackedCodes(rows.reshape(-1, self.data.shape[1]), self.nbits)

    def unpack(self) -> np.ndarray:
        return unpack(self)

    def __repr__(self) -> str:
        return f"PackedCodes(n={len(self)}, nbits={self.nbits})"


CodesLike = Union[PackedCodes, np.ndarray]


def _to_bits(codes: np.ndarray, *, name: str = "codes") -> np.ndarray:
    """{-1,+1} or {0,1} codes (n x L) to a boolean bit matrix (True where +1 / 1)."""
    arr = np.asarray(codes)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array (items x bits), got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected a numeric or boolean array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    one = arr == 1
    if (one | (arr == -1)).all() or (one | (arr == 0)).all():
        return one
    values = np.unique(arr)
    raise ValueError(
        f"{name}: expected binary codes with values in {{-1, +1}} or {{0, 1}}, found {values[:8]}"
        " (use cmhash.codes.sign to binarise real-valued outputs)"
    )


def pack(codes: np.ndarray, *, name: str = "codes") -> PackedCodes:
    """Pack {-1,+1} or {0,1} codes (n x L) into :class:`PackedCodes`."""
    bits = _to_bits(codes, name=name)
    return PackedCodes(np.packbits(bits, axis=1), bits.shape[1])


def as_packed(codes: CodesLike, *, name: str = "codes") -> PackedCodes:
    """Accept packed codes or a {-1,+1}/{0,1} array and return :class:`PackedCodes`."""
    if isinstance(codes, PackedCodes):
        return codes
    return pack(codes, name=name)


def unpack(codes: PackedCodes) -> np.ndarray:
    """Packed codes back to an int8 {-1, +1} matrix (n x nbits)."""
    bits = np.unpackbits(codes.data, axis=1, count=codes.nbits)
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


def _words(codes: PackedCodes) -> np.ndarray:
    """Codes as uint64 words (n x ceil(bytes/8)), zero-padded: XOR + popcount per word."""
    nbytes = codes.data.shape[1]
    nwords = (nbytes + 7) // 8
    if nbytes == nwords * 8:
        return codes.data.view(np.uint64)
    padded = np.zeros((len(codes), nwords * 8), dtype=np.uint8)
    padded[:, :nbytes] = codes.data
    return padded.view(np.uint64)


def _check_pair(query: CodesLike, database: CodesLike) -> tuple[PackedCodes, PackedCodes]:
    q = as_packed(query, name="query codes")
    db = as_packed(database, name="database codes")
    if q.nbits != db.nbits:
        raise ValueError(f"query codes have {q.nbits} bits but database codes have {db.nbits} bits")
    return q, db


def iter_hamming_blocks(
    query: CodesLike, database: CodesLike, *, block: int = 256
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (query slice, distances block) with distances (block x n_db) as uint16."""
    q, db = _check_pair(query, database)
    qw, dw = _words(q), _words(db)
    for start in range(0, len(q), block):
        sl = slice(start, min(start + block, len(q)))
        qb = qw[sl]
        dist = np.zeros((qb.shape[0], dw.shape[0]), dtype=np.uint16)
        for w in range(qw.shape[1]):
            dist += np.bitwise_count(qb[:, w, None] ^ dw[None, :, w]).astype(np.uint16)
        yield sl, dist


def hamming_distances(query: CodesLike, database: CodesLike) -> np.ndarray:
    """All pairwise Hamming distances (n_query x n_db), uint16."""
    q, db = _check_pair(query, database)
    out = np.empty((len(q), len(db)), dtype=np.uint16)
    for sl, dist in iter_hamming_blocks(q, db):
        out[sl] = dist
    return out


def topk_search(
    query: CodesLike, database: CodesLike, k: int, *, block: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` neighbours of each query: (indices, distances), each (n_query x k).

    Sorted by distance, ties by database index ascending (the order a stable sort gives).
    """
    q, db = _check_pair(query, database)
    if not 1 <= k:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), len(db))
    n_db = len(db)
    idx_out = np.empty((len(q), k), dtype=np.int64)
    dist_out = np.empty((len(q), k), dtype=np.uint16)
    ar = np.arange(n_db, dtype=np.int64)
    for sl, dist in iter_hamming_blocks(q, db, block=block):
        # A unique key per (distance, index) makes argpartition + sort exact and stable.
        key = dist.astype(np.int64) * n_db + ar
        if k < n_db:
            part = np.argpartition(key, k - 1, axis=1)[:, :k]
            key = np.take_along_axis(key, part, axis=1)
        key.sort(axis=1)
        key = key[:, :k]
        idx_out[sl] = key % n_db
        dist_out[sl] = key // n_db
    return idx_out, dist_out


def radius_search(
    query: CodesLike, database: CodesLike, radius: int, *, block: int = 256
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each query, the database items within Hamming distance ``radius`` (inclusive).

    Returns one (indices, distances) pair per query, sorted by distance then index.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for _, dist in iter_hamming_blocks(query, database, block=block):
        for row in dist:
            hit = np.flatnonzero(row <= radius)
            order = np.argsort(row[hit], kind="stable")
            results.append((hit[order], row[hit][order]))
    return results
