"""Usage: ``GET /v1/usage`` for callers, the per-response counter and the flush lifecycle.

Requests are counted once, when their response is prepared (``count_response``),
so every endpoint that authenticates is counted the same way, 429s included;
handlers add tokens with ``ctx.usage.record(...)``. Counts are buffered in
``UsageRecorder`` and flushed in batches (see ``shared/store/usage.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from api.auth import KEY_RECORD, USAGE_DAY, authenticate, store_unavailable
from api.concurrency import LIMITER
from api.context import CTX
from shared.aio import stopped
from shared.errors import ApiError
from shared.http import json_response, refuse_query
from shared.keys_wire import UsageOut
from shared.store.base import KeyRecord, StoreUnavailable, usage_day


async def get_usage(request: web.Request) -> web.Response:
    """The caller's own usage; any live key may read it (no scope needed), and it is charged like any request."""
    key = await authenticate(request, request.app[CTX].store, scope=None)
    return json_response((await usage_out(request, key)).model_dump(mode="json"))


async def usage_out(request: web.Request, record: KeyRecord) -> UsageOut:
    """A key's usage (``?days=N``, default 30, up to 366), including this worker's unflushed counts."""
    refuse_query(request, ("days",))  # ?day=7 answered 30 days as if asked for
    raw = request.query.get("days", "30")
    # ASCII digits only, and few: "²" passes isdigit() and int() refuses it; 5,000 digits exceed int()'s limit
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= 366:
        raise ApiError(400, "days must be an integer between 1 and 366.", param="days", code="invalid_value")
    now = request.app[CTX].usage.clock()  # the clock its counts are filed by: "today" is the same day for both
    since = usage_day(now - (int(raw) - 1) * 86400)
    budget = request.app[CTX].storage_budget
    limiter = request.app[LIMITER]
    concurrency = limiter.limit_of(record)
    try:
        report = await request.app[CTX].usage.report(record.id, since_day=since)  # today's stored bytes with it
        in_flight = await limiter.in_flight(record) if concurrency else 0
    except StoreUnavailable:
        raise store_unavailable() from None
    today = usage_day(now)
    return UsageOut.of(record, report, today=today, stored_bytes_today=report.stored_bytes.get(today, 0),
                       stored_bytes_per_day=(budget.limit_of(record) or None) if budget is not None else None,
                       max_concurrent_requests=concurrency or None, requests_in_flight=in_flight)


async def count_response(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: one request for the key that made it, an error or a 429 by its status."""
    key = request.get(KEY_RECORD)
    if key is not None:
        request.app[CTX].usage.count_response(key.id, response.status, day=request.get(USAGE_DAY))


async def usage_flusher(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: flush in the background; at shutdown, one last flush so nothing counted is lost."""
    usage = app[CTX].usage
    task = asyncio.create_task(usage.run())
    yield
    await stopped(task)
    await usage.last_flush()
