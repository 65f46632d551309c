"""A key's limit on requests in flight (``MAX_CONCURRENT_REQUESTS_PER_KEY``, a key's ``max_concurrent_requests``),
through the real API app and a slow scripted miner, on a SQLite file and on Redis (``REDIS_URL``): the request past
the limit is a 429 ``concurrency_limit_exceeded`` with ``Retry-After`` and is not charged to the key's request rate;
a slot frees when its stream ends and when its client leaves; two API processes on one store share the count; a
long stream keeps its slot past a lease; and the slots of a holder that died come back after their lease."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api import concurrency
from shared.store.base import Hold, hash_key
from shared.store.redis import RedisStore
from tests.chaos.tcp_proxy import TcpProxy, tcp_proxy
from tests.helpers import ApiUnderTest, Script, apis_on_one_store, call, chunk, sse
from tests.store.conftest import redis_url

STORES = ["sqlite", "redis"]
LIMIT = 2
LEASE_S = 1.0  # short, so a test sees a lease pass (and its renewal)
CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def holding(ends: asyncio.Event) -> Script:
    """A miner whose every answer streams its first chunk at once and its end once ``ends`` is set. Ended 3 s
    later instead, the streams of a test on a loaded host ended before it asked for the request past the limit
    (answered, not refused), and a test whose streams end waited out the 3 s."""
    first, finish, done = sse(chunk("hi"), chunk(finish="stop"))
    return Script([(0, first), (ends, finish), (0, done)])


@contextlib.asynccontextmanager
async def limited(tmp_path: Path, store: str, count: int = 1,
                  ends: asyncio.Event | None = None) -> AsyncIterator[list[ApiUnderTest]]:
    """``count`` APIs on one store, each key limited to ``LIMIT`` requests in flight, and a miner that holds its
    streams open until ``ends`` is set (by the test, or as this ends: the servers then stop with no stream held)."""
    ends = ends or asyncio.Event()
    async with apis_on_one_store(tmp_path, store, count, holding(ends), max_concurrent_requests_per_key=LIMIT,
                                 concurrency_lease_seconds=LEASE_S) as apis:
        try:
            yield apis
        finally:
            ends.set()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def open_stream(session: aiohttp.ClientSession, api: ApiUnderTest, key: str) -> aiohttp.ClientResponse:
    """A chat stream, read up to its first event: in flight until read to its end or closed."""
    r = await session.post(api.url + "/v1/chat/completions", json=CHAT, headers=auth(key))
    assert r.status == 200, await r.text()
    assert (await r.content.readline()).startswith(b"data: ")
    return r


async def refused(api: ApiUnderTest, key: str, path: str = "/v1/chat/completions",
                  body: dict[str, Any] = CHAT) -> aiohttp.ClientResponse:
    async with aiohttp.ClientSession() as s, s.post(api.url + path, json=body, headers=auth(key)) as r:
        await r.read()
        return r


async def rate_remaining(api: ApiUnderTest, key: str) -> int:
    """What a ``/v1/usage`` call (charged like any request) says is left of the key's request rate after it."""
    async with aiohttp.ClientSession() as s, s.get(api.url + "/v1/usage", headers=auth(key)) as r:
        return int(r.headers["x-ratelimit-remaining-requests"])


async def in_flight(api: ApiUnderTest, key: str) -> int:
    status, usage = await call(api, "GET", "/v1/usage", key=key)
    assert status == 200 and usage["max_concurrent_requests"] == LIMIT
    return usage["requests_in_flight"]


async def until_in_flight(api: ApiUnderTest, key: str, want: int, timeout: float = 5.0) -> int:
    deadline = asyncio.get_running_loop().time() + timeout
    while (now := await in_flight(api, key)) != want and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - the store's count, polled
        await asyncio.sleep(0.05)
    return now


