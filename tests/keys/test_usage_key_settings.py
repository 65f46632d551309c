"""A key's holder reads what its key may do and until when from ``GET /v1/usage``: its scopes, its models, its
expiry, its prefix and when it was made, as the operator set them, through the real API on a SQLite file and on
Redis (``REDIS_URL``). Before, the first a holder heard of an expiry was the 401 ``expired_api_key``, and of a
missing scope the 403 (the gateways it competes with show a key's permissions and expiry to its holder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import ADMIN, Script, apis_on_one_store, call

STORES = ["sqlite", "redis"]


@pytest.mark.parametrize("store", STORES)
async def test_a_key_reads_its_own_scopes_models_and_expiry(tmp_path: Path, store: str) -> None:
    async with apis_on_one_store(tmp_path, store, 1, Script([])) as (api,):
        status, made = await call(api, "POST", "/api_management/create-api-key/", headers=ADMIN, body={
            "rate_limit": 30, "name": "team-a", "scopes": ["chat", "availability"],
            "allowed_models": ["m1", "m2"], "expires_at": "2031-05-01T12:00:00Z"})
        assert status == 200, made
        status, usage = await call(api, "GET", "/v1/usage", key=made["api_key"])
        assert status == 200, usage
        assert usage["scopes"] == ["chat", "availability"]
        assert usage["allowed_models"] == ["m1", "m2"]
        assert usage["expires_at"] == "2031-05-01T12:00:00Z"
        assert usage["prefix"] == made["prefix"] and made["api_key"].startswith(usage["prefix"])
        assert usage["created_at"] == made["created_at"]
        assert made["api_key"] not in str(usage), "never the secret"

        # a change by the operator is what the holder reads next; the admin's view of the key's usage says the same
        status, _ = await call(api, "PUT", f"/api_management/modify-api-key/{made['id']}", headers=ADMIN,
                               body={"expires_at": None, "allowed_models": ["m3"], "scopes": ["chat"]})
        assert status == 200
        for path, headers in (("/v1/usage", {"api-key": made["api_key"]}),
                              (f"/api_management/api-keys/{made['id']}/usage", ADMIN)):
            status, usage = await call(api, "GET", path, headers=headers)
            assert status == 200, usage
            assert (usage["scopes"], usage["allowed_models"], usage["expires_at"]) == (["chat"], ["m3"], None), path


@pytest.mark.parametrize("store", STORES)
async def test_a_key_with_every_scope_and_model_says_so(tmp_path: Path, store: str) -> None:
    async with apis_on_one_store(tmp_path, store, 1, Script([])) as (api,):
        status, usage = await call(api, "GET", "/v1/usage")
        assert status == 200, usage
        assert usage["scopes"] == ["chat", "web_retrieval", "availability"]
        assert usage["allowed_models"] is None and usage["expires_at"] is None  # any model, never expires
