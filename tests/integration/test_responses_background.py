"""Background responses (``background: true``) through the real API app and the OpenAI SDK: answered
``queued`` at once, polled with ``GET /v1/responses/{id}`` until done (OpenAI's guide), cancelled with
``POST /v1/responses/{id}/cancel``; a failure, a shutdown and a worker that died each end one ``failed``,
never pending for ever."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from loguru import logger
from openai.types.responses import Response

from api import responses_background, responses_state
from api.responses_wire import ResponseOut
from shared.store.responses import SQLiteResponseStore, encode
from tests.compat.support import sample
from tests.helpers import (
    ApiUnderTest,
    Script,
    api_with_miners,
    apis_on_one_store,
    call,
    chunk,
    failing_appends,
    log_lines,
    openai_client,
    paced,
    sse,
    stream_faults,
    wait_until,
)

POLLS = 200  # at 20 ms: 4 s, far past any answer here


def slow(text: str, delay: float) -> Script:
    return Script([(delay, d) for d in sse(chunk(text), chunk(finish="stop"))])


async def polled(client: openai.AsyncOpenAI, response: Any) -> Response:
    """The response once it is no longer queued (bounded: a test that hangs is a failure)."""
    for _ in range(POLLS):
        if response.status not in ("queued", "in_progress"):
            return response
        await asyncio.sleep(0.02)
        response = await client.responses.retrieve(response.id)
    raise AssertionError(f"{response.id} still {response.status}")



async def test_a_background_response_is_queued_at_once_then_polled_to_its_answer(tmp_path: Path) -> None:
    miner = slow("Noted.", 1.0)  # 3 s in all: far longer than the create and the first poll, even on a loaded host
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        started = time.perf_counter()
        queued = await client.responses.create(model="default", input="My name is Ada.", background=True,
                                               metadata={"job": "1"})
        assert time.perf_counter() - started < 1.5  # the miner takes 2 s: the answer did not wait for it
        Response.model_validate(queued.model_dump())
        assert (queued.status, queued.background, queued.output, queued.metadata) == ("queued", True, [], {"job": "1"})
        status, polled_now = await call(api, "GET", f"/v1/responses/{queued.id}")
        assert status == 200 and polled_now["status"] == "in_progress"  # its task started at once
        ResponseOut.model_validate(polled_now)  # as /openapi.json documents it
        with pytest.raises(openai.BadRequestError) as e:  # not a turn to continue yet
            await client.responses.create(model="default", input="And?", previous_response_id=queued.id)
        assert e.value.code == "previous_response_in_progress"
        done = await polled(client, queued)
        assert (done.id, done.status, done.output_text, done.background) == (queued.id, "completed", "Noted.", True)
        assert done.created_at == queued.created_at and done.usage is not None and done.usage.total_tokens > 0
        assert [item.type async for item in client.responses.input_items.list(done.id)] == ["message"]
        # a stored response like any other: continued, and its items referenced
        paced(miner, 0)
        second = await client.responses.create(model="default", input="My name?", previous_response_id=done.id)
        assert [m["role"] for m in miner.bodies[-1]["messages"]] == ["user", "assistant", "user"]
        assert second.status == "completed"


def in_progress(response_id: str) -> dict[str, Any]:
    """A background response as its worker stores it while answering (for a test that writes its record)."""
    return {"id": response_id, "object": "response", "created_at": 1, "status": "in_progress", "background": True,
            "model": "m", "output": [], "error": None}


async def only_key_id(api: ApiUnderTest) -> str:
    keys = await api.ctx.store.list_keys()
    return keys[0].id


@pytest.mark.parametrize("model", [None, "", "default"], ids=["none", "empty", "default"])
async def test_one_asked_for_any_model_names_default_until_a_miner_answers(tmp_path: Path, model: str | None) -> None:
    """Asked for any model, a queued response (and its stream's first events) said ``model: "unknown"``, which
    names no model a miner serves: sent back (``model=response.model``), a 404 once the miners' availability is
    known. It says ``default``, this API's word for any model, until the answer names the winning miner's, as a
    foreground response does."""
    async with api_with_miners(tmp_path, {1: slow("Noted.", 0.3)}) as api:
        client = openai_client(api)
        asked = {} if model is None else {"model": model}
        queued = await client.responses.create(input="Hi", background=True, **asked)  # type: ignore[call-overload]
        streamed = [e async for e in await client.responses.create(input="Hi", background=True, stream=True,
                                                                   **asked)]  # type: ignore[call-overload]
        assert queued.model == "default"
        assert [e.response.model for e in streamed[:3]] == ["default"] * 3  # created, queued, in_progress
        assert streamed[-1].response.model == "scripted"  # the miner's, once it answered
        assert (await polled(client, queued)).model == "scripted"
        again = await client.responses.create(model=queued.model, input="Hi")  # the model it named, sent back
        assert again.output_text == "Noted."


async def test_one_asked_for_any_model_in_a_session_names_the_sessions_model_from_the_start(tmp_path: Path) -> None:
    """The key's session pins a model: a request for any model is answered with it (``answer``), so the queued
    response names it too, not ``default`` (nor ``unknown``, as it did)."""
    from tests.compat.support import fresh_cache, serves

    async with api_with_miners(tmp_path, {1: slow("Noted.", 0.1)}) as api:
        api.ctx.availability = fresh_cache(api, {1: serves(["shared"], ["InferenceTask"])})
        status, _ = await call(api, "POST", "/v1/sessions", {"model": "shared", "session_duration": 60})
        assert status == 200
        client = openai_client(api)
        queued = await client.responses.create(input="Hi", background=True)
        assert (queued.model, (await polled(client, queued)).model) == ("shared", "shared")


async def test_cancel_stops_a_queued_response_and_nothing_overwrites_it(tmp_path: Path) -> None:
    """... and its turn's access line says ``status=cancelled`` (it said ``client_closed``: no client had left)."""
    miner = slow("Too late.", 0.5)
    lines, sink = log_lines("INFO")
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        queued = await client.responses.create(model="default", input="Hi", background=True,
                                               extra_headers={"x-request-id": "to-cancel"})
        for _ in range(POLLS):  # the miner has been asked
            if miner.active:
                break
            await asyncio.sleep(0.01)
        cancelled = await client.responses.cancel(queued.id)
        assert (cancelled.id, cancelled.status) == (queued.id, "cancelled")
        for _ in range(POLLS):  # the miner's request was dropped, not left to run
            if not miner.active:
                break
            await asyncio.sleep(0.01)
        assert miner.active == 0
        await asyncio.sleep(0.1)
        assert (await client.responses.retrieve(queued.id)).status == "cancelled"
        assert (await client.responses.cancel(queued.id)).status == "cancelled"  # again: as it is
        await wait_until(lambda: any("responses.background rid=to-cancel " in line for line in lines), 5)
    logger.remove(sink)
    turn = [line for batch in lines for line in batch.splitlines() if "responses.background rid=to-cancel " in line]
    assert len(turn) == 1 and " status=cancelled " in turn[0], turn


async def test_cancel_answers_what_is_done_as_it_is_and_refuses_what_is_not_background(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    done = await polled(client, await client.responses.create(model="default", input="Hi", background=True))
    assert done.status == "completed"
    assert (await client.responses.cancel(done.id)).model_dump() == (await client.responses.retrieve(done.id)).model_dump()
    foreground = await client.responses.create(model="default", input="Hi")
    with pytest.raises(openai.BadRequestError) as e:
        await client.responses.cancel(foreground.id)
    assert e.value.message.endswith("Cannot cancel a synchronous response.") and e.value.param == "response_id"
    other_key, _ = await honest.ctx.store.create_key(1000)
    for response_id, key in (("resp_unknown", None), (done.id, other_key)):
        status, body = await call(honest, "POST", f"/v1/responses/{response_id}/cancel", key=key)
        assert (status, body["error"]["code"]) == (404, "response_not_found")


async def test_no_miner_answering_ends_it_failed_with_the_reason(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: Script([], status=500)}) as api:
        client = openai_client(api)
        done = await polled(client, await client.responses.create(model="default", input="Hi", background=True))
        assert done.status == "failed" and done.error is not None and done.error.code == "server_error"
        assert done.error.message  # the race's reason, as a foreground request's 5xx says it


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
async def test_one_the_model_servers_refuse_ends_failed_invalid_prompt_not_server_error(
        tmp_path: Path, stream: bool) -> None:
    """Every miner's model server refused the conversation as too long: in the foreground, the caller's 400
    ``context_length_exceeded``; in the background it ended failed with ``server_error``, which reads as the
    gateway failing (try again later) though sent again it fails again. It ends ``invalid_prompt``, as a stream
    opened by its web search ends for the same 400, the 400's words in its message."""
    refusing = Script([], status=400, error_code="model_server_rejected",
                      error_message="This model's maximum context length is 40 tokens (context_length_exceeded)")
    async with api_with_miners(tmp_path, {1: refusing}) as api:
        client = openai_client(api)
        made = await client.responses.create(model="default", input="Hi", background=True, stream=stream)
        if stream:
            events = [e async for e in made]  # type: ignore[union-attr]
            assert events[-1].type == "response.failed"
            assert events[-1].response.error.code == "invalid_prompt"  # type: ignore[union-attr]
            made = events[0].response
        done = await polled(client, made)
        assert (done.status, done.error.code) == ("failed", "invalid_prompt"), done  # type: ignore[union-attr]
        assert "context_length_exceeded" in done.error.message  # type: ignore[union-attr]
        Response.model_validate(done.model_dump(), strict=True)  # one of the SDK's codes


async def test_a_model_no_miner_serves_ends_it_failed_with_model_not_found(tmp_path: Path) -> None:
    """Every miner answers 404 model_not_found (no fresh availability said so before the race): the request in
    the foreground is OpenAI's 404, and a background one ended failed with ``server_error``, which reads as the
    gateway failing (try again later), not as the caller's model name. It ends with the foreground's code and
    words, polled and streamed."""
    async with api_with_miners(tmp_path, {1: Script([], status=404, error_code="model_not_found")}) as api:
        client = openai_client(api)
        with pytest.raises(openai.NotFoundError) as e:
            await client.responses.create(model="no/such-model", input="Hi")
        assert e.value.code == "model_not_found"
        queued = await client.responses.create(model="no/such-model", input="Hi", background=True)
        done = await polled(client, queued)
        assert (done.status, done.error.code) == ("failed", "model_not_found"), done  # type: ignore[union-attr]
        assert done.error.message == e.value.body["message"]  # type: ignore[union-attr,index]
        events = [event async for event in await client.responses.create(
            model="no/such-model", input="Hi", background=True, stream=True)]
        assert events[-1].type == "response.failed", [event.type for event in events]
        assert events[-1].response.error.code == "model_not_found"  # type: ignore[union-attr]
        done = await polled(client, await client.responses.retrieve(events[-1].response.id))  # type: ignore[union-attr]
        assert (done.status, done.error.code) == ("failed", "model_not_found"), done  # type: ignore[union-attr]


async def test_a_background_response_that_is_not_stored_is_a_400(honest: ApiUnderTest) -> None:
    for stream in (False, True):
        status, body = await call(honest, "POST", "/v1/responses", {"input": "Hi", "background": True,
                                                                    "store": False, "stream": stream})
        assert status == 400 and body["error"]["param"] == "store", body
    assert honest.ctx.running_responses == {}


async def test_with_storage_off_background_is_a_400(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {}, honest={1}, responses_retention_seconds=0) as api:
        status, body = await call(api, "POST", "/v1/responses", {"input": "Hi", "background": True})
        assert status == 400 and body["error"]["param"] == "background" and "stores none" in body["error"]["message"]


async def test_one_left_pending_by_a_worker_that_died_reads_failed(honest: ApiUnderTest) -> None:
    """Its worker is gone (killed, or its host): past the answer's deadline the record reads failed, and is
    settled so, rather than queued for ever."""
    client = openai_client(honest)
    key_id = await only_key_id(honest)
    queued = {"id": "resp_orphan", "object": "response", "created_at": 1, "status": "queued", "background": True,
              "model": "m", "output": [], "error": None}
    assert honest.ctx.responses is not None
    await honest.ctx.responses.put(key_id, "resp_orphan", encode(queued, [], until=time.time() - 1), retention=60,
                                   pending=True)
    got = await client.responses.retrieve("resp_orphan")
    assert got.status == "failed" and got.error is not None and got.error.message == responses_state.STOPPED
    stored = await honest.ctx.responses.get(key_id, "resp_orphan")
    assert stored is not None and stored.response["status"] == "failed"  # settled: a cancel now changes nothing
    assert (await client.responses.cancel("resp_orphan")).status == "failed"


async def test_a_shutdown_lets_them_finish_within_its_grace_then_fails_the_rest(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart (SIGTERM) gives background responses what it gives requests in flight, then fails the rest,
    each saying why: none is left queued for ever."""
    monkeypatch.setattr(responses_background, "SHUTDOWN_GRACE_S", 1.0)
    async with api_with_miners(tmp_path, {1: slow("Soon.", 0.2), 2: slow("Never.", 5)}) as api:
        client = openai_client(api)
        soon = await client.responses.create(model="default", input="Hi", background=True, extra_body={"uids": [1]})
        never = await client.responses.create(model="default", input="Hi", background=True, extra_body={"uids": [2]})
        key_id = await only_key_id(api)
    store = SQLiteResponseStore(tmp_path / "api.db")
    try:
        finished = await store.get(key_id, soon.id)
        assert finished is not None and finished.response["status"] == "completed"
        found = await store.get(key_id, never.id)
        assert found is not None and found.response["status"] == "failed"
        assert "shut down" in found.response["error"]["message"]
    finally:
        await store.aclose()


async def left_at(api: ApiUnderTest, stream: Any, event_type: str) -> tuple[str, str]:
    """Read a background response's stream up to its first ``event_type``, then leave (the response goes on): its
    key's id and its id."""
    response_id = ""
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == event_type:
            break
    await stream.close()
    return await only_key_id(api), response_id


async def kept_after_stop(tmp_path: Path, key_id: str, response_id: str) -> tuple[list[dict[str, Any]], Any]:
    """A background response's stored events and record, read from the store once its API stopped."""
    store = SQLiteResponseStore(tmp_path / "api.db")
    try:
        return ([json.loads(frame.split("\ndata: ", 1)[1]) for _, frame in
                 await store.events(key_id, response_id, after=-1, limit=100)], await store.get(key_id, response_id))
    finally:
        await store.aclose()


async def test_a_streamed_one_a_shutdown_fails_mid_answer_ends_its_items_before_response_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown failed a streamed one mid-message: its events went from the message's last delta straight to
    ``response.failed``, the message never done. Its ``.done`` events come first, the message ``incomplete``."""
    monkeypatch.setattr(responses_background, "SHUTDOWN_GRACE_S", 0.5)
    first, *rest = sse(chunk("Once upon"), chunk(" a time"), chunk(finish="stop"))
    async with api_with_miners(tmp_path, {1: Script([(0, first), *[(5, d) for d in rest]])}) as api:
        stream = await openai_client(api).responses.create(model="default", input="Hi", background=True, stream=True)
        # its first words came: the caller leaves, then a stop
        key_id, response_id = await left_at(api, stream, "response.output_text.delta")
    events, _ = await kept_after_stop(tmp_path, key_id, response_id)
    assert [e["type"] for e in events[-5:]] == [
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.failed"]
    assert events[-2]["item"]["status"] == "incomplete" and events[-2]["item"]["content"][0]["text"] == "Once upon"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    # and the failed response has the message as far as it came, as its events showed it (its output was empty)
    assert stream_faults(events) == [], events[-1]["response"]["output"]


async def test_a_streamed_one_a_shutdown_fails_during_its_search_ends_the_search_item_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shutdown failed a streamed one during its web search: its ``web_search_call`` item was never done, and the
    failed response (stored, and its last event) had no output at all after events that showed the search. The
    item is done ``failed`` now, as the failed response has it."""
    monkeypatch.setattr(responses_background, "SHUTDOWN_GRACE_S", 0.5)
    async with api_with_miners(tmp_path, {1: Script([(30, d) for d in sse(chunk("late"))])}) as api:
        stream = await openai_client(api).responses.create(model="default", input="Pelseldan?", background=True,
                                                           stream=True, tools=[{"type": "web_search"}])
        key_id, response_id = await left_at(api, stream, "response.web_search_call.searching")
    stored, found = await kept_after_stop(tmp_path, key_id, response_id)
    assert stream_faults(stored) == [], [e["type"] for e in stored]
    assert [e["type"] for e in stored[-3:]] == ["response.web_search_call.searching", "response.output_item.done",
                                                "response.failed"]
    assert found is not None and [(o["type"], o["status"]) for o in found.response["output"]] == [
        ("web_search_call", "failed")]


async def test_a_background_turn_of_a_conversation_is_added_once_done(honest: ApiUnderTest) -> None:
    client = openai_client(honest)
    conversation = await client.conversations.create()
    done = await polled(client, await client.responses.create(model="default", input="Hi", background=True,
                                                              conversation=conversation.id))
    assert done.status == "completed"
    items = (await client.conversations.items.list(conversation.id, order="asc")).data
    assert [item.role for item in items] == ["user", "assistant"]  # type: ignore[union-attr]


async def test_a_cancel_on_another_worker_stops_its_miners_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another worker's cancel settles the stored response only; this worker's task sees it is no longer
    pending (it asks every WATCH_EVERY_S) and drops its miners' requests."""
    monkeypatch.setattr(responses_background, "WATCH_EVERY_S", 0.05)
    miner = slow("Too late.", 2)
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        queued = await client.responses.create(model="default", input="Hi", background=True)
        key_id = await only_key_id(api)
        assert api.ctx.responses is not None
        cancelled = queued.model_dump() | {"status": "cancelled"}
        assert await api.ctx.responses.settle(key_id, queued.id, encode(cancelled, []), retention=60)  # as there
        for _ in range(POLLS):
            if not api.ctx.running_responses and not miner.active:
                break
            await asyncio.sleep(0.01)
        assert api.ctx.running_responses == {} and miner.active == 0  # long before the miner's 4 s
        assert (await client.responses.retrieve(queued.id)).status == "cancelled"


async def test_a_worker_runs_a_bounded_number_at_once(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.3)}, max_background_responses=2) as api:
        client = openai_client(api)
        running = [await client.responses.create(model="default", input="Hi", background=True) for _ in range(2)]
        async with aiohttp.ClientSession() as session, session.post(
                api.url + "/v1/responses", json={"input": "Hi", "background": True},
                headers={"Authorization": f"Bearer {api.key}"}) as r:
            status, body, headers = r.status, await r.json(), r.headers
        assert (status, body["error"]["code"], body["error"]["type"]) == (429, "too_many_background_responses",
                                                                          "rate_limit_error")
        # what the OpenAI SDKs back off by, as on every 429: retry-after-ms first (it was missing), then Retry-After;
        # and the key's rate, which this request was charged to
        assert (headers["retry-after-ms"], headers["Retry-After"]) == ("1000", "1")
        assert int(headers["x-ratelimit-limit-requests"]) >= int(headers["x-ratelimit-remaining-requests"]) >= 0
        async with aiohttp.ClientSession() as session, session.get(api.url + "/metrics") as r:
            assert sample(await r.text(), "sn1_api_background_responses") == 2  # what an operator watches
        assert (await client.responses.create(model="default", input="Hi")).status == "completed"  # foreground: yes
        assert [(await polled(client, r)).status for r in running] == ["completed", "completed"]
        for _ in range(POLLS):  # their tasks end just after their responses are stored
            if not api.ctx.running_responses:
                break
            await asyncio.sleep(0.01)
        again = await client.responses.create(model="default", input="Hi", background=True)  # room again
        assert (await polled(client, again)).status == "completed"


