"""Two API hosts behind a load balancer: two real ``sn1 api`` processes, each with its own working directory,
on one real Redis store (``STORE_URL=redis://``), in front of real signed miners on 127.0.0.1. What one host
does, the other must see at once; a host that dies must not leave its callers waiting on the other forever."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis

from api.responses_background import COUNT_EVENTS_EVERY
from neurons.miner.app import create_miner_app
from neurons.miner.backends.deterministic import DeterministicBackend
from shared.keys_wire import MAX_CONCURRENT
from shared.signing import Authorizer, RequestVerifier
from shared.store.base import REDIS_CONNECTIONS
from shared.wallet import ensure_wallet
from tests.helpers import Script, chunk, keypair, response_events, scripted_miner_app, serve_app, wait_until
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
    miner: Script | None = None  # the slow miner, when there is one


    def another(self, name: str, **settings: str) -> ApiProcess:
        """A third host on the same store and network, in a working directory of its own (with ``settings`` of its
        own beside the fleet's)."""
        home = self.directory / name
        home.mkdir()
        return start_api(home, self.env | settings, store_url=self.store_url, namespace=self.namespace, name=name)


def hanging() -> Script:
    """A miner whose first byte comes after a minute: an answer still being made."""
    return Script([(60.0, chunk("late").encode())])


def trickling() -> Script:
    """A miner streaming a long answer, a word each 50 ms for 6 s."""
    return Script([(0.05, f"data: {chunk(f'word{i} ')}\n\n".encode()) for i in range(120)] + [(0, b"data: [DONE]\n\n")])


@contextlib.asynccontextmanager
async def two_hosts(tmp_path: Path, *, slow: Script | None = None,
                    honest: tuple[int, ...] | None = None) -> AsyncIterator[Fleet]:
    """Honest deterministic miners (uids 1, 2, or ``honest``) checking the API's real signatures, or one ``slow``
    scripted miner (uid 1, beside the ``honest`` ones if any), and two API hosts (A with ``WORKERS=2``) on one
    Redis namespace of their own."""
    url, namespace = redis_url(), f"test-hosts-{secrets.token_hex(6)}"
    validator = ensure_wallet("validator", "default", tmp_path / "wallets").ss58_address
    async with contextlib.AsyncExitStack() as stack:
        miners: dict[int, tuple[str, str]] = {}
        if slow is not None:
            served = await stack.enter_async_context(serve_app(scripted_miner_app(slow)))
            miners[1] = (keypair("//Miner1").ss58_address, served.removeprefix("http://"))
        if honest is None:
            honest = () if slow is not None else (1, 2)
        for uid in honest:
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
                f"{apis[0].url}/api_management/create-api-key/?rate_limit=1000&max_concurrent_requests={MAX_CONCURRENT}",
                headers=AK) as r:  # a burst of 300 at once is no runaway client here
            assert r.status == 200, await r.text()
            key = (await r.json())["api_key"]
        yield Fleet(apis[0], apis[1], key, tmp_path, env, url, namespace, slow)


def chunked_events(frames: list[bytes]) -> list[dict]:
    """The events of a Responses API stream read as raw bytes."""
    return response_events(b"".join(frames).decode())


async def test_a_stream_followed_on_one_host_ends_failed_when_the_host_answering_it_dies(tmp_path: Path) -> None:
    """Host C takes a streamed background response and is killed (SIGKILL: a host lost) while its miner is
    still answering; its caller resumes the stream on host B. The stream ended after the record's deadline
    with no last event at all (``response.in_progress`` was the last word, and the SDK's stream helper raised
    that it never got ``response.completed``), while a poll on B read ``failed``. It ends ``response.failed``,
    saying why, as the poll does. (C gives its records 2 s of grace past their timeout, not 30: the test waits
    that out.)"""
    async with two_hosts(tmp_path, slow=hanging()) as fleet, aiohttp.ClientSession() as http:
        c = fleet.another("host-c", BACKGROUND_GRACE_SECONDS="2")
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