@pytest.mark.parametrize("store", STORES)
async def test_the_request_past_the_limit_is_a_429_not_charged_and_slots_free_as_streams_end(tmp_path: Path,
                                                                                           store: str) -> None:
    ends = asyncio.Event()
    async with limited(tmp_path, store, ends=ends) as (api,), aiohttp.ClientSession() as s:
        one, two = await open_stream(s, api, api.key), await open_stream(s, api, api.key)
        assert await in_flight(api, api.key) == LIMIT
        remaining = int(two.headers["x-ratelimit-remaining-requests"])
        no = await refused(api, api.key)
        assert no.status == 429 and no.headers["Retry-After"] == "1" and no.headers["retry-after-ms"] == "1000"
        assert "x-ratelimit-remaining-requests" not in no.headers  # not charged: the window was not read
        assert (await no.json())["error"]["code"] == "concurrency_limit_exceeded"
        # not charged to the key's request rate: the window holds the two streams and the two /v1/usage calls only
        assert await rate_remaining(api, api.key) == remaining - 2
        for path, body in (("/v1/completions", {"prompt": "hi"}), ("/v1/responses", {"input": "hi"})):
            assert (await refused(api, api.key, path, body)).status == 429  # every kind counts
        other, _ = await api.ctx.store.create_key(1000)  # another key has its own count
        three = await open_stream(s, api, other)
        await asyncio.sleep(LEASE_S * 1.5)  # past a lease: the streams' slots are renewed, still held
        assert (await refused(api, api.key)).status == 429
        ends.set()
        for r in (one, two, three):
            assert (await r.read()).endswith(b"data: [DONE]\n\n")  # each stream ends...
        assert await until_in_flight(api, api.key, 0) == 0  # ... and gives its slot back
        again = await open_stream(s, api, api.key)
        again.close()


@pytest.mark.parametrize("store", STORES)
async def test_a_client_that_leaves_gives_its_slot_back(tmp_path: Path, store: str) -> None:
    async with limited(tmp_path, store) as (api,), aiohttp.ClientSession() as s:
        one, two = await open_stream(s, api, api.key), await open_stream(s, api, api.key)
        assert (await refused(api, api.key)).status == 429
        one.close()  # the client disconnects mid-stream
        assert await until_in_flight(api, api.key, 1) == 1
        three = await open_stream(s, api, api.key)
        assert (await refused(api, api.key)).status == 429
        two.close()
        three.close()
        assert await until_in_flight(api, api.key, 0) == 0


@pytest.mark.parametrize("store", STORES)
async def test_two_api_processes_on_one_store_share_the_count(tmp_path: Path, store: str) -> None:
    async with limited(tmp_path, store, count=2) as (a, b), aiohttp.ClientSession() as s:
        key = a.key
        one, two = await open_stream(s, a, key), await open_stream(s, b, key)
        assert (await refused(a, key)).status == 429
        assert (await refused(b, key)).status == 429
        assert await in_flight(b, key) == LIMIT
        one.close()
        assert await until_in_flight(b, key, 1) == 1
        three = await open_stream(s, b, key)
        two.close()
        three.close()


@pytest.mark.parametrize("store", STORES)
async def test_the_slots_of_a_process_that_died_come_back_after_their_lease(tmp_path: Path, store: str) -> None:
    async with limited(tmp_path, store) as (api,), aiohttp.ClientSession() as s:
        for i in range(LIMIT):  # another API process took slots, then died: it never renews nor frees them
            dead = Hold(holder="gone-host:1:dead", slot=f"gone-host:1:dead:{i}", default_limit=LIMIT, lease_s=LEASE_S)
            assert (await api.ctx.store.authorize(hash_key(api.key), scope="chat", hold=dead)).slot == dead.slot
        assert (await refused(api, api.key)).status == 429
        assert await until_in_flight(api, api.key, 0, timeout=LEASE_S * 3) == 0
        (await open_stream(s, api, api.key)).close()


@pytest.mark.parametrize("store", STORES)
async def test_a_keys_own_limit_overrides_the_default(tmp_path: Path, store: str) -> None:
    async with limited(tmp_path, store) as (api,), aiohttp.ClientSession() as s:
        admin = {"admin-key": "admin-secret-for-tests"}
        async with s.put(f"{api.url}/api_management/modify-api-key/{api.key}?max_concurrent_requests=1",
                         headers=admin) as r:
            assert r.status == 200 and (await r.json())["max_concurrent_requests"] == 1
        one = await open_stream(s, api, api.key)
        assert (await refused(api, api.key)).status == 429
        async with s.put(f"{api.url}/api_management/modify-api-key/{api.key}", json={"max_concurrent_requests": 0},
                         headers=admin) as r:
            assert r.status == 200
        more = [await open_stream(s, api, api.key) for _ in range(LIMIT + 1)]  # 0: no limit for this key
        async with s.put(f"{api.url}/api_management/modify-api-key/{api.key}?max_concurrent_requests=default",
                         headers=admin) as r:
            assert r.status == 200 and (await r.json())["max_concurrent_requests"] is None
        more.append(await open_stream(s, api, api.key))  # the default (LIMIT) again: the second slot...
        assert (await refused(api, api.key)).status == 429  # ... and no third
        for r in (one, *more):
            r.close()