def words(n: int, delay: float) -> Script:
    return Script([(delay, d) for d in sse(*[chunk(f"w{i} ") for i in range(n)], chunk(finish="stop"))])


async def first_events(stream: Any, n: int) -> list[Any]:
    """The first ``n`` events of a stream, then the connection dropped (as a caller's that went away)."""
    got = []
    async for event in stream:
        got.append(event)
        if len(got) == n:
            break
    await stream.close()
    return got


async def test_a_head_on_a_streamed_response_is_its_headers_alone_and_the_stream_names_its_request_id(
        tmp_path: Path) -> None:
    """``HEAD /v1/responses/{id}?stream=true`` sent the events after its headers, which no client reads for a HEAD:
    on a kept-alive connection they were taken for the next answer (the next request's came after them, or never).
    It is the headers alone now, and the GET's stream says its request id, as every other answer does (it said
    none)."""
    import socket

    async with api_with_miners(tmp_path, {1: words(3, 0.01)}) as api:
        client = openai_client(api)
        created = await client.responses.create(model="default", input="Hi", background=True, stream=True)
        response_id = (await first_events(created, 1))[0].response.id
        auth = {"Authorization": f"Bearer {api.key}"}
        async with aiohttp.ClientSession() as s, s.get(f"{api.url}/v1/responses/{response_id}?stream=true",
                                                       headers={**auth, "x-request-id": "replay-1"}) as r:
            assert r.status == 200 and r.headers["x-request-id"] == "replay-1"
            assert "response.completed" in await r.text()
        host, port = api.url.removeprefix("http://").split(":")

        def head_then_get() -> bytes:
            with socket.create_connection((host, int(port)), timeout=5) as sock:
                sock.sendall(f"HEAD /v1/responses/{response_id}?stream=true HTTP/1.1\r\nHost: x\r\n"
                             f"Authorization: Bearer {api.key}\r\nx-request-id: head-1\r\n\r\n"
                             "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                got = b""
                while chunk := sock.recv(65536):
                    got += chunk
                return got

        head, _, rest = (await asyncio.to_thread(head_then_get)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"text/event-stream" in head and b"x-request-id: head-1" in head
    assert rest.startswith(b"HTTP/1.1 200 "), rest[:200]  # the next answer follows the headers at once
    assert b"event:" not in rest


@pytest.mark.parametrize("elsewhere", [False, True], ids=["same worker", "another worker"])
async def test_a_streamed_background_response_goes_on_without_its_caller_and_is_streamed_again(
        tmp_path: Path, elsewhere: bool) -> None:
    """OpenAI's resumable stream: the caller's connection drops after four events; the answer goes on, and
    ``retrieve(stream=True, starting_after=3)`` gives the rest, numbered on, from the worker answering it
    (its events in memory) or from any other (read from the store as they are written)."""
    miner = words(6, 0.05)
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        head = await first_events(await client.responses.create(model="default", input="Hi", background=True,
                                                                stream=True), 5)
        assert [e.type for e in head] == ["response.created", "response.queued", "response.in_progress",
                                          "response.output_item.added", "response.content_part.added"]
        assert [e.response.status for e in head[:3]] == ["queued", "queued", "in_progress"]  # as OpenAI's
        response_id = head[0].response.id
        assert head[0].response.background is True
        if elsewhere:  # a worker that does not answer it has no events in memory: the store's, as they come
            api.ctx.response_logs.pop(response_id)
        rest = [e async for e in await client.responses.retrieve(response_id, stream=True, starting_after=4)]
        assert [e.sequence_number for e in rest] == list(range(5, 5 + len(rest)))
        assert rest[-1].type == "response.completed" and rest[-1].response.output_text == "w0 w1 w2 w3 w4 w5 "
        assert "".join(e.delta for e in rest if e.type == "response.output_text.delta") == "w0 w1 w2 w3 w4 w5 "
        assert miner.cancelled == 0  # the answer was not stopped with the first connection
        assert (await client.responses.retrieve(response_id)).status == "completed"
        whole = [e async for e in await client.responses.retrieve(response_id, stream=True)]  # from the start
        assert [e.type for e in whole] == [e.type for e in head + rest]


async def test_a_caller_that_leaves_while_its_first_events_are_stored_leaves_nothing_behind(tmp_path: Path) -> None:
    """The caller's handler is cancelled when it leaves: one that left while the stream's first events were
    being stored (a store round trip) left its event log in the worker's memory for good, and its response
    was never answered (``in_progress``, then ``failed`` past its deadline). It is answered, and forgotten."""
    async with api_with_miners(tmp_path, {1: words(3, 0.01)}) as api:
        store, slowed = api.ctx.responses, asyncio.Event()
        add_events = store.add_events

        async def slow_first(*args: Any, **kwargs: Any) -> None:
            if not slowed.is_set():
                slowed.set()
                await asyncio.sleep(0.5)
            await add_events(*args, **kwargs)

        store.add_events = slow_first
        body = {"model": "default", "input": "Hi", "background": True, "stream": True}
        async with aiohttp.ClientSession() as http:
            post = http.post(api.url + "/v1/responses", json=body, headers={"Authorization": f"Bearer {api.key}"})
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(post, 0.2)  # no headers yet: the first events are being stored
        for _ in range(POLLS):
            if not api.ctx.running_responses and not api.ctx.response_logs:
                break
            await asyncio.sleep(0.02)
        assert api.ctx.response_logs == {} and api.ctx.running_responses == {}
        [(response_id, _)] = store._query("SELECT id, key_id FROM stored_responses", ())
        status, stored = await call(api, "GET", f"/v1/responses/{response_id}")
        assert status == 200 and stored["status"] == "completed", stored

async def test_an_answer_that_fails_as_its_deleted_response_is_noticed_leaves_no_unretrieved_task(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A response deleted while its miners failed: its answer's task ended while the store was asked whether it
    was still pending, and its error was never taken (asyncio's ERROR "Task exception was never retrieved",
    with a traceback, 3 times in the soak's 4,000-request mix)."""
    monkeypatch.setattr(responses_background, "WATCH_EVERY_S", 0.01)
    reported: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: reported.append(f"{context['message']}: {context.get('exception')}"))
    try:
        async with api_with_miners(tmp_path, {1: words(1, 0.01)}) as api:
            store = api.ctx.responses
            await store.put("key-a", "resp_1", encode({"id": "resp_1", "status": "in_progress"}, []), retention=60,
                            pending=True)
            is_pending = store.is_pending

            async def slow_is_pending(key_id: str, response_id: str) -> bool:
                await asyncio.sleep(0.1)  # the answer fails meanwhile
                return await is_pending(key_id, response_id)

            store.is_pending = slow_is_pending
            assert await store.delete("key-a", "resp_1")

            async def failing() -> None:
                await asyncio.sleep(0.05)
                raise RuntimeError("no miner answered")

            with pytest.raises(responses_background.SettledElsewhere):
                await responses_background._watched(api.ctx, "key-a", "resp_1", failing)
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    # (another test's task collected meanwhile may be reported too: only this answer's error counts)
    assert not [m for m in reported if "never retrieved" in m and "no miner answered" in m], reported

async def test_a_streamed_background_search_is_in_its_events_as_it_happens(tmp_path: Path) -> None:
    """A background stream's web search: its first events are in the log before the search ends (a caller
    following it saw nothing for the search's seconds), and the stored response has the same search item."""
    miner = words(2, 0.5)  # the search and the answer each take a second
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        head = await first_events(await client.responses.create(model="default", input="Pelseldan?", background=True,
                                                                stream=True, tools=[{"type": "web_search"}]), 6)
        assert [e.type for e in head] == ["response.created", "response.queued", "response.in_progress",
                                          "response.output_item.added", "response.web_search_call.in_progress",
                                          "response.web_search_call.searching"]
        assert "InferenceTask" not in [b.get("task") for b in miner.bodies], "sent while the search runs"
        assert head[3].item.status == "in_progress" and head[3].item.action.query == "Pelseldan?"
        whole = [e async for e in await client.responses.retrieve(head[0].response.id, stream=True)]
    # the miner's words are no search results: the search failed (no completed event), the answer went on
    assert [e.type for e in whole[:7]] == [e.type for e in head] + ["response.output_item.done"]
    assert [e.sequence_number for e in whole] == list(range(len(whole)))
    search = whole[-1].response.output[0]
    assert whole[-1].type == "response.completed" and search.type == "web_search_call"
    assert search.id == head[3].item.id == whole[6].item.id and search.status == whole[6].item.status == "failed"


async def test_a_streamed_background_response_that_fails_ends_with_response_failed(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: Script([], status=500)}) as api:
        client = openai_client(api)
        events = [e async for e in await client.responses.create(model="default", input="Hi", background=True,
                                                                 stream=True)]
        assert [e.type for e in events] == ["response.created", "response.queued", "response.in_progress",
                                            "response.failed"]
        assert events[-1].response.error is not None and events[-1].sequence_number == 3
        assert (await client.responses.retrieve(events[0].response.id)).status == "failed"


async def test_a_streamed_background_search_that_then_fails_keeps_its_search_item(tmp_path: Path) -> None:
    """Its stream showed the search's item, then ``response.failed`` with no output at all: the failed
    response (streamed and stored) keeps the item its stream showed."""
    async with api_with_miners(tmp_path, {1: Script([], status=500)}) as api:
        client = openai_client(api)
        events = [e async for e in await client.responses.create(model="default", input="Pelseldan?", background=True,
                                                                 stream=True, tools=[{"type": "web_search"}])]
        stored = await client.responses.retrieve(events[0].response.id)
    shown = [e.item for e in events if e.type == "response.output_item.done"]
    assert events[-1].type == "response.failed" and [o.id for o in events[-1].response.output] == [shown[0].id]
    assert stored.status == "failed" and [(o.type, o.status) for o in stored.output] == [("web_search_call", "failed")]


async def test_a_cancel_ends_the_stream_and_only_streamed_background_responses_stream_again(tmp_path: Path) -> None:
    miner = words(3, 1.0)
    async with api_with_miners(tmp_path, {1: miner}) as api:
        client = openai_client(api)
        stream = await client.responses.create(model="default", input="Hi", background=True, stream=True)
        events, ended = [], False
        async for event in stream:
            events.append(event)
            if event.type == "response.in_progress":
                assert (await client.responses.cancel(event.response.id)).status == "cancelled"
        ended = True
        assert ended and [e.type for e in events] == ["response.created", "response.queued",
                                                      "response.in_progress"]  # then it ends
        paced(miner, 0)  # the next two only need to be there
        polled_one = await client.responses.create(model="default", input="Hi", background=True)
        foreground = await client.responses.create(model="default", input="Hi")
        for response_id in (polled_one.id, foreground.id):
            status, body = await call(api, "GET", f"/v1/responses/{response_id}?stream=true")
            assert status == 400 and body["error"]["param"] == "stream", body
        for bad in ("-2", "x", str(2**64)):  # a number no store takes is a 400 too, not a 500
            status, body = await call(api, "GET", f"/v1/responses/{polled_one.id}?stream=true&starting_after={bad}")
            assert status == 400 and body["error"]["param"] == "starting_after", body


async def test_one_key_cannot_fill_a_workers_room(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.3)}, max_background_responses=3,
                               max_background_responses_per_key=1) as api:
        client = openai_client(api)
        mine = await client.responses.create(model="default", input="Hi", background=True)
        status, body = await call(api, "POST", "/v1/responses", {"input": "Hi", "background": True})
        assert (status, body["error"]["code"]) == (429, "too_many_background_responses")
        assert "This API key has 1 background responses running" in body["error"]["message"]
        other_key, _ = await api.ctx.store.create_key(1000)
        theirs = await openai_client(api, key=other_key).responses.create(model="default", input="Hi", background=True)
        assert [(await polled(client, mine)).status,
                (await polled(openai_client(api, key=other_key), theirs)).status] == ["completed", "completed"]
        for _ in range(POLLS):  # its task ends just after the response is stored
            if not api.ctx.background_owners:
                break
            await asyncio.sleep(0.01)
        assert api.ctx.background_owners == {}  # forgotten once done: the key has its room again
        again = await client.responses.create(model="default", input="Hi", background=True)
        assert (await polled(client, again)).status == "completed"


