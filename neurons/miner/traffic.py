"""The miner's request log: one INFO line per chat request, and a summary a minute.

Each chat request's line names the caller's request id (the API's ``x-request-id``, the
``rid=`` of its access line), so an on-call engineer follows a request from the API's
line into the miner's without turning on DEBUG (it was a DEBUG line: a miner's log at
INFO showed no request at all). A loguru call per request cost the miner about a tenth
of its CPU under load, so the lines go through ``RequestLog``, as the API's access log
does: an f-string and an append per request, handed to loguru in batches.
``/availability`` and ``/health`` are a DEBUG line each, counted in the summary:
validators and APIs poll them.

A request the signature check refuses is a WARNING line of its own (``RefusalLog``):
an operator must see a validator whose clock is off or a hotkey without a permit
without turning on DEBUG. Strangers can send refusals as fast as they like, so only
the first ``REFUSAL_LINES`` of a minute get a line; the rest are counted and told in
one WARNING at the minute's end.

So is a chat request the model server failed or refused (``TrafficLog.record``'s
``failure``): a wrong ``UPSTREAM_API_KEY``, a server down or out of memory, a field it
refuses, were only a count of failures in the minute's INFO line, and why was seen
nowhere but at DEBUG on the API's side. A dead model server fails every request, so
these lines are budgeted the same way (``LineBudget``). That WARNING is the request's
one line; past the budget its INFO line carries the failure instead.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from loguru import logger

from shared.errors import MODEL_SERVER_REJECTED, ApiError
from shared.http import route_path
from shared.ids import request_id_from
from shared.logging import field_value, printable
from shared.request_log import RequestLog
from shared.signing import claimed_hotkey, verified_hotkey

SUMMARY_SECONDS = 60.0
CLIENT_GONE = 499  # the status logged for a caller that left first (nginx's word for it)
MAX_SAMPLES = 10_000  # latencies kept per interval for the median: bounded memory under any load
REFUSAL_LINES = 20  # refusals logged one by one per interval; the rest are counted (a flood is one line)
MAX_HOTKEYS = 1000  # distinct hotkeys counted per interval: bounded memory under a flood of made-up ones
STALE = "StaleRequest"  # its line adds why (``signing.check_fresh``: how far off the caller's clock is; our words)
# Refusals whose line adds the refusal's message (our words): how far off a clock is, which hotkey a request was
# signed for (a miner run with another hotkey than its axon's refuses every request so), why a hotkey is not taken
EXPLAINED = (STALE, "WrongReceiver", "NotAValidator")
# Refusals of a validator's request that this miner's setup causes (its clock, its hotkey), told in ``/health``
SETUP_REFUSALS = (STALE, "WrongReceiver")
SETUP_WINDOW_S = 120.0  # seconds such a refusal stays a problem (validators call every few seconds)


MAX_REASONS = 100  # distinct failure reasons counted per interval beyond the logged ones
REASON_CHARS = 160  # of a failure's message, what is counted as its reason


class LineBudget:
    """How many WARNING lines of one kind an interval may still write: the first ``max_lines`` of it get a
    line each, the rest are only counted (by whoever holds the budget) and told once at its end."""

    def __init__(self, max_lines: int = REFUSAL_LINES) -> None:
        self.max_lines = max_lines
        self.used = 0

    def take(self) -> bool:
        """Whether one more line may be written now (and count it)."""
        if self.used >= self.max_lines:
            return False
        self.used += 1
        return True

    def reset(self) -> None:
        self.used = 0


class TrafficLog:
    def __init__(self, max_failure_lines: int = REFUSAL_LINES, *, lines: RequestLog | None = None) -> None:
        """``lines``: where each request's INFO line goes (``RequestLog("miner")`` at INFO when not given)."""
        self.failure_lines = LineBudget(max_failure_lines)
        self.lines = lines if lines is not None else RequestLog("miner")
        self._reset()

    def _reset(self) -> None:
        self.failure_lines.reset()
        self.unlogged: Counter[str] = Counter()  # failures past the budget, by reason
        self.requests = 0
        self.failed = 0
        self.left = 0  # the caller went away first (a race another miner won, a deadline): no failure
        self.callers: set[str] = set()
        self.latencies_ms: list[float] = []
        self.other: Counter[str] = Counter()  # availability and health requests, by route

    def record(self, *, rid: str, caller: str, stream: bool, status: int, latency_ms: float,
               failure: str | None = None, code: str | None = None, model: str | None = None,
               ttft_ms: float | None = None) -> None:
        """One chat request, one line: ``failure``, why the model server did not answer it (a WARNING line,
        within the budget); ``code``, the error code the caller was answered with; ``model``, the model it asked
        for, when that is why (``model_not_found``: the line said only the code, and an operator could not tell
        which model the validators want that this miner lacks); ``ttft_ms``, a stream's time to its first chunk."""
        if failure is not None:
            self._failed(rid, caller, stream, status, latency_ms, code, failure, ttft_ms)
        elif self.lines.enabled:  # nothing is formatted at LOG_LEVEL=WARNING
            self.lines.write(_line(rid, caller[:10], stream, status, latency_ms, code, model, ttft_ms))
        self.requests += 1
        self.left += status == CLIENT_GONE
        self.failed += status >= 400 and status != CLIENT_GONE
        if len(self.callers) < 1000:
            self.callers.add(caller)
        if len(self.latencies_ms) < MAX_SAMPLES:
            self.latencies_ms.append(latency_ms)

    def _failed(self, rid: str, caller: str, stream: bool, status: int, latency_ms: float, code: str | None,
                failure: str, ttft_ms: float | None = None) -> None:
        """A request the model server failed: its line is a WARNING saying why, naming the whole hotkey (the
        first of the interval's budget), else its INFO line ends with why and the reason is counted for the
        summary."""
        if self.failure_lines.take():
            logger.warning("{}: the model server {}: {}", _line(rid, caller, stream, status, latency_ms, code,
                                                                 ttft_ms=ttft_ms),
                           "refused the request" if status < 500 else "failed", printable(failure))
            return
        reason = printable(failure[:REASON_CHARS])
        self.lines.write(f"{_line(rid, caller[:10], stream, status, latency_ms, code, ttft_ms=ttft_ms)} "
                         f"failure={reason}")
        if reason in self.unlogged or len(self.unlogged) < MAX_REASONS:
            self.unlogged[reason] += 1

    def seen(self, request: web.Request, kind: str) -> None:
        """A request to ``/availability`` or ``/health`` (always answered 200): a DEBUG line, and a count."""
        logger.debug("{} rid={} caller={} status=200", kind, request_id_from(request.headers),
                     verified_hotkey(request)[:10])
        self.other[kind] += 1

    def summary(self, seconds: float) -> str | None:
        """The interval's line (None when there was no traffic); starts the next interval."""
        if not self.requests and not self.other:
            return None
        line = f"served no chat requests in the last {seconds:.0f}s"
        if self.requests:
            p50 = statistics.median(self.latencies_ms) if self.latencies_ms else 0.0
            line = (f"served {self.requests} chat requests in the last {seconds:.0f}s "
                    f"({self.failed} failed, {self.left} left by the caller first) from {len(self.callers)} "
                    f"caller(s), p50 latency {p50:.1f} ms")
        if self.other:
            line += "; " + ", ".join(f"{n} {kind}" for kind, n in sorted(self.other.items()))
        if self.unlogged:
            reason, n = self.unlogged.most_common(1)[0]
            line += (f"; {sum(self.unlogged.values())} model server failures past the "
                     f"{self.failure_lines.max_lines} logged one by one, most ({n}): {reason}")
        self._reset()
        return line


