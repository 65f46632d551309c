"""What the API refuses of any request before its route reads it: an id header sent twice, a body on a GET.

Each was taken in silence on most routes and refused on a few (a key header or
``x-session-id`` sent twice, a body on ``GET /web_retrieval``): one place now,
on every route, with the 400 those few gave. It runs inside ``error_middleware``
(its refusals are the usual error bodies, counted and logged as any), before the
key is read: such a request is not charged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from api.auth import one_header
from shared.errors import ApiError
from shared.http import read_body
from shared.ids import ID_HEADERS
from shared.jsonutil import loads_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_READS_NO_BODY = frozenset({"GET", "HEAD"})


@web.middleware
async def request_shape_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 400 ``duplicate_header`` naming ``x-request-id`` (or ``X-Client-Request-Id``) sent twice with two values,
    as for a key's header: the first was taken, so the caller's logs and this API's could name different ids for
    one request (its answer and line carry a new id: ``request_id_from``). A 400 ``unsupported_parameter`` for a GET
    (or HEAD) with a JSON body that is not empty: a GET reads the query string, and ``curl -X GET -d '{"days": 7}'
    /v1/usage`` answered the defaults as if the body had been read."""
    headers = request.headers
    for name in ID_HEADERS:
        if headers.get(name) is not None:  # most requests send neither: one lookup each
            one_header(headers, name)
    if request.method in _READS_NO_BODY and request.body_exists:
        await _no_body(request)
    return await handler(request)


async def _no_body(request: web.Request) -> None:
    """A body on a request that reads none: nothing (or ``{}``, what some clients send on every request) is fine;
    anything else is refused as unread, JSON or not (``-d days=7`` was told to send JSON, which a GET would not read
    either)."""
    raw = await read_body(request)
    if raw.strip() and _holds_something(raw):
        raise ApiError(400, f"A {request.method} reads its parameters from the query string, and would not read this "
                            "body: send them in the query string (or POST the JSON body where the route takes one).",
                       code="unsupported_parameter")


def _holds_something(raw: bytes) -> bool:
    try:
        return bool(loads_body(raw))
    except ApiError:  # not JSON: something, and not read
        return True
