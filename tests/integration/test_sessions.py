"""Sticky model sessions through the real API app and real HTTP miners."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from api.app import create_api_app
from shared.store.base import StoreUnavailable
from shared.store.sessions import RedisSessionStore, SQLiteSessionStore
from tests.helpers import ApiUnderTest, Script, api_with_miners, build_api_context, chunk, serve_app, sse
from tests.store.conftest import drop_keys
from tests.store.conftest import redis_url as store_redis_url

MESSAGES = [{"role": "user", "content": "hello"}]


def answer(text: str) -> Script:
    return Script([(0, d) for d in sse(chunk(text), chunk(finish="stop"))])


def miners(n: int = 4) -> dict[int, Script]:
    return {uid: answer(f"from {uid}") for uid in range(1, n + 1)}


async def call(api, method: str, path: str, *, key: str | None = None, **kw) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, api.url + path, headers={"Authorization": f"Bearer {key or api.key}"}, **kw) as r:
            return r.status, dict(r.headers), await r.json()


async def chat(api, **extra) -> tuple[int, dict, dict]:
    return await call(api, "POST", "/v1/chat/completions", json={"messages": MESSAGES, **extra})


async def test_requests_in_a_session_stick_to_one_miner(tmp_path: Path) -> None:
    scripts = miners()
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "session_duration": 600})
        assert status == 200 and set(s) >= {"session_id", "model", "uid", "expires_at", "failover"}
        for stream in (False, True, False):
            status, headers, _ = await call(api, "POST", "/v1/chat/completions",
                                            json={"messages": MESSAGES, "stream": stream}) if not stream else \
                (await _stream_chat(api))
            assert status == 200
            assert headers["x-sn1-miner-uid"] == str(s["uid"])
            assert headers["x-sn1-session-id"] == s["session_id"]
    assert sum(sc.calls for uid, sc in scripts.items() if uid != s["uid"]) == 0, "no race while in a session"


async def _stream_chat(api) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES, "stream": True},
                          headers={"api-key": api.key}) as r:
            await r.read()
            return r.status, dict(r.headers), {}


async def test_new_session_replaces_old_and_delete_ends_it(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, miners()) as api:
        _, _, first = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        _, _, second = await call(api, "POST", "/v1/sessions", json={"model": "default", "sessionDuration": 120,
                                                                      "failover": True, "directPayment": False})
        status, _, current = await call(api, "GET", "/v1/sessions")
        assert status == 200 and current["session_id"] == second["session_id"] and current["failover"] is True
        status, _, err = await chat(api, session_id=first["session_id"])
        assert status == 404 and err["error"]["code"] == "session_not_found"
        status, _, _ = await call(api, "DELETE", f"/v1/sessions/{second['session_id']}")
        assert status == 200
        status, _, _ = await call(api, "GET", "/v1/sessions")
        assert status == 404


async def test_deleting_a_key_closes_its_session(tmp_path: Path) -> None:
    """A deleted key's session was kept (and read by every sweep) until it expired, up to a week: 50 keys
    made, each opening a session, and deleted left 50 sessions behind."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        for _ in range(50):
            secret, _ = await api.ctx.store.create_key(1000)
            assert (await call(api, "POST", "/v1/sessions", key=secret, json={"model": "default"}))[0] == 200
            async with aiohttp.ClientSession() as s, s.delete(f"{api.url}/api_management/delete-api-key/{secret}",
                                                              headers={"admin-key": "admin-secret-for-tests"}) as r:
                assert r.status == 200, await r.text()
        assert await api.ctx.sessions.active() == []

async def test_session_expires(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, miners(2)) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "session_duration": 1})
        assert (await call(api, "GET", "/v1/sessions"))[0] == 200
        await asyncio.sleep(1.2)
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404
        status, headers, _ = await chat(api)
        assert status == 200 and "x-sn1-session-id" not in headers


@pytest.mark.parametrize("failover", [False, True])
async def test_ping_on_dead_miner_closes_or_moves(tmp_path: Path, failover: bool) -> None:
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": failover})
        status, _, pong = await call(api, "POST", f"/v1/sessions/{s['session_id']}/ping")
        assert status == 200 and pong["status"] == "ok"
        scripts[s["uid"]].status = 500  # the pinned miner dies
        status, _, pong = await call(api, "POST", f"/v1/sessions/{s['session_id']}/ping")
        assert status == 200 and pong["previous_uid"] == s["uid"]
        status, _, current = await call(api, "GET", "/v1/sessions")
        if failover:
            assert pong["status"] == "moved" and pong["uid"] != s["uid"]
            assert status == 200 and current["uid"] == pong["uid"]
        else:
            assert pong["status"] == "closed" and status == 404


async def test_a_pings_request_id_is_the_one_its_answer_names(tmp_path: Path) -> None:
    """A ping sent without an ``x-request-id`` asked its miner under one new id and answered (and logged) under
    another, so its answer's id found nothing in the miner's log; a caller's own id was the same for both."""
    from multidict import CIMultiDict

    scripts = miners(1)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        for sent in ({}, {"x-request-id": "ping-7"}):
            async with aiohttp.ClientSession() as http, http.post(
                    f"{api.url}/v1/sessions/{s['session_id']}/ping",
                    headers={"Authorization": f"Bearer {api.key}", **sent}) as r:
                assert r.status == 200 and (await r.json())["status"] == "ok"
                answered = r.headers["x-request-id"]
            assert CIMultiDict(scripts[1].headers[-1])["x-request-id"] == answered == sent.get("x-request-id", answered)


