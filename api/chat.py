"""``POST /v1/chat/completions``: authenticate, select, race, answer.

The handler is thin: it parses once, asks ``selection`` for miners, runs a
``Race`` (after a mixture first stage when asked) and turns the winner into an
OpenAI response: SSE pass-through when streaming, a ``chat.completion`` object
otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from api import choices, mixture, sessions
from api.access_log import access_logged, answer_line, cuts_of, ending, hold, request_id, write
from api.auth import USAGE_DAY, authenticate, check_model, check_search_scope
from api.completion import (
    completion_for,
    logged_outcome,
    mid_stream_failure_event,
    no_winner_error,
    outcome_code,
    response_usage,
    stop_event,
    tell_no_answer,
)
from api.concurrency import LIMITER, holds_slot
from api.context import CTX
from api.fanout import aimed, chat_deadline, node_deadline, passed_over, settle, start_race
from api.legacy_functions import Legacy, LegacyStream, as_function_call, as_tools
from api.race import MinerRun, Race
from api.route_hints import refuse_responses_fields_in_chat, require
from api.selection import NO_MINERS, select_miners
from api.tool_finish import finish_stream
from api.web_retrieval import Found
from api.web_search import chat_citations, citations_event, search_into
from shared.connections import end_at_stop
from shared.errors import ApiError
from shared.http import json_response, parse_model, read_json
from shared.jsonutil import dumps
from shared.metagraph import Neuron
from shared.miner_client import Event, event_text
from shared.protocol import (
    DEFAULT_TASK,
    ChatCompletionRequest,
    usage_chunk,
)
from shared.sse import DONE_FRAME, SSE_HEADERS, encode_event, encode_events
from shared.store.base import KeyRecord
from shared.store.sessions import Session


class AnswerFormat(Protocol):
    """How a winner reaches the caller: a chat completion here, a Responses API response elsewhere."""

    kind: str  # the access log's word for the request
    input_param: str  # the request's field for what the model reads (a context overflow's 400 names it)

    def complete(self, req: ChatCompletionRequest, run: MinerRun, headers: dict[str, str]) -> web.Response: ...

    async def stream(self, request: web.Request, req: ChatCompletionRequest, race: Race, run: MinerRun,
                     headers: dict[str, str]) -> web.StreamResponse: ...


@access_logged("chat")
@holds_slot
async def chat_completions(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    ctx = request.app[CTX]
    key = await authenticate(request, ctx.store, scope="chat", usage=ctx.usage, slots=request.app[LIMITER])
    sent = await read_json(request)
    require(sent, "messages")
    sent, function_call = as_tools(sent) if isinstance(sent, dict) else (sent, None)
    req: ChatCompletionRequest = parse_model(ChatCompletionRequest, sent)
    refuse_responses_fields_in_chat(sent)
    if function_call and mixture.is_mixture(req):  # as tools are (``mixture.check_request``), naming what was sent
        raise ApiError(400, "Mixture mode does not support functions.", param="functions", code="unsupported_parameter")
    if req.web_search_options is not None:
        check_search_scope(key, param="web_search_options")
    many = (req.n or 1) > 1
    fmt: AnswerFormat = ChatCompletionFormat(function_call=function_call) if function_call else CHAT_COMPLETION
    if req.web_search_options is None and not many:
        return await answer(request, key, req, sent, fmt, started=started)
    # Who answers is decided first: a request refused anyway (an unknown model or session, a uid
    # that serves nothing) spends no web search.
    if many and (named := sessions.session_header(request)):
        choices.check_request(req.model_copy(update={"session_id": named}))
    picks = choices.plan(ctx, key, req) if many else await plan(request, key, req)
    bypassed = await bypassed_session(request, key, req) if many else None
    found: Found | None = None
    if req.web_search_options is not None:
        sent, found = await search_into(ctx, sent, req.web_search_options.search_context_size,
                                        request_id=request_id(request))
        req = parse_model(ChatCompletionRequest, sent)
        fmt = ChatCompletionFormat(found, function_call=function_call)
    if isinstance(picks, Plan):
        return await answer(request, key, req, sent, fmt, started=started, planned=picks)
    headers = {"x-sn1-session-bypassed": bypassed.id} if bypassed else {}
    return await choices.answer_choices(request, key, req, sent, picks, started=started, found=found, headers=headers,
                                        function_call=function_call)


async def bypassed_session(request: web.Request, key: KeyRecord, req: ChatCompletionRequest) -> Session | None:
    """The key's session that would have pinned this request but for its ``n`` > 1 or its mixture (a session pins
    one miner; n answers are n races, a mixture asks several): such a request is raced, as one naming ``uids`` is, and its answer's
    ``x-sn1-session-bypassed`` header names the session. It was raced in silence, the caller's session skipped
    without a word (a session named with ``n`` is a 400: ``choices.check_request``). A text completion's too
    (``api/completions.py``: its prompts are several races, as ``n`` is)."""
    if req.uids:
        return None
    return await sessions.resolve(request.app[CTX], request, None, key, None if req.wants_any_model() else req.model)


@dataclass(frozen=True)
class Plan:
    """Who answers a chat request: decided from its model, uids, session and mixture fields, which a
    web search leaves as they are, so it can be decided before the search."""

    mixture: bool
    session: Session | None
    neurons: list[Neuron]
    moved_from: int | None = None  # the session's miner before this request moved it (the miner was gone)
    # Whether the answers are scored: not when the caller in effect chose its miner (``aimed``).
    scored: bool = True
    bypassed: Session | None = None  # the key's session a mixture does not run in (``x-sn1-session-bypassed``)


async def plan(request: web.Request, key: KeyRecord, req: ChatCompletionRequest) -> Plan:
    """Check what the key may ask for and choose the miners (or the session's pinned one); every
    refusal here is a 4xx before anything is spent."""
    ctx = request.app[CTX]
    model = None if req.wants_any_model() else req.model
    check_model(key, model)
    use_mixture = mixture.is_mixture(req)
    bypassed = None
    if use_mixture:
        mixture.check_request(req, sessions.session_header(request))
        bypassed = await bypassed_session(request, key, req)
    session = None if (req.uids or use_mixture) else await sessions.resolve(ctx, request, req.session_id, key, model)
    moved_from = None
    if session is not None:
        session, neurons, moved_from = await sessions.session_miners(ctx, session)
    else:
        try:
            neurons = select_miners(
                ctx.metagraph.snapshot, ctx.availability, uids=req.uids, task=req.task or DEFAULT_TASK, model=model,
                k=ctx.settings.mixture_k if use_mixture else ctx.settings.default_k,
                rng=ctx.rng, self_hotkey=ctx.client.signer.hotkey, health=ctx.miner_health,
            )
        except ApiError as e:
            if e.code == NO_MINERS:  # an outage as much as a race no miner won: told the same way
                ctx.no_answer.failed(f"rid={request_id(request)} answered HTTP {e.status} {e.code}: {e.message} (are "
                                     "the miners up? the validator's availability lines say why they are down)")
            raise
    return Plan(mixture=use_mixture, session=session, neurons=neurons, moved_from=moved_from,
                scored=not aimed(req, session, neurons), bypassed=bypassed)



async def answer(request: web.Request, key: KeyRecord, req: ChatCompletionRequest, sent: dict[str, Any],
                 fmt: AnswerFormat, *, started: float, planned: Plan | None = None,
                 send: bool = True) -> web.StreamResponse:
    """Race and answer an authenticated, validated chat request (``sent`` is its JSON), with the
    miners ``planned`` for it (chosen now when not given). ``send=False``: the answer is made but not
    sent (a background response's, which its format keeps; the request was answered already)."""
    ctx = request.app[CTX]
    rid = request_id(request)
    planned = planned or await plan(request, key, req)
    session, use_mixture, neurons = planned.session, planned.mixture, planned.neurons
    seed = req.seed if req.seed is not None else random.randrange(2**31)
    body = req.miner_body(seed=seed, sent=sent)
    if session is not None and req.wants_any_model() and sessions.pinned_model(session):
        body["model"] = session.model  # the session's model, not any the pinned miner serves (and for scoring)
    seconds, caller_cut = chat_deadline(ctx.settings, req)
    excuse, scale, scored = caller_cut, node_deadline(ctx.settings, req), planned.scored
    headers = {"x-request-id": rid, "x-sn1-seed": str(seed)}
    if session is not None:
        headers["x-sn1-session-id"] = session.id
    if planned.bypassed is not None:
        headers["x-sn1-session-bypassed"] = planned.bypassed.id
    if planned.moved_from is not None:
        headers["x-sn1-session-moved-from"] = str(planned.moved_from)
    asked = [n.uid for n in neurons]  # the request's line names them all (a mixture's final miner is one)
    earlier: list[MinerRun] = []  # a mixture's runs before its final race: its first stage, a failed synthesis
    rest: list[Neuron] = []  # a mixture's next synthesisers, should the final miner give no answer
    answers: list[MinerRun] = []  # a mixture's first-stage answers
    if use_mixture:
        loop = asyncio.get_running_loop()
        stage_started = loop.time()
        stage = mixture.start_stage_one(ctx, neurons, body, mixture.stage_one_seconds(seconds), rid, scored=scored,
                                        latency_scale=scale, param="uids" if req.uids else fmt.input_param)
        try:
            stage_one = await mixture.gather_answers(ctx, stage, body, named=bool(req.uids),
                                                     input_param=fmt.input_param)
        except mixture.StageOneFailed as e:
            tell_no_answer(ctx.no_answer, e.race, rid, e, caller_cut=caller_cut)  # once: the request ends here
            e.headers.update(headers)
            _log_answer(request, fmt, key, req, asked, None, use_mixture=True, status=ending(request) or "error",
                        started=started, runs=e.race.runs, send=send, failure=e.code)
            raise
        except asyncio.CancelledError:  # the caller left: its line names the miners asked, as a plain race's does
            stage.cancel()
            _log_answer(request, fmt, key, req, asked, None, use_mixture=True,
                        status=logged_outcome("client_closed", [], stopping=ctx.ended_by_stop(request)), started=started,
                        runs=stage.runs, send=send)
            raise
        answers, earlier = stage_one.answers, stage_one.runs
        body = mixture.final_body(body, [r.text for r in answers], limit=ctx.settings.miner_max_body_bytes,
                                  request_id=rid)
        seconds = max(0.1, seconds - (loop.time() - stage_started))
        top, *rest = mixture.synthesisers(answers)  # one that failed stage one is not asked again
        neurons = [top]
        headers["x-sn1-mixture-uids"] = ",".join(str(r.uid) for r in answers)
        excuse = True  # the final miner has what stage one left of the deadline: running out is not its fault
    race = start_race(ctx, neurons, body, seconds, stream=req.stream, request_id=rid, excuse_timeouts=excuse,
                      scored=scored, latency_scale=scale)
    outcome = "error"
    unsent: str | None = None  # the code of an error that took the answer's place (its conversation's store failed)
    failure: str | None = None  # the code of the HTTP error the request ended with, if any
    winner: MinerRun | None = None
    try:
        winner = await race.winner()
        if winner is None and rest:
            race, winner, failed = await mixture.next_synthesiser(ctx, race, rest, body, stream=req.stream,
                                                                  request_id=rid, scored=scored, latency_scale=scale)
            earlier += failed
        # A request the model server refused would be refused by any miner: no failover for it.
        if winner is None and session is not None and not race.refused():
            race, winner = await sessions.failover_race(ctx, session, race, body, stream=req.stream,
                                                        request_id=rid, headers=headers)
        if winner is None:
            error = no_winner_error(race, fmt.input_param, model=body.get("model"),
                                    passed_over=passed_over(ctx, body, named=bool(req.uids)))
            if use_mixture:
                error = mixture.final_stage_error(error, race, len(answers))
            tell_no_answer(ctx.no_answer, race, rid, error, caller_cut=caller_cut)
            raise error
        ctx.no_answer.ok()  # nothing unless requests were failing: then, once they no longer are, one INFO line
        if use_mixture:  # what its usage estimate counts, when the miner gives none: the drafts are in its prompt
            winner.prompt = mixture.prompt_text(body)
        headers["x-sn1-miner-uid"] = str(winner.uid)
        if req.stream:
            response = await fmt.stream(request, req, race, winner, headers)
        else:
            response = fmt.complete(req, winner, headers)
        outcome = "ok"
        if send and not response.prepared:  # send now: the bookkeeping below is not the caller's wait
            try:
                await response.prepare(request)
            except ApiError as e:  # made, scored, but not sent: the caller gets the error, and no tokens are counted
                unsent = e.code or "error"
                raise
            await response.write_eof()
        if session is not None:
            await sessions.after_mid_stream_failure(ctx, session, race, winner)
        return response
    except ApiError as e:
        failure = e.code
        e.headers.update(headers)
        raise
    except asyncio.CancelledError:
        outcome = "client_closed"  # the caller left (mid-stream, or while the miners were asked)
        raise
    finally:
        if outcome == "ok" or (winner is None and all(r.done for r in race.runs)):
            settle(ctx, race, body, kind="mixture" if use_mixture else "chat")
        else:
            race.cancel()  # client gone or a bug: stop every miner request now
        if outcome in ("ok", "client_closed") and winner is not None:
            # A caller that left mid-answer is charged the answer as far as it came: charged nothing, a key
            # could read long answers free of its token limit by hanging up before [DONE].
            used = {} if unsent else response_usage(req, winner)
            ctx.usage.record(key.id, prompt_tokens=used.get("prompt_tokens") or 0,
                             completion_tokens=used.get("completion_tokens") or 0,
                             error=outcome == "ok" and (winner.error is not None or unsent is not None),
                             day=request.get(USAGE_DAY), model=winner.model or req.model)
        status = unsent or ending(request) or logged_outcome(outcome, [winner] if winner else [],
                                                             stopping=ctx.ended_by_stop(request))
        _log_answer(request, fmt, key, req, asked, winner.uid if winner else None, use_mixture=use_mixture,
                    status=status, started=started, runs=[*earlier, *race.runs], send=send, failure=failure)


def _log_answer(request: web.Request, fmt: AnswerFormat, key: KeyRecord, req: ChatCompletionRequest, uids: list[int],
                winner: int | None, *, use_mixture: bool, status: str, started: float, runs: list[MinerRun],
                send: bool, failure: str | None = None) -> None:
    """The request's access line (``answer_line``; ``failure``: the code of the HTTP error it ended with, if any); a
    background turn's (``send=False``) is held, and written once the turn is settled (``responses_background``)."""
    rid = request_id(request)

    def line(status: str) -> str:
        return answer_line(fmt.kind, rid, key.id, uids, winner, stream=req.stream, mixture=use_mixture, status=status,
                           started=started, runs=runs, truncated=cuts_of(request),
                           code=outcome_code(status, failure))

    if not send:
        hold(request, line, status)
    else:  # built only when it is written (LOG_LEVEL below WARNING): an f-string per request otherwise
        write(request, line(status) if request.app[CTX].request_log.enabled else "")


def _complete(req: ChatCompletionRequest, run: MinerRun, headers: dict[str, str],
              found: Found | None = None, *, function_call: Legacy | None = None) -> web.Response:
    obj = completion_for(req, run, response_usage(req, run))
    if function_call:  # a legacy function calling request: its call as message.function_call
        obj = as_function_call(obj, forced=function_call.forced)
    if found is not None:  # a web search came first: the places the answer names its sources
        obj["choices"][0]["message"]["annotations"] = chat_citations(run.text, found)
    return json_response(obj, headers=headers)


def _frames(batch: list[Event]) -> bytes:
    # encode_events: a miner's event may span several data: lines (pretty-printed JSON), each its own line
    return encode_events([d if type(d) is str else event_text(d) for d in batch])


def _trailer(req: ChatCompletionRequest, run: MinerRun, found: Found | None = None) -> bytes:
    """What follows the winner's chunks: an error event if it failed mid-stream; else the citations
    of a web search that came first (an annotations-only chunk, as OpenAI sends them), and the usage
    chunk when asked for and the miner sent none of its own (its usage on a choice's chunk is moved here, as
    OpenAI sends it); then ``[DONE]``."""
    if run.error:
        return mid_stream_failure_event([run]) + DONE_FRAME
    out = b""
    model = run.model or req.model or "unknown"
    if found is not None:
        out += citations_event(run.text, found, completion_id=run.completion_id, created=run.created, model=model)
    if req.stream_options and req.stream_options.include_usage and not run.usage_relayed:
        # response_usage: the miner's count, else the estimate an answer not streamed gets (tool calls and refusals count)
        chunk = usage_chunk(completion_id=run.completion_id, created=run.created, model=model, usage=response_usage(req, run))
        out += encode_event(dumps(chunk))
    return out + DONE_FRAME


async def _stream(
    request: web.Request, req: ChatCompletionRequest, race: Race, run: MinerRun, headers: dict[str, str],
    found: Found | None = None, *, function_call: Legacy | None = None,
) -> web.StreamResponse:
    """Relay the winner's events as they arrive; a failure after it won ends with an error event.

    A winner whose whole answer is already in (a fast miner's stream often arrives in one read)
    goes out as one response body: one write instead of a chunked stream's three. ``function_call``: a legacy
    function calling request, whose call is streamed as ``delta.function_call`` (``legacy_functions``).
    """
    headers = {**headers, **SSE_HEADERS}
    shape = LegacyStream(forced=function_call.forced) if function_call else finish_stream(req)
    if run.done:
        events = shape.events(run.events) if shape else run.events
        return web.Response(body=_frames(events) + _trailer(req, run, found), headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    end_at_stop(request, stop_event)
    async for batch in race.follow_batches(run):
        await response.write(_frames(shape.events(batch) if shape else batch))
    end_at_stop(request, None)
    await response.write_eof(_trailer(req, run, found))
    return response


class ChatCompletionFormat:
    """OpenAI's chat completion: one ``chat.completion`` object, or the winner's chunks relayed. ``found``: a web
    search came first (``web_search_options``): the object's message carries ``url_citation`` annotations, and a
    stream ends with them in an annotations-only chunk. ``function_call``: the request was OpenAI's legacy function
    calling, and its answer is in that shape (``legacy_functions``)."""

    kind = "chat"
    input_param = "messages"

    def __init__(self, found: Found | None = None, *, function_call: Legacy | None = None) -> None:
        self.found = found
        self.function_call = function_call

    def complete(self, req: ChatCompletionRequest, run: MinerRun, headers: dict[str, str]) -> web.Response:
        return _complete(req, run, headers, self.found, function_call=self.function_call)

    async def stream(self, request: web.Request, req: ChatCompletionRequest, race: Race, run: MinerRun,
                     headers: dict[str, str]) -> web.StreamResponse:
        return await _stream(request, req, race, run, headers, self.found, function_call=self.function_call)


CHAT_COMPLETION = ChatCompletionFormat()
