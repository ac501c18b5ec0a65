"""Run the service with uvicorn (HTTP/1.1 keep-alive, one process, one event loop).

:class:`GuardedH11Protocol` adds what uvicorn's h11 protocol lacks against abusive clients:
a deadline for a request's *headers* (a client trickling one byte every few seconds is cut off
after ``header_timeout``; the body and the work are bounded by the app's whole-request timeout),
a cap on open connections (answered 503), and JSON error bodies for malformed HTTP (400) too.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cmhash.serve.auth import ApiKeys
from cmhash.serve.limits import Limits, error_body
from cmhash.serve.service import SearchService

log = logging.getLogger("cmhash.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_keys: ApiKeys | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without API keys, unless the operator says --insecure."""
    if not is_loopback(host) and api_keys is None and not insecure:
        raise ValueError(f"--host {host} is reachable from other machines and no API keys are configured: "
                         "give --api-keys FILE (or CMHASH_API_KEYS), or --insecure to serve anyway")


def _raw_reply(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps(error_body(status, code, message)).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline, a connection cap and JSON 400s."""

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                transport.write(_raw_reply(503, "Service Unavailable", "too_many_connections",
                                           f"over {limits.max_connections} open connections; retry later"))
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the first bytes of the next request on a kept-alive connection
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm()  # headers complete: the app's request timeout takes over

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive idle timeout

        def send_400_response(self, msg: str) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self.transport.write(_raw_reply(400, "Bad Request", "bad_http", f"malformed HTTP request: {msg}"))
                self.transport.close()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _headers_too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.write(_raw_reply(408, "Request Timeout", "timeout",
                                                f"the request headers took over {limits.header_timeout} s"))
                self.transport.close()

    return GuardedH11Protocol


def make_config(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *,
                api_keys: ApiKeys | None = None, log_level: str = "warning",
                sock: socket.socket | None = None) -> uvicorn.Config:
    from cmhash.serve.app import create_app

    limits = service.limits
    return uvicorn.Config(
        create_app(service, api_keys), host=host, port=port, http=guarded_protocol(limits),
        lifespan="off", log_level=log_level, access_log=False, backlog=2048,
        timeout_keep_alive=max(1, int(round(limits.keep_alive))),
        h11_max_incomplete_event_size=64 * 1024,
    )


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, *, api_keys: ApiKeys | None = None,
          insecure: bool = False, log_level: str = "warning", on_ready: Any = None) -> None:
    """Serve until interrupted (SIGINT/SIGTERM). ``on_ready(host, port)`` is called once listening."""
    check_exposure(host, api_keys, insecure)
    config = make_config(service, host, port, api_keys=api_keys, log_level=log_level)
    server = uvicorn.Server(config)

    async def main() -> None:
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup()
        if server.should_exit:
            raise OSError(f"cannot listen on {host}:{port}")
        # Everything loaded so far (libraries, app, indexes, payloads) lives as long as the server:
        # move it out of the garbage collector's sight, so a full collection is not a pause of
        # ~0.1 s per 1e5 objects (measured ~80 ms for an app with 1e5 items under this machine's load).
        gc.collect()
        gc.freeze()
        bound = server.servers[0].sockets[0].getsockname()[:2]
        if on_ready is not None:
            on_ready(*bound)
        await server.main_loop()
        await server.shutdown()

    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    import signal

    loop = asyncio.new_event_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    try:
        loop.run_until_complete(main())
    finally:
        service.close()
        loop.close()
