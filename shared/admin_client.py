"""A typed client for the API's key-management endpoints, for operators' own scripts.

    async with AdminClient("http://127.0.0.1:42170", admin_key) as admin:
        created = await admin.create_key(60, name="team-a", scopes=["chat"])
        print(created.api_key)            # shown once
        for key in await admin.list_keys():
            print(key.id, key.rate_limit, key.usage.requests)

Input is validated with the same model the server uses (``KeyParams``) before
anything is sent, and answers are parsed into the server's own wire models;
every non-2xx answer raises ``AdminError`` with the server's status, code and message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ValidationError

from shared.errors import first_problem
from shared.keys_wire import (
    CLEARABLE,
    DEFAULTABLE,
    CreatedKeyOut,
    DeletedKeyOut,
    ImportedKeysOut,
    KeyListOut,
    KeyListQuery,
    KeyOut,
    KeyParams,
    RotatedKeyOut,
    UsageOut,
)
from shared.url_text import mask_credentials

M = TypeVar("M", bound=BaseModel)


class AdminError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.code = code


def validated(model: type[M], given: dict[str, Any]) -> M:
    """``given`` as the server reads it, or the ``AdminError`` it would answer, before anything is sent."""
    try:
        return model.model_validate(given)
    except ValidationError as e:
        where, why = first_problem(e)
        raise AdminError(0, f"invalid {where or 'parameters'}: {why}", code="invalid_value") from None


def key_params(**fields: Any) -> dict[str, Any]:
    """Validate parameters locally (same rules as the server) and return the JSON body to send."""
    params = validated(KeyParams, {k: v for k, v in fields.items() if v is not None})
    body = params.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    for name, word in {**CLEARABLE, **DEFAULTABLE}.items():
        if params.cleared(name):
            body[name] = word
    return body


class AdminClient:
    def __init__(self, base_url: str, admin_key: str, *, timeout: float = 30.0,
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"admin-key": admin_key}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def create_key(
        self, rate_limit: int, *, name: str | None = None, scopes: list[str] | None = None,
        allowed_models: list[str] | None = None, expires_at: datetime | float | None = None,
        expires_in_days: float | None = None, daily_token_limit: int | None = None,
        max_concurrent_requests: int | None = None, max_stored_bytes_per_day: int | None = None,
    ) -> CreatedKeyOut:
        body = key_params(rate_limit=rate_limit, name=name, scopes=scopes, allowed_models=allowed_models,
                          expires_at=expires_at, expires_in_days=expires_in_days, daily_token_limit=daily_token_limit,
                          max_concurrent_requests=max_concurrent_requests,
                          max_stored_bytes_per_day=max_stored_bytes_per_day)
        return await self._request("POST", "/api_management/create-api-key/", CreatedKeyOut, json=body)

    async def modify_key(
        self, key: str, *, rate_limit: int | None = None, name: str | None = None, scopes: list[str] | None = None,
        allowed_models: list[str] | None = None, expires_at: datetime | float | str | None = None,
        expires_in_days: float | None = None, daily_token_limit: int | str | None = None,
        max_concurrent_requests: int | str | None = None, max_stored_bytes_per_day: int | str | None = None,
    ) -> KeyOut:
        """``key`` is the secret or the key's id; ``expires_at="never"`` removes an expiry,
        ``daily_token_limit="none"`` the daily token limit, ``max_concurrent_requests="default"`` the key's own
        concurrency limit and ``max_stored_bytes_per_day="default"`` its own daily storage budget (the API's
        default applies again)."""
        body = key_params(rate_limit=rate_limit, name=name, scopes=scopes, allowed_models=allowed_models,
                          expires_at=expires_at, expires_in_days=expires_in_days, daily_token_limit=daily_token_limit,
                          max_concurrent_requests=max_concurrent_requests,
                          max_stored_bytes_per_day=max_stored_bytes_per_day)
        return await self._request("PUT", f"/api_management/modify-api-key/{key}", KeyOut, json=body)

    async def rotate_key(self, key: str) -> RotatedKeyOut:
        """A new secret for the key (``.api_key``, shown once); the old one stops working at once."""
        return await self._request("POST", f"/api_management/rotate-api-key/{key}", RotatedKeyOut)

    async def import_keys(self, legacy_file: dict[str, Any]) -> ImportedKeysOut:
        """Import the subnet's original API's key file (its JSON, as it is): its keys keep working."""
        return await self._request("POST", "/api_management/import-api-keys", ImportedKeysOut, json=legacy_file)

    async def delete_key(self, key: str) -> DeletedKeyOut:
        return await self._request("DELETE", f"/api_management/delete-api-key/{key}", DeletedKeyOut)

    async def list_keys(self, *, name: str | None = None, scope: str | None = None,
                        status: str | None = None) -> list[KeyOut]:
        """Every key (of ``name``, with ``scope``, ``active`` or ``expired``: those only), oldest first."""
        return (await self.key_page(name=name, scope=scope, status=status)).data

    async def key_page(self, *, limit: int | None = None, after: str | None = None, order: str | None = None,
                       name: str | None = None, scope: str | None = None, status: str | None = None) -> KeyListOut:
        """A page of ``limit`` keys after the key ``after`` (the last page's ``last_id``); ``has_more`` says
        whether another follows. Without ``limit``, every key that matches."""
        given = {k: v for k, v in {"limit": limit, "after": after, "order": order, "name": name, "scope": scope,
                                   "status": status}.items() if v is not None}
        validated(KeyListQuery, given)
        return await self._request("GET", "/api_management/api-keys", KeyListOut,
                                   params={k: str(v) for k, v in given.items()})

    async def usage(self, key: str, *, days: int = 30) -> UsageOut:
        return await self._request("GET", f"/api_management/api-keys/{key}/usage", UsageOut,
                                   params={"days": str(days)})

    async def _request(self, method: str, path: str, model: type[M], **kw: Any) -> M:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, self.base_url + path, headers=self._headers, **kw) as r:
                raw = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError) as e:
            shown = mask_credentials(self.base_url)  # a proxy's basic auth (user:password@) is never printed
            said = f"cannot reach the API at {shown}: {e.__class__.__name__} {str(e).replace(self.base_url, shown)}"
            raise AdminError(0, said.strip(), code="unreachable") from None
        if status >= 400:
            raise _error(status, raw, mask_credentials(self.base_url))
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            raise AdminError(status, f"unexpected answer from the API: {e.errors()[0]['msg']}") from None


def _error(status: int, raw: bytes, base_url: str) -> AdminError:
    """The server's error as its status, code and message. A route it does not have (``not_found``, not
    ``api_key_not_found``) is a URL that names no sn1 API: the validator's port (8094) beside the API's, or a
    proxy's path prefix left out, answered "no such endpoint here" and no word on which setting to look at."""
    try:
        err = KeyErrorBody.model_validate_json(raw).error
    except ValidationError:
        err = None
    message = err.message if err else raw[:200].decode("utf-8", "replace") or "no body"
    if status == 404 and (err is None or err.code == "not_found"):
        message += (f" Is {base_url} the sn1 API (its API_PORT, 42170 by default)? Not the validator's port nor a "
                    "miner's: set --api or SN1_API_URL")
    return AdminError(status, message, err.code if err else None)


class _ErrorDetail(BaseModel):
    message: str
    code: str | None = None


class KeyErrorBody(BaseModel):
    error: _ErrorDetail
