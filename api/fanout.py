"""What every fan-out shares (chat, mixture stages, web retrieval): deadline, race, settle.

A fan-out is "settled" once every miner has finished (each bounded by the
deadline); its payload (body, uids, per-uid chunks, timings and errors) then
goes to the payload sinks, i.e. the durable scoring outbox.
"""

from __future__ import annotations

import asyncio
from typing import Any

from loguru import logger

from api.answer_checks import Check, answer_check, caller_limited, json_opening, must_call, offered_tools
from api.context import ApiContext
from api.race import Race
from api.selection import passed_over as passed_over_by_selection
from shared.jsonutil import dumpb
from shared.metagraph import Neuron
from shared.miner_client import NOT_SERVED
from shared.protocol import ANY_MODEL, ChatCompletionRequest, asks_stream
from shared.settings import ApiSettings


def deadline_seconds(settings: ApiSettings, *, timeout: float | None, max_tokens: int | None) -> float:
    """The caller's ``timeout`` if given; else ``REQUEST_TIMEOUT``, grown by ``SECONDS_PER_TOKEN``
    per requested token beyond 256 (long answers need longer); always capped by ``MAX_REQUEST_TIMEOUT``."""
    if timeout is not None:
        wanted = timeout
    else:
        extra = max(0, (max_tokens or 0) - 256) * settings.seconds_per_token
        wanted = settings.request_timeout + extra
    return min(wanted, settings.max_request_timeout)


def node_deadline(settings: ApiSettings, req: ChatCompletionRequest) -> float:
    """The deadline the node gives ``req`` whatever its ``timeout``: the latency reward's scale."""
    return deadline_seconds(settings, timeout=None, max_tokens=req.effective_max_tokens())


def chat_deadline(settings: ApiSettings, req: ChatCompletionRequest) -> tuple[float, bool]:
    """A chat request's deadline in seconds, and whether it is shorter than the node's own (the caller's
    ``timeout``): a miner it cuts off is then not scored for that (any key could otherwise zero honest
    miners with a short one)."""
    max_tokens = req.effective_max_tokens()
    seconds = deadline_seconds(settings, timeout=req.timeout, max_tokens=max_tokens)
    return seconds, req.timeout is not None and seconds < deadline_seconds(settings, timeout=None,
                                                                          max_tokens=max_tokens)


def aimed(req: ChatCompletionRequest, session: object | None, neurons: list[Neuron]) -> bool:
    """Whether the caller in effect chose the miners: named them (``uids``), pinned one (a session, which a
    caller can open again until it pins the miner it wants), or named a model only one miner serves. Such
    answers are not scored (``Race.scored``): any key holder could otherwise score its own miner (honest
    only for its own requests) or sink a rival with as many of them as it liked."""
    return bool(req.uids) or session is not None or (not req.wants_any_model() and len(neurons) < 2)


def start_race(
    ctx: ApiContext, neurons: list[Neuron], body: dict[str, Any], seconds: float, *, stream: bool, request_id: str,
    excuse_timeouts: bool = False, check: Check | None = None, scored: bool = True, latency_scale: float | None = None,
    empty: str | None = None, seeds: dict[int, int] | None = None,
) -> Race:
    """``check``: what makes a whole answer valid, when the request's own fields do not say (a web
    search's list of results); else the request's ``response_format`` and tools decide (``answer_check``).
    ``empty``: why an answer with no text is none, when it is (``Race.empty``). ``seeds``: the seed each of these
    uids is sent in place of ``body``'s (a mixture's first stage)."""
    deadline = asyncio.get_running_loop().time() + seconds
    options = body.get("stream_options")
    race = Race(ctx.client, neurons, dumpb(body), deadline, stream=stream, asks_stream=asks_stream(body),
                request_id=request_id, excuse_timeouts=excuse_timeouts, offered=offered_tools(body), check=check or answer_check(body),
                opens_with=json_opening(body), calls_only=must_call(body),
                relay_usage=not stream or (isinstance(options, dict) and options.get("include_usage") is True),
                scored=scored, latency_scale=latency_scale, health=ctx.miner_health,
                model=None if body.get("model") in ANY_MODEL else body.get("model"), caller_limited=caller_limited(body),
                empty=empty, seeds=seeds,
                bodies={uid: dumpb({**body, "seed": seed}) for uid, seed in (seeds or {}).items()})
    race.start()
    return race


