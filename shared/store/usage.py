"""Usage accounting buffered in memory and flushed to the store in batches.

Counting a request must not cost a store round trip (a streamed answer would
otherwise pay one per chunk), so the API adds counts here and a background task
writes them every ``flush_interval`` seconds in one ``add_usage`` call; the last
batch is written at graceful shutdown. If the store is down the counts stay
buffered and go out with the next flush.

Two entry points, so nothing is counted twice:

* ``count_response(key_id, status, day=)``: called once per authenticated response (by the
  API's response hook): one request; an error if status >= 400; rate-limited if 429.
* ``record(key_id, prompt_tokens=, completion_tokens=, error=, day=, model=)``: called by a handler
  when the work ends: tokens, and ``error=True`` only for a failure the status could
  not show (a stream that broke after its 200); the request and its tokens are also
  counted for ``model``, the one its answer names (``usage_models``): a dict key in the
  same buffer, written with the same batch.

Both file under ``day``, the UTC day the request was authorized (``today()`` then): a
request that starts before midnight and ends after is counted whole on its first day.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from loguru import logger

from shared.protocol import is_name, token_count
from shared.store.base import Store, StoreUnavailable, UsageCounts, UsageDelta, UsageReport, usage_day
from shared.store.outage import OutageLog
from shared.store.usage_models import OTHER, UNKNOWN, ModelCounts, model_row


class UsageRecorder:
    def __init__(self, store: Store, *, flush_interval: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.flush_interval = flush_interval
        self.clock = clock
        self._pending: dict[tuple[str, str], UsageCounts] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        # The batch a flush is writing: counted by readers until the store has it (else a key's
        # tokens today dip by that batch while the write is in flight, and a spent budget reopens).
        self._flushing: dict[tuple[str, str], UsageCounts] = {}
        self._lock = asyncio.Lock()
        # Told of each request's tokens as they are counted (prompt, completion): the API's
        # ``sn1_api_tokens_total``, so a fleet's token throughput is a metric, not a sum over every key's usage.
        self.token_sinks: list[Callable[[int, int], None]] = []
        self.outage = OutageLog("usage flush failed")  # a flush a second: a store down for an hour was 3,600 lines
        self._day = ("", 0.0, -1.0)  # (day, its first second, its last second): formatting a date per
        # request showed in the profile, and the day changes once every 86,400 seconds

    def _today(self, now: float) -> str:
        day, start, end = self._day
        if not start <= now < end:
            day = usage_day(now)
            start = (now // 86400) * 86400
            self._day = (day, start, start + 86400)
        return day

    def today(self) -> str:
        """The UTC day now: what a request authorized now files its counts under (``day=``)."""
        return self._today(self.clock())

    def _slot(self, key_id: str, day: str | None) -> UsageCounts:
        now = self.clock()
        slot = (key_id, day or self._today(now))
        self._last_used[slot] = now
        counts = self._pending.get(slot)
        if counts is None:
            counts = self._pending[slot] = UsageCounts()
        return counts

    def count_response(self, key_id: str, status: int, *, day: str | None = None) -> None:
        """One request, under ``day`` (the day it was authorized; default today)."""
        counts = self._slot(key_id, day)
        counts.requests += 1
        if status == 429:
            counts.rate_limited += 1
        elif status >= 400:
            counts.errors += 1

    def record(self, key_id: str, *, prompt_tokens: object = 0, completion_tokens: object = 0, error: bool = False,
               day: str | None = None, model: str | None = None) -> None:
        """A request's tokens when its work ends, under ``day``: the day it was authorized (default today),
        so a request that runs past midnight UTC is counted whole on the day whose budget let it in; and under
        ``model``, the one its answer names (None: ``UNKNOWN``)."""
        counts = self._slot(key_id, day)
        prompt, completion = _tokens(prompt_tokens), _tokens(completion_tokens)
        counts.prompt_tokens += prompt
        counts.completion_tokens += completion
        counts.errors += int(bool(error))
        row = counts.models.get(model) if model else None  # a model this slot counts already: one dict lookup
        if row is None:
            row = _model_row(counts, model)
        row.requests += 1
        row.prompt_tokens += prompt
        row.completion_tokens += completion
        for sink in self.token_sinks:
            sink(prompt, completion)

    async def tokens_today(self, key_id: str) -> int:
        """The key's prompt + completion tokens today (UTC): what every process flushed, and what this
        one has not yet (another process's last ``flush_interval`` is not seen)."""
        day = self._today(self.clock())
        for _ in range(3):  # a flush that starts or ends during the read replaces ``_flushing``: read again
            flushing = self._flushing
            stored = await self.store.day_tokens(key_id, day)
            if flushing is self._flushing:
                break
        # A batch that lands during the read, before its flush resumes, is counted twice for that moment:
        # over, never under (a spent budget does not reopen).
        mine = sum(c.tokens for c in (self._pending.get((key_id, day)), self._flushing.get((key_id, day))) if c)
        return stored + mine

    def pending_for(self, key_id: str) -> dict[str, UsageCounts]:
        """This process's not-yet-stored counts for a key, by day (merged into reports): those buffered
        and those a flush is writing."""
        out: dict[str, UsageCounts] = {}
        for batch in (self._pending, self._flushing):
            for (kid, day), counts in batch.items():
                if kid == key_id:
                    out.setdefault(day, UsageCounts()).add(counts)
        return out

    async def flush(self) -> int:
        """Write everything buffered in one batch; returns how many (key, day) rows were written."""
        async with self._lock:
            batch, last = self._pending, self._last_used
            self._pending, self._last_used = {}, {}
            deltas = [UsageDelta(key_id=k, day=d, counts=c, last_used_at=last[(k, d)]) for (k, d), c in batch.items()]
            self._flushing = batch
            try:
                await self.store.add_usage(deltas)
            except StoreUnavailable as e:
                self._merge_back(batch, last)
                self.outage.failed(f"{len(deltas)} rows kept for the next try: {e}")
                return 0
            finally:
                self._flushing = {}
            self.outage.ok()
            return len(deltas)

    async def last_flush(self) -> None:
        """The flush at shutdown: counts a store that fails now cannot take are lost with the process, said
        in an ERROR line. (A run of failed flushes logs a line a minute: the last one, inside that minute,
        said nothing, and its earlier lines said the counts were kept for the next try.)"""
        await self.flush()
        if self._pending:
            logger.error("usage: {} row(s) of counts not stored at shutdown, lost: the store did not take them",
                         len(self._pending))

    def _merge_back(self, batch: dict[tuple[str, str], UsageCounts], last: dict[tuple[str, str], float]) -> None:
        for slot, counts in batch.items():
            mine = self._pending.setdefault(slot, UsageCounts())
            mine.add(counts)
            self._last_used[slot] = max(self._last_used.get(slot, 0.0), last[slot])

    async def run(self) -> None:
        """Flush forever (cancel to stop; the owner calls ``flush`` once more after).

        A cancel that lands while a batch is being written waits for that write to end: cancelled
        mid-write, the batch was neither stored for sure nor kept, and the last flush at shutdown
        found nothing to write (a batch lost on Redis, whose write awaits)."""
        while True:
            await asyncio.sleep(self.flush_interval)
            flushing = asyncio.ensure_future(self.flush())
            try:
                await asyncio.shield(flushing)
            except asyncio.CancelledError:
                await flushing
                raise

    async def report(self, key_id: str, *, since_day: str | None = None) -> UsageReport:
        """The store's report plus what this process has not flushed yet."""
        report = await self.store.usage(key_id, since_day=since_day)
        for day, counts in self.pending_for(key_id).items():
            report.totals.add(counts, models=False)  # totals have no breakdown: the days do
            if since_day is None or day >= since_day:
                report.days.setdefault(day, UsageCounts()).add(counts)
        report.days = dict(sorted(report.days.items()))
        mine = [t for (kid, _), t in self._last_used.items() if kid == key_id]
        report.last_used_at = max([*mine, report.last_used_at or 0.0]) or None
        return report


def _model_row(counts: UsageCounts, model: str | None) -> ModelCounts:
    """The row of a (key, day) slot a request of ``model`` counts in: its own, ``UNKNOWN`` for none, ``OTHER``
    for a string no model may be named (the caller wrote it) or past the day's cap."""
    return model_row(counts.models, (model if is_name(model) else OTHER) if model else UNKNOWN)


def _tokens(value: object) -> int:
    """A miner-reported count, trusted only if it is a sane non-negative integer."""
    return min(token_count(value) or 0, 10_000_000)
