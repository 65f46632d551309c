"""The forwarder: validator outages, restarts, poison payloads; every payload once, in order."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from loguru import logger

from api.scoring_outbox import CRASH_ATTEMPTS, OutboxForwarder
from shared.aio import describe, within
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from shared.store.outbox import Pace, SQLiteOutbox
from tests.api.test_outbox import make_outbox  # noqa: F401 - the two-backend fixture
from tests.helpers import keypair, log_lines, serve_app
from tests.ports import free_port

API = keypair("//Validator")  # the API signs with the validator hotkey


def scoring_app(received: list[dict], statuses: list[int] | None = None) -> web.Application:
    """A validator /scoring endpoint that verifies btauth/1 like the real one and records payloads."""
    verifier = RequestVerifier(API.ss58_address, Authorizer(lambda: (), [API.ss58_address]))

    async def scoring(request: web.Request) -> web.Response:
        raw = await request.read()
        verifier.verify(request.headers, raw, method=request.method, path=request.raw_path)
        if statuses:
            status = statuses.pop(0)
            if status != 202:
                return web.json_response({"error": {"message": "nope"}}, status=status)
        data = await request.json()
        if any(p.get("crash") for p in (data if isinstance(data, list) else [data])):
            raise RuntimeError("a payload this validator fails on")  # aiohttp's 500, as a validator's bug
        if any(p.get("slow") for p in (data if isinstance(data, list) else [data])):
            await asyncio.sleep(5)  # past the post's time: too large for the link, or one it hangs on
        if isinstance(data, list):  # the forwarder's batches, as the real validator takes them
            rejected = [{"index": i, "error": "poison"} for i, p in enumerate(data) if p.get("poison")]
            received.extend(p for p in data if not p.get("poison"))
            return web.json_response({"status": "accepted", "accepted": len(data) - len(rejected),
                                      "rejected": rejected}, status=202)
        if data.get("poison"):
            return web.json_response({"error": {"message": "malformed"}}, status=400)
        received.append(data)
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/scoring", scoring)
    return app


def recording_app(received: list[dict], posts: list[list[int]]) -> web.Application:
    """``scoring_app``, each post's payloads' ``n`` recorded in ``posts`` (a batch as one list)."""
    app = scoring_app(received)

    @web.middleware
    async def record(request: web.Request, handler):  # type: ignore[no-untyped-def]
        data = json.loads(await request.read())
        posts.append([p["n"] for p in (data if isinstance(data, list) else [data])])
        return await handler(request)

    app.middlewares.append(record)
    return app


def forwarder(box: SQLiteOutbox, client: MinerClient, url: str) -> OutboxForwarder:
    return OutboxForwarder(box, client, url, API.ss58_address, lease_seconds=1.0, base_delay=0.05,
                           max_delay=0.2, rng=random.Random(1))


async def wait_for(predicate, timeout: float = 8.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


@asynccontextmanager
async def running(fwd: OutboxForwarder) -> AsyncIterator[None]:
    """``fwd.run()`` as a task, cancelled and awaited on the way out, a failing test's way out too (left
    running, it went on using the store and the session past the test)."""
    task = asyncio.create_task(fwd.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def drained(box: SQLiteOutbox, timeout: float = 8.0) -> None:
    """Until the outbox is empty: the validator records a payload before its 202 reaches the forwarder,
    which deletes it only then (stopping the forwarder as the last one arrived left it in the box)."""
    for _ in range(int(timeout / 0.05)):
        if await box.depth() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{await box.depth()} payload(s) still in the outbox")


async def test_validator_down_then_up_delivers_each_payload_once_in_order(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    received: list[dict] = []
    box = SQLiteOutbox(tmp_path / "api.db")
    async with make_session() as session:
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        async with running(fwd):
            for i in range(20):
                await fwd.sink({"n": i})
            await asyncio.sleep(0.6)  # validator down: nothing delivered, nothing lost
            assert received == [] and await box.depth() == 20 and fwd.delivery_failures > 0
            async with serve_app(scoring_app(received), port=port):
                await wait_for(lambda: len(received) == 20)
                for i in range(20, 25):
                    await fwd.sink({"n": i})
                await wait_for(lambda: len(received) == 25)
                await drained(box)
    assert [p["n"] for p in received] == list(range(25))
    assert await box.depth() == 0
    await box.close()


async def test_payloads_pending_at_api_death_are_delivered_after_restart(tmp_path: Path) -> None:
    received: list[dict] = []
    first = SQLiteOutbox(tmp_path / "api.db")
    for i in range(5):
        await first.put({"n": i})
    assert await first.acquire_lease("the-api-that-died", 0.3)  # it held the lease when it was killed
    await first.close()
    async with serve_app(scoring_app(received)) as url, make_session() as session:
        box = SQLiteOutbox(tmp_path / "api.db")
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        async with running(fwd):
            await wait_for(lambda: len(received) == 5)
        await box.close()
    assert [p["n"] for p in received] == [0, 1, 2, 3, 4]


async def test_transient_errors_retry_and_poison_payload_is_dropped(tmp_path: Path) -> None:
    received: list[dict] = []
    statuses = [503, 503]  # two transient failures, then payload 0 is rejected as malformed
    async with serve_app(scoring_app(received, statuses)) as url, make_session() as session:
        box = SQLiteOutbox(tmp_path / "api.db")
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        for i in range(3):
            await fwd.sink({"n": i, "poison": i == 0})
        async with running(fwd):
            await wait_for(lambda: len(received) == 2)
            await drained(box)
        await box.close()
    assert [p["n"] for p in received] == [1, 2]


async def test_a_batch_refused_whole_falls_back_to_one_by_one(tmp_path: Path) -> None:
    received: list[dict] = []
    async with serve_app(scoring_app(received, [400])) as url, make_session() as session:
        box = SQLiteOutbox(tmp_path / "api.db")
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        for i in range(4):
            await fwd.sink({"n": i})
        async with running(fwd):
            await wait_for(lambda: len(received) == 4)
        await box.close()
    assert [p["n"] for p in received] == [0, 1, 2, 3]


async def test_two_workers_share_one_outbox_without_double_delivery(tmp_path: Path) -> None:
    received: list[dict] = []
    async with serve_app(scoring_app(received)) as url, make_session() as session:
        boxes = [SQLiteOutbox(tmp_path / "api.db"), SQLiteOutbox(tmp_path / "api.db")]
        fwds = [forwarder(b, MinerClient(session, Signer(API)), url) for b in boxes]
        tasks = [asyncio.create_task(f.run()) for f in fwds]
        for i in range(40):
            await fwds[i % 2].sink({"n": i})
        await wait_for(lambda: len(received) == 40)
        await asyncio.sleep(0.3)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for b in boxes:
            await b.close()
    assert sorted(p["n"] for p in received) == list(range(40))
    assert len(received) == 40, "no payload may be delivered twice in normal operation"


async def test_a_delivery_stays_under_the_byte_budget_and_drains_a_backlog_in_order(tmp_path: Path) -> None:
    received: list[dict] = []
    posts: list[int] = []
    box = SQLiteOutbox(tmp_path / "api.db")
    app = scoring_app(received)

    @web.middleware
    async def count_posts(request: web.Request, handler):  # type: ignore[no-untyped-def]
        posts.append(len(await request.read()))
        return await handler(request)

    app.middlewares.append(count_posts)
    async with serve_app(app) as url, make_session() as session:
        fwd = OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address,
                              batch_bytes=4000, linger=0.0)
        for i in range(30):  # ~1 KB each: 30 KB of backlog, at most ~4 KB per post
            await fwd.sink({"n": i, "pad": "x" * 1000})
        async with running(fwd):
            await wait_for(lambda: len(received) == 30)
    assert [p["n"] for p in received] == list(range(30))
    assert len(posts) >= 8 and max(posts) <= 4000 + 2, posts


async def test_a_forwarder_cancelled_as_it_is_woken_stops(tmp_path: Path) -> None:
    """Shutdown cancels the forwarder; a payload committed in the same instant sets its wake-up.

    On Python 3.11 ``asyncio.wait_for`` returns the result instead of raising when the awaited
    thing finished in the same loop turn as the cancel, so a forwarder parked in
    ``wait_for(wake.wait())`` kept running and the API hung at shutdown (seen: an API stuck for
    20 minutes after SIGTERM). Both of its waits (between passes, and the linger) must obey.
    """
    box = SQLiteOutbox(tmp_path / "api.db")
    fwd = OutboxForwarder(box, None, "http://127.0.0.1:9", API.ss58_address,  # type: ignore[arg-type]
                          lease_seconds=30.0, linger=30.0, rng=random.Random(1))
    try:
        for wake_up in ("_wake", "_full"):
            task = asyncio.create_task(fwd.run())
            await asyncio.sleep(0.05)  # parked between passes (nothing to deliver)
            if wake_up == "_full":
                fwd._wake.set()  # a payload arrived: now it lingers for a fuller batch
                await asyncio.sleep(0.05)
            getattr(fwd, wake_up).set()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2.0)
            assert done and task.cancelled(), f"the forwarder kept running when cancelled as {wake_up} was set"
    finally:
        await box.close()


async def test_a_rejected_payload_is_logged_with_its_request_id_and_the_reason(tmp_path: Path) -> None:
    """A count alone ("rejected 1 of 2") named neither the request nor the cause."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    received: list[dict] = []
    try:
        async with serve_app(scoring_app(received)) as url, make_session() as session:
            box = SQLiteOutbox(tmp_path / "api.db")
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            await fwd.sink({"n": 0, "request_id": "rid-good"})
            await fwd.sink({"n": 1, "request_id": "rid-bad", "poison": True})
            async with running(fwd):
                await wait_for(lambda: len(received) == 1 and any("rejected" in line for line in lines))
            await box.close()
    finally:
        logger.remove(sink)
    (line,) = [x for x in lines if "rejected" in x]
    assert "rejected 1 of 2 scoring payloads" in line and "rid=rid-bad why=poison" in line
    assert "rid-good" not in line


