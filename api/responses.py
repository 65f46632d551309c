"""``POST /v1/responses``: OpenAI's Responses API, served as a chat completion underneath.

The OpenAI SDK's ``client.responses``, the Agents SDK's default model and
other tools that speak only this API reach the miners through the same
pipeline as ``/v1/chat/completions``: one key check, miner selection, the race,
the scoring outbox and usage. Only the request (``responses_translate``) and
the answer's shape (``responses_render``) differ; a response is stored for
``previous_response_id`` and the routes that read it (``responses_state``); one
made with ``background: true`` is answered by a task after the request
(``responses_background``), polled, cancelled, or streamed again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from api import responses_background, responses_state, sessions
from api.access_log import access_logged, answer_line, ended_with, logged, note_cuts, request_id, write
from api.auth import authenticate, check_search_scope
from api.chat import Plan, answer, plan
from api.completion import (
    STREAM_CUT,
    logged_outcome,
    logprob_tokens,
    mid_stream_failure,
    outcome_code,
    response_usage,
)
from api.concurrency import LIMITER, ConcurrencyLimiter, holds_slot
from api.context import CTX, ApiContext
from api.fanout import chat_deadline
from api.race import MinerRun, Race
from api.responses_background import EventLog
from api.responses_render import ResponseStream, complete_output, finished, new_id, skeleton
from api.responses_state import Keeping
from api.responses_translate import chat_body, kept_share, search_tool, truncated
from api.responses_wire import InputItemsQuery, ResponsesRequest, RetrieveQuery
from api.route_hints import refuse_chat_fields_in_responses, require
from api.web_retrieval import Found
from api.web_search import SOURCES, citations, query_of, search_call_item, search_into, searching_item
from shared.connections import end_at_stop
from shared.errors import CONTEXT_LENGTH_EXCEEDED, ApiError, invalid_value, shutting_down
from shared.http import json_response, parse_model, read_json
from shared.jsonutil import dumpb
from shared.protocol import MAX_UIDS, ChatCompletionRequest
from shared.sse import SSE_HEADERS
from shared.store.base import KeyRecord

ANY_MODEL_NAME = "default"  # what a request for any model names before a miner answers (``model_before_answer``)
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}  # a failed stream's
# truncation: "auto": how many times a conversation too long for the miners' models is cut and asked again
MAX_TRUNCATIONS = 3


@access_logged("responses")
@holds_slot
async def create_response(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat", usage=ctx.usage, slots=request.app[LIMITER])
    sent = await read_json(request)
    require(sent, "input")
    wanted: ResponsesRequest = parse_model(ResponsesRequest, sent)
    refuse_chat_fields_in_responses(sent)
    if search_tool(wanted) is not None:
        check_search_scope(key, param="tools")
    if not wanted.background:
        return await _create(request, ctx, key, wanted, started)
    with responses_background.reserved(request, ctx, key, store=wanted.store):
        return await _create(request, ctx, key, wanted, started)


async def _create(request: web.Request, ctx: ApiContext, key: KeyRecord, wanted: ResponsesRequest,
                  started: float) -> web.StreamResponse:
    """``create_response`` past its checks: the turn's history, its plan, and its answer (a background one
    started, its place in the bounds held by ``responses_background.reserved`` until it is)."""
    wanted, history = await responses_state.continued(ctx, key, wanted)
    body = chat_body(wanted, history.items)
    req: ChatCompletionRequest = parse_model(ChatCompletionRequest, body)
    planned = await plan(request, key, req)  # a request refused anyway spends no web search
    fmt = ResponsesFormat(wanted, None, responses_state.keeping(ctx, key, wanted, history), ctx,
                          model=model_before_answer(req, planned))

    async def work() -> web.StreamResponse:
        return await _searched_answer(request, key, req, body, fmt, planned, started=started)

    if wanted.background:
        assert fmt.keeping is not None  # stored: check_request refused the others
        fmt.kind = responses_background.LINE_KIND  # its race's line, after the request's own, once it is settled
        seconds, _ = chat_deadline(ctx.settings, req)
        log = fmt.event_log() if wanted.stream else None
        return await responses_background.start(request, ctx, key, fmt.queued(), fmt.keeping,
                                                seconds * races_at_most(wanted), work, log, started=started)
    return await work()


def model_before_answer(req: ChatCompletionRequest, planned: Plan) -> str:
    """The ``model`` a response names before a miner answers (a background response queued, its stream's first
    events, a stream opened for its web search): the one asked for, or the key's session's; for any model (none
    asked, ``""``, ``default``), ``default``, this API's name for it, which the answer then replaces with the
    winning miner's. It said ``unknown``, a model no miner serves: a client that sent it back (polling, then
    asking again with ``model=response.model``) got a 404 ``model_not_found`` once the miners' availability
    was known."""
    if not req.wants_any_model():
        assert req.model is not None
        return req.model
    pinned = sessions.pinned_model(planned.session) if planned.session is not None else None
    return pinned or ANY_MODEL_NAME


def races_at_most(wanted: ResponsesRequest) -> int:
    """The races one response may run, each with a deadline of its own: with ``truncation: "auto"``, the first and
    one more per cut (``MAX_TRUNCATIONS``). A background response's stored deadline covers them all: covering the
    first only, a poll on any host past it failed the response while its worker, its conversation cut, was still
    asking the miners again (and the answer that came was dropped)."""
    return 1 + MAX_TRUNCATIONS if wanted.truncation == "auto" else 1


async def _searched_answer(request: web.Request, key: KeyRecord, req: ChatCompletionRequest, body: dict[str, Any],
                           fmt: ResponsesFormat, planned: Plan, *, started: float) -> web.StreamResponse:
    """The web search, if the request offers it, then the race and the answer (sent; or kept, for a
    background response). A streamed answer's events begin with the search's (``fmt.search_begins``):
    past that, a failure is the stream's ``response.failed`` event, no longer an HTTP error."""
    wanted = fmt.wanted
    tool = search_tool(wanted)
    try:
        if tool is not None:
            try:
                await fmt.search_begins(request, query_of(body["messages"]))
                body, fmt.found = await search_into(request.app[CTX], body, tool.search_context_size,
                                                    domains=tool.allowed_domains(),
                                                    request_id=request_id(request))
            except asyncio.CancelledError:  # its caller left, or this process's stop cut it
                status = logged_outcome("client_closed", [], stopping=request.app[CTX].ended_by_stop(request))
                fmt.searched_line(request, key, status, started=started, code=outcome_code(status))
                raise
            await fmt.search_ends()
            req = parse_model(ChatCompletionRequest, body)
        return await _truncated_answer(request, key, req, body, fmt, planned, started=started)
    except ApiError as e:
        if fmt.opened is None:
            raise
        return await fmt.fail(request, key, e, started=started)


