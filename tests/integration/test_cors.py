"""A web page on another origin can call the API the way a browser does it (CORS_ORIGINS).

A browser sends a preflight (``OPTIONS`` with ``Access-Control-Request-*``) before a request that
carries ``Authorization`` or a JSON body, and lets the page read the answer only if the answer names
its origin. These tests send exactly what a browser sends and check what the Fetch standard
requires of the answers: the origin allowed, every requested header listed by name (a ``*`` does not
cover ``Authorization``), and the answer's own headers exposed to the page.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import Script, api_with_miners, chunk, sse

PAGE = "https://chat.example.com"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def honest() -> dict[int, Script]:
    return {1: Script([(0, d) for d in sse(chunk("hello"), chunk(finish="stop"))])}


async def preflight(url: str, method: str, headers: str, origin: str = PAGE) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.options(url, headers={
            "Origin": origin, "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers}) as r:
        return r.status, dict(r.headers)


def allows(answer: dict[str, str], method: str, headers: str, origin: str = PAGE) -> bool:
    """What a browser checks of a preflight's answer before it sends the real request."""
    listed = {h.strip().lower() for h in answer.get("Access-Control-Allow-Headers", "").split(",")}
    methods = {m.strip().upper() for m in answer.get("Access-Control-Allow-Methods", "").split(",")}
    return (answer.get("Access-Control-Allow-Origin") in (origin, "*") and method in methods
            and all(h.strip().lower() in listed for h in headers.split(",")))


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_page_on_another_origin_can_call_chat_completions(tmp_path: Path, stream: bool) -> None:
    async with api_with_miners(tmp_path, honest()) as api:
        status, answer = await preflight(api.url + "/v1/chat/completions", "POST", "authorization,content-type")
        assert status == 200 and allows(answer, "POST", "authorization,content-type"), answer
        async with aiohttp.ClientSession() as s, s.post(api.url + "/v1/chat/completions",
                                                        json={**CHAT, "stream": stream},
                                                        headers={"Origin": PAGE, "Authorization": f"Bearer {api.key}"}) as r:
            text = await r.text()
            headers = r.headers
    assert r.status == 200 and "hello" in text
    assert headers["Access-Control-Allow-Origin"] == PAGE
    exposed = {h.strip().lower() for h in headers["Access-Control-Expose-Headers"].split(",")}
    assert {"x-request-id", "x-ratelimit-remaining-requests", "x-sn1-miner-uid"} <= exposed


async def test_errors_are_readable_by_the_page_too(tmp_path: Path) -> None:
    """A page must be able to read a 401 or a 400 body, or it only sees "network error"."""
    async with api_with_miners(tmp_path, honest()) as api, aiohttp.ClientSession() as s:
        async with s.post(api.url + "/v1/chat/completions", json=CHAT, headers={"Origin": PAGE}) as r:
            assert r.status == 401 and r.headers["Access-Control-Allow-Origin"] == PAGE
            assert (await r.json())["error"]["code"] == "missing_api_key"
        async with s.post(api.url + "/v1/responses", data=b"{", headers={
                "Origin": PAGE, "api-key": api.key, "Content-Type": "application/json"}) as r:
            assert r.status == 400 and r.headers["Access-Control-Allow-Origin"] == PAGE


async def test_admin_routes_and_metrics_stay_closed_to_browsers(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, honest()) as api:
        for path, method in (("/api_management/api-keys", "GET"), ("/api_management/create-api-key", "POST"),
                             ("/metrics", "GET")):
            status, answer = await preflight(api.url + path, method, "admin-key")
            assert status >= 400 and not allows(answer, method, "admin-key"), (path, status, answer)
        async with aiohttp.ClientSession() as s, s.get(api.url + "/api_management/api-keys", headers={
                "Origin": PAGE, "admin-key": "admin-secret-for-tests"}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_only_the_configured_origins_are_allowed(tmp_path: Path) -> None:
    async with api_with_miners(tmp_path, honest(), cors_origins=[PAGE]) as api:
        status, answer = await preflight(api.url + "/v1/models", "GET", "authorization")
        assert status == 200 and allows(answer, "GET", "authorization")
        status, answer = await preflight(api.url + "/v1/models", "GET", "authorization", origin="https://evil.test")
        assert status == 403 and not allows(answer, "GET", "authorization", origin="https://evil.test")
        assert json.loads(await _body(api.url + "/v1/models", "https://evil.test", api.key))["object"] == "list"


async def test_cors_off_answers_no_preflight(tmp_path: Path) -> None:
    """``CORS_ORIGINS=`` (empty): no route answers a preflight, so browsers refuse every call."""
    async with api_with_miners(tmp_path, honest(), cors_origins=[]) as api:
        status, answer = await preflight(api.url + "/v1/chat/completions", "POST", "authorization")
        assert status == 405 and not allows(answer, "POST", "authorization")


async def _body(url: str, origin: str, key: str) -> str:
    """A request from a page of ``origin`` (it is served; the browser, not the API, hides it)."""
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Origin": origin, "api-key": key}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
        return await r.text()


@pytest.mark.parametrize("origins", [["*"], []], ids=["cors-on", "cors-off"])
async def test_a_plain_options_request_is_told_the_methods_not_refused(tmp_path: Path, origins: list[str]) -> None:
    """``curl -X OPTIONS`` (no ``Origin``: not a browser's preflight) asks which methods a path takes (RFC 9110).
    With CORS on it was a 403 ``CORS preflight request failed``, a permission error for a key that was never the
    point; with CORS off, and on the admin routes, a 405 "use POST". A 204 with ``Allow`` now; a path not served
    is still a 404."""
    async with api_with_miners(tmp_path, honest(), cors_origins=origins) as api, aiohttp.ClientSession() as s:
        for path, methods in (("/v1/chat/completions", {"POST"}), ("/v1/sessions", {"GET", "HEAD", "POST"}),
                              ("/api_management/api-keys", {"GET", "HEAD"})):
            async with s.options(api.url + path) as r:
                assert r.status == 204, (path, r.status, await r.text())
                assert {m.strip() for m in r.headers["Allow"].split(",")} == methods | {"OPTIONS"}, dict(r.headers)
        async with s.options(api.url + "/v1/embeddings") as r:
            assert r.status == 404
