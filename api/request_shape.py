"""What the API refuses of any request before its route reads it: an id header or a query parameter sent twice
with two values, a body on a request that reads none.

Each was taken in silence on most routes and refused on a few (a key header or
``x-session-id`` sent twice, a body on ``GET /web_retrieval``, the sessions ``model``
twice in its query string): one place now, on every route, with the 400 those few
gave. It runs inside ``error_middleware`` (its refusals are the usual error bodies,
counted and logged as any), before the key is read: such a request is not charged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from api.auth import one_header
from shared.errors import ApiError, shown_name
from shared.http import read_body
from shared.ids import ID_HEADERS
from shared.jsonutil import loads_body

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_READS_NO_BODY = frozenset({"GET", "HEAD", "DELETE"})
_QUERY_ONLY = frozenset({"GET", "HEAD"})
# The POST routes (``"METHOD /path"``, as the router names them) that take no parameters: the app lists its own.
NO_BODY_POSTS = web.AppKey("sn1_no_body_posts", frozenset)
# The query parameters a route reads as a list, each value one item: ``include`` (``include[]`` as the OpenAI SDK
# sends a list), ``/web_retrieval``'s ``uids``, a key's ``scopes`` and ``allowed_models``. Any other is one value.
LIST_PARAMETERS = frozenset({"include", "include[]", "uids", "scopes", "allowed_models"})
# What probes and scrapers ask: they read no id nor parameter, and a 400 there, for a request id two chained
# proxies each appended, would take a healthy host out of its load balancer (a body is refused there too).
_PROBES = frozenset({"/health", "/ready", "/metrics"})


@web.middleware
async def request_shape_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A 400 ``duplicate_header`` naming ``x-request-id`` (or ``X-Client-Request-Id``) sent twice with two values,
    as for a key's header: the first was taken, so the caller's logs and this API's could name different ids for
    one request (its answer and line carry a new id: ``request_id_from``). A 400 ``duplicate_parameter`` for a query
    parameter sent twice with two values (``one_value_each``). A 400 ``unsupported_parameter`` for a body holding
    anything on a request that reads none: ``curl -X GET -d '{"days": 7}' /v1/usage`` answered the defaults as if
    the body had been read (``_no_body``). A path no route serves, or a method its route does not take, is its 404
    or 405 whatever it sends: the mistake is the path or the method (``GET /v1/modles`` with a body was a 400
    about the body). A probe (``/health``, ``/ready``, ``/metrics``) is answered whatever ids or parameters it repeats."""
    if request.match_info.http_exception is not None:
        return await handler(request)
    if request.path not in _PROBES:
        headers = request.headers
        for name in ID_HEADERS:
            if headers.get(name) is not None:  # most requests send neither: one lookup each
                one_header(headers, name)
        if request.query_string:  # most requests (every chat completion) have none: no parsing
            one_value_each(request.query)
    if request.body_exists and _reads_no_body(request):
        await _no_body(request)
    return await handler(request)


def one_value_each(query: MultiDictProxy[str]) -> None:
    """A 400 ``duplicate_parameter`` naming the first query parameter sent twice with two values: which is meant
    cannot be told, and each route had taken one its own way (``/v1/responses`` and the admin routes the last,
    the availability routes and ``/web_retrieval`` the first, the sessions ``model`` a 400). The same value twice
    (a client or proxy that repeats it) is one value; a list parameter (``LIST_PARAMETERS``) takes each."""
    seen: dict[str, str] = {}
    for name, value in query.items():
        if name not in LIST_PARAMETERS and seen.setdefault(name, value) != value:
            shown = shown_name(name)
            raise ApiError(400, f"The query parameter '{shown}' was sent twice with different values, and which one is "
                                "meant cannot be told: send it once.", param=shown, code="duplicate_parameter")


def _reads_no_body(request: web.Request) -> bool:
    """A GET, HEAD or DELETE, or one of the app's ``NO_BODY_POSTS`` (a response's cancel, a session's ping, a key's
    rotation): none reads a body, and the OpenAI SDKs send none on them."""
    if request.method in _READS_NO_BODY:
        return True
    return request.method == "POST" and _route(request) in request.app.get(NO_BODY_POSTS, frozenset())


def _route(request: web.Request) -> str:
    """``"POST /v1/responses/{response_id}/cancel"``: the route's template, never the path (it may hold a key)."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical}" if resource is not None else ""


async def _no_body(request: web.Request) -> None:
    """A body on a request that reads none: nothing (or ``{}``, what some clients send on every request) is fine;
    anything else is refused as unread, JSON or not (``-d days=7`` was told to send JSON, which a GET would not read
    either), its first field named as ``param``."""
    raw = await read_body(request)
    if not raw.strip():
        return
    try:
        sent: Any = loads_body(raw)
    except ApiError:  # not JSON: something, and not read
        sent = True
    if not sent:
        return
    field = shown_name(next(iter(sent))) if isinstance(sent, dict) else None
    named = f" ('{field}' in it)" if field else ""
    if request.method in _QUERY_ONLY:
        raise ApiError(400, f"A {request.method} reads its parameters from the query string, and would not read this "
                            f"body{named}: send them in the query string (or POST the JSON body where the route "
                            "takes one).", code="unsupported_parameter", param=field)
    raise ApiError(400, f"{_route(request)} takes no body, and would not read this one{named}: send none (or {{}}).",
                   code="unsupported_parameter", param=field)
