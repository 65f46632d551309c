"""Deliver organic-scoring payloads from the durable outbox to the validator's ``/scoring``.

At-least-once, oldest first: the lease holder (one forwarder across every API
worker and host) posts the head of the outbox, removes it only after a 2xx, and
on failure waits with exponential backoff and full jitter before retrying the
same payload, so order is kept. A payload the validator rejects as malformed
(400/413/422) is dropped with a log line: it would block the queue forever.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import uuid
from typing import Any

from loguru import logger

from shared.miner_client import MinerClient, MinerError
from shared.store.base import StoreUnavailable
from shared.store.outbox import Outbox, OutboxItem

POISON_STATUSES = {400, 413, 422}


class OutboxForwarder:
    def __init__(
        self,
        outbox: Outbox,
        client: MinerClient,
        validator_url: str,
        validator_hotkey: str,
        *,
        lease_seconds: float = 10.0,
        batch: int = 32,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.validator_url = validator_url
        self.validator_hotkey = validator_hotkey
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.rng = rng or random.Random()
        self.failures = 0
        self.delivered = 0
        self.delivery_failures = 0
        self._wake = asyncio.Event()

    async def sink(self, payload: dict[str, Any]) -> None:
        """Durably enqueue one payload (the API's payload sink)."""
        dropped = await self.outbox.put(payload)
        if dropped:
            logger.warning("scoring outbox full: dropped {} oldest payload(s)", dropped)
        self._wake.set()

    def backoff(self) -> float:
        """Full jitter: uniform in [0, min(max_delay, base * 2**failures)]."""
        cap = min(self.max_delay, self.base_delay * (2 ** min(self.failures, 30)))
        return self.rng.uniform(0, cap)

    async def deliver(self, item: OutboxItem) -> bool:
        """True when the payload is done with (accepted, or rejected as malformed)."""
        try:
            status, body = await self.client.post_json(
                self.validator_url, "/scoring", item.payload, self.validator_hotkey, timeout=10.0
            )
        except MinerError as e:
            logger.debug("scoring delivery failed: {}", e)
            return False
        if 200 <= status < 300:
            return True
        if status in POISON_STATUSES:
            logger.warning("validator rejected scoring payload {} as malformed (HTTP {}): dropped", item.id, status)
            return True
        logger.debug("validator answered HTTP {} for payload {}", status, item.id)
        return False

    async def step(self) -> int:
        """One pass: deliver what we can in order; returns how many were delivered."""
        if not await self.outbox.acquire_lease(self.holder, self.lease_seconds):
            return 0
        done = 0
        for item in await self.outbox.peek(self.batch):
            if not await self.deliver(item):
                self.failures += 1
                self.delivery_failures += 1
                return done
            await self.outbox.ack(item.id)
            self.failures = 0
            self.delivered += 1
            done += 1
        return done

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                try:
                    delivered = await self.step()
                except StoreUnavailable as e:
                    logger.warning("scoring outbox unreachable: {}", e)
                    delivered = 0
                    self.failures += 1
                if delivered:
                    continue
                wait = self.backoff() if self.failures else self.lease_seconds / 3
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                    if self.failures:
                        await asyncio.sleep(self.backoff())
                except TimeoutError:
                    pass
        finally:
            try:
                await self.outbox.release_lease(self.holder)
            except StoreUnavailable:
                pass
