"""Admin routes: API key management (``admin-key`` header)."""

from __future__ import annotations

from aiohttp import web

from api.auth import check_admin
from api.chat import CTX
from shared.errors import ApiError
from shared.http import json_response
from shared.store.base import StoreUnavailable

MAX_RATE_LIMIT = 1_000_000


def parse_rate_limit(value: str | None) -> int:
    if value is None or value == "":
        raise ApiError(400, "rate_limit is required (requests per minute, a positive integer).",
                       param="rate_limit", code="missing_parameter")
    try:
        limit = int(value)
    except ValueError:
        raise ApiError(400, "rate_limit must be a positive integer.", param="rate_limit", code="invalid_value") from None
    if not 1 <= limit <= MAX_RATE_LIMIT:
        raise ApiError(400, f"rate_limit must be between 1 and {MAX_RATE_LIMIT}.", param="rate_limit",
                       code="invalid_value")
    return limit


def _admin_key(request: web.Request) -> str | None:
    secret = request.app[CTX].settings.admin_key
    return secret.get_secret_value() if secret else None


async def create_api_key(request: web.Request) -> web.Response:
    check_admin(request, _admin_key(request))
    limit = parse_rate_limit(request.query.get("rate_limit"))
    try:
        secret, record = await request.app[CTX].store.create_key(limit, name=request.query.get("name"))
    except StoreUnavailable:
        raise ApiError(503, "The key store is unreachable; try again shortly.", code="store_unavailable") from None
    return json_response({"message": "API key created", "api_key": secret, "id": record.id,
                          "rate_limit": record.rate_limit})