async def test_the_events_a_killed_host_stored_count_against_the_keys_daily_storage_budget(tmp_path: Path) -> None:
    """Host C streams a long background response, storing its events for a resume elsewhere, and is killed
    (SIGKILL) part way. Its events were counted against the key's daily storage budget only once the response
    ended: those of a host that died were stored a day, uncounted (some 200 KB here, 4 MiB at most a response),
    and ``stored_bytes_today`` on B said nothing of them. They are counted as they are stored, every
    ``COUNT_EVENTS_EVERY`` bytes: all but that step's are counted when the host dies."""
    async with two_hosts(tmp_path, slow=long_trickle()) as fleet, aiohttp.ClientSession() as http:
        c = fleet.another("host-c")
        try:
            await asyncio.to_thread(wait_ready, [c])
            head = {"Authorization": f"Bearer {fleet.key}"}
            body = {"model": MODEL, "input": "Go on and on.", "background": True, "stream": True}
            async with http.post(f"{c.url}/v1/responses", json=body, headers=head) as r:
                seen = b""
                while len(seen) < 4 * COUNT_EVENTS_EVERY:  # the answer is being made and stored
                    seen += await r.content.readany()
                c.kill(signal.SIGKILL)
        finally:
            c.kill()
        response_id = json.loads(seen.split(b"data: ", 1)[1].split(b"\n", 1)[0])["response"]["id"]
        client = aioredis.Redis.from_url(fleet.store_url)
        try:
            names = [name async for name in client.scan_iter(match=f"{fleet.namespace}:response_events:*{response_id}")]
            # each member is ``{seq}:{frame}``: the frames are what is counted
            stored = sum(len(member.partition(b":")[2]) for member in await client.zrange(names[0], 0, -1))
        finally:
            await client.aclose()
        async with http.get(f"{fleet.b.url}/v1/usage", headers=head) as r:
            counted = (await r.json())["stored_bytes_today"]
        assert stored > 3 * COUNT_EVENTS_EVERY
        # uncounted: what was stored since the last count, under a step (and the batch in flight as it died)
        assert counted > stored - COUNT_EVENTS_EVERY - 4096, (counted, stored)


def long_trickle() -> Script:
    """A miner streaming a long answer, a word each 5 ms for 15 s: some 600 KB of the API's events."""
    return Script([(0.005, f"data: {chunk(f'word{i} ')}\n\n".encode()) for i in range(3000)]
                  + [(0, b"data: [DONE]\n\n")])


async def test_a_cancel_on_one_host_stops_the_miners_of_the_host_answering(tmp_path: Path) -> None:
    """A background response runs on host A (either of its workers); its caller cancels it through host B,
    which settles the shared record only: A's task, asking the store each second, drops its miner's request
    long before the miner's minute is up, and A reads it ``cancelled``."""
    async with two_hosts(tmp_path, slow=hanging()) as fleet, aiohttp.ClientSession() as http:
        assert (miner := fleet.miner) is not None
        head = {"Authorization": f"Bearer {fleet.key}"}
        async with http.post(f"{fleet.a.url}/v1/responses", headers=head,
                             json={"model": MODEL, "input": "Take your time.", "background": True}) as r:
            assert r.status == 200 and (queued := await r.json())["status"] == "queued"
        assert await wait_until(lambda: miner.active == 1, 10) < 10, "the miner was never asked"
        async with http.post(f"{fleet.b.url}/v1/responses/{queued['id']}/cancel", headers=head) as r:
            assert r.status == 200 and (await r.json())["status"] == "cancelled"
        assert await wait_until(lambda: miner.active == 0, 10) < 10, "host A kept its miner answering"
        assert miner.cancelled == 1
        async with http.get(f"{fleet.a.url}/v1/responses/{queued['id']}", headers=head) as r:
            assert (await r.json())["status"] == "cancelled"


async def test_a_response_deleted_on_one_host_while_another_streams_it_leaves_none_of_it_stored(
        tmp_path: Path) -> None:
    """A caller deletes a streamed background response through host B while host A is still making it. A's
    task stops within a second (it asks the store), but went on storing the answer's events until then: they
    stayed in the store, the deleted answer's text among them, for a day (Redis) or for good (SQLite, whose
    purge finds events by their response, which was gone). Nothing of it is left."""
    async with two_hosts(tmp_path, slow=trickling()) as fleet, aiohttp.ClientSession() as http:
        head = {"Authorization": f"Bearer {fleet.key}"}
        body = {"model": MODEL, "input": "Go on and on.", "background": True, "stream": True}
        async with http.post(f"{fleet.a.url}/v1/responses", json=body, headers=head) as r:
            seen = b""
            while seen.count(b"response.output_text.delta") < 3:  # the answer is being made and stored
                seen += await r.content.readany()
        response_id = json.loads(seen.split(b"data: ", 1)[1].split(b"\n", 1)[0])["response"]["id"]
        async with http.delete(f"{fleet.b.url}/v1/responses/{response_id}", headers=head) as r:
            assert r.status == 200
        assert (miner := fleet.miner) is not None
        assert await wait_until(lambda: miner.active == 0, 10) < 3 and miner.cancelled == 1  # stopped, not done
        async with http.get(f"{fleet.a.url}/v1/responses/{response_id}?stream=true", headers=head) as r:
            assert r.status == 404
        assert await stored_names(fleet, f"response*{response_id}*") == [], "the deleted response's events are stored"