async def test_a_run_of_malformed_payloads_is_one_warning_not_one_per_delivery(tmp_path: Path) -> None:
    """A validator that rejects payloads as malformed (releases that disagree) rejected some in every delivery: a
    WARNING each, several lines a second under traffic. The run is one WARNING (then a line a minute at most),
    naming the first; every payload is still counted in ``rejected`` (``sn1_api_outbox_rejected``)."""
    received: list[dict] = []
    box = SQLiteOutbox(tmp_path / "api.db")
    lines, sink = log_lines("WARNING")
    async with serve_app(scoring_app(received)) as url, make_session() as session:
        fwd = OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address, lease_seconds=1.0,
                              base_delay=0.05, max_delay=0.2, rng=random.Random(1), batch=2, linger=0)
        for i in range(21):  # batches of two, one of each rejected, then the last alone (a 400)
            await fwd.sink({"n": i, "request_id": f"rid-{i}", "poison": i % 2 == 0})
        async with running(fwd):
            await wait_for(lambda: fwd.rejected == 11)
            await drained(box)
    logger.remove(sink)
    await box.close()
    assert [p["n"] for p in received] == list(range(1, 21, 2))
    # delivered and rejected are apart (sn1_api_outbox_delivered_total counted the rejected too: 21, not 10)
    assert (fwd.delivered, fwd.rejected) == (10, 11)
    told = [x for x in lines if "malformed" in x]
    assert len(told) == 1, told
    assert "rejected 1 of 2 scoring payloads" in told[0] and "rid=rid-0 why=poison" in told[0], told


