"""A request that waits for a pooled connection leaves with a fresh signature.

A signature is good for ``max_age`` (10 s in the SDK). With the pool saturated (``limit_per_host``
requests to one slow miner), a request signed before the wait reached the miner stale: refused with a
401, and the miner scored 0 for the node's own congestion. Each wait here is held by the test and ended by it
(a miner's handler, a name being resolved): no kernel's way with a full accept queue, on any system."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.errors import ApiError
from shared.miner_client import MinerClient, MinerError, make_session
from shared.protocol import DEADLINE_HEADER
from shared.resigning import ResigningConnector
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import VALIDATOR_KP, keypair, serve_app, snapshot
from tests.integration.test_miner_keepalive import miner_answer

MINER = keypair("//Miner1")
MAX_AGE = 0.5  # the miners' here: a request held past it and not signed again is refused
HELD = MAX_AGE + 0.3  # how long the test holds a request's wait for its connection
RESIGN_AFTER = 0.2


@dataclass
class Holding:
    """A miner's handler holding the only pooled connection: ``arrived`` once a request is in it, which answers
    when the test sets ``released``."""

    arrived: asyncio.Event
    released: asyncio.Event


def holding_miner(holding: Holding) -> web.Application:
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: (), [VALIDATOR_KP.ss58_address]),
                               max_age=MAX_AGE)

    async def answer(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verifier.verify(request.headers, raw, method=request.method, path=request.raw_path)
        except ApiError as e:
            return web.json_response({"error": {"message": e.message}}, status=e.status)
        if request.path == "/hold":
            holding.arrived.set()
            await holding.released.wait()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hold", answer)
    app.router.add_post("/work", answer)
    return app


async def test_a_request_that_waited_for_a_pooled_connection_is_signed_again() -> None:
    holding = Holding(asyncio.Event(), asyncio.Event())
    async with serve_app(holding_miner(holding)) as url, make_session(limit_per_host=1) as session:
        session.connector.resign_after = RESIGN_AFTER  # type: ignore[union-attr]
        client = MinerClient(session, Signer(VALIDATOR_KP))
        first = asyncio.create_task(client.post_json(url, "/hold", {"n": 1}, MINER.ss58_address, timeout=10))
        await asyncio.wait_for(holding.arrived.wait(), 5)  # the first holds the pool's only connection
        second = asyncio.create_task(client.post_json(url, "/work", {"n": 2}, MINER.ss58_address, timeout=10))
        await asyncio.sleep(HELD)  # the second, signed, waits for it past its signature's age
        holding.released.set()
        assert (await first)[0] == 200
        assert (await second)[0] == 200, await second
        assert client._pending == {}, "nothing left to sign again once sent"


@dataclass
class Arrival:
    """A request as the miner met it: when (loop time), its header fields (lower-cased), its refusal if any."""

    at: float
    fields: dict[str, str]
    refused: str | None


class HeldResolver(AbstractResolver):
    """Resolves ``localhost`` to 127.0.0.1, each ask after the first held until the test sets ``released`` (a
    name server slow to answer): a new connection that waits, made so on any system. It was a listener's full
    accept queue, whose dropped SYN is sent again 1 s later on Linux only. A request holding the pool's only
    connection cannot make it wait: the slot its closed connection gives back is taken again by the send once
    more, before any request waiting for it runs."""

    def __init__(self) -> None:
        self.asked = 0
        self.held = asyncio.Event()
        self.released = asyncio.Event()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        self.asked += 1
        if self.asked > 1:
            self.held.set()
            await self.released.wait()
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        return None


@asynccontextmanager
async def miner_closing_a_kept_alive_connection(arrivals: list[Arrival]) -> AsyncIterator[str]:
    """A miner checking signatures (``MAX_AGE``) whose kept-alive connection ends as the second request on it
    arrives, unanswered: the request is sent once more, on a new connection."""
    loop = asyncio.get_running_loop()
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: (), [VALIDATOR_KP.ss58_address]),
                               max_age=MAX_AGE)
    connections = 0

    async def arrived(reader: asyncio.StreamReader) -> tuple[Arrival, bytes]:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        fields = {k.lower(): v for k, _, v in (line.partition(": ") for line in head.split("\r\n")[1:] if line)}
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        arrival = Arrival(loop.time(), fields, None)
        try:
            verifier.verify(fields, body, method="POST", path=head.split(" ")[1])
        except ApiError as e:
            arrival.refused = e.message
        arrivals.append(arrival)
        return arrival, head.encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrival, head = await arrived(reader)
        status, ctype, body = "200 OK", *miner_answer(head, b"")
        if arrival.refused is not None:
            status, ctype, body = "401 Unauthorized", "application/json", b'{"error": {"message": "stale"}}'
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                     + body)
        await writer.drain()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await answer(reader, writer)
        if connections == 1:  # a new connection, kept alive
            await arrived(reader)  # the next request on it
            writer.close()  # the keep-alive ended, unanswered: sent once more

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"localhost:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def resolving_session(resolver: AbstractResolver) -> aiohttp.ClientSession:
    """A pool as ``make_session``'s (``ResigningConnector``) whose names ``resolver`` resolves, every new
    connection's (no DNS cache)."""
    connector = ResigningConnector(resolver=resolver, use_dns_cache=False)
    connector.resign_after = RESIGN_AFTER
    return aiohttp.ClientSession(connector=connector)


@pytest.mark.parametrize("call", ["chat", "post_json"])
async def test_a_request_sent_once_more_that_waited_for_its_connection_is_signed_again(call: str) -> None:
    """A request that met a kept-alive connection closed is sent once more, signed anew; its new nonce was not
    left with the pool, so when it then waited for its connection it went out with a signature as old as the
    wait (and a deadline that had run on), and the miner refused it (401), scored 0."""
    arrivals: list[Arrival] = []
    resolver = HeldResolver()
    async with miner_closing_a_kept_alive_connection(arrivals) as axon, resolving_session(resolver) as session:
        miner = snapshot(VALIDATOR_KP.ss58_address, {1: (MINER.ss58_address, axon)}).by_uid(1)
        assert miner is not None and miner.url
        client = MinerClient(session, Signer(VALIDATOR_KP))
        deadlines: list[float] = []

        async def ask() -> Any:
            deadlines.append(asyncio.get_running_loop().time() + 5.0)
            if call == "post_json":
                return await client.post_json(miner.url, "/availability", {}, MINER.ss58_address, timeout=5.0,
                                              tell_deadline=True)
            return [batch async for batch in client.stream_chat_batches(miner, b'{"messages": []}', deadlines[-1])]

        first = await ask()
        second = asyncio.create_task(ask())
        await asyncio.wait_for(resolver.held.wait(), 5)  # sent once more, it waits for its new connection
        await asyncio.sleep(HELD)
        resolver.released.set()
        try:
            assert await second == first
        except MinerError as e:
            pytest.fail(f"the request sent once more was refused after its wait for a connection: {e.kind}: {e}")
    sent_again = arrivals[-1]
    assert len(arrivals) == 3 and sent_again.at - arrivals[1].at >= HELD, "it waited for its connection"
    assert sent_again.refused is None, sent_again.refused
    told = float(sent_again.fields[DEADLINE_HEADER])
    assert told <= deadlines[-1] - sent_again.at + 0.05, "told the deadline as it left, not before its wait"
    assert client._pending == {}, "nothing left to sign again once sent"
