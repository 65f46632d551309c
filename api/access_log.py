"""One access-log line for every chat and web-retrieval request, refused ones included.

A request that reaches its miners is logged by its handler with what the
race learned (uids, winner, outcome). A request refused before that (a bad
key, a bad body, over its rate limit: 401, 400, 429, ...) used to leave no
line at all; ``access_logged`` writes a short one for it, with the status and
error code, and gives its error response the request id the line names. So
each request leaves exactly one line, and a caller's ``x-request-id`` finds it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from api.auth import KEY_RECORD
from api.context import CTX
from api.fanout import request_id_from
from shared.errors import ApiError
from shared.http import http_error_code

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("sn1_request_id", str)
_LOGGED = web.RequestKey("sn1_access_logged", bool)


def request_id(request: web.Request) -> str:
    """The request's id, chosen once: the caller's ``x-request-id`` when usable, else a new one."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        rid = request[REQUEST_ID] = request_id_from(request.headers)
    return rid


def write(request: web.Request, line: str) -> None:
    """The handler's own line for this request (the wrapper then writes none)."""
    request.app[CTX].request_log.write(line)
    request[_LOGGED] = True


def access_logged(kind: str) -> Callable[[Handler], Handler]:
    """Wrap a handler so that a request it refuses before writing its own line still gets one."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def logged(request: web.Request) -> web.StreamResponse:
            started = time.perf_counter()
            try:
                return await handler(request)
            except ApiError as e:
                e.headers.setdefault("x-request-id", request_id(request))
                _refused(request, kind, started, e.status, e.code)
                raise
            except web.HTTPException as e:  # aiohttp's own refusals, e.g. 413 for an oversized body
                if e.status >= 400:
                    _refused(request, kind, started, e.status, http_error_code(e))
                raise

        return logged

    return wrap


def _refused(request: web.Request, kind: str, started: float, status: int, code: str | None) -> None:
    if request.get(_LOGGED):
        return
    key = request.get(KEY_RECORD)
    write(request, f"{kind} rid={request_id(request)} key={key.id if key else None} status={status} "
                   f"code={code} latency_ms={(time.perf_counter() - started) * 1000:.1f}")