class FakeValidator:
    """Answers the forwarder's posts from a script (then 202), recording each and how many overlap."""

    def __init__(self, answers: list[tuple[int, object]] | None = None, seconds: float = 0.0) -> None:
        self.answers, self.seconds = list(answers or []), seconds
        self.posts: list[list[int]] = []
        self.inflight = self.most_inflight = 0

    async def post_json_bytes(self, url, path, body, receiver, *, timeout):
        import json

        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        self.posts.append([p["n"] for p in json.loads(body)])
        try:
            await asyncio.sleep(min(self.seconds, timeout))
        finally:
            self.inflight -= 1
        return self.answers.pop(0) if self.answers else (202, {"rejected": []})

    async def post_json(self, url, path, payload, receiver, *, timeout):
        self.posts.append([payload["n"]])
        return self.answers.pop(0) if self.answers else (202, {})


async def test_two_workers_never_post_at_once_however_slow_the_validator(tmp_path: Path) -> None:
    """The lease was taken once a pass and a post could outlast it (10 s against a 10 s lease): a second
    worker took it and posted the same payloads at the same time."""
    validator = FakeValidator(seconds=1.5)
    a, b = SQLiteOutbox(tmp_path / "api.db"), SQLiteOutbox(tmp_path / "api.db")
    fa = OutboxForwarder(a, validator, "http://x", "hk", lease_seconds=1.0, linger=0)
    fb = OutboxForwarder(b, validator, "http://x", "hk", lease_seconds=1.0, linger=0)
    assert fa.post_timeout == 0.5, "a post ends well inside the lease"
    for i in range(10):
        await fa.sink({"n": i})
    tasks = [asyncio.create_task(fa.run())]
    await asyncio.sleep(0.05)
    tasks.append(asyncio.create_task(fb.run()))
    await asyncio.sleep(2.5)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert validator.most_inflight == 1, validator.posts
    await a.close()
    await b.close()


