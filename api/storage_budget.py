"""A key's daily budget of bytes written to storage (``STORED_BYTES_PER_KEY_PER_DAY``, or the key's own
``max_stored_bytes_per_day``, which the admin sets: 0 no limit for that key, None the setting's).

Stored responses (their records and a background one's events) and conversations (their items, and the turns
responses add) are counted as stored (the UTF-8 size of what the store keeps), per key and UTC day, in the key's
daily usage row beside its tokens (``Store.add_stored_bytes``: one atomic update per write, for the fleet). What
is stored lives ``RESPONSES_RETENTION_SECONDS`` at most, so a daily write budget bounds what one key holds at
once to about (retention / day + 1) times it: one key can no longer fill the store for every caller.

A write that would pass the budget: a foreground response is answered but not stored (``store: false``, as one
over ``MAX_STORED_BYTES``; a WARNING per key per day); a background response, a conversation's create or added
items, and a response's turn on a conversation whose input would pass it are the 429 ``storage_limit_exceeded``
before anything is stored or any miner asked. A write that must finish once begun (a background response's
events and its settled record, a turn's answer added to its conversation) is counted whatever the day holds.

Only what is stored is counted: a write checked against the budget (one atomic check-and-count, the 429 before
anything is stored) that the store then refuses (a conversation unknown, or over its size bound) or fails has its
count given back (``charging``), and a write counted whatever the day holds is counted once it is stored, not once
per attempt. A request cancelled as its write is made keeps its count (the write may have landed).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field

from loguru import logger

from api.auth import go_duration, store_call
from shared.errors import ApiError, retry_after
from shared.store.base import (
    KeyRecord,
    Store,
    StoredBytes,
    StoreUnavailable,
    own_or_default,
    until_day_ends,
    usage_day,
)


@dataclass
class StorageBudget:
    """The budget as one API process applies it: ``limit`` bytes a key without its own budget may write to storage a
    UTC day (0: no limit); the counts are the store's, shared by every process on it. A key is passed as its record
    (read from the store for this request), whose ``max_stored_bytes_per_day`` is its own budget."""

    store: Store
    limit: int
    clock: Callable[[], float] = time.time
    warned_day: str = ""  # the day ``warned`` is of: a key's WARNING is once a day
    warned: set[str] = field(default_factory=set)

    def today(self) -> str:
        return usage_day(self.clock())

    def limit_of(self, key: KeyRecord) -> int:
        """The key's budget in force: its own, else ``limit``; 0: none (its writes are not counted)."""
        return own_or_default(key.max_stored_bytes_per_day, self.limit)

    async def take(self, key: KeyRecord, size: int, day: str | None = None) -> StoredBytes:
        """Count a write of ``size`` bytes if it fits the budget of ``day`` (today: ``allowed``); nothing counted
        when not. ``StoreUnavailable`` as the store's."""
        limit = self.limit_of(key)
        if not limit:
            return StoredBytes(True, 0)
        return await self.store.add_stored_bytes(key.id, day or self.today(), size, limit=limit)

    @asynccontextmanager
    async def taking(self, key: KeyRecord, size: int) -> AsyncIterator[StoredBytes]:
        """``take`` for a write made in the block, its count given back when the block raises (``given_back``)."""
        day = self.today()
        taken = await self.take(key, size, day)
        async with self.given_back(key, day, size if taken.allowed else 0):
            yield taken

    @asynccontextmanager
    async def charging(self, key: KeyRecord, size: int, what: str) -> AsyncIterator[None]:
        """``check`` for a write made in the block, its count given back when the block raises (``given_back``)."""
        day = self.today()
        await self.check(key, size, what, day)
        async with self.given_back(key, day, size):
            yield

    @asynccontextmanager
    async def given_back(self, key: KeyRecord, day: str, size: int) -> AsyncIterator[None]:
        """Give back ``size`` bytes counted on ``day`` when the block raises: a write the store refused (a 400, a
        404) or failed stored nothing, and a key's budget is not spent by its own refused requests. The error
        raised is the block's; a store that fails the give-back too is a WARNING (the count stays)."""
        try:
            yield
        except Exception:
            if self.limit_of(key) and size:
                await self.count_or_warn(key, -size, f"{size} bytes of a write that stored nothing not given back", day)
            raise

    async def count(self, key: KeyRecord, size: int, day: str | None = None) -> None:
        """Count a write that is made whatever the budget holds (it was let in, and must finish); a negative
        ``size`` gives a count back (the day's never below 0)."""
        if self.limit_of(key) and size:
            await self.store.add_stored_bytes(key.id, day or self.today(), size, limit=0)

    async def count_or_warn(self, key: KeyRecord, size: int, what: str, day: str | None = None) -> None:
        """``count``, where a store that fails it must not fail what was already stored: a WARNING saying
        ``what`` was not counted."""
        try:
            await self.count(key, size, day)
        except StoreUnavailable as e:
            logger.warning("key id={}: {} (its daily storage budget): {}", key.id, what, e)

    async def check(self, key: KeyRecord, size: int, what: str, day: str | None = None) -> None:
        """Count a write of ``size`` bytes of ``what`` or, past the budget, raise its 429 (nothing counted)."""
        taken = await store_call(self.take(key, size, day))
        if not taken.allowed:
            raise self.refused(key, taken.used, size, what)

    async def check_room(self, key: KeyRecord, size: int, what: str) -> None:
        """The 429 when ``size`` bytes would pass the key's budget for today, nothing counted: a write counted
        later, whatever it then weighs (a turn's input is known now, its answer not yet)."""
        limit = self.limit_of(key)
        if not limit:
            return
        used = await store_call(self.store.day_stored_bytes(key.id, self.today()))
        if used + size > limit:
            raise self.refused(key, used, size, what)

    def refused(self, key: KeyRecord, used: int, size: int, what: str) -> ApiError:
        """OpenAI's 429 shape, with ``Retry-After`` to the end of the UTC day (as ``token_limit_exceeded``)."""
        wait = until_day_ends(self.clock())
        adds = f" and {what} adds {size} more" if size else ""
        return ApiError(429, f"Daily storage limit reached: this key may write {self.limit_of(key)} bytes to storage "
                             f"per day (UTC, {source(key)}), has written {used}{adds}. Nothing was stored. "
                             f"Retry in {go_duration(wait)}, when the day ends.",
                        code="storage_limit_exceeded", headers=retry_after(wait))

    def warn_once(self, key: KeyRecord, response_id: str, used: int) -> None:
        """A WARNING the first time today a key's response is not stored for its budget (not one per response)."""
        day = self.today()
        if day != self.warned_day:
            self.warned_day, self.warned = day, set()
        if key.id in self.warned:
            return
        self.warned.add(key.id)
        logger.warning("key id={} reached its daily storage budget ({} of {} bytes, {}): its responses are answered "
                       "but not stored (store: false) until the UTC day ends (first: {})",
                       key.id, used, self.limit_of(key), source(key), response_id)


def source(key: KeyRecord) -> str:
    """Where a key's budget comes from, as its 429 and WARNING name it: the setting, or the key's own."""
    own = key.max_stored_bytes_per_day is not None
    return "the key's own max_stored_bytes_per_day" if own else "STORED_BYTES_PER_KEY_PER_DAY"


def charged(budget: StorageBudget | None, key: KeyRecord, size: int, what: str) -> AbstractAsyncContextManager[None]:
    """``budget.charging`` for a write made in the block, or nothing to count without a budget."""
    return nullcontext() if budget is None else budget.charging(key, size, what)
