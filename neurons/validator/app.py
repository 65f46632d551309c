"""The validator's HTTP API: availability for the API processes, organic results in.

``/health`` is public; ``/miner_availabilities/*`` answers anyone (it is the
same public information as the metagraph); ``/scoring`` needs a btauth/1
signature from an allow-listed API hotkey.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from neurons.validator.availability import AvailabilityBook
from shared.errors import ApiError
from shared.http import error_middleware, json_response, read_json
from shared.signing import CALLER_KEY, RequestVerifier

BOOK = web.AppKey("availability_book", AvailabilityBook)
SCORING_QUEUE = web.AppKey("scoring_queue", asyncio.Queue)
VERIFIER = web.AppKey("verifier", RequestVerifier)
MAX_K = 256


def create_validator_app(
    book: AvailabilityBook,
    scoring_queue: asyncio.Queue,
    verifier: RequestVerifier,
    *,
    background: list[Any] | None = None,
    max_body_bytes: int = 16 << 20,
) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body_bytes)
    app[BOOK] = book
    app[SCORING_QUEUE] = scoring_queue
    app[VERIFIER] = verifier
    app.router.add_get("/health", health)
    app.router.add_post("/miner_availabilities/miner_availabilities", miner_availabilities)
    app.router.add_get("/miner_availabilities/get_available_miners", get_available_miners)
    app.router.add_post("/scoring", scoring)
    if background:
        app.cleanup_ctx.append(_run_background(background))
    return app


def _run_background(coros_factories: list[Any]):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(f()) for f in coros_factories]
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    return ctx


async def health(request: web.Request) -> web.Response:
    book = request.app[BOOK]
    return json_response({"status": "ok", "availability_updated_at": book.updated_at,
                          "scoring_queue": request.app[SCORING_QUEUE].qsize()})


def parse_uid_list(data: Any) -> list[int] | None:
    if data is None:
        return None
    if not isinstance(data, list) or not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in data):
        raise ApiError(400, "Body must be a JSON array of non-negative integer uids, or null.", code="invalid_uids")
    if len(data) > 65536:
        raise ApiError(400, "Too many uids.", code="invalid_uids")
    return data


async def miner_availabilities(request: web.Request) -> web.Response:
    raw = await request.read()
    data = None
    if raw.strip():
        data = await read_json(request)
    return json_response(request.app[BOOK].get(parse_uid_list(data)))


def parse_k(value: str | None, default: int = 10) -> int:
    if value is None or value == "":
        return default
    try:
        k = int(value)
    except ValueError:
        raise ApiError(400, "k must be an integer.", param="k", code="invalid_value") from None
    if not 1 <= k <= MAX_K:
        raise ApiError(400, f"k must be between 1 and {MAX_K}.", param="k", code="invalid_value")
    return k


async def get_available_miners(request: web.Request) -> web.Response:
    q = request.query
    k = parse_k(q.get("k"))
    uids = request.app[BOOK].available(q.get("task") or None, q.get("model") or None)
    return json_response(uids[:k])


async def scoring(request: web.Request) -> web.Response:
    body = await request.read()
    request[CALLER_KEY] = request.app[VERIFIER].verify(
        request.headers, body, method=request.method, path=request.raw_path
    )
    payload = await read_json(request)
    if not isinstance(payload, dict) or "body" not in payload or "uids" not in payload:
        raise ApiError(400, "Scoring payload must be an object with 'body' and 'uids'.", code="invalid_payload")
    queue = request.app[SCORING_QUEUE]
    try:
        queue.put_nowait(payload)
    except asyncio.QueueFull:
        raise ApiError(503, "Scoring queue is full; retry later.", code="queue_full") from None
    return json_response({"status": "accepted"}, status=202)
