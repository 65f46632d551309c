"""Background responses (``background: true``): answered after the request that asked for them.

The request is answered at once with the response ``queued``, stored as pending;
a task of this worker then races it as any response (its web search too) and
settles the stored record (``completed``, ``incomplete`` or ``failed``), unless
``POST /v1/responses/{id}/cancel`` (on any worker) settled it ``cancelled``
first: the store settles a pending response once, and the task, which asks
the store every ``WATCH_EVERY_S`` whether it is still pending, then stops its
miners (at once when the cancel came to its own worker). Callers poll
``GET /v1/responses/{id}``, as OpenAI's guide has it. A record still pending
past its deadline (the process running it died) reads as ``failed``; a worker
that shuts down gives the ones it runs ``SHUTDOWN_GRACE_S`` to finish, then
fails them. Streaming one is not served.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger

from api.auth import store_call
from api.context import ApiContext
from api.responses_state import PENDING, Keeping, extend_conversation, failed, item_ids
from shared.errors import ApiError, invalid_value
from shared.http import json_response
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.responses import StoredResponse, encode, fits

# How long past its answer's deadline a pending response is given before it reads as failed (its worker
# died): the web search before it, the store's writes, a slow event loop.
GRACE_S = 30.0
WATCH_EVERY_S = 1.0  # how often a running background response asks whether it was cancelled on another worker
SHUTDOWN_GRACE_S = 5.0  # a graceful shutdown waits this long for them, as for a request in flight; then fails them
SHUT_DOWN = "the gateway shut down before it finished: send the request again"


def check_request(ctx: ApiContext, *, stream: bool, store: bool | None) -> None:
    """A background response is stored to be polled, and is not streamed here: each refusal a 400 naming
    its field, before anything is spent; a worker runs at most ``MAX_BACKGROUND_RESPONSES`` at once (a task
    each, and its miners' connections, held with no caller's connection to bound them): past it a 429."""
    if stream:
        raise invalid_value("stream", "a background response is polled here (GET /v1/responses/{id}); streaming "
                                      "one is not served: send stream: false, or stream without background")
    if store is False:
        raise invalid_value("store", "a background response is stored, to be polled: send store: true (or leave "
                                     "it out)")
    if ctx.responses is None:
        raise invalid_value("background", "background responses are stored, and this gateway stores none "
                                          "(RESPONSES_RETENTION_SECONDS is 0)")
    if len(ctx.running_responses) >= ctx.settings.max_background_responses:
        raise ApiError(429, f"This API worker is running {len(ctx.running_responses)} background responses, its "
                            "bound (MAX_BACKGROUND_RESPONSES): wait for some to finish, or send this one without "
                            "background.", code="too_many_background_responses", headers={"Retry-After": "1"})


async def start(ctx: ApiContext, key: KeyRecord, queued: dict[str, Any], keeping: Keeping, seconds: float,
                work: Callable[[], Awaitable[Any]]) -> web.Response:
    """Store ``queued`` as pending, start ``work`` (the race; it seals ``keeping``) in a task tracked for
    cancel and shutdown, and answer with ``queued``."""
    assert ctx.responses is not None
    data = encode(queued, keeping.items, until=time.time() + seconds + GRACE_S)
    if not fits(data):
        raise invalid_value("input", "the conversation is too large to store, and a background response is "
                                     "stored to be polled: send it without background")
    await store_call(ctx.responses.put(key.id, queued["id"], data, retention=keeping.retention, pending=True))
    task = ctx.spawn(_run(ctx, key, queued, keeping, work))
    ctx.running_responses[queued["id"]] = task
    task.add_done_callback(lambda _: ctx.running_responses.pop(queued["id"], None))
    return json_response(queued)


async def _run(ctx: ApiContext, key: KeyRecord, queued: dict[str, Any], keeping: Keeping,
               work: Callable[[], Awaitable[Any]]) -> None:
    """Answer, then settle the stored response with the answer, or as failed (no miner answered, a bug, a
    shutdown); a cancel that came first keeps its ``cancelled``."""
    try:
        await _watched(ctx, key.id, queued["id"], work)
        final = keeping.final if keeping.final is not None else failed(queued, "no answer was made")
    except SettledElsewhere:
        return
    except ApiError as e:
        final = failed(queued, e.message)
    except asyncio.CancelledError:  # a cancel (which settled it already) or a shutdown
        await settle(ctx, key, keeping, failed(queued, SHUT_DOWN))
        raise
    except Exception as e:
        logger.opt(exception=e).error("background response {} failed", queued["id"])
        final = failed(queued, "internal error")
    await settle(ctx, key, keeping, final)


class SettledElsewhere(Exception):
    """The response was settled while its answer was being made (a cancel on another worker)."""


async def _watched(ctx: ApiContext, key_id: str, response_id: str, work: Callable[[], Awaitable[Any]]) -> None:
    """``work``, stopped (its miners' requests dropped) once the stored response is no longer pending; a store
    that fails to say so leaves it running (bounded by its deadline)."""
    assert ctx.responses is not None
    task = asyncio.ensure_future(work())
    try:
        while not (await asyncio.wait({task}, timeout=WATCH_EVERY_S))[0]:
            try:
                pending = await ctx.responses.is_pending(key_id, response_id)
            except StoreUnavailable as e:
                logger.debug("background response {}: cancel not checked: {}", response_id, e)
                continue
            if not pending:
                raise SettledElsewhere()
        task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def settle(ctx: ApiContext, key: KeyRecord, keeping: Keeping, final: dict[str, Any]) -> bool:
    """Settle the pending response with ``final`` (once: False when a cancel or a reader came first). Its
    conversation, if any, gets the turn then. A store that fails leaves it pending until its deadline,
    when it reads as failed: a WARNING."""
    assert ctx.responses is not None
    data = keeping.data if keeping.final is final and keeping.data is not None else None
    if data is None:  # failed, or an answer over the size bound: kept without its conversation
        data = encode(final, keeping.items)
        if not fits(data):
            data = encode(final, [])
    try:
        settled = await ctx.responses.settle(key.id, final["id"], data, retention=keeping.retention,
                                             item_ids=item_ids(keeping.added, final))
    except StoreUnavailable as e:
        logger.warning("background response {} not settled: {}", final["id"], e)
        return False
    if settled:
        await extend_conversation(ctx, keeping, final)
    return settled


async def cancel(ctx: ApiContext, key: KeyRecord, found: StoredResponse, retention: float) -> dict[str, Any]:
    """``POST /v1/responses/{id}/cancel``: a pending background response is ``cancelled`` (its task here is
    stopped, or within WATCH_EVERY_S when another worker runs it). One already settled
    is answered as it is; a response made in the request that asked for it is OpenAI's 400."""
    if found.response.get("background") is not True:
        raise ApiError(400, "Cannot cancel a synchronous response.", param="response_id")
    if found.response.get("status") not in PENDING:
        return found.response
    cancelled = found.response | {"status": "cancelled"}
    assert ctx.responses is not None
    if await store_call(ctx.responses.settle(key.id, found.id, encode(cancelled, found.items), retention=retention)):
        task = ctx.running_responses.get(found.id)
        if task is not None:
            task.cancel()
        return cancelled
    again = await store_call(ctx.responses.get(key.id, found.id))  # settled meanwhile: as it is now
    return again.response if again is not None else cancelled
