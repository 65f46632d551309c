"""The API's view of who serves what, refreshed from the validator.

Validator unreachable, or answering with no entries (it has just started and
polled no miner yet): the last good answer is kept until it is stale; after
that selection falls back to every serving miner (one WARNING a minute, not
one per request). An entry not in the shape miners answer is taken as that
miner unavailable, as the validator takes a miner's own malformed answer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from loguru import logger
from pydantic import ValidationError

from shared.availability_query import offered
from shared.miner_client import MinerClient, MinerError
from shared.protocol import AvailabilityResponse
from shared.signing import refused_signature
from shared.store.outage import RECOVERED, Voice

WARN_EVERY = 60.0

# A validator's address that answers, but not as a validator would (another process on that port, another
# validator, a miner: "HTTP 404", "WrongReceiver"), named the validator alone: which setting was wrong went unsaid.
NOT_THE_VALIDATOR = "is VALIDATOR_API the validator's SCORING_API_PORT, and VALIDATOR_HOTKEY its hotkey?"


class AvailabilityCache:
    def __init__(self, client: MinerClient, validator_url: str, validator_hotkey: str, *,
                 refresh_seconds: float = 15.0, stale_seconds: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, voice: Voice | None = None) -> None:
        self.client = client
        # Every worker asks the same validator: with ``WORKERS`` > 1 one tells its failing for all (``api.fleet``).
        self.voice = voice or Voice()
        self.validator_url = validator_url
        self.validator_hotkey = validator_hotkey
        self.refresh_seconds = refresh_seconds
        self.stale_seconds = stale_seconds
        self.entries: dict[int, dict[str, Any] | None] = {}
        self.updated_at = 0.0  # Unix seconds of the last good answer
        # model -> Unix seconds of the first answer that listed it, of those the last answer lists: ``/v1/models``'
        # ``created``, which stays put while the model is served (it was ``updated_at``, new at every refresh)
        self.first_listed: dict[str, int] = {}
        # Ages are told on ``clock`` (monotonic): on the wall clock, an NTP step of a few minutes forward took
        # every worker's availability stale at once (selection raced every miner), and one backward kept a
        # gone validator's answer for minutes more and held the WARNINGs back.
        self._clock = clock
        self.refreshed_at: float | None = None  # ``clock`` at the last good answer
        self._last_warning: float | None = None
        self._failing_since: float | None = None  # when refreshes began to fail (None: the last one worked)
        self._failed = 0

    def age(self) -> float | None:
        """Seconds since the last good answer (None: none yet)."""
        return None if self.refreshed_at is None else self._clock() - self.refreshed_at

    def fresh(self) -> bool:
        age = self.age()
        return bool(self.entries) and age is not None and age <= self.stale_seconds

    def accept(self, entries: dict[int, dict[str, Any] | None]) -> None:
        """Take ``entries`` as the validator's answer now."""
        self.entries = entries
        self.updated_at, self.refreshed_at = time.time(), self._clock()
        listed = {m for entry in entries.values() if entry for m in offered(entry, "llm_model_availabilities")}
        self.first_listed = {m: self.first_listed.get(m, int(self.updated_at)) for m in listed}

    def serves(self, uid: int, task: str | None, model: str | None) -> bool | None:
        """True/False from fresh data; None when we do not know (no or stale data)."""
        if not self.fresh():
            return None
        return self.matches(uid, task, model)

    def matches(self, uid: int, task: str | None, model: str | None) -> bool:
        """Whether the last known entry for ``uid`` serves ``task`` and ``model`` (None = any)."""
        entry = self.entries.get(uid)
        if entry is None:
            return False
        if task and not entry.get("task_availabilities", {}).get(task):
            return False
        if model and not entry.get("llm_model_availabilities", {}).get(model):
            return False
        return True

    def offers_a_task(self, uid: int) -> bool:
        """Whether the last known entry for ``uid`` advertises any task: a miner up but serving nothing (its
        model server down: the reference miner's ``down`` profile answers every task false) cannot answer one."""
        entry = self.entries.get(uid)
        return entry is not None and any(entry.get("task_availabilities", {}).values())

    async def refresh(self) -> bool:
        try:
            status, data = await self.client.post_json(
                self.validator_url, "/miner_availabilities/miner_availabilities", None,
                self.validator_hotkey, timeout=5.0,
            )
        except MinerError as e:
            self._warn(f"validator unreachable at {self.validator_url}: {e}")
            return False
        if status != 200 or not isinstance(data, dict):
            self._warn(f"validator at {self.validator_url} answered {refused_signature(status, data) or f'HTTP {status}'}"
                       f" for availabilities ({NOT_THE_VALIDATOR})")
            return False
        entries, malformed = parse_entries(data)
        if not entries:  # a validator that just started has polled no miner yet: no news, not "all gone"
            self._warn(f"validator at {self.validator_url} has no availability data yet")
            return False
        if malformed:
            self._warn(f"validator sent {malformed} malformed availability entries", state="taken as unavailable")
        self.accept(entries)
        if self._failing_since is not None:  # the WARNINGs said it failed: one line says it is over
            logger.log(self.voice.level("INFO"), "{}validator at {} answers availabilities again after {:.0f} s ({} "
                       "failed refresh(es))", RECOVERED, self.validator_url, self._clock() - self._failing_since,
                       self._failed)
            self._failing_since, self._failed = None, 0
        return True

    def _warn(self, message: str, *, state: str | None = None) -> None:
        now = self._clock()
        if state is None:  # a failed refresh (``state``: one that worked, with entries taken as unavailable)
            self._failed += 1
            if self._failing_since is None:
                self._failing_since = now
        if self._last_warning is None or now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            if state is None:
                state = "keeping the cached availability" if self.fresh() else "falling back to all serving miners"
            first = self._failed == 1 and self._failing_since == now  # a run's first line says who tells it
            logger.log(self.voice.level("WARNING"), "{}; {}{}", message, state, self.voice.note if first else "")

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_seconds)


def parse_entries(data: dict[str, Any]) -> tuple[dict[int, dict[str, Any] | None], int]:
    """The validator's answer as uid -> entry (None: unavailable), and how many entries were malformed
    (neither null nor in a miner's shape). Keys that are not uids are skipped."""
    entries: dict[int, dict[str, Any] | None] = {}
    malformed = 0
    for key, entry in data.items():
        try:
            uid = int(key)
        except ValueError:
            continue
        entries[uid] = well_formed(entry)
        malformed += entry is not None and entries[uid] is None
    return entries, malformed


def well_formed(entry: Any) -> dict[str, Any] | None:
    """An entry in the shape a miner answers ``/availability``, or None (unavailable).

    Taken as it came, one entry whose ``task_availabilities`` was null or a list made every chat,
    ``/v1/models``, session open and availability query a 500 (``.get`` on it) until the next refresh."""
    if not isinstance(entry, dict):
        return None
    try:
        return AvailabilityResponse.model_validate(entry).model_dump()
    except ValidationError:
        return None

