"""The API's view of who serves what, refreshed from the validator.

Validator unreachable: the last good answer is kept until it is stale; after
that selection falls back to every serving miner (one WARNING a minute, not
one per request).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from loguru import logger

from shared.miner_client import MinerClient, MinerError

WARN_EVERY = 60.0


class AvailabilityCache:
    def __init__(self, client: MinerClient, validator_url: str, validator_hotkey: str, *,
                 refresh_seconds: float = 15.0, stale_seconds: float = 120.0) -> None:
        self.client = client
        self.validator_url = validator_url
        self.validator_hotkey = validator_hotkey
        self.refresh_seconds = refresh_seconds
        self.stale_seconds = stale_seconds
        self.entries: dict[int, dict[str, Any] | None] = {}
        self.updated_at = 0.0
        self._last_warning = 0.0

    def fresh(self) -> bool:
        return bool(self.entries) and time.time() - self.updated_at <= self.stale_seconds

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
            self._warn(f"validator answered HTTP {status} for availabilities")
            return False
        entries: dict[int, dict[str, Any] | None] = {}
        for uid, entry in data.items():
            try:
                entries[int(uid)] = entry if isinstance(entry, dict) else None
            except ValueError:
                continue
        self.entries = entries
        self.updated_at = time.time()
        return True

    def _warn(self, message: str) -> None:
        now = time.time()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            state = "keeping the cached availability" if self.fresh() else "falling back to all serving miners"
            logger.warning("{}; {}", message, state)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_seconds)
