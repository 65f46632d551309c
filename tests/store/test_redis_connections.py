"""Each Redis-backed store (keys, sessions, stored responses, conversations, the scoring outbox) holds its
commands to ``REDIS_CONNECTIONS`` at once, one way for all five (``RedisGate``): a burst past them waits for a
connection, never fails, and never opens more; on a Redis that stalls, the burst is told so after one
command timeout, not after a wait for each wave of 64 in turn. An API worker's five share two clients
(``RedisLinks``), and that bound with them.

Through a TCP proxy (``tests/chaos/tcp_proxy``), which counts the connections and can stall them without
touching the shared Redis."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from shared.store import open_store
from shared.store.base import REDIS_CONNECTIONS, REDIS_TIMEOUT_S, RedisGate, RedisLinks, StoreUnavailable
from shared.store.conversations import open_conversations
from shared.store.outbox import RedisOutbox, open_outbox
from shared.store.redis import RedisStore
from shared.store.responses import open_responses
from shared.store.sessions import open_sessions
from tests.chaos.tcp_proxy import TcpProxy, tcp_proxy
from tests.store.conftest import drop_keys, redis_url

pytestmark = pytest.mark.redis
BURST = 5 * REDIS_CONNECTIONS


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[tuple[TcpProxy, str, str]]:
    """A proxy to the test Redis, the URL through it, and a fresh namespace (dropped afterwards)."""
    url = urllib.parse.urlparse(redis_url())
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    async with tcp_proxy(url.hostname or "127.0.0.1", url.port or 6379) as proxy:
        try:
            yield proxy, f"redis://127.0.0.1:{proxy.port}{url.path or '/0'}", namespace
        finally:
            await proxy.restore()
            store = RedisStore.from_url(redis_url(), namespace=namespace)
            await drop_keys(store.redis, namespace)
            await store.close()


def reads(url: str, namespace: str, links: RedisLinks | None = None,
          ) -> dict[str, tuple[Any, Callable[[], Awaitable[Any]]]]:
    """Each store, opened on ``url`` (each on a client of its own, or on ``links`` as an API worker opens them),
    and one read of it (as a request makes)."""
    keys = open_store(url, namespace=namespace, links=links)
    sessions = open_sessions(url, namespace=namespace, links=links)
    responses = open_responses(url, namespace=namespace, links=links)
    conversations = open_conversations(url, namespace=namespace, links=links)
    outbox = open_outbox(url, namespace=namespace, links=links)
    return {"keys": (keys, lambda: keys.get_key("0" * 64)),
            "sessions": (sessions, lambda: sessions.get("sess-x")),
            "responses": (responses, lambda: responses.get("key", "resp_x")),
            "conversations": (conversations, lambda: conversations.get("key", "conv_x")),
            "outbox": (outbox, outbox.depth)}


def patient(url: str) -> str:
    """``url`` with 30 s to connect and for a command, and so 30 s for a command to wait for a connection (the
    gate's wait is the client's ``socket_timeout``; the URL's options win over the stores' own): on a loaded CI host
    a burst's first 64 through the in-process proxy once took over the data stores' 5 s and the rest were told "no
    free connection", and connects once took over the key store's 2 s, from a Redis that was answering. The bound
    on connections is what these tests are about, not a starved host's timings."""
    return f"{url}?socket_timeout=30&socket_connect_timeout=30"


def store_wait(store: Any) -> float:
    """How long a command of ``store`` waits for a connection (its ``RedisGate``'s wait)."""
    assert isinstance(store.gate, RedisGate)  # each Redis store calls through its gate
    return store.gate.wait_s


async def closed(store: Any) -> None:
    await (store.close() if isinstance(store, RedisStore | RedisOutbox) else store.aclose())