@pytest.mark.parametrize("store", STORES)
async def test_a_key_rotated_with_streams_in_flight_keeps_its_count_and_gets_every_slot_back(tmp_path: Path,
                                                                                           store: str) -> None:
    """The admin rotates a key while its two streams (its limit) are open under the old secret: they still count
    under the new secret (the key's slots, not its secret's), and as they end their slots are given back, so the new
    secret has the key's whole limit again, none left to its lease."""
    ends = asyncio.Event()
    async with limited(tmp_path, store, ends=ends) as (api,), aiohttp.ClientSession() as s:
        one, two = await open_stream(s, api, api.key), await open_stream(s, api, api.key)
        async with s.post(f"{api.url}/api_management/rotate-api-key/{api.key}",
                          headers={"admin-key": "admin-secret-for-tests"}) as r:
            assert r.status == 200, await r.text()
            new = (await r.json())["api_key"]
        assert (await refused(api, new)).status == 429
        ends.set()
        for r in (one, two):
            assert (await r.read()).endswith(b"data: [DONE]\n\n")
        assert await until_in_flight(api, new, 0) == 0
        ends.clear()  # the streams below are held again
        again = [await open_stream(s, api, new) for _ in range(LIMIT)]
        assert (await refused(api, new)).status == 429
        for r in again:
            r.close()


def quick() -> Script:
    """A miner that answers every request at once."""
    return Script([(0, step) for step in sse(chunk("hi"), chunk(finish="stop"))])


@pytest.mark.parametrize("store", STORES)
async def test_a_client_that_keeps_to_its_limit_back_to_back_is_never_refused(tmp_path: Path, store: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """LIMIT workers, each sending its next request (a stream, then not) the moment its last answer ends: the
    finished request's slot is given back in a batch ``RELEASE_BATCH_S`` later (5 ms, here 200 ms so that a slot
    still counted is seen every time), and the key's next authorization on this process removes it first."""
    monkeypatch.setattr(concurrency, "RELEASE_BATCH_S", 0.2)
    async with apis_on_one_store(tmp_path, store, 1, quick(), max_concurrent_requests_per_key=LIMIT) as (api,):

        async def back_to_back(s: aiohttp.ClientSession) -> list[int]:
            statuses = []
            for i in range(100):
                async with s.post(api.url + "/v1/chat/completions", json={**CHAT, "stream": i % 2 == 0},
                                  headers=auth(api.key)) as r:
                    await r.read()
                    statuses.append(r.status)
            return statuses

        async with aiohttp.ClientSession() as s:
            workers = await asyncio.gather(*(back_to_back(s) for _ in range(LIMIT)))
        assert Counter(status for statuses in workers for status in statuses) == {200: 100 * LIMIT}
        assert await until_in_flight(api, api.key, 0) == 0


@dataclass
class BehindProxy:
    """One API whose store's Redis it reaches through ``proxy`` (which can hold Redis's replies), and ``watcher``, a
    client straight to Redis, past the proxy, that reads ``slots``: the slots in flight of the API's key
    (``key_id``)."""

    api: ApiUnderTest
    proxy: TcpProxy
    watcher: Any  # redis.asyncio.Redis
    key_id: str
    slots: str

    async def slots_held(self, want: int, pause: float = 0.02) -> int:
        """How many of the key's slots are taken, once they are ``want`` (or after 100 looks ``pause`` apart)."""
        for _ in range(100):
            if await self.watcher.zcard(self.slots) == want:
                break
            await asyncio.sleep(pause)
        return await self.watcher.zcard(self.slots)


@contextlib.asynccontextmanager
async def behind_proxy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, limit: int) -> AsyncIterator[BehindProxy]:
    """An API on ``REDIS_URL`` through a proxy, each key limited to ``limit`` requests in flight with 20 s leases (a
    slot left to its lease is seen as still taken); the proxy passes the replies again as this ends."""
    import redis.asyncio as aioredis

    real = urllib.parse.urlparse(redis_url())
    async with tcp_proxy(real.hostname or "127.0.0.1", real.port or 6379) as proxy:
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{proxy.port}{real.path or '/0'}")  # the API's store
        async with apis_on_one_store(tmp_path, "redis", 1, quick(), max_concurrent_requests_per_key=limit,
                                     concurrency_lease_seconds=20.0) as (api,):
            record = await api.ctx.store.get_key(hash_key(api.key))
            watcher = aioredis.from_url(redis_url())  # straight to Redis, past the proxy
            try:
                yield BehindProxy(api, proxy, watcher, record.id,
                                  f"{api.ctx.settings.store_namespace}:inflight:{record.id}")
            finally:
                proxy.pass_replies()
                await watcher.aclose()


