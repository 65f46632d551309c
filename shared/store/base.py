"""The store interface: everything API workers and hosts must share.

Two implementations (SQLite for one host, Redis for a fleet) are held to one
shared test suite. Secrets never enter the store: keys are kept as a SHA-256
hash plus a short display prefix.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Protocol

KEY_PREFIX = "sn1-"
ALL_SCOPES = ("chat", "web_retrieval", "availability")


class StoreUnavailable(Exception):
    """The store could not be reached; callers answer 503, never let a request through."""


def new_api_key() -> str:
    """A fresh key: recognisable prefix + 256 bits from the OS CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(api_key: str) -> str:
    return api_key[: len(KEY_PREFIX) + 6]


@dataclass(frozen=True)
class KeyRecord:
    id: str
    key_hash: str
    prefix: str
    rate_limit: int
    name: str | None = None
    scopes: tuple[str, ...] = ALL_SCOPES
    allowed_models: tuple[str, ...] | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    last_used_at: float | None = None
    extra: dict = field(default_factory=dict)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class Store(Protocol):
    async def create_key(
        self,
        rate_limit: int,
        *,
        name: str | None = None,
        scopes: tuple[str, ...] = ALL_SCOPES,
        allowed_models: tuple[str, ...] | None = None,
        expires_at: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """Create a key; returns (the secret, shown once; its record)."""
        ...

    async def get_key(self, key_hash: str) -> KeyRecord | None: ...

    async def delete_key(self, key_hash: str) -> bool: ...

    async def list_keys(self) -> list[KeyRecord]: ...

    async def close(self) -> None: ...
