"""``n`` > 1 on chat completions: n answers, each the winner of its own race.

OpenAI's ``n`` asks one model for n samples. Here choice i is the first valid answer of its own
race, with its own miners (selected apart, so often different ones) and its own seed (the caller's
``seed`` + i, so choice 0 is the answer ``n = 1`` gets). As at OpenAI it is all or nothing: a choice
no miner answered fails the request. Streamed, the n winners' chunks are interleaved as they
arrive, each carrying its choice's ``index`` under one completion id; usage is one chunk at the end
(every winner's completion tokens, the prompt once).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from api.access_log import code_field, failures, request_id, write
from api.auth import USAGE_DAY, check_model
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
from api.context import CTX, ApiContext
from api.fanout import aimed, chat_deadline, node_deadline, passed_over, settle, start_race
from api.legacy_functions import Legacy, LegacyStream, as_function_call
from api.mixture import is_mixture
from api.race import MinerRun, Race
from api.selection import select_miners
from api.tool_finish import ToolsFinishStream, finish_stream
from api.web_retrieval import Found
from api.web_search import chat_citations, citations_event
from shared.connections import end_at_stop
from shared.errors import ApiError, invalid_value
from shared.http import json_response
from shared.jsonutil import dumps, loads
from shared.metagraph import Neuron
from shared.miner_client import Event
from shared.protocol import (
    DEFAULT_TASK,
    MAX_UIDS,
    ChatCompletionRequest,
    new_completion_id,
    token_counts,
    usage_chunk,
)
from shared.sse import DONE_FRAME, SSE_HEADERS, encode_event
from shared.store.base import KeyRecord

INT64 = 2**64  # seeds are OpenAI's: any signed 64-bit integer
MAX_CHOICES = 8  # each choice is a race of DEFAULT_K miners: n bounds a request's fan-out at n x k


def check_request(req: ChatCompletionRequest) -> None:
    """What ``n`` > 1 cannot be combined with: one miner pinned (a session), one synthesised answer (a
    mixture)."""
    if is_mixture(req):
        raise ApiError(400, "n > 1 cannot be combined with a mixture of miners, which gives one answer.",
                       param="n", code="unsupported_parameter")
    if req.session_id is not None:
        raise ApiError(400, "n > 1 cannot be combined with session_id: a session pins one miner.", param="n",
                       code="unsupported_parameter")


def plan(ctx: ApiContext, key: KeyRecord, req: ChatCompletionRequest, *, count: int | None = None,
         param: str = "n") -> list[list[Neuron]]:
    """Check what ``n`` may not be combined with and what the key may ask for, and choose the miners
    of each of ``count`` (default ``n``) answers apart, so often different ones: every refusal before
    anything is spent (``param``: the field a refusal of their number names)."""
    check_request(req)
    check_named_miners(req.uids, count or req.n or 1, param)
    model = None if req.wants_any_model() else req.model
    check_model(key, model)
    return [select_miners(ctx.metagraph.snapshot, ctx.availability, uids=req.uids, task=req.task or DEFAULT_TASK,
                          model=model, k=ctx.settings.default_k, rng=ctx.rng, self_hotkey=ctx.client.signer.hotkey,
                          health=ctx.miner_health)
            for _ in range(count or req.n or 1)]


def check_named_miners(uids: list[int] | None, races: int, param: str) -> None:
    """400 when ``races`` races of the named ``uids`` together would ask more miners than one race may name
    (``MAX_UIDS``): a key's limits count requests, and 8 choices of 256 named uids made one charged request ask
    2,048 miners, each signed with the validator's hotkey."""
    named = len(set(uids or ()))
    if races * named > MAX_UIDS:
        raise invalid_value(param, f"{races} answers, each raced by the {named} miners named in 'uids', would ask "
                                   f"{races * named} miners; one request may ask at most {MAX_UIDS} (name fewer "
                                   "uids, or ask for fewer answers a request)")


@dataclass(frozen=True)
class Ask:
    """One race of a request with several answers: the chat request it answers (for usage estimates),
    the body its miners get, its miners, and which of the request's prompts it answers (usage counts
    each prompt once, however many choices answer it)."""

    req: ChatCompletionRequest
    body: dict[str, Any]
    neurons: list[Neuron]
    prompt: int = 0


