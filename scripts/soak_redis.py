"""What a soak on Redis leaves on the operator's Redis: the run's namespace read key by key.

A key the API writes with no TTL stays until someone deletes it: one left per request, response, session or
deleted API key is a leak on a server the operator shares and sizes, which the API process's own RSS never
shows. So the verdict is on the keys that never expire: none of their kinds may grow in number over the run,
and their bytes may grow by less than ``PERSISTENT_BYTES_PER_REQUEST`` a request. Every other key carries a
TTL, no longer than ``LONGEST_TTL_S``, so what they hold is at most that long's writes and goes by itself.

Bytes are Redis's own count for each key (``MEMORY USAGE``), summed over the namespace: ``used_memory``
(``INFO memory``) is the whole server's, which other databases and clients on a shared Redis move too, so it
is printed but not judged.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from api.sessions import MAX_DURATION
from shared.store.responses import glob_escaped

# A persistent key's bytes may grow by less than this a request: a hash field or stream entry kept for good
# for one request in ten (~40 bytes each and more) fails it; what grows with the clock and not the requests,
# a key's usage fields of a new day (~200 bytes a key, once a day), stays far under it over a soak's
# thousands of requests.
PERSISTENT_BYTES_PER_REQUEST = 4.0
# Kept for good by design, one per API key: its record and its usage counters (made at the key's first use, so
# a key the warm-up did not reach gets its own during the run). They may number at most the keys, and the keys
# no more than before (the mix deletes every key it makes).
PER_KEY = ("usage",)
LONGEST_TTL_S = float(MAX_DURATION)  # the longest TTL any store sets: a session's longest (7 days)
SCAN_BATCH = 500


@dataclass
class RedisHeld:
    """What the namespace holds at one moment."""
    keys: dict[str, int] = field(default_factory=dict)  # by kind (the name's part after the namespace)
    persistent: dict[str, int] = field(default_factory=dict)  # keys with no TTL, by kind
    persistent_bytes: int = 0
    expiring_bytes: int = 0
    longest_ttl_s: float = 0.0
    used_memory: int = 0  # INFO memory's used_memory: the whole server's (informative)

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values())

    @property
    def total_persistent(self) -> int:
        return sum(self.persistent.values())

    @property
    def bytes(self) -> int:
        return self.persistent_bytes + self.expiring_bytes


async def read_held(redis: Any, namespace: str) -> RedisHeld:
    """Every key of ``namespace`` with its TTL and size (one pipeline a ``SCAN_BATCH`` keys; a key that
    expires between the SCAN and its reading is left out)."""
    names = [name async for name in redis.scan_iter(match=glob_escaped(namespace) + ":*", count=1000)]
    held = RedisHeld()
    keys: Counter[str] = Counter()
    persistent: Counter[str] = Counter()
    for start in range(0, len(names), SCAN_BATCH):
        batch = names[start:start + SCAN_BATCH]
        pipe = redis.pipeline(transaction=False)
        for name in batch:
            pipe.pttl(name)
            pipe.memory_usage(name)
        raw = await pipe.execute()
        for name, ttl_ms, size in zip(batch, raw[::2], raw[1::2], strict=True):
            if ttl_ms == -2 or size is None:  # gone meanwhile
                continue
            kind = _kind(name)
            keys[kind] += 1
            if ttl_ms == -1:
                persistent[kind] += 1
                held.persistent_bytes += size
            else:
                held.expiring_bytes += size
                held.longest_ttl_s = max(held.longest_ttl_s, ttl_ms / 1000)
    held.keys, held.persistent = dict(keys), dict(persistent)
    held.used_memory = int((await redis.info("memory"))["used_memory"])
    return held


def pooled_connections(clients: Sequence[Any]) -> int:
    """The sockets these Redis clients' pools hold open. redis-py keeps every connection it opened until its pool
    is closed, so a pool holds as many as the most commands it had in flight at once (at most twice
    ``REDIS_CONNECTIONS``): a burst on a loaded host opens a few more, which stay, and no request leaked them."""
    pools = [c.connection_pool for c in clients]
    return sum(conn.is_connected for p in pools for conn in (*p._available_connections, *p._in_use_connections))


def _kind(name: bytes | str) -> str:
    """The name's kind, interned: each phase's reading is kept, and a string of its own for each kind it counts
    was ~20 Python blocks a reading, which the soak's blocks trend would read as growth."""
    text = name.decode() if isinstance(name, bytes) else name
    return sys.intern(text.split(":")[1])


def problems(before: RedisHeld, after: RedisHeld, requests: int) -> list[str]:
    """Why the run left more on Redis than goes by itself (empty: nothing)."""
    keys = after.persistent.get("key", 0)
    out = [f"{n - before.persistent.get(kind, 0):+} {kind} keys with no TTL"
           for kind, n in after.persistent.items()
           if n > (keys if kind in PER_KEY else before.persistent.get(kind, 0))]
    grown = after.persistent_bytes - before.persistent_bytes
    if grown >= PERSISTENT_BYTES_PER_REQUEST * requests:
        out.append(f"keys with no TTL grew by {grown:,} bytes (limit {PERSISTENT_BYTES_PER_REQUEST * requests:,.0f})")
    if after.longest_ttl_s > LONGEST_TTL_S:
        out.append(f"a key expires in {after.longest_ttl_s:,.0f} s, past the longest any store sets ({LONGEST_TTL_S:,.0f})")
    return out


def render_held(before: RedisHeld, after: RedisHeld, requests: int) -> list[str]:
    """The report's Redis lines: before, after, delta, limit."""
    rows = [("keys with no TTL", before.total_persistent, after.total_persistent, "<= 0 a kind*"),
            ("their KB", before.persistent_bytes / 1024, after.persistent_bytes / 1024,
             f"< {PERSISTENT_BYTES_PER_REQUEST * requests / 1024:,.0f}"),
            ("keys with a TTL", before.total_keys - before.total_persistent,
             after.total_keys - after.total_persistent, ""),
            ("their KB", before.expiring_bytes / 1024, after.expiring_bytes / 1024, ""),
            ("longest TTL (h)", before.longest_ttl_s / 3600, after.longest_ttl_s / 3600,
             f"<= {LONGEST_TTL_S / 3600:g}"),
            ("used_memory MB*", before.used_memory / (1 << 20), after.used_memory / (1 << 20), "")]
    lines = [f"  {'redis ' + name:<24}{b:>10.1f}{a:>10.1f}{a - b:>+10.1f}   {limit}" if isinstance(b, float)
             else f"  {'redis ' + name:<24}{b:>10}{a:>10}{a - b:>+10}   {limit}" for name, b, a, limit in rows]
    return [*lines, f"  * {', '.join(PER_KEY)}: <= one an API key; used_memory: the whole Redis server's (INFO memory), "
                    "which others share: not judged"]
