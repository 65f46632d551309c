"""Validator outage: the API keeps serving on its cached availability, scoring payloads pile up in
the durable outbox, and drain to the validator once it is back (same port, new process state)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from api.availability import AvailabilityCache
from api.scoring_outbox import OutboxForwarder
from neurons.validator.app import ValidatorContext, create_validator_app
from neurons.validator.availability import AvailabilityBook
from neurons.validator.scores import ScoreBook
from neurons.validator.scoring_queue import ScoringQueue
from neurons.validator.tasks import default_registry
from shared.http import app_runner
from shared.metagraph import MetagraphView
from shared.signing import Authorizer, RequestVerifier
from shared.store.outbox import SQLiteOutbox
from tests.chaos.fleet import HONEST, MESSAGES, VALIDATOR, chat, expected_answer, fleet, wait_until
from tests.helpers import StaticSource
from tests.ports import free_port

SERVES = {"task_availabilities": {"InferenceTask": True}, "llm_model_availabilities": {"sn1/deterministic": True}}


@contextlib.asynccontextmanager
async def validator_on(port: int, queue: ScoringQueue, view: MetagraphView) -> AsyncIterator[None]:
    """The real validator app on a fixed port (so it can come back where the API expects it)."""
    book = AvailabilityBook(entries={1: SERVES, 2: SERVES})
    ctx = ValidatorContext(book=book, scoring_queue=queue, scores=ScoreBook(default_registry().probabilities),
                           verifier=RequestVerifier(VALIDATOR.ss58_address,
                                                    Authorizer(lambda: (), [VALIDATOR.ss58_address])),
                           metagraph=view)
    runner = app_runner(create_validator_app(ctx), shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


async def depth_reaches(outbox: SQLiteOutbox, wanted: int, seconds: float = 5.0) -> int:
    """The outbox's depth once it is ``wanted``, or after ``seconds`` (what it is then)."""
    for _ in range(int(seconds / 0.05)):
        depth = await outbox.depth()
        if depth == wanted:
            break
        await asyncio.sleep(0.05)
    return depth


async def test_api_serves_through_a_validator_outage_and_the_outbox_drains_after(tmp_path: Path) -> None:
    port = free_port()
    validator_url = f"http://127.0.0.1:{port}"
    queue = ScoringQueue(100)
    async with fleet(tmp_path, {1: HONEST, 2: HONEST}) as f, aiohttp.ClientSession() as s:
        view = MetagraphView(StaticSource(f.ctx.metagraph.snapshot))
        await view.refresh()
        f.ctx.availability = AvailabilityCache(f.ctx.client, validator_url, VALIDATOR.ss58_address,
                                               refresh_seconds=0.2, stale_seconds=120)
        outbox = SQLiteOutbox(tmp_path / "outbox.db")
        forwarder = OutboxForwarder(outbox, f.ctx.client, validator_url, VALIDATOR.ss58_address,
                                    lease_seconds=1.0, base_delay=0.05, max_delay=0.5)
        f.ctx.attach_forwarder(forwarder)
        tasks = [asyncio.create_task(f.ctx.availability.run()), asyncio.create_task(forwarder.run())]
        try:
            async with validator_on(port, queue, view):
                await wait_until(f.ctx.availability.fresh, 5)
                assert f.ctx.availability.fresh()
                reply = await chat(s, f, {"messages": MESSAGES, "seed": 1, "model": "sn1/deterministic"})
                assert reply.status == 200
                await wait_until(lambda: queue.qsize() == 1, 5)
                assert queue.qsize() == 1, "the payload reaches the validator while it is up"
            # The validator is gone: answers keep coming from the cached availability.
            for seed in range(2, 8):
                reply = await chat(s, f, {"messages": MESSAGES, "seed": seed, "model": "sn1/deterministic"})
                assert reply.status == 200 and reply.content() == expected_answer(seed)
            depth = await depth_reaches(outbox, 6)  # stored at the next group commit, within milliseconds
            assert depth == 6, f"six payloads wait in the outbox, found {depth}"
            async with validator_on(port, queue, view):
                await wait_until(lambda: queue.qsize() == 7, 10)
                assert queue.qsize() == 7, "every payload held during the outage is delivered once"
                # Deleted once the validator's answer is in, a moment after it queued them (CI once
                # read the depth in between: 6).
                assert await depth_reaches(outbox, 0) == 0 and await outbox.dropped() == 0
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await outbox.close()
