"""``GET /api_management/api-keys`` filtered (``name``, ``scope``, ``status``) and paged (``limit``, ``after``,
``order``, answered with OpenAI's ``first_id``, ``last_id`` and ``has_more``), through the real API on a SQLite
file and on Redis (``REDIS_URL``). Before, it answered every key, each with its usage read from the store, and
took no parameter: an operator with thousands of keys could neither page through them nor ask for one team's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ADMIN, ApiUnderTest, Script, apis_on_one_store, call

STORES = ["sqlite", "redis"]
LIST = "/api_management/api-keys"


async def make(api: ApiUnderTest, **fields: Any) -> dict[str, Any]:
    status, made = await call(api, "POST", "/api_management/create-api-key/", headers=ADMIN,
                              body={"rate_limit": 10, **fields})
    assert status == 200, made
    return made


async def listed(api: ApiUnderTest, query: str) -> dict[str, Any]:
    status, page = await call(api, "GET", f"{LIST}?{query}", headers=ADMIN)
    assert status == 200, page
    return page


async def every_page(api: ApiUnderTest, query: str) -> list[list[str]]:
    """The ids of each page, following ``last_id`` while ``has_more``."""
    pages, after = [], ""
    while True:
        page = await listed(api, query + after)
        ids = [k["id"] for k in page["data"]]
        assert (page["first_id"], page["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None)), page
        pages.append(ids)
        if not page["has_more"]:
            return pages
        after = f"&after={page['last_id']}"


@pytest.mark.parametrize("store", STORES)
async def test_pages_follow_one_another_in_creation_order(tmp_path: Path, store: str) -> None:
    async with apis_on_one_store(tmp_path, store, 1, Script([])) as (api,):
        for n in range(4):
            await make(api, name=f"k{n}")
        every = [k["id"] for k in (await listed(api, ""))["data"]]  # no limit: every key, as before
        assert len(every) == 5 and (await listed(api, ""))["has_more"] is False

        assert await every_page(api, "limit=2") == [every[:2], every[2:4], every[4:]]
        assert await every_page(api, "limit=5") == [every]
        assert await every_page(api, "limit=2&order=desc") == [every[::-1][:2], every[::-1][2:4], every[::-1][4:]]

        # the usage totals are read for the page's keys alone
        reads: list[str] = []
        report = api.ctx.usage.report

        async def counted(key_id: str, **kw: Any) -> Any:
            reads.append(key_id)
            return await report(key_id, **kw)

        api.ctx.usage.report = counted  # type: ignore[method-assign]
        page = await listed(api, "limit=2")
        assert reads == every[:2] and all(k["usage"] is not None for k in page["data"])

        # a key made while an admin pages through comes on a later page, not before where it stands
        first = await listed(api, "limit=3")
        late = await make(api, name="late")
        rest = await listed(api, f"limit=3&after={first['last_id']}")
        assert [k["id"] for k in rest["data"]] == [*every[3:], late["id"]] and rest["has_more"] is False


@pytest.mark.parametrize("store", STORES)
async def test_filters_by_name_scope_and_status(tmp_path: Path, store: str) -> None:
    async with apis_on_one_store(tmp_path, store, 1, Script([])) as (api,):
        a1, a2 = await make(api, name="team-a", scopes=["chat"]), await make(api, name="team-a")
        b = await make(api, name="team-b", scopes=["web_retrieval"])
        gone = await make(api, name="team-b", scopes=["chat"])
        status, _ = await call(api, "PUT", f"/api_management/modify-api-key/{gone['id']}", headers=ADMIN,
                               body={"expires_at": "2020-01-01"})  # expired: suspended, still listed
        assert status == 200

        def ids(page: dict[str, Any]) -> list[str]:
            return [k["id"] for k in page["data"]]

        assert ids(await listed(api, "name=team-a")) == [a1["id"], a2["id"]]
        assert ids(await listed(api, "name=team-b&status=active")) == [b["id"]]
        assert ids(await listed(api, "status=expired")) == [gone["id"]]
        assert gone["id"] not in ids(await listed(api, "status=active"))
        web = ids(await listed(api, "scope=web_retrieval"))
        assert b["id"] in web and a1["id"] not in web and gone["id"] not in web and a2["id"] in web
        # a filter with a page: after places itself among every key, has_more counts the matching ones only
        page = await listed(api, "name=team-a&limit=1")
        assert ids(page) == [a1["id"]] and page["has_more"] is True
        page = await listed(api, f"name=team-a&limit=1&after={a1['id']}")
        assert ids(page) == [a2["id"]] and page["has_more"] is False
        assert ids(await listed(api, "name=nobody")) == []


@pytest.mark.parametrize("store", STORES)
async def test_bad_list_parameters_are_400s_naming_them(tmp_path: Path, store: str) -> None:
    async with apis_on_one_store(tmp_path, store, 1, Script([])) as (api,):
        made = await make(api, name="x")
        await call(api, "DELETE", f"/api_management/delete-api-key/{made['id']}", headers=ADMIN)
        for query, param, code in (
                ("limit=0", "limit", "integer_below_min_value"), ("limit=1001", "limit", "integer_above_max_value"),
                ("limit=two", "limit", "invalid_value"), ("status=revoked", "status", "invalid_value"),
                ("scope=admin", "scope", "invalid_value"), ("order=up", "order", "invalid_value"),
                ("name=", "name", "empty_string"), ("nmae=x", "nmae", "invalid_value"),
                (f"after={made['id']}", "after", "invalid_value"), (f"after={api.key}", "after", "invalid_value")):
            status, out = await call(api, "GET", f"{LIST}?{query}", headers=ADMIN)
            assert status == 400 and out["error"]["code"] == code, (query, out)  # OpenAI's codes for a bound
            assert out["error"]["param"] == param, (query, out)
        assert api.key not in out["error"]["message"], "a secret given as after is never echoed"
        assert made["id"] in (await call(api, "GET", f"{LIST}?after={made['id']}", headers=ADMIN))[1]["error"][
            "message"], "a deleted key's id is named"
        status, out = await call(api, "GET", f"{LIST}?limit=1", headers={"admin-key": "wrong"})
        assert status == 401, out
