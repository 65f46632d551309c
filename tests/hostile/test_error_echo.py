"""What a 400 quotes of the names a caller chose (a field or query parameter it made up, a metadata key, a content
part's type): never an API key pasted into one, and never more than a few dozen characters of one. A careless client's
``?sn1-...`` (a key pasted as the query string) or ``{"metadata": {"sn1-...": ...}}`` had its secret answered back in
the error (a proxy or a client's log keeps it), and a field named with 1 MB of text was answered with that megabyte
twice (the message and ``param``), through the real API on a SQLite file."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.helpers import ADMIN, ApiUnderTest, Script, apis_on_one_store

CHAT = [{"role": "user", "content": "hi"}]
HUGE = "k" * 1_000_000


async def refused(api: ApiUnderTest, method: str, path: str, body: dict | None = None,
                  headers: dict[str, str] | None = None) -> tuple[dict, int]:
    """The 400's error object, and the size of the whole body answered."""
    async with aiohttp.ClientSession() as s, s.request(method, api.url + path, json=body,
                                                       headers=headers or {"Authorization": f"Bearer {api.key}"}) as r:
        raw = await r.read()
        assert r.status == 400, raw[:300]
        return (await r.json())["error"], len(raw)


async def test_a_secret_in_a_name_is_never_answered_back(tmp_path: Path) -> None:
    async with apis_on_one_store(tmp_path, "sqlite", 1, Script([])) as (api,):
        secret = api.key
        for method, path, body, headers in (
            ("GET", f"/api_management/api-keys?{secret}=1", None, ADMIN),  # a key pasted as the query string
            ("GET", f"/v1/usage?{secret}", None, None),
            ("GET", f"/v1/usage?{secret}=1&{secret}=2", None, None),  # sent twice
            ("GET", "/v1/usage", {secret: 1}, None),  # a body on a route that reads none
            ("POST", "/api_management/create-api-key/", {"rate_limit": 1, secret: 1}, ADMIN),
            ("POST", "/v1/chat/completions", {"model": "m", "messages": CHAT, "metadata": {secret: "v" * 600}}, None),
            ("POST", "/v1/responses", {"model": "m", "input": [{"role": "user", "content": [
                {"type": secret, "text": "x"}]}]}, None),
            ("POST", "/v1/responses", {"model": "m", "input": [{"type": secret}]}, None),
            ("POST", "/v1/responses", {"model": "m", "input": [{"role": "assistant", "content": [
                {"type": secret, "text": "x"}]}]}, None),
            ("POST", "/v1/sessions?model_id=m", {"model": secret}, None),  # the model named twice
        ):
            error, _ = await refused(api, method, path, body, headers)
            assert secret not in str(error) and secret[4:12] not in str(error), (path, error)
            assert "sn1-***" in str(error), (path, error)  # the place is still named: a key was put there


async def test_a_huge_name_is_named_in_a_few_characters(tmp_path: Path) -> None:
    async with apis_on_one_store(tmp_path, "sqlite", 1, Script([])) as (api,):
        for method, path, body, headers in (
            ("POST", "/api_management/create-api-key/", {"rate_limit": 1, HUGE: 1}, ADMIN),
            ("POST", "/v1/responses", {"model": "m", "input": [{"role": "user", "content": [
                {"type": HUGE, "text": "x"}]}]}, None),
            ("GET", "/v1/usage", {HUGE: 1}, None),  # a body on a route that reads none
            ("POST", "/v1/sessions?model_id=m", {"model": HUGE}, None),
        ):
            error, size = await refused(api, method, path, body, headers)
            assert size < 1000, (path, size, str(error)[:200])
            assert "kkkkkkkkkk..." in str(error), (path, error)  # its start, said to be cut