@pytest.mark.parametrize("failover", [False, True])
async def test_failover_mid_request(tmp_path: Path, failover: bool) -> None:
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": failover})
        scripts[s["uid"]].status = 500
        status, headers, body = await chat(api)
        if failover:
            assert status == 200
            assert headers["x-sn1-miner-uid"] != str(s["uid"])
            assert headers["x-sn1-session-moved-from"] == str(s["uid"])
            assert body["choices"][0]["message"]["content"] == f"from {headers['x-sn1-miner-uid']}"
            _, _, current = await call(api, "GET", "/v1/sessions")
            assert current["uid"] == int(headers["x-sn1-miner-uid"])
        else:
            assert status == 502 and body["error"]["code"] == "session_miner_failed"
            assert s["session_id"] in body["error"]["message"]
            assert f"/v1/sessions/{s['session_id']}/ping" in body["error"]["message"]  # what to do about it


async def test_a_failover_whose_new_miner_fails_too_names_the_session_and_both_miners(tmp_path: Path) -> None:
    """It was the plain race's 502 (``no_valid_answer``, one miner's error) with nothing of the session in it
    but a header: the caller could not tell its session had moved, nor where."""
    scripts = {1: Script([], status=500), 2: Script([], status=500)}
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        status, headers, body = await chat(api)
        moved_to = 3 - s["uid"]
        assert status == 502 and body["error"]["code"] == "session_miner_failed", body
        message = body["error"]["message"]
        assert s["session_id"] in message and f"uid {s['uid']} failed" in message, message
        assert f"moved to uid {moved_to}, which failed too" in message, message
        assert headers["x-sn1-session-moved-from"] == str(s["uid"])
        _, _, current = await call(api, "GET", "/v1/sessions")
        assert current["uid"] == moved_to


async def test_other_keys_session_is_refused_and_bad_bodies_are_400(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, miners(2)) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        other, _ = await api.ctx.store.create_key(100)
        for method, path in (("DELETE", f"/v1/sessions/{s['session_id']}"),
                             ("POST", f"/v1/sessions/{s['session_id']}/ping")):
            status, _, err = await call(api, method, path, key=other)
            assert status == 404 and err["error"]["code"] == "session_not_found"
        async with aiohttp.ClientSession() as sess:
            async with sess.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES},
                                 headers={"api-key": other, "x-session-id": s["session_id"]}) as r:
                assert r.status == 404
            async with sess.post(api.url + "/v1/chat/completions", json={"messages": MESSAGES},
                                 headers={"api-key": api.key, "x-session-id": "s" * 5000}) as r:
                err = await r.json()
                assert r.status == 400 and err["error"]["param"] == "x-session-id", "as session_id is"
                assert len(err["error"]["message"]) < 200, "a caller's 5,000 characters are not echoed back"
        for bad in ({}, {"model": ""}, {"model": 5}, {"model": "default", "session_duration": "long"},
                    {"model": "default", "session_duration": 0}, {"model": "default", "failover": "maybe"},
                    {"model": "default", "surprise": 1}, []):
            status, _, err = await call(api, "POST", "/v1/sessions", json=bad)
            assert status == 400 and set(err["error"]) == {"message", "type", "code", "param"}, bad
        import time

        from api.availability import AvailabilityCache

        cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "hk")
        cache.entries = {uid: {"task_availabilities": {"InferenceTask": True},
                               "llm_model_availabilities": {"m1": True}} for uid in (1, 2)}
        cache.refreshed_at = time.monotonic()
        api.ctx.availability = cache
        status, _, err = await call(api, "POST", "/v1/sessions", json={"model": "no/such-model"})
        assert status == 404 and err["error"]["code"] == "model_not_found"
        status, _, ok = await call(api, "POST", "/v1/sessions", json={"model": "m1"})
        assert status == 200 and ok["model"] == "m1"


async def test_deregistered_miner_ends_its_sessions_at_refresh(tmp_path: Path) -> None:
    from api.sessions import sweep
    from shared.metagraph import MetagraphSnapshot, Neuron

    async with api_with_miners(tmp_path, miners(3)) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        snap = api.ctx.metagraph.snapshot
        neurons = tuple(Neuron(n.uid, "new-hotkey" if n.uid == s["uid"] else n.hotkey, n.coldkey, n.axon)
                        for n in snap.neurons)
        api.ctx.metagraph.snapshot = MetagraphSnapshot(snap.netuid, snap.block + 1, neurons)
        assert await sweep(api.ctx) == 1
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_sessions_are_visible_across_api_processes_sharing_a_store(tmp_path: Path, backend: str) -> None:
    async with two_apis_sharing_sessions(tmp_path, backend, miners(3)) as (api, url2):
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        async with aiohttp.ClientSession() as sess:
            async with sess.get(url2 + "/v1/sessions", headers={"api-key": api.key}) as r:
                assert r.status == 200 and (await r.json())["session_id"] == s["session_id"]
            async with sess.post(url2 + "/v1/chat/completions", json={"messages": MESSAGES},
                                 headers={"api-key": api.key}) as r:
                assert r.status == 200 and r.headers["x-sn1-miner-uid"] == str(s["uid"])