def _line(rid: str, caller: str, stream: bool, status: int, latency_ms: float, code: str | None,
          model: str | None = None, ttft_ms: float | None = None) -> str:
    """``chat rid=... caller=... stream=... status=... latency_ms=...`` (`` ttft_ms=...`` for a stream that got its
    first chunk, `` code=...`` for an error answer, then `` model=...`` for one that names the model asked for: the
    caller's words, as one word, cut: ``field_value``)."""
    return (f"chat rid={rid} caller={caller} stream={stream} status={status} latency_ms={latency_ms:.1f}"
            f"{'' if ttft_ms is None else f' ttft_ms={ttft_ms:.1f}'}"
            f"{'' if code is None else f' code={code}'}{'' if model is None else f' model={field_value(model)}'}")


class RefusalLog:
    """Requests the signature check refused: a WARNING line each, the first ``REFUSAL_LINES`` of an
    interval; after that counted by reason and hotkey and told in ``summary``'s one line.

    ``caller``: whether a hotkey may call this miner (a validator's). Its requests refused for this miner's own setup
    (``SETUP_REFUSALS``: a clock off, a miner run with another hotkey than its axon's) are ``problems``: every
    validator's job refused so scores this miner 0, while ``/health`` said nothing."""

    def __init__(self, max_lines: int = REFUSAL_LINES, *, caller: Callable[[str], bool] | None = None) -> None:
        self.lines = LineBudget(max_lines)
        self._caller = caller
        self._setup: dict[str, tuple[float, str]] = {}  # reason -> when (monotonic), and its line's words
        self._reset()

    def problems(self) -> list[str]:
        """The ``SETUP_REFUSALS`` of callers' requests within the last ``SETUP_WINDOW_S`` seconds, the latest each."""
        now = time.monotonic()
        return [f"requests of a validator refused as {reason} in the last {SETUP_WINDOW_S:g} s (each a 0 when "
                f"scored), the latest {now - at:.0f} s ago: {words}"
                for reason, (at, words) in sorted(self._setup.items()) if now - at <= SETUP_WINDOW_S]

    def _reset(self) -> None:
        self.lines.reset()
        self.reasons: Counter[str] = Counter()  # of the refusals not logged one by one
        self.hotkeys: Counter[str] = Counter()

    def record(self, request: web.Request, error: ApiError) -> None:
        """``btauth_middleware``'s ``on_refused``: the request id, the hotkey it claims (never its
        signature), the route's pattern, the status and why."""
        hotkey, reason = claimed_hotkey(request.headers), error.code or str(error.status)
        if reason in SETUP_REFUSALS and self._caller is not None and self._caller(hotkey):
            self._setup[reason] = (time.monotonic(), f"hotkey {hotkey}: {printable(error.message)}")
        if self.lines.take():
            logger.warning("refused rid={} hotkey={} method={} route={} status={} reason={}{}",
                           request_id_from(request.headers), hotkey, request.method, route_path(request),
                           error.status, reason, _explained(reason, error.message))
            return
        self.reasons[reason] += 1
        if hotkey in self.hotkeys or len(self.hotkeys) < MAX_HOTKEYS:
            self.hotkeys[hotkey] += 1

    def summary(self, seconds: float) -> str | None:
        """The refusals of the interval that got no line of their own (None when there were none);
        starts the next interval."""
        if not self.reasons:
            self._reset()
            return None
        reasons = " ".join(f"{r}={n}" for r, n in self.reasons.most_common())
        top = ", ".join(f"{h} ({n})" for h, n in self.hotkeys.most_common(3))
        line = (f"refused {sum(self.reasons.values())} more requests in the last {seconds:.0f}s than were "
                f"logged one by one ({self.lines.max_lines}): {reasons}; from {len(self.hotkeys)} hotkey(s), "
                f"most: {top}")
        self._reset()
        return line


