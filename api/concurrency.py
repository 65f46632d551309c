"""A key's limit on requests in flight at once (``MAX_CONCURRENT_REQUESTS_PER_KEY``, or the key's own
``max_concurrent_requests``), for every API process and host on the store.

Its request rate bounds how many requests a key starts, not how many it holds open: a key within its rate could
hold thousands of streams, each holding API memory and a miner's capacity. Chat completions, legacy completions
and responses (and a background response's events streamed again) take a slot as the key is authorized (with its
rate-limit charge) and give it back when their handler ends: a stream's when it has been sent, or when the client left (the handler is cancelled), a
failure's when it is answered; ``holds_slot`` makes that every exit path. A background response holds one only
while its request is answered (it is queued at once): what it runs after is bounded by
``MAX_BACKGROUND_RESPONSES_PER_KEY``.

The slot is taken by ``Store.authorize`` (a ``Hold`` beside the request's scope), in the same store call as the
key's lookup and rate-limit charge: no round trip of its own. Refused, a request is a 429
``concurrency_limit_exceeded`` with ``Retry-After: 1`` (a slot frees when any of the key's requests ends), not
charged to the key's request rate, and it never reached a miner, so no token is counted. Giving a slot back is
off the request's path: the slots given back within ``RELEASE_BATCH_S`` are removed together, in one store call
(one SQLite transaction, one Redis round trip), so under load a request costs no store write of its own for it.
Until then the next authorization of the same key from this process removes them itself, before it counts
(``Hold.releases``, in its one store call): on one process the count is exact, and a client that keeps to its
limit, sending its next request the moment an answer ends, is never refused. Another process (a worker, a host)
sees a slot given back up to ``RELEASE_BATCH_S`` later.

The slots are the store's (``shared/store/inflight.py``, ``Store.inflight``), each on a lease this process renews
every third of ``CONCURRENCY_LEASE_SECONDS``: a process that dies holding slots holds them no longer than one lease.
A request cancelled while its authorization is on its way back (its client left), or whose store failed after it
may have run the authorization (on Redis: an answer past the timeout, a link that dropped before the answer came
back), gives back the slot it sent, by its key's hash (the key's id is in the answer it never read; a key rotated
meanwhile is still found by its old hash for a minute): removed with the next batch, not left to its lease.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiohttp import web

from shared.aio import stopped
from shared.errors import ApiError, retry_after
from shared.store.base import Authorization, Hold, KeyRecord, Store, StoreUnavailable, concurrency_limit
from shared.store.inflight import GivenBack, InflightSlots
from shared.store.outage import OutageLog

RETRY_AFTER_S = 1  # a slot frees when any of the key's requests ends: usually within seconds
RELEASE_BATCH_S = 0.005  # slots given back within this are removed in one store call; a slot counts this much longer
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def holder_name() -> str:
    """This process, as the store names the slots it holds: host, pid and a random part (a pid comes back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class ConcurrencyLimiter:
    """This process's slots: taken and given back per request, their leases renewed by ``renew_forever``."""

    def __init__(self, slots: InflightSlots, default_limit: int, *, lease_s: float, holder: str) -> None:
        self.slots = slots
        self.default_limit = default_limit
        self.lease_s = lease_s
        self.holder = holder
        self.held: dict[str, set[str]] = {}  # key id -> the slots its requests on this process hold
        self._ids = itertools.count()
        # key hash -> its slots given back, for the next batch to remove (or the key's next authorization here)
        self._given_back: dict[str, list[GivenBack]] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._batching = False  # a batch is waiting to take ``_given_back``
        # A store down fails every batch (one each RELEASE_BATCH_S under traffic) and every renewal: told as a run
        # (a WARNING, then a line a minute, an INFO when it answers again), not a WARNING each (200 lines a second).
        self.release_outage = OutageLog(f"in-flight slots not given back (they free when their lease ends, in "
                                        f"{lease_s:g} s)")
        self.renew_outage = OutageLog(f"in-flight slots not renewed (tried again every {lease_s / 3:g} s)")

    def limit_of(self, key: KeyRecord) -> int:
        """The key's own limit, else the default; 0: none."""
        return concurrency_limit(key, self.default_limit)

    def hold(self, releases: Sequence[GivenBack] = ()) -> Hold:
        """A new slot's terms, for ``Store.authorize`` to take with the request's authorization, and the slots given
        back here that it is to remove first."""
        return Hold(holder=self.holder, slot=f"{self.holder}:{next(self._ids)}", default_limit=self.default_limit,
                    lease_s=self.lease_s, releases=tuple(g.slot for g in releases))

    async def authorize(self, store: Store, key_hash: str, scope: str | None) -> Authorization:
        """``store.authorize`` with a new slot's ``Hold``. The key's slots given back here go with it, the
        authorization's to remove from then on, no longer the batch's too: a batch that ran while the authorization
        was on its way removed them a second time. Should the authorization not remove them (the key unknown now, a
        cancel, a store that failed), they are the batch's again. A cancel before the answer was read (the client
        left), or a store that failed when it may have taken the slot all the same (``failed_may_hold``: on Redis any
        failure, a timeout or a link dropped after the script was sent), gives back the slot sent: left to its lease,
        it held one of the key's slots for a request answered 503."""
        given = self._given_back.pop(key_hash, [])
        hold = self.hold(given)
        try:
            auth = await store.authorize(key_hash, scope=scope, hold=hold)
        except asyncio.CancelledError:
            self._give_back(*given, GivenBack(key_hash, None, hold.slot))
            raise
        except StoreUnavailable:
            self._give_back(*given, *([GivenBack(key_hash, None, hold.slot)] if self.slots.failed_may_hold else []))
            raise
        if given and auth.status == "unknown":  # no key found: nothing removed
            self._give_back(*given)
        return auth

    def holding(self, request: web.Request, record: KeyRecord, slot: str) -> None:
        """``request`` holds ``slot`` (taken by its authorization): renewed from now, given back by ``holds_slot``."""
        request[SLOT] = GivenBack(record.key_hash, record.id, slot)
        self.held.setdefault(record.id, set()).add(slot)

    def _forget(self, request: web.Request) -> GivenBack | None:
        taken: GivenBack | None = request.pop(SLOT, None)
        if taken is not None and taken.key_id is not None:
            mine = self.held.get(taken.key_id)
            if mine is not None:
                mine.discard(taken.slot)
                if not mine:
                    del self.held[taken.key_id]
        return taken

    def give_back(self, request: web.Request) -> None:
        """The request's slot, if it holds one: no longer renewed at once, and removed from the store with the others
        given back within ``RELEASE_BATCH_S``, in a task of their own (a cancelled handler's ``finally`` must not wait
        on the store; a removal that fails leaves them to their lease), or by its key's next authorization here."""
        taken = self._forget(request)
        if taken is not None:
            self._give_back(taken)

    def _give_back(self, *given: GivenBack) -> None:
        for one in given:
            self._given_back.setdefault(one.key_hash, []).append(one)
        if given and not self._batching:
            self._batching = True
            task = asyncio.ensure_future(self._release_batch())
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)

    async def _release_batch(self) -> None:
        try:
            await asyncio.sleep(RELEASE_BATCH_S)
        finally:  # at shutdown too: the batch is removed, not left to its lease
            given, self._given_back, self._batching = self._given_back, {}, False
        batch = [g for slots in given.values() for g in slots]
        if not batch:  # each removed by its key's next authorization
            return
        try:
            await self.slots.release(batch)
        except StoreUnavailable as e:
            self.release_outage.failed(f"{len(batch)} slot(s): {e}")
        else:
            self.release_outage.ok()

    async def in_flight(self, key: KeyRecord) -> int:
        return await self.slots.count(key.id)

    async def renew_forever(self) -> None:
        """Every third of a lease: this process's slots renewed (a store that fails is tried again next time; two
        misses in a row still leave a third of a lease)."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.slots.renew({key_id: sorted(slots) for key_id, slots in self.held.items()}, self.lease_s)
            except StoreUnavailable as e:
                self.renew_outage.failed(e)
            else:
                self.renew_outage.ok()

    async def drain(self) -> None:
        """At shutdown: the last slots' removals finished."""
        while self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)


SLOT = web.RequestKey("sn1_concurrency_slot", GivenBack)  # the slot a request holds, to give back
LIMITER = web.AppKey("sn1_concurrency", ConcurrencyLimiter)


def busy(limit: int, in_flight: int) -> ApiError:
    """The 429 of a key at its limit of requests in flight."""
    return ApiError(429, f"Concurrency limit reached: this key may have {limit} requests in flight at once and has "
                         f"{in_flight}. Retry when one of them ends.",
                    code="concurrency_limit_exceeded", headers=retry_after(RETRY_AFTER_S))


def holds_slot(handler: Handler) -> Handler:
    """The handler of a request that takes a slot (``authenticate(..., slots=...)``): the slot is given back however
    the handler ends, a client's leaving (a cancel) included."""

    @functools.wraps(handler)
    async def held(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        finally:
            if SLOT in request:
                request.app[LIMITER].give_back(request)

    return held


async def renewing(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the slots' leases renewed while the app serves; the last removals awaited at shutdown."""
    limiter = app[LIMITER]
    task = asyncio.create_task(limiter.renew_forever())
    yield
    await stopped(task)
    await limiter.drain()