async def test_a_group_commit_the_store_refuses_for_a_moment_is_retried_not_lost(tmp_path: Path) -> None:
    import sqlite3

    box = SQLiteOutbox(tmp_path / "api.db")
    fwd = OutboxForwarder(box, FakeValidator(), "http://x", "hk")
    other = sqlite3.connect(tmp_path / "api.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another worker's write holds the lock past the store's 0.5 s wait
    asyncio.get_running_loop().call_later(0.8, lambda: other.execute("COMMIT"))
    for i in range(5):
        fwd.enqueue({"n": i})  # as fanout.deliver does, after the caller has its answer
    await wait_for(lambda: not fwd._pending and fwd._committer is None, timeout=6)
    assert [i.payload["n"] for i in await box.peek(10)] == [0, 1, 2, 3, 4] and fwd.unstored_dropped == 0
    other.close()
    await box.close()


async def test_the_forwarder_outlives_a_garbage_answer_and_an_unexpected_error(tmp_path: Path) -> None:
    box = SQLiteOutbox(tmp_path / "api.db")
    validator = FakeValidator(answers=[(202, {"rejected": 2})])  # not a list: was a TypeError that ended the task
    fwd = OutboxForwarder(box, validator, "http://x", "hk", lease_seconds=1.0, linger=0, base_delay=0.05,
                          max_delay=0.1)
    real_peek, calls = box.peek, []

    async def peek_fails_once(n: int):
        calls.append(n)
        if len(calls) == 2:
            raise RuntimeError("a bug, or a Redis error the store does not translate")
        return await real_peek(n)

    box.peek = peek_fails_once  # type: ignore[method-assign]
    for i in range(3):
        await fwd.sink({"n": i})
    task = asyncio.create_task(fwd.run())
    await wait_for(lambda: len(calls) >= 2)
    for i in range(3, 6):
        await fwd.sink({"n": i})
    await wait_for(lambda: [n for post in validator.posts for n in post][-3:] == [3, 4, 5])
    await drained(box)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await box.close()


async def test_a_validator_queue_smaller_than_a_batch_gets_smaller_batches(tmp_path: Path) -> None:
    """The validator queues a batch whole or answers 503: a batch bigger than its queue was retried whole
    forever."""
    box = SQLiteOutbox(tmp_path / "api.db")
    validator = FakeValidator(answers=[(503, {}), (503, {})])
    fwd = OutboxForwarder(box, validator, "http://x", "hk", lease_seconds=1.0, linger=0, base_delay=0.01,
                          max_delay=0.02, batch=8)
    for i in range(8):
        await fwd.sink({"n": i})
    async with running(fwd):
        await wait_for(lambda: [n for post in validator.posts[2:] for n in post] == list(range(8)))
    assert [len(p) for p in validator.posts[:3]] == [8, 4, 2], "halved on each 503"
    await box.close()


async def test_a_validator_that_refuses_our_signature_is_a_warning_that_names_the_settings(tmp_path: Path) -> None:
    """A validator whose API_HOTKEYS lacks this API's hotkey answers 403 to every payload: all organic
    scoring stopped while the outbox grew, and only a DEBUG line said so."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    received: list[dict] = []
    try:
        async with serve_app(scoring_app(received, [403] * 6)) as url, make_session() as session:
            box = SQLiteOutbox(tmp_path / "api.db")
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            await fwd.sink({"n": 0})
            async with running(fwd):
                await wait_for(lambda: len(received) == 1)  # refused 6 times, then accepted: kept, not lost
            await box.close()
    finally:
        logger.remove(sink)
    refused = [x for x in lines if "refuses this API's scoring payloads" in x]
    assert len(refused) == 1, "one warning a minute, not one per retry"
    assert "API_HOTKEYS" in refused[0] and API.ss58_address in refused[0] and "HTTP 403: nope" in refused[0]


async def test_a_validator_that_cannot_read_our_signature_keeps_the_payloads(tmp_path: Path) -> None:
    """A 400 ``MalformedAuth`` (a validator of another sn1 version) was taken for its verdict that the payloads
    are malformed: the batch went one by one and every payload was dropped, a WARNING each. It is about our
    signature: kept, one WARNING a minute saying so, delivered once the validator reads it."""
    refusal = {"error": {"message": "MalformedAuth: missing or unsupported x-btauth-version", "type":
                         "invalid_request_error", "param": None, "code": "MalformedAuth"}}
    validator = FakeValidator(answers=[(400, refusal)] * 4)
    box = SQLiteOutbox(tmp_path / "api.db")
    fwd = OutboxForwarder(box, validator, "http://x", "hk", lease_seconds=1.0, linger=0, base_delay=0.02,
                          max_delay=0.05)
    lines, sink = log_lines("WARNING")
    try:
        for i in range(3):
            await fwd.sink({"n": i})
        async with running(fwd):
            await drained(box)
    finally:
        logger.remove(sink)
        await box.close()
    assert validator.posts[-1] == [0, 1, 2] and all(p == [0, 1, 2] for p in validator.posts), validator.posts
    assert not [x for x in lines if "malformed" in x], lines
    told = [x for x in lines if "cannot read this API's signature" in x]
    assert len(told) == 1 and "same sn1 version" in told[0] and "MalformedAuth" in told[0], lines


async def test_a_validator_down_is_one_warning_and_its_return_one_line(tmp_path: Path) -> None:
    """Each failed post was a DEBUG line: a validator down for an hour grew the outbox with nothing said at
    INFO. Now its first failure is a WARNING naming the cause, and the first delivery after is an INFO line."""
    lines, sink = log_lines("INFO")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    received: list[dict] = []
    box = SQLiteOutbox(tmp_path / "api.db")
    try:
        async with make_session() as session:
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            async with running(fwd):
                for i in range(5):
                    await fwd.sink({"n": i})
                await wait_for(lambda: fwd.delivery_failures >= 3)
                async with serve_app(scoring_app(received), port=port):
                    await wait_for(lambda: len(received) == 5)
                    await drained(box)
    finally:
        logger.remove(sink)
        await box.close()
    told = [x for x in lines if "scoring payloads not delivered" in x]
    assert len(told) == 2, lines
    assert told[0].startswith(f"WARNING scoring payloads not delivered to the validator at {url}: ")
    assert "Cannot connect" in told[0] and "kept in the outbox and retried" in told[0]
    assert told[1].startswith(f"INFO recovered: scoring payloads not delivered to the validator at {url}: it takes them again "
                              "after "), told


async def test_a_validator_that_is_behind_is_said_so(tmp_path: Path) -> None:
    """A 503 (its scoring queue is full) names what it means."""
    lines, sink = log_lines("INFO")
    received: list[dict] = []
    try:
        async with serve_app(scoring_app(received, [503])) as url, make_session() as session:
            box = SQLiteOutbox(tmp_path / "api.db")
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            await fwd.sink({"n": 0})
            async with running(fwd):
                await wait_for(lambda: len(received) == 1)
                await drained(box)
            await box.close()
    finally:
        logger.remove(sink)
    (warning,) = [x for x in lines if x.startswith("WARNING scoring payloads not delivered")]
    assert "HTTP 503 (its scoring queue is full: the validator is behind)" in warning


async def test_an_outage_is_told_once_whichever_worker_holds_the_lease_at_its_start_and_end(make_outbox) -> None:  # noqa: F811
    """With WORKERS > 1 the worker that logged "not delivered" could lose the lease: the new holder logged a
    second WARNING when it failed too, and nothing when it delivered, so the run never read as over (and the
    first worker, given the lease back much later, said "takes them again" then). The run lives in the store
    beside the lease now: one WARNING, one INFO line, whichever worker says each. Both backends."""
    lines, sink = log_lines("INFO")
    received: list[dict] = []
    statuses = [503] * 10_000  # the validator behind until cleared
    first, second = make_outbox(max_items=100), make_outbox(max_items=100)  # two workers, one store
    try:
        async with serve_app(scoring_app(received, statuses)) as url, make_session() as session:
            a = forwarder(first, MinerClient(session, Signer(API)), url)
            b = forwarder(second, MinerClient(session, Signer(API)), url)
            async with running(a):  # stopped below: the lease moves (a stall past it, or a restart, alike)
                for i in range(5):
                    await a.sink({"n": i})
                await wait_for(lambda: a.delivery_failures >= 2)
            async with running(b):
                await wait_for(lambda: b.delivery_failures >= 2)
                statuses.clear()  # the validator is back
                await wait_for(lambda: len(received) == 5)
                await drained(first)
                told_when_back = [x for x in lines if "scoring payloads not delivered" in x]
            async with running(a):  # the first worker gets the lease back, and delivers
                await a.sink({"n": 5})
                await wait_for(lambda: len(received) == 6)
    finally:
        logger.remove(sink)
    told = [x for x in lines if "scoring payloads not delivered" in x]
    assert told == told_when_back, "the first worker, back with the lease, told a run already over"
    assert [x.split(":")[0] for x in told] == ["WARNING scoring payloads not delivered to the validator at http",
                                               "INFO recovered"], told
    assert told[1].startswith("INFO recovered: scoring payloads not delivered to the validator at http"), told
    assert "HTTP 503" in told[0]
    assert ": it takes them again after " in told[1], told
    assert f"({a.delivery_failures + b.delivery_failures} failure(s))" in told[1], told
    assert await first.outage_ended() is None, "the run is over in the store too"
    assert [p["n"] for p in received] == list(range(6))


async def test_a_validator_outage_outlived_by_a_redis_restarted_empty_still_ends_in_one_line(tmp_path: Path) -> None:
    """The run every worker shares lives in Redis: a Redis restarted empty (or flushed) in a validator outage took
    it along, so failures after it began a second WARNING and the validator's return was told by no line (the
    WARNING stood, as if payloads were still not delivered). The worker that failed in the run and has held the
    lease since knows nobody else ended it: one WARNING, and one INFO line when the validator is back."""
    from shared.store.outbox import RedisOutbox
    from tests.chaos.own_redis import own_redis_server

    lines, sink = log_lines("INFO")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    received: list[dict] = []
    try:
        async with own_redis_server(tmp_path) as server, make_session() as session:
            box = RedisOutbox.from_url(server.url)
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            try:
                async with running(fwd):
                    await fwd.sink({"n": 0})
                    await wait_for(lambda: fwd.delivery_failures >= 2)
                    await server.restart()  # empty: the payload and the run's record gone
                    await wait_for(lambda: fwd.pass_outage.failures == 0)
                    await fwd.sink({"n": 1})
                    await wait_for(lambda: fwd.delivery_failures >= 4)  # the outage goes on
                    await server.client.flushdb()  # and the record goes again, the validator back before a failure
                    async with serve_app(scoring_app(received), port=port):
                        await fwd.sink({"n": 2})
                        await wait_for(lambda: len(received) == 1)
                        await drained(box)  # type: ignore[arg-type]
            finally:
                await box.close()
    finally:
        logger.remove(sink)
    told = [x for x in lines if "scoring payloads not delivered" in x]
    assert [x.split(":")[0] for x in told] == ["WARNING scoring payloads not delivered to the validator at http",
                                               "INFO recovered"], told
    assert told[1].startswith("INFO recovered: scoring payloads not delivered to the validator at http"), told
    assert ": it takes them again after " in told[1] and f"({fwd.delivery_failures} failure(s))" in told[1], told
    assert received == [{"n": 2}]


async def test_a_forwarder_stopped_at_any_moment_ends(make_outbox) -> None:  # noqa: F811
    """Stopped while it talks to its store, the forwarder ends. On Redis it went on delivering after its cancel
    now and then: redis-py writes each command through ``asyncio.wait_for``, which on 3.11 returns the result
    when the cancel lands in the turn the write finished, so ``running`` waited for it for good (CI hung in
    the outage test above, stopping its first worker). Both backends; stops at random moments early in a
    pass, where the store is talked to."""
    box = make_outbox(max_items=100)
    rng = random.Random(3)
    async with serve_app(scoring_app([], [503] * 10_000)) as url, make_session() as session:
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        await box.put({"n": 0})
        for attempt in range(150):
            task = asyncio.create_task(fwd.run())
            await asyncio.sleep(rng.uniform(0, 0.004))
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2.0)
            if not done:
                where = describe([task])
                for _ in range(50):  # each cancel that lands is obeyed unless swallowed again
                    task.cancel()
                    if (await asyncio.wait({task}, timeout=0.1))[0]:
                        break
                raise AssertionError(f"stop {attempt}: the forwarder ran on after its cancel, in {where}")


async def test_a_forwarder_stopped_as_a_payload_arrives_stores_it_and_the_next_ones(tmp_path: Path) -> None:
    """A payload queued in the turn the forwarder is stopped: its group commit's task, cancelled before it ever
    ran, never cleared itself, so once the forwarder ran again no commit was ever scheduled and every ``sink``
    waited for good (the outage test above stops and restarts a worker)."""
    box = SQLiteOutbox(tmp_path / "api.db")
    fwd = OutboxForwarder(box, None, "http://127.0.0.1:9", API.ss58_address,  # type: ignore[arg-type]
                          lease_seconds=30.0, rng=random.Random(1))
    try:
        task = asyncio.create_task(fwd.run())
        await asyncio.sleep(0.05)
        task.cancel()  # the stop (a shutdown) ...
        stored = fwd.enqueue({"n": 0})  # ... and a payload settled in the same turn: its commit's task is made
        await asyncio.gather(task, return_exceptions=True)  # and cancelled by the stop before it ever ran
        assert stored.done() and await box.depth() == 1, "stored by the last commit at the stop"
        async with running(fwd):
            await within(fwd.sink({"n": 1}), 5.0)
        assert await box.depth() == 2
    finally:
        await box.close()


async def test_a_payload_the_validator_fails_on_is_dropped_after_a_few_tries_and_the_rest_delivered(
        tmp_path: Path) -> None:
    """A payload that makes the validator fail (its 500: a bug its contents trigger) was retried for good, the
    batch it sat in too, oldest first: no payload after it was ever delivered, and the outbox filled and dropped
    the newest answers. Failed on ``CRASH_ATTEMPTS`` times in a row, it is dropped once the validator takes a
    payload behind it and fails on it once more: one WARNING naming it, counted in ``rejected``. Two in a row
    (one miner's odd answer raced in both) go alike, the second once a payload behind it is taken."""
    lines, sink = log_lines("WARNING")
    received: list[dict] = []
    posts: list[list[int]] = []
    app = recording_app(received, posts)
    try:
        async with serve_app(app) as url, make_session() as session:
            box = SQLiteOutbox(tmp_path / "api.db")
            fwd = forwarder(box, MinerClient(session, Signer(API)), url)
            for i in range(5):
                await fwd.sink({"n": i, "request_id": f"rid-{i}", "crash": i in (1, 2)})
            async with running(fwd):
                await wait_for(lambda: len(received) == 3)  # the second left alone: none behind it to try
                await fwd.sink({"n": 5, "request_id": "rid-5"})  # and what comes after goes as ever
                await wait_for(lambda: len(received) == 4)
                await drained(box)
            await box.close()
    finally:
        logger.remove(sink)
    assert [p["n"] for p in received] == [0, 3, 4, 5]
    assert sum(1 in p for p in posts) <= CRASH_ATTEMPTS + 2, posts  # a batch, then alone, and once more
    told = [x for x in lines if "dropped" in x]
    assert len(told) == 2 and "rid=rid-1" in told[0] and "rid=rid-2" in told[1], told
    assert f"{CRASH_ATTEMPTS + 1} times in a row (the last: HTTP 500)" in told[0], told
    assert (fwd.delivered, fwd.rejected) == (4, 2)


async def test_a_payload_the_validator_fails_on_is_dropped_after_a_few_tries_across_the_fleet(
        make_outbox) -> None:  # noqa: F811
    """The tries of a payload the validator fails on are counted in the store: the worker that takes the lease
    over (another API worker or host, or this one restarted) goes on with the count. Each counted its own, from 0,
    so with the lease moving between workers "dropped after 5 tries" was 5 a worker, and a restart began again.
    Both backends."""
    received: list[dict] = []
    posts: list[list[int]] = []
    app = recording_app(received, posts)
    first, second = make_outbox(), make_outbox()  # two workers, one store
    async with serve_app(app) as url, make_session() as session:
        a, b = (forwarder(box, MinerClient(session, Signer(API)), url) for box in (first, second))
        for i in range(4):
            await a.sink({"n": i, "request_id": f"rid-{i}", "crash": i == 1})
        async with running(a):
            await wait_for(lambda: sum(1 in p for p in posts) >= 3)  # its batch, then twice alone
        stopped_at = len(posts)
        async with running(b):  # the lease is b's now
            await wait_for(lambda: len(received) == 3)
    assert [p["n"] for p in received] == [0, 2, 3] and a.rejected + b.rejected == 1
    # a batch, then alone, and once more; and one that may have been on its way at the first worker's stop
    assert sum(1 in p for p in posts) <= CRASH_ATTEMPTS + 3, f"{posts} (a: {stopped_at})"


async def test_a_payload_whose_post_always_times_out_is_dropped_and_the_rest_delivered(tmp_path: Path) -> None:
    """A payload whose post never ends in its time (too large for the link to the validator, or one the validator
    hangs on) was posted again and again, in its batch too: nothing behind it was delivered. It goes as one the
    validator fails on (a 500) does."""
    lines, sink = log_lines("WARNING")
    try:
        async def slow_then_more(fwd: OutboxForwarder, box: SQLiteOutbox) -> None:
            await wait_for(lambda: fwd.rejected == 1, timeout=30)

        received, fwd = await delivered_through(tmp_path, [], 4, slow_then_more, slow={1})
    finally:
        logger.remove(sink)
    assert [p["n"] for p in received] == [0, 2, 3]
    (told,) = [x for x in lines if "dropped" in x]
    assert "times in a row (the last: its post timed out after 1 s)" in told, told


async def delivered_through(tmp_path: Path, statuses: list[int], count: int,
                            meanwhile: Callable[[OutboxForwarder, SQLiteOutbox], Awaitable[None]] | None = None,
                            *, slow: frozenset[int] | set[int] = frozenset()) -> tuple[list[dict], OutboxForwarder]:
    """``count`` payloads (``{"n": i}``, ``slow`` ones answered too late) delivered by a forwarder to a validator
    answering ``statuses`` first, then 202: what it received once the outbox is drained (of all but the slow).
    ``meanwhile`` runs first, the forwarder running."""
    received: list[dict] = []
    async with serve_app(scoring_app(received, statuses)) as url, make_session() as session:
        box = SQLiteOutbox(tmp_path / "api.db")
        fwd = forwarder(box, MinerClient(session, Signer(API)), url)
        for i in range(count):
            await fwd.sink({"n": i, "slow": i in slow})
        async with running(fwd):
            if meanwhile is not None:
                await meanwhile(fwd, box)
            await wait_for(lambda: len(received) == count - len(slow))
            await drained(box)
        await box.close()
    return received, fwd


async def test_a_payload_the_validator_failed_on_by_chance_is_delivered_not_dropped(tmp_path: Path) -> None:
    """A validator that answers 500 now and then (not because of the payload) fails on the head of the outbox
    ``CRASH_ATTEMPTS`` times in a row by chance, then takes the one behind it: the head is tried once more
    before it is dropped, and delivered."""
    statuses = [500] * (1 + CRASH_ATTEMPTS)  # the first batch, then the head alone: then all is well
    received, fwd = await delivered_through(tmp_path, statuses, 3)
    assert sorted(p["n"] for p in received) == [0, 1, 2] and fwd.rejected == 0 and not statuses


async def test_a_validator_that_fails_on_every_payload_loses_none(tmp_path: Path) -> None:
    """A validator answering 500 to everything (broken, not one payload) is an outage: it takes none of the
    payloads behind the one it fails on either, so none is dropped however long it lasts."""
    statuses = [500] * 10_000

    async def broken_a_while(fwd: OutboxForwarder, box: SQLiteOutbox) -> None:
        await wait_for(lambda: fwd.delivery_failures >= 3 * CRASH_ATTEMPTS, timeout=30)
        assert await box.depth() == 4
        statuses.clear()  # fixed

    received, fwd = await delivered_through(tmp_path, statuses, 4, broken_a_while)
    assert [p["n"] for p in received] == [0, 1, 2, 3] and fwd.rejected == 0


async def test_a_full_outbox_is_told_once_however_many_workers_drop(make_outbox, monkeypatch) -> None:  # noqa: F811
    """With WORKERS > 1 every worker's commits drop from a full outbox, and each told its own run: a WARNING
    each, a line a minute each, an INFO line each, every one counting its own drops "since start", none of
    them the total of ``sn1_api_outbox_dropped``. The run is the store's now: one WARNING, one line a minute,
    one INFO line, whichever worker commits, with the store's total. Both backends."""
    import shared.store.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "FULL_EVERY_S", 0.5)
    monkeypatch.setattr(outbox_module, "FULL_SETTLE_S", 0.5)
    lines, sink = log_lines("INFO")
    first, second = make_outbox(max_items=2), make_outbox(max_items=2)  # two workers, one store
    a = OutboxForwarder(first, FakeValidator(), "http://x", "hk")  # type: ignore[arg-type]
    b = OutboxForwarder(second, FakeValidator(), "http://x", "hk")  # type: ignore[arg-type]
    try:
        for i in range(3):
            await a.sink({"n": i})  # the third drops the first: the run begins
        await b.sink({"n": 3})
        await asyncio.sleep(0.6)
        await a.sink({"n": 4})  # a minute's line is due (B's drop and this one)
        await b.sink({"n": 5})
        await first.ack_many([i.id for i in await first.peek(10)])  # the validator takes them again
        await asyncio.sleep(0.6)
        await b.sink({"n": 6})  # nothing dropped a settle after the last drop: the run ends
        await a.sink({"n": 7})
    finally:
        logger.remove(sink)
    told = [x for x in lines if "scoring outbox full" in x]
    assert [x.split(" ")[0] for x in told] == ["WARNING", "WARNING", "INFO"], told
    assert "dropped 1 oldest payload(s) to store 1 (1 in all;" in told[0], told
    assert "still failing, 2 more time(s) in the last 1 s" in told[1] and "(3 in all;" in told[1], told
    assert ": it has room again after " in told[2] and "(4 failure(s))" in told[2], told
    assert await first.dropped() == 4


