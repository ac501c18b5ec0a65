"""Validated evaluation inputs: codes packed, labels packed to bit masks, relevance by one AND.

Relevance (PROTOCOL.md): a database item is relevant to a query when they share at least one
label. Labels are multi-hot {0, 1} matrices (n x classes) or 1-D class indices (single-label
data; relevant = same class). Each row becomes ``ceil(classes / 64)`` uint64 words, so "shares
a label" is ``(query_mask & db_mask) != 0`` on each word.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmhash.codes import CodesLike, PackedCodes, as_packed

__all__ = ["Retrieval", "prepare", "label_masks", "relevance_matrix"]


def _labels_matrix(labels, *, name: str, classes: np.ndarray | None = None) -> np.ndarray:
    """Multi-hot bool matrix from a 2-D {0,1} matrix or 1-D class indices (one-hot over ``classes``)."""
    arr = np.asarray(labels)
    if arr.dtype == object or not (arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.number)):
        raise ValueError(f"{name}: expected a numeric label array, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    if arr.ndim == 1:
        if classes is None:
            raise ValueError(f"{name}: 1-D class indices need the list of classes")
        if np.issubdtype(arr.dtype, np.floating) and (arr != np.round(arr)).any():
            raise ValueError(f"{name}: 1-D labels must be integer class indices, found non-integers")
        return arr[:, None] == classes[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected multi-hot labels (n x classes) or 1-D class indices, "
                         f"got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    one = arr == 1
    if not (one | (arr == 0)).all():
        raise ValueError(f"{name}: multi-hot labels must be 0 or 1, found values "
                         f"{np.unique(arr[~(one | (arr == 0))])[:8]}")
    return one


def label_masks(labels: np.ndarray) -> np.ndarray:
    """Bool multi-hot labels (n x c) to uint64 bit masks (n x ceil(c/64)); class j is bit j%64 of word j//64."""
    bits = np.asarray(labels, dtype=bool)
    nwords = max(1, (bits.shape[1] + 63) // 64)
    packed = np.zeros((bits.shape[0], nwords * 8), dtype=np.uint8)
    if bits.shape[1]:
        raw = np.packbits(bits, axis=1, bitorder="little")
        packed[:, : raw.shape[1]] = raw
    return packed.view("<u8").astype(np.uint64)


@dataclass(frozen=True, eq=False)
class Retrieval:
    """One evaluation problem: query and database codes (packed) and label masks (uint64 words)."""

    query: PackedCodes
    database: PackedCodes
    query_masks: np.ndarray
    db_masks: np.ndarray

    @property
    def nbits(self) -> int:
        return self.query.nbits

    @property
    def n_query(self) -> int:
        return len(self.query)

    @property
    def n_db(self) -> int:
        return len(self.database)

    def relevance(self, queries: slice | np.ndarray = slice(None)) -> np.ndarray:
        """Relevance of every database item to the selected queries: bool (n_selected x n_db)."""
        return relevance_matrix(self.query_masks[queries], self.db_masks)


def relevance_matrix(query_masks: np.ndarray, db_masks: np.ndarray) -> np.ndarray:
    """``rel[i, j]`` = query i and item j share a label (any common bit in their masks)."""
    rel = (query_masks[:, None, 0] & db_masks[None, :, 0]) != 0
    for w in range(1, query_masks.shape[1]):
        rel |= (query_masks[:, None, w] & db_masks[None, :, w]) != 0
    return rel


def prepare(query_codes: CodesLike, db_codes: CodesLike, query_labels, db_labels) -> Retrieval:
    """Validate and pack one query/database problem; every metric starts here.

    Codes: :class:`~cmhash.codes.PackedCodes` or {-1,+1} / {0,1} arrays (n x bits). Labels: multi-hot
    {0,1} (n x classes) or 1-D class indices, the same kind for queries and database.
    """
    q = as_packed(query_codes, name="query_codes")
    db = as_packed(db_codes, name="db_codes")
    if q.nbits != db.nbits:
        raise ValueError(f"query_codes have {q.nbits} bits but db_codes have {db.nbits} bits")
    if len(q) == 0:
        raise ValueError("query_codes: no queries to evaluate")
    if len(db) == 0:
        raise ValueError("db_codes: the database is empty")
    ql, dl = np.asarray(query_labels), np.asarray(db_labels)
    if ql.ndim != dl.ndim:
        raise ValueError(f"query_labels is {ql.ndim}-D but db_labels is {dl.ndim}-D; give both as "
                         "multi-hot matrices or both as 1-D class indices")
    classes = np.unique(np.concatenate([ql, dl])) if ql.ndim == 1 else None
    qm = _labels_matrix(ql, name="query_labels", classes=classes)
    dm = _labels_matrix(dl, name="db_labels", classes=classes)
    if qm.shape[0] != len(q):
        raise ValueError(f"query_labels has {qm.shape[0]} rows but there are {len(q)} query codes")
    if dm.shape[0] != len(db):
        raise ValueError(f"db_labels has {dm.shape[0]} rows but there are {len(db)} database codes")
    if qm.shape[1] != dm.shape[1]:
        raise ValueError(f"query_labels has {qm.shape[1]} classes but db_labels has {dm.shape[1]}")
    return Retrieval(q, db, label_masks(qm), label_masks(dm))
