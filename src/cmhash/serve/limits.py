"""The service's limits, its error type, and a JSON body parser that enforces a nesting depth.

Everything here is plain Python (no web framework), so the same checks run in the HTTP service,
in ``cmhash search`` against local files, and in tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


class ServiceError(Exception):
    """An error answered to the client as ``{"error": message, "code": code, "status": status}``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """The one shape of every error reply (also for 404/405/413/500 and HTTP-level errors)."""
    return {"error": message, "code": code, "status": status}


def bad_request(message: str) -> ServiceError:
    """A request that is valid JSON but asks for something invalid (HTTP 422)."""
    return ServiceError(422, "invalid_request", message)


@dataclass
class Limits:
    """What one request may ask for, and how the server protects itself (all set by `cmhash serve`)."""

    max_queries: int = 1024          # queries (rows of features or codes) per search/encode request
    max_k: int = 10_000              # k of a top-k search
    max_results: int = 1_000_000     # hits per request (queries x k, or all radius hits)
    max_items: int = 10_000          # items per write request
    max_body_bytes: int = 32 * 2**20  # request body size
    max_json_depth: int = 32         # nesting of the JSON body (payloads included)
    heavy_results: int = 10_000      # a request that may return more hits than this is "heavy" ...
    max_heavy: int = 2               # ... and at most this many heavy requests run at once
    request_timeout: float = 30.0    # seconds for a whole request: receiving, working, answering
    header_timeout: float = 10.0     # seconds a client may take to send a request's headers
    keep_alive: float = 15.0         # seconds an idle keep-alive connection stays open
    max_connections: int = 1024      # open connections; more are answered 503 and closed
    worker_threads: int = 8          # threads doing requests' work (more only contend for the GIL)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"limit {f.name} must be a positive number, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text (brackets inside strings do not count).

    Linear in the body and without recursion, so a body nested 1e6 deep costs microseconds per kB
    and cannot exhaust the stack (``json.loads`` would raise RecursionError on it).
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    arr = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((arr == 0x5B) | (arr == 0x7B), 1, -1)
    return int(np.cumsum(steps).max())


def parse_json(body: bytes, max_depth: int) -> Any:
    """``json.loads(body)`` after checking its nesting depth; ServiceError 400 when it is not JSON."""
    if json_depth(body) > max_depth:
        raise ServiceError(400, "too_deep", f"the JSON body nests deeper than {max_depth} levels")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ServiceError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
