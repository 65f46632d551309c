"""Connection limits for the three servers: a header-read timeout and caps on open connections.

aiohttp closes a connection idle *between* requests (``keepalive_timeout``) but never one that is in
the middle of sending a request line and headers: a socket that sent nothing, half its headers, or
one byte a second stayed open for good, and 20,000 of them took the API's and a miner's file
descriptors (``/health`` failed, the metagraph refresh hit ``Too many open files``). Here:

- **header timeout**: a connection must deliver a whole request line and headers within
  ``header_timeout`` seconds of opening, or, on a kept-alive connection, of the first byte of its next
  request; else it is closed. Bodies have their own bound (``shared.http.read_raw``'s 408).
- **caps**: at most ``max_per_ip`` connections open at once from one client address (an IPv6 /64
  counts as one address: one host owns the whole /64), and ``max_connections`` in all; past either a
  new connection is closed at once. Connections from ``trusted`` proxies are exempt from the per-address
  cap (behind a proxy every connection has its address), not from the total.

The hook is aiohttp's own: ``GuardedServer`` (a ``web.Server``) makes ``GuardedRequestHandler``s (its
``RequestHandler``), and ``GuardedAppRunner`` swaps it in for the ``Server`` an ``AppRunner`` makes.
Refusals and timeouts are logged at most once a minute per address (per kind), never per connection.

At a stop, the server also cuts the requests still in flight when their grace ends
(``GuardedServer.end_in_flight``), while their connections can still carry an answer: ``shared.http``'s
``error_middleware`` answers one nothing was sent for a 503 the caller's SDK retries (aiohttp cancelled them 5 s
later and closed the connection in the same breath, an empty reply), and ends a stream that had begun with the
last event its handler gave for a stop (``end_at_stop``: an error event, where the stream was cut with no reason).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from loguru import logger

from shared.client_address import Network, address_key, is_trusted

if TYPE_CHECKING:
    from shared.settings import CommonSettings

LOG_EVERY_S = 60.0
# The last bytes of a stream should this process's stop cut it (``end_at_stop``): made when it is cut.
STOP_ENDING = web.RequestKey[Callable[[], bytes]]("sn1_stop_ending")
# What a connection past a cap is told before it is closed (it sent nothing yet: a whole answer in one write).
_REFUSED_BODY = (b'{"error":{"message":"Too many connections are open from this address or in all '
                 b'(MAX_CONNECTIONS_PER_IP, MAX_CONNECTIONS); retry shortly.","type":"service_unavailable",'
                 b'"code":"too_many_connections","param":null}}')
REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(_REFUSED_BODY)).encode() + b"\r\n\r\n" + _REFUSED_BODY)
# What a server answers where aiohttp would answer plain text (``GuardedRequestHandler.handle_error``): given the
# request (an empty stand-in for one the parser refused), the status, the exception, the length of the request's
# first line as far as it came (a refused one's) and whether it was its connection's first; made by ``shared.http``.
ErrorAnswer = Callable[[web.BaseRequest, int, BaseException | None, int, bool], web.StreamResponse]
# What an app does with the answer to a request the parser refused, which none of its middlewares nor response hooks
# see (the API counts it in its metrics, and opens it to browsers): given the stand-in request and the answer.
RefusalHook = Callable[[web.BaseRequest, web.StreamResponse], None]
REFUSAL_HOOKS = web.AppKey("sn1_refusal_hooks", list)
_MAX_TOLD = 4096  # addresses whose last log line is remembered; older ones are forgotten past this
FD_HEADROOM = 0.25  # of the fd limit kept for the process's own files and outgoing connections


@dataclass(frozen=True)
class ConnectionLimits:
    """What ``ConnectionGuard`` enforces (``HEADER_TIMEOUT``, ``MAX_CONNECTIONS``, ``MAX_CONNECTIONS_PER_IP``)."""

    header_timeout: float = 10.0
    max_connections: int = 10_000
    max_per_ip: int = 1024
    trusted: tuple[Network, ...] = ()
    keepalive_timeout: float = 75.0  # an idle kept-alive connection's lifetime (aiohttp's own: 3630 s)


def connection_limits(settings: CommonSettings, trusted: tuple[Network, ...] = ()) -> ConnectionLimits:
    """The limits a process's settings say; ``trusted``: the proxies exempt from the per-address cap."""
    return ConnectionLimits(header_timeout=settings.header_timeout, max_connections=settings.max_connections,
                            max_per_ip=settings.max_connections_per_ip, trusted=trusted,
                            keepalive_timeout=settings.keepalive_timeout)


