"""Fan out one request to k miners and race them: the first valid answer wins.

Streaming: the first miner to send content that is not only whitespace, a
refusal or a reasoning model's thinking wins, and its events are relayed as they
arrive; an answer of tool calls alone wins once its calls are whole and pass the
request's check (``Race._relayable``). Non-streaming: the first miner to finish with a non-empty answer
wins. An answer that ends without a ``finish_reason`` was cut short (an upstream
that dropped its connection): it fails, streamed or not. When every miner has
ended and none said anything, the first to end cleanly with a ``finish_reason``
is the answer: a model that stops at once (a stop sequence that matches its
first word) answers ``""``, and that is the caller's answer, not a 502. Every
miner's events and arrival times are kept *per uid* (for the scoring payload); a
miner never contributes a chunk to another's answer.

This module knows nothing about HTTP servers: it is driven by ``api/chat.py``
and tested directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from api.answer_checks import NO_CALL, NOT_JSON, UNFIT, Check, Unfit
from api.miner_health import MinerHealth
from shared.aio import follow_growing
from shared.jsonutil import loads
from shared.logging import printable
from shared.metagraph import Neuron
from shared.miner_client import NOT_SERVED, Event, MinerClient, MinerError, event_text
from shared.protocol import (
    FINISH_REASONS,
    USAGE_DETAILS,
    finish_reason,
    is_name,
    new_call_id,
    new_completion_id,
    reported_usage,
    valid_usage,
)

# Why a run that ended ``length`` with nothing in it is no answer when the caller set no token limit: no limit of
# the caller's cut it, and taken on the miner's word it won the race that every other miner failed (an empty
# response ``incomplete`` for ``max_output_tokens`` that nobody set; no call where ``tool_choice`` required one).
NOTHING_CUT = "the answer ended 'length' with nothing in it, and the request set no token limit"


@dataclass(slots=True)
class MinerRun:
    """Everything one miner sent for one request."""

    neuron: Neuron
    events: list[Event] = field(default_factory=list)  # each chunk as received (raw JSON text or object)
    timings: list[float] = field(default_factory=list)  # seconds since the fan-out started
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)  # the model declined (OpenAI's ``refusal``): an answer too
    # A reasoning model's thinking (``reasoning_content``, vLLM and DeepSeek; ``reasoning``, OpenRouter):
    # it comes first, often for long: a streamed answer is claimed by it (the caller sees it as it comes),
    # one waited for is not (thinking alone, cut by max_tokens, never beats an answer with content).
    reasoning: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    # the ids of ``tool_calls``: each new call's is checked against them (a scan of the calls cost O(n²): 20,000
    # calls in one chunk held the event loop for minutes)
    tool_call_ids: set[str] = field(default_factory=set)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None  # the miner's, in the SDK's shape (``reported_usage``); None: none valid
    # The text of its prompt, when not the caller's messages (a mixture's synthesis: they and the first stage's
    # answers), which an estimated usage counts (``completion.response_usage``)
    prompt: str | None = None
    # The model the answer is of, for the caller: the one the request named (``Race``'s ``model``: a miner's answer
    # saying another is told as this), else the one the miner's first chunk names (``answer_model``).
    model: str | None = None
    claimed: bool = False  # a chunk of it named its model (the first such chunk's fingerprint is the answer's)
    fingerprint: str | None = None  # the model server's system_fingerprint, if it gave one (a stream relays it)
    logprobs: list[Any] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    done: bool = False
    has_answer: bool = False
    new_data: asyncio.Event = field(default_factory=asyncio.Event)
    # The tools the request lets the model call (``offered_tools``); None: not checked (the validator
    # rebuilds answers with its own rules).
    offered: frozenset[str] | None = None
    opens_with: str | None = None  # what the answer's text must start with (``answer_checks.json_opening``)
    # The request's tool_choice requires a call (``answer_checks.must_call``): text fails the run at its first
    # word, so a stream of prose cannot win a race the caller's agent loop expects a call from.
    calls_only: bool = False
    opened: bool = False  # its first text was checked
    # Whether a usage-only chunk (``choices: []``) is kept to be relayed: only when the caller asked for it
    # (``stream_options.include_usage``), as OpenAI sends it; a model server that sends it anyway (llama.cpp)
    # broke ``chunk.choices[0]`` in every caller's loop. Its usage is taken either way.
    relay_usage: bool = True
    usage_relayed: bool = False  # a usage-only chunk of its own is among ``events`` (else the stream's end adds one)
    # The most prompt tokens the request the miner was sent can be (``prompt_bound``), which a caller is charged at
    # most (``charged``); None: not bounded (the validator rebuilding an answer charges nobody).
    prompt_most: int | None = None
    # The answer's id and time, on every chunk relayed and on the object built of it (``envelope``): the miner's first
    # chunk's when they are a completion's (``own_envelope``), else the API's own. The miner's were relayed as they
    # came, and a miner could change its id mid-stream or send a number for it.
    completion_id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    enveloped: bool = False  # its first chunk was seen: the envelope is settled

    @property
    def uid(self) -> int:
        return self.neuron.uid

    @property
    def text(self) -> str:
        return "".join(self.content)

    def merged_tool_calls(self) -> list[dict[str, Any]] | None:
        if not self.tool_calls:
            return None
        return [self.tool_calls[i] for i in sorted(self.tool_calls)]

    def event_texts(self) -> list[str]:
        """Every chunk as JSON text (for the scoring payload and the stream relay)."""
        return [event_text(e) for e in self.events]

    def absorb(self, data: Event) -> Event | None:
        """Fold one chunk into the running answer and return it as it is to be kept and relayed (None: not
        kept, a usage-only chunk the caller did not ask for); raise ValueError if it is garbage.

        The chunk is returned as it came, but in the answer's envelope (``envelope``: the API's id and time), and
        for what a strict client's type refused in it, put in the SDK's words: a model server's own ``finish_reason``
        (TGI's "eos_token"), a usage not in the SDK's shape, a tool call's first delta without an id, a
        ``logprobs`` without both of its lists (vLLM sends ``content`` alone; the Node SDK's type requires
        ``refusal`` too, null when empty)."""
        obj = loads(data) if type(data) is str else data
        if type(obj) is not dict:
            raise ValueError("chunk is not a JSON object")
        choices = obj.get("choices")
        if type(choices) is not list:
            if "error" in obj:
                err = obj["error"]
                raise ValueError(f"miner reported an error: {err.get('message') if isinstance(err, dict) else err}")
            raise ValueError("chunk has no choices list")
        if self.envelope(obj):
            data = obj
        usage = obj.get("usage")
        if usage is not None:
            if valid_usage(usage):
                self.usage = reported_usage(usage)  # in the SDK's shape, relayed so and given so whole
                charged = self.charged()  # what the key is charged: a usage-only chunk comes after the answer
                if charged != usage:
                    obj["usage"], data = charged, obj
            else:  # not token counts ("n/a"): left out, and the caller's usage estimated as when none came
                del obj["usage"]
                data = obj
            if choices:
                # on a choice's chunk (TGI's, an older llama.cpp's last): OpenAI gives it in a chunk of its own,
                # which callers read (``if chunk.choices: ... elif chunk.usage``); the stream's end sends it so
                obj.pop("usage", None)
                data = obj
            elif not self.relay_usage or "usage" not in obj:  # not asked for, or no counts left: nothing to relay
                return None
            else:
                self.usage_relayed = True
        claim = obj.get("model")
        if claim and not self.claimed:
            self.claimed = True
            if self.model is None:
                self.model = answer_model(claim)
            fingerprint = obj.get("system_fingerprint")
            if isinstance(fingerprint, str) and fingerprint:
                self.fingerprint = fingerprint
        if claim is not None and self.model is not None and claim != self.model:
            obj["model"], data = self.model, obj  # the model the caller asked for, whatever the miner says
        for choice in choices:
            if type(choice) is not dict:
                raise ValueError("choice is not an object")
            if choice.get("index") not in (0, None):  # one answer is asked of each miner: a second would mix in
                raise ValueError(f"choice index {choice.get('index')!r}: one answer was asked for")
            delta = choice.get("delta")
            if delta:
                if type(delta) is not dict:
                    raise ValueError("delta is not an object")
                if settled(delta):
                    data = obj
                piece = delta.get("content")
                if piece:
                    if type(piece) is not str:
                        raise ValueError("delta.content is not a string")
                    if self.calls_only and not piece.isspace():
                        raise Unfit(NO_CALL)
                    self.content.append(piece)
                    if self.opens_with is None or self.opened:
                        # Whitespace alone starts nothing: a miner that sent " " at once claimed the stream,
                        # and its answer's first-content time (the validator's latency) was that space's.
                        if not self.has_answer and not piece.isspace():
                            self.has_answer = True
                    elif head := piece.lstrip():  # the first text of a JSON answer: it must open one
                        if not head.startswith(self.opens_with):
                            raise Unfit(NOT_JSON)
                        self.opened = self.has_answer = True
                calls = delta.get("tool_calls")
                if calls:
                    if self._merge_tool_calls(calls):
                        data = obj  # a call got the id its model server left out: relayed with it
                    self.has_answer = True
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought:
                    if type(thought) is not str:
                        raise ValueError("delta.reasoning_content is not a string")
                    self.reasoning.append(thought)
                declined = delta.get("refusal")
                if declined:
                    if type(declined) is not str:
                        raise ValueError("delta.refusal is not a string")
                    self.refusal.append(declined)
                    self.has_answer = True
            if choice.get("logprobs"):
                self.logprobs.append(checked_logprobs(choice["logprobs"]))
                if any(kind not in choice["logprobs"] for kind in LOGPROBS_LISTS):
                    choice["logprobs"] = dict.fromkeys(LOGPROBS_LISTS) | choice["logprobs"]
                    data = obj
            reason = choice.get("finish_reason")
            if reason:
                if type(reason) is not str:
                    raise ValueError("finish_reason is not a string")
                if reason not in FINISH_REASONS:  # the last chunk only: the others are relayed untouched
                    choice["finish_reason"] = reason = finish_reason(reason)
                    data = obj
                self.finish_reason = reason
                if self.offered is not None and self.tool_calls:
                    for slot in self.tool_calls.values():
                        if slot["function"]["name"] not in self.offered:
                            raise ValueError(f"tool call to {slot['function']['name']!r}, which the request "
                                             "did not offer")
        return data

    def charged(self) -> dict[str, Any] | None:
        """The miner's ``usage`` as far as the request and the answer can hold it: no more prompt tokens than the
        request's bytes (``prompt_bound``), no more completion tokens than the answer's bytes (its
        thinking, text, refusal and calls) and ``UNSEEN_TOKENS``. A token is a byte at least: a miner's count past
        that was charged to the caller's key whole (ten million tokens a count, a day's token limit spent by one
        answer of "Hi")."""
        usage, most = self.usage, self.prompt_most
        if usage is None or most is None:
            return usage
        prompt = usage["prompt_tokens"]
        if prompt > most:
            prompt = most
        completion = usage["completion_tokens"]
        unseen = UNSEEN_TOKENS * (1 + len(self.tool_calls))
        if completion > unseen:  # at most the unseen tokens: within the bound whatever the answer's bytes
            completion = min(completion, self.output_bytes() + unseen)
        out = usage | {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        # a details group's counts are of its count's tokens: none is more (a miner's cached_tokens of ten million)
        if len(out) > 3:  # a details group, or ``estimated``: most miners' usage has neither
            for group, most in zip(USAGE_DETAILS, (prompt, completion), strict=True):
                if group in out:
                    out[group] = {name: min(n, most) for name, n in out[group].items()}
        return out

    def output_bytes(self) -> int:
        """The UTF-8 bytes of what the model wrote: its thinking, its text, a refusal, its calls' names and arguments
        (the bytes of the parts joined are the sum of each part's: one encode, not one a chunk)."""
        calls = [c["function"]["name"] + c["function"]["arguments"] for c in self.tool_calls.values()]
        return len("".join((*self.reasoning, *self.content, *self.refusal, *calls)).encode())

    def envelope(self, obj: dict[str, Any]) -> bool:
        """Put a miner's chunk in the answer's envelope: its ``id`` and ``created`` (``completion_id``), its ``object``,
        a ``system_fingerprint`` only when it is a name, and no ``service_tier`` (this API has one); True when that
        changed the chunk, which is then relayed re-encoded, not as it came. A miner is untrusted, and each of its
        chunks reached the caller as it came: an id that changed from chunk to chunk, ``"id": 123``, ``"created":
        "yesterday"`` or a fingerprint object (the SDK's ``model_dump`` warned of each in the caller's process), and
        ids that no other answer's may share (every chunk of a scripted miner: "c"). The first chunk's id and time
        are the answer's when they are a completion's (``own_envelope``): a model server's stream (vLLM's,
        llama.cpp's) then passes byte for byte, as re-encoding each chunk cost the API 13% of its instructions a
        streamed request (``scripts/bench_instructions.py``)."""
        if not self.enveloped:
            self.enveloped = True
            if own_envelope(obj.get("id"), obj.get("created")):
                self.completion_id, self.created = obj["id"], obj["created"]
        fingerprint = obj.get("system_fingerprint")
        if (obj.get("id") == self.completion_id and obj.get("created") == self.created
                and obj.get("object") == CHUNK_OBJECT and "service_tier" not in obj
                and (fingerprint is None or is_name(fingerprint))):
            return False
        obj["id"], obj["object"], obj["created"] = self.completion_id, CHUNK_OBJECT, self.created
        if fingerprint is not None and not is_name(fingerprint):
            del obj["system_fingerprint"]
        obj.pop("service_tier", None)
        return True

    def _merge_tool_calls(self, calls: Any) -> bool:
        """Fold a delta's tool calls into the answer's; True when a call's first delta had no id, or the id of
        an earlier call of the answer, and was given one (``call_...``): some model servers send none, the SDK's
        type requires one and the caller's next turn names the call by it (``tool_call_id``), streamed or not.
        A call's id is its first delta's (an id on a later delta changes nothing)."""
        named = False
        if not isinstance(calls, list):
            raise ValueError("tool_calls is not a list")
        if self.offered is not None and not self.offered:
            raise ValueError("tool call, but the request offered no tool")
        for call in calls:
            if not isinstance(call, dict):
                raise ValueError("tool call is not an object")
            index = int(call.get("index", len(self.tool_calls)))
            slot = self.tool_calls.get(index)
            if slot is None:
                given = call.get("id")
                if not (isinstance(given, str) and given) or given in self.tool_call_ids:
                    call["id"], named = new_call_id(), True  # none, or another call's: the caller's reply would be
                    # ambiguous (two tool results under one tool_call_id; OpenAI refuses the next turn)
                slot = self.tool_calls[index] = {"id": call["id"], "type": "function",
                                                 "function": {"name": "", "arguments": ""}}
                self.tool_call_ids.add(call["id"])
            if call.get("type"):
                slot["type"] = call["type"]
            fn = call.get("function") or {}
            if fn.get("name"):
                slot["function"]["name"] += fn["name"]
                name = slot["function"]["name"]
                # a name arrives whole or in pieces: each piece must still lead to an offered tool
                if self.offered is not None and not any(t.startswith(name) for t in self.offered):
                    raise ValueError(f"tool call to {name[:64]!r}, which the request did not offer")
            if fn.get("arguments"):
                slot["function"]["arguments"] += fn["arguments"]
        return named


def answer_model(claim: Any) -> str:
    """The model a miner's answer names, when the request named none (any model): a name a miner may advertise
    (1 to ``MAX_ADVERTISED_NAME`` printable characters), or ValueError: a miner is untrusted, and its claim
    reached the caller's answer, every chunk of it, as it came (a 1 MB "name", a line break)."""
    if not is_name(claim):
        raise ValueError("the answer's model is not a model name")
    return claim


CHUNK_OBJECT = "chat.completion.chunk"
# Tokens a model server counts that no byte of its answer shows (its end-of-turn token, a tool call's markup): each
# answer's and each call's, over its bytes (``MinerRun.charged``).
UNSEEN_TOKENS = 64
# An image's tokens at most, over its URL's bytes: a vision model's largest tiling (Qwen2.5-VL's 16,384).
IMAGE_TOKENS = 16384
# The tokens a chat template adds to a prompt of its own (a model's default system prompt, a tool-calling preamble).
TEMPLATE_TOKENS = 1024


def prompt_bound(body: bytes) -> int:
    """The most prompt tokens a request to a miner can be (``MinerRun.prompt_most``): a token a byte of it,
    ``TEMPLATE_TOKENS`` its chat template's own text, and ``IMAGE_TOKENS`` an image it sends."""
    return len(body) + TEMPLATE_TOKENS + IMAGE_TOKENS * body.count(b'"image_url"')


DELTA_OBJECTS = ("audio", "function_call")  # a delta's fields that are objects in the SDK's type, when there


def settled(delta: dict[str, Any]) -> bool:
    """A miner's delta as an answer's: its ``role`` the assistant's (LangChain reads ``"user"`` or ``"system"`` there
    as a message of that role, in the middle of the answer), its ``audio`` and ``function_call`` objects or gone
    (``"audio": 5`` was a warning in the caller's process). True when that changed it."""
    changed = False
    if delta.get("role", "assistant") != "assistant":
        delta["role"], changed = "assistant", True
    for name in DELTA_OBJECTS:
        if name in delta and type(delta[name]) is not dict:
            del delta[name]
            changed = True
    return changed


# A miner's completion id kept as the answer's: a name (``is_name``) as long as a model server's (vLLM's "chatcmpl-"
# and 32 hex digits, SGLang's 32). A shorter one is made anew: Ollama's "chatcmpl-" and 3 digits, a test model's "c",
# repeat from answer to answer.
OWN_ID_MIN_LENGTH = 16
CREATED_SKEW_S = 86400  # a miner's ``created`` kept within a day of the API's clock


def own_envelope(completion_id: object, created: object) -> bool:
    """Whether a miner's first chunk's ``id`` and ``created`` can be its answer's (``MinerRun.envelope``)."""
    return (is_name(completion_id) and len(completion_id) >= OWN_ID_MIN_LENGTH  # type: ignore[arg-type]
            and type(created) is int and abs(created - time.time()) < CREATED_SKEW_S)


LOGPROBS_LISTS = ("content", "refusal")  # a choice's logprobs lists, as OpenAI always names them


def checked_logprobs(logprobs: Any) -> Any:
    """A choice's ``logprobs`` as OpenAI shapes it (``content`` and ``refusal``: tokens, each with its
    ``top_logprobs``), or ValueError: the caller's renderers read it as such."""
    if type(logprobs) is not dict:
        raise ValueError("logprobs is not an object")
    for kind in LOGPROBS_LISTS:
        tokens = logprobs.get(kind)
        if tokens is None:
            continue
        if type(tokens) is not list:
            raise ValueError(f"logprobs.{kind} is not a list")
        for token in tokens:
            checked_token(token)
            tops = token.get("top_logprobs")
            if tops is not None and type(tops) is not list:
                raise ValueError("top_logprobs is not a list")
            for top in tops or ():
                checked_token(top)
    return logprobs


def checked_token(token: Any) -> None:
    """ValueError unless ``token`` is a token's log probability as the SDK types it: its ``token`` a string, its
    ``logprob`` a number, its ``bytes`` null or a list of integers (a miner's ``"bytes": "y"`` reached the caller,
    whose ``model_dump`` warned of it)."""
    if type(token) is not dict or type(token.get("token")) is not str:
        raise ValueError("a logprobs token is not an object with a token string")
    if type(token.get("logprob")) not in (int, float):
        raise ValueError("a logprobs token's logprob is not a number")
    given = token.get("bytes")
    if given is not None and (type(given) is not list or any(type(b) is not int for b in given)):
        raise ValueError("a logprobs token's bytes is not a list of integers")


class Race:
    """One fan-out. ``start()``, then ``winner()``, then ``follow(winner)`` (streaming)."""

    def __init__(
        self,
        client: MinerClient,
        neurons: list[Neuron],
        body: bytes,
        deadline: float,
        *,
        stream: bool,
        asks_stream: bool = False,
        request_id: str | None = None,
        excuse_timeouts: bool = False,
        offered: frozenset[str] | None = None,
        check: Check | None = None,
        opens_with: str | None = None,
        calls_only: bool = False,
        relay_usage: bool = True,
        scored: bool = True,
        latency_scale: float | None = None,
        health: MinerHealth | None = None,
        model: str | None = None,
        caller_limited: bool = True,
        empty: str | None = None,
        bodies: dict[int, bytes] | None = None,
        seeds: dict[int, int] | None = None,
    ) -> None:
        self.client = client
        # Why an answer that ended with no text is none (None: it is one, as a chat's "" may be): a web retrieval's
        # "nothing found" is ``[]``, and a miner that said nothing won a race every other miner failed.
        self.empty = empty
        # The caller set a token limit (``answer_checks.caller_limited``): only then is an answer cut to nothing
        # (``finish_reason: "length"``, no word, no thinking) one, the caller's limit's "" (NOTHING_CUT).
        self.caller_limited = caller_limited
        self.health = health  # told each run's outcome: a miner that keeps failing is set aside (miner_health)
        # False: the caller in effect chose the miners (``fanout.aimed``); its payload says so, and the validator
        # does not score it: a key holder could otherwise score a miner it owns (or sink a rival) at will.
        self.scored = scored
        # The deadline the node gives such a request, the latency reward's scale whatever the caller's ``timeout``:
        # a short one must not shrink it (any key could cut a rival's reward), a long one widen it, nor a long
        # answer's longer deadline fall back to the validator's ORGANIC_TIMEOUT.
        self.latency_scale = latency_scale
        self.check = check  # what a whole answer must also be (the JSON asked for): answer_checks
        # The deadline is shorter than the node would give (a caller's ``timeout``, what a failover
        # had left): a miner that ran out of it is not at fault, so it is left out of the payload.
        self.excuse_timeouts = excuse_timeouts
        # ``model``: the one the request names (None: any), which every answer is told as (``MinerRun.model``)
        bound = prompt_bound(body)
        self.runs = [MinerRun(n, offered=offered, opens_with=opens_with, calls_only=calls_only,
                              relay_usage=relay_usage, model=model, prompt_most=bound) for n in neurons]
        self.body = body
        # A body of its own for each of these uids (a mixture's first stage: ``body`` with the uid's seed, in
        # ``seeds``, which its payload names: the validator scores each answer against its own seed's reference)
        self.bodies = bodies or {}
        self.seeds = seeds or {}
        self.deadline = deadline
        self.stream = stream
        # What ``body`` asks the miners for (its ``stream``: ``asks_stream``), told them in ``Accept``. Not
        # ``stream``: a non-streaming caller's mixture, a session's ping, a synthetic job relayed as it comes.
        self.asks_stream = asks_stream
        self.request_id = request_id
        self.started = 0.0
        self.tasks: list[asyncio.Task[None]] = []
        self._winner: asyncio.Future[MinerRun | None] | None = None
        self.winning_run: MinerRun | None = None
        self.settled = False  # handed to the scoring sinks (``fanout.settle``): once per race
        self._ended: list[MinerRun] = []  # in the order the runs ended

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        self._winner = loop.create_future()
        self.tasks = [asyncio.create_task(self._run(r)) for r in self.runs]

    async def _run(self, run: MinerRun) -> None:
        try:
            loop = asyncio.get_running_loop()
            batches = self.client.stream_chat_batches(run.neuron, self.bodies.get(run.uid, self.body), self.deadline,
                                                      request_id=self.request_id, stream=self.asks_stream)
            unfit: str | None = None  # why the answer cannot be what was asked: it is kept whole, never relayed
            async for batch in batches:
                arrived = loop.time() - self.started  # one read: the same arrival time for its events
                for data in batch:
                    if unfit is not None:
                        kept: Event | None = data
                    else:
                        try:
                            kept = run.absorb(data)
                        except Unfit as e:
                            if self.winning_run is run:  # relayed already: it ends here, with the error event
                                raise
                            # The rest is kept for the scoring payload: cut at the first word that misses the
                            # format, the validator read the answer as empty, a zero the README rules out.
                            unfit, kept = str(e), data
                    if kept is None:
                        continue
                    run.events.append(kept)
                    run.timings.append(arrived)
                    if self.stream and unfit is None and (run.has_answer or run.reasoning) and self._relayable(run):
                        self._claim(run)
                run.new_data.set()
            if unfit is not None:
                raise Unfit(unfit)
            if run.finish_reason is None:  # every OpenAI-shaped answer ends with one: without it, it was cut
                raise MinerError("the answer ended without a finish_reason (cut short)", kind="bad_response")
            if run.finish_reason == "length" and not (run.has_answer or run.reasoning or self.caller_limited):
                raise MinerError(NOTHING_CUT, kind="bad_response")
            if self.empty is not None and not run.has_answer:
                raise MinerError(self.empty, kind="bad_response")
        except MinerError as e:
            run.error, run.error_kind = str(e), e.kind
        except Unfit as e:
            run.error, run.error_kind = str(e), UNFIT
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError) as e:
            # json.loads of deep nesting raises RecursionError, int(1e999) OverflowError: both are the
            # miner's garbage and must mark it failed, or a broken winner looks like a complete answer.
            run.error, run.error_kind = printable(f"invalid chunk: {e}"), "bad_response"  # it quotes the miner
        except asyncio.CancelledError:
            run.error, run.error_kind = "cancelled", "cancelled"
            raise
        finally:
            run.done = True
            self._ended.append(run)
            run.new_data.set()
            # A stream is relayed as it comes (its first content wins): only a whole answer can be checked.
            if self.check is not None and not self.stream and run.error is None and run.has_answer \
                    and (why := self.check(run)):
                run.error, run.error_kind = why, UNFIT
            if run.error:
                logger.debug("rid={} uid={} failed: {}", self.request_id, run.uid, run.error)
            elif not self.stream and run.has_answer:
                self._claim(run)
            self._maybe_no_winner()
            if self.health is not None and not (self.excuse_timeouts and run.error_kind == "timeout"):
                self.health.record(run.neuron, run.error_kind if run.error else None)

    def _relayable(self, run: MinerRun) -> bool:
        """Whether a streamed run that has started its answer may claim the race now. Text, a refusal or
        thinking may (relayed as it comes); an answer of tool calls alone only once they are whole and pass
        the request's check (``answer_checks.tool_check``): a call's arguments are a few hundred bytes at
        most, and relayed as they came, a fast miner's cut JSON or unknown name won and the caller's agent
        raised on it. Unfit: they are whole and fail the check."""
        if not run.tool_calls or run.refusal or run.reasoning or any(not p.isspace() for p in run.content):
            return True
        if run.finish_reason is None:
            return False
        if self.check is not None and (why := self.check(run)):
            raise Unfit(why)
        return True

    def _claim(self, run: MinerRun) -> None:
        if self._winner is not None and not self._winner.done():
            self.winning_run = run
            self._winner.set_result(run)

    def _maybe_no_winner(self) -> None:
        if self._winner is not None and not self._winner.done() and all(r.done for r in self.runs):
            self.winning_run = next((r for r in self._ended if r.error is None and r.finish_reason), None)
            self._winner.set_result(self.winning_run)

    async def winner(self) -> MinerRun | None:
        """The first valid run, or None once every miner failed or the deadline passed.

        No timer of its own: every run is bounded by the deadline (``MinerClient``), and the last
        run to end resolves this with None.
        """
        assert self._winner is not None, "start() first"
        return await asyncio.shield(self._winner)

    async def follow(self, run: MinerRun) -> AsyncIterator[str]:
        """The run's events (JSON text) from the first one, as they arrive, until it ends."""
        async for batch in self.follow_batches(run):
            for data in batch:
                yield event_text(data)

    def follow_batches(self, run: MinerRun) -> AsyncIterator[list[Event]]:
        """``follow`` in groups: every event that arrived since the last group (one client write each)."""
        return follow_growing(run.events, run.new_data, lambda: run.done)

    def not_served(self) -> bool:
        """Every miner raced answered ``404 model_not_found``: none serves the request's model (the API raced
        them without fresh availability, or for a model they listed and serve no more)."""
        return bool(self.runs) and all(r.error_kind == NOT_SERVED for r in self.runs)

    def refused(self) -> bool:
        """Every miner's model server refused the request itself: the caller's mistake, not theirs."""
        return bool(self.runs) and all(r.error_kind == "refused" for r in self.runs)

    def unfit(self) -> bool:
        """Every miner answered, and no answer was what the request asked for (``answer_checks``: JSON that fits
        its strict schema, a call its ``tool_choice`` requires): the caller's request, not a miner that was down."""
        return bool(self.runs) and all(r.error_kind == UNFIT for r in self.runs)

    def timed_out(self) -> bool:
        return any(r.error_kind == "timeout" or not r.done for r in self.runs)

    def errors(self) -> dict[int, str]:
        return {r.uid: r.error for r in self.runs if r.error}

    async def finish(self) -> None:
        """Wait for every miner (each is bounded by the deadline)."""
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def cancel(self) -> None:
        for t in self.tasks:
            if not t.done():
                t.cancel()

    def _latency_scale(self) -> float | None:
        if self.latency_scale:  # the node's own deadline for the request, whatever the caller's timeout
            return round(self.latency_scale, 3)
        return None if self.excuse_timeouts else max(0.1, round(self.deadline - self.started, 3))

    def payload(self, *, leave_out: Collection[int] = ()) -> dict[str, Any]:
        """The organic-scoring record: each uid's own chunks and timings, and its error (without the
        runs a shortened deadline cut off, see ``excuse_timeouts``, those the API stopped, and the uids
        in ``leave_out``: ``api.fanout.not_served_unasked``)."""
        # A run the API stopped (shutting down) did nothing wrong either.
        runs = [r for r in self.runs if not (self.excuse_timeouts and r.error_kind == "timeout")
                and r.error_kind != "cancelled" and r.uid not in leave_out]
        return {
            "uids": [r.uid for r in runs],
            # who answered: a payload delivered after a uid changed hands must not credit its new owner
            "hotkeys": {str(r.uid): r.neuron.hotkey for r in runs},
            "chunks": {str(r.uid): r.event_texts() for r in runs},
            "timings": {str(r.uid): list(r.timings) for r in runs},
            # An answer that misses the caller's format is the validator's to judge against its reference:
            # a caller's impossible schema would otherwise be a zero for every miner.
            "errors": {str(r.uid): r.error for r in runs if r.error and r.error_kind != UNFIT},
            # each error's kind (``MinerError.kind``): the API's sn1_api_miner_errors_total{uid,kind} (the validator
            # reads the errors alone)
            "error_kinds": {str(r.uid): r.error_kind for r in runs if r.error and r.error_kind != UNFIT},
            # none when the winner's run is left out (the caller's deadline cut it off mid-stream): the validator
            # rejects a winner not in ``uids``, and with it the whole payload
            "winner": next((r.uid for r in runs if r is self.winning_run), None),
            # The latency reward's scale: the deadline the miners had, or the node's own when that was a
            # caller's shorter one (``latency_scale``; none known: the validator's ORGANIC_TIMEOUT).
            "deadline_s": self._latency_scale(),
            "created_at": time.time(),
            **({"seeds": {str(r.uid): self.seeds[r.uid] for r in runs if r.uid in self.seeds}} if self.seeds else {}),
        }