async def test_the_sdks_stream_helper_makes_and_resumes_one(tmp_path: Path) -> None:
    """``client.responses.stream(background=True)``, dropped after six events, then
    ``client.responses.stream(response_id=..., starting_after=5)``: the SDK's own resume, to the final response."""
    async with api_with_miners(tmp_path, {1: words(6, 0.05)}) as api:
        client = openai_client(api)
        head: list[Any] = []
        async with client.responses.stream(model="default", input="Hi", background=True) as first:
            async for event in first:
                head.append(event)
                if len(head) == 6:
                    break
        response_id = head[0].response.id
        async with client.responses.stream(response_id=response_id, starting_after=5) as rest:
            final = await rest.get_final_response()
        assert (final.id, final.status, final.output_text) == (response_id, "completed", "w0 w1 w2 w3 w4 w5 ")


async def test_a_long_streamed_answer_keeps_its_items_whole_in_the_store_past_the_events_bound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``MAX_STORED_EVENT_BYTES`` a streamed background response's deltas are no longer stored (each is
    some 50 times its text): a caller that resumes from another worker (the store's events) misses those
    deltas, their numbers skipped, and has every other event: each item's ``.done`` events and the final
    response carry the whole answer, for the SDK as for a caller that reads the events. The caller that
    stayed, on the worker answering it, has every one."""
    monkeypatch.setattr(responses_background, "MAX_STORED_EVENT_BYTES", 3000)
    answer = "".join(f"w{i} " for i in range(40))
    async with api_with_miners(tmp_path, {1: words(40, 0.005)}) as api:
        client = openai_client(api)
        whole = [e async for e in await client.responses.create(model="default", input="Hi", background=True,
                                                                stream=True)]
        assert [e.sequence_number for e in whole] == list(range(len(whole)))  # here: every event
        assert "".join(e.delta for e in whole if e.type == "response.output_text.delta") == answer
        response_id = whole[0].response.id
        assert response_id not in api.ctx.response_logs  # done: another caller reads the store's
        kept = [e async for e in await client.responses.retrieve(response_id, stream=True)]
        numbers = [e.sequence_number for e in kept]
        assert numbers == sorted(numbers) and numbers[0] == 0 and numbers[-1] == whole[-1].sequence_number
        missed = {e.sequence_number for e in whole} - set(numbers)
        assert missed and all(whole[n].type == "response.output_text.delta" for n in missed)
        assert [e.type for e in kept if not e.type.endswith(".delta")] == \
            [e.type for e in whole if not e.type.endswith(".delta")]
        text_done = next(e for e in kept if e.type == "response.output_text.done")
        assert text_done.text == answer and kept[-1].response.output_text == answer
        stored = await api.ctx.responses.events(await only_key_id(api), response_id, after=-1)
        assert sum(len(frame) for seq, frame in stored if whole[seq].type.endswith(".delta")) <= 3000
        async with client.responses.stream(response_id=response_id, starting_after=2) as resumed:
            assert (await resumed.get_final_response()).output_text == answer  # the SDK's helper


async def test_a_stream_resumed_at_or_past_its_end_sends_nothing_more(tmp_path: Path) -> None:
    """``starting_after`` at the last event's number, or past it, is the end: no event is sent again, or made
    up with a number the stream never had."""
    async with api_with_miners(tmp_path, {1: words(3, 0.01)}) as api:
        client = openai_client(api)
        whole = [e async for e in await client.responses.create(model="default", input="Hi", background=True,
                                                                stream=True)]
        last, response_id = whole[-1].sequence_number, whole[0].response.id
        assert whole[-1].type == "response.completed" and response_id not in api.ctx.response_logs
        for after, expected in ((last - 1, [("response.completed", last)]), (last, []), (last + 100, [])):
            got = [e async for e in await client.responses.retrieve(response_id, stream=True, starting_after=after)]
            assert [(e.type, e.sequence_number) for e in got] == expected, after


async def test_a_streams_last_event_a_dead_worker_did_not_store_is_made_up_once(honest: ApiUnderTest) -> None:
    """Its worker settled the response and died before it stored the last event: a resume ends with it, made up
    from the stored response and numbered as it would have been; past that number, nothing."""
    client = openai_client(honest)
    key_id = await only_key_id(honest)
    done = {"id": "resp_cut", "object": "response", "created_at": 1, "status": "completed", "background": True,
            "model": "m", "output": [], "error": None}
    events = responses_background.ResponseStream(done)
    frames = [events.event("response.created", response=done), events.event("response.in_progress", response=done)]
    assert honest.ctx.responses is not None
    await honest.ctx.responses.put(key_id, "resp_cut", encode(done, []), retention=60)
    await honest.ctx.responses.add_events(key_id, "resp_cut", [(0, frames[0].decode()), (1, frames[1].decode())],
                                          retention=60)
    got = [e async for e in await client.responses.retrieve("resp_cut", stream=True)]
    assert [(e.type, e.sequence_number) for e in got] == [("response.created", 0), ("response.in_progress", 1),
                                                          ("response.completed", 2)]
    assert got[-1].response.id == "resp_cut"
    assert [e.type async for e in await client.responses.retrieve("resp_cut", stream=True, starting_after=1)] == \
        ["response.completed"]
    assert [e async for e in await client.responses.retrieve("resp_cut", stream=True, starting_after=2)] == []


@pytest.mark.parametrize("died", [False, True], ids=["settled, then died", "died past its deadline"])
async def test_a_made_up_last_event_follows_the_done_events_of_the_items_left_open(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch, died: bool) -> None:
    """Its worker stored a message's first events and deltas, then died (having settled the response, or before:
    failed past its deadline). A resume made up the last event alone: ``response.completed`` (``.failed``) right
    after a delta, without the ``output_text.done``, ``content_part.done`` and ``output_item.done`` OpenAI's
    stream always sends first (what apps act on). They come first now: the text as the stored response has it
    (all of it: deltas past the events bound are not stored), else as far as the deltas came, ``incomplete``."""
    monkeypatch.setattr(responses_background, "TAIL_WAIT_S", 0.2)
    client = openai_client(honest)
    key_id, store = await only_key_id(honest), honest.ctx.responses
    assert store is not None
    base = in_progress("resp_open")
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}
    render = responses_background.ResponseStream(base)
    frames = [render.event("response.created", response=base), render.event("response.in_progress", response=base),
              render.event("response.output_item.added", output_index=0, item=item),
              render.event("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part=part),
              *[render.event("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                             delta=piece, logprobs=[]) for piece in ("Hel", "lo")]]
    whole = item | {"status": "completed", "content": [part | {"text": "Hello, Ada."}]}
    done = base | {"status": "completed", "output": [whole]}
    record = encode(base, [], until=time.time() - 1) if died else encode(done, [])
    await store.put(key_id, "resp_open", record, retention=60, pending=died)
    await store.add_events(key_id, "resp_open", [(n, e.decode()) for n, e in enumerate(frames)], retention=60)
    got = [e async for e in await client.responses.retrieve("resp_open", stream=True, starting_after=5)]
    assert [(e.type, e.sequence_number) for e in got] == [
        ("response.output_text.done", 6), ("response.content_part.done", 7), ("response.output_item.done", 8),
        ("response.failed" if died else "response.completed", 9)]
    text = "Hello" if died else "Hello, Ada."
    assert (got[0].text, got[1].part.text, got[2].item.content[0].text) == (text, text, text)
    assert got[2].item.status == ("incomplete" if died else "completed") and got[2].item.id == "msg_1"
    # read from the start, it is whole: the failed response had no output after the message's done events
    whole = [e.model_dump(mode="json") async for e in await client.responses.retrieve("resp_open", stream=True)]
    assert stream_faults(whole) == [], whole[-1]["response"]["output"]
    if not died:  # the SDK's helper, reading it from the start, has the final response
        async with client.responses.stream(response_id="resp_open") as events:
            assert (await events.get_final_response()).output_text == "Hello, Ada."


@pytest.mark.parametrize("first", ["polled", "streamed"])
async def test_one_failed_past_its_deadline_has_the_same_output_polled_and_streamed(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch, first: str) -> None:
    """Its worker died mid-answer (a reasoning item done, a message begun): past its deadline it reads failed. Polled
    (``GET /v1/responses/{id}``), it said ``output: []``, while its stream resumed listed the items its events had
    shown, in the last event's ``response``. Both now have them, with the same statuses (OpenAI keeps a failed
    response's partial output), whichever reader failed it first."""
    monkeypatch.setattr(responses_background, "TAIL_WAIT_S", 0.2)
    client = openai_client(honest)
    key_id, store = await only_key_id(honest), honest.ctx.responses
    assert store is not None
    base = in_progress("resp_died")
    thought = {"type": "reasoning", "id": "rs_1", "summary": [], "status": "completed",
               "content": [{"type": "reasoning_text", "text": "Hm."}]}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}
    render = responses_background.ResponseStream(base)
    frames = [render.event("response.created", response=base), render.event("response.in_progress", response=base),
              render.event("response.output_item.added", output_index=0, item=thought | {"status": "in_progress"}),
              render.event("response.output_item.done", output_index=0, item=thought),
              render.event("response.output_item.added", output_index=1, item=item),
              render.event("response.content_part.added", item_id="msg_1", output_index=1, content_index=0, part=part),
              render.event("response.output_text.delta", item_id="msg_1", output_index=1, content_index=0,
                           delta="Hel", logprobs=[])]
    await store.put(key_id, "resp_died", encode(base, [], until=time.time() - 1), retention=60, pending=True)
    await store.add_events(key_id, "resp_died", [(n, e.decode()) for n, e in enumerate(frames)], retention=60)

    async def streamed() -> Any:
        events = [e async for e in await client.responses.retrieve("resp_died", stream=True)]
        assert events[-1].type == "response.failed", events[-1].type
        return events[-1].response

    if first == "polled":
        polled_now, last = await client.responses.retrieve("resp_died"), await streamed()
    else:
        last = await streamed()
        polled_now = await client.responses.retrieve("resp_died")
    assert polled_now.status == "failed" and polled_now.error is not None
    assert [(o.id, o.status) for o in polled_now.output] == [("rs_1", "completed"), ("msg_1", "incomplete")]
    assert polled_now.output_text == "Hel"
    assert [o.model_dump() for o in polled_now.output] == [o.model_dump() for o in last.output]


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
async def test_one_whose_conversation_outgrew_the_store_says_store_false_and_cannot_be_continued(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """Its input fit the store when it was queued, and with the answer it no longer does: it is still stored, to
    be polled, but without its conversation, and says ``store: false`` (as a foreground one over the bound):
    continuing it or listing its input items is a 400 saying why, never a turn that silently lost its history."""
    from shared.store import responses as response_store
    monkeypatch.setattr(response_store, "MAX_STORED_BYTES", 6000)
    answer = "x" * 2500
    async with api_with_miners(tmp_path, {1: Script([(0, d) for d in sse(chunk(answer), chunk(finish="stop"))])}) as api:
        client = openai_client(api)
        made = await client.responses.create(model="default", input="a" * 2500, background=True, stream=stream)
        response_id = ([e async for e in made][0].response.id if stream else made.id)
        done = await polled(client, await client.responses.retrieve(response_id))
        assert (done.status, done.output_text, done.to_dict()["store"]) == ("completed", answer, False)
        with pytest.raises(openai.BadRequestError) as e:
            await client.responses.create(model="default", input="And?", previous_response_id=response_id)
        assert e.value.code == "previous_response_not_found" and "not stored" in str(e.value)
        status, body = await call(api, "GET", f"/v1/responses/{response_id}/input_items")
        assert status == 400 and body["error"]["param"] == "response_id" and "not kept" in body["error"]["message"]


async def test_an_answer_the_store_could_not_take_is_offered_again_until_it_is_settled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store away for a moment as the answer came (a Redis restart): the answer was dropped with a WARNING,
    the response read in_progress, then failed "the gateway process stopped" though it never did. The worker
    holds the answer and asks again while the record's deadline allows."""
    from shared.store.base import StoreUnavailable

    monkeypatch.setattr(responses_background, "SETTLE_RETRY_S", 0.05)
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.05)}) as api:
        client = openai_client(api)
        store = api.ctx.responses
        real, refused = store.settle, []

        async def away_twice(*args: Any, **kwargs: Any) -> bool:
            if len(refused) < 2:
                refused.append(args[1])
                raise StoreUnavailable("redis responses: ConnectionError")
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, "settle", away_twice)
        queued = await client.responses.create(model="default", input="Hi", background=True)
        done = await polled(client, queued)
        assert (done.status, done.output_text, refused) == ("completed", "Later.", [queued.id, queued.id])


