"""CORS: which web pages may call the API from a browser (``CORS_ORIGINS``, default any).

A browser lets a page read an answer from another origin only when the answer says so, and asks
first (an ``OPTIONS`` preflight) before a request with an ``Authorization`` header or a JSON body.
Without it a browser app (the OpenAI JS SDK with ``dangerouslyAllowBrowser``, a web playground)
cannot call the API at all. Every route that answers callers is open to the configured origins, as
OpenAI's own API and vLLM's server are to any origin. That is safe here because the API carries
no ambient credentials (no cookies; a key is sent by the page itself), so another site's page can
do nothing a script with no key could not. The admin routes and ``/metrics`` stay closed to
browsers: they are for operators' tools.

The headers a page may read are every header of the answer (``x-request-id``, ``x-ratelimit-*``,
``retry-after``), so this is installed after the hooks that add them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp_cors
from aiohttp import hdrs, web

from shared.connections import on_refusal

ResponseHook = Callable[[web.Request, web.StreamResponse], Awaitable[None]]

CLOSED_TO_BROWSERS = ("/api_management/", "/metrics")
PREFLIGHT_CACHE_SECONDS = 600
# the response headers a page may read without being told (the CORS safelist), of those an error answer has
_SAFELISTED = frozenset({"content-type", "content-length", "cache-control", "expires", "last-modified", "pragma",
                         "content-language", "access-control-allow-origin"})


def install_cors(app: web.Application, origins: list[str]) -> None:
    """Open every route outside ``CLOSED_TO_BROWSERS`` to ``origins`` (none: CORS stays off)."""
    if not origins:
        return
    options = aiohttp_cors.ResourceOptions(allow_credentials=False, expose_headers="*", allow_headers="*",
                                           allow_methods="*", max_age=PREFLIGHT_CACHE_SECONDS)
    hooks_before = len(app.on_response_prepare)
    cors = aiohttp_cors.setup(app, defaults={origin: options for origin in origins})
    (hook,) = app.on_response_prepare[hooks_before:]  # the one aiohttp-cors adds for every answer
    app.on_response_prepare[hooks_before] = _with_origin_only(hook)
    for resource in list(app.router.resources()):
        if not resource.canonical.startswith(CLOSED_TO_BROWSERS):
            cors.add(resource)
    if "*" in origins:
        on_refusal(app, _open_to_any_page)


def _open_to_any_page(_request: web.BaseRequest, response: web.StreamResponse) -> None:
    """A request the HTTP parser refused (a 414, a 431, a 400 ``malformed_request``) is answered before any hook of
    the app, so aiohttp-cors never saw it and a page could not read why. Its ``Origin`` is unknown (the parser gave
    up before handing any header over): with ``CORS_ORIGINS=*`` the answer is open to every page, as it would be to
    that one; with a list of origins it stays closed (a browser reads a network error), naming no page it may not."""
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = "*"
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = ",".join(
        name for name in response.headers if name.lower() not in _SAFELISTED)


def _with_origin_only(hook: ResponseHook) -> ResponseHook:
    """aiohttp-cors's answer hook, called only for requests that carry an ``Origin`` (what browsers
    send cross-origin); for the rest it would find its route's settings and then stop at the missing
    ``Origin`` anyway, about 4 us per answer on the API's hot path."""
    async def hook_for_browsers(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ORIGIN in request.headers:
            await hook(request, response)

    return hook_for_browsers
