"""A request that waits for a pooled connection leaves with a fresh signature.

A signature is good for ``max_age`` (10 s in the SDK). With the pool saturated (``limit_per_host``
requests to one slow miner), a request signed before the wait reached the miner stale: refused with a
401, and the miner scored 0 for the node's own congestion."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import web

from shared.errors import ApiError
from shared.miner_client import MinerClient, MinerError, make_session
from shared.protocol import DEADLINE_HEADER
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import VALIDATOR_KP, keypair, serve_app, snapshot
from tests.integration.test_miner_keepalive import miner_answer

MINER = keypair("//Miner1")
MAX_AGE = 1.0
BUSY_MAX_AGE = 0.5  # below the 1 s a SYN dropped by a full accept queue waits to be sent again


def slow_miner(hold: float) -> web.Application:
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: (), [VALIDATOR_KP.ss58_address]),
                               max_age=MAX_AGE)

    async def answer(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            verifier.verify(request.headers, raw, method=request.method, path=request.raw_path)
        except ApiError as e:
            return web.json_response({"error": {"message": e.message}}, status=e.status)
        await asyncio.sleep(hold)  # holds the only pooled connection a while
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/work", answer)
    return app


async def test_a_request_that_waited_for_a_pooled_connection_is_signed_again() -> None:
    async with serve_app(slow_miner(hold=MAX_AGE * 1.5)) as url, make_session(limit_per_host=1) as session:
        session.connector.resign_after = 0.2  # type: ignore[union-attr]
        client = MinerClient(session, Signer(VALIDATOR_KP))
        first = asyncio.create_task(client.post_json(url, "/work", {"n": 1}, MINER.ss58_address, timeout=10))
        await asyncio.sleep(0.1)  # the first holds the connection; the second waits ~1.5 s for it
        second = await client.post_json(url, "/work", {"n": 2}, MINER.ss58_address, timeout=10)
        assert (await first)[0] == 200
        assert second[0] == 200, second
        assert client._pending == {}, "nothing left to sign again once sent"


@dataclass
class Arrival:
    """A request as the miner met it: when (loop time), its header fields (lower-cased), its refusal if any."""

    at: float
    fields: dict[str, str]
    refused: str | None


@asynccontextmanager
async def miner_too_busy_to_accept(arrivals: list[Arrival]) -> AsyncIterator[str]:
    """A miner checking signatures (``BUSY_MAX_AGE``) whose kept-alive connection ends as the second request on it
    arrives, its accept queue full just then: the request sent once more waits for its connection, its SYN
    dropped by the kernel and sent again 1 s later (a listener's full queue, as on a miner too busy to accept)."""
    loop = asyncio.get_running_loop()
    verifier = RequestVerifier(MINER.ss58_address, Authorizer(lambda: (), [VALIDATOR_KP.ss58_address]),
                               max_age=BUSY_MAX_AGE)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)  # one connection waits in the queue; the next one's SYN is dropped
    listener.setblocking(False)
    address = listener.getsockname()

    async def accepted() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(sock=(await loop.sock_accept(listener))[0])

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

    async def serve() -> None:
        reader, writer = await accepted()
        await answer(reader, writer)  # a new connection, kept alive
        await arrived(reader)  # the next request on it
        filler = socket.socket()
        filler.setblocking(False)
        await loop.sock_connect(filler, address)  # the accept queue is full
        writer.close()  # the keep-alive ended, unanswered: sent once more, on a connection that waits
        await asyncio.sleep(0.3)
        (await loop.sock_accept(listener))[0].close()  # room in the queue for the next SYN sent again
        filler.close()
        await answer(*await accepted())

    server = asyncio.create_task(serve())
    try:
        yield f"127.0.0.1:{address[1]}"
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        listener.close()


@pytest.mark.parametrize("call", ["chat", "post_json"])
async def test_a_request_sent_once_more_that_waited_for_its_connection_is_signed_again(call: str) -> None:
    """A request that met a kept-alive connection closed is sent once more, signed anew; its new nonce was not
    left with the pool, so when it then waited for its connection it went out with a signature as old as the
    wait (and a deadline that had run on), and the miner refused it (401), scored 0."""
    arrivals: list[Arrival] = []
    async with miner_too_busy_to_accept(arrivals) as axon, make_session() as session:
        session.connector.resign_after = 0.2  # type: ignore[union-attr]
        miner = snapshot(VALIDATOR_KP.ss58_address, {1: (MINER.ss58_address, axon)}).by_uid(1)
        assert miner is not None and miner.url
        client = MinerClient(session, Signer(VALIDATOR_KP))
        deadlines: list[float] = []

        async def ask() -> object:
            deadlines.append(asyncio.get_running_loop().time() + 5.0)
            if call == "post_json":
                return await client.post_json(miner.url, "/availability", {}, MINER.ss58_address, timeout=5.0,
                                              tell_deadline=True)
            return [batch async for batch in client.stream_chat_batches(miner, b'{"messages": []}', deadlines[-1])]

        first = await ask()
        try:
            second = await ask()
        except MinerError as e:
            pytest.fail(f"the request sent once more was refused after its wait for a connection: {e.kind}: {e}")
    assert second == first, second
    sent_again = arrivals[-1]
    assert len(arrivals) == 3 and sent_again.at - arrivals[1].at > 0.5, "it waited for its connection"
    assert sent_again.refused is None, sent_again.refused
    told = float(sent_again.fields[DEADLINE_HEADER])
    assert told <= deadlines[-1] - sent_again.at + 0.05, "told the deadline as it left, not before its wait"
    assert client._pending == {}, "nothing left to sign again once sent"
