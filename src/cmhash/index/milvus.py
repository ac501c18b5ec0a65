"""MilvusIndex: the :class:`~cmhash.index.base.Index` interface over a Milvus collection.

One client talks to a laptop file (Milvus Lite: ``uri="codes.db"``) and to a server or cluster
(``uri="http://host:19530"``, ``token="user:password"``). Install with ``pip install
'cmhash[milvus]'`` (pymilvus and milvus-lite 2.5.x: milvus-lite 3.x rejects binary vectors).

The collection: ``id`` (INT64 or VARCHAR primary key), ``code`` (BINARY_VECTOR of ``nbits``
bits) and, unless ``payloads=False``, ``payload`` (JSON) with ``has_payload`` (BOOL: Milvus Lite
has no nullable fields, so "no payload" cannot be a JSON null). Index: BIN_FLAT + HAMMING (exact)
by default; ``index_type="BIN_IVF_FLAT"`` with ``nlist``/``nprobe`` on a server (clustered,
approximate; Milvus Lite refuses it). Reads are "Strong" consistency: a search sees every write
made before it.

What Milvus promises, and how it differs from :class:`~cmhash.index.HammingIndex`:

- Distances are exact Hamming distances (BIN_FLAT) and results come distance ascending. The order
  of ids within one distance is Milvus's own (not insertion order), so at the k-th distance
  Milvus may keep a different, equally valid subset of the tied items. Upsert replaces in place:
  there is no insertion order to move to the end of.
- ``range_search(q, r)`` is exact: Milvus's HAMMING range search keeps ``range_filter <= d <
  radius``, so ``d <= r`` is sent as ``radius = r + 1`` (distances are integers; tested at the
  boundary). One Milvus search returns at most ``MAX_TOPK`` (16,384) hits; a query that fills it
  is searched again one distance at a time, and a single distance holding more hits than that is
  an error (Milvus cannot page through them).
- ``k`` above ``MAX_TOPK`` is an error when the collection holds more than ``MAX_TOPK`` items.
- Every item needs an id (``add(codes)`` without ids is an error).
- Milvus Lite does not check code lengths or id lengths and cannot delete string ids containing
  a single quote (its SQL breaks): this class checks the first two and refuses such ids on Lite.

Failures inside Milvus raise :class:`MilvusError` naming the operation, the collection and the
server (never the token).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

from cmhash.codes import CodesLike, PackedCodes
from cmhash.index.base import Payload, as_id_array, check_codes, check_payloads

INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
ID_TYPES = ("int", "str")
MAX_TOPK = 16_384  # Milvus's cap on k (and on the hits of one range search), per query
MAX_STR_ID = 512  # bytes of a VARCHAR id

_lite_lock = threading.Lock()
_lite_users: dict[str, int] = {}  # Milvus Lite file -> open MilvusIndex objects using its server


class MilvusError(RuntimeError):
    """A Milvus operation failed (server error, connection lost, time-out)."""


def _pymilvus():
    try:
        import pymilvus
    except ImportError as exc:  # pragma: no cover - the extra is installed in CI
        raise ImportError("MilvusIndex needs pymilvus: pip install 'cmhash[milvus]'") from exc
    return pymilvus


def is_lite_uri(uri: str) -> bool:
    """A local file (Milvus Lite) rather than a server address."""
    return urlparse(str(uri)).scheme.lower() not in ("http", "https", "tcp", "grpc", "unix")


def _literal(value: Any) -> str:
    """An id as a Milvus expression literal (strings quoted and escaped)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(int(value))