async def test_a_refused_request_does_not_move_the_session(tmp_path: Path) -> None:
    """The pinned miner's model server refused the request itself: any miner would, so it is the
    caller's 400 and the session stays where it is."""
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        pinned = scripts[s["uid"]]
        pinned.status, pinned.error_code = 400, "model_server_rejected"
        status, _, body = await chat(api)
        assert status == 400 and body["error"]["code"] == "model_server_rejected"
        _, _, current = await call(api, "GET", "/v1/sessions")
        assert current["uid"] == s["uid"]
        assert sum(sc.calls for uid, sc in scripts.items() if uid != s["uid"]) == 0


async def test_a_session_pins_its_own_model_and_a_request_for_another_races(tmp_path: Path) -> None:
    """The key's session pins the requests for its model; one naming another model is raced as usual (the
    pinned miner may not serve it: it was a 404 from the miner, or a failover away from a good miner)."""
    async with api_with_miners(tmp_path, miners()) as api:
        status, _, s = await call(api, "POST", "/v1/sessions", json={"model": "model-a"})
        assert status == 200, s
        for model, pinned in (("model-a", True), ("default", True), ("model-b", False)):
            status, headers, body = await chat(api, model=model)
            assert status == 200, body
            assert ("x-sn1-session-id" in headers) == pinned, model
        status, _, body = await chat(api, model="model-b", session_id=s["session_id"])
        assert status == 400 and body["error"]["code"] == "session_model_mismatch", body
        assert body["error"]["param"] == "model" and "model-a" in body["error"]["message"]
        # n > 1 with a session named in the header is refused as with session_id in the body (it was ignored)
        async with aiohttp.ClientSession() as http, http.post(
                api.url + "/v1/chat/completions", json={"messages": MESSAGES, "n": 2},
                headers={"api-key": api.key, "x-session-id": s["session_id"]}) as r:
            status, body = r.status, await r.json()
        assert status == 400 and body["error"]["param"] == "n" and "session" in body["error"]["message"], body
        # the pinned miner is told the session's model when the request names none (it may serve several)
        _, _, sess = await call(api, "GET", "/v1/sessions")
        pinned_bodies = _bodies_of(api, sess["uid"])
        assert [b["model"] for b in pinned_bodies[-3:]] == ["model-a", "model-a", "model-b"], "the 'default' request ran for the session's model"
        # /v1/completions takes no session: named in the header it is a 400 as in the body, not ignored
        async with aiohttp.ClientSession() as http, http.post(
                api.url + "/v1/completions", json={"prompt": "hi"},
                headers={"api-key": api.key, "x-session-id": s["session_id"]}) as r:
            status, body = r.status, await r.json()
        assert status == 400 and body["error"]["param"] == "x-session-id", body


def _bodies_of(api, uid: int) -> list[dict]:
    return api.scripts[uid].bodies


async def _store_down(*_args, **_kwargs):
    raise StoreUnavailable("sqlite sessions: database is locked")


async def test_a_session_store_outage_is_a_503_on_every_session_path(tmp_path: Path) -> None:
    """A store that cannot write (SQLite locked, Redis away) gave bare 500s on delete, ping and a chat
    whose pinned miner failed over."""
    scripts = {1: Script([], status=500), 2: answer("two")}
    async with api_with_miners(tmp_path, scripts, incentives={1: 1.0, 2: 0.0}) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        store = api.ctx.sessions
        await store.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)  # pinned to the broken one
        store.close = store.repin = _store_down  # writes fail from now on
        for method, path, sent in (("DELETE", f"/v1/sessions/{s['session_id']}", None),
                                   ("POST", f"/v1/sessions/{s['session_id']}/ping", None),
                                   ("POST", "/v1/chat/completions", {"messages": MESSAGES})):
            status, headers, body = await call(api, method, path, json=sent)
            assert status == 503 and body["error"]["code"] == "store_unavailable", (method, path, body)
            assert headers.get("Retry-After") == "1", (method, path, headers)  # as the key store's 503 says