class NoJitter(random.Random):
    """Full jitter at its top: each backoff its whole cap, so a test can count the posts an outage allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_workers_sharing_an_outbox_go_on_with_one_backoff_in_an_outage(make_outbox) -> None:  # noqa: F811
    """Two workers on one store, the validator down. Each kept its own backoff: the holder let the lease go in
    its backoff, and the worker that took it, not having failed, posted at once and began again from the base,
    so the validator was posted to about once a lease however long the outage, not at the README's "doubling to
    60 s". The backoff is the store's now: whoever holds the lease waits for it, and the posts follow one count.
    Both backends."""
    posts: list[float] = []

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        posts.append(asyncio.get_running_loop().time())
        return web.json_response({"error": {"message": "down"}}, status=503)

    app = web.Application(middlewares=[count])
    app.router.add_post("/scoring", lambda request: web.Response())
    boxes = [make_outbox(), make_outbox()]  # two workers, one store
    async with serve_app(app) as url, make_session() as session:
        workers = [OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address, lease_seconds=0.3,
                                   base_delay=0.05, max_delay=2.0, rng=NoJitter()) for box in boxes]
        await workers[0].sink({"n": 0})
        async with running(workers[0]), running(workers[1]):
            await asyncio.sleep(3.5)
    # one backoff: posts at 0, then 0.1, 0.3, 0.7, 1.5 and 3.1 s (each wait twice the last, up to 2 s)
    assert len(posts) <= 7, [round(t - posts[0], 2) for t in posts]
    gaps = [b - a for a, b in zip(posts, posts[1:], strict=False)]
    assert all(b >= a * 1.5 for a, b in zip(gaps, gaps[1:], strict=False)), [round(g, 2) for g in gaps]
    assert min(w.delivery_failures for w in workers) >= 1, "the lease moved: both workers posted"


async def test_a_next_attempt_set_by_a_clock_far_ahead_is_not_waited_for(make_outbox) -> None:  # noqa: F811
    """The fleet's next attempt is a wall-clock time: one set by a host whose clock is an hour ahead (or before
    ours stepped back) would hold every worker's deliveries that hour. Past two ``max_delay``, it is not waited
    for. Both backends."""
    received: list[dict] = []
    box = make_outbox()
    await box.outage_backoff(time.time() + 3600, Pace(base=0.5, most=60.0, jitter=1.0))
    async with serve_app(scoring_app(received)) as url, make_session() as session:
        fwd = OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address, lease_seconds=1.0,
                              base_delay=0.05, max_delay=1.0)
        await fwd.sink({"n": 0})
        async with running(fwd):
            await wait_for(lambda: len(received) == 1, timeout=3.0)
    assert await box.outage_resume_at() == 0.0, "the delivery ended the backoff"


async def test_a_worker_that_cannot_reach_the_validator_holds_the_fleets_deliveries_no_longer_than_a_lease(
        make_outbox) -> None:  # noqa: F811
    """Workers (or hosts) share one outbox; the one holding its delivery lease cannot reach the validator (a
    network split) while another can. The holder lets the lease go while it backs off, so another worker takes it
    within a lease and delivers: a holder that kept it through its backoff (tried on 2026-12-07, so that the
    fleet's posts in an outage follow one count) held every payload of the fleet for as long as it lived."""
    received: list[dict] = []
    boxes = [make_outbox(), make_outbox()]
    async with serve_app(scoring_app(received)) as url, make_session() as session:
        cut_off = OutboxForwarder(boxes[0], MinerClient(session, Signer(API)), "http://127.0.0.1:9", API.ss58_address,
                                  lease_seconds=0.3, base_delay=0.2, max_delay=5.0, rng=NoJitter())
        reaching = OutboxForwarder(boxes[1], MinerClient(session, Signer(API)), url, API.ss58_address,
                                   lease_seconds=0.3, base_delay=0.2, max_delay=5.0, rng=NoJitter())
        await cut_off.sink({"n": 0})
        async with running(cut_off):
            for _ in range(100):  # the cut-off worker has failed a few times: its backoff is past the lease
                if cut_off.failures >= 3:
                    break
                await asyncio.sleep(0.05)
            assert cut_off.failures >= 3
            async with running(reaching):
                for _ in range(60):
                    if received:
                        break
                    await asyncio.sleep(0.05)
    assert [p["n"] for p in received] == [0], "delivered by the worker that reaches the validator, within a lease or so"


async def test_a_lone_payload_the_validator_fails_on_is_retried_at_the_backoff(tmp_path: Path) -> None:
    """A payload the validator fails on (its 500) with none behind it cannot be told from a validator broken for
    all: it is kept and retried for the next payload to settle it, at the backoff (README: never in a loop)."""
    posts: list[float] = []

    @web.middleware
    async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
        posts.append(asyncio.get_running_loop().time())
        return await handler(request)

    received: list[dict] = []
    app = scoring_app(received)
    app.middlewares.append(count)
    box = SQLiteOutbox(tmp_path / "api.db")
    async with serve_app(app) as url, make_session() as session:
        fwd = OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address, lease_seconds=1.0,
                              base_delay=0.05, max_delay=0.4, rng=NoJitter())
        await fwd.sink({"n": 0, "crash": True})
        async with running(fwd):
            await asyncio.sleep(2.5)
    await box.close()
    gaps = [b - a for a, b in zip(posts, posts[1:], strict=False)]
    assert 3 <= len(posts) <= 9 and min(gaps) >= 0.09, [round(g, 2) for g in gaps]  # 0.1, 0.2, then 0.4 apart
    assert received == [] and fwd.rejected == 0


