"""``/miner_availabilities/*`` on the API: the validator's availability, served from the cache."""

from __future__ import annotations

from aiohttp import web

from api.auth import authenticate
from api.chat import CTX
from shared.availability_query import parse_k, parse_task, read_uid_list
from shared.http import json_response


async def miner_availabilities(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    uids = await read_uid_list(request)
    entries = ctx.availability.entries if ctx.availability else {}
    keys = sorted(entries) if uids is None else uids
    return json_response({str(uid): entries.get(uid) for uid in keys})


async def get_available_miners(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    k = parse_k(request.query.get("k"))
    task, model = parse_task(request.query.get("task")), request.query.get("model") or None
    cache = ctx.availability
    if cache is None:
        return json_response([])
    uids = [uid for uid in sorted(cache.entries) if cache.matches(uid, task, model)]
    return json_response(uids[:k])