async def test_a_failover_with_no_time_left_is_a_504_that_says_where_the_session_went(tmp_path: Path) -> None:
    """The pinned miner used the whole deadline: the session moved, but the caller got a 502 'failed'
    without the moved-from header, and learnt of the move only from GET /v1/sessions."""
    slow = Script([(3, d) for d in sse(chunk("late"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: slow, 2: answer("two")}, incentives={1: 1.0, 2: 0.0},
                               request_timeout=1.0) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        status, headers, body = await chat(api)
        assert status == 504 and body["error"]["code"] == "deadline_exceeded", body
        assert headers["x-sn1-session-moved-from"] == "1" and "now pins uid 2" in body["error"]["message"]
        assert (await call(api, "GET", "/v1/sessions"))[2]["uid"] == 2


async def test_a_ping_whose_caller_left_stops_its_miner_request(tmp_path: Path) -> None:
    slow = Script([(5, d) for d in sse(chunk("late"), chunk(finish="stop"))])
    async with api_with_miners(tmp_path, {1: slow}) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        with pytest.raises(asyncio.TimeoutError):
            await call(api, "POST", f"/v1/sessions/{s['session_id']}/ping", timeout=aiohttp.ClientTimeout(total=0.5))
        for _ in range(100):  # the miner request is cancelled within a second, not after PING_TIMEOUT
            if slow.active == 0:
                break
            await asyncio.sleep(0.02)
        assert slow.active == 0


async def test_a_key_limited_to_some_models_cannot_pin_any_model(tmp_path: Path) -> None:
    """Its chat for 'default' is a 403; opening a session for 'default' was a 200."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        secret, _ = await api.ctx.store.create_key(100, allowed_models=["sn1/deterministic"])
        status, _, body = await call(api, "POST", "/v1/sessions", key=secret, json={"model": "default"})
        assert status == 403 and body["error"]["code"] == "model_not_allowed", body


async def test_sessions_on_a_subnet_without_incentives_spread_over_the_miners(tmp_path: Path) -> None:
    """Every incentive 0 (a new subnet, a local one): selection's weights underflowed and every session of
    every key pinned the lowest uid."""
    async with api_with_miners(tmp_path, miners(4)) as api:
        pinned = set()
        for _ in range(40):
            status, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
            assert status == 200, s
            pinned.add(s["uid"])
    assert len(pinned) >= 3, f"40 sessions over 4 equal miners pinned only {pinned}"


async def test_a_session_body_of_the_wrong_types_is_a_400_not_a_coerced_session(tmp_path: Path) -> None:
    """The body was validated in pydantic's lax mode: ``"session_duration": true`` opened a session that
    ended a second later, and strings or numbers passed for ``failover``."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        for field, value in (("session_duration", True), ("session_duration", "600"), ("sessionDuration", "60"),
                             ("failover", "yes"), ("failover", 1), ("directPayment", "false")):
            status, _, err = await call(api, "POST", "/v1/sessions", json={"model": "default", field: value})
            assert status == 400 and err["error"]["code"] == "invalid_value", (field, value, err)
            assert err["error"]["param"] == field, err
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404, "no session was opened"
        status, _, ok = await call(api, "POST", "/v1/sessions",
                                   json={"model": "default", "sessionDuration": 60, "failover": False})
        assert status == 200 and ok["expires_at"] - ok["created_at"] == 60 and ok["failover"] is False


@contextlib.asynccontextmanager
async def two_apis_sharing_sessions(tmp_path: Path, backend: str, scripts: dict[int, Script],
                                    **kw) -> AsyncIterator[tuple[ApiUnderTest, str]]:
    """The API twice (one key store, one session store: SQLite file or Redis), as two workers or hosts."""
    redis_url = os.environ.get("REDIS_URL")
    if backend == "redis" and not redis_url:
        pytest.skip("needs REDIS_URL (CI sets it; .ci/run)")
    namespace = f"test-{uuid.uuid4().hex[:8]}"

    def session_store():
        if backend == "redis":
            return RedisSessionStore.from_url(redis_url, namespace=namespace)
        return SQLiteSessionStore(tmp_path / "api.db")

    async with api_with_miners(tmp_path, scripts, **kw) as api, contextlib.AsyncExitStack() as stack:
        await api.ctx.sessions.aclose()
        api.ctx.sessions = session_store()
        stack.push_async_callback(api.ctx.sessions.aclose)
        if backend == "redis":
            stack.push_async_callback(_drop_namespace, api.ctx.sessions.r, namespace)
        ctx2 = await build_api_context(tmp_path, api.ctx.metagraph.snapshot, api.ctx.client.signer._keypair)
        stack.push_async_callback(ctx2.client.session.close)
        ctx2.sessions = session_store()
        stack.push_async_callback(ctx2.sessions.aclose)
        yield api, await stack.enter_async_context(serve_app(create_api_app(ctx2, run_background=False)))


async def _drop_namespace(r, namespace: str) -> None:
    keys = [k async for k in r.scan_iter(match=f"{namespace}:*")]
    if keys:
        await r.delete(*keys)


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
async def test_concurrent_requests_whose_pinned_miner_fails_move_the_session_once(tmp_path: Path,
                                                                                 backend: str) -> None:
    """Six turns of one conversation in flight on two workers when the pinned miner fails: each worker's
    failover re-pinned the session again, so the turns were answered by up to five miners and the
    session ended on yet another. Now the first move wins and every turn goes where it put the session."""
    scripts = miners(6)
    async with two_apis_sharing_sessions(tmp_path, backend, scripts, incentives=dict.fromkeys(scripts, 1.0)) as (
            api, url2):
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        scripts[s["uid"]].steps, scripts[s["uid"]].die = [(0.3, b"")], True  # fails, no byte, once all are in

        async def turn(url: str) -> tuple[int, str]:
            async with aiohttp.ClientSession() as http, http.post(
                    url + "/v1/chat/completions", json={"messages": MESSAGES}, headers={"api-key": api.key}) as r:
                await r.read()
                assert r.headers.get("x-sn1-session-moved-from") == str(s["uid"]), dict(r.headers)
                return r.status, r.headers["x-sn1-miner-uid"]

        answers = await asyncio.gather(*(turn(url) for url in (api.url, url2) * 3))
        _, _, now = await call(api, "GET", "/v1/sessions")
    assert {status for status, _ in answers} == {200}
    assert {uid for _, uid in answers} == {str(now["uid"])}, f"session ends on {now['uid']}; turns: {answers}"
    assert scripts[s["uid"]].calls == 6


def _fresh_cache(api, serves: dict[int, tuple[str, ...]]):
    """A fresh availability cache: uid -> the models it serves (for InferenceTask)."""
    import time

    from api.availability import AvailabilityCache

    cache = AvailabilityCache(api.ctx.client, "http://127.0.0.1:9", "hk")
    cache.entries = {uid: {"task_availabilities": {"InferenceTask": True},
                           "llm_model_availabilities": dict.fromkeys(models, True)} for uid, models in serves.items()}
    cache.refreshed_at = time.monotonic()
    api.ctx.availability = cache
    return cache


@pytest.mark.parametrize("failover", [False, True])
async def test_a_pinned_miner_that_stops_serving_the_model_gets_no_more_of_its_requests(tmp_path: Path,
                                                                                       failover: bool) -> None:
    """Availability said the pinned miner no longer served the session's model, yet every request went on
    to it until the next sweep (up to a refresh interval; never, on a worker without the sweep)."""
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _fresh_cache(api, {1: ("m1",), 2: ("m1",), 3: ("m2",)})
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "m1", "failover": failover})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        _fresh_cache(api, {1: ("m2",), 2: ("m1",), 3: ("m2",)})  # uid 1 now serves another model
        status, headers, body = await chat(api)
        assert scripts[1].calls == 0, "the miner that no longer serves m1 was asked"
        if failover:
            assert status == 200 and headers["x-sn1-miner-uid"] == "2", body
            assert headers["x-sn1-session-moved-from"] == "1"
            assert (await call(api, "GET", "/v1/sessions"))[2]["uid"] == 2
        else:
            assert status == 502 and body["error"]["code"] == "session_miner_failed", body
            assert s["session_id"] in body["error"]["message"] and "closed" in body["error"]["message"]
            assert (await call(api, "GET", "/v1/sessions"))[0] == 404


