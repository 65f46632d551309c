"""aiohttp plumbing shared by the three servers: error shape, JSON bodies, serving.

Each process builds its app in a factory; this module supplies the middleware
that turns every failure into an OpenAI-shaped error body and the runner that
serves an app until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from loguru import logger
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.aio import describe_tasks
from shared.connections import (
    STOP_ENDING,
    ConnectionGuard,
    ConnectionLimits,
    GuardedAppRunner,
    GuardedServer,
    cut_by_stop,
    fd_limited,
)
from shared.errors import (
    NEEDED,
    OPENAI_REFUSAL,
    SERVER_SHUTTING_DOWN,
    ApiError,
    error_body,
    error_type_for,
    invalid_value,
    left_out,
    located,
    missing_parameter,
    out_of_bounds,
    shutting_down,
)
from shared.gc_tuning import tune_for_serving
from shared.ids import request_id_from
from shared.jsonutil import dumpb, loads_body
from shared.listen import bound_socket
from shared.process import stop_signals
from shared.server_log import ServerLog
from shared.store.base import KEY_PREFIX, display_prefix

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEY_IN_PATH = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_-]+")
V1_PREFIX = "/v1"  # where OpenAI's routes live, here as at OpenAI (a client's base_url ends in it)
V1_TWICE = V1_PREFIX * 2 + "/"
# Endpoints (``"METHOD /path"``) this server does not serve on a path it serves otherwise (OpenAI's
# ``POST /v1/responses/input_tokens`` matches ``/v1/responses/{response_id}``; its stored chat completions'
# ``GET /v1/chat/completions``): a 404 naming the request, as OpenAI's for a path it lacks, not a 405 that
# reads as "this endpoint exists, use GET" (the SDKs raised an untyped error, not NotFoundError).
NOT_SERVED_HERE = web.AppKey("sn1_not_served_here", frozenset)
# The error code of the response ``error_middleware`` made of a failure, for the access log's line.
ERROR_CODE = web.RequestKey("sn1_error_code", str)
# The ``code`` of the error body ``error_middleware`` answered with, ``None`` when it is null (``ERROR_CODE`` gives
# the type there): the API counts its errors by it (``sn1_api_errors_total``) without reading the body.
BODY_CODE = web.RequestKey("sn1_error_body_code", str)
CLIENT_GONE = 499  # nginx's status for a client that closed the connection before the answer
MAX_POLLERS = 1024  # addresses whose last answer ``request_lines`` keeps for a polled route


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumpb(data), status=status, content_type="application/json", headers=headers)


def error_response(err: ApiError, *, headers: dict[str, str] | None = None) -> web.Response:
    response = json_response(err.body(), status=err.status, headers={**err.headers, **(headers or {})})
    if err.close:
        response.force_close()
    return response


def http_error_code(e: web.HTTPException) -> str:
    """The error code for one of aiohttp's own refusals: its reason phrase, ``request_entity_too_large``."""
    return e.reason.lower().replace(" ", "_")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": {...}}`` with the right status; a bug is a logged 500."""
    try:
        return await handler(request)
    except ApiError as e:
        request[BODY_CODE], request[ERROR_CODE] = e.code, e.code or error_type_for(e.status)
        if request.writer.output_size > 0:  # a stream's headers went out (a resumed one whose store failed)
            logger.warning("{} {}: a stream ended by {} {}: {}", request.method, route_path(request), e.status,
                           request[ERROR_CODE], e.message)
            await _end_broken_stream(request, e.body())
        return error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 405 and f"{request.method} {request.path}" in request.app.get(NOT_SERVED_HERE, frozenset()):
            e = web.HTTPNotFound()
        if (allow := _plain_options(request, e)) is not None:
            return web.Response(status=204, headers={"Allow": allow})
        request[BODY_CODE] = request[ERROR_CODE] = http_error_code(e)
        message = _http_error_message(request, e)
        if e.status == 404:
            message += await _served_path_hint(request)
        body = error_body(message, type_=error_type_for(e.status), code=http_error_code(e))
        headers = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after")}
        return json_response(body, status=e.status, headers=headers)
    except web.RequestPayloadError as e:
        request[BODY_CODE] = request[ERROR_CODE] = "invalid_body"
        return _unreadable_body(request, e)
    except asyncio.CancelledError:
        if cut_by_stop(request):
            if request.writer.output_size == 0:
                return _stopping(request)
            if (ending := request.get(STOP_ENDING)) is not None:  # a stream that had begun: its last event
                request[BODY_CODE] = request[ERROR_CODE] = SERVER_SHUTTING_DOWN
                await _end_stream(request, ending())
        raise
    except ConnectionResetError:
        # The peer went away before we answered (e.g. the API cancelled a losing miner). aiohttp would
        # log a ConnectionResetError as an ERROR traceback and try to send a 500; end the handler the
        # way it ends on a disconnect it noticed first: cancelled, quietly.
        raise asyncio.CancelledError from None
    except Exception:
        logger.exception("unhandled error on {} {}", request.method, route_path(request))
        request[BODY_CODE], request[ERROR_CODE] = None, "server_error"
        if request.writer.output_size > 0:  # a stream's headers went out: no 500 can follow them
            await _end_broken_stream(request, error_body("Internal server error; the stream was cut short.",
                                                         type_="server_error"))
        return json_response(error_body("Internal server error.", type_="server_error"), status=500)