PING_BODY = {"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1, "stream": True, "seed": 0}


async def ping(ctx: ApiContext, neuron: Neuron, seconds: float, request_id: str, *, task: str,
               model: str | None = None) -> str | None:
    """None if ``neuron`` answered a one-token completion within ``seconds``, else why not. Never scored (its
    race is not settled); its outcome is recorded as any request's (``MinerHealth``). A session's ping, and
    the probe of a miner set aside."""
    body: dict[str, Any] = {**PING_BODY, "task": task}
    if model:
        body["model"] = model
    race = start_race(ctx, [neuron], body, seconds, stream=False, request_id=request_id)
    try:
        winner = await race.winner()
        await race.finish()
    except BaseException:  # the caller left (or the API stops): its miner request goes too
        race.cancel()
        raise
    if winner is None:
        return race.runs[0].error or "no answer"
    return None


def settle(ctx: ApiContext, race: Race, body: dict[str, Any], *, kind: str = "chat") -> None:
    """Hand the payload to the sinks once every miner is done (each is bounded by the deadline):
    at once when they all are (a k = 1 race, usually), else from a tracked background task. Once per
    race: a session's failed attempt is settled by the failover, and must not be again by the handler."""
    if race.settled:
        return
    race.settled = True
    if all(r.done for r in race.runs):
        deliver(ctx, race, body, kind=kind)
    else:
        ctx.spawn(_deliver_when_finished(ctx, race, body, kind=kind))


async def _deliver_when_finished(ctx: ApiContext, race: Race, body: dict[str, Any], *, kind: str) -> None:
    try:
        await race.finish()
    except asyncio.CancelledError:
        # The API is shutting down with miners still answering an answered request: stop them, and
        # store what the others sent (the stopped ones are left out, not scored 0) before the outbox closes.
        race.cancel()
        await asyncio.gather(*race.tasks, return_exceptions=True)
        deliver(ctx, race, body, kind=kind)
        raise
    deliver(ctx, race, body, kind=kind)


def not_served_unasked(ctx: ApiContext, race: Race, body: dict[str, Any]) -> set[int]:
    """The miners that answered ``404 model_not_found`` for a model fresh availability never said they serve:
    raced for it only because the API knew no better (no fresh availability data: every serving miner is
    raced), they did nothing wrong, and scored, each was a zero for a model it never listed. A miner that
    lists the model and then says it does not serve it is scored as any failure (a 0): otherwise a miner
    could turn away the organic requests it answers badly and keep them out of its score."""
    model = body.get("model")
    model = None if model in ANY_MODEL else model
    cache = ctx.availability
    return {r.uid for r in race.runs if r.error_kind == NOT_SERVED
            and not (cache is not None and cache.serves(r.uid, body.get("task"), model))}


def passed_over(ctx: ApiContext, body: dict[str, Any], *, named: bool) -> list[Neuron]:
    """The miners selection left out of ``body``'s race, set aside, that may serve its task and model
    (``selection.passed_over``: for ``completion.no_winner_error``); none when the caller ``named`` its miners
    (``uids``: the race was of those it chose) or asked for any model (no model's miners to speak of)."""
    model = body.get("model")
    if named or model in ANY_MODEL:
        return []
    return passed_over_by_selection(ctx.metagraph.snapshot, ctx.availability, ctx.miner_health,
                                    task=body.get("task"), model=model, self_hotkey=ctx.client.signer.hotkey)


def deliver(ctx: ApiContext, race: Race, body: dict[str, Any], *, kind: str) -> None:
    """The settled race's payload to every sink; none for a request every miner's model server
    refused (the caller's 400: scored, it would be a zero for every miner that did nothing wrong,
    and any key could send such requests to sink honest miners' scores)."""
    if not ctx.payload_sinks:
        return
    if race.refused():
        logger.debug("rid={} not scored: every model server refused the request", race.request_id)
        return
    payload = race.payload(leave_out=not_served_unasked(ctx, race, body))
    if not payload["uids"]:
        logger.debug("rid={} not scored: the caller's deadline cut off every miner", race.request_id)
        return
    payload["body"] = body
    payload["kind"] = kind
    payload["request_id"] = race.request_id
    if not race.scored:  # the caller chose its miners (``aimed``): the validator takes it, and does not score it
        payload["caller_chose_miners"] = True
    for sink in ctx.payload_sinks:
        try:
            sink(payload)
        except Exception as e:  # noqa: BLE001 - a sink failure is logged, never raised into a request
            logger.warning("scoring payload sink failed: {}", e)
