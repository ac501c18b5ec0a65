"""A small HTTP search service over a saved model and a Hamming index (stdlib only).

:class:`SearchService` holds the logic (validate a JSON request, encode, search) and is usable
without HTTP; :func:`make_server` wraps it in a ``ThreadingHTTPServer``. Endpoints (JSON in, JSON
out; docs/index.md has examples):

- ``GET /health`` -> ``{"status": "ok"}``
- ``GET /info`` -> model, index and limits
- ``POST /encode`` ``{"modality", "features"}`` -> packed codes as hex strings
- ``POST /search`` ``{"modality", "features" | "codes", "k" | "radius"}`` -> ids and distances
"""

from __future__ import annotations

import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from cmhash.codes import PackedCodes
from cmhash.data.dataset import MODALITIES
from cmhash.index import HammingIndex
from cmhash.methods.base import HashModel

log = logging.getLogger("cmhash.serve")

MAX_BODY_BYTES = 32 * 2**20


class RequestError(ValueError):
    """A bad request: reported to the client as HTTP 400 with this message."""


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


class SearchService:
    """Encode query features with ``model`` and search ``index`` (database codes of one modality).

    ``max_queries`` and ``max_k`` bound the work a single request can ask for.
    """

    def __init__(self, model: HashModel, index: HammingIndex, *, max_queries: int = 1024, max_k: int = 10_000):
        if model.bits != index.nbits:
            raise ValueError(f"the model encodes {model.bits}-bit codes but the index holds {index.nbits}-bit codes")
        self.model = model
        self.index = index
        self.max_queries = int(max_queries)
        self.max_k = int(max_k)
        self._encode_lock = threading.Lock()  # models are not promised to be thread-safe

    # ------------------------------------------------------------ endpoints
    def info(self) -> dict[str, Any]:
        return {
            "model": {"method": self.model.method, "bits": self.model.bits, "hparams": self.model.hparams},
            "index": {"size": len(self.index), "nbits": self.index.nbits, "kernel": self.index.kernel,
                      "info": self.index.info},
            "limits": {"max_queries": self.max_queries, "max_k": self.max_k, "max_body_bytes": MAX_BODY_BYTES},
            "ranking": "Hamming distance ascending, ties by index insertion order",
        }

    def encode(self, request: Any) -> dict[str, Any]:
        codes = self._encode(self._as_object(request, {"modality", "features"}))
        return {"nbits": codes.nbits, "codes": [row.tobytes().hex() for row in codes.data]}

    def search(self, request: Any) -> dict[str, Any]:
        req = self._as_object(request, {"modality", "features", "codes", "k", "radius"})
        if ("features" in req) == ("codes" in req):
            raise RequestError("give exactly one of 'features' (with 'modality') or 'codes' (hex strings)")
        if ("k" in req) == ("radius" in req):
            raise RequestError("give exactly one of 'k' (top-k search) or 'radius' (Hamming ball search)")
        query = self._encode(req) if "features" in req else self._codes(req["codes"])
        if "k" in req:
            k = self._int(req["k"], "k", 1, self.max_k)
            ids, dist = self.index.search(query, k)
            results = [{"ids": i.tolist(), "distances": d.tolist()} for i, d in zip(ids, dist)]
        else:
            radius = self._int(req["radius"], "radius", 0, self.index.nbits)
            results = [{"ids": i.tolist(), "distances": d.tolist()} for i, d in self.index.range_search(query, radius)]
        return {"results": results}

    # ----------------------------------------------------------- validation
    @staticmethod
    def _as_object(request: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise RequestError(f"the request body must be a JSON object, got {type(request).__name__}")
        unknown = sorted(set(request) - allowed)
        if unknown:
            raise RequestError(f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
        return request

    @staticmethod
    def _int(value: Any, name: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise RequestError(f"'{name}' must be an integer in [{low}, {high}], got {value!r}")
        return value

    def _rows(self, value: Any, name: str) -> list:
        if not isinstance(value, list) or not value:
            raise RequestError(f"'{name}' must be a non-empty list (one entry per query)")
        if len(value) > self.max_queries:
            raise RequestError(f"'{name}' has {len(value)} queries; at most {self.max_queries} per request")
        return value

    def _encode(self, req: dict[str, Any]) -> PackedCodes:
        modality = req.get("modality")
        if modality not in MODALITIES:
            raise RequestError(f"'modality' must be one of {list(MODALITIES)}, got {modality!r}")
        rows = self._rows(req.get("features"), "features")
        try:
            x = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise RequestError(f"'features' must be a list of equal-length lists of numbers ({exc})") from None
        try:
            with self._encode_lock:
                return self.model.encode(modality, x)
        except ValueError as exc:  # the model's own check: dimension, NaN/inf
            raise RequestError(str(exc)) from None

    def _codes(self, value: Any) -> PackedCodes:
        rows = self._rows(value, "codes")
        nbytes = (self.index.nbits + 7) // 8
        try:
            data = np.array([bytearray.fromhex(r) for r in rows], dtype=np.uint8)
        except (TypeError, ValueError):
            raise RequestError("'codes' must be hex strings of packed codes (as /encode returns)") from None
        if data.ndim != 2 or data.shape[1] != nbytes:
            raise RequestError(f"'codes' must be {nbytes}-byte hex strings for {self.index.nbits}-bit codes")
        try:
            return PackedCodes(data, self.index.nbits)
        except ValueError as exc:
            raise RequestError(str(exc)) from None


def _handler(service: SearchService, quiet: bool) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "cmhash"
        timeout = 30  # seconds a client may take to send its request

        @property
        def route(self) -> str:
            return urlsplit(self.path).path  # without a query string

        def do_GET(self) -> None:
            routes = {"/health": lambda: {"status": "ok"}, "/info": service.info}
            if self.route in routes:
                self._reply(HTTPStatus.OK, routes[self.route]())
            elif self.route in ("/encode", "/search"):
                self._reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": f"{self.route} takes POST"})
            else:
                self._reply(HTTPStatus.NOT_FOUND, {"error": f"no endpoint {self.route}"})

        def do_POST(self) -> None:
            routes = {"/encode": service.encode, "/search": service.search}
            if self.route not in routes:
                status = HTTPStatus.METHOD_NOT_ALLOWED if self.route in ("/health", "/info") else HTTPStatus.NOT_FOUND
                self._reply(status, {"error": f"no POST endpoint {self.route}"})
                return
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self._reply(HTTPStatus.LENGTH_REQUIRED, {"error": "a Content-Length header is required"})
                return
            if not 0 <= length <= MAX_BODY_BYTES:
                self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            {"error": f"request body of {length} bytes; at most {MAX_BODY_BYTES}"})
                return
            try:
                request = json.loads(self.rfile.read(length))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": f"the body is not valid JSON: {exc}"})
                return
            try:
                self._reply(HTTPStatus.OK, routes[self.route](request))
            except RequestError as exc:
                self._reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
            except Exception:  # noqa: BLE001 - report, keep serving, leak no internals
                log.exception("error while serving %s", self.route)
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (see the server log)"})

        def _reply(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
            if not quiet:
                super().log_message(format, *args)

    return Handler


def make_server(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = False) -> ThreadingHTTPServer:
    """A threading HTTP server for ``service`` (``port=0`` picks a free port: ``server.server_address``)."""
    server = ThreadingHTTPServer((host, port), _handler(service, quiet))
    server.daemon_threads = True
    return server


def load_service(model_path: str | Path, index_path: str | Path, **limits: Any) -> SearchService:
    """A service over ``HashModel.load(model_path)`` (file or folder) and ``HammingIndex.load(index_path)``."""
    return SearchService(HashModel.load(resolve_model_path(model_path)), HammingIndex.load(index_path), **limits)