async def test_a_stream_resumed_from_a_store_that_then_fails_ends_at_once_with_the_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read from the store on another worker, a resumed stream whose store then failed (a 503 after its headers)
    was answered as a new response on the same connection: the caller waited for its own timeout (the SDK's is
    10 minutes) with no event. It ends with an error event and ``[DONE]``: the SDK raises the 503's error."""
    from shared.store.base import StoreUnavailable

    async with api_with_miners(tmp_path, {1: words(30, 0.05)}) as api:
        client = openai_client(api).with_options(timeout=20)
        head = await first_events(await client.responses.create(model="default", input="Hi", background=True,
                                                                stream=True), 5)
        response_id = head[0].response.id
        api.ctx.response_logs.pop(response_id)  # another worker: it reads the store's events
        reads, events = [0], api.ctx.responses.events

        async def failing(*args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            if reads[0] > 2:
                raise StoreUnavailable("sqlite responses: database is locked")
            return await events(*args, **kwargs)

        monkeypatch.setattr(api.ctx.responses, "events", failing)
        started, got = time.monotonic(), []
        with pytest.raises(openai.APIError) as e:
            async for event in await client.responses.retrieve(response_id, stream=True, starting_after=4):
                got.append(event)
        assert "store is unavailable" in e.value.message and time.monotonic() - started < 5
        assert got and got[0].sequence_number == 5  # what the store gave before it failed


def short_deadlines(monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """A background record's deadline 1.5 s from its start (with the API settings this returns), its settle
    offered again every 50 ms until then."""
    from api import responses

    monkeypatch.setattr(responses_background, "SETTLE_RETRY_S", 0.05)
    monkeypatch.setattr(responses, "chat_deadline", lambda *_: (1.0, False))
    return {"background_grace_seconds": 0.5}


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
async def test_a_background_turn_its_conversation_cannot_take_by_its_deadline_ends_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool) -> None:
    """The conversation's store fails the turn until the record's deadline: the record was settled completed and
    the turn silently missing from the conversation. It ends failed with the foreground's 503 words, as the SDK's
    ``server_error`` (its ``store_unavailable`` is not one of the SDK's codes for a response's error: the SDK's
    ``Response`` type refused it), streamed: ``response.failed`` in place of ``response.completed``, and nothing of the turn stays in
    the conversation (its writes landed, though each was reported failed): sending it again is safe."""
    settings = short_deadlines(monkeypatch)
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.05)}, **settings) as api:
        client = openai_client(api)
        conversation = await client.conversations.create()
        failed = failing_appends(api, monkeypatch, 10_000, landed=True)
        made = await client.responses.create(model="default", input="Hi", background=True, stream=stream,
                                             conversation=conversation.id)
        if stream:
            events = [e async for e in made]  # type: ignore[union-attr]
            types = [e.type for e in events]
            assert types[-1] == "response.failed" and "response.completed" not in types, types
            assert "response.output_text.done" in types  # the answer's items were closed, as streamed
            response_id = events[0].response.id
        else:
            response_id = made.id  # type: ignore[union-attr]
        done = await polled(client, await client.responses.retrieve(response_id))
        Response.model_validate(done.model_dump(), strict=True)  # the SDK's own type: its code is one of the SDK's
        assert (done.status, done.error.code) == ("failed", "server_error"), done  # type: ignore[union-attr]
        assert f"not added to conversation '{conversation.id}'" in done.error.message  # type: ignore[union-attr]
        assert "the store is unavailable" in done.error.message  # type: ignore[union-attr]
        if stream:
            assert events[-1].response.error.code == "server_error"  # type: ignore[union-attr]
            Response.model_validate(events[-1].response.model_dump(), strict=True)  # type: ignore[union-attr]
        assert len(failed) > 3 and set(failed) == {response_id}  # offered again until the deadline, as the record
        assert (await client.conversations.items.list(conversation.id)).data == []