def _stopping(request: web.Request) -> web.Response:
    """The answer of a request this process's stop cut before any of it was sent (``cut_by_stop``): a 503 with
    ``Retry-After``, which the OpenAI SDKs retry (on another process behind the balancer, or this one restarted),
    where the connection closed with no reply at all. The handler's cancel is taken back (``uncancel``), so that
    aiohttp sends the answer before it closes the connection."""
    if (task := asyncio.current_task()) is not None:
        task.uncancel()
    request[BODY_CODE] = request[ERROR_CODE] = SERVER_SHUTTING_DOWN
    return error_response(shutting_down("nothing was sent for this request"))


async def _end_broken_stream(request: web.Request, error: dict[str, Any]) -> None:
    """End a stream a bug or an error after its headers broke with an error event (``error``, the body an
    HTTP error would have had) and ``[DONE]`` (``_end_stream``): the client's SDK raises at once instead of waiting
    for more that would never come (an ``ApiError`` there, a 503 of a store that failed under a resumed stream, was
    answered as a new response on the same connection: the caller waited for its own timeout). Only streams (SSE)
    are written in parts."""
    await _end_stream(request, b"data: " + dumpb(error) + b"\n\ndata: [DONE]\n\n")
    raise asyncio.CancelledError


async def _end_stream(request: web.Request, last: bytes) -> None:
    """Write a stream's ``last`` bytes and its body's end, then close the connection, which can carry nothing
    else now (the stream broke, or this process's stop cut it)."""
    try:
        await request.writer.write(last)
        await request.writer.write_eof()
    except (ConnectionError, RuntimeError) as e:
        logger.debug("could not end the stream: {}", e)
    finally:
        if request.transport is not None:
            request.transport.close()


async def _served_path_hint(request: web.Request) -> str:
    """`` Did you mean ...?`` naming the served path a 404's path was most likely meant to be, else nothing:
    without its trailing slash (curl users add one; the router, as OpenAI's, treats them as two paths), or with
    its ``/v1`` put right (an OpenAI client's ``base_url`` without it posts ``/chat/completions``; one that adds
    ``/v1`` to a base URL already ending in it asks ``/v1/v1/models``), which the hint then says."""
    path = request.path
    if len(path) > 1 and path.endswith("/") and await _serves(request, stripped := path.rstrip("/") or "/"):
        return f" Did you mean {_KEY_IN_PATH.sub(lambda m: display_prefix(m.group()) + '...', stripped[:200])}?"
    if path.startswith(V1_TWICE):
        meant = path[len(V1_PREFIX):]
    elif not path.startswith(V1_PREFIX + "/"):
        meant = V1_PREFIX + path
    else:
        return ""
    if len(meant) > 200 or _KEY_IN_PATH.search(meant) or not await _serves(request, meant, exactly=True):
        return ""
    return f" Did you mean {meant}? (an OpenAI client's base_url ends in {V1_PREFIX}: http://<host>:<port>{V1_PREFIX})"


