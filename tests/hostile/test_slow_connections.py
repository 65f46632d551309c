"""Slowloris and descriptor floods: the header timeout and the connection caps (``shared.connections``).

Real servers on 127.0.0.1 built as every process builds its server (``shared.http.app_runner``), with a
0.5 s header timeout so that each case takes about a second. The reference miner is served, signed
requests and all: the guard sits below every app.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from loguru import logger

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from shared.client_address import parse_networks
from shared.connections import ConnectionGuard, ConnectionLimits, address_key
from shared.http import app_runner
from shared.metagraph import MetagraphView
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import StaticSource, keypair, snapshot

TIMEOUT = 0.5
VALIDATOR, MINER = keypair("//Validator"), keypair("//SlowMiner")
SNAP = snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, None)})
CHAT = json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 1}).encode()


def miner_app() -> web.Application:
    view = MetagraphView(StaticSource(SNAP))
    view.snapshot = SNAP
    return create_miner_app(DeterministicBackend(), RequestVerifier(MINER.ss58_address,
                                                                    Authorizer(view.permitted_hotkeys)))


@contextlib.asynccontextmanager
async def guarded(limits: ConnectionLimits) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    runner = app_runner(miner_app(), limits, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], runner.guard  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def closed_after(reader: asyncio.StreamReader, limit: float = 3.0) -> float:
    """Seconds until the server closes the connection (EOF or reset); fails past ``limit``."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionResetError):
        while await asyncio.wait_for(reader.read(65536), limit):
            pass
    return time.monotonic() - started


async def health(port: int) -> int:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/health") as r:
        return r.status


async def signed_chat(session: aiohttp.ClientSession, port: int) -> int:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = Signer(VALIDATOR).headers("POST", url, CHAT, MINER.ss58_address)
    async with session.post(url, data=CHAT, headers=headers) as r:
        await r.read()
        return r.status


