"""Caller authentication: the API key from ``api-key``, ``Authorization: Bearer`` or ``x-api-key``.

Keys are looked up by their SHA-256; the secret itself is never stored or logged.
The admin key is compared in constant time.
"""

from __future__ import annotations

import hmac
import time

from aiohttp import web

from shared.errors import ApiError
from shared.store.base import KeyRecord, Store, StoreUnavailable, hash_key

KEY_RECORD = "api_key_record"
MAX_KEY_LENGTH = 256


def extract_api_key(headers: "web.BaseRequest.headers") -> str | None:  # type: ignore[name-defined]
    key = headers.get("api-key") or headers.get("x-api-key")
    if not key:
        auth = headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer":
            key = token.strip()
    return key or None


async def authenticate(request: web.Request, store: Store, *, scope: str) -> KeyRecord:
    key = extract_api_key(request.headers)
    if key is None:
        raise ApiError(
            401,
            "Missing API key. Send it as 'Authorization: Bearer <key>', 'api-key: <key>' or 'x-api-key: <key>'.",
            code="missing_api_key",
        )
    if len(key) > MAX_KEY_LENGTH:
        raise ApiError(401, "Invalid API key.", code="invalid_api_key")
    try:
        record = await store.get_key(hash_key(key))
    except StoreUnavailable:
        raise ApiError(503, "The key store is unreachable; try again shortly.", code="store_unavailable") from None
    if record is None:
        raise ApiError(401, "Invalid API key.", code="invalid_api_key")
    if record.expired(time.time()):
        raise ApiError(401, "This API key has expired.", code="expired_api_key")
    if scope not in record.scopes:
        raise ApiError(403, f"This API key lacks the '{scope}' scope.", code="insufficient_scope")
    request[KEY_RECORD] = record
    return record


def check_admin(request: web.Request, admin_key: str | None) -> None:
    """Constant-time admin check; with no ADMIN_KEY configured, admin routes are closed."""
    if not admin_key:
        raise ApiError(403, "Admin endpoints are disabled: set ADMIN_KEY to enable them.", code="admin_disabled")
    given = request.headers.get("admin-key", "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), admin_key.encode()):
        raise ApiError(401, "Invalid or missing admin-key header.", code="invalid_admin_key")