async def _serves(request: web.Request, path: str, *, exactly: bool = False) -> bool:
    """Whether this server has a route for ``path`` (``exactly``: for the request's method too)."""
    match = await request.app.router.resolve(request.clone(rel_url=request.rel_url.with_path(path)))
    if match.http_exception is None:
        return True
    return not exactly and match.http_exception.status != 404


def _plain_options(request: web.Request, e: web.HTTPException) -> str | None:
    """The ``Allow`` of a served path for an ``OPTIONS`` request that is not a browser's preflight (no ``Origin``):
    ``curl -X OPTIONS`` asks which methods the path takes (RFC 9110). CORS's preflight handler refused it with a
    403 "CORS preflight request failed", a permission error; without CORS (and on the admin routes) it was a 405.
    None for any other request or error (a path not served stays a 404)."""
    if request.method != "OPTIONS" or "Origin" in request.headers:
        return None
    if isinstance(e, web.HTTPMethodNotAllowed):
        methods = set(e.allowed_methods)
    elif e.status == 403 and (resource := request.match_info.route.resource) is not None:
        methods = {route.method for route in resource}  # CORS's OPTIONS route among them
    else:
        return None
    return ", ".join(sorted(methods | {"OPTIONS"}))


def answered_status(exc: BaseException) -> int:
    """The status a request whose handler raised ``exc`` is counted and logged with (by the middlewares
    outside ``error_middleware``): the client left (cancelled, or its connection reset), an HTTP error's
    own status, else a bug's 500."""
    if isinstance(exc, ConnectionResetError | asyncio.CancelledError):
        return CLIENT_GONE
    if isinstance(exc, ApiError | web.HTTPException):
        return exc.status
    return 500


def observed(on_end: Callable[[web.Request, int, float], None]) -> Callable[[web.Request, Handler],
                                                                           Awaitable[web.StreamResponse]]:
    """A middleware (outside ``error_middleware``) that calls ``on_end(request, status, seconds)`` once a
    request ends, with the status the caller got (``answered_status`` when the handler raised)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except BaseException as e:
            status = answered_status(e)
            raise
        finally:
            on_end(request, status, time.perf_counter() - started)

    return middleware


def request_lines(role: str, caller: Callable[[web.Request], str] = lambda _: "-", polled: frozenset[str] = frozenset(),
                  ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """A middleware (outermost but metrics) writing one INFO line per request of a low-traffic server (the
    validator's: the API's outbox, availability queries, scrapes): route pattern, status, error code,
    latency, the caller's ``x-request-id`` and who the caller proved to be (``caller``: with several API
    hosts, which one sent it). The API has its own, batched (``api/access_log.py``).

    A route in ``polled`` (``/miner_availabilities``, which every API worker asks every few seconds) is a DEBUG
    line while it answers an address as it last did: its INFO lines buried the server's own. The first request from
    an address, a failure and a change of status stay INFO."""
    last: dict[tuple[str, str | None], int] = {}  # (route, client address) -> the status it was answered last

    def line(request: web.Request, status: int, seconds: float) -> None:
        route = route_path(request)
        level = "INFO"
        if route in polled:
            key = (route, request.remote)
            level = "DEBUG" if status < 400 and last.get(key) == status else "INFO"
            if key not in last and len(last) >= MAX_POLLERS:  # addresses without end: forget, and say again
                last.clear()
            last[key] = status
        logger.log(level, "{} rid={} caller={} method={} route={} status={} code={} latency_ms={:.1f}", role,
                   request_id_from(request.headers), caller(request), request.method, route, status,
                   request.get(ERROR_CODE), seconds * 1000)

    return observed(line)


def route_path(request: web.Request) -> str:
    """The route pattern, not the path, for logs: admin paths may carry an API key
    (``/modify-api-key/{api_key}``), and no secret is ever logged."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "?"