class MilvusIndex:
    """A Hamming index stored in the Milvus collection ``collection`` at ``uri``.

    Opens the collection if it exists (its code length and id type are read from it; ``nbits``
    and ``id_type``, when given, must match) or creates it: at once when ``id_type`` is given,
    else at the first ``add``/``upsert`` from the kind of ids passed. ``insert_batch`` rows go to
    Milvus per insert call, ``search_batch`` queries per search call; ``timeout`` (seconds)
    bounds every call. ``info`` (a JSON-ready dict, e.g. the modality and dataset of the codes) is
    kept in the collection's description with the code length and read back when it is opened.

    ``code_field`` / ``present_field`` make the index a read-only *view* of one vector field of a
    collection written by someone else (the service's item store keeps an image and a text code
    per item): searches, counts and lookups see only rows whose BOOL ``present_field`` is true,
    and writes raise. A collection that does not exist yet is looked for again at each call.
    """

    def __init__(
        self,
        uri: str | Path,
        collection: str,
        nbits: int | None = None,
        *,
        token: str | None = None,
        id_type: str | None = None,
        payloads: bool = True,
        index_type: str = "BIN_FLAT",
        nlist: int = 1024,
        nprobe: int = 16,
        insert_batch: int = 10_000,
        search_batch: int = 1_000,
        timeout: float = 60.0,
        info: dict[str, Any] | None = None,
        code_field: str = "code",
        present_field: str | None = None,
    ):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        if id_type is not None and id_type not in ID_TYPES:
            raise ValueError(f"id_type must be one of {ID_TYPES} (or None: from the first ids), got {id_type!r}")
        if nbits is not None and (isinstance(nbits, bool) or int(nbits) != nbits or nbits < 1):
            raise ValueError(f"nbits must be a positive integer, got {nbits!r}")
        for name, value in (("nlist", nlist), ("nprobe", nprobe), ("insert_batch", insert_batch), ("search_batch", search_batch)):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(collection, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
            raise ValueError(f"collection: Milvus names are letters, digits and underscores, not starting with a digit; got {collection!r}")
        for name, value in (("code_field", code_field), ("present_field", present_field or "x")):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", value):
                raise ValueError(f"{name}: Milvus field names are letters, digits and underscores, got {value!r}")
        self.code_field, self.present_field = code_field, present_field
        self.uri = str(uri)
        self.collection = collection
        self.lite = is_lite_uri(self.uri)
        self.index_type, self.nlist, self.nprobe = index_type, int(nlist), int(nprobe)
        self.insert_batch, self.search_batch, self.timeout = int(insert_batch), int(search_batch), float(timeout)
        self._with_payloads = bool(payloads)
        try:
            json.dumps(info or {})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"info must be JSON-ready (str, numbers, lists, dicts): {exc}") from exc
        self.info: dict[str, Any] = dict(info or {})
        self._nbits = None if nbits is None else int(nbits)
        self._id_type: str | None = None
        self._client = None
        self._orm = None  # pymilvus.Collection on the client's connection, for column-wise writes
        self._lite_path: str | None = None
        if self.lite:
            path = Path(self.uri).expanduser()
            if path.suffix != ".db":
                raise ValueError(f"uri: a Milvus Lite file must end in .db (or give http://host:19530), got {self.uri!r}")
            if not path.parent.is_dir():
                raise ValueError(f"uri: the folder of the Milvus Lite file does not exist: {path.parent}")
            self._lite_path = str(path.resolve())
            self.uri = self._lite_path
        self._connect(token)
        try:
            if self._call("has_collection", self._client.has_collection, self.collection):
                self._open_existing(nbits, id_type)
            elif present_field is None:
                if self._nbits is None:
                    raise ValueError(f"collection {self.collection!r} does not exist at {self._where()}: give nbits to create it")
                if id_type is not None:
                    self._create(id_type)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ connection
    def _where(self) -> str:
        if self.lite:
            return f"Milvus Lite file {self.uri}"
        u = urlparse(self.uri)
        return f"Milvus at {u.scheme}://{u.hostname}{'' if u.port is None else f':{u.port}'}"

    def _connect(self, token: str | None) -> None:
        pymilvus = _pymilvus()
        if self.lite:
            with _lite_lock:
                _lite_users[self._lite_path] = _lite_users.get(self._lite_path, 0) + 1
        kwargs = {"timeout": self.timeout}
        if token:
            kwargs["token"] = token
        try:
            self._client = pymilvus.MilvusClient(self.uri, **kwargs)
        except Exception as exc:
            self.close()
            raise MilvusError(f"cannot connect to {self._where()}: {_reason(exc)}") from exc

    def _call(self, operation: str, fn, *args, **kwargs):
        """Run one client call, turning a Milvus failure into a MilvusError that names it."""
        pymilvus = _pymilvus()
        try:
            return fn(*args, timeout=self.timeout, **kwargs)
        except pymilvus.MilvusException as exc:
            raise MilvusError(f"{operation} on collection {self.collection!r} at {self._where()} failed: {_reason(exc)}") from exc

    def close(self) -> None:
        """Close the connection; the last index on a Milvus Lite file also stops its server."""
        client, self._client, self._orm = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead connection must not hide the caller's error
                pass
        path, self._lite_path = self._lite_path, None
        if path is None:
            return
        with _lite_lock:
            users = _lite_users.get(path, 0) - 1
            if users > 0:
                _lite_users[path] = users
                return
            _lite_users.pop(path, None)
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # pragma: no cover
            return
        server_manager_instance.release_server(path)  # stops the process, removes lock and socket

    def __enter__(self) -> "MilvusIndex":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close still stops a Lite server
        try:
            self.close()
        except Exception:
            pass

    def _live(self):
        if self._client is None:
            raise ValueError(f"this MilvusIndex ({self.collection!r}) is closed")
        return self._client

    # ---------------------------------------------------------------- schema
    def _open_existing(self, nbits: int | None, id_type: str | None) -> None:
        DataType = _pymilvus().DataType
        desc = self._call("describe_collection", self._client.describe_collection, self.collection)
        fields = {f["name"]: f for f in desc["fields"]}
        pk, code = fields.get("id"), fields.get(self.code_field)
        if pk is None or code is None or code["type"] != DataType.BINARY_VECTOR or not pk.get("is_primary"):
            raise ValueError(
                f"collection {self.collection!r} at {self._where()} is not a cmhash code collection "
                f"(needs a primary key 'id' and a BINARY_VECTOR {self.code_field!r}; has {sorted(fields)})"
            )
        if self.present_field is not None and self.present_field not in fields:
            raise ValueError(f"collection {self.collection!r} has no field {self.present_field!r}")
        described = _described(desc.get("description", ""))
        found_bits = int(described.get("nbits") or code["params"]["dim"])
        if described.get("info") and not self.info:
            self.info = dict(described["info"])
        if nbits is not None and int(nbits) != found_bits:
            raise ValueError(f"collection {self.collection!r} holds {found_bits}-bit codes, not {nbits}")
        found_id = "int" if pk["type"] == DataType.INT64 else "str"
        if id_type is not None and id_type != found_id:
            raise ValueError(f"collection {self.collection!r} has {found_id} ids, not {id_type}")
        self._nbits, self._id_type = found_bits, found_id
        self._with_payloads = "payload" in fields and "has_payload" in fields
        idx = self._call("describe_index", self._client.describe_index, self.collection, self.code_field) or {}
        if idx.get("metric_type") not in (None, "HAMMING"):
            raise ValueError(f"collection {self.collection!r} indexes codes with {idx.get('metric_type')}, not HAMMING")
        if idx.get("index_type"):
            self.index_type = idx["index_type"]
        self._call("load_collection", self._client.load_collection, self.collection)

    def _create(self, id_type: str) -> None:
        pymilvus = _pymilvus()
        DataType = pymilvus.DataType
        client = self._live()
        # Milvus binary vectors are whole bytes: an nbits code is stored zero-padded (as packed),
        # which changes no distance; the true length is kept in the collection's description.
        description = json.dumps({"cmhash": {"nbits": self._nbits, "info": self.info}})
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        if id_type == "int":
            schema.add_field("id", DataType.INT64, is_primary=True)
        else:
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=MAX_STR_ID)
        schema.add_field("code", DataType.BINARY_VECTOR, dim=8 * ((self._nbits + 7) // 8))
        if self._with_payloads:
            schema.add_field("payload", DataType.JSON)
            schema.add_field("has_payload", DataType.BOOL)
        params = client.prepare_index_params()
        extra = {"nlist": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {}
        params.add_index(field_name="code", index_type=self.index_type, metric_type="HAMMING", params=extra)
        if self.lite and self.index_type != "BIN_FLAT":
            raise ValueError(f"index_type {self.index_type} needs a Milvus server; Milvus Lite supports only BIN_FLAT")
        self._call(
            "create_collection", client.create_collection, self.collection,
            schema=schema, index_params=params, consistency_level="Strong",
        )
        self._id_type = id_type

    # ---------------------------------------------------------------- basics
    @property
    def nbits(self) -> int:
        assert self._nbits is not None
        return self._nbits

    @property
    def id_type(self) -> str | None:
        """'int' or 'str' (None until the first add creates the collection)."""
        return self._id_type

    def _ready(self) -> bool:
        """Whether the collection exists (it may have been created since, by another client)."""
        if self._id_type is None and self._call("has_collection", self._live().has_collection, self.collection):
            self._open_existing(self._nbits, None)
        return self._id_type is not None

    def _filter(self, expr: str = "") -> str:
        """``expr`` restricted to the items present in this index (a view's ``present_field``)."""
        if self.present_field is None:
            return expr
        present = f"{self.present_field} == true"
        return f"({expr}) and {present}" if expr else present

    def _refuse_view_writes(self) -> None:
        if self.present_field is not None:
            raise ValueError(
                f"this index is a view of the {self.code_field!r} codes of collection {self.collection!r}: "
                "write its items through the item store (cmhash.serve.milvus_store.MilvusItemStore)"
            )

    def __len__(self) -> int:
        return self._count() if self._ready() else 0

    def _count(self, *, every_row: bool = False) -> int:
        """Rows in the collection (``every_row``: also those a view's ``present_field`` hides)."""
        rows = self._call("count", self._live().query, self.collection, filter="" if every_row else self._filter(),
                          output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusIndex({self._where()}, collection={self.collection!r}, nbits={self._nbits}, index_type={self.index_type!r})"

    # ---------------------------------------------------------------- checks
    def _check_codes(self, codes: CodesLike, name: str) -> PackedCodes:
        return check_codes(codes, self.nbits, name)

    def _ids_for_write(self, ids: Any, m: int) -> np.ndarray:
        if ids is None:
            raise ValueError("MilvusIndex needs ids (one per code): Milvus has no insertion positions to use instead")
        arr = as_id_array(ids)
        if arr.shape != (m,):
            raise ValueError(f"ids must have shape ({m},) to match the codes, got {arr.shape}")
        uniq, counts = np.unique(arr, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}")
        self._check_id_kind(arr)
        if arr.dtype.kind == "U" and m:
            long = [s for s in arr.tolist() if len(s.encode()) > MAX_STR_ID]
            if long:
                raise ValueError(f"ids: string ids are at most {MAX_STR_ID} bytes (UTF-8), got {long[0][:40]!r}...")
            if self.lite and any("'" in s for s in arr.tolist()):
                raise ValueError("ids: Milvus Lite cannot delete string ids containing a single quote (') ; use other ids or a server")
        return arr

    def _check_id_kind(self, arr: np.ndarray) -> None:
        kind = "str" if arr.dtype.kind == "U" else "int"
        if self._id_type is not None and arr.size and kind != self._id_type:
            names = {"int": "integer", "str": "string"}
            raise ValueError(f"ids: the index has {names[self._id_type]} ids, got {names[kind]} ids")

    # ----------------------------------------------------------------- writes
    def add(self, codes: CodesLike, ids: Any = None, payloads: Sequence[Payload | None] | None = None) -> None:
        """Append items; an id already in the collection is a ValueError naming it.

        Everything is checked before the first insert; inserts go in batches of ``insert_batch``."""
        checked = self._checked_write(codes, ids, payloads)
        if checked is None:
            return
        if len(self):
            present = self._present(checked[1])
            if present:
                raise ValueError(f"ids already in the index: {present[:5]}")
        self._write("insert", *checked)

    def upsert(self, codes: CodesLike, ids: Any, payloads: Sequence[Payload | None] | None = None) -> None:
        """Replace the items whose ids are present, insert the others (Milvus upsert)."""
        checked = self._checked_write(codes, ids, payloads)
        if checked is not None:
            self._write("upsert", *checked)

    def _checked_write(self, codes: CodesLike, ids: Any, payloads: Any) -> tuple[PackedCodes, np.ndarray, list | None] | None:
        """The checked (codes, ids, payloads) of a write, the collection created if needed; None if empty."""
        self._refuse_view_writes()
        packed = self._check_codes(codes, "codes")
        arr = self._ids_for_write(ids, len(packed))
        rows_payloads = self._check_payloads(payloads, len(packed))
        if len(packed) == 0:
            return None
        if not self._ready():
            self._create("str" if arr.dtype.kind == "U" else "int")
        return packed, arr, rows_payloads

    def _check_payloads(self, payloads: Any, m: int) -> list[Payload | None] | None:
        checked = check_payloads(payloads, m)
        if checked is not None and not self._with_payloads and any(p is not None for p in checked):
            raise ValueError(f"collection {self.collection!r} was created without payloads (payloads=False)")
        return checked

    def _write(self, operation: str, packed: PackedCodes, ids: np.ndarray, payloads: list | None) -> None:
        # Column-wise through pymilvus's Collection on the client's connection: its row-wise
        # insert spends ~60 us per field value in Python (18x slower, measured on 20,000 rows).
        if self._orm is None:
            self._orm = _pymilvus().Collection(self.collection, using=self._live()._using)
        fn = getattr(self._orm, operation)
        data, id_list = packed.data, ids.tolist()
        for start in range(0, len(id_list), self.insert_batch):
            stop = min(start + self.insert_batch, len(id_list))
            columns: list[list] = [id_list[start:stop], [data[i].tobytes() for i in range(start, stop)]]
            if self._with_payloads:
                chunk = [None] * (stop - start) if payloads is None else payloads[start:stop]
                columns += [[{} if p is None else p for p in chunk], [p is not None for p in chunk]]
            self._call(operation, fn, columns)

    def remove(self, ids: Any) -> int:
        """Delete the items with these ids (unknown ids are ignored); returns how many were removed."""
        arr = as_id_array(ids)
        self._check_id_kind(arr)
        if arr.size == 0 or not self._ready():
            return 0
        present = self._present(np.unique(arr))
        if present:
            self._refuse_view_writes()
        for start in range(0, len(present), self.insert_batch):
            chunk = present[start : start + self.insert_batch]
            self._call("delete", self._live().delete, self.collection, filter=self._id_filter(chunk))
        return len(present)

    def save(self, path: str | Path | None = None) -> None:
        """Flush the collection (Milvus is the durable store; there is no file to write)."""
        if path is not None:
            raise ValueError("MilvusIndex keeps its items in the Milvus collection: save() flushes it and takes no path")
        if self._id_type is not None:
            self._call("flush", self._live().flush, self.collection)

    # ------------------------------------------------------------------ reads
    def _id_filter(self, ids: Sequence[Any]) -> str:
        return "id in [" + ",".join(_literal(i) for i in ids) + "]"

    def _present(self, ids: np.ndarray) -> list[Any]:
        """Which of ``ids`` are in the collection."""
        return list(self._rows_by_id(ids.tolist(), []))

    def _rows_by_id(self, ids: list, fields: list[str], *, every_row: bool = False) -> dict[Any, dict]:
        """id -> row (the id and ``fields``) of those of ``ids`` in the collection, queried
        ``insert_batch`` ids at a time (``every_row``: also rows a view's ``present_field`` hides)."""
        rows: dict[Any, dict] = {}
        uniq = list(dict.fromkeys(ids))
        for start in range(0, len(uniq), self.insert_batch):
            expr = self._id_filter(uniq[start : start + self.insert_batch])
            got = self._call("query", self._live().query, self.collection,
                             filter=expr if every_row else self._filter(expr), output_fields=["id", *fields])
            rows.update((r["id"], r) for r in got)
        return rows

    def _fetch(self, ids: Any, fields: list[str]) -> tuple[list[Any], dict[Any, dict]]:
        arr = as_id_array(ids)
        self._check_id_kind(arr)
        asked = arr.tolist()
        if not asked or not self._ready():
            return asked, {}
        return asked, self._rows_by_id(asked, fields)

    def _payload_of(self, row: dict) -> Payload | None:
        if not self._with_payloads or not row.get("has_payload"):
            return None
        return row.get("payload")

    def get(self, ids: Any) -> list[dict[str, Any] | None]:
        """Per id: ``{"id": id, "code": packed uint8 row, "payload": dict | None}``, None if absent."""
        fields = [self.code_field, *(["payload", "has_payload"] if self._with_payloads else [])]
        asked, rows = self._fetch(ids, fields)
        out: list[dict[str, Any] | None] = []
        for i in asked:
            row = rows.get(i)
            if row is None:
                out.append(None)
                continue
            code = np.frombuffer(code_bytes(row[self.code_field]), dtype=np.uint8).copy()
            out.append({"id": i, "code": code, "payload": self._payload_of(row)})
        return out

    def payloads(self, ids: Any) -> list[Payload | None]:
        """Per id, its payload (None when it has none or is absent)."""
        if not self._with_payloads:
            asked, _ = self._fetch(ids, [])
            return [None] * len(asked)
        asked, rows = self._fetch(ids, ["payload", "has_payload"])
        return [None if rows.get(i) is None else self._payload_of(rows[i]) for i in asked]

    def _search_params(self, **params: Any) -> dict[str, Any]:
        if self.index_type == "BIN_IVF_FLAT":
            params["nprobe"] = self.nprobe
        return {"metric_type": "HAMMING", "params": params}

    def _empty(self, n_query: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        dtype = "<U1" if self._id_type == "str" else np.int64
        return np.empty((n_query, k), dtype=dtype), np.empty((n_query, k), dtype=np.uint16)

    def search(self, query_codes: CodesLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items per query: (ids, distances), each (n_query x min(k, len)).

        Distance ascending; the order within a distance, and which tied items make the cut at the
        k-th distance, are Milvus's. With BIN_IVF_FLAT a row can come back short: it is padded
        with id -1 (or "") and distance 65535."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = self._check_codes(query_codes, "query codes").data
        if not self._ready() or len(queries) == 0:
            return self._empty(len(queries), 0 if self._id_type is None else min(int(k), len(self)))
        limit = int(k)
        if limit > MAX_TOPK:
            n = len(self)
            if n > MAX_TOPK:
                raise ValueError(f"k: Milvus returns at most {MAX_TOPK} hits per query, got k={k} over {n} items")
            limit = MAX_TOPK
        hits = self._search_rows(queries, limit, self._search_params())
        width = max((len(h[0]) for h in hits), default=0)
        width = min(width, int(k))
        pad_id = "" if self._id_type == "str" else -1
        ids = np.full((len(hits), width), pad_id, dtype=object)
        dist = np.full((len(hits), width), np.iinfo(np.uint16).max, dtype=np.uint16)
        for row, (h_ids, h_dist) in enumerate(hits):
            m = min(len(h_ids), width)
            ids[row, :m] = h_ids[:m]
            dist[row, :m] = h_dist[:m]
        return (ids.astype(str) if self._id_type == "str" else ids.astype(np.int64)), dist

    def _search_rows(self, queries: np.ndarray, limit: int, params: dict[str, Any]) -> list[tuple[list, np.ndarray]]:
        out: list[tuple[list, np.ndarray]] = []
        for start in range(0, len(queries), self.search_batch):
            data = [q.tobytes() for q in queries[start : start + self.search_batch]]
            res = self._call(
                "search", self._live().search, self.collection,
                data=data, anns_field=self.code_field, limit=limit, search_params=params,
                **({"filter": self._filter()} if self.present_field else {}),
            )
            for hits in res:
                out.append((list(hits.ids), np.rint(np.asarray(hits.distances, dtype=np.float64)).astype(np.uint16)))
        return out

    def range_search(self, query_codes: CodesLike, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query, (ids, distances) of every item within Hamming distance ``radius`` (inclusive),
        distance ascending (the order within a distance is Milvus's)."""
        if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
        queries = self._check_codes(query_codes, "query codes").data
        radius = int(radius)
        ready = self._ready()
        dtype = str if self._id_type == "str" else np.int64
        if not ready:
            return [(np.empty(0, dtype=dtype), np.empty(0, dtype=np.uint16)) for _ in range(len(queries))]
        # Milvus keeps range_filter <= d < radius for HAMMING: d <= r is radius = r + 1.
        rows = self._search_rows(queries, MAX_TOPK, self._search_params(radius=radius + 1))
        out = []
        for qi, (h_ids, h_dist) in enumerate(rows):
            if len(h_ids) >= MAX_TOPK:  # full: fetch one distance at a time
                h_ids, h_dist = self._range_by_distance(queries[qi : qi + 1], radius, qi)
            order = np.argsort(h_dist, kind="stable")
            out.append((np.asarray(h_ids, dtype=dtype)[order], np.asarray(h_dist, dtype=np.uint16)[order]))
        return out

    def _range_by_distance(self, query: np.ndarray, radius: int, qi: int) -> tuple[list, np.ndarray]:
        ids: list = []
        dists: list[np.ndarray] = []
        for d in range(radius + 1):
            [(h_ids, h_dist)] = self._search_rows(query, MAX_TOPK, self._search_params(radius=d + 1, range_filter=d))
            if len(h_ids) >= MAX_TOPK:
                raise ValueError(
                    f"range_search: query {qi} has {MAX_TOPK} or more items at distance {d}; Milvus returns at "
                    f"most {MAX_TOPK} hits per search and cannot page through more: use a smaller radius or search"
                )
            ids += h_ids
            dists.append(h_dist)
        return ids, np.concatenate(dists) if dists else np.empty(0, dtype=np.uint16)


def code_bytes(value: Any) -> bytes:
    """A BINARY_VECTOR field of a queried row as bytes (pymilvus returns it in a one-item list)."""
    return bytes(value[0] if isinstance(value, list) else value)


def _described(description: str) -> dict[str, Any]:
    """What a cmhash-made collection records in its description: nbits and info."""
    try:
        found = json.loads(description)["cmhash"]
    except (ValueError, TypeError, KeyError):
        return {}
    return found if isinstance(found, dict) else {}


def _reason(exc: BaseException) -> str:
    """The message of a Milvus exception, without its wrapping."""
    message = getattr(exc, "message", None) or str(exc)
    code = getattr(exc, "code", None)
    return f"{message} (code {code})" if isinstance(code, int) else str(message)