async def test_a_deleted_response_goes_from_redis_with_its_last_live_continuation(tmp_path: Path) -> None:
    """A response made on A is continued twice: on host C (whose stored responses are kept 2 s) and on B. Its
    caller deletes it on A (hidden: both turns continue it); C's turn expires; the caller deletes B's turn. Nothing
    continues the deleted response now, and it is gone from Redis at once; the expired turn was still counted as
    continuing it, and its deleted text stayed in Redis, hidden, until B's turn would have expired (a day)."""
    async with two_hosts(tmp_path) as fleet, aiohttp.ClientSession() as http:
        c = fleet.another("host-c", RESPONSES_RETENTION_SECONDS="2")
        try:
            await asyncio.to_thread(wait_ready, [c])
            head = {"Authorization": f"Bearer {fleet.key}"}
            ids = []
            for host, prev in ((fleet.a, None), (c, 0), (fleet.b, 0)):
                body = {"model": MODEL, "input": f"Turn {len(ids)}"} | (
                    {} if prev is None else {"previous_response_id": ids[prev]})
                async with http.post(f"{host.url}/v1/responses", json=body, headers=head) as r:
                    assert r.status == 200, await r.text()
                    ids.append((await r.json())["id"])
        finally:
            c.kill()
        async with http.delete(f"{fleet.a.url}/v1/responses/{ids[0]}", headers=head) as r:
            assert r.status == 200
        await asyncio.sleep(2.5)  # C's turn expired
        async with http.get(f"{fleet.b.url}/v1/responses/{ids[1]}", headers=head) as r:
            assert r.status == 404
        async with http.delete(f"{fleet.b.url}/v1/responses/{ids[2]}", headers=head) as r:
            assert r.status == 200
        assert await stored_names(fleet, f"response*{ids[0]}") == [], "the deleted response is still stored"


async def stored_names(fleet: Fleet, pattern: str) -> list[bytes]:
    """The names of the fleet's Redis namespace that ``pattern`` matches (after the namespace's ``:``)."""
    client = aioredis.Redis.from_url(fleet.store_url)
    try:
        return [name async for name in client.scan_iter(match=f"{fleet.namespace}:{pattern}")]
    finally:
        await client.aclose()


async def test_a_session_opened_on_one_host_is_honoured_and_closed_on_the_other(tmp_path: Path) -> None:
    """A session opened on A pins one miner for every turn, whichever host a balancer sends it to; closed on
    B, it is gone on A at once (its id a 404 there, and A races the key's next request again)."""
    async with two_hosts(tmp_path) as fleet, aiohttp.ClientSession() as http:
        head = {"Authorization": f"Bearer {fleet.key}"}
        chat = {"messages": [{"role": "user", "content": "Hi"}]}
        async with http.post(f"{fleet.a.url}/v1/sessions", headers=head,
                             json={"model": MODEL, "session_duration": 600}) as r:
            assert r.status == 200, await r.text()
            session = await r.json()
        for host in (fleet.b, fleet.a, fleet.b):
            async with http.post(f"{host.url}/v1/chat/completions", headers=head, json=chat) as r:
                assert r.status == 200
                assert r.headers["x-sn1-session-id"] == session["session_id"]
                assert int(r.headers["x-sn1-miner-uid"]) == session["uid"]
        async with http.delete(f"{fleet.b.url}/v1/sessions/{session['session_id']}", headers=head) as r:
            assert r.status == 200
        async with http.get(f"{fleet.a.url}/v1/sessions", headers=head) as r:
            assert r.status == 404
        async with http.post(f"{fleet.a.url}/v1/chat/completions", json=chat,
                             headers=head | {"x-session-id": session["session_id"]}) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "session_not_found"
        async with http.post(f"{fleet.a.url}/v1/chat/completions", headers=head, json=chat) as r:
            assert r.status == 200 and "x-sn1-session-id" not in r.headers