async def test_a_replacement_that_fails_too_is_not_asked_again_nor_blamed_on_the_first_miner(tmp_path: Path) -> None:
    """The pinned miner left the metagraph, so the request moved the session to uid 2; uid 2 failed, and the
    failover worked from the session as first read (pinned to uid 1): it excluded uid 1, re-pinned uid 2,
    asked it a second time and answered 502 'the pinned miner uid 1 failed'."""
    from shared.metagraph import MetagraphSnapshot

    scripts = {1: answer("from 1"), 2: Script([], status=500), 3: answer("from 3")}
    async with api_with_miners(tmp_path, scripts) as api:
        _fresh_cache(api, {1: ("m1",), 2: ("m1",), 3: ("m2",)})
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "m1", "failover": True})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        snap = api.ctx.metagraph.snapshot
        api.ctx.metagraph.snapshot = MetagraphSnapshot(snap.netuid, snap.block + 1, tuple(
            n for n in snap.neurons if n.uid != 1))  # uid 1 left the metagraph
        status, headers, body = await chat(api)
        assert status == 502 and body["error"]["code"] == "session_miner_failed", body
        assert "uid 2 failed" in body["error"]["message"] and "closed" in body["error"]["message"], body
        assert scripts[2].calls == 1 and scripts[1].calls == 0
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404


@pytest.mark.parametrize("failover", [False, True])
async def test_a_ping_does_not_say_ok_for_a_miner_that_stopped_serving_the_model(tmp_path: Path,
                                                                                 failover: bool) -> None:
    """The ping asked the pinned miner, which answered, and said "ok"; the next chat request then moved
    (or closed) the session, as availability said the miner no longer served its model."""
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _fresh_cache(api, {1: ("m1",), 2: ("m1",), 3: ("m2",)})
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "m1", "failover": failover})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        _fresh_cache(api, {1: ("m2",), 2: ("m1",), 3: ("m2",)})
        status, _, pong = await call(api, "POST", f"/v1/sessions/{s['session_id']}/ping")
        assert status == 200 and pong["previous_uid"] == 1 and "no longer serves" in pong["error"], pong
        assert pong["status"] == ("moved" if failover else "closed") and pong.get("uid") == (2 if failover else None)
        assert scripts[1].calls == 0


