"""The rate-limit algorithm: a sliding 60 s window counted in 1 s buckets.

Why not plain GCRA / token bucket: the issue asks for a burst of up to
``limit`` *and* never more than ``limit`` in any 60 s window. A bucket that
refills continuously cannot give both (after a full burst it admits another
request one emission interval later, so up to ``2*limit-1`` fit in the first
minute). Counting admitted requests per second over the last 61 buckets is a
sound over-estimate of the requests in the trailing 60 s, so the guarantee
holds exactly; the price is that a slot frees up 60-61 s after its request
instead of exactly 60 s. State per key is at most 61 small integers.

This module is the reference implementation: the SQLite store calls it inside
its transaction, the Redis store runs the same steps in Lua (``redis.py``),
and both are held to the same tests.
"""

from __future__ import annotations

import math

from shared.store.base import WINDOW_SECONDS, RateDecision

Buckets = dict[int, int]


def charge_window(buckets: Buckets, limit: int, now: float, cost: int = 1) -> tuple[Buckets, RateDecision]:
    """Charge ``cost`` requests at ``now``; returns the new (pruned) buckets and the decision.

    ``cost=0`` peeks: the decision says whether one more request would pass, nothing is recorded.
    """
    current = math.floor(now)
    oldest = current - WINDOW_SECONDS
    live = {b: n for b, n in buckets.items() if b >= oldest and n > 0}
    count = sum(live.values())
    allowed = count + max(cost, 1) <= limit
    if allowed and cost > 0:
        live[current] = live.get(current, 0) + cost
        count += cost
    return live, RateDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, limit - count),
        reset_after=(max(live) + WINDOW_SECONDS + 1 - now) if live else 0.0,
        retry_after=0.0 if allowed else _retry_after(live, count, limit, now),
    )


def _retry_after(live: Buckets, count: int, limit: int, now: float) -> float:
    """Seconds until enough old buckets leave the window for one more request."""
    must_expire = count - limit + 1
    freed = 0
    for b in sorted(live):
        freed += live[b]
        if freed >= must_expire:
            return max(0.0, b + WINDOW_SECONDS + 1 - now)
    return 0.0


def encode_buckets(buckets: Buckets) -> str:
    """Compact text form for storage: ``"1700000000:3,1700000001:1"``."""
    return ",".join(f"{b}:{n}" for b, n in buckets.items())


def decode_buckets(text: str | None) -> Buckets:
    if not text:
        return {}
    out: Buckets = {}
    for part in text.split(","):
        b, _, n = part.partition(":")
        out[int(b)] = int(n)
    return out
