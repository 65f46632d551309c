"""The validator's outage as every scoring forwarder of one outbox sees it: told once, whoever holds the lease.

Each forwarder kept its own ``OutageLog``: with ``WORKERS > 1`` (or several API hosts on one store) the worker
that logged ``scoring payloads not delivered ...`` could lose the outbox's lease in its backoff, and the new
holder's first delivery said nothing (it had not failed), so the WARNING run never got its recovery line; the
new holder's own failures began a second run with a second WARNING. The run now lives in the store beside the
lease (``Outbox.outage_failed``/``outage_ended``): the failure that begins it is the one WARNING, the success
that ends it the one INFO line, whichever worker each comes from.

Where the run begins and ends is the store's; its lines are ``OutageTeller``'s, as every ``OutageLog``'s.

The store may lose the run (a Redis flushed, or restarted empty, in the outage; an eviction): its WARNING then
had no end line, and read as payloads still undelivered long after the validator took them again; failures
after it began a second WARNING. Only the lease holder delivers, so a worker that failed in the run and has
held the lease since knows that nobody else ended it: it goes on with the run it saw (no second WARNING) and
ends it, counting from its own first failure when the store's start is later (a lower bound, as is the count).

Nothing costs a store round trip while deliveries succeed: a worker ends the stored run only after it failed
itself or took the lease over (a run another worker began may be on).

The run's backoff is the store's too (``backoff``, ``resume_at``): each worker kept its own count, and with
several workers the lease moved in a backoff to one that had not failed, which posted at once and began again
from ``base_delay``: in a long outage the validator saw a post about every lease (10 s), not every 60 s.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from shared.store.outage import OUTAGE_LOG_EVERY_S, OutageTeller
from shared.store.outbox import Outbox, Pace


class DeliveryOutage:
    """A run of failed deliveries shared through ``outbox``; ``what`` starts each line, ``back`` says what came
    back in the line that ends it."""

    def __init__(self, outbox: Outbox, what: str, *, back: str, every: float = OUTAGE_LOG_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.teller = OutageTeller(what, back=back, every=every)  # this worker's lines of the run
        self._clock = clock
        self._open = False  # a run may be on in the store that this worker's next success must end
        # This worker's own view of the run since it took the lease: its first failure (Unix seconds; None: it
        # has failed in none) and how many. Nobody else can have ended a run while this worker held the lease.
        self._seen_since: float | None = None
        self._seen_failures = 0

    def took_over(self) -> None:
        """This worker has just taken the lease: a run the last holder began may still be on."""
        self._open = True
        self.teller.forget()
        self._seen_since, self._seen_failures = None, 0

    async def failed(self, why: str) -> None:
        """One more failed delivery: the WARNING if it began the run; else a line a minute (``every``) from the
        worker that keeps failing (a run another worker began, and told: its minute's line from here)."""
        now = time.time()
        began = await self.outbox.outage_failed(now)
        if began and self._seen_since is None:
            self.teller.began(self._clock(), why)
        else:  # a run on, or one this worker failed in that the store lost: told as one run
            self.teller.again(self._clock(), why)
        if self._seen_since is None:
            self._seen_since = now
        self._seen_failures += 1
        self._open = True

    async def backoff(self, pace: Pace) -> tuple[int, float]:
        """A failed delivery pass: the fleet's failed passes in a row and its next attempt (Unix seconds), both
        kept in the store so that whoever holds the lease next goes on with them."""
        self._open = True  # the next success ends the backoff too
        return await self.outbox.outage_backoff(time.time(), pace)

    async def resume_at(self) -> float:
        """When the fleet's backoff lets the lease holder post (Unix seconds; 0.0: now). No round trip when no
        run can be on (this worker has neither failed nor taken the lease over since its last success)."""
        return await self.outbox.outage_resume_at() if self._open else 0.0

    async def ok(self) -> None:
        """A delivery succeeded: the INFO line ending the run if this worker is the one that ends it (nothing,
        and no store round trip, when no run can be on)."""
        if not self._open:
            return
        ended = await self.outbox.outage_ended()
        seen, count = self._seen_since, self._seen_failures
        self._open, self._seen_since, self._seen_failures = False, None, 0
        if ended is None and seen is None:  # ended by the worker that held the lease before this one
            self.teller.forget()
            return
        since, failures = ended if ended is not None else (seen, count)  # none: the store lost the run
        self.teller.ended(max(0.0, time.time() - min(since, seen or since)), max(failures, count))
