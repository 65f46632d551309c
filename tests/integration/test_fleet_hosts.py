"""Two API hosts behind a load balancer: two real ``sn1 api`` processes, each with its own working directory,
on one real Redis store (``STORE_URL=redis://``), in front of real signed miners on 127.0.0.1. What one host
does, the other must see at once; a host that dies must not leave its callers waiting on the other forever."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from shared.signing import Authorizer, RequestVerifier
from shared.wallet import ensure_wallet
from tests.helpers import Script, chunk, keypair, response_events, scripted_miner_app, serve_app
from tests.keys.procs import ADMIN, ApiProcess, prepare, start_api, stop_on_redis, wait_ready
from tests.store.conftest import redis_url

pytestmark = pytest.mark.redis
AK = {"admin-key": ADMIN}
MODEL = "sn1/deterministic"


@dataclass
class Fleet:
    """Two API hosts on one store, a key made on the first, and what starts another host like them."""

    a: ApiProcess
    b: ApiProcess
    key: str
    directory: Path
    env: dict[str, str]
    store_url: str
    namespace: str

    def another(self, name: str) -> ApiProcess:
        """A third host on the same store and network, in a working directory of its own."""
        home = self.directory / name
        home.mkdir()
        return start_api(home, self.env, store_url=self.store_url, namespace=self.namespace, name=name)


@contextlib.asynccontextmanager
async def two_hosts(tmp_path: Path, *, hanging: bool = False) -> AsyncIterator[Fleet]:
    """Honest deterministic miners (uids 1, 2) checking the API's real signatures, or, ``hanging``, one
    miner that sends its first byte only after a minute (an answer still being made), and two API hosts
    (A with ``WORKERS=2``) on one Redis namespace of their own."""
    url, namespace = redis_url(), f"test-hosts-{secrets.token_hex(6)}"
    validator = ensure_wallet("validator", "default", tmp_path / "wallets").ss58_address
    async with contextlib.AsyncExitStack() as stack:
        miners: dict[int, tuple[str, str]] = {}
        if hanging:
            script = Script([(60.0, chunk("late").encode())])
            served = await stack.enter_async_context(serve_app(scripted_miner_app(script)))
            miners[1] = (keypair("//Miner1").ss58_address, served.removeprefix("http://"))
        else:
            for uid in (1, 2):
                kp = keypair(f"//Miner{uid}")
                verifier = RequestVerifier(kp.ss58_address, Authorizer(lambda: {validator}))
                served = await stack.enter_async_context(serve_app(create_miner_app(DeterministicBackend(), verifier)))
                miners[uid] = (kp.ss58_address, served.removeprefix("http://"))
        env = prepare(tmp_path, miners)
        homes = [tmp_path / "host-a", tmp_path / "host-b"]
        for home in homes:
            home.mkdir()
        apis = [start_api(homes[0], env, store_url=url, namespace=namespace, name="host-a", workers=2),
                start_api(homes[1], env, store_url=url, namespace=namespace, name="host-b")]
        stack.callback(stop_on_redis, apis, url, namespace)
        await asyncio.to_thread(wait_ready, apis[:1], workers=2)
        await asyncio.to_thread(wait_ready, apis[1:])
        async with aiohttp.ClientSession() as http, http.post(
                f"{apis[0].url}/api_management/create-api-key/?rate_limit=1000", headers=AK) as r:
            assert r.status == 200, await r.text()
            key = (await r.json())["api_key"]
        yield Fleet(apis[0], apis[1], key, tmp_path, env, url, namespace)


def chunked_events(frames: list[bytes]) -> list[dict]:
    """The events of a Responses API stream read as raw bytes."""
    return response_events(b"".join(frames).decode())


async def test_a_stream_followed_on_one_host_ends_failed_when_the_host_answering_it_dies(tmp_path: Path) -> None:
    """Host C takes a streamed background response and is killed (SIGKILL: a host lost) while its miner is
    still answering; its caller resumes the stream on host B. The stream ended after the record's deadline
    with no last event at all (``response.in_progress`` was the last word, and the SDK's stream helper raised
    that it never got ``response.completed``), while a poll on B read ``failed``. It ends ``response.failed``,
    saying why, as the poll does."""
    async with two_hosts(tmp_path, hanging=True) as fleet, aiohttp.ClientSession() as http:
        c = fleet.another("host-c")
        try:
            await asyncio.to_thread(wait_ready, [c])
            head = {"Authorization": f"Bearer {fleet.key}"}
            body = {"model": MODEL, "input": "Take your time.", "background": True, "stream": True, "timeout": 1}
            async with http.post(f"{c.url}/v1/responses", json=body, headers=head) as r:
                assert r.status == 200
                first = json.loads((await r.content.readuntil(b"\n\n")).split(b"data: ", 1)[1])
            response_id = first["response"]["id"]
            c.kill(signal.SIGKILL)
            frames: list[bytes] = []
            async with http.get(f"{fleet.b.url}/v1/responses/{response_id}?stream=true&starting_after=0",
                                headers=head, timeout=aiohttp.ClientTimeout(total=90)) as r:
                assert r.status == 200
                async for part in r.content.iter_any():
                    frames.append(part)
        finally:
            c.kill()
        events = chunked_events(frames)
        assert [e["type"] for e in events][-1] == "response.failed", [e["type"] for e in events]
        last = events[-1]
        assert last["response"]["status"] == "failed" and "stopped" in last["response"]["error"]["message"]
        assert [e["sequence_number"] for e in events] == list(range(1, len(events) + 1))
        async with http.get(f"{fleet.a.url}/v1/responses/{response_id}", headers=head) as r:
            assert (await r.json())["status"] == "failed"
