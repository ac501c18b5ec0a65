"""The HTTP face of :class:`SearchService`: a FastAPI app (``create_app``), run by uvicorn (server.py).

Endpoints (JSON in and out; docs/service.md has curl and Python examples, /docs the OpenAPI UI):

- ``GET /health``, ``GET /info``, ``GET /metrics`` (Prometheus text)
- ``POST /encode``, ``POST /search``
- ``POST /items`` (add or upsert a batch), ``GET /items/{id}``, ``DELETE /items/{id}``,
  ``POST /items/delete`` (a batch)

:class:`Guard` wraps the app (pure ASGI): it bounds the body size and the time of a whole request
(receiving, working, answering), counts requests for /metrics, and turns any failure into the one
error shape ``{"error": message, "code": code, "status": status}``. The work of a request runs in
a worker thread so that the event loop keeps answering small requests beside a heavy one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cmhash.serve import schemas
from cmhash.serve.auth import ApiKeys
from cmhash.serve.limits import ServiceError, error_body, parse_json
from cmhash.serve.metrics import Metrics
from cmhash.serve.service import SearchService

log = logging.getLogger("cmhash.serve")

ROUTES = ("/health", "/info", "/metrics", "/encode", "/search", "/items", "/items/delete", "/docs", "/openapi.json")


def _json_bytes(body: Any) -> bytes:
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_json_bytes(body), status_code=status, media_type="application/json", headers=headers)


def create_app(service: SearchService, api_keys: ApiKeys | None = None) -> "Guard":
    """The ASGI app serving ``service``; ``api_keys`` None means no keys (reads open, writes refused)."""
    limits = service.limits
    metrics = Metrics()
    app = FastAPI(title="cmhash search service", version="2",
                  description="Cross-modal Hamming search over binary codes. See docs/service.md.")

    # ------------------------------------------------------------- auth + errors
    def authorize(request: Request, scope: str) -> None:
        needed = scope == "write" or (api_keys is not None and api_keys.any_read)
        if not needed:
            return
        header = request.headers.get("authorization", "")
        method, _, token = header.partition(" ")
        if method.lower() != "bearer" or not token.strip():
            raise ServiceError(401, "unauthorized", f"this endpoint needs a {scope} key: Authorization: Bearer KEY")
        found = None if api_keys is None else api_keys.scope_of(token.strip())
        if found is None:
            raise ServiceError(401, "unauthorized", "unknown API key")
        if scope == "write" and found != "write":
            raise ServiceError(403, "forbidden", "this key may only read; writes need a write key")

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> Response:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return json_response(exc.body(), exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = f"no endpoint {request.url.path}" if exc.status_code == 404 else (
            f"{request.method} is not allowed on {request.url.path}" if exc.status_code == 405 else str(exc.detail))
        return json_response(error_body(exc.status_code, code, message), exc.status_code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return json_response(error_body(422, "invalid_request", str(exc.errors())), 422)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        return json_response(error_body(500, "internal", "internal error (see the server log)"), 500)

    workers: list[anyio.CapacityLimiter | None] = [None]  # made on first use, inside the event loop

    async def body_of(request: Request) -> Any:
        return parse_json(await request.body(), limits.max_json_depth)

    async def call(request: Request, scope: str, method: Any, *args: Any) -> Response:
        if scope == "write" or request.url.path.startswith("/items/"):
            service.require_store()  # a read-only service says so before asking for a key
        authorize(request, scope)
        if request.method == "POST":
            args = (await body_of(request), *args)
        # The work runs in a worker thread: the scan kernel releases the GIL, so the event loop keeps
        # reading and answering other connections meanwhile (answering small searches on the loop
        # itself measured half the throughput: benchmarks/bench_serve.py).
        # A read past the request timeout is abandoned (answered 503; its thread finishes in the
        # background, still holding its heavy slot); a write is waited for, so that its reply says
        # whether it was committed.
        if workers[0] is None:
            workers[0] = anyio.CapacityLimiter(limits.worker_threads)
        data = await anyio.to_thread.run_sync(lambda: _json_bytes(method(*args)), abandon_on_cancel=scope == "read",
                                              limiter=workers[0])
        return Response(data, media_type="application/json")

    # ----------------------------------------------------------------- routes
    @app.get("/health", tags=["status"], responses={200: {"model": schemas.Health}})
    async def health() -> Response:
        """Liveness: answers without a key."""
        return json_response({"status": "ok"})

    @app.get("/info", tags=["status"])
    async def info(request: Request) -> Response:
        """The model, indexes (sizes, backends), store and limits."""
        return await call(request, "read", service.info)

    @app.get("/metrics", tags=["status"], response_class=Response)
    async def metrics_text(request: Request) -> Response:
        """Prometheus text: requests and errors per route and status, latency histogram, index sizes."""
        authorize(request, "read")
        sizes = {m: len(ix) for m, ix in service.indexes.items()}
        return Response(metrics.render(sizes), media_type="text/plain; version=0.0.4")

    @app.post("/encode", tags=["search"], openapi_extra=schemas.body(schemas.EncodeRequest),
              responses={200: {"model": schemas.EncodeResponse}})
    async def encode(request: Request) -> Response:
        """Encode features of one modality into packed codes (hex strings)."""
        return await call(request, "read", service.encode)

    @app.post("/search", tags=["search"], openapi_extra=schemas.body(schemas.SearchRequest),
              responses={200: {"model": schemas.SearchResponse}})
    async def search(request: Request) -> Response:
        """Top-k (``k``) or Hamming-ball (``radius``) search of a target modality's index."""
        return await call(request, "read", service.search)

    @app.post("/items", tags=["items"], openapi_extra=schemas.body(schemas.ItemsRequest),
              responses={200: {"model": schemas.ItemsResponse}})
    async def put_items(request: Request) -> Response:
        """Add a batch of items (``"upsert": true``: add or replace); answered after the commit."""
        return await call(request, "write", service.put_items)

    @app.post("/items/delete", tags=["items"], openapi_extra=schemas.body(schemas.DeleteRequest),
              responses={200: {"model": schemas.DeleteResponse}})
    async def delete_items(request: Request) -> Response:
        """Delete a batch of ids (unknown ids are ignored; ``removed`` counts the others)."""
        return await call(request, "write", service.delete_items)

    @app.get("/items/{item_id}", tags=["items"], responses={200: {"model": schemas.ItemResponse}})
    async def get_item(request: Request, item_id: str) -> Response:
        """One stored item: its codes (hex) and payload."""
        return await call(request, "read", service.get_item, item_id)

    @app.delete("/items/{item_id}", tags=["items"], responses={200: {"model": schemas.DeleteResponse}})
    async def delete_item(request: Request, item_id: str) -> Response:
        """Delete one item (404 when absent)."""
        return await call(request, "write", service.delete_item, item_id)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(schemas.components())
            spec["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            spec["security"] = [{"bearer": []}, {}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return Guard(app, service, metrics)


class _BodyTooLarge(Exception):
    pass


class Guard:
    """ASGI wrapper: body-size limit, whole-request timeout, error shape, metrics."""

    def __init__(self, app: FastAPI, service: SearchService, metrics: Metrics):
        self.app = app
        self.service = service
        self.metrics = metrics
        self.limits = service.limits

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = {"status": 0, "started": False, "body_done": False, "received": 0, "guard_replied": False}
        max_body = self.limits.max_body_bytes

        async def guarded_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > max_body:
                    await fail(413, "too_large", f"request body over {max_body} bytes")
                    raise _BodyTooLarge
                if not message.get("more_body", False):
                    state["body_done"] = True
            return message

        async def guarded_send(message: dict) -> None:
            if state["guard_replied"]:
                return  # the guard has answered; whatever the app sends after is dropped
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
            await send(message)

        async def fail(status: int, code: str, message: str) -> None:
            if state["started"]:
                return  # too late for an error reply: the server closes the connection
            data = json.dumps(error_body(status, code, message)).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
            if status in (408, 413):
                headers.append((b"connection", b"close"))
            await guarded_send({"type": "http.response.start", "status": status, "headers": headers})
            state["guard_replied"] = True
            await send({"type": "http.response.body", "body": data})

        length = dict(scope["headers"]).get(b"content-length")
        try:
            if length is not None and int(length) > max_body:
                await fail(413, "too_large", f"request body of {int(length)} bytes; at most {max_body}")
            else:
                await asyncio.wait_for(self.app(scope, guarded_receive, guarded_send), self.limits.request_timeout)
        except _BodyTooLarge:
            pass  # answered 413 by guarded_receive
        except (asyncio.TimeoutError, TimeoutError):
            if state["body_done"] or scope["method"] in ("GET", "HEAD", "DELETE"):
                await fail(503, "timeout", f"the request took over {self.limits.request_timeout} s")
            else:
                await fail(408, "timeout", f"the request body was not received within {self.limits.request_timeout} s")
        except Exception:  # noqa: BLE001 - answer JSON, keep serving, leak no internals
            log.exception("error while serving %s %s", scope["method"], scope["path"])
            await fail(500, "internal", "internal error (see the server log)")
        finally:
            self.metrics.observe(scope["method"], _route(scope["path"]), state["status"] or 499,
                                 time.perf_counter() - start)


def _route(path: str) -> str:
    """The route a path belongs to (unknown paths pooled, so /metrics stays small)."""
    if path in ROUTES:
        return path
    if path.startswith("/items/"):
        return "/items/{id}"
    return "other"