def _explained(reason: str, message: str) -> str:
    """`` (why)`` for a refusal in ``EXPLAINED``, its message without the reason's own name; else nothing."""
    return f" ({printable(message.removeprefix(f'{reason}: '))})" if reason in EXPLAINED else ""


FAILING_STREAK = 3  # chat requests in a row the model server failed before ``/health`` says so
FAILING_STATUSES = frozenset({502, 504})  # the model server failed (an error, garbage, down) or was too slow


# Where a failure's own words end and the model server's begin (``upstream HTTP 500: <its message>``): what
# ``/health``, which anyone who reaches the miner's port may read, leaves out, as the server may quote a caller's prompt.
SERVER_WORDS = re.compile(r"(HTTP \d{3}|\((?:\d{3}|no status|no 'choices')\)): .*", re.DOTALL)


class FailureStreak:
    """The chat requests in a row that the model server failed (this miner's 502s and 504s), for ``/health``'s
    ``problems``. A model server that went down after the start, a wrong ``UPSTREAM_API_KEY`` or one slower than
    callers wait failed every request while ``/health`` said ``ok`` with no problem: a monitor saw a healthy miner
    that scored 0. An answer, or a refusal of the caller's request (``model_server_rejected``: the server
    answered), ends the streak."""

    def __init__(self, streak: int = FAILING_STREAK) -> None:
        self.streak = streak
        self.failed = 0
        self.since = 0.0  # Unix seconds at the streak's first failure
        self.latest = ""

    def record(self, status: int, code: str | None, failure: str | None) -> None:
        if status == 200 and failure is None or code == MODEL_SERVER_REJECTED:
            self.failed = 0
        elif failure is not None and status in FAILING_STATUSES:
            self.since = self.since if self.failed else time.time()
            self.failed += 1
            self.latest = failure

    def problem(self) -> str | None:
        """The streak in words, once it is ``streak`` long (None before, and once an answer ended it)."""
        if self.failed < self.streak:
            return None
        since = time.strftime("%H:%M:%S", time.gmtime(self.since))
        latest = SERVER_WORDS.sub(r"\1 (its words are in the WARNING lines)", self.latest, count=1)
        return (f"the model server failed the last {self.failed} chat requests in a row (since {since} UTC; each "
                f"scores 0), the latest: {printable(latest[:REASON_CHARS * 2])}")


TRAFFIC = web.AppKey("traffic", TrafficLog)
FAILING = web.AppKey("failing", FailureStreak)
REFUSALS = web.AppKey("refusals", RefusalLog)


async def summary_loop(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: log the summaries every ``SUMMARY_SECONDS`` while the app runs."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(SUMMARY_SECONDS)
            line = app[TRAFFIC].summary(SUMMARY_SECONDS)
            if line:
                logger.info(line)
            refused = app[REFUSALS].summary(SUMMARY_SECONDS)
            if refused:
                logger.warning(refused)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
