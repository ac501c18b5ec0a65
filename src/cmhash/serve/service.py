"""The search service's logic, without HTTP: validate a request, encode, search, write items.

:class:`SearchService` holds an optional model, one index per modality (any object with the
``Index`` protocol of INDEX_INTERFACE.md) and, for a writable service, an :class:`ItemStore`.
Two ways to build one:

- ``SearchService(model, index)``: today's read-only form, one index over one modality (a saved
  ``HammingIndex``); ``POST /search {"codes": [...], "k": 10}`` searches it.
- ``SearchService.open_store(path, model=..., nbits=...)``: items with image and/or text codes and a
  JSON payload, kept durably in SQLite; the in-memory indexes are rebuilt from the store here.

Every method takes the decoded JSON request and returns a JSON-ready dict, or raises
:class:`ServiceError` (status, code, message).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cmhash.codes import PackedCodes
from cmhash.data.dataset import MODALITIES
from cmhash.index import HammingIndex
from cmhash.index.base import Index
from cmhash.methods.base import HashModel
from cmhash.serve._mutable import MutableHammingIndex
from cmhash.serve.limits import Limits, ServiceError, bad_request
from cmhash.serve.store import Item, ItemStore

log = logging.getLogger("cmhash.serve")

IndexFactory = Callable[[int, str], Index]  # (nbits, modality) -> an empty Index
HEAVY_NICE = 10  # heavy requests run at this much lower CPU priority than small ones
HEAVY_WAIT = 1.0  # seconds a heavy request waits for a slot before it is answered 503 busy
RADIUS_CHUNK = 64  # radius queries run in chunks so a request over max_results stops early


def memory_index(nbits: int, modality: str) -> MutableHammingIndex:
    """The default backend: exact, in memory, writes in O(1) (tombstones, see serve/_mutable.py)."""
    return MutableHammingIndex(nbits, info={"modality": modality})


def hamming_index(nbits: int, modality: str) -> HammingIndex:
    """``HammingIndex`` itself: exact, in memory; each remove/upsert compacts (O(n) per write)."""
    return HammingIndex(nbits, info={"modality": modality})


# The --backend choices of `cmhash serve --store`: name -> factory of one empty index per modality.
# Another Index implementation registers itself here (e.g. a Milvus collection per modality).
BACKENDS: dict[str, IndexFactory] = {"memory": memory_index, "hamming": hamming_index}


def resolve_model_path(path: str | Path) -> Path:
    """A model file, or a folder holding ``model.npz`` (or exactly one ``.npz``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "model.npz").is_file():
            return path / "model.npz"
        found = sorted(path.glob("*.npz"))
        if len(found) == 1:
            return found[0]
        raise ValueError(
            f"{path}: a model folder must hold model.npz or exactly one .npz file, found "
            f"{[p.name for p in found] or 'none'}"
        )
    raise FileNotFoundError(f"{path}: no such model file or folder")


