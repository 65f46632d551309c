"""Background responses (``background: true``): answered after the request that asked for them.

The request is answered at once with the response ``queued``, stored as pending;
a task of this worker then races it as any response (its web search too) and
settles the stored record (``completed``, ``incomplete`` or ``failed``), unless
``POST /v1/responses/{id}/cancel`` (on any worker) settled it ``cancelled``
first: the store settles a pending response once, and the task, which asks
the store every ``WATCH_EVERY_S`` whether it is still pending, then stops its
miners (at once when the cancel came to its own worker). Callers poll
``GET /v1/responses/{id}``, as OpenAI's guide has it. A record still pending
past its deadline (the process running it died) reads as ``failed``; a worker
that shuts down gives the ones it runs ``SHUTDOWN_GRACE_S`` to finish, then
fails them.

A streamed one (``stream: true`` too) is answered with its events as they are
made, and they are kept (``EventLog``: here for the callers following it on
this worker, in the store for the others): a caller whose connection dropped
streams it again from where it was (``GET /v1/responses/{id}?stream=true&
starting_after=N``, on any worker), and the answer goes on without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from loguru import logger

from api import access_log, conversations_state
from api.access_log import answer_line, ended_with, hold, release, request_id
from api.auth import invalid_api_key, store_errors
from api.completion import outcome_code
from api.context import CTX, ApiContext
from api.last_stored import UNNAMED
from api.responses_render import ResponseStream, reopened
from api.responses_state import (
    PENDING,
    Keeping,
    as_it_is,
    failed,
    failure_code,
    item_ids,
    previous_not_found,
    response_store_call,
    settle_counted,
    stored_events,
    turn_failed,
)
from api.storage_budget import charged
from shared.aio import follow_growing
from shared.connections import cut_now, end_at_stop
from shared.errors import SERVER_SHUTTING_DOWN, STOPPING, ApiError, invalid_value, retry_after
from shared.http import json_response
from shared.jsonutil import dumpb
from shared.sse import SSE_HEADERS
from shared.store.base import KeyRecord, StoreUnavailable
from shared.store.responses import PreviousGone, StoredResponse

WATCH_EVERY_S = 1.0  # how often a running background response asks whether it was cancelled on another worker
SHUTDOWN_GRACE_S = 5.0  # a graceful shutdown waits this long for them, as for a request in flight; then fails them
SHUT_DOWN = "the gateway shut down before it finished: send the request again"
# The statuses a stream's last event names (OpenAI's stream has no event for a cancelled one: it just ends).
ENDINGS = ("completed", "incomplete", "failed")
FOLLOW_EVERY_S = 0.1  # how often a stream resumed on another worker reads the store for the next events
# A background response's place in the bounds while it is being started (``reserved``): in ``background_owners``
# under this prefix and the request's id, until its task is tracked under its response id.
RESERVED_PREFIX = "starting-"
RESERVED = web.RequestKey("sn1_background_reserved", str)
# A streamed response's events are stored (for a resume on another worker, or after it ended) up to this many
# bytes, some 16,000 tokens' deltas; past it only the events that are not deltas: each item's .done events and
# the last one carry it whole, so a resume past the bound has every item, not each piece of it (the deltas'
# sequence numbers are skipped). A delta event is some 50 times the text it carries.
MAX_STORED_EVENT_BYTES = 4 << 20
# A streamed response's stored events are counted against its key's daily storage budget each time this many more
# bytes of them are stored (and the rest once it ends): a worker that dies part way leaves at most this uncounted.
COUNT_EVENTS_EVERY = 64 << 10
TAIL_WAIT_S = 1.0  # how long it waits, once the response is settled, for the last events its worker writes then
SETTLE_RETRY_S = 1.0  # how often an answer the store could not take is offered again (until the record's deadline)
LINE_KIND = "responses.background"  # the first word of a background turn's access line (after the request's own)
# A background turn's access line when its end is not its race's (``settle``): the store failed it, or a cancel (a
# delete) or a shutdown came first.
STORE_FAILED, CANCELLED, SHUT_DOWN_STATUS = "store_unavailable", "cancelled", access_log.SHUT_DOWN


class EventLog:
    """A streamed background response's events (SSE frames, one per sequence number) as they are made:
    kept here, for the callers following it on this worker, and in the store, for any other. Its last
    event (``response.completed`` ...) is added once the response is settled, so a caller that has it
    finds the response stored."""

    def __init__(self, ctx: ApiContext, key: KeyRecord, response_id: str, retention: float,
                 events: ResponseStream) -> None:
        self.ctx, self.key, self.response_id, self.retention = ctx, key, response_id, retention
        self.key_id = key.id
        self.events = events  # the renderer, whose sequence numbers the frames carry
        self.tail: bytes | None = None  # the answer's closing events (its items done), held until it is settled
        self.frames: list[bytes] = []  # every event, frames[n] numbered n: its callers here miss none
        self.stored_bytes = 0
        self.counted_bytes = 0  # of those, counted against its key's daily storage budget so far
        self.cut = False  # whether deltas are left out of the store (past MAX_STORED_EVENT_BYTES)
        self.done = False
        self._new = asyncio.Event()

    async def add(self, chunk: bytes) -> None:
        """Append events (a renderer's output: whole frames); a store that fails costs a resume on another
        worker these events (a WARNING), not the callers following here."""
        frames = [frame + b"\n\n" for frame in chunk.split(b"\n\n") if frame]
        if not frames:
            return
        first = len(self.frames)
        self.frames.extend(frames)
        self._new.set()
        kept = [(seq, frame.decode()) for seq, frame in enumerate(frames, first) if self._stored(frame)]
        if not kept:
            return
        assert self.ctx.responses is not None
        try:
            await self.ctx.responses.add_events(self.key_id, self.response_id, kept, retention=self.retention)
        except StoreUnavailable as e:
            logger.warning("background response {}: events not stored: {}", self.response_id, e)
            return
        if self.stored_bytes - self.counted_bytes >= COUNT_EVENTS_EVERY:
            await self.count_stored()

    def _stored(self, frame: bytes) -> bool:
        """Whether an event goes to the store: every one up to MAX_STORED_EVENT_BYTES, then all but deltas."""
        if self.cut or self.stored_bytes + len(frame) > MAX_STORED_EVENT_BYTES:
            if frame.split(b"\n", 1)[0].endswith(b".delta"):
                if not self.cut:
                    logger.info("background response {}: past {} bytes of events, its deltas are no longer "
                                "stored", self.response_id, MAX_STORED_EVENT_BYTES)
                self.cut = True
                return False
        self.stored_bytes += len(frame)
        return True

    async def end(self, final: dict[str, Any] | None) -> None:
        """Its last events (the answer's closing ones, if any, then ``final`` as settled: ``response.completed``,
        or ``response.failed`` when its conversation could not take it), then no more."""
        if final is not None and final.get("status") in ENDINGS:
            await self.add((self.tail or b"") + self.events.ended(final))
        self.done = True
        self._new.set()

    async def count_stored(self) -> None:
        """Count the events it stored since the last count against its key's daily storage budget: every
        ``COUNT_EVENTS_EVERY`` bytes, and the rest when it has ended (one counter update per step, not one per batch
        of events). Counted once it ended only, a worker that died part way left them stored a day, uncounted. Let
        in, they are counted, not refused."""
        size = self.stored_bytes - self.counted_bytes
        if self.ctx.storage_budget is None or not size:
            return
        self.counted_bytes = self.stored_bytes
        await self.ctx.storage_budget.count_or_warn(
            self.key, size, f"background response {self.response_id}'s {size} bytes of events not counted")

    async def follow(self, after: int) -> AsyncIterator[bytes]:
        """The events after sequence number ``after``, as they come, until the last."""
        async for batch in follow_growing(self.frames, self._new, lambda: self.done, start=after + 1):
            yield b"".join(batch)


def check_request(ctx: ApiContext, key: KeyRecord, *, store: bool | None) -> None:
    """A background response is stored to be polled (or streamed again): each refusal a 400 naming its
    field, before anything is spent; a worker runs at most ``MAX_BACKGROUND_RESPONSES`` at once (a task
    each, and its miners' connections, held with no caller's connection to bound them), of which one key
    at most ``MAX_BACKGROUND_RESPONSES_PER_KEY``: past either a 429. Counted with those being started
    (``reserved``)."""
    if store is False:
        raise invalid_value("store", "a background response is stored, to be polled: send store: true (or leave "
                                     "it out)")
    if ctx.responses is None:
        raise invalid_value("background", "background responses are stored, and this gateway stores none "
                                          "(RESPONSES_RETENTION_SECONDS is 0)")
    if len(ctx.background_owners) >= ctx.settings.max_background_responses:
        raise no_room(f"This API worker is running {len(ctx.background_owners)} background responses, its bound "
                      "(MAX_BACKGROUND_RESPONSES)")
    mine = sum(1 for owner in ctx.background_owners.values() if owner == key.id)
    if mine >= ctx.settings.max_background_responses_per_key:
        raise no_room(f"This API key has {mine} background responses running on this API worker, its bound "
                      "(MAX_BACKGROUND_RESPONSES_PER_KEY)")


@contextlib.contextmanager
def reserved(request: web.Request, ctx: ApiContext, key: KeyRecord, *, store: bool | None) -> Iterator[None]:
    """``check_request``, and a place in its bounds held from the check until ``start`` tracks the response's task
    or the request fails: a request awaits the store (its history, its pending record) between the two, and a
    burst of a key's requests all passed the check before any was counted (64 at once, against a bound of 32)."""
    check_request(ctx, key, store=store)
    place = f"{RESERVED_PREFIX}{id(request)}"
    ctx.background_owners[place] = key.id
    request[RESERVED] = place
    try:
        yield
    finally:
        unreserve(request, ctx)


def unreserve(request: web.Request, ctx: ApiContext) -> None:
    """Give back the place ``reserved`` held for ``request`` (once: a second call does nothing)."""
    place = request.pop(RESERVED, None)
    if place is not None:
        ctx.background_owners.pop(place, None)


def no_room(why: str) -> ApiError:
    """The 429 of a background response past a bound, with the headers of every 429 (``retry_after``: a second,
    to the millisecond as the OpenAI SDKs read it): background responses end within seconds."""
    return ApiError(429, f"{why}: wait for some to finish, or send this one without background.",
                    code="too_many_background_responses", headers=retry_after(1))


async def start(request: web.Request, ctx: ApiContext, key: KeyRecord, queued: dict[str, Any], keeping: Keeping,
                seconds: float, work: Callable[[], Awaitable[Any]], log: EventLog | None = None, *,
                started: float) -> web.StreamResponse:
    """Store ``queued`` as pending, start ``work`` (the race; it seals ``keeping``, and fills ``log`` when
    streamed) in a task tracked for cancel and shutdown, and answer with ``queued``, or follow ``log``.
    ``seconds``: what ``work`` may take (its races' deadlines; the stored record reads failed past it and
    ``BACKGROUND_GRACE_SECONDS``); ``started``: the request's ``perf_counter`` start, for its turn's access line."""
    assert ctx.responses is not None
    # Stored in_progress: its task starts at once (none waits for room: past the bound is a 429), so a poll
    # finds it being answered; the caller gets OpenAI's first word for it, queued.
    until = time.time() + seconds + ctx.settings.background_grace_seconds  # it reads failed if still pending then
    polled = queued | {"status": "in_progress"}
    data = keeping.part(polled, until=until)
    if data is None:
        raise invalid_value("input", "the conversation is too large to store, and a background response is "
                                     "stored to be polled: send it without background")
    response_id = queued["id"]
    try:
        kept = await _put_pending(ctx, key, response_id, data, keeping.retention)
    except PreviousGone as e:  # deleted as its request came in
        if keeping.conversation_id is None:
            raise previous_not_found(str(e)) from e
        keeping.alone()  # a conversation's last stored turn: this one keeps the conversation whole
        kept = await _put_pending(ctx, key, response_id, keeping.whole(polled, until=until), keeping.retention)
    if not kept:
        raise invalid_api_key()  # deleted as its request came in
    # Tracked before anything else is awaited: a caller that left while its first events were being stored
    # (its handler cancelled there) left the log in ``response_logs`` for good, and the response unanswered.
    if log is not None:
        ctx.response_logs[response_id] = log
    owe_line(request, key, stream=log is not None, started=started)
    task = ctx.spawn(_run(request, ctx, key, queued, keeping, work, log, until=until))
    ctx.running_responses[response_id] = task
    ctx.background_owners[response_id] = key.id
    unreserve(request, ctx)  # counted as running from here

    def forget(_: Any) -> None:
        ctx.running_responses.pop(response_id, None)
        ctx.background_owners.pop(response_id, None)
        ctx.response_logs.pop(response_id, None)

    task.add_done_callback(forget)
    if log is None:
        return json_response(queued)
    # The caller knows its id before any miner has answered: these events are the log's first (added to it
    # before this awaits anything, so before the task runs).
    await log.add(log.events.start(queued=True))
    return await stream_log(request, response_id, log.follow(-1))


def owe_line(request: web.Request, key: KeyRecord, *, stream: bool, started: float) -> None:
    """The turn's line if its race never writes one (it failed before, in its web search): written once it is
    settled."""
    rid = request_id(request)
    hold(request, lambda status: answer_line(LINE_KIND, rid, key.id, [], None, stream=stream, mixture=False,
                                             status=status, started=started,
                                             code=outcome_code(status, access_log.failure(request))), "error")


def attempt_logged(request: web.Request, key: KeyRecord, *, stream: bool, started: float) -> None:
    """Write the line of a race that will be asked again (``truncation: "auto"``: its miners refused the
    conversation as too long), as a foreground request's race writes its own: only the last attempt's was, and
    the refused ones (``failed=1:refused``) went unseen. The next attempt's line is owed in its place."""
    release(request)
    owe_line(request, key, stream=stream, started=started)


async def stream_log(request: web.Request, response_id: str, events: AsyncIterator[bytes], *,
                     after: int = -1) -> web.StreamResponse:
    """Relay a background response's events (those after sequence number ``after``); a caller that leaves stops
    only its own stream, and this process's stop ends it at once (``ApiContext.followers``) with
    ``stopped_following``. Its headers name the request's id, as every other answer's do (this one's named none). A
    HEAD gets the headers alone: aiohttp writes what a stream writes whatever the method, and the events sent after
    a HEAD's headers were read by the client as its next answer on the connection."""
    response = web.StreamResponse(headers={"x-request-id": request_id(request), **SSE_HEADERS})
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return response
    ctx, sent = request.app[CTX], after
    end_at_stop(request, lambda: stopped_following(response_id, sent, here=response_id in ctx.running_responses))
    ctx.followers[id(request)] = request
    try:
        if ctx.stopping:  # came in during the stop's grace, on a connection kept alive
            cut_now(request)
        async for chunk in events:
            await response.write(chunk)
            sent = last_number(chunk, sent)
    finally:
        ctx.followers.pop(id(request), None)
    end_at_stop(request, None)
    await response.write_eof()
    return response


def stopped_following(response_id: str, sent: int, *, here: bool) -> bytes:
    """The last event of a caller following a background response when this process stops, sent at once (the
    response goes on without the caller: its events are stored): an ``error`` event (code ``server_shutting_down``,
    as every stream a stop cuts) saying how long the response goes on and where to stream it again from, with no
    ``sequence_number`` (every number is the response's own, stored for a resume: one taken here would be skipped or
    repeated there) and the error under ``error`` too, which both OpenAI SDKs raise as an ``APIError`` with its
    words. ``here``: this process runs the response, and gives it ``SHUTDOWN_GRACE_S`` from the stop signal, then
    fails it; else another runs it, which this stop does not touch. Its other events, its end too, are there to
    resume. Until 2026-12-07 it was sent only once the stop's grace for requests in flight (5 s) was over: the caller
    waited those seconds for nothing."""
    goes_on = (f"goes on here for up to {SHUTDOWN_GRACE_S:g} s while the server stops (it fails if it is not done "
               "by then)" if here else "goes on on another API worker")
    # one cut before its first event streams it from its start: ``starting_after=-1`` is a 400
    again = f"with starting_after={sent} for the rest of its events" if sent >= 0 else (
        "without starting_after for all its events")
    error = ApiError(503, f"{STOPPING}; response {response_id} {goes_on}, without this stream: stream it again "
                          f"{again} (its end too), from another API worker or this one once restarted, or poll it.",
                     code=SERVER_SHUTTING_DOWN, type_="server_error").body()["error"]
    return b"event: error\ndata: " + dumpb({"type": "error", "code": error["code"], "message": error["message"],
                                           "param": None, "error": error}) + b"\n\n"


_NUMBER = re.compile(rb'"sequence_number":(\d+)')  # an event's own, its data's first number (``ResponseStream.event``)


def last_number(chunk: bytes, before: int) -> int:
    """The sequence number of the last event in ``chunk`` (whole SSE frames), ``before`` when it has none."""
    found = _NUMBER.search(chunk.rstrip(b"\n").rsplit(b"\n\n", 1)[-1])
    return int(found.group(1)) if found else before


async def resumed(ctx: ApiContext, key: KeyRecord, found: StoredResponse, after: int) -> AsyncIterator[bytes]:
    """A streamed background response's events after sequence number ``after``: followed here when this
    worker is answering it, else read from the store until it is settled (its last event made up from the
    stored response when the store lacks it: a worker that died before writing it, or before settling it,
    which fails it once its deadline has passed, as a poll reads it; a cancelled one has none), after the
    ``.done`` events of the items its events left open)."""
    log = ctx.response_logs.get(found.id)
    if log is not None:
        async for chunk in log.follow(after):
            yield chunk
        return
    assert ctx.responses is not None
    seen, last = after, ""
    bound = found.until if found.until is not None else time.time()
    settled_at: float | None = None
    while True:
        pending = await response_store_call(ctx.responses.is_pending(found.key_id, found.id))
        async for frames in _stored_events(ctx, found, seen):
            seen, last = frames[-1]
            yield _joined(frames)
        if _ends(last):
            return
        if not pending:  # its last events are written just after it is settled: wait a little for them
            settled_at = settled_at or time.monotonic()
            if time.monotonic() - settled_at > TAIL_WAIT_S:
                break
        elif time.time() > bound:
            break
        await asyncio.sleep(FOLLOW_EVERY_S)
    kept = await response_store_call(ctx.responses.last_event(found.key_id, found.id))
    if kept is not None and kept[0] > seen:
        # Written since the last read (its worker's last events, late after the settle, or an answer settled just
        # as its deadline passed): sent, not skipped. Its last event is written with the events before it (one
        # store call), so this read has them all.
        async for frames in _stored_events(ctx, found, seen):
            seen, last = frames[-1]
            yield _joined(frames)
        kept = seen, last
    if kept is not None and _ends(kept[1]):
        return  # sent, or its last event was before ``after``: nothing is left to send
    now = await response_store_call(ctx.responses.get(found.key_id, found.id))
    if now is not None:  # still pending past its deadline: its worker died, and it is failed as a poll reads it
        now = await as_it_is(ctx, key, now)
    number = (kept[0] if kept is not None else -1) + 1  # the number its last event would have had
    if now is not None and now.response.get("status") in ENDINGS and number > after:
        stored: list[str] = []  # every event, for the items they opened: those left open are done first
        async for frames in _stored_events(ctx, found, -1):
            stored.extend(frame for _, frame in frames)
        closing = reopened(stored)
        closing.seq = number
        yield closing.ended(now.response)  # failed past its deadline: its output the items as far as they came


async def _stored_events(ctx: ApiContext, found: StoredResponse, after: int) -> AsyncIterator[list[tuple[int, str]]]:
    """``stored_events`` on a request's path: the store down is the 503 naming it."""
    with store_errors("response store"):
        async for frames in stored_events(ctx, found, after):
            yield frames


def _joined(frames: list[tuple[int, str]]) -> bytes:
    return "".join(frame for _, frame in frames).encode()


def _ends(frame: str) -> bool:
    """Whether an event is a response's last (``response.completed``, ``.failed``, ``.incomplete``)."""
    return frame.startswith(tuple(f"event: response.{status}\n" for status in ENDINGS))


async def _put_pending(ctx: ApiContext, key: KeyRecord, response_id: str, data: str, retention: float) -> bool:
    """Store a background response pending, to be polled: past the key's budget, the 429 before any miner (given
    back if the store fails it, or refuses it: ``PreviousGone``)."""
    assert ctx.responses is not None
    async with charged(ctx.storage_budget, key, len(data.encode()), "this background response"):
        return await response_store_call(ctx.responses.put(key.id, response_id, data, retention=retention,
                                                           pending=True))


async def _run(request: web.Request, ctx: ApiContext, key: KeyRecord, queued: dict[str, Any], keeping: Keeping,
               work: Callable[[], Awaitable[Any]], log: EventLog | None, *, until: float) -> None:
    """Answer and settle it (``_settled``); then write the turn's access line (held by its race, or by ``start``),
    saying how it ended, and end its log, if streamed, with the response as settled."""
    settled = None
    try:
        settled = await _settled(request, ctx, key, queued, keeping, work, log, until=until)
    finally:
        release(request)  # before its log ends: a caller following it then leaves, and this is its request's line
        if settled is not None and log is not None:
            await log.end(settled)
        else:
            await _end_log(ctx, key, queued["id"], log)
        if log is not None:
            await log.count_stored()


async def _settled(request: web.Request, ctx: ApiContext, key: KeyRecord, queued: dict[str, Any], keeping: Keeping,
                   work: Callable[[], Awaitable[Any]], log: EventLog | None, *, until: float) -> dict[str, Any] | None:
    """Answer, then settle the stored response with the answer, or as failed (no miner answered, a bug, a
    shutdown); a cancel that came first keeps its ``cancelled`` (None). ``until``: when the stored record reads
    failed if it is still pending."""
    try:
        await _watched(ctx, key.id, queued["id"], work)
        final = keeping.final if keeping.final is not None else failed(queued, "no answer was made")
    except SettledElsewhere:
        ended_with(request, CANCELLED)
        return None
    except ApiError as e:
        access_log.failed_with(request, e.code)  # for its line, when no race's named it (its search failed)
        final = _so_far(failed(queued, e.message, failure_code(e)), log)
    except asyncio.CancelledError:  # a cancel (which settled it already) or a shutdown
        if await settle(request, ctx, key, keeping, _so_far(failed(queued, SHUT_DOWN), log)) is not None:
            ended_with(request, SHUT_DOWN_STATUS)
        raise
    except Exception as e:
        logger.opt(exception=e).error("background response {} failed", queued["id"])
        final = failed(queued, "internal error")
    return await settle(request, ctx, key, keeping, final, until=until)


def _so_far(final: dict[str, Any], log: EventLog | None) -> dict[str, Any]:
    """A response failed before its answer was whole (its search failed, or a shutdown), with the items its stream
    showed as far as they came (``ResponseStream.so_far``), as the stream's own events then end them: it had none
    (a shutdown's), or its search's still ``in_progress``."""
    return final | {"output": log.events.so_far()} if log is not None and log.events.items else final


async def _end_log(ctx: ApiContext, key: KeyRecord, response_id: str, log: EventLog | None) -> None:
    """End a streamed response's log with the response as it was settled (by a cancel, say)."""
    if log is None:
        return
    try:
        now = await ctx.responses.get(key.id, response_id) if ctx.responses is not None else None
    except StoreUnavailable:
        now = None
    log.tail = None
    await log.end(now.response if now is not None and now.response.get("status") not in PENDING else None)


class SettledElsewhere(Exception):
    """The response was settled while its answer was being made (a cancel on another worker)."""


async def _watched(ctx: ApiContext, key_id: str, response_id: str, work: Callable[[], Awaitable[Any]]) -> None:
    """``work``, stopped (its miners' requests dropped) once the stored response is no longer pending; a store
    that fails to say so leaves it running (bounded by its deadline)."""
    assert ctx.responses is not None
    task = asyncio.ensure_future(work())
    try:
        while not (await asyncio.wait({task}, timeout=WATCH_EVERY_S))[0]:
            try:
                pending = await ctx.responses.is_pending(key_id, response_id)
            except StoreUnavailable as e:
                logger.debug("background response {}: cancel not checked: {}", response_id, e)
                continue
            if not pending:
                raise SettledElsewhere()
        task.result()
    finally:
        if not task.done():
            task.cancel()
        # Its outcome is taken even when it ended on its own while the store was asked (a response deleted as its
        # miners failed): left, asyncio logged "Task exception was never retrieved" with its traceback.
        await asyncio.gather(task, return_exceptions=True)


async def settle(request: web.Request, ctx: ApiContext, key: KeyRecord, keeping: Keeping, final: dict[str, Any], *,
                 until: float | None = None) -> dict[str, Any] | None:
    """Settle the pending response with ``final`` (once: None when a cancel or a reader came first); the response
    as settled. Its conversation, if any, gets the turn first (as a foreground response's: a poller that sees it
    done may send the next turn at once); a cancel that came first takes it out again. A store that fails (the
    conversation's write or the record's) is asked again every ``SETTLE_RETRY_S`` while this worker holds the
    answer, up to ``until`` (the record reads as failed after it; a store back in the meantime gets the answer,
    which was lost before); then, or with no ``until``, a WARNING. A turn its conversation still lacks then fails
    the response (``store_unavailable``, as a foreground one's 503: sending it again is safe), if the store takes
    that. Its access line is told (``ended_with``) when it does not end as its race did: ``store_unavailable``,
    or ``cancelled`` when a cancel (a delete) came first."""
    assert ctx.responses is not None
    conversation_id = keeping.conversation_id if ctx.conversations is not None else None
    owed = conversation_id is not None and final.get("status") != "failed"  # the conversation lacks the turn yet
    added = False
    final, data = _stored_form(keeping, final)
    warned = False
    while True:
        try:
            if owed:
                assert conversation_id is not None
                await conversations_state.add_turn(ctx, keeping.key, conversation_id, keeping.added, final,
                                                   last=UNNAMED)
                owed, added = False, True
            settled = await settle_counted(ctx, key, final["id"], data, retention=keeping.retention,
                                           item_ids=item_ids(keeping.added, final))
            break
        except StoreUnavailable as e:
            if until is not None and time.time() + SETTLE_RETRY_S < until:
                if not warned:
                    logger.warning("background response {} not settled yet ({}): asked again every {:.0f} s, for "
                                   "{:.0f} s at most", final["id"], e, SETTLE_RETRY_S, until - time.time())
                    warned = True
                await asyncio.sleep(SETTLE_RETRY_S)
                continue
            if not owed:
                logger.warning("background response {} not settled: {}", final["id"], e)
                ended_with(request, STORE_FAILED)
                return None
            assert conversation_id is not None
            logger.warning("background response {} not added to conversation {} by its deadline (it fails, "
                           "store_unavailable): {}", final["id"], conversation_id, e)
            await conversations_state.withdraw(ctx, keeping.key_id, conversation_id, keeping.added, final)
            final, data = _stored_form(keeping, turn_failed(final, conversations_state.not_added(conversation_id)))
            ended_with(request, STORE_FAILED)
            owed, until = False, None  # the failed record is offered once more, no longer
    if not settled:
        ended_with(request, CANCELLED)  # the record reads as the cancel (or the delete) left it
        if added:  # a cancel (or a reader past the deadline) settled it first: the turn is not the conversation's
            assert conversation_id is not None
            await conversations_state.withdraw(ctx, keeping.key_id, conversation_id, keeping.added, final)
        return None
    return final


def _stored_form(keeping: Keeping, final: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``final`` as it is stored, and its stored form: with its conversation, or without it and saying ``store:
    false`` when that is over the size bound (stored to be polled, not to be continued, as a foreground one)."""
    if keeping.final is final and keeping.data is not None:
        return final, keeping.data
    data = keeping.part(final)
    if data is not None:
        return final, data
    final = final | {"store": False}
    return final, keeping.unkept(final)


async def cancel(ctx: ApiContext, key: KeyRecord, found: StoredResponse, retention: float) -> dict[str, Any]:
    """``POST /v1/responses/{id}/cancel``: a pending background response is ``cancelled`` (its task here is
    stopped, or within WATCH_EVERY_S when another worker runs it). One already settled
    is answered as it is; a response made in the request that asked for it is OpenAI's 400."""
    if found.response.get("background") is not True:
        raise ApiError(400, "Cannot cancel a synchronous response.", param="response_id")
    if found.response.get("status") not in PENDING:
        return found.response
    cancelled = found.response | {"status": "cancelled"}
    assert ctx.responses is not None
    if await response_store_call(settle_counted(ctx, key, found.id, found.again(cancelled), retention=retention)):
        task = ctx.running_responses.get(found.id)
        if task is not None:
            task.cancel()
        return cancelled
    again = await response_store_call(ctx.responses.get(key.id, found.id))  # settled meanwhile: as it is now
    return again.response if again is not None else cancelled
