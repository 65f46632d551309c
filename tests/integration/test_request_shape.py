"""What every route refuses before reading it (``api.request_shape``): a query parameter sent twice with two values,
a body on a POST or DELETE that takes none. A caller's view: the status, the error body, and that nothing was done."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.helpers import ADMIN, ApiUnderTest, api_with_miners, openai_client


async def send(api: ApiUnderTest, method: str, path: str, *, headers: dict[str, str] | None = None,
               **kw: Any) -> tuple[int, dict[str, str], Any]:
    """One request with the test key (or ``headers``): status, headers, JSON."""
    async with aiohttp.ClientSession() as s:
        async with s.request(method, api.url + path, headers=headers or {"api-key": api.key}, **kw) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)


def refused(status: int, out: Any, code: str, param: str | None) -> None:
    assert status == 400, out
    assert (out["error"]["type"], out["error"]["code"], out["error"]["param"]) == \
        ("invalid_request_error", code, param), out


async def test_a_query_parameter_sent_twice_with_two_values_is_a_400_naming_it_on_every_route(tmp_path: Path) -> None:
    """Each route took one of two values its own way: ``/v1/usage`` and the admin routes the last, the availability
    routes the first, the sessions ``model`` a 400. Now a 400 ``duplicate_parameter`` naming it, on each, before
    the key is read (not charged) and before anything is done; the same value twice is one value, and a list
    parameter (``scopes``, ``uids``, ``include``) takes each."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        for method, path, param, headers in (
                ("GET", "/v1/usage?days=7&days=30", "days", None),
                ("GET", "/miner_availabilities/get_available_miners?k=1&k=5", "k", None),
                ("GET", "/web_retrieval?search_query=a&n_results=1&search_query=b", "search_query", None),
                ("POST", "/v1/sessions?model=default&model=other", "model", None),
                ("GET", "/v1/responses/resp_x?stream=true&stream=false", "stream", None),
                ("POST", "/api_management/create-api-key?rate_limit=5&rate_limit=500", "rate_limit", ADMIN)):
            status, got, out = await send(api, method, path, headers=headers)
            refused(status, out, "duplicate_parameter", param)
            assert out["error"]["message"] == (f"The query parameter '{param}' was sent twice with different values, "
                                               "and which one is meant cannot be told: send it once."), out
            assert "x-ratelimit-remaining-requests" not in got, (path, "not charged")
        status, _, listed = await send(api, "GET", "/api_management/api-keys", headers=ADMIN)
        assert status == 200 and len(listed["data"]) == 1, "no key was created"
        assert await api.ctx.sessions.active() == [], "no session was opened"
        status, _, out = await send(api, "GET", "/v1/usage?days=7&days=7")
        assert status == 200 and len(out["days"]) <= 7, out
        status, _, made = await send(api, "POST", "/api_management/create-api-key?rate_limit=5&rate_limit=5"
                                                  "&scopes=chat&scopes=availability", headers=ADMIN)
        assert status == 200 and (made["rate_limit"], made["scopes"]) == (5, ["chat", "availability"]), made