def _unreadable_body(request: web.Request, e: web.RequestPayloadError) -> web.Response:
    """A 400 for a body the HTTP parser could not read, in its words, which name the fault and never
    echo the body."""
    cause = e.__cause__
    why = cause.message if isinstance(cause, HttpProcessingError) and cause.message else "it is malformed"
    return error_response(_unread_body_error(request, 400, f"Request body could not be read: {why.rstrip('.')}.",
                                             code="invalid_body"))


def _unread_body_error(request: web.Request, status: int, message: str, *, code: str) -> ApiError:
    """An error that ends the connection after a body that was not read to its end.

    The body is marked ended first: aiohttp would otherwise go on reading it after the answer (to
    reuse the connection), meet the same fault again and log it as an unhandled exception."""
    end_unread_body(request)
    return ApiError(status, message, code=code, close=True)


def end_unread_body(request: web.Request) -> None:
    """Give up on the rest of a body not read to its end: it is marked ended, so the answer goes out at
    once and the connection then closes, and what still arrives of it is dropped unparsed (aiohttp would
    otherwise read on for up to 10 s to reuse the connection, or feed bytes after the end: an assertion).
    For a request refused before its body is read, or one whose body stalled."""
    if request.content.is_eof():
        return
    if request.protocol is not None:
        request.protocol.close()
    request.content.feed_eof()


def _http_error_message(request: web.Request, e: web.HTTPException) -> str:
    """What went wrong, in words a caller can act on (aiohttp's own say only "Not Found")."""
    if e.status == 413:
        return f"Request body too large (limit {request._client_max_size} bytes)."
    if e.text and not e.text.startswith(f"{e.status}:"):
        return e.text  # words given where it was raised
    if e.status == 404:
        # OpenAI's wording for a path it does not serve, so a client pointed at the wrong path
        # (``/v1/embeddings``, a doubled ``/v1``) sees what it asked for; an API key in the path (the
        # admin routes take one) is cut to its display prefix, as everywhere a key is shown.
        path = _KEY_IN_PATH.sub(lambda m: display_prefix(m.group()) + "...", request.path[:200])
        return f"Invalid URL ({request.method} {path}): no such endpoint here."
    if isinstance(e, web.HTTPMethodNotAllowed):
        methods = sorted(m for m in e.allowed_methods if m != "OPTIONS") or sorted(e.allowed_methods)  # not CORS's
        return f"Method {request.method} is not allowed here; use {', '.join(methods)}."
    return e.reason


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The body as JSON, with 400s for bad JSON and 415 for a non-JSON content type; ``empty``, when given, is
    what a body with nothing in it reads as (else such a body is a 400)."""
    # curl -d sends form-urlencoded by default; we read the body as JSON whatever the
    # declared type, except multipart uploads which are certainly not JSON.
    if request.content_type.startswith("multipart/"):
        raise ApiError(415, "Content-Type must be application/json.", code="unsupported_media_type")
    raw = await read_body(request)
    if empty is not None and not raw.strip():
        return empty
    try:
        return loads_body(raw)
    except ApiError as e:
        if e.code == "invalid_json" and request.content_type == "application/x-www-form-urlencoded" and raw.strip():
            # curl -d messages=hi: the parser's "Expecting value" alone did not say what to send instead
            e.message = (e.message.rstrip(".") + ". It was sent as a form (application/x-www-form-urlencoded); "
                         "send a JSON object, with Content-Type: application/json.")
        raise


BODY_TIMEOUT_S = 30.0


async def read_raw(request: web.Request, *, timeout: float = BODY_TIMEOUT_S) -> bytes:
    """The body's bytes as sent (what a signature covers); read once, then kept by aiohttp.

    A body that has not arrived whole within ``timeout`` seconds is a 408 and the connection closes.
    Besides a client that stalls, this ends a wait that would last forever: when a chunked body's
    framing turns out to be broken after its headers were handed to us, aiohttp queues a 400 for
    after this request and never ends this request's body."""
    if request.content.is_eof():  # it came whole with the headers, as small bodies do: no timer needed
        return await request.read()
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise _unread_body_error(request, 408, f"Request body did not arrive whole within {timeout:g} s.",
                                 code="request_timeout") from None