async def test_a_background_turn_its_conversation_takes_late_is_added_once_and_completed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store away a moment as the answer came: the turn is offered again with the record (every
    SETTLE_RETRY_S), and once taken the response is completed; writes that landed though reported failed are
    not doubled."""
    monkeypatch.setattr(responses_background, "SETTLE_RETRY_S", 0.05)
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.05)}) as api:
        client = openai_client(api)
        conversation = await client.conversations.create()
        failed = failing_appends(api, monkeypatch, 2, landed=True)
        done = await polled(client, await client.responses.create(model="default", input="Hi", background=True,
                                                                  conversation=conversation.id))
        assert (done.status, done.output_text, failed) == ("completed", "Later.", [done.id, done.id])
        items = (await client.conversations.items.list(conversation.id, order="asc")).data
        assert [item.role for item in items] == ["user", "assistant"]  # type: ignore[union-attr]


async def test_a_background_turn_cancelled_as_it_was_added_is_taken_out_of_its_conversation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The turn is added before the record is settled (a poller that sees it done finds it there); a cancel that
    settled the record first (on another worker, between the two writes) leaves the conversation without it."""
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.05)}) as api:
        client = openai_client(api)
        conversation = await client.conversations.create()
        real = api.ctx.responses.settle

        async def cancelled_first(key_id: str, response_id: str, data: str, **kwargs: Any) -> bool:
            found = await api.ctx.responses.get(key_id, response_id)
            assert found is not None
            assert (await client.conversations.items.list(conversation.id)).data  # the turn is there by now
            await real(key_id, response_id, encode(found.response | {"status": "cancelled"}, found.items),
                       retention=60)
            return await real(key_id, response_id, data, **kwargs)

        monkeypatch.setattr(api.ctx.responses, "settle", cancelled_first)
        done = await polled(client, await client.responses.create(model="default", input="Hi", background=True,
                                                                  conversation=conversation.id))
        assert done.status == "cancelled"
        assert (await client.conversations.items.list(conversation.id)).data == []


