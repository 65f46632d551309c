"""The rate-limit algorithm: a sliding 60 s window counted in 1 s buckets.

Why not plain GCRA / token bucket: the issue asks for a burst of up to
``limit`` *and* never more than ``limit`` in any 60 s window. A bucket that
refills continuously cannot give both (after a full burst it admits another
request one emission interval later, so up to ``2*limit-1`` fit in the first
minute). Counting admitted requests per second over the last 61 buckets is a
sound over-estimate of the requests in the trailing 60 s, so the guarantee
holds exactly; the price is that a slot frees up 60-61 s after its request
instead of exactly 60 s.

State is a ring of 61 counters plus the second of the newest one, packed in
260 bytes: decoding, summing and re-encoding it are C-level array operations
(a few microseconds), which matters because SQLite runs this on every request.
The Redis store runs the same steps in Lua on a hash (``redis.py``); both are
held to the same tests.
"""

from __future__ import annotations

import math
import struct
from array import array

from shared.store.base import WINDOW_SECONDS, RateDecision

SLOTS = WINDOW_SECONDS + 1  # buckets current-60 .. current
_HEAD = struct.Struct("<q")


def _load(state: bytes | None) -> tuple[int, array]:
    if not state:
        return 0, array("I", bytes(4 * SLOTS))
    newest = _HEAD.unpack_from(state)[0]
    counts = array("I")
    counts.frombytes(state[_HEAD.size:_HEAD.size + 4 * SLOTS])
    return newest, counts


def _shift(newest: int, counts: array, current: int) -> tuple[int, array]:
    """Move the ring so its last slot is ``current`` (a clock behind ours charges our newest slot).

    A clock more than the window behind the newest slot was stepped back (NTP): the ring is re-dated to end
    now. Kept dated, every charge went to a slot in the clock's future, so a key that had used its limit was
    refused until the clock caught up (an hour for an hour's step). Re-dated, each charge reads at least as
    recent as it was, so no window holds more than the limit."""
    gap = current - newest
    if gap <= -SLOTS:
        return current, counts
    if gap <= 0:
        return newest, counts
    if gap >= SLOTS:
        return current, array("I", bytes(4 * SLOTS))
    shifted = counts[gap:]
    shifted.frombytes(bytes(4 * gap))
    return current, shifted


def charge_window(state: bytes | None, limit: int, now: float, cost: int = 1) -> tuple[bytes, RateDecision]:
    """Charge ``cost`` requests at ``now``; returns the new state and the decision.

    ``cost=0`` peeks: the decision says whether one more request would pass, nothing is recorded. A negative
    ``cost`` gives back what the newest charges took (a reservation not spent), never below none.
    """
    newest, counts = _shift(*_load(state), math.floor(now))
    if cost < 0:
        cost = -_give_back(counts, -cost)
    count = sum(counts)
    allowed = cost < 0 or count + max(cost, 1) <= limit
    if allowed and cost > 0:
        counts[-1] += cost
        count += cost
    decision = RateDecision(
        allowed=allowed,
        limit=limit,
        remaining=max(0, limit - count),
        reset_after=_reset_after(newest, counts, now),
        retry_after=0.0 if allowed else _retry_after(newest, counts, count - limit + 1, now),
    )
    return _HEAD.pack(newest) + counts.tobytes(), decision


def _give_back(counts: array, n: int) -> int:
    """Take ``n`` back from the newest buckets (a second may have turned since they were charged); what could
    not be given back (there was less)."""
    for slot in range(len(counts) - 1, -1, -1):
        if not n:
            break
        back = min(n, counts[slot])
        counts[slot] -= back
        n -= back
    return n


def charge_each(state: bytes | None, limit: int, now: float, n: int) -> tuple[bytes, list[RateDecision]]:
    """``n`` requests at ``now``, one after another: the state and decisions of ``n`` calls of
    ``charge_window(..., cost=1)``, computed in one pass (the first ``limit - count`` pass, the
    rest are refused alike), so a turn's requests for one key cost one store write, not ``n``."""
    newest, counts = _shift(*_load(state), math.floor(now))
    count = sum(counts)
    admitted = max(0, min(n, limit - count))
    decisions = []
    if admitted:
        counts[-1] += admitted
        reset_after = _reset_after(newest, counts, now)
        decisions = [RateDecision(allowed=True, limit=limit, remaining=max(0, limit - (count + i + 1)),
                                  reset_after=reset_after, retry_after=0.0) for i in range(admitted)]
        count += admitted
    if admitted < n:
        refused = RateDecision(allowed=False, limit=limit, remaining=max(0, limit - count),
                               reset_after=_reset_after(newest, counts, now),
                               retry_after=_retry_after(newest, counts, count - limit + 1, now))
        decisions += [refused] * (n - admitted)
    return _HEAD.pack(newest) + counts.tobytes(), decisions


def _second(newest: int, slot: int) -> int:
    return newest - (SLOTS - 1) + slot


def _reset_after(newest: int, counts: array, now: float) -> float:
    """Seconds until the newest admitted request leaves the window (then the full limit is back)."""
    for slot in range(SLOTS - 1, -1, -1):
        if counts[slot]:
            return max(0.0, _second(newest, slot) + SLOTS - now)
    return 0.0


def _retry_after(newest: int, counts: array, must_expire: int, now: float) -> float:
    """Seconds until enough old buckets leave the window for one more request."""
    freed = 0
    for slot in range(SLOTS):
        freed += counts[slot]
        if counts[slot] and freed >= must_expire:
            return max(0.0, _second(newest, slot) + SLOTS - now)
    return 0.0