async def test_a_burst_on_each_store_waits_for_a_connection_and_never_opens_more_than_its_bound() -> None:
    async with proxied() as (proxy, url, namespace):
        for name, (store, read) in reads(patient(url), namespace).items():
            assert store_wait(store) == 30, name
            before = proxy.accepted
            answers = await asyncio.gather(*(read() for _ in range(BURST)), return_exceptions=True)
            failed = [a for a in answers if isinstance(a, BaseException)]
            assert failed == [], f"{name}: {len(failed)} of {BURST} failed, e.g. {failed[0]!r}"
            assert 0 < proxy.accepted - before <= REDIS_CONNECTIONS, (name, proxy.accepted - before)
            await closed(store)


async def test_on_a_redis_that_stalls_a_burst_of_key_lookups_is_told_after_one_command_timeout() -> None:
    """The key store queued a burst on its own semaphore, with no bound on the wait: on a stalled Redis, 320
    lookups (a burst of requests, each on its own event-loop turn) failed in waves of 64, one per 2 s command
    timeout, the last after ~10 s, where the other stores' pools gave up waiting after one timeout."""
    async with proxied() as (proxy, url, namespace):
        keys = RedisStore.from_url(url, namespace=namespace)
        await keys.get_key("0" * 64)  # connected while Redis answers
        await proxy.stall()

        async def lookup() -> tuple[float, BaseException | None]:
            started = time.monotonic()
            try:
                await asyncio.wait_for(keys.get_key("0" * 64), 30)
            except StoreUnavailable as e:
                return time.monotonic() - started, e
            return time.monotonic() - started, None

        outcomes = await asyncio.gather(*(lookup() for _ in range(BURST)))
        assert all(isinstance(error, StoreUnavailable) for _, error in outcomes)
        slowest = max(took for took, _ in outcomes)
        assert slowest < 2 * REDIS_TIMEOUT_S + 1, f"the last lookup was told after {slowest:.1f} s"
        await keys.close()


async def named(name: str) -> Counter[str]:
    """Redis's own count of its connections (``CLIENT LIST``) by client name, of those named ``name-...``."""
    admin = RedisStore.from_url(redis_url(), namespace="unused")
    try:
        listed = await admin.redis.client_list()
    finally:
        await admin.close()
    return Counter(c["name"] for c in listed if c["name"].startswith(f"{name}-"))


async def test_the_stores_of_a_worker_share_two_clients_and_their_bound() -> None:
    """An API worker's five stores had a client, a pool and a bound each: a burst on all of them held up to five
    times ``REDIS_CONNECTIONS`` connections, and an idle worker kept five. On one ``RedisLinks`` a burst on all
    five at once (twice the bound each) is answered in full on at most ``REDIS_CONNECTIONS`` connections for the key store and as many
    for the other four together, which Redis lists under the two names; closing a store leaves the others'
    clients open, and closing the links closes every connection."""
    async with proxied() as (proxy, url, namespace):
        name = f"sn1-test-{namespace}"
        links = RedisLinks.open(patient(url), name=name)
        stores = reads(patient(url), namespace, links)
        answers = await asyncio.gather(*(read() for _, read in stores.values() for _ in range(2 * REDIS_CONNECTIONS)),
                                       return_exceptions=True)
        failed = [a for a in answers if isinstance(a, BaseException)]
        assert failed == [], f"{len(failed)} of {len(answers)} failed, e.g. {failed[0]!r}"
        assert 2 <= proxy.accepted <= 2 * REDIS_CONNECTIONS, proxy.accepted
        held = await named(name)
        assert set(held) == {f"{name}-keys", f"{name}-data"}, held
        assert max(held.values()) <= REDIS_CONNECTIONS and sum(held.values()) == proxy.accepted, held

        for store, _ in stores.values():
            await closed(store)  # a store handed the links does not close them under the others
        assert await named(name) == held
        await links.aclose()
        async with asyncio.timeout(5):  # Redis sees each close as its socket's end
            while await named(name):  # noqa: ASYNC110 - polling Redis's own list
                await asyncio.sleep(0.05)