async def test_a_reference_api_client_opens_a_session_with_its_own_call(tmp_path: Path) -> None:
    """The reference sessions API's call: ``POST ...?model_id=<model>`` with a camelCase body. Its required
    ``model_id`` was refused (a 400 asking for 'model'), in the query and in the body."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        status, _, s = await call(api, "POST", "/v1/sessions?model_id=default",
                                  json={"sessionDuration": 120, "directPayment": False, "failover": False})
        assert status == 200 and s["model"] == "default" and s["expires_at"] - s["created_at"] == 120, s
        status, _, s = await call(api, "POST", "/v1/sessions", json={"model_id": "default", "failover": True})
        assert status == 200 and s["failover"] is True, s
        status, _, err = await call(api, "POST", "/v1/sessions", json={"sessionDuration": 60})
        assert status == 400 and err["error"]["param"] == "model", err  # neither: the field it needs


@pytest.mark.parametrize("alive", [1, 0], ids=["one replacement answers", "none does"])
async def test_a_ping_moves_a_session_only_to_a_miner_that_answers_it(tmp_path: Path, alive: int) -> None:
    """A ping that moved a session said "moved" for a replacement as dead as the first (the next chat failed
    over again): each replacement is pinged in turn, and after two that fail the session is closed."""
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default", "failover": True})
        others = [uid for uid in scripts if uid != s["uid"]]
        for uid in [s["uid"], *others[alive:]]:  # the pinned miner dies, and all but ``alive`` of the others
            scripts[uid].status = 500
        status, _, pong = await call(api, "POST", f"/v1/sessions/{s['session_id']}/ping")
        assert status == 200 and pong["previous_uid"] == s["uid"]
        status, _, current = await call(api, "GET", "/v1/sessions")
    if alive:
        assert pong["status"] == "moved" and pong["uid"] == others[0] and status == 200
        assert current["uid"] == others[0]
        assert set(pong.get("failed_replacements", [])) <= set(others[1:])
    else:
        assert pong["status"] == "closed" and "uid" not in pong and status == 404
        assert len(pong["failed_replacements"]) == 2 and set(pong["failed_replacements"]) <= set(others)


def not_serving(script: Script) -> None:
    """The miner answers as one whose model server does not serve the model asked for: its 404 model_not_found."""
    script.status, script.error_code = 404, "model_not_found"


@pytest.mark.parametrize("stream", [False, True], ids=["object", "streamed"])
@pytest.mark.parametrize("failover", [False, True])
async def test_a_session_for_a_model_no_miner_serves_is_openais_404_and_is_closed(tmp_path: Path, failover: bool,
                                                                                  stream: bool) -> None:
    """Opened while availability was unknown, a session for a model no miner serves pinned one that answered 404
    model_not_found: every chat of the key was a 502 session_miner_failed (with failover, moved back and forth
    between two such miners) until the session was pinged or expired."""
    scripts = miners(3)
    for script in scripts.values():
        not_serving(script)
    async with api_with_miners(tmp_path, scripts) as api:
        status, _, s = await call(api, "POST", "/v1/sessions", json={"model": "no/such-model", "failover": failover})
        assert status == 200, s  # nothing says otherwise yet: no fresh availability
        status, headers, body = await chat(api, stream=stream)
        assert status == 404, body
        assert body["error"] == {"message": "The model `no/such-model` does not exist or you do not have access to it.",
                                 "type": "invalid_request_error", "code": "model_not_found", "param": "model"}
        assert headers["x-sn1-session-id"] == s["session_id"]
        assert sum(sc.calls for sc in scripts.values()) == (2 if failover else 1)  # with failover, one replacement
        assert headers.get("x-sn1-session-moved-from") == (str(s["uid"]) if failover else None)
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404, "the session was closed"
        status, headers, body = await chat(api, model="no/such-model")
        assert status == 404 and body["error"]["code"] == "model_not_found", body
        assert "x-sn1-session-id" not in headers, "the key's next request is not pinned"


@pytest.mark.parametrize("failover", [False, True])
async def test_a_pinned_miner_that_says_it_does_not_serve_the_model(tmp_path: Path, failover: bool) -> None:
    """The pinned miner answers 404 model_not_found (it stopped serving the model before availability said so).
    With failover the request goes to a miner that serves it and the session moves there, as for any miner that
    fails before its first byte; without, the caller gets OpenAI's 404 (it was a 502) and the session is closed,
    so the key's next request is raced as any, and answered."""
    scripts = miners(3)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "m1", "failover": failover})
        not_serving(scripts[s["uid"]])
        status, headers, body = await chat(api)
        if failover:
            assert status == 200 and headers["x-sn1-session-moved-from"] == str(s["uid"]), body
            assert body["choices"][0]["message"]["content"] == f"from {headers['x-sn1-miner-uid']}"
            assert (await call(api, "GET", "/v1/sessions"))[2]["uid"] == int(headers["x-sn1-miner-uid"])
            return
        assert (status, body["error"]["code"], body["error"]["param"]) == (404, "model_not_found", "model"), body
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404
        status, headers, body = await chat(api, model="m1")
        assert status == 200 and "x-sn1-session-id" not in headers and headers["x-sn1-miner-uid"] != str(s["uid"])


async def test_opening_a_session_while_no_miner_is_up_is_chats_503_not_a_404(tmp_path: Path) -> None:
    """Every refusal of selection was a 404 model_not_found here: with every miner down at the validator's last
    poll (or none registered), a caller was told its model does not exist, where chat says no miner is up."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        cache = _fresh_cache(api, {1: ("m1",), 2: ("m1",)})
        cache.entries = dict.fromkeys(cache.entries)  # both down at the last poll
        for model in ("m1", "default"):
            status, _, body = await call(api, "POST", "/v1/sessions", json={"model": model})
            assert (status, body["error"]["code"]) == (503, "no_miners_available"), body
            assert (await chat(api, model=model))[2]["error"]["code"] == "no_miners_available"  # as chat says
    async with api_with_miners(tmp_path / "none", {}) as api:
        status, _, body = await call(api, "POST", "/v1/sessions", json={"model": "m1"})
        assert (status, body["error"]["code"]) == (503, "no_miners_available"), body


@pytest.mark.parametrize("store", ["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_session_opened_as_its_key_is_deleted_is_a_401_and_kept_nowhere(
        tmp_path: Path, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``POST /v1/sessions`` of a key an admin deleted after the request's key check (the delete closed the
    key's session, then this one opened): the session was kept to its end, up to a week, pinned for no key, and
    the caller got its id. It is the 401 of a deleted key now, as the same request sent a moment later, and
    nothing is kept."""
    namespace = f"test-session-deleted-{secrets.token_hex(6)}" if store == "redis" else None
    if namespace is not None:
        store_redis_url()  # skipped without a Redis
    try:
        async with api_with_miners(tmp_path, miners(2), redis_namespace=namespace) as api:
            secret, _ = await api.ctx.store.create_key(1000)
            real_open = api.ctx.sessions.open

            async def open_after_the_delete(*args: Any, **kwargs: Any) -> Any:  # the key checked, then deleted
                async with aiohttp.ClientSession() as s, s.delete(
                        f"{api.url}/api_management/delete-api-key/{secret}",
                        headers={"admin-key": "admin-secret-for-tests"}) as r:
                    assert r.status == 200, await r.text()
                return await real_open(*args, **kwargs)

            monkeypatch.setattr(api.ctx.sessions, "open", open_after_the_delete)
            status, _, body = await call(api, "POST", "/v1/sessions", key=secret, json={"model": "default"})
            assert status == 401 and body["error"]["code"] == "invalid_api_key", body
            assert await api.ctx.sessions.active() == []
    finally:
        if namespace is not None:
            redis = aioredis.from_url(store_redis_url())
            await drop_keys(redis, namespace)
            await redis.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("ending", ["replaced", "deleted", "expired"])