SLOW_SENDERS = {
    "nothing": [],
    "half the headers": [b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le"],
    "a byte every 0.1 s": [bytes([b]) for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: 1234567890\r\n\r\n"],
}


@pytest.mark.parametrize("sends", SLOW_SENDERS.values(), ids=SLOW_SENDERS.keys())
async def test_a_connection_without_whole_headers_in_time_is_closed_while_others_are_served(sends: list[bytes]) -> None:
    async with guarded(ConnectionLimits(header_timeout=TIMEOUT)) as (port, guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for piece in sends:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.1 if len(sends) > 1 else 0)

        dripping = asyncio.create_task(drip())
        assert await health(port) == 200  # another connection is served meanwhile
        took = await closed_after(reader)
        dripping.cancel()
        writer.close()
        assert TIMEOUT - 0.05 <= took <= TIMEOUT + 1.0, took
        assert guard.timed_out == 1
        assert await health(port) == 200


async def test_kept_alive_connections_serve_request_after_request_and_idle_is_not_slow() -> None:
    """One pooled connection, requests spaced by more than the header timeout: every one served on it (the
    clock runs from a request's first byte, not from the last answer), and no connection timed out."""
    async with guarded(ConnectionLimits(header_timeout=TIMEOUT)) as (port, guard):
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as s:
            for _ in range(3):
                assert await signed_chat(s, port) == 200
                await asyncio.sleep(TIMEOUT * 1.6)
            assert guard.open == 1 and guard.timed_out == 0


async def test_a_slow_body_is_the_body_timeouts_business_not_the_header_clocks() -> None:
    """A body that takes longer than the header timeout to arrive (a big upload on a slow link) is read."""
    async with guarded(ConnectionLimits(header_timeout=TIMEOUT)) as (port, guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = Signer(VALIDATOR).headers("POST", "/v1/chat/completions", CHAT, MINER.ss58_address)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(CHAT)}\r\n{head}\r\n"
                     .encode())
        for i in range(0, len(CHAT), len(CHAT) // 4 + 1):  # the body over about 1.2 s
            await asyncio.sleep(TIMEOUT * 0.6)
            writer.write(CHAT[i:i + len(CHAT) // 4 + 1])
        status = await asyncio.wait_for(reader.readline(), 3)
        writer.close()
        assert status.startswith(b"HTTP/1.1 200"), status
        assert guard.timed_out == 0


async def test_a_body_sent_after_its_headers_leaves_the_connection_kept_alive() -> None:
    """Headers, then the body in a later read (curl's 100-continue, any body over one read): its last bytes
    were taken for a next request's first, and the idle kept-alive connection was closed after the header
    timeout as a slow client's (miners logged the API's own pooled connections so)."""
    async with guarded(ConnectionLimits(header_timeout=TIMEOUT, keepalive_timeout=30)) as (port, guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        headers = Signer(VALIDATOR).headers("POST", "/v1/chat/completions", CHAT, MINER.ss58_address)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(CHAT)}\r\n{head}\r\n"
                     .encode())
        await asyncio.sleep(0.05)
        writer.write(CHAT)
        assert (await asyncio.wait_for(reader.readline(), 3)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(TIMEOUT * 3)
        assert guard.open == 1 and guard.timed_out == 0, "idle and kept alive: KEEPALIVE_TIMEOUT's to close"
        writer.close()


async def test_the_per_address_cap_refuses_the_next_connection_and_says_so_once() -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING")
    try:
        async with guarded(ConnectionLimits(header_timeout=5, max_per_ip=3)) as (port, guard):
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
            for reader, _ in extra:  # closed at once, with a 503 that names the cap (a bare reset told nothing)
                answer = await asyncio.wait_for(reader.read(), 1.0)
                assert answer.startswith(b"HTTP/1.1 503") and b"MAX_CONNECTIONS_PER_IP" in answer, answer
            assert guard.open_from("127.0.0.1") == 3 and guard.refused == 5
            for _, writer in held:
                writer.close()
            await asyncio.sleep(0.1)
            assert guard.open == 0
            assert await health(port) == 200  # room again once they closed
    finally:
        logger.remove(sink)
    refusals = [line for line in lines if "refused" in line]
    assert len(refusals) == 1 and "127.0.0.1 has 3 open" in refusals[0], refusals  # once a minute, not per connection


def test_the_refusal_is_a_503_on_uvloop_too() -> None:
    """Every process serves on uvloop (``shared.process.run``), whose transports are no ``asyncio.WriteTransport``:
    the 503 was written only when the test above ran on asyncio's loop, and a client refused by a real API, validator
    or miner saw a bare close instead of ``too_many_connections``."""
    from shared.process import run

    answers: list[bytes] = []

    async def refused() -> None:
        async with guarded(ConnectionLimits(header_timeout=5, max_per_ip=1)) as (port, _):
            held = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answers.append(await asyncio.wait_for(reader.read(), 1.0))
            for w in (held[1], writer):
                w.close()

    run(refused)
    assert answers[0].startswith(b"HTTP/1.1 503") and b'"code":"too_many_connections"' in answers[0], answers


async def test_a_trusted_proxy_is_exempt_from_the_per_address_cap_not_from_the_total() -> None:
    limits = ConnectionLimits(header_timeout=5, max_per_ip=2, max_connections=4, trusted=parse_networks(["127.0.0.1"]))
    async with guarded(limits) as (port, guard):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        await asyncio.sleep(0.1)
        assert guard.open == 4 and guard.refused == 0  # past the per-address cap of 2
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await closed_after(reader, 1.0) < 1.0  # the fifth: the total cap
        assert guard.refused == 1
        for _, w in [*held, (reader, writer)]:
            w.close()


def test_address_buckets() -> None:
    assert address_key("203.0.113.7") == "203.0.113.7"
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key(None) is None and address_key("not-an-ip") is None


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    """aiohttp's own default let a client that sent one whole request hold its socket idle for an hour
    (3630 s): enough sockets so held fill MAX_CONNECTIONS for everyone. KEEPALIVE_TIMEOUT (75 s) bounds it."""
    async with guarded(ConnectionLimits(header_timeout=5.0, keepalive_timeout=0.5)) as (port, guard):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 2)).startswith(b"HTTP/1.1 200")
        took = await closed_after(reader)
        writer.close()
        assert 0.3 < took < 2.5 and guard.open == 0
