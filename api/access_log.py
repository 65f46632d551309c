"""One access-log line for every API request, on every route, refused ones included.

A request that reaches its miners is logged by its handler with what the
race learned (uids, winner, outcome). Every other request (a refusal before
that: 401, 400, 429, ...; an unknown path or method; a route that asks no
miner: models, sessions, usage, admin; a client that left) is logged by
``access_log_middleware`` with its status and error code, and its response
names the request id the line carries. So each request leaves exactly one
line, and a caller's ``x-request-id`` finds it; but a Responses request cut
and asked again (``truncation: "auto"``) leaves one per race, foreground or
background (``responses_background.attempt_logged``), the refused ones' naming
the miners that refused.

The middleware replaced a per-handler wrapper (which covered chat and web
retrieval only, and wrote nothing for a client that left): it costs one
layer per request, as the wrapper did, and an f-string only when the
handler wrote no line of its own.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from api.auth import caller_name
from api.context import CTX
from shared.connections import cut_by_stop
from shared.http import CLIENT_GONE, ERROR_CODE, answered_status, route_path
from shared.ids import request_id_from

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KIND = "access_log_kind"  # a handler's attribute: the word its lines start with (``chat``)
SHUT_DOWN = "shut_down"  # the status word of a request this process's stop cut (its caller did not leave)


@dataclass(slots=True)
class Access:
    """What the access log keeps of one request while it runs, in one object set where the request comes in
    (``access_log_middleware``). Kept as a request key each, most of them were read where they had never been set
    (a chat request's end asks whether it ended with an error and how often it was cut): each such read is a
    ``KeyError`` raised and caught inside aiohttp's ``Mapping.get``, about 4 K instructions."""

    rid: str  # the request's id (``request_id``)
    logged: bool = False  # the handler wrote its line (``write``)
    ended_with: str | None = None  # ``ended_with``
    failed_with: str | None = None  # the code of the HTTP error it ended with (``failed_with``)
    held: tuple[Callable[[str], str], str] | None = None  # a line not written yet (``hold``): its maker and status
    cuts: int = 0  # times the conversation was cut (``note_cuts``)


_ACCESS = web.RequestKey("sn1_access", Access)


def access_of(request: web.Request) -> Access:
    """The request's ``Access``; made here for a request that did not come in through the middleware (a test's)."""
    try:
        return request[_ACCESS]
    except KeyError:
        access = request[_ACCESS] = Access(request_id_from(request.headers))
        return access


def request_id(request: web.Request) -> str:
    """The request's id, chosen once as it comes in: the caller's ``x-request-id`` when usable, else a new one."""
    return access_of(request).rid


def write(request: web.Request, line: str) -> None:
    """The handler's own line for this request (the middleware then writes none)."""
    request.app[CTX].request_log.write(line)
    access_of(request).logged = True


def answer_line(kind: str, rid: str, key_id: str, uids: list[int], winner: int | None, *, stream: bool | None,
                mixture: bool, status: str, started: float, runs: Iterable[Any] = (), truncated: int = 0,
                code: str | None = None) -> str:
    """The line of a request that reached (or was to reach) its miners: ``chat rid=... key=... uids=[...]
    winner=... stream=... mixture=... status=... latency_ms=...`` (``started``: its ``perf_counter`` start),
    ``code=...`` after the status when it ended with an error (``code``: the one its caller was told, as a refused
    request's line names it), ``truncated=N`` before the latency when its conversation was cut N times before this
    race (``note_cuts``), then ``failed=...`` when any of ``runs`` (the race's ``MinerRun``s) had failed by then
    (``failures``)."""
    # uids without spaces (``[2,1,4]``): "uids=[2, 1, 4]" read as ``uids=[2,`` to a key=value parser or a grep
    return (f"{kind} rid={rid} key={key_id} uids={str(uids).replace(' ', '')} winner={winner} stream={stream} "
            f"mixture={mixture} "
            f"status={status}{code_field(code)}{f' truncated={truncated}' if truncated else ''} "
            f"latency_ms={(time.perf_counter() - started) * 1000:.1f}{failures(runs)}")


def code_field(code: str | None) -> str:
    """`` code=...`` of a line whose request ended with an error (its caller's code); "" for one that did not."""
    return f" code={code}" if code else ""


def failures(runs: Iterable[Any]) -> str:
    """`` failed=2:http_5xx,3:bad_response``: each miner whose answer had failed when the line was written, with
    its error kind (``shared.miner_client.MinerError``; a winner that failed mid-stream among them); "" when
    none had. The line said which miners were asked and which won, never why the others lost: that was a
    DEBUG line of each, so a 502 at INFO read ``status=error`` alone. A loser still answering when the line
    is written (the winner was faster) is not named: it has not failed yet."""
    failed = ""  # no list built: most requests have no failure, and this is on every request's path
    for r in runs:
        kind = r.error_kind
        if kind is not None and kind != "cancelled":
            failed += f",{r.uid}:{kind}"
    return f" failed={failed[1:]}" if failed else ""


def ended_with(request: web.Request, code: str) -> None:
    """The request ended with ``code`` after its race had an answer: a stream, sent with a 200, ended with that
    error in place of its answer's end (a Responses turn its conversation could not take: ``response.failed``),
    or a background turn was settled so (``hold``). Its line says ``status=<code>``, not ``ok``."""
    access_of(request).ended_with = code


def failed_with(request: web.Request, code: str | None) -> None:
    """The request ended with the HTTP error of ``code`` where no race's line named it (a background turn whose web
    search failed): the line held for it (``hold``) names it, ``status=error code=<code>``, as a race's does."""
    if code:
        access_of(request).failed_with = code


def failure(request: web.Request) -> str | None:
    """The code ``failed_with`` noted, if any."""
    return access_of(request).failed_with


def ending(request: web.Request) -> str | None:
    """The code a request ended with after its race (``ended_with``), if any."""
    return access_of(request).ended_with


def note_cuts(request: web.Request, cuts: int) -> None:
    """The request's conversation was cut ``cuts`` times so far (``truncation: "auto"``): its next race's line says
    ``truncated=<cuts>``, and an operator tells the shortened attempts from the one asked as sent."""
    access_of(request).cuts = cuts


def cuts_of(request: web.Request) -> int:
    """How many times the request's conversation was cut before its current race (``note_cuts``); 0 for most."""
    return access_of(request).cuts


def hold(request: web.Request, line: Callable[[str], str], status: str) -> None:
    """Keep a request's line (``line(status)`` makes it) until its outcome is known: a background Responses turn
    is settled after its race, and written at the race's end its line said ``status=ok`` for a turn the store
    then failed. ``release`` writes it."""
    access_of(request).held = (line, status)


def release(request: web.Request) -> None:
    """Write the held line (if any, once), saying how the request ended (``ended_with``) when that is known, else
    the status it was held with."""
    access = access_of(request)
    held, access.held = access.held, None
    if held is not None:
        line, status = held
        write(request, line(ending(request) or status) if request.app[CTX].request_log.enabled else "")


def logged(request: web.Request) -> bool:
    """Whether the handler wrote this request's line already."""
    return access_of(request).logged


def access_logged(kind: str) -> Callable[[Handler], Handler]:
    """Name the lines of a handler's requests ``kind`` (else ``http``); costs nothing per request."""

    def mark(handler: Handler) -> Handler:
        setattr(handler, _KIND, kind)
        return handler

    return mark


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outside ``error_middleware``: sees the status the caller got, and a client's leaving (499)."""
    started = time.perf_counter()
    status = CLIENT_GONE
    access = request[_ACCESS] = Access(request_id_from(request.headers))
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:  # a stream's handler names its id itself, before its headers go
            response.headers.setdefault("x-request-id", access.rid)
        return response
    except BaseException as e:
        status = answered_status(e)
        if isinstance(e, web.HTTPException):  # a redirect, or an error error_middleware did not turn into a response
            e.headers.setdefault("x-request-id", access.rid)
        raise
    finally:
        if not access.logged:
            _line(request, access.rid, started, status)


def _line(request: web.Request, rid: str, started: float, status: int) -> None:
    """The line of a request whose handler wrote none; the route's pattern, never its path (admin
    paths carry an API key, and an unknown path is whatever a client sent)."""
    kind = getattr(request.match_info.handler, _KIND, None)
    where = "" if kind else f" method={request.method} route={route_path(request)}"
    said: int | str = status
    code = request.get(ERROR_CODE) if status != CLIENT_GONE else "client_closed_request"
    if status == CLIENT_GONE and cut_by_stop(request):  # not its caller: this process's stop ended its stream
        said, code = SHUT_DOWN, request.get(ERROR_CODE)
    write(request, f"{kind or 'http'} rid={rid} key={caller_name(request)}{where} "
                   f"status={said} code={code} latency_ms={(time.perf_counter() - started) * 1000:.1f}")