async def test_a_failover_request_whose_session_ended_as_it_ran_is_still_failed_over(tmp_path: Path, backend: str,
                                                                                    ending: str) -> None:
    """A request with ``failover`` in flight when its session ended (the key opened a new one, or deleted it, on
    another host; or it expired), and then its pinned miner failed: it was a 502 "the session was closed",
    though two other miners served the model. It is answered by one of them now, and nothing is pinned to it:
    the key's new session stays where it was opened."""
    scripts = miners(3)
    async with two_apis_sharing_sessions(tmp_path, backend, scripts) as (api, url2):
        other_host = ApiUnderTest(url=url2, key=api.key, ctx=None, scripts=scripts)
        _, _, s = await call(api, "POST", "/v1/sessions", json={
            "model": "default", "failover": True, "session_duration": 1 if ending == "expired" else 600})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        scripts[1].steps, scripts[1].die = [(1.3, b"")], True  # fails, no byte, once the session has ended
        turn = asyncio.create_task(chat(api))
        await asyncio.sleep(0.3)
        new = None
        if ending == "replaced":
            status, _, new = await call(other_host, "POST", "/v1/sessions", json={"model": "default", "failover": True})
            assert status == 200, new
        elif ending == "deleted":
            assert (await call(other_host, "DELETE", f"/v1/sessions/{s['session_id']}"))[0] == 200
        status, headers, body = await turn
        assert status == 200, body
        assert headers["x-sn1-miner-uid"] in ("2", "3") and headers["x-sn1-session-id"] == s["session_id"]
        assert body["choices"][0]["message"]["content"] == f"from {headers['x-sn1-miner-uid']}"
        assert "x-sn1-session-moved-from" not in headers, "nothing was moved: the session had ended"
        status, _, current = await call(other_host, "GET", "/v1/sessions")
        assert (status, current) == (200, new) if new else status == 404, current


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
@pytest.mark.parametrize("ending", ["replaced", "deleted", "expired", "kept"])
async def test_a_502_without_failover_says_whether_the_session_still_pins_the_miner(tmp_path: Path, backend: str,
                                                                                    ending: str) -> None:
    """A request without ``failover`` whose pinned miner failed after its session ended as it ran (the key opened
    a new one or deleted it on another host, or it expired): the 502 still said "The session still pins it: ping
    it (POST /v1/sessions/.../ping)", and that ping was a 404. It says the session has ended now; a session that
    did not end still pins the miner, and the ping the 502 advises closes it."""
    scripts = miners(3)
    async with two_apis_sharing_sessions(tmp_path, backend, scripts) as (api, url2):
        other_host = ApiUnderTest(url=url2, key=api.key, ctx=None, scripts=scripts)
        _, _, s = await call(api, "POST", "/v1/sessions", json={
            "model": "default", "session_duration": 1 if ending == "expired" else 600})
        await api.ctx.sessions.repin(s["session_id"], 1, api.ctx.metagraph.snapshot.by_uid(1).hotkey)
        scripts[1].steps, scripts[1].die = [(1.3, b"")], True  # fails, no byte, once the session has ended
        turn = asyncio.create_task(chat(api))
        await asyncio.sleep(0.3)
        if ending == "replaced":
            assert (await call(other_host, "POST", "/v1/sessions", json={"model": "default"}))[0] == 200
        elif ending == "deleted":
            assert (await call(other_host, "DELETE", f"/v1/sessions/{s['session_id']}"))[0] == 200
        status, headers, body = await turn
        message = body["error"]["message"]
        assert (status, body["error"]["code"]) == (502, "session_miner_failed"), body
        assert headers["x-sn1-session-id"] == s["session_id"] and "uid 1 failed" in message, message
        ping_status, _, pong = await call(other_host, "POST", f"/v1/sessions/{s['session_id']}/ping")
        if ending == "kept":
            assert "The session still pins it: ping it" in message, message
            assert (ping_status, pong["status"]) == (200, "closed"), pong
        else:
            assert "still pins" not in message and "The session has ended meanwhile" in message, message
            assert (ping_status, pong["error"]["code"]) == (404, "session_not_found"), pong


async def test_n_choices_bypass_the_keys_session_and_say_so(tmp_path: Path) -> None:
    """``n`` > 1 with the key's active session (not named): the session pins one miner and n answers are n races,
    so the request is raced, as one naming ``uids`` is; the caller was not told that its session was skipped.
    The answer's ``x-sn1-session-bypassed`` names it now, and the session stays where it was. A session named
    with ``n`` is a 400, as before; a request with no session, or for another model than the session's, has no
    such header."""
    scripts = miners(4)
    async with api_with_miners(tmp_path, scripts) as api:
        status, headers, _ = await chat(api, n=2)
        assert status == 200 and "x-sn1-session-bypassed" not in headers, "no session, nothing bypassed"
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        for stream in (False, True):
            async with aiohttp.ClientSession() as http, http.post(
                    api.url + "/v1/chat/completions", json={"messages": MESSAGES, "n": 2, "stream": stream},
                    headers={"api-key": api.key}) as r:
                await r.read()
                assert r.status == 200 and r.headers["x-sn1-session-bypassed"] == s["session_id"], dict(r.headers)
                assert "x-sn1-session-id" not in r.headers and len(r.headers["x-sn1-miner-uid"].split(",")) == 2
        status, _, current = await call(api, "GET", "/v1/sessions")
        assert status == 200 and current == s, "the session stays where it was"
        status, _, err = await chat(api, n=2, session_id=s["session_id"])
        assert (status, err["error"]["param"]) == (400, "n"), err
        status, headers, _ = await chat(api, n=2, uids=[1, 2])
        assert status == 200 and "x-sn1-session-bypassed" not in headers, "uids choose the miners: no session asked"