class ChoicesFormat(Protocol):
    """How n winners reach the caller: chat completion choices here, text completion choices in
    ``api/completions.py``."""

    kind: str  # the access log's word for the request
    input_param: str  # the request's field for what the model reads (a context overflow's 400 names it)

    def new_id(self) -> str: ...

    def complete(self, winners: list[MinerRun], usage: dict[str, Any], headers: dict[str, str]) -> web.Response: ...

    def chunk(self, data: Event, index: int, cid: str, created: int) -> bytes:
        """A winner's chunk as choice ``index`` of completion ``cid`` (b"": nothing to send)."""
        ...

    def usage_chunk(self, cid: str, created: int, model: str, usage: dict[str, Any]) -> bytes: ...

    def tail(self, winners: list[MinerRun], cid: str, created: int) -> bytes:
        """What a complete stream carries after the winners' chunks and before its usage (b"": nothing)."""
        ...


async def answer_choices(request: web.Request, key: KeyRecord, req: ChatCompletionRequest, sent: dict[str, Any],
                         picks: list[list[Neuron]], *, started: float, found: Found | None = None,
                         headers: dict[str, str] | None = None, function_call: Legacy | None = None) -> web.StreamResponse:
    """Race n times (choice i among ``picks[i]``, from ``plan``), then answer with n chat choices (each
    with its ``url_citation`` annotations when a web search came first: ``found``; ``headers``: the answer's
    besides its own; ``function_call``: each in the legacy function calling shape, ``legacy_functions``)."""
    seed = req.seed if req.seed is not None else random.randrange(2**31 - MAX_CHOICES)
    asks = [Ask(req, req.miner_body(seed=choice_seed(seed, i), sent=sent), neurons) for i, neurons in enumerate(picks)]
    fmt = ChatChoices(req, found, function_call=function_call)
    return await run_choices(request, key, asks, fmt, seed=seed, started=started, headers=headers)


def choice_seed(seed: int, i: int) -> int:
    """Choice i's seed: the request's + i (choice 0 is what n = 1 answers); past the top of int64 it wraps
    to the bottom, as int64 arithmetic does."""
    return (seed + i + 2**63) % INT64 - 2**63


async def run_choices(request: web.Request, key: KeyRecord, asks: list[Ask], fmt: ChoicesFormat, *, seed: int,
                      started: float, headers: dict[str, str] | None = None) -> web.StreamResponse:
    """Race every ask, then answer with each one's winner as a choice, in order (all or nothing); ``headers``:
    the answer's (and its error's) besides its own."""
    ctx = request.app[CTX]
    rid = request_id(request)
    req = asks[0].req  # what the asks share: stream, stream_options, timeout, max_tokens
    seconds, excuse = chat_deadline(ctx.settings, req)
    scale = node_deadline(ctx.settings, req)
    races = [(start_race(ctx, a.neurons, a.body, seconds, stream=req.stream, request_id=rid, excuse_timeouts=excuse,
                         scored=not aimed(a.req, None, a.neurons), latency_scale=scale), a.body) for a in asks]
    headers = {**(headers or {}), "x-request-id": rid, "x-sn1-seed": str(seed)}
    outcome, winners, usage = "error", [], {}
    failure: str | None = None  # the code of the HTTP error the request ended with, if any
    try:
        for race, body in races:
            winner = await race.winner()
            if winner is None:
                error = no_winner_error(race, fmt.input_param, model=body.get("model"),
                                        passed_over=passed_over(ctx, body, named=bool(req.uids)))
                tell_no_answer(ctx.no_answer, race, rid, error, caller_cut=excuse)
                raise error
            winners.append(winner)
        ctx.no_answer.ok()
        headers["x-sn1-miner-uid"] = ",".join(str(w.uid) for w in winners)
        if req.stream:
            response, usage = await _stream(request, req, races, winners, asks, headers, fmt)
        else:
            usage = choices_usage(asks, winners)
            response = fmt.complete(winners, usage, headers)
        outcome = "ok"
        return response
    except ApiError as e:
        failure = e.code
        e.headers.update(headers)
        raise
    except asyncio.CancelledError:
        outcome = "client_closed"
        raise
    finally:
        for race, body in races:
            if outcome == "ok" or all(r.done for r in race.runs):
                settle(ctx, race, body)
            else:
                race.cancel()  # a choice failed, the client left, or a bug: stop every miner request now
        # a caller that left mid-answer is charged the answers as far as they came (as ``chat.answer`` charges one)
        if outcome == "ok" or (outcome == "client_closed" and len(winners) == len(asks)):
            usage = usage or choices_usage(asks, winners)
            ctx.usage.record(key.id, prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                             error=outcome == "ok" and any(w.error is not None for w in winners),
                             day=request.get(USAGE_DAY), model=winners[0].model or req.model)
        status = logged_outcome(outcome, winners, stopping=ctx.ended_by_stop(request))
        write(request, f"{fmt.kind} rid={rid} key={key.id} n={len(asks)} "
                       f"uids={str([[r.uid for r in race.runs] for race, _ in races]).replace(' ', '')} "
                       f"winners={str([w.uid for w in winners]).replace(' ', '')} stream={req.stream} "
                       f"status={status}{code_field(outcome_code(status, failure))} "
                       f"latency_ms={(time.perf_counter() - started) * 1000:.1f}"
                       f"{failures(r for race, _ in races for r in race.runs)}" if ctx.request_log.enabled else "")