async def test_an_outages_stale_backlog_is_one_warning_not_one_a_batch(tmp_path: Path) -> None:
    """The backlog of a validator outage longer than its ``ORGANIC_MAX_AGE_SECONDS`` is delivered a batch at a time
    and dropped by the validator as too old: a WARNING per batch (600 payloads were 5 WARNINGs within 0.2 s on the
    local network; an hour's backlog, thousands). One run now: its first batch, then a line a minute. Against the
    validator's own ``/scoring``."""
    from neurons.validator.app import create_validator_app
    from tests.validator.test_app import make_ctx, payload

    ctx = make_ctx(queue_size=100)
    ctx.scoring_queue.max_age = 600.0
    lines, sink = log_lines("WARNING")
    try:
        async with serve_app(create_validator_app(ctx)) as url, make_session() as session:
            box = SQLiteOutbox(tmp_path / "api.db")
            fwd = OutboxForwarder(box, MinerClient(session, Signer(API)), url, API.ss58_address, lease_seconds=1.0,
                                  batch=4, linger=0.0, rng=random.Random(1))
            for i in range(20):
                await fwd.sink(payload(request_id=f"old-{i}", kind="chat", created_at=time.time() - 3600))
            async with running(fwd):
                await drained(box)
            await box.close()
    finally:
        logger.remove(sink)
    assert fwd.stale == 20 and ctx.scoring_queue.stale_dropped == 20
    told = [line for line in lines if "older than it scores" in line]
    assert told == ["WARNING validator drops scoring payloads as older than it scores (its ORGANIC_MAX_AGE_SECONDS): "
                    "not scored: 4 of 4 in a delivery (4 since start)"], told