async def _truncated_answer(request: web.Request, key: KeyRecord, req: ChatCompletionRequest, body: dict[str, Any],
                            fmt: ResponsesFormat, planned: Plan, *, started: float) -> web.StreamResponse:
    """The race and the answer; with ``truncation: "auto"``, a conversation the miners' models refuse as
    longer than their context window is cut from its beginning (``truncated``) and asked again."""
    cuts, asked = 0, 0
    while True:
        try:
            asked += len(planned.neurons)
            return await answer(request, key, req, body, fmt, started=started, planned=planned,
                                send=not fmt.wanted.background)
        except ApiError as e:
            if e.code != CONTEXT_LENGTH_EXCEEDED or fmt.wanted.truncation != "auto" or cuts == MAX_TRUNCATIONS:
                raise
            shorter = truncated(body, kept_share(e.message))
            if shorter is None:
                raise
            planned = fewer_miners(planned, e, asked=asked, cuts_left=MAX_TRUNCATIONS - cuts)
        if fmt.wanted.background:  # its line now, with the same id: a foreground attempt's was written by its race
            responses_background.attempt_logged(request, key, stream=bool(fmt.wanted.stream), started=started)
        cuts += 1
        note_cuts(request, cuts)  # the next race's line says truncated=<cuts>
        body = shorter
        req = parse_model(ChatCompletionRequest, body)


