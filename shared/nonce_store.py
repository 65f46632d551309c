"""The nonces a receiver has accepted, remembered for as long as the wall clock could take them again.

``http_auth.InMemoryNonceStore`` forgets a nonce ``retention`` seconds after it stored it, on the monotonic clock,
while freshness is judged on the wall clock. When the wall clock stepped back by more than ``retention`` less the
freshness window (NTP correcting a host that ran a minute ahead), a nonce accepted just before the step was
forgotten a minute later, and became fresh again once the wall clock caught up with it: a captured request was
accepted a second time. This store forgets a nonce only once both clocks say it is past: ``retention`` has gone by
(monotonic: a clock stepped forward and back again forgets nothing early) and the wall clock is ``retention`` past
the nonce (so it could no longer pass the freshness check). What it holds past the first is bounded by what it
accepted within one window before the step: those are held until the wall clock passes them.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from collections.abc import Callable

# Seconds between two sweeps of what is past: a nonce is forgotten up to this much later than ``retention`` says
# (kept longer, never shorter: no replay is taken for it), and a request reads one clock, not both, nor sweeps.
SWEEP_S = 1.0


class NonceStore:
    """``http_auth``'s ``NonceStore``: ``check_and_store`` is True for a (hotkey, nonce) not seen before, and
    records it. ``wall`` (ns) and ``monotonic`` (s) are injectable so tests can step the wall clock."""

    def __init__(self, retention: float, *, wall: Callable[[], int] = time.time_ns,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention  # ``http_auth.verify`` checks it covers the freshness window
        self._wall = wall
        self._monotonic = monotonic
        self._seen: set[tuple[str, int]] = set()
        self._recent: deque[tuple[float, tuple[str, int]]] = deque()  # by monotonic expiry, in insertion order
        self._held: list[tuple[int, str]] = []  # heap by nonce: past their monotonic expiry, not yet past the wall
        self._lock = threading.Lock()  # ``verify`` may run in a worker thread (a large body)
        self._next_sweep = 0.0  # monotonic: when ``_forget`` runs next

    def check_and_store(self, hotkey_ss58: str, nonce_ns: int) -> bool:
        key = (hotkey_ss58, nonce_ns)
        with self._lock:
            now = self._monotonic()
            if now >= self._next_sweep:  # once a ``SWEEP_S``, not at each request: one clock read a request, not two
                self._next_sweep = now + SWEEP_S
                self._forget(now)
            if key in self._seen:
                return False
            self._seen.add(key)
            self._recent.append((now + self.retention, key))
            return True

    def __len__(self) -> int:
        return len(self._seen)

    def _forget(self, now: float) -> None:
        """Drops what both clocks say is past; a nonce the wall clock could still take is held."""
        horizon = self._wall() - int(self.retention * 1e9)  # a nonce before it is stale by any freshness check
        recent = self._recent
        while recent and recent[0][0] <= now:
            hotkey, nonce = recent.popleft()[1]
            if nonce < horizon:
                self._seen.discard((hotkey, nonce))
            else:
                heapq.heappush(self._held, (nonce, hotkey))
        held = self._held
        while held and held[0][0] < horizon:
            nonce, hotkey = heapq.heappop(held)
            self._seen.discard((hotkey, nonce))
