"""HammingIndex: exact search over packed binary codes, with external ids, saved safely.

Results follow PROTOCOL.md: distance ascending, ties by insertion order (the position at which an
item was added), whatever the backend or thread count. The file format (one ``.npz``-compatible
zip, no pickles; version 2, reads version 1) is described in docs/index.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cmhash.codes import CodesLike, PackedCodes, as_packed
from cmhash.index import _store, kernels
from cmhash.index.base import Payload, as_id_array, check_codes, check_payloads
from cmhash.io import META_KEY, load_arrays

FORMAT = "cmhash-hamming-index"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)
BACKENDS = ("auto", "numpy", "numba")
MAX_BITS = 65_535


def codes_checksum(data: np.ndarray, ids: np.ndarray | None) -> str:
    """The checksum of format version 1: sha256 of the packed code bytes (and of the ids, when
    the index has its own). Version 2 keeps a CRC-32 per stored array instead (index/_store.py)."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(data).tobytes())
    if ids is not None:
        h.update(str(ids.dtype).encode())
        h.update(np.ascontiguousarray(ids).tobytes())
    return h.hexdigest()


class HammingIndex:
    """An exact Hamming index of ``nbits``-bit codes.

    ``add(codes, ids=None)`` appends codes (:class:`PackedCodes` or a {-1,+1}/{0,1} matrix).
    Ids are optional: an index either gives every item an id (integers or strings, unique) or
    none, in which case an item's id is its insertion position. ``search`` and ``range_search``
    return ids and distances ranked by distance, then insertion order. ``backend`` picks the
    kernel of both searches: ``"numpy"``, ``"numba"`` (the ``fast`` extra) or ``"auto"`` (numba
    when installed); both give identical results. ``threads`` (attribute; None: every core) bounds
    the numba kernels' threads. ``info`` is a
    JSON-ready dict saved with the index (e.g. which modality and dataset the codes came from).
    """

    def __init__(self, nbits: int, *, backend: str = "auto", info: dict[str, Any] | None = None):
        if isinstance(nbits, bool) or int(nbits) != nbits or nbits < 1:
            raise ValueError(f"nbits must be a positive integer, got {nbits!r}")
        if nbits > MAX_BITS:
            raise ValueError(f"nbits must be at most {MAX_BITS} (distances are uint16), got {nbits}")
        self._nbits = int(nbits)
        self.backend = backend
        self.info: dict[str, Any] = dict(info or {})
        self._nbytes = (self._nbits + 7) // 8
        # Codes as scan words (kernels.to_words), grown by doubling; rows past _n are spare capacity.
        self._words = kernels.to_words(np.empty((0, self._nbytes), dtype=np.uint8))
        self._n = 0
        self._ids: np.ndarray | None = None  # None: ids are insertion positions
        self._wide: np.ndarray | None = None  # uint64 copy of narrow words for the numba kernel
        self._head: np.ndarray | None = None  # codes over 64 bits: every first word, for the scans
        self._payloads: list[Payload | None] | None = None  # per position; None: no item has one
        self._id_order: tuple[np.ndarray, np.ndarray] | None = None  # (ids array, its argsort)
        self.threads: int | None = None  # threads of the numba kernels (None: every core)
        self.first_word_scan: bool = True  # codes over 64 bits: keep a first-word copy to scan

    # ------------------------------------------------------------------ basics
    @property
    def nbits(self) -> int:
        return self._nbits

    def __len__(self) -> int:
        return self._n

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        if value == "numba" and not kernels.HAVE_NUMBA:
            raise ValueError("backend='numba' needs numba: pip install 'cmhash[fast]'")
        self._backend = value

    @property
    def kernel(self) -> str:
        """The kernel searches run on: 'numba' or 'numpy'."""
        if self._backend == "auto":
            return "numba" if kernels.HAVE_NUMBA else "numpy"
        return self._backend

    @property
    def codes(self) -> PackedCodes:
        """The indexed codes in insertion order (a view where the word layout allows, else a copy)."""
        return PackedCodes(self._packed(), self._nbits)

    def _packed(self) -> np.ndarray:
        """The packed code bytes (n x ceil(nbits/8)) of the items, from the scan words."""
        return self._words[: self._n].view(np.uint8)[:, : self._nbytes]

    @property
    def ids(self) -> np.ndarray:
        """The id of every item in insertion order (read-only)."""
        ids = np.arange(self._n, dtype=np.int64) if self._ids is None else self._ids.view()
        ids.flags.writeable = False
        return ids

    def __repr__(self) -> str:
        return f"HammingIndex(n={self._n}, nbits={self._nbits}, kernel={self.kernel!r})"

    @classmethod
    def from_codes(cls, codes: CodesLike, ids: Any = None, **kwargs: Any) -> "HammingIndex":
        packed = as_packed(codes, name="codes")
        index = cls(packed.nbits, **kwargs)
        index.add(packed, ids)
        return index

    # ----------------------------------------------------------------- adding
    def add(self, codes: CodesLike, ids: Any = None, payloads: Sequence[Payload | None] | None = None) -> None:
        """Append ``codes`` (n x nbits), with ``ids`` (n,) or without (ids = positions), and
        optional ``payloads`` (n JSON-ready dicts or None)."""
        packed = self._check_codes(codes, "codes")
        new_ids = self._check_ids(ids, len(packed))
        new_payloads = check_payloads(payloads, len(packed))
        m = len(packed)
        if m == 0:
            return
        if self._n + m > self._words.shape[0]:  # grow by doubling: amortised O(1) per item
            cap = max(self._n + m, 2 * self._words.shape[0], 1024)
            words = np.zeros((cap, self._words.shape[1]), dtype=self._words.dtype)
            words[: self._n] = self._words[: self._n]
            self._words = words
        self._words[self._n : self._n + m] = kernels.to_words(packed.data)
        self._head = None
        if new_ids is not None:
            self._ids = new_ids if self._ids is None else np.concatenate([self._ids, new_ids])
        self._append_payloads(new_payloads, m)
        self._n += m

    def _check_codes(self, codes: CodesLike, name: str) -> PackedCodes:
        return check_codes(codes, self._nbits, name)

    def _check_ids(self, ids: Any, m: int) -> np.ndarray | None:
        if ids is None:
            if self._ids is not None and m:
                raise ValueError("this index gives every item an id; pass ids= for the new codes too")
            return None
        if self._n and self._ids is None:
            raise ValueError(
                "this index has no ids (items are known by insertion position); "
                "add codes without ids, or give ids from the first add"
            )
        arr = np.asarray(ids)
        if arr.shape != (m,):
            raise ValueError(f"ids must have shape ({m},) to match the codes, got {arr.shape}")
        if arr.dtype.kind in "iu":
            if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
                raise ValueError("ids: unsigned ids above 2**63 - 1 are not supported")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind != "U":
            raise ValueError(f"ids must be integers or strings, got dtype {arr.dtype}")
        if self._ids is not None and self._ids.dtype.kind != arr.dtype.kind and m:
            raise ValueError(
                f"ids: the index has {'string' if self._ids.dtype.kind == 'U' else 'integer'} ids, "
                f"got {'string' if arr.dtype.kind == 'U' else 'integer'} ids"
            )
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
        if self._ids is not None:
            clash = np.isin(arr, self._ids)
            if clash.any():
                raise ValueError(f"ids already in the index: {arr[clash][:5].tolist()}")
        return arr

    # ---------------------------------------------------------------- search
    def _query_words(self, query_codes: CodesLike) -> np.ndarray:
        return kernels.to_words(self._check_codes(query_codes, "query codes").data)

    def search(self, query_codes: CodesLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query: (ids, distances), each (n_query x min(k, len)).

        Sorted by distance, ties by insertion order.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        qw = self._query_words(query_codes)
        k = min(int(k), self._n)
        if k == 0 or qw.shape[0] == 0:
            pos = np.empty((qw.shape[0], k), dtype=np.int64)
            dist = np.empty((qw.shape[0], k), dtype=np.uint16)
        elif self.kernel == "numba":
            words = self._numba_words()
            pos, dist = kernels.topk_numba(qw, words, k, self._nbits, threads=self.threads, head=self._first_words(words))
        else:
            pos, dist = kernels.topk_numpy(qw, self._words[: self._n], k, self._nbits)
        return self._to_ids(pos), dist

    def range_search(self, query_codes: CodesLike, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (ids, distances) of every item within Hamming distance ``radius`` (inclusive),
        sorted by distance, then insertion order."""
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        qw = self._query_words(query_codes)
        if self._n == 0:
            empty = (np.empty(0, dtype=self.ids.dtype), np.empty(0, dtype=np.uint16))
            return [empty for _ in range(qw.shape[0])]
        if self.kernel == "numba":
            words = self._numba_words()
            hits = kernels.radius_numba(qw, words, int(radius), self._nbits, threads=self.threads,
                                        head=self._first_words(words))
        else:
            hits = kernels.radius_numpy(qw, self._words[: self._n], int(radius), self._nbits)
        return [(self._to_ids(pos), dist) for pos, dist in hits]

    def _numba_words(self) -> np.ndarray:
        """The scan words as uint64 (the numba kernel's one word type), widened once and kept
        until the next add when the codes fit in narrower words."""
        words = self._words[: self._n]
        if words.dtype == np.uint64:
            return words
        if self._wide is None or len(self._wide) != self._n:
            self._wide = words.astype(np.uint64)
        return self._wide

    def _first_words(self, words: np.ndarray) -> np.ndarray | None:
        """Codes over 64 bits: the first word of every code, contiguous (8 bytes per code), which
        the numba searches stream instead of whole codes where it suffices; built on first use
        and kept until the codes change. None for codes of one word, or when
        ``first_word_scan`` is off (the memory matters more than the speed)."""
        if words.shape[1] < 2 or not self.first_word_scan:
            self._head = None
            return None
        if self._head is None or len(self._head) != self._n:
            self._head = kernels.first_words(words)
        return self._head

    def _to_ids(self, positions: np.ndarray) -> np.ndarray:
        return positions if self._ids is None else self._ids[positions]

    # ----------------------------------------------------------- persistence
    def _arrays_to_save(self) -> dict[str, np.ndarray]:
        """Every array the file holds (each stored as a member with its own checksum)."""
        arrays = {"codes": np.ascontiguousarray(self._packed())}
        if self._ids is not None:
            arrays["ids"] = self._ids
        return arrays

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (format version 2: one .npz-compatible zip, atomically, no
        pickles, a CRC-32 per array computed once while writing; docs/index.md)."""
        try:
            json.dumps(self.info)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"index info must be JSON-ready (str, numbers, lists, dicts): {exc}") from exc
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "nbits": self._nbits,
            "n": self._n,
            "has_ids": self._ids is not None,
            "info": self.info,
        }
        if self._payloads is not None:
            meta["payloads"] = self._payloads  # JSON in the metadata member (its zip CRC is checked on load)
        _store.write(path, self._arrays_to_save(), meta)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, backend: str = "auto", mmap: bool = False, verify: bool = True) -> "HammingIndex":
        """Read an index written by :meth:`save` (format version 2, or version 1); a corrupt,
        truncated or foreign file raises ValueError naming the file.

        ``mmap=True`` maps the codes from the file instead of reading them (read-only; codes of
        1, 2, 4 or a multiple of 8 bytes are scanned in place, other lengths are copied once).
        ``verify=False`` skips the checksum pass (one CRC-32 over every stored byte).
        """
        meta = _store.read_meta(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a cmhash Hamming index (format={meta.get('format')!r})")
        version = meta.get("format_version")
        if version not in READS_VERSIONS:
            raise ValueError(
                f"{path}: index format version {version!r} is not supported "
                f"(this cmhash reads versions {', '.join(map(str, READS_VERSIONS))})"
            )
        try:
            nbits, n, has_ids = int(meta["nbits"]), int(meta["n"]), bool(meta["has_ids"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: the index metadata is incomplete: {exc!r}") from exc
        if version == 1:
            arrays = _load_version_1(path, meta, mmap=mmap, verify=verify)
        else:
            arrays = _store.read_arrays(path, meta, mmap=("codes",) if mmap else (), verify=verify)
        data = arrays.get("codes")
        if data is None or data.dtype != np.uint8 or data.shape != (n, (nbits + 7) // 8):
            got = None if data is None else f"{data.dtype} {data.shape}"
            raise ValueError(f"{path}: 'codes' should be uint8 ({n}, {(nbits + 7) // 8}), got {got}")
        ids = arrays.get("ids") if has_ids else None
        if has_ids and (ids is None or ids.shape != (n,) or ids.dtype.kind not in "iU"):
            got = None if ids is None else f"{ids.dtype} {ids.shape}"
            raise ValueError(f"{path}: 'ids' should be int64 or unicode ({n},), got {got}")
        index = cls(nbits, backend=backend, info=meta.get("info") or {})
        try:
            packed = PackedCodes(data, nbits)  # checks the padding bits
            if has_ids and not verify:  # a verified file holds the ids add() checked: not again
                index._check_ids(ids, n)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        # The loaded (or mapped) bytes become the scan words without a copy; capacity = n, so the
        # next add moves them into a fresh, growable array.
        index._ids = None if ids is None else (ids.astype(np.int64, copy=False) if ids.dtype.kind == "i" else ids)
        index._words = kernels.to_words(packed.data)
        index._n = n
        index._payloads = _loaded_payloads(meta.get("payloads"), n, path)
        return index

    # ------------------------------------------- ids, payloads, remove, upsert
    # Items are looked up by id through a cached argsort of the ids (rebuilt after any change).
    # Removal compacts stably, so the items left keep their relative insertion order (and ties
    # keep ranking by it). An index without ids knows items by position, which a removal would
    # shift: remove and upsert need an index with ids.

    def _append_payloads(self, new: list[Payload | None] | None, m: int) -> None:
        if new is None and self._payloads is None:
            return
        if self._payloads is None:
            self._payloads = [None] * self._n
        self._payloads.extend(new if new is not None else [None] * m)

    def _positions(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """The asked ids as a 1-D array and the position of each (-1 where absent)."""
        asked = as_id_array(ids)
        pos = np.full(asked.shape[0], -1, dtype=np.int64)
        if self._n == 0 or asked.size == 0:
            return asked, pos
        kind = "integer" if self._ids is None or self._ids.dtype.kind == "i" else "string"
        if (asked.dtype.kind == "U") != (kind == "string"):
            raise ValueError(f"ids: the index has {kind} ids, got {'string' if asked.dtype.kind == 'U' else 'integer'} ids")
        if self._ids is None:
            ok = (asked >= 0) & (asked < self._n)
            pos[ok] = asked[ok]
            return asked, pos
        if self._id_order is None or self._id_order[0] is not self._ids:
            self._id_order = (self._ids, np.argsort(self._ids, kind="stable"))
        order = self._id_order[1]
        sorted_ids = self._ids[order]
        j = np.minimum(np.searchsorted(sorted_ids, asked), self._n - 1)
        hit = sorted_ids[j] == asked
        pos[hit] = order[j[hit]]
        return asked, pos

    def get(self, ids: Any) -> list[dict[str, Any] | None]:
        """Per id: ``{"id": id, "code": packed uint8 row, "payload": dict | None}``, None if absent."""
        asked, pos = self._positions(ids)
        packed = self._packed()
        out: list[dict[str, Any] | None] = []
        for i, p in zip(asked.tolist(), pos.tolist()):
            if p < 0:
                out.append(None)
                continue
            payload = None if self._payloads is None else self._payloads[p]
            out.append({"id": i, "code": packed[p].copy(), "payload": copy.deepcopy(payload)})
        return out

    def payloads(self, ids: Any) -> list[Payload | None]:
        """Per id, its payload (None when it has none or is absent), e.g. for the ids of a hit row."""
        _, pos = self._positions(ids)
        if self._payloads is None:
            return [None] * len(pos)
        return [None if p < 0 else copy.deepcopy(self._payloads[p]) for p in pos.tolist()]

    def remove(self, ids: Any) -> int:
        """Remove the items with these ids (unknown ids are ignored); returns how many were removed.

        The items left keep their relative insertion order."""
        if self._n and self._ids is None:
            raise ValueError(
                "remove needs an index with ids: this one knows items by insertion position, "
                "which removing would shift; build it with ids= to remove items"
            )
        _, pos = self._positions(ids)
        drop = np.unique(pos[pos >= 0])
        if drop.size == 0:
            return 0
        keep = np.ones(self._n, dtype=bool)
        keep[drop] = False
        self._words = self._words[: self._n][keep]  # a stable, compacting copy (also of mapped codes)
        assert self._ids is not None
        self._ids = self._ids[keep]
        if self._payloads is not None:
            self._payloads = [p for p, k in zip(self._payloads, keep.tolist()) if k]
        self._n = int(keep.sum())
        self._wide = None
        self._head = None
        return int(drop.size)

    def upsert(self, codes: CodesLike, ids: Any, payloads: Sequence[Payload | None] | None = None) -> None:
        """Replace the items whose ids are present (they move to the end of the insertion order)
        and append the others. Everything is checked before the index changes."""
        if ids is None:
            raise ValueError("upsert needs ids (one per code)")
        if self._n and self._ids is None:
            raise ValueError("upsert needs an index with ids: this one knows items by insertion position")
        packed = self._check_codes(codes, "codes")
        asked = as_id_array(ids)
        if asked.shape != (len(packed),):
            raise ValueError(f"ids must have shape ({len(packed)},) to match the codes, got {asked.shape}")
        uniq, counts = np.unique(asked, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
        new_payloads = check_payloads(payloads, len(packed))
        self._positions(asked)  # raises on an id type the index does not hold, before any change
        self.remove(asked)
        self.add(packed, asked, new_payloads)

    def close(self) -> None:
        """Nothing to release (the :class:`~cmhash.index.base.Index` protocol's close)."""


def _load_version_1(path: str | Path, meta: dict[str, Any], *, mmap: bool, verify: bool) -> dict[str, np.ndarray]:
    """The arrays of a version-1 file (np.savez; sha256 of the codes, then the ids, in the meta)."""
    arrays, _ = _read_mapped(path) if mmap else load_arrays(path)
    data, ids = arrays.get("codes"), arrays.get("ids") if meta.get("has_ids") else None
    if verify and data is not None and str(meta.get("checksum")) != "sha256:" + codes_checksum(data, ids):
        raise ValueError(f"{path}: checksum mismatch: the codes or ids are corrupt")
    return arrays


def _read_mapped(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Like :func:`cmhash.io.load_arrays`, but with ``codes`` memory-mapped from the file (format
    version 1; version 2 files are mapped by ``_store.read_arrays``).

    ``np.savez`` stores members uncompressed, so the codes' .npy payload is a plain byte range.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        arrays: dict[str, np.ndarray] = {}
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            with zf.open(META_KEY + ".npy") as fh:
                meta = json.loads(np.lib.format.read_array(fh, allow_pickle=False).tobytes().decode())
            if "ids.npy" in names:
                with zf.open("ids.npy") as fh:
                    arrays["ids"] = np.lib.format.read_array(fh, allow_pickle=False)
            member = zf.getinfo("codes.npy")
        with open(path, "rb") as fh:
            _, shape, dtype, offset = _store.locate(fh, member)
        if dtype != np.uint8 or len(shape) != 2:
            raise ValueError(f"the codes are not a C-ordered 2-D uint8 array ({dtype}, {shape})")
        if offset + shape[0] * shape[1] > path.stat().st_size:
            raise ValueError("the file ends before the codes do")
        arrays["codes"] = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=tuple(shape))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable cmhash index (corrupt or truncated?): {exc}") from exc
    return arrays, meta


def _loaded_payloads(payloads: Any, n: int, path: str | Path) -> list[Payload | None] | None:
    """The payloads saved in an index file's metadata (absent: None), checked."""
    if payloads is None:
        return None
    if not isinstance(payloads, list) or len(payloads) != n:
        raise ValueError(f"{path}: 'payloads' should be a list of {n} dicts or nulls")
    if any(p is not None and not isinstance(p, dict) for p in payloads):
        raise ValueError(f"{path}: 'payloads' should hold only dicts or nulls")
    return payloads