def fewer_miners(planned: Plan, refusal: ApiError, *, asked: int, cuts_left: int) -> Plan:
    """The miners of the next race once the conversation is cut: those of the last, but no more than a share
    (of ``cuts_left``) of what the request's races may still ask, as one request's races together ask at most
    ``MAX_UIDS`` (``n``'s bound: ``choices.check_named_miners``). Each race asked every miner again, so one charged
    request naming 256 uids asked 1,024 miners. ``refusal``, told why, when no miner is left to ask."""
    room = (MAX_UIDS - asked) // cuts_left
    if room < 1:
        raise ApiError(refusal.status, f"{refusal.message} (truncation: \"auto\" did not ask again: the "
                                       f"{asked} miners asked already leave none of the {MAX_UIDS} one request may "
                                       "ask; name fewer uids)", code=refusal.code, param=refusal.param,
                       headers=refusal.headers)
    return replace(planned, neurons=planned.neurons[:room])


@access_logged("responses")
@holds_slot
async def get_response(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}``: the calling key's stored response object; with ``stream=true``, a streamed
    background response's events again (after ``starting_after``), until its end. That stream is held open as
    long as the answer takes (and, on a worker not answering it, reads the store 10 times a second), so it takes
    one of the key's requests in flight, as the stream that made it did: without one, a key could hold any number
    of them whatever its ``max_concurrent_requests``. A plain read takes none."""
    try:
        streamed = retrieve_query(request).stream
    except ApiError:  # refused below, once the key is checked (a 401 before a 400, as before)
        streamed = False
    ctx, key = await caller(request, slots=request.app[LIMITER] if streamed else None)
    query = retrieve_query(request)
    found = await responses_state.stored(ctx, key, request.match_info["response_id"])
    if not query.stream:
        return json_response(found.response)
    after = -1 if query.starting_after is None else query.starting_after
    if found.response.get("background") is not True or not (
            ctx.response_logs.get(found.id)
            or await responses_state.response_store_call(ctx.responses.events(key.id, found.id, after=-1, limit=1))):
        raise invalid_value("stream", "only a background response made with stream: true can be streamed again; "
                                      "this one is returned whole (leave stream out)")
    return await responses_background.stream_log(request, found.id, responses_background.resumed(ctx, key, found, after),
                                                  after=after)


@access_logged("responses")
async def delete_response(request: web.Request) -> web.StreamResponse:
    """``DELETE /v1/responses/{id}``: the calling key's stored response is gone (its next use a 404/400)."""
    ctx, key = await caller(request)
    response_id = request.match_info["response_id"]
    await responses_state.forget(ctx, key, response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


@access_logged("responses")
async def cancel_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses/{id}/cancel``: a background response still queued is ``cancelled``."""
    ctx, key = await caller(request)
    found = await responses_state.stored(ctx, key, request.match_info["response_id"])
    return json_response(await responses_background.cancel(ctx, key, found,
                                                            ctx.settings.responses_retention_seconds))


@access_logged("responses")
async def list_input_items(request: web.Request) -> web.StreamResponse:
    """``GET /v1/responses/{id}/input_items``: a page of the conversation the response answered."""
    ctx, key = await caller(request)
    query: InputItemsQuery = parse_model(InputItemsQuery, items_query(request))
    found = await responses_state.stored(ctx, key, request.match_info["response_id"])
    if responses_state.not_kept(found):
        raise invalid_value("response_id", f"this response's input items are not kept: {responses_state.NOT_KEPT}")
    if found.missing is not None:
        raise invalid_value("response_id", f"this response's input items cannot be listed: "
                                           f"{responses_state.incomplete(found)}")
    return json_response(responses_state.page(found.items, query))


async def caller(request: web.Request, slots: ConcurrencyLimiter | None = None) -> tuple[ApiContext, KeyRecord]:
    """The context and the calling key of a stored-response route: reading one spends no tokens, so no usage
    is passed (as for the 404 these routes answered before); ``slots``: it takes one of the key's requests in
    flight (its handler a ``holds_slot`` one)."""
    ctx = request.app[CTX]
    return ctx, await authenticate(request, ctx.store, scope="chat", slots=slots)


def retrieve_query(request: web.Request) -> RetrieveQuery:
    """``GET /v1/responses/{id}``'s query string (a 400 naming what it refuses)."""
    return parse_model(RetrieveQuery, items_query(request, ("stream", "starting_after", "include_obfuscation")))


def items_query(request: web.Request, names: tuple[str, ...] = ("limit", "order", "after")) -> dict[str, object]:
    """The query string as ``InputItemsQuery`` (or another of ``names``) reads it: ``include`` may repeat
    (``include[]``, as the SDK sends a list) or be a comma list; the others are single values (one sent twice
    with two values was refused before: ``api.request_shape``)."""
    data: dict[str, object] = {name: request.query.getall(name)[-1] for name in names if name in request.query}
    include = [v for value in request.query.getall("include", []) + request.query.getall("include[]", [])
               for v in value.split(",")]
    if include:
        data["include"] = include
    return data


class ResponsesFormat:
    """The winner as a ``response`` object, or as the Responses API's stream of events."""

    kind = "responses"
    input_param = "input"

    def __init__(self, wanted: ResponsesRequest, found: Found | None = None, keeping: Keeping | None = None,
                 ctx: ApiContext | None = None, *, model: str = ANY_MODEL_NAME) -> None:
        self.wanted = wanted
        self.model = model  # named until a miner answers (``model_before_answer``)
        self.found = found  # the web search made for this answer, if any
        self.keeping = keeping  # how the answer will be stored (None: it will not be)
        self.ctx = ctx  # where it is stored
        self.response_id = new_id("resp")  # one id from the queued object (background) to the final one
        self.log: EventLog | None = None  # a streamed background response's events
        self.created_at = int(time.time())
        self.search_id = new_id("ws")  # the web search's item, from its first event to the stored response
        # A streamed answer sent before its race (a web search came first): the response and its renderer.
        self.opened: web.StreamResponse | None = None
        self.events: ResponseStream | None = None

    def queued(self) -> dict:
        """The response before any miner is asked: a background response's first answer."""
        return self._skeleton(self.model) | {"status": "queued"}

    def _skeleton(self, model: str) -> dict:
        return skeleton(self.wanted, response_id=self.response_id, model=model, created_at=self.created_at,
                        store=self.keeping is not None and self.keeping.store)

    async def _keep(self) -> bool:
        """Store the sealed response before the caller has its end: an agent sends its next turn with
        ``previous_response_id`` the moment it has the answer, maybe to another worker or host, and a
        record written after it (one store round trip later) was then "not found". False: the store did
        not take it (the answer must say ``store: false``)."""
        return self.ctx is None or await responses_state.keep(self.ctx, self.keeping)

    def _base(self, req: ChatCompletionRequest, run: MinerRun) -> dict:
        return self._skeleton(run.model or req.model or "unknown")

    def _renderer(self, base: dict) -> ResponseStream:
        """The answer's stream of events, from ``base`` (the response before its output): its message's
        citations and its final response sealed (stored) as this format does it."""
        return ResponseStream(base, annotate=self._annotate, seal=self._seal)

    def _seal(self, final: dict) -> dict:
        return self.keeping.seal(final) if self.keeping is not None else final

    def _search_item(self) -> dict | None:
        if self.found is None:
            return None
        return search_call_item(self.found, include_sources=SOURCES in (self.wanted.include or []),
                                item_id=self.search_id)

    async def search_begins(self, request: web.Request, query: str) -> None:
        """A streamed answer (foreground or background) says its web search began, before the search's seconds:
        a foreground stream is opened for it (its headers then cannot name the winning miner)."""
        if not self.wanted.stream:
            return
        item = searching_item(self.search_id, query)
        if self.log is not None:
            await self.log.add(self.log.events.searching(item))
            return
        events = self.events = self._renderer(self._skeleton(self.model))
        self.opened = web.StreamResponse(headers={"x-request-id": request_id(request), **SSE_HEADERS})
        await self.opened.prepare(request)
        end_at_stop(request, lambda: failed_end(events, shutting_down(STREAM_CUT)))
        await self.opened.write(self.events.start() + self.events.searching(item))

    async def search_ends(self) -> None:
        searched = self._search_item()
        if searched is None or not self.wanted.stream:
            return
        if self.log is not None:
            await self.log.add(self.log.events.search_done(searched))
        elif self.opened is not None and self.events is not None:
            await self.opened.write(self.events.search_done(searched))

    async def fail(self, request: web.Request, key: KeyRecord, error: ApiError, *,
                   started: float) -> web.StreamResponse:
        """End an opened stream with ``response.failed`` (what the HTTP error would have said); it is not
        stored, as a request refused with an HTTP error is not. Its line says ``status=error code=<code>``, as a
        raced request's that ended in an HTTP error (``outcome_code``): it said ``status=<code>``."""
        assert self.opened is not None and self.events is not None
        end_at_stop(request, None)
        await self.opened.write_eof(failed_end(self.events, error))
        self.searched_line(request, key, "error", started=started, code=outcome_code("error", error.code))
        return self.opened

    def searched_line(self, request: web.Request, key: KeyRecord, status: str, *, started: float,
                      code: str | None = None) -> None:
        """The line of a request that ended in its web search (failed, cut by a stop, its caller gone), before any
        chat miner was asked: a raced request's, saying so (``uids=[] winner=None``, ``stream``), where the
        middleware's said neither. None when its race wrote one (``answer`` logs a raced request), or for a
        background response (its turn's line is held: ``responses_background.owe_line``)."""
        if not logged(request) and not self.wanted.background:
            write(request, answer_line(self.kind, request_id(request), key.id, [], None,
                                       stream=bool(self.wanted.stream), mixture=False, status=status, started=started,
                                       code=code))

    def _annotate(self, text: str) -> list[dict]:
        return citations(text, self.found) if self.found is not None else []

    def complete(self, req: ChatCompletionRequest, run: MinerRun, headers: dict[str, str]) -> web.Response:
        output = complete_output(run.text, run.merged_tool_calls(), logprob_tokens(run.logprobs), "".join(run.refusal),
                                 "".join(run.reasoning), finish_reason=run.finish_reason)
        for item in output:
            if item["type"] == "message" and item["content"][0]["type"] == "output_text":
                item["content"][0]["annotations"] = self._annotate(item["content"][0]["text"])
        searched = self._search_item()
        obj = finished(self._base(req, run), ([searched] if searched else []) + output,
                       finish_reason=run.finish_reason, usage=response_usage(req, run))
        return KeptFirst(self._keep, self._seal(obj), content_type="application/json", headers=headers)

    def event_log(self) -> EventLog:
        """A streamed background response's log, opened when it is queued (``stream`` fills it)."""
        assert self.ctx is not None and self.keeping is not None
        self.log = EventLog(self.ctx, self.keeping.key, self.response_id, self.keeping.retention,
                            self._renderer(self._skeleton(self.model)))
        return self.log

    async def stream(self, request: web.Request, req: ChatCompletionRequest, race: Race, run: MinerRun,
                     headers: dict[str, str]) -> web.StreamResponse:
        if self.log is not None:
            return await self._stream_to_log(self.log, req, race, run)
        if self.opened is not None and self.events is not None:  # opened by a web search
            response, events = self.opened, self.events
            events.base["model"] = run.model or req.model or "unknown"
        else:
            events = self._renderer(self._base(req, run))
            if run.done:  # the whole answer is in: one body, one write
                body = events.start() + b"".join(events.feed(e) for e in run.events) + _closing(events, req, run)
                body += await self._last(request, events)
                return web.Response(body=body, headers={**headers, **SSE_HEADERS})
            response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
            await response.prepare(request)
            await response.write(events.start())
        # cut by a stop, it fails as a stream its miner failed: its items done as far as they came, then failed
        end_at_stop(request, lambda: failed_end(events, shutting_down(STREAM_CUT), response_usage(req, run)))
        async for batch in race.follow_batches(run):
            await response.write(b"".join(events.feed(e) for e in batch))
        tail = _closing(events, req, run)  # seals the final response
        # cut by a stop while it is stored: its whole answer, then its end as a store that failed gives it (it had a
        # bare close, no last event)
        end_at_stop(request, lambda: tail + self._unkept_last(events))
        last = await self._last(request, events)
        end_at_stop(request, None)
        await response.write_eof(tail + last)
        return response

    async def _last(self, request: web.Request, events: ResponseStream) -> bytes:
        """A stream's last event, once its sealed response is kept: ``response.completed`` (``.incomplete``),
        saying ``store: false`` when the store did not take it; ``response.failed`` (with the words of the 503
        ``store_unavailable``) when its conversation could not take the turn: nothing of it is stored, it can be
        sent again, and its access line says so (it said ``status=ok``)."""
        try:
            kept = await self._keep()
        except ApiError as e:
            ended_with(request, e.code or "error")
            return events.last(responses_state.turn_failed(events.final, e))
        return events.last(responses_state.as_kept(events.final, kept))

    def _unkept_last(self, events: ResponseStream) -> bytes:
        """The last event of a stream this process's stop cut as its sealed response was being stored, as ``_last``
        gives it when the store fails: ``store: false`` (whether the store took it is not known); ``response.failed``
        when it continues a conversation, which may lack the turn (sending it again is the caller's safe course)."""
        if self.keeping is not None and self.keeping.conversation_id is not None:
            return events.last(responses_state.turn_failed(
                events.final, shutting_down("this turn may not be in its conversation")))
        return events.last(responses_state.as_kept(events.final, False))

    async def _stream_to_log(self, log: EventLog, req: ChatCompletionRequest, race: Race,
                             run: MinerRun) -> web.StreamResponse:
        """A background stream's events go to its log (opened with ``response.created`` when it was queued);
        its last ones wait in the log until the response is settled (``responses_background``)."""
        log.events.base["model"] = run.model or req.model or "unknown"
        async for batch in race.follow_batches(run):
            await log.add(b"".join(log.events.feed(e) for e in batch))
        log.tail = _closing(log.events, req, run)  # seals the final response; its event follows once it is settled
        return web.Response()  # not sent: the request that asked for it was answered with the log


class KeptFirst(web.Response):
    """A response object that goes out once it is stored (``keep``), saying ``store: false`` if the store did
    not take it: ``answer`` sends what a format made, and a format's ``complete`` cannot wait. A conversation
    that could not take the turn makes its ``prepare`` raise the 503 (``answer`` sends that instead)."""

    def __init__(self, keep: Callable[[], Awaitable[bool]], final: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(body=dumpb(final), **kwargs)
        self._keep, self._final = keep, final

    async def prepare(self, request: web.BaseRequest) -> Any:
        if not self.prepared and not await self._keep():  # prepared again on its way out (a no-op): kept once
            self.body = dumpb(responses_state.as_kept(self._final, False))
        return await super().prepare(request)


def failed_end(events: ResponseStream, error: ApiError, usage: dict[str, Any] = NO_USAGE) -> bytes:
    """The last events of a stream that fails with ``error`` once it has begun (a web search's failure, or this
    process's stop: ``end_at_stop``): each item open done as far as it came, then ``response.failed`` (with
    ``error``'s words, and its code in the SDK's words: ``failure_code``; ``usage``: the answer's so far). Not
    stored, as a request refused with an HTTP error is not: a failed answer continues no conversation."""
    events.seal = None
    tail = events.closing(finish_reason=None, usage=usage, error=error.message)
    final = responses_state.as_kept(events.final, False)
    final["error"] = {"code": responses_state.failure_code(error), "message": error.message}
    return tail + events.last(final)


def _closing(events: ResponseStream, req: ChatCompletionRequest, run: MinerRun) -> bytes:
    """The stream's closing events, the final response sealed (``events.final``) but not yet sent."""
    return events.closing(finish_reason=run.finish_reason, usage=response_usage(req, run),
                          error=mid_stream_failure(run))
