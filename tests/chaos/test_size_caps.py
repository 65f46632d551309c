"""Size caps: a request body over MAX_BODY_BYTES is 413; a miner answer over the cap is cut,
discarded as invalid, and memory stays bounded while it streams."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path

import aiohttp
from aiohttp import web

from neurons.miner.faults import FaultOptions
from shared.metagraph import Neuron
from shared.miner_client import MinerClient
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

