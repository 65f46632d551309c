"""``/miner_availabilities/*`` on the API: the validator's availability, served from the cache.

Availability is the miners' own claim, as the validator's poll found it; whether a miner answers this API's
requests is this process's own knowledge (``miner_health``). ``get_available_miners`` lists the miners a chat
would race, so it leaves out those set aside; ``miner_availabilities`` gives the validator's entries as they are
(its shape is the original API's). Both name the uids set aside in a header, ``x-sn1-set-aside``."""

from __future__ import annotations

from aiohttp import web

from api.auth import authenticate
from api.chat import CTX
from api.selection import candidate_miners, known_tasks
from shared.availability_query import AVAILABLE_MINERS_QUERY, parse_k, parse_task, read_uid_list
from shared.http import json_response, refuse_query

SET_ASIDE = "x-sn1-set-aside"  # the uids this API process has set aside, of those the answer is about


async def miner_availabilities(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    uids = await read_uid_list(request)
    entries = ctx.availability.entries if ctx.availability else {}
    keys = sorted(entries) if uids is None else uids
    snapshot = ctx.metagraph.snapshot
    aside = ctx.miner_health.aside_uids(map(snapshot.by_uid, keys)) if ctx.miner_health else []
    return json_response({str(uid): entries.get(uid) for uid in keys}, headers={SET_ASIDE: joined(aside)})


async def get_available_miners(request: web.Request) -> web.Response:
    """Up to ``k`` uids, lowest first, that selection would race for ``task`` and ``model``: not those set aside
    for failing this API's requests (named in ``x-sn1-set-aside``), which it listed while no chat raced them.

    It listed every uid in the cache: uids that had left the metagraph or stopped serving an axon (a
    chat naming them is a 400), and, with the validator down, availability hours old while selection
    had fallen back to every serving miner. ``x-sn1-availability`` says which: ``fresh`` data, or
    ``unknown`` (no fresh data: every serving miner, task and model unchecked)."""
    ctx = request.app[CTX]
    await authenticate(request, ctx.store, scope="availability")
    refuse_query(request, AVAILABLE_MINERS_QUERY)
    k = parse_k(request.query.get("k"))
    cache = ctx.availability
    task, model = parse_task(request.query.get("task"), known_tasks(cache)), request.query.get("model") or None
    pool = candidate_miners(ctx.metagraph.snapshot, cache, task=task, model=model,
                            self_hotkey=ctx.client.signer.hotkey)
    state = "fresh" if cache is not None and cache.fresh() else "unknown"
    health = ctx.miner_health
    aside = health.aside_uids(pool) if health else []
    listed = sorted(n.uid for n in (health.answering(pool) if health else pool))[:k]
    return json_response(listed, headers={"x-sn1-availability": state, SET_ASIDE: joined(aside)})


def joined(uids: list[int]) -> str:
    """A header's list of uids: ``3,7`` (empty: none)."""
    return ",".join(map(str, uids))
