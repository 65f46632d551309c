"""What a caller sees: the three key headers, 401/403/429/503, rate-limit headers and usage."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import aiohttp

from api.app import create_api_app
from shared.store.redis import RedisStore
from shared.store.usage import UsageRecorder
from tests.helpers import VALIDATOR_KP, ApiUnderTest, build_api_context, serve_app, snapshot
from tests.keys.conftest import ADMIN, assert_error, call, create_key
from tests.ports import free_port

CHAT = {"model": "sn1/deterministic", "messages": [{"role": "user", "content": "Count to three, please."}]}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_key_headers_and_401s(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/v1/usage"
    for headers in ({"api-key": api.key}, {"x-api-key": api.key}, bearer(api.key), {"authorization": f"bearer {api.key}"}):
        assert (await call(http, "GET", url, headers=headers))[0] == 200, headers
    cases = [({}, "missing_api_key"), ({"Authorization": f"Basic {api.key}"}, "missing_api_key"),
             (bearer("sn1-nope"), "invalid_api_key"), ({"api-key": api.key + "x"}, "invalid_api_key"),
             ({"api-key": "k" * 5000}, "invalid_api_key")]
    for headers, code in cases:
        status, hdrs, out = await call(http, "GET", url, headers=headers)
        assert_error(status, out, 401, code)
        assert "x-ratelimit-limit-requests" not in hdrs  # nothing was charged
    status, _, out = await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers={})
    assert_error(status, out, 401, "missing_api_key")


async def test_a_key_in_authorization_without_bearer_is_told_so(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """``Authorization: <key>`` (or ``Basic <key>``), a curl line written by hand: "Missing API key." to someone who
    sent one, who then checks the key, not the word before it. The 401 names the scheme, never the key."""
    for value in (api.key, f"Basic {api.key}", f"Token {api.key}"):
        status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers={"Authorization": value})
        assert_error(status, out, 401, "missing_api_key")
        message = out["error"]["message"]
        assert "Authorization header has no 'Bearer ' before the key" in message, message
        assert api.key not in message, message
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers={"Authorization": "Bearer "})
    assert_error(status, out, 401, "missing_api_key")  # curl -H "Authorization: Bearer $KEY", KEY unset
    assert "'Bearer' with no key after it (an unset variable?)" in out["error"]["message"], out
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers={})
    assert out["error"]["message"].startswith("Missing API key. Send it as 'Authorization: Bearer <key>'"), out


async def test_an_unknown_keys_401_says_where_a_key_comes_from(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """The OpenAI SDK sends ``OPENAI_API_KEY`` when the code gives no key of its own: "Invalid API key." said
    nothing of that, nor where a key here comes from."""
    status, _, out = await call(http, "GET", f"{api.url}/v1/models", headers=bearer("sk-proj-0123456789abcdef"))
    assert_error(status, out, 401, "invalid_api_key")
    said = out["error"]["message"]
    assert said.startswith("Invalid API key.") and "OpenAI" in said and "operator" in said
    assert "sk-proj" not in said  # never the key


async def test_a_key_header_sent_twice_with_two_values_is_a_400_and_a_header_beats_an_sdks_bearer(
        api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """Which of two keys is meant cannot be told (the first won, and a wrong one beside it went unseen). The
    same value twice (a proxy that repeats it) is fine; ``api-key`` beside the SDK's own Bearer token is the
    key meant (``OpenAI(api_key="unused", default_headers={"api-key": key})``)."""
    url = f"{api.url}/v1/usage"
    for name, value in (("Authorization", f"Bearer {api.key}"), ("api-key", api.key), ("x-api-key", api.key)):
        for second in (value, "Bearer sn1-nope" if name == "Authorization" else "sn1-nope"):
            status, _, out = await call(http, "GET", url, headers=[(name, value), (name, second)])
            if second == value:
                assert status == 200, out
            else:
                assert_error(status, out, 400, "duplicate_header")
                assert name in out["error"]["message"] and api.key not in out["error"]["message"]
    status, _, out = await call(http, "GET", url, headers={"Authorization": "Bearer unused", "api-key": api.key})
    assert status == 200, out
    status, _, out = await call(http, "GET", f"{api.url}/api_management/api-keys",
                                headers=[("admin-key", ADMIN), ("admin-key", "wrong-admin-key-attempt-456")])
    assert_error(status, out, 400, "duplicate_header")


async def test_a_head_is_its_get_without_the_body_charged_as_one_request(
        api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """HEAD on a route that takes GET is that GET without its body (RFC 9110): the same status and headers, its key
    checked and charged as the GET's (its ``x-ratelimit-remaining-requests`` counts it), a 429 past the limit. But
    ``/web_retrieval``, whose GET asks miners for a search: a HEAD spent their work (scored) on an answer thrown
    away; a 405 naming GET and POST, before the key is read."""
    key = (await create_key(http, api.url, "rate_limit=3"))["api_key"]
    async with http.head(f"{api.url}/v1/models", headers=bearer(key)) as r:
        assert r.status == 200 and await r.read() == b"" and r.headers["Content-Type"] == "application/json"
        assert r.headers["x-ratelimit-remaining-requests"] == "2" and r.headers["x-request-id"]
    status, headers, _ = await call(http, "GET", f"{api.url}/v1/models", headers=bearer(key))
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "1"
    async with http.head(f"{api.url}/web_retrieval?search_query=x", headers=bearer(key)) as r:
        assert r.status == 405 and set(r.headers["Allow"].split(",")) - {"OPTIONS"} == {"GET", "POST"}, r.headers
        assert "x-ratelimit-remaining-requests" not in r.headers
    async with http.head(f"{api.url}/v1/usage") as r:
        assert r.status == 401 and "x-ratelimit-remaining-requests" not in r.headers
    async with http.head(f"{api.url}/v1/usage", headers=bearer(key)) as r:
        assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
    async with http.head(f"{api.url}/v1/sessions", headers=bearer(key)) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 59
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers=bearer(key))
    assert_error(status, out, 429, "rate_limit_exceeded")


async def test_scopes_and_models_are_403(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    chat_only = (await create_key(http, api.url, "rate_limit=50&scopes=chat&allowed_models=other/model"))["api_key"]
    status, _, out = await call(http, "GET", f"{api.url}/miner_availabilities/get_available_miners",
                                headers=bearer(chat_only))
    assert_error(status, out, 403, "insufficient_scope")
    status, _, out = await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(chat_only))
    assert_error(status, out, 403, "model_not_allowed")
    assert out["error"]["param"] == "model" and "other/model" in out["error"]["message"]
    allowed = (await create_key(http, api.url, "rate_limit=50&allowed_models=sn1/deterministic"))["api_key"]
    status, _, out = await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(allowed))
    assert status == 200 and out["choices"][0]["message"]["content"]
    no_chat = (await create_key(http, api.url, "rate_limit=50&scopes=availability"))["api_key"]
    status, _, out = await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(no_chat))
    assert_error(status, out, 403, "insufficient_scope")
    assert (await call(http, "GET", f"{api.url}/v1/usage", headers=bearer(no_chat)))[0] == 200  # usage needs no scope


async def test_rate_limit_headers_429_and_usage(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    key = (await create_key(http, api.url, "rate_limit=3"))["api_key"]
    chat_url = f"{api.url}/v1/chat/completions"
    status, h1, body = await call(http, "POST", chat_url, json=CHAT, headers=bearer(key))
    assert status == 200
    assert (h1["x-ratelimit-limit-requests"], h1["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert h1["x-ratelimit-reset-requests"].endswith("s")
    reported = body["usage"]
    async with http.post(chat_url, json={**CHAT, "stream": True}, headers=bearer(key)) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["x-ratelimit-remaining-requests"] == "1"
        stream_text = await r.text()
    assert stream_text.rstrip().endswith("data: [DONE]")
    status, _, out = await call(http, "POST", chat_url, data=b"{bad json", headers=bearer(key))
    assert_error(status, out, 400)  # a client error is still a charged request
    status, h4, out = await call(http, "POST", chat_url, json=CHAT, headers=bearer(key))
    assert_error(status, out, 429, "rate_limit_exceeded")
    assert int(h4["Retry-After"]) >= 59 and h4["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in h4, "a minute's wait is the SDKs' to wait out (the Node SDK honours it)"
    # to the millisecond, which the SDKs read before Retry-After (its whole seconds round a short wait up)
    assert 58_000 < int(h4["retry-after-ms"]) <= int(h4["Retry-After"]) * 1000
    assert "3 requests per minute" in out["error"]["message"]
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers=bearer(key))
    assert_error(status, out, 429)

    listing = (await call(http, "GET", f"{api.url}/api_management/api-keys", headers={"admin-key": ADMIN}))[2]
    totals = next(k for k in listing["data"] if k["prefix"] == key[:10])["usage"]
    assert totals["requests"] == 5 and totals["rate_limited"] == 2 and totals["errors"] == 1
    # tokens of both answered chats (the stream's own count may differ a little from the first's)
    assert totals["prompt_tokens"] > reported["prompt_tokens"] > 0
    assert totals["completion_tokens"] > reported["completion_tokens"] > 0
    status, _, mine = await call(http, "GET", f"{api.url}/api_management/api-keys/{key}/usage",
                                 headers={"admin-key": ADMIN})
    assert mine["totals"] == totals and len(mine["days"]) == 1 and mine["days"][0]["requests"] == 5


async def test_own_usage_endpoint(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    key = (await create_key(http, api.url, "rate_limit=10&name=me"))["api_key"]
    assert (await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(key)))[0] == 200
    status, headers, out = await call(http, "GET", f"{api.url}/v1/usage?days=3", headers=bearer(key))
    assert status == 200 and headers["x-ratelimit-remaining-requests"] == "8"
    assert out["object"] == "usage" and out["name"] == "me" and out["rate_limit"] == 10
    assert out["totals"]["requests"] == 1 and out["totals"]["total_tokens"] > 0
    assert out["days"][0]["requests"] == 1 and out["last_used_at"].endswith("Z")
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage?days=abc", headers=bearer(key))
    assert_error(status, out, 400)


async def test_usage_refuses_a_query_parameter_it_does_not_read(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """``/v1/usage?day=7`` (a typo of ``days``) answered 30 days as if asked for, on the admin's route of a key's
    usage too: any parameter but ``days`` is a 400 naming it now, as on the admin routes that change keys."""
    key = (await create_key(http, api.url, "rate_limit=10"))["api_key"]
    for url, headers in ((f"{api.url}/v1/usage?day=7", bearer(key)),
                         (f"{api.url}/api_management/api-keys/{key}/usage?day=7", {"admin-key": ADMIN})):
        status, _, out = await call(http, "GET", url, headers=headers)
        assert_error(status, out, 400)
        assert out["error"]["param"] == "day", out
        status, _, out = await call(http, "GET", url.replace("day=", "days="), headers=headers)
        assert status == 200 and out["object"] == "usage", out


async def test_store_unreachable_is_503_never_open(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    dead = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="gone")
    real, api.ctx.store = api.ctx.store, dead
    try:
        for method, path, headers in (
            ("POST", "/v1/chat/completions", bearer(api.key)),
            ("GET", "/v1/usage", bearer(api.key)),
            ("POST", "/api_management/create-api-key/?rate_limit=3", {"admin-key": ADMIN}),
        ):
            status, hdrs, out = await call(http, method, api.url + path, headers=headers,
                                           json=CHAT if method == "POST" else None)
            assert_error(status, out, 503, "store_unavailable")
            assert "unavailable" in out["error"]["message"] and hdrs["Retry-After"] == "1"
            assert hdrs["retry-after-ms"] == "1000"  # what the OpenAI SDKs, which retry a 503 too, read first
    finally:
        api.ctx.store = real
        await dead.close()


async def test_usage_is_flushed_at_graceful_shutdown(tmp_path: Path) -> None:
    ctx = await build_api_context(tmp_path, snapshot(VALIDATOR_KP.ss58_address, {}), VALIDATOR_KP)
    ctx.usage = UsageRecorder(ctx.store, flush_interval=3600)  # only the shutdown flush can write
    secret, record = await ctx.store.create_key(50)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(ctx.store.close)
        stack.push_async_callback(ctx.client.session.close)
        async with serve_app(create_api_app(ctx, run_background=False)) as url:
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    assert (await call(http, "GET", f"{url}/v1/usage", headers=bearer(secret)))[0] == 200
            assert (await ctx.store.usage(record.id)).totals.requests == 0  # still buffered
        assert (await ctx.store.usage(record.id)).totals.requests == 3


async def test_secrets_never_logged(api: ApiUnderTest, http: aiohttp.ClientSession, logs: list[str]) -> None:
    created = await create_key(http, api.url, "rate_limit=1&name=logged")
    key = created["api_key"]
    await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(key))
    await call(http, "POST", f"{api.url}/v1/chat/completions", json=CHAT, headers=bearer(key))  # 429
    await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{key}?rate_limit=2", headers={"admin-key": "no"})
    await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{key}?rate_limit=2", headers={"admin-key": ADMIN})
    await call(http, "DELETE", f"{api.url}/api_management/delete-api-key/{key}", headers={"admin-key": ADMIN})
    api.ctx.request_log.flush()  # the access log's lines too
    text = "\n".join(logs)
    assert created["id"] in text  # the key is logged by id ...
    assert "chat rid=" in text and f"key={created['id']}" in text
    for secret in (key, key[10:30], ADMIN, api.key):
        assert secret not in text  # ... never by its secret, whole or in part
    assert json.dumps(key) not in text