def refuse_turns(api: ApiUnderTest) -> None:
    """The SQLite file refuses every conversation item from now on (as a full disk, or a file gone read-only,
    refuses a write), through a connection of its own: the store's own write fails, nothing in it is patched."""
    db = sqlite3.connect(api.ctx.conversations.path)
    try:
        db.execute("CREATE TRIGGER refuse_turns BEFORE INSERT ON conversation_items "
                   "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END")
        db.commit()
    finally:
        db.close()


@pytest.mark.parametrize("stream", [False, True], ids=["polled", "streamed"])
@pytest.mark.parametrize("refused", [True, False], ids=["refused", "taken"])
async def test_a_background_turns_access_line_says_how_it_was_settled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool, refused: bool) -> None:
    """The store refuses the turn's conversation items until the record's deadline: the response ends failed
    (``response.failed``, streamed), but its access line, written as its race ended, before the settle, said
    ``status=ok``: the engineer on call read a success. The line is written once the turn is settled:
    ``status=store_unavailable``; a turn the store takes still reads ``status=ok``. One such line either way."""
    settings = short_deadlines(monkeypatch)
    async with api_with_miners(tmp_path, {1: slow("Later.", 0.05)}, **settings) as api:
        client = openai_client(api)
        conversation = await client.conversations.create()
        if refused:
            refuse_turns(api)
        lines, sink = log_lines("INFO")
        rid = f"bg-turn-{stream}-{refused}"
        try:
            made = await client.responses.create(model="default", input="Hi", background=True, stream=stream,
                                                 conversation=conversation.id, extra_headers={"x-request-id": rid})
            if stream:
                events = [e async for e in made]  # type: ignore[union-attr]
                assert events[-1].type == ("response.failed" if refused else "response.completed")
                response_id = events[0].response.id
            else:
                response_id = made.id  # type: ignore[union-attr]
            done = await polled(client, await client.responses.retrieve(response_id))
            assert done.status == ("failed" if refused else "completed"), done
            await wait_until(lambda: any(f"responses.background rid={rid} " in line for line in lines), 5)
        finally:
            logger.remove(sink)
        turn = [line for batch in lines for line in batch.splitlines()
                if f"responses.background rid={rid} " in line]
        assert len(turn) == 1, turn
        assert f" winner=1 stream={stream} " in turn[0]
        assert f" status={'store_unavailable' if refused else 'ok'} " in turn[0], turn
        if refused:  # nothing of it stays: it can be sent again
            assert (await client.conversations.items.list(conversation.id)).data == []


