"""A key's daily token limit, as its caller and its operator see it: OpenAI's token headers, a 429
once the day's tokens reach it (until the UTC day ends), on every route that spends tokens and no
other, and the admin's changes taking effect at the next request."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.helpers import ApiUnderTest
from tests.keys.conftest import ADMIN, assert_error, call, create_key

CHAT = {"model": "sn1/deterministic", "messages": [{"role": "user", "content": "Count to three, please."}],
        "max_tokens": 20}
SPENDING = {
    "/v1/chat/completions": CHAT,
    "/v1/responses": {"model": "sn1/deterministic", "input": "Count to three, please.", "max_output_tokens": 20},
    "/v1/completions": {"model": "sn1/deterministic", "prompt": "Count to three, please.", "max_tokens": 20},
}


def seconds_to_midnight() -> float:
    return 86400 - time.time() % 86400


@pytest.mark.parametrize("path", list(SPENDING))
async def test_the_day_ends_a_keys_requests_once_its_tokens_reach_the_limit(
    api: ApiUnderTest, http: aiohttp.ClientSession, path: str
) -> None:
    key = (await create_key(http, api.url, "rate_limit=100&daily_token_limit=30"))["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    status, first, _ = await call(http, "POST", api.url + path, json=SPENDING[path], headers=headers)
    assert status == 200
    assert (first["x-ratelimit-limit-tokens"], first["x-ratelimit-remaining-tokens"]) == ("30", "30")
    assert first["x-ratelimit-reset-tokens"].endswith("s")
    status, second, _ = await call(http, "POST", api.url + path, json=SPENDING[path], headers=headers)
    assert status == 200 and 0 < int(second["x-ratelimit-remaining-tokens"]) < 30, "the first request's tokens count"
    status, refused, body = await call(http, "POST", api.url + path, json=SPENDING[path], headers=headers)
    assert_error(status, body, 429, "token_limit_exceeded")
    assert "30 tokens per day" in body["error"]["message"]
    assert refused["x-ratelimit-remaining-tokens"] == "0"
    assert abs(int(refused["Retry-After"]) - seconds_to_midnight()) < 5, "until the UTC day ends"
    # the OpenAI SDKs retry a 429 by themselves (the Node SDK sleeping as long as Retry-After says): told not to,
    # they raise at once instead of hanging until midnight
    assert refused["x-should-retry"] == "false"
    # retrieval spends no tokens: the same key still searches
    status, _, _ = await call(http, "POST", f"{api.url}/web_retrieval", json={"search_query": "x", "n_results": 1},
                              headers=headers)
    assert status != 429


async def test_the_operator_raises_or_removes_the_limit_and_the_caller_sees_it(
    api: ApiUnderTest, http: aiohttp.ClientSession
) -> None:
    created = await create_key(http, api.url, "rate_limit=100&daily_token_limit=1")
    assert created["daily_token_limit"] == 1
    headers = {"Authorization": f"Bearer {created['api_key']}"}
    chat = api.url + "/v1/chat/completions"
    assert (await call(http, "POST", chat, json=CHAT, headers=headers))[0] == 200
    assert (await call(http, "POST", chat, json=CHAT, headers=headers))[0] == 429
    status, _, own = await call(http, "GET", f"{api.url}/v1/usage", headers=headers)
    assert status == 200 and own["daily_token_limit"] == 1 and own["tokens_remaining_today"] == 0
    admin = {"admin-key": ADMIN}
    status, _, raised = await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{created['id']}",
                                   json={"daily_token_limit": 10_000}, headers=admin)
    assert status == 200 and raised["daily_token_limit"] == 10_000 and raised["rate_limit"] == 100
    status, again, _ = await call(http, "POST", chat, json=CHAT, headers=headers)
    assert status == 200 and 0 < int(again["x-ratelimit-remaining-tokens"]) < 10_000
    status, _, removed = await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{created['id']}"
                                                 "?daily_token_limit=none", headers=admin)
    assert status == 200 and removed["daily_token_limit"] is None
    status, free, _ = await call(http, "POST", chat, json=CHAT, headers=headers)
    assert status == 200 and "x-ratelimit-limit-tokens" not in free
    status, _, listed = await call(http, "GET", f"{api.url}/api_management/api-keys", headers=admin)
    assert [k["daily_token_limit"] for k in listed["data"] if k["id"] == created["id"]] == [None]


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "lots", "true"])
async def test_a_bad_daily_token_limit_is_a_400_naming_it(api: ApiUnderTest, http: aiohttp.ClientSession,
                                                          value: str) -> None:
    status, _, body = await call(http, "POST", f"{api.url}/api_management/create-api-key/?rate_limit=5"
                                               f"&daily_token_limit={value}", headers={"admin-key": ADMIN})
    assert_error(status, body, 400)
    assert body["error"]["param"] == "daily_token_limit"
