"""A miner's server may end an idle kept-alive connection (uvicorn and Node after 5 s, this API's pool keeps
one 15 s) just as a request goes out on it: the request meets a closed connection before any answer. RFC 9112
(9.3.1) lets a client send it again on a new connection, and aiohttp does so for idempotent methods only: a
signed POST to a miner failed (``dropped``), and the miner lost a race, or a caller asking it alone got a 502,
for a keep-alive that ended at the wrong moment. Measured against a server whose keep-alive is 0.5 s, 18 of
200 requests sent just then failed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from bittensor import http_auth

from neurons.miner.backends.base import BackendError
from neurons.miner.backends.openai_compatible import OpenAICompatibleBackend
from neurons.validator.reference import OpenAIReference, ReferenceError
from shared.miner_client import MinerClient, MinerError, make_session
from shared.signing import Signer
from tests.fake_upstream import MODEL
from tests.helpers import VALIDATOR_KP, chunk, keypair, snapshot, sse

MINER = keypair("//Miner1")
ANSWER = b"".join(sse(chunk("4", finish="stop")))
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": MODEL,
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


def miner_answer(head: bytes, _body: bytes) -> tuple[str, bytes]:
    if b"/v1/chat/completions" in head:
        return "text/event-stream", ANSWER
    return "application/json", json.dumps({"ok": True}).encode()


def model_server_answer(head: bytes, body: bytes) -> tuple[str, bytes]:
    """An OpenAI-compatible model server's: its model list, and a chat completion (streamed when asked)."""
    if head.startswith(b"GET /v1/models"):
        return "application/json", json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
    if json.loads(body).get("stream"):
        return "text/event-stream", ANSWER + b"data: [DONE]\n\n"
    return "application/json", json.dumps(COMPLETION).encode()


@asynccontextmanager
async def keepalive_ends_as_asked(heads: list[dict[str, str]],
                                  answer: Callable[[bytes, bytes], tuple[str, bytes]] = miner_answer,
                                  ) -> AsyncIterator[str]:
    """A server whose keep-alive ends as the second request on a connection arrives: it answers each
    connection's first request (keeping the connection open) and closes it, unanswered, on the next one.
    ``heads``: each request's header fields (lower-cased names), as it arrived."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for answered in (True, False):
                head = await reader.readuntil(b"\r\n\r\n")
                fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
                fields = {k.lower(): v for k, v in fields.items()}
                body = await reader.readexactly(int(fields.get("content-length", "0")))
                heads.append(fields)
                if not answered:
                    return  # the keep-alive ended: closed, no answer
                ctype, body = answer(head, body)
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
    heads: list[dict[str, str]] = []
    async with keepalive_ends_as_asked(heads) as axon, make_session() as session:
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
    nonces = [h[http_auth.HEADER_NONCE.lower()] for h in heads]
    assert len(nonces) == 3 and len(set(nonces)) == 3, nonces


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_the_reference_miner_sends_again_a_request_its_model_server_closed_the_connection_on(
        stream: bool) -> None:
    """vLLM's, SGLang's and llama.cpp's servers end an idle kept-alive connection after 5 s; the miner's pool
    kept it 15 s: its next request in that window failed, a 502 for the caller."""
    heads: list[dict[str, str]] = []
    async with keepalive_ends_as_asked(heads, model_server_answer) as upstream:
        backend = OpenAICompatibleBackend(f"http://{upstream}/v1")
        await backend.start()  # GET /v1/models: the connection's first request, kept alive
        try:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            try:
                if stream:
                    answer = b"".join([piece async for piece in backend.stream_raw(body)])
                else:
                    answer = await backend.complete_raw(body)
            except BackendError as e:
                pytest.fail(f"the model server's closed keep-alive failed the request: {e}")
        finally:
            await backend.close()
    assert (b'"content":"4"' in answer.replace(b" ", b"")) if stream else json.loads(answer) == COMPLETION
    assert len(heads) == 3, "asked once more on a new connection"


async def test_the_validators_reference_model_call_is_sent_again_on_a_closed_keep_alive() -> None:
    """The reference model behind the same kind of server: a job was skipped for its keep-alive."""
    heads: list[dict[str, str]] = []
    async with keepalive_ends_as_asked(heads, model_server_answer) as upstream, aiohttp.ClientSession() as session:
        reference = OpenAIReference(f"http://{upstream}/v1", session=session, model=MODEL)
        body = {"messages": [{"role": "user", "content": "hi"}]}
        assert await reference.answer(body) == "4"  # a new connection, kept alive
        try:
            assert await reference.answer(body) == "4"  # on the kept-alive one, closed as it arrives
        except ReferenceError as e:
            pytest.fail(f"the reference model's closed keep-alive skipped the job: {e}")
    assert len(heads) == 3