async def test_one_asked_for_as_its_key_is_deleted_is_a_401(honest: ApiUnderTest) -> None:
    """Its key deleted between the request's key check and its record (by an admin on another host): it was queued,
    and its miners asked, for a response no key could ever poll. The store refuses the record: a 401, nothing run."""
    secret, record = await honest.ctx.store.create_key(1000)
    await honest.ctx.responses.forget_key(record.id)  # the delete's forgetting, come before the key's own removal
    with pytest.raises(openai.AuthenticationError) as e:
        await openai_client(honest, key=secret).responses.create(model="default", input="Hi", background=True)
    assert e.value.code == "invalid_api_key" and not honest.ctx.running_responses


@pytest.mark.parametrize("settled", [True, False], ids=["settled", "past its deadline"])
async def test_a_resumed_streams_last_events_written_just_as_it_stops_reading_are_sent(
        honest: ApiUnderTest, monkeypatch: pytest.MonkeyPatch, settled: bool) -> None:
    """Resumed on a worker not answering it, a stream reads the store until the response is settled (and
    ``TAIL_WAIT_S`` more for its last events), or until its deadline. Its worker's last events (the items done,
    then ``response.completed``) landed just after the reader's last read of events and before it looked at the
    store's last event: it found that event an end and stopped, sending none of them (the SDK's helper: "Didn't
    receive a response.completed event"). It reads what was written since, so the caller gets them, once."""
    monkeypatch.setattr(responses_background, "TAIL_WAIT_S", 0.2)
    monkeypatch.setattr(responses_background, "FOLLOW_EVERY_S", 0.02)
    client = openai_client(honest)
    key_id, store = await only_key_id(honest), honest.ctx.responses
    assert store is not None
    base = in_progress("resp_late")
    item = {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "Late.", "annotations": []}]}
    done = base | {"status": "completed", "output": [item]}
    render = responses_background.ResponseStream(base)
    head = [render.event("response.created", response=base), render.event("response.in_progress", response=base)]
    tail = [render.event("response.output_item.done", output_index=0, item=item), render.last(done)]
    await store.put(key_id, "resp_late", encode(base, [], until=time.time() + (60 if settled else 0.3)),
                    retention=60, pending=True)
    await store.add_events(key_id, "resp_late", [(n, e.decode()) for n, e in enumerate(head)], retention=60)
    if settled:  # its worker settled it; its last events are slow to follow (a loaded store, a slow event loop)
        assert await store.settle(key_id, "resp_late", encode(done, []), retention=60)
    real = store.last_event

    async def tail_lands_first(*args: Any, **kwargs: Any) -> Any:
        """Its worker's last write lands now, just before the reader asks for the last event (once)."""
        if not await store.events(key_id, "resp_late", after=1):
            if not settled:  # answered just as its deadline passed: settled, then its last events
                assert await store.settle(key_id, "resp_late", encode(done, []), retention=60)
            await store.add_events(key_id, "resp_late", [(n, e.decode()) for n, e in enumerate(tail, 2)],
                                   retention=60)
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "last_event", tail_lands_first)
    got = [e async for e in await client.responses.retrieve("resp_late", stream=True)]
    assert [(e.type, e.sequence_number) for e in got] == [
        ("response.created", 0), ("response.in_progress", 1), ("response.output_item.done", 2),
        ("response.completed", 3)]
    assert got[-1].response.output_text == "Late."


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_truncated_background_response_is_not_failed_while_its_worker_asks_again(
        tmp_path: Path, store: str) -> None:
    """``truncation: "auto"``: the miners refuse the conversation as too long (each refusal 1 s into the 2 s
    deadline), and each race asked again, with it cut, has a deadline of its own. The stored record's deadline
    covered the first race only: a poll on another host past it (2 s and the 0.5 s grace) failed the response
    ("the gateway process answering it stopped") while its worker, alive, was asking again (three refusals: 3 s),
    and the answer that came was dropped. The record covers every race its worker may run.

    Refusals 0.8 s into a 1 s deadline came late on a loaded host: the race's deadline runs from the request's
    start, and the API took up to 0.4 s before it asked the miner ("deadline exceeded", the miner asked once)."""
    talk = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} " + "word " * 8} for i in range(8)]
    miner = Script([(0, d) for d in sse(chunk("Fits now."), chunk(finish="stop"))], status=400,
                   error_code="model_server_rejected", error_delay=1.0, errors=3,
                   error_message="This model's maximum context length is 40 tokens (context_length_exceeded)")
    async with apis_on_one_store(tmp_path, store, 2, miner, request_timeout=2.0, max_request_timeout=2.0,
                                 background_grace_seconds=0.5) as (here, there):
        made = await openai_client(here).responses.create(model="default", input=talk, truncation="auto",  # type: ignore[arg-type]
                                                          background=True)
        elsewhere = openai_client(there, here.key)
        polls = [await elsewhere.responses.retrieve(made.id)]
        while polls[-1].status in ("queued", "in_progress") and len(polls) < 200:  # 10 s at most
            await asyncio.sleep(0.05)
            polls.append(await elsewhere.responses.retrieve(made.id))
        done = polls[-1]
        assert (done.status, done.output_text, miner.calls) == ("completed", "Fits now.", 4), done.error
        assert len(miner.bodies[-1]["messages"]) < len(talk)  # asked again, cut