async def read_body(request: web.Request) -> bytes:
    """The body, decoded from its ``Content-Encoding`` (``gzip``, ``deflate``; see ``decode_body``)."""
    raw = await read_raw(request)
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return raw if encoding in ("", "identity") else decode_body(raw, encoding, request.client_max_size)


# wbits for zlib: gzip's header and trailer; "deflate" is zlib's format (RFC 9110), which some clients
# send without its header (raw deflate), as aiohttp and urllib3 also accept.
_GZIP, _ZLIB, _RAW_DEFLATE = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS


def decode_body(raw: bytes, encoding: str, limit: int) -> bytes:
    """Decode a compressed request body, or say why not: 415 for an encoding not served, 400 for a
    body that is not in its encoding or stops short of its end, 413 when it decodes to more than
    ``limit`` bytes (the cap a plain body has; a small gzip body can hold gigabytes).

    The servers decode bodies here rather than in aiohttp (``auto_decompress=False``): aiohttp left a
    request waiting forever for a deflate body that stopped short, when the body arrived after the
    headers, and answered an encoding it lacks (``br``) with a plain-text error."""
    if encoding in ("gzip", "x-gzip"):
        modes = [_GZIP]
    elif encoding == "deflate":
        modes = [_ZLIB, _RAW_DEFLATE]
    else:
        raise ApiError(415, f"Content-Encoding {encoding[:40]!r} is not supported; send the body as is, or as gzip "
                            "or deflate.", code="unsupported_content_encoding")
    for wbits in modes:
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(raw, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise ApiError(413, f"Request body too large once decoded from {encoding} (limit {limit} bytes).",
                           code="request_entity_too_large")
        if not decoder.eof:
            raise ApiError(400, f"Request body could not be read: its {encoding} data stops short of its end.",
                           code="invalid_body")
        if decoder.unused_data:
            raise ApiError(400, f"Request body could not be read: there are bytes after the end of its {encoding} "
                                "data.", code="invalid_body")
        return out
    raise ApiError(400, f"Request body could not be read: it is not {encoding} data.", code="invalid_body")


def parse_model(model: type[BaseModel], data: Any, *, at: str = "", strict: bool | None = None) -> Any:
    """Validate ``data`` into ``model``; the first problem becomes a 400 naming the field (below
    ``at``, the dotted place of ``data`` in the body, when it is a part of it). ``strict``: no type is
    converted (``"3"`` is not a number), for a model that also reads query strings, where all is text."""
    if not isinstance(data, dict):
        raise _not_an_object(model, data, at)
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        first = e.errors()[0]
        if first["type"] == OPENAI_REFUSAL:  # OpenAI's words and param, as they are
            raise ApiError(400, first["msg"], param=".".join(p for p in (at, first["ctx"]["param"]) if p),
                           code=first["ctx"].get("code")) from None
        if (bound := out_of_bounds(e, at)) is not None:  # OpenAI's words and code for it (integer_below_min_value)
            raise bound from None
        where, why, error = located(e)
        param = ".".join(p for p in (at, where) if p) or None
        if why == "Field required" and param:  # OpenAI's words and code for it, as its SDKs surface them
            raise missing_parameter(param) from None
        if error is not None and error["type"] == NEEDED and param and left_out(data, where):
            raise missing_parameter(param, why) from None
        raise invalid_value(param, why) from None


_JSON_KINDS = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _not_an_object(model: type[BaseModel], data: Any, at: str) -> ApiError:
    """The 400 for a value that is no JSON object where ``model`` is read: the body's own words for the body;
    for a part of it (``at``), that part named, with the fields it takes, as every other refusal of a part
    names its place ("Request body must be a JSON object." said of ``input.3`` sent the caller to the body)."""
    if not at:
        return ApiError(400, "Request body must be a JSON object.", code="invalid_request")
    fields = list(model.model_fields)
    shape = ", ".join(f'"{name}"' for name in fields[:4]) + (", ..." if len(fields) > 4 else "")
    sent = "null" if data is None else _JSON_KINDS.get(type(data), "not an object")
    return invalid_value(at, f"must be a JSON object ({{{shape}}}), not {sent}")


class NoQuery(BaseModel):
    """The query string of a route that reads nothing from it."""

    model_config = ConfigDict(extra="forbid")


def refuse_query(request: web.Request, takes: tuple[str, ...] = ()) -> None:
    """A 400 naming the first query parameter a route does not read (none but ``takes``, which the route parses
    itself): it was ignored, so a typo (``?day=7`` for ``days``), or a setting meant for the body
    (``?session_id=...``), went unnoticed. As ``POST /v1/sessions`` and ``/web_retrieval`` refuse one they do
    not know."""
    parse_model(NoQuery, {name: value for name, value in request.query.items() if name not in takes})


def answer_error(request: web.BaseRequest, status: int, exc: BaseException | None, line_length: int,
                 first: bool) -> web.Response:
    """What a server answers where aiohttp answers itself (``GuardedRequestHandler.handle_error``): for a request
    its HTTP parser refused, an OpenAI-shaped 414, 431 or 400 saying what to change, never quoting the request
    (its bytes may hold a key), and one access line in the shape of a refused request's (``route=?``: nothing was
    routed), at DEBUG for a connection's first request with no HTTP method (TLS or a scanner on an HTTP port,
    which aiohttp keeps at DEBUG too); else (a failure outside every error middleware, logged by aiohttp) a 500."""
    if not isinstance(exc, HttpProcessingError):
        return error_response(ApiError(status, "Internal server error." if status == 500 else "The request timed out.",
                                       close=True))
    err = unparsed_refusal(exc, line_length)
    request[BODY_CODE] = err.code  # for an app's refusal hooks (``shared.connections.on_refusal``): its metrics
    rid = request_id_from({})
    logger.log("DEBUG" if first and isinstance(exc, BadHttpMethod) else "INFO",
               "http rid={} method=? route=? status={} code={} from={} parser={}", rid, err.status, err.code,
               request.remote, type(exc).__name__)
    return error_response(err, headers={"x-request-id": rid})


def unparsed_refusal(exc: HttpProcessingError, line_length: int) -> ApiError:
    """The error of a request aiohttp's parser refused: ``LineTooLong`` is a request line past the limit when
    the request's first line (``line_length`` bytes, up to its line break) is longer than it, else a header."""
    if isinstance(exc, LineTooLong):
        limit = int(exc.args[1]) if str(exc.args[1]).isdigit() else 8190  # aiohttp's default, where it said none
        if line_length > limit:
            return ApiError(414, f"The request line is too long: its path and query string may be at most {limit} "
                                 "bytes, percent-encoded. Send long parameters in a JSON body.",
                            code="uri_too_long", close=True)
        return ApiError(431, f"A request header is too long: each may be at most {limit} bytes, its name and "
                             "value together.", code="request_header_fields_too_large", close=True)
    why = exc.message.split("\n\n", 1)[0]  # the C parser quotes the offending bytes after a blank line
    why = " ".join(why.replace(":\n", ": ").split()).rstrip(":.")
    if "Too many headers" in why:
        return ApiError(431, "Too many request headers (at most 128).", code="request_header_fields_too_large",
                        close=True)
    if not why or "'" in why or '"' in why:  # it quotes the request (a Python parser's words): not repeated
        why = type(exc).__name__
    return ApiError(400, f"The request is not valid HTTP/1.1 and was not read: {why}.", code="malformed_request",
                    close=True)


SHUTDOWN_LIMIT_S = 30.0  # in-flight requests get IN_FLIGHT_GRACE_S; the rest is cleanup
IN_FLIGHT_GRACE_S = 5.0  # what a request still being answered at a stop signal has to finish


def app_runner(app: web.Application, limits: ConnectionLimits | None = None, *,
               shutdown_timeout: float = IN_FLIGHT_GRACE_S) -> GuardedAppRunner:
    """How every server here runs an app: handlers cancelled when their client goes, no aiohttp access
    log (ours is ``request_log``), aiohttp's own reports through loguru without a client's bytes,
    compressed bodies decoded by ``read_body``, not by aiohttp, and connections held to ``limits``
    (``shared.connections``: a header timeout, caps per address and in all; the defaults when not given).
    ``shutdown_timeout``: what in-flight requests get at a stop (on the runner: aiohttp deprecates it on a site)."""
    limits = limits or ConnectionLimits()
    return GuardedAppRunner(app, guard=ConnectionGuard(limits), answer_error=answer_error, handler_cancellation=True,
                            access_log=None, logger=ServerLog(), auto_decompress=False,
                            keepalive_timeout=limits.keepalive_timeout, shutdown_timeout=shutdown_timeout)


async def serve_until_signal(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False, on_started: Callable[[], None] | None = None,
    shutdown_limit: float = SHUTDOWN_LIMIT_S, sock: socket.socket | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve ``app`` until SIGINT, SIGTERM or SIGHUP, then shut down gracefully (cleanup_ctx runs).

    ``sock``: a socket the process bound first (``bound_socket``), so that a port in use stops it
    before it builds anything. ``limits``: the connection limits from the settings (``connection_limits``),
    ``max_connections`` lowered to what the file descriptor limit holds. A shutdown that takes longer than ``shutdown_limit`` is a bug (a task
    that ignores its cancel): the process logs what is still running and exits with status 1 instead
    of hanging."""
    sock = sock or bound_socket(host, port, reuse_port=reuse_port)
    runner = app_runner(app, fd_limited(limits or ConnectionLimits()))
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    tune_for_serving()  # after start-up, so the app's long-lived objects are frozen too
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals():
        loop.add_signal_handler(sig, stop.set)
    # an API worker starts with SIGINT blocked (``Supervisor._start_ignoring_sigint``): a Ctrl-C it got while
    # starting is taken now, as a graceful stop
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    logger.info("serving on {}:{}", host, port)  # from here on a stop signal is a graceful shutdown
    if on_started:
        on_started()
    try:
        await stop.wait()
    finally:
        logger.info("shutting down")
        cut = loop.call_later(IN_FLIGHT_GRACE_S, _end_in_flight, runner)
        try:
            await _cleanup_within(runner, shutdown_limit)
        finally:
            cut.cancel()


def _end_in_flight(runner: web.AppRunner) -> None:
    """Once the grace is over, the requests still being answered end: one nothing was sent for yet is answered a 503
    to retry (``GuardedServer.end_in_flight``), the others' connections are closed, which cancels their handlers
    (``handler_cancellation``). aiohttp itself then cancels only a handler reading its request's body and waits as
    long again for the others: one awaiting anything else (a miner's model server, an API's miners) ran for twice
    the grace (a Ctrl-C'd miner with a stream in flight took 10 s to stop, not 5)."""
    if isinstance(runner.server, GuardedServer):  # always (``app_runner``); None once cleaned up
        runner.server.end_in_flight()


async def _cleanup_within(runner: web.AppRunner, limit: float) -> None:
    """``runner.cleanup()`` in its own task, watched by ``asyncio.wait``: a timeout around it would
    cancel it, and a cancel is exactly what a stuck task ignores."""
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait({cleanup}, timeout=limit)
    if not done:
        logger.error("shutdown did not finish within {:g} s; exiting. Still running: {}", limit, describe_tasks())
        os._exit(1)  # asyncio.run would wait on the same stuck tasks again
    cleanup.result()

