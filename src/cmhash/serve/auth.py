"""API keys with read and write scopes, checked in constant time.

A keys file holds one key per line, ``read KEY`` or ``write KEY`` (a write key may also read);
blank lines and ``#`` comments are skipped. The environment variable ``CMHASH_API_KEYS`` holds the
same pairs as ``scope:KEY`` separated by commas or whitespace. Keys are kept only as sha256
digests; a presented key is hashed and compared with *every* configured digest by
``hmac.compare_digest``, so the time taken does not depend on which key (if any) matched.
Keys are never logged or echoed in an error.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

SCOPES = ("read", "write")
MIN_KEY_LENGTH = 16
ENV_VAR = "CMHASH_API_KEYS"


class ApiKeys:
    """The configured keys; ``scope_of(token)`` is "write", "read" or None."""

    def __init__(self, keys: list[tuple[str, str]]):
        self._digests: list[tuple[bytes, str]] = []
        for scope, key in keys:
            if scope not in SCOPES:
                raise ValueError(f"API key scope must be one of {SCOPES}, got {scope!r}")
            if len(key) < MIN_KEY_LENGTH or not key.isprintable() or " " in key:
                raise ValueError(f"an API key ({scope}) must be at least {MIN_KEY_LENGTH} printable characters "
                                 "without spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
            self._digests.append((_digest(key), scope))

    @classmethod
    def from_file(cls, path: str | Path) -> "ApiKeys":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"{path}: cannot read the API keys file ({exc.strerror})") from None
        keys = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in SCOPES:
                raise ValueError(f"{path}:{lineno}: expected 'read KEY' or 'write KEY'")
            keys.append((parts[0], parts[1]))
        if not keys:
            raise ValueError(f"{path}: no keys in the API keys file")
        try:
            return cls(keys)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    @classmethod
    def from_env(cls, value: str | None = None) -> "ApiKeys | None":
        """Keys from ``CMHASH_API_KEYS`` (``scope:KEY`` pairs), or None when it is unset or empty."""
        value = os.environ.get(ENV_VAR, "") if value is None else value
        pairs = [p for p in re.split(r"[,\s]+", value) if p]
        if not pairs:
            return None
        keys = []
        for pair in pairs:
            scope, sep, key = pair.partition(":")
            if not sep:
                raise ValueError(f"{ENV_VAR}: expected scope:KEY pairs (read:... or write:...)")
            keys.append((scope, key))
        try:
            return cls(keys)
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}: {exc}") from None

    @property
    def any_read(self) -> bool:
        """Reads need a key once any read key is configured."""
        return any(scope == "read" for _, scope in self._digests)

    @property
    def any_write(self) -> bool:
        return any(scope == "write" for _, scope in self._digests)

    def scope_of(self, token: str) -> str | None:
        digest = _digest(token)
        found = None
        for known, scope in self._digests:  # no early exit: every key is compared
            if hmac.compare_digest(digest, known) and found != "write":
                found = scope
        return found

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:  # never the keys
        return f"ApiKeys({len(self)} keys)"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