@pytest.mark.redis
async def test_a_client_that_leaves_while_its_authorization_comes_back_gives_its_slot_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's Redis behind a proxy that holds Redis's replies: the request's authorization reaches Redis and takes
    its slot, its answer waits in the proxy, and the client leaves (its handler cancelled) before it comes back. The
    slot it sent is given back at once: it was left to its lease (here 20 s), which every other request of a key at
    its limit was refused for."""
    async with behind_proxy(monkeypatch, tmp_path, LIMIT) as b, aiohttp.ClientSession() as s:
        b.proxy.hold_replies()
        leaving = asyncio.create_task(s.post(b.api.url + "/v1/chat/completions", json=CHAT, headers=auth(b.api.key)))
        assert await b.slots_held(1) == 1  # the authorization ran: the slot is taken, its answer held
        leaving.cancel()  # the client leaves
        with contextlib.suppress(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(0.3)  # the API sees the connection close and cancels the handler
        b.proxy.pass_replies()
        assert await until_in_flight(b.api, b.api.key, 0, timeout=3.0) == 0
        assert await b.watcher.zcard(b.slots) == 0


@pytest.mark.redis
async def test_an_authorization_whose_answer_times_out_gives_its_slot_back(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis ran the request's authorization (its slot taken) but its answer came back after the key store's
    timeout: the request is the 503 ``store_unavailable``, and it holds nothing. Its slot was left to its lease (here
    20 s), for which every request of a key at its limit was refused; it is now given back as a cancelled one's is."""
    async with behind_proxy(monkeypatch, tmp_path, LIMIT) as b:
        b.proxy.hold_replies()  # past the key store's 2 s timeout
        r = await refused(b.api, b.api.key)
        assert r.status == 503, r.status
        b.proxy.pass_replies()
        assert await b.slots_held(0, pause=0.05) == 0, "the slot of a request answered 503 is still held"
        assert await until_in_flight(b.api, b.api.key, 0, timeout=3.0) == 0


@pytest.mark.redis
@pytest.mark.parametrize("rotated", [False, True], ids=["same-secret", "rotated-meanwhile"])
async def test_an_authorization_whose_link_drops_before_its_answer_gives_its_slot_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rotated: bool) -> None:
    """Redis ran the request's authorization (its slot taken), then the link dropped before the answer came back: the
    API read a closed connection (a ConnectionError, not a timeout). The request is the 503 ``store_unavailable`` and
    holds nothing, so its slot is given back, by its key's hash (the id was in the answer it lost): the key, at its
    limit of 1, is let in again at once, not refused 429 until the lease (here 20 s) ends. ``rotated``: the admin
    rotated the key while the answer was on its way, so the old hash no longer names the key (its slot was left to
    its lease)."""
    async with behind_proxy(monkeypatch, tmp_path, 1) as b:
        admin = RedisStore.from_url(redis_url(), namespace=b.api.ctx.settings.store_namespace)
        key = b.api.key
        try:
            b.proxy.hold_replies()
            dropped = asyncio.create_task(refused(b.api, key))
            assert await b.slots_held(1) == 1  # the authorization ran: the slot is taken, its answer held
            if rotated:
                key, _ = await admin.rotate_key(b.key_id)
            await b.proxy.lose_held_replies()  # the link drops: the answer is lost, the slot stays taken
            assert (await dropped).status == 503
            assert await b.slots_held(0) == 0, "the slot of a request answered 503 is still held"
            assert (await refused(b.api, key)).status == 200  # the key's one slot is free
        finally:
            await admin.close()