def choices_usage(asks: list[Ask], winners: list[MinerRun]) -> dict[str, Any]:
    """The request's usage once its winners have ended (a streamed winner's count comes last)."""
    return total_usage([(a.prompt, response_usage(a.req, w)) for a, w in zip(asks, winners, strict=True)])


def total_usage(each: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """The request's usage from each (prompt, choice's usage): every prompt once (its choices all
    answered it: the count of the choice that counted most of it, and its details), every completion
    (and every completion's details: reasoning tokens, say)."""
    prompts: dict[int, dict[str, Any]] = {}
    for i, u in each:
        kept = prompts.get(i)
        if kept is None or int(u.get("prompt_tokens") or 0) > int(kept.get("prompt_tokens") or 0):
            prompts[i] = u
    prompt = sum(int(u.get("prompt_tokens") or 0) for u in prompts.values())
    completion = sum(int(u.get("completion_tokens") or 0) for _, u in each)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    for group, counted in (("prompt_tokens_details", list(prompts.values())),
                           ("completion_tokens_details", [u for _, u in each])):
        if summed := summed_counts([u.get(group) for u in counted]):
            out[group] = summed
    if any(u.get("estimated") for _, u in each):
        out["estimated"] = True
    return out


def summed_counts(groups: list[Any]) -> dict[str, int]:
    """Usage details groups added up, count by count (what is not a token count left out)."""
    out: dict[str, int] = {}
    for group in groups:
        for name, n in token_counts(group).items():
            out[name] = out.get(name, 0) + n
    return out


class ChatChoices:
    """n chat completion choices: one ``chat.completion`` object, or the winners' chunks relabelled."""

    kind = "chat"
    input_param = "messages"

    def __init__(self, req: ChatCompletionRequest, found: Found | None = None, *,
                 function_call: Legacy | None = None) -> None:
        self.req = req
        self.found = found  # a web search came first: each choice names its sources as url_citations
        self.function_call = function_call  # a legacy function calling request: its calls in that shape
        self.legacy_streams: dict[int, LegacyStream] = {}  # each streamed choice's, by its index
        self.finish_streams: dict[int, ToolsFinishStream | None] = {}  # each streamed choice's calls' finish_reason

    def new_id(self) -> str:
        return new_completion_id()

    def complete(self, winners: list[MinerRun], usage: dict[str, Any], headers: dict[str, str]) -> web.Response:
        objects = [completion_for(self.req, run, usage) for run in winners]
        if self.function_call:
            objects = [as_function_call(o, forced=self.function_call.forced) for o in objects]
        if self.found is not None:
            for o, run in zip(objects, winners, strict=True):
                o["choices"][0]["message"]["annotations"] = chat_citations(run.text, self.found)
        obj = objects[0] | {"choices": [o["choices"][0] | {"index": i} for i, o in enumerate(objects)]}
        return json_response(obj, headers=headers)

    def tail(self, winners: list[MinerRun], cid: str, created: int) -> bytes:
        """Each choice's citations, in an annotations-only chunk of its index (as OpenAI sends them)."""
        if self.found is None:
            return b""
        return b"".join(citations_event(run.text, self.found, completion_id=cid, created=created, index=i,
                                        model=run.model or self.req.model or "unknown")
                        for i, run in enumerate(winners))

    def chunk(self, data: Event, index: int, cid: str, created: int) -> bytes:
        if self.function_call:
            shape = self.legacy_streams.setdefault(index, LegacyStream(forced=self.function_call.forced))
            data = shape.chunk(data)
        elif (finish := self.finish_streams.setdefault(index, finish_stream(self.req))) is not None:
            data = finish.chunk(data)
        return _relabelled(data, index, cid, created)

    def usage_chunk(self, cid: str, created: int, model: str, usage: dict[str, Any]) -> bytes:
        return encode_event(dumps(usage_chunk(completion_id=cid, model=model, usage=usage, created=created)))


async def _stream(request: web.Request, req: ChatCompletionRequest, races: list[tuple[Race, dict[str, Any]]],
                  winners: list[MinerRun], asks: list[Ask], headers: dict[str, str],
                  fmt: ChoicesFormat) -> tuple[web.StreamResponse, dict[str, Any]]:
    """The winners' chunks interleaved as they arrive, each relabelled with its choice and one id; and the
    request's usage, taken once the streams have ended (a winner's own count comes last)."""
    response = web.StreamResponse(headers={**headers, **SSE_HEADERS})
    await response.prepare(request)
    end_at_stop(request, stop_event)
    cid, created = fmt.new_id(), int(time.time())
    async for i, batch in _merged(races, winners):
        await response.write(b"".join(fmt.chunk(data, i, cid, created) for data in batch))
    end_at_stop(request, None)
    usage = choices_usage(asks, winners)
    if any(run.error for run in winners):
        tail = mid_stream_failure_event(winners)
    else:
        tail = fmt.tail(winners, cid, created)
        if req.stream_options and req.stream_options.include_usage:
            tail += fmt.usage_chunk(cid, created, winners[0].model or req.model or "unknown", usage)
    await response.write_eof(tail + DONE_FRAME)
    return response, usage


async def _merged(races: list[tuple[Race, dict[str, Any]]],
                  winners: list[MinerRun]) -> AsyncIterator[tuple[int, list[Event]]]:
    """(choice, batch of events) from every winner, in the order they arrive."""
    queue: asyncio.Queue[tuple[int, list[Event]] | None] = asyncio.Queue()

    async def pump(i: int, race: Race, run: MinerRun) -> None:
        try:
            async for batch in race.follow_batches(run):
                queue.put_nowait((i, batch))
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, race, run))
             for i, ((race, _), run) in enumerate(zip(races, winners, strict=True))]
    try:
        open_ = len(tasks)
        while open_:
            item = await queue.get()
            if item is None:
                open_ -= 1
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()


def _relabelled(data: Event, index: int, cid: str, created: int) -> bytes:
    """One chunk as choice ``index`` of completion ``cid``; a usage-only chunk is dropped (the request's
    usage is one chunk at the end)."""
    obj = loads(data) if isinstance(data, str) else dict(data)
    choices = obj.get("choices") or []
    if not choices:
        return b""
    obj["id"], obj["created"] = cid, created
    obj["choices"] = [_as_choice(c, index) for c in choices]
    obj.pop("usage", None)
    return encode_event(dumps(obj))


def _as_choice(choice: dict[str, Any], index: int) -> dict[str, Any]:
    """A winner's choice as choice ``index`` (its finish reason already in the SDK's words: ``race.absorb``)."""
    return {**choice, "index": index}
