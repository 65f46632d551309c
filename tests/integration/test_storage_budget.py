"""A key's daily budget of bytes written to storage (``STORED_BYTES_PER_KEY_PER_DAY``), through the real API app
and a scripted miner, on a SQLite file and on Redis (``REDIS_URL``): past it a stored response is answered with
``store: false``, a background response and a conversation write are the 429 ``storage_limit_exceeded`` before
anything is stored or any miner asked, and the count is the store's, shared by every API process on it."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from loguru import logger

from shared.store.base import StoreUnavailable, hash_key
from shared.store.responses import encode
from tests.helpers import (
    ADMIN,
    ApiUnderTest,
    Script,
    apis_on_one_store,
    call,
    log_lines,
    openai_client,
    post,
    wait_until,
)
from tests.integration.test_responses_store import answering
from tests.store.test_upgrade import OLD_KEYS_TABLE

BUDGET = 20_000
BIG = "x" * 7_000  # a turn's input: its stored part is some 7.3 KB, so the third such turn passes BUDGET
STORES = ["sqlite", "redis"]


def apis(tmp_path: Path, store: str, count: int, miner: Script,
         budget: int = BUDGET) -> contextlib.AbstractAsyncContextManager[list[ApiUnderTest]]:
    """``count`` API processes on one store (a SQLite file, or a Redis namespace dropped after), each with
    ``miner`` and a budget of ``budget`` bytes a key a day."""
    return apis_on_one_store(tmp_path, store, count, miner, stored_bytes_per_key_per_day=budget)


def stored(response: Any) -> bool:
    return response.to_dict()["store"]


@pytest.mark.parametrize("store", STORES)
async def test_the_turn_past_the_budget_is_answered_unstored_and_another_key_is_not(tmp_path: Path,
                                                                                    store: str) -> None:
    lines, sink = log_lines()
    try:
        async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
            client = openai_client(api)
            first = await client.responses.create(model="default", input=BIG)
            second = await client.responses.create(model="default", input=BIG, previous_response_id=first.id)
            assert stored(first) and stored(second)
            third = await client.responses.create(model="default", input=BIG, previous_response_id=second.id)
            assert third.output_text == "Noted." and not stored(third)  # answered, not stored
            fourth = await client.responses.create(model="default", input=BIG, previous_response_id=second.id)
            assert not stored(fourth)
            with pytest.raises(openai.BadRequestError) as e:
                await client.responses.create(model="default", input="Next.", previous_response_id=third.id)
            assert e.value.code == "previous_response_not_found"
            other, _ = await api.ctx.store.create_key(1000)
            theirs = await openai_client(api, other).responses.create(model="default", input=BIG)
            assert stored(theirs)  # another key's budget is its own
            status, usage = await call(api, "GET", "/v1/usage")
            assert status == 200, usage
            assert 14_000 < usage["stored_bytes_today"] <= BUDGET and usage["stored_bytes_per_day"] == BUDGET
            key_id = usage["key_id"]
    finally:
        logger.remove(sink)
    warned = [line for line in lines if "daily storage budget" in line]
    assert len(warned) == 1 and key_id in warned[0], lines  # one line per key per day, naming its id
    assert api.key not in warned[0]


@pytest.mark.parametrize("store", STORES)
async def test_a_background_response_past_the_budget_is_a_429_before_any_miner(tmp_path: Path, store: str) -> None:
    miner = answering("Noted.")
    async with apis(tmp_path, store, 1, miner) as (api,):
        client = openai_client(api)
        await client.responses.create(model="default", input=BIG)
        await client.responses.create(model="default", input=BIG)
        calls = miner.calls
        status, headers, text = await post(api, {"model": "default", "input": BIG, "background": True},
                                           path="/v1/responses")
        assert status == 429 and '"storage_limit_exceeded"' in text, text
        assert 0 < int(headers["Retry-After"]) <= 86400
        assert headers["x-should-retry"] == "false"  # an SDK raises at once, not sleeping until the day ends
        assert "x-ratelimit-remaining-requests" in headers  # the request was charged to the key's rate
        assert miner.calls == calls and not api.ctx.running_responses


@pytest.mark.parametrize("store", STORES)
async def test_conversation_items_past_the_budget_are_a_429_and_nothing_is_stored(tmp_path: Path,
                                                                                  store: str) -> None:
    def item(text: str) -> dict[str, Any]:
        return {"type": "message", "role": "user", "content": text}

    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        status, made = await call(api, "POST", "/v1/conversations", {"items": [item(BIG)]})
        assert status == 200, made
        path = f"/v1/conversations/{made['id']}/items"
        status, body = await call(api, "POST", path, {"items": [item(BIG)]})
        assert status == 200, body
        status, body = await call(api, "POST", path, {"items": [item(BIG)]})
        assert status == 429 and body["error"]["code"] == "storage_limit_exceeded", body
        status, listed = await call(api, "GET", path)
        assert status == 200 and len(listed["data"]) == 2  # the refused item was not added
        status, body = await call(api, "POST", "/v1/conversations", {"items": [item(BIG)]})
        assert status == 429 and body["error"]["code"] == "storage_limit_exceeded", body
        # a response's turn on it whose input would pass the budget: refused before any miner
        calls = api.scripts[1].calls
        status, body = await call(api, "POST", "/v1/responses", {"model": "default", "input": BIG,
                                                                 "conversation": made["id"]})
        assert status == 429 and body["error"]["code"] == "storage_limit_exceeded", body
        assert api.scripts[1].calls == calls


@pytest.mark.parametrize("store", STORES)
async def test_the_budget_is_shared_by_the_api_processes_on_one_store(tmp_path: Path, store: str) -> None:
    async with apis(tmp_path, store, 2, answering("Noted.")) as (here, there):
        first = await openai_client(here).responses.create(model="default", input=BIG)
        second = await openai_client(there, here.key).responses.create(model="default", input=BIG)
        assert stored(first) and stored(second)
        third = await openai_client(here).responses.create(model="default", input=BIG)
        assert not stored(third)  # the other process's write counted here
        fourth = await openai_client(there, here.key).responses.create(model="default", input=BIG)
        assert not stored(fourth)


@pytest.mark.parametrize("store", STORES)
async def test_a_background_responses_records_and_events_are_counted(tmp_path: Path, store: str) -> None:
    """Let in, a background response's settled record, and a streamed one's events, count toward the budget."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        polled, _ = await api.ctx.store.create_key(1000)
        streamed, _ = await api.ctx.store.create_key(1000)
        made = await openai_client(api, polled).responses.create(model="default", input="Hi", background=True)
        async with openai_client(api, streamed).responses.stream(model="default", input="Hi", background=True) as s:
            await s.get_final_response()
        await wait_until(lambda: not api.ctx.running_responses, 5)
        assert (await openai_client(api, polled).responses.retrieve(made.id)).status == "completed"
        counts = {}
        for name, key in (("polled", polled), ("streamed", streamed)):
            status, usage = await call(api, "GET", "/v1/usage", key=key)
            assert status == 200, usage
            counts[name] = usage["stored_bytes_today"]
        # the pending record, then the settled one: twice a record's size or so
        assert 1_000 < counts["polled"] < 5_000, counts
        assert counts["streamed"] > counts["polled"] + 1_000, counts  # and the streamed one's events


