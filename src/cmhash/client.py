"""A Python client of the search service (``cmhash serve``), over one keep-alive HTTP connection pool.

    from cmhash.client import Client
    with Client("http://127.0.0.1:8000", api_key="...") as c:
        c.add_items([{"id": 1, "image": feats, "payload": {"title": "..."}}])
        hits = c.search(features=text_feats, modality="text", k=10)   # one dict per query

Needs httpx (the ``serve`` extra). Every error reply raises :class:`ClientError` with the
server's status, code and message.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import quote

import numpy as np


class ClientError(Exception):
    """An error reply: ``status`` (HTTP), ``code`` (stable, e.g. "invalid_request") and the message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Client:
    """Calls a running service at ``url``; ``api_key`` is sent as ``Authorization: Bearer``."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 30.0):
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # ------------------------------------------------------------ endpoints
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    def info(self) -> dict[str, Any]:
        return self._call("GET", "/info")

    def metrics(self) -> str:
        reply = self._http.get("/metrics")
        self._check(reply)
        return reply.text

    def encode(self, modality: str, features: Any) -> dict[str, Any]:
        """``{"nbits", "codes"}``: packed codes (hex strings) of ``features`` (n x d)."""
        return self._call("POST", "/encode", {"modality": modality, "features": _rows(features)})

    def search(self, *, features: Any = None, modality: str | None = None, codes: Sequence[str] | None = None,
               k: int | None = None, radius: int | None = None, target: str | None = None,
               payloads: bool | None = None) -> list[dict[str, Any]]:
        """Per query ``{"ids", "distances"[, "payloads"]}``; give features (+ modality) or codes, k or radius."""
        body: dict[str, Any] = {}
        if features is not None:
            body.update(features=_rows(features), modality=modality)
        if codes is not None:
            body["codes"] = list(codes)
        for name, value in (("k", k), ("radius", radius), ("target", target), ("payloads", payloads)):
            if value is not None:
                body[name] = int(value) if name in ("k", "radius") else value
        return self._call("POST", "/search", body)["results"]

    def add_items(self, items: Sequence[dict[str, Any]], *, upsert: bool = False) -> dict[str, int]:
        """Write items (``{"id", "image"/"text" features or "image_code"/"text_code", "payload"}``); returns
        ``{"added", "replaced"}`` once the server has committed them."""
        rows = [{k: (_row(v) if k in ("image", "text") else v) for k, v in item.items()} for item in items]
        return self._call("POST", "/items", {"items": rows, "upsert": upsert})

    def get_item(self, item_id: int | str) -> dict[str, Any]:
        return self._call("GET", f"/items/{quote(str(item_id), safe='')}")

    def delete_item(self, item_id: int | str) -> dict[str, int]:
        return self._call("DELETE", f"/items/{quote(str(item_id), safe='')}")

    def delete_items(self, ids: Sequence[int | str]) -> dict[str, int]:
        return self._call("POST", "/items/delete", {"ids": [_plain(i) for i in ids]})

    # -------------------------------------------------------------- helpers
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        reply = self._http.request(method, path, json=body)
        self._check(reply)
        return reply.json()

    @staticmethod
    def _check(reply: Any) -> None:
        if reply.status_code < 400:
            return
        try:
            err = reply.json()
            raise ClientError(reply.status_code, err.get("code", "error"), err.get("error", reply.text))
        except ValueError:
            raise ClientError(reply.status_code, "error", reply.text) from None


def _rows(x: Any) -> list:
    return np.asarray(x, dtype=np.float64).tolist()


def _row(x: Any) -> list:
    return np.asarray(x, dtype=np.float64).ravel().tolist()


def _plain(item_id: Any) -> Any:
    return item_id.item() if isinstance(item_id, np.generic) else item_id