async def test_opening_a_session_refuses_a_query_string_it_would_ignore(tmp_path: Path) -> None:
    """``POST /v1/sessions``'s query string: ``?model_id=A`` with ``"model": "B"`` in the body opened a session for
    B in silence; an empty ``?model_id=`` was a 400 asking for ``model``, which the caller had not sent; and any
    other parameter (``?sessionDuration=60``) was ignored, a one-hour session opened. Each is a 400 naming what
    was sent now, as an unknown query parameter on ``/web_retrieval`` is; the reference API's own call opens."""
    async with api_with_miners(tmp_path, miners(2)) as api:
        status, _, err = await call(api, "POST", "/v1/sessions?model_id=default", json={"model": "other"})
        assert (status, err["error"]["code"], err["error"]["param"]) == (400, "invalid_value", "model_id"), err
        assert "model_id in the query string 'default'" in err["error"]["message"], err
        assert "model in the body 'other'" in err["error"]["message"], err
        status, _, err = await call(api, "POST", "/v1/sessions?model_id=default&model=other", json={})
        assert status == 400 and "'default'" in err["error"]["message"] and "'other'" in err["error"]["message"], err
        status, _, err = await call(api, "POST", "/v1/sessions?model_id=", json={"sessionDuration": 60})
        assert (status, err["error"]["param"]) == (400, "model_id"), err
        status, _, err = await call(api, "POST", "/v1/sessions?model_id=default&sessionDuration=60", json={})
        assert (status, err["error"]["param"]) == (400, "sessionDuration"), err
        assert (await call(api, "GET", "/v1/sessions"))[0] == 404, "no session was opened"
        status, _, s = await call(api, "POST", "/v1/sessions?model_id=default", json={"model": "default"})
        assert status == 200 and s["model"] == "default", s  # the same model twice: no conflict
        status, _, s = await call(api, "POST", "/v1/sessions?model_id=default",
                                  json={"sessionDuration": 120, "directPayment": False, "failover": False})
        assert status == 200 and s["expires_at"] - s["created_at"] == 120, s


async def test_reading_deleting_and_pinging_a_session_refuse_a_query_string(tmp_path: Path) -> None:
    """``GET /v1/sessions``, ``DELETE /v1/sessions/{id}`` and its ``/ping`` take nothing from the query string, and
    took anything in silence: ``GET /v1/sessions?session_id=sess-other`` answered the key's session as if it were
    the one asked for, a typo'd parameter went unnoticed. Each is a 400 naming the parameter now, as on ``POST
    /v1/sessions``, and nothing is done (the session is not deleted, not pinged)."""
    scripts = miners(2)
    async with api_with_miners(tmp_path, scripts) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        sid = s["session_id"]
        for method, path in (("GET", "/v1/sessions?session_id=sess-other"), ("DELETE", f"/v1/sessions/{sid}?force=1"),
                             ("POST", f"/v1/sessions/{sid}/ping?timeout=1")):
            status, _, err = await call(api, method, path)
            assert (status, err["error"]["code"]) == (400, "invalid_value"), (method, path, err)
            assert err["error"]["param"] == path.split("?")[1].split("=")[0], err
        assert sum(sc.calls for sc in scripts.values()) == 0, "no ping was sent"
        status, _, current = await call(api, "GET", "/v1/sessions")
        assert status == 200 and current == s, "the session was not deleted"


async def test_x_session_id_sent_twice_with_two_values_is_a_400(tmp_path: Path) -> None:
    """Two ``x-session-id`` headers (a client's default beside a proxy's, or two layers of a client) named two
    sessions, and the first was taken in silence, as the key headers' first was once: a 400 ``duplicate_header``
    now, as for them, on chat and on text completions; the same value twice is one session."""
    from multidict import CIMultiDict

    async with api_with_miners(tmp_path, miners(2)) as api:
        _, _, s = await call(api, "POST", "/v1/sessions", json={"model": "default"})
        for path, body in (("/v1/chat/completions", {"messages": MESSAGES}), ("/v1/completions", {"prompt": "hi"})):
            twice = CIMultiDict([("Authorization", f"Bearer {api.key}"), ("x-session-id", s["session_id"]),
                                 ("x-session-id", "sess-other")])
            async with aiohttp.ClientSession() as http, http.post(api.url + path, json=body, headers=twice) as r:
                err = await r.json()
            assert (r.status, err["error"]["code"]) == (400, "duplicate_header"), (path, err)
            assert "x-session-id" in err["error"]["message"], err
        same = CIMultiDict([("Authorization", f"Bearer {api.key}"), ("x-session-id", s["session_id"]),
                            ("x-session-id", s["session_id"])])
        async with aiohttp.ClientSession() as http, http.post(api.url + "/v1/chat/completions",
                                                                json={"messages": MESSAGES}, headers=same) as r:
            assert r.status == 200 and r.headers["x-sn1-session-id"] == s["session_id"]