async def test_a_body_on_a_post_or_delete_that_takes_none_is_refused_and_nothing_is_done(tmp_path: Path) -> None:
    """A response's cancel and delete, a key's rotation and delete, a session's ping and delete read no body, and
    answered as if a body sent to them (``{"dry_run": true}``) had been read. A body holding anything is a 400
    ``unsupported_parameter`` naming its first field, as on a GET, and nothing is done; none, or ``{}``, is
    served, and the OpenAI SDK's own ``responses.cancel`` and ``responses.delete`` (which send none) work."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        client = openai_client(api)
        made = await client.responses.create(model="default", input="Count to three.", background=True)
        for _ in range(200):
            if (await client.responses.retrieve(made.id)).status == "completed":
                break
            await asyncio.sleep(0.02)
        _, _, session = await send(api, "POST", "/v1/sessions", json={"model": "default"})
        _, _, other = await send(api, "POST", "/api_management/create-api-key?rate_limit=5", headers=ADMIN)
        for method, path, body, param, headers in (
                ("POST", f"/v1/responses/{made.id}/cancel", {"reason": "stop"}, "reason", None),
                ("DELETE", f"/v1/responses/{made.id}", {"dry_run": True}, "dry_run", None),
                ("POST", f"/v1/sessions/{session['session_id']}/ping", {"timeout": 1}, "timeout", None),
                ("DELETE", f"/v1/sessions/{session['session_id']}", b"now", None, None),
                ("POST", f"/api_management/rotate-api-key/{other['id']}", {"keep_old": True}, "keep_old", ADMIN),
                ("DELETE", f"/api_management/delete-api-key/{other['api_key']}", [other["id"]], None, ADMIN)):
            data = body if isinstance(body, bytes) else None
            status, _, out = await send(api, method, path, headers=headers, data=data,
                                        json=None if data is not None else body)
            refused(status, out, "unsupported_parameter", param)
            assert "would not read this one" in out["error"]["message"] and other["api_key"] not in str(out), out
        assert (await client.responses.retrieve(made.id)).status == "completed", "not deleted"
        assert (await send(api, "GET", "/v1/sessions"))[0] == 200, "the session is still open"
        assert (await send(api, "GET", "/v1/usage", headers={"api-key": other["api_key"]}))[0] == 200, \
            "the key was neither rotated nor deleted"
        assert (await send(api, "POST", f"/v1/sessions/{session['session_id']}/ping", json={}))[0] == 200
        assert (await client.responses.cancel(made.id)).status == "completed", "a done one is answered as it is"
        await client.responses.delete(made.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(made.id)
        status, _, out = await send(api, "DELETE", f"/api_management/delete-api-key/{other['id']}", headers=ADMIN,
                                    data=b" {} ")
        assert status == 200 and out["deleted"] is True, out
        await client.close()



async def test_a_path_not_served_or_a_method_not_taken_is_its_404_or_405_whatever_its_body(tmp_path: Path) -> None:
    """The shape checks ran before routing's own answer: ``GET /v1/modles`` with a body was the 400 "A GET reads
    its parameters from the query string", ``DELETE /v1/usage`` with one the 400 " takes no body" (naming no
    route: there is none), and either with two request ids a 400 ``duplicate_header``: the caller's mistake was
    the path or the method. Now the 404, and the 405 naming the methods served, as without a body."""
    async with api_with_miners(tmp_path, {}, honest={1}) as api, aiohttp.ClientSession() as s:
        for extra in ([], [("x-request-id", "a"), ("x-request-id", "b")]):
            headers = [("api-key", api.key), *extra]
            async with s.get(api.url + "/v1/modles", headers=headers, json={"days": 7}) as r:
                out = await r.json()
                assert (r.status, out["error"]["code"]) == (404, "not_found"), out
            async with s.delete(api.url + "/v1/usage", headers=headers, json={"days": 7}) as r:
                out = await r.json()
                assert (r.status, out["error"]["code"]) == (405, "method_not_allowed"), out
                assert "GET" in r.headers["Allow"], r.headers
        async with s.get(api.url + "/v1/modles?days=1&days=2", headers={"api-key": api.key}) as r:
            assert r.status == 404, await r.text()


async def test_a_probe_is_answered_whatever_ids_or_parameters_it_repeats(tmp_path: Path) -> None:
    """Two chained proxies that each append an ``x-request-id`` (or a scraper's repeated parameter) made ``/health``
    and ``/ready`` a 400 ``duplicate_header``: a load balancer took a healthy host out. A probe reads neither."""
    from multidict import CIMultiDict

    async with api_with_miners(tmp_path, {}, honest={1}) as api:
        twice = CIMultiDict([("x-request-id", "lb-1"), ("x-request-id", "proxy-2")])
        for path in ("/health", "/ready", "/metrics", "/health?probe=a&probe=b"):
            async with aiohttp.ClientSession() as s, s.get(api.url + path, headers=twice) as r:
                assert r.status in (200, 503) and "duplicate" not in await r.text(), (path, r.status)
        status, _, out = await send(api, "GET", "/v1/models", params=[("a", "1"), ("a", "2")])
        assert status == 400 and out["error"]["code"] == "duplicate_parameter", "the API's own routes still refuse it"
