"""Organic payloads in (the logic behind ``POST /scoring``): checked, told apart from ones sent before, stored in the
scoring inbox and queued, all or nothing. ``app.scoring`` and ``scoring_http`` are its HTTP side (the signature, the
body read into payloads, the answer, and each ``IntakeRefused`` here as an OpenAI-shaped error): what is here needs no
server to test, and says nothing of statuses or headers.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger

from neurons.validator.inbox import ScoringInbox
from neurons.validator.payload import OrganicPayload
from neurons.validator.scoring import excuse_refusals
from shared.store.base import StoreUnavailable

if TYPE_CHECKING:
    from neurons.validator.app import ValidatorContext

SEEN_SIZE = 100_000


class IntakeRefused(Exception):
    """What the validator cannot take, in its own words (the exception's message); ``scoring_http.refusal`` answers
    each kind with its status, code and headers."""


class UnknownTask(IntakeRefused):
    """A payload of a task this validator does not score (a miner's own, which the API races too)."""

    def __init__(self, task: str, scored: Collection[str]) -> None:
        super().__init__(f"Unknown task {task[:64]!r}: this validator scores {', '.join(sorted(scored))}.")


class QueueFull(IntakeRefused):
    """A batch that does not fit the organic lane now (or waits behind jobs from before a restart): sent again later."""

    def __init__(self) -> None:
        super().__init__("Scoring queue is full; retry later.")


class InboxRefused(IntakeRefused):
    """The scoring inbox could not store the batch (a full or read-only disk): sent again later."""

    def __init__(self) -> None:
        super().__init__("The validator could not store these scoring payloads (its disk may be full); retry later.")


class RecentPayloads:
    """The identities of the last ``size`` payloads accepted: a payload sent again (its 202 was lost on
    the way back, so the API's forwarder retried) is acknowledged and not scored a second time. The
    validator's inbox keeps a copy on disk (``ScoringInbox.seen``), so a restart forgets none of them."""

    def __init__(self, size: int = SEEN_SIZE, restored: list[tuple[Any, ...]] | None = None) -> None:
        self.size = size
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        for identity in restored or ():
            self.add(identity)

    def __contains__(self, identity: tuple[Any, ...] | None) -> bool:
        return identity is not None and identity in self._seen

    def add(self, identity: tuple[Any, ...] | None) -> None:
        if identity is None:
            return
        self._seen[identity] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)

    def pushed_out(self, count: int) -> list[tuple[Any, ...]]:
        """The oldest identities that adding ``count`` new ones will push out (the inbox forgets them too)."""
        return list(itertools.islice(self._seen, max(0, len(self._seen) + count - self.size)))


def check_task(payload: OrganicPayload, tasks: Collection[str]) -> OrganicPayload:
    """``payload`` if it is of one of ``tasks`` (those this validator scores, its registry's), else ``UnknownTask``.
    One of another task was taken with a 202 and dropped when its turn came, at DEBUG: the API's outbox counted it
    delivered and nobody learnt it went unscored. Now it is refused (in a batch, a ``rejected`` item), and the API's
    forwarder drops it as it drops any payload the validator refuses, instead of sending it again."""
    if payload.task not in tasks:
        raise UnknownTask(payload.task, tasks)
    return payload


async def _enqueue(ctx: ValidatorContext, jobs: list[Any], identities: set[Any]) -> None:
    """All or nothing: a batch that does not fit (by count or by bytes, or behind jobs from before a restart
    still waiting on disk: a batch of repeats alone is still taken) is ``QueueFull`` and is retried whole; one the
    inbox cannot store is ``InboxRefused``. The jobs and the
    identities new to the seen-list are on disk before they are queued, and before the 202."""
    queue = ctx.scoring_queue
    if (jobs and ctx.inbox is not None and ctx.inbox.waiting) or not queue.room_for(jobs):
        raise QueueFull
    new = [i for i in identities if i is not None]
    if ctx.inbox is not None:
        try:
            await ctx.inbox.accept(jobs, new, ctx.seen.pushed_out(len(new)))
        except StoreUnavailable:
            raise InboxRefused from None
    for job in jobs:
        queue.put_nowait(job)
    for identity in new:
        ctx.seen.add(identity)


async def queue_new(ctx: ValidatorContext, payloads: list[OrganicPayload], signer: str) -> tuple[int, int, int]:
    """``_queue_new_now``, one POST at a time while the inbox writes (its write is awaited in a thread), and
    shielded: an API that hangs up mid-write (its handler cancelled) must not leave jobs stored but neither
    queued nor remembered as seen (scored after the next restart, and again when it sends them again)."""
    if ctx.inbox is None:
        return await _queue_new_now(ctx, payloads, signer)
    return await asyncio.shield(_queue_new_locked(ctx, ctx.inbox, payloads, signer))


async def _queue_new_locked(ctx: ValidatorContext, inbox: ScoringInbox,
                            payloads: list[OrganicPayload], signer: str) -> tuple[int, int, int]:
    async with inbox.accepting:
        return await _queue_new_now(ctx, payloads, signer)


async def _queue_new_now(ctx: ValidatorContext, payloads: list[OrganicPayload], signer: str) -> tuple[int, int, int]:
    """Queue the jobs of the payloads not scored before (all or nothing: ``_enqueue``), then remember
    them; returns (queued, repeated, stale). A payload seen before, or twice in one batch (the forwarder
    retried a batch whose 202 it lost), is acknowledged and not scored again; one none of whose uids is
    registered now spends no queue slot, nor does one whose caller chose its miners (never scored), nor
    one older than the queue's ``max_age`` (an outbox backlog after an outage: counted, not scored). ``signer``: the
    API hotkey that signed the POST (and its races): miners that refused it are left out while it holds no
    permit (``excuse_refusals``)."""
    jobs, identities, repeated, stale = [], set(), 0, 0
    queue = ctx.scoring_queue
    for payload in payloads:
        identity = payload.identity()
        if identity in ctx.seen or (identity is not None and identity in identities):
            repeated += 1
            continue
        identities.add(identity)
        if payload.caller_chose_miners:
            logger.debug("scoring: request_id={} not scored: its caller chose the miners", payload.request_id)
            continue
        if queue.is_stale(payload.created_at):
            stale += 1
            continue
        job = payload.to_job(ctx.metagraph.snapshot, ctx.organic_timeout)
        excuse_refusals(job, ctx.metagraph.snapshot, signer)
        if job.hotkeys:
            jobs.append(job)
    await _enqueue(ctx, jobs, identities)
    if stale:
        queue.dropped_stale(stale, f"of {len(payloads)} payload(s) of a /scoring, acknowledged")
    elif jobs:
        queue.stale_told.ok()
    return len(jobs), repeated, stale


@dataclass
class BatchOutcome:
    """What a batch's 202 says: the well-formed payloads (queued or not: one sent before, too old, or with no uid
    registered now), those queued, those too old to score, and each malformed one's index and why."""

    accepted: int
    queued: int
    stale: int
    rejected: list[dict[str, Any]] = field(default_factory=list)


async def take_batch(ctx: ValidatorContext, items: list[Any], payloads: list[OrganicPayload],
                     rejected: list[dict[str, Any]], signer: str) -> BatchOutcome:
    """A JSON array of payloads (the API's forwarder batches): ``items`` as sent, read into the well-formed
    ``payloads`` and the ``rejected`` ones (``scoring_http.read_batch``), taken as ``queue_new`` says."""
    queued, repeated, stale = await queue_new(ctx, payloads, signer)
    if repeated:
        logger.info("scoring: {} of {} payloads were sent before and are not scored again", repeated, len(items))
    if rejected:
        first = rejected[0]
        logger.warning("scoring: rejected {} of {} payloads as malformed (first: index {} request_id={}: {})",
                       len(rejected), len(items), first["index"], _request_id(items[first["index"]]), first["error"])
    return BatchOutcome(accepted=len(items) - len(rejected), queued=queued, stale=stale, rejected=rejected)


async def take_one(ctx: ValidatorContext, payload: OrganicPayload, signer: str) -> list[int]:
    """One payload, taken as ``queue_new`` says; returns its uids registered now (what its 202 names)."""
    queued, _, _ = await queue_new(ctx, [payload], signer)
    logger.debug("organic payload request_id={} task={} uids={}: {}", payload.request_id, payload.body.get("task"),
                 payload.uids, "queued" if queued else "not queued (seen before, too old, or no uid registered now)")
    snapshot = ctx.metagraph.snapshot
    return sorted(u for u in payload.uids if snapshot.by_uid(u))


def _request_id(item: Any) -> Any:
    return str(item.get("request_id"))[:128] if isinstance(item, dict) else None
