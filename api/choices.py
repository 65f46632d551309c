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
from typing import Any

from aiohttp import web

from api.access_log import request_id, write
from api.auth import check_model
from api.completion import (
    completion_for,
    mid_stream_failure_event,
    no_winner_error,
    response_usage,
)
from api.context import CTX
from api.fanout import deadline_seconds, settle, start_race
from api.mixture import is_mixture
from api.race import MinerRun, Race
from api.selection import select_miners
from shared.errors import ApiError
from shared.http import json_response
from shared.jsonutil import dumps, loads
from shared.miner_client import Event
from shared.protocol import DEFAULT_TASK, ChatCompletionRequest, new_completion_id, usage_chunk
from shared.sse import DONE_FRAME, encode_event
from shared.store.base import KeyRecord

SEED_RANGE = 2**63  # the seeds a request may carry (0 .. 2**63 - 1)
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


async def answer_choices(request: web.Request, key: KeyRecord, req: ChatCompletionRequest, sent: dict[str, Any],
                         *, started: float) -> web.StreamResponse:
    """Race n times, then answer with n choices (``req.n`` > 1; validated, authenticated, and passed by
    ``check_request`` before any web search was spent on it)."""
    ctx = request.app[CTX]
    rid = request_id(request)
    model = None if req.wants_any_model() else req.model
    check_model(key, model)
    n = req.n or 1
    seed = req.seed if req.seed is not None else random.randrange(2**31 - MAX_CHOICES)
    seconds = deadline_seconds(ctx.settings, timeout=req.timeout, max_tokens=req.effective_max_tokens())
    races: list[tuple[Race, dict[str, Any]]] = []
    for i in range(n):
        neurons = select_miners(ctx.metagraph.snapshot, ctx.availability, uids=req.uids,
                                task=req.task or DEFAULT_TASK, model=model, k=ctx.settings.default_k, rng=ctx.rng,
                                self_hotkey=ctx.client.signer.hotkey)
        body = req.miner_body(seed=(seed + i) % SEED_RANGE, sent=sent)  # a seed at the top wraps to 0
        races.append((start_race(ctx, neurons, body, seconds, stream=req.stream, request_id=rid), body))
    headers = {"x-request-id": rid, "x-sn1-seed": str(seed)}
    outcome, winners, usage = "error", [], {}
    try:
        for race, _ in races:
            winner = await race.winner()
            if winner is None:
                raise no_winner_error(race)
            winners.append(winner)
        headers["x-sn1-miner-uid"] = ",".join(str(w.uid) for w in winners)
        usage = total_usage([response_usage(req, w) for w in winners])
        if req.stream:
            response = await _stream(request, req, races, winners, usage, headers)
        else:
            response = _complete(req, winners, usage, headers)
        outcome = "ok"
        return response
    except ApiError as e:
        e.headers.update(headers)
        raise
    finally:
        for race, body in races:
            if outcome == "ok" or all(r.done for r in race.runs):
                settle(ctx, race, body)
            else:
                race.cancel()  # a choice failed, the client left, or a bug: stop every miner request now
        if outcome == "ok":
            ctx.usage.record(key.id, prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                             error=any(w.error is not None for w in winners))
        write(request, f"chat rid={rid} key={key.id} n={n} uids={[[r.uid for r in race.runs] for race, _ in races]} "
                       f"winners={[w.uid for w in winners]} stream={req.stream} status={outcome} "
                       f"latency_ms={(time.perf_counter() - started) * 1000:.1f}")


def total_usage(each: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's usage: the prompt once (every choice answered the same one), every completion."""
    prompt = max((int(u.get("prompt_tokens") or 0) for u in each), default=0)
    completion = sum(int(u.get("completion_tokens") or 0) for u in each)
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if any(u.get("estimated") for u in each):
        out["estimated"] = True
    return out


def _complete(req: ChatCompletionRequest, winners: list[MinerRun], usage: dict[str, Any],
              headers: dict[str, str]) -> web.Response:
    objects = [completion_for(req, run, usage) for run in winners]
    obj = objects[0] | {"choices": [o["choices"][0] | {"index": i} for i, o in enumerate(objects)]}
    return json_response(obj, headers=headers)


async def _stream(request: web.Request, req: ChatCompletionRequest, races: list[tuple[Race, dict[str, Any]]],
                  winners: list[MinerRun], usage: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse:
    """The winners' chunks interleaved as they arrive, each relabelled with its choice and one id."""
    response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    cid, created = new_completion_id(), int(time.time())
    async for i, batch in _merged(races, winners):
        frames = [_relabelled(data, i, cid, created) for data in batch]
        await response.write(b"".join(f for f in frames if f))
    if any(run.error for run in winners):
        tail = mid_stream_failure_event(winners)
    elif req.stream_options and req.stream_options.include_usage:
        tail = encode_event(dumps(usage_chunk(completion_id=cid, model=winners[0].model or req.model or "unknown",
                                              usage=usage, created=created)))
    else:
        tail = b""
    await response.write_eof(tail + DONE_FRAME)
    return response


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
    obj["choices"] = [{**c, "index": index} for c in choices]
    obj.pop("usage", None)
    return encode_event(dumps(obj))
