"""Deliver organic-scoring payloads from the durable outbox to the validator's ``/scoring``.

At-least-once, oldest first: the lease holder (one forwarder across every API
worker and host) posts the head of the outbox, removes it only after a 2xx, and
on failure waits with exponential backoff and full jitter before retrying the
same payload, so order is kept. The backoff is the fleet's (kept in the store, as
is the count of a payload's failed tries below): a new lease holder goes on with it. A payload the validator rejects as malformed
(its 400/422, or a 413 from anyone) is dropped, told as a run (``malformed``): it would block the queue forever. So is one
the validator fails on (its 500, or a post that times out) ``CRASH_ATTEMPTS`` times in a row, once it takes a
payload behind it and fails on it once more: payloads behind it failing alike are a validator down, and all
are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from loguru import logger

from api.delivery_outage import DeliveryOutage
from shared.aio import wait_event
from shared.http import BODY_TIMEOUT_S
from shared.jsonutil import dumpb
from shared.logging import printable
from shared.miner_client import MinerClient, MinerError
from shared.store.base import StoreUnavailable
from shared.store.outage import OUTAGE_LOG_EVERY_S, OutageLog, OutageTeller, Voice
from shared.store.outbox import Outbox, OutboxItem, Pace, Stored

POISON_STATUSES = {400, 413, 422}
OUTAGE_STATUSES = {502, 503, 504}  # a validator away (or behind, 503) whatever it is sent: never a payload's fault
# A payload the validator fails on (a 5xx but those: its bug, which this payload may trigger) this many times in a
# row is tried no more once the validator takes the payload behind it: it was retried for good, oldest first, and
# no payload after it was ever delivered. One behind it failing alike is a validator broken for all: all are kept.
CRASH_ATTEMPTS = 5
PROBES = 4  # payloads behind it it also fails on, passed over to find one it takes (a run of them: one miner's answers)
REFUSED_STATUSES = {401, 403}  # the validator does not accept our signature: a setting to fix, said out loud
SIGNATURE_CODES = frozenset({"MalformedAuth"})  # a 400 about our signature's headers, not about the payloads
REFUSAL_WARNING_EVERY = 60.0
MAX_UNSTORED = 10_000  # payloads kept in memory while the store refuses their commit (then oldest dropped)
# ... and their JSON's size: by count alone, 10,000 payloads of long prompts and answers were GBs in each worker
MAX_UNSTORED_BYTES = 64 << 20
MAX_POST_SECONDS = 10.0
# A post's time grows with its body, as if the link carried this much a second at least (512 kbit/s): bound by
# the lease alone (5 s by default), a payload of a few MB never reached a validator over a thinner link, and every
# payload behind it waited for good. Never past the validator's own wait for a body (``BODY_TIMEOUT_S``: a 408).
SLOWEST_LINK_BYTES_PER_S = 64 << 10
BATCH_BYTES = 512 << 10  # a delivery's JSON array (or its one larger payload); the validator takes up to 16 MiB
GROUP_COMMIT_SECONDS = 0.02
MAX_COMMIT_DELAY = 5.0  # seconds at most between the retries of a commit the store refused (doubling up to it)
LINGER_SECONDS = 0.25  # a delivery waits this long for a fuller batch: one POST per request was the
# API's largest background cost at low concurrency, and scoring is not in a hurry


Waiting = tuple[dict[str, Any], "asyncio.Future[None]", int]  # a payload, its commit's future, its size (0: unknown)


class OutboxForwarder:
    def __init__(
        self,
        outbox: Outbox,
        client: MinerClient,
        validator_url: str,
        validator_hotkey: str,
        *,
        lease_seconds: float = 10.0,
        batch: int = 128,
        batch_bytes: int = BATCH_BYTES,
        linger: float = LINGER_SECONDS,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        rng: random.Random | None = None,
        max_unstored_bytes: int = MAX_UNSTORED_BYTES,
        max_commit_delay: float = MAX_COMMIT_DELAY,
        voice: Voice | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.validator_url = validator_url
        self.validator_hotkey = validator_hotkey
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.batch_bytes = batch_bytes
        self._backlog = False
        self.linger = linger
        self._stored = 0  # payloads committed since the last delivery pass (fills the linger early)
        self._full = asyncio.Event()
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng or random.Random()
        self._refusal_warned_at = -REFUSAL_WARNING_EVERY
        # A small post ends well inside the lease, renewed before each one (and during a longer one: ``_post``):
        # another worker must never find it expired while this one is still posting.
        self.post_timeout = min(MAX_POST_SECONDS, lease_seconds / 2)
        self.batch_limit = batch  # halved while the validator's queue refuses a whole batch (503), grown back after
        self.unstored_dropped = 0  # payloads lost because the store refused them for too long
        self._commit_failures = 0
        # A store that refuses writes fails each commit retry and each delivery pass: a few lines, not one each.
        self.commit_outage = OutageLog("scoring outbox: payloads not stored yet")
        # A pass every worker runs on the same store: with ``WORKERS`` > 1, told by one for all (``api.fleet``).
        self.pass_outage = OutageLog("scoring outbox unreachable", voice=voice)
        # A full outbox drops at every commit while the validator is away: a WARNING each was a line per request.
        # The run is the store's (``Stored``): told once whichever worker's commits drop (each told its own).
        self.full = OutageTeller("scoring outbox full (OUTBOX_MAX_ITEMS or OUTBOX_MAX_BYTES): the oldest payloads "
                                 "are dropped, never scored", back="it has room again")
        self.full_dropped = 0  # payloads this worker's commits dropped from the full outbox, since start
        # Payloads the validator rejects as malformed (an API and a validator of releases that disagree): a WARNING
        # each delivery was several lines a second. A run: its first WARNING, a line a minute, an INFO line after a
        # minute with none (``rejected`` and ``sn1_api_outbox_rejected`` count every payload).
        self.malformed = OutageLog("validator rejects scoring payloads as malformed: dropped, never scored",
                                   back="it takes them again", settle=OUTAGE_LOG_EVERY_S)
        # A validator down, or answering 5xx: each post was a DEBUG line, so the outbox grew with nothing said.
        # Told once per outage across every worker: the lease may move in it (``DeliveryOutage``).
        self.delivery_outage = DeliveryOutage(outbox, f"scoring payloads not delivered to the validator at "
                                              f"{validator_url}", back="it takes them again")
        self._holding = False  # whether this worker held the lease at its last try
        self.failures = 0  # failed passes in a row: the fleet's, as the store counts them (``Pace``)
        # When the next pass may post (Unix seconds): the fleet's backoff, kept in the store beside the outage
        # (a new lease holder began it again from ``base_delay``: a validator down was posted to once a lease)
        self._resume_at = 0.0
        self._backing_off = False  # this worker's own pass failed: it does not renew the lease until ``_resume_at``
        self.delivered = 0  # payloads the validator took; those it rejected are in ``rejected``, not here too
        self.delivery_failures = 0
        self.stale = 0  # payloads the validator took and dropped as older than it scores, since start
        # An outage's backlog is delivered stale batch after batch: a WARNING each was thousands within a minute.
        self.stale_told = OutageLog("validator drops scoring payloads as older than it scores (its "
                                    "ORGANIC_MAX_AGE_SECONDS): not scored", back="it takes them fresh again",
                                    settle=OUTAGE_LOG_EVERY_S)
        self.rejected = 0  # payloads dropped as the validator would not take them (malformed, or failed on)
        self._failed_on: dict[str, int] = {}  # payloads of this pass the validator failed on (a 500, a timeout): how
        # often in a row, as the store counts (every worker's posts; one's own count made 5 tries 5 a lease holder)
        self._failed_why = ""  # the last such failure
        self._wake = asyncio.Event()
        # waiting for the group commit: each payload, its future, its JSON's size (0: not measured, as it needs
        # only be while the store refuses them)
        self._pending: list[Waiting] = []
        self.max_unstored_bytes = max_unstored_bytes
        self.max_commit_delay = max_commit_delay
        self._committer: asyncio.Task[None] | None = None

    async def sink(self, payload: dict[str, Any]) -> None:
        """Durably enqueue one payload; returns once it is stored (raises the store's error)."""
        await asyncio.shield(self.enqueue(payload))

    def enqueue(self, payload: dict[str, Any]) -> asyncio.Future[None]:
        """Queue one payload for the next group commit (the API's payload sink); the future says
        when it is stored. A failed commit is logged here, so nobody has to wait on the future.

        Group commit: payloads settled within ``GROUP_COMMIT_SECONDS`` of each
        other share one store transaction (a transaction per request was the
        API's largest cost after HTTP itself).
        """
        done = asyncio.get_running_loop().create_future()
        self._pending.append((payload, done, 0))
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_soon())
        return done

    async def _commit_soon(self, delay: float = GROUP_COMMIT_SECONDS) -> None:
        """The group commit, ``delay`` from now; a committer cancelled while it waits still commits its group. One
        closed unrun (its task dropped with its event loop, as a test's teardown may) commits nothing: nothing can
        be awaited then, and a failed commit's retry found no loop to run on (a RuntimeError the interpreter
        printed as an unraisable exception)."""
        try:
            await asyncio.sleep(delay)
        except GeneratorExit:
            self._committer = None
            raise
        except BaseException:
            self._committer = None
            await self._commit()
            raise
        self._committer = None
        await self._commit()

    async def _commit(self, *, final: bool = False) -> None:
        group, self._pending = self._pending, []
        if not group:
            return
        try:
            stored = await self.outbox.store([payload for payload, _, _ in group], time.time())
        except Exception as e:  # noqa: BLE001 - kept for the next try (a locked SQLite, Redis for a moment)
            self._keep_unstored(group, e, final=final)
            return
        self._commit_failures = 0
        self.commit_outage.ok()
        self.full_dropped += stored.dropped
        self._tell_full(stored, len(group))
        for _, done, _ in group:
            if not done.done():
                done.set_result(None)
        self._stored += len(group)
        if self._stored >= self.batch:
            self._full.set()
        self._wake.set()

    def _tell_full(self, stored: Stored, group: int) -> None:
        """The run of drops of a full outbox, as the store says: every worker's commits drop while the validator
        is away, and each told its own run, its own drops "since start" (with ``WORKERS=4``, four WARNINGs, four
        lines a minute, four counts that were none of them the ``sn1_api_outbox_dropped`` of the metrics)."""
        why = (f"dropped {stored.dropped} oldest payload(s) to store {group} ({stored.total} in all; is the validator "
               "taking them? see sn1_api_outbox_dropped)")
        if stored.run == "began":
            self.full.began(0.0, why)
        elif stored.run == "again":
            self.full.still(stored.count, stored.seconds, why)
        elif stored.run == "ended":
            self.full.ended(stored.seconds, stored.count)

    def _keep_unstored(self, group: list[Waiting], error: Exception, *, final: bool) -> None:
        """A failed group commit: the payloads wait in memory (oldest first, bounded by count and by size) and
        the commit is tried again with backoff; they were thrown away with one warning line. At shutdown
        (``final``) they are lost, and said to be."""
        self._pending = group + self._pending
        if final:
            logger.error("scoring outbox: {} payload(s) not stored at shutdown, lost: {}", len(self._pending), error)
            self._fail_waiters(self._pending, error)
            self.unstored_dropped += len(self._pending)
            self._pending = []
            return
        kept = self._within_memory()
        if kept < len(self._pending):
            lost, self._pending = self._pending[:-kept], self._pending[-kept:]
            self.unstored_dropped += len(lost)
            self._fail_waiters(lost, error)
            logger.error("scoring outbox: the store refused commits too long; dropped {} oldest payload(s) held in "
                         "memory (at most {} and {} MiB of them)", len(lost), MAX_UNSTORED,
                         self.max_unstored_bytes >> 20)
        self._commit_failures += 1
        delay = min(self.max_commit_delay, GROUP_COMMIT_SECONDS * 2 ** min(self._commit_failures, 10))
        self.commit_outage.failed(f"{len(self._pending)} payload(s) waiting in memory, retried every {delay:.2f} s "
                                  f"at most ({error})")
        if self._committer is None:
            self._committer = asyncio.ensure_future(self._commit_soon(delay))

    def _within_memory(self) -> int:
        """How many of the newest payloads waiting fit ``MAX_UNSTORED`` and ``max_unstored_bytes`` (the newest
        always does). Each is measured once, here: only while the store refuses them."""
        self._pending = [(p, done, size or len(dumpb(p))) for p, done, size in self._pending]
        held = kept = 0
        for _, _, size in reversed(self._pending):
            held += size
            if kept and (kept == MAX_UNSTORED or held > self.max_unstored_bytes):
                break
            kept += 1
        return kept

    @staticmethod
    def _fail_waiters(group: list[Waiting], error: Exception) -> None:
        for _, done, _ in group:
            if not done.done():
                done.set_exception(error)
                done.exception()  # retrieved: an enqueue nobody awaits must not warn at GC

    def _pace(self) -> Pace:
        """The backoff after a failed pass: full jitter, drawn now (``Pace.delay``)."""
        return Pace(self.base_delay, self.max_delay, self.rng.uniform(0.0, 1.0))

    def _failed_here(self) -> None:
        """A pass that failed on the store itself (or a bug): backed off by this worker alone, the store being
        where the fleet's backoff is kept."""
        self.failures += 1
        self._resume_at = time.time() + self._pace().delay(self.failures)
        self._backing_off = True

    async def deliver(self, item: OutboxItem) -> bool:
        """True when the payload is done with (accepted, or rejected as malformed)."""
        try:
            status, body = await self._post(len(item.raw), lambda timeout: self.client.post_json(
                self.validator_url, "/scoring", item.payload, self.validator_hotkey, timeout=timeout))
        except MinerError as e:
            if e.kind == "timeout":  # too large for the link, or one the validator hangs on: as a 500
                await self._count_failed_on(item, f"its post timed out after {self.timeout_for(len(item.raw)):.0f} s")
            await self._undelivered(str(e))
            return False
        if 200 <= status < 300:
            await self.delivery_outage.ok()
            self.malformed.ok()
            self.delivered += 1
            return True
        if malformed_verdict(status, body):
            await self.delivery_outage.ok()
            self.rejected += 1
            self.malformed.failed(f"rejected scoring payload {item.id} (HTTP {status}; "
                                  f"{describe_rejected([{'index': 0, 'error': _error_message(body)}], [item])})")
            return True
        if failed_on_it(status):
            await self._count_failed_on(item, f"HTTP {status}")
        if not self._refused(status, body):
            await self._undelivered(f"HTTP {status}")
        logger.debug("validator answered HTTP {} for payload {}", status, item.id)
        return False

    def timeout_for(self, size: int) -> float:
        """A post of ``size`` bytes: ``post_timeout``, and the time the body takes over the slowest link we
        serve (``SLOWEST_LINK_BYTES_PER_S``), up to the validator's own wait for it."""
        return self.post_timeout + min(BODY_TIMEOUT_S, size / SLOWEST_LINK_BYTES_PER_S)

    async def _post(self, size: int, post: Callable[[float], Awaitable[tuple[int, Any]]]) -> tuple[int, Any]:
        """``post(timeout)``, the lease renewed every third of it meanwhile: a post may outlast the lease now
        (a large body on a thin link), and another worker must not find it expired and post too. Lost (taken
        over after a stall), the post is given up: ``MinerError``; the store failing raises its error."""
        task = asyncio.ensure_future(post(self.timeout_for(size)))
        try:
            while not (await asyncio.wait({task}, timeout=self.lease_seconds / 3))[0]:
                if not await self._lease():
                    raise MinerError("another API worker took the delivery lease during this post", kind="lease")
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _undelivered(self, why: str) -> None:
        """A post the validator did not take (down, unreachable, 5xx; a refused signature has its own WARNING)."""
        if why == "HTTP 503":
            why += " (its scoring queue is full: the validator is behind)"
        await self.delivery_outage.failed(f"{why}; the payloads are kept in the outbox and retried (is the validator "
                                          "up? see sn1_api_outbox_depth)")

    def _refused(self, status: int, body: Any) -> bool:
        """Whether the answer refuses this API rather than the payloads: our signature (401/403, or a 400
        ``MalformedAuth``), or a 400/422 that is not the validator's at all (a proxy's page). Each stops all
        organic scoring while the outbox grows, for a setting to fix: a WARNING a minute names it, and the
        payloads are kept (such a 400 was taken for the validator's verdict on them, and every payload in the
        outbox was dropped, a WARNING each)."""
        if status not in REFUSED_STATUSES and (status not in POISON_STATUSES or malformed_verdict(status, body)):
            return False
        now = asyncio.get_running_loop().time()
        if now - self._refusal_warned_at >= REFUSAL_WARNING_EVERY:
            self._refusal_warned_at = now
            self._warn_refused(status, body)
        return True

    def _warn_refused(self, status: int, body: Any) -> None:
        message = str(_error_message(body))[:300]
        if status not in REFUSED_STATUSES and not _validator_error(body):
            logger.warning("the server at VALIDATOR_API {} answers this API's scoring payloads with HTTP {}, and not "
                           "in the validator's words (a proxy's page? {}): is it the validator's address, http or "
                           "https, and port? payloads are kept and retried", self.validator_url, status,
                           _excerpt(body))
        elif status not in REFUSED_STATUSES:  # MalformedAuth: it cannot read our signature's headers at all
            logger.warning("the validator at {} cannot read this API's signature (HTTP {}: {}): do the API and the "
                           "validator run the same sn1 version, and does anything between them rewrite headers? "
                           "payloads are kept and retried", self.validator_url, status, message)
        elif message.startswith(("StaleRequest", "SignedBeforeStart")):  # a clock to fix (it says by how much)
            logger.warning("the validator at {} refuses this API's scoring payloads as stale (HTTP {}: {}); "
                           "payloads are kept and retried", self.validator_url, status, message)
        else:
            logger.warning("the validator at {} refuses this API's scoring payloads (HTTP {}: {}): check that its "
                           "API_HOTKEYS lists this API's hotkey {} and that VALIDATOR_HOTKEY ({}) is the validator's; "
                           "payloads are kept and retried", self.validator_url, status, message[:200],
                           self.client.signer.hotkey, self.validator_hotkey)

    async def deliver_batch(self, items: list[OutboxItem]) -> bool | None:
        """Post several payloads as one JSON array (one HTTP call instead of one per answer).

        True: all done with (the validator accepted them or rejected single items as malformed);
        False: retry later; None: the batch as a whole was refused, deliver one by one.
        """
        array = ("[" + ",".join(i.raw for i in items) + "]").encode()
        try:
            status, body = await self._post(len(array), lambda timeout: self.client.post_json_bytes(
                self.validator_url, "/scoring", array, self.validator_hotkey, timeout=timeout))
        except MinerError as e:
            if e.kind == "timeout":
                return None  # one by one: one payload the validator hangs on must not hold the batch for good
            await self._undelivered(str(e))
            return False
        if 200 <= status < 300:
            await self.delivery_outage.ok()
            rejected = body.get("rejected") if isinstance(body, dict) else None
            taken = len(items)  # done with, all of them; the validator took all but those it rejected
            if rejected and isinstance(rejected, list):
                taken = max(0, taken - len(rejected))
                self.rejected += len(rejected)
                self.malformed.failed(f"rejected {len(rejected)} of {len(items)} scoring payloads "
                                      f"({describe_rejected(rejected, items)})")
            else:
                self.malformed.ok()
            stale = body.get("stale") if isinstance(body, dict) else None
            if isinstance(stale, int) and stale > 0:  # an outage's backlog: said here too, where it was kept
                self.stale += stale
                self.stale_told.failed(f"{stale} of {len(items)} in a delivery ({self.stale} since start)")
            else:
                self.stale_told.ok()
            self.batch_limit = min(self.batch, self.batch_limit * 2)
            self.delivered += taken
            return True
        if malformed_verdict(status, body) or failed_on_it(status):
            return None  # one by one: the payloads before the one it cannot take are delivered (a 500: counted)
        if status == 503 and len(items) > 1:  # the validator's queue cannot take this many at once: fewer next
            self.batch_limit = max(1, len(items) // 2)
        if not self._refused(status, body):
            await self._undelivered(f"HTTP {status}")
        logger.debug("validator answered HTTP {} for a batch of {}", status, len(items))
        return False

    async def step(self) -> int:
        """One pass: deliver what we can in order; returns how many were delivered."""
        if not await self._lease() or not await self._due():
            return 0
        peeked = await self.outbox.peek(self.batch_limit)
        items = self._within_bytes(peeked)
        self._backlog = len(peeked) == self.batch_limit or len(items) < len(peeked)  # more waits behind these
        self._failed_on = {i.id: i.attempts for i in items if i.attempts}  # delivered, dropped: forgotten
        if len(items) > 1 and items[0].id not in self._failed_on:  # a batch with it fails too: it goes alone
            outcome = await self.deliver_batch(items)
            if outcome is not None:
                return await self._settle_pass([i.id for i in items] if outcome else [])
        delivered: list[str] = []
        set_aside: OutboxItem | None = None  # failed on too often: the next one says if the validator fails on all
        probes = PROBES
        try:
            for item in items:
                if not await self._lease():
                    break  # renewed before each post; lost (a stall past it): another worker delivers now
                failed_on = self._failed_on.get(item.id, 0)
                if not await self.deliver(item):
                    if item is not items[-1] and set_aside is None and self._gave_up_on(item):
                        set_aside = item
                        continue
                    if item is not items[-1] and set_aside is not None and probes and (
                            self._failed_on.get(item.id, 0) > failed_on):
                        probes -= 1  # it fails on this one too (kept, tried again as the head): one further
                        continue
                    await self._pass_failed()
                    break
                delivered.append(item.id)
                self.failures = 0
                if set_aside is not None:
                    if not await self._last_try(set_aside):
                        await self._pass_failed()
                        break
                    delivered.append(set_aside.id)
                    set_aside = None
        finally:
            if delivered:  # one transaction per pass; a crash before it only means a re-delivery
                await self.outbox.ack_many(delivered)
        return len(delivered)

    async def _count_failed_on(self, item: OutboxItem, why: str) -> None:
        """One more time the validator failed on ``item``, counted in the store: every lease holder's tries count
        (each worker counted its own, from 0 again whenever the lease moved or the API restarted)."""
        self._failed_on[item.id] = max(await self.outbox.failed_on(item.id), self._failed_on.get(item.id, 0) + 1)
        self._failed_why = why

    def _gave_up_on(self, item: OutboxItem) -> bool:
        """Whether the validator failed on ``item`` (a 500, a timeout) ``CRASH_ATTEMPTS`` times in a row, whichever
        workers posted it."""
        return self._failed_on.get(item.id, 0) >= CRASH_ATTEMPTS

    async def _last_try(self, item: OutboxItem) -> bool:
        """The validator took the payload behind ``item``: ``item`` once more, now. Failed on again (a 500), it is
        the payload the validator fails on, not an outage (nor one 500 in a few): dropped, said once with its
        request id to find the validator's error by. True when done with (taken, or dropped); False: kept."""
        times = self._failed_on.get(item.id, 0)
        if not await self._lease():
            return False
        if await self.deliver(item):
            return True
        if self._failed_on.get(item.id, 0) == times:
            return False  # not a 500 nor a timeout this time: the validator away, behind, or refusing us
        self.rejected += 1
        logger.warning("validator failed on scoring payload {} {} times in a row (the last: {}), and took one "
                       "behind it: dropped, never scored ({}; see the validator's log for its error)", item.id,
                       times + 1, self._failed_why, describe_rejected([{"index": 0, "error": self._failed_why}],
                                                                       [item]))
        return True

    async def _pass_failed(self) -> None:
        """A pass delivered nothing: the fleet's backoff grows, in the store, so that the next lease holder goes on
        with it (each worker kept its own: the next holder posted at once and began again from ``base_delay``).
        This worker does not renew the lease while it backs off: a worker that cannot reach the validator (a
        network split) holds the fleet's deliveries no longer than a lease, and the one that takes the lease
        posts when the backoff is over."""
        self.delivery_failures += 1
        self.failures, self._resume_at = await self.delivery_outage.backoff(self._pace())
        self._backing_off = True

    async def _due(self) -> bool:
        """Whether the fleet's backoff lets this lease holder post now (no store round trip while deliveries
        succeed: ``DeliveryOutage.resume_at``)."""
        now, self._resume_at = time.time(), await self.delivery_outage.resume_at()
        if self._resume_at > now + 2 * self.max_delay:  # set by a host whose clock is ahead (or ours stepped back)
            self._resume_at = 0.0  # waited for, it held the fleet's deliveries that long
        return self._resume_at <= now

    async def _pause(self) -> None:
        """Wait between passes: after this worker's own failure, until the fleet's next attempt, the lease not
        renewed meanwhile (another worker may take it); holding the lease, until that attempt too, renewing it
        every third of a lease (it posts then); else a third of a lease, or a payload stored (a batch lingering
        to fill)."""
        left = self._resume_at - time.time()
        if self._backing_off:
            self._backing_off = False
            if left > 0:
                await asyncio.sleep(left)  # payloads stored meanwhile wait for it too: they would fail alike
        elif self._holding and left > 0:
            await asyncio.sleep(min(left, self.lease_seconds / 3))
        elif await wait_event(self._wake, self.lease_seconds / 3):
            await self._linger()

    async def _lease(self) -> bool:
        """Take or renew the lease; taking it over, this worker may be the one to end an outage another began."""
        holding = await self.outbox.acquire_lease(self.holder, self.lease_seconds)
        if holding and not self._holding:
            self.delivery_outage.took_over()
        self._holding = holding
        return holding

    def _within_bytes(self, items: list[OutboxItem]) -> list[OutboxItem]:
        """The oldest items whose JSON fits ``batch_bytes`` (always at least one)."""
        size = 0
        for i, item in enumerate(items):
            size += len(item.raw) + 1
            if size > self.batch_bytes and i:
                return items[:i]
        return items

    async def _linger(self) -> None:
        """Let a batch fill: up to ``linger`` seconds, less once ``batch`` payloads are stored."""
        if self.linger > 0 and self._stored < self.batch:
            self._full.clear()
            await wait_event(self._full, self.linger)
        self._stored = 0

    async def _settle_pass(self, delivered: list[str]) -> int:
        if not delivered:
            await self._pass_failed()
            return 0
        await self.outbox.ack_many(delivered)
        self.failures = 0
        return len(delivered)

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    delivered = await self.step()
                except StoreUnavailable as e:
                    self.pass_outage.failed(e)
                    delivered = 0
                    self._failed_here()
                except Exception as e:  # noqa: BLE001 - the forwarder must outlive any one failure
                    logger.opt(exception=e).error("scoring outbox: delivery pass failed; retrying with backoff")
                    delivered = 0
                    self._failed_here()
                else:
                    self.pass_outage.ok()
                if delivered and self._backlog:
                    continue  # a backlog: drain it at full batches
                await self._pause()
        finally:
            try:
                committer = self._committer
                if committer is not None:  # its sleep cut short: it commits what waits, now
                    committer.cancel()
                    await asyncio.gather(committer, return_exceptions=True)
                    # cancelled before it ever ran, it never cleared itself: a next run's payloads would
                    # wait for a commit no one schedules (the final one below stores what waits now)
                    self._committer = None
                await self._commit(final=True)  # payloads still waiting for their group commit
                self._holding = False
                await self.outbox.release_lease(self.holder)
            except StoreUnavailable:
                pass


def describe_rejected(rejected: Any, items: list[OutboxItem], *, limit: int = 3) -> str:
    """The first rejections as ``rid=... why=...``: what the operator needs to find the request and
    the cause (a count alone named neither). Only rejected payloads are parsed, so this costs nothing
    when all is well."""
    parts = []
    for entry in rejected[:limit] if isinstance(rejected, list) else []:
        index = entry.get("index") if isinstance(entry, dict) else None
        rid = None
        if isinstance(index, int) and 0 <= index < len(items):
            with contextlib.suppress(ValueError, AttributeError):  # an unreadable payload has no id to give
                rid = items[index].payload.get("request_id")
        why = entry.get("error") if isinstance(entry, dict) else entry
        parts.append(f"rid={rid} why={str(why)[:200]}")
    more = len(rejected) - limit if isinstance(rejected, list) and len(rejected) > limit else 0
    return "; ".join(parts) + (f"; and {more} more" if more else "")


def failed_on_it(status: int) -> bool:
    """Whether the validator failed while taking the payloads (a 5xx that is not ``OUTAGE_STATUSES``): the
    payloads' fault perhaps (one may make it fail), perhaps not (a validator broken for all)."""
    return status >= 500 and status not in OUTAGE_STATUSES


def malformed_verdict(status: int, body: Any) -> bool:
    """Whether an answer says the payloads themselves cannot be taken (dropped: sent again, they fail again).
    A 413 does, whoever answers it (too large for the way to the validator, a proxy's limit too). A 400 or 422
    does only in the validator's own error shape, and not about our signature's headers (``MalformedAuth``: a
    validator of another version); a proxy's page (nginx's "plain HTTP request was sent to HTTPS port") says
    nothing of them."""
    if status == 413:
        return True
    if status not in POISON_STATUSES:
        return False
    return _validator_error(body) and body["error"].get("code") not in SIGNATURE_CODES


def _validator_error(body: Any) -> bool:
    """An error in the shape every answer of the validator's has (``{"error": {"message": ..., ...}}``)."""
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]


def _excerpt(body: Any) -> str:
    return "its body is not JSON" if body is None else f"its body: {printable(str(body)[:200])}"


def _error_message(body: Any) -> Any:
    err = body.get("error") if isinstance(body, dict) else None
    return err.get("message") if isinstance(err, dict) else body
