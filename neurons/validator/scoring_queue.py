"""The jobs waiting to be scored: two bounded lanes (organic, synthetic) that the scoring workers take in turn.

``Settle`` is how a job leaves the scoring inbox once it is done with (scored, or dropped for a reason that is
told): the queue settles the organic jobs it drops as too old, the scorer those it scores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from shared.store.outage import OUTAGE_LOG_EVERY_S, OutageLog

if TYPE_CHECKING:
    from neurons.validator.scoring import ScoringJob

Settle = Callable[[Sequence["ScoringJob"]], None]  # jobs done with: their rows leave the inbox (``inbox.py``)


def settle_none(jobs: Sequence[ScoringJob]) -> None:
    """No inbox (a test's queue): nothing to remove."""


class ScoringQueue:
    """The jobs waiting to be scored, in two bounded lanes that the workers take in turn.

    The organic lane is what ``/scoring`` fills (``maxsize``: a payload batch that does not fit is a
    503); the synthetic lane holds ``synthetic_maxsize`` jobs, and a synthetic loop waits for room. One
    FIFO for both let an organic flood (thousands of payloads, each judged against the reference model)
    put every synthetic job behind it for an hour and stall the synthetic loops on a full queue, and a
    synthetic backlog 503 every payload. Taken in turn, each source gets at least half of the workers'
    time while the other has a backlog, and all of it otherwise. ``qsize`` is the organic lane's depth
    (it and ``maxsize`` are what ``/health`` has always reported as ``scoring_queue``).

    ``max_age``: an organic job older than this (seconds since its fan-out) is not scored but dropped and
    counted in ``stale_dropped``, here and at ``/scoring``. After an outage the API's outbox delivered
    answers of hours before, scored as if they were the miners' quality now (a miner that fixed its
    server paid for its old answers), and an answer from an API too old to name its hotkeys credited
    whoever held the uid at delivery."""

    def __init__(self, maxsize: int, synthetic_maxsize: int = 2, *, max_age: float | None = None,
                 max_bytes: int | None = None, settle: Settle = settle_none) -> None:
        if maxsize < 1 or synthetic_maxsize < 1:
            raise ValueError("each lane holds at least one job")
        self.maxsize = maxsize
        self.settle = settle  # organic jobs dropped as too old leave the inbox
        self.max_bytes = max_bytes  # the organic lane's bound in bytes (``ScoringJob.size``), besides its count
        self.organic_bytes = 0
        self.synthetic_maxsize = synthetic_maxsize
        self.max_age = max_age
        self.stale_dropped = 0  # organic payloads too old to score (at /scoring or while queued), since start
        # An outage's backlog is delivered stale batch after batch: a line each was thousands of lines within a
        # minute. Told as a run: its first batch, a line a minute, an INFO line a minute after the last one.
        self.stale_told = OutageLog("scoring: organic payloads older than ORGANIC_MAX_AGE_SECONDS dropped, not scored",
                                    back="none dropped for a minute", settle=OUTAGE_LOG_EVERY_S)
        self._organic: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self._synthetic: asyncio.Queue[Any] = asyncio.Queue(synthetic_maxsize)
        self._synthetic_next = True  # whose turn it is when both lanes hold jobs
        self._ready = asyncio.Event()  # set by every put; a worker that finds both lanes empty waits on it

    def dropped_stale(self, count: int, where: str) -> None:
        """``count`` organic payloads dropped as older than ``max_age`` (``where``: of what), counted and told as a
        run (``stale_told``)."""
        self.stale_dropped += count
        self.stale_told.failed(f"{count} {where}, older than {self.max_age or 0:g} s ({self.stale_dropped} since start)")

    def _lane(self, job: Any) -> asyncio.Queue[Any]:
        return self._synthetic if getattr(job, "source", None) == "synthetic" else self._organic

    def qsize(self) -> int:
        return self._organic.qsize()

    def synthetic_qsize(self) -> int:
        return self._synthetic.qsize()

    def empty(self) -> bool:
        """No job waits in either lane."""
        return self._organic.empty() and self._synthetic.empty()

    def room_for(self, jobs: list[Any]) -> bool:
        """Whether the organic lane takes all of ``jobs`` now, by count and by bytes. An empty lane takes
        any one batch: a payload larger than the bound alone would otherwise be refused for good (the
        API's forwarder retries it, and everything behind it, forever).

        Bounded by count alone, 10,000 payloads of long streamed answers (a few MB of SSE chunks each)
        were tens of GB held while an outage's backlog drained."""
        if self.maxsize - self.qsize() < len(jobs):
            return False
        if self.max_bytes is None or self._organic.empty():
            return True
        return self.organic_bytes + sum(getattr(j, "size", 0) for j in jobs) <= self.max_bytes

    def put_nowait(self, job: Any) -> None:
        """Queue ``job`` in its lane; ``asyncio.QueueFull`` when that lane is full."""
        lane = self._lane(job)
        lane.put_nowait(job)
        if lane is self._organic:
            self.organic_bytes += getattr(job, "size", 0)
        self._ready.set()

    async def put(self, job: Any) -> None:
        """Queue ``job``, waiting for room in its lane (backpressure on the synthetic loops)."""
        await self._lane(job).put(job)
        self._ready.set()

    def get_nowait(self) -> Any:
        """The next job, the lanes taking turns; ``asyncio.QueueEmpty`` when both are empty."""
        order = (self._synthetic, self._organic) if self._synthetic_next else (self._organic, self._synthetic)
        for lane in order:
            if not lane.empty():
                self._synthetic_next = lane is self._organic
                job = lane.get_nowait()
                if lane is self._organic:
                    self.organic_bytes -= getattr(job, "size", 0)
                return job
        raise asyncio.QueueEmpty

    def is_stale(self, created_at: float | None, now: float | None = None) -> bool:
        """Whether an organic payload made at ``created_at`` (None: not said) is past ``max_age``."""
        if self.max_age is None or not created_at:
            return False
        return (time.time() if now is None else now) - created_at > self.max_age

    async def get(self) -> Any:
        """The next job to score; organic ones that grew stale while queued are dropped and counted (told as a
        run, ``dropped_stale``: a line per call, or per job, was thousands of lines for a drained backlog)."""
        stale: list[Any] = []
        try:
            while True:
                try:
                    job = self.get_nowait()
                except asyncio.QueueEmpty:
                    self._ready.clear()
                    await self._ready.wait()
                    continue
                if getattr(job, "source", None) == "organic":
                    if self.is_stale(job.created_at):
                        stale.append(job)
                        continue
                    self.stale_told.ok()
                return job
        finally:
            if stale:
                self.dropped_stale(len(stale), "queued")
                self.settle(stale)
