"""``/miner_availabilities/*`` on the API: the validator's availability, served from the cache."""

from __future__ import annotations

from aiohttp import web

from api.auth import authenticate
from api.chat import CTX
from api.selection import candidate_miners, known_tasks
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
    """Up to ``k`` uids, lowest first, that selection would race for ``task`` and ``model``.

    It listed every uid in the cache: uids that had left the metagraph or stopped serving an axon (a
    chat naming them is a 400), and, with the validator down, availability hours old while selection
    had fallen back to every serving miner. ``x-sn1-availability`` says which: ``fresh`` data, or
    ``unknown`` (no fresh data: every serving miner, task and model unchecked)."""
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    k = parse_k(request.query.get("k"))
    cache = ctx.availability
    task, model = parse_task(request.query.get("task"), known_tasks(cache)), request.query.get("model") or None
    pool = candidate_miners(ctx.metagraph.snapshot, cache, task=task, model=model,
                            self_hotkey=ctx.client.signer.hotkey)
    state = "fresh" if cache is not None and cache.fresh() else "unknown"
    return json_response(sorted(n.uid for n in pool)[:k], headers={"x-sn1-availability": state})