async def test_a_burst_on_one_host_is_answered_not_refused_as_a_store_outage(tmp_path: Path) -> None:
    """150 chat completions and 150 responses at once on one host (one worker), as a balancer sends a burst:
    past 100 commands at once the session, response and conversation stores' Redis clients refused the rest
    (``Too many connections``: redis-py's pool bound), and two thirds of a 300-request burst were 503s
    saying the session store was unavailable, from a Redis that was up. Each is answered."""
    async with two_hosts(tmp_path) as fleet, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)) as http:
        head = {"Authorization": f"Bearer {fleet.key}"}

        async def one(path: str, body: dict) -> tuple[int, str]:
            async with http.post(f"{fleet.b.url}{path}", json=body, headers=head) as r:
                return r.status, "" if r.status == 200 else await r.text()

        chats = [one("/v1/chat/completions", {"model": MODEL, "max_tokens": 5,
                                               "messages": [{"role": "user", "content": f"Hi {i}"}]})
                 for i in range(150)]
        responses = [one("/v1/responses", {"model": MODEL, "input": f"Hi {i}", "max_output_tokens": 16})
                     for i in range(150)]
        answers = await asyncio.gather(*chats, *responses)
        refused = [text for status, text in answers if status != 200]
        assert refused == [], f"{len(refused)} refused, e.g. {refused[0]}"


