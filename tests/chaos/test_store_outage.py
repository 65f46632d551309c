"""Store outage: the Redis behind the API is cut, or hangs. Every request is a quick 503 with a clear
message (never a 200 without a key check, never a hang), and the API recovers by itself, with the
same store object, once Redis is back.

The real Redis is shared, so the outage is made by a TCP proxy between the API and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.store.redis import RedisStore
from tests.chaos.fleet import MESSAGES, Fleet, fleet_on, wait_until
from tests.chaos.tcp_proxy import TcpProxy, tcp_proxy

REDIS_URL = os.environ.get("REDIS_URL")
pytestmark = pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set: the store-outage tests need a Redis")
ADMIN = "admin-secret-for-tests"


@contextlib.asynccontextmanager
async def api_on_proxied_redis(tmp_path: Path) -> AsyncIterator[tuple[Fleet, TcpProxy, str]]:
    assert REDIS_URL
    url = urllib.parse.urlparse(REDIS_URL)
    namespace = f"chaos-{uuid.uuid4().hex[:12]}"
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        store = RedisStore.from_url(f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}", namespace=namespace)
        try:
            async with fleet_on(tmp_path, store, "outage") as (f, secret):
                yield f, proxy, secret
        finally:
            direct = RedisStore.from_url(REDIS_URL, namespace=namespace)
            async for key in direct.redis.scan_iter(match=f"{namespace}*"):
                await direct.redis.delete(key)
            await direct.close()


async def chat(s: aiohttp.ClientSession, f: Fleet, key: str) -> tuple[int, dict, float]:
    started = time.monotonic()
    async with s.post(f.url + "/v1/chat/completions", json={"messages": MESSAGES, "seed": 1},
                      headers={"Authorization": f"Bearer {key}"}, timeout=aiohttp.ClientTimeout(total=30)) as r:
        return r.status, await r.json(content_type=None), time.monotonic() - started


@pytest.mark.parametrize("outage", ["cut", "stall"])
async def test_store_outage_is_503_never_open_and_recovers_by_itself(tmp_path: Path, outage: str) -> None:
    async with api_on_proxied_redis(tmp_path) as (f, proxy, key), aiohttp.ClientSession() as s:
        assert (await chat(s, f, key))[0] == 200
        await (proxy.cut() if outage == "cut" else proxy.stall())
        for who in (key, "sn1-not-a-key"):  # a valid key and a forged one: both 503, neither gets in
            status, body, elapsed = await chat(s, f, who)
            assert status == 503, body
            assert body["error"]["code"] == "store_unavailable" and "unavailable" in body["error"]["message"]
            assert elapsed < 5, f"a {outage} store must fail fast (socket timeouts), took {elapsed:.1f}s"
        async with s.post(f.url + "/api_management/create-api-key?rate_limit=5", headers={"admin-key": ADMIN}) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "store_unavailable"
        await proxy.restore()
        statuses: list[int] = []

        async def recovered() -> bool:
            statuses.append((await chat(s, f, key))[0])
            return statuses[-1] == 200

        deadline = time.monotonic() + 15
        while not await recovered() and time.monotonic() < deadline:
            await wait_until(lambda: False, 0.2)
        assert statuses[-1] == 200, f"no recovery after the store came back: {statuses}"
        assert set(statuses) <= {200, 503}


async def test_every_redis_backed_store_fails_fast_on_a_stalled_redis() -> None:
    """Only the key store's client had socket timeouts: a Redis that stalls (a host gone from the network, CLIENT
    PAUSE) held a stored response's write, a conversation's, a session's or the outbox's for as long as it
    lasted (a response answered by its miner waited the whole stall before its caller got it). Each is now a
    quick StoreUnavailable, and each works again once Redis answers."""
    from shared.store.base import StoreUnavailable
    from shared.store.conversations import open_conversations
    from shared.store.outbox import open_outbox
    from shared.store.responses import open_responses
    from shared.store.sessions import open_sessions

    assert REDIS_URL
    url = urllib.parse.urlparse(REDIS_URL)
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        proxied, namespace = f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}", f"chaos-{uuid.uuid4().hex[:12]}"
        responses, conversations = open_responses(proxied, namespace=namespace), open_conversations(proxied, namespace=namespace)
        sessions, outbox = open_sessions(proxied, namespace=namespace), open_outbox(proxied, namespace=namespace)
        reads = {"responses": lambda: responses.get("key", "resp_x"),
                 "conversations": lambda: conversations.get("key", "conv_x"),
                 "sessions": lambda: sessions.get("sess-x"), "outbox": outbox.depth}
        for read in reads.values():
            await read()  # connected while Redis answers
        await proxy.stall()

        async def timed(read: Any) -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                await asyncio.wait_for(read(), 11)  # TimeoutError: it hung (REDIS_DATA_TIMEOUT_S is 5 s)
            except StoreUnavailable as e:
                return time.monotonic() - started, e
            return time.monotonic() - started, None

        outcomes = dict(zip(reads, await asyncio.gather(*(timed(r) for r in reads.values())), strict=True))
        for name, (took, error) in outcomes.items():  # at once: each store has its own client
            assert isinstance(error, StoreUnavailable), name
            assert took < 8, name  # 5 s; it was as long as the stall
        await proxy.restore()
        for read in reads.values():
            await read()
        for store in (responses, conversations, sessions):
            await store.r.aclose()
        await outbox.r.aclose()


async def test_a_turn_whose_redis_is_cut_as_it_ends_fails_and_is_added_once_when_sent_again(tmp_path: Path) -> None:
    """The conversations' Redis cut while the miner answers a turn of one: the caller got a 200 and the
    conversation silently lacked the turn. The OpenAI SDK now raises the 503 ``store_unavailable`` (no answer,
    nothing kept); once Redis is back the same turn, sent again, is in the conversation once."""
    import openai

    from shared.store.conversations import RedisConversationStore
    from tests.helpers import Script, api_with_miners, chunk, sse

    assert REDIS_URL
    url = urllib.parse.urlparse(REDIS_URL)
    namespace = f"chaos-{uuid.uuid4().hex[:12]}"
    miner = Script([(0.5, d) for d in sse(chunk("Noted."), chunk(finish="stop"))])
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy, \
            api_with_miners(tmp_path, {1: miner}) as api:
        conversations = RedisConversationStore.from_url(f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}",
                                                        namespace=namespace)
        await api.ctx.conversations.aclose()
        api.ctx.conversations = conversations  # the keys stay on SQLite: only the conversations' store fails
        client = openai.AsyncOpenAI(base_url=api.url + "/v1", api_key=api.key, max_retries=0, timeout=30)
        try:
            made = await client.conversations.create(items=[{"role": "user", "content": "Hi"}])
            turn = asyncio.ensure_future(client.responses.create(model="default", input="Hi again",
                                                                 conversation=made.id))
            assert await wait_until(lambda: miner.active > 0, 10) < 10  # its history was read: the miner is asked
            await proxy.cut()
            with pytest.raises(openai.InternalServerError) as e:
                await turn
            assert (e.value.status_code, e.value.code) == (503, "store_unavailable")
            assert f"not added to conversation '{made.id}'" in e.value.message
            await proxy.restore()
            again = await client.responses.create(model="default", input="Hi again", conversation=made.id)
            items = [i async for i in client.conversations.items.list(made.id, order="asc")]
            assert [(i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr]
                ("user", "Hi"), ("user", "Hi again"), ("assistant", "Noted.")]
            assert items[-1].id == again.output[0].id
        finally:
            await client.close()
            async for key in conversations.r.scan_iter(match=f"{namespace}*"):
                await conversations.r.delete(key)