class ReadWriteLock:
    """Many readers or one writer. Readers never wait for a *waiting* writer, only for a running one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class SearchService:
    """Encode query features with ``model`` and search the index of a target modality.

    ``index`` (today's form) is one index; its modality is ``index.info["modality"]`` when set,
    else "image". ``limits`` bounds what a request may ask for (:class:`Limits`).
    """

    def __init__(
        self,
        model: HashModel | None,
        index: Any = None,
        *,
        indexes: dict[str, Any] | None = None,
        store: ItemStore | None = None,
        limits: Limits | None = None,
        **limit_values: Any,
    ):
        if (index is None) == (indexes is None):
            raise ValueError("give exactly one of index (one modality) or indexes (per modality)")
        if indexes is None:
            indexes = {str(getattr(index, "info", {}).get("modality", "image")): index}
        for m, ix in indexes.items():
            if not isinstance(ix, Index):
                raise ValueError(f"the {m} index ({type(ix).__name__}) does not implement cmhash.index.base.Index")
        unknown = sorted(set(indexes) - set(MODALITIES))
        if unknown:
            raise ValueError(f"index modality must be one of {list(MODALITIES)}, got {unknown}")
        nbits = {ix.nbits for ix in indexes.values()}
        if len(nbits) != 1:
            raise ValueError(f"all indexes must hold codes of one length, got {sorted(nbits)} bits")
        self.nbits = nbits.pop()
        if model is not None and model.bits != self.nbits:
            raise ValueError(f"the model encodes {model.bits}-bit codes but the index holds {self.nbits}-bit codes")
        self.model = model
        self.indexes = indexes
        self.store = store
        self.limits = limits if limits is not None else Limits(**limit_values)
        self.started = time.time()
        self._lock = ReadWriteLock()  # searches share the indexes; an index update is alone
        self._writer = threading.Lock()  # one write (store commit, then index update) at a time
        self._encode_lock = threading.Lock()  # models are not promised to be thread-safe
        self._heavy = threading.BoundedSemaphore(self.limits.max_heavy)
        self._heavy_pool = ThreadPoolExecutor(self.limits.max_heavy, thread_name_prefix="cmhash-heavy",
                                              initializer=_lower_priority)
        self._index_factory: IndexFactory = memory_index

    # Kept for callers of the first version (max_queries / max_k as attributes).
    @property
    def max_queries(self) -> int:
        return self.limits.max_queries

    @property
    def max_k(self) -> int:
        return self.limits.max_k

    @property
    def writable(self) -> bool:
        return self.store is not None

    # -------------------------------------------------------------- building
    @classmethod
    def open_store(
        cls,
        path: str | Path,
        *,
        model: HashModel | None = None,
        nbits: int | None = None,
        index_factory: IndexFactory | str = "memory",
        limits: Limits | None = None,
    ) -> "SearchService":
        """A writable service over the SQLite store at ``path``; its indexes are rebuilt from it."""
        if nbits is None:
            if model is None:
                raise ValueError("a store needs the code length: give a model or nbits")
            nbits = model.bits
        if isinstance(index_factory, str):
            if index_factory not in BACKENDS:
                raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {index_factory!r}")
            index_factory = BACKENDS[index_factory]
        store = ItemStore(path, nbits)
        t0 = time.perf_counter()
        indexes = {m: index_factory(nbits, m) for m in MODALITIES}
        n = 0
        for batch in store.scan():
            n += len(batch)
            for m, ix in indexes.items():
                rows = [it for it in batch if it.codes[m] is not None]
                if rows:
                    ix.add(_packed([it.codes[m] for it in rows], nbits), [it.id for it in rows],
                           [it.payload for it in rows])
        log.info("rebuilt the indexes from %s: %d items in %.2f s", path, n, time.perf_counter() - t0)
        service = cls(model, indexes=indexes, store=store, limits=limits)
        service._index_factory = index_factory
        return service

    def close(self) -> None:
        self._heavy_pool.shutdown(wait=False)
        if self.store is not None:
            self.store.close()
        for ix in self.indexes.values():
            if hasattr(ix, "close"):
                ix.close()

    # ------------------------------------------------------------ endpoints
    def info(self) -> dict[str, Any]:
        model = None if self.model is None else {
            "method": self.model.method, "bits": self.model.bits, "hparams": self.model.hparams}
        with self._lock.read():
            indexes = {m: {"size": len(ix), "nbits": ix.nbits, "kernel": getattr(ix, "kernel", None),
                           "backend": type(ix).__name__, "info": getattr(ix, "info", {})}
                       for m, ix in self.indexes.items()}
        out: dict[str, Any] = {"model": model, "nbits": self.nbits, "indexes": indexes,
                               "writable": self.writable, "limits": self.limits.as_dict(),
                               "ranking": "Hamming distance ascending, ties by insertion order"}
        if self.store is not None:
            out["store"] = {"path": str(self.store.path), "items": len(self.store), "id_kind": self.store.id_kind}
        if len(self.indexes) == 1:  # today's one-index form
            out["index"] = next(iter(indexes.values()))
        return out

    def encode(self, request: Any) -> dict[str, Any]:
        req = _object(request, {"modality", "features"})
        heavy = len(_rows(req.get("features"), "features", self.limits.max_queries)) > 64
        codes = self._run(heavy, self._encode, req.get("modality"), req.get("features"), "features")
        return {"nbits": codes.nbits, "codes": [row.tobytes().hex() for row in codes.data]}

    def search(self, request: Any) -> dict[str, Any]:
        req = _object(request, {"modality", "features", "codes", "target", "k", "radius", "payloads"})
        if ("features" in req) == ("codes" in req):
            raise bad_request("give exactly one of 'features' (with 'modality') or 'codes' (hex strings)")
        if ("k" in req) == ("radius" in req):
            raise bad_request("give exactly one of 'k' (top-k search) or 'radius' (Hamming ball search)")
        target = self._target(req)
        index = self.indexes[target]
        rows = _rows(req.get("features", req.get("codes")), "features" if "features" in req else "codes",
                     self.limits.max_queries)
        with_payloads = req.get("payloads", self.writable)
        if not isinstance(with_payloads, bool):
            raise bad_request(f"'payloads' must be true or false, got {with_payloads!r}")
        if "k" in req:
            k = _int(req["k"], "k", 1, self.limits.max_k)
            if len(rows) * k > self.limits.max_results:
                raise bad_request(f"{len(rows)} queries x k={k} is over {self.limits.max_results} results "
                                  "per request (max_results): ask for fewer queries or a smaller k")
            heavy = len(rows) * k > self.limits.heavy_results
        else:
            radius = _int(req["radius"], "radius", 0, self.nbits)
            heavy = len(rows) * len(index) > self.limits.heavy_results

        def work() -> dict[str, Any]:
            query = (self._encode(req.get("modality"), rows, "features") if "features" in req
                     else self._codes(rows))
            with self._lock.read():
                if "k" in req:
                    ids, dist = index.search(query, k)
                    hits = list(zip(ids, dist))
                else:
                    hits = self._radius(index, query, radius)
                return {"results": [self._hit(index, i, d, with_payloads) for i, d in hits]}

        return self._run(heavy, work)

    # ---------------------------------------------------------------- items
    def put_items(self, request: Any) -> dict[str, Any]:
        """Add (or with ``"upsert": true`` add or replace) a batch of items, durably."""
        store = self.require_store()
        req = _object(request, {"items", "upsert"})
        upsert = req.get("upsert", False)
        if not isinstance(upsert, bool):
            raise bad_request(f"'upsert' must be true or false, got {upsert!r}")
        raw = _rows(req.get("items"), "items", self.limits.max_items)
        items = self._items(raw)
        # Writers go one at a time (the store's order is the indexes' order); the commit and its
        # fsync run outside the index lock, so searches wait only for the in-memory update.
        with self._heavy_if(len(items) > 64), self._writer:
            try:
                added, replaced = store.write(items, upsert=upsert)
            except ValueError as exc:
                status, code = (409, "conflict") if "already stored" in str(exc) else (422, "invalid_request")
                raise ServiceError(status, code, str(exc)) from None
            with self._lock.write():
                self._apply(items, upsert=upsert)
        return {"added": added, "replaced": replaced}

    def delete_items(self, request: Any) -> dict[str, Any]:
        """Delete a batch of ids, durably; unknown ids are ignored (``removed`` counts the known ones)."""
        store = self.require_store()
        req = _object(request, {"ids"})
        ids = _rows(req.get("ids"), "ids", self.limits.max_items)
        for item_id in ids:
            _check_id(item_id)
        with self._writer:
            removed = store.delete(ids)
            with self._lock.write():
                for ix in self.indexes.values():
                    ix.remove(removed)
        return {"removed": len(removed)}

    def delete_item(self, raw_id: str) -> dict[str, Any]:
        item_id = self._path_id(raw_id)
        if not self.delete_items({"ids": [item_id]})["removed"]:
            raise ServiceError(404, "not_found", f"no item with id {item_id!r}")
        return {"removed": 1}

    def get_item(self, raw_id: str) -> dict[str, Any]:
        store = self.require_store()
        item_id = self._path_id(raw_id)
        (item,) = store.get([item_id])
        if item is None:
            raise ServiceError(404, "not_found", f"no item with id {item_id!r}")
        out: dict[str, Any] = {"id": item.id}
        for m in MODALITIES:
            out[f"{m}_code"] = None if item.codes[m] is None else item.codes[m].hex()
        out["payload"] = item.payload
        return out

    # -------------------------------------------------------------- helpers
    def _target(self, req: dict[str, Any]) -> str:
        target = req.get("target")
        if target is None:
            if len(self.indexes) == 1:
                return next(iter(self.indexes))
            if "features" in req and req.get("modality") in MODALITIES:  # cross-modal by default
                return MODALITIES[1 - MODALITIES.index(req["modality"])]
            raise bad_request(f"give 'target': the modality to search, one of {sorted(self.indexes)}")
        if target not in self.indexes:
            raise bad_request(f"'target' must be one of {sorted(self.indexes)}, got {target!r}")
        return target

    def _radius(self, index: Any, query: PackedCodes, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        hits: list[tuple[np.ndarray, np.ndarray]] = []
        total = 0
        for start in range(0, len(query), RADIUS_CHUNK):
            chunk = index.range_search(query[start : start + RADIUS_CHUNK], radius)
            total += sum(len(i) for i, _ in chunk)
            if total > self.limits.max_results:
                raise bad_request(f"the radius search found over {self.limits.max_results} hits (max_results): "
                                  "use a smaller radius, fewer queries, or k")
            hits.extend(chunk)
        return hits

    def _hit(self, index: Any, ids: np.ndarray, dist: np.ndarray, with_payloads: bool) -> dict[str, Any]:
        ids_list = ids.tolist()
        out: dict[str, Any] = {"ids": ids_list, "distances": dist.tolist()}
        if with_payloads and hasattr(index, "payloads"):
            out["payloads"] = index.payloads(ids_list)
        return out

    @contextmanager
    def _heavy_if(self, heavy: bool) -> Iterator[None]:
        """Run a heavy request only when one of the ``max_heavy`` slots frees within HEAVY_WAIT seconds
        (a short wait, so that waiting requests do not hold the worker threads small ones need)."""
        if not heavy:
            yield
            return
        if not self._heavy.acquire(timeout=min(HEAVY_WAIT, self.limits.request_timeout)):
            raise ServiceError(503, "busy", f"{self.limits.max_heavy} heavy requests are running; retry later")
        try:
            yield
        finally:
            self._heavy.release()

    def _run(self, heavy: bool, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` here, or for a heavy request in one of the ``max_heavy`` low-priority threads
        (nice +10: the scan threads they start inherit it), so that small requests get the CPU first."""
        if not heavy:
            return fn(*args)
        with self._heavy_if(True):
            return self._heavy_pool.submit(fn, *args).result()

    def require_store(self) -> ItemStore:
        if self.store is None:
            raise ServiceError(405, "read_only", "this service is read-only (started with --index); "
                                                 "start it with --store for items")
        return self.store

    def _path_id(self, raw: str) -> int | str:
        kind = self.require_store().id_kind
        if kind == "int":
            try:
                return int(raw)
            except ValueError:
                raise ServiceError(404, "not_found", f"no item with id {raw!r} (this store has integer ids)") from None
        return raw

    def _items(self, raw: list) -> list[Item]:
        allowed = {"id", "payload"} | set(MODALITIES) | {f"{m}_code" for m in MODALITIES}
        per_modality: dict[str, list[tuple[int, Any]]] = {m: [] for m in MODALITIES}
        seen: set = set()
        for j, item in enumerate(raw):
            where = f"items[{j}]"
            if not isinstance(item, dict):
                raise bad_request(f"{where} must be a JSON object, got {type(item).__name__}")
            unknown = sorted(set(item) - allowed)
            if unknown:
                raise bad_request(f"{where}: unknown field(s) {unknown}; allowed: {sorted(allowed)}")
            if "id" not in item:
                raise bad_request(f"{where}: 'id' is required")
            _check_id(item["id"], where)
            if item["id"] in seen:
                raise bad_request(f"{where}: id {item['id']!r} appears twice in this request")
            seen.add(item["id"])
            payload = item.get("payload")
            if payload is not None and not isinstance(payload, dict):
                raise bad_request(f"{where}: 'payload' must be a JSON object or null")
            if not any(m in item or f"{m}_code" in item for m in MODALITIES):
                raise bad_request(f"{where}: give features ({' or '.join(MODALITIES)}) or codes "
                                  f"({' or '.join(m + '_code' for m in MODALITIES)})")
            for m in MODALITIES:
                if m in item and f"{m}_code" in item:
                    raise bad_request(f"{where}: give '{m}' (features) or '{m}_code', not both")
                if m in item:
                    per_modality[m].append((j, item[m]))
        codes: list[dict[str, bytes | None]] = [{m: None for m in MODALITIES} for _ in raw]
        for m in MODALITIES:
            if per_modality[m]:
                packed = self._encode(m, [f for _, f in per_modality[m]], f"items[*].{m}")
                for (j, _), row in zip(per_modality[m], packed.data):
                    codes[j][m] = row.tobytes()
            for j, item in enumerate(raw):
                if f"{m}_code" in item:
                    codes[j][m] = self._codes([item[f"{m}_code"]], f"items[{j}].{m}_code").data[0].tobytes()
        return [Item(item["id"], codes[j], item.get("payload")) for j, item in enumerate(raw)]

    def _apply(self, items: list[Item], *, upsert: bool) -> None:
        """Mirror a committed write in the indexes (the store already has it)."""
        try:
            for m, ix in self.indexes.items():
                rows = [it for it in items if it.codes[m] is not None]
                if upsert:
                    ix.remove([it.id for it in items if it.codes[m] is None])
                if rows:
                    write = ix.upsert if upsert else ix.add
                    write(_packed([it.codes[m] for it in rows], self.nbits), [it.id for it in rows],
                          [it.payload for it in rows])
        except Exception:  # the store is the truth: rebuild from it rather than serve a drifted index
            log.exception("index update failed after a commit; rebuilding the indexes from the store")
            fresh = SearchService.open_store(self.store.path, nbits=self.nbits, index_factory=self._index_factory)
            self.store.close()
            self.store, self.indexes = fresh.store, fresh.indexes
            raise

    def _encode(self, modality: Any, features: Any, name: str) -> PackedCodes:
        if self.model is None:
            raise bad_request("this service has no model: send codes (hex strings), not features")
        if modality not in MODALITIES:
            raise bad_request(f"'modality' must be one of {list(MODALITIES)}, got {modality!r}")
        rows = _rows(features, name, self.limits.max_queries if name == "features" else self.limits.max_items)
        try:
            x = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise bad_request(f"'{name}' must be a list of equal-length lists of numbers ({exc})") from None
        try:
            with self._encode_lock:
                return self.model.encode(modality, x)
        except ValueError as exc:  # the model's own check: dimension, NaN/inf
            raise bad_request(str(exc)) from None

    def _codes(self, rows: Any, name: str = "codes") -> PackedCodes:
        nbytes = (self.nbits + 7) // 8
        try:
            data = np.array([bytearray.fromhex(r) for r in rows], dtype=np.uint8)
        except (TypeError, ValueError):
            raise bad_request(f"'{name}' must be hex strings of packed codes (as /encode returns)") from None
        if data.ndim != 2 or data.shape[1] != nbytes:
            raise bad_request(f"'{name}' must be {nbytes}-byte hex strings for {self.nbits}-bit codes")
        try:
            return PackedCodes(data, self.nbits)
        except ValueError as exc:
            raise bad_request(str(exc)) from None


# ------------------------------------------------------------------ validation
def _object(request: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(request).__name__}")
    unknown = sorted(set(request) - allowed)
    if unknown:
        raise bad_request(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return request


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"'{name}' must be an integer in [{low}, {high}], got {value!r}")
    return value


def _rows(value: Any, name: str, limit: int) -> list:
    if not isinstance(value, list) or not value:
        raise bad_request(f"'{name}' must be a non-empty list (one entry per query or item)")
    if len(value) > limit:
        raise bad_request(f"'{name}' has {len(value)} entries; at most {limit} per request")
    return value


def _check_id(item_id: Any, where: str = "ids") -> None:
    if isinstance(item_id, bool) or not isinstance(item_id, (int, str)) or item_id == "":
        raise bad_request(f"{where}: an id must be an integer or a non-empty string, got {item_id!r}")
    if isinstance(item_id, int) and not -(2**63) <= item_id < 2**63:
        raise bad_request(f"{where}: integer ids must fit in 64 bits, got {item_id}")


def _lower_priority() -> None:
    """Raise the calling thread's nice value by HEAVY_NICE (Linux: nice is per thread)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + HEAVY_NICE))
    except (AttributeError, OSError):  # not Linux / not permitted: run at normal priority
        pass


def _packed(rows: list[bytes], nbits: int) -> PackedCodes:
    data = np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), -1)
    return PackedCodes(data, nbits)


def load_service(model_path: str | Path, index_path: str | Path, **limits: Any) -> SearchService:
    """A read-only service over ``HashModel.load(model_path)`` (file or folder) and ``HammingIndex.load(index_path)``."""
    return SearchService(HashModel.load(resolve_model_path(model_path)), HammingIndex.load(index_path), **limits)
