"""API keys: stored hashed, compared in constant time, with `client` and `admin` scopes."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Literal

from service.errors import Forbidden, Unauthorized

Scope = Literal["client", "admin"]


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _normalise(entry: str) -> str:
    return entry if entry.startswith("sha256:") and len(entry) == 71 else hash_key(entry)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's hash prefix (for rate limits and logs) and its scopes."""

    id: str
    scopes: frozenset[str]


class KeyRing:
    """Client and admin keys (admin keys may do everything clients may).

    Client endpoints need a key only when client keys are configured; admin endpoints only when admin
    keys are (else they are refused). Admin keys alone therefore protect the admin endpoints without
    locking clients out."""

    def __init__(self, client_keys: list[str], admin_keys: list[str]) -> None:
        self._client = [_normalise(k) for k in client_keys]
        self._admin = [_normalise(k) for k in admin_keys]

    @property
    def clients_need_key(self) -> bool:
        return bool(self._client)

    def authenticate(self, presented: str | None, client_addr: str, required: Scope = "client") -> Principal:
        """Return the caller; raise Unauthorized (no/unknown key) or Forbidden (missing scope)."""
        if required == "admin" and not self._admin:
            raise Forbidden("admin endpoints need EMOSERVE_ADMIN_KEYS to be configured")
        digest = hash_key(presented) if presented else None
        is_admin = digest is not None and any(hmac.compare_digest(digest, k) for k in self._admin)
        if required == "client" and not self._client and not is_admin:  # open to clients
            return Principal(id=f"addr:{client_addr}", scopes=frozenset({"client"}))
        if digest is None:
            raise Unauthorized("an API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key`")
        if not (is_admin or any(hmac.compare_digest(digest, k) for k in self._client)):
            raise Unauthorized("unknown API key")
        scopes = frozenset({"client", "admin"} if is_admin else {"client"})
        if required not in scopes:
            raise Forbidden("this endpoint needs an admin key")
        return Principal(id=f"key:{digest[7:23]}", scopes=scopes)
