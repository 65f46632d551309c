"""The shared store: keys, rate limits and usage for every API worker and host.

``open_store(STORE_URL, namespace=STORE_NAMESPACE)`` picks the backend:
``sqlite:///path`` (one host, the default) or ``redis://host:port/db`` (a fleet).
"""

from __future__ import annotations

from shared.store.base import RedisLink, RedisLinks, Store, StoreUnavailable, is_redis

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(url: str, *, namespace: str = "sn1", links: RedisLinks | None = None, name: str | None = None) -> Store:
    """Build the store named by ``STORE_URL``; no I/O happens until the first call (Redis) or here (SQLite). On
    Redis, on the process's key link (``links``), or on a link of its own without (named ``name`` in Redis's
    ``CLIENT LIST``)."""
    if url.startswith("sqlite:///"):
        from shared.store.sqlite import SQLiteStore

        return SQLiteStore.from_url(url)
    if is_redis(url):  # the schemes STORE_URL takes, as the other stores' openers
        from shared.store.redis import RedisStore

        return RedisStore(RedisLink.for_keys(url, name=name) if links is None else links.keys, namespace=namespace)
    raise ValueError(f"unsupported STORE_URL scheme: {url}")
