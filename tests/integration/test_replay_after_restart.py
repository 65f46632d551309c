"""A signed request captured on the wire and replayed to a receiver that restarted since: its nonce store
started empty, so the replay was taken again while the nonce was fresh. Real sr25519 over 127.0.0.1; a restart
is a new app (a new verifier) on the same port."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from neurons.validator.app import create_validator_app
from shared.miner_client import MinerClient, make_session
from shared.signing import Authorizer, RequestVerifier, Signer
from tests.helpers import keypair, serve_app, snapshot
from tests.validator.test_app import VALIDATOR, make_ctx, payload

MINER = keypair("//Miner1")
CHAT = {"messages": [{"role": "user", "content": "hi"}], "seed": 1, "model": "sn1/deterministic"}


def miner() -> web.Application:
    return create_miner_app(DeterministicBackend(),
                            RequestVerifier(MINER.ss58_address, Authorizer(lambda: {VALIDATOR.ss58_address})))


def validator() -> web.Application:
    return create_validator_app(make_ctx())


RECEIVERS = [("/v1/chat/completions", CHAT, MINER.ss58_address, miner),
             ("/scoring", payload(), VALIDATOR.ss58_address, validator)]


async def send(url: str, path: str, raw: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=raw, headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(("path", "body", "receiver", "app"), RECEIVERS, ids=["miner", "validator-scoring"])
async def test_a_request_replayed_to_the_restarted_receiver_is_refused(
        path: str, body: dict, receiver: str, app: Callable[[], web.Application]) -> None:
    raw = json.dumps(body).encode()
    async with serve_app(app()) as url:
        captured = Signer(VALIDATOR).headers("POST", URL(url + path), raw, receiver)
        status, _ = await send(url, path, raw, captured)
        assert status in (200, 202)
        status, answer = await send(url, path, raw, captured)
        assert status == 401 and answer["error"]["code"] == "ReplayedRequest"
    port = URL(url).port
    async with serve_app(app(), port=port) as again:  # the receiver restarted, within the replay's 10 s
        status, answer = await send(again, path, raw, captured)
        assert status == 401, f"the replay was taken again after the restart: {status} {answer}"
        assert set(answer["error"]) == {"message", "type", "code", "param"}
        assert answer["error"]["code"] == "SignedBeforeStart"
        assert "older than this receiver's start" in answer["error"]["message"]
        fresh = Signer(VALIDATOR).headers("POST", URL(again + path), raw, receiver)
        status, _ = await send(again, path, raw, fresh)
        assert status in (200, 202), "a request signed after the start is served"


async def test_the_api_signs_again_when_the_miner_started_after_it_signed() -> None:
    """A request signed before the miner (re)started reaches the new process (its connection waited through
    the restart): refused as signed before the start, signed anew and sent once more, it is answered; the
    caller never sees the restart."""
    nonces = iter([time.time_ns() - 2 * 10**9])  # the first signature: 2 s before the miner's start
    signer = Signer(VALIDATOR, clock=lambda: next(nonces, time.time_ns()))
    async with serve_app(miner()) as url, make_session() as session:
        client = MinerClient(session, signer)
        neuron = snapshot(VALIDATOR.ss58_address, {1: (MINER.ss58_address, url.removeprefix("http://"))}).neurons[1]
        deadline = asyncio.get_running_loop().time() + 10
        batches = [b async for b in client.stream_chat_batches(neuron, json.dumps(CHAT).encode(), deadline,
                                                               stream=False)]
    assert batches and batches[0], "answered"