def item(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


async def own_budget(api: ApiUnderTest, key: str, value: Any, *, query: bool = False) -> Any:
    """The admin sets ``key``'s own ``max_stored_bytes_per_day`` (in a JSON body, or the query string): what the
    admin's answer says it is now."""
    path = "/api_management/modify-api-key/" + key
    if query:
        status, out = await call(api, "PUT", f"{path}?max_stored_bytes_per_day={value}", headers=ADMIN)
    else:
        status, out = await call(api, "PUT", path, {"max_stored_bytes_per_day": value}, headers=ADMIN)
    assert status == 200, out
    return out["max_stored_bytes_per_day"]


async def budget_in_force(api: ApiUnderTest, key: str) -> int | None:
    """What ``/v1/usage`` says the key's daily storage budget is (null: no limit)."""
    status, usage = await call(api, "GET", "/v1/usage", key=key)
    assert status == 200, usage
    return usage["stored_bytes_per_day"]


@pytest.mark.parametrize("store", STORES)
async def test_a_keys_own_budget_is_applied_instead_of_the_default_until_put_back(tmp_path: Path, store: str) -> None:
    """The admin gives one key a budget of its own: its writes past it are refused as the default's are (a response
    answered unstored, a background response and a conversation write the 429 ``storage_limit_exceeded``), while a
    key with the default's budget is not; ``/v1/usage`` shows each key's; null or ``default`` puts the default back,
    0 is no limit for that key, and a key's own may be above the default too."""
    small = BUDGET // 2  # one BIG turn (some 7.3 KB) fits, a second does not
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        other, _ = await api.ctx.store.create_key(1000)
        mine, theirs = openai_client(api), openai_client(api, other)
        assert await own_budget(api, api.key, small) == small
        assert (await budget_in_force(api, api.key), await budget_in_force(api, other)) == (small, BUDGET)
        assert stored(await mine.responses.create(model="default", input=BIG))
        assert not stored(await mine.responses.create(model="default", input=BIG))  # past its own
        calls = api.scripts[1].calls
        status, headers, text = await post(api, {"model": "default", "input": BIG, "background": True},
                                           path="/v1/responses")
        assert status == 429 and '"storage_limit_exceeded"' in text, text  # the default's 429...
        assert f"may write {small} bytes" in text and "max_stored_bytes_per_day" in text  # ... naming its own
        assert 0 < int(headers["Retry-After"]) <= 86400 and api.scripts[1].calls == calls
        status, body = await call(api, "POST", "/v1/conversations", {"items": [item(BIG)]})
        assert status == 429 and body["error"]["code"] == "storage_limit_exceeded", body
        # the other key, on the default's budget: both stored
        assert stored(await theirs.responses.create(model="default", input=BIG))
        assert stored(await theirs.responses.create(model="default", input=BIG))
        assert await own_budget(api, api.key, None) is None  # JSON null: the default again
        assert await budget_in_force(api, api.key) == BUDGET
        assert stored(await mine.responses.create(model="default", input=BIG))  # 2 of the default's 20 KB
        assert await own_budget(api, api.key, 0, query=True) == 0  # no limit for this key
        assert await budget_in_force(api, api.key) is None
        for _ in range(2):
            assert stored(await mine.responses.create(model="default", input=BIG))
        assert await own_budget(api, api.key, "default", query=True) is None
        assert not stored(await mine.responses.create(model="default", input=BIG))  # the default's, spent
        assert not stored(await theirs.responses.create(model="default", input=BIG))  # the default's, spent
        assert await own_budget(api, other, 4 * BUDGET) == 4 * BUDGET  # above the default
        assert stored(await theirs.responses.create(model="default", input=BIG))
        assert await budget_in_force(api, other) == 4 * BUDGET


@pytest.mark.parametrize("store", STORES)
async def test_a_key_stored_before_its_own_budget_existed_has_the_default(tmp_path: Path, store: str) -> None:
    """A key an earlier release stored, without the field (a SQLite file made before its column, a Redis hash
    without it), reads as "default": listed so, and held to ``STORED_BYTES_PER_KEY_PER_DAY``."""
    old = "sn1-" + "o" * 40
    if store == "sqlite":  # the API opens (and upgrades) the file an earlier release made, its key in it
        with sqlite3.connect(tmp_path / "api.db") as db:
            db.executescript(OLD_KEYS_TABLE)
            db.execute("INSERT INTO api_keys VALUES ('00112233445566aa', ?, 'sn1-oooooo', 'old', 1000, "
                       "'[\"chat\"]', NULL, NULL, 1.0, NULL)", (hash_key(old),))
        db.close()
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        if store == "redis":
            old, record = await api.ctx.store.create_key(1000)
            await api.ctx.store.redis.hdel(api.ctx.store.key("key", record.key_hash), "max_stored_bytes_per_day")
        status, listed = await call(api, "GET", "/api_management/api-keys", headers=ADMIN)
        assert status == 200 and len(listed["data"]) == 2, listed
        assert [k["max_stored_bytes_per_day"] for k in listed["data"]] == [None, None]
        assert await budget_in_force(api, old) == BUDGET
        client = openai_client(api, old)
        for _ in range(2):
            assert stored(await client.responses.create(model="default", input=BIG))
        assert not stored(await client.responses.create(model="default", input=BIG))
        assert await own_budget(api, old, 30_000) == 30_000  # and it takes one of its own
        assert stored(await client.responses.create(model="default", input=BIG))


async def stored_today(api: ApiUnderTest, key: str | None = None) -> int:
    status, usage = await call(api, "GET", "/v1/usage", key=key)
    assert status == 200, usage
    return usage["stored_bytes_today"]


@pytest.mark.parametrize("store", STORES)
async def test_items_the_store_refuses_are_not_counted(tmp_path: Path, store: str) -> None:
    """Items added to an unknown conversation (404) or past its 1 MiB bound (400) store nothing: they were counted
    all the same (before the store's own checks), so a key's budget was spent by its own refused requests."""
    half = "x" * 600_000
    async with apis(tmp_path, store, 1, answering("Noted."), budget=4 << 20) as (api,):
        status, made = await call(api, "POST", "/v1/conversations", {"items": [item(half)]})
        assert status == 200, made
        before = await stored_today(api)
        assert before > 600_000
        status, body = await call(api, "POST", f"/v1/conversations/conv_{'0' * 48}/items", {"items": [item(BIG)]})
        assert status == 404 and body["error"]["code"] == "conversation_not_found", body
        status, body = await call(api, "POST", f"/v1/conversations/{made['id']}/items", {"items": [item(half)]})
        assert status == 400 and body["error"]["param"] == "items", body
        assert await stored_today(api) == before
        status, body = await call(api, "POST", f"/v1/conversations/{made['id']}/items", {"items": [item(BIG)]})
        assert status == 200, body
        assert before + 7_000 < await stored_today(api) < before + 8_000  # what is stored is counted


def store_fails(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, times: int) -> None:
    """``target.name`` (a store's write) fails its next ``times`` calls, as a store that is down."""
    real, failed = getattr(target, name), []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        if len(failed) < times:
            failed.append(name)
            raise StoreUnavailable(f"redis: ConnectionError: {name} refused")
        return await real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)


