"""A winning miner run in OpenAI's words: its completion object, usage, and what failure is said.

Shared by the chat completions route (``api/chat.py``), its ``n`` choices (``api/choices.py``) and
the Responses API (``api/responses.py``), which render the same runs in their own shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from api.access_log import SHUT_DOWN
from api.race import MinerRun, Race
from api.selection import NO_MINERS, not_answering
from api.tool_finish import asks_tools, named_choice, tools_finish
from shared.errors import (
    CONTEXT_LENGTH_EXCEEDED,
    MODEL_SERVER_REJECTED,
    NO_RETRY,
    SERVER_SHUTTING_DOWN,
    ApiError,
    model_not_found,
    says_context_overflow,
    shutting_down,
)
from shared.jsonutil import dumps
from shared.logging import printable
from shared.metagraph import Neuron
from shared.protocol import (
    SERVICE_TIER,
    ChatCompletionRequest,
    completion_object,
    estimate_tokens,
    estimated_counts,
    messages_text,
)
from shared.sse import DONE_FRAME, encode_event
from shared.store.outage import OutageLog

FAILED_MID_STREAM = "failed_mid_stream"  # the access line's word for a stream its winner failed after it began
MINER_FAILED_MID_STREAM = "miner_failed_mid_stream"  # the code of that stream's last event


def estimated_usage(req: ChatCompletionRequest, completion_text: str, prompt_text: str | None = None) -> dict[str, Any]:
    """~4 characters a token, of ``prompt_text`` (else ``req``'s messages) and ``completion_text``."""
    if prompt_text is None:
        prompt_text = messages_text(req.messages)
    return estimated_counts(prompt_text, completion_text) | {"estimated": True}


def response_usage(req: ChatCompletionRequest, run: MinerRun) -> dict[str, Any]:
    if run.usage is not None:  # kept by the race only when its token counts are sane, in the SDK's shape
        return run.charged() or run.usage  # as far as the request and the answer can hold it
    # what the model wrote: its thinking, its text, a refusal, and the names and arguments of the tools it called
    calls = "".join(c["function"]["name"] + c["function"]["arguments"] for c in run.tool_calls.values())
    thinking = "".join(run.reasoning)
    usage = estimated_usage(req, thinking + run.text + "".join(run.refusal) + calls, run.prompt)
    if thinking:  # counted as reasoning tokens too, as a model server counts them
        usage["completion_tokens_details"] = {"reasoning_tokens": estimate_tokens(thinking)}
    return usage


def no_winner_error(race: Race, input_param: str = "messages", *, model: str | None = None,
                    passed_over: Sequence[Neuron] = ()) -> ApiError:
    """The error of a race no miner won; ``input_param``: the request's field a context overflow names (its
    API's name for the conversation: chat's ``messages``, the Responses API's ``input``, ...); ``model``: the
    one the miners were asked for; ``passed_over``: the miners selection left out of the race, set aside, that
    may serve it (``fanout.passed_over``)."""
    if race.not_served():
        if passed_over and race.health is not None:
            # Its miners are failing, not missing: a 404 told the caller to fix a model name that was right
            return not_answering(race.health, list(passed_over),
                                 f"the {len(race.runs)} miner(s) asked do not serve the model `{model}`, and ")
        # No miner raced serves the model: OpenAI's 404 for an unknown model (a 502 was retried twice by
        # the SDKs, and read as the subnet failing, not as the caller's model name).
        return model_not_found(model)
    errors = each_failure(race.errors())
    if race.refused():
        # Every miner's model server refused the request itself (a bad parameter, more tokens than the
        # model takes): the caller's to fix, so a 400 (which clients do not retry), not a 502 (which
        # the OpenAI SDK retries twice, refused twice more).
        if all(says_context_overflow(err) for err in race.errors().values()):
            # OpenAI's code and words for it: agent frameworks trim or summarize their history on it
            # (the code in the words too: LangChain looks for it in the SDK's error text, which has only these)
            return ApiError(400, "The input is longer than the miners' models' maximum context length, with the "
                                 "tokens asked for (context_length_exceeded): reduce the length of the messages, "
                                 f"or ask for fewer tokens. {errors}",
                            code=CONTEXT_LENGTH_EXCEEDED, param=input_param)
        return ApiError(400, f"The miners' model servers refused this request. {errors}",
                        code=MODEL_SERVER_REJECTED)
    if race.timed_out():
        return ApiError(504, f"No miner answered validly before the deadline. {errors}".strip(), code="deadline_exceeded")
    # Every miner answered and none fit what the request asked (a strict schema no answer fits, say): a retry asks
    # the same miners the same thing, and the SDKs retry a 502 twice (the caller waited three times for one
    # failure). Said so (``x-should-retry: false``), the SDK raises at once; a miner down or broken is still retried.
    headers = dict(NO_RETRY) if race.unfit() else None
    return ApiError(502, f"No miner returned a valid answer. {errors}".strip(), code="no_valid_answer", headers=headers)


def each_failure(errors: dict[int, str]) -> str:
    """Why each miner failed, as an error message names them (``uid 2: deadline exceeded; uid 5: ...``)."""
    return "; ".join(f"uid {uid}: {err}" for uid, err in errors.items())


def tell_no_answer(log: OutageLog, race: Race, rid: str, error: ApiError, *, caller_cut: bool) -> None:
    """Count a race no miner won into ``log`` (``ApiContext.no_answer``): its first such request is a WARNING
    with each miner's reason, then a line a minute while they go on. Each was an INFO access line alone
    (``status=error``): every miner down failed every request without a WARNING. Left out, as no outage of the
    network: a request its miners' model servers refused (the caller's 400), one whose caller chose its
    miners, one whose caller's own deadline was shorter than the node's (``caller_cut``: ``chat_deadline``'s
    word, not the race's ``excuse_timeouts``, which the node sets too for the deadlines it cuts itself: a
    mixture's stages were never told), and one for a model no miner raced serves (the caller's 404). A 503
    ``no_miners_available`` is always told, as selection's is (``chat.plan``)."""
    if error.code != NO_MINERS and (race.refused() or race.not_served() or not race.scored or caller_cut):
        return
    log.failed(f"rid={rid} answered HTTP {error.status} {error.code}: {printable(error.message)[:800]} (are the "
               "miners up and reachable from this host? the validator's availability lines and "
               "sn1_api_miner_errors_total say which fail)")


def _finish_reason(req: ChatCompletionRequest, run: MinerRun) -> str:
    """The answer's ``finish_reason``: the miner's (in the SDK's words: race.absorb), in OpenAI's word for a call
    (``tool_finish``) when the request offers tools."""
    reason = run.finish_reason if run.finish_reason else ("tool_calls" if run.tool_calls else "stop")
    if not asks_tools(req.tools, req.tool_choice):
        return reason
    return tools_finish(reason, called=bool(run.tool_calls), forced=named_choice(req.tool_choice))


def completion_for(req: ChatCompletionRequest, run: MinerRun, usage: dict[str, Any]) -> dict[str, Any]:
    """The ``chat.completion`` object of one winning run (with the model server's ``system_fingerprint``, as
    its streamed chunks carry it), and the tier that served it, as OpenAI's says it and the Responses API's here
    (``SERVICE_TIER``: it was left out, the SDK's ``None``, where ``/v1/responses`` said "default")."""
    obj = completion_object(
        completion_id=run.completion_id,  # the API's, as its stream's chunks carry it (``MinerRun.envelope``)
        created=run.created,
        model=run.model or req.model or "unknown",
        content=run.text or (None if run.tool_calls or run.refusal else ""),
        refusal="".join(run.refusal) or None,
        reasoning="".join(run.reasoning) or None,
        tool_calls=run.merged_tool_calls(),  # each with an id: MinerRun gives one where none came
        finish_reason=_finish_reason(req, run),
        usage=usage,
        logprobs=choice_logprobs(run.logprobs),
    )
    if run.fingerprint is not None:
        obj["system_fingerprint"] = run.fingerprint
    obj["service_tier"] = SERVICE_TIER
    return obj


def logprob_tokens(parts: list[Any], kind: str = "content") -> list[Any]:
    """The tokens' log probabilities of a run's chunks (each chunk's ``logprobs.content``, or its
    ``logprobs.refusal``: a refusal's tokens), in order."""
    tokens: list[Any] = []
    for p in parts:
        if isinstance(p, dict) and isinstance(p.get(kind), list):
            tokens.extend(p[kind])
    return tokens


def choice_logprobs(parts: list[Any]) -> dict[str, Any] | None:
    """A chat choice's ``logprobs``: its answer's tokens and its refusal's, as OpenAI gives both (a
    refusal's were dropped); None when the miner sent neither."""
    content, refusal = logprob_tokens(parts), logprob_tokens(parts, "refusal")
    if not (content or refusal):
        return None
    return {"content": content or None, "refusal": refusal or None}


def mid_stream_failure(run: MinerRun) -> str | None:
    """What the caller is told when the winner fails after its answer started (None: it did not)."""
    return f"miner uid {run.uid} failed mid-stream: {run.error}" if run.error else None


def logged_outcome(outcome: str, winners: list[MinerRun], *, stopping: bool = False) -> str:
    """The access log's word for how a request ended: winners (one per choice) of which one failed after
    its stream began are not ``ok`` (the caller got an error event), though the answer was sent and counted.
    A request cancelled while this process stops (``ApiContext.stopping``: aiohttp cuts what still runs 5 s after
    the stop signal) is ``shut_down``, as a background response its shutdown failed is: its caller did not leave,
    its connection was closed under it (it read ``client_closed``, and an operator restarting the API saw no sign
    that the restart had cut anyone)."""
    if outcome == "client_closed" and stopping:
        return SHUT_DOWN
    return FAILED_MID_STREAM if outcome == "ok" and any(w.error for w in winners) else outcome


def outcome_code(status: str, error_code: str | None = None) -> str | None:
    """The ``code=`` of a raced request's access line (``logged_outcome``'s ``status``): the error code its caller
    was told, as a refused request's line has it: ``error_code`` (the HTTP error's: ``no_valid_answer``,
    ``deadline_exceeded``, ...) for ``error``, the stream's last event's for ``failed_mid_stream`` and ``shut_down``;
    None for any other (``ok``, a caller that left). A stream whose miner died mid-way said only
    ``status=failed_mid_stream``, and a race no miner won ``status=error``, with no code at all."""
    if status == "error":
        return error_code
    return _STATUS_CODES.get(status)


_STATUS_CODES = {FAILED_MID_STREAM: MINER_FAILED_MID_STREAM, SHUT_DOWN: SERVER_SHUTTING_DOWN}  # ``outcome_code``'s


def mid_stream_failure_event(runs: list[MinerRun]) -> bytes:
    """The SSE error event that ends a chat stream whose winners (one per choice) failed after they
    started, naming each that did."""
    message = "; ".join(f for f in map(mid_stream_failure, runs) if f)
    return encode_event(dumps({"error": {"message": message, "type": "upstream_error",
                                         "code": MINER_FAILED_MID_STREAM, "param": None}}))


# What a stream cut short by this process's stop is told (``shared.connections.end_at_stop``), in every API's stream.
STREAM_CUT = "the stream was cut short"


def stop_event() -> bytes:
    """The SSE error event (OpenAI's shape, code ``server_shutting_down``) and ``[DONE]`` that end a chat or text
    completion stream this process's stop cut (``end_at_stop``): it was cut with no reason (no error, no ``[DONE]``),
    which the OpenAI SDKs raise as a connection error, a network fault's."""
    return encode_event(dumps(shutting_down(STREAM_CUT).body())) + DONE_FRAME
