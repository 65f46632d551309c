"""``/miner_availabilities/*`` on the API: the validator's availability, served from the cache."""

from __future__ import annotations

from aiohttp import web

from api.auth import authenticate
from api.chat import CTX
from shared.errors import ApiError
from shared.http import json_response, read_json

MAX_K = 256


def _uids(data: object) -> list[int] | None:
    if data is None:
        return None
    if not isinstance(data, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in data):
        raise ApiError(400, "Body must be a JSON array of non-negative integer uids, or null.", code="invalid_uids")
    if len(data) > 4096:
        raise ApiError(400, "At most 4096 uids per request.", code="invalid_uids")
    return data


async def miner_availabilities(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    raw = await request.read()
    uids = _uids(await read_json(request)) if raw.strip() else None
    entries = ctx.availability.entries if ctx.availability else {}
    keys = sorted(entries) if uids is None else uids
    return json_response({str(uid): entries.get(uid) for uid in keys})


def _k(value: str | None) -> int:
    if not value:
        return 10
    try:
        k = int(value)
    except ValueError:
        raise ApiError(400, "k must be an integer.", param="k", code="invalid_value") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be between 1 and {MAX_K}.", param="k", code="invalid_value")
    return k


async def get_available_miners(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    k = _k(request.query.get("k"))
    task, model = request.query.get("task") or None, request.query.get("model") or None
    cache = ctx.availability
    if cache is None:
        return json_response([])
    uids = [uid for uid in sorted(cache.entries) if cache.matches(uid, task, model)]
    return json_response(uids[:k])