def fd_limited(limits: ConnectionLimits, *, raise_soft: bool = True) -> ConnectionLimits:
    """``limits`` with ``max_connections`` lowered to what the process's file descriptor limit can hold.

    The soft ``RLIMIT_NOFILE`` is first raised to the hard one (often 1024 against 524288: the soft
    default is for programs that ``select()``, which no server here does). A quarter of it stays free
    for the process's own files and connections (miners, Redis, the chain): a total cap above the limit
    would let clients take the descriptors the metagraph refresh and ``/health`` need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_soft and soft != hard and (hard == resource.RLIM_INFINITY or hard > soft):
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as e:
            logger.debug("could not raise the file descriptor limit from {}: {}", soft, e)
    usable = max(64, int(soft * (1 - FD_HEADROOM)))
    if limits.max_connections <= usable:
        return limits
    logger.warning("MAX_CONNECTIONS: {} is more than this process's file descriptor limit ({}) can hold with room "
                   "for its own; capped at {} (raise `ulimit -n` / LimitNOFILE to allow more)",
                   limits.max_connections, soft, usable)
    return dataclasses.replace(limits, max_connections=usable)


class ConnectionGuard:
    """The open-connection counts of one server (one process), and their throttled log lines."""

    def __init__(self, limits: ConnectionLimits, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0  # connections closed at once by a cap, since start
        self.timed_out = 0  # connections closed by the header timeout, since start
        self._per_address: dict[str, int] = {}
        self._told: dict[str, tuple[float, int]] = {}  # what -> (when last logged, how many since)
        self._clock = clock

    def open_from(self, address: str) -> int:
        """Connections open now from ``address``'s bucket (tests, diagnostics)."""
        key = address_key(address)
        return self._per_address.get(key, 0) if key else 0

    def admit(self, address: str | None) -> tuple[bool, str | None]:
        """Count a new connection from ``address``; ``(False, _)`` when a cap refuses it. The key returned
        is what ``release`` is given when it closes (``None``: not counted per address)."""
        if self.open >= self.limits.max_connections:
            self._refuse("*", "MAX_CONNECTIONS", f"{self.open} connections are open")
            return False, None
        key = None if address and is_trusted(address, self.limits.trusted) else address_key(address)
        if key is not None:
            held = self._per_address.get(key, 0)
            if held >= self.limits.max_per_ip:
                self._refuse(key, "MAX_CONNECTIONS_PER_IP", f"{key} has {held} open")
                return False, None
            self._per_address[key] = held + 1
        self.open += 1
        return True, key

    def release(self, key: str | None) -> None:
        self.open -= 1
        if key is None:
            return
        held = self._per_address.get(key, 0) - 1
        if held > 0:
            self._per_address[key] = held
        else:
            self._per_address.pop(key, None)

    def header_timeout(self) -> None:
        """A connection closed for not sending a whole request in time: one line a minute says how many."""
        self.timed_out += 1
        self._tell("header-timeout", lambda n: logger.info(
            "closed {} connection(s) that sent no whole request line and headers within {:g} s (HEADER_TIMEOUT)",
            n, self.limits.header_timeout))

    def _refuse(self, key: str, setting: str, why: str) -> None:
        self.refused += 1
        self._tell(key, lambda n: logger.warning(
            "refused {} new connection(s): {} ({} = {})", n, why, setting,
            self.limits.max_connections if key == "*" else self.limits.max_per_ip))

    def _tell(self, what: str, line: Callable[[int], None]) -> None:
        """Call ``line(count)`` at most once per ``LOG_EVERY_S`` for ``what``, with the count of events
        since the last line: a flood costs one line a minute per address, not one per connection. Events
        held back are told when their minute ends (a burst's rest was told only at the next event, if any)."""
        now = self._clock()
        last, pending = self._told.get(what, (float("-inf"), 0))
        pending += 1
        if now - last < LOG_EVERY_S:
            self._told[what] = (last, pending)
            if pending == 1:  # the first held back: told when the minute ends
                with contextlib.suppress(RuntimeError):  # no loop (a test's direct call): told at the next event
                    asyncio.get_running_loop().call_later(LOG_EVERY_S - (now - last), self._tell_held, what, line)
            return
        line(pending)
        self._told[what] = (now, 0)
        if len(self._told) > _MAX_TOLD:  # many addresses: forget those not heard of for a minute
            self._told = {k: v for k, v in self._told.items() if now - v[0] < LOG_EVERY_S}

    def _tell_held(self, what: str, line: Callable[[int], None]) -> None:
        last, pending = self._told.get(what, (0.0, 0))
        if pending:
            line(pending)
            self._told[what] = (self._clock(), 0)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler, with the guard's caps at ``connection_made`` and a header clock.

    The clock runs from the connection's opening, and again from the first byte of each next request
    (a byte that arrives when the last request's body, if any, has all arrived); a whole request line
    and headers stop it. When it fires the connection is closed, unless a request on it is still
    being answered (it looks again one timeout later). Idle time with no byte sent after a request is
    ``keepalive_timeout``'s to bound, as before."""

    __slots__ = ("_guard", "_guard_key", "_admitted", "_header_clock", "_open_payload", "cut_by_stop", "closed_here",
                 "_answer_error", "_line_length", "_line_ended")

    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, answer_error: ErrorAnswer,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._answer_error = answer_error
        self._line_length = 0  # bytes of the next request's first line seen so far (up to its line break)
        self._line_ended = False
        self._guard_key: str | None = None
        self._admitted = False
        self._header_clock: asyncio.TimerHandle | None = None
        self._open_payload: Any = None  # the body of the last request, while it has not all arrived
        self.cut_by_stop = False  # the server's stop cancelled the request being answered (``cut_in_flight``)
        self.closed_here = False  # this server closed the connection (``force_close``), not its peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        self._admitted, self._guard_key = self._guard.admit(address)
        if not self._admitted:
            self._force_close = True  # nothing it sends is parsed
            # A clear answer, not a bare close. Not ``isinstance(transport, asyncio.WriteTransport)``: uvloop's
            # transports, which every process runs on, are no subclass of it, and the 503 was never written.
            write = getattr(transport, "write", None)
            if callable(write):
                write(REFUSED)
            transport.close()
            return
        super().connection_made(transport)
        self._start_header_clock()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_clock()
        self._open_payload = None
        if self._admitted:
            self._admitted = False
            self._guard.release(self._guard_key)
        here = self.closed_here
        super().connection_lost(exc)
        self.closed_here = here  # aiohttp's connection_lost calls force_close too: a peer's close is none from here

    def force_close(self) -> None:
        """Close the connection from this side (a stop's cut, aiohttp's own at the end of a stop, a header timeout):
        marked, so that a handler it cancels is not taken for one whose caller left (``ended_by_stop``)."""
        self.closed_here = True
        super().force_close()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        in_body = self._open_payload is not None  # these bytes go on the last request's body
        if not in_body:
            self._measure_line(data)
        super().data_received(data)
        if self._request_count != requests:  # a whole request line and headers (or a refused one)
            if not self._messages or not isinstance(getattr(self._messages[-1][0], "exc", None), HttpProcessingError):
                self._line_length, self._line_ended = 0, False  # the next request's line is measured afresh
            self._stop_header_clock()
            payload = self._messages[-1][1] if self._messages else None
            self._open_payload = payload if payload is not None and not payload.is_eof() else None
            return
        if self._open_payload is not None and self._open_payload.is_eof():
            self._open_payload = None
        # Bytes that went on (or ended) a body are no next request: counted as one, the body's last bytes (a
        # body sent after its headers: curl's 100-continue, any body over one read) closed the kept-alive
        # connection 10 s later, as a slow client's.
        if data and not in_body:
            self._start_header_clock()

    def _measure_line(self, data: bytes) -> None:
        """Count the request line's bytes up to its line break: a refused request whose line is longer than the
        parser's limit is a URI too long (414), one whose line ended within it a header too long (431); aiohttp
        raises the same ``LineTooLong`` for both. (A head that follows another in the same read, pipelined, is
        measured from the read's start: at worst a 414 said a 431.)"""
        if self._line_ended:
            return
        end = data.find(b"\n")
        self._line_length += len(data) if end < 0 else end
        self._line_ended = end >= 0

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer where no app middleware runs (a request its parser refused, a failure outside every
        error middleware), made an OpenAI-shaped error by ``answer_error``: aiohttp's own is plain text, which the
        OpenAI SDKs show as an unreadable error. A refused request is logged by ``answer_error``, once; anything
        else, by aiohttp (``ServerLog``: a bug's traceback), which also raises when an answer had begun."""
        if not isinstance(exc, HttpProcessingError):
            super().handle_error(request, status, exc, message)
        return self._answer_error(request, status, exc, self._line_length, self._request_count == 1)

    def _start_header_clock(self) -> None:
        if self._header_clock is None:
            self._header_clock = self._loop.call_later(self._guard.limits.header_timeout, self._header_clock_fired)

    def _stop_header_clock(self) -> None:
        if self._header_clock is not None:
            self._header_clock.cancel()
            self._header_clock = None

    def _header_clock_fired(self) -> None:
        self._header_clock = None
        if self.transport is None or self._force_close:
            return
        if self._request_in_progress:  # pipelined bytes behind a request still being answered
            self._start_header_clock()
            return
        self._guard.header_timeout()
        self.force_close()

    def cut_in_flight(self, only: web.Request | None = None) -> bool:
        """Cancel the request being answered (``only``: if it is that one), marked ``cut_by_stop``, when its caller
        can still be told why: not a byte of its answer went out yet (its handler's middleware answers it a 503), or
        it is a stream that gave its last event for a stop (``end_at_stop``: the middleware writes it, then closes).
        Whether it did (once: a second call leaves its answer be); any other (a stream that gave none)
        ``end_in_flight`` closes."""
        request = self._current_request
        if only is not None and request is not only:
            return False
        if self.cut_by_stop or request is None or request.task.done():
            return self.cut_by_stop
        if request.writer.output_size and STOP_ENDING not in request:
            return False
        self.cut_by_stop = True
        request.task.cancel()
        return True


class GuardedServer(web.Server):
    """aiohttp's ``Server`` (the protocol factory a site listens with), making guarded handlers."""

    def __init__(self, *args: Any, guard: ConnectionGuard, answer_error: ErrorAnswer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.answer_error = answer_error

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, guard=self.guard, answer_error=self.answer_error,
                                     **self._kwargs)

    def end_in_flight(self) -> None:
        """As a stop's grace ends: the requests nothing was sent for yet, and the streams that gave their last event
        for a stop, are cut (``cut_in_flight``), their connections still open, so that each is answered a 503 to
        retry elsewhere, or ends with that event; every other connection is closed, which cancels its handler
        (aiohttp itself cancels only a handler reading its request's body, and waits as long again for the others,
        then closes their connections in the same breath as it cancels them: an empty reply)."""
        for connection in list(self.connections):
            if not (isinstance(connection, GuardedRequestHandler) and connection.cut_in_flight()):
                connection.force_close()


def cut_by_stop(request: web.Request) -> bool:
    """Whether the server's stop cancelled ``request`` (``cut_in_flight``): nothing of its answer had gone out, or
    it is a stream with a last event for a stop (``end_at_stop``)."""
    return getattr(request.protocol, "cut_by_stop", False)


def cut_now(request: web.Request) -> bool:
    """Cut ``request`` at once, as a stop's grace ends cuts it (``cut_in_flight``: a stream with a last event for a
    stop, ``end_at_stop``, ends with it), for one that has nothing to wait for in the grace (a caller following a
    background response, which goes on without it). Whether it was cut."""
    protocol = request.protocol
    return isinstance(protocol, GuardedRequestHandler) and protocol.cut_in_flight(request)


def end_at_stop(request: web.Request, ending: Callable[[], bytes] | None) -> None:
    """From now on, a stop that cuts ``request``'s stream (begun: its headers went out) ends it with ``ending()``'s
    bytes (made then: a Responses stream's last events carry its sequence numbers), then closes its connection:
    the caller's SDK raises with the reason, where the stream was cut with no word (no ``[DONE]``, no error).
    ``None``: no more (the stream is writing its own end)."""
    if ending is None:
        request.pop(STOP_ENDING, None)
    else:
        request[STOP_ENDING] = ending


def ended_by_stop(request: web.Request) -> bool:
    """Whether the server, not the caller, ended ``request`` (asked of one cancelled while the process stops): cut
    before any of its answer went out (``cut_by_stop``), its connection closed from this side (``force_close``:
    as the stop's grace ended), or its handler cancelled with the connection still open (aiohttp's own cancel of
    one reading its body). A caller that leaves closes the connection first, from its side: such a request is the
    caller's (a race the API settled, its deadline), during a stop as at any other time."""
    protocol = request.protocol
    return cut_by_stop(request) or getattr(protocol, "closed_here", False) or request.transport is not None


class GuardedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose server guards its connections with ``guard`` and answers what aiohttp answers itself
    with ``answer_error``."""

    def __init__(self, app: web.Application, *, guard: ConnectionGuard, answer_error: ErrorAnswer,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        self.answer_error = answer_error

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # the app's start-up runs here, as it does in AppRunner
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, loop=asyncio.get_running_loop(),
                             guard=self.guard, answer_error=with_refusal_hooks(self.answer_error, self.app),
                             **plain._kwargs)


def on_refusal(app: web.Application, hook: RefusalHook) -> None:
    """Call ``hook`` with each answer to a request aiohttp's parser refused (``REFUSAL_HOOKS``), before it is sent."""
    app.setdefault(REFUSAL_HOOKS, []).append(hook)


def with_refusal_hooks(answer: ErrorAnswer, app: web.Application) -> ErrorAnswer:
    """``answer``, then ``app``'s refusal hooks on a parser's refusal's answer (``answer`` itself with none). Only
    ``handle_error`` calls it: nothing here runs for a request that was read."""
    hooks: list[RefusalHook] = app.get(REFUSAL_HOOKS, [])
    if not hooks:
        return answer

    def answered(request: web.BaseRequest, status: int, exc: BaseException | None, line: int,
                 first: bool) -> web.StreamResponse:
        response = answer(request, status, exc, line, first)
        if isinstance(exc, HttpProcessingError):
            for hook in hooks:
                hook(request, response)
        return response

    return answered