@pytest.mark.parametrize("store", STORES)
async def test_writes_the_store_fails_give_their_count_back(tmp_path: Path, store: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation write, a background response and a stored response that the store fails (a 503, or the
    answer's ``store: false``) store nothing, and count nothing: their count is given back."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        assert api.ctx.conversations is not None and api.ctx.responses is not None
        status, made = await call(api, "POST", "/v1/conversations", {"items": [item("Hi")]})
        assert status == 200, made
        before = await stored_today(api)
        store_fails(monkeypatch, api.ctx.conversations, "append", 1)
        status, body = await call(api, "POST", f"/v1/conversations/{made['id']}/items", {"items": [item(BIG)]})
        assert status == 503 and body["error"]["code"] == "store_unavailable", body
        store_fails(monkeypatch, api.ctx.conversations, "create", 1)
        status, body = await call(api, "POST", "/v1/conversations", {"items": [item(BIG)]})
        assert status == 503, body
        store_fails(monkeypatch, api.ctx.responses, "put", 1)
        status, _, text = await post(api, {"model": "default", "input": BIG, "background": True},
                                     path="/v1/responses")
        assert status == 503 and '"store_unavailable"' in text, text
        store_fails(monkeypatch, api.ctx.responses, "put", 3)  # a stored response's write, asked three times
        answer = await openai_client(api).responses.create(model="default", input=BIG)
        assert answer.output_text == "Noted." and not stored(answer)
        assert await stored_today(api) == before


@pytest.mark.parametrize("store", STORES)
async def test_a_turn_written_again_after_a_store_failure_is_counted_once(tmp_path: Path, store: str,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversation's turn whose write the store failed twice, then took, was counted once per attempt: three
    times what it stores. It now counts as the same turn with no failure does."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        assert api.ctx.conversations is not None
        other, _ = await api.ctx.store.create_key(1000)
        counts = []
        for key, failures in ((api.key, 2), (other, 0)):
            client = openai_client(api, key)
            made = await client.conversations.create(items=[item("Hi")])
            before = await stored_today(api, key)
            store_fails(monkeypatch, api.ctx.conversations, "append", failures)
            answer = await client.responses.create(model="default", input=BIG, conversation=made.id, store=False)
            assert answer.output_text == "Noted."
            assert len((await client.conversations.items.list(made.id)).data) == 3  # written once
            counts.append(await stored_today(api, key) - before)
        assert 7_000 < counts[1] < 8_000 and abs(counts[0] - counts[1]) < 100, counts


def store_reads(api: ApiUnderTest) -> list[list[str]]:
    """What the API's key store is sent from now on: SQLite's statements (its trace callback), as the
    transactions they run in (a statement outside any: its own); Redis's commands, each its own list."""
    sent: list[list[str]] = []
    store: Any = api.ctx.store
    if hasattr(store, "db"):
        def traced(sql: str) -> None:
            if sql.startswith("BEGIN") or not sent or sent[-1][-1].startswith("COMMIT"):
                sent.append([])
            sent[-1].append(sql)
        store.db.set_trace_callback(traced)
        return sent
    send = store.redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append([" ".join(a.decode() if isinstance(a, bytes) else str(a) for a in args)])
        return await send(*args, **options)

    store.redis.execute_command = counting
    return sent


@pytest.mark.parametrize("store", STORES)
async def test_usage_reads_the_days_counts_and_stored_bytes_in_one_store_call(tmp_path: Path, store: str) -> None:
    """``GET /v1/usage`` read today's stored bytes with a second call after the usage report (a second SQLite query
    outside its snapshot, a second Redis round trip): one read now brings both, and the bytes are the same."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        await openai_client(api).responses.create(model="default", input="Hi")
        await api.ctx.usage.last_flush()
        record = (await api.ctx.store.list_keys())[0]
        sent = store_reads(api)
        status, usage = await call(api, "GET", "/v1/usage")
        assert status == 200, usage
        assert 500 < usage["stored_bytes_today"] < 5_000
        usage_name = api.ctx.store.key("usage", record.id) if store == "redis" else "usage_daily"
        reads = [calls for calls in sent if any(c.startswith(("SELECT", "HGET", "HMGET")) and usage_name in c
                                                for c in calls)]
        assert len(reads) == 1, reads  # one transaction (SQLite's snapshot), or one command


@pytest.mark.parametrize("store", STORES)
async def test_a_turn_stored_in_its_conversation_stays_when_its_count_fails(tmp_path: Path, store: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The key store failing to count a turn's bytes after the conversation store took the turn (the two are
    different calls, and a store may fail between them): the count was taken as the conversation write failing, so
    the stored turn was asked again, then withdrawn from the conversation and the answer was a 503. What was stored
    stays: the answer is the caller's, its turn is in the conversation, and a WARNING says it was not counted."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        client = openai_client(api)
        made = await client.conversations.create(items=[item("Hi")])
        store_fails(monkeypatch, api.ctx.store, "add_stored_bytes", 10)
        lines, sink = log_lines()
        try:
            answer = await client.responses.create(model="default", input="Hello", conversation=made.id, store=False)
        finally:
            logger.remove(sink)
        assert answer.output_text == "Noted."
        assert len((await client.conversations.items.list(made.id)).data) == 3, "the turn was withdrawn"
        assert any("not counted" in line and "WARNING" in line for line in lines), lines


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("how", ["failed by a reader", "cancelled"])
async def test_a_background_record_settled_by_another_than_its_worker_is_counted(tmp_path: Path, store: str,
                                                                                  how: str) -> None:
    """A background response's settled record is counted whoever writes it. Its worker's settle was; the ``failed``
    record a poll writes for a response its dead worker left pending past its deadline, and the ``cancelled`` one
    of a cancel, were stored a day uncounted."""
    async with apis(tmp_path, store, 1, answering("Noted.")) as (api,):
        client = openai_client(api)
        status, usage = await call(api, "GET", "/v1/usage")
        assert status == 200, usage
        key_id, before = usage["key_id"], usage["stored_bytes_today"]
        queued = {"id": "resp_left", "object": "response", "created_at": 1, "status": "in_progress",
                  "background": True, "model": "m", "output": [], "error": None}
        until = time.time() + (-1 if how == "failed by a reader" else 60)  # its worker died, or is answering it
        assert await api.ctx.responses.put(key_id, "resp_left", encode(queued, [], until=until), retention=60,
                                           pending=True)  # written (and counted) by its worker: not counted here
        if how == "cancelled":
            assert (await client.responses.cancel("resp_left")).status == "cancelled"
        else:
            assert (await client.responses.retrieve("resp_left")).status == "failed"
        found = await api.ctx.responses.get(key_id, "resp_left")
        assert found is not None and found.response["status"] == ("cancelled" if how == "cancelled" else "failed")
        status, usage = await call(api, "GET", "/v1/usage")
        assert usage["stored_bytes_today"] - before == len(found.again(found.response).encode()), usage