async def test_key_changes_limits_and_lockouts_made_on_one_host_hold_on_the_other(tmp_path: Path) -> None:
    """An admin on A rotates a key and B refuses its old secret at once, and takes the new one; a scope taken
    away on B is refused on A; a daily token limit spent on A is refused on B (once A's counts are flushed,
    each second) and the usage report on B counts both hosts' requests; wrong keys and failed admin logins
    alternating between the hosts are throttled as one count, and the lockout holds the right admin key out
    on both."""
    async with two_hosts(tmp_path) as fleet, aiohttp.ClientSession() as http:
        a, b = fleet.a.url, fleet.b.url
        async with http.post(f"{a}/api_management/create-api-key/?rate_limit=1000&daily_token_limit=20",
                             headers=AK) as r:
            made = await r.json()
        async with http.post(f"{a}/api_management/rotate-api-key/{made['id']}", headers=AK) as r:
            key = (await r.json())["api_key"]
        assert await status(http, b, made["api_key"]) == 401
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 30}
        async with http.post(f"{a}/v1/chat/completions", json=chat, headers={"api-key": key}) as r:
            assert r.status == 200 and (await r.json())["usage"]["total_tokens"] > 20
        await flushed(http, b, made["id"], lambda t: t["prompt_tokens"] + t["completion_tokens"] > 20)  # A's
        async with http.post(f"{b}/v1/chat/completions", json=chat, headers={"api-key": key}) as r:
            assert r.status == 429 and (await r.json())["error"]["code"] == "token_limit_exceeded"
        totals = await flushed(http, b, made["id"], lambda t: t["rate_limited"] > 0)  # B's
        assert totals["requests"] == 2 and totals["rate_limited"] == 1
        async with http.put(f"{b}/api_management/modify-api-key/{made['id']}?scopes=availability",
                            headers=AK) as r:
            assert r.status == 200
        async with http.post(f"{a}/v1/chat/completions", json=chat, headers={"api-key": key}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "insufficient_scope"
        wrong = [await status(http, (a, b)[i % 2], f"sn1-wrong-{i}") for i in range(61)]
        assert wrong == [401] * 59 + [429] * 2  # INVALID_KEYS_PER_MINUTE (60) for both hosts, the old secret one
        admin = [await admin_status(http, (a, b)[i % 2], f"wrong-admin-key-{i}") for i in range(11)]
        assert admin == [401] * 10 + [429]
        assert [await admin_status(http, host, ADMIN) for host in (a, b)] == [429, 429]


async def flushed(http: aiohttp.ClientSession, host: str, key_id: str, done: Callable[[dict[str, int]], bool],
                  timeout: float = 15.0) -> dict[str, int]:
    """The key's usage totals as ``host`` reports them, once ``done`` says the counts it waits for are in the
    store (each host flushes its own every second): read again each 0.1 s, up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{host}/api_management/api-keys/{key_id}/usage", headers=AK) as r:
            totals = (await r.json())["totals"]
        if done(totals) or time.monotonic() > deadline:
            return totals
        await asyncio.sleep(0.1)


async def status(http: aiohttp.ClientSession, host: str, key: str) -> int:
    """The status of a charged request that needs no miner (``GET /v1/usage``) with ``key``."""
    async with http.get(f"{host}/v1/usage", headers={"api-key": key}) as r:
        return r.status


async def admin_status(http: aiohttp.ClientSession, host: str, admin_key: str) -> int:
    async with http.get(f"{host}/api_management/api-keys", headers={"admin-key": admin_key}) as r:
        return r.status


async def test_requests_in_flight_are_one_count_for_the_hosts_and_a_killed_hosts_come_back(tmp_path: Path) -> None:
    """A key limited to 2 requests in flight holds 2 streams on host C (a third host, whose slots last a 1 s
    lease): host A (either worker) and host B refuse its third with the 429, and B counts C's 2. C is killed
    outright (SIGKILL: it never gives its slots back); within a few leases the key's count is 0 and A takes its
    request."""
    async with two_hosts(tmp_path, slow=hanging()) as fleet, aiohttp.ClientSession() as http:
        head = {"Authorization": f"Bearer {fleet.key}"}
        async with http.put(f"{fleet.a.url}/api_management/modify-api-key/{fleet.key}?max_concurrent_requests=2",
                            headers=AK) as r:
            assert r.status == 200 and (await r.json())["max_concurrent_requests"] == 2
        c = fleet.another("host-c", CONCURRENCY_LEASE_SECONDS="1")
        held: list[asyncio.Task[None]] = []
        try:
            await asyncio.to_thread(wait_ready, [c])
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Take your time."}], "stream": True}

            async def hold() -> None:  # a stream its miner answers only after a minute
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.post(f"{c.url}/v1/chat/completions", json=body, headers=head) as r:
                        await r.read()

            held = [asyncio.create_task(hold()) for _ in range(2)]

            async def in_flight() -> int:
                async with http.get(f"{fleet.b.url}/v1/usage", headers=head) as r:
                    return (await r.json())["requests_in_flight"]

            async def until(want: int, timeout: float) -> int:
                deadline = asyncio.get_running_loop().time() + timeout
                while (now := await in_flight()) != want and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110 - the store's count, polled
                    await asyncio.sleep(0.1)
                return now

            assert await until(2, 10) == 2  # C's two, counted on B
            for url in (fleet.a.url, fleet.a.url, fleet.b.url):
                async with http.post(f"{url}/v1/chat/completions", json={**body, "timeout": 1}, headers=head) as r:
                    assert r.status == 429 and r.headers["Retry-After"] == "1"
                    assert (await r.json())["error"]["code"] == "concurrency_limit_exceeded"
            c.kill(signal.SIGKILL)
            assert await until(0, 6) == 0  # C's slots lapsed with their lease
            async with http.post(f"{fleet.a.url}/v1/chat/completions", json={**body, "timeout": 1},
                                 headers=head) as r:
                assert r.status != 429, await r.text()  # let in (its miner is too slow for its 1 s deadline)
        finally:
            c.kill()
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)


async def test_a_stream_resumed_on_any_host_holds_one_of_the_keys_requests_in_flight(tmp_path: Path) -> None:
    """A key limited to 2 requests in flight starts a streamed background response on A and leaves it; its
    events are then streamed again (``GET /v1/responses/{id}?stream=true``) on B and on A at once. Each resumed
    stream is held open until the response ends (here a minute), and on a host not answering the response each
    reads the store 10 times a second, yet none took a slot: a key could hold any number of them whatever its
    ``max_concurrent_requests``, and ``requests_in_flight`` said 0. The third is the 429
    ``concurrency_limit_exceeded`` (two counted on B's ``/v1/usage``); a plain read of the response (no stream)
    takes none, and a slot is given back when its stream's client leaves."""
    async with two_hosts(tmp_path, slow=hanging()) as fleet, aiohttp.ClientSession() as http:
        head = {"Authorization": f"Bearer {fleet.key}"}
        async with http.put(f"{fleet.a.url}/api_management/modify-api-key/{fleet.key}?max_concurrent_requests=2",
                            headers=AK) as r:
            assert r.status == 200
        body = {"model": MODEL, "input": "Take your time.", "background": True, "stream": True}
        async with http.post(f"{fleet.a.url}/v1/responses", json=body, headers=head) as r:
            first = json.loads((await r.content.readuntil(b"\n\n")).split(b"data: ", 1)[1])
        response_id = first["response"]["id"]

        async def in_flight() -> int:
            async with http.get(f"{fleet.b.url}/v1/usage", headers=head) as r:
                return (await r.json())["requests_in_flight"]

        async def until(want: int) -> int:
            for _ in range(50):
                if (now := await in_flight()) == want:
                    return now
                await asyncio.sleep(0.1)
            return now

        assert await until(0) == 0  # the POST's slot, given back as its client left
        resume = f"/v1/responses/{response_id}?stream=true&starting_after=0"
        async with contextlib.AsyncExitStack() as held:
            for host in (fleet.b, fleet.a):
                r = await held.enter_async_context(http.get(host.url + resume, headers=head))
                assert r.status == 200 and (await r.content.readuntil(b"\n\n")).startswith(b"event: ")
            assert await until(2) == 2
            async with http.get(fleet.b.url + resume, headers=head) as r:
                assert r.status == 429, await r.text()
                assert (await r.json())["error"]["code"] == "concurrency_limit_exceeded"
            async with http.get(f"{fleet.b.url}/v1/responses/{response_id}", headers=head) as r:
                assert r.status == 200 and (await r.json())["status"] == "in_progress"
        assert await until(0) == 0  # both streams' clients left


async def test_each_worker_holds_its_two_named_redis_clients_and_no_more(tmp_path: Path) -> None:
    """Host A's two workers serve a mix of requests at once (chat completions, stored responses read back,
    conversations, sessions, usage, the admin's key listing), then Redis's own ``CLIENT LIST`` is read for the
    connections of each worker process. Each worker's five stores had a client and a pool each: five pools a
    worker, unnamed, up to 5 x 64 connections. Each worker's connections now belong to its two clients, named
    ``sn1-api-<pid>-keys`` and ``sn1-api-<pid>-data``, each within its bound (64)."""
    async with two_hosts(tmp_path) as fleet, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=60)) as http:
        head = {"Authorization": f"Bearer {fleet.key}"}

        async def one(method: str, path: str, body: dict | None = None) -> tuple[int, str]:
            async with http.request(method, f"{fleet.a.url}{path}", json=body,
                                    headers=AK if path.startswith("/api_management") else head) as r:
                return r.status, await r.text()

        say = {"model": MODEL, "max_output_tokens": 16}
        made = await asyncio.gather(*(one("POST", "/v1/responses", say | {"input": f"Hi {i}"}) for i in range(20)))
        assert {status for status, _ in made} == {200}, made[0]
        mix = [one("POST", "/v1/chat/completions", {"model": MODEL, "max_tokens": 5,
                                                    "messages": [{"role": "user", "content": f"Hi {i}"}]})
               for i in range(40)]
        mix += [one("GET", f"/v1/responses/{json.loads(text)['id']}") for _, text in made]
        mix += [one("POST", "/v1/conversations", {"items": [{"role": "user", "content": "Hi"}]}) for _ in range(20)]
        mix += [one("GET", "/v1/sessions") for _ in range(20)] + [one("GET", "/v1/usage") for _ in range(20)]
        mix += [one("GET", "/api_management/api-keys") for _ in range(10)]
        answers = await asyncio.gather(*mix, one("POST", "/v1/sessions", {"model": MODEL, "session_duration": 60}))
        assert {status for status, _ in answers} <= {200, 404}, [a for a in answers if a[0] not in (200, 404)][:1]

        client = aioredis.Redis.from_url(fleet.store_url, decode_responses=True)
        try:
            listed = await client.client_list()
        finally:
            await client.aclose()
        held = {}
        for pid in children(fleet.a.proc.pid):
            mine = tcp_links(pid)
            if names := Counter(c["name"] for c in listed if ends(c) in mine):  # a worker, not a spawn helper
                held[pid] = names
        assert len(held) == 2, held
        for pid, names in held.items():
            assert set(names) <= {f"sn1-api-{pid}-keys", f"sn1-api-{pid}-data"}, names
            assert max(names.values()) <= REDIS_CONNECTIONS, names


def ends(client: dict) -> tuple[int, int]:
    """A ``CLIENT LIST`` entry's (client's port, Redis's port)."""
    return int(client["addr"].rsplit(":", 1)[1]), int(client["laddr"].rsplit(":", 1)[1])


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (a WORKERS>1 API's workers), from /proc."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def tcp_links(pid: int) -> set[tuple[int, int]]:
    """The (local port, remote port) of ``pid``'s TCP sockets: its descriptors' inodes, found in the kernel's TCP
    tables (a local port alone is not one socket's: one may be reused towards another address)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed while listed
            if (target := os.readlink(fd)).startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    links = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                links.add((int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)))
    return links
