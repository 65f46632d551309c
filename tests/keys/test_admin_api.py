"""Admin endpoints over real HTTP: the subnet doc's flows, bad input, and the admin gate."""

from __future__ import annotations

import json
import time

import aiohttp
import pytest

from tests.helpers import ApiUnderTest
from tests.keys.conftest import ADMIN, assert_error, call, create_key

AK = {"admin-key": ADMIN}


async def test_subnet_doc_flow_create_modify_delete(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    created = await create_key(http, api.url, "rate_limit=2")
    assert created["message"] == "API key created" and created["api_key"].startswith("sn1-")
    key = created["api_key"]
    usage_url = f"{api.url}/v1/usage"
    status, headers, _ = await call(http, "GET", usage_url, headers={"api-key": key})
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "2"

    status, _, body = await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{key}?rate_limit=5", headers=AK)
    assert status == 200 and body["rate_limit"] == 5 and "api_key" not in body
    assert next(iter(body.items())) == ("message", "API key updated")  # the original API's word, first
    status, headers, _ = await call(http, "GET", usage_url, headers={"x-api-key": key})
    assert status == 200 and headers["x-ratelimit-limit-requests"] == "5"
    assert headers["x-ratelimit-remaining-requests"] == "3"  # the window carried over the change

    status, _, body = await call(http, "DELETE", f"{api.url}/api_management/delete-api-key/{key}", headers=AK)
    assert status == 200 and body == {"message": "API key deleted", "id": created["id"], "deleted": True}
    status, _, body = await call(http, "GET", usage_url, headers={"Authorization": f"Bearer {key}"})
    assert_error(status, body, 401, "invalid_api_key")
    status, _, body = await call(http, "DELETE", f"{api.url}/api_management/delete-api-key/{key}", headers=AK)
    assert_error(status, body, 404, "api_key_not_found")


async def test_rotate_gives_a_new_secret_and_the_old_one_stops_working(
    api: ApiUnderTest, http: aiohttp.ClientSession, logs: list[str]
) -> None:
    created = await create_key(http, api.url, "rate_limit=3&name=leaky")
    old = created["api_key"]
    assert (await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": old}))[0] == 200
    status, _, rotated = await call(http, "POST", f"{api.url}/api_management/rotate-api-key/{old}", headers=AK)
    assert status == 200 and rotated["message"] == "API key rotated"
    new = rotated["api_key"]
    assert new.startswith("sn1-") and new != old and rotated["prefix"] == new[:10]
    assert (rotated["id"], rotated["name"], rotated["rate_limit"]) == (created["id"], "leaky", 3)
    status, _, body = await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": old})
    assert_error(status, body, 401, "invalid_api_key")
    status, headers, usage = await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": new})
    assert status == 200 and usage["key_id"] == created["id"] and usage["totals"]["requests"] >= 1, "history kept"
    assert headers["x-ratelimit-remaining-requests"] == "1", "the same window: one request each way before"
    # by id too; the old secret now names no key
    status, _, again = await call(http, "POST", f"{api.url}/api_management/rotate-api-key/{created['id']}", headers=AK)
    assert status == 200 and again["api_key"] not in (old, new)
    status, _, body = await call(http, "POST", f"{api.url}/api_management/rotate-api-key/{old}", headers=AK)
    assert_error(status, body, 404, "api_key_not_found")
    status, _, body = await call(http, "POST", f"{api.url}/api_management/rotate-api-key/{created['id']}")
    assert_error(status, body, 401, "invalid_admin_key")
    assert not any(secret in line for line in logs for secret in (old, new, again["api_key"]))
    assert any(f"api key rotated id={created['id']}" in line for line in logs)


async def test_create_with_json_body_and_manage_by_id(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    created = await create_key(http, api.url, "", json={
        "rate_limit": 30, "name": "team-a", "scopes": ["chat", "availability"], "allowed_models": ["m1", "m2"],
        "expires_in_days": 2})
    assert created["name"] == "team-a" and created["scopes"] == ["chat", "availability"]
    assert created["allowed_models"] == ["m1", "m2"] and created["expires_at"].endswith("Z")
    key_id = created["id"]
    status, _, body = await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{key_id}",
                                 headers=AK, json={"expires_at": "never", "scopes": ["web_retrieval"]})
    assert status == 200 and body["expires_at"] is None and body["scopes"] == ["web_retrieval"]
    assert body["rate_limit"] == 30 and body["name"] == "team-a"

    status, _, listing = await call(http, "GET", f"{api.url}/api_management/api-keys", headers=AK)
    assert status == 200 and listing["object"] == "list"
    mine = next(k for k in listing["data"] if k["id"] == key_id)
    assert mine["prefix"] == created["api_key"][:10] and mine["usage"]["requests"] == 0
    assert created["api_key"] not in str(listing) and api.key not in str(listing)

    status, _, usage = await call(http, "GET", f"{api.url}/api_management/api-keys/{key_id}/usage?days=7", headers=AK)
    assert status == 200 and usage["key_id"] == key_id and usage["totals"]["requests"] == 0


async def test_query_lists_and_iso_expiry(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    created = await create_key(
        http, api.url, "rate_limit=7&scopes=chat,web_retrieval&allowed_models=a&allowed_models=b"
                       "&expires_at=2999-01-02T03:04:05Z&name=q")
    assert created["scopes"] == ["chat", "web_retrieval"] and created["allowed_models"] == ["a", "b"]
    assert created["expires_at"] == "2999-01-02T03:04:05Z" and created["name"] == "q"


@pytest.mark.parametrize(("sent", "stored"), [
    ("2999-01-02T03:04:05+02:00", "2999-01-02T01:04:05Z"),  # the "+" unescaped: a query makes it a space
    ("2999-01-02T03:04:05%2B02:00", "2999-01-02T01:04:05Z"),
    ("2999-01-02T03:04:05.5+0530", "2999-01-01T21:34:05Z"),
    ("2999-01-02 03:04+01:00", "2999-01-02T02:04:00Z"),
    ("2999-01-02T03:04:05-02:00", "2999-01-02T05:04:05Z"),
    ("2999-01-02T03:04:05", "2999-01-02T03:04:05Z"),  # no offset: UTC
])
async def test_an_expiry_with_an_offset_in_a_query_string_is_taken_as_written(
        api: ApiUnderTest, http: aiohttp.ClientSession, sent: str, stored: str) -> None:
    """``curl "...?expires_at=2999-01-02T03:04:05+02:00"`` was a 400 "unexpected extra characters": a query
    string's "+" is a space, and only the JSON body took an offset east of UTC."""
    created = await create_key(http, api.url, f"rate_limit=7&expires_at={sent}")
    assert created["expires_at"] == stored
    url = f"{api.url}/api_management/modify-api-key/{created['id']}?expires_at=3000-06-01T00:00:00+14:00"
    status, _, body = await call(http, "PUT", url, headers=AK)
    assert status == 200 and body["expires_at"] == "3000-05-31T10:00:00Z"


async def test_an_expiry_in_unix_seconds_is_read_as_seconds_whatever_its_size(
        api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """Past 2e10 a number was read as milliseconds: ``expires_at=32503680000`` (3000-01-01) made a create a 400
    "in the past" and a modify an expiry in 1971, the key refused at once; past the end of 9999 is a 400."""
    created = await create_key(http, api.url, "rate_limit=7&expires_at=32503680000")
    assert created["expires_at"] == "3000-01-01T00:00:00Z"
    url = f"{api.url}/api_management/modify-api-key/{created['id']}"
    for sent, stored in (("253402300799", "9999-12-31T23:59:59Z"), ("2000000000.5", "2033-05-18T03:33:20Z")):
        status, _, body = await call(http, "PUT", f"{url}?expires_at={sent}", headers=AK)
        assert status == 200 and body["expires_at"] == stored, body
    status, _, body = await call(http, "PUT", url, headers=AK, json={"expires_at": 32503680000.0})
    assert status == 200 and body["expires_at"] == "3000-01-01T00:00:00Z", body
    for sent in ("253402300800", "-1", "-62135596800", "nan", "1e309"):
        status, _, out = await call(http, "PUT", f"{url}?expires_at={sent}", headers=AK)
        assert_error(status, out, 400)
        assert out["error"]["param"] == "expires_at" and "9999" in out["error"]["message"], (sent, out)


@pytest.mark.parametrize("query,body,param", [
    ("", None, "rate_limit"),
    ("rate_limit=0", None, "rate_limit"),
    ("rate_limit=-3", None, "rate_limit"),
    ("rate_limit=abc", None, "rate_limit"),
    ("rate_limit=1.5", None, "rate_limit"),
    ("rate_limit=99999999999", None, "rate_limit"),
    ("", {"rate_limit": True}, "rate_limit"),
    ("", {"rate_limit": [5]}, "rate_limit"),
    ("rate_limit=5&scopes=chat,admin", None, "scopes.1"),
    ("rate_limit=5&expires_at=2001-01-01T00:00:00Z", None, "expires_at"),
    ("rate_limit=5&expires_at=yesterday", None, "expires_at"),
    ("rate_limit=5&expires_in_days=0", None, "expires_in_days"),
    ("rate_limit=5&expires_in_days=nan", None, "expires_in_days"),
    ("rate_limit=5&expires_in_days=3&expires_at=2999-01-01", None, None),
    ("rate_limit=5&colour=blue", None, "colour"),
    # a year past 9999 once in UTC: stored, then a 500 for this and every later listing
    ("rate_limit=5&expires_at=9999-12-31T23:59:59-14:00", None, "expires_at"),
    ("rate_limit=5&expires_in_days=1e-300", None, "expires_in_days"),
    ("", {"rate_limit": 5, "name": None}, None),
    ("", {"rate_limit": None}, None),
    ("", {"rate_limit": 5, "name": "x" * 101}, "name"),
])
async def test_create_rejects_bad_values(api: ApiUnderTest, http: aiohttp.ClientSession,
                                         query: str, body: dict | None, param: str | None) -> None:
    status, _, out = await call(http, "POST", f"{api.url}/api_management/create-api-key/?{query}", headers=AK,
                                json=body)
    assert_error(status, out, 400)
    if param:
        assert out["error"]["param"] == param, out


async def test_create_rejects_bad_bodies(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    url = f"{api.url}/api_management/create-api-key/"
    for data in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        status, _, out = await call(http, "POST", url, headers=AK, data=data)
        assert_error(status, out, 400)
    status, _, out = await call(http, "POST", url, headers=AK, data=b"x" * (api.ctx.settings.max_body_bytes + 1))
    assert_error(status, out, 413)
    listing = (await call(http, "GET", f"{api.url}/api_management/api-keys", headers=AK))[2]
    assert len(listing["data"]) == 1  # only the fixture's key: nothing was created by bad requests


async def test_dates_out_of_range_and_nulls_on_modify(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    base = f"{api.url}/api_management"
    created = await create_key(http, api.url, "rate_limit=5&expires_in_days=2&daily_token_limit=100")
    url = f"{base}/modify-api-key/{created['id']}"
    status, _, out = await call(http, "PUT", url + "?expires_at=0001-01-01T00:00:00%2B14:00", headers=AK)
    assert_error(status, out, 400)
    assert out["error"]["param"] == "expires_at" and "9999" in out["error"]["message"], out
    status, _, listing = await call(http, "GET", f"{base}/api-keys", headers=AK)
    assert status == 200 and len(listing["data"]) == 2, "every key still lists"
    # JSON null removes what can be removed, as "never" / "none" do; a null for anything else is a 400
    status, _, out = await call(http, "PUT", url, headers=AK, json={"expires_at": None, "daily_token_limit": None})
    assert status == 200 and out["expires_at"] is None and out["daily_token_limit"] is None, out
    status, _, out = await call(http, "PUT", url, headers=AK, json={"scopes": None})
    assert_error(status, out, 400)
    assert "scopes cannot be null" in out["error"]["message"] and out["error"]["param"] == "scopes", out
    # a key's own limit of requests in flight: 0 is "no limit", null or "default" puts back the API's default
    status, _, out = await call(http, "PUT", url + "?max_concurrent_requests=0", headers=AK)
    assert status == 200 and out["max_concurrent_requests"] == 0, out
    status, _, out = await call(http, "PUT", url, headers=AK, json={"max_concurrent_requests": None})
    assert status == 200 and out["max_concurrent_requests"] is None, out
    for bad in ("-1", "none", "1.5", "true", "100001"):
        status, _, out = await call(http, "PUT", url + f"?max_concurrent_requests={bad}", headers=AK)
        assert_error(status, out, 400)
        assert out["error"]["param"] == "max_concurrent_requests", out
    for days in ("%C2%B2", "9" * 5000, "0366", "-1", "1.0"):  # a superscript two passes str.isdigit()
        status, _, out = await call(http, "GET", f"{api.url}/v1/usage?days={days}", headers={"api-key": api.key})
        assert_error(status, out, 400)
        assert out["error"]["param"] == "days"


async def test_the_internal_clear_flags_are_unknown_parameters_not_a_way_to_change_a_key(
    api: ApiUnderTest, http: aiohttp.ClientSession
) -> None:
    """``clear_expiry`` and its kin are how a null or "never" reaches the store, not parameters: ``{"clear_expiry":
    true}`` in a modify body removed a key's expiry, and the API description listed the four as parameters. Each is
    now what any unknown parameter is (as a typo is): a 400 naming it, in a body or a query, that changes nothing."""
    base = f"{api.url}/api_management"
    created = await create_key(
        http, api.url, "rate_limit=5&expires_in_days=2&daily_token_limit=100&max_concurrent_requests=3"
                       "&max_stored_bytes_per_day=4096")
    url = f"{base}/modify-api-key/{created['id']}"
    flags = ("clear_expiry", "clear_token_limit", "clear_concurrency", "clear_storage_budget", "rate_limt")
    for flag in flags:
        for method, to, kw in (("PUT", url, {"json": {flag: True}}), ("PUT", f"{url}?{flag}=true", {}),
                               ("POST", f"{base}/create-api-key/?rate_limit=5", {"json": {flag: True}})):
            status, _, out = await call(http, method, to, headers=AK, **kw)
            assert_error(status, out, 400, "invalid_value")
            assert out["error"]["param"] == flag, out
    listed = {k["id"]: k for k in (await call(http, "GET", f"{base}/api-keys", headers=AK))[2]["data"]}
    assert len(listed) == 2, "nothing was created"
    kept = listed[created["id"]]
    assert (kept["expires_at"], kept["daily_token_limit"], kept["max_concurrent_requests"],
            kept["max_stored_bytes_per_day"]) == (created["expires_at"], 100, 3, 4096), kept
    status, _, out = await call(http, "PUT", url + "?expires_at=never&daily_token_limit=none", headers=AK)
    assert status == 200 and out["expires_at"] is None and out["daily_token_limit"] is None, out  # the ways that work
    described = (await call(http, "GET", f"{api.url}/openapi.json"))[2]
    assert not any(flag in str(described) for flag in flags)


async def test_a_keys_own_storage_budget_is_set_shown_put_back_and_bad_values_refused(
    api: ApiUnderTest, http: aiohttp.ClientSession
) -> None:
    """``max_stored_bytes_per_day``: set on create and modify, listed as set (null: the API's default), shown in force
    by the usage endpoints; 0 is "no limit for this key", null and "default" put back the default; anything but an
    integer from 0 to 1 TiB is a 400 naming it, on create and on modify, and changes nothing."""
    base, default = f"{api.url}/api_management", api.ctx.settings.stored_bytes_per_key_per_day
    created = await create_key(http, api.url, "rate_limit=5&max_stored_bytes_per_day=65536")
    assert created["max_stored_bytes_per_day"] == 65536
    url, usage_url = f"{base}/modify-api-key/{created['id']}", f"{base}/api-keys/{created['id']}/usage"
    status, _, usage = await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": created["api_key"]})
    assert status == 200 and usage["stored_bytes_per_day"] == 65536, usage
    status, _, out = await call(http, "PUT", url, headers=AK, json={"max_stored_bytes_per_day": 0})
    assert status == 200 and out["max_stored_bytes_per_day"] == 0, out
    assert (await call(http, "GET", usage_url, headers=AK))[2]["stored_bytes_per_day"] is None  # no limit
    status, _, out = await call(http, "PUT", url + "?max_stored_bytes_per_day=default", headers=AK)
    assert status == 200 and out["max_stored_bytes_per_day"] is None, out
    assert (await call(http, "GET", usage_url, headers=AK))[2]["stored_bytes_per_day"] == default
    status, _, out = await call(http, "PUT", url + f"?max_stored_bytes_per_day={1 << 40}", headers=AK)
    assert status == 200 and out["max_stored_bytes_per_day"] == 1 << 40, out  # the largest
    status, _, out = await call(http, "PUT", url, headers=AK, json={"max_stored_bytes_per_day": None})
    assert status == 200 and out["max_stored_bytes_per_day"] is None, out
    listed = (await call(http, "GET", f"{base}/api-keys", headers=AK))[2]["data"]
    assert {k["id"]: k["max_stored_bytes_per_day"] for k in listed} == {created["id"]: None, listed[0]["id"]: None}
    for bad in ("-1", "none", "1.5", "true", "abc", "1e3", str((1 << 40) + 1), "9" * 5000):
        for method, to in (("PUT", url + "?"), ("POST", f"{base}/create-api-key/?rate_limit=5&")):
            status, _, out = await call(http, method, to + f"max_stored_bytes_per_day={bad}", headers=AK)
            assert_error(status, out, 400)
            assert out["error"]["param"] == "max_stored_bytes_per_day", out
    for bad in (-1, 1.5, True, "many", [1], {"bytes": 1}, 10**30):
        status, _, out = await call(http, "PUT", url, headers=AK, json={"max_stored_bytes_per_day": bad})
        assert_error(status, out, 400)
        assert out["error"]["param"] == "max_stored_bytes_per_day", out
    listed = (await call(http, "GET", f"{base}/api-keys", headers=AK))[2]["data"]
    assert len(listed) == 2 and all(k["max_stored_bytes_per_day"] is None for k in listed), "nothing changed"


async def test_modify_and_delete_errors(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    base = f"{api.url}/api_management"
    for ref in ("sn1-unknown", "0123456789abcdef", "not-a-key", "x" * 300):
        status, _, out = await call(http, "PUT", f"{base}/modify-api-key/{ref}?rate_limit=3", headers=AK)
        assert_error(status, out, 404, "api_key_not_found")
        status, _, out = await call(http, "DELETE", f"{base}/delete-api-key/{ref}", headers=AK)
        assert_error(status, out, 404)
    status, _, out = await call(http, "PUT", f"{base}/modify-api-key/{api.key}", headers=AK)
    assert_error(status, out, 400, "missing_parameter")
    status, _, out = await call(http, "PUT", f"{base}/modify-api-key/{api.key}?rate_limit=0", headers=AK)
    assert_error(status, out, 400)
    status, _, out = await call(http, "GET", f"{base}/api-keys/{api.key}/usage?days=0", headers=AK)
    assert_error(status, out, 400)
    status, _, out = await call(http, "POST", f"{base}/modify-api-key/{api.key}?rate_limit=3", headers=AK)
    assert_error(status, out, 405)
    assert out["error"]["message"] == "Method POST is not allowed here; use PUT."
    status, _, out = await call(http, "DELETE", f"{base}/delete-api-key/{api.key}/extra", headers=AK)
    assert_error(status, out, 404)
    message = out["error"]["message"]
    assert api.key not in message and f"/delete-api-key/{api.key[:10]}.../extra" in message, message



async def test_an_imported_key_is_managed_by_its_secret_as_the_readme_says(api: ApiUnderTest,
                                                                           http: aiohttp.ClientSession) -> None:
    """``{api_key}`` may be the secret or the id: an imported key (the original API's 32 hex digits), which its
    callers use as it is, was a 404 by its secret, so an operator moving over could not modify, rotate or delete
    a leaked one by what the old key file holds (the list shows only its first 6 characters). A prefix names no
    key, and the 404 says how to name one."""
    base = f"{api.url}/api_management"
    legacy = "0123456789abcdef" * 2
    status, _, out = await call(http, "POST", f"{base}/import-api-keys", headers=AK, json={legacy: {"rate_limit": 7}})
    assert status == 200 and out["imported"] == 1, out
    status, _, out = await call(http, "GET", f"{base}/api-keys/{legacy}/usage", headers=AK)
    assert status == 200 and out["name"] == "imported" and out["rate_limit"] == 7, out
    status, _, out = await call(http, "PUT", f"{base}/modify-api-key/{legacy}?rate_limit=9", headers=AK)
    assert status == 200 and out["rate_limit"] == 9, out
    for prefix in (legacy[:6], api.key[:10], f"{api.key[:10]}..."):  # as the key list shows them
        status, _, out = await call(http, "DELETE", f"{base}/delete-api-key/{prefix}", headers=AK)
        assert_error(status, out, 404, "api_key_not_found")
        assert out["error"]["message"] == ("No such API key: name a key by its id (the key list's first column) or "
                                           "its whole secret, not its prefix."), out
    status, _, out = await call(http, "DELETE", f"{base}/delete-api-key/{legacy}", headers=AK)
    assert status == 200 and out["deleted"] is True, out
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": legacy})
    assert_error(status, out, 401, "invalid_api_key")

async def test_a_parameter_in_both_the_query_and_the_body_is_refused(api: ApiUnderTest,
                                                                     http: aiohttp.ClientSession) -> None:
    """``?rate_limit=60`` with ``-d '{"rate_limit": 600}'`` made a key of 600 a minute, the query's 60 dropped in
    silence (the body won). Which was meant cannot be told: a 400 naming it, and no key made or changed."""
    base = f"{api.url}/api_management"
    before = len((await call(http, "GET", f"{base}/api-keys", headers=AK))[2]["data"])
    status, _, out = await call(http, "POST", f"{base}/create-api-key/?rate_limit=60", headers=AK,
                                json={"rate_limit": 600, "name": "both"})
    assert_error(status, out, 400, "invalid_request")
    assert out["error"]["param"] == "rate_limit" and "both the query string and the JSON body" in out["error"]["message"]
    assert len((await call(http, "GET", f"{base}/api-keys", headers=AK))[2]["data"]) == before, "no key made"
    made = await create_key(http, api.url, "rate_limit=5", json={"name": "apart"})  # different names: both taken
    assert (made["rate_limit"], made["name"]) == (5, "apart"), made
    status, _, out = await call(http, "PUT", f"{base}/modify-api-key/{made['id']}?scopes=chat", headers=AK,
                                json={"scopes": ["availability"]})
    assert_error(status, out, 400, "invalid_request")
    assert out["error"]["param"] == "scopes", out


async def test_an_import_entry_that_is_no_object_is_named_by_its_place(api: ApiUnderTest,
                                                                       http: aiohttp.ClientSession) -> None:
    """``{"<key>": 60}`` (the rate limit alone, not ``{"rate_limit": 60}``) was "Request body must be a JSON object."
    about a body that is one: the entry at fault, by its place in the file (never its key), and the shape wanted."""
    legacy = "fedcba9876543210" * 2
    status, _, out = await call(http, "POST", f"{api.url}/api_management/import-api-keys", headers=AK,
                                json={"0123456789abcdef" * 2: {"rate_limit": 5}, legacy: 60})
    assert_error(status, out, 400, "invalid_value")
    assert out["error"]["param"] == "1" and '{"rate_limit": N, "usage": M}' in out["error"]["message"], out
    assert legacy not in json.dumps(out), out
    status, _, listed = await call(http, "GET", f"{api.url}/api_management/api-keys", headers=AK)
    assert not [k for k in listed["data"] if k["name"] == "imported"], "nothing imported"


async def test_keys_imported_from_one_file_are_told_apart_in_the_list_and_the_log(
        api: ApiUnderTest, http: aiohttp.ClientSession, logs: list[str]) -> None:
    """An operator's key file whose keys all start alike (``team01...``) was listed as ``team01`` three times, named
    ``imported`` each, and logged as "3 new": which id was which key of the file could not be told. The list shows
    an imported key's first 6 and last 4 characters, and the log line names each key's id; never a secret."""
    base = f"{api.url}/api_management"
    secrets = [f"team01{i:022d}{tail}" for i, tail in enumerate(("aaaa", "bbbb", "cccc"))]
    status, _, out = await call(http, "POST", f"{base}/import-api-keys", headers=AK, json={secrets[0]: {"rate_limit": 5}})
    assert status == 200 and out["imported"] == 1, out
    status, _, out = await call(http, "POST", f"{base}/import-api-keys", headers=AK,
                                json={s: {"rate_limit": 5} for s in secrets})
    assert (status, out["imported"], out["already_here"]) == (200, 2, 1), out
    status, _, listed = await call(http, "GET", f"{base}/api-keys", headers=AK)
    imported = sorted((k for k in listed["data"] if k["name"] == "imported"), key=lambda k: k["prefix"])
    assert [k["prefix"] for k in imported] == ["team01...aaaa", "team01...bbbb", "team01...cccc"], listed
    line = next(m for m in logs if "api keys imported: 2 new" in m)
    first = next(k["id"] for k in imported if k["prefix"] == "team01...aaaa")
    assert all(k["id"] in line for k in imported if k["id"] != first) and f"already here ids={first}" in line, line
    shown = json.dumps(listed) + "".join(logs)
    assert not any(s in shown for s in secrets), "no secret listed or logged"


async def test_admin_gate(api: ApiUnderTest, http: aiohttp.ClientSession, logs: list[str]) -> None:
    url = f"{api.url}/api_management/create-api-key/?rate_limit=5"
    status, _, out = await call(http, "POST", url, headers={"Authorization": f"Bearer {ADMIN}"})
    assert_error(status, out, 401, "invalid_admin_key")  # the header an SDK sends: said to be the wrong one
    assert out["error"]["message"].startswith("Missing admin-key header: send this API's ADMIN_KEY as "), out
    assert "is the variable holding the key set?" in out["error"]["message"], out  # curl -H "admin-key: $UNSET"
    wrong = "wrong-admin-key-attempt-123"
    for _ in range(9):
        status, _, out = await call(http, "POST", url, headers={"admin-key": wrong})
        assert_error(status, out, 401, "invalid_admin_key")
    assert out["error"]["message"].startswith("Wrong admin key: the admin-key header is not this API's ADMIN_KEY"), out
    assert "10 failures a minute" in out["error"]["message"], out
    # ten failures from this address in a minute: even the right key is refused for now
    status, headers, out = await call(http, "POST", url, headers=AK)
    assert_error(status, out, 429, "admin_rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert sum("admin auth failed" in line for line in logs) == 10
    assert not any(wrong in line or ADMIN in line for line in logs)


async def test_admin_guesses_sent_at_once_are_compared_ten_at_most(api: ApiUnderTest,
                                                                     http: aiohttp.ClientSession) -> None:
    """Failures were counted after the compare, so guesses sent together all found the gate open (68 of 300
    were compared). Each attempt now takes its slot first; a right key gives it back, so an admin's own calls,
    however many, never lock anyone out."""
    import asyncio

    url = f"{api.url}/api_management/api-keys"
    for _ in range(25):  # right keys, one after another: each gives its slot back
        assert (await call(http, "GET", url, headers=AK))[0] == 200
    results = await asyncio.gather(*(call(http, "GET", url, headers={"admin-key": f"wrong-guess-{i:04d}-xxxxxxxx"})
                                     for i in range(40)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses.count(401) == 10 and statuses.count(429) == 30, statuses
    status, _, out = await call(http, "GET", url, headers=AK)
    assert_error(status, out, 429, "admin_rate_limited")  # locked: the right key too, for now


async def test_admin_disabled_without_admin_key(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    """An operator moving from the original API set its admin key in .env.validator, as its doc said: the 403
    says the setting is the API's (it said only "set ADMIN_KEY", which they had)."""
    api.ctx.settings.admin_key = None
    for method, path in (("POST", "create-api-key/?rate_limit=5"), ("GET", "api-keys"),
                         ("DELETE", f"delete-api-key/{api.key}")):
        status, _, out = await call(http, method, f"{api.url}/api_management/{path}", headers=AK)
        assert_error(status, out, 403, "admin_disabled")
        assert "set ADMIN_KEY in the API's settings (.env.api, not the validator's" in out["error"]["message"]


def test_admin_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check must go through hmac.compare_digest on equal-length digests (no early exit, no length leak)."""
    import hmac

    from api import auth

    seen: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    assert auth.admin_key_matches("s3cret", "s3cret")
    assert not auth.admin_key_matches("s3cre", "s3cret")
    assert not auth.admin_key_matches("", "s3cret")
    assert seen == [(32, 32)] * 3


async def test_expiry_takes_effect(api: ApiUnderTest, http: aiohttp.ClientSession) -> None:
    created = await create_key(http, api.url, "rate_limit=5")
    soon = time.time() + 1.0
    status, _, _ = await call(http, "PUT", f"{api.url}/api_management/modify-api-key/{created['id']}",
                              headers=AK, json={"expires_at": soon})
    assert status == 200
    hdr = {"api-key": created["api_key"]}
    assert (await call(http, "GET", f"{api.url}/v1/usage", headers=hdr))[0] == 200
    await _sleep_until(soon + 0.05)
    status, _, out = await call(http, "GET", f"{api.url}/v1/usage", headers=hdr)
    assert_error(status, out, 401, "expired_api_key")


async def _sleep_until(t: float) -> None:
    import asyncio

    await asyncio.sleep(max(0.0, t - time.time()))


async def test_admin_routes_without_parameters_refuse_a_query_string(api: ApiUnderTest,
                                                                      http: aiohttp.ClientSession) -> None:
    """Rotating, deleting and importing keys take nothing from the query string, and listing them only its own
    filters; each took anything in silence: ``GET /api_management/api-keys?nmae=team-a`` listed every key as if
    filtered, ``?dry_run=1`` on a delete deleted it. A 400 naming the parameter now, as on create and modify, and
    nothing is done."""
    created = await create_key(http, api.url, "rate_limit=10&name=team-a")
    key, base = created["api_key"], f"{api.url}/api_management"
    for method, url, body in (("GET", f"{base}/api-keys?nmae=team-a", None),
                              ("POST", f"{base}/rotate-api-key/{key}?dry_run=1", None),
                              ("DELETE", f"{base}/delete-api-key/{key}?dry_run=1", None),
                              ("POST", f"{base}/import-api-keys?dry_run=1", {"a" * 32: {"rate_limit": 5}})):
        status, _, out = await call(http, method, url, headers=AK, json=body)
        assert_error(status, out, 400, "invalid_value")
        assert out["error"]["param"] == url.split("?")[1].split("=")[0], (url, out)
    status, _, _ = await call(http, "GET", f"{api.url}/v1/usage", headers={"api-key": key})
    assert status == 200, "the key was neither rotated nor deleted"
    status, _, listed = await call(http, "GET", f"{base}/api-keys", headers=AK)
    assert status == 200 and all(k["name"] != "imported" for k in listed["data"]), "nothing was imported"


async def test_an_admin_body_that_never_ends_is_a_408_not_a_hang(api: ApiUnderTest,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The admin routes read their body once outside the API's body reader, with no time limit: a chunked body
    whose framing broke after its headers (aiohttp never ends such a body) held a create-api-key forever. It is the
    408 ``request_timeout`` every other route gives (its limit cut from 30 s to 0.5 s here)."""
    import asyncio

    import shared.http

    monkeypatch.setitem(shared.http.read_raw.__kwdefaults__, "timeout", 0.5)
    host, port = api.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /api_management/create-api-key HTTP/1.1\r\nHost: x\r\nadmin-key: {ADMIN}\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"zz\r\nabc\r\n0\r\n\r\n")  # a chunk size that is not hex
    started = time.monotonic()
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
        rest = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert b'"code":"request_timeout"' in rest and time.monotonic() - started < 3
