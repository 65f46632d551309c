"""A miner's server may end an idle kept-alive connection (uvicorn and Node after 5 s, this API's pool keeps
one 15 s) just as a request goes out on it: the request meets a closed connection before any answer. RFC 9112
(9.3.1) lets a client send it again on a new connection, and aiohttp does so for idempotent methods only: a
signed POST to a miner failed (``dropped``), and the miner lost a race, or a caller asking it alone got a 502,
for a keep-alive that ended at the wrong moment. Measured against a server whose keep-alive is 0.5 s, 18 of
200 requests sent just then failed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from bittensor import http_auth

from shared.miner_client import MinerClient, MinerError, make_session
from shared.signing import Signer
from tests.helpers import VALIDATOR_KP, chunk, keypair, snapshot, sse

MINER = keypair("//Miner1")
ANSWER = b"".join(sse(chunk("4", finish="stop")))


@asynccontextmanager
async def keepalive_ends_as_asked(nonces: list[str]) -> AsyncIterator[str]:
    """A miner whose keep-alive ends as the second request on a connection arrives: it answers each
    connection's first request (keeping the connection open) and closes it, unanswered, on the next one.
    ``nonces``: each request's signature nonce, as it arrived."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answered in (True, False):
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
                fields = {k.lower(): v for k, v in fields.items()}
                await reader.readexactly(int(fields.get("content-length", "0")))
                nonces.append(fields[http_auth.HEADER_NONCE.lower()])
                if not answered:
                    return  # the keep-alive ended: closed, no answer
                body = ANSWER if b"/v1/chat/completions" in head else json.dumps({"ok": True}).encode()
                ctype = "text/event-stream" if body is ANSWER else "application/json"
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                             + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("call", ["chat", "post_json"])
async def test_a_request_that_meets_a_kept_alive_connection_just_closed_is_sent_again_on_a_new_one(call: str) -> None:
    nonces: list[str] = []
    async with keepalive_ends_as_asked(nonces) as axon, make_session() as session:
        miner = snapshot(VALIDATOR_KP.ss58_address, {1: (MINER.ss58_address, axon)}).by_uid(1)
        assert miner is not None and miner.url
        client = MinerClient(session, Signer(VALIDATOR_KP))

        async def ask() -> object:
            if call == "post_json":
                return await client.post_json(miner.url, "/availability", {}, MINER.ss58_address, timeout=5.0)
            deadline = asyncio.get_running_loop().time() + 5.0
            return [batch async for batch in client.stream_chat_batches(miner, b'{"messages": []}', deadline)]

        first = await ask()  # a new connection, kept alive
        try:
            second = await ask()  # on the kept-alive one, which the miner closes as it arrives
        except MinerError as e:
            pytest.fail(f"the request failed on a connection the miner had just closed: {e.kind}: {e}")
    assert second == first
    # sent again signed anew: a miner that had read the first one before closing does not take it for a replay
    assert len(nonces) == 3 and len(set(nonces)) == 3, nonces