async def test_a_caller_following_one_on_a_worker_that_stops_is_told_at_once_where_to_resume(tmp_path: Path) -> None:
    """A worker stops (a deploy) while a caller follows, from the store, a streamed background response another
    worker runs: the caller waited out the stop's grace for requests in flight, for nothing (the response goes on
    without it), and was then cut. It is told at once: an ``error`` event ``server_shutting_down`` saying the response
    goes on on another worker and where to resume, from which the other worker's stream has the rest, to its end."""
    words = [chunk(f"w{i} ") for i in range(15)]
    miner = Script([(0.2, d) for d in sse(*words, chunk(finish="stop"))])  # 3 s of words
    async with api_with_miners(tmp_path, {1: miner}) as here, contextlib.AsyncExitStack() as stack:
        there = await stack.enter_async_context(api_with_miners(tmp_path, {1: Script([])}))
        _, response_id = await left_at(here, await openai_client(here).responses.create(
            model="default", input="Hi", background=True, stream=True), "response.in_progress")
        seen, error, took = b"", None, 0.0
        async with aiohttp.ClientSession() as http, http.get(
                f"{there.url}/v1/responses/{response_id}?stream=true", headers={"Authorization": f"Bearer {here.key}"},
                timeout=aiohttp.ClientTimeout(total=20)) as r:
            assert r.status == 200, await r.text()
            while b"response.output_text.delta" not in seen:
                seen += await r.content.readany()
            stopping = asyncio.create_task(stack.aclose())  # the other worker stops
            started = time.monotonic()
            with contextlib.suppress(aiohttp.ClientPayloadError):
                async for line in r.content:
                    seen += line
                    if line.startswith(b"data: ") and b'"type":"error"' in line:
                        error, took = json.loads(line[6:]), time.monotonic() - started
            await stopping
        assert error is not None, seen[-300:]
        assert took < 0.5, took  # at once, not after the grace
        assert error["code"] == "server_shutting_down" and "goes on on another API worker" in error["message"], error
        last = max(json.loads(line[6:])["sequence_number"] for line in seen.split(b"\n")
                   if line.startswith(b"data: ") and b"sequence_number" in line)
        assert f"starting_after={last} " in error["message"], (error["message"], last)
        rest = [e async for e in await openai_client(here).responses.retrieve(response_id, stream=True,
                                                                              starting_after=last)]
        assert rest[0].sequence_number == last + 1 and rest[-1].type == "response.completed", rest[-1].type
