"""What a caller gets when the API process answering it stops (SIGTERM: a restart, a deploy): a real ``sn1 api``
process in front of a scripted miner on 127.0.0.1, stopped while requests are in flight."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.chaos.tcp_proxy import tcp_proxy
from tests.helpers import Script, chunk, keypair, scripted_miner_app, serve_app, stream_faults, wait_until
from tests.keys.procs import ADMIN, ApiProcess, prepare, start_api, wait_ready

MODEL = "sn1/deterministic"
MESSAGES = [{"role": "user", "content": "Take your time."}]


@dataclass
class Stopping:
    """A real API process with one scripted miner (uid 1), and a key for it."""

    api: ApiProcess
    miner: Script
    head: dict[str, str]
    env: dict[str, str]  # its settings (another API started on its store takes them)


@contextlib.asynccontextmanager
async def api_before(tmp_path: Path, miner: Script, *, store_url: str | None = None,
                     namespace: str = "sn1") -> AsyncIterator[Stopping]:
    async with serve_app(scripted_miner_app(miner)) as served:
        env = prepare(tmp_path, {1: (keypair("//Miner1").ss58_address, served.removeprefix("http://"))})
        api = start_api(tmp_path, env, store_url=store_url or f"sqlite:///{tmp_path / 'api.db'}", namespace=namespace)
        try:
            await asyncio.to_thread(wait_ready, [api])
            async with aiohttp.ClientSession() as http, http.post(
                    f"{api.url}/api_management/create-api-key/?rate_limit=1000", headers={"admin-key": ADMIN}) as r:
                assert r.status == 200, await r.text()
                key = (await r.json())["api_key"]
            yield Stopping(api, miner, {"Authorization": f"Bearer {key}"}, env)
        finally:
            api.kill()


async def test_requests_whose_miner_had_not_answered_get_a_503_to_retry_when_the_api_stops(tmp_path: Path) -> None:
    """SIGTERM while a chat completion (plain and streamed), a legacy completion and a Responses request (plain and
    streamed) wait on a miner that has sent nothing: each got an empty reply (the connection closed with no response, curl's exit 52)
    once the 5 s grace was over. Nothing had been sent, so each now gets a 503 ``server_shutting_down`` with
    ``Retry-After``, which the OpenAI SDKs retry (on another API process, or this one restarted)."""
    hanging = Script([(60.0, chunk("late").encode())])
    async with api_before(tmp_path, hanging) as run, aiohttp.ClientSession() as http:
        asks = [("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
                ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}),
                ("/v1/completions", {"model": MODEL, "prompt": "Take your time."}),
                ("/v1/responses", {"model": MODEL, "input": "Take your time."}),
                # a Responses stream sends nothing (not even response.created) before its miner's first words
                ("/v1/responses", {"model": MODEL, "input": "Take your time.", "stream": True})]

        async def ask(path: str, body: dict) -> tuple[int, dict[str, str], bytes]:
            async with http.post(run.api.url + path, json=body, headers=run.head,
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                return r.status, dict(r.headers), await r.read()

        answers = [asyncio.create_task(ask(path, body)) for path, body in asks]
        assert await wait_until(lambda: hanging.active == len(asks), 10) < 10, "the miner was not asked by them all"
        started = time.monotonic()
        run.api.proc.send_signal(signal.SIGTERM)
        got = await asyncio.gather(*answers)
        took = time.monotonic() - started
    for (path, _), (status, headers, body) in zip(asks, got, strict=True):
        assert status == 503, (path, status, body)
        assert headers["Retry-After"] == "1" and headers["Content-Type"].startswith("application/json"), headers
        error = json.loads(body)["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
        assert "x-request-id" in {k.lower() for k in headers}, headers
    assert took < 8, f"answered {took:.1f} s after the signal: at the grace's end (5 s), not at the cut (10 s)"
    log = run.api.log.read_text()
    assert log.count(" status=shut_down ") == len(asks), log[-3000:]


def events_of(body: bytes) -> list[tuple[str | None, str]]:
    """A stream's SSE events as (``event:`` name or None, ``data:``)."""
    out = []
    for frame in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = None, []
        for line in frame.decode().split("\n"):
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        if data:
            out.append((name, "\n".join(data)))
    return out


async def test_a_stream_that_had_begun_ends_with_an_error_event_when_the_api_stops(tmp_path: Path) -> None:
    """A stream whose first chunks went out cannot be answered a 503 any more: it runs on through the grace, then
    its connection was closed under it, with no ``[DONE]`` and no reason (the SDKs raised a connection error, as
    for a network fault). Now a chat and a text completion stream end with an OpenAI error event, code
    ``server_shutting_down``, then ``[DONE]``; a Responses stream fails as when its miner fails mid-way (its items
    done as far as they came, then ``response.failed``), and so does one that had sent only what it sends at once
    (``response.created``, its web search beginning): its 200 had gone out. Each line says ``status=shut_down``."""
    trickling = Script([(0.2, f"data: {chunk(f'word{i} ')}\n\n".encode()) for i in range(150)]
                       + [(0, b"data: [DONE]\n\n")])
    asks = {"chat": ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}, b"word1 "),
            "text": ("/v1/completions", {"model": MODEL, "prompt": "Take your time.", "stream": True}, b"word1 "),
            "responses": ("/v1/responses", {"model": MODEL, "input": "Take your time.", "stream": True}, b"word1 "),
            # its search is a race the trickling miner answers after 30 s: only its first events went out
            "searching": ("/v1/responses", {"model": MODEL, "input": "Pelseldan?", "stream": True,
                                            "tools": [{"type": "web_search"}]}, b"response.web_search_call.searching")}
    async with api_before(tmp_path, trickling) as run, aiohttp.ClientSession() as http:
        begun = asyncio.Event()
        going: set[str] = set()

        def started(name: str) -> None:
            going.add(name)
            if len(going) == len(asks) + 1:  # and the SDK's
                begun.set()

        async def through_the_sdk() -> tuple[str, Exception | None]:
            """What the OpenAI SDK's caller sees: its text, and what its loop raised."""
            client = openai.AsyncOpenAI(base_url=run.api.url + "/v1", api_key=run.head["Authorization"][7:],
                                        max_retries=0, timeout=30)
            text = ""
            try:
                async for part in await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True):
                    text += (part.choices[0].delta.content or "") if part.choices else ""
                    if "word1 " in text:
                        started("sdk")
            except Exception as e:  # what it raises is what is tested
                return text, e
            return text, None

        async def stream(name: str, path: str, body: dict, first: bytes) -> tuple[bytes, Exception | None]:
            seen = b""
            async with http.post(run.api.url + path, headers=run.head, json=body,
                                 timeout=aiohttp.ClientTimeout(total=30)) as r:
                assert r.status == 200, await r.text()
                while first not in seen:
                    seen += await r.content.readany()
                started(name)
                try:
                    async for part in r.content.iter_any():
                        seen += part
                except aiohttp.ClientPayloadError as e:
                    return seen, e
            return seen, None

        tasks = {name: asyncio.create_task(stream(name, *ask)) for name, ask in asks.items()}
        sdk = asyncio.create_task(through_the_sdk())
        await asyncio.wait_for(begun.wait(), 20)
        run.api.proc.send_signal(signal.SIGTERM)
        got = {name: await task for name, task in tasks.items()}
        text, raised = await sdk
    # it raised httpx's RemoteProtocolError (incomplete chunked read), as for a network fault: now the reason
    assert isinstance(raised, openai.APIError) and not isinstance(raised, openai.APIConnectionError), repr(raised)
    assert "This server is stopping" in raised.message and "word5 " in text, (raised.message, text[-200:])
    for name, (seen, broke) in got.items():
        assert broke is None, (name, broke, seen[-500:])  # the body ended as a body ends: the SDK reads its events
    for name in ("chat", "text"):
        seen = got[name][0]
        assert b"word5 " in seen, "the stream did not run on through the grace"
        *_, (_, error), (_, done) = events_of(seen)
        assert done == "[DONE]", seen[-500:]
        error = json.loads(error)["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error", error
        assert "stopping" in error["message"] and "send it again" in error["message"], error
    for name in ("responses", "searching"):
        events = events_of(got[name][0])
        # its search's item was left in_progress, never done: done failed, as the response.failed has it
        assert stream_faults([json.loads(data) for _, data in events]) == [], (name, events[-4:])
        numbered = [json.loads(data) for _, data in events]
        assert [e["sequence_number"] for e in numbered] == list(range(len(numbered))), name
        last_name, last = events[-1]
        failed = json.loads(last)["response"]
        assert last_name == "response.failed" and failed["status"] == "failed", (name, events[-3:])
        assert failed["error"]["code"] == "server_error" and "stopping" in failed["error"]["message"], failed
    answered = [name for name, _ in events_of(got["responses"][0])]
    assert "response.output_text.done" in answered and "response.output_item.done" in answered, answered[-6:]
    log = run.api.log.read_text()
    assert log.count(" status=shut_down code=server_shutting_down ") == len(asks) + 1
    # the searching stream's line said neither uids nor winner (the middleware's): now what is known, none asked
    assert log.count(" uids=[] winner=None stream=True mixture=False status=shut_down code=server_shutting_down ") == 1


@pytest.mark.parametrize("conversation", [False, True], ids=["alone", "conversation"])
async def test_a_stream_storing_its_answer_when_the_api_stops_still_ends_with_its_last_event(
        tmp_path: Path, conversation: bool) -> None:
    """A Responses stream whose answer is whole and being stored (a store that does not answer) when the stop's grace
    ends had a bare close: its items never done, no last event (the SDK raised a connection error). Now it ends as
    when the store fails: its items done, then ``response.completed`` saying ``store: false``; a turn of a
    conversation, which may lack it, ``response.failed`` (sending it again is the caller's safe course)."""
    import redis.asyncio

    from tests.store.conftest import drop_keys, redis_url

    url = redis_url()  # skipped without REDIS_URL, with the usual reason (CI sets it)
    target = url.split("://", 1)[1].split("/", 1)
    host, port = target[0].rsplit(":", 1)
    last_words = asyncio.Event()
    miner = Script([(0, f"data: {chunk('word0 ')}\n\n".encode()),
                    (last_words, f"data: {chunk('word1', finish='stop')}\n\ndata: [DONE]\n\n".encode())])
    db = target[1] if len(target) > 1 else "0"
    namespace = f"test-stop-{secrets.token_hex(4)}"
    async with contextlib.AsyncExitStack() as stack:
        redis_client = redis.asyncio.from_url(url)
        stack.push_async_callback(redis_client.aclose)
        stack.push_async_callback(drop_keys, redis_client, namespace)  # the namespace goes with the test
        proxy = await stack.enter_async_context(tcp_proxy(host, int(port)))
        store_url = f"redis://127.0.0.1:{proxy.port}/{db}"
        run = await stack.enter_async_context(api_before(tmp_path, miner, store_url=store_url, namespace=namespace))
        http = await stack.enter_async_context(aiohttp.ClientSession())
        seen, body = b"", {"model": MODEL, "input": "Take your time.", "stream": True}
        if conversation:
            async with http.post(run.api.url + "/v1/conversations", headers=run.head, json={}) as r:
                assert r.status == 200, await r.text()
                body["conversation"] = (await r.json())["id"]
        async with http.post(run.api.url + "/v1/responses", headers=run.head, timeout=aiohttp.ClientTimeout(total=40),
                             json=body) as r:
            assert r.status == 200, await r.text()
            while b"word0 " not in seen:
                seen += await r.content.readany()
            proxy.hold_replies()  # the store hears the answer's record, and does not answer
            run.api.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(4.0)  # the answer ends, and is being stored, as the grace (5 s) ends
            last_words.set()
            try:
                seen += await r.content.read()
            finally:
                proxy.pass_replies()
    events = [json.loads(data) for _, data in events_of(seen)]
    assert stream_faults(events) == [], [e["type"] for e in events][-5:]
    final = events[-1]
    assert final["response"]["store"] is False and final["response"]["output"][0]["content"][0]["text"] == "word0 word1"
    if conversation:
        assert final["type"] == "response.failed" and "may not be in its conversation" in final["response"]["error"][
            "message"], final
    else:
        assert final["type"] == "response.completed", final


async def test_a_caller_following_a_background_stream_is_told_where_to_resume_when_the_api_stops(
        tmp_path: Path) -> None:
    """The caller of a streamed background response (and one following it again, ``GET ...?stream=true``) had its
    connection closed with no word when the API stopped (a network fault to the SDK), while the response went on.
    Now each ends with an ``error`` event without a sequence number (the numbers are the response's own, stored for a
    resume), which the SDK raises with the words ``starting_after=<the last it had>``; resumed from there on the
    API started again, the events go on with no gap, to the response's end."""
    trickling = Script([(0.2, f"data: {chunk(f'word{i} ')}\n\n".encode()) for i in range(150)]
                       + [(0, b"data: [DONE]\n\n")])
    async with api_before(tmp_path, trickling) as run:
        client = openai.AsyncOpenAI(base_url=run.api.url + "/v1", api_key=run.head["Authorization"][7:],
                                    max_retries=0, timeout=30)
        made: list[Any] = []
        followed: list[Any] = []

        async def read(stream: Any, into: list[Any]) -> Exception | None:
            try:
                async for event in stream:
                    into.append(event)
            except Exception as e:  # what it raises is what is tested
                return e
            return None

        stream = await client.responses.create(model=MODEL, input="Take your time.", background=True, stream=True)
        maker = asyncio.create_task(read(stream, made))
        assert await wait_until(lambda: any(e.type == "response.output_text.delta" for e in made), 20) < 20
        follower = asyncio.create_task(read(await client.responses.retrieve(made[0].response.id, stream=True),
                                            followed))
        assert await wait_until(lambda: len(followed) > 5, 20) < 20
        run.api.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        raised = [await maker, await follower]
        # told at once, not after the 5 s the stop gives requests in flight (the response goes on without them)
        assert time.monotonic() - stopped < 2.5, time.monotonic() - stopped
        await asyncio.to_thread(run.api.proc.wait, 30)
        # the turn's line, written as the stop failed it, is in the log (it was written after the log's last flush)
        turn = [line for line in run.api.log.read_text().splitlines() if " responses.background rid=" in line]
        assert len(turn) == 1 and " status=shut_down code=server_shutting_down " in turn[0], turn
        again = start_api(tmp_path, run.env, store_url=f"sqlite:///{tmp_path / 'api.db'}")
        try:
            await asyncio.to_thread(wait_ready, [again])
            other = openai.AsyncOpenAI(base_url=again.url + "/v1", api_key=run.head["Authorization"][7:],
                                       max_retries=0, timeout=30)
            for events, error in zip((made, followed), raised, strict=True):
                assert isinstance(error, openai.APIError) and not isinstance(error, openai.APIConnectionError), error
                assert error.code == "server_shutting_down", error
                last = events[-1].sequence_number
                assert f"starting_after={last} " in error.message, (error.message, last)
                assert "goes on here for up to 5 s" in error.message, error.message  # then fails, unless done
                rest = [e async for e in await other.responses.retrieve(made[0].response.id, stream=True,
                                                                       starting_after=last)]
                whole = [e.model_dump(mode="json") for e in [*events, *rest]]
                assert stream_faults(whole) == [], [e["type"] for e in whole][-5:]
                assert whole[-1]["type"] == "response.failed", whole[-1]["type"]
        finally:
            again.kill()
