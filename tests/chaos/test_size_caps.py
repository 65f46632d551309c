"""Size caps: a request body over MAX_BODY_BYTES is 413; a miner answer over the cap is cut,
discarded as invalid, and memory stays bounded while it streams."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web

from neurons.miner.faults import FaultOptions
from shared.metagraph import Neuron
from shared.miner_client import MinerClient, MinerError, make_session
from shared.signing import Signer
from tests.chaos.fleet import (
    HONEST,
    MESSAGES,
    VALIDATOR,
    chat,
    expected_answer,
    fleet,
    miner_keypair,
    wait_until,
)
from tests.helpers import serve_app

BODY_CAP = 64 << 10
ANSWER_CAP = 256 << 10


async def test_request_body_over_the_limit_is_413_openai_shaped(tmp_path: Path) -> None:
    async with fleet(tmp_path, {1: HONEST}, max_body_bytes=BODY_CAP) as f, aiohttp.ClientSession() as s:
        padding = "x" * BODY_CAP
        raw = json.dumps({"messages": [{"role": "user", "content": padding}]}).encode()

        async def chunked():  # no Content-Length: the cap must hold for a streamed upload too
            for i in range(0, len(raw), 4096):
                yield raw[i:i + 4096]

        for data in (raw, chunked()):
            async with s.post(f.url + "/v1/chat/completions", data=data,
                              headers={"Authorization": f"Bearer {f.key}", "Content-Type": "application/json"}) as r:
                assert r.status == 413
                err = (await r.json())["error"]
                assert set(err) == {"message", "type", "code", "param"} and str(BODY_CAP) in err["message"]
        just_under = {"messages": [{"role": "user", "content": "y" * (BODY_CAP - 200)}], "seed": 1}
        reply = await chat(s, f, just_under)
        assert reply.status == 200, reply.text


async def test_a_photo_as_a_data_url_fits_the_default_caps_end_to_end(tmp_path: Path) -> None:
    """MAX_BODY_BYTES was 1 MiB: a phone photo as a data URL (the README's image input) was a 413. A body
    at the API's cap, with the fields the API adds, must also fit the miners' cap (their 413 is scored)."""
    from shared.settings import ApiSettings

    cap = ApiSettings.model_fields["max_body_bytes"].default
    async with fleet(tmp_path, {1: HONEST}) as f, aiohttp.ClientSession() as s:
        prefix = "data:image/jpeg;base64,"
        body = {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this photo?"},
            {"type": "image_url", "image_url": {"url": prefix}}]}], "seed": 2}
        room = cap - len(json.dumps(body)) - 2
        body["messages"][0]["content"][1]["image_url"]["url"] = prefix + "A" * room
        assert 3 << 20 < len(json.dumps(body)) <= cap
        reply = await chat(s, f, body, limit=60)
    assert reply.status == 200, reply.text[:500]


async def test_huge_answer_is_discarded_and_memory_stays_bounded(tmp_path: Path) -> None:
    """A 48 MiB answer against a 256 KiB cap: the honest miner wins, peak traced memory stays small."""
    options = FaultOptions(huge_bytes=48 << 20)
    async with fleet(tmp_path, {1: "huge", 2: HONEST}, options=options,
                     miner_max_response_bytes=ANSWER_CAP) as f, aiohttp.ClientSession() as s:
        tracemalloc.start()
        try:
            for stream in (False, True):
                reply = await chat(s, f, {"messages": MESSAGES, "seed": 5, "uids": [1, 2], "stream": stream,
                                          "timeout": 10})
                assert reply.status == 200 and reply.headers["x-sn1-miner-uid"] == "2"
                assert reply.content() == expected_answer(5)
            await wait_until(lambda: f.in_flight() == 0, 5.0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert f.stats[1].calls == 2
        assert peak < 4 << 20, f"peak traced memory {peak / 2**20:.1f} MiB while a 48 MiB answer was refused"


async def test_large_json_answer_under_the_cap_is_read_whole(tmp_path: Path) -> None:
    """A miner answering plain JSON bigger than one TCP read is accepted (was: 'malformed JSON')."""
    text = "word " * 60_000
    completion = {"id": "c", "object": "chat.completion", "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(completion)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    async with serve_app(app) as url, aiohttp.ClientSession() as session:
        client = MinerClient(session, Signer(VALIDATOR), max_response_bytes=1 << 20)
        neuron = Neuron(uid=1, hotkey=miner_keypair(1).ss58_address, axon=url.removeprefix("http://"))
        deadline = asyncio.get_running_loop().time() + 5
        events = [json.loads(e) async for e in client.stream_chat(neuron, b"{}", deadline)]
        assert events[0]["choices"][0]["delta"]["content"] == text
        client.max_response_bytes = 64 << 10
        try:
            [e async for e in client.stream_chat(neuron, b"{}", deadline)]
        except Exception as e:  # noqa: BLE001
            assert getattr(e, "kind", None) == "too_large", e
        else:
            raise AssertionError("a JSON answer over the cap must be refused")



@contextlib.asynccontextmanager
async def deaf_miners(count: int) -> AsyncIterator[tuple[list[str], list[socket.socket]]]:
    """``count`` axons that accept a connection and never read from it (a stalled or hostile miner), each with a
    small receive buffer, so the kernel does not take a request in for it: their addresses, and the connections
    they hold."""
    loop = asyncio.get_running_loop()
    listeners, held = [], []
    for _ in range(count):
        sock = socket.socket()  # its buffer set before listen: the connections it accepts inherit it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        listeners.append(sock)

    async def accept(sock: socket.socket) -> None:
        while True:
            held.append((await loop.sock_accept(sock))[0])

    tasks = [asyncio.create_task(accept(s)) for s in listeners]
    try:
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in listeners], held
    finally:
        for task in tasks:
            task.cancel()
        for sock in (*listeners, *held):
            sock.close()


async def test_miners_that_never_read_a_large_request_hold_no_copy_of_it_each() -> None:
    """One request body goes to every miner a request asks (up to 256 named ``uids``): each connection kept
    its own copy of it (the transport's buffer) until the miner read it, so 8 miners that never did held
    8 copies of an 8 MiB body in the API (about 4 MiB each past the loopback kernel's share) until the
    deadline. Each connection now takes the one body a slice at a time as the miner reads it."""
    body = json.dumps({"messages": [{"role": "user", "content": "x" * (8 << 20)}]}).encode()
    async with deaf_miners(8) as (axons, held), make_session() as session:
        client = MinerClient(session, Signer(VALIDATOR))
        deadline = asyncio.get_running_loop().time() + 30

        async def ask(uid: int, axon: str) -> None:
            neuron = Neuron(uid=uid, hotkey=miner_keypair(uid).ss58_address, axon=axon)
            with contextlib.suppress(MinerError):
                async for _ in client.stream_chat_batches(neuron, body, deadline):
                    pass

        tracemalloc.start()
        try:
            tasks = [asyncio.create_task(ask(uid, axon)) for uid, axon in enumerate(axons, 1)]
            await wait_until(lambda: len(held) == len(axons), 5.0)
            await asyncio.sleep(0.5)  # every connection written to as far as it goes
            kept, _ = tracemalloc.get_traced_memory()
            waiting = sum(not t.done() for t in tasks)
        finally:
            tracemalloc.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert waiting == len(axons)  # every request still on its way to its miner
    assert kept < 4 << 20, f"{kept / 2**20:.1f} MiB held for 8 miners that never read an 8 MiB body"
